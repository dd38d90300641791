//! Per-connection deadlines: a header-read timeout (slowloris) and an idle timeout.
//!
//! hyper's own `header_read_timeout` also fires while a keep-alive connection merely waits
//! for its next request, which would cut every idle connection at the header timeout. So the
//! accepted stream is wrapped once in [`TimedIo`], and the request path tells the shared
//! [`ConnClock`] when requests start and end:
//! - no request in flight and no bytes since the last one: the idle deadline applies;
//! - the first byte of a new request arms the header deadline;
//! - while any request is in flight no deadline applies (upstream timeouts govern).
//!
//! The wrapper sits under the TLS layer and under hyper's upgrade, so one clock covers the
//! outer proxy connection and everything tunnelled through it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const IDLE: u64 = 0;
const HEAD: u64 = 1;

/// Shared between a connection's stream wrapper and its request handlers.
#[derive(Debug)]
pub struct ConnClock {
    base: Instant,
    in_flight: AtomicUsize,
    /// IDLE or HEAD.
    phase: AtomicU64,
    /// Milliseconds since `base` at which the current phase expires.
    deadline_ms: AtomicU64,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl ConnClock {
    pub fn new(header_timeout: Duration, idle_timeout: Duration) -> Arc<ConnClock> {
        let base = Instant::now();
        // A new connection must send its first request head within the header timeout.
        Arc::new(ConnClock {
            base,
            in_flight: AtomicUsize::new(0),
            phase: AtomicU64::new(HEAD),
            deadline_ms: AtomicU64::new(header_timeout.as_millis() as u64),
            header_timeout,
            idle_timeout,
        })
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// A request has been parsed and is being handled; the returned guard ends it.
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            clock: self.clone(),
        }
    }

    fn request_ended(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.phase.store(IDLE, Ordering::Release);
            self.deadline_ms.store(
                self.now_ms() + self.idle_timeout.as_millis() as u64,
                Ordering::Release,
            );
        }
    }

    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self
                .phase
                .compare_exchange(IDLE, HEAD, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.deadline_ms.store(
                self.now_ms() + self.header_timeout.as_millis() as u64,
                Ordering::Release,
            );
        }
    }

    /// The deadline in force, or None while requests are in flight.
    fn deadline(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.deadline_ms.load(Ordering::Acquire);
        Some(self.base + Duration::from_millis(ms))
    }

    fn timeout_kind(&self) -> &'static str {
        if self.phase.load(Ordering::Acquire) == HEAD {
            "header read timeout"
        } else {
            "idle timeout"
        }
    }
}

/// Marks one request in flight until dropped.
#[derive(Debug)]
pub struct InFlight {
    clock: Arc<ConnClock>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.clock.request_ended();
    }
}

pin_project_lite::pin_project! {
    /// A stream that fails reads with `TimedOut` once the clock's deadline passes.
    pub struct TimedIo<S> {
        #[pin]
        inner: S,
        clock: Arc<ConnClock>,
        sleep: Pin<Box<Sleep>>,
        armed: Option<Instant>,
    }
}

impl<S> TimedIo<S> {
    pub fn new(inner: S, clock: Arc<ConnClock>) -> TimedIo<S> {
        TimedIo {
            inner,
            clock,
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            armed: None,
        }
    }
}

impl<S: AsyncRead> AsyncRead for TimedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        match this.inner.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.clock.bytes_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(deadline) = this.clock.deadline() else {
                    return Poll::Pending;
                };
                if *this.armed != Some(deadline) {
                    this.sleep.as_mut().reset(deadline);
                    *this.armed = Some(deadline);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        this.clock.timeout_kind(),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncWrite> AsyncWrite for TimedIo<S> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn header_deadline_then_idle_deadline() {
        let clock = ConnClock::new(Duration::from_secs(10), Duration::from_secs(90));
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = TimedIo::new(a, clock.clone());
        let mut buf = [0u8; 8];

        // A request arrives and is handled: no deadline while in flight.
        b.write_all(b"GET").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 3);
        let guard = clock.request_started();
        let r = tokio::time::timeout(Duration::from_secs(500), io.read(&mut buf)).await;
        assert!(
            r.is_err(),
            "no deadline may apply while a request is in flight"
        );
        drop(guard);

        // Idle: the idle deadline (90 s) applies, not the header one.
        let start = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed().as_secs(), 90);
    }

    #[tokio::test(start_paused = true)]
    async fn first_byte_of_a_request_arms_the_header_deadline() {
        let clock = ConnClock::new(Duration::from_secs(10), Duration::from_secs(90));
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = TimedIo::new(a, clock.clone());
        let mut buf = [0u8; 8];
        drop(clock.request_started()); // previous request finished: idle now
        tokio::time::advance(Duration::from_secs(50)).await;
        b.write_all(b"G").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        let start = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.to_string(), "header read timeout");
        assert_eq!(start.elapsed().as_secs(), 10);
    }
}
