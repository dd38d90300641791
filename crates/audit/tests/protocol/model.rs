//! A stateright model of the audit protocol, checked in `cargo test` (`tests/protocol_model.rs`).
//!
//! Actors: request handlers (one per request), the spool writer (group commit), the upstream
//! response, the exporter and Temporal, plus crash and restart of the proxy (power loss: what
//! was not fsync'd is lost) and of Temporal. `docs/protocol.md` maps every [`Action`] to the code
//! that implements it. **A protocol change updates this model first.**
//!
//! Abstractions, all of which only add behaviours (so safety results carry over):
//! * completions and export acknowledgements written without fsync are lost at a crash (the
//!   code makes them durable at the next credentialed commit; the model never does);
//! * the exporter's backoff is stuttering (retry = the same action later);
//! * Temporal's `response_complete` timer may fire at any time.

use stateright::{Model, Property};

/// Number of requests in the model.
pub const N: usize = 2;

/// Where a request handler is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Handler {
    /// Not started.
    Start,
    /// Waiting for `begin_credentialed`.
    Waiting,
    /// The record is durable and acknowledged: may send the secret.
    Proceed,
    /// The secret was sent upstream; waiting for the response.
    Sent,
    /// Response ended; completion queued.
    Done,
    /// The spool failed: answered 503, sent nothing.
    Failed,
    /// Killed by a proxy crash.
    Dead,
}

/// A spool queue item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Item {
    /// `begin_credentialed(r)`.
    Begin(usize),
    /// `complete(r)`.
    Complete(usize),
}

/// A completion's durability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stored {
    /// Not in the log.
    No,
    /// Committed without fsync (lost by a crash).
    Volatile,
    /// Committed and fsync'd.
    Durable,
}

/// A workflow's state in Temporal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Wf {
    /// No execution with this id.
    None,
    /// Running, waiting for `response_complete`.
    Running,
    /// Closed after the signal (`success`/`error`).
    Signaled,
    /// Closed by its timer (`timeout`).
    TimedOut,
}

/// The whole system state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// Handler per request.
    pub handler: [Handler; N],
    /// The writer's in-memory queue (lost at a crash).
    pub queue: Vec<Item>,
    /// Begins committed in the last batch whose callers are not yet acknowledged.
    pub unacked: Vec<usize>,
    /// Begin event durable.
    pub begun: [bool; N],
    /// Completion event.
    pub completion: [Stored; N],
    /// Completion events ever present at once (checks "completed at most once").
    pub completions_written: [u8; N],
    /// Exporter acknowledgements in the spool (volatile: lost at a crash).
    pub ack_started: [bool; N],
    /// Exporter acknowledgement of the signal.
    pub ack_signaled: [bool; N],
    /// Workflow executions started per id (must stay ≤ 1).
    pub wf_starts: [u8; N],
    /// Workflow state per id.
    pub wf: [Wf; N],
    /// A secret left before its record was durable (must stay false).
    pub secret_before_durable: bool,
    /// Proxy process up.
    pub proxy_up: bool,
    /// Temporal up.
    pub temporal_up: bool,
    /// Remaining proxy crashes.
    pub proxy_crashes: u8,
    /// Remaining Temporal crashes.
    pub temporal_crashes: u8,
    /// Remaining failed commits (disk full).
    pub disk_failures: u8,
}

/// Every step of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Handler queues the record and waits (`AuditSpool::begin_credentialed`).
    HandlerBegin(usize),
    /// Handler, acknowledged, injects the secret and sends the request upstream.
    HandlerSend(usize),
    /// Upstream response ends (or fails); handler queues the completion.
    UpstreamRespond(usize),
    /// Writer takes the whole queue and commits it in one transaction (fsync if it holds a
    /// begin).
    WriterCommit,
    /// Writer's commit fails (disk full): begins are refused, completions lost.
    WriterFail,
    /// Writer acknowledges the committed begins.
    WriterAck,
    /// Exporter starts the workflow (id = record id); Temporal rejects a duplicate.
    ExportStart(usize),
    /// Exporter records "started".
    ExportAckStart(usize),
    /// Exporter signals `response_complete` (a closed workflow counts as delivered).
    ExportSignal(usize),
    /// Temporal's `response_complete` timer fires.
    WorkflowTimeout(usize),
    /// Proxy crash (power loss).
    ProxyCrash,
    /// Proxy restart: open the spool, complete interrupted records.
    ProxyRestart,
    /// Temporal goes down.
    TemporalCrash,
    /// Temporal comes back with its database.
    TemporalRestart,
}

/// The model's bounds.
#[derive(Clone, Debug)]
pub struct AuditProtocol {
    /// Proxy crashes allowed.
    pub proxy_crashes: u8,
    /// Temporal crashes allowed.
    pub temporal_crashes: u8,
    /// Failed commits allowed.
    pub disk_failures: u8,
    /// Seeded bug (for the checker's own test): acknowledge a begin before its fsync.
    pub bug_ack_before_fsync: bool,
    /// Seeded bug: restart completes every record, even those already completed.
    pub bug_recomplete_on_restart: bool,
}

impl AuditProtocol {
    /// The configuration checked in the test suite.
    pub fn standard() -> AuditProtocol {
        AuditProtocol {
            proxy_crashes: 1,
            temporal_crashes: 1,
            disk_failures: 1,
            bug_ack_before_fsync: false,
            bug_recomplete_on_restart: false,
        }
    }

    /// No action enabled: a terminal state, where liveness properties must hold.
    pub fn is_terminal(&self, s: &State) -> bool {
        let mut a = Vec::new();
        self.actions(s, &mut a);
        a.is_empty()
    }
}

impl Model for AuditProtocol {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State {
            handler: [Handler::Start; N],
            queue: Vec::new(),
            unacked: Vec::new(),
            begun: [false; N],
            completion: [Stored::No; N],
            completions_written: [0; N],
            ack_started: [false; N],
            ack_signaled: [false; N],
            wf_starts: [0; N],
            wf: [Wf::None; N],
            secret_before_durable: false,
            proxy_up: true,
            temporal_up: true,
            proxy_crashes: self.proxy_crashes,
            temporal_crashes: self.temporal_crashes,
            disk_failures: self.disk_failures,
        }]
    }

    fn actions(&self, s: &State, out: &mut Vec<Action>) {
        if s.proxy_up {
            for r in 0..N {
                match s.handler[r] {
                    Handler::Start => out.push(Action::HandlerBegin(r)),
                    Handler::Proceed => out.push(Action::HandlerSend(r)),
                    Handler::Sent => out.push(Action::UpstreamRespond(r)),
                    _ => {}
                }
            }
            if s.unacked.is_empty() && !s.queue.is_empty() {
                out.push(Action::WriterCommit);
                if s.disk_failures > 0 {
                    out.push(Action::WriterFail);
                }
            }
            if !s.unacked.is_empty() {
                out.push(Action::WriterAck);
            }
            if s.temporal_up {
                for r in 0..N {
                    if s.begun[r] && !s.ack_started[r] {
                        if s.wf[r] == Wf::None || s.wf_starts[r] == 0 {
                            out.push(Action::ExportStart(r));
                        } else {
                            // Started (now or before a crash) but not acknowledged: the retry
                            // gets AlreadyStarted and acknowledges.
                            out.push(Action::ExportAckStart(r));
                        }
                    }
                    if s.ack_started[r] && !s.ack_signaled[r] && s.completion[r] != Stored::No {
                        out.push(Action::ExportSignal(r));
                    }
                }
            }
            if s.proxy_crashes > 0 && s.handler.iter().any(|h| *h != Handler::Start) {
                out.push(Action::ProxyCrash);
            }
        } else {
            out.push(Action::ProxyRestart);
        }
        if s.temporal_up {
            for r in 0..N {
                if s.wf[r] == Wf::Running {
                    out.push(Action::WorkflowTimeout(r));
                }
            }
            if s.temporal_crashes > 0 {
                out.push(Action::TemporalCrash);
            }
        } else {
            out.push(Action::TemporalRestart);
        }
    }

    fn next_state(&self, s: &State, a: Action) -> Option<State> {
        let mut n = s.clone();
        match a {
            Action::HandlerBegin(r) => {
                n.queue.push(Item::Begin(r));
                n.handler[r] = Handler::Waiting;
            }
            Action::HandlerSend(r) => {
                if !n.begun[r] {
                    n.secret_before_durable = true;
                }
                n.handler[r] = Handler::Sent;
            }
            Action::UpstreamRespond(r) => {
                n.queue.push(Item::Complete(r));
                n.handler[r] = Handler::Done;
            }
            Action::WriterCommit => {
                let batch = std::mem::take(&mut n.queue);
                let durable = batch.iter().any(|i| matches!(i, Item::Begin(_)));
                for item in batch {
                    match item {
                        Item::Begin(r) if self.bug_ack_before_fsync => {
                            n.handler[r] = Handler::Proceed;
                            n.unacked.push(r);
                        }
                        Item::Begin(r) => {
                            n.begun[r] = true;
                            n.unacked.push(r);
                        }
                        // The at-most-once check: a second completion is ignored.
                        Item::Complete(r) if n.completion[r] == Stored::No && n.begun[r] => {
                            n.completion[r] = Stored::Volatile;
                            n.completions_written[r] += 1;
                        }
                        Item::Complete(_) => {}
                    }
                }
                if durable {
                    // The WAL is sequential: an fsync makes every earlier frame durable.
                    for c in n.completion.iter_mut() {
                        if *c == Stored::Volatile {
                            *c = Stored::Durable;
                        }
                    }
                }
            }
            Action::WriterFail => {
                for item in std::mem::take(&mut n.queue) {
                    if let Item::Begin(r) = item {
                        n.handler[r] = Handler::Failed;
                    }
                }
                n.disk_failures -= 1;
            }
            Action::WriterAck => {
                for r in std::mem::take(&mut n.unacked) {
                    if self.bug_ack_before_fsync {
                        n.begun[r] = true;
                    }
                    if n.handler[r] == Handler::Waiting {
                        n.handler[r] = Handler::Proceed;
                    }
                }
            }
            Action::ExportStart(r) => {
                if n.wf[r] == Wf::None {
                    n.wf[r] = Wf::Running;
                    n.wf_starts[r] += 1;
                }
            }
            Action::ExportAckStart(r) => n.ack_started[r] = true,
            Action::ExportSignal(r) => {
                if n.wf[r] == Wf::Running {
                    n.wf[r] = Wf::Signaled;
                }
                n.ack_signaled[r] = true;
            }
            Action::WorkflowTimeout(r) => n.wf[r] = Wf::TimedOut,
            Action::ProxyCrash => {
                n.proxy_up = false;
                n.proxy_crashes -= 1;
                n.queue.clear();
                n.unacked.clear();
                for r in 0..N {
                    if !matches!(
                        n.handler[r],
                        Handler::Start | Handler::Done | Handler::Failed
                    ) {
                        n.handler[r] = Handler::Dead;
                    }
                    if n.completion[r] == Stored::Volatile {
                        n.completion[r] = Stored::No;
                        n.completions_written[r] -= 1;
                    }
                    n.ack_started[r] = false;
                    n.ack_signaled[r] = false;
                }
            }
            Action::ProxyRestart => {
                n.proxy_up = true;
                for r in 0..N {
                    // `complete_interrupted`: one durable completion for every open record.
                    if n.begun[r]
                        && (n.completion[r] == Stored::No || self.bug_recomplete_on_restart)
                    {
                        n.completion[r] = Stored::Durable;
                        n.completions_written[r] += 1;
                    }
                    // A request never begun before the crash is never begun (its client saw
                    // the connection drop).
                    if n.handler[r] == Handler::Start {
                        n.handler[r] = Handler::Dead;
                    }
                }
            }
            Action::TemporalCrash => {
                n.temporal_up = false;
                n.temporal_crashes -= 1;
            }
            Action::TemporalRestart => n.temporal_up = true,
        }
        Some(n)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "no secret is sent before its record is durable",
                |_, s: &State| {
                    !s.secret_before_durable
                        && (0..N).all(|r| {
                            !matches!(s.handler[r], Handler::Proceed | Handler::Sent) || s.begun[r]
                        })
                },
            ),
            Property::always("every record is completed at most once", |_, s: &State| {
                s.completions_written.iter().all(|c| *c <= 1)
            }),
            Property::always("at most one workflow per record id", |_, s: &State| {
                s.wf_starts.iter().all(|c| *c <= 1)
            }),
            Property::always(
                "a waiting handler's record is queued or being acknowledged",
                |_, s: &State| {
                    (0..N).all(|r| {
                        s.handler[r] != Handler::Waiting
                            || s.queue.contains(&Item::Begin(r))
                            || s.unacked.contains(&r)
                    })
                },
            ),
            Property::always(
                "at a terminal state every durable record was exported exactly once",
                |m: &AuditProtocol, s: &State| {
                    !m.is_terminal(s)
                        || (0..N)
                            .all(|r| !s.begun[r] || (s.wf_starts[r] == 1 && s.wf[r] != Wf::Running))
                },
            ),
            Property::always(
                "at a terminal state every handler has terminated and none waits",
                |m: &AuditProtocol, s: &State| {
                    !m.is_terminal(s)
                        || s.handler
                            .iter()
                            .all(|h| matches!(h, Handler::Done | Handler::Failed | Handler::Dead))
                },
            ),
            Property::eventually("every handler terminates", |_, s: &State| {
                s.handler
                    .iter()
                    .all(|h| matches!(h, Handler::Done | Handler::Failed | Handler::Dead))
            }),
            Property::eventually("every durable record is exported", |_, s: &State| {
                (0..N).all(|r| !s.begun[r] || s.wf_starts[r] == 1)
            }),
            Property::sometimes(
                "a secret is sent and its outcome signalled",
                |_, s: &State| s.wf.contains(&Wf::Signaled),
            ),
            Property::sometimes("a workflow times out", |_, s: &State| {
                s.wf.contains(&Wf::TimedOut)
            }),
            Property::sometimes("a spool failure fails a request closed", |_, s: &State| {
                s.handler.contains(&Handler::Failed)
            }),
            Property::sometimes(
                "a record is re-exported after a proxy crash",
                |_, s: &State| {
                    s.proxy_crashes == 0
                        && s.proxy_up
                        && (0..N).any(|r| s.wf_starts[r] == 1 && s.ack_started[r])
                },
            ),
        ]
    }
}
