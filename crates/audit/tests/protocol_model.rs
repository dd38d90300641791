//! Model-checks the audit protocol (see `protocol/model.rs` and `docs/protocol.md`).
#![allow(clippy::unwrap_used)]

#[path = "protocol/model.rs"]
mod model;

use model::AuditProtocol;
use stateright::{Checker, Model};

#[test]
fn audit_protocol_properties_hold() {
    let checker = AuditProtocol::standard().checker().spawn_bfs().join();
    checker.assert_properties();
    // Pinned: a change in these numbers means the protocol (or the model) changed. Update
    // docs/protocol.md with the new figures in the same change.
    assert_eq!(
        (checker.unique_state_count(), checker.state_count()),
        (PINNED_UNIQUE, PINNED_TOTAL),
        "state counts changed"
    );
}

const PINNED_UNIQUE: usize = 7203;
const PINNED_TOTAL: usize = 24916;

/// The properties are not vacuous: seeded bugs are found.
#[test]
fn seeded_bugs_are_caught() {
    let mut m = AuditProtocol::standard();
    m.bug_ack_before_fsync = true;
    let c = m.checker().spawn_bfs().join();
    assert!(c
        .discovery("no secret is sent before its record is durable")
        .is_some());

    let mut m = AuditProtocol::standard();
    m.bug_recomplete_on_restart = true;
    let c = m.checker().spawn_bfs().join();
    assert!(c
        .discovery("every record is completed at most once")
        .is_some());
}
