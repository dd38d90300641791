#![allow(clippy::unwrap_used)]
//! `credproxy dev` with credentials: the agent's printed environment carries placeholders
//! and a dev token; the upstream receives the real values, the agent never does.

mod support;

use std::collections::BTreeMap;
use std::ffi::OsString;

use support::{
    args, assert_code, curl, curl_body_and_code, dev_upstream_args, run, start_dev, stderr,
    tls_upstream, ALLOWED, EXIT_USAGE,
};

const REAL_KEY: &str = "sk-real-test-key-0123456789";
const FILE_SECRET: &str = "file-secret-9876543210";

/// curl with exactly the printed environment (plus PATH to find curl).
fn agent_curl(env: &BTreeMap<String, String>) -> tokio::process::Command {
    let mut cmd = curl();
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env);
    cmd
}

fn is_placeholder(p: &str) -> bool {
    p.strip_prefix("agent-vault-").is_some_and(|u| {
        u.len() == 36
            && u.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-')
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_injects_credentials_the_agent_only_knows_as_placeholders() {
    let (pki, upstream) = tls_upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    // A credentials file whose source file is relative to it.
    let creds_dir = tmp.path().join("creds");
    std::fs::create_dir(&creds_dir).unwrap();
    std::fs::write(creds_dir.join("secret.txt"), format!("{FILE_SECRET}\n")).unwrap();
    let creds_file = creds_dir.join("credentials.yaml");
    std::fs::write(
        &creds_file,
        format!(
            "- id: file-cred\n  type: bearer\n  bound_domains: [{ALLOWED}]\n  source: {{file: secret.txt}}\n"
        ),
    )
    .unwrap();

    let mut extra = dev_upstream_args(&pki, &upstream);
    extra.extend(args(&[
        &"--credential",
        &format!("id=test,env=TEST_KEY,domain={ALLOWED},header=x-api-key"),
        &"--credentials-file",
        &creds_file,
    ]));
    let dev_env = [("TEST_KEY", REAL_KEY)];
    let (mut dev, env) = start_dev(&state, &extra, &dev_env).await;

    let placeholder = env["TEST_KEY"].clone();
    assert!(is_placeholder(&placeholder), "{env:?}");
    let file_placeholder = env["CREDPROXY_PLACEHOLDER_FILE_CRED"].clone();
    assert!(is_placeholder(&file_placeholder), "{env:?}");
    assert!(
        env["HTTPS_PROXY"].starts_with("http://dev-agent:"),
        "{env:?}"
    );
    assert!(!dev.stdout.text().contains(REAL_KEY));
    assert!(!dev.stdout.text().contains(FILE_SECRET));

    let mut cmd = agent_curl(&env);
    cmd.args(["-H", &format!("x-api-key: {}", env["TEST_KEY"])])
        .args(["-H", &format!("authorization: Bearer {file_placeholder}")])
        .arg(format!("https://{ALLOWED}/echo"));
    let (body, code) = curl_body_and_code(cmd).await;
    assert_eq!(code, "200", "{body}");
    let seen = upstream.received();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].header("x-api-key").as_deref(), Some(REAL_KEY));
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {FILE_SECRET}"))
    );
    // The echo reflects the headers; the agent sees its placeholders, never the values.
    assert!(body.contains(&placeholder), "{body}");
    assert!(!body.contains(REAL_KEY), "{body}");
    assert!(!body.contains(FILE_SECRET), "{body}");

    dev.stop().await;
    drop(dev);

    // A second run keeps the placeholders, so the agent's environment stays valid.
    let (mut dev, env2) = start_dev(&state, &extra, &dev_env).await;
    assert_eq!(env2["TEST_KEY"], placeholder);
    assert_eq!(env2["CREDPROXY_PLACEHOLDER_FILE_CRED"], file_placeholder);
    dev.stop().await;
}

#[tokio::test]
async fn bad_credentials_exit_64_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    for (spec, says) in [
        (
            "id=test,domain=api.example.test,header=x-api-key",
            "exactly one of env=, file=, openbao=",
        ),
        (
            "id=test,env=TEST_KEY,domain=api.example.test,header=x-api-key,colour=red",
            "colour",
        ),
        ("id=test,env=TEST_KEY,domain=api.example.test", "header="),
        (
            "id=test,env=TEST_KEY,domain=api.example.test,type=oauth",
            "type=oauth",
        ),
        (
            "id=test,openbao=dev/x#key,domain=api.example.test,header=x",
            "--openbao",
        ),
        // Passes parsing; the generated config rejects it with the key path.
        (
            "id=Test,env=TEST_KEY,domain=api.example.test,header=x-api-key",
            "credentials[0].id",
        ),
        // The variable is not in credproxy's environment.
        (
            "id=test,env=CREDPROXY_TEST_UNSET_VAR,domain=api.example.test,header=x-api-key",
            "CREDPROXY_TEST_UNSET_VAR",
        ),
    ] {
        let a: Vec<OsString> = args(&[
            &"dev",
            &"--state-dir",
            &state,
            &"--listen",
            &"127.0.0.1:0",
            &"--admin",
            &"127.0.0.1:0",
            &"--credential",
            &spec,
        ]);
        let mut cmd = support::credproxy(a);
        cmd.env("TEST_KEY", REAL_KEY)
            .env_remove("CREDPROXY_TEST_UNSET_VAR");
        let o = support::output(cmd, "credproxy dev").await;
        assert_code(&o, EXIT_USAGE);
        let err = stderr(&o);
        assert!(err.contains(says), "{spec}: {err}");
        assert!(!err.contains(REAL_KEY), "{err}");
    }

    let o = run(args(&[
        &"dev",
        &"--state-dir",
        &state,
        &"--credentials-file",
        &tmp.path().join("missing.yaml"),
    ]))
    .await;
    assert_code(&o, EXIT_USAGE);
    assert!(stderr(&o).contains("missing.yaml"), "{}", stderr(&o));
}

/// Run `git ARGS` in `dir` with no user or system configuration.
fn git(dir: &std::path::Path, home: &std::path::Path, args: &[&str]) {
    let o = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.test")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.test")
        .output()
        .expect("git runs (apt-get install git)");
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The printed `export` lines, pasted verbatim into a shell whose environment already points
/// `CURL_CA_BUNDLE` (as CI images do) and `SSL_CERT_FILE` elsewhere, are enough for curl and
/// for a real `git clone` (dumb HTTP from the TLS upstream) through the proxy: each client
/// finds the variable it actually reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_exports_work_verbatim_for_curl_and_git() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    // A repository served over git's dumb HTTP protocol.
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    git(&src, &home, &["init", "-q", "-b", "main"]);
    std::fs::write(src.join("README"), "hello through credproxy\n").unwrap();
    git(&src, &home, &["add", "README"]);
    git(&src, &home, &["commit", "-q", "-m", "first"]);
    let files = tmp.path().join("files");
    std::fs::create_dir(&files).unwrap();
    git(
        tmp.path(),
        &home,
        &["clone", "-q", "--bare", "src", "files/repo.git"],
    );
    git(&files.join("repo.git"), &home, &["update-server-info"]);

    let pki = credproxy_testkit::TestPki::new();
    let upstream = credproxy_testkit::Upstream::start(
        credproxy_testkit::UpstreamOptions::tls(
            pki.issue(&[ALLOWED], credproxy_testkit::Validity::Valid),
        )
        .with_files(&files),
    )
    .await;
    let state = tmp.path().join("state");
    let (mut dev, env) = start_dev(&state, &dev_upstream_args(&pki, &upstream), &[]).await;
    let printed: Vec<String> = dev
        .stdout
        .seen
        .iter()
        .filter(|l| l.starts_with("export "))
        .cloned()
        .collect();
    for name in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
        "SSL_CERT_FILE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "REQUESTS_CA_BUNDLE",
        "AWS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
    ] {
        assert!(env.contains_key(name), "{name} not printed: {printed:?}");
    }

    // A CA bundle that does not hold the dev CA, set the way CI images set it.
    let elsewhere = credproxy_testkit::TestPki::new();
    let script = format!(
        "set -e\n{}\ncurl -q -sS --max-time 30 -o /dev/null -w '%{{http_code}}\\n' https://{ALLOWED}/echo\n\
         git clone -q https://{ALLOWED}/files/repo.git clone\ncat clone/README\n",
        printed.join("\n")
    );
    let o = tokio::time::timeout(
        support::WAIT,
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(tmp.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("CURL_CA_BUNDLE", elsewhere.ca_cert_path())
            .env("SSL_CERT_FILE", elsewhere.ca_cert_path())
            .output(),
    )
    .await
    .expect("the shell finished")
    .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "{script}\n--- stdout\n{out}--- stderr\n{err}"
    );
    assert_eq!(out, "200\nhello through credproxy\n", "{err}");
    // git really went through the proxy to the upstream (SNI from the minted tunnel).
    let got = upstream.received();
    assert!(
        got.iter()
            .any(|r| r.path().starts_with("/files/repo.git/") && r.sni.as_deref() == Some(ALLOWED)),
        "{got:?}"
    );
    dev.stop().await;
}
