//! Property tests of placeholder detection and request-side replacement: chunk-split
//! invariance of the streaming types, and the detection rule checked against a naive
//! tokenizer (A7, A28, A32).
// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

use credproxy_core::Secret;
use credproxy_scrub::{replace_all, Encoding, Findings, PlaceholderSet, StreamReplacer};
use proptest::prelude::*;

const PH: [&str; 3] = [
    "agent-vault-00000000-0000-0000-0000-000000000001",
    "agent-vault-6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b",
    "sk-ant-placeholder-0003",
];

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Body fragments that exercise every rule: exact, altered case, truncated, padded, unknown,
/// the bare prefix, separators of all kinds, random bytes.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (0usize..3).prop_map(|i| PH[i].as_bytes().to_vec()),
        (0usize..3).prop_map(|i| PH[i].to_ascii_uppercase().into_bytes()),
        (0usize..3, 1usize..40).prop_map(|(i, n)| PH[i].as_bytes()[..n.min(PH[i].len())].to_vec()),
        Just(b"agent-vault-".to_vec()),
        Just(b"AgEnT-VaUlT".to_vec()),
        Just(b"agent-vault-11111111-2222-3333-4444-555555555555".to_vec()),
        "[a-zA-Z0-9_-]{1,6}".prop_map(String::into_bytes),
        proptest::sample::select(vec![" ", "\"", ",", "&", "=", "\n", ":", "/", "%20", "\\n"])
            .prop_map(|s| s.as_bytes().to_vec()),
        proptest::collection::vec(any::<u8>(), 1..8),
    ]
}

fn naive_exact(set: &PlaceholderSet, input: &[u8]) -> Vec<(usize, u64, u64)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        if !is_token(input[i]) {
            i += 1;
            continue;
        }
        let j = (i..input.len())
            .find(|&j| !is_token(input[j]))
            .unwrap_or(input.len());
        if let Some(c) = set.lookup(&input[i..j]) {
            out.push((c, i as u64, j as u64));
        }
        i = j;
    }
    out
}

fn scan_chunked(set: &PlaceholderSet, input: &[u8], sizes: &[usize]) -> Findings {
    let mut sc = set.stream_scanner();
    let mut f = Findings::default();
    let mut rest = input;
    let mut it = sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*it.next().unwrap()).min(rest.len());
        f.append(sc.push(&rest[..n]));
        rest = &rest[n..];
    }
    f.append(sc.finish());
    f
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn scanner_and_replacer_are_chunk_invariant(
        frags in proptest::collection::vec(fragment(), 0..30),
        sizes in proptest::collection::vec(1usize..50, 1..10),
        enc in 0u8..3,
    ) {
        let set = PlaceholderSet::new(PH.iter().map(|s| s.to_string()).collect()).unwrap();
        let input = frags.concat();

        let whole = set.scan(&input);
        prop_assert_eq!(&scan_chunked(&set, &input, &sizes), &whole);

        // Exact findings are exactly the tokens equal to a placeholder.
        let exact: Vec<_> = whole.exact.iter().map(|f| (f.credential, f.start, f.end)).collect();
        prop_assert_eq!(exact, naive_exact(&set, &input));
        // Every other token that contains the default prefix, in any case, is a near miss.
        for nm in &whole.near_misses {
            prop_assert!(nm.excerpt.len() <= 24);
            prop_assert!(input[nm.start as usize..].starts_with(nm.excerpt.as_bytes()));
        }
        let lower = input.to_ascii_lowercase();
        for at in lower.windows(11).enumerate().filter(|(_, w)| *w == b"agent-vault").map(|(i, _)| i as u64) {
            let covered = whole.exact.iter().any(|f| f.start <= at && at < f.end)
                || whole.near_misses.iter().any(|n| n.start <= at && at < n.end);
            prop_assert!(covered, "prefix at {} neither exact nor near miss", at);
        }

        let enc = [Encoding::Raw, Encoding::JsonString, Encoding::Percent][usize::from(enc)];
        let values = [Some(&b"s3cret \"one\""[..]), None, Some(&b"two/2"[..])];
        let (replaced, n) = replace_all(&set, &input, &values, enc);
        prop_assert_eq!(n, whole.exact.iter().filter(|f| f.credential != 1).count());
        let mut r = StreamReplacer::new(
            set.clone(),
            values.iter().map(|v| v.map(|v| Secret::new(v.to_vec()))).collect(),
            enc,
        );
        let mut out = Vec::new();
        let mut rest = &input[..];
        let mut it = sizes.iter().cycle();
        while !rest.is_empty() {
            let k = (*it.next().unwrap()).min(rest.len());
            out.extend(r.push(&rest[..k]));
            prop_assert!(r.held() <= set.max_len());
            rest = &rest[k..];
        }
        out.extend(r.finish());
        prop_assert!(out == replaced);
        prop_assert_eq!(r.count(), n);
        // Nothing but exact placeholders changed: with no values, replacement is the identity.
        prop_assert_eq!(replace_all(&set, &input, &[], enc), (input.clone(), 0));
    }
}
