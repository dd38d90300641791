//! Domain vocabulary shared by every credproxy crate: destinations and their canonical form,
//! the domain allowlist, listener addresses, and the closed set of request rejections.
//!
//! Invariant: this crate does no I/O and knows nothing of tokio, hyper or rustls, so every
//! rule it encodes (what counts as the same host, which hosts are allowed, which status a
//! rejection maps to) can be tested exhaustively in isolation.

mod allowlist;
mod authority;
mod clock;
pub mod h1;
mod listen_addr;
mod reject;
mod secret;
mod uids;

pub use allowlist::{Allowlist, AllowlistEntry, AllowlistError};
pub use authority::{Authority, AuthorityError, Scheme};
pub use clock::Clock;
pub use listen_addr::{ListenAddr, PeerAddr};
pub use reject::{AuthFailure, MisuseKind, PolicyFailure, Reject, RejectSource, SecretFailure};
pub use secret::Secret;
pub use uids::{UidSet, UidSetError};
