//! The token alphabet: the characters a placeholder is made of and that "glue" to it.
//!
//! Every placeholder is a single token, so "is this exactly a placeholder" becomes "is this
//! maximal run of token characters equal to one", a question that needs no look-behind and only
//! a bounded look-ahead in a stream.

/// `[A-Za-z0-9_-]`, as a table so that run scanning is one load per byte.
static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
        b += 1;
    }
    t
};

pub(crate) fn is_token(b: u8) -> bool {
    TOKEN[b as usize]
}

/// End of the run that starts at `from` and consists of bytes whose token-ness is `token`.
pub(crate) fn run_end(data: &[u8], from: usize, token: bool) -> usize {
    data[from..]
        .iter()
        .position(|&b| TOKEN[b as usize] != token)
        .map_or(data.len(), |p| from + p)
}

/// Splits `data` into maximal runs: `(start, end, is_token)`.
pub(crate) fn runs(data: &[u8]) -> impl Iterator<Item = (usize, usize, bool)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= data.len() {
            return None;
        }
        let tok = is_token(data[i]);
        let j = run_end(data, i, tok);
        let run = (i, j, tok);
        i = j;
        Some(run)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_runs() {
        let r: Vec<_> = runs(b"a-1 =x_").collect();
        assert_eq!(r, vec![(0, 3, true), (3, 5, false), (5, 7, true)]);
        assert!(runs(b"").next().is_none());
        assert!(!is_token(b'.') && is_token(b'_') && !is_token(0xc3));
    }
}
