//! Errors of the policy crate.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong loading, compiling or evaluating a policy.
///
/// Messages name the policy file and the rule where they are known, so that the one log line
/// an operator sees points at what to fix. They never contain input values: the input
/// document holds no secrets, but it does hold request details the audit log already records.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A policy file or the policy directory could not be read.
    #[error("cannot read policy file {}", file.display())]
    Load {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A policy file does not parse or the policies do not compile together. `file` is
    /// the file regorus pointed at, or every file name joined by ", " when it did not say.
    #[error("policy {file} does not compile: {message}")]
    Compile { file: String, message: String },

    /// The policy directory holds no `*.rego` file to serve (`*_test.rego` files don't count).
    #[error("no policy files (*.rego other than *_test.rego) in {}", dir.display())]
    NoPolicies { dir: PathBuf },

    /// The policies compile but no file in package `credproxy.authz` defines `rule`.
    #[error("no policy file in package credproxy.authz defines rule {rule}")]
    MissingRule { rule: String },

    /// Evaluating `rule` failed (a builtin error, a conflict between rule values, …). The
    /// message from regorus carries the file, line and column.
    #[error("policy rule {rule} failed: {message}")]
    Evaluation { rule: String, message: String },

    /// The evaluation ran past its time limit while evaluating `rule`.
    #[error("policy rule {rule} exceeded the evaluation limit of {limit:?}")]
    Timeout { rule: String, limit: Duration },

    /// `rule` evaluated to a value of the wrong type.
    #[error("policy rule {rule} returned {got}, expected {expected}")]
    BadResult {
        rule: String,
        got: String,
        expected: &'static str,
    },
}

impl PolicyError {
    /// A stable label for metrics, audit records and the 503 body the proxy sends:
    /// `policy_timeout` for [`PolicyError::Timeout`], `policy_error` for everything else.
    pub fn reason(&self) -> &'static str {
        self.failure().reason()
    }

    /// The typed form of [`PolicyError::reason`], carried by the proxy's refusal.
    pub fn failure(&self) -> credproxy_core::PolicyFailure {
        use credproxy_core::PolicyFailure;
        match self {
            PolicyError::Timeout { .. } => PolicyFailure::Timeout,
            PolicyError::Load { .. }
            | PolicyError::Compile { .. }
            | PolicyError::NoPolicies { .. }
            | PolicyError::MissingRule { .. }
            | PolicyError::Evaluation { .. }
            | PolicyError::BadResult { .. } => PolicyFailure::Error,
        }
    }
}
