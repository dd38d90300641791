//! The store and `provision` against a real OpenBao dev server (started per test by the
//! testkit harness on OS-assigned ports).
//!
//! Waits are bounded polls of observable state (readiness, counters) or `tokio::time` waits
//! to a cache-TTL boundary, never sleeps standing in for synchronisation with the server.
#![allow(clippy::unwrap_used)]

use credproxy_core::Clock;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use credproxy_secrets::provision::{provision, ProvisionOptions, ProvisionReport};
use credproxy_secrets::{
    OpenBaoAuth, OpenBaoConfig, ProcessEnv, SecretError, SecretSource, SecretStore, SecretsConfig,
};
use credproxy_testkit::OpenBao;
use serde_json::json;
use tokio::time::Instant;

const CANARY: &str = "sk-canary-7f3a9c1e5b";
const CANARY_OTHER: &str = "canary-other-field-42d1";

// ---------------------------------------------------------------------------------------------
// Log capture: one global subscriber writing into a buffer, so tests can grep every line any
// task logged (the auth task runs on whatever thread the runtime picks).

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogBuf;

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_tracing() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "debug,credproxy_secrets=trace",
            ))
            .with_ansi(false)
            .with_writer(|| LogBuf)
            .init();
    });
}

fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn bao_source(path: &str, field: &str) -> SecretSource {
    SecretSource::OpenBao {
        path: path.to_string(),
        field: field.to_string(),
        version: None,
    }
}

fn openbao_config(bao: &OpenBao, auth: OpenBaoAuth) -> OpenBaoConfig {
    OpenBaoConfig {
        address: bao.address(),
        ca_file: bao.ca_file(),
        namespace: None,
        auth,
        kv_mount: "secret".to_string(),
        request_timeout: Duration::from_secs(3),
    }
}

fn store_with(cfg: OpenBaoConfig, cache_ttl: Duration) -> SecretStore {
    store_with_clock(cfg, cache_ttl, Clock::system())
}

/// A store whose cache ages are read from `clock` (an adjustable clock reaches the end of the
/// TTL without waiting for it).
fn store_with_clock(cfg: OpenBaoConfig, cache_ttl: Duration, clock: Clock) -> SecretStore {
    SecretStore::with_clock(
        SecretsConfig {
            openbao: Some(cfg),
            cache_ttl,
        },
        Arc::new(ProcessEnv),
        clock,
    )
    .unwrap()
}

fn write_file(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap();
}

fn approle_auth(out_dir: &Path) -> OpenBaoAuth {
    OpenBaoAuth::AppRole {
        role_id_file: out_dir.join("role_id"),
        secret_id_file: out_dir.join("secret_id"),
        mount: "approle".to_string(),
    }
}

fn provision_opts(bao: &OpenBao, out_dir: &Path, paths: &[&str]) -> ProvisionOptions {
    ProvisionOptions {
        address: bao.address(),
        ca_file: bao.ca_file(),
        admin_token: bao.root_token().to_string(),
        kv_mount: "secret".to_string(),
        paths: paths.iter().map(|p| p.to_string()).collect(),
        policy_name: "credproxy-read".to_string(),
        approle_mount: "approle".to_string(),
        role_name: "credproxy".to_string(),
        token_ttl: Duration::from_secs(300),
        token_max_ttl: Duration::from_secs(3600),
        out_dir: out_dir.to_path_buf(),
        seed: None,
    }
}

fn seed(entries: &[(&str, &[(&str, &str)])]) -> BTreeMap<String, BTreeMap<String, String>> {
    entries
        .iter()
        .map(|(path, fields)| {
            (
                path.to_string(),
                fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        })
        .collect()
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
async fn eventually(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_str(store: &SecretStore, source: &SecretSource) -> Result<String, SecretError> {
    store
        .get(source)
        .await
        .map(|s| String::from_utf8(s.expose().to_vec()).unwrap())
}

/// Logs in with the files `provision` wrote, as the proxy would, and returns the token.
async fn approle_login(bao: &OpenBao, out_dir: &Path) -> String {
    let role_id = std::fs::read_to_string(out_dir.join("role_id")).unwrap();
    let secret_id = std::fs::read_to_string(out_dir.join("secret_id")).unwrap();
    let (status, body) = bao
        .api_as(
            "",
            "POST",
            "auth/approle/login",
            Some(json!({"role_id": role_id.trim(), "secret_id": secret_id.trim()})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["auth"]["client_token"].as_str().unwrap().to_string()
}

// ---------------------------------------------------------------------------------------------
// Token-file auth.

#[tokio::test]
async fn token_file_auth_reads_fields_versions_and_classifies_errors() {
    init_tracing();
    let bao = OpenBao::start().await;
    bao.api_ok(
        "PUT",
        "sys/policies/acl/reader",
        Some(json!({"policy": "path \"secret/data/app/*\" { capabilities = [\"read\"] }"})),
    )
    .await;
    bao.kv_put("secret", "app/llm", json!({"key": "v1-value"}))
        .await;
    bao.kv_put(
        "secret",
        "app/llm",
        json!({"key": "v2-value", "num": 7, "empty": ""}),
    )
    .await;
    bao.kv_put("secret", "other/x", json!({"key": "not-for-you"}))
        .await;
    let token = bao.create_token(&["reader"], "1h").await;
    let token_file = bao.dir().join("proxy-token");
    write_file(&token_file, &format!("{token}\n"));

    let store = store_with(
        openbao_config(&bao, OpenBaoAuth::TokenFile(token_file)),
        Duration::from_secs(30),
    );
    assert!(store.wait_openbao_ready(Duration::from_secs(10)).await);
    assert_eq!(store.openbao_ready(), Some(true));

    assert_eq!(
        get_str(&store, &bao_source("app/llm", "key"))
            .await
            .unwrap(),
        "v2-value"
    );
    let pinned = SecretSource::OpenBao {
        path: "app/llm".into(),
        field: "key".into(),
        version: Some(1),
    };
    assert_eq!(get_str(&store, &pinned).await.unwrap(), "v1-value");

    let cases = [
        (bao_source("app/llm", "nope"), "secret_invalid", "nope"),
        (bao_source("app/llm", "num"), "secret_invalid", "num"),
        (bao_source("app/llm", "empty"), "secret_invalid", "empty"),
        (
            bao_source("app/missing", "key"),
            "secret_not_found",
            "app/missing",
        ),
        (
            SecretSource::OpenBao {
                path: "app/llm".into(),
                field: "key".into(),
                version: Some(99),
            },
            "secret_not_found",
            "app/llm",
        ),
        (
            bao_source("other/x", "key"),
            "secret_unavailable",
            "other/x",
        ),
        (
            bao_source("app/../other/x", "key"),
            "secret_invalid",
            "app/../other/x",
        ),
    ];
    for (source, reason, named) in cases {
        let e = store.get(&source).await.unwrap_err();
        assert_eq!(e.reason(), reason, "{source:?}: {e}");
        assert!(e.to_string().contains(named), "{e} does not name {named}");
    }
    // A permission problem is not a dead token: no re-login happened.
    assert_eq!(store.stats().logins, 1);
    assert_eq!(store.openbao_ready(), Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_openbao_request() {
    init_tracing();
    let bao = OpenBao::start().await;
    bao.kv_put("secret", "app/llm", json!({"key": "shared"}))
        .await;
    let store = store_with(
        openbao_config(&bao, OpenBaoAuth::TokenFile(bao.root_token_file())),
        Duration::from_secs(30),
    );
    assert!(store.wait_openbao_ready(Duration::from_secs(10)).await);
    let source = bao_source("app/llm", "key");
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (store, source) = (store.clone(), source.clone());
            tokio::spawn(async move { store.get(&source).await.unwrap() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().expose(), b"shared");
    }
    assert_eq!(store.stats().fetches, 1);
}

#[tokio::test]
async fn token_file_is_reread_after_the_token_is_revoked() {
    init_tracing();
    let bao = OpenBao::start().await;
    bao.kv_put("secret", "app/llm", json!({"key": "value"}))
        .await;
    let first = bao.create_token(&["root"], "1h").await;
    let token_file = bao.dir().join("proxy-token");
    write_file(&token_file, &first);
    let store = store_with(
        openbao_config(&bao, OpenBaoAuth::TokenFile(token_file.clone())),
        Duration::ZERO,
    );
    let source = bao_source("app/llm", "key");
    assert_eq!(get_str(&store, &source).await.unwrap(), "value");

    // The operator rotates the token: the old one is revoked, the file holds a new one.
    let second = bao.create_token(&["root"], "1h").await;
    write_file(&token_file, &second);
    bao.api_ok("POST", "auth/token/revoke", Some(json!({ "token": first })))
        .await;
    assert_eq!(get_str(&store, &source).await.unwrap(), "value");
    assert_eq!(store.stats().logins, 2);
}

// ---------------------------------------------------------------------------------------------
// Provisioning and AppRole.

#[tokio::test]
async fn provision_is_idempotent_and_writes_0400_files() {
    init_tracing();
    let bao = OpenBao::start().await;
    let out = tempfile::tempdir().unwrap();
    let mut opts = provision_opts(&bao, out.path(), &["openclaw/llm", "openclaw/gh"]);
    // A fresh mount, so "enable kv-v2" is exercised too (the dev server pre-mounts secret/).
    opts.kv_mount = "creds".to_string();
    opts.paths.push("openclaw/llm".to_string());
    opts.seed = Some(seed(&[("openclaw/llm", &[("key", "seeded-1")])]));

    let first = provision(&opts).await.unwrap();
    let text = first.changes.join("\n");
    for expected in [
        "enabled kv-v2 secrets engine at creds/",
        "wrote policy credproxy-read (2 paths)",
        "enabled approle auth at approle/",
        "created approle role credproxy",
        "wrote role_id to",
        "generated a new secret_id",
        "seeded creds/openclaw/llm (fields key)",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    for name in ["role_id", "secret_id"] {
        let mode = std::fs::metadata(out.path().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400, "{name}");
    }
    let secret_id = std::fs::read_to_string(out.path().join("secret_id")).unwrap();

    let second = provision(&opts).await.unwrap();
    assert_eq!(
        second,
        ProvisionReport::default(),
        "second run changed things"
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("secret_id")).unwrap(),
        secret_id,
        "an existing valid secret_id is kept"
    );

    // Only what differs is touched: a new seed value, a missing secret_id file.
    opts.seed = Some(seed(&[("openclaw/llm", &[("key", "seeded-2")])]));
    std::fs::remove_file(out.path().join("secret_id")).unwrap();
    let third = provision(&opts).await.unwrap();
    assert_eq!(third.changes.len(), 2, "{:?}", third.changes);
    assert!(third.changes[0].starts_with("generated a new secret_id"));
    assert!(third.changes[0].contains("was missing"));
    assert_eq!(third.changes[1], "seeded creds/openclaw/llm (fields key)");
    let (_, body) = bao.api("GET", "creds/data/openclaw/llm", None).await;
    assert_eq!(body["data"]["data"]["key"], "seeded-2");
    assert_eq!(body["data"]["metadata"]["version"], 2);

    // A changed path set rewrites the policy and nothing else.
    opts.paths.push("openclaw/new".to_string());
    let fourth = provision(&opts).await.unwrap();
    assert_eq!(
        fourth.changes,
        vec!["updated policy credproxy-read (now 3 paths)".to_string()]
    );
}

#[tokio::test]
async fn provisioned_approle_reads_its_paths_and_nothing_else() {
    init_tracing();
    let bao = OpenBao::start().await;
    let out = tempfile::tempdir().unwrap();
    let mut opts = provision_opts(&bao, out.path(), &["openclaw/llm"]);
    opts.seed = Some(seed(&[("openclaw/llm", &[("key", "approle-value")])]));
    provision(&opts).await.unwrap();
    bao.kv_put("secret", "openclaw/other", json!({"key": "x"}))
        .await;

    // Through the store.
    let store = store_with(
        openbao_config(&bao, approle_auth(out.path())),
        Duration::from_secs(30),
    );
    assert!(store.wait_openbao_ready(Duration::from_secs(10)).await);
    assert_eq!(
        get_str(&store, &bao_source("openclaw/llm", "key"))
            .await
            .unwrap(),
        "approle-value"
    );
    let denied = store
        .get(&bao_source("openclaw/other", "key"))
        .await
        .unwrap_err();
    assert!(
        matches!(denied, SecretError::PermissionDenied { .. }),
        "{denied}"
    );

    // And directly with the AppRole's token against the HTTP API.
    let token = approle_login(&bao, out.path()).await;
    let (status, _) = bao
        .api_as(&token, "GET", "secret/data/openclaw/llm", None)
        .await;
    assert_eq!(status, 200, "read of a credential path");
    for (method, path, body) in [
        ("GET", "secret/data/openclaw/other", None),
        ("GET", "secret/metadata/openclaw/llm", None),
        ("LIST", "secret/metadata/openclaw", None),
        (
            "POST",
            "secret/data/openclaw/llm",
            Some(json!({"data": {"key": "overwritten"}})),
        ),
        ("DELETE", "secret/data/openclaw/llm", None),
        ("GET", "sys/policies/acl/credproxy-read", None),
    ] {
        let (status, _) = bao.api_as(&token, method, path, body).await;
        assert_eq!(status, 403, "{method} {path} was not refused");
    }
    let (_, body) = bao.api("GET", "secret/data/openclaw/llm", None).await;
    assert_eq!(body["data"]["data"]["key"], "approle-value");
}

#[tokio::test]
async fn approle_token_is_renewed_then_replaced_at_max_ttl() {
    init_tracing();
    let bao = OpenBao::start().await;
    let out = tempfile::tempdir().unwrap();
    let mut opts = provision_opts(&bao, out.path(), &["openclaw/llm"]);
    opts.token_ttl = Duration::from_secs(3);
    opts.token_max_ttl = Duration::from_secs(8);
    opts.seed = Some(seed(&[("openclaw/llm", &[("key", "renewed")])]));
    provision(&opts).await.unwrap();

    let store = store_with(
        openbao_config(&bao, approle_auth(out.path())),
        Duration::ZERO,
    );
    assert!(store.wait_openbao_ready(Duration::from_secs(10)).await);
    let logged_in = Instant::now();
    let source = bao_source("openclaw/llm", "key");

    // Renewed at ~2/3 of the 3 s TTL, twice: by then the original token is past its TTL and
    // still works, with no second login.
    eventually(Duration::from_secs(10), "two renewals", || {
        store.stats().renewals >= 2
    })
    .await;
    assert!(logged_in.elapsed() > Duration::from_secs(3));
    assert_eq!(store.stats().logins, 1, "{:?}", store.stats());
    assert_eq!(get_str(&store, &source).await.unwrap(), "renewed");

    // Near the 8 s max TTL, renewal is capped and the store logs in again before expiry.
    eventually(Duration::from_secs(15), "a re-login at max ttl", || {
        store.stats().logins >= 2
    })
    .await;
    assert_eq!(store.openbao_ready(), Some(true));
    assert_eq!(get_str(&store, &source).await.unwrap(), "renewed");
    assert_eq!(store.stats().login_failures, 0);
}

#[tokio::test]
async fn revoked_token_triggers_relogin_with_the_rotated_secret_id() {
    init_tracing();
    let bao = OpenBao::start().await;
    let out = tempfile::tempdir().unwrap();
    let mut opts = provision_opts(&bao, out.path(), &["openclaw/llm"]);
    opts.seed = Some(seed(&[("openclaw/llm", &[("key", "after-relogin")])]));
    provision(&opts).await.unwrap();
    let store = store_with(
        openbao_config(&bao, approle_auth(out.path())),
        Duration::ZERO,
    );
    let source = bao_source("openclaw/llm", "key");
    assert_eq!(get_str(&store, &source).await.unwrap(), "after-relogin");

    // The operator rotates the secret-id: new one in the file, old one destroyed.
    let old = std::fs::read_to_string(out.path().join("secret_id")).unwrap();
    let body = bao
        .api_ok("POST", "auth/approle/role/credproxy/secret-id", None)
        .await;
    let new = body["data"]["secret_id"].as_str().unwrap();
    let secret_id_file = out.path().join("secret_id");
    std::fs::remove_file(&secret_id_file).unwrap();
    write_file(&secret_id_file, new);
    bao.api_ok(
        "POST",
        "auth/approle/role/credproxy/secret-id/destroy",
        Some(json!({"secret_id": old.trim()})),
    )
    .await;
    // Then every token issued by the AppRole is revoked.
    bao.api_ok("POST", "sys/leases/revoke-prefix/auth/approle/login", None)
        .await;

    // The next read sees 403, confirms the token is dead, logs in again and retries.
    assert_eq!(get_str(&store, &source).await.unwrap(), "after-relogin");
    assert_eq!(store.stats().logins, 2);
    assert_eq!(store.openbao_ready(), Some(true));
}

// ---------------------------------------------------------------------------------------------
// Caching, rotation, outages.

#[tokio::test]
async fn rotated_secret_is_used_after_the_cache_ttl_not_before() {
    init_tracing();
    let bao = OpenBao::start().await;
    bao.kv_put("secret", "app/llm", json!({"key": "old"})).await;
    let ttl = Duration::from_secs(60);
    let clock = Clock::adjustable();
    let store = store_with_clock(
        openbao_config(&bao, OpenBaoAuth::TokenFile(bao.root_token_file())),
        ttl,
        clock.clone(),
    );
    let source = bao_source("app/llm", "key");
    assert_eq!(get_str(&store, &source).await.unwrap(), "old");

    assert_eq!(
        bao.kv_put("secret", "app/llm", json!({"key": "new"})).await,
        2
    );
    assert_eq!(get_str(&store, &source).await.unwrap(), "old", "within ttl");
    assert_eq!(store.stats().cache_hits, 1);

    clock.advance(ttl);
    assert_eq!(get_str(&store, &source).await.unwrap(), "new", "after ttl");
}

#[tokio::test]
async fn outage_serves_cache_until_ttl_then_fails_closed_and_recovers() {
    init_tracing();
    let bao = OpenBao::start().await;
    let out = tempfile::tempdir().unwrap();
    let mut opts = provision_opts(&bao, out.path(), &["openclaw/llm"]);
    opts.seed = Some(seed(&[("openclaw/llm", &[("key", "before-outage")])]));
    provision(&opts).await.unwrap();

    let ttl = Duration::from_secs(60);
    let clock = Clock::adjustable();
    let store = store_with_clock(
        openbao_config(&bao, approle_auth(out.path())),
        ttl,
        clock.clone(),
    );
    let source = bao_source("openclaw/llm", "key");
    assert_eq!(get_str(&store, &source).await.unwrap(), "before-outage");
    let local = out.path().join("local-key");
    write_file(&local, "local-value\n");

    bao.stop();
    assert_eq!(
        get_str(&store, &source).await.unwrap(),
        "before-outage",
        "cached value within ttl"
    );
    clock.advance(ttl);
    let e = store.get(&source).await.unwrap_err();
    assert_eq!(e.reason(), "secret_unavailable", "{e}");
    assert!(!e.to_string().contains("before-outage"));
    // Sources that do not need OpenBao keep working.
    assert_eq!(
        get_str(&store, &SecretSource::File(local)).await.unwrap(),
        "local-value"
    );

    // OpenBao comes back (empty: dev mode is in memory) and is provisioned again; the same
    // store recovers without being recreated.
    bao.start_again().await;
    opts.seed = Some(seed(&[("openclaw/llm", &[("key", "after-outage")])]));
    let report = provision(&opts).await.unwrap();
    assert!(
        report
            .changes
            .iter()
            .any(|c| c.contains("is not valid for role")),
        "stale secret_id replaced: {:?}",
        report.changes
    );
    assert_eq!(get_str(&store, &source).await.unwrap(), "after-outage");
    assert_eq!(store.stats().logins, 2);
    assert_eq!(store.openbao_ready(), Some(true));
}

#[tokio::test]
async fn store_starts_while_openbao_is_down_and_recovers_by_itself() {
    init_tracing();
    let bao = OpenBao::start().await;
    let out = tempfile::tempdir().unwrap();
    let mut opts = provision_opts(&bao, out.path(), &["openclaw/llm"]);
    opts.seed = Some(seed(&[("openclaw/llm", &[("key", "late")])]));
    provision(&opts).await.unwrap();
    bao.stop();

    let store = store_with(
        openbao_config(&bao, approle_auth(out.path())),
        Duration::from_secs(30),
    );
    assert!(!store.wait_openbao_ready(Duration::from_millis(500)).await);
    assert_eq!(store.openbao_ready(), Some(false));
    let started = Instant::now();
    let e = store
        .get(&bao_source("openclaw/llm", "key"))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "secret_unavailable", "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "fails fast while down"
    );

    bao.start_again().await;
    provision(&opts).await.unwrap();
    assert!(store.wait_openbao_ready(Duration::from_secs(15)).await);
    assert_eq!(
        get_str(&store, &bao_source("openclaw/llm", "key"))
            .await
            .unwrap(),
        "late"
    );
}

#[tokio::test]
async fn hung_openbao_times_out_as_unavailable() {
    init_tracing();
    let bao = OpenBao::start().await;
    bao.kv_put("secret", "app/llm", json!({"key": "v"})).await;
    let mut cfg = openbao_config(&bao, OpenBaoAuth::TokenFile(bao.root_token_file()));
    cfg.request_timeout = Duration::from_millis(700);
    let store = store_with(cfg, Duration::ZERO);
    let source = bao_source("app/llm", "key");
    assert_eq!(get_str(&store, &source).await.unwrap(), "v");

    bao.pause().await;
    let started = Instant::now();
    let e = store.get(&source).await.unwrap_err();
    let waited = started.elapsed();
    bao.resume().await;
    assert_eq!(e.reason(), "secret_unavailable", "{e}");
    assert!(
        waited < Duration::from_secs(2),
        "bounded by request_timeout: {waited:?}"
    );
    assert_eq!(get_str(&store, &source).await.unwrap(), "v");
}

// ---------------------------------------------------------------------------------------------
// TLS and namespaces.

#[tokio::test]
async fn tls_with_the_dev_ca_works_and_an_untrusted_certificate_is_refused() {
    init_tracing();
    let bao = OpenBao::start_tls().await;
    assert!(bao.address().starts_with("https://"));
    bao.kv_put("secret", "app/llm", json!({"key": "over-tls"}))
        .await;

    // Provisioning over TLS with the CA file, then AppRole over TLS.
    let out = tempfile::tempdir().unwrap();
    provision(&provision_opts(&bao, out.path(), &["app/llm"]))
        .await
        .unwrap();
    let trusted = store_with(
        openbao_config(&bao, approle_auth(out.path())),
        Duration::from_secs(30),
    );
    assert_eq!(
        get_str(&trusted, &bao_source("app/llm", "key"))
            .await
            .unwrap(),
        "over-tls"
    );

    let mut cfg = openbao_config(&bao, OpenBaoAuth::TokenFile(bao.root_token_file()));
    cfg.ca_file = None;
    let untrusted = store_with(cfg, Duration::from_secs(30));
    assert!(!untrusted.wait_openbao_ready(Duration::from_secs(2)).await);
    let e = untrusted
        .get(&bao_source("app/llm", "key"))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "secret_unavailable");
    assert!(
        e.to_string().to_lowercase().contains("certificate"),
        "error should say why: {e}"
    );

    let mut opts = provision_opts(&bao, out.path(), &["app/llm"]);
    opts.ca_file = None;
    let e = provision(&opts).await.unwrap_err();
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
}

#[tokio::test]
async fn namespace_header_selects_the_namespace() {
    init_tracing();
    let bao = OpenBao::start().await;
    bao.api_ok("POST", "sys/namespaces/team-a", None).await;
    let (status, body) = bao
        .api_in_namespace(
            "team-a",
            "POST",
            "sys/mounts/secret",
            Some(json!({"type": "kv", "options": {"version": "2"}})),
        )
        .await;
    assert!((200..300).contains(&status), "{body}");
    let (status, body) = bao
        .api_in_namespace(
            "team-a",
            "POST",
            "secret/data/app/llm",
            Some(json!({"data": {"key": "in-namespace"}})),
        )
        .await;
    assert!((200..300).contains(&status), "{body}");

    let mut cfg = openbao_config(&bao, OpenBaoAuth::TokenFile(bao.root_token_file()));
    cfg.namespace = Some("team-a".to_string());
    let store = store_with(cfg.clone(), Duration::from_secs(30));
    assert_eq!(
        get_str(&store, &bao_source("app/llm", "key"))
            .await
            .unwrap(),
        "in-namespace"
    );
    cfg.namespace = None;
    let root_ns = store_with(cfg, Duration::from_secs(30));
    assert_eq!(
        root_ns
            .get(&bao_source("app/llm", "key"))
            .await
            .unwrap_err()
            .reason(),
        "secret_not_found"
    );
}

// ---------------------------------------------------------------------------------------------
// Redaction.

#[tokio::test]
async fn no_secret_value_in_errors_or_logs() {
    init_tracing();
    let bao = OpenBao::start().await;
    let out = tempfile::tempdir().unwrap();
    let mut opts = provision_opts(&bao, out.path(), &["openclaw/canary"]);
    opts.seed = Some(seed(&[(
        "openclaw/canary",
        &[("key", CANARY), ("other", CANARY_OTHER)],
    )]));
    let report = provision(&opts).await.unwrap();
    bao.kv_put("secret", "openclaw/forbidden", json!({"key": CANARY}))
        .await;
    let secret_id = std::fs::read_to_string(out.path().join("secret_id")).unwrap();
    let secret_id = secret_id.trim().to_string();

    let store = store_with(
        openbao_config(&bao, approle_auth(out.path())),
        Duration::ZERO,
    );
    let value = store
        .get(&bao_source("openclaw/canary", "key"))
        .await
        .unwrap();
    assert_eq!(value.expose(), CANARY.as_bytes());

    let mut texts = vec![
        format!("{value:?} {value} {store:?}"),
        format!("{report:?}"),
        format!("{opts:?}"),
    ];
    for source in [
        bao_source("openclaw/canary", "missing"),
        bao_source("openclaw/forbidden", "key"),
        bao_source("openclaw/nope", "key"),
    ] {
        let e = store.get(&source).await.unwrap_err();
        texts.push(format!("{e} {e:?}"));
    }
    // A refused login (the canary as secret-id) is logged and reported, without the value.
    let bad_dir = tempfile::tempdir().unwrap();
    std::fs::copy(out.path().join("role_id"), bad_dir.path().join("role_id")).unwrap();
    write_file(&bad_dir.path().join("secret_id"), CANARY);
    let bad = store_with(
        openbao_config(&bao, approle_auth(bad_dir.path())),
        Duration::ZERO,
    );
    assert!(!bad.wait_openbao_ready(Duration::from_secs(1)).await);
    let e = bad
        .get(&bao_source("openclaw/canary", "key"))
        .await
        .unwrap_err();
    texts.push(format!("{e} {e:?}"));
    // An env source holding the canary, missing and present.
    let env_store = SecretStore::new(
        SecretsConfig::default(),
        Arc::new(std::collections::HashMap::from([(
            "CANARY_VAR".to_string(),
            CANARY.to_string(),
        )])),
    )
    .unwrap();
    let v = env_store
        .get(&SecretSource::Env("CANARY_VAR".into()))
        .await
        .unwrap();
    texts.push(format!("{v:?} {env_store:?}"));

    let logs = captured_logs();
    assert!(
        logs.contains("openbao login succeeded"),
        "log capture works"
    );
    assert!(
        logs.contains("openbao login refused"),
        "bad login was logged"
    );
    for (i, text) in texts.iter().chain(std::iter::once(&logs)).enumerate() {
        for needle in [CANARY, CANARY_OTHER, secret_id.as_str(), bao.root_token()] {
            if let Some(at) = text.find(needle) {
                let start = text[..at]
                    .char_indices()
                    .rev()
                    .nth(80)
                    .map_or(0, |(i, _)| i);
                panic!("a secret leaked into output #{i}: …{}", &text[start..at]);
            }
        }
    }
}
