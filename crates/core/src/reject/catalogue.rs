//! The catalogue of refusals: one example of every variant (and of every reason label a
//! variant can carry), rendered as `docs/reasons.md`. A test keeps the document equal to
//! the rendering, so the list operators read is the list the code has.
//!
//! Adding a variant: the compiler asks for its arm in `ordinal` (give it the next number and
//! raise `VARIANTS`); the test then asks for its example here.

use super::{AuthFailure, MisuseKind, PolicyFailure, Reject, SecretFailure};
use crate::Authority;

impl Reject {
    /// How many variants `Reject` has (see `ordinal`).
    pub const VARIANTS: usize = 37;

    /// A number per variant, by an exhaustive match: a new variant does not compile until
    /// it has one.
    pub fn ordinal(&self) -> usize {
        match self {
            Reject::BadRequest { .. } => 0,
            Reject::NotAProxyRequest => 1,
            Reject::HttpsWithoutConnect => 2,
            Reject::IpLiteral { .. } => 3,
            Reject::DestinationNotAllowed { .. } => 4,
            Reject::PrivateAddress { .. } => 5,
            Reject::AuthorityMismatch { .. } => 6,
            Reject::UpgradeNotAllowed { .. } => 7,
            Reject::HeadersTooLarge => 8,
            Reject::DnsFailure { .. } => 9,
            Reject::UpstreamUnreachable { .. } => 10,
            Reject::UpstreamTls { .. } => 11,
            Reject::UpstreamProtocol { .. } => 12,
            Reject::UpstreamTimeout { .. } => 13,
            Reject::TooManyConnections => 14,
            Reject::ProxyAuthRequired { .. } => 15,
            Reject::IdentityUnavailable => 16,
            Reject::ListenerAgentMismatch { .. } => 17,
            Reject::ListenerTokenUnavailable { .. } => 18,
            Reject::PlaceholderMisuse { .. } => 19,
            Reject::PolicyDenied { .. } => 20,
            Reject::PolicyUnavailable { .. } => 21,
            Reject::SecretUnavailable { .. } => 22,
            Reject::SecretInvalid { .. } => 23,
            Reject::AuditUnavailable => 24,
            Reject::UpstreamEncoding { .. } => 25,
            Reject::Framing { .. } => 26,
            Reject::NestedConnect => 27,
            Reject::BodyTooLarge { .. } => 28,
            Reject::BodyTimeout => 29,
            Reject::IdentityConnectionLimit => 30,
            Reject::IdentityStreamLimit => 31,
            Reject::AgentTokenInRequest { .. } => 32,
            Reject::InternalServiceUnavailable { .. } => 33,
            Reject::UpstreamDecodeLimit { .. } => 34,
            Reject::ScrubSetUnavailable => 35,
            Reject::Internal => 36,
        }
    }

    /// One example of every variant, and of every reason label a variant can carry, with
    /// placeholder values (`api.example.com`, `agent-a`, …).
    pub fn catalogue() -> Vec<Reject> {
        let a =
            || Authority::parse_connect("api.example.com:443").unwrap_or_else(|_| unreachable!());
        let mut all = vec![
            Reject::BadRequest {
                what: "invalid request target".into(),
            },
            Reject::NotAProxyRequest,
            Reject::HttpsWithoutConnect,
            Reject::IpLiteral {
                host: "203.0.113.7".into(),
            },
            Reject::DestinationNotAllowed { authority: a() },
            Reject::PrivateAddress { authority: a() },
            Reject::AuthorityMismatch {
                expected: a(),
                got: "other.example.com".into(),
                field: "Host",
            },
            Reject::UpgradeNotAllowed {
                protocol: "h2c".into(),
            },
            Reject::HeadersTooLarge,
            Reject::DnsFailure { authority: a() },
            Reject::UpstreamUnreachable { authority: a() },
            Reject::UpstreamTls { authority: a() },
            Reject::UpstreamProtocol { authority: a() },
            Reject::UpstreamTimeout { authority: a() },
            Reject::TooManyConnections,
        ];
        all.extend(AuthFailure::ALL.map(|failure| {
            Reject::ProxyAuthRequired {
                failure,
                message: match failure {
                    AuthFailure::Missing => "no access token was presented",
                    AuthFailure::Expired => "the access token has expired; obtain a new one",
                    AuthFailure::Revoked => {
                        "the token this tunnel was opened with is no longer valid"
                    }
                    AuthFailure::Invalid => "the access token's signature does not verify",
                }
                .into(),
            }
        }));
        all.extend([
            Reject::IdentityUnavailable,
            Reject::ListenerAgentMismatch {
                listener: "vm-a".into(),
            },
            Reject::ListenerTokenUnavailable {
                listener: "vm-a".into(),
                why: "no token obtained yet",
            },
        ]);
        all.extend(MisuseKind::ALL.map(|kind| Reject::PlaceholderMisuse {
            kind,
            message: format!("credential `github` refused ({})", kind.reason()),
        }));
        all.push(Reject::PolicyDenied {
            reasons: vec!["credential github is not for agent-b".into()],
        });
        all.extend(PolicyFailure::ALL.map(|failure| Reject::PolicyUnavailable { failure }));
        all.extend(SecretFailure::ALL.map(|failure| Reject::SecretUnavailable {
            credential: "github".into(),
            failure,
        }));
        all.extend([
            Reject::SecretInvalid {
                credential: "github".into(),
            },
            Reject::AuditUnavailable,
            Reject::UpstreamEncoding {
                authority: a(),
                encoding: "x-custom".into(),
            },
            Reject::Framing {
                what: "Content-Length and Transfer-Encoding together".into(),
            },
            Reject::NestedConnect,
            Reject::BodyTooLarge { limit: 33_554_432 },
            Reject::BodyTimeout,
            Reject::IdentityConnectionLimit,
            Reject::IdentityStreamLimit,
            Reject::AgentTokenInRequest {
                location: "header authorization".into(),
            },
            Reject::InternalServiceUnavailable {
                name: "hub.openclaw.internal".into(),
            },
            Reject::UpstreamDecodeLimit { authority: a() },
            Reject::ScrubSetUnavailable,
            Reject::Internal,
        ]);
        all
    }

    /// `docs/reasons.md`: every reason label with its status, who is at fault, whether the
    /// connection closes, and the agent's message for the example.
    pub fn catalogue_markdown() -> String {
        let mut out = String::from(
            "# Refusal reasons\n\n\
             <!-- Generated from `core::Reject::catalogue()`; `cargo test -p credproxy-core` fails \
             when this file differs. Regenerate with `CREDPROXY_WRITE_REASONS=1 cargo test -p \
             credproxy-core catalogue`. -->\n\n\
             Every refusal or failure the proxy answers with carries its reason in the \
             `x-credproxy-reason` header, the audit record and the metrics \
             (`credproxy_requests_total{outcome,reason}`), and a one-line body ending with the \
             request id. Labels are stable: they are never renamed.\n\n\
             | Reason | Status | At fault | Closes the connection | Example body |\n\
             |---|---|---|---|---|\n",
        );
        for r in Reject::catalogue() {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} | {} |\n",
                r.reason(),
                r.status(),
                r.source().as_str(),
                if r.closes_connection() { "yes" } else { "no" },
                r.agent_message().replace('|', "\\|"),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_catalogue_has_every_variant_and_every_label_once() {
        let all = Reject::catalogue();
        let ordinals: BTreeSet<usize> = all.iter().map(Reject::ordinal).collect();
        assert_eq!(
            ordinals,
            (0..Reject::VARIANTS).collect::<BTreeSet<_>>(),
            "catalogue() needs an example of every variant"
        );
        let mut labels: Vec<&str> = all.iter().map(Reject::reason).collect();
        let n = labels.len();
        labels.sort_unstable();
        labels.dedup();
        // `secret_invalid` is both a variant and a secret failure (same meaning, same status).
        assert_eq!(labels.len(), n - 1, "a label appears twice: {labels:?}");
        for r in &all {
            let body = r.agent_message();
            assert!(!body.contains('\n') && !body.is_empty(), "{r:?}");
        }
    }

    #[test]
    fn docs_reasons_md_is_the_catalogue() {
        let want = Reject::catalogue_markdown();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/reasons.md");
        if std::env::var_os("CREDPROXY_WRITE_REASONS").is_some() {
            std::fs::write(path, &want).unwrap_or_else(|e| panic!("{path}: {e}"));
        }
        let have = include_str!("../../../../docs/reasons.md");
        assert!(
            have == want,
            "docs/reasons.md differs from Reject::catalogue(); regenerate it with \
             CREDPROXY_WRITE_REASONS=1 cargo test -p credproxy-core catalogue (twice: the \
             second run compiles the new file in)"
        );
    }
}
