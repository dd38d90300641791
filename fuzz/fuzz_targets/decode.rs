//! Arbitrary bodies: compressed, they decode back to themselves in any chunking; taken as
//! compressed input, the decoders never panic and never exceed their output bound.
//! The checks live in `credproxy_scrub::fuzzing` so the corpus replays under `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    credproxy_scrub::fuzzing::decode(data);
});
