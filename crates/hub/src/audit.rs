//! The hub's audit log: one JSON line per call, accepted or refused, and per connection
//! refused at accept. Append-only (`O_APPEND`), each line written whole and synced to disk
//! before the call's answer is sent; a call whose line cannot be written is refused.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

/// One audit line. Absent fields are left out.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// RFC 3339 UTC, milliseconds.
    pub time: String,
    /// `call` or `connection_refused`.
    pub event: &'static str,
    /// `accepted` or `refused`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Stable error code when refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The verified instance (from credproxy's `x-credproxy-agent`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// A sender the payload claimed that is not the verified one (forgery attempts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_sender: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delegation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_instance: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_key: Option<String>,
    /// credproxy's request id (`x-credproxy-request-id`): the proxy's audit record of the
    /// same call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_pid: Option<i32>,
}

impl Event {
    pub fn now(event: &'static str, outcome: &'static str) -> Event {
        Event {
            time: humantime::format_rfc3339_millis(credproxy_core::Clock::system().now())
                .to_string(),
            event,
            outcome,
            ..Event::default()
        }
    }
}

/// The audit log file.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write the audit log {path}")]
pub struct AuditError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl AuditLog {
    /// Open (create, mode 0640) for appending. Its directory must exist.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)
            .map_err(|source| AuditError {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// Append one line and sync it to disk.
    pub fn write(&self, event: &Event) -> Result<(), AuditError> {
        let err = |source| AuditError {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(event).map_err(|e| err(std::io::Error::other(e)))?;
        line.push(b'\n');
        let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let mut f: &File = &file;
        f.write_all(&line).map_err(err)?;
        f.sync_data().map_err(err)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_appended_never_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        std::fs::write(&p, "{\"earlier\":true}\n").unwrap();
        let log = AuditLog::open(&p).unwrap();
        let mut e = Event::now("call", "refused");
        e.status = Some(403);
        e.error = Some("forged_sender");
        e.instance = Some("a".into());
        e.claimed_sender = Some("b".into());
        log.write(&e).unwrap();
        drop(log);
        let log = AuditLog::open(&p).unwrap();
        log.write(&Event::now("connection_refused", "refused"))
            .unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], "{\"earlier\":true}");
        let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(v["claimedSender"], "b");
        assert_eq!(v["status"], 403);
        assert!(v.get("delegationId").is_none());
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        let fresh = dir.path().join("new.jsonl");
        AuditLog::open(&fresh).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&fresh).unwrap().permissions(),
        );
        assert_eq!(mode & 0o007, 0, "no access for others: {mode:o}");
    }
}
