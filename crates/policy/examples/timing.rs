//! A hand-run timing of the default policy (not a benchmark harness):
//!
//! ```sh
//! cargo run -p credproxy-policy --release --example timing
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use credproxy_policy::{PolicyEngine, PolicySource};

fn default_policy_evaluation_cost() {
    let engine = PolicyEngine::compile(&PolicySource::builtin(), Duration::from_millis(50))
        .expect("compiles");
    let allowed = common::representative_input();
    let mut denied = common::representative_input();
    denied.credentials.push(common::openai_unbound());
    let mut no_credentials = common::representative_input();
    no_credentials.credentials.clear();

    for (name, input) in [
        ("allow, 1 credential", &allowed),
        ("allow, no credentials", &no_credentials),
        ("deny, 2 credentials", &denied),
    ] {
        for _ in 0..1_000 {
            engine.evaluate(input).expect("evaluates");
        }
        let mut samples: Vec<Duration> = (0..20_000)
            .map(|_| {
                let start = Instant::now();
                engine.evaluate(input).expect("evaluates");
                start.elapsed()
            })
            .collect();
        samples.sort();
        let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
        // On a shared machine the low percentiles are the closest to the uncontended cost.
        eprintln!(
            "{name}: min {:?}, p10 {:?}, p50 {:?}, p99 {:?}, mean {mean:?}",
            samples[0],
            samples[samples.len() / 10],
            samples[samples.len() / 2],
            samples[samples.len() * 99 / 100]
        );
    }

    let mut samples: Vec<Duration> = (0..20_000)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(allowed.to_value());
            start.elapsed()
        })
        .collect();
    samples.sort();
    eprintln!(
        "input.to_value(): min {:?}, p10 {:?}, p50 {:?}",
        samples[0],
        samples[samples.len() / 10],
        samples[samples.len() / 2]
    );
}

fn main() {
    default_policy_evaluation_cost();
}
