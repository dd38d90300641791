//! The dev issuer: tokens it mints verify through the ordinary verifier, and its key is
//! created once (mode 0600) and reused.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use credproxy_identity::{
    AuthError, DevIssuer, IdentityError, OidcConfig, Verifier, DEV_AUDIENCE, DEV_ISSUER,
    DEV_KEY_FILE,
};

fn roles(names: &[&str]) -> Vec<String> {
    names.iter().map(|r| (*r).to_owned()).collect()
}

#[tokio::test]
async fn dev_tokens_verify_through_the_normal_path() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let dev = DevIssuer::load_or_create(&state).unwrap();
    assert_eq!(dev.issuer(), DEV_ISSUER);
    assert_eq!(dev.audience(), DEV_AUDIENCE);

    let verifier = Verifier::with_static_jwks(dev.oidc_config(), &dev.jwks_json()).unwrap();
    assert!(verifier.is_ready());
    let token = dev
        .issue(
            "dev-agent",
            &roles(&["agent", "admin"]),
            Duration::from_secs(600),
        )
        .unwrap();
    let id = verifier.verify(&token).await.unwrap();
    assert_eq!(id.agent_id, "dev-agent");
    assert_eq!(id.subject, "dev-agent");
    assert_eq!(id.roles, roles(&["agent", "admin"]));
    assert_eq!(id.issuer, DEV_ISSUER);

    // Same checks as for a real issuer: another audience or issuer is refused.
    let mut cfg = dev.oidc_config();
    cfg.audiences = vec!["something-else".to_owned()];
    let other_aud = Verifier::with_static_jwks(cfg, &dev.jwks_json()).unwrap();
    assert_eq!(other_aud.verify(&token).await, Err(AuthError::BadAudience));
    let mut cfg = OidcConfig::new("https://id.example", vec![DEV_AUDIENCE.to_owned()]);
    cfg.algorithms = vec!["ES256".to_owned()];
    let other_iss = Verifier::with_static_jwks(cfg, &dev.jwks_json()).unwrap();
    assert_eq!(other_iss.verify(&token).await, Err(AuthError::BadIssuer));

    // A static JWKS never fetches: an unknown key is just unknown.
    let other_dir = tempfile::tempdir().unwrap();
    let stranger = DevIssuer::load_or_create(other_dir.path()).unwrap();
    let foreign = stranger
        .issue("dev-agent", &[], Duration::from_secs(600))
        .unwrap();
    assert_eq!(verifier.verify(&foreign).await, Err(AuthError::UnknownKey));
    assert_eq!(verifier.jwks_fetches(), 0);
}

#[tokio::test]
async fn dev_key_is_private_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let first = DevIssuer::load_or_create(dir.path()).unwrap();
    let key_path = dir.path().join(DEV_KEY_FILE);
    assert_eq!(first.key_path(), key_path);
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");

    let token = first.issue("agent", &[], Duration::from_secs(60)).unwrap();
    let second = DevIssuer::load_or_create(dir.path()).unwrap();
    assert_eq!(
        first.jwks_json(),
        second.jwks_json(),
        "same key after reload"
    );
    let verifier = Verifier::with_static_jwks(second.oidc_config(), &second.jwks_json()).unwrap();
    assert_eq!(verifier.verify(&token).await.unwrap().agent_id, "agent");

    // A key others can read is refused, not used.
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = DevIssuer::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(err, IdentityError::KeyPermissions { .. }), "{err}");

    // A corrupt key is an error naming the file, never silently replaced.
    std::fs::write(&key_path, "not a key").unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = DevIssuer::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(err, IdentityError::BadKey { .. }), "{err}");
}

#[test]
fn dev_issue_rejects_nonsense() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevIssuer::load_or_create(dir.path()).unwrap();
    assert!(dev.issue("", &[], Duration::from_secs(60)).is_err());
    assert!(dev.issue("a", &[], Duration::ZERO).is_err());
    assert!(!format!("{dev:?}").contains("PRIVATE"));
}

#[test]
fn auth_errors_are_stable_and_say_what_to_do() {
    let mut reasons: Vec<&str> = AuthError::ALL.iter().map(AuthError::reason).collect();
    for error in AuthError::ALL {
        let reason = error.reason();
        assert!(
            reason.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{reason}"
        );
        assert_eq!(error.to_string(), error.agent_message());
        assert!(!error.agent_message().ends_with('.'));
        assert!(!error.agent_message().contains('\n'));
    }
    reasons.sort_unstable();
    reasons.dedup();
    assert_eq!(reasons.len(), AuthError::ALL.len());
}
