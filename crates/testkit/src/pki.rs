//! An in-memory test CA (ECDSA P-256) that issues server certificates.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

/// Validity window of an issued leaf certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// `now - 1h .. now + 1d`
    Valid,
    /// `now - 2d .. now - 1d`
    Expired,
    /// `now + 1d .. now + 2d`
    NotYetValid,
}

/// A leaf certificate chain (leaf + CA) and its private key (PKCS#8).
#[derive(Debug)]
pub struct ServerCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for ServerCert {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl ServerCert {
    /// A ring-backed rustls `ServerConfig` presenting this chain, with the
    /// given ALPN protocols (e.g. `&["h2", "http/1.1"]`).
    pub fn server_config(&self, alpn: &[&str]) -> rustls::ServerConfig {
        let mut cfg = rustls::ServerConfig::builder_with_provider(crate::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .unwrap();
        cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        cfg
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }
}

/// An in-memory test CA. Its certificate (and key) are also written as PEM
/// files into a private tempdir that lives as long as the `TestPki`.
///
/// Every `TestPki` has its own fresh key: a certificate issued by one
/// `TestPki` is *untrusted* with respect to any other (see
/// [`TestPki::new_untrusted`]).
pub struct TestPki {
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
    ca_pem: String,
    ca_cert_path: PathBuf,
    ca_key_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("ca_cert_path", &self.ca_cert_path)
            .finish_non_exhaustive()
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

static SERIAL: AtomicU64 = AtomicU64::new(1);

fn unique_id() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        SERIAL.fetch_add(1, Ordering::Relaxed)
    )
}

impl TestPki {
    /// A fresh CA (valid `now - 1d .. now + 10y`).
    pub fn new() -> Self {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "credproxy-testkit");
        dn.push(
            DnType::CommonName,
            format!("credproxy-testkit CA {}", unique_id()),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(3650);
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let ca_pem = ca_cert.pem();

        let dir = tempfile::tempdir().unwrap();
        let ca_cert_path = dir.path().join("ca.pem");
        let ca_key_path = dir.path().join("ca-key.pem");
        std::fs::write(&ca_cert_path, &ca_pem).unwrap();
        std::fs::write(&ca_key_path, ca_key.serialize_pem()).unwrap();
        Self {
            ca_cert,
            ca_key,
            ca_pem,
            ca_cert_path,
            ca_key_path,
            _dir: dir,
        }
    }

    /// Just another [`TestPki::new`]. Named for readability: certificates it
    /// issues are not trusted by clients built from a different `TestPki`.
    pub fn new_untrusted() -> Self {
        Self::new()
    }

    /// Path of the CA certificate PEM file.
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_cert_path
    }

    /// Path of the CA private key PEM file (PKCS#8), for tests that need a
    /// CA the system under test can sign with.
    pub fn ca_key_path(&self) -> &Path {
        &self.ca_key_path
    }

    /// CA certificate as PEM.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_pem
    }

    /// CA private key as PEM (PKCS#8).
    pub fn ca_key_pem(&self) -> String {
        self.ca_key.serialize_pem()
    }

    /// CA certificate as DER.
    pub fn ca_cert_der(&self) -> CertificateDer<'static> {
        self.ca_cert.der().clone()
    }

    /// A root store containing only this CA.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_cert_der()).unwrap();
        roots
    }

    /// Issue a leaf certificate for `names` (DNS names or IP literals; the
    /// first one is also the CN) with key usage serverAuth.
    pub fn issue(&self, names: &[&str], validity: Validity) -> ServerCert {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("credproxy-testkit leaf"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        let (nb, na) = match validity {
            Validity::Valid => (now - Duration::hours(1), now + Duration::days(1)),
            Validity::Expired => (now - Duration::days(2), now - Duration::days(1)),
            Validity::NotYetValid => (now + Duration::days(1), now + Duration::days(2)),
        };
        params.not_before = nb;
        params.not_after = na;
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        ServerCert {
            chain: vec![cert.der().clone(), self.ca_cert_der()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// A ring-backed rustls `ClientConfig` trusting only this CA, offering
    /// the given ALPN protocols (e.g. `&["h2", "http/1.1"]`, or `&[]`).
    pub fn client_config(&self, alpn: &[&str]) -> rustls::ClientConfig {
        let mut cfg = rustls::ClientConfig::builder_with_provider(crate::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(Arc::new(self.root_store()))
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        cfg
    }
}
