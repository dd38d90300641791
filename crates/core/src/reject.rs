//! The one closed type for every way the proxy refuses or fails a request.
//!
//! Each variant maps, exhaustively, to an HTTP status, a stable `reason()` label (used in
//! metrics, logs and audit records; never renamed), the party at fault and whether the agent's
//! connection must be closed. `agent_message()` is what the agent reads: one line saying what
//! was refused and what to do. It never contains internal error text or a secret; variants
//! carry only values the agent itself supplied or the operator configured.

use crate::Authority;

mod catalogue;

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
    /// No usable identity in `Proxy-Authorization`.
    ProxyAuthRequired {
        failure: AuthFailure,
        message: String,
    },
    /// The identity provider has not answered yet; nothing that needs identity can proceed.
    IdentityUnavailable,
    /// A valid identity, but not the one this listener is bound to.
    ListenerAgentMismatch { listener: String },
    /// The listener authenticates its agent with a token the proxy obtains
    /// (`agent_token`), and it has no valid one right now: fail closed.
    ListenerTokenUnavailable {
        listener: String,
        /// Why, in agent-safe words (no provider error text).
        why: &'static str,
    },
    /// A placeholder was used where its credential may not be used (another host, another
    /// location, cleartext) or a placeholder-like string that is not one (near miss).
    PlaceholderMisuse { kind: MisuseKind, message: String },
    /// The policy denied the request; the reasons are the policy's sentences.
    PolicyDenied { reasons: Vec<String> },
    /// The policy could not be evaluated (error or time limit): fail closed.
    PolicyUnavailable { failure: PolicyFailure },
    /// The secret store could not provide a credential's value.
    SecretUnavailable {
        credential: String,
        failure: SecretFailure,
    },
    /// A credential's value cannot be injected safely (e.g. CR/LF in a header value).
    SecretInvalid { credential: String },
    /// The audit spool could not record the use durably: no credential is sent.
    AuditUnavailable,
    /// The upstream used a content encoding the scrubber cannot decode.
    UpstreamEncoding {
        authority: Authority,
        encoding: String,
    },
    /// The request's HTTP/1 framing is ambiguous or malformed (CL+TE, duplicate
    /// Content-Length, an obfuscated Transfer-Encoding, bare LF, a bad chunk size …):
    /// request smuggling is refused, never interpreted (A18).
    Framing { what: String },
    /// A `CONNECT` inside a tunnel: never forwarded upstream.
    NestedConnect,
    /// The request body is larger than `limits.max_body_bytes` where the proxy must read the
    /// whole body (body injection).
    BodyTooLarge { limit: u64 },
    /// The request body stalled for `limits.body_idle_timeout`.
    BodyTimeout,
    /// This identity holds `limits.max_connections_per_identity` connections already.
    IdentityConnectionLimit,
    /// This identity has `limits.max_streams_per_identity` requests in flight already.
    IdentityStreamLimit,
    /// The agent's own proxy token appeared in the request it asked to forward (a header
    /// other than `Proxy-Authorization`, the target): it never leaves the proxy (A21).
    AgentTokenInRequest { location: String },
    /// An internal service (`internal_services`, e.g. the hub) did not answer: its socket
    /// is missing, refused the connection, or it sent no valid response in time.
    InternalServiceUnavailable { name: String },
    /// The upstream's compressed body decodes to more than the proxy allows for its size (a
    /// decompression bomb).
    UpstreamDecodeLimit { authority: Authority },
    /// Not every secret value the proxy must scrub from responses is known yet (the secret
    /// store does not answer): nothing is served unscrubbed.
    ScrubSetUnavailable,
    /// A bug or an unexpected local failure; details are logged, never sent.
    Internal,
}

/// Kinds of placeholder misuse, each a stable reason label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MisuseKind {
    NotBound,
    WrongLocation,
    Cleartext,
    NearMiss,
    LateInBody,
    /// A value that is not the placeholder in a credential's own header, for a host the
    /// credential is bound to (the agent's own key, A27), with `foreign_value: refuse`.
    ForeignValue,
    /// A placeholder of a credential whose `allowed_agents` do not include the requesting
    /// agent (another agent's or another VM's placeholder, A28).
    NotGranted,
}

impl MisuseKind {
    pub const ALL: [MisuseKind; 7] = [
        MisuseKind::NotBound,
        MisuseKind::WrongLocation,
        MisuseKind::Cleartext,
        MisuseKind::NearMiss,
        MisuseKind::LateInBody,
        MisuseKind::ForeignValue,
        MisuseKind::NotGranted,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            MisuseKind::NotBound => "credential_not_bound",
            MisuseKind::WrongLocation => "credential_wrong_location",
            MisuseKind::Cleartext => "credential_cleartext",
            MisuseKind::NearMiss => "placeholder_near_miss",
            MisuseKind::LateInBody => "placeholder_late_in_body",
            MisuseKind::ForeignValue => "credential_foreign_value",
            MisuseKind::NotGranted => "credential_not_granted",
        }
    }
}

/// Why an identity was refused (407), each a stable reason label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No token was presented.
    Missing,
    /// The token (or the one a tunnel was opened with) has expired.
    Expired,
    /// The token's signing key was withdrawn while a tunnel held it.
    Revoked,
    /// Any other verification failure (signature, issuer, audience, form, …).
    Invalid,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 4] = [
        AuthFailure::Missing,
        AuthFailure::Expired,
        AuthFailure::Revoked,
        AuthFailure::Invalid,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::Missing => "identity_missing",
            AuthFailure::Expired => "identity_expired",
            AuthFailure::Revoked => "identity_revoked",
            AuthFailure::Invalid => "identity_invalid",
        }
    }
}

/// Why the policy could not decide (503), each a stable reason label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyFailure {
    /// Evaluation exceeded its time limit.
    Timeout,
    /// Loading, compiling or evaluating the policy failed, or its result was malformed.
    Error,
}

impl PolicyFailure {
    pub const ALL: [PolicyFailure; 2] = [PolicyFailure::Timeout, PolicyFailure::Error];

    pub fn reason(self) -> &'static str {
        match self {
            PolicyFailure::Timeout => "policy_timeout",
            PolicyFailure::Error => "policy_error",
        }
    }
}

/// Why a credential's value could not be read (502), each a stable reason label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretFailure {
    /// The backend is down, authentication is invalid, a timeout, or a configuration that
    /// cannot serve this source.
    Unavailable,
    /// The file, variable or KV secret does not exist.
    NotFound,
    /// It exists but holds no usable value.
    Invalid,
}

impl SecretFailure {
    pub const ALL: [SecretFailure; 3] = [
        SecretFailure::Unavailable,
        SecretFailure::NotFound,
        SecretFailure::Invalid,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            SecretFailure::Unavailable => "secret_unavailable",
            SecretFailure::NotFound => "secret_not_found",
            SecretFailure::Invalid => "secret_invalid",
        }
    }
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
            | Reject::UpstreamProtocol { .. }
            | Reject::InternalServiceUnavailable { .. } => 502,
            Reject::TooManyConnections
            | Reject::IdentityUnavailable
            | Reject::ListenerTokenUnavailable { .. }
            | Reject::PolicyUnavailable { .. }
            | Reject::AuditUnavailable => 503,
            Reject::ProxyAuthRequired { .. } => 407,
            Reject::ListenerAgentMismatch { .. }
            | Reject::PlaceholderMisuse { .. }
            | Reject::PolicyDenied { .. } => 403,
            Reject::SecretUnavailable { .. }
            | Reject::SecretInvalid { .. }
            | Reject::UpstreamEncoding { .. }
            | Reject::UpstreamDecodeLimit { .. } => 502,
            Reject::ScrubSetUnavailable => 503,
            Reject::UpstreamTimeout { .. } => 504,
            Reject::Framing { .. } | Reject::NestedConnect => 400,
            Reject::BodyTooLarge { .. } => 413,
            Reject::BodyTimeout => 408,
            Reject::IdentityConnectionLimit | Reject::IdentityStreamLimit => 429,
            Reject::AgentTokenInRequest { .. } => 403,
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
            Reject::ProxyAuthRequired { failure, .. } => failure.reason(),
            Reject::IdentityUnavailable => "identity_unavailable",
            Reject::ListenerAgentMismatch { .. } => "listener_agent_mismatch",
            Reject::ListenerTokenUnavailable { .. } => "listener_token_unavailable",
            Reject::PlaceholderMisuse { kind, .. } => kind.reason(),
            Reject::PolicyDenied { .. } => "policy_denied",
            Reject::PolicyUnavailable { failure } => failure.reason(),
            Reject::SecretUnavailable { failure, .. } => failure.reason(),
            Reject::SecretInvalid { .. } => "secret_invalid",
            Reject::AuditUnavailable => "audit_unavailable",
            Reject::UpstreamEncoding { .. } => "upstream_encoding",
            Reject::Framing { .. } => "request_framing",
            Reject::NestedConnect => "nested_connect",
            Reject::BodyTooLarge { .. } => "body_too_large",
            Reject::BodyTimeout => "body_timeout",
            Reject::IdentityConnectionLimit => "identity_connection_limit",
            Reject::IdentityStreamLimit => "identity_stream_limit",
            Reject::AgentTokenInRequest { .. } => "agent_token_in_request",
            Reject::InternalServiceUnavailable { .. } => "internal_service_unavailable",
            Reject::UpstreamDecodeLimit { .. } => "upstream_decompression_limit",
            Reject::ScrubSetUnavailable => "scrub_set_unavailable",
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
            | Reject::HeadersTooLarge
            | Reject::Framing { .. }
            | Reject::NestedConnect
            | Reject::BodyTooLarge { .. }
            | Reject::BodyTimeout
            | Reject::IdentityConnectionLimit
            | Reject::IdentityStreamLimit
            | Reject::AgentTokenInRequest { .. } => RejectSource::Agent,
            Reject::DestinationNotAllowed { .. }
            | Reject::PrivateAddress { .. }
            | Reject::PolicyDenied { .. }
            | Reject::PolicyUnavailable { .. } => RejectSource::Policy,
            Reject::ProxyAuthRequired { .. }
            | Reject::ListenerAgentMismatch { .. }
            | Reject::PlaceholderMisuse { .. } => RejectSource::Agent,
            Reject::SecretUnavailable { .. }
            | Reject::SecretInvalid { .. }
            | Reject::ScrubSetUnavailable => RejectSource::Vault,
            Reject::UpstreamEncoding { .. } | Reject::UpstreamDecodeLimit { .. } => {
                RejectSource::Upstream
            }
            Reject::IdentityUnavailable
            | Reject::ListenerTokenUnavailable { .. }
            | Reject::AuditUnavailable => RejectSource::Internal,
            Reject::DnsFailure { .. }
            | Reject::UpstreamUnreachable { .. }
            | Reject::UpstreamTls { .. }
            | Reject::UpstreamProtocol { .. }
            | Reject::UpstreamTimeout { .. } => RejectSource::Upstream,
            Reject::TooManyConnections
            | Reject::Internal
            | Reject::InternalServiceUnavailable { .. } => RejectSource::Internal,
        }
    }

    /// Whether the refusal is a misuse alarm in itself (a sign of prompt injection or an
    /// exfiltration attempt): counted in `credproxy_misuse_alarms_total` and recorded in the
    /// audit record's `misuse_alarms`.
    pub fn is_misuse(&self) -> bool {
        match self {
            Reject::PlaceholderMisuse { .. } | Reject::AgentTokenInRequest { .. } => true,
            Reject::BadRequest { .. }
            | Reject::NotAProxyRequest
            | Reject::HttpsWithoutConnect
            | Reject::IpLiteral { .. }
            | Reject::DestinationNotAllowed { .. }
            | Reject::PrivateAddress { .. }
            | Reject::AuthorityMismatch { .. }
            | Reject::UpgradeNotAllowed { .. }
            | Reject::HeadersTooLarge
            | Reject::Framing { .. }
            | Reject::NestedConnect
            | Reject::BodyTooLarge { .. }
            | Reject::BodyTimeout
            | Reject::IdentityConnectionLimit
            | Reject::IdentityStreamLimit
            | Reject::ProxyAuthRequired { .. }
            | Reject::ListenerAgentMismatch { .. }
            | Reject::PolicyDenied { .. }
            | Reject::PolicyUnavailable { .. }
            | Reject::SecretUnavailable { .. }
            | Reject::SecretInvalid { .. }
            | Reject::ScrubSetUnavailable
            | Reject::UpstreamEncoding { .. }
            | Reject::UpstreamDecodeLimit { .. }
            | Reject::DnsFailure { .. }
            | Reject::UpstreamUnreachable { .. }
            | Reject::UpstreamTls { .. }
            | Reject::UpstreamProtocol { .. }
            | Reject::UpstreamTimeout { .. }
            | Reject::IdentityUnavailable
            | Reject::ListenerTokenUnavailable { .. }
            | Reject::AuditUnavailable
            | Reject::TooManyConnections
            | Reject::Internal
            | Reject::InternalServiceUnavailable { .. } => false,
        }
    }

    /// Whether the agent's connection must be closed after the response. Framing and
    /// authority errors close it: what follows on that connection cannot be trusted.
    pub fn closes_connection(&self) -> bool {
        match self {
            Reject::BadRequest { .. }
            | Reject::AuthorityMismatch { .. }
            | Reject::HeadersTooLarge
            | Reject::TooManyConnections
            | Reject::Internal
            | Reject::ListenerAgentMismatch { .. }
            | Reject::Framing { .. }
            | Reject::NestedConnect
            | Reject::BodyTooLarge { .. }
            | Reject::BodyTimeout
            | Reject::AgentTokenInRequest { .. } => true,
            // A tunnel whose token expired or was revoked must be reopened with a fresh one.
            Reject::ProxyAuthRequired { failure, .. } => {
                matches!(failure, AuthFailure::Expired | AuthFailure::Revoked)
            }
            Reject::NotAProxyRequest
            | Reject::HttpsWithoutConnect
            | Reject::IpLiteral { .. }
            | Reject::DestinationNotAllowed { .. }
            | Reject::PrivateAddress { .. }
            | Reject::UpgradeNotAllowed { .. }
            | Reject::DnsFailure { .. }
            | Reject::UpstreamUnreachable { .. }
            | Reject::UpstreamTls { .. }
            | Reject::UpstreamProtocol { .. }
            | Reject::UpstreamTimeout { .. }
            | Reject::IdentityUnavailable
            | Reject::ListenerTokenUnavailable { .. }
            | Reject::PlaceholderMisuse { .. }
            | Reject::PolicyDenied { .. }
            | Reject::PolicyUnavailable { .. }
            | Reject::SecretUnavailable { .. }
            | Reject::SecretInvalid { .. }
            | Reject::AuditUnavailable
            | Reject::UpstreamEncoding { .. }
            | Reject::IdentityConnectionLimit
            | Reject::IdentityStreamLimit
            | Reject::InternalServiceUnavailable { .. }
            | Reject::UpstreamDecodeLimit { .. }
            | Reject::ScrubSetUnavailable => false,
        }
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
            Reject::ProxyAuthRequired { message, .. } => format!("proxy authentication required: {message}"),
            Reject::IdentityUnavailable => "the identity provider is not reachable yet; retry shortly".into(),
            Reject::ListenerAgentMismatch { listener } => format!("this listener ({listener}) is bound to another agent; use your own channel"),
            Reject::ListenerTokenUnavailable { listener, why } => format!("this listener ({listener}) authenticates its agent with a token the proxy obtains, and it has no valid one ({why}); retry shortly"),
            Reject::PlaceholderMisuse { message, .. } => message.clone(),
            Reject::PolicyDenied { reasons } => format!("denied by policy: {}", reasons.join("; ")),
            Reject::PolicyUnavailable { .. } => "the authorization policy could not be evaluated; nothing was sent".into(),
            Reject::SecretUnavailable { credential, .. } => format!("the value of credential {credential} is unavailable; nothing was sent, retry later"),
            Reject::SecretInvalid { credential } => format!("the value of credential {credential} cannot be sent safely (invalid characters); ask the operator to fix it"),
            Reject::AuditUnavailable => "the audit log cannot record this credential use, so it was not sent; retry later".into(),
            Reject::UpstreamEncoding { authority, encoding } => format!("{authority} answered with content encoding {encoding:?}, which cannot be checked for secrets; the response was withheld"),
            Reject::Framing { what } => format!("the request's HTTP framing is ambiguous or malformed ({what}); it was refused and the connection closed"),
            Reject::NestedConnect => "CONNECT inside a tunnel is not allowed; open a new connection to the proxy for another destination".into(),
            Reject::BodyTooLarge { limit } => format!("the request body is larger than {limit} bytes, the most this proxy reads for a credential placed in the body"),
            Reject::BodyTimeout => "the request body stalled; the proxy stopped waiting for it".into(),
            Reject::IdentityConnectionLimit => "your identity has too many connections open through the proxy; close some and retry".into(),
            Reject::IdentityStreamLimit => "your identity has too many requests in flight through the proxy; retry when some have finished".into(),
            Reject::AgentTokenInRequest { location } => format!("the request carries your proxy token in {location}; it is only ever sent to the proxy (Proxy-Authorization) and was not forwarded"),
            Reject::InternalServiceUnavailable { name } => format!("the internal service {name} is not answering; retry later"),
            Reject::UpstreamDecodeLimit { authority } => format!("{authority} sent a compressed body that decodes to far more than its size (a decompression bomb?); the response was withheld"),
            Reject::ScrubSetUnavailable => "the proxy cannot yet read every credential value it must remove from responses (the secret store is not answering); nothing was sent, retry shortly".into(),
            Reject::Internal => "internal proxy error; the operator can find details in the proxy log by request id".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_the_two_misuse_refusals_are_alarms_and_both_come_from_the_agent() {
        let alarms: Vec<&str> = Reject::catalogue()
            .iter()
            .filter(|r| r.is_misuse())
            .map(|r| {
                assert_eq!(r.source(), RejectSource::Agent, "{r:?}");
                r.reason()
            })
            .collect();
        assert!(alarms.contains(&"agent_token_in_request"), "{alarms:?}");
        assert!(
            alarms.iter().all(|a| *a == "agent_token_in_request"
                || MisuseKind::ALL.iter().any(|k| k.reason() == *a)),
            "{alarms:?}"
        );
        assert_eq!(alarms.len(), 1 + MisuseKind::ALL.len(), "{alarms:?}");
    }

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
                Reject::ListenerTokenUnavailable {
                    listener: "vm-a".into(),
                    why: "no token obtained yet",
                },
                503,
                "listener_token_unavailable",
            ),
            (
                Reject::UpstreamTimeout { authority: a },
                504,
                "upstream_timeout",
            ),
            (
                Reject::InternalServiceUnavailable {
                    name: "hub.openclaw.internal".into(),
                },
                502,
                "internal_service_unavailable",
            ),
        ];
        for (r, status, reason) in cases {
            assert_eq!(r.status(), status, "{r:?}");
            assert_eq!(r.reason(), reason);
            assert!(!r.agent_message().contains('\n'));
        }
    }
}
