//! Stage two: from the document's shape to a [`Config`] with no impossible states.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use credproxy_core::{Allowlist, AllowlistEntry, Authority, ListenAddr, UidSet};
use ipnet::IpNet;

use crate::error::{ConfigError, ConfigErrors};
use crate::raw::{
    RawAgentToken, RawCid, RawClientCredentials, RawConfig, RawDevIssuerToken, RawInternalService,
    RawListener, RawUid, RawVsock, RawVsockUds,
};
use crate::{
    AdminConfig, AgentTokenConfig, CaConfig, ClientCredentialsConfig, Config, DevIssuerTokenConfig,
    InternalServiceConfig, Limits, ListenerConfig, LogConfig, LogFormat, TokenEndpoint,
    UpstreamConfig, DEFAULT_DEV_TOKEN_TTL, DEFAULT_LEAF_CACHE_SIZE, DEFAULT_LEAF_VALIDITY,
    DEV_AUDIENCE, DEV_ISSUER,
};

pub(crate) struct Ctx<'a> {
    base: &'a Path,
    errors: Vec<ConfigError>,
}

impl Ctx<'_> {
    pub(crate) fn has_error_at(&self, prefix: &str) -> bool {
        self.errors.iter().any(|e| e.path.starts_with(prefix))
    }

    pub(crate) fn error_count(&self) -> usize {
        self.errors.len()
    }

    pub(crate) fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.errors.push(ConfigError::new(path, msg));
    }

    pub(crate) fn path(&self, s: &str) -> PathBuf {
        let p = PathBuf::from(s);
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }

    pub(crate) fn duration(&mut self, key: &str, v: Option<&str>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) => d,
                Err(_) => {
                    self.err(
                        key,
                        format!("expected a duration such as \"10s\" or \"5m\", got {s:?}"),
                    );
                    default
                }
            },
        }
    }

    fn socket_addr(&mut self, key: &str, s: &str) -> Option<SocketAddr> {
        match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    key,
                    format!("expected an address such as \"127.0.0.1:18790\" or \"[::1]:18790\", got {s:?}"),
                );
                None
            }
        }
    }
}

pub fn validate(raw: RawConfig, base: &Path) -> Result<Config, ConfigErrors> {
    let mut cx = Ctx {
        base,
        errors: raw.errors,
    };

    // listeners
    let mut listeners = Vec::new();
    match raw.listeners {
        None => cx.err(
            "listeners",
            "required: at least one listener (tcp, unix, vsock or vsock_uds)",
        ),
        Some(list) if list.is_empty() => cx.err("listeners", "at least one listener is required"),
        Some(list) => {
            let mut names = HashSet::new();
            for (i, l) in list.into_iter().enumerate() {
                let Some(l) = l else { continue };
                if let Some(l) = listener(&mut cx, i, l) {
                    if !names.insert(l.name.clone()) {
                        cx.err(
                            format!("listeners[{i}].name"),
                            format!("duplicate listener name {:?}", l.name),
                        );
                    }
                    listeners.push(l);
                }
            }
        }
    }

    // admin
    let admin = raw.admin.and_then(|a| match a.tcp {
        Some(t) => cx
            .socket_addr("admin.tcp", &t)
            .map(|addr| AdminConfig { addr }),
        None => {
            cx.err("admin.tcp", "required when the admin section is present");
            None
        }
    });

    // ca
    let ca = match raw.ca {
        None => {
            cx.err("ca", "required: cert_file and key_file of the MITM CA (create one with `credproxy ca init --dir DIR`); there is no built-in CA");
            None
        }
        Some(c) => {
            let cert = c.cert_file.map(|s| cx.path(&s));
            let key = c.key_file.map(|s| cx.path(&s));
            if cert.is_none() {
                cx.err("ca.cert_file", "required: path of the CA certificate (PEM)");
            }
            if key.is_none() {
                cx.err("ca.key_file", "required: path of the CA private key (PEM)");
            }
            let leaf_validity = cx.duration(
                "ca.leaf_validity",
                c.leaf_validity.as_deref(),
                DEFAULT_LEAF_VALIDITY,
            );
            if leaf_validity < Duration::from_secs(3600)
                || leaf_validity > Duration::from_secs(90 * 24 * 3600)
            {
                cx.err("ca.leaf_validity", "must be between 1h and 90d");
            }
            let leaf_cache_size = c.leaf_cache_size.unwrap_or(DEFAULT_LEAF_CACHE_SIZE);
            if leaf_cache_size == 0 {
                cx.err("ca.leaf_cache_size", "must be at least 1");
            }
            match (cert, key) {
                (Some(cert_file), Some(key_file)) => Some(CaConfig {
                    cert_file,
                    key_file,
                    leaf_validity,
                    leaf_cache_size,
                }),
                _ => None,
            }
        }
    };

    // allowed_domains
    let mut entries = Vec::new();
    for (i, d) in raw.allowed_domains.unwrap_or_default().iter().enumerate() {
        match AllowlistEntry::parse(d) {
            Ok(e) => {
                if e.is_wildcard() {
                    if let Some(suffix) = crate::suffix::public_suffix_at_or_below(e.host()) {
                        cx.err(
                            format!("allowed_domains[{i}]"),
                            format!("wildcard \"{e}\" spans a public suffix ({suffix} is on the public suffix list, so names under it belong to different owners); list the exact names instead"),
                        );
                        continue;
                    }
                }
                entries.push(e)
            }
            Err(e) => cx.err(format!("allowed_domains[{i}]"), e.to_string()),
        }
    }
    let allowed_domains = Allowlist::new(entries);

    // upstream
    let mut upstream = UpstreamConfig::default();
    if let Some(u) = raw.upstream {
        upstream.extra_ca_files = u.extra_ca_files.iter().map(|s| cx.path(s)).collect();
        let mut resolve = BTreeMap::new();
        for (host, addr) in &u.resolve {
            let key = format!("upstream.resolve.{host}");
            let name = match Authority::new(host, 443) {
                Ok(a) => Some(a.host().to_string()),
                Err(e) => {
                    cx.err(&key, e.to_string());
                    None
                }
            };
            let addr = cx.socket_addr(&key, addr);
            if let (Some(n), Some(a)) = (name, addr) {
                resolve.insert(n, a);
            }
        }
        upstream.resolve = resolve;
        for (i, n) in u.allow_private_networks.iter().enumerate() {
            match n.parse::<IpNet>() {
                Ok(net) => upstream.allow_private_networks.push(net),
                Err(_) => cx.err(
                    format!("upstream.allow_private_networks[{i}]"),
                    format!("expected a CIDR such as \"10.0.0.0/8\", got {n:?}"),
                ),
            }
        }
        let d = UpstreamConfig::default();
        upstream.connect_timeout = cx.duration(
            "upstream.connect_timeout",
            u.connect_timeout.as_deref(),
            d.connect_timeout,
        );
        upstream.response_header_timeout = cx.duration(
            "upstream.response_header_timeout",
            u.response_header_timeout.as_deref(),
            d.response_header_timeout,
        );
        upstream.pool_idle_timeout = cx.duration(
            "upstream.pool_idle_timeout",
            u.pool_idle_timeout.as_deref(),
            d.pool_idle_timeout,
        );
        upstream.pool_max_idle_per_host =
            u.pool_max_idle_per_host.unwrap_or(d.pool_max_idle_per_host);
    }
    for (key, d) in [
        ("upstream.connect_timeout", upstream.connect_timeout),
        (
            "upstream.response_header_timeout",
            upstream.response_header_timeout,
        ),
    ] {
        if d.is_zero() {
            cx.err(key, "must be greater than zero");
        }
    }

    // limits
    let mut limits = Limits::default();
    if let Some(l) = raw.limits {
        let d = Limits::default();
        limits.header_read_timeout = cx.duration(
            "limits.header_read_timeout",
            l.header_read_timeout.as_deref(),
            d.header_read_timeout,
        );
        limits.idle_timeout = cx.duration(
            "limits.idle_timeout",
            l.idle_timeout.as_deref(),
            d.idle_timeout,
        );
        limits.shutdown_grace = cx.duration(
            "limits.shutdown_grace",
            l.shutdown_grace.as_deref(),
            d.shutdown_grace,
        );
        limits.max_header_bytes = l.max_header_bytes.unwrap_or(d.max_header_bytes);
        limits.max_connections = l.max_connections.unwrap_or(d.max_connections);
        limits.body_scan_window = l.body_scan_window.unwrap_or(d.body_scan_window);
        limits.body_idle_timeout = cx.duration(
            "limits.body_idle_timeout",
            l.body_idle_timeout.as_deref(),
            d.body_idle_timeout,
        );
        limits.max_injected_body_bytes = l
            .max_injected_body_bytes
            .unwrap_or(d.max_injected_body_bytes);
        limits.max_connections_per_identity = l
            .max_connections_per_identity
            .unwrap_or(d.max_connections_per_identity);
        limits.max_streams_per_identity = l
            .max_streams_per_identity
            .unwrap_or(d.max_streams_per_identity);
        limits.max_streams_per_connection = l
            .max_streams_per_connection
            .unwrap_or(d.max_streams_per_connection);
        limits.body_scan_memory_per_connection = l
            .body_scan_memory_per_connection
            .unwrap_or(d.body_scan_memory_per_connection);
    }
    if limits.max_injected_body_bytes < limits.body_scan_window as u64 {
        cx.err(
            "limits.max_injected_body_bytes",
            format!(
                "must be at least limits.body_scan_window ({} bytes)",
                limits.body_scan_window
            ),
        );
    }
    if limits.body_scan_memory_per_connection < limits.body_scan_window {
        cx.err(
            "limits.body_scan_memory_per_connection",
            format!(
                "must be at least limits.body_scan_window ({} bytes): one request's window must fit",
                limits.body_scan_window
            ),
        );
    }
    for (key, v) in [
        (
            "limits.max_connections_per_identity",
            limits.max_connections_per_identity,
        ),
        (
            "limits.max_streams_per_identity",
            limits.max_streams_per_identity,
        ),
        (
            "limits.max_streams_per_connection",
            limits.max_streams_per_connection as usize,
        ),
    ] {
        if v == 0 {
            cx.err(key, "must be at least 1");
        }
    }
    if !(8192..=1024 * 1024).contains(&limits.max_header_bytes) {
        cx.err(
            "limits.max_header_bytes",
            "must be between 8192 and 1048576",
        );
    }
    if !(4096..=64 * 1024 * 1024).contains(&limits.body_scan_window) {
        cx.err(
            "limits.body_scan_window",
            "must be between 4096 and 67108864 bytes",
        );
    }
    if limits.max_connections == 0 {
        cx.err("limits.max_connections", "must be at least 1");
    }
    for (key, d) in [
        ("limits.header_read_timeout", limits.header_read_timeout),
        ("limits.idle_timeout", limits.idle_timeout),
        ("limits.body_idle_timeout", limits.body_idle_timeout),
    ] {
        if d.is_zero() {
            cx.err(key, "must be greater than zero");
        }
    }

    // log
    let mut log = LogConfig::default();
    if let Some(l) = raw.log {
        match l.format.as_deref() {
            None | Some("json") => {}
            Some("pretty") => log.format = LogFormat::Pretty,
            Some(other) => cx.err(
                "log.format",
                format!("expected \"json\" or \"pretty\", got {other:?}"),
            ),
        }
        if let Some(level) = l.level {
            log.level = level;
        }
    }

    let identity = match raw.identity {
        Some(i) => crate::features::identity(&mut cx, i),
        None => {
            cx.err(
                "identity",
                "required: identity.oidc (agents authenticate), or identity.danger_allow_anonymous: true for local testing",
            );
            None
        }
    };
    let policy = crate::features::policy(&mut cx, raw.policy);
    let secrets = crate::features::secrets(&mut cx, raw.secrets);
    let credentials =
        crate::features::credentials(&mut cx, raw.credentials, &allowed_domains, &secrets);
    let audit = raw.audit.and_then(|a| crate::features::audit(&mut cx, a));
    let internal_services = internal_services(
        &mut cx,
        raw.internal_services.unwrap_or_default(),
        &allowed_domains,
        &credentials,
    );
    if !credentials.is_empty() && audit.is_none() && !cx.has_error_at("audit") {
        cx.err(
            "audit",
            "required when credentials are configured: every credential use is recorded (audit.path) before the secret is sent",
        );
    }
    for (i, l) in listeners.iter().enumerate() {
        if l.agent.is_some() && identity.is_none() {
            cx.err(
                format!("listeners[{i}].agent"),
                "binding a listener to an agent needs identity.oidc (agents must authenticate)",
            );
        }
        if let Some(t) = &l.agent_token {
            agent_token_against_identity(&mut cx, i, t, identity.as_ref());
        }
    }
    if let Some(id) = &identity {
        let dev_listener = listeners
            .iter()
            .any(|l| matches!(l.agent_token, Some(AgentTokenConfig::DevIssuer(_))));
        if id.oidc.issuer == DEV_ISSUER && id.jwks_file.is_none() && !dev_listener {
            cx.err(
                "identity.oidc.jwks_file",
                format!("required for issuer {DEV_ISSUER:?}, which has no discovery: the dev issuer's public JWKS (or give a listener agent_token.dev_issuer, whose key is then trusted)"),
            );
        }
    }

    if !cx.errors.is_empty() {
        return Err(ConfigErrors(cx.errors));
    }
    // Every branch that leaves `ca` empty has recorded an error above.
    let Some(ca) = ca else {
        return Err(ConfigErrors::one(ConfigError::new("ca", "required")));
    };
    Ok(Config {
        listeners,
        admin,
        ca,
        allowed_domains,
        upstream,
        limits,
        log,
        identity,
        policy,
        secrets,
        credentials,
        audit,
        internal_services,
    })
}

fn listener(cx: &mut Ctx<'_>, i: usize, l: RawListener) -> Option<ListenerConfig> {
    let at = |k: &str| format!("listeners[{i}].{k}");
    let name = match l.name {
        Some(n) if !n.is_empty() => Some(n),
        _ => {
            cx.err(at("name"), "required: a name for logs, metrics and policy");
            None
        }
    };
    let given: Vec<&str> = [
        ("tcp", l.tcp.is_some()),
        ("unix", l.unix.is_some()),
        ("vsock", l.vsock.is_some()),
        ("vsock_uds", l.vsock_uds.is_some()),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(k, _)| *k)
    .collect();
    let addr = match given.as_slice() {
        [_] => {
            if let Some(t) = l.tcp {
                cx.socket_addr(&at("tcp"), &t).map(ListenAddr::Tcp)
            } else if let Some(u) = l.unix {
                Some(ListenAddr::Unix(cx.path(&u)))
            } else if let Some(v) = l.vsock {
                vsock(cx, i, v)
            } else if let Some(v) = l.vsock_uds {
                vsock_uds(cx, i, v)
            } else {
                None
            }
        }
        [] => {
            cx.err(
                format!("listeners[{i}]"),
                "needs exactly one of: tcp, unix, vsock, vsock_uds",
            );
            None
        }
        [a, b] => {
            cx.err(
                format!("listeners[{i}]"),
                format!("has both {a} and {b}; a listener binds exactly one address"),
            );
            None
        }
        many => {
            cx.err(
                format!("listeners[{i}]"),
                format!(
                    "has {}; a listener binds exactly one address",
                    many.join(", ")
                ),
            );
            None
        }
    };
    let unix_mode = match l.unix_mode {
        None => 0o660,
        Some(m) => match u32::from_str_radix(m.trim_start_matches("0o"), 8) {
            Ok(v) if v <= 0o777 => v,
            _ => {
                cx.err(
                    at("unix_mode"),
                    format!("expected an octal file mode such as \"0660\", got {m:?}"),
                );
                0o660
            }
        },
    };
    let agent = match l.agent {
        Some(a) if a.is_empty() => {
            cx.err(at("agent"), "must not be empty");
            None
        }
        other => other,
    };
    let peer_uids = l.peer_uids.and_then(|list| {
        if !matches!(addr, None | Some(ListenAddr::Unix(_) | ListenAddr::VsockUds { .. })) {
            cx.err(
                at("peer_uids"),
                "only on unix and vsock_uds listeners (it is checked with SO_PEERCRED); a vsock listener has peer_cid",
            );
            return None;
        }
        peer_uids(cx, &at("peer_uids"), list)
    });
    let agent_token = l.agent_token.and_then(|t| {
        let t = agent_token(cx, i, t);
        match (&agent, &addr) {
            (Some(a), Some(ListenAddr::Unix(p))) if peer_uids.is_none() && !cx.has_error_at(&at("peer_uids")) => cx.err(
                at("peer_uids"),
                format!("required with agent_token on a unix listener: without it every process that can open {} would act as agent {a:?}; list the uids (and subuid ranges) of that agent's container or user", p.display()),
            ),
            (None, _) => cx.err(
                at("agent"),
                "required with agent_token: the agent whose token the proxy obtains for this listener",
            ),
            (Some(a), Some(ListenAddr::Tcp(_))) => cx.err(
                at("agent_token"),
                format!("not allowed on a tcp listener: every process that can connect to it would act as agent {a:?}; use vsock with peer_cid, vsock_uds (one socket per VM) or unix"),
            ),
            (Some(a), Some(ListenAddr::Vsock { peer_cid: None, port, .. })) => cx.err(
                at("vsock.peer_cid"),
                format!("required with agent_token: without it every VM that can reach vsock port {port} would act as agent {a:?}; give the VM's CID"),
            ),
            _ => {}
        }
        t
    });
    Some(ListenerConfig {
        name: name?,
        addr: addr?,
        unix_mode,
        peer_uids,
        agent,
        agent_token,
    })
}

fn agent_token(cx: &mut Ctx<'_>, i: usize, t: RawAgentToken) -> Option<AgentTokenConfig> {
    let at = format!("listeners[{i}].agent_token");
    match (t.client_credentials, t.dev_issuer) {
        (Some(c), None) => client_credentials(cx, &format!("{at}.client_credentials"), c)
            .map(AgentTokenConfig::ClientCredentials),
        (None, Some(d)) => {
            dev_issuer_token(cx, &format!("{at}.dev_issuer"), d).map(AgentTokenConfig::DevIssuer)
        }
        (Some(_), Some(_)) => {
            cx.err(
                at,
                "has both client_credentials and dev_issuer; give exactly one",
            );
            None
        }
        (None, None) => {
            cx.err(
                at,
                "needs exactly one of client_credentials (the OIDC provider) or dev_issuer (dev mode)",
            );
            None
        }
    }
}

fn client_credentials(
    cx: &mut Ctx<'_>,
    at: &str,
    c: RawClientCredentials,
) -> Option<ClientCredentialsConfig> {
    let key = |k: &str| format!("{at}.{k}");
    let endpoint = match (c.token_url, c.issuer) {
        (Some(u), None) => match token_endpoint_url(&u) {
            Ok(()) => Some(TokenEndpoint::TokenUrl(u)),
            Err(e) => {
                cx.err(key("token_url"), e);
                None
            }
        },
        (None, Some(u)) => match token_endpoint_url(&u) {
            Ok(()) => Some(TokenEndpoint::Issuer(u)),
            Err(e) => {
                cx.err(key("issuer"), e);
                None
            }
        },
        (Some(_), Some(_)) => {
            cx.err(
                at,
                "has both token_url and issuer; give the token endpoint (token_url) or the issuer to discover it from, not both",
            );
            None
        }
        (None, None) => {
            cx.err(
                at,
                "needs token_url (the token endpoint) or issuer (found by discovery)",
            );
            None
        }
    };
    let client_id = match c.client_id {
        Some(id) if !id.is_empty() => Some(id),
        _ => {
            cx.err(key("client_id"), "required: the agent's OAuth2 client id");
            None
        }
    };
    let client_secret_file = match c.client_secret_file {
        Some(f) if !f.is_empty() => Some(cx.path(&f)),
        _ => {
            cx.err(
                key("client_secret_file"),
                "required: the file holding the client secret (e.g. a systemd credential)",
            );
            None
        }
    };
    for (k, v) in [("audience", &c.audience), ("scope", &c.scope)] {
        if v.as_deref() == Some("") {
            cx.err(key(k), "must not be empty (leave it out instead)");
        }
    }
    let ca_files = c.ca_files.iter().map(|f| cx.path(f)).collect();
    Some(ClientCredentialsConfig {
        endpoint: endpoint?,
        client_id: client_id?,
        client_secret_file: client_secret_file?,
        audience: c.audience.filter(|a| !a.is_empty()),
        scope: c.scope.filter(|s| !s.is_empty()),
        ca_files,
    })
}

/// The client secret travels to the token endpoint: `https://`, or `http://` to a loopback
/// host only (a local test provider), as the identity crate enforces when it sends.
fn token_endpoint_url(url: &str) -> Result<(), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("expected an https:// URL, got {url:?}"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    match scheme {
        "https" => Ok(()),
        "http" => {
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(format!(
                    "{url:?} uses plain http to a non-loopback host; the client secret would travel in clear: use https"
                ))
            }
        }
        other => Err(format!(
            "{url:?} has unsupported scheme {other:?}; use https"
        )),
    }
}

fn dev_issuer_token(
    cx: &mut Ctx<'_>,
    at: &str,
    d: RawDevIssuerToken,
) -> Option<DevIssuerTokenConfig> {
    let key = |k: &str| format!("{at}.{k}");
    let key_file = match d.key_file {
        Some(f) if !f.is_empty() => Some(cx.path(&f)),
        _ => {
            cx.err(
                key("key_file"),
                "required: the dev issuer's private key file (created when missing)",
            );
            None
        }
    };
    for (j, r) in d.roles.iter().enumerate() {
        if r.is_empty() {
            cx.err(format!("{at}.roles[{j}]"), "must not be empty");
        }
    }
    let ttl = cx.duration(&key("ttl"), d.ttl.as_deref(), DEFAULT_DEV_TOKEN_TTL);
    if ttl < Duration::from_secs(10) || ttl > Duration::from_secs(24 * 3600) {
        cx.err(key("ttl"), "must be between 10s and 24h");
    }
    Some(DevIssuerTokenConfig {
        key_file: key_file?,
        roles: d.roles,
        ttl,
    })
}

/// Rules between a listener's agent_token and `identity`: its tokens must be verifiable.
fn agent_token_against_identity(
    cx: &mut Ctx<'_>,
    i: usize,
    t: &AgentTokenConfig,
    identity: Option<&crate::IdentityConfig>,
) {
    let at = format!("listeners[{i}].agent_token");
    let Some(id) = identity else {
        cx.err(
            at,
            "needs identity.oidc: the listener's token is verified like any other",
        );
        return;
    };
    match t {
        AgentTokenConfig::DevIssuer(_) => {
            if id.oidc.issuer != DEV_ISSUER {
                cx.err(
                    format!("{at}.dev_issuer"),
                    format!("dev issuer tokens are issued by {DEV_ISSUER:?}, but identity.oidc.issuer is {:?}, so they would never verify; use client_credentials, or set identity.oidc.issuer: {DEV_ISSUER}", id.oidc.issuer),
                );
            }
            if !id.oidc.audiences.iter().any(|a| a == DEV_AUDIENCE) {
                cx.err(
                    format!("{at}.dev_issuer"),
                    format!("dev issuer tokens have audience {DEV_AUDIENCE:?}, which identity.oidc.audiences does not list"),
                );
            }
        }
        AgentTokenConfig::ClientCredentials(c) => {
            if let TokenEndpoint::Issuer(iss) = &c.endpoint {
                if iss != &id.oidc.issuer {
                    cx.err(
                        format!("{at}.client_credentials.issuer"),
                        format!("tokens from {iss:?} would not verify against identity.oidc.issuer {:?}; use the same issuer (or token_url)", id.oidc.issuer),
                    );
                }
            }
        }
    }
}

/// `listeners[i].peer_uids`: uids and inclusive ranges; an empty list admits nobody.
fn peer_uids(cx: &mut Ctx<'_>, at: &str, list: Vec<RawUid>) -> Option<UidSet> {
    if list.is_empty() {
        cx.err(
            at,
            "must not be empty: an empty list would admit nobody (omit the key to admit whoever the socket's mode lets connect)",
        );
        return None;
    }
    let mut set = UidSet::new();
    let mut ok = true;
    for (j, u) in list.into_iter().enumerate() {
        let r = match u {
            RawUid::Number(n) => match u32::try_from(n) {
                Ok(n) => set.push_uid(n),
                Err(_) => Err(credproxy_core::UidSetError::Syntax(n.to_string())),
            },
            RawUid::Word(w) => set.push_str(&w),
        };
        if let Err(e) = r {
            cx.err(format!("{at}[{j}]"), e.to_string());
            ok = false;
        }
    }
    ok.then_some(set)
}

/// `internal_services`: name → Unix socket. Each name must be a DNS name on the allowlist
/// (agents reach it only through it) and bound to no credential (an internal service never
/// receives an injected secret).
fn internal_services(
    cx: &mut Ctx<'_>,
    raw: BTreeMap<String, Option<RawInternalService>>,
    allowed: &Allowlist,
    credentials: &[crate::CredentialConfig],
) -> BTreeMap<String, InternalServiceConfig> {
    let mut out = BTreeMap::new();
    for (name, svc) in raw {
        let at = format!("internal_services.{name}");
        // `None`: its shape was refused, and said so, in stage one.
        let Some(svc) = svc else { continue };
        let canonical = match Authority::new(&name, 443) {
            Ok(a) => a.host().to_string(),
            Err(e) => {
                cx.err(&at, format!("not a DNS name: {e}"));
                continue;
            }
        };
        let both = |f: &dyn Fn(&Authority) -> bool| {
            [443, 80]
                .iter()
                .filter_map(|p| Authority::new(&canonical, *p).ok())
                .any(|a| f(&a))
        };
        if !both(&|a| allowed.allows(a)) {
            cx.err(
                &at,
                format!("{canonical} is not in allowed_domains; add it there (agents reach internal services only through the allowlist)"),
            );
        }
        for c in credentials {
            if both(&|a| c.bound_domains.allows(a)) {
                cx.err(
                    &at,
                    format!("credential {:?} is bound to {canonical}; an internal service never receives an injected credential", c.id),
                );
            }
        }
        let unix = match svc.unix {
            Some(u) if !u.is_empty() => cx.path(&u),
            _ => {
                cx.err(format!("{at}.unix"), "required: the service's Unix socket");
                continue;
            }
        };
        if out.contains_key(&canonical) {
            cx.err(&at, format!("{canonical} is given twice"));
            continue;
        }
        out.insert(
            canonical.clone(),
            InternalServiceConfig {
                name: canonical,
                unix,
            },
        );
    }
    out
}

/// The port of a vsock listener: required, and not `VMADDR_PORT_ANY` (u32::MAX).
fn vsock_port(cx: &mut Ctx<'_>, key: String, port: Option<u32>) -> Option<u32> {
    match port {
        None => {
            cx.err(
                key,
                "required: the vsock port guests connect to, e.g. 18790",
            );
            None
        }
        Some(u32::MAX) => {
            cx.err(
                key,
                "4294967295 means \"any port\"; give the port guests connect to",
            );
            None
        }
        Some(p) => Some(p),
    }
}

fn vsock(cx: &mut Ctx<'_>, i: usize, v: RawVsock) -> Option<ListenAddr> {
    let at = |k: &str| format!("listeners[{i}].vsock.{k}");
    let cid = match v.cid {
        None => Some(None),
        Some(RawCid::Word(w)) if w == "any" => Some(None),
        Some(RawCid::Number(u32::MAX)) => Some(None),
        Some(RawCid::Number(n)) => Some(Some(n)),
        Some(RawCid::Word(w)) => {
            cx.err(
                at("cid"),
                format!("expected \"any\" or a CID number such as 2, got {w:?}"),
            );
            None
        }
    };
    let port = vsock_port(cx, at("port"), v.port);
    let peer_cid = match v.peer_cid {
        // 0 (hypervisor), 1 (local) and u32::MAX (any) never name a guest.
        Some(c) if c < 2 || c == u32::MAX => {
            cx.err(
                at("peer_cid"),
                format!("{c} is not a guest CID; guests have CID 3 or above (2 is the host)"),
            );
            None
        }
        other => other,
    };
    Some(ListenAddr::Vsock {
        cid: cid?,
        port: port?,
        peer_cid,
    })
}

fn vsock_uds(cx: &mut Ctx<'_>, i: usize, v: RawVsockUds) -> Option<ListenAddr> {
    let at = |k: &str| format!("listeners[{i}].vsock_uds.{k}");
    let path = match v.path {
        Some(p) if !p.is_empty() => Some(cx.path(&p)),
        _ => {
            cx.err(
                at("path"),
                "required: the hypervisor's vsock socket path (the listener binds <path>_<port>)",
            );
            None
        }
    };
    let port = vsock_port(cx, at("port"), v.port);
    Some(ListenAddr::VsockUds {
        path: path?,
        port: port?,
    })
}
