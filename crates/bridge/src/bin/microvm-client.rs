//! The guest side of the microVM test (`crates/bridge/tests/microvm.rs`): a tiny static
//! client that behaves like an agent with the environment the NixOS modules give one. It
//! lists the guest's network interfaces, tries a direct TCP connection (which must fail: the
//! guest has no network device), then makes HTTPS requests through `HTTPS_PROXY` (the
//! guest's `credproxy bridge`), trusting the CA in `SSL_CERT_FILE`:
//!
//! - `OWN`: with its own placeholder (the value of the variable `PLACEHOLDER_VAR`), no token;
//! - `FOREIGN_PLACEHOLDER`: with another VM's placeholder, no token;
//! - `FOREIGN_TOKEN`: with its own placeholder and another VM's token in
//!   `Proxy-Authorization` (read from `FOREIGN_TOKEN_FILE`).
//!
//! Each result is printed between `MICROVM_<LABEL>_BEGIN` and `MICROVM_<LABEL>_END`.
//!
//! Usage: `microvm-client HOST DIRECT_ADDR PLACEHOLDER_VAR FOREIGN_PLACEHOLDER FOREIGN_TOKEN_FILE`
#![allow(clippy::print_stdout)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, host, direct, placeholder_var, foreign_placeholder, foreign_token_file] =
        args.as_slice()
    else {
        println!(
            "MICROVM_CLIENT_ERROR usage: microvm-client HOST DIRECT_ADDR PLACEHOLDER_VAR FOREIGN_PLACEHOLDER FOREIGN_TOKEN_FILE"
        );
        return;
    };
    let ifaces: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    println!("MICROVM_NET_IFACES {}", ifaces.join(","));
    match direct.parse::<SocketAddr>() {
        Ok(a) => match TcpStream::connect_timeout(&a, Duration::from_secs(3)) {
            Ok(_) => println!("MICROVM_DIRECT_CONNECT succeeded to {a}"),
            Err(e) => println!("MICROVM_DIRECT_CONNECT failed to {a}: {e}"),
        },
        Err(e) => println!("MICROVM_CLIENT_ERROR bad direct address: {e}"),
    }
    let own = std::env::var(placeholder_var).unwrap_or_default();
    let foreign_token = std::fs::read_to_string(foreign_token_file).unwrap_or_default();
    let runs: [(&str, &str, Option<&str>); 3] = [
        ("OWN", &own, None),
        ("FOREIGN_PLACEHOLDER", foreign_placeholder, None),
        ("FOREIGN_TOKEN", &own, Some(foreign_token.trim())),
    ];
    for (label, placeholder, token) in runs {
        println!("MICROVM_{label}_BEGIN");
        match request(host, placeholder, token) {
            Ok(text) => println!("{text}"),
            Err(e) => println!("MICROVM_REQUEST_ERROR {e}"),
        }
        println!("MICROVM_{label}_END");
    }
    println!("MICROVM_CLIENT_DONE");
}

/// One request: CONNECT (with `token` as `Proxy-Authorization` when given), then
/// `GET /echo` with `x-api-key: placeholder` over TLS. Returns the CONNECT status line and
/// either the response or the refusal.
fn request(host: &str, placeholder: &str, token: Option<&str>) -> Result<String, String> {
    let ca = std::env::var("SSL_CERT_FILE").map_err(|_| "SSL_CERT_FILE is not set".to_string())?;
    let proxy = std::env::var("HTTPS_PROXY").map_err(|_| "HTTPS_PROXY is not set".to_string())?;
    let proxy = proxy
        .strip_prefix("http://")
        .ok_or("HTTPS_PROXY must be http://HOST:PORT")?
        .trim_end_matches('/')
        .to_string();
    // The bridge starts alongside this client: wait for it, boundedly.
    let started = Instant::now();
    let mut tcp = loop {
        match TcpStream::connect(&proxy) {
            Ok(s) => break s,
            Err(e) if started.elapsed() < Duration::from_secs(20) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(format!("cannot connect to the proxy {proxy}: {e}")),
        }
    };
    tcp.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let auth = token
        .map(|t| format!("Proxy-Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        tcp,
        "CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n{auth}\r\n"
    )
    .map_err(|e| format!("sending CONNECT: {e}"))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut byte) {
            Ok(0) => {
                return Err(format!(
                    "the proxy closed the connection after: {}",
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
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = format!(
        "MICROVM_CONNECT_STATUS {}",
        head.lines().next().unwrap_or("")
    );
    if !head.starts_with("HTTP/1.1 200") {
        let mut rest = String::new();
        let _ = tcp.read_to_string(&mut rest);
        return Ok(format!("{status}\n{head}{rest}"));
    }

    let pem = std::fs::read(&ca).map_err(|e| format!("reading {ca}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
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
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET /echo HTTP/1.1\r\nHost: {host}\r\nx-api-key: {placeholder}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("sending the request: {e}"))?;
    let mut body = Vec::new();
    match tls.read_to_end(&mut body) {
        Ok(_) => {}
        // A peer that closes without close_notify after a complete response.
        Err(e) if e.kind() == ErrorKind::UnexpectedEof && !body.is_empty() => {}
        Err(e) => return Err(format!("reading the response: {e}")),
    }
    Ok(format!("{status}\n{}", String::from_utf8_lossy(&body)))
}
