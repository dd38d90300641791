//! Audit for credproxy: one typed record per request, written to a durable, hash-chained local
//! spool, queryable by the CLI and optionally exported to a sink (Temporal).
//!
//! **Invariant:** a credential-bearing record is durable (committed and fsync'd) before
//! [`AuditSpool::begin_credentialed`] returns `Ok`, and the proxy sends no secret upstream
//! before that. Nothing else in this crate is on the request path's critical section: records
//! without credentials, completions and the Temporal export are asynchronous, so Temporal being
//! slow or down never delays or blocks a request.
//!
//! Layout: [`record`] (the typed record), [`spool`] (writer thread, group commit, retention),
//! [`query`] (list/show/verify/export for the CLI), [`export`] (the export seam: a driver
//! that hands credential-use records to any [`export::AuditSink`]), [`temporal`] (the
//! Temporal sink and the `ProxyRequestWorkflow` worker). The stateright model of the protocol is in
//! `tests/protocol/model.rs` (see `docs/protocol.md`), kept out of the library so the model
//! checker never enters the proxy's dependency graph.

mod chain;
mod error;
pub mod export;
mod group_commit;
#[cfg(test)]
mod group_commit_tests;
pub mod query;
pub mod record;
pub mod spool;
mod sync;
pub mod temporal;

pub use error::AuditError;
pub use record::{AuditRecord, CredentialUse, Decision, Outcome};
pub use spool::{AuditConfig, AuditSpool, ExportStage, SpoolStats};
