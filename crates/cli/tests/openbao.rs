#![allow(clippy::unwrap_used)]
//! `credproxy openbao provision` against a real OpenBao dev server, then `serve` logging in
//! with the AppRole it set up and injecting a value it seeded.

mod support;

use std::path::{Path, PathBuf};

use credproxy_testkit::OpenBao;
use support::{
    args, assert_code, ca_init, curl, curl_body_and_code, mode, q, run, serve_config_base,
    start_serve, stderr, stdout, tls_upstream, ALLOWED, EXIT_USAGE,
};

const PLACEHOLDER: &str = "agent-vault-00000000-0000-0000-0000-0000000000b0";
const SEEDED: &str = "bao-seeded-secret-value-42";
const KV_PATH: &str = "credproxy-test/example";

/// The sections after the common base: dev identity, OpenBao with AppRole, one credential.
fn config_tail(bao: &OpenBao, out: &Path, jwks: &Path) -> String {
    format!(
        "identity:\n  oidc:\n    issuer: credproxy-dev\n    audiences: [credproxy]\n\
         \x20   algorithms: [ES256]\n    jwks_file: {}\n\
         audit:\n  path: audit.db\n\
         secrets:\n  openbao:\n    address: {}\n    auth:\n      approle:\n\
         \x20       role_id_file: {}\n        secret_id_file: {}\n\
         credentials:\n  - id: example\n    placeholder: {PLACEHOLDER}\n    type: api_key\n\
         \x20   header_name: x-api-key\n    bound_domains: [{ALLOWED}]\n\
         \x20   allowed_roles: [proxy-user]\n\
         \x20   source: {{openbao: {{path: {KV_PATH}, field: key}}}}\n",
        q(jwks.to_string_lossy()),
        q(bao.address()),
        q(out.join("role_id").to_string_lossy()),
        q(out.join("secret_id").to_string_lossy()),
    )
}

fn provision_args(
    bao: &OpenBao,
    config: &Path,
    out: &Path,
    seed: &Path,
) -> Vec<std::ffi::OsString> {
    args(&[
        &"openbao",
        &"provision",
        &"--address",
        &bao.address(),
        &"--admin-token-file",
        &bao.root_token_file(),
        &"--config",
        &config,
        &"--out-dir",
        &out,
        &"--seed",
        &seed,
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_is_idempotent_and_serve_injects_the_seeded_value() {
    let bao = OpenBao::start().await;
    let (pki, upstream) = tls_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("openbao");
    let state = dir.path().join("dev");
    let jwks = state.join("identity").join("jwks.json");

    // A dev issuer (as `credproxy dev` creates it) for the agent's token.
    let issuer = credproxy_identity::DevIssuer::load_or_create(&state.join("identity")).unwrap();
    std::fs::write(&jwks, issuer.jwks_json()).unwrap();

    ca_init(dir.path()).await;
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "{}{}",
            serve_config_base(&pki, &upstream),
            config_tail(&bao, &out, &jwks)
        ),
    )
    .unwrap();
    let seed = dir.path().join("seed.json");
    std::fs::write(
        &seed,
        serde_json::json!({ KV_PATH: { "key": SEEDED } }).to_string(),
    )
    .unwrap();

    let o = run(provision_args(&bao, &config, &out, &seed)).await;
    assert_code(&o, 0);
    let first = stdout(&o);
    for what in [
        "policy credproxy-read",
        "approle",
        "role_id",
        "secret_id",
        KV_PATH,
    ] {
        assert!(first.contains(what), "no change mentions {what}:\n{first}");
    }
    assert!(!first.contains("nothing to change"), "{first}");
    let secret_id = std::fs::read_to_string(out.join("secret_id")).unwrap();
    for (name, text) in [("stdout", &first), ("stderr", &stderr(&o))] {
        for secret in [SEEDED, bao.root_token(), secret_id.trim()] {
            assert!(!text.contains(secret), "{name} shows a secret:\n{text}");
        }
    }
    assert_eq!(mode(&out.join("role_id")), 0o400);
    assert_eq!(mode(&out.join("secret_id")), 0o400);
    let policy = bao
        .api_ok("GET", "sys/policies/acl/credproxy-read", None)
        .await;
    assert!(
        policy["data"]["policy"]
            .as_str()
            .unwrap()
            .contains(&format!("secret/data/{KV_PATH}")),
        "{policy}"
    );

    let o = run(provision_args(&bao, &config, &out, &seed)).await;
    assert_code(&o, 0);
    assert_eq!(
        stdout(&o),
        "nothing to change: OpenBao is already provisioned\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("secret_id")).unwrap(),
        secret_id
    );

    // serve logs in with the AppRole and injects the seeded value.
    let (mut proxy, addr) = start_serve(&config).await;
    // The AppRole login runs in the background; until it succeeds OpenBao reads fail closed.
    support::wait_logged(&mut proxy, "openbao login succeeded").await;
    let token = issuer
        .issue(
            "agent-a",
            &["proxy-user".to_owned()],
            std::time::Duration::from_secs(600),
        )
        .unwrap();
    let mut cmd = curl();
    cmd.args(["--proxy", &format!("http://agent-a:{token}@{addr}")])
        .arg("--cacert")
        .arg(dir.path().join("ca/ca.crt"))
        .args(["-H", &format!("x-api-key: {PLACEHOLDER}")])
        .arg(format!("https://{ALLOWED}/echo"));
    let (body, code) = curl_body_and_code(cmd).await;
    assert_eq!(code, "200", "{body}\n{}", proxy.stderr.text());
    let seen = upstream.received();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-api-key").as_deref(), Some(SEEDED));
    assert!(!body.contains(SEEDED), "{body}");
    proxy.stop().await;
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test]
async fn provision_usage_and_runtime_errors() {
    let dir = tempfile::tempdir().unwrap();
    let token = write(dir.path(), "token", "admin-token-s3cr3t\n");
    let out = dir.path().join("out");

    // No credential with an openbao source: nothing to grant.
    let config = write(
        dir.path(),
        "config.yaml",
        "listeners:\n  - name: a\n    tcp: \"127.0.0.1:0\"\n\
         ca: {cert_file: ca.crt, key_file: ca.key}\n\
         allowed_domains: [api.example.test]\n\
         identity: {danger_allow_anonymous: true}\n",
    );
    let o = run(args(&[
        &"openbao",
        &"provision",
        &"--address",
        &"http://127.0.0.1:1",
        &"--admin-token-file",
        &token,
        &"--config",
        &config,
        &"--out-dir",
        &out,
    ]))
    .await;
    assert_code(&o, EXIT_USAGE);
    assert!(stderr(&o).contains("openbao source"), "{}", stderr(&o));

    // Neither --config nor --path.
    let o = run(args(&[
        &"openbao",
        &"provision",
        &"--address",
        &"http://127.0.0.1:1",
        &"--admin-token-file",
        &token,
        &"--out-dir",
        &out,
    ]))
    .await;
    assert_code(&o, EXIT_USAGE);

    // A seed value that is not a string is named by path and field, without the value.
    let seed = write(dir.path(), "seed.json", r#"{"a/b": {"key": 123456789}}"#);
    let o = run(args(&[
        &"openbao",
        &"provision",
        &"--address",
        &"http://127.0.0.1:1",
        &"--admin-token-file",
        &token,
        &"--path",
        &"a/b",
        &"--out-dir",
        &out,
        &"--seed",
        &seed,
    ]))
    .await;
    assert_code(&o, EXIT_USAGE);
    assert!(stderr(&o).contains("\"key\""), "{}", stderr(&o));
    assert!(!stderr(&o).contains("123456789"), "{}", stderr(&o));

    // Nothing listens there: a runtime failure.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let o = run(args(&[
        &"openbao",
        &"provision",
        &"--address",
        &format!("http://127.0.0.1:{port}"),
        &"--admin-token-file",
        &token,
        &"--path",
        &"a/b",
        &"--out-dir",
        &out,
    ]))
    .await;
    assert_code(&o, 1);
    assert!(stderr(&o).contains("cannot reach"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("s3cr3t"), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_reads_openbao_credentials_with_a_token_file() {
    let bao = OpenBao::start().await;
    bao.kv_put(
        "secret",
        "dev/example",
        serde_json::json!({ "api": SEEDED }),
    )
    .await;
    let (pki, upstream) = tls_upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let mut extra = support::dev_upstream_args(&pki, &upstream);
    extra.extend(args(&[
        &"--openbao",
        &bao.address(),
        &"--openbao-token-file",
        &bao.root_token_file(),
        &"--credential",
        &format!("id=bao,openbao=dev/example#api,domain={ALLOWED},header=x-api-key"),
    ]));
    let (mut dev, env) = support::start_dev(&state, &extra, &[]).await;
    let placeholder = env["CREDPROXY_PLACEHOLDER_BAO"].clone();
    dev.stderr
        .wait_for("openbao login", |l| l.contains("openbao login succeeded"))
        .await;

    let mut cmd = curl();
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(&env)
        .args(["-H", &format!("x-api-key: {placeholder}")])
        .arg(format!("https://{ALLOWED}/echo"));
    let (body, code) = curl_body_and_code(cmd).await;
    assert_eq!(code, "200", "{body}");
    assert_eq!(
        upstream.received()[0].header("x-api-key").as_deref(),
        Some(SEEDED)
    );
    dev.stop().await;
}
