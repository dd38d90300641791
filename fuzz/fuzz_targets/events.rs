//! Arbitrary SSE or NDJSON streams with pieces of a secret spliced in anywhere: the output of
//! the cross-event scrubber (then the byte scrubber) does not depend on the chunking, and no
//! channel a client concatenates holds the secret.
//! The checks live in `credproxy_scrub::fuzzing` so the corpus replays under `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    credproxy_scrub::fuzzing::events(data);
});
