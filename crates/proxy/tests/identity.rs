//! Agent identity through the proxy: tokens from a real OpenID provider (oidc-provider on
//! Node), Bearer and Basic-password forms, per-request expiry inside a tunnel, listener
//! binding, and 407s that say what to do without leaking verifier internals.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use credproxy_harness::{Harness, Setup, AGENT, HOST, ROLE};
use credproxy_testkit::oidc::{OidcProvider, OidcProviderOptions, TestClient};
use credproxy_testkit::{connect_tunnel, tls_over};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("operation finished in time")
}

fn oidc_identity(p: &OidcProvider) -> String {
    format!(
        "identity:\n  oidc:\n    issuer: {}\n    audiences: [credproxy]\n    roles_claim: realm_access.roles\n    agent_claim: azp\n    leeway: 0s\n",
        p.issuer()
    )
}

#[tokio::test]
async fn real_provider_tokens_work_as_bearer_and_as_proxy_url_password() {
    let provider = OidcProvider::start(OidcProviderOptions {
        clients: vec![TestClient::new("agent-a", &[ROLE])],
        ..OidcProviderOptions::default()
    })
    .await;
    let h = Harness::with(Setup {
        identity: Some(oidc_identity(&provider)),
        ..Setup::default()
    })
    .await;
    let token = provider.token("agent-a").await;
    // The proxy loads the provider's keys in the background; wait for that, not a fixed time.
    assert!(
        h.proxy.wait_ready(Duration::from_secs(30)).await,
        "JWKS never loaded"
    );
    // Basic, with the token as password: what HTTPS_PROXY=http://agent:<jwt>@host:port sends.
    let c = h
        .get(format!("https://{HOST}/echo"))
        .token(&token)
        .send()
        .await;
    assert_eq!(c.status, 200, "{c}");
    // Bearer on the CONNECT.
    let c = h
        .get(format!("https://{HOST}/echo"))
        .token("")
        .proxy_header("Proxy-Authorization", format!("Bearer {token}"))
        .send()
        .await;
    assert_eq!(c.status, 200, "{c}");
    // A token from the same provider for another audience is refused.
    let other = provider
        .token_for_resource("agent-a", Some("urn:other"))
        .await;
    let c = h
        .get(format!("https://{HOST}/echo"))
        .token(&other)
        .send()
        .await;
    assert_eq!(c.connect, 407, "{c}");
}

#[tokio::test]
async fn missing_or_bad_token_gets_407_with_challenges_and_no_internals() {
    let h = Harness::start().await;
    for (label, extra) in [
        ("missing", vec![]),
        ("garbage", vec![("Proxy-Authorization", "Bearer not.a.jwt")]),
        ("wrong scheme", vec![("Proxy-Authorization", "Digest abc")]),
    ] {
        let (_, status, head) = connect_tunnel(h.addr(), &format!("{HOST}:443"), &extra)
            .await
            .unwrap();
        let head = String::from_utf8_lossy(&head).to_string();
        assert_eq!(status, 407, "{label}: {head}");
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.contains("proxy-authenticate: bearer realm=\"credproxy\""),
            "{label}: {head}"
        );
        assert!(
            lower.contains("proxy-authenticate: basic realm=\"credproxy\""),
            "{label}: {head}"
        );
        let body = head.split("\r\n\r\n").nth(1).unwrap_or("");
        let body = body.split(" (request id").next().unwrap();
        insta::assert_snapshot!(format!("407_{}", label.replace(' ', "_")), body);
    }
    assert_eq!(h.upstream.connections(), 0);
}

#[tokio::test]
async fn ten_requests_in_one_tunnel_share_one_connect() {
    let h = Harness::start().await;
    let urls: Vec<String> = (0..10)
        .map(|i| format!("https://{HOST}/fixed/{i}"))
        .collect();
    let mut args: Vec<&str> = vec!["--http1.1", "-w", "%{num_connects} "];
    args.extend(urls.iter().map(String::as_str));
    let c = h.curl(&args).await;
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert_eq!(h.upstream.request_count(), 10);
    // curl reports one new connection for the first transfer and reuse after.
    let text = c.text();
    let connects: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(
        connects.iter().filter(|c| **c == "1").count(),
        1,
        "{connects:?}"
    );
}

#[tokio::test]
async fn a_token_expiring_mid_tunnel_gets_407_and_the_connection_closes() {
    // The proxy reads an adjustable clock: the test moves it past the token's expiry instead
    // of sleeping until then.
    let clock = credproxy_core::Clock::adjustable();
    let h = Harness::with(Setup {
        clock: clock.clone(),
        ..Setup::default()
    })
    .await;
    let ttl = Duration::from_secs(60);
    let token = h.token_for(AGENT, &[ROLE], ttl);
    let (tcp, status, _) = connect_tunnel(
        h.addr(),
        &format!("{HOST}:443"),
        &[("Proxy-Authorization", &format!("Bearer {token}"))],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let mut tls = tls_over(tcp, HOST, h.proxy_client_config(&["http/1.1"])).await;
    let req = format!("GET /fixed/5 HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = within(tls.read(&mut buf)).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Past the token's expiry.
    clock.advance(ttl + Duration::from_secs(1));
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    loop {
        match within(tls.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    let t = String::from_utf8_lossy(&all);
    assert!(t.starts_with("HTTP/1.1 407"), "{t}");
    assert!(t.to_ascii_lowercase().contains("connection: close"), "{t}");
    assert!(t.contains("expired"), "{t}");
    assert_eq!(h.upstream.request_count(), 1);
}

#[tokio::test]
async fn a_listener_bound_to_one_agent_refuses_another_agents_token() {
    let h = Harness::with(Setup {
        listener_agent: Some("agent-b".into()),
        ..Setup::default()
    })
    .await;
    let c = h.get(format!("https://{HOST}/echo")).send().await;
    assert_eq!(c.connect, 403, "{c}");
    let b = h.token_for("agent-b", &[ROLE], Duration::from_secs(600));
    let c = h.get(format!("https://{HOST}/echo")).token(&b).send().await;
    assert_eq!(c.status, 200, "{c}");
}

#[tokio::test]
async fn plain_http_authenticates_every_request() {
    let h = Harness::start().await;
    let url = format!("http://{}/echo", credproxy_harness::PLAIN);
    let c = h.get(&url).token("").send().await;
    assert_eq!(c.status, 407, "{c}");
    let c = h.get(&url).send().await;
    assert_eq!(c.status, 200, "{c}");
    assert_eq!(h.plain.request_count(), 1);
}

#[tokio::test]
async fn provider_down_means_503_then_recovery_without_restart() {
    let port = credproxy_testkit::oidc::free_port();
    // The verifier's loader retries on the proxy's clock: the test moves it past the retry
    // delay instead of waiting for it.
    let clock = credproxy_core::Clock::adjustable();
    let h = Harness::with(Setup {
        identity: Some(format!(
            "identity:\n  oidc:\n    issuer: http://127.0.0.1:{port}\n    audiences: [credproxy]\n"
        )),
        clock: clock.clone(),
        ..Setup::default()
    })
    .await;
    let c = h
        .get(format!("https://{HOST}/echo"))
        .token("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6IngifQ.eyJzdWIiOiJ4In0.c2ln")
        .send()
        .await;
    assert_eq!(c.connect, 503, "{c}");
    assert!(
        !h.proxy.wait_ready(Duration::ZERO).await,
        "ready without the provider's keys"
    );
    let provider = OidcProvider::start(OidcProviderOptions {
        clients: vec![TestClient::new("agent-a", &[ROLE])],
        port,
        ..OidcProviderOptions::default()
    })
    .await;
    // Past the longest retry delay (30 s): the loader tries again and finds the keys. An
    // advance that lands while an attempt is in flight is not waited for by that attempt, so
    // advance again until the keys are there (bounded).
    let step = Duration::from_secs(31);
    let mut ready = false;
    for _ in 0..20 {
        provider.advance(step).await;
        clock.advance(step);
        if h.proxy.wait_ready(Duration::from_secs(3)).await {
            ready = true;
            break;
        }
    }
    assert!(ready, "the verifier never loaded the provider's keys");
    let token = provider.token("agent-a").await;
    let c = h
        .get(format!("https://{HOST}/echo"))
        .token(&token)
        .send()
        .await;
    assert_eq!(c.status, 200, "{c}");
}
