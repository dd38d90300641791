#![allow(dead_code, clippy::unwrap_used)]

use credproxy_audit::{AuditRecord, CredentialUse, Decision, Outcome};

pub fn rid(n: u64) -> String {
    format!("{n:032x}")
}

pub fn cred_record(n: u64, agent: &str) -> AuditRecord {
    let mut r = AuditRecord::new(rid(n), "api.example.com:443");
    r.listener = "main".into();
    r.peer = "tcp:127.0.0.1:40000".into();
    r.agent_id = Some(agent.into());
    r.method = "POST".into();
    r.path = "/v1/messages".into();
    r.credentials = vec![CredentialUse {
        id: "anthropic".into(),
        placeholder: "CREDPROXY_ANTHROPIC".into(),
        location: "header:authorization".into(),
    }];
    r.decision = Decision::Allow;
    r
}

pub fn plain_record(n: u64) -> AuditRecord {
    let mut r = AuditRecord::new(rid(n), "docs.example.org:443");
    r.method = "GET".into();
    r.path = "/".into();
    r.decision = Decision::Deny;
    r.deny_reasons = vec!["not_allowlisted".into()];
    r.outcome = Some(outcome(403, "policy_denied"));
    r
}

pub fn outcome(status: u16, reason: &str) -> Outcome {
    Outcome {
        status: Some(status),
        reason: reason.into(),
        bytes_up: 10,
        bytes_down: 20,
        scrub_count: 1,
        latency_ms: 5,
        completed_at: credproxy_audit::record::now_rfc3339(),
    }
}
