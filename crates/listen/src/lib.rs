//! Listeners: every transport an agent can reach the proxy through, behind one type.
//!
//! TCP, Unix, AF_VSOCK and hybrid-vsock Unix sockets (`<path>_<port>`, the form vhost-user
//! backends, Firecracker and Cloud Hypervisor give the host). Each accepted connection knows
//! the listener it came from and a typed peer address, which feed listener binding, policy
//! and audit. An AF_VSOCK listener with an expected peer CID drops every other guest's
//! connection at accept, and a Unix-socket listener with `peer_uids` drops every connection
//! whose `SO_PEERCRED` uid is not in the set, so nothing above this crate sees them (each
//! refusal is logged and reported to the listener's [`RefusedHook`]).
//!
//! Invariant: this crate only binds and accepts; it never reads or writes a byte of the
//! connections it hands out.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use credproxy_core::{ListenAddr, PeerAddr, UidSet};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_vsock::{VsockAddr, VsockListener, VsockStream, VMADDR_CID_ANY};
use tracing::warn;

/// What a connection knows about the listener that accepted it.
#[derive(Debug)]
pub struct ListenerInfo {
    pub name: String,
    /// The bound address; for TCP this holds the real port when `:0` was requested.
    pub addr: ListenAddr,
}

/// A bound listener.
pub struct Listener {
    info: Arc<ListenerInfo>,
    inner: Inner,
    /// Unix-socket listeners: the only uids that may connect (`SO_PEERCRED`).
    peer_uids: Option<UidSet>,
    on_refused: Option<RefusedHook>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("info", &self.info)
            .field("inner", &self.inner)
            .field("peer_uids", &self.peer_uids)
            .finish_non_exhaustive()
    }
}

/// A connection closed at accept, before a byte was read: its peer is not the one the
/// listener admits.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The listener's name.
    pub listener: String,
    /// `peer_uid` (a Unix peer outside `peer_uids`, or one whose credentials could not be
    /// read) or `peer_cid` (a vsock guest other than `peer_cid`).
    pub reason: &'static str,
    pub peer: PeerAddr,
}

/// Called for every connection refused at accept (metrics, audit).
pub type RefusedHook = Arc<dyn Fn(&Refused) + Send + Sync>;

/// How to bind a listener beyond its address.
#[derive(Debug, Clone, Default)]
pub struct BindOptions {
    /// File mode of a Unix or hybrid-vsock socket.
    pub unix_mode: u32,
    /// Unix or hybrid-vsock sockets only: the uids that may connect; any other peer is
    /// closed at accept. `None`: whoever the socket's file mode lets connect.
    pub peer_uids: Option<UidSet>,
}

#[derive(Debug)]
enum Inner {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        path: PathBuf,
    },
    Vsock {
        listener: VsockListener,
        peer_cid: Option<u32>,
    },
    /// A hybrid-vsock socket: a Unix listener on `<path>_<port>`.
    VsockUds {
        listener: UnixListener,
        path: PathBuf,
        port: u32,
    },
}

/// One accepted connection.
#[derive(Debug)]
pub struct Accepted {
    pub stream: Stream,
    pub peer: PeerAddr,
    pub listener: Arc<ListenerInfo>,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot bind listener {name:?} to {addr}")]
    Bind {
        name: String,
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("listener {name:?}: {path} exists and is not a socket; refusing to replace it")]
    NotASocket { name: String, path: PathBuf },
    #[error("listener {name:?}: peer_uids applies to Unix-socket listeners only, not {addr}")]
    PeerUidsNotUnix { name: String, addr: String },
}

impl Listener {
    /// Bind `addr`. A Unix socket path left over from a previous run is replaced (only if it
    /// is a socket), its parent directory is created, and the socket gets file mode `mode`.
    pub async fn bind(
        name: &str,
        addr: &ListenAddr,
        unix_mode: u32,
    ) -> Result<Listener, ListenError> {
        Listener::bind_with(
            name,
            addr,
            BindOptions {
                unix_mode,
                peer_uids: None,
            },
        )
        .await
    }

    /// [`Listener::bind`] with every option; `peer_uids` on a TCP or AF_VSOCK address is an
    /// error.
    pub async fn bind_with(
        name: &str,
        addr: &ListenAddr,
        options: BindOptions,
    ) -> Result<Listener, ListenError> {
        let BindOptions {
            unix_mode,
            peer_uids,
        } = options;
        if peer_uids.is_some() && !matches!(addr, ListenAddr::Unix(_) | ListenAddr::VsockUds { .. })
        {
            return Err(ListenError::PeerUidsNotUnix {
                name: name.to_string(),
                addr: addr.to_string(),
            });
        }
        let mut l = Listener::bind_inner(name, addr, unix_mode).await?;
        l.peer_uids = peer_uids;
        Ok(l)
    }

    async fn bind_inner(
        name: &str,
        addr: &ListenAddr,
        unix_mode: u32,
    ) -> Result<Listener, ListenError> {
        let bind_err = |source| ListenError::Bind {
            name: name.to_string(),
            addr: addr.to_string(),
            source,
        };
        match addr {
            ListenAddr::Tcp(a) => {
                let l = TcpListener::bind(a).await.map_err(bind_err)?;
                let local = l.local_addr().map_err(bind_err)?;
                Ok(Listener {
                    info: Arc::new(ListenerInfo {
                        name: name.to_string(),
                        addr: ListenAddr::Tcp(local),
                    }),
                    inner: Inner::Tcp(l),
                    peer_uids: None,
                    on_refused: None,
                })
            }
            ListenAddr::Unix(path) => {
                let l = bind_unix(name, path, unix_mode).map_err(|e| e.into_error(name, addr))?;
                Ok(Listener {
                    info: Arc::new(ListenerInfo {
                        name: name.to_string(),
                        addr: addr.clone(),
                    }),
                    inner: Inner::Unix {
                        listener: l,
                        path: path.clone(),
                    },
                    peer_uids: None,
                    on_refused: None,
                })
            }
            ListenAddr::VsockUds { path, port } => {
                let socket = ListenAddr::vsock_uds_socket(path, *port);
                let l =
                    bind_unix(name, &socket, unix_mode).map_err(|e| e.into_error(name, addr))?;
                Ok(Listener {
                    info: Arc::new(ListenerInfo {
                        name: name.to_string(),
                        addr: addr.clone(),
                    }),
                    inner: Inner::VsockUds {
                        listener: l,
                        path: socket,
                        port: *port,
                    },
                    peer_uids: None,
                    on_refused: None,
                })
            }
            ListenAddr::Vsock {
                cid,
                port,
                peer_cid,
            } => {
                let l = VsockListener::bind(VsockAddr::new(cid.unwrap_or(VMADDR_CID_ANY), *port))
                    .map_err(bind_err)?;
                Ok(Listener {
                    info: Arc::new(ListenerInfo {
                        name: name.to_string(),
                        addr: addr.clone(),
                    }),
                    inner: Inner::Vsock {
                        listener: l,
                        peer_cid: *peer_cid,
                    },
                    peer_uids: None,
                    on_refused: None,
                })
            }
        }
    }

    pub fn info(&self) -> &Arc<ListenerInfo> {
        &self.info
    }

    /// Call `hook` for every connection this listener refuses at accept.
    pub fn on_refused(&mut self, hook: RefusedHook) {
        self.on_refused = Some(hook);
    }

    /// The uids admitted on this Unix-socket listener, if restricted.
    pub fn peer_uids(&self) -> Option<&UidSet> {
        self.peer_uids.as_ref()
    }

    /// Whether a Unix peer with `uid` (`None`: its credentials could not be read) may use
    /// this listener.
    fn uid_admitted(&self, uid: Option<u32>) -> bool {
        match (&self.peer_uids, uid) {
            (None, _) => true,
            (Some(set), Some(uid)) => set.contains(uid),
            // Fail closed: a restricted listener never admits an unknown peer.
            (Some(_), None) => false,
        }
    }

    fn refuse(&self, reason: &'static str, peer: PeerAddr) {
        let refused = Refused {
            listener: self.info.name.clone(),
            reason,
            peer,
        };
        if let Some(hook) = &self.on_refused {
            hook(&refused);
        }
    }

    /// Close a Unix connection from a peer outside `peer_uids` before reading a byte.
    fn refuse_unix(&self, s: UnixStream, peer: PeerAddr) {
        warn!(
            listener = %self.info.name,
            peer = %peer,
            admitted = %self.peer_uids.as_ref().map(|u| u.to_string()).unwrap_or_default(),
            "unix connection from a uid outside peer_uids dropped"
        );
        self.refuse("peer_uid", peer);
        drop(s);
    }

    /// Accept the next connection.
    pub async fn accept(&self) -> io::Result<Accepted> {
        match &self.inner {
            Inner::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                // Proxied requests are small and latency-bound; Nagle only adds delay.
                let _ = s.set_nodelay(true);
                Ok(Accepted {
                    stream: Stream::Tcp(s),
                    peer: PeerAddr::Tcp(peer),
                    listener: self.info.clone(),
                })
            }
            Inner::Unix { listener, .. } => loop {
                let (s, _) = listener.accept().await?;
                let cred = s.peer_cred().ok();
                let peer = PeerAddr::Unix {
                    uid: cred.map(|c| c.uid()),
                    pid: cred.and_then(|c| c.pid()),
                };
                if !self.uid_admitted(cred.map(|c| c.uid())) {
                    self.refuse_unix(s, peer);
                    continue;
                }
                break Ok(Accepted {
                    peer,
                    stream: Stream::Unix(s),
                    listener: self.info.clone(),
                });
            },
            Inner::VsockUds { listener, port, .. } => loop {
                let (s, _) = listener.accept().await?;
                let cred = s.peer_cred().ok();
                let peer = PeerAddr::VsockUds {
                    port: *port,
                    uid: cred.map(|c| c.uid()),
                    pid: cred.and_then(|c| c.pid()),
                };
                if !self.uid_admitted(cred.map(|c| c.uid())) {
                    self.refuse_unix(s, peer);
                    continue;
                }
                break Ok(Accepted {
                    peer,
                    stream: Stream::Unix(s),
                    listener: self.info.clone(),
                });
            },
            Inner::Vsock { listener, peer_cid } => loop {
                let (s, peer) = listener.accept().await?;
                // The CID is set by the hypervisor, not by the guest, so it identifies the
                // VM; a connection from any other VM is dropped before a byte is read.
                if !peer_cid_admitted(*peer_cid, peer.cid()) {
                    warn!(
                        listener = %self.info.name,
                        peer_cid = peer.cid(),
                        expected_cid = peer_cid.unwrap_or_default(),
                        "vsock connection from an unexpected CID dropped"
                    );
                    self.refuse(
                        "peer_cid",
                        PeerAddr::Vsock {
                            cid: peer.cid(),
                            port: peer.port(),
                        },
                    );
                    drop(s);
                    continue;
                }
                break Ok(Accepted {
                    stream: Stream::Vsock(s),
                    peer: PeerAddr::Vsock {
                        cid: peer.cid(),
                        port: peer.port(),
                    },
                    listener: self.info.clone(),
                });
            },
        }
    }
}

/// Whether a connection from guest `cid` may use a listener expecting `expected`.
fn peer_cid_admitted(expected: Option<u32>, cid: u32) -> bool {
    expected.is_none_or(|e| e == cid)
}

/// Why a Unix-socket listener could not be bound.
enum UnixBindError {
    Io(io::Error),
    NotASocket(PathBuf),
}

impl UnixBindError {
    fn into_error(self, name: &str, addr: &ListenAddr) -> ListenError {
        match self {
            UnixBindError::Io(source) => ListenError::Bind {
                name: name.to_string(),
                addr: addr.to_string(),
                source,
            },
            UnixBindError::NotASocket(path) => ListenError::NotASocket {
                name: name.to_string(),
                path,
            },
        }
    }
}

fn bind_unix(name: &str, path: &Path, mode: u32) -> Result<UnixListener, UnixBindError> {
    prepare_socket_path(name, path).map_err(|e| match e {
        Prep::Io(source) => UnixBindError::Io(source),
        Prep::NotASocket => UnixBindError::NotASocket(path.to_path_buf()),
    })?;
    let l = UnixListener::bind(path).map_err(UnixBindError::Io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(UnixBindError::Io)?;
    Ok(l)
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Inner::Unix { path, .. } | Inner::VsockUds { path, .. } = &self.inner {
            let _ = std::fs::remove_file(path);
        }
    }
}

enum Prep {
    Io(io::Error),
    NotASocket,
}

fn prepare_socket_path(_name: &str, path: &Path) -> Result<(), Prep> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(Prep::Io)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(Prep::Io),
        Ok(_) => Err(Prep::NotASocket),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Prep::Io(e)),
    }
}

/// An accepted byte stream of any transport.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Vsock(VsockStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Vsock(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Vsock(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Vsock(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
            Stream::Vsock(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Vsock(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Vsock(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn tcp_accept_knows_listener_and_peer() {
        let l = Listener::bind(
            "agents",
            &ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()),
            0,
        )
        .await
        .unwrap();
        let ListenAddr::Tcp(addr) = l.info().addr else {
            panic!()
        };
        assert_ne!(addr.port(), 0);
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut a = l.accept().await.unwrap();
        assert_eq!(a.listener.name, "agents");
        assert_eq!(a.peer, PeerAddr::Tcp(c.local_addr().unwrap()));
        c.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        a.stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
    }

    #[tokio::test]
    async fn unix_replaces_stale_socket_sets_mode_and_reports_uid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/proxy.sock");
        let addr = ListenAddr::Unix(path.clone());
        drop(Listener::bind("a", &addr, 0o600).await.unwrap());
        // A stale socket file from a crashed run must not prevent binding.
        let _stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let l = Listener::bind("vm", &addr, 0o600).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _c = UnixStream::connect(&path).await.unwrap();
        let a = l.accept().await.unwrap();
        assert_eq!(a.listener.name, "vm");
        match a.peer {
            PeerAddr::Unix { uid, pid } => {
                assert!(uid.is_some());
                assert_eq!(pid, Some(std::process::id() as i32));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn refuses_to_replace_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, b"data").unwrap();
        let err = Listener::bind("a", &ListenAddr::Unix(path.clone()), 0o600)
            .await
            .unwrap_err();
        assert!(matches!(err, ListenError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    #[tokio::test]
    async fn vsock_uds_binds_path_underscore_port_and_reports_the_port() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("vm-a.vsock");
        let addr = ListenAddr::VsockUds {
            path: base.clone(),
            port: 18790,
        };
        let l = Listener::bind("vm-a", &addr, 0o600).await.unwrap();
        let socket = dir.path().join("vm-a.vsock_18790");
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(l.info().addr, addr);
        let mut c = UnixStream::connect(&socket).await.unwrap();
        let mut a = l.accept().await.unwrap();
        match a.peer {
            PeerAddr::VsockUds { port, uid, pid } => {
                assert_eq!(port, 18790);
                assert!(uid.is_some());
                assert_eq!(pid, Some(std::process::id() as i32));
            }
            ref other => panic!("{other:?}"),
        }
        assert_eq!(a.peer.kind(), "vsock");
        c.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        a.stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        drop(l);
        assert!(!socket.exists(), "the socket is removed with the listener");
    }

    /// This machine has AF_VSOCK but no loopback transport, so a connection cannot be made
    /// here (the microVM test covers connect and accept end to end). What can run: binding,
    /// the local address, an accept that waits, and the CID admission rule.
    #[tokio::test]
    async fn vsock_binds_and_waits_for_guests() {
        let addr = ListenAddr::Vsock {
            cid: None,
            port: 0x7ff0_0000 + std::process::id() % 0xffff,
            peer_cid: Some(3),
        };
        match Listener::bind("vm", &addr, 0).await {
            Ok(l) => {
                let Inner::Vsock { listener, peer_cid } = &l.inner else {
                    panic!("not a vsock listener")
                };
                assert_eq!(*peer_cid, Some(3));
                let ListenAddr::Vsock { port, .. } = addr else {
                    unreachable!()
                };
                assert_eq!(listener.local_addr().unwrap().port(), port);
                let pending =
                    tokio::time::timeout(std::time::Duration::from_millis(50), l.accept()).await;
                assert!(pending.is_err(), "nothing can connect here");
            }
            // A kernel without AF_VSOCK support: binding must fail with a clear error.
            Err(e) => {
                assert!(matches!(e, ListenError::Bind { .. }), "{e}");
                assert!(e.to_string().contains("vsock:any:"), "{e}");
            }
        }
    }

    fn own_uid() -> u32 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").unwrap().uid()
    }

    /// A Unix listener with `peer_uids` admits exactly those uids (from `SO_PEERCRED`) and
    /// closes any other peer's connection at accept, reporting it to the hook.
    #[tokio::test]
    async fn unix_peer_uids_admit_listed_uids_and_refuse_others() {
        let dir = tempfile::tempdir().unwrap();
        let me = own_uid();
        let other = if me == 4242 { 4243 } else { 4242 };
        let refused = Arc::new(std::sync::Mutex::new(Vec::<Refused>::new()));

        let mut only_other = UidSet::new();
        only_other.push_uid(other).unwrap();
        only_other.push_str("300000-365535").unwrap();
        let path = dir.path().join("closed.sock");
        let mut l = Listener::bind_with(
            "closed",
            &ListenAddr::Unix(path.clone()),
            BindOptions {
                unix_mode: 0o666,
                peer_uids: Some(only_other),
            },
        )
        .await
        .unwrap();
        let seen = refused.clone();
        l.on_refused(Arc::new(move |r| seen.lock().unwrap().push(r.clone())));
        let mut c = UnixStream::connect(&path).await.unwrap();
        let pending = tokio::spawn(async move { l.accept().await.map(|_| ()) });
        let _ = c.write_all(b"CONNECT x:443 HTTP/1.1\r\n\r\n").await;
        let mut buf = Vec::new();
        let n = c.read_to_end(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "the refused peer gets nothing back");
        let r = refused.lock().unwrap().clone();
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].listener, "closed");
        assert_eq!(r[0].reason, "peer_uid");
        assert!(
            matches!(r[0].peer, PeerAddr::Unix { uid: Some(u), .. } if u == me),
            "{:?}",
            r[0].peer
        );
        assert!(!pending.is_finished(), "nothing was accepted");
        pending.abort();

        let mut mine = UidSet::new();
        mine.push_str(&format!("{}-{}", me.saturating_sub(1), me))
            .unwrap();
        let path = dir.path().join("open.sock");
        let l = Listener::bind_with(
            "open",
            &ListenAddr::Unix(path.clone()),
            BindOptions {
                unix_mode: 0o600,
                peer_uids: Some(mine),
            },
        )
        .await
        .unwrap();
        let _c = UnixStream::connect(&path).await.unwrap();
        let a = l.accept().await.unwrap();
        assert!(matches!(a.peer, PeerAddr::Unix { uid: Some(u), .. } if u == me));
    }

    #[tokio::test]
    async fn peer_uids_only_on_unix_sockets() {
        let mut set = UidSet::new();
        set.push_uid(1).unwrap();
        let err = Listener::bind_with(
            "t",
            &ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()),
            BindOptions {
                unix_mode: 0,
                peer_uids: Some(set),
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ListenError::PeerUidsNotUnix { .. }), "{err}");
    }

    #[test]
    fn only_the_expected_cid_is_admitted() {
        assert!(peer_cid_admitted(None, 3));
        assert!(peer_cid_admitted(None, 1234));
        assert!(peer_cid_admitted(Some(3), 3));
        assert!(!peer_cid_admitted(Some(3), 4));
        assert!(!peer_cid_admitted(Some(3), 2));
    }
}
