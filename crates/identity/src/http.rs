//! The HTTP client used to talk to the identity provider, and bounded response reading.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::error::IdentityError;

/// Why talking to the provider failed (operator-facing; logged, never shown to agents).
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("request to {url} failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url} sent more than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{url} sent an invalid document: {reason}")]
    Invalid { url: String, reason: String },
}

/// An HTTP client for the provider: rustls with the ring provider (a bare
/// `ClientConfig::builder()` panics because two crypto providers are linked), system roots plus
/// `ca_files`, no redirects (discovery and JWKS URLs are taken literally) and no idle
/// connection pool (requests are rare, and a pooled connection to a restarted provider
/// would only fail the next fetch).
pub(crate) fn client(
    ca_files: &[PathBuf],
    timeout: Duration,
) -> Result<reqwest::Client, IdentityError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| IdentityError::HttpClient(e.to_string()))?
        .with_root_certificates(root_store(ca_files)?)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .user_agent(concat!("credproxy/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| IdentityError::HttpClient(e.to_string()))
}

/// System roots (unreadable ones are skipped with a warning: one odd file in /etc/ssl must
/// not take identity down) plus every certificate in `ca_files` (explicit, so any problem
/// is an error naming the file).
fn root_store(ca_files: &[PathBuf]) -> Result<RootCertStore, IdentityError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "error loading system root certificates");
    }
    roots.add_parsable_certificates(native.certs);
    for path in ca_files {
        let ca_error = |reason: String| IdentityError::CaFile {
            path: path.clone(),
            reason,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_error(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| ca_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("no PEM certificate in the file".to_owned()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
        }
    }
    Ok(roots)
}

/// Whether `url` may carry identity traffic: `https`, or `http` to a loopback host (dev
/// issuers, tests). Plain HTTP elsewhere would let anyone on the path swap the keys.
pub(crate) fn acceptable_url(url: &str) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if is_loopback(&parsed) => Ok(parsed),
        "http" => Err(format!(
            "{url:?} uses plain http to a non-loopback host; use https"
        )),
        other => Err(format!("{url:?} has unsupported scheme {other:?}")),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Read a response body, refusing more than `limit` bytes (a hostile or broken endpoint
/// must not make us buffer without bound).
pub(crate) async fn read_limited(
    mut response: reqwest::Response,
    url: &str,
    limit: usize,
) -> Result<Vec<u8>, FetchError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|source| FetchError::Http {
        url: url.to_owned(),
        source,
    })? {
        if body.len() + chunk.len() > limit {
            return Err(FetchError::TooLarge {
                url: url.to_owned(),
                limit,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// GET `url` and return its body if the status is 200.
pub(crate) async fn get(
    client: &reqwest::Client,
    url: &str,
    limit: usize,
) -> Result<Vec<u8>, FetchError> {
    let response = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|source| FetchError::Http {
            url: url.to_owned(),
            source,
        })?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        return Err(FetchError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
        });
    }
    read_limited(response, url, limit).await
}

/// Fetch `{issuer}/.well-known/openid-configuration` and check that it names `issuer`
/// exactly (OpenID Connect Discovery §4.3), so a misconfigured URL cannot silently trust
/// another issuer's keys.
pub(crate) async fn discover(
    client: &reqwest::Client,
    issuer: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, FetchError> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let body = get(client, &url, 256 * 1024).await?;
    let invalid = |reason: String| FetchError::Invalid {
        url: url.clone(),
        reason,
    };
    let doc: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let serde_json::Value::Object(doc) = doc else {
        return Err(invalid("not a JSON object".to_owned()));
    };
    match doc.get("issuer").and_then(serde_json::Value::as_str) {
        Some(found) if found == issuer => Ok(doc),
        Some(found) => Err(invalid(format!(
            "it names issuer {found:?}, not the configured {issuer:?}"
        ))),
        None => Err(invalid("it has no issuer".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_or_loopback_http_only() {
        for ok in [
            "https://id.example/realms/x",
            "http://127.0.0.1:8080",
            "http://127.5.0.1",
            "http://[::1]:9000/x",
            "http://localhost:8080/realms/a",
        ] {
            assert!(acceptable_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://id.example",
            "http://10.0.0.1",
            "ftp://127.0.0.1",
            "not a url",
            "http://localhost.evil.example",
        ] {
            assert!(acceptable_url(bad).is_err(), "{bad}");
        }
    }
}
