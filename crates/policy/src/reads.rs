//! What a compiled policy can depend on: the parts of `input` it reads and whether every
//! builtin it calls is a function of its arguments. [`crate::cache`] keys decisions on the
//! former and is switched off by the latter.
//!
//! The analysis over-approximates and never under-approximates: a read it cannot place
//! exactly is widened to the enclosing document (up to the whole of `input`), and a call or
//! `with` it cannot classify switches the cache off. Widening only costs hits; missing a read
//! would serve one request's decision to another, so every doubt goes the safe way.
//!
//! * `input.a.b` and `input["a"]["b"]` read the path `a.b`; a reference is cut at its first
//!   index that is not a string literal (`input.request[k]`, `input.credentials[0].id` read
//!   `request` and `credentials`); those indexes are analysed as expressions in turn.
//! * `input` anywhere else (a function argument, `x := input`, `walk(input)`,
//!   `some k, v in input`, the target of `with input as …`) reads the whole document.
//! * An `import input.request as req` makes `req` a read of `request` wherever a variable of
//!   that name appears, in any module (regorus scopes imports by package; a same-named local
//!   variable only widens the result).
//! * Rules read `input` with the same input, and every rule of every module is analysed, so
//!   a read through a helper rule or function is found where it is written. `data` holds only
//!   the policy's own rules (credproxy loads no external data).

use std::collections::BTreeMap;

use regorus::unstable::{Expr, Module, Ref};

use crate::guard::{import_aliases, resolve_call};
use crate::walk::{Visitor, Walker};

/// Builtins whose result is not a function of their arguments (the clock, randomness, the
/// network, the host). A policy calling one cannot be cached. Some are not compiled into
/// credproxy's regorus; they are listed so that enabling them later stays safe.
pub(crate) const NONDETERMINISTIC_BUILTINS: &[&str] = &[
    "http.send",
    "net.lookup_ip_addr",
    "opa.runtime",
    "rand.intn",
    "time.now_ns",
    "uuid.rfc4122",
];

/// Builtins (and credproxy's shadowing extensions, see [`crate::guard`], and `print`, whose
/// output is dropped) reviewed as pure: same arguments, same result, on any thread at any
/// time. Sorted. A call to anything not here and not a function of the policy switches the
/// cache off, so a builtin added by a future regorus (or by enabling a regorus feature)
/// stays uncached until someone reviews it; a test checks that every builtin regorus has is
/// in one list or the other.
///
/// One caveat, accepted: the `time.*` functions given the zone `"Local"` use the host's time
/// zone, so a decision cached before the host's zone changes may differ from one evaluated
/// after. A policy that depends on this reads a time, and the only time that keeps it
/// cacheable is `input.time`, part of the key: only requests within the same second share
/// such a decision.
pub(crate) const DETERMINISTIC_BUILTINS: &[&str] = &[
    "__builtin_sets.intersection",
    "__builtin_sets.union",
    "abs",
    "array.concat",
    "array.reverse",
    "array.slice",
    "base64.decode",
    "base64.encode",
    "base64.is_valid",
    "base64url.decode",
    "base64url.encode",
    "base64url.encode_no_pad",
    "bits.and",
    "bits.lsh",
    "bits.negate",
    "bits.or",
    "bits.rsh",
    "bits.xor",
    "ceil",
    "concat",
    "contains",
    "count",
    "endswith",
    "floor",
    "format_int",
    "glob.match",
    "glob.quote_meta",
    "hex.decode",
    "hex.encode",
    "indexof",
    "indexof_n",
    "intersection",
    "is_array",
    "is_boolean",
    "is_null",
    "is_number",
    "is_object",
    "is_set",
    "is_string",
    "json.filter",
    "json.is_valid",
    "json.marshal",
    "json.marshal_with_options",
    "json.remove",
    "json.unmarshal",
    "lower",
    "max",
    "min",
    "net.cidr_contains",
    "net.cidr_expand",
    "net.cidr_is_valid",
    "numbers.range",
    "numbers.range_step",
    "object.filter",
    "object.get",
    "object.keys",
    "object.remove",
    "object.subset",
    "object.union",
    "object.union_n",
    "print",
    "product",
    "regex.find_all_string_submatch_n",
    "regex.find_n",
    "regex.is_valid",
    "regex.match",
    "regex.replace",
    "regex.split",
    "regex.template_match",
    "replace",
    "round",
    "semver.compare",
    "semver.is_valid",
    "sort",
    "split",
    "sprintf",
    "startswith",
    "strings.any_prefix_match",
    "strings.any_suffix_match",
    "strings.count",
    "strings.replace_n",
    "strings.reverse",
    "substring",
    "sum",
    "test.sleep",
    "time.add_date",
    "time.clock",
    "time.date",
    "time.diff",
    "time.format",
    "time.parse_duration_ns",
    "time.parse_ns",
    "time.parse_rfc3339_ns",
    "time.weekday",
    "to_number",
    "trace",
    "trim",
    "trim_left",
    "trim_prefix",
    "trim_right",
    "trim_space",
    "trim_suffix",
    "type_name",
    "union",
    "units.parse",
    "units.parse_bytes",
    "upper",
];

/// What [`analyse`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reads {
    /// The policy's decision depends on `input` through these paths only (minimal: no path
    /// is a prefix of another; the empty path is the whole document), sorted.
    Paths(Vec<Vec<String>>),
    /// The decision may depend on something outside `input`; the reason names it.
    Uncacheable(String),
}

/// Analyses the parsed modules of one policy generation.
pub(crate) fn analyse(modules: &[Ref<Module>]) -> Reads {
    let Ok(functions) = regorus::utils::gather_functions(modules) else {
        return Reads::Uncacheable("its functions could not be listed".to_owned());
    };

    // `import input.x.y as z`: `z` stands for the path `x.y`, in every module.
    let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut reads = InputReads {
        aliases: BTreeMap::new(),
        paths: Vec::new(),
        calls: Vec::new(),
        foreign_with: None,
    };
    for module in modules {
        for import in &module.imports {
            let mut more = Vec::new();
            match input_path_of(&import.refr, &BTreeMap::new(), &mut more) {
                // `import input` changes nothing.
                Some(path) if path.is_empty() => {}
                Some(path) => {
                    let alias = match &import.r#as {
                        Some(span) => span.text().to_owned(),
                        None => match path.last() {
                            Some(last) => last.clone(),
                            None => continue,
                        },
                    };
                    // A cut import (`import input.a[x]`) cannot be resolved statically.
                    let full = path.len() == ref_depth(&import.refr);
                    aliases.insert(alias, if full { path } else { Vec::new() });
                }
                None => {}
            }
        }
    }
    reads.aliases = aliases;

    for module in modules {
        let Ok(package) = regorus::utils::get_path_string(&module.package.refr, Some("data"))
        else {
            return Reads::Uncacheable("a package path could not be read".to_owned());
        };
        let imports = import_aliases(module);
        let mut walker = Walker::default();
        for rule in &module.policy {
            walker.push_rule(rule);
        }
        reads.calls.clear();
        walker.run(&mut reads);
        if let Some(target) = reads.foreign_with.take() {
            return Reads::Uncacheable(format!(
                "it uses `with {target}` (only `with input…` keeps decisions cacheable)"
            ));
        }
        for call in &reads.calls {
            let Some(call) = call else {
                return Reads::Uncacheable("it makes a call whose target is not a path".to_owned());
            };
            if NONDETERMINISTIC_BUILTINS.contains(&call.as_str()) {
                return Reads::Uncacheable(format!("it calls {call}"));
            }
            if DETERMINISTIC_BUILTINS.binary_search(&call.as_str()).is_ok()
                || functions.contains_key(&resolve_call(call, &package, &imports))
            {
                continue;
            }
            return Reads::Uncacheable(format!(
                "it calls {call}, which credproxy does not know to be deterministic"
            ));
        }
    }
    Reads::Paths(minimal(reads.paths))
}

/// Sorted, deduplicated, and without any path that extends another.
fn minimal(mut paths: Vec<Vec<String>>) -> Vec<Vec<String>> {
    paths.sort();
    paths.dedup();
    let mut kept: Vec<Vec<String>> = Vec::new();
    for path in paths {
        // Sorted order puts a prefix right before the paths that extend it.
        if kept.last().is_some_and(|prefix| path.starts_with(prefix)) {
            continue;
        }
        kept.push(path);
    }
    kept
}

struct InputReads {
    aliases: BTreeMap<String, Vec<String>>,
    paths: Vec<Vec<String>>,
    /// Call paths of the module being walked; `None` for a call whose target is no path.
    calls: Vec<Option<String>>,
    /// The first `with` target that is not under `input`.
    foreign_with: Option<String>,
}

impl Visitor for InputReads {
    fn expr(&mut self, expr: &Expr, more: &mut Vec<Ref<Expr>>) -> bool {
        match expr {
            Expr::RefDot { .. } | Expr::RefBrack { .. } => {
                let mut indexes = Vec::new();
                match input_path_of(expr, &self.aliases, &mut indexes) {
                    Some(path) => {
                        self.paths.push(path);
                        // The chain itself is accounted for; its computed indexes are not.
                        more.extend(indexes);
                        false
                    }
                    None => true,
                }
            }
            Expr::Var { span, .. } => {
                if let Some(path) = root_path(span.text(), &self.aliases) {
                    self.paths.push(path);
                }
                true
            }
            Expr::Call { fcn, .. } => {
                self.calls
                    .push(regorus::utils::get_path_string(fcn, None).ok());
                true
            }
            _ => true,
        }
    }

    fn with_target(&mut self, target: &Expr) {
        let mut ignored = Vec::new();
        if self.foreign_with.is_none()
            && input_path_of(target, &BTreeMap::new(), &mut ignored).is_none()
        {
            self.foreign_with = Some(
                regorus::utils::get_path_string(target, None)
                    .unwrap_or_else(|_| target.span().text().to_owned()),
            );
        }
    }
}

/// The path a variable named `name` stands for, when it stands for (part of) `input`.
fn root_path(name: &str, aliases: &BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    if name == "input" {
        return Some(Vec::new());
    }
    aliases.get(name).cloned()
}

/// For a reference chain rooted at `input` (or an alias of part of it): the path it reads,
/// cut at the first index that is not a string literal. Every index that is not a string
/// literal is added to `indexes`. `None` when the chain is rooted elsewhere.
fn input_path_of(
    expr: &Expr,
    aliases: &BTreeMap<String, Vec<String>>,
    indexes: &mut Vec<Ref<Expr>>,
) -> Option<Vec<String>> {
    // Innermost last.
    let mut components: Vec<Option<String>> = Vec::new();
    let mut found = Vec::new();
    let mut current = expr;
    let root = loop {
        match current {
            Expr::RefDot { refr, field, .. } => {
                components.push(Some(field.0.text().to_owned()));
                current = refr;
            }
            Expr::RefBrack { refr, index, .. } => {
                match index.as_ref() {
                    Expr::String { value, .. } | Expr::RawString { value, .. } => {
                        match value.as_string() {
                            Ok(s) => components.push(Some(s.as_ref().to_owned())),
                            Err(_) => {
                                components.push(None);
                                found.push(index.clone());
                            }
                        }
                    }
                    _ => {
                        components.push(None);
                        found.push(index.clone());
                    }
                }
                current = refr;
            }
            Expr::Var { span, .. } => break root_path(span.text(), aliases)?,
            _ => return None,
        }
    };
    let mut path = root;
    for component in components.into_iter().rev() {
        match component {
            Some(c) => path.push(c),
            None => break,
        }
    }
    indexes.extend(found);
    Some(path)
}

/// The number of components after the root of a reference chain.
fn ref_depth(expr: &Expr) -> usize {
    let mut depth = 0;
    let mut current = expr;
    loop {
        match current {
            Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => {
                depth += 1;
                current = refr;
            }
            _ => return depth,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::build_engine;

    fn analyse_policy(body: &str) -> Reads {
        let files = [(
            "p.rego".to_owned(),
            format!("package credproxy.authz\n\n{body}\n"),
        )];
        let mut engine = build_engine(files.iter(), Duration::from_secs(1)).expect("compiles");
        analyse(engine.get_modules())
    }

    fn paths(list: &[&str]) -> Reads {
        Reads::Paths(
            list.iter()
                .map(|p| {
                    p.split('.')
                        .filter(|c| !c.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .collect(),
        )
    }

    fn uncacheable(reads: &Reads, mentions: &str) {
        match reads {
            Reads::Uncacheable(why) => assert!(why.contains(mentions), "{why}"),
            Reads::Paths(p) => panic!("cacheable by {p:?}, expected off because of {mentions}"),
        }
    }

    #[test]
    fn the_default_policy_reads_identity_credentials_and_three_request_fields() {
        let src = crate::PolicySource::builtin();
        let mut engine = build_engine(src.serving_files(), Duration::from_secs(1)).unwrap();
        assert_eq!(
            analyse(engine.get_modules()),
            paths(&[
                "credentials",
                "identity",
                "request.allowlisted",
                "request.authority",
                "request.host",
            ])
        );
    }

    #[test]
    fn references_are_cut_at_the_first_computed_index() {
        assert_eq!(
            analyse_policy(r#"allow if input.request["path"] == "/" "#),
            paths(&["request.path"])
        );
        assert_eq!(
            analyse_policy("allow if { some k; input.request[k] == \"x\" }"),
            paths(&["request"])
        );
        assert_eq!(
            analyse_policy("allow if input.credentials[0].id == \"x\""),
            paths(&["credentials"])
        );
        assert_eq!(
            analyse_policy("allow if { some k; input[k] == \"x\" }"),
            paths(&[""])
        );
        // A computed index is itself analysed.
        assert_eq!(
            analyse_policy(
                "m := {\"GET\": true}\nallow if input.listener[input.request.method] == true"
            ),
            paths(&["listener", "request.method"])
        );
        assert_eq!(
            analyse_policy("m := {\"GET\": true}\nallow if m[input.request.method]"),
            paths(&["request.method"])
        );
    }

    #[test]
    fn bare_input_is_the_whole_document() {
        for body in [
            "allow if { x := input; x.time == \"\" }",
            "allow if { some k, _ in input; k == \"x\" }",
            "allow if json.marshal(input) != \"\"",
            "allow if object.get(input, \"time\", \"\") != \"\"",
            "allow if count(object.keys(input)) > 9",
            "allow if f(input)\nf(x) if x.time == \"\"",
        ] {
            assert_eq!(analyse_policy(body), paths(&[""]), "{body}");
        }
    }

    #[test]
    fn reads_through_helpers_comprehensions_and_imports_are_found() {
        assert_eq!(
            analyse_policy("allow if ok(input.request)\nok(r) if r.path == \"/\""),
            paths(&["request"])
        );
        assert_eq!(
            analyse_policy(
                "allow if count([c | some c in input.credentials; c.location == \"query\"]) == 0"
            ),
            paths(&["credentials"])
        );
        assert_eq!(
            analyse_policy("import input.request as req\n\nallow if req.path == \"/\""),
            paths(&["request.path"])
        );
        assert_eq!(
            analyse_policy("import input.listener\n\nallow if listener.peer == \"x\""),
            paths(&["listener.peer"])
        );
        assert_eq!(
            analyse_policy("import input.listener\n\nallow if is_object(listener)"),
            paths(&["listener"])
        );
        assert_eq!(
            analyse_policy(
                "default allow := false\nallow if h\nh if input.time > \"2025\"\nallow if input.listener.peer == \"p\""
            ),
            paths(&["listener.peer", "time"])
        );
        assert_eq!(analyse_policy("allow := true"), paths(&[]));
    }

    #[test]
    fn clock_randomness_and_foreign_with_switch_the_cache_off() {
        uncacheable(&analyse_policy("allow if time.now_ns() > 0"), "time.now_ns");
        uncacheable(
            &analyse_policy("allow if h\nh if rand.intn(\"x\", 10) == 1"),
            "rand.intn",
        );
        uncacheable(
            &analyse_policy("allow if f(1)\nf(x) := y if { y := time.now_ns() + x }"),
            "time.now_ns",
        );
        uncacheable(
            &analyse_policy("allow if h with data.credproxy.authz.k as 2\nh if k == 2\nk := 1"),
            "with data.credproxy.authz.k",
        );
        // `with input…` only changes what the policy reads, which the analysis sees.
        assert_eq!(
            analyse_policy(
                "allow if h with input.request.path as \"/\"\nh if input.request.path == \"/\""
            ),
            paths(&["request.path"])
        );
    }

    #[test]
    fn every_builtin_is_classified_once() {
        assert!(
            DETERMINISTIC_BUILTINS.windows(2).all(|w| w[0] < w[1]),
            "not sorted"
        );
        for name in regorus::unstable::BUILTINS.keys() {
            let pure = DETERMINISTIC_BUILTINS.binary_search(name).is_ok();
            let impure = NONDETERMINISTIC_BUILTINS.contains(name);
            assert!(
                pure != impure,
                "regorus builtin {name} must be reviewed and listed in exactly one of \
                 DETERMINISTIC_BUILTINS and NONDETERMINISTIC_BUILTINS"
            );
        }
    }
}
