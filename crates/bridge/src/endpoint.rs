//! Bridge endpoints: `tcp:HOST:PORT`, `unix:PATH`, `vsock:CID:PORT`.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use credproxy_core::ListenAddr;
use credproxy_listen::Stream;
use tokio::net::{TcpStream, UnixStream};
use tokio_vsock::{VsockAddr, VsockStream};

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
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("{0:?}: expected tcp:HOST:PORT, unix:PATH or vsock:CID:PORT")]
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
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Vsock { cid: Some(c), port } => write!(f, "vsock:{c}:{port}"),
            Endpoint::Vsock { cid: None, port } => write!(f, "vsock:any:{port}"),
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
        for bad in [
            "",
            "tcp:",
            "tcp:1.2.3.4",
            "tcp:h:99999",
            "vsock:2",
            "vsock:x:1",
            "udp:a:1",
            "unix:",
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
