//! Unit tests for the store's file and env sources, errors and caching (no OpenBao here;
//! those tests are in `tests/openbao.rs` against a real server).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;

fn store(env: &[(&str, &str)], ttl: Duration) -> SecretStore {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    SecretStore::new(
        SecretsConfig {
            openbao: None,
            cache_ttl: ttl,
        },
        Arc::new(env),
    )
    .unwrap()
}

#[tokio::test]
async fn file_source_trims_trailing_newlines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, "sk-file-value\r\n\n").unwrap();
    let s = store(&[], Duration::from_secs(30));
    let v = s.get(&SecretSource::File(path)).await.unwrap();
    assert_eq!(v.expose(), b"sk-file-value");
}

#[tokio::test]
async fn missing_file_is_not_found_and_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent");
    let s = store(&[], Duration::from_secs(30));
    let e = s.get(&SecretSource::File(path.clone())).await.unwrap_err();
    assert_eq!(e.reason(), "secret_not_found");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
}

#[tokio::test]
async fn empty_file_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty");
    std::fs::write(&path, "\n").unwrap();
    let e = store(&[], Duration::from_secs(30))
        .get(&SecretSource::File(path))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "secret_invalid");
}

#[tokio::test]
async fn env_source_reads_through_env_source() {
    let s = store(&[("API_KEY", "sk-env-value")], Duration::from_secs(30));
    let v = s.get(&SecretSource::Env("API_KEY".into())).await.unwrap();
    assert_eq!(v.expose(), b"sk-env-value");
    let e = s
        .get(&SecretSource::Env("NOT_THERE".into()))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "secret_not_found");
    assert!(e.to_string().contains("NOT_THERE"), "{e}");
}

#[tokio::test]
async fn file_value_is_cached_for_the_ttl_then_reread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, "one").unwrap();
    let s = store(&[], Duration::from_millis(300));
    let src = SecretSource::File(path.clone());
    assert_eq!(s.get(&src).await.unwrap().expose(), b"one");
    std::fs::write(&path, "two").unwrap();
    assert_eq!(
        s.get(&src).await.unwrap().expose(),
        b"one",
        "served from cache"
    );
    assert_eq!(s.stats().cache_hits, 1);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(s.get(&src).await.unwrap().expose(), b"two");
    // Fails closed after the TTL: a deleted file is not papered over with the old value.
    std::fs::remove_file(&path).unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(s.get(&src).await.unwrap_err().reason(), "secret_not_found");
}

#[tokio::test]
async fn zero_ttl_disables_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, "one").unwrap();
    let s = store(&[], Duration::ZERO);
    let src = SecretSource::File(path.clone());
    assert_eq!(s.get(&src).await.unwrap().expose(), b"one");
    std::fs::write(&path, "two").unwrap();
    assert_eq!(s.get(&src).await.unwrap().expose(), b"two");
    assert_eq!(s.stats().cache_hits, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, "v").unwrap();
    let s = store(&[], Duration::from_secs(30));
    let src = SecretSource::File(path);
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (s, src) = (s.clone(), src.clone());
            tokio::spawn(async move { s.get(&src).await.unwrap() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().expose(), b"v");
    }
    assert_eq!(s.stats().fetches, 1);
    assert_eq!(s.stats().fetch_failures, 0);
}

#[tokio::test]
async fn openbao_source_without_openbao_is_unavailable() {
    let s = store(&[], Duration::from_secs(30));
    let e = s
        .get(&SecretSource::OpenBao {
            path: "openclaw/x".into(),
            field: "key".into(),
            version: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "secret_unavailable");
    assert_eq!(s.openbao_ready(), None);
    assert!(s.wait_openbao_ready(Duration::from_millis(1)).await);
}

#[test]
fn describe_never_needs_a_value() {
    assert_eq!(
        SecretSource::File("/run/x".into()).describe(),
        "file /run/x"
    );
    assert_eq!(
        SecretSource::Env("ANTHROPIC_API_KEY".into()).describe(),
        "env ANTHROPIC_API_KEY"
    );
    assert_eq!(
        SecretSource::OpenBao {
            path: "openclaw/x".into(),
            field: "key".into(),
            version: None
        }
        .describe(),
        "openbao secret/openclaw/x#key"
    );
    assert_eq!(
        SecretSource::OpenBao {
            path: "openclaw/x".into(),
            field: "key".into(),
            version: Some(3)
        }
        .describe_with_mount("kv"),
        "openbao kv/openclaw/x#key@v3"
    );
}

#[test]
fn new_without_runtime_fails_only_when_openbao_is_configured() {
    let cfg = SecretsConfig {
        openbao: Some(OpenBaoConfig {
            address: "http://127.0.0.1:1".into(),
            ca_file: None,
            namespace: None,
            auth: OpenBaoAuth::TokenFile("/nonexistent".into()),
            kv_mount: "secret".into(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }),
        cache_ttl: DEFAULT_CACHE_TTL,
    };
    let e = SecretStore::new(cfg, Arc::new(ProcessEnv)).unwrap_err();
    assert!(e.to_string().contains("tokio runtime"), "{e}");
    assert!(SecretStore::new(SecretsConfig::default(), Arc::new(ProcessEnv)).is_ok());
}

#[tokio::test]
async fn invalid_config_is_refused_at_construction() {
    let base = OpenBaoConfig {
        address: "http://127.0.0.1:1".into(),
        ca_file: None,
        namespace: None,
        auth: OpenBaoAuth::TokenFile("/nonexistent".into()),
        kv_mount: "secret".into(),
        request_timeout: DEFAULT_REQUEST_TIMEOUT,
    };
    let cases = [
        OpenBaoConfig {
            address: "ftp://x".into(),
            ..base.clone()
        },
        OpenBaoConfig {
            kv_mount: "a/../b".into(),
            ..base.clone()
        },
        OpenBaoConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..base.clone()
        },
    ];
    for cfg in cases {
        let e = SecretStore::new(
            SecretsConfig {
                openbao: Some(cfg.clone()),
                cache_ttl: DEFAULT_CACHE_TTL,
            },
            Arc::new(ProcessEnv),
        )
        .unwrap_err();
        assert_eq!(e.reason(), "secret_unavailable", "{cfg:?}");
    }
}
