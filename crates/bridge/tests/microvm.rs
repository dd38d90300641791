//! The microVM deployment end to end, driven by the NixOS modules: what runs here is what
//! the evaluation of the test host (`nix/eval/test-host.nix`, through `nix/eval`'s
//! `testHost`) generates, with the paths this test owns (sockets, state, secrets) and the
//! addresses it picks (the OIDC provider, the upstream) as parameters:
//!
//! - credproxy's configuration and its policy directory (realised in a private Nix store)
//!   run in-process; this test plays systemd's part for `LoadCredential` (the evaluated sources
//!   copied to the evaluated credentials directory), tmpfiles (the evaluated directories)
//!   and `credproxy-ca-init` (a CA at the configured paths);
//! - VM `a`'s `vhost-device-vsock` command line, its gateway bridge, and QEMU's vsock arguments (a
//!   `vhost-user-vsock-pci` device: the hybrid-vsock contract, as there is no
//!   /dev/vhost-vsock here), with a Debian kernel and a busybox initramfs built here (QEMU
//!   under TCG, no network device);
//! - in the guest, the bridge's command line (the static `credproxy-bridge`) and the agent's
//!   environment (proxy variables, the CA path, the placeholder variables) as the modules
//!   give them to the guest's services; a tiny static client (`src/bin/microvm-client.rs`)
//!   plays the agent.
//!
//! Identities come from the real OIDC provider (`testsupport/oidc-provider`): the proxy
//! obtains VM a's token itself for a's listener (client credentials, the client secret on the
//! host; decision D1); the guest holds no token and no secret.
//!
//! Asserted: the request with a's placeholder is injected (the upstream received a's secret,
//! once) and its echo scrubbed (the guest saw only the placeholder), attributed to agent vm-a
//! on a's listener; VM b's placeholder is refused on a's listener (403 credential_not_granted, a
//! misuse alarm) and
//! VM b's token is refused there too; neither secret reaches the guest; the guest has no
//! interface but `lo` and a direct TCP connection fails. The other direction too: the host
//! reaches the guest's gateway (busybox `httpd` in OpenClaw's place, behind the evaluated
//! `openclaw-gateway-vsock` bridge) with the evaluated host gateway bridge, `credproxy bridge
//! tcp:… vsock_uds:<socket>:P`, the hybrid-vsock `CONNECT P` handshake against
//! vhost-device-vsock.
//!
//! Tools: `qemu-system-x86_64` (apt `qemu-system-x86`), `busybox` (apt `busybox-static`),
//! `vhost-device-vsock` (`cargo install vhost-device-vsock --locked --root .cache/tools`),
//! `apt-get`/`dpkg-deb` for the kernel, `nix-instantiate`/`nix-store` (apt `nix-bin`), Node
//! with `npm ci --prefix testsupport/oidc-provider`, and the vendored nixpkgs lib and
//! microvm.nix (`../shared/vendor`, or `CREDPROXY_NIX_VENDOR`; without it the test fails when
//! `CI=true` and is skipped with a loud message otherwise). Everything downloaded or built is
//! cached under `<workspace>/.cache/microvm/` (override with `CREDPROXY_MICROVM_CACHE`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use credproxy_config::Config;
use credproxy_proxy::{Proxy, ProxyOptions};
use credproxy_testkit::guest::{self, is_static, tool};
use credproxy_testkit::{
    OidcProvider, OidcProviderOptions, TestClient, TestPki, Upstream, UpstreamOptions, Validity,
};
use serde_json::Value;

const HOST: &str = "api.anthropic.com";
const ROLE: &str = "proxy-user";
const SECRET_A: &str = "sk-ant-CANARY-microvm-a-5d1c0e9b7a3f";
const SECRET_B: &str = "sk-ant-CANARY-microvm-b-91f0c2a7e4d8";
/// The slirp gateway address a user-mode NIC would have; with no NIC it is unreachable.
const DIRECT: &str = "10.0.2.2:443";
/// Boot, run the client and power off. A boot takes ~10 s under TCG; the rest is slack for
/// a loaded 2-core machine.
const VM_TIMEOUT: Duration = Duration::from_secs(90);
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

/// `run_ok` under its old name here.
fn run(cmd: &mut Command, what: &str) -> String {
    guest::run_ok(cmd, what)
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

/// Evaluate the test host with these parameters (`nix/eval`, attribute `testHost`) and
/// realise its policy directory.
fn evaluate_test_host(store: &Path, vendor: &Path, params: &[(&str, String)]) -> Value {
    guest::nix_evaluate(store, vendor, "testHost", params, &["/policyDir/drv"])
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Single-quoted for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

struct Guest<'a> {
    bridge: &'a Path,
    client: &'a Path,
    modules: &'a Path,
    proxy_ca: &'a Path,
    /// Where the agent's environment expects the CA (`SSL_CERT_FILE`).
    ca_path: &'a str,
    /// The guest bridge's arguments, after `credproxy bridge`.
    bridge_args: &'a [String],
    /// The agent's environment: proxy variables, CA paths, placeholders.
    environment: &'a [(String, String)],
    /// The client's arguments.
    client_args: &'a [String],
    /// Another VM's token, for the client to try.
    foreign_token: &'a str,
    /// The gateway's port (busybox httpd plays the gateway) and the guest's VSOCK listener
    /// for it (`openclaw-gateway-vsock`), after `credproxy bridge`.
    gateway_port: u64,
    gateway_bridge_args: &'a [String],
}

/// Build the initramfs (an uncompressed newc cpio, which the kernel takes as is).
fn initramfs(dir: &Path, g: &Guest<'_>) -> PathBuf {
    let root = dir.join("root");
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "etc",
        "tmp",
        "run",
        "lib/modules",
    ] {
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
        "sh", "mount", "insmod", "ip", "poweroff", "cat", "ls", "sleep", "echo", "mkdir", "httpd",
        "touch",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::copy(g.bridge, root.join("bin/credproxy-bridge")).unwrap();
    std::fs::copy(g.client, root.join("bin/microvm-client")).unwrap();
    // What credproxy-guest-files installs from the host's delivery: the CA certificate.
    let ca = root.join(g.ca_path.trim_start_matches('/'));
    std::fs::create_dir_all(ca.parent().unwrap()).unwrap();
    std::fs::copy(g.proxy_ca, &ca).unwrap();
    std::fs::write(root.join("etc/foreign-token"), g.foreign_token).unwrap();
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
    let exports: String = g
        .environment
        .iter()
        .map(|(k, v)| format!("export {k}={}\n", sh_quote(v)))
        .collect();
    let quote_all = |args: &[String]| -> String {
        args.iter()
            .map(|a| sh_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    };
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
# The gateway (busybox httpd in OpenClaw's place) and openclaw-gateway-vsock.service.
httpd -p 127.0.0.1:{gateway_port} -h /www
/bin/credproxy-bridge {gateway_bridge} &
echo MICROVM_GATEWAY_STARTED
# credproxy-bridge.service, as the guest module runs it (no token, no secret).
/bin/credproxy-bridge {bridge} &
# The agent's environment, as the guest module gives it to the agent services.
{exports}/bin/microvm-client {client}
# Wait (bounded) for the host to fetch the gateway page.
i=0
while [ ! -e /tmp/gateway-served ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
[ -e /tmp/gateway-served ] && echo MICROVM_GATEWAY_SERVED
echo MICROVM_DONE
poweroff -f
"#,
        modules = order.join(" "),
        bridge = quote_all(g.bridge_args),
        client = quote_all(g.client_args),
        gateway_port = g.gateway_port,
        gateway_bridge = quote_all(g.gateway_bridge_args),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_evaluated_test_host_runs_a_microvm_whose_only_way_out_is_credproxy() {
    let total = Instant::now();
    let Some(vendor) = guest::nix_vendor() else {
        let msg = "the microVM test evaluates nix/eval/test-host.nix and needs the vendored nixpkgs lib and \
                   microvm.nix (../shared/vendor from the repository root, or CREDPROXY_NIX_VENDOR)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}: missing (CI=true)");
        }
        eprintln!(
            "\n{bar}\nmicrovm: SKIPPED: {msg}: missing\n{bar}\n",
            bar = "#".repeat(78)
        );
        return;
    };
    let qemu = tool("qemu-system-x86_64", "apt-get install qemu-system-x86");
    let vhost = tool(
        "vhost-device-vsock",
        "cargo install vhost-device-vsock --locked --root .cache/tools",
    );
    let cache = guest::guest_cache();
    let (vmlinuz, modules) = kernel(&cache);
    let bins = guest::static_binaries();
    let (bridge, client) = (bins.bridge, bins.microvm_client);

    // What the host's operator brings: the identity provider (one client per VM), the
    // upstream, the secrets.
    let clients = [
        TestClient::new("vm-a", &[ROLE]),
        TestClient::new("vm-b", &[ROLE]),
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
    let run_dir = d.join("host");

    // The test host, evaluated with this test's paths and addresses.
    let evaluated = Instant::now();
    let host = evaluate_test_host(
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
        "microvm: test host evaluated and realised in {:?}",
        evaluated.elapsed()
    );
    let (a, b) = (&host["vms"]["a"], &host["vms"]["b"]);
    // The generated configuration, as /etc/credproxy/config.yaml holds it.
    let config_text = host["config"]["text"].as_str().unwrap();
    let config_file = d.join("config.yaml");
    std::fs::write(&config_file, config_text).unwrap();
    let settings: Value = serde_json::from_str(config_text).unwrap();

    // Play systemd: tmpfiles, the secrets' sources, LoadCredential, credproxy-ca-init.
    for vm in [a, b] {
        for dir in strings(&vm["directories"]) {
            std::fs::create_dir_all(dir).unwrap();
        }
    }
    let load = host["loadCredential"].as_object().unwrap();
    let secret_sources = [
        ("anthropic-a", SECRET_A.to_string()),
        ("anthropic-b", SECRET_B.to_string()),
        ("vm-a-client-secret", clients[0].secret.clone()),
        ("vm-b-client-secret", clients[1].secret.clone()),
    ];
    assert_eq!(
        load.len(),
        secret_sources.len(),
        "the test host's LoadCredential entries changed: {load:?}"
    );
    let credentials_dir = PathBuf::from(host["credentialsDirectory"].as_str().unwrap());
    std::fs::create_dir_all(&credentials_dir).unwrap();
    for (name, value) in &secret_sources {
        let source = PathBuf::from(
            load.get(*name)
                .unwrap_or_else(|| panic!("no LoadCredential {name}: {load:?}"))
                .as_str()
                .unwrap(),
        );
        std::fs::create_dir_all(source.parent().unwrap()).unwrap();
        std::fs::write(&source, value).unwrap();
        std::fs::copy(&source, credentials_dir.join(name)).unwrap();
    }
    let ca_cert = PathBuf::from(settings["ca"]["cert_file"].as_str().unwrap());
    let ca = credproxy_tls::init_ca(ca_cert.parent().unwrap(), false).unwrap();
    assert_eq!(ca.cert_file, ca_cert);

    // credproxy with the evaluated configuration, as credproxy.service runs it.
    let config = Config::load(&config_file)
        .unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&config_file).unwrap()));
    let proxy = Proxy::bind(
        config,
        ProxyOptions {
            resolver: None,
            env: None,
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .spawn();
    assert!(
        proxy.wait_ready(Duration::from_secs(30)).await,
        "credproxy did not get ready (the agents' tokens from {})",
        provider.issuer()
    );
    let listener = &a["listener"];
    let uds = format!(
        "{}_{}",
        listener["vsock_uds"]["path"].as_str().unwrap(),
        listener["vsock_uds"]["port"]
    );
    assert!(Path::new(&uds).exists(), "credproxy did not bind {uds}");

    // The guest: the evaluated bridge command line and agent environment.
    let bridge_argv = strings(&a["guestBridge"]);
    assert_eq!(bridge_argv[1], "bridge", "{bridge_argv:?}");
    let bridge_args = &bridge_argv[2..];
    assert!(
        !bridge_args.iter().any(|x| x.starts_with("--")),
        "the guest bridge must carry no token options: {bridge_args:?}"
    );
    let mut environment: Vec<(String, String)> = Vec::new();
    for key in ["environment", "placeholderEnvironment"] {
        for (k, v) in a[key].as_object().unwrap() {
            environment.push((k.clone(), v.as_str().unwrap().to_string()));
        }
    }
    let ca_path = a["environment"]["SSL_CERT_FILE"]
        .as_str()
        .unwrap()
        .to_string();
    let own_placeholder = a["placeholders"]["anthropic-a"]
        .as_str()
        .unwrap()
        .to_string();
    let placeholder_var = a["placeholderEnvironment"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, v)| v.as_str() == Some(&own_placeholder))
        .map(|(k, _)| k.clone())
        .expect("the placeholder's variable");
    let foreign_placeholder = b["placeholders"]["anthropic-b"]
        .as_str()
        .unwrap()
        .to_string();
    // VM b's identity, as an agent in VM a might have got hold of it.
    let foreign_token = provider.token("vm-b").await;
    let client_args = [
        HOST.to_string(),
        DIRECT.to_string(),
        placeholder_var,
        foreign_placeholder.clone(),
        "/etc/foreign-token".to_string(),
    ];
    let gateway_bridge = strings(&a["guestGatewayBridge"]);
    assert_eq!(gateway_bridge[1], "bridge", "{gateway_bridge:?}");
    let cpio = initramfs(
        d,
        &Guest {
            bridge: &bridge,
            client: &client,
            modules: &modules,
            proxy_ca: &ca.cert_file,
            ca_path: &ca_path,
            bridge_args,
            environment: &environment,
            client_args: &client_args,
            foreign_token: &foreign_token,
            gateway_port: a["gatewayPort"].as_u64().unwrap(),
            gateway_bridge_args: &gateway_bridge[2..],
        },
    );

    // vhost-device-vsock and QEMU's vsock device, as the evaluated units run them.
    let mut procs = Procs::default();
    let vhost_argv = strings(&a["vhostDeviceVsock"]);
    let control =
        PathBuf::from(&vhost_argv[vhost_argv.iter().position(|x| x == "--socket").unwrap() + 1]);
    procs.0.push(
        Command::new(&vhost)
            .args(&vhost_argv[1..])
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
            .args(["-accel", "tcg", "-M", "q35", "-m", "256M", "-smp", "1"])
            .args(strings(&a["qemuArgs"]))
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
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("qemu.log")).unwrap())
            .spawn()
            .unwrap(),
    );

    // Wait for the guest to finish (bounded; no fixed sleeps). Once its gateway is started,
    // the host fetches a page through the evaluated gateway bridge (openclaw-vm-a-gateway).
    let mut init_seen = None;
    let mut gateway = None;
    let text = loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if init_seen.is_none() && text.contains("MICROVM_INIT_START") {
            init_seen = Some(boot.elapsed());
        }
        if gateway.is_none() && text.contains("MICROVM_GATEWAY_STARTED") {
            gateway = Some(tokio::spawn(fetch_gateway(strings(
                &a["hostGatewayBridge"],
            ))));
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
    let block = |label: &str| -> String {
        text.split(&format!("MICROVM_{label}_BEGIN"))
            .nth(1)
            .and_then(|r| r.split(&format!("MICROVM_{label}_END")).next())
            .unwrap_or_else(|| panic!("no {label} result in the console\n{}", context()))
            .to_string()
    };

    // Host -> guest through the hypervisor's socket (vhost-device-vsock's hybrid vsock).
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
    assert!(!text.contains("MICROVM_CLIENT_ERROR"), "{}", context());

    // Its own placeholder: injected upstream, scrubbed on the way back, with no token in the
    // guest (the proxy authenticated the listener's connection as vm-a itself).
    let own = block("OWN");
    assert!(
        own.contains("MICROVM_CONNECT_STATUS HTTP/1.1 200"),
        "{}",
        context()
    );
    assert!(own.contains("HTTP/1.1 200"), "{}", context());
    assert!(
        own.contains(&format!("x-api-key: {own_placeholder}")),
        "{}",
        context()
    );

    // VM b's placeholder on VM a's listener: refused by the proxy itself (the credential is
    // granted to vm-b only), says why, and is a misuse alarm.
    let foreign = block("FOREIGN_PLACEHOLDER");
    assert!(foreign.contains("HTTP/1.1 403"), "{}", context());
    assert!(foreign.contains("credential_not_granted"), "{}", context());
    assert!(foreign.contains("belongs to agent vm-b"), "{}", context());

    // VM b's token on VM a's listener: refused (the listener is bound to vm-a).
    let foreign_token_result = block("FOREIGN_TOKEN");
    assert!(
        !foreign_token_result.contains("x-api-key:")
            && (foreign_token_result.contains(" 403") || foreign_token_result.contains(" 407")),
        "{}",
        context()
    );

    // No secret ever reached the guest.
    for secret in [SECRET_A, SECRET_B] {
        assert!(
            !text.contains(secret),
            "a secret reached the guest\n{}",
            context()
        );
    }

    // The upstream got a's secret, exactly once, and nothing of b's.
    let received = upstream.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        received[0].header_all("x-api-key"),
        vec![SECRET_A.to_string()]
    );
    assert!(received[0].header("proxy-authorization").is_none());

    // Attribution: the audit records name the agent bound to a's listener and the
    // hybrid-vsock peer; b's placeholder was denied there; nothing acted as vm-b.
    proxy.flush_audit().await;
    let records = credproxy_audit::query::list(
        Path::new(settings["audit"]["path"].as_str().unwrap()),
        &credproxy_audit::query::Filter::default(),
    )
    .unwrap();
    let used: Vec<_> = records
        .iter()
        .filter(|r| r.decision == credproxy_audit::Decision::Allow && !r.credentials.is_empty())
        .collect();
    assert_eq!(used.len(), 1, "{records:#?}");
    assert_eq!(used[0].agent_id.as_deref(), Some("vm-a"), "{:#?}", used[0]);
    assert_eq!(
        used[0].listener,
        listener["name"].as_str().unwrap(),
        "{:#?}",
        used[0]
    );
    assert!(
        used[0]
            .peer
            .starts_with(&format!("vsock_uds:{}", listener["vsock_uds"]["port"])),
        "{:#?}",
        used[0]
    );
    assert!(
        records
            .iter()
            .any(|r| r.decision == credproxy_audit::Decision::Deny
                && r.agent_id.as_deref() == Some("vm-a")
                && r.misuse_alarms
                    .iter()
                    .any(|m| m == "credential_not_granted")),
        "{records:#?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r.decision == credproxy_audit::Decision::Deny
                && r.outcome
                    .as_ref()
                    .is_some_and(|o| o.reason == "listener_agent_mismatch")),
        "{records:#?}"
    );
    assert!(
        !records
            .iter()
            .any(|r| r.agent_id.as_deref() == Some("vm-b")),
        "{records:#?}"
    );
    assert!(
        run_time < Duration::from_secs(45),
        "the guest took {run_time:?}; the budget is about 15 s per boot"
    );
}

/// `credproxy bridge`'s command line, parsed as the binary parses it.
#[derive(clap::Parser)]
struct BridgeCommand {
    #[command(flatten)]
    args: credproxy_bridge::BridgeArgs,
}

/// GET the guest's gateway page through the host's evaluated gateway bridge (`credproxy
/// bridge tcp:127.0.0.1:<port> vsock_uds:<hybrid socket>:<gateway port>`, the test host's
/// port being 0: chosen by the OS). The guest's bridge may not listen yet when its init says
/// the gateway started, so a refused handshake is retried (bounded).
async fn fetch_gateway(argv: Vec<String>) -> String {
    use clap::Parser as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    assert_eq!(argv[1], "bridge", "{argv:?}");
    let command = BridgeCommand::try_parse_from(
        std::iter::once("bridge".to_string()).chain(argv[2..].iter().cloned()),
    )
    .unwrap_or_else(|e| panic!("the evaluated gateway bridge {argv:?}: {e}"));
    let bridge = credproxy_bridge::Bridge::bind(
        credproxy_bridge::BridgeConfig::from_args(&command.args).unwrap(),
    )
    .await
    .unwrap();
    let credproxy_core::ListenAddr::Tcp(addr) = bridge.local_addr().clone() else {
        panic!("the gateway bridge does not listen on TCP: {argv:?}")
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
            "the guest's gateway never answered through {argv:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    task.abort();
    page
}
