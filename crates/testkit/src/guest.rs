//! What the tests that run a guest (the microVM test, the container test) share: tools on the
//! machine, the static guest binaries, and the NixOS module evaluation in a private Nix store
//! (as `nix/eval/run` does it), whose output those tests run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root")
}

/// A tool from `<workspace>/.cache/tools/bin` or PATH, or a panic saying how to install it.
pub fn tool(name: &str, install: &str) -> PathBuf {
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
        "this test needs `{name}`, which is neither in {} nor on PATH; install it with: {install} \
         (scripts/test does this)",
        workspace().join(".cache/tools/bin").display()
    );
}

/// Run `cmd` to completion; its standard output, or a panic with everything it said.
pub fn run_ok(cmd: &mut Command, what: &str) -> String {
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

/// An ELF executable without a program interpreter (`PT_INTERP`) runs without a dynamic
/// loader, as a busybox guest or container root has none.
pub fn is_static(path: &Path) -> bool {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        data.starts_with(b"\x7fELF\x02"),
        "{} is not a 64-bit ELF file",
        path.display()
    );
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[0x20..0x28].try_into().unwrap_or_default()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).all(|i| {
        let o = phoff + i * size;
        u32::from_le_bytes(data[o..o + 4].try_into().unwrap_or_default()) != 3
    })
}

/// The cache of the guest tests: `$CREDPROXY_MICROVM_CACHE`, else `<workspace>/.cache/microvm`.
pub fn guest_cache() -> PathBuf {
    let dir = std::env::var_os("CREDPROXY_MICROVM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".cache/microvm"));
    std::fs::create_dir_all(&dir).expect("creating the guest cache");
    dir
}

/// The static binaries guests and containers run.
pub struct StaticBinaries {
    /// `credproxy-bridge`.
    pub bridge: PathBuf,
    /// The microVM test's client.
    pub microvm_client: PathBuf,
    /// The container test's client.
    pub container_client: PathBuf,
}

/// Build the static binaries (`credproxy-bridge` and the test clients, feature
/// `microvm-client`) once per source change into the guest cache's own target directory
/// (the outer `cargo test` holds its own), and check that they are static.
pub fn static_binaries() -> StaticBinaries {
    let target_dir = guest_cache().join("target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = Instant::now();
    run_ok(
        Command::new(cargo)
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
            .env("CARGO_PROFILE_RELEASE_LTO", "false"),
        "building the static guest binaries",
    );
    eprintln!("static guest binaries ready in {:?}", started.elapsed());
    let dir = target_dir.join("x86_64-unknown-linux-gnu/release");
    let bins = StaticBinaries {
        bridge: dir.join("credproxy-bridge"),
        microvm_client: dir.join("microvm-client"),
        container_client: dir.join("container-client"),
    };
    for b in [&bins.bridge, &bins.microvm_client, &bins.container_client] {
        assert!(is_static(b), "{} is not a static binary", b.display());
    }
    bins
}

/// The vendored nixpkgs lib and microvm.nix: `$CREDPROXY_NIX_VENDOR`, else `../shared/vendor`
/// from the workspace (or `../../shared/vendor` from a git worktree one level down).
pub fn nix_vendor() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os("CREDPROXY_NIX_VENDOR") {
        return Some(PathBuf::from(v));
    }
    ["../shared/vendor", "../../shared/vendor"]
        .iter()
        .map(|p| workspace().join(p))
        .find(|p| p.join("nixpkgs-lib/lib").is_dir() && p.join("microvm.nix").is_dir())
}

/// A Nix tool on a private store under `dir` (no daemon, nothing under /nix), as
/// `nix/eval/run` uses.
pub fn nix_command(dir: &Path, tool_name: &str) -> Command {
    let mut cmd = Command::new(tool(tool_name, "apt-get install nix-bin"));
    cmd.env("NIX_STORE_DIR", dir.join("store"))
        .env("NIX_STATE_DIR", dir.join("state"))
        .env("NIX_LOG_DIR", dir.join("log"))
        .env("NIX_REMOTE", "local")
        .env(
            "NIX_CONFIG",
            "build-users-group =\nsandbox = false\nsubstituters =\n",
        )
        .env("HOME", dir.join("home"));
    cmd
}

/// Evaluate `attr` of `nix/eval` in the private store `store` with these `--argstr`
/// parameters, then realise the derivations found at `realise` (JSON pointers into the
/// result, e.g. `/policyDir/drv`).
pub fn nix_evaluate(
    store: &Path,
    vendor: &Path,
    attr: &str,
    params: &[(&str, String)],
    realise: &[&str],
) -> Value {
    for d in ["store", "state", "log", "home"] {
        std::fs::create_dir_all(store.join(d)).expect("creating the private store");
    }
    let mut cmd = nix_command(store, "nix-instantiate");
    cmd.args(["--read-write-mode", "--eval", "--strict", "--json"])
        .arg(workspace().join("nix/eval"))
        .args(["-A", attr, "--arg", "vendor"])
        .arg(vendor);
    for (name, value) in params {
        cmd.args(["--argstr", name, value]);
    }
    let out = run_ok(&mut cmd, &format!("evaluating nix/eval {attr}"));
    let value: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("nix/eval {attr} did not give JSON ({e}): {out}"));
    for pointer in realise {
        let drv = value
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no derivation at {pointer} of nix/eval {attr}"));
        run_ok(
            nix_command(store, "nix-store").arg("--realise").arg(drv),
            &format!("realising {pointer} of nix/eval {attr}"),
        );
    }
    value
}
