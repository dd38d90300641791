//! The input document a policy sees as `input`.
//!
//! The serde representation of [`PolicyInput`] *is* the documented format
//! (`docs/policy.md`, `docs/policy-input.schema.json`): the CLI prints it with
//! `credproxy policy input` and reads it back for `credproxy policy eval`. On the
//! evaluation path the proxy does not go through JSON; [`PolicyInput::to_value`] builds the
//! same document directly, and a test checks that both agree.

use std::collections::BTreeMap;

use regorus::Value;
use serde::{Deserialize, Serialize};

/// Version of the input document. Bump it on any change a policy could notice (a renamed or
/// removed field, a changed meaning); adding a field does not need a bump.
pub const INPUT_VERSION: u32 = 1;

/// Everything a policy may know about one request. It never holds a secret: credentials
/// appear by id and metadata only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyInput {
    /// [`INPUT_VERSION`] when built by this crate.
    pub version: u32,
    /// The verified agent, or `None` (JSON `null`) when the request carried no valid token.
    pub identity: Option<IdentityInput>,
    pub request: RequestInput,
    /// One entry per credential placeholder found in the request, in the order found.
    pub credentials: Vec<CredentialInput>,
    pub listener: ListenerInput,
    /// When the proxy received the request, RFC 3339 in UTC (e.g. `2025-01-01T12:00:00Z`).
    /// Policies should use it rather than `time.now_ns()` so that `policy eval` replays a
    /// decision exactly.
    pub time: String,
}

/// The verified agent behind a request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdentityInput {
    /// The agent id taken from the token's `identity.oidc.agent_claim` (`azp` by default).
    pub agent_id: String,
    /// The token's `sub` claim.
    pub subject: String,
    pub roles: Vec<String>,
    pub groups: Vec<String>,
    /// The token's `iss` claim.
    pub issuer: String,
}

/// The request being authorized. Query *values* are left out on purpose: they may carry
/// secrets or personal data, and a policy should not depend on them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RequestInput {
    /// Upper-case HTTP method, e.g. `GET`.
    pub method: String,
    /// Canonical `host:port`, always with the port, e.g. `api.github.com:443`.
    pub authority: String,
    /// Canonical host: lower case, no trailing dot, IDNA names in punycode, IPv6 in brackets.
    pub host: String,
    pub port: u16,
    /// `https` or `http`.
    pub scheme: String,
    /// The path as it will be forwarded, without the query string; not decoded.
    pub path: String,
    /// Names of the query parameters in order of appearance (duplicates kept), decoded.
    pub query_keys: Vec<String>,
    /// Whether the destination matches the proxy's destination allowlist.
    pub allowlisted: bool,
}

/// A credential placeholder found in the request. Never the secret itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CredentialInput {
    /// The credential id from the configuration.
    pub id: String,
    /// The credential kind from the configuration: `api_key`, `bearer`, `basic_auth` or
    /// `header`.
    #[serde(rename = "type")]
    pub r#type: String,
    /// Where the placeholder was found: `header:<name>` (lower case),
    /// `header:authorization(basic)`, `query`, `path` or `body`.
    pub location: String,
    /// The credential's `bound_domains` patterns as configured (same syntax as the
    /// allowlist, e.g. `api.github.com`, `*.example.com`).
    pub bound_domains: Vec<String>,
    /// Whether this request's host is one of `bound_domains`, computed by the proxy with the
    /// same matching rules as the configuration.
    pub bound: bool,
    /// Roles that may use the credential, as configured.
    pub allowed_roles: Vec<String>,
}

/// The listener the request arrived on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenerInput {
    /// The listener's name in the configuration.
    pub name: String,
    /// `tcp`, `unix` or `vsock`.
    pub kind: String,
    /// The peer as the listener reports it (`credproxy_core::PeerAddr`'s display form):
    /// `ip:port` for TCP, `unix uid=… pid=…` for a Unix socket (uid and pid when known).
    pub peer: String,
}

/// The JSON schema of the input document (draft 2020-12); the same file as
/// `docs/policy-input.schema.json`.
pub fn input_schema() -> &'static str {
    include_str!("../../../docs/policy-input.schema.json")
}

impl PolicyInput {
    /// The document as a regorus value, built directly rather than through JSON text: this
    /// runs for every request and a JSON round trip would cost more than the policy itself.
    pub fn to_value(&self) -> Value {
        let mut doc = BTreeMap::new();
        put(&mut doc, "version", Value::from(u64::from(self.version)));
        put(
            &mut doc,
            "identity",
            self.identity
                .as_ref()
                .map_or(Value::Null, IdentityInput::to_value),
        );
        put(&mut doc, "request", self.request.to_value());
        put(
            &mut doc,
            "credentials",
            Value::from(
                self.credentials
                    .iter()
                    .map(CredentialInput::to_value)
                    .collect::<Vec<_>>(),
            ),
        );
        put(&mut doc, "listener", self.listener.to_value());
        put(&mut doc, "time", Value::from(self.time.as_str()));
        Value::from(doc)
    }
}

impl IdentityInput {
    fn to_value(&self) -> Value {
        let mut doc = BTreeMap::new();
        put(&mut doc, "agent_id", Value::from(self.agent_id.as_str()));
        put(&mut doc, "subject", Value::from(self.subject.as_str()));
        put(&mut doc, "roles", strings(&self.roles));
        put(&mut doc, "groups", strings(&self.groups));
        put(&mut doc, "issuer", Value::from(self.issuer.as_str()));
        Value::from(doc)
    }
}

impl RequestInput {
    fn to_value(&self) -> Value {
        let mut doc = BTreeMap::new();
        put(&mut doc, "method", Value::from(self.method.as_str()));
        put(&mut doc, "authority", Value::from(self.authority.as_str()));
        put(&mut doc, "host", Value::from(self.host.as_str()));
        put(&mut doc, "port", Value::from(u64::from(self.port)));
        put(&mut doc, "scheme", Value::from(self.scheme.as_str()));
        put(&mut doc, "path", Value::from(self.path.as_str()));
        put(&mut doc, "query_keys", strings(&self.query_keys));
        put(&mut doc, "allowlisted", Value::from(self.allowlisted));
        Value::from(doc)
    }
}

impl CredentialInput {
    fn to_value(&self) -> Value {
        let mut doc = BTreeMap::new();
        put(&mut doc, "id", Value::from(self.id.as_str()));
        put(&mut doc, "type", Value::from(self.r#type.as_str()));
        put(&mut doc, "location", Value::from(self.location.as_str()));
        put(&mut doc, "bound_domains", strings(&self.bound_domains));
        put(&mut doc, "bound", Value::from(self.bound));
        put(&mut doc, "allowed_roles", strings(&self.allowed_roles));
        Value::from(doc)
    }
}

impl ListenerInput {
    fn to_value(&self) -> Value {
        let mut doc = BTreeMap::new();
        put(&mut doc, "name", Value::from(self.name.as_str()));
        put(&mut doc, "kind", Value::from(self.kind.as_str()));
        put(&mut doc, "peer", Value::from(self.peer.as_str()));
        Value::from(doc)
    }
}

fn put(doc: &mut BTreeMap<Value, Value>, key: &str, value: Value) {
    doc.insert(Value::from(key), value);
}

fn strings(items: &[String]) -> Value {
    Value::from(
        items
            .iter()
            .map(|s| Value::from(s.as_str()))
            .collect::<Vec<_>>(),
    )
}
