//! The inside of a CONNECT tunnel: TLS termination with a minted leaf (or plain HTTP), the
//! tunnel's HTTP/1.1 or HTTP/2 server, and each request in it: the tunnel's identity still
//! valid, the inner authority the CONNECT target, then [`crate::forward`].

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use credproxy_core::{Authority, Reject, Scheme};
use credproxy_identity::AgentIdentity;
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncReadExt;
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, info, Instrument};

use crate::agent_token::AgentToken;
use crate::audit::Draft;
use crate::body::Body;
use crate::conn::{finish, listener_verifier, request_id, request_span, Auth, ConnCtx};
use crate::drain::Drain;
use crate::forward::{forward, Target, Via};
use crate::framing::{Framed, FramingFlag};
use crate::limits::{self, Held};
use crate::prefixed::Prefixed;
use crate::request_body::Holding;
use crate::Shared;

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
    token: Option<Arc<AgentToken>>,
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

/// Serve the inside of a CONNECT tunnel: TLS (MITM) or, if the agent speaks plain HTTP in
/// it, plain HTTP.
pub(crate) async fn tunnel(
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
        .max_buf_size(crate::framing::parser_buf_size(
            shared.limits.max_header_bytes,
        ))
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

/// A request inside a tunnel, in its own span (`request{id, authority, agent}`).
async fn inner(
    shared: Arc<Shared>,
    tctx: Arc<TunnelCtx>,
    req: Request<Incoming>,
) -> Response<Body> {
    let id = request_id();
    let agent = tctx.identity.as_ref().map(|i| i.agent_id.as_str());
    let span = request_span(&tctx.conn, &id, Some(&tctx.authority), agent);
    answer(shared, tctx, req, id).instrument(span).await
}

async fn answer(
    shared: Arc<Shared>,
    tctx: Arc<TunnelCtx>,
    req: Request<Incoming>,
    id: String,
) -> Response<Body> {
    let guard = tctx.conn.clock.request_started();
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
        if let Some(reject) = tctx.framing.reject() {
            return Err(reject);
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
            token: tctx.token.as_deref(),
        };
        let target = Target { authority: &tctx.authority, scheme: tctx.scheme };
        let resp = forward(&shared, &via, target, identity, &mut draft, req).await?;
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
