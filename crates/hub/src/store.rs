//! The hub's state on disk: delegations per addressee (pending until acknowledged) and the
//! shared context, one JSON file per entry.
//!
//! ```text
//! <state>/delegations/<instance>/pending/<id>.json
//! <state>/delegations/<instance>/acked/<id>.json
//! <state>/context/<sha256 of the key>.json   (keys may be 255 characters; names may not)
//! ```
//!
//! Every write is staged (a temporary file, synced) and committed by a rename after the
//! call's audit line is on disk, so nothing is stored that the audit log does not show.
//! Path components are only validated instance names, keys and canonical UUIDs.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A delegation as stored and as delivered to its addressee.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Delegation {
    pub id: String,
    /// The verified sender.
    pub from: String,
    pub to: String,
    pub task: serde_json::Value,
    /// Every instance the task passed through, the sender last.
    pub chain: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// RFC 3339 UTC.
    pub timestamp: String,
}

/// A shared context entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContextEntry {
    pub key: String,
    pub value: serde_json::Value,
    /// The verified instance that wrote it.
    pub updated_by: String,
    pub updated_at: String,
}

/// A write that is on disk but not yet visible; [`Staged::commit`] makes it so.
#[derive(Debug)]
pub struct Staged {
    from: PathBuf,
    to: PathBuf,
    /// `from` is a temporary file to delete on abort (not a file being moved).
    temporary: bool,
}

impl Staged {
    pub fn commit(self) -> io::Result<()> {
        fs::rename(&self.from, &self.to)?;
        sync_dir(&self.to)
    }

    pub fn abort(self) {
        if self.temporary {
            let _ = fs::remove_file(&self.from);
        }
    }
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Use `root`, creating its layout (mode 0750) for `instances`.
    pub fn open(root: &Path, instances: &[String]) -> io::Result<Store> {
        let s = Store {
            root: root.to_path_buf(),
        };
        mkdir(&s.root.join("context"))?;
        for i in instances {
            mkdir(&s.pending_dir(i))?;
            mkdir(&s.acked_dir(i))?;
        }
        Ok(s)
    }

    fn pending_dir(&self, instance: &str) -> PathBuf {
        self.root.join("delegations").join(instance).join("pending")
    }

    fn acked_dir(&self, instance: &str) -> PathBuf {
        self.root.join("delegations").join(instance).join("acked")
    }

    fn context_file(key: &str) -> String {
        use sha2::Digest;
        format!("{}.json", hex::encode(sha2::Sha256::digest(key.as_bytes())))
    }

    fn context_path(&self, key: &str) -> PathBuf {
        self.root.join("context").join(Store::context_file(key))
    }

    /// Write `d` to a temporary file in its addressee's pending directory.
    pub fn stage_delegation(&self, d: &Delegation) -> io::Result<Staged> {
        let dir = self.pending_dir(&d.to);
        stage_json(&dir, &format!("{}.json", d.id), d)
    }

    /// Pending delegations for `instance`, oldest first (ids are time-ordered UUIDv7).
    pub fn pending(&self, instance: &str) -> io::Result<Vec<Delegation>> {
        let mut out: Vec<Delegation> = read_all(&self.pending_dir(instance))?;
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    pub fn pending_count(&self, instance: &str) -> io::Result<usize> {
        Ok(json_files(&self.pending_dir(instance))?.len())
    }

    /// A delegation addressed to `instance`, and whether it was acknowledged.
    pub fn find(&self, instance: &str, id: &str) -> io::Result<Option<(Delegation, bool)>> {
        for (dir, acked) in [
            (self.pending_dir(instance), false),
            (self.acked_dir(instance), true),
        ] {
            match fs::read(dir.join(format!("{id}.json"))) {
                Ok(bytes) => {
                    let d = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
                    return Ok(Some((d, acked)));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Move a pending delegation to `acked` (on commit).
    pub fn stage_ack(&self, instance: &str, id: &str) -> Staged {
        Staged {
            from: self.pending_dir(instance).join(format!("{id}.json")),
            to: self.acked_dir(instance).join(format!("{id}.json")),
            temporary: false,
        }
    }

    pub fn stage_context(&self, e: &ContextEntry) -> io::Result<Staged> {
        stage_json(&self.root.join("context"), &Store::context_file(&e.key), e)
    }

    pub fn context(&self, key: &str) -> io::Result<Option<ContextEntry>> {
        match fs::read(self.context_path(key)) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).map_err(io::Error::other)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn context_keys(&self) -> io::Result<Vec<String>> {
        let entries: Vec<ContextEntry> = read_all(&self.root.join("context"))?;
        let mut keys: Vec<String> = entries.into_iter().map(|e| e.key).collect();
        keys.sort();
        Ok(keys)
    }

    pub fn context_count(&self) -> io::Result<usize> {
        Ok(json_files(&self.root.join("context"))?.len())
    }
}

fn mkdir(p: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o750).create(p)
}

fn sync_dir(file: &Path) -> io::Result<()> {
    match file.parent() {
        Some(dir) => fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

fn stage_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<Staged> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(&tmp)?;
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    Ok(Staged {
        from: tmp,
        to: dir.join(name),
        temporary: true,
    })
}

/// The committed `*.json` files of a directory (temporary files start with a dot).
fn json_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.starts_with('.') && name.ends_with(".json") {
            out.push(p);
        }
    }
    Ok(out)
}

fn read_all<T: for<'de> Deserialize<'de>>(dir: &Path) -> io::Result<Vec<T>> {
    json_files(dir)?
        .into_iter()
        .map(|p| serde_json::from_slice(&fs::read(p)?).map_err(io::Error::other))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: &str, to: &str) -> Delegation {
        Delegation {
            id: id.into(),
            from: "a".into(),
            to: to.into(),
            task: serde_json::json!({"do": "x"}),
            chain: vec!["a".into()],
            parent_id: None,
            timestamp: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn staged_writes_are_invisible_until_committed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), &["a".into(), "b".into()]).unwrap();
        let staged = s.stage_delegation(&d("01", "b")).unwrap();
        assert!(s.pending("b").unwrap().is_empty());
        staged.commit().unwrap();
        s.stage_delegation(&d("00", "b")).unwrap().abort();
        s.stage_delegation(&d("02", "b")).unwrap().commit().unwrap();
        let ids: Vec<_> = s.pending("b").unwrap().into_iter().map(|x| x.id).collect();
        assert_eq!(ids, vec!["01", "02"]);
        assert!(!s.find("b", "01").unwrap().unwrap().1, "pending");
        s.stage_ack("b", "01").commit().unwrap();
        assert!(s.find("b", "01").unwrap().unwrap().1, "acknowledged");
        assert_eq!(s.pending_count("b").unwrap(), 1);
        assert!(s.find("a", "02").unwrap().is_none(), "not addressed to a");
        let e = ContextEntry {
            key: "plan".into(),
            value: serde_json::json!([1, 2]),
            updated_by: "a".into(),
            updated_at: "t".into(),
        };
        s.stage_context(&e).unwrap().commit().unwrap();
        assert_eq!(s.context("plan").unwrap(), Some(e));
        assert_eq!(s.context_keys().unwrap(), vec!["plan".to_string()]);
        assert!(s.context("other").unwrap().is_none());
    }
}
