//! The hub's protocol: what each call does, given the identity credproxy verified.
//!
//! Every call is answered with JSON and recorded in the audit log, accepted or refused. The
//! caller is the instance named by `x-credproxy-agent`, which only credproxy can set (the hub
//! admits connections from `--trusted-uid` peers only, and credproxy removes every
//! `x-credproxy-*` header an agent sends). Nothing in a payload can change who the sender
//! is: a `fromInstance`, `updatedBy` or `instanceId` naming anyone else is refused (403
//! `forged_sender`) and recorded with the claimed name.
//!
//! | Call | Does |
//! |---|---|
//! | `POST /delegate` `{toInstance, task, delegationChain?, parentDelegationId?, fromInstance?}` | queues a task for `toInstance`; refuses loops and chains at the maximum depth |
//! | `GET /inbox` | the caller's pending delegations, oldest first |
//! | `POST /inbox/ack` `{delegationId}` or `{delegationIds: [...]}` | marks them handled |
//! | `POST /context/update` `{contextKey, value, updatedBy?, instanceId?}` | writes a shared context entry |
//! | `GET /context`, `GET /context/<key>` | lists keys, reads an entry |
//! | `GET /health` | `{status: "healthy"}` |

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{error, info, warn};

use crate::audit::{AuditLog, Event};
use crate::rate::RateLimiter;
use crate::store::{ContextEntry, Delegation, Staged, Store};

/// The agent header credproxy sets on requests to internal services.
pub const AGENT_HEADER: &str = "x-credproxy-agent";
/// credproxy's request id header.
pub const REQUEST_ID_HEADER: &str = "x-credproxy-request-id";

/// Limits of the protocol.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Calls per instance within `rate_window`.
    pub rate_limit: usize,
    pub rate_window: Duration,
    /// Most instances a delegation chain may hold before the next hop.
    pub max_delegation_depth: usize,
    /// Most unacknowledged delegations per addressee.
    pub max_pending: usize,
    /// Most shared context keys.
    pub max_context_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rate_limit: 60,
            rate_window: Duration::from_secs(60),
            max_delegation_depth: 5,
            max_pending: 1000,
            max_context_keys: 1024,
        }
    }
}

/// Longest context key.
pub const MAX_KEY_LEN: usize = 255;

/// One call, as the HTTP layer read it.
#[derive(Debug)]
pub struct Call {
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// Every `x-credproxy-agent` value (credproxy sets exactly one).
    pub agents: Vec<String>,
    pub request_id: Option<String>,
    pub peer_uid: Option<u32>,
    pub peer_pid: Option<i32>,
    pub body: Result<Bytes, BodyProblem>,
}

/// A body the HTTP layer could not deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyProblem {
    TooLarge,
    Unreadable,
}

/// The answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    /// `Allow` for 405.
    pub allow: Option<&'static str>,
    /// `Retry-After` seconds for 429.
    pub retry_after: Option<u64>,
}

/// A refused call: status, stable code, one line for the caller.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
    allow: Option<&'static str>,
    retry_after: Option<u64>,
}

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
        allow: None,
        retry_after: None,
    }
}

/// What an accepted call returns and leaves to commit.
struct Accepted {
    status: StatusCode,
    body: Value,
    staged: Vec<Staged>,
}

/// The protocol's state.
#[derive(Debug)]
pub struct Protocol {
    instances: BTreeSet<String>,
    limits: Limits,
    store: Store,
    audit: AuditLog,
    rate: Mutex<RateLimiter>,
    /// Calls that read and write the store run one at a time (the hub's load is a few calls
    /// per minute per instance).
    serial: tokio::sync::Mutex<()>,
}

/// Whether `s` is a valid instance name (they are agent ids and path components).
pub fn valid_instance_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

/// Context keys: `[A-Za-z0-9_-]`, 1 to 255 characters.
pub fn valid_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_KEY_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DelegateReq {
    to_instance: Option<Value>,
    task: Option<Value>,
    #[serde(default)]
    delegation_chain: Option<Value>,
    parent_delegation_id: Option<String>,
    from_instance: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AckReq {
    delegation_id: Option<String>,
    delegation_ids: Option<Vec<String>>,
}

/// A field that may be `null` but must be present.
#[derive(Default)]
struct Present(Option<Value>);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(|v| Present(Some(v)))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ContextReq {
    context_key: Option<Value>,
    #[serde(default)]
    value: Present,
    updated_by: Option<Value>,
    instance_id: Option<Value>,
}

impl Protocol {
    pub fn new(
        instances: BTreeSet<String>,
        limits: Limits,
        store: Store,
        audit: AuditLog,
    ) -> Protocol {
        let rate = RateLimiter::new(limits.rate_limit, limits.rate_window);
        Protocol {
            instances,
            limits,
            store,
            audit,
            rate: Mutex::new(rate),
            serial: tokio::sync::Mutex::new(()),
        }
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    pub fn instances(&self) -> &BTreeSet<String> {
        &self.instances
    }

    /// Record a connection refused at accept (its peer is not a trusted uid).
    pub fn record_refused_connection(&self, uid: Option<u32>, pid: Option<i32>) {
        let mut e = Event::now("connection_refused", "refused");
        e.error = Some("untrusted_peer");
        e.peer_uid = uid;
        e.peer_pid = pid;
        if let Err(err) = self.audit.write(&e) {
            error!(error = %err, "cannot record a refused connection in the audit log");
        }
    }

    /// Answer one call and record it.
    pub async fn handle(&self, call: Call) -> Reply {
        let _serial = self.serial.lock().await;
        let mut ev = Event::now("call", "refused");
        ev.method = Some(call.method.to_string());
        ev.path = Some(call.path.clone());
        ev.request_id = call.request_id.clone();
        ev.peer_uid = call.peer_uid;
        ev.peer_pid = call.peer_pid;
        let result = self.dispatch(&call, &mut ev);
        let (reply, staged) = match result {
            Ok(a) => {
                ev.outcome = "accepted";
                ev.status = Some(a.status.as_u16());
                (
                    Reply {
                        status: a.status,
                        body: a.body,
                        allow: None,
                        retry_after: None,
                    },
                    a.staged,
                )
            }
            Err(r) => {
                ev.status = Some(r.status.as_u16());
                ev.error = Some(r.code);
                info!(instance = ?ev.instance, path = %call.path, status = r.status.as_u16(), error = r.code, "call refused");
                (
                    Reply {
                        status: r.status,
                        body: json!({"error": r.code, "message": r.message}),
                        allow: r.allow,
                        retry_after: r.retry_after,
                    },
                    Vec::new(),
                )
            }
        };
        // Nothing is stored that the audit log does not show.
        if let Err(e) = self.audit.write(&ev) {
            error!(error = %e, "cannot write the audit log; refusing the call");
            for s in staged {
                s.abort();
            }
            return error_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the hub cannot record this call in its audit log, so it was not carried out; retry later",
            );
        }
        for s in staged {
            if let Err(e) = s.commit() {
                error!(error = %e, "cannot commit a stored change after auditing it");
                let mut failed = ev.clone();
                failed.time = Event::now("call", "refused").time;
                failed.outcome = "refused";
                failed.status = Some(500);
                failed.error = Some("store_failed");
                let _ = self.audit.write(&failed);
                return error_reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_failed",
                    "the hub could not store the change; it was not carried out",
                );
            }
        }
        if ev.outcome == "accepted" {
            info!(instance = ?ev.instance, path = %call.path, status = reply.status.as_u16(), "call accepted");
        }
        reply
    }

    fn dispatch(&self, call: &Call, ev: &mut Event) -> Result<Accepted, Refusal> {
        let me = self.identify(call)?;
        ev.instance = Some(me.clone());
        if let Err(wait) = self
            .rate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(&me, Instant::now())
        {
            let secs = wait.as_secs().max(1);
            let mut r = refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "more than {} calls in {}s from {me}; retry in {secs}s",
                    self.limits.rate_limit,
                    self.limits.rate_window.as_secs()
                ),
            );
            r.retry_after = Some(secs);
            return Err(r);
        }
        let path = call.path.as_str();
        let m = &call.method;
        match path {
            "/health" => {
                only(m, Method::GET, "GET")?;
                Ok(ok(json!({"status": "healthy", "instance": me})))
            }
            "/delegate" => {
                only(m, Method::POST, "POST")?;
                self.delegate(&me, body_json(call)?, ev)
            }
            "/inbox" => {
                only(m, Method::GET, "GET")?;
                let list = self.store.pending(&me).map_err(store_error)?;
                Ok(ok(json!({"instance": me, "delegations": list})))
            }
            "/inbox/ack" => {
                only(m, Method::POST, "POST")?;
                self.ack(&me, body_json(call)?, ev)
            }
            "/context" => {
                only(m, Method::GET, "GET")?;
                let keys = self.store.context_keys().map_err(store_error)?;
                Ok(ok(json!({"keys": keys})))
            }
            "/context/update" if *m == Method::POST => self.update(&me, body_json(call)?, ev),
            p if p.starts_with("/context/") => {
                only(m, Method::GET, "GET")?;
                let key = &p["/context/".len()..];
                if !valid_key(key) {
                    return Err(bad_key(key));
                }
                ev.context_key = Some(key.to_string());
                match self.store.context(key).map_err(store_error)? {
                    Some(e) => Ok(ok(serde_json::to_value(e).unwrap_or(Value::Null))),
                    None => Err(refuse(
                        StatusCode::NOT_FOUND,
                        "unknown_key",
                        format!("no context entry {key:?}"),
                    )),
                }
            }
            _ => Err(refuse(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no such call {path:?}; the hub serves /delegate, /inbox, /inbox/ack, /context/update, /context/<key> and /health"),
            )),
        }
    }

    /// The caller: exactly one `x-credproxy-agent`, naming a known instance.
    fn identify(&self, call: &Call) -> Result<String, Refusal> {
        match call.agents.as_slice() {
            [] => Err(refuse(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "no verified identity: reach the hub through credproxy, which names the calling agent",
            )),
            [one] if self.instances.contains(one) => Ok(one.clone()),
            [one] => Err(refuse(
                StatusCode::FORBIDDEN,
                "unknown_sender",
                format!("agent {one:?} is not an instance of this hub"),
            )),
            _ => Err(refuse(
                StatusCode::BAD_REQUEST,
                "ambiguous_identity",
                "more than one verified identity on one call",
            )),
        }
    }

    /// A payload field that names the sender must name the verified one.
    fn check_sender(
        &self,
        me: &str,
        field: &str,
        claimed: &Option<Value>,
        ev: &mut Event,
    ) -> Result<(), Refusal> {
        match claimed {
            None => Ok(()),
            Some(Value::String(s)) if s == me => Ok(()),
            Some(other) => {
                let shown = match other {
                    Value::String(s) => s.clone(),
                    v => v.to_string(),
                };
                warn!(instance = %me, claimed = %shown, field, "forged sender refused");
                ev.claimed_sender = Some(shown.clone());
                Err(refuse(
                    StatusCode::FORBIDDEN,
                    "forged_sender",
                    format!("{field} {shown:?} is not the caller: the sender is always the verified instance {me:?}; leave {field} out or set it to yours"),
                ))
            }
        }
    }

    fn known(&self, name: &str, what: &str) -> Result<(), Refusal> {
        if self.instances.contains(name) {
            Ok(())
        } else {
            Err(refuse(
                StatusCode::BAD_REQUEST,
                "unknown_instance",
                format!("{what} {name:?} is not an instance of this hub"),
            ))
        }
    }

    fn delegate(&self, me: &str, body: Value, ev: &mut Event) -> Result<Accepted, Refusal> {
        let req: DelegateReq = parse(body)?;
        self.check_sender(me, "fromInstance", &req.from_instance, ev)?;
        let to = match req.to_instance {
            Some(Value::String(s)) => s,
            Some(_) => return Err(invalid("toInstance must be a string")),
            None => return Err(invalid("toInstance is required")),
        };
        ev.to_instance = Some(to.clone());
        self.known(&to, "toInstance")?;
        let task = match req.task {
            None | Some(Value::Null) => return Err(invalid("task is required")),
            Some(t) => t,
        };
        let given: Option<Vec<String>> = match req.delegation_chain {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .into_iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s),
                        _ => Err(invalid("delegationChain must be a list of instance names")),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(_) => return Err(invalid("delegationChain must be a list of instance names")),
        };
        // With a parent, the chain is the hub's own record of it, not the payload's.
        let (chain, parent_id) = match &req.parent_delegation_id {
            Some(pid) => {
                let pid = canonical_id(pid)?;
                let Some((parent, _)) = self.store.find(me, &pid).map_err(store_error)? else {
                    return Err(refuse(
                        StatusCode::NOT_FOUND,
                        "unknown_delegation",
                        format!("no delegation {pid} was addressed to {me}"),
                    ));
                };
                if let Some(g) = &given {
                    if *g != parent.chain {
                        return Err(refuse(
                            StatusCode::BAD_REQUEST,
                            "chain_mismatch",
                            format!(
                                "delegationChain {g:?} is not the chain of delegation {pid} ({:?}); leave it out",
                                parent.chain
                            ),
                        ));
                    }
                }
                (parent.chain, Some(pid))
            }
            None => (given.unwrap_or_default(), None),
        };
        for c in &chain {
            self.known(c, "delegationChain entry")?;
        }
        ev.chain = Some(chain.clone());
        if to == me || chain.contains(&to) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "delegation_loop",
                format!("delegating to {to} would loop: it is already in the chain {chain:?} or is the sender"),
            ));
        }
        if chain.len() >= self.limits.max_delegation_depth {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "delegation_too_deep",
                format!(
                    "the chain {chain:?} is at the maximum delegation depth ({})",
                    self.limits.max_delegation_depth
                ),
            ));
        }
        let pending = self.store.pending_count(&to).map_err(store_error)?;
        if pending >= self.limits.max_pending {
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "inbox_full",
                format!("{to} has {pending} unacknowledged delegations; retry after it acknowledges some"),
            ));
        }
        let mut full_chain = chain;
        full_chain.push(me.to_string());
        let d = Delegation {
            id: uuid::Uuid::now_v7().to_string(),
            from: me.to_string(),
            to: to.clone(),
            task,
            chain: full_chain.clone(),
            parent_id,
            timestamp: now(),
        };
        ev.delegation_id = Some(d.id.clone());
        ev.chain = Some(full_chain.clone());
        let staged = self.store.stage_delegation(&d).map_err(store_error)?;
        Ok(Accepted {
            status: StatusCode::OK,
            body: json!({
                "delegationId": d.id,
                "status": "queued",
                "from": me,
                "to": to,
                "chain": full_chain,
            }),
            staged: vec![staged],
        })
    }

    fn ack(&self, me: &str, body: Value, ev: &mut Event) -> Result<Accepted, Refusal> {
        let req: AckReq = parse(body)?;
        let ids = match (req.delegation_id, req.delegation_ids) {
            (Some(one), None) => vec![one],
            (None, Some(many)) if !many.is_empty() => many,
            _ => {
                return Err(invalid(
                    "give delegationId, or a non-empty delegationIds list",
                ))
            }
        };
        let mut staged = Vec::new();
        let mut done = Vec::new();
        for id in ids {
            let id = canonical_id(&id)?;
            match self.store.find(me, &id).map_err(store_error)? {
                None => {
                    return Err(refuse(
                        StatusCode::NOT_FOUND,
                        "unknown_delegation",
                        format!("no delegation {id} was addressed to {me}"),
                    ))
                }
                // Acknowledging twice is harmless.
                Some((_, true)) => {}
                Some((_, false)) => {
                    if !done.contains(&id) {
                        staged.push(self.store.stage_ack(me, &id));
                    }
                }
            }
            if !done.contains(&id) {
                done.push(id);
            }
        }
        ev.acknowledged = Some(done.clone());
        Ok(Accepted {
            status: StatusCode::OK,
            body: json!({"acknowledged": done}),
            staged,
        })
    }

    fn update(&self, me: &str, body: Value, ev: &mut Event) -> Result<Accepted, Refusal> {
        let req: ContextReq = parse(body)?;
        self.check_sender(me, "updatedBy", &req.updated_by, ev)?;
        self.check_sender(me, "instanceId", &req.instance_id, ev)?;
        let key = match req.context_key {
            Some(Value::String(k)) => k,
            Some(_) => return Err(invalid("contextKey must be a string")),
            None => return Err(invalid("contextKey is required")),
        };
        if !valid_key(&key) {
            return Err(bad_key(&key));
        }
        ev.context_key = Some(key.clone());
        let value = match req.value.0 {
            None => return Err(invalid("value is required (it may be null)")),
            Some(v) => v,
        };
        if self.store.context(&key).map_err(store_error)?.is_none() {
            let n = self.store.context_count().map_err(store_error)?;
            if n >= self.limits.max_context_keys {
                return Err(refuse(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "context_full",
                    format!(
                        "the shared context holds {n} keys, the most it may; update an existing key"
                    ),
                ));
            }
        }
        let entry = ContextEntry {
            key: key.clone(),
            value,
            updated_by: me.to_string(),
            updated_at: now(),
        };
        let staged = self.store.stage_context(&entry).map_err(store_error)?;
        Ok(Accepted {
            status: StatusCode::OK,
            body: json!({"key": key, "updatedBy": me, "updatedAt": entry.updated_at}),
            staged: vec![staged],
        })
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(credproxy_core::Clock::system().now()).to_string()
}

fn ok(body: Value) -> Accepted {
    Accepted {
        status: StatusCode::OK,
        body,
        staged: Vec::new(),
    }
}

fn error_reply(status: StatusCode, code: &str, message: &str) -> Reply {
    Reply {
        status,
        body: json!({"error": code, "message": message}),
        allow: None,
        retry_after: None,
    }
}

fn only(m: &Method, want: Method, allow: &'static str) -> Result<(), Refusal> {
    if *m == want {
        return Ok(());
    }
    let mut r = refuse(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("use {allow}"),
    );
    r.allow = Some(allow);
    Err(r)
}

fn invalid(msg: &str) -> Refusal {
    refuse(StatusCode::BAD_REQUEST, "invalid_request", msg)
}

fn bad_key(key: &str) -> Refusal {
    let shown: String = key.chars().take(64).collect();
    refuse(
        StatusCode::BAD_REQUEST,
        "invalid_key",
        format!(
            "context key {shown:?} must be 1 to {MAX_KEY_LEN} characters of A-Z, a-z, 0-9, _ and -"
        ),
    )
}

fn store_error(e: std::io::Error) -> Refusal {
    error!(error = %e, "hub state I/O failed");
    refuse(
        StatusCode::INTERNAL_SERVER_ERROR,
        "store_failed",
        "the hub could not read or write its state",
    )
}

/// A delegation id as the hub writes it (hyphenated lowercase UUID), or a refusal.
fn canonical_id(id: &str) -> Result<String, Refusal> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| invalid("a delegation id is a UUID, as /delegate returned it"))
}

fn body_json(call: &Call) -> Result<Value, Refusal> {
    let bytes = match &call.body {
        Ok(b) => b,
        Err(BodyProblem::TooLarge) => {
            return Err(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is larger than {} bytes", crate::MAX_BODY),
            ))
        }
        Err(BodyProblem::Unreadable) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the body could not be read",
            ))
        }
    };
    serde_json::from_slice(bytes).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        )
    })
}

fn parse<T: for<'de> Deserialize<'de>>(v: Value) -> Result<T, Refusal> {
    if !v.is_object() {
        return Err(invalid("the body must be a JSON object"));
    }
    serde_json::from_value(v).map_err(|e| invalid(&format!("{e}")))
}

#[cfg(test)]
mod tests;
