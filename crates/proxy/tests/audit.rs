//! Audit through the proxy: one record per request (allowed, denied, failed), the credential
//! use durable before the secret leaves, completion with the outcome, nothing secret in the
//! spool, and a spool that cannot commit failing credential requests closed (503, nothing
//! sent) while requests without credentials keep working.
#![allow(clippy::unwrap_used)]

use credproxy_audit::query::{self, Filter};
use credproxy_harness::{Harness, Setup, AGENT, HOST, OTHER, ROLE};

const SECRET: &str = "sk-AUDIT-canary-0f1e2d3c4b5a69788796";
const PH: &str = "agent-vault-a0d17000-0000-4000-8000-00000000a0d1";

fn setup(audit: Option<String>) -> Setup {
    Setup {
        credentials: format!(
            "  - id: audited\n    placeholder: {PH}\n    type: api_key\n    bound_domains: [{HOST}]\n    allowed_roles: [{ROLE}]\n    source: {{env: S}}\n"
        ),
        env: vec![("S".into(), SECRET.into())],
        audit,
        ..Setup::default()
    }
}

#[tokio::test]
async fn every_request_is_recorded_and_no_secret_reaches_the_spool() {
    let h = Harness::with(setup(None)).await;
    let ok = h
        .get(format!("https://{HOST}/render?from=x-api-key&k=v"))
        .header("x-api-key", PH)
        .send()
        .await;
    assert_eq!(ok.status, 200, "{ok}");
    let plain = h.get(format!("https://{HOST}/fixed/10")).send().await;
    assert_eq!(plain.status, 200, "{plain}");
    let misuse = h
        .get(format!("https://{OTHER}/echo"))
        .header("x-api-key", PH)
        .send()
        .await;
    assert_eq!(misuse.status, 403, "{misuse}");
    let unlisted = h.get("https://unlisted.example.test/").send().await;
    assert_eq!(unlisted.connect, 403, "{unlisted}");
    h.proxy.flush_audit().await;

    let db = h.dir.path().join("audit.db");
    let all = query::list(&db, &Filter::default()).unwrap();
    assert_eq!(all.len(), 4, "{all:#?}");
    let used = query::list(
        &db,
        &Filter {
            credential: Some("audited".into()),
            ..Filter::default()
        },
    )
    .unwrap();
    assert_eq!(
        used.len(),
        2,
        "the injection and the misuse name the credential"
    );
    let injected = used
        .iter()
        .find(|r| r.destination == format!("{HOST}:443"))
        .unwrap();
    assert_eq!(injected.agent_id.as_deref(), Some(AGENT));
    assert_eq!(injected.path, "/render");
    assert_eq!(
        injected.query_keys,
        vec!["from".to_string(), "k".to_string()]
    );
    assert_eq!(injected.credentials[0].placeholder, PH);
    assert_eq!(injected.credentials[0].location, "header:x-api-key");
    let outcome = injected.outcome.as_ref().expect("completed");
    assert_eq!(outcome.status, Some(200));
    assert!(outcome.scrub_count > 0, "{outcome:?}");
    assert!(outcome.bytes_down > 0);
    assert_eq!(injected.status_label(), "success");
    let denied = used
        .iter()
        .find(|r| r.destination == format!("{OTHER}:443"))
        .unwrap();
    assert_eq!(
        denied.misuse_alarms,
        vec!["credential_not_bound".to_string()]
    );
    assert_eq!(denied.status_label(), "denied");
    assert!(all
        .iter()
        .any(|r| r.method == "CONNECT" && r.status_label() == "denied"));

    // Nothing secret in the export, the database or its WAL.
    let mut export = Vec::new();
    query::export_jsonl(&db, &mut export).unwrap();
    for (what, bytes) in [
        ("export", export),
        ("db", std::fs::read(&db).unwrap()),
        (
            "wal",
            std::fs::read(db.with_extension("db-wal")).unwrap_or_default(),
        ),
    ] {
        assert!(
            credproxy_testkit::contains_any_rendering(&bytes, SECRET.as_bytes()).is_none(),
            "{what}"
        );
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&h.token),
            "{what} holds the agent's token"
        );
    }
    let report = query::verify(&db).unwrap();
    assert!(report.first_break.is_none(), "{report:?}");
}

#[tokio::test]
async fn a_spool_that_cannot_commit_refuses_credential_use_only() {
    // A size-capped spool (SQLite max_page_count: a real SQLITE_FULL, as on a full disk),
    // filled to the brim through a second handle after the proxy opened it.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("full.db");
    let h = Harness::with(setup(Some(format!(
        "audit:\n  path: {}\n  max_size_bytes: 65536\n",
        db.display()
    ))))
    .await;
    {
        let mut cfg = credproxy_audit::AuditConfig::new(&db);
        cfg.max_size_bytes = Some(65_536);
        let spool = credproxy_audit::AuditSpool::open(cfg).unwrap();
        let mut n = 0u64;
        loop {
            let mut r = credproxy_audit::AuditRecord::new(format!("filler{n}"), "x.example:443");
            r.credentials.push(credproxy_audit::CredentialUse {
                id: "f".into(),
                placeholder: "p".repeat(200),
                location: "header:x".into(),
            });
            if spool.begin_credentialed(r).await.is_err() {
                break;
            }
            n += 1;
            assert!(n < 100_000, "the spool never filled");
        }
        let _ = spool.close().await;
    }
    let c = h
        .get(format!("https://{HOST}/echo"))
        .header("x-api-key", PH)
        .send()
        .await;
    assert_eq!(c.status, 503, "{c}");
    assert_eq!(c.reason.as_deref(), Some("audit_unavailable"), "{c}");
    assert_eq!(
        h.upstream.request_count(),
        0,
        "nothing may be sent when the use cannot be recorded"
    );
    let ok = h.get(format!("https://{HOST}/fixed/10")).send().await;
    assert_eq!(ok.status, 200, "{ok}");
}
