//! The agent's side of the container test (`crates/cli/tests/containers.rs`): a tiny static
//! client that runs in a container built from busybox and static binaries, with the
//! environment the NixOS module gives an instance (`HTTPS_PROXY`/`HTTP_PROXY` pointing at the
//! container's `credproxy bridge`, `SSL_CERT_FILE` with the proxy CA).
//!
//! ```text
//! container-client net ADDR                      interfaces, then a direct TCP connect to ADDR
//! container-client unix PATH                     connect to a Unix socket, send a CONNECT
//! container-client request METHOD URL [-H 'Name: value']... [-d BODY]
//! ```
//!
//! `unix` prints `CLIENT_UNIX_CONNECT failed: <why>`, `CLIENT_UNIX_CLOSED` (connected, then
//! closed without an answer) or `CLIENT_UNIX_ANSWER <status line>`.
//!
//! `request` speaks HTTP/1.1 through the proxy: `CONNECT` and TLS for `https://` URLs,
//! absolute-form for `http://`. It prints `CLIENT_STATUS <code>` (the CONNECT's status when
//! the tunnel was refused), the response head and body between `CLIENT_BODY_BEGIN` and
//! `CLIENT_BODY_END`, or `CLIENT_ERROR <why>`; exit 0 when a response was read.
#![allow(clippy::print_stdout)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("net") if args.len() == 2 => {
            net(&args[1]);
            0
        }
        Some("unix") if args.len() == 2 => {
            unix(&args[1]);
            0
        }
        Some("request") if args.len() >= 3 => match request(&args[1], &args[2], &args[3..]) {
            Ok(()) => 0,
            Err(e) => {
                println!("CLIENT_ERROR {e}");
                1
            }
        },
        _ => {
            println!("CLIENT_ERROR usage: container-client net ADDR | unix PATH | request METHOD URL [-H H]... [-d BODY]");
            64
        }
    };
    std::process::exit(code);
}

fn net(direct: &str) {
    let mut ifaces: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    ifaces.sort();
    println!("CLIENT_NET_IFACES {}", ifaces.join(","));
    match direct.parse::<SocketAddr>() {
        Ok(a) => match TcpStream::connect_timeout(&a, Duration::from_secs(3)) {
            Ok(_) => println!("CLIENT_DIRECT_CONNECT succeeded to {a}"),
            Err(e) => println!("CLIENT_DIRECT_CONNECT failed to {a}: {e}"),
        },
        Err(e) => println!("CLIENT_ERROR bad address {direct}: {e}"),
    }
}

fn unix(path: &str) {
    let mut s = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) => {
            println!("CLIENT_UNIX_CONNECT failed: {e}");
            return;
        }
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    // A refused peer may be closed before this is written: a failed write is an answer too.
    let _ = s.write_all(
        b"CONNECT api.anthropic.com:443 HTTP/1.1\r\nHost: api.anthropic.com:443\r\n\r\n",
    );
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match s.read(&mut byte) {
            Ok(1) if byte[0] != b'\n' => buf.push(byte[0]),
            Ok(1) => break,
            _ => break,
        }
    }
    if buf.is_empty() {
        println!("CLIENT_UNIX_CLOSED");
    } else {
        println!(
            "CLIENT_UNIX_ANSWER {}",
            String::from_utf8_lossy(&buf).trim_end()
        );
    }
}

/// `scheme://host[:port]/path` split into its parts.
fn parse_url(url: &str) -> Result<(bool, String, u16, String), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("not an http(s) URL: {url}"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| format!("bad port in {url}"))?),
        None => (authority, if tls { 443 } else { 80 }),
    };
    Ok((tls, host.to_string(), port, path.to_string()))
}

fn proxy_addr(var: &str) -> Result<String, String> {
    let v = std::env::var(var)
        .or_else(|_| std::env::var(var.to_lowercase()))
        .map_err(|_| format!("{var} is not set"))?;
    Ok(v.strip_prefix("http://")
        .ok_or(format!("{var} must be http://HOST:PORT"))?
        .trim_end_matches('/')
        .to_string())
}

/// Connect to the container's bridge; it starts alongside the agent, so wait (bounded).
fn connect(proxy: &str) -> Result<TcpStream, String> {
    let started = Instant::now();
    loop {
        match TcpStream::connect(proxy) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(60)))
                    .map_err(|e| e.to_string())?;
                return Ok(s);
            }
            Err(e) if started.elapsed() > Duration::from_secs(20) => {
                return Err(format!("cannot connect to the proxy {proxy}: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn request(method: &str, url: &str, rest: &[String]) -> Result<(), String> {
    let (tls, host, port, path) = parse_url(url)?;
    let mut headers = Vec::new();
    let mut body: Option<String> = None;
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-H" => headers.push(it.next().ok_or("-H needs a value")?.clone()),
            "-d" => body = Some(it.next().ok_or("-d needs a value")?.clone()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let default_port = if tls { 443 } else { 80 };
    let host_header = if port == default_port {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n",
        target = if tls {
            path.clone()
        } else {
            format!("http://{host_header}{path}")
        }
    );
    for h in &headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if let Some(b) = &body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    let mut out = Vec::new();
    if tls {
        let mut tcp = connect(&proxy_addr("HTTPS_PROXY")?)?;
        write!(
            tcp,
            "CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"
        )
        .map_err(|e| format!("sending CONNECT: {e}"))?;
        let connect_head = read_head(&mut tcp)?;
        if !connect_head.starts_with("HTTP/1.1 200") {
            let code = connect_head.split(' ').nth(1).unwrap_or("000");
            let mut rest = String::new();
            let _ = tcp.read_to_string(&mut rest);
            println!("CLIENT_STATUS {code}");
            println!("CLIENT_BODY_BEGIN\n{connect_head}{rest}\nCLIENT_BODY_END");
            return Ok(());
        }
        let mut tls = tls_over(tcp, &host)?;
        tls.write_all(head.as_bytes())
            .and_then(|()| tls.write_all(body.as_deref().unwrap_or("").as_bytes()))
            .map_err(|e| format!("sending the request: {e}"))?;
        match tls.read_to_end(&mut out) {
            Ok(_) => {}
            // A server that closes without close_notify still sent everything.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(format!("reading the response: {e}")),
        }
    } else {
        let mut tcp = connect(&proxy_addr("HTTP_PROXY")?)?;
        tcp.write_all(head.as_bytes())
            .and_then(|()| tcp.write_all(body.as_deref().unwrap_or("").as_bytes()))
            .map_err(|e| format!("sending the request: {e}"))?;
        tcp.read_to_end(&mut out)
            .map_err(|e| format!("reading the response: {e}"))?;
    }
    let text = String::from_utf8_lossy(&out);
    let code = text.split(' ').nth(1).unwrap_or("000");
    println!("CLIENT_STATUS {code}");
    println!("CLIENT_BODY_BEGIN\n{text}\nCLIENT_BODY_END");
    Ok(())
}

fn read_head(tcp: &mut TcpStream) -> Result<String, String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut byte) {
            Ok(0) => {
                return Err(format!(
                    "the proxy closed the connection after {:?}",
                    String::from_utf8_lossy(&head)
                ))
            }
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(format!("reading the CONNECT response: {e}")),
        }
        if head.len() > 65536 {
            return Err("CONNECT response head too large".into());
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn tls_over(
    tcp: TcpStream,
    host: &str,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
    use rustls_pki_types::pem::PemObject;
    let ca = std::env::var("SSL_CERT_FILE").map_err(|_| "SSL_CERT_FILE is not set".to_string())?;
    let pem = std::fs::read(&ca).map_err(|e| format!("reading {ca}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("parsing {ca}: {e}"))?;
        roots.add(cert).map_err(|e| format!("adding {ca}: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("server name {host}: {e}"))?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}
