//! rustls client configs for the upstream leg.
//!
//! Verification is always the normal webpki verification against the system
//! roots plus operator-supplied CAs; this crate deliberately has no insecure
//! mode, so a config mistake can never silently disable verification.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};

use crate::ca::read_pem_certs;
use crate::{provider, TlsError, PROTOCOL_VERSIONS};

/// Client config for the upstream leg: system roots plus every certificate in
/// each of `extra_ca_files`, advertising `alpn` (the proxy passes
/// `[h2, http/1.1]` for pooled connections and `[http/1.1]` for websockets).
pub fn upstream_client_config(
    extra_ca_files: &[PathBuf],
    alpn: Vec<Vec<u8>>,
) -> Result<ClientConfig, TlsError> {
    Ok(client_config_with_roots(
        upstream_root_store(extra_ca_files)?,
        alpn,
    ))
}

/// The upstream root store: system roots (from rustls-native-certs) plus every
/// PEM certificate in each of `extra_ca_files`.
///
/// System certificates that fail to load or parse are skipped with a warning,
/// since one odd file in /etc/ssl should not take the proxy down; extra CA
/// files were configured explicitly, so any problem with them is an error
/// naming the file. Fails with [`TlsError::NoRoots`] if nothing is trusted.
pub fn upstream_root_store(extra_ca_files: &[PathBuf]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();

    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "error loading system root certificates");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    if ignored > 0 {
        tracing::warn!(
            added,
            ignored,
            "skipped system root certificates that failed to parse"
        );
    }
    tracing::debug!(added, "loaded system root certificates");

    for path in extra_ca_files {
        for cert in read_pem_certs(path)? {
            roots.add(cert).map_err(|source| TlsError::BadRoot {
                path: path.clone(),
                source,
            })?;
        }
    }

    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    Ok(Arc::new(roots))
}

/// Client config with a pre-built root store, so the proxy can load roots once
/// and derive several ALPN variants from them.
pub fn client_config_with_roots(roots: Arc<RootCertStore>, alpn: Vec<Vec<u8>>) -> ClientConfig {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        // Cannot fail: the ring provider has cipher suites and kx groups for
        // both TLS 1.2 and 1.3 (rustls is built with the tls12 feature).
        .expect("ring provider supports tls 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    config
}
