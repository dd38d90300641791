//! N credentialed begin + complete pairs through the spool, one at a time, as the proxy does for
//! sequential requests on one tunnel: `begin_credentialed` awaited (durable), then `complete`.
//!
//! The instruction-count probe for the spool writer (issue 17):
//! `valgrind --tool=callgrind --separate-threads=yes target/release/examples/pairs N` for two
//! values of N; (Ir(N2) - Ir(N1)) / (N2 - N1) is the cost of one credentialed request, setup
//! cancelling out. `--separate-threads` gives the writer thread (`audit-spool-writer`) its own
//! file. Not a gate and not a wall-clock benchmark.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::{cred_record, outcome, rid};
use credproxy_audit::{AuditConfig, AuditSpool};

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map_or(1000, |s| s.parse().expect("N: a number of requests"));
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let spool = AuditSpool::open(AuditConfig::new(dir.path().join("audit.db"))).unwrap();
        for i in 0..n {
            spool
                .begin_credentialed(cred_record(i, "bench-agent"))
                .await
                .unwrap();
            spool.complete(&rid(i), outcome(200, "ok"));
        }
        spool.close().await.unwrap();
        let st = spool.stats();
        assert_eq!((st.records, st.completions), (n, n));
        println!(
            "{{\"pairs\": {n}, \"commits\": {}, \"fsyncs\": {}}}",
            st.commits, st.fsyncs
        );
    });
}
