//! The agent's side: curl (the real client most tests use) through the proxy, the typed
//! request helper built on it (`Request::send` → `Response`: status, reason, headers, body),
//! and rustls / reqwest client configurations trusting the proxy CA.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;

/// How to reach the proxy as an agent: its address, the CA it mints leaves from, and the
/// agent token curl presents as the proxy password (empty: none).
#[derive(Clone, Debug)]
pub struct Client {
    /// `http://host:port` of the proxy (or of a bridge in front of it).
    pub proxy: String,
    pub ca: PathBuf,
    pub token: String,
    /// Give curl the proxy as `HTTPS_PROXY` (what an agent's environment does) instead of
    /// `--proxy`.
    pub proxy_from_env: bool,
}

impl Client {
    pub fn new(proxy: impl Into<String>, ca: impl Into<PathBuf>) -> Client {
        Client {
            proxy: proxy.into(),
            ca: ca.into(),
            token: String::new(),
            proxy_from_env: false,
        }
    }

    /// The same client presenting `token` (empty: no credentials).
    pub fn with_token(mut self, token: &str) -> Client {
        self.token = token.to_owned();
        self
    }

    /// The same client taking the proxy from `HTTPS_PROXY`.
    pub fn with_proxy_from_env(mut self) -> Client {
        self.proxy_from_env = true;
        self
    }

    /// Run curl through the proxy with `args` (the escape hatch for tests about curl itself:
    /// `%{http_connect}`, `--connect-to`, HTTP/2 flags, several URLs in one run).
    pub async fn curl(&self, args: &[&str]) -> Curl {
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args(["-q", "-sS", "--max-time", "60"]);
        if self.proxy_from_env {
            cmd.env("HTTPS_PROXY", &self.proxy);
        } else {
            cmd.arg("--proxy")
                .arg(&self.proxy)
                .env_remove("HTTPS_PROXY");
        }
        if !self.token.is_empty() {
            cmd.arg("--proxy-user").arg(format!("agent:{}", self.token));
        }
        for v in [
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "NO_PROXY",
            "no_proxy",
            "ALL_PROXY",
            "all_proxy",
            "CURL_CA_BUNDLE",
        ] {
            cmd.env_remove(v);
        }
        let out = cmd
            .arg("--cacert")
            .arg(&self.ca)
            .args(args)
            .output()
            .await
            .expect("curl runs");
        Curl {
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// A request for `url` (GET unless a body or `method` says otherwise).
    pub fn get(&self, url: impl Into<String>) -> Request {
        Request {
            client: self.clone(),
            method: None,
            url: url.into(),
            args: Vec::new(),
            body: None,
        }
    }

    /// A `method` request for `url`.
    pub fn request(&self, method: &str, url: impl Into<String>) -> Request {
        Request {
            method: Some(method.to_owned()),
            ..self.get(url)
        }
    }

    /// A POST of `body` to `url`.
    pub fn post(&self, url: impl Into<String>, body: impl Into<Vec<u8>>) -> Request {
        self.get(url).body(body)
    }

    /// A rustls client configuration trusting the proxy CA, offering `alpn`.
    pub fn rustls(&self, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
        client_config(&self.ca, alpn)
    }

    /// A reqwest client through the proxy, trusting its CA, with the token as the proxy
    /// password.
    pub fn reqwest(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.ca).unwrap();
        let proxy = reqwest::Proxy::all(&self.proxy).unwrap();
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .proxy(if self.token.is_empty() {
                proxy
            } else {
                proxy.basic_auth("agent", &self.token)
            })
            .build()
            .unwrap()
    }
}

/// A rustls client configuration trusting the CA in the PEM file `ca`, offering `alpn`.
pub fn client_config(ca: &Path, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read(ca).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(credproxy_testkit::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Arc::new(cfg)
}

/// What a curl run printed, for the tests that drive curl's arguments themselves.
pub struct Curl {
    /// curl's exit code.
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Curl {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// One request through the proxy, sent by curl. Build with `Client::get` / `request` /
/// `post` (or the same methods on `Harness`), then `send`.
#[must_use = "a request does nothing until sent"]
pub struct Request {
    client: Client,
    method: Option<String>,
    url: String,
    args: Vec<String>,
    body: Option<Vec<u8>>,
}

impl Request {
    /// Add the header `name: value`.
    pub fn header(self, name: &str, value: impl fmt::Display) -> Request {
        self.header_line(&format!("{name}: {value}"))
    }

    /// Add a header line as curl's `-H` takes it (`"name:"` removes a header curl would
    /// send, `"name;"` sends it empty).
    pub fn header_line(mut self, line: &str) -> Request {
        self.args.push("-H".into());
        self.args.push(line.into());
        self
    }

    /// Send `body` (curl's `--data-binary`, from a file so any bytes go; POST unless a
    /// method was given).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = Some(body.into());
        self
    }

    /// Present `token` instead of the client's (empty: no credentials).
    pub fn token(mut self, token: &str) -> Request {
        self.client.token = token.to_owned();
        self
    }

    /// Add a header to the CONNECT (or, for plain HTTP, to the request): `--proxy-header`.
    pub fn proxy_header(mut self, name: &str, value: impl fmt::Display) -> Request {
        self.args.push("--proxy-header".into());
        self.args.push(format!("{name}: {value}"));
        self
    }

    /// Extra curl arguments (the escape hatch: `--http1.1`, `-u`, `--connect-to`, …).
    pub fn curl_args(mut self, args: &[&str]) -> Request {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Send it and wait for the answer (curl's `--max-time` bounds the wait).
    pub async fn send(self) -> Response {
        let dir = tempfile::tempdir().unwrap();
        let head = dir.path().join("head");
        let body = dir.path().join("body");
        let mut args: Vec<String> = vec![
            "-D".into(),
            head.display().to_string(),
            "-o".into(),
            body.display().to_string(),
            "-w".into(),
            "%{http_connect} %{http_code}".into(),
        ];
        if let Some(m) = &self.method {
            args.push("-X".into());
            args.push(m.clone());
        }
        if let Some(b) = &self.body {
            let file = dir.path().join("request-body");
            std::fs::write(&file, b).unwrap();
            args.push("--data-binary".into());
            args.push(format!("@{}", file.display()));
        }
        args.extend(self.args);
        args.push(self.url);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let c = self.client.curl(&refs).await;
        let codes = c.text();
        let (connect, status) = codes.trim().split_once(' ').unwrap_or(("000", "000"));
        let head = std::fs::read(&head)
            .map(|h| String::from_utf8_lossy(&h).into_owned())
            .unwrap_or_default();
        let headers = last_head(&head);
        let reason = headers
            .iter()
            .find(|(n, _)| n == "x-credproxy-reason")
            .map(|(_, v)| v.clone());
        Response {
            connect: connect.parse().unwrap_or(0),
            status: status.parse().unwrap_or(0),
            reason,
            headers,
            head,
            body: std::fs::read(&body).unwrap_or_default(),
            exit: c.code,
            stderr: c.stderr,
        }
    }
}

/// The header fields of the last response head in curl's `-D` output (a CONNECT response,
/// 1xx responses and the final one each start with a status line; trailers do not).
fn last_head(dump: &str) -> Vec<(String, String)> {
    let blocks: Vec<&str> = dump
        .split("\r\n\r\n")
        .filter(|b| b.starts_with("HTTP/"))
        .collect();
    let Some(last) = blocks.last() else {
        return Vec::new();
    };
    last.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect()
}

/// What the agent got for a `Request`.
#[derive(Debug)]
pub struct Response {
    /// The status of the proxy's answer to the CONNECT (0: none, e.g. plain HTTP).
    pub connect: u16,
    /// The final response's status (0: none, e.g. a refused CONNECT or a reset).
    pub status: u16,
    /// The proxy's `x-credproxy-reason` on the last response head (a refused CONNECT's, or
    /// the final response's).
    pub reason: Option<String>,
    /// The last response head's fields, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// Every response head curl saw, as it dumped them (CONNECT, 1xx, final, trailers).
    pub head: String,
    pub body: Vec<u8>,
    /// curl's exit code.
    pub exit: i32,
    pub stderr: String,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Everything the agent received: every response head, then the body.
    pub fn received(&self) -> String {
        format!("{}{}", self.head, self.text())
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (any case), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// For assertion messages: statuses, reason, every head, the body and curl's complaint.
impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "status {} (CONNECT {}), reason {:?}\n{}{}\n[curl exit {}] {}",
            self.status,
            self.connect,
            self.reason,
            self.head,
            self.text(),
            self.exit,
            self.stderr
        )
    }
}

#[cfg(test)]
mod tests {
    use super::last_head;

    #[test]
    fn the_last_head_is_the_last_status_line_and_not_trailers() {
        let dump = "HTTP/1.1 200 Connection established\r\n\r\n\
                    HTTP/1.1 100 Continue\r\n\r\n\
                    HTTP/2 403\r\nx-credproxy-reason: policy_denied\r\nX-Two: a\r\nx-two: b\r\n\r\n\
                    x-trailer: t\r\n\r\n";
        assert_eq!(
            last_head(dump),
            vec![
                (
                    "x-credproxy-reason".to_string(),
                    "policy_denied".to_string()
                ),
                ("x-two".to_string(), "a".to_string()),
                ("x-two".to_string(), "b".to_string()),
            ]
        );
        assert!(last_head("").is_empty());
    }
}
