//! The hub on its socket: only trusted peers are served (others are closed at accept and
//! recorded), the body cap is enforced before the body is read, answers are JSON.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use credproxy_core::UidSet;
use credproxy_hub::{Hub, HubConfig, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

fn own_uid() -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap())
}

async fn hub(dir: &Path, trusted: u32) -> std::path::PathBuf {
    let mut uids = UidSet::new();
    uids.push_uid(trusted).unwrap();
    let socket = dir.join("hub.sock");
    let h = Hub::bind(HubConfig {
        listen: socket.clone(),
        socket_mode: 0o666,
        trusted_uids: uids,
        trusted_users: vec![],
        instances: BTreeSet::from(["a".to_string(), "b".to_string()]),
        state_dir: dir.join("state"),
        audit_log: dir.join("audit.jsonl"),
        limits: Limits::default(),
        shutdown_grace: Duration::from_secs(1),
    })
    .await
    .unwrap();
    tokio::spawn(h.run(std::future::pending(), Duration::from_secs(1)));
    socket
}

async fn exchange(socket: &Path, request: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).await.unwrap();
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn audit(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn a_trusted_peer_is_served_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let socket = hub(dir.path(), own_uid()).await;
    let body = r#"{"toInstance":"b","task":"hello"}"#;
    let req = format!(
        "POST /delegate HTTP/1.1\r\nHost: hub.openclaw.internal\r\nx-credproxy-agent: a\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let resp = exchange(&socket, req.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("content-type: application/json"), "{resp}");
    assert!(resp.contains(r#""status":"queued""#), "{resp}");

    // The body cap: refused from the declared length, before the body is read.
    let big = format!(
        "POST /delegate HTTP/1.1\r\nHost: h\r\nx-credproxy-agent: a\r\ncontent-length: {}\r\n\r\n",
        credproxy_hub::MAX_BODY + 1
    );
    let resp = exchange(&socket, big.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains(r#""error":"body_too_large""#), "{resp}");
    // ... and when it is chunked (no declared length).
    let mut chunked = b"POST /delegate HTTP/1.1\r\nHost: h\r\nx-credproxy-agent: a\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..17 {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(&chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let resp = exchange(&socket, &chunked).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    let a = audit(dir.path());
    assert_eq!(a.len(), 3);
    assert_eq!(a[1]["error"], "body_too_large");
    assert_eq!(a[0]["peerUid"], own_uid());
}

#[tokio::test]
async fn an_untrusted_peer_is_closed_at_accept_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let me = own_uid();
    let socket = hub(dir.path(), if me == 4242 { 4243 } else { 4242 }).await;
    let resp = exchange(
        &socket,
        b"GET /health HTTP/1.1\r\nHost: h\r\nx-credproxy-agent: a\r\n\r\n",
    )
    .await;
    assert_eq!(resp, "", "no answer at all");
    let a = audit(dir.path());
    assert_eq!(a.len(), 1, "{a:#?}");
    assert_eq!(a[0]["event"], "connection_refused");
    assert_eq!(a[0]["error"], "untrusted_peer");
    assert_eq!(a[0]["peerUid"], me);
}
