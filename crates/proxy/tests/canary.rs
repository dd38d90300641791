//! A canary secret through a full cycle — injection, echoes in every rendering, misuse, an
//! invalid secret, a streaming echo — while every log line (trace level for credproxy, debug
//! for the libraries) and the metrics are captured: no rendering of the secret may appear in
//! any of them, nor in anything the agent received.
#![allow(clippy::unwrap_used)]

use credproxy_harness::{Harness, Setup, HOST, OTHER, ROLE};

const CANARY: &str = "sk-CANARY-c4n4ry-5ecret-9a8b7c6d5e4f";
const PH: &str = "agent-vault-ca11ab1e-0000-4000-8000-0000000000ca";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rendering_of_the_secret_reaches_logs_metrics_or_the_agent() {
    let logs = credproxy_harness::logs::capture(
        "debug,credproxy_proxy=trace,credproxy_secrets=trace,credproxy_identity=trace",
    );

    let h = Harness::with(Setup {
        admin: true,
        credentials: format!(
            "  - id: canary\n    placeholder: {PH}\n    type: api_key\n    bound_domains: [{HOST}]\n    allowed_roles: [{ROLE}]\n    source: {{env: CANARY}}\n"
        ),
        env: vec![("CANARY".into(), CANARY.into())],
        ..Setup::default()
    })
    .await;
    let key = format!("x-api-key: {PH}");
    let mut agent_saw: Vec<u8> = Vec::new();
    for args in [
        vec!["-D", "-", "-H", &key, &format!("https://{HOST}/echo")],
        vec![
            "-D",
            "-",
            "-H",
            &key,
            "-H",
            "te: trailers",
            &format!("https://{HOST}/render?from=x-api-key&where=body,header,location,trailer"),
        ],
        vec![
            "-D",
            "-",
            "-H",
            &key,
            &format!("https://{HOST}/render?from=x-api-key&where=sse"),
        ],
        vec![
            "-D",
            "-",
            "-H",
            &key,
            &format!("https://{HOST}/render?from=x-api-key&encoding=gzip"),
        ],
        vec![
            "-D",
            "-",
            "-H",
            &key,
            &format!("https://{HOST}/render?from=x-api-key&encoding=bogus"),
        ],
        // Misuse: another host, a near miss.
        vec!["-D", "-", "-H", &key, &format!("https://{OTHER}/echo")],
        vec![
            "-D",
            "-",
            "-H",
            &format!("x-api-key: {}", PH.to_uppercase()),
            &format!("https://{HOST}/echo"),
        ],
    ] {
        let c = h.curl(&args).await;
        agent_saw.extend_from_slice(&c.stdout);
        agent_saw.extend_from_slice(c.stderr.as_bytes());
    }
    // The upstream really received it (so the canary was live).
    assert!(h
        .upstream
        .received()
        .iter()
        .any(|r| r.header("x-api-key").as_deref() == Some(CANARY)));

    let admin = h.proxy.admin_addr().unwrap();
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("credproxy_scrubbed_total"), "{metrics}");
    assert!(
        metrics.contains("credproxy_misuse_alarms_total"),
        "{metrics}"
    );

    let logs = logs.bytes();
    assert!(!logs.is_empty(), "no logs were captured");
    for (what, bytes) in [
        ("logs", &logs),
        ("metrics", &metrics.into_bytes()),
        ("agent", &agent_saw),
    ] {
        if let Some(form) = credproxy_testkit::contains_any_rendering(bytes, CANARY.as_bytes()) {
            let text = String::from_utf8_lossy(bytes);
            let at = text.find(CANARY).unwrap_or(0);
            panic!(
                "{what} contain the secret as {form}: …{}…",
                &text[at.saturating_sub(200)..(at + 100).min(text.len())]
            );
        }
    }
    // The agent's token never appears in the logs either.
    assert!(
        !String::from_utf8_lossy(&logs).contains(&h.token),
        "the agent's token was logged"
    );
    // A request's log lines carry its span (id, destination, verified agent) inside the
    // connection's span (listener, peer).
    let forwarded: Vec<serde_json::Value> = String::from_utf8_lossy(&logs)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "forwarded")
        .collect();
    assert!(!forwarded.is_empty(), "no 'forwarded' log line");
    for line in &forwarded {
        let span = &line["span"];
        assert_eq!(span["name"], "request", "{line}");
        assert_eq!(span["authority"], format!("{HOST}:443"), "{line}");
        assert_eq!(span["agent"], credproxy_harness::AGENT, "{line}");
        let id = span["id"].as_str().unwrap_or_default();
        assert_eq!(id.len(), 32, "{line}");
        let conn = line["spans"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "conn"))
            .unwrap_or_else(|| panic!("no conn span: {line}"));
        assert!(
            conn["listener"].is_string() && conn["peer"].is_string(),
            "{line}"
        );
    }
}
