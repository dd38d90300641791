#![allow(clippy::unwrap_used)]
//! `credproxy bridge FROM TO --check`: validates the command line and the files it names,
//! exits 0 or 64, and touches nothing: no bind (an address in use is fine, a Unix socket is
//! not created), no connection to `TO`, no token request.

mod support;

use std::io::ErrorKind;

use support::{args, assert_code, run, stderr, stdout, EXIT_USAGE};

#[tokio::test]
async fn a_valid_command_line_exits_0_and_binds_and_connects_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // FROM is in use and TO listens: a real bind would fail, a connect would be queued.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let to = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    to.set_nonblocking(true).unwrap();
    let secret = dir.path().join("client-secret");
    std::fs::write(&secret, "s3cret-CANARY\n").unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, credproxy_testkit::TestPki::new().ca_cert_pem()).unwrap();
    let sock = dir.path().join("run/bridge.sock");
    for (from, extra) in [
        (
            format!("tcp:{}", busy.local_addr().unwrap()),
            args(&[
                &"--oidc-token-url",
                &"https://id.example/realms/r/protocol/openid-connect/token",
                &"--client-id",
                &"vm-a",
                &"--client-secret-file",
                &secret,
                &"--oidc-ca-file",
                &ca,
            ]),
        ),
        (format!("unix:{}", sock.display()), vec![]),
        (
            format!("vsock_uds:{}:8200", dir.path().join("vm.vsock").display()),
            args(&[&"--token-file", &secret]),
        ),
    ] {
        let mut a = args(&[
            &"bridge",
            &from,
            &format!("tcp:{}", to.local_addr().unwrap()),
            &"--check",
        ]);
        a.extend(extra);
        let o = run(a).await;
        assert_code(&o, 0);
        let out = stdout(&o);
        assert!(out.starts_with("credproxy bridge: valid: "), "{out}");
        assert!(!out.contains("s3cret"), "{out}");
        assert!(!stderr(&o).contains("s3cret"), "{}", stderr(&o));
    }
    assert!(!sock.exists(), "--check created the Unix socket");
    assert!(
        !dir.path().join("run").exists(),
        "--check created a directory"
    );
    assert!(!dir.path().join("vm.vsock_8200").exists());
    match to.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("--check connected to TO: {other:?}"),
    }
    // The connecting hybrid-vsock form: its socket need not exist yet (the VM is not running).
    let o = run(args(&[
        &"bridge",
        &"tcp:127.0.0.1:18789",
        &format!(
            "vsock_uds:{}:18789",
            dir.path().join("absent.vsock").display()
        ),
        &"--check",
    ]))
    .await;
    assert_code(&o, 0);
}

#[tokio::test]
async fn an_invalid_command_line_exits_64_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("client-secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let missing = dir.path().join("missing");
    let oidc = |extra: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut a = args(&[
            &"bridge",
            &"tcp:127.0.0.1:0",
            &"vsock:2:18790",
            &"--check",
            &"--oidc-token-url",
            &"https://id.example/token",
            &"--client-id",
            &"vm-a",
        ]);
        a.extend(args(extra));
        a
    };
    let cases = vec![
        (
            args(&[&"bridge", &"tcp:localhost:1", &"vsock:2:1", &"--check"]),
            "a listening TCP side needs an IP address",
        ),
        (
            args(&[&"bridge", &"tcp:127.0.0.1:1", &"vsock:any:1", &"--check"]),
            "a connecting side needs a CID",
        ),
        (
            args(&[
                &"bridge",
                &"tcp:127.0.0.1:1",
                &"vsock_uds:/run/x.vsock",
                &"--check",
            ]),
            "vsock_uds:PATH:PORT",
        ),
        (
            args(&[
                &"bridge",
                &"tcp:127.0.0.1:1",
                &"vsock:2:1",
                &"--check",
                &"--max-connections",
                &"0",
            ]),
            "--max-connections must be at least 1",
        ),
        (
            args(&[
                &"bridge",
                &"tcp:127.0.0.1:1",
                &"vsock:2:1",
                &"--check",
                &"--token-file",
                &missing,
            ]),
            "--token-file",
        ),
        (
            oidc(&[&"--client-secret-file", &missing]),
            "cannot read the client secret file",
        ),
        (
            oidc(&[
                &"--client-secret-file",
                &secret,
                &"--oidc-ca-file",
                &not_pem,
            ]),
            "no PEM certificate",
        ),
        (oidc(&[]), "need --client-id and --client-secret-file"),
        (
            args(&[
                &"bridge",
                &"tcp:127.0.0.1:1",
                &"vsock:2:1",
                &"--check",
                &"--oidc-token-url",
                &"http://id.example/token",
                &"--client-id",
                &"vm-a",
                &"--client-secret-file",
                &secret,
            ]),
            "plain http to a non-loopback host",
        ),
        (
            args(&[
                &"bridge",
                &"tcp:127.0.0.1:1",
                &"vsock:2:1",
                &"--check",
                &"--no-such-flag",
            ]),
            "--no-such-flag",
        ),
    ];
    for (a, says) in cases {
        let o = run(a.clone()).await;
        assert_code(&o, EXIT_USAGE);
        let err = stderr(&o);
        assert!(err.contains(says), "{a:?}: {err}");
        assert!(!err.contains("s3cret"), "{err}");
        assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    }
}
