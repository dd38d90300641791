//! Getting the token out of a `Proxy-Authorization` header.
//!
//! `Bearer` is what the proxy documents; `Basic` with the token as password exists because
//! `HTTPS_PROXY=http://agent:<jwt>@host:port` is the only way to give most HTTP clients
//! proxy credentials (the original accepted only a case-sensitive `Bearer `, so every client
//! that cannot set proxy headers was locked out).

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;

use crate::error::AuthError;

/// The values for a 407's `Proxy-Authenticate` headers: both schemes the proxy accepts.
pub const PROXY_AUTHENTICATE: [&str; 2] =
    ["Bearer realm=\"credproxy\"", "Basic realm=\"credproxy\""];

/// Extract the token from a `Proxy-Authorization` header value.
///
/// Accepted forms (scheme case-insensitive):
/// * `Bearer <jwt>`;
/// * `Basic base64(user:jwt)`: the user part is ignored; the password may be
///   percent-encoded (clients copy it from a proxy URL), so `%XX` is decoded. If the password
///   is empty, a JWT-shaped user part is taken instead (`http://<jwt>@host` proxy URLs).
///
/// An empty value, or a scheme with nothing after it, is [`AuthError::Missing`]; anything
/// else that does not yield a JWT-shaped string is [`AuthError::Malformed`]. The returned
/// string is only syntactically checked; [`crate::Verifier::verify`] does the rest.
pub fn token_from_proxy_authorization(value: &[u8]) -> Result<String, AuthError> {
    let value = value.trim_ascii();
    if value.is_empty() {
        return Err(AuthError::Missing);
    }
    let (scheme, rest) = match value.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(i) => (&value[..i], value[i..].trim_ascii()),
        None => (value, &b""[..]),
    };
    if scheme.eq_ignore_ascii_case(b"bearer") {
        if rest.is_empty() {
            return Err(AuthError::Missing);
        }
        return jwt_shaped(rest);
    }
    if scheme.eq_ignore_ascii_case(b"basic") {
        if rest.is_empty() {
            return Err(AuthError::Missing);
        }
        return from_basic(rest);
    }
    Err(AuthError::Malformed)
}

fn from_basic(encoded: &[u8]) -> Result<String, AuthError> {
    let decoded = STANDARD
        .decode(encoded)
        .or_else(|_| STANDARD_NO_PAD.decode(encoded))
        .map_err(|_| AuthError::Malformed)?;
    let colon = decoded
        .iter()
        .position(|b| *b == b':')
        .ok_or(AuthError::Malformed)?;
    let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
    if password.is_empty() {
        // `http://<jwt>@host` proxy URLs put the token in the user part; any other user
        // with no password is simply no token.
        return jwt_shaped(&percent_decode(user)?).map_err(|_| AuthError::Missing);
    }
    jwt_shaped(&percent_decode(password)?)
}

/// Decode `%XX` escapes; a `%` not followed by two hex digits is malformed.
fn percent_decode(input: &[u8]) -> Result<Vec<u8>, AuthError> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            let hex = input.get(i + 1..i + 3).ok_or(AuthError::Malformed)?;
            let hi = hex_value(hex[0]).ok_or(AuthError::Malformed)?;
            let lo = hex_value(hex[1]).ok_or(AuthError::Malformed)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A compact JWS: three base64url segments. Checking the alphabet here keeps control
/// characters and other junk out of everything downstream.
fn jwt_shaped(bytes: &[u8]) -> Result<String, AuthError> {
    let alphabet_ok = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let dots = bytes.iter().filter(|b| **b == b'.').count();
    if !alphabet_ok || dots != 2 {
        return Err(AuthError::Malformed);
    }
    // Cannot fail: the alphabet check above admits ASCII only.
    String::from_utf8(bytes.to_vec()).map_err(|_| AuthError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";

    fn basic(userpass: &str) -> Vec<u8> {
        format!("Basic {}", STANDARD.encode(userpass)).into_bytes()
    }

    #[test]
    fn bearer_any_case() {
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let v = format!("{scheme} {JWT}");
            assert_eq!(token_from_proxy_authorization(v.as_bytes()).unwrap(), JWT);
        }
        let v = format!("  Bearer \t {JWT}  ");
        assert_eq!(token_from_proxy_authorization(v.as_bytes()).unwrap(), JWT);
    }

    #[test]
    fn basic_password_is_the_token() {
        let v = basic(&format!("agent:{JWT}"));
        assert_eq!(token_from_proxy_authorization(&v).unwrap(), JWT);
        let v = basic(&format!(":{JWT}"));
        assert_eq!(token_from_proxy_authorization(&v).unwrap(), JWT);
        let lower = format!("basic {}", STANDARD.encode(format!("x:{JWT}")));
        assert_eq!(
            token_from_proxy_authorization(lower.as_bytes()).unwrap(),
            JWT
        );
    }

    #[test]
    fn basic_password_percent_encoded() {
        let encoded = JWT.replace('.', "%2E").replace('-', "%2d");
        let v = basic(&format!("agent:{encoded}"));
        assert_eq!(token_from_proxy_authorization(&v).unwrap(), JWT);
        let v = basic("agent:abc%2");
        assert_eq!(
            token_from_proxy_authorization(&v),
            Err(AuthError::Malformed)
        );
        let v = basic("agent:abc%zz.d.e");
        assert_eq!(
            token_from_proxy_authorization(&v),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn basic_without_padding_and_user_as_token() {
        let v = format!("Basic {}", STANDARD_NO_PAD.encode(format!("a:{JWT}")));
        assert_eq!(token_from_proxy_authorization(v.as_bytes()).unwrap(), JWT);
        let v = basic(&format!("{JWT}:"));
        assert_eq!(token_from_proxy_authorization(&v).unwrap(), JWT);
    }

    #[test]
    fn empty_is_missing() {
        for v in ["", "   ", "Bearer", "Bearer   ", "Basic", "Basic "] {
            assert_eq!(
                token_from_proxy_authorization(v.as_bytes()),
                Err(AuthError::Missing),
                "{v:?}"
            );
        }
        assert_eq!(
            token_from_proxy_authorization(&basic("agent:")),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let cases: Vec<Vec<u8>> = vec![
            b"Digest abc".to_vec(),
            b"Bearer not-a-jwt".to_vec(),
            b"Bearer a.b.c.d".to_vec(),
            b"Bearer a.b\r\n.c".to_vec(),
            b"Bearer a.b.c\xff".to_vec(),
            b"Basic !!!notbase64".to_vec(),
            basic("no-colon-here"),
            basic("agent:a b.c.d"),
            b"eyJ.eyJ.sig".to_vec(),
        ];
        for v in cases {
            assert_eq!(
                token_from_proxy_authorization(&v),
                Err(AuthError::Malformed),
                "{:?}",
                String::from_utf8_lossy(&v)
            );
        }
    }

    #[test]
    fn challenges_name_both_schemes() {
        assert!(PROXY_AUTHENTICATE[0].starts_with("Bearer "));
        assert!(PROXY_AUTHENTICATE[1].starts_with("Basic "));
    }
}
