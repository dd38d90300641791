//! The destination allowlist.
//!
//! An entry is a canonical DNS name (`api.example.com`) or a one-label wildcard
//! (`*.example.com` matches `a.example.com`, not `example.com` nor `a.b.example.com`),
//! optionally with a port (`api.example.com:8443`). An entry without a port allows the web
//! ports 443 and 80 only, so an allowlisted name cannot be used to reach its other services.
//!
//! A wildcard never spans a public suffix (threat A12): `*.co.uk` (the base is a public
//! suffix), `*.github.io` and `*.githubusercontent.com` (private-section suffixes whose
//! subdomains belong to different people) and `*.amazonaws.com` (public suffixes such as
//! `s3.amazonaws.com` lie beneath it) are all refused. Whether the base is a suffix is asked of
//! the `psl` crate; whether a suffix lies beneath it is read from the same list's rules
//! (`public_suffix_rules.txt`, the `psl` crate's data, checked against it by a test).

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
    #[error("wildcard \"*.{host}\" spans a public suffix ({suffix} is on the public suffix list, so names under it belong to different owners); list the exact names instead")]
    WildcardAcrossPublicSuffix { host: String, suffix: String },
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
        if wildcard {
            if let Some(suffix) = public_suffix_at_or_below(&host) {
                return Err(AllowlistError::WildcardAcrossPublicSuffix { host, suffix });
            }
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

/// The public suffix list's rules, one a line (the `psl` crate's `data/rules.txt`).
const PUBLIC_SUFFIX_RULES: &str = include_str!("public_suffix_rules.txt");

/// Every name that has at least one public suffix strictly beneath it (e.g. `amazonaws.com`
/// for `s3.amazonaws.com`), in canonical ASCII form. Built once, on first use (configuration
/// validation only; never on the request path).
fn suffix_parents() -> &'static HashSet<String> {
    static PARENTS: std::sync::OnceLock<HashSet<String>> = std::sync::OnceLock::new();
    PARENTS.get_or_init(|| {
        let mut parents = HashSet::new();
        for line in PUBLIC_SUFFIX_RULES.lines() {
            let rule = line.trim();
            if rule.is_empty() || rule.starts_with("//") {
                continue;
            }
            let rule = rule.trim_start_matches('!').trim_start_matches("*.");
            let Ok(ascii) = idna::domain_to_ascii(rule) else {
                continue;
            };
            let mut rest = ascii.as_str();
            while let Some((_, parent)) = rest.split_once('.') {
                parents.insert(parent.to_string());
                rest = parent;
            }
        }
        parents
    })
}

/// A public suffix equal to `host` or lying beneath it, if any (the reason a wildcard over
/// `host` would span owners).
fn public_suffix_at_or_below(host: &str) -> Option<String> {
    if let Some(s) = psl::suffix(host.as_bytes()) {
        if s.is_known() && s.as_bytes() == host.as_bytes() {
            return Some(host.to_string());
        }
    }
    if suffix_parents().contains(host) {
        // Name one of them, for the message.
        let example = PUBLIC_SUFFIX_RULES
            .lines()
            .map(|l| l.trim().trim_start_matches('!').trim_start_matches("*."))
            .find(|r| idna::domain_to_ascii(r).is_ok_and(|a| a.ends_with(&format!(".{host}"))))
            .unwrap_or(host);
        return Some(example.to_string());
    }
    None
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
    fn wildcards_never_span_a_public_suffix() {
        for w in [
            "*.co.uk",
            "*.github.io",
            "*.githubusercontent.com",
            "*.amazonaws.com",
            "*.blogspot.com",
            "*.com.au",
        ] {
            assert!(
                matches!(
                    AllowlistEntry::parse(w),
                    Err(AllowlistError::WildcardAcrossPublicSuffix { .. })
                ),
                "{w}: {:?}",
                AllowlistEntry::parse(w)
            );
        }
        let e = AllowlistEntry::parse("*.amazonaws.com")
            .unwrap_err()
            .to_string();
        assert!(e.contains("amazonaws.com"), "{e}");
        // Ordinary wildcards, and exact names that are themselves suffixes, stay allowed.
        for ok in [
            "*.example.com",
            "*.wild.example.com",
            "*.example.co.uk",
            "*.example.test",
            "raw.githubusercontent.com",
            "s3.amazonaws.com",
        ] {
            assert!(AllowlistEntry::parse(ok).is_ok(), "{ok}");
        }
    }

    /// The embedded rules are the `psl` crate's: every plain rule is a suffix by its lookup.
    #[test]
    fn embedded_rules_agree_with_the_psl_crate() {
        let mut n = 0;
        for line in PUBLIC_SUFFIX_RULES.lines() {
            let r = line.trim();
            if r.is_empty() || r.starts_with("//") || r.contains('*') || r.starts_with('!') {
                continue;
            }
            let Ok(ascii) = idna::domain_to_ascii(r) else {
                continue;
            };
            let s = psl::suffix(ascii.as_bytes()).expect("a suffix");
            assert_eq!(
                s.as_bytes(),
                ascii.as_bytes(),
                "{r}: the psl crate disagrees"
            );
            n += 1;
        }
        assert!(n > 5000, "only {n} rules");
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
