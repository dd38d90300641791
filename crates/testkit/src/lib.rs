//! Test support for credproxy: an in-memory test PKI, an instrumented
//! HTTP/1.1 + HTTP/2 upstream server with gated streaming endpoints, and small
//! client helpers (HTTP `CONNECT` tunnels, TLS over an arbitrary stream,
//! hyper client handshakes).
//!
//! Everything binds `127.0.0.1:0`; nothing uses sleeps for synchronization
//! (use [`Upstream::release`] gates and [`Upstream::wait_for_requests`]).
#![allow(clippy::unwrap_used)]

pub mod client;
pub mod connect;
pub mod events;
pub mod guest;
pub mod oidc;
pub mod openbao;
pub mod pattern;
pub mod pki;
pub mod render;
pub mod temporal;
pub mod upstream;

pub use client::{collect_body, http1_handshake, http2_handshake};
pub use connect::{connect_tunnel, tls_over, try_tls_over};
pub use oidc::{KeyKind, OidcProvider, OidcProviderOptions, TestClient, TestKey};
pub use openbao::{bao_binary, OpenBao, OpenBaoOptions};
pub use pattern::{fixed_body, fixed_bytes, fixed_sha256, pattern_byte, sha256_hex};
pub use pki::{ServerCert, TestPki, Validity};
pub use render::{contains_any_rendering, credential_values, detection_patterns, renderings};
pub use temporal::{temporal_binary, TemporalDevServer};
pub use upstream::{Gates, RecordedRequest, Upstream, UpstreamOptions};

/// The rustls crypto provider used everywhere in this crate (ring).
///
/// Both ring and aws-lc-rs may be linked into the same test binary, so the
/// process-default provider is ambiguous; always build configs with this.
pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
