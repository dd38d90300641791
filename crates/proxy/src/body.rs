//! Body types on the request path, and helpers to build the proxy's own responses.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use credproxy_core::Reject;
use http::{HeaderMap, HeaderName, HeaderValue, Response, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Full};

use crate::clock::InFlight;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until it is finished
    /// or dropped, so connection deadlines never cut a response that is still streaming.
    pub struct Tracked {
        #[pin]
        inner: Body,
        guard: Option<InFlight>,
        // Completes the audit record when the body ends (or is dropped).
        ticket: Option<crate::audit::Ticket>,
        down: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    }
}

impl Tracked {
    pub fn boxed(
        inner: Body,
        guard: InFlight,
        ticket: Option<(
            crate::audit::Ticket,
            std::sync::Arc<std::sync::atomic::AtomicU64>,
        )>,
    ) -> Body {
        let (ticket, down) = match ticket {
            Some((t, d)) => (Some(t), Some(d)),
            None => (None, None),
        };
        // Handed to the agent's connection: it waits on the agent until first asked (an
        // HTTP/2 stream whose window the agent holds at zero is never asked, A17).
        if !inner.is_end_stream() {
            guard.ready();
        }
        Tracked {
            inner,
            guard: Some(guard),
            ticket,
            down,
        }
        .boxed()
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(g) = this.guard.as_ref() {
            g.asked();
        }
        let r = this.inner.poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), Some(data)) = (this.down.as_ref(), frame.data_ref()) {
                    d.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                // Until asked for more, the response waits on the agent (slow read, A15).
                if let Some(g) = this.guard.as_ref() {
                    g.ready();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                this.guard.take();
                this.ticket.take();
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus the agent's own
/// proxy credentials. `te: trailers` is kept: it is end-to-end in meaning.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers that a `Connection` list may never remove: they route or frame the request, and
/// letting the agent strip them would let it change what the proxy checked.
const PROTECTED: &[&str] = &["host", "content-length", "content-type", "authorization"];

/// Remove hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !PROTECTED.contains(&n.as_str()))
        .collect();
    let keep_te = headers
        .get(http::header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for n in named {
        headers.remove(n);
    }
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
    if keep_te {
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The proxy's answer to a rejected request: status, a stable reason header, the request
/// id, and one line that tells the agent what happened and what to do.
pub fn reject_response(reject: &Reject, request_id: &str, version: Version) -> Response<Body> {
    let body = format!(
        "credproxy: {} (request id {request_id})\n",
        reject.agent_message()
    );
    let mut resp = Response::new(full(body));
    *resp.status_mut() =
        http::StatusCode::from_u16(reject.status()).unwrap_or(http::StatusCode::BAD_GATEWAY);
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "x-credproxy-reason",
        HeaderValue::from_static(reject.reason()),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-credproxy-request-id", v);
    }
    if reject.status() == 407 {
        for v in credproxy_identity::PROXY_AUTHENTICATE {
            h.append(
                http::header::PROXY_AUTHENTICATE,
                HeaderValue::from_static(v),
            );
        }
    }
    if reject.closes_connection() && version <= Version::HTTP_11 {
        h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_listed_but_not_protected() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            "x-foo, host, authorization, keep-alive".parse().unwrap(),
        );
        h.insert("x-foo", "1".parse().unwrap());
        h.insert("host", "a".parse().unwrap());
        h.insert("authorization", "Bearer x".parse().unwrap());
        h.insert("proxy-authorization", "Bearer jwt".parse().unwrap());
        h.insert("te", "trailers, gzip".parse().unwrap());
        h.insert("upgrade", "h2c".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-foo").is_none());
        assert!(h.get("proxy-authorization").is_none());
        assert!(h.get("upgrade").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert!(h.get("host").is_some());
        assert!(h.get("authorization").is_some());
        assert!(h.get("x-keep").is_some());
    }
}
