//! Listener-bound identity (D1) end to end, without a VM: a real OIDC provider (oidc-provider
//! on Node); the proxy in-process with a per-VM `vsock_uds` listener bound to agent `vm-a`
//! whose token the proxy obtains itself (`agent_token.client_credentials`, the client secret
//! in a host file); the guest side's `credproxy bridge` carrying no token (plain bytes to the
//! hypervisor's socket, `<path>_<port>`); curl as the agent with `HTTPS_PROXY` pointing at the
//! bridge.
//!
//! Asserted: the token is obtained at start and a request is injected with the credential its
//! roles allow (and not with one they do not); the token is refreshed before it expires
//! (the provider's clock and the proxy's moved forward together, waits on the refresh
//! metric, never on a fixed time) and a tunnel opened with an older token continues on the
//! fresh one; with the provider down at start requests get 503 `listener_token_unavailable`
//! and `/readyz` says why, then both recover once it is up; another agent's token presented
//! on this listener is refused; the client secret never reaches logs, errors, `/readyz`,
//! metrics or audit; the dev issuer works through the same verifier.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use credproxy_bridge::{Bridge, BridgeArgs, BridgeConfig};
use credproxy_core::ListenAddr;
use credproxy_harness::{Client, Harness, Logs, Response, Setup, HOST};
use credproxy_testkit::oidc::{free_port, OidcProvider, OidcProviderOptions, TestClient};
use credproxy_testkit::{connect_tunnel, tls_over};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PORT: u32 = 18790;
const ROLE: &str = "proxy-user";
const PH: &str = "agent-vault-00000000-0000-0000-0000-0000000000d1";
const ADMIN_PH: &str = "agent-vault-00000000-0000-0000-0000-0000000000d2";
const SECRET: &str = "sk-ant-CANARY-d1-listener-7f6e5d4c";
const ADMIN_SECRET: &str = "sk-admin-CANARY-d1-0a1b2c3d";
/// vm-a's client secret: lives only in the provider and a host file.
const CLIENT_SECRET: &str = "vm-a-client-secret-CANARY-3c2b1a09";
/// A wrong secret for a listener whose token request the provider refuses.
const WRONG_SECRET: &str = "vm-c-wrong-secret-CANARY-5e6f7a8b";
/// Upper bound of every wait.
const WAIT: Duration = Duration::from_secs(60);

/// Every log line of this test binary (JSON, debug level), for the canary checks.
fn logs() -> Logs {
    credproxy_harness::logs::capture(
        "debug,credproxy_proxy=trace,credproxy_identity=trace,credproxy_bridge=trace",
    )
}

/// This process's uid: the only peer the Unix listeners here admit (`peer_uids`).
fn own_uid() -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap())
}

/// The credential `anthropic` (x-api-key, role ROLE, `env: KEY` = SECRET), and with `admin`
/// also `admin-only` (x-admin-key, role `admin`, `env: ADMIN_KEY`).
fn credentials(admin: bool) -> String {
    let mut c = format!(
        "  - id: anthropic\n    placeholder: {PH}\n    type: api_key\n    header_name: x-api-key\n    bound_domains: [{HOST}]\n    allowed_roles: [{ROLE}]\n    source: {{env: KEY}}\n"
    );
    if admin {
        c.push_str(&format!(
            "  - id: admin-only\n    placeholder: {ADMIN_PH}\n    type: api_key\n    header_name: x-admin-key\n    bound_domains: [{HOST}]\n    allowed_roles: [admin]\n    source: {{env: ADMIN_KEY}}\n"
        ));
    }
    c
}

fn env() -> Vec<(String, String)> {
    vec![
        ("KEY".into(), SECRET.into()),
        ("ADMIN_KEY".into(), ADMIN_SECRET.into()),
    ]
}

/// The host (proxy, upstream) and the guest side (bridge) of one VM, `vm-a`.
struct D1 {
    h: Harness,
    bridge: SocketAddr,
    _bridge_task: tokio::task::JoinHandle<()>,
}

impl std::ops::Deref for D1 {
    type Target = Harness;
    fn deref(&self) -> &Harness {
        &self.h
    }
}

/// `provider_port`: the provider's port (it may not be running yet). `extra_listeners`: YAML
/// list items appended under `listeners:`.
async fn start(provider_port: u16, extra_listeners: &str) -> D1 {
    start_on(
        provider_port,
        extra_listeners,
        credproxy_core::Clock::system(),
    )
    .await
}

/// [`start`] with the proxy on `clock` (its verifier and its listener tokens' refresher).
async fn start_on(provider_port: u16, extra_listeners: &str, clock: credproxy_core::Clock) -> D1 {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("vm-a-secret"), format!("{CLIENT_SECRET}\n")).unwrap();
    let issuer = format!("http://127.0.0.1:{provider_port}");
    let listeners = format!(
        r#"listeners:
  - name: vm-a
    vsock_uds: {{path: {uds}, port: {PORT}}}
    unix_mode: "0600"
    agent: vm-a
    agent_token:
      client_credentials:
        token_url: {issuer}/token
        client_id: vm-a
        client_secret_file: {secret}
        audience: "urn:credproxy"
{extra_listeners}"#,
        uds = d.join("vm-a.vsock").display(),
        secret = d.join("vm-a-secret").display(),
    );
    let socket = d.join(format!("vm-a.vsock_{PORT}"));
    let h = Harness::with(Setup {
        listeners: Some(listeners),
        admin: true,
        identity: Some(format!(
            "identity:\n  oidc: {{issuer: \"{issuer}\", audiences: [credproxy], leeway: 0s}}\n"
        )),
        credentials: credentials(true),
        env: env(),
        dir: Some(dir),
        clock,
        ..Setup::default()
    })
    .await;
    // The guest's bridge: no token, no secret; the hypervisor's socket is `<path>_<port>`.
    let (bridge, task) = bridge(&socket).await;
    D1 {
        h,
        bridge,
        _bridge_task: task,
    }
}

/// The guest's bridge from an OS-assigned TCP port to the Unix socket `to`, carrying no token.
async fn bridge(to: &Path) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let bridge = Bridge::bind(BridgeConfig::from_args(&bridge_args(to)).unwrap())
        .await
        .unwrap();
    let ListenAddr::Tcp(addr) = bridge.local_addr().clone() else {
        panic!()
    };
    let task = tokio::spawn(bridge.run(std::future::pending(), Duration::from_secs(1)));
    (addr, task)
}

fn bridge_args(socket: &Path) -> BridgeArgs {
    BridgeArgs {
        from: "tcp:127.0.0.1:0".into(),
        to: format!("unix:{}", socket.display()),
        max_connections: 64,
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

impl D1 {
    /// The agent: curl with `HTTPS_PROXY` the guest bridge (no credentials in it), the proxy
    /// CA trusted.
    fn agent(&self) -> Client {
        Client::new(format!("http://{}", self.bridge), &self.proxy_ca).with_proxy_from_env()
    }

    /// GET /echo as the agent with `headers`; `proxy_user` adds `--proxy-user` (a token the
    /// agent presents itself).
    async fn curl(&self, headers: &[String], proxy_user: Option<&str>) -> Response {
        let mut req = self.agent().get(format!("https://{HOST}/echo"));
        for h in headers {
            req = req.header_line(h);
        }
        if let Some(u) = proxy_user {
            req = req.curl_args(&["--proxy-user", u]);
        }
        tokio::time::timeout(WAIT, req.send())
            .await
            .expect("curl finished")
    }

    /// A CONNECT through the bridge with `Connection: close`: the response head and body.
    async fn raw_connect(&self, extra: &str) -> (String, String) {
        let mut s = TcpStream::connect(self.bridge).await.unwrap();
        s.write_all(
            format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n{extra}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (head.to_owned(), body.to_owned())
    }

    /// Wait until `series` reaches `at_least` (an event the refresher causes), bounded.
    async fn wait_metric(&self, series: &str, at_least: f64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.metric(series).await;
            if v >= at_least {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} stayed at {v} (wanted {at_least})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn audit(&self) -> Vec<credproxy_audit::record::AuditRecord> {
        credproxy_audit::query::list(
            &self.dir.path().join("audit.db"),
            &credproxy_audit::query::Filter::default(),
        )
        .unwrap()
    }
}

/// One whole HTTP/1.1 response read off `s` (its head, and its body by `content-length` or
/// chunked up to the last chunk), so that the next read starts at the next response. A
/// single `read` may return only part of it: the proxy writes the head and the body's chunks
/// as they come from the upstream.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(end) = response_end(&got) {
            assert_eq!(
                end,
                got.len(),
                "bytes past the response: {:?}",
                String::from_utf8_lossy(&got)
            );
            return String::from_utf8_lossy(&got).into_owned();
        }
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("the response came in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed after {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// Where the HTTP/1.1 response at the start of `b` ends, once all of it is there. No
/// trailers (the echo sends none unless asked).
fn response_end(b: &[u8]) -> Option<usize> {
    let find = |from: usize, what: &[u8]| {
        b.get(from..)?
            .windows(what.len())
            .position(|w| w == what)
            .map(|i| from + i)
    };
    let body = find(0, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&b[..body]).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
            .map(str::to_owned)
    };
    if let Some(len) = header("content-length") {
        let end = body + len.parse::<usize>().unwrap();
        return (b.len() >= end).then_some(end);
    }
    assert_eq!(
        header("transfer-encoding").as_deref(),
        Some("chunked"),
        "{head}"
    );
    let mut at = body;
    loop {
        let line = find(at, b"\r\n")?;
        let size = std::str::from_utf8(&b[at..line]).unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        at = line + 2 + size + 2;
        if b.len() < at {
            return None;
        }
        if size == 0 {
            return Some(at);
        }
    }
}

const OK_SERIES: &str = r#"credproxy_agent_token_refreshes_total{listener="vm-a",result="ok"}"#;

fn clients() -> Vec<TestClient> {
    let mut a = TestClient::new("vm-a", &[ROLE]);
    a.secret = CLIENT_SECRET.into();
    vec![a, TestClient::new("vm-b", &[ROLE])]
}

async fn provider(ttl: u64, port: u16) -> OidcProvider {
    OidcProvider::start(OidcProviderOptions {
        clients: clients(),
        token_ttl_secs: ttl,
        port,
        ..OidcProviderOptions::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_token_authenticates_the_vm_and_its_roles_pick_the_credential() {
    let provider = provider(300, 0).await;
    let h = start(provider.port(), "").await;
    assert!(h.proxy.wait_ready(WAIT).await, "not ready");
    assert_eq!(
        h.metric(OK_SERIES).await,
        1.0,
        "one token obtained at start"
    );

    // No token anywhere on the agent's side: the listener's identity applies.
    let c = h.curl(&[format!("x-api-key: {PH}")], None).await;
    assert_eq!(c.status, 200, "{c}");
    assert!(c.text().contains(&format!("x-api-key: {PH}")), "{c}");
    assert!(!c.text().contains(SECRET), "{c}");
    let got = h.upstream.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header_all("x-api-key"), vec![SECRET.to_string()]);
    assert!(got[0].header("proxy-authorization").is_none());

    // The credential its roles do not allow is refused by policy, and nothing is sent.
    let c = h.curl(&[format!("x-admin-key: {ADMIN_PH}")], None).await;
    assert_eq!(c.status, 403, "{c}");
    assert!(c.text().contains("denied by policy"), "{c}");
    assert_eq!(h.upstream.request_count(), 1);

    h.proxy.flush_audit().await;
    let records = h.audit();
    let used: Vec<_> = records
        .iter()
        .filter(|r| !r.credentials.is_empty())
        .collect();
    assert_eq!(used.len(), 2, "{records:#?}");
    for r in &used {
        assert_eq!(r.agent_id.as_deref(), Some("vm-a"), "{r:#?}");
        assert_eq!(r.listener, "vm-a");
        assert!(r.peer.starts_with(&format!("vsock_uds:{PORT}")), "{r:#?}");
    }

    let (status, ready) = h.admin_get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert!(
        ready.contains("listener vm-a agent token: valid for vm-a, expires in"),
        "{ready}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_refreshed_before_it_expires_and_an_open_tunnel_moves_on_to_it() {
    // A 300 s lifetime, refreshed at 240 s; the verifier has no leeway. The proxy's clock and
    // the provider's are moved forward together instead of waiting for either.
    const TTL: u64 = 300;
    let provider = provider(TTL, 0).await;
    let clock = credproxy_core::Clock::adjustable();
    let h = start_on(provider.port(), "", clock.clone()).await;
    assert!(h.proxy.wait_ready(WAIT).await, "not ready");

    // A tunnel opened with the first token.
    let (tcp, status, _) = connect_tunnel(h.bridge, &format!("{HOST}:443"), &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
    let mut tls = tls_over(tcp, HOST, h.proxy_client_config(&["http/1.1"])).await;
    let req = format!("GET /echo HTTP/1.1\r\nHost: {HOST}\r\nx-api-key: {PH}\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let resp = read_response(&mut tls).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    // Past the refresh point twice: 510 s after the token that request used (obtained at t,
    // expired at t + 300 s), the listener holds a third one, obtained at t + 510 s.
    let step = Duration::from_secs(TTL * 85 / 100);
    for _ in 0..2 {
        let before = h.metric(OK_SERIES).await;
        provider.advance(step).await;
        clock.advance(step);
        h.wait_metric(OK_SERIES, before + 1.0).await;
    }
    assert_eq!(
        h.metric(r#"credproxy_agent_token_refreshes_total{listener="vm-a",result="error"}"#)
            .await,
        0.0
    );
    assert_eq!(
        h.metric(r#"credproxy_agent_token_valid{listener="vm-a"}"#)
            .await,
        1.0
    );

    // The same tunnel goes on with the listener's current token (no 407 the agent could
    // not act on) ...
    tls.write_all(req.as_bytes()).await.unwrap();
    let resp = read_response(&mut tls).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // ... and a new connection too.
    let c = h.curl(&[format!("x-api-key: {PH}")], None).await;
    assert_eq!(c.status, 200, "{c}");

    // Three requests, made with two different tokens (the audit keeps a hash of each jti).
    h.proxy.flush_audit().await;
    let used: Vec<_> = h
        .audit()
        .into_iter()
        .filter(|r| !r.credentials.is_empty())
        .collect();
    assert_eq!(used.len(), 3, "{used:#?}");
    assert_ne!(used[0].token_id_hash, used[1].token_id_hash, "{used:#?}");
    assert!(used.iter().all(|r| r.agent_id.as_deref() == Some("vm-a")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_provider_down_at_start_requests_get_503_then_recover() {
    let port = free_port();
    let h = start(port, "").await;

    let c = h.curl(&[format!("x-api-key: {PH}")], None).await;
    assert_eq!(c.connect, 503, "{c}");
    let (head, body) = h.raw_connect("").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.contains("x-credproxy-reason: listener_token_unavailable"),
        "{head}"
    );
    assert!(
        body.contains("this listener (vm-a) authenticates its agent with a token the proxy obtains, and it has no valid one (the identity provider has not issued one)"),
        "{body}"
    );
    assert_eq!(h.upstream.request_count(), 0);
    let (status, ready) = h.admin_get("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready.contains("listener vm-a agent token: unavailable: cannot reach the token endpoint"),
        "{ready}"
    );

    // The provider comes up: the refresher's retry gets a token, the verifier its keys.
    let _provider = provider(300, port).await;
    assert!(h.proxy.wait_ready(WAIT).await, "never recovered");
    let c = h.curl(&[format!("x-api-key: {PH}")], None).await;
    assert_eq!(c.status, 200, "{c}");
    let (status, ready) = h.admin_get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert!(
        h.metric(r#"credproxy_agent_token_refreshes_total{listener="vm-a",result="error"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_agents_token_is_refused_on_this_listener() {
    let provider = provider(300, 0).await;
    let h = start(provider.port(), "").await;
    assert!(h.proxy.wait_ready(WAIT).await, "not ready");
    let b = provider.token("vm-b").await;
    let c = h
        .curl(&[format!("x-api-key: {PH}")], Some(&format!("vm-b:{b}")))
        .await;
    assert_eq!(c.connect, 403, "{c}");
    let (head, body) = h
        .raw_connect(&format!("Proxy-Authorization: Bearer {b}\r\n"))
        .await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(
        head.contains("x-credproxy-reason: listener_agent_mismatch"),
        "{head}"
    );
    assert!(body.contains("bound to another agent"), "{body}");
    assert_eq!(h.upstream.request_count(), 0);

    // The VM's own agent presenting its own token is fine: the binding, not the source,
    // decides.
    let a = provider.token("vm-a").await;
    let c = h
        .curl(&[format!("x-api-key: {PH}")], Some(&format!("vm-a:{a}")))
        .await;
    assert_eq!(c.status, 200, "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_secret_never_reaches_logs_errors_readyz_metrics_or_audit() {
    let provider = provider(300, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("vm-c-secret");
    std::fs::write(&wrong, WRONG_SECRET).unwrap();
    // A second VM whose secret the provider refuses (invalid_client).
    let extra = format!(
        "  - name: vm-c\n    unix: {sock}\n    peer_uids: [{uid}]\n    agent: vm-a\n    agent_token:\n      client_credentials:\n        token_url: http://127.0.0.1:{port}/token\n        client_id: vm-a\n        client_secret_file: {wrong}\n",
        sock = dir.path().join("vm-c.sock").display(),
        uid = own_uid(),
        port = provider.port(),
        wrong = wrong.display(),
    );
    let h = start(provider.port(), &extra).await;
    h.proxy.wait_ready(Duration::from_secs(5)).await;
    h.wait_metric(
        r#"credproxy_agent_token_refreshes_total{listener="vm-c",result="error"}"#,
        1.0,
    )
    .await;
    h.wait_metric(OK_SERIES, 1.0).await;

    let mut agent_saw = Vec::new();
    let c = h.curl(&[format!("x-api-key: {PH}")], None).await;
    assert_eq!(c.status, 200, "{c}");
    agent_saw.extend_from_slice(&c.body);
    // vm-c's listener has no token: its refusal is what its agent sees.
    let mut s = tokio::net::UnixStream::connect(dir.path().join("vm-c.sock"))
        .await
        .unwrap();
    s.write_all(
        format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut refusal = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut refusal))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&refusal).starts_with("HTTP/1.1 503"));
    agent_saw.extend_from_slice(&refusal);

    let (status, ready) = h.admin_get("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready.contains(
            "listener vm-c agent token: unavailable: the provider refused the token request"
        ),
        "{ready}"
    );
    let (_, metrics) = h.admin_get("/metrics").await;
    h.proxy.flush_audit().await;
    let audit = format!("{:?}", h.audit());
    let logged = logs().bytes();
    assert!(!logged.is_empty());
    for secret in [CLIENT_SECRET, WRONG_SECRET] {
        for (what, bytes) in [
            ("logs", &logged),
            ("readyz", &ready.clone().into_bytes()),
            ("metrics", &metrics.clone().into_bytes()),
            ("audit", &audit.clone().into_bytes()),
            ("agent", &agent_saw),
        ] {
            if let Some(form) = credproxy_testkit::contains_any_rendering(bytes, secret.as_bytes())
            {
                panic!("{what} contain the client secret {secret} as {form}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_issuer_token_goes_through_the_same_verifier() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let key = d.join("state/dev-issuer-key.pem");
    let h = Harness::with(Setup {
        listeners: Some(format!(
            "listeners:\n  - name: vm-a\n    unix: {sock}\n    peer_uids: [{uid}]\n    agent: vm-a\n    agent_token:\n      dev_issuer: {{key_file: {key}, roles: [{ROLE}]}}\n",
            sock = d.join("vm-a.sock").display(),
            uid = own_uid(),
            key = key.display(),
        )),
        identity: Some(
            "identity:\n  oidc: {issuer: credproxy-dev, audiences: [credproxy], algorithms: [ES256]}\n"
                .into(),
        ),
        credentials: credentials(false),
        env: env(),
        dir: Some(dir),
        ..Setup::default()
    })
    .await;
    assert!(h.proxy.wait_ready(WAIT).await);
    // The key was created, private.
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "{mode:o}");
    let (addr, _task) = bridge(&d.join("vm-a.sock")).await;
    let c = Client::new(format!("http://{addr}"), &h.proxy_ca)
        .get(format!("https://{HOST}/echo"))
        .header("x-api-key", PH)
        .send()
        .await;
    assert_eq!(c.status, 200, "{c}");
    assert_eq!(
        h.upstream.received()[0].header_all("x-api-key"),
        vec![SECRET.to_string()]
    );

    // A token from another dev key (same issuer name) does not verify here.
    let other = credproxy_identity::DevIssuer::load_or_create(&d.join("other")).unwrap();
    let forged = other
        .issue("vm-a", &[ROLE.to_string()], Duration::from_secs(600))
        .unwrap();
    let (_, status, _) = connect_tunnel(
        addr,
        &format!("{HOST}:443"),
        &[("Proxy-Authorization", &format!("Bearer {forged}"))],
    )
    .await
    .unwrap();
    assert_eq!(status, 407);
}
