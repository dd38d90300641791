//! Internal services (`internal_services`): local services that agents reach by an
//! allowlisted internal name (e.g. `hub.openclaw.internal`, the inter-instance hub), served
//! over a Unix socket with plain HTTP/1.1 instead of the network.
//!
//! A request for such a name goes through the whole pipeline like any other (identity,
//! placeholder checks, policy, audit); only the last step differs: instead of the upstream
//! client it is sent to the service's socket. Before it is sent, every `x-credproxy-*` header
//! the agent supplied is removed and `x-credproxy-agent` is set to the verified agent (and
//! `x-credproxy-request-id` to the request id, which names the proxy's audit record), so the
//! service can trust them: only the proxy can reach its socket.
//!
//! Invariant: an internal service never receives an injected credential. Configuration
//! refuses a credential bound to an internal name (and a reload that would add one); the
//! request path refuses one anyway if it ever came to that.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use credproxy_config::InternalServiceConfig;
use credproxy_core::{Authority, Reject};
use credproxy_identity::AgentIdentity;
use http::{HeaderName, HeaderValue, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tracing::warn;

use crate::body::{strip_hop_by_hop, Body};

/// The header carrying the verified agent to an internal service.
pub const AGENT_HEADER: &str = "x-credproxy-agent";
/// The header carrying the proxy's request id (and audit record id).
pub const REQUEST_ID_HEADER: &str = "x-credproxy-request-id";
/// Every header with this prefix is the proxy's to set.
const RESERVED_PREFIX: &str = "x-credproxy-";

/// One internal service.
#[derive(Debug, Clone)]
pub(crate) struct InternalService {
    pub(crate) name: String,
    pub(crate) socket: PathBuf,
}

/// Every internal service, by canonical name.
#[derive(Debug, Default)]
pub(crate) struct InternalServices {
    by_name: HashMap<String, InternalService>,
}

impl InternalServices {
    pub(crate) fn new<'a>(
        configs: impl IntoIterator<Item = &'a InternalServiceConfig>,
    ) -> InternalServices {
        InternalServices {
            by_name: configs
                .into_iter()
                .map(|c| {
                    (
                        c.name.clone(),
                        InternalService {
                            name: c.name.clone(),
                            socket: c.unix.clone(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// The service behind `authority`'s host, if it is an internal name (any allowlisted port).
    pub(crate) fn get(&self, authority: &Authority) -> Option<&InternalService> {
        if self.by_name.is_empty() {
            return None;
        }
        self.by_name.get(authority.host())
    }

    /// The names, for checks against new credentials on reload.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

/// Remove every `x-credproxy-*` header the agent sent, then set the proxy's own.
pub(crate) fn set_identity_headers(
    headers: &mut http::HeaderMap,
    identity: Option<&AgentIdentity>,
    request_id: &str,
) {
    let reserved: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with(RESERVED_PREFIX))
        .cloned()
        .collect();
    for n in reserved {
        headers.remove(n);
    }
    if let Some(v) = identity.and_then(|i| HeaderValue::from_str(&i.agent_id).ok()) {
        headers.insert(AGENT_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID_HEADER, v);
    }
}

/// What an internal service never gets: a WebSocket upgrade (only plain requests are
/// relayed to it), or a request with a credential to inject (configuration refuses a
/// credential bound to an internal name, so this is a bug if it happens).
pub(crate) fn refuse_unsuitable(
    request_id: &str,
    authority: &Authority,
    websocket: bool,
    credential: bool,
) -> Result<(), Reject> {
    if credential {
        tracing::error!(request_id, %authority, "a credential would be injected toward an internal service; refused");
        return Err(Reject::Internal);
    }
    if websocket {
        return Err(Reject::UpgradeNotAllowed {
            protocol: format!("websocket (to the internal service {})", authority.host()),
        });
    }
    Ok(())
}

/// Send a request that went through the pipeline to its internal service and stream the
/// answer back. `parts` is what would have gone upstream (hop-by-hop headers and `Host`
/// already removed, absolute URI).
pub(crate) async fn send(
    svc: &InternalService,
    mut parts: http::request::Parts,
    body: Body,
    identity: Option<&AgentIdentity>,
    request_id: &str,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> Result<Response<Body>, Reject> {
    let unavailable = || Reject::InternalServiceUnavailable {
        name: svc.name.clone(),
    };
    set_identity_headers(&mut parts.headers, identity, request_id);
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = path.parse::<Uri>().map_err(|_| Reject::BadRequest {
        what: "request target is not a valid URI".into(),
    })?;
    parts.version = http::Version::HTTP_11;
    if let Ok(host) = HeaderValue::from_str(&svc.name) {
        parts.headers.insert(http::header::HOST, host);
    }
    let stream = match tokio::time::timeout(
        connect_timeout,
        tokio::net::UnixStream::connect(&svc.socket),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            warn!(request_id, service = %svc.name, socket = %svc.socket.display(), error = %e, "cannot connect to the internal service");
            return Err(unavailable());
        }
        Err(_) => {
            warn!(request_id, service = %svc.name, "connecting to the internal service timed out");
            return Err(unavailable());
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| {
            warn!(request_id, service = %svc.name, error = %e, "internal service handshake failed");
            unavailable()
        })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = match tokio::time::timeout(
        response_timeout,
        sender.send_request(Request::from_parts(parts, body)),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            warn!(request_id, service = %svc.name, error = %e, "internal service request failed");
            return Err(unavailable());
        }
        Err(_) => {
            warn!(request_id, service = %svc.name, "internal service did not answer in time");
            return Err(unavailable());
        }
    };
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(
        parts,
        body.map_err(Into::into).boxed(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_supplied_credproxy_headers_are_replaced() {
        let mut h = http::HeaderMap::new();
        h.insert("x-credproxy-agent", "forged".parse().unwrap());
        h.append("X-Credproxy-Agent", "forged-too".parse().unwrap());
        h.insert("x-credproxy-listener", "x".parse().unwrap());
        h.insert("x-credproxy-request-id", "0000".parse().unwrap());
        h.insert("x-credproxyagent", "kept".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        set_identity_headers(&mut h, None, "abc");
        assert!(
            h.get("x-credproxy-agent").is_none(),
            "no identity: none set"
        );
        assert!(h.get("x-credproxy-listener").is_none());
        assert_eq!(h.get_all("x-credproxy-request-id").iter().count(), 1);
        assert_eq!(h.get("x-credproxy-request-id").unwrap(), "abc");
        assert_eq!(h.get("x-credproxyagent").unwrap(), "kept");
        assert_eq!(h.get("content-type").unwrap(), "application/json");
    }

    #[test]
    fn lookup_is_by_canonical_host_on_any_port() {
        let s = InternalServices::new(&[InternalServiceConfig {
            name: "hub.openclaw.internal".into(),
            unix: "/run/hub.sock".into(),
        }]);
        for target in ["hub.openclaw.internal:443", "HUB.openclaw.internal.:80"] {
            let a = Authority::parse_connect(target).unwrap();
            assert_eq!(
                s.get(&a).map(|x| x.socket.clone()),
                Some("/run/hub.sock".into())
            );
        }
        let other = Authority::parse_connect("api.anthropic.com:443").unwrap();
        assert!(s.get(&other).is_none());
    }
}
