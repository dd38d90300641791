//! An agent's connection to a proxy listener: its requests (CONNECT, absolute-form
//! `http://`), the agent's token, the allowlist, and the answer every request ends with
//! ([`finish`]: metrics, the rejection body, the audit ticket). The inside of a CONNECT
//! tunnel is [`crate::tunnel`]; forwarding one request is [`crate::forward`].

use std::sync::Arc;
use std::time::Instant;

use credproxy_core::{Authority, AuthorityError, PeerAddr, Reject, Scheme};
use credproxy_identity::AgentIdentity;
use credproxy_listen::{Accepted, Listener, ListenerInfo};
use http::{HeaderValue, Method, Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tracing::{debug, error, info, warn, Instrument, Span};

use crate::agent_token::AgentToken;
use crate::audit::Draft;
use crate::body::{empty, reject_response, Body, Tracked};
use crate::clock::{ConnClock, TimedIo};
use crate::drain;
use crate::drain::Drain;
use crate::forward::{forward, Target, Via};
use crate::framing::{Framed, FramingFlag};
use crate::limits::{self, Held};
use crate::metrics::ListenerLabels;
use crate::request_body::Holding;
use crate::tunnel::tunnel;
use crate::Shared;

/// What every request on one agent connection shares. It lives as long as the connection
/// and any tunnel opened on it (hyper's connection future ends at the upgrade).
pub(crate) struct ConnCtx {
    /// `conn{listener, peer}`: the span of the connection and of the tunnels opened on it.
    pub span: Span,
    pub listener: Arc<ListenerInfo>,
    pub peer: PeerAddr,
    pub clock: Arc<ConnClock>,
    _slot: ConnSlot,
    /// The first HTTP/1 framing violation on this connection (A18).
    framing: Arc<FramingFlag>,
    /// Scan-window memory of this connection's plain-HTTP requests.
    budget: Arc<Semaphore>,
    /// Identity slots taken by plain-HTTP requests on this connection.
    held: std::sync::Mutex<Vec<Held>>,
}

/// A connection's place under `limits.max_connections`, counted in the open-connections
/// gauge until dropped.
pub(crate) struct ConnSlot {
    shared: Arc<Shared>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl ConnSlot {
    pub(crate) fn new(shared: Arc<Shared>, permit: tokio::sync::OwnedSemaphorePermit) -> ConnSlot {
        shared.metrics.open_connections.inc();
        ConnSlot {
            shared,
            _permit: permit,
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.shared.metrics.open_connections.dec();
    }
}

/// The agent's verified token and what it identifies.
pub(crate) struct Auth {
    pub identity: Arc<AgentIdentity>,
    /// The token the agent presented (`None`: the listener's own token, `agent_token`, which
    /// the agent never holds).
    pub token: Option<Arc<AgentToken>>,
}

/// A request id, also the audit record id and the Temporal workflow id. UUIDv7: time-ordered,
/// so the audit spool's indexes on it append at their right edge (the random v4 ids used before
/// dirtied a random B-tree page per record in two indexes). Ids are unique and increasing
/// within the process; after the millisecond timestamp come a randomly seeded counter and 32
/// random bits (uuid's shared v7 context). Nothing is authorized by knowing an id.
pub(crate) fn request_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Serve one accepted agent connection until it closes.
pub(crate) async fn serve_connection(
    shared: Arc<Shared>,
    accepted: Accepted,
    slot: ConnSlot,
    watcher: Drain,
) {
    let clock = ConnClock::new(
        shared.limits.header_read_timeout,
        shared.limits.idle_timeout,
    );
    let framing = Arc::new(FramingFlag::default());
    let io = Framed::new(
        TimedIo::new(accepted.stream, clock.clone()),
        shared.limits.max_header_bytes,
        framing.clone(),
    );
    let span = Span::current();
    let ctx = Arc::new(ConnCtx {
        span,
        listener: accepted.listener,
        peer: accepted.peer,
        clock,
        _slot: slot,
        framing,
        budget: Arc::new(Semaphore::new(
            shared.limits.body_scan_memory_per_connection,
        )),
        held: std::sync::Mutex::new(Vec::new()),
    });
    let svc_shared = shared.clone();
    let svc_watcher = watcher.clone();
    let svc = service_fn(move |req| {
        let shared = svc_shared.clone();
        let ctx = ctx.clone();
        let watcher = svc_watcher.clone();
        async move { Ok::<_, std::convert::Infallible>(outer(shared, ctx, watcher, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(crate::framing::parser_buf_size(
            shared.limits.max_header_bytes,
        ))
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = watcher.watch(conn, |c| c.graceful_shutdown()).await {
        debug!(error = %e, "agent connection ended with an error");
    }
}

/// The span every log line of one request is written in: its id, its destination and, once
/// verified, its agent (recorded by [`authenticate`]).
/// Its parent is the connection's span, named explicitly: HTTP/2 streams run on tasks of
/// their own.
pub(crate) fn request_span(
    conn: &ConnCtx,
    id: &str,
    authority: Option<&dyn std::fmt::Display>,
    agent: Option<&str>,
) -> Span {
    let span = tracing::info_span!(
        parent: &conn.span,
        "request",
        id,
        authority = tracing::field::Empty,
        agent = tracing::field::Empty,
    );
    // Recorded as `Display`: formatted only by a subscriber that takes the span.
    if let Some(authority) = authority {
        span.record("authority", tracing::field::display(authority));
    }
    if let Some(agent) = agent {
        span.record("agent", agent);
    }
    span
}

/// A request on the proxy listener itself: CONNECT or absolute-form `http://`.
async fn outer(
    shared: Arc<Shared>,
    ctx: Arc<ConnCtx>,
    watcher: Drain,
    req: Request<Incoming>,
) -> Response<Body> {
    let id = request_id();
    let authority = req.uri().authority().cloned();
    let span = request_span(
        &ctx,
        &id,
        authority.as_ref().map(|a| a as &dyn std::fmt::Display),
        None,
    );
    answer(shared, ctx, watcher, req, id).instrument(span).await
}

async fn answer(
    shared: Arc<Shared>,
    ctx: Arc<ConnCtx>,
    watcher: Drain,
    req: Request<Incoming>,
    id: String,
) -> Response<Body> {
    let guard = ctx.clock.request_started();
    let started = Instant::now();
    let version = req.version();
    let mut draft = Draft::new(
        &id,
        &ctx.listener.name,
        ctx.peer.to_string(),
        req.uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        req.method().as_str(),
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
    );
    if let Some(reject) = ctx.framing.reject() {
        return finish(
            &shared,
            Err(reject),
            &id,
            version,
            started,
            guard,
            Some(draft),
        );
    }
    if req.method() == Method::CONNECT {
        // A tunnel is not a request: the requests inside it are counted (and audited) one
        // by one. A refused CONNECT is a request and is recorded.
        return match connect(&shared, &ctx, watcher, req).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                Response::from_parts(parts, Tracked::boxed(body, guard, None))
            }
            Err(reject) => {
                let mut resp = finish(
                    &shared,
                    Err(reject),
                    &id,
                    version,
                    started,
                    guard,
                    Some(draft),
                );
                // The bytes after a CONNECT head were meant for a tunnel: never read them as
                // HTTP requests. A refused CONNECT ends the connection.
                resp.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                resp
            }
        };
    }
    let result = {
        match req.uri().scheme_str() {
            Some("http") => plain(&shared, &ctx, &mut draft, req).await,
            Some(_) => Err(Reject::HttpsWithoutConnect),
            None => Err(Reject::NotAProxyRequest),
        }
    };
    finish(&shared, result, &id, version, started, guard, Some(draft))
}

pub(crate) fn finish(
    shared: &Shared,
    result: Result<Response<Body>, Reject>,
    id: &str,
    version: Version,
    started: Instant,
    guard: crate::clock::InFlight,
    mut draft: Option<Draft>,
) -> Response<Body> {
    shared
        .metrics
        .request_duration
        .observe(started.elapsed().as_secs_f64());
    let (resp, reason) = match result {
        Ok(resp) => {
            shared.count("forwarded", "ok");
            (resp, "ok")
        }
        Err(reject) => {
            shared.count("rejected", reject.reason());
            if let Some(d) = draft.as_mut() {
                d.rejected(&reject);
            }
            (reject_response(&reject, id, version), reject.reason())
        }
    };
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let ticket = match (&shared.audit, draft) {
        (Some(spool), Some(d)) => {
            let down = d.bytes_down.clone();
            Some((d.ticket(spool.clone(), status, reason), down))
        }
        _ => None,
    };
    Response::from_parts(parts, Tracked::boxed(body, guard, ticket))
}

fn authority_error(e: AuthorityError, raw: &str) -> Reject {
    match e {
        AuthorityError::IpLiteral(host) => Reject::IpLiteral { host },
        other => Reject::BadRequest {
            what: format!("bad destination {raw:?}: {other}"),
        },
    }
}

fn check_allowed(shared: &Shared, ctx: &ConnCtx, authority: &Authority) -> Result<(), Reject> {
    if shared.generation().allowlist.allows(authority) {
        Ok(())
    } else {
        info!(listener = %ctx.listener.name, peer = %ctx.peer, %authority, "destination not allowed");
        Err(Reject::DestinationNotAllowed {
            authority: authority.clone(),
        })
    }
}

async fn connect(
    shared: &Arc<Shared>,
    ctx: &Arc<ConnCtx>,
    watcher: Drain,
    req: Request<Incoming>,
) -> Result<Response<Body>, Reject> {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .ok_or_else(|| Reject::BadRequest {
            what: "CONNECT needs a host:port target".into(),
        })?;
    let auth = authenticate(shared, ctx, &req).await?;
    let authority = Authority::parse_connect(&raw).map_err(|e| authority_error(e, &raw))?;
    check_allowed(shared, ctx, &authority)?;
    let key = limits::key(auth.as_ref().map(|a| &*a.identity));
    let Some(held) = shared.identity_conns.acquire(key) else {
        warn!(listener = %ctx.listener.name, agent = key, "connection limit of this identity reached");
        return Err(Reject::IdentityConnectionLimit);
    };
    shared.metrics.tunnels.inc();
    let shared = shared.clone();
    let ctx = ctx.clone();
    // The tunnel lives in the connection's span; each request in it opens its own.
    let span = ctx.span.clone();
    tokio::spawn(
        async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => tunnel(shared, ctx, authority, auth, held, upgraded, watcher).await,
                Err(e) => debug!(error = %e, "CONNECT upgrade failed"),
            }
        }
        .instrument(span),
    );
    Ok(Response::new(empty()))
}

/// An absolute-form `http://` request on the proxy listener.
async fn plain(
    shared: &Arc<Shared>,
    ctx: &Arc<ConnCtx>,
    draft: &mut Draft,
    req: Request<Incoming>,
) -> Result<Response<Body>, Reject> {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .ok_or_else(|| Reject::BadRequest {
            what: "absolute URI without a host".into(),
        })?;
    let auth = authenticate(shared, ctx, &req).await?;
    let identity = auth.as_ref().map(|a| a.identity.clone());
    draft.identity(identity.as_deref());
    let key = limits::key(identity.as_deref());
    {
        let mut held = ctx.held.lock().unwrap_or_else(|e| e.into_inner());
        if !held.iter().any(|h| h.key() == key) {
            match shared.identity_conns.acquire(key) {
                Some(h) => held.push(h),
                None => return Err(Reject::IdentityConnectionLimit),
            }
        }
    }
    let authority =
        Authority::parse_with_default(&raw, Scheme::Http).map_err(|e| authority_error(e, &raw))?;
    draft.record.destination = authority.to_string();
    check_allowed(shared, ctx, &authority)?;
    for host in req.headers().get_all(http::header::HOST) {
        let h = host.to_str().unwrap_or("<non-ascii>");
        match Authority::parse_with_default(h, Scheme::Http) {
            Ok(a) if a == authority => {}
            _ => {
                return Err(Reject::AuthorityMismatch {
                    expected: authority,
                    got: h.to_string(),
                    field: "Host",
                })
            }
        }
    }
    let Some(stream) = shared.identity_streams.acquire(key) else {
        return Err(Reject::IdentityStreamLimit);
    };
    let via = Via {
        conn: ctx,
        framing: &ctx.framing,
        budget: &ctx.budget,
        token: auth.as_ref().and_then(|a| a.token.as_deref()),
    };
    let target = Target {
        authority: &authority,
        scheme: Scheme::Http,
    };
    let resp = forward(shared, &via, target, identity, draft, req).await?;
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(parts, Holding::boxed(body, stream)))
}

/// The verifier listener tokens go through; a listener token without identity is refused by
/// configuration, so its absence is an internal error.
pub(crate) fn listener_verifier(shared: &Shared) -> Result<&credproxy_identity::Verifier, Reject> {
    shared.verifier.as_ref().ok_or(Reject::Internal)
}

/// Verify the agent's token from `Proxy-Authorization` (Bearer, or Basic with the token as
/// password), or, on a listener with `agent_token` and no `Proxy-Authorization`, the
/// listener's own token (same verifier). `None` when the proxy runs with
/// `identity.danger_allow_anonymous`.
async fn authenticate(
    shared: &Shared,
    ctx: &ConnCtx,
    req: &Request<Incoming>,
) -> Result<Option<Auth>, Reject> {
    let Some(verifier) = &shared.verifier else {
        return Ok(None);
    };
    let auth_reject = |e: credproxy_identity::AuthError| match e {
        credproxy_identity::AuthError::ProviderUnavailable => Reject::IdentityUnavailable,
        other => Reject::ProxyAuthRequired {
            failure: other.failure(),
            message: other.agent_message().to_string(),
        },
    };
    let Some(value) = req.headers().get(http::header::PROXY_AUTHORIZATION) else {
        return match shared.listener_tokens.get(&ctx.listener.name) {
            Some(lt) => lt.identity(verifier).await.map(|identity| {
                Span::current().record("agent", identity.agent_id.as_str());
                Some(Auth {
                    identity,
                    token: None,
                })
            }),
            None => Err(auth_reject(credproxy_identity::AuthError::Missing)),
        };
    };
    let token = credproxy_identity::token_from_proxy_authorization(value.as_bytes())
        .map_err(auth_reject)?;
    let identity = verifier.verify(&token).await.map_err(|e| {
        info!(listener = %ctx.listener.name, peer = %ctx.peer, reason = e.reason(), "agent token refused");
        auth_reject(e)
    })?;
    if let Some(bound) = shared.listener_agents.get(&ctx.listener.name) {
        if &identity.agent_id != bound {
            warn!(listener = %ctx.listener.name, agent = %identity.agent_id, "token for another agent on a bound listener");
            return Err(Reject::ListenerAgentMismatch {
                listener: ctx.listener.name.clone(),
            });
        }
    }
    Span::current().record("agent", identity.agent_id.as_str());
    Ok(Some(Auth {
        identity,
        token: Some(Arc::new(AgentToken::new(&token))),
    }))
}

pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: Listener,
    watcher: drain::Drain,
    max_conns: Arc<Semaphore>,
) {
    let name = listener.info().name.clone();
    let labels = ListenerLabels {
        listener: name.clone(),
    };
    loop {
        let accepted = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                error!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        shared.metrics.connections.get_or_create(&labels).inc();
        let Ok(permit) = max_conns.clone().try_acquire_owned() else {
            shared.count("rejected", Reject::TooManyConnections.reason());
            warn!(listener = %name, "connection limit reached; refusing connection");
            tokio::spawn(refuse_busy(accepted.stream));
            continue;
        };
        let shared = shared.clone();
        let watcher = watcher.clone();
        let slot = ConnSlot::new(shared.clone(), permit);
        let span = tracing::info_span!("conn", listener = %name, peer = %accepted.peer);
        tokio::spawn(serve_connection(shared, accepted, slot, watcher).instrument(span));
    }
}

/// Answers a connection over `limits.max_connections` through the one response path
/// (`body::reject_response`, served by hyper: status, reason header, request id, one line)
/// for its first request, then closes it. Bounded: whatever the client does, the connection
/// is gone after a second.
async fn refuse_busy(stream: credproxy_listen::Stream) {
    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
        Ok::<_, std::convert::Infallible>(reject_response(
            &Reject::TooManyConnections,
            &request_id(),
            req.version(),
        ))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), svc);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), conn).await;
}

#[cfg(test)]
mod tests {
    use super::request_id;

    /// The audit spool relies on ids being time-ordered (its indexes then append instead of
    /// touching a random page per record) and unique; agents and Temporal see the same text.
    #[test]
    fn request_ids_are_unique_time_ordered_lowercase_hex() {
        let ids: Vec<String> = (0..10_000).map(|_| request_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{id}"
            );
            assert_eq!(&id[12..13], "7", "UUID version 7: {id}");
        }
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ids are strictly increasing"
        );
    }
}
