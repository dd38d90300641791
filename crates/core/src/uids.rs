//! Sets of user ids: who may connect to a Unix-socket listener (`peer_uids`), checked
//! against the peer's `SO_PEERCRED` uid at accept.

use std::fmt;
use std::ops::RangeInclusive;

/// A set of uids, written as single uids and inclusive ranges (`1001`, `"300000-365535"`).
/// Empty means nobody.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UidSet {
    ranges: Vec<RangeInclusive<u32>>,
}

/// Why a uid or range was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UidSetError {
    #[error("expected a uid (0-4294967294) or an inclusive range \"FIRST-LAST\", got {0:?}")]
    Syntax(String),
    #[error("range {0:?} is empty: its first uid is greater than its last")]
    Empty(String),
    #[error("uid 4294967295 is (uid_t)-1, which no process has")]
    Invalid,
}

impl UidSet {
    pub fn new() -> UidSet {
        UidSet::default()
    }

    /// Add one uid.
    pub fn push_uid(&mut self, uid: u32) -> Result<(), UidSetError> {
        if uid == u32::MAX {
            return Err(UidSetError::Invalid);
        }
        self.ranges.push(uid..=uid);
        Ok(())
    }

    /// Add `"N"` or `"FIRST-LAST"` (inclusive).
    pub fn push_str(&mut self, s: &str) -> Result<(), UidSetError> {
        let t = s.trim();
        let num = |x: &str| -> Result<u32, UidSetError> {
            let x = x.trim();
            if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) {
                return Err(UidSetError::Syntax(s.to_string()));
            }
            let v: u32 = x.parse().map_err(|_| UidSetError::Syntax(s.to_string()))?;
            if v == u32::MAX {
                return Err(UidSetError::Invalid);
            }
            Ok(v)
        };
        match t.split_once('-') {
            None => self.push_uid(num(t)?),
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(UidSetError::Empty(s.to_string()));
                }
                self.ranges.push(a..=b);
                Ok(())
            }
        }
    }

    pub fn contains(&self, uid: u32) -> bool {
        self.ranges.iter().any(|r| r.contains(&uid))
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn ranges(&self) -> &[RangeInclusive<u32>] {
        &self.ranges
    }
}

impl fmt::Display for UidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if r.start() == r.end() {
                write!(f, "{}", r.start())?;
            } else {
                write!(f, "{}-{}", r.start(), r.end())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_and_inclusive_ranges() {
        let mut s = UidSet::new();
        s.push_uid(1001).unwrap();
        s.push_str("300000-365535").unwrap();
        s.push_str(" 7 ").unwrap();
        for uid in [1001, 300000, 300001, 365535, 7] {
            assert!(s.contains(uid), "{uid}");
        }
        for uid in [0, 1000, 1002, 299999, 365536, 6, 8] {
            assert!(!s.contains(uid), "{uid}");
        }
        assert_eq!(s.to_string(), "1001,300000-365535,7");
        assert!(!UidSet::new().contains(0), "empty means nobody");
    }

    #[test]
    fn bad_entries_are_refused() {
        let mut s = UidSet::new();
        for bad in [
            "",
            "-",
            "1-",
            "-5",
            "a",
            "1.5",
            "+3",
            "1-2-3",
            "99999999999",
        ] {
            assert!(
                matches!(s.push_str(bad), Err(UidSetError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            s.push_str("10-9"),
            Err(UidSetError::Empty("10-9".to_string()))
        );
        assert_eq!(s.push_uid(u32::MAX), Err(UidSetError::Invalid));
        assert_eq!(s.push_str("1-4294967295"), Err(UidSetError::Invalid));
        assert!(s.is_empty());
    }
}
