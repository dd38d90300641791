//! Where the agent token the bridge adds comes from: a file, or the OIDC client-credentials
//! grant, refreshed before it expires.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use credproxy_identity::ClientCredentials;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

/// Refresh when this fraction of a token's lifetime has passed.
const REFRESH_AT: f64 = 0.8;
/// Lifetime assumed when the provider does not say (`expires_in` is optional).
const UNKNOWN_LIFETIME: Duration = Duration::from_secs(300);
/// First retry delay after a failed refresh; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why no token can be added right now (shown to the agent in a 503: no secret in it).
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenUnavailable {
    #[error("cannot read the token file {path}: {error}")]
    File { path: PathBuf, error: String },
    #[error("the token file {0} is empty")]
    EmptyFile(PathBuf),
    #[error("no valid agent token yet: {0}")]
    Oidc(String),
}

/// A source of agent tokens. Cheap to clone.
#[derive(Clone, Debug)]
pub enum TokenSource {
    /// Read the file for every connection, so an external refresher can replace it.
    File(PathBuf),
    Oidc(Arc<OidcToken>),
}

impl TokenSource {
    /// The token to add now.
    pub fn current(&self) -> Result<String, TokenUnavailable> {
        match self {
            TokenSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| TokenUnavailable::File {
                    path: path.clone(),
                    error: e.to_string(),
                })?;
                let t = text.trim();
                if t.is_empty() {
                    Err(TokenUnavailable::EmptyFile(path.clone()))
                } else {
                    Ok(t.to_string())
                }
            }
            TokenSource::Oidc(o) => o.current(),
        }
    }
}

/// A token obtained by client credentials, kept fresh by [`OidcToken::spawn`].
pub struct OidcToken {
    state: RwLock<State>,
    /// Becomes true after the first attempt, successful or not.
    first_attempt: watch::Sender<bool>,
}

impl std::fmt::Debug for OidcToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcToken").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    token: Option<(String, Option<Instant>)>,
    last_error: Option<String>,
}

impl OidcToken {
    /// Start the refresher task; it runs until the returned handle is aborted.
    pub fn spawn(creds: ClientCredentials) -> (Arc<OidcToken>, tokio::task::JoinHandle<()>) {
        let (tx, _) = watch::channel(false);
        let me = Arc::new(OidcToken {
            state: RwLock::new(State::default()),
            first_attempt: tx,
        });
        let task = tokio::spawn(refresh_loop(me.clone(), creds));
        (me, task)
    }

    /// Wait until the first fetch has been tried (so readiness means "has a token" whenever
    /// the provider is up).
    pub async fn first_attempt(&self) {
        let mut rx = self.first_attempt.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    fn current(&self) -> Result<String, TokenUnavailable> {
        // A poisoned lock only means a panic elsewhere while holding it; the data is a plain
        // value that is always consistent, so keep using it.
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        match &state.token {
            Some((t, expiry)) if expiry.is_none_or(|e| Instant::now() < e) => Ok(t.clone()),
            Some(_) => Err(TokenUnavailable::Oidc(format!(
                "the token expired and refreshing failed ({})",
                state.last_error.as_deref().unwrap_or("no error recorded")
            ))),
            None => Err(TokenUnavailable::Oidc(
                state
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "the first token request has not completed".into()),
            )),
        }
    }

    fn store(&self, f: impl FnOnce(&mut State)) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        f(&mut state);
    }
}

/// When to refresh a token with `lifetime`, measured from when it was requested.
pub fn refresh_after(lifetime: Duration) -> Duration {
    lifetime.mul_f64(REFRESH_AT).max(Duration::from_millis(200))
}

async fn refresh_loop(me: Arc<OidcToken>, creds: ClientCredentials) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        // Measured before the request: the token cannot expire earlier than this plus its
        // lifetime, so the local expiry is conservative.
        let asked = Instant::now();
        let wait = match credproxy_identity::client_credentials(&creds).await {
            Ok(resp) => {
                let lifetime = resp.expires_in;
                me.store(|s| {
                    s.token = Some((resp.access_token, lifetime.map(|l| asked + l)));
                    s.last_error = None;
                });
                let lifetime = lifetime.unwrap_or(UNKNOWN_LIFETIME);
                info!(expires_in_s = lifetime.as_secs(), "agent token obtained");
                backoff = FIRST_BACKOFF;
                (asked + refresh_after(lifetime)).saturating_duration_since(Instant::now())
            }
            Err(e) => {
                let msg = error_chain(&e);
                warn!(error = %msg, retry_in_ms = backoff.as_millis() as u64, "agent token refresh failed; the current token stays in use until it expires");
                me.store(|s| s.last_error = Some(msg));
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
        };
        me.first_attempt.send_replace(true);
        tokio::time::sleep(wait).await;
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
    }

    #[test]
    fn a_token_file_is_read_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        let src = TokenSource::File(p.clone());
        assert!(matches!(src.current(), Err(TokenUnavailable::File { .. })));
        std::fs::write(&p, "  \n").unwrap();
        assert!(matches!(src.current(), Err(TokenUnavailable::EmptyFile(_))));
        std::fs::write(&p, "abc\n").unwrap();
        assert_eq!(src.current().unwrap(), "abc");
        std::fs::write(&p, "def").unwrap();
        assert_eq!(src.current().unwrap(), "def");
    }
}
