//! Stages 5 and 6: credentials placed and their use made durable, then the request sent.

use std::error::Error as StdError;

use credproxy_core::{Authority, Reject};
use credproxy_identity::AgentIdentity;
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tracing::{error, warn};

use super::guard::{Allowed, Scanned};
use super::head::Cut;
use super::Via;
use crate::audit::Draft;
use crate::body::Body;
use crate::connector::ConnectError;
use crate::internal::InternalService;
use crate::request_body::Holding;
use crate::{Generation, Shared};

/// The request ready to leave the proxy.
pub(super) struct Outbound {
    pub request: Request<Body>,
    pub method: Method,
    /// The agent's side of a WebSocket upgrade it asked for.
    pub agent_upgrade: Option<OnUpgrade>,
    pub cut: Cut,
}

/// Fetch the secrets of the allowed credentials and place them (headers and query now, the
/// body through the rebuilt stream); make their use durable in the audit spool before any of
/// them can leave (refused with 503 when the spool cannot commit); count the body going up.
pub(super) async fn inject_and_record(
    shared: &Shared,
    gen: &Generation,
    draft: &mut Draft,
    scanned: Scanned,
    allowed: &Allowed,
) -> Result<Outbound, Reject> {
    let Scanned { scan, window, head } = scanned;
    let mut parts = head.parts;
    let mut body = head.body;
    let mut permit = None;
    if let (Some(set), Some(mut window)) = (&gen.creds.set, window) {
        permit = window.permit.take();
        let plan = crate::inject::inject(shared, &gen.creds, &allowed.to_inject, &scan, &mut parts)
            .await?;
        if !allowed.to_inject.is_empty() {
            // No credential leaves the proxy before its use is durably recorded.
            if let Some(spool) = &shared.audit {
                if let Err(e) = spool.begin_credentialed(draft.record.clone()).await {
                    error!(request_id = %draft.record.id, error = %e, "audit spool cannot commit; refusing to send the credential");
                    return Err(Reject::AuditUnavailable);
                }
                draft.begun = true;
            }
        }
        body = crate::inject::rebuild_body(set, window, &plan, &mut parts, head.cut.flags.clone());
    }
    let body = crate::audit::count_body(body, draft.bytes_up.clone());
    // The window's scan memory is released when the body has been sent (or dropped).
    let body = match permit {
        Some(p) => Holding::boxed(body, p),
        None => body,
    };
    let agent_upgrade = head.websocket.map(|ws| {
        if let Some(up) = ws.upgrade {
            parts.headers.insert(UPGRADE, up);
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        }
        ws.agent
    });
    Ok(Outbound {
        request: Request::from_parts(parts, body),
        method: head.method,
        agent_upgrade,
        cut: head.cut,
    })
}

/// Send to an internal service (`internal_services`) instead of the network.
pub(super) async fn internal(
    shared: &Shared,
    svc: &InternalService,
    request: Request<Body>,
    identity: Option<&AgentIdentity>,
    id: &str,
) -> Result<Response<Body>, Reject> {
    let (parts, body) = request.into_parts();
    crate::internal::send(
        svc,
        parts,
        body,
        identity,
        id,
        shared.upstream.connect_timeout,
        shared.upstream.response_header_timeout,
    )
    .await
}

/// Send upstream over the pooled, verified client and wait for the response head (bounded by
/// `upstream.response_header_timeout`). A failure caused by the proxy cutting the agent's
/// body is answered with that cause.
pub(super) async fn upstream(
    shared: &Shared,
    via: &Via<'_>,
    authority: &Authority,
    id: &str,
    request: Request<Body>,
    websocket: bool,
    cut: &Cut,
) -> Result<Response<Incoming>, Reject> {
    let client = if websocket {
        &shared.ws_client
    } else {
        &shared.client
    };
    let send = client.request(request);
    match tokio::time::timeout(shared.upstream.response_header_timeout, send).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => {
            if let Some(reject) = cut.why(via.framing) {
                if matches!(reject, Reject::PlaceholderMisuse { .. }) {
                    shared.misuse(&reject);
                }
                warn!(request_id = id, %authority, reason = reject.reason(), "request body cut; upstream request aborted");
                return Err(reject);
            }
            let reject = classify_upstream_error(&e, authority);
            warn!(request_id = id, %authority, reason = reject.reason(), error = %ErrorChain(&e), "upstream request failed");
            Err(reject)
        }
        Err(_) => {
            warn!(request_id = id, %authority, "upstream response timed out");
            Err(Reject::UpstreamTimeout {
                authority: authority.clone(),
            })
        }
    }
}

/// Map a client error to a rejection by what is in its cause chain.
fn classify_upstream_error(e: &hyper_util::client::legacy::Error, authority: &Authority) -> Reject {
    let authority = authority.clone();
    if let Some(c) = find_cause::<ConnectError>(e) {
        return match c {
            ConnectError::Dns => Reject::DnsFailure { authority },
            ConnectError::Private => Reject::PrivateAddress { authority },
            ConnectError::Refused => Reject::UpstreamUnreachable { authority },
            ConnectError::Timeout => Reject::UpstreamTimeout { authority },
        };
    }
    if find_cause::<rustls::Error>(e).is_some() {
        return Reject::UpstreamTls { authority };
    }
    if e.is_connect() {
        Reject::UpstreamUnreachable { authority }
    } else {
        Reject::UpstreamProtocol { authority }
    }
}

/// Find an error of type `T` among the causes of `e`. Connectors wrap errors in
/// `io::Error`s (sometimes twice), whose `source()` skips their payload, so payloads are
/// searched as well as sources.
fn find_cause<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut stack = vec![e];
    while let Some(err) = stack.pop() {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        if let Some(payload) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            stack.push(payload);
        }
        if let Some(src) = err.source() {
            stack.push(src);
        }
    }
    None
}

/// Display an error with its causes, for logs.
struct ErrorChain<'a>(pub &'a (dyn StdError + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}
