//! Body wrappers on the credential path: the response scrubber (decode, scrub across events,
//! scrub bytes, count) and the request headers that decide what a response can hide from it.
//! The request side (placeholders past the scan window, body limits) is in `request_body`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use credproxy_core::{Authority, Reject};
use credproxy_scrub::decode::{self, DecodeError, DecodeLimit, Decoder};
use credproxy_scrub::{EventStreamScrubber, ScrubPatterns, StreamFormat, StreamScrubber};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tracing::warn;

use crate::body::{Body, BoxError};

/// Counters a wrapped body reports into, read when the exchange completes (audit, metrics).
#[derive(Debug, Default)]
pub struct Counters {
    pub bytes: AtomicU64,
    pub scrubbed: AtomicU64,
    /// The process-wide metric, incremented alongside.
    pub metric: prometheus_client::metrics::counter::Counter,
}

impl Counters {
    pub fn scrubbed(&self, n: u64) {
        if n > 0 {
            self.scrubbed.fetch_add(n, Ordering::Relaxed);
            self.metric.inc_by(n);
        }
    }
}

/// Why a scrubbed response body was cut (logged; the agent sees the stream fail, never a
/// silent end).
#[derive(Debug, thiserror::Error)]
pub enum ScrubFailure {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    EventTooLarge(#[from] credproxy_scrub::events::EventTooLarge),
}

impl ScrubFailure {
    fn reason(&self) -> &'static str {
        match self {
            ScrubFailure::Decode(DecodeError::TooLarge { .. }) => "upstream_decompression_limit",
            ScrubFailure::Decode(DecodeError::Corrupt { .. }) => "upstream_encoding",
            ScrubFailure::EventTooLarge(_) => "upstream_event_too_large",
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body with every rendering of every secret in the scrub set replaced,
    /// decoded first when the upstream compressed it, scrubbed across events when it is an
    /// event stream. Trailers are scrubbed too. On any failure the stream fails: nothing
    /// unchecked is ever emitted.
    pub struct ScrubBody {
        #[pin]
        inner: Body,
        inner_done: bool,
        decoder: Option<Decoder>,
        events: Option<EventStreamScrubber>,
        scrubber: StreamScrubber,
        patterns: Arc<ScrubPatterns>,
        counters: Arc<Counters>,
        // Bytes decoded before the head was sent (the first frame of a compressed body).
        first: Option<Vec<u8>>,
        pending_trailers: Option<HeaderMap>,
        authority: Authority,
        finished: bool,
    }
}

impl ScrubBody {
    /// One step of the pipeline: events, then bytes.
    fn scrub(
        events: &mut Option<EventStreamScrubber>,
        scrubber: &mut StreamScrubber,
        counters: &Counters,
        plain: &[u8],
    ) -> Result<Vec<u8>, ScrubFailure> {
        let plain = match events.as_mut() {
            Some(ev) => {
                let before = ev.count();
                let out = ev.push(plain)?;
                counters.scrubbed((ev.count() - before) as u64);
                out
            }
            None => plain.to_vec(),
        };
        let before = scrubber.count();
        let out = scrubber.push(&plain);
        counters.scrubbed((scrubber.count() - before) as u64);
        Ok(out)
    }
}

/// Scrub every value of a header map in place; returns the number of replacements.
pub fn scrub_headers(patterns: &ScrubPatterns, headers: &mut HeaderMap) -> usize {
    let mut count = 0;
    for value in headers.values_mut() {
        let (out, n) = patterns.scrub(value.as_bytes());
        if n > 0 {
            count += n;
            // The replacement is a placeholder or marker (token characters), so the new value
            // is valid wherever the old one was; fall back to an empty value just in case.
            *value = HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""));
        }
    }
    count
}

fn fail(authority: &Authority, e: ScrubFailure) -> BoxError {
    warn!(%authority, reason = e.reason(), error = %e, "response cut: it cannot be scrubbed");
    Box::new(e)
}

impl HttpBody for ScrubBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if *this.finished {
                if let Some(t) = this.pending_trailers.take() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                return Poll::Ready(None);
            }
            if let Some(plain) = this.first.take() {
                match Self::scrub(this.events, this.scrubber, this.counters, &plain) {
                    Ok(out) if !out.is_empty() => {
                        this.counters
                            .bytes
                            .fetch_add(out.len() as u64, Ordering::Relaxed);
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Some(Err(fail(this.authority, e)))),
                }
            }
            let polled = if *this.inner_done {
                Poll::Ready(None)
            } else {
                this.inner.as_mut().poll_frame(cx)
            };
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let plain = match this.decoder.as_mut() {
                            Some(d) => match d.push(&data) {
                                Ok(p) => p,
                                Err(e) => {
                                    return Poll::Ready(Some(Err(fail(this.authority, e.into()))))
                                }
                            },
                            None => data.to_vec(),
                        };
                        match Self::scrub(this.events, this.scrubber, this.counters, &plain) {
                            Ok(out) if !out.is_empty() => {
                                this.counters
                                    .bytes
                                    .fetch_add(out.len() as u64, Ordering::Relaxed);
                                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                            }
                            Ok(_) => {}
                            Err(e) => return Poll::Ready(Some(Err(fail(this.authority, e)))),
                        }
                    }
                    Err(frame) => {
                        if let Ok(mut trailers) = frame.into_trailers() {
                            let n = scrub_headers(this.patterns, &mut trailers);
                            this.counters.scrubbed(n as u64);
                            *this.pending_trailers = Some(trailers);
                        }
                    }
                },
                Poll::Ready(None) => {
                    *this.inner_done = true;
                    *this.finished = true;
                    let rest = match this.decoder.as_mut() {
                        Some(d) => match d.finish() {
                            Ok(rest) => rest,
                            Err(e) => {
                                return Poll::Ready(Some(Err(fail(this.authority, e.into()))))
                            }
                        },
                        None => Vec::new(),
                    };
                    let mut tail =
                        match Self::scrub(this.events, this.scrubber, this.counters, &rest) {
                            Ok(t) => t,
                            Err(e) => return Poll::Ready(Some(Err(fail(this.authority, e)))),
                        };
                    if let Some(ev) = this.events.as_mut() {
                        let before = ev.count();
                        let held = ev.finish();
                        this.counters.scrubbed((ev.count() - before) as u64);
                        tail.extend(this.scrubber.push(&held));
                    }
                    let before = this.scrubber.count();
                    tail.extend(this.scrubber.finish());
                    this.counters
                        .scrubbed((this.scrubber.count() - before) as u64);
                    if !tail.is_empty() {
                        this.counters
                            .bytes
                            .fetch_add(tail.len() as u64, Ordering::Relaxed);
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(tail)))));
                    }
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Wrap a response for scrubbing (its hop-by-hop headers still in place): headers now, body
/// and trailers as they stream. A
/// compressed body is decoded; its first frame is decoded before the head goes out, so that a
/// body that cannot be decoded, or decodes to far more than its size, is refused with a status
/// rather than cut after a `200`.
pub(crate) async fn scrub_response(
    method: &Method,
    authority: &Authority,
    mut parts: http::response::Parts,
    mut body: Body,
    patterns: Arc<ScrubPatterns>,
    metric: prometheus_client::metrics::counter::Counter,
) -> Result<(Response<Body>, Arc<Counters>), Reject> {
    let counters = Arc::new(Counters {
        metric,
        ..Counters::default()
    });
    let n = scrub_headers(&patterns, &mut parts.headers);
    counters.scrubbed(n as u64);
    let encoding = decode::for_headers(
        parts
            .headers
            .get_all(http::header::CONTENT_ENCODING)
            .iter()
            .map(HeaderValue::as_bytes),
        parts
            .headers
            .get_all(http::header::TRANSFER_ENCODING)
            .iter()
            .map(HeaderValue::as_bytes),
        DecodeLimit::DEFAULT,
    );
    // Only now, after the codings were read: `Connection` could name `Content-Encoding`, and
    // `Transfer-Encoding` is itself hop-by-hop.
    crate::body::strip_hop_by_hop(&mut parts.headers);
    let mut decoder = match encoding {
        decode::Encoding::Identity => None,
        decode::Encoding::Decode(d) => Some(*d),
        decode::Encoding::Unsupported(encoding) => {
            warn!(%authority, %encoding, "response withheld: its encoding cannot be decoded for scrubbing");
            return Err(Reject::UpstreamEncoding {
                authority: authority.clone(),
                encoding,
            });
        }
    };
    let mut first = None;
    let mut pending_trailers = None;
    let mut inner_done = false;
    if let Some(d) = decoder.as_mut() {
        parts.headers.remove(http::header::CONTENT_ENCODING);
        loop {
            match body.frame().await {
                None => {
                    inner_done = true;
                    break;
                }
                Some(Err(e)) => {
                    warn!(%authority, error = %e, "upstream body failed before its first bytes");
                    return Err(Reject::UpstreamProtocol {
                        authority: authority.clone(),
                    });
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => match d.push(&data) {
                        Ok(plain) if plain.is_empty() => {}
                        Ok(plain) => {
                            first = Some(plain);
                            break;
                        }
                        Err(e) => {
                            warn!(%authority, error = %e, "response withheld");
                            return Err(match e {
                                DecodeError::TooLarge { .. } => Reject::UpstreamDecodeLimit {
                                    authority: authority.clone(),
                                },
                                DecodeError::Corrupt { encoding, .. } => Reject::UpstreamEncoding {
                                    authority: authority.clone(),
                                    encoding: format!("{encoding} (corrupt)"),
                                },
                            });
                        }
                    },
                    Err(frame) => {
                        if let Ok(mut t) = frame.into_trailers() {
                            let n = scrub_headers(&patterns, &mut t);
                            counters.scrubbed(n as u64);
                            pending_trailers = Some(t);
                        }
                        inner_done = true;
                        break;
                    }
                },
            }
        }
    }
    // Scrubbing may change the length; the agent gets the body without a stale length. A
    // response that has no body keeps its header (it describes the representation).
    let bodiless = *method == Method::HEAD
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    if !bodiless || decoder.is_some() {
        parts.headers.remove(http::header::CONTENT_LENGTH);
    }
    let events = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| StreamFormat::for_content_type(v.as_bytes()))
        .map(|f| EventStreamScrubber::new(f, (*patterns).clone()));
    let scrubber = patterns.stream();
    let body = ScrubBody {
        inner: body,
        inner_done,
        decoder,
        events,
        scrubber,
        patterns,
        counters: counters.clone(),
        first,
        pending_trailers,
        authority: authority.clone(),
        finished: false,
    };
    Ok((Response::from_parts(parts, body.boxed()), counters))
}

/// Request headers that decide what a response can hide from the scrubber. A WebSocket
/// extension offer is removed, so permessage-deflate is never negotiated (it would compress
/// messages past the scrubber). While responses are scrubbed, `Accept-Encoding` offers only
/// the agent's codings that the proxy decodes (the agent receives decoded bodies anyway).
pub(crate) fn prepare_request(headers: &mut HeaderMap, websocket: bool, scrubbing: bool) {
    if websocket {
        headers.remove(http::header::SEC_WEBSOCKET_EXTENSIONS);
    }
    if !scrubbing || !headers.contains_key(http::header::ACCEPT_ENCODING) {
        return;
    }
    let offered: Vec<u8> = headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b", "[..]);
    headers.remove(http::header::ACCEPT_ENCODING);
    if let Some(v) = decode::accept_encoding(&offered).and_then(|v| HeaderValue::from_str(&v).ok())
    {
        headers.insert(http::header::ACCEPT_ENCODING, v);
    }
}
