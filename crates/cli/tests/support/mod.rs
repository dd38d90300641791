//! Shared harness of the end-to-end CLI tests (`policy`, `token`, `dev_mode`, `openbao`):
//! real processes, ports from the OS, every wait bounded by [`WAIT`], every child owned by a
//! guard that kills it when dropped. `cli.rs` uses it too.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use credproxy_testkit::{TestPki, Upstream, UpstreamOptions, Validity};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Upper bound for any single wait (process start, output line, exit, curl).
pub const WAIT: Duration = Duration::from_secs(60);

/// Exit status for bad usage or configuration.
pub const EXIT_USAGE: i32 = 64;

/// The upstream's name; pinned to its address with `upstream.resolve` / `--resolve`.
pub const ALLOWED: &str = "api.example.test";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_credproxy")
}

/// A `credproxy` command with output captured and nothing inherited that changes behaviour.
pub fn credproxy<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
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
pub async fn output(mut cmd: Command, what: &str) -> Output {
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"))
}

/// Run `credproxy ARGS` to completion.
pub async fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    output(credproxy(args), "credproxy").await
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
pub fn assert_code(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "unexpected exit status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

pub fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// A YAML (JSON) string literal.
pub fn q(s: impl AsRef<str>) -> String {
    serde_json::to_string(s.as_ref()).unwrap()
}

/// Command-line arguments built from strings and paths alike.
pub fn args(parts: &[&dyn AsRef<OsStr>]) -> Vec<OsString> {
    parts.iter().map(|p| p.as_ref().to_owned()).collect()
}

/// Lines of a child's output, read on a background task so the pipe never fills up.
pub struct Lines {
    name: &'static str,
    rx: mpsc::UnboundedReceiver<String>,
    pub seen: Vec<String>,
    eof: bool,
}

impl Lines {
    pub fn spawn(name: &'static str, r: impl AsyncRead + Unpin + Send + 'static) -> Lines {
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
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
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
    pub async fn all(&mut self) -> &[String] {
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

    pub fn text(&self) -> String {
        self.seen.join("\n")
    }
}

/// A running `credproxy` process; killed when dropped.
pub struct Proc {
    pub child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Proc {
    pub fn spawn<I, S>(args: I) -> Proc
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Proc::spawn_cmd(credproxy(args))
    }

    pub fn spawn_cmd(mut cmd: Command) -> Proc {
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
    pub fn terminate(&self) {
        let pid = self.child.id().expect("process still running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid}: {status}");
    }

    /// Wait for the process to exit (bounded by [`WAIT`]).
    pub async fn wait(&mut self) -> ExitStatus {
        self.wait_timed().await.0
    }

    /// [`Proc::wait`], also returning how long the exit took.
    pub async fn wait_timed(&mut self) -> (ExitStatus, Duration) {
        let start = Instant::now();
        let status = match tokio::time::timeout(WAIT, self.child.wait()).await {
            Ok(s) => s.expect("wait for credproxy"),
            Err(_) => panic!(
                "credproxy did not exit within {WAIT:?}\n--- stderr\n{}",
                self.stderr.text()
            ),
        };
        (status, start.elapsed())
    }

    /// SIGTERM, then assert a clean exit.
    pub async fn stop(&mut self) {
        self.terminate();
        let status = self.wait().await;
        assert_eq!(
            status.code(),
            Some(0),
            "{status}\n{}",
            self.stderr.all().await.join("\n")
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Harmless if it already exited; kill_on_drop is a second line of defence.
        let _ = self.child.start_kill();
    }
}

/// `curl` with no proxy or CA settings inherited from the test environment.
pub fn curl() -> Command {
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

/// Run curl and split `-w '\n%{http_code}'` output into (body, status).
pub async fn curl_body_and_code(mut cmd: Command) -> (String, String) {
    cmd.args(["-sS", "-w", "\n%{http_code}"]);
    let o = output(cmd, "curl").await;
    assert_code(&o, 0);
    let out = stdout(&o);
    let (body, code) = out.rsplit_once('\n').unwrap();
    (body.to_owned(), code.to_owned())
}

/// A TLS upstream serving [`ALLOWED`] with a certificate from its own test PKI.
pub async fn tls_upstream() -> (TestPki, Upstream) {
    let pki = TestPki::new();
    let upstream =
        Upstream::start(UpstreamOptions::tls(pki.issue(&[ALLOWED], Validity::Valid))).await;
    (pki, upstream)
}

/// `credproxy ca init --dir DIR/ca`.
pub async fn ca_init(dir: &Path) {
    let o = run(args(&[&"ca", &"init", &"--dir", &dir.join("ca")])).await;
    assert_code(&o, 0);
}

/// Parse a JSON log line; `None` for anything else.
pub fn json_line(line: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str(line) {
        Ok(serde_json::Value::Object(m)) => Some(m),
        _ => None,
    }
}

pub fn is_message(line: &str, msg: &str) -> bool {
    json_line(line).is_some_and(|m| m.get("message").and_then(|v| v.as_str()) == Some(msg))
}

/// The socket address logged in a JSON line (any string field, `tcp:` prefix allowed).
pub fn logged_addr(line: &str) -> Option<SocketAddr> {
    json_line(line)?.values().find_map(|v| {
        let s = v.as_str()?;
        s.strip_prefix("tcp:").unwrap_or(s).parse().ok()
    })
}

/// The common part of a serve config (JSON logs, listener and admin on `127.0.0.1:0`, CA in
/// `ca/`, [`ALLOWED`] pinned to `upstream` and trusted through `pki`); append sections.
pub fn serve_config_base(pki: &TestPki, upstream: &Upstream) -> String {
    format!(
        "listeners:\n  - name: agents\n    tcp: \"127.0.0.1:0\"\n\
         admin:\n  tcp: \"127.0.0.1:0\"\n\
         ca:\n  cert_file: ca/ca.crt\n  key_file: ca/ca.key\n\
         allowed_domains:\n  - {ALLOWED}\n\
         upstream:\n  extra_ca_files: [{}]\n  resolve:\n    {ALLOWED}: {}\n\
         limits:\n  shutdown_grace: 2s\n\
         log:\n  format: json\n  level: info\n",
        q(pki.ca_cert_path().to_string_lossy()),
        q(upstream.addr().to_string()),
    )
}

/// Start `credproxy serve --config FILE`, wait for "credproxy ready" and return the process
/// and its proxy listener address.
pub async fn start_serve(config: &Path) -> (Proc, SocketAddr) {
    let mut proxy = Proc::spawn(args(&[&"serve", &"--config", &config]));
    proxy
        .stderr
        .wait_for("\"credproxy ready\" log line", |l| {
            is_message(l, "credproxy ready")
        })
        .await;
    let addr = proxy
        .stderr
        .seen
        .iter()
        .filter(|l| is_message(l, "listening"))
        .find_map(|l| logged_addr(l))
        .unwrap_or_else(|| panic!("no listener address logged:\n{}", proxy.stderr.text()));
    (proxy, addr)
}

/// The `export NAME=VALUE` lines of the `dev` output so far.
pub fn exports(lines: &[String]) -> BTreeMap<String, String> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("export "))
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Start `credproxy dev --state-dir STATE --listen/--admin 127.0.0.1:0 EXTRA...` with `env`
/// added to its environment, and read its exports (everything up to `NODE_USE_ENV_PROXY`).
pub async fn start_dev(
    state: &Path,
    extra: &[OsString],
    env: &[(&str, &str)],
) -> (Proc, BTreeMap<String, String>) {
    let mut a = args(&[
        &"dev",
        &"--state-dir",
        &state,
        &"--listen",
        &"127.0.0.1:0",
        &"--admin",
        &"127.0.0.1:0",
    ]);
    a.extend(extra.iter().cloned());
    let mut cmd = credproxy(a);
    cmd.envs(env.iter().copied());
    let mut dev = Proc::spawn_cmd(cmd);
    dev.stdout
        .wait_for("export NODE_USE_ENV_PROXY", |l| {
            l.starts_with("export NODE_USE_ENV_PROXY")
        })
        .await;
    let env = exports(&dev.stdout.seen);
    (dev, env)
}

/// `--allow ALLOWED --resolve ALLOWED=<upstream> --upstream-ca <pki>` for `dev`.
pub fn dev_upstream_args(pki: &TestPki, upstream: &Upstream) -> Vec<OsString> {
    args(&[
        &"--allow",
        &ALLOWED,
        &"--resolve",
        &format!("{ALLOWED}={}", upstream.addr()),
        &"--upstream-ca",
        &pki.ca_cert_path(),
    ])
}

/// Wait until `proc` has logged (JSON, on stderr) a line with message `msg`, whether before
/// or after the lines already read.
pub async fn wait_logged(proc: &mut Proc, msg: &str) {
    if proc.stderr.seen.iter().any(|l| is_message(l, msg)) {
        return;
    }
    proc.stderr
        .wait_for(&format!("{msg:?} log line"), |l| is_message(l, msg))
        .await;
}
