//! The proxy: listeners, the per-request pipeline, the upstream client and the admin
//! endpoints, composed from the leaf crates.
//!
//! Where things are: [`compose`] builds a [`Proxy`] from the configuration (the only place
//! the leaf crates are wired together); [`conn`] accepts agent connections and answers their
//! requests; [`tunnel`] serves the inside of a CONNECT; [`forward`] is the request path as
//! named stages; [`reload`] swaps in a new [`Generation`]; [`admin`] serves health, readiness
//! and metrics. This file holds the public API and the state they share.
//!
//! Invariant: a request reaches an upstream only after its destination was canonicalised
//! from the CONNECT target (or absolute URI), found in the allowlist, agreed with the inner
//! `Host`/`:authority` and SNI, and resolved to a permitted address; and only over TLS that
//! verified the upstream's certificate for that name. Every refusal is a [`Reject`].

mod admin;
mod agent_token;
mod audit;
mod authz;
mod body;
mod clock;
mod compose;
mod conn;
mod connector;
mod creds;
mod drain;
pub mod explain;
mod forward;
mod framing;
mod inject;
mod internal;
mod limits;
mod listener_token;
mod metrics;
mod prefixed;
mod reload;
mod request_body;
mod scrub_body;
mod scrub_set;
mod tunnel;
mod websocket;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use credproxy_config::{Limits, UpstreamConfig};
use credproxy_core::{Allowlist, ListenAddr, Reject};
use credproxy_listen::Listener;
use credproxy_tls::LeafCache;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{error, info, warn};

pub use body::{Body, BoxError};
use connector::GuardedConnector;
pub use connector::{is_refused, Resolve, SystemResolver};
use metrics::{Metrics, RequestLabels};
use reload::Startup;
pub use reload::{ReloadError, ReloadHandle};

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
    /// Shared with the metrics, which read the policy decision cache of the current one.
    pub(crate) gen: Arc<arc_swap::ArcSwap<Generation>>,
    /// The id of the current generation, for what must react to a reload (open WebSockets).
    pub(crate) generations: tokio::sync::watch::Sender<u64>,
    pub(crate) secrets: credproxy_secrets::SecretStore,
    pub(crate) startup: Startup,
    /// The audit spool; `None` when `audit` is not configured.
    pub(crate) audit: Option<credproxy_audit::spool::AuditSpool>,
    pub(crate) _exporter: Option<credproxy_audit::temporal::ExporterHandle>,
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
    /// Where time is read: the verifier (token expiry, JWKS intervals), the re-check inside
    /// tunnels and WebSockets, the listener tokens' refresher, the policy input's `time` and
    /// the audit spool's event times and retention; the system clock by default. Tests pass
    /// an adjustable one to reach an expiry or a refresh without waiting.
    pub clock: credproxy_core::Clock,
}

/// A proxy with its listeners bound, ready to run.
pub struct Proxy {
    shared: Arc<Shared>,
    listeners: Vec<Listener>,
    admin: Option<TcpListener>,
    limits: Limits,
}

impl Proxy {
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
            tasks.spawn(conn::accept_loop(shared, listener, watcher, max_conns));
        }
        if let Some(admin) = self.admin {
            tasks.spawn(admin::admin_loop(self.shared.clone(), admin));
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
