//! Invariant checks shared by the fuzz targets (`fuzz/`) and the corpus replay test, so that an
//! input the fuzzer finds becomes a `cargo test` regression by adding it to `fuzz/corpus/`.
//!
//! Every function accepts any bytes and panics only when an invariant of this crate is broken.
//! Not part of the API the proxy uses.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use credproxy_core::Secret;

use crate::token::is_token;
use crate::{
    replace_all, Encoding, Findings, PlaceholderSet, ScrubEntry, ScrubPatterns, StreamReplacer,
    MIN_SECRET_LEN,
};

/// The placeholder the scrub target replaces secrets with.
pub const PLACEHOLDER: &str = "agent-vault-00000000-0000-0000-0000-000000000001";

/// Splits `data` into chunks whose sizes follow from `seed` (0: one chunk).
pub fn chunks(data: &[u8], seed: u8) -> Vec<&[u8]> {
    if seed == 0 || data.is_empty() {
        return vec![data];
    }
    let max = 1 + usize::from(seed % 97);
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = (1 + (state >> 16) as usize % max).min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out
}

/// Layout: `[secret length, chunk seed, rendering, position, secret.., input..]`. The secret,
/// in the chosen rendering, is spliced into the input at the chosen position so that the
/// fuzzer need not guess it. Checks that streaming equals the whole-value scrub, the carry
/// bound, and that the raw secret survives only across the edge of a replacement.
pub fn scrub_stream(data: &[u8]) {
    let [len, seed, rendering, at, rest @ ..] = data else {
        return;
    };
    let secret_len = MIN_SECRET_LEN + usize::from(len % 40);
    if rest.len() < secret_len {
        return;
    }
    let (secret, input) = rest.split_at(secret_len);
    let at = usize::from(*at) % (input.len() + 1);
    let bearer = [&b"Bearer "[..], secret].concat();
    let splice = |middle: &[u8]| [&input[..at], middle, &input[at..]].concat();
    let text = match rendering % 8 {
        0 => input.to_vec(),
        1 => splice(secret),
        2 => splice(hex_lower(secret).as_bytes()),
        3 => STANDARD.encode(splice(secret)).into_bytes(),
        4 => URL_SAFE_NO_PAD.encode(splice(secret)).into_bytes(),
        5 => splice(&bearer),
        6 => splice(&[secret, secret].concat()),
        _ => splice(
            &secret
                .iter()
                .flat_map(|&b| format!("%{b:02X}").into_bytes())
                .collect::<Vec<_>>(),
        ),
    };
    let rendered = if rendering & 0x80 != 0 {
        vec![Secret::new(bearer)]
    } else {
        Vec::new()
    };
    let Ok(patterns) = ScrubPatterns::new(vec![ScrubEntry {
        secret: Secret::new(secret.to_vec()),
        placeholder: PLACEHOLDER.into(),
        rendered,
    }]) else {
        return;
    };

    let (whole, spans) = patterns.scrub_with_spans(&text);
    assert_eq!(patterns.scrub(&text), (whole.clone(), spans.len()));
    let mut stream = patterns.stream();
    let mut out = Vec::with_capacity(whole.len());
    for chunk in chunks(&text, *seed) {
        out.extend(stream.push(chunk));
        assert!(
            stream.held() < patterns.max_pattern_len(),
            "carry over bound"
        );
    }
    out.extend(stream.finish());
    assert!(out == whole, "stream differs from whole");
    assert_eq!(stream.count(), spans.len());

    for found in memchr::memmem::find_iter(&whole, secret) {
        let end = found + secret.len();
        assert!(
            spans.iter().any(|s| s.start < end && found < s.end),
            "secret survived in copied bytes at {found}"
        );
    }
}

/// Layout: `[placeholder count, chunk seed, placeholders separated by '\n'.., input..]`; a
/// placeholder starting with `!` gets the default prefix `agent-vault-` instead. Checks that
/// scanning never panics, that the stream scanner and stream replacer equal their whole-value
/// counterparts, and the shape of findings.
pub fn detect(data: &[u8]) {
    let [n, seed, rest @ ..] = data else {
        return;
    };
    let n = 1 + usize::from(n % 4);
    let mut parts = rest.splitn(n + 1, |&b| b == b'\n');
    let placeholders: Vec<String> = parts
        .by_ref()
        .take(n)
        .map(|p| match p.strip_prefix(b"!") {
            Some(tail) => format!("agent-vault-{}", String::from_utf8_lossy(tail)),
            None => String::from_utf8_lossy(p).into_owned(),
        })
        .collect();
    let input = parts.next().unwrap_or_default();
    let Ok(set) = PlaceholderSet::new(placeholders) else {
        return;
    };

    let whole = set.scan(input);
    let mut scanner = set.stream_scanner();
    let mut streamed = Findings::default();
    for chunk in chunks(input, *seed) {
        streamed.append(scanner.push(chunk));
    }
    streamed.append(scanner.finish());
    assert_eq!(streamed, whole);

    let token_at = |i: u64| {
        usize::try_from(i)
            .ok()
            .and_then(|i| input.get(i))
            .is_some_and(|&b| is_token(b))
    };
    for f in &whole.exact {
        let (s, e) = (f.start as usize, f.end as usize);
        assert_eq!(
            Some(&input[s..e]),
            set.placeholder(f.credential).map(str::as_bytes)
        );
        assert!(s == 0 || !token_at(f.start - 1));
        assert!(!token_at(f.end));
    }
    for m in &whole.near_misses {
        assert!(m.excerpt.chars().count() <= 24);
        assert!(m.start < m.end);
    }

    // Odd credentials have no value, so some placeholders must be left alone.
    let values: Vec<Option<Vec<u8>>> = (0..set.len())
        .map(|i| (i % 2 == 0).then(|| format!("v\"{i}/ \\").into_bytes()))
        .collect();
    let enc = match seed % 3 {
        0 => Encoding::Raw,
        1 => Encoding::JsonString,
        _ => Encoding::Percent,
    };
    let borrowed: Vec<Option<&[u8]>> = values.iter().map(Option::as_deref).collect();
    let (replaced, count) = replace_all(&set, input, &borrowed, enc);
    let expected = whole.exact.iter().filter(|f| f.credential % 2 == 0).count();
    assert_eq!(count, expected);
    let mut replacer = StreamReplacer::new(
        set.clone(),
        values.into_iter().map(|v| v.map(Secret::new)).collect(),
        enc,
    );
    let mut out = Vec::new();
    for chunk in chunks(input, seed.wrapping_add(1)) {
        out.extend(replacer.push(chunk));
        assert!(replacer.held() <= set.max_len());
    }
    out.extend(replacer.finish());
    assert!(out == replaced, "stream replacer differs from replace_all");
    assert_eq!(replacer.count(), count);
}

fn hex_lower(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_covers_the_input() {
        let data = [7u8; 300];
        for seed in 0..=255u8 {
            let c = chunks(&data, seed);
            assert_eq!(c.concat(), data);
            assert!(c.iter().all(|c| !c.is_empty()));
        }
    }

    #[test]
    fn harness_runs_on_simple_inputs() {
        let mut d = vec![0, 3, 1, 2];
        d.extend_from_slice(b"sk-live-abcdefgh-rest of the input");
        for r in 0..=255u8 {
            d[2] = r;
            scrub_stream(&d);
        }
        detect(b"\x01\x05!00000000-0000-0000-0000-000000000001\nvendor-ph\nx agent-vault-00000000-0000-0000-0000-000000000001 AGENT-VAULT-1 vendor-ph");
    }
}
