//! Unit tests. Handshake tests run real rustls client/server pairs over
//! `tokio::io::duplex`; nothing here touches the network.

#![allow(clippy::unwrap_used)]

mod ca;
mod leaf;
mod support;
mod upstream;
