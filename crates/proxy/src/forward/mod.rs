//! Forwarding one request the agent may send, as named stages:
//!
//! 1. [`guard::admit`]: the request's generation still allows the destination and can scrub
//!    every value it may inject.
//! 2. [`head::upstream_head`]: the head as it will go upstream (absolute URI, hop-by-hop
//!    headers and the agent's own token gone, ranges refused) and the guarded body.
//! 3. [`guard::scan`]: every placeholder in the head and the body's scan window found,
//!    before anything is decided.
//! 4. [`guard::authorize`]: misuse, the credentials' bindings and grants, then the policy.
//! 5. [`send::inject_and_record`]: secrets fetched and placed, the use made durable in the
//!    audit spool before any of them leaves, the body rebuilt.
//! 6. [`send::upstream`] (or [`send::internal`]): the request sent over verified TLS.
//! 7. [`respond::wrap`]: the response scrubbed as it streams back, or a WebSocket switched.
//!
//! Each stage returns a [`Reject`] to refuse; [`forward`] is only their order.

mod guard;
mod head;
mod respond;
mod send;

use std::sync::Arc;

use credproxy_core::{Authority, Reject, Scheme};
use credproxy_identity::AgentIdentity;
use http::Request;
use hyper::body::Incoming;
use tokio::sync::Semaphore;

use crate::agent_token::AgentToken;
use crate::audit::Draft;
use crate::body::Body;
use crate::conn::ConnCtx;
use crate::framing::FramingFlag;
use crate::Shared;

/// What forwarding needs of the connection or tunnel a request came on.
pub(crate) struct Via<'a> {
    pub conn: &'a Arc<ConnCtx>,
    pub framing: &'a FramingFlag,
    pub budget: &'a Arc<Semaphore>,
    /// The agent's own token: never forwarded.
    pub token: Option<&'a AgentToken>,
}

/// Where the request goes: the canonical destination and the scheme it is spoken in.
#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    pub authority: &'a Authority,
    pub scheme: Scheme,
}

/// Send the request upstream and stream the response back, injecting credentials where
/// the request carries their placeholders and scrubbing the response.
pub(crate) async fn forward(
    shared: &Arc<Shared>,
    via: &Via<'_>,
    target: Target<'_>,
    identity: Option<Arc<AgentIdentity>>,
    draft: &mut Draft,
    req: Request<Incoming>,
) -> Result<http::Response<Body>, Reject> {
    let id = draft.record.id.clone();
    let gen = shared.generation();
    draft.record.policy_hash = Some(gen.policy.hash().to_string());
    guard::admit(&gen, target.authority, &id)?;
    let head = head::upstream_head(shared, &gen, via, target, req)?;
    let mut scanned = guard::scan(shared, &gen, via, head).await?;
    let allowed = guard::authorize(
        shared,
        &gen,
        via,
        target,
        identity.as_deref(),
        draft,
        &mut scanned,
    )?;
    let internal = shared.internal.get(target.authority);
    if internal.is_some() {
        let websocket = scanned.head.websocket.is_some();
        let credential = !allowed.to_inject.is_empty();
        crate::internal::refuse_unsuitable(&id, target.authority, websocket, credential)?;
    }
    let out = send::inject_and_record(shared, &gen, draft, scanned, &allowed).await?;
    if let Some(svc) = internal {
        let resp = send::internal(shared, svc, out.request, identity.as_deref(), &id).await?;
        let (parts, body) = resp.into_parts();
        return respond::scrubbed(shared, &out.method, target.authority, parts, body, draft).await;
    }
    let websocket = out.agent_upgrade.is_some();
    let resp = send::upstream(
        shared,
        via,
        target.authority,
        &id,
        out.request,
        websocket,
        &out.cut,
    )
    .await?;
    // Only an upgrade keeps what allowed it, for the relay's re-checks.
    let switch = out.agent_upgrade.map(|agent| respond::Switch {
        agent,
        expires: identity.as_ref().map(|i| i.expires_at),
        input: allowed.input,
        credentials: (allowed.to_inject.iter())
            .map(|&i| gen.creds.configs[i].id.clone())
            .collect(),
    });
    respond::wrap(
        shared,
        via,
        target.authority,
        draft,
        &out.method,
        switch,
        resp,
    )
    .await
}
