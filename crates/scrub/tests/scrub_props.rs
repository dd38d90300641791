//! Property tests of the response scrubber: random bodies carrying secrets in every rendering,
//! re-chunked at random (A2, A3).
//!
//! The renderings are produced here independently of the crate (serde_json, the base64 and hex
//! crates, a hand-written percent encoder), and survival is checked twice: by searching the
//! output for each rendering, and by decoding every base64 and hex run of the output and
//! searching the decoded bytes for the secret.
// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

use std::ops::Range;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use credproxy_core::Secret;
use credproxy_scrub::{ScrubEntry, ScrubPatterns};
use proptest::prelude::*;

const PLACEHOLDERS: [&str; 2] = [
    "agent-vault-00000000-0000-0000-0000-000000000001",
    "sk-ant-placeholder-0002",
];

#[derive(Clone, Copy, Debug)]
enum Rendering {
    Raw,
    Json,
    JsonAscii,
    JsonSlash,
    PercentUpper,
    PercentLower,
    Form,
    HexLower,
    HexUpper,
    /// Standard or URL-safe; padded or not; the secret preceded by `prefix` bytes and followed
    /// by `suffix` bytes inside the base64-encoded stream.
    Base64 {
        url: bool,
        pad: bool,
        prefix: usize,
        suffix: usize,
    },
}

fn secret_strategy() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        6 => proptest::char::range('a', 'z'),
        3 => proptest::char::range('0', '9'),
        2 => proptest::char::range('A', 'Z'),
        3 => proptest::sample::select(vec![
            '"', '\\', '/', ' ', '+', '%', '&', '=', '<', '>', '~', '*', '\'', '(', '!', ':', '_',
            '.', '-', '\n', '\t', '\u{1}', '\u{e9}', '\u{4e2d}', '\u{1f600}', '\u{2028}',
        ]),
    ];
    proptest::collection::vec(ch, 8..40).prop_map(|v| v.into_iter().collect())
}

fn rendering_strategy() -> impl Strategy<Value = Rendering> {
    prop_oneof![
        Just(Rendering::Raw),
        Just(Rendering::Json),
        Just(Rendering::JsonAscii),
        Just(Rendering::JsonSlash),
        Just(Rendering::PercentUpper),
        Just(Rendering::PercentLower),
        Just(Rendering::Form),
        Just(Rendering::HexLower),
        Just(Rendering::HexUpper),
        (any::<bool>(), any::<bool>(), 0usize..7, 0usize..5).prop_map(
            |(url, pad, prefix, suffix)| {
                Rendering::Base64 {
                    url,
                    pad,
                    prefix,
                    suffix,
                }
            }
        ),
    ]
}

fn json_ascii(s: &str, slash: bool) -> Vec<u8> {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' if slash => out.push_str("\\/"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || !c.is_ascii() => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.into_bytes()
}

fn percent(v: &[u8], upper: bool, form: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in v {
        let keep = if form {
            b"*-._".contains(&b)
        } else {
            b"-._~".contains(&b)
        };
        if b.is_ascii_alphanumeric() || keep {
            out.push(b);
        } else if form && b == b' ' {
            out.push(b'+');
        } else if upper {
            out.extend(format!("%{b:02X}").bytes());
        } else {
            out.extend(format!("%{b:02x}").bytes());
        }
    }
    out
}

/// The rendered bytes to splice into the body.
fn render(secret: &str, r: Rendering, noise: &[u8]) -> Vec<u8> {
    let s = secret.as_bytes();
    match r {
        Rendering::Raw => s.to_vec(),
        Rendering::Json => {
            let j = serde_json::to_string(secret).unwrap();
            j.as_bytes()[1..j.len() - 1].to_vec()
        }
        Rendering::JsonAscii => json_ascii(secret, false),
        Rendering::JsonSlash => json_ascii(secret, true),
        Rendering::PercentUpper => percent(s, true, false),
        Rendering::PercentLower => percent(s, false, false),
        Rendering::Form => percent(s, true, true),
        Rendering::HexLower => hex::encode(s).into_bytes(),
        Rendering::HexUpper => hex::encode_upper(s).into_bytes(),
        Rendering::Base64 {
            url,
            pad,
            prefix,
            suffix,
        } => {
            let pick = |n: usize, from: usize| -> Vec<u8> {
                (0..n)
                    .map(|i| noise.get(from + i).copied().unwrap_or(i as u8))
                    .collect()
            };
            let stream = [pick(prefix, 0), s.to_vec(), pick(suffix, prefix)].concat();
            let engine = match (url, pad) {
                (false, true) => &STANDARD,
                (false, false) => &STANDARD_NO_PAD,
                (true, true) => &URL_SAFE,
                (true, false) => &URL_SAFE_NO_PAD,
            };
            engine.encode(stream).into_bytes()
        }
    }
}

fn is_textual(r: Rendering) -> bool {
    !matches!(r, Rendering::Base64 { .. })
}

fn overlaps_span(spans: &[Range<usize>], at: usize, len: usize) -> bool {
    spans.iter().any(|s| s.start < at + len && at < s.end)
}

fn b64_value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    }
}

/// Decodes every run of base64 characters of `out`, at each of the four character offsets.
fn decoded_base64_runs(out: &[u8]) -> Vec<Vec<u8>> {
    let mut decoded = Vec::new();
    for run in out.split(|&c| b64_value(c).is_none()) {
        for offset in 0..4.min(run.len()) {
            let mut bytes = Vec::new();
            for quad in run[offset..].chunks_exact(4) {
                let v: Vec<u32> = quad
                    .iter()
                    .map(|&c| u32::from(b64_value(c).unwrap()))
                    .collect();
                let n = (v[0] << 18) | (v[1] << 12) | (v[2] << 6) | v[3];
                bytes.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
            }
            decoded.push(bytes);
        }
    }
    decoded
}

/// Decodes every run of hex digits of `out`, at both parities.
fn decoded_hex_runs(out: &[u8]) -> Vec<Vec<u8>> {
    let mut decoded = Vec::new();
    for run in out.split(|c| !c.is_ascii_hexdigit()) {
        for offset in 0..2.min(run.len()) {
            let even = &run[offset..run.len() - (run.len() - offset) % 2];
            decoded.push(hex::decode(even).unwrap());
        }
    }
    decoded
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr_find(hay, needle).is_some()
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn stream_equals_whole_and_no_rendering_survives(
        secrets in proptest::collection::vec(secret_strategy(), 1..3),
        pieces in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..40), 0usize..2, rendering_strategy()),
            0..6,
        ),
        tail in proptest::collection::vec(any::<u8>(), 0..40),
        chunk_sizes in proptest::collection::vec(1usize..80, 1..20),
    ) {
        let entries: Vec<ScrubEntry> = secrets
            .iter()
            .zip(PLACEHOLDERS)
            .map(|(s, p)| ScrubEntry {
                secret: Secret::new(s.as_bytes().to_vec()),
                placeholder: p.into(),
                rendered: vec![Secret::new(format!("Bearer {s}").into_bytes())],
            })
            .collect();
        let patterns = ScrubPatterns::new(entries).unwrap();

        let mut input = Vec::new();
        let mut embedded = Vec::new();
        for (noise, which, r) in &pieces {
            let secret = &secrets[which % secrets.len()];
            input.extend_from_slice(noise);
            let rendered = render(secret, *r, noise);
            input.extend_from_slice(&rendered);
            embedded.push((secret.clone(), *r, rendered));
        }
        input.extend_from_slice(&tail);

        // Whole vs stream, for an arbitrary chunking.
        let (whole, spans) = patterns.scrub_with_spans(&input);
        prop_assert_eq!(patterns.scrub(&input), (whole.clone(), spans.len()));
        let mut stream = patterns.stream();
        let mut out = Vec::new();
        let mut rest = &input[..];
        let mut sizes = chunk_sizes.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap()).min(rest.len());
            out.extend(stream.push(&rest[..n]));
            prop_assert!(stream.held() < patterns.max_pattern_len());
            rest = &rest[n..];
        }
        out.extend(stream.finish());
        prop_assert!(out == whole, "stream output differs from whole");
        prop_assert_eq!(stream.count(), spans.len());
        prop_assert!(spans.len() >= embedded.len());

        // Direct search: no textual or hex rendering of any secret in copied bytes.
        for s in &secrets {
            for r in [
                Rendering::Raw, Rendering::Json, Rendering::JsonAscii, Rendering::JsonSlash,
                Rendering::PercentUpper, Rendering::PercentLower, Rendering::Form,
                Rendering::HexLower, Rendering::HexUpper,
            ] {
                let needle = render(s, r, &[]);
                for at in find_all(&whole, &needle) {
                    prop_assert!(
                        overlaps_span(&spans, at, needle.len()),
                        "{:?} rendering survived at {}", r, at
                    );
                }
            }
        }
        for (_, r, rendered) in &embedded {
            if is_textual(*r) {
                prop_assert!(!contains(&whole, rendered) || find_all(&whole, rendered)
                    .into_iter()
                    .all(|at| overlaps_span(&spans, at, rendered.len())));
            }
        }
        // Re-decoding: no base64 or hex run of the output decodes to something containing a
        // secret, at any alignment.
        let b64 = decoded_base64_runs(&whole);
        let hx = decoded_hex_runs(&whole);
        for s in &secrets {
            for d in b64.iter().chain(&hx) {
                prop_assert!(!contains(d, s.as_bytes()), "a decoded run still holds a secret");
            }
        }
    }

    #[test]
    fn base64_stream_with_secret_anywhere_is_scrubbed(
        secret in secret_strategy(),
        before in proptest::collection::vec(any::<u8>(), 0..50),
        after in proptest::collection::vec(any::<u8>(), 0..50),
        url in any::<bool>(),
        split in 0usize..200,
    ) {
        let patterns = ScrubPatterns::new(vec![ScrubEntry {
            secret: Secret::new(secret.as_bytes().to_vec()),
            placeholder: PLACEHOLDERS[0].into(),
            rendered: vec![],
        }]).unwrap();
        let stream = [&before[..], secret.as_bytes(), &after[..]].concat();
        let encoded = if url { URL_SAFE_NO_PAD.encode(&stream) } else { STANDARD.encode(&stream) };
        let (whole, n) = patterns.scrub(encoded.as_bytes());
        prop_assert!(n >= 1);
        for d in decoded_base64_runs(&whole) {
            prop_assert!(!contains(&d, secret.as_bytes()));
        }
        let split = split.min(encoded.len());
        let mut s = patterns.stream();
        let mut out = s.push(&encoded.as_bytes()[..split]);
        out.extend(s.push(&encoded.as_bytes()[split..]));
        out.extend(s.finish());
        prop_assert!(out == whole);
    }
}

#[test]
fn decoders_find_what_they_should() {
    let secret = b"sk-live-abcdefgh";
    let enc = STANDARD.encode([&b"xy"[..], secret].concat());
    assert!(decoded_base64_runs(enc.as_bytes())
        .iter()
        .any(|d| contains(d, secret)));
    let enc = hex::encode([&b"x"[..], secret].concat());
    assert!(decoded_hex_runs(format!("z{enc}z").as_bytes())
        .iter()
        .any(|d| contains(d, secret)));
}
