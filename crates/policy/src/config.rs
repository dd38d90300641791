//! [`PolicyConfig`]: where the policy comes from and how long one evaluation may take (the
//! configuration file's `policy` section), with its defaults and bounds.

use std::path::PathBuf;
use std::time::Duration;

use crate::{PolicyEngine, PolicyError, PolicySource};

/// Default for [`PolicyConfig::eval_limit`].
pub const DEFAULT_EVAL_LIMIT: Duration = Duration::from_millis(100);
/// The largest [`PolicyConfig::eval_limit`] accepted.
pub const MAX_EVAL_LIMIT: Duration = Duration::from_secs(10);

/// The `policy` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Directory of `*.rego` files; the built-in default policy when `None`.
    pub dir: Option<PathBuf>,
    /// Upper bound on one evaluation; exceeding it denies (503).
    pub eval_limit: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            dir: None,
            eval_limit: DEFAULT_EVAL_LIMIT,
        }
    }
}

impl PolicyConfig {
    /// Every rule this configuration breaks, as `(field, reason)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.eval_limit.is_zero() || self.eval_limit > MAX_EVAL_LIMIT {
            out.push(("eval_limit", "must be between 1ms and 10s".to_owned()));
        }
        out
    }

    /// The policy's files: the directory's, or the built-in policy.
    pub fn source(&self) -> Result<PolicySource, PolicyError> {
        match &self.dir {
            Some(dir) => PolicySource::load_dir(dir),
            None => Ok(PolicySource::builtin()),
        }
    }

    /// Load and compile the policy.
    pub fn load(&self) -> Result<PolicyEngine, PolicyError> {
        PolicyEngine::compile(&self.source()?, self.eval_limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_builtin_policy_within_the_bounds() {
        let c = PolicyConfig::default();
        assert!(c.problems().is_empty());
        assert!(c.load().is_ok());
        for bad in [Duration::ZERO, MAX_EVAL_LIMIT + Duration::from_millis(1)] {
            let c = PolicyConfig {
                eval_limit: bad,
                ..PolicyConfig::default()
            };
            assert_eq!(c.problems()[0].0, "eval_limit");
        }
    }
}
