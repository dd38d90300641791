//! The decision cache never changes a decision: for policies reading different parts of the
//! input, a cached engine and an uncached one decide every input alike, including inputs that
//! differ only in a value the policy reads. Policies that can depend on something outside
//! the input get no cache; the cache stays bounded; errors are never cached.

mod common;

use std::time::Duration;

use credproxy_policy::{
    CompileOptions, CredentialInput, Decision, PolicyEngine, PolicyInput, PolicySource,
    CACHE_MAX_ENTRIES,
};

const LIMIT: Duration = Duration::from_secs(1);

fn compile(rego: &str, decision_cache: bool) -> PolicyEngine {
    let src = PolicySource::from_files([(
        "p.rego".to_owned(),
        format!("package credproxy.authz\n\n{rego}\n"),
    )]);
    PolicyEngine::compile_with(&src, LIMIT, CompileOptions { decision_cache }).expect("compiles")
}

/// A small deterministic generator (xorshift64), so failures replay.
struct Rng(u64);

impl Rng {
    fn index(&mut self, len: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % len as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.index(items.len())]
    }

    fn pick_ref<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }
}

fn credential(id: &str, location: &str, bound: bool) -> CredentialInput {
    let mut c = common::github();
    c.id = id.to_owned();
    c.location = location.to_owned();
    c.bound = bound;
    c
}

/// Inputs drawn from small pools of values for every field, so that the same projection
/// comes back often (hits) while the fields a policy ignores keep changing.
fn inputs(count: usize, seed: u64) -> Vec<PolicyInput> {
    let mut rng = Rng(seed);
    let identities = [
        None,
        Some(common::agent("agent-a", &["github-reader"])),
        Some(common::agent("agent-b", &["admin"])),
        Some(common::agent("", &[])),
    ];
    let credential_sets = [
        vec![],
        vec![common::github()],
        vec![credential("github", "query", true)],
        vec![common::github(), common::openai_unbound()],
        vec![credential("other", "path", false)],
    ];
    (0..count)
        .map(|_| {
            let mut input = common::representative_input();
            input.identity = rng.pick_ref(&identities).clone();
            input.request = common::request(
                rng.pick(&["GET", "POST"]),
                rng.pick(&["api.github.com", "a.example", "b.example"]),
                rng.pick(&["/ok", "/no", "", "/ok/"]),
            );
            input.request.port = rng.pick(&[443, 8443]);
            input.request.allowlisted = rng.pick(&[true, true, false]);
            input.request.query_keys = rng
                .pick(&[&[][..], &["token"][..], &["a", "b"][..]])
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
            input.credentials = rng.pick_ref(&credential_sets).clone();
            input.listener.peer = (rng.pick(&["10.0.0.1:1000", "192.168.1.9:2000"])).to_owned();
            input.listener.name = (rng.pick(&["agents", "vm-a"])).to_owned();
            input.time = (rng.pick(&["2025-01-01T12:00:00Z", "2025-12-01T08:00:00Z"])).to_owned();
            input
        })
        .collect()
}

/// A policy and a change of one input value that the policy reads and that flips its
/// decision on the representative input.
struct Case {
    name: &'static str,
    rego: &'static str,
    change: fn(&mut PolicyInput),
}

const CASES: &[Case] = &[
    Case {
        name: "path",
        rego: r#"
default allow := false
allow if input.request.path == "/repos/acme/widgets/pulls"
deny_reasons contains sprintf("path %s", [input.request.path]) if input.request.path == "/no"
"#,
        change: |i| i.request.path = "/no".to_owned(),
    },
    Case {
        name: "time",
        rego: r#"allow if input.time < "2025-06-01T00:00:00Z""#,
        change: |i| i.time = "2025-12-01T08:00:00Z".to_owned(),
    },
    Case {
        name: "peer",
        rego: r#"allow if startswith(input.listener.peer, "10.")"#,
        change: |i| i.listener.peer = "192.168.1.9:2000".to_owned(),
    },
    Case {
        name: "query_keys",
        rego: r#"allow if every k in input.request.query_keys { k != "token" }"#,
        change: |i| i.request.query_keys.push("token".to_owned()),
    },
    Case {
        name: "credential locations",
        rego: r#"
allow := true
deny_reasons contains "a credential in the query" if input.credentials[_].location == "query"
"#,
        change: |i| i.credentials[0].location = "query".to_owned(),
    },
    Case {
        name: "whole input",
        rego: r#"allow if count(json.marshal(input)) < 650"#,
        change: |i| i.listener.name = "x".repeat(200),
    },
    Case {
        name: "helper function given input.request",
        rego: r#"
allow if plain_get(input.request)
plain_get(r) if {
	r.method == "GET"
	r.port == 443
}
"#,
        change: |i| i.request.port = 8443,
    },
    Case {
        name: "comprehension over input.credentials",
        rego: r#"
allow if count({c.id | some c in input.credentials; c.bound}) == count(input.credentials)
"#,
        change: |i| i.credentials[0].bound = false,
    },
    Case {
        name: "identity roles and null identity",
        rego: r#"
allow if "github-reader" in input.identity.roles
deny_reasons contains "anonymous" if input.identity == null
"#,
        change: |i| i.identity = None,
    },
    Case {
        name: "imported alias",
        rego: r#"
import input.request as req
allow if req.method == "GET"
"#,
        change: |i| i.request.method = "POST".to_owned(),
    },
    Case {
        name: "computed index",
        rego: r#"
methods := {"GET": "read", "POST": "write"}
allow if methods[input.request.method] == "read"
"#,
        change: |i| i.request.method = "POST".to_owned(),
    },
    Case {
        name: "empty string versus null",
        rego: r#"allow if input.identity.agent_id == """#,
        change: |i| {
            if let Some(identity) = i.identity.as_mut() {
                identity.agent_id = String::new();
            }
        },
    },
];

fn decide(engine: &PolicyEngine, input: &PolicyInput) -> Result<Decision, String> {
    engine.evaluate(input).map_err(|e| e.to_string())
}

#[test]
fn cached_and_uncached_engines_decide_alike() {
    let inputs = inputs(400, 0x5eed_cafe_f00d_d00d);
    for case in CASES {
        let cached = compile(case.rego, true);
        let uncached = compile(case.rego, false);
        assert!(cached.cache_paths().is_some(), "{}: no cache", case.name);
        assert_eq!(uncached.cache_paths(), None);
        // Twice through, so that the second pass is mostly hits.
        for input in inputs.iter().chain(&inputs) {
            assert_eq!(
                decide(&cached, input),
                decide(&uncached, input),
                "{} ({}) on {input:?}",
                case.name,
                cached.cache_description()
            );
        }
        let stats = cached.cache_stats().expect("a cache");
        assert!(stats.hits >= 400, "{}: {stats:?}", case.name);
        assert!(stats.misses > 0, "{}: {stats:?}", case.name);
    }
}

#[test]
fn inputs_that_differ_only_in_a_value_the_policy_reads_get_their_own_decisions() {
    for case in CASES {
        let cached = compile(case.rego, true);
        let uncached = compile(case.rego, false);
        let base = common::representative_input();
        let mut changed = base.clone();
        (case.change)(&mut changed);
        let before = decide(&uncached, &base);
        let after = decide(&uncached, &changed);
        assert_ne!(before, after, "{}: the change must matter", case.name);
        // The base decision is cached first; the changed input must not be served it.
        for _ in 0..2 {
            assert_eq!(decide(&cached, &base), before, "{}", case.name);
            assert_eq!(
                decide(&cached, &changed),
                after,
                "{} ({})",
                case.name,
                cached.cache_description()
            );
        }
        assert_eq!(cached.cache_stats().expect("a cache").hits, 2);
    }
}

#[test]
fn the_default_policy_is_cached_by_identity_credentials_and_destination() {
    let engine = PolicyEngine::compile(&PolicySource::builtin(), LIMIT).expect("compiles");
    let paths: Vec<String> = engine
        .cache_paths()
        .expect("a cache")
        .iter()
        .map(|p| p.join("."))
        .collect();
    assert_eq!(
        paths,
        [
            "credentials",
            "identity",
            "request.allowlisted",
            "request.authority",
            "request.host"
        ]
    );
    assert_eq!(
        engine.cache_description(),
        "on: keyed by input.credentials, input.identity, input.request.allowlisted, \
         input.request.authority, input.request.host"
    );

    // Another path, peer, time and method: the same decision, from the cache.
    let first = engine.evaluate(&common::representative_input()).unwrap();
    let mut other = common::representative_input();
    other.request.path = "/user".to_owned();
    other.request.method = "POST".to_owned();
    other.listener.peer = "10.0.2.16:40000".to_owned();
    other.time = "2025-01-01T12:00:01Z".to_owned();
    assert_eq!(engine.evaluate(&other).unwrap(), first);
    let stats = engine.cache_stats().unwrap();
    assert_eq!((stats.hits, stats.misses, stats.entries), (1, 1, 1));
}

#[test]
fn builtins_that_read_the_clock_or_randomness_switch_the_cache_off() {
    for (rego, builtin) in [
        (r#"allow if time.now_ns() > 0"#, "time.now_ns"),
        (
            "allow if business_hours\nbusiness_hours if time.clock(time.now_ns())[0] < 24",
            "time.now_ns",
        ),
        (r#"allow if rand.intn("x", 2) < 2"#, "rand.intn"),
        (
            "allow if f(input.request.path)\nf(p) := x if x := rand.intn(p, 2) + 1",
            "rand.intn",
        ),
    ] {
        let engine = compile(rego, true);
        assert_eq!(engine.cache_paths(), None, "{rego}");
        assert_eq!(engine.cache_stats(), None, "{rego}");
        assert!(
            engine.cache_description().contains(builtin),
            "{}",
            engine.cache_description()
        );
        // Still decides, every time.
        for _ in 0..3 {
            assert!(engine.evaluate(&common::representative_input()).is_ok());
        }
    }
}

#[test]
fn with_on_anything_but_input_switches_the_cache_off() {
    let engine = compile(
        "allow if ok with data.credproxy.authz.level as 2\nok if level == 2\nlevel := 1",
        true,
    );
    assert_eq!(engine.cache_paths(), None);
    assert!(engine
        .cache_description()
        .contains("with data.credproxy.authz.level"));
}

#[test]
fn the_cache_is_bounded() {
    let engine = compile(r#"allow if endswith(input.request.path, "0")"#, true);
    let mut input = common::representative_input();
    let total = CACHE_MAX_ENTRIES + CACHE_MAX_ENTRIES / 4;
    for i in 0..total {
        input.request.path = format!("/{i}");
        let decision = engine.evaluate(&input).unwrap();
        assert_eq!(decision.allow, i % 10 == 0, "{i}");
    }
    let stats = engine.cache_stats().unwrap();
    assert!(stats.entries <= CACHE_MAX_ENTRIES, "{stats:?}");
    assert_eq!(stats.misses, total as u64);
    // Still serving, and right, after evictions.
    for i in (0..total).step_by(97) {
        input.request.path = format!("/{i}");
        assert_eq!(engine.evaluate(&input).unwrap().allow, i % 10 == 0, "{i}");
    }
}

#[test]
fn errors_are_never_cached() {
    let engine = compile("allow if to_number(input.request.path) > 0", true);
    let mut input = common::representative_input();
    for _ in 0..3 {
        assert!(engine.evaluate(&input).is_err());
    }
    let stats = engine.cache_stats().unwrap();
    assert_eq!((stats.entries, stats.hits, stats.misses), (0, 0, 3));
    input.request.path = "7".to_owned();
    assert!(engine.evaluate(&input).unwrap().allow);
    assert_eq!(engine.cache_stats().unwrap().entries, 1);
}

#[test]
fn reloading_starts_an_empty_cache() {
    let first = PolicyEngine::compile(&PolicySource::builtin(), LIMIT).unwrap();
    first.evaluate(&common::representative_input()).unwrap();
    assert_eq!(first.cache_stats().unwrap().entries, 1);
    // A clone is the same generation and shares the cache; a new compile does not.
    assert_eq!(first.clone().cache_stats().unwrap().entries, 1);
    let second = PolicyEngine::compile(&PolicySource::builtin(), LIMIT).unwrap();
    assert_eq!(second.cache_stats().unwrap().entries, 0);
}
