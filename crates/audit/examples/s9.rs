//! S9: credential-bearing begins per second with durable group commit.
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::{cred_record, outcome, rid};
use credproxy_audit::{AuditConfig, AuditSpool};

fn open(dir: &tempfile::TempDir) -> AuditSpool {
    AuditSpool::open(AuditConfig::new(dir.path().join("spool/audit.db"))).unwrap()
}

/// S9 smoke measurement (not a gate): `cargo run --release -p credproxy-audit --example s9`.
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(&dir);
    let start = std::time::Instant::now();
    let per_task = 200u64;
    let tasks: Vec<_> = (0..256u64)
        .map(|t| {
            let s = spool.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    let id = t * per_task + i;
                    s.begin_credentialed(cred_record(id, "bench"))
                        .await
                        .unwrap();
                    s.complete(&rid(id), outcome(200, "ok"));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let st = spool.stats();
    eprintln!(
        "{} credentialed begins in {secs:.2}s = {:.0}/s, {} fsyncs ({:.1} records/fsync)",
        st.records,
        st.records as f64 / secs,
        st.fsyncs,
        st.records as f64 / st.fsyncs as f64
    );
    spool.close().await.unwrap();
}
