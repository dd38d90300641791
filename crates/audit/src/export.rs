//! The export seam: a driver that hands the spool's credential-use records to a sink.
//!
//! The spool keeps, per credential-use record, two export steps in its unchained
//! `export_state` table: the sink has the record ([`ExportStage::Record`]), and the sink has
//! its outcome ([`ExportStage::Outcome`]). The driver ([`spawn`]) reads what is not yet
//! acknowledged, calls the [`AuditSink`] for each step, acknowledges it, and while the sink
//! fails backs off and retries; after a restart it resumes from what is not acknowledged, so a
//! sink must accept a step twice (idempotent by record id). It runs off the request path: a
//! slow or absent sink never delays a request.
//!
//! Temporal ([`crate::temporal::TemporalSink`]) is one sink; another (a SIEM, a message queue)
//! implements [`AuditSink`] and is started with [`spawn`]. What a sink receives is the record
//! as audited: ids, agent, destination, method, path (no query), credential ids and the
//! outcome. Never a secret, a token or a claim set (the record holds none).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::query::{ExportReader, PendingExport};
use crate::record::{parse_rfc3339, AuditRecord, Outcome};
use crate::spool::{AuditSpool, ExportStage};

/// Where exported records go. The driver calls `connect` (until it succeeds), then `record`
/// and `outcome` for each credential-use record in spool order, then `shutdown` when stopped.
///
/// Both deliveries must be idempotent by `rec.id`: a crash between a delivery and its
/// acknowledgement re-delivers it.
pub trait AuditSink: Send + Sync + 'static {
    /// Short name for logs (`temporal`).
    fn name(&self) -> &'static str;

    /// Prepares the sink (connect, register schemas, start workers). Retried with backoff
    /// until it returns `Ok`.
    fn connect(&mut self) -> impl Future<Output = Result<(), ExportError>> + Send;

    /// Delivers a credential-use record (at the time it began; its outcome may not be known).
    fn record(&self, rec: &AuditRecord) -> impl Future<Output = Result<(), ExportError>> + Send;

    /// Delivers the outcome of a record already delivered with [`AuditSink::record`].
    fn outcome(
        &self,
        rec: &AuditRecord,
        outcome: &Outcome,
    ) -> impl Future<Output = Result<(), ExportError>> + Send;

    /// Stops what `connect` started. Called once, when the driver stops.
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;
}

/// How the driver polls and retries (independent of the sink).
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// How often the driver looks for new work when idle.
    pub poll_interval: Duration,
    /// Records handled per round.
    pub batch: usize,
    /// First retry delay while the sink fails.
    pub backoff_initial: Duration,
    /// Maximum retry delay.
    pub backoff_max: Duration,
}

impl Default for ExportOptions {
    fn default() -> ExportOptions {
        ExportOptions {
            poll_interval: Duration::from_millis(200),
            batch: 256,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// Errors of one export attempt (kept inside the driver; counted and logged).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Could not connect to the sink.
    #[error("cannot connect to {sink} at {address}: {reason}")]
    Connect {
        sink: &'static str,
        address: String,
        reason: String,
    },
    /// A call to the sink failed.
    #[error("{sink} {op} failed: {reason}")]
    Rpc {
        sink: &'static str,
        op: &'static str,
        reason: String,
    },
    /// The spool could not be read.
    #[error(transparent)]
    Spool(#[from] crate::AuditError),
}

/// The running export. Dropping it leaves the task running; call `shutdown` or `abort`.
pub struct ExporterHandle {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl ExporterHandle {
    /// Stops the driver and the sink (its `shutdown`) and waits for them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Kills the export task at once (tests use this to simulate a crash between commit and
    /// export). The sink is not shut down: like a crashed process's in-flight work it is
    /// simply abandoned; use `shutdown` for an orderly stop.
    pub fn abort(self) {
        self.task.abort();
    }
}

/// Starts exporting `spool` to `sink` on the current tokio runtime.
pub fn spawn<S: AuditSink>(spool: AuditSpool, sink: S, opts: ExportOptions) -> ExporterHandle {
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run(spool, sink, opts, stop_rx));
    ExporterHandle { task, stop }
}

async fn run<S: AuditSink>(
    spool: AuditSpool,
    mut sink: S,
    opts: ExportOptions,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(&opts);
    loop {
        match sink.connect().await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(sink = sink.name(), error = %e, "audit export not ready; retrying");
                if backoff.sleep_or_stop(&mut stop).await {
                    return;
                }
            }
        }
    }
    let mut reader = loop {
        match ExportReader::open(spool.path()) {
            Ok(r) => break r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the audit spool for export");
                if backoff.sleep_or_stop(&mut stop).await {
                    sink.shutdown().await;
                    return;
                }
            }
        }
    };
    backoff.reset();
    loop {
        if *stop.borrow() {
            break;
        }
        match export_round(&spool, &mut reader, &sink, &opts).await {
            Ok(0) => {
                backoff.reset();
                tokio::select! {
                    _ = tokio::time::sleep(opts.poll_interval) => {}
                    _ = stop.changed() => {}
                }
            }
            Ok(_) => backoff.reset(),
            Err(e) => {
                tracing::warn!(sink = sink.name(), error = %e, "audit export failed; backing off");
                if backoff.sleep_or_stop(&mut stop).await {
                    break;
                }
            }
        }
    }
    sink.shutdown().await;
}

/// One pass over pending records; returns how many were acted on.
async fn export_round<S: AuditSink>(
    spool: &AuditSpool,
    reader: &mut ExportReader,
    sink: &S,
    opts: &ExportOptions,
) -> Result<usize, ExportError> {
    update_backlog(spool, reader);
    let pending = reader.pending(opts.batch)?;
    let n = pending.len();
    for p in pending {
        if let Err(e) = export_one(sink, spool, &p).await {
            spool.export_failed(&p.record.id, e.to_string());
            return Err(e);
        }
    }
    if n > 0 {
        // Acks are applied by the writer; wait for them so the next round does not redo work.
        let _ = spool.flush().await;
        update_backlog(spool, reader);
    }
    Ok(n)
}

async fn export_one<S: AuditSink>(
    sink: &S,
    spool: &AuditSpool,
    p: &PendingExport,
) -> Result<(), ExportError> {
    let rec = &p.record;
    if !p.started {
        sink.record(rec).await?;
        spool.ack_export(&rec.id, ExportStage::Record);
    }
    let Some(outcome) = &rec.outcome else {
        return Ok(());
    };
    sink.outcome(rec, outcome).await?;
    spool.ack_export(&rec.id, ExportStage::Outcome);
    Ok(())
}

fn update_backlog(spool: &AuditSpool, reader: &ExportReader) {
    if let Ok((_, oldest)) = reader.backlog() {
        let lag = oldest
            .as_deref()
            .and_then(parse_rfc3339)
            .map(|t| {
                (time::OffsetDateTime::now_utc() - t)
                    .whole_milliseconds()
                    .max(0)
            })
            .map_or(0, |ms| u64::try_from(ms).unwrap_or(u64::MAX));
        spool.counters().export_lag_ms.store(lag, Ordering::Relaxed);
    }
}

struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(opts: &ExportOptions) -> Backoff {
        Backoff {
            initial: opts.backoff_initial,
            max: opts.backoff_max.max(opts.backoff_initial),
            current: opts.backoff_initial,
        }
    }

    fn reset(&mut self) {
        self.current = self.initial;
    }

    /// Sleeps for the current delay (doubling it); returns true if asked to stop meanwhile.
    async fn sleep_or_stop(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        tokio::select! {
            _ = tokio::time::sleep(d) => *stop.borrow(),
            _ = stop.changed() => true,
        }
    }
}
