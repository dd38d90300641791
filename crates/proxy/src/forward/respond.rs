//! Stage 7: the response on its way back to the agent: scrubbed as it streams, or, for an
//! accepted WebSocket upgrade, the two connections handed to the relay.

use credproxy_core::{Authority, Reject};
use credproxy_policy::PolicyInput;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tracing::debug;

use super::Via;
use crate::audit::Draft;
use crate::body::{strip_hop_by_hop, Body};
use crate::Shared;

/// A WebSocket upgrade the agent asked for and the policy allowed, kept for the relay's
/// re-checks while it lasts.
pub(super) struct Switch {
    pub agent: OnUpgrade,
    /// When the agent's token expires (`None`: anonymous mode).
    pub expires: Option<std::time::SystemTime>,
    pub input: PolicyInput,
    /// Ids of the credentials injected into the upgrade request.
    pub credentials: Vec<String>,
}

/// The upstream's response as the agent gets it.
pub(super) async fn wrap(
    shared: &std::sync::Arc<Shared>,
    via: &Via<'_>,
    authority: &Authority,
    draft: &mut Draft,
    method: &Method,
    switch: Option<Switch>,
    resp: Response<Incoming>,
) -> Result<Response<Body>, Reject> {
    let ctx = via.conn;
    debug!(request_id = %draft.record.id, listener = %ctx.listener.name, %method, %authority, status = resp.status().as_u16(), "forwarded");
    let mut close_after = false;
    if let Some(switch) = switch {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            // Loaded after injection: it holds whatever this request put in the set.
            let patterns = shared.scrub.patterns();
            let check = crate::websocket::Check {
                authority: authority.clone(),
                expires: switch.expires,
                input: switch.input,
                credentials: switch.credentials,
                listener: ctx.listener.name.clone(),
            };
            let guard = ctx.clock.request_started();
            return crate::websocket::switch(shared, guard, switch.agent, resp, patterns, check);
        }
        // No 101: an ordinary response, after which the agent's connection closes (the
        // bytes the agent sends after an upgrade request are not read as HTTP requests).
        close_after = true;
    }
    let (parts, body) = resp.into_parts();
    let mut resp = scrubbed(
        shared,
        method,
        authority,
        parts,
        body.map_err(Into::into).boxed(),
        draft,
    )
    .await?;
    if close_after {
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(resp)
}

/// A response with every value the proxy can inject scrubbed from its head and, as it
/// streams, its body (internal services' answers included: whatever an instance stored
/// there, no secret value reaches an agent from it). Hop-by-hop headers are dropped.
pub(super) async fn scrubbed(
    shared: &Shared,
    method: &Method,
    authority: &Authority,
    mut parts: http::response::Parts,
    body: Body,
    draft: &mut Draft,
) -> Result<Response<Body>, Reject> {
    // hyper keeps a non-standard HTTP/1.1 reason phrase as an extension and writes it back
    // out; servers put rejected keys in it, so the agent always gets the standard one.
    parts.extensions = http::Extensions::new();
    // Loaded after injection: it holds whatever this request put in the set.
    let Some(patterns) = shared.scrub.patterns() else {
        strip_hop_by_hop(&mut parts.headers);
        return Ok(Response::from_parts(parts, body));
    };
    let (resp, counters) = crate::scrub_body::scrub_response(
        method,
        authority,
        parts,
        body,
        patterns,
        shared.metrics.scrubbed.clone(),
    )
    .await?;
    draft.scrub = Some(counters);
    Ok(resp)
}
