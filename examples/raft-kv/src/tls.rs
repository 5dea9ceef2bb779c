//! TLS for the HTTP API: the files of a node (see [`crate::certs`] for how a directory is laid
//! out), rustls configurations with the ring provider, and a listener for axum that does each TLS
//! handshake in a task of its own, under [`HANDSHAKE_TIMEOUT`], so that a slow or silent client
//! never holds up the accepting of others.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use raft_core::NodeId;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::certs;

/// How long a client has to complete the TLS handshake once connected.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most TLS handshakes under way at once; further connections wait to start theirs.
pub const HANDSHAKES_PENDING_MAX: usize = 256;
/// The most handshaken connections waiting for the HTTP server to take them.
pub const ACCEPTED_QUEUE_MAX: usize = 64;
/// How long the accept loop waits after an accept error (too many open files, say) before it
/// tries again.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The TLS files of one node: the cluster's CA, the node's certificate and its private key (PEM;
/// the key PKCS#8). The HTTP API serves with the certificate; the Raft transport's mutual TLS
/// uses all three.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTls {
    /// The CA certificate that every node's certificate is signed by.
    pub ca: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

impl NodeTls {
    /// The Raft transport's mutual TLS from these files, for node `node_id` of cluster
    /// `cluster_id`: refused unless the certificate names exactly `raft://CLUSTER/node/ID` (checked
    /// before anything is written). The files are read again when they change (new connections
    /// use the new ones).
    pub fn transport_config(&self, cluster_id: u64, node_id: NodeId) -> anyhow::Result<raft_net::tls::TlsConfig> {
        let files = raft_net::tls::TlsFiles { ca: self.ca.clone(), cert: self.cert.clone(), key: self.key.clone() };
        let config = raft_net::tls::TlsConfig::from_files(files).context("the Raft transport's TLS files (--tls)")?;
        let certified = config.identity();
        let expected = raft_net::tls::Identity { cluster_id, node_id };
        if certified != expected {
            anyhow::bail!(
                "the TLS certificate names {certified}, but this node is {expected} (--id, --cluster-id): \
                 use the certificate of this node and cluster"
            );
        }
        Ok(config)
    }

    /// Node `id`'s files in a directory written by `raft-kv certs`.
    pub fn in_dir(dir: &Path, id: u64) -> NodeTls {
        NodeTls {
            ca: dir.join(certs::CA_CERT),
            cert: dir.join(certs::node_cert(id)),
            key: dir.join(certs::node_key(id)),
        }
    }
}

/// Why TLS could not be set up.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the configuration (a key that does not match the certificate, say).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The crypto provider everything here uses: ring. (rustls deprecates its ring provider for
/// lacking post-quantum key exchange; the alternative, aws-lc, needs cmake and a C toolchain to
/// build, which this project's machines and users should not need. Classical ECDHE it is.)
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in PEM file `path` (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |message: String| TlsError::File { path: path.to_path_buf(), message };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if certs.is_empty() {
        return Err(error("no certificate in it".to_owned()));
    }
    Ok(certs)
}

/// The private key in PEM file `path`.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File { path: path.to_path_buf(), message: e.to_string() })
}

/// The roots of trust: the certificates in PEM file `ca`.
pub fn load_roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// The server side of the HTTP API: the node's certificate, no client certificates (clients
/// authenticate with bearer tokens), HTTP/1.1.
pub fn server_config(node: &NodeTls) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(load_certs(&node.cert)?, load_key(&node.key)?)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client that trusts only the CA in PEM file `ca`.
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(load_roots(ca)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A TLS listener for `axum::serve`: a task accepts TCP connections and hands each to a task of
/// its own for the handshake; handshaken connections queue (at most [`ACCEPTED_QUEUE_MAX`]) for
/// the server. A failed or timed-out handshake closes that connection only. Dropping the listener
/// (the server stopping) stops the accepting.
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: JoinHandle<()>,
}

impl TlsListener {
    /// Serves TLS with `config` on `listener`. Must be called within a tokio runtime.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (sender, accepted) = mpsc::channel(ACCEPTED_QUEUE_MAX);
        let acceptor = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), sender));
        Ok(TlsListener { accepted, local, acceptor })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    sender: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_PENDING_MAX));
    loop {
        let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!("accepting an HTTPS connection: {error}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let (acceptor, sender) = (acceptor.clone(), sender.clone());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
            drop(permit);
            match handshake {
                Ok(Ok(stream)) => {
                    let _ = sender.send((stream, peer)).await; // The server stopped: the connection closes.
                }
                Ok(Err(error)) => tracing::debug!(%peer, "TLS handshake failed: {error}"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept loop holds the sender until it is aborted, which only dropping `self`
            // does: no connection will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
