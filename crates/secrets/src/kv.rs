//! KV v2 paths and reads.

use credproxy_core::Secret;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::http::{BaoHttp, NetError};

/// Longest accepted KV path, far beyond any real credential path.
const MAX_PATH_LEN: usize = 512;

/// Why a KV path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid kv path {path:?}: {reason}")]
pub struct KvPathError {
    pub path: String,
    pub reason: &'static str,
}

/// Checks a KV path (or mount) before it is put into a URL or a policy.
///
/// Allowed: segments of ASCII letters, digits, `-`, `_`, `.` separated by single `/`, no
/// `.`/`..` segments, no leading or trailing `/`. The set is narrow on purpose: `*` and `+` are
/// globs in OpenBao policies (a path containing them would widen the generated policy), and
/// `?`, `#`, `%` or `..` would change what the request URL means.
pub fn validate_kv_path(path: &str) -> Result<(), KvPathError> {
    let err = |reason| {
        Err(KvPathError {
            path: path.to_string(),
            reason,
        })
    };
    if path.is_empty() {
        return err("empty");
    }
    if path.len() > MAX_PATH_LEN {
        return err("longer than 512 bytes");
    }
    for segment in path.split('/') {
        if segment.is_empty() {
            return err("empty segment (leading, trailing or double '/')");
        }
        if segment == "." || segment == ".." {
            return err("'.' and '..' segments are not allowed");
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return err("only ASCII letters, digits, '-', '_', '.' and '/' are allowed");
        }
    }
    Ok(())
}

/// The outcome of one KV read with one token.
#[derive(Debug)]
pub(crate) enum KvRead {
    Value(Secret),
    /// 403: the token is invalid or its policy does not cover the path; the caller tells
    /// which with lookup-self.
    Forbidden,
    NotFound,
    FieldMissing,
    FieldNotString,
    FieldEmpty,
    /// Any other answer (5xx, sealed, 400 …), described.
    Failed(String),
}

/// `GET <mount>/data/<path>[?version=N]` and picks `field`.
pub(crate) async fn read(
    http: &BaoHttp,
    token: &Secret,
    mount: &str,
    path: &str,
    field: &str,
    version: Option<u64>,
) -> Result<KvRead, NetError> {
    let mut url_path = format!("{mount}/data/{path}");
    if let Some(v) = version {
        url_path.push_str(&format!("?version={v}"));
    }
    let mut answer = http.call(Method::GET, &url_path, Some(token), None).await?;
    let outcome = match answer.status {
        StatusCode::OK => {
            // A deleted or destroyed version answers with `data.data: null`.
            match answer.body.pointer_mut("/data/data") {
                Some(Value::Object(fields)) => match fields.remove(field) {
                    None => KvRead::FieldMissing,
                    Some(Value::String(s)) if s.is_empty() => KvRead::FieldEmpty,
                    // Moves the bytes into the zeroizing Secret without another copy.
                    Some(Value::String(s)) => KvRead::Value(Secret::new(s.into_bytes())),
                    Some(mut other) => {
                        wipe(&mut other);
                        KvRead::FieldNotString
                    }
                },
                _ => KvRead::NotFound,
            }
        }
        StatusCode::NOT_FOUND => KvRead::NotFound,
        StatusCode::FORBIDDEN => KvRead::Forbidden,
        _ => KvRead::Failed(answer.errors()),
    };
    // The other fields of the secret are often credentials too.
    wipe(&mut answer.body);
    Ok(outcome)
}

/// Overwrites every string in a JSON document before it is dropped.
pub(crate) fn wipe(value: &mut Value) {
    use zeroize::Zeroize;
    match value {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(wipe),
        Value::Object(map) => map.values_mut().for_each(wipe),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        for ok in ["openclaw/anthropic", "a", "a.b/c-d/e_f", "secret", "v1.2/x"] {
            assert_eq!(validate_kv_path(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_globs_traversal_and_url_syntax() {
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a/../b",
            "./a",
            "a/*",
            "a+",
            "a?version=2",
            "a#b",
            "a%2f",
            "a b",
            "a\"b",
            "ä",
        ] {
            assert!(validate_kv_path(bad).is_err(), "{bad:?} accepted");
        }
    }
}
