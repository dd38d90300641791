//! [`OidcConfig`] and its validation into the verifier's internal settings.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use crate::error::IdentityError;

/// Default claim path of the roles (Keycloak realm roles).
pub const DEFAULT_ROLES_CLAIM: &str = "realm_access.roles";
/// Default claim path of the groups.
pub const DEFAULT_GROUPS_CLAIM: &str = "groups";
/// Default claim naming the agent; `client_id`, then `sub`, are the fallbacks.
pub const DEFAULT_AGENT_CLAIM: &str = "azp";
/// Default algorithm allowlist.
pub const DEFAULT_ALGORITHMS: [&str; 2] = ["RS256", "ES256"];
/// Default clock leeway for `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Default minimum interval between JWKS refetches caused by an unknown `kid`.
pub const DEFAULT_JWKS_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// Default maximum token size in bytes.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8192;
/// Default timeout of one request to the provider.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest clock leeway accepted: more would keep expired tokens valid for long.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// The bounds of [`OidcConfig::max_token_bytes`].
pub const TOKEN_BYTES_RANGE: std::ops::RangeInclusive<usize> = 512..=65536;

/// Algorithms that may appear in the allowlist: asymmetric signatures only, so that a public
/// key can never be abused as an HMAC secret and `none` can never be configured.
pub const ALLOWED_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Longest claim path accepted, in segments; claim paths come from configuration and are
/// matched recursively, so they are kept short.
const MAX_CLAIM_PATH_SEGMENTS: usize = 16;

/// How to verify agents' access tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// The exact `iss` value; discovery is fetched from
    /// `{issuer}/.well-known/openid-configuration`. Must be `https://`, or `http://` on a
    /// loopback host (dev and tests).
    pub issuer: String,
    /// The token's `aud` must contain at least one of these.
    pub audiences: Vec<String>,
    /// Dotted claim path of the roles, e.g. `realm_access.roles` or
    /// `resource_access.credproxy.roles`. A missing or mistyped claim yields no roles.
    pub roles_claim: String,
    /// Dotted claim path of the groups.
    pub groups_claim: String,
    /// The claim naming the agent; if absent, `client_id`, then `sub`, is used.
    pub agent_claim: String,
    /// Accepted JWS algorithms; asymmetric only (anything else is a configuration error).
    pub algorithms: Vec<String>,
    /// Clock leeway applied to `exp` and `nbf`.
    pub leeway: Duration,
    /// At most one JWKS refetch per interval is caused by tokens naming an unknown `kid`.
    pub jwks_min_refresh_interval: Duration,
    /// Larger tokens are refused before any parsing.
    pub max_token_bytes: usize,
    /// Extra PEM root certificates for talking to the provider over https (in addition to
    /// the system roots).
    pub ca_files: Vec<PathBuf>,
    /// Timeout of each request to the provider.
    pub http_timeout: Duration,
}

impl OidcConfig {
    /// A config for `issuer` and `audiences` with every other field at its default.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> OidcConfig {
        OidcConfig {
            issuer: issuer.into(),
            audiences,
            roles_claim: DEFAULT_ROLES_CLAIM.to_owned(),
            groups_claim: DEFAULT_GROUPS_CLAIM.to_owned(),
            agent_claim: DEFAULT_AGENT_CLAIM.to_owned(),
            algorithms: DEFAULT_ALGORITHMS.iter().map(|a| (*a).to_owned()).collect(),
            leeway: DEFAULT_LEEWAY,
            jwks_min_refresh_interval: DEFAULT_JWKS_MIN_REFRESH_INTERVAL,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            ca_files: Vec::new(),
            http_timeout: DEFAULT_HTTP_TIMEOUT,
        }
    }
}

/// The validated form of [`OidcConfig`] that the verifier works with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) issuer: String,
    pub(crate) audiences: Vec<String>,
    pub(crate) roles_path: Vec<String>,
    pub(crate) groups_path: Vec<String>,
    pub(crate) agent_claim: String,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) leeway_secs: f64,
    pub(crate) jwks_min_refresh_interval: Duration,
    pub(crate) max_token_bytes: usize,
    pub(crate) ca_files: Vec<PathBuf>,
    pub(crate) http_timeout: Duration,
}

impl OidcConfig {
    /// Every rule this configuration breaks, as `(field, reason)`: empty when it is valid.
    /// The configuration file's validation reports these under `identity.oidc.<field>`; the
    /// verifier refuses to start with the first.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.issuer.is_empty() {
            out.push(("issuer", "must not be empty".to_owned()));
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            out.push((
                "audiences",
                "must list at least one non-empty audience".to_owned(),
            ));
        }
        for (field, path) in [
            ("roles_claim", &self.roles_claim),
            ("groups_claim", &self.groups_claim),
        ] {
            if let Err(reason) = claim_path(path) {
                out.push((field, reason));
            }
        }
        if self.agent_claim.is_empty() {
            out.push(("agent_claim", "must not be empty".to_owned()));
        }
        if self.algorithms.is_empty() {
            out.push(("algorithms", "must list at least one algorithm".to_owned()));
        }
        for name in &self.algorithms {
            if let Err(reason) = parse_algorithm(name) {
                out.push(("algorithms", reason));
            }
        }
        if self.leeway > MAX_LEEWAY {
            out.push(("leeway", "must be at most 5m".to_owned()));
        }
        if !TOKEN_BYTES_RANGE.contains(&self.max_token_bytes) {
            out.push((
                "max_token_bytes",
                format!(
                    "must be between {} and {}",
                    TOKEN_BYTES_RANGE.start(),
                    TOKEN_BYTES_RANGE.end()
                ),
            ));
        }
        if self.http_timeout.is_zero() {
            out.push(("http_timeout", "must be positive".to_owned()));
        }
        out
    }
}

impl Settings {
    /// Validate everything except the issuer's URL form, which only matters when the keys
    /// are fetched over the network (the dev issuer's `iss` is not a URL).
    pub(crate) fn from_config(cfg: &OidcConfig) -> Result<Settings, IdentityError> {
        if let Some((field, reason)) = cfg.problems().into_iter().next() {
            return Err(config_error(field, &reason));
        }
        let path = |p: &str| p.split('.').map(str::to_owned).collect();
        let algorithms = cfg
            .algorithms
            .iter()
            .filter_map(|a| parse_algorithm(a).ok())
            .collect();
        Ok(Settings {
            issuer: cfg.issuer.clone(),
            audiences: cfg.audiences.clone(),
            roles_path: path(&cfg.roles_claim),
            groups_path: path(&cfg.groups_claim),
            agent_claim: cfg.agent_claim.clone(),
            algorithms,
            leeway_secs: cfg.leeway.as_secs_f64(),
            jwks_min_refresh_interval: cfg.jwks_min_refresh_interval,
            max_token_bytes: cfg.max_token_bytes,
            ca_files: cfg.ca_files.clone(),
            http_timeout: cfg.http_timeout,
        })
    }
}

/// Map an allowlisted algorithm name to jsonwebtoken's enum; `none`, HMAC and unknown names
/// are refused with the reason.
fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    if !ALLOWED_ALGORITHMS.contains(&name) {
        return Err(format!(
            "{name:?} is not allowed; use one of {} (asymmetric only: never none or HMAC)",
            ALLOWED_ALGORITHMS.join(", ")
        ));
    }
    name.parse::<Algorithm>()
        .map_err(|_| format!("{name:?} is not supported"))
}

/// Whether `name` (a token header's `alg`) is one of the algorithms in `allowed`.
pub(crate) fn allowed_algorithm(name: &str, allowed: &[Algorithm]) -> Option<Algorithm> {
    if !ALLOWED_ALGORITHMS.contains(&name) {
        return None;
    }
    let alg = name.parse::<Algorithm>().ok()?;
    allowed.contains(&alg).then_some(alg)
}

fn claim_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err("must be a dotted claim path such as realm_access.roles".to_owned());
    }
    if path.split('.').count() > MAX_CLAIM_PATH_SEGMENTS {
        return Err(format!(
            "must have at most {MAX_CLAIM_PATH_SEGMENTS} segments"
        ));
    }
    Ok(())
}

pub(crate) fn config_error(field: &'static str, reason: &str) -> IdentityError {
    IdentityError::Config {
        field,
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OidcConfig {
        OidcConfig::new("https://id.example", vec!["credproxy".into()])
    }

    #[test]
    fn defaults_validate() {
        let s = Settings::from_config(&cfg()).unwrap();
        assert_eq!(s.algorithms, vec![Algorithm::RS256, Algorithm::ES256]);
        assert_eq!(s.roles_path, vec!["realm_access", "roles"]);
        assert_eq!(s.leeway_secs, 30.0);
    }

    #[test]
    fn symmetric_and_none_algorithms_are_config_errors() {
        for bad in ["none", "HS256", "HS512", "rs256", ""] {
            let mut c = cfg();
            c.algorithms = vec!["RS256".into(), bad.into()];
            let err = Settings::from_config(&c).unwrap_err();
            assert!(
                matches!(
                    err,
                    IdentityError::Config {
                        field: "algorithms",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn empty_fields_are_config_errors() {
        let mut c = cfg();
        c.audiences.clear();
        assert!(Settings::from_config(&c).is_err());
        let mut c = cfg();
        c.roles_claim = "a..b".into();
        assert!(Settings::from_config(&c).is_err());
        let mut c = cfg();
        c.agent_claim.clear();
        assert!(Settings::from_config(&c).is_err());
        let mut c = cfg();
        c.max_token_bytes = 0;
        assert!(Settings::from_config(&c).is_err());
    }

    #[test]
    fn problems_lists_every_broken_rule_by_field() {
        assert!(cfg().problems().is_empty());
        let mut c = cfg();
        c.leeway = MAX_LEEWAY + Duration::from_secs(1);
        c.max_token_bytes = *TOKEN_BYTES_RANGE.end() + 1;
        c.algorithms = vec!["HS256".into(), "none".into()];
        let fields: Vec<&str> = c.problems().iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            ["algorithms", "algorithms", "leeway", "max_token_bytes"]
        );
        c.leeway = MAX_LEEWAY;
        c.max_token_bytes = *TOKEN_BYTES_RANGE.start();
        c.algorithms = ALLOWED_ALGORITHMS.iter().map(|a| (*a).to_owned()).collect();
        assert!(c.problems().is_empty(), "{:?}", c.problems());
    }

    #[test]
    fn header_algorithm_must_be_allowlisted() {
        let allowed = [Algorithm::RS256];
        assert_eq!(allowed_algorithm("RS256", &allowed), Some(Algorithm::RS256));
        assert_eq!(allowed_algorithm("ES256", &allowed), None);
        assert_eq!(allowed_algorithm("none", &allowed), None);
        assert_eq!(allowed_algorithm("HS256", &allowed), None);
    }
}
