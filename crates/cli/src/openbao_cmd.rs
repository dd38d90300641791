//! `credproxy openbao provision`: prepare an OpenBao server for the proxy (KV v2 mount, a
//! read-only policy over exactly the credential paths, an AppRole whose role_id and
//! secret_id are written to files), idempotently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use credproxy_config::{Config, OpenBaoAuth, SecretSourceConfig};
use credproxy_secrets::provision::{provision, ProvisionError, ProvisionOptions};
use serde_json::Value;

use crate::{fail, CmdError};

#[derive(Debug, clap::Subcommand)]
pub enum OpenBaoCommand {
    /// Bootstrap KV v2, a read-only policy and an AppRole for the proxy; writes OUT_DIR/role_id
    /// and OUT_DIR/secret_id (mode 0400). Safe to re-run: only differences are applied.
    Provision(ProvisionArgs),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("paths_from").args(["config", "paths"]).required(true)))]
pub struct ProvisionArgs {
    /// OpenBao address, e.g. https://127.0.0.1:8200 (default with --config:
    /// secrets.openbao.address)
    #[arg(long, value_name = "URL")]
    address: Option<String>,
    /// File holding a token allowed to manage mounts, policies and AppRole
    #[arg(long, value_name = "FILE", visible_alias = "token-file")]
    admin_token_file: PathBuf,
    /// CA certificate (PEM) of an https OpenBao (default with --config:
    /// secrets.openbao.ca_file)
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Take the KV paths from the openbao sources of this configuration's credentials
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// A KV path under the mount the proxy may read (repeatable)
    #[arg(long = "path", value_name = "PATH")]
    paths: Vec<String>,
    /// Where role_id and secret_id are written
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
    /// KV v2 mount (default: secrets.openbao.kv_mount with --config, else "secret")
    #[arg(long, value_name = "MOUNT")]
    kv_mount: Option<String>,
    /// Name of the read-only policy
    #[arg(long, value_name = "NAME", default_value = "credproxy-read")]
    policy_name: String,
    /// AppRole auth mount (default: the approle mount of secrets.openbao with --config, else
    /// "approle")
    #[arg(long, value_name = "MOUNT")]
    approle_mount: Option<String>,
    /// AppRole role name
    #[arg(long, value_name = "NAME", default_value = "credproxy")]
    role_name: String,
    /// TTL of the proxy's tokens
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    token_ttl: Duration,
    /// Maximum TTL of the proxy's tokens (renewals stop there; the proxy logs in again)
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    token_max_ttl: Duration,
    /// Development only: a JSON file {"PATH": {"FIELD": "VALUE"}} of values to store
    #[arg(long, value_name = "FILE")]
    seed: Option<PathBuf>,
}

pub async fn run(cmd: OpenBaoCommand) -> ExitCode {
    let OpenBaoCommand::Provision(args) = cmd;
    match run_provision(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail("credproxy openbao provision", e),
    }
}

async fn run_provision(args: &ProvisionArgs) -> Result<(), CmdError> {
    let opts = options(args).map_err(CmdError::Usage)?;
    let report = provision(&opts).await.map_err(|e| match e {
        ProvisionError::Options(_) => CmdError::Usage(anyhow::Error::new(e)),
        e => CmdError::Runtime(anyhow::Error::new(e)),
    })?;
    #[allow(clippy::print_stdout)]
    {
        if report.is_unchanged() {
            println!("nothing to change: OpenBao is already provisioned");
        }
        for change in &report.changes {
            println!("{change}");
        }
    }
    Ok(())
}

fn options(args: &ProvisionArgs) -> anyhow::Result<ProvisionOptions> {
    let config = match &args.config {
        Some(path) => Some(
            Config::load(path)
                .map_err(|e| anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?,
        ),
        None => None,
    };
    let bao = config
        .as_ref()
        .and_then(|c| c.secrets.store.openbao.as_ref());
    let paths = match (&config, &args.config) {
        (Some(c), Some(path)) => {
            let paths: Vec<String> = c
                .credentials
                .iter()
                .filter_map(|cred| match &cred.source {
                    SecretSourceConfig::OpenBao { path, .. } => Some(path.clone()),
                    _ => None,
                })
                .collect();
            if paths.is_empty() {
                return Err(anyhow!(
                    "{}: no credential has an openbao source, so there is nothing to grant",
                    path.display()
                ));
            }
            paths
        }
        _ => args.paths.clone(),
    };
    let address = args
        .address
        .clone()
        .or_else(|| bao.map(|b| b.address.clone()))
        .ok_or_else(|| {
            anyhow!("--address is required (or a --config with secrets.openbao.address)")
        })?;
    let ca_file = args
        .ca_file
        .clone()
        .or_else(|| bao.and_then(|b| b.ca_file.clone()));
    let kv_mount = args
        .kv_mount
        .clone()
        .or_else(|| bao.map(|b| b.kv_mount.clone()))
        .unwrap_or_else(|| credproxy_secrets::DEFAULT_KV_MOUNT.to_owned());
    let approle_mount = args
        .approle_mount
        .clone()
        .or_else(|| {
            bao.and_then(|b| match &b.auth {
                OpenBaoAuth::AppRole { mount, .. } => Some(mount.clone()),
                OpenBaoAuth::TokenFile(_) => None,
            })
        })
        .unwrap_or_else(|| credproxy_secrets::DEFAULT_APPROLE_MOUNT.to_owned());
    let admin_token = std::fs::read_to_string(&args.admin_token_file).with_context(|| {
        format!(
            "cannot read the admin token file {}",
            args.admin_token_file.display()
        )
    })?;
    let seed = args.seed.as_deref().map(read_seed).transpose()?;
    Ok(ProvisionOptions {
        address,
        ca_file,
        admin_token: admin_token.trim().to_owned(),
        kv_mount,
        paths,
        policy_name: args.policy_name.clone(),
        approle_mount,
        role_name: args.role_name.clone(),
        token_ttl: args.token_ttl,
        token_max_ttl: args.token_max_ttl,
        out_dir: args.out_dir.clone(),
        seed,
    })
}

/// `{"path": {"field": "value"}}`. Errors name the path and field, never a value.
fn read_seed(path: &Path) -> anyhow::Result<BTreeMap<String, BTreeMap<String, String>>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the seed file {}", path.display()))?;
    // serde_json's syntax errors carry a position, not the text around it.
    let doc: Value =
        serde_json::from_str(&text).map_err(|e| anyhow!("{}: not JSON: {e}", path.display()))?;
    let shape = || {
        anyhow!(
            "{}: expected {{\"PATH\": {{\"FIELD\": \"VALUE\"}}}}",
            path.display()
        )
    };
    let mut seed = BTreeMap::new();
    for (kv_path, fields) in doc.as_object().ok_or_else(shape)? {
        let fields = fields.as_object().ok_or_else(shape)?;
        let mut out = BTreeMap::new();
        for (field, value) in fields {
            let value = value.as_str().ok_or_else(|| {
                anyhow!(
                    "{}: {kv_path:?} field {field:?}: the value must be a string",
                    path.display()
                )
            })?;
            out.insert(field.clone(), value.to_owned());
        }
        seed.insert(kv_path.clone(), out);
    }
    Ok(seed)
}
