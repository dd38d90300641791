//! Stage 2: the request head as it will go upstream, and the agent's body under guard.

use std::sync::Arc;

use credproxy_core::Reject;
use http::header::{CONTENT_LENGTH, HOST, IF_RANGE, RANGE, UPGRADE};
use http::{HeaderValue, Method, Request, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use super::{Target, Via};
use crate::agent_token::AgentToken;
use crate::body::{strip_hop_by_hop, Body};
use crate::framing::FramingFlag;
use crate::request_body::{BodyFlags, Guarded};
use crate::{Generation, Shared};

/// The request on its way upstream, before any credential is placed in it.
pub(super) struct Head {
    pub parts: http::request::Parts,
    /// The agent's body, guarded (idle timeout, size cap); replaced by the scan window's
    /// rebuild once scanned.
    pub body: Body,
    pub method: Method,
    pub websocket: Option<Websocket>,
    pub cut: Cut,
}

/// A WebSocket upgrade the agent asked for.
pub(super) struct Websocket {
    /// The agent's side of the upgrade, resolved when the agent's connection is handed over.
    pub agent: OnUpgrade,
    /// The agent's `Upgrade` header, sent upstream again after hop-by-hop headers are gone.
    pub upgrade: Option<HeaderValue>,
}

/// Why the proxy cut the agent's body, if it did: read after an upstream or window error to
/// answer with the cause rather than the symptom.
pub(super) struct Cut {
    pub flags: Arc<BodyFlags>,
    /// The size cap of a body a credential may be injected into.
    pub cap: Option<u64>,
}

impl Cut {
    pub fn why(&self, framing: &FramingFlag) -> Option<Reject> {
        use std::sync::atomic::Ordering::Acquire;
        let flags = &self.flags;
        if flags.late.load(Acquire) {
            return Some(Reject::PlaceholderMisuse {
                kind: credproxy_core::MisuseKind::LateInBody,
                message: "a placeholder appeared in the request body past the part the proxy checks before sending (or in its trailers); the request was aborted".into(),
            });
        }
        if flags.too_large.load(Acquire) {
            return Some(Reject::BodyTooLarge {
                limit: self.cap.unwrap_or(0),
            });
        }
        if flags.timed_out.load(Acquire) {
            return Some(Reject::BodyTimeout);
        }
        framing.reject()
    }
}

/// The head as it goes upstream: absolute URI for the canonical destination, HTTP/1.1,
/// hop-by-hop headers (and the agent's `Proxy-Authorization`) and `Host` removed, ranges
/// refused when credentials are configured (A6); the agent's own token refused anywhere in it
/// (A21); the body wrapped in its guard.
pub(super) fn upstream_head(
    shared: &Shared,
    gen: &Generation,
    via: &Via<'_>,
    target: Target<'_>,
    mut req: Request<Incoming>,
) -> Result<Head, Reject> {
    let websocket = is_websocket_upgrade(&req)?;
    let agent_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri: Uri = format!(
        "{}://{}{}",
        target.scheme.as_str(),
        target.authority.to_uri_authority(target.scheme),
        path
    )
    .parse()
    .map_err(|_| Reject::BadRequest {
        what: "request target is not a valid URI".into(),
    })?;
    let (mut parts, body) = req.into_parts();
    let websocket = agent_upgrade.map(|agent| Websocket {
        agent,
        upgrade: parts.headers.get(UPGRADE).cloned(),
    });
    // Hop-by-hop headers (and the agent's own Proxy-Authorization) never leave the proxy,
    // so they are removed before anything looks for placeholders.
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(HOST);
    crate::scrub_body::prepare_request(
        &mut parts.headers,
        websocket.is_some(),
        shared.scrub.patterns().is_some(),
    );
    parts.uri = uri;
    parts.version = Version::HTTP_11;
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
        parts.headers.remove(RANGE);
        parts.headers.remove(IF_RANGE);
    }
    // Every body: an idle timeout; where a credential bound here may be injected into the
    // body (so the whole body is scanned and rewritten), a size cap.
    let cap = gen
        .creds
        .bound_to(target.authority)
        .any(|i| gen.creds.configs[i].inject_in.body)
        .then_some(shared.limits.max_injected_body_bytes);
    if let Some(cap) = cap {
        let announced = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > cap) {
            return Err(Reject::BodyTooLarge { limit: cap });
        }
    }
    let flags = Arc::new(BodyFlags::default());
    let body: Body = Guarded::boxed(
        body.map_err(Into::into).boxed(),
        shared.limits.body_idle_timeout,
        cap,
        flags.clone(),
    );
    Ok(Head {
        method: parts.method.clone(),
        parts,
        body,
        websocket,
        cut: Cut { flags, cap },
    })
}

fn is_websocket_upgrade(req: &Request<Incoming>) -> Result<bool, Reject> {
    let Some(up) = req.headers().get(UPGRADE) else {
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
pub(super) fn agent_token_in(
    token: &AgentToken,
    parts: &http::request::Parts,
    body: &[&bytes::Bytes],
) -> Option<String> {
    let target = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
    if token.found_in(target.as_bytes()) {
        return Some("the request target".into());
    }
    for (name, value) in &parts.headers {
        let inside_basic =
            || credproxy_scrub::decode_basic(value.as_bytes()).is_some_and(|d| token.found_in(&d));
        if token.found_in(value.as_bytes()) || inside_basic() {
            return Some(format!("header {name}"));
        }
    }
    if body.iter().any(|d| token.found_in(d)) {
        return Some("the request body".into());
    }
    None
}
