//! Stage one: the shape of the document. Every section is deserialised on its own (and every
//! list element on its own), so one misspelt key does not hide the problems after it.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

use crate::error::{ConfigError, ConfigErrors};

#[derive(Debug, Default)]
pub struct RawConfig {
    pub listeners: Option<Vec<Option<RawListener>>>,
    pub admin: Option<RawAdmin>,
    pub ca: Option<RawCa>,
    pub allowed_domains: Option<Vec<String>>,
    pub upstream: Option<RawUpstream>,
    pub limits: Option<RawLimits>,
    pub log: Option<RawLog>,
    pub identity: Option<RawIdentity>,
    pub policy: Option<RawPolicy>,
    pub secrets: Option<RawSecrets>,
    pub credentials: Option<Vec<Option<RawCredential>>>,
    pub audit: Option<RawAudit>,
    pub internal_services: Option<BTreeMap<String, Option<RawInternalService>>>,
    /// Errors found while reading the shape; validation adds its own and reports all.
    pub errors: Vec<ConfigError>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Option<String>,
    pub tcp: Option<String>,
    pub unix: Option<String>,
    pub vsock: Option<RawVsock>,
    pub vsock_uds: Option<RawVsockUds>,
    pub unix_mode: Option<String>,
    pub peer_uids: Option<Vec<RawUid>>,
    pub agent: Option<String>,
    pub agent_token: Option<RawAgentToken>,
}

/// One `peer_uids` entry: a uid, or `"FIRST-LAST"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawUid {
    Number(i64),
    Word(String),
}

/// `internal_services.<name>`: where credproxy sends requests for an internal name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInternalService {
    pub unix: Option<String>,
}

/// `listeners[].agent_token`: how the proxy obtains the listener agent's token.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgentToken {
    pub client_credentials: Option<RawClientCredentials>,
    pub dev_issuer: Option<RawDevIssuerToken>,
}

/// `listeners[].agent_token.client_credentials`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientCredentials {
    pub token_url: Option<String>,
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_file: Option<String>,
    pub audience: Option<String>,
    pub scope: Option<String>,
    #[serde(default)]
    pub ca_files: Vec<String>,
}

/// `listeners[].agent_token.dev_issuer`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevIssuerToken {
    pub key_file: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    pub ttl: Option<String>,
}

/// `listeners[].vsock`: `{cid: any | N, port: P, peer_cid: N}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVsock {
    pub cid: Option<RawCid>,
    pub port: Option<u32>,
    pub peer_cid: Option<u32>,
}

/// A CID: a number, or the word `any`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawCid {
    Number(u32),
    Word(String),
}

/// `listeners[].vsock_uds`: `{path: P, port: N}` binds the Unix socket `P_N`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVsockUds {
    pub path: Option<String>,
    pub port: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub tcp: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCa {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub leaf_validity: Option<String>,
    pub leaf_cache_size: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    #[serde(default)]
    pub extra_ca_files: Vec<String>,
    #[serde(default)]
    pub resolve: BTreeMap<String, String>,
    #[serde(default)]
    pub allow_private_networks: Vec<String>,
    pub connect_timeout: Option<String>,
    pub response_header_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle_per_host: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_header_bytes: Option<usize>,
    pub max_connections: Option<usize>,
    pub shutdown_grace: Option<String>,
    pub body_scan_window: Option<usize>,
    pub body_idle_timeout: Option<String>,
    pub max_injected_body_bytes: Option<u64>,
    pub max_connections_per_identity: Option<usize>,
    pub max_streams_per_identity: Option<usize>,
    pub max_streams_per_connection: Option<u32>,
    pub body_scan_memory_per_connection: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub oidc: Option<RawOidc>,
    #[serde(default)]
    pub danger_allow_anonymous: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    pub issuer: Option<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub roles_claim: Option<String>,
    pub groups_claim: Option<String>,
    pub agent_claim: Option<String>,
    pub algorithms: Option<Vec<String>>,
    pub leeway: Option<String>,
    pub jwks_min_refresh_interval: Option<String>,
    pub max_token_bytes: Option<usize>,
    #[serde(default)]
    pub ca_files: Vec<String>,
    pub jwks_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub dir: Option<String>,
    pub eval_limit: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecrets {
    pub openbao: Option<RawOpenBao>,
    pub cache_ttl: Option<String>,
    pub scrub_retention: Option<String>,
    pub scrub_refresh: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOpenBao {
    pub address: Option<String>,
    pub ca_file: Option<String>,
    pub namespace: Option<String>,
    pub auth: Option<RawOpenBaoAuth>,
    pub kv_mount: Option<String>,
    pub cache_ttl: Option<String>,
    pub request_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOpenBaoAuth {
    pub token_file: Option<String>,
    pub approle: Option<RawAppRole>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAppRole {
    pub role_id_file: Option<String>,
    pub secret_id_file: Option<String>,
    pub mount: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredential {
    pub id: Option<String>,
    pub placeholder: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub header_name: Option<String>,
    pub header_prefix: Option<String>,
    pub username: Option<String>,
    #[serde(default)]
    pub bound_domains: Vec<String>,
    #[serde(default)]
    pub allowed_roles: Vec<String>,
    #[serde(default)]
    pub allowed_agents: Vec<String>,
    pub inject_in: Option<Vec<String>>,
    pub foreign_value: Option<String>,
    pub source: Option<RawSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub file: Option<String>,
    pub env: Option<String>,
    pub openbao: Option<RawOpenBaoSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOpenBaoSource {
    pub path: Option<String>,
    pub field: Option<String>,
    pub version: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub path: Option<String>,
    pub retention: Option<String>,
    pub max_size_bytes: Option<u64>,
    pub temporal: Option<RawTemporal>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemporal {
    pub address: Option<String>,
    pub namespace: Option<String>,
    pub task_queue: Option<String>,
    pub signal_timeout: Option<String>,
}

const SECTIONS: &[&str] = &[
    "listeners",
    "admin",
    "ca",
    "allowed_domains",
    "upstream",
    "limits",
    "log",
    "identity",
    "policy",
    "secrets",
    "credentials",
    "audit",
    "internal_services",
];

/// Parse the document's shape. A YAML syntax error is fatal (nothing after it can be read);
/// shape errors are collected in `RawConfig::errors`.
pub fn parse(text: &str) -> Result<RawConfig, ConfigErrors> {
    let doc: Value = serde_yaml::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(" at line {} column {}", l.line(), l.column()))
            .unwrap_or_default();
        ConfigErrors::one(ConfigError::new(
            "",
            format!("not valid YAML{at}: {}", strip_location(&e.to_string())),
        ))
    })?;
    let mut raw = RawConfig::default();
    let map = match doc {
        Value::Mapping(m) => m,
        Value::Null => {
            raw.errors
                .push(ConfigError::new("", "the configuration is empty"));
            return Ok(raw);
        }
        _ => {
            return Err(ConfigErrors::one(ConfigError::new(
                "",
                "expected a mapping of sections at the top level",
            )))
        }
    };
    for (k, v) in map {
        let Some(key) = k.as_str().map(str::to_owned) else {
            raw.errors
                .push(ConfigError::new("", "top-level keys must be strings"));
            continue;
        };
        match key.as_str() {
            "listeners" => raw.listeners = section_list(&key, v, &mut raw.errors),
            "admin" => raw.admin = section(&key, v, &mut raw.errors),
            "ca" => raw.ca = section(&key, v, &mut raw.errors),
            "allowed_domains" => raw.allowed_domains = section(&key, v, &mut raw.errors),
            "upstream" => raw.upstream = section(&key, v, &mut raw.errors),
            "limits" => raw.limits = section(&key, v, &mut raw.errors),
            "log" => raw.log = section(&key, v, &mut raw.errors),
            "identity" => raw.identity = section(&key, v, &mut raw.errors),
            "policy" => raw.policy = section(&key, v, &mut raw.errors),
            "secrets" => raw.secrets = section(&key, v, &mut raw.errors),
            "credentials" => raw.credentials = section_list(&key, v, &mut raw.errors),
            "audit" => raw.audit = section(&key, v, &mut raw.errors),
            "internal_services" => raw.internal_services = section_map(&key, v, &mut raw.errors),
            other => raw.errors.push(ConfigError::new(
                other,
                format!("unknown section, expected one of {}", SECTIONS.join(", ")),
            )),
        }
    }
    Ok(raw)
}

fn section<T: DeserializeOwned>(key: &str, v: Value, errors: &mut Vec<ConfigError>) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(v) {
        Ok(t) => Some(t),
        Err(e) => {
            let inner = e.path().to_string();
            let path = if inner == "." || inner.is_empty() {
                key.to_string()
            } else {
                format!("{key}.{inner}")
            };
            errors.push(ConfigError::new(path, clean(&e.into_inner().to_string())));
            None
        }
    }
}

fn section_list<T: DeserializeOwned>(
    key: &str,
    v: Value,
    errors: &mut Vec<ConfigError>,
) -> Option<Vec<Option<T>>> {
    match v {
        Value::Sequence(items) => Some(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| section(&format!("{key}[{i}]"), item, errors))
                .collect(),
        ),
        Value::Null => Some(Vec::new()),
        _ => {
            errors.push(ConfigError::new(key, "expected a list"));
            None
        }
    }
}

/// A mapping whose values are read one by one, like [`section_list`]'s elements.
fn section_map<T: DeserializeOwned>(
    key: &str,
    v: Value,
    errors: &mut Vec<ConfigError>,
) -> Option<BTreeMap<String, Option<T>>> {
    match v {
        Value::Mapping(m) => {
            let mut out = BTreeMap::new();
            for (k, item) in m {
                let Some(name) = k.as_str().map(str::to_owned) else {
                    errors.push(ConfigError::new(key, "keys must be strings"));
                    continue;
                };
                let parsed = section(&format!("{key}.{name}"), item, errors);
                out.insert(name, parsed);
            }
            Some(out)
        }
        Value::Null => Some(BTreeMap::new()),
        _ => {
            errors.push(ConfigError::new(key, "expected a mapping of names"));
            None
        }
    }
}

/// serde_yaml appends " at line L column C" to messages about the whole document; the key
/// path already says where, so drop it.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn clean(msg: &str) -> String {
    strip_location(msg).replace('`', "\"")
}
