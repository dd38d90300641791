//! The destination allowlist.
//!
//! An entry is a canonical DNS name (`api.example.com`) or a one-label wildcard
//! (`*.example.com` matches `a.example.com`, not `example.com` nor `a.b.example.com`),
//! optionally with a port (`api.example.com:8443`). An entry without a port allows the web
//! ports 443 and 80 only, so an allowlisted name cannot be used to reach its other services.
//! That a wildcard never spans a public suffix is checked when the configuration is
//! validated (`credproxy-config`, with the public suffix list).

use std::collections::HashSet;
use std::fmt;

use crate::authority::{canonical_host, Authority, AuthorityError};

/// One parsed allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AllowlistEntry {
    wildcard: bool,
    /// For a wildcard, the suffix after `*.`.
    host: String,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowlistError {
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    #[error("wildcard must be a single leading \"*.\" label, as in \"*.example.com\"")]
    BadWildcard,
    #[error("wildcard \"*.{0}\" is too broad: it needs at least two labels after \"*.\"")]
    WildcardTooBroad(String),
}

impl AllowlistEntry {
    pub fn parse(s: &str) -> Result<AllowlistEntry, AllowlistError> {
        let (name, port) = match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') && !h.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| AuthorityError::InvalidPort(p.to_string()))?;
                (h, Some(port))
            }
            _ => (s, None),
        };
        let (wildcard, rest) = match name.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, name),
        };
        if rest.contains('*') {
            return Err(AllowlistError::BadWildcard);
        }
        let host = canonical_host(rest)?;
        if wildcard && host.split('.').count() < 2 {
            return Err(AllowlistError::WildcardTooBroad(host));
        }
        Ok(AllowlistEntry {
            wildcard,
            host,
            port,
        })
    }

    fn matches(&self, a: &Authority) -> bool {
        let port_ok = match self.port {
            Some(p) => p == a.port(),
            None => a.port() == 443 || a.port() == 80,
        };
        if !port_ok {
            return false;
        }
        if self.wildcard {
            match a.host().split_once('.') {
                Some((first, rest)) => !first.is_empty() && rest == self.host,
                None => false,
            }
        } else {
            a.host() == self.host
        }
    }

    /// Whether this entry is a `*.` wildcard.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// The canonical host name (for a wildcard, the part after `*.`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// True when this entry matches the name `host` on some port; used to check that a
    /// credential's bound domains lie inside the allowlist.
    pub fn covers_host(&self, host: &str) -> bool {
        if self.wildcard {
            host.split_once('.')
                .is_some_and(|(first, rest)| !first.is_empty() && rest == self.host)
        } else {
            host == self.host
        }
    }
}

impl fmt::Display for AllowlistEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// The set of destinations the proxy will open connections to. Empty means nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    exact: HashSet<(String, Option<u16>)>,
    entries: Vec<AllowlistEntry>,
}

impl Allowlist {
    pub fn new(entries: Vec<AllowlistEntry>) -> Allowlist {
        let exact = entries
            .iter()
            .filter(|e| !e.wildcard)
            .map(|e| (e.host.clone(), e.port))
            .collect();
        Allowlist { exact, entries }
    }

    pub fn allows(&self, a: &Authority) -> bool {
        // Exact names are the common case; keep them a hash lookup.
        let web_port = a.port() == 443 || a.port() == 80;
        if self.exact.contains(&(a.host().to_string(), Some(a.port())))
            || (web_port && self.exact.contains(&(a.host().to_string(), None)))
        {
            return true;
        }
        self.entries.iter().any(|e| e.wildcard && e.matches(a))
    }

    pub fn entries(&self) -> &[AllowlistEntry] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when some entry covers `host` (on any port).
    pub fn covers_host(&self, host: &str) -> bool {
        self.entries.iter().any(|e| e.covers_host(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Allowlist {
        Allowlist::new(
            items
                .iter()
                .map(|s| AllowlistEntry::parse(s).unwrap())
                .collect(),
        )
    }

    fn allowed(l: &Allowlist, target: &str) -> bool {
        match Authority::parse_connect(target) {
            Ok(a) => l.allows(&a),
            Err(_) => false,
        }
    }

    #[test]
    fn matcher_tricks_are_refused() {
        let l = list(&["allowed.com", "*.wild.example.com"]);
        assert!(allowed(&l, "allowed.com:443"));
        assert!(allowed(&l, "ALLOWED.com.:443"));
        assert!(allowed(&l, "allowed.com:80"));
        assert!(!allowed(&l, "allowed.com:22"));
        assert!(!allowed(&l, "evil-allowed.com:443"));
        assert!(!allowed(&l, "allowed.com.evil:443"));
        assert!(!allowed(&l, "sub.allowed.com:443"));
        assert!(!allowed(&l, "allowed.com@evil.com:443"));
        assert!(allowed(&l, "a.wild.example.com:443"));
        assert!(!allowed(&l, "wild.example.com:443"));
        assert!(!allowed(&l, "a.b.wild.example.com:443"));
        assert!(!allowed(&l, "awild.example.com:443"));
    }

    #[test]
    fn explicit_port_entries() {
        let l = list(&["api.example.com:8443"]);
        assert!(allowed(&l, "api.example.com:8443"));
        assert!(!allowed(&l, "api.example.com:443"));
    }

    #[test]
    fn bad_entries() {
        assert!(matches!(
            AllowlistEntry::parse("*.com"),
            Err(AllowlistError::WildcardTooBroad(_))
        ));
        assert!(matches!(
            AllowlistEntry::parse("a.*.com"),
            Err(AllowlistError::BadWildcard)
        ));
        assert!(matches!(
            AllowlistEntry::parse("10.0.0.1"),
            Err(AllowlistError::Authority(AuthorityError::IpLiteral(_)))
        ));
        assert!(AllowlistEntry::parse("example.com:0").is_err());
    }

    #[test]
    fn empty_allows_nothing() {
        assert!(!allowed(&Allowlist::default(), "example.com:443"));
    }

    proptest::proptest! {
        #[test]
        fn case_and_trailing_dot_never_change_the_answer(host in "[a-z]{1,8}(\\.[a-z]{1,8}){1,3}", upper in proptest::collection::vec(proptest::bool::ANY, 40)) {
            let l = list(&[&host]);
            let mixed: String = host.chars().zip(upper.iter().cycle()).map(|(c, u)| if *u { c.to_ascii_uppercase() } else { c }).collect();
            let (a, b) = (format!("{mixed}:443"), format!("{mixed}.:443"));
            let (c, d) = (format!("x{host}:443"), format!("{host}.evil:443"));
            proptest::prop_assert!(allowed(&l, &a));
            proptest::prop_assert!(allowed(&l, &b));
            proptest::prop_assert!(!allowed(&l, &c));
            proptest::prop_assert!(!allowed(&l, &d));
        }
    }
}
