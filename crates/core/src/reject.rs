//! The one closed type for every way the proxy refuses or fails a request.
//!
//! Each variant maps, exhaustively, to an HTTP status, a stable `reason()` label (used in
//! metrics, logs and audit records; never renamed), the party at fault and whether the agent's
//! connection must be closed. `agent_message()` is what the agent reads: one line saying what
//! was refused and what to do. It never contains internal error text or a secret; variants
//! carry only values the agent itself supplied or the operator configured.

use crate::Authority;

/// Who caused a rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectSource {
    Agent,
    Upstream,
    Vault,
    Policy,
    Internal,
}

impl RejectSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectSource::Agent => "agent",
            RejectSource::Upstream => "upstream",
            RejectSource::Vault => "vault",
            RejectSource::Policy => "policy",
            RejectSource::Internal => "internal",
        }
    }
}

/// Why a request was not forwarded, or failed upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// The request is not valid HTTP for a proxy (bad CONNECT target, missing Host …).
    BadRequest { what: String },
    /// An origin-form request reached the proxy listener.
    NotAProxyRequest,
    /// An `https://` absolute-form request without CONNECT: the agent must tunnel instead.
    HttpsWithoutConnect,
    /// The destination is an IP address literal (in any spelling).
    IpLiteral { host: String },
    /// The destination is not in `allowed_domains`.
    DestinationNotAllowed { authority: Authority },
    /// The destination resolved to an address in a refused range.
    PrivateAddress { authority: Authority },
    /// The inner `Host`/`:authority` or the TLS SNI disagrees with the CONNECT target.
    AuthorityMismatch {
        expected: Authority,
        got: String,
        field: &'static str,
    },
    /// Only WebSocket upgrades are relayed.
    UpgradeNotAllowed { protocol: String },
    /// Request headers exceed `limits.max_header_bytes`.
    HeadersTooLarge,
    /// The name of the destination did not resolve.
    DnsFailure { authority: Authority },
    /// TCP connection to the upstream failed.
    UpstreamUnreachable { authority: Authority },
    /// The upstream's certificate did not verify, or the TLS handshake failed.
    UpstreamTls { authority: Authority },
    /// The upstream spoke broken HTTP or reset the stream.
    UpstreamProtocol { authority: Authority },
    /// The upstream did not answer in time.
    UpstreamTimeout { authority: Authority },
    /// The proxy is at `limits.max_connections`.
    TooManyConnections,
    /// A bug or an unexpected local failure; details are logged, never sent.
    Internal,
}

impl Reject {
    pub fn status(&self) -> u16 {
        match self {
            Reject::BadRequest { .. }
            | Reject::NotAProxyRequest
            | Reject::HttpsWithoutConnect
            | Reject::UpgradeNotAllowed { .. } => 400,
            Reject::IpLiteral { .. }
            | Reject::DestinationNotAllowed { .. }
            | Reject::PrivateAddress { .. } => 403,
            Reject::AuthorityMismatch { .. } => 421,
            Reject::HeadersTooLarge => 431,
            Reject::DnsFailure { .. }
            | Reject::UpstreamUnreachable { .. }
            | Reject::UpstreamTls { .. }
            | Reject::UpstreamProtocol { .. } => 502,
            Reject::TooManyConnections => 503,
            Reject::UpstreamTimeout { .. } => 504,
            Reject::Internal => 500,
        }
    }

    /// Stable label for metrics, logs and audit.
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::BadRequest { .. } => "bad_request",
            Reject::NotAProxyRequest => "not_a_proxy_request",
            Reject::HttpsWithoutConnect => "https_without_connect",
            Reject::IpLiteral { .. } => "ip_literal",
            Reject::DestinationNotAllowed { .. } => "destination_not_allowed",
            Reject::PrivateAddress { .. } => "destination_private",
            Reject::AuthorityMismatch { .. } => "authority_mismatch",
            Reject::UpgradeNotAllowed { .. } => "upgrade_not_allowed",
            Reject::HeadersTooLarge => "headers_too_large",
            Reject::DnsFailure { .. } => "dns_failure",
            Reject::UpstreamUnreachable { .. } => "upstream_unreachable",
            Reject::UpstreamTls { .. } => "upstream_tls",
            Reject::UpstreamProtocol { .. } => "upstream_protocol",
            Reject::UpstreamTimeout { .. } => "upstream_timeout",
            Reject::TooManyConnections => "too_many_connections",
            Reject::Internal => "internal",
        }
    }

    pub fn source(&self) -> RejectSource {
        match self {
            Reject::BadRequest { .. }
            | Reject::NotAProxyRequest
            | Reject::HttpsWithoutConnect
            | Reject::IpLiteral { .. }
            | Reject::AuthorityMismatch { .. }
            | Reject::UpgradeNotAllowed { .. }
            | Reject::HeadersTooLarge => RejectSource::Agent,
            Reject::DestinationNotAllowed { .. } | Reject::PrivateAddress { .. } => {
                RejectSource::Policy
            }
            Reject::DnsFailure { .. }
            | Reject::UpstreamUnreachable { .. }
            | Reject::UpstreamTls { .. }
            | Reject::UpstreamProtocol { .. }
            | Reject::UpstreamTimeout { .. } => RejectSource::Upstream,
            Reject::TooManyConnections | Reject::Internal => RejectSource::Internal,
        }
    }

    /// Whether the agent's connection must be closed after the response. Framing and
    /// authority errors close it: what follows on that connection cannot be trusted.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Reject::BadRequest { .. }
                | Reject::AuthorityMismatch { .. }
                | Reject::HeadersTooLarge
                | Reject::TooManyConnections
                | Reject::Internal
        )
    }

    /// One line for the agent: what was refused, why, and what to do.
    pub fn agent_message(&self) -> String {
        match self {
            Reject::BadRequest { what } => format!("malformed request: {what}"),
            Reject::NotAProxyRequest => "this is an HTTP proxy: send absolute-form requests (http://host/path) or CONNECT host:port".into(),
            Reject::HttpsWithoutConnect => "https:// URLs must be tunnelled: use CONNECT host:443 (set HTTPS_PROXY to this proxy)".into(),
            Reject::IpLiteral { host } => format!("destination {host} is an IP address; only allowlisted DNS names may be reached"),
            Reject::DestinationNotAllowed { authority } => format!("destination {authority} is not in the allowlist; ask the operator to add it to allowed_domains"),
            Reject::PrivateAddress { authority } => format!("destination {authority} resolves to a private or local address, which is refused"),
            Reject::AuthorityMismatch { expected, got, field } => format!("{field} {got:?} does not match the CONNECT target {expected}; send requests only for the host you tunnelled to"),
            Reject::UpgradeNotAllowed { protocol } => format!("upgrade to {protocol:?} is not allowed; only websocket upgrades are relayed"),
            Reject::HeadersTooLarge => "request headers are too large".into(),
            Reject::DnsFailure { authority } => format!("could not resolve {authority}"),
            Reject::UpstreamUnreachable { authority } => format!("could not connect to {authority}"),
            Reject::UpstreamTls { authority } => format!("the TLS certificate of {authority} could not be verified; the request was not sent"),
            Reject::UpstreamProtocol { authority } => format!("{authority} sent an invalid response"),
            Reject::UpstreamTimeout { authority } => format!("{authority} did not respond in time"),
            Reject::TooManyConnections => "the proxy is at its connection limit; retry later".into(),
            Reject::Internal => "internal proxy error; the operator can find details in the proxy log by request id".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_labels_are_stable() {
        let a = Authority::parse_connect("x.example:443").unwrap();
        let cases = [
            (Reject::NotAProxyRequest, 400, "not_a_proxy_request"),
            (
                Reject::DestinationNotAllowed {
                    authority: a.clone(),
                },
                403,
                "destination_not_allowed",
            ),
            (
                Reject::AuthorityMismatch {
                    expected: a.clone(),
                    got: "y".into(),
                    field: "Host",
                },
                421,
                "authority_mismatch",
            ),
            (Reject::HeadersTooLarge, 431, "headers_too_large"),
            (
                Reject::UpstreamTls {
                    authority: a.clone(),
                },
                502,
                "upstream_tls",
            ),
            (Reject::TooManyConnections, 503, "too_many_connections"),
            (
                Reject::UpstreamTimeout { authority: a },
                504,
                "upstream_timeout",
            ),
        ];
        for (r, status, reason) in cases {
            assert_eq!(r.status(), status, "{r:?}");
            assert_eq!(r.reason(), reason);
            assert!(!r.agent_message().contains('\n'));
        }
    }
}
