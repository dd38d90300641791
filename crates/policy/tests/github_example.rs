//! The "Done when" case: an operator policy that lets agent-a use the GitHub credential only
//! for `GET https://api.github.com/repos/*`, tested offline and evaluated.

mod common;

use std::time::Duration;

use credproxy_policy::{run_tests, PolicyEngine, PolicyInput, PolicySource};

const POLICY: &str = include_str!("../examples/github-repos-get.rego");
const TESTS: &str = include_str!("../examples/github-repos-get_test.rego");

fn source() -> PolicySource {
    PolicySource::from_files([
        ("github-repos-get.rego".to_owned(), POLICY.to_owned()),
        ("github-repos-get_test.rego".to_owned(), TESTS.to_owned()),
    ])
}

fn engine() -> PolicyEngine {
    PolicyEngine::compile(&source(), Duration::from_millis(100)).expect("example compiles")
}

fn input(agent: &str, method: &str, path: &str) -> PolicyInput {
    let mut input = common::representative_input();
    input.identity = Some(common::agent(agent, &["github-reader"]));
    input.request = common::request(method, "api.github.com", path);
    input.credentials = vec![common::github()];
    input
}

#[test]
fn example_rego_tests_pass() {
    let outcomes = run_tests(&source()).expect("compiles");
    assert!(outcomes.len() >= 8, "found only {} tests", outcomes.len());
    for outcome in &outcomes {
        assert!(outcome.passed, "{outcome:?}");
    }
}

#[test]
fn example_loads_from_a_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("github-repos-get.rego"), POLICY).expect("write");
    std::fs::write(dir.path().join("github-repos-get_test.rego"), TESTS).expect("write");
    let src = PolicySource::load_dir(dir.path()).expect("loads");
    assert_eq!(src, source());
    assert!(run_tests(&src).expect("compiles").iter().all(|t| t.passed));
}

#[test]
fn evaluation_matrix() {
    let engine = engine();
    let cases = [
        ("agent-a", "GET", "/repos/acme/widgets", true),
        ("agent-a", "GET", "/repos/acme/widgets/pulls/1", true),
        ("agent-a", "POST", "/repos/acme/widgets/issues", false),
        ("agent-a", "DELETE", "/repos/acme/widgets", false),
        ("agent-a", "GET", "/user", false),
        ("agent-a", "GET", "/repos/../user", false),
        ("agent-a", "GET", "/reposx/acme", false),
        ("agent-b", "GET", "/repos/acme/widgets", false),
    ];
    for (agent, method, path, allowed) in cases {
        let decision = engine
            .evaluate(&input(agent, method, path))
            .expect("evaluates");
        assert_eq!(
            decision.allow, allowed,
            "{agent} {method} {path}: {decision:?}"
        );
        assert_eq!(decision.deny_reasons.is_empty(), allowed, "{decision:?}");
    }

    let post = engine
        .evaluate(&input("agent-a", "POST", "/repos/acme/widgets/issues"))
        .expect("evaluates");
    assert_eq!(
        post.deny_reasons,
        ["credential github may only be used for GET, not POST"]
    );
    let agent_b = engine
        .evaluate(&input("agent-b", "GET", "/repos/acme/widgets"))
        .expect("evaluates");
    assert_eq!(
        agent_b.deny_reasons,
        ["agent agent-b may not use credential github"]
    );
}

#[test]
fn github_credential_on_another_host_is_refused() {
    let mut request = input("agent-a", "GET", "/repos/acme/widgets");
    request.request = common::request("GET", "uploads.github.com", "/repos/acme/widgets");
    request.credentials[0].bound = false;
    let decision = engine().evaluate(&request).expect("evaluates");
    assert!(!decision.allow);
    assert!(decision
        .deny_reasons
        .contains(&"credential github is not bound to uploads.github.com".to_owned()));
}
