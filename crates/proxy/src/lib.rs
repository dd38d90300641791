//! The proxy: listeners, the per-request pipeline, the upstream client and the admin
//! endpoints, composed from the leaf crates.
//!
//! Invariant: a request reaches an upstream only after its destination was canonicalised
//! from the CONNECT target (or absolute URI), found in the allowlist, agreed with the inner
//! `Host`/`:authority` and SNI, and resolved to a permitted address; and only over TLS that
//! verified the upstream's certificate for that name. Every refusal is a [`Reject`].

mod body;
mod clock;
mod connector;
mod drain;
mod metrics;
mod prefixed;
mod service;

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
    #[error("cannot bind the admin listener to {addr}")]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// State shared by every connection.
pub(crate) struct Shared {
    pub(crate) allowlist: Allowlist,
    pub(crate) leaf_cache: Arc<LeafCache>,
    pub(crate) client: UpstreamClient,
    pub(crate) ws_client: UpstreamClient,
    pub(crate) metrics: Metrics,
    pub(crate) limits: Limits,
    pub(crate) upstream: UpstreamConfig,
}

impl Shared {
    pub(crate) fn count(&self, outcome: &'static str, reason: &'static str) {
        self.metrics
            .requests
            .get_or_create(&RequestLabels { outcome, reason })
            .inc();
    }
}

/// Options that are not configuration: injection points for tests and embedding.
#[derive(Debug, Default, Clone)]
pub struct ProxyOptions {
    /// Name resolution for upstreams; the system resolver when `None`.
    pub resolver: Option<Arc<dyn Resolve>>,
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
            listeners.push(Listener::bind(&l.name, &l.addr, l.unix_mode).await?);
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
        let metrics = Metrics::new(leaf_cache.clone());
        Ok(Proxy {
            shared: Arc::new(Shared {
                allowlist: config.allowed_domains,
                leaf_cache,
                client,
                ws_client,
                metrics,
                limits: config.limits.clone(),
                upstream: config.upstream,
            }),
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
    }

    /// Run on a background task; the handle stops it.
    pub fn spawn(self) -> RunningProxy {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let listeners = self.listener_addrs();
        let admin = self.admin_addr();
        let task = tokio::spawn(self.run(async move {
            let _ = rx.await;
        }));
        RunningProxy {
            stop: Some(tx),
            task,
            listeners,
            admin,
        }
    }
}

/// A proxy running on a background task.
pub struct RunningProxy {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    listeners: Vec<(String, ListenAddr)>,
    admin: Option<SocketAddr>,
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

async fn refuse_busy(mut stream: credproxy_listen::Stream) {
    use tokio::io::AsyncWriteExt;
    let msg = Reject::TooManyConnections.agent_message();
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nx-credproxy-reason: too_many_connections\r\nconnection: close\r\ncontent-length: {}\r\n\r\ncredproxy: {msg}\n",
        msg.len() + 12
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let _ = stream.write_all(resp.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
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
                async move { Ok::<_, std::convert::Infallible>(admin(&shared, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn admin(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let (status, ctype, body) = match req.uri().path() {
        "/healthz" => (200, "text/plain", "ok\n".to_string()),
        "/readyz" => (200, "text/plain", "ready\n".to_string()),
        "/metrics" => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics.encode(),
        ),
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
