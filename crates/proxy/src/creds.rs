//! Credentials on the request path: find placeholders, refuse misuse, inject secrets only
//! where the credential declares, and build the scrub patterns for the response.
//!
//! Order matters and is fixed: every placeholder in the request head (target, every header
//! value, `Basic` credentials decoded) and in the body's scan window is found and checked
//! *before* any secret is fetched; a secret is only ever placed in the location its
//! credential declares, over verified TLS, to a destination it is bound to.

use base64::Engine as _;
use credproxy_config::{CredentialConfig, CredentialKind, ForeignValue};
use credproxy_core::{Authority, MisuseKind, Reject, Scheme, Secret};
use credproxy_scrub::{NearMiss, PlaceholderSet};
use http::{HeaderName, HeaderValue};

/// The configured credentials of one generation.
pub(crate) struct Credentials {
    pub configs: Vec<CredentialConfig>,
    /// `None` when no credential is configured (nothing to detect).
    pub set: Option<PlaceholderSet>,
    pub sources: Vec<credproxy_secrets::SecretSource>,
}

impl Credentials {
    pub fn new(configs: Vec<CredentialConfig>) -> Result<Credentials, String> {
        let set = if configs.is_empty() {
            None
        } else {
            Some(
                PlaceholderSet::new(configs.iter().map(|c| c.placeholder.clone()).collect())
                    .map_err(|e| e.to_string())?,
            )
        };
        let sources = configs
            .iter()
            .map(|c| match &c.source {
                credproxy_config::SecretSourceConfig::File(p) => {
                    credproxy_secrets::SecretSource::File(p.clone())
                }
                credproxy_config::SecretSourceConfig::Env(v) => {
                    credproxy_secrets::SecretSource::Env(v.clone())
                }
                credproxy_config::SecretSourceConfig::OpenBao {
                    path,
                    field,
                    version,
                } => credproxy_secrets::SecretSource::OpenBao {
                    path: path.clone(),
                    field: field.clone(),
                    version: *version,
                },
            })
            .collect();
        Ok(Credentials {
            configs,
            set,
            sources,
        })
    }

    /// Indices of credentials bound to `authority`.
    pub fn bound_to(&self, authority: &Authority) -> impl Iterator<Item = usize> + '_ {
        let a = authority.clone();
        self.configs
            .iter()
            .enumerate()
            .filter(move |(_, c)| c.bound_domains.allows(&a))
            .map(|(i, _)| i)
    }
}

/// Where in a request a placeholder was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    Header(HeaderName),
    /// Inside the decoded credentials of a `Basic` authorization header.
    BasicPassword(HeaderName),
    Path,
    Query,
    Body,
    /// A request trailer: never an injection location.
    Trailer(HeaderName),
}

impl Location {
    pub fn describe(&self) -> String {
        match self {
            Location::Header(h) => format!("header:{h}"),
            Location::BasicPassword(h) => format!("header:{h}(basic)"),
            Location::Path => "path".into(),
            Location::Query => "query".into(),
            Location::Body => "body".into(),
            Location::Trailer(h) => format!("trailer:{h}"),
        }
    }
}

/// A placeholder found in the request.
#[derive(Debug, Clone)]
pub(crate) struct Use {
    pub cred: usize,
    pub loc: Location,
}

/// Everything found in a request.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub uses: Vec<Use>,
    pub near: Vec<(Location, &'static str)>,
}

impl Scan {
    fn add(&mut self, loc: Location, f: credproxy_scrub::Findings) {
        for e in f.exact {
            self.uses.push(Use {
                cred: e.credential,
                loc: loc.clone(),
            });
        }
        for NearMiss { shape, .. } in f.near_misses {
            self.near.push((loc.clone(), shape));
        }
    }

    /// Add the findings of the request body's scan window.
    pub fn add_body(&mut self, f: credproxy_scrub::Findings) {
        self.add(Location::Body, f);
    }
}

/// Scan the request target and every header value (and decoded `Basic` credentials).
pub(crate) fn scan_head(set: &PlaceholderSet, parts: &http::request::Parts) -> Scan {
    let mut scan = Scan::default();
    scan.add(Location::Path, set.scan(parts.uri.path().as_bytes()));
    if let Some(q) = parts.uri.query() {
        scan.add(Location::Query, set.scan(q.as_bytes()));
    }
    for (name, value) in &parts.headers {
        scan.add(Location::Header(name.clone()), set.scan(value.as_bytes()));
        if let Some(decoded) = credproxy_scrub::decode_basic(value.as_bytes()) {
            scan.add(Location::BasicPassword(name.clone()), set.scan(&decoded));
        }
    }
    scan
}

/// Scan a request's trailers (placeholders there are refused: trailers are no injection
/// location, and many servers ignore them, so a placeholder there is probing or exfiltration).
pub(crate) fn scan_trailers(set: &PlaceholderSet, trailers: &http::HeaderMap, scan: &mut Scan) {
    for (name, value) in trailers {
        scan.add(Location::Trailer(name.clone()), set.scan(value.as_bytes()));
        if let Some(decoded) = credproxy_scrub::decode_basic(value.as_bytes()) {
            scan.add(Location::Trailer(name.clone()), set.scan(&decoded));
        }
    }
}

/// The agent's own value in a credential's header (A27): for each header that credentials
/// bound to `authority` are injected into, a non-empty value with no placeholder in it is
/// refused (`foreign_value: refuse`, the default) or, when the header belongs to exactly one
/// such credential and it says `foreign_value: replace`, recorded as a use of that credential
/// (its secret then replaces the agent's value).
pub(crate) fn foreign_values(
    creds: &Credentials,
    authority: &Authority,
    headers: &http::HeaderMap,
    scan: &mut Scan,
) -> Result<(), Reject> {
    if !scan.near.is_empty() {
        // A near miss is the finding to report (by `check`), not a foreign value.
        return Ok(());
    }
    let mut seen: Vec<&str> = Vec::new();
    for i in creds.bound_to(authority) {
        let cfg = &creds.configs[i];
        if !cfg.inject_in.header || seen.contains(&cfg.header_name.as_str()) {
            continue;
        }
        seen.push(&cfg.header_name);
        let Ok(name) = HeaderName::from_bytes(cfg.header_name.as_bytes()) else {
            continue;
        };
        let has_value = headers
            .get_all(&name)
            .iter()
            .any(|v| !v.as_bytes().trim_ascii().is_empty());
        let used = scan.uses.iter().any(
            |u| matches!(&u.loc, Location::Header(h) | Location::BasicPassword(h) if *h == name),
        );
        if !has_value || used {
            continue;
        }
        let owners: Vec<usize> = creds
            .bound_to(authority)
            .filter(|&j| {
                creds.configs[j].inject_in.header && creds.configs[j].header_name == cfg.header_name
            })
            .collect();
        match owners.as_slice() {
            [only] if creds.configs[*only].foreign_value == ForeignValue::Replace => {
                scan.uses.push(Use {
                    cred: *only,
                    loc: Location::Header(name),
                });
            }
            _ => {
                let ids: Vec<String> = owners
                    .iter()
                    .map(|&j| format!("`{}`", creds.configs[j].id))
                    .collect();
                return Err(Reject::PlaceholderMisuse {
                    kind: MisuseKind::ForeignValue,
                    message: format!(
                        "header {name} carries a value of your own for {authority}, where the proxy injects credential {}; send its placeholder instead of a key",
                        ids.join(" or ")
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Where a credential may be used, in words an agent can act on.
fn usage(cfg: &CredentialConfig) -> String {
    let mut places = Vec::new();
    if cfg.inject_in.header {
        places.push(format!("header {}", cfg.header_name));
    }
    if cfg.inject_in.query {
        places.push("the query string".to_string());
    }
    if cfg.inject_in.body {
        places.push("the body".to_string());
    }
    let hosts: Vec<String> = cfg
        .bound_domains
        .entries()
        .iter()
        .map(|e| e.to_string())
        .collect();
    format!(
        "credential `{}` may only be used in {} for {}",
        cfg.id,
        places.join(" or "),
        hosts.join(", ")
    )
}

/// Refuse every misuse; return the credentials to inject (deduplicated, in order). `agent` is
/// the verified agent id (`None` in anonymous mode, which no `allowed_agents` list admits).
pub(crate) fn check(
    creds: &Credentials,
    authority: &Authority,
    scheme: Scheme,
    scan: &Scan,
    agent: Option<&str>,
) -> Result<Vec<usize>, Reject> {
    if let Some((loc, shape)) = scan.near.first() {
        return Err(Reject::PlaceholderMisuse {
            kind: MisuseKind::NearMiss,
            message: format!(
                "a value in {} looks like a placeholder but is not one ({shape}); send configured placeholders exactly as given",
                loc.describe()
            ),
        });
    }
    let mut out: Vec<usize> = Vec::new();
    for u in &scan.uses {
        let cfg = &creds.configs[u.cred];
        if !cfg.allowed_agents.is_empty()
            && !agent.is_some_and(|a| cfg.allowed_agents.iter().any(|x| x == a))
        {
            return Err(Reject::PlaceholderMisuse {
                kind: MisuseKind::NotGranted,
                message: format!(
                    "credential `{}` belongs to agent {}; agent {} may not use it",
                    cfg.id,
                    cfg.allowed_agents.join(", "),
                    agent.unwrap_or("(anonymous)")
                ),
            });
        }
        if !cfg.bound_domains.allows(authority) {
            return Err(Reject::PlaceholderMisuse {
                kind: MisuseKind::NotBound,
                message: format!("{}; {authority} is not one of them", usage(cfg)),
            });
        }
        let allowed = match &u.loc {
            Location::Header(h) | Location::BasicPassword(h) => {
                cfg.inject_in.header && h.as_str() == cfg.header_name
            }
            Location::Query => cfg.inject_in.query,
            Location::Body => cfg.inject_in.body,
            Location::Path | Location::Trailer(_) => false,
        };
        if !allowed {
            return Err(Reject::PlaceholderMisuse {
                kind: MisuseKind::WrongLocation,
                message: format!("{}; it was found in {}", usage(cfg), u.loc.describe()),
            });
        }
        if scheme != Scheme::Https {
            return Err(Reject::PlaceholderMisuse {
                kind: MisuseKind::Cleartext,
                message: format!(
                    "credential `{}` is only sent over verified TLS; use https://",
                    cfg.id
                ),
            });
        }
        if !out.contains(&u.cred) {
            out.push(u.cred);
        }
    }
    Ok(out)
}

/// The header value that carries `secret` for `cfg`. `agent_basic` is the decoded value of
/// the agent's own `Basic` header when the placeholder was its password (git over HTTPS).
pub(crate) fn header_value(
    cfg: &CredentialConfig,
    secret: &Secret,
    agent_basic: Option<&[u8]>,
) -> Result<(HeaderValue, Secret), Reject> {
    let invalid = || Reject::SecretInvalid {
        credential: cfg.id.clone(),
    };
    let s = secret.expose();
    if s.is_empty() || s.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(invalid());
    }
    let rendered: Vec<u8> = match cfg.kind {
        CredentialKind::ApiKey | CredentialKind::Header => {
            let mut v = cfg.header_prefix.as_bytes().to_vec();
            v.extend_from_slice(s);
            v
        }
        CredentialKind::Bearer => {
            let mut v = b"Bearer ".to_vec();
            v.extend_from_slice(s);
            v
        }
        CredentialKind::BasicAuth => {
            let userpass: Vec<u8> = if let Some(user) = &cfg.username {
                [user.as_bytes(), b":", s].concat()
            } else if s.contains(&b':') {
                s.to_vec()
            } else if let Some(agent) = agent_basic {
                // The agent's user name, the secret as password.
                let user = agent.split(|b| *b == b':').next().unwrap_or(b"");
                [user, b":", s].concat()
            } else {
                return Err(invalid());
            };
            let mut v = b"Basic ".to_vec();
            v.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(userpass)
                    .as_bytes(),
            );
            v
        }
    };
    let value = HeaderValue::from_bytes(&rendered).map_err(|_| invalid())?;
    Ok((value, Secret::new(rendered)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use credproxy_config::Config;

    fn creds() -> Credentials {
        let y = r#"
listeners: [{name: a, tcp: "127.0.0.1:0"}]
ca: {cert_file: /c, key_file: /k}
allowed_domains: [api.anthropic.com, api.github.com, other.example.com]
identity: {danger_allow_anonymous: true}
audit: {path: /tmp/unused-audit.db}
credentials:
  - id: anthropic
    placeholder: agent-vault-00000000-0000-0000-0000-000000000001
    type: api_key
    bound_domains: [api.anthropic.com]
    source: {env: A}
  - id: github
    placeholder: agent-vault-00000000-0000-0000-0000-000000000002
    type: basic_auth
    bound_domains: [api.github.com]
    inject_in: [header, query]
    allowed_agents: [vm-a]
    source: {env: G}
"#;
        Credentials::new(
            Config::parse(y, std::path::Path::new("/"))
                .unwrap()
                .credentials,
        )
        .unwrap()
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    const PH1: &str = "agent-vault-00000000-0000-0000-0000-000000000001";
    const PH2: &str = "agent-vault-00000000-0000-0000-0000-000000000002";

    fn run(
        uri: &str,
        headers: &[(&str, &str)],
        host: &str,
        scheme: Scheme,
    ) -> Result<Vec<usize>, Reject> {
        run_as(uri, headers, host, scheme, Some("vm-a"))
    }

    fn run_as(
        uri: &str,
        headers: &[(&str, &str)],
        host: &str,
        scheme: Scheme,
        agent: Option<&str>,
    ) -> Result<Vec<usize>, Reject> {
        let c = creds();
        let scan = scan_head(c.set.as_ref().unwrap(), &parts(uri, headers));
        check(
            &c,
            &Authority::parse_connect(host).unwrap(),
            scheme,
            &scan,
            agent,
        )
    }

    #[test]
    fn a_credential_with_allowed_agents_is_refused_to_every_other_agent() {
        let auth = format!("Bearer {PH2}");
        let headers = [("authorization", auth.as_str())];
        let ok = |agent| run_as("/v1", &headers, "api.github.com:443", Scheme::Https, agent);
        assert_eq!(ok(Some("vm-a")).unwrap(), vec![1]);
        for other in [Some("vm-b"), Some("VM-A"), Some(""), None] {
            let err = ok(other).unwrap_err();
            assert_eq!(err.reason(), "credential_not_granted", "{other:?}");
            assert_eq!(err.status(), 403);
            assert!(
                err.agent_message()
                    .contains("credential `github` belongs to agent vm-a"),
                "{}",
                err.agent_message()
            );
        }
        // A credential without allowed_agents stays usable by any agent.
        let k = [("x-api-key", PH1)];
        assert!(run_as(
            "/v1",
            &k,
            "api.anthropic.com:443",
            Scheme::Https,
            Some("vm-b")
        )
        .is_ok());
    }

    #[test]
    fn allowed_use_and_each_misuse() {
        assert_eq!(
            run(
                "/v1",
                &[("x-api-key", PH1)],
                "api.anthropic.com:443",
                Scheme::Https
            )
            .unwrap(),
            vec![0]
        );
        let reason = |r: Result<Vec<usize>, Reject>| r.unwrap_err().reason();
        assert_eq!(
            reason(run(
                "/v1",
                &[("x-api-key", PH1)],
                "other.example.com:443",
                Scheme::Https
            )),
            "credential_not_bound"
        );
        assert_eq!(
            reason(run(
                "/v1",
                &[("authorization", PH1)],
                "api.anthropic.com:443",
                Scheme::Https
            )),
            "credential_wrong_location"
        );
        assert_eq!(
            reason(run(
                &format!("/v1?k={PH1}"),
                &[],
                "api.anthropic.com:443",
                Scheme::Https
            )),
            "credential_wrong_location"
        );
        assert_eq!(
            reason(run(
                &format!("/{PH1}"),
                &[],
                "api.anthropic.com:443",
                Scheme::Https
            )),
            "credential_wrong_location"
        );
        assert_eq!(
            reason(run(
                "/v1",
                &[("x-api-key", PH1)],
                "api.anthropic.com:80",
                Scheme::Http
            )),
            "credential_cleartext"
        );
        let upper = PH1.to_uppercase();
        assert_eq!(
            reason(run(
                "/v1",
                &[("x-api-key", &upper)],
                "api.anthropic.com:443",
                Scheme::Https
            )),
            "placeholder_near_miss"
        );
        assert_eq!(
            reason(run(
                "/v1",
                &[("x-api-key", &PH1[..40])],
                "api.anthropic.com:443",
                Scheme::Https
            )),
            "placeholder_near_miss"
        );
        // The message says where the credential may be used.
        let msg = run(
            "/v1",
            &[("x-api-key", PH1)],
            "other.example.com:443",
            Scheme::Https,
        )
        .unwrap_err()
        .agent_message();
        assert!(
            msg.contains(
                "credential `anthropic` may only be used in header x-api-key for api.anthropic.com"
            ),
            "{msg}"
        );
    }

    #[test]
    fn basic_password_and_query_for_a_basic_credential() {
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("git:{PH2}"))
        );
        assert_eq!(
            run(
                "/repos",
                &[("authorization", &basic)],
                "api.github.com:443",
                Scheme::Https
            )
            .unwrap(),
            vec![1]
        );
        assert_eq!(
            run(
                &format!("/r?access_token={PH2}"),
                &[],
                "api.github.com:443",
                Scheme::Https
            )
            .unwrap(),
            vec![1]
        );
    }

    #[test]
    fn header_values_by_type_and_crlf_refused() {
        let c = creds();
        let (v, _) = header_value(&c.configs[0], &Secret::new(b"sk-real".to_vec()), None).unwrap();
        assert_eq!(v, "sk-real");
        let (v, _) = header_value(
            &c.configs[1],
            &Secret::new(b"tok".to_vec()),
            Some(b"git:PH"),
        )
        .unwrap();
        assert_eq!(
            v,
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("git:tok")
            )
        );
        assert!(header_value(
            &c.configs[0],
            &Secret::new(b"a\r\nX-Evil: 1".to_vec()),
            None
        )
        .is_err());
        assert!(header_value(&c.configs[0], &Secret::new(b"a\0b".to_vec()), None).is_err());
    }
}
