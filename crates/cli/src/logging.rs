//! Logging setup: `tracing` to standard error, JSON or human-readable.

use credproxy_config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

/// Install the global subscriber. `CREDPROXY_LOG`, when set, overrides the configured level
/// (a bootstrap knob for debugging a unit without editing its configuration).
pub fn init(log: &LogConfig, env_override: Option<String>) {
    let directive = env_override.unwrap_or_else(|| log.level.clone());
    let filter = EnvFilter::try_new(&directive).unwrap_or_else(|e| {
        eprintln!("credproxy: invalid log level {directive:?} ({e}); using \"info\"");
        EnvFilter::new("info")
    });
    // Colour only for a person at a terminal: journald, files and pipes get plain text
    // (`NO_COLOR` turns it off at a terminal too).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    if let Err(e) = result {
        eprintln!("credproxy: logging already initialised: {e}");
    }
}
