//! The agent's own token as the request path holds it: verified again when the issuer
//! withdraws a signing key, and never forwarded (A21), so looked for in every request the
//! agent asks to forward.

use credproxy_core::Secret;
use memchr::memmem::Finder;

/// How many leading bytes of the token the search is built from.
const PROBE: usize = 16;

pub(crate) struct AgentToken {
    secret: Secret,
    /// Finds the token's first [`PROBE`] bytes. For a JWT these are its header (algorithm and
    /// key id), which is not secret; each place they occur is then compared with the whole
    /// token. A finder built for the whole token (hundreds of bytes) cost ~22k instructions,
    /// twice per request; this one is built once per tunnel.
    probe: Finder<'static>,
}

impl AgentToken {
    pub(crate) fn new(token: &str) -> AgentToken {
        let bytes = token.as_bytes();
        let probe = Finder::new(&bytes[..bytes.len().min(PROBE)]).into_owned();
        AgentToken {
            secret: Secret::new(bytes.to_vec()),
            probe,
        }
    }

    pub(crate) fn expose(&self) -> &[u8] {
        self.secret.expose()
    }

    /// Whether `hay` contains the whole token.
    pub(crate) fn found_in(&self, hay: &[u8]) -> bool {
        let token = self.secret.expose();
        !token.is_empty()
            && self
                .probe
                .find_iter(hay)
                .any(|at| hay[at..].starts_with(token))
    }
}

impl std::fmt::Debug for AgentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentToken(redacted)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_whole_token_only() {
        let t = AgentToken::new("eyJhbGciOiJFUzI1NiJ9.payload-of-the-agent.signature");
        assert!(t.found_in(b"x-a: eyJhbGciOiJFUzI1NiJ9.payload-of-the-agent.signature;"));
        assert!(t.found_in(b"eyJhbGciOiJFUzI1NiJ9.payload-of-the-agent.signature"));
        // Another token with the same header (the probe matches), then the real one.
        assert!(t.found_in(
            b"eyJhbGciOiJFUzI1NiJ9.other.sig eyJhbGciOiJFUzI1NiJ9.payload-of-the-agent.signature"
        ));
        assert!(!t.found_in(b"eyJhbGciOiJFUzI1NiJ9.other.sig"));
        assert!(!t.found_in(b"eyJhbGciOiJFUzI1NiJ9.payload-of-the-agent.signatur"));
        assert!(!t.found_in(b""));
        let short = AgentToken::new("abc");
        assert!(short.found_in(b"xxabcxx") && !short.found_in(b"xxabxx"));
        assert!(!AgentToken::new("").found_in(b"anything"));
        assert_eq!(format!("{t:?}"), "AgentToken(redacted)");
    }
}
