//! The crate's error types: [`AuthError`] for a rejected token (shown to the agent) and
//! [`IdentityError`] for configuration and dev-issuer problems (shown to the operator).

use std::path::PathBuf;

/// Why a token was not accepted.
///
/// The set is closed and small on purpose: the agent, audit and metrics see one of these
/// stable labels, never a library's error text (which can quote token contents and changes
/// between versions; the original classified go-oidc messages by substring and got it wrong).
/// `Display` is [`AuthError::agent_message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AuthError {
    /// No credentials were presented.
    #[error("{}", self.agent_message())]
    Missing,
    /// Not a JWT, or a JWT whose structure or claim types are wrong.
    #[error("{}", self.agent_message())]
    Malformed,
    /// `exp` is in the past (beyond the configured leeway).
    #[error("{}", self.agent_message())]
    Expired,
    /// `nbf` is in the future (beyond the configured leeway).
    #[error("{}", self.agent_message())]
    NotYetValid,
    /// `aud` is missing or names none of the accepted audiences.
    #[error("{}", self.agent_message())]
    BadAudience,
    /// `iss` is missing or is not the configured issuer.
    #[error("{}", self.agent_message())]
    BadIssuer,
    /// The signature does not verify with the issuer's key.
    #[error("{}", self.agent_message())]
    BadSignature,
    /// The token names a key (`kid`) the issuer does not publish, or asks for a key source
    /// (`jku`, `x5u`, `jwk`, `x5c`) that is never consulted.
    #[error("{}", self.agent_message())]
    UnknownKey,
    /// The token's `alg` is not allowed (`none`, HMAC, anything outside the allowlist, or an
    /// algorithm that does not fit the named key).
    #[error("{}", self.agent_message())]
    AlgorithmNotAllowed,
    /// The token exceeds the configured size limit.
    #[error("{}", self.agent_message())]
    TooLarge,
    /// The issuer's keys have not been loaded yet (the provider has been unreachable since
    /// start-up), so no token can be verified.
    #[error("{}", self.agent_message())]
    ProviderUnavailable,
}

impl AuthError {
    /// Every variant, for exhaustive tests and metric registration.
    pub const ALL: [AuthError; 11] = [
        AuthError::Missing,
        AuthError::Malformed,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::BadAudience,
        AuthError::BadIssuer,
        AuthError::BadSignature,
        AuthError::UnknownKey,
        AuthError::AlgorithmNotAllowed,
        AuthError::TooLarge,
        AuthError::ProviderUnavailable,
    ];

    /// A stable snake_case label for metrics, audit and the response body.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::BadAudience => "bad_audience",
            AuthError::BadIssuer => "bad_issuer",
            AuthError::BadSignature => "bad_signature",
            AuthError::UnknownKey => "unknown_key",
            AuthError::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthError::TooLarge => "too_large",
            AuthError::ProviderUnavailable => "provider_unavailable",
        }
    }

    /// The proxy's refusal label for this error (`identity_missing`, `identity_expired`,
    /// `identity_invalid`); `ProviderUnavailable` is not a refusal of the token (the proxy
    /// answers 503 `identity_unavailable`) and maps to `Invalid` here.
    pub fn failure(&self) -> credproxy_core::AuthFailure {
        use credproxy_core::AuthFailure;
        match self {
            AuthError::Missing => AuthFailure::Missing,
            AuthError::Expired => AuthFailure::Expired,
            AuthError::Malformed
            | AuthError::NotYetValid
            | AuthError::BadAudience
            | AuthError::BadIssuer
            | AuthError::BadSignature
            | AuthError::UnknownKey
            | AuthError::AlgorithmNotAllowed
            | AuthError::TooLarge
            | AuthError::ProviderUnavailable => AuthFailure::Invalid,
        }
    }

    /// One line telling the agent what happened and what to do about it.
    pub fn agent_message(&self) -> &'static str {
        match self {
            AuthError::Missing => {
                "no access token was presented; send `Proxy-Authorization: Bearer <jwt>` \
                 (or put the token in the proxy URL's password)"
            }
            AuthError::Malformed => "the access token is not a well-formed JWT; obtain a new one",
            AuthError::Expired => "the access token has expired; obtain a new one",
            AuthError::NotYetValid => {
                "the access token is not valid yet (nbf); check the clock or obtain a new one"
            }
            AuthError::BadAudience => {
                "the access token was issued for another audience; request one for this proxy"
            }
            AuthError::BadIssuer => {
                "the access token was issued by another issuer; obtain one from the configured issuer"
            }
            AuthError::BadSignature => {
                "the access token's signature does not verify; obtain a new one"
            }
            AuthError::UnknownKey => {
                "the access token was signed with a key the issuer does not publish; obtain a new one"
            }
            AuthError::AlgorithmNotAllowed => {
                "the access token uses a signing algorithm this proxy does not accept"
            }
            AuthError::TooLarge => "the access token is too large",
            AuthError::ProviderUnavailable => {
                "the identity provider is not reachable yet, so tokens cannot be verified; retry later"
            }
        }
    }
}

/// Invalid configuration, or a problem with the dev issuer's key or the HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A configuration value is unusable.
    #[error("invalid identity configuration: {field}: {reason}")]
    Config {
        /// The offending field of [`crate::OidcConfig`].
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// [`crate::Verifier::new`] spawns its key loader and needs a tokio runtime.
    #[error("the OIDC verifier must be created inside a tokio runtime")]
    NoRuntime,
    /// An extra CA file could not be read or holds no usable certificate.
    #[error("cannot use CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A claim set given to an offline tool is unusable.
    #[error("invalid claims: {0}")]
    Claims(String),
    /// A static JWKS (dev issuer) is unusable.
    #[error("invalid JWKS: {0}")]
    Jwks(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
    /// File-system trouble with the dev issuer's key.
    #[error("cannot {action} {path}")]
    Io {
        /// What was attempted ("read", "create", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The dev issuer's key file is readable or writable by other users.
    #[error("dev issuer key {path} is accessible to other users (mode {mode:o}); run `chmod 600` on it or delete it")]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The dev issuer's key file does not hold a P-256 PKCS#8 key.
    #[error(
        "dev issuer key {path} is not a valid P-256 PKCS#8 key; delete it to create a new one"
    )]
    BadKey {
        /// The key file.
        path: PathBuf,
    },
    /// Signing a dev token failed.
    #[error("cannot issue a dev token: {0}")]
    Issue(String),
}
