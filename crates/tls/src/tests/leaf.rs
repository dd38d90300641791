use std::sync::Arc;
use std::time::Duration;

use ::time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::*;

use super::support::{alpn, client_trusting, handshake, new_ca, DAY};
use crate::{LeafCache, LeafCacheStats, TlsError};

fn cache(capacity: usize) -> (tempfile::TempDir, crate::CaFiles, LeafCache) {
    let (dir, files, ca) = new_ca();
    let cache = LeafCache::new(ca, capacity, DAY, alpn(&["h2", "http/1.1"])).unwrap();
    (dir, files, cache)
}

#[tokio::test]
async fn leaf_verifies_against_ca_file_for_its_name_only() {
    let (_dir, files, cache) = cache(8);
    let server = cache.server_config("api.example.test").unwrap();
    let client = client_trusting(&files.cert_file, &["h2", "http/1.1"]);

    let ok = handshake(server.clone(), client.clone(), "api.example.test")
        .await
        .unwrap();
    assert_eq!(ok.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(ok.server_sni.as_deref(), Some("api.example.test"));
    // Served chain is [leaf, ca].
    assert_eq!(ok.peer_certs.len(), 2);
    assert_eq!(&ok.peer_certs[1], cache.ca().cert_der());

    let err = handshake(server, client, "other.example.test")
        .await
        .unwrap_err();
    let msg = format!("{err:?}");
    assert!(msg.contains("NotValidForName"), "{msg}");
}

#[tokio::test]
async fn alpn_falls_back_to_http1_and_tls12_works() {
    let (_dir, _files, cache) = cache(8);
    let server = cache.server_config("api.example.test").unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cache.ca().cert_der().clone()).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = alpn(&["http/1.1"]);
    let ok = handshake(server, Arc::new(client), "api.example.test")
        .await
        .unwrap();
    assert_eq!(ok.alpn.as_deref(), Some(&b"http/1.1"[..]));
}

#[test]
fn leaf_has_expected_fields_and_validity() {
    let (_dir, _files, ca) = new_ca();
    let validity = Duration::from_secs(2 * 3600);
    let cache = LeafCache::new(ca, 4, validity, vec![]).unwrap();
    let now = OffsetDateTime::now_utc();
    let leaf = cache.mint_leaf("api.example.test", now).unwrap();
    let (_, cert) = parse_x509_certificate(&leaf.cert).unwrap();

    let nb = cert.validity().not_before.to_datetime();
    let na = cert.validity().not_after.to_datetime();
    let second = ::time::Duration::seconds(1);
    assert!(
        (now - ::time::Duration::minutes(5) - nb).abs() <= second,
        "{nb}"
    );
    assert!(
        (now + ::time::Duration::hours(2) - na).abs() <= second,
        "{na}"
    );
    assert!((na - nb - ::time::Duration::minutes(125)).abs() <= second);

    let cn: Vec<_> = cert.subject().iter_common_name().collect();
    assert_eq!(cn.len(), 1);
    assert_eq!(cn[0].as_str().unwrap(), "api.example.test");
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(
        san.general_names,
        vec![GeneralName::DNSName("api.example.test")]
    );
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth && !eku.any);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    assert!(!cert.is_ca());

    // Issuer DN is byte-identical to the CA's subject.
    let (_, ca_cert) = parse_x509_certificate(cache.ca().cert_der()).unwrap();
    assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
    // Authority key id points at the CA's subject key id.
    let ski = ca_cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
        .unwrap();
    let aki = cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(aki, ski);

    // Leaves share the key but never the serial.
    let other = cache.mint_leaf("api.example.test", now).unwrap();
    let (_, other) = parse_x509_certificate(&other.cert).unwrap();
    assert_eq!(other.public_key().raw, cert.public_key().raw);
    assert_ne!(other.raw_serial(), cert.raw_serial());
}

#[test]
fn long_host_gets_no_common_name() {
    let (_dir, _files, cache) = cache(2);
    let host = format!("{}.example.test", "a".repeat(60));
    let leaf = cache.mint_leaf(&host, OffsetDateTime::now_utc()).unwrap();
    let (_, cert) = parse_x509_certificate(&leaf.cert).unwrap();
    assert_eq!(cert.subject().iter_common_name().count(), 0);
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(san.general_names, vec![GeneralName::DNSName(&host)]);
}

#[test]
fn cache_counts_hits_and_misses_and_evicts_lru() {
    let (_dir, _files, cache) = cache(2);
    let stats = |hits, misses, size| LeafCacheStats {
        hits,
        misses,
        size,
        capacity: 2,
    };
    assert_eq!(cache.stats(), stats(0, 0, 0));

    let a1 = cache.server_config("a.example.test").unwrap();
    assert_eq!(cache.stats(), stats(0, 1, 1));
    let a2 = cache.server_config("a.example.test").unwrap();
    assert!(Arc::ptr_eq(&a1, &a2));
    assert_eq!(cache.stats(), stats(1, 1, 1));

    cache.server_config("b.example.test").unwrap();
    assert_eq!(cache.stats(), stats(1, 2, 2));
    // Touch a so b becomes least recently used, then c evicts b.
    cache.server_config("a.example.test").unwrap();
    cache.server_config("c.example.test").unwrap();
    assert_eq!(cache.stats(), stats(2, 3, 2));
    let a3 = cache.server_config("a.example.test").unwrap();
    assert!(Arc::ptr_eq(&a1, &a3));
    assert_eq!(cache.stats(), stats(3, 3, 2));
    cache.server_config("b.example.test").unwrap();
    assert_eq!(cache.stats(), stats(3, 4, 2));
}

#[test]
fn entries_are_reminted_before_they_expire() {
    let (_dir, _files, cache) = cache(4);
    let t0 = OffsetDateTime::now_utc();
    let first = cache.server_config_at("a.example.test", t0).unwrap();
    // 17h into a 24h leaf: 7h left, more than a quarter (6h) -> still cached.
    let later = cache
        .server_config_at("a.example.test", t0 + ::time::Duration::hours(17))
        .unwrap();
    assert!(Arc::ptr_eq(&first, &later));
    // 19h in: only 5h left -> re-minted.
    let renewed = cache
        .server_config_at("a.example.test", t0 + ::time::Duration::hours(19))
        .unwrap();
    assert!(!Arc::ptr_eq(&first, &renewed));
    // Clock jumped back before not_before -> re-minted too.
    let back = cache
        .server_config_at("a.example.test", t0 - ::time::Duration::hours(1))
        .unwrap();
    assert!(!Arc::ptr_eq(&renewed, &back));
    let s = cache.stats();
    assert_eq!((s.hits, s.misses, s.size), (1, 3, 1));
}

#[test]
fn rejects_ip_literals_and_invalid_names() {
    let (_dir, _files, cache) = cache(4);
    for host in [
        "127.0.0.1",
        "",
        "[::1]",
        "::1",
        "API.example.test",
        "api.example.test.",
        "*.example.test",
        "a..example.test",
        "-a.example.test",
        "a b.example.test",
        "10.0.0.1.",
    ] {
        let err = cache.server_config(host).unwrap_err();
        assert!(
            matches!(err, TlsError::InvalidHost { .. }),
            "{host:?}: {err:?}"
        );
    }
    assert_eq!(cache.stats().misses, 0);
    assert_eq!(cache.stats().size, 0);
}

#[test]
fn rejects_bad_settings() {
    let (_dir, _files, ca) = new_ca();
    for (capacity, validity) in [
        (0, DAY),
        (1, Duration::ZERO),
        (1, Duration::from_secs(u64::MAX)),
    ] {
        let err = LeafCache::new(ca.clone(), capacity, validity, vec![]).unwrap_err();
        assert!(matches!(err, TlsError::InvalidSettings { .. }), "{err:?}");
    }
}

#[test]
fn concurrent_lookups_are_all_counted() {
    let (_dir, _files, cache) = cache(16);
    let hosts = ["a.example.test", "b.example.test", "c.example.test"];
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for i in 0..30 {
                    cache.server_config(hosts[i % hosts.len()]).unwrap();
                }
            });
        }
    });
    let st = cache.stats();
    assert_eq!(st.hits + st.misses, 120);
    assert!(st.misses >= 3);
    assert_eq!(st.size, 3);
}
