//! The issuer's verification keys, parsed from a JWKS document.

use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// A JWKS with more keys than this is refused: real issuers publish a handful, and every key
/// costs parsing time on each refresh.
const MAX_KEYS: usize = 100;

/// One usable verification key.
#[derive(Clone)]
pub(crate) struct VerifyKey {
    pub(crate) kid: Option<String>,
    /// The algorithms this key may verify: by key type and curve, narrowed to the JWK's
    /// `alg` if it names one.
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) key: DecodingKey,
}

/// The issuer's current keys.
#[derive(Clone, Default)]
pub(crate) struct KeySet {
    pub(crate) keys: Vec<VerifyKey>,
}

/// What looking a key up for a token found.
pub(crate) enum Lookup<'a> {
    Found(&'a VerifyKey),
    /// A key with that `kid` exists but cannot verify the token's `alg` (e.g. an HS256 or
    /// ES256 header naming an RSA key).
    WrongAlgorithm,
    NotFound,
}

impl KeySet {
    /// Parse a JWKS. Only asymmetric signature keys are kept: `oct` keys (which would turn
    /// the JWKS into a shared secret), encryption keys and keys with unusable material are
    /// skipped. Fails if nothing usable remains or the document is not a JWKS.
    pub(crate) fn parse(json: &[u8]) -> Result<KeySet, String> {
        let doc: Value = serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("no \"keys\" array")?;
        if keys.len() > MAX_KEYS {
            return Err(format!("{} keys (more than {MAX_KEYS})", keys.len()));
        }
        let mut set = KeySet::default();
        for jwk in keys {
            match parse_key(jwk) {
                Ok(Some(key)) => set.keys.push(key),
                Ok(None) => {}
                Err(reason) => {
                    let kid = jwk.get("kid").and_then(Value::as_str).unwrap_or("");
                    tracing::warn!(kid, reason, "skipping unusable JWKS key");
                }
            }
        }
        if set.keys.is_empty() {
            return Err("no usable signature key".to_owned());
        }
        Ok(set)
    }

    /// The key for a token with header `kid` and `alg`. Without a `kid`, the token is
    /// accepted only if exactly one key fits its `alg`: trying every key would let one token
    /// cost many signature checks.
    pub(crate) fn find(&self, kid: Option<&str>, alg: Algorithm) -> Lookup<'_> {
        match kid {
            Some(kid) => {
                let mut named = self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid));
                let mut saw_named = false;
                for key in named.by_ref() {
                    saw_named = true;
                    if key.algorithms.contains(&alg) {
                        return Lookup::Found(key);
                    }
                }
                if saw_named {
                    Lookup::WrongAlgorithm
                } else {
                    Lookup::NotFound
                }
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.algorithms.contains(&alg));
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => Lookup::Found(key),
                    _ => Lookup::NotFound,
                }
            }
        }
    }

    /// Whether some key id in `self` is absent from `newer` (a key was withdrawn).
    pub(crate) fn lost_keys_in(&self, newer: &KeySet) -> bool {
        self.keys
            .iter()
            .any(|old| !newer.keys.iter().any(|new| new.kid == old.kid))
    }
}

fn parse_key(jwk: &Value) -> Result<Option<VerifyKey>, &'static str> {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    if let Some(usage) = field("use") {
        if usage != "sig" {
            return Ok(None);
        }
    }
    let (algorithms, key) = match field("kty") {
        Some("RSA") => {
            let (n, e) = field("n").zip(field("e")).ok_or("RSA key without n or e")?;
            let key = DecodingKey::from_rsa_components(n, e).map_err(|_| "bad RSA n or e")?;
            let algs = vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ];
            (algs, key)
        }
        Some("EC") => {
            let alg = match field("crv") {
                Some("P-256") => Algorithm::ES256,
                Some("P-384") => Algorithm::ES384,
                _ => return Err("unsupported EC curve"),
            };
            let (x, y) = field("x").zip(field("y")).ok_or("EC key without x or y")?;
            let key = DecodingKey::from_ec_components(x, y).map_err(|_| "bad EC x or y")?;
            (vec![alg], key)
        }
        Some("OKP") => {
            if field("crv") != Some("Ed25519") {
                return Err("unsupported OKP curve");
            }
            let x = field("x").ok_or("OKP key without x")?;
            let key = DecodingKey::from_ed_components(x).map_err(|_| "bad OKP x")?;
            (vec![Algorithm::EdDSA], key)
        }
        // Symmetric keys are never verification keys here.
        Some("oct") => return Ok(None),
        _ => return Err("unsupported key type"),
    };
    let algorithms = match field("alg") {
        None => algorithms,
        Some(name) => match name.parse::<Algorithm>() {
            Ok(alg) if algorithms.contains(&alg) => vec![alg],
            _ => return Err("alg does not fit the key type"),
        },
    };
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err("kid is not a string"),
    };
    Ok(Some(VerifyKey {
        kid,
        algorithms,
        key,
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rsa(kid: &str) -> Value {
        // Shape only: jsonwebtoken checks the base64 here, ring checks the modulus at use.
        json!({"kty": "RSA", "kid": kid, "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"})
    }

    #[test]
    fn keeps_only_signature_keys() {
        let doc = json!({"keys": [
            rsa("r1"),
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "bad-curve", "crv": "secp256k1", "x": "AA", "y": "AA"},
        ]});
        let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.keys[0].kid.as_deref(), Some("r1"));
    }

    #[test]
    fn only_symmetric_keys_is_an_error() {
        let doc = json!({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]});
        assert!(KeySet::parse(doc.to_string().as_bytes()).is_err());
        assert!(KeySet::parse(b"{}").is_err());
        assert!(KeySet::parse(b"not json").is_err());
    }

    #[test]
    fn lookup_by_kid_and_algorithm() {
        let mut r2 = rsa("r2");
        r2["alg"] = json!("RS256");
        let doc = json!({"keys": [rsa("r1"), r2]});
        let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        assert!(matches!(
            set.find(Some("r1"), Algorithm::PS256),
            Lookup::Found(_)
        ));
        assert!(matches!(
            set.find(Some("r2"), Algorithm::PS256),
            Lookup::WrongAlgorithm
        ));
        assert!(matches!(
            set.find(Some("r1"), Algorithm::ES256),
            Lookup::WrongAlgorithm
        ));
        assert!(matches!(
            set.find(Some("zz"), Algorithm::RS256),
            Lookup::NotFound
        ));
        // Two RSA keys fit RS256, so a kid-less token is ambiguous.
        assert!(matches!(set.find(None, Algorithm::RS256), Lookup::NotFound));
        assert!(matches!(set.find(None, Algorithm::PS256), Lookup::Found(_)));
    }

    #[test]
    fn detects_withdrawn_keys() {
        let a =
            KeySet::parse(json!({"keys": [rsa("a"), rsa("b")]}).to_string().as_bytes()).unwrap();
        let b =
            KeySet::parse(json!({"keys": [rsa("b"), rsa("c")]}).to_string().as_bytes()).unwrap();
        assert!(a.lost_keys_in(&b));
        assert!(!b.lost_keys_in(
            &KeySet::parse(
                json!({"keys": [rsa("b"), rsa("c"), rsa("d")]})
                    .to_string()
                    .as_bytes()
            )
            .unwrap()
        ));
    }
}
