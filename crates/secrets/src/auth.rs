//! OpenBao authentication: one background task obtains a token, renews it before it expires,
//! and replaces it when OpenBao refuses it; request paths only read the current token.
//!
//! Why a task and not lazy login on the request path: renewal must happen on a schedule even
//! when no request needs a secret, and readiness (`/readyz`) must reflect the token's state
//! without a request to drive it.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use credproxy_core::Secret;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::http::BaoHttp;
use crate::kv::wipe;
use crate::store::Counters;

/// How often a token file's modification time is checked.
const TOKEN_FILE_POLL: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Kept short: recovery after an OpenBao outage waits at most this long for the next login.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How the task logs in.
#[derive(Debug, Clone)]
pub(crate) enum AuthMethod {
    TokenFile(PathBuf),
    AppRole {
        role_id_file: PathBuf,
        secret_id_file: PathBuf,
        mount: String,
    },
}

impl AuthMethod {
    fn name(&self) -> &'static str {
        match self {
            AuthMethod::TokenFile(_) => "token_file",
            AuthMethod::AppRole { .. } => "approle",
        }
    }
}

/// A token handed to a request, with the login it came from so a refusal can be attributed.
#[derive(Clone)]
pub(crate) struct Token {
    pub secret: Secret,
    pub epoch: u64,
}

/// Shared between the task (writer) and requests (readers).
pub(crate) struct Auth {
    state: Mutex<State>,
    /// Bumped on every state change, for waiters.
    changed: watch::Sender<u64>,
    /// Asks the task to log in again now (a request saw the token refused).
    wake: Notify,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct State {
    token: Option<Held>,
    phase: Phase,
    epoch: u64,
    last_error: Option<String>,
}

struct Held {
    token: Secret,
    expires_at: Option<Instant>,
    epoch: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A login is in progress and no earlier attempt has failed: worth waiting for.
    #[default]
    Authenticating,
    Ready,
    /// The last login failed; the task retries with backoff. Requests fail fast.
    Failing,
}

impl Held {
    fn valid(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}

impl Auth {
    pub(crate) fn new(counters: Arc<Counters>) -> Auth {
        Auth {
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
            wake: Notify::new(),
            counters,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State inconsistent (every update is a
        // few field assignments), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The current token if it has not expired.
    pub(crate) fn valid_token(&self) -> Option<Token> {
        let st = self.lock();
        let now = Instant::now();
        st.token.as_ref().filter(|h| h.valid(now)).map(|h| Token {
            secret: h.token.clone(),
            epoch: h.epoch,
        })
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.valid_token().is_some()
    }

    /// A valid token, waiting (until `deadline`) only while a login is in progress; when the
    /// last login failed, answers at once with its error so requests fail fast during an
    /// outage.
    pub(crate) async fn token(&self, deadline: Instant) -> Result<Token, String> {
        let mut rx = self.changed.subscribe();
        loop {
            {
                let st = self.lock();
                let now = Instant::now();
                if let Some(h) = st.token.as_ref().filter(|h| h.valid(now)) {
                    return Ok(Token {
                        secret: h.token.clone(),
                        epoch: h.epoch,
                    });
                }
                if st.phase == Phase::Failing {
                    return Err(st
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "login failed".to_string()));
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives in `self`, so it cannot be dropped while we borrow it.
                Ok(Err(_)) => return Err("authentication stopped".to_string()),
                Err(_) => return Err("no token yet: login still in progress".to_string()),
            }
        }
    }

    /// Waits until a valid token is held or `deadline` passes.
    pub(crate) async fn wait_ready(&self, deadline: Instant) -> bool {
        let mut rx = self.changed.subscribe();
        loop {
            if self.is_ready() {
                return true;
            }
            // Wake at the deadline at the latest; a token expiring silently is not an event,
            // but expiry only makes us less ready, which the check above already reports.
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return self.is_ready();
            }
        }
    }

    /// A request found the token from login `epoch` refused (lookup-self said so): drop it
    /// and have the task log in again. Ignored if that token was already replaced.
    pub(crate) fn refused(&self, epoch: u64) {
        {
            let mut st = self.lock();
            match &st.token {
                Some(h) if h.epoch == epoch => {}
                _ => return,
            }
            st.token = None;
            st.phase = Phase::Authenticating;
        }
        tracing::warn!("openbao refused the proxy's token; logging in again");
        self.bump();
        self.wake.notify_one();
    }

    fn install(&self, token: Secret, expires_at: Option<Instant>) -> u64 {
        let epoch = {
            let mut st = self.lock();
            st.epoch += 1;
            let epoch = st.epoch;
            st.token = Some(Held {
                token,
                expires_at,
                epoch,
            });
            st.phase = Phase::Ready;
            st.last_error = None;
            epoch
        };
        self.bump();
        epoch
    }

    fn extend(&self, epoch: u64, expires_at: Option<Instant>) {
        let mut st = self.lock();
        if let Some(h) = st.token.as_mut().filter(|h| h.epoch == epoch) {
            h.expires_at = expires_at;
        }
    }

    /// The token of login `epoch` is no longer usable; a new login follows.
    fn drop_token(&self, epoch: u64) {
        {
            let mut st = self.lock();
            if st.token.as_ref().is_some_and(|h| h.epoch == epoch) {
                st.token = None;
            }
            st.phase = Phase::Authenticating;
        }
        self.bump();
    }

    fn fail(&self, error: String) {
        {
            let mut st = self.lock();
            st.phase = Phase::Failing;
            st.last_error = Some(error);
        }
        self.bump();
    }
}

/// A token just obtained.
struct Lease {
    token: Secret,
    /// Zero: the token does not expire (root or periodic-less tokens from a file).
    ttl: Duration,
    renewable: bool,
    /// For token files: the file's state when it was read.
    stamp: Option<FileStamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    std::fs::metadata(path).ok().map(|m| FileStamp {
        modified: m.modified().ok(),
        len: m.len(),
    })
}

#[derive(Debug)]
pub(crate) enum AuthError {
    /// OpenBao (or the local files) said no: an operator must act.
    Refused(String),
    /// OpenBao could not be asked: retry.
    Unavailable(String),
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Refused(m) | AuthError::Unavailable(m) => f.write_str(m),
        }
    }
}

/// Why the keep-alive loop handed back to login.
#[derive(Debug)]
enum Relogin {
    Refused,
    Expired,
    MaxTtl,
    FileChanged,
}

/// Reads a credential file, trimming surrounding whitespace (the ids and tokens never
/// contain any). Errors name the file, never its content.
async fn read_id_file(path: &Path, what: &str) -> Result<Secret, AuthError> {
    let bytes =
        zeroize::Zeroizing::new(tokio::fs::read(path).await.map_err(|e| {
            AuthError::Refused(format!("cannot read {what} {}: {e}", path.display()))
        })?);
    let trimmed = bytes.trim_ascii();
    if trimmed.is_empty() {
        return Err(AuthError::Refused(format!(
            "{what} {} is empty",
            path.display()
        )));
    }
    Ok(Secret::new(trimmed))
}

fn secs(body: &Value, pointer: &str) -> Duration {
    Duration::from_secs(body.pointer(pointer).and_then(Value::as_u64).unwrap_or(0))
}

async fn login(http: &BaoHttp, method: &AuthMethod) -> Result<Lease, AuthError> {
    match method {
        AuthMethod::AppRole {
            role_id_file,
            secret_id_file,
            mount,
        } => {
            let role_id = read_id_file(role_id_file, "role_id_file").await?;
            let secret_id = read_id_file(secret_id_file, "secret_id_file").await?;
            let mut body = json!({
                "role_id": String::from_utf8_lossy(role_id.expose()),
                "secret_id": String::from_utf8_lossy(secret_id.expose()),
            });
            let result = http
                .call(
                    Method::POST,
                    &format!("auth/{mount}/login"),
                    None,
                    Some(&body),
                )
                .await;
            wipe(&mut body);
            let mut answer = result.map_err(|e| AuthError::Unavailable(e.0))?;
            let outcome = match answer.status {
                StatusCode::OK => match answer.body.pointer_mut("/auth/client_token") {
                    Some(Value::String(token)) if !token.is_empty() => Ok(Lease {
                        token: Secret::new(std::mem::take(token).into_bytes()),
                        ttl: secs(&answer.body, "/auth/lease_duration"),
                        renewable: answer
                            .body
                            .pointer("/auth/renewable")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                        stamp: None,
                    }),
                    _ => Err(AuthError::Unavailable(
                        "approle login answer has no client_token".to_string(),
                    )),
                },
                s if s.is_client_error() => Err(AuthError::Refused(format!(
                    "approle login at auth/{mount} refused: {}",
                    answer.errors()
                ))),
                _ => Err(AuthError::Unavailable(format!(
                    "approle login at auth/{mount} failed: {}",
                    answer.errors()
                ))),
            };
            wipe(&mut answer.body);
            outcome
        }
        AuthMethod::TokenFile(path) => {
            let stamp = stamp(path);
            let token = read_id_file(path, "token_file").await?;
            match lookup_self(http, &token).await {
                Ok(info) => Ok(Lease {
                    token,
                    ttl: info.ttl,
                    renewable: info.renewable,
                    stamp,
                }),
                Err(AuthError::Refused(e)) => Err(AuthError::Refused(format!(
                    "the token in token_file {} was refused: {e}",
                    path.display()
                ))),
                Err(e) => Err(e),
            }
        }
    }
}

pub(crate) struct TokenInfo {
    ttl: Duration,
    renewable: bool,
}

/// `auth/token/lookup-self`: is this token valid, and for how long.
pub(crate) async fn lookup_self(http: &BaoHttp, token: &Secret) -> Result<TokenInfo, AuthError> {
    let mut answer = http
        .call(Method::GET, "auth/token/lookup-self", Some(token), None)
        .await
        .map_err(|e| AuthError::Unavailable(e.0))?;
    let outcome = match answer.status {
        StatusCode::OK => Ok(TokenInfo {
            ttl: secs(&answer.body, "/data/ttl"),
            renewable: answer
                .body
                .pointer("/data/renewable")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }),
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => {
            Err(AuthError::Refused(answer.errors()))
        }
        _ => Err(AuthError::Unavailable(format!(
            "token lookup failed: {}",
            answer.errors()
        ))),
    };
    wipe(&mut answer.body);
    outcome
}

/// `auth/token/renew-self` with the token's own default increment; returns the new TTL.
async fn renew_self(http: &BaoHttp, token: &Secret) -> Result<Duration, AuthError> {
    let mut answer = http
        .call(
            Method::POST,
            "auth/token/renew-self",
            Some(token),
            Some(&json!({})),
        )
        .await
        .map_err(|e| AuthError::Unavailable(e.0))?;
    let outcome = match answer.status {
        StatusCode::OK => Ok(secs(&answer.body, "/auth/lease_duration")),
        s if s.is_client_error() => Err(AuthError::Refused(answer.errors())),
        _ => Err(AuthError::Unavailable(answer.errors())),
    };
    wipe(&mut answer.body);
    outcome
}

struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(BACKOFF_MIN)
    }
    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        d
    }
    fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
}

fn expiry(now: Instant, ttl: Duration) -> Option<Instant> {
    (!ttl.is_zero()).then(|| now + ttl)
}

/// The authentication task; runs until aborted (the store aborts it when dropped).
pub(crate) async fn run(auth: Arc<Auth>, http: BaoHttp, method: AuthMethod) {
    let mut backoff = Backoff::new();
    // Repeated identical failures are logged once at warn/error, then at debug.
    let mut last_logged: Option<String> = None;
    loop {
        let lease = match login(&http, &method).await {
            Ok(lease) => lease,
            Err(error) => {
                auth.counters.login_failures.fetch_add(1, Ordering::Relaxed);
                let delay = backoff.next();
                let text = error.to_string();
                let retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                if last_logged.as_deref() == Some(text.as_str()) {
                    tracing::debug!(error = %text, retry_in_ms, "openbao login failed again");
                } else {
                    match &error {
                        AuthError::Refused(_) => {
                            tracing::error!(error = %text, retry_in_ms, "openbao login refused")
                        }
                        AuthError::Unavailable(_) => {
                            tracing::warn!(error = %text, retry_in_ms, "openbao login failed")
                        }
                    }
                    last_logged = Some(text.clone());
                }
                auth.fail(text);
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        backoff.reset();
        last_logged = None;
        auth.counters.logins.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            method = method.name(),
            ttl_secs = lease.ttl.as_secs(),
            renewable = lease.renewable,
            "openbao login succeeded"
        );
        let epoch = auth.install(lease.token.clone(), expiry(Instant::now(), lease.ttl));
        let why = keep_alive(&auth, &http, &method, epoch, lease).await;
        tracing::debug!(reason = ?why, "openbao token replaced");
    }
}

/// Renews the token at ~2/3 of its TTL until it must be replaced, and says why.
async fn keep_alive(
    auth: &Auth,
    http: &BaoHttp,
    method: &AuthMethod,
    epoch: u64,
    lease: Lease,
) -> Relogin {
    let original_ttl = lease.ttl;
    let now = Instant::now();
    let mut expires_at = expiry(now, lease.ttl);
    let mut next_renewal = expires_at.map(|_| now + lease.ttl * 2 / 3);
    // Once OpenBao grants less than the original TTL the token is near its max TTL; renewing
    // further only shortens it, so the next step is a fresh login (AppRole) instead.
    let mut capped = false;
    let mut backoff = Backoff::new();
    let token_file = match method {
        AuthMethod::TokenFile(path) => Some(path),
        AuthMethod::AppRole { .. } => None,
    };

    loop {
        let poll_at = token_file.map(|_| Instant::now() + TOKEN_FILE_POLL);
        let wake_at = match (next_renewal, poll_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            _ = auth.wake.notified() => return Relogin::Refused,
            _ = sleep_until(wake_at) => {}
        }
        if let Some(path) = token_file {
            if stamp(path) != lease.stamp {
                tracing::info!(path = %path.display(), "openbao token file changed; reloading");
                return Relogin::FileChanged;
            }
        }
        let now = Instant::now();
        if expires_at.is_some_and(|at| now >= at) {
            tracing::warn!("openbao token expired before it could be renewed");
            auth.drop_token(epoch);
            return Relogin::Expired;
        }
        let Some(at) = next_renewal else { continue };
        if now < at {
            continue;
        }
        if !lease.renewable || capped {
            if token_file.is_some() {
                // Someone else owns this token; wait for the file to change or the token
                // to expire.
                next_renewal = expires_at;
                continue;
            }
            return Relogin::MaxTtl;
        }
        match renew_self(http, &lease.token).await {
            Ok(ttl) => {
                auth.counters.renewals.fetch_add(1, Ordering::Relaxed);
                backoff.reset();
                let now = Instant::now();
                capped = ttl < original_ttl;
                expires_at = expiry(now, ttl);
                next_renewal = expires_at.map(|_| now + ttl * 2 / 3);
                auth.extend(epoch, expires_at);
                tracing::debug!(ttl_secs = ttl.as_secs(), capped, "openbao token renewed");
            }
            Err(AuthError::Refused(error)) => {
                auth.counters
                    .renewal_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "openbao refused to renew the token; logging in again");
                auth.drop_token(epoch);
                return Relogin::Refused;
            }
            Err(AuthError::Unavailable(error)) => {
                auth.counters
                    .renewal_failures
                    .fetch_add(1, Ordering::Relaxed);
                let retry = Instant::now() + backoff.next();
                next_renewal = Some(expires_at.map_or(retry, |at| retry.min(at)));
                tracing::warn!(
                    %error,
                    "openbao token renewal failed; keeping the token until it expires"
                );
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
