//! Building the policy input document for a request and applying the decision.

use credproxy_core::{Authority, PeerAddr, Reject, Scheme};
use credproxy_identity::AgentIdentity;
use credproxy_policy::{
    CredentialInput, IdentityInput, ListenerInput, PolicyInput, RequestInput, INPUT_VERSION,
};

use crate::creds::{Credentials, Scan};

/// The identity anonymous mode evaluates requests under: authenticated as nobody, with no
/// roles, so a policy can tell it apart and no credential's role check can pass.
fn anonymous() -> IdentityInput {
    IdentityInput {
        agent_id: "anonymous".into(),
        subject: "anonymous".into(),
        roles: Vec::new(),
        groups: Vec::new(),
        issuer: "none".into(),
    }
}

pub(crate) struct RequestFacts<'a> {
    pub identity: Option<&'a AgentIdentity>,
    pub anonymous_mode: bool,
    pub method: &'a str,
    pub authority: &'a Authority,
    pub scheme: Scheme,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub listener: &'a str,
    pub peer: &'a PeerAddr,
    /// The destination is in the allowlist of the request's generation (re-checked per
    /// request, so a reload that removes a name applies inside open tunnels too).
    pub allowlisted: bool,
    /// When the request was received, on the proxy's clock (`input.time`).
    pub now: std::time::SystemTime,
}

pub(crate) fn input(facts: &RequestFacts<'_>, creds: &Credentials, scan: &Scan) -> PolicyInput {
    let identity = match facts.identity {
        Some(id) => Some(IdentityInput {
            agent_id: id.agent_id.clone(),
            subject: id.subject.clone(),
            roles: id.roles.clone(),
            groups: id.groups.clone(),
            issuer: id.issuer.clone(),
        }),
        None if facts.anonymous_mode => Some(anonymous()),
        None => None,
    };
    let mut query_keys: Vec<String> = facts
        .query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split('=').next().unwrap_or("").to_string())
        .collect();
    query_keys.dedup();
    let credentials = scan
        .uses
        .iter()
        .map(|u| {
            let c = &creds.configs[u.cred];
            CredentialInput {
                id: c.id.clone(),
                r#type: c.kind.as_str().to_string(),
                location: u.loc.describe(),
                bound_domains: c
                    .bound_domains
                    .entries()
                    .iter()
                    .map(|e| e.to_string())
                    .collect(),
                bound: c.bound_domains.allows(facts.authority),
                allowed_roles: c.allowed_roles.clone(),
            }
        })
        .collect();
    PolicyInput {
        version: INPUT_VERSION,
        identity,
        request: RequestInput {
            method: facts.method.to_string(),
            authority: facts.authority.to_string(),
            host: facts.authority.host().to_string(),
            port: facts.authority.port(),
            scheme: facts.scheme.as_str().to_string(),
            path: facts.path.to_string(),
            query_keys,
            allowlisted: facts.allowlisted,
        },
        credentials,
        listener: ListenerInput {
            name: facts.listener.to_string(),
            kind: facts.peer.kind().to_string(),
            peer: facts.peer.to_string(),
        },
        time: humantime::format_rfc3339_seconds(facts.now).to_string(),
    }
}

/// Evaluate; anything but an explicit allow refuses the request.
pub(crate) fn decide(
    engine: &credproxy_policy::PolicyEngine,
    input: &PolicyInput,
) -> Result<(), Reject> {
    match engine.evaluate(input) {
        Ok(d) if d.allow => Ok(()),
        Ok(d) => Err(Reject::PolicyDenied {
            reasons: d.deny_reasons,
        }),
        Err(e) => {
            tracing::error!(error = %e, reason = e.reason(), "policy evaluation failed; denying");
            Err(Reject::PolicyUnavailable {
                failure: e.failure(),
            })
        }
    }
}

/// Whether the request carries a placeholder of a credential whose `allowed_roles` this
/// identity holds none of (another agent's placeholder).
pub(crate) fn uses_ungranted(
    identity: Option<&AgentIdentity>,
    creds: &Credentials,
    scan: &Scan,
) -> bool {
    let roles: &[String] = identity.map_or(&[], |i| &i.roles);
    scan.uses.iter().any(|u| {
        !creds.configs[u.cred]
            .allowed_roles
            .iter()
            .any(|r| roles.contains(r))
    })
}
