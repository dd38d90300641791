#![allow(clippy::unwrap_used)]
//! End-to-end tests of the `credproxy` binary: real processes, real TLS, real curl.
//!
//! Every port comes from the OS (`:0`); the tests learn the bound addresses from what the
//! program prints (the `dev` exports on stdout, the `serve` JSON log on stderr). Nothing
//! sleeps to synchronise: every wait is on an output line or a process exit, and every wait
//! is bounded by [`WAIT`] so that a hang fails the test instead of blocking CI. Every child
//! process is owned by a [`Proc`] guard that kills it when dropped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use credproxy_testkit::{TestPki, Upstream, UpstreamOptions, Validity};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Upper bound for any single wait (process start, output line, exit, curl).
const WAIT: Duration = Duration::from_secs(60);

/// Exit status for bad usage or configuration.
const EXIT_USAGE: i32 = 64;

const ALLOWED: &str = "api.example.test";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_credproxy")
}

/// A `credproxy` command with output captured and nothing inherited that changes behaviour.
fn credproxy<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("CREDPROXY_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Run a command to completion (bounded by [`WAIT`]; the child is killed on timeout).
async fn output(mut cmd: Command, what: &str) -> Output {
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"))
}

/// Run `credproxy ARGS` to completion.
async fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    output(credproxy(args), "credproxy").await
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_code(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "unexpected exit status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// A YAML (JSON) string literal.
fn q(s: impl AsRef<str>) -> String {
    serde_json::to_string(s.as_ref()).unwrap()
}

/// Lines of a child's output, read on a background task so the pipe never fills up.
struct Lines {
    name: &'static str,
    rx: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
    eof: bool,
}

impl Lines {
    fn spawn(name: &'static str, r: impl AsyncRead + Unpin + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            name,
            rx,
            seen: Vec::new(),
            eof: false,
        }
    }

    /// Wait for the first line (from now on) matching `pred`; panic with everything seen
    /// so far if the stream ends or [`WAIT`] passes first.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Ok(None) => {
                    self.eof = true;
                    panic!(
                        "{} ended before {what}; it said:\n{}",
                        self.name,
                        self.seen.join("\n")
                    )
                }
                Err(_) => panic!(
                    "no {what} on {} within {WAIT:?}; it said:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Read to end of stream (the process has exited or is exiting) and return every line.
    async fn all(&mut self) -> &[String] {
        if !self.eof {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(line)) => self.seen.push(line),
                    Ok(None) => break,
                    Err(_) => panic!("{} did not reach end of stream within {WAIT:?}", self.name),
                }
            }
            self.eof = true;
        }
        &self.seen
    }

    fn text(&self) -> String {
        self.seen.join("\n")
    }
}

/// A running `credproxy` process; killed when dropped.
struct Proc {
    child: Child,
    stdout: Lines,
    stderr: Lines,
}

impl Proc {
    fn spawn<I, S>(args: I) -> Proc
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Proc::spawn_cmd(credproxy(args))
    }

    fn spawn_cmd(mut cmd: Command) -> Proc {
        let mut child = cmd.spawn().expect("spawn credproxy");
        let stdout = Lines::spawn("stdout", child.stdout.take().unwrap());
        let stderr = Lines::spawn("stderr", child.stderr.take().unwrap());
        Proc {
            child,
            stdout,
            stderr,
        }
    }

    /// Send SIGTERM (through kill(1), to stay free of unsafe code and extra crates).
    fn terminate(&self) {
        let pid = self.child.id().expect("process still running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid}: {status}");
    }

    /// Wait for the process to exit (bounded by `limit`); returns the status and how long
    /// it took.
    async fn wait(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(s) => s.expect("wait for credproxy"),
            Err(_) => panic!(
                "credproxy did not exit within {limit:?}\n--- stderr\n{}",
                self.stderr.text()
            ),
        };
        (status, start.elapsed())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Harmless if it already exited; kill_on_drop is a second line of defence.
        let _ = self.child.start_kill();
    }
}

/// `curl` with no proxy or CA settings inherited from the test environment.
fn curl() -> Command {
    let mut cmd = Command::new("curl");
    cmd.arg("-q") // ignore ~/.curlrc
        .args(["--max-time", "30"]);
    for v in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
        "CURL_CA_BUNDLE",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    ] {
        cmd.env_remove(v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

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

/// A TLS upstream serving `api.example.test` with a certificate from its own test PKI.
async fn tls_upstream() -> (TestPki, Upstream) {
    let pki = TestPki::new();
    let upstream =
        Upstream::start(UpstreamOptions::tls(pki.issue(&[ALLOWED], Validity::Valid))).await;
    (pki, upstream)
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
    let o = run([OsStrArg::from("check-config"), file.as_path().into()]).await;
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
    let o = run([OsStrArg::from("check-config"), file.as_path().into()]).await;
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

#[tokio::test]
async fn check_config_names_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("no-such-config.yaml");
    let o = run([OsStrArg::from("check-config"), file.as_path().into()]).await;
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
        let mut args = vec![OsStrArg::from("ca"), "init".into(), "--dir".into()];
        args.push(dir.as_path().into());
        if force {
            args.push("--force".into());
        }
        run(args)
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
    let o = run([
        OsStrArg::from("serve"),
        "--config".into(),
        file.as_path().into(),
    ])
    .await;
    assert_code(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("CA"), "stderr does not mention the CA:\n{err}");
    assert!(
        err.contains(&crt.display().to_string()),
        "stderr does not name {}:\n{err}",
        crt.display()
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
    let o = run([OsStrArg::from("serve"), "-c".into(), file.as_path().into()]).await;
    assert_code(&o, EXIT_USAGE);
    let err = stderr(&o);
    assert!(err.contains("ca"), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");

    let missing = dir.path().join("nope.yaml");
    let o = run([
        OsStrArg::from("serve"),
        "-c".into(),
        missing.as_path().into(),
    ])
    .await;
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

/// Parse a JSON log line; `None` for anything else.
fn json_line(line: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str(line) {
        Ok(serde_json::Value::Object(m)) => Some(m),
        _ => None,
    }
}

fn is_message(line: &str, msg: &str) -> bool {
    json_line(line).is_some_and(|m| m.get("message").and_then(|v| v.as_str()) == Some(msg))
}

/// The socket address logged in a JSON line (any string field, `tcp:` prefix allowed).
fn logged_addr(line: &str) -> Option<SocketAddr> {
    json_line(line)?.values().find_map(|v| {
        let s = v.as_str()?;
        s.strip_prefix("tcp:").unwrap_or(s).parse().ok()
    })
}

/// `ca init` into `dir/ca` and a serve config `dir/config.yaml` (JSON logs, 2s shutdown
/// grace, listener and admin on `127.0.0.1:0`) pinning `api.example.test` to `upstream`.
async fn serve_setup(dir: &Path, pki: &TestPki, upstream: &Upstream) -> PathBuf {
    let ca_dir = dir.join("ca");
    let o = run([
        OsStrArg::from("ca"),
        "init".into(),
        "--dir".into(),
        ca_dir.as_path().into(),
    ])
    .await;
    assert_code(&o, 0);
    let config = dir.join("config.yaml");
    // CA paths are relative: they resolve against the directory of the config file.
    std::fs::write(
        &config,
        format!(
            "listeners:\n  - name: agents\n    tcp: \"127.0.0.1:0\"\n\
             admin:\n  tcp: \"127.0.0.1:0\"\n\
             ca:\n  cert_file: ca/ca.crt\n  key_file: ca/ca.key\n\
             allowed_domains:\n  - {ALLOWED}\n\
             upstream:\n  extra_ca_files: [{}]\n  resolve:\n    {ALLOWED}: {}\n\
             identity:\n  danger_allow_anonymous: true\n\
             limits:\n  shutdown_grace: 2s\n\
             log:\n  format: json\n  level: info\n",
            q(pki.ca_cert_path().to_string_lossy()),
            q(upstream.addr().to_string()),
        ),
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

    let mut proxy = Proc::spawn([
        OsStrArg::from("serve"),
        "--config".into(),
        config.as_path().into(),
    ]);
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
    let (status, took) = proxy.wait(WAIT).await;
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
    let mut cmd = credproxy([OsStrArg::from("serve"), "--config".into(), config.into()]);
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
    let (status, _) = proxy.wait(WAIT).await;
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
        let (status, _) = proxy.wait(WAIT).await;
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
        let (mut dev, _) = start_dev(&state, &upstream, &pki).await;
        dev.terminate();
        let (status, _) = dev.wait(WAIT).await;
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

/// Start `credproxy dev` and read its exports (everything up to `NODE_USE_ENV_PROXY`).
async fn start_dev(
    state: &Path,
    upstream: &Upstream,
    pki: &TestPki,
) -> (Proc, BTreeMap<String, String>) {
    let mut args: Vec<OsStrArg> = vec!["dev".into(), "--state-dir".into(), state.into()];
    for a in [
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--allow",
        ALLOWED,
    ] {
        args.push(a.into());
    }
    args.push("--resolve".into());
    args.push(format!("{ALLOWED}={}", upstream.addr()).into());
    args.push("--upstream-ca".into());
    args.push(pki.ca_cert_path().into());
    let mut dev = Proc::spawn(args);
    dev.stdout
        .wait_for("export NODE_USE_ENV_PROXY", |l| {
            l.starts_with("export NODE_USE_ENV_PROXY")
        })
        .await;
    let env: BTreeMap<String, String> = dev
        .stdout
        .seen
        .iter()
        .filter_map(|l| l.strip_prefix("export "))
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    (dev, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_prints_a_working_agent_environment_and_reuses_its_ca() {
    let (pki, upstream) = tls_upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");

    let (mut dev, env) = start_dev(&state, &upstream, &pki).await;
    let keys: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "NODE_EXTRA_CA_CERTS",
            "NODE_USE_ENV_PROXY",
            "REQUESTS_CA_BUNDLE",
            "SSL_CERT_FILE"
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
    assert_eq!(&env["HTTP_PROXY"], proxy_url);
    assert_eq!(env["NODE_USE_ENV_PROXY"], "1");
    let ca_crt = state.join("ca").join("ca.crt");
    assert_eq!(Path::new(&env["NODE_EXTRA_CA_CERTS"]), ca_crt);
    assert_eq!(env["REQUESTS_CA_BUNDLE"], env["SSL_CERT_FILE"]);
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
    let (status, _) = dev.wait(WAIT).await;
    assert_eq!(
        status.code(),
        Some(0),
        "{status}\n{}",
        dev.stderr.all().await.join("\n")
    );
    drop(dev);

    // A second run with the same state directory reuses the CA.
    let (mut dev, env2) = start_dev(&state, &upstream, &pki).await;
    assert_eq!(
        std::fs::read_to_string(&ca_crt).unwrap(),
        ca_pem,
        "the CA was replaced"
    );
    assert_eq!(env2, {
        let mut e = env.clone();
        e.insert("HTTPS_PROXY".into(), env2["HTTPS_PROXY"].clone());
        e.insert("HTTP_PROXY".into(), env2["HTTP_PROXY"].clone());
        e
    });
    // ... so an agent that trusted the first run's CA trusts the second run too.
    let mut cmd = curl();
    cmd.env_clear()
        .envs(&env)
        .env("HTTPS_PROXY", &env2["HTTPS_PROXY"])
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://{ALLOWED}/echo"));
    let o = output(cmd, "curl").await;
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "200");
    dev.terminate();
    let (status, _) = dev.wait(WAIT).await;
    assert_eq!(
        status.code(),
        Some(0),
        "{status}\n{}",
        dev.stderr.all().await.join("\n")
    );
}

/// Command-line argument that may be a path; keeps the argument lists above readable.
struct OsStrArg(std::ffi::OsString);

impl AsRef<std::ffi::OsStr> for OsStrArg {
    fn as_ref(&self) -> &std::ffi::OsStr {
        &self.0
    }
}

impl From<&str> for OsStrArg {
    fn from(s: &str) -> Self {
        OsStrArg(s.into())
    }
}

impl From<String> for OsStrArg {
    fn from(s: String) -> Self {
        OsStrArg(s.into())
    }
}

impl From<&Path> for OsStrArg {
    fn from(p: &Path) -> Self {
        OsStrArg(p.as_os_str().to_owned())
    }
}
