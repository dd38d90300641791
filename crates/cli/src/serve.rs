//! `serve` and `check-config`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use credproxy_config::Config;
use credproxy_proxy::{Proxy, ProxyOptions};
use tracing::{error, info};

use crate::EXIT_USAGE;

pub fn check_config(file: &Path) -> ExitCode {
    match Config::load(file) {
        Ok(c) => {
            #[allow(clippy::print_stdout)]
            {
                println!(
                    "{}: valid ({} listener{}, {} allowed domain{})",
                    file.display(),
                    c.listeners.len(),
                    if c.listeners.len() == 1 { "" } else { "s" },
                    c.allowed_domains.entries().len(),
                    if c.allowed_domains.entries().len() == 1 {
                        ""
                    } else {
                        "s"
                    },
                );
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprint!("{}: {errors}", file.display());
            ExitCode::from(EXIT_USAGE)
        }
    }
}

pub async fn serve(config_path: PathBuf) -> ExitCode {
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(errors) => {
            eprint!("{}: {errors}", config_path.display());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    crate::logging::init(&config.log, std::env::var("CREDPROXY_LOG").ok());
    info!(config = %config_path.display(), version = env!("CARGO_PKG_VERSION"), "config loaded");
    match run(config, config_path.clone()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logged once, through the configured log format (JSON lines stay JSON).
            error!(error = format!("{e:#}"), "credproxy failed");
            ExitCode::FAILURE
        }
    }
}

/// Bind, tell systemd we are ready, serve until SIGINT/SIGTERM.
pub async fn run(config: Config, config_path: PathBuf) -> anyhow::Result<()> {
    let policy_dir = config.policy.dir.clone();
    let proxy = Proxy::bind(config, ProxyOptions::default())
        .await
        .context("cannot start the proxy")?;
    for (name, addr) in proxy.listener_addrs() {
        info!(listener = %name, %addr, "listening");
    }
    if let Some(addr) = proxy.admin_addr() {
        info!(%addr, "admin listening");
    }
    // Handlers are installed before readiness is announced, so a supervisor that stops us
    // right after READY gets a clean shutdown rather than the default signal action.
    let shutdown = shutdown_signal()?;
    let reload = reload_on_change(config_path, proxy.reload_handle(), policy_dir)?;
    tokio::spawn(reload);
    notify_ready();
    proxy.run(shutdown).await;
    Ok(())
}

pub fn notify_ready() {
    // Outside systemd NOTIFY_SOCKET is unset and this does nothing.
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "sd_notify READY failed");
    }
}

/// Install SIGTERM/SIGINT handlers now; the returned future resolves on either.
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    })
}

/// Reload on SIGHUP, and when the configuration file or a policy file changes (checked every
/// two seconds, off the request path). The handler is installed before readiness.
pub fn reload_on_change(
    config_path: PathBuf,
    handle: credproxy_proxy::ReloadHandle,
    mut policy_dir: Option<PathBuf>,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("cannot install a SIGHUP handler")?;
    Ok(async move {
        let mut last = fingerprint(&config_path, policy_dir.as_deref());
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let trigger = tokio::select! {
                _ = hup.recv() => "SIGHUP",
                _ = tick.tick() => {
                    let now = fingerprint(&config_path, policy_dir.as_deref());
                    if now == last {
                        continue;
                    }
                    "file change"
                }
            };
            last = fingerprint(&config_path, policy_dir.as_deref());
            match Config::load(&config_path) {
                Ok(config) => {
                    policy_dir = config.policy.dir.clone();
                    last = fingerprint(&config_path, policy_dir.as_deref());
                    if let Err(e) = handle.reload(config) {
                        error!(
                            trigger,
                            error = format!("{:#}", anyhow::Error::new(e)),
                            "reload refused; the previous configuration keeps serving"
                        );
                    }
                }
                Err(errors) => {
                    handle.record_refused();
                    error!(trigger, errors = %errors, "reload refused: invalid configuration; the previous configuration keeps serving");
                }
            }
        }
    })
}

/// Modification times and sizes of the configuration file and every policy file.
fn fingerprint(
    config: &Path,
    policy_dir: Option<&Path>,
) -> Vec<(PathBuf, Option<(std::time::SystemTime, u64)>)> {
    let stat = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    let mut out = vec![(config.to_path_buf(), stat(config))];
    if let Some(dir) = policy_dir {
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut files: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            for f in files {
                let s = stat(&f);
                out.push((f, s));
            }
        }
    }
    out
}
