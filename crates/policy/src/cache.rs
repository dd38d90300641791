//! The decision cache of one policy generation.
//!
//! A policy's decision is a function of the parts of `input` it reads (found at compile time
//! by [`crate::reads`]) as long as every builtin it calls is deterministic; the engine only
//! builds a cache for such a policy. The key is the canonical encoding of exactly those parts
//! of [`PolicyInput`], taken from its fields (no JSON, no regorus value); the value is the
//! [`Decision`]. Only decisions are cached: an evaluation error or a timeout never is, so the
//! next identical request evaluates again.
//!
//! **Nothing secret enters the cache.** The key is made of [`PolicyInput`] fields, which by
//! construction never hold a secret (credentials appear by id and metadata, query values are
//! left out), and the value is a decision the proxy logs anyway. Keep it so: a field that
//! could carry a secret must not be added to the input document.
//!
//! The cache lives and dies with its [`crate::PolicyEngine`] generation: a reload compiles a
//! new engine with a new, empty cache, which is the whole of its invalidation.
//!
//! Bounds: at most [`MAX_ENTRIES`] decisions, in [`SHARDS`] independently locked shards so
//! that evaluations on many threads rarely wait for each other; a full shard evicts one
//! arbitrary entry to make room. Keys longer than [`MAX_KEY_BYTES`] (a policy that reads a
//! long path, say) and decisions whose reasons exceed [`MAX_REASON_BYTES`] are not cached, so
//! the cache holds at most about `MAX_ENTRIES * (MAX_KEY_BYTES + MAX_REASON_BYTES)` = 16 MiB.
//! Keys are hashed with std's randomly keyed SipHash: an agent that chooses the fields a
//! policy reads cannot aim collisions at one bucket.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::engine::Decision;
use crate::input::{CredentialInput, IdentityInput, ListenerInput, PolicyInput, RequestInput};

/// Most decisions one generation keeps.
pub const MAX_ENTRIES: usize = 4096;
/// Independently locked parts of the cache.
pub(crate) const SHARDS: usize = 16;
const SHARD_ENTRIES: usize = MAX_ENTRIES / SHARDS;
/// Longest key cached; longer ones are evaluated every time.
pub(crate) const MAX_KEY_BYTES: usize = 2048;
/// Most bytes of deny reasons one cached decision may hold.
pub(crate) const MAX_REASON_BYTES: usize = 2048;

/// Counters of one generation's cache, for tests, logs and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Decisions held now.
    pub entries: usize,
    /// Evaluations answered from the cache.
    pub hits: u64,
    /// Evaluations looked up and not found (then evaluated, and cached if they decided).
    pub misses: u64,
}

/// The leaves of the input document a key can carry, one bit each. A read of an object
/// selects all its leaves; a read anywhere into `credentials` (an array) selects all of it.
mod field {
    pub(super) const VERSION: u32 = 1 << 0;
    /// Whether `identity` is null; set with any identity field.
    pub(super) const IDENTITY: u32 = 1 << 1;
    pub(super) const AGENT_ID: u32 = 1 << 2;
    pub(super) const SUBJECT: u32 = 1 << 3;
    pub(super) const ROLES: u32 = 1 << 4;
    pub(super) const GROUPS: u32 = 1 << 5;
    pub(super) const ISSUER: u32 = 1 << 6;
    pub(super) const METHOD: u32 = 1 << 7;
    pub(super) const AUTHORITY: u32 = 1 << 8;
    pub(super) const HOST: u32 = 1 << 9;
    pub(super) const PORT: u32 = 1 << 10;
    pub(super) const SCHEME: u32 = 1 << 11;
    pub(super) const PATH: u32 = 1 << 12;
    pub(super) const QUERY_KEYS: u32 = 1 << 13;
    pub(super) const ALLOWLISTED: u32 = 1 << 14;
    pub(super) const CREDENTIALS: u32 = 1 << 15;
    pub(super) const LISTENER_NAME: u32 = 1 << 16;
    pub(super) const LISTENER_KIND: u32 = 1 << 17;
    pub(super) const LISTENER_PEER: u32 = 1 << 18;
    pub(super) const TIME: u32 = 1 << 19;

    pub(super) const ALL_IDENTITY: u32 = IDENTITY | AGENT_ID | SUBJECT | ROLES | GROUPS | ISSUER;
    pub(super) const ALL_REQUEST: u32 =
        METHOD | AUTHORITY | HOST | PORT | SCHEME | PATH | QUERY_KEYS | ALLOWLISTED;
    pub(super) const ALL_LISTENER: u32 = LISTENER_NAME | LISTENER_KIND | LISTENER_PEER;
    pub(super) const ALL: u32 =
        VERSION | ALL_IDENTITY | ALL_REQUEST | CREDENTIALS | ALL_LISTENER | TIME;
}

/// The leaves a read of `path` (components after `input`) depends on. A name the input
/// document does not have is not classified: it widens to the enclosing object (for a
/// top-level name, the whole document), which can only cost hits.
fn leaves(path: &[String]) -> u32 {
    use field::*;
    let Some(first) = path.first() else {
        return ALL;
    };
    let second = path.get(1).map(String::as_str);
    match first.as_str() {
        "version" => VERSION,
        "time" => TIME,
        "credentials" => CREDENTIALS,
        "identity" => match second {
            Some("agent_id") => IDENTITY | AGENT_ID,
            Some("subject") => IDENTITY | SUBJECT,
            Some("roles") => IDENTITY | ROLES,
            Some("groups") => IDENTITY | GROUPS,
            Some("issuer") => IDENTITY | ISSUER,
            _ => ALL_IDENTITY,
        },
        "request" => match second {
            Some("method") => METHOD,
            Some("authority") => AUTHORITY,
            Some("host") => HOST,
            Some("port") => PORT,
            Some("scheme") => SCHEME,
            Some("path") => PATH,
            Some("query_keys") => QUERY_KEYS,
            Some("allowlisted") => ALLOWLISTED,
            _ => ALL_REQUEST,
        },
        "listener" => match second {
            Some("name") => LISTENER_NAME,
            Some("kind") => LISTENER_KIND,
            Some("peer") => LISTENER_PEER,
            _ => ALL_LISTENER,
        },
        _ => ALL,
    }
}

/// One cache key: the encoded projection and its hash, computed once.
#[derive(PartialEq, Eq)]
pub(crate) struct Key {
    hash: u64,
    bytes: Vec<u8>,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Passes [`Key::hash`] through: the key was hashed once, with a keyed hasher.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `Key`; fold anything else in rather than drop it.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Default)]
struct Shard {
    map: HashMap<Key, Decision, BuildHasherDefault<Prehashed>>,
    hits: u64,
    misses: u64,
}

pub(crate) struct DecisionCache {
    leaves: u32,
    paths: Vec<Vec<String>>,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
}

impl DecisionCache {
    /// A cache keyed by the values at `paths` (as [`crate::reads`] reports them).
    pub(crate) fn new(paths: Vec<Vec<String>>) -> DecisionCache {
        DecisionCache {
            leaves: paths.iter().fold(0, |acc, p| acc | leaves(p)),
            paths,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    pub(crate) fn paths(&self) -> &[Vec<String>] {
        &self.paths
    }

    /// The key of `input`, or `None` when it is too long to cache.
    pub(crate) fn key(&self, input: &PolicyInput) -> Option<Key> {
        let mut bytes = Vec::with_capacity(128);
        encode(self.leaves, input, &mut bytes);
        if bytes.len() > MAX_KEY_BYTES {
            return None;
        }
        Some(Key {
            hash: self.hasher.hash_one(&bytes),
            bytes,
        })
    }

    pub(crate) fn get(&self, key: &Key) -> Option<Decision> {
        let mut shard = self.shard(key);
        match shard.map.get(key) {
            Some(decision) => {
                let decision = decision.clone();
                shard.hits += 1;
                Some(decision)
            }
            None => {
                shard.misses += 1;
                None
            }
        }
    }

    pub(crate) fn insert(&self, key: Key, decision: &Decision) {
        let reason_bytes: usize = decision.deny_reasons.iter().map(String::len).sum();
        if reason_bytes > MAX_REASON_BYTES {
            return;
        }
        let mut shard = self.shard(&key);
        if shard.map.len() >= SHARD_ENTRIES && !shard.map.contains_key(&key) {
            // Which entry goes is up to the map's layout: arbitrary, and cheap.
            if let Some(victim) = shard.map.keys().next().map(|k| Key {
                hash: k.hash,
                bytes: k.bytes.clone(),
            }) {
                shard.map.remove(&victim);
            }
        }
        shard.map.insert(key, decision.clone());
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let mut stats = CacheStats::default();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            stats.entries += shard.map.len();
            stats.hits += shard.hits;
            stats.misses += shard.misses;
        }
        stats
    }

    fn shard(&self, key: &Key) -> MutexGuard<'_, Shard> {
        // Bits the map itself does not use for bucket selection (low) or tags (top 7).
        let index = (key.hash >> 32) as usize % SHARDS;
        // A panic while holding a shard leaves at worst a missing entry, never a wrong one:
        // entries are inserted whole.
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Appends the values of the selected leaves of `input`, in a fixed order, each in a
/// self-delimiting form (length-prefixed strings and lists, a tag for null), so two inputs
/// get the same bytes exactly when every selected leaf is equal. The destructuring is
/// exhaustive on purpose: a field added to the input document does not compile until it is
/// given a leaf here.
fn encode(leaves: u32, input: &PolicyInput, out: &mut Vec<u8>) {
    use field::*;
    let PolicyInput {
        version,
        identity,
        request,
        credentials,
        listener,
        time,
    } = input;
    let has = |bit: u32| leaves & bit != 0;

    if has(VERSION) {
        out.extend_from_slice(&version.to_le_bytes());
    }
    if has(ALL_IDENTITY) {
        match identity {
            None => out.push(0),
            Some(IdentityInput {
                agent_id,
                subject,
                roles,
                groups,
                issuer,
            }) => {
                out.push(1);
                if has(AGENT_ID) {
                    string(out, agent_id);
                }
                if has(SUBJECT) {
                    string(out, subject);
                }
                if has(ROLES) {
                    strings(out, roles);
                }
                if has(GROUPS) {
                    strings(out, groups);
                }
                if has(ISSUER) {
                    string(out, issuer);
                }
            }
        }
    }

    let RequestInput {
        method,
        authority,
        host,
        port,
        scheme,
        path,
        query_keys,
        allowlisted,
    } = request;
    if has(METHOD) {
        string(out, method);
    }
    if has(AUTHORITY) {
        string(out, authority);
    }
    if has(HOST) {
        string(out, host);
    }
    if has(PORT) {
        out.extend_from_slice(&port.to_le_bytes());
    }
    if has(SCHEME) {
        string(out, scheme);
    }
    if has(PATH) {
        string(out, path);
    }
    if has(QUERY_KEYS) {
        strings(out, query_keys);
    }
    if has(ALLOWLISTED) {
        out.push(u8::from(*allowlisted));
    }

    if has(CREDENTIALS) {
        length(out, credentials.len());
        for CredentialInput {
            id,
            r#type,
            location,
            bound_domains,
            bound,
            allowed_roles,
        } in credentials
        {
            string(out, id);
            string(out, r#type);
            string(out, location);
            strings(out, bound_domains);
            out.push(u8::from(*bound));
            strings(out, allowed_roles);
        }
    }

    let ListenerInput { name, kind, peer } = listener;
    if has(LISTENER_NAME) {
        string(out, name);
    }
    if has(LISTENER_KIND) {
        string(out, kind);
    }
    if has(LISTENER_PEER) {
        string(out, peer);
    }
    if has(TIME) {
        string(out, time);
    }
}

/// LEB128.
fn length(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn string(out: &mut Vec<u8>, s: &str) {
    length(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn strings(out: &mut Vec<u8>, items: &[String]) {
    length(out, items.len());
    for s in items {
        string(out, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::INPUT_VERSION;

    fn path(p: &str) -> Vec<String> {
        p.split('.')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn input() -> PolicyInput {
        PolicyInput {
            version: INPUT_VERSION,
            identity: Some(IdentityInput {
                agent_id: "agent-a".to_owned(),
                subject: "svc-agent-a".to_owned(),
                roles: vec!["reader".to_owned()],
                groups: vec![],
                issuer: "https://idp.example".to_owned(),
            }),
            request: RequestInput {
                method: "GET".to_owned(),
                authority: "api.example.com:443".to_owned(),
                host: "api.example.com".to_owned(),
                port: 443,
                scheme: "https".to_owned(),
                path: "/v1/things".to_owned(),
                query_keys: vec!["a".to_owned()],
                allowlisted: true,
            },
            credentials: vec![],
            listener: ListenerInput {
                name: "agents".to_owned(),
                kind: "tcp".to_owned(),
                peer: "10.0.0.2:4000".to_owned(),
            },
            time: "2025-01-01T12:00:00Z".to_owned(),
        }
    }

    fn decision(allow: bool) -> Decision {
        Decision {
            allow,
            deny_reasons: if allow { vec![] } else { vec!["no".to_owned()] },
        }
    }

    /// Every name of the document [`PolicyInput::to_value`] builds, at every level, is a
    /// leaf the key knows: a name mapped to nothing would be read by a policy and left out
    /// of its key.
    #[test]
    fn every_name_of_the_input_document_has_its_own_leaves() {
        let mut full = input();
        full.credentials.push(CredentialInput {
            id: "c".to_owned(),
            r#type: "bearer".to_owned(),
            location: "header:authorization".to_owned(),
            bound_domains: vec![],
            bound: true,
            allowed_roles: vec![],
        });
        let doc = full.to_value();
        let top = doc.as_object().expect("an object");
        let mut union = 0;
        for (name, value) in top.iter() {
            let name = name.as_string().expect("a string").to_string();
            let whole = leaves(std::slice::from_ref(&name));
            assert_ne!(whole, field::ALL, "input.{name} is not classified");
            union |= whole;
            if let (Ok(fields), false) = (value.as_object(), name == "credentials") {
                let mut parts = 0;
                for (sub, _) in fields.iter() {
                    let sub = sub.as_string().expect("a string").to_string();
                    let one = leaves(&[name.clone(), sub.clone()]);
                    // A known sub-field selects fewer leaves than its whole object.
                    assert_ne!(one, whole, "input.{name}.{sub} is not classified");
                    parts |= one;
                }
                assert_eq!(parts, whole, "input.{name}: leaves without a field");
            }
        }
        assert_eq!(union, field::ALL);
    }

    #[test]
    fn unknown_names_widen() {
        assert_eq!(leaves(&path("nope")), field::ALL);
        assert_eq!(leaves(&path("")), field::ALL);
        assert_eq!(leaves(&path("request.nope")), field::ALL_REQUEST);
        assert_eq!(leaves(&path("identity.nope.x")), field::ALL_IDENTITY);
        assert_eq!(leaves(&path("request.path.x")), field::PATH);
        assert_eq!(leaves(&path("credentials.x")), field::CREDENTIALS);
    }

    #[test]
    fn null_identity_and_empty_strings_encode_differently() {
        let cache = DecisionCache::new(vec![path("identity.agent_id")]);
        let mut empty = input();
        if let Some(identity) = empty.identity.as_mut() {
            identity.agent_id = String::new();
        }
        let mut none = input();
        none.identity = None;
        let (a, b) = (cache.key(&empty).unwrap(), cache.key(&none).unwrap());
        assert!(a.bytes != b.bytes);

        // Length prefixes keep neighbouring strings apart.
        let cache = DecisionCache::new(vec![path("listener.name"), path("listener.kind")]);
        let mut one = input();
        one.listener.name = "ab".to_owned();
        one.listener.kind = "c".to_owned();
        let mut two = input();
        two.listener.name = "a".to_owned();
        two.listener.kind = "bc".to_owned();
        assert!(cache.key(&one).unwrap().bytes != cache.key(&two).unwrap().bytes);
    }

    #[test]
    fn only_selected_leaves_enter_the_key() {
        let cache = DecisionCache::new(vec![path("request.host")]);
        let a = input();
        let mut b = input();
        b.request.path = "/other".to_owned();
        b.time = "2030-01-01T00:00:00Z".to_owned();
        b.listener.peer = "10.0.0.3:1".to_owned();
        assert!(cache.key(&a).unwrap() == cache.key(&b).unwrap());
        b.request.host = "other.example.com".to_owned();
        assert!(cache.key(&a).unwrap() != cache.key(&b).unwrap());
    }

    #[test]
    fn long_keys_and_long_reasons_are_not_cached() {
        let cache = DecisionCache::new(vec![path("request.path")]);
        let mut long = input();
        long.request.path = "/".repeat(MAX_KEY_BYTES);
        assert!(cache.key(&long).is_none());

        let key = cache.key(&input()).unwrap();
        let wordy = Decision {
            allow: false,
            deny_reasons: vec!["x".repeat(MAX_REASON_BYTES + 1)],
        };
        cache.insert(key, &wordy);
        assert_eq!(cache.stats().entries, 0);
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_serving() {
        let cache = DecisionCache::new(vec![path("request.path")]);
        let mut input = input();
        for i in 0..3 * MAX_ENTRIES {
            input.request.path = format!("/{i}");
            let key = cache.key(&input).unwrap();
            assert_eq!(cache.get(&key), None);
            cache.insert(key, &decision(i % 2 == 0));
            let entries = cache.stats().entries;
            assert!(
                entries <= MAX_ENTRIES,
                "{entries} entries after {i} inserts"
            );
        }
        let stats = cache.stats();
        // Every shard filled up (keys spread over all of them) and stayed at its bound.
        assert_eq!(stats.entries, MAX_ENTRIES);
        assert_eq!(stats.misses, 3 * MAX_ENTRIES as u64);
        // The latest entry is there and right.
        let key = cache.key(&input).unwrap();
        assert_eq!(
            cache.get(&key),
            Some(decision((3 * MAX_ENTRIES - 1) % 2 == 0))
        );
        assert_eq!(cache.stats().hits, 1);
    }
}
