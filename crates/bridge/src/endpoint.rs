//! Bridge endpoints: `tcp:HOST:PORT`, `unix:PATH`, `vsock:CID:PORT`, `vsock_uds:PATH:PORT`.
//!
//! `vsock_uds` is hybrid vsock, the host side of Firecracker, Cloud Hypervisor and
//! vhost-device-vsock: the hypervisor listens on the Unix socket `PATH`; to reach guest port
//! `PORT` the host connects there, sends `CONNECT PORT\n` and reads `OK <host port>\n`, after
//! which the connection is a byte stream to the guest. A guest's connection to host port
//! `PORT` arrives on the Unix socket `PATH_PORT`, which is what a listening `vsock_uds` side
//! binds.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use credproxy_core::ListenAddr;
use credproxy_listen::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_vsock::{VsockAddr, VsockStream};

/// How long the hypervisor may take to answer `CONNECT PORT` (the guest must accept first).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest acknowledgement line read (`OK 4294967295\n` is 14 bytes).
const MAX_ACK_LINE: usize = 64;

/// One side of a bridge, as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `tcp:HOST:PORT`; a listening side needs an IP address, a connecting side may name a
    /// host.
    Tcp(String),
    /// `unix:PATH`.
    Unix(PathBuf),
    /// `vsock:CID:PORT`; `CID` may be `any` (`VMADDR_CID_ANY`) on a listening side. CID 2 is
    /// the host, as seen from a guest.
    Vsock { cid: Option<u32>, port: u32 },
    /// `vsock_uds:PATH:PORT`: hybrid vsock through a hypervisor's Unix socket. Connecting
    /// reaches guest port `PORT` (`CONNECT PORT\n` handshake on `PATH`); listening binds
    /// `PATH_PORT`, where the hypervisor delivers the guest's connections to host port `PORT`.
    VsockUds { path: PathBuf, port: u32 },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("{0:?}: expected tcp:HOST:PORT, unix:PATH, vsock:CID:PORT or vsock_uds:PATH:PORT")]
    Syntax(String),
    #[error(
        "{0:?}: a listening TCP side needs an IP address and port, such as tcp:127.0.0.1:18790"
    )]
    ListenAddress(String),
    #[error("{0:?}: a connecting side needs a CID, not \"any\"")]
    AnyCid(String),
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Endpoint, EndpointError> {
        let syntax = || EndpointError::Syntax(s.to_string());
        let (kind, rest) = s.split_once(':').ok_or_else(syntax)?;
        match kind {
            "tcp" => {
                let (host, port) = rest.rsplit_once(':').ok_or_else(syntax)?;
                if host.is_empty() || port.parse::<u16>().is_err() {
                    return Err(syntax());
                }
                Ok(Endpoint::Tcp(rest.to_string()))
            }
            "unix" if !rest.is_empty() => Ok(Endpoint::Unix(PathBuf::from(rest))),
            "vsock_uds" => {
                let (path, port) = rest.rsplit_once(':').ok_or_else(syntax)?;
                let port = port.parse::<u32>().map_err(|_| syntax())?;
                if path.is_empty() || port == u32::MAX {
                    return Err(syntax());
                }
                Ok(Endpoint::VsockUds {
                    path: PathBuf::from(path),
                    port,
                })
            }
            "vsock" => {
                let (cid, port) = rest.split_once(':').ok_or_else(syntax)?;
                let cid = match cid {
                    "any" => None,
                    "host" => Some(2),
                    n => Some(n.parse::<u32>().map_err(|_| syntax())?),
                };
                let port = port.parse::<u32>().map_err(|_| syntax())?;
                Ok(Endpoint::Vsock { cid, port })
            }
            _ => Err(syntax()),
        }
    }

    /// The listener address for a listening side.
    pub fn listen_addr(&self) -> Result<ListenAddr, EndpointError> {
        match self {
            Endpoint::Tcp(a) => a
                .parse::<SocketAddr>()
                .map(ListenAddr::Tcp)
                .map_err(|_| EndpointError::ListenAddress(self.to_string())),
            Endpoint::Unix(p) => Ok(ListenAddr::Unix(p.clone())),
            Endpoint::Vsock { cid, port } => Ok(ListenAddr::Vsock {
                cid: *cid,
                port: *port,
                peer_cid: None,
            }),
            Endpoint::VsockUds { path, port } => Ok(ListenAddr::VsockUds {
                path: path.clone(),
                port: *port,
            }),
        }
    }

    /// Check that this endpoint can be connected to.
    pub fn check_connectable(&self) -> Result<(), EndpointError> {
        match self {
            Endpoint::Vsock { cid: None, .. } => Err(EndpointError::AnyCid(self.to_string())),
            _ => Ok(()),
        }
    }

    /// Open a connection to this endpoint.
    pub async fn connect(&self) -> io::Result<Stream> {
        match self {
            Endpoint::Tcp(a) => {
                let s = TcpStream::connect(a.as_str()).await?;
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s))
            }
            Endpoint::Unix(p) => Ok(Stream::Unix(UnixStream::connect(p).await?)),
            Endpoint::Vsock { cid, port } => {
                let cid = cid.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "vsock CID \"any\"")
                })?;
                Ok(Stream::Vsock(
                    VsockStream::connect(VsockAddr::new(cid, *port)).await?,
                ))
            }
            Endpoint::VsockUds { path, port } => {
                let mut s = UnixStream::connect(path).await.map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "cannot connect to the hypervisor socket {}: {e}",
                            path.display()
                        ),
                    )
                })?;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, hybrid_handshake(&mut s, path, *port))
                    .await
                {
                    Ok(r) => r?,
                    Err(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "the hypervisor socket {} did not answer CONNECT {port} within {}s",
                                path.display(),
                                HANDSHAKE_TIMEOUT.as_secs()
                            ),
                        ))
                    }
                }
                Ok(Stream::Unix(s))
            }
        }
    }
}

/// The host-initiated hybrid-vsock handshake (Firecracker's and Cloud Hypervisor's
/// `CONNECT <port>\n` → `OK <host port>\n`, also vhost-device-vsock's). The reply is read one
/// byte at a time so that nothing the guest sends after it is consumed here; nothing is sent
/// before the reply (vhost-device-vsock reads the request line through a buffer and would
/// swallow early bytes).
async fn hybrid_handshake(s: &mut UnixStream, path: &Path, port: u32) -> io::Result<()> {
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    let mut line = Vec::with_capacity(16);
    let refused = |what: String| {
        io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!(
                "the hypervisor socket {} {what} to CONNECT {port}; is a guest listening on vsock port {port}?",
                path.display()
            ),
        )
    };
    loop {
        let mut b = [0u8; 1];
        if s.read(&mut b).await? == 0 {
            return Err(refused("closed the connection in answer".into()));
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > MAX_ACK_LINE {
            return Err(refused("sent an overlong line".into()));
        }
    }
    let text = String::from_utf8_lossy(&line);
    let text = text.trim_end_matches('\r');
    let mut words = text.split_whitespace();
    match (
        words.next(),
        words.next().map(str::parse::<u32>),
        words.next(),
    ) {
        (Some("OK"), Some(Ok(_)), None) => Ok(()),
        _ => Err(refused(format!("answered {text:?}"))),
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Vsock { cid: Some(c), port } => write!(f, "vsock:{c}:{port}"),
            Endpoint::Vsock { cid: None, port } => write!(f, "vsock:any:{port}"),
            Endpoint::VsockUds { path, port } => write!(f, "vsock_uds:{}:{port}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_refuses_the_rest() {
        assert_eq!(
            Endpoint::parse("tcp:127.0.0.1:18790"),
            Ok(Endpoint::Tcp("127.0.0.1:18790".into()))
        );
        assert_eq!(
            Endpoint::parse("tcp:[::1]:1"),
            Ok(Endpoint::Tcp("[::1]:1".into()))
        );
        assert_eq!(
            Endpoint::parse("vsock:2:18790"),
            Ok(Endpoint::Vsock {
                cid: Some(2),
                port: 18790
            })
        );
        assert_eq!(
            Endpoint::parse("vsock:any:1"),
            Ok(Endpoint::Vsock { cid: None, port: 1 })
        );
        assert_eq!(
            Endpoint::parse("unix:/run/x.sock"),
            Ok(Endpoint::Unix("/run/x.sock".into()))
        );
        assert_eq!(
            Endpoint::parse("vsock_uds:/var/lib/microvms/vm-a/notify.vsock:18789"),
            Ok(Endpoint::VsockUds {
                path: "/var/lib/microvms/vm-a/notify.vsock".into(),
                port: 18789
            })
        );
        assert_eq!(
            Endpoint::parse("vsock_uds:/run/a:b.sock:1")
                .unwrap()
                .to_string(),
            "vsock_uds:/run/a:b.sock:1"
        );
        assert_eq!(
            Endpoint::parse("vsock_uds:/run/v.sock:8200")
                .unwrap()
                .listen_addr(),
            Ok(ListenAddr::VsockUds {
                path: "/run/v.sock".into(),
                port: 8200
            })
        );
        for bad in [
            "",
            "tcp:",
            "tcp:1.2.3.4",
            "tcp:h:99999",
            "vsock:2",
            "vsock:x:1",
            "udp:a:1",
            "unix:",
            "vsock_uds:",
            "vsock_uds:/run/v.sock",
            "vsock_uds::1",
            "vsock_uds:/run/v.sock:x",
            "vsock_uds:/run/v.sock:4294967295",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        assert!(Endpoint::parse("tcp:localhost:1")
            .unwrap()
            .listen_addr()
            .is_err());
        assert!(Endpoint::parse("vsock:any:1")
            .unwrap()
            .check_connectable()
            .is_err());
    }
}
