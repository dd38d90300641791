//! The dev issuer: a local ES256 key that mints tokens for `credproxy dev`.
//!
//! Its tokens go through the same [`crate::Verifier`] as real ones (built with
//! [`crate::Verifier::with_static_jwks`]); there is no bypass. Issuer string
//! [`DEV_ISSUER`], audience [`DEV_AUDIENCE`].

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;
use serde_json::json;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::config::OidcConfig;
use crate::error::IdentityError;

/// The `iss` of dev tokens. Deliberately not a URL: nothing can be discovered or fetched
/// from it, so a dev config can never be mistaken for a real provider.
pub const DEV_ISSUER: &str = "credproxy-dev";
/// The `aud` of dev tokens.
pub const DEV_AUDIENCE: &str = "credproxy";
/// The key file's name inside the state directory.
pub const DEV_KEY_FILE: &str = "dev-issuer-key.pem";

/// A local token issuer for development.
pub struct DevIssuer {
    key: EncodingKey,
    kid: String,
    jwks: String,
    path: PathBuf,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("kid", &self.kid)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl DevIssuer {
    /// Load the key from `dir`/[`DEV_KEY_FILE`], creating it (mode 0600, directory 0700)
    /// if missing, so that tokens stay valid across restarts. A key file readable by other
    /// users is refused rather than used.
    pub fn load_or_create(dir: &Path) -> Result<DevIssuer, IdentityError> {
        DevIssuer::load_or_create_file(&dir.join(DEV_KEY_FILE))
    }

    /// Like [`DevIssuer::load_or_create`], with the key at `path` (its directory is created,
    /// mode 0700, when missing). A key file readable by other users is refused.
    pub fn load_or_create_file(path: &Path) -> Result<DevIssuer, IdentityError> {
        let path = path.to_owned();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let pkcs8 = match read_key(&path)? {
            Some(der) => der,
            None => create_key(&dir, &path)?,
        };
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .map_err(|_| IdentityError::BadKey { path: path.clone() })?;
        // The public key is the uncompressed point 0x04 || X || Y.
        let point = pair.public_key().as_ref();
        if point.len() != 65 || point[0] != 4 {
            return Err(IdentityError::BadKey { path });
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
        // RFC 7638 thumbprint: members in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "kid": kid, "alg": "ES256", "use": "sig",
        }]})
        .to_string();
        Ok(DevIssuer {
            key: EncodingKey::from_ec_der(&pkcs8),
            kid,
            jwks,
            path,
        })
    }

    /// [`DEV_ISSUER`].
    pub fn issuer(&self) -> &str {
        DEV_ISSUER
    }

    /// [`DEV_AUDIENCE`].
    pub fn audience(&self) -> &str {
        DEV_AUDIENCE
    }

    /// The key file.
    pub fn key_path(&self) -> &Path {
        &self.path
    }

    /// The public JWKS (one ES256 key).
    pub fn jwks_json(&self) -> String {
        self.jwks.clone()
    }

    /// A config for [`crate::Verifier::with_static_jwks`] that accepts this issuer's tokens.
    pub fn oidc_config(&self) -> OidcConfig {
        let mut cfg = OidcConfig::new(DEV_ISSUER, vec![DEV_AUDIENCE.to_owned()]);
        cfg.algorithms = vec!["ES256".to_owned()];
        cfg
    }

    /// Issue a token for `agent_id` with Keycloak-shaped `realm_access.roles`, valid for
    /// `ttl`. `sub`, `azp` and `client_id` all name the agent.
    pub fn issue(
        &self,
        agent_id: &str,
        roles: &[String],
        ttl: Duration,
    ) -> Result<String, IdentityError> {
        if agent_id.is_empty() {
            return Err(IdentityError::Issue(
                "the agent id must not be empty".to_owned(),
            ));
        }
        if ttl.is_zero() {
            return Err(IdentityError::Issue("the ttl must be positive".to_owned()));
        }
        // An issuer's time is the world's (its tokens meet other verifiers), not a test's.
        let now = credproxy_core::Clock::system()
            .now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| IdentityError::Issue("the clock is before 1970".to_owned()))?
            .as_secs();
        let exp = now.saturating_add(ttl.as_secs().max(1));
        let mut jti = [0u8; 16];
        SystemRandom::new()
            .fill(&mut jti)
            .map_err(|_| IdentityError::Issue("no randomness available".to_owned()))?;
        let claims = json!({
            "iss": DEV_ISSUER,
            "aud": DEV_AUDIENCE,
            "sub": agent_id,
            "azp": agent_id,
            "client_id": agent_id,
            "realm_access": {"roles": roles},
            "groups": [],
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": hex::encode(jti),
        });
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| IdentityError::Issue(e.to_string()))
    }
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> IdentityError + 'a {
    move |source| IdentityError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The key's PKCS#8 DER if the file exists; refuses a file others can access.
fn read_key(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, IdentityError> {
    let pem = match std::fs::read(path) {
        Ok(pem) => Zeroizing::new(pem),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", path)(e)),
    };
    check_private(path)?;
    let der = PrivatePkcs8KeyDer::from_pem_slice(&pem).map_err(|_| IdentityError::BadKey {
        path: path.to_owned(),
    })?;
    Ok(Some(Zeroizing::new(der.secret_pkcs8_der().to_vec())))
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .map_err(io_error("inspect", path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(IdentityError::KeyPermissions {
            path: path.to_owned(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), IdentityError> {
    Ok(())
}

/// Create a key and publish it atomically: write a private temporary file, then hard-link
/// it to the final name, which fails if another process created the key meanwhile (its key
/// then wins and is read back).
fn create_key(dir: &Path, path: &Path) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
    create_private_dir(dir)?;
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| IdentityError::Issue("cannot generate the dev issuer key".to_owned()))?;
    let der = Zeroizing::new(doc.as_ref().to_vec());
    let pem = Zeroizing::new(pem_encode("PRIVATE KEY", &der));

    let mut suffix = [0u8; 8];
    rng.fill(&mut suffix)
        .map_err(|_| IdentityError::Issue("no randomness available".to_owned()))?;
    let tmp = dir.join(format!(".{DEV_KEY_FILE}.{}.tmp", hex::encode(suffix)));
    let written = write_private(&tmp, &pem);
    let linked = written.and_then(|()| match std::fs::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_error("create", path)(e)),
    });
    // Best effort: a leftover temporary file holds a key nobody uses.
    let _ = std::fs::remove_file(&tmp);
    if linked? {
        tracing::info!(path = %path.display(), "created dev issuer key");
        Ok(der)
    } else {
        read_key(path)?.ok_or_else(|| IdentityError::BadKey {
            path: path.to_owned(),
        })
    }
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io_error("create", path))?;
    file.write_all(contents).map_err(io_error("write", path))?;
    file.sync_all().map_err(io_error("sync", path))
}

fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(io_error("create directory", dir))
}

fn pem_encode(label: &str, der: &[u8]) -> Vec<u8> {
    let b64 = Zeroizing::new(STANDARD.encode(der));
    let mut out = format!("-----BEGIN {label}-----\n").into_bytes();
    for line in b64.as_bytes().chunks(64) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(format!("-----END {label}-----\n").as_bytes());
    out
}
