//! Secrets recently injected, per credential, and the scrub patterns built from them per
//! destination host. Responses from a host are scrubbed of every secret bound to it that the
//! proxy has sent, not only of the secrets of the current request: a secret stored upstream
//! by one request (a gist, an email) may be echoed by a later one.
//!
//! Building an automaton per response would put avoidable work on the hot path, so patterns
//! are cached per host and rebuilt only when a secret changes.

use std::collections::HashMap;
use std::sync::Mutex;

use credproxy_core::{Authority, Secret};
use credproxy_scrub::{ScrubEntry, ScrubPatterns};

use crate::creds::Credentials;

#[derive(Default)]
pub(crate) struct Recent {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// credential id → (secret, placeholder, rendered header value)
    entries: HashMap<String, (Secret, String, Secret)>,
    version: u64,
    per_host: HashMap<String, (u64, Option<ScrubPatterns>)>,
}

impl Recent {
    /// Remember a secret about to be sent. Fails when the secret cannot be scrubbed reliably
    /// (too short), in which case it must not be sent at all.
    pub fn record(
        &self,
        id: &str,
        secret: &Secret,
        placeholder: &str,
        rendered: &Secret,
    ) -> Result<(), credproxy_scrub::ScrubError> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, p, r)) = g.entries.get(id) {
            if s == secret && p == placeholder && r == rendered {
                return Ok(());
            }
        }
        // Validate before remembering: an unscrubbable secret is refused by the caller.
        ScrubPatterns::new(vec![entry(secret, placeholder, rendered)])?;
        g.entries.insert(
            id.to_string(),
            (secret.clone(), placeholder.to_string(), rendered.clone()),
        );
        g.version += 1;
        Ok(())
    }

    /// Patterns for a response from `authority`, or None when no secret bound to it has
    /// been sent.
    pub fn patterns_for(
        &self,
        creds: &Credentials,
        authority: &Authority,
    ) -> Option<ScrubPatterns> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let version = g.version;
        if let Some((v, p)) = g.per_host.get(authority.host()) {
            if *v == version {
                return p.clone();
            }
        }
        let entries: Vec<ScrubEntry> = creds
            .bound_to(authority)
            .filter_map(|i| g.entries.get(&creds.configs[i].id))
            .map(|(s, p, r)| entry(s, p, r))
            .collect();
        let patterns = if entries.is_empty() {
            None
        } else {
            ScrubPatterns::new(entries).ok()
        };
        g.per_host
            .insert(authority.host().to_string(), (version, patterns.clone()));
        patterns
    }
}

fn entry(secret: &Secret, placeholder: &str, rendered: &Secret) -> ScrubEntry {
    ScrubEntry {
        secret: secret.clone(),
        placeholder: placeholder.to_string(),
        rendered: if rendered == secret {
            vec![]
        } else {
            vec![rendered.clone()]
        },
    }
}
