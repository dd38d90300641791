//! [`Verifier`]: the JWKS cache, the unknown-`kid` refetch limiter, signature verification
//! and the verified-token cache.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use lru::LruCache;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::claims::{check_claims, identity_from_claims, unix_seconds_at, AgentIdentity};
use crate::config::{allowed_algorithm, OidcConfig, Settings};
use crate::error::{AuthError, IdentityError};
use crate::http::{self, FetchError};
use crate::jwks::{KeySet, Lookup, VerifyKey};
use credproxy_core::Clock;

/// Verified tokens kept (by SHA-256) so the hot path skips signature checks.
const TOKEN_CACHE_ENTRIES: usize = 10_000;
/// First retry delay of the background loader after a failed fetch; doubles up to
/// [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Longest pause between attempts to reach a provider that is down.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// Keys are refreshed this often even when no unknown `kid` shows up, so that a key the
/// issuer withdrew stops verifying tokens.
const PERIODIC_REFRESH: Duration = Duration::from_secs(15 * 60);
/// Upper bound for a discovery document or JWKS.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Longest `kid` considered; longer ones are malformed (and never looked up).
const MAX_KID_LEN: usize = 256;

/// Verifies agents' access tokens against one issuer.
///
/// Cheap to clone (an `Arc` inside); `Send + Sync`. Dropping the last clone stops the
/// background key loader.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    /// `None` for a static JWKS: nothing to fetch.
    http: Option<reqwest::Client>,
    /// Learned from discovery; `None` until the first successful discovery.
    jwks_uri: Mutex<Option<String>>,
    keys: RwLock<Option<Arc<KeySet>>>,
    ready: watch::Sender<bool>,
    /// When the last refetch caused by an unknown `kid` started. The async mutex also makes
    /// those refetches single-flight: a burst of unknown kids queues here and all but the
    /// first find the interval not yet elapsed.
    last_kid_refetch: tokio::sync::Mutex<Option<Instant>>,
    /// Verified tokens by SHA-256 of the token. Only hashes are stored, never tokens.
    cache: Mutex<LruCache<[u8; 32], Arc<AgentIdentity>>>,
    verifications: AtomicU64,
    jwks_fetches: AtomicU64,
    /// Incremented whenever a key id is withdrawn from the JWKS (see [`Verifier::key_epoch`]).
    key_epoch: AtomicU64,
    loader: Mutex<Option<AbortHandle>>,
    /// Where `exp`/`nbf` and cache expiry read the time (tests move it forward).
    clock: Clock,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(handle) = lock(&self.loader).take() {
            handle.abort();
        }
    }
}

/// A poisoned lock only means another thread panicked while holding it; the data (a cache,
/// a URL) is still consistent, so carry on rather than propagate the panic.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.inner.settings.issuer)
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier that fetches the issuer's discovery document and JWKS.
    ///
    /// Does not block on the provider: returns at once and loads the keys in a background
    /// tokio task, retrying with capped exponential backoff until it succeeds, then
    /// refreshing periodically. Until the first load, [`Verifier::verify`] returns
    /// [`AuthError::ProviderUnavailable`], so the proxy can start and serve what needs no
    /// identity while the provider is down. Fails only for invalid configuration, or when
    /// called outside a tokio runtime.
    pub fn new(cfg: OidcConfig) -> Result<Verifier, IdentityError> {
        Verifier::with_clock(cfg, Clock::system())
    }

    /// [`Verifier::new`] reading the time from `clock` (tests pass an adjustable one to reach
    /// a token's expiry without waiting for it).
    pub fn with_clock(cfg: OidcConfig, clock: Clock) -> Result<Verifier, IdentityError> {
        let settings = Settings::from_config(&cfg)?;
        http::acceptable_url(&settings.issuer).map_err(|reason| IdentityError::Config {
            field: "issuer",
            reason,
        })?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| IdentityError::NoRuntime)?;
        let client = http::client(&settings.ca_files, settings.http_timeout)?;
        let verifier = Verifier::build(settings, Some(client), None, clock);
        let weak = Arc::downgrade(&verifier.inner);
        let task = runtime.spawn(run_loader(weak));
        *lock(&verifier.inner.loader) = Some(task.abort_handle());
        Ok(verifier)
    }

    /// A verifier with a fixed JWKS and no network (the dev issuer). An unknown `kid` is
    /// simply [`AuthError::UnknownKey`].
    pub fn with_static_jwks(cfg: OidcConfig, jwks_json: &str) -> Result<Verifier, IdentityError> {
        Verifier::with_static_jwks_and_clock(cfg, jwks_json, Clock::system())
    }

    /// [`Verifier::with_static_jwks`] reading the time from `clock` (tests).
    pub fn with_static_jwks_and_clock(
        cfg: OidcConfig,
        jwks_json: &str,
        clock: Clock,
    ) -> Result<Verifier, IdentityError> {
        let settings = Settings::from_config(&cfg)?;
        let keys = KeySet::parse(jwks_json.as_bytes()).map_err(IdentityError::Jwks)?;
        Ok(Verifier::build(settings, None, Some(keys), clock))
    }

    fn build(
        settings: Settings,
        http: Option<reqwest::Client>,
        keys: Option<KeySet>,
        clock: Clock,
    ) -> Verifier {
        let ready = keys.is_some();
        let capacity = NonZeroUsize::new(TOKEN_CACHE_ENTRIES).unwrap_or(NonZeroUsize::MIN);
        Verifier {
            inner: Arc::new(Inner {
                settings,
                http,
                jwks_uri: Mutex::new(None),
                keys: RwLock::new(keys.map(Arc::new)),
                ready: watch::Sender::new(ready),
                last_kid_refetch: tokio::sync::Mutex::new(None),
                cache: Mutex::new(LruCache::new(capacity)),
                verifications: AtomicU64::new(0),
                jwks_fetches: AtomicU64::new(0),
                key_epoch: AtomicU64::new(0),
                loader: Mutex::new(None),
                clock,
            }),
        }
    }

    /// The clock this verifier reads (re-checks of a verified identity's expiry use it too).
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// Whether the issuer's keys are loaded.
    pub fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    /// Wait until the first JWKS is loaded, at most `timeout`; returns [`Self::is_ready`].
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.ready.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|ready| *ready)).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// The issuer this verifier accepts.
    pub fn issuer(&self) -> &str {
        &self.inner.settings.issuer
    }

    /// How many signature verifications ran (cache misses that got as far as a key). A
    /// metric, and how tests see that the token cache works.
    pub fn verifications(&self) -> u64 {
        self.inner.verifications.load(Ordering::Relaxed)
    }

    /// How many JWKS fetches were attempted (initial load, periodic refreshes and
    /// unknown-`kid` refetches).
    pub fn jwks_fetches(&self) -> u64 {
        self.inner.jwks_fetches.load(Ordering::Relaxed)
    }

    /// A number that changes whenever the issuer withdraws a signing key. A holder of an
    /// identity verified earlier (a long-lived tunnel) compares it with the value it saw at
    /// verification and, when it changed, verifies the token again: a token signed with a
    /// withdrawn key then stops being accepted inside connections already open too.
    pub fn key_epoch(&self) -> u64 {
        self.inner.key_epoch.load(Ordering::Acquire)
    }

    /// Verify `token` and return who it identifies.
    ///
    /// A token is accepted only after its signature verified with a key from the issuer's
    /// JWKS (by `kid`, with an allowlisted asymmetric `alg` that fits the key) and its
    /// `iss`, `aud`, `exp` and `nbf` were checked. Verified tokens are cached by SHA-256
    /// until they expire (bounded LRU), so repeated use skips the signature check; a cached
    /// token is still rejected once expired.
    pub async fn verify(&self, token: &str) -> Result<Arc<AgentIdentity>, AuthError> {
        let result = self.verify_inner(token.trim_ascii()).await;
        if let Err(e) = &result {
            tracing::debug!(reason = e.reason(), "access token rejected");
        }
        result
    }

    async fn verify_inner(&self, token: &str) -> Result<Arc<AgentIdentity>, AuthError> {
        let inner = &self.inner;
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > inner.settings.max_token_bytes {
            return Err(AuthError::TooLarge);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.cached(&digest)? {
            return Ok(hit);
        }

        let header = parse_header(token, &inner.settings.algorithms)?;
        let key = self.key_for(&header).await?;

        inner.verifications.fetch_add(1, Ordering::Relaxed);
        let claims = verify_signature(token, &key, header.alg)?;
        let exp = check_claims(&claims, &inner.settings, unix_seconds_at(inner.clock.now()))?;
        let identity = Arc::new(identity_from_claims(&claims, &inner.settings, exp, token)?);
        lock(&inner.cache).put(digest, Arc::clone(&identity));
        Ok(identity)
    }

    /// A cached identity for this token digest, or `Expired` if it was cached but has since
    /// expired (the entry is then dropped).
    fn cached(&self, digest: &[u8; 32]) -> Result<Option<Arc<AgentIdentity>>, AuthError> {
        let mut cache = lock(&self.inner.cache);
        let Some(identity) = cache.get(digest) else {
            return Ok(None);
        };
        let exp = identity
            .expires_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        if unix_seconds_at(self.inner.clock.now()) > exp + self.inner.settings.leeway_secs {
            cache.pop(digest);
            return Err(AuthError::Expired);
        }
        Ok(Some(Arc::clone(identity)))
    }

    fn current_keys(&self) -> Option<Arc<KeySet>> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The key for this header; on an unknown `kid`, refetch the JWKS at most once per
    /// `jwks_min_refresh_interval` (a flood of random kids must not hammer the provider).
    async fn key_for(&self, header: &Header) -> Result<VerifyKey, AuthError> {
        let keys = self.current_keys().ok_or(AuthError::ProviderUnavailable)?;
        match keys.find(header.kid.as_deref(), header.alg) {
            Lookup::Found(key) => return Ok(key.clone()),
            Lookup::WrongAlgorithm => return Err(AuthError::AlgorithmNotAllowed),
            Lookup::NotFound => {}
        }
        if self.inner.http.is_none() {
            return Err(AuthError::UnknownKey);
        }

        let mut last = self.inner.last_kid_refetch.lock().await;
        // Another request may have refetched while this one waited for the lock.
        if let Some(keys) = self.current_keys() {
            match keys.find(header.kid.as_deref(), header.alg) {
                Lookup::Found(key) => return Ok(key.clone()),
                Lookup::WrongAlgorithm => return Err(AuthError::AlgorithmNotAllowed),
                Lookup::NotFound => {}
            }
        }
        let interval = self.inner.settings.jwks_min_refresh_interval;
        let now = self.inner.clock.instant();
        if last.is_some_and(|t| now.saturating_duration_since(t) < interval) {
            return Err(AuthError::UnknownKey);
        }
        *last = Some(now);
        if let Err(error) = self.inner.refresh_jwks().await {
            tracing::warn!(error = %error_chain(&error), "JWKS refetch for an unknown key id failed");
            return Err(AuthError::UnknownKey);
        }
        drop(last);
        let keys = self.current_keys().ok_or(AuthError::ProviderUnavailable)?;
        match keys.find(header.kid.as_deref(), header.alg) {
            Lookup::Found(key) => Ok(key.clone()),
            Lookup::WrongAlgorithm => Err(AuthError::AlgorithmNotAllowed),
            Lookup::NotFound => Err(AuthError::UnknownKey),
        }
    }
}

impl Inner {
    /// Discovery (once) and a JWKS fetch.
    async fn load(&self) -> Result<(), FetchError> {
        let Some(client) = &self.http else {
            return Ok(());
        };
        if lock(&self.jwks_uri).is_none() {
            let doc = http::discover(client, &self.settings.issuer).await?;
            let jwks_uri =
                doc.get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or_else(|| FetchError::Invalid {
                        url: self.settings.issuer.clone(),
                        reason: "discovery has no jwks_uri".to_owned(),
                    })?;
            http::acceptable_url(jwks_uri).map_err(|reason| FetchError::Invalid {
                url: self.settings.issuer.clone(),
                reason: format!("jwks_uri: {reason}"),
            })?;
            *lock(&self.jwks_uri) = Some(jwks_uri.to_owned());
        }
        self.refresh_jwks().await
    }

    /// Fetch the JWKS and install it. A key set that lost a key id also empties the token
    /// cache, so tokens signed with a withdrawn key stop being accepted at once.
    async fn refresh_jwks(&self) -> Result<(), FetchError> {
        let (Some(client), Some(url)) = (&self.http, lock(&self.jwks_uri).clone()) else {
            return Ok(());
        };
        self.jwks_fetches.fetch_add(1, Ordering::Relaxed);
        let body = http::get(client, &url, MAX_JWKS_BYTES).await?;
        let keys = KeySet::parse(&body).map_err(|reason| FetchError::Invalid {
            url: url.clone(),
            reason,
        })?;
        let count = keys.keys.len();
        let keys = Arc::new(keys);
        let previous = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(Arc::clone(&keys));
        if previous.is_some_and(|old| old.lost_keys_in(&keys)) {
            lock(&self.cache).clear();
            self.key_epoch.fetch_add(1, Ordering::AcqRel);
        }
        let first = !self.ready.send_replace(true);
        if first {
            tracing::info!(issuer = %self.settings.issuer, keys = count, "OIDC keys loaded");
        } else {
            tracing::debug!(issuer = %self.settings.issuer, keys = count, "OIDC keys refreshed");
        }
        Ok(())
    }
}

/// Load the keys until it works, then refresh them periodically. Holds only a weak
/// reference between attempts, and is aborted when the verifier is dropped. The pauses are
/// on the verifier's clock (a timer, or an advance of a test's clock).
async fn run_loader(weak: Weak<Inner>) {
    let mut delay = FIRST_RETRY_DELAY;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let result = inner.load().await;
        let issuer = inner.settings.issuer.clone();
        let clock = inner.clock.clone();
        drop(inner);
        let pause = match result {
            Ok(()) => {
                delay = FIRST_RETRY_DELAY;
                PERIODIC_REFRESH
            }
            Err(error) => {
                tracing::warn!(
                    %issuer,
                    error = %error_chain(&error),
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot load OIDC keys"
                );
                let pause = delay;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
                pause
            }
        };
        crate::refresh::sleep_on(&clock, pause).await;
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// The parts of the JOSE header the verifier uses.
struct Header {
    alg: Algorithm,
    kid: Option<String>,
}

/// Check the token's shape and header before any key is looked up: three base64url
/// segments, an allowlisted `alg` (so `none` and HMAC never reach a key), no header that
/// points at a key source (`jku`, `x5u`, `jwk`, `x5c` are never fetched or trusted,
/// RFC 8725 §3.10) and no `crit` extensions (none are understood, RFC 7515 §4.1.11).
fn parse_header(token: &str, allowed: &[Algorithm]) -> Result<Header, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed)?;
    let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(AuthError::Malformed);
    };
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(AuthError::Malformed)?;
    let alg = allowed_algorithm(alg, allowed).ok_or(AuthError::AlgorithmNotAllowed)?;
    if ["jku", "x5u", "jwk", "x5c"]
        .iter()
        .any(|name| header.contains_key(*name))
    {
        return Err(AuthError::UnknownKey);
    }
    if header.contains_key("crit") {
        return Err(AuthError::Malformed);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) if kid.len() <= MAX_KID_LEN => Some(kid.clone()),
        Some(_) => return Err(AuthError::Malformed),
    };
    if signature.is_empty() {
        return Err(AuthError::BadSignature);
    }
    Ok(Header { alg, kid })
}

/// Verify the signature with `key` for exactly `alg` and return the claims. Claim checks
/// are done by [`check_claims`], not jsonwebtoken, so that every rule is ours and typed
/// claims are never silently skipped.
fn verify_signature(
    token: &str,
    key: &VerifyKey,
    alg: Algorithm,
) -> Result<Map<String, Value>, AuthError> {
    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
        Ok(data) => Ok(data.claims),
        Err(e) => Err(match e.kind() {
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::Crypto(_) => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                AuthError::AlgorithmNotAllowed
            }
            _ => AuthError::Malformed,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &str) -> String {
        URL_SAFE_NO_PAD.encode(v)
    }

    fn token_with_header(header: &str) -> String {
        format!("{}.{}.c2ln", b64(header), b64(r#"{"sub":"x"}"#))
    }

    #[test]
    fn header_checks() {
        let allowed = [Algorithm::RS256, Algorithm::ES256];
        let ok =
            parse_header(&token_with_header(r#"{"alg":"RS256","kid":"k"}"#), &allowed).unwrap();
        assert_eq!(ok.alg, Algorithm::RS256);
        assert_eq!(ok.kid.as_deref(), Some("k"));

        let cases = [
            (r#"{"alg":"none"}"#, AuthError::AlgorithmNotAllowed),
            (r#"{"alg":"HS256"}"#, AuthError::AlgorithmNotAllowed),
            (r#"{"alg":"PS256"}"#, AuthError::AlgorithmNotAllowed),
            (
                r#"{"alg":"RS256","jku":"https://evil/jwks"}"#,
                AuthError::UnknownKey,
            ),
            (
                r#"{"alg":"RS256","x5u":"https://evil/c"}"#,
                AuthError::UnknownKey,
            ),
            (
                r#"{"alg":"RS256","jwk":{"kty":"RSA"}}"#,
                AuthError::UnknownKey,
            ),
            (r#"{"alg":"RS256","crit":["exp"]}"#, AuthError::Malformed),
            (r#"{"alg":"RS256","kid":7}"#, AuthError::Malformed),
            (r#"{"kid":"k"}"#, AuthError::Malformed),
            (r#"["alg"]"#, AuthError::Malformed),
        ];
        for (header, expected) in cases {
            assert_eq!(
                parse_header(&token_with_header(header), &allowed).err(),
                Some(expected),
                "{header}"
            );
        }
        assert_eq!(
            parse_header("a.b", &allowed).err(),
            Some(AuthError::Malformed)
        );
        assert_eq!(
            parse_header("!!.b.c", &allowed).err(),
            Some(AuthError::Malformed)
        );
        let unsigned = format!("{}.{}.", b64(r#"{"alg":"RS256"}"#), b64("{}"));
        assert_eq!(
            parse_header(&unsigned, &allowed).err(),
            Some(AuthError::BadSignature)
        );
    }

    #[test]
    fn verifier_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Verifier>();
    }
}
