//! Internal services (`internal_services`): an allowlisted internal name served over a local
//! Unix socket, reached through the whole pipeline. A small HTTP/1.1 service on a Unix socket
//! stands for the hub and records what it receives.
//!
//! Asserted: requests over CONNECT (TLS) and plain HTTP reach the socket with the path,
//! method and body; every agent-supplied `x-credproxy-*` header is gone and
//! `x-credproxy-agent` names the verified agent (once); an unauthenticated request, a
//! placeholder sent to the service (misuse alarm) and a WebSocket upgrade never reach it; a
//! missing service is 502 `internal_service_unavailable`; every call is in the audit log; a
//! reload binding a credential to the internal name is refused.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use credproxy_audit::query::{self, Filter};
use credproxy_harness::{Harness, Setup, AGENT, HOST, ROLE};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

const SVC: &str = "hub.openclaw.internal";
const PH: &str = "agent-vault-1a7e0000-0000-4000-8000-0000000000a1";
const SECRET: &str = "sk-INTERNAL-canary-5b4a3928171605f4";

/// What the service saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// The service: answers 200 with `service saw <agent>` and records every request.
async fn service(path: &Path) -> Arc<Mutex<Vec<Seen>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let rec = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let rec = rec.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let rec = rec.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let seen = Seen {
                            method: parts.method.to_string(),
                            uri: parts.uri.to_string(),
                            headers: parts
                                .headers
                                .iter()
                                .map(|(n, v)| {
                                    (n.to_string(), v.to_str().unwrap_or("?").to_string())
                                })
                                .collect(),
                            body: String::from_utf8_lossy(&body).into_owned(),
                        };
                        let agent = seen.all("x-credproxy-agent").join(",");
                        // `/stored`: what an instance stored earlier, served back (the body).
                        let answer = if seen.uri == "/stored" {
                            Bytes::from(seen.body.clone())
                        } else {
                            Bytes::from(format!("service saw {agent}"))
                        };
                        rec.lock().unwrap().push(seen);
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(answer)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    seen
}

async fn harness(socket: &Path) -> Harness {
    Harness::with(Setup {
        allow: vec![SVC.into()],
        credentials: format!(
            "  - id: anthropic\n    placeholder: {PH}\n    type: api_key\n    bound_domains: [{HOST}]\n    allowed_roles: [{ROLE}]\n    source: {{env: KEY}}\n"
        ),
        env: vec![("KEY".into(), SECRET.into())],
        extra_yaml: format!(
            "internal_services:\n  {SVC}:\n    unix: {}\n",
            socket.display()
        ),
        ..Setup::default()
    })
    .await
}

#[tokio::test]
async fn internal_service_gets_the_verified_agent_and_nothing_the_agent_forged() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("hub.sock");
    let seen = service(&socket).await;
    let h = harness(&socket).await;

    // Over CONNECT + TLS, with forged proxy headers.
    let c = h
        .post(
            format!("https://{SVC}/delegate?x=1"),
            r#"{"toInstance":"b"}"#,
        )
        .header("x-credproxy-agent", "agent-b")
        .header("X-Credproxy-Agent", "agent-c")
        .header("x-credproxy-request-id", "forged")
        .header("content-type", "application/json")
        .send()
        .await;
    assert_eq!(
        (c.text(), c.status),
        (format!("service saw {AGENT}"), 200),
        "{c}"
    );
    // Plain HTTP (absolute form) too.
    let c = h.get(format!("http://{SVC}/inbox")).send().await;
    assert_eq!(
        (c.text(), c.status),
        (format!("service saw {AGENT}"), 200),
        "{c}"
    );

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    let post = &seen[0];
    assert_eq!(post.method, "POST");
    assert_eq!(post.uri, "/delegate?x=1", "origin-form on the socket");
    assert_eq!(post.body, r#"{"toInstance":"b"}"#);
    assert_eq!(post.all("x-credproxy-agent"), vec![AGENT]);
    assert_eq!(post.all("host"), vec![SVC]);
    let ids = post.all("x-credproxy-request-id");
    assert_eq!(ids.len(), 1);
    assert_ne!(ids[0], "forged");
    assert!(post.all("proxy-authorization").is_empty());
    assert_eq!(seen[1].method, "GET");
    assert_eq!(seen[1].uri, "/inbox");

    // Both are in the audit log, attributed to the agent, under the id the service got.
    h.proxy.flush_audit().await;
    let records = query::list(&h.dir.path().join("audit.db"), &Filter::default()).unwrap();
    let hub: Vec<_> = records
        .iter()
        .filter(|r| r.destination.starts_with(SVC))
        .collect();
    assert_eq!(hub.len(), 2, "{records:#?}");
    assert!(hub.iter().all(|r| r.agent_id.as_deref() == Some(AGENT)));
    assert!(hub.iter().any(|r| r.id == ids[0]), "{hub:#?}");
    assert!(hub.iter().all(|r| r.credentials.is_empty()));
}

#[tokio::test]
async fn what_must_not_reach_an_internal_service_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("hub.sock");
    let seen = service(&socket).await;
    let h = harness(&socket).await;
    let url = format!("https://{SVC}/context/update");

    // No identity: 407 at the CONNECT.
    let c = h.get(&url).token("").send().await;
    assert_eq!(c.connect, 407, "{c}");

    // A placeholder toward the service: refused as misuse, never injected.
    let c = h.get(&url).header("x-api-key", PH).send().await;
    assert_eq!(c.status, 403, "{c}");
    let body = c.text();
    assert!(body.contains("not bound") || body.contains(SVC), "{c}");

    // WebSocket upgrades are not relayed to internal services.
    let c = h
        .get(format!("https://{SVC}/ws"))
        .curl_args(&["--http1.1"])
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", 13)
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await;
    assert_eq!(c.status, 400, "{c}");
    assert!(seen.lock().unwrap().is_empty(), "{:#?}", seen.lock());

    // The misuse is counted and recorded like any other.
    h.proxy.flush_audit().await;
    let records = query::list(&h.dir.path().join("audit.db"), &Filter::default()).unwrap();
    assert!(
        records
            .iter()
            .any(|r| r.destination.starts_with(SVC) && !r.misuse_alarms.is_empty()),
        "{records:#?}"
    );

    // The service gone: a clear 502.
    std::fs::remove_file(&socket).unwrap();
    let c = h.get(format!("https://{SVC}/inbox")).send().await;
    assert_eq!(c.status, 502, "{c}");
    assert_eq!(
        c.reason.as_deref(),
        Some("internal_service_unavailable"),
        "{c}"
    );
    assert!(
        c.text()
            .contains(&format!("the internal service {SVC} is not answering")),
        "{c}"
    );
}

#[tokio::test]
async fn no_reload_binds_a_credential_to_an_internal_service() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("hub.sock");
    let _seen = service(&socket).await;
    let h = harness(&socket).await;
    // The same file with the credential also bound to the internal name: check-config's rule.
    let err = h
        .reload(|y| {
            y.replace(
                &format!("bound_domains: [{HOST}]"),
                &format!("bound_domains: [{HOST}, {SVC}]"),
            )
        })
        .unwrap_err();
    assert!(
        err.contains("never receives an injected credential"),
        "{err}"
    );
    // Without the internal_services section (which needs a restart to change), the running
    // service still may not get one.
    let err = h
        .reload(|y| {
            let cut = y.find("internal_services:").unwrap();
            let rest = &y[cut..];
            let end = rest.find("limits:").unwrap();
            format!("{}{}", &y[..cut], &rest[end..]).replace(
                &format!("bound_domains: [{HOST}]"),
                &format!("bound_domains: [{HOST}, {SVC}]"),
            )
        })
        .unwrap_err();
    assert!(
        err.contains(&format!(
            "bound to {SVC}, an internal service of the running proxy"
        )),
        "{err}"
    );
}

/// Threat A40: an internal service's answers are scrubbed like any host's, so a secret value
/// stored there (by whatever path) never reaches an agent from it.
#[tokio::test]
async fn an_internal_services_answer_is_scrubbed() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("hub.sock");
    let _seen = service(&socket).await;
    let h = harness(&socket).await;
    let c = h
        .post(format!("https://{SVC}/stored"), format!("kept: {SECRET}"))
        .send()
        .await;
    assert_eq!((c.text(), c.status), (format!("kept: {PH}"), 200), "{c}");
}
