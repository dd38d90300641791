//! Where credential values come from: OpenBao KV v2 (token-file or AppRole auth, with token
//! renewal and re-login), files and environment variables, behind one cached [`SecretStore`].
//!
//! The proxy asks the store for a [`SecretSource`] on every request that injects a credential;
//! a warm credential is answered from memory with no I/O, and concurrent misses for one source
//! share one backend request. `provision` sets up an OpenBao server for the proxy (KV mount,
//! a read-only policy over exactly the credential paths, an AppRole).
//!
//! Invariant: nothing stale is served past `cache_ttl`; a failed refresh fails closed. Once a
//! cached value is older than the TTL it is dropped (and zeroized) before the refresh result is
//! known, so a backend outage turns into [`SecretError`]s with reason `secret_unavailable`,
//! never into an old credential.

mod auth;
mod error;
mod http;
mod kv;
pub mod provision;
mod store;

use std::path::PathBuf;
use std::time::Duration;

pub use error::SecretError;
pub use kv::{validate_kv_path, KvPathError};
pub use store::{SecretStats, SecretStore};

/// Default for [`SecretsConfig::cache_ttl`].
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(30);
/// Default for [`OpenBaoConfig::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`OpenBaoConfig::kv_mount`].
pub const DEFAULT_KV_MOUNT: &str = "secret";
/// Default AppRole auth mount.
pub const DEFAULT_APPROLE_MOUNT: &str = "approle";

/// Where one credential's value lives. Hash/Eq so it can key the cache: two credentials with
/// the same source share one cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecretSource {
    /// A file holding the value; trailing `\n`/`\r\n` are trimmed (editors and `echo` add one).
    File(PathBuf),
    /// An environment variable, read through the store's [`EnvSource`]; used verbatim.
    Env(String),
    /// A field of a KV v2 secret at `<kv_mount>/data/<path>`, optionally pinned to a version.
    OpenBao {
        path: String,
        field: String,
        version: Option<u64>,
    },
}

impl SecretSource {
    /// A description for logs and errors: "file /run/x", "env ANTHROPIC_API_KEY",
    /// "openbao secret/openclaw/x#key" (with "@v3" when pinned). Never contains a value.
    ///
    /// The OpenBao form shows the default mount name; use [`SecretSource::describe_with_mount`]
    /// when the configured mount is known.
    pub fn describe(&self) -> String {
        self.describe_with_mount(DEFAULT_KV_MOUNT)
    }

    /// Like [`SecretSource::describe`], naming the given KV mount.
    pub fn describe_with_mount(&self, kv_mount: &str) -> String {
        match self {
            SecretSource::File(path) => format!("file {}", path.display()),
            SecretSource::Env(name) => format!("env {name}"),
            SecretSource::OpenBao {
                path,
                field,
                version,
            } => {
                let mut s = format!("openbao {kv_mount}/{path}#{field}");
                if let Some(v) = version {
                    s.push_str(&format!("@v{v}"));
                }
                s
            }
        }
    }
}

/// How the proxy authenticates to OpenBao.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenBaoAuth {
    /// A token in a file, maintained by someone else (an operator or an agent sink). The file
    /// is re-read when its modification time changes and whenever the token is refused.
    TokenFile(PathBuf),
    /// AppRole login. Both files are re-read on every login, so an operator rotates the
    /// secret-id by replacing the file; the proxy picks it up at its next login.
    AppRole {
        role_id_file: PathBuf,
        secret_id_file: PathBuf,
        /// Auth mount, usually [`DEFAULT_APPROLE_MOUNT`].
        mount: String,
    },
}

/// How to reach and read OpenBao.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenBaoConfig {
    /// Base URL, `https://host:port` (plain `http://` is accepted for loopback dev servers and
    /// warned about otherwise).
    pub address: String,
    /// Extra CA certificates (PEM) trusted in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// Sent as `X-Vault-Namespace` on every request.
    pub namespace: Option<String>,
    pub auth: OpenBaoAuth,
    /// KV v2 mount, usually [`DEFAULT_KV_MOUNT`].
    pub kv_mount: String,
    /// Bound on each HTTP request and on one whole [`SecretStore::get`] from OpenBao.
    pub request_timeout: Duration,
}

/// Everything the store needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretsConfig {
    pub openbao: Option<OpenBaoConfig>,
    /// How long a fetched value may be served from memory. Zero disables caching (every
    /// `get` goes to the source; concurrent ones still share one request).
    pub cache_ttl: Duration,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        SecretsConfig {
            openbao: None,
            cache_ttl: DEFAULT_CACHE_TTL,
        }
    }
}

/// Source of environment variables. Injected so tests can supply variables without mutating
/// the process environment (which is racy across test threads).
pub trait EnvSource: Send + Sync + 'static {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// A fixed map of variables, for tests and embedders that resolve variables up front.
impl<S: std::hash::BuildHasher + Send + Sync + 'static> EnvSource
    for std::collections::HashMap<String, String, S>
{
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

#[cfg(test)]
mod tests;
