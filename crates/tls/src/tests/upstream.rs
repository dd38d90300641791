use std::fs;
use std::sync::Arc;

use super::support::{alpn, handshake, new_ca, DAY};
use crate::{upstream_client_config, upstream_root_store, LeafCache, TlsError};

#[tokio::test]
async fn extra_ca_file_is_trusted() {
    // The "upstream" server presents a leaf from a private CA that only the
    // extra CA file vouches for.
    let (_dir, files, ca) = new_ca();
    let cache = LeafCache::new(ca, 4, DAY, alpn(&["h2", "http/1.1"])).unwrap();
    let server = cache.server_config("upstream.example.test").unwrap();

    let client =
        upstream_client_config(std::slice::from_ref(&files.cert_file), alpn(&["http/1.1"]))
            .unwrap();
    let ok = handshake(server.clone(), Arc::new(client), "upstream.example.test")
        .await
        .unwrap();
    assert_eq!(ok.alpn.as_deref(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn untrusted_server_is_rejected() {
    let (_dir, _files, ca) = new_ca();
    let (_dir2, other_files, _) = new_ca();
    let cache = LeafCache::new(ca, 4, DAY, vec![]).unwrap();
    let server = cache.server_config("upstream.example.test").unwrap();
    // Trusts a different private CA (plus system roots): must not verify. The
    // other CA has the same subject, so webpki reports a bad signature.
    let client = upstream_client_config(&[other_files.cert_file], vec![]).unwrap();
    let err = handshake(server, Arc::new(client), "upstream.example.test")
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("InvalidCertificate"), "{err:?}");
}

#[test]
fn missing_extra_ca_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-ca.pem");
    let err = upstream_root_store(std::slice::from_ref(&path)).unwrap_err();
    assert!(matches!(err, TlsError::Missing { .. }), "{err:?}");
    assert!(err.to_string().contains("missing-ca.pem"), "{err}");
    let err = upstream_client_config(&[path], vec![]).unwrap_err();
    assert!(err.to_string().contains("missing-ca.pem"), "{err}");
}

#[test]
fn extra_file_without_certificates_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty-ca.pem");
    fs::write(&path, "# no certs here\n").unwrap();
    let err = upstream_root_store(&[path]).unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    assert!(err.to_string().contains("empty-ca.pem"), "{err}");
}

#[test]
fn extra_file_certificates_are_all_added() {
    let (_d1, a, _) = new_ca();
    let (_d2, b, _) = new_ca();
    let base = upstream_root_store(&[]);
    let bundle = a.cert_file.with_file_name("bundle.pem");
    let pem =
        fs::read_to_string(&a.cert_file).unwrap() + &fs::read_to_string(&b.cert_file).unwrap();
    fs::write(&bundle, pem).unwrap();
    let store = upstream_root_store(&[bundle]).unwrap();
    // The system store may be empty in a sandbox (then `base` is NoRoots).
    let base_len = base.map(|s| s.len()).unwrap_or(0);
    assert_eq!(store.len(), base_len + 2);
}
