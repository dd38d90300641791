//! Shared harness: a test PKI, TLS and plain upstreams, and the proxy in-process on
//! OS-assigned ports, configured through the same YAML path as production.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use credproxy_config::Config;
use credproxy_proxy::{Proxy, ProxyOptions, Resolve, RunningProxy};
use credproxy_testkit::{TestPki, Upstream, UpstreamOptions, Validity};

pub const HOST: &str = "api.example.test";
pub const OTHER: &str = "other.example.test";
pub const PLAIN: &str = "plain.example.test";

pub struct Harness {
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
    /// Extra TLS upstreams to start: (names on the cert, validity, trusted by the proxy?).
    pub admin: bool,
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::with(Setup::default()).await
    }

    pub async fn with(setup: Setup) -> Harness {
        let pki = TestPki::new();
        let upstream = Upstream::start(UpstreamOptions::tls(
            pki.issue(&[HOST, OTHER], Validity::Valid),
        ))
        .await;
        let plain = Upstream::start(UpstreamOptions::plain()).await;
        let dir = tempfile::tempdir().unwrap();
        let ca = credproxy_tls::init_ca(&dir.path().join("ca"), false).unwrap();

        let mut y = String::new();
        y.push_str("listeners:\n  - name: agents\n    tcp: 127.0.0.1:0\n");
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
        y.push_str("identity:\n  danger_allow_anonymous: true\n");
        y.push_str("limits:\n  shutdown_grace: 1s\n");
        for l in &setup.limits {
            y.push_str(&format!("  {l}\n"));
        }
        let config = Config::parse(&y, dir.path()).unwrap_or_else(|e| panic!("{e}\n{y}"));
        let proxy = Proxy::bind(
            config,
            ProxyOptions {
                resolver: setup.resolver,
            },
        )
        .await
        .unwrap()
        .spawn();
        Harness {
            pki,
            upstream,
            plain,
            proxy,
            proxy_ca: ca.cert_file,
            dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.proxy.tcp_addr().unwrap()
    }

    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Run curl through the proxy, trusting the proxy CA. Returns (exit code, stdout, stderr).
    pub async fn curl(&self, args: &[&str]) -> Curl {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "60", "--proxy"])
            .arg(self.proxy_url())
            .arg("--cacert")
            .arg(&self.proxy_ca)
            .args(args)
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .output()
            .await
            .expect("curl runs");
        Curl {
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// A client config trusting the proxy CA.
    pub fn proxy_client_config(&self, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
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
        cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        Arc::new(cfg)
    }

    pub fn reqwest(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.proxy_ca).unwrap();
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .proxy(reqwest::Proxy::all(self.proxy_url()).unwrap())
            .build()
            .unwrap()
    }
}

pub struct Curl {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Curl {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

use rustls_pki_types::pem::PemObject;
