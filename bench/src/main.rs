//! benchkit: the parts of the credproxy benchmark harness that are code, not scripts.
//!
//! Subcommands (all bind 127.0.0.1 with OS-chosen ports and write what they bound to a JSON
//! state file given with `--state`):
//!
//! * `upstream --state F` — the testkit TLS upstream (`/fixed/{n}`, `/echo`, `/sse`) with a
//!   fresh test CA; the certificate names `api.example.test` and `s4-*.example.test` names.
//! * `tcp-relay --state F --to ADDR` — floor 1: CONNECT, then copy bytes to ADDR.
//! * `tls-relay --state F --to ADDR --upstream-ca PEM` — floor 2: CONNECT, terminate the
//!   client's TLS with a leaf minted (and cached) for the CONNECT host, open verified TLS to
//!   ADDR, copy bytes. No HTTP parsing.
//! * `cp-config --dir D --to ADDR --port P --upstream-ca PEM [--max-conns N]` — write a
//!   credproxy config (`D/config.yaml`), a CA, a dev issuer JWKS and a token (`D/token`).
//! * `sse --url URL [--proxy ADDR] [--connect ADDR] --cacert PEM [--token T] [--header H:V]`
//!   — one SSE stream; prints `{first_ms, gaps_ms}` (first event measured from the request
//!   write on a warmed connection).
//! * `idle --n N ...` — open N TLS connections (through the proxy), one request each, hold
//!   them; prints `READY ok` and waits for stdin to close.
//! * `loop --n N [--no-credential]` — in-process credproxy + upstream, N credential-bearing
//!   (or plain) requests on one keep-alive tunnel (for `valgrind --tool=callgrind`).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use credproxy_testkit::{TestPki, Upstream, UpstreamOptions, Validity};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const HOST: &str = "api.example.test";
pub const PLACEHOLDER: &str = "agent-vault-11111111-2222-3333-4444-555555555555";
pub const SECRET: &str = "sk-live-BENCH-7f3a9c1e5b2d4068aa";
/// Names for S4 (cold leaf cache): s4-0.example.test ... all pinned to the upstream.
pub const S4_NAMES: usize = 256;

type Args = HashMap<String, String>;

fn parse_args() -> (String, Args) {
    let mut it = std::env::args().skip(1);
    let cmd = it.next().unwrap_or_default();
    let mut m = HashMap::new();
    let rest: Vec<String> = it.collect();
    let mut i = 0;
    while i < rest.len() {
        let k = rest[i].trim_start_matches("--").to_string();
        if i + 1 < rest.len() && !rest[i + 1].starts_with("--") {
            m.insert(k, rest[i + 1].clone());
            i += 2;
        } else {
            m.insert(k, "1".into());
            i += 1;
        }
    }
    (cmd, m)
}

fn arg<'a>(a: &'a Args, k: &str) -> &'a str {
    a.get(k).map(String::as_str).unwrap_or_else(|| panic!("missing --{k}"))
}

fn write_state(a: &Args, v: serde_json::Value) {
    let path = arg(a, "state");
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, v.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The allocator of the `credproxy` binary (crates/cli/src/main.rs): the in-process loop and
/// `benchkit serve` measure the proxy as it runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let (cmd, a) = parse_args();
    let threads = a.get("threads").and_then(|t| t.parse().ok());
    let rt = if cmd == "loop" {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if let Some(t) = threads {
            b.worker_threads(t);
        }
        b.enable_all().build().unwrap()
    };
    rt.block_on(async move {
        match cmd.as_str() {
            "upstream" => upstream(&a).await,
            "tcp-relay" => tcp_relay(&a).await,
            "tls-relay" => tls_relay(&a).await,
            "cp-config" => {
                cp_config(
                    Path::new(arg(&a, "dir")),
                    arg(&a, "to").parse().unwrap(),
                    arg(&a, "port").parse().unwrap(),
                    Path::new(arg(&a, "upstream-ca")),
                    a.get("max-conns").map(|s| s.parse().unwrap()).unwrap_or(4096),
                );
            }
            "sse" => sse(&a).await,
            "idle" => idle(&a).await,
            "loop" => inproc_loop(&a).await,
            "serve" => serve(&a).await,
            _ => {
                eprintln!("usage: benchkit upstream|tcp-relay|tls-relay|cp-config|sse|idle|loop ...");
                std::process::exit(64);
            }
        }
    });
}

// ---------------------------------------------------------------- upstream

fn upstream_names() -> Vec<String> {
    let mut names = vec![HOST.to_string(), "localhost".to_string()];
    names.extend((0..S4_NAMES).map(|i| format!("s4-{i}.example.test")));
    names
}

async fn upstream(a: &Args) {
    let pki = TestPki::new();
    let names = upstream_names();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let up = Upstream::start(UpstreamOptions::tls(pki.issue(&refs, Validity::Valid))).await;
    let ca = PathBuf::from(format!("{}.ca.pem", arg(a, "state")));
    std::fs::write(&ca, pki.ca_cert_pem()).unwrap();
    write_state(
        a,
        serde_json::json!({"addr": up.addr().to_string(), "ca": ca, "pid": std::process::id()}),
    );
    // The upstream records every request; forget them so memory stays flat.
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        up.clear_received();
    }
}

// ---------------------------------------------------------------- floors

/// Read a CONNECT request head; returns (host, port, bytes after the head).
async fn read_connect(s: &mut TcpStream) -> Option<(String, u16, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut tmp = [0u8; 2048];
    loop {
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]).into_owned();
            let line = head.lines().next()?;
            let mut parts = line.split_whitespace();
            if parts.next()? != "CONNECT" {
                return None;
            }
            let target = parts.next()?;
            let (h, port) = target.rsplit_once(':')?;
            return Some((h.to_string(), port.parse().ok()?, buf[p + 4..].to_vec()));
        }
        if buf.len() > 16384 {
            return None;
        }
    }
}

async fn relay_listener(a: &Args) -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    write_state(
        a,
        serde_json::json!({"addr": l.local_addr().unwrap().to_string(), "pid": std::process::id()}),
    );
    l
}

async fn tcp_relay(a: &Args) {
    let to: SocketAddr = arg(a, "to").parse().unwrap();
    let l = relay_listener(a).await;
    loop {
        let Ok((mut c, _)) = l.accept().await else { continue };
        tokio::spawn(async move {
            let _ = c.set_nodelay(true);
            let Some((_h, _p, early)) = read_connect(&mut c).await else { return };
            let Ok(mut u) = TcpStream::connect(to).await else { return };
            let _ = u.set_nodelay(true);
            if c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_err() {
                return;
            }
            if !early.is_empty() && u.write_all(&early).await.is_err() {
                return;
            }
            let _ = tokio::io::copy_bidirectional_with_sizes(&mut c, &mut u, 65536, 65536).await;
        });
    }
}

fn roots_from(path: &Path) -> rustls::RootCertStore {
    let pem = std::fs::read(path).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(credproxy_testkit::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots_from(ca))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

async fn tls_relay(a: &Args) {
    let to: SocketAddr = arg(a, "to").parse().unwrap();
    let upstream_tls = tokio_rustls::TlsConnector::from(client_config(
        Path::new(arg(a, "upstream-ca")),
        &[b"http/1.1"],
    ));
    let pki = Arc::new(TestPki::new());
    // The relay's CA, for clients to trust.
    let ca = PathBuf::from(format!("{}.ca.pem", arg(a, "state")));
    std::fs::write(&ca, pki.ca_cert_pem()).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    write_state(
        a,
        serde_json::json!({"addr": l.local_addr().unwrap().to_string(), "ca": ca, "pid": std::process::id()}),
    );
    let leaves: Arc<Mutex<HashMap<String, Arc<rustls::ServerConfig>>>> = Arc::default();
    loop {
        let Ok((mut c, _)) = l.accept().await else { continue };
        let pki = pki.clone();
        let leaves = leaves.clone();
        let upstream_tls = upstream_tls.clone();
        tokio::spawn(async move {
            let _ = c.set_nodelay(true);
            let Some((host, _p, early)) = read_connect(&mut c).await else { return };
            if !early.is_empty() {
                return; // a client does not send TLS before the 200
            }
            let cfg = {
                let cached = leaves.lock().unwrap().get(&host).cloned();
                match cached {
                    Some(c) => c,
                    None => {
                        let mut sc = pki.issue(&[host.as_str()], Validity::Valid).server_config(&["http/1.1"]);
                        sc.alpn_protocols = vec![b"http/1.1".to_vec()];
                        let sc = Arc::new(sc);
                        leaves.lock().unwrap().insert(host.clone(), sc.clone());
                        sc
                    }
                }
            };
            if c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_err() {
                return;
            }
            let Ok(mut ct) = tokio_rustls::TlsAcceptor::from(cfg).accept(c).await else { return };
            let Ok(u) = TcpStream::connect(to).await else { return };
            let _ = u.set_nodelay(true);
            let Ok(sn) = ServerName::try_from(host) else { return };
            let Ok(mut ut) = upstream_tls.connect(sn, u).await else { return };
            let _ = tokio::io::copy_bidirectional_with_sizes(&mut ct, &mut ut, 65536, 65536).await;
        });
    }
}

// ---------------------------------------------------------------- credproxy config

pub struct CpFiles {
    pub yaml: String,
    pub token: String,
    pub ca_cert: PathBuf,
}

/// Write a credproxy configuration into `dir`: a CA, a dev issuer, one api_key credential
/// for HOST (secret from env `BENCH_SECRET`), HOST and the S4 names pinned to `to`.
pub fn cp_config(dir: &Path, to: SocketAddr, port: u16, upstream_ca: &Path, max_conns: u32) -> CpFiles {
    std::fs::create_dir_all(dir).unwrap();
    let ca = credproxy_tls::init_ca(&dir.join("ca"), true).unwrap();
    let dev = credproxy_identity::DevIssuer::load_or_create(&dir.join("dev")).unwrap();
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, dev.jwks_json()).unwrap();
    let token = dev
        .issue("bench-agent", &["proxy-user".to_string()], Duration::from_secs(24 * 3600))
        .unwrap();
    std::fs::write(dir.join("token"), &token).unwrap();
    let mut y = String::new();
    y.push_str("listeners:\n  - name: agents\n    tcp: 127.0.0.1:0\n");
    y.push_str(&format!(
        "ca:\n  cert_file: {}\n  key_file: {}\n  leaf_cache_size: 64\n",
        ca.cert_file.display(),
        ca.key_file.display()
    ));
    y.push_str(&format!("allowed_domains:\n  - \"{HOST}:{port}\"\n"));
    for i in 0..S4_NAMES {
        y.push_str(&format!("  - \"s4-{i}.example.test:{port}\"\n"));
    }
    y.push_str(&format!(
        "upstream:\n  extra_ca_files: [{}]\n  resolve:\n    {HOST}: {to}\n",
        upstream_ca.display()
    ));
    for i in 0..S4_NAMES {
        y.push_str(&format!("    s4-{i}.example.test: {to}\n"));
    }
    y.push_str(&format!(
        "identity:\n  oidc:\n    issuer: {}\n    audiences: [{}]\n    jwks_file: {}\n",
        credproxy_identity::DEV_ISSUER,
        credproxy_identity::DEV_AUDIENCE,
        jwks.display()
    ));
    y.push_str(&format!(
        "credentials:\n  - id: bench\n    placeholder: {PLACEHOLDER}\n    type: api_key\n    bound_domains: [\"{HOST}:{port}\"]\n    allowed_roles: [proxy-user]\n    source: {{env: BENCH_SECRET}}\n"
    ));
    // Credential uses are recorded before the secret leaves (required with credentials).
    y.push_str(&format!("audit:\n  path: {}\n", dir.join("audit.db").display()));
    y.push_str(&format!(
        "limits:\n  max_connections: {max_conns}\n  max_connections_per_identity: {max_conns}\n  max_streams_per_identity: {max_conns}\n  idle_timeout: 300s\n  shutdown_grace: 1s\nlog:\n  level: \"warn,credproxy=info,credproxy_cli=info\"\n"
    ));
    std::fs::write(dir.join("config.yaml"), &y).unwrap();
    CpFiles { yaml: y, token, ca_cert: ca.cert_file }
}

// ---------------------------------------------------------------- clients

/// Connect to `url`'s host (through `proxy` with CONNECT, or straight to `connect`), TLS,
/// and an HTTP/1.1 client.
async fn open_client(
    host: &str,
    port: u16,
    proxy: Option<SocketAddr>,
    connect: SocketAddr,
    token: Option<&str>,
    tls: &tokio_rustls::TlsConnector,
) -> std::io::Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let mut s = match proxy {
        Some(p) => {
            let mut s = TcpStream::connect(p).await?;
            s.set_nodelay(true)?;
            let mut req = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n");
            if let Some(t) = token {
                req.push_str(&format!("Proxy-Authorization: Bearer {t}\r\n"));
            }
            req.push_str("\r\n");
            s.write_all(req.as_bytes()).await?;
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut b).await? == 0 {
                    return Err(std::io::Error::other("proxy closed during CONNECT"));
                }
                head.push(b[0]);
            }
            let line = String::from_utf8_lossy(&head);
            if !line.split_whitespace().nth(1).is_some_and(|c| c == "200") {
                return Err(std::io::Error::other(format!("CONNECT refused: {line}")));
            }
            s
        }
        None => {
            let s = TcpStream::connect(connect).await?;
            s.set_nodelay(true)?;
            s
        }
    };
    let _ = &mut s;
    let sn = ServerName::try_from(host.to_string()).map_err(std::io::Error::other)?;
    let t = tls.connect(sn, s).await?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(t))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

struct Target {
    host: String,
    port: u16,
    proxy: Option<SocketAddr>,
    connect: SocketAddr,
    token: Option<String>,
    tls: tokio_rustls::TlsConnector,
    header: Option<(String, String)>,
}

fn target(a: &Args) -> Target {
    let host = a.get("host").cloned().unwrap_or_else(|| HOST.to_string());
    let port: u16 = arg(a, "port").parse().unwrap();
    let proxy = a.get("proxy").filter(|p| !p.is_empty()).map(|p| p.parse().unwrap());
    let connect = a
        .get("connect")
        .map(|p| p.parse().unwrap())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], port)));
    let token = a.get("token").filter(|t| !t.is_empty()).cloned();
    let tls = tokio_rustls::TlsConnector::from(client_config(Path::new(arg(a, "cacert")), &[b"http/1.1"]));
    let header = a
        .get("header")
        .and_then(|h| h.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()));
    Target { host, port, proxy, connect, token, tls, header }
}

impl Target {
    async fn open(&self) -> std::io::Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
        open_client(&self.host, self.port, self.proxy, self.connect, self.token.as_deref(), &self.tls).await
    }

    fn req(&self, path: &str) -> http::Request<Empty<Bytes>> {
        let mut b = http::Request::get(path).header("host", format!("{}:{}", self.host, self.port));
        if let Some((n, v)) = &self.header {
            b = b.header(n.as_str(), v.as_str());
        }
        b.body(Empty::new()).unwrap()
    }
}

async fn get_all(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    req: http::Request<Empty<Bytes>>,
) -> std::io::Result<(u16, usize)> {
    send.ready().await.map_err(std::io::Error::other)?;
    let resp = send.send_request(req).await.map_err(std::io::Error::other)?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(std::io::Error::other)?.to_bytes();
    Ok((status, body.len()))
}

async fn sse(a: &Args) {
    let t = target(a);
    let events: usize = a.get("events").map(|s| s.parse().unwrap()).unwrap_or(50);
    let interval: u64 = a.get("interval-ms").map(|s| s.parse().unwrap()).unwrap_or(20);
    let mut send = t.open().await.unwrap();
    // Warm the connection (and the proxy's upstream pool).
    let (st, _) = get_all(&mut send, t.req("/fixed/16")).await.unwrap();
    assert_eq!(st, 200, "warm-up request failed");
    send.ready().await.unwrap();
    let t0 = Instant::now();
    let resp = send
        .send_request(t.req(&format!("/sse?events={events}&interval_ms={interval}")))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.into_body();
    let mut stamps: Vec<f64> = Vec::new();
    while let Some(f) = body.frame().await {
        let f = f.unwrap();
        if let Some(d) = f.data_ref() {
            let now = t0.elapsed().as_secs_f64() * 1e3;
            let n = d.windows(6).filter(|w| w == b"data: ").count();
            for _ in 0..n {
                stamps.push(now);
            }
        }
    }
    let gaps: Vec<f64> = stamps.windows(2).map(|w| w[1] - w[0]).collect();
    println!(
        "{}",
        serde_json::json!({"events": stamps.len(), "first_ms": stamps.first(), "gaps_ms": gaps})
    );
}

async fn idle(a: &Args) {
    let t = Arc::new(target(a));
    let n: usize = arg(a, "n").parse().unwrap();
    let conc: usize = a.get("concurrency").map(|s| s.parse().unwrap()).unwrap_or(32);
    let sem = Arc::new(tokio::sync::Semaphore::new(conc));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let t = t.clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let mut send = t.open().await.ok()?;
            let (st, _) = get_all(&mut send, t.req("/fixed/16")).await.ok()?;
            (st == 200).then_some(send)
        }));
    }
    let mut held = Vec::with_capacity(n);
    for t in tasks {
        if let Ok(Some(s)) = t.await {
            held.push(s);
        }
    }
    println!("READY {}", held.len());
    std::io::stdout().flush().unwrap();
    // Hold until stdin closes.
    let mut stdin = tokio::io::stdin();
    let mut b = [0u8; 64];
    while stdin.read(&mut b).await.map(|n| n > 0).unwrap_or(false) {}
    drop(held);
}

// ---------------------------------------------------------------- credproxy in a bench process

/// `serve --config F`: credproxy (the `credproxy-proxy` library, configured through the same
/// YAML path as `credproxy serve`) without the CLI glue; used when the CLI binary cannot be built.
async fn serve(a: &Args) {
    let path = PathBuf::from(arg(a, "config"));
    let text = std::fs::read_to_string(&path).unwrap();
    let config = credproxy_config::Config::parse(&text, path.parent().unwrap()).unwrap();
    let proxy = credproxy_proxy::Proxy::bind(config, credproxy_proxy::ProxyOptions::default())
        .await
        .unwrap()
        .spawn();
    eprintln!("listening {}", proxy.tcp_addr().unwrap());
    std::future::pending::<()>().await;
}

// ---------------------------------------------------------------- in-process loop

#[derive(Debug)]
struct MapEnv(HashMap<String, String>);
impl credproxy_secrets::EnvSource for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

async fn inproc_loop(a: &Args) {
    let n: usize = a.get("n").map(|s| s.parse().unwrap()).unwrap_or(1000);
    let path = a.get("path").cloned().unwrap_or_else(|| "/fixed/1024".into());
    let pki = TestPki::new();
    let up = Upstream::start(UpstreamOptions::tls(pki.issue(&[HOST], Validity::Valid))).await;
    let dir = tempfile::tempdir().unwrap();
    let files = cp_config(dir.path(), up.addr(), up.addr().port(), pki.ca_cert_path(), 4096);
    let mut yaml = files.yaml.split("log:\n").next().unwrap().to_string();
    // Under valgrind everything runs ~50x slower: give the policy evaluation limit room, so
    // the loop measures instructions rather than tripping 503 policy_timeout.
    yaml.push_str("policy:\n  eval_limit: 10s\n");
    let config = credproxy_config::Config::parse(&yaml, dir.path()).unwrap();
    let env: HashMap<String, String> = [("BENCH_SECRET".to_string(), SECRET.to_string())].into();
    let proxy = credproxy_proxy::Proxy::bind(
        config,
        credproxy_proxy::ProxyOptions {
            resolver: None,
            env: Some(Arc::new(MapEnv(env))),
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .spawn();
    let t = Target {
        host: HOST.to_string(),
        port: up.addr().port(),
        proxy: proxy.tcp_addr(),
        connect: up.addr(),
        token: Some(files.token.clone()),
        tls: tokio_rustls::TlsConnector::from(client_config(&files.ca_cert, &[b"http/1.1"])),
        // `--no-credential`: the same requests without the placeholder (nothing injected;
        // the response is still scrubbed when the proxy scrubs every response).
        header: (!a.contains_key("no-credential"))
            .then(|| ("x-api-key".into(), PLACEHOLDER.into())),
    };
    let mut send = t.open().await.unwrap();
    let start = Instant::now();
    let mut bytes = 0;
    for i in 0..n {
        let (st, len) = get_all(&mut send, t.req(&path)).await.unwrap();
        assert_eq!(st, 200, "request {i}");
        bytes += len;
        if i % 256 == 0 {
            up.clear_received();
        }
    }
    let el = start.elapsed();
    println!(
        "{}",
        serde_json::json!({"requests": n, "bytes": bytes, "secs": el.as_secs_f64(),
            "us_per_req": el.as_secs_f64() * 1e6 / n as f64})
    );
    proxy.shutdown().await;
}

#[allow(dead_code)]
fn _assert_io<T: AsyncRead + AsyncWrite>() {}
