//! The request path: accept → CONNECT + allowlist → TLS termination with a minted leaf →
//! inner request checks → forward over verified TLS → stream the response back.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use credproxy_core::{Authority, AuthorityError, PeerAddr, Reject, Scheme, Secret};
use credproxy_identity::AgentIdentity;
use credproxy_listen::{Accepted, ListenerInfo};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncReadExt;
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, error, info, warn};

use crate::audit::Draft;
use crate::body::{empty, reject_response, strip_hop_by_hop, Body, Tracked};
use crate::clock::{ConnClock, TimedIo};
use crate::connector::ConnectError;
use crate::creds;
use crate::drain::Drain;
use crate::framing::{Framed, FramingFlag};
use crate::limits::{self, Held};
use crate::prefixed::Prefixed;
use crate::request_body::{BodyFlags, Guarded, Holding};
use crate::Shared;

/// What every request on one agent connection shares. It lives as long as the connection
/// and any tunnel opened on it (hyper's connection future ends at the upgrade).
struct ConnCtx {
    listener: Arc<ListenerInfo>,
    peer: PeerAddr,
    clock: Arc<ConnClock>,
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

/// What every request inside one CONNECT tunnel shares.
struct TunnelCtx {
    conn: Arc<ConnCtx>,
    authority: Authority,
    scheme: Scheme,
    /// Verified on the CONNECT; every request in the tunnel re-checks its expiry.
    identity: Option<Arc<AgentIdentity>>,
    /// The identity came from the listener's own token (`agent_token`): when it expires, the
    /// listener's current token takes over instead of a 407 the agent could not act on.
    listener_token: bool,
    /// The SNI the agent sent, if any, as it sent it.
    sni: Option<String>,
    /// The token the tunnel was opened with: never forwarded (A21), and verified again when
    /// the issuer withdraws a key (`key_epoch` changed).
    token: Option<Secret>,
    key_epoch: u64,
    /// The first HTTP/1 framing violation inside the tunnel.
    framing: Arc<FramingFlag>,
    /// Scan-window memory of the tunnel's requests (HTTP/2 streams share it).
    budget: Arc<Semaphore>,
    /// Notified when a refusal must close the tunnel's HTTP/2 connection (GOAWAY).
    closer: Arc<Notify>,
    /// The tunnel's place under `limits.max_connections_per_identity`.
    _held: Option<Held>,
}

/// The agent's verified token and what it identifies.
struct Auth {
    identity: Arc<AgentIdentity>,
    /// The token the agent presented (`None`: the listener's own token, `agent_token`, which
    /// the agent never holds).
    token: Option<Secret>,
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
    let ctx = Arc::new(ConnCtx {
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
        .max_buf_size(shared.limits.max_header_bytes)
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = watcher.watch(conn, |c| c.graceful_shutdown()).await {
        debug!(error = %e, "agent connection ended with an error");
    }
}

/// A request on the proxy listener itself: CONNECT or absolute-form `http://`.
async fn outer(
    shared: Arc<Shared>,
    ctx: Arc<ConnCtx>,
    watcher: Drain,
    req: Request<Incoming>,
) -> Response<Body> {
    let guard = ctx.clock.request_started();
    let id = request_id();
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
    if let Some(violation) = ctx.framing.get() {
        let reject = Reject::Framing {
            what: violation.to_string(),
        };
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

fn finish(
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
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => tunnel(shared, ctx, authority, auth, held, upgraded, watcher).await,
            Err(e) => debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
    Ok(Response::new(empty()))
}

/// Serve the inside of a CONNECT tunnel: TLS (MITM) or, if the agent speaks plain HTTP in
/// it, plain HTTP.
async fn tunnel(
    shared: Arc<Shared>,
    ctx: Arc<ConnCtx>,
    authority: Authority,
    auth: Option<Auth>,
    held: Held,
    upgraded: hyper::upgrade::Upgraded,
    watcher: Drain,
) {
    let key_epoch = shared.verifier.as_ref().map_or(0, |v| v.key_epoch());
    let (identity, token) = match auth {
        Some(a) => (Some(a.identity), a.token),
        None => (None, None),
    };
    // No presented token but an identity: it came from the listener's own token.
    let listener_token = identity.is_some() && token.is_none();
    let tctx = |scheme, sni| TunnelCtx {
        conn: ctx.clone(),
        authority: authority.clone(),
        scheme,
        identity: identity.clone(),
        sni,
        listener_token,
        token: token.clone(),
        key_epoch,
        framing: Arc::new(FramingFlag::default()),
        budget: Arc::new(Semaphore::new(
            shared.limits.body_scan_memory_per_connection,
        )),
        closer: Arc::new(Notify::new()),
        _held: None,
    };
    let mut io = TokioIo::new(upgraded);
    let mut first = [0u8; 1];
    let n = match tokio::time::timeout(shared.limits.header_read_timeout, io.read(&mut first)).await
    {
        Ok(Ok(n)) => n,
        _ => return,
    };
    if n == 0 {
        return;
    }
    let io = Prefixed::new(Bytes::copy_from_slice(&first[..n]), io);
    if first[0] == 0x16 {
        let handshake = async {
            let start =
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)
                    .await?;
            let sni = start.client_hello().server_name().map(str::to_owned);
            let config = shared
                .leaf_cache
                .server_config(authority.host())
                .map_err(std::io::Error::other)?;
            let tls = start.into_stream(config).await?;
            Ok::<_, std::io::Error>((tls, sni))
        };
        let (tls, sni) =
            match tokio::time::timeout(shared.limits.header_read_timeout, handshake).await {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    debug!(%authority, error = %e, "agent TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%authority, "agent TLS handshake timed out");
                    return;
                }
            };
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let tctx = Arc::new(TunnelCtx {
            _held: Some(held),
            ..tctx(Scheme::Https, sni)
        });
        serve_inner(shared, tctx, tls, watcher, h2).await;
    } else {
        let tctx = Arc::new(TunnelCtx {
            _held: Some(held),
            ..tctx(Scheme::Http, None)
        });
        serve_inner(shared, tctx, io, watcher, false).await;
    }
}

/// Serve the requests inside a tunnel: HTTP/2 when the agent negotiated it by ALPN, else
/// HTTP/1.1 with its framing followed strictly (A18).
async fn serve_inner<I>(
    shared: Arc<Shared>,
    tctx: Arc<TunnelCtx>,
    io: I,
    mut watcher: Drain,
    h2: bool,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let closer = tctx.closer.clone();
    let framing = tctx.framing.clone();
    let svc_shared = shared.clone();
    let svc = service_fn(move |req| {
        let shared = svc_shared.clone();
        let tctx = tctx.clone();
        async move { Ok::<_, std::convert::Infallible>(inner(shared, tctx, req).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let mut builder = if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    builder
        .http1()
        .max_buf_size(shared.limits.max_header_bytes)
        .timer(TokioTimer::new());
    builder
        .http2()
        .max_header_list_size(shared.limits.max_header_bytes as u32)
        .max_concurrent_streams(shared.limits.max_streams_per_connection)
        .timer(TokioTimer::new());
    let io: Box<dyn Io> = if h2 {
        Box::new(io)
    } else {
        Box::new(Framed::new(io, shared.limits.max_header_bytes, framing))
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    // Drive the connection; on shutdown, or when a refusal must close it (HTTP/2: GOAWAY,
    // in-flight streams finish), shut it down gracefully and keep driving it to the end.
    let mut closing = false;
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = watcher.signalled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = closer.notified(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "tunnel connection ended with an error");
    }
}

/// The byte stream a tunnel's HTTP server runs on (TLS or plain, framed or not).
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A request inside a tunnel.
async fn inner(
    shared: Arc<Shared>,
    tctx: Arc<TunnelCtx>,
    req: Request<Incoming>,
) -> Response<Body> {
    let guard = tctx.conn.clock.request_started();
    let id = request_id();
    let started = Instant::now();
    let version = req.version();
    let mut draft = Draft::new(
        &id,
        &tctx.conn.listener.name,
        tctx.conn.peer.to_string(),
        tctx.authority.to_string(),
        req.method().as_str(),
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
    );
    draft.identity(tctx.identity.as_deref());
    let result = async {
        if let Some(violation) = tctx.framing.get() {
            return Err(Reject::Framing { what: violation.to_string() });
        }
        if req.method() == Method::CONNECT {
            return Err(Reject::NestedConnect);
        }
        let mut identity = tctx.identity.clone();
        if let Some(current) = identity.clone() {
            let keys_changed = shared
                .verifier
                .as_ref()
                .is_some_and(|v| v.key_epoch() != tctx.key_epoch);
            let expired = current.expires_at <= shared.clock.now();
            if expired || (tctx.listener_token && keys_changed) {
                match shared.listener_tokens.get(&tctx.conn.listener.name) {
                    // Opened with the listener's own token: continue with its current one
                    // (verified like any other, so a withdrawn key is noticed too).
                    Some(lt) if tctx.listener_token => {
                        let fresh = lt.identity(listener_verifier(&shared)?).await?;
                        draft.identity(Some(&fresh));
                        identity = Some(fresh);
                    }
                    // The tunnel's token expired: refuse and close, so the client reconnects
                    // with a fresh token on a new CONNECT.
                    _ => return Err(Reject::ProxyAuthRequired {
                        failure: credproxy_core::AuthFailure::Expired,
                        message: "the token this tunnel was opened with has expired; reconnect with a fresh token".into(),
                    }),
                }
            } else {
                still_trusted(&shared, &tctx, &current).await?;
            }
        }
        check_inner_authority(&tctx, &req)?;
        let Some(stream) = shared.identity_streams.acquire(limits::key(identity.as_deref())) else {
            return Err(Reject::IdentityStreamLimit);
        };
        let via = Via {
            conn: &tctx.conn,
            framing: &tctx.framing,
            budget: &tctx.budget,
            token: tctx.token.as_ref(),
        };
        let resp = forward(&shared, &via, &tctx.authority, tctx.scheme, identity, &mut draft, req).await?;
        let (parts, body) = resp.into_parts();
        Ok(Response::from_parts(parts, Holding::boxed(body, stream)))
    }
    .await;
    if let Err(reject) = &result {
        // Body refusals reset their stream only; the others close the whole connection.
        let stream_only = matches!(reject, Reject::BodyTooLarge { .. } | Reject::BodyTimeout);
        if reject.closes_connection() && !stream_only && version == Version::HTTP_2 {
            // HTTP/1 closes with `Connection: close`; HTTP/2 with GOAWAY.
            tctx.closer.notify_one();
        }
    }
    finish(&shared, result, &id, version, started, guard, Some(draft))
}

/// After the issuer withdrew a signing key, the tunnel's token is verified again: a token
/// signed with the withdrawn key ends the tunnel (407, connection closed).
async fn still_trusted(
    shared: &Shared,
    tctx: &TunnelCtx,
    identity: &AgentIdentity,
) -> Result<(), Reject> {
    let (Some(verifier), Some(token)) = (&shared.verifier, &tctx.token) else {
        return Ok(());
    };
    if verifier.key_epoch() == tctx.key_epoch {
        return Ok(());
    }
    let token = std::str::from_utf8(token.expose()).unwrap_or("");
    match verifier.verify(token).await {
        Ok(again) if again.agent_id == identity.agent_id => Ok(()),
        _ => {
            info!(agent = %identity.agent_id, "tunnel token no longer verifies (signing key withdrawn); closing the tunnel");
            Err(Reject::ProxyAuthRequired {
                failure: credproxy_core::AuthFailure::Revoked,
                message: "the token this tunnel was opened with is no longer valid (its signing key was withdrawn); reconnect with a fresh token".into(),
            })
        }
    }
}

/// What `forward` needs of the connection or tunnel a request came on.
struct Via<'a> {
    conn: &'a Arc<ConnCtx>,
    framing: &'a FramingFlag,
    budget: &'a Arc<Semaphore>,
    /// The agent's own token: never forwarded.
    token: Option<&'a Secret>,
}

/// The inner request must be for the host the agent tunnelled to: SNI, `:authority` and
/// `Host` must all name the CONNECT target.
fn check_inner_authority(tctx: &TunnelCtx, req: &Request<Incoming>) -> Result<(), Reject> {
    let expected = &tctx.authority;
    let mismatch = |got: &str, field: &'static str| Reject::AuthorityMismatch {
        expected: expected.clone(),
        got: got.to_string(),
        field,
    };
    if let Some(sni) = &tctx.sni {
        match Authority::new(sni, expected.port()) {
            Ok(a) if a.host() == expected.host() => {}
            _ => return Err(mismatch(sni, "TLS SNI")),
        }
    }
    let mut seen = false;
    if let Some(a) = req.uri().authority() {
        seen = true;
        match Authority::parse_with_default(a.as_str(), tctx.scheme) {
            Ok(a) if &a == expected => {}
            _ => return Err(mismatch(a.as_str(), ":authority")),
        }
    }
    for host in req.headers().get_all(http::header::HOST) {
        seen = true;
        let h = host.to_str().unwrap_or("<non-ascii>");
        match Authority::parse_with_default(h, tctx.scheme) {
            Ok(a) if &a == expected => {}
            _ => return Err(mismatch(h, "Host")),
        }
    }
    if !seen {
        return Err(Reject::BadRequest {
            what: "missing Host header".into(),
        });
    }
    Ok(())
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
        token: auth.as_ref().and_then(|a| a.token.as_ref()),
    };
    let resp = forward(shared, &via, &authority, Scheme::Http, identity, draft, req).await?;
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(parts, Holding::boxed(body, stream)))
}

/// The verifier listener tokens go through; a listener token without identity is refused by
/// configuration, so its absence is an internal error.
fn listener_verifier(shared: &Shared) -> Result<&credproxy_identity::Verifier, Reject> {
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
    Ok(Some(Auth {
        identity,
        token: Some(Secret::new(token.as_bytes().to_vec())),
    }))
}

fn is_websocket_upgrade(req: &Request<Incoming>) -> Result<bool, Reject> {
    let Some(up) = req.headers().get(http::header::UPGRADE) else {
        return Ok(false);
    };
    let v = up.to_str().unwrap_or("");
    if req.version() == Version::HTTP_11 && v.trim().eq_ignore_ascii_case("websocket") {
        Ok(true)
    } else {
        Err(Reject::UpgradeNotAllowed {
            protocol: v.to_string(),
        })
    }
}

/// Where the agent's own token appears in a request it asked to forward, if anywhere: the
/// target, a header value (raw or inside decoded `Basic` credentials), or the body window.
fn agent_token_in(token: &Secret, parts: &http::request::Parts, body: &[&Bytes]) -> Option<String> {
    let finder = memchr::memmem::Finder::new(token.expose());
    if token.is_empty() {
        return None;
    }
    let target = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
    if finder.find(target.as_bytes()).is_some() {
        return Some("the request target".into());
    }
    for (name, value) in &parts.headers {
        let inside_basic = || {
            credproxy_scrub::decode_basic(value.as_bytes())
                .is_some_and(|d| finder.find(&d).is_some())
        };
        if finder.find(value.as_bytes()).is_some() || inside_basic() {
            return Some(format!("header {name}"));
        }
    }
    if body.iter().any(|d| finder.find(d).is_some()) {
        return Some("the request body".into());
    }
    None
}

/// Why a request body (or the upstream request carrying it) failed, when the proxy cut it.
fn body_cut(flags: &BodyFlags, framing: &FramingFlag) -> Option<Reject> {
    use std::sync::atomic::Ordering::Acquire;
    if flags.late.load(Acquire) {
        return Some(Reject::PlaceholderMisuse {
            kind: credproxy_core::MisuseKind::LateInBody,
            message: "a placeholder appeared in the request body past the part the proxy checks before sending (or in its trailers); the request was aborted".into(),
        });
    }
    if flags.too_large.load(Acquire) {
        return Some(Reject::BodyTooLarge { limit: 0 });
    }
    if flags.timed_out.load(Acquire) {
        return Some(Reject::BodyTimeout);
    }
    framing.get().map(|v| Reject::Framing {
        what: v.to_string(),
    })
}

/// Send the request upstream and stream the response back, injecting credentials where
/// the request carries their placeholders and scrubbing the response.
async fn forward(
    shared: &Arc<Shared>,
    via: &Via<'_>,
    authority: &Authority,
    scheme: Scheme,
    identity: Option<Arc<AgentIdentity>>,
    draft: &mut Draft,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Reject> {
    let ctx = via.conn;
    let request_id = draft.record.id.clone();
    let id = request_id.as_str();
    let gen = shared.generation();
    draft.record.policy_hash = Some(gen.policy.hash().to_string());
    // The allowlist of the request's generation, checked here and not only by the policy:
    // a reload that removes a name refuses it inside open tunnels whatever the Rego says.
    if !gen.allowlist.allows(authority) {
        info!(request_id = id, %authority, "destination no longer allowed");
        return Err(Reject::DestinationNotAllowed {
            authority: authority.clone(),
        });
    }
    // Nothing is served before every secret value it could carry can be scrubbed from it.
    if !gen.scrub_ready.load(std::sync::atomic::Ordering::Acquire) {
        return Err(Reject::ScrubSetUnavailable);
    }
    let websocket = is_websocket_upgrade(&req)?;
    let agent_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri: Uri = format!(
        "{}://{}{}",
        scheme.as_str(),
        authority.to_uri_authority(scheme),
        path
    )
    .parse()
    .map_err(|_| Reject::BadRequest {
        what: "request target is not a valid URI".into(),
    })?;
    let (mut parts, body) = req.into_parts();
    let ws_headers = websocket.then(|| parts.headers.get(http::header::UPGRADE).cloned());
    // Hop-by-hop headers (and the agent's own Proxy-Authorization) never leave the proxy,
    // so they are removed before anything looks for placeholders.
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(http::header::HOST);
    crate::scrub_body::prepare_request(
        &mut parts.headers,
        websocket,
        shared.scrub.patterns().is_some(),
    );
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    let method = parts.method.clone();
    if let Some(token) = via.token {
        if let Some(location) = agent_token_in(token, &parts, &[]) {
            let reject = Reject::AgentTokenInRequest { location };
            shared.misuse(&reject);
            return Err(reject);
        }
    }
    if gen.creds.set.is_some() {
        // A secret stored upstream must not be fetched piecewise: each piece would be too
        // short for the scrubber to recognise (A6). With credentials configured, no request
        // asks for a range, on any host (stored content may be served by another host).
        parts.headers.remove(http::header::RANGE);
        parts.headers.remove(http::header::IF_RANGE);
    }
    // Every body: an idle timeout; where a credential bound here may be injected into the
    // body (so the whole body is scanned and rewritten), a size cap.
    let flags = Arc::new(BodyFlags::default());
    let cap = gen
        .creds
        .bound_to(authority)
        .any(|i| gen.creds.configs[i].inject_in.body)
        .then_some(shared.limits.max_injected_body_bytes);
    if let Some(cap) = cap {
        let announced = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > cap) {
            return Err(Reject::BodyTooLarge { limit: cap });
        }
    }
    let body_limit = |r: Reject| match r {
        Reject::BodyTooLarge { .. } => Reject::BodyTooLarge {
            limit: cap.unwrap_or(0),
        },
        other => other,
    };
    let mut body: Body = Guarded::boxed(
        body.map_err(Into::into).boxed(),
        shared.limits.body_idle_timeout,
        cap,
        flags.clone(),
    );
    let late = flags.clone();

    // Find every placeholder (head, and the body's scan window) before anything is decided.
    let mut scan = creds::Scan::default();
    let mut window = None;
    if let Some(set) = &gen.creds.set {
        scan = creds::scan_head(set, &parts);
        let w = crate::inject::read_window(
            body,
            shared.limits.body_scan_window,
            via.budget,
            shared.limits.body_idle_timeout,
        )
        .await
        .map_err(|e| body_cut(&flags, via.framing).map(body_limit).unwrap_or(e))?;
        if let Some(token) = via.token {
            let data: Vec<&Bytes> = w.data().collect();
            if let Some(location) = agent_token_in(token, &parts, &data) {
                let reject = Reject::AgentTokenInRequest { location };
                shared.misuse(&reject);
                return Err(reject);
            }
        }
        let mut scanner = set.stream_scanner();
        for d in w.data() {
            scan.add_body(scanner.push(d));
        }
        if w.rest.is_none() {
            scan.add_body(scanner.finish());
        }
        for t in w.trailers() {
            creds::scan_trailers(set, t, &mut scan);
        }
        window = Some(w);
        body = crate::body::empty();
    }
    if let Err(reject) = creds::foreign_values(&gen.creds, authority, &parts.headers, &mut scan) {
        shared.misuse(&reject);
        return Err(reject);
    }
    for u in &scan.uses {
        let c = &gen.creds.configs[u.cred];
        draft.credential(&c.id, &c.placeholder, u.loc.describe());
    }
    let agent = identity.as_deref().map(|i| i.agent_id.as_str());
    let to_inject = match creds::check(&gen.creds, authority, scheme, &scan, agent) {
        Ok(v) => v,
        Err(reject) => {
            shared.misuse(&reject);
            return Err(reject);
        }
    };
    // Every request is authorized by the policy of its generation, with or without credentials.
    let facts = crate::authz::RequestFacts {
        identity: identity.as_deref(),
        anonymous_mode: shared.verifier.is_none(),
        method: parts.method.as_str(),
        authority,
        scheme,
        path: parts.uri.path(),
        query: parts.uri.query(),
        listener: &ctx.listener.name,
        peer: &ctx.peer,
        allowlisted: gen.allowlist.allows(authority),
    };
    let input = crate::authz::input(&facts, &gen.creds, &scan);
    if let Err(reject) = crate::authz::decide(&gen.policy, &input) {
        info!(request_id = id, %authority, reason = reject.reason(), "refused by policy");
        // A placeholder of a credential this identity holds none of the roles for (another
        // agent's placeholder, A28) is a misuse alarm, whatever the policy's words.
        if crate::authz::uses_ungranted(identity.as_deref(), &gen.creds, &scan) {
            shared.misuse_alarm("credential_not_granted");
            draft
                .record
                .misuse_alarms
                .push("credential_not_granted".to_string());
        }
        return Err(reject);
    }
    let internal = shared.internal.get(authority);
    if internal.is_some() {
        crate::internal::refuse_unsuitable(id, authority, websocket, !to_inject.is_empty())?;
    }
    let mut permit = None;
    if let (Some(set), Some(mut window)) = (&gen.creds.set, window) {
        permit = window.permit.take();
        let plan = crate::inject::inject(shared, &gen.creds, &to_inject, &scan, &mut parts).await?;
        if !to_inject.is_empty() {
            // No credential leaves the proxy before its use is durably recorded.
            if let Some(spool) = &shared.audit {
                if let Err(e) = spool.begin_credentialed(draft.record.clone()).await {
                    error!(request_id = id, error = %e, "audit spool cannot commit; refusing to send the credential");
                    return Err(Reject::AuditUnavailable);
                }
                draft.begun = true;
            }
        }
        body = crate::inject::rebuild_body(set, window, &plan, &mut parts, late.clone());
    }
    let body = crate::audit::count_body(body, draft.bytes_up.clone());
    // The window's scan memory is released when the body has been sent (or dropped).
    let body = match permit {
        Some(p) => Holding::boxed(body, p),
        None => body,
    };
    if let Some(Some(up)) = ws_headers {
        parts.headers.insert(http::header::UPGRADE, up);
        parts.headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
    }
    if let Some(svc) = internal {
        let resp = crate::internal::send(
            svc,
            parts,
            body,
            identity.as_deref(),
            id,
            shared.upstream.connect_timeout,
            shared.upstream.response_header_timeout,
        )
        .await?;
        // An internal service's answers are scrubbed like any other host's: whatever an
        // instance stored there, no secret value reaches an agent from it.
        let Some(patterns) = shared.scrub.patterns() else {
            return Ok(resp);
        };
        let (mut parts, body) = resp.into_parts();
        parts.extensions = http::Extensions::new();
        let (resp, counters) = crate::scrub_body::scrub_response(
            &method,
            authority,
            parts,
            body,
            patterns,
            shared.metrics.scrubbed.clone(),
        )
        .await?;
        draft.scrub = Some(counters);
        return Ok(resp);
    }
    let upstream_req = Request::from_parts(parts, body);

    let client = if websocket {
        &shared.ws_client
    } else {
        &shared.client
    };
    let injected: Vec<String> = to_inject
        .iter()
        .map(|&i| gen.creds.configs[i].id.clone())
        .collect();
    let send = client.request(upstream_req);
    let resp = match tokio::time::timeout(shared.upstream.response_header_timeout, send).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            if let Some(reject) = body_cut(&flags, via.framing).map(body_limit) {
                if matches!(reject, Reject::PlaceholderMisuse { .. }) {
                    shared.misuse(&reject);
                }
                warn!(request_id = id, %authority, reason = reject.reason(), "request body cut; upstream request aborted");
                return Err(reject);
            }
            let reject = classify_upstream_error(&e, authority);
            warn!(request_id = id, %authority, reason = reject.reason(), error = %ErrorChain(&e), "upstream request failed");
            return Err(reject);
        }
        Err(_) => {
            warn!(request_id = id, %authority, "upstream response timed out");
            return Err(Reject::UpstreamTimeout {
                authority: authority.clone(),
            });
        }
    };
    debug!(request_id = id, listener = %ctx.listener.name, %method, %authority, status = resp.status().as_u16(), "forwarded");

    let mut close_after = false;
    // Loaded after injection: it holds whatever this request put in the set.
    let patterns = shared.scrub.patterns();
    if let Some(agent_upgrade) = agent_upgrade {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let check = crate::websocket::Check {
                authority: authority.clone(),
                expires: identity.as_ref().map(|i| i.expires_at),
                input,
                credentials: injected,
                listener: ctx.listener.name.clone(),
            };
            let guard = ctx.clock.request_started();
            return crate::websocket::switch(shared, guard, agent_upgrade, resp, patterns, check);
        }
        // No 101: an ordinary response, after which the agent's connection closes (the
        // bytes the agent sends after an upgrade request are not read as HTTP requests).
        close_after = true;
    }
    let (mut parts, body) = resp.into_parts();
    // hyper keeps a non-standard HTTP/1.1 reason phrase as an extension and writes it back out;
    // servers put rejected keys in it, so the agent always gets the standard one.
    parts.extensions = http::Extensions::new();
    let body: Body = body.map_err(Into::into).boxed();
    let mut resp = match patterns {
        None => {
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body)
        }
        Some(patterns) => {
            let (resp, counters) = crate::scrub_body::scrub_response(
                &method,
                authority,
                parts,
                body,
                patterns,
                shared.metrics.scrubbed.clone(),
            )
            .await?;
            draft.scrub = Some(counters);
            resp
        }
    };
    if close_after {
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(resp)
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
struct ErrorChain<'a>(&'a (dyn StdError + 'static));

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
