//! `credproxy`: the one binary. Parses the command line, composes the crates, and maps
//! failures to exit codes: 0 ok, 64 usage or configuration error, 1 runtime failure.

mod audit_cmd;
mod dev;
mod logging;
mod openbao_cmd;
mod policy_cmd;
mod serve;
mod token_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc malloc: the request path allocates many small, short-lived
/// buffers across worker threads, where glibc's arenas showed up as ~14% of the proxy's CPU
/// in `perf` (BENCHMARKS.md, S1).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for bad usage or configuration (BSD `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "credproxy",
    version,
    about = "Egress proxy that lets an AI agent use API credentials without ever seeing them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (foreground; notifies systemd when listening)
    Serve {
        /// Configuration file (YAML or JSON)
        #[arg(long, short = 'c', default_value = "/etc/credproxy/config.yaml")]
        config: PathBuf,
    },
    /// Validate a configuration file: exit 0 when valid, 64 with every error otherwise
    CheckConfig {
        /// Configuration file (YAML or JSON)
        file: PathBuf,
    },
    /// Manage the MITM certificate authority
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Run on embedded defaults for local use: a generated CA, a default allowlist, and the
    /// environment an agent needs printed on standard output
    Dev(dev::DevArgs),
    /// Write, unit-test and try out Rego authorization policies offline
    Policy {
        #[command(subcommand)]
        command: policy_cmd::PolicyCommand,
    },
    /// Obtain an agent token: OAuth2 client credentials from an OIDC provider, or a dev token
    /// (--dev); prints the token, or a proxy URL carrying it (--proxy-url)
    Token(token_cmd::TokenArgs),
    /// Bridge bytes between tcp:, unix:, vsock: and vsock_uds: endpoints (e.g.
    /// tcp:127.0.0.1:18790 vsock:2:18790), optionally adding the agent's token to each proxy
    /// request
    Bridge(credproxy_bridge::BridgeArgs),
    /// Run the inter-instance hub (delegations, inboxes, shared context) that agents reach
    /// through credproxy as an internal service; the caller is the agent credproxy verified
    Hub(credproxy_hub::HubArgs),
    /// Query and verify the audit log: list, show, verify, export
    Audit {
        #[command(subcommand)]
        command: audit_cmd::AuditCommand,
    },
    /// Prepare OpenBao for the proxy
    Openbao {
        #[command(subcommand)]
        command: openbao_cmd::OpenBaoCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create an ECDSA P-256 CA: DIR/ca.key (mode 0400) and DIR/ca.crt (mode 0444)
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Replace an existing CA (agents must then trust the new certificate)
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::CheckConfig { file } => serve::check_config(&file),
        Command::Ca {
            command: CaCommand::Init { dir, force },
        } => ca_init(&dir, force),
        Command::Serve { config } => run_async(serve::serve(config)),
        Command::Dev(args) => run_async(dev::dev(args)),
        Command::Policy { command } => policy_cmd::run(command),
        Command::Token(args) => run_async(token_cmd::run(args)),
        Command::Openbao { command } => run_async(openbao_cmd::run(command)),
        Command::Audit { command } => audit_cmd::run(command),
        Command::Bridge(args) => run_async(credproxy_bridge::run(args)),
        Command::Hub(args) => run_async(credproxy_hub::run(args)),
    }
}

/// A command's failure: bad usage or configuration (exit 64) or a runtime failure (exit 1).
#[derive(Debug)]
pub enum CmdError {
    Usage(anyhow::Error),
    Runtime(anyhow::Error),
}

/// Report `e` on standard error as `what: <error chain>` and return its exit status.
pub fn fail(what: &str, e: CmdError) -> ExitCode {
    match e {
        CmdError::Usage(e) => {
            eprintln!("{what}: {e:#}");
            ExitCode::from(EXIT_USAGE)
        }
        CmdError::Runtime(e) => {
            eprintln!("{what}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_async(f: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("credproxy: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn ca_init(dir: &std::path::Path, force: bool) -> ExitCode {
    match credproxy_tls::init_ca(dir, force) {
        Ok(files) => {
            #[allow(clippy::print_stdout)]
            {
                println!("created {}", files.cert_file.display());
                println!("created {}", files.key_file.display());
            }
            ExitCode::SUCCESS
        }
        Err(credproxy_tls::TlsError::CaExists { path }) => {
            eprintln!(
                "credproxy: {} already exists; refusing to overwrite the CA (use --force to replace it)",
                path.display()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("credproxy: {:#}", anyhow::Error::new(e));
            ExitCode::FAILURE
        }
    }
}
