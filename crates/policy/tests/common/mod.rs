//! Inputs shared by the integration tests.

#![allow(dead_code)]

use credproxy_policy::{
    CredentialInput, IdentityInput, ListenerInput, PolicyInput, RequestInput, INPUT_VERSION,
};

/// agent-a calls `GET https://api.github.com/repos/acme/widgets/pulls?state=open&per_page=50`
/// with the GitHub credential's placeholder in the Authorization header.
pub fn representative_input() -> PolicyInput {
    PolicyInput {
        version: INPUT_VERSION,
        identity: Some(agent("agent-a", &["github-reader"])),
        request: request("GET", "api.github.com", "/repos/acme/widgets/pulls"),
        credentials: vec![github()],
        listener: ListenerInput {
            name: "agents".to_owned(),
            kind: "tcp".to_owned(),
            peer: "10.0.2.15:49152".to_owned(),
        },
        time: "2025-01-01T12:00:00Z".to_owned(),
    }
}

pub fn agent(agent_id: &str, roles: &[&str]) -> IdentityInput {
    IdentityInput {
        agent_id: agent_id.to_owned(),
        subject: format!("svc-{agent_id}"),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        groups: vec!["agents".to_owned()],
        issuer: "https://idp.example.com/realms/agents".to_owned(),
    }
}

pub fn request(method: &str, host: &str, path: &str) -> RequestInput {
    RequestInput {
        method: method.to_owned(),
        authority: format!("{host}:443"),
        host: host.to_owned(),
        port: 443,
        scheme: "https".to_owned(),
        path: path.to_owned(),
        query_keys: vec!["state".to_owned(), "per_page".to_owned()],
        allowlisted: true,
    }
}

pub fn github() -> CredentialInput {
    CredentialInput {
        id: "github".to_owned(),
        r#type: "bearer".to_owned(),
        location: "header:authorization".to_owned(),
        bound_domains: vec!["api.github.com".to_owned()],
        bound: true,
        allowed_roles: vec!["github-reader".to_owned(), "github-admin".to_owned()],
    }
}

pub fn openai_unbound() -> CredentialInput {
    CredentialInput {
        id: "openai".to_owned(),
        r#type: "bearer".to_owned(),
        location: "header:authorization".to_owned(),
        bound_domains: vec!["api.openai.com".to_owned()],
        bound: false,
        allowed_roles: vec!["github-reader".to_owned()],
    }
}
