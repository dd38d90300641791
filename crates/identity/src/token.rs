//! The OAuth 2.0 client-credentials grant (RFC 6749 §4.4), for `credproxy token` and the
//! token refresher ([`crate::RefreshingToken`]).

use std::path::PathBuf;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;

use crate::http::{self, FetchError};

/// Timeout of each request made for the grant.
const TOKEN_HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for a token response.
const MAX_TOKEN_RESPONSE_BYTES: usize = 256 * 1024;
/// Longest provider error text repeated to the user.
const MAX_PROVIDER_TEXT: usize = 300;

/// A client-credentials request.
#[derive(Clone)]
pub struct ClientCredentials {
    /// The issuer; its discovery document names the token endpoint. Needed unless
    /// `token_url` is set.
    pub issuer: Option<String>,
    /// The token endpoint, used as is (no discovery).
    pub token_url: Option<String>,
    /// The client id.
    pub client_id: String,
    /// The client secret; never logged, never part of an error.
    pub client_secret: String,
    /// The wanted audience: sent as `audience` (Keycloak, Auth0 and others), and as
    /// `resource` (RFC 8707) when it is an absolute URI, since RFC 8707 providers reject
    /// anything else.
    pub audience: Option<String>,
    /// The wanted scope.
    pub scope: Option<String>,
    /// Extra PEM roots for an https provider.
    pub ca_files: Vec<PathBuf>,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("issuer", &self.issuer)
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("audience", &self.audience)
            .field("scope", &self.scope)
            .field("ca_files", &self.ca_files)
            .finish()
    }
}

/// A successful token response.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenResponse {
    /// The access token (a JWT for credproxy's purposes).
    pub access_token: String,
    /// `expires_in`, if the provider sent it.
    pub expires_in: Option<Duration>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// Why no token was obtained. Shows the provider's `error` and `error_description`, never
/// the client secret.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The request itself is unusable (no issuer or token URL, plain-http URL, ...).
    #[error("invalid token request: {0}")]
    Invalid(String),
    /// The HTTP client could not be built (bad CA file, ...).
    #[error("cannot prepare the token request")]
    Client(#[source] crate::IdentityError),
    /// Discovery failed.
    #[error("cannot discover the token endpoint")]
    Discovery(#[source] FetchErrorBox),
    /// The token endpoint could not be reached.
    #[error("cannot reach the token endpoint {url}")]
    Http {
        /// The token endpoint.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The provider refused (an RFC 6749 §5.2 error response).
    #[error("the provider refused the token request ({status}): {error}{}", description.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Provider {
        /// HTTP status.
        status: u16,
        /// The `error` code, e.g. `invalid_client`.
        error: String,
        /// The `error_description`, if any.
        description: Option<String>,
    },
    /// The client secret file cannot be read.
    #[error("cannot read the client secret file {path}")]
    SecretFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The client secret file is empty.
    #[error("the client secret file {path} is empty")]
    EmptySecret {
        /// The file.
        path: PathBuf,
    },
    /// The dev issuer could not sign a token.
    #[error(transparent)]
    Dev(crate::IdentityError),
    /// The provider answered with something that is not a usable token response.
    #[error("unusable token response ({status}): {reason}")]
    BadResponse {
        /// HTTP status.
        status: u16,
        /// What is wrong with it.
        reason: String,
    },
}

/// An opaque wrapper so the internal fetch error type stays private.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct FetchErrorBox(FetchError);

/// Run the client-credentials grant.
///
/// The token endpoint is `token_url`, or discovered from `issuer`. The client
/// authenticates with `client_secret_basic` unless discovery lists only
/// `client_secret_post` (RFC 6749 §2.3.1 makes Basic the method every server supports).
pub async fn client_credentials(req: &ClientCredentials) -> Result<TokenResponse, TokenError> {
    if req.client_id.is_empty() {
        return Err(TokenError::Invalid("the client id is empty".to_owned()));
    }
    let client = http::client(&req.ca_files, TOKEN_HTTP_TIMEOUT).map_err(TokenError::Client)?;
    let (token_url, use_post) = match (&req.token_url, &req.issuer) {
        (Some(url), _) => (url.clone(), false),
        (None, Some(issuer)) => {
            http::acceptable_url(issuer).map_err(TokenError::Invalid)?;
            let doc = http::discover(&client, issuer)
                .await
                .map_err(|e| TokenError::Discovery(FetchErrorBox(e)))?;
            let url = doc
                .get("token_endpoint")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    TokenError::Invalid("the discovery document has no token_endpoint".to_owned())
                })?
                .to_owned();
            (url, only_post(&doc))
        }
        (None, None) => {
            return Err(TokenError::Invalid(
                "neither an issuer nor a token URL was given".to_owned(),
            ))
        }
    };
    // The client secret travels in this request: never over plain http to a remote host.
    http::acceptable_url(&token_url).map_err(TokenError::Invalid)?;

    let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
    if let Some(scope) = &req.scope {
        form.push(("scope", scope));
    }
    if let Some(audience) = &req.audience {
        form.push(("audience", audience));
        if reqwest::Url::parse(audience).is_ok() {
            form.push(("resource", audience));
        }
    }
    let mut request = client.post(&token_url);
    if use_post {
        form.push(("client_id", &req.client_id));
        form.push(("client_secret", &req.client_secret));
    } else {
        // RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let credentials = format!("{}:{}", encode(&req.client_id), encode(&req.client_secret));
        request = request.header(
            reqwest::header::AUTHORIZATION,
            format!("Basic {}", STANDARD.encode(credentials)),
        );
    }
    let response = request
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&form)
        .send()
        .await
        .map_err(|source| TokenError::Http {
            url: token_url.clone(),
            source,
        })?;
    let status = response.status().as_u16();
    let body = http::read_limited(response, &token_url, MAX_TOKEN_RESPONSE_BYTES)
        .await
        .map_err(|e| TokenError::BadResponse {
            status,
            reason: e.to_string(),
        })?;
    parse_token_response(status, &body)
}

fn only_post(doc: &serde_json::Map<String, Value>) -> bool {
    let Some(methods) = doc
        .get("token_endpoint_auth_methods_supported")
        .and_then(Value::as_array)
    else {
        return false;
    };
    let has = |m: &str| methods.iter().any(|v| v.as_str() == Some(m));
    !has("client_secret_basic") && has("client_secret_post")
}

fn parse_token_response(status: u16, body: &[u8]) -> Result<TokenResponse, TokenError> {
    let bad = |reason: &str| TokenError::BadResponse {
        status,
        reason: reason.to_owned(),
    };
    let doc: Value = serde_json::from_slice(body).map_err(|_| bad("not JSON"))?;
    if !(200..300).contains(&status) {
        return match doc.get("error").and_then(Value::as_str) {
            Some(error) => Err(TokenError::Provider {
                status,
                error: sanitize(error),
                description: doc
                    .get("error_description")
                    .and_then(Value::as_str)
                    .map(sanitize),
            }),
            None => Err(bad("an error status without an OAuth error code")),
        };
    }
    let access_token = doc
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("no access_token"))?
        .to_owned();
    if let Some(kind) = doc.get("token_type").and_then(Value::as_str) {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(bad("the token type is not Bearer"));
        }
    }
    let expires_in = doc
        .get("expires_in")
        .and_then(Value::as_u64)
        .map(Duration::from_secs);
    Ok(TokenResponse {
        access_token,
        expires_in,
    })
}

/// Provider text is echoed to a terminal: drop control characters and cap the length.
fn sanitize(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_PROVIDER_TEXT)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_success_and_errors() {
        let ok = parse_token_response(
            200,
            br#"{"access_token":"a.b.c","token_type":"Bearer","expires_in":60}"#,
        )
        .unwrap();
        assert_eq!(ok.access_token, "a.b.c");
        assert_eq!(ok.expires_in, Some(Duration::from_secs(60)));
        assert!(!format!("{ok:?}").contains("a.b.c"));

        let err = parse_token_response(
            401,
            br#"{"error":"invalid_client","error_description":"client authentication failed\u001b[31m"}"#,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("invalid_client"), "{text}");
        assert!(text.contains("client authentication failed"), "{text}");
        assert!(!text.contains('\u{1b}'));

        assert!(matches!(
            parse_token_response(200, br#"{"access_token":"x","token_type":"DPoP"}"#),
            Err(TokenError::BadResponse { .. })
        ));
        assert!(matches!(
            parse_token_response(500, b"<html>"),
            Err(TokenError::BadResponse { .. })
        ));
    }

    #[test]
    fn debug_redacts_secret() {
        let req = ClientCredentials {
            issuer: None,
            token_url: Some("https://id.example/token".into()),
            client_id: "c".into(),
            client_secret: "hunter2".into(),
            audience: None,
            scope: None,
            ca_files: vec![],
        };
        assert!(!format!("{req:?}").contains("hunter2"));
    }

    #[test]
    fn post_only_when_basic_is_not_offered() {
        let doc = |methods: Value| {
            serde_json::json!({ "token_endpoint_auth_methods_supported": methods })
                .as_object()
                .unwrap()
                .clone()
        };
        assert!(only_post(&doc(serde_json::json!(["client_secret_post"]))));
        assert!(!only_post(&doc(serde_json::json!([
            "client_secret_basic",
            "client_secret_post"
        ]))));
        assert!(!only_post(&serde_json::Map::new()));
    }
}
