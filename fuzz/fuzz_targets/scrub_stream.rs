//! Arbitrary secret, body and chunking: streaming scrub equals whole-value scrub, the carry
//! stays under the longest pattern, and the raw secret never survives in copied bytes.
//! The checks live in `credproxy_scrub::fuzzing` so the corpus replays under `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    credproxy_scrub::fuzzing::scrub_stream(data);
});
