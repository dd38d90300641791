#![allow(clippy::unwrap_used)]
//! End-to-end tests of the `credproxy` binary: real processes, real TLS, real curl.
//!
//! Every port comes from the OS (`:0`); the tests learn the bound addresses from what the
//! program prints (the `dev` exports on stdout, the `serve` JSON log on stderr). Nothing
//! sleeps to synchronise: every wait is on an output line or a process exit, and every wait
//! is bounded by [`WAIT`] so that a hang fails the test instead of blocking CI. Every child
//! process is owned by a [`Proc`] guard that kills it when dropped.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use credproxy_testkit::{TestPki, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::*;

/// `GET http://{addr}{path}` over a fresh connection; returns the raw response.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("GET {path} on {addr} timed out"))
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

// ---------------------------------------------------------------------------------------
// 1. Command line basics
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn version_and_help_exit_zero() {
    let o = run(["--version"]).await;
    assert_code(&o, 0);
    assert_eq!(
        stdout(&o).trim(),
        format!("credproxy {}", env!("CARGO_PKG_VERSION"))
    );

    let o = run(["--help"]).await;
    assert_code(&o, 0);
    let help = stdout(&o);
    for sub in ["serve", "check-config", "ca", "dev"] {
        assert!(help.contains(sub), "--help does not list {sub}:\n{help}");
    }

    let o = run(["ca", "init", "--help"]).await;
    assert_code(&o, 0);
    assert!(stdout(&o).contains("--force"), "{}", stdout(&o));
}

#[tokio::test]
async fn usage_errors_exit_64() {
    for args in [
        &["frobnicate"][..],
        &["--frobnicate"],
        &["serve", "--frobnicate"],
        &["check-config"],
        &["ca"],
        &["ca", "init"],
        &[],
    ] {
        let o = run(args).await;
        assert_eq!(
            o.status.code(),
            Some(EXIT_USAGE),
            "credproxy {args:?}: {:?}\n{}",
            o.status,
            stderr(&o)
        );
        assert!(
            !stderr(&o).is_empty(),
            "credproxy {args:?} exited 64 without saying why"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 2. check-config
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn check_config_accepts_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(
        &file,
        format!(
            "listeners:\n  - name: a\n    tcp: \"127.0.0.1:0\"\n\
             ca:\n  cert_file: {}\n  key_file: {}\n\
             allowed_domains:\n  - {ALLOWED}\n\
             identity:\n  danger_allow_anonymous: true\n",
            q(dir.path().join("ca.crt").to_string_lossy()),
            q(dir.path().join("ca.key").to_string_lossy()),
        ),
    )
    .unwrap();
    let o = run(args(&[&"check-config", &file])).await;
    assert_code(&o, 0);
    let out = stdout(&o);
    assert!(out.contains("valid"), "{out}");
    assert!(out.contains(&file.display().to_string()), "{out}");
    assert!(out.contains("1 listener,"), "{out}");
    assert!(out.contains("1 allowed domain"), "{out}");
}

#[tokio::test]
async fn check_config_reports_every_error_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        r#"
listeners:
  - name: a
    tcp: "localhost:18790"
ca:
  cert_file: ca/ca.crt
  key_file: ca/ca.key
allowed_domains:
  - api.example.test
  - "*.com"
limits:
  idle_timeout: ninety
telemetry:
  enabled: true
"#,
    )
    .unwrap();
    let o = run(args(&[&"check-config", &file])).await;
    assert_code(&o, EXIT_USAGE);
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
    let err = stderr(&o);
    for path in [
        "listeners[0].tcp",
        "limits.idle_timeout",
        "allowed_domains[1]",
        "telemetry",
    ] {
        assert!(err.contains(path), "stderr does not name {path}:\n{err}");
    }
    let tmp = dir.path().to_string_lossy().into_owned();
    insta::assert_snapshot!(err.replace(&tmp, "[TMP]"));
}

/// `agent_token` (listener-bound identity) where the peer is not identified, or without the
/// agent it is for, is refused with the key path; where it is allowed, the config is valid.
#[tokio::test]
async fn check_config_refuses_listener_tokens_where_the_peer_is_not_identified() {
    let dir = tempfile::tempdir().unwrap();
    let token = "    agent_token:\n      client_credentials: {token_url: \"https://id.example/token\", client_id: vm-a, client_secret_file: /run/credentials/credproxy.service/vm-a}\n";
    let tail = "ca: {cert_file: /c, key_file: /k}\nidentity: {oidc: {issuer: \"https://id.example\", audiences: [credproxy]}}\n";
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!(
            "listeners:\n  - name: a\n    tcp: \"127.0.0.1:18790\"\n    agent: vm-a\n{token}\
             \x20 - name: b\n    vsock: {{cid: any, port: 18791}}\n    agent: vm-b\n{token}\
             \x20 - name: c\n    vsock: {{cid: any, port: 18792, peer_cid: 5}}\n{token}{tail}"
        ),
    )
    .unwrap();
    let o = run(args(&[&"check-config", &bad])).await;
    assert_code(&o, EXIT_USAGE);
    let err = stderr(&o);
    for says in [
        "listeners[0].agent_token: not allowed on a tcp listener",
        "listeners[1].vsock.peer_cid: required with agent_token",
        "listeners[2].agent: required with agent_token",
    ] {
        assert!(err.contains(says), "stderr does not say {says:?}:\n{err}");
    }

    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        format!(
            "listeners:\n  - name: a\n    vsock: {{cid: any, port: 18791, peer_cid: 3}}\n    agent: vm-a\n{token}\
             \x20 - name: b\n    vsock_uds: {{path: /run/credproxy/vm-b.vsock, port: 18790}}\n    agent: vm-a\n{token}{tail}"
        ),
    )
    .unwrap();
    let o = run(args(&[&"check-config", &good])).await;
    assert_code(&o, 0);
}

#[tokio::test]
async fn check_config_names_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("no-such-config.yaml");
    let o = run(args(&[&"check-config", &file])).await;
    assert_code(&o, EXIT_USAGE);
    let err = stderr(&o);
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("cannot read"), "{err}");
}

// ---------------------------------------------------------------------------------------
// 3. ca init
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn ca_init_creates_refuses_to_overwrite_and_forces() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let (key, crt) = (dir.join("ca.key"), dir.join("ca.crt"));
    let init = |force: bool| {
        let mut a = args(&[&"ca", &"init", &"--dir", &dir]);
        if force {
            a.push("--force".into());
        }
        run(a)
    };

    let o = init(false).await;
    assert_code(&o, 0);
    assert_eq!(mode(&key), 0o400, "ca.key mode");
    assert_eq!(mode(&crt), 0o444, "ca.crt mode");
    let out = stdout(&o);
    assert!(out.contains(&crt.display().to_string()), "{out}");
    assert!(out.contains(&key.display().to_string()), "{out}");
    let (key1, crt1) = (std::fs::read(&key).unwrap(), std::fs::read(&crt).unwrap());
    assert!(String::from_utf8_lossy(&crt1).contains("BEGIN CERTIFICATE"));
    assert!(String::from_utf8_lossy(&key1).contains("PRIVATE KEY"));

    let o = init(false).await;
    assert_code(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&key).unwrap(), key1, "ca.key changed");
    assert_eq!(std::fs::read(&crt).unwrap(), crt1, "ca.crt changed");

    let o = init(true).await;
    assert_code(&o, 0);
    let (key2, crt2) = (std::fs::read(&key).unwrap(), std::fs::read(&crt).unwrap());
    assert_ne!(crt2, crt1, "--force did not replace the certificate");
    assert_ne!(key2, key1, "--force did not replace the key");
    assert_eq!(mode(&key), 0o400, "ca.key mode after --force");
    assert_eq!(mode(&crt), 0o444, "ca.crt mode after --force");
}

// ---------------------------------------------------------------------------------------
// 4. serve start-up failures
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn serve_without_a_ca_exits_1_naming_the_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let crt = dir.path().join("missing-ca").join("ca.crt");
    let key = dir.path().join("missing-ca").join("ca.key");
    let file = dir.path().join("config.yaml");
    std::fs::write(
        &file,
        format!(
            "listeners:\n  - name: a\n    tcp: \"127.0.0.1:0\"\n\
             admin:\n  tcp: \"127.0.0.1:0\"\n\
             ca:\n  cert_file: {}\n  key_file: {}\n\
             allowed_domains: [{ALLOWED}]\n\
             identity: {{danger_allow_anonymous: true}}\n",
            q(crt.to_string_lossy()),
            q(key.to_string_lossy()),
        ),
    )
    .unwrap();
    let o = run(args(&[&"serve", &"--config", &file])).await;
    assert_code(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("CA"), "stderr does not mention the CA:\n{err}");
    assert!(
        err.contains(&crt.display().to_string()),
        "stderr does not name {}:\n{err}",
        crt.display()
    );
}

/// Human-readable logs to a pipe (journald, a file, CI) carry no ANSI colour codes.
#[tokio::test]
async fn pretty_logs_to_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(
        &file,
        format!(
            "listeners:\n  - name: a\n    tcp: \"127.0.0.1:0\"\n\
             admin:\n  tcp: \"127.0.0.1:0\"\n\
             ca:\n  cert_file: missing/ca.crt\n  key_file: missing/ca.key\n\
             allowed_domains: [{ALLOWED}]\n\
             identity: {{danger_allow_anonymous: true}}\n\
             log: {{format: pretty, level: info}}\n",
        ),
    )
    .unwrap();
    let o = run(args(&[&"serve", &"--config", &file])).await;
    assert_code(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("config loaded"), "no log line:\n{err}");
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escape in piped logs:\n{err:?}"
    );
}

#[tokio::test]
async fn serve_with_an_invalid_config_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(
        &file,
        "listeners:\n  - name: a\n    tcp: \"127.0.0.1:0\"\nallowed_domains: [api.example.test]\n",
    )
    .unwrap();
    let o = run(args(&[&"serve", &"-c", &file])).await;
    assert_code(&o, EXIT_USAGE);
    let err = stderr(&o);
    assert!(err.contains("ca"), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");

    let missing = dir.path().join("nope.yaml");
    let o = run(args(&[&"serve", &"-c", &missing])).await;
    assert_code(&o, EXIT_USAGE);
    assert!(
        stderr(&o).contains(&missing.display().to_string()),
        "{}",
        stderr(&o)
    );
}

// ---------------------------------------------------------------------------------------
// 5. serve, end to end
// ---------------------------------------------------------------------------------------

/// `ca init` into `dir/ca` and a serve config `dir/config.yaml` ([`serve_config_base`]: JSON
/// logs, 2s shutdown grace, listener and admin on `127.0.0.1:0`, [`ALLOWED`] pinned to
/// `upstream`) for anonymous agents.
async fn serve_setup(dir: &Path, pki: &TestPki, upstream: &Upstream) -> PathBuf {
    ca_init(dir).await;
    let config = dir.join("config.yaml");
    // CA paths are relative: they resolve against the directory of the config file.
    std::fs::write(
        &config,
        serve_config_base(pki, upstream) + "identity:\n  danger_allow_anonymous: true\n",
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_proxies_allowed_refuses_unlisted_and_stops_on_sigterm() {
    let (pki, upstream) = tls_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = serve_setup(dir.path(), &pki, &upstream).await;
    let ca_dir = dir.path().join("ca");

    let mut proxy = Proc::spawn(args(&[&"serve", &"--config", &config]));
    proxy
        .stderr
        .wait_for("\"credproxy ready\" log line", |l| {
            is_message(l, "credproxy ready")
        })
        .await;
    // The bound addresses are logged before "credproxy ready".
    let find = |msg: &str| {
        proxy
            .stderr
            .seen
            .iter()
            .filter(|l| is_message(l, msg))
            .find_map(|l| logged_addr(l))
            .unwrap_or_else(|| panic!("no address in a {msg:?} log line:\n{}", proxy.stderr.text()))
    };
    let proxy_addr = find("listening");
    let admin_addr = find("admin listening");
    assert_ne!(proxy_addr.port(), 0);
    assert_ne!(admin_addr.port(), 0);

    let health = http_get(admin_addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("ok\n"), "{health}");

    let proxy_url = format!("http://{proxy_addr}");
    let ca_crt = ca_dir.join("ca.crt");

    // An allowed destination goes through, MITMed with the proxy's CA.
    let mut cmd = curl();
    cmd.args([
        "-sS",
        "-w",
        "\n%{http_code}",
        "--proxy",
        &proxy_url,
        "--cacert",
    ])
    .arg(&ca_crt)
    .arg(format!("https://{ALLOWED}/echo"));
    let o = output(cmd, "curl").await;
    assert_code(&o, 0);
    let out = stdout(&o);
    let (body, code) = out.rsplit_once('\n').unwrap();
    assert_eq!(code, "200", "{out}");
    assert!(body.starts_with("GET /echo"), "{body}");
    tokio::time::timeout(WAIT, upstream.wait_for_requests(1))
        .await
        .expect("the upstream saw no request");
    let received = upstream.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].path(), "/echo");
    assert_eq!(received[0].sni.as_deref(), Some(ALLOWED));

    // An unlisted destination is refused at CONNECT.
    let mut cmd = curl();
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_connect}",
        "--proxy",
        &proxy_url,
        "--cacert",
    ])
    .arg(&ca_crt)
    .arg("https://unlisted.example.test/");
    let o = output(cmd, "curl").await;
    assert!(!o.status.success(), "curl to an unlisted host succeeded");
    assert_eq!(stdout(&o), "403", "CONNECT status; stderr: {}", stderr(&o));
    assert_eq!(
        upstream.request_count(),
        1,
        "the refused request reached the upstream"
    );

    // SIGTERM: a clean exit within the shutdown grace (2s; generous slack for slow CI).
    proxy.terminate();
    let (status, took) = proxy.wait_timed().await;
    let log = proxy.stderr.all().await.to_vec();
    assert_eq!(status.code(), Some(0), "{status}\n{}", log.join("\n"));
    assert!(
        took < Duration::from_secs(2) + Duration::from_secs(5),
        "shutdown took {took:?}"
    );
    assert!(
        log.iter().any(|l| is_message(l, "shutting down")),
        "{}",
        log.join("\n")
    );
    for line in log.iter().filter(|l| !l.trim().is_empty()) {
        assert!(
            json_line(line).is_some(),
            "stderr line is not a JSON object: {line}"
        );
    }
    assert!(proxy.stdout.all().await.is_empty(), "serve wrote to stdout");
}

/// Receive one sd_notify datagram.
async fn recv_notify(sock: &tokio::net::UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, sock.recv(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no sd_notify message within {WAIT:?}"))
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// `serve` with `NOTIFY_SOCKET` pointing at a datagram socket we own.
fn serve_with_notify(dir: &Path, config: &Path) -> (Proc, tokio::net::UnixDatagram) {
    let sock_path = dir.join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let mut cmd = credproxy(args(&[&"serve", &"--config", &config]));
    cmd.env("NOTIFY_SOCKET", &sock_path);
    (Proc::spawn_cmd(cmd), sock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_notifies_systemd_ready_and_stopping() {
    let (pki, upstream) = tls_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = serve_setup(dir.path(), &pki, &upstream).await;
    let (mut proxy, sock) = serve_with_notify(dir.path(), &config);

    let msg = recv_notify(&sock).await;
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    // READY is sent after every listener is bound: the admin endpoint answers.
    proxy
        .stderr
        .wait_for("\"credproxy ready\" log line", |l| {
            is_message(l, "credproxy ready")
        })
        .await;
    let admin = proxy
        .stderr
        .seen
        .iter()
        .filter(|l| is_message(l, "admin listening"))
        .find_map(|l| logged_addr(l))
        .unwrap_or_else(|| panic!("no admin address logged:\n{}", proxy.stderr.text()));
    let health = http_get(admin, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    proxy.terminate();
    let msg = recv_notify(&sock).await;
    assert!(msg.lines().any(|l| l == "STOPPING=1"), "{msg:?}");
    let status = proxy.wait().await;
    assert_eq!(
        status.code(),
        Some(0),
        "{status}\n{}",
        proxy.stderr.all().await.join("\n")
    );
}

// A supervisor may stop the proxy the moment it reports ready (systemd READY=1, or the dev
// exports on stdout). Today both commands install their SIGTERM handler only after that, so
// an early SIGTERM kills the process with the default disposition instead of a clean exit.
// These fail (racily) until the handlers are installed before readiness is announced.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sigterm_right_after_ready_exits_cleanly() {
    let (pki, upstream) = tls_upstream().await;
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let config = serve_setup(dir.path(), &pki, &upstream).await;
        let (mut proxy, sock) = serve_with_notify(dir.path(), &config);
        let msg = recv_notify(&sock).await;
        assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
        proxy.terminate();
        let status = proxy.wait().await;
        assert_eq!(
            status.code(),
            Some(0),
            "SIGTERM right after READY=1: {status}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_sigterm_right_after_the_exports_exits_cleanly() {
    let (pki, upstream) = tls_upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    for _ in 0..5 {
        let (mut dev, _) = start_dev(&state, &dev_upstream_args(&pki, &upstream), &[]).await;
        dev.terminate();
        let status = dev.wait().await;
        assert_eq!(
            status.code(),
            Some(0),
            "SIGTERM right after the exports: {status}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 6. dev, end to end
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_prints_a_working_agent_environment_and_reuses_its_ca() {
    let (pki, upstream) = tls_upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");

    let (mut dev, env) = start_dev(&state, &dev_upstream_args(&pki, &upstream), &[]).await;
    let keys: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "AWS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "GIT_SSL_CAINFO",
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "NODE_EXTRA_CA_CERTS",
            "NODE_USE_ENV_PROXY",
            "NO_PROXY",
            "REQUESTS_CA_BUNDLE",
            "SSL_CERT_FILE",
            "http_proxy",
            "https_proxy",
            "no_proxy"
        ],
        "{env:?}"
    );
    // http://dev-agent:<dev token>@ADDR: the token authenticates the agent.
    let proxy_url = &env["HTTPS_PROXY"];
    let (token, addr) = proxy_url
        .strip_prefix("http://dev-agent:")
        .and_then(|rest| rest.rsplit_once('@'))
        .unwrap_or_else(|| panic!("HTTPS_PROXY={proxy_url}"));
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token}");
    let addr: SocketAddr = addr.parse().unwrap();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    for name in ["HTTP_PROXY", "https_proxy", "http_proxy"] {
        assert_eq!(&env[name], proxy_url, "{name}");
    }
    assert_eq!(env["NO_PROXY"], "localhost,127.0.0.1,::1");
    assert_eq!(env["no_proxy"], env["NO_PROXY"]);
    assert_eq!(env["NODE_USE_ENV_PROXY"], "1");
    let ca_crt = state.join("ca").join("ca.crt");
    assert_eq!(Path::new(&env["NODE_EXTRA_CA_CERTS"]), ca_crt);
    for name in [
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "AWS_CA_BUNDLE",
    ] {
        assert_eq!(env[name], env["SSL_CERT_FILE"], "{name}");
    }
    let ca_pem = std::fs::read_to_string(&ca_crt).unwrap();
    let bundle = std::fs::read_to_string(&env["SSL_CERT_FILE"]).unwrap();
    assert!(bundle.contains(&ca_pem), "the bundle lacks the dev CA");

    assert_eq!(mode(&state), 0o700, "state dir mode");
    assert_eq!(mode(&state.join("ca").join("ca.key")), 0o400, "ca.key mode");

    // curl with exactly the printed environment: no --proxy, no --cacert.
    let agent_curl = |url: String, extra: &[&str]| {
        let mut cmd = curl();
        cmd.env_clear().envs(&env).arg("-sS").args(extra).arg(url);
        cmd
    };
    let o = output(
        agent_curl(format!("https://{ALLOWED}/echo"), &["-w", "\n%{http_code}"]),
        "curl",
    )
    .await;
    assert_code(&o, 0);
    let out = stdout(&o);
    let (body, code) = out.rsplit_once('\n').unwrap();
    assert_eq!(code, "200", "{out}");
    assert!(body.starts_with("GET /echo"), "{body}");
    tokio::time::timeout(WAIT, upstream.wait_for_requests(1))
        .await
        .expect("the upstream saw no request");
    assert_eq!(upstream.received()[0].sni.as_deref(), Some(ALLOWED));

    let o = output(
        agent_curl(
            "https://unlisted.example.test/".into(),
            &["-o", "/dev/null", "-w", "%{http_connect}"],
        ),
        "curl",
    )
    .await;
    assert!(!o.status.success(), "curl to an unlisted host succeeded");
    assert_eq!(stdout(&o), "403", "CONNECT status; stderr: {}", stderr(&o));

    dev.terminate();
    let status = dev.wait().await;
    assert_eq!(
        status.code(),
        Some(0),
        "{status}\n{}",
        dev.stderr.all().await.join("\n")
    );
    drop(dev);

    // A second run with the same state directory reuses the CA.
    let (mut dev, env2) = start_dev(&state, &dev_upstream_args(&pki, &upstream), &[]).await;
    assert_eq!(
        std::fs::read_to_string(&ca_crt).unwrap(),
        ca_pem,
        "the CA was replaced"
    );
    assert_eq!(env2, {
        let mut e = env.clone();
        for name in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
            e.insert(name.into(), env2[name].clone());
        }
        e
    });
    // ... so an agent that trusted the first run's CA trusts the second run too.
    let mut cmd = curl();
    cmd.env_clear()
        .envs(&env)
        .env("HTTPS_PROXY", &env2["HTTPS_PROXY"])
        .env("https_proxy", &env2["https_proxy"])
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://{ALLOWED}/echo"));
    let o = output(cmd, "curl").await;
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "200");
    dev.terminate();
    let status = dev.wait().await;
    assert_eq!(
        status.code(),
        Some(0),
        "{status}\n{}",
        dev.stderr.all().await.join("\n")
    );
}
