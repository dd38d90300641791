//! WebSocket through the proxy: server-to-client messages are scrubbed (text, binary,
//! fragmented, split across messages, close reasons), compression is never negotiated, and an
//! upgraded connection ends with the agent's token or with the policy that allowed it.
#![allow(clippy::unwrap_used)]

mod resp;

use std::time::Duration;

use credproxy_harness::{Harness, Setup, HOST};
use futures_util::{SinkExt, StreamExt};
use resp::{assert_clean, raw_h1, setup, PH, SECRET};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Open a WebSocket to HOST `path` through the proxy, with `headers` on the upgrade request.
async fn open(h: &Harness, bearer: &str, path: &str, headers: &[(&str, &str)]) -> Ws {
    let (tcp, status, _) = credproxy_testkit::connect_tunnel(
        h.addr(),
        &format!("{HOST}:443"),
        &[("Proxy-Authorization", bearer)],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let tls = credproxy_testkit::tls_over(tcp, HOST, h.proxy_client_config(&["http/1.1"])).await;
    let mut req = format!("wss://{HOST}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let (ws, resp) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::client_async(req, tls),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

/// Every message until the connection closes (the close frame's reason included as text).
async fn drain(ws: &mut Ws) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(60), ws.next())
        .await
        .expect("the connection was not closed")
    {
        match m {
            Ok(m) => {
                let close = m.is_close();
                out.push(m);
                if close {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    out
}

#[tokio::test]
async fn server_messages_are_scrubbed_in_every_shape() {
    let h = Harness::with(setup()).await;
    let mut ws = open(
        &h,
        &h.bearer,
        "/ws?send=x-api-key&close=1",
        &[("x-api-key", PH)],
    )
    .await;
    let msgs = drain(&mut ws).await;
    assert_eq!(
        h.upstream
            .received()
            .last()
            .unwrap()
            .header("x-api-key")
            .as_deref(),
        Some(SECRET)
    );
    let mut all = Vec::new();
    let mut deltas = String::new();
    let mut texts = Vec::new();
    for m in &msgs {
        match m {
            Message::Text(t) => {
                all.extend_from_slice(t.as_bytes());
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(t) {
                    if let Some(d) = v["delta"].as_str() {
                        deltas.push_str(d);
                    }
                }
                texts.push(t.to_string());
            }
            Message::Binary(b) => all.extend_from_slice(b),
            Message::Close(Some(c)) => all.extend_from_slice(c.reason.as_bytes()),
            _ => {}
        }
    }
    assert_clean("messages", &all, SECRET);
    assert_clean("concatenated deltas", deltas.as_bytes(), SECRET);
    assert_eq!(deltas, PH);
    assert!(texts.contains(&format!("text: {PH}")), "{texts:?}");
    assert!(texts.contains(&format!("frag: {PH}")), "{texts:?}");
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Message::Binary(b) if b == format!("bin: {PH}").as_bytes())),
        "{msgs:?}"
    );
    assert!(
        matches!(msgs.last(), Some(Message::Close(Some(c))) if c.reason == format!("bye {PH}")),
        "{msgs:?}"
    );
}

#[tokio::test]
async fn messages_still_echo_both_ways() {
    let h = Harness::with(setup()).await;
    let mut ws = open(&h, &h.bearer, "/ws", &[]).await;
    for i in 0..3 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(m.into_text().unwrap(), format!("hello {i}"));
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.into_data(), vec![0u8, 1, 2, 255]);
}

/// permessage-deflate would hide messages from the scrubber: the offer never reaches the
/// upstream, and a 101 that accepts an extension nobody offered is refused.
#[tokio::test]
async fn compression_is_never_negotiated() {
    let h = Harness::with(setup()).await;
    let _ws = open(
        &h,
        &h.bearer,
        "/ws",
        &[(
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits",
        )],
    )
    .await;
    let got = h.upstream.received();
    let r = got.last().unwrap();
    assert!(
        r.header("sec-websocket-extensions").is_none(),
        "the extension offer reached the upstream: {:?}",
        r.headers
    );

    let raw = raw_h1(
        &h,
        HOST,
        &format!(
            "GET /ws?extensions=permessage-deflate HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        ),
        Some(b"\r\n\r\n"),
    )
    .await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert!(
        text.contains("x-credproxy-reason: upstream_protocol"),
        "{text}"
    );
}

/// Threat A30: the upgraded connection does not outlive the token it was opened with.
#[tokio::test]
async fn the_connection_closes_when_the_token_expires() {
    // The proxy reads an adjustable clock: the test moves it past the token's expiry instead
    // of waiting for it.
    let clock = credproxy_core::Clock::adjustable();
    let h = Harness::with(Setup {
        clock: clock.clone(),
        ..setup()
    })
    .await;
    let ttl = Duration::from_secs(300);
    let short = h.token_for(credproxy_harness::AGENT, &[credproxy_harness::ROLE], ttl);
    let mut ws = open(&h, &format!("Bearer {short}"), "/ws", &[]).await;
    ws.send(Message::text("before expiry")).await.unwrap();
    // The echo comes back while the token is valid: the connection is open and relaying.
    let echo = tokio::time::timeout(Duration::from_secs(60), ws.next())
        .await
        .expect("no echo")
        .expect("closed before the echo")
        .unwrap();
    assert_eq!(echo.to_text().ok(), Some("before expiry"));
    clock.advance(ttl + Duration::from_secs(1));
    let mut msgs = vec![echo];
    msgs.extend(drain(&mut ws).await);
    assert_eq!(
        msgs.first().and_then(|m| m.to_text().ok()),
        Some("before expiry")
    );
    match msgs.last() {
        Some(Message::Close(Some(c))) => {
            assert_eq!(u16::from(c.code), 1008, "{c:?}");
            assert!(c.reason.contains("expired"), "{c:?}");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// Threat A30: a reload that no longer allows the destination ends open WebSockets to it.
#[tokio::test]
async fn the_connection_closes_when_the_policy_generation_no_longer_allows_it() {
    // No credential is bound to HOST, so removing it from the allowlist is a valid reload.
    let h = Harness::with(Setup::default()).await;
    let mut ws = open(&h, &h.bearer, "/ws", &[]).await;
    ws.send(Message::text("still allowed")).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.into_text().unwrap(), "still allowed");
    h.reload(|y| y.replace(&format!("  - {HOST}\n"), ""))
        .unwrap();
    let msgs = drain(&mut ws).await;
    match msgs.last() {
        Some(Message::Close(Some(c))) => {
            assert_eq!(u16::from(c.code), 1008, "{c:?}");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// Threat A30: a reload whose Rego policy no longer allows the upgrade ends open WebSockets
/// (the destination is still allowlisted: only the policy decision changed).
#[tokio::test]
async fn the_connection_closes_when_a_reloaded_policy_denies_it() {
    const ALLOW: &str = "package credproxy.authz\n\ndefault allow := false\n\nallow if input.identity\n\ndeny_reasons := set()\n";
    const DENY: &str = "package credproxy.authz\n\ndefault allow := false\n\ndeny_reasons contains \"maintenance: all requests are refused\" if true\n";
    let tmp = tempfile::tempdir().unwrap();
    let (allow_dir, deny_dir) = (tmp.path().join("allow"), tmp.path().join("deny"));
    for (dir, text) in [(&allow_dir, ALLOW), (&deny_dir, DENY)] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("authz.rego"), text).unwrap();
    }
    let h = Harness::with(Setup {
        extra_yaml: format!("policy:\n  dir: {}\n", allow_dir.display()),
        ..Setup::default()
    })
    .await;
    let mut ws = open(&h, &h.bearer, "/ws", &[]).await;
    ws.send(Message::text("allowed by policy")).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.into_text().unwrap(), "allowed by policy");
    let (from, to) = (
        allow_dir.display().to_string(),
        deny_dir.display().to_string(),
    );
    h.reload(|y| y.replace(&from, &to)).unwrap();
    let msgs = drain(&mut ws).await;
    match msgs.last() {
        Some(Message::Close(Some(c))) => {
            assert_eq!(u16::from(c.code), 1008, "{c:?}");
            assert!(c.reason.contains("policy"), "{c:?}");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}
