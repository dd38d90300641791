//! The durable spool: one writer thread, group commit, fail-closed begin.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use crate::chain::{self, BeginBody, CompleteBody, KIND_BEGIN, KIND_COMPLETE};
use crate::error::AuditError;
use crate::group_commit::{GroupCommitQueue, PushError};
use crate::record::{self, AuditRecord, Outcome};

/// The smallest [`AuditConfig::max_size_bytes`] accepted.
pub const MIN_MAX_SIZE_BYTES: u64 = 64 * 1024;

/// Spool configuration (`audit.*` in the proxy config: `path`, `retention` and
/// `max_size_bytes`; the rest keep their defaults there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// SQLite file. Created with mode 0600 (its directory with 0700 when missing).
    pub path: PathBuf,
    /// Events older than this are pruned (oldest first, keeping the chain verifiable).
    pub retention: Option<Duration>,
    /// Extra time the writer waits, after the first credentialed record of a batch arrives, for
    /// more to share the fsync. Zero (the default) still batches everything that queued up
    /// during the previous fsync, which is what makes group commit work under load without
    /// adding latency when idle.
    pub group_commit_max_delay: Duration,
    /// Maximum items per transaction.
    pub batch_max: usize,
    /// How long a batch of asynchronous items only (records without credentials,
    /// completions, export acknowledgements) may wait for more before it is committed. Nobody
    /// waits on these items, and without it a steady trickle pays one commit (several WAL
    /// pages) each; a credentialed begin, a flush or `batch_max` items end the wait at once.
    pub async_linger: Duration,
    /// Maximum queued asynchronous items (records without credentials, completions, export
    /// acknowledgements). Beyond it they are refused, counted (`rejected_records`) and logged.
    /// Credentialed begins are never refused for this reason: their callers wait anyway.
    pub queue_max: usize,
    /// Caps the database size (SQLite `max_page_count`); a full spool fails closed like a
    /// full disk.
    pub max_size_bytes: Option<u64>,
    /// Where event times (and so retention ages) are read; the system clock by default.
    /// Tests pass an adjustable one to age records without waiting.
    pub clock: credproxy_core::Clock,
}

impl AuditConfig {
    /// Defaults for everything but the path.
    pub fn new(path: impl Into<PathBuf>) -> AuditConfig {
        AuditConfig {
            path: path.into(),
            retention: None,
            group_commit_max_delay: Duration::ZERO,
            batch_max: 1024,
            async_linger: Duration::from_millis(2),
            queue_max: 65_536,
            max_size_bytes: None,
            clock: credproxy_core::Clock::system(),
        }
    }

    /// Every rule this configuration breaks, as `(field, reason)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.max_size_bytes.is_some_and(|m| m < MIN_MAX_SIZE_BYTES) {
            out.push((
                "max_size_bytes",
                format!("must be at least {MIN_MAX_SIZE_BYTES}"),
            ));
        }
        out
    }
}

/// Counters for metrics and tests. Monotonic unless noted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records written (begin events).
    pub records: u64,
    /// Completions written.
    pub completions: u64,
    /// Completions ignored because the record was already completed.
    pub duplicate_completions: u64,
    /// Completions ignored because no such record exists.
    pub orphan_completions: u64,
    /// Records refused (queue full, invalid, duplicate id).
    pub rejected_records: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Commits made with `synchronous = FULL`, i.e. one WAL fsync each.
    pub fsyncs: u64,
    /// Items lost to a failed transaction (credentialed callers got an error).
    pub write_failures: u64,
    /// Items queued for the writer (gauge).
    pub queue_depth: u64,
    /// Credential-use records not yet fully exported to Temporal (gauge).
    pub export_pending: u64,
    /// Records fully exported.
    pub exported: u64,
    /// Failed export attempts.
    pub export_failures: u64,
    /// Age of the oldest record waiting for export, in ms (gauge, set by the exporter).
    pub export_lag_ms: u64,
    /// Events removed by retention.
    pub pruned_events: u64,
}

impl SpoolStats {
    /// Prometheus text exposition of the counters (prefix `credproxy_audit_`).
    pub fn render_prometheus(&self) -> String {
        let rows: [(&str, &str, u64); 14] = [
            ("records_total", "counter", self.records),
            ("completions_total", "counter", self.completions),
            (
                "duplicate_completions_total",
                "counter",
                self.duplicate_completions,
            ),
            (
                "orphan_completions_total",
                "counter",
                self.orphan_completions,
            ),
            ("rejected_records_total", "counter", self.rejected_records),
            ("commits_total", "counter", self.commits),
            ("fsyncs_total", "counter", self.fsyncs),
            ("write_failures_total", "counter", self.write_failures),
            ("queue_depth", "gauge", self.queue_depth),
            ("export_pending", "gauge", self.export_pending),
            ("exported_total", "counter", self.exported),
            ("export_failures_total", "counter", self.export_failures),
            ("export_lag_ms", "gauge", self.export_lag_ms),
            ("pruned_events_total", "counter", self.pruned_events),
        ];
        let mut out = String::new();
        for (name, kind, v) in rows {
            out.push_str(&format!(
                "# TYPE credproxy_audit_{name} {kind}\ncredproxy_audit_{name} {v}\n"
            ));
        }
        out
    }
}

/// Which export step the export driver acknowledges (`crate::export`): column `started` of
/// `export_state`, then the deletion of the record's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportStage {
    /// The sink has the record (for Temporal: its workflow exists).
    Record,
    /// The sink has the record's outcome (for Temporal: the signal was accepted, or the
    /// workflow already closed).
    Outcome,
}

/// Handle to the spool. Cheap to clone; all clones share one writer thread.
#[derive(Clone)]
pub struct AuditSpool {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    queue: Arc<GroupCommitQueue<Item>>,
    counters: Arc<Counters>,
    queue_max: usize,
    writer: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
pub(crate) struct Counters {
    records: AtomicU64,
    completions: AtomicU64,
    duplicate_completions: AtomicU64,
    orphan_completions: AtomicU64,
    rejected_records: AtomicU64,
    commits: AtomicU64,
    fsyncs: AtomicU64,
    write_failures: AtomicU64,
    export_pending: AtomicU64,
    exported: AtomicU64,
    pub(crate) export_failures: AtomicU64,
    pub(crate) export_lag_ms: AtomicU64,
    pruned_events: AtomicU64,
}

type Reply<T> = oneshot::Sender<Result<T, AuditError>>;

enum Item {
    Begin {
        // Boxed: records are large and most queue items are small.
        record: Box<AuditRecord>,
        /// `Some` for a credentialed begin: forces a durable commit and gets the result.
        durable: Option<Reply<()>>,
    },
    Complete {
        id: String,
        outcome: Outcome,
    },
    ExportAck {
        id: String,
        stage: ExportStage,
    },
    ExportFailed {
        id: String,
        error: String,
    },
    Flush(Reply<()>),
    Prune(Option<Reply<u64>>),
}

impl Item {
    /// Whether someone waits on this item, so its batch must not linger.
    fn is_urgent(&self) -> bool {
        matches!(
            self,
            Item::Begin {
                durable: Some(_),
                ..
            } | Item::Flush(_)
                | Item::Prune(_)
        )
    }
}

impl AuditSpool {
    /// Opens (creating if needed) the spool and starts its writer thread.
    ///
    /// Records that a previous process began but never completed (it crashed mid-request) are
    /// completed here with reason `interrupted`, so every begun record ends up completed once.
    pub fn open(cfg: AuditConfig) -> Result<AuditSpool, AuditError> {
        let conn = open_writer_connection(&cfg)?;
        let init_err = |source| AuditError::Init {
            path: cfg.path.clone(),
            source,
        };
        let pending: i64 = conn
            .query_row("SELECT count(*) FROM export_state", [], |r| r.get(0))
            .map_err(init_err)?;
        let counters = Arc::new(Counters::default());
        counters
            .export_pending
            .store(u64::try_from(pending).unwrap_or(0), Ordering::Relaxed);
        let mut writer = Writer {
            conn,
            synchronous_full: None,
            counters: counters.clone(),
            retention: cfg.retention,
            clock: cfg.clock.clone(),
            last_prune: Instant::now(),
            open_ids: HashSet::new(),
        };
        writer.complete_interrupted().map_err(init_err)?;
        if cfg.retention.is_some() {
            writer.prune().map_err(init_err)?;
        }
        let queue = Arc::new(GroupCommitQueue::new());
        let wq = queue.clone();
        let delay = cfg.group_commit_max_delay;
        let linger = cfg.async_linger;
        let batch_max = cfg.batch_max.max(1);
        let handle = std::thread::Builder::new()
            .name("audit-spool-writer".into())
            .spawn(move || writer.run(&wq, batch_max, delay, linger))
            .map_err(|source| AuditError::Open {
                path: cfg.path.clone(),
                source,
            })?;
        Ok(AuditSpool {
            inner: Arc::new(Inner {
                path: cfg.path,
                queue,
                counters,
                queue_max: cfg.queue_max.max(1),
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// The spool file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Writes the record of a credential-bearing request and returns once it is committed and
    /// fsync'd. Concurrent callers share one fsync (group commit).
    ///
    /// `Err` means the record is not durable: the caller must fail closed (503) and send
    /// nothing upstream.
    pub async fn begin_credentialed(&self, rec: AuditRecord) -> Result<(), AuditError> {
        validate(&rec)?;
        let (tx, rx) = oneshot::channel();
        let item = Item::Begin {
            record: Box::new(rec),
            durable: Some(tx),
        };
        match self.inner.queue.push(item, None) {
            Ok(()) => {}
            Err(PushError::Closed(_) | PushError::Full(_)) => return Err(AuditError::Closed),
        }
        rx.await.unwrap_or(Err(AuditError::Closed))
    }

    /// Queues the record of a request that carried no credential; written asynchronously in
    /// batches. Never blocks. A record refused (queue full, invalid, spool closed) is counted in
    /// `rejected_records` and logged at warn: it is never dropped silently.
    ///
    /// The record may already carry its outcome (the usual case for a denied request); if not,
    /// call [`AuditSpool::complete`] later.
    pub fn record(&self, rec: AuditRecord) {
        if let Err(e) = validate(&rec) {
            self.reject("invalid", &rec.id, Some(&e));
            return;
        }
        let id = rec.id.clone();
        let item = Item::Begin {
            record: Box::new(rec),
            durable: None,
        };
        if let Err(e) = self.inner.queue.push(item, Some(self.inner.queue_max)) {
            self.reject(push_error_label(&e), &id, None);
        }
    }

    /// Queues the completion of a record. Applied at most once per id: later completions are
    /// ignored and counted (`duplicate_completions`).
    pub fn complete(&self, id: &str, outcome: Outcome) {
        let item = Item::Complete {
            id: id.to_string(),
            outcome,
        };
        if let Err(e) = self.inner.queue.push(item, Some(self.inner.queue_max)) {
            self.reject(push_error_label(&e), id, None);
        }
    }

    /// Waits until everything queued before this call is committed and fsync'd.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .queue
            .push(Item::Flush(tx), None)
            .map_err(|_| AuditError::Closed)?;
        rx.await.unwrap_or(Err(AuditError::Closed))
    }

    /// Applies retention now (it also runs at open and every minute); returns events pruned.
    pub async fn prune_now(&self) -> Result<u64, AuditError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .queue
            .push(Item::Prune(Some(tx)), None)
            .map_err(|_| AuditError::Closed)?;
        rx.await.unwrap_or(Err(AuditError::Closed))
    }

    /// Flushes, stops the writer and waits for it. Other clones get `Closed` afterwards.
    pub async fn close(&self) -> Result<(), AuditError> {
        let flushed = self.flush().await;
        self.inner.queue.close();
        let handle = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            // The writer drains the (closed) queue and returns; joining may wait for one batch.
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        flushed
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SpoolStats {
        let c = &self.inner.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SpoolStats {
            records: g(&c.records),
            completions: g(&c.completions),
            duplicate_completions: g(&c.duplicate_completions),
            orphan_completions: g(&c.orphan_completions),
            rejected_records: g(&c.rejected_records),
            commits: g(&c.commits),
            fsyncs: g(&c.fsyncs),
            write_failures: g(&c.write_failures),
            queue_depth: self.inner.queue.len() as u64,
            export_pending: g(&c.export_pending),
            exported: g(&c.exported),
            export_failures: g(&c.export_failures),
            export_lag_ms: g(&c.export_lag_ms),
            pruned_events: g(&c.pruned_events),
        }
    }

    /// Records an export step as done (not chained; batched, not fsync'd: a lost
    /// acknowledgement only causes an idempotent re-export).
    pub fn ack_export(&self, id: &str, stage: ExportStage) {
        let item = Item::ExportAck {
            id: id.to_string(),
            stage,
        };
        let _ = self.inner.queue.push(item, None);
    }

    /// Records a failed export attempt (error text is the exporter's, without record data).
    pub fn export_failed(&self, id: &str, error: String) {
        self.inner
            .counters
            .export_failures
            .fetch_add(1, Ordering::Relaxed);
        let item = Item::ExportFailed {
            id: id.to_string(),
            error,
        };
        let _ = self.inner.queue.push(item, None);
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    fn reject(&self, why: &'static str, id: &str, err: Option<&AuditError>) {
        self.inner
            .counters
            .rejected_records
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            why,
            record_id = %id,
            error = err.map(tracing::field::display),
            "audit item refused by the spool"
        );
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The writer drains what is queued, then exits; nobody waits for it here because a
        // drop may run on an async worker thread.
        self.queue.close();
    }
}

fn push_error_label<T>(e: &PushError<T>) -> &'static str {
    match e {
        PushError::Closed(_) => "closed",
        PushError::Full(_) => "queue_full",
    }
}

/// Refuses ids that could not serve as a workflow id or that would let one request's record
/// shadow another's (empty, overlong, odd characters).
fn validate(rec: &AuditRecord) -> Result<(), AuditError> {
    let bad = |reason| AuditError::InvalidRecord {
        id: rec.id.chars().take(64).collect(),
        reason,
    };
    if rec.id.is_empty() || rec.id.len() > 64 {
        return Err(bad("id must be 1 to 64 characters"));
    }
    if !rec
        .id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(bad("id must be ASCII letters, digits, '-' or '_'"));
    }
    Ok(())
}

fn open_writer_connection(cfg: &AuditConfig) -> Result<Connection, AuditError> {
    let path = &cfg.path;
    let io_err = |source: io::Error| AuditError::Open {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err)?;
        }
    }
    // Create the file ourselves so it is 0600 from the first byte; SQLite gives the -wal and
    // -shm files the database file's mode.
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_err)?;
    let init = |source| AuditError::Init {
        path: path.clone(),
        source,
    };
    let conn = Connection::open(path).map_err(init)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(init)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(init)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(init(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode stayed {mode}"
        ))));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(init)?;
    if let Some(max) = cfg.max_size_bytes {
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(init)?;
        let pages = (i64::try_from(max).unwrap_or(i64::MAX) / page_size.max(512)).max(1);
        let _: i64 = conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                r.get(0)
            })
            .map_err(init)?;
    }
    chain::init_schema(&conn).map_err(|e| match e {
        chain::SchemaError::Sql(source) => init(source),
        chain::SchemaError::Unsupported(found) => AuditError::UnsupportedVersion {
            path: path.clone(),
            found,
            supported: chain::SCHEMA_VERSION,
        },
    })?;
    Ok(conn)
}

struct Writer {
    conn: Connection,
    /// The `synchronous` setting in force on `conn` (`None` until first set by a batch), so a
    /// batch re-issues the pragma only when durability changes.
    synchronous_full: Option<bool>,
    counters: Arc<Counters>,
    retention: Option<Duration>,
    clock: credproxy_core::Clock,
    last_prune: Instant,
    /// Ids of records this writer began without an outcome and has not completed yet, so a
    /// completion needs no lookup in the usual case. Only a cache: an id missing from it (after
    /// a restart, a failed batch, a pruning, or beyond [`OPEN_IDS_MAX`]) is looked up in SQL.
    open_ids: HashSet<String>,
}

/// Bound of [`Writer::open_ids`]: records in flight at once beyond it are completed through the
/// SQL lookup instead (still correct, a little slower).
const OPEN_IDS_MAX: usize = 1 << 16;

/// Per-batch results, applied to counters and replies only once the batch has committed.
#[derive(Default)]
struct BatchEffects {
    records: u64,
    completions: u64,
    duplicate_completions: u64,
    orphan_completions: u64,
    rejected: u64,
    new_pending: u64,
    exported: u64,
}

const PRUNE_EVERY: Duration = Duration::from_secs(60);

impl Writer {
    fn run(
        mut self,
        queue: &GroupCommitQueue<Item>,
        batch_max: usize,
        delay: Duration,
        linger: Duration,
    ) {
        while let Some(mut batch) = queue.take_batch_lingering(batch_max, linger, Item::is_urgent) {
            let wants_durable = batch.iter().any(|i| {
                matches!(
                    i,
                    Item::Begin {
                        durable: Some(_),
                        ..
                    }
                )
            });
            if wants_durable && !delay.is_zero() && batch.len() < batch_max {
                std::thread::sleep(delay);
                batch.extend(queue.try_take(batch_max - batch.len()));
            }
            self.process(batch);
            if self.retention.is_some() && self.last_prune.elapsed() >= PRUNE_EVERY {
                if let Err(e) = self.prune() {
                    tracing::error!(error = %e, "audit retention pruning failed");
                }
            }
        }
    }

    fn process(&mut self, batch: Vec<Item>) {
        let mut replies: Vec<(Reply<()>, Result<(), AuditError>)> = Vec::new();
        let mut prunes: Vec<Reply<u64>> = Vec::new();
        let mut writes: Vec<Item> = Vec::with_capacity(batch.len());
        let mut durable = false;
        for item in batch {
            match item {
                Item::Flush(r) => {
                    durable = true;
                    replies.push((r, Ok(())));
                }
                Item::Prune(r) => prunes.extend(r),
                Item::Begin {
                    durable: Some(_), ..
                } => {
                    durable = true;
                    writes.push(item);
                }
                other => writes.push(other),
            }
        }
        let n_writes = writes.len() as u64;
        match self.write_batch(writes, durable, &mut replies) {
            Ok(fx) => {
                let c = &self.counters;
                c.commits.fetch_add(1, Ordering::Relaxed);
                if durable {
                    c.fsyncs.fetch_add(1, Ordering::Relaxed);
                }
                c.records.fetch_add(fx.records, Ordering::Relaxed);
                c.completions.fetch_add(fx.completions, Ordering::Relaxed);
                c.duplicate_completions
                    .fetch_add(fx.duplicate_completions, Ordering::Relaxed);
                c.orphan_completions
                    .fetch_add(fx.orphan_completions, Ordering::Relaxed);
                c.rejected_records.fetch_add(fx.rejected, Ordering::Relaxed);
                c.export_pending
                    .fetch_add(fx.new_pending, Ordering::Relaxed);
                c.exported.fetch_add(fx.exported, Ordering::Relaxed);
                let _ = c
                    .export_pending
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                        Some(p.saturating_sub(fx.exported))
                    });
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(error = %reason, items = n_writes, "audit spool commit failed");
                self.counters
                    .write_failures
                    .fetch_add(n_writes, Ordering::Relaxed);
                for (_, res) in replies.iter_mut() {
                    *res = Err(AuditError::Commit {
                        reason: reason.clone(),
                    });
                }
            }
        }
        for (tx, res) in replies {
            let _ = tx.send(res);
        }
        for tx in prunes {
            let _ = tx.send(self.prune().map_err(|e| AuditError::Commit {
                reason: e.to_string(),
            }));
        }
    }

    /// Writes one batch in one transaction. Logical refusals (duplicate id, second
    /// completion) affect only their item; an SQLite error aborts the whole batch.
    fn write_batch(
        &mut self,
        writes: Vec<Item>,
        durable: bool,
        replies: &mut Vec<(Reply<()>, Result<(), AuditError>)>,
    ) -> rusqlite::Result<BatchEffects> {
        // WAL + NORMAL skips the fsync at commit; frames become durable with the next FULL
        // commit (the WAL is sequential) or checkpoint. Only credentialed work pays an fsync.
        if self.synchronous_full != Some(durable) {
            self.conn.pragma_update(
                None,
                "synchronous",
                if durable { "FULL" } else { "NORMAL" },
            )?;
            self.synchronous_full = Some(durable);
        }
        // Transaction statements prepared once (rusqlite's `Transaction` parses `BEGIN` and
        // `COMMIT` anew every time).
        self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let res = write_items(&self.conn, &self.clock, &mut self.open_ids, writes, replies)
            .and_then(|fx| {
                self.conn.prepare_cached("COMMIT")?.execute([])?;
                Ok(fx)
            });
        if res.is_err() {
            // A failed statement or COMMIT can leave the transaction open: end it, so the next
            // batch starts afresh. The open-record cache may name rolled-back rows: drop it.
            if !self.conn.is_autocommit() {
                if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                    tracing::error!(error = %e, "audit spool rollback failed");
                }
            }
            self.open_ids.clear();
        }
        res
    }

    /// Completes records left open by a previous process (see [`AuditSpool::open`]).
    fn complete_interrupted(&mut self) -> rusqlite::Result<()> {
        let open_ids: Vec<String> = {
            let mut st = self.conn.prepare(
                "SELECT b.record_id FROM events b WHERE b.kind = 'begin' AND NOT EXISTS \
                 (SELECT 1 FROM events c WHERE c.record_id = b.record_id AND c.kind = 'complete') \
                 ORDER BY b.seq",
            )?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        if open_ids.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            records = open_ids.len(),
            "completing audit records left open by a previous run as interrupted"
        );
        let now = record::format_rfc3339(self.clock.now().into());
        let items = open_ids
            .into_iter()
            .map(|id| Item::Complete {
                id,
                outcome: Outcome {
                    status: None,
                    reason: "interrupted".into(),
                    bytes_up: 0,
                    bytes_down: 0,
                    scrub_count: 0,
                    latency_ms: 0,
                    completed_at: now.clone(),
                },
            })
            .collect();
        let fx = self.write_batch(items, true, &mut Vec::new())?;
        self.counters
            .completions
            .fetch_add(fx.completions, Ordering::Relaxed);
        Ok(())
    }

    /// Deletes the longest prefix of events older than the retention, keeping the hash of the
    /// last deleted event as the chain's anchor so `verify` still checks what remains.
    fn prune(&mut self) -> rusqlite::Result<u64> {
        self.last_prune = Instant::now();
        let Some(retention) = self.retention else {
            return Ok(0);
        };
        let cutoff = time::OffsetDateTime::from(self.clock.now())
            - time::Duration::try_from(retention).unwrap_or(time::Duration::MAX);
        let cutoff = record::format_rfc3339(cutoff);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Event times are written by this writer in commit order, so "older than the cutoff"
        // is a prefix of the chain.
        let last: Option<(i64, String)> = tx
            .query_row(
                "SELECT seq, hash FROM events WHERE seq <= COALESCE( \
                   (SELECT min(seq) - 1 FROM events WHERE at >= ?1), \
                   (SELECT max(seq) FROM events)) \
                 ORDER BY seq DESC LIMIT 1",
                [&cutoff],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((seq, hash)) = last else {
            return Ok(0);
        };
        let n = tx.execute("DELETE FROM events WHERE seq <= ?1", [seq])?;
        // Every export_state row is an unfinished export.
        let dropped_pending = tx.execute("DELETE FROM export_state WHERE seq <= ?1", [seq])?;
        tx.execute(
            "INSERT INTO chain_anchor(id, seq, hash) VALUES (1, ?1, ?2) \
             ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            params![seq, hash],
        )?;
        tx.commit()?;
        // An open record whose begin was pruned must now be found missing, as before.
        self.open_ids.clear();
        if dropped_pending > 0 {
            tracing::warn!(
                records = dropped_pending,
                "retention pruned credential-use records never exported to Temporal"
            );
            let _ = self.counters.export_pending.fetch_update(
                Ordering::Relaxed,
                Ordering::Relaxed,
                |p| Some(p.saturating_sub(dropped_pending as u64)),
            );
        }
        self.counters
            .pruned_events
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n as u64)
    }
}

/// The statements of one batch, inside the transaction [`Writer::write_batch`] opened.
fn write_items(
    conn: &Connection,
    clock: &credproxy_core::Clock,
    open_ids: &mut HashSet<String>,
    writes: Vec<Item>,
    replies: &mut Vec<(Reply<()>, Result<(), AuditError>)>,
) -> rusqlite::Result<BatchEffects> {
    let mut fx = BatchEffects::default();
    // Read the head inside the write transaction: correct even if another process
    // appended (two proxies on one file would interleave, but never fork the chain).
    let (mut seq, mut prev) = chain::head(conn)?;
    let at = record::format_rfc3339(clock.now().into());
    // Replies are staged in the caller's vector so that, if the transaction fails, the
    // caller can turn every one of them into an error (dropping them would look "closed").
    let staged = replies;
    for item in writes {
        match item {
            Item::Begin {
                mut record,
                durable: reply,
            } => {
                // Stage the reply first: an early `?` below must still answer it.
                let slot = reply.map(|r| {
                    staged.push((r, Ok(())));
                    staged.len() - 1
                });
                let outcome = record.outcome.take();
                let credentialed = record.is_credentialed();
                let id = record.id.clone();
                let body = serde_json::to_string(&BeginBody { record: *record })
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                // The unique (record_id, kind) index is the duplicate check: a constraint
                // failure aborts only this statement, and the chain does not advance.
                match append(conn, seq + 1, &at, &id, KIND_BEGIN, &body, &prev) {
                    Ok(h) => {
                        seq += 1;
                        prev = h;
                    }
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        fx.rejected += 1;
                        tracing::warn!(record_id = %id, "duplicate audit record id refused");
                        if let Some(i) = slot {
                            staged[i].1 = Err(AuditError::Duplicate { id });
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                fx.records += 1;
                if credentialed {
                    // Keyed by the begin's seq: the table's rowid, appended at its end.
                    conn.prepare_cached("INSERT INTO export_state(seq) VALUES (?1)")?
                        .execute([seq])?;
                    fx.new_pending += 1;
                }
                if let Some(o) = outcome {
                    let body = serde_json::to_string(&CompleteBody { outcome: o })
                        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                    seq += 1;
                    prev = append(conn, seq, &at, &id, KIND_COMPLETE, &body, &prev)?;
                    fx.completions += 1;
                } else if open_ids.len() < OPEN_IDS_MAX {
                    open_ids.insert(id);
                }
            }
            // Begun by this writer and not completed yet: no lookup needed.
            Item::Complete { id, outcome } if open_ids.remove(&id) => {
                let body = serde_json::to_string(&CompleteBody { outcome })
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                seq += 1;
                prev = append(conn, seq, &at, &id, KIND_COMPLETE, &body, &prev)?;
                fx.completions += 1;
            }
            Item::Complete { id, outcome } => {
                let kinds: Vec<String> = {
                    let mut st =
                        conn.prepare_cached("SELECT kind FROM events WHERE record_id = ?1")?;
                    let rows = st.query_map([&id], |r| r.get::<_, String>(0))?;
                    rows.collect::<rusqlite::Result<_>>()?
                };
                if kinds.iter().any(|k| k == KIND_COMPLETE) {
                    fx.duplicate_completions += 1;
                    tracing::warn!(record_id = %id, "second completion of an audit record ignored");
                    continue;
                }
                if !kinds.iter().any(|k| k == KIND_BEGIN) {
                    fx.orphan_completions += 1;
                    tracing::warn!(record_id = %id, "completion of an unknown audit record ignored");
                    continue;
                }
                let body = serde_json::to_string(&CompleteBody { outcome })
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                seq += 1;
                prev = append(conn, seq, &at, &id, KIND_COMPLETE, &body, &prev)?;
                fx.completions += 1;
            }
            // Export state is keyed by the begin event's seq, found through the
            // (record_id, kind) index; a finished export's row is deleted.
            Item::ExportAck { id, stage } => {
                let sql = match stage {
                    ExportStage::Record => {
                        "UPDATE export_state SET started = 1, last_error = NULL \
                             WHERE seq = (SELECT seq FROM events \
                               WHERE record_id = ?1 AND kind = 'begin')"
                    }
                    ExportStage::Outcome => {
                        "DELETE FROM export_state WHERE seq = (SELECT seq FROM events \
                               WHERE record_id = ?1 AND kind = 'begin')"
                    }
                };
                let n = conn.prepare_cached(sql)?.execute([&id])?;
                if stage == ExportStage::Outcome && n > 0 {
                    fx.exported += 1;
                }
            }
            Item::ExportFailed { id, error } => {
                conn.prepare_cached(
                    "UPDATE export_state SET attempts = attempts + 1, last_error = ?2 \
                         WHERE seq = (SELECT seq FROM events \
                           WHERE record_id = ?1 AND kind = 'begin')",
                )?
                .execute(params![id, error])?;
            }
            Item::Flush(_) | Item::Prune(_) => {}
        }
    }
    Ok(fx)
}

fn append(
    conn: &Connection,
    seq: i64,
    at: &str,
    record_id: &str,
    kind: &str,
    body: &str,
    prev: &str,
) -> rusqlite::Result<String> {
    let hash = chain::event_hash(prev, seq, at, record_id, kind, body);
    conn.prepare_cached(
        "INSERT INTO events(seq, at, record_id, kind, body, prev_hash, hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![seq, at, record_id, kind, body, prev, hash])?;
    Ok(hash)
}
