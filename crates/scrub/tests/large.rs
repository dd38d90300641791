//! A body far past any buffering threshold is scrubbed to its last byte (A5), and the
//! scrubber's carry stays under the longest pattern throughout.
// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

use credproxy_core::Secret;
use credproxy_scrub::{ScrubEntry, ScrubPatterns};

const PLACEHOLDER: &str = "agent-vault-00000000-0000-0000-0000-000000000001";
const SECRET: &[u8] = b"sk-live-Zq8v3NfR2kLw9TxY";

#[test]
fn sixty_four_mib_streamed_in_16_kib_chunks_is_scrubbed_at_the_very_end() {
    const SIZE: usize = 64 << 20;
    const CHUNK: usize = 16 << 10;
    let patterns = ScrubPatterns::new(vec![ScrubEntry {
        secret: Secret::new(SECRET.to_vec()),
        placeholder: PLACEHOLDER.into(),
        rendered: vec![],
    }])
    .unwrap();

    // Printable pseudo-random text (xorshift), so that every byte is a plausible pattern start;
    // one 64 KiB block repeated, because generating 64 MiB byte by byte is slow in debug.
    let mut block = Vec::with_capacity(64 << 10);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while block.len() < 64 << 10 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        block.extend(x.to_le_bytes().iter().map(|b| b'!' + b % 94));
    }
    let mut input = Vec::with_capacity(SIZE);
    while input.len() < SIZE {
        input.extend_from_slice(&block);
    }
    input.truncate(SIZE - SECRET.len());
    // One copy straddling a chunk boundary in the middle, one at the very end.
    let mid = SIZE / 2 - 5;
    input[mid..mid + SECRET.len()].copy_from_slice(SECRET);
    input.extend_from_slice(SECRET);
    assert_eq!(input.len(), SIZE);

    let mut stream = patterns.stream();
    let mut out = Vec::with_capacity(SIZE);
    let mut max_held = 0;
    for chunk in input.chunks(CHUNK) {
        out.extend(stream.push(chunk));
        max_held = max_held.max(stream.held());
        assert!(stream.held() < patterns.max_pattern_len());
    }
    out.extend(stream.finish());

    assert_eq!(stream.count(), 2);
    assert!(max_held < patterns.max_pattern_len(), "held {max_held}");
    assert!(out.ends_with(PLACEHOLDER.as_bytes()));
    assert_eq!(out.len(), SIZE + 2 * (PLACEHOLDER.len() - SECRET.len()));
    assert!(memchr::memmem::find(&out, SECRET).is_none());
    assert_eq!(out[..mid], input[..mid]);
}
