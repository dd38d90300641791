#![allow(clippy::unwrap_used)]
//! `credproxy policy init|test|eval|input`, run as a real process.

mod support;

use std::path::{Path, PathBuf};

use support::{args, assert_code, q, run, stderr, stdout, EXIT_USAGE};

const PLACEHOLDER: &str = "agent-vault-00000000-0000-0000-0000-000000000001";

/// `policy init DIR`, asserting success.
async fn init(dir: &Path) {
    let o = run(args(&[&"policy", &"init", &dir])).await;
    assert_code(&o, 0);
}

#[tokio::test]
async fn init_writes_the_builtin_policy_whose_tests_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policy");

    let o = run(args(&[&"policy", &"init", &dir])).await;
    assert_code(&o, 0);
    for name in ["authz.rego", "authz_test.rego"] {
        let path = dir.join(name);
        assert!(path.is_file(), "{} missing", path.display());
        assert!(
            stdout(&o).contains(&path.display().to_string()),
            "{}",
            stdout(&o)
        );
    }

    let o = run(args(&[&"policy", &"test", &dir])).await;
    assert_code(&o, 0);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    // First what the proxy will key its decision cache by: the built-in policy reads the
    // identity and the destination, never the time or the path.
    let (cache, lines) = lines.split_first().unwrap();
    assert!(
        cache.starts_with("decision cache: on: keyed by "),
        "{cache}"
    );
    assert!(cache.contains("input.identity"), "{cache}");
    assert!(
        !cache.contains("input.time") && !cache.contains("input.request.path"),
        "{cache}"
    );
    let (summary, results) = lines.split_last().unwrap();
    assert!(!results.is_empty(), "no test results:\n{out}");
    for l in results {
        assert!(
            l.starts_with("PASS credproxy.authz_test.test_") && l.ends_with(" (authz_test.rego)"),
            "{l}"
        );
    }
    assert_eq!(*summary, format!("{} passed, 0 failed", results.len()));
}

#[tokio::test]
async fn init_refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policy");
    init(&dir).await;
    let authz = dir.join("authz.rego");
    std::fs::write(&authz, "# edited\n").unwrap();

    let o = run(args(&[&"policy", &"init", &dir])).await;
    assert_code(&o, 1);
    let err = stderr(&o);
    assert!(err.contains(&authz.display().to_string()), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&authz).unwrap(), "# edited\n");

    let o = run(args(&[&"policy", &"init", &dir, &"--force"])).await;
    assert_code(&o, 0);
    assert!(std::fs::read_to_string(&authz)
        .unwrap()
        .contains("package credproxy.authz"));
}

#[tokio::test]
async fn a_failing_test_fails_the_run_and_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policy");
    init(&dir).await;
    std::fs::write(
        dir.join("extra_test.rego"),
        "package credproxy.extra_test\n\n\
         import data.credproxy.authz\n\n\
         # Wrong on purpose: an empty input is refused.\n\
         test_empty_input_is_allowed if {\n\tauthz.allow with input as {}\n}\n\n\
         test_empty_input_is_refused if {\n\tnot authz.allow with input as {}\n}\n",
    )
    .unwrap();

    let o = run(args(&[&"policy", &"test", &dir])).await;
    assert_code(&o, 1);
    let out = stdout(&o);
    assert!(
        out.lines().any(|l| l
            == "FAIL credproxy.extra_test.test_empty_input_is_allowed (extra_test.rego)"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l == "PASS credproxy.extra_test.test_empty_input_is_refused (extra_test.rego)"),
        "{out}"
    );
    let passed = out.lines().filter(|l| l.starts_with("PASS ")).count();
    assert_eq!(
        out.lines().last().unwrap(),
        format!("{passed} passed, 1 failed"),
        "{out}"
    );
}

#[tokio::test]
async fn a_syntax_error_or_no_policy_exits_64_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policy");
    init(&dir).await;
    std::fs::write(
        dir.join("broken.rego"),
        "package credproxy.broken\n\nallow if {\n",
    )
    .unwrap();
    let o = run(args(&[&"policy", &"test", &dir])).await;
    assert_code(&o, EXIT_USAGE);
    assert!(stderr(&o).contains("broken.rego"), "{}", stderr(&o));

    // A test file with a syntax error is named too.
    std::fs::remove_file(dir.join("broken.rego")).unwrap();
    std::fs::write(dir.join("broken_test.rego"), "package x\n\ntest_a if {\n").unwrap();
    let o = run(args(&[&"policy", &"test", &dir])).await;
    assert_code(&o, EXIT_USAGE);
    assert!(stderr(&o).contains("broken_test.rego"), "{}", stderr(&o));

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = run(args(&[&"policy", &"test", &empty])).await;
    assert_code(&o, EXIT_USAGE);
    assert!(
        stderr(&o).contains(&empty.display().to_string()),
        "{}",
        stderr(&o)
    );
}

/// A configuration with an OIDC identity, one allowed domain and one credential.
fn config(dir: &Path, policy_dir: Option<&Path>) -> PathBuf {
    let mut text = format!(
        "listeners:\n  - name: agents\n    tcp: \"127.0.0.1:0\"\n  - name: other\n    tcp: \"127.0.0.1:0\"\n\
         ca:\n  cert_file: ca/ca.crt\n  key_file: ca/ca.key\n\
         allowed_domains:\n  - api.example.test\n\
         identity:\n  oidc:\n    issuer: https://id.example\n    audiences: [credproxy]\n\
         audit:\n  path: audit.db\n\
         credentials:\n  - id: example\n    placeholder: {PLACEHOLDER}\n    type: api_key\n\
         \x20   header_name: x-api-key\n    bound_domains: [api.example.test]\n\
         \x20   allowed_roles: [proxy-user]\n    inject_in: [header, query]\n\
         \x20   source: {{env: EXAMPLE_KEY}}\n"
    );
    if let Some(p) = policy_dir {
        text.push_str(&format!("policy:\n  dir: {}\n", q(p.to_string_lossy())));
    }
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn claims(dir: &Path) -> PathBuf {
    let path = dir.join("claims.json");
    std::fs::write(
        &path,
        serde_json::json!({
            "iss": "https://id.example",
            "aud": "credproxy",
            "sub": "svc-agent-a",
            "azp": "agent-a",
            "exp": 4102444800u64,
            "jti": "j-1",
            "realm_access": {"roles": ["proxy-user"]},
            "groups": ["agents"],
        })
        .to_string(),
    )
    .unwrap();
    path
}

/// `policy input` for REQUEST with the claims file, written to `dir/NAME`.
async fn input_file(
    config: &Path,
    request: &str,
    claims: Option<&Path>,
    dir: &Path,
    name: &str,
) -> PathBuf {
    let mut a = args(&[
        &"policy",
        &"input",
        &"--config",
        &config,
        &"--request",
        &request,
    ]);
    if let Some(c) = claims {
        a.extend(args(&[&"--token-claims", &c]));
    }
    let o = run(a).await;
    assert_code(&o, 0);
    let path = dir.join(name);
    std::fs::write(&path, &o.stdout).unwrap();
    path
}

#[tokio::test]
async fn eval_allows_and_denies_with_reasons() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), None);
    let claims = claims(tmp.path());

    let allowed = input_file(
        &config,
        "GET https://api.example.test/v1",
        Some(&claims),
        tmp.path(),
        "allowed.json",
    )
    .await;
    let o = run(args(&[
        &"policy",
        &"eval",
        &"--config",
        &config,
        &"--input",
        &allowed,
    ]))
    .await;
    assert_code(&o, 0);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc, serde_json::json!({"allow": true, "deny_reasons": []}));

    let denied = input_file(
        &config,
        "POST https://unlisted.example.test/upload",
        None,
        tmp.path(),
        "denied.json",
    )
    .await;
    let o = run(args(&[
        &"policy",
        &"eval",
        &"--config",
        &config,
        &"--input",
        &denied,
    ]))
    .await;
    assert_code(&o, 0);
    insta::assert_snapshot!("eval_deny", stdout(&o));
}

#[tokio::test]
async fn eval_reports_bad_input_and_evaluation_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let config_path = config(tmp.path(), None);

    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, r#"{"version": 1, "identity": null, "colour": "red"}"#).unwrap();
    let o = run(args(&[
        &"policy",
        &"eval",
        &"--config",
        &config_path,
        &"--input",
        &bad,
    ]))
    .await;
    assert_code(&o, EXIT_USAGE);
    assert!(
        stderr(&o).contains(&bad.display().to_string()),
        "{}",
        stderr(&o)
    );

    let missing = tmp.path().join("missing.json");
    let o = run(args(&[
        &"policy",
        &"eval",
        &"--config",
        &config_path,
        &"--input",
        &missing,
    ]))
    .await;
    assert_code(&o, EXIT_USAGE);
    assert!(
        stderr(&o).contains(&missing.display().to_string()),
        "{}",
        stderr(&o)
    );

    let bad_config = tmp.path().join("bad.yaml");
    std::fs::write(&bad_config, "listeners: []\nfrobnicate: 1\n").unwrap();
    let o = run(args(&[
        &"policy",
        &"eval",
        &"--config",
        &bad_config,
        &"--input",
        &missing,
    ]))
    .await;
    assert_code(&o, EXIT_USAGE);
    assert!(stderr(&o).contains("frobnicate"), "{}", stderr(&o));

    // A policy whose `allow` fails at run time: a builtin error is an error, not a deny.
    let policy = tmp.path().join("policy");
    std::fs::create_dir(&policy).unwrap();
    std::fs::write(
        policy.join("authz.rego"),
        "package credproxy.authz\n\nallow if {\n\tto_number(input.request.method) > 1\n}\n",
    )
    .unwrap();
    let sub = tmp.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let config_err = config(&sub, Some(&policy));
    let input = input_file(
        &config_err,
        "GET https://api.example.test/",
        None,
        tmp.path(),
        "in.json",
    )
    .await;
    let o = run(args(&[
        &"policy",
        &"eval",
        &"--config",
        &config_err,
        &"--input",
        &input,
    ]))
    .await;
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains("data.credproxy.authz.allow"),
        "{}",
        stderr(&o)
    );
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
}

#[tokio::test]
async fn input_shows_the_document_the_proxy_would_build() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), None);
    let claims = claims(tmp.path());
    let header = format!("x-api-key: {PLACEHOLDER}");
    let o = run(args(&[
        &"policy",
        &"input",
        &"--config",
        &config,
        &"--request",
        &"GET https://api.example.test/v1?key=x",
        &"--header",
        &header,
        &"--token-claims",
        &claims,
    ]))
    .await;
    assert_code(&o, 0);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let time = doc["time"].as_str().unwrap().to_owned();
    assert!(
        time.len() >= 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "time {time:?} is not RFC 3339 UTC"
    );
    // The printed text (field order included) is the snapshot, with the time redacted.
    insta::assert_snapshot!(
        "input_with_claims_and_placeholder",
        stdout(&o).replace(&format!("{time:?}"), "\"[time]\"")
    );

    // Without claims the identity is null; another listener can be named.
    let o = run(args(&[
        &"policy",
        &"input",
        &"--config",
        &config,
        &"--request",
        &"GET https://api.example.test/",
        &"--listener",
        &"other",
    ]))
    .await;
    assert_code(&o, 0);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["identity"], serde_json::Value::Null);
    assert_eq!(doc["listener"]["name"], "other");

    for (request, listener) in [
        ("GET", "agents"),
        ("GET ftp://api.example.test/", "agents"),
        ("GET https://api.example.test/", "nope"),
    ] {
        let o = run(args(&[
            &"policy",
            &"input",
            &"--config",
            &config,
            &"--request",
            &request,
            &"--listener",
            &listener,
        ]))
        .await;
        assert_code(&o, EXIT_USAGE);
        assert!(!stderr(&o).is_empty());
    }
}
