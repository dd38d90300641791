//! Authorization through the proxy: the operator's Rego policy decides every request; a
//! runaway policy fails closed without stopping other requests; policy reloads apply to
//! the next request in an already-open tunnel, and a broken policy is refused.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use credproxy_harness::{Harness, Setup, AGENT, HOST, ROLE};
use credproxy_testkit::{connect_tunnel, tls_over, Upstream, UpstreamOptions, Validity};
use http_body_util::BodyExt;

const GITHUB: &str = "api.github.com";
const PH_GH: &str = "agent-vault-99999999-8888-7777-6666-555555555555";
const GH_SECRET: &str = "ghp_CANARYrealtoken0123456789abcdef";

fn write_policy(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

const ALLOW_ALL: &str = "package credproxy.authz\n\ndefault allow := false\n\nallow if input.identity\n\ndeny_reasons := set()\n";
const DENY_ALL: &str = "package credproxy.authz\n\ndefault allow := false\n\ndeny_reasons contains \"maintenance: all requests are refused\" if true\n";

#[tokio::test]
async fn github_credential_only_for_get_on_repos_by_agent_a() {
    let tmp = tempfile::tempdir().unwrap();
    let policy_dir = tmp.path().join("policy");
    write_policy(
        &policy_dir,
        &[(
            "github.rego",
            include_str!("../../policy/examples/github-repos-get.rego"),
        )],
    );
    let pki = credproxy_testkit::TestPki::new();
    let github = Upstream::start(UpstreamOptions::tls(pki.issue(&[GITHUB], Validity::Valid))).await;
    let h = Harness::with(Setup {
        allow: vec![GITHUB.into()],
        resolve: vec![(GITHUB.into(), github.addr())],
        extra_ca: vec![pki.ca_cert_path().to_path_buf()],
        credentials: format!(
            "  - id: github\n    placeholder: {PH_GH}\n    type: bearer\n    bound_domains: [{GITHUB}]\n    allowed_roles: [{ROLE}]\n    source: {{env: GH}}\n"
        ),
        env: vec![("GH".into(), GH_SECRET.into())],
        extra_yaml: format!("policy:\n  dir: {}\n", policy_dir.display()),
        ..Setup::default()
    })
    .await;
    let auth = format!("Bearer {PH_GH}");
    // Allowed: it reaches the upstream (which has no such repository: 404 is its answer).
    let ok = h
        .get(format!("https://{GITHUB}/repos/o/r"))
        .header("Authorization", &auth)
        .send()
        .await;
    assert_eq!(ok.status, 404, "{ok}");
    assert_eq!(
        github.received()[0].header("authorization").as_deref(),
        Some(&*format!("Bearer {GH_SECRET}"))
    );

    let post = h
        .request("POST", format!("https://{GITHUB}/repos/o/r"))
        .header("Authorization", &auth)
        .send()
        .await;
    assert_eq!(post.status, 403, "{post}");
    assert!(
        post.text().contains("may only be used for GET, not POST"),
        "{post}"
    );

    let user = h
        .get(format!("https://{GITHUB}/user"))
        .header("Authorization", &auth)
        .send()
        .await;
    assert_eq!(user.status, 403, "{user}");
    let escape = h
        .get(format!("https://{GITHUB}/repos/../user"))
        .curl_args(&["--path-as-is"])
        .header("Authorization", &auth)
        .send()
        .await;
    assert_eq!(escape.status, 403, "{escape}");

    let b = h.token_for("agent-b", &[ROLE], Duration::from_secs(600));
    let other = h
        .get(format!("https://{GITHUB}/repos/o/r"))
        .token(&b)
        .header("Authorization", &auth)
        .send()
        .await;
    assert_eq!(other.status, 403, "{other}");
    assert!(
        other
            .text()
            .contains("agent agent-b may not use credential github"),
        "{other}"
    );
    // Requests without the credential follow the default rules.
    let plain = h.get(format!("https://{GITHUB}/user")).send().await;
    assert_eq!(plain.status, 404, "{plain}");
    assert_eq!(github.request_count(), 2);
    let _ = AGENT;
}

#[tokio::test]
async fn a_runaway_policy_fails_closed_while_other_requests_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let policy_dir = tmp.path().join("policy");
    let runaway = "package credproxy.authz\n\ndefault allow := false\n\nallow if {\n\tinput.identity\n\tcount(deny_reasons) == 0\n}\n\ndeny_reasons contains \"too big\" if {\n\tinput.request.path == \"/runaway\"\n\tcount([x | some x in numbers.range(1, 100000000)]) > 0\n}\n";
    write_policy(&policy_dir, &[("authz.rego", runaway)]);
    let h = Harness::with(Setup {
        extra_yaml: format!(
            "policy:\n  dir: {}\n  eval_limit: 100ms\n",
            policy_dir.display()
        ),
        ..Setup::default()
    })
    .await;
    let runaway_url = format!("https://{HOST}/runaway");
    let slow = h.get(&runaway_url).send();
    let fast = async {
        let mut codes = Vec::new();
        for _ in 0..5 {
            let c = h.get(format!("https://{HOST}/fixed/10")).send().await;
            codes.push(c.status);
        }
        codes
    };
    let (slow, codes) = tokio::join!(slow, fast);
    assert_eq!(slow.status, 503, "{slow}");
    // The limit surfaces as policy_timeout (time) or policy_error (regorus' own limits).
    assert!(
        slow.reason
            .as_deref()
            .is_some_and(|r| r.starts_with("policy_")),
        "{slow}"
    );
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
    assert_eq!(
        h.upstream
            .received()
            .iter()
            .filter(|r| r.path() == "/runaway")
            .count(),
        0
    );
}

/// Send one request on an open HTTP/2 tunnel; return the status.
async fn get(
    send: &mut hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
    path: &str,
) -> u16 {
    let req = http::Request::get(format!("https://{HOST}{path}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

#[tokio::test]
async fn policy_reloads_apply_inside_open_tunnels_and_broken_policies_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let allow_dir = tmp.path().join("allow");
    let deny_dir = tmp.path().join("deny");
    let broken_dir = tmp.path().join("broken");
    write_policy(&allow_dir, &[("authz.rego", ALLOW_ALL)]);
    write_policy(&deny_dir, &[("authz.rego", DENY_ALL)]);
    write_policy(
        &broken_dir,
        &[("authz.rego", "package credproxy.authz\nallow if {{{ nope\n")],
    );
    let h = Harness::with(Setup {
        extra_yaml: format!("policy:\n  dir: {}\n", allow_dir.display()),
        ..Setup::default()
    })
    .await;
    let (tcp, status, _) = connect_tunnel(h.addr(), &format!("{HOST}:443"), &h.auth_pairs())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let tls = tls_over(tcp, HOST, h.proxy_client_config(&["h2"])).await;
    let mut send = credproxy_testkit::http2_handshake::<_, http_body_util::Full<bytes::Bytes>>(tls)
        .await
        .unwrap();
    assert_eq!(get(&mut send, "/fixed/1").await, 200);

    let to = |dir: &Path| {
        let from = allow_dir.display().to_string();
        let dir = dir.display().to_string();
        move |y: &str| y.replace(&from, &dir)
    };

    // A continuous load on another connection while the policy flips: every answer is the
    // decision of some generation (200 or 403 by policy), never anything else.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let h = &h;
        async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let c = h.get(format!("https://{HOST}/fixed/3")).send().await;
                seen.push(c.status);
            }
            seen
        }
    };
    let flips = async {
        for round in 0..3 {
            assert_eq!(h.reload(to(&deny_dir)).unwrap(), 2 + 2 * round as u64);
            // The very next request in the already-open tunnel sees the new generation.
            assert_eq!(get(&mut send, "/fixed/2").await, 403);
            assert_eq!(h.reload(to(&allow_dir)).unwrap(), 3 + 2 * round as u64);
            assert_eq!(get(&mut send, "/fixed/2").await, 200);
        }
        // A broken policy is refused; the allow generation keeps answering.
        let err = h.reload(to(&broken_dir)).unwrap_err();
        assert!(err.contains("policy"), "{err}");
        assert_eq!(get(&mut send, "/fixed/2").await, 200);
        stop.store(true, std::sync::atomic::Ordering::Release);
    };
    let (seen, ()) = tokio::join!(load, flips);
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|c| *c == 200 || *c == 403), "{seen:?}");
    assert_eq!(h.proxy.reload_handle().active().0, 7);
}

#[tokio::test]
async fn removing_a_name_from_the_allowlist_applies_inside_an_open_tunnel() {
    let h = Harness::start().await;
    let (tcp, status, _) = connect_tunnel(h.addr(), &format!("{HOST}:443"), &h.auth_pairs())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let tls = tls_over(tcp, HOST, h.proxy_client_config(&["h2"])).await;
    let mut send = credproxy_testkit::http2_handshake::<_, http_body_util::Full<bytes::Bytes>>(tls)
        .await
        .unwrap();
    assert_eq!(get(&mut send, "/fixed/1").await, 200);
    h.reload(|y| y.replace(&format!("  - {HOST}\n"), ""))
        .unwrap();
    // The tunnel was opened under the old allowlist; its next request is refused.
    assert_eq!(get(&mut send, "/fixed/1").await, 403);
    assert_eq!(h.upstream.request_count(), 1);
}
