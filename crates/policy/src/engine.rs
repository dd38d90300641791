//! Compiling a policy generation and evaluating requests against it.
//!
//! # How the execution limit is enforced
//!
//! regorus has a cooperative execution timer: the interpreter counts work units (statements,
//! expressions, loop iterations, calls) and every [`CHECK_INTERVAL`] units compares the
//! monotonic clock with the budget, failing the evaluation with
//! [`regorus::LimitError::TimeLimitExceeded`] once it is spent. The evaluation therefore
//! stops *on the thread that runs it*, with no watchdog thread, no thread hand-off on the hot
//! path and nothing left running after a timeout. The budget covers the whole decision:
//! `allow` gets the full limit and `deny_reasons` what is left of it.
//!
//! What the timer cannot interrupt (a recursive function, one builtin call doing unbounded
//! work) is closed off by [`crate::guard`]. As a last line, an evaluation that completes but
//! took longer than the limit (a slow builtin between two checks) is reported as a timeout
//! too, so "over the limit" always means "denied". A runaway evaluation occupies its calling
//! thread for about the limit and no longer; other evaluations, on other threads, are not
//! affected, since each evaluation works on its own copy of the engine.
//!
//! # The decision cache
//!
//! Each generation caches decisions keyed by exactly the parts of the input its policy reads
//! (see [`crate::cache`] and [`crate::reads`]): a request that repeats an earlier one in
//! everything the policy can see gets the earlier decision without evaluating again. A policy
//! that calls a builtin whose result is not a function of its arguments (`time.now_ns`,
//! `rand.intn`, …) or uses `with` on anything but `input` gets no cache. Every evaluation that
//! does run is bounded by the limit as described above; a cached decision is one the policy
//! gave, within the limit, for the same values.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, LimitError, Value};

use crate::cache::{CacheStats, DecisionCache};
use crate::error::PolicyError;
use crate::guard;
use crate::input::PolicyInput;
use crate::reads::{self, Reads};
use crate::source::PolicySource;

/// The Rego package credproxy queries.
pub const PACKAGE: &str = "credproxy.authz";
/// The rule that must be exactly `true` for a request to go ahead.
pub const ALLOW_RULE: &str = "data.credproxy.authz.allow";
/// The rule holding the set of sentences that explain a refusal.
pub const DENY_REASONS_RULE: &str = "data.credproxy.authz.deny_reasons";

/// The reason given when a policy refuses without saying why.
const DEFAULT_DENY_REASON: &str = "denied by policy";

/// Work units between two clock reads. A clock read costs tens of nanoseconds and a unit
/// well under a microsecond, so 32 keeps the overhead negligible while overshooting the
/// limit by microseconds at most.
const CHECK_INTERVAL: NonZeroU32 = match NonZeroU32::new(32) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// True only when `allow` was exactly `true` and `deny_reasons` was empty.
    pub allow: bool,
    /// Sorted and deduplicated. Never empty when `allow` is false: a policy that refuses
    /// without a reason gets `"denied by policy"`.
    pub deny_reasons: Vec<String>,
}

/// Options of [`PolicyEngine::compile_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileOptions {
    /// Cache decisions when the policy allows it (the default). Off, every request is
    /// evaluated; tests compare the two.
    pub decision_cache: bool,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            decision_cache: true,
        }
    }
}

/// One compiled policy generation.
///
/// Cheap to clone (an `Arc`) and `Send + Sync`: the proxy keeps one per generation and calls
/// [`PolicyEngine::evaluate`] from any number of tasks at once. regorus evaluation needs a
/// mutable engine, so each evaluation clones the prepared regorus engine, which shares the
/// compiled modules and schedule and copies only small per-evaluation state.
#[derive(Clone)]
pub struct PolicyEngine {
    inner: Arc<Compiled>,
}

struct Compiled {
    /// Parsed, analysed and prepared: clones skip straight to evaluation.
    engine: Engine,
    hash: String,
    limit: Duration,
    files: Vec<String>,
    /// Whether any file defines `deny_reasons`; regorus fails on an undefined rule path
    /// rather than returning undefined, and a policy need not give reasons.
    has_deny_reasons: bool,
    /// `Ok`: this generation's decision cache. `Err`: why there is none.
    cache: Result<DecisionCache, String>,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("hash", &self.inner.hash)
            .field("limit", &self.inner.limit)
            .field("files", &self.inner.files)
            .field("cache", &self.cache_description())
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// Compiles the serving files of `src` (every file but `*_test.rego`) into a new
    /// generation whose evaluations may take at most `limit` each.
    ///
    /// Fails when a file does not parse, the files do not compile together, a function is
    /// recursive, or no file in package `credproxy.authz` defines `allow`. All of this happens
    /// here, once, so that a bad policy is rejected at start-up or reload rather than on the
    /// first request.
    pub fn compile(src: &PolicySource, limit: Duration) -> Result<PolicyEngine, PolicyError> {
        PolicyEngine::compile_with(src, limit, CompileOptions::default())
    }

    /// [`PolicyEngine::compile`] with options.
    pub fn compile_with(
        src: &PolicySource,
        limit: Duration,
        options: CompileOptions,
    ) -> Result<PolicyEngine, PolicyError> {
        let files: Vec<String> = src.serving_files().map(|(name, _)| name.clone()).collect();
        let mut engine = build_engine(src.serving_files(), limit)?;

        let defines = |engine: &Engine, rule: &str| -> Result<bool, PolicyError> {
            let packages = engine
                .get_policy_package_components()
                .map_err(|e| compile_error(&files, &e))?;
            for package in packages {
                if package.components != ["credproxy", "authz"] {
                    continue;
                }
                if engine
                    .has_declared_rule_rooted_at(&package.source_file, rule)
                    .map_err(|e| compile_error(&files, &e))?
                {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        if !defines(&engine, "allow")? {
            return Err(PolicyError::MissingRule {
                rule: ALLOW_RULE.to_owned(),
            });
        }
        let has_deny_reasons = defines(&engine, "deny_reasons")?;

        // Analysis, scheduling and loop hoisting run on first use; do them now so that errors
        // surface here and every clone starts prepared.
        engine
            .compile_with_entrypoint(&regorus::Rc::from(ALLOW_RULE))
            .map_err(|e| compile_error(&files, &e))?;

        let cache = if options.decision_cache {
            match reads::analyse(engine.get_modules()) {
                Reads::Paths(paths) => Ok(DecisionCache::new(paths)),
                Reads::Uncacheable(why) => Err(format!("off: {why}")),
            }
        } else {
            Err("off: disabled by the caller".to_owned())
        };

        let hash = src.hash();
        let engine = PolicyEngine {
            inner: Arc::new(Compiled {
                engine,
                hash,
                limit,
                files,
                has_deny_reasons,
                cache,
            }),
        };
        tracing::debug!(
            hash = %engine.inner.hash,
            files = ?engine.inner.files,
            limit_ms = limit.as_millis() as u64,
            decision_cache = %engine.cache_description(),
            "policy compiled"
        );
        Ok(engine)
    }

    /// Decides one request. Synchronous CPU work, typically tens of microseconds, bounded by
    /// the limit given to [`PolicyEngine::compile`]; no I/O.
    ///
    /// `Ok` carries the policy's decision. `Err` means the policy could not decide (an
    /// evaluation error, the limit, a result of the wrong type); the caller must refuse the
    /// request (503) and log the error, which names the rule and, for evaluation errors, the
    /// file and line.
    ///
    /// With the decision cache on, a request equal to an earlier one in every value the
    /// policy reads gets that earlier decision; errors and timeouts are never cached.
    pub fn evaluate(&self, input: &PolicyInput) -> Result<Decision, PolicyError> {
        let Ok(cache) = &self.inner.cache else {
            return self.evaluate_uncached(input);
        };
        let Some(key) = cache.key(input) else {
            return self.evaluate_uncached(input);
        };
        if let Some(decision) = cache.get(&key) {
            return Ok(decision);
        }
        let decision = self.evaluate_uncached(input)?;
        cache.insert(key, &decision);
        Ok(decision)
    }

    fn evaluate_uncached(&self, input: &PolicyInput) -> Result<Decision, PolicyError> {
        let start = Instant::now();
        let limit = self.inner.limit;
        let mut engine = self.inner.engine.clone();
        engine.set_input(input.to_value());

        let allow = match self.eval_rule(&mut engine, ALLOW_RULE, start)? {
            Value::Bool(b) => b,
            Value::Undefined => false,
            other => return Err(bad_result(ALLOW_RULE, &other, "true or false")),
        };

        let mut deny_reasons = Vec::new();
        if self.inner.has_deny_reasons {
            let remaining = limit.saturating_sub(start.elapsed());
            if remaining.is_zero() {
                return Err(self.timeout(ALLOW_RULE));
            }
            engine.set_execution_timer_config(timer_config(remaining));
            match self.eval_rule(&mut engine, DENY_REASONS_RULE, start)? {
                Value::Undefined => {}
                Value::Set(set) => {
                    for reason in set.iter() {
                        match reason {
                            Value::String(s) => deny_reasons.push(s.to_string()),
                            other => {
                                return Err(bad_result(
                                    DENY_REASONS_RULE,
                                    other,
                                    "a set of strings",
                                ))
                            }
                        }
                    }
                }
                other => return Err(bad_result(DENY_REASONS_RULE, &other, "a set of strings")),
            }
        }
        if start.elapsed() > limit {
            return Err(self.timeout(DENY_REASONS_RULE));
        }

        deny_reasons.sort_unstable();
        deny_reasons.dedup();
        let allow = allow && deny_reasons.is_empty();
        if !allow && deny_reasons.is_empty() {
            deny_reasons.push(DEFAULT_DENY_REASON.to_owned());
        }
        Ok(Decision {
            allow,
            deny_reasons,
        })
    }

    /// Hex SHA-256 of the policy source this generation was compiled from.
    pub fn hash(&self) -> &str {
        &self.inner.hash
    }

    /// The per-evaluation time limit.
    pub fn limit(&self) -> Duration {
        self.inner.limit
    }

    /// The files compiled into this generation (test files excluded), sorted.
    pub fn files(&self) -> &[String] {
        &self.inner.files
    }

    /// The input paths (components after `input`) this generation's decisions are cached
    /// by, or `None` when it caches nothing (see [`PolicyEngine::cache_description`]). An
    /// empty path means the whole input document; an empty list, a policy that reads none
    /// of it.
    pub fn cache_paths(&self) -> Option<&[Vec<String>]> {
        self.inner.cache.as_ref().ok().map(DecisionCache::paths)
    }

    /// The decision cache in one line, for logs and `credproxy policy` output: the paths it
    /// is keyed by (`keyed by input.request.host, input.identity`), or why it is off.
    pub fn cache_description(&self) -> String {
        match &self.inner.cache {
            Err(why) => why.clone(),
            Ok(cache) if cache.paths().is_empty() => {
                "on: the policy reads no input (one decision for every request)".to_owned()
            }
            Ok(cache) => {
                let paths: Vec<String> = cache
                    .paths()
                    .iter()
                    .map(|p| {
                        std::iter::once("input")
                            .chain(p.iter().map(String::as_str))
                            .collect::<Vec<_>>()
                            .join(".")
                    })
                    .collect();
                format!("on: keyed by {}", paths.join(", "))
            }
        }
    }

    /// Counters of this generation's decision cache; `None` when it has none.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.inner.cache.as_ref().ok().map(DecisionCache::stats)
    }

    fn eval_rule(
        &self,
        engine: &mut Engine,
        rule: &str,
        start: Instant,
    ) -> Result<Value, PolicyError> {
        engine.eval_rule(rule.to_owned()).map_err(|e| {
            // An extension or builtin may have turned the limit error into text; the clock
            // settles it.
            if is_time_limit(&e) || start.elapsed() > self.inner.limit {
                self.timeout(rule)
            } else {
                PolicyError::Evaluation {
                    rule: rule.to_owned(),
                    message: format!("{e:#}"),
                }
            }
        })
    }

    fn timeout(&self, rule: &str) -> PolicyError {
        PolicyError::Timeout {
            rule: rule.to_owned(),
            limit: self.inner.limit,
        }
    }
}

/// A fresh regorus engine with credproxy's settings, the builtin guards and `files` added.
/// Shared by serving and by the test runner so that tests run under the same rules.
pub(crate) fn build_engine<'a>(
    files: impl Iterator<Item = &'a (String, String)>,
    limit: Duration,
) -> Result<Engine, PolicyError> {
    let mut engine = Engine::new();
    engine.set_rego_v0(false);
    // `print` would otherwise write to stderr from the evaluation path; gathered prints die
    // with the per-evaluation clone (the test runner reports them).
    engine.set_gather_prints(true);
    engine.set_execution_timer_config(timer_config(limit));
    guard::install_builtin_guards(&mut engine).map_err(|e| PolicyError::Compile {
        file: "(builtin guards)".to_owned(),
        message: format!("{e:#}"),
    })?;
    let mut names = Vec::new();
    for (name, text) in files {
        engine
            .add_policy(name.clone(), text.clone())
            .map_err(|e| PolicyError::Compile {
                file: name.clone(),
                message: format!("{e:#}"),
            })?;
        names.push(name.clone());
    }
    if let Err(recursion) = guard::check_function_recursion(engine.get_modules()) {
        return Err(PolicyError::Compile {
            file: recursion.file,
            message: format!(
                "recursive function call {} (recursion is not allowed in Rego)",
                recursion.cycle.join(" -> ")
            ),
        });
    }
    Ok(engine)
}

pub(crate) fn timer_config(limit: Duration) -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit,
        check_interval: CHECK_INTERVAL,
    }
}

pub(crate) fn is_time_limit(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<LimitError>(),
            Some(LimitError::TimeLimitExceeded { .. })
        )
    })
}

/// A compile error attributed to the file regorus's message names, or to all files.
pub(crate) fn compile_error(files: &[String], e: &anyhow::Error) -> PolicyError {
    let message = format!("{e:#}");
    let file = files
        .iter()
        .find(|name| message.contains(name.as_str()))
        .cloned()
        .unwrap_or_else(|| files.join(", "));
    PolicyError::Compile { file, message }
}

fn bad_result(rule: &str, got: &Value, expected: &'static str) -> PolicyError {
    const MAX: usize = 80;
    let mut got = got
        .to_json_str()
        .unwrap_or_else(|_| "an unprintable value".to_owned());
    if got.len() > MAX {
        let mut cut = MAX;
        while !got.is_char_boundary(cut) {
            cut -= 1;
        }
        got.truncate(cut);
        got.push('…');
    }
    PolicyError::BadResult {
        rule: rule.to_owned(),
        got,
        expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone>() {}

    #[test]
    fn engine_is_send_sync_and_clone() {
        assert_send_sync::<PolicyEngine>();
        assert_send_sync::<Engine>();
    }
}
