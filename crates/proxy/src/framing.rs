//! The agent's HTTP/1 byte stream, followed by `credproxy_core::h1::RequestFraming` below
//! hyper's parser: at the first framing violation (A18) the stream ends for the parser, and
//! the violation is recorded for the request path to answer (400, connection closed).
//!
//! A request head is held back until it is complete, so the parser only ever sees whole
//! heads of at most `limits.max_header_bytes`. A head that grows past the limit is dropped
//! and the parser is handed a stand-in head instead ([`STAND_IN`]): the request path sees
//! the recorded violation first and answers 431 through the one answer path (reason label,
//! body, metrics and audit like every refusal), where hyper would otherwise answer a bare 431
//! of its own.
//!
//! After a bad request head the parser gets no more bytes but no end of stream either (hyper
//! would drop the connection, and the answer, on an early end of stream); later bytes are
//! read and discarded until the answer with `Connection: close` ends the connection. After
//! bad body framing the parser sees the end of the stream, which fails the body.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use credproxy_core::h1::{Feed, RequestFraming, Violation, HEAD_TOO_LARGE};
use credproxy_core::Reject;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the parser is handed in place of a head over the limit: the smallest request hyper
/// accepts. It is never forwarded: the request path answers the recorded violation first.
pub(crate) const STAND_IN: &[u8] = b"GET / HTTP/1.1\r\n\r\n";

/// The size of hyper's read buffer for a connection whose heads are at most `max_head`
/// bytes: larger than any head [`Framed`] passes on, so hyper never refuses one itself.
pub(crate) fn parser_buf_size(max_head: usize) -> usize {
    max_head + 8192
}

/// The first framing violation on a connection, shared with its request handlers.
#[derive(Debug, Default)]
pub(crate) struct FramingFlag(OnceLock<Violation>);

impl FramingFlag {
    pub fn get(&self) -> Option<Violation> {
        self.0.get().copied()
    }

    /// The refusal for the recorded violation, if any: 431 for a head over the limit, 400
    /// for the rest.
    pub fn reject(&self) -> Option<Reject> {
        self.get().map(|v| {
            if v == HEAD_TOO_LARGE {
                Reject::HeadersTooLarge
            } else {
                Reject::Framing {
                    what: v.to_string(),
                }
            }
        })
    }
}

pin_project_lite::pin_project! {
    pub(crate) struct Framed<S> {
        #[pin]
        inner: S,
        framing: RequestFraming,
        flag: Arc<FramingFlag>,
        // Bytes read from the agent and not yet handed to the parser: the first `release`
        // may go now, the rest are the start of a head still being read.
        held: Vec<u8>,
        release: usize,
        ended: bool,
        // After a bad head: discard, never end.
        discard: bool,
    }
}

impl<S> Framed<S> {
    /// `max_head`: `limits.max_header_bytes`, the longest request head passed on.
    pub fn new(inner: S, max_head: usize, flag: Arc<FramingFlag>) -> Framed<S> {
        Framed {
            inner,
            framing: RequestFraming::new(max_head),
            flag,
            held: Vec::new(),
            release: 0,
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
        loop {
            if *this.release > 0 {
                let n = (*this.release).min(buf.remaining());
                buf.put_slice(&this.held[..n]);
                this.held.drain(..n);
                *this.release -= n;
                return Poll::Ready(Ok(()));
            }
            if *this.discard {
                let mut scratch = [0u8; 4096];
                loop {
                    let mut sink = ReadBuf::new(&mut scratch);
                    match this.inner.as_mut().poll_read(cx, &mut sink) {
                        Poll::Ready(Ok(())) if sink.filled().is_empty() => {
                            return Poll::Ready(Ok(()))
                        }
                        Poll::Ready(Ok(())) => continue,
                        other => return other,
                    }
                }
            }
            if *this.ended {
                return Poll::Ready(Ok(()));
            }
            // Read straight into the parser's buffer; bytes that must wait are moved out.
            let before = buf.filled().len();
            ready!(this.inner.as_mut().poll_read(cx, buf))?;
            let read = buf.filled().len() - before;
            if read == 0 {
                // The agent's end: whatever is held (an incomplete head) goes, then the end.
                *this.ended = true;
                *this.release = this.held.len();
                continue;
            }
            match this.framing.feed(&buf.filled()[before..]) {
                Feed::Pass => {
                    let pending = this.framing.head_buffered();
                    if this.held.is_empty() && pending == 0 {
                        // The common case: nothing held, nothing to hold.
                        return Poll::Ready(Ok(()));
                    }
                    this.held.extend_from_slice(&buf.filled()[before..]);
                    buf.set_filled(before);
                    *this.release = this.held.len() - pending;
                }
                Feed::Stop {
                    deliver,
                    violation,
                    in_head,
                } => {
                    let _ = this.flag.0.set(violation);
                    tracing::warn!(violation, "request framing refused; closing the connection");
                    this.held
                        .extend_from_slice(&buf.filled()[before..before + deliver]);
                    buf.set_filled(before);
                    if violation == HEAD_TOO_LARGE {
                        // Drop the refused head; the parser reads the stand-in.
                        let keep = this.held.len().saturating_sub(this.framing.max_head() + 1);
                        this.held.truncate(keep);
                        this.held.extend_from_slice(STAND_IN);
                    }
                    *this.release = this.held.len();
                    if in_head {
                        *this.discard = true;
                    } else {
                        *this.ended = true;
                    }
                }
            }
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tokio::io::AsyncReadExt;

    use super::*;

    /// The agent's side: each piece is returned by its own read, then the end of stream.
    struct Pieces(VecDeque<Vec<u8>>);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(p) = self.0.pop_front() {
                let n = p.len().min(buf.remaining());
                buf.put_slice(&p[..n]);
                if n < p.len() {
                    self.0.push_front(p[n..].to_vec());
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// What the parser reads, read by read, until the end of the stream.
    async fn parser_reads(pieces: &[&[u8]], max_head: usize) -> (Vec<Vec<u8>>, Arc<FramingFlag>) {
        let flag = Arc::new(FramingFlag::default());
        let mut f = Framed::new(
            Pieces(pieces.iter().map(|p| p.to_vec()).collect()),
            max_head,
            flag.clone(),
        );
        let mut reads = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = f.read(&mut buf).await.unwrap();
            if n == 0 {
                return (reads, flag);
            }
            reads.push(buf[..n].to_vec());
        }
    }

    #[tokio::test]
    async fn a_head_reaches_the_parser_only_once_complete_and_nothing_is_lost() {
        let head = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n";
        let (a, b) = head.split_at(10);
        let (b, c) = b.split_at(20);
        let next = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        // The head in three reads, its body with the start of a second head, the rest.
        let body_and_start = [b"hello".as_slice(), &next[..7]].concat();
        let (reads, flag) = parser_reads(&[a, b, c, &body_and_start, &next[7..]], 1024).await;
        assert_eq!(flag.get(), None);
        // First whole head, then the body (the second head's start held back), then it.
        assert_eq!(reads[0], head.to_vec(), "{reads:?}");
        assert_eq!(reads[1], b"hello".to_vec(), "{reads:?}");
        assert_eq!(reads[2], next.to_vec(), "{reads:?}");
        assert_eq!(reads.len(), 3);
    }

    #[tokio::test]
    async fn a_head_over_the_limit_becomes_the_stand_in_and_is_never_passed_on() {
        let first = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let big = format!("GET /b HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(300));
        let (p1, p2) = big.as_bytes().split_at(150);
        let flag = Arc::new(FramingFlag::default());
        let mut f = Framed::new(
            Pieces(
                [
                    first.to_vec(),
                    p1.to_vec(),
                    p2.to_vec(),
                    b"GET /c HTTP/1.1\r\n\r\n".to_vec(),
                ]
                .into(),
            ),
            200,
            flag.clone(),
        );
        let mut buf = vec![0u8; 64 * 1024];
        let n = f.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], first);
        let n = f.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], STAND_IN);
        assert_eq!(flag.get(), Some(HEAD_TOO_LARGE));
        assert_eq!(flag.reject(), Some(Reject::HeadersTooLarge));
        // Nothing the agent sends after it reaches the parser (the request after the big
        // head is discarded; here the agent's stream then ends).
        assert_eq!(f.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn an_end_of_stream_mid_head_hands_over_what_was_held() {
        let (reads, flag) = parser_reads(&[b"GET /a HTT", b"P/1.1\r\nHo"], 1024).await;
        assert_eq!(flag.get(), None);
        assert_eq!(reads.concat(), b"GET /a HTTP/1.1\r\nHo".to_vec());
    }
}
