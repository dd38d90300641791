//! Invariant checks shared by the fuzz targets (`fuzz/`) and the corpus replay test, so that an
//! input the fuzzer finds becomes a `cargo test` regression by adding it to `fuzz/corpus/`.
//!
//! Every function accepts any bytes and panics only when an invariant of this crate is broken.
//! Not part of the API the proxy uses.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use credproxy_core::Secret;

use crate::decode::{DecodeLimit, Decoder};
use crate::token::is_token;
use crate::{
    replace_all, Encoding, EventStreamScrubber, Findings, PlaceholderSet, ScrubEntry,
    ScrubPatterns, StreamFormat, StreamReplacer, MIN_SECRET_LEN,
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

/// The secret of the event-stream target: upper-case letters only, so that no replacement
/// (placeholder or marker: lower case, digits, `-`) can ever form part of it, and any
/// occurrence in a client's view is a real leak.
pub const EVENT_SECRET: &[u8] = b"QWERTYUIOPASDFGH";

/// The data of each SSE event in `body` (any line ending), per the specification.
fn sse_datas(body: &[u8]) -> Vec<Vec<u8>> {
    let mut events = Vec::new();
    let mut data: Option<Vec<u8>> = None;
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\n' => {
                lines.push(&body[start..i]);
                i += 1;
                start = i;
            }
            b'\r' => {
                lines.push(&body[start..i]);
                i += if body.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < body.len() {
        lines.push(&body[start..]);
    }
    lines.push(b"");
    for line in lines {
        if line.is_empty() {
            if let Some(d) = data.take() {
                events.push(d);
            }
            continue;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        if name == b"data" {
            match data.as_mut() {
                Some(d) => {
                    d.push(b'\n');
                    d.extend_from_slice(value);
                }
                None => data = Some(value.to_vec()),
            }
        }
    }
    events
}

/// Runs `input` through the event stage and the byte scrubber as the proxy does, in chunks.
fn event_pipeline(
    format: StreamFormat,
    patterns: &ScrubPatterns,
    input: &[u8],
    seed: u8,
) -> Vec<u8> {
    let mut events = EventStreamScrubber::new(format, patterns.clone());
    let mut bytes = patterns.stream();
    let mut out = Vec::new();
    for chunk in chunks(input, seed) {
        let Ok(o) = events.push(chunk) else {
            return out;
        };
        out.extend(bytes.push(&o));
    }
    let rest = events.finish();
    out.extend(bytes.push(&rest));
    out.extend(bytes.finish());
    out
}

/// Layout: `[chunk seed, format, cut mask, input..]`. Every `0x01` byte of the input is
/// replaced by the next piece of [`EVENT_SECRET`], cut at the positions set in the mask (bit
/// `k`: a cut after byte `k + 1`), so that the fuzzer can put pieces of the secret anywhere
/// in an event stream (plain events, JSON strings, NDJSON lines) without guessing it. Checks
/// that the output does not depend on the chunking and that no channel's concatenated value
/// in the output (what a client assembles) holds the secret.
pub fn events(data: &[u8]) {
    let [seed, format, mask, input @ ..] = data else {
        return;
    };
    let format = if format & 1 == 0 {
        StreamFormat::Sse
    } else {
        StreamFormat::Ndjson
    };
    let mut cuts: Vec<usize> = (0..8)
        .filter(|k| mask & (1 << k) != 0)
        .map(|k| k + 1)
        .collect();
    cuts.push(EVENT_SECRET.len());
    let mut pieces = Vec::new();
    let mut at = 0;
    for c in cuts {
        pieces.push(&EVENT_SECRET[at..c]);
        at = c;
    }
    let mut next = pieces.iter().cycle();
    let mut text = Vec::with_capacity(input.len() + EVENT_SECRET.len());
    for &b in input {
        match (b, next.next()) {
            (1, Some(p)) => text.extend_from_slice(p),
            _ => text.push(b),
        }
    }
    let Ok(patterns) = ScrubPatterns::new(vec![ScrubEntry {
        secret: Secret::new(EVENT_SECRET.to_vec()),
        placeholder: PLACEHOLDER.into(),
        rendered: vec![],
    }]) else {
        return;
    };
    let whole = event_pipeline(format, &patterns, &text, 0);
    let chunked = event_pipeline(format, &patterns, &text, *seed);
    assert!(whole == chunked, "the output depends on the chunking");
    let (datas, key) = match format {
        StreamFormat::Sse => (sse_datas(&whole), "sse:text"),
        StreamFormat::Ndjson => (
            whole
                .split(|&b| b == b'\n')
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                .map(<[u8]>::to_vec)
                .collect(),
            "ndjson:text",
        ),
    };
    for (channel, view) in crate::events::client_views(&datas, key) {
        assert!(
            memchr::memmem::find(&view, EVENT_SECRET).is_none(),
            "the secret is whole in channel {channel}"
        );
    }
}

/// Layout: `[coding, chunk seed, input..]`. The input compressed with the coding decodes back
/// to itself in any chunking; the input itself, decoded as if compressed, never panics and
/// never yields more than the limit allows for what was pushed.
pub fn decode(data: &[u8]) {
    use std::io::Write;
    let [coding, seed, input @ ..] = data else {
        return;
    };
    let name = ["gzip", "deflate", "br", "zstd"][usize::from(coding % 4)];
    let compressed = match name {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = e.write_all(input);
            e.finish().unwrap_or_default()
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = e.write_all(input);
            e.finish().unwrap_or_default()
        }
        "br" => {
            let mut out = Vec::new();
            {
                let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                let _ = w.write_all(input);
            }
            out
        }
        _ => zstd::encode_all(input, 1).unwrap_or_default(),
    };
    let limit = DecodeLimit::DEFAULT;
    let mut d = Decoder::new(name, limit).expect("a supported coding");
    let mut out = Vec::new();
    for c in chunks(&compressed, *seed) {
        out.extend(d.push(c).expect("a compressed body decodes"));
    }
    out.extend(d.finish().expect("a complete body finishes"));
    assert!(out == input, "{name} does not round-trip");

    let small = DecodeLimit {
        floor: 4096,
        ratio: 4,
    };
    let mut d = Decoder::new(name, small).expect("a supported coding");
    let mut total = 0u64;
    for c in chunks(input, *seed) {
        match d.push(c) {
            Ok(o) => total += o.len() as u64,
            Err(_) => return,
        }
        assert!(
            total <= small.allowed(d.input()),
            "{name} decoded past its limit"
        );
    }
    if let Ok(o) = d.finish() {
        total += o.len() as u64;
        assert!(
            total <= small.allowed(d.input()),
            "{name} decoded past its limit"
        );
    }
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
        for mask in [0u8, 1, 0b100, 0xff] {
            events(&[&[3, 0, mask][..], b"data: \x01\n\ndata: \x01\r\rdata: {\"a\":\"\x01\"}\n\n: c\n\ndata: {\"a\":\"\x01\"}\n\n"].concat());
            events(
                &[
                    &[5, 1, mask][..],
                    b"{\"response\":\"\x01\"}\n{\"response\":\"\x01\"}\nx\x01\n\x01\n",
                ]
                .concat(),
            );
        }
        for coding in 0..4u8 {
            decode(&[&[coding, 3][..], b"hello hello hello hello, and some more"].concat());
            decode(&[coding, 0]);
        }
    }
}
