//! `credproxy bridge FROM TO`: a small byte bridge between TCP, Unix, AF_VSOCK and hybrid-vsock
//! sockets.
//!
//! It replaces the socat commands a microVM deployment used to need: in the guest,
//! `tcp:127.0.0.1:18790 vsock:2:18790` gives the agent a local proxy address whose bytes go
//! to the host over VSOCK; on the host, `tcp:127.0.0.1:18789 vsock:4:18789` reaches a port in
//! a guest (QEMU/vhost-vsock), and `tcp:127.0.0.1:18789 vsock_uds:PATH:18789` reaches it
//! through the hypervisor's hybrid-vsock socket (Firecracker, Cloud Hypervisor,
//! vhost-device-vsock; see [`endpoint`]). Every accepted connection gets its own connection
//! to `TO`; bytes are copied both ways through bounded buffers, and a half-close on one side
//! is passed on to the other.
//!
//! With a token source (`--token-file`, or `--oidc-token-url` with client credentials), the
//! bridge reads the head of the first request on each connection and, for a `CONNECT` or an
//! absolute-form request, adds `Proxy-Authorization: Bearer <token>` (see [`head`]): the
//! agent's `HTTPS_PROXY=http://127.0.0.1:18790` then needs no token and never expires.
//!
//! Invariant: the bridge never interprets bytes after the first request head; with no token
//! source it interprets none at all.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use credproxy_listen::{Listener, Stream};
use tokio::io::{copy_bidirectional_with_sizes, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

pub mod endpoint;
pub mod head;
pub mod token;

pub use endpoint::{Endpoint, EndpointError};
pub use token::{TokenSource, TokenUnavailable};

/// Exit code for bad usage or configuration.
pub const EXIT_USAGE: u8 = 64;
/// How long a client may take to send its first request head when a token is added.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// File mode of a Unix socket the bridge listens on.
const UNIX_MODE: u32 = 0o660;

/// `credproxy bridge` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BridgeArgs {
    /// Where to listen: tcp:ADDR:PORT, unix:PATH, vsock:CID:PORT (CID may be `any`) or
    /// vsock_uds:PATH:PORT (binds PATH_PORT, where a hypervisor delivers a guest's connections
    /// to host port PORT)
    pub from: String,
    /// Where to connect for each accepted connection: tcp:HOST:PORT, unix:PATH,
    /// vsock:CID:PORT (CID 2 is the host, seen from a guest) or vsock_uds:PATH:PORT (guest port
    /// PORT through the hypervisor's hybrid-vsock socket PATH: `CONNECT PORT` handshake)
    pub to: String,
    /// Most connections bridged at once; further clients wait to be accepted
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_connections: usize,
    /// Buffer size per direction and connection, in bytes
    #[arg(long, default_value_t = 64 * 1024, value_name = "BYTES")]
    pub buffer_size: usize,
    /// On SIGTERM/SIGINT, how long open connections may continue before they are cut
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub shutdown_grace: Duration,
    /// Add `Proxy-Authorization: Bearer <token>` with the token in this file (read for every
    /// connection, so it may be replaced while the bridge runs)
    #[arg(long, value_name = "FILE", conflicts_with_all = ["oidc_token_url", "oidc_issuer"])]
    pub token_file: Option<PathBuf>,
    /// Obtain the token from this OAuth2 token endpoint by client credentials, refreshed at
    /// 80% of its lifetime
    #[arg(long, value_name = "URL", conflicts_with = "oidc_issuer")]
    pub oidc_token_url: Option<String>,
    /// Like --oidc-token-url, with the endpoint found by OIDC discovery from this issuer
    #[arg(long, value_name = "URL")]
    pub oidc_issuer: Option<String>,
    /// Client id for the client-credentials grant
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
    /// File holding the client secret
    #[arg(long, value_name = "FILE")]
    pub client_secret_file: Option<PathBuf>,
    /// Audience (resource) to ask the provider for
    #[arg(long, value_name = "AUD")]
    pub audience: Option<String>,
    /// Scope to ask the provider for
    #[arg(long, value_name = "SCOPE")]
    pub scope: Option<String>,
    /// Extra CA certificate (PEM) for an https token endpoint; repeatable
    #[arg(long = "oidc-ca-file", value_name = "FILE")]
    pub oidc_ca_files: Vec<PathBuf>,
    /// Only validate the command line (endpoints, flags, the files they name) and exit: 0 when
    /// valid, 64 with the error otherwise. Binds, connects and fetches nothing.
    #[arg(long)]
    pub check: bool,
    /// Log filter (`info`, `debug`, `credproxy_bridge=debug`, ...)
    #[arg(
        long,
        default_value = "info",
        env = "CREDPROXY_LOG",
        value_name = "FILTER"
    )]
    pub log: String,
}

/// Where the token comes from, before any task runs.
#[derive(Debug, Clone)]
pub enum TokenConfig {
    None,
    File(PathBuf),
    Oidc(credproxy_identity::ClientCredentialsGrant),
}

/// A validated bridge configuration.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    pub from: Endpoint,
    pub to: Endpoint,
    pub max_connections: usize,
    pub buffer_size: usize,
    pub token: TokenConfig,
    /// Where the OIDC token's age is read; the system clock (tests pass an adjustable one).
    pub clock: credproxy_core::Clock,
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("invalid endpoint")]
    Endpoint(#[from] EndpointError),
    #[error("{0}")]
    Usage(String),
    /// The client secret file is missing, unreadable or empty.
    #[error(transparent)]
    SecretFile(credproxy_identity::TokenError),
    #[error("cannot listen")]
    Listen(#[from] credproxy_listen::ListenError),
}

impl BridgeError {
    fn is_usage(&self) -> bool {
        !matches!(self, BridgeError::Listen(_))
    }
}

impl BridgeConfig {
    /// Check the arguments and read the client secret.
    pub fn from_args(args: &BridgeArgs) -> Result<BridgeConfig, BridgeError> {
        let from = Endpoint::parse(&args.from)?;
        from.listen_addr()?;
        let to = Endpoint::parse(&args.to)?;
        to.check_connectable()?;
        if args.max_connections == 0 {
            return Err(BridgeError::Usage(
                "--max-connections must be at least 1".into(),
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&args.buffer_size) {
            return Err(BridgeError::Usage(
                "--buffer-size must be between 1024 and 16777216".into(),
            ));
        }
        let oidc = args.oidc_token_url.is_some() || args.oidc_issuer.is_some();
        for url in [&args.oidc_token_url, &args.oidc_issuer]
            .into_iter()
            .flatten()
        {
            credproxy_identity::check_provider_url(url).map_err(BridgeError::Usage)?;
        }
        let token = if let Some(f) = &args.token_file {
            TokenConfig::File(f.clone())
        } else if oidc {
            let (Some(client_id), Some(secret_file)) = (&args.client_id, &args.client_secret_file)
            else {
                return Err(BridgeError::Usage(
                    "--oidc-token-url/--oidc-issuer need --client-id and --client-secret-file"
                        .into(),
                ));
            };
            // Read now so that a missing or empty file is a usage error at start; the
            // refresher reads it again for every request (a rotated secret is picked up).
            credproxy_identity::read_client_secret(secret_file).map_err(BridgeError::SecretFile)?;
            TokenConfig::Oidc(credproxy_identity::ClientCredentialsGrant {
                issuer: args.oidc_issuer.clone(),
                token_url: args.oidc_token_url.clone(),
                client_id: client_id.clone(),
                client_secret_file: secret_file.clone(),
                audience: args.audience.clone(),
                scope: args.scope.clone(),
                ca_files: args.oidc_ca_files.clone(),
            })
        } else {
            if args.client_id.is_some() || args.client_secret_file.is_some() {
                return Err(BridgeError::Usage(
                    "--client-id and --client-secret-file need --oidc-token-url or --oidc-issuer"
                        .into(),
                ));
            }
            TokenConfig::None
        };
        Ok(BridgeConfig {
            from,
            to,
            max_connections: args.max_connections,
            buffer_size: args.buffer_size,
            token,
            clock: credproxy_core::Clock::system(),
        })
    }
}

impl BridgeConfig {
    /// `--check`: everything [`BridgeConfig::from_args`] checks, plus the files the command
    /// line names: a `--token-file` must be readable, each `--oidc-ca-file` must hold a PEM
    /// certificate. Returns a one-line summary. Binds, connects and fetches nothing.
    pub fn check(args: &BridgeArgs) -> Result<String, BridgeError> {
        let config = BridgeConfig::from_args(args)?;
        if let Some(f) = &args.token_file {
            std::fs::File::open(f).map_err(|e| {
                BridgeError::Usage(format!("--token-file {}: cannot read it: {e}", f.display()))
            })?;
        }
        for f in &args.oidc_ca_files {
            let text = std::fs::read_to_string(f).map_err(|e| {
                BridgeError::Usage(format!(
                    "--oidc-ca-file {}: cannot read it: {e}",
                    f.display()
                ))
            })?;
            if !text.contains("-----BEGIN CERTIFICATE-----") {
                return Err(BridgeError::Usage(format!(
                    "--oidc-ca-file {}: no PEM certificate in it",
                    f.display()
                )));
            }
        }
        let token = match &config.token {
            TokenConfig::None => "no token added".to_owned(),
            TokenConfig::File(f) => format!("token from {}", f.display()),
            TokenConfig::Oidc(g) => format!(
                "token for client {} from {}",
                g.client_id,
                g.token_url
                    .as_deref()
                    .or(g.issuer.as_deref())
                    .unwrap_or_default()
            ),
        };
        Ok(format!("valid: {} -> {} ({token})", config.from, config.to))
    }
}

/// A bound bridge, ready to run.
pub struct Bridge {
    listener: Listener,
    config: BridgeConfig,
    token: Option<TokenSource>,
    /// Keeps the token refresher running; dropping it stops it.
    refresher: Option<credproxy_identity::RefreshTask>,
}

impl Bridge {
    /// Bind `FROM` and start the token refresher, if any. Returns once the first token
    /// request has been tried, so a client that connects after this finds a token whenever
    /// the provider is reachable.
    pub async fn bind(config: BridgeConfig) -> Result<Bridge, BridgeError> {
        let addr = config.from.listen_addr()?;
        let listener = Listener::bind("bridge", &addr, UNIX_MODE).await?;
        let (token, refresher) = match &config.token {
            TokenConfig::None => (None, None),
            TokenConfig::File(p) => (Some(TokenSource::File(p.clone())), None),
            TokenConfig::Oidc(grant) => {
                let (t, task) = credproxy_identity::RefreshingToken::spawn_with_clock(
                    "bridge",
                    credproxy_identity::TokenGrant::ClientCredentials(grant.clone()),
                    config.clock.clone(),
                );
                t.first_attempt().await;
                (Some(TokenSource::Oidc(t)), Some(task))
            }
        };
        Ok(Bridge {
            listener,
            config,
            token,
            refresher,
        })
    }

    /// The bound address (with the real port when `tcp:…:0` was asked for).
    pub fn local_addr(&self) -> &credproxy_core::ListenAddr {
        &self.listener.info().addr
    }

    /// Bridge connections until `shutdown` completes, then stop accepting, give open
    /// connections `grace` to finish, and cut the rest.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>, grace: Duration) {
        let Bridge {
            listener,
            config,
            token,
            refresher,
        } = self;
        let limit = Arc::new(Semaphore::new(config.max_connections));
        let to = Arc::new(config.to);
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            // Take a slot first: at the limit, clients wait in the kernel's accept queue
            // instead of being accepted and starved.
            let permit = tokio::select! {
                () = &mut shutdown => break,
                p = limit.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                a = listener.accept() => a,
            };
            // Reap finished connections so the set does not grow.
            while conns.try_join_next().is_some() {}
            match accepted {
                Ok(a) => {
                    let to = to.clone();
                    let token = token.clone();
                    let size = config.buffer_size;
                    conns.spawn(async move {
                        let _permit = permit;
                        let peer = a.peer.to_string();
                        if let Err(e) = bridge_one(a.stream, &to, token.as_ref(), size).await {
                            debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop(listener);
        info!(open = conns.len(), "shutting down");
        let drained =
            tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!(
                open = conns.len(),
                "grace period over; closing open connections"
            );
            conns.shutdown().await;
        }
        drop(refresher);
    }
}

async fn bridge_one(
    mut client: Stream,
    to: &Endpoint,
    token: Option<&TokenSource>,
    buffer_size: usize,
) -> std::io::Result<()> {
    let Some(token) = token else {
        let mut upstream = connect(to).await?;
        copy_bidirectional_with_sizes(&mut client, &mut upstream, buffer_size, buffer_size).await?;
        return Ok(());
    };
    let mut buf = Vec::with_capacity(4096);
    let head_len =
        match tokio::time::timeout(HEAD_TIMEOUT, head::read_head(&mut client, &mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(head::HeadError::Eof)) => return Ok(()),
            Ok(Err(head::HeadError::Io(e))) => return Err(e),
            Ok(Err(e @ head::HeadError::TooLarge)) => {
                return refuse(
                    &mut client,
                    431,
                    "Request Header Fields Too Large",
                    &e.to_string(),
                )
                .await
            }
            Ok(Err(e)) => return refuse(&mut client, 400, "Bad Request", &e.to_string()).await,
            Err(_) => {
                return refuse(
                    &mut client,
                    408,
                    "Request Timeout",
                    "no request head within 30s",
                )
                .await
            }
        };
    let first = match token.current() {
        Ok(t) => match head::rewrite(&buf[..head_len], &t) {
            Ok(head::Rewrite::Proxy(h)) => h,
            Ok(head::Rewrite::Unchanged) => buf[..head_len].to_vec(),
            Err(e) => return refuse(&mut client, 400, "Bad Request", &e.to_string()).await,
        },
        Err(e) => {
            warn!(error = %e, "no agent token to add");
            return refuse(&mut client, 503, "Service Unavailable", &e.to_string()).await;
        }
    };
    let mut upstream = match connect(to).await {
        Ok(u) => u,
        Err(e) => {
            let msg = format!("cannot reach the proxy at {to}: {e}");
            return refuse(&mut client, 502, "Bad Gateway", &msg).await;
        }
    };
    upstream.write_all(&first).await?;
    upstream.write_all(&buf[head_len..]).await?;
    drop(buf);
    copy_bidirectional_with_sizes(&mut client, &mut upstream, buffer_size, buffer_size).await?;
    Ok(())
}

async fn connect(to: &Endpoint) -> std::io::Result<Stream> {
    to.connect().await.inspect_err(|e| {
        warn!(to = %to, error = %e, "cannot connect");
    })
}

async fn refuse(client: &mut Stream, status: u16, reason: &str, msg: &str) -> std::io::Result<()> {
    client
        .write_all(&head::error_response(status, reason, msg))
        .await?;
    client.shutdown().await
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Already initialised (the `credproxy` binary): keep that subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .compact()
        .try_init();
}

/// Run `credproxy bridge` until SIGTERM or SIGINT: 0 after a clean shutdown, 64 for bad
/// usage, 1 when the bridge cannot start. With `--check`, validate and exit (0 or 64).
pub async fn run(args: BridgeArgs) -> ExitCode {
    if args.check {
        return match BridgeConfig::check(&args) {
            Ok(summary) => {
                #[allow(clippy::print_stdout)]
                {
                    println!("credproxy bridge: {summary}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("credproxy bridge: {}", error_chain(&e));
                ExitCode::from(EXIT_USAGE)
            }
        };
    }
    init_logging(&args.log);
    let config = match BridgeConfig::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("credproxy bridge: {}", error_chain(&e));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let (from, to) = (config.from.to_string(), config.to.to_string());
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("credproxy bridge: cannot install the SIGTERM handler: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bridge = match Bridge::bind(config).await {
        Ok(b) => b,
        Err(e) => {
            error!(error = %error_chain(&e), "bridge cannot start");
            eprintln!("credproxy bridge: {}", error_chain(&e));
            return if e.is_usage() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            };
        }
    };
    info!(from = %bridge.local_addr(), %to, requested = %from, "bridge listening");
    // Not under systemd (no NOTIFY_SOCKET) this does nothing.
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        warn!(error = %e, "sd_notify READY failed");
    }
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    bridge.run(shutdown, args.shutdown_grace).await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    ExitCode::SUCCESS
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
