//! The agent's HTTP/1 byte stream, followed by `credproxy_core::h1::RequestFraming` below
//! hyper's parser: at the first framing violation (A18) the stream ends for the parser, and
//! the violation is recorded for the request path to answer (400, connection closed).
//!
//! After a bad request head the parser gets no more bytes but no end of stream either (hyper
//! would drop the connection, and the 400, on an early end of stream); later bytes are read
//! and discarded until the 400 with `Connection: close` ends the connection. After bad body
//! framing the parser sees the end of the stream, which fails the body.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use credproxy_core::h1::{Feed, RequestFraming, Violation};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The first framing violation on a connection, shared with its request handlers.
#[derive(Debug, Default)]
pub(crate) struct FramingFlag(OnceLock<Violation>);

impl FramingFlag {
    pub fn get(&self) -> Option<Violation> {
        self.0.get().copied()
    }
}

pin_project_lite::pin_project! {
    pub(crate) struct Framed<S> {
        #[pin]
        inner: S,
        framing: RequestFraming,
        flag: Arc<FramingFlag>,
        ended: bool,
        // After a bad head: discard, never end.
        discard: bool,
    }
}

impl<S> Framed<S> {
    pub fn new(inner: S, max_head: usize, flag: Arc<FramingFlag>) -> Framed<S> {
        Framed {
            inner,
            // Above hyper's own limit, so oversized heads still get hyper's 431.
            framing: RequestFraming::new(max_head + 1024),
            flag,
            ended: false,
            discard: false,
        }
    }
}

impl<S: AsyncRead> AsyncRead for Framed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if *this.discard {
            let mut scratch = [0u8; 4096];
            loop {
                let mut sink = ReadBuf::new(&mut scratch);
                match this.inner.as_mut().poll_read(cx, &mut sink) {
                    Poll::Ready(Ok(())) if sink.filled().is_empty() => return Poll::Ready(Ok(())),
                    Poll::Ready(Ok(())) => continue,
                    other => return other,
                }
            }
        }
        if *this.ended {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match this.inner.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if let Feed::Stop {
                    deliver,
                    violation,
                    in_head,
                } = this.framing.feed(new)
                {
                    let _ = this.flag.0.set(violation);
                    tracing::warn!(violation, "request framing refused; closing the connection");
                    buf.set_filled(before + deliver);
                    if in_head {
                        *this.discard = true;
                        if deliver == 0 {
                            // Nothing to hand over: wait (discarding) for the 400 to end it.
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                    } else {
                        *this.ended = true;
                    }
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite> AsyncWrite for Framed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
