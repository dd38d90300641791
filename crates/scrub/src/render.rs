//! The renderings of a value that an upstream is likely to echo back (A2).
//!
//! Two families:
//! * textual renderings (raw, JSON-escaped, percent-encoded) keep the surrounding text valid
//!   when the same rendering of the placeholder is put in their place;
//! * opaque renderings (base64, hex) encode the surrounding bytes together with the secret, so
//!   no replacement can preserve what surrounds it; they are replaced by [`MARKER`].

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;

/// What an opaque rendering is replaced with. It is plain text, not base64 of anything, so
/// that nobody mistakes a decoded redaction for data, and `ScrubPatterns::new` verifies that
/// it contains no pattern of the secrets it scrubs.
pub const MARKER: &[u8] = b"credproxy-redacted";

/// A textual rendering: the replacement is the same function applied to the placeholder.
pub(crate) type Render = fn(&[u8]) -> Vec<u8>;

/// Every textual rendering. Most coincide for a typical secret (alphanumerics, `-`, `_`) and
/// are deduplicated by the caller.
pub(crate) const TEXTUAL: &[Render] = &[
    raw,
    // JSON, as serde_json, JavaScript and Go write it, then the ASCII-only encoders (Python's
    // json.dumps, PHP), the "\u00XX everything" byte-wise variant, and HTML-safe ones.
    |v| json(v, Json::SERDE),
    |v| {
        json(
            v,
            Json {
                slash: true,
                ..Json::SERDE
            },
        )
    },
    |v| {
        json(
            v,
            Json {
                non_ascii: NonAscii::CodePoint,
                ..Json::SERDE
            },
        )
    },
    |v| {
        json(
            v,
            Json {
                non_ascii: NonAscii::CodePoint,
                slash: true,
                ..Json::SERDE
            },
        )
    },
    |v| {
        json(
            v,
            Json {
                non_ascii: NonAscii::CodePoint,
                upper: true,
                ..Json::SERDE
            },
        )
    },
    |v| {
        json(
            v,
            Json {
                non_ascii: NonAscii::Byte,
                short: false,
                ..Json::SERDE
            },
        )
    },
    |v| {
        json(
            v,
            Json {
                non_ascii: NonAscii::Byte,
                short: false,
                upper: true,
                ..Json::SERDE
            },
        )
    },
    |v| {
        json(
            v,
            Json {
                html: b"<>&",
                ..Json::SERDE
            },
        )
    },
    |v| {
        json(
            v,
            Json {
                html: b"<>&='",
                ..Json::SERDE
            },
        )
    },
    // Every byte as `\u00xx` / `\u00XX`: what an obfuscating or over-eager encoder emits.
    |v| json_every_byte(v, false),
    |v| json_every_byte(v, true),
    // Percent-encoding: RFC 3986 (everything but unreserved), form style (`+` for space,
    // WHATWG and Python's quote_plus), JavaScript's encodeURIComponent, and path style that
    // keeps `/`; each with upper- and lower-case hex digits.
    |v| percent(v, b"-._~", false, true),
    |v| percent(v, b"-._~", false, false),
    |v| percent(v, b"*-._", true, true),
    |v| percent(v, b"*-._", true, false),
    |v| percent(v, b"-._~", true, true),
    |v| percent(v, b"-._~", true, false),
    |v| percent(v, b"-_.!~*'()", false, true),
    |v| percent(v, b"-_.!~*'()", false, false),
    |v| percent(v, b"-._~/", false, true),
    |v| percent(v, b"-._~/", false, false),
];

fn raw(v: &[u8]) -> Vec<u8> {
    v.to_vec()
}

/// Every byte as a `\u00XX` escape, letters and digits included.
fn json_every_byte(v: &[u8], upper: bool) -> Vec<u8> {
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

#[derive(Clone, Copy)]
enum NonAscii {
    /// Written as is (serde_json, JavaScript, Go).
    Raw,
    /// `\uXXXX` per code point, surrogate pairs above U+FFFF; invalid UTF-8 bytes byte-wise.
    CodePoint,
    /// `\u00XX` per byte.
    Byte,
}

#[derive(Clone, Copy)]
struct Json {
    non_ascii: NonAscii,
    /// `\/` for `/` (PHP and some Java encoders).
    slash: bool,
    /// Upper-case hex digits in `\u` escapes.
    upper: bool,
    /// `\b \f \n \r \t` rather than `\u00XX` for those controls.
    short: bool,
    /// Further ASCII characters written as `\u00XX` (Go's and Gson's HTML-safe output).
    html: &'static [u8],
}

impl Json {
    const SERDE: Json = Json {
        non_ascii: NonAscii::Raw,
        slash: false,
        upper: false,
        short: true,
        html: b"",
    };
}

fn json(v: &[u8], o: Json) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() + 8);
    let esc = |out: &mut Vec<u8>, unit: u32| {
        out.extend_from_slice(b"\\u");
        let s = if o.upper {
            format!("{unit:04X}")
        } else {
            format!("{unit:04x}")
        };
        out.extend_from_slice(s.as_bytes());
    };
    for chunk in v.utf8_chunks() {
        for c in chunk.valid().chars() {
            let mut buf = [0u8; 4];
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '/' if o.slash => out.extend_from_slice(b"\\/"),
                '\n' if o.short => out.extend_from_slice(b"\\n"),
                '\r' if o.short => out.extend_from_slice(b"\\r"),
                '\t' if o.short => out.extend_from_slice(b"\\t"),
                '\u{8}' if o.short => out.extend_from_slice(b"\\b"),
                '\u{c}' if o.short => out.extend_from_slice(b"\\f"),
                '\0'..='\u{1f}' => esc(&mut out, u32::from(c)),
                c if c.is_ascii() && o.html.contains(&(c as u8)) => esc(&mut out, u32::from(c)),
                '\u{2028}' | '\u{2029}' if !o.html.is_empty() => esc(&mut out, u32::from(c)),
                c if c.is_ascii() => out.push(c as u8),
                c => match o.non_ascii {
                    NonAscii::Raw => out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
                    NonAscii::CodePoint => {
                        let mut units = [0u16; 2];
                        for &u in c.encode_utf16(&mut units).iter() {
                            esc(&mut out, u32::from(u));
                        }
                    }
                    NonAscii::Byte => {
                        for &b in c.encode_utf8(&mut buf).as_bytes() {
                            esc(&mut out, u32::from(b));
                        }
                    }
                },
            }
        }
        for &b in chunk.invalid() {
            esc(&mut out, u32::from(b));
        }
    }
    out
}

fn percent(v: &[u8], keep: &[u8], plus_for_space: bool, upper: bool) -> Vec<u8> {
    let hex: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut out = Vec::with_capacity(v.len() * 3);
    for &b in v {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(b);
        } else if b == b' ' && plus_for_space {
            out.push(b'+');
        } else {
            out.extend_from_slice(&[b'%', hex[usize::from(b >> 4)], hex[usize::from(b & 15)]]);
        }
    }
    out
}

/// Every opaque rendering of `v`: hex in both cases, and base64 (standard and URL-safe) at the
/// three alignments a value can have inside a larger base64-encoded stream.
///
/// At alignment `k` (the value starts at byte offset `k` mod 3 of the stream) the characters
/// that depend only on the value's bits are those whose 6-bit group lies entirely inside it: we
/// encode `k` zero bytes followed by the value and drop the first `ceil(8k/6)` characters
/// (which mix in the unknown preceding bytes) and, for the "interior" form, the last character
/// if it mixes in unknown following bits. The value at the end of the stream additionally
/// yields the unpadded form (last character with zero fill bits) and the `=`-padded form.
pub(crate) fn opaque(v: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = vec![hex(v, false), hex(v, true)];
    for k in 0..3usize {
        let mut p = vec![0u8; k];
        p.extend_from_slice(v);
        let encoded = STANDARD_NO_PAD.encode(&p).into_bytes();
        let skip = (8 * k).div_ceil(6);
        let whole_chars = 8 * p.len() / 6;
        let interior = encoded[skip..whole_chars].to_vec();
        let unpadded = encoded[skip..].to_vec();
        let mut padded = unpadded.clone();
        padded.resize(padded.len() + (3 - p.len() % 3) % 3, b'=');
        for form in [interior, unpadded, padded] {
            forms.push(url_safe(&form));
            forms.push(form);
        }
    }
    forms
}

fn hex(v: &[u8], upper: bool) -> Vec<u8> {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    v.iter()
        .flat_map(|&b| [digits[usize::from(b >> 4)], digits[usize::from(b & 15)]])
        .collect()
}

fn url_safe(b64: &[u8]) -> Vec<u8> {
    b64.iter()
        .map(|&c| match c {
            b'+' => b'-',
            b'/' => b'_',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    use super::*;

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        memchr::memmem::find(hay, needle).is_some()
    }

    #[test]
    fn every_base64_alignment_is_covered() {
        let secret = b"sk-live-\xff\x00\x01abcdefg";
        let forms = opaque(secret);
        for k in 0..3 {
            for tail in 0..3 {
                let mut stream = b"xyzw".to_vec();
                stream.truncate(k);
                stream.extend_from_slice(secret);
                stream.extend_from_slice(&b"TAIL"[..tail]);
                let std = STANDARD.encode(&stream).into_bytes();
                let url = URL_SAFE_NO_PAD.encode(&stream).into_bytes();
                assert!(
                    forms.iter().any(|f| contains(&std, f)),
                    "std k={k} tail={tail}"
                );
                assert!(
                    forms.iter().any(|f| contains(&url, f)),
                    "url k={k} tail={tail}"
                );
                if tail == 0 {
                    // At the end of the stream the padded form removes every trailing char.
                    assert!(forms
                        .iter()
                        .any(|f| std.ends_with(f) && f.len() >= std.len() - 3));
                }
            }
        }
        assert!(forms.contains(&b"736b2d6c6976652dff000161626364656667".to_vec()));
        assert!(forms.contains(&b"736B2D6C6976652DFF000161626364656667".to_vec()));
    }

    #[test]
    fn json_variants() {
        let v = "a\"/\u{e9}\n<\u{1F600}".as_bytes();
        assert_eq!(
            json(v, Json::SERDE),
            serde_json::to_string("a\"/\u{e9}\n<\u{1F600}")
                .unwrap()
                .trim_matches('"')
                .as_bytes()
        );
        assert_eq!(
            json(
                v,
                Json {
                    non_ascii: NonAscii::CodePoint,
                    slash: true,
                    ..Json::SERDE
                }
            ),
            b"a\\\"\\/\\u00e9\\n<\\ud83d\\ude00"
        );
        assert_eq!(
            json(
                b"\n\xc3\xa9",
                Json {
                    non_ascii: NonAscii::Byte,
                    short: false,
                    upper: true,
                    ..Json::SERDE
                }
            ),
            b"\\u000A\\u00C3\\u00A9"
        );
        assert_eq!(
            json(
                b"<&>",
                Json {
                    html: b"<>&",
                    ..Json::SERDE
                }
            ),
            b"\\u003c\\u0026\\u003e"
        );
    }

    #[test]
    fn percent_variants() {
        assert_eq!(percent(b"a b/~*", b"-._~", false, true), b"a%20b%2F~%2A");
        assert_eq!(percent(b"a b/~*", b"*-._", true, false), b"a+b%2f%7e*");
    }
}
