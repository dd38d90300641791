//! Where a listener binds and who connected to it.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A listener's bind address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "tcp:{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The peer of an accepted connection, as far as the transport can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddr {
    Tcp(SocketAddr),
    /// A Unix-socket peer; uid and pid come from `SO_PEERCRED` when the platform gives them.
    Unix {
        uid: Option<u32>,
        pid: Option<i32>,
    },
}

impl PeerAddr {
    /// The transport kind, as used in logs, metrics and (later) policy input.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerAddr::Tcp(_) => "tcp",
            PeerAddr::Unix { .. } => "unix",
        }
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Tcp(a) => write!(f, "{a}"),
            PeerAddr::Unix { uid, pid } => {
                f.write_str("unix")?;
                if let Some(uid) = uid {
                    write!(f, " uid={uid}")?;
                }
                if let Some(pid) = pid {
                    write!(f, " pid={pid}")?;
                }
                Ok(())
            }
        }
    }
}
