//! Authorization policy for credproxy: load Rego files, compile them once per policy
//! generation, build the input document for a request and evaluate it to a [`Decision`].
//!
//! Policies are evaluated natively with [`regorus`]. The proxy asks package
//! `credproxy.authz` two questions for every request, with or without credentials:
//! `allow` (must be exactly `true`) and `deny_reasons` (a set of sentences). The input
//! document ([`PolicyInput`]) is versioned ([`INPUT_VERSION`]) and described in
//! `docs/policy.md` and by the JSON schema returned from [`input_schema`].
//!
//! Invariant: **the policy crate does no I/O on the evaluation path; anything but an
//! explicit allow is a deny.** [`PolicyEngine::evaluate`] reads no files, opens no sockets
//! and prints nothing (Rego `print` output is gathered and dropped). An undefined or false
//! `allow`, a non-empty `deny_reasons`, an evaluation error and an evaluation that exceeds
//! the time limit all refuse the request; the last two as errors, which the proxy answers
//! with 503 (`policy_error` / `policy_timeout`, see [`PolicyError::reason`]).
//!
//! Loading ([`PolicySource::load_dir`]) reads files and happens at start-up or on reload,
//! never per request.

mod cache;
mod config;
mod engine;
mod error;
mod guard;
mod input;
mod reads;
mod source;
mod testing;
mod walk;

pub use cache::{CacheStats, MAX_ENTRIES as CACHE_MAX_ENTRIES};
pub use config::{PolicyConfig, DEFAULT_EVAL_LIMIT, MAX_EVAL_LIMIT};
pub use engine::{CompileOptions, Decision, PolicyEngine, ALLOW_RULE, DENY_REASONS_RULE, PACKAGE};
pub use error::PolicyError;
pub use input::{
    input_schema, CredentialInput, IdentityInput, ListenerInput, PolicyInput, RequestInput,
    INPUT_VERSION,
};
pub use source::{builtin_files, PolicySource};
pub use testing::{run_tests, TestOutcome, TEST_LIMIT};
