use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use ::time::OffsetDateTime;
use rcgen::{CertificateParams, KeyPair};
use x509_parser::prelude::*;

use super::support::{client_trusting, handshake, new_ca, DAY};
use crate::{init_ca, Ca, LeafCache, TlsError};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A private key file as an operator must leave it: readable by its owner only.
fn write_key(path: &Path, pem: impl AsRef<[u8]>) {
    fs::write(path, pem).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn load_refuses_a_key_readable_by_group_or_other() {
    let (_dir, files, _) = new_ca();
    for bad in [0o640, 0o604, 0o644, 0o660] {
        fs::set_permissions(&files.key_file, fs::Permissions::from_mode(bad)).unwrap();
        let err = Ca::load(&files.cert_file, &files.key_file).unwrap_err();
        assert!(
            matches!(err, TlsError::KeyExposed { .. }),
            "{bad:o}: {err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("chmod 0400") && msg.contains(&format!("{bad:o}")),
            "{msg}"
        );
    }
    for ok in [0o400, 0o600] {
        fs::set_permissions(&files.key_file, fs::Permissions::from_mode(ok)).unwrap();
        Ca::load(&files.cert_file, &files.key_file).unwrap();
    }
}

#[test]
fn init_ca_writes_files_with_strict_modes() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("nested/ca");
    let files = init_ca(&ca_dir, false).unwrap();
    assert_eq!(files.cert_file, ca_dir.join("ca.crt"));
    assert_eq!(files.key_file, ca_dir.join("ca.key"));
    assert_eq!(mode(&ca_dir), 0o700);
    assert_eq!(mode(&files.key_file), 0o400);
    assert_eq!(mode(&files.cert_file), 0o444);
    let key = fs::read_to_string(&files.key_file).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    // Only the two CA files remain: no temp files left behind.
    let mut names: Vec<_> = fs::read_dir(&ca_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["ca.crt", "ca.key"]);
}

#[test]
fn init_ca_certificate_has_expected_fields() {
    let (_dir, files, ca) = new_ca();
    assert_eq!(ca.cert_pem(), fs::read_to_string(&files.cert_file).unwrap());
    let (_, cert) = parse_x509_certificate(ca.cert_der()).unwrap();
    let subject = cert.subject();
    let first = |it: &mut dyn Iterator<Item = &AttributeTypeAndValue>| {
        it.next().unwrap().as_str().unwrap().to_owned()
    };
    assert_eq!(first(&mut subject.iter_common_name()), "credproxy MITM CA");
    assert_eq!(first(&mut subject.iter_organization()), "nix-openclaw-vm");
    assert_eq!(first(&mut subject.iter_organizational_unit()), "credproxy");
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert!(!ku.digital_signature());
    let now = OffsetDateTime::now_utc();
    let nb = cert.validity().not_before.to_datetime();
    let na = cert.validity().not_after.to_datetime();
    assert!((now - nb - ::time::Duration::hours(1)).abs() < ::time::Duration::minutes(1));
    assert!((na - now - ::time::Duration::days(3653)).abs() < ::time::Duration::minutes(1));
    assert_eq!(
        cert.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );
}

#[test]
fn init_ca_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let files = init_ca(dir.path(), false).unwrap();
    let cert_before = fs::read(&files.cert_file).unwrap();
    let key_before = fs::read(&files.key_file).unwrap();

    let err = init_ca(dir.path(), false).unwrap_err();
    assert!(matches!(err, TlsError::CaExists { .. }), "{err:?}");
    assert!(err.to_string().contains("ca.crt"), "{err}");
    assert_eq!(fs::read(&files.cert_file).unwrap(), cert_before);
    assert_eq!(fs::read(&files.key_file).unwrap(), key_before);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn init_ca_refuses_when_only_the_key_exists() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("ca.key"), "old").unwrap();
    let err = init_ca(dir.path(), false).unwrap_err();
    assert!(err.to_string().contains("ca.key"), "{err}");
    assert!(!dir.path().join("ca.crt").exists());
    assert_eq!(
        fs::read_to_string(dir.path().join("ca.key")).unwrap(),
        "old"
    );
}

#[test]
fn init_ca_with_force_replaces_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let files = init_ca(dir.path(), false).unwrap();
    let cert_before = fs::read(&files.cert_file).unwrap();
    let key_before = fs::read(&files.key_file).unwrap();

    let again = init_ca(dir.path(), true).unwrap();
    assert_eq!(again, files);
    assert_ne!(fs::read(&files.cert_file).unwrap(), cert_before);
    assert_ne!(fs::read(&files.key_file).unwrap(), key_before);
    assert_eq!(mode(&files.key_file), 0o400);
    assert_eq!(mode(&files.cert_file), 0o444);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    Ca::load(&files.cert_file, &files.key_file).unwrap();
}

#[test]
fn load_errors_for_missing_files() {
    let (dir, files, _) = new_ca();
    let missing = dir.path().join("nope.crt");
    let err = Ca::load(&missing, &files.key_file).unwrap_err();
    assert!(matches!(err, TlsError::Missing { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.crt"), "{err}");

    let missing = dir.path().join("nope.key");
    let err = Ca::load(&files.cert_file, &missing).unwrap_err();
    assert!(matches!(err, TlsError::Missing { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.key"), "{err}");
}

#[test]
fn load_errors_for_garbage_pem() {
    let (dir, files, _) = new_ca();
    let garbage = dir.path().join("garbage.crt");
    fs::write(&garbage, "this is not a certificate\n").unwrap();
    let err = Ca::load(&garbage, &files.key_file).unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    assert!(err.to_string().contains("garbage.crt"), "{err}");

    let broken = dir.path().join("broken.crt");
    fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\n!!!notbase64!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = Ca::load(&broken, &files.key_file).unwrap_err();
    assert!(matches!(err, TlsError::Pem { .. }), "{err:?}");
    assert!(err.to_string().contains("broken.crt"), "{err}");

    let not_der = dir.path().join("notder.crt");
    fs::write(
        &not_der,
        "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = Ca::load(&not_der, &files.key_file).unwrap_err();
    assert!(
        matches!(err, TlsError::InvalidCertificate { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("notder.crt"), "{err}");

    let garbage_key = dir.path().join("garbage.key");
    write_key(&garbage_key, "nothing here");
    let err = Ca::load(&files.cert_file, &garbage_key).unwrap_err();
    assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");
    assert!(err.to_string().contains("garbage.key"), "{err}");
}

#[test]
fn load_rejects_a_non_ca_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["leaf.example.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_file = dir.path().join("leaf.crt");
    let key_file = dir.path().join("leaf.key");
    fs::write(&cert_file, leaf.pem()).unwrap();
    write_key(&key_file, key.serialize_pem());
    let err = Ca::load(&cert_file, &key_file).unwrap_err();
    assert!(matches!(err, TlsError::NotCa { .. }), "{err:?}");
    assert!(err.to_string().contains("leaf.crt"), "{err}");
}

#[test]
fn load_rejects_a_key_that_does_not_match() {
    let (_d1, a, _) = new_ca();
    let (_d2, b, _) = new_ca();
    let err = Ca::load(&a.cert_file, &b.key_file).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&*b.key_file.to_string_lossy()), "{msg}");
    assert!(msg.contains(&*a.cert_file.to_string_lossy()), "{msg}");
}

#[test]
fn load_rejects_a_sec1_key_with_a_hint() {
    let (dir, files, _) = new_ca();
    let sec1 = dir.path().join("sec1.key");
    write_key(
        &sec1,
        "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
    );
    let err = Ca::load(&files.cert_file, &sec1).unwrap_err();
    assert!(matches!(err, TlsError::UnsupportedKey { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("sec1.key") && msg.contains("pkcs#8"), "{msg}");
}

/// Writes a CA made by rcgen with `alg` (not via `init_ca`) and returns paths.
fn write_ca_with(dir: &Path, alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "other ca");
    let cert = params.self_signed(&key).unwrap();
    let cert_file = dir.join("other.crt");
    let key_file = dir.join("other.key");
    fs::write(&cert_file, cert.pem()).unwrap();
    write_key(&key_file, key.serialize_pem());
    (
        cert_file.to_string_lossy().into_owned(),
        key_file.to_string_lossy().into_owned(),
    )
}

async fn assert_issues_verifiable_leaves(cert_file: &Path, key_file: &Path) {
    let ca = Arc::new(Ca::load(cert_file, key_file).unwrap());
    let cache = LeafCache::new(ca, 4, DAY, vec![]).unwrap();
    let server = cache.server_config("api.example.test").unwrap();
    let client = client_trusting(cert_file, &[]);
    handshake(server, client, "api.example.test").await.unwrap();
}

#[tokio::test]
async fn ed25519_and_p384_cas_issue_verifiable_leaves() {
    for alg in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P384_SHA384] {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_ca_with(dir.path(), alg);
        assert_issues_verifiable_leaves(Path::new(&cert), Path::new(&key)).await;
    }
}

/// Interop with a CA made by another tool (RSA key, OpenSSL's DN encoding).
/// Skipped when no `openssl` binary is available.
#[tokio::test]
async fn openssl_rsa_ca_issues_verifiable_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("rsa.crt");
    let key = dir.path().join("rsa.key");
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        ])
        .args(["-subj", "/C=US/O=Example Org/CN=Example RSA Root"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    match status {
        Ok(out) if out.status.success() => {}
        _ => {
            eprintln!("skipping: openssl unavailable");
            return;
        }
    }
    assert_issues_verifiable_leaves(&cert, &key).await;
}
