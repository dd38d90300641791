//! Per-host leaf certificates and the bounded cache of server configs.

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use lru::LruCache;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::sign::{CertifiedKey, SigningKey, SingleCertAndKey};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, DnsName, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::{provider, random_serial, Ca, TlsError, PROTOCOL_VERSIONS};

/// Leaves are backdated so clients with slightly slow clocks accept them.
const LEAF_BACKDATE: time::Duration = time::Duration::minutes(5);

/// Longest subject CN allowed by X.520 (ub-common-name). Longer hosts get no
/// CN; clients match on the SAN anyway.
const MAX_CN_LEN: usize = 64;

/// Mints leaves for a host and caches the resulting rustls `ServerConfig`.
pub struct LeafCache {
    ca: Arc<Ca>,
    /// One key pair shared by every leaf: signing alone is roughly half the
    /// cost of keygen plus signing, and the key never leaves the process.
    leaf_key: KeyPair,
    /// The same key loaded into rustls once, instead of re-parsing per leaf.
    signing_key: Arc<dyn SigningKey>,
    validity: time::Duration,
    /// An entry is re-minted once less than this much validity remains.
    refresh_margin: time::Duration,
    alpn: Vec<Vec<u8>>,
    state: Mutex<CacheState>,
}

struct CacheState {
    lru: LruCache<String, Entry>,
    hits: u64,
    misses: u64,
}

struct Entry {
    config: Arc<ServerConfig>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafCacheStats {
    pub hits: u64,
    pub misses: u64,
    pub size: usize,
    pub capacity: usize,
}

impl fmt::Debug for LeafCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafCache")
            .field("ca", &self.ca)
            .field("validity", &self.validity)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl LeafCache {
    /// `capacity` must be at least 1. `validity` is how long each leaf is
    /// valid (e.g. 24h); a cached entry is re-minted when less than a quarter
    /// of it remains, so a long-running proxy never serves an expired leaf.
    /// `alpn` is what the server configs advertise (the proxy passes
    /// `[b"h2", b"http/1.1"]`).
    pub fn new(
        ca: Arc<Ca>,
        capacity: usize,
        validity: Duration,
        alpn: Vec<Vec<u8>>,
    ) -> Result<LeafCache, TlsError> {
        let capacity = NonZeroUsize::new(capacity).ok_or(TlsError::InvalidSettings {
            reason: "capacity must be at least 1",
        })?;
        let validity = time::Duration::try_from(validity)
            .ok()
            .filter(|v| {
                v.is_positive()
                    && OffsetDateTime::now_utc()
                        .checked_add(*v + *v)
                        .is_some_and(|t| t.year() < 9000)
            })
            .ok_or(TlsError::InvalidSettings {
                reason: "validity must be positive and end before the year 9000",
            })?;

        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
            TlsError::Generate {
                what: "generating the leaf key pair",
                source,
            }
        })?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let signing_key = provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(|source| TlsError::Rustls {
                what: "loading the leaf key into rustls",
                source,
            })?;

        Ok(LeafCache {
            ca,
            leaf_key,
            signing_key,
            validity,
            refresh_margin: validity / 4,
            alpn,
            state: Mutex::new(CacheState {
                lru: LruCache::new(capacity),
                hits: 0,
                misses: 0,
            }),
        })
    }

    /// Returns the server config for `host`, minting a leaf on a miss.
    ///
    /// `host` must be a canonical lowercase DNS name already validated by the
    /// caller; IP literals and invalid names get [`TlsError::InvalidHost`]
    /// instead of a certificate. Minting happens outside the lock so a slow
    /// mint never blocks cache hits for other hosts; two concurrent misses for
    /// the same host may both mint, and the later one wins the slot.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, TlsError> {
        self.server_config_at(host, OffsetDateTime::now_utc())
    }

    /// [`Self::server_config`] with an explicit clock, so tests can exercise
    /// re-minting without sleeping.
    pub(crate) fn server_config_at(
        &self,
        host: &str,
        now: OffsetDateTime,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        validate_host(host)?;
        {
            let mut state = self.lock();
            let fresh = state
                .lru
                .get(host)
                .filter(|e| e.is_fresh(now, self.refresh_margin))
                .map(|e| e.config.clone());
            if let Some(config) = fresh {
                state.hits += 1;
                return Ok(config);
            }
            state.misses += 1;
        }
        let entry = self.mint(host, now)?;
        let config = entry.config.clone();
        self.lock().lru.put(host.to_owned(), entry);
        Ok(config)
    }

    /// The CA this cache signs with (e.g. to serve its certificate to agents).
    pub fn ca(&self) -> &Arc<Ca> {
        &self.ca
    }

    pub fn stats(&self) -> LeafCacheStats {
        let state = self.lock();
        LeafCacheStats {
            hits: state.hits,
            misses: state.misses,
            size: state.lru.len(),
            capacity: state.lru.cap().get(),
        }
    }

    /// The state is only counters and an LRU whose operations cannot be
    /// interrupted half-way by our code, so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Signs a leaf for `host` and wraps it in a server config.
    fn mint(&self, host: &str, now: OffsetDateTime) -> Result<Entry, TlsError> {
        let leaf = self.mint_leaf(host, now)?;
        let chain = vec![leaf.cert, self.ca.cert_der().clone()];
        let certified = CertifiedKey::new(chain, self.signing_key.clone());
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(|source| TlsError::ServerConfig {
                host: host.to_owned(),
                source,
            })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        config.alpn_protocols = self.alpn.clone();
        Ok(Entry {
            config: Arc::new(config),
            not_before: leaf.not_before,
            not_after: leaf.not_after,
        })
    }

    /// Signs the leaf certificate itself (exposed to tests for inspection).
    pub(crate) fn mint_leaf(&self, host: &str, now: OffsetDateTime) -> Result<Leaf, TlsError> {
        let mint_err = |source| TlsError::Mint {
            host: host.to_owned(),
            source,
        };
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if host.len() <= MAX_CN_LEN {
            dn.push(DnType::CommonName, host);
        }
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::DnsName(host.try_into().map_err(mint_err)?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = now - LEAF_BACKDATE;
        // Checked in `new` to stay far from the representable range.
        params.not_after = now + self.validity;
        let (not_before, not_after) = (params.not_before, params.not_after);
        let (issuer, issuer_key) = self.ca.issuer();
        let cert = params
            .signed_by(&self.leaf_key, issuer, issuer_key)
            .map_err(mint_err)?;
        Ok(Leaf {
            cert: cert.into(),
            not_before,
            not_after,
        })
    }
}

/// A freshly signed leaf and its validity window.
pub(crate) struct Leaf {
    pub(crate) cert: CertificateDer<'static>,
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
}

impl Entry {
    /// Fresh while at least `margin` validity remains. Also stale if the clock
    /// went backwards past `not_before`, since clients would reject it.
    fn is_fresh(&self, now: OffsetDateTime, margin: time::Duration) -> bool {
        now >= self.not_before && self.not_after - now >= margin
    }
}

/// Enforces the caller's contract that `host` is a canonical DNS name, so a
/// bug upstream cannot make us mint for an IP, a wildcard or a non-canonical
/// spelling that would fragment the cache.
fn validate_host(host: &str) -> Result<(), TlsError> {
    let invalid = |reason| {
        Err(TlsError::InvalidHost {
            host: host.to_owned(),
            reason,
        })
    };
    if host.is_empty() {
        return invalid("empty name");
    }
    if host.parse::<IpAddr>().is_ok() || (host.starts_with('[') && host.ends_with(']')) {
        return invalid("ip literals are not supported");
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) || host.ends_with('.') {
        return invalid("name is not canonical (lowercase, no trailing dot)");
    }
    if DnsName::try_from(host).is_err() {
        return invalid("not a valid dns name");
    }
    Ok(())
}
