//! Placeholder detection, secret injection and response scrubbing: the part of credproxy that
//! touches secret bytes in traffic.
//!
//! The agent never holds a real credential. It writes a placeholder where its SDK puts an API
//! key; [`PlaceholderSet::scan`] finds placeholders (and near misses that look like probing,
//! A32) so the proxy can decide where one may be used; [`replace_all`] and [`StreamReplacer`]
//! swap in the secret on the way out; [`ScrubPatterns`] and [`StreamScrubber`] remove the
//! secret, in every common rendering, from what comes back (A1–A3, A5). [`decode`] undoes
//! content codings as a response streams, bounded by its input (A4); [`events`] (with the
//! framings in [`sse`]) scrubs across the events of SSE and NDJSON streams and WebSocket
//! messages, where a secret arrives split over several values that the client concatenates.
//!
//! The crate does no I/O and knows nothing of tokio or hyper, so all of this can be
//! property-tested and fuzzed in isolation.
//!
//! Invariant: every streaming type produces exactly what its whole-value counterpart produces
//! for the concatenated input, for every way of splitting that input into chunks, while holding
//! back fewer bytes than its longest pattern; so a body is never buffered and no size can turn
//! scrubbing off.

mod basic;
pub mod decode;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
mod placeholder;
mod render;
mod replace;
mod scrub;
pub mod sse;
mod token;
mod trie;

pub use basic::decode_basic;
pub use placeholder::{Findings, Found, NearMiss, PlaceholderSet, StreamScanner};
pub use render::MARKER;
pub use replace::{replace_all, Encoding, StreamReplacer};
pub use scrub::{ScrubEntry, ScrubPatterns, StreamScrubber, MIN_SECRET_LEN};
pub use sse::{EventStreamScrubber, Message, MessageScrubber, StreamFormat};

/// Why a placeholder set or a set of scrub patterns cannot be built. Messages name
/// placeholders (they are not secret) and entry indexes, never secret values.
#[derive(Debug, thiserror::Error)]
pub enum ScrubError {
    #[error("placeholder {index} is empty")]
    EmptyPlaceholder { index: usize },
    #[error("placeholder {placeholder:?} has a character outside [A-Za-z0-9_-]")]
    PlaceholderNotToken { placeholder: String },
    #[error("placeholder {placeholder:?} is configured twice (credentials {first} and {second})")]
    DuplicatePlaceholder {
        placeholder: String,
        first: usize,
        second: usize,
    },
    #[error("placeholder {inner:?} is contained in placeholder {outer:?}, so a request using it is ambiguous")]
    AmbiguousPlaceholders { inner: String, outer: String },
    #[error(
        "secret of scrub entry {entry} is shorter than {min} bytes and cannot be scrubbed reliably"
    )]
    SecretTooShort { entry: usize, min: usize },
    #[error("the replacement for scrub entry {entry:?} contains a rendering of a secret")]
    ReplacementContainsSecret { entry: Option<usize> },
    #[error("cannot build the matching automaton")]
    Automaton(#[source] aho_corasick::BuildError),
}
