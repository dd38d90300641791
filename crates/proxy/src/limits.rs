//! Per-identity caps: connections (tunnels, plain-HTTP connections) and requests in flight,
//! so one authenticated agent cannot hold every slot of the proxy (A15).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How many of something each identity holds, with a ceiling.
#[derive(Debug)]
pub(crate) struct PerIdentity {
    held: Mutex<HashMap<String, usize>>,
    max: usize,
}

/// One unit held by an identity; released on drop.
#[derive(Debug)]
pub(crate) struct Held {
    of: Arc<PerIdentity>,
    key: String,
}

impl PerIdentity {
    pub fn new(max: usize) -> Arc<PerIdentity> {
        Arc::new(PerIdentity {
            held: Mutex::new(HashMap::new()),
            max,
        })
    }

    /// Take one unit for `key`, or `None` at the ceiling.
    pub fn acquire(self: &Arc<Self>, key: &str) -> Option<Held> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(key.to_string()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Held {
            of: self.clone(),
            key: key.to_string(),
        })
    }

    #[cfg(test)]
    fn count(&self, key: &str) -> usize {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(key).copied().unwrap_or(0)
    }
}

impl Held {
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self.of.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// The key an identity is counted under.
pub(crate) fn key(identity: Option<&credproxy_identity::AgentIdentity>) -> &str {
    identity.map_or("anonymous", |i| i.agent_id.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_per_key_and_release_on_drop() {
        let p = PerIdentity::new(2);
        let a1 = p.acquire("a").unwrap();
        let _a2 = p.acquire("a").unwrap();
        assert!(p.acquire("a").is_none());
        let _b = p.acquire("b").unwrap();
        drop(a1);
        assert_eq!(p.count("a"), 1);
        assert!(p.acquire("a").is_some());
    }
}
