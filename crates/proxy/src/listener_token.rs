//! Listener-bound identity (`listeners[].agent_token`): the proxy obtains and refreshes the
//! token of a listener's `agent` itself (client credentials against the OIDC provider, or the
//! dev issuer), and authenticates that listener's requests that carry no
//! `Proxy-Authorization` with it.
//!
//! The token goes through the same [`credproxy_identity::Verifier`] as a token an agent
//! presents (signature, `iss`, `aud`, `exp`, roles; no bypass), and must name the listener's
//! agent. With no valid token the request is refused 503 `listener_token_unavailable` (fail
//! closed). Configuration only allows this where the peer is identified by something the
//! agent cannot choose: a vsock listener with `peer_cid`, a per-VM `vsock_uds` socket, or a
//! Unix socket.
//!
//! Invariant: the token and the client secret never reach logs, errors, `/readyz`, metrics or
//! audit; the agent only learns an agent-safe reason.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use credproxy_config::{AgentTokenConfig, Config, TokenEndpoint};
use credproxy_core::Reject;
use credproxy_identity::{
    AgentIdentity, AuthError, ClientCredentialsGrant, DevGrant, DevIssuer, RefreshTask,
    RefreshingToken, TokenGrant, TokenStatus, TokenUnavailable, Verifier,
};
use tracing::warn;

use crate::ProxyError;

/// How long a request that arrives before the first token request completed waits for it
/// (just after start). Longer than the token request's own timeout.
const FIRST_ATTEMPT_WAIT: Duration = Duration::from_secs(15);

/// One listener's token.
pub(crate) struct ListenerToken {
    pub(crate) listener: String,
    /// The agent the listener is bound to; the token must name it.
    pub(crate) agent: String,
    pub(crate) token: Arc<RefreshingToken>,
    _task: RefreshTask,
}

/// Every listener token, by listener name.
#[derive(Default)]
pub(crate) struct ListenerTokens {
    by_listener: HashMap<String, ListenerToken>,
}

impl ListenerTokens {
    /// Load the dev issuer keys and start one refresher per listener with `agent_token`.
    /// Returns the tokens and the public JWKS of every dev issuer key used (the verifier
    /// trusts them). Must run inside a tokio runtime.
    pub(crate) fn start(
        config: &Config,
        clock: &credproxy_core::Clock,
    ) -> Result<(ListenerTokens, Vec<String>), ProxyError> {
        let mut tokens = ListenerTokens::default();
        let mut dev_jwks = Vec::new();
        let mut dev_keys: HashMap<std::path::PathBuf, Arc<DevIssuer>> = HashMap::new();
        for l in &config.listeners {
            let (Some(t), Some(agent)) = (&l.agent_token, &l.agent) else {
                continue;
            };
            let grant = match t {
                AgentTokenConfig::ClientCredentials(c) => {
                    let (issuer, token_url) = match &c.endpoint {
                        TokenEndpoint::Issuer(i) => (Some(i.clone()), None),
                        TokenEndpoint::TokenUrl(u) => (None, Some(u.clone())),
                    };
                    TokenGrant::ClientCredentials(ClientCredentialsGrant {
                        issuer,
                        token_url,
                        client_id: c.client_id.clone(),
                        client_secret_file: c.client_secret_file.clone(),
                        audience: c.audience.clone(),
                        scope: c.scope.clone(),
                        ca_files: c.ca_files.clone(),
                    })
                }
                AgentTokenConfig::DevIssuer(d) => {
                    let issuer = match dev_keys.get(&d.key_file) {
                        Some(i) => i.clone(),
                        None => {
                            let i = Arc::new(
                                DevIssuer::load_or_create_file(&d.key_file)
                                    .map_err(ProxyError::Identity)?,
                            );
                            dev_jwks.push(i.jwks_json());
                            dev_keys.insert(d.key_file.clone(), i.clone());
                            i
                        }
                    };
                    TokenGrant::Dev(DevGrant {
                        issuer,
                        agent: agent.clone(),
                        roles: d.roles.clone(),
                        ttl: d.ttl,
                    })
                }
            };
            let (token, task) = RefreshingToken::spawn_with_clock(
                format!("listener {}", l.name),
                grant,
                clock.clone(),
            );
            tokens.by_listener.insert(
                l.name.clone(),
                ListenerToken {
                    listener: l.name.clone(),
                    agent: agent.clone(),
                    token,
                    _task: task,
                },
            );
        }
        Ok((tokens, dev_jwks))
    }

    pub(crate) fn get(&self, listener: &str) -> Option<&ListenerToken> {
        self.by_listener.get(listener)
    }

    /// Listener name and token, sorted by name.
    pub(crate) fn all(&self) -> Vec<(&str, &ListenerToken)> {
        let mut v: Vec<_> = self
            .by_listener
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// For metrics: listener name and token.
    pub(crate) fn handles(&self) -> Vec<(String, Arc<RefreshingToken>)> {
        self.all()
            .into_iter()
            .map(|(name, t)| (name.to_owned(), t.token.clone()))
            .collect()
    }
}

impl ListenerToken {
    /// The identity of this listener's agent, from the listener's current token, verified.
    pub(crate) async fn identity(&self, verifier: &Verifier) -> Result<Arc<AgentIdentity>, Reject> {
        if !self.token.attempted() {
            let _ = tokio::time::timeout(FIRST_ATTEMPT_WAIT, self.token.first_attempt()).await;
        }
        let unavailable = |why: &'static str| Reject::ListenerTokenUnavailable {
            listener: self.listener.clone(),
            why,
        };
        let token = self.token.current().map_err(|e| {
            warn!(listener = %self.listener, error = %e, "no valid agent token for this listener; request refused");
            unavailable(match e {
                TokenUnavailable::Pending => "the first token request has not completed",
                TokenUnavailable::Failed(_) => "the identity provider has not issued one",
                TokenUnavailable::Expired(_) => "the token expired and could not be refreshed",
            })
        })?;
        let identity = verifier.verify(&token).await.map_err(|e| match e {
            AuthError::ProviderUnavailable => Reject::IdentityUnavailable,
            other => {
                warn!(listener = %self.listener, reason = other.reason(), "the listener's own agent token was refused by the verifier; check agent_token against identity.oidc");
                unavailable("the token the proxy obtained does not verify")
            }
        })?;
        if identity.agent_id != self.agent {
            warn!(listener = %self.listener, agent = %identity.agent_id, expected = %self.agent, "the listener's own agent token names another agent; check agent_token.client_credentials.client_id");
            return Err(unavailable(
                "the token the proxy obtained names another agent",
            ));
        }
        Ok(identity)
    }

    /// One `/readyz` line and whether the listener can authenticate its agent now.
    pub(crate) async fn readiness(&self, verifier: &Verifier) -> (bool, String) {
        let head = format!("listener {} agent token", self.listener);
        let expires = match self.token.status() {
            TokenStatus::Unavailable(e) => return (false, format!("{head}: unavailable: {e}")),
            TokenStatus::Valid { expires_in, .. } => expires_in,
        };
        let Ok(token) = self.token.current() else {
            return (false, format!("{head}: unavailable: it just expired"));
        };
        match verifier.verify(&token).await {
            Ok(id) if id.agent_id == self.agent => {
                let left = expires
                    .map(|d| format!(", expires in {}s", d.as_secs()))
                    .unwrap_or_default();
                (true, format!("{head}: valid for {}{left}", self.agent))
            }
            Ok(id) => (
                false,
                format!(
                    "{head}: names agent {:?}, not {:?}; check the client id",
                    id.agent_id, self.agent
                ),
            ),
            Err(AuthError::ProviderUnavailable) => (
                false,
                format!("{head}: obtained, not verifiable until the identity keys load"),
            ),
            Err(e) => (
                false,
                format!(
                    "{head}: refused by the verifier ({}); check agent_token against identity.oidc",
                    e.reason()
                ),
            ),
        }
    }
}

/// Merge JWKS documents (`{"keys": [...]}`) into one; a key already present (same JSON) is
/// kept once (`credproxy dev`'s JWKS file holds the same key its listeners use).
pub(crate) fn merge_jwks(docs: &[String]) -> Result<String, String> {
    let mut keys: Vec<serde_json::Value> = Vec::new();
    for doc in docs {
        let v: serde_json::Value =
            serde_json::from_str(doc).map_err(|e| format!("not JSON: {e}"))?;
        match v.get("keys").and_then(serde_json::Value::as_array) {
            Some(k) => {
                for key in k {
                    if !keys.contains(key) {
                        keys.push(key.clone());
                    }
                }
            }
            None => return Err("no \"keys\" array".into()),
        }
    }
    Ok(serde_json::json!({ "keys": keys }).to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn jwks_documents_merge() {
        let merged = super::merge_jwks(&[
            r#"{"keys":[{"kid":"a"}]}"#.into(),
            r#"{"keys":[{"kid":"b"},{"kid":"c"},{"kid":"a"}]}"#.into(),
        ])
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&merged).unwrap();
        assert_eq!(v["keys"].as_array().unwrap().len(), 3);
        assert!(super::merge_jwks(&["{}".into()]).is_err());
    }
}
