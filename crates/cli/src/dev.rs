//! `credproxy dev`: the proxy on embedded defaults, for trying it out and for local agents.
//!
//! It keeps its state in one directory (default `./.credproxy-dev`):
//!
//! * `ca/`: a CA created on the first run and reused afterwards, and `ca-bundle.pem` (the
//!   system roots plus that CA) for clients whose CA setting replaces the system store;
//! * `identity/`: the dev issuer's key (created once) and its public `jwks.json`, which the
//!   generated config trusts, so agents authenticate with real, verified tokens;
//! * `placeholders.json`: the placeholder generated for each credential id, so an agent's
//!   environment stays valid across restarts;
//! * `config.yaml`: generated on every start from the options and loaded through the same
//!   validation as `serve`, so dev mode never takes a path production does not.
//!
//! The config is built section by section in [`config_document`]; a section such as `audit`
//! slots in there.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use credproxy_config::Config;
use credproxy_core::ListenAddr;
use credproxy_identity::{DevIssuer, DEV_AUDIENCE, DEV_ISSUER};
use credproxy_proxy::{Proxy, ProxyOptions};
use serde_yaml::{Mapping, Value};

use crate::{fail, CmdError};

/// Destinations allowed when no `--allow` is given.
pub const DEFAULT_ALLOWED: &[&str] = &[
    "api.anthropic.com",
    "api.openai.com",
    "generativelanguage.googleapis.com",
    "api.github.com",
    "github.com",
    "registry.npmjs.org",
    "pypi.org",
    "files.pythonhosted.org",
];

/// The agent the printed environment authenticates as, and its role.
pub const DEV_AGENT: &str = "dev-agent";
pub const DEV_ROLE: &str = "dev";
/// Lifetime of the token in the printed environment.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the CA, dev identity, placeholders and generated config live
    #[arg(long, default_value = ".credproxy-dev")]
    state_dir: PathBuf,
    /// Proxy listener address
    #[arg(long, default_value = "127.0.0.1:18790")]
    listen: String,
    /// Admin listener address (/healthz, /readyz, /metrics)
    #[arg(long, default_value = "127.0.0.1:18791")]
    admin: String,
    /// Allow a destination (repeatable); replaces the default allowlist (credential domains
    /// are always added)
    #[arg(long = "allow", value_name = "DOMAIN")]
    allow: Vec<String>,
    /// Pin a host name to an address, e.g. api.example.test=127.0.0.1:8443 (repeatable)
    #[arg(long = "resolve", value_name = "HOST=IP:PORT")]
    resolve: Vec<String>,
    /// Trust this CA file for upstream connections, in addition to the system roots
    #[arg(long = "upstream-ca", value_name = "FILE")]
    upstream_ca: Vec<PathBuf>,
    /// A credential to inject (repeatable):
    /// id=ID,domain=DOMAIN,(env=VAR|file=PATH|openbao=PATH#FIELD)[,type=api_key|bearer|basic_auth|header][,header=NAME][,prefix=P][,placeholder=P][,role=R]...
    /// `env=VAR` reads the real value from credproxy's own environment; the agent gets
    /// `VAR=<placeholder>` (for file= and openbao=, `CREDPROXY_PLACEHOLDER_<ID>=<placeholder>`).
    /// `header` is required for api_key and header types.
    #[arg(long = "credential", value_name = "SPEC")]
    credentials: Vec<String>,
    /// A YAML list of credentials in the configuration's `credentials` format (placeholder
    /// and allowed_roles may be left out)
    #[arg(long, value_name = "FILE")]
    credentials_file: Option<PathBuf>,
    /// Read `openbao=` credentials from this OpenBao server
    #[arg(long, value_name = "URL", requires = "openbao_token_file")]
    openbao: Option<String>,
    /// Token file for --openbao
    #[arg(long, value_name = "FILE", requires = "openbao")]
    openbao_token_file: Option<PathBuf>,
    /// CA certificate (PEM) of an https --openbao
    #[arg(long, value_name = "FILE", requires = "openbao")]
    openbao_ca_file: Option<PathBuf>,
}

pub async fn dev(args: DevArgs) -> ExitCode {
    let prepared = match prepare(&args) {
        Ok(p) => p,
        Err(e) => return fail("credproxy dev", e),
    };
    crate::logging::init(&prepared.config.log, std::env::var("CREDPROXY_LOG").ok());
    let proxy = match Proxy::bind(prepared.config, ProxyOptions::default()).await {
        Ok(p) => p,
        Err(e) => return fail("credproxy dev", CmdError::Runtime(anyhow::Error::new(e))),
    };
    let proxy_addr = proxy
        .listener_addrs()
        .into_iter()
        .find_map(|(_, a)| match a {
            ListenAddr::Tcp(a) => Some(a),
            _ => None,
        });
    let state = absolute(&args.state_dir);
    let shutdown = match crate::serve::shutdown_signal() {
        Ok(s) => s,
        Err(e) => return fail("credproxy dev", CmdError::Runtime(e)),
    };
    if let Some(addr) = proxy_addr {
        let env = agent_env(&AgentEnv {
            proxy: &addr.to_string(),
            token: &prepared.token,
            state: &state,
            admin: proxy.admin_addr(),
            placeholders: &prepared.exports,
        });
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(env.as_bytes());
        let _ = out.flush();
    }
    crate::serve::notify_ready();
    proxy.run(shutdown).await;
    ExitCode::SUCCESS
}

/// What [`prepare`] produces.
struct Prepared {
    config: Config,
    /// A token for [`DEV_AGENT`].
    token: String,
    /// `NAME=<placeholder>` for the agent, one per credential.
    exports: Vec<(String, String)>,
}

/// Create the state directory, CA, bundle and dev identity if missing; write and load the
/// config; issue the agent's token.
fn prepare(args: &DevArgs) -> Result<Prepared, CmdError> {
    let dir = absolute(&args.state_dir);
    let rt = CmdError::Runtime;
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))
        .map_err(rt)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set the mode of {}", dir.display()))
        .map_err(rt)?;
    let ca_dir = dir.join("ca");
    match (ca_dir.join("ca.crt").exists(), ca_dir.join("ca.key").exists()) {
        (true, true) => {}
        (false, false) => {
            credproxy_tls::init_ca(&ca_dir, false)
                .context("cannot create the dev CA")
                .map_err(rt)?;
        }
        _ => {
            return Err(rt(anyhow!(
                "{} holds only half of a CA (ca.crt and ca.key must both exist); remove the directory to create a new one",
                ca_dir.display()
            )))
        }
    }
    write_bundle(&dir).map_err(rt)?;

    let identity_dir = dir.join("identity");
    let issuer = DevIssuer::load_or_create(&identity_dir)
        .context("cannot create or load the dev issuer")
        .map_err(rt)?;
    let jwks = identity_dir.join("jwks.json");
    std::fs::write(&jwks, issuer.jwks_json())
        .with_context(|| format!("cannot write {}", jwks.display()))
        .map_err(rt)?;

    let creds = credentials(args, &dir)?;
    let doc = config_document(args, &creds.entries)?;
    let yaml = serde_yaml::to_string(&doc)
        .context("cannot render the config")
        .map_err(rt)?;
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        format!("# Generated by `credproxy dev` on every start; edits are overwritten.\n{yaml}"),
    )
    .with_context(|| format!("cannot write {}", path.display()))
    .map_err(rt)?;
    let config = Config::load(&path).map_err(|e| {
        CmdError::Usage(anyhow!(
            "the options give an invalid config ({}):\n{}",
            path.display(),
            e.to_string().trim_end()
        ))
    })?;
    let token = issuer
        .issue(DEV_AGENT, &[DEV_ROLE.to_owned()], DEV_TOKEN_TTL)
        .context("cannot issue the dev token")
        .map_err(rt)?;
    Ok(Prepared {
        config,
        token,
        exports: creds.exports,
    })
}

/// The generated configuration, section by section.
fn config_document(args: &DevArgs, credentials: &[Value]) -> Result<Value, CmdError> {
    let mut doc = Mapping::new();
    doc.insert(
        "listeners".into(),
        Value::Sequence(vec![map([
            ("name", "dev".into()),
            ("tcp", args.listen.as_str().into()),
        ])]),
    );
    doc.insert("admin".into(), map([("tcp", args.admin.as_str().into())]));
    doc.insert(
        "ca".into(),
        map([
            ("cert_file", "ca/ca.crt".into()),
            ("key_file", "ca/ca.key".into()),
        ]),
    );

    let mut allowed: Vec<String> = if args.allow.is_empty() {
        DEFAULT_ALLOWED.iter().map(|d| (*d).to_owned()).collect()
    } else {
        args.allow.clone()
    };
    // A credential can only be sent to an allowed destination: allow its domains too.
    for c in credentials {
        if let Some(Value::Sequence(domains)) = c.get("bound_domains") {
            for d in domains.iter().filter_map(Value::as_str) {
                if !allowed.iter().any(|a| a == d) {
                    allowed.push(d.to_owned());
                }
            }
        }
    }
    doc.insert("allowed_domains".into(), strings(&allowed));

    let mut resolve = Mapping::new();
    for r in &args.resolve {
        let (host, addr) = r
            .split_once('=')
            .ok_or_else(|| CmdError::Usage(anyhow!("--resolve {r:?}: expected HOST=IP:PORT")))?;
        resolve.insert(host.into(), addr.into());
    }
    let extra_ca: Vec<String> = args
        .upstream_ca
        .iter()
        .map(|f| absolute(f).to_string_lossy().into_owned())
        .collect();
    doc.insert(
        "upstream".into(),
        map([
            ("extra_ca_files", strings(&extra_ca)),
            ("resolve", Value::Mapping(resolve)),
        ]),
    );

    // Agents authenticate with tokens from the dev issuer, verified like any other.
    doc.insert(
        "identity".into(),
        map([(
            "oidc",
            map([
                ("issuer", DEV_ISSUER.into()),
                ("audiences", strings(&[DEV_AUDIENCE.to_owned()])),
                ("algorithms", strings(&["ES256".to_owned()])),
                ("jwks_file", "identity/jwks.json".into()),
            ]),
        )]),
    );

    if let Some(address) = &args.openbao {
        let mut bao = Mapping::new();
        bao.insert("address".into(), address.as_str().into());
        if let Some(ca) = &args.openbao_ca_file {
            bao.insert("ca_file".into(), path_value(ca));
        }
        if let Some(token) = &args.openbao_token_file {
            bao.insert("auth".into(), map([("token_file", path_value(token))]));
        }
        doc.insert("secrets".into(), map([("openbao", Value::Mapping(bao))]));
    }
    if !credentials.is_empty() {
        doc.insert("credentials".into(), Value::Sequence(credentials.to_vec()));
    }
    // Every credential use is recorded: `credproxy audit list --db <state>/audit.db`.
    doc.insert("audit".into(), map([("path", "audit.db".into())]));
    doc.insert(
        "log".into(),
        map([("format", "pretty".into()), ("level", "info".into())]),
    );
    Ok(Value::Mapping(doc))
}

/// The credentials of `--credentials-file` and `--credential`, completed (placeholders,
/// default roles, absolute paths), and what the agent must export for each.
struct DevCredentials {
    entries: Vec<Value>,
    exports: Vec<(String, String)>,
}

fn credentials(args: &DevArgs, state: &Path) -> Result<DevCredentials, CmdError> {
    let usage = CmdError::Usage;
    let mut entries: Vec<Value> = Vec::new();
    if let Some(file) = &args.credentials_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))
            .map_err(usage)?;
        let doc: Value = serde_yaml::from_str(&text)
            .map_err(|e| usage(anyhow!("{}: not valid YAML: {e}", file.display())))?;
        let Value::Sequence(items) = doc else {
            return Err(usage(anyhow!(
                "{}: expected a YAML list of credentials",
                file.display()
            )));
        };
        let base = absolute(file.parent().unwrap_or(Path::new(".")));
        for (i, mut item) in items.into_iter().enumerate() {
            let Value::Mapping(m) = &mut item else {
                return Err(usage(anyhow!(
                    "{}: entry {i} is not a mapping",
                    file.display()
                )));
            };
            if m.get("id").and_then(Value::as_str).is_none() {
                return Err(usage(anyhow!("{}: entry {i} has no id", file.display())));
            }
            // A relative source file is relative to the credentials file, not to the
            // generated config in the state directory.
            if let Some(Value::Mapping(source)) = m.get_mut("source") {
                if let Some(Value::String(f)) = source.get_mut("file") {
                    *f = base.join(&*f).to_string_lossy().into_owned();
                }
            }
            entries.push(item);
        }
    }
    for spec in &args.credentials {
        let c = CredentialSpec::parse(spec)
            .map_err(|e| usage(anyhow!("--credential {spec:?}: {e}")))?;
        if matches!(c.source, SpecSource::OpenBao { .. }) && args.openbao.is_none() {
            return Err(usage(anyhow!(
                "--credential {spec:?}: openbao= needs --openbao URL and --openbao-token-file"
            )));
        }
        entries.push(c.to_value());
    }

    let mut store = PlaceholderStore::load(state).map_err(CmdError::Runtime)?;
    let mut exports = Vec::new();
    for entry in &mut entries {
        let Value::Mapping(m) = entry else { continue };
        let id = m
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let placeholder = match m.get("placeholder").and_then(Value::as_str) {
            Some(p) => p.to_owned(),
            None => {
                let p = store.get_or_generate(&id);
                m.insert("placeholder".into(), p.as_str().into());
                p
            }
        };
        if !m.contains_key("allowed_roles") {
            m.insert("allowed_roles".into(), strings(&[DEV_ROLE.to_owned()]));
        }
        let env = m
            .get("source")
            .and_then(|s| s.get("env"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        match env {
            Some(var) => {
                // The real value comes from credproxy's own environment; refuse to start
                // without it rather than failing the agent's first request.
                if std::env::var_os(&var).is_none() {
                    return Err(usage(anyhow!(
                        "credential {id}: the environment variable {var} is not set in credproxy's environment"
                    )));
                }
                exports.push((var, placeholder));
            }
            None => exports.push((placeholder_var(&id), placeholder)),
        }
    }
    store.save().map_err(CmdError::Runtime)?;
    Ok(DevCredentials { entries, exports })
}

/// `CREDPROXY_PLACEHOLDER_<ID>`, the ID upper-cased with `-` as `_`.
fn placeholder_var(id: &str) -> String {
    let id: String = id
        .chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' => c,
            _ => '_',
        })
        .collect();
    format!("CREDPROXY_PLACEHOLDER_{id}")
}

/// One `--credential` option.
#[derive(Debug, PartialEq, Eq)]
struct CredentialSpec {
    id: String,
    kind: String,
    header: Option<String>,
    prefix: Option<String>,
    placeholder: Option<String>,
    domains: Vec<String>,
    roles: Vec<String>,
    source: SpecSource,
}

#[derive(Debug, PartialEq, Eq)]
enum SpecSource {
    Env(String),
    File(PathBuf),
    OpenBao { path: String, field: String },
}

const SPEC_KEYS: &str = "id, domain, env, file, openbao, type, header, prefix, placeholder, role";

impl CredentialSpec {
    fn parse(spec: &str) -> Result<CredentialSpec, String> {
        let mut one: BTreeMap<&str, String> = BTreeMap::new();
        let mut domains = Vec::new();
        let mut roles = Vec::new();
        for part in spec.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not KEY=VALUE (keys: {SPEC_KEYS})"))?;
            let key = key.trim();
            if value.is_empty() {
                return Err(format!("{key}= is empty"));
            }
            match key {
                "domain" => domains.push(value.to_owned()),
                "role" => roles.push(value.to_owned()),
                "id" | "env" | "file" | "openbao" | "type" | "header" | "prefix"
                | "placeholder" => {
                    if one.insert(key, value.to_owned()).is_some() {
                        return Err(format!("{key}= is given twice"));
                    }
                }
                other => return Err(format!("unknown key {other:?} (keys: {SPEC_KEYS})")),
            }
        }
        let id = one.remove("id").ok_or("id= is missing")?;
        if domains.is_empty() {
            return Err("domain= is missing (the destination the credential is for)".into());
        }
        let kind = one.remove("type").unwrap_or_else(|| "api_key".to_owned());
        if credproxy_config::CredentialKind::from_name(&kind).is_none() {
            return Err(format!(
                "type={kind}: expected one of {}",
                credproxy_config::CredentialKind::names()
            ));
        }
        let header = one.remove("header");
        if header.is_none() && (kind == "api_key" || kind == "header") {
            return Err(format!("header= is missing (required for type {kind})"));
        }
        let sources = [
            one.remove("env").map(SpecSource::Env),
            one.remove("file")
                .map(|f| SpecSource::File(absolute(Path::new(&f)))),
            one.remove("openbao").map(|o| {
                let (path, field) = o.split_once('#').unwrap_or((&o, "key"));
                SpecSource::OpenBao {
                    path: path.to_owned(),
                    field: field.to_owned(),
                }
            }),
        ];
        let mut sources = sources.into_iter().flatten();
        let source = match (sources.next(), sources.next()) {
            (Some(s), None) => s,
            _ => return Err("needs exactly one of env=, file=, openbao=".into()),
        };
        if let SpecSource::OpenBao { path, field } = &source {
            if path.is_empty() || field.is_empty() {
                return Err("openbao= expects PATH#FIELD, e.g. openbao=dev/anthropic#key".into());
            }
        }
        Ok(CredentialSpec {
            id,
            kind,
            header,
            prefix: one.remove("prefix"),
            placeholder: one.remove("placeholder"),
            domains,
            roles,
            source,
        })
    }

    /// The entry in the configuration's `credentials` format.
    fn to_value(&self) -> Value {
        let mut m = Mapping::new();
        m.insert("id".into(), self.id.as_str().into());
        if let Some(p) = &self.placeholder {
            m.insert("placeholder".into(), p.as_str().into());
        }
        m.insert("type".into(), self.kind.as_str().into());
        if let Some(h) = &self.header {
            m.insert("header_name".into(), h.as_str().into());
        }
        if let Some(p) = &self.prefix {
            m.insert("header_prefix".into(), p.as_str().into());
        }
        m.insert("bound_domains".into(), strings(&self.domains));
        if !self.roles.is_empty() {
            m.insert("allowed_roles".into(), strings(&self.roles));
        }
        let source = match &self.source {
            SpecSource::Env(var) => map([("env", var.as_str().into())]),
            SpecSource::File(path) => map([("file", path_value(path))]),
            SpecSource::OpenBao { path, field } => map([(
                "openbao",
                map([
                    ("path", path.as_str().into()),
                    ("field", field.as_str().into()),
                ]),
            )]),
        };
        m.insert("source".into(), source);
        Value::Mapping(m)
    }
}

/// `placeholders.json`: credential id → the placeholder generated for it.
struct PlaceholderStore {
    path: PathBuf,
    map: BTreeMap<String, String>,
    changed: bool,
}

impl PlaceholderStore {
    fn load(state: &Path) -> anyhow::Result<PlaceholderStore> {
        let path = state.join("placeholders.json");
        let map = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let doc: serde_json::Value = serde_json::from_str(&text).with_context(|| {
                    format!("{} is not JSON; remove it to start over", path.display())
                })?;
                doc.as_object()
                    .ok_or_else(|| {
                        anyhow!(
                            "{} is not a JSON object; remove it to start over",
                            path.display()
                        )
                    })?
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display())))
            }
        };
        Ok(PlaceholderStore {
            path,
            map,
            changed: false,
        })
    }

    fn get_or_generate(&mut self, id: &str) -> String {
        if let Some(p) = self.map.get(id) {
            return p.clone();
        }
        let p = format!(
            "{}{}",
            DEFAULT_PLACEHOLDER_PREFIX,
            uuid::Uuid::new_v4().hyphenated()
        );
        self.map.insert(id.to_owned(), p.clone());
        self.changed = true;
        p
    }

    fn save(&self) -> anyhow::Result<()> {
        if !self.changed {
            return Ok(());
        }
        let text = serde_json::to_string_pretty(&self.map).context("cannot render placeholders")?;
        std::fs::write(&self.path, format!("{text}\n"))
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// The default placeholder shape: this prefix and a lowercase UUID.
const DEFAULT_PLACEHOLDER_PREFIX: &str = "agent-vault-";

/// `ca-bundle.pem`: the system roots plus the dev CA, for clients (curl, git, Python, the AWS
/// SDKs) whose CA setting replaces the system store instead of adding to it.
fn write_bundle(dir: &Path) -> anyhow::Result<()> {
    let ca = std::fs::read_to_string(dir.join("ca/ca.crt")).context("cannot read the dev CA")?;
    let system = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .unwrap_or_default();
    let mut bundle = system;
    if !bundle.is_empty() && !bundle.ends_with('\n') {
        bundle.push('\n');
    }
    bundle.push_str(&ca);
    let path = dir.join("ca-bundle.pem");
    std::fs::write(&path, bundle).with_context(|| format!("cannot write {}", path.display()))
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Mapping(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

fn strings(items: &[String]) -> Value {
    Value::Sequence(items.iter().map(|s| s.as_str().into()).collect())
}

fn path_value(p: &Path) -> Value {
    absolute(p).to_string_lossy().into_owned().into()
}

/// Everything the printed environment is made of.
pub struct AgentEnv<'a> {
    pub proxy: &'a str,
    pub token: &'a str,
    pub state: &'a Path,
    pub admin: Option<std::net::SocketAddr>,
    /// `NAME=<placeholder>` per credential.
    pub placeholders: &'a [(String, String)],
}

/// Hosts that never go through the proxy (it would refuse them: loopback is a private
/// address), so local tools keep working in the agent's shell.
const NO_PROXY: &str = "localhost,127.0.0.1,::1";

/// What an agent needs, as shell exports, plus one example. `NODE_USE_ENV_PROXY` is always
/// the last export.
///
/// Each client reads its own variables, and several ignore the generic ones, so every one a
/// common client reads is set (the values replace whatever the shell had, e.g. a CI image's
/// `CURL_CA_BUNDLE`):
///
/// | Variable | Read by |
/// |---|---|
/// | `HTTPS_PROXY`/`https_proxy`, `HTTP_PROXY`/`http_proxy` | curl and git (libcurl reads `http_proxy` lowercase only), Python, Go, Node with `NODE_USE_ENV_PROXY=1` |
/// | `NO_PROXY`/`no_proxy` | the same clients |
/// | `CURL_CA_BUNDLE` | curl (it wins over `SSL_CERT_FILE`) |
/// | `GIT_SSL_CAINFO` | git (libcurl with a built-in CA path ignores `SSL_CERT_FILE`) |
/// | `SSL_CERT_FILE` | OpenSSL-based clients, Python's `ssl` and httpx (the Anthropic and OpenAI SDKs), Go, curl when `CURL_CA_BUNDLE` is unset |
/// | `REQUESTS_CA_BUNDLE` | Python requests |
/// | `AWS_CA_BUNDLE` | the AWS CLI and SDKs |
/// | `NODE_EXTRA_CA_CERTS` | Node (adds to its built-in roots, so the CA alone) |
pub fn agent_env(e: &AgentEnv<'_>) -> String {
    let bundle = e.state.join("ca-bundle.pem");
    let ca = e.state.join("ca/ca.crt");
    // The token is a JWT (base64url and dots): safe in a URL's userinfo and in a shell word.
    let url = format!(
        "http://{}:{}@{}",
        crate::token_cmd::userinfo_encode(DEV_AGENT),
        e.token,
        e.proxy
    );
    let mut s = String::new();
    let _ = writeln!(s, "# credproxy dev is running. In the agent's shell:");
    for name in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
        let _ = writeln!(s, "export {name}={url}");
    }
    for name in ["NO_PROXY", "no_proxy"] {
        let _ = writeln!(s, "export {name}={NO_PROXY}");
    }
    let bundle = shell_quote(&bundle);
    for name in [
        "SSL_CERT_FILE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "REQUESTS_CA_BUNDLE",
        "AWS_CA_BUNDLE",
    ] {
        let _ = writeln!(s, "export {name}={bundle}");
    }
    let _ = writeln!(s, "export NODE_EXTRA_CA_CERTS={}", shell_quote(&ca));
    if !e.placeholders.is_empty() {
        let _ = writeln!(
            s,
            "# placeholders: the agent sends these, credproxy injects the real values"
        );
        for (name, placeholder) in e.placeholders {
            let _ = writeln!(s, "export {name}={placeholder}");
        }
    }
    let _ = writeln!(s, "export NODE_USE_ENV_PROXY=1");
    let _ = writeln!(
        s,
        "# the token in HTTPS_PROXY is for agent {DEV_AGENT} (role {DEV_ROLE}) and expires in 24h;"
    );
    let _ = writeln!(
        s,
        "# `credproxy token --dev --state-dir {}` prints a fresh one",
        shell_quote(e.state)
    );
    let _ = writeln!(s, "# example: curl -sS https://api.github.com/zen");
    if let Some(a) = e.admin {
        let _ = writeln!(s, "# metrics: curl -s http://{a}/metrics");
    }
    s
}

/// Quote a path for a POSIX shell when it needs it.
fn shell_quote(p: &Path) -> String {
    let s = p.to_string_lossy();
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%".contains(&b))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_credential_spec() {
        let c = CredentialSpec::parse(
            "id=anthropic,env=ANTHROPIC_API_KEY,domain=api.anthropic.com,header=x-api-key,prefix=Key ,role=a,role=b",
        )
        .unwrap();
        assert_eq!(c.id, "anthropic");
        assert_eq!(c.kind, "api_key");
        assert_eq!(c.header.as_deref(), Some("x-api-key"));
        assert_eq!(c.prefix.as_deref(), Some("Key "));
        assert_eq!(c.roles, ["a", "b"]);
        assert_eq!(c.source, SpecSource::Env("ANTHROPIC_API_KEY".into()));

        let c = CredentialSpec::parse("id=gh,type=bearer,openbao=dev/gh,domain=api.github.com")
            .unwrap();
        assert_eq!(c.header, None);
        assert_eq!(
            c.source,
            SpecSource::OpenBao {
                path: "dev/gh".into(),
                field: "key".into()
            }
        );
    }

    #[test]
    fn rejects_bad_specs_naming_the_part() {
        for (spec, says) in [
            ("id=a,env=X,domain=d,header=h,colour=red", "colour"),
            ("id=a,env=X,domain=d,header=h,oops", "oops"),
            ("env=X,domain=d,header=h", "id="),
            ("id=a,env=X,header=h", "domain="),
            ("id=a,domain=d,header=h", "exactly one"),
            ("id=a,env=X,file=f,domain=d,header=h", "exactly one"),
            ("id=a,env=X,domain=d", "header="),
            ("id=a,env=X,domain=d,type=oauth", "type=oauth"),
            ("id=a,id=b,env=X,domain=d,header=h", "twice"),
            ("id=a,env=,domain=d,header=h", "env="),
        ] {
            let e = CredentialSpec::parse(spec).unwrap_err();
            assert!(e.contains(says), "{spec}: {e}");
        }
    }

    #[test]
    fn placeholder_variable_names() {
        assert_eq!(
            placeholder_var("my-key_2"),
            "CREDPROXY_PLACEHOLDER_MY_KEY_2"
        );
    }
}
