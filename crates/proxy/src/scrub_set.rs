//! The scrub set: every secret value the proxy can inject — for any agent, to any host — plus
//! the previous values of the last `secrets.scrub_retention`, compiled into one
//! [`ScrubPatterns`] that every response is scrubbed with (A1, A33, A40).
//!
//! Scrubbing only what the current request injected, or only on the hosts a credential is
//! bound to, leaves gaps: an upstream can store a secret (a gist, an email, an object) and serve
//! it later — after a restart, before anything was injected; after a rotation, under the old
//! value; from another allowlisted host that serves the same storage. So the set is loaded from
//! the secret store off the request path, before the first request is served, refreshed every
//! `secrets.scrub_refresh` and on reload, and swapped atomically; a request reads it with one
//! atomic load and does no I/O for it. While a generation's values are not all known (the
//! store does not answer), its requests are refused with 503 `scrub_set_unavailable`: a value
//! the proxy cannot read is a value it cannot scrub. A value that does not exist (unset
//! variable, missing file or KV field) is not waited for.
//!
//! The injection path adds what it is about to send (a value fresher than the last refresh, or
//! a rendering that depends on the request, like `Basic` with the agent's user name) before
//! sending it; a value that cannot be scrubbed reliably is not sent.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use credproxy_core::Secret;
use credproxy_scrub::{ScrubEntry, ScrubError, ScrubPatterns};
use credproxy_secrets::{SecretSource, SecretStore};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::creds::Credentials;
use crate::{Generation, Shared};

/// Previous values kept per source, however short the time between rotations: each adds
/// patterns every response is scanned for.
const MAX_PREVIOUS: usize = 16;
/// Retry interval while values are missing, doubling up to the maximum.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

pub(crate) struct ScrubSet {
    state: Mutex<State>,
    patterns: ArcSwapOption<ScrubPatterns>,
    retention: Duration,
    refresh: Duration,
    wake: Arc<Notify>,
    /// Completed load passes, so waiters can tell when one finished.
    passes: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    sources: HashMap<SecretSource, Values>,
    /// The value and rendering last injected per credential id (a `Basic` header built with
    /// the agent's user name cannot be known in advance).
    recorded: HashMap<String, (Secret, String, Secret)>,
    /// Fingerprint of the entries the current patterns were built from.
    built: Option<u64>,
    /// Credentials whose values are not known yet, with why (for `/readyz` and logs).
    waiting: Vec<String>,
    /// Entries already reported as unscrubbable, so the log says it once.
    reported: HashSet<String>,
    values: usize,
}

#[derive(Default)]
struct Values {
    current: Option<Secret>,
    /// A definitive answer was obtained at least once (a value, or "there is none").
    loaded: bool,
    /// Values replaced (or removed) and when, newest last.
    previous: VecDeque<(Secret, Instant)>,
    /// The placeholder of the last credential using this source, for retained values of a
    /// credential a reload removed.
    placeholder: String,
}

impl Values {
    fn set(&mut self, value: Option<Secret>, now: Instant) -> bool {
        self.loaded = true;
        if self.current == value {
            return false;
        }
        if let Some(old) = self.current.take() {
            self.previous.push_back((old, now));
        }
        if let Some(v) = &value {
            self.previous.retain(|(p, _)| p != v);
        }
        while self.previous.len() > MAX_PREVIOUS {
            self.previous.pop_front();
            warn!(
                kept = MAX_PREVIOUS,
                "a secret was rotated more often than the scrub set keeps previous values; the oldest is no longer scrubbed"
            );
        }
        self.current = value;
        true
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn entry(secret: &Secret, placeholder: &str, rendered: Option<&Secret>) -> ScrubEntry {
    ScrubEntry {
        secret: secret.clone(),
        placeholder: placeholder.to_string(),
        rendered: match rendered {
            Some(r) if r != secret => vec![r.clone()],
            _ => vec![],
        },
    }
}

impl ScrubSet {
    pub(crate) fn new(retention: Duration, refresh: Duration) -> ScrubSet {
        ScrubSet {
            state: Mutex::new(State::default()),
            patterns: ArcSwapOption::empty(),
            retention,
            refresh: refresh.max(Duration::from_secs(1)),
            wake: Arc::new(Notify::new()),
            passes: tokio::sync::watch::channel(0).0,
        }
    }

    /// The patterns every response is scrubbed with; `None` when there is nothing to scrub.
    pub(crate) fn patterns(&self) -> Option<Arc<ScrubPatterns>> {
        self.patterns.load_full()
    }

    /// Ask the loader for a pass now (a reload changed the credentials).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Whether every source of `creds` has a known value (or is known to have none).
    pub(crate) fn covers(&self, creds: &Credentials) -> bool {
        let st = lock(&self.state);
        creds
            .sources
            .iter()
            .all(|s| st.sources.get(s).is_some_and(|v| v.loaded))
    }

    /// One line for `/readyz`.
    pub(crate) fn status(&self) -> String {
        let st = lock(&self.state);
        if st.waiting.is_empty() {
            format!("{} secret values", st.values)
        } else {
            format!("waiting for {}", st.waiting.join("; "))
        }
    }

    /// Add a value about to be injected for credential `index` of `creds`, with the header
    /// rendering it is sent in. Fails when it cannot be scrubbed reliably: it must then not
    /// be sent. Cheap when the value is already in the set.
    pub(crate) fn record(
        &self,
        creds: &Credentials,
        index: usize,
        secret: &Secret,
        rendered: &Secret,
    ) -> Result<(), ScrubError> {
        let cfg = &creds.configs[index];
        let source = &creds.sources[index];
        let mut st = lock(&self.state);
        let known = st
            .sources
            .get(source)
            .is_some_and(|v| v.current.as_ref() == Some(secret));
        let rendered_known = st
            .recorded
            .get(&cfg.id)
            .is_some_and(|(s, p, r)| s == secret && p == &cfg.placeholder && r == rendered)
            || crate::creds::header_value(cfg, secret, None)
                .is_ok_and(|(_, default)| &default == rendered);
        if known && rendered_known {
            return Ok(());
        }
        // Validate before remembering: an unscrubbable value is refused by the caller.
        ScrubPatterns::new(vec![entry(secret, &cfg.placeholder, Some(rendered))])?;
        let now = Instant::now();
        let values = st.sources.entry(source.clone()).or_default();
        values.placeholder = cfg.placeholder.clone();
        values.set(Some(secret.clone()), now);
        st.recorded.insert(
            cfg.id.clone(),
            (secret.clone(), cfg.placeholder.clone(), rendered.clone()),
        );
        self.rebuild(&mut st, creds, now);
        Ok(())
    }

    /// Read every source of `gen` (through the store's cache) and rebuild the set. Returns
    /// whether every value is known.
    pub(crate) async fn load(&self, secrets: &SecretStore, gen: &Generation) -> bool {
        let creds = &gen.creds;
        let mut unique: Vec<&SecretSource> = Vec::new();
        for s in &creds.sources {
            if !unique.contains(&s) {
                unique.push(s);
            }
        }
        let results = futures_util::future::join_all(unique.iter().map(|s| secrets.get(s))).await;
        let now = Instant::now();
        let mut st = lock(&self.state);
        let mut waiting = Vec::new();
        for (source, result) in unique.iter().zip(results) {
            let users: Vec<&str> = creds
                .configs
                .iter()
                .zip(&creds.sources)
                .filter(|(_, s)| s == source)
                .map(|(c, _)| c.id.as_str())
                .collect();
            let placeholder = creds
                .configs
                .iter()
                .zip(&creds.sources)
                .find(|(_, s)| s == source)
                .map(|(c, _)| c.placeholder.clone())
                .unwrap_or_default();
            let values = st.sources.entry((*source).clone()).or_default();
            values.placeholder = placeholder;
            match result {
                Ok(v) => {
                    values.set(Some(v), now);
                }
                Err(e) if e.is_transient() => {
                    if !values.loaded {
                        waiting.push(format!("{} ({})", users.join(", "), e));
                    }
                }
                Err(_) => {
                    // There is no value to scrub (and none to inject).
                    values.set(None, now);
                }
            }
        }
        // Sources no longer used: their last values are kept like replaced ones.
        let used: HashSet<&SecretSource> = unique.iter().copied().collect();
        for (source, values) in st.sources.iter_mut() {
            if !used.contains(source) && values.current.is_some() {
                values.set(None, now);
            }
        }
        st.recorded
            .retain(|id, _| creds.configs.iter().any(|c| &c.id == id));
        if waiting != st.waiting {
            if waiting.is_empty() {
                info!("scrub set: every credential value is loaded");
            } else {
                warn!(waiting = %waiting.join("; "), "scrub set: credential values cannot be read; requests are refused (503 scrub_set_unavailable) until they can");
            }
        }
        let complete = waiting.is_empty();
        st.waiting = waiting;
        self.rebuild(&mut st, creds, now);
        drop(st);
        self.passes.send_modify(|n| *n += 1);
        complete
    }

    /// Compile the entries of `creds`' values (current and retained) and swap them in, unless
    /// they are the ones already in use.
    fn rebuild(&self, st: &mut State, creds: &Credentials, now: Instant) {
        let retention = self.retention;
        for values in st.sources.values_mut() {
            values
                .previous
                .retain(|(_, at)| now.saturating_duration_since(*at) < retention);
        }
        st.sources
            .retain(|_, v| v.current.is_some() || !v.previous.is_empty() || v.loaded);
        let mut entries: Vec<(String, ScrubEntry)> = Vec::new();
        let mut used: HashSet<&SecretSource> = HashSet::new();
        for (cfg, source) in creds.configs.iter().zip(&creds.sources) {
            used.insert(source);
            let Some(values) = st.sources.get(source) else {
                continue;
            };
            for v in values
                .current
                .iter()
                .chain(values.previous.iter().map(|(v, _)| v))
            {
                let rendered = crate::creds::header_value(cfg, v, None)
                    .ok()
                    .map(|(_, r)| r);
                entries.push((
                    cfg.id.clone(),
                    entry(v, &cfg.placeholder, rendered.as_ref()),
                ));
            }
            if let Some((s, p, r)) = st.recorded.get(&cfg.id) {
                entries.push((cfg.id.clone(), entry(s, p, Some(r))));
            }
        }
        for (source, values) in &st.sources {
            if used.contains(source) {
                continue;
            }
            for (v, _) in &values.previous {
                entries.push((
                    "a removed credential".to_string(),
                    entry(v, &values.placeholder, None),
                ));
            }
        }
        let mut fp = std::collections::hash_map::DefaultHasher::new();
        for (_, e) in &entries {
            e.secret.expose().hash(&mut fp);
            e.placeholder.hash(&mut fp);
            for r in &e.rendered {
                r.expose().hash(&mut fp);
            }
        }
        let fp = fp.finish();
        if st.built == Some(fp) {
            return;
        }
        // Each value alone first: one that cannot be scrubbed reliably is left out (and
        // refused at injection), never allowed to break the set for the others.
        let mut ok: Vec<ScrubEntry> = Vec::new();
        for (who, e) in entries {
            match ScrubPatterns::new(vec![e.clone()]) {
                Ok(_) => ok.push(e),
                Err(err) => {
                    if st.reported.insert(format!("{who}: {err}")) {
                        warn!(credential = %who, error = %err, "a secret value cannot be scrubbed reliably; it is left out of the scrub set and never injected");
                    }
                }
            }
        }
        st.values = ok.len();
        let patterns = if ok.is_empty() {
            None
        } else {
            match ScrubPatterns::new(ok.clone()) {
                Ok(p) => Some(p),
                Err(_) => {
                    // Values conflict with each other (one contains another's placeholder):
                    // keep those that build together.
                    let mut kept: Vec<ScrubEntry> = Vec::new();
                    for e in ok {
                        kept.push(e);
                        if ScrubPatterns::new(kept.clone()).is_err() {
                            kept.pop();
                            warn!("a secret value conflicts with another credential's placeholder; it is left out of the scrub set");
                        }
                    }
                    st.values = kept.len();
                    ScrubPatterns::new(kept).ok()
                }
            }
        };
        self.patterns.store(patterns.map(Arc::new));
        st.built = Some(fp);
    }

    /// Wait for `n` more load passes to complete (tests: a pass that started after a change).
    pub(crate) async fn passes(&self, n: u64) {
        let mut rx = self.passes.subscribe();
        let target = *rx.borrow_and_update() + n;
        let _ = rx.wait_for(|p| *p >= target).await;
    }

    /// Wait until `gen`'s values are all known, at most `timeout`.
    pub(crate) async fn wait_ready(&self, gen: &Generation, timeout: Duration) -> bool {
        let mut passes = self.passes.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            if gen.scrub_ready.load(Ordering::Acquire) {
                return true;
            }
            if tokio::time::timeout_at(deadline, passes.changed())
                .await
                .is_err()
            {
                return gen.scrub_ready.load(Ordering::Acquire);
            }
        }
    }
}

impl Drop for ScrubSet {
    fn drop(&mut self) {
        // Let the loader notice that the proxy is gone.
        self.wake.notify_one();
    }
}

/// Keep the scrub set loaded for the proxy's current generation: at once, every
/// `secrets.scrub_refresh`, on reload, and with backoff while values are missing.
pub(crate) fn spawn_loader(shared: &Arc<Shared>) {
    let weak: Weak<Shared> = Arc::downgrade(shared);
    let wake = shared.scrub.wake.clone();
    tokio::spawn(async move {
        let mut retry = RETRY_MIN;
        loop {
            let wait = {
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                let gen = shared.generation();
                if shared.scrub.load(&shared.secrets, &gen).await {
                    gen.scrub_ready.store(true, Ordering::Release);
                    retry = RETRY_MIN;
                    shared.scrub.refresh
                } else {
                    let r = retry;
                    retry = (retry * 2).min(RETRY_MAX);
                    r
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = wake.notified() => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use credproxy_config::Config;

    fn creds(extra: &str) -> Credentials {
        let y = format!(
            r#"
listeners: [{{name: a, tcp: "127.0.0.1:0"}}]
ca: {{cert_file: /c, key_file: /k}}
allowed_domains: [api.example.com, other.example.com]
identity: {{danger_allow_anonymous: true}}
audit: {{path: /tmp/unused-audit.db}}
credentials:
  - id: k
    placeholder: agent-vault-00000000-0000-0000-0000-000000000001
    type: bearer
    bound_domains: [api.example.com]
    source: {{env: K}}
{extra}"#
        );
        Credentials::new(
            Config::parse(&y, std::path::Path::new("/"))
                .unwrap()
                .credentials,
        )
        .unwrap()
    }

    fn scrubbed(set: &ScrubSet, text: &str) -> String {
        match set.patterns() {
            Some(p) => String::from_utf8(p.scrub(text.as_bytes()).0).unwrap(),
            None => text.to_string(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn previous_values_are_kept_for_the_retention_then_dropped() {
        let set = ScrubSet::new(Duration::from_secs(3600), Duration::from_secs(60));
        let c = creds("");
        let v1 = Secret::new(b"first-secret-value".to_vec());
        let v2 = Secret::new(b"second-secret-value".to_vec());
        let bearer = |v: &Secret| Secret::new([&b"Bearer "[..], v.expose()].concat());
        set.record(&c, 0, &v1, &bearer(&v1)).unwrap();
        tokio::time::advance(Duration::from_secs(10)).await;
        set.record(&c, 0, &v2, &bearer(&v2)).unwrap();
        let ph = "agent-vault-00000000-0000-0000-0000-000000000001";
        assert_eq!(
            scrubbed(&set, "first-secret-value second-secret-value"),
            format!("{ph} {ph}")
        );
        // The rendering keeps its frame.
        assert_eq!(
            scrubbed(&set, "Bearer second-secret-value"),
            format!("Bearer {ph}")
        );
        let rebuild = || {
            let mut st = lock(&set.state);
            set.rebuild(&mut st, &c, Instant::now());
        };
        tokio::time::advance(Duration::from_secs(3599)).await;
        rebuild();
        assert_eq!(scrubbed(&set, "first-secret-value"), ph);
        tokio::time::advance(Duration::from_secs(2)).await;
        rebuild();
        assert_eq!(scrubbed(&set, "first-secret-value"), "first-secret-value");
        assert_eq!(scrubbed(&set, "second-secret-value"), ph);
    }

    #[tokio::test]
    async fn an_unscrubbable_value_is_refused_and_does_not_break_the_others() {
        let c = creds(
            "  - id: short\n    placeholder: agent-vault-00000000-0000-0000-0000-000000000002\n    type: api_key\n    bound_domains: [api.example.com]\n    source: {env: S}\n",
        );
        let set = ScrubSet::new(Duration::from_secs(60), Duration::from_secs(60));
        let good = Secret::new(b"a-good-long-secret".to_vec());
        set.record(
            &c,
            0,
            &good,
            &Secret::new([&b"Bearer "[..], good.expose()].concat()),
        )
        .unwrap();
        let short = Secret::new(b"abc".to_vec());
        assert!(set.record(&c, 1, &short, &short).is_err());
        assert_eq!(
            scrubbed(&set, "a-good-long-secret"),
            "agent-vault-00000000-0000-0000-0000-000000000001"
        );
    }
}
