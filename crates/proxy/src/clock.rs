//! Per-connection deadlines: a header-read timeout (slowloris) and an idle timeout.
//!
//! hyper's own `header_read_timeout` also fires while a keep-alive connection merely waits
//! for its next request, which would cut every idle connection at the header timeout. So the
//! accepted stream is wrapped once in [`TimedIo`], and the request path tells the shared
//! [`ConnClock`] when requests start and end:
//! - no request in flight and no bytes since the last one: the idle deadline applies;
//! - the first byte of a new request arms the header deadline;
//! - while any request is in flight no deadline applies (upstream timeouts govern), except
//!   when a response has been waiting on the agent (data ready, the agent not reading, or an
//!   HTTP/2 flow-control window held at zero) for the idle timeout: slow reads and
//!   zero-window stalls end the connection (A15, A17).
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
    /// Responses whose next bytes wait on the agent (see [`InFlight::ready`]).
    agent_waits: AtomicUsize,
    /// Milliseconds since `base` when `agent_waits` last became non-zero.
    agent_wait_since_ms: AtomicU64,
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
            agent_waits: AtomicUsize::new(0),
            agent_wait_since_ms: AtomicU64::new(0),
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
            waiting: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn agent_wait_started(&self) {
        if self.agent_waits.fetch_add(1, Ordering::AcqRel) == 0 {
            self.agent_wait_since_ms
                .store(self.now_ms(), Ordering::Release);
        }
    }

    fn agent_wait_ended(&self) {
        self.agent_waits.fetch_sub(1, Ordering::AcqRel);
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

    /// The deadline in force: none while requests are in flight, unless a response has
    /// been waiting on the agent.
    fn deadline(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            if self.agent_waits.load(Ordering::Acquire) == 0 {
                return None;
            }
            let since = self.agent_wait_since_ms.load(Ordering::Acquire);
            return Some(self.base + Duration::from_millis(since) + self.idle_timeout);
        }
        let ms = self.deadline_ms.load(Ordering::Acquire);
        Some(self.base + Duration::from_millis(ms))
    }

    fn timeout_kind(&self) -> &'static str {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            "response stalled: the agent is not reading"
        } else if self.phase.load(Ordering::Acquire) == HEAD {
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
    /// The response's next bytes wait on the agent.
    waiting: std::sync::atomic::AtomicBool,
}

impl InFlight {
    /// The response has bytes ready (or is about to be handed to the agent's connection):
    /// until it is asked for more ([`InFlight::asked`]), it waits on the agent.
    pub fn ready(&self) {
        if !self.waiting.swap(true, Ordering::AcqRel) {
            self.clock.agent_wait_started();
        }
    }

    /// The agent's connection asked the response for more bytes.
    pub fn asked(&self) {
        if self.waiting.swap(false, Ordering::AcqRel) {
            self.clock.agent_wait_ended();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.asked();
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
        // The pending-write deadline (a separate timer: read and write wake different tasks).
        wsleep: Pin<Box<Sleep>>,
        armed: Option<Instant>,
    }
}

impl<S> TimedIo<S> {
    pub fn new(inner: S, clock: Arc<ConnClock>) -> TimedIo<S> {
        TimedIo {
            inner,
            clock,
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            wsleep: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
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

impl<S> TimedIo<S> {
    /// A write that cannot proceed: fail it once a stalled response's deadline passed (the
    /// agent stopped reading).
    fn write_stalled<T>(
        sleep: &mut Pin<Box<Sleep>>,
        clock: &ConnClock,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        if clock.in_flight.load(Ordering::Acquire) == 0 {
            return Poll::Pending;
        }
        let Some(deadline) = clock.deadline() else {
            return Poll::Pending;
        };
        // The read side owns `sleep`'s arming; a pending write checks the deadline directly.
        if Instant::now() >= deadline {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                clock.timeout_kind(),
            )));
        }
        sleep.as_mut().reset(deadline);
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                clock.timeout_kind(),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite> AsyncWrite for TimedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        match this.inner.poll_write(cx, buf) {
            Poll::Pending => Self::write_stalled(this.wsleep, this.clock, cx),
            r => r,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        match this.inner.poll_write_vectored(cx, bufs) {
            Poll::Pending => Self::write_stalled(this.wsleep, this.clock, cx),
            r => r,
        }
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

    #[tokio::test(start_paused = true)]
    async fn a_response_waiting_on_the_agent_gets_the_idle_deadline() {
        let clock = ConnClock::new(Duration::from_secs(10), Duration::from_secs(90));
        let (a, _b) = tokio::io::duplex(64);
        let mut io = TimedIo::new(a, clock.clone());
        let mut buf = [0u8; 8];
        let guard = clock.request_started();
        // Waiting on the upstream: no deadline.
        let r = tokio::time::timeout(Duration::from_secs(500), io.read(&mut buf)).await;
        assert!(
            r.is_err(),
            "no deadline while the response waits on the upstream"
        );
        // Bytes ready, the agent never asks for them (zero window, or not reading).
        guard.ready();
        let start = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed().as_secs(), 90);
        assert!(err.to_string().contains("not reading"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_agent_never_reads_fails_at_the_idle_deadline() {
        use tokio::io::AsyncWriteExt;
        let clock = ConnClock::new(Duration::from_secs(10), Duration::from_secs(90));
        let (a, _b) = tokio::io::duplex(16);
        let mut io = TimedIo::new(a, clock.clone());
        let guard = clock.request_started();
        guard.ready();
        let start = Instant::now();
        let err = io.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed().as_secs(), 90);
        drop(guard);
    }
}
