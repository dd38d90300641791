//! Hot reload: a new configuration validated and compiled into a [`Generation`] and swapped
//! in atomically; what a reload cannot change is compared with the start-up configuration
//! and reported.

use std::sync::Arc;

use credproxy_config::{Config, Limits, UpstreamConfig};
use tracing::{info, warn};

use crate::creds;
use crate::metrics::{self};
use crate::{Generation, Shared};

/// Applies a new configuration to a running proxy. Cheap to clone.
#[derive(Clone)]
pub struct ReloadHandle {
    pub(crate) shared: Arc<Shared>,
}

/// Why a reload was refused; the running generation keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid credentials: {0}")]
    Credentials(String),
    #[error("cannot load the policy")]
    Policy(#[source] credproxy_policy::PolicyError),
    #[error("credential {credential:?} is bound to {name}, an internal service of the running proxy; an internal service never receives an injected credential")]
    CredentialForInternalService { credential: String, name: String },
}

impl ReloadHandle {
    /// Validate and compile everything a generation holds (allowlist, credentials, policy),
    /// then swap it in atomically. Requests in flight finish under the generation they
    /// started with; the next request, in a new or an already-open tunnel, uses the new one.
    /// Sections that cannot change while running (listeners, CA, upstream, identity, secrets
    /// backend, audit, limits) are compared and reported, not applied.
    pub fn reload(&self, config: Config) -> Result<u64, ReloadError> {
        let result = self.build(config);
        let label = if result.is_ok() { "ok" } else { "error" };
        self.shared
            .metrics
            .reloads
            .get_or_create(&metrics::ReloadLabels { result: label })
            .inc();
        result
    }

    fn build(&self, config: Config) -> Result<u64, ReloadError> {
        // Internal services need a restart to change; the running ones stay credential-free
        // whatever the new file says.
        for name in self.shared.internal.names() {
            for c in &config.credentials {
                let bound = [443, 80]
                    .into_iter()
                    .filter_map(|p| credproxy_core::Authority::new(name, p).ok())
                    .any(|a| c.bound_domains.allows(&a));
                if bound {
                    return Err(ReloadError::CredentialForInternalService {
                        credential: c.id.clone(),
                        name: name.to_string(),
                    });
                }
            }
        }
        let creds =
            creds::Credentials::new(config.credentials).map_err(ReloadError::Credentials)?;
        let policy = config.policy.load().map_err(ReloadError::Policy)?;
        let s = &self.shared.startup;
        let restart: Vec<&str> = [
            ("listeners", s.listeners != config.listeners),
            ("ca", s.ca != config.ca),
            ("upstream", s.upstream != config.upstream),
            ("identity", s.identity != config.identity),
            ("secrets", s.secrets != config.secrets),
            ("audit", s.audit != config.audit),
            ("limits", s.limits != config.limits),
            (
                "internal_services",
                s.internal_services != config.internal_services,
            ),
        ]
        .into_iter()
        .filter_map(|(section, changed)| changed.then_some(section))
        .collect();
        if !restart.is_empty() {
            warn!(sections = ?restart, "these sections changed but need a restart to apply; the rest of the new configuration is active");
        }
        let id = self.shared.generation().id + 1;
        let hash = policy.hash().to_string();
        let cache = policy.cache_description();
        // A generation whose secret values are all known already serves at once; one with new
        // sources waits for the loader (woken below).
        let ready = self.shared.scrub.covers(&creds);
        self.shared.gen.store(Arc::new(Generation {
            id,
            allowlist: config.allowed_domains,
            creds,
            policy,
            scrub_ready: std::sync::atomic::AtomicBool::new(ready),
        }));
        self.shared.scrub.wake();
        self.shared.generations.send_replace(id);
        self.shared.metrics.generation.set(id as i64);
        info!(generation = id, policy = %hash, decision_cache = %cache, "configuration reloaded");
        Ok(id)
    }

    /// Count a reload refused before it reached the proxy (the file did not validate).
    pub fn record_refused(&self) {
        self.shared
            .metrics
            .reloads
            .get_or_create(&metrics::ReloadLabels { result: "error" })
            .inc();
    }

    /// The active generation's id and policy hash.
    pub fn active(&self) -> (u64, String) {
        let g = self.shared.generation();
        (g.id, g.policy.hash().to_string())
    }
}

/// The sections of the start-up configuration that a reload cannot change.
pub(crate) struct Startup {
    pub(crate) listeners: Vec<credproxy_config::ListenerConfig>,
    pub(crate) ca: credproxy_config::CaConfig,
    pub(crate) upstream: UpstreamConfig,
    pub(crate) identity: Option<credproxy_config::IdentityConfig>,
    pub(crate) secrets: credproxy_config::SecretsConfig,
    pub(crate) audit: Option<credproxy_config::AuditConfig>,
    pub(crate) limits: Limits,
    pub(crate) internal_services:
        std::collections::BTreeMap<String, credproxy_config::InternalServiceConfig>,
}
