//! Loading and compiling policies that are broken in various ways, and the fail-closed rules
//! of evaluation.

mod common;

use std::time::Duration;

use credproxy_policy::{run_tests, Decision, PolicyEngine, PolicyError, PolicySource};

const LIMIT: Duration = Duration::from_millis(100);

fn source(files: &[(&str, &str)]) -> PolicySource {
    PolicySource::from_files(
        files
            .iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned())),
    )
}

fn compile(files: &[(&str, &str)]) -> Result<PolicyEngine, PolicyError> {
    PolicyEngine::compile(&source(files), LIMIT)
}

#[test]
fn load_dir_reads_top_level_rego_and_serves_without_tests() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in credproxy_policy::builtin_files() {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    std::fs::write(dir.path().join("README.md"), "not policy").expect("write");
    std::fs::write(dir.path().join(".hidden.rego"), "garbage").expect("write");
    std::fs::create_dir(dir.path().join("sub.rego")).expect("mkdir");

    let src = PolicySource::load_dir(dir.path()).expect("loads");
    let names: Vec<&str> = src.files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["authz.rego", "authz_test.rego"]);
    assert_eq!(src, PolicySource::builtin());
    assert_eq!(src.hash(), PolicySource::builtin().hash());

    let engine = PolicyEngine::compile(&src, LIMIT).expect("compiles");
    assert_eq!(engine.files(), ["authz.rego"]);
    assert!(run_tests(&src).expect("compiles").iter().all(|t| t.passed));
}

#[test]
fn a_broken_test_file_does_not_change_what_is_served() {
    let (_, policy) = credproxy_policy::builtin_files()[0];
    let src = source(&[
        ("authz.rego", policy),
        ("authz_test.rego", "package oops\nthis is not rego"),
    ]);
    assert!(PolicyEngine::compile(&src, LIMIT).is_ok());
    let err = run_tests(&src).expect_err("test file does not parse");
    assert!(
        matches!(&err, PolicyError::Compile { file, .. } if file == "authz_test.rego"),
        "{err}"
    );
}

#[test]
fn load_dir_without_serving_files_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = PolicySource::load_dir(dir.path()).expect_err("empty");
    assert!(matches!(err, PolicyError::NoPolicies { .. }), "{err}");

    std::fs::write(dir.path().join("only_test.rego"), "package x").expect("write");
    let err = PolicySource::load_dir(dir.path()).expect_err("tests only");
    assert!(matches!(err, PolicyError::NoPolicies { .. }), "{err}");

    let err = PolicySource::load_dir(&dir.path().join("missing")).expect_err("missing");
    assert!(matches!(err, PolicyError::Load { .. }), "{err}");
    assert_eq!(err.reason(), "policy_error");
}

#[test]
fn hash_changes_with_any_file() {
    let a = source(&[("a.rego", "package credproxy.authz\nallow := true")]);
    let b = source(&[("a.rego", "package credproxy.authz\nallow := false")]);
    let c = source(&[("b.rego", "package credproxy.authz\nallow := true")]);
    assert_ne!(a.hash(), b.hash());
    assert_ne!(a.hash(), c.hash());
}

#[test]
fn compile_error_names_the_file() {
    let err = compile(&[
        (
            "good.rego",
            "package credproxy.authz\ndefault allow := false",
        ),
        (
            "bad.rego",
            "package credproxy.authz\nallow if {\n  input.x ==\n}",
        ),
    ])
    .expect_err("does not parse");
    match &err {
        PolicyError::Compile { file, message } => {
            assert_eq!(file, "bad.rego");
            assert!(message.contains("bad.rego"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with("policy bad.rego does not compile"),
        "{err}"
    );
}

#[test]
fn rego_v0_syntax_is_rejected() {
    let err = compile(&[("v0.rego", "package credproxy.authz\nallow { input.x == 1 }")])
        .expect_err("v0 body without `if`");
    assert!(matches!(err, PolicyError::Compile { .. }), "{err}");
}

#[test]
fn policy_without_allow_is_rejected() {
    let err = compile(&[
        (
            "a.rego",
            "package credproxy.authz\ndeny_reasons contains \"x\" if true",
        ),
        ("b.rego", "package other\nallow := true"),
    ])
    .expect_err("no allow in credproxy.authz");
    assert!(matches!(err, PolicyError::MissingRule { .. }), "{err}");
}

#[test]
fn recursive_functions_are_rejected_when_compiling() {
    // regorus would recurse on the native stack until the process aborts.
    let direct = compile(&[(
        "loop.rego",
        "package credproxy.authz\nf(x) := y if { y := f(x + 1) }\nallow if f(1)",
    )])
    .expect_err("recursive");
    assert!(
        matches!(&direct, PolicyError::Compile { file, message }
            if file == "loop.rego" && message.contains("credproxy.authz.f -> credproxy.authz.f")),
        "{direct}"
    );

    let mutual = compile(&[
        (
            "a.rego",
            "package credproxy.authz\nimport data.lib\nallow if lib.g(1)",
        ),
        (
            "lib.rego",
            "package lib\nimport data.lib as me\ng(x) := h(x)\nh(x) := y if { y := me.g(x) }",
        ),
    ])
    .expect_err("mutually recursive");
    assert!(
        matches!(&mutual, PolicyError::Compile { file, message }
            if file == "lib.rego" && message.contains("lib.g -> lib.h -> lib.g")),
        "{mutual}"
    );

    // Same names in different packages are different functions.
    compile(&[
        (
            "a.rego",
            "package credproxy.authz\nimport data.lib\nf(x) := lib.f(x)\nallow if f(1) == 1",
        ),
        ("lib.rego", "package lib\nf(x) := x"),
    ])
    .expect("not recursive");
}

#[test]
fn recursive_rules_fail_the_evaluation() {
    // regorus detects cycles between rules when evaluating and stops cleanly; the request is
    // refused with an error pointing at the cycle.
    let engine = compile(&[(
        "r.rego",
        "package credproxy.authz\nallow if a\na if b\nb if a",
    )])
    .expect("compiles");
    let err = engine
        .evaluate(&common::representative_input())
        .expect_err("cycle");
    assert!(
        matches!(&err, PolicyError::Evaluation { message, .. }
            if message.contains("recursion detected") && message.contains("r.rego")),
        "{err}"
    );
}

#[test]
fn undefined_allow_denies_with_the_default_reason() {
    let engine = compile(&[("a.rego", "package credproxy.authz\nallow if input.nothing")])
        .expect("compiles");
    assert_eq!(
        engine
            .evaluate(&common::representative_input())
            .expect("evaluates"),
        Decision {
            allow: false,
            deny_reasons: vec!["denied by policy".to_owned()]
        }
    );
}

#[test]
fn deny_reasons_veto_an_allow() {
    let engine = compile(&[
        ("allow.rego", "package credproxy.authz\nallow := true"),
        (
            "veto.rego",
            "package credproxy.authz\ndeny_reasons contains \"maintenance window\" if true",
        ),
    ])
    .expect("compiles");
    assert_eq!(
        engine
            .evaluate(&common::representative_input())
            .expect("evaluates"),
        Decision {
            allow: false,
            deny_reasons: vec!["maintenance window".to_owned()]
        }
    );
}

#[test]
fn wrongly_typed_results_are_errors() {
    let engine =
        compile(&[("a.rego", "package credproxy.authz\nallow := \"yes\"")]).expect("compiles");
    let err = engine
        .evaluate(&common::representative_input())
        .expect_err("bad allow");
    assert!(
        matches!(&err, PolicyError::BadResult { rule, .. } if rule.ends_with(".allow")),
        "{err}"
    );
    assert_eq!(err.reason(), "policy_error");

    let engine = compile(&[(
        "a.rego",
        "package credproxy.authz\nallow := false\ndeny_reasons contains 42 if true",
    )])
    .expect("compiles");
    let err = engine
        .evaluate(&common::representative_input())
        .expect_err("bad reasons");
    assert!(
        matches!(&err, PolicyError::BadResult { rule, .. } if rule.ends_with(".deny_reasons")),
        "{err}"
    );
}

#[test]
fn evaluation_errors_name_the_rule_and_file() {
    let engine = compile(&[(
        "err.rego",
        "package credproxy.authz\nallow if { x := to_number(input.request.host); x > 1 }",
    )])
    .expect("compiles");
    let err = engine
        .evaluate(&common::representative_input())
        .expect_err("to_number fails");
    match &err {
        PolicyError::Evaluation { rule, message } => {
            assert_eq!(rule, "data.credproxy.authz.allow");
            assert!(message.contains("err.rego"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn print_does_not_write_on_the_evaluation_path_and_shows_in_tests() {
    let src = source(&[
        (
            "a.rego",
            "package credproxy.authz\nallow if { print(\"checking\", input.request.host); true }",
        ),
        (
            "a_test.rego",
            "package credproxy.authz_test\ntest_p if { print(\"hello\"); true }",
        ),
    ]);
    let engine = PolicyEngine::compile(&src, LIMIT).expect("compiles");
    assert!(
        engine
            .evaluate(&common::representative_input())
            .expect("evaluates")
            .allow
    );
    let outcomes = run_tests(&src).expect("compiles");
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].prints.len(), 1);
    assert!(
        outcomes[0].prints[0].ends_with("hello"),
        "{:?}",
        outcomes[0].prints
    );
}

#[test]
fn failing_and_erroring_tests_are_reported_by_name() {
    let src = source(&[
        (
            "authz.rego",
            "package credproxy.authz\ndefault allow := false\nallow if input.ok",
        ),
        (
            "authz_test.rego",
            "package credproxy.authz_test\nimport data.credproxy.authz\n\
             test_passes if authz.allow with input as {\"ok\": true}\n\
             test_fails if authz.allow with input as {\"ok\": false}\n\
             test_undefined if input.nothing\n\
             test_errors if to_number(\"x\") == 1\n\
             helper if true\n",
        ),
    ]);
    let outcomes = run_tests(&src).expect("compiles");
    let summary: Vec<(&str, bool, bool)> = outcomes
        .iter()
        .map(|o| (o.name.as_str(), o.passed, o.error.is_some()))
        .collect();
    assert_eq!(
        summary,
        [
            ("credproxy.authz_test.test_passes", true, false),
            ("credproxy.authz_test.test_fails", false, false),
            ("credproxy.authz_test.test_undefined", false, false),
            ("credproxy.authz_test.test_errors", false, true),
        ]
    );
    assert!(outcomes.iter().all(|o| o.file == "authz_test.rego"));
}

#[test]
fn dangerous_builtins_are_bounded() {
    let engine = compile(&[(
        "a.rego",
        "package credproxy.authz\nallow if { count(numbers.range(1, 100000000)) > 0 }",
    )])
    .expect("compiles");
    let start = std::time::Instant::now();
    let err = engine
        .evaluate(&common::representative_input())
        .expect_err("range too large");
    assert!(start.elapsed() < LIMIT, "took {:?}", start.elapsed());
    assert!(err.to_string().contains("numbers.range"), "{err}");

    let engine = compile(&[(
        "a.rego",
        "package credproxy.authz\nallow if {\n  numbers.range(1, 3) == [1, 2, 3]\n  numbers.range(3, 1) == [3, 2, 1]\n  numbers.range_step(1, 10, 4) == [1, 5, 9]\n  numbers.range_step(10, 1, 3) == [10, 7, 4, 1]\n}",
    )])
    .expect("compiles");
    assert!(
        engine
            .evaluate(&common::representative_input())
            .expect("evaluates")
            .allow
    );

    for call in ["net.cidr_expand(\"::/0\")", "test.sleep(\"10s\")"] {
        let policy = format!("package credproxy.authz\nallow if {{ x := {call}; x != null }}");
        let engine = compile(&[("a.rego", &policy)]).expect("compiles");
        let start = std::time::Instant::now();
        let err = engine
            .evaluate(&common::representative_input())
            .expect_err("disabled");
        assert!(start.elapsed() < LIMIT, "{call} took {:?}", start.elapsed());
        assert!(err.to_string().contains("disabled"), "{err}");
    }
}

#[test]
fn rego_v1_and_future_keyword_imports_are_accepted() {
    for import in [
        "import rego.v1",
        "import future.keywords.if\nimport future.keywords.in",
    ] {
        let policy = format!(
            "package credproxy.authz\n{import}\nallow if \"GET\" in [input.request.method]"
        );
        let engine = compile(&[("a.rego", &policy)]).expect("compiles");
        assert!(
            engine
                .evaluate(&common::representative_input())
                .expect("evaluates")
                .allow
        );
    }
}
