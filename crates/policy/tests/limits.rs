//! Runaway policies hit the execution limit and deny, without disturbing other evaluations;
//! many threads can share one engine.

mod common;

use std::time::{Duration, Instant};

use credproxy_policy::{PolicyEngine, PolicyError, PolicySource};

const LIMIT: Duration = Duration::from_millis(100);

/// Denies everything but the representative request's host only after building a set of a
/// hundred million products: far beyond any limit.
const RUNAWAY: &str = r#"
package credproxy.authz

default allow := false

allow if {
	input.request.host == "api.github.com"
	count(products) > 0
}

allow if input.request.host == "fast.example"

products contains x if {
	some i in numbers.range(1, 10000)
	some j in numbers.range(1, 10000)
	x := i * j
}
"#;

fn runaway() -> PolicyEngine {
    PolicyEngine::compile(
        &PolicySource::from_files([("runaway.rego".to_owned(), RUNAWAY.to_owned())]),
        LIMIT,
    )
    .expect("compiles")
}

#[test]
fn runaway_policy_times_out_and_the_engine_keeps_serving() {
    let engine = runaway();
    let start = Instant::now();
    let err = engine
        .evaluate(&common::representative_input())
        .expect_err("runs away");
    let took = start.elapsed();
    assert!(
        matches!(&err, PolicyError::Timeout { rule, limit } if rule.ends_with(".allow") && *limit == LIMIT),
        "{err}"
    );
    assert_eq!(err.reason(), "policy_timeout");
    // The cooperative timer stops the evaluation itself; allow a margin for a loaded machine.
    assert!(took < LIMIT * 3, "took {took:?}");

    // A following evaluation on a clone of the same engine is served normally.
    let clone = engine.clone();
    let mut fast = common::representative_input();
    fast.request = common::request("GET", "fast.example", "/");
    assert!(clone.evaluate(&fast).expect("evaluates").allow);
}

#[test]
fn runaway_evaluation_does_not_block_other_threads() {
    let engine = runaway();
    let slow = {
        let engine = engine.clone();
        std::thread::spawn(move || engine.evaluate(&common::representative_input()))
    };
    let mut fast = common::representative_input();
    fast.request = common::request("GET", "fast.example", "/");
    let start = Instant::now();
    for _ in 0..20 {
        assert!(engine.evaluate(&fast).expect("evaluates").allow);
    }
    assert!(
        start.elapsed() < LIMIT,
        "fast path took {:?}",
        start.elapsed()
    );
    let slow = slow.join().expect("thread");
    assert!(matches!(slow, Err(PolicyError::Timeout { .. })), "{slow:?}");
}

#[test]
fn concurrent_evaluations_are_consistent() {
    let engine =
        PolicyEngine::compile(&PolicySource::builtin(), Duration::from_secs(1)).expect("compiles");
    let allowed = common::representative_input();
    let mut denied = common::representative_input();
    denied.credentials.push(common::openai_unbound());
    let expected_allow = engine.evaluate(&allowed).expect("evaluates");
    let expected_deny = engine.evaluate(&denied).expect("evaluates");
    assert!(expected_allow.allow && !expected_deny.allow);

    std::thread::scope(|scope| {
        for t in 0..8 {
            let engine = engine.clone();
            let (allowed, denied) = (&allowed, &denied);
            let (expected_allow, expected_deny) = (&expected_allow, &expected_deny);
            scope.spawn(move || {
                for i in 0..1000 {
                    if (i + t) % 2 == 0 {
                        assert_eq!(
                            &engine.evaluate(allowed).expect("evaluates"),
                            expected_allow
                        );
                    } else {
                        assert_eq!(&engine.evaluate(denied).expect("evaluates"), expected_deny);
                    }
                }
            });
        }
    });
}
