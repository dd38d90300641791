//! The proxy harness: a test PKI, TLS and plain upstreams, and the proxy in-process on
//! OS-assigned ports, configured through the same YAML path as production.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use std::collections::HashMap;
use std::time::Duration;

use credproxy_config::Config;
use credproxy_identity::DevIssuer;
use credproxy_proxy::{Proxy, ProxyOptions, Resolve, RunningProxy};
use credproxy_testkit::{TestPki, Upstream, UpstreamOptions, Validity};

use crate::client::{Client, Curl, Request};

pub const HOST: &str = "api.example.test";
pub const OTHER: &str = "other.example.test";
pub const PLAIN: &str = "plain.example.test";

/// The agent the default token is issued to, and its role.
pub const AGENT: &str = "agent-a";
pub const ROLE: &str = "proxy-user";

/// `env:` secret sources read from this map, never from the process environment.
#[derive(Debug, Default)]
pub struct MapEnv(pub HashMap<String, String>);

impl credproxy_secrets::EnvSource for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

pub struct Harness {
    /// The configuration the proxy started with (YAML), for reload tests.
    pub yaml: String,
    pub dev: DevIssuer,
    /// A valid token for AGENT with ROLE (empty in anonymous mode).
    pub token: String,
    /// `Bearer <token>`.
    pub bearer: String,
    pub anonymous: bool,
    pub pki: TestPki,
    pub upstream: Upstream,
    pub plain: Upstream,
    pub proxy: RunningProxy,
    pub proxy_ca: PathBuf,
    pub dir: tempfile::TempDir,
}

#[derive(Default)]
pub struct Setup {
    /// Extra allowlist entries.
    pub allow: Vec<String>,
    /// Extra pins: host -> address.
    pub resolve: Vec<(String, SocketAddr)>,
    /// YAML lines appended under `limits:`.
    pub limits: Vec<String>,
    /// YAML lines appended under `upstream:`.
    pub upstream: Vec<String>,
    pub resolver: Option<Arc<dyn Resolve>>,
    /// Extra CA files the proxy trusts upstream.
    pub extra_ca: Vec<PathBuf>,
    pub admin: bool,
    /// Run with `identity.danger_allow_anonymous` instead of the dev issuer.
    pub anonymous: bool,
    /// YAML list items appended under `credentials:` (each starting with `  - id: …`).
    pub credentials: String,
    /// Values for `env:` secret sources.
    pub env: Vec<(String, String)>,
    /// Extra top-level YAML (policy, secrets, …).
    pub extra_yaml: String,
    /// Bind the listener to this agent id.
    pub listener_agent: Option<String>,
    /// Replace the identity section (e.g. a real OIDC issuer).
    pub identity: Option<String>,
    /// The proxy's clock (`ProxyOptions::clock`); an adjustable one lets a test reach a
    /// token's expiry without waiting for it.
    pub clock: credproxy_core::Clock,
    /// Replace the audit section (default: a spool in the harness's temp dir).
    pub audit: Option<String>,
    /// The TLS upstream offers only `http/1.1` (reason phrases, transfer codings).
    pub upstream_h1_only: bool,
    /// Replace the `listeners:` section (YAML, the key included), for listeners the default
    /// one TCP listener is not: `vsock_uds`, `unix`, `agent_token`. Paths in it may point
    /// into `dir`.
    pub listeners: Option<String>,
    /// The directory the proxy's files (CA, dev issuer, audit spool) go in; by default a new
    /// one. Give one to write files the configuration refers to before the proxy starts.
    pub dir: Option<tempfile::TempDir>,
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::with(Setup::default()).await
    }

    pub async fn with(setup: Setup) -> Harness {
        let pki = TestPki::new();
        let mut options = UpstreamOptions::tls(pki.issue(&[HOST, OTHER], Validity::Valid));
        if setup.upstream_h1_only {
            options = options.with_alpn(&["http/1.1"]);
        }
        let upstream = Upstream::start(options).await;
        let plain = Upstream::start(UpstreamOptions::plain()).await;
        let dir = match setup.dir {
            Some(d) => d,
            None => tempfile::tempdir().unwrap(),
        };
        let ca = credproxy_tls::init_ca(&dir.path().join("ca"), false).unwrap();

        let dev = DevIssuer::load_or_create(&dir.path().join("dev")).unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, dev.jwks_json()).unwrap();
        let token = if setup.anonymous {
            String::new()
        } else {
            dev.issue(AGENT, &[ROLE.to_string()], Duration::from_secs(3600))
                .unwrap()
        };
        let mut y = String::new();
        match &setup.listeners {
            Some(l) => {
                y.push_str(l);
                if !l.ends_with('\n') {
                    y.push('\n');
                }
            }
            None => {
                y.push_str("listeners:\n  - name: agents\n    tcp: 127.0.0.1:0\n");
                if let Some(a) = &setup.listener_agent {
                    y.push_str(&format!("    agent: {a}\n"));
                }
            }
        }
        if setup.admin {
            y.push_str("admin:\n  tcp: 127.0.0.1:0\n");
        }
        y.push_str(&format!(
            "ca:\n  cert_file: {}\n  key_file: {}\n",
            ca.cert_file.display(),
            ca.key_file.display()
        ));
        y.push_str(&format!(
            "allowed_domains:\n  - {HOST}\n  - {OTHER}\n  - {PLAIN}\n"
        ));
        for a in &setup.allow {
            y.push_str(&format!("  - \"{a}\"\n"));
        }
        let mut cas = vec![pki.ca_cert_path().display().to_string()];
        cas.extend(setup.extra_ca.iter().map(|p| p.display().to_string()));
        y.push_str(&format!(
            "upstream:\n  extra_ca_files: [{}]\n  resolve:\n    {HOST}: {}\n    {OTHER}: {}\n    {PLAIN}: {}\n",
            cas.join(", "),
            upstream.addr(),
            upstream.addr(),
            plain.addr()
        ));
        for (h, a) in &setup.resolve {
            y.push_str(&format!("    {h}: {a}\n"));
        }
        for l in &setup.upstream {
            y.push_str(&format!("  {l}\n"));
        }
        if let Some(identity) = &setup.identity {
            y.push_str(identity);
        } else if setup.anonymous {
            y.push_str("identity:\n  danger_allow_anonymous: true\n");
        } else {
            y.push_str(&format!(
                "identity:\n  oidc:\n    issuer: {}\n    audiences: [{}]\n    jwks_file: {}\n",
                credproxy_identity::DEV_ISSUER,
                credproxy_identity::DEV_AUDIENCE,
                jwks.display()
            ));
        }
        if !setup.credentials.is_empty() {
            y.push_str("credentials:\n");
            y.push_str(&setup.credentials);
            if !setup.credentials.ends_with('\n') {
                y.push('\n');
            }
        }
        match &setup.audit {
            Some(a) => y.push_str(a),
            None => y.push_str(&format!(
                "audit:\n  path: {}\n",
                dir.path().join("audit.db").display()
            )),
        }
        y.push_str(&setup.extra_yaml);
        if !setup.extra_yaml.is_empty() && !setup.extra_yaml.ends_with('\n') {
            y.push('\n');
        }
        y.push_str("limits:\n  shutdown_grace: 1s\n");
        for l in &setup.limits {
            y.push_str(&format!("  {l}\n"));
        }
        let config = Config::parse(&y, dir.path()).unwrap_or_else(|e| panic!("{e}\n{y}"));
        let y = y.clone();
        let proxy = Proxy::bind(
            config,
            ProxyOptions {
                resolver: setup.resolver,
                env: Some(Arc::new(MapEnv(setup.env.into_iter().collect()))),
                clock: setup.clock.clone(),
            },
        )
        .await
        .unwrap()
        .spawn();
        Harness {
            yaml: y,
            dev,
            bearer: format!("Bearer {token}"),
            token,
            anonymous: setup.anonymous,
            pki,
            upstream,
            plain,
            proxy,
            proxy_ca: ca.cert_file,
            dir,
        }
    }

    /// Reload the running proxy with `edit` applied to its configuration text.
    pub fn reload(&self, edit: impl FnOnce(&str) -> String) -> Result<u64, String> {
        let text = edit(&self.yaml);
        let config = Config::parse(&text, self.dir.path()).map_err(|e| e.to_string())?;
        self.proxy
            .reload_handle()
            .reload(config)
            .map_err(|e| format!("{e:#}"))
    }

    pub fn addr(&self) -> SocketAddr {
        self.proxy.tcp_addr().unwrap()
    }

    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The header that authenticates the default agent on a CONNECT.
    pub fn auth(&self) -> Vec<(&str, String)> {
        if self.anonymous {
            vec![]
        } else {
            vec![("Proxy-Authorization", format!("Bearer {}", self.token))]
        }
    }

    /// `auth()` borrowed, as `connect_tunnel` takes it.
    pub fn auth_pairs(&self) -> Vec<(&'static str, &str)> {
        if self.anonymous {
            vec![]
        } else {
            vec![("Proxy-Authorization", self.bearer.as_str())]
        }
    }

    /// GET `path` on the admin listener (`Setup::admin`): status and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let admin = self.proxy.admin_addr().expect("Setup::admin is set");
        let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out))
            .await
            .expect("the admin listener answered in time")
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
    pub async fn metric(&self, series: &str) -> f64 {
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

    /// A token for another agent or other roles.
    pub fn token_for(&self, agent: &str, roles: &[&str], ttl: Duration) -> String {
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        self.dev.issue(agent, &roles, ttl).unwrap()
    }

    /// The default agent's client: curl, rustls and reqwest through the proxy's TCP
    /// listener, trusting its CA, with the default token (none in anonymous mode).
    pub fn client(&self) -> Client {
        Client::new(self.proxy_url(), &self.proxy_ca).with_token(&self.token)
    }

    /// GET `url` through the proxy as the default agent (`Request::send` for the answer).
    pub fn get(&self, url: impl Into<String>) -> Request {
        self.client().get(url)
    }

    /// A `method` request for `url` as the default agent.
    pub fn request(&self, method: &str, url: impl Into<String>) -> Request {
        self.client().request(method, url)
    }

    /// POST `body` to `url` as the default agent.
    pub fn post(&self, url: impl Into<String>, body: impl Into<Vec<u8>>) -> Request {
        self.client().post(url, body)
    }

    /// Run curl through the proxy as the default agent, trusting the proxy CA.
    pub async fn curl(&self, args: &[&str]) -> Curl {
        self.client().curl(args).await
    }

    /// Run curl through the proxy with `token` as the proxy password (empty: no credentials).
    pub async fn curl_with_token(&self, token: &str, args: &[&str]) -> Curl {
        self.client().with_token(token).curl(args).await
    }

    /// A client config trusting the proxy CA.
    pub fn proxy_client_config(&self, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
        crate::client::client_config(&self.proxy_ca, alpn)
    }

    /// reqwest through the proxy as the default agent.
    pub fn reqwest(&self) -> reqwest::Client {
        self.client().reqwest()
    }
}
