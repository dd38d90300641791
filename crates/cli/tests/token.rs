#![allow(clippy::unwrap_used)]
//! `credproxy token`: client credentials against a real OIDC provider (panva/oidc-provider),
//! the token used through `credproxy serve`; dev tokens accepted by `credproxy dev`.

mod support;

use std::net::SocketAddr;
use std::path::Path;

use credproxy_testkit::{OidcProvider, OidcProviderOptions, TestClient};
use support::{
    args, assert_code, ca_init, curl, curl_body_and_code, output, run, serve_config_base,
    start_dev, start_serve, stderr, stdout, tls_upstream, ALLOWED, EXIT_USAGE,
};

const CLIENT: &str = "agent-a";

async fn provider() -> OidcProvider {
    OidcProvider::start(OidcProviderOptions {
        clients: vec![TestClient::new(CLIENT, &["proxy-user"])],
        ..OidcProviderOptions::default()
    })
    .await
}

fn is_jwt(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// curl through `proxy` (a URL with credentials) to the upstream's /echo; (body, status).
async fn via_proxy(proxy: &str, ca: &Path) -> (String, String) {
    let mut cmd = curl();
    cmd.args(["--proxy", proxy, "--cacert"])
        .arg(ca)
        .arg(format!("https://{ALLOWED}/echo"));
    curl_body_and_code(cmd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_token_works_through_serve() {
    let oidc = provider().await;
    let (pki, upstream) = tls_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("client-secret");
    std::fs::write(&secret_file, format!("{CLIENT}-secret\n")).unwrap();
    let issuer = oidc.issuer();

    let o = run(args(&[
        &"token",
        &"--issuer",
        &issuer,
        &"--client-id",
        &CLIENT,
        &"--client-secret-file",
        &secret_file,
    ]))
    .await;
    assert_code(&o, 0);
    let token = stdout(&o).trim_end().to_owned();
    assert!(is_jwt(&token), "not a JWT: {token:?}");
    assert_eq!(stdout(&o), format!("{token}\n"));
    assert!(!stdout(&o).contains("agent-a-secret") && !stderr(&o).contains("agent-a-secret"));

    // serve, verifying tokens from that issuer.
    ca_init(dir.path()).await;
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "{}identity:\n  oidc:\n    issuer: {issuer}\n    audiences: [credproxy]\n",
            serve_config_base(&pki, &upstream)
        ),
    )
    .unwrap();
    let (mut proxy, addr) = start_serve(&config).await;
    // Keys are fetched in the background; until then tokens get 503 (fail closed).
    support::wait_logged(&mut proxy, "OIDC keys loaded").await;
    let ca = dir.path().join("ca/ca.crt");

    let (body, code) = via_proxy(&format!("http://{CLIENT}:{token}@{addr}"), &ca).await;
    assert_eq!(code, "200", "{body}");
    assert!(body.starts_with("GET /echo"), "{body}");

    // --proxy-url prints exactly what curl --proxy (or HTTPS_PROXY) takes.
    let o = run(args(&[
        &"token",
        &"--token-url",
        &oidc.token_url(),
        &"--client-id",
        &CLIENT,
        &"--client-secret-file",
        &secret_file,
        &"--proxy-url",
        &format!("http://{addr}"),
    ]))
    .await;
    assert_code(&o, 0);
    let url = stdout(&o).trim_end().to_owned();
    let rest = url
        .strip_prefix(&format!("http://{CLIENT}:"))
        .unwrap_or_else(|| panic!("{url}"));
    let (tok, host) = rest.rsplit_once('@').unwrap();
    assert!(is_jwt(tok), "{url}");
    assert_eq!(host, addr.to_string());
    let (_, code) = via_proxy(&url, &ca).await;
    assert_eq!(code, "200");

    // Without a token the proxy asks for one.
    let mut cmd = curl();
    cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_connect}", "--proxy"])
        .arg(format!("http://{addr}"))
        .arg("--cacert")
        .arg(&ca)
        .arg(format!("https://{ALLOWED}/echo"));
    let o = output(cmd, "curl").await;
    assert_eq!(stdout(&o), "407", "{}", stderr(&o));
    assert_eq!(upstream.request_count(), 2);

    proxy.stop().await;
}

#[tokio::test]
async fn a_refused_or_unreachable_provider_exits_1_with_the_reason() {
    let oidc = provider().await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("wrong-secret");
    std::fs::write(&secret_file, "not-the-secret\n").unwrap();

    let o = run(args(&[
        &"token",
        &"--issuer",
        &oidc.issuer(),
        &"--client-id",
        &CLIENT,
        &"--client-secret-file",
        &secret_file,
    ]))
    .await;
    assert_code(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("invalid_client"), "{err}");
    assert!(!err.contains("not-the-secret"), "{err}");
    assert!(o.stdout.is_empty(), "{}", stdout(&o));

    // Nothing listens on a port we just released.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let o = run(args(&[
        &"token",
        &"--token-url",
        &format!("http://127.0.0.1:{port}/token"),
        &"--client-id",
        &CLIENT,
        &"--client-secret-file",
        &secret_file,
    ]))
    .await;
    assert_code(&o, 1);
    assert!(stderr(&o).contains("cannot reach"), "{}", stderr(&o));

    // Usage errors: no provider, a missing secret file, a bad proxy URL.
    for a in [
        args(&[
            &"token",
            &"--client-id",
            &CLIENT,
            &"--client-secret-file",
            &secret_file,
        ]),
        args(&[
            &"token",
            &"--issuer",
            &oidc.issuer(),
            &"--client-id",
            &CLIENT,
            &"--client-secret-file",
            &dir.path().join("missing"),
        ]),
        args(&[
            &"token",
            &"--issuer",
            &oidc.issuer(),
            &"--client-id",
            &CLIENT,
            &"--client-secret-file",
            &secret_file,
            &"--proxy-url",
            &"https://127.0.0.1:1",
        ]),
        args(&[&"token", &"--dev", &"--client-id", &CLIENT]),
    ] {
        let o = run(&a).await;
        assert_code(&o, EXIT_USAGE);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_tokens_are_accepted_by_the_dev_proxy() {
    let (pki, upstream) = tls_upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");

    // Before `dev` ran there is no issuer, and none is created.
    let o = run(args(&[&"token", &"--dev", &"--state-dir", &state])).await;
    assert_code(&o, 1);
    assert!(stderr(&o).contains("credproxy dev"), "{}", stderr(&o));
    assert!(!state.join("identity").exists());

    let (mut dev, env) = start_dev(&state, &support::dev_upstream_args(&pki, &upstream), &[]).await;
    let (_, addr) = env["HTTPS_PROXY"].rsplit_once('@').unwrap();
    let addr: SocketAddr = addr.parse().unwrap();
    let ca = state.join("ca/ca.crt");

    let o = run(args(&[
        &"token",
        &"--dev",
        &"--state-dir",
        &state,
        &"--agent",
        &"agent-x",
        &"--role",
        &"dev",
        &"--ttl",
        &"5m",
        &"--proxy-url",
        &format!("http://{addr}"),
    ]))
    .await;
    assert_code(&o, 0);
    let url = stdout(&o).trim_end().to_owned();
    assert!(url.starts_with("http://agent-x:"), "{url}");
    let (body, code) = via_proxy(&url, &ca).await;
    assert_eq!(code, "200", "{body}");

    // A plain token (default agent) works as the password of any user name.
    let o = run(args(&[&"token", &"--dev", &"--state-dir", &state])).await;
    assert_code(&o, 0);
    let token = stdout(&o).trim_end().to_owned();
    assert!(is_jwt(&token), "{token}");
    let (_, code) = via_proxy(&format!("http://whoever:{token}@{addr}"), &ca).await;
    assert_eq!(code, "200");

    dev.stop().await;
}
