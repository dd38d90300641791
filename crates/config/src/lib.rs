//! credproxy's configuration: YAML (JSON is accepted as the YAML subset that Nix writes),
//! read in two stages.
//!
//! Stage one deserialises each section into `Raw*` types that refuse unknown keys; stage two
//! turns them into the validated [`Config`], in which impossible states cannot be expressed.
//! Both stages collect every problem they find rather than stopping at the first, and each
//! problem carries the path of the offending key (`listeners[1].tcp`) and what was expected.
//!
//! One home per fact: the sections that configure a leaf crate (identity, policy, secrets,
//! audit) hold that crate's own settings type ([`credproxy_identity::OidcConfig`],
//! [`PolicyConfig`], [`credproxy_secrets::SecretsConfig`], [`credproxy_audit::AuditConfig`],
//! [`TemporalConfig`]), built from its defaults and checked by its `problems()`; this crate
//! adds only the YAML shape, the key paths of errors and the rules that span sections.
//!
//! Invariant: this crate reads nothing but the configuration text it is given. Files the
//! configuration refers to (CA, extra roots) are opened by the crates that use them, at start.
//! Relative paths are resolved against the directory of the configuration file.

mod error;
mod features;
mod raw;
mod suffix;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use credproxy_audit::temporal::TemporalConfig;
use credproxy_core::{Allowlist, ListenAddr, UidSet};
pub use credproxy_identity::{OidcConfig, DEV_AUDIENCE, DEV_ISSUER};
pub use credproxy_policy::PolicyConfig;
pub use credproxy_secrets::{OpenBaoAuth, OpenBaoConfig};
pub use error::{ConfigError, ConfigErrors};
use ipnet::IpNet;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    pub admin: Option<AdminConfig>,
    pub ca: CaConfig,
    pub allowed_domains: Allowlist,
    pub upstream: UpstreamConfig,
    pub limits: Limits,
    pub log: LogConfig,
    /// Agent authentication. `None` only with `identity.danger_allow_anonymous: true`: every
    /// request then carries the anonymous identity (no roles), and a warning is logged.
    pub identity: Option<IdentityConfig>,
    pub policy: PolicyConfig,
    pub secrets: SecretsConfig,
    pub credentials: Vec<CredentialConfig>,
    pub audit: Option<AuditConfig>,
    /// Internal names (e.g. `hub.openclaw.internal`) served by a local Unix socket instead of
    /// the network, by canonical name. Each is also in `allowed_domains`; no credential is
    /// bound to one.
    pub internal_services: BTreeMap<String, InternalServiceConfig>,
}

/// `internal_services.<name>`: a local service agents reach by an allowlisted internal name,
/// through the normal pipeline (identity, policy, audit), never with an injected credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalServiceConfig {
    /// The canonical name agents use (`hub.openclaw.internal`).
    pub name: String,
    /// The service's Unix socket; plain HTTP/1.1 on it.
    pub unix: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub addr: ListenAddr,
    /// File mode for a Unix or hybrid-vsock socket (default 0660).
    pub unix_mode: u32,
    /// Unix or hybrid-vsock sockets: the only uids (`SO_PEERCRED`) that may connect; other
    /// peers are closed at accept.
    pub peer_uids: Option<UidSet>,
    /// Only this agent identity may use the listener.
    pub agent: Option<String>,
    /// The proxy obtains `agent`'s token itself and authenticates this listener's requests
    /// that carry no `Proxy-Authorization` with it (listener-bound identity).
    pub agent_token: Option<AgentTokenConfig>,
}

/// `listeners[].agent_token`: where the listener agent's token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentTokenConfig {
    /// The OAuth 2.0 client-credentials grant against the OIDC provider; the client secret
    /// stays on the host.
    ClientCredentials(ClientCredentialsConfig),
    /// credproxy's own dev issuer (dev mode only); its tokens are verified like any other,
    /// with the key's public JWKS.
    DevIssuer(DevIssuerTokenConfig),
}

/// `listeners[].agent_token.client_credentials`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCredentialsConfig {
    pub endpoint: TokenEndpoint,
    pub client_id: String,
    /// Read for every token request, never logged.
    pub client_secret_file: PathBuf,
    pub audience: Option<String>,
    pub scope: Option<String>,
    pub ca_files: Vec<PathBuf>,
}

/// Where the token endpoint is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenEndpoint {
    /// `token_url`: used as is.
    TokenUrl(String),
    /// `issuer`: the token endpoint is found by OIDC discovery.
    Issuer(String),
}

/// `listeners[].agent_token.dev_issuer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevIssuerTokenConfig {
    /// The dev issuer's private key (PKCS#8 PEM, mode 0600); created when missing.
    pub key_file: PathBuf,
    /// `realm_access.roles` of the tokens.
    pub roles: Vec<String>,
    /// Lifetime of each token (refreshed at 80%).
    pub ttl: Duration,
}

/// Default lifetime of dev-issuer listener tokens.
pub const DEFAULT_DEV_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// `identity.oidc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// How tokens are verified: the identity crate's settings, defaults and rules.
    pub oidc: OidcConfig,
    /// Use this JWKS file instead of discovery (the dev issuer; air-gapped setups).
    pub jwks_file: Option<PathBuf>,
}

/// `secrets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretsConfig {
    /// The secret store's settings (`openbao`, `cache_ttl`), with its defaults.
    pub store: credproxy_secrets::SecretsConfig,
    /// How long a replaced (rotated or removed) value is still scrubbed from responses.
    pub scrub_retention: Duration,
    /// How often every credential's value is re-read for the scrub set.
    pub scrub_refresh: Duration,
}

/// Default for [`SecretsConfig::scrub_retention`].
pub const DEFAULT_SCRUB_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Default for [`SecretsConfig::scrub_refresh`].
pub const DEFAULT_SCRUB_REFRESH: Duration = Duration::from_secs(60);

/// How a credential is presented upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// `header_name: header_prefix + secret` (default header `x-api-key`).
    ApiKey,
    /// `Authorization: Bearer <secret>`.
    Bearer,
    /// `Authorization: Basic base64(user:password)`.
    BasicAuth,
    /// Any header: `header_name: header_prefix + secret` (header_name required).
    Header,
}

/// What a kind is: its configuration name, the header it uses when `header_name` is not
/// given (`None`: `header_name` is required), and whether that header is fixed. The one table
/// config validation and `credproxy dev` read (the rendering is `proxy::creds`'s match).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInfo {
    pub kind: CredentialKind,
    pub name: &'static str,
    pub default_header: Option<&'static str>,
    /// The header cannot be changed (`authorization` for bearer and basic_auth).
    pub fixed_header: bool,
}

impl CredentialKind {
    /// Every kind, in documentation order. Adding a kind: a variant, its row here, its
    /// rendering in the proxy (`proxy::creds`, an exhaustive match), its line in
    /// docs/configuration.md (a config test checks the docs list every name).
    pub const TABLE: [KindInfo; 4] = [
        KindInfo {
            kind: CredentialKind::ApiKey,
            name: "api_key",
            default_header: Some("x-api-key"),
            fixed_header: false,
        },
        KindInfo {
            kind: CredentialKind::Bearer,
            name: "bearer",
            default_header: Some("authorization"),
            fixed_header: true,
        },
        KindInfo {
            kind: CredentialKind::BasicAuth,
            name: "basic_auth",
            default_header: Some("authorization"),
            fixed_header: true,
        },
        KindInfo {
            kind: CredentialKind::Header,
            name: "header",
            default_header: None,
            fixed_header: false,
        },
    ];

    /// This kind's row of [`CredentialKind::TABLE`].
    pub fn info(self) -> &'static KindInfo {
        match self {
            CredentialKind::ApiKey => &Self::TABLE[0],
            CredentialKind::Bearer => &Self::TABLE[1],
            CredentialKind::BasicAuth => &Self::TABLE[2],
            CredentialKind::Header => &Self::TABLE[3],
        }
    }

    /// The configuration name (`type:`).
    pub fn as_str(self) -> &'static str {
        self.info().name
    }

    /// The kind named `name` in configuration.
    pub fn from_name(name: &str) -> Option<CredentialKind> {
        Self::TABLE.iter().find(|k| k.name == name).map(|k| k.kind)
    }

    /// `api_key, bearer, basic_auth, header` (for messages).
    pub fn names() -> String {
        Self::TABLE.map(|k| k.name).join(", ")
    }
}

/// Where a credential may be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InjectIn {
    pub header: bool,
    pub query: bool,
    pub body: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSourceConfig {
    File(PathBuf),
    Env(String),
    OpenBao {
        path: String,
        field: String,
        version: Option<u64>,
    },
}

/// One entry of `credentials`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialConfig {
    pub id: String,
    pub placeholder: String,
    pub kind: CredentialKind,
    /// Lowercase header name the secret is injected into (`authorization` for bearer and
    /// basic_auth).
    pub header_name: String,
    pub header_prefix: String,
    /// For basic_auth: a fixed user name, the secret then being the password. Without it the
    /// secret is `user:password`.
    pub username: Option<String>,
    /// Destinations the credential may be sent to (same syntax as `allowed_domains`).
    pub bound_domains: Allowlist,
    pub allowed_roles: Vec<String>,
    /// Agent ids (the token's agent claim) that may use the credential; empty means any agent
    /// holding one of `allowed_roles`. Enforced by the proxy before the policy runs: another
    /// agent's use is refused (403 `credential_not_granted`) and counted as a misuse alarm.
    pub allowed_agents: Vec<String>,
    pub inject_in: InjectIn,
    /// What to do with a value in the credential's header that is not its placeholder, on a
    /// host the credential is bound to (the agent's own key, threat A27).
    pub foreign_value: ForeignValue,
    pub source: SecretSourceConfig,
}

/// `credentials[].foreign_value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForeignValue {
    /// 403 `credential_foreign_value`, counted as a misuse alarm and audited (default).
    #[default]
    Refuse,
    /// Drop the agent's value and inject the credential's secret in its place (recorded).
    Replace,
}

/// `audit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// The spool's settings (`path`, `retention`, `max_size_bytes`), with its defaults.
    pub spool: credproxy_audit::AuditConfig,
    /// Export to Temporal.
    pub temporal: Option<TemporalConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub leaf_validity: Duration,
    pub leaf_cache_size: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub extra_ca_files: Vec<PathBuf>,
    /// Canonical host name → the address to dial instead of resolving it.
    pub resolve: BTreeMap<String, SocketAddr>,
    pub allow_private_networks: Vec<IpNet>,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    /// How much of a request body is read and checked for placeholders before anything is
    /// sent upstream (when credentials are configured).
    pub body_scan_window: usize,
    /// A request body that sends nothing for this long is abandoned (408 before anything
    /// was forwarded, the upstream request aborted after).
    pub body_idle_timeout: Duration,
    /// The largest request body accepted by a host that a body-injecting credential is
    /// bound to (413 above it): such bodies are scanned and rewritten in full.
    pub max_injected_body_bytes: u64,
    /// Connections (tunnels and plain-HTTP connections) one identity may hold at once (429).
    pub max_connections_per_identity: usize,
    /// Requests one identity may have in flight at once, across its connections (429).
    pub max_streams_per_identity: usize,
    /// HTTP/2 streams one agent connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams_per_connection: u32,
    /// Bytes of request-body scan windows held at once by one connection's requests; a
    /// request waits for room (bounded by `body_idle_timeout`), so many HTTP/2 streams cannot
    /// each hold a full window.
    pub body_scan_memory_per_connection: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter directive, e.g. `info` or `credproxy_proxy=debug,info`.
    pub level: String,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            max_header_bytes: 64 * 1024,
            max_connections: 4096,
            shutdown_grace: Duration::from_secs(30),
            body_scan_window: 1024 * 1024,
            body_idle_timeout: Duration::from_secs(30),
            max_injected_body_bytes: 32 * 1024 * 1024,
            max_connections_per_identity: 1024,
            max_streams_per_identity: 1024,
            max_streams_per_connection: 100,
            body_scan_memory_per_connection: 8 * 1024 * 1024,
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            extra_ca_files: Vec::new(),
            resolve: BTreeMap::new(),
            allow_private_networks: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            response_header_timeout: Duration::from_secs(300),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 32,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

/// Default leaf validity and cache size.
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_LEAF_CACHE_SIZE: usize = 1024;

impl Config {
    /// Parse and validate configuration text. `base_dir` anchors relative paths.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
        let raw = raw::parse(text)?;
        validate::validate(raw, base_dir)
    }

    /// Read, parse and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::one(ConfigError::new(
                "",
                format!("cannot read {}: {e}", path.display()),
            ))
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Config::parse(&text, base)
    }
}

#[cfg(test)]
mod tests;
