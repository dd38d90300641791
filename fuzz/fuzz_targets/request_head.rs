//! Arbitrary bytes as an agent's HTTP/1 request stream, cut into arbitrary pieces: the strict
//! framing tracker never panics, and every split gives the verdict of the whole stream at
//! the same offset (the proxy sees the stream in whatever pieces the network delivers).
//! The property lives in `credproxy_core::h1::fuzz_split` so it is unit-tested too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: how many cuts; then two bytes per cut; the rest is the stream.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n % 9) as usize;
    if rest.len() < 2 * n {
        return;
    }
    let (cuts, stream) = rest.split_at(2 * n);
    let cuts: Vec<usize> = cuts
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as usize)
        .collect();
    if let Err(e) = credproxy_core::h1::fuzz_split(stream, &cuts) {
        panic!("{e}");
    }
});
