#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use credproxy_testkit::{
    collect_body, contains_any_rendering, detection_patterns, http1_handshake, http2_handshake,
    renderings, tls_over, TestPki, Upstream, UpstreamOptions, Validity,
};
use futures_util::FutureExt;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpStream;

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// A header value exercising JSON escapes (`"` `\`), `/`, percent-encoding
/// (space, `?`, `+`, non-ASCII) and base64 `+`/`/` output.
const NASTY: &[u8] = b"sk-test_\"q\\/ ?>>>???~+\xc3\xa9-end";

async fn plain_upstream() -> Upstream {
    Upstream::start(UpstreamOptions::plain()).await
}

async fn tls_upstream(pki: &TestPki) -> Upstream {
    let cert = pki.issue(&["localhost", "127.0.0.1"], Validity::Valid);
    Upstream::start(UpstreamOptions::tls(cert)).await
}

async fn h1(up: &Upstream) -> H1 {
    http1_handshake(TcpStream::connect(up.addr()).await.unwrap())
        .await
        .unwrap()
}

async fn h2_tls(up: &Upstream, pki: &TestPki) -> H2 {
    let tcp = TcpStream::connect(up.addr()).await.unwrap();
    let cfg = Arc::new(pki.client_config(&["h2"]));
    let tls = tls_over(tcp, "localhost", cfg).await;
    http2_handshake(tls).await.unwrap()
}

fn req(method: &str, uri: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "localhost");
    for (n, v) in headers {
        b = b.header(*n, http::HeaderValue::from_bytes(v).unwrap());
    }
    b.body(Full::new(Bytes::copy_from_slice(body))).unwrap()
}

fn get(uri: &str, headers: &[(&str, &[u8])]) -> Request<Full<Bytes>> {
    req("GET", uri, headers, b"")
}

/// h2 needs an absolute URI.
fn get2(up: &Upstream, pq: &str, headers: &[(&str, &[u8])]) -> Request<Full<Bytes>> {
    let uri = format!("https://localhost:{}{pq}", up.addr().port());
    get(&uri, headers)
}

/// All data frames and the trailers of a response body.
async fn frames(resp: Response<Incoming>) -> (Vec<Bytes>, Option<HeaderMap>) {
    let mut body = resp.into_body();
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(f) = body.frame().await {
        let f = f.unwrap();
        match f.into_data() {
            // hyper's h2 server may end the stream with an empty DATA frame.
            Ok(d) if d.is_empty() => {}
            Ok(d) => data.push(d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    (data, trailers)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

fn assert_all_renderings(body: &[u8], value: &[u8]) {
    for (label, line) in renderings(value) {
        assert!(
            contains(body, &line),
            "{label} line {:?} missing from body",
            String::from_utf8_lossy(&line)
        );
    }
}

/// splitmix64: a tiny deterministic PRNG for reproducible random data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ------------------------------------------------------------------ /render

#[tokio::test]
async fn render_body_has_every_rendering_and_detector_finds_each() {
    let pki = TestPki::new();
    let plain = plain_upstream().await;
    let tls = tls_upstream(&pki).await;
    let hdr: &[(&str, &[u8])] = &[("x-api-key", NASTY)];

    let mut c1 = h1(&plain).await;
    let resp = c1
        .send_request(get("/render?from=x-api-key", hdr))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    let cl: usize = resp.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let b1 = collect_body(resp.into_body()).await.unwrap();
    assert_eq!(b1.len(), cl);

    let mut c2 = h2_tls(&tls, &pki).await;
    let resp = c2
        .send_request(get2(&tls, "/render?from=X-Api-Key&where=body", hdr))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let b2 = collect_body(resp.into_body()).await.unwrap();
    assert_eq!(b1, b2);

    // Exactly the renderings, one per line.
    let expected: Vec<u8> = renderings(NASTY)
        .into_iter()
        .flat_map(|(_, mut l)| {
            l.push(b'\n');
            l
        })
        .collect();
    assert_eq!(&b1[..], &expected[..]);
    assert_all_renderings(&b1, NASTY);
    let labels: Vec<String> = renderings(NASTY).into_iter().map(|(l, _)| l).collect();
    assert_eq!(
        labels,
        [
            "raw",
            "base64",
            "base64url",
            "base64_x0",
            "base64_x1",
            "base64_x2",
            "hex",
            "HEX",
            "percent",
            "json",
            "json_u"
        ]
    );

    // Every rendering line on its own is detected, by the expected form.
    for (label, line) in renderings(NASTY) {
        let found = contains_any_rendering(&line, NASTY);
        assert!(found.is_some(), "{label} rendering not detected");
        let want = match label.as_str() {
            "raw" => "raw",
            "base64" | "base64_x0" => "base64@0",
            "base64url" => "base64url@0",
            "base64_x1" => "base64@1",
            "base64_x2" => "base64@2",
            other => other,
        };
        assert_eq!(found.as_deref(), Some(want), "{label}");
    }
    assert_eq!(contains_any_rendering(&b1, NASTY).as_deref(), Some("raw"));
    // The JSON line parses back to the value (it is valid UTF-8).
    let json_line = &renderings(NASTY)[9].1;
    let s: String = serde_json::from_slice(&json_line[b"json: ".len()..]).unwrap();
    assert_eq!(s.as_bytes(), NASTY);
    let s: String = serde_json::from_slice(&renderings(NASTY)[10].1[b"json_u: ".len()..]).unwrap();
    assert_eq!(s.chars().count(), NASTY.len()); // one char per byte
}

#[test]
fn renderings_known_values() {
    let r = renderings(b"abc");
    let get =
        |l: &str| String::from_utf8(r.iter().find(|(x, _)| x == l).unwrap().1.clone()).unwrap();
    assert_eq!(get("raw"), "raw: abc");
    assert_eq!(get("base64"), "base64: YWJj");
    assert_eq!(get("base64url"), "base64url: YWJj");
    assert_eq!(get("base64_x0"), "base64_x0: YWJjeXo=");
    assert_eq!(get("base64_x1"), "base64_x1: eGFiY3l6");
    assert_eq!(get("base64_x2"), "base64_x2: eHhhYmN5eg==");
    assert_eq!(get("hex"), "hex: 616263");
    assert_eq!(get("HEX"), "HEX: 616263");
    assert_eq!(get("percent"), "percent: abc");
    assert_eq!(get("json"), "json: \"abc\"");
    assert_eq!(get("json_u"), "json_u: \"\\u0061\\u0062\\u0063\"");
}

#[tokio::test]
async fn render_bearer_and_basic_render_inner_values() {
    let up = plain_upstream().await;
    let mut c = h1(&up).await;
    let resp = c
        .send_request(get(
            "/render?from=authorization",
            &[("authorization", b"Bearer tok-123/456")],
        ))
        .await
        .unwrap();
    let body = collect_body(resp.into_body()).await.unwrap();
    assert_all_renderings(&body, b"Bearer tok-123/456");
    assert_all_renderings(&body, b"tok-123/456");

    let basic = format!("Basic {}", STANDARD.encode("alice:s3cr\"t"));
    let resp = c
        .send_request(get(
            "/render?from=authorization",
            &[("authorization", basic.as_bytes())],
        ))
        .await
        .unwrap();
    let body = collect_body(resp.into_body()).await.unwrap();
    assert_all_renderings(&body, basic.as_bytes());
    assert_all_renderings(&body, STANDARD.encode("alice:s3cr\"t").as_bytes());
    assert_all_renderings(&body, b"alice:s3cr\"t");
    assert_eq!(
        body.iter().filter(|b| **b == b'\n').count(),
        3 * renderings(b"x").len()
    );
}

#[tokio::test]
async fn render_header_location_trailer() {
    let pki = TestPki::new();
    let up = tls_upstream(&pki).await;
    let v: &[u8] = b"Bearer sk-loc/a b";
    let pq = "/render?from=authorization&where=header,location,trailer";
    let check_head = |resp: &Response<Incoming>| {
        assert_eq!(resp.status(), StatusCode::FOUND);
        assert_eq!(
            resp.headers()["location"].as_bytes(),
            b"https://elsewhere.example/cb?key=Bearer%20sk-loc%2Fa%20b&raw=Bearer sk-loc/a b"
        );
        let raw: Vec<&[u8]> = resp
            .headers()
            .get_all("x-rendered-raw")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(raw, [v, b"sk-loc/a b"]);
        let b64: Vec<&[u8]> = resp
            .headers()
            .get_all("x-rendered-b64")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(
            b64,
            [
                STANDARD.encode(v).as_bytes(),
                STANDARD.encode("sk-loc/a b").as_bytes()
            ]
        );
        assert_eq!(resp.headers()["trailer"], "x-rendered-trailer");
        assert!(resp.headers().get("content-length").is_none());
    };

    // HTTP/2: trailers always.
    let mut c2 = h2_tls(&up, &pki).await;
    let resp = c2
        .send_request(get2(&up, pq, &[("authorization", v)]))
        .await
        .unwrap();
    check_head(&resp);
    let (data, trailers) = frames(resp).await;
    assert!(data.iter().all(|d| d.is_empty()));
    assert_eq!(trailers.unwrap()["x-rendered-trailer"].as_bytes(), v);

    // HTTP/1.1 with `TE: trailers`.
    let tcp = TcpStream::connect(up.addr()).await.unwrap();
    let tls = tls_over(tcp, "localhost", Arc::new(pki.client_config(&["http/1.1"]))).await;
    let mut c1: H1 = http1_handshake(tls).await.unwrap();
    let resp = c1
        .send_request(get(pq, &[("authorization", v), ("te", b"trailers")]))
        .await
        .unwrap();
    check_head(&resp);
    let (_, trailers) = frames(resp).await;
    assert_eq!(trailers.unwrap()["x-rendered-trailer"].as_bytes(), v);

    // status= overrides the 302.
    let resp = c1
        .send_request(get(
            "/render?from=authorization&where=location&status=301",
            &[("authorization", v)],
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::MOVED_PERMANENTLY);
    assert!(resp.headers().contains_key("location"));
    assert_eq!(resp.headers()["content-length"], "0");
    assert!(collect_body(resp.into_body()).await.unwrap().is_empty());
}

/// Reads data frames until `want` bytes have arrived (never more: the test
/// only asks for what the server sends before the gate).
async fn read_exactly(body: &mut Incoming, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < want {
        let f = body.frame().await.unwrap().unwrap();
        got.extend_from_slice(&f.into_data().unwrap());
    }
    got
}

async fn read_rest(body: &mut Incoming) -> Vec<u8> {
    let mut got = Vec::new();
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            got.extend_from_slice(&d);
        }
    }
    got
}

#[tokio::test]
async fn render_sse_splits_value_across_gated_frames() {
    let pki = TestPki::new();
    let up = tls_upstream(&pki).await;
    let v: &[u8] = b"sk-sse-0123456789abcdef";
    let (a, b) = v.split_at(v.len() / 2);
    let first = [b"data: part1=".as_slice(), a].concat();
    let second = [b, b"\n\n".as_slice()].concat();

    // HTTP/2: each SSE frame is its own DATA frame.
    let mut c2 = h2_tls(&up, &pki).await;
    let resp = c2
        .send_request(get2(
            &up,
            "/render?from=x-api-key&where=sse&gate=g2",
            &[("x-api-key", v)],
        ))
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert!(resp.headers().get("content-length").is_none());
    let mut body = resp.into_body();
    assert_eq!(read_exactly(&mut body, first.len()).await, first);
    // The second half is held back until the gate opens.
    assert!(body.frame().now_or_never().is_none());
    up.release("g2");
    let f = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&f[..], &second[..]);
    let f = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&f[..], b"data: done\n\n");
    assert!(read_rest(&mut body).await.is_empty());

    // HTTP/1.1 (chunked), with the body renderings first.
    let plain = plain_upstream().await;
    let mut c1 = h1(&plain).await;
    let resp = c1
        .send_request(get(
            "/render?from=x-api-key&where=body,sse&gate=g1",
            &[("x-api-key", v)],
        ))
        .await
        .unwrap();
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    let mut body = resp.into_body();
    let mut lines: Vec<u8> = renderings(v)
        .into_iter()
        .flat_map(|(_, mut l)| {
            l.push(b'\n');
            l
        })
        .collect();
    lines.push(b'\n');
    let head = [lines.as_slice(), &first].concat();
    assert_eq!(read_exactly(&mut body, head.len()).await, head);
    assert!(body.frame().now_or_never().is_none());
    plain.release("g1");
    assert_eq!(
        read_rest(&mut body).await,
        [second.as_slice(), b"data: done\n\n"].concat()
    );
}

fn decompress(encoding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .unwrap();
        }
        "deflate" => {
            flate2::read::ZlibDecoder::new(data)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::Decompressor::new(data, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::decode_all(data).unwrap(),
        other => panic!("unknown encoding {other}"),
    }
    out
}

#[tokio::test]
async fn render_encodings() {
    let up = plain_upstream().await;
    let mut c = h1(&up).await;
    let hdr: &[(&str, &[u8])] = &[("x-api-key", NASTY)];
    for enc in ["gzip", "deflate", "br", "zstd"] {
        let resp = c
            .send_request(get(&format!("/render?from=x-api-key&encoding={enc}"), hdr))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-encoding"], enc);
        assert!(resp.headers().get("content-length").is_none());
        let body = collect_body(resp.into_body()).await.unwrap();
        assert_eq!(contains_any_rendering(&body, NASTY), None, "{enc}");
        let plain = decompress(enc, &body);
        assert_all_renderings(&plain, NASTY);
    }

    let resp = c
        .send_request(get("/render?from=x-api-key&encoding=bogus", hdr))
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-encoding"], "bogus");
    let body = collect_body(resp.into_body()).await.unwrap();
    assert_all_renderings(&body, NASTY);

    let resp = c
        .send_request(get("/render?from=x-api-key&encoding=lzma", hdr))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn render_compressed_sse_is_flushed_before_the_gate() {
    let up = plain_upstream().await;
    let mut c = h1(&up).await;
    let v: &[u8] = b"sk-gz-sse-abcdefghijkl";
    let resp = c
        .send_request(get(
            "/render?from=x-api-key&where=sse&encoding=gzip&gate=gz",
            &[("x-api-key", v)],
        ))
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let mut body = resp.into_body();
    let mut dec = flate2::write::GzDecoder::new(Vec::new());
    let first = [b"data: part1=".as_slice(), &v[..v.len() / 2]].concat();
    let got_first = tokio::time::timeout(Duration::from_secs(30), async {
        while dec.get_ref().len() < first.len() {
            let d = body.frame().await.unwrap().unwrap().into_data().unwrap();
            dec.write_all(&d).unwrap();
            dec.flush().unwrap();
        }
    })
    .await;
    assert!(
        got_first.is_ok(),
        "first SSE frame not decodable before gate"
    );
    assert_eq!(dec.get_ref(), &first);
    up.release("gz");
    while let Some(f) = body.frame().await {
        dec.write_all(&f.unwrap().into_data().unwrap()).unwrap();
    }
    let all = dec.finish().unwrap();
    assert_eq!(
        all,
        [b"data: part1=".as_slice(), v, b"\n\ndata: done\n\n"].concat()
    );
}

#[tokio::test]
async fn render_pad_64mib_puts_secret_at_the_end() {
    let up = plain_upstream().await;
    let mut c = h1(&up).await;
    let n: u64 = 64 * 1024 * 1024;
    let v: &[u8] = b"sk-pad-secret-value-0123";
    let resp = c
        .send_request(get(
            &format!("/render?from=x-api-key&pad={n}"),
            &[("x-api-key", v)],
        ))
        .await
        .unwrap();
    let cl: u64 = resp.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut body = resp.into_body();
    let mut seen = 0u64;
    let mut tail = Vec::new();
    let mut max_frame = 0;
    while let Some(f) = body.frame().await {
        let d = f.unwrap().into_data().unwrap();
        max_frame = max_frame.max(d.len());
        let filler = (n - seen.min(n)).min(d.len() as u64) as usize;
        assert!(d[..filler].iter().all(|b| *b == b'.'));
        tail.extend_from_slice(&d[filler..]);
        seen += d.len() as u64;
    }
    assert_eq!(seen, cl);
    assert_eq!(tail[0], b'\n');
    let expected: Vec<u8> = renderings(v)
        .into_iter()
        .flat_map(|(_, mut l)| {
            l.push(b'\n');
            l
        })
        .collect();
    assert_eq!(&tail[1..], &expected[..]);
    assert_eq!(cl, n + 1 + expected.len() as u64);
    // hyper may coalesce a few frames, but nothing near the whole body.
    assert!(max_frame <= 1024 * 1024, "max frame {max_frame}");
}

#[tokio::test]
async fn render_pad_with_compression_streams() {
    let up = plain_upstream().await;
    let mut c = h1(&up).await;
    let n: usize = 4 * 1024 * 1024 + 7;
    let v: &[u8] = b"sk-pad-zip-0123456789";
    for enc in ["gzip", "zstd", "br", "deflate"] {
        let resp = c
            .send_request(get(
                &format!("/render?from=x-api-key&pad={n}&encoding={enc}"),
                &[("x-api-key", v)],
            ))
            .await
            .unwrap();
        let (data, _) = frames(resp).await;
        // brotli keeps a whole 4 MiB window before emitting a meta-block.
        if enc != "br" {
            assert!(data.len() > 1, "{enc}: compressed body not streamed");
        }
        let plain = decompress(enc, &data.concat());
        assert!(plain[..n].iter().all(|b| *b == b'.'), "{enc}");
        assert_eq!(plain[n], b'\n');
        assert_all_renderings(&plain[n..], v);
        assert_eq!(contains_any_rendering(&plain[..n], v), None);
    }
}

#[tokio::test]
async fn render_split_sends_three_byte_frames() {
    let pki = TestPki::new();
    let up = tls_upstream(&pki).await;
    let hdr: &[(&str, &[u8])] = &[("x-api-key", NASTY)];
    let expected: Vec<u8> = renderings(NASTY)
        .into_iter()
        .flat_map(|(_, mut l)| {
            l.push(b'\n');
            l
        })
        .collect();

    let mut c2 = h2_tls(&up, &pki).await;
    let resp = c2
        .send_request(get2(&up, "/render?from=x-api-key&split=1", hdr))
        .await
        .unwrap();
    let (data, _) = frames(resp).await;
    assert!(data.iter().all(|d| d.len() <= 3));
    assert_eq!(data.len(), expected.len().div_ceil(3));
    assert_eq!(data.concat(), expected);

    let tcp = TcpStream::connect(up.addr()).await.unwrap();
    let tls = tls_over(tcp, "localhost", Arc::new(pki.client_config(&["http/1.1"]))).await;
    let mut c1: H1 = http1_handshake(tls).await.unwrap();
    let resp = c1
        .send_request(get("/render?from=x-api-key&split=1&chunked=1", hdr))
        .await
        .unwrap();
    assert!(resp.headers().get("content-length").is_none());
    let (data, _) = frames(resp).await;
    assert!(data.iter().all(|d| d.len() <= 3));
    assert_eq!(data.concat(), expected);

    // split + compression: the compressed bytes are split.
    let resp = c1
        .send_request(get("/render?from=x-api-key&split=1&encoding=br", hdr))
        .await
        .unwrap();
    let (data, _) = frames(resp).await;
    assert!(data.len() > 3 && data.iter().all(|d| d.len() <= 3));
    assert_eq!(decompress("br", &data.concat()), expected);
}

#[tokio::test]
async fn render_status_and_errors() {
    let up = plain_upstream().await;
    let mut c = h1(&up).await;
    let hdr: &[(&str, &[u8])] = &[("x-api-key", b"k-123")];
    let resp = c
        .send_request(req(
            "POST",
            "/render?from=x-api-key&status=418",
            hdr,
            b"ignored",
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::IM_A_TEAPOT);
    assert_all_renderings(&collect_body(resp.into_body()).await.unwrap(), b"k-123");
    for pq in [
        "/render",
        "/render?from=authorization",
        "/render?from=bad%20name",
        "/render?from=x-api-key&where=body,cookie",
    ] {
        let mut c = h1(&up).await;
        let resp = c.send_request(get(pq, hdr)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{pq}");
    }
}

// ---------------------------------------------------------------- detector

#[test]
fn detector_finds_every_form_at_every_alignment() {
    let mut rng = Rng(0x5eed_0001);
    for round in 0..50 {
        let secret = rng.bytes(24 + round % 5);
        for pre in 0..6 {
            let mut data = rng.bytes(pre);
            data.extend_from_slice(&secret);
            let suffix = rng.bytes(round % 4);
            data.extend_from_slice(&suffix);
            for (name, enc) in [
                ("std", STANDARD.encode(&data)),
                ("std-nopad", STANDARD_NO_PAD.encode(&data)),
                ("url", URL_SAFE.encode(&data)),
                ("url-nopad", URL_SAFE_NO_PAD.encode(&data)),
            ] {
                let hay = format!("<<{enc}>>");
                let found = contains_any_rendering(hay.as_bytes(), &secret);
                assert!(found.is_some(), "{name} pre={pre} round={round}");
                // Only base64 forms can be in there.
                assert!(found.unwrap().starts_with("base64"));
            }
        }
        // Text forms of the secret itself.
        let forms: Vec<Vec<u8>> = vec![
            secret.clone(),
            hex::encode(&secret).into_bytes(),
            hex::encode_upper(&secret).into_bytes(),
            secret
                .iter()
                .flat_map(|b| format!("%{b:02X}").into_bytes())
                .collect(),
            secret
                .iter()
                .flat_map(|b| format!("%{b:02x}").into_bytes())
                .collect(),
            secret
                .iter()
                .flat_map(|b| format!("\\u{b:04x}").into_bytes())
                .collect(),
            secret
                .iter()
                .flat_map(|b| format!("\\u{b:04X}").into_bytes())
                .collect(),
        ];
        for f in forms {
            let hay = [b"..".as_slice(), &f, b".."].concat();
            assert!(contains_any_rendering(&hay, &secret).is_some());
        }
    }
    // JSON escapes of a UTF-8 secret, as serde_json writes them.
    let s = "sk-\"quoted\"\\back/slash\ttab\u{1}";
    let js = serde_json::to_string(s).unwrap();
    assert_eq!(
        contains_any_rendering(js.as_bytes(), s.as_bytes()).as_deref(),
        Some("json")
    );
    let php = js.replace('/', "\\/");
    assert_eq!(
        contains_any_rendering(php.as_bytes(), s.as_bytes()).as_deref(),
        Some("json_slash")
    );
    let form = "sk-a+b%2Fc";
    assert_eq!(
        contains_any_rendering(form.as_bytes(), b"sk-a b/c").as_deref(),
        Some("form")
    );
    assert_eq!(contains_any_rendering(b"anything", b""), None);
    assert!(detection_patterns(b"x").iter().all(|(_, p)| !p.is_empty()));
}

#[test]
fn detector_has_no_false_positive_on_random_data() {
    let mut rng = Rng(0x0dd_ba11);
    let hay = rng.bytes(1024 * 1024);
    for _ in 0..8 {
        let secret = rng.bytes(24);
        assert_eq!(contains_any_rendering(&hay, &secret), None);
    }
    // And once embedded, it is found.
    let secret = rng.bytes(24);
    let mut hay2 = hay.clone();
    hay2[500_000..500_024].copy_from_slice(&secret);
    assert_eq!(
        contains_any_rendering(&hay2, &secret).as_deref(),
        Some("raw")
    );
    // Random printable text (base64 alphabet) is the adversarial case for
    // the base64 cores.
    let b64_hay = STANDARD.encode(rng.bytes(768 * 1024));
    for _ in 0..8 {
        let secret = rng.bytes(24);
        assert_eq!(contains_any_rendering(b64_hay.as_bytes(), &secret), None);
    }
}

// ------------------------------------------------------------ mock LLM APIs

/// Split an SSE stream into `(event name, data JSON)` pairs (`data: [DONE]`
/// is returned as `Value::Null`).
fn parse_sse(body: &[u8]) -> Vec<(Option<String>, serde_json::Value)> {
    let text = std::str::from_utf8(body).unwrap();
    assert!(text.ends_with("\n\n"));
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|ev| {
            let mut name = None;
            let mut data = None;
            for line in ev.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(if d == "[DONE]" {
                        serde_json::Value::Null
                    } else {
                        serde_json::from_str(d).unwrap()
                    });
                }
            }
            (name, data.unwrap())
        })
        .collect()
}

#[tokio::test]
async fn anthropic_mock_reflects_key() {
    let pki = TestPki::new();
    let up = tls_upstream(&pki).await;
    let key: &[u8] = b"sk-ant-api03-reflected-KEY-0123456789";
    let hdr: &[(&str, &[u8])] = &[
        ("x-api-key", key),
        ("content-type", b"application/json"),
        ("anthropic-version", b"2023-06-01"),
    ];
    let mut c = h2_tls(&up, &pki).await;
    let uri = format!("https://localhost:{}/v1/messages", up.addr().port());
    let body =
        br#"{"model":"claude-mock-1","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
    let resp = c.send_request(req("POST", &uri, hdr, body)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: serde_json::Value =
        serde_json::from_slice(&collect_body(resp.into_body()).await.unwrap()).unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "claude-mock-1");
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(v["content"][0]["type"], "text");
    let want = format!("key seen: {}", std::str::from_utf8(key).unwrap());
    assert_eq!(v["content"][0]["text"], want.as_str());
    assert_eq!(v["stop_reason"], "end_turn");
    assert!(v["stop_sequence"].is_null());
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0);
    let rec = up.received().pop().unwrap();
    assert_eq!(rec.header("x-api-key").unwrap().as_bytes(), key);
    assert_eq!(rec.body_len, body.len() as u64);

    // Streaming: one event per DATA frame; the key is split across deltas.
    let body = br#"{"model":"claude-mock-1","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let resp = c.send_request(req("POST", &uri, hdr, body)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (data, _) = frames(resp).await;
    for f in &data {
        assert_eq!(parse_sse(f).len(), 1, "one event per frame");
        assert!(!contains(f, key), "key must be split across events");
    }
    let events = parse_sse(&data.concat());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    let deltas = names
        .iter()
        .filter(|n| **n == "content_block_delta")
        .count();
    assert!(deltas >= 3);
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(std::iter::repeat_n("content_block_delta", deltas));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);
    for (n, d) in &events {
        assert_eq!(d["type"], n.as_deref().unwrap());
    }
    assert_eq!(events[0].1["message"]["model"], "claude-mock-1");
    let text: String = events
        .iter()
        .filter(|(n, _)| n.as_deref() == Some("content_block_delta"))
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(text, want);
    assert_eq!(
        events[events.len() - 2].1["delta"]["stop_reason"],
        "end_turn"
    );

    // Invalid JSON: an Anthropic error object.
    let resp = c
        .send_request(req("POST", &uri, hdr, b"{not json"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: serde_json::Value =
        serde_json::from_slice(&collect_body(resp.into_body()).await.unwrap()).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let resp = c
        .send_request(get2(&up, "/v1/messages", hdr))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn openai_mock_reflects_key() {
    let up = plain_upstream().await;
    let auth: &[u8] = b"Bearer sk-proj-reflected-KEY-abcdefghij";
    let hdr: &[(&str, &[u8])] = &[
        ("authorization", auth),
        ("content-type", b"application/json"),
    ];
    let mut c = h1(&up).await;
    let body = br#"{"model":"gpt-mock","messages":[{"role":"user","content":"hi"}]}"#;
    let resp = c
        .send_request(req("POST", "/v1/chat/completions", hdr, body))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: serde_json::Value =
        serde_json::from_slice(&collect_body(resp.into_body()).await.unwrap()).unwrap();
    let want = format!("key seen: {}", std::str::from_utf8(auth).unwrap());
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-mock");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], want.as_str());
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );

    let body = br#"{"model":"gpt-mock","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let resp = c
        .send_request(req("POST", "/v1/chat/completions", hdr, body))
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (data, _) = frames(resp).await;
    for f in &data {
        assert_eq!(parse_sse(f).len(), 1, "one chunk per frame");
        assert!(!contains(f, b"sk-proj-reflected-KEY-abcdefghij"));
    }
    let events = parse_sse(&data.concat());
    assert!(events.last().unwrap().1.is_null(), "ends with [DONE]");
    let chunks = &events[..events.len() - 1];
    for (name, c) in chunks {
        assert!(name.is_none());
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "gpt-mock");
    }
    assert_eq!(chunks[0].1["choices"][0]["delta"]["role"], "assistant");
    let contents: Vec<&str> = chunks
        .iter()
        .filter_map(|(_, c)| c["choices"][0]["delta"]["content"].as_str())
        .filter(|s| !s.is_empty())
        .collect();
    assert!(contents.len() >= 3);
    assert_eq!(contents.concat(), want);
    let last = &chunks[chunks.len() - 1].1;
    assert_eq!(last["choices"], serde_json::json!([]));
    assert!(last["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        chunks[chunks.len() - 2].1["choices"][0]["finish_reason"],
        "stop"
    );
}

const PY_SDK_CHECK: &str = r#"
import sys, anthropic, openai
base = sys.argv[1]
akey = "sk-ant-pytest-0123456789abcdef"
a = anthropic.Anthropic(api_key=akey, base_url=base, max_retries=0, timeout=30)
msgs = [{"role": "user", "content": "hi"}]
m = a.messages.create(model="claude-mock", max_tokens=16, messages=msgs)
assert m.type == "message" and m.role == "assistant", m
# Depending on the SDK version the key goes in x-api-key or as a bearer token.
want = m.content[0].text
assert m.content[0].type == "text" and want in ("key seen: " + akey, "key seen: Bearer " + akey), m
assert m.stop_reason == "end_turn" and m.usage.output_tokens > 0, m
events = list(a.messages.create(model="claude-mock", max_tokens=16, messages=msgs, stream=True))
assert [e.type for e in events][:2] == ["message_start", "content_block_start"], events
text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
assert text == want, text
with a.messages.stream(model="claude-mock", max_tokens=16, messages=msgs) as s:
    streamed = "".join(s.text_stream)
    final = s.get_final_message()
assert streamed == want and final.content[0].text == want, (streamed, final)
assert final.stop_reason == "end_turn", final

okey = "sk-proj-pytest-0123456789abcdef"
o = openai.OpenAI(api_key=okey, base_url=base + "/v1", max_retries=0, timeout=30)
want = "key seen: Bearer " + okey
c = o.chat.completions.create(model="gpt-mock", messages=msgs)
assert c.object == "chat.completion" and c.choices[0].message.content == want, c
assert c.choices[0].finish_reason == "stop" and c.usage.total_tokens > 0, c
chunks = list(o.chat.completions.create(model="gpt-mock", messages=msgs, stream=True,
                                        stream_options={"include_usage": True}))
text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
assert text == want, text
assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0, chunks[-1]
print("SDK-OK")
"#;

/// The official Python SDKs (anthropic, openai; in the repo venv) accept the
/// mocks' responses, streaming and not, over TLS trusting the test CA.
#[tokio::test]
async fn python_sdks_accept_llm_mocks() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test (it sets up the Python venv with the anthropic \
         and openai SDKs)",
        python.display()
    );
    let pki = TestPki::new();
    let up = tls_upstream(&pki).await;
    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg("-c")
        .arg(PY_SDK_CHECK)
        .arg(up.base_url())
        .env("SSL_CERT_FILE", pki.ca_cert_path())
        .env_remove("SSL_CERT_DIR")
        .env("NO_PROXY", "*")
        .env("no_proxy", "*")
        .kill_on_drop(true);
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "ANTHROPIC_BASE_URL",
        "OPENAI_BASE_URL",
    ] {
        cmd.env_remove(var);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("python SDK check timed out")
        .unwrap();
    assert!(
        out.status.success() && out.stdout.ends_with(b"SDK-OK\n"),
        "python SDK check failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = up.received();
    assert_eq!(recs.len(), 5); // 3 anthropic + 2 openai
    let ant = recs[0]
        .header("x-api-key")
        .or_else(|| recs[0].header("authorization"))
        .unwrap();
    assert!(ant.ends_with("sk-ant-pytest-0123456789abcdef"), "{ant}");
    assert_eq!(
        recs[3].header("authorization").as_deref(),
        Some("Bearer sk-proj-pytest-0123456789abcdef")
    );
}
