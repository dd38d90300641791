//! Read side for the CLI (`credproxy audit list|show|verify|export`) and the exporter.
//!
//! Every function opens its own connection: readers never wait for the writer (WAL), and the
//! CLI can run while the proxy is up.

use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

use crate::chain::{self, BeginBody, CompleteBody, GENESIS, KIND_BEGIN, KIND_COMPLETE};
use crate::error::AuditError;
use crate::record::{parse_rfc3339, AuditRecord};

/// Filters for [`list`]; every `Some` must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Exact agent id.
    pub agent: Option<String>,
    /// Exact destination `host:port`, or a bare host matching any port.
    pub destination: Option<String>,
    /// A credential id used by the request.
    pub credential: Option<String>,
    /// Status label: `in_progress`, `success`, `denied`, `error`.
    pub status: Option<String>,
    /// Records at or after this RFC 3339 time.
    pub since: Option<String>,
    /// Records before this RFC 3339 time.
    pub until: Option<String>,
    /// Keep only the newest `limit` matches (output stays oldest first).
    pub limit: Option<usize>,
}

/// Result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Events whose hash was checked before the first break (or all of them).
    pub records_checked: u64,
    /// The first inconsistency, if any.
    pub first_break: Option<Break>,
    /// `seq` and hash of the last verified event: record it elsewhere to detect later
    /// truncation of the tail, which no chain can detect on its own.
    pub head_seq: i64,
    /// Hash of the last verified event.
    pub head_hash: String,
    /// Seq of the retention anchor the walk started from (0 without pruning).
    pub anchor_seq: i64,
}

/// Where and how the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Break {
    /// The `seq` of the offending row (for a gap: the row after the gap).
    pub position: i64,
    /// Its record id.
    pub id: String,
    /// What is wrong.
    pub problem: String,
}

/// A credential-use record waiting for (part of) its export.
#[derive(Debug, Clone)]
pub struct PendingExport {
    /// The record as stored (with its outcome once completed).
    pub record: AuditRecord,
    /// The workflow was already started (acknowledged).
    pub started: bool,
}

fn open(path: &Path) -> Result<Connection, AuditError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| q(path, source))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|source| q(path, source))?;
    Ok(conn)
}

fn q(path: &Path, source: rusqlite::Error) -> AuditError {
    AuditError::Query {
        path: path.to_path_buf(),
        source,
    }
}

/// Loads records in seq order; `where_begin` restricts the begin events (SQL on alias `b`).
fn load(
    conn: &Connection,
    path: &Path,
    where_begin: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<AuditRecord>, AuditError> {
    let sql = format!(
        "SELECT b.seq, b.body, c.seq, c.body FROM events b \
         LEFT JOIN events c ON c.record_id = b.record_id AND c.kind = '{KIND_COMPLETE}' \
         WHERE b.kind = '{KIND_BEGIN}' {where_begin} ORDER BY b.seq"
    );
    let mut st = conn.prepare(&sql).map_err(|e| q(path, e))?;
    let rows = st
        .query_map(args, |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .map_err(|e| q(path, e))?;
    let mut out = Vec::new();
    for row in rows {
        let (bseq, bbody, cseq, cbody) = row.map_err(|e| q(path, e))?;
        let mut rec = serde_json::from_str::<BeginBody>(&bbody)
            .map_err(|source| AuditError::Corrupt { seq: bseq, source })?
            .record;
        if let (Some(cseq), Some(cbody)) = (cseq, cbody) {
            rec.outcome = Some(
                serde_json::from_str::<CompleteBody>(&cbody)
                    .map_err(|source| AuditError::Corrupt { seq: cseq, source })?
                    .outcome,
            );
        }
        out.push(rec);
    }
    Ok(out)
}

/// Records matching `filter`, oldest first.
///
/// Filtering happens in Rust over a scan of the begin events: the spool is bounded by
/// retention and this is an operator tool, not a request-path query.
pub fn list(path: &Path, filter: &Filter) -> Result<Vec<AuditRecord>, AuditError> {
    let conn = open(path)?;
    let since = filter.since.as_deref().and_then(parse_rfc3339);
    let until = filter.until.as_deref().and_then(parse_rfc3339);
    let mut out: Vec<AuditRecord> = load(&conn, path, "", &[])?
        .into_iter()
        .filter(|r| {
            if let Some(a) = &filter.agent {
                if r.agent_id.as_deref() != Some(a.as_str()) {
                    return false;
                }
            }
            if let Some(d) = &filter.destination {
                let host = r
                    .destination
                    .rsplit_once(':')
                    .map_or(r.destination.as_str(), |(h, _)| h);
                if &r.destination != d && host != d {
                    return false;
                }
            }
            if let Some(c) = &filter.credential {
                if !r.credentials.iter().any(|u| &u.id == c) {
                    return false;
                }
            }
            if let Some(s) = &filter.status {
                if r.status_label() != s {
                    return false;
                }
            }
            if since.is_some() || until.is_some() {
                let Some(t) = parse_rfc3339(&r.time) else {
                    return false;
                };
                if since.is_some_and(|s| t < s) || until.is_some_and(|u| t >= u) {
                    return false;
                }
            }
            true
        })
        .collect();
    if let Some(limit) = filter.limit {
        let skip = out.len().saturating_sub(limit);
        out.drain(..skip);
    }
    Ok(out)
}

/// One record by id.
pub fn show(path: &Path, id: &str) -> Result<Option<AuditRecord>, AuditError> {
    let conn = open(path)?;
    Ok(load(&conn, path, "AND b.record_id = ?1", &[&id])?
        .into_iter()
        .next())
}

/// Walks the chain from the retention anchor (or genesis) in seq order and reports the first
/// row whose seq, `prev_hash` or `hash` does not follow.
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    let conn = open(path)?;
    let anchor = chain::anchor(&conn).map_err(|e| q(path, e))?;
    let (anchor_seq, mut prev) = anchor.unwrap_or((0, GENESIS.to_string()));
    let mut expected_seq = anchor_seq + 1;
    let mut st = conn
        .prepare("SELECT seq, at, record_id, kind, body, prev_hash, hash FROM events ORDER BY seq")
        .map_err(|e| q(path, e))?;
    let mut rows = st.query([]).map_err(|e| q(path, e))?;
    let mut checked = 0u64;
    let mut head_seq = anchor_seq;
    let mut first_break = None;
    while let Some(r) = rows.next().map_err(|e| q(path, e))? {
        let get = |i| r.get::<_, String>(i);
        let seq: i64 = r.get(0).map_err(|e| q(path, e))?;
        let (at, id, kind, body, prev_hash, hash) =
            match (get(1), get(2), get(3), get(4), get(5), get(6)) {
                (Ok(a), Ok(b), Ok(c), Ok(d), Ok(e), Ok(f)) => (a, b, c, d, e, f),
                _ => {
                    first_break = Some(Break {
                        position: seq,
                        id: String::new(),
                        problem: "row has a column of the wrong type".into(),
                    });
                    break;
                }
            };
        let problem = if seq != expected_seq {
            Some(format!(
                "expected seq {expected_seq}, found {seq}: rows were deleted or renumbered"
            ))
        } else if prev_hash != prev {
            Some("prev_hash does not match the previous row: rows were deleted or reordered".into())
        } else if chain::event_hash(&prev, seq, &at, &id, &kind, &body) != hash {
            Some("hash does not match the row's contents: the row was edited".into())
        } else if kind != KIND_BEGIN && kind != KIND_COMPLETE {
            Some(format!("unknown event kind {kind:?}"))
        } else {
            None
        };
        if let Some(problem) = problem {
            first_break = Some(Break {
                position: seq,
                id,
                problem,
            });
            break;
        }
        checked += 1;
        head_seq = seq;
        expected_seq = seq + 1;
        prev = hash;
    }
    Ok(VerifyReport {
        records_checked: checked,
        first_break,
        head_seq,
        head_hash: prev,
        anchor_seq,
    })
}

/// Writes every record as one JSON object per line, oldest first; returns the count.
pub fn export_jsonl(path: &Path, out: &mut dyn Write) -> Result<u64, AuditError> {
    let conn = open(path)?;
    let mut n = 0;
    for rec in load(&conn, path, "", &[])? {
        let line = serde_json::to_string(&rec).map_err(|e| AuditError::Write(e.into()))?;
        out.write_all(line.as_bytes()).map_err(AuditError::Write)?;
        out.write_all(b"\n").map_err(AuditError::Write)?;
        n += 1;
    }
    out.flush().map_err(AuditError::Write)?;
    Ok(n)
}

/// A fixed-width table for terminals (one line per record).
pub fn format_table(records: &[AuditRecord]) -> String {
    let header = [
        "ID",
        "TIME",
        "AGENT",
        "METHOD",
        "DESTINATION",
        "PATH",
        "CREDENTIALS",
        "STATUS",
        "HTTP",
        "MS",
    ];
    let rows: Vec<[String; 10]> = records
        .iter()
        .map(|r| {
            let creds = r
                .credentials
                .iter()
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>()
                .join(",");
            let o = r.outcome.as_ref();
            [
                r.id.clone(),
                r.time.clone(),
                r.agent_id.clone().unwrap_or_else(|| "-".into()),
                r.method.clone(),
                r.destination.clone(),
                r.path.clone(),
                if creds.is_empty() { "-".into() } else { creds },
                r.status_label().to_string(),
                o.and_then(|o| o.status)
                    .map_or_else(|| "-".into(), |s| s.to_string()),
                o.map_or_else(|| "-".into(), |o| o.latency_ms.to_string()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = cells
            .zip(widths.iter())
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// Reader used by the Temporal exporter.
pub struct ExportReader {
    path: PathBuf,
    conn: Connection,
}

impl ExportReader {
    /// Opens a read connection on the spool.
    pub fn open(path: &Path) -> Result<ExportReader, AuditError> {
        Ok(ExportReader {
            path: path.to_path_buf(),
            conn: open(path)?,
        })
    }

    /// Up to `limit` credential-use records with an export step to do, oldest first: not yet
    /// started, or started and completed but not yet signalled.
    pub fn pending(&self, limit: usize) -> Result<Vec<PendingExport>, AuditError> {
        let path = &self.path;
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT b.record_id, es.started FROM export_state es \
                 JOIN events b ON b.seq = es.seq \
                 WHERE es.started = 0 OR EXISTS (SELECT 1 FROM events c \
                   WHERE c.record_id = b.record_id AND c.kind = 'complete') \
                 ORDER BY es.seq LIMIT ?1",
            )
            .map_err(|e| q(path, e))?;
        let ids: Vec<(String, bool)> = st
            .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? != 0))
            })
            .map_err(|e| q(path, e))?
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| q(path, e))?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, started) in ids {
            if let Some(record) = load(&self.conn, path, "AND b.record_id = ?1", &[&id])?
                .into_iter()
                .next()
            {
                out.push(PendingExport { record, started });
            }
        }
        Ok(out)
    }

    /// Number of credential-use records not fully exported, and the age in ms of the oldest.
    pub fn backlog(&self) -> Result<(u64, Option<String>), AuditError> {
        let path = &self.path;
        self.conn
            .query_row(
                "SELECT count(*), min(e.at) FROM export_state es \
                 JOIN events e ON e.seq = es.seq",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?)),
            )
            .optional()
            .map_err(|e| q(path, e))
            .map(|o| o.map_or((0, None), |(n, at)| (u64::try_from(n).unwrap_or(0), at)))
    }
}
