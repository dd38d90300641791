//! The built-in default policy: its Rego unit tests, and its decisions through the engine.

mod common;

use std::time::Duration;

use credproxy_policy::{builtin_files, run_tests, Decision, PolicyEngine, PolicySource};

const LIMIT: Duration = Duration::from_millis(100);

fn engine() -> PolicyEngine {
    PolicyEngine::compile(&PolicySource::builtin(), LIMIT).expect("default policy compiles")
}

fn deny(reasons: &[&str]) -> Decision {
    Decision {
        allow: false,
        deny_reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
    }
}

#[test]
fn default_policy_rego_tests_pass() {
    let outcomes = run_tests(&PolicySource::builtin()).expect("compiles");
    assert!(outcomes.len() >= 10, "found only {} tests", outcomes.len());
    for outcome in &outcomes {
        assert!(outcome.passed, "{outcome:?}");
        assert_eq!(outcome.file, "authz_test.rego");
        assert!(outcome.name.starts_with("credproxy.authz_test.test_"));
    }
}

#[test]
fn builtin_files_are_the_policy_and_its_tests() {
    let names: Vec<&str> = builtin_files().iter().map(|(name, _)| *name).collect();
    assert_eq!(names, ["authz.rego", "authz_test.rego"]);
    let engine = engine();
    assert_eq!(engine.files(), ["authz.rego"]);
    assert_eq!(engine.hash(), PolicySource::builtin().hash());
    assert_eq!(engine.hash().len(), 64);
}

#[test]
fn allows_bound_credential_for_agent_with_role() {
    let decision = engine()
        .evaluate(&common::representative_input())
        .expect("evaluates");
    assert_eq!(
        decision,
        Decision {
            allow: true,
            deny_reasons: vec![]
        }
    );
}

#[test]
fn allows_authenticated_request_without_credentials() {
    let mut input = common::representative_input();
    input.credentials.clear();
    assert!(engine().evaluate(&input).expect("evaluates").allow);
}

#[test]
fn denies_without_identity() {
    let mut input = common::representative_input();
    input.identity = None;
    input.credentials.clear();
    assert_eq!(
        engine().evaluate(&input).expect("evaluates"),
        deny(&["no authenticated identity"])
    );
}

#[test]
fn denies_destination_not_allowlisted() {
    let mut input = common::representative_input();
    input.request.allowlisted = false;
    input.credentials.clear();
    assert_eq!(
        engine().evaluate(&input).expect("evaluates"),
        deny(&["destination api.github.com:443 is not allowlisted"])
    );
}

#[test]
fn denies_unbound_credential() {
    let mut input = common::representative_input();
    input.credentials[0].bound = false;
    assert_eq!(
        engine().evaluate(&input).expect("evaluates"),
        deny(&["credential github is not bound to api.github.com"])
    );
}

#[test]
fn denies_agent_without_an_allowed_role() {
    let mut input = common::representative_input();
    input.identity = Some(common::agent("agent-b", &["openai-user"]));
    assert_eq!(
        engine().evaluate(&input).expect("evaluates"),
        deny(&[
            "agent agent-b has none of the roles allowed to use credential github \
             (github-admin, github-reader)"
        ])
    );
}

#[test]
fn denies_when_one_of_two_credentials_is_unbound_and_lists_every_reason_sorted() {
    let mut input = common::representative_input();
    input.credentials.push(common::openai_unbound());
    assert_eq!(
        engine().evaluate(&input).expect("evaluates"),
        deny(&["credential openai is not bound to api.github.com"])
    );

    input.request.allowlisted = false;
    input.identity = Some(common::agent("agent-b", &[]));
    let decision = engine().evaluate(&input).expect("evaluates");
    assert!(!decision.allow);
    assert_eq!(decision.deny_reasons.len(), 4, "{decision:?}");
    let mut sorted = decision.deny_reasons.clone();
    sorted.sort();
    assert_eq!(decision.deny_reasons, sorted);
}
