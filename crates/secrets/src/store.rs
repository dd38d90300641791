//! The cached, single-flight secret store.

use credproxy_core::Clock;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use credproxy_core::Secret;
use tokio::time::Instant;

use crate::auth::{self, Auth, AuthError, AuthMethod};
use crate::http::BaoHttp;
use crate::kv::{self, validate_kv_path, KvRead};
use crate::{EnvSource, OpenBaoAuth, OpenBaoConfig, SecretError, SecretSource, SecretsConfig};

/// Resolves [`SecretSource`]s to values, caching each for `cache_ttl`. Cheap to clone (an
/// `Arc` inside); dropping the last clone stops the OpenBao authentication task.
///
/// The cache has one entry per distinct source ever asked for, which is bounded by the
/// configured credentials (the proxy never builds sources from request data).
#[derive(Clone)]
pub struct SecretStore {
    inner: Arc<Inner>,
}

/// Counters since the store was created, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecretStats {
    /// Successful OpenBao logins (AppRole) or token (re)loads (token file).
    pub logins: u64,
    pub login_failures: u64,
    /// Successful `renew-self` calls.
    pub renewals: u64,
    pub renewal_failures: u64,
    /// Reads that went to the source (file, env, OpenBao), successful or not.
    pub fetches: u64,
    pub fetch_failures: u64,
    /// `get` calls answered from the cache.
    pub cache_hits: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub logins: AtomicU64,
    pub login_failures: AtomicU64,
    pub renewals: AtomicU64,
    pub renewal_failures: AtomicU64,
    pub fetches: AtomicU64,
    pub fetch_failures: AtomicU64,
    pub cache_hits: AtomicU64,
}

struct Inner {
    cache_ttl: Duration,
    /// Where cache ages are read (tests move it forward instead of waiting out the TTL).
    clock: Clock,
    env: Arc<dyn EnvSource>,
    slots: Mutex<HashMap<SecretSource, Arc<Slot>>>,
    bao: Option<Bao>,
    counters: Arc<Counters>,
}

/// One cache entry. `fetch` serialises refreshes (single flight); `state` is only held for a
/// few assignments, never across an await.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    fetch: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct SlotState {
    value: Option<(Secret, std::time::Instant)>,
    /// Completed fetches; a waiter that saw generation N and finds N+k after queueing shares
    /// the result of the fetch that completed meanwhile instead of making its own.
    generation: u64,
    last_error: Option<SecretError>,
}

struct Bao {
    http: BaoHttp,
    auth: Arc<Auth>,
    kv_mount: String,
    timeout: Duration,
    _task: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a few assignments that cannot leave the data inconsistent,
    // so a lock poisoned by a panic elsewhere is still safe to use.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Slot {
    /// The cached value if younger than `ttl`; otherwise drops a stale value (so it can never
    /// be served, and is zeroized now) and returns the generation to wait on.
    fn fresh(&self, ttl: Duration, now: std::time::Instant) -> Result<Secret, u64> {
        let mut st = lock(&self.state);
        if let Some((secret, at)) = &st.value {
            if now.saturating_duration_since(*at) < ttl {
                return Ok(secret.clone());
            }
            st.value = None;
        }
        Err(st.generation)
    }

    fn completed_since(&self, seen: u64) -> Option<Result<Secret, SecretError>> {
        let st = lock(&self.state);
        if st.generation == seen {
            return None;
        }
        Some(match (&st.value, &st.last_error) {
            (Some((secret, _)), _) => Ok(secret.clone()),
            (None, Some(error)) => Err(error.clone()),
            // Unreachable by construction (a completed fetch sets one of them); fetch anew.
            (None, None) => return None,
        })
    }

    fn complete(&self, outcome: &Result<Secret, SecretError>, now: std::time::Instant) {
        let mut st = lock(&self.state);
        match outcome {
            Ok(secret) => {
                st.value = Some((secret.clone(), now));
                st.last_error = None;
            }
            Err(error) => {
                st.value = None;
                st.last_error = Some(error.clone());
            }
        }
        st.generation = st.generation.wrapping_add(1);
    }
}

impl SecretStore {
    /// Builds the store. Non-blocking: with OpenBao configured it spawns the authentication
    /// task on the current tokio runtime and returns at once, so the proxy can serve requests
    /// that need no secret while OpenBao is down. Errors only for configuration that can never
    /// work (bad address or mount, unreadable CA file, no tokio runtime).
    pub fn new(cfg: SecretsConfig, env: Arc<dyn EnvSource>) -> Result<SecretStore, SecretError> {
        SecretStore::with_clock(cfg, env, Clock::system())
    }

    /// [`SecretStore::new`] with cache ages read from `clock` (tests pass an adjustable one
    /// to reach the end of `cache_ttl` without waiting for it).
    pub fn with_clock(
        cfg: SecretsConfig,
        env: Arc<dyn EnvSource>,
        clock: Clock,
    ) -> Result<SecretStore, SecretError> {
        let counters = Arc::new(Counters::default());
        let bao = match cfg.openbao {
            Some(ob) => Some(Bao::start(ob, counters.clone())?),
            None => None,
        };
        Ok(SecretStore {
            inner: Arc::new(Inner {
                cache_ttl: cfg.cache_ttl,
                clock,
                env,
                slots: Mutex::new(HashMap::new()),
                bao,
                counters,
            }),
        })
    }

    /// The value of `source`. Served from memory while younger than `cache_ttl`; otherwise
    /// fetched, with concurrent callers for the same source sharing one fetch (and its
    /// error). A failed fetch is not cached beyond the callers that were waiting for it.
    ///
    /// File sources have trailing `\r`/`\n` trimmed; env sources are used verbatim. An empty
    /// value is an error (`secret_invalid`), since injecting an empty credential only moves
    /// the failure upstream.
    pub async fn get(&self, source: &SecretSource) -> Result<Secret, SecretError> {
        let slot = {
            let mut slots = lock(&self.inner.slots);
            slots.entry(source.clone()).or_default().clone()
        };
        let seen = match slot.fresh(self.inner.cache_ttl, self.inner.clock.instant()) {
            Ok(secret) => {
                self.inner
                    .counters
                    .cache_hits
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(secret);
            }
            Err(generation) => generation,
        };
        let _turn = slot.fetch.lock().await;
        if let Some(outcome) = slot.completed_since(seen) {
            return outcome;
        }
        self.inner.counters.fetches.fetch_add(1, Ordering::Relaxed);
        let outcome = self.inner.fetch(source).await;
        if let Err(error) = &outcome {
            self.inner
                .counters
                .fetch_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                source = %source.describe_with_mount(self.inner.kv_mount()),
                reason = error.reason(),
                %error,
                "secret fetch failed"
            );
        }
        slot.complete(&outcome, self.inner.clock.instant());
        outcome
    }

    /// `None` when OpenBao is not configured; `Some(true)` while a valid (unexpired,
    /// not refused) token is held.
    pub fn openbao_ready(&self) -> Option<bool> {
        self.inner.bao.as_ref().map(|b| b.auth.is_ready())
    }

    /// Waits up to `timeout` for a valid OpenBao token; `true` at once when OpenBao is not
    /// configured (there is nothing to wait for).
    pub async fn wait_openbao_ready(&self, timeout: Duration) -> bool {
        match &self.inner.bao {
            Some(bao) => bao.auth.wait_ready(Instant::now() + timeout).await,
            None => true,
        }
    }

    /// Counters since creation.
    pub fn stats(&self) -> SecretStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SecretStats {
            logins: get(&c.logins),
            login_failures: get(&c.login_failures),
            renewals: get(&c.renewals),
            renewal_failures: get(&c.renewal_failures),
            fetches: get(&c.fetches),
            fetch_failures: get(&c.fetch_failures),
            cache_hits: get(&c.cache_hits),
        }
    }

    /// The configured cache TTL.
    pub fn cache_ttl(&self) -> Duration {
        self.inner.cache_ttl
    }

    /// Describes `source` naming the configured KV mount, for logs.
    pub fn describe(&self, source: &SecretSource) -> String {
        source.describe_with_mount(self.inner.kv_mount())
    }
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("cache_ttl", &self.inner.cache_ttl)
            .field("openbao", &self.inner.bao.is_some())
            .field("openbao_ready", &self.openbao_ready())
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn kv_mount(&self) -> &str {
        self.bao
            .as_ref()
            .map_or(crate::DEFAULT_KV_MOUNT, |b| b.kv_mount.as_str())
    }

    async fn fetch(&self, source: &SecretSource) -> Result<Secret, SecretError> {
        match source {
            SecretSource::File(path) => read_file(path).await,
            SecretSource::Env(name) => match self.env.var(name) {
                None => Err(SecretError::EnvNotSet { name: name.clone() }),
                Some(v) if v.is_empty() => Err(SecretError::EnvEmpty { name: name.clone() }),
                Some(v) => Ok(Secret::new(v.into_bytes())),
            },
            SecretSource::OpenBao {
                path,
                field,
                version,
            } => match &self.bao {
                Some(bao) => bao.read(source, path, field, *version).await,
                None => Err(SecretError::OpenBaoNotConfigured {
                    what: source.describe(),
                }),
            },
        }
    }
}

async fn read_file(path: &Path) -> Result<Secret, SecretError> {
    let mut bytes = match tokio::fs::read(path).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SecretError::FileNotFound {
                path: path.to_path_buf(),
            })
        }
        Err(e) => {
            return Err(SecretError::FileRead {
                path: path.to_path_buf(),
                source: Arc::new(e),
            })
        }
    };
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    // Moved, not copied, into the zeroizing Secret; the trimmed bytes are within capacity
    // and are wiped with it.
    let secret = Secret::new(bytes);
    if secret.is_empty() {
        return Err(SecretError::FileEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(secret)
}

/// Trims '/' around a mount and checks it like a KV path.
fn mount_name(kind: &str, raw: &str) -> Result<String, SecretError> {
    let mount = raw.trim_matches('/');
    validate_kv_path(mount)
        .map_err(|e| SecretError::Config(format!("{kind} {raw:?}: {}", e.reason)))?;
    Ok(mount.to_string())
}

impl Bao {
    fn start(cfg: OpenBaoConfig, counters: Arc<Counters>) -> Result<Bao, SecretError> {
        let kv_mount = mount_name("kv_mount", &cfg.kv_mount)?;
        if let Some(ns) = &cfg.namespace {
            validate_kv_path(ns.trim_matches('/'))
                .map_err(|e| SecretError::Config(format!("namespace {ns:?}: {}", e.reason)))?;
        }
        if cfg.request_timeout.is_zero() {
            return Err(SecretError::Config(
                "openbao request_timeout must be positive".to_string(),
            ));
        }
        let method = match cfg.auth {
            OpenBaoAuth::TokenFile(path) => AuthMethod::TokenFile(path),
            OpenBaoAuth::AppRole {
                role_id_file,
                secret_id_file,
                mount,
            } => AuthMethod::AppRole {
                role_id_file,
                secret_id_file,
                mount: mount_name("approle mount", &mount)?,
            },
        };
        let http = BaoHttp::new(
            &cfg.address,
            cfg.ca_file.as_deref(),
            cfg.namespace.as_deref(),
            cfg.request_timeout,
        )
        .map_err(SecretError::Config)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            SecretError::Config(
                "SecretStore::new must run inside a tokio runtime when openbao is configured"
                    .to_string(),
            )
        })?;
        let auth = Arc::new(Auth::new(counters));
        let task = runtime.spawn(auth::run(auth.clone(), http.clone(), method));
        Ok(Bao {
            http,
            auth,
            kv_mount,
            timeout: cfg.request_timeout,
            _task: AbortOnDrop(task),
        })
    }

    /// One KV read, bounded by the request timeout as a whole (token wait, read, a possible
    /// re-login and retry).
    async fn read(
        &self,
        source: &SecretSource,
        path: &str,
        field: &str,
        version: Option<u64>,
    ) -> Result<Secret, SecretError> {
        let what = source.describe_with_mount(&self.kv_mount);
        validate_kv_path(path).map_err(|e| SecretError::InvalidPath {
            path: path.to_string(),
            reason: e.reason.to_string(),
        })?;
        let deadline = Instant::now() + self.timeout;
        match tokio::time::timeout_at(
            deadline,
            self.read_once(&what, path, field, version, deadline),
        )
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => Err(SecretError::Unavailable {
                what,
                detail: format!("no answer within {:?}", self.timeout),
            }),
        }
    }

    async fn read_once(
        &self,
        what: &str,
        path: &str,
        field: &str,
        version: Option<u64>,
        deadline: Instant,
    ) -> Result<Secret, SecretError> {
        let what = || what.to_string();
        let field_err = || field.to_string();
        let mut retried = false;
        loop {
            let token = self.auth.token(deadline).await.map_err(|detail| {
                SecretError::NotAuthenticated {
                    what: what(),
                    detail,
                }
            })?;
            let read = kv::read(
                &self.http,
                &token.secret,
                &self.kv_mount,
                path,
                field,
                version,
            )
            .await
            .map_err(|e| SecretError::Unavailable {
                what: what(),
                detail: e.0,
            })?;
            return match read {
                KvRead::Value(secret) => Ok(secret),
                KvRead::NotFound => Err(SecretError::NotFound { what: what() }),
                KvRead::FieldMissing => Err(SecretError::FieldMissing {
                    what: what(),
                    field: field_err(),
                }),
                KvRead::FieldNotString => Err(SecretError::FieldNotString {
                    what: what(),
                    field: field_err(),
                }),
                KvRead::FieldEmpty => Err(SecretError::FieldEmpty {
                    what: what(),
                    field: field_err(),
                }),
                KvRead::Failed(detail) => Err(SecretError::Unavailable {
                    what: what(),
                    detail,
                }),
                // 403 means either "this token is dead" or "this policy does not cover the
                // path"; only the first is fixed by logging in again, so ask OpenBao which.
                KvRead::Forbidden => match auth::lookup_self(&self.http, &token.secret).await {
                    Ok(_) => Err(SecretError::PermissionDenied { what: what() }),
                    Err(AuthError::Refused(_)) if !retried => {
                        self.auth.refused(token.epoch);
                        retried = true;
                        continue;
                    }
                    Err(AuthError::Refused(detail)) => Err(SecretError::NotAuthenticated {
                        what: what(),
                        detail,
                    }),
                    Err(AuthError::Unavailable(detail)) => Err(SecretError::Unavailable {
                        what: what(),
                        detail,
                    }),
                },
            };
        }
    }
}
