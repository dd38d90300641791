//! Running a policy's Rego unit tests (`test_` rules), like `opa test`.

use std::collections::BTreeSet;
use std::time::Duration;

use regorus::unstable::{Expr, Rule, RuleHead};
use regorus::Value;

use crate::engine::{build_engine, compile_error, is_time_limit};
use crate::error::PolicyError;
use crate::source::PolicySource;

/// Time limit for each test rule. Far above any real test, there only so that a runaway test
/// reports a failure instead of hanging `credproxy policy test`.
pub const TEST_LIMIT: Duration = Duration::from_secs(5);

/// The result of one test rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    /// `package.rule`, e.g. `credproxy.authz_test.test_deny_without_identity`.
    pub name: String,
    /// The file that defines the rule (the first one, if several do).
    pub file: String,
    /// True when the rule evaluated to a value other than `false` (OPA's rule).
    pub passed: bool,
    /// Why the evaluation failed, when it did not merely come out false or undefined.
    pub error: Option<String>,
    /// Output of Rego `print` calls made by the test, prefixed with `file:line:`.
    pub prints: Vec<String>,
}

/// Compiles every file of `src`, test files included, and evaluates each rule whose name
/// starts with `test_` on its own, in file order. Tests usually set their input with
/// `with input as …`; there is no input otherwise.
///
/// `Err` only when the files do not compile; a failing test is an `Ok` outcome with
/// `passed: false`.
pub fn run_tests(src: &PolicySource) -> Result<Vec<TestOutcome>, PolicyError> {
    let names: Vec<String> = src.files.iter().map(|(name, _)| name.clone()).collect();
    let mut engine = build_engine(src.files.iter(), TEST_LIMIT)?;

    let mut seen = BTreeSet::new();
    let mut tests = Vec::new();
    for module in engine.get_modules().iter() {
        let Ok(package) = regorus::utils::get_path_string(&module.package.refr, None) else {
            continue;
        };
        let file = module.package.span.source.get_path().clone();
        for rule in &module.policy {
            // Tests are plain rules (`test_x if …`, `test_x := …`), not functions or sets.
            let Rule::Spec {
                head: RuleHead::Compr { refr, .. },
                ..
            } = rule.as_ref()
            else {
                continue;
            };
            let Expr::Var { span, .. } = refr.as_ref() else {
                continue;
            };
            let rule_name = span.text();
            if !rule_name.starts_with("test_") {
                continue;
            }
            let name = format!("{package}.{rule_name}");
            if seen.insert(name.clone()) {
                tests.push((name, file.clone()));
            }
        }
    }

    // Prepare once (analysis and scheduling), so that compile errors surface as such and
    // every test clone starts prepared.
    engine
        .eval_query("true".to_owned(), false)
        .map_err(|e| compile_error(&names, &e))?;

    let mut outcomes = Vec::with_capacity(tests.len());
    for (name, file) in tests {
        let mut test = engine.clone();
        let (passed, error) = match test.eval_rule(format!("data.{name}")) {
            Ok(Value::Bool(false) | Value::Undefined) => (false, None),
            Ok(_) => (true, None),
            Err(e) if is_time_limit(&e) => (
                false,
                Some(format!("test exceeded the limit of {TEST_LIMIT:?}")),
            ),
            Err(e) => (false, Some(format!("{e:#}"))),
        };
        let prints = test.take_prints().unwrap_or_default();
        outcomes.push(TestOutcome {
            name,
            file,
            passed,
            error,
            prints,
        });
    }
    Ok(outcomes)
}
