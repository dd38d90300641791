//! Replays the committed fuzz corpus through the same checks as the fuzz targets, so every
//! input the fuzzer ever needed (and every crash it found) stays a `cargo test` regression.
// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::PathBuf;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| check(&data));
        assert!(result.is_ok(), "corpus input {} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "no corpus for {target}");
}

#[test]
fn scrub_stream_corpus() {
    replay("scrub_stream", credproxy_scrub::fuzzing::scrub_stream);
}

#[test]
fn detect_corpus() {
    replay("detect", credproxy_scrub::fuzzing::detect);
}

#[test]
fn events_corpus() {
    replay("events", credproxy_scrub::fuzzing::events);
}

#[test]
fn decode_corpus() {
    replay("decode", credproxy_scrub::fuzzing::decode);
}
