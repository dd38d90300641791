use std::path::Path;
use std::time::Duration;

use credproxy_core::{Authority, ListenAddr};

use crate::{
    AgentTokenConfig, ClientCredentialsConfig, Config, DevIssuerTokenConfig, LogFormat,
    TokenEndpoint,
};

const GOOD: &str = r#"
listeners:
  - name: agents
    tcp: 127.0.0.1:18790
  - name: vm-a
    unix: run/vm-a.sock
    unix_mode: "0600"
admin:
  tcp: 127.0.0.1:18791
ca:
  cert_file: /var/lib/credproxy/ca/ca.crt
  key_file: ca/ca.key
allowed_domains:
  - api.anthropic.com
  - "*.cdn.example.com"
  - API.OpenAI.com.
  - api.github.com
upstream:
  extra_ca_files: [extra.pem]
  resolve:
    api.anthropic.com: 127.0.0.1:8443
  allow_private_networks: [10.0.0.0/8]
  connect_timeout: 3s
limits:
  header_read_timeout: 5s
  max_header_bytes: 32768
log:
  format: pretty
  level: debug
identity:
  oidc:
    issuer: https://id.example/realms/openclaw
    audiences: [credproxy]
    leeway: 10s
policy:
  dir: policy
secrets:
  openbao:
    address: https://127.0.0.1:8200
    ca_file: bao-ca.pem
    auth:
      approle: {role_id_file: role_id, secret_id_file: secret_id}
    cache_ttl: 10s
credentials:
  - id: anthropic
    placeholder: agent-vault-00000000-0000-0000-0000-000000000001
    type: api_key
    bound_domains: [api.anthropic.com]
    allowed_roles: [proxy-user]
    source:
      openbao: {path: openclaw/credentials/anthropic}
  - id: github
    placeholder: ghp_placeholder_for_the_agent_0001
    type: bearer
    bound_domains: [api.github.com]
    allowed_roles: [proxy-user]
    inject_in: [header, query]
    source: {env: GITHUB_TOKEN}
audit:
  path: /var/lib/credproxy/audit.db
  retention: 30d
  temporal:
    address: 127.0.0.1:7233
"#;

#[test]
fn parses_a_full_config() {
    let c = Config::parse(GOOD, Path::new("/etc/credproxy")).unwrap();
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(
        c.listeners[1].addr,
        ListenAddr::Unix("/etc/credproxy/run/vm-a.sock".into())
    );
    assert_eq!(c.listeners[1].unix_mode, 0o600);
    assert_eq!(c.ca.key_file, Path::new("/etc/credproxy/ca/ca.key"));
    assert!(c
        .allowed_domains
        .allows(&Authority::parse_connect("api.openai.com:443").unwrap()));
    assert!(c
        .allowed_domains
        .allows(&Authority::parse_connect("raw.cdn.example.com:443").unwrap()));
    assert_eq!(
        c.upstream.resolve["api.anthropic.com"].to_string(),
        "127.0.0.1:8443"
    );
    assert_eq!(c.upstream.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.limits.header_read_timeout, Duration::from_secs(5));
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(90));
    assert_eq!(c.log.format, LogFormat::Pretty);
    let id = c.identity.unwrap();
    assert_eq!(id.oidc.roles_claim, "realm_access.roles");
    assert_eq!(id.oidc.leeway, Duration::from_secs(10));
    assert_eq!(
        c.policy.dir.as_deref(),
        Some(Path::new("/etc/credproxy/policy"))
    );
    assert_eq!(c.secrets.store.cache_ttl, Duration::from_secs(10));
    assert_eq!(c.credentials.len(), 2);
    assert_eq!(c.credentials[0].header_name, "x-api-key");
    assert_eq!(c.credentials[1].header_name, "authorization");
    assert!(c.credentials[1].inject_in.query && !c.credentials[1].inject_in.body);
    assert_eq!(c.audit.unwrap().temporal.unwrap().task_queue, "credproxy");
}

#[test]
fn credential_errors_are_all_reported() {
    let bad = r#"
listeners: [{name: a, tcp: "127.0.0.1:1"}]
ca: {cert_file: /c, key_file: /k}
allowed_domains: [api.example.com]
identity: {danger_allow_anonymous: true}
credentials:
  - id: Bad Id
    placeholder: AGENT-VAULT-00000000-0000-0000-0000-000000000001
    type: bearer
    header_prefix: "Bearer "
    bound_domains: [api.other.com]
    inject_in: [cookie]
    source: {openbao: {path: x}}
  - id: short
    placeholder: tooshort
    type: header
    source: {file: /x, env: Y}
  - id: a
    placeholder: sk-placeholder-0000000001
    type: api_key
    header_name: X-Api-Key
    bound_domains: [api.example.com]
    source: {env: A}
  - id: b
    placeholder: sk-placeholder-0000000001-extra
    type: api_key
    bound_domains: [api.example.com]
    source: {env: B}
"#;
    let errs = Config::parse(bad, Path::new("/")).unwrap_err();
    insta::assert_snapshot!(errs.to_string());
}

#[test]
fn identity_is_required_unless_anonymous_is_explicit() {
    let base = "listeners: [{name: a, tcp: '127.0.0.1:1'}]\nca: {cert_file: /c, key_file: /k}\nallowed_domains: []\n";
    let e = Config::parse(base, Path::new("/")).unwrap_err().to_string();
    assert!(e.contains("identity: required"), "{e}");
    let ok = format!("{base}identity: {{danger_allow_anonymous: true}}\n");
    assert!(Config::parse(&ok, Path::new("/"))
        .unwrap()
        .identity
        .is_none());
    let bad_alg = format!(
        "{base}identity: {{oidc: {{issuer: x, audiences: [a], algorithms: [HS256, none]}}}}\n"
    );
    let e = Config::parse(&bad_alg, Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("identity.oidc.algorithms: \"HS256\" is not allowed")
            && e.contains("identity.oidc.algorithms: \"none\" is not allowed")
            && e.contains("never none or HMAC"),
        "{e}"
    );
}

#[test]
fn json_is_accepted() {
    let json = r#"{"listeners":[{"name":"a","tcp":"127.0.0.1:1"}],
        "ca":{"cert_file":"/c","key_file":"/k"},"allowed_domains":["example.com"],
        "identity":{"danger_allow_anonymous":true}}"#;
    let c = Config::parse(json, Path::new("/")).unwrap();
    assert_eq!(c.listeners[0].name, "a");
}

#[test]
fn reports_every_error_with_its_key_path() {
    let bad = r#"
listeners:
  - name: agents
    tcp: localhost:18790
  - name: agents
    tpc: 127.0.0.1:1
  - tcp: 127.0.0.1:2
    unix: /x
admin: {}
ca:
  cert_file: /c
allowed_domains:
  - api.example.com
  - 127.0.0.1
  - "*.com"
  - "a.*.example.com"
upstream:
  resolve:
    "evil..com": 1.2.3.4:443
    good.example: nowhere
  allow_private_networks: [10.0.0.0/33]
limits:
  idle_timeout: ninety
  max_header_bytes: 10
log:
  format: xml
identity: {}
"#;
    let errs = Config::parse(bad, Path::new("/")).unwrap_err();
    insta::assert_snapshot!(errs.to_string());
}

#[test]
fn missing_ca_is_an_error_not_a_default() {
    let errs = Config::parse(
        "listeners: [{name: a, tcp: '127.0.0.1:1'}]\nallowed_domains: []\nidentity: {danger_allow_anonymous: true}\n",
        Path::new("/"),
    )
    .unwrap_err();
    assert!(
        errs.to_string().contains("there is no built-in CA"),
        "{errs}"
    );
}

#[test]
fn yaml_syntax_error_names_the_line() {
    let errs = Config::parse("listeners: [\n  - a: b\n", Path::new("/")).unwrap_err();
    let s = errs.to_string();
    assert!(s.contains("not valid YAML at line"), "{s}");
}

#[test]
fn vsock_listeners_parse_and_their_errors_name_the_key() {
    let ok = r#"
listeners:
  - name: vm-a
    vsock_uds: {path: run/vm-a.vsock, port: 18790}
    unix_mode: "0600"
    agent: vm-a
  - name: vm-b
    vsock: {cid: any, port: 18790, peer_cid: 4}
    agent: vm-b
  - name: host
    vsock: {cid: 2, port: 18791}
ca: {cert_file: /c, key_file: /k}
allowed_domains: [api.anthropic.com]
identity: {oidc: {issuer: "https://id.example", audiences: [credproxy]}}
"#;
    let c = Config::parse(ok, Path::new("/etc/credproxy")).unwrap();
    assert_eq!(
        c.listeners[0].addr,
        ListenAddr::VsockUds {
            path: "/etc/credproxy/run/vm-a.vsock".into(),
            port: 18790
        }
    );
    assert_eq!(c.listeners[0].unix_mode, 0o600);
    assert_eq!(c.listeners[0].agent.as_deref(), Some("vm-a"));
    assert_eq!(
        c.listeners[1].addr,
        ListenAddr::Vsock {
            cid: None,
            port: 18790,
            peer_cid: Some(4)
        }
    );
    assert_eq!(
        c.listeners[2].addr,
        ListenAddr::Vsock {
            cid: Some(2),
            port: 18791,
            peer_cid: None
        }
    );

    let bad = r#"
listeners:
  - {name: a, vsock: {cid: some, port: 1, peer_cid: 1}}
  - {name: b, vsock: {cid: any}}
  - {name: c, vsock_uds: {port: 5}}
  - {name: d, vsock_uds: {path: /run/x, port: 5, cid: 3}}
  - {name: e, tcp: "127.0.0.1:1", vsock: {port: 1}}
  - {name: f}
ca: {cert_file: /c, key_file: /k}
allowed_domains: [api.anthropic.com]
identity: {danger_allow_anonymous: true}
"#;
    let errs = Config::parse(bad, Path::new("/")).unwrap_err().to_string();
    for expected in [
        "listeners[0].vsock.cid: expected \"any\" or a CID number",
        "listeners[0].vsock.peer_cid: 1 is not a guest CID",
        "listeners[1].vsock.port: required",
        "listeners[2].vsock_uds.path: required",
        "listeners[3].vsock_uds.cid: unknown field \"cid\"",
        "listeners[4]: has both tcp and vsock",
        "listeners[5]: needs exactly one of: tcp, unix, vsock, vsock_uds",
    ] {
        assert!(errs.contains(expected), "missing {expected:?} in:\n{errs}");
    }
}

#[test]
fn agent_token_parses_both_sources() {
    let ok = r#"
listeners:
  - name: vm-a
    vsock: {cid: any, port: 18791, peer_cid: 3}
    agent: vm-a
    agent_token:
      client_credentials:
        token_url: https://id.example/realms/openclaw/protocol/openid-connect/token
        client_id: vm-a
        client_secret_file: secrets/vm-a
        audience: credproxy
        scope: proxy
        ca_files: [id-ca.pem]
  - name: vm-b
    vsock_uds: {path: /run/credproxy/vm-b.vsock, port: 18790}
    agent: vm-b
    agent_token:
      client_credentials:
        issuer: https://id.example/realms/openclaw
        client_id: vm-b
        client_secret_file: /run/credentials/credproxy.service/vm-b
  - name: local
    unix: /run/credproxy/agent.sock
    peer_uids: [1001, "300000-365535"]
    agent: local-agent
    agent_token:
      client_credentials: {token_url: "http://127.0.0.1:8080/token", client_id: l, client_secret_file: /s}
ca: {cert_file: /c, key_file: /k}
allowed_domains: [api.anthropic.com]
identity: {oidc: {issuer: "https://id.example/realms/openclaw", audiences: [credproxy]}}
"#;
    let c = Config::parse(ok, Path::new("/etc/credproxy")).unwrap();
    assert_eq!(
        c.listeners[0].agent_token,
        Some(AgentTokenConfig::ClientCredentials(
            ClientCredentialsConfig {
                endpoint: TokenEndpoint::TokenUrl(
                    "https://id.example/realms/openclaw/protocol/openid-connect/token".into()
                ),
                client_id: "vm-a".into(),
                client_secret_file: "/etc/credproxy/secrets/vm-a".into(),
                audience: Some("credproxy".into()),
                scope: Some("proxy".into()),
                ca_files: vec!["/etc/credproxy/id-ca.pem".into()],
            }
        ))
    );
    let Some(AgentTokenConfig::ClientCredentials(b)) = &c.listeners[1].agent_token else {
        panic!("{:?}", c.listeners[1])
    };
    assert_eq!(
        b.endpoint,
        TokenEndpoint::Issuer("https://id.example/realms/openclaw".into())
    );
    assert!(c.listeners[2].agent_token.is_some());

    let dev = r#"
listeners:
  - name: vm-a
    vsock: {cid: any, port: 18791, peer_cid: 3}
    agent: vm-a
    agent_token:
      dev_issuer: {key_file: /var/lib/credproxy/dev-issuer-key.pem, roles: [proxy-user]}
ca: {cert_file: /c, key_file: /k}
allowed_domains: [api.anthropic.com]
identity: {oidc: {issuer: credproxy-dev, audiences: [credproxy], algorithms: [ES256]}}
"#;
    let c = Config::parse(dev, Path::new("/")).unwrap();
    assert_eq!(
        c.listeners[0].agent_token,
        Some(AgentTokenConfig::DevIssuer(DevIssuerTokenConfig {
            key_file: "/var/lib/credproxy/dev-issuer-key.pem".into(),
            roles: vec!["proxy-user".into()],
            ttl: crate::DEFAULT_DEV_TOKEN_TTL,
        }))
    );
}

#[test]
fn agent_token_is_refused_where_the_peer_is_not_identified() {
    let bad = r#"
listeners:
  - name: t
    tcp: 127.0.0.1:18790
    agent: a
    agent_token: {dev_issuer: {key_file: /k.pem}}
  - name: v
    vsock: {cid: any, port: 18791}
    agent: b
    agent_token: {dev_issuer: {key_file: /k.pem}}
  - name: n
    vsock_uds: {path: /run/x.vsock, port: 1}
    agent_token: {dev_issuer: {key_file: /k.pem}}
  - name: both
    unix: /run/a.sock
    agent: c
    agent_token:
      dev_issuer: {key_file: /k.pem}
      client_credentials: {token_url: "https://id.example/t", client_id: c, client_secret_file: /s}
  - name: none
    unix: /run/b.sock
    agent: d
    agent_token: {}
  - name: cc
    unix: /run/c.sock
    agent: e
    agent_token:
      client_credentials: {token_url: "http://id.example/t", issuer: "https://id.example", client_secret: x}
  - name: cc2
    unix: /run/d.sock
    agent: f
    agent_token:
      client_credentials: {token_url: "http://id.example/t", client_id: "", audience: ""}
  - name: dev
    unix: /run/e.sock
    agent: g
    agent_token: {dev_issuer: {roles: [""], ttl: 1s}}
ca: {cert_file: /c, key_file: /k}
allowed_domains: [api.anthropic.com]
identity: {oidc: {issuer: "https://id.example", audiences: [credproxy]}}
"#;
    let errs = Config::parse(bad, Path::new("/")).unwrap_err().to_string();
    for expected in [
        "listeners[0].agent_token: not allowed on a tcp listener: every process that can connect to it would act as agent \"a\"",
        "listeners[1].vsock.peer_cid: required with agent_token: without it every VM that can reach vsock port 18791 would act as agent \"b\"",
        "listeners[2].agent: required with agent_token",
        "listeners[3].agent_token: has both client_credentials and dev_issuer",
        "listeners[4].agent_token: needs exactly one of client_credentials (the OIDC provider) or dev_issuer (dev mode)",
        "listeners[5].agent_token.client_credentials.client_secret: unknown field \"client_secret\"",
        "listeners[6].agent_token.client_credentials.token_url: \"http://id.example/t\" uses plain http to a non-loopback host",
        "listeners[6].agent_token.client_credentials.client_id: required",
        "listeners[6].agent_token.client_credentials.client_secret_file: required",
        "listeners[6].agent_token.client_credentials.audience: must not be empty",
        "listeners[7].agent_token.dev_issuer.key_file: required",
        "listeners[7].agent_token.dev_issuer.roles[0]: must not be empty",
        "listeners[7].agent_token.dev_issuer.ttl: must be between 10s and 24h",
    ] {
        assert!(errs.contains(expected), "missing {expected:?} in:\n{errs}");
    }
}

#[test]
fn request_limits_and_foreign_value_parse_and_are_validated() {
    let base = "listeners: [{name: a, tcp: '127.0.0.1:1'}]\nca: {cert_file: /c, key_file: /k}\nallowed_domains: [api.example.com]\nidentity: {danger_allow_anonymous: true}\naudit: {path: /a.db}\n";
    let ok = format!(
        "{base}limits:\n  body_idle_timeout: 5s\n  max_injected_body_bytes: 2097152\n  max_connections_per_identity: 3\n  max_streams_per_identity: 7\n  max_streams_per_connection: 9\n  body_scan_memory_per_connection: 4194304\ncredentials:\n  - id: k\n    placeholder: agent-vault-00000000-0000-0000-0000-000000000001\n    type: api_key\n    bound_domains: [api.example.com]\n    foreign_value: replace\n    source: {{env: K}}\n  - id: j\n    placeholder: agent-vault-00000000-0000-0000-0000-000000000002\n    type: api_key\n    header_name: x-j\n    bound_domains: [api.example.com]\n    allowed_agents: [vm-a]\n    source: {{env: J}}\n"
    );
    let c = Config::parse(&ok, Path::new("/")).unwrap();
    assert!(c.credentials[0].allowed_agents.is_empty());
    assert_eq!(c.credentials[1].allowed_agents, vec!["vm-a".to_string()]);
    assert_eq!(c.limits.body_idle_timeout, Duration::from_secs(5));
    assert_eq!(c.limits.max_injected_body_bytes, 2 * 1024 * 1024);
    assert_eq!(c.limits.max_connections_per_identity, 3);
    assert_eq!(c.limits.max_streams_per_identity, 7);
    assert_eq!(c.limits.max_streams_per_connection, 9);
    assert_eq!(c.limits.body_scan_memory_per_connection, 4 * 1024 * 1024);
    assert_eq!(c.credentials[0].foreign_value, crate::ForeignValue::Replace);
    assert_eq!(c.credentials[1].foreign_value, crate::ForeignValue::Refuse);

    let bad = format!(
        "{base}limits:\n  body_idle_timeout: 0s\n  max_injected_body_bytes: 10\n  max_connections_per_identity: 0\n  max_streams_per_identity: 0\n  max_streams_per_connection: 0\n  body_scan_memory_per_connection: 100\ncredentials:\n  - id: k\n    placeholder: agent-vault-00000000-0000-0000-0000-000000000001\n    type: api_key\n    bound_domains: [api.example.com]\n    foreign_value: ignore\n    source: {{env: K}}\n  - id: u\n    placeholder: agent_vault_00000000_0000_0000_0000_000000000003\n    type: api_key\n    header_name: x-u\n    bound_domains: [api.example.com]\n    allowed_agents: [vm-a, ' ']\n    source: {{env: U}}\n"
    );
    let e = Config::parse(&bad, Path::new("/")).unwrap_err().to_string();
    for expected in [
        "limits.body_idle_timeout: must be greater than zero",
        "limits.max_injected_body_bytes: must be at least limits.body_scan_window",
        "limits.max_connections_per_identity: must be at least 1",
        "limits.max_streams_per_identity: must be at least 1",
        "limits.max_streams_per_connection: must be at least 1",
        "limits.body_scan_memory_per_connection: must be at least limits.body_scan_window",
        "credentials[0].foreign_value: expected refuse or replace, got \"ignore\"",
        "credentials[1].allowed_agents[1]: must be an agent id",
        "credentials[1].placeholder: a placeholder using \"agent-vault\" must be exactly",
    ] {
        assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
    }
}

#[test]
fn agent_token_must_be_verifiable_by_the_identity_config() {
    let listener = |token: &str| {
        format!(
            "listeners:\n  - name: vm-a\n    unix: /run/a.sock\n    peer_uids: [1001]\n    agent: vm-a\n    agent_token: {token}\n\
             ca: {{cert_file: /c, key_file: /k}}\nallowed_domains: [api.anthropic.com]\n"
        )
    };
    let dev = "{dev_issuer: {key_file: /k.pem}}";
    let cases = [
        (
            format!("{}identity: {{oidc: {{issuer: \"https://id.example\", audiences: [credproxy]}}}}\n", listener(dev)),
            "listeners[0].agent_token.dev_issuer: dev issuer tokens are issued by \"credproxy-dev\", but identity.oidc.issuer is \"https://id.example\"",
        ),
        (
            format!("{}identity: {{oidc: {{issuer: credproxy-dev, audiences: [other]}}}}\n", listener(dev)),
            "listeners[0].agent_token.dev_issuer: dev issuer tokens have audience \"credproxy\"",
        ),
        (
            format!("{}identity: {{danger_allow_anonymous: true}}\n", listener(dev)),
            "listeners[0].agent_token: needs identity.oidc",
        ),
        (
            format!(
                "{}identity: {{oidc: {{issuer: \"https://id.example\", audiences: [credproxy]}}}}\n",
                listener("{client_credentials: {issuer: \"https://other.example\", client_id: a, client_secret_file: /s}}")
            ),
            "listeners[0].agent_token.client_credentials.issuer: tokens from \"https://other.example\" would not verify against identity.oidc.issuer \"https://id.example\"",
        ),
    ];
    for (yaml, expected) in cases {
        let errs = Config::parse(&yaml, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(
            errs.contains(expected),
            "missing {expected:?} in:\n{errs}\n{yaml}"
        );
    }
    // The dev issuer has no discovery: without a dev_issuer listener it needs a JWKS file.
    let no_jwks =
        "listeners:\n  - {name: a, tcp: \"127.0.0.1:1\"}\nca: {cert_file: /c, key_file: /k}\n\
                   identity: {oidc: {issuer: credproxy-dev, audiences: [credproxy]}}\n";
    let errs = Config::parse(no_jwks, Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(
        errs.contains("identity.oidc.jwks_file: required for issuer \"credproxy-dev\""),
        "{errs}"
    );
    // With one, it is fine.
    let dev_ok = format!(
        "{}identity: {{oidc: {{issuer: credproxy-dev, audiences: [credproxy]}}}}\n",
        listener(dev)
    );
    Config::parse(&dev_ok, Path::new("/")).unwrap();
}

#[test]
fn wildcards_across_public_suffixes_are_refused_with_their_key_path() {
    let y = "listeners: [{name: a, tcp: '127.0.0.1:1'}]\nca: {cert_file: /c, key_file: /k}\nallowed_domains: [\"*.co.uk\", \"*.github.io\", \"*.amazonaws.com\", \"*.example.co.uk\"]\nidentity: {danger_allow_anonymous: true}\n";
    let e = Config::parse(y, Path::new("/")).unwrap_err().to_string();
    for expected in [
        "allowed_domains[0]: wildcard \"*.co.uk\" spans a public suffix",
        "allowed_domains[1]: wildcard \"*.github.io\" spans a public suffix",
        "allowed_domains[2]: wildcard \"*.amazonaws.com\" spans a public suffix",
    ] {
        assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
    }
    assert!(!e.contains("allowed_domains[3]"), "{e}");
}

#[test]
fn peer_uids_are_uids_and_inclusive_ranges_on_unix_sockets() {
    let ok = r#"
listeners:
  - name: inst-a
    unix: /run/credproxy/containers/a.sock
    unix_mode: "0666"
    peer_uids: [1001, "300000-365535"]
    agent: inst-a
    agent_token:
      dev_issuer: {key_file: /var/lib/credproxy/dev-issuer-key.pem}
  - name: hypervisor
    vsock_uds: {path: /run/vm-b.vsock, port: 18790}
    peer_uids: ["0"]
ca: {cert_file: /c, key_file: /k}
allowed_domains: [api.anthropic.com]
identity: {oidc: {issuer: credproxy-dev, audiences: [credproxy]}}
"#;
    let c = Config::parse(ok, Path::new("/")).unwrap();
    let a = c.listeners[0].peer_uids.as_ref().unwrap();
    for uid in [1001, 300000, 365535] {
        assert!(a.contains(uid), "{uid}");
    }
    for uid in [0, 1000, 1002, 299999, 365536] {
        assert!(!a.contains(uid), "{uid}");
    }
    assert!(c.listeners[1].peer_uids.as_ref().unwrap().contains(0));

    let bad = r#"
listeners:
  - name: a
    unix: /run/a.sock
    agent: a
    agent_token: {dev_issuer: {key_file: /k.pem}}
  - name: b
    tcp: 127.0.0.1:1
    peer_uids: [1]
  - name: c
    vsock: {cid: any, port: 18790, peer_cid: 3}
    peer_uids: [1]
  - name: d
    unix: /run/d.sock
    peer_uids: []
  - name: e
    unix: /run/e.sock
    peer_uids: ["9-3", "x", 4294967295, -1, "1-2-3"]
ca: {cert_file: /c, key_file: /k}
identity: {oidc: {issuer: credproxy-dev, audiences: [credproxy]}}
"#;
    let errs = Config::parse(bad, Path::new("/")).unwrap_err().to_string();
    for expected in [
        "listeners[0].peer_uids: required with agent_token on a unix listener: without it every process that can open /run/a.sock would act as agent \"a\"",
        "listeners[1].peer_uids: only on unix and vsock_uds listeners",
        "listeners[2].peer_uids: only on unix and vsock_uds listeners",
        "listeners[3].peer_uids: must not be empty",
        "listeners[4].peer_uids[0]: range \"9-3\" is empty",
        "listeners[4].peer_uids[1]: expected a uid",
        "listeners[4].peer_uids[2]: uid 4294967295 is (uid_t)-1",
        "listeners[4].peer_uids[4]: expected a uid",
    ] {
        assert!(errs.contains(expected), "missing {expected:?} in:\n{errs}");
    }
    // -1 is not a uid either (it does not even have the shape of one).
    assert!(errs.contains("listeners[4].peer_uids"), "{errs}");
}

#[test]
fn internal_services_map_allowlisted_names_to_unix_sockets() {
    let ok = r#"
listeners: [{name: a, tcp: "127.0.0.1:1"}]
ca: {cert_file: /c, key_file: /k}
allowed_domains: [api.anthropic.com, Hub.OpenClaw.Internal.]
identity: {danger_allow_anonymous: true}
internal_services:
  Hub.OpenClaw.Internal.: {unix: run/hub.sock}
"#;
    let c = Config::parse(ok, Path::new("/srv")).unwrap();
    let svc = &c.internal_services["hub.openclaw.internal"];
    assert_eq!(svc.name, "hub.openclaw.internal");
    assert_eq!(svc.unix, Path::new("/srv/run/hub.sock"));

    let bad = r#"
listeners: [{name: a, tcp: "127.0.0.1:1"}]
ca: {cert_file: /c, key_file: /k}
allowed_domains: [api.anthropic.com, hub.openclaw.internal, bound.internal]
identity: {danger_allow_anonymous: true}
credentials:
  - id: leaky
    placeholder: agent-vault-00000000-0000-0000-0000-000000000001
    type: bearer
    bound_domains: [bound.internal]
    source: {env: X}
audit: {path: /a.db}
internal_services:
  not-listed.internal: {unix: /run/x.sock}
  bound.internal: {unix: /run/b.sock}
  hub.openclaw.internal: {}
  "10.0.0.1": {unix: /run/ip.sock}
  odd.internal: {unix: /run/o.sock, tcp: "127.0.0.1:9"}
"#;
    let errs = Config::parse(bad, Path::new("/")).unwrap_err().to_string();
    for expected in [
        "internal_services.not-listed.internal: not-listed.internal is not in allowed_domains",
        "internal_services.bound.internal: credential \"leaky\" is bound to bound.internal; an internal service never receives an injected credential",
        "internal_services.hub.openclaw.internal.unix: required",
        "internal_services.10.0.0.1: not a DNS name",
        "internal_services.odd.internal.tcp: unknown field \"tcp\"",
    ] {
        assert!(errs.contains(expected), "missing {expected:?} in:\n{errs}");
    }
}

#[test]
fn credential_kinds_have_one_row_each_and_round_trip_by_name() {
    use crate::CredentialKind;
    let mut names: Vec<&str> = CredentialKind::TABLE.iter().map(|k| k.name).collect();
    for row in CredentialKind::TABLE {
        assert_eq!(row.kind.info(), &row, "{} points at another row", row.name);
        assert_eq!(CredentialKind::from_name(row.name), Some(row.kind));
        assert!(
            !row.fixed_header || row.default_header.is_some(),
            "{}: a fixed header needs a default",
            row.name
        );
    }
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), CredentialKind::TABLE.len(), "duplicate names");
    assert_eq!(CredentialKind::from_name("Bearer"), None, "names are exact");
}

#[test]
fn scrub_set_retention_and_refresh() {
    let base = "listeners: [{name: a, tcp: '127.0.0.1:1'}]\nca: {cert_file: /c, key_file: /k}\nallowed_domains: []\nidentity: {danger_allow_anonymous: true}\n";
    let c = Config::parse(base, Path::new("/")).unwrap();
    assert_eq!(c.secrets.scrub_retention, Duration::from_secs(24 * 3600));
    assert_eq!(c.secrets.scrub_refresh, Duration::from_secs(60));
    let set = format!("{base}secrets: {{scrub_retention: 7d, scrub_refresh: 10s}}\n");
    let c = Config::parse(&set, Path::new("/")).unwrap();
    assert_eq!(
        c.secrets.scrub_retention,
        Duration::from_secs(7 * 24 * 3600)
    );
    assert_eq!(c.secrets.scrub_refresh, Duration::from_secs(10));
    let bad = format!("{base}secrets: {{scrub_retention: forever, scrub_refresh: 100ms}}\n");
    let e = Config::parse(&bad, Path::new("/")).unwrap_err().to_string();
    assert!(
        e.contains("secrets.scrub_retention: expected a duration"),
        "{e}"
    );
    assert!(
        e.contains("secrets.scrub_refresh: between 1s and 24h"),
        "{e}"
    );
    let long = format!("{base}secrets: {{scrub_retention: 365d}}\n");
    let e = Config::parse(&long, Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("secrets.scrub_retention: at most 90d"), "{e}");
}
