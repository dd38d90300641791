//! Where a listener binds and who connected to it.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A listener's bind address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
    /// AF_VSOCK (QEMU/KVM `vhost-vsock`, crosvm). `cid: None` binds any local CID
    /// (`VMADDR_CID_ANY`); `peer_cid`, when set, is the only guest CID whose connections the
    /// listener accepts (others are logged and dropped at accept).
    Vsock {
        cid: Option<u32>,
        port: u32,
        peer_cid: Option<u32>,
    },
    /// Hybrid vsock over a Unix socket, as vhost-user-vsock backends, Firecracker and Cloud
    /// Hypervisor expose it: a guest connect to host port `port` arrives as a Unix connection
    /// on `<path>_<port>` (see [`ListenAddr::vsock_uds_socket`]).
    VsockUds {
        path: PathBuf,
        port: u32,
    },
}

impl ListenAddr {
    /// The Unix socket a hybrid-vsock listener binds: `<path>_<port>`.
    pub fn vsock_uds_socket(path: &Path, port: u32) -> PathBuf {
        let mut s = path.as_os_str().to_owned();
        s.push(format!("_{port}"));
        PathBuf::from(s)
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "tcp:{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Vsock {
                cid,
                port,
                peer_cid,
            } => {
                match cid {
                    Some(c) => write!(f, "vsock:{c}:{port}")?,
                    None => write!(f, "vsock:any:{port}")?,
                }
                if let Some(p) = peer_cid {
                    write!(f, " peer_cid={p}")?;
                }
                Ok(())
            }
            ListenAddr::VsockUds { path, port } => write!(
                f,
                "vsock_uds:{}",
                ListenAddr::vsock_uds_socket(path, *port).display()
            ),
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
    /// An AF_VSOCK peer: the guest's CID (set by the hypervisor, not by the guest) and its
    /// source port.
    Vsock {
        cid: u32,
        port: u32,
    },
    /// A guest that reached a hybrid-vsock listener. The Unix peer is the hypervisor or
    /// vhost-user backend process (uid and pid from `SO_PEERCRED`), not the guest: the guest
    /// is identified by the listener, since each VM has its own socket path. `port` is the
    /// host port the guest connected to.
    VsockUds {
        port: u32,
        uid: Option<u32>,
        pid: Option<i32>,
    },
}

impl PeerAddr {
    /// The transport kind, as used in logs, metrics and policy input: `tcp`, `unix` or
    /// `vsock` (AF_VSOCK and hybrid vsock alike; the display form tells them apart).
    pub fn kind(&self) -> &'static str {
        match self {
            PeerAddr::Tcp(_) => "tcp",
            PeerAddr::Unix { .. } => "unix",
            PeerAddr::Vsock { .. } | PeerAddr::VsockUds { .. } => "vsock",
        }
    }

    /// The guest CID, when the transport reports one (AF_VSOCK only).
    pub fn vsock_cid(&self) -> Option<u32> {
        match self {
            PeerAddr::Vsock { cid, .. } => Some(*cid),
            _ => None,
        }
    }
}

fn write_cred(f: &mut fmt::Formatter<'_>, uid: &Option<u32>, pid: &Option<i32>) -> fmt::Result {
    if let Some(uid) = uid {
        write!(f, " uid={uid}")?;
    }
    if let Some(pid) = pid {
        write!(f, " pid={pid}")?;
    }
    Ok(())
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Tcp(a) => write!(f, "{a}"),
            PeerAddr::Unix { uid, pid } => {
                f.write_str("unix")?;
                write_cred(f, uid, pid)
            }
            PeerAddr::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            PeerAddr::VsockUds { port, uid, pid } => {
                write!(f, "vsock_uds:{port}")?;
                write_cred(f, uid, pid)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_forms() {
        let a = ListenAddr::VsockUds {
            path: "/run/credproxy/vm-a.vsock".into(),
            port: 18790,
        };
        assert_eq!(a.to_string(), "vsock_uds:/run/credproxy/vm-a.vsock_18790");
        let v = ListenAddr::Vsock {
            cid: None,
            port: 18790,
            peer_cid: Some(3),
        };
        assert_eq!(v.to_string(), "vsock:any:18790 peer_cid=3");
        let p = PeerAddr::Vsock { cid: 3, port: 1234 };
        assert_eq!((p.kind(), p.to_string()), ("vsock", "vsock:3:1234".into()));
        assert_eq!(p.vsock_cid(), Some(3));
        let u = PeerAddr::VsockUds {
            port: 18790,
            uid: Some(0),
            pid: None,
        };
        assert_eq!(
            (u.kind(), u.to_string()),
            ("vsock", "vsock_uds:18790 uid=0".into())
        );
    }
}
