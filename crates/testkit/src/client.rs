//! Thin hyper client helpers: run a handshake over any IO and drive the
//! connection in a background task.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Body;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

/// HTTP/1.1 client handshake over `io` (upgrades enabled, so a `101`
/// response can be followed by `hyper::upgrade::on`). The connection task is
/// spawned and ends when the `SendRequest` is dropped or the peer closes.
pub async fn http1_handshake<S, B>(io: S) -> hyper::Result<http1::SendRequest<B>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("testkit http1 client connection ended: {e}");
        }
    });
    Ok(sender)
}

/// HTTP/2 client handshake over `io` (prior knowledge, or after ALPN `h2`).
/// hyper requires an `Unpin` body here (`Box::pin` a stream body).
pub async fn http2_handshake<S, B>(io: S) -> hyper::Result<http2::SendRequest<B>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("testkit http2 client connection ended: {e}");
        }
    });
    Ok(sender)
}

/// Collect a whole body into memory (data only; trailers are dropped).
pub async fn collect_body<B>(body: B) -> Result<Bytes, B::Error>
where
    B: Body,
{
    Ok(body.collect().await?.to_bytes())
}
