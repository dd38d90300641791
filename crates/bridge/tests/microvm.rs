//! The microVM deployment end to end, as a user runs it: a Debian kernel and a busybox
//! initramfs (built here) boot under QEMU with no network device, only a
//! `vhost-user-vsock-pci` device served by `vhost-device-vsock`. In the guest, the static
//! `credproxy-bridge` turns `tcp:127.0.0.1:18790` into `vsock:2:18790` and adds the agent's
//! token; a tiny static client (`src/bin/microvm-client.rs`) uses it as `HTTPS_PROXY` with a
//! credential placeholder. On the host, the proxy listens on a `vsock_uds` listener bound to
//! agent `vm-a` and forwards to a local TLS upstream pinned as `api.anthropic.com`.
//!
//! Asserted: the upstream received the real secret; the guest got only the placeholder back
//! from the echo; the request was attributed to `vm-a` on that VM's listener (the policy
//! allows nothing else and says what it saw otherwise); the guest has no interface but `lo`
//! and a direct TCP connection fails. The other direction too: the host reaches a guest port
//! (the gateway's, served in the guest by busybox `httpd` behind `credproxy-bridge
//! vsock:any:P tcp:127.0.0.1:P`) with `credproxy bridge tcp:… vsock_uds:<uds>:P`, the
//! hybrid-vsock `CONNECT P` handshake against vhost-device-vsock.
//!
//! Tools: `qemu-system-x86_64` (apt `qemu-system-x86`), `busybox` (apt `busybox-static`),
//! `vhost-device-vsock` (`cargo install vhost-device-vsock --locked --root .cache/tools`),
//! `apt-get`/`dpkg-deb` for the kernel. Everything downloaded or built is cached under
//! `<workspace>/.cache/microvm/` (override with `CREDPROXY_MICROVM_CACHE`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use credproxy_config::Config;
use credproxy_identity::DevIssuer;
use credproxy_proxy::{Proxy, ProxyOptions};
use credproxy_testkit::{TestPki, Upstream, UpstreamOptions, Validity};

const HOST: &str = "api.anthropic.com";
const PORT: u32 = 18790;
/// The guest port the host reaches through the hypervisor's socket (the gateway's).
const GATEWAY: u32 = 18789;
const AGENT: &str = "vm-a";
const ROLE: &str = "proxy-user";
const PLACEHOLDER: &str = "agent-vault-00000000-0000-0000-0000-0000000000a1";
const SECRET: &str = "sk-ant-CANARY-microvm-5d1c0e9b7a3f";
/// The slirp gateway address a user-mode NIC would have; with no NIC it is unreachable.
const DIRECT: &str = "10.0.2.2:443";
/// Boot, run the client and power off. A boot takes ~10 s under TCG; the rest is slack for
/// a loaded 2-core machine.
const VM_TIMEOUT: Duration = Duration::from_secs(90);
/// Debian builds virtio and vsock as modules; this is their load order.
const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn cache_dir() -> PathBuf {
    let dir = std::env::var_os("CREDPROXY_MICROVM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".cache/microvm"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A tool from `<workspace>/.cache/tools/bin` or PATH, or a panic saying how to install it.
fn tool(name: &str, install: &str) -> PathBuf {
    let cached = workspace().join(".cache/tools/bin").join(name);
    if cached.is_file() {
        return cached;
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "the microVM test needs `{name}`, which is neither in {} nor on PATH; install it with: {install} \
         (scripts/test does this)",
        workspace().join(".cache/tools/bin").display()
    );
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}): {cmd:?}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Debian kernel, extracted (not installed) from the `linux-image-amd64` dependency.
/// Returns the kernel image and the modules directory.
fn kernel(cache: &Path) -> (PathBuf, PathBuf) {
    let root = cache.join("kernel");
    let find = |root: &Path| -> Option<(PathBuf, PathBuf)> {
        let boot = std::fs::read_dir(root.join("boot")).ok()?;
        let vmlinuz = boot.filter_map(|e| e.ok().map(|e| e.path())).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })?;
        let version = vmlinuz
            .file_name()?
            .to_str()?
            .strip_prefix("vmlinuz-")?
            .to_string();
        let modules = root.join("lib/modules").join(version);
        modules.is_dir().then_some((vmlinuz, modules))
    };
    if let Some(found) = find(&root) {
        return found;
    }
    let deb = std::fs::read_dir(cache)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-image-") && n.ends_with(".deb"))
        });
    let deb = match deb {
        Some(d) => d,
        None => {
            let hint = "apt-get update && (cd .cache/microvm && apt-get download \
                        $(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: //p' | head -1))";
            let apt_cache = tool("apt-cache", hint);
            let deps = run(
                Command::new(apt_cache).args(["depends", "linux-image-amd64"]),
                "apt-cache depends linux-image-amd64",
            );
            let pkg = deps
                .lines()
                .find_map(|l| l.trim().strip_prefix("Depends: "))
                .unwrap_or_else(|| panic!("no dependency in `apt-cache depends linux-image-amd64` (run apt-get update): {deps}"))
                .trim()
                .to_string();
            run(
                Command::new(tool("apt-get", hint))
                    .args(["download", &pkg])
                    .current_dir(cache),
                "apt-get download (the kernel package)",
            );
            return kernel(cache);
        }
    };
    let tmp = cache.join("kernel.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    run(
        Command::new(tool("dpkg-deb", "apt-get install dpkg"))
            .arg("-x")
            .arg(&deb)
            .arg(&tmp),
        "dpkg-deb -x (the kernel package)",
    );
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&tmp, &root).unwrap();
    find(&root).unwrap_or_else(|| panic!("no vmlinuz and modules in {}", deb.display()))
}

/// The static guest binaries, built once per source change into the cache's own target
/// directory (the outer `cargo test` holds its own).
fn static_binaries(cache: &Path) -> (PathBuf, PathBuf) {
    let target_dir = cache.join("target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = Instant::now();
    let out = Command::new(cargo)
        .current_dir(workspace())
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "x86_64-unknown-linux-gnu",
            "-p",
            "credproxy-bridge",
            "--features",
            "microvm-client",
            "--bins",
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env("CARGO_TARGET_DIR", &target_dir)
        // Thin LTO adds minutes on a small machine and nothing a test needs.
        .env("CARGO_PROFILE_RELEASE_LTO", "false")
        .output()
        .expect("running cargo to build the static guest binaries");
    assert!(
        out.status.success(),
        "building the static guest binaries failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "microvm: static guest binaries ready in {:?}",
        started.elapsed()
    );
    let dir = target_dir.join("x86_64-unknown-linux-gnu/release");
    let (bridge, client) = (dir.join("credproxy-bridge"), dir.join("microvm-client"));
    for b in [&bridge, &client] {
        assert!(is_static(b), "{} is not a static binary", b.display());
    }
    (bridge, client)
}

/// An ELF executable without a program interpreter (`PT_INTERP`) runs without a dynamic
/// loader, as the guest has none.
fn is_static(path: &Path) -> bool {
    let data = std::fs::read(path).unwrap();
    assert!(
        data.starts_with(b"\x7fELF\x02"),
        "{} is not a 64-bit ELF file",
        path.display()
    );
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).all(|i| {
        let o = phoff + i * size;
        u32::from_le_bytes(data[o..o + 4].try_into().unwrap()) != 3
    })
}

fn find_module(dir: &Path, file: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let p = entry.ok()?.path();
        if p.is_dir() {
            if let Some(found) = find_module(&p, file) {
                return Some(found);
            }
        } else if p.file_name().and_then(|n| n.to_str()) == Some(file) {
            return Some(p);
        }
    }
    None
}

struct Guest<'a> {
    bridge: &'a Path,
    client: &'a Path,
    modules: &'a Path,
    proxy_ca: &'a Path,
    token: &'a str,
}

/// Build the initramfs (an uncompressed newc cpio, which the kernel takes as is).
fn initramfs(dir: &Path, g: &Guest<'_>) -> PathBuf {
    let root = dir.join("root");
    for d in ["bin", "dev", "proc", "sys", "etc", "tmp", "lib/modules"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let busybox = tool("busybox", "apt-get install busybox-static");
    assert!(
        is_static(&busybox),
        "{} is not static: install the busybox-static package",
        busybox.display()
    );
    std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "mount", "insmod", "ip", "poweroff", "cat", "ls", "sleep", "echo", "httpd", "touch",
        "mkdir",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::copy(g.bridge, root.join("bin/credproxy-bridge")).unwrap();
    std::fs::copy(g.client, root.join("bin/microvm-client")).unwrap();
    std::fs::copy(g.proxy_ca, root.join("etc/proxy-ca.pem")).unwrap();
    std::fs::write(root.join("etc/agent-token"), g.token).unwrap();
    // The "gateway": a CGI page that also tells init the host has been served.
    std::fs::create_dir_all(root.join("www/cgi-bin")).unwrap();
    let cgi = root.join("www/cgi-bin/gateway");
    std::fs::write(
        &cgi,
        "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho MICROVM_GATEWAY_OK\ntouch /tmp/gateway-served\n",
    )
    .unwrap();
    std::fs::set_permissions(&cgi, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let builtin = std::fs::read_to_string(g.modules.join("modules.builtin")).unwrap_or_default();
    let mut order = Vec::new();
    for m in MODULES {
        let file = format!("{m}.ko");
        match find_module(&g.modules.join("kernel"), &file) {
            Some(p) => {
                std::fs::copy(&p, root.join("lib/modules").join(&file)).unwrap();
                order.push(*m);
            }
            None => assert!(
                builtin.lines().any(|l| l.ends_with(&format!("/{file}"))),
                "module {m} is neither a module nor built into the kernel in {}",
                g.modules.display()
            ),
        }
    }
    let init = format!(
        r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo MICROVM_INIT_START
for m in {modules}; do insmod /lib/modules/$m.ko || echo "MICROVM_INSMOD_FAILED $m"; done
# The transport binds to the device asynchronously after insmod; wait for it (bounded).
i=0
while [ ! -e /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/virtio0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
ip link set lo up
httpd -p 127.0.0.1:{GATEWAY} -h /www
/bin/credproxy-bridge vsock:any:{GATEWAY} tcp:127.0.0.1:{GATEWAY} &
echo MICROVM_GATEWAY_STARTED
/bin/credproxy-bridge --token-file /etc/agent-token tcp:127.0.0.1:{PORT} vsock:2:{PORT} &
HTTPS_PROXY=http://127.0.0.1:{PORT} /bin/microvm-client /etc/proxy-ca.pem {HOST} {PLACEHOLDER} {DIRECT}
# Wait (bounded) for the host to fetch the gateway page.
i=0
while [ ! -e /tmp/gateway-served ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
[ -e /tmp/gateway-served ] && echo MICROVM_GATEWAY_SERVED
echo MICROVM_DONE
poweroff -f
"#,
        modules = order.join(" ")
    );
    let init_path = root.join("init");
    std::fs::write(&init_path, init).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init_path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cpio = dir.join("initramfs.cpio");
    let listing = run(
        Command::new("find").arg(".").current_dir(&root),
        "listing the initramfs tree",
    );
    let mut child = Command::new(root.join("bin/busybox"))
        .args(["cpio", "-o", "-H", "newc"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&cpio).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(listing.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "busybox cpio failed");
    cpio
}

/// Child processes killed (and reaped) on drop.
#[derive(Default)]
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.0.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn wait_for_path(p: &Path, what: &str, procs: &mut Procs) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.exists() {
        for c in procs.0.iter_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!("{what}: a process exited early ({status})");
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} did not appear",
            p.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const POLICY: &str = r#"package credproxy.authz

default allow := false

# Attribution: only the agent bound to this VM's listener, arriving over vsock on it.
allow if {
	input.identity.agent_id == "vm-a"
	input.listener.name == "vm-a"
	input.listener.kind == "vsock"
	startswith(input.listener.peer, "vsock_uds:18790")
}

deny_reasons contains sprintf("attribution check failed: listener %v kind %v peer %v", [input.listener.name, input.listener.kind, input.listener.peer]) if not allow
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_microvm_reaches_the_upstream_only_through_credproxy() {
    let total = Instant::now();
    let qemu = tool("qemu-system-x86_64", "apt-get install qemu-system-x86");
    let vhost = tool(
        "vhost-device-vsock",
        "cargo install vhost-device-vsock --locked --root .cache/tools",
    );
    let cache = cache_dir();
    let (vmlinuz, modules) = kernel(&cache);
    let (bridge, client) = static_binaries(&cache);

    // Host side: upstream, proxy (vsock_uds listener bound to vm-a), dev identity.
    let pki = TestPki::new();
    let upstream = Upstream::start(UpstreamOptions::tls(pki.issue(&[HOST], Validity::Valid))).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = credproxy_tls::init_ca(&d.join("ca"), false).unwrap();
    let dev = DevIssuer::load_or_create(&d.join("dev")).unwrap();
    std::fs::write(d.join("jwks.json"), dev.jwks_json()).unwrap();
    std::fs::create_dir_all(d.join("policy")).unwrap();
    std::fs::write(d.join("policy/attribution.rego"), POLICY).unwrap();
    let uds = d.join("vm-a.vsock");
    let yaml = format!(
        r#"listeners:
  - name: vm-a
    vsock_uds: {{path: {uds}, port: {PORT}}}
    agent: {AGENT}
ca: {{cert_file: {cert}, key_file: {key}}}
allowed_domains: [{HOST}]
upstream:
  extra_ca_files: [{pki_ca}]
  resolve: {{{HOST}: "{up}"}}
identity:
  oidc: {{issuer: "{iss}", audiences: [{aud}], jwks_file: {jwks}}}
policy: {{dir: {policy}}}
credentials:
  - id: anthropic
    placeholder: {PLACEHOLDER}
    type: api_key
    header_name: x-api-key
    bound_domains: [{HOST}]
    allowed_roles: [{ROLE}]
    source: {{env: ANTHROPIC_API_KEY}}
audit: {{path: {audit}}}
limits:
  shutdown_grace: 1s
"#,
        uds = uds.display(),
        cert = ca.cert_file.display(),
        key = ca.key_file.display(),
        pki_ca = pki.ca_cert_path().display(),
        up = upstream.addr(),
        iss = credproxy_identity::DEV_ISSUER,
        aud = credproxy_identity::DEV_AUDIENCE,
        jwks = d.join("jwks.json").display(),
        policy = d.join("policy").display(),
        audit = d.join("audit.db").display(),
    );
    let config = Config::parse(&yaml, d).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let env = Env([("ANTHROPIC_API_KEY".to_string(), SECRET.to_string())].into());
    let _proxy = Proxy::bind(
        config,
        ProxyOptions {
            resolver: None,
            env: Some(std::sync::Arc::new(env)),
        },
    )
    .await
    .unwrap()
    .spawn();
    assert!(d.join(format!("vm-a.vsock_{PORT}")).exists());

    let token = dev
        .issue(AGENT, &[ROLE.to_string()], Duration::from_secs(3600))
        .unwrap();
    let cpio = initramfs(
        d,
        &Guest {
            bridge: &bridge,
            client: &client,
            modules: &modules,
            proxy_ca: &ca.cert_file,
            token: &token,
        },
    );

    // vhost-device-vsock, then QEMU.
    let mut procs = Procs::default();
    let control = d.join("vhost.sock");
    procs.0.push(
        Command::new(&vhost)
            .arg("--guest-cid")
            .arg("3")
            .arg("--socket")
            .arg(&control)
            .arg("--uds-path")
            .arg(&uds)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("vhost.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for_path(&control, "vhost-device-vsock", &mut procs).await;
    let console = d.join("console.log");
    let boot = Instant::now();
    procs.0.push(
        Command::new(&qemu)
            .args([
                "-accel",
                "tcg",
                "-M",
                "q35,memory-backend=mem",
                "-m",
                "256M",
                "-smp",
                "1",
            ])
            .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-nic",
                "none",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(&vmlinuz)
            .arg("-initrd")
            .arg(&cpio)
            .args([
                "-append",
                "console=ttyS0 rdinit=/init panic=-1 quiet loglevel=4",
            ])
            .arg("-chardev")
            .arg(format!("socket,id=c,path={}", control.display()))
            .args(["-device", "vhost-user-vsock-pci,chardev=c"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("qemu.log")).unwrap())
            .spawn()
            .unwrap(),
    );

    // Wait for the guest to finish (bounded; no fixed sleeps). Once its gateway is started,
    // the host fetches the page through the hypervisor's socket.
    let mut init_seen = None;
    let mut gateway = None;
    let text = loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if init_seen.is_none() && text.contains("MICROVM_INIT_START") {
            init_seen = Some(boot.elapsed());
        }
        if gateway.is_none() && text.contains("MICROVM_GATEWAY_STARTED") {
            gateway = Some(tokio::spawn(fetch_gateway(uds.clone())));
        }
        if text.contains("MICROVM_DONE") {
            break text;
        }
        let exited = procs.0[1].try_wait().unwrap();
        if boot.elapsed() > VM_TIMEOUT || exited.is_some() {
            panic!(
                "the guest did not finish within {VM_TIMEOUT:?} (qemu: {exited:?})\n--- console ---\n{text}\n--- qemu ---\n{}\n--- vhost-device-vsock ---\n{}",
                std::fs::read_to_string(d.join("qemu.log")).unwrap_or_default(),
                std::fs::read_to_string(d.join("vhost.log")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let run_time = boot.elapsed();
    eprintln!(
        "microvm: init after {:?}, guest done after {run_time:?}, total {:?}",
        init_seen.unwrap_or_default(),
        total.elapsed()
    );
    let context = || format!("--- console ---\n{text}");

    // Host → guest through vhost-device-vsock's socket: the handshake and the bytes after it.
    let page = gateway
        .unwrap_or_else(|| panic!("the guest never started its gateway\n{}", context()))
        .await
        .unwrap();
    let status = page.lines().next().unwrap_or_default();
    assert!(
        status.starts_with("HTTP/1.") && status.contains(" 200 "),
        "{page}\n{}",
        context()
    );
    assert!(page.contains("MICROVM_GATEWAY_OK"), "{page}");
    assert!(text.contains("MICROVM_GATEWAY_SERVED"), "{}", context());

    // The guest has no way out but vsock.
    assert!(!text.contains("MICROVM_INSMOD_FAILED"), "{}", context());
    assert!(
        text.contains("MICROVM_NET_IFACES lo\n") || text.contains("MICROVM_NET_IFACES lo\r\n"),
        "{}",
        context()
    );
    assert!(
        text.contains(&format!("MICROVM_DIRECT_CONNECT failed to {DIRECT}")),
        "{}",
        context()
    );

    // Through the bridge, the proxy and the upstream, and back.
    assert!(
        text.contains("MICROVM_CONNECT_STATUS HTTP/1.1 200"),
        "{}",
        context()
    );
    assert!(!text.contains("MICROVM_CLIENT_ERROR"), "{}", context());
    let response = text
        .split("MICROVM_RESPONSE_BEGIN")
        .nth(1)
        .and_then(|r| r.split("MICROVM_RESPONSE_END").next())
        .unwrap_or_else(|| panic!("no response in the console\n{}", context()));
    assert!(response.contains("HTTP/1.1 200"), "{}", context());
    assert!(
        response.contains(&format!("x-api-key: {PLACEHOLDER}")),
        "{}",
        context()
    );
    assert!(
        !text.contains(SECRET),
        "the secret reached the guest\n{}",
        context()
    );

    // The upstream got the real secret, exactly once.
    let received = upstream.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        received[0].header_all("x-api-key"),
        vec![SECRET.to_string()]
    );
    assert!(received[0].header("proxy-authorization").is_none());

    // Attribution: the audit record names the agent bound to this VM's listener and the
    // hybrid-vsock peer (the policy above also allowed nothing else).
    let records = credproxy_audit::query::list(
        &d.join("audit.db"),
        &credproxy_audit::query::Filter::default(),
    )
    .unwrap();
    let used: Vec<_> = records
        .iter()
        .filter(|r| !r.credentials.is_empty())
        .collect();
    assert_eq!(used.len(), 1, "{records:#?}");
    assert_eq!(used[0].agent_id.as_deref(), Some(AGENT), "{:#?}", used[0]);
    assert_eq!(used[0].listener, "vm-a", "{:#?}", used[0]);
    assert!(
        used[0].peer.starts_with(&format!("vsock_uds:{PORT}")),
        "{:#?}",
        used[0]
    );
    assert!(
        run_time < Duration::from_secs(45),
        "the guest took {run_time:?}; the budget is about 15 s per boot"
    );
}

/// GET the guest's gateway page through `credproxy bridge tcp:127.0.0.1:0
/// vsock_uds:<uds>:GATEWAY`. The guest's bridge may not listen yet when its init says the
/// gateway started, so a refused handshake is retried (bounded).
async fn fetch_gateway(uds: PathBuf) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let args = credproxy_bridge::BridgeArgs {
        from: "tcp:127.0.0.1:0".into(),
        to: format!("vsock_uds:{}:{GATEWAY}", uds.display()),
        max_connections: 4,
        buffer_size: 64 * 1024,
        shutdown_grace: Duration::from_secs(1),
        token_file: None,
        oidc_token_url: None,
        oidc_issuer: None,
        client_id: None,
        client_secret_file: None,
        audience: None,
        scope: None,
        oidc_ca_files: vec![],
        check: false,
        log: "info".into(),
    };
    let bridge =
        credproxy_bridge::Bridge::bind(credproxy_bridge::BridgeConfig::from_args(&args).unwrap())
            .await
            .unwrap();
    let credproxy_core::ListenAddr::Tcp(addr) = bridge.local_addr().clone() else {
        panic!()
    };
    let task = tokio::spawn(bridge.run(std::future::pending(), Duration::from_secs(1)));
    let deadline = Instant::now() + Duration::from_secs(30);
    let page = loop {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /cgi-bin/gateway HTTP/1.0\r\nHost: gateway\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        if !out.is_empty() {
            break String::from_utf8_lossy(&out).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the guest's gateway never answered through {}",
            uds.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    task.abort();
    page
}

/// `env:` secret sources read from this map, never from the process environment.
#[derive(Debug)]
struct Env(std::collections::HashMap<String, String>);

impl credproxy_secrets::EnvSource for Env {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}
