//! `credproxy openbao provision`: prepares an OpenBao server for the proxy, idempotently.
//!
//! Every step reads the current state first and writes only when it differs, so a second run
//! reports no changes. That makes it safe to run on every boot of a dev VM or from a
//! bootstrap unit.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use credproxy_core::Secret;
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};

use crate::http::{Answer, BaoHttp};
use crate::kv::{validate_kv_path, wipe};

/// Everything `provision` needs. `Debug` omits the admin token and seed values.
#[derive(Clone)]
pub struct ProvisionOptions {
    pub address: String,
    pub ca_file: Option<PathBuf>,
    /// A token allowed to manage mounts, policies and AppRole (the root token in dev).
    pub admin_token: String,
    pub kv_mount: String,
    /// KV paths under the mount that the configured credentials use.
    pub paths: Vec<String>,
    /// Usually "credproxy-read".
    pub policy_name: String,
    /// Usually "approle".
    pub approle_mount: String,
    /// Usually "credproxy".
    pub role_name: String,
    pub token_ttl: Duration,
    pub token_max_ttl: Duration,
    /// Where `role_id` and `secret_id` are written (mode 0400).
    pub out_dir: PathBuf,
    /// Dev only: values to store, path → field → value.
    pub seed: Option<BTreeMap<String, BTreeMap<String, String>>>,
}

impl std::fmt::Debug for ProvisionOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seed_fields = self.seed.as_ref().map(|seed| {
            seed.iter()
                .map(|(path, fields)| (path, fields.keys().collect::<Vec<_>>()))
                .collect::<BTreeMap<_, _>>()
        });
        f.debug_struct("ProvisionOptions")
            .field("address", &self.address)
            .field("ca_file", &self.ca_file)
            .field("admin_token", &"<redacted>")
            .field("kv_mount", &self.kv_mount)
            .field("paths", &self.paths)
            .field("policy_name", &self.policy_name)
            .field("approle_mount", &self.approle_mount)
            .field("role_name", &self.role_name)
            .field("token_ttl", &self.token_ttl)
            .field("token_max_ttl", &self.token_max_ttl)
            .field("out_dir", &self.out_dir)
            .field("seed_fields", &seed_fields)
            .finish()
    }
}

/// What a run changed, one human-readable line per change; empty when nothing changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProvisionReport {
    pub changes: Vec<String>,
}

impl ProvisionReport {
    pub fn is_unchanged(&self) -> bool {
        self.changes.is_empty()
    }
}

/// Why provisioning stopped. Steps before the failing one have been applied; re-running
/// after fixing the cause continues where it stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    #[error("invalid provisioning options: {0}")]
    Options(String),
    #[error("{step}: cannot reach openbao: {detail}")]
    Unreachable { step: String, detail: String },
    #[error("{step}: openbao answered {detail}")]
    Refused { step: String, detail: String },
    #[error("{step}: unexpected answer from openbao: {detail}")]
    Unexpected { step: String, detail: String },
    #[error("mount {mount}/ exists but is {found}, not kv version 2")]
    WrongMount { mount: String, found: String },
    #[error("auth mount {mount}/ exists but is {found}, not approle")]
    WrongAuthMount { mount: String, found: String },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The exact HCL policy for `paths`: `read` on `<kv_mount>/data/<path>` for each, nothing
/// else (no list, no metadata, no globs), sorted and de-duplicated so the text is stable and
/// a re-run can compare it byte for byte. Paths must pass [`crate::validate_kv_path`];
/// `provision` checks that before calling this.
pub fn policy_hcl(kv_mount: &str, paths: &[String]) -> String {
    let mount = kv_mount.trim_matches('/');
    let unique: BTreeSet<&str> = paths.iter().map(String::as_str).collect();
    let mut hcl = String::from(
        "# Managed by credproxy: read-only access to the credential paths, nothing else.\n",
    );
    for path in unique {
        hcl.push_str(&format!(
            "\npath \"{mount}/data/{path}\" {{\n  capabilities = [\"read\"]\n}}\n"
        ));
    }
    hcl
}

/// Provisions `opts` and reports what changed. See the module docs for idempotence.
pub async fn provision(opts: &ProvisionOptions) -> Result<ProvisionReport, ProvisionError> {
    let checked = check_options(opts)?;
    let http = BaoHttp::new(
        &opts.address,
        opts.ca_file.as_deref(),
        None,
        Duration::from_secs(10),
    )
    .map_err(ProvisionError::Options)?;
    let admin = Admin {
        http,
        token: Secret::new(opts.admin_token.trim().as_bytes()),
    };
    let mut report = ProvisionReport::default();

    ensure_kv_mount(&admin, &checked.kv_mount, &mut report).await?;
    ensure_policy(&admin, opts, &checked, &mut report).await?;
    ensure_approle_mount(&admin, &checked.approle_mount, &mut report).await?;
    ensure_role(&admin, opts, &checked, &mut report).await?;
    ensure_id_files(&admin, opts, &checked, &mut report).await?;
    if let Some(seed) = &opts.seed {
        ensure_seed(&admin, &checked.kv_mount, seed, &mut report).await?;
    }

    for change in &report.changes {
        tracing::info!(change = %change, "openbao provisioning");
    }
    Ok(report)
}

struct Checked {
    kv_mount: String,
    approle_mount: String,
}

fn check_options(opts: &ProvisionOptions) -> Result<Checked, ProvisionError> {
    let bad = |m: String| Err(ProvisionError::Options(m));
    let kv_mount = opts.kv_mount.trim_matches('/').to_string();
    let approle_mount = opts.approle_mount.trim_matches('/').to_string();
    for (what, value) in [("kv_mount", &kv_mount), ("approle_mount", &approle_mount)] {
        if let Err(e) = validate_kv_path(value) {
            return bad(format!("{what} {value:?}: {}", e.reason));
        }
    }
    for (what, value) in [
        ("policy_name", &opts.policy_name),
        ("role_name", &opts.role_name),
    ] {
        if value.is_empty()
            || !value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return bad(format!(
                "{what} {value:?}: use ASCII letters, digits, '-', '_' and '.'"
            ));
        }
    }
    if opts.paths.is_empty() {
        return bad("no credential paths: the policy would grant nothing".to_string());
    }
    for path in &opts.paths {
        if let Err(e) = validate_kv_path(path) {
            return bad(format!("credential path {path:?}: {}", e.reason));
        }
    }
    if let Some(seed) = &opts.seed {
        for path in seed.keys() {
            if let Err(e) = validate_kv_path(path) {
                return bad(format!("seed path {path:?}: {}", e.reason));
            }
        }
    }
    if opts.token_ttl.is_zero() || opts.token_max_ttl < opts.token_ttl {
        return bad("token_ttl must be positive and at most token_max_ttl".to_string());
    }
    if opts.admin_token.trim().is_empty() {
        return bad("the admin token is empty".to_string());
    }
    Ok(Checked {
        kv_mount,
        approle_mount,
    })
}

struct Admin {
    http: BaoHttp,
    token: Secret,
}

impl Admin {
    async fn call(
        &self,
        step: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, ProvisionError> {
        self.http
            .call(method, path, Some(&self.token), body)
            .await
            .map_err(|e| ProvisionError::Unreachable {
                step: step.to_string(),
                detail: e.0,
            })
    }

    /// Like `call`, but any status outside 2xx is an error.
    async fn ok(
        &self,
        step: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ProvisionError> {
        let answer = self.call(step, method, path, body).await?;
        if answer.status.is_success() {
            Ok(answer.body)
        } else {
            Err(refused(step, &answer))
        }
    }
}

fn refused(step: &str, answer: &Answer) -> ProvisionError {
    ProvisionError::Refused {
        step: step.to_string(),
        detail: answer.errors(),
    }
}

fn unexpected(step: &str, detail: &str) -> ProvisionError {
    ProvisionError::Unexpected {
        step: step.to_string(),
        detail: detail.to_string(),
    }
}

/// Mount tables answer with the entries at the top level and again under `data`.
fn table_entry<'a>(body: &'a Value, key: &str) -> Option<&'a Value> {
    body.get("data")
        .and_then(|d| d.get(key))
        .or_else(|| body.get(key))
}

async fn ensure_kv_mount(
    admin: &Admin,
    mount: &str,
    report: &mut ProvisionReport,
) -> Result<(), ProvisionError> {
    let step = "reading secrets engines";
    let mounts = admin.ok(step, Method::GET, "sys/mounts", None).await?;
    if let Some(entry) = table_entry(&mounts, &format!("{mount}/")) {
        let kind = entry.get("type").and_then(Value::as_str).unwrap_or("?");
        let version = entry
            .pointer("/options/version")
            .and_then(Value::as_str)
            .unwrap_or("1");
        if kind == "kv" && version == "2" {
            return Ok(());
        }
        return Err(ProvisionError::WrongMount {
            mount: mount.to_string(),
            found: format!("{kind} (version {version})"),
        });
    }
    admin
        .ok(
            &format!("enabling kv-v2 at {mount}/"),
            Method::POST,
            &format!("sys/mounts/{mount}"),
            Some(&json!({"type": "kv", "options": {"version": "2"}})),
        )
        .await?;
    report
        .changes
        .push(format!("enabled kv-v2 secrets engine at {mount}/"));
    Ok(())
}

async fn ensure_policy(
    admin: &Admin,
    opts: &ProvisionOptions,
    checked: &Checked,
    report: &mut ProvisionReport,
) -> Result<(), ProvisionError> {
    let name = &opts.policy_name;
    let wanted = policy_hcl(&checked.kv_mount, &opts.paths);
    let step = format!("reading policy {name}");
    let path = format!("sys/policies/acl/{name}");
    let answer = admin.call(&step, Method::GET, &path, None).await?;
    let existed = match answer.status {
        StatusCode::OK => {
            if answer.body.pointer("/data/policy").and_then(Value::as_str) == Some(&wanted) {
                return Ok(());
            }
            true
        }
        StatusCode::NOT_FOUND => false,
        _ => return Err(refused(&step, &answer)),
    };
    admin
        .ok(
            &format!("writing policy {name}"),
            Method::PUT,
            &path,
            Some(&json!({ "policy": wanted })),
        )
        .await?;
    report.changes.push(if existed {
        format!(
            "updated policy {name} (now {} paths)",
            count_unique(&opts.paths)
        )
    } else {
        format!("wrote policy {name} ({} paths)", count_unique(&opts.paths))
    });
    Ok(())
}

fn count_unique(paths: &[String]) -> usize {
    paths.iter().collect::<BTreeSet<_>>().len()
}

async fn ensure_approle_mount(
    admin: &Admin,
    mount: &str,
    report: &mut ProvisionReport,
) -> Result<(), ProvisionError> {
    let auths = admin
        .ok("reading auth methods", Method::GET, "sys/auth", None)
        .await?;
    if let Some(entry) = table_entry(&auths, &format!("{mount}/")) {
        let kind = entry.get("type").and_then(Value::as_str).unwrap_or("?");
        if kind == "approle" {
            return Ok(());
        }
        return Err(ProvisionError::WrongAuthMount {
            mount: mount.to_string(),
            found: kind.to_string(),
        });
    }
    admin
        .ok(
            &format!("enabling approle at {mount}/"),
            Method::POST,
            &format!("sys/auth/{mount}"),
            Some(&json!({"type": "approle"})),
        )
        .await?;
    report
        .changes
        .push(format!("enabled approle auth at {mount}/"));
    Ok(())
}

async fn ensure_role(
    admin: &Admin,
    opts: &ProvisionOptions,
    checked: &Checked,
    report: &mut ProvisionReport,
) -> Result<(), ProvisionError> {
    let role = &opts.role_name;
    let path = format!("auth/{}/role/{role}", checked.approle_mount);
    let step = format!("reading approle role {role}");
    let ttl = opts.token_ttl.as_secs();
    let max_ttl = opts.token_max_ttl.as_secs();
    let answer = admin.call(&step, Method::GET, &path, None).await?;
    let existed = match answer.status {
        StatusCode::OK => {
            let d = answer.body.get("data").cloned().unwrap_or(Value::Null);
            let policies: BTreeSet<&str> = d
                .get("token_policies")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let same = policies == BTreeSet::from([opts.policy_name.as_str()])
                && d.get("token_ttl").and_then(Value::as_u64) == Some(ttl)
                && d.get("token_max_ttl").and_then(Value::as_u64) == Some(max_ttl)
                && d.get("bind_secret_id").and_then(Value::as_bool) == Some(true)
                && d.get("token_no_default_policy").and_then(Value::as_bool) != Some(true);
            if same {
                return Ok(());
            }
            true
        }
        StatusCode::NOT_FOUND => false,
        _ => return Err(refused(&step, &answer)),
    };
    // The default policy stays attached: it is what allows the token to look itself up and
    // renew itself.
    admin
        .ok(
            &format!("writing approle role {role}"),
            Method::POST,
            &path,
            Some(&json!({
                "token_policies": [opts.policy_name],
                "token_ttl": ttl,
                "token_max_ttl": max_ttl,
                "bind_secret_id": true,
                "token_no_default_policy": false,
            })),
        )
        .await?;
    report.changes.push(format!(
        "{} approle role {role} (policy {}, token ttl {ttl}s, max ttl {max_ttl}s)",
        if existed { "updated" } else { "created" },
        opts.policy_name
    ));
    Ok(())
}

async fn ensure_id_files(
    admin: &Admin,
    opts: &ProvisionOptions,
    checked: &Checked,
    report: &mut ProvisionReport,
) -> Result<(), ProvisionError> {
    let role = &opts.role_name;
    let role_path = format!("auth/{}/role/{role}", checked.approle_mount);
    ensure_out_dir(&opts.out_dir)?;

    let step = format!("reading role_id of {role}");
    let body = admin
        .ok(&step, Method::GET, &format!("{role_path}/role-id"), None)
        .await?;
    let role_id = body
        .pointer("/data/role_id")
        .and_then(Value::as_str)
        .ok_or_else(|| unexpected(&step, "no data.role_id"))?;
    let role_id_file = opts.out_dir.join("role_id");
    let current = read_optional(&role_id_file)?;
    if current.as_ref().map(|c| c.expose().trim_ascii()) != Some(role_id.as_bytes()) {
        write_0400(&role_id_file, role_id.as_bytes())?;
        report
            .changes
            .push(format!("wrote role_id to {}", role_id_file.display()));
    }

    let secret_id_file = opts.out_dir.join("secret_id");
    let why_new = match read_optional(&secret_id_file)? {
        None => Some(format!("{} was missing", secret_id_file.display())),
        Some(existing) => {
            // A dev server restarted in memory, or a role recreated by hand, leaves a
            // secret_id file that can no longer log in; keeping it would make the proxy fail
            // at its next login, so check it and replace it only when OpenBao rejects it.
            let step = format!("checking the secret_id in {}", secret_id_file.display());
            let mut body = json!({
                "secret_id": String::from_utf8_lossy(existing.expose().trim_ascii())
            });
            let answer = admin
                .call(
                    &step,
                    Method::POST,
                    &format!("{role_path}/secret-id/lookup"),
                    Some(&body),
                )
                .await;
            wipe(&mut body);
            let answer = answer?;
            let valid = answer.status == StatusCode::OK
                && answer.body.get("data").is_some_and(Value::is_object);
            if valid {
                None
            } else if answer.status.is_success()
                || answer.status == StatusCode::NOT_FOUND
                || answer.status == StatusCode::BAD_REQUEST
            {
                Some(format!(
                    "the one in {} is not valid for role {role}",
                    secret_id_file.display()
                ))
            } else {
                return Err(refused(&step, &answer));
            }
        }
    };
    if let Some(why_new) = why_new {
        let step = format!("generating a secret_id for {role}");
        let mut body = admin
            .ok(&step, Method::POST, &format!("{role_path}/secret-id"), None)
            .await?;
        let written = match body.pointer("/data/secret_id").and_then(Value::as_str) {
            Some(secret_id) => write_0400(&secret_id_file, secret_id.as_bytes()),
            None => {
                wipe(&mut body);
                return Err(unexpected(&step, "no data.secret_id"));
            }
        };
        wipe(&mut body);
        written?;
        report.changes.push(format!(
            "generated a new secret_id in {} ({why_new})",
            secret_id_file.display()
        ));
    }
    Ok(())
}

async fn ensure_seed(
    admin: &Admin,
    mount: &str,
    seed: &BTreeMap<String, BTreeMap<String, String>>,
    report: &mut ProvisionReport,
) -> Result<(), ProvisionError> {
    for (path, fields) in seed {
        let step = format!("reading {mount}/{path}");
        let url = format!("{mount}/data/{path}");
        let mut answer = admin.call(&step, Method::GET, &url, None).await?;
        let mut current = match answer.status {
            StatusCode::OK => match answer.body.pointer_mut("/data/data") {
                Some(Value::Object(map)) => std::mem::take(map),
                _ => Map::new(),
            },
            StatusCode::NOT_FOUND => Map::new(),
            _ => {
                let e = refused(&step, &answer);
                wipe(&mut answer.body);
                return Err(e);
            }
        };
        wipe(&mut answer.body);
        let differing: Vec<&str> = fields
            .iter()
            .filter(|(k, v)| current.get(k.as_str()).and_then(Value::as_str) != Some(v.as_str()))
            .map(|(k, _)| k.as_str())
            .collect();
        if differing.is_empty() {
            let mut doc = Value::Object(current);
            wipe(&mut doc);
            continue;
        }
        // KV v2 writes replace the whole secret: keep the fields the seed does not mention.
        for (k, v) in fields {
            current.insert(k.clone(), Value::String(v.clone()));
        }
        let mut body = json!({ "data": Value::Object(current) });
        let result = admin
            .ok(
                &format!("writing {mount}/{path}"),
                Method::POST,
                &url,
                Some(&body),
            )
            .await;
        wipe(&mut body);
        result?;
        report.changes.push(format!(
            "seeded {mount}/{path} (fields {})",
            differing.join(", ")
        ));
    }
    Ok(())
}

fn ensure_out_dir(dir: &Path) -> Result<(), ProvisionError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|source| ProvisionError::Io {
        what: "cannot create output directory",
        path: dir.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|source| {
        ProvisionError::Io {
            what: "cannot restrict output directory",
            path: dir.to_path_buf(),
            source,
        }
    })
}

fn read_optional(path: &Path) -> Result<Option<Secret>, ProvisionError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(Secret::new(bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ProvisionError::Io {
            what: "cannot read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `bytes` to `path` with mode 0400, atomically: a temporary file created with that
/// mode (never briefly world-readable) is renamed over the old file, which being read-only
/// could not be rewritten in place anyway.
fn write_0400(path: &Path, bytes: &[u8]) -> Result<(), ProvisionError> {
    let io = |what, source| ProvisionError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&tmp)
        .map_err(|e| io("cannot create", e))?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all());
    drop(file);
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("cannot write", e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_is_sorted_deduplicated_and_read_only() {
        let hcl = policy_hcl(
            "secret/",
            &["b/y".to_string(), "a/x".to_string(), "b/y".to_string()],
        );
        assert_eq!(
            hcl,
            "# Managed by credproxy: read-only access to the credential paths, nothing else.\n\
             \n\
             path \"secret/data/a/x\" {\n  capabilities = [\"read\"]\n}\n\
             \n\
             path \"secret/data/b/y\" {\n  capabilities = [\"read\"]\n}\n"
        );
    }

    #[test]
    fn options_refuse_globs_and_empty_paths() {
        let mut opts = ProvisionOptions {
            address: "http://127.0.0.1:1".into(),
            ca_file: None,
            admin_token: "t".into(),
            kv_mount: "secret".into(),
            paths: vec!["openclaw/*".into()],
            policy_name: "credproxy-read".into(),
            approle_mount: "approle".into(),
            role_name: "credproxy".into(),
            token_ttl: Duration::from_secs(60),
            token_max_ttl: Duration::from_secs(600),
            out_dir: PathBuf::from("/nonexistent"),
            seed: None,
        };
        assert!(matches!(
            check_options(&opts),
            Err(ProvisionError::Options(m)) if m.contains("openclaw/*")
        ));
        opts.paths.clear();
        assert!(check_options(&opts).is_err());
        opts.paths.push("openclaw/ok".into());
        assert!(check_options(&opts).is_ok());
    }
}
