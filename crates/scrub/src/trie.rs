//! A prefix trie with failure links, used only to answer "how long is the longest suffix of
//! this data that is a proper prefix of some pattern": the bytes a stream must hold back.
//!
//! aho-corasick does the bulk matching (it has SIMD prefilters); its public automaton API does
//! not expose state depth, so this small Aho-Corasick runs over at most the last
//! `max_len - 1` bytes of each chunk.

use std::collections::VecDeque;

#[derive(Debug)]
pub(crate) struct PrefixTrie {
    nodes: Vec<Node>,
    /// Root transitions, as a table: the root is where most bytes land.
    root: Box<[u32; 256]>,
    max_len: usize,
}

#[derive(Debug, Default)]
struct Node {
    /// Sorted by byte.
    next: Vec<(u8, u32)>,
    fail: u32,
    depth: u32,
}

const ROOT: u32 = 0;
const NONE: u32 = u32::MAX;

impl PrefixTrie {
    pub(crate) fn new<'a>(patterns: impl IntoIterator<Item = &'a [u8]>) -> PrefixTrie {
        let mut nodes = vec![Node::default()];
        let mut max_len = 0;
        for p in patterns {
            max_len = max_len.max(p.len());
            let mut s = ROOT;
            for &b in p {
                let node = &nodes[s as usize];
                s = match node.next.binary_search_by_key(&b, |&(c, _)| c) {
                    Ok(i) => node.next[i].1,
                    Err(i) => {
                        let id = nodes.len() as u32;
                        let depth = node.depth + 1;
                        nodes[s as usize].next.insert(i, (b, id));
                        nodes.push(Node {
                            next: Vec::new(),
                            fail: ROOT,
                            depth,
                        });
                        id
                    }
                };
            }
        }
        let mut root = Box::new([NONE; 256]);
        for &(b, id) in &nodes[ROOT as usize].next {
            root[usize::from(b)] = id;
        }
        let mut trie = PrefixTrie {
            nodes,
            root,
            max_len,
        };
        // Breadth-first, so a node's failure link is computed before its children's.
        let mut queue: VecDeque<u32> = trie.nodes[ROOT as usize]
            .next
            .iter()
            .map(|&(_, id)| id)
            .collect();
        while let Some(s) = queue.pop_front() {
            let children = trie.nodes[s as usize].next.clone();
            for (b, child) in children {
                let mut f = trie.nodes[s as usize].fail;
                let fail = loop {
                    if let Some(t) = trie.child(f, b) {
                        break t;
                    }
                    if f == ROOT {
                        break ROOT;
                    }
                    f = trie.nodes[f as usize].fail;
                };
                trie.nodes[child as usize].fail = fail;
                queue.push_back(child);
            }
        }
        trie
    }

    fn child(&self, s: u32, b: u8) -> Option<u32> {
        if s == ROOT {
            let t = self.root[usize::from(b)];
            return (t != NONE).then_some(t);
        }
        let next = &self.nodes[s as usize].next;
        next.binary_search_by_key(&b, |&(c, _)| c)
            .ok()
            .map(|i| next[i].1)
    }

    /// Length of the longest suffix of `data` that is a proper prefix of some pattern; always
    /// less than the longest pattern.
    pub(crate) fn held_len(&self, data: &[u8]) -> usize {
        let from = data.len() - data.len().min(self.max_len.saturating_sub(1));
        let mut s = ROOT;
        for &b in &data[from..] {
            s = loop {
                if let Some(t) = self.child(s, b) {
                    break t;
                }
                if s == ROOT {
                    break ROOT;
                }
                s = self.nodes[s as usize].fail;
            };
        }
        // The failure chain lists every suffix that is a trie node, longest first; a node with
        // children is a proper prefix, a leaf is only a complete pattern.
        while s != ROOT && self.nodes[s as usize].next.is_empty() {
            s = self.nodes[s as usize].fail;
        }
        self.nodes[s as usize].depth as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(patterns: &[&[u8]], data: &[u8]) -> usize {
        (0..=data.len())
            .rev()
            .find(|&k| {
                let suffix = &data[data.len() - k..];
                patterns
                    .iter()
                    .any(|p| p.len() > k && p.starts_with(suffix))
            })
            .unwrap_or(0)
    }

    #[test]
    fn held_len_matches_naive() {
        let patterns: [&[u8]; 4] = [b"abcab", b"bca", b"cabcabd", b"zz"];
        let trie = PrefixTrie::new(patterns.iter().copied());
        let alphabet = b"abcdz";
        // Every string over the alphabet up to length 6.
        let mut data = Vec::new();
        for n in 0..=6u32 {
            for mut code in 0..alphabet.len().pow(n) {
                data.clear();
                for _ in 0..n {
                    data.push(alphabet[code % alphabet.len()]);
                    code /= alphabet.len();
                }
                assert_eq!(trie.held_len(&data), naive(&patterns, &data), "{data:?}");
            }
        }
        assert_eq!(PrefixTrie::new(std::iter::empty()).held_len(b"abc"), 0);
    }
}
