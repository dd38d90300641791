use std::path::Path;
use std::time::Duration;

use credproxy_core::{Authority, ListenAddr};

use crate::{Config, LogFormat};

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
  - "*.githubusercontent.com"
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
        .allows(&Authority::parse_connect("raw.githubusercontent.com:443").unwrap()));
    assert_eq!(
        c.upstream.resolve["api.anthropic.com"].to_string(),
        "127.0.0.1:8443"
    );
    assert_eq!(c.upstream.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.limits.header_read_timeout, Duration::from_secs(5));
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(90));
    assert_eq!(c.log.format, LogFormat::Pretty);
    let id = c.identity.unwrap();
    assert_eq!(id.roles_claim, "realm_access.roles");
    assert_eq!(id.leeway, Duration::from_secs(10));
    assert_eq!(
        c.policy.dir.as_deref(),
        Some(Path::new("/etc/credproxy/policy"))
    );
    assert_eq!(c.secrets.cache_ttl, Duration::from_secs(10));
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
        e.contains("algorithms[0]")
            && e.contains("algorithms[1]")
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
