//! The verifier against a real OpenID Connect provider (panva/oidc-provider via
//! credproxy-testkit): discovery, JWKS caching and rotation, the RFC 8725 attack matrix
//! (threat A22), the token cache, start-up with the provider down, and the
//! client-credentials grant.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use credproxy_core::Clock;
use credproxy_identity::{
    client_credentials, token_from_proxy_authorization, AgentIdentity, AuthError,
    ClientCredentials, IdentityError, OidcConfig, TokenError, Verifier,
};
use credproxy_testkit::oidc::free_port;
use credproxy_testkit::{KeyKind, OidcProvider, OidcProviderOptions, TestClient, TestKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(30);

fn config(provider: &OidcProvider) -> OidcConfig {
    OidcConfig::new(provider.issuer(), vec!["credproxy".to_owned()])
}

async fn ready_verifier(cfg: OidcConfig) -> Verifier {
    let verifier = Verifier::new(cfg).unwrap();
    assert!(
        verifier.wait_ready(READY).await,
        "verifier never loaded the JWKS"
    );
    verifier
}

fn now_secs() -> u64 {
    credproxy_core::Clock::system()
        .now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims the provider itself would issue, for forging variants with its real key.
fn provider_claims(provider: &OidcProvider) -> Value {
    let now = now_secs();
    json!({
        "iss": provider.issuer(),
        "aud": "credproxy",
        "sub": "agent-a",
        "client_id": "agent-a",
        "iat": now,
        "exp": now + 300,
        "realm_access": {"roles": ["agent"]},
    })
}

fn encoding_key(key: &TestKey) -> EncodingKey {
    match key.kind {
        KeyKind::Rsa => EncodingKey::from_rsa_pem(key.pem.as_bytes()).unwrap(),
        KeyKind::Ec => EncodingKey::from_ec_pem(key.pem.as_bytes()).unwrap(),
    }
}

/// Sign `claims` with `key`, putting `kid` in the header.
fn forge(key: &TestKey, kid: Option<&str>, claims: &Value) -> String {
    let alg = match key.kind {
        KeyKind::Rsa => Algorithm::RS256,
        KeyKind::Ec => Algorithm::ES256,
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &encoding_key(key)).unwrap()
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn payload_of(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn valid_token_yields_roles_groups_and_agent_id() {
    let provider = OidcProvider::start(OidcProviderOptions {
        clients: vec![
            TestClient::new("agent-a", &["agent", "reader"]).with_groups(&["agents", "/ops"]),
            TestClient::new("agent-b", &[]).with_extra_claims(json!({
                "azp": "agent-b-azp",
                "resource_access": {"credproxy": {"roles": ["proxy-user"]}},
            })),
        ],
        ..Default::default()
    })
    .await;
    let verifier = ready_verifier(config(&provider)).await;

    // No azp in oidc-provider's client-credentials tokens: client_id is the fallback.
    let token = provider.token("agent-a").await;
    let id = verifier.verify(&token).await.unwrap();
    assert_eq!(id.agent_id, "agent-a");
    assert_eq!(id.subject, "agent-a");
    assert_eq!(id.roles, vec!["agent", "reader"]);
    assert_eq!(id.groups, vec!["agents", "/ops"]);
    assert_eq!(id.issuer, provider.issuer());
    let exp = payload_of(&token)["exp"].as_u64().unwrap();
    assert_eq!(secs(id.expires_at), exp);
    assert_eq!(id.token_id_hash.len(), 16);
    let jti = payload_of(&token)["jti"].as_str().unwrap().to_owned();
    assert!(!token.contains(&id.token_id_hash));
    assert_ne!(id.token_id_hash, jti);

    // The identity serializes without the token or claims beyond the documented fields.
    let doc = serde_json::to_value(&*id).unwrap();
    let mut keys: Vec<&str> = doc
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec![
            "agent_id",
            "expires_at",
            "groups",
            "issuer",
            "roles",
            "subject",
            "token_id_hash"
        ]
    );
    assert!(!doc.to_string().contains(&token));

    // azp wins when present.
    let token_b = provider.token("agent-b").await;
    let id_b = verifier.verify(&token_b).await.unwrap();
    assert_eq!(id_b.agent_id, "agent-b-azp");
    assert!(id_b.roles.is_empty(), "agent-b has no realm roles");

    // Configurable claims: client roles and sub as the agent id.
    let mut cfg = config(&provider);
    cfg.roles_claim = "resource_access.credproxy.roles".to_owned();
    cfg.agent_claim = "sub".to_owned();
    let verifier = ready_verifier(cfg).await;
    let id_b = verifier.verify(&token_b).await.unwrap();
    assert_eq!(id_b.roles, vec!["proxy-user"]);
    assert_eq!(id_b.agent_id, "agent-b");
}

#[tokio::test]
async fn es256_provider_tokens_verify() {
    let provider = OidcProvider::start(OidcProviderOptions {
        key_kind: KeyKind::Ec,
        ..Default::default()
    })
    .await;
    let token = provider.token("agent-a").await;
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "ES256");
    let verifier = ready_verifier(config(&provider)).await;
    assert_eq!(verifier.verify(&token).await.unwrap().agent_id, "agent-a");

    // ES256 removed from the allowlist: the same token is refused.
    let mut cfg = config(&provider);
    cfg.algorithms = vec!["RS256".to_owned()];
    let rs_only = ready_verifier(cfg).await;
    assert_eq!(
        rs_only.verify(&token).await,
        Err(AuthError::AlgorithmNotAllowed)
    );
}

#[tokio::test]
async fn bearer_and_basic_password_extraction_verify() {
    let provider = OidcProvider::start(OidcProviderOptions::default()).await;
    let verifier = ready_verifier(config(&provider)).await;
    let token = provider.token("agent-a").await;

    let headers = [
        format!("Bearer {token}"),
        format!("bearer {token}"),
        format!("Basic {}", STANDARD.encode(format!("agent:{token}"))),
        format!(
            "basic {}",
            STANDARD.encode(format!("whoever:{}", token.replace('.', "%2E")))
        ),
    ];
    for header in headers {
        let extracted = token_from_proxy_authorization(header.as_bytes()).unwrap();
        assert_eq!(extracted, token);
        assert_eq!(
            verifier.verify(&extracted).await.unwrap().agent_id,
            "agent-a"
        );
    }
}

#[tokio::test]
async fn expired_token_is_rejected_even_from_the_cache() {
    let provider = OidcProvider::start(OidcProviderOptions {
        token_ttl_secs: 60,
        ..Default::default()
    })
    .await;
    let mut cfg = config(&provider);
    cfg.leeway = Duration::ZERO;
    // The verifiers read an adjustable clock: the test moves it past `exp` instead of
    // sleeping until then.
    let clock = Clock::adjustable();
    let ready = |cfg: OidcConfig, clock: Clock| async move {
        let v = Verifier::with_clock(cfg, clock).unwrap();
        assert!(v.wait_ready(READY).await, "verifier never loaded the JWKS");
        v
    };
    let verifier = ready(cfg.clone(), clock.clone()).await;
    let token = provider.token("agent-a").await;
    let id = verifier.verify(&token).await.unwrap();
    assert_eq!(verifier.verify(&token).await.unwrap().agent_id, "agent-a");
    assert_eq!(
        verifier.verifications(),
        1,
        "the second use came from the cache"
    );

    // One second past `exp`.
    let to_expiry = id
        .expires_at
        .duration_since(clock.now())
        .unwrap_or_default();
    clock.advance(to_expiry + Duration::from_secs(1));

    assert_eq!(
        verifier.verify(&token).await,
        Err(AuthError::Expired),
        "cached token"
    );
    assert_eq!(verifier.verifications(), 1);
    let fresh = ready(cfg, clock.clone()).await;
    assert_eq!(
        fresh.verify(&token).await,
        Err(AuthError::Expired),
        "uncached token"
    );
    assert!(id.is_expired_at(clock.now()));
}

#[tokio::test]
async fn audience_issuer_and_time_claims_are_enforced() {
    let provider = OidcProvider::start(OidcProviderOptions::default()).await;
    let verifier = ready_verifier(config(&provider)).await;

    // A real token for another resource server.
    let other = provider
        .token_for_resource("agent-a", Some("urn:other"))
        .await;
    assert_eq!(payload_of(&other)["aud"], "other");
    assert_eq!(verifier.verify(&other).await, Err(AuthError::BadAudience));
    let mut cfg = config(&provider);
    cfg.audiences = vec!["unrelated".to_owned(), "other".to_owned()];
    let accepts_other = ready_verifier(cfg).await;
    assert!(accepts_other.verify(&other).await.is_ok());

    // A real token checked against a different configured issuer (same keys).
    let token = provider.token("agent-a").await;
    let mut cfg = config(&provider);
    cfg.issuer = format!("{}/realms/other", provider.issuer());
    let wrong_issuer = Verifier::with_static_jwks(cfg, &provider.key().public_jwks_json()).unwrap();
    assert_eq!(wrong_issuer.verify(&token).await, Err(AuthError::BadIssuer));

    // Forged with the provider's real key: every claim rule on its own.
    let key = provider.key();
    let kid = Some(key.kid());
    let base = provider_claims(&provider);
    let case = |edit: &dyn Fn(&mut Value)| {
        let mut claims = base.clone();
        edit(&mut claims);
        forge(key, kid, &claims)
    };
    assert!(verifier.verify(&case(&|_| {})).await.is_ok(), "control");
    let cases: Vec<(String, AuthError)> = vec![
        (
            case(&|c| c["iss"] = json!("https://evil.example")),
            AuthError::BadIssuer,
        ),
        (
            case(&|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
            AuthError::BadIssuer,
        ),
        (
            case(&|c| c["aud"] = json!(["x", "y"])),
            AuthError::BadAudience,
        ),
        (
            case(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            AuthError::BadAudience,
        ),
        (
            case(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            AuthError::Malformed,
        ),
        (
            case(&|c| c["exp"] = json!(now_secs() - 3600)),
            AuthError::Expired,
        ),
        (
            case(&|c| c["nbf"] = json!(now_secs() + 3600)),
            AuthError::NotYetValid,
        ),
        (
            case(&|c| c["nbf"] = json!("tomorrow")),
            AuthError::Malformed,
        ),
    ];
    for (token, expected) in cases {
        assert_eq!(verifier.verify(&token).await, Err(expected));
    }
    // nbf within the leeway is fine.
    let soon = case(&|c| c["nbf"] = json!(now_secs() + 5));
    assert!(verifier.verify(&soon).await.is_ok());
}

#[tokio::test]
async fn tampered_and_foreign_signatures_are_rejected() {
    let provider = OidcProvider::start(OidcProviderOptions::default()).await;
    let verifier = ready_verifier(config(&provider)).await;
    let token = provider.token("agent-a").await;
    let parts: Vec<&str> = token.split('.').collect();

    // Payload edited (an extra role), signature kept.
    let mut claims = payload_of(&token);
    claims["realm_access"]["roles"] = json!(["agent", "admin"]);
    let edited = format!("{}.{}.{}", parts[0], b64(claims.to_string()), parts[2]);
    assert_eq!(verifier.verify(&edited).await, Err(AuthError::BadSignature));

    // Signature bits flipped.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[10] ^= 0x01;
    let flipped = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
    assert_eq!(
        verifier.verify(&flipped).await,
        Err(AuthError::BadSignature)
    );

    // Signed by another key that claims the provider's kid.
    let other_key = TestKey::generate(KeyKind::Rsa).await;
    let foreign = forge(
        &other_key,
        Some(provider.key().kid()),
        &provider_claims(&provider),
    );
    assert_eq!(
        verifier.verify(&foreign).await,
        Err(AuthError::BadSignature)
    );

    // Empty signature.
    let unsigned = format!("{}.{}.", parts[0], parts[1]);
    assert_eq!(
        verifier.verify(&unsigned).await,
        Err(AuthError::BadSignature)
    );
}

#[tokio::test]
async fn alg_none_hmac_confusion_and_key_urls_are_refused() {
    let provider = OidcProvider::start(OidcProviderOptions::default()).await;
    let verifier = ready_verifier(config(&provider)).await;
    let fetches = verifier.jwks_fetches();
    let claims = provider_claims(&provider).to_string();
    let kid = provider.key().kid().to_owned();

    // alg: none, in any spelling, with and without a signature.
    for alg in ["none", "None", "NONE"] {
        let header = json!({"alg": alg, "kid": kid, "typ": "JWT"}).to_string();
        for sig in ["", "AAAA"] {
            let token = format!("{}.{}.{sig}", b64(&header), b64(&claims));
            assert_eq!(
                verifier.verify(&token).await,
                Err(AuthError::AlgorithmNotAllowed)
            );
        }
    }

    // HS256 keyed with the provider's public key material, as a confused verifier would use
    // it: the JWKS document, the JWK, the raw modulus.
    let public_jwk = provider.key().public_jwk();
    let n = URL_SAFE_NO_PAD
        .decode(public_jwk["n"].as_str().unwrap())
        .unwrap();
    let secrets: Vec<Vec<u8>> = vec![
        provider.key().public_jwks_json().into_bytes(),
        public_jwk.to_string().into_bytes(),
        n,
    ];
    for secret in secrets {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let mut header = Header::new(alg);
            header.kid = Some(kid.clone());
            let token = jsonwebtoken::encode(
                &header,
                &provider_claims(&provider),
                &EncodingKey::from_secret(&secret),
            )
            .unwrap();
            assert_eq!(
                verifier.verify(&token).await,
                Err(AuthError::AlgorithmNotAllowed)
            );
        }
    }

    // ES256 header naming the RSA key.
    let header = json!({"alg": "ES256", "kid": kid}).to_string();
    let token = format!("{}.{}.{}", b64(&header), b64(&claims), b64([7u8; 64]));
    assert_eq!(
        verifier.verify(&token).await,
        Err(AuthError::AlgorithmNotAllowed)
    );

    // jku / x5u / jwk pointing at an attacker's key: refused without any fetch.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_url = format!("http://{}/jwks", trap.local_addr().unwrap());
    let attacker = TestKey::generate(KeyKind::Rsa).await;
    let attack_claims = provider_claims(&provider);
    for field in ["jku", "x5u", "jwk"] {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(attacker.kid().to_owned());
        match field {
            "jku" => header.jku = Some(trap_url.clone()),
            "x5u" => header.x5u = Some(trap_url.clone()),
            _ => header.jwk = Some(serde_json::from_value(attacker.public_jwk()).unwrap()),
        }
        let token =
            jsonwebtoken::encode(&header, &attack_claims, &encoding_key(&attacker)).unwrap();
        assert_eq!(
            verifier.verify(&token).await,
            Err(AuthError::UnknownKey),
            "{field}"
        );
    }
    assert_eq!(
        trap.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the verifier connected to a URL from a token header"
    );
    assert_eq!(
        verifier.jwks_fetches(),
        fetches,
        "no JWKS refetch for refused headers"
    );

    // Symmetric algorithms cannot even be configured.
    let mut cfg = config(&provider);
    cfg.algorithms = vec!["HS256".to_owned()];
    assert!(matches!(
        Verifier::new(cfg),
        Err(IdentityError::Config {
            field: "algorithms",
            ..
        })
    ));
}

#[tokio::test]
async fn unknown_kid_refetches_once_and_accepts_a_rotated_key() {
    let mut provider = OidcProvider::start(OidcProviderOptions::default()).await;
    let verifier = ready_verifier(config(&provider)).await;
    let old_token = provider.token("agent-a").await;
    verifier.verify(&old_token).await.unwrap();
    assert_eq!(provider.jwks_requests().await, 1);

    let old_kid = provider.key().kid().to_owned();
    let epoch = verifier.key_epoch();
    let new_kid = provider.restart_with_new_key().await.kid().to_owned();
    assert_ne!(old_kid, new_kid);
    let new_token = provider.token("agent-a").await;

    let id = verifier.verify(&new_token).await.unwrap();
    assert_eq!(id.agent_id, "agent-a");
    assert_eq!(provider.jwks_requests().await, 2, "exactly one refetch");
    // Holders of identities verified before the withdrawal can tell.
    assert_ne!(
        verifier.key_epoch(),
        epoch,
        "the withdrawal changes the key epoch"
    );

    // The old key was withdrawn: its token no longer verifies (even though it was cached),
    // and asking again within the interval does not fetch again.
    assert_eq!(
        verifier.verify(&old_token).await,
        Err(AuthError::UnknownKey)
    );
    assert_eq!(
        verifier.verify(&new_token).await.unwrap().agent_id,
        "agent-a"
    );
    assert_eq!(provider.jwks_requests().await, 2);
}

#[tokio::test]
async fn random_kid_flood_is_rate_limited() {
    // EC keeps forging 300 tokens cheap in a debug build.
    let provider = OidcProvider::start(OidcProviderOptions {
        key_kind: KeyKind::Ec,
        ..Default::default()
    })
    .await;
    // A long interval on an adjustable clock: the test reaches its end by moving the clock,
    // so every count below is exact.
    let interval = Duration::from_secs(60);
    let mut cfg = config(&provider);
    cfg.jwks_min_refresh_interval = interval;
    let clock = Clock::adjustable();
    let verifier = Verifier::with_clock(cfg, clock.clone()).unwrap();
    assert!(
        verifier.wait_ready(READY).await,
        "verifier never loaded the JWKS"
    );
    assert_eq!(provider.jwks_requests().await, 1);

    let claims = provider_claims(&provider);
    let rounds: Vec<Vec<String>> = (0..3)
        .map(|round| {
            (0..100)
                .map(|i| {
                    let kid = b64(format!("random-{round}-{i}"));
                    forge(provider.key(), Some(&kid), &claims)
                })
                .collect()
        })
        .collect();
    let flood = |tokens: &[String]| {
        let verifier = verifier.clone();
        let tokens = tokens.to_vec();
        async move {
            let results =
                futures_util::future::join_all(tokens.iter().map(|t| verifier.verify(t))).await;
            for result in results {
                assert_eq!(result, Err(AuthError::UnknownKey));
            }
        }
    };

    // Two bursts of 100 unknown kids, back to back: one refetch in all.
    flood(&rounds[0]).await;
    flood(&rounds[1]).await;
    let fetched = provider.jwks_requests().await;
    assert_eq!(fetched, 2, "exactly one refetch within the interval");

    // Once the interval has passed, one more refetch is allowed, and only one.
    clock.advance(interval);
    flood(&rounds[2]).await;
    let after = provider.jwks_requests().await;
    assert_eq!(after, fetched + 1, "one refetch for the third burst");
    assert_eq!(
        verifier.verifications(),
        0,
        "unknown kids never reach a signature check"
    );
}

#[tokio::test]
async fn oversized_and_garbage_tokens_are_refused_cheaply() {
    let provider = OidcProvider::start(OidcProviderOptions::default()).await;
    let verifier = ready_verifier(config(&provider)).await;

    let big = format!(
        "{}.{}.{}",
        "a".repeat(3000),
        "b".repeat(3000),
        "c".repeat(3000)
    );
    assert_eq!(verifier.verify(&big).await, Err(AuthError::TooLarge));
    // A valid token padded with a giant claim is refused by size too.
    let mut claims = provider_claims(&provider);
    claims["padding"] = json!("x".repeat(9000));
    let padded = forge(provider.key(), Some(provider.key().kid()), &claims);
    assert_eq!(verifier.verify(&padded).await, Err(AuthError::TooLarge));

    assert_eq!(verifier.verify("").await, Err(AuthError::Missing));
    assert_eq!(verifier.verify("abc").await, Err(AuthError::Malformed));
    assert_eq!(verifier.verify("a.b.c.d").await, Err(AuthError::Malformed));
    assert_eq!(verifier.verify("%%%.b.c").await, Err(AuthError::Malformed));
    assert_eq!(
        verifier.verifications(),
        0,
        "no signature work for refused tokens"
    );
    assert_eq!(provider.jwks_requests().await, 1);
}

#[tokio::test]
async fn verified_tokens_are_cached() {
    let provider = OidcProvider::start(OidcProviderOptions::default()).await;
    let verifier = ready_verifier(config(&provider)).await;
    let token = provider.token("agent-a").await;

    let first = verifier.verify(&token).await.unwrap();
    let second = verifier.clone().verify(&token).await.unwrap();
    assert_eq!(
        verifier.verifications(),
        1,
        "the second use skipped the signature check"
    );
    assert!(Arc::ptr_eq(&first, &second));

    // Another token for the same client is verified on its own.
    let other = provider.token("agent-a").await;
    let third = verifier.verify(&other).await.unwrap();
    assert_eq!(verifier.verifications(), 2);
    assert_ne!(first.token_id_hash, third.token_id_hash);
    assert_eq!(first.agent_id, third.agent_id);
}

#[tokio::test]
async fn provider_down_at_start_then_ready_when_it_comes_up() {
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let verifier =
        Verifier::new(OidcConfig::new(issuer.clone(), vec!["credproxy".into()])).unwrap();
    assert!(!verifier.is_ready());
    assert!(!verifier.wait_ready(Duration::from_millis(50)).await);
    let token_shaped = format!(
        "{}.{}.{}",
        b64(r#"{"alg":"RS256","kid":"k"}"#),
        b64("{}"),
        b64("sig")
    );
    assert_eq!(
        verifier.verify(&token_shaped).await,
        Err(AuthError::ProviderUnavailable)
    );

    let provider = OidcProvider::start(OidcProviderOptions {
        port,
        ..Default::default()
    })
    .await;
    assert_eq!(provider.issuer(), issuer);
    assert!(
        verifier.wait_ready(READY).await,
        "the loader retries until the provider is up"
    );
    let token = provider.token("agent-a").await;
    assert_eq!(verifier.verify(&token).await.unwrap().agent_id, "agent-a");
}

#[tokio::test]
async fn discovery_must_name_the_configured_issuer() {
    let provider = OidcProvider::start(OidcProviderOptions::default()).await;
    // Same server, but configured as "localhost": discovery says 127.0.0.1, so no keys.
    let issuer = format!("http://localhost:{}", provider.port());
    let verifier = Verifier::new(OidcConfig::new(issuer, vec!["credproxy".into()])).unwrap();
    assert!(!verifier.wait_ready(Duration::from_millis(500)).await);
    assert_eq!(provider.jwks_requests().await, 0);

    // Plain http to a non-loopback issuer is a configuration error.
    let err = Verifier::new(OidcConfig::new("http://id.example", vec!["a".into()])).unwrap_err();
    assert!(
        matches!(
            err,
            IdentityError::Config {
                field: "issuer",
                ..
            }
        ),
        "{err}"
    );
}

fn grant(provider: &OidcProvider, client: &str, secret: &str) -> ClientCredentials {
    ClientCredentials {
        issuer: Some(provider.issuer()),
        token_url: None,
        client_id: client.to_owned(),
        client_secret: secret.to_owned(),
        audience: None,
        scope: None,
        ca_files: Vec::new(),
    }
}

#[tokio::test]
async fn client_credentials_grant_yields_a_token_that_verifies() {
    let provider = OidcProvider::start(OidcProviderOptions::default()).await;
    let verifier = ready_verifier(config(&provider)).await;

    // Discovery, default resource.
    let response = client_credentials(&grant(&provider, "agent-a", "agent-a-secret"))
        .await
        .unwrap();
    assert_eq!(response.expires_in, Some(Duration::from_secs(300)));
    assert!(!format!("{response:?}").contains(&response.access_token));
    let id: Arc<AgentIdentity> = verifier.verify(&response.access_token).await.unwrap();
    assert_eq!(id.agent_id, "agent-a");
    assert_eq!(id.roles, vec!["agent"]);

    // Explicit token URL and audience (an absolute URI, so also sent as `resource`).
    let mut req = grant(&provider, "agent-a", "agent-a-secret");
    req.issuer = None;
    req.token_url = Some(provider.token_url());
    req.audience = Some("urn:other".to_owned());
    let other = client_credentials(&req).await.unwrap();
    assert_eq!(payload_of(&other.access_token)["aud"], "other");
    assert_eq!(
        verifier.verify(&other.access_token).await,
        Err(AuthError::BadAudience)
    );
}

#[tokio::test]
async fn client_credentials_errors_name_the_provider_error_not_the_secret() {
    let provider = OidcProvider::start(OidcProviderOptions::default()).await;

    let secret = "wrong-secret-value";
    let err = client_credentials(&grant(&provider, "agent-a", secret))
        .await
        .unwrap_err();
    match &err {
        TokenError::Provider { error, .. } => assert_eq!(error, "invalid_client"),
        other => panic!("expected a provider error, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("invalid_client"), "{text}");
    assert!(!text.contains(secret));
    assert!(!format!("{err:?}").contains(secret));

    let mut req = grant(&provider, "agent-a", "agent-a-secret");
    req.audience = Some("urn:unknown".to_owned());
    let err = client_credentials(&req).await.unwrap_err();
    assert!(err.to_string().contains("invalid_target"), "{err}");

    // The secret never goes over plain http to a remote host.
    let mut req = grant(&provider, "agent-a", "agent-a-secret");
    req.issuer = None;
    req.token_url = Some("http://id.example/token".to_owned());
    assert!(matches!(
        client_credentials(&req).await,
        Err(TokenError::Invalid(_))
    ));
}
