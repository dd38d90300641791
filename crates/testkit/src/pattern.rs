//! The deterministic byte pattern served by `GET /fixed/{n}`.

use std::sync::OnceLock;

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Size of each data frame sent by `/fixed/{n}`.
pub const CHUNK_SIZE: usize = 64 * 1024;

const PERIOD: usize = 251;

/// Byte `i` of the pattern: `(i % 251) as u8`.
pub fn pattern_byte(i: u64) -> u8 {
    (i % PERIOD as u64) as u8
}

/// The first `n` pattern bytes, lazily.
pub fn fixed_body(n: u64) -> impl Iterator<Item = u8> {
    (0..n).map(pattern_byte)
}

/// The first `n` pattern bytes, materialized (only for small `n`).
pub fn fixed_bytes(n: usize) -> Vec<u8> {
    fixed_body(n as u64).collect()
}

/// A buffer of `CHUNK_SIZE + PERIOD` pattern bytes; any chunk of up to
/// `CHUNK_SIZE` bytes starting at offset `o` is `buf[o % 251..][..len]`.
fn pattern_buf() -> &'static Bytes {
    static BUF: OnceLock<Bytes> = OnceLock::new();
    BUF.get_or_init(|| Bytes::from(fixed_bytes(CHUNK_SIZE + PERIOD)))
}

/// The pattern bytes `[offset, offset + len)`, `len <= CHUNK_SIZE`, zero-copy.
pub(crate) fn pattern_chunk(offset: u64, len: usize) -> Bytes {
    assert!(len <= CHUNK_SIZE);
    let start = (offset % PERIOD as u64) as usize;
    pattern_buf().slice(start..start + len)
}

/// Lowercase hex sha256 of the first `n` pattern bytes (what `/fixed/{n}` serves).
pub fn fixed_sha256(n: u64) -> String {
    let mut h = Sha256::new();
    let mut off = 0u64;
    while off < n {
        let len = (n - off).min(CHUNK_SIZE as u64) as usize;
        h.update(pattern_chunk(off, len));
        off += len as u64;
    }
    hex::encode(h.finalize())
}

/// Lowercase hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_hash_matches_naive() {
        for n in [0u64, 1, 250, 251, 252, 65_536, 65_537, 200_000] {
            let naive = sha256_hex(&fixed_bytes(n as usize));
            assert_eq!(fixed_sha256(n), naive, "n={n}");
        }
    }
}
