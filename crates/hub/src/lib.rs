//! `credproxy hub`: the inter-instance hub. Agents (containers or microVMs) delegate tasks to
//! each other, fetch what was delegated to them, and share context entries, through their
//! own credproxy listener: the hub is an internal service of credproxy
//! (`internal_services`, e.g. `hub.openclaw.internal`), listening on a Unix socket that only
//! credproxy may connect to.
//!
//! Identity is credproxy's: the hub admits connections only from `--trusted-uid` /
//! `--trusted-user` peers (checked with `SO_PEERCRED` at accept, others are closed and
//! recorded), and takes the caller from `x-credproxy-agent`, which credproxy sets to the
//! verified agent after removing any the agent sent. Sender fields in payloads can only
//! repeat it ([`protocol`]).
//!
//! It replaces the original's `bridge.js`, whose one shared HMAC key let any instance sign
//! as any other, and whose delegations nobody could read.
//!
//! Invariant: every call, accepted or refused, and every refused connection is in the
//! append-only audit log before the caller gets an answer; a change to the state is visible
//! only after its audit line is on disk.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use credproxy_core::{ListenAddr, PeerAddr, UidSet};
use credproxy_listen::{BindOptions, Listener};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

pub mod audit;
pub mod protocol;
pub mod rate;
pub mod store;

pub use protocol::{Limits, Protocol};

/// Exit code for bad usage or configuration.
pub const EXIT_USAGE: u8 = 64;
/// Largest request body (1 MiB); larger ones get 413.
pub const MAX_BODY: usize = 1024 * 1024;
/// How long a request head may take.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// `credproxy hub` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct HubArgs {
    /// Unix socket to listen on (credproxy's internal_services entry points here)
    #[arg(long, value_name = "PATH")]
    pub listen: PathBuf,
    /// File mode of the socket
    #[arg(long, default_value = "0660", value_name = "OCTAL")]
    pub socket_mode: String,
    /// A uid (or inclusive range FIRST-LAST) that may connect: credproxy's; repeatable
    #[arg(long = "trusted-uid", value_name = "UID")]
    pub trusted_uids: Vec<String>,
    /// A user (from /etc/passwd, resolved at start) that may connect; repeatable
    #[arg(long = "trusted-user", value_name = "NAME")]
    pub trusted_users: Vec<String>,
    /// A known instance (an agent id as credproxy verifies it); repeatable, at least one
    #[arg(long = "instance", value_name = "NAME")]
    pub instances: Vec<String>,
    /// Where delegations and shared context are kept
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// The append-only audit log (JSON lines)
    #[arg(long, value_name = "FILE")]
    pub audit_log: PathBuf,
    /// Calls per instance within --rate-window
    #[arg(long, default_value_t = 60, value_name = "N")]
    pub rate_limit: usize,
    /// The sliding window of --rate-limit
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub rate_window: Duration,
    /// Most instances a delegation chain may already hold when delegating further
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub max_delegation_depth: usize,
    /// Most unacknowledged delegations per instance
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub max_pending: usize,
    /// Most shared context keys
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_context_keys: usize,
    /// On SIGTERM/SIGINT, how long open connections may continue
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub shutdown_grace: Duration,
    /// Only validate the command line and exit: 0 when valid, 64 with the error otherwise.
    /// Binds, creates and resolves nothing (user names are checked for shape only).
    #[arg(long)]
    pub check: bool,
    /// Log filter (`info`, `debug`, ...)
    #[arg(
        long,
        default_value = "info",
        env = "CREDPROXY_LOG",
        value_name = "FILTER"
    )]
    pub log: String,
}

/// Why the hub cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot create the state directory {path}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    #[error(transparent)]
    Listen(#[from] credproxy_listen::ListenError),
    #[error("cannot read /etc/passwd to resolve --trusted-user")]
    Passwd(#[source] std::io::Error),
}

impl HubError {
    pub fn is_usage(&self) -> bool {
        matches!(self, HubError::Usage(_))
    }
}

/// A validated hub configuration.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub listen: PathBuf,
    pub socket_mode: u32,
    pub trusted_uids: UidSet,
    pub trusted_users: Vec<String>,
    pub instances: BTreeSet<String>,
    pub state_dir: PathBuf,
    pub audit_log: PathBuf,
    pub limits: Limits,
    pub shutdown_grace: Duration,
}

impl HubConfig {
    /// Validate the arguments; touches nothing.
    pub fn from_args(a: &HubArgs) -> Result<HubConfig, HubError> {
        let usage = |m: String| HubError::Usage(m);
        let socket_mode = u32::from_str_radix(a.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                usage(format!(
                    "--socket-mode: expected an octal file mode such as 0660, got {:?}",
                    a.socket_mode
                ))
            })?;
        let mut trusted_uids = UidSet::new();
        for u in &a.trusted_uids {
            trusted_uids
                .push_str(u)
                .map_err(|e| usage(format!("--trusted-uid {u:?}: {e}")))?;
        }
        for u in &a.trusted_users {
            if u.is_empty() || u.contains([':', '\n', '/']) {
                return Err(usage(format!("--trusted-user {u:?}: not a user name")));
            }
        }
        if trusted_uids.is_empty() && a.trusted_users.is_empty() {
            return Err(usage(
                "give --trusted-uid or --trusted-user (credproxy's): without one nobody may connect".into(),
            ));
        }
        if a.instances.is_empty() {
            return Err(usage(
                "give at least one --instance (the agent ids that may use the hub)".into(),
            ));
        }
        let mut instances = BTreeSet::new();
        for i in &a.instances {
            if !protocol::valid_instance_name(i) {
                return Err(usage(format!(
                    "--instance {i:?}: an instance name is 1 to 128 of A-Z a-z 0-9 - _ . @, starting with a letter or digit"
                )));
            }
            if !instances.insert(i.clone()) {
                return Err(usage(format!("--instance {i:?} is given twice")));
            }
        }
        for (flag, v) in [
            ("--rate-limit", a.rate_limit),
            ("--max-delegation-depth", a.max_delegation_depth),
            ("--max-pending", a.max_pending),
            ("--max-context-keys", a.max_context_keys),
        ] {
            if v == 0 {
                return Err(usage(format!("{flag} must be at least 1")));
            }
        }
        if a.rate_window.is_zero() {
            return Err(usage("--rate-window must be longer than 0s".into()));
        }
        for (flag, p) in [
            ("--listen", &a.listen),
            ("--state-dir", &a.state_dir),
            ("--audit-log", &a.audit_log),
        ] {
            if !p.is_absolute() {
                return Err(usage(format!(
                    "{flag} {}: give an absolute path",
                    p.display()
                )));
            }
        }
        Ok(HubConfig {
            listen: a.listen.clone(),
            socket_mode,
            trusted_uids,
            trusted_users: a.trusted_users.clone(),
            instances,
            state_dir: a.state_dir.clone(),
            audit_log: a.audit_log.clone(),
            limits: Limits {
                rate_limit: a.rate_limit,
                rate_window: a.rate_window,
                max_delegation_depth: a.max_delegation_depth,
                max_pending: a.max_pending,
                max_context_keys: a.max_context_keys,
            },
            shutdown_grace: a.shutdown_grace,
        })
    }

    /// One line for `--check`.
    pub fn summary(&self) -> String {
        let mut trusted = Vec::new();
        if !self.trusted_uids.is_empty() {
            trusted.push(format!("uids {}", self.trusted_uids));
        }
        if !self.trusted_users.is_empty() {
            trusted.push(format!("users {}", self.trusted_users.join(",")));
        }
        format!(
            "listen unix:{} (mode {:04o}), trusted {}, instances {}, state {}, audit {}",
            self.listen.display(),
            self.socket_mode,
            trusted.join(" and "),
            self.instances.iter().cloned().collect::<Vec<_>>().join(","),
            self.state_dir.display(),
            self.audit_log.display()
        )
    }
}

/// The uid of `name` in a passwd file's text.
fn passwd_uid(passwd: &str, name: &str) -> Option<u32> {
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// A hub with its socket bound, ready to run.
pub struct Hub {
    listener: Listener,
    protocol: Arc<Protocol>,
    socket: PathBuf,
}

impl Hub {
    /// Resolve trusted users, open the state and the audit log, bind the socket.
    pub async fn bind(config: HubConfig) -> Result<Hub, HubError> {
        let mut trusted = config.trusted_uids.clone();
        if !config.trusted_users.is_empty() {
            let passwd = std::fs::read_to_string("/etc/passwd").map_err(HubError::Passwd)?;
            for u in &config.trusted_users {
                let uid = passwd_uid(&passwd, u).ok_or_else(|| {
                    HubError::Usage(format!("--trusted-user {u:?}: no such user in /etc/passwd"))
                })?;
                trusted
                    .push_uid(uid)
                    .map_err(|e| HubError::Usage(format!("--trusted-user {u:?}: {e}")))?;
            }
        }
        let instances: Vec<String> = config.instances.iter().cloned().collect();
        let store = store::Store::open(&config.state_dir, &instances).map_err(|source| {
            HubError::State {
                path: config.state_dir.clone(),
                source,
            }
        })?;
        let audit = audit::AuditLog::open(&config.audit_log)?;
        let protocol = Arc::new(Protocol::new(
            config.instances.clone(),
            config.limits.clone(),
            store,
            audit,
        ));
        let mut listener = Listener::bind_with(
            "hub",
            &ListenAddr::Unix(config.listen.clone()),
            BindOptions {
                unix_mode: config.socket_mode,
                peer_uids: Some(trusted),
            },
        )
        .await?;
        let p = protocol.clone();
        listener.on_refused(Arc::new(move |r: &credproxy_listen::Refused| {
            if let PeerAddr::Unix { uid, pid } = r.peer {
                p.record_refused_connection(uid, pid);
            }
        }));
        Ok(Hub {
            listener,
            protocol,
            socket: config.listen,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn protocol(&self) -> &Arc<Protocol> {
        &self.protocol
    }

    /// Serve until `shutdown` resolves, then let open connections finish for `grace`.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>, grace: Duration) {
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                a = self.listener.accept() => a,
            };
            while conns.try_join_next().is_some() {}
            match accepted {
                Ok(a) => {
                    let protocol = self.protocol.clone();
                    conns.spawn(serve(protocol, a));
                }
                Err(e) => {
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop(self.listener);
        if tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            warn!(
                ?grace,
                "connections still open after the shutdown grace period"
            );
        }
    }
}

async fn serve(protocol: Arc<Protocol>, a: credproxy_listen::Accepted) {
    let (uid, pid) = match a.peer {
        PeerAddr::Unix { uid, pid } => (uid, pid),
        _ => (None, None),
    };
    let svc = service_fn(move |req: Request<Incoming>| {
        let protocol = protocol.clone();
        async move { Ok::<_, std::convert::Infallible>(answer(&protocol, req, uid, pid).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(a.stream), svc)
        .await
    {
        debug!(error = %e, "hub connection ended with an error");
    }
}

async fn answer(
    protocol: &Protocol,
    req: Request<Incoming>,
    peer_uid: Option<u32>,
    peer_pid: Option<i32>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let header_values = |name: &str| -> Vec<String> {
        parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    };
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = if declared.is_some_and(|n| n > MAX_BODY as u64) {
        Err(protocol::BodyProblem::TooLarge)
    } else {
        match Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => Ok(b.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(protocol::BodyProblem::TooLarge)
            }
            Err(_) => Err(protocol::BodyProblem::Unreadable),
        }
    };
    let call = protocol::Call {
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        agents: header_values(protocol::AGENT_HEADER),
        request_id: header_values(protocol::REQUEST_ID_HEADER)
            .into_iter()
            .next(),
        peer_uid,
        peer_pid,
        body,
    };
    let too_large = matches!(call.body, Err(protocol::BodyProblem::TooLarge));
    let reply = protocol.handle(call).await;
    let mut body = serde_json::to_vec(&reply.body).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = reply.status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(allow) = reply.allow {
        h.insert(http::header::ALLOW, HeaderValue::from_static(allow));
    }
    if let Some(s) = reply.retry_after {
        h.insert(http::header::RETRY_AFTER, HeaderValue::from(s));
    }
    // The rest of an oversized body is not read: the connection cannot carry another call.
    if too_large || reply.status == StatusCode::PAYLOAD_TOO_LARGE {
        h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

fn init_logging(filter: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .json()
        .flatten_event(true)
        .try_init();
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

/// `credproxy hub`: validate, bind, serve until SIGTERM/SIGINT. Exit 0, 64 (usage), 1.
pub async fn run(args: HubArgs) -> ExitCode {
    let config = match HubConfig::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("credproxy hub: {}", error_chain(&e));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if args.check {
        #[allow(clippy::print_stdout)]
        {
            println!("credproxy hub: {}", config.summary());
        }
        return ExitCode::SUCCESS;
    }
    init_logging(&args.log);
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("credproxy hub: cannot install the SIGTERM handler: {e}");
            return ExitCode::FAILURE;
        }
    };
    let grace = config.shutdown_grace;
    let hub = match Hub::bind(config).await {
        Ok(h) => h,
        Err(e) => {
            error!(error = %error_chain(&e), "hub cannot start");
            eprintln!("credproxy hub: {}", error_chain(&e));
            return if e.is_usage() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            };
        }
    };
    info!(
        socket = %hub.socket().display(),
        instances = hub.protocol().instances().len(),
        audit = %hub.protocol().audit().path().display(),
        "hub listening"
    );
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        warn!(error = %e, "sd_notify READY failed");
    }
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    hub.run(shutdown, grace).await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_names_resolve_to_uids() {
        let p = "root:x:0:0::/root:/bin/sh\ncredproxy:x:987:986::/var/empty:/run/current-system/sw/bin/nologin\n";
        assert_eq!(passwd_uid(p, "credproxy"), Some(987));
        assert_eq!(passwd_uid(p, "root"), Some(0));
        assert_eq!(passwd_uid(p, "cred"), None);
    }
}
