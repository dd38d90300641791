//! The hub end to end, through real processes: `credproxy serve` with one Unix listener per
//! instance (`peer_uids`, the dev issuer's listener token: the instance presents nothing),
//! `internal_services` routing `hub.openclaw.internal` to `credproxy hub`, and each instance's
//! agent as curl behind its own `credproxy bridge` — instance A's running as this test's uid,
//! instance B's as `nobody` (65534), as two containers' processes would be.
//!
//! Asserted: a delegation from A reaches B's inbox with the sender taken from A's verified
//! identity (a forged `x-credproxy-agent` header is replaced, a forged `fromInstance` is
//! refused 403 and recorded); B acknowledges it; a loop and a chain past the maximum depth
//! are refused; B's uid cannot use A's socket (closed at accept, logged, counted); a peer
//! that is not credproxy cannot use the hub's socket (closed, recorded); every call is in
//! the hub's audit log and credproxy's, under the same request id.
//!
//! Runs as root (to run B as another uid), as CI does.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use support::*;

const HUB: &str = "hub.openclaw.internal";
const NOBODY: u32 = 65534;

fn own_uid() -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap())
}

/// The address in the bridge's (human-readable) `bridge listening from=tcp:…` line.
fn bridge_addr(line: &str) -> std::net::SocketAddr {
    let at = line
        .find("tcp:127.0.0.1:")
        .unwrap_or_else(|| panic!("{line}"))
        + 4;
    let end = line[at..]
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .map_or(line.len(), |e| at + e);
    line[at..end]
        .parse()
        .unwrap_or_else(|e| panic!("{line}: {e}"))
}

struct Setup {
    dir: tempfile::TempDir,
    proxy: Proc,
    _hub: Proc,
    admin: std::net::SocketAddr,
    bridges: Vec<Proc>,
}

impl Setup {
    fn d(&self) -> &Path {
        self.dir.path()
    }

    fn hub_audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.d().join("hub-audit.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// `credproxy bridge tcp:127.0.0.1:0 unix:SOCKET` as `uid`; returns its address.
    async fn bridge(&mut self, socket: &Path, uid: u32) -> std::net::SocketAddr {
        let mut cmd = credproxy(args(&[
            &"bridge",
            &"tcp:127.0.0.1:0",
            &format!("unix:{}", socket.display()),
        ]));
        cmd.uid(uid);
        let mut p = Proc::spawn_cmd(cmd);
        let line = p
            .stderr
            .wait_for("bridge listening", |l| l.contains("bridge listening"))
            .await;
        let addr = bridge_addr(&line);
        self.bridges.push(p);
        addr
    }

    /// curl through `bridge` (the agent's HTTPS_PROXY): status and JSON body.
    async fn call(
        &self,
        bridge: std::net::SocketAddr,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[&str],
    ) -> (String, Value) {
        let mut cmd = curl();
        cmd.arg("--proxy")
            .arg(format!("http://{bridge}"))
            .arg("--cacert")
            .arg(self.d().join("ca/ca.crt"))
            .args(["-X", method]);
        for h in headers {
            cmd.args(["-H", h]);
        }
        if let Some(b) = body {
            cmd.args(["-H", "content-type: application/json", "--data"])
                .arg(b.to_string());
        }
        cmd.arg(format!("https://{HUB}{path}"));
        let (text, code) = curl_body_and_code(cmd).await;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (code, v)
    }
}

async fn setup() -> Setup {
    assert_eq!(
        own_uid(),
        0,
        "this test runs instance B as uid {NOBODY}, which needs root (CI runs as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // `nobody` must reach its socket and the binary's directory.
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    ca_init(d).await;
    let me = own_uid();
    let listener = |name: &str, uid: u32| {
        format!(
            "  - name: {name}\n    unix: {sock}\n    unix_mode: \"0666\"\n    peer_uids: [{uid}]\n    agent: {name}\n    agent_token:\n      dev_issuer: {{key_file: {key}, roles: [proxy-user]}}\n",
            sock = d.join(format!("{name}.sock")).display(),
            key = d.join("dev-issuer-key.pem").display(),
        )
    };
    let hub_socket = d.join("hub/hub.sock");
    let config = format!(
        "listeners:\n{a}{b}admin:\n  tcp: \"127.0.0.1:0\"\n\
         ca:\n  cert_file: ca/ca.crt\n  key_file: ca/ca.key\n\
         allowed_domains: [{HUB}]\n\
         identity:\n  oidc: {{issuer: credproxy-dev, audiences: [credproxy]}}\n\
         internal_services:\n  {HUB}: {{unix: {hub}}}\n\
         audit: {{path: {audit}}}\n\
         limits:\n  shutdown_grace: 1s\n\
         log: {{format: json, level: info}}\n",
        a = listener("inst-a", me),
        b = listener("inst-b", NOBODY),
        hub = hub_socket.display(),
        audit = d.join("audit.db").display(),
    );
    let cfg = d.join("config.yaml");
    std::fs::write(&cfg, &config).unwrap();
    assert_code(&run(args(&[&"check-config", &cfg])).await, 0);

    let hub_args = args(&[
        &"hub",
        &"--listen",
        &hub_socket,
        &"--trusted-uid",
        &me.to_string(),
        &"--instance",
        &"inst-a",
        &"--instance",
        &"inst-b",
        &"--instance",
        &"inst-c",
        &"--state-dir",
        &d.join("hub-state"),
        &"--audit-log",
        &d.join("hub-audit.jsonl"),
        &"--max-delegation-depth",
        &"1",
    ]);
    let mut check = hub_args.clone();
    check.push("--check".into());
    let o = run(check).await;
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("instances inst-a,inst-b,inst-c"),
        "{}",
        stdout(&o)
    );
    std::fs::create_dir_all(d.join("hub")).unwrap();
    let mut hub = Proc::spawn(hub_args);
    hub.stderr
        .wait_for("hub listening", |l| is_message(l, "hub listening"))
        .await;

    let mut proxy = Proc::spawn(args(&[&"serve", &"--config", &cfg]));
    proxy
        .stderr
        .wait_for("credproxy ready", |l| is_message(l, "credproxy ready"))
        .await;
    let admin = proxy
        .stderr
        .seen
        .iter()
        .filter(|l| l.contains("admin"))
        .find_map(|l| logged_addr(l))
        .unwrap_or_else(|| panic!("no admin address:\n{}", proxy.stderr.text()));
    Setup {
        dir,
        proxy,
        _hub: hub,
        admin,
        bridges: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_delegate_through_credproxy_as_their_verified_identity() {
    let mut s = setup().await;
    let refusal = "unix connection from a uid outside peer_uids dropped";
    let a_sock: PathBuf = s.d().join("inst-a.sock");
    let b_sock: PathBuf = s.d().join("inst-b.sock");
    let a = s.bridge(&a_sock, own_uid()).await;
    let b = s.bridge(&b_sock, NOBODY).await;

    // A names someone else in the payload: refused and recorded.
    let (code, v) = s
        .call(
            a,
            "POST",
            "/delegate",
            Some(json!({"fromInstance": "inst-c", "toInstance": "inst-b", "task": "x"})),
            &[],
        )
        .await;
    assert_eq!(
        (code.as_str(), v["error"].as_str()),
        ("403", Some("forged_sender")),
        "{v}"
    );

    // A forges the identity header instead: credproxy replaces it; the sender is A.
    let (code, v) = s
        .call(
            a,
            "POST",
            "/delegate",
            Some(json!({"toInstance": "inst-b", "task": {"review": "PR 7"}})),
            &[
                "x-credproxy-agent: inst-c",
                "X-Credproxy-Request-Id: forged",
            ],
        )
        .await;
    assert_eq!(code, "200", "{v}");
    assert_eq!(v["from"], "inst-a");
    assert_eq!(v["chain"], json!(["inst-a"]));
    let id = v["delegationId"].as_str().unwrap().to_string();

    // B (another uid, its own socket) finds it in its inbox and acknowledges it.
    let (code, v) = s.call(b, "GET", "/inbox", None, &[]).await;
    assert_eq!(code, "200", "{v}");
    assert_eq!(v["instance"], "inst-b");
    let list = v["delegations"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["from"], "inst-a");
    assert_eq!(list[0]["task"], json!({"review": "PR 7"}));

    // Passing it on: back to A is a loop; on to C is past the maximum depth (1).
    let (code, v) = s
        .call(
            b,
            "POST",
            "/delegate",
            Some(json!({"toInstance": "inst-a", "task": "y", "parentDelegationId": id})),
            &[],
        )
        .await;
    assert_eq!(
        (code.as_str(), v["error"].as_str()),
        ("400", Some("delegation_loop")),
        "{v}"
    );
    let (code, v) = s
        .call(
            b,
            "POST",
            "/delegate",
            Some(json!({"toInstance": "inst-c", "task": "y", "parentDelegationId": id})),
            &[],
        )
        .await;
    assert_eq!(
        (code.as_str(), v["error"].as_str()),
        ("400", Some("delegation_too_deep")),
        "{v}"
    );
    let (code, v) = s
        .call(
            b,
            "POST",
            "/inbox/ack",
            Some(json!({"delegationId": id})),
            &[],
        )
        .await;
    assert_eq!(code, "200", "{v}");
    let (_, v) = s.call(b, "GET", "/inbox", None, &[]).await;
    assert_eq!(v["delegations"], json!([]));

    // B's uid on A's socket: closed at accept, before a byte is read.
    let stolen = s.bridge(&a_sock, NOBODY).await;
    let mut cmd = curl();
    cmd.arg("--proxy")
        .arg(format!("http://{stolen}"))
        .arg("--cacert")
        .arg(s.d().join("ca/ca.crt"))
        .args(["-sS", "-w", "%{http_connect}"])
        .arg(format!("https://{HUB}/inbox"));
    let o = output(cmd, "curl").await;
    assert_ne!(
        o.status.code(),
        Some(0),
        "B reached A's listener: {}",
        stdout(&o)
    );
    assert_eq!(stdout(&o), "000", "no CONNECT answer at all");
    let metrics = reqwest::get(format!("http://{}/metrics", s.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"credproxy_connections_refused_total{listener="inst-a",reason="peer_uid"} 1"#
        ),
        "{metrics}"
    );

    let line = s
        .proxy
        .stderr
        .wait_for("the refusal log line", |l| is_message(l, refusal))
        .await;
    assert!(
        line.contains("inst-a") && line.contains(&format!("uid={NOBODY}")),
        "{line}"
    );

    // Only credproxy may use the hub's socket: nobody connecting directly is refused.
    let mut direct = curl();
    direct
        .uid(NOBODY)
        .arg("--unix-socket")
        .arg(s.d().join("hub/hub.sock"))
        .args(["-sS", "-H", "x-credproxy-agent: inst-a"])
        .arg(format!("http://{HUB}/inbox"));
    let o = output(direct, "curl").await;
    assert_ne!(o.status.code(), Some(0), "{}", stdout(&o));

    // The hub's audit: every call, and the refused connection, with the verified instance.
    let audit = s.hub_audit();
    let calls: Vec<&Value> = audit.iter().filter(|e| e["event"] == "call").collect();
    assert_eq!(calls.len(), 7, "{audit:#?}");
    assert_eq!(calls[0]["error"], "forged_sender");
    assert_eq!(calls[0]["instance"], "inst-a");
    assert_eq!(calls[0]["claimedSender"], "inst-c");
    assert_eq!(calls[1]["outcome"], "accepted");
    assert_eq!(calls[1]["instance"], "inst-a");
    assert_eq!(calls[2]["instance"], "inst-b");
    let refused: Vec<&Value> = audit
        .iter()
        .filter(|e| e["event"] == "connection_refused")
        .collect();
    assert_eq!(refused.len(), 1, "{audit:#?}");
    assert_eq!(refused[0]["peerUid"], NOBODY);
    // ... and credproxy's audit has the same calls, attributed, under the same ids.
    let request_id = calls[1]["requestId"].as_str().unwrap();
    assert_ne!(request_id, "forged");
    let o = run(args(&[
        &"audit",
        &"show",
        &"--db",
        &s.d().join("audit.db"),
        &request_id,
    ]))
    .await;
    assert_code(&o, 0);
    let shown = stdout(&o);
    assert!(shown.contains("inst-a"), "{shown}");
    assert!(shown.contains(HUB), "{shown}");
}
