//! Claim checks (`iss`, `aud`, `exp`, `nbf`) and the mapping from a verified claim set to
//! [`AgentIdentity`]. Pure functions: the clock is a parameter.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::Settings;
use crate::error::AuthError;

/// Who is calling, as far as policy and audit need to know.
///
/// This is all that leaves the verifier: never the raw token or the full claim set (the
/// original put the whole claim map into workflow history).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentIdentity {
    /// The agent: the configured agent claim, else `client_id`, else `sub`.
    pub agent_id: String,
    /// The `sub` claim (empty if the token has none).
    pub subject: String,
    /// Strings at the configured roles claim path (non-strings are skipped).
    pub roles: Vec<String>,
    /// Strings at the configured groups claim path (non-strings are skipped).
    pub groups: Vec<String>,
    /// The `iss` claim (equal to the configured issuer).
    pub issuer: String,
    /// The `exp` claim; serialized as Unix seconds. Long-lived tunnels re-check it per
    /// request, so a token's authority ends here even mid-connection.
    #[serde(serialize_with = "unix_seconds")]
    pub expires_at: SystemTime,
    /// First 16 hex chars of SHA-256 of the `jti` claim if present, else of the token:
    /// correlates uses of one token in audit without storing it.
    pub token_id_hash: String,
}

impl AgentIdentity {
    /// Whether the token behind this identity has expired at `now` (no leeway; callers
    /// re-checking a long-lived tunnel want the plain answer).
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now > self.expires_at
    }
}

fn unix_seconds<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    s.serialize_u64(secs)
}

/// Seconds since the Unix epoch at `t`, as used in `exp`/`nbf`.
pub(crate) fn unix_seconds_at(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Check `iss`, `aud`, `exp` (required) and `nbf` (if present) at `now`, and return `exp`.
pub(crate) fn check_claims(
    claims: &Map<String, Value>,
    settings: &Settings,
    now: f64,
) -> Result<f64, AuthError> {
    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == settings.issuer => {}
        _ => return Err(AuthError::BadIssuer),
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => settings.audiences.contains(aud),
        Some(Value::Array(auds)) => auds.iter().any(|a| {
            a.as_str()
                .is_some_and(|a| settings.audiences.iter().any(|x| x == a))
        }),
        _ => false,
    };
    if !audience_ok {
        return Err(AuthError::BadAudience);
    }
    let exp = numeric_date(claims.get("exp"))?.ok_or(AuthError::Malformed)?;
    if now > exp + settings.leeway_secs {
        return Err(AuthError::Expired);
    }
    if let Some(nbf) = numeric_date(claims.get("nbf"))? {
        if nbf > now + settings.leeway_secs {
            return Err(AuthError::NotYetValid);
        }
    }
    Ok(exp)
}

/// A NumericDate (RFC 7519 §2): a non-negative JSON number. Absent is `None`; any other
/// type is malformed rather than silently ignored (a string `nbf` must not skip the check).
fn numeric_date(value: Option<&Value>) -> Result<Option<f64>, AuthError> {
    match value {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() && v >= 0.0 => Ok(Some(v)),
            _ => Err(AuthError::Malformed),
        },
        Some(_) => Err(AuthError::Malformed),
    }
}

/// Build the identity from checked claims. `exp` comes from [`check_claims`].
pub(crate) fn identity_from_claims(
    claims: &Map<String, Value>,
    settings: &Settings,
    exp: f64,
    token: &str,
) -> Result<AgentIdentity, AuthError> {
    let non_empty_str = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let agent_id = non_empty_str(&settings.agent_claim)
        .or_else(|| non_empty_str("client_id"))
        .or_else(|| non_empty_str("sub"))
        .ok_or(AuthError::Malformed)?;
    let subject = non_empty_str("sub").unwrap_or_default();
    let issuer = non_empty_str("iss").ok_or(AuthError::BadIssuer)?;
    let expires_at = Duration::try_from_secs_f64(exp)
        .ok()
        .and_then(|d| UNIX_EPOCH.checked_add(d))
        .ok_or(AuthError::Malformed)?;
    let token_id_hash = match claims.get("jti").and_then(Value::as_str) {
        Some(jti) if !jti.is_empty() => short_hash(jti.as_bytes()),
        _ => short_hash(token.as_bytes()),
    };
    Ok(AgentIdentity {
        agent_id,
        subject,
        roles: strings_at(claims, &settings.roles_path),
        groups: strings_at(claims, &settings.groups_path),
        issuer,
        expires_at,
        token_id_hash,
    })
}

/// The identity a claim set *would* give, without verifying anything: for offline tools
/// (`credproxy policy input --token-claims`) that show operators what a policy will see.
/// Never used to authenticate a request.
pub fn identity_from_claims_unverified(
    claims: &Value,
    cfg: &crate::OidcConfig,
) -> Result<AgentIdentity, crate::IdentityError> {
    let settings = Settings::from_config(cfg)?;
    let map = claims
        .as_object()
        .ok_or_else(|| crate::IdentityError::Claims("the claims must be a JSON object".into()))?;
    let exp = map.get("exp").and_then(Value::as_f64).unwrap_or(0.0);
    identity_from_claims(map, &settings, exp, "")
        .map_err(|e| crate::IdentityError::Claims(e.agent_message().into()))
}

fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    hex::encode(&digest[..8])
}

/// The strings in the array at `path`; a missing or mistyped claim yields none, so a token
/// without roles simply has no roles (policy decides what that means).
pub(crate) fn strings_at(claims: &Map<String, Value>, path: &[String]) -> Vec<String> {
    match lookup_in_object(claims, path) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// Follow `path` through nested objects. A key may itself contain dots (Keycloak client ids
/// often do, as in `resource_access.my.client.roles`), so at each level the longest joined
/// prefix that names a key is tried first, then shorter ones.
fn lookup_in_object<'a>(object: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    for take in (1..=path.len()).rev() {
        let key = path[..take].join(".");
        if let Some(value) = object.get(&key) {
            let rest = &path[take..];
            if rest.is_empty() {
                return Some(value);
            }
            if let Some(found) = value.as_object().and_then(|o| lookup_in_object(o, rest)) {
                return Some(found);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::OidcConfig;

    fn settings() -> Settings {
        Settings::from_config(&OidcConfig::new(
            "https://id.example",
            vec!["credproxy".into(), "other".into()],
        ))
        .unwrap()
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn path(p: &str) -> Vec<String> {
        p.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn realm_roles() {
        let c = obj(json!({"realm_access": {"roles": ["a", "b"]}}));
        assert_eq!(strings_at(&c, &path("realm_access.roles")), vec!["a", "b"]);
    }

    #[test]
    fn client_roles_including_dotted_client_ids() {
        let c = obj(json!({"resource_access": {
            "credproxy": {"roles": ["x"]},
            "my.client": {"roles": ["y", 3, null, "z"]}
        }}));
        assert_eq!(
            strings_at(&c, &path("resource_access.credproxy.roles")),
            vec!["x"]
        );
        assert_eq!(
            strings_at(&c, &path("resource_access.my.client.roles")),
            vec!["y", "z"]
        );
    }

    #[test]
    fn missing_or_mistyped_is_empty() {
        let c = obj(json!({
            "realm_access": {"roles": "admin"},
            "groups": {"a": 1},
            "n": 5,
            "resource_access": []
        }));
        for p in [
            "realm_access.roles",
            "groups",
            "n",
            "n.x",
            "absent",
            "resource_access.x.roles",
            "realm_access.roles.deeper",
        ] {
            assert!(strings_at(&c, &path(p)).is_empty(), "{p}");
        }
    }

    #[test]
    fn top_level_groups() {
        let c = obj(json!({"groups": ["/ops", "dev"]}));
        assert_eq!(strings_at(&c, &path("groups")), vec!["/ops", "dev"]);
    }

    fn valid(now: f64) -> Map<String, Value> {
        obj(json!({"iss": "https://id.example", "aud": "credproxy", "exp": now + 60.0, "sub": "s"}))
    }

    #[test]
    fn claim_checks() {
        let s = settings();
        let now = 1_700_000_000.0;
        assert!(check_claims(&valid(now), &s, now).is_ok());

        let mut c = valid(now);
        c.insert("iss".into(), json!("https://evil.example"));
        assert_eq!(check_claims(&c, &s, now), Err(AuthError::BadIssuer));
        c.remove("iss");
        assert_eq!(check_claims(&c, &s, now), Err(AuthError::BadIssuer));

        let mut c = valid(now);
        c.insert("aud".into(), json!(["x", "other"]));
        assert!(check_claims(&c, &s, now).is_ok());
        c.insert("aud".into(), json!(["x", 1]));
        assert_eq!(check_claims(&c, &s, now), Err(AuthError::BadAudience));
        c.remove("aud");
        assert_eq!(check_claims(&c, &s, now), Err(AuthError::BadAudience));

        let mut c = valid(now);
        c.remove("exp");
        assert_eq!(check_claims(&c, &s, now), Err(AuthError::Malformed));
        c.insert("exp".into(), json!("soon"));
        assert_eq!(check_claims(&c, &s, now), Err(AuthError::Malformed));
        c.insert("exp".into(), json!(now - 30.0));
        assert!(check_claims(&c, &s, now).is_ok(), "within leeway");
        c.insert("exp".into(), json!(now - 31.0));
        assert_eq!(check_claims(&c, &s, now), Err(AuthError::Expired));

        let mut c = valid(now);
        c.insert("nbf".into(), json!(now + 31.0));
        assert_eq!(check_claims(&c, &s, now), Err(AuthError::NotYetValid));
        c.insert("nbf".into(), json!(now + 29.0));
        assert!(check_claims(&c, &s, now).is_ok());
        c.insert("nbf".into(), json!("later"));
        assert_eq!(check_claims(&c, &s, now), Err(AuthError::Malformed));
    }

    #[test]
    fn agent_id_fallbacks() {
        let s = settings();
        let now = 1_700_000_000.0;
        let mut c = valid(now);
        c.insert("azp".into(), json!("from-azp"));
        c.insert("client_id".into(), json!("from-client-id"));
        let id = identity_from_claims(&c, &s, now + 60.0, "t.o.k").unwrap();
        assert_eq!(id.agent_id, "from-azp");
        c.remove("azp");
        let id = identity_from_claims(&c, &s, now + 60.0, "t.o.k").unwrap();
        assert_eq!(id.agent_id, "from-client-id");
        c.remove("client_id");
        let id = identity_from_claims(&c, &s, now + 60.0, "t.o.k").unwrap();
        assert_eq!(id.agent_id, "s");
        assert_eq!(id.subject, "s");
        c.remove("sub");
        assert_eq!(
            identity_from_claims(&c, &s, now + 60.0, "t.o.k"),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn token_id_hash_prefers_jti() {
        let s = settings();
        let now = 1_700_000_000.0;
        let mut c = valid(now);
        let by_token = identity_from_claims(&c, &s, now, "a.b.c")
            .unwrap()
            .token_id_hash;
        assert_eq!(by_token, short_hash(b"a.b.c"));
        assert_eq!(by_token.len(), 16);
        c.insert("jti".into(), json!("id-1"));
        let by_jti = identity_from_claims(&c, &s, now, "a.b.c")
            .unwrap()
            .token_id_hash;
        assert_eq!(by_jti, short_hash(b"id-1"));
    }

    #[test]
    fn serializes_expiry_as_unix_seconds() {
        let s = settings();
        let c = valid(0.0);
        let id = identity_from_claims(&c, &s, 1_700_000_123.0, "a.b.c").unwrap();
        let v = serde_json::to_value(&id).unwrap();
        assert_eq!(v["expires_at"], json!(1_700_000_123u64));
        assert_eq!(v["agent_id"], json!("s"));
    }
}
