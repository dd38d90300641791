//! The request path: accept → CONNECT + allowlist → TLS termination with a minted leaf →
//! inner request checks → forward over verified TLS → stream the response back.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use credproxy_core::{Authority, AuthorityError, PeerAddr, Reject, Scheme};
use credproxy_identity::AgentIdentity;
use credproxy_listen::{Accepted, ListenerInfo};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncReadExt;
use tracing::{debug, error, info, warn};

use crate::audit::Draft;
use crate::body::{empty, reject_response, strip_hop_by_hop, Body, Tracked};
use crate::clock::{ConnClock, TimedIo};
use crate::connector::ConnectError;
use crate::creds;
use crate::drain::Drain;
use crate::prefixed::Prefixed;
use crate::Shared;

/// What every request on one agent connection shares. It lives as long as the connection
/// and any tunnel opened on it (hyper's connection future ends at the upgrade).
struct ConnCtx {
    listener: Arc<ListenerInfo>,
    peer: PeerAddr,
    clock: Arc<ConnClock>,
    _slot: ConnSlot,
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
}

/// A request id, also the audit record id and the Temporal workflow id. UUIDv7: time-ordered,
/// so the audit spool's indexes on it append at their right edge (the random v4 ids used before
/// dirtied a random B-tree page per record in two indexes). Ids are unique and increasing
/// within the process; after the millisecond timestamp come a randomly seeded counter and 32
/// random bits (uuid's shared v7 context). Nothing is authorized by knowing an id.
fn request_id() -> String {
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
    let io = TimedIo::new(accepted.stream, clock.clone());
    let ctx = Arc::new(ConnCtx {
        listener: accepted.listener,
        peer: accepted.peer,
        clock,
        _slot: slot,
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
    if req.method() == Method::CONNECT {
        // A tunnel is not a request: the requests inside it are counted (and audited) one
        // by one. A refused CONNECT is a request and is recorded.
        return match connect(&shared, &ctx, watcher, req).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                Response::from_parts(parts, Tracked::boxed(body, guard, None))
            }
            Err(reject) => finish(
                &shared,
                Err(reject),
                &id,
                version,
                started,
                guard,
                Some(draft),
            ),
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
    let identity = authenticate(shared, ctx, &req).await?;
    let listener_token = uses_listener_token(shared, ctx, &req);
    let authority = Authority::parse_connect(&raw).map_err(|e| authority_error(e, &raw))?;
    check_allowed(shared, ctx, &authority)?;
    shared.metrics.tunnels.inc();
    let shared = shared.clone();
    let ctx = ctx.clone();
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let auth = (identity, listener_token);
                tunnel(shared, ctx, authority, auth, upgraded, watcher).await
            }
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
    // The verified identity, and whether it came from the listener's own token.
    (identity, listener_token): (Option<Arc<AgentIdentity>>, bool),
    upgraded: hyper::upgrade::Upgraded,
    watcher: Drain,
) {
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
        let tctx = Arc::new(TunnelCtx {
            conn: ctx,
            authority,
            scheme: Scheme::Https,
            identity,
            listener_token,
            sni,
        });
        serve_inner(shared, tctx, tls, watcher).await;
    } else {
        let tctx = Arc::new(TunnelCtx {
            conn: ctx,
            authority,
            scheme: Scheme::Http,
            identity,
            listener_token,
            sni: None,
        });
        serve_inner(shared, tctx, io, watcher).await;
    }
}

async fn serve_inner<I>(shared: Arc<Shared>, tctx: Arc<TunnelCtx>, io: I, watcher: Drain)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc_shared = shared.clone();
    let svc = service_fn(move |req| {
        let shared = svc_shared.clone();
        let tctx = tctx.clone();
        async move { Ok::<_, std::convert::Infallible>(inner(shared, tctx, req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(shared.limits.max_header_bytes)
        .timer(TokioTimer::new());
    builder
        .http2()
        .max_header_list_size(shared.limits.max_header_bytes as u32)
        .timer(TokioTimer::new());
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .into_owned();
    if let Err(e) = watcher.watch(conn, |c| c.graceful_shutdown()).await {
        debug!(error = %e, "tunnel connection ended with an error");
    }
}

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
        let mut identity = tctx.identity.clone();
        if let Some(current) = &identity {
            if current.expires_at <= std::time::SystemTime::now() {
                match shared.listener_tokens.get(&tctx.conn.listener.name) {
                    // Opened with the listener's own token: continue with its current one
                    // (verified like any other).
                    Some(lt) if tctx.listener_token => {
                        let fresh = lt.identity(listener_verifier(&shared)?).await?;
                        draft.identity(Some(&fresh));
                        identity = Some(fresh);
                    }
                    // The tunnel's token expired: refuse and close, so the client reconnects
                    // with a fresh token on a new CONNECT.
                    _ => return Err(Reject::ProxyAuthRequired {
                        reason: "expired",
                        message: "the token this tunnel was opened with has expired; reconnect with a fresh token".into(),
                    }),
                }
            }
        }
        check_inner_authority(&tctx, &req)?;
        forward(&shared, &tctx.conn, &tctx.authority, tctx.scheme, identity, &mut draft, req).await
    }
    .await;
    finish(&shared, result, &id, version, started, guard, Some(draft))
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
    let identity = authenticate(shared, ctx, &req).await?;
    draft.identity(identity.as_deref());
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
    forward(shared, ctx, &authority, Scheme::Http, identity, draft, req).await
}

/// Whether `req` is authenticated with the listener's own token: the listener has
/// `agent_token` and the request carries no `Proxy-Authorization`.
fn uses_listener_token(shared: &Shared, ctx: &ConnCtx, req: &Request<Incoming>) -> bool {
    !req.headers()
        .contains_key(http::header::PROXY_AUTHORIZATION)
        && shared.listener_tokens.get(&ctx.listener.name).is_some()
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
) -> Result<Option<Arc<AgentIdentity>>, Reject> {
    let Some(verifier) = &shared.verifier else {
        return Ok(None);
    };
    let auth_reject = |e: credproxy_identity::AuthError| match e {
        credproxy_identity::AuthError::ProviderUnavailable => Reject::IdentityUnavailable,
        other => Reject::ProxyAuthRequired {
            reason: other.reason(),
            message: other.agent_message().to_string(),
        },
    };
    let Some(value) = req.headers().get(http::header::PROXY_AUTHORIZATION) else {
        return match shared.listener_tokens.get(&ctx.listener.name) {
            Some(lt) => lt.identity(verifier).await.map(Some),
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
    Ok(Some(identity))
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

/// Send the request upstream and stream the response back, injecting credentials where
/// the request carries their placeholders and scrubbing the response.
async fn forward(
    shared: &Arc<Shared>,
    ctx: &Arc<ConnCtx>,
    authority: &Authority,
    scheme: Scheme,
    identity: Option<Arc<AgentIdentity>>,
    draft: &mut Draft,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Reject> {
    let request_id = draft.record.id.clone();
    let id = request_id.as_str();
    let gen = shared.generation();
    draft.record.policy_hash = Some(gen.policy.hash().to_string());
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
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    let method = parts.method.clone();
    let mut body: Body = body.map_err(Into::into).boxed();
    let late = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // Find every placeholder (head, and the body's scan window) before anything is decided.
    let mut scan = creds::Scan::default();
    let mut window = None;
    if let Some(set) = &gen.creds.set {
        scan = creds::scan_head(set, &parts);
        let w = crate::inject::read_window(body, shared.limits.body_scan_window).await?;
        let mut scanner = set.stream_scanner();
        for d in w.data() {
            scan.add_body(scanner.push(d));
        }
        if w.rest.is_none() {
            scan.add_body(scanner.finish());
        }
        window = Some(w);
        body = crate::body::empty();
    }
    for u in &scan.uses {
        let c = &gen.creds.configs[u.cred];
        draft.credential(&c.id, &c.placeholder, u.loc.describe());
    }
    let to_inject = match creds::check(&gen.creds, authority, scheme, &scan) {
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
        return Err(reject);
    }
    if let (Some(set), Some(window)) = (&gen.creds.set, window) {
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
    if let Some(Some(up)) = ws_headers {
        parts.headers.insert(http::header::UPGRADE, up);
        parts.headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
    }
    let upstream_req = Request::from_parts(parts, body);

    let client = if websocket {
        &shared.ws_client
    } else {
        &shared.client
    };
    let send = client.request(upstream_req);
    let mut resp = match tokio::time::timeout(shared.upstream.response_header_timeout, send).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            if late.load(std::sync::atomic::Ordering::Acquire) {
                let reject = Reject::PlaceholderMisuse {
                        kind: credproxy_core::MisuseKind::LateInBody,
                        message: "a placeholder appeared in the request body past the part the proxy checks before sending; the request was aborted".into(),
                    };
                shared.misuse(&reject);
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

    if let Some(agent_upgrade) = agent_upgrade {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let guard = ctx.clock.request_started();
            tokio::spawn(async move {
                let _guard = guard;
                let (Ok(a), Ok(u)) = (agent_upgrade.await, upstream_upgrade.await) else {
                    return;
                };
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(u)).await;
            });
            let (parts, _) = resp.into_parts();
            return Ok(Response::from_parts(parts, empty()));
        }
        // No 101: this is an ordinary response and the agent's connection stays HTTP.
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body: Body = body.map_err(Into::into).boxed();
    match shared.recent.patterns_for(&gen.creds, authority) {
        None => Ok(Response::from_parts(parts, body)),
        Some(patterns) => {
            let (resp, counters) =
                crate::inject::scrub_response(shared, authority, parts, body, patterns)?;
            draft.scrub = Some(counters);
            Ok(resp)
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
