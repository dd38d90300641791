//! The proxy: listeners, the per-request pipeline, the upstream client and the admin
//! endpoints, composed from the leaf crates.
//!
//! Invariant: a request reaches an upstream only after its destination was canonicalised
//! from the CONNECT target (or absolute URI), found in the allowlist, agreed with the inner
//! `Host`/`:authority` and SNI, and resolved to a permitted address; and only over TLS that
//! verified the upstream's certificate for that name. Every refusal is a [`Reject`].

mod audit;
mod authz;
mod body;
mod clock;
mod connector;
mod creds;
mod drain;
pub mod explain;
mod framing;
mod inject;
mod internal;
mod limits;
mod listener_token;
mod metrics;
mod prefixed;
mod request_body;
mod scrub_body;
mod scrub_set;
mod service;
mod websocket;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use credproxy_config::{Config, Limits, UpstreamConfig};
use credproxy_core::{Allowlist, ListenAddr, Reject};
use credproxy_listen::Listener;
use credproxy_tls::{Ca, LeafCache};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{error, info, warn};

pub use body::{Body, BoxError};
use connector::GuardedConnector;
pub use connector::{is_refused, Resolve, SystemResolver};
use metrics::{ListenerLabels, Metrics, RequestLabels};

type UpstreamClient = Client<HttpsConnector<GuardedConnector>, Body>;

/// Failure to start the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot load the MITM CA")]
    Ca(#[source] credproxy_tls::TlsError),
    #[error("cannot build the upstream TLS configuration")]
    UpstreamTls(#[source] credproxy_tls::TlsError),
    #[error(transparent)]
    Listen(#[from] credproxy_listen::ListenError),
    #[error("invalid credentials: {0}")]
    Credentials(String),
    #[error("cannot load the policy")]
    Policy(#[source] credproxy_policy::PolicyError),
    #[error("cannot open the audit spool")]
    Audit(#[source] credproxy_audit::AuditError),
    #[error("cannot set up agent identity verification")]
    Identity(#[source] credproxy_identity::IdentityError),
    #[error("cannot read the JWKS file {path}")]
    JwksFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the secret store")]
    Secrets(#[source] credproxy_secrets::SecretError),
    #[error("cannot bind the admin listener to {addr}")]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What a request is evaluated under. Swapped as a whole (hot reload): a request uses the
/// generation it started with from start to end.
pub(crate) struct Generation {
    /// Increases by one with every successful reload; 1 at start.
    pub(crate) id: u64,
    pub(crate) allowlist: Allowlist,
    pub(crate) creds: creds::Credentials,
    pub(crate) policy: credproxy_policy::PolicyEngine,
    /// Every secret value of `creds` is in the scrub set (set by the scrub-set loader);
    /// until then the generation's requests are refused.
    pub(crate) scrub_ready: std::sync::atomic::AtomicBool,
}

/// State shared by every connection.
pub(crate) struct Shared {
    /// Where token expiry is read (`ProxyOptions::clock`).
    pub(crate) clock: credproxy_core::Clock,
    pub(crate) gen: arc_swap::ArcSwap<Generation>,
    /// The id of the current generation, for what must react to a reload (open WebSockets).
    pub(crate) generations: tokio::sync::watch::Sender<u64>,
    pub(crate) secrets: credproxy_secrets::SecretStore,
    pub(crate) startup: Startup,
    /// The audit spool; `None` when `audit` is not configured.
    pub(crate) audit: Option<credproxy_audit::spool::AuditSpool>,
    _exporter: Option<credproxy_audit::temporal::ExporterHandle>,
    /// `None`: anonymous mode (`identity.danger_allow_anonymous`).
    pub(crate) verifier: Option<credproxy_identity::Verifier>,
    /// Listener name → the only agent allowed on it.
    pub(crate) listener_agents: std::collections::HashMap<String, String>,
    /// Listener name → the token the proxy obtains for its agent (`agent_token`).
    pub(crate) listener_tokens: listener_token::ListenerTokens,
    /// Internal names served over a local Unix socket (`internal_services`).
    pub(crate) internal: internal::InternalServices,
    /// Every secret value that responses are scrubbed of.
    pub(crate) scrub: scrub_set::ScrubSet,
    pub(crate) leaf_cache: Arc<LeafCache>,
    pub(crate) client: UpstreamClient,
    pub(crate) ws_client: UpstreamClient,
    pub(crate) metrics: Metrics,
    pub(crate) limits: Limits,
    pub(crate) upstream: UpstreamConfig,
    /// Connections each identity holds (`limits.max_connections_per_identity`).
    pub(crate) identity_conns: Arc<limits::PerIdentity>,
    /// Requests each identity has in flight (`limits.max_streams_per_identity`).
    pub(crate) identity_streams: Arc<limits::PerIdentity>,
}

impl Shared {
    pub(crate) fn generation(&self) -> Arc<Generation> {
        self.gen.load_full()
    }

    /// Count a placeholder misuse (a sign of prompt injection or exfiltration attempts).
    pub(crate) fn misuse(&self, reject: &Reject) {
        self.metrics
            .misuse
            .get_or_create(&metrics::MisuseLabels {
                kind: reject.reason(),
            })
            .inc();
        warn!(reason = reject.reason(), "placeholder misuse refused");
    }

    /// Count a misuse alarm refused under another reason (e.g. a placeholder the policy does
    /// not grant this identity: the refusal is `policy_denied`, the alarm names the misuse).
    pub(crate) fn misuse_alarm(&self, kind: &'static str) {
        self.metrics
            .misuse
            .get_or_create(&metrics::MisuseLabels { kind })
            .inc();
        warn!(kind, "misuse alarm");
    }

    pub(crate) fn count(&self, outcome: &'static str, reason: &'static str) {
        self.metrics
            .requests
            .get_or_create(&RequestLabels { outcome, reason })
            .inc();
    }
}

/// Options that are not configuration: injection points for tests and embedding.
#[derive(Default, Clone)]
pub struct ProxyOptions {
    /// Name resolution for upstreams; the system resolver when `None`.
    pub resolver: Option<Arc<dyn Resolve>>,
    /// Environment for `env:` secret sources; the process environment when `None`.
    pub env: Option<Arc<dyn credproxy_secrets::EnvSource>>,
    /// Where token expiry is read (the verifier, and the re-check inside tunnels); the system
    /// clock by default. Tests pass an adjustable one to reach an expiry without waiting.
    pub clock: credproxy_core::Clock,
}

/// Applies a new configuration to a running proxy. Cheap to clone.
#[derive(Clone)]
pub struct ReloadHandle {
    shared: Arc<Shared>,
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
        let policy = load_policy(&config.policy).map_err(|e| match e {
            ProxyError::Policy(p) => ReloadError::Policy(p),
            other => ReloadError::Credentials(other.to_string()),
        })?;
        let s = &self.shared.startup;
        let mut restart = Vec::new();
        if s.listeners != config.listeners {
            restart.push("listeners");
        }
        if s.ca != config.ca {
            restart.push("ca");
        }
        if s.upstream != config.upstream {
            restart.push("upstream");
        }
        if s.identity != config.identity {
            restart.push("identity");
        }
        if s.secrets != config.secrets {
            restart.push("secrets");
        }
        if s.audit != config.audit {
            restart.push("audit");
        }
        if s.limits != config.limits {
            restart.push("limits");
        }
        if s.internal_services != config.internal_services {
            restart.push("internal_services");
        }
        if !restart.is_empty() {
            warn!(sections = ?restart, "these sections changed but need a restart to apply; the rest of the new configuration is active");
        }
        let id = self.shared.generation().id + 1;
        let hash = policy.hash().to_string();
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
        info!(generation = id, policy = %hash, "configuration reloaded");
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
    listeners: Vec<credproxy_config::ListenerConfig>,
    ca: credproxy_config::CaConfig,
    upstream: UpstreamConfig,
    identity: Option<credproxy_config::IdentityConfig>,
    secrets: credproxy_config::SecretsConfig,
    audit: Option<credproxy_config::AuditConfig>,
    limits: Limits,
    internal_services: std::collections::BTreeMap<String, credproxy_config::InternalServiceConfig>,
}

/// A proxy with its listeners bound, ready to run.
pub struct Proxy {
    shared: Arc<Shared>,
    listeners: Vec<Listener>,
    admin: Option<TcpListener>,
    limits: Limits,
}

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
        let (listener_tokens, dev_jwks) = listener_token::ListenerTokens::start(&config)?;
        let metrics = Metrics::new(leaf_cache.clone(), listener_tokens.handles());
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
            secrets_config(&config.secrets),
            options
                .env
                .unwrap_or_else(|| Arc::new(credproxy_secrets::ProcessEnv)),
        )
        .map_err(ProxyError::Secrets)?;
        let policy = load_policy(&config.policy)?;
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
                let mut cfg = credproxy_audit::spool::AuditConfig::new(a.path.clone());
                cfg.retention = a.retention;
                cfg.max_size_bytes = a.max_size_bytes;
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
            (Some(spool), Some(t)) => {
                let mut cfg =
                    credproxy_audit::temporal::TemporalConfig::new(temporal_address(&t.address));
                cfg.namespace = t.namespace.clone();
                cfg.task_queue = t.task_queue.clone();
                cfg.signal_timeout = t.signal_timeout;
                Some(credproxy_audit::temporal::Exporter::spawn(
                    spool.clone(),
                    cfg,
                ))
            }
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
            .openbao
            .as_ref()
            .map_or(std::time::Duration::from_secs(5), |o| o.request_timeout)
            + std::time::Duration::from_secs(1);
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
            gen: arc_swap::ArcSwap::from_pointee(Generation {
                id: 1,
                allowlist: config.allowed_domains,
                creds,
                policy,
                scrub_ready,
            }),
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

    /// The bound listeners, by name (TCP ports resolved when `:0` was configured).
    pub fn listener_addrs(&self) -> Vec<(String, ListenAddr)> {
        self.listeners
            .iter()
            .map(|l| (l.info().name.clone(), l.info().addr.clone()))
            .collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// A handle to reload the configuration while the proxy runs.
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serve until `shutdown` resolves, then stop accepting, let open connections finish
    /// for up to `limits.shutdown_grace`, and return.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let drainer = drain::Drainer::new();
        let max_conns = Arc::new(Semaphore::new(self.limits.max_connections));
        let mut tasks = tokio::task::JoinSet::new();
        for listener in self.listeners {
            let shared = self.shared.clone();
            let watcher = drainer.handle();
            let max_conns = max_conns.clone();
            tasks.spawn(accept_loop(shared, listener, watcher, max_conns));
        }
        if let Some(admin) = self.admin {
            tasks.spawn(admin_loop(self.shared.clone(), admin));
        }
        info!("credproxy ready");
        shutdown.await;
        info!("shutting down");
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        if tokio::time::timeout(self.limits.shutdown_grace, drainer.drain())
            .await
            .is_err()
        {
            warn!(
                grace = ?self.limits.shutdown_grace,
                "connections still open after the shutdown grace period; closing them"
            );
        }
        if let Some(spool) = &self.shared.audit {
            if let Err(e) = spool.close().await {
                error!(error = %e, "audit spool did not close cleanly");
            }
        }
    }

    /// Run on a background task; the handle stops it.
    pub fn spawn(self) -> RunningProxy {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let listeners = self.listener_addrs();
        let admin = self.admin_addr();
        let reload = self.reload_handle();
        let task = tokio::spawn(self.run(async move {
            let _ = rx.await;
        }));
        RunningProxy {
            stop: Some(tx),
            task,
            listeners,
            admin,
            reload,
        }
    }
}

/// A proxy running on a background task.
pub struct RunningProxy {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    listeners: Vec<(String, ListenAddr)>,
    admin: Option<SocketAddr>,
    reload: ReloadHandle,
}

impl RunningProxy {
    /// The TCP address of the first TCP listener.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.listeners.iter().find_map(|(_, a)| match a {
            ListenAddr::Tcp(a) => Some(*a),
            _ => None,
        })
    }

    pub fn listeners(&self) -> &[(String, ListenAddr)] {
        &self.listeners
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    pub fn reload_handle(&self) -> &ReloadHandle {
        &self.reload
    }

    /// Wait (at most `timeout`) until the identity provider's keys are loaded, OpenBao, when
    /// configured, is authenticated, and every listener token (`agent_token`) is held; true
    /// when all are.
    pub async fn wait_ready(&self, timeout: std::time::Duration) -> bool {
        let shared = &self.reload.shared;
        let deadline = tokio::time::Instant::now() + timeout;
        let identity = match &shared.verifier {
            Some(v) => v.wait_ready(timeout).await,
            None => true,
        };
        let mut tokens = true;
        for (_, t) in shared.listener_tokens.all() {
            let mut rx = t.token.subscribe();
            let held =
                tokio::time::timeout_at(deadline, rx.wait_for(|_| t.token.current().is_ok())).await;
            tokens &= matches!(held, Ok(Ok(_)));
        }
        identity
            && tokens
            && shared.secrets.wait_openbao_ready(timeout).await
            && shared.scrub.wait_ready(&shared.generation(), timeout).await
    }

    /// Wait until the scrub set has re-read every credential's value twice (so at least once
    /// entirely after this call): tests of `secrets.scrub_refresh`.
    pub async fn wait_scrub_refresh(&self) {
        self.reload.shared.scrub.passes(2).await;
    }

    /// Wait until every audit record queued so far is written (tests, shutdown).
    pub async fn flush_audit(&self) {
        if let Some(spool) = &self.reload.shared.audit {
            let _ = spool.flush().await;
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: Listener,
    watcher: drain::Drain,
    max_conns: Arc<Semaphore>,
) {
    let name = listener.info().name.clone();
    let labels = ListenerLabels {
        listener: name.clone(),
    };
    loop {
        let accepted = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                error!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        shared.metrics.connections.get_or_create(&labels).inc();
        let Ok(permit) = max_conns.clone().try_acquire_owned() else {
            shared.count("rejected", Reject::TooManyConnections.reason());
            warn!(listener = %name, "connection limit reached; refusing connection");
            tokio::spawn(refuse_busy(accepted.stream));
            continue;
        };
        let shared = shared.clone();
        let watcher = watcher.clone();
        let slot = service::ConnSlot::new(shared.clone(), permit);
        tokio::spawn(service::serve_connection(shared, accepted, slot, watcher));
    }
}

/// Answers a connection over `limits.max_connections` through the one response path
/// (`body::reject_response`, served by hyper: status, reason header, request id, one line)
/// for its first request, then closes it. Bounded: whatever the client does, the connection
/// is gone after a second.
async fn refuse_busy(stream: credproxy_listen::Stream) {
    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
        Ok::<_, std::convert::Infallible>(body::reject_response(
            &Reject::TooManyConnections,
            &service::request_id(),
            req.version(),
        ))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), svc);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), conn).await;
}

async fn admin_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(admin(&shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Ready when every dependency that requests may need can answer: the identity provider's
/// keys are loaded, every listener with `agent_token` holds a token that verifies for its
/// agent and, when OpenBao is configured, the proxy holds a valid OpenBao token. Requests
/// that need none of these keep being served either way; this is for orchestration and
/// operators.
async fn readiness(shared: &Shared) -> (u16, &'static str, String) {
    let mut lines = Vec::new();
    let mut ready = true;
    if let Some(v) = &shared.verifier {
        let ok = v.is_ready();
        ready &= ok;
        lines.push(format!(
            "identity: {}",
            if ok { "ready" } else { "keys not loaded" }
        ));
    } else {
        lines.push("identity: anonymous (danger_allow_anonymous)".to_string());
    }
    if let Some(v) = &shared.verifier {
        for (_, t) in shared.listener_tokens.all() {
            let (ok, line) = t.readiness(v).await;
            ready &= ok;
            lines.push(line);
        }
    }
    match shared.secrets.openbao_ready() {
        Some(true) => lines.push("openbao: ready".to_string()),
        Some(false) => {
            ready = false;
            lines.push("openbao: not authenticated".to_string());
        }
        None => {}
    }
    let g = shared.generation();
    let scrub_ready = g.scrub_ready.load(std::sync::atomic::Ordering::Acquire);
    ready &= scrub_ready;
    lines.push(format!(
        "scrub set: {}{}",
        if scrub_ready {
            "ready, "
        } else {
            "not ready, "
        },
        shared.scrub.status()
    ));
    lines.push(format!("generation: {} policy {}", g.id, g.policy.hash()));
    let status = if ready { 200 } else { 503 };
    let head = if ready { "ready" } else { "not ready" };
    (
        status,
        "text/plain",
        format!("{head}\n{}\n", lines.join("\n")),
    )
}

async fn admin(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let (status, ctype, body) = match req.uri().path() {
        "/healthz" => (200, "text/plain", "ok\n".to_string()),
        "/readyz" => readiness(shared).await,
        "/metrics" => (200, "text/plain; version=0.0.4; charset=utf-8", {
            let mut m = shared.metrics.encode();
            // The registry ends with "# EOF"; the audit spool's figures go before it.
            if let Some(spool) = &shared.audit {
                let eof = m.rfind("# EOF").unwrap_or(m.len());
                m.insert_str(eof, &spool.stats().render_prometheus());
            }
            m
        }),
        _ => (
            404,
            "text/plain",
            "not found: try /healthz, /readyz or /metrics\n".into(),
        ),
    };
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
    if let Ok(v) = http::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

/// The secret store's settings from the validated configuration.
fn secrets_config(c: &credproxy_config::SecretsConfig) -> credproxy_secrets::SecretsConfig {
    credproxy_secrets::SecretsConfig {
        cache_ttl: c.cache_ttl,
        openbao: c
            .openbao
            .as_ref()
            .map(|o| credproxy_secrets::OpenBaoConfig {
                address: o.address.clone(),
                ca_file: o.ca_file.clone(),
                namespace: o.namespace.clone(),
                auth: match &o.auth {
                    credproxy_config::OpenBaoAuth::TokenFile(f) => {
                        credproxy_secrets::OpenBaoAuth::TokenFile(f.clone())
                    }
                    credproxy_config::OpenBaoAuth::AppRole {
                        role_id_file,
                        secret_id_file,
                        mount,
                    } => credproxy_secrets::OpenBaoAuth::AppRole {
                        role_id_file: role_id_file.clone(),
                        secret_id_file: secret_id_file.clone(),
                        mount: mount.clone(),
                    },
                },
                kv_mount: o.kv_mount.clone(),
                request_timeout: o.request_timeout,
            }),
    }
}

/// The token verifier: discovery in the background, or a fixed JWKS: the JWKS file and the
/// public keys of the dev issuer keys listeners use (`agent_token.dev_issuer`).
fn build_verifier(
    id: &credproxy_config::IdentityConfig,
    dev_jwks: &[String],
    clock: credproxy_core::Clock,
) -> Result<credproxy_identity::Verifier, ProxyError> {
    let cfg = credproxy_identity::OidcConfig {
        issuer: id.issuer.clone(),
        audiences: id.audiences.clone(),
        roles_claim: id.roles_claim.clone(),
        groups_claim: id.groups_claim.clone(),
        agent_claim: id.agent_claim.clone(),
        algorithms: id.algorithms.clone(),
        leeway: id.leeway,
        jwks_min_refresh_interval: id.jwks_min_refresh_interval,
        max_token_bytes: id.max_token_bytes,
        ca_files: id.ca_files.clone(),
        http_timeout: credproxy_identity::DEFAULT_HTTP_TIMEOUT,
    };
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

/// Load and compile the policy of a generation: the operator's directory or the built-in one.
fn load_policy(
    p: &credproxy_config::PolicyConfig,
) -> Result<credproxy_policy::PolicyEngine, ProxyError> {
    let source = match &p.dir {
        Some(dir) => credproxy_policy::PolicySource::load_dir(dir).map_err(ProxyError::Policy)?,
        None => credproxy_policy::PolicySource::builtin(),
    };
    credproxy_policy::PolicyEngine::compile(&source, p.eval_limit).map_err(ProxyError::Policy)
}

/// The Temporal SDK wants a URL; the configuration takes `host:port` as operators write it.
fn temporal_address(a: &str) -> String {
    if a.contains("://") {
        a.to_string()
    } else {
        format!("http://{a}")
    }
}
