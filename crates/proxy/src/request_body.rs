//! The request body on its way upstream: the idle timeout and size cap every body gets, the
//! scan of the part past the scan window (placeholders, trailers), and the bookkeeping that
//! lets the request path say why a body was cut.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use credproxy_scrub::{PlaceholderSet, StreamReplacer, StreamScanner};
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::body::{Body, BoxError};

/// Why a request body stream was cut, set by the wrappers below and read by the request path
/// when the body (or the upstream request carrying it) fails.
#[derive(Debug, Default)]
pub(crate) struct BodyFlags {
    /// A placeholder or near miss past the scan window (or in a trailer).
    pub late: AtomicBool,
    /// Nothing arrived for `limits.body_idle_timeout`.
    pub timed_out: AtomicBool,
    /// More than `limits.max_injected_body_bytes`.
    pub too_large: AtomicBool,
}

/// An error a body wrapper ends the stream with; the flags say which.
#[derive(Debug)]
pub(crate) struct BodyCut(&'static str);

impl std::fmt::Display for BodyCut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for BodyCut {}

pin_project_lite::pin_project! {
    /// Every request body: fails when no frame arrives for `idle`, and (with `cap`) when it
    /// grows past `cap` bytes.
    pub(crate) struct Guarded {
        #[pin]
        inner: Body,
        idle: Duration,
        sleep: Pin<Box<tokio::time::Sleep>>,
        cap: Option<u64>,
        seen: u64,
        flags: Arc<BodyFlags>,
    }
}

impl Guarded {
    pub fn boxed(inner: Body, idle: Duration, cap: Option<u64>, flags: Arc<BodyFlags>) -> Body {
        Guarded {
            inner,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            cap,
            seen: 0,
            flags,
        }
        .boxed()
    }
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    *this.seen += d.len() as u64;
                    if this.cap.is_some_and(|cap| *this.seen > cap) {
                        this.flags.too_large.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(Box::new(BodyCut(
                            "request body over the size limit",
                        )))));
                    }
                    // Only bytes count as progress: a stream of empty DATA frames is a stall.
                    if !d.is_empty() {
                        let deadline = tokio::time::Instant::now() + *this.idle;
                        this.sleep.as_mut().reset(deadline);
                    }
                } else {
                    let deadline = tokio::time::Instant::now() + *this.idle;
                    this.sleep.as_mut().reset(deadline);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.flags.timed_out.store(true, Ordering::Release);
                    Poll::Ready(Some(Err(Box::new(BodyCut("request body stalled")))))
                }
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a trailer section carries a placeholder or near miss (trailers are never an
/// injection location, so any finding there is misuse).
pub(crate) fn trailers_have_placeholders(set: &PlaceholderSet, trailers: &HeaderMap) -> bool {
    trailers.iter().any(|(_, v)| {
        !set.scan(v.as_bytes()).is_empty()
            || credproxy_scrub::decode_basic(v.as_bytes()).is_some_and(|d| !set.scan(&d).is_empty())
    })
}

pin_project_lite::pin_project! {
    /// The part of a request body past the scan window: placeholders of credentials approved
    /// for body injection are replaced as they stream; any other placeholder or near miss, or
    /// any placeholder in the trailers, cuts the stream (the upstream sees an aborted request,
    /// never the placeholder's misuse completed).
    pub(crate) struct RequestTail {
        #[pin]
        inner: Body,
        set: PlaceholderSet,
        scanner: StreamScanner,
        approved_body: Vec<bool>,
        replacer: Option<StreamReplacer>,
        flags: Arc<BodyFlags>,
        // Trailers held while the replacer's tail is flushed before them.
        trailers: Option<HeaderMap>,
        done: bool,
    }
}

impl RequestTail {
    pub fn boxed(
        inner: Body,
        set: &PlaceholderSet,
        approved_body: Vec<bool>,
        replacer: Option<StreamReplacer>,
        flags: Arc<BodyFlags>,
    ) -> Body {
        RequestTail {
            inner,
            set: set.clone(),
            scanner: set.stream_scanner(),
            approved_body,
            replacer,
            flags,
            trailers: None,
            done: false,
        }
        .boxed()
    }
}

fn misuse(f: &credproxy_scrub::Findings, approved: &[bool]) -> bool {
    !f.near_misses.is_empty()
        || f.exact
            .iter()
            .any(|u| !approved.get(u.credential).copied().unwrap_or(false))
}

impl HttpBody for RequestTail {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let late = |flags: &BodyFlags| {
            flags.late.store(true, Ordering::Release);
            Poll::Ready(Some(Err(Box::new(BodyCut(
                "placeholder found past the request body scan window",
            )) as BoxError)))
        };
        loop {
            if *this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let f = this.scanner.push(&data);
                        if misuse(&f, this.approved_body) {
                            return late(this.flags);
                        }
                        let out = match this.replacer.as_mut() {
                            Some(r) => r.push(&data),
                            None => data.to_vec(),
                        };
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            if trailers_have_placeholders(this.set, &t) {
                                return late(this.flags);
                            }
                            // Trailers end the body: finish the data first, then send them.
                            *this.trailers = Some(t);
                        }
                    }
                },
                Poll::Ready(None) => {}
            }
            // End of the data (the stream ended, or trailers came).
            *this.done = true;
            let f = this.scanner.finish();
            if misuse(&f, this.approved_body) {
                return late(this.flags);
            }
            if let Some(r) = this.replacer.as_mut() {
                let rest = r.finish();
                if !rest.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A body that keeps `hold` (a permit, a counted slot) alive until it ends or is dropped.
    pub(crate) struct Holding<H> {
        #[pin]
        inner: Body,
        hold: Option<H>,
    }
}

impl<H: Send + Sync + 'static> Holding<H> {
    pub fn boxed(inner: Body, hold: H) -> Body {
        Holding {
            inner,
            hold: Some(hold),
        }
        .boxed()
    }
}

impl<H> HttpBody for Holding<H> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.hold.take();
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
