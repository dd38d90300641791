//! The scrub set: every response is scrubbed of every secret the proxy can inject, from the
//! first request on (after a restart too), on every host, and of previous values for a
//! while after a rotation — with a real OpenBao dev server for the rotation.
#![allow(clippy::unwrap_used)]

mod resp;

use std::sync::Arc;
use std::time::Duration;

use credproxy_harness::{Harness, MapEnv, Setup, HOST, OTHER};
use credproxy_proxy::{Proxy, ProxyOptions, RunningProxy};
use credproxy_testkit::OpenBao;
use resp::{assert_clean, credential, fetch_at, setup, Fetched, PH, SECRET};

async fn via(
    h: &Harness,
    addr: std::net::SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Fetched {
    fetch_at(
        addr,
        &h.bearer,
        h.proxy_client_config(&["h2"]),
        host,
        method,
        path,
        headers,
    )
    .await
}

/// A second proxy from the same configuration: a restarted process, with nothing in memory.
async fn restarted(h: &Harness, env: Vec<(String, String)>) -> RunningProxy {
    let yaml = h.yaml.replace("audit.db", "audit-restarted.db");
    let config = credproxy_config::Config::parse(&yaml, h.dir.path()).unwrap();
    Proxy::bind(
        config,
        ProxyOptions {
            resolver: None,
            env: Some(Arc::new(MapEnv(env.into_iter().collect()))),
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .spawn()
}

#[tokio::test]
async fn a_restarted_proxy_scrubs_a_stored_secret_before_any_injection() {
    let h = Harness::with(setup()).await;
    let stored = via(
        &h,
        h.addr(),
        "PUT",
        HOST,
        "/store/k?from=x-api-key",
        &[("x-api-key", PH)],
    )
    .await;
    assert_eq!(stored.status, 204);
    let again = restarted(&h, vec![("SECRET_KEY".into(), SECRET.into())]).await;
    assert!(again.wait_ready(Duration::from_secs(30)).await);
    // The first request of the new process carries no placeholder.
    let f = via(&h, again.tcp_addr().unwrap(), "GET", HOST, "/store/k", &[]).await;
    assert_eq!(f.status, 200);
    assert_clean("stored secret after a restart", &f.body, SECRET);
    assert_eq!(f.text(), PH);
}

#[tokio::test]
async fn a_stored_secret_served_by_another_allowed_host_is_scrubbed() {
    let h = Harness::with(setup()).await;
    // Stored through the API host it is bound to, served by another allowlisted name (the
    // API's object host) that no credential is bound to.
    let stored = via(
        &h,
        h.addr(),
        "PUT",
        HOST,
        "/store/k?from=x-api-key",
        &[("x-api-key", PH)],
    )
    .await;
    assert_eq!(stored.status, 204);
    let f = via(&h, h.addr(), "GET", OTHER, "/store/k", &[]).await;
    assert_eq!(f.status, 200);
    assert_clean("stored secret on another host", &f.body, SECRET);
    assert_eq!(f.text(), PH);
}

fn openbao_setup(bao: &OpenBao, limits: &[&str]) -> Setup {
    Setup {
        credentials: credential("key", PH, HOST, "{openbao: {path: creds/key, field: key}}"),
        env: vec![],
        extra_yaml: format!(
            "secrets:\n  cache_ttl: 0s\n  openbao:\n    address: {}\n    request_timeout: 2s\n    auth:\n      token_file: {}\n",
            bao.address(),
            bao.root_token_file().display()
        ),
        limits: limits.iter().map(|s| s.to_string()).collect(),
        ..Setup::default()
    }
}

#[tokio::test]
async fn after_a_rotation_in_openbao_the_previous_value_is_still_scrubbed() {
    const V1: &str = "sk-live-ROTATION-ONE-4a5b6c7d8e9f0a1b";
    const V2: &str = "sk-live-ROTATION-TWO-9f8e7d6c5b4a3f2e";
    let bao = OpenBao::start().await;
    bao.kv_put("secret", "creds/key", serde_json::json!({ "key": V1 }))
        .await;
    let h = Harness::with(openbao_setup(&bao, &[])).await;
    assert!(h.proxy.wait_ready(Duration::from_secs(30)).await);
    let stored = via(
        &h,
        h.addr(),
        "PUT",
        HOST,
        "/store/old?from=x-api-key",
        &[("x-api-key", PH)],
    )
    .await;
    assert_eq!(stored.status, 204);
    assert_eq!(
        h.upstream
            .received()
            .last()
            .unwrap()
            .header("x-api-key")
            .as_deref(),
        Some(V1)
    );

    // Rotate; the next injection sends the new value.
    bao.kv_put("secret", "creds/key", serde_json::json!({ "key": V2 }))
        .await;
    let stored = via(
        &h,
        h.addr(),
        "PUT",
        HOST,
        "/store/new?from=x-api-key",
        &[("x-api-key", PH)],
    )
    .await;
    assert_eq!(stored.status, 204);
    assert_eq!(
        h.upstream
            .received()
            .last()
            .unwrap()
            .header("x-api-key")
            .as_deref(),
        Some(V2)
    );

    // The upstream still serves what it stored under the old value.
    let f = via(&h, h.addr(), "GET", HOST, "/store/old", &[]).await;
    assert_clean("previous value", &f.body, V1);
    assert_eq!(f.text(), PH);
    let f = via(&h, h.addr(), "GET", OTHER, "/store/new", &[]).await;
    assert_clean("current value", &f.body, V2);
    assert_eq!(f.text(), PH);
}

#[tokio::test]
async fn requests_are_refused_until_the_scrub_set_is_loaded() {
    let bao = OpenBao::start().await;
    bao.kv_put("secret", "creds/key", serde_json::json!({ "key": SECRET }))
        .await;
    // OpenBao stops answering before the proxy starts: the values it would have to scrub
    // are unknown, so nothing is served.
    bao.pause().await;
    let h = Harness::with(openbao_setup(&bao, &[])).await;
    let f = via(&h, h.addr(), "GET", OTHER, "/echo", &[]).await;
    assert_eq!(f.status, 503, "{}", f.head);
    assert!(
        f.head.contains("x-credproxy-reason: scrub_set_unavailable"),
        "{}",
        f.head
    );
    assert!(f.text().contains("retry"), "{}", f.text());
    bao.resume().await;
    assert!(h.proxy.wait_ready(Duration::from_secs(60)).await);
    let f = via(&h, h.addr(), "GET", OTHER, "/echo", &[]).await;
    assert_eq!(f.status, 200, "{}", f.head);
}

#[tokio::test]
async fn a_rotation_is_learnt_at_the_next_refresh_without_any_injection() {
    const V1: &str = "sk-live-REFRESH-ONE-0a1b2c3d4e5f6a7b";
    const V2: &str = "sk-live-REFRESH-TWO-7b6a5f4e3d2c1b0a";
    let bao = OpenBao::start().await;
    bao.kv_put("secret", "creds/key", serde_json::json!({ "key": V1 }))
        .await;
    let mut setup = openbao_setup(&bao, &[]);
    setup.extra_yaml = setup
        .extra_yaml
        .replace("secrets:\n", "secrets:\n  scrub_refresh: 1s\n");
    let h = Harness::with(setup).await;
    assert!(h.proxy.wait_ready(Duration::from_secs(30)).await);
    // Rotated by the operator; someone else gives the new value to the upstream, which
    // serves it before this proxy ever injected it.
    bao.kv_put("secret", "creds/key", serde_json::json!({ "key": V2 }))
        .await;
    h.proxy.wait_scrub_refresh().await;
    let stored = via(
        &h,
        h.addr(),
        "PUT",
        OTHER,
        "/store/k?from=x-stored",
        &[("x-stored", V2)],
    )
    .await;
    assert_eq!(stored.status, 204);
    let f = via(&h, h.addr(), "GET", OTHER, "/store/k", &[]).await;
    assert_clean("the new value", &f.body, V2);
    assert_eq!(f.text(), PH);
    // And the value it replaced is still scrubbed.
    via(
        &h,
        h.addr(),
        "PUT",
        OTHER,
        "/store/old?from=x-stored",
        &[("x-stored", V1)],
    )
    .await;
    let f = via(&h, h.addr(), "GET", OTHER, "/store/old", &[]).await;
    assert_clean("the previous value", &f.body, V1);
}
