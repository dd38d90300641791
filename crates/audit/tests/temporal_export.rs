//! Export to a real Temporal dev server (started by `credproxy_testkit::TemporalDevServer`).
//!
//! One server serves every phase, because start and stop cost seconds: normal export (search
//! attributes, signal in history, no canary), timeout, Temporal down while records flow and
//! restarted, and an exporter killed between commit and export.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{cred_record, outcome, rid};
use credproxy_audit::record::token_id_hash;
use credproxy_audit::temporal::{Exporter, TemporalConfig};
use credproxy_audit::{AuditConfig, AuditSpool};
use credproxy_testkit::TemporalDevServer;
use futures::StreamExt;
use temporalio_client::{Client, ClientOptions, ConnectionOptions, WorkflowListOptions};

const CANARY_SECRET: &str = "sk-ant-CANARYtemporal0123456789";
const CANARY_TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhZ2VudC10In0.TOKCANARY";

async fn client(server: &TemporalDevServer) -> Client {
    let url: url::Url = server.address().parse().unwrap();
    Client::connect(
        ConnectionOptions::new(url).build(),
        ClientOptions::new("default").build(),
    )
    .await
    .unwrap()
}

/// `(workflow id, CredProxyStatus, execution status)` of every execution matching `query`;
/// empty while the query is not yet valid (the exporter registers the attributes).
async fn list(c: &Client, query: &str) -> Vec<(String, String, String)> {
    let mut s = c.list_workflows(query, WorkflowListOptions::default());
    let mut out = Vec::new();
    while let Some(w) = s.next().await {
        let Ok(w) = w else {
            return Vec::new();
        };
        let status = w
            .search_attributes()
            .get(&credproxy_audit::temporal::SA_STATUS)
            .unwrap_or_default();
        out.push((w.id().to_string(), status, format!("{:?}", w.status())));
    }
    out.sort();
    out
}

/// Polls `cond` until true (visibility and export are asynchronous), failing after `secs`.
async fn eventually<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut delay = Duration::from_millis(50);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

fn cfg(server: &TemporalDevServer, signal_timeout: Duration) -> TemporalConfig {
    let mut c = TemporalConfig::new(server.address());
    c.task_queue = "credproxy-audit-test".into();
    c.signal_timeout = signal_timeout;
    c.poll_interval = Duration::from_millis(50);
    c.backoff_initial = Duration::from_millis(100);
    c.backoff_max = Duration::from_millis(800);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_to_a_real_temporal_server() {
    let mut server = tokio::task::spawn_blocking(TemporalDevServer::start)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = AuditSpool::open(AuditConfig::new(dir.path().join("audit.db"))).unwrap();
    let exporter = Exporter::spawn(spool.clone(), cfg(&server, Duration::from_secs(3)));
    let c = client(&server).await;

    // --- Phase 1: records become workflows findable by agent; signal in history; no canary.
    for i in 1..=3 {
        let mut r = cred_record(i, "agent-e2e");
        r.token_id_hash = Some(token_id_hash(CANARY_TOKEN));
        r.path = "/v1/messages".into();
        r.query_keys = vec!["key".into()];
        spool.begin_credentialed(r).await.unwrap();
    }
    spool.complete(&rid(1), outcome(200, "ok"));
    spool.complete(&rid(2), outcome(502, "upstream_reset"));
    // Record 3 never completes: its workflow must end with `timeout`.
    eventually(60, "phase 1 workflows closed", || async {
        let l = list(&c, "CredProxyAgentID = \"agent-e2e\"").await;
        l.len() == 3 && l.iter().all(|(_, _, st)| st == "Completed")
    })
    .await;
    let l = list(&c, "CredProxyAgentID = \"agent-e2e\"").await;
    let by_id: HashMap<_, _> = l.iter().map(|(id, s, _)| (id.clone(), s.clone())).collect();
    assert_eq!(by_id[&rid(1)], "success");
    assert_eq!(by_id[&rid(2)], "error");
    assert_eq!(by_id[&rid(3)], "timeout");
    // A completion arriving after the timeout is acknowledged (the closed workflow keeps
    // `timeout`), so it does not stay in the backlog forever.
    spool.complete(&rid(3), outcome(200, "ok"));
    assert_eq!(
        list(&c, "CredProxyTargetDomain = \"api.example.com:443\" AND CredProxyCredentialRef = \"anthropic\"")
            .await
            .len(),
        3
    );

    let history = tokio::task::spawn_blocking({
        let target = server.grpc_target();
        let bin = credproxy_testkit::temporal_binary();
        move || {
            let out = std::process::Command::new(bin)
                .args([
                    "workflow",
                    "show",
                    "--workflow-id",
                    &rid(1),
                    "--output",
                    "json",
                ])
                .args(["--address", &target])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        history.contains("response_complete"),
        "signal missing from history"
    );
    assert!(
        history.contains("WorkflowExecutionSignaled")
            || history.contains("EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED")
    );
    for canary in [
        CANARY_SECRET,
        CANARY_TOKEN,
        "TOKCANARY",
        &token_id_hash(CANARY_TOKEN),
    ] {
        assert!(!history.contains(canary), "history leaks {canary}");
    }

    // --- Phase 2: Temporal down while records flow; requests are not blocked.
    let mut server = tokio::task::spawn_blocking(move || {
        server.stop();
        server
    })
    .await
    .unwrap();
    let before = spool.stats().exported;
    for i in 10..15 {
        let t = Instant::now();
        spool
            .begin_credentialed(cred_record(i, "agent-down"))
            .await
            .unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "Temporal down must not block begin"
        );
        spool.complete(&rid(i), outcome(200, "ok"));
    }
    spool.flush().await.unwrap();
    eventually(30, "export failures counted while down", || async {
        spool.stats().export_failures > 0
    })
    .await;
    let st = spool.stats();
    assert!(st.export_pending >= 5, "records accumulate: {st:?}");
    assert_eq!(st.exported, before);

    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    let c = client(&server).await;
    eventually(90, "backlog exported after restart", || async {
        let l = list(&c, "CredProxyAgentID = \"agent-down\"").await;
        l.len() == 5 && l.iter().all(|(_, s, _)| s == "success")
    })
    .await;
    // Exactly once per record id (closed executions included).
    let l = list(&c, "CredProxyAgentID = \"agent-down\"").await;
    let mut ids: Vec<_> = l.iter().map(|(id, _, _)| id.clone()).collect();
    ids.dedup();
    assert_eq!(ids, (10..15).map(rid).collect::<Vec<_>>());

    // --- Phase 3: exporter killed after commit, before export; a new exporter exports it.
    exporter.abort();
    spool
        .begin_credentialed(cred_record(20, "agent-crash"))
        .await
        .unwrap();
    spool.complete(&rid(20), outcome(200, "ok"));
    spool.flush().await.unwrap();
    assert!(list(&c, "CredProxyAgentID = \"agent-crash\"")
        .await
        .is_empty());
    // The restarted exporter also re-registers the search attributes (idempotently).
    let exporter = Exporter::spawn(spool.clone(), cfg(&server, Duration::from_secs(3)));
    eventually(60, "record exported by the new exporter", || async {
        let l = list(&c, "CredProxyAgentID = \"agent-crash\"").await;
        l.len() == 1 && l[0].1 == "success"
    })
    .await;
    // Nothing was exported twice across all phases.
    let all = list(&c, "WorkflowType = \"ProxyRequestWorkflow\"").await;
    let mut ids: Vec<_> = all.iter().map(|(id, _, _)| id.clone()).collect();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n);
    assert_eq!(n, 3 + 5 + 1);
    let late = all.iter().find(|(id, _, _)| *id == rid(3)).unwrap();
    assert_eq!(
        late.1, "timeout",
        "a late completion does not rewrite a timed-out workflow"
    );
    eventually(30, "export backlog drained", || async {
        spool.stats().export_pending == 0
    })
    .await;
    exporter.shutdown().await;
    spool.close().await.unwrap();
    drop(server);
}
