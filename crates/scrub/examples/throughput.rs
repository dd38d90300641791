//! Hand-run throughput check (timing is never asserted):
//! `cargo run --release -p credproxy-scrub --example throughput`
// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use credproxy_core::Secret;
use credproxy_scrub::{PlaceholderSet, ScrubEntry, ScrubPatterns};

/// On-CPU time of this thread, so that the figure means something on a shared machine.
fn cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |ns| ns / 1e9)
}

fn report(what: &str, bytes: usize, wall: f64, cpu: f64) {
    eprintln!(
        "{what}: {:.2} GB/s wall, {:.2} GB/s on-CPU",
        bytes as f64 / wall / 1e9,
        bytes as f64 / cpu / 1e9
    );
}

fn body(printable_random: bool) -> Vec<u8> {
    let text: &[u8] = b"data: {\"id\":\"msg_01\",\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"The quick brown fox jumps over the lazy dog, 42 times.\"}}\n\n";
    let mut block = Vec::with_capacity(1 << 20);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    while block.len() < 1 << 20 {
        if printable_random {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            block.extend(x.to_le_bytes().iter().map(|b| b' ' + b % 95));
        } else {
            block.extend_from_slice(text);
        }
    }
    let mut out = Vec::with_capacity(256 << 20);
    while out.len() < 256 << 20 {
        out.extend_from_slice(&block);
    }
    out
}

fn scrub_throughput() {
    let patterns = ScrubPatterns::new(vec![ScrubEntry {
        secret: Secret::new(b"sk-ant-api03-Zq8v3NfR2kLw9TxYb7Hc".to_vec()),
        placeholder: "agent-vault-00000000-0000-0000-0000-000000000001".into(),
        rendered: vec![Secret::new(
            b"Bearer sk-ant-api03-Zq8v3NfR2kLw9TxYb7Hc".to_vec(),
        )],
    }])
    .unwrap();
    eprintln!(
        "{} patterns, longest {}",
        patterns.pattern_count(),
        patterns.max_pattern_len()
    );
    for (name, random) in [("sse text", false), ("printable random", true)] {
        let input = body(random);
        for chunk in [16 << 10, 1 << 10] {
            let mut s = patterns.stream();
            let c0 = cpu_secs();
            let t = Instant::now();
            let mut n = 0;
            for c in input.chunks(chunk) {
                n += s.push(c).len();
            }
            n += s.finish().len();
            let wall = t.elapsed().as_secs_f64();
            assert_eq!(n, input.len());
            report(
                &format!("scrub {name}, {chunk} B chunks"),
                n,
                wall,
                cpu_secs() - c0,
            );
        }
        let set = PlaceholderSet::new(vec![
            "agent-vault-00000000-0000-0000-0000-000000000001".into()
        ])
        .unwrap();
        let mut sc = set.stream_scanner();
        let c0 = cpu_secs();
        let t = Instant::now();
        for c in input.chunks(16 << 10) {
            assert!(sc.push(c).is_empty());
        }
        let wall = t.elapsed().as_secs_f64();
        report(
            &format!("scan {name}, 16 KiB chunks"),
            input.len(),
            wall,
            cpu_secs() - c0,
        );
    }
}

fn main() {
    scrub_throughput();
}
