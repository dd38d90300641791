//! The export seam with a sink that is not Temporal: a real on-disk spool, the real driver
//! (`credproxy_audit::export::spawn`) and an in-memory sink that reports every call on a
//! channel and fails on request. Temporal's own sink is tested against a real server in
//! `temporal_export.rs`.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{cred_record, outcome, plain_record, rid};
use credproxy_audit::export::{spawn, AuditSink, ExportError, ExportOptions};
use credproxy_audit::{AuditConfig, AuditRecord, AuditSpool, Outcome};
use tokio::sync::mpsc;

#[derive(Debug, PartialEq, Eq)]
enum Call {
    Connected,
    Record(String, String),
    Outcome(String, u16, String),
    Failed(&'static str, String),
    Shutdown,
}

/// Fails the first `fail_connects` connects and the first `fail_outcomes` outcome
/// deliveries, then delivers; reports every call.
struct MemorySink {
    calls: mpsc::UnboundedSender<Call>,
    fail_connects: Arc<AtomicU32>,
    fail_outcomes: Arc<AtomicU32>,
}

fn take(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

impl AuditSink for MemorySink {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn connect(&mut self) -> Result<(), ExportError> {
        if take(&self.fail_connects) {
            self.calls
                .send(Call::Failed("connect", String::new()))
                .unwrap();
            return Err(ExportError::Connect {
                sink: "memory",
                address: "mem:".into(),
                reason: "down".into(),
            });
        }
        self.calls.send(Call::Connected).unwrap();
        Ok(())
    }

    async fn record(&self, rec: &AuditRecord) -> Result<(), ExportError> {
        self.calls
            .send(Call::Record(
                rec.id.clone(),
                rec.agent_id.clone().unwrap_or_default(),
            ))
            .unwrap();
        Ok(())
    }

    async fn outcome(&self, rec: &AuditRecord, outcome: &Outcome) -> Result<(), ExportError> {
        if take(&self.fail_outcomes) {
            self.calls
                .send(Call::Failed("outcome", rec.id.clone()))
                .unwrap();
            return Err(ExportError::Rpc {
                sink: "memory",
                op: "outcome",
                reason: "refused".into(),
            });
        }
        self.calls
            .send(Call::Outcome(
                rec.id.clone(),
                outcome.status.unwrap_or_default(),
                outcome.reason.clone(),
            ))
            .unwrap();
        Ok(())
    }

    async fn shutdown(&mut self) {
        self.calls.send(Call::Shutdown).unwrap();
    }
}

fn sink(fail_connects: u32, fail_outcomes: u32) -> (MemorySink, mpsc::UnboundedReceiver<Call>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        MemorySink {
            calls: tx,
            fail_connects: Arc::new(AtomicU32::new(fail_connects)),
            fail_outcomes: Arc::new(AtomicU32::new(fail_outcomes)),
        },
        rx,
    )
}

fn opts() -> ExportOptions {
    ExportOptions {
        poll_interval: Duration::from_millis(20),
        batch: 16,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Call>) -> Call {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("the driver made no call for 30 s")
        .expect("the sink was dropped")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_sink_gets_each_credential_use_once_in_order_through_failures_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let spool = AuditSpool::open(AuditConfig::new(dir.path().join("audit.db"))).unwrap();
    spool
        .begin_credentialed(cred_record(1, "agent-a"))
        .await
        .unwrap();
    spool.record(plain_record(2)); // no credential: never exported
    spool
        .begin_credentialed(cred_record(3, "agent-b"))
        .await
        .unwrap();
    spool.complete(&rid(1), outcome(200, "ok"));
    spool.flush().await.unwrap();

    // The sink is down twice, then up; its first outcome delivery fails.
    let (s, mut rx) = sink(2, 1);
    let handle = spawn(spool.clone(), s, opts());
    assert_eq!(next(&mut rx).await, Call::Failed("connect", String::new()));
    assert_eq!(next(&mut rx).await, Call::Failed("connect", String::new()));
    assert_eq!(next(&mut rx).await, Call::Connected);
    assert_eq!(next(&mut rx).await, Call::Record(rid(1), "agent-a".into()));
    assert_eq!(next(&mut rx).await, Call::Failed("outcome", rid(1)));
    // Retried after the backoff: record 1 is not re-delivered (its first step was
    // acknowledged), its outcome is.
    assert_eq!(next(&mut rx).await, Call::Outcome(rid(1), 200, "ok".into()));
    assert_eq!(next(&mut rx).await, Call::Record(rid(3), "agent-b".into()));
    // Record 3's outcome follows its completion.
    spool.complete(&rid(3), outcome(502, "upstream_reset"));
    assert_eq!(
        next(&mut rx).await,
        Call::Outcome(rid(3), 502, "upstream_reset".into())
    );
    handle.shutdown().await;
    assert_eq!(next(&mut rx).await, Call::Shutdown);
    spool.flush().await.unwrap();
    let stats = spool.stats();
    assert_eq!(stats.export_pending, 0, "{stats:?}");
    assert_eq!(stats.exported, 2, "{stats:?}");
    assert!(stats.export_failures >= 1, "{stats:?}");

    // A new driver (a restart) resumes from what is not acknowledged: nothing of records 1
    // and 3 again; the next record is the first call after connecting.
    let (s, mut rx) = sink(0, 0);
    let handle = spawn(spool.clone(), s, opts());
    assert_eq!(next(&mut rx).await, Call::Connected);
    spool
        .begin_credentialed(cred_record(4, "agent-a"))
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, Call::Record(rid(4), "agent-a".into()));
    handle.shutdown().await;
    assert_eq!(next(&mut rx).await, Call::Shutdown);
}
