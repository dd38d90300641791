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
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logged once, through the configured log format (JSON lines stay JSON).
            error!(error = format!("{e:#}"), "credproxy failed");
            ExitCode::FAILURE
        }
    }
}

/// Bind, tell systemd we are ready, serve until SIGINT/SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
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
