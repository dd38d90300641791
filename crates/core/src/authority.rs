//! Canonical destinations.
//!
//! Every decision the proxy takes (allowlist, SNI and `Host` agreement, and later credential
//! binding, policy and audit) keys on one value: the canonical authority of the CONNECT
//! request (or of an absolute-form `http://` request). Canonical means: ASCII lowercase,
//! IDNA-encoded, no trailing dot, an explicit port, and never an IP address in any of the
//! spellings that URL parsers and resolvers accept (`127.1`, `2130706433`, `0x7f.0.0.1`,
//! `[::ffff:127.0.0.1]` …).

use std::fmt;

/// The scheme a request will use towards the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A canonical `host:port`. The host is a lowercase ASCII DNS name, never an IP literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Authority {
    host: String,
    port: u16,
}

/// Why a string is not an acceptable destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("empty host")]
    Empty,
    #[error("missing port (expected host:port)")]
    MissingPort,
    #[error("invalid port {0:?}")]
    InvalidPort(String),
    #[error("{0:?} is an IP address; only DNS names are allowed")]
    IpLiteral(String),
    #[error("{0:?} is not a valid DNS name")]
    InvalidName(String),
    #[error("user information is not allowed in an authority")]
    Userinfo,
}

impl Authority {
    /// Parse the target of a `CONNECT` request: `host:port`, port required.
    pub fn parse_connect(target: &str) -> Result<Authority, AuthorityError> {
        let (host, port) = split_host_port(target)?;
        let port = port.ok_or(AuthorityError::MissingPort)?;
        Ok(Authority {
            host: canonical_host(host)?,
            port: parse_port(port)?,
        })
    }

    /// Parse an authority as it appears in a `Host` header, `:authority` pseudo-header or an
    /// absolute URI, where the port defaults to the scheme's.
    pub fn parse_with_default(target: &str, scheme: Scheme) -> Result<Authority, AuthorityError> {
        let (host, port) = split_host_port(target)?;
        let port = match port {
            Some(p) => parse_port(p)?,
            None => scheme.default_port(),
        };
        Ok(Authority {
            host: canonical_host(host)?,
            port,
        })
    }

    /// Build from an already split host and port (the host is canonicalised).
    pub fn new(host: &str, port: u16) -> Result<Authority, AuthorityError> {
        if port == 0 {
            return Err(AuthorityError::InvalidPort("0".into()));
        }
        Ok(Authority {
            host: canonical_host(host)?,
            port,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host` when the port is the scheme's default, `host:port` otherwise: the form used in
    /// URIs and `Host` headers sent upstream.
    pub fn to_uri_authority(&self, scheme: Scheme) -> String {
        if self.port == scheme.default_port() {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

fn parse_port(p: &str) -> Result<u16, AuthorityError> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 5 {
        return Err(AuthorityError::InvalidPort(p.to_string()));
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(AuthorityError::InvalidPort(p.to_string())),
        Ok(n) => Ok(n),
    }
}

/// Split `host[:port]`, recognising bracketed IPv6 so it can be refused with a clear error.
fn split_host_port(s: &str) -> Result<(&str, Option<&str>), AuthorityError> {
    if s.contains('@') {
        return Err(AuthorityError::Userinfo);
    }
    if let Some(rest) = s.strip_prefix('[') {
        // An IPv6 literal, possibly IPv4-mapped: always refused, whatever it contains.
        let end = rest.find(']').unwrap_or(rest.len());
        return Err(AuthorityError::IpLiteral(format!("[{}]", &rest[..end])));
    }
    match s.rsplit_once(':') {
        Some((h, _)) if h.contains(':') => Err(AuthorityError::IpLiteral(s.to_string())),
        Some((h, p)) => Ok((h, Some(p))),
        None => Ok((s, None)),
    }
}

/// Canonicalise a host name: IDNA to ASCII, lowercase, trailing dot removed. Refuses every
/// spelling of an IP address, including the numeric shorthands that resolvers accept.
pub(crate) fn canonical_host(raw: &str) -> Result<String, AuthorityError> {
    let trimmed = raw.strip_suffix('.').unwrap_or(raw);
    if trimmed.is_empty() {
        return Err(AuthorityError::Empty);
    }
    if trimmed.contains(':') || trimmed.starts_with('[') {
        return Err(AuthorityError::IpLiteral(raw.to_string()));
    }
    let ascii = idna::domain_to_ascii_strict(trimmed)
        .map_err(|_| AuthorityError::InvalidName(raw.to_string()))?;
    let ascii = ascii.to_ascii_lowercase();
    if ascii.is_empty() || ascii.len() > 253 {
        return Err(AuthorityError::InvalidName(raw.to_string()));
    }
    // WHATWG URL and inet_aton both read a name whose last label is numeric as an IPv4
    // address (`127.1`, `2130706433`, `0x7f.0.0.1`, `0177.0.0.1`). No public DNS name ends in
    // a numeric label, so refusing them all closes every such spelling at once.
    let last = ascii.rsplit('.').next().unwrap_or("");
    if looks_numeric(last) {
        return Err(AuthorityError::IpLiteral(raw.to_string()));
    }
    for label in ascii.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(AuthorityError::InvalidName(raw.to_string()));
        }
    }
    Ok(ascii)
}

fn looks_numeric(label: &str) -> bool {
    if label.is_empty() {
        return false;
    }
    if let Some(hex) = label
        .strip_prefix("0x")
        .or_else(|| label.strip_prefix("0X"))
    {
        return hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    label.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalises_case_trailing_dot_and_idna() {
        let a = Authority::parse_connect("API.Example.COM.:443").unwrap();
        assert_eq!(a.to_string(), "api.example.com:443");
        let a = Authority::parse_connect("bücher.example:8443").unwrap();
        assert_eq!(a.host(), "xn--bcher-kva.example");
        assert_eq!(a.port(), 8443);
    }

    #[test]
    fn connect_requires_port() {
        assert_eq!(
            Authority::parse_connect("example.com"),
            Err(AuthorityError::MissingPort)
        );
        assert!(Authority::parse_connect("example.com:0").is_err());
        assert!(Authority::parse_connect("example.com:65536").is_err());
        assert!(Authority::parse_connect("example.com:+1").is_err());
    }

    #[test]
    fn default_port_from_scheme() {
        let a = Authority::parse_with_default("example.com", Scheme::Https).unwrap();
        assert_eq!(a.port(), 443);
        assert_eq!(a.to_uri_authority(Scheme::Https), "example.com");
        let a = Authority::parse_with_default("example.com:8080", Scheme::Http).unwrap();
        assert_eq!(a.to_uri_authority(Scheme::Http), "example.com:8080");
    }

    #[test]
    fn every_ip_spelling_is_refused() {
        for t in [
            "127.0.0.1:443",
            "127.1:443",
            "2130706433:443",
            "0x7f.0.0.1:443",
            "0x7f000001:443",
            "0177.0.0.1:443",
            "[::1]:443",
            "[::ffff:127.0.0.1]:443",
            "[::ffff:7f00:1]:443",
            "169.254.169.254:80",
            "10.0.0.1.:443",
            "::1:443",
        ] {
            match Authority::parse_connect(t) {
                Err(AuthorityError::IpLiteral(_)) => {}
                other => panic!("{t}: expected IpLiteral, got {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_userinfo_and_garbage() {
        assert_eq!(
            Authority::parse_connect("allowed.com@evil.com:443"),
            Err(AuthorityError::Userinfo)
        );
        assert!(Authority::parse_connect("exa mple.com:443").is_err());
        assert!(Authority::parse_connect(":443").is_err());
        assert!(Authority::parse_connect("a..b:443").is_err());
        assert!(Authority::parse_connect("-a.com:443").is_err());
    }

    proptest::proptest! {
        #[test]
        fn canonical_form_is_a_fixed_point(host in "[a-zA-Z][a-zA-Z0-9-]{0,10}(\\.[a-zA-Z][a-zA-Z0-9]{0,10}){0,3}\\.?", port in 1u16..) {
            if let Ok(a) = Authority::new(&host, port) {
                let again = Authority::parse_connect(&a.to_string()).unwrap();
                proptest::prop_assert_eq!(&again, &a);
                proptest::prop_assert_eq!(a.host(), a.host().to_ascii_lowercase());
                proptest::prop_assert!(!a.host().ends_with('.'));
            }
        }
    }
}
