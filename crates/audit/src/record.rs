//! The typed audit record: one per request, whatever its fate.
//!
//! The types carry identifiers only (credential ids, placeholders, token-id hashes, reason
//! labels). There is deliberately no field that could hold a secret value, a raw bearer token
//! or a claim set: the proxy cannot hand the spool what the spool has no place for.

use serde::{Deserialize, Serialize};

/// What the proxy decided for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Forwarded upstream (possibly with credentials injected).
    Allow,
    /// Refused by identity, allowlist or policy; nothing was sent upstream.
    Deny,
    /// Failed before a decision could be made (dependency down, internal error).
    Error,
}

impl Decision {
    /// Stable label used in queries and search attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Error => "error",
        }
    }
}

/// One credential injected into a request, by reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialUse {
    /// The credential's configured id (e.g. `anthropic-prod`), never its value.
    pub id: String,
    /// The placeholder the agent used (e.g. `CREDPROXY_ANTHROPIC`): public by design.
    pub placeholder: String,
    /// Where it was injected: `header:authorization`, `query:key`, `body`.
    pub location: String,
}

/// The completion fields, filled when the response ends or fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Upstream status, or the status the proxy answered with when it refused (None when the
    /// connection failed before any status).
    pub status: Option<u16>,
    /// `ok`, or a stable reject/failure label (e.g. `upstream_reset`, `policy_denied`).
    pub reason: String,
    /// Request body bytes sent upstream.
    pub bytes_up: u64,
    /// Response body bytes sent back to the agent.
    pub bytes_down: u64,
    /// Number of secret occurrences scrubbed from the response.
    pub scrub_count: u64,
    /// Time from request head received to response end.
    pub latency_ms: u64,
    /// RFC 3339 UTC time the outcome was known.
    pub completed_at: String,
}

impl Outcome {
    /// The Temporal/CLI status label: `success`, `denied` or `error`.
    ///
    /// `timeout` is produced only by the workflow, when no outcome arrives in time.
    pub fn status_label(&self, decision: Decision) -> &'static str {
        match decision {
            Decision::Deny => "denied",
            Decision::Error => "error",
            Decision::Allow if self.reason == "ok" => "success",
            Decision::Allow => "error",
        }
    }
}

/// One audit record: what happened to one request.
///
/// `id` is the proxy's request id (32 lowercase hex digits) and is also the Temporal workflow id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Request id, 32 lowercase hex digits.
    pub id: String,
    /// RFC 3339 UTC time the request head was received.
    pub time: String,
    /// The listener name that accepted the connection.
    pub listener: String,
    /// The peer address as text (`tcp:127.0.0.1:5555`, `vsock:3:1234`, `unix`).
    pub peer: String,
    /// Verified agent id (token subject), if identification succeeded.
    pub agent_id: Option<String>,
    /// SHA-256 (hex) of the token's `jti` or of the raw token: lets an operator correlate
    /// requests of one token without storing the token.
    pub token_id_hash: Option<String>,
    /// Canonical destination `host:port`.
    pub destination: String,
    /// HTTP method.
    pub method: String,
    /// Request path without the query string.
    pub path: String,
    /// Names of the query parameters (values are never recorded).
    pub query_keys: Vec<String>,
    /// Credentials injected, by id and placeholder.
    pub credentials: Vec<CredentialUse>,
    /// The decision.
    pub decision: Decision,
    /// Stable deny reason labels (empty when allowed).
    pub deny_reasons: Vec<String>,
    /// Misuse alarms raised (e.g. `placeholder_for_wrong_host`).
    pub misuse_alarms: Vec<String>,
    /// Hash of the policy bundle that decided.
    pub policy_hash: Option<String>,
    /// Completion fields; `None` until the response ends or fails.
    pub outcome: Option<Outcome>,
}

impl AuditRecord {
    /// A record with the given id and destination and everything else empty; convenient for
    /// building records field by field.
    pub fn new(id: impl Into<String>, destination: impl Into<String>) -> AuditRecord {
        AuditRecord {
            id: id.into(),
            time: now_rfc3339(),
            listener: String::new(),
            peer: String::new(),
            agent_id: None,
            token_id_hash: None,
            destination: destination.into(),
            method: String::new(),
            path: String::new(),
            query_keys: Vec::new(),
            credentials: Vec::new(),
            decision: Decision::Allow,
            deny_reasons: Vec::new(),
            misuse_alarms: Vec::new(),
            policy_hash: None,
            outcome: None,
        }
    }

    /// The status label used by the CLI filter and the Temporal `CredProxyStatus` attribute:
    /// `in_progress` until completed, then `success`, `denied` or `error`.
    pub fn status_label(&self) -> &'static str {
        match (&self.outcome, self.decision) {
            (Some(o), d) => o.status_label(d),
            (None, Decision::Deny) => "denied",
            (None, Decision::Error) => "error",
            (None, Decision::Allow) => "in_progress",
        }
    }

    /// Whether the spool must make this record durable before the request proceeds.
    pub fn is_credentialed(&self) -> bool {
        !self.credentials.is_empty()
    }
}

/// Splits a request target into the path (kept) and the query parameter names (kept), dropping
/// every query value: values routinely carry keys and tokens.
pub fn split_path_and_query_keys(target: &str) -> (String, Vec<String>) {
    let target = target.split('#').next().unwrap_or("");
    match target.split_once('?') {
        None => (target.to_string(), Vec::new()),
        Some((path, query)) => {
            let keys = query
                .split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| kv.split_once('=').map_or(kv, |(k, _)| k).to_string())
                .collect();
            (path.to_string(), keys)
        }
    }
}

/// The value for [`AuditRecord::token_id_hash`]: SHA-256 (hex) of the token's `jti`, or of the
/// raw token when it has none. One-way, so the spool can correlate without holding the token.
pub fn token_id_hash(jti_or_token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(jti_or_token.as_bytes()))
}

/// Current time as RFC 3339 UTC with millisecond precision (fixed width, so lexical order is
/// time order).
pub fn now_rfc3339() -> String {
    format_rfc3339(time::OffsetDateTime::now_utc())
}

pub(crate) fn format_rfc3339(t: time::OffsetDateTime) -> String {
    // By hand rather than `format!`: the spool writer stamps every batch, and the formatting
    // machinery cost ten times the digits themselves.
    let t = t.to_offset(time::UtcOffset::UTC);
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    // Years outside 0..=9999 cannot be written in this fixed width; clamp rather than garble.
    put(0, 4, t.year().clamp(0, 9999).unsigned_abs());
    put(5, 2, u32::from(u8::from(t.month())));
    put(8, 2, u32::from(t.day()));
    put(11, 2, u32::from(t.hour()));
    put(14, 2, u32::from(t.minute()));
    put(17, 2, u32::from(t.second()));
    put(20, 3, u32::from(t.millisecond()));
    b.iter().copied().map(char::from).collect()
}

pub(crate) fn parse_rfc3339(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_dropped() {
        let (p, k) = split_path_and_query_keys("/v1/x?key=SECRET&b=2&flag#frag");
        assert_eq!(p, "/v1/x");
        assert_eq!(k, vec!["key", "b", "flag"]);
        let (p, k) = split_path_and_query_keys("/plain");
        assert_eq!(p, "/plain");
        assert!(k.is_empty());
    }

    #[test]
    fn time_format_matches_the_formatter() {
        let at = |y, m, d, hh, mm, ss, ms| {
            time::Date::from_calendar_date(y, m, d)
                .unwrap()
                .with_hms_milli(hh, mm, ss, ms)
                .unwrap()
                .assume_utc()
        };
        let t = at(2026, time::Month::March, 7, 4, 5, 6, 789);
        assert_eq!(format_rfc3339(t), "2026-03-07T04:05:06.789Z");
        let t = at(999, time::Month::December, 31, 23, 59, 59, 1);
        assert_eq!(format_rfc3339(t), "0999-12-31T23:59:59.001Z");
    }

    #[test]
    fn time_format_round_trips() {
        let s = now_rfc3339();
        assert_eq!(s.len(), 24);
        assert!(parse_rfc3339(&s).is_some());
    }
}
