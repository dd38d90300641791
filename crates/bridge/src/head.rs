//! Adding the agent's token to the request head of a proxy request.
//!
//! Only the head of the first request on a connection is read. A `CONNECT` turns the
//! connection into a tunnel (TLS inside), so one head is all there is. An absolute-form
//! request (`GET http://host/…`) could be followed by more requests on the same connection;
//! rather than parse every later head, the bridge forwards it with `Connection: close`, so the
//! proxy closes the connection after the response and the client opens a new one (through
//! the bridge, with the token) for its next request. An `Upgrade` request keeps its
//! `Connection` header: after a 101 the connection is a byte stream anyway.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest request head read (the proxy's own default limit).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header lines in a head.
const MAX_HEADERS: usize = 128;

/// Why a head could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("request head larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("malformed request head")]
    Malformed,
    #[error("connection closed before a complete request head")]
    Eof,
    #[error("reading the request head")]
    Io(#[from] std::io::Error),
}

/// What to do with a head.
#[derive(Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// A proxy request: forward these bytes instead of the head.
    Proxy(Vec<u8>),
    /// Not a proxy request (origin-form, e.g. a health check): forward the head unchanged.
    Unchanged,
}

/// Read until a complete request head is in `buf`; returns its length. Bytes after the head
/// (a pipelined body, a TLS ClientHello sent early) stay in `buf`.
pub async fn read_head<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<usize, HeadError> {
    loop {
        if let Some(n) = complete_head_len(buf)? {
            return Ok(n);
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
        let want = (MAX_HEAD_BYTES - buf.len()).min(8192);
        let start = buf.len();
        buf.resize(start + want, 0);
        let n = r.read(&mut buf[start..]).await;
        buf.truncate(start + *n.as_ref().unwrap_or(&0));
        if n? == 0 {
            return Err(HeadError::Eof);
        }
    }
}

fn complete_head_len(buf: &[u8]) -> Result<Option<usize>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(_) => Err(HeadError::Malformed),
    }
}

/// Rewrite a complete head (`head` is exactly the head, blank line included) to carry
/// `Proxy-Authorization: Bearer <token>`, replacing any the client sent.
pub fn rewrite(head: &[u8], token: &str) -> Result<Rewrite, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) | Err(_) => return Err(HeadError::Malformed),
    }
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("");
    let connect = method.eq_ignore_ascii_case("CONNECT");
    let absolute = !connect && target.contains("://") && !target.starts_with('/');
    if !connect && !absolute {
        return Ok(Rewrite::Unchanged);
    }
    let upgrade = req
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("upgrade"));
    let close = absolute && !upgrade;
    // The request line exactly as sent.
    let line_end = head
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(HeadError::Malformed)?;
    let mut out = Vec::with_capacity(head.len() + token.len() + 64);
    out.extend_from_slice(&head[..=line_end]);
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("proxy-authorization")
            || (close
                && (name.eq_ignore_ascii_case("connection")
                    || name.eq_ignore_ascii_case("proxy-connection")))
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Proxy-Authorization: Bearer ");
    out.extend_from_slice(token.as_bytes());
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Rewrite::Proxy(out))
}

/// A short HTTP/1.1 error response from the bridge itself, with a one-line body an agent can
/// act on.
pub fn error_response(status: u16, reason: &str, message: &str) -> Vec<u8> {
    let body = format!("credproxy bridge: {message}\n");
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\nx-credproxy-bridge: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: Rewrite) -> String {
        match r {
            Rewrite::Proxy(b) => String::from_utf8(b).unwrap(),
            Rewrite::Unchanged => "<unchanged>".into(),
        }
    }

    #[test]
    fn connect_gets_the_token_and_loses_the_clients() {
        let head = b"CONNECT api.anthropic.com:443 HTTP/1.1\r\nHost: api.anthropic.com:443\r\nproxy-authorization: Basic eDp5\r\nUser-Agent: t\r\n\r\n";
        assert_eq!(
            text(rewrite(head, "tok").unwrap()),
            "CONNECT api.anthropic.com:443 HTTP/1.1\r\nHost: api.anthropic.com:443\r\nUser-Agent: t\r\nProxy-Authorization: Bearer tok\r\n\r\n"
        );
    }

    #[test]
    fn absolute_form_gets_the_token_and_connection_close() {
        let head = b"GET http://plain.example/x HTTP/1.1\r\nHost: plain.example\r\nProxy-Connection: keep-alive\r\nConnection: keep-alive\r\n\r\n";
        assert_eq!(
            text(rewrite(head, "tok").unwrap()),
            "GET http://plain.example/x HTTP/1.1\r\nHost: plain.example\r\nProxy-Authorization: Bearer tok\r\nConnection: close\r\n\r\n"
        );
        let ws = b"GET http://plain.example/ws HTTP/1.1\r\nHost: plain.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let out = text(rewrite(ws, "tok").unwrap());
        assert!(
            out.contains("Connection: Upgrade\r\n") && !out.contains("close"),
            "{out}"
        );
    }

    #[test]
    fn origin_form_is_left_alone_and_garbage_is_refused() {
        assert_eq!(
            rewrite(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "t").unwrap(),
            Rewrite::Unchanged
        );
        assert!(rewrite(b"\x16\x03\x01\x02\x00\r\n\r\n", "t").is_err());
    }

    #[tokio::test]
    async fn reads_exactly_one_head_and_keeps_what_follows() {
        let data = b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n\x16\x03\x01early".to_vec();
        let (mut a, mut b) = tokio::io::duplex(7);
        let w = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for c in data.chunks(5) {
                b.write_all(c).await.unwrap();
            }
            b
        });
        let mut buf = Vec::new();
        let n = read_head(&mut a, &mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n");
        drop(w.await.unwrap());
        let mut rest = buf[n..].to_vec();
        a.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"\x16\x03\x01early");
    }

    #[tokio::test]
    async fn an_endless_head_is_cut_off() {
        let mut big = b"GET http://h/ HTTP/1.1\r\n".to_vec();
        while big.len() < MAX_HEAD_BYTES + 10 {
            big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let mut buf = Vec::new();
        let err = read_head(&mut &big[..], &mut buf).await.unwrap_err();
        assert!(matches!(err, HeadError::TooLarge), "{err}");
    }
}
