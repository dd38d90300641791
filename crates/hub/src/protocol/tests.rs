//! The protocol on its own: real files for state and audit, calls as the HTTP layer builds
//! them (the end-to-end test through credproxy is `crates/cli/tests/hub.rs`).
#![allow(clippy::unwrap_used)]

use super::*;

struct T {
    dir: tempfile::TempDir,
    p: Protocol,
}

fn proto_with(limits: Limits, audit: Option<&Path>) -> T {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
    let store = Store::open(&dir.path().join("state"), &names).unwrap();
    let audit_path = audit
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.path().join("audit.jsonl"));
    let audit = AuditLog::open(&audit_path).unwrap();
    let p = Protocol::new(names.into_iter().collect(), limits, store, audit);
    T { dir, p }
}

use std::path::Path;

fn proto() -> T {
    proto_with(Limits::default(), None)
}

fn call(method: Method, path: &str, agents: &[&str], body: Option<Value>) -> Call {
    Call {
        method,
        path: path.into(),
        agents: agents.iter().map(|s| s.to_string()).collect(),
        request_id: Some("0190f0e0aaaa7bbbbccccddddeeeeffff".into()),
        peer_uid: Some(990),
        peer_pid: Some(42),
        body: Ok(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())),
    }
}

impl T {
    async fn post(&self, who: &str, path: &str, body: Value) -> Reply {
        self.p
            .handle(call(Method::POST, path, &[who], Some(body)))
            .await
    }

    async fn get(&self, who: &str, path: &str) -> Reply {
        self.p.handle(call(Method::GET, path, &[who], None)).await
    }

    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn code(r: &Reply) -> (u16, &str) {
    (r.status.as_u16(), r.body["error"].as_str().unwrap_or(""))
}

#[tokio::test]
async fn a_delegation_is_delivered_to_its_addressee_with_the_verified_sender() {
    let t = proto();
    let r = t
        .post(
            "a",
            "/delegate",
            json!({"toInstance": "b", "task": {"summarise": "notes.md"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["status"], "queued");
    assert_eq!(r.body["from"], "a");
    assert_eq!(r.body["chain"], json!(["a"]));
    let id = r.body["delegationId"].as_str().unwrap().to_string();

    // Only the addressee sees it.
    assert_eq!(t.get("a", "/inbox").await.body["delegations"], json!([]));
    let inbox = t.get("b", "/inbox").await;
    assert_eq!(inbox.body["instance"], "b");
    let list = inbox.body["delegations"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["from"], "a");
    assert_eq!(list[0]["to"], "b");
    assert_eq!(list[0]["task"], json!({"summarise": "notes.md"}));

    // Someone else cannot acknowledge it; the addressee can, twice harmlessly.
    let r = t.post("c", "/inbox/ack", json!({"delegationId": id})).await;
    assert_eq!(code(&r), (404, "unknown_delegation"));
    let r = t.post("b", "/inbox/ack", json!({"delegationId": id})).await;
    assert_eq!(r.body["acknowledged"], json!([id]));
    assert_eq!(t.get("b", "/inbox").await.body["delegations"], json!([]));
    let r = t
        .post("b", "/inbox/ack", json!({"delegationIds": [id]}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = t
        .post("b", "/inbox/ack", json!({"delegationId": "not-a-uuid"}))
        .await;
    assert_eq!(code(&r), (400, "invalid_request"));

    // Every call is audited with the verified instance and credproxy's request id.
    let audit = t.audit();
    assert_eq!(audit.len(), 8, "{audit:#?}");
    let first = &audit[0];
    assert_eq!(first["event"], "call");
    assert_eq!(first["outcome"], "accepted");
    assert_eq!(first["instance"], "a");
    assert_eq!(first["toInstance"], "b");
    assert_eq!(first["delegationId"], id.as_str());
    assert_eq!(first["requestId"], "0190f0e0aaaa7bbbbccccddddeeeeffff");
    assert_eq!(first["peerUid"], 990);
    assert_eq!(audit[3]["outcome"], "refused");
    assert_eq!(audit[3]["error"], "unknown_delegation");
    assert_eq!(audit[4]["acknowledged"], json!([id]));
}

#[tokio::test]
async fn a_forged_sender_is_refused_and_recorded() {
    let t = proto();
    let r = t
        .post(
            "a",
            "/delegate",
            json!({"fromInstance": "c", "toInstance": "b", "task": "x"}),
        )
        .await;
    assert_eq!(code(&r), (403, "forged_sender"));
    assert!(
        r.body["message"].as_str().unwrap().contains("\"c\""),
        "{:?}",
        r.body
    );
    // Naming yourself is fine.
    let ok = t
        .post(
            "a",
            "/delegate",
            json!({"fromInstance": "a", "toInstance": "b", "task": "x"}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    for body in [
        json!({"contextKey": "k", "value": 1, "updatedBy": "b"}),
        json!({"contextKey": "k", "value": 1, "instanceId": "b"}),
        json!({"contextKey": "k", "value": 1, "updatedBy": {"name": "a"}}),
    ] {
        let r = t.post("a", "/context/update", body).await;
        assert_eq!(code(&r), (403, "forged_sender"));
    }
    // Only the accepted delegation was stored; nothing in the context.
    assert_eq!(
        t.get("b", "/inbox").await.body["delegations"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(t.get("a", "/context").await.body["keys"], json!([]));
    let audit = t.audit();
    let forged: Vec<_> = audit
        .iter()
        .filter(|e| e["error"] == "forged_sender")
        .collect();
    assert_eq!(forged.len(), 4, "{audit:#?}");
    assert_eq!(forged[0]["instance"], "a");
    assert_eq!(forged[0]["claimedSender"], "c");
    assert_eq!(forged[1]["claimedSender"], "b");
    assert_eq!(forged[3]["claimedSender"], r#"{"name":"a"}"#);
}

#[tokio::test]
async fn loops_and_chains_past_the_maximum_depth_are_refused() {
    let t = proto_with(
        Limits {
            max_delegation_depth: 3,
            ..Limits::default()
        },
        None,
    );
    // a -> b -> c -> d, each hop from the hub's own record of its parent.
    let mut parent: Option<String> = None;
    for (from, to, chain) in [
        ("a", "b", json!(["a"])),
        ("b", "c", json!(["a", "b"])),
        ("c", "d", json!(["a", "b", "c"])),
    ] {
        let mut body = json!({"toInstance": to, "task": "t"});
        if let Some(p) = &parent {
            body["parentDelegationId"] = json!(p);
        }
        let r = t.post(from, "/delegate", body).await;
        assert_eq!(r.status, StatusCode::OK, "{from}->{to}: {:?}", r.body);
        assert_eq!(r.body["chain"], chain);
        parent = Some(r.body["delegationId"].as_str().unwrap().to_string());
    }
    let from_d = |to: &str| json!({"toInstance": to, "task": "t", "parentDelegationId": parent});
    // d -> e: the chain [a, b, c] is at the maximum depth (3).
    let r = t.post("d", "/delegate", from_d("e")).await;
    assert_eq!(code(&r), (400, "delegation_too_deep"));
    // d -> a: a loop (checked first).
    let r = t.post("d", "/delegate", from_d("a")).await;
    assert_eq!(code(&r), (400, "delegation_loop"));
    // Delegating to yourself is a loop.
    let r = t
        .post("a", "/delegate", json!({"toInstance": "a", "task": "t"}))
        .await;
    assert_eq!(code(&r), (400, "delegation_loop"));
    // A chain given in the payload (no parent) is checked the same way.
    let r = t
        .post(
            "b",
            "/delegate",
            json!({"toInstance": "a", "task": "t", "delegationChain": ["a"]}),
        )
        .await;
    assert_eq!(code(&r), (400, "delegation_loop"));
    let r = t
        .post(
            "e",
            "/delegate",
            json!({"toInstance": "d", "task": "t", "delegationChain": ["a", "b", "c"]}),
        )
        .await;
    assert_eq!(code(&r), (400, "delegation_too_deep"));
    // With a parent, a payload chain that shortens it is refused.
    let r = t
        .post(
            "d",
            "/delegate",
            json!({"toInstance": "e", "task": "t", "parentDelegationId": parent, "delegationChain": []}),
        )
        .await;
    assert_eq!(code(&r), (400, "chain_mismatch"));
    // A parent that was not addressed to the caller is not theirs to extend.
    let r = t
        .post(
            "e",
            "/delegate",
            json!({"toInstance": "b", "task": "t", "parentDelegationId": parent}),
        )
        .await;
    assert_eq!(code(&r), (404, "unknown_delegation"));
    // Nothing refused was stored: e's inbox is empty, d has exactly one.
    assert_eq!(t.get("e", "/inbox").await.body["delegations"], json!([]));
    assert_eq!(
        t.get("d", "/inbox").await.body["delegations"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn identity_comes_only_from_credproxy_and_names_a_known_instance() {
    let t = proto();
    let r = t.p.handle(call(Method::GET, "/health", &[], None)).await;
    assert_eq!(code(&r), (401, "unauthenticated"));
    let r = t.get("mallory", "/health").await;
    assert_eq!(code(&r), (403, "unknown_sender"));
    let r =
        t.p.handle(call(Method::GET, "/health", &["a", "b"], None))
            .await;
    assert_eq!(code(&r), (400, "ambiguous_identity"));
    let r = t.get("a", "/health").await;
    assert_eq!(r.body, json!({"status": "healthy", "instance": "a"}));
    let r = t
        .post("a", "/delegate", json!({"toInstance": "zed", "task": "t"}))
        .await;
    assert_eq!(code(&r), (400, "unknown_instance"));
    let r = t
        .post(
            "a",
            "/delegate",
            json!({"toInstance": "b", "task": "t", "delegationChain": ["zed"]}),
        )
        .await;
    assert_eq!(code(&r), (400, "unknown_instance"));
    let audit = t.audit();
    assert_eq!(audit.len(), 6);
    assert!(audit[0].get("instance").is_none());
    assert_eq!(audit[1]["error"], "unknown_sender");
}

#[tokio::test]
async fn bad_requests_get_clear_json_errors() {
    let t = proto();
    let cases: Vec<(Call, u16, &str)> = vec![
        (
            call(Method::GET, "/delegate", &["a"], None),
            405,
            "method_not_allowed",
        ),
        (call(Method::POST, "/nope", &["a"], None), 404, "not_found"),
        (
            call(Method::POST, "/delegate", &["a"], None),
            400,
            "invalid_json",
        ),
        (
            call(Method::POST, "/delegate", &["a"], Some(json!([1]))),
            400,
            "invalid_request",
        ),
        (
            call(
                Method::POST,
                "/delegate",
                &["a"],
                Some(json!({"toInstance": "b"})),
            ),
            400,
            "invalid_request",
        ),
        (
            call(
                Method::POST,
                "/delegate",
                &["a"],
                Some(json!({"toInstance": "b", "task": 1, "signature": "ab"})),
            ),
            400,
            "invalid_request",
        ),
        (
            Call {
                body: Err(BodyProblem::TooLarge),
                ..call(Method::POST, "/delegate", &["a"], None)
            },
            413,
            "body_too_large",
        ),
        (
            call(
                Method::POST,
                "/context/update",
                &["a"],
                Some(json!({"contextKey": "../etc", "value": 1})),
            ),
            400,
            "invalid_key",
        ),
        (
            call(
                Method::POST,
                "/context/update",
                &["a"],
                Some(json!({"contextKey": "k".repeat(256), "value": 1})),
            ),
            400,
            "invalid_key",
        ),
        (
            call(Method::GET, "/context/a.b", &["a"], None),
            400,
            "invalid_key",
        ),
        (
            call(Method::GET, "/context/none", &["a"], None),
            404,
            "unknown_key",
        ),
        (
            call(Method::DELETE, "/context/k", &["a"], None),
            405,
            "method_not_allowed",
        ),
    ];
    for (c, status, err) in cases {
        let what = format!("{} {}", c.method, c.path);
        let r = t.p.handle(c).await;
        assert_eq!(code(&r), (status, err), "{what}: {:?}", r.body);
        assert!(r.body["message"].as_str().is_some_and(|m| !m.is_empty()));
        if status == 405 {
            assert!(r.allow.is_some());
        }
    }
}

#[tokio::test]
async fn shared_context_is_written_by_the_verified_instance() {
    let t = proto_with(
        Limits {
            max_context_keys: 2,
            ..Limits::default()
        },
        None,
    );
    let r = t
        .post(
            "a",
            "/context/update",
            json!({"contextKey": "plan_v1", "value": {"steps": [1, 2]}, "updatedBy": "a"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["updatedBy"], "a");
    let k = "k".repeat(255);
    let r = t
        .post(
            "b",
            "/context/update",
            json!({"contextKey": k, "value": null}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "a 255-character key is fine");
    let r = t
        .post(
            "b",
            "/context/update",
            json!({"contextKey": "third", "value": 3}),
        )
        .await;
    assert_eq!(code(&r), (507, "context_full"));
    // Updating an existing key is always possible.
    let r = t
        .post(
            "b",
            "/context/update",
            json!({"contextKey": "plan_v1", "value": "v2"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let e = t.get("c", "/context/plan_v1").await;
    assert_eq!(e.body["value"], "v2");
    assert_eq!(e.body["updatedBy"], "b");
    let keys = t.get("c", "/context").await;
    assert_eq!(keys.body["keys"], json!([k, "plan_v1"]));
}

#[tokio::test]
async fn each_instance_has_its_own_sliding_window() {
    let t = proto_with(
        Limits {
            rate_limit: 3,
            ..Limits::default()
        },
        None,
    );
    for _ in 0..3 {
        assert_eq!(t.get("a", "/health").await.status, StatusCode::OK);
    }
    let r = t.get("a", "/health").await;
    assert_eq!(code(&r), (429, "rate_limited"));
    assert!(r.retry_after.is_some_and(|s| (1..=60).contains(&s)));
    assert_eq!(t.get("b", "/health").await.status, StatusCode::OK);
    assert_eq!(t.audit()[3]["error"], "rate_limited");
}

#[tokio::test]
async fn nothing_is_done_that_the_audit_log_cannot_record() {
    // /dev/full accepts the open and fails every write (ENOSPC).
    let t = proto_with(Limits::default(), Some(Path::new("/dev/full")));
    let r = t
        .post("a", "/delegate", json!({"toInstance": "b", "task": "t"}))
        .await;
    assert_eq!(code(&r), (503, "audit_unavailable"));
    let r = t
        .post(
            "a",
            "/context/update",
            json!({"contextKey": "k", "value": 1}),
        )
        .await;
    assert_eq!(code(&r), (503, "audit_unavailable"));
    let state = t.dir.path().join("state");
    let stored = |p: &str| {
        std::fs::read_dir(state.join(p))
            .unwrap()
            .filter_map(|e| e.ok())
            .count()
    };
    assert_eq!(
        stored("delegations/b/pending"),
        0,
        "no file, not even a temporary one"
    );
    assert_eq!(stored("context"), 0);
}
