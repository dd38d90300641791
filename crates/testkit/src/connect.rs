//! A tiny HTTP `CONNECT` client and TLS-over-stream helper for proxy tests.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_HEAD: usize = 64 * 1024;

/// Open a TCP connection to `proxy` and send
/// `CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{name: value\r\n}*\r\n`.
///
/// Returns the stream, the response status and bytes read from the proxy:
/// the response head (status line + headers + blank line) always; for a
/// non-2xx status also the body, read by `Content-Length` if present, or to
/// EOF if the response says `Connection: close` (otherwise no body is read).
///
/// The head is read byte by byte so that no byte after it is consumed: on a
/// 2xx the returned stream is positioned exactly at the start of the tunnel.
pub async fn connect_tunnel(
    proxy: SocketAddr,
    authority: &str,
    extra_headers: &[(&str, &str)],
) -> Result<(TcpStream, StatusCode, Vec<u8>), io::Error> {
    let mut stream = TcpStream::connect(proxy).await?;
    stream.set_nodelay(true)?;
    let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    for (k, v) in extra_headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await?;
    stream.flush().await?;

    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "CONNECT response head too large",
            ));
        }
        if stream.read(&mut byte).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "proxy closed connection during CONNECT response head: {:?}",
                    String::from_utf8_lossy(&head)
                ),
            ));
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad CONNECT status line: {status_line:?}"),
            )
        })?;
    let mut content_length = None;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse::<u64>().ok();
        } else if name.eq_ignore_ascii_case("connection") {
            close = value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"));
        }
    }
    let mut out = head;
    if !status.is_success() {
        if let Some(n) = content_length {
            let mut body = vec![0u8; n as usize];
            stream.read_exact(&mut body).await?;
            out.extend_from_slice(&body);
        } else if close {
            stream.read_to_end(&mut out).await?;
        }
    }
    Ok((stream, status, out))
}

/// TLS client handshake over `stream` (e.g. a CONNECT tunnel), verifying
/// `server_name` (DNS name or IP literal). Panics if the handshake fails; see
/// [`try_tls_over`] for the fallible variant.
pub async fn tls_over<S>(
    stream: S,
    server_name: &str,
    client_config: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    try_tls_over(stream, server_name, client_config)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with {server_name} failed: {e}"))
}

/// Fallible [`tls_over`]: a certificate verification failure is returned as
/// an `io::Error` whose inner error is the `rustls::Error`.
pub async fn try_tls_over<S>(
    stream: S,
    server_name: &str,
    client_config: Arc<rustls::ClientConfig>,
) -> io::Result<tokio_rustls::client::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(client_config)
        .connect(name, stream)
        .await
}
