//! The instruction cost of one evaluation of the default policy, with and without the
//! decision cache, for callgrind (not a benchmark harness):
//!
//! ```sh
//! cargo build -p credproxy-policy --release --example cache_cost
//! for n in 1000 3000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n \
//!     target/release/examples/cache_cost hit $n
//! done
//! # per evaluation: (Ir(3000) - Ir(1000)) / 2000, Ir from `callgrind_annotate /tmp/cg.N | head`
//! ```
//!
//! Modes: `uncached` (every evaluation runs the policy), `hit` (a warm cache; the inputs vary
//! in path, method, time and peer, which the default policy does not read), `miss` (every
//! input has a new destination host, so every lookup misses and the cache evicts once full)
//! and `uncached-distinct` (the same inputs as `miss`, without a cache: `miss` minus this is
//! what a miss adds).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use credproxy_policy::{CompileOptions, PolicyEngine, PolicyInput, PolicySource};

fn engine(decision_cache: bool) -> PolicyEngine {
    PolicyEngine::compile_with(
        &PolicySource::builtin(),
        // Generous: callgrind runs the code about fifty times slower.
        Duration::from_secs(10),
        CompileOptions { decision_cache },
    )
    .expect("compiles")
}

/// Requests of one agent to one API: different paths, methods, times and peers.
fn same_destination(count: usize) -> Vec<PolicyInput> {
    (0..count)
        .map(|i| {
            let mut input = common::representative_input();
            input.request.path = format!("/repos/acme/widgets/pulls/{i}");
            input.request.method = if i % 3 == 0 { "POST" } else { "GET" }.to_owned();
            input.time = format!("2025-01-01T12:00:{:02}Z", i % 60);
            input.listener.peer = format!("10.0.2.15:{}", 40000 + i);
            input
        })
        .collect()
}

/// Every request to a host not seen before.
fn new_destinations(prefix: &str, count: usize) -> Vec<PolicyInput> {
    (0..count)
        .map(|i| {
            let mut input = common::representative_input();
            input.request.host = format!("{prefix}{i}.api.github.com");
            input.request.authority = format!("{prefix}{i}.api.github.com:443");
            input
        })
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let n: usize = args
        .next()
        .and_then(|s| s.parse().ok())
        .expect("usage: cache_cost uncached|hit|miss|uncached-distinct N");

    // Warm-up inputs, evaluated first (they fill the cache in `hit`), and measured ones.
    let (engine, warm, inputs) = match mode.as_str() {
        "uncached" => (engine(false), same_destination(64), same_destination(64)),
        "hit" => (engine(true), same_destination(64), same_destination(64)),
        "miss" => (
            engine(true),
            new_destinations("w", 64),
            new_destinations("h", n),
        ),
        "uncached-distinct" => (
            engine(false),
            new_destinations("w", 64),
            new_destinations("h", n),
        ),
        other => panic!("unknown mode {other}"),
    };
    for input in &warm {
        std::hint::black_box(engine.evaluate(input).expect("evaluates"));
    }
    let mut allowed = 0usize;
    for input in inputs.iter().cycle().take(n) {
        if engine.evaluate(input).expect("evaluates").allow {
            allowed += 1;
        }
    }
    eprintln!(
        "{mode} {n}: {allowed} allowed; cache: {}; {:?}",
        engine.cache_description(),
        engine.cache_stats()
    );
}
