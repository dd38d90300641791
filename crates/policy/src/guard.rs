//! Hardening that keeps a runaway policy from taking the proxy down.
//!
//! regorus enforces the execution limit cooperatively: the interpreter reads the clock every
//! few steps and stops with an error once the budget is spent. That covers loops,
//! comprehensions and chains of builtin calls, but not two things:
//!
//! * **recursive functions**: regorus detects recursion between *rules* at run time, but a
//!   function that calls itself (directly or through other functions) recurses on the native
//!   stack until the process aborts with a stack overflow, long before any time check fires.
//!   OPA rejects such policies at compile time; [`check_function_recursion`] does the same.
//! * **a single builtin call doing unbounded work**, which no time check can interrupt:
//!   `numbers.range(1, 100000000)` builds a hundred million values in one call (seconds and
//!   gigabytes), `net.cidr_expand("::/0")` never ends and `test.sleep` blocks the thread.
//!   [`install_builtin_guards`] shadows them with extensions (which regorus looks up before
//!   builtins): the ranges refuse to produce more than [`MAX_RANGE_ELEMENTS`] elements and
//!   the other two fail.

use std::collections::{BTreeMap, BTreeSet};

use regorus::unstable::{Expr, Module, Ref, Rule, RuleHead};
use regorus::{Engine, Value};

use crate::walk::{Visitor, Walker};

/// Most elements `numbers.range` / `numbers.range_step` may return in a policy. Generous for
/// any authorization use (hours of a day, ports of a range) and small enough to build in
/// about a millisecond.
pub(crate) const MAX_RANGE_ELEMENTS: i64 = 100_000;

/// Registers the shadowing extensions on a fresh engine.
pub(crate) fn install_builtin_guards(engine: &mut Engine) -> anyhow::Result<()> {
    engine.add_extension(
        "numbers.range".to_owned(),
        2,
        Box::new(|args: Vec<Value>| {
            let (from, to) = (int_arg(&args, 0)?, int_arg(&args, 1)?);
            bounded_range("numbers.range", from, to, 1)
        }),
    )?;
    engine.add_extension(
        "numbers.range_step".to_owned(),
        3,
        Box::new(|args: Vec<Value>| {
            let (from, to, step) = (int_arg(&args, 0)?, int_arg(&args, 1)?, int_arg(&args, 2)?);
            if step <= 0 {
                anyhow::bail!("numbers.range_step: step must be a positive integer");
            }
            bounded_range("numbers.range_step", from, to, step)
        }),
    )?;
    engine.add_extension(
        "net.cidr_expand".to_owned(),
        1,
        Box::new(|_: Vec<Value>| -> anyhow::Result<Value> {
            anyhow::bail!(
                "net.cidr_expand is disabled in credproxy policies (unbounded); \
                 use net.cidr_contains"
            )
        }),
    )?;
    engine.add_extension(
        "test.sleep".to_owned(),
        1,
        Box::new(|_: Vec<Value>| -> anyhow::Result<Value> {
            anyhow::bail!("test.sleep is disabled in credproxy policies")
        }),
    )?;
    Ok(())
}

/// `numbers.range` semantics (both ends included, counting down when `to < from`), with
/// `numbers.range_step`'s rule that the end is only included when a step lands on it.
fn bounded_range(name: &str, from: i64, to: i64, step: i64) -> anyhow::Result<Value> {
    let span = i128::from(to) - i128::from(from);
    let count = span.abs() / i128::from(step) + 1;
    if count > i128::from(MAX_RANGE_ELEMENTS) {
        anyhow::bail!(
            "{name}: {count} elements exceed the credproxy limit of {MAX_RANGE_ELEMENTS}"
        );
    }
    let step = if to < from { -step } else { step };
    let values: Vec<Value> = (0..count as i64)
        .map(|i| Value::from(from + i * step))
        .collect();
    Ok(Value::from(values))
}

fn int_arg(args: &[Value], index: usize) -> anyhow::Result<i64> {
    args.get(index)
        .and_then(|v| v.as_i64().ok())
        .ok_or_else(|| anyhow::anyhow!("argument {} must be an integer", index + 1))
}

/// A cycle among user-defined functions: the file of its first function and the call path.
#[derive(Debug)]
pub(crate) struct RecursionError {
    pub(crate) file: String,
    pub(crate) cycle: Vec<String>,
}

/// Finds a cycle in the call graph of the policy's functions, as OPA's compiler does.
///
/// Calls are resolved the way regorus resolves them: `data.…` is absolute, a leading import
/// alias is replaced by the import's target, anything else is relative to the calling
/// module's package. A call that resolves to no user function (a builtin, an extension) is
/// not an edge. Cycles that go through a *rule* are left to regorus, which detects them at
/// run time and fails the evaluation cleanly.
pub(crate) fn check_function_recursion(modules: &[Ref<Module>]) -> Result<(), RecursionError> {
    let Ok(functions) = regorus::utils::gather_functions(modules) else {
        // regorus reports the same problem (conflicting arities) with a better message when
        // it prepares the engine; nothing to add here.
        return Ok(());
    };

    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for module in modules {
        let Ok(package) = regorus::utils::get_path_string(&module.package.refr, Some("data"))
        else {
            continue;
        };
        let imports = import_aliases(module);
        for rule in &module.policy {
            let Rule::Spec {
                head: RuleHead::Func { refr, .. },
                ..
            } = rule.as_ref()
            else {
                continue;
            };
            let Ok(name) = regorus::utils::get_path_string(refr, Some(&package)) else {
                continue;
            };
            files
                .entry(name.clone())
                .or_insert_with(|| module.package.span.source.get_path().clone());
            let mut calls = Calls(Vec::new());
            let mut walker = Walker::default();
            walker.push_rule(rule);
            walker.run(&mut calls);
            let edges = graph.entry(name).or_default();
            for call in calls.0 {
                let target = resolve_call(&call, &package, &imports);
                if functions.contains_key(&target) {
                    edges.insert(target);
                }
            }
        }
    }

    match find_cycle(&graph) {
        None => Ok(()),
        Some(cycle) => Err(RecursionError {
            file: cycle
                .first()
                .and_then(|f| files.get(f))
                .cloned()
                .unwrap_or_default(),
            cycle: cycle
                .into_iter()
                .map(|f| f.strip_prefix("data.").map(str::to_owned).unwrap_or(f))
                .collect(),
        }),
    }
}

/// `alias -> target path` for the module's `import data.…` statements.
pub(crate) fn import_aliases(module: &Module) -> BTreeMap<String, String> {
    let mut aliases = BTreeMap::new();
    for import in &module.imports {
        let Ok(target) = regorus::utils::get_path_string(&import.refr, None) else {
            continue;
        };
        if !target.starts_with("data.") {
            continue;
        }
        let alias = match &import.r#as {
            Some(span) => span.text().to_owned(),
            None => match target.rsplit('.').next() {
                Some(last) => last.to_owned(),
                None => continue,
            },
        };
        aliases.insert(alias, target);
    }
    aliases
}

pub(crate) fn resolve_call(
    call: &str,
    package: &str,
    imports: &BTreeMap<String, String>,
) -> String {
    if call.starts_with("data.") {
        return call.to_owned();
    }
    let (first, rest) = match call.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (call, None),
    };
    if let Some(target) = imports.get(first) {
        return match rest {
            Some(rest) => format!("{target}.{rest}"),
            None => target.clone(),
        };
    }
    format!("{package}.{call}")
}

/// Depth-first search with an explicit stack (policy call graphs are small, but a recursive
/// search over operator input is what this module exists to avoid). Returns the functions on
/// the first cycle found, the first one repeated at the end.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        OnPath,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    for start in graph.keys() {
        if marks.contains_key(start.as_str()) {
            continue;
        }
        // (node, its successors not yet visited)
        let mut path: Vec<(&str, Vec<&str>)> = Vec::new();
        marks.insert(start, Mark::OnPath);
        path.push((start, successors(graph, start)));
        while let Some((node, pending)) = path.last_mut() {
            let node = *node;
            match pending.pop() {
                None => {
                    marks.insert(node, Mark::Done);
                    path.pop();
                }
                Some(next) => match marks.get(next) {
                    Some(Mark::Done) => {}
                    Some(Mark::OnPath) => {
                        let from = path.iter().position(|(n, _)| *n == next).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            path[from..].iter().map(|(n, _)| (*n).to_owned()).collect();
                        cycle.push(next.to_owned());
                        return Some(cycle);
                    }
                    None => {
                        marks.insert(next, Mark::OnPath);
                        path.push((next, successors(graph, next)));
                    }
                },
            }
        }
    }
    None
}

fn successors<'a>(graph: &'a BTreeMap<String, BTreeSet<String>>, node: &str) -> Vec<&'a str> {
    graph
        .get(node)
        .map(|s| s.iter().rev().map(String::as_str).collect())
        .unwrap_or_default()
}

/// Collects the path of every call it sees.
struct Calls(Vec<String>);

impl Visitor for Calls {
    fn expr(&mut self, expr: &Expr, _: &mut Vec<Ref<Expr>>) -> bool {
        if let Expr::Call { fcn, .. } = expr {
            if let Ok(path) = regorus::utils::get_path_string(fcn, None) {
                self.0.push(path);
            }
        }
        true
    }
}
