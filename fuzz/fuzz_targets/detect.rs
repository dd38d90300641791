//! Arbitrary placeholders and body: scanning never panics, the stream scanner equals `scan`,
//! and the stream replacer equals `replace_all`.
//! The checks live in `credproxy_scrub::fuzzing` so the corpus replays under `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    credproxy_scrub::fuzzing::detect(data);
});
