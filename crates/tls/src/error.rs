//! The crate's single error type.
//!
//! Every variant carries the context an operator needs to fix the problem
//! without reading code: which file, which host, what was wrong. Underlying
//! errors are kept as `#[source]` so reporters can print the whole chain.

use std::path::PathBuf;

/// Boxed error used where the underlying type belongs to a dependency we do
/// not want to expose in the public API (x509-parser's nom errors).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors from CA management, leaf minting and TLS config construction.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// `init_ca` without `force` found an existing CA file; nothing was written.
    #[error("ca file {path} already exists (use force to replace the ca)")]
    CaExists { path: PathBuf },

    #[error("cannot create ca directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} does not exist")]
    Missing { path: PathBuf },

    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is not valid pem")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },

    #[error("{path} contains no pem certificate")]
    NoCertificate { path: PathBuf },

    /// The CA key file's mode lets group or other read or write it.
    #[error("ca private key {path} has mode {mode:o}: it must not be accessible to group or other; chmod 0400 it (owned by the service user)")]
    KeyExposed { path: PathBuf, mode: u32 },

    #[error("{path} contains no pem private key (encrypted keys are not supported)")]
    NoPrivateKey { path: PathBuf },

    #[error("{path} does not contain a valid x509 certificate")]
    InvalidCertificate {
        path: PathBuf,
        #[source]
        source: BoxError,
    },

    /// The certificate parses but cannot be used to issue leaves.
    #[error("{path} is not a usable ca certificate: {reason}")]
    NotCa { path: PathBuf, reason: &'static str },

    #[error("unsupported private key in {path}: {reason}")]
    UnsupportedKey {
        path: PathBuf,
        reason: &'static str,
        #[source]
        source: Option<rcgen::Error>,
    },

    #[error("private key {key_path} does not match certificate {cert_path}")]
    KeyMismatch {
        cert_path: PathBuf,
        key_path: PathBuf,
    },

    /// Key generation or certificate signing failed; `what` names the operation.
    #[error("{what} failed")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },

    /// A rustls config or key could not be built; `what` names the operation.
    #[error("{what} failed")]
    Rustls {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },

    #[error("invalid leaf cache settings: {reason}")]
    InvalidSettings { reason: &'static str },

    /// The caller asked for a leaf for something that is not a canonical DNS
    /// name; refusing is safer than minting a certificate for it.
    #[error("refusing to mint a leaf for host {host:?}: {reason}")]
    InvalidHost { host: String, reason: &'static str },

    #[error("minting leaf certificate for {host} failed")]
    Mint {
        host: String,
        #[source]
        source: rcgen::Error,
    },

    #[error("building tls server config for {host} failed")]
    ServerConfig {
        host: String,
        #[source]
        source: rustls::Error,
    },

    #[error("certificate in {path} rejected by the root store")]
    BadRoot {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },

    #[error("no trusted root certificates: the system store is empty or unreadable and no extra ca files were given")]
    NoRoots,
}
