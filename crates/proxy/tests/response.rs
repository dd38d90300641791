//! The response side end to end: every way an upstream's answer could carry a secret back
//! to the agent — status line, upgrade headers, odd compression labels, decompression bombs,
//! event streams in any layout — through the real proxy to a real TLS upstream.
#![allow(clippy::unwrap_used)]

mod resp;

use std::time::Duration;

use credproxy_harness::{Harness, Setup, HOST};
use resp::{assert_clean, decode_lossy, fetch, raw_h1, setup, PH, SECRET};

/// Threat A1 (reflection), HTTP/1.1 status line: `HTTP/1.1 401 Invalid API key <secret>`.
#[tokio::test]
async fn the_http1_reason_phrase_never_carries_a_secret() {
    let h = Harness::with(Setup {
        upstream_h1_only: true,
        ..setup()
    })
    .await;
    let raw = raw_h1(
        &h,
        HOST,
        &format!(
            "GET /render?from=x-api-key&where=reason HTTP/1.1\r\nHost: {HOST}\r\nx-api-key: {PH}\r\nConnection: close\r\n"
        ),
        None,
    )
    .await;
    // The upstream really answered with the injected key in its reason phrase.
    let got = h.upstream.received();
    assert_eq!(
        got.last().unwrap().header("x-api-key").as_deref(),
        Some(SECRET)
    );
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 401 "), "{text}");
    assert_clean("status line", &raw, SECRET);
}

/// Threat A1, upgrade: the 101's headers (a realtime API echoing the key in
/// `Sec-WebSocket-Protocol`) are scrubbed like any response's.
#[tokio::test]
async fn switching_protocols_headers_are_scrubbed() {
    let h = Harness::with(setup()).await;
    let raw = raw_h1(
        &h,
        HOST,
        &format!(
            "GET /ws?reflect=x-api-key HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nx-api-key: {PH}\r\n"
        ),
        Some(b"\r\n\r\n"),
    )
    .await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert_eq!(
        h.upstream
            .received()
            .last()
            .unwrap()
            .header("x-api-key")
            .as_deref(),
        Some(SECRET)
    );
    assert_clean("101 headers", &raw, SECRET);
    assert!(
        text.to_ascii_lowercase()
            .contains(&format!("sec-websocket-protocol: {PH}")),
        "{text}"
    );
}

/// Threat A4: a `Content-Encoding` label that is not ASCII is not "identity".
#[tokio::test]
async fn a_non_ascii_content_encoding_is_refused_not_passed_as_identity() {
    let h = Harness::with(Setup {
        upstream_h1_only: true,
        ..setup()
    })
    .await;
    let f = fetch(
        &h,
        "/render?from=x-api-key&encoding=gzip&ce=gzip%C3%A9",
        &[("x-api-key", PH)],
    )
    .await;
    // Whatever came back, decoding it as gzip must not reveal the secret.
    assert_clean("body", &f.body, SECRET);
    assert_clean("gunzipped body", &decode_lossy("gzip", &f.body), SECRET);
    assert_eq!(f.status, 502, "{}", f.head);
    assert!(
        f.head.contains("x-credproxy-reason: upstream_encoding"),
        "{}",
        f.head
    );
}

/// Threat A4: `Transfer-Encoding: gzip, chunked` — hyper removes the chunking only, so the
/// body is gzip; it must be decoded and scrubbed, or refused.
#[tokio::test]
async fn a_gzip_transfer_coding_is_refused_not_passed_as_identity() {
    let h = Harness::with(Setup {
        upstream_h1_only: true,
        ..setup()
    })
    .await;
    let f = fetch(&h, "/render?from=x-api-key&te=gzip", &[("x-api-key", PH)]).await;
    assert_eq!(
        h.upstream
            .received()
            .last()
            .unwrap()
            .header("x-api-key")
            .as_deref(),
        Some(SECRET)
    );
    assert_clean("body", &f.body, SECRET);
    assert_clean("gunzipped body", &decode_lossy("gzip", &f.body), SECRET);
    assert_eq!(f.status, 502, "{}", f.head);
    assert!(
        f.head.contains("x-credproxy-reason: upstream_encoding"),
        "{}",
        f.head
    );
}

/// Read a streamed response event by event: the upstream sends event `i >= 1` only after the
/// client has seen event `i - 1` (gates), so an event the proxy holds back deadlocks the
/// exchange and the test fails on its timeout. No timing is measured.
async fn gated_events(h: &Harness, path: &str, gate: &str, events: usize) -> Vec<u8> {
    use http_body_util::BodyExt;
    let (tcp, status, _) =
        credproxy_testkit::connect_tunnel(h.addr(), &format!("{HOST}:443"), &h.auth_pairs())
            .await
            .unwrap();
    assert_eq!(status, 200);
    let tls = credproxy_testkit::tls_over(tcp, HOST, h.proxy_client_config(&["h2"])).await;
    let mut send = credproxy_testkit::http2_handshake::<_, http_body_util::Full<bytes::Bytes>>(tls)
        .await
        .unwrap();
    let resp = send
        .send_request(
            http::Request::get(format!("https://{HOST}{path}"))
                .header("x-api-key", PH)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut seen = Vec::new();
    for i in 0..events {
        let want = format!("data: event {i}\n\n");
        while memchr::memmem::find(&seen, want.as_bytes()).is_none() {
            let frame = tokio::time::timeout(Duration::from_secs(30), body.frame())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{path}: event {i} did not arrive before the upstream sent the next one; got {:?}",
                        String::from_utf8_lossy(&seen)
                    )
                })
                .expect("stream ended early")
                .unwrap();
            if let Some(d) = frame.data_ref() {
                seen.extend_from_slice(d);
            }
        }
        h.upstream.release(&format!("{gate}-{}", i + 1));
    }
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(30), body.frame())
        .await
        .unwrap()
    {
        if let Some(d) = frame.unwrap().data_ref() {
            seen.extend_from_slice(d);
        }
    }
    seen
}

/// Compressed event streams: each event reaches the agent as soon as it is decoded, not one
/// upstream flush later (the last two used to arrive together).
#[tokio::test]
async fn compressed_events_arrive_as_soon_as_they_are_decoded() {
    let h = Harness::with(setup()).await;
    for enc in ["identity", "gzip", "deflate", "br", "zstd"] {
        let gate = format!("z-{enc}");
        let seen = gated_events(
            &h,
            &format!("/sse?events=4&gate={gate}&encoding={enc}"),
            &gate,
            4,
        )
        .await;
        let text = String::from_utf8_lossy(&seen);
        assert_eq!(
            text, "data: event 0\n\ndata: event 1\n\ndata: event 2\n\ndata: event 3\n\n",
            "{enc}"
        );
    }
}

/// Threat A5/A4: decompression output is bounded; a small bomb is refused (502 when the
/// first bytes already exceed the bound), never streamed without limit.
#[tokio::test]
async fn decompression_bombs_are_refused() {
    let h = Harness::with(setup()).await;
    // A few hundred compressed bytes (one frame) that would decode to 128 MiB.
    for enc in ["br", "zstd"] {
        let f = fetch(
            &h,
            &format!("/bomb?encoding={enc}&size={}&whole=1", 128u64 << 20),
            &[("x-api-key", PH)],
        )
        .await;
        assert_eq!(f.status, 502, "{enc}: {}", f.head);
        assert!(
            f.head
                .contains("x-credproxy-reason: upstream_decompression_limit"),
            "{enc}: {}",
            f.head
        );
        assert!(f.body.len() < 4096, "{enc}");
    }
    for enc in ["br", "zstd", "gzip"] {
        // A bomb that starts innocently: the head may be out already, then the stream fails
        // (an error, not a silent end) well before the bomb's full size. (HTTP/2 drops a head
        // not yet written when the stream is reset.)
        let f = fetch(
            &h,
            &format!("/bomb?encoding={enc}&size={}", 128u64 << 20),
            &[("x-api-key", PH)],
        )
        .await;
        assert!(f.status == 200 || f.status == 0, "{enc}: {}", f.head);
        assert!(f.body.is_empty() || f.body.starts_with(b"ok\n"), "{enc}");
        assert!(
            f.error.is_some(),
            "{enc}: the stream ended without an error"
        );
        assert!(
            f.body.len() < 64 << 20,
            "{enc}: {} bytes streamed",
            f.body.len()
        );
    }
}

/// Threats A3/A5: a secret split across the events of a stream, in any layout: plain-text
/// events, JSON layouts the proxy has never heard of, NDJSON, CR-only line endings, events
/// over 1 MiB. What the client assembles (the concatenated text field) never holds it.
#[tokio::test]
async fn a_secret_split_across_events_is_scrubbed_in_any_layout() {
    let h = Harness::with(setup()).await;
    let pad = 2 << 20;
    let cases: &[(&str, &str, usize, &str)] = &[
        ("plain", "lf", 0, ""),
        ("plain", "cr", 0, ""),
        ("plain", "crlf", 0, ""),
        ("gemini", "lf", 0, ""),
        ("custom", "lf", 0, ""),
        ("custom", "cr", 0, ""),
        ("custom", "lf", 0, "2,20"),
        ("ndjson", "lf", 0, ""),
        ("ndjson-custom", "crlf", 0, ""),
        ("openai", "cr", 0, ""),
        ("anthropic", "crlf", 0, ""),
        ("openai", "lf", 0, "3,9,30"),
        ("custom", "lf", pad, ""),
        ("plain", "lf", pad, ""),
        ("gemini", "lf", pad, ""),
    ];
    for (layout, eol, pad, cuts) in cases {
        let mut path = format!("/stream?from=x-api-key&layout={layout}&eol={eol}&pad={pad}");
        if !cuts.is_empty() {
            path.push_str(&format!("&cuts={cuts}"));
        }
        let f = fetch(&h, &path, &[("x-api-key", PH)]).await;
        let case = format!("{layout} eol={eol} pad={pad} cuts={cuts}");
        assert_eq!(f.status, 200, "{case}: {}", f.head);
        assert!(f.error.is_none(), "{case}: {:?}", f.error);
        let text = credproxy_testkit::events::reassemble(layout, &f.body);
        assert_clean(&case, &text, SECRET);
        assert_clean(&case, &f.body, SECRET);
        let text = String::from_utf8_lossy(&text);
        let text = text.trim_start_matches('.');
        // The placeholder stands where the secret was; a split after the first characters
        // of a field the proxy does not know lets those characters through (never the rest).
        let leading = if *cuts == "2,20" && *layout == "custom" {
            &SECRET[..2]
        } else {
            ""
        };
        assert_eq!(text, format!("{leading}{PH}"), "{case}");
    }
}

/// Threat A5: an event larger than the scrubber's event limit ends the stream with an
/// error rather than passing unscrubbed.
#[tokio::test]
async fn an_event_over_the_limit_fails_the_stream_closed() {
    let h = Harness::with(setup()).await;
    for layout in ["custom", "plain", "ndjson"] {
        let f = fetch(
            &h,
            &format!("/stream?from=x-api-key&layout={layout}&pad={}", 17 << 20),
            &[("x-api-key", PH)],
        )
        .await;
        assert_eq!(f.status, 200, "{layout}");
        assert!(
            f.error.is_some(),
            "{layout}: the stream ended without an error"
        );
        let text = credproxy_testkit::events::reassemble(layout, &f.body);
        assert_clean(layout, &text, SECRET);
        assert_clean(layout, &f.body, SECRET);
    }
}
