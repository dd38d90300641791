//! The request-side threat battery (docs/threat-model.md): Range reassembly (A6), slow and
//! oversized bodies and per-identity caps (A14, A15), HTTP/2 floods (A17), request smuggling
//! (A18), the agent's token and foreign credentials (A21, A27), another agent's placeholder
//! (A28), tunnels after a reload or a key withdrawal (A30), placeholder probing (A32) —
//! through the real proxy, with raw sockets and raw HTTP/2 frames as the attacker.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use credproxy_harness::{Harness, Setup, AGENT, HOST, OTHER, PLAIN, ROLE};
use credproxy_testkit::{connect_tunnel, tls_over, TestPki, Upstream, UpstreamOptions, Validity};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "sk-live-CANARY-threats-5e1f0a9b7c3d";
const PH: &str = "agent-vault-aaaaaaaa-2222-3333-4444-555555555555";
const PH_BODY: &str = "agent-vault-bbbbbbbb-2222-3333-4444-555555555555";
const PH_REPLACE: &str = "agent-vault-cccccccc-2222-3333-4444-555555555555";
const BODY_SECRET: &str = "tok-body-CANARY-threats-0b1d2f3e4a";
const REPLACE_SECRET: &str = "tok-replace-CANARY-threats-77aa11";

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("operation finished in time")
}

/// An api_key credential for HOST (refuses foreign values), a body-injecting one, and a
/// `foreign_value: replace` one in its own header.
fn creds() -> Setup {
    Setup {
        credentials: format!(
            "  - id: key\n    placeholder: {PH}\n    type: api_key\n    bound_domains: [{HOST}]\n    allowed_roles: [{ROLE}]\n    source: {{env: K}}\n\
             \x20 - id: body\n    placeholder: {PH_BODY}\n    type: header\n    header_name: x-body-key\n    inject_in: [body]\n    bound_domains: [{HOST}]\n    allowed_roles: [{ROLE}]\n    source: {{env: B}}\n\
             \x20 - id: replace\n    placeholder: {PH_REPLACE}\n    type: header\n    header_name: x-replace-key\n    foreign_value: replace\n    bound_domains: [{HOST}]\n    allowed_roles: [{ROLE}]\n    source: {{env: R}}\n"
        ),
        env: vec![
            ("K".into(), SECRET.into()),
            ("B".into(), BODY_SECRET.into()),
            ("R".into(), REPLACE_SECRET.into()),
        ],
        ..Setup::default()
    }
}

/// Read until the peer closes (or errors); everything read.
async fn read_to_close<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match within(s.read(&mut buf)).await {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// An open TLS tunnel to HOST with the given ALPN.
async fn tunnel(h: &Harness, alpn: &str) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let (tcp, status, _) = connect_tunnel(h.addr(), &format!("{HOST}:443"), &h.auth_pairs())
        .await
        .unwrap();
    assert_eq!(status, 200);
    tls_over(tcp, HOST, h.proxy_client_config(&[alpn])).await
}

async fn metrics(h: &Harness) -> String {
    let admin = h.proxy.admin_addr().unwrap();
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

// ---------------------------------------------------------------- A6: Range

/// A server that stores what it is sent and serves it back by range: `/save` keeps the value
/// of the `x-api-key` header it received (as a service that logs or stores a request's
/// credential would), `/load` returns it, honouring `Range: bytes=a-b`.
struct Store {
    addr: SocketAddr,
    seen_range: Arc<Mutex<Vec<String>>>,
}

async fn store(pki: &TestPki, names: &[&str]) -> Store {
    use hyper::service::service_fn;
    let cert = pki.issue(names, Validity::Valid);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cert.server_config(&["http/1.1"])));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stored: Arc<Mutex<Vec<u8>>> = Arc::default();
    let seen_range: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = seen_range.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let stored = stored.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let stored = stored.clone();
                    let seen = seen.clone();
                    async move {
                        let mut resp = http::Response::new(http_body_util::Full::new(Bytes::new()));
                        if req.uri().path() == "/save" {
                            if let Some(v) = req.headers().get("x-api-key") {
                                *stored.lock().unwrap() = v.as_bytes().to_vec();
                            }
                        } else {
                            let all = stored.lock().unwrap().clone();
                            let range = req
                                .headers()
                                .get(http::header::RANGE)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            if let Some(r) = &range {
                                seen.lock().unwrap().push(r.clone());
                            }
                            let piece = range
                                .as_deref()
                                .and_then(|r| r.strip_prefix("bytes="))
                                .and_then(|r| r.split_once('-'))
                                .map(|(a, b)| {
                                    let a: usize = a.parse().unwrap_or(0);
                                    let b: usize =
                                        b.parse().unwrap_or(all.len() - 1).min(all.len() - 1);
                                    all[a..=b].to_vec()
                                });
                            match piece {
                                Some(p) => {
                                    *resp.status_mut() = http::StatusCode::PARTIAL_CONTENT;
                                    *resp.body_mut() = http_body_util::Full::new(Bytes::from(p));
                                }
                                None => {
                                    *resp.body_mut() = http_body_util::Full::new(Bytes::from(all))
                                }
                            }
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Store { addr, seen_range }
}

#[tokio::test]
async fn range_requests_cannot_reassemble_a_stored_secret() {
    let pki = TestPki::new();
    let name = "store.example.test";
    let other = "objects.example.test";
    let st = store(&pki, &[name, other]).await;
    let mut s = creds();
    s.credentials = format!(
        "  - id: key\n    placeholder: {PH}\n    type: api_key\n    bound_domains: [{name}]\n    allowed_roles: [{ROLE}]\n    source: {{env: K}}\n"
    );
    let h = Harness::with(Setup {
        allow: vec![name.into(), other.into()],
        resolve: vec![(name.into(), st.addr), (other.into(), st.addr)],
        extra_ca: vec![pki.ca_cert_path().to_path_buf()],
        ..s
    })
    .await;
    // The upstream stores the injected secret.
    let c = h
        .get(format!("https://{name}/save"))
        .header("x-api-key", PH)
        .send()
        .await;
    assert_eq!(c.exit, 0, "{c}");
    // Two range requests, no placeholder: each half alone is too short to be recognised.
    let half = SECRET.len() / 2;
    let mut pieces = Vec::new();
    for range in [format!("0-{}", half - 1), format!("{half}-")] {
        let c = h
            .get(format!("https://{name}/load"))
            .header("Range", format!("bytes={range}"))
            .send()
            .await;
        assert_eq!(c.exit, 0, "{c}");
        pieces.push(c.text());
    }
    let joined = pieces.concat();
    assert!(
        !joined.contains(SECRET) && !pieces.iter().any(|p| p.contains(&SECRET[..half])),
        "the stored secret was reassembled from ranges: {pieces:?}"
    );
    // The range never reached the upstream; what came back was the whole (scrubbed) body.
    assert_eq!(pieces[0], PH, "{pieces:?}");
    // Nor on another host serving the same stored content.
    let c = h
        .get(format!("https://{other}/load"))
        .header("Range", "bytes=0-3")
        .send()
        .await;
    assert_eq!(c.exit, 0, "{c}");
    assert!(
        st.seen_range.lock().unwrap().is_empty(),
        "{:?}",
        st.seen_range
    );
}

// ---------------------------------------------------------------- A18: smuggling

/// The HTTP/1 smuggling corpus: each payload is refused (400, connection closed) and nothing
/// of it — in particular the request hidden behind it — reaches an upstream. Sent on the
/// proxy's own listener (absolute-form to the plain upstream) and inside a TLS tunnel.
#[tokio::test]
async fn smuggling_corpus_is_refused_and_nothing_reaches_the_upstream() {
    let h = Harness::start().await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: HOSTNAME\r\n\r\n";
    // (label, head lines after the request line, body)
    let cases: Vec<(&str, &str, &str)> = vec![
        (
            "CL.TE",
            "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\nG",
        ),
        (
            "TE.CL",
            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
            "8\r\nSMUGGLED\r\n0\r\n\r\n",
        ),
        (
            "duplicate CL",
            "Content-Length: 0\r\nContent-Length: 44\r\n",
            "",
        ),
        ("CL list", "Content-Length: 0, 44\r\n", ""),
        (
            "TE xchunked",
            "Transfer-Encoding: xchunked\r\n",
            "0\r\n\r\n",
        ),
        (
            "TE chunked, identity",
            "Transfer-Encoding: chunked, identity\r\n",
            "0\r\n\r\n",
        ),
        (
            "TE twice",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
            "0\r\n\r\n",
        ),
        (
            "TE space before colon",
            "Transfer-Encoding : chunked\r\n",
            "0\r\n\r\n",
        ),
        (
            "TE vertical tab",
            "Transfer-Encoding:\x0bchunked\r\n",
            "0\r\n\r\n",
        ),
        (
            "TE folded",
            "Transfer-Encoding:\r\n chunked\r\n",
            "0\r\n\r\n",
        ),
        ("TE bare LF", "Transfer-Encoding: chunked\n", "0\r\n\r\n"),
        ("bare LF head", "X-A: 1\n", ""),
        ("bare CR", "X-A: 1\rX-B: 2\r\n", ""),
        (
            "chunk size 0x",
            "Transfer-Encoding: chunked\r\n",
            "0x0\r\n\r\n",
        ),
        (
            "chunk size +",
            "Transfer-Encoding: chunked\r\n",
            "+0\r\n\r\n",
        ),
        (
            "chunk size _",
            "Transfer-Encoding: chunked\r\n",
            "0_0\r\n\r\n",
        ),
        (
            "chunk size space",
            "Transfer-Encoding: chunked\r\n",
            " 0\r\n\r\n",
        ),
        (
            "CR in chunk ext",
            "Transfer-Encoding: chunked\r\n",
            "0;a\rb\r\n\r\n",
        ),
        ("LF chunk line", "Transfer-Encoding: chunked\r\n", "0\n\r\n"),
        ("two Host", "Host: HOSTNAME\r\n", ""),
    ];
    let check = |label: &str, resp: &[u8], via: &str| {
        let t = String::from_utf8_lossy(resp);
        assert!(
            t.starts_with("HTTP/1.1 400"),
            "{label} ({via}): expected 400, got {t:?}"
        );
    };
    for (label, lines, body) in &cases {
        // On the proxy's listener.
        let req = format!(
            "POST http://{PLAIN}/first HTTP/1.1\r\nHost: {PLAIN}\r\nProxy-Authorization: {}\r\n{lines}\r\n{body}{}",
            h.bearer,
            smuggled.replace("HOSTNAME", PLAIN)
        )
        .replace("HOSTNAME", PLAIN);
        let mut s = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        check(label, &read_to_close(&mut s).await, "listener");
        // Inside a TLS tunnel.
        let mut tls = tunnel(&h, "http/1.1").await;
        let req = format!(
            "POST /first HTTP/1.1\r\nHost: {HOST}\r\n{lines}\r\n{body}{}",
            smuggled.replace("HOSTNAME", HOST)
        )
        .replace("HOSTNAME", HOST);
        tls.write_all(req.as_bytes()).await.unwrap();
        check(label, &read_to_close(&mut tls).await, "tunnel");
    }
    let mut all = h.upstream.received();
    all.extend(h.plain.received());
    assert!(
        all.iter().all(|r| r.path() != "/smuggled"),
        "a smuggled request reached an upstream: {all:?}"
    );
    // Refused heads were never forwarded; body-level cases at most reached the upstream as an
    // aborted request.
    assert!(all.iter().all(|r| r.body_len == 0), "{all:?}");
    // The proxy still serves.
    let c = h.get(format!("https://{HOST}/echo")).send().await;
    assert_eq!(c.status, 200, "{c}");
}

/// A body whose chunk framing breaks after forwarding began: the upstream request is
/// aborted, the agent gets 400, and the upstream HTTP/1 connection that carried it is never
/// used again.
#[tokio::test]
async fn a_framing_error_mid_body_aborts_the_upstream_request_and_its_connection() {
    let probe = Harness::start().await;
    let name = "h1only.example.test";
    let up = Upstream::start(
        UpstreamOptions::tls(probe.pki.issue(&[name], Validity::Valid)).with_alpn(&["http/1.1"]),
    )
    .await;
    let h = Harness::with(Setup {
        allow: vec![name.into()],
        resolve: vec![(name.into(), up.addr())],
        extra_ca: vec![probe.pki.ca_cert_path().to_path_buf()],
        ..Setup::default()
    })
    .await;
    let ok = h.get(format!("https://{name}/fixed/3")).send().await;
    assert_eq!(ok.status, 200, "{ok}");
    assert_eq!(up.connections(), 1);
    let (tcp, _, _) = connect_tunnel(h.addr(), &format!("{name}:443"), &h.auth_pairs())
        .await
        .unwrap();
    let mut tls = tls_over(tcp, name, h.proxy_client_config(&["http/1.1"])).await;
    tls.write_all(
        format!("POST /sha256 HTTP/1.1\r\nHost: {name}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    tls.flush().await.unwrap();
    // Once the upstream has the request, break the framing.
    up.wait_for_requests(2).await;
    tls.write_all(b"0x5\r\nworld\r\n0\r\n\r\n").await.unwrap();
    let t = String::from_utf8_lossy(&read_to_close(&mut tls).await).into_owned();
    assert!(t.starts_with("HTTP/1.1 400"), "{t}");
    assert!(t.contains("request_framing"), "{t}");
    // The next request opens a new upstream connection.
    let again = h.get(format!("https://{name}/fixed/3")).send().await;
    assert_eq!(again.status, 200, "{again}");
    assert_eq!(
        up.connections(),
        2,
        "the connection of the aborted request was reused"
    );
}

// ---------------------------------------------------------------- raw HTTP/2

mod h2raw {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const WINDOW_UPDATE: u8 = 8;
    pub const CONTINUATION: u8 = 9;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn int(out: &mut Vec<u8>, prefix_bits: u8, first: u8, mut v: usize) {
        let max = (1usize << prefix_bits) - 1;
        if v < max {
            out.push(first | v as u8);
            return;
        }
        out.push(first | max as u8);
        v -= max;
        while v >= 128 {
            out.push((v % 128 + 128) as u8);
            v /= 128;
        }
        out.push(v as u8);
    }

    /// An HPACK block of literal fields without indexing (no Huffman), bytes as given.
    pub fn block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v) in fields {
            out.push(0x00);
            int(&mut out, 7, 0, n.len());
            out.extend_from_slice(n);
            int(&mut out, 7, 0, v.len());
            out.extend_from_slice(v);
        }
        out
    }

    pub fn request(authority: &str, path: &str, extra: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut f: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", authority.as_bytes()),
            (b":path", path.as_bytes()),
        ];
        f.extend_from_slice(extra);
        block(&f)
    }

    pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
        let mut p = Vec::new();
        for (id, v) in pairs {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        frame(SETTINGS, 0, 0, &p)
    }

    /// Frames in `bytes` as (type, flags, stream); a partial frame at the end is ignored.
    pub fn parse(bytes: &[u8]) -> Vec<(u8, u8, u32)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i + 9 <= bytes.len() {
            let len = ((bytes[i] as usize) << 16)
                | ((bytes[i + 1] as usize) << 8)
                | bytes[i + 2] as usize;
            let stream =
                u32::from_be_bytes([bytes[i + 5], bytes[i + 6], bytes[i + 7], bytes[i + 8]])
                    & 0x7fff_ffff;
            out.push((bytes[i + 3], bytes[i + 4], stream));
            i += 9 + len;
        }
        out
    }
}

/// Open an h2 tunnel, send `frames` (after the preface and `settings`) while reading, and
/// return every byte the proxy sent until it closed the connection.
async fn h2_session(
    h: &Harness,
    settings: Vec<u8>,
    frames: impl Iterator<Item = Vec<u8>> + Send + 'static,
) -> Vec<u8> {
    let tls = tunnel(h, "h2").await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(h2raw::PREFACE).await;
        let _ = wr.write_all(&settings).await;
        for f in frames {
            if wr.write_all(&f).await.is_err() {
                return;
            }
        }
        let _ = wr.flush().await;
        // Keep the write side open: the proxy must end the connection by itself.
        std::future::pending::<()>().await;
    });
    let got = read_to_close(&mut rd).await;
    writer.abort();
    got
}

/// HTTP/2 floods (A17): each ends with the proxy closing the connection (GOAWAY and/or EOF,
/// with bounded work), and the proxy keeps serving other connections. No timing is asserted:
/// a flood the HTTP/2 layer does not detect itself is cut by the connection's header
/// deadline (no request completes), and a zero-window stall by the idle deadline of a
/// response that waits on the agent.
#[tokio::test]
async fn http2_floods_close_the_connection_and_others_are_served() {
    let h = Harness::with(Setup {
        limits: vec![
            "header_read_timeout: 1s".into(),
            "idle_timeout: 2s".into(),
            "body_idle_timeout: 1s".into(),
        ],
        ..Setup::default()
    })
    .await;
    let auth = HOST.to_string();
    type Flood = Box<dyn Iterator<Item = Vec<u8>> + Send>;
    let continuation: Flood = {
        let head = h2raw::frame(h2raw::HEADERS, 0, 1, &h2raw::request(&auth, "/echo", &[]));
        let cont = h2raw::block(&[(b"x-flood", &[b'a'; 1000])]);
        Box::new(
            std::iter::once(head)
                .chain((0..20_000).map(move |_| h2raw::frame(h2raw::CONTINUATION, 0, 1, &cont))),
        )
    };
    let rapid_reset: Flood = {
        let auth = auth.clone();
        Box::new((0..20_000u32).flat_map(move |i| {
            let id = 1 + 2 * i;
            let mut f = h2raw::frame(
                h2raw::HEADERS,
                h2raw::END_HEADERS | h2raw::END_STREAM,
                id,
                &h2raw::request(&auth, "/fixed/1", &[]),
            );
            f.extend(h2raw::frame(h2raw::RST_STREAM, 0, id, &8u32.to_be_bytes()));
            std::iter::once(f)
        }))
    };
    let settings: Flood = Box::new((0..200_000).map(|_| h2raw::settings(&[(3, 100)])));
    let ping: Flood =
        Box::new((0..200_000u64).map(|i| h2raw::frame(h2raw::PING, 0, 0, &i.to_be_bytes())));
    let empty_data: Flood = {
        let head = h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_HEADERS,
            1,
            &h2raw::request(&auth, "/sha256", &[(b":method", b"POST")]),
        );
        Box::new(
            std::iter::once(head).chain((0..200_000).map(|_| h2raw::frame(h2raw::DATA, 0, 1, &[]))),
        )
    };
    let window_update: Flood = Box::new(
        (0..200_000).map(|_| h2raw::frame(h2raw::WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes())),
    );
    let floods: Vec<(&str, Vec<u8>, Flood)> = vec![
        ("CONTINUATION flood", h2raw::settings(&[]), continuation),
        ("rapid reset", h2raw::settings(&[]), rapid_reset),
        ("SETTINGS flood", h2raw::settings(&[]), settings),
        ("PING flood", h2raw::settings(&[]), ping),
        ("empty DATA flood", h2raw::settings(&[]), empty_data),
        ("WINDOW_UPDATE flood", h2raw::settings(&[]), window_update),
    ];
    for (label, settings, flood) in floods {
        let got = h2_session(&h, settings, flood).await;
        let frames = h2raw::parse(&got);
        assert!(!frames.is_empty(), "{label}: the proxy sent nothing");
        // Another connection is served meanwhile and after.
        let c = h.get(format!("https://{HOST}/fixed/10")).send().await;
        assert_eq!(c.status, 200, "{label}: {c}");
    }
    // Zero-window stall: the agent's window is 0, so the response can never be sent.
    let stall = h2_session(
        &h,
        h2raw::settings(&[(4, 0)]),
        std::iter::once(h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_HEADERS | h2raw::END_STREAM,
            1,
            &h2raw::request(&auth, "/fixed/100000", &[]),
        )),
    )
    .await;
    let frames = h2raw::parse(&stall);
    assert!(
        frames
            .iter()
            .any(|(t, _, s)| *t == h2raw::HEADERS && *s == 1),
        "the response head was sent: {frames:?}"
    );
    assert!(
        !frames.iter().any(|(t, _, s)| *t == h2raw::DATA && *s == 1),
        "no data can be sent with a zero window: {frames:?}"
    );
    let c = h.get(format!("https://{HOST}/fixed/10")).send().await;
    assert_eq!(c.status, 200, "{c}");
}

/// h2 → h1 downgrade: header fields that would change an HTTP/1 request's meaning if copied
/// (CR/LF/NUL or a colon in a value, an uppercase or colon-bearing name, connection-specific
/// headers such as Transfer-Encoding) are refused; nothing reaches the upstream.
#[tokio::test]
async fn http2_fields_that_would_smuggle_over_http1_are_refused() {
    let h = Harness::start().await;
    type Fields = Vec<(&'static [u8], &'static [u8])>;
    let cases: Vec<(&str, Fields)> = vec![
        ("CRLF in a value", vec![(b"x-a", b"1\r\nx-injected: 1")]),
        (
            "LF in a value",
            vec![(b"x-a", b"1\nGET /smuggled HTTP/1.1")],
        ),
        ("NUL in a value", vec![(b"x-a", b"1\0")]),
        ("uppercase name", vec![(b"X-Upper", b"1")]),
        ("colon in a name", vec![(b"x:a", b"1")]),
        ("space in a name", vec![(b"x a", b"1")]),
        (
            "transfer-encoding",
            vec![(b"transfer-encoding", b"chunked")],
        ),
        ("connection", vec![(b"connection", b"close")]),
        ("te other than trailers", vec![(b"te", b"gzip")]),
        ("colon in the path", vec![]),
    ];
    for (label, extra) in cases {
        let path = if label == "colon in the path" {
            "/a b HTTP/1.1\r\nx:"
        } else {
            "/echo"
        };
        let req = h2raw::request(HOST, path, &extra);
        let got = h2_session(
            &h,
            h2raw::settings(&[]),
            std::iter::once(h2raw::frame(
                h2raw::HEADERS,
                h2raw::END_HEADERS | h2raw::END_STREAM,
                1,
                &req,
            ))
            .chain(std::iter::once(h2raw::frame(h2raw::GOAWAY, 0, 0, &[0; 8]))),
        )
        .await;
        let frames = h2raw::parse(&got);
        assert!(
            frames
                .iter()
                .any(|(t, _, s)| (*t == h2raw::RST_STREAM && *s == 1)
                    || *t == h2raw::GOAWAY
                    || (*t == h2raw::HEADERS && *s == 1)),
            "{label}: {frames:?}"
        );
        assert_eq!(
            h.upstream.request_count(),
            0,
            "{label} reached the upstream"
        );
    }
}

// ---------------------------------------------------------------- A21, A27, A28, A32

#[tokio::test]
async fn the_agents_own_token_is_never_forwarded_in_any_header() {
    let h = Harness::with(Setup {
        admin: true,
        ..creds()
    })
    .await;
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("u:{}", h.token)
        )
    );
    for (label, args) in [
        (
            "Authorization bearer",
            vec![
                "-H".to_string(),
                format!("Authorization: Bearer {}", h.token),
            ],
        ),
        (
            "custom header",
            vec!["-H".to_string(), format!("X-Token: {}", h.token)],
        ),
        (
            "basic password",
            vec!["-H".to_string(), format!("Authorization: {basic}")],
        ),
        ("query", vec![]),
    ] {
        let url = if label == "query" {
            format!("https://{OTHER}/echo?t={}", h.token)
        } else {
            format!("https://{OTHER}/echo")
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let c = h.get(&url).curl_args(&args).send().await;
        assert_eq!(c.status, 403, "{label}: {c}");
        assert_eq!(
            c.reason.as_deref(),
            Some("agent_token_in_request"),
            "{label}: {c}"
        );
        assert!(
            !c.received().contains(&h.token),
            "{label}: the token was echoed back"
        );
    }
    // Plain HTTP (the token travels in Proxy-Authorization on the request itself) too.
    let c = h
        .get(format!("http://{PLAIN}/echo"))
        .header("Authorization", format!("Bearer {}", h.token))
        .send()
        .await;
    assert_eq!(c.status, 403, "{c}");
    assert_eq!(h.upstream.request_count() + h.plain.request_count(), 0);
    let m = metrics(&h).await;
    assert!(
        m.contains(r#"credproxy_misuse_alarms_total{kind="agent_token_in_request"} 5"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_foreign_credential_value_is_refused_or_replaced() {
    let h = Harness::with(Setup {
        admin: true,
        ..creds()
    })
    .await;
    // The agent's own key in the header a credential bound here is injected into.
    let c = h
        .get(format!("https://{HOST}/echo"))
        .header("x-api-key", "sk-ant-api03-the-agents-own-key")
        .send()
        .await;
    assert_eq!(c.status, 403, "{c}");
    assert_eq!(c.reason.as_deref(), Some("credential_foreign_value"), "{c}");
    assert!(c.text().contains("send its placeholder"), "{c}");
    assert_eq!(h.upstream.request_count(), 0);
    let m = metrics(&h).await;
    assert!(
        m.contains(r#"credproxy_misuse_alarms_total{kind="credential_foreign_value"} 1"#),
        "{m}"
    );
    // The same header to a host the credential is not bound to is the agent's business.
    let c = h
        .get(format!("https://{OTHER}/echo"))
        .header("x-api-key", "own")
        .send()
        .await;
    assert_eq!(c.status, 200, "{c}");
    // `foreign_value: replace`: the credential's secret replaces the agent's value.
    let c = h
        .get(format!("https://{HOST}/echo"))
        .header("x-replace-key", "the-agents-own")
        .send()
        .await;
    assert_eq!(c.status, 200, "{c}");
    let last = h.upstream.received().last().unwrap().clone();
    assert_eq!(
        last.header("x-replace-key").as_deref(),
        Some(REPLACE_SECRET)
    );
    assert!(!c.received().contains(REPLACE_SECRET), "{c}");
    // Recorded: the refusal as a misuse alarm, the replacement as a use of the credential.
    h.proxy.flush_audit().await;
    let db = h.dir.path().join("audit.db");
    let all =
        credproxy_audit::query::list(&db, &credproxy_audit::query::Filter::default()).unwrap();
    assert!(
        all.iter()
            .any(|r| r.misuse_alarms == vec!["credential_foreign_value".to_string()]),
        "{all:#?}"
    );
    let replaced = all
        .iter()
        .find(|r| r.credentials.iter().any(|c| c.id == "replace"))
        .expect("the replacement is recorded");
    assert_eq!(replaced.credentials[0].location, "header:x-replace-key");
}

#[tokio::test]
async fn another_agents_placeholder_is_a_misuse_alarm_and_underscored_ones_are_near_misses() {
    let h = Harness::with(Setup {
        admin: true,
        ..creds()
    })
    .await;
    let stranger = h.token_for("agent-b", &["other-role"], Duration::from_secs(600));
    let c = h
        .get(format!("https://{HOST}/echo"))
        .token(&stranger)
        .header("x-api-key", PH)
        .send()
        .await;
    assert_eq!(c.status, 403, "{c}");
    assert_eq!(c.reason.as_deref(), Some("policy_denied"), "{c}");
    let underscored = PH.replace('-', "_");
    let c = h
        .get(format!("https://{HOST}/echo"))
        .header("x-api-key", underscored)
        .send()
        .await;
    assert_eq!(c.status, 403, "{c}");
    assert_eq!(c.reason.as_deref(), Some("placeholder_near_miss"), "{c}");
    assert_eq!(h.upstream.request_count(), 0);
    let m = metrics(&h).await;
    assert!(
        m.contains(r#"credproxy_misuse_alarms_total{kind="credential_not_granted"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"credproxy_misuse_alarms_total{kind="placeholder_near_miss"} 1"#),
        "{m}"
    );
    let _ = AGENT;
}

#[tokio::test]
async fn a_placeholder_in_a_request_trailer_is_refused() {
    let h = Harness::with(Setup {
        limits: vec!["body_scan_window: 4096".into()],
        ..creds()
    })
    .await;
    for (label, body) in [
        ("in the window", "5\r\nhello\r\n".to_string()),
        (
            "past the window",
            format!("2000\r\n{}\r\n", "a".repeat(0x2000)),
        ),
    ] {
        let mut tls = tunnel(&h, "http/1.1").await;
        let req = format!(
            "POST /sha256 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nTrailer: x-t\r\nTE: trailers\r\n\r\n{body}0\r\nx-t: {PH}\r\n\r\n"
        );
        tls.write_all(req.as_bytes()).await.unwrap();
        let t = String::from_utf8_lossy(&read_to_close(&mut tls).await).into_owned();
        assert!(t.starts_with("HTTP/1.1 403"), "{label}: {t}");
        assert!(
            t.contains("credential_wrong_location") || t.contains("placeholder_late_in_body"),
            "{label}: {t}"
        );
    }
    // The upstream never saw a complete request carrying the trailer.
    for r in h.upstream.received() {
        assert!(!format!("{r:?}").contains(PH), "{r:?}");
    }
}

// ---------------------------------------------------------------- A14, A15: bodies and caps

#[tokio::test]
async fn a_stalled_request_body_times_out() {
    let h = Harness::with(Setup {
        limits: vec!["body_idle_timeout: 1s".into()],
        ..creds()
    })
    .await;
    for via in ["window", "streaming"] {
        let mut tls = tunnel(&h, "http/1.1").await;
        // Credentials are configured, so the proxy reads the scan window first: the stall is
        // seen before anything is sent ("window"). Past the window, the upstream request is
        // aborted ("streaming").
        let head = if via == "window" {
            format!(
                "POST /sha256 HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\n\r\n0123456789"
            )
        } else {
            format!(
                "POST /sha256 HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n\r\n{}",
                2 * 1024 * 1024,
                "a".repeat(1024 * 1024 + 10)
            )
        };
        tls.write_all(head.as_bytes()).await.unwrap();
        let t = String::from_utf8_lossy(&read_to_close(&mut tls).await).into_owned();
        assert!(t.starts_with("HTTP/1.1 408"), "{via}: {t}");
        assert!(t.contains("body_timeout"), "{via}: {t}");
    }
    for r in h.upstream.received() {
        assert!(r.body_len < 100 || r.body_len < 2 * 1024 * 1024, "{r:?}");
    }
}

#[tokio::test]
async fn an_injected_body_over_the_cap_is_413() {
    let h = Harness::with(Setup {
        limits: vec![
            "body_scan_window: 4096".into(),
            "max_injected_body_bytes: 65536".into(),
        ],
        ..creds()
    })
    .await;
    let big = "a".repeat(100_000);
    // Announced: refused from the head, before any byte of the body is read.
    let mut tls = tunnel(&h, "http/1.1").await;
    tls.write_all(
        format!("POST /sha256 HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100000\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let t = String::from_utf8_lossy(&read_to_close(&mut tls).await).into_owned();
    assert!(t.starts_with("HTTP/1.1 413"), "{t}");
    assert!(t.contains("body_too_large"), "{t}");
    // Streamed without a length (HTTP/2 from curl): cut when it passes the cap.
    let c = h
        .post(format!("https://{HOST}/sha256"), big.clone())
        .header_line("content-length:")
        .send()
        .await;
    assert_eq!(c.status, 413, "{c}");
    assert_eq!(c.reason.as_deref(), Some("body_too_large"), "{c}");
    // A body under the cap still goes through; hosts without a body credential are uncapped.
    let c = h
        .post(format!("https://{OTHER}/sha256"), big.clone())
        .send()
        .await;
    assert_eq!(c.status, 200, "{c}");
    for r in h.upstream.received() {
        assert!(
            r.path() != "/sha256"
                || r.body_len < 100_000
                || r.header("host").as_deref() != Some(HOST),
            "{r:?}"
        );
    }
}

#[tokio::test]
async fn per_identity_connection_and_stream_caps() {
    let h = Harness::with(Setup {
        limits: vec![
            "max_connections_per_identity: 2".into(),
            "max_streams_per_identity: 1".into(),
        ],
        ..Setup::default()
    })
    .await;
    let (_a, s1, _) = connect_tunnel(h.addr(), &format!("{HOST}:443"), &h.auth_pairs())
        .await
        .unwrap();
    let (_b, s2, _) = connect_tunnel(h.addr(), &format!("{HOST}:443"), &h.auth_pairs())
        .await
        .unwrap();
    assert_eq!((s1.as_u16(), s2.as_u16()), (200, 200));
    let (_, s3, head) = connect_tunnel(h.addr(), &format!("{HOST}:443"), &h.auth_pairs())
        .await
        .unwrap();
    assert_eq!(s3, 429, "{}", String::from_utf8_lossy(&head));
    assert!(String::from_utf8_lossy(&head).contains("identity_connection_limit"));
    // Another identity is not affected.
    let b = h.token_for("agent-b", &[ROLE], Duration::from_secs(600));
    let (_c, s4, _) = connect_tunnel(
        h.addr(),
        &format!("{HOST}:443"),
        &[("Proxy-Authorization", &format!("Bearer {b}"))],
    )
    .await
    .unwrap();
    assert_eq!(s4, 200);
    drop((_a, _b));
    // Streams: one request in flight (held open by the upstream) and a second is refused.
    let tls = tunnel_for(&h, &b, "h2").await;
    let mut send = credproxy_testkit::http2_handshake::<_, http_body_util::Full<Bytes>>(tls)
        .await
        .unwrap();
    let get = |p: &str| {
        http::Request::get(format!("https://{HOST}{p}"))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap()
    };
    let held = within(send.send_request(get("/sse?events=2&gate=hold")))
        .await
        .unwrap();
    assert_eq!(held.status(), 200);
    let second = within(send.send_request(get("/fixed/1"))).await.unwrap();
    assert_eq!(second.status(), 429);
    h.upstream.release("hold-1");
    let _ = within(held.into_body().collect()).await;
    let third = within(send.send_request(get("/fixed/1"))).await.unwrap();
    assert_eq!(third.status(), 200);
}

async fn tunnel_for(
    h: &Harness,
    token: &str,
    alpn: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let (tcp, status, _) = connect_tunnel(
        h.addr(),
        &format!("{HOST}:443"),
        &[("Proxy-Authorization", &format!("Bearer {token}"))],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    tls_over(tcp, HOST, h.proxy_client_config(&[alpn])).await
}

/// Many HTTP/2 streams with bodies on one connection share its scan memory: with room for
/// one window only, they are served one window at a time, all correctly.
#[tokio::test]
async fn http2_streams_share_the_connections_scan_memory() {
    let h = Harness::with(Setup {
        limits: vec![
            "body_scan_window: 16384".into(),
            "body_scan_memory_per_connection: 16384".into(),
        ],
        ..creds()
    })
    .await;
    let tls = tunnel(&h, "h2").await;
    let mut send = credproxy_testkit::http2_handshake::<_, http_body_util::Full<Bytes>>(tls)
        .await
        .unwrap();
    let body = Bytes::from(vec![b'x'; 100_000]);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut send = send.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let req = http::Request::post(format!("https://{HOST}/sha256"))
                .body(http_body_util::Full::new(body))
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            let status = resp.status();
            let text = resp.into_body().collect().await.unwrap().to_bytes();
            (status, text)
        }));
    }
    for t in tasks {
        let (status, text) = within(t).await.unwrap();
        assert_eq!(status, 200, "{text:?}");
        assert!(
            String::from_utf8_lossy(&text).ends_with(" 100000"),
            "{text:?}"
        );
    }
    let _ = send.ready().await;
}

// ---------------------------------------------------------------- tunnels: A30, nested CONNECT, GOAWAY

#[tokio::test]
async fn a_connect_inside_a_tunnel_is_refused() {
    let h = Harness::with(Setup {
        limits: vec!["idle_timeout: 2s".into()],
        ..Setup::default()
    })
    .await;
    let mut tls = tunnel(&h, "http/1.1").await;
    tls.write_all(format!("CONNECT {OTHER}:443 HTTP/1.1\r\nHost: {OTHER}:443\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let t = String::from_utf8_lossy(&read_to_close(&mut tls).await).into_owned();
    assert!(t.starts_with("HTTP/1.1 400"), "{t}");
    assert!(t.contains("nested_connect"), "{t}");
    // Over HTTP/2 too.
    let got = h2_session(
        &h,
        h2raw::settings(&[]),
        std::iter::once(h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_HEADERS,
            1,
            &h2raw::block(&[
                (b":method", b"CONNECT"),
                (b":authority", format!("{OTHER}:443").as_bytes()),
            ]),
        )),
    )
    .await;
    assert!(!h2raw::parse(&got).is_empty());
    assert_eq!(h.upstream.request_count() + h.upstream.connections(), 0);
}

#[tokio::test]
async fn a_closing_refusal_ends_an_http2_tunnel_with_goaway() {
    let h = Harness::start().await;
    let tls = tunnel(&h, "h2").await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake::<_, _, http_body_util::Full<Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let ok = within(
        send.send_request(
            http::Request::get(format!("https://{HOST}/fixed/1"))
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), 200);
    // :authority for another host: 421, a refusal that closes the connection.
    let bad = within(
        send.send_request(
            http::Request::get(format!("https://{OTHER}/echo"))
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(bad.status(), 421);
    // The proxy ends the connection (GOAWAY, then close): the client's connection task ends.
    within(driver).await.unwrap().unwrap();
    assert!(send
        .send_request(
            http::Request::get(format!("https://{HOST}/fixed/1"))
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap()
        )
        .await
        .is_err());
}

const ALLOW_ALL: &str = "package credproxy.authz\n\ndefault allow := false\n\nallow if is_object(input.identity)\n\ndeny_reasons := set()\n";

#[tokio::test]
async fn removing_a_name_applies_in_open_tunnels_even_when_the_policy_ignores_the_allowlist() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policy");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("authz.rego"), ALLOW_ALL).unwrap();
    let h = Harness::with(Setup {
        extra_yaml: format!("policy:\n  dir: {}\n", dir.display()),
        ..Setup::default()
    })
    .await;
    let tls = tunnel(&h, "h2").await;
    let mut send = credproxy_testkit::http2_handshake::<_, http_body_util::Full<Bytes>>(tls)
        .await
        .unwrap();
    let get = || {
        http::Request::get(format!("https://{HOST}/fixed/1"))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(
        within(send.send_request(get())).await.unwrap().status(),
        200
    );
    h.reload(|y| y.replace(&format!("  - {HOST}\n"), ""))
        .unwrap();
    let resp = within(send.send_request(get())).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.headers()["x-credproxy-reason"],
        "destination_not_allowed"
    );
    assert_eq!(h.upstream.request_count(), 1);
}

#[tokio::test]
async fn withdrawing_a_signing_key_ends_tunnels_opened_with_it() {
    use credproxy_testkit::oidc::{OidcProvider, OidcProviderOptions, TestClient};
    let mut provider = OidcProvider::start(OidcProviderOptions {
        clients: vec![TestClient::new("agent-a", &[ROLE])],
        ..OidcProviderOptions::default()
    })
    .await;
    let h = Harness::with(Setup {
        identity: Some(format!(
            "identity:\n  oidc:\n    issuer: {}\n    audiences: [credproxy]\n    roles_claim: realm_access.roles\n    agent_claim: azp\n    jwks_min_refresh_interval: 0s\n",
            provider.issuer()
        )),
        ..Setup::default()
    })
    .await;
    assert!(h.proxy.wait_ready(Duration::from_secs(30)).await);
    let old = provider.token("agent-a").await;
    let tls = tunnel_for(&h, &old, "h2").await;
    let mut send = credproxy_testkit::http2_handshake::<_, http_body_util::Full<Bytes>>(tls)
        .await
        .unwrap();
    let get = || {
        http::Request::get(format!("https://{HOST}/fixed/1"))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(
        within(send.send_request(get())).await.unwrap().status(),
        200
    );
    // The issuer rotates its key and withdraws the old one; a token with the new key makes
    // the proxy fetch the new key set and notice the withdrawal.
    provider.restart_with_new_key().await;
    let new = provider.token("agent-a").await;
    let c = h
        .get(format!("https://{HOST}/fixed/1"))
        .token(&new)
        .send()
        .await;
    assert_eq!(c.status, 200, "{c}");
    // The tunnel opened with the old token is refused and closed.
    let resp = within(send.send_request(get())).await.unwrap();
    assert_eq!(resp.status(), 407);
    assert_eq!(resp.headers()["x-credproxy-reason"], "identity_revoked");
    assert_eq!(h.upstream.request_count(), 2);
}
