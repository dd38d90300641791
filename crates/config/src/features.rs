//! Validation of the sections that configure identity, policy, secrets, credentials and
//! audit.

use std::collections::HashSet;
use std::time::Duration;

use credproxy_core::{Allowlist, AllowlistEntry};

use crate::raw::{RawAudit, RawCredential, RawIdentity, RawPolicy, RawSecrets};
use crate::validate::Ctx;
use crate::{
    AuditConfig, CredentialConfig, CredentialKind, IdentityConfig, InjectIn, OidcConfig,
    OpenBaoAuth, OpenBaoConfig, PolicyConfig, SecretSourceConfig, SecretsConfig, TemporalConfig,
};

/// Report a leaf crate's `problems()` under the section's key path.
fn leaf_problems(cx: &mut Ctx<'_>, section: &str, problems: Vec<(&'static str, String)>) {
    for (field, reason) in problems {
        cx.err(format!("{section}.{field}"), reason);
    }
}

/// The shape of a default placeholder: `agent-vault-` and a lowercase UUID.
pub const DEFAULT_PLACEHOLDER_PREFIX: &str = "agent-vault-";

pub(crate) fn identity(cx: &mut Ctx<'_>, raw: RawIdentity) -> Option<IdentityConfig> {
    let Some(o) = raw.oidc else {
        if !raw.danger_allow_anonymous {
            cx.err(
                "identity.oidc",
                "required: agents authenticate with OIDC tokens (identity.danger_allow_anonymous: true turns authentication off for local testing)",
            );
        }
        return None;
    };
    if raw.danger_allow_anonymous {
        cx.err(
            "identity.danger_allow_anonymous",
            "cannot be combined with identity.oidc",
        );
    }
    let issuer = match o.issuer {
        Some(i) if !i.is_empty() => i,
        _ => {
            cx.err(
                "identity.oidc.issuer",
                "required: the issuer URL (exact `iss` value)",
            );
            String::new()
        }
    };
    if o.audiences.is_empty() {
        cx.err(
            "identity.oidc.audiences",
            "required: at least one audience the tokens must be issued for",
        );
    }
    // Defaults and rules are the identity crate's (`OidcConfig::new`, `problems`).
    let mut oidc = OidcConfig::new(issuer, o.audiences);
    if let Some(c) = o.roles_claim {
        oidc.roles_claim = c;
    }
    if let Some(c) = o.groups_claim {
        oidc.groups_claim = c;
    }
    if let Some(c) = o.agent_claim {
        oidc.agent_claim = c;
    }
    if let Some(a) = o.algorithms {
        oidc.algorithms = a;
    }
    oidc.leeway = cx.duration("identity.oidc.leeway", o.leeway.as_deref(), oidc.leeway);
    oidc.jwks_min_refresh_interval = cx.duration(
        "identity.oidc.jwks_min_refresh_interval",
        o.jwks_min_refresh_interval.as_deref(),
        oidc.jwks_min_refresh_interval,
    );
    if let Some(m) = o.max_token_bytes {
        oidc.max_token_bytes = m;
    }
    oidc.ca_files = o.ca_files.iter().map(|f| cx.path(f)).collect();
    // `issuer` and `audiences` were reported above as missing.
    let problems = oidc
        .problems()
        .into_iter()
        .filter(|(f, _)| !(matches!(*f, "issuer" | "audiences")))
        .collect();
    leaf_problems(cx, "identity.oidc", problems);
    let jwks_file = o.jwks_file.map(|f| cx.path(&f));
    Some(IdentityConfig { oidc, jwks_file })
}

pub(crate) fn policy(cx: &mut Ctx<'_>, raw: Option<RawPolicy>) -> PolicyConfig {
    let mut c = PolicyConfig::default();
    if let Some(p) = raw {
        c.eval_limit = cx.duration("policy.eval_limit", p.eval_limit.as_deref(), c.eval_limit);
        c.dir = p.dir.map(|d| cx.path(&d));
    }
    leaf_problems(cx, "policy", c.problems());
    c
}

pub(crate) fn secrets(cx: &mut Ctx<'_>, raw: Option<RawSecrets>) -> SecretsConfig {
    let default_ttl = credproxy_secrets::DEFAULT_CACHE_TTL;
    let Some(s) = raw else {
        return SecretsConfig {
            store: credproxy_secrets::SecretsConfig::default(),
            scrub_retention: crate::DEFAULT_SCRUB_RETENTION,
            scrub_refresh: crate::DEFAULT_SCRUB_REFRESH,
        };
    };
    let mut cache_ttl = cx.duration("secrets.cache_ttl", s.cache_ttl.as_deref(), default_ttl);
    let scrub_retention = cx.duration(
        "secrets.scrub_retention",
        s.scrub_retention.as_deref(),
        crate::DEFAULT_SCRUB_RETENTION,
    );
    if scrub_retention > Duration::from_secs(90 * 24 * 3600) {
        cx.err(
            "secrets.scrub_retention",
            "at most 90d: every retained value is scanned for in every response",
        );
    }
    let scrub_refresh = cx.duration(
        "secrets.scrub_refresh",
        s.scrub_refresh.as_deref(),
        crate::DEFAULT_SCRUB_REFRESH,
    );
    if scrub_refresh < Duration::from_secs(1) || scrub_refresh > Duration::from_secs(24 * 3600) {
        cx.err("secrets.scrub_refresh", "between 1s and 24h");
    }
    let openbao = s.openbao.and_then(|o| {
        if let Some(t) = o.cache_ttl.as_deref() {
            if s.cache_ttl.is_some() {
                cx.err(
                    "secrets.openbao.cache_ttl",
                    "set either secrets.cache_ttl or secrets.openbao.cache_ttl, not both",
                );
            }
            cache_ttl = cx.duration("secrets.openbao.cache_ttl", Some(t), default_ttl);
        }
        let address = match o.address {
            Some(a) if a.starts_with("https://") || a.starts_with("http://") => a,
            Some(a) => {
                cx.err(
                    "secrets.openbao.address",
                    format!("expected an http(s):// URL, got {a:?}"),
                );
                return None;
            }
            None => {
                cx.err("secrets.openbao.address", "required: the OpenBao URL");
                return None;
            }
        };
        let auth = match o.auth {
            None => {
                cx.err(
                    "secrets.openbao.auth",
                    "required: token_file or approle {role_id_file, secret_id_file}",
                );
                return None;
            }
            Some(a) => match (a.token_file, a.approle) {
                (Some(t), None) => OpenBaoAuth::TokenFile(cx.path(&t)),
                (None, Some(r)) => {
                    let (Some(role), Some(secret)) = (r.role_id_file, r.secret_id_file) else {
                        cx.err(
                            "secrets.openbao.auth.approle",
                            "needs role_id_file and secret_id_file",
                        );
                        return None;
                    };
                    OpenBaoAuth::AppRole {
                        role_id_file: cx.path(&role),
                        secret_id_file: cx.path(&secret),
                        mount: r
                            .mount
                            .unwrap_or_else(|| credproxy_secrets::DEFAULT_APPROLE_MOUNT.into()),
                    }
                }
                _ => {
                    cx.err(
                        "secrets.openbao.auth",
                        "needs exactly one of token_file, approle",
                    );
                    return None;
                }
            },
        };
        let request_timeout = cx.duration(
            "secrets.openbao.request_timeout",
            o.request_timeout.as_deref(),
            credproxy_secrets::DEFAULT_REQUEST_TIMEOUT,
        );
        Some(OpenBaoConfig {
            address,
            ca_file: o.ca_file.map(|f| cx.path(&f)),
            namespace: o.namespace,
            auth,
            kv_mount: o
                .kv_mount
                .unwrap_or_else(|| credproxy_secrets::DEFAULT_KV_MOUNT.into()),
            request_timeout,
        })
    });
    SecretsConfig {
        store: credproxy_secrets::SecretsConfig { openbao, cache_ttl },
        scrub_retention,
        scrub_refresh,
    }
}

/// Headers a credential may never be injected into: they frame or route the request, or
/// belong to the proxy hop.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

pub(crate) fn credentials(
    cx: &mut Ctx<'_>,
    raw: Option<Vec<Option<RawCredential>>>,
    allowed: &Allowlist,
    secrets: &SecretsConfig,
) -> Vec<CredentialConfig> {
    let mut out: Vec<CredentialConfig> = Vec::new();
    // The position of each accepted credential in the document, for error paths.
    let mut positions: Vec<usize> = Vec::new();
    let mut ids = HashSet::new();
    for (i, c) in raw.unwrap_or_default().into_iter().enumerate() {
        let Some(c) = c else { continue };
        let at = |k: &str| format!("credentials[{i}].{k}");
        let before = cx_errors(cx);
        let id = match c.id {
            Some(id)
                if !id.is_empty()
                    && id.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                    }) =>
            {
                if !ids.insert(id.clone()) {
                    cx.err(at("id"), format!("duplicate credential id {id:?}"));
                }
                id
            }
            Some(id) => {
                cx.err(
                    at("id"),
                    format!("{id:?}: use lowercase letters, digits, - and _"),
                );
                id
            }
            None => {
                cx.err(
                    at("id"),
                    "required: a short name used in policy, logs and audit",
                );
                String::new()
            }
        };
        let placeholder = match c.placeholder {
            Some(p) => {
                if let Err(msg) = check_placeholder(&p) {
                    cx.err(at("placeholder"), msg);
                }
                p
            }
            None => {
                cx.err(
                    at("placeholder"),
                    "required: e.g. agent-vault-<uuid> (generate one with `uuidgen`)",
                );
                String::new()
            }
        };
        let kind = match c.kind.as_deref() {
            Some(name) => CredentialKind::from_name(name).unwrap_or_else(|| {
                cx.err(
                    at("type"),
                    format!("expected one of {}, got {name:?}", CredentialKind::names()),
                );
                CredentialKind::ApiKey
            }),
            None => {
                cx.err(
                    at("type"),
                    format!("required: one of {}", CredentialKind::names()),
                );
                CredentialKind::ApiKey
            }
        };
        let info = kind.info();
        let header_name = match (
            c.header_name.map(|h| h.to_ascii_lowercase()),
            info.default_header,
        ) {
            (Some(h), Some(fixed)) if info.fixed_header && h != fixed => {
                cx.err(
                    at("header_name"),
                    format!("{} credentials always use the {fixed} header", info.name),
                );
                h
            }
            (Some(h), _) => h,
            (None, Some(default)) => default.to_string(),
            (None, None) => {
                cx.err(
                    at("header_name"),
                    format!("required for type {}", info.name),
                );
                String::new()
            }
        };
        if !header_name.is_empty() {
            if http_token(&header_name).is_err() {
                cx.err(
                    at("header_name"),
                    format!("{header_name:?} is not a valid header name"),
                );
            } else if FORBIDDEN_HEADERS.contains(&header_name.as_str()) {
                cx.err(
                    at("header_name"),
                    format!("{header_name:?} frames or routes the request; a credential cannot be injected there"),
                );
            }
        }
        let header_prefix = c.header_prefix.unwrap_or_default();
        if matches!(kind, CredentialKind::Bearer | CredentialKind::BasicAuth)
            && !header_prefix.is_empty()
        {
            cx.err(
                at("header_prefix"),
                format!(
                    "{} credentials have a fixed prefix; remove header_prefix",
                    kind.as_str()
                ),
            );
        }
        if header_prefix.bytes().any(|b| b.is_ascii_control()) {
            cx.err(at("header_prefix"), "must not contain control characters");
        }
        if c.username.is_some() && kind != CredentialKind::BasicAuth {
            cx.err(
                at("username"),
                "only basic_auth credentials have a username",
            );
        }
        if let Some(u) = &c.username {
            if u.contains(':') || u.bytes().any(|b| b.is_ascii_control()) {
                cx.err(at("username"), "must not contain ':' or control characters");
            }
        }
        let mut bound = Vec::new();
        if c.bound_domains.is_empty() {
            cx.err(
                at("bound_domains"),
                "required: the destinations this credential may be sent to",
            );
        }
        for (j, d) in c.bound_domains.iter().enumerate() {
            match AllowlistEntry::parse(d) {
                Ok(e) => {
                    let covered = allowed.entries().iter().any(|a| a == &e)
                        || (!d.starts_with("*.")
                            && allowed.covers_host(e.to_string().split(':').next().unwrap_or("")));
                    if !covered {
                        cx.err(
                            format!("credentials[{i}].bound_domains[{j}]"),
                            format!("{d:?} is not in allowed_domains"),
                        );
                    }
                    bound.push(e);
                }
                Err(e) => cx.err(
                    format!("credentials[{i}].bound_domains[{j}]"),
                    e.to_string(),
                ),
            }
        }
        let mut inject_in = InjectIn::default();
        for (j, loc) in c
            .inject_in
            .unwrap_or_else(|| vec!["header".into()])
            .iter()
            .enumerate()
        {
            match loc.as_str() {
                "header" => inject_in.header = true,
                "query" => inject_in.query = true,
                "body" => inject_in.body = true,
                other => cx.err(
                    format!("credentials[{i}].inject_in[{j}]"),
                    format!("expected header, query or body, got {other:?}"),
                ),
            }
        }
        if !(inject_in.header || inject_in.query || inject_in.body) {
            cx.err(at("inject_in"), "must name at least one location");
        }
        let foreign_value = match c.foreign_value.as_deref() {
            None | Some("refuse") => crate::ForeignValue::Refuse,
            Some("replace") => crate::ForeignValue::Replace,
            Some(other) => {
                cx.err(
                    at("foreign_value"),
                    format!("expected refuse or replace, got {other:?}"),
                );
                crate::ForeignValue::Refuse
            }
        };
        for (j, a) in c.allowed_agents.iter().enumerate() {
            if a.trim().is_empty() {
                cx.err(
                    format!("credentials[{i}].allowed_agents[{j}]"),
                    "must be an agent id (the token's agent claim), not empty",
                );
            }
        }
        let source = match c.source {
            None => {
                cx.err(at("source"), "required: one of file, env, openbao");
                None
            }
            Some(s) => match (s.file, s.env, s.openbao) {
                (Some(f), None, None) => Some(SecretSourceConfig::File(cx.path(&f))),
                (None, Some(e), None) => {
                    if e.is_empty() {
                        cx.err(at("source.env"), "must name an environment variable");
                    }
                    Some(SecretSourceConfig::Env(e))
                }
                (None, None, Some(o)) => {
                    if secrets.store.openbao.is_none() {
                        cx.err(
                            at("source.openbao"),
                            "needs secrets.openbao to be configured",
                        );
                    }
                    match o.path {
                        Some(p) if !p.is_empty() && !p.starts_with('/') => {
                            Some(SecretSourceConfig::OpenBao {
                                path: p,
                                field: o.field.unwrap_or_else(|| "key".into()),
                                version: o.version,
                            })
                        }
                        _ => {
                            cx.err(
                                at("source.openbao.path"),
                                "required: the KV path under the mount, e.g. openclaw/credentials/anthropic",
                            );
                            None
                        }
                    }
                }
                _ => {
                    cx.err(at("source"), "needs exactly one of file, env, openbao");
                    None
                }
            },
        };
        if cx_errors(cx) != before {
            continue;
        }
        let Some(source) = source else { continue };
        positions.push(i);
        out.push(CredentialConfig {
            id,
            placeholder,
            kind,
            header_name,
            header_prefix,
            username: c.username,
            bound_domains: Allowlist::new(bound),
            allowed_roles: c.allowed_roles,
            allowed_agents: c.allowed_agents,
            inject_in,
            foreign_value,
            source,
        });
    }
    // Placeholders must be unambiguous: none equal to or inside another.
    for a in 0..out.len() {
        for b in 0..out.len() {
            if a != b && out[b].placeholder.contains(out[a].placeholder.as_str()) {
                cx.err(
                    format!("credentials[{}].placeholder", positions[b]),
                    format!(
                        "contains the placeholder of credential {:?}; placeholders must be unique and none may contain another",
                        out[a].id
                    ),
                );
            }
        }
    }
    out
}

fn cx_errors(cx: &Ctx<'_>) -> usize {
    cx.error_count()
}

fn http_token(s: &str) -> Result<(), ()> {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        Ok(())
    } else {
        Err(())
    }
}

/// A placeholder is a token an SDK will accept as an API key: 16–256 characters from
/// `[A-Za-z0-9._-]`. One that starts with the default prefix must be exactly the default
/// shape (lowercase UUID), because near-miss detection flags every other use of the prefix.
pub fn check_placeholder(p: &str) -> Result<(), String> {
    if p.len() < 16 || p.len() > 256 {
        return Err("must be 16 to 256 characters long".into());
    }
    if !p
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err("may contain only letters, digits, '.', '-' and '_'".into());
    }
    let lower = p.to_ascii_lowercase().replace('_', "-");
    if let Some(pos) = lower.find("agent-vault") {
        let uuid = p.strip_prefix(DEFAULT_PLACEHOLDER_PREFIX);
        let ok = pos == 0 && uuid.is_some_and(is_lower_uuid);
        if !ok {
            return Err(format!(
                "a placeholder using \"agent-vault\" must be exactly {DEFAULT_PLACEHOLDER_PREFIX}<lowercase uuid>"
            ));
        }
    }
    Ok(())
}

fn is_lower_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| {
            g.len() == n
                && g.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

pub(crate) fn audit(cx: &mut Ctx<'_>, raw: RawAudit) -> Option<AuditConfig> {
    let path = match raw.path {
        Some(p) => cx.path(&p),
        None => {
            cx.err("audit.path", "required: the audit spool (an SQLite file)");
            return None;
        }
    };
    // Defaults and rules are the audit crate's (`AuditConfig::new`, `TemporalConfig::new`).
    let mut spool = credproxy_audit::AuditConfig::new(path);
    spool.retention = raw
        .retention
        .as_deref()
        .map(|r| cx.duration("audit.retention", Some(r), Duration::ZERO));
    spool.max_size_bytes = raw.max_size_bytes;
    leaf_problems(cx, "audit", spool.problems());
    let temporal = raw.temporal.and_then(|t| {
        let Some(address) = t.address else {
            cx.err(
                "audit.temporal.address",
                "required: host:port of the Temporal frontend",
            );
            return None;
        };
        let mut c = TemporalConfig::new(address);
        if let Some(n) = t.namespace {
            c.namespace = n;
        }
        if let Some(q) = t.task_queue {
            c.task_queue = q;
        }
        c.signal_timeout = cx.duration(
            "audit.temporal.signal_timeout",
            t.signal_timeout.as_deref(),
            c.signal_timeout,
        );
        Some(c)
    });
    Some(AuditConfig { spool, temporal })
}
