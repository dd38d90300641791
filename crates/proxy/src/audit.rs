//! The audit hook of the request path: one record per request, filled in as the request
//! advances, made durable before a credential leaves, completed when the response ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use credproxy_audit::record::{AuditRecord, CredentialUse, Decision, Outcome};
use credproxy_audit::spool::AuditSpool;
use credproxy_core::{Reject, RejectSource};

use crate::scrub_body::Counters;

/// A request's audit record while it is being handled.
pub(crate) struct Draft {
    pub record: AuditRecord,
    /// The record was committed durably (a credential went out): completion, not a new record.
    pub begun: bool,
    pub started: Instant,
    pub bytes_up: Arc<AtomicU64>,
    pub bytes_down: Arc<AtomicU64>,
    pub scrub: Option<Arc<Counters>>,
}

impl Draft {
    pub fn new(
        id: &str,
        listener: &str,
        peer: String,
        destination: String,
        method: &str,
        target: &str,
    ) -> Draft {
        let (path, query_keys) = credproxy_audit::record::split_path_and_query_keys(target);
        let mut record = AuditRecord::new(id, destination);
        record.listener = listener.to_string();
        record.peer = peer;
        record.method = method.to_string();
        record.path = path;
        record.query_keys = query_keys;
        Draft {
            record,
            begun: false,
            started: Instant::now(),
            bytes_up: Arc::new(AtomicU64::new(0)),
            bytes_down: Arc::new(AtomicU64::new(0)),
            scrub: None,
        }
    }

    pub fn identity(&mut self, agent: Option<&credproxy_identity::AgentIdentity>) {
        if let Some(a) = agent {
            self.record.agent_id = Some(a.agent_id.clone());
            self.record.token_id_hash = Some(a.token_id_hash.clone());
        }
    }

    pub fn credential(&mut self, id: &str, placeholder: &str, location: String) {
        self.record.credentials.push(CredentialUse {
            id: id.to_string(),
            placeholder: placeholder.to_string(),
            location,
        });
    }

    /// Note how a rejection ends the request: misuse alarms, the policy's reasons, and the
    /// decision by where the refusal came from (every variant decided by `core`'s exhaustive
    /// `is_misuse` and `source`).
    pub fn rejected(&mut self, reject: &Reject) {
        if reject.is_misuse() {
            self.record.misuse_alarms.push(reject.reason().to_string());
        }
        if let Reject::PolicyDenied { reasons } = reject {
            self.record.deny_reasons = reasons.clone();
        }
        match reject.source() {
            RejectSource::Agent | RejectSource::Policy => self.record.decision = Decision::Deny,
            RejectSource::Vault | RejectSource::Internal => self.record.decision = Decision::Error,
            // The request was allowed; the upstream failed it: the outcome says how.
            RejectSource::Upstream => {}
        }
    }

    /// The ticket that completes the record when the response is over.
    pub fn ticket(self, spool: AuditSpool, status: u16, reason: &'static str) -> Ticket {
        Ticket {
            spool,
            draft: Some(self),
            status,
            reason,
        }
    }
}

/// Completes (or writes) the record when dropped: at the end of the response body, or when
/// the agent goes away mid-response.
pub(crate) struct Ticket {
    spool: AuditSpool,
    draft: Option<Draft>,
    status: u16,
    reason: &'static str,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Some(d) = self.draft.take() else { return };
        let (bytes_down, scrubbed) = match &d.scrub {
            Some(c) => (
                c.bytes.load(Ordering::Relaxed),
                c.scrubbed.load(Ordering::Relaxed),
            ),
            None => (d.bytes_down.load(Ordering::Relaxed), 0),
        };
        let outcome = Outcome {
            status: Some(self.status),
            reason: self.reason.to_string(),
            bytes_up: d.bytes_up.load(Ordering::Relaxed),
            bytes_down,
            scrub_count: scrubbed,
            latency_ms: d.started.elapsed().as_millis() as u64,
            completed_at: credproxy_audit::record::now_rfc3339(),
        };
        if d.begun {
            self.spool.complete(&d.record.id, outcome);
        } else {
            let mut record = d.record;
            record.outcome = Some(outcome);
            self.spool.record(record);
        }
    }
}

pin_project_lite::pin_project! {
    /// Counts the bytes of a request body as it goes upstream.
    struct Counted {
        #[pin]
        inner: crate::body::Body,
        n: Arc<AtomicU64>,
    }
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                this.n.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pub(crate) fn count_body(inner: crate::body::Body, n: Arc<AtomicU64>) -> crate::body::Body {
    use http_body_util::BodyExt;
    Counted { inner, n }.boxed()
}
