//! Finding placeholders, and strings that look like someone probing for them, in requests.
//!
//! A placeholder is a single token (a maximal run of `[A-Za-z0-9_-]`). A token that equals a
//! configured placeholder is an exact finding; everything else that resembles one is a near
//! miss, which the proxy treats as a misuse alarm rather than substituting a secret (A32).
//!
//! Near-miss rule:
//! * a token that contains a configured placeholder but is longer (characters glued on either
//!   side, e.g. `xagent-vault-…` or `sk-ant-placeholder-1x`) is "padded", whatever its shape;
//! * a token that contains `agent-vault` (the default prefix) in any letter case and is not
//!   exactly a configured placeholder is a near miss, described as "altered case" (equal to a
//!   placeholder ignoring case), "padded" (contains one ignoring case, or a default-shaped
//!   placeholder with characters glued on), "truncated" (part of a placeholder, or
//!   `agent-vault-` followed by an incomplete uuid) or "unknown placeholder";
//! * vendor-shaped placeholders are otherwise matched exactly only: `SK-ANT-PLACEHOLDER-1` is
//!   not flagged, because vendor-shaped strings occur in ordinary text (docs, SDK examples).

use std::collections::HashMap;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};

use crate::token::{is_token, run_end, runs};
use crate::ScrubError;

/// The default placeholder prefix; any token containing it is a placeholder or a near miss.
const DEFAULT_PREFIX: &[u8] = b"agent-vault";
/// The prefix with underscores (`agent_vault_<uuid>`), detected the same way: a separator
/// swapped is as much a probe as a letter's case.
const DEFAULT_PREFIX_UNDERSCORE: &[u8] = b"agent_vault";
/// `excerpt` never holds more than this many characters of the near-miss text.
const EXCERPT_LEN: usize = 24;
/// Length of a uuid in its hyphenated form.
const UUID_LEN: usize = 36;

pub(crate) const ALTERED_CASE: &str = "altered case";
pub(crate) const TRUNCATED: &str = "truncated";
pub(crate) const PADDED: &str = "padded";
pub(crate) const UNKNOWN: &str = "unknown placeholder";

/// The configured placeholders, for detection and replacement in requests.
///
/// Cheap to clone: the automaton and lookup table are shared.
#[derive(Clone, Debug)]
pub struct PlaceholderSet {
    inner: Arc<SetInner>,
}

#[derive(Debug)]
struct SetInner {
    placeholders: Vec<String>,
    index: HashMap<Box<[u8]>, usize>,
    /// `lengths[n]`: some placeholder is `n` bytes long.
    lengths: Vec<bool>,
    max_len: usize,
    /// Case-insensitive, overlapping matcher for every placeholder plus the default prefix (the
    /// last pattern). Overlapping, because `agent-vault` is a prefix of the placeholders it
    /// must not hide.
    detector: AhoCorasick,
    /// Longest detector pattern: the stream scanner carries one byte less between chunks.
    detector_max: usize,
    /// Tokens shorter than this contain no detector pattern, so the automaton is skipped.
    detector_min: usize,
    /// How many leading bytes of a token are kept to classify it: enough to compare it with
    /// every placeholder and to see past a default-shaped placeholder's uuid.
    head_cap: usize,
}

/// What [`PlaceholderSet::scan`] found. Both lists are in order of `start`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Findings {
    pub exact: Vec<Found>,
    pub near_misses: Vec<NearMiss>,
}

/// A token that is exactly the placeholder of credential `credential`, at byte offsets
/// `start..end` of the scanned value or stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub credential: usize,
    pub start: u64,
    pub end: u64,
}

/// A string shaped like a default placeholder that is not a configured one (altered case,
/// truncated, padded, unknown uuid, a configured placeholder with extra characters glued on,
/// e.g. `agent-vault-…-0001x`). `start..end` covers the whole token.
///
/// `shape` is a short, safe description for logs ("altered case", "truncated", "padded",
/// "unknown placeholder"); `excerpt` never contains more than the first 24 characters of the
/// text, and only token characters, so it is safe to log and cannot carry a secret's tail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NearMiss {
    pub start: u64,
    pub end: u64,
    pub shape: &'static str,
    pub excerpt: String,
}

/// Incremental [`PlaceholderSet::scan`] for a body that arrives in chunks.
///
/// Holds at most one token's first few bytes and the last few bytes of the stream (both bounded
/// by the longest placeholder), never the body. A finding is reported by the `push` that sees
/// the byte ending its token, or by `finish`.
#[derive(Debug)]
pub struct StreamScanner {
    set: PlaceholderSet,
    /// Absolute offset of the next byte pushed.
    offset: u64,
    /// The last `detector_max - 1` bytes seen, so that a pattern split across chunks is found.
    carry: Vec<u8>,
    buf: Vec<u8>,
    /// Detector hits ending in the current chunk: (absolute end, what they say).
    hits: Vec<(u64, Hit)>,
    open: Option<OpenToken>,
    head: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
enum Hit {
    /// A placeholder, in exactly its configured case.
    Exact,
    /// A placeholder in another case.
    OtherCase,
    /// The default prefix, any case.
    Prefix,
}

/// What is known about a token: its first bytes, its length, and which detector patterns it
/// contains. That is all [`SetInner::judge`] needs, so long tokens cost no memory.
#[derive(Clone, Copy, Debug, Default)]
struct Facts {
    len: u64,
    placeholder: bool,
    placeholder_ci: bool,
    prefix: bool,
}

#[derive(Clone, Copy, Debug)]
struct OpenToken {
    start: u64,
    facts: Facts,
}

enum Verdict {
    Exact(usize),
    Near(&'static str),
    Clean,
}

impl PlaceholderSet {
    /// `placeholders[i]` belongs to credential index i.
    ///
    /// Errors: an empty placeholder, one with a character outside `[A-Za-z0-9_-]` (it would not
    /// survive JSON or percent encoding unchanged, and "glued on" would be ill-defined), a
    /// duplicate, or one being a substring of another (a request could not say which credential
    /// it means). The error names both placeholders concerned; they are not secrets.
    pub fn new(placeholders: Vec<String>) -> Result<PlaceholderSet, ScrubError> {
        for (index, p) in placeholders.iter().enumerate() {
            if p.is_empty() {
                return Err(ScrubError::EmptyPlaceholder { index });
            }
            if !p.bytes().all(is_token) {
                return Err(ScrubError::PlaceholderNotToken {
                    placeholder: p.clone(),
                });
            }
        }
        let mut index: HashMap<Box<[u8]>, usize> = HashMap::with_capacity(placeholders.len());
        for (i, p) in placeholders.iter().enumerate() {
            if let Some(&first) = index.get(p.as_bytes()) {
                return Err(ScrubError::DuplicatePlaceholder {
                    placeholder: p.clone(),
                    first,
                    second: i,
                });
            }
            index.insert(p.as_bytes().into(), i);
        }
        for inner in &placeholders {
            let finder = memchr::memmem::Finder::new(inner.as_bytes());
            for outer in &placeholders {
                if outer.len() > inner.len() && finder.find(outer.as_bytes()).is_some() {
                    return Err(ScrubError::AmbiguousPlaceholders {
                        inner: inner.clone(),
                        outer: outer.clone(),
                    });
                }
            }
        }
        let mut patterns: Vec<&[u8]> = placeholders.iter().map(|p| p.as_bytes()).collect();
        patterns.push(DEFAULT_PREFIX);
        patterns.push(DEFAULT_PREFIX_UNDERSCORE);
        let detector = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .ascii_case_insensitive(true)
            .build(&patterns)
            .map_err(ScrubError::Automaton)?;
        let max_len = placeholders.iter().map(String::len).max().unwrap_or(0);
        let detector_max = max_len.max(DEFAULT_PREFIX.len());
        let detector_min = patterns.iter().map(|p| p.len()).min().unwrap_or(1);
        let head_cap = max_len.max(DEFAULT_PREFIX.len() + 1 + UUID_LEN) + 1;
        let mut lengths = vec![false; max_len + 1];
        for p in &placeholders {
            lengths[p.len()] = true;
        }
        Ok(PlaceholderSet {
            inner: Arc::new(SetInner {
                placeholders,
                index,
                lengths,
                max_len,
                detector,
                detector_max,
                detector_min,
                head_cap,
            }),
        })
    }

    pub fn len(&self) -> usize {
        self.inner.placeholders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.placeholders.is_empty()
    }

    /// Length in bytes of the longest placeholder (0 for an empty set).
    pub fn max_len(&self) -> usize {
        self.inner.max_len
    }

    /// The placeholder of credential `credential`.
    pub fn placeholder(&self, credential: usize) -> Option<&str> {
        self.inner.placeholders.get(credential).map(String::as_str)
    }

    /// The credential whose placeholder is exactly `token`.
    pub fn lookup(&self, token: &[u8]) -> Option<usize> {
        // Most tokens have no placeholder's length: skip hashing them.
        if !self
            .inner
            .lengths
            .get(token.len())
            .copied()
            .unwrap_or(false)
        {
            return None;
        }
        self.inner.index.get(token).copied()
    }

    /// Find exact placeholders and near-misses in a complete value (header value, path, query
    /// string). See the module documentation for the near-miss rule.
    pub fn scan(&self, haystack: &[u8]) -> Findings {
        let inner = &self.inner;
        let mut findings = Findings::default();
        for (start, end, token) in runs(haystack) {
            if !token {
                continue;
            }
            let tok = &haystack[start..end];
            let mut facts = Facts {
                len: tok.len() as u64,
                ..Facts::default()
            };
            if tok.len() >= inner.detector_min {
                for m in inner.detector.find_overlapping_iter(tok) {
                    facts.record(inner.hit(m.pattern().as_usize(), &tok[m.start()..m.end()]));
                }
            }
            let head = &tok[..tok.len().min(inner.head_cap)];
            inner.report(head, facts, start as u64, &mut findings);
        }
        findings
    }

    /// Incremental scanner for a body that arrives in chunks: results equal `scan` of the
    /// concatenation, with absolute offsets.
    pub fn stream_scanner(&self) -> StreamScanner {
        StreamScanner {
            set: self.clone(),
            offset: 0,
            carry: Vec::new(),
            buf: Vec::new(),
            hits: Vec::new(),
            open: None,
            head: Vec::with_capacity(self.inner.head_cap),
        }
    }
}

impl SetInner {
    fn hit(&self, pattern: usize, text: &[u8]) -> Hit {
        match self.placeholders.get(pattern) {
            Some(p) if p.as_bytes() == text => Hit::Exact,
            Some(_) => Hit::OtherCase,
            None => Hit::Prefix,
        }
    }

    fn report(&self, head: &[u8], facts: Facts, start: u64, findings: &mut Findings) {
        let end = start + facts.len;
        match self.judge(head, facts) {
            Verdict::Exact(credential) => findings.exact.push(Found {
                credential,
                start,
                end,
            }),
            Verdict::Near(shape) => findings.near_misses.push(NearMiss {
                start,
                end,
                shape,
                // Token bytes are ASCII, so this is lossless and cuts on a character boundary.
                excerpt: String::from_utf8_lossy(&head[..head.len().min(EXCERPT_LEN)]).into_owned(),
            }),
            Verdict::Clean => {}
        }
    }

    /// Classifies one token from its first `head_cap` bytes and its facts.
    fn judge(&self, head: &[u8], facts: Facts) -> Verdict {
        let complete = head.len() as u64 == facts.len;
        // A token equal to a placeholder contains it; checking the flag first spares a hash
        // lookup per token.
        if complete && facts.placeholder {
            if let Some(&i) = self.index.get(head) {
                return Verdict::Exact(i);
            }
        }
        if facts.placeholder {
            return Verdict::Near(PADDED);
        }
        if !facts.prefix {
            return Verdict::Clean;
        }
        if complete
            && self
                .placeholders
                .iter()
                .any(|p| p.as_bytes().eq_ignore_ascii_case(head))
        {
            return Verdict::Near(ALTERED_CASE);
        }
        if facts.placeholder_ci {
            return Verdict::Near(PADDED);
        }
        // `_` and `-` are both token characters: compare with separators unified.
        let lower: Vec<u8> = head
            .iter()
            .map(|b| {
                if *b == b'_' {
                    b'-'
                } else {
                    b.to_ascii_lowercase()
                }
            })
            .collect();
        if complete
            && self
                .placeholders
                .iter()
                .any(|p| p.as_bytes().eq_ignore_ascii_case(&lower))
        {
            return Verdict::Near(ALTERED_CASE);
        }
        if complete
            && self
                .placeholders
                .iter()
                .any(|p| memchr::memmem::find(p.to_ascii_lowercase().as_bytes(), &lower).is_some())
        {
            return Verdict::Near(TRUNCATED);
        }
        Verdict::Near(default_shape(&lower, complete))
    }
}

/// Describes a token that contains `agent-vault` but relates to no configured placeholder, from
/// its lower-cased head.
fn default_shape(lower: &[u8], complete: bool) -> &'static str {
    let Some(at) = memchr::memmem::find(lower, DEFAULT_PREFIX) else {
        // The prefix lies beyond the head of a very long token.
        return PADDED;
    };
    if at > 0 {
        return PADDED;
    }
    let rest = &lower[DEFAULT_PREFIX.len()..];
    if rest.is_empty() {
        return if complete { TRUNCATED } else { UNKNOWN };
    }
    let Some(uuid) = rest.strip_prefix(b"-") else {
        return UNKNOWN;
    };
    let shaped = uuid
        .iter()
        .take(UUID_LEN)
        .enumerate()
        .take_while(|&(i, &c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
        .count();
    if shaped == UUID_LEN {
        if uuid.len() == UUID_LEN && complete {
            UNKNOWN
        } else {
            PADDED
        }
    } else if shaped == uuid.len() && complete {
        TRUNCATED
    } else {
        UNKNOWN
    }
}

impl Facts {
    fn record(&mut self, hit: Hit) {
        match hit {
            Hit::Exact => {
                self.placeholder = true;
                self.placeholder_ci = true;
            }
            Hit::OtherCase => self.placeholder_ci = true,
            Hit::Prefix => self.prefix = true,
        }
    }
}

impl Findings {
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.near_misses.is_empty()
    }

    /// Appends `other`, which must come later in the same stream.
    pub fn append(&mut self, mut other: Findings) {
        self.exact.append(&mut other.exact);
        self.near_misses.append(&mut other.near_misses);
    }
}

impl StreamScanner {
    /// Scans the next chunk; returns the findings whose token ended inside it.
    ///
    /// A token without a detector hit is never a finding, so only tokens with hits are looked
    /// at, plus the token still open at the end of the chunk (it may get hits later).
    pub fn push(&mut self, chunk: &[u8]) -> Findings {
        let mut findings = Findings::default();
        if chunk.is_empty() {
            return findings;
        }
        let inner = Arc::clone(&self.set.inner);
        let base = self.offset;
        self.collect_hits(&inner, chunk);
        let mut hits = self.hits.iter().copied().peekable();
        let cap = inner.head_cap;

        // The token left open by earlier chunks continues over the leading token characters.
        let mut i = 0;
        if let Some(mut open) = self.open.take() {
            let stop = run_end(chunk, 0, true);
            let room = cap - self.head.len();
            self.head.extend_from_slice(&chunk[..stop.min(room)]);
            open.facts.len += stop as u64;
            while let Some((_, hit)) = hits.next_if(|&(end, _)| end <= base + stop as u64) {
                open.facts.record(hit);
            }
            if stop < chunk.len() {
                inner.report(&self.head, open.facts, open.start, &mut findings);
            } else {
                self.open = Some(open);
                self.offset += chunk.len() as u64;
                return findings;
            }
            i = stop;
        }

        // Tokens inside the chunk that contain hits. Every detector pattern is made of token
        // characters, so a hit lies inside the token run that holds its last byte.
        while let Some(&(end, _)) = hits.peek() {
            let last = (end - base) as usize - 1;
            let start = chunk[i..last]
                .iter()
                .rposition(|&b| !is_token(b))
                .map_or(i, |p| i + p + 1);
            let stop = run_end(chunk, last, true);
            let mut facts = Facts {
                len: (stop - start) as u64,
                ..Facts::default()
            };
            while let Some((_, hit)) = hits.next_if(|&(end, _)| end <= base + stop as u64) {
                facts.record(hit);
            }
            let head = &chunk[start..stop.min(start + cap)];
            if stop == chunk.len() {
                self.head.clear();
                self.head.extend_from_slice(head);
                self.open = Some(OpenToken {
                    start: base + start as u64,
                    facts,
                });
            } else {
                inner.report(head, facts, base + start as u64, &mut findings);
            }
            i = stop;
        }

        // A token running to the end of the chunk stays open even without hits yet.
        if self.open.is_none() && is_token(chunk[chunk.len() - 1]) {
            let start = chunk[i..]
                .iter()
                .rposition(|&b| !is_token(b))
                .map_or(i, |p| i + p + 1);
            self.head.clear();
            self.head
                .extend_from_slice(&chunk[start..chunk.len().min(start + cap)]);
            self.open = Some(OpenToken {
                start: base + start as u64,
                facts: Facts {
                    len: (chunk.len() - start) as u64,
                    ..Facts::default()
                },
            });
        }
        self.offset += chunk.len() as u64;
        findings
    }

    /// Fills `hits` with the detector hits that end inside `chunk`, in order of their end:
    /// those inside the chunk, and those that began in the carried tail of the previous one.
    /// Then carries this chunk's tail.
    fn collect_hits(&mut self, inner: &SetInner, chunk: &[u8]) {
        let base = self.offset;
        self.hits.clear();
        if !self.carry.is_empty() {
            let carry_len = self.carry.len();
            self.buf.clear();
            self.buf.extend_from_slice(&self.carry);
            self.buf
                .extend_from_slice(&chunk[..chunk.len().min(inner.detector_max - 1)]);
            let buf_base = base - carry_len as u64;
            for m in inner.detector.find_overlapping_iter(&self.buf) {
                if m.start() < carry_len && m.end() > carry_len {
                    let hit = inner.hit(m.pattern().as_usize(), &self.buf[m.start()..m.end()]);
                    self.hits.push((buf_base + m.end() as u64, hit));
                }
            }
        }
        if chunk.len() >= inner.detector_min {
            for m in inner.detector.find_overlapping_iter(chunk) {
                let hit = inner.hit(m.pattern().as_usize(), &chunk[m.start()..m.end()]);
                self.hits.push((base + m.end() as u64, hit));
            }
        }
        self.hits.sort_by_key(|&(end, _)| end);

        let keep = (inner.detector_max - 1).min(chunk.len());
        if keep < inner.detector_max - 1 {
            // A short chunk: the carry keeps its older bytes too.
            self.carry.extend_from_slice(chunk);
            let excess = self.carry.len().saturating_sub(inner.detector_max - 1);
            self.carry.drain(..excess);
        } else {
            self.carry.clear();
            self.carry.extend_from_slice(&chunk[chunk.len() - keep..]);
        }
    }

    /// Ends the stream: reports the token that ran to its end, if any.
    pub fn finish(&mut self) -> Findings {
        let mut findings = Findings::default();
        if let Some(open) = self.open.take() {
            self.set
                .inner
                .report(&self.head, open.facts, open.start, &mut findings);
        }
        self.carry.clear();
        findings
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PH1: &str = "agent-vault-00000000-0000-0000-0000-000000000001";
    const PH2: &str = "agent-vault-00000000-0000-0000-0000-000000000002";
    const VENDOR: &str = "sk-ant-placeholder-0123456789";

    fn set() -> PlaceholderSet {
        PlaceholderSet::new(vec![PH1.into(), PH2.into(), VENDOR.into()]).unwrap()
    }

    fn shapes(f: &Findings) -> Vec<&'static str> {
        f.near_misses.iter().map(|n| n.shape).collect()
    }

    #[test]
    fn rejects_bad_sets_naming_both() {
        let e = PlaceholderSet::new(vec!["abc".into(), String::new()]).unwrap_err();
        assert!(matches!(e, ScrubError::EmptyPlaceholder { index: 1 }));
        let e = PlaceholderSet::new(vec!["abc".into(), "abc".into()]).unwrap_err();
        assert!(matches!(
            e,
            ScrubError::DuplicatePlaceholder {
                first: 0,
                second: 1,
                ..
            }
        ));
        let e = PlaceholderSet::new(vec!["ph-longer-1".into(), "longer".into()]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("\"longer\"") && msg.contains("\"ph-longer-1\""),
            "{msg}"
        );
        let e = PlaceholderSet::new(vec!["has space".into()]).unwrap_err();
        assert!(matches!(e, ScrubError::PlaceholderNotToken { .. }));
        assert!(PlaceholderSet::new(vec![]).unwrap().is_empty());
    }

    #[test]
    fn reports_sizes() {
        let s = set();
        assert_eq!(s.len(), 3);
        assert_eq!(s.max_len(), PH1.len());
        assert_eq!(s.placeholder(2), Some(VENDOR));
        assert_eq!(s.lookup(PH2.as_bytes()), Some(1));
    }

    #[test]
    fn finds_exact_placeholders_with_offsets() {
        let s = set();
        let v = format!("Bearer {PH2}");
        let f = s.scan(v.as_bytes());
        assert_eq!(
            f.exact,
            vec![Found {
                credential: 1,
                start: 7,
                end: v.len() as u64
            }]
        );
        assert!(f.near_misses.is_empty());
        let q = format!("a=1&key={VENDOR}&k2={PH1}.");
        let f = s.scan(q.as_bytes());
        assert_eq!(f.exact.len(), 2);
        assert_eq!(f.exact[0].credential, 2);
        assert_eq!(f.exact[1].credential, 0);
        assert!(f.near_misses.is_empty());
    }

    #[test]
    fn near_miss_shapes() {
        let s = set();
        let cases = [
            (PH1.to_ascii_uppercase(), ALTERED_CASE),
            (
                "Agent-Vault-00000000-0000-0000-0000-000000000001".to_string(),
                ALTERED_CASE,
            ),
            (PH1[..30].to_string(), TRUNCATED),
            ("agent-vault-12ab".to_string(), TRUNCATED),
            (format!("x{PH1}"), PADDED),
            (format!("{PH1}x"), PADDED),
            (format!("{}X", PH1.to_ascii_uppercase()), PADDED),
            (format!("_{VENDOR}"), PADDED),
            (format!("{VENDOR}-"), PADDED),
            (
                "agent-vault-11111111-2222-3333-4444-555555555555".to_string(),
                UNKNOWN,
            ),
            (
                "agent-vault-11111111-2222-3333-4444-555555555555z".to_string(),
                PADDED,
            ),
            ("agent-vault-token".to_string(), UNKNOWN),
            (PH1.replace('-', "_"), ALTERED_CASE),
            (
                "agent_vault_12345678_1234_1234_1234_123456789abc".to_string(),
                UNKNOWN,
            ),
            ("agent_vault".to_string(), TRUNCATED),
            ("AGENT-VAULT".to_string(), TRUNCATED),
        ];
        for (text, shape) in cases {
            let v = format!("k: {text};");
            let f = s.scan(v.as_bytes());
            assert!(f.exact.is_empty(), "{text}");
            assert_eq!(shapes(&f), vec![shape], "{text}");
            let nm = &f.near_misses[0];
            assert_eq!((nm.start, nm.end), (3, 3 + text.len() as u64));
            assert!(nm.excerpt.chars().count() <= 24);
            assert!(text.starts_with(&nm.excerpt));
        }
    }

    #[test]
    fn vendor_placeholders_match_exactly_only() {
        let s = set();
        let f = s.scan(VENDOR.to_ascii_uppercase().as_bytes());
        assert!(f.is_empty());
        let f = s.scan(b"sk-ant-placeholder-01234");
        assert!(f.is_empty());
    }

    #[test]
    fn stream_scanner_matches_scan_at_every_split() {
        let s = set();
        let text = format!("{PH1} x{PH2} {VENDOR}, AGENT-vault-1 {}/{PH2}", &PH1[..20]);
        let whole = s.scan(text.as_bytes());
        assert_eq!(whole.exact.len(), 3);
        assert_eq!(whole.near_misses.len(), 3);
        for a in 0..=text.len() {
            for b in a..=text.len() {
                let mut sc = s.stream_scanner();
                let mut got = sc.push(&text.as_bytes()[..a]);
                got.append(sc.push(&text.as_bytes()[a..b]));
                got.append(sc.push(&text.as_bytes()[b..]));
                got.append(sc.finish());
                assert_eq!(got, whole, "split at {a}/{b}");
            }
        }
    }

    #[test]
    fn long_tokens_are_bounded() {
        let s = set();
        let long = format!("{}{PH1}{}", "a".repeat(5000), "b".repeat(5000));
        let f = s.scan(long.as_bytes());
        assert_eq!(shapes(&f), vec![PADDED]);
        assert_eq!(f.near_misses[0].excerpt, "a".repeat(24));
        let mut sc = s.stream_scanner();
        let mut got = Findings::default();
        for c in long.as_bytes().chunks(7) {
            got.append(sc.push(c));
        }
        got.append(sc.finish());
        assert_eq!(got, f);
    }
}
