//! The public suffix rule for allowlist wildcards (threat A12): a wildcard never spans a
//! public suffix. `*.co.uk` (the base is a public suffix), `*.github.io` and
//! `*.githubusercontent.com` (private-section suffixes whose subdomains belong to different
//! people) and `*.amazonaws.com` (public suffixes such as `s3.amazonaws.com` lie beneath it) are
//! all refused. Whether the base is a suffix is asked of the `psl` crate; whether a suffix lies
//! beneath it is read from the same list's rules (`public_suffix_rules.txt`, the `psl` crate's
//! `data/rules.txt`, checked against the crate by a test). Used at validation only.

use std::collections::HashSet;

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
pub(crate) fn public_suffix_at_or_below(host: &str) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use credproxy_core::AllowlistEntry;

    fn refused(w: &str) -> Option<String> {
        let e = AllowlistEntry::parse(w).unwrap();
        assert!(e.is_wildcard());
        public_suffix_at_or_below(e.host())
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
            assert!(refused(w).is_some(), "{w}");
        }
        let e = refused("*.amazonaws.com").unwrap();
        assert!(e.ends_with(".amazonaws.com"), "{e}");
        // Ordinary wildcards, and exact names that are themselves suffixes, stay allowed.
        for ok in [
            "*.example.com",
            "*.wild.example.com",
            "*.example.co.uk",
            "*.example.test",
            "raw.githubusercontent.com",
            "s3.amazonaws.com",
        ] {
            let e = AllowlistEntry::parse(ok).unwrap();
            assert!(
                !e.is_wildcard() || public_suffix_at_or_below(e.host()).is_none(),
                "{ok}"
            );
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
}
