//! The integration-test harness (a dev-dependency only): where a test gets a proxy, its
//! clients and a typed request helper.
//!
//! - `proxy`: `Harness::with(Setup { .. })` starts a test PKI, a TLS and a plain upstream
//!   (`credproxy_testkit::Upstream`) and the proxy in-process on OS-assigned ports, configured
//!   through the same YAML path as production (`Setup` adds allowlist entries, credentials,
//!   `env:` values, policy, listeners, …; `Harness::reload` edits the running configuration).
//! - `client`: the agent's side. `h.get(url).header(..).send().await` runs curl through the
//!   proxy as the default agent and returns a `Response` (CONNECT status, status, the proxy's
//!   `x-credproxy-reason`, headers, body); `h.curl(&[..])` is the escape hatch for tests about
//!   curl itself; `Client` points the same at another address (a bridge in front of the
//!   proxy); rustls and reqwest configurations trust the proxy CA.
//! - `logs`: every log line of the test binary, for the no-secret-in-logs checks.
#![allow(clippy::unwrap_used)]

pub mod client;
pub mod logs;
pub mod proxy;

pub use client::{client_config, Client, Curl, Request, Response};
pub use logs::Logs;
pub use proxy::{Harness, MapEnv, Setup, AGENT, HOST, OTHER, PLAIN, ROLE};
