//! A secret value that cannot be printed and is wiped from memory when dropped.

use std::fmt;

use zeroize::Zeroizing;

/// Bytes of a credential. `Debug` and `Display` print a fixed marker, never the value;
/// the only way to read it is [`Secret::expose`], which makes every use greppable.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(Zeroizing::new(bytes.into()))
    }

    /// The secret's bytes. Call only where the value must leave the proxy (injection) or be
    /// matched (scrubbing).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let s = Secret::new(b"sk-canary-123".to_vec());
        assert!(!format!("{s:?} {s} {:?}", Some(&s)).contains("canary"));
        assert_eq!(s.expose(), b"sk-canary-123");
    }
}
