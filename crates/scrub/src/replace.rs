//! Swapping placeholders for secrets in requests.
//!
//! Only exact findings are replaced: a token equal to a configured placeholder. A padded or
//! otherwise near-miss placeholder is left alone (A32: never substituted), so what is replaced is
//! exactly what [`PlaceholderSet::scan`] reports in `exact`.

use credproxy_core::Secret;

use crate::token::{is_token, run_end, runs};
use crate::PlaceholderSet;

/// How a replacement value must be encoded where it lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// As is: header values (the proxy refuses secrets with CR/LF there itself, A19).
    Raw,
    /// Inside a JSON string literal, escaped as serde_json does: `"`, `\` and control
    /// characters. Bytes that are not valid UTF-8 are written as `\u00XX` (their Latin-1
    /// reading), since raw they would make the document invalid.
    JsonString,
    /// RFC 3986 unreserved characters kept, everything else `%XX`: for query components and
    /// `application/x-www-form-urlencoded` bodies (where `%20` for space is also valid).
    Percent,
}

/// Replace every exact placeholder occurrence in a complete value. `values[i]` is the secret
/// for credential i (None, or a missing entry, leaves that placeholder alone). Returns the new
/// bytes and the number of replacements. Bytes that are not placeholders are copied unchanged
/// (no re-encoding, no reordering).
pub fn replace_all(
    set: &PlaceholderSet,
    input: &[u8],
    values: &[Option<&[u8]>],
    enc: Encoding,
) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(input.len() + 64);
    let mut count = 0;
    for (start, end, token) in runs(input) {
        let run = &input[start..end];
        match token.then(|| value_for(set, run, values)).flatten() {
            Some(value) => {
                encode_into(value, enc, &mut out);
                count += 1;
            }
            None => out.extend_from_slice(run),
        }
    }
    (out, count)
}

fn value_for<'v>(
    set: &PlaceholderSet,
    token: &[u8],
    values: &[Option<&'v [u8]>],
) -> Option<&'v [u8]> {
    if token.len() > set.max_len() {
        return None;
    }
    values.get(set.lookup(token)?).copied().flatten()
}

/// Streaming [`replace_all`] for bodies. The concatenation of every `push` and `finish` equals
/// `replace_all` of the concatenated input, for every chunking.
///
/// It holds back at most one token of at most `set.max_len()` bytes (the only thing that could
/// still turn out to be a placeholder); a longer token is released as it arrives.
#[derive(Debug)]
pub struct StreamReplacer {
    set: PlaceholderSet,
    values: Vec<Option<Secret>>,
    enc: Encoding,
    /// The current token, while it is short enough to be a placeholder.
    pending: Vec<u8>,
    /// The current token is already longer than any placeholder and has been released.
    long: bool,
    count: usize,
}

impl StreamReplacer {
    /// `values[i]` is the secret for credential i of `set` (None leaves it alone).
    pub fn new(set: PlaceholderSet, values: Vec<Option<Secret>>, enc: Encoding) -> StreamReplacer {
        let cap = set.max_len();
        StreamReplacer {
            set,
            values,
            enc,
            pending: Vec::with_capacity(cap),
            long: false,
            count: 0,
        }
    }

    /// Returns the bytes that are safe to emit now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len() + self.pending.len());
        let mut i = 0;
        while i < chunk.len() {
            let token = is_token(chunk[i]);
            let j = run_end(chunk, i, token);
            let run = &chunk[i..j];
            if !token {
                self.end_token(&mut out);
                out.extend_from_slice(run);
            } else if self.long {
                out.extend_from_slice(run);
            } else if self.pending.len() + run.len() > self.set.max_len() {
                out.append(&mut self.pending);
                out.extend_from_slice(run);
                self.long = true;
            } else {
                self.pending.extend_from_slice(run);
            }
            i = j;
        }
        out
    }

    /// Ends the body: releases the held-back token, replaced if it is a placeholder.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.end_token(&mut out);
        out
    }

    /// Number of placeholders replaced so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Bytes currently held back (at most `max_len` of the set).
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    fn end_token(&mut self, out: &mut Vec<u8>) {
        let value = if self.long || self.pending.is_empty() {
            None
        } else {
            self.set
                .lookup(&self.pending)
                .and_then(|i| self.values.get(i))
                .and_then(Option::as_ref)
        };
        match value {
            Some(secret) => {
                encode_into(secret.expose(), self.enc, out);
                self.count += 1;
            }
            None => out.extend_from_slice(&self.pending),
        }
        self.pending.clear();
        self.long = false;
    }
}

/// Appends `value` encoded for where it lands.
pub(crate) fn encode_into(value: &[u8], enc: Encoding, out: &mut Vec<u8>) {
    match enc {
        Encoding::Raw => out.extend_from_slice(value),
        Encoding::JsonString => json_escape_into(value, out),
        Encoding::Percent => {
            for &b in value {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                    out.push(b);
                } else {
                    push_pct(b, out);
                }
            }
        }
    }
}

fn push_pct(b: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
}

/// serde_json's escaping of a string's contents; invalid UTF-8 bytes as `\u00XX`.
fn json_escape_into(value: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for chunk in value.utf8_chunks() {
        for &b in chunk.valid().as_bytes() {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                0..=0x1f => out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 15)],
                ]),
                _ => out.push(b),
            }
        }
        for &b in chunk.invalid() {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PH: &str = "agent-vault-00000000-0000-0000-0000-000000000001";
    const PH2: &str = "sk-ant-placeholder-0002";

    fn set() -> PlaceholderSet {
        PlaceholderSet::new(vec![PH.into(), PH2.into()]).unwrap()
    }

    #[test]
    fn query_is_byte_identical_apart_from_the_placeholder() {
        let q = format!("a=1&key={PH}&b=%2F&c=x+y");
        let (out, n) = replace_all(
            &set(),
            q.as_bytes(),
            &[Some(b"s3cr3t/+ =")],
            Encoding::Percent,
        );
        assert_eq!(n, 1);
        assert_eq!(out, b"a=1&key=s3cr3t%2F%2B%20%3D&b=%2F&c=x+y");
    }

    #[test]
    fn json_body_escapes_quote_and_backslash() {
        let body = format!("{{\"api_key\": \"{PH}\", \"other\": \"{PH2}\", \"n\": [1,2]}}");
        let secret = b"ab\"c\\d\n\x01e";
        let (out, n) = replace_all(
            &set(),
            body.as_bytes(),
            &[Some(secret), None],
            Encoding::JsonString,
        );
        assert_eq!(n, 1);
        let expected = format!(
            "{{\"api_key\": \"ab\\\"c\\\\d\\n\\u0001e\", \"other\": \"{PH2}\", \"n\": [1,2]}}"
        );
        assert_eq!(String::from_utf8(out.clone()).unwrap(), expected);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["api_key"].as_str().unwrap().as_bytes(), secret);
    }

    #[test]
    fn raw_header_and_padded_placeholders() {
        let h = format!("Bearer {PH}");
        let (out, n) = replace_all(
            &set(),
            h.as_bytes(),
            &[Some(b"sk-real"), None],
            Encoding::Raw,
        );
        assert_eq!((out.as_slice(), n), (&b"Bearer sk-real"[..], 1));
        for padded in [format!("x{PH}"), format!("{PH}_"), PH.to_ascii_uppercase()] {
            let (out, n) = replace_all(
                &set(),
                padded.as_bytes(),
                &[Some(b"sk-real")],
                Encoding::Raw,
            );
            assert_eq!((out, n), (padded.into_bytes(), 0));
        }
        let (out, n) = replace_all(&set(), b"", &[], Encoding::Raw);
        assert_eq!((out.len(), n), (0, 0));
    }

    #[test]
    fn invalid_utf8_in_json_is_escaped() {
        let mut out = Vec::new();
        json_escape_into(b"a\xffb\xc3\xa9", &mut out);
        assert_eq!(out, "a\\u00ffb\u{e9}".as_bytes());
    }

    #[test]
    fn stream_replacer_matches_replace_all_at_every_split() {
        let s = set();
        let text = format!("{{\"k\":\"{PH}\",\"j\":\"{PH2}\",\"x\":\"x{PH}\",\"y\":\"{PH}\"}}");
        let secret = Secret::new(b"val\"ue".to_vec());
        let values = [Some(secret.expose()), Some(&b"two"[..])];
        let (whole, n) = replace_all(&s, text.as_bytes(), &values, Encoding::JsonString);
        assert_eq!(n, 3);
        for a in 0..=text.len() {
            for b in a..=text.len() {
                let mut r = StreamReplacer::new(
                    s.clone(),
                    vec![Some(secret.clone()), Some(Secret::new(b"two".to_vec()))],
                    Encoding::JsonString,
                );
                let mut got = r.push(&text.as_bytes()[..a]);
                assert!(r.held() <= s.max_len());
                got.extend(r.push(&text.as_bytes()[a..b]));
                got.extend(r.push(&text.as_bytes()[b..]));
                got.extend(r.finish());
                assert_eq!(got, whole, "split {a}/{b}");
                assert_eq!(r.count(), 3);
            }
        }
    }
}
