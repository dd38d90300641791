//! Listener-bound identity (D1) end to end, without a VM: a real OIDC provider (oidc-provider
//! on Node); the proxy in-process with a per-VM `vsock_uds` listener bound to agent `vm-a`
//! whose token the proxy obtains itself (`agent_token.client_credentials`, the client secret
//! in a host file); the guest side's `credproxy bridge` carrying no token (plain bytes to the
//! hypervisor's socket, `<path>_<port>`); curl as the agent with `HTTPS_PROXY` pointing at the
//! bridge.
//!
//! Asserted: the token is obtained at start and a request is injected with the credential its
//! roles allow (and not with one they do not); the token is refreshed before it expires
//! (short lifetimes from the provider, waits on the refresh metric, never on a fixed time)
//! and a tunnel opened with an older token continues on the fresh one; with the provider down
//! at start requests get 503 `listener_token_unavailable` and `/readyz` says why, then both
//! recover once it is up; another agent's token presented on this listener is refused; the
//! client secret never reaches logs, errors, `/readyz`, metrics or audit; the dev issuer works
//! through the same verifier.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use credproxy_bridge::{Bridge, BridgeArgs, BridgeConfig};
use credproxy_config::Config;
use credproxy_core::ListenAddr;
use credproxy_proxy::{Proxy, ProxyOptions, RunningProxy};
use credproxy_testkit::oidc::{free_port, OidcProvider, OidcProviderOptions, TestClient};
use credproxy_testkit::{connect_tunnel, tls_over, TestPki, Upstream, UpstreamOptions, Validity};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "api.anthropic.com";
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
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "debug,credproxy_proxy=trace,credproxy_identity=trace,credproxy_bridge=trace",
            ))
            .with_writer(move || writer.clone())
            .json()
            .try_init();
        logs
    })
    .clone()
}

/// This process's uid: the only peer the Unix listeners here admit (`peer_uids`).
fn own_uid() -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap())
}

#[derive(Debug)]
struct Env;
impl credproxy_secrets::EnvSource for Env {
    fn var(&self, name: &str) -> Option<String> {
        match name {
            "KEY" => Some(SECRET.into()),
            "ADMIN_KEY" => Some(ADMIN_SECRET.into()),
            _ => None,
        }
    }
}

/// The host (proxy, upstream) and the guest side (bridge) of one VM, `vm-a`.
struct D1 {
    dir: tempfile::TempDir,
    upstream: Upstream,
    proxy: RunningProxy,
    proxy_ca: PathBuf,
    bridge: SocketAddr,
    _bridge_task: tokio::task::JoinHandle<()>,
}

/// `provider_port`: the provider's port (it may not be running yet). `extra_listeners`: YAML
/// list items appended under `listeners:`.
async fn start(provider_port: u16, extra_listeners: &str) -> D1 {
    logs();
    let pki = TestPki::new();
    let upstream = Upstream::start(UpstreamOptions::tls(pki.issue(&[HOST], Validity::Valid))).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = credproxy_tls::init_ca(&d.join("ca"), false).unwrap();
    std::fs::write(d.join("vm-a-secret"), format!("{CLIENT_SECRET}\n")).unwrap();
    let issuer = format!("http://127.0.0.1:{provider_port}");
    let yaml = format!(
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
{extra_listeners}admin: {{tcp: "127.0.0.1:0"}}
ca: {{cert_file: {cert}, key_file: {key}}}
allowed_domains: [{HOST}]
upstream:
  extra_ca_files: [{pki_ca}]
  resolve: {{{HOST}: "{up}"}}
identity:
  oidc: {{issuer: "{issuer}", audiences: [credproxy], leeway: 0s}}
credentials:
  - id: anthropic
    placeholder: {PH}
    type: api_key
    header_name: x-api-key
    bound_domains: [{HOST}]
    allowed_roles: [{ROLE}]
    source: {{env: KEY}}
  - id: admin-only
    placeholder: {ADMIN_PH}
    type: api_key
    header_name: x-admin-key
    bound_domains: [{HOST}]
    allowed_roles: [admin]
    source: {{env: ADMIN_KEY}}
audit: {{path: {audit}}}
limits:
  shutdown_grace: 1s
"#,
        uds = d.join("vm-a.vsock").display(),
        secret = d.join("vm-a-secret").display(),
        cert = ca.cert_file.display(),
        key = ca.key_file.display(),
        pki_ca = pki.ca_cert_path().display(),
        up = upstream.addr(),
        audit = d.join("audit.db").display(),
    );
    let config = Config::parse(&yaml, d).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let proxy = Proxy::bind(
        config,
        ProxyOptions {
            resolver: None,
            env: Some(Arc::new(Env)),
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .spawn();
    // The guest's bridge: no token, no secret; the hypervisor's socket is `<path>_<port>`.
    let socket = d.join(format!("vm-a.vsock_{PORT}"));
    let bridge = Bridge::bind(BridgeConfig::from_args(&bridge_args(&socket)).unwrap())
        .await
        .unwrap();
    let ListenAddr::Tcp(bridge_addr) = bridge.local_addr().clone() else {
        panic!()
    };
    let task = tokio::spawn(bridge.run(std::future::pending(), Duration::from_secs(1)));
    D1 {
        dir,
        upstream,
        proxy,
        proxy_ca: ca.cert_file,
        bridge: bridge_addr,
        _bridge_task: task,
    }
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

struct Curl {
    /// The CONNECT response's status (`000` when none).
    connect: String,
    /// The final response's status (`000` when none).
    status: String,
    body: String,
    stderr: String,
}

impl D1 {
    fn admin(&self) -> SocketAddr {
        self.proxy.admin_addr().unwrap()
    }

    /// curl as the agent: `HTTPS_PROXY` is the guest bridge (no credentials in it), the proxy
    /// CA trusted; `proxy_user` adds `--proxy-user` (a token the agent presents itself).
    async fn curl(&self, headers: &[String], proxy_user: Option<&str>) -> Curl {
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args(["-q", "-sS", "--max-time", "30"])
            .args(["-w", "\n%{http_connect} %{http_code}"])
            .arg("--cacert")
            .arg(&self.proxy_ca)
            .env("HTTPS_PROXY", format!("http://{}", self.bridge));
        for v in ["https_proxy", "NO_PROXY", "no_proxy", "CURL_CA_BUNDLE"] {
            cmd.env_remove(v);
        }
        for h in headers {
            cmd.args(["-H", h]);
        }
        if let Some(u) = proxy_user {
            cmd.arg("--proxy-user").arg(u);
        }
        let out = tokio::time::timeout(WAIT, cmd.arg(format!("https://{HOST}/echo")).output())
            .await
            .expect("curl finished")
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, codes) = text.rsplit_once('\n').unwrap_or(("", &text));
        let (connect, status) = codes.split_once(' ').unwrap_or((codes, ""));
        Curl {
            connect: connect.to_owned(),
            status: status.to_owned(),
            body: body.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
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

    async fn admin_get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.admin()).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text[9..12].parse().unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// The value of one metric series (`name{labels}` exactly as exposed), 0 when absent.
    async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.admin_get("/metrics").await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
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

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let pem = std::fs::read(&self.proxy_ca).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg =
            rustls::ClientConfig::builder_with_provider(credproxy_testkit::crypto_provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
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
    assert_eq!(c.status, "200", "{} {}", c.body, c.stderr);
    assert!(c.body.contains(&format!("x-api-key: {PH}")), "{}", c.body);
    assert!(!c.body.contains(SECRET), "{}", c.body);
    let got = h.upstream.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header_all("x-api-key"), vec![SECRET.to_string()]);
    assert!(got[0].header("proxy-authorization").is_none());

    // The credential its roles do not allow is refused by policy, and nothing is sent.
    let c = h.curl(&[format!("x-admin-key: {ADMIN_PH}")], None).await;
    assert_eq!(c.status, "403", "{} {}", c.body, c.stderr);
    assert!(c.body.contains("denied by policy"), "{}", c.body);
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
    // A 4 s lifetime: refreshed at ~3.2 s; the verifier has no leeway.
    let provider = provider(4, 0).await;
    let h = start(provider.port(), "").await;
    assert!(h.proxy.wait_ready(WAIT).await, "not ready");

    // A tunnel opened with the first token.
    let (tcp, status, _) = connect_tunnel(h.bridge, &format!("{HOST}:443"), &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
    let mut tls = tls_over(tcp, HOST, h.client_config()).await;
    let req = format!("GET /echo HTTP/1.1\r\nHost: {HOST}\r\nx-api-key: {PH}\r\n\r\n");
    let mut buf = vec![0u8; 64 * 1024];
    tls.write_all(req.as_bytes()).await.unwrap();
    let n = tokio::time::timeout(WAIT, tls.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // Two refreshes after the token that request used, it has expired (obtained at t,
    // expired at t + 4 s; the second refresh after it comes at ~t + 6.4 s). Counted from now,
    // not from the start: on a loaded machine the start-up may already have taken a refresh
    // or two.
    let before = h.metric(OK_SERIES).await;
    h.wait_metric(OK_SERIES, before + 2.0).await;
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
    let n = tokio::time::timeout(WAIT, tls.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let resp = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // ... and a new connection too.
    let c = h.curl(&[format!("x-api-key: {PH}")], None).await;
    assert_eq!(c.status, "200", "{} {}", c.body, c.stderr);

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
    assert_eq!(c.connect, "503", "{} {}", c.body, c.stderr);
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
    assert_eq!(c.status, "200", "{} {}", c.body, c.stderr);
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
    assert_eq!(c.connect, "403", "{} {}", c.body, c.stderr);
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
    assert_eq!(c.status, "200", "{} {}", c.body, c.stderr);
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
    assert_eq!(c.status, "200", "{} {}", c.body, c.stderr);
    agent_saw.extend_from_slice(c.body.as_bytes());
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
    let logged = logs().0.lock().unwrap().clone();
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
    let pki = TestPki::new();
    let upstream = Upstream::start(UpstreamOptions::tls(pki.issue(&[HOST], Validity::Valid))).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = credproxy_tls::init_ca(&d.join("ca"), false).unwrap();
    let key = d.join("state/dev-issuer-key.pem");
    let yaml = format!(
        r#"listeners:
  - name: vm-a
    unix: {sock}
    peer_uids: [{uid}]
    agent: vm-a
    agent_token:
      dev_issuer: {{key_file: {key}, roles: [{ROLE}]}}
admin: {{tcp: "127.0.0.1:0"}}
ca: {{cert_file: {cert}, key_file: {cakey}}}
allowed_domains: [{HOST}]
upstream:
  extra_ca_files: [{pki_ca}]
  resolve: {{{HOST}: "{up}"}}
identity:
  oidc: {{issuer: credproxy-dev, audiences: [credproxy], algorithms: [ES256]}}
credentials:
  - id: anthropic
    placeholder: {PH}
    type: api_key
    header_name: x-api-key
    bound_domains: [{HOST}]
    allowed_roles: [{ROLE}]
    source: {{env: KEY}}
audit: {{path: {audit}}}
"#,
        sock = d.join("vm-a.sock").display(),
        uid = own_uid(),
        key = key.display(),
        cert = ca.cert_file.display(),
        cakey = ca.key_file.display(),
        pki_ca = pki.ca_cert_path().display(),
        up = upstream.addr(),
        audit = d.join("audit.db").display(),
    );
    let config = Config::parse(&yaml, d).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let proxy = Proxy::bind(
        config,
        ProxyOptions {
            resolver: None,
            env: Some(Arc::new(Env)),
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .spawn();
    assert!(proxy.wait_ready(WAIT).await);
    // The key was created, private.
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "{mode:o}");
    let bridge = Bridge::bind(BridgeConfig::from_args(&bridge_args(&d.join("vm-a.sock"))).unwrap())
        .await
        .unwrap();
    let ListenAddr::Tcp(addr) = bridge.local_addr().clone() else {
        panic!()
    };
    let _task = tokio::spawn(bridge.run(std::future::pending(), Duration::from_secs(1)));
    let out = tokio::process::Command::new("curl")
        .args(["-q", "-sS", "--max-time", "30", "-w", "\n%{http_code}"])
        .arg("--proxy")
        .arg(format!("http://{addr}"))
        .arg("--cacert")
        .arg(&ca.cert_file)
        .args(["-H", &format!("x-api-key: {PH}")])
        .arg(format!("https://{HOST}/echo"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("200"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        upstream.received()[0].header_all("x-api-key"),
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
