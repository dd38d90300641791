//! Dialling upstreams: resolve once, classify every address, dial exactly the checked one.
//!
//! An allowlisted name may still resolve to an address inside the proxy's own network (DNS
//! rebinding, split horizon, a hostile record). Unless the operator pinned the name in
//! `upstream.resolve` or allowed the range in `upstream.allow_private_networks`, a name
//! resolving to any loopback, private, link-local, CGNAT, ULA, multicast, unspecified or
//! metadata address, or an IPv4-mapped/NAT64/6to4/Teredo form of one, is refused, and the
//! connection goes to the address that was checked, never to a second resolution.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use tokio::net::TcpStream;

/// Name resolution, injectable so tests can return any answer.
pub trait Resolve: Send + Sync + fmt::Debug + 'static {
    fn resolve(
        &self,
        host: String,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;
}

/// The system resolver (getaddrinfo on a blocking thread, through tokio).
#[derive(Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(
        &self,
        host: String,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), port)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// Why a connection to an upstream was not made. Carried through hyper's error chain so the
/// request path can map it to the right rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectError {
    Dns,
    Private,
    Refused,
    Timeout,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectError::Dns => "name did not resolve",
            ConnectError::Private => "name resolves to a refused address range",
            ConnectError::Refused => "tcp connect failed",
            ConnectError::Timeout => "tcp connect timed out",
        })
    }
}

impl std::error::Error for ConnectError {}

/// The TCP layer of the upstream connector.
#[derive(Clone, Debug)]
pub struct GuardedConnector {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    resolver: Arc<dyn Resolve>,
    pins: BTreeMap<String, SocketAddr>,
    allow: Vec<IpNet>,
    connect_timeout: Duration,
}

impl GuardedConnector {
    pub fn new(
        resolver: Arc<dyn Resolve>,
        pins: BTreeMap<String, SocketAddr>,
        allow: Vec<IpNet>,
        connect_timeout: Duration,
    ) -> GuardedConnector {
        GuardedConnector {
            inner: Arc::new(Inner {
                resolver,
                pins,
                allow,
                connect_timeout,
            }),
        }
    }

    /// Resolve and check `host:port`, returning the addresses that may be dialled.
    pub async fn checked_addrs(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, ConnectError> {
        if let Some(pinned) = self.inner.pins.get(host) {
            return Ok(vec![*pinned]);
        }
        let ips = self
            .inner
            .resolver
            .resolve(host.to_string(), port)
            .await
            .map_err(|_| ConnectError::Dns)?;
        if ips.is_empty() {
            return Err(ConnectError::Dns);
        }
        // One refused answer refuses the name: a mix of public and private answers is what a
        // rebinding attack looks like.
        if ips.iter().any(|ip| !self.permitted(*ip)) {
            return Err(ConnectError::Private);
        }
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }

    fn permitted(&self, ip: IpAddr) -> bool {
        !is_refused(ip) || self.inner.allow.iter().any(|n| n.contains(&ip))
    }

    async fn dial(&self, host: String, port: u16) -> Result<TcpStream, ConnectError> {
        let addrs = self.checked_addrs(&host, port).await?;
        let mut last = ConnectError::Refused;
        for addr in addrs {
            match tokio::time::timeout(self.inner.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Ok(Err(_)) => last = ConnectError::Refused,
                Err(_) => last = ConnectError::Timeout,
            }
        }
        Err(last)
    }
}

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri.host().ok_or(ConnectError::Dns)?.to_string();
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("http") => 80,
                _ => 443,
            });
            this.dial(host, port).await.map(TokioIo::new)
        })
    }
}

/// True for every address an upstream name must not resolve to by default.
pub fn is_refused(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_refused_v4(v4),
        IpAddr::V6(v6) => is_refused_v6(v6),
    }
}

fn is_refused_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // includes 169.254.169.254 metadata
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (64..128).contains(&o[1])) // CGNAT 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] == 18 || o[1] == 19)) // benchmarking
        || o[0] >= 240 // reserved
}

fn is_refused_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_refused_v4(v4);
    }
    // NAT64 well-known prefix 64:ff9b::/96 and local-use 64:ff9b:1::/48 embed IPv4.
    if s[0] == 0x64 && s[1] == 0xff9b {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return s[2] == 1 || is_refused_v4(v4);
    }
    // 6to4 2002::/16 embeds an IPv4 address in bits 16..48.
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return is_refused_v4(v4);
    }
    // Teredo 2001:0::/32 tunnels to arbitrary IPv4 hosts; never a legitimate API endpoint.
    if s[0] == 0x2001 && s[1] == 0 {
        return true;
    }
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // ULA fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
        || (s[0] == 0x2001 && s[1] == 0xdb8) // documentation
        || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0 && s[5] == 0) // IPv4-compatible
        || s[0] == 0x100 && s[1] == 0 && s[2] == 0 && s[3] == 0 // discard-only 100::/64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_refused_ranges() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2001:0:4136:e378::1",
            "::127.0.0.1",
        ] {
            assert!(is_refused(a.parse().unwrap()), "{a} should be refused");
        }
        for a in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "64:ff9b::808:808",
        ] {
            assert!(!is_refused(a.parse().unwrap()), "{a} should be allowed");
        }
    }

    #[derive(Debug)]
    struct Fixed(Vec<IpAddr>);
    impl Resolve for Fixed {
        fn resolve(
            &self,
            _h: String,
            _p: u16,
        ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
            let v = self.0.clone();
            Box::pin(async move { Ok(v) })
        }
    }

    #[tokio::test]
    async fn pins_allow_ranges_and_mixed_answers() {
        let r: Arc<dyn Resolve> = Arc::new(Fixed(vec![
            "93.184.216.34".parse().unwrap(),
            "127.0.0.1".parse().unwrap(),
        ]));
        let c = GuardedConnector::new(r.clone(), BTreeMap::new(), vec![], Duration::from_secs(1));
        assert_eq!(
            c.checked_addrs("x.test", 443).await,
            Err(ConnectError::Private)
        );

        let c = GuardedConnector::new(
            r.clone(),
            BTreeMap::new(),
            vec!["127.0.0.0/8".parse().unwrap()],
            Duration::from_secs(1),
        );
        assert_eq!(c.checked_addrs("x.test", 443).await.unwrap().len(), 2);

        let pins = BTreeMap::from([("x.test".to_string(), "127.0.0.1:9".parse().unwrap())]);
        let c = GuardedConnector::new(r, pins, vec![], Duration::from_secs(1));
        assert_eq!(
            c.checked_addrs("x.test", 443).await.unwrap(),
            vec!["127.0.0.1:9".parse::<SocketAddr>().unwrap()]
        );
    }
}
