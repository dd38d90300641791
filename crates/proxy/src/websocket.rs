//! WebSocket after the `101`: a relay of messages, not of bytes (A1, A3, A16, A30).
//!
//! Both sides are framed by tungstenite (the upstream side as a client, the agent side as a
//! server), so fragmented messages arrive whole, control frames are answered by each side's
//! own codec, and every server-to-client data message goes through the scrub set — text and
//! binary, across messages like an event stream (a secret split over two JSON deltas), and
//! the reason of a close frame. Compression is never negotiated: the agent's
//! `Sec-WebSocket-Extensions` offer is not forwarded, and a `101` that accepts an extension
//! anyway is refused, since compressed messages could not be scrubbed.
//!
//! The connection lives only as long as what allowed it: it is closed (1008) when the agent's
//! token expires, and when a reload makes the destination, a credential it carries or the
//! policy refuse it.

use std::sync::Arc;
use std::time::SystemTime;

use credproxy_core::{Authority, Reject};
use credproxy_identity::sleep_until_wall_on;
use credproxy_scrub::{events::MAX_EVENT, MessageScrubber, ScrubPatterns};
use futures_util::{SinkExt, StreamExt};
use http::{Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn};

use crate::body::{empty, Body};
use crate::clock::InFlight;
use crate::scrub_body::scrub_headers;
use crate::Shared;

/// What allowed the upgrade, re-checked while it lasts.
pub(crate) struct Check {
    pub authority: Authority,
    /// When the agent's token expires (`None`: anonymous mode).
    pub expires: Option<SystemTime>,
    /// The policy input the upgrade was allowed with.
    pub input: credproxy_policy::PolicyInput,
    /// Ids of the credentials injected into the upgrade request.
    pub credentials: Vec<String>,
    /// The listener the agent came in on: with `agent_token`, the connection continues on the
    /// listener's current token (as tunnels do) when the first one expires.
    pub listener: String,
}

/// The upstream answered `101`: check and scrub its head, and relay the two upgraded
/// connections in the background.
pub(crate) fn switch(
    shared: &Arc<Shared>,
    guard: InFlight,
    agent_upgrade: hyper::upgrade::OnUpgrade,
    mut resp: Response<Incoming>,
    patterns: Option<Arc<ScrubPatterns>>,
    check: Check,
) -> Result<Response<Body>, Reject> {
    if resp
        .headers()
        .contains_key(http::header::SEC_WEBSOCKET_EXTENSIONS)
    {
        warn!(authority = %check.authority, "the upstream's 101 accepts a WebSocket extension the proxy did not offer; refused");
        return Err(Reject::UpstreamProtocol {
            authority: check.authority,
        });
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let (mut parts, _) = resp.into_parts();
    parts.extensions = http::Extensions::new();
    if let Some(p) = &patterns {
        let n = scrub_headers(p, &mut parts.headers);
        shared.metrics.scrubbed.inc_by(n as u64);
    }
    debug_assert_eq!(parts.status, StatusCode::SWITCHING_PROTOCOLS);
    let shared = shared.clone();
    tokio::spawn(async move {
        let _guard = guard;
        let (agent, upstream) = match (agent_upgrade.await, upstream_upgrade.await) {
            (Ok(a), Ok(u)) => (a, u),
            _ => {
                debug!("WebSocket upgrade did not complete on both sides");
                return;
            }
        };
        relay(shared, agent, upstream, patterns, check).await;
    });
    Ok(Response::from_parts(parts, empty()))
}

fn close(code: CloseCode, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.to_string().into(),
    }))
}

/// Whether the current generation still allows the connection; why not otherwise.
fn still_allowed(shared: &Shared, check: &Check) -> Result<(), &'static str> {
    let gen = shared.generation();
    if !gen.allowlist.allows(&check.authority) {
        return Err("its destination is no longer allowed");
    }
    for id in &check.credentials {
        match gen.creds.configs.iter().find(|c| &c.id == id) {
            Some(c) if c.bound_domains.allows(&check.authority) => {}
            _ => return Err("a credential it carries is no longer allowed for its destination"),
        }
    }
    let mut input = check.input.clone();
    input.request.allowlisted = true;
    input.time = humantime::format_rfc3339_seconds(shared.clock.now()).to_string();
    crate::authz::decide(&gen.policy, &input).map_err(|_| "the policy no longer allows it")
}

/// The token expired: with the listener's own token for the same agent still valid (and the
/// policy still allowing it under that identity), when that one expires.
async fn renew(shared: &Shared, check: &mut Check) -> Option<SystemTime> {
    let lt = shared.listener_tokens.get(&check.listener)?;
    let verifier = shared.verifier.as_ref()?;
    let fresh = lt.identity(verifier).await.ok()?;
    let current = check.input.identity.as_mut()?;
    if current.agent_id != fresh.agent_id {
        return None;
    }
    current.subject = fresh.subject.clone();
    current.roles = fresh.roles.clone();
    current.groups = fresh.groups.clone();
    current.issuer = fresh.issuer.clone();
    still_allowed(shared, check).ok()?;
    Some(fresh.expires_at).filter(|e| *e > shared.clock.now())
}

fn to_scrub(m: Message) -> Option<credproxy_scrub::Message> {
    match m {
        Message::Text(t) => Some(credproxy_scrub::Message::Text(t)),
        Message::Binary(b) => Some(credproxy_scrub::Message::Binary(b)),
        _ => None,
    }
}

fn from_scrub(m: credproxy_scrub::Message) -> Message {
    match m {
        credproxy_scrub::Message::Text(t) => Message::Text(t),
        credproxy_scrub::Message::Binary(b) => Message::Binary(b),
    }
}

async fn relay(
    shared: Arc<Shared>,
    agent: hyper::upgrade::Upgraded,
    upstream: hyper::upgrade::Upgraded,
    patterns: Option<Arc<ScrubPatterns>>,
    mut check: Check,
) {
    let config = WebSocketConfig {
        max_message_size: Some(MAX_EVENT),
        max_frame_size: Some(MAX_EVENT),
        ..WebSocketConfig::default()
    };
    let agent =
        WebSocketStream::from_raw_socket(TokioIo::new(agent), Role::Server, Some(config)).await;
    let upstream =
        WebSocketStream::from_raw_socket(TokioIo::new(upstream), Role::Client, Some(config)).await;
    let (mut to_agent, mut from_agent) = agent.split();
    let (mut to_upstream, mut from_upstream) = upstream.split();
    let mut scrubber = patterns
        .as_ref()
        .map(|p| MessageScrubber::new((**p).clone()));
    // The token's expiry on the proxy's clock (tests move it instead of waiting).
    let clock = shared.clock.clone();
    let expires = check.expires;
    let expiry = sleep_until_wall_on(&clock, expires.unwrap_or(SystemTime::UNIX_EPOCH));
    tokio::pin!(expiry);
    let mut proxy_running = true;
    let mut generations = shared.generations.subscribe();
    let authority = check.authority.clone();
    let scrubbed = |n: usize| shared.metrics.scrubbed.inc_by(n as u64);
    loop {
        tokio::select! {
            m = from_upstream.next() => {
                let m = match m {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        debug!(%authority, error = %e, "upstream WebSocket ended");
                        let _ = to_agent.send(close(CloseCode::Error, "the upstream connection failed")).await;
                        break;
                    }
                    None => {
                        let _ = to_agent.close().await;
                        break;
                    }
                };
                match m {
                    Message::Close(frame) => {
                        // Whatever is still held goes first, then the (scrubbed) close.
                        if let Some(s) = scrubber.as_mut() {
                            for out in s.finish() {
                                let _ = to_agent.send(from_scrub(out)).await;
                            }
                        }
                        let frame = frame.map(|mut f| {
                            if let Some(p) = &patterns {
                                let (r, n) = p.scrub(f.reason.as_bytes());
                                scrubbed(n);
                                f.reason = String::from_utf8_lossy(&r).into_owned().into();
                            }
                            f
                        });
                        let _ = to_agent.send(Message::Close(frame)).await;
                        let _ = to_upstream.flush().await;
                        break;
                    }
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    data => {
                        let outs = match (scrubber.as_mut(), to_scrub(data.clone())) {
                            (Some(s), Some(m)) => {
                                let before = s.count();
                                let outs: Vec<Message> = s.push(m).into_iter().map(from_scrub).collect();
                                scrubbed(s.count() - before);
                                outs
                            }
                            _ => vec![data],
                        };
                        for out in outs {
                            if to_agent.send(out).await.is_err() {
                                let _ = to_upstream.send(close(CloseCode::Away, "")).await;
                                return;
                            }
                        }
                    }
                }
            }
            m = from_agent.next() => {
                match m {
                    Some(Ok(Message::Close(frame))) => {
                        let _ = to_upstream.send(Message::Close(frame)).await;
                        // The upstream's answering close comes back through the other arm.
                    }
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                        if to_upstream.send(m).await.is_err() {
                            let _ = to_agent.send(close(CloseCode::Error, "the upstream connection failed")).await;
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        let _ = to_upstream.send(close(CloseCode::Away, "")).await;
                        break;
                    }
                }
            }
            () = &mut expiry, if expires.is_some() => {
                if let Some(fresh) = renew(&shared, &mut check).await {
                    expiry.set(sleep_until_wall_on(&clock, fresh));
                    continue;
                }
                info!(%authority, "closing a WebSocket: the agent's token expired");
                let _ = to_agent.send(close(CloseCode::Policy, "the token this connection was opened with expired; reconnect with a fresh token")).await;
                let _ = to_upstream.send(close(CloseCode::Away, "")).await;
                break;
            }
            changed = generations.changed(), if proxy_running => {
                if changed.is_err() {
                    proxy_running = false;
                    continue;
                }
                if let Err(why) = still_allowed(&shared, &check) {
                    info!(%authority, why, "closing a WebSocket after a reload");
                    let _ = to_agent.send(close(CloseCode::Policy, &format!("no longer allowed: {why}"))).await;
                    let _ = to_upstream.send(close(CloseCode::Away, "")).await;
                    break;
                }
            }
        }
    }
}
