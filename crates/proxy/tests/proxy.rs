//! The core proxy end to end: real curl, reqwest and hyper clients through the proxy to a
//! real TLS upstream, over loopback with OS-assigned ports.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use credproxy_harness::{Harness, Setup, HOST, OTHER, PLAIN};
use credproxy_proxy::Resolve;
use credproxy_testkit::{
    connect_tunnel, fixed_sha256, pattern_byte, tls_over, TestPki, Upstream, UpstreamOptions,
    Validity,
};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bound every wait so a regression fails instead of hanging CI.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("operation finished in time")
}

#[tokio::test]
async fn curl_reaches_an_allowed_name_over_http1_and_http2() {
    let h = Harness::start().await;
    for (flag, want) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let c = h
            .curl(&[
                flag,
                "-w",
                "\n%{http_code} %{http_version}",
                &format!("https://{HOST}/echo"),
            ])
            .await;
        assert_eq!(c.code, 0, "{}", c.stderr);
        let text = c.text();
        assert!(text.ends_with(&format!("200 {want}")), "{text}");
        // The upstream leg negotiates HTTP/2 by ALPN whatever the agent leg speaks.
        assert!(text.starts_with("GET /echo HTTP/2.0"), "{text}");
    }
    assert_eq!(h.upstream.request_count(), 2);
}

#[tokio::test]
async fn unlisted_names_and_ip_literals_get_403_with_a_reason() {
    let h = Harness::start().await;
    let (_, status, body) = connect_tunnel(h.addr(), "unlisted.example.test:443", &h.auth_pairs())
        .await
        .unwrap();
    assert_eq!(status, 403);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("x-credproxy-reason: destination_not_allowed"),
        "{body}"
    );
    assert!(body.contains("not in the allowlist"), "{body}");
    assert!(body.contains("request id"), "{body}");

    for target in [
        "127.0.0.1:443",
        "127.1:443",
        "2130706433:443",
        "0x7f.0.0.1:443",
        "0177.0.0.1:443",
        "[::1]:443",
        "[::ffff:127.0.0.1]:443",
        "169.254.169.254:80",
    ] {
        let (_, status, body) = connect_tunnel(h.addr(), target, &h.auth_pairs())
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 403, "{target}: {body}");
        assert!(body.contains("ip_literal"), "{target}: {body}");
    }
    // A wrong port on an allowed name is not allowed either.
    let (_, status, _) = connect_tunnel(h.addr(), &format!("{HOST}:22"), &h.auth_pairs())
        .await
        .unwrap();
    assert_eq!(status, 403);
    // curl sees the 403 on its CONNECT.
    let c = h.get("https://unlisted.example.test/").send().await;
    assert_ne!(c.exit, 0, "{c}");
    assert_eq!(c.connect, 403, "{c}");
    assert_eq!(h.upstream.connections(), 0);
}

#[tokio::test]
async fn host_or_sni_different_from_connect_target_is_421() {
    let h = Harness::start().await;
    // Host header names another (allowed) host than the tunnel's.
    let c = h
        .get(format!("https://{HOST}/echo"))
        .header("Host", OTHER)
        .send()
        .await;
    assert_eq!(c.status, 421, "{c}");
    assert!(c.text().contains("authority_mismatch") || c.text().contains("does not match"));

    // SNI differs: curl CONNECTs to OTHER but sends SNI and Host for HOST. The leaf is minted
    // for the CONNECT name, so curl must skip verification (-k) to get as far as a request.
    let connect_to = format!("{HOST}:443:{OTHER}:443");
    let c = h
        .get(format!("https://{HOST}/echo"))
        .curl_args(&["-k", "--connect-to", &connect_to])
        .send()
        .await;
    assert_eq!(c.status, 421, "{c}");
    assert!(c.text().contains("TLS SNI"), "{c}");
    assert_eq!(h.upstream.request_count(), 0);

    // Without -k the client refuses the leaf: it is valid for the CONNECT name only.
    let c = h
        .get(format!("https://{HOST}/echo"))
        .curl_args(&["--connect-to", &connect_to])
        .send()
        .await;
    assert_eq!(c.exit, 60, "certificate problem expected: {c}");
}

#[tokio::test]
async fn upstream_certificate_failures_are_502_and_nothing_is_sent() {
    let other_pki = TestPki::new_untrusted();
    // The harness trusts its own PKI; start extra upstreams with certs from it where they
    // must be trusted-but-wrong, and from another PKI where they must be untrusted.
    let h0 = Harness::start().await;
    let expired = Upstream::start(UpstreamOptions::tls(
        h0.pki.issue(&["expired.example.test"], Validity::Expired),
    ))
    .await;
    let wrong_host = Upstream::start(UpstreamOptions::tls(
        h0.pki
            .issue(&["somewhere-else.example.test"], Validity::Valid),
    ))
    .await;
    let untrusted = Upstream::start(UpstreamOptions::tls(
        other_pki.issue(&["untrusted.example.test"], Validity::Valid),
    ))
    .await;
    // Build a proxy that trusts h0's PKI and pins the three names.
    let h = Harness::with(Setup {
        allow: vec![
            "expired.example.test".into(),
            "wronghost.example.test".into(),
            "untrusted.example.test".into(),
        ],
        resolve: vec![
            ("expired.example.test".into(), expired.addr()),
            ("wronghost.example.test".into(), wrong_host.addr()),
            ("untrusted.example.test".into(), untrusted.addr()),
        ],
        extra_ca: vec![h0.pki.ca_cert_path().to_path_buf()],
        ..Setup::default()
    })
    .await;
    for (name, up) in [
        ("expired.example.test", &expired),
        ("wronghost.example.test", &wrong_host),
        ("untrusted.example.test", &untrusted),
    ] {
        let c = h.get(format!("https://{name}/echo")).send().await;
        assert_eq!(c.status, 502, "{name}: {c}");
        assert!(c.text().contains("could not be verified"), "{name}: {c}");
        assert_eq!(up.request_count(), 0, "{name} must receive no request");
        assert_eq!(up.tls_handshakes(), 0, "{name}: no completed handshake");
    }
}

#[tokio::test]
async fn hop_by_hop_and_proxy_authorization_never_reach_the_upstream() {
    let h = Harness::start().await;
    let c = h
        .get(format!("https://{HOST}/echo"))
        .proxy_header("Proxy-Authorization", &h.bearer)
        .header("Proxy-Authorization", "Bearer inner-token")
        .header("Connection", "x-drop-me")
        .header("X-Drop-Me", 1)
        .header("Keep-Alive", "timeout=5")
        .header("X-Kept", "yes")
        .curl_args(&["--http1.1"])
        .send()
        .await;
    assert_eq!(c.exit, 0, "{c}");
    // Plain HTTP carries Proxy-Authorization on the request itself.
    let p = h
        .get(format!("http://{PLAIN}/echo"))
        .header("Proxy-Authorization", &h.bearer)
        .header("Connection", "x-drop-me")
        .header("X-Drop-Me", 1)
        .send()
        .await;
    assert_eq!(p.exit, 0, "{p}");
    let mut all = h.upstream.received();
    all.extend(h.plain.received());
    assert_eq!(all.len(), 2);
    for r in &all {
        for v in r
            .headers
            .iter()
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        {
            assert!(
                !v.contains(&h.token),
                "the agent's token reached the upstream"
            );
        }
    }
    for r in all {
        for banned in [
            "proxy-authorization",
            "x-drop-me",
            "keep-alive",
            "connection",
            "proxy-connection",
        ] {
            assert!(
                r.header(banned).is_none(),
                "{banned} reached the upstream: {:?}",
                r.headers
            );
        }
    }
    assert_eq!(
        h.upstream.received()[0].header("x-kept").as_deref(),
        Some("yes")
    );
}

#[tokio::test]
async fn plain_http_goes_through_the_same_allowlist() {
    let h = Harness::start().await;
    let c = h.get(format!("http://{PLAIN}/echo")).send().await;
    assert_eq!(c.status, 200, "{c}");
    assert!(c.text().starts_with("GET /echo HTTP/1.1"), "{c}");
    let c = h.get("http://unlisted.example.test/echo").send().await;
    assert_eq!(c.status, 403, "{c}");
    let c = h.get("http://127.0.0.1/").send().await;
    assert_eq!(c.status, 403, "{c}");
    // Absolute-form with a Host header for another host: refused.
    let c = h
        .get(format!("http://{PLAIN}/echo"))
        .header("Host", HOST)
        .send()
        .await;
    assert_eq!(c.status, 421, "{c}");
    assert_eq!(h.plain.request_count(), 1);
}

#[tokio::test]
async fn non_proxy_requests_get_400_with_guidance() {
    let h = Harness::start().await;
    let mut s = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = within(s.read(&mut buf)).await.unwrap();
    let t = String::from_utf8_lossy(&buf[..n]);
    assert!(t.starts_with("HTTP/1.1 400"), "{t}");
    assert!(t.contains("this is an HTTP proxy"), "{t}");

    let mut s = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
    s.write_all(format!("GET https://{HOST}/echo HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let n = within(s.read(&mut buf)).await.unwrap();
    let t = String::from_utf8_lossy(&buf[..n]);
    assert!(t.starts_with("HTTP/1.1 400"), "{t}");
    assert!(t.contains("CONNECT"), "{t}");
}

#[tokio::test]
async fn sse_events_reach_the_client_before_the_upstream_finishes() {
    let h = Harness::start().await;
    let resp = h
        .reqwest()
        .get(format!("https://{HOST}/sse?events=3&gate=g"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut seen = String::new();
    // Event 0 must arrive while the upstream is blocked before event 1.
    for i in 0..3 {
        while !seen.contains(&format!("data: event {i}\n\n")) {
            let chunk = within(stream.next()).await.expect("stream open").unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert!(!seen.contains(&format!("event {}", i + 1)));
        h.upstream.release(&format!("g-{}", i + 1));
    }
    // The stream then ends with nothing more than the three events.
    while let Some(chunk) = within(stream.next()).await {
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert_eq!(seen, "data: event 0\n\ndata: event 1\n\ndata: event 2\n\n");
}

#[tokio::test]
async fn large_bodies_stream_both_ways_byte_identical() {
    let h = Harness::start().await;
    const N: u64 = 64 * 1024 * 1024;
    let client = h.reqwest();

    // Download: hash as it arrives.
    let resp = client
        .get(format!("https://{HOST}/fixed/{N}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.content_length(), Some(N));
    let mut hasher = sha2::Sha256::new();
    let mut len = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = within(stream.next()).await {
        let chunk = chunk.unwrap();
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    assert_eq!(len, N);
    assert_eq!(hex::encode(hasher.finalize()), fixed_sha256(N));

    // Upload: a generated stream, never held in memory as a whole.
    let chunks = futures_util::stream::iter((0..N).step_by(1 << 20).map(|start| {
        let v: Vec<u8> = (start..start + (1 << 20)).map(pattern_byte).collect();
        Ok::<_, std::io::Error>(bytes::Bytes::from(v))
    }));
    let resp = client
        .post(format!("https://{HOST}/sha256"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    let text = within(resp.text()).await.unwrap();
    assert_eq!(text, format!("{} {N}", fixed_sha256(N)));
}

#[tokio::test]
async fn websocket_echo_through_the_tunnel_and_no_tunnel_without_101() {
    let h = Harness::start().await;
    let (tcp, status, _) = connect_tunnel(h.addr(), &format!("{HOST}:443"), &h.auth_pairs())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let tls = tls_over(tcp, HOST, h.proxy_client_config(&["http/1.1"])).await;
    let (mut ws, resp) = within(tokio_tungstenite::client_async(
        format!("wss://{HOST}/ws"),
        tls,
    ))
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        "hello over the proxy",
    ))
    .await
    .unwrap();
    let echoed = within(ws.next()).await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "hello over the proxy");

    // The upstream answers 200 instead of 101: the agent gets that response, not a tunnel.
    let (tcp, _, _) = connect_tunnel(h.addr(), &format!("{HOST}:443"), &h.auth_pairs())
        .await
        .unwrap();
    let tls = tls_over(tcp, HOST, h.proxy_client_config(&["http/1.1"])).await;
    let err = within(tokio_tungstenite::client_async(
        format!("wss://{HOST}/ws?refuse=1"),
        tls,
    ))
    .await
    .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 200),
        other => panic!("expected an HTTP error, got {other}"),
    }

    // h2c and other upgrades are refused outright.
    let c = h
        .get(format!("https://{HOST}/echo"))
        .curl_args(&["--http1.1"])
        .header("Upgrade", "h2c")
        .header("Connection", "Upgrade")
        .send()
        .await;
    assert_eq!(c.status, 400, "{c}");
}

#[tokio::test]
async fn slowloris_connection_is_closed_at_the_header_timeout() {
    let h = Harness::with(Setup {
        limits: vec!["header_read_timeout: 1s".into()],
        ..Setup::default()
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
    s.write_all(format!("GET http://{PLAIN}/echo HTTP/1.1\r\nHost: ").as_bytes())
        .await
        .unwrap();
    // The proxy must end the connection by itself; the outer bound only stops a hang.
    let mut buf = vec![0u8; 1024];
    let mut total = 0;
    loop {
        match within(s.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    let _ = total;
    assert_eq!(h.plain.request_count(), 0);

    // Same inside a tunnel: TLS done, request head never finished.
    let (tcp, status, _) = connect_tunnel(h.addr(), &format!("{HOST}:443"), &h.auth_pairs())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let mut tls = tls_over(tcp, HOST, h.proxy_client_config(&["http/1.1"])).await;
    tls.write_all(b"GET /echo HTTP/1.1\r\nHost: ")
        .await
        .unwrap();
    let r = within(tls.read(&mut buf)).await;
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert_eq!(h.upstream.request_count(), 0);
}

/// Read until the agent's side is closed (bounded).
async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match within(s.read(&mut buf)).await {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&all).into_owned(),
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// A request head over `limits.max_header_bytes` is answered by the proxy's own answer path
/// (reason label, body with the request id, `Connection: close`, the audit record), never by hyper's bare
/// 431, and never reaches an upstream: on the proxy listener, after a good request on the
/// same connection, with a poisoned head, and inside a tunnel.
#[tokio::test]
async fn oversized_headers_get_431() {
    let h = Harness::with(Setup {
        limits: vec!["max_header_bytes: 16384".into()],
        ..Setup::default()
    })
    .await;
    let big = "a".repeat(20_000);
    let auth = &h.bearer;
    let answered = |t: &str| {
        assert!(t.starts_with("HTTP/1.1 431"), "{t}");
        assert!(t.contains("x-credproxy-reason: headers_too_large"), "{t}");
        assert!(t.to_ascii_lowercase().contains("connection: close"), "{t}");
        assert!(
            t.contains("credproxy: request headers are too large (request id "),
            "{t}"
        );
        // Nothing of the refused head is echoed.
        assert!(!t.contains("aaaaaaaaaa"), "{t}");
    };

    // Alone, and after a good request answered on the same connection.
    let good = format!(
        "GET http://{PLAIN}/echo HTTP/1.1\r\nHost: {PLAIN}\r\nProxy-Authorization: {auth}\r\n\r\n"
    );
    let bad = format!("GET http://{PLAIN}/echo HTTP/1.1\r\nHost: {PLAIN}\r\nProxy-Authorization: {auth}\r\nX-Big: {big}\r\n\r\n");
    // A head that is both poisoned (a bare LF) and too large.
    let poisoned =
        format!("GET http://{PLAIN}/echo HTTP/1.1\nHost: {PLAIN}\r\nProxy-Authorization: {auth}\r\nX-Big: {big}\r\n\r\n");
    for (stream, good_first) in [(&bad, false), (&bad, true), (&poisoned, false)] {
        let mut s = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
        if good_first {
            s.write_all(good.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = within(s.read(&mut buf)).await.unwrap();
            let t = String::from_utf8_lossy(&buf[..n]);
            assert!(t.starts_with("HTTP/1.1 200"), "{t}");
        }
        s.write_all(stream.as_bytes()).await.unwrap();
        answered(&read_to_close(&mut s).await);
    }
    assert_eq!(h.plain.request_count(), 1, "only the good request went out");

    // A head of exactly the limit is served.
    let fill = 16384
        - format!("GET http://{PLAIN}/echo HTTP/1.1\r\nHost: {PLAIN}\r\nProxy-Authorization: {auth}\r\nX-Fill: \r\n\r\n").len();
    let exact = format!(
        "GET http://{PLAIN}/echo HTTP/1.1\r\nHost: {PLAIN}\r\nProxy-Authorization: {auth}\r\nX-Fill: {}\r\n\r\n",
        "b".repeat(fill)
    );
    assert_eq!(exact.len(), 16384);
    let mut s = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
    s.write_all(exact.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = within(s.read(&mut buf)).await.unwrap();
    let t = String::from_utf8_lossy(&buf[..n]);
    assert!(t.starts_with("HTTP/1.1 200"), "{t}");
    assert_eq!(h.plain.request_count(), 2);

    // Inside the tunnel too.
    let c = h
        .get(format!("https://{HOST}/echo"))
        .curl_args(&["--http1.1"])
        .header("X-Big", &big)
        .send()
        .await;
    assert_eq!(c.status, 431, "{c}");
    assert_eq!(c.reason.as_deref(), Some("headers_too_large"), "{c}");
    assert_eq!(h.upstream.request_count(), 0);

    // Each refusal is recorded like any other.
    h.proxy.flush_audit().await;
    let records = credproxy_audit::query::list(
        &h.dir.path().join("audit.db"),
        &credproxy_audit::query::Filter::default(),
    )
    .unwrap();
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r.outcome.as_ref().is_some_and(|o| o.status == Some(431)))
        .collect();
    assert_eq!(refused.len(), 4, "{records:#?}");
    assert!(
        refused
            .iter()
            .all(|r| r.outcome.as_ref().unwrap().reason == "headers_too_large"),
        "{refused:#?}"
    );
}

#[derive(Debug)]
struct FixedResolver(IpAddr);

impl Resolve for FixedResolver {
    fn resolve(
        &self,
        _host: String,
        _port: u16,
    ) -> Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
        let ip = self.0;
        Box::pin(async move { Ok(vec![ip]) })
    }
}

#[tokio::test]
async fn names_resolving_to_private_addresses_are_refused_unless_allowed() {
    // A name that is allowlisted but not pinned resolves (through the injected resolver) to
    // loopback, where the upstream listens.
    let probe = Harness::start().await;
    let port = probe.upstream.addr().port();
    let name = "rebind.example.test";
    let up = Upstream::start(UpstreamOptions::tls(
        probe.pki.issue(&[name], Validity::Valid),
    ))
    .await;
    let port2 = up.addr().port();
    let _ = port;
    let setup = |allow_private: bool| Setup {
        allow: vec![format!("{name}:{port2}")],
        extra_ca: vec![probe.pki.ca_cert_path().to_path_buf()],
        upstream: if allow_private {
            vec!["allow_private_networks: [127.0.0.0/8]".into()]
        } else {
            vec![]
        },
        resolver: Some(Arc::new(FixedResolver("127.0.0.1".parse().unwrap()))),
        ..Setup::default()
    };
    let h = Harness::with(setup(false)).await;
    let c = h.get(format!("https://{name}:{port2}/echo")).send().await;
    assert_eq!(c.status, 403, "{c}");
    assert!(c.text().contains("private or local address"), "{c}");
    assert_eq!(up.connections(), 0);

    let h = Harness::with(setup(true)).await;
    let c = h.get(format!("https://{name}:{port2}/echo")).send().await;
    assert_eq!(c.status, 200, "{c}");
    assert_eq!(up.request_count(), 1);
}

#[tokio::test]
async fn keep_alive_tunnel_carries_many_requests_and_metrics_count_them() {
    let h = Harness::with(Setup {
        admin: true,
        ..Setup::default()
    })
    .await;
    let urls: Vec<String> = (0..10)
        .map(|i| format!("https://{HOST}/fixed/{i}"))
        .collect();
    let mut args: Vec<&str> = vec!["--http1.1"];
    args.extend(urls.iter().map(String::as_str));
    let c = h.curl(&args).await;
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert_eq!(h.upstream.request_count(), 10);
    // The upstream leg is pooled: ten requests, one upstream connection and handshake.
    assert_eq!(h.upstream.connections(), 1);
    assert_eq!(h.upstream.tls_handshakes(), 1);
    let _ = h.get("https://unlisted.example.test/").send().await;

    let admin = h.proxy.admin_addr().unwrap();
    let body = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains(r#"credproxy_requests_total{outcome="forwarded",reason="ok"} 10"#),
        "{body}"
    );
    assert!(
        body.contains(r#"reason="destination_not_allowed"} 1"#),
        "{body}"
    );
    assert!(body.contains("credproxy_tunnels_total 1"), "{body}");
    assert!(
        body.contains("credproxy_leaf_cache_misses_total 1"),
        "{body}"
    );
    // The built-in policy reads nothing that differs between the ten requests: one decision
    // evaluated, nine answered from the generation's decision cache.
    assert!(
        body.contains("credproxy_policy_cache_misses_total 1\n"),
        "{body}"
    );
    assert!(
        body.contains("credproxy_policy_cache_hits_total 9\n"),
        "{body}"
    );
    assert!(
        body.contains("credproxy_policy_cache_entries 1\n"),
        "{body}"
    );
    assert!(body.contains("credproxy_open_connections"), "{body}");
    assert!(
        body.contains("credproxy_request_duration_seconds_bucket"),
        "{body}"
    );
    let ok = reqwest::get(format!("http://{admin}/healthz"))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn connection_limit_answers_503() {
    let h = Harness::with(Setup {
        limits: vec!["max_connections: 2".into()],
        ..Setup::default()
    })
    .await;
    // Two tunnels hold both slots (a 200 proves each was accepted).
    let (_a, s1, _) = connect_tunnel(h.addr(), &format!("{HOST}:443"), &h.auth_pairs())
        .await
        .unwrap();
    let (_b, s2, _) = connect_tunnel(h.addr(), &format!("{HOST}:443"), &h.auth_pairs())
        .await
        .unwrap();
    assert_eq!((s1.as_u16(), s2.as_u16()), (200, 200));
    let (_, s3, body) = connect_tunnel(h.addr(), &format!("{HOST}:443"), &h.auth_pairs())
        .await
        .unwrap();
    assert_eq!(s3, 503, "{}", String::from_utf8_lossy(&body));
    // The one response path: the reason's message and the request id, like every refusal.
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("connection limit") && body.contains("(request id "),
        "{body}"
    );
}

#[tokio::test]
async fn http2_inside_the_tunnel_with_a_raw_hyper_client() {
    let h = Harness::start().await;
    let (tcp, _, _) = connect_tunnel(h.addr(), &format!("{HOST}:443"), &h.auth_pairs())
        .await
        .unwrap();
    let tls = tls_over(tcp, HOST, h.proxy_client_config(&["h2"])).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut send = credproxy_testkit::http2_handshake::<_, http_body_util::Full<bytes::Bytes>>(tls)
        .await
        .unwrap();
    for i in 0..3 {
        let req = http::Request::get(format!("https://{HOST}/fixed/{}", 1000 + i))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = within(send.send_request(req)).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 1000 + i);
    }
    // An h2 request whose :authority names another host is refused on its stream.
    let req = http::Request::get(format!("https://{OTHER}/echo"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = within(send.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 421);
    let _: SocketAddr = h.addr();
}
