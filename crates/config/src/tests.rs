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
}

#[test]
fn json_is_accepted() {
    let json = r#"{"listeners":[{"name":"a","tcp":"127.0.0.1:1"}],
        "ca":{"cert_file":"/c","key_file":"/k"},"allowed_domains":["example.com"]}"#;
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
        "listeners: [{name: a, tcp: '127.0.0.1:1'}]\nallowed_domains: []\n",
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
