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

/// The schema version this code writes (`meta.schema_version`).
///
/// * 1: `export_state` keyed by `record_id` (TEXT primary key, its own B-tree) plus an
///   `export_pending(signaled, seq)` index, rows kept after export.
/// * 2: `export_state` keyed by the begin event's `seq` (the table's rowid: no index of its
///   own), holding only records whose export is unfinished (deleted when the outcome is
///   acknowledged). A credentialed begin touches two B-trees fewer.
pub(crate) const SCHEMA_VERSION: u32 = 2;

/// The current schema, for a fresh spool.
const SCHEMA: &str = "
CREATE TABLE events (
    seq       INTEGER PRIMARY KEY,
    at        TEXT NOT NULL,
    record_id TEXT NOT NULL,
    kind      TEXT NOT NULL,
    body      TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE UNIQUE INDEX events_record_kind ON events(record_id, kind);
CREATE TABLE chain_anchor (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE export_state (
    seq        INTEGER PRIMARY KEY,
    started    INTEGER NOT NULL DEFAULT 0,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta(key, value) VALUES ('schema_version', '2');
";

/// v1 → v2: `export_state` re-keyed by `seq`, finished exports dropped (nothing reads them).
const MIGRATE_1_TO_2: &str = "
CREATE TABLE export_state_v2 (
    seq        INTEGER PRIMARY KEY,
    started    INTEGER NOT NULL DEFAULT 0,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
INSERT INTO export_state_v2(seq, started, attempts, last_error)
    SELECT seq, started, attempts, last_error FROM export_state WHERE signaled = 0;
DROP TABLE export_state;
ALTER TABLE export_state_v2 RENAME TO export_state;
INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', '2');
";

/// Why [`init_schema`] refused a file.
#[derive(Debug)]
pub(crate) enum SchemaError {
    Sql(rusqlite::Error),
    /// `meta.schema_version` is newer than this code (or not a version at all).
    Unsupported(String),
}

impl From<rusqlite::Error> for SchemaError {
    fn from(e: rusqlite::Error) -> SchemaError {
        SchemaError::Sql(e)
    }
}

/// Creates the schema in a fresh file, migrates an older one to [`SCHEMA_VERSION`], or refuses
/// a newer one; in one immediate transaction, so two processes opening one file at once
/// neither both create nor both migrate it.
pub(crate) fn init_schema(conn: &Connection) -> Result<(), SchemaError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let res = init_schema_in_tx(conn);
    match res {
        Ok(()) => conn.execute_batch("COMMIT")?,
        Err(_) => {
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
    res
}

fn init_schema_in_tx(conn: &Connection) -> Result<(), SchemaError> {
    let table = |name: &str| -> rusqlite::Result<bool> {
        conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
    };
    let version = if table("meta")? {
        let v: Option<String> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        match v {
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (1..=SCHEMA_VERSION).contains(&n) => n,
                _ => return Err(SchemaError::Unsupported(v)),
            },
            None => 1,
        }
    } else if table("events")? {
        1
    } else {
        conn.execute_batch(SCHEMA)?;
        return Ok(());
    };
    if version == 1 {
        tracing::info!("migrating the audit spool from schema version 1 to 2");
        conn.execute_batch(MIGRATE_1_TO_2)?;
    }
    Ok(())
}

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
    let mut out = [0u8; 64];
    // `encode_to_slice` cannot fail for a 32-byte digest into 64 bytes; `hex::encode` builds
    // the string a char at a time, which cost the writer more than the digits.
    let _ = hex::encode_to_slice(h.finalize(), &mut out);
    out.iter().copied().map(char::from).collect()
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
