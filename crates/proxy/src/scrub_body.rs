//! Body wrappers on the credential path: the response scrubber (decode, scrub, count). The
//! request side (placeholders past the scan window, body limits) is in `request_body`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use credproxy_scrub::{ScrubPatterns, StreamScrubber};
use http::{HeaderMap, HeaderValue};
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::body::{Body, BoxError};
use crate::decode::Decoder;

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

pin_project_lite::pin_project! {
    /// A response body with every rendering of the injected secrets replaced, decoded first
    /// when the upstream compressed it. Trailers are scrubbed too. On a decoding error the
    /// stream fails: nothing unchecked is ever emitted.
    pub struct ScrubBody {
        #[pin]
        inner: Body,
        decoder: Option<Decoder>,
        sse: Option<crate::sse::SseScrubber>,
        scrubber: StreamScrubber,
        patterns: ScrubPatterns,
        counters: Arc<Counters>,
        pending_trailers: Option<HeaderMap>,
        finished: bool,
    }
}

impl ScrubBody {
    /// `event_stream`: the response is `text/event-stream`, so JSON text deltas are scrubbed
    /// across events too (see `sse`).
    pub fn boxed(
        inner: Body,
        decoder: Option<Decoder>,
        patterns: ScrubPatterns,
        counters: Arc<Counters>,
        event_stream: bool,
    ) -> Body {
        use http_body_util::BodyExt;
        ScrubBody {
            inner,
            decoder,
            sse: event_stream.then(|| crate::sse::SseScrubber::new(patterns.clone())),
            scrubber: patterns.stream(),
            patterns,
            counters,
            pending_trailers: None,
            finished: false,
        }
        .boxed()
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
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let plain = match this.decoder.as_mut() {
                            Some(d) => match d.push(&data) {
                                Ok(p) => p,
                                Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
                            },
                            None => data.to_vec(),
                        };
                        let plain = match this.sse.as_mut() {
                            Some(sse) => {
                                let before = sse.count();
                                let out = sse.push(&plain);
                                this.counters.scrubbed((sse.count() - before) as u64);
                                out
                            }
                            None => plain,
                        };
                        let before = this.scrubber.count();
                        let out = this.scrubber.push(&plain);
                        this.counters
                            .scrubbed((this.scrubber.count() - before) as u64);
                        if !out.is_empty() {
                            this.counters
                                .bytes
                                .fetch_add(out.len() as u64, Ordering::Relaxed);
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
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
                    *this.finished = true;
                    let mut rest = match this.decoder.as_mut() {
                        Some(d) => match d.finish() {
                            Ok(rest) => rest,
                            Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
                        },
                        None => Vec::new(),
                    };
                    if let Some(sse) = this.sse.as_mut() {
                        let before = sse.count();
                        let mut out = sse.push(&rest);
                        out.extend(sse.finish());
                        this.counters.scrubbed((sse.count() - before) as u64);
                        rest = out;
                    }
                    let mut tail = this.scrubber.push(&rest);
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
