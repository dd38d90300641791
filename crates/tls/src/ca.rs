//! Creating and loading the local MITM CA.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use crate::{random_bytes, random_serial, TlsError};

const CA_CERT_NAME: &str = "ca.crt";
const CA_KEY_NAME: &str = "ca.key";
const CA_COMMON_NAME: &str = "credproxy MITM CA";
const CA_ORGANIZATION: &str = "nix-openclaw-vm";
const CA_ORG_UNIT: &str = "credproxy";
/// Ten years, counting leap days.
const CA_VALIDITY: time::Duration = time::Duration::days(3653);
/// Backdating tolerates clients whose clocks run slightly behind ours.
const CA_BACKDATE: time::Duration = time::Duration::hours(1);

/// Files written by [`init_ca`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Create an ECDSA P-256 CA in `dir`: `ca.key` (PKCS#8 PEM, mode 0400) and
/// `ca.crt` (PEM, mode 0444).
///
/// `dir` is created with mode 0700 if missing. If either file exists and
/// `force` is false this returns [`TlsError::CaExists`] and writes nothing, so
/// an accidental re-run can never invalidate the CA agents already trust.
/// Both files are written to temporary files in `dir` and renamed into place,
/// so a crash never leaves a truncated file. (A crash between the two renames
/// of a forced re-init can leave a new key next to the old certificate;
/// [`Ca::load`] reports that as a key mismatch.) The key file is created with
/// mode 0400, so it is never readable by group or other, not even briefly.
pub fn init_ca(dir: &Path, force: bool) -> Result<CaFiles, TlsError> {
    let files = CaFiles {
        cert_file: dir.join(CA_CERT_NAME),
        key_file: dir.join(CA_KEY_NAME),
    };
    // The existence check and the final renames are not one atomic step; a
    // concurrent `init_ca` on the same directory is not a supported use.
    if !force {
        for path in [&files.cert_file, &files.key_file] {
            // symlink_metadata so a dangling symlink also counts as "exists".
            match fs::symlink_metadata(path) {
                Ok(_) => return Err(TlsError::CaExists { path: path.clone() }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(TlsError::Read {
                        path: path.clone(),
                        source,
                    })
                }
            }
        }
    }

    let (cert_pem, key_pem) = generate_ca()?;

    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| TlsError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
    }

    let key_tmp = write_temp(dir, CA_KEY_NAME, key_pem.as_bytes(), 0o400)?;
    let cert_tmp = write_temp(dir, CA_CERT_NAME, cert_pem.as_bytes(), 0o444)?;
    // Key first: if we crash in between, the old cert no longer matches and
    // loading fails loudly instead of silently serving a stale pair.
    key_tmp.persist(&files.key_file)?;
    cert_tmp.persist(&files.cert_file)?;
    sync_dir(dir);
    Ok(files)
}

/// Builds the CA certificate and key, returning `(cert_pem, pkcs8_key_pem)`.
fn generate_ca() -> Result<(String, String), TlsError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
        TlsError::Generate {
            what: "generating the ca key pair",
            source,
        }
    })?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, CA_ORGANIZATION);
    dn.push(DnType::OrganizationalUnitName, CA_ORG_UNIT);

    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    // Path length 0: this CA signs leaves only, never intermediates.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - CA_BACKDATE;
    params.not_after = now + CA_VALIDITY;
    params.serial_number = Some(random_serial()?);
    let cert = params
        .self_signed(&key)
        .map_err(|source| TlsError::Generate {
            what: "self-signing the ca certificate",
            source,
        })?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A temporary file that is removed on drop unless persisted.
struct TempFile {
    path: Option<PathBuf>,
}

impl TempFile {
    /// Atomically renames the temp file to `dest`.
    fn persist(mut self, dest: &Path) -> Result<(), TlsError> {
        let Some(path) = self.path.take() else {
            return Ok(());
        };
        fs::rename(&path, dest).map_err(|source| {
            let _ = fs::remove_file(&path);
            TlsError::Write {
                path: dest.to_path_buf(),
                source,
            }
        })
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Writes `data` to a fresh temp file next to the final `name`, created with
/// `mode` from the start (umask can only narrow it) and then set to exactly
/// `mode`, synced to disk.
fn write_temp(dir: &Path, name: &str, data: &[u8], mode: u32) -> Result<TempFile, TlsError> {
    let mut suffix = [0u8; 8];
    random_bytes(&mut suffix)?;
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join(format!(".{name}.tmp-{suffix}"));
    let write_err = |source| TlsError::Write {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .map_err(write_err)?;
    let temp = TempFile {
        path: Some(path.clone()),
    };
    file.write_all(data).map_err(write_err)?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    Ok(temp)
}

/// Makes the renames durable. Best effort: some filesystems cannot fsync a
/// directory, and the files themselves are already synced.
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A loaded CA able to sign leaves.
pub struct Ca {
    cert_file: PathBuf,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    /// The CA re-created as an rcgen certificate so rcgen can use it as the
    /// issuer; its subject encoding is checked byte-for-byte against the file.
    issuer: rcgen::Certificate,
    key: KeyPair,
}

impl fmt::Debug for Ca {
    // Hand-written so the private key can never end up in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cert_file", &self.cert_file)
            .field("key_algorithm", self.key.algorithm())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads and validates the CA certificate and its PKCS#8 private key.
    ///
    /// The key may be ECDSA P-256/P-384, Ed25519 or RSA (leaves are always
    /// P-256). Every error names the offending file. Refuses a key file that is
    /// readable (or writable) by group or other (A31): anyone who can read it can
    /// impersonate every allowlisted host to the agents.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Ca, TlsError> {
        let cert_bytes = read_file(cert_file)?;
        let cert_der = first_pem_cert(cert_file, &cert_bytes)?;
        let cert_pem = String::from_utf8(cert_bytes).map_err(|_| TlsError::NoCertificate {
            path: cert_file.to_path_buf(),
        })?;
        let ca_public_key = check_ca_cert(cert_file, &cert_der)?;

        refuse_if_key_exposed(key_file)?;
        let key_bytes = read_file(key_file)?;
        let key = load_key(key_file, &key_bytes)?;
        if key.public_key_raw() != ca_public_key.as_slice() {
            return Err(TlsError::KeyMismatch {
                cert_path: cert_file.to_path_buf(),
                key_path: key_file.to_path_buf(),
            });
        }

        let issuer = rebuild_issuer(cert_file, &cert_der, &key)?;
        Ok(Ca {
            cert_file: cert_file.to_path_buf(),
            cert_pem,
            cert_der,
            issuer,
            key,
        })
    }

    /// The CA certificate exactly as loaded from disk (what agents should trust).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER, as served after each leaf.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Issuer certificate and key for rcgen's `signed_by`.
    pub(crate) fn issuer(&self) -> (&rcgen::Certificate, &KeyPair) {
        (&self.issuer, &self.key)
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => TlsError::Missing {
            path: path.to_path_buf(),
        },
        _ => TlsError::Read {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// All PEM certificates in `bytes`; errors name `path`.
pub(crate) fn pem_certs(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

pub(crate) fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    pem_certs(path, &read_file(path)?)
}

fn first_pem_cert(path: &Path, bytes: &[u8]) -> Result<CertificateDer<'static>, TlsError> {
    let mut certs = pem_certs(path, bytes)?;
    if certs.len() > 1 {
        tracing::warn!(
            path = %path.display(),
            count = certs.len(),
            "ca certificate file holds several certificates; using the first"
        );
    }
    // pem_certs never returns an empty vector.
    Ok(certs.swap_remove(0))
}

/// Checks that `der` is a CA certificate rcgen can issue from, returning its
/// raw public key bits for the key-match check.
fn check_ca_cert(path: &Path, der: &CertificateDer<'_>) -> Result<Vec<u8>, TlsError> {
    let not_ca = |reason| TlsError::NotCa {
        path: path.to_path_buf(),
        reason,
    };
    let (_, x509) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::InvalidCertificate {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
    let bc = x509
        .basic_constraints()
        .map_err(|_| not_ca("duplicate basic constraints extension"))?;
    if !bc.is_some_and(|bc| bc.value.ca) {
        return Err(not_ca("basic constraints do not mark it as a ca"));
    }
    let ku = x509
        .key_usage()
        .map_err(|_| not_ca("duplicate key usage extension"))?;
    if ku.is_some_and(|ku| !ku.value.key_cert_sign()) {
        return Err(not_ca("key usage does not allow certificate signing"));
    }
    // rcgen can only reproduce single-attribute RDNs (and panics on an empty
    // one), so reject anything else here with a clear message.
    let subject = x509.subject();
    if subject.iter().next().is_none() || subject.iter().any(|rdn| rdn.iter().count() != 1) {
        return Err(not_ca(
            "subject must be non-empty with one attribute per relative distinguished name",
        ));
    }
    let now = OffsetDateTime::now_utc();
    let validity = x509.validity();
    if now > validity.not_after.to_datetime() || now < validity.not_before.to_datetime() {
        // Warn rather than fail: a VM may boot with a wrong clock and fix it
        // via NTP shortly after; clients will reject leaves meanwhile.
        tracing::warn!(
            path = %path.display(),
            not_before = %validity.not_before,
            not_after = %validity.not_after,
            "ca certificate is not valid at the current time"
        );
    }
    Ok(x509.public_key().subject_public_key.data.to_vec())
}

fn refuse_if_key_exposed(key_file: &Path) -> Result<(), TlsError> {
    if let Ok(meta) = fs::metadata(key_file) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(TlsError::KeyExposed {
                path: key_file.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
    }
    Ok(())
}

fn load_key(path: &Path, bytes: &[u8]) -> Result<KeyPair, TlsError> {
    let der = PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        },
        source => TlsError::Pem {
            path: path.to_path_buf(),
            source,
        },
    })?;
    if !matches!(der, PrivateKeyDer::Pkcs8(_)) {
        return Err(TlsError::UnsupportedKey {
            path: path.to_path_buf(),
            reason: "key must be pkcs#8 (\"BEGIN PRIVATE KEY\"); convert with `openssl pkcs8 -topk8 -nocrypt`",
            source: None,
        });
    }
    KeyPair::try_from(&der).map_err(|source| TlsError::UnsupportedKey {
        path: path.to_path_buf(),
        reason: "expected an ecdsa p-256/p-384, ed25519 or rsa key",
        source: Some(source),
    })
}

/// Re-creates the CA as an rcgen `Certificate` (rcgen 0.13 needs one as the
/// issuer) and proves its subject encodes to exactly the bytes in the file:
/// clients chain a leaf to the CA by comparing issuer and subject bytes, so any
/// re-encoding difference would make every leaf unverifiable.
fn rebuild_issuer(
    path: &Path,
    der: &CertificateDer<'_>,
    key: &KeyPair,
) -> Result<rcgen::Certificate, TlsError> {
    let params =
        CertificateParams::from_ca_cert_der(der).map_err(|e| TlsError::InvalidCertificate {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
    let issuer = params
        .self_signed(key)
        .map_err(|source| TlsError::Generate {
            what: "re-encoding the ca certificate for issuing",
            source,
        })?;
    let subject_of = |der: &[u8]| {
        x509_parser::parse_x509_certificate(der)
            .ok()
            .map(|(_, c)| c.subject().as_raw().to_vec())
    };
    match (subject_of(der), subject_of(issuer.der())) {
        (Some(a), Some(b)) if a == b => Ok(issuer),
        _ => Err(TlsError::NotCa {
            path: path.to_path_buf(),
            reason: "subject name uses an encoding that cannot be reproduced when issuing",
        }),
    }
}
