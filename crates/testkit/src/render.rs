//! Renderings of a secret, as a careless API might reflect it back: what the
//! upstream's `/render` endpoint emits ([`renderings`]) and a detector for
//! every encoded form of a secret in received bytes
//! ([`contains_any_rendering`]).
//!
//! Tests use these to assert that a credential the proxy injected never
//! reaches the agent in any form.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;

/// The values `/render` renders for one request-header value `h`, in order:
///
/// 1. `V` = `h` itself;
/// 2. if `h` starts with `Bearer ` or `Basic ` (scheme case-insensitive), `V2`
///    = the part after the scheme;
/// 3. for `Basic`, `V3` = the base64-decoded `user:password` (if `V2` is
///    valid standard base64, padded or not, and decodes to something
///    non-empty).
pub fn credential_values(h: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![h.to_vec()];
    for scheme in ["Bearer ", "Basic "] {
        let s = scheme.as_bytes();
        if h.len() > s.len() && h[..s.len()].eq_ignore_ascii_case(s) {
            let rest = &h[s.len()..];
            out.push(rest.to_vec());
            if scheme == "Basic " {
                let b = rest.trim_ascii();
                if let Ok(d) = STANDARD.decode(b).or_else(|_| STANDARD_NO_PAD.decode(b)) {
                    if !d.is_empty() {
                        out.push(d);
                    }
                }
            }
        }
    }
    out
}

/// The body lines `/render` emits for one value `v` (each line is followed by
/// `\n` in the body), as `(label, line)` where `line` = `"{label}: {...}"`:
///
/// | label | rendering |
/// |---|---|
/// | `raw` | `v` |
/// | `base64` | standard base64 of `v`, padded |
/// | `base64url` | URL-safe base64 of `v`, unpadded |
/// | `base64_x0`, `base64_x1`, `base64_x2` | standard base64 of `b"x"*k ++ v ++ b"yz"` for `k` = 0, 1, 2 (the secret at every 3-byte alignment, followed by other bytes) |
/// | `hex` / `HEX` | lower / upper hex |
/// | `percent` | every byte outside RFC 3986 unreserved (`A-Za-z0-9-._~`) as `%XX` (upper hex) |
/// | `json` | a quoted JSON string (serde_json escaping: `\"`, `\\`, `\n`…, `\u00xx` for other controls; other bytes verbatim) |
/// | `json_u` | a quoted JSON string with every byte as `\u00xx` (lower hex) |
pub fn renderings(v: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut line = |label: &str, rendered: &[u8]| {
        let mut l = format!("{label}: ").into_bytes();
        l.extend_from_slice(rendered);
        out.push((label.to_string(), l));
    };
    line("raw", v);
    line("base64", STANDARD.encode(v).as_bytes());
    line("base64url", URL_SAFE_NO_PAD.encode(v).as_bytes());
    for k in 0..3 {
        let mut buf = vec![b'x'; k];
        buf.extend_from_slice(v);
        buf.extend_from_slice(b"yz");
        line(&format!("base64_x{k}"), STANDARD.encode(&buf).as_bytes());
    }
    line("hex", hex::encode(v).as_bytes());
    line("HEX", hex::encode_upper(v).as_bytes());
    line("percent", &percent_encode(v, true, false));
    line("json", &quoted(json_escape(v, false)));
    line("json_u", &quoted(json_u_escape(v, false)));
    out
}

/// The whole `/render` body text for `values`: every line of
/// [`renderings`] of each value, `\n`-terminated, values in order.
pub(crate) fn render_body(values: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    for v in values {
        for (_, line) in renderings(v) {
            body.extend_from_slice(&line);
            body.push(b'\n');
        }
    }
    body
}

/// The byte patterns [`contains_any_rendering`] searches for, in search
/// order, as `(label, pattern)`; duplicates (e.g. `percent` of a secret made
/// only of unreserved bytes equals `raw`) and empty patterns are omitted.
///
/// * `raw`
/// * `base64@A` / `base64url@A` for alignment `A` in 0..3: the characters of
///   the standard / URL-safe base64 encoding that depend *only* on the secret
///   when it starts at byte offset ≡ `A` (mod 3) of the encoded data. With
///   `n = secret.len()`, encode `[0; A] ++ secret` and keep characters
///   `ceil(4A/3) .. floor(4(A+n)/3)`: character `i` covers bits
///   `6i..6i+6` and the secret covers bits `8A..8(A+n)`. The dropped leading
///   characters mix in preceding bytes; the dropped trailing 0–1 characters
///   mix in following bytes (or the `=` padding), so the core matches padded
///   and unpadded encodings alike.
/// * `hex`, `HEX`
/// * `percent` (upper hex), `percent_lower`, `form` (upper hex, space as
///   `+`), `percent_all` / `percent_all_lower` (every byte as `%XX`)
/// * `json` (escaped string content, no quotes), `json_slash` (also `\/`)
/// * `json_u` (`\u00xx` per byte), `json_U` (`\u00XX`)
pub fn detection_patterns(secret: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut pats: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |label: String, p: Vec<u8>| {
        if !p.is_empty() && !pats.iter().any(|(_, q)| *q == p) {
            pats.push((label, p));
        }
    };
    add("raw".into(), secret.to_vec());
    let n = secret.len();
    for a in 0..3usize {
        let mut buf = vec![0u8; a];
        buf.extend_from_slice(secret);
        let start = (4 * a).div_ceil(3);
        let end = 4 * (a + n) / 3;
        for (name, engine) in [
            ("base64", &STANDARD_NO_PAD),
            ("base64url", &URL_SAFE_NO_PAD),
        ] {
            let enc = engine.encode(&buf);
            if end > start {
                add(format!("{name}@{a}"), enc.as_bytes()[start..end].to_vec());
            }
        }
    }
    add("hex".into(), hex::encode(secret).into_bytes());
    add("HEX".into(), hex::encode_upper(secret).into_bytes());
    add("percent".into(), percent_encode(secret, true, false));
    add("percent_lower".into(), percent_encode(secret, false, false));
    add("form".into(), percent_encode(secret, true, true));
    add("percent_all".into(), percent_encode_all(secret, true));
    add(
        "percent_all_lower".into(),
        percent_encode_all(secret, false),
    );
    add("json".into(), json_escape(secret, false));
    add("json_slash".into(), json_escape(secret, true));
    add("json_u".into(), json_u_escape(secret, false));
    add("json_U".into(), json_u_escape(secret, true));
    pats
}

/// Search `haystack` for `secret` in any of the forms of
/// [`detection_patterns`] and return the label of the first form found (in
/// that list's order), or `None`. An empty secret is never found.
///
/// Every line of [`renderings`]`(secret)` contains at least one of these
/// forms (the `/render` body lines are detected).
pub fn contains_any_rendering(haystack: &[u8], secret: &[u8]) -> Option<String> {
    if secret.is_empty() {
        return None;
    }
    detection_patterns(secret)
        .into_iter()
        .find(|(_, p)| memchr::memmem::find(haystack, p).is_some())
        .map(|(label, _)| label)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Percent-encode every byte outside RFC 3986 unreserved as `%XX`.
/// `form`: encode space as `+` (application/x-www-form-urlencoded).
pub(crate) fn percent_encode(v: &[u8], upper: bool, form: bool) -> Vec<u8> {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut out = Vec::with_capacity(v.len() * 3);
    for &b in v {
        if is_unreserved(b) {
            out.push(b);
        } else if form && b == b' ' {
            out.push(b'+');
        } else {
            out.extend_from_slice(&[
                b'%',
                digits[usize::from(b >> 4)],
                digits[usize::from(b & 15)],
            ]);
        }
    }
    out
}

/// Every byte as `%XX`.
fn percent_encode_all(v: &[u8], upper: bool) -> Vec<u8> {
    v.iter()
        .flat_map(|b| {
            if upper {
                format!("%{b:02X}")
            } else {
                format!("%{b:02x}")
            }
            .into_bytes()
        })
        .collect()
}

/// JSON string-content escaping as serde_json does it (for UTF-8 input):
/// `"` `\` and control characters escaped, everything else verbatim.
/// `slash`: also escape `/` as `\/` (PHP-style encoders).
pub(crate) fn json_escape(v: &[u8], slash: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() + 2);
    for &b in v {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'/' if slash => out.extend_from_slice(b"\\/"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0..=0x1f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out
}

/// Every byte as `\u00xx` (lower hex) or `\u00XX` (upper).
pub(crate) fn json_u_escape(v: &[u8], upper: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 6);
    for &b in v {
        let s = if upper {
            format!("\\u{b:04X}")
        } else {
            format!("\\u{b:04x}")
        };
        out.extend_from_slice(s.as_bytes());
    }
    out
}

fn quoted(mut s: Vec<u8>) -> Vec<u8> {
    s.insert(0, b'"');
    s.push(b'"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escape_matches_serde_json() {
        let s = "a\"b\\c/d\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f} é€😀";
        let ours = String::from_utf8(quoted(json_escape(s.as_bytes(), false))).unwrap();
        assert_eq!(ours, serde_json::to_string(s).unwrap());
        let u = String::from_utf8(quoted(json_u_escape(b"A\"", false))).unwrap();
        assert_eq!(u, r#""\u0041\u0022""#);
        assert_eq!(serde_json::from_str::<String>(&u).unwrap(), "A\"");
    }

    #[test]
    fn percent_encoding_forms() {
        assert_eq!(
            percent_encode(b"a-Z_9.~ /\xff", true, false),
            b"a-Z_9.~%20%2F%FF"
        );
        assert_eq!(percent_encode(b"a /\xff", false, false), b"a%20%2f%ff");
        assert_eq!(percent_encode(b"a /", true, true), b"a+%2F");
    }

    #[test]
    fn credential_values_schemes() {
        assert_eq!(credential_values(b"sk-1"), vec![b"sk-1".to_vec()]);
        assert_eq!(
            credential_values(b"Bearer tok"),
            vec![b"Bearer tok".to_vec(), b"tok".to_vec()]
        );
        assert_eq!(
            credential_values(b"basic dXNlcjpwdw=="),
            vec![
                b"basic dXNlcjpwdw==".to_vec(),
                b"dXNlcjpwdw==".to_vec(),
                b"user:pw".to_vec()
            ]
        );
        // not base64: no V3
        assert_eq!(credential_values(b"Basic !!").len(), 2);
        // scheme alone: nothing after it
        assert_eq!(credential_values(b"Bearer ").len(), 1);
    }

    #[test]
    fn base64_cores_lengths() {
        // n = 1: alignment 1 has no fully determined character; alignments
        // 0 ("/w==") and 2 ("AAD/") have "/" (deduplicated).
        let p = detection_patterns(&[0xff]);
        assert!(p.iter().any(|(l, v)| l == "base64@0" && v == b"/"));
        assert!(!p.iter().any(|(l, _)| l == "base64@1" || l == "base64@2"));
        // n = 3 at alignment 0: all four characters.
        let p = detection_patterns(b"abc");
        assert!(p.iter().any(|(l, v)| l == "base64@0" && v == b"YWJj"));
    }
}
