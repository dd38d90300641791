//! Stages 1, 3 and 4: whether the generation admits the request, every placeholder in it,
//! and whether it may go: misuse, the credentials' bindings and grants, the policy.

use credproxy_core::{Authority, Reject};
use credproxy_identity::AgentIdentity;
use credproxy_policy::PolicyInput;
use tracing::info;

use super::head::{agent_token_in, Head};
use super::{Target, Via};
use crate::audit::Draft;
use crate::creds::{self, Scan};
use crate::inject::Window;
use crate::{Generation, Shared};

/// The placeholders a request carries, and the body window they were looked for in.
pub(super) struct Scanned {
    pub scan: Scan,
    /// The head of the body, held until the request is allowed (`None` when no credential
    /// is configured: nothing is scanned and the body streams through).
    pub window: Option<Window>,
    /// The head whose placeholders these are.
    pub head: Head,
}

/// What the policy allowed.
pub(super) struct Allowed {
    /// Indices of the credentials to inject.
    pub to_inject: Vec<usize>,
    /// The policy input the request was allowed with.
    pub input: PolicyInput,
}

/// The allowlist of the request's generation, checked here and not only by the policy: a
/// reload that removes a name refuses it inside open tunnels whatever the Rego says. And
/// nothing is served before every secret value it could carry can be scrubbed from it.
pub(super) fn admit(gen: &Generation, authority: &Authority, id: &str) -> Result<(), Reject> {
    if !gen.allowlist.allows(authority) {
        info!(request_id = id, %authority, "destination no longer allowed");
        return Err(Reject::DestinationNotAllowed {
            authority: authority.clone(),
        });
    }
    if !gen.scrub_ready.load(std::sync::atomic::Ordering::Acquire) {
        return Err(Reject::ScrubSetUnavailable);
    }
    Ok(())
}

/// Find every placeholder (head, and the body's scan window, trailers included) before
/// anything is decided; the agent's own token in the window is refused (A21).
pub(super) async fn scan(
    shared: &Shared,
    gen: &Generation,
    via: &Via<'_>,
    mut head: Head,
) -> Result<Scanned, Reject> {
    let Some(set) = &gen.creds.set else {
        return Ok(Scanned {
            scan: Scan::default(),
            window: None,
            head,
        });
    };
    let mut scan = creds::scan_head(set, &head.parts);
    let body = std::mem::replace(&mut head.body, crate::body::empty());
    let w = crate::inject::read_window(
        body,
        shared.limits.body_scan_window,
        via.budget,
        shared.limits.body_idle_timeout,
    )
    .await
    .map_err(|e| head.cut.why(via.framing).unwrap_or(e))?;
    if let Some(token) = via.token {
        let data: Vec<&bytes::Bytes> = w.data().collect();
        if let Some(location) = agent_token_in(token, &head.parts, &data) {
            let reject = Reject::AgentTokenInRequest { location };
            shared.misuse(&reject);
            return Err(reject);
        }
    }
    let mut scanner = set.stream_scanner();
    for d in w.data() {
        scan.add_body(scanner.push(d));
    }
    if w.rest.is_none() {
        scan.add_body(scanner.finish());
    }
    for t in w.trailers() {
        creds::scan_trailers(set, t, &mut scan);
    }
    Ok(Scanned {
        scan,
        window: Some(w),
        head,
    })
}

/// Misuse first (a foreign secret value, a placeholder where its credential may not go,
/// another agent's placeholder), then the policy of the request's generation, which sees
/// every request, with or without credentials.
pub(super) fn authorize(
    shared: &Shared,
    gen: &Generation,
    via: &Via<'_>,
    target: Target<'_>,
    identity: Option<&AgentIdentity>,
    draft: &mut Draft,
    scanned: &mut Scanned,
) -> Result<Allowed, Reject> {
    let authority = target.authority;
    let scan = &mut scanned.scan;
    let parts = &scanned.head.parts;
    if let Err(reject) = creds::foreign_values(&gen.creds, authority, &parts.headers, scan) {
        shared.misuse(&reject);
        return Err(reject);
    }
    for u in &scan.uses {
        let c = &gen.creds.configs[u.cred];
        draft.credential(&c.id, &c.placeholder, u.loc.describe());
    }
    let agent = identity.map(|i| i.agent_id.as_str());
    let to_inject = match creds::check(&gen.creds, authority, target.scheme, scan, agent) {
        Ok(v) => v,
        Err(reject) => {
            shared.misuse(&reject);
            return Err(reject);
        }
    };
    let facts = crate::authz::RequestFacts {
        identity,
        anonymous_mode: shared.verifier.is_none(),
        method: parts.method.as_str(),
        authority,
        scheme: target.scheme,
        path: parts.uri.path(),
        query: parts.uri.query(),
        listener: &via.conn.listener.name,
        peer: &via.conn.peer,
        allowlisted: gen.allowlist.allows(authority),
        now: shared.clock.now(),
    };
    let input = crate::authz::input(&facts, &gen.creds, scan);
    if let Err(reject) = crate::authz::decide(&gen.policy, &input) {
        info!(request_id = %draft.record.id, %authority, reason = reject.reason(), "refused by policy");
        // A placeholder of a credential this identity holds none of the roles for (another
        // agent's placeholder, A28) is a misuse alarm, whatever the policy's words.
        if crate::authz::uses_ungranted(identity, &gen.creds, scan) {
            shared.misuse_alarm("credential_not_granted");
            draft
                .record
                .misuse_alarms
                .push("credential_not_granted".to_string());
        }
        return Err(reject);
    }
    Ok(Allowed { to_inject, input })
}
