//! `credproxy token`: obtain an agent token, from an OIDC provider (client credentials) or,
//! with `--dev`, from the dev issuer of a `credproxy dev` state directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use credproxy_identity::{client_credentials, ClientCredentials, DevIssuer, DEV_KEY_FILE};

use crate::{fail, CmdError};

#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("endpoint")
        .args(["issuer", "token_url"])
        .conflicts_with("dev")
))]
pub struct TokenArgs {
    /// The OIDC issuer; the token endpoint is found by discovery
    #[arg(long, value_name = "URL")]
    issuer: Option<String>,
    /// The token endpoint, used as is (no discovery)
    #[arg(long, value_name = "URL", conflicts_with = "issuer")]
    token_url: Option<String>,
    /// The OAuth2 client id (the agent)
    #[arg(
        long,
        value_name = "ID",
        required_unless_present = "dev",
        conflicts_with = "dev"
    )]
    client_id: Option<String>,
    /// File holding the client secret (a trailing newline is ignored)
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "dev",
        conflicts_with = "dev"
    )]
    client_secret_file: Option<PathBuf>,
    /// The audience to ask for (sent as `audience`, and as `resource` when it is a URI)
    #[arg(long, value_name = "AUD", conflicts_with = "dev")]
    audience: Option<String>,
    /// The scope to ask for
    #[arg(long, value_name = "SCOPE", conflicts_with = "dev")]
    scope: Option<String>,
    /// Extra CA certificate (PEM) to trust for an https provider (repeatable)
    #[arg(long = "ca-file", value_name = "FILE", conflicts_with = "dev")]
    ca_files: Vec<PathBuf>,
    /// Print a proxy URL with the token as password, http://AGENT:TOKEN@HOST:PORT, for
    /// HTTPS_PROXY or curl --proxy
    #[arg(long, value_name = "http://HOST:PORT")]
    proxy_url: Option<String>,
    /// Issue a token with the dev issuer of a `credproxy dev` state directory
    #[arg(long)]
    dev: bool,
    /// With --dev: the `credproxy dev` state directory
    #[arg(
        long,
        value_name = "DIR",
        default_value = ".credproxy-dev",
        requires = "dev"
    )]
    state_dir: PathBuf,
    /// With --dev: the agent id (sub, azp, client_id)
    #[arg(long, value_name = "ID", default_value = "dev-agent", requires = "dev")]
    agent: String,
    /// With --dev: a role (repeatable; default: dev)
    #[arg(long = "role", value_name = "ROLE", requires = "dev")]
    roles: Vec<String>,
    /// With --dev: how long the token is valid
    #[arg(long, value_name = "DURATION", default_value = "12h", value_parser = humantime::parse_duration, requires = "dev")]
    ttl: Duration,
}

pub async fn run(args: TokenArgs) -> ExitCode {
    match token(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail("credproxy token", e),
    }
}

async fn token(args: &TokenArgs) -> Result<(), CmdError> {
    // Check the proxy URL before asking anyone for a token.
    let proxy = args
        .proxy_url
        .as_deref()
        .map(proxy_host_port)
        .transpose()
        .map_err(CmdError::Usage)?;
    let (user, token) = if args.dev {
        let roles = if args.roles.is_empty() {
            vec!["dev".to_owned()]
        } else {
            args.roles.clone()
        };
        let token = dev_token(&args.state_dir, &args.agent, &roles, args.ttl)?;
        (args.agent.clone(), token)
    } else {
        if args.issuer.is_none() && args.token_url.is_none() {
            return Err(CmdError::Usage(anyhow!(
                "give the provider with --issuer URL or --token-url URL (or use --dev)"
            )));
        }
        let client_id = args.client_id.clone().unwrap_or_default();
        let secret_file = args.client_secret_file.as_deref().unwrap_or(Path::new(""));
        let secret = read_secret_file(secret_file).map_err(CmdError::Usage)?;
        let req = ClientCredentials {
            issuer: args.issuer.clone(),
            token_url: args.token_url.clone(),
            client_id: client_id.clone(),
            client_secret: secret,
            audience: args.audience.clone(),
            scope: args.scope.clone(),
            ca_files: args.ca_files.clone(),
        };
        let response = client_credentials(&req).await.map_err(|e| match e {
            credproxy_identity::TokenError::Invalid(_) => CmdError::Usage(anyhow::Error::new(e)),
            e => CmdError::Runtime(anyhow::Error::new(e).context("no token obtained")),
        })?;
        (client_id, response.access_token)
    };
    let line = match proxy {
        Some(host_port) => format!("http://{}:{token}@{host_port}", userinfo_encode(&user)),
        None => token,
    };
    #[allow(clippy::print_stdout)]
    {
        println!("{line}");
    }
    Ok(())
}

/// A token from the dev issuer in `state/identity`; never creates one (that is `dev`'s job,
/// and a new key would not match the JWKS a running dev proxy trusts).
pub fn dev_token(
    state: &Path,
    agent: &str,
    roles: &[String],
    ttl: Duration,
) -> Result<String, CmdError> {
    let dir = state.join("identity");
    if !dir.join(DEV_KEY_FILE).exists() {
        return Err(CmdError::Runtime(anyhow!(
            "{} has no dev issuer ({} is missing): run `credproxy dev --state-dir {}` first",
            state.display(),
            dir.join(DEV_KEY_FILE).display(),
            state.display()
        )));
    }
    let issuer = DevIssuer::load_or_create(&dir)
        .context("cannot load the dev issuer")
        .map_err(CmdError::Runtime)?;
    issuer
        .issue(agent, roles, ttl)
        .context("cannot issue a dev token")
        .map_err(CmdError::Usage)
}

/// The client secret: the file's content without its trailing newline.
fn read_secret_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the client secret file {}", path.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']).to_owned();
    if secret.is_empty() {
        return Err(anyhow!(
            "the client secret file {} is empty",
            path.display()
        ));
    }
    Ok(secret)
}

/// `HOST:PORT` of `http://HOST:PORT[/]`.
fn proxy_host_port(url: &str) -> anyhow::Result<String> {
    let bad = || anyhow!("--proxy-url {url:?}: expected http://HOST:PORT");
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let host_port = rest.strip_suffix('/').unwrap_or(rest);
    if host_port.is_empty() || host_port.contains(['/', '@', '?', '#']) {
        return Err(bad());
    }
    let (host, port) = host_port.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(host_port.to_owned())
}

/// Percent-encode the user part of a URL's userinfo (RFC 3986 unreserved characters stay).
pub fn userinfo_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls() {
        assert_eq!(
            proxy_host_port("http://127.0.0.1:18790").unwrap(),
            "127.0.0.1:18790"
        );
        assert_eq!(proxy_host_port("http://[::1]:80/").unwrap(), "[::1]:80");
        for bad in [
            "https://h:1",
            "http://h",
            "http://u@h:1",
            "http://h:1/x",
            "http://:1",
        ] {
            assert!(proxy_host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn userinfo_is_percent_encoded() {
        assert_eq!(userinfo_encode("agent-a_1.x~"), "agent-a_1.x~");
        assert_eq!(userinfo_encode("a b:c@d"), "a%20b%3Ac%40d");
    }
}
