//! The crate's error type. Messages name the file and the operation, never record contents.

use std::path::PathBuf;

/// Errors from the spool, the query functions and the exporter.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The spool directory or file could not be created or opened.
    #[error("cannot open audit spool {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// SQLite refused to open or initialise the spool.
    #[error("cannot initialise audit spool {path}")]
    Init {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The spool was written by a newer credproxy (schema version above what this one reads),
    /// or its version row is not a number. Refused rather than guessed at.
    #[error(
        "audit spool {path} has schema version {found:?}; this credproxy reads versions 1 to \
         {supported}: run a newer credproxy on it, or point audit.path at another file"
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: String,
        supported: u32,
    },
    /// A batch could not be committed (disk full, I/O error, read-only file …). The message is
    /// shared by every request of the batch, hence a string rather than the SQLite error.
    #[error("audit spool commit failed: {reason}")]
    Commit { reason: String },
    /// The record was refused before reaching the disk.
    #[error("invalid audit record {id:?}: {reason}")]
    InvalidRecord { id: String, reason: &'static str },
    /// A record with this id was already written.
    #[error("duplicate audit record id {id}")]
    Duplicate { id: String },
    /// The spool is closed or its writer thread has stopped.
    #[error("audit spool is closed")]
    Closed,
    /// A read-side query failed.
    #[error("audit query on {path} failed")]
    Query {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// A stored row could not be decoded (the file was edited or is from a newer version).
    #[error("corrupt audit row at seq {seq}")]
    Corrupt {
        seq: i64,
        #[source]
        source: serde_json::Error,
    },
    /// Writing an export stream failed.
    #[error("cannot write audit export")]
    Write(#[source] std::io::Error),
}
