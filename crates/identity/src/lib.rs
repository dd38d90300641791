//! Agent identity for credproxy: verifies the OIDC access token an agent presents in
//! `Proxy-Authorization` and turns it into a small [`AgentIdentity`] for policy and audit.
//!
//! * [`Verifier`]: discovery from the issuer, a JWKS cache refreshed in the background and
//!   refetched on an unknown `kid` at most once per interval, an asymmetric-only algorithm
//!   allowlist, `iss`/`aud`/`exp` required and `nbf` honoured with a configurable leeway, a
//!   size limit, and a cache of verified tokens (by hash) so the hot path does not re-check
//!   signatures.
//! * [`token_from_proxy_authorization`]: `Bearer <jwt>`, or `Basic` with the JWT as the
//!   password, so `HTTPS_PROXY=http://agent:<jwt>@host:port` works in every client.
//! * [`AuthError`]: a closed set of stable, agent-safe rejection reasons.
//! * [`DevIssuer`]: a local ES256 issuer for `credproxy dev`, verified by the same code path.
//! * [`client_credentials`]: the OAuth 2.0 client-credentials grant for `credproxy token`.
//! * [`RefreshingToken`]: a token obtained by a [`TokenGrant`] (client credentials or the dev
//!   issuer) and refreshed before it expires, for listener-bound identity in the proxy and
//!   for `credproxy bridge`.
//!
//! Invariant: a token is accepted only after its signature verified with a key from the
//! issuer's JWKS and its `iss`/`aud`/`exp`/`nbf` were checked; the raw token is never
//! stored, logged or returned (the cache keys on its SHA-256, audit sees a short hash of its
//! `jti`).

mod claims;
mod config;
mod dev;
mod error;
mod extract;
mod http;
mod jwks;
mod refresh;
mod token;
mod verifier;

pub use claims::{identity_from_claims_unverified, AgentIdentity};
pub use config::{
    OidcConfig, ALLOWED_ALGORITHMS, DEFAULT_AGENT_CLAIM, DEFAULT_ALGORITHMS, DEFAULT_GROUPS_CLAIM,
    DEFAULT_HTTP_TIMEOUT, DEFAULT_JWKS_MIN_REFRESH_INTERVAL, DEFAULT_LEEWAY,
    DEFAULT_MAX_TOKEN_BYTES, DEFAULT_ROLES_CLAIM, MAX_LEEWAY, TOKEN_BYTES_RANGE,
};
pub use dev::{DevIssuer, DEV_AUDIENCE, DEV_ISSUER, DEV_KEY_FILE};
pub use error::{AuthError, IdentityError};
pub use extract::{token_from_proxy_authorization, PROXY_AUTHENTICATE};
pub use refresh::{
    read_client_secret, refresh_after, sleep_on, sleep_until_on, sleep_until_wall_on,
    ClientCredentialsGrant, DevGrant, RefreshTask, RefreshingToken, TokenGrant, TokenStatus,
    TokenUnavailable,
};
pub use token::{client_credentials, ClientCredentials, FetchErrorBox, TokenError, TokenResponse};
pub use verifier::Verifier;

/// Whether `url` may be used to talk to an identity provider (discovery, token endpoint):
/// `https`, or `http` to a loopback host. The error says why not.
pub fn check_provider_url(url: &str) -> Result<(), String> {
    http::acceptable_url(url).map(|_| ())
}
