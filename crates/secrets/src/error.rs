//! The store's error type. Every message names the source (path, field, variable), never a
//! value; OpenBao's own error strings are included because they are fixed texts such as
//! "permission denied" that do not echo request data.

use std::path::PathBuf;
use std::sync::Arc;

/// Why a secret could not be produced. `Clone` so one failed backend request can be handed to
/// every caller that was waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The configuration cannot work (bad address, unreadable CA file, no runtime …).
    #[error("invalid secrets configuration: {0}")]
    Config(String),

    #[error("secret file {} not found", path.display())]
    FileNotFound { path: PathBuf },

    #[error("cannot read secret file {}: {source}", path.display())]
    FileRead {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },

    #[error("secret file {} is empty", path.display())]
    FileEmpty { path: PathBuf },

    #[error("environment variable {name} is not set")]
    EnvNotSet { name: String },

    #[error("environment variable {name} is empty")]
    EnvEmpty { name: String },

    #[error("{what} needs openbao, but secrets.openbao is not configured")]
    OpenBaoNotConfigured { what: String },

    #[error("invalid openbao path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },

    /// No valid token: the last login failed, or none finished within the request timeout.
    #[error("cannot read {what}: not authenticated to openbao ({detail})")]
    NotAuthenticated { what: String, detail: String },

    /// OpenBao could not be reached, timed out, or answered with a server error.
    #[error("cannot read {what}: openbao unavailable: {detail}")]
    Unavailable { what: String, detail: String },

    /// The token is valid but its policy does not allow reading this path.
    #[error("cannot read {what}: openbao denied permission (check the proxy's policy)")]
    PermissionDenied { what: String },

    #[error("{what} not found in openbao")]
    NotFound { what: String },

    #[error("{what}: the secret has no field {field:?}")]
    FieldMissing { what: String, field: String },

    #[error("{what}: field {field:?} is not a string")]
    FieldNotString { what: String, field: String },

    #[error("{what}: field {field:?} is empty")]
    FieldEmpty { what: String, field: String },
}

impl SecretError {
    /// Whether the value may exist but could not be read now (the backend is down, the token
    /// is refused or lacks permission, the file exists but cannot be read), as opposed to
    /// there being no value at all (unset variable, missing file or field, bad path). The
    /// proxy's scrub set fails closed on the first kind only: a value it cannot read is a value
    /// it cannot scrub.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SecretError::FileRead { .. }
                | SecretError::NotAuthenticated { .. }
                | SecretError::Unavailable { .. }
                | SecretError::PermissionDenied { .. }
        )
    }

    /// Stable label for metrics, logs and the agent-facing rejection; never renamed.
    ///
    /// `secret_unavailable`: the backend is down, auth is invalid, a timeout, or a
    /// configuration that cannot serve this source. `secret_not_found`: the file, variable or
    /// KV secret does not exist. `secret_invalid`: it exists but holds no usable value.
    pub fn reason(&self) -> &'static str {
        self.failure().reason()
    }

    /// The typed form of [`SecretError::reason`], carried by the proxy's refusal.
    pub fn failure(&self) -> credproxy_core::SecretFailure {
        use credproxy_core::SecretFailure;
        match self {
            SecretError::Config(_)
            | SecretError::FileRead { .. }
            | SecretError::OpenBaoNotConfigured { .. }
            | SecretError::NotAuthenticated { .. }
            | SecretError::Unavailable { .. }
            | SecretError::PermissionDenied { .. } => SecretFailure::Unavailable,
            SecretError::FileNotFound { .. }
            | SecretError::EnvNotSet { .. }
            | SecretError::NotFound { .. } => SecretFailure::NotFound,
            SecretError::FileEmpty { .. }
            | SecretError::EnvEmpty { .. }
            | SecretError::InvalidPath { .. }
            | SecretError::FieldMissing { .. }
            | SecretError::FieldNotString { .. }
            | SecretError::FieldEmpty { .. } => SecretFailure::Invalid,
        }
    }
}
