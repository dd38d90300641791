//! The on-disk layout: an append-only, hash-chained event log plus unchained side tables.
//!
//! Every write is an *event* row: a `begin` event (the record without its outcome) and, later,
//! one `complete` event (the outcome). Each event stores `prev_hash` and
//! `hash = sha256(prev_hash ‖ seq ‖ at ‖ record_id ‖ kind ‖ body)`, so editing, deleting or
//! reordering rows breaks the chain at the first affected row. Export progress and the
//! retention anchor live in separate tables because they change after the fact; chaining them
//! would make every export acknowledgement look like tampering.

use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::record::{AuditRecord, Outcome};

/// `prev_hash` of the first event of a fresh spool.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub(crate) const KIND_BEGIN: &str = "begin";
pub(crate) const KIND_COMPLETE: &str = "complete";

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq       INTEGER PRIMARY KEY,
    at        TEXT NOT NULL,
    record_id TEXT NOT NULL,
    kind      TEXT NOT NULL,
    body      TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_record_kind ON events(record_id, kind);
CREATE TABLE IF NOT EXISTS chain_anchor (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS export_state (
    record_id  TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL,
    started    INTEGER NOT NULL DEFAULT 0,
    signaled   INTEGER NOT NULL DEFAULT 0,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS export_pending ON export_state(signaled, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', '1');
";

/// Body of a `begin` event: the record as known when the request was decided.
#[derive(Serialize, Deserialize)]
pub(crate) struct BeginBody {
    pub(crate) record: AuditRecord,
}

/// Body of a `complete` event.
#[derive(Serialize, Deserialize)]
pub(crate) struct CompleteBody {
    pub(crate) outcome: Outcome,
}

/// The chain hash of one event.
pub(crate) fn event_hash(
    prev_hash: &str,
    seq: i64,
    at: &str,
    record_id: &str,
    kind: &str,
    body: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [prev_hash, &seq.to_string(), at, record_id, kind] {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    h.update(body.as_bytes());
    hex::encode(h.finalize())
}

/// The last event's `(seq, hash)`, or the retention anchor, or the genesis.
pub(crate) fn head(conn: &Connection) -> rusqlite::Result<(i64, String)> {
    // Cached: the writer reads the head once per batch. A real error propagates (only "no
    // rows" falls through to the anchor), so a failing read can never restart the chain.
    let last = conn
        .prepare_cached("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
        .optional()?;
    if let Some(h) = last {
        return Ok(h);
    }
    anchor(conn).map(|a| a.unwrap_or((0, GENESIS.to_string())))
}

/// The retention anchor: `(seq, hash)` of the last pruned event.
pub(crate) fn anchor(conn: &Connection) -> rusqlite::Result<Option<(i64, String)>> {
    match conn.query_row("SELECT seq, hash FROM chain_anchor WHERE id = 1", [], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
    }) {
        Ok(a) => Ok(Some(a)),
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
        Err(e) => Err(e),
    }
}
