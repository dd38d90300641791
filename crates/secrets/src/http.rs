//! The HTTP leg to OpenBao: one reqwest client with our own rustls config (ring provider,
//! system roots plus the configured CA file), and a tiny JSON request helper.

use std::error::Error as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use credproxy_core::Secret;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::Value;

/// Header carrying the token. OpenBao accepts Vault's name.
const TOKEN_HEADER: &str = "X-Vault-Token";
const NAMESPACE_HEADER: &str = "X-Vault-Namespace";
/// OpenBao answers are small JSON documents; a larger body is a misdirected address.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// An OpenBao endpoint: base URL, namespace and a configured client.
#[derive(Debug, Clone)]
pub(crate) struct BaoHttp {
    client: reqwest::Client,
    base: String,
}

/// A request that got no usable HTTP answer (connect, TLS, timeout, unreadable body).
#[derive(Debug, Clone)]
pub(crate) struct NetError(pub(crate) String);

impl std::fmt::Display for NetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An HTTP answer: status and parsed JSON body (`Null` for an empty body such as 204).
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    /// OpenBao's `errors` array joined, for messages; bounded so a strange body cannot flood
    /// a log line.
    pub fn errors(&self) -> String {
        let joined = match self.body.get("errors").and_then(Value::as_array) {
            Some(errors) => errors
                .iter()
                .filter_map(Value::as_str)
                .map(|e| e.replace("1 error occurred:", "").trim().to_string())
                .collect::<Vec<_>>()
                .join("; "),
            None => String::new(),
        };
        let mut text = if joined.is_empty() {
            format!("http {}", self.status.as_u16())
        } else {
            format!("http {}: {joined}", self.status.as_u16())
        };
        if text.len() > 300 {
            let mut cut = 300;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        text
    }
}

impl BaoHttp {
    /// Builds the client. Fails for an address that is not an http(s) URL or a CA file that
    /// cannot be read or holds no certificate.
    pub fn new(
        address: &str,
        ca_file: Option<&Path>,
        namespace: Option<&str>,
        timeout: Duration,
    ) -> Result<BaoHttp, String> {
        let url = reqwest::Url::parse(address)
            .map_err(|e| format!("openbao address {address:?} is not a url: {e}"))?;
        match url.scheme() {
            "https" => {}
            "http" => {
                let loopback = url.host_str().is_some_and(|h| {
                    h == "localhost"
                        || h.trim_matches(['[', ']'])
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                });
                if !loopback {
                    tracing::warn!(
                        address,
                        "openbao address is plain http: tokens and secrets cross the network \
                         unencrypted"
                    );
                }
            }
            other => {
                return Err(format!(
                    "openbao address {address:?} has scheme {other:?}; expected https or http"
                ))
            }
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "openbao address {address:?} must not have a query or fragment"
            ));
        }

        let tls = tls_config(ca_file)?;
        let mut headers = HeaderMap::new();
        if let Some(ns) = namespace {
            let value = HeaderValue::from_str(ns)
                .map_err(|_| format!("openbao namespace {ns:?} is not a valid header value"))?;
            headers.insert(NAMESPACE_HEADER, value);
        }
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .default_headers(headers)
            .timeout(timeout)
            .connect_timeout(timeout)
            // OpenBao may redirect standby requests to the active node; a redirect would
            // replay the token to wherever it points, so refuse and report it instead.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| format!("cannot build the openbao http client: {e}"))?;
        Ok(BaoHttp {
            client,
            base: address.trim_end_matches('/').to_string(),
        })
    }

    /// `method /v1/<path>` with an optional token and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&Secret>,
        body: Option<&Value>,
    ) -> Result<Answer, NetError> {
        let url = format!("{}/v1/{}", self.base, path);
        let mut req = self.client.request(method, &url);
        if let Some(token) = token {
            let mut value = HeaderValue::from_bytes(token.expose())
                .map_err(|_| NetError("the openbao token is not a valid header value".into()))?;
            value.set_sensitive(true);
            req = req.header(TOKEN_HEADER, value);
        }
        if let Some(body) = body {
            let bytes = serde_json::to_vec(body)
                .map_err(|e| NetError(format!("cannot encode request for {path}: {e}")))?;
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes);
        }
        let mut resp = req.send().await.map_err(|e| net_error(&url, &e))?;
        let status = resp.status();
        let mut buf = zeroize::Zeroizing::new(Vec::new());
        while let Some(chunk) = resp.chunk().await.map_err(|e| net_error(&url, &e))? {
            if buf.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(NetError(format!(
                    "{url}: response body larger than {MAX_BODY_BYTES} bytes"
                )));
            }
            buf.extend_from_slice(&chunk);
        }
        let body = if buf.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            // A non-JSON body (a proxy's error page …) is kept as Null; the status decides.
            serde_json::from_slice(&buf).unwrap_or(Value::Null)
        };
        Ok(Answer { status, body })
    }
}

/// The error and its causes on one line: reqwest's own Display says only "error sending
/// request", the useful part (refused, certificate unknown, timed out) is in the chain.
fn net_error(url: &str, e: &reqwest::Error) -> NetError {
    let mut text = if e.is_timeout() {
        format!("{url}: timed out")
    } else {
        format!("{url}: request failed")
    };
    let mut source = e.source();
    while let Some(s) = source {
        let line = s.to_string();
        if !text.ends_with(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = s.source();
    }
    NetError(text)
}

/// rustls config with the ring provider (never the process default: both ring and aws-lc-rs
/// are linked, so `ClientConfig::builder()` would panic), system roots plus `ca_file`.
fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "error loading system root certificates");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read openbao ca_file {}: {e}", path.display()))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("openbao ca_file {} is not valid PEM: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "openbao ca_file {} holds no certificate",
                path.display()
            ));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| {
                format!(
                    "openbao ca_file {} holds an unusable certificate: {e}",
                    path.display()
                )
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
