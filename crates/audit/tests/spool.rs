//! Spool behaviour: group commit, durability, completion, batching, failure, chain, retention,
//! queries and the no-secret canary.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cred_record, outcome, plain_record, rid};
use credproxy_audit::query::{self, Filter};
use credproxy_audit::record::{split_path_and_query_keys, token_id_hash};
use credproxy_audit::{AuditConfig, AuditError, AuditSpool, CredentialUse, Decision};

fn open(dir: &tempfile::TempDir) -> AuditSpool {
    AuditSpool::open(AuditConfig::new(dir.path().join("spool/audit.db"))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_begins_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(&dir);
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let s = spool.clone();
            tokio::spawn(async move { s.begin_credentialed(cred_record(i, "agent-a")).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let st = spool.stats();
    assert_eq!(st.records, 64);
    assert!(
        st.fsyncs < st.records,
        "group commit did not batch: {} fsyncs for {} records",
        st.fsyncs,
        st.records
    );
    assert_eq!(st.export_pending, 64);
    spool.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_delay_grows_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = AuditConfig::new(dir.path().join("d.db"));
    cfg.group_commit_max_delay = Duration::from_millis(5);
    let spool = AuditSpool::open(cfg).unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let s = spool.clone();
            tokio::spawn(async move { s.begin_credentialed(cred_record(i, "d")).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let st = spool.stats();
    assert_eq!(st.records, 64);
    assert!(st.fsyncs <= 16, "{} fsyncs for 64 records", st.fsyncs);
    spool.close().await.unwrap();
}

#[tokio::test]
async fn begin_is_durable_across_reopen_and_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool/audit.db");
    let spool = AuditSpool::open(AuditConfig::new(&path)).unwrap();
    spool.begin_credentialed(cred_record(1, "a")).await.unwrap();
    // Simulate a crash: no close, no flush; the begin was already fsync'd.
    drop(spool);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dmode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dmode, 0o700);
    let rec = query::show(&path, &rid(1)).unwrap().unwrap();
    assert_eq!(rec.agent_id.as_deref(), Some("a"));
    // Reopening completes the record the "crashed" process left open.
    let spool = AuditSpool::open(AuditConfig::new(&path)).unwrap();
    let rec = query::show(&path, &rid(1)).unwrap().unwrap();
    assert_eq!(rec.outcome.unwrap().reason, "interrupted");
    spool.close().await.unwrap();
    assert!(query::verify(&path).unwrap().first_break.is_none());
}

#[tokio::test]
async fn completion_applies_at_most_once() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(&dir);
    spool.begin_credentialed(cred_record(7, "a")).await.unwrap();
    spool.complete(&rid(7), outcome(200, "ok"));
    spool.complete(&rid(7), outcome(500, "upstream_reset"));
    spool.complete(&rid(99), outcome(200, "ok"));
    spool.flush().await.unwrap();
    let st = spool.stats();
    assert_eq!(st.completions, 1);
    assert_eq!(st.duplicate_completions, 1);
    assert_eq!(st.orphan_completions, 1);
    let rec = query::show(spool.path(), &rid(7)).unwrap().unwrap();
    assert_eq!(rec.outcome.unwrap().status, Some(200));
    // A second begin with the same id is refused, not silently merged.
    let e = spool
        .begin_credentialed(cred_record(7, "a"))
        .await
        .unwrap_err();
    assert!(matches!(e, AuditError::Duplicate { .. }), "{e}");
    spool.close().await.unwrap();
}

#[tokio::test]
async fn records_without_credentials_are_batched_and_visible_after_flush() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(&dir);
    for i in 0..200 {
        spool.record(plain_record(i));
    }
    spool.flush().await.unwrap();
    let st = spool.stats();
    assert_eq!(st.records, 200);
    assert!(st.commits < 200, "no batching: {} commits", st.commits);
    assert!(st.fsyncs <= st.commits);
    assert_eq!(st.export_pending, 0, "plain records are not exported");
    let all = query::list(spool.path(), &Filter::default()).unwrap();
    assert_eq!(all.len(), 200);
    assert_eq!(all[0].status_label(), "denied");
    // Invalid ids are refused and counted, never silently dropped.
    let mut bad = plain_record(1000);
    bad.id = "../../etc".into();
    spool.record(bad);
    assert_eq!(spool.stats().rejected_records, 1);
    spool.close().await.unwrap();
}

#[tokio::test]
async fn full_queue_is_counted_not_silent() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = AuditConfig::new(dir.path().join("a.db"));
    cfg.queue_max = 1;
    let spool = AuditSpool::open(cfg).unwrap();
    for i in 0..500 {
        spool.record(plain_record(i));
    }
    spool.flush().await.unwrap();
    let st = spool.stats();
    assert_eq!(st.records + st.rejected_records, 500);
    spool.close().await.unwrap();
}

#[test]
fn unopenable_spool_fails() {
    let dir = tempfile::tempdir().unwrap();
    // A parent that is a regular file: ENOTDIR even for root.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let e = AuditSpool::open(AuditConfig::new(file.join("audit.db")))
        .err()
        .unwrap();
    assert!(matches!(e, AuditError::Open { .. }), "{e}");
    // procfs refuses file creation for everyone.
    assert!(AuditSpool::open(AuditConfig::new("/proc/self/credproxy-audit.db")).is_err());
}

#[tokio::test]
async fn read_only_file_fails_closed_unless_root() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro.db");
    let spool = AuditSpool::open(AuditConfig::new(&path)).unwrap();
    spool.close().await.unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    if std::fs::metadata("/proc/self").unwrap().uid() == 0 {
        // Root ignores file modes; `full_spool_fails_begin_closed` covers a real write failure.
        return;
    }
    assert!(AuditSpool::open(AuditConfig::new(&path)).is_err());
}

#[tokio::test]
async fn full_spool_fails_begin_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.db");
    let mut cfg = AuditConfig::new(&path);
    // SQLITE_FULL from max_page_count: the same error path as a full disk.
    cfg.max_size_bytes = Some(96 * 1024);
    let spool = AuditSpool::open(cfg).unwrap();
    let mut first_err = None;
    for i in 0..2000 {
        let mut r = cred_record(i, "a");
        r.path = format!("/v1/{}", "p".repeat(900));
        if let Err(e) = spool.begin_credentialed(r).await {
            first_err = Some((i, e));
            break;
        }
    }
    let (n, e) = first_err.expect("a 96 KiB spool must fill up");
    assert!(n > 0);
    assert!(matches!(e, AuditError::Commit { .. }), "{e}");
    assert!(spool.stats().write_failures >= 1);
    // What was acknowledged is intact and the chain still verifies.
    assert!(query::show(&path, &rid(0)).unwrap().is_some());
    assert!(query::show(&path, &rid(n)).unwrap().is_none());
    spool.close().await.ok();
    assert!(query::verify(&path).unwrap().first_break.is_none());
}

async fn chain_of(n: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let spool = AuditSpool::open(AuditConfig::new(&path)).unwrap();
    for i in 0..n {
        spool.begin_credentialed(cred_record(i, "a")).await.unwrap();
        spool.complete(&rid(i), outcome(200, "ok"));
    }
    spool.close().await.unwrap();
    (dir, path)
}

fn tamper(path: &std::path::Path, sql: &str) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(sql).unwrap();
}

#[tokio::test]
async fn verify_passes_on_an_untouched_chain() {
    let (_d, path) = chain_of(5).await;
    let rep = query::verify(&path).unwrap();
    assert_eq!(rep.records_checked, 10);
    assert!(rep.first_break.is_none());
    assert_eq!(rep.head_seq, 10);
}

#[tokio::test]
async fn verify_detects_an_edited_row() {
    let (_d, path) = chain_of(5).await;
    tamper(
        &path,
        "UPDATE events SET body = replace(body, '\"agent_id\":\"a\"', '\"agent_id\":\"b\"') WHERE seq = 3",
    );
    let b = query::verify(&path).unwrap().first_break.unwrap();
    assert_eq!(b.position, 3);
    assert!(b.problem.contains("edited"), "{}", b.problem);
}

#[tokio::test]
async fn verify_detects_a_deleted_row() {
    let (_d, path) = chain_of(5).await;
    tamper(&path, "DELETE FROM events WHERE seq = 4");
    let rep = query::verify(&path).unwrap();
    let b = rep.first_break.unwrap();
    assert_eq!(b.position, 5);
    assert_eq!(rep.records_checked, 3);
}

#[tokio::test]
async fn verify_detects_a_reordered_pair() {
    let (_d, path) = chain_of(5).await;
    // Swap rows 5 and 6 wholesale (renumbering them), as a reordering attacker would.
    tamper(
        &path,
        "UPDATE events SET seq = -5 WHERE seq = 5;
         UPDATE events SET seq = 5 WHERE seq = 6;
         UPDATE events SET seq = 6 WHERE seq = -5;",
    );
    let b = query::verify(&path).unwrap().first_break.unwrap();
    assert_eq!(b.position, 5);
    assert!(b.problem.contains("prev_hash"), "{}", b.problem);
}

#[tokio::test]
async fn verify_detects_a_deleted_record_renumbered() {
    let (_d, path) = chain_of(4).await;
    // Delete a record's two events and renumber the rest: the gap disappears, the hashes don't.
    tamper(
        &path,
        "DELETE FROM events WHERE seq IN (3, 4);
         UPDATE events SET seq = seq - 2 WHERE seq > 4;",
    );
    let b = query::verify(&path).unwrap().first_break.unwrap();
    assert_eq!(b.position, 3);
}

#[tokio::test]
async fn retention_prunes_a_prefix_and_verify_still_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let mut cfg = AuditConfig::new(&path);
    cfg.retention = Some(Duration::from_secs(3600));
    // The spool's clock is moved forward instead of waiting for records to age.
    let clock = credproxy_core::Clock::adjustable();
    cfg.clock = clock.clone();
    let spool = AuditSpool::open(cfg).unwrap();
    for i in 0..3 {
        spool
            .begin_credentialed(cred_record(i, "old"))
            .await
            .unwrap();
        spool.complete(&rid(i), outcome(200, "ok"));
    }
    spool.flush().await.unwrap();
    // Retention is about age on the spool's clock: the first records age past it.
    clock.advance(Duration::from_secs(3601));
    for i in 3..5 {
        spool
            .begin_credentialed(cred_record(i, "new"))
            .await
            .unwrap();
        spool.complete(&rid(i), outcome(200, "ok"));
    }
    spool.flush().await.unwrap();
    let pruned = spool.prune_now().await.unwrap();
    assert_eq!(pruned, 6);
    assert_eq!(spool.stats().export_pending, 2);
    spool.close().await.unwrap();
    let left = query::list(&path, &Filter::default()).unwrap();
    assert_eq!(
        left.iter()
            .map(|r| r.agent_id.clone().unwrap())
            .collect::<Vec<_>>(),
        ["new", "new"]
    );
    let rep = query::verify(&path).unwrap();
    assert!(rep.first_break.is_none(), "{:?}", rep.first_break);
    assert_eq!(rep.anchor_seq, 6);
    assert_eq!(rep.records_checked, 4);
}

#[tokio::test]
async fn list_filters_show_export_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let spool = AuditSpool::open(AuditConfig::new(&path)).unwrap();
    spool
        .begin_credentialed(cred_record(1, "alice"))
        .await
        .unwrap();
    spool.complete(&rid(1), outcome(200, "ok"));
    let mut r2 = cred_record(2, "bob");
    r2.destination = "api.openai.com:443".into();
    r2.credentials[0].id = "openai".into();
    spool.begin_credentialed(r2).await.unwrap();
    spool.complete(&rid(2), outcome(502, "upstream_reset"));
    spool.record(plain_record(3));
    spool
        .begin_credentialed(cred_record(4, "alice"))
        .await
        .unwrap();
    spool.flush().await.unwrap();

    let l = |f: Filter| -> Vec<String> {
        query::list(&path, &f)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect()
    };
    assert_eq!(
        l(Filter {
            agent: Some("alice".into()),
            ..Default::default()
        }),
        [rid(1), rid(4)]
    );
    assert_eq!(
        l(Filter {
            destination: Some("api.openai.com".into()),
            ..Default::default()
        }),
        [rid(2)]
    );
    assert_eq!(
        l(Filter {
            credential: Some("openai".into()),
            ..Default::default()
        }),
        [rid(2)]
    );
    assert_eq!(
        l(Filter {
            status: Some("error".into()),
            ..Default::default()
        }),
        [rid(2)]
    );
    assert_eq!(
        l(Filter {
            status: Some("in_progress".into()),
            ..Default::default()
        }),
        [rid(4)]
    );
    assert_eq!(
        l(Filter {
            status: Some("denied".into()),
            ..Default::default()
        }),
        [rid(3)]
    );
    assert_eq!(
        l(Filter {
            limit: Some(2),
            ..Default::default()
        }),
        [rid(3), rid(4)]
    );
    assert!(l(Filter {
        since: Some("2999-01-01T00:00:00Z".into()),
        ..Default::default()
    })
    .is_empty());
    assert_eq!(
        l(Filter {
            until: Some("2999-01-01T00:00:00Z".into()),
            ..Default::default()
        })
        .len(),
        4
    );

    let mut out = Vec::new();
    assert_eq!(query::export_jsonl(&path, &mut out).unwrap(), 4);
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[1]["outcome"]["reason"], "upstream_reset");
    let table = query::format_table(&query::list(&path, &Filter::default()).unwrap());
    assert_eq!(table.lines().count(), 5);
    assert!(table.starts_with("ID"));
    assert!(spool
        .stats()
        .render_prometheus()
        .contains("credproxy_audit_fsyncs_total"));
    spool.close().await.unwrap();
}

const CANARY_SECRET: &str = "sk-ant-CANARY0123456789secretvalue";
const CANARY_TOKEN: &str =
    "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhZ2VudCIsImNhbmFyeSI6IkNMQUlNIn0.SIGCANARY";

/// Every string anywhere in a JSON value.
fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        serde_json::Value::Object(o) => o.iter().for_each(|(k, x)| {
            out.push(k.clone());
            strings(x, out)
        }),
        _ => {}
    }
}

#[tokio::test]
async fn canary_no_secret_token_or_claims_anywhere() {
    // What the proxy knows about a request: a secret it injects, a bearer token with claims,
    // and a query string carrying a key. It builds the record through the crate's helpers.
    let target = format!("/v1/messages?key={CANARY_SECRET}&beta=1");
    let (path_only, query_keys) = split_path_and_query_keys(&target);
    let mut rec = cred_record(42, "agent-canary");
    rec.path = path_only;
    rec.query_keys = query_keys;
    rec.token_id_hash = Some(token_id_hash(CANARY_TOKEN));
    rec.credentials = vec![CredentialUse {
        id: "anthropic".into(),
        placeholder: "CREDPROXY_ANTHROPIC".into(),
        location: "query:key".into(),
    }];
    rec.decision = Decision::Allow;

    // Field by field: no string in the record is or contains a canary.
    let mut all = Vec::new();
    strings(&serde_json::to_value(&rec).unwrap(), &mut all);
    for s in &all {
        for c in [CANARY_SECRET, CANARY_TOKEN, "SIGCANARY", "CLAIM"] {
            assert!(!s.contains(c), "field value {s:?} carries a canary");
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("canary.db");
    let spool = AuditSpool::open(AuditConfig::new(&path)).unwrap();
    spool.begin_credentialed(rec).await.unwrap();
    spool.complete(&rid(42), outcome(200, "ok"));
    spool.flush().await.unwrap();
    // The raw files (database and WAL) never contain it either.
    for f in [path.clone(), path.with_extension("db-wal")] {
        if let Ok(bytes) = std::fs::read(&f) {
            let hay = String::from_utf8_lossy(&bytes);
            assert!(
                !hay.contains(CANARY_SECRET) && !hay.contains("SIGCANARY"),
                "{}",
                f.display()
            );
        }
    }
    let mut out = Vec::new();
    query::export_jsonl(&path, &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(!out.contains(CANARY_SECRET) && !out.contains("SIGCANARY"));
    assert!(out.contains("\"query_keys\":[\"key\",\"beta\"]"));
    spool.close().await.unwrap();
}

/// The schema written by credproxy before the spool's schema version 2 (verbatim), for the
/// migration test.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq       INTEGER PRIMARY KEY,
    at        TEXT NOT NULL,
    record_id TEXT NOT NULL,
    kind      TEXT NOT NULL,
    body      TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_record_kind ON events(record_id, kind);
CREATE TABLE IF NOT EXISTS chain_anchor (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS export_state (
    record_id  TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL,
    started    INTEGER NOT NULL DEFAULT 0,
    signaled   INTEGER NOT NULL DEFAULT 0,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS export_pending ON export_state(signaled, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', '1');
";

/// Writes a v1 spool the way the v1 writer did: events chained with SHA-256, export state by
/// record id. Returns the path.
fn write_v1_spool(dir: &tempfile::TempDir) -> std::path::PathBuf {
    use sha2::{Digest, Sha256};
    let path = dir.path().join("v1.db");
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(SCHEMA_V1).unwrap();
    let mut prev = "0".repeat(64);
    let mut seq = 0i64;
    let mut event = |id: &str, kind: &str, body: String| {
        seq += 1;
        let at = credproxy_audit::record::now_rfc3339();
        let mut h = Sha256::new();
        for part in [prev.as_str(), &seq.to_string(), &at, id, kind] {
            h.update(part.as_bytes());
            h.update(b"\n");
        }
        h.update(body.as_bytes());
        let hash = hex::encode(h.finalize());
        c.execute(
            "INSERT INTO events(seq, at, record_id, kind, body, prev_hash, hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![seq, at, id, kind, body, prev, hash],
        )
        .unwrap();
        prev = hash;
        seq
    };
    let begin = |r: credproxy_audit::AuditRecord| serde_json::json!({ "record": r }).to_string();
    let done = |o| serde_json::json!({ "outcome": o }).to_string();
    let mut export = vec![];
    // 1: credentialed, completed, workflow started but outcome not signalled yet.
    let s = event(&rid(1), "begin", begin(cred_record(1, "v1-agent")));
    event(&rid(1), "complete", done(outcome(200, "ok")));
    export.push((rid(1), s, 1, 0));
    // 2: credentialed, left open by a crash, never exported.
    let s = event(&rid(2), "begin", begin(cred_record(2, "v1-agent")));
    export.push((rid(2), s, 0, 0));
    // 3: credentialed, completed and fully exported.
    let s = event(&rid(3), "begin", begin(cred_record(3, "v1-agent")));
    event(&rid(3), "complete", done(outcome(201, "ok")));
    export.push((rid(3), s, 1, 1));
    // 4: without a credential (never exported).
    let mut p = plain_record(4);
    let o = p.outcome.take().unwrap();
    event(&rid(4), "begin", begin(p));
    event(&rid(4), "complete", done(o));
    for (id, s, started, signaled) in export {
        c.execute(
            "INSERT INTO export_state(record_id, seq, started, signaled) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![id, s, started, signaled],
        )
        .unwrap();
    }
    path
}

#[tokio::test]
async fn a_v1_spool_is_migrated_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_v1_spool(&dir);
    assert!(query::verify(&path).unwrap().first_break.is_none());
    let spool = AuditSpool::open(AuditConfig::new(&path)).unwrap();
    let version: String = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, "2");
    // Exports not finished in v1 are still pending, in order, with their progress.
    assert_eq!(spool.stats().export_pending, 2);
    let pending = query::ExportReader::open(&path)
        .unwrap()
        .pending(10)
        .unwrap()
        .into_iter()
        .map(|p| (p.record.id, p.started))
        .collect::<Vec<_>>();
    assert_eq!(pending, [(rid(1), true), (rid(2), false)]);
    // The record the v1 process left open was completed at open, like any interrupted one.
    let rec = query::show(&path, &rid(2)).unwrap().unwrap();
    assert_eq!(rec.outcome.unwrap().reason, "interrupted");
    // The v2 writer continues the same chain; every record survives.
    spool
        .begin_credentialed(cred_record(5, "v2"))
        .await
        .unwrap();
    spool.complete(&rid(5), outcome(200, "ok"));
    spool.ack_export(&rid(1), credproxy_audit::ExportStage::Outcome);
    spool.flush().await.unwrap();
    assert_eq!(spool.stats().export_pending, 2, "5 added, 1 exported");
    spool.close().await.unwrap();
    let all = query::list(&path, &Filter::default()).unwrap();
    assert_eq!(
        all.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        [rid(1), rid(2), rid(3), rid(4), rid(5)]
    );
    assert_eq!(all[2].outcome.as_ref().unwrap().status, Some(201));
    assert_eq!(all[3].status_label(), "denied");
    let rep = query::verify(&path).unwrap();
    assert!(rep.first_break.is_none(), "{:?}", rep.first_break);
    assert_eq!(rep.records_checked, 10);
    // Reopening a migrated spool is a no-op; export resumes where it stopped.
    let spool = AuditSpool::open(AuditConfig::new(&path)).unwrap();
    assert_eq!(spool.stats().export_pending, 2);
    let pending = query::ExportReader::open(&path)
        .unwrap()
        .pending(10)
        .unwrap()
        .into_iter()
        .map(|p| p.record.id)
        .collect::<Vec<_>>();
    assert_eq!(pending, [rid(2), rid(5)]);
    spool.close().await.unwrap();
}

#[tokio::test]
async fn a_spool_of_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    AuditSpool::open(AuditConfig::new(&path))
        .unwrap()
        .close()
        .await
        .unwrap();
    tamper(
        &path,
        "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
    );
    let e = AuditSpool::open(AuditConfig::new(&path)).err().unwrap();
    assert!(
        matches!(&e, AuditError::UnsupportedVersion { found, .. } if found == "99"),
        "{e}"
    );
    assert!(e.to_string().contains("schema version \"99\""), "{e}");
    // Refused without touching it: still version 99.
    let v: String = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT value FROM meta", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, "99");
}
