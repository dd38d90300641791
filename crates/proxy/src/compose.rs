//! Composition: the one place the leaf crates (tls, listen, identity, secrets, policy,
//! audit, scrub) are built from the validated configuration and wired into [`Shared`].

use std::sync::Arc;

use credproxy_config::Config;
use credproxy_listen::Listener;
use credproxy_tls::{Ca, LeafCache};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::connector::{GuardedConnector, SystemResolver};
use crate::metrics::{self, Metrics};
use crate::reload::Startup;
use crate::{creds, internal, limits, listener_token, scrub_set};
use crate::{Generation, Proxy, ProxyError, ProxyOptions, Shared};

impl Proxy {
    /// Load the CA, build the upstream client and bind every listener. Fails if the CA
    /// cannot be loaded: there is no built-in CA.
    pub async fn bind(config: Config, options: ProxyOptions) -> Result<Proxy, ProxyError> {
        let ca = Ca::load(&config.ca.cert_file, &config.ca.key_file).map_err(ProxyError::Ca)?;
        let leaf_cache = Arc::new(
            LeafCache::new(
                Arc::new(ca),
                config.ca.leaf_cache_size,
                config.ca.leaf_validity,
                vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            )
            .map_err(ProxyError::Ca)?,
        );
        let roots = credproxy_tls::upstream_root_store(&config.upstream.extra_ca_files)
            .map_err(ProxyError::UpstreamTls)?;
        let resolver = options.resolver.unwrap_or_else(|| Arc::new(SystemResolver));
        let guarded = GuardedConnector::new(
            resolver,
            config.upstream.resolve.clone(),
            config.upstream.allow_private_networks.clone(),
            config.upstream.connect_timeout,
        );
        let client = {
            let tls = credproxy_tls::client_config_with_roots(roots.clone(), vec![]);
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .wrap_connector(guarded.clone());
            Client::builder(TokioExecutor::new())
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(config.upstream.pool_idle_timeout)
                .pool_max_idle_per_host(config.upstream.pool_max_idle_per_host)
                .build(https)
        };
        // WebSocket upgrades need HTTP/1.1 and a connection of their own.
        let ws_client = {
            let tls = credproxy_tls::client_config_with_roots(roots, vec![]);
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(guarded);
            Client::builder(TokioExecutor::new())
                .timer(TokioTimer::new())
                .pool_max_idle_per_host(0)
                .build(https)
        };

        let mut listeners = Vec::new();
        for l in &config.listeners {
            let options = credproxy_listen::BindOptions {
                unix_mode: l.unix_mode,
                peer_uids: l.peer_uids.clone(),
            };
            listeners.push(Listener::bind_with(&l.name, &l.addr, options).await?);
        }
        let admin = match &config.admin {
            Some(a) => {
                Some(
                    TcpListener::bind(a.addr)
                        .await
                        .map_err(|source| ProxyError::Admin {
                            addr: a.addr,
                            source,
                        })?,
                )
            }
            None => None,
        };
        if config.allowed_domains.is_empty() {
            warn!("allowed_domains is empty: every destination will be refused");
        }
        // Listener tokens start before the verifier: dev issuer keys they load are trusted by
        // it. The refreshers fetch in the background; the proxy does not wait for them.
        let (listener_tokens, dev_jwks) =
            listener_token::ListenerTokens::start(&config, &options.clock)?;
        let mut metrics = Metrics::new(leaf_cache.clone(), listener_tokens.handles());
        for l in &mut listeners {
            let refused = metrics.refused_connections.clone();
            l.on_refused(Arc::new(move |r: &credproxy_listen::Refused| {
                refused
                    .get_or_create(&metrics::RefusedLabels {
                        listener: r.listener.clone(),
                        reason: r.reason,
                    })
                    .inc();
            }));
        }
        let creds = creds::Credentials::new(config.credentials).map_err(ProxyError::Credentials)?;
        let secrets = credproxy_secrets::SecretStore::new(
            config.secrets.store.clone(),
            options
                .env
                .unwrap_or_else(|| Arc::new(credproxy_secrets::ProcessEnv)),
        )
        .map_err(ProxyError::Secrets)?;
        let policy = config.policy.load().map_err(ProxyError::Policy)?;
        info!(policy = %policy.hash(), decision_cache = %policy.cache_description(), "policy loaded");
        let verifier = match &config.identity {
            None => {
                warn!("identity.danger_allow_anonymous: agents are NOT authenticated; never use this with real credentials");
                None
            }
            Some(id) => Some(build_verifier(id, &dev_jwks, options.clock.clone())?),
        };
        let listener_agents = config
            .listeners
            .iter()
            .filter_map(|l| l.agent.clone().map(|a| (l.name.clone(), a)))
            .collect();
        let audit = match &config.audit {
            Some(a) => {
                let mut cfg = a.spool.clone();
                cfg.clock = options.clock.clone();
                Some(credproxy_audit::spool::AuditSpool::open(cfg).map_err(ProxyError::Audit)?)
            }
            None => {
                if creds.set.is_some() {
                    warn!("audit is not configured: credential uses are not recorded");
                }
                None
            }
        };
        let exporter = match (
            &audit,
            config.audit.as_ref().and_then(|a| a.temporal.as_ref()),
        ) {
            (Some(spool), Some(t)) => Some(credproxy_audit::temporal::Exporter::spawn(
                spool.clone(),
                t.clone(),
            )),
            _ => None,
        };
        let startup = Startup {
            listeners: config.listeners.clone(),
            ca: config.ca.clone(),
            upstream: config.upstream.clone(),
            identity: config.identity.clone(),
            secrets: config.secrets.clone(),
            audit: config.audit.clone(),
            limits: config.limits.clone(),
            internal_services: config.internal_services.clone(),
        };
        let scrub_ready = std::sync::atomic::AtomicBool::new(creds.configs.is_empty());
        let initial_wait = config
            .secrets
            .store
            .openbao
            .as_ref()
            .map_or(std::time::Duration::from_secs(5), |o| o.request_timeout)
            + std::time::Duration::from_secs(1);
        let gen = Arc::new(arc_swap::ArcSwap::from_pointee(Generation {
            id: 1,
            allowlist: config.allowed_domains,
            creds,
            policy,
            scrub_ready,
        }));
        metrics.watch_policy_cache(gen.clone());
        let shared = Arc::new(Shared {
            clock: options.clock.clone(),
            startup,
            audit,
            _exporter: exporter,
            verifier,
            listener_agents,
            listener_tokens,
            internal: internal::InternalServices::new(config.internal_services.values()),
            generations: tokio::sync::watch::channel(1).0,
            gen,
            secrets,
            scrub: scrub_set::ScrubSet::new(
                config.secrets.scrub_retention,
                config.secrets.scrub_refresh,
            ),
            leaf_cache,
            client,
            ws_client,
            metrics,
            identity_conns: limits::PerIdentity::new(config.limits.max_connections_per_identity),
            identity_streams: limits::PerIdentity::new(config.limits.max_streams_per_identity),
            limits: config.limits.clone(),
            upstream: config.upstream,
        });
        // The scrub set is loaded before the first request is served (bounded by the secret
        // store's timeout; if it does not answer, requests are refused until it does).
        scrub_set::spawn_loader(&shared);
        let gen = shared.generation();
        if !shared.scrub.wait_ready(&gen, initial_wait).await {
            warn!("not every credential value could be read at start; requests are refused (503 scrub_set_unavailable) until they can");
        }
        Ok(Proxy {
            shared,
            listeners,
            admin,
            limits: config.limits,
        })
    }
}

/// The token verifier: discovery in the background, or a fixed JWKS: the JWKS file and the
/// public keys of the dev issuer keys listeners use (`agent_token.dev_issuer`).
fn build_verifier(
    id: &credproxy_config::IdentityConfig,
    dev_jwks: &[String],
    clock: credproxy_core::Clock,
) -> Result<credproxy_identity::Verifier, ProxyError> {
    let cfg = id.oidc.clone();
    let mut docs = dev_jwks.to_vec();
    if let Some(path) = &id.jwks_file {
        let jwks = std::fs::read_to_string(path).map_err(|source| ProxyError::JwksFile {
            path: path.clone(),
            source,
        })?;
        docs.push(jwks);
    }
    match docs.as_slice() {
        [] => credproxy_identity::Verifier::with_clock(cfg, clock).map_err(ProxyError::Identity),
        [one] => credproxy_identity::Verifier::with_static_jwks_and_clock(cfg, one, clock)
            .map_err(ProxyError::Identity),
        many => {
            let merged = listener_token::merge_jwks(many)
                .map_err(|e| ProxyError::Identity(credproxy_identity::IdentityError::Jwks(e)))?;
            credproxy_identity::Verifier::with_static_jwks_and_clock(cfg, &merged, clock)
                .map_err(ProxyError::Identity)
        }
    }
}
