//! The synchronisation facade used by [`crate::group_commit`].
//!
//! The library uses `std`; the loom test (`tests/loom_group_commit.rs`) compiles the same
//! `group_commit.rs` source against a `sync` module that re-exports `loom::sync` instead, so the
//! code that is model-checked is the code that ships, with no `cfg(loom)` build.

pub(crate) use std::sync::{Condvar, Mutex};
