//! Offline views of what the proxy would do with a request, for operators' tools
//! (`credproxy policy input`). Uses the same scanning and input-building code as the
//! request path; performs no I/O and fetches no secret.

use credproxy_config::Config;
use credproxy_core::{Authority, PeerAddr, Scheme};
use credproxy_identity::AgentIdentity;
use credproxy_policy::PolicyInput;

use crate::authz::{input, RequestFacts};
use crate::creds::{scan_head, Credentials, Scan};

/// The policy input document for `method url` with `headers`, as the identity `identity`
/// on `listener`. Body placeholders are not considered (no body is given).
pub fn policy_input(
    config: &Config,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    identity: Option<&AgentIdentity>,
    listener: &str,
) -> Result<PolicyInput, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    let scheme = match uri.scheme_str() {
        Some("https") => Scheme::Https,
        Some("http") => Scheme::Http,
        _ => {
            return Err(format!(
                "{url:?}: the URL must start with https:// or http://"
            ))
        }
    };
    let raw = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .ok_or("the URL has no host")?;
    let authority = Authority::parse_with_default(&raw, scheme).map_err(|e| e.to_string())?;
    let mut req = http::Request::builder().method(method).uri(uri.clone());
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let (parts, ()) = req.body(()).map_err(|e| e.to_string())?.into_parts();
    let creds = Credentials::new(config.credentials.clone())?;
    let scan = match &creds.set {
        Some(set) => scan_head(set, &parts),
        None => Scan::default(),
    };
    let peer = PeerAddr::Tcp("127.0.0.1:0".parse().map_err(|_| "peer")?);
    let facts = RequestFacts {
        identity,
        anonymous_mode: config.identity.is_none(),
        method,
        authority: &authority,
        scheme,
        path: parts.uri.path(),
        query: parts.uri.query(),
        listener,
        peer: &peer,
        allowlisted: config.allowed_domains.allows(&authority),
        now: credproxy_core::Clock::system().now(),
    };
    Ok(input(&facts, &creds, &scan))
}
