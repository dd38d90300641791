//! Shared helpers: CA fixtures and an in-memory TLS handshake.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName};
use tempfile::TempDir;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::ca::read_pem_certs;
use crate::{client_config_with_roots, init_ca, Ca, CaFiles};

pub const DAY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

pub fn alpn(protos: &[&str]) -> Vec<Vec<u8>> {
    protos.iter().map(|p| p.as_bytes().to_vec()).collect()
}

/// A fresh CA in a temp dir, loaded from disk.
pub fn new_ca() -> (TempDir, CaFiles, Arc<Ca>) {
    let dir = tempfile::tempdir().unwrap();
    let files = init_ca(&dir.path().join("ca"), false).unwrap();
    let ca = Ca::load(&files.cert_file, &files.key_file).unwrap();
    (dir, files, Arc::new(ca))
}

/// A client config whose only trust anchor is the CA certificate file on disk.
pub fn client_trusting(ca_cert_file: &Path, protos: &[&str]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in read_pem_certs(ca_cert_file).unwrap() {
        roots.add(cert).unwrap();
    }
    Arc::new(client_config_with_roots(Arc::new(roots), alpn(protos)))
}

/// What the client saw after a successful handshake.
#[derive(Debug)]
pub struct Handshake {
    pub alpn: Option<Vec<u8>>,
    pub peer_certs: Vec<CertificateDer<'static>>,
    pub server_sni: Option<String>,
}

/// Runs a real TLS handshake between the two configs over an in-memory pipe,
/// with `sni` as the name the client asks for and verifies.
pub async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    sni: &str,
) -> io::Result<Handshake> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let client_fut = TlsConnector::from(client).connect(name, client_io);
    let server_fut = TlsAcceptor::from(server).accept(server_io);
    let (client_res, server_res) = tokio::join!(client_fut, server_fut);
    let client_stream = client_res?;
    let server_stream = server_res?;
    let (_, conn) = client_stream.get_ref();
    Ok(Handshake {
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        peer_certs: conn.peer_certificates().unwrap_or_default().to_vec(),
        server_sni: server_stream.get_ref().1.server_name().map(str::to_owned),
    })
}
