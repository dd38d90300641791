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

/// Algorithms that may appear in the allowlist: asymmetric signatures only, so that a public
/// key can never be abused as an HMAC secret and `none` can never be configured.
const ASYMMETRIC: [&str; 9] = [
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

impl Settings {
    /// Validate everything except the issuer's URL form, which only matters when the keys
    /// are fetched over the network (the dev issuer's `iss` is not a URL).
    pub(crate) fn from_config(cfg: &OidcConfig) -> Result<Settings, IdentityError> {
        if cfg.issuer.is_empty() {
            return Err(config_error("issuer", "must not be empty"));
        }
        if cfg.audiences.is_empty() || cfg.audiences.iter().any(String::is_empty) {
            return Err(config_error(
                "audiences",
                "must list at least one non-empty audience",
            ));
        }
        let roles_path = claim_path("roles_claim", &cfg.roles_claim)?;
        let groups_path = claim_path("groups_claim", &cfg.groups_claim)?;
        if cfg.agent_claim.is_empty() {
            return Err(config_error("agent_claim", "must not be empty"));
        }
        if cfg.algorithms.is_empty() {
            return Err(config_error(
                "algorithms",
                "must list at least one algorithm",
            ));
        }
        let mut algorithms = Vec::new();
        for name in &cfg.algorithms {
            algorithms.push(parse_algorithm(name)?);
        }
        if cfg.max_token_bytes == 0 {
            return Err(config_error("max_token_bytes", "must be positive"));
        }
        if cfg.http_timeout.is_zero() {
            return Err(config_error("http_timeout", "must be positive"));
        }
        Ok(Settings {
            issuer: cfg.issuer.clone(),
            audiences: cfg.audiences.clone(),
            roles_path,
            groups_path,
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
/// are configuration errors.
pub(crate) fn parse_algorithm(name: &str) -> Result<Algorithm, IdentityError> {
    if !ASYMMETRIC.contains(&name) {
        return Err(config_error(
            "algorithms",
            &format!(
                "{name:?} is not allowed; choose from {} (asymmetric algorithms only)",
                ASYMMETRIC.join(", ")
            ),
        ));
    }
    name.parse::<Algorithm>()
        .map_err(|_| config_error("algorithms", &format!("{name:?} is not supported")))
}

/// Whether `name` (a token header's `alg`) is one of the algorithms in `allowed`.
pub(crate) fn allowed_algorithm(name: &str, allowed: &[Algorithm]) -> Option<Algorithm> {
    if !ASYMMETRIC.contains(&name) {
        return None;
    }
    let alg = name.parse::<Algorithm>().ok()?;
    allowed.contains(&alg).then_some(alg)
}

fn claim_path(field: &'static str, path: &str) -> Result<Vec<String>, IdentityError> {
    let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
    if path.is_empty() || segments.iter().any(String::is_empty) {
        return Err(config_error(
            field,
            "must be a dotted claim path such as realm_access.roles",
        ));
    }
    if segments.len() > MAX_CLAIM_PATH_SEGMENTS {
        return Err(config_error(
            field,
            &format!("must have at most {MAX_CLAIM_PATH_SEGMENTS} segments"),
        ));
    }
    Ok(segments)
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
    fn header_algorithm_must_be_allowlisted() {
        let allowed = [Algorithm::RS256];
        assert_eq!(allowed_algorithm("RS256", &allowed), Some(Algorithm::RS256));
        assert_eq!(allowed_algorithm("ES256", &allowed), None);
        assert_eq!(allowed_algorithm("none", &allowed), None);
        assert_eq!(allowed_algorithm("HS256", &allowed), None);
    }
}
