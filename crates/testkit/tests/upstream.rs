#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use credproxy_testkit::{
    collect_body, connect_tunnel, fixed_bytes, fixed_sha256, http1_handshake, http2_handshake,
    sha256_hex, tls_over, try_tls_over, TestPki, Upstream, UpstreamOptions, Validity,
};
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn tls_upstream(pki: &TestPki) -> Upstream {
    let cert = pki.issue(&["localhost", "127.0.0.1"], Validity::Valid);
    Upstream::start(UpstreamOptions::tls(cert)).await
}

async fn plain_upstream() -> Upstream {
    Upstream::start(UpstreamOptions::plain()).await
}

/// HTTP/1.1 client to `up` (TLS via `pki` when given).
async fn h1(up: &Upstream, pki: Option<&TestPki>) -> H1 {
    let tcp = TcpStream::connect(up.addr()).await.unwrap();
    match pki {
        Some(pki) => {
            let cfg = Arc::new(pki.client_config(&["http/1.1"]));
            let tls = tls_over(tcp, "localhost", cfg).await;
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
            http1_handshake(tls).await.unwrap()
        }
        None => http1_handshake(tcp).await.unwrap(),
    }
}

/// HTTP/2 client to `up` (ALPN h2 via `pki`, or prior knowledge).
async fn h2(up: &Upstream, pki: Option<&TestPki>) -> H2 {
    let tcp = TcpStream::connect(up.addr()).await.unwrap();
    match pki {
        Some(pki) => {
            let cfg = Arc::new(pki.client_config(&["h2", "http/1.1"]));
            let tls = tls_over(tcp, "localhost", cfg).await;
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            http2_handshake(tls).await.unwrap()
        }
        None => http2_handshake(tcp).await.unwrap(),
    }
}

fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn body_string(resp: Response<Incoming>) -> String {
    String::from_utf8(collect_body(resp.into_body()).await.unwrap().to_vec()).unwrap()
}

#[tokio::test]
async fn fixed_length_and_hash_tls_and_plain() {
    let pki = TestPki::new();
    let n = 3 * 1024 * 1024 + 17;
    for up in [tls_upstream(&pki).await, plain_upstream().await] {
        let tls = up.is_tls().then_some(&pki);
        let mut c = h1(&up, tls).await;
        let resp = c.send_request(get(&format!("/fixed/{n}"))).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-length"], n.to_string().as_str());
        let mut body = resp.into_body();
        let mut got = Vec::new();
        while let Some(f) = body.frame().await {
            if let Ok(d) = f.unwrap().into_data() {
                got.extend_from_slice(&d);
            }
        }
        assert_eq!(got.len() as u64, n);
        assert_eq!(sha256_hex(&got), fixed_sha256(n));
        assert_eq!(&got[..300], &fixed_bytes(300)[..]);

        // zero-length body
        let resp = c.send_request(get("/fixed/0")).await.unwrap();
        assert_eq!(resp.headers()["content-length"], "0");
        assert!(collect_body(resp.into_body()).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn fixed_chunked_has_no_content_length() {
    let up = plain_upstream().await;
    let mut c = h1(&up, None).await;
    let n = 200_001u64;
    let resp = c
        .send_request(get(&format!("/fixed/{n}?chunked=1")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("content-length").is_none());
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    let body = collect_body(resp.into_body()).await.unwrap();
    assert_eq!(body.len() as u64, n);
    assert_eq!(sha256_hex(&body), fixed_sha256(n));
}

#[tokio::test]
async fn echo_reflects_headers_status_and_1mib_body() {
    let pki = TestPki::new();
    let up = tls_upstream(&pki).await;
    let mut c = h1(&up, Some(&pki)).await;
    let payload: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 256) as u8).collect();
    let req = Request::post("/echo?status=201&x=a%20b")
        .header("host", "localhost")
        .header("x-echo-foo", "bar")
        .header("authorization", "Bearer secret")
        .body(Full::new(Bytes::from(payload.clone())))
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["x-echo-foo"], "bar");
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert!(resp.headers().get("authorization").is_none());
    let body = collect_body(resp.into_body()).await.unwrap();
    let split = body.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = std::str::from_utf8(&body[..split]).unwrap();
    assert!(
        head.starts_with("POST /echo?status=201&x=a%20b HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nhost: localhost\r\n"), "{head}");
    assert!(head.contains("\r\nx-echo-foo: bar\r\n"), "{head}");
    assert!(
        head.contains("\r\nauthorization: Bearer secret\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\ncontent-length: 1048576\r\n"), "{head}");
    assert_eq!(&body[split..], &payload[..]);

    let rec = up.received();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].body_len, payload.len() as u64);
    assert_eq!(rec[0].header("x-echo-foo").as_deref(), Some("bar"));
}

#[tokio::test]
async fn echo_trailer_h2_and_chunked_h1() {
    let pki = TestPki::new();
    let up = tls_upstream(&pki).await;

    // HTTP/2: trailers always.
    let mut c = h2(&up, Some(&pki)).await;
    let req = Request::get("https://localhost/echo?trailer=1")
        .header("x-echo-trailer-value", "tv-h2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["trailer"], "x-echo-trailer");
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-echo-trailer"], "tv-h2");

    // HTTP/1.1: trailers need `TE: trailers` on the request.
    let mut c = h1(&up, Some(&pki)).await;
    let req = Request::get("/echo?trailer=1")
        .header("host", "localhost")
        .header("te", "trailers")
        .header("x-echo-trailer-value", "tv-h1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-echo-trailer"], "tv-h1");
}

#[tokio::test]
async fn sha256_of_10mib() {
    let up = plain_upstream().await;
    let mut c = h1(&up, None).await;
    let payload = Bytes::from(fixed_bytes(10 * 1024 * 1024));
    let req = Request::post("/sha256")
        .header("host", "localhost")
        .body(Full::new(payload.clone()))
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        body_string(resp).await,
        format!("{} {}", fixed_sha256(payload.len() as u64), payload.len())
    );
    assert_eq!(up.received()[0].body_len, payload.len() as u64);
}

async fn next_text(body: &mut Incoming) -> Option<String> {
    loop {
        let f = body.frame().await?.unwrap();
        match f.into_data() {
            Ok(d) if !d.is_empty() => return Some(String::from_utf8(d.to_vec()).unwrap()),
            _ => {}
        }
    }
}

#[tokio::test]
async fn sse_gates_order_events() {
    let pki = TestPki::new();
    let up = tls_upstream(&pki).await;
    for http2 in [false, true] {
        let gate = if http2 { "g2" } else { "g1" };
        let uri = format!("https://localhost/sse?events=3&gate={gate}&data=%20x");
        let resp = if http2 {
            h2(&up, Some(&pki)).await.send_request(get(&uri)).await
        } else {
            h1(&up, Some(&pki)).await.send_request(get(&uri)).await
        }
        .unwrap();
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        assert!(resp.headers().get("content-length").is_none());
        let mut body = resp.into_body();
        // Event 0 arrives before any release.
        assert_eq!(next_text(&mut body).await.unwrap(), "data: event 0 x\n\n");
        // Event 1 is held back until gate-1 is released (negative check only).
        assert!(
            tokio::time::timeout(Duration::from_millis(100), body.frame())
                .await
                .is_err(),
            "event 1 must not arrive before release"
        );
        up.release(&format!("{gate}-1"));
        assert_eq!(next_text(&mut body).await.unwrap(), "data: event 1 x\n\n");
        up.gates().release(&format!("{gate}-2"));
        assert_eq!(next_text(&mut body).await.unwrap(), "data: event 2 x\n\n");
        assert!(next_text(&mut body).await.is_none());
    }
}

#[tokio::test]
async fn sse_release_before_request() {
    let up = plain_upstream().await;
    up.release("early-1");
    up.release("early-2");
    let mut c = h1(&up, None).await;
    let resp = c
        .send_request(get("/sse?events=3&gate=early"))
        .await
        .unwrap();
    assert_eq!(
        body_string(resp).await,
        "data: event 0\n\ndata: event 1\n\ndata: event 2\n\n"
    );
}

#[tokio::test]
async fn slow_waits_for_gate() {
    let up = plain_upstream().await;
    let mut c = h1(&up, None).await;
    let fut = c.send_request(get("/slow?gate=s"));
    let task = tokio::spawn(fut);
    up.wait_for_requests(1).await;
    assert!(!task.is_finished());
    up.release("s");
    let resp = task.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_string(resp).await, "released");
}

#[tokio::test]
async fn redirect_and_404() {
    let up = plain_upstream().await;
    let mut c = h1(&up, None).await;
    let resp = c
        .send_request(get("/redirect?to=https%3A%2F%2Fexample.com%2Fa%3Fb%3D1"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(resp.headers()["location"], "https://example.com/a?b=1");
    collect_body(resp.into_body()).await.unwrap();
    let resp = c.send_request(get("/nope")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn http2_negotiated_via_alpn_and_prior_knowledge() {
    let pki = TestPki::new();
    let up = tls_upstream(&pki).await;
    let mut c = h2(&up, Some(&pki)).await;
    let resp = c
        .send_request(get("https://localhost/echo?q=1"))
        .await
        .unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    let body = body_string(resp).await;
    assert!(body.starts_with("GET /echo?q=1 HTTP/2.0\r\n"), "{body}");
    let rec = &up.received()[0];
    assert_eq!(rec.version, Version::HTTP_2);
    assert_eq!(rec.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(rec.sni.as_deref(), Some("localhost"));
    assert_eq!(rec.path_and_query, "/echo?q=1");

    let plain = plain_upstream().await;
    let mut c = h2(&plain, None).await;
    let resp = c.send_request(get("http://localhost/echo")).await.unwrap();
    assert!(body_string(resp)
        .await
        .starts_with("GET /echo HTTP/2.0\r\n"));
}

#[tokio::test]
async fn websocket_echo_over_tls() {
    let pki = TestPki::new();
    let up = tls_upstream(&pki).await;
    let tcp = TcpStream::connect(up.addr()).await.unwrap();
    let tls = tls_over(tcp, "localhost", Arc::new(pki.client_config(&["http/1.1"]))).await;
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://localhost/ws", tls)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::Text("hello ws".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("hello ws".into())
    );
    ws.send(Message::Binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Binary(vec![1, 2, 3])
    );
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    assert_eq!(up.received()[0].path(), "/ws");
}

#[tokio::test]
async fn websocket_refuse_returns_200() {
    let up = plain_upstream().await;
    let mut c = h1(&up, None).await;
    let req = Request::get("/ws?refuse=1")
        .header("host", "localhost")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_string(resp).await, "no upgrade");
}

#[tokio::test]
async fn websocket_accept_key_is_correct() {
    let up = plain_upstream().await;
    let mut c = http1_handshake::<_, Empty<Bytes>>(TcpStream::connect(up.addr()).await.unwrap())
        .await
        .unwrap();
    let req = Request::get("/ws")
        .header("host", "localhost")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Empty::new())
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    // RFC 6455 section 1.3 example.
    assert_eq!(
        resp.headers()["sec-websocket-accept"],
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

async fn assert_handshake_fails(up: &Upstream, client_pki: &TestPki) {
    let tcp = TcpStream::connect(up.addr()).await.unwrap();
    let cfg = Arc::new(client_pki.client_config(&["h2"]));
    let Err(err) = try_tls_over(tcp, "localhost", cfg).await else {
        panic!("handshake must fail");
    };
    let msg = err.to_string();
    assert!(
        msg.contains("certificate") || msg.contains("Certificate"),
        "{msg}"
    );
    assert_eq!(up.tls_handshakes(), 0);
    assert_eq!(up.request_count(), 0);
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn expired_and_not_yet_valid_certs_fail() {
    let pki = TestPki::new();
    for v in [Validity::Expired, Validity::NotYetValid] {
        let up = Upstream::start(UpstreamOptions::tls(pki.issue(&["localhost"], v))).await;
        assert_handshake_fails(&up, &pki).await;
    }
}

#[tokio::test]
async fn cert_from_other_pki_fails() {
    let trusted = TestPki::new();
    let untrusted = TestPki::new_untrusted();
    let up = tls_upstream(&untrusted).await;
    assert_handshake_fails(&up, &trusted).await;
    // Sanity: the same upstream works with its own CA.
    let mut c = h1(&up, Some(&untrusted)).await;
    let resp = c.send_request(get("/echo")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn records_requests_and_counts_connections() {
    let pki = TestPki::new();
    let up = tls_upstream(&pki).await;
    assert_eq!(
        (up.connections(), up.tls_handshakes(), up.request_count()),
        (0, 0, 0)
    );

    let mut c = h1(&up, Some(&pki)).await;
    for i in 0..2 {
        let req = Request::put(format!("/echo?i={i}"))
            .header("host", "localhost")
            .header("x-a", "1")
            .header("x-b", "two")
            .header("x-a", "3")
            .body(Full::new(Bytes::from_static(b"12345")))
            .unwrap();
        let resp = c.send_request(req).await.unwrap();
        collect_body(resp.into_body()).await.unwrap();
    }
    let mut c2 = h1(&up, Some(&pki)).await;
    collect_body(c2.send_request(get("/fixed/10")).await.unwrap().into_body())
        .await
        .unwrap();

    assert_eq!(up.connections(), 2);
    assert_eq!(up.tls_handshakes(), 2);
    assert_eq!(up.request_count(), 3);
    let rec = up.received();
    assert_eq!(rec.len(), 3);
    assert_eq!(rec[0].method, http::Method::PUT);
    assert_eq!(rec[0].path_and_query, "/echo?i=0");
    assert_eq!(rec[1].path_and_query, "/echo?i=1");
    assert_eq!(rec[0].version, Version::HTTP_11);
    assert_eq!(rec[0].conn_id, rec[1].conn_id);
    assert_ne!(rec[0].conn_id, rec[2].conn_id);
    assert_eq!(rec[0].body_len, 5);
    assert_eq!(rec[2].body_len, 0);
    assert_eq!(rec[0].header_all("x-a"), vec!["1", "3"]);
    let names: Vec<&str> = rec[0].headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["host", "x-a", "x-a", "x-b", "content-length"]);
    assert_eq!(rec[0].headers[3].1, b"two");

    up.clear_received();
    assert!(up.received().is_empty());
}

/// Minimal CONNECT proxy for exercising `connect_tunnel`.
async fn mini_connect_proxy() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).await.unwrap() == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8(head).unwrap();
                let target = head.split(' ').nth(1).unwrap().to_string();
                if !head.contains("\r\nproxy-authorization: letmein\r\n") {
                    let body = "denied";
                    let resp = format!(
                        "HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    s.write_all(resp.as_bytes()).await.unwrap();
                    return;
                }
                let mut up = TcpStream::connect(target).await.unwrap();
                s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn connect_tunnel_and_tls_over() {
    let pki = TestPki::new();
    let up = tls_upstream(&pki).await;
    let proxy = mini_connect_proxy().await;
    let target = format!("127.0.0.1:{}", up.addr().port());

    let (_s, status, bytes) = connect_tunnel(proxy, &target, &[]).await.unwrap();
    assert_eq!(status, StatusCode::PROXY_AUTHENTICATION_REQUIRED);
    assert!(bytes.ends_with(b"\r\n\r\ndenied"), "{bytes:?}");

    let (s, status, head) = connect_tunnel(proxy, &target, &[("proxy-authorization", "letmein")])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(head.ends_with(b"\r\n\r\n"));
    let tls = tls_over(s, "localhost", Arc::new(pki.client_config(&["h2"]))).await;
    let mut c = http2_handshake(tls).await.unwrap();
    let resp = c
        .send_request(get("https://localhost/fixed/1000"))
        .await
        .unwrap();
    let body = collect_body(resp.into_body()).await.unwrap();
    assert_eq!(sha256_hex(&body), fixed_sha256(1000));
    assert_eq!(up.tls_handshakes(), 1);
}

#[tokio::test]
async fn connect_tunnel_non_200_reads_body() {
    // The upstream itself answers CONNECT with a plain 404 + content-length.
    let up = plain_upstream().await;
    let (_s, status, bytes) = connect_tunnel(up.addr(), "example.com:443", &[("x-k", "v")])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        bytes.ends_with(b"not found"),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let rec = up.received();
    assert_eq!(rec[0].method, http::Method::CONNECT);
    assert_eq!(rec[0].header("x-k").as_deref(), Some("v"));
}

#[tokio::test]
async fn shutdown_closes_listener() {
    let up = plain_upstream().await;
    let addr = up.addr();
    let mut c = h1(&up, None).await;
    // An in-flight gated request must be torn down by shutdown.
    let pending = tokio::spawn(c.send_request(get("/slow?gate=never")));
    up.wait_for_requests(1).await;
    up.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err());
    assert!(pending.await.unwrap().is_err());

    let up = plain_upstream().await;
    let addr = up.addr();
    drop(up);
    // Drop aborts the accept task; the listener closes once it is dropped.
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(refused);
}

#[tokio::test]
async fn echo_streams_request_body_frame_by_frame() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use std::convert::Infallible;

    let pki = TestPki::new();
    let up = tls_upstream(&pki).await;
    for http2 in [false, true] {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            let b = rx.recv().await?;
            Some((Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let req = Request::post("https://localhost/echo")
            .header("host", "localhost")
            .body(StreamBody::new(Box::pin(stream)))
            .unwrap();
        let tcp = TcpStream::connect(up.addr()).await.unwrap();
        let alpn: &[&str] = if http2 { &["h2"] } else { &["http/1.1"] };
        let tls = tls_over(tcp, "localhost", Arc::new(pki.client_config(alpn))).await;
        let resp = if http2 {
            let mut c = http2_handshake(tls).await.unwrap();
            c.send_request(req).await.unwrap()
        } else {
            let mut c = http1_handshake(tls).await.unwrap();
            c.send_request(req).await.unwrap()
        };
        let mut body = resp.into_body();
        let head = next_text(&mut body).await.unwrap();
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        // Each piece is echoed back before the next one is sent.
        for i in 0..3 {
            let piece = format!("piece-{i};");
            tx.send(Bytes::from(piece.clone())).await.unwrap();
            assert_eq!(next_text(&mut body).await.unwrap(), piece);
        }
        drop(tx);
        assert!(next_text(&mut body).await.is_none());
    }
}

#[tokio::test]
async fn fixed_huge_is_streamed() {
    let up = plain_upstream().await;
    let mut c = h1(&up, None).await;
    let n: u64 = (1 << 31) + 5;
    let resp = c.send_request(get(&format!("/fixed/{n}"))).await.unwrap();
    assert_eq!(resp.headers()["content-length"], n.to_string().as_str());
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while got.len() < 1 << 20 {
        if let Ok(d) = body.frame().await.unwrap().unwrap().into_data() {
            got.extend_from_slice(&d);
        }
    }
    assert_eq!(got[..1 << 20], fixed_bytes(1 << 20)[..]);
}
