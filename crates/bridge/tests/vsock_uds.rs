//! Hybrid vsock (`vsock_uds`), as the host sees it.
//!
//! * The proxy's `vsock_uds` listener: a guest's connection arrives as a Unix connection on
//!   `<path>_<port>`. It is proxied like any other listener, its bound agent is enforced, and
//!   the guest-side bridge path (token added by the bridge) works against it.
//! * The bridge's `vsock_uds:PATH:PORT` endpoint: connecting speaks the host-initiated
//!   handshake to the hypervisor's socket exactly as Firecracker documents it (`CONNECT
//!   PORT\n`, then `OK <host port>\n`, then the guest's bytes), here against a local Unix
//!   server that plays the hypervisor; listening binds `PATH_PORT`. The microVM test runs the
//!   same endpoint against vhost-device-vsock and a real guest.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use credproxy_bridge::{Bridge, BridgeArgs, BridgeConfig};
use credproxy_core::ListenAddr;
use credproxy_harness::{client_config, Harness, Setup, HOST};
use credproxy_testkit::tls_over;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

const PH: &str = "agent-vault-00000000-0000-0000-0000-0000000000b2";
const SECRET: &str = "sk-ant-CANARY-uds-1f2e3d4c5b6a";

/// The proxy with one `vsock_uds` listener bound to agent `vm-a` (the default dev issuer
/// verifying), and the socket a guest's connection arrives on.
struct Host {
    h: Harness,
    socket: PathBuf,
}

impl std::ops::Deref for Host {
    type Target = Harness;
    fn deref(&self) -> &Harness {
        &self.h
    }
}

async fn setup() -> Host {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let h = Harness::with(Setup {
        listeners: Some(format!(
            "listeners:\n  - name: vm-a\n    vsock_uds: {{path: {uds}, port: 18790}}\n    unix_mode: \"0600\"\n    agent: vm-a\n",
            uds = d.join("vm-a.vsock").display(),
        )),
        credentials: format!(
            "  - id: anthropic\n    placeholder: {PH}\n    type: api_key\n    bound_domains: [{HOST}]\n    allowed_roles: [proxy-user]\n    source: {{env: KEY}}\n"
        ),
        env: vec![("KEY".into(), SECRET.into())],
        dir: Some(dir),
        ..Setup::default()
    })
    .await;
    Host {
        socket: d.join("vm-a.vsock_18790"),
        h,
    }
}

/// CONNECT (with `auth`, if any) over `s`; on 200, GET /echo with the placeholder over TLS.
/// Returns the CONNECT status line and, on 200, the echo response.
async fn agent_request<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    auth: Option<&str>,
    ca: &Path,
) -> (String, String) {
    let mut req = format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n");
    if let Some(a) = auth {
        req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
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
    let head = String::from_utf8(head).unwrap();
    let status = head.lines().next().unwrap().to_string();
    if !status.starts_with("HTTP/1.1 200") {
        // The refusal keeps the connection open (keep-alive): return the head only.
        return (status, head);
    }
    let mut tls = tls_over(s, HOST, client_config(ca, &[])).await;
    tls.write_all(
        format!(
            "GET /echo HTTP/1.1\r\nHost: {HOST}\r\nx-api-key: {PH}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut resp = Vec::new();
    let _ = tls.read_to_end(&mut resp).await;
    (status, String::from_utf8_lossy(&resp).into_owned())
}

#[tokio::test]
async fn a_guest_on_path_underscore_port_is_proxied_as_its_bound_agent() {
    let s = setup().await;
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&s.socket).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let token = s
        .dev
        .issue("vm-a", &["proxy-user".into()], Duration::from_secs(600))
        .unwrap();
    let conn = UnixStream::connect(&s.socket).await.unwrap();
    let (status, resp) = agent_request(conn, Some(&format!("Bearer {token}")), &s.proxy_ca).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status} {resp}");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(&format!("x-api-key: {PH}")), "{resp}");
    assert!(!resp.contains(SECRET));
    assert_eq!(
        s.upstream.received()[0].header_all("x-api-key"),
        vec![SECRET.to_string()]
    );
}

#[tokio::test]
async fn another_agents_token_is_refused_on_the_bound_listener() {
    let s = setup().await;
    let other = s
        .dev
        .issue("vm-b", &["proxy-user".into()], Duration::from_secs(600))
        .unwrap();
    let conn = UnixStream::connect(&s.socket).await.unwrap();
    let (status, body) = agent_request(conn, Some(&format!("Bearer {other}")), &s.proxy_ca).await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status} {body}");
    let conn = UnixStream::connect(&s.socket).await.unwrap();
    let (status, _) = agent_request(conn, None, &s.proxy_ca).await;
    assert!(status.starts_with("HTTP/1.1 407"), "{status}");
    assert_eq!(s.upstream.request_count(), 0);
}

/// The guest's half without a VM: an agent with no token talks to the bridge, which adds
/// the token and forwards to the hybrid-vsock socket as the hypervisor would.
#[tokio::test]
async fn the_bridge_adds_the_token_for_an_agent_that_has_none() {
    let s = setup().await;
    let token = s
        .dev
        .issue("vm-a", &["proxy-user".into()], Duration::from_secs(600))
        .unwrap();
    let token_file = s.dir.path().join("agent-token");
    std::fs::write(&token_file, token).unwrap();
    let args = BridgeArgs {
        from: "tcp:127.0.0.1:0".into(),
        to: format!("unix:{}", s.socket.display()),
        max_connections: 16,
        buffer_size: 64 * 1024,
        shutdown_grace: Duration::from_secs(1),
        token_file: Some(token_file),
        oidc_token_url: None,
        oidc_issuer: None,
        client_id: None,
        client_secret_file: None,
        audience: None,
        scope: None,
        oidc_ca_files: vec![],
        check: false,
        log: "info".into(),
    };
    let bridge = Bridge::bind(BridgeConfig::from_args(&args).unwrap())
        .await
        .unwrap();
    let ListenAddr::Tcp(addr) = bridge.local_addr().clone() else {
        panic!()
    };
    let task = tokio::spawn(bridge.run(std::future::pending(), Duration::from_secs(1)));
    let conn = TcpStream::connect(addr).await.unwrap();
    let (status, resp) = agent_request(conn, None, &s.proxy_ca).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status} {resp}");
    assert!(resp.contains(&format!("x-api-key: {PH}")), "{resp}");
    assert_eq!(
        s.upstream.received()[0].header_all("x-api-key"),
        vec![SECRET.to_string()]
    );
    task.abort();
}

/// A stand-in for the hypervisor's hybrid-vsock socket, behaving as Firecracker documents:
/// read `CONNECT <port>\n`; for a port a "guest" listens on, answer `OK <host port>\n` and
/// from then on relay the guest, which greets first (in the same write as the `OK`, so a
/// client that reads past the line would lose it) and then echoes; for any other port, close
/// the connection. Every request line is recorded.
struct Hypervisor {
    lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Hypervisor {
    fn start(path: &Path, guest_port: u32, answer: &'static str) -> Hypervisor {
        let l = tokio::net::UnixListener::bind(path).unwrap();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = lines.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut line = Vec::new();
                    let mut b = [0u8; 1];
                    while !line.ends_with(b"\n") {
                        if s.read(&mut b).await.unwrap_or(0) == 0 {
                            return;
                        }
                        line.push(b[0]);
                    }
                    let line = String::from_utf8(line).unwrap();
                    seen.lock().unwrap().push(line.clone());
                    if line != format!("CONNECT {guest_port}\n") {
                        return; // nobody listens there: the connection is closed
                    }
                    s.write_all(format!("{answer}guest-hello\n").as_bytes())
                        .await
                        .unwrap();
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Hypervisor { lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

fn plain_bridge_args(from: String, to: String) -> BridgeArgs {
    BridgeArgs {
        from,
        to,
        max_connections: 16,
        buffer_size: 64 * 1024,
        shutdown_grace: Duration::from_secs(1),
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

#[tokio::test]
async fn the_bridge_reaches_a_guest_port_through_the_hypervisor_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vm-a.vsock");
    let hv = Hypervisor::start(&sock, 18789, "OK 1073741824\n");
    let bridge = Bridge::bind(
        BridgeConfig::from_args(&plain_bridge_args(
            "tcp:127.0.0.1:0".into(),
            format!("vsock_uds:{}:18789", sock.display()),
        ))
        .unwrap(),
    )
    .await
    .unwrap();
    let ListenAddr::Tcp(addr) = bridge.local_addr().clone() else {
        panic!()
    };
    let task = tokio::spawn(bridge.run(std::future::pending(), Duration::from_secs(1)));
    for round in 0..3 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        // The guest's first bytes arrive intact: the handshake consumed exactly its line.
        let mut hello = [0u8; 12];
        c.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"guest-hello\n", "round {round}");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        c.write_all(&data).await.unwrap();
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, data, "round {round}");
    }
    assert_eq!(hv.lines(), vec!["CONNECT 18789\n"; 3]);
    task.abort();
}

#[tokio::test]
async fn a_guest_port_nobody_listens_on_or_a_bad_answer_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vm.vsock");
    let _hv = Hypervisor::start(&sock, 1, "OK 1073741824\n");
    let to = credproxy_bridge::Endpoint::parse(&format!("vsock_uds:{}:5", sock.display())).unwrap();
    let e = to.connect().await.unwrap_err().to_string();
    assert!(
        e.contains("closed the connection in answer to CONNECT 5"),
        "{e}"
    );
    assert!(e.contains("is a guest listening on vsock port 5?"), "{e}");

    let bad = dir.path().join("bad.vsock");
    let _bad = Hypervisor::start(&bad, 7, "FAILURE\n");
    let to = credproxy_bridge::Endpoint::parse(&format!("vsock_uds:{}:7", bad.display())).unwrap();
    let e = to.connect().await.unwrap_err().to_string();
    assert!(e.contains("answered \"FAILURE\" to CONNECT 7"), "{e}");

    let none = credproxy_bridge::Endpoint::parse(&format!(
        "vsock_uds:{}:7",
        dir.path().join("missing").display()
    ))
    .unwrap();
    let e = none.connect().await.unwrap_err().to_string();
    assert!(e.contains("cannot connect to the hypervisor socket"), "{e}");
}

/// Listening on `vsock_uds:PATH:PORT` is where the hypervisor delivers a guest's connection to
/// host port PORT: the Unix socket `PATH_PORT`.
#[tokio::test]
async fn listening_on_vsock_uds_binds_path_underscore_port() {
    let dir = tempfile::tempdir().unwrap();
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = echo.accept().await.unwrap();
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    });
    let base = dir.path().join("vm-a.vsock");
    let bridge = Bridge::bind(
        BridgeConfig::from_args(&plain_bridge_args(
            format!("vsock_uds:{}:8200", base.display()),
            format!("tcp:{echo_addr}"),
        ))
        .unwrap(),
    )
    .await
    .unwrap();
    let task = tokio::spawn(bridge.run(std::future::pending(), Duration::from_secs(1)));
    let mut c = UnixStream::connect(dir.path().join("vm-a.vsock_8200"))
        .await
        .unwrap();
    c.write_all(b"from the guest").await.unwrap();
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"from the guest");
    task.abort();
}
