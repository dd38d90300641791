//! A token kept fresh: [`RefreshingToken`] obtains an agent token by a [`TokenGrant`] (OAuth 2.0
//! client credentials, or the dev issuer), refreshes it at 80% of its lifetime, and on a
//! failed refresh keeps the current token until it expires while retrying with backoff.
//!
//! The proxy holds one per listener with `agent_token` (it authenticates that listener's
//! connections with it); `credproxy bridge --oidc-token-url` holds one to add to proxy
//! requests. Both use this implementation.
//!
//! Invariant: the token and the client secret are never logged, never part of an error or a
//! status, and `Debug` redacts them. The client secret is read from its file for each request
//! (so a rotated secret is picked up) and dropped right after.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use credproxy_core::Clock;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::dev::DevIssuer;
use crate::token::{client_credentials, ClientCredentials, TokenError, TokenResponse};

/// Refresh when this fraction of a token's lifetime has passed.
const REFRESH_AT: f64 = 0.8;
/// Lifetime assumed when the provider does not say (`expires_in` is optional).
const UNKNOWN_LIFETIME: Duration = Duration::from_secs(300);
/// First retry delay after a failed fetch; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Earliest refresh, whatever the lifetime (a provider answering `expires_in: 0` must not
/// make the refresher spin).
const MIN_REFRESH: Duration = Duration::from_millis(200);

/// How to obtain a token.
#[derive(Debug, Clone)]
pub enum TokenGrant {
    /// The OAuth 2.0 client-credentials grant against an OIDC provider.
    ClientCredentials(ClientCredentialsGrant),
    /// A token minted locally by credproxy's dev issuer (dev mode only).
    Dev(DevGrant),
}

/// A client-credentials grant whose secret lives in a file.
#[derive(Debug, Clone)]
pub struct ClientCredentialsGrant {
    /// The issuer (the token endpoint is found by discovery), unless `token_url` is set.
    pub issuer: Option<String>,
    /// The token endpoint, used as is.
    pub token_url: Option<String>,
    /// The client id.
    pub client_id: String,
    /// The file holding the client secret (a trailing newline is ignored); read for every
    /// request.
    pub client_secret_file: PathBuf,
    /// The audience to ask for.
    pub audience: Option<String>,
    /// The scope to ask for.
    pub scope: Option<String>,
    /// Extra PEM roots for an https provider.
    pub ca_files: Vec<PathBuf>,
}

/// Tokens from credproxy's own dev issuer.
#[derive(Clone)]
pub struct DevGrant {
    /// The issuer (its key).
    pub issuer: Arc<DevIssuer>,
    /// The agent id the tokens name (`sub`, `azp`, `client_id`).
    pub agent: String,
    /// Their `realm_access.roles`.
    pub roles: Vec<String>,
    /// Their lifetime.
    pub ttl: Duration,
}

impl std::fmt::Debug for DevGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevGrant")
            .field("key", &self.issuer.key_path())
            .field("agent", &self.agent)
            .field("roles", &self.roles)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// Read a client secret file: its content without the trailing newline; an empty file is an
/// error. The error names the file, never its content.
pub fn read_client_secret(path: &Path) -> Result<Zeroizing<String>, TokenError> {
    let text =
        Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| TokenError::SecretFile {
                path: path.to_owned(),
                source,
            })?,
        );
    let secret = Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_owned());
    if secret.is_empty() {
        return Err(TokenError::EmptySecret {
            path: path.to_owned(),
        });
    }
    Ok(secret)
}

impl TokenGrant {
    /// Obtain one token.
    pub async fn fetch(&self) -> Result<TokenResponse, TokenError> {
        match self {
            TokenGrant::ClientCredentials(g) => {
                let secret = read_client_secret(&g.client_secret_file)?;
                let req = ClientCredentials {
                    issuer: g.issuer.clone(),
                    token_url: g.token_url.clone(),
                    client_id: g.client_id.clone(),
                    client_secret: secret.to_string(),
                    audience: g.audience.clone(),
                    scope: g.scope.clone(),
                    ca_files: g.ca_files.clone(),
                };
                let result = client_credentials(&req).await;
                // The request's copy of the secret goes away with it.
                drop(Zeroizing::new(req.client_secret));
                result
            }
            TokenGrant::Dev(g) => {
                let token = g
                    .issuer
                    .issue(&g.agent, &g.roles, g.ttl)
                    .map_err(TokenError::Dev)?;
                Ok(TokenResponse {
                    access_token: token,
                    expires_in: Some(g.ttl),
                })
            }
        }
    }
}

/// Why no token can be used right now. The text names the cause for an operator (a provider
/// error, an unreadable file); it never holds a token or a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenUnavailable {
    /// The first request has not completed yet.
    #[error("the first token request has not completed")]
    Pending,
    /// No token was ever obtained; the last attempt failed with this.
    #[error("{0}")]
    Failed(String),
    /// The token expired and no refresh succeeded since.
    #[error("the token expired and refreshing failed ({0})")]
    Expired(String),
}

/// The state of a [`RefreshingToken`], for readiness reports and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenStatus {
    /// A usable token; `expires_in` is `None` when the provider gave no lifetime.
    Valid {
        expires_in: Option<Duration>,
        /// The last refresh failed (the token is still valid); the error, if any.
        refresh_error: Option<String>,
    },
    /// No usable token.
    Unavailable(TokenUnavailable),
}

/// A token obtained and refreshed in the background by [`RefreshingToken::spawn`].
pub struct RefreshingToken {
    /// Where token ages and the refresh wait are read (tokio's clock plus this clock's
    /// offset, so tokio's paused time in unit tests keeps working).
    clock: Clock,
    label: String,
    state: RwLock<State>,
    /// The number of completed attempts (successful or not); watchers see every change.
    attempts: watch::Sender<u64>,
    ok: AtomicU64,
    failed: AtomicU64,
}

impl std::fmt::Debug for RefreshingToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshingToken")
            .field("label", &self.label)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    token: Option<Held>,
    last_error: Option<String>,
}

impl State {
    /// The held token if it has not expired at `now`.
    fn valid(&self, now: Instant) -> Option<&Held> {
        self.token
            .as_ref()
            .filter(|h| h.expires.is_none_or(|e| now < e))
    }

    /// Why there is no valid token (when [`State::valid`] is `None`).
    fn unavailable(&self) -> TokenUnavailable {
        match (&self.token, &self.last_error) {
            (Some(_), e) => {
                TokenUnavailable::Expired(e.clone().unwrap_or_else(|| "no error recorded".into()))
            }
            (None, Some(e)) => TokenUnavailable::Failed(e.clone()),
            (None, None) => TokenUnavailable::Pending,
        }
    }
}

struct Held {
    token: Zeroizing<String>,
    /// Local deadline (monotonic), measured from when the token was asked for.
    expires: Option<Instant>,
    /// The same deadline on the wall clock, for metrics.
    expires_at: Option<SystemTime>,
}

/// The background refresher; aborted when dropped.
#[derive(Debug)]
pub struct RefreshTask(tokio::task::JoinHandle<()>);

impl Drop for RefreshTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl RefreshingToken {
    /// Start obtaining and refreshing tokens by `grant`; `label` names the token in logs
    /// (e.g. `listener vm-a`). The refresher runs until the returned task is dropped. Must be
    /// called inside a tokio runtime.
    pub fn spawn(
        label: impl Into<String>,
        grant: TokenGrant,
    ) -> (Arc<RefreshingToken>, RefreshTask) {
        RefreshingToken::spawn_with_clock(label, grant, Clock::system())
    }

    /// [`Self::spawn`] on `clock`: token ages and the refresh wait are read from it, so a test
    /// that advances it (and the provider's clock with it) reaches a refresh or an expiry at
    /// once.
    pub fn spawn_with_clock(
        label: impl Into<String>,
        grant: TokenGrant,
        clock: Clock,
    ) -> (Arc<RefreshingToken>, RefreshTask) {
        let me = Arc::new(RefreshingToken {
            clock,
            label: label.into(),
            state: RwLock::new(State::default()),
            attempts: watch::Sender::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let task = tokio::spawn(refresh_loop(me.clone(), grant));
        (me, RefreshTask(task))
    }

    /// The label given at [`Self::spawn`].
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Wait until the first attempt has completed, successful or not (so that readiness
    /// means "has a token" whenever the provider is up).
    pub async fn first_attempt(&self) {
        let mut rx = self.attempts.subscribe();
        let _ = rx.wait_for(|n| *n > 0).await;
    }

    /// Whether the first attempt has completed.
    pub fn attempted(&self) -> bool {
        *self.attempts.borrow() > 0
    }

    /// A receiver that changes after every completed attempt (its value is the number of
    /// attempts so far).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.attempts.subscribe()
    }

    /// Successful and failed fetches so far.
    pub fn fetches(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// The token to use now.
    pub fn current(&self) -> Result<Zeroizing<String>, TokenUnavailable> {
        let state = self.read();
        match state.valid(self.now()) {
            Some(held) => Ok(held.token.clone()),
            None => Err(state.unavailable()),
        }
    }

    /// The current state, without the token.
    pub fn status(&self) -> TokenStatus {
        let state = self.read();
        let now = self.now();
        match state.valid(now) {
            Some(held) => TokenStatus::Valid {
                expires_in: held.expires.map(|e| e.saturating_duration_since(now)),
                refresh_error: state.last_error.clone(),
            },
            None => TokenStatus::Unavailable(state.unavailable()),
        }
    }

    /// When the current token expires (wall clock), if there is one and it said.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.read().token.as_ref().and_then(|h| h.expires_at)
    }

    /// Now on this token's clock.
    fn now(&self) -> Instant {
        Instant::now() + self.clock.offset()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere while holding it; the data is a plain
        // value that is always consistent, so keep using it.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn store(&self, f: impl FnOnce(&mut State)) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        f(&mut state);
    }
}

/// When to refresh a token with `lifetime`, measured from when it was requested.
pub fn refresh_after(lifetime: Duration) -> Duration {
    lifetime.mul_f64(REFRESH_AT).max(MIN_REFRESH)
}

async fn refresh_loop(me: Arc<RefreshingToken>, grant: TokenGrant) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        // Measured before the request: the token cannot expire earlier than this plus its
        // lifetime, so the local expiry is conservative.
        let asked = me.now();
        let asked_wall = me.clock.now();
        let next = match grant.fetch().await {
            Ok(resp) => {
                let lifetime = resp.expires_in;
                let token = Zeroizing::new(resp.access_token);
                me.store(|s| {
                    s.token = Some(Held {
                        token,
                        expires: lifetime.map(|l| asked + l),
                        expires_at: lifetime.map(|l| asked_wall + l),
                    });
                    s.last_error = None;
                });
                me.ok.fetch_add(1, Ordering::Relaxed);
                let lifetime = lifetime.unwrap_or(UNKNOWN_LIFETIME);
                info!(token = %me.label, expires_in_s = lifetime.as_secs(), "agent token obtained");
                backoff = FIRST_BACKOFF;
                // A point on the clock, not a wait: a wait measured now and started later
                // would shift by any advance in between (the advance would be lost).
                asked + refresh_after(lifetime)
            }
            Err(e) => {
                let msg = error_chain(&e);
                me.failed.fetch_add(1, Ordering::Relaxed);
                let valid = me.current().is_ok();
                warn!(
                    token = %me.label,
                    error = %msg,
                    retry_in_ms = backoff.as_millis() as u64,
                    still_valid = valid,
                    "agent token request failed; a current token stays in use until it expires"
                );
                me.store(|s| s.last_error = Some(msg));
                let retry = me.now() + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                retry
            }
        };
        me.attempts.send_modify(|n| *n += 1);
        sleep_until_on(&me.clock, next).await;
    }
}

/// Waits `wait` on `clock`, counted from now: [`sleep_until_on`] the point `wait` ahead.
pub async fn sleep_on(clock: &Clock, wait: Duration) {
    sleep_until_on(clock, Instant::now() + clock.offset() + wait).await;
}

/// Waits until `deadline` on `clock` (tokio's clock plus the clock's offset, as
/// [`Clock::offset`] says): a plain tokio timer on the system clock; on an adjustable one
/// (tests), also woken by each [`Clock::advance`] to look at the clock again, so an advance
/// past the deadline ends the wait at once, whenever it happened. The one such wait in the
/// workspace (`core`, where the clock lives, has no timer): the refresher here and the
/// proxy's WebSocket expiry use it.
///
/// Callers pass the deadline rather than a wait measured earlier: a wait read off the clock
/// before an advance and started after it would end one advance too late.
pub async fn sleep_until_on(clock: &Clock, deadline: Instant) {
    wait_on(clock, || {
        deadline.saturating_duration_since(Instant::now() + clock.offset())
    })
    .await;
}

/// Waits until `deadline` on `clock`'s wall time ([`Clock::now`]), as [`sleep_until_on`].
pub async fn sleep_until_wall_on(clock: &Clock, deadline: SystemTime) {
    wait_on(clock, || {
        deadline.duration_since(clock.now()).unwrap_or_default()
    })
    .await;
}

/// Waits until `left` (the time to go, read from `clock`) is zero: a tokio timer, and on an
/// adjustable clock also each advance, after which `left` is read again.
async fn wait_on(clock: &Clock, left: impl Fn() -> Duration) {
    loop {
        // Taken before the time is read, so an advance in between is not missed.
        let advanced = clock.advanced();
        let left = left();
        if left.is_zero() {
            return;
        }
        if !clock.is_adjustable() {
            tokio::time::sleep(left).await;
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(left) => {}
            () = advanced => {}
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_at_eighty_percent() {
        assert_eq!(
            refresh_after(Duration::from_secs(300)),
            Duration::from_secs(240)
        );
        assert_eq!(
            refresh_after(Duration::from_millis(100)),
            Duration::from_millis(200)
        );
        assert_eq!(refresh_after(Duration::ZERO), MIN_REFRESH);
    }

    #[test]
    fn a_secret_file_is_trimmed_and_an_empty_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        let err = read_client_secret(&p).unwrap_err();
        assert!(matches!(err, TokenError::SecretFile { .. }), "{err}");
        std::fs::write(&p, "\n").unwrap();
        let err = read_client_secret(&p).unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        std::fs::write(&p, "hunter2\r\n").unwrap();
        assert_eq!(read_client_secret(&p).unwrap().as_str(), "hunter2");
    }

    #[tokio::test(start_paused = true)]
    async fn dev_tokens_are_obtained_and_refreshed_at_eighty_percent() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = Arc::new(DevIssuer::load_or_create(dir.path()).unwrap());
        let (tok, _task) = RefreshingToken::spawn(
            "test",
            TokenGrant::Dev(DevGrant {
                issuer,
                agent: "vm-a".into(),
                roles: vec!["r".into()],
                ttl: Duration::from_secs(100),
            }),
        );
        assert_eq!(tok.current().unwrap_err(), TokenUnavailable::Pending);
        tok.first_attempt().await;
        let first = tok.current().unwrap();
        assert!(matches!(
            tok.status(),
            TokenStatus::Valid {
                expires_in: Some(_),
                refresh_error: None
            }
        ));
        // Time advances (paused clock) to the refresh at 80 s.
        let mut rx = tok.subscribe();
        rx.wait_for(|n| *n >= 2).await.unwrap();
        assert_eq!(tok.fetches(), (2, 0));
        assert!(!format!("{tok:?}").contains(first.as_str()));
    }

    /// A waker that advances `clock` by `by` when woken: run synchronously by whoever wakes
    /// it, so it moves the clock at an exact point of the waking task.
    struct AdvanceOnWake {
        clock: Clock,
        by: Duration,
    }

    impl std::task::Wake for AdvanceOnWake {
        fn wake(self: Arc<Self>) {
            self.clock.advance(self.by);
        }
    }

    /// The race behind the listener-token test's failure on the moved clock: the refresher
    /// used to measure its wait right after a fetch and start it a moment later, so an advance
    /// in between (a test moving the clock as soon as it sees the fetch counted) was added to
    /// the wait instead of ending it. Here the advance happens at exactly that point: the
    /// watch that counts attempts wakes its receivers synchronously, between the two.
    #[tokio::test]
    async fn an_advance_right_after_a_fetch_still_reaches_the_refresh() {
        use std::future::Future;
        let dir = tempfile::tempdir().unwrap();
        let issuer = Arc::new(DevIssuer::load_or_create(dir.path()).unwrap());
        let clock = Clock::adjustable();
        const TTL: Duration = Duration::from_secs(3600);
        let (tok, _task) = RefreshingToken::spawn_with_clock(
            "test",
            TokenGrant::Dev(DevGrant {
                issuer,
                agent: "vm-a".into(),
                roles: vec!["r".into()],
                ttl: TTL,
            }),
            clock.clone(),
        );
        // Registered before the refresher first runs (a current-thread runtime: it runs when
        // this test awaits): the first attempt's count wakes this, which moves the clock past
        // the refresh point (80% of the hour) before the refresher starts waiting.
        let mut hook = tok.subscribe();
        let waker = std::task::Waker::from(Arc::new(AdvanceOnWake {
            clock: clock.clone(),
            by: TTL.mul_f64(0.9),
        }));
        let mut changed = Box::pin(hook.changed());
        assert!(changed
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker))
            .is_pending());

        let mut rx = tok.subscribe();
        // Real time is not moved: without the advance the refresh is 48 minutes away.
        tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|n| *n >= 2))
            .await
            .expect("the advance past the refresh point was lost")
            .unwrap();
        assert_eq!(tok.fetches(), (2, 0));
        drop(changed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_secret_file_is_reported_without_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        let (tok, _task) = RefreshingToken::spawn(
            "test",
            TokenGrant::ClientCredentials(ClientCredentialsGrant {
                issuer: None,
                // Nothing listens on port 9 of loopback; the secret file is read first anyway.
                token_url: Some("http://127.0.0.1:9/token".into()),
                client_id: "c".into(),
                client_secret_file: secret.clone(),
                audience: None,
                scope: None,
                ca_files: vec![],
            }),
        );
        tok.first_attempt().await;
        match tok.current() {
            Err(TokenUnavailable::Failed(e)) => {
                assert!(e.contains("cannot read the client secret file"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(tok.fetches(), (0, 1));
    }
}
