//! Local CA management, per-host leaf minting with a bounded cache, and the
//! rustls configs for both legs of the proxy (agent-facing server side and
//! upstream client side).
//!
//! Invariant: a leaf is only ever minted for a name the caller passes (the
//! proxy only passes allowlisted canonical names); this crate never decides
//! on its own which names get certificates. The crate does no network I/O:
//! it reads and writes local files and builds in-memory configs only.
//!
//! All rustls configs are built with the ring provider from [`provider`]
//! because both ring and aws-lc-rs may be linked into the binary, in which case
//! rustls has no process-wide default provider and `builder()` would panic.

mod ca;
mod error;
mod leaf;
mod upstream;

#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock};

pub use ca::{init_ca, Ca, CaFiles};
pub use error::{BoxError, TlsError};
pub use leaf::{LeafCache, LeafCacheStats};
pub use upstream::{client_config_with_roots, upstream_client_config, upstream_root_store};

/// The ring crypto provider, built once and shared so every config in the
/// process uses the same provider instance.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// TLS versions offered on both legs: 1.3 preferred, 1.2 for older peers.
pub(crate) const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Fills `buf` from the provider's CSPRNG (no extra rand dependency needed).
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), TlsError> {
    provider()
        .secure_random
        .fill(buf)
        .map_err(|_| TlsError::Rustls {
            what: "reading the system random number generator",
            source: rustls::Error::FailedToGetRandomBytes,
        })
}

/// A positive, fixed-length random serial number (RFC 5280 allows up to 20
/// octets). Random serials matter because all leaves share one key: rcgen's
/// default serial is derived from the public key and would repeat.
pub(crate) fn random_serial() -> Result<rcgen::SerialNumber, TlsError> {
    let mut serial = [0u8; 16];
    random_bytes(&mut serial)?;
    // Clear the sign bit so the DER INTEGER stays positive, and set the next
    // one so the encoding never shrinks (some clients dislike leading zeros).
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(rcgen::SerialNumber::from_slice(&serial))
}
