//! Scrubbing secrets, in every common rendering, out of responses (A1–A3, A5).
//!
//! Matching is one aho-corasick pass, leftmost-longest, over every pattern of every secret;
//! each match is replaced once and counted once. Streaming holds back only the longest suffix
//! of what it has seen that is a proper prefix of some pattern, so it emits everything else
//! immediately and never buffers a body: there is no size above which scrubbing stops (A5).
//!
//! What the output is guaranteed not to contain: an occurrence of a pattern that lies inside
//! bytes copied from the input (leftmost-longest leaves no pattern occurrence starting outside
//! a match) or inside one replacement (checked when the patterns are built). An occurrence
//! could only be formed across the edge of a replacement, by input that already carries all
//! of that rendering but the few bytes that equal the edge of the public placeholder or
//! marker; such input has leaked the secret before any scrubbing, and no pattern-based
//! scrubber can hide it. [`ScrubPatterns::scrub_with_spans`] reports replacement positions so
//! tests can check exactly this.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use aho_corasick::{packed, AhoCorasick, MatchKind, Span};
use credproxy_core::Secret;

use crate::render::{opaque, MARKER, TEXTUAL};
use crate::trie::PrefixTrie;
use crate::ScrubError;

/// Secrets shorter than this are refused: scrubbing a short value would mangle unrelated
/// content (a 3-byte value occurs by chance in any large body) and its base64 interior forms
/// would be one or two characters, so scrubbing could not be reliable.
pub const MIN_SECRET_LEN: usize = 8;

/// What to scrub out of responses for one secret.
#[derive(Clone, Debug)]
pub struct ScrubEntry {
    pub secret: Secret,
    /// What a raw occurrence is replaced with (the placeholder).
    pub placeholder: String,
    /// Further literal renderings to scrub as well, e.g. the injected header value
    /// `Bearer <secret>` or `<prefix><secret>`. Each is scrubbed in every rendering like the
    /// secret itself; its textual renderings are replaced by the same rendering of the value
    /// with the secret swapped for the placeholder (so `Bearer <secret>` comes back as
    /// `Bearer <placeholder>`), or by the placeholder if it does not contain the secret.
    pub rendered: Vec<Secret>,
}

/// The compiled patterns of the secrets injected into one request, to scrub its response.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct ScrubPatterns {
    inner: Arc<PatternsInner>,
}

#[derive(Debug)]
struct PatternsInner {
    /// None when there is nothing to scrub.
    matcher: Option<Matcher>,
    /// Indexed by aho-corasick pattern id.
    replacement: Vec<Arc<[u8]>>,
    trie: PrefixTrie,
    max_len: usize,
}

/// Streaming [`ScrubPatterns::scrub`] for response bodies.
#[derive(Debug)]
pub struct StreamScrubber {
    patterns: ScrubPatterns,
    /// Held-back bytes: a proper prefix of some pattern.
    carry: Vec<u8>,
    buf: Vec<u8>,
    count: usize,
}

impl ScrubPatterns {
    /// Compiles every rendering of every entry's secret and rendered values.
    ///
    /// Secrets of any length >= 1 are representable, but one shorter than
    /// [`MIN_SECRET_LEN`] bytes (or a rendered value that short) returns
    /// [`ScrubError::SecretTooShort`], so that the proxy can refuse to inject it: scrubbing a
    /// 3-byte value would mangle unrelated content and cannot be reliable. A placeholder or the
    /// marker that contains a pattern of some secret returns
    /// [`ScrubError::ReplacementContainsSecret`], since scrubbing would then write a secret.
    pub fn new(entries: Vec<ScrubEntry>) -> Result<ScrubPatterns, ScrubError> {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut replacement: Vec<Arc<[u8]>> = Vec::new();
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut replacements: HashMap<Arc<[u8]>, usize> = HashMap::new();
        let marker: Arc<[u8]> = Arc::from(MARKER);
        replacements.insert(Arc::clone(&marker), usize::MAX);

        for (index, entry) in entries.iter().enumerate() {
            let secret = entry.secret.expose();
            if secret.len() < MIN_SECRET_LEN {
                return Err(ScrubError::SecretTooShort {
                    entry: index,
                    min: MIN_SECRET_LEN,
                });
            }
            let placeholder = entry.placeholder.as_bytes();
            let mut values: Vec<(&[u8], Vec<u8>)> = vec![(secret, placeholder.to_vec())];
            for r in &entry.rendered {
                let r = r.expose();
                if r.len() < MIN_SECRET_LEN {
                    return Err(ScrubError::SecretTooShort {
                        entry: index,
                        min: MIN_SECRET_LEN,
                    });
                }
                values.push((r, swap(r, secret, placeholder)));
            }
            let mut add = |pattern: Vec<u8>, with: Arc<[u8]>| {
                if seen.insert(pattern.clone()) {
                    replacements.entry(Arc::clone(&with)).or_insert(index);
                    patterns.push(pattern);
                    replacement.push(with);
                }
            };
            // Textual renderings first: when the same bytes are both a textual and an opaque
            // rendering, the first one added wins, and the placeholder is the friendlier
            // replacement.
            for (value, swapped) in &values {
                for render in TEXTUAL {
                    add(render(value), Arc::from(render(swapped)));
                }
            }
            for (value, _) in &values {
                for form in opaque(value) {
                    add(form, Arc::clone(&marker));
                }
            }
        }

        let max_len = patterns.iter().map(Vec::len).max().unwrap_or(0);
        let trie = PrefixTrie::new(patterns.iter().map(Vec::as_slice));
        let matcher = if patterns.is_empty() {
            None
        } else {
            let matcher = Matcher::new(&patterns)?;
            for (text, &entry) in &replacements {
                if matcher.first(text).is_some() {
                    return Err(ScrubError::ReplacementContainsSecret {
                        entry: (entry != usize::MAX).then_some(entry),
                    });
                }
            }
            Some(matcher)
        };
        Ok(ScrubPatterns {
            inner: Arc::new(PatternsInner {
                matcher,
                replacement,
                trie,
                max_len,
            }),
        })
    }

    /// Length of the longest pattern; a stream holds back at most one byte less.
    pub fn max_pattern_len(&self) -> usize {
        self.inner.max_len
    }

    /// Number of distinct patterns compiled.
    pub fn pattern_count(&self) -> usize {
        self.inner.replacement.len()
    }

    /// Scrub a complete value (a header value, a trailer). Returns new bytes and the count of
    /// replacements.
    pub fn scrub(&self, input: &[u8]) -> (Vec<u8>, usize) {
        let (out, spans) = self.scrub_with_spans(input);
        (out, spans.len())
    }

    /// [`scrub`](Self::scrub), also returning where in the output each replacement was
    /// written (in order): what tests and fuzzers need to check the output guarantee.
    pub fn scrub_with_spans(&self, input: &[u8]) -> (Vec<u8>, Vec<Range<usize>>) {
        let mut out = Vec::with_capacity(input.len());
        let mut spans = Vec::new();
        let Some(matcher) = &self.inner.matcher else {
            out.extend_from_slice(input);
            return (out, spans);
        };
        let mut pos = 0;
        matcher.for_each(input, |m| {
            out.extend_from_slice(&input[pos..m.start]);
            let start = out.len();
            out.extend_from_slice(&self.inner.replacement[m.pattern]);
            spans.push(start..out.len());
            pos = m.end;
            true
        });
        out.extend_from_slice(&input[pos..]);
        (out, spans)
    }

    /// The matches of `data` that are final and where the bytes to carry start, exactly as a
    /// [`StreamScrubber`] decides when `data` is its carry followed by a new chunk: a match
    /// is final unless it starts in the held-back suffix (the longest suffix that is a proper
    /// prefix of a pattern); with `last`, nothing is held. Matches come in order, each with
    /// its replacement; the carry is `data[keep..]`, which holds no final match.
    pub(crate) fn final_matches(&self, data: &[u8], last: bool) -> (Vec<FinalMatch>, usize) {
        let mut found = Vec::new();
        let Some(matcher) = &self.inner.matcher else {
            return (found, data.len());
        };
        let held_from = if last {
            data.len()
        } else {
            data.len() - self.inner.trie.held_len(data)
        };
        let mut pos = 0;
        matcher.for_each(data, |m| {
            if m.start >= held_from {
                return false;
            }
            found.push(FinalMatch {
                range: m.start..m.end,
                replacement: Arc::clone(&self.inner.replacement[m.pattern]),
            });
            pos = m.end;
            true
        });
        (found, pos.max(held_from))
    }

    /// Length of the longest suffix of `data` that is a proper prefix of some pattern.
    pub(crate) fn held_len(&self, data: &[u8]) -> usize {
        if self.inner.matcher.is_none() {
            return 0;
        }
        self.inner.trie.held_len(data)
    }

    /// A scrubber for one response body.
    pub fn stream(&self) -> StreamScrubber {
        StreamScrubber {
            patterns: self.clone(),
            carry: Vec::with_capacity(self.inner.max_len),
            buf: Vec::new(),
            count: 0,
        }
    }
}

/// A match that [`ScrubPatterns::final_matches`] found: where, and what replaces it.
#[derive(Debug, Clone)]
pub(crate) struct FinalMatch {
    pub range: Range<usize>,
    pub replacement: Arc<[u8]>,
}

/// `value` with every occurrence of `secret` replaced by `placeholder`, or the placeholder
/// alone when `value` does not contain the secret.
fn swap(value: &[u8], secret: &[u8], placeholder: &[u8]) -> Vec<u8> {
    let finder = memchr::memmem::Finder::new(secret);
    let mut out = Vec::with_capacity(value.len() + placeholder.len());
    let mut pos = 0;
    for at in finder.find_iter(value) {
        if at < pos {
            continue;
        }
        out.extend_from_slice(&value[pos..at]);
        out.extend_from_slice(placeholder);
        pos = at + secret.len();
    }
    if pos == 0 {
        return placeholder.to_vec();
    }
    out.extend_from_slice(&value[pos..]);
    out
}

impl StreamScrubber {
    /// Returns the bytes that can be emitted now. It holds back only the longest suffix of what
    /// it has seen that is a proper prefix of some pattern (so at most max_pattern_len-1
    /// bytes), and emits everything else immediately: an SSE event whose tail cannot start a
    /// pattern goes out in the same call, which keeps streaming latency.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len() + self.carry.len());
        let inner = &self.patterns.inner;
        if self.carry.is_empty() {
            let keep = scrub_into(inner, chunk, false, &mut out, &mut self.count);
            self.carry.extend_from_slice(&chunk[keep..]);
        } else {
            self.buf.clear();
            self.buf.extend_from_slice(&self.carry);
            self.buf.extend_from_slice(chunk);
            let keep = scrub_into(inner, &self.buf, false, &mut out, &mut self.count);
            self.carry.clear();
            self.carry.extend_from_slice(&self.buf[keep..]);
        }
        out
    }

    /// Ends the body: releases the held-back bytes (they are not a pattern: none is complete).
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.carry.len());
        scrub_into(
            &self.patterns.inner,
            &self.carry,
            true,
            &mut out,
            &mut self.count,
        );
        self.carry.clear();
        out
    }

    /// Replacements made so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Bytes currently held back; never more than `max_pattern_len() - 1`.
    pub fn held(&self) -> usize {
        self.carry.len()
    }
}

/// Scrubs `data` into `out` and returns how much of it was consumed; the rest must be carried.
///
/// A match that starts before the held-back suffix is final: a match preferred to it would
/// have to start no later and run past the data, so the data from its start would be a proper
/// prefix of a pattern, i.e. inside the held-back suffix. Nor can a match of the whole stream
/// start between the last final match and the held-back suffix, so the next search may begin
/// at the suffix: the stream's matches are the whole value's matches.
fn scrub_into(
    inner: &PatternsInner,
    data: &[u8],
    last: bool,
    out: &mut Vec<u8>,
    count: &mut usize,
) -> usize {
    let Some(matcher) = &inner.matcher else {
        out.extend_from_slice(data);
        return data.len();
    };
    let held_from = if last {
        data.len()
    } else {
        data.len() - inner.trie.held_len(data)
    };
    let mut pos = 0;
    matcher.for_each(data, |m| {
        if m.start >= held_from {
            return false;
        }
        out.extend_from_slice(&data[pos..m.start]);
        out.extend_from_slice(&inner.replacement[m.pattern]);
        *count += 1;
        pos = m.end;
        true
    });
    let keep = pos.max(held_from);
    out.extend_from_slice(&data[pos..keep]);
    keep
}

/// Leftmost-longest, non-overlapping multi-pattern search.
///
/// Teddy (aho-corasick's SIMD packed searcher) when the CPU has it: it runs at several GB/s on
/// any data, where the automaton's byte prefilters degrade on base64-like bodies because the
/// patterns' "rare" bytes are common there. Teddy takes at most 64 patterns, so larger sets are
/// split into groups whose leftmost-longest matches are merged (earliest start, then longest),
/// which is the leftmost-longest match of the union. Without SIMD, the automaton.
#[derive(Debug)]
enum Matcher {
    Packed(Vec<packed::Searcher>),
    Automaton(AhoCorasick),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hit {
    start: usize,
    end: usize,
    pattern: usize,
}

/// Patterns per Teddy searcher: its limit.
const GROUP: usize = 64;

impl Matcher {
    fn new(patterns: &[Vec<u8>]) -> Result<Matcher, ScrubError> {
        let groups: Option<Vec<packed::Searcher>> = patterns
            .chunks(GROUP)
            .map(|group| {
                packed::Config::new()
                    .match_kind(packed::MatchKind::LeftmostLongest)
                    .builder()
                    .extend(group)
                    .build()
            })
            .collect();
        match groups {
            Some(groups) => Ok(Matcher::Packed(groups)),
            None => Matcher::automaton(patterns),
        }
    }

    fn automaton(patterns: &[Vec<u8>]) -> Result<Matcher, ScrubError> {
        AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(patterns)
            .map(Matcher::Automaton)
            .map_err(ScrubError::Automaton)
    }

    fn first(&self, data: &[u8]) -> Option<Hit> {
        let mut first = None;
        self.for_each(data, |m| {
            first = Some(m);
            false
        });
        first
    }

    /// Calls `f` with each match in order until it returns false.
    fn for_each(&self, data: &[u8], mut f: impl FnMut(Hit) -> bool) {
        match self {
            Matcher::Automaton(ac) => {
                for m in ac.find_iter(data) {
                    let hit = Hit {
                        start: m.start(),
                        end: m.end(),
                        pattern: m.pattern().as_usize(),
                    };
                    if !f(hit) {
                        return;
                    }
                }
            }
            Matcher::Packed(groups) => {
                let find = |g: usize, from: usize| {
                    groups[g]
                        .find_in(
                            data,
                            Span {
                                start: from,
                                end: data.len(),
                            },
                        )
                        .map(|m| Hit {
                            start: m.start(),
                            end: m.end(),
                            pattern: g * GROUP + m.pattern().as_usize(),
                        })
                };
                let mut next: Vec<Option<Hit>> = (0..groups.len()).map(|g| find(g, 0)).collect();
                let mut pos = 0;
                loop {
                    let mut best: Option<Hit> = None;
                    for (g, slot) in next.iter_mut().enumerate() {
                        if slot.is_some_and(|m| m.start < pos) {
                            *slot = find(g, pos);
                        }
                        if let Some(m) = *slot {
                            if best.is_none_or(|b| {
                                (m.start, std::cmp::Reverse(m.end))
                                    < (b.start, std::cmp::Reverse(b.end))
                            }) {
                                best = Some(m);
                            }
                        }
                    }
                    let Some(m) = best else { return };
                    if !f(m) {
                        return;
                    }
                    // Patterns are never empty, so this always advances.
                    pos = m.end;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine;

    use super::*;

    const PH: &str = "agent-vault-00000000-0000-0000-0000-000000000001";
    const SECRET: &[u8] = b"sk-live-4f9a/b+c d\"e\\f";

    fn patterns(rendered: Vec<Secret>) -> ScrubPatterns {
        ScrubPatterns::new(vec![ScrubEntry {
            secret: Secret::new(SECRET.to_vec()),
            placeholder: PH.into(),
            rendered,
        }])
        .unwrap()
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        memchr::memmem::find(hay, needle).is_some()
    }

    #[test]
    fn raw_json_and_percent_forms_become_the_placeholder() {
        let p = patterns(vec![]);
        let json = serde_json::to_string(std::str::from_utf8(SECRET).unwrap()).unwrap();
        let input = [
            &b"raw="[..],
            SECRET,
            b"&json=",
            json.as_bytes(),
            b"&pct=sk-live-4f9a%2Fb%2Bc%20d%22e%5Cf&form=sk-live-4f9a%2fb%2bc+d%22e%5cf.",
        ]
        .concat();
        let (out, n) = p.scrub(&input);
        assert_eq!(n, 4);
        let expected = format!("raw={PH}&json=\"{PH}\"&pct={PH}&form={PH}.");
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn base64_and_hex_forms_become_the_marker() {
        let p = patterns(vec![]);
        for prefix in ["", "a", "ab"] {
            let stream = [prefix.as_bytes(), SECRET, b"tail"].concat();
            for enc in [STANDARD.encode(&stream), URL_SAFE_NO_PAD.encode(&stream)] {
                let (out, n) = p.scrub(enc.as_bytes());
                assert_eq!(n, 1, "{prefix:?}");
                assert!(contains(&out, MARKER));
            }
        }
        let (out, n) = p.scrub(format!("h={}", hex::encode_upper(SECRET)).as_bytes());
        assert_eq!((out, n), ([&b"h="[..], MARKER].concat(), 1));
    }

    #[test]
    fn rendered_values_keep_their_frame() {
        let bearer = [&b"Bearer "[..], SECRET].concat();
        let basic = format!(
            "Basic {}",
            STANDARD.encode([&b"user:"[..], SECRET].concat())
        );
        let p = patterns(vec![
            Secret::new(bearer.clone()),
            Secret::new(basic.as_bytes()),
        ]);
        let (out, n) = p.scrub(&[&b"auth: "[..], &bearer, b"\n", basic.as_bytes()].concat());
        assert_eq!(n, 2);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("auth: Bearer {PH}\n{PH}")
        );
        assert_eq!(swap(b"xSy", b"S", b"P"), b"xPy");
        assert_eq!(swap(b"none", b"S", b"P"), b"P");
    }

    #[test]
    fn refuses_short_secrets_and_unsafe_replacements() {
        let e = ScrubPatterns::new(vec![ScrubEntry {
            secret: Secret::new(b"abc".to_vec()),
            placeholder: PH.into(),
            rendered: vec![],
        }])
        .unwrap_err();
        assert!(matches!(e, ScrubError::SecretTooShort { entry: 0, min: 8 }));
        let e = ScrubPatterns::new(vec![ScrubEntry {
            secret: Secret::new(b"0000-0000-0000".to_vec()),
            placeholder: PH.into(),
            rendered: vec![],
        }])
        .unwrap_err();
        assert!(matches!(
            e,
            ScrubError::ReplacementContainsSecret { entry: Some(0) }
        ));
        assert!(!format!("{e}").contains("0000-0000"));
    }

    #[test]
    fn a_pattern_can_only_reappear_across_a_replacement_edge() {
        // The documented limit: input that already holds all of the secret but its first byte,
        // right after the secret, and a placeholder that ends in that byte.
        let secret = b"1abcdefghij";
        let p = ScrubPatterns::new(vec![ScrubEntry {
            secret: Secret::new(secret.to_vec()),
            placeholder: PH.into(),
            rendered: vec![],
        }])
        .unwrap();
        let (out, spans) = p.scrub_with_spans(&[&secret[..], &secret[1..]].concat());
        let at = memchr::memmem::find(&out, secret).unwrap();
        assert_eq!(spans, vec![0..PH.len()]);
        assert!(at < spans[0].end && at + secret.len() > spans[0].end);
    }

    #[test]
    fn packed_groups_agree_with_the_automaton() {
        // 200 patterns (so several Teddy groups) with shared prefixes and overlaps.
        let patterns: Vec<Vec<u8>> = (0..200u32)
            .map(|i| format!("k{}{}", i % 13, "x".repeat((i % 7) as usize + 2)).into_bytes())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let packed = Matcher::new(&patterns).unwrap();
        let ac = Matcher::automaton(&patterns).unwrap();
        let hay =
            b"k1xxxxxxxxk12xxk3xk11xxxxxxxk0xxk7xxxxxxxxxxxxk9xk5xxxxk12xxxxxxxxyk1xx".repeat(7);
        let all = |m: &Matcher| {
            let mut v = Vec::new();
            m.for_each(&hay, |h| {
                v.push(h);
                true
            });
            v
        };
        let expected = all(&ac);
        assert!(expected.len() > 10);
        assert_eq!(all(&packed), expected);
    }

    #[test]
    fn empty_set_is_identity() {
        let p = ScrubPatterns::new(vec![]).unwrap();
        assert_eq!(p.max_pattern_len(), 0);
        assert_eq!(p.scrub(b"anything"), (b"anything".to_vec(), 0));
        let mut s = p.stream();
        assert_eq!(s.push(b"abc"), b"abc");
        assert_eq!(s.finish(), b"");
    }

    #[test]
    fn deduplicates_patterns() {
        // An alphanumeric secret: all textual renderings coincide.
        let p = ScrubPatterns::new(vec![ScrubEntry {
            secret: Secret::new(b"abcdefgh12".to_vec()),
            placeholder: PH.into(),
            rendered: vec![],
        }])
        .unwrap();
        // raw + 2 hex + base64: 3 alignments x {interior, unpadded, padded} x {std, url}
        // less coincidences; every textual form is the raw one.
        assert!(p.pattern_count() <= 1 + 2 + 18, "{}", p.pattern_count());
        let (_, n) = p.scrub(b"abcdefgh12abcdefgh12");
        assert_eq!(n, 2);
    }

    #[test]
    fn sse_event_is_emitted_in_the_same_call() {
        let p = patterns(vec![]);
        let mut s = p.stream();
        let ev = b"data: {\"text\":\"hello\"}\n\n";
        assert_eq!(s.push(ev), ev);
        assert_eq!(s.held(), 0);
        // A tail that could start the secret is held, and only that.
        let out = s.push(b"data: sk-li");
        assert_eq!(out, b"data: ");
        assert_eq!(s.held(), 5);
        let mut out = s.push(&SECRET[5..]);
        out.extend(s.push(b"\n\n"));
        out.extend(s.finish());
        assert_eq!(out, [PH.as_bytes(), b"\n\n"].concat());
        assert_eq!(s.count(), 1);
    }

    #[test]
    fn stream_equals_whole_at_every_split() {
        let p = patterns(vec![Secret::new([&b"Bearer "[..], SECRET].concat())]);
        let text = [
            &b"xx Bearer "[..],
            SECRET,
            b" ",
            STANDARD.encode([b"q", SECRET].concat()).as_bytes(),
            SECRET,
            &SECRET[..10],
        ]
        .concat();
        let whole = p.scrub(&text);
        assert_eq!(whole.1, 3);
        for a in 0..=text.len() {
            for b in a..=text.len() {
                let mut s = p.stream();
                let mut out = s.push(&text[..a]);
                assert!(s.held() < p.max_pattern_len());
                out.extend(s.push(&text[a..b]));
                out.extend(s.push(&text[b..]));
                out.extend(s.finish());
                assert_eq!((out, s.count()), whole, "split {a}/{b}");
            }
        }
    }
}
