//! Helpers for the response-side tests: one credential, clients that see exactly what an agent
//! receives (HTTP/2 frames with their errors, raw HTTP/1.1 bytes), and the canary check.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use credproxy_harness::{Harness, Setup, HOST, ROLE};

pub const SECRET: &str = "sk-live-RESPCANARY-5e6f7a8b9c0d1e2f3a";
pub const PH: &str = "agent-vault-aaaaaaaa-2222-3333-4444-555555555555";

/// The credential `key`: an api_key in `x-api-key`, bound to HOST, its value from
/// `env: SECRET_KEY` (= SECRET).
pub fn credential(id: &str, ph: &str, bound: &str, source: &str) -> String {
    format!(
        "  - id: {id}\n    placeholder: {ph}\n    type: api_key\n    bound_domains: [{bound}]\n    allowed_roles: [{ROLE}]\n    source: {source}\n"
    )
}

pub fn setup() -> Setup {
    Setup {
        credentials: credential("key", PH, HOST, "{env: SECRET_KEY}"),
        env: vec![("SECRET_KEY".into(), SECRET.into())],
        ..Setup::default()
    }
}

/// A response as the agent received it. `error` is set when the body ended in an error
/// (a reset stream), after the bytes in `body`.
#[derive(Debug)]
pub struct Fetched {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
    pub trailers: String,
    pub error: Option<String>,
}

impl Fetched {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// GET `path` on HOST over HTTP/2 in a fresh tunnel through the harness's proxy.
pub async fn fetch(h: &Harness, path: &str, headers: &[(&str, &str)]) -> Fetched {
    fetch_at(
        h.addr(),
        &h.bearer,
        h.proxy_client_config(&["h2"]),
        HOST,
        "GET",
        path,
        headers,
    )
    .await
}

/// `method path` on `host` over HTTP/2 through the proxy at `addr`.
pub async fn fetch_at(
    addr: SocketAddr,
    bearer: &str,
    tls: Arc<rustls::ClientConfig>,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Fetched {
    let (tcp, status, head) = credproxy_testkit::connect_tunnel(
        addr,
        &format!("{host}:443"),
        &[("Proxy-Authorization", bearer)],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&head));
    let tls = credproxy_testkit::tls_over(tcp, host, tls).await;
    let mut send = credproxy_testkit::http2_handshake::<_, http_body_util::Full<bytes::Bytes>>(tls)
        .await
        .unwrap();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("https://{host}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = match send
        .send_request(
            req.body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
    {
        Ok(r) => r,
        // The stream was reset before its head arrived.
        Err(e) => {
            return Fetched {
                status: 0,
                head: String::new(),
                body: Vec::new(),
                trailers: String::new(),
                error: Some(e.to_string()),
            }
        }
    };
    let status = resp.status().as_u16();
    let head: String = resp
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    let mut body = resp.into_body();
    let mut data = Vec::new();
    let mut trailers = String::new();
    let mut error = None;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(120), body.frame())
        .await
        .expect("the response body stalled")
    {
        match frame {
            Ok(frame) => {
                if let Some(d) = frame.data_ref() {
                    data.extend_from_slice(d);
                } else if let Some(t) = frame.trailers_ref() {
                    for (k, v) in t {
                        trailers
                            .push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
                    }
                }
            }
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    Fetched {
        status,
        head,
        body: data,
        trailers,
        error,
    }
}

/// Send `request` (a complete HTTP/1.1 request head, `\r\n`-terminated lines, without the
/// final empty line) on a fresh TLS tunnel to `host` negotiated as http/1.1, and return every
/// byte the proxy sends back until it closes or `until` is seen.
pub async fn raw_h1(h: &Harness, host: &str, request: &str, until: Option<&[u8]>) -> Vec<u8> {
    let (tcp, status, _) =
        credproxy_testkit::connect_tunnel(h.addr(), &format!("{host}:443"), &h.auth_pairs())
            .await
            .unwrap();
    assert_eq!(status, 200);
    let mut tls =
        credproxy_testkit::tls_over(tcp, host, h.proxy_client_config(&["http/1.1"])).await;
    tls.write_all(format!("{request}\r\n").as_bytes())
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(u) = until {
            if memchr::memmem::find(&out, u).is_some() {
                break;
            }
        }
        let n = match tokio::time::timeout(Duration::from_secs(60), tls.read(&mut buf))
            .await
            .expect("the proxy stalled")
        {
            Ok(n) => n,
            Err(_) => break,
        };
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// No rendering of `secret` in `bytes`.
pub fn assert_clean(what: &str, bytes: &[u8], secret: &str) {
    if let Some(form) = credproxy_testkit::contains_any_rendering(bytes, secret.as_bytes()) {
        panic!(
            "{what}: the secret reached the agent as {form}:\n{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// Decode a body in `encoding` as far as it decodes (what an agent could do with bytes it
/// received under a label the proxy did not understand).
pub fn decode_lossy(encoding: &str, body: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    let _ = match encoding {
        "gzip" => flate2::read::GzDecoder::new(body).read_to_end(&mut out),
        "deflate" => flate2::read::ZlibDecoder::new(body).read_to_end(&mut out),
        _ => Ok(0),
    };
    out
}
