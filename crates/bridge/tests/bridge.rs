//! The bridge over real sockets: many concurrent connections, half-close, a large transfer
//! checked by hash, token injection on CONNECT and absolute-form requests, refusals an agent
//! can read, token refresh before expiry against the real OIDC provider, and SIGTERM.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use credproxy_bridge::{Bridge, BridgeArgs, BridgeConfig};
use credproxy_core::ListenAddr;
use credproxy_testkit::oidc::{OidcProvider, OidcProviderOptions, TestClient};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::oneshot;

fn args(from: &str, to: &str) -> BridgeArgs {
    BridgeArgs {
        from: from.into(),
        to: to.into(),
        max_connections: 1024,
        buffer_size: 64 * 1024,
        shutdown_grace: Duration::from_secs(2),
        token_file: None,
        oidc_token_url: None,
        oidc_issuer: None,
        client_id: None,
        client_secret_file: None,
        audience: None,
        scope: None,
        oidc_ca_files: vec![],
        check: false,
        log: "info".into(),
    }
}

/// A running bridge; stopped (like SIGTERM) when `stop` is sent or on drop.
struct Running {
    addr: ListenAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(a: BridgeArgs) -> Running {
        Running::start_on(a, credproxy_core::Clock::system()).await
    }

    /// On `clock` (the token refresher's).
    async fn start_on(a: BridgeArgs, clock: credproxy_core::Clock) -> Running {
        let grace = a.shutdown_grace;
        let mut config = BridgeConfig::from_args(&a).unwrap();
        config.clock = clock;
        let bridge = Bridge::bind(config).await.unwrap();
        let addr = bridge.local_addr().clone();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(bridge.run(
            async {
                let _ = rx.await;
            },
            grace,
        ));
        Running {
            addr,
            stop: Some(tx),
            task,
        }
    }

    fn tcp(&self) -> SocketAddr {
        match self.addr {
            ListenAddr::Tcp(a) => a,
            ref other => panic!("{other}"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An echo server that passes a half-close on: after the client's EOF it finishes writing
/// and shuts down its own side.
async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Send `data`, half-close, and read everything back.
async fn roundtrip<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    s: S,
    data: Vec<u8>,
) -> Vec<u8> {
    let (mut r, mut w) = tokio::io::split(s);
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections_each_get_their_own_bytes() {
    let echo = echo_server().await;
    let b = Running::start(args("tcp:127.0.0.1:0", &format!("tcp:{echo}"))).await;
    let addr = b.tcp();
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        tasks.push(tokio::spawn(async move {
            let data: Vec<u8> = (0..20_000u32).flat_map(|j| (i ^ j).to_le_bytes()).collect();
            let s = TcpStream::connect(addr).await.unwrap();
            assert_eq!(roundtrip(s, data.clone()).await, data, "connection {i}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn a_half_close_reaches_the_other_side_and_the_answer_still_comes_back() {
    // A server that answers only after the client finished sending (like `wc`).
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.write_all(format!("got {} bytes", got.len()).as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    });
    let b = Running::start(args("tcp:127.0.0.1:0", &format!("tcp:{server}"))).await;
    let s = TcpStream::connect(b.tcp()).await.unwrap();
    let got = roundtrip(s, vec![7u8; 12345]).await;
    assert_eq!(got, b"got 12345 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transfer_arrives_intact_unix_to_tcp() {
    let echo = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("bridge.sock");
    let mut a = args(&format!("unix:{}", sock.display()), &format!("tcp:{echo}"));
    a.buffer_size = 16 * 1024;
    let _b = Running::start(a).await;
    let mut data = vec![0u8; 48 * 1024 * 1024];
    rand::thread_rng().fill_bytes(&mut data);
    let want = hex::encode(Sha256::digest(&data));
    let s = UnixStream::connect(&sock).await.unwrap();
    let got = roundtrip(s, data).await;
    assert_eq!(hex::encode(Sha256::digest(&got)), want);
}

/// A stand-in proxy that records each request head, answers a CONNECT with 200 and then
/// echoes the tunnel, and answers anything else with a small 200 response.
#[derive(Clone, Default)]
struct Recorder {
    heads: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    async fn start(&self) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let heads = self.heads.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let heads = heads.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if s.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let text = String::from_utf8(head).unwrap();
                    let connect = text.starts_with("CONNECT ");
                    heads.lock().unwrap().push(text);
                    if connect {
                        s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    } else {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                });
            }
        });
        addr
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

fn header<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.split("\r\n")
        .filter_map(|l| l.split_once(": "))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

/// CONNECT through the bridge; returns the response head and the stream after it.
async fn connect_via(bridge: SocketAddr, extra: &str) -> (String, TcpStream) {
    let mut s = TcpStream::connect(bridge).await.unwrap();
    s.write_all(
        format!(
            "CONNECT api.anthropic.com:443 HTTP/1.1\r\nHost: api.anthropic.com:443\r\n{extra}\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "{}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    (String::from_utf8(head).unwrap(), s)
}

#[tokio::test]
async fn connect_and_absolute_form_get_the_token_and_the_tunnel_is_untouched() {
    let rec = Recorder::default();
    let proxy = rec.start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "tok-one\n").unwrap();
    let mut a = args("tcp:127.0.0.1:0", &format!("tcp:{proxy}"));
    a.token_file = Some(token_file.clone());
    let b = Running::start(a).await;

    // The client's own Proxy-Authorization is replaced, not duplicated.
    let (head, mut s) = connect_via(b.tcp(), "Proxy-Authorization: Basic Zm9vOmJhcg==\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Tunnel bytes pass unchanged, including ones that look like a request head.
    let payload = b"GET http://x/ HTTP/1.1\r\nProxy-Authorization: keep\r\n\r\n\x16\x03\x01";
    s.write_all(payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back[..], &payload[..]);
    let heads = rec.heads();
    assert_eq!(
        header(&heads[0], "proxy-authorization"),
        vec!["Bearer tok-one"]
    );
    assert_eq!(header(&heads[0], "host"), vec!["api.anthropic.com:443"]);

    // The file is read per connection: a rotated token is used by the next one.
    std::fs::write(&token_file, "tok-two").unwrap();
    let mut s = TcpStream::connect(b.tcp()).await.unwrap();
    s.write_all(b"GET http://plain.example/x HTTP/1.1\r\nHost: plain.example\r\nProxy-Connection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.unwrap();
    assert!(resp.ends_with(b"ok"), "{}", String::from_utf8_lossy(&resp));
    let heads = rec.heads();
    assert_eq!(
        header(&heads[1], "proxy-authorization"),
        vec!["Bearer tok-two"]
    );
    assert_eq!(header(&heads[1], "connection"), vec!["close"]);
    assert!(header(&heads[1], "proxy-connection").is_empty());
}

#[tokio::test]
async fn refusals_are_http_answers_an_agent_can_read() {
    let dir = tempfile::tempdir().unwrap();
    // No token available: 503 naming the problem.
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let unreachable = free.local_addr().unwrap();
    drop(free);
    let mut a = args("tcp:127.0.0.1:0", &format!("tcp:{unreachable}"));
    a.token_file = Some(dir.path().join("missing"));
    let b = Running::start(a).await;
    let (head, mut s) = connect_via(b.tcp(), "").await;
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(body.contains("cannot read the token file"), "{body}");
    // Token present, proxy unreachable: 502.
    std::fs::write(dir.path().join("missing"), "t").unwrap();
    let (head, mut s) = connect_via(b.tcp(), "").await;
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(body.contains("cannot reach the proxy"), "{body}");
}

#[tokio::test]
async fn bad_arguments_are_usage_errors() {
    for (from, to) in [
        ("tcp:localhost:1", "tcp:127.0.0.1:2"),
        ("tcp:127.0.0.1:0", "vsock:any:1"),
        ("udp:1.2.3.4:5", "tcp:127.0.0.1:2"),
    ] {
        assert!(
            BridgeConfig::from_args(&args(from, to)).is_err(),
            "{from} {to}"
        );
    }
    let mut a = args("tcp:127.0.0.1:0", "tcp:127.0.0.1:1");
    a.oidc_token_url = Some("http://127.0.0.1:1/token".into());
    let e = BridgeConfig::from_args(&a).unwrap_err().to_string();
    assert!(e.contains("--client-id"), "{e}");
    assert_eq!(
        credproxy_bridge::run(args("tcp:nowhere:1", "tcp:127.0.0.1:1")).await,
        std::process::ExitCode::from(64)
    );
}

fn jwt_exp(token: &str) -> u64 {
    let payload = token.split('.').nth(1).unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    v["exp"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_token_is_refreshed_before_it_expires() {
    // The bridge's clock and the provider's are moved forward together: each refresh (at
    // 80% of a token's lifetime) and the final expiry are reached at once, not waited for.
    const TTL: u64 = 300;
    let mut provider = OidcProvider::start(OidcProviderOptions {
        clients: vec![TestClient::new("vm-a", &["proxy-user"])],
        token_ttl_secs: TTL,
        ..OidcProviderOptions::default()
    })
    .await;
    let rec = Recorder::default();
    let proxy = rec.start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file: PathBuf = dir.path().join("secret");
    std::fs::write(&secret_file, "vm-a-secret\n").unwrap();
    let mut a = args("tcp:127.0.0.1:0", &format!("tcp:{proxy}"));
    a.oidc_token_url = Some(provider.token_url());
    a.client_id = Some("vm-a".into());
    a.client_secret_file = Some(secret_file);
    let clock = credproxy_core::Clock::adjustable();
    let b = Running::start_on(a, clock.clone()).await;

    // The token the bridge adds to a request now; it must be unexpired on the moved clock.
    let token_used = || async {
        let (head, _s) = connect_via(b.tcp(), "").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let heads = rec.heads();
        let auth = header(heads.last().unwrap(), "proxy-authorization")[0].to_string();
        let token = auth.strip_prefix("Bearer ").unwrap().to_string();
        let now = clock.now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(jwt_exp(&token) > now, "an expired token was added");
        token
    };
    let mut seen = vec![token_used().await];
    // Twice past 80% of the current token's lifetime: the bridge gets a new token each time
    // (asked for on the advance, so within the bounded wait below), and never adds an
    // expired one meanwhile.
    let step = Duration::from_secs(TTL * 85 / 100);
    for round in 1..=2 {
        provider.advance(step).await;
        clock.advance(step);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let token = token_used().await;
            if Some(&token) != seen.last() {
                seen.push(token);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no new token after advance {round}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(seen.len(), 3, "one token, then one per refresh");

    // The provider goes away: the current token stays in use until it expires, then the
    // agent gets a 503 that says why.
    provider.stop().await;
    let (head, _s) = connect_via(b.tcp(), "").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    clock.advance(Duration::from_secs(TTL + 1));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (head, mut s) = connect_via(b.tcp(), "").await;
        if head.starts_with("HTTP/1.1 503") {
            let mut body = String::new();
            s.read_to_string(&mut body).await.unwrap();
            assert!(body.contains("expired and refreshing failed"), "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the expired token was still used"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn shutdown_stops_accepting_and_lets_open_connections_finish() {
    let echo = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("b.sock");
    let mut b = Running::start(args(
        &format!("unix:{}", sock.display()),
        &format!("tcp:{echo}"),
    ))
    .await;
    let mut open = UnixStream::connect(&sock).await.unwrap();
    open.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    open.read_exact(&mut buf).await.unwrap();
    b.stop.take().unwrap().send(()).unwrap();
    // The socket goes away promptly; the open connection keeps working within the grace.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sock.exists() {
        assert!(std::time::Instant::now() < deadline, "socket still there");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(roundtrip(open, b"after".to_vec()).await, b"after");
    tokio::time::timeout(Duration::from_secs(5), &mut b.task)
        .await
        .unwrap()
        .unwrap();
}
