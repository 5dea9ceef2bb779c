//! Mutual TLS on the TCP transport (feature `tls`): every node presents a certificate that names
//! its node id and cluster id, and checks its peer's.
//!
//! # Turning it on
//!
//! Load the node's files into a [`TlsConfig`] and start the transport with
//! [`TcpTransport::start_tls`](crate::TcpTransport::start_tls) (one group) or
//! [`TcpTransport::start_node_tls`](crate::TcpTransport::start_node_tls) (groups registered
//! later) instead of `start` / `start_node`:
//!
//! ```no_run
//! use std::collections::BTreeMap;
//!
//! use raft_core::NodeId;
//! use raft_net::tls::{TlsConfig, TlsFiles};
//! use raft_net::{TcpOptions, TcpTransport, TokioConnector};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let tls = TlsConfig::from_files(TlsFiles {
//!     ca: "certs/ca.pem".into(),
//!     cert: "certs/node-1.pem".into(),
//!     key: "certs/node-1.key".into(),
//! })?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7001").await?;
//! let peers = BTreeMap::from([(NodeId(2), "127.0.0.1:7002".parse()?)]);
//! let (transport, inbound) =
//!     TcpTransport::start_tls(7, NodeId(1), listener, TokioConnector, peers, TcpOptions::default(), tls)?;
//! # drop((transport, inbound));
//! # Ok(())
//! # }
//! ```
//!
//! # The identity
//!
//! A node's certificate names it with one URI subject alternative name,
//! `raft://<cluster_id>/node/<node_id>` (both decimal, without leading zeros): see [`Identity`].
//! A URI SAN, rather than the subject's common name or a private extension, because it is the
//! place X.509 gives for names that are not host names (as SPIFFE does), every tool can write one
//! (`openssl req -addext subjectAltName=URI:raft://7/node/1`), and it can sit beside the DNS and
//! IP names the same certificate carries for HTTPS, which the transport ignores. A certificate
//! with no `raft://` URI, or with several, is refused.
//!
//! # What is checked
//!
//! Both sides check the other's chain against the CA certificates of [`TlsFiles::ca`] with
//! webpki (signatures, validity dates, key usage: node certificates need the `serverAuth` and
//! `clientAuth` extended key usages, or none), and then the identity:
//!
//! - the acceptor requires a client certificate, refuses one of another cluster
//!   ([`TlsError::WrongCluster`]), then reads the dialer's `Hello` and refuses it unless its
//!   `from` is the certificate's node ([`TlsError::IdentityMismatch`]); the `Hello`'s cluster
//!   and addressee are checked as without TLS;
//! - the dialer refuses an acceptor whose certificate is not exactly the cluster and node it
//!   dialed, before it sends its `Hello`.
//!
//! Each refusal is a [`TlsError`], logged at WARN once per connection attempt (the field `tls`
//! names the variant, see [`TlsError::code`]), and the connection is closed before anything it
//! carried reaches a group. The TLS handshake and the `Hello` together must finish within
//! `TcpOptions::handshake_timeout`, and run in the connection's own task: a slow or silent
//! client holds one of `inbound_connections_max` slots, never the accept loop.
//!
//! Only TLS 1.3 is offered, and there is no session resumption: every connection makes a full
//! handshake and checks the certificates in force when it is made.
//!
//! # Rotation
//!
//! The files are read again when one of them changes (its modification time, length or inode),
//! which is checked at the start of every handshake (three `stat` calls): new connections use the
//! new files, established ones keep the certificates they were made with, and nothing restarts.
//! [`TlsConfig::reload`] reloads at once. A reload that fails (a file half written, a key that
//! does not match the certificate, a certificate naming another node) keeps the previous
//! configuration and logs a warning once per change of the files. To move to a new CA, first
//! put both CAs in every node's CA file, then replace the node certificates, then drop the old CA.
//!
//! # Not covered
//!
//! No revocation (CRL or OCSP): a stolen key is good until its certificate expires or the CA is
//! replaced, so keep certificates short-lived. No check that the peer's address matches anything
//! in its certificate (the identity is the node id, not where it runs). Established connections
//! are not cut when a certificate expires or the files change.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use raft_core::NodeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};

/// The scheme of an identity URI.
pub const IDENTITY_URI_SCHEME: &str = "raft";

/// Who a certificate says its holder is: a node of a cluster. Written in the certificate as the
/// URI subject alternative name `raft://<cluster_id>/node/<node_id>` ([`Identity::uri`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    /// The cluster.
    pub cluster_id: u64,
    /// The node.
    pub node_id: NodeId,
}

/// Why a certificate names no usable [`Identity`].
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The certificate does not parse as X.509.
    #[error("the certificate does not parse as X.509")]
    NotX509,
    /// It has no `raft://` URI subject alternative name.
    #[error("the certificate names no raft:// identity")]
    Missing,
    /// It has more than one.
    #[error("the certificate names {0} raft:// identities (one is allowed)")]
    Several(usize),
    /// Its `raft://` URI is not `raft://<cluster_id>/node/<node_id>` in decimal.
    #[error("malformed identity URI {0:?} (expected raft://<cluster_id>/node/<node_id>)")]
    Malformed(String),
}

impl Identity {
    /// Node `node_id` of cluster `cluster_id`.
    pub fn new(cluster_id: u64, node_id: NodeId) -> Self {
        Identity { cluster_id, node_id }
    }

    /// The URI that names this identity in a certificate: `raft://<cluster_id>/node/<node_id>`.
    pub fn uri(&self) -> String {
        format!("{IDENTITY_URI_SCHEME}://{}/node/{}", self.cluster_id, self.node_id.0)
    }

    /// Parses an identity URI. Decimal numbers only, without sign or leading zeros, so that an
    /// identity has one spelling.
    pub fn parse_uri(uri: &str) -> Result<Identity, IdentityError> {
        let malformed = || IdentityError::Malformed(uri.to_owned());
        let rest = uri.strip_prefix("raft://").ok_or_else(malformed)?;
        let (cluster, node) = rest.split_once("/node/").ok_or_else(malformed)?;
        let number = |text: &str| {
            let canonical = !text.is_empty()
                && text.bytes().all(|byte| byte.is_ascii_digit())
                && (text == "0" || !text.starts_with('0'));
            canonical.then(|| text.parse::<u64>().ok()).flatten()
        };
        match (number(cluster), number(node)) {
            (Some(cluster_id), Some(node_id)) => Ok(Identity::new(cluster_id, NodeId(node_id))),
            _ => Err(malformed()),
        }
    }

    /// The identity named by a DER certificate: its one URI subject alternative name whose scheme
    /// is `raft` (in any case; other URIs, DNS names and IP addresses are ignored).
    pub fn of_certificate(der: &[u8]) -> Result<Identity, IdentityError> {
        let (_, certificate) = x509_parser::parse_x509_certificate(der).map_err(|_| IdentityError::NotX509)?;
        let names = certificate.subject_alternative_name().map_err(|_| IdentityError::NotX509)?;
        let uris: Vec<&str> = names
            .iter()
            .flat_map(|extension| extension.value.general_names.iter())
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .filter(|uri| {
                uri.split_once("://").is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case(IDENTITY_URI_SCHEME))
            })
            .collect();
        match uris.as_slice() {
            [] => Err(IdentityError::Missing),
            [uri] => Identity::parse_uri(uri),
            several => Err(IdentityError::Several(several.len())),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.uri())
    }
}

/// The PEM files of a node: where [`TlsConfig`] reads them, at the start and after each change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificates that sign the cluster's node certificates (one or more: two while
    /// moving to a new CA).
    pub ca: PathBuf,
    /// This node's certificate, then any intermediate certificates.
    pub cert: PathBuf,
    /// This node's private key (PKCS#8, or PKCS#1 / SEC1).
    pub key: PathBuf,
}

/// Why a node's TLS files could not be loaded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A file could not be read, or holds no PEM block of the expected kind.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        source: rustls::pki_types::pem::Error,
    },
    /// The CA file holds no usable CA certificate.
    #[error("{0}: no usable CA certificate")]
    NoCa(PathBuf),
    /// The node's certificate names no usable identity.
    #[error("{path}: {source}")]
    Identity {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with its identity.
        source: IdentityError,
    },
    /// The new files name another node than the ones loaded first (a reload never changes who
    /// the node is).
    #[error("the certificate names {now}, not {was}")]
    IdentityChanged {
        /// The identity loaded first.
        was: Identity,
        /// The identity of the new files.
        now: Identity,
    },
    /// rustls refused the key, the certificate chain, or their pairing.
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA certificates make no verifier.
    #[error("the CA certificates make no verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Why a TLS connection was refused or failed, on either side. Logged (WARN for a refusal, with
/// the field `tls` = [`TlsError::code`]); the connection is then closed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The dialer presented no certificate.
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// The peer's certificate is not signed by a CA of ours.
    #[error("the peer's certificate is not issued by a trusted CA")]
    UnknownIssuer,
    /// A signature in the peer's chain does not verify.
    #[error("the peer's certificate has a bad signature")]
    BadSignature,
    /// The peer's certificate has expired.
    #[error("the peer's certificate has expired")]
    Expired,
    /// The peer's certificate is not valid yet.
    #[error("the peer's certificate is not valid yet")]
    NotYetValid,
    /// The peer's certificate was refused for another reason (its key usage, its encoding, ...).
    #[error("the peer's certificate is invalid: {0:?}")]
    InvalidCertificate(CertificateError),
    /// The peer's certificate names another node than the one it claims (acceptor: the `from` of
    /// its `Hello`) or than the one we dialed (dialer).
    #[error(
        "node {claimed} expected (claimed in the hello, or dialed), but the peer's certificate names node {certified}"
    )]
    IdentityMismatch {
        /// The node the peer claims to be, or that we dialed.
        claimed: NodeId,
        /// The node its certificate names.
        certified: NodeId,
    },
    /// The peer's certificate, signed by our CA, names another cluster.
    #[error("the peer's certificate names cluster {certified}, not {expected}")]
    WrongCluster {
        /// Our cluster.
        expected: u64,
        /// The cluster its certificate names.
        certified: u64,
    },
    /// The peer's certificate names no usable identity.
    #[error("the peer's certificate: {0}")]
    MalformedIdentity(IdentityError),
    /// The peer refused us with this TLS alert (it logged why).
    #[error("the peer refused the TLS handshake: {0:?}")]
    PeerRefused(AlertDescription),
    /// The TLS protocol failed (not TLS, a broken record, an unsupported version, ...).
    #[error("TLS protocol error: {0}")]
    Protocol(rustls::Error),
    /// The connection failed during the TLS handshake.
    #[error("i/o error during the TLS handshake: {0}")]
    Io(#[source] io::Error),
}

impl TlsError {
    /// A short stable name of the variant, logged as the field `tls`: `no_certificate`,
    /// `unknown_issuer`, `bad_signature`, `expired`, `not_yet_valid`, `invalid_certificate`,
    /// `identity_mismatch`, `wrong_cluster`, `malformed_identity`, `peer_refused`, `protocol`,
    /// `io`.
    pub fn code(&self) -> &'static str {
        match self {
            TlsError::NoCertificate => "no_certificate",
            TlsError::UnknownIssuer => "unknown_issuer",
            TlsError::BadSignature => "bad_signature",
            TlsError::Expired => "expired",
            TlsError::NotYetValid => "not_yet_valid",
            TlsError::InvalidCertificate(_) => "invalid_certificate",
            TlsError::IdentityMismatch { .. } => "identity_mismatch",
            TlsError::WrongCluster { .. } => "wrong_cluster",
            TlsError::MalformedIdentity(_) => "malformed_identity",
            TlsError::PeerRefused(_) => "peer_refused",
            TlsError::Protocol(_) => "protocol",
            TlsError::Io(_) => "io",
        }
    }

    /// Whether this is a refusal of (or by) the peer's credentials, worth a warning on every
    /// attempt, rather than a connection that broke (an I/O error, a peer restarting).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, TlsError::Io(_))
    }

    /// What an I/O error from a TLS stream means: the rustls error inside it, if any.
    pub(crate) fn from_io(error: io::Error) -> TlsError {
        match error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(inner) => TlsError::from_rustls(inner.clone()),
            None => TlsError::Io(error),
        }
    }

    fn from_rustls(error: rustls::Error) -> TlsError {
        match error {
            rustls::Error::NoCertificatesPresented => TlsError::NoCertificate,
            rustls::Error::AlertReceived(alert) => TlsError::PeerRefused(alert),
            rustls::Error::InvalidCertificate(error) => match error {
                CertificateError::UnknownIssuer => TlsError::UnknownIssuer,
                CertificateError::BadSignature => TlsError::BadSignature,
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => TlsError::Expired,
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => TlsError::NotYetValid,
                other => TlsError::InvalidCertificate(other),
            },
            other => TlsError::Protocol(other),
        }
    }
}

/// A node's TLS configuration, made from its [`TlsFiles`] and made again when they change (see
/// the [module](self) docs on rotation). Cheap to clone: clones share the files and what was
/// loaded from them.
#[derive(Clone)]
pub struct TlsConfig {
    inner: Arc<Inner>,
}

struct Inner {
    files: TlsFiles,
    /// Who the files say this node is: fixed by the first load.
    identity: Identity,
    state: Mutex<State>,
}

/// What is in force, and the files it was made from.
struct State {
    stamp: Stamp,
    loaded: Loaded,
    /// The files of the last failed reload, so that it is logged once, not at every handshake.
    failed: Option<Stamp>,
}

#[derive(Clone)]
struct Loaded {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// What says a file changed: its modification time, length and (on Unix) inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    bytes: u64,
    inode: u64,
}

type Stamp = [Option<FileStamp>; 3];

impl TlsConfig {
    /// Loads `files`: the node's identity is the one its certificate names, for as long as this
    /// configuration lives.
    pub fn from_files(files: TlsFiles) -> Result<TlsConfig, TlsConfigError> {
        let stamp = stamp(&files);
        let (identity, loaded) = load(&files)?;
        let state = Mutex::new(State { stamp, loaded, failed: None });
        Ok(TlsConfig { inner: Arc::new(Inner { files, identity, state }) })
    }

    /// The identity this node's certificate names.
    pub fn identity(&self) -> Identity {
        self.inner.identity
    }

    /// Where the files are read.
    pub fn files(&self) -> &TlsFiles {
        &self.inner.files
    }

    /// Reads the files again now, whether or not they changed. On failure, the configuration in
    /// force stays.
    pub fn reload(&self) -> Result<(), TlsConfigError> {
        let stamp = stamp(&self.inner.files);
        let loaded = self.load_same_identity()?;
        let mut state = self.state();
        (state.stamp, state.loaded, state.failed) = (stamp, loaded, None);
        Ok(())
    }

    /// The configuration for a new connection: reloaded first if a file changed since the last
    /// load (a failed reload keeps the previous one, and warns once per change).
    fn current(&self) -> Loaded {
        let stamp = stamp(&self.inner.files);
        let mut state = self.state();
        if stamp == state.stamp || state.failed == Some(stamp) {
            return state.loaded.clone();
        }
        match self.load_same_identity() {
            Ok(loaded) => {
                info!(identity = %self.inner.identity, "TLS files reloaded");
                (state.stamp, state.loaded, state.failed) = (stamp, loaded, None);
            }
            Err(error) => {
                warn!(%error, "TLS files changed but do not load: keeping the previous ones");
                state.failed = Some(stamp);
            }
        }
        state.loaded.clone()
    }

    fn load_same_identity(&self) -> Result<Loaded, TlsConfigError> {
        let (identity, loaded) = load(&self.inner.files)?;
        if identity != self.inner.identity {
            return Err(TlsConfigError::IdentityChanged { was: self.inner.identity, now: identity });
        }
        Ok(loaded)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The acceptor's TLS handshake: requires a client certificate of our CA and our cluster, and
    /// returns the stream and who the certificate says the dialer is (which its `Hello` must then
    /// claim).
    pub(crate) async fn accept<S>(&self, stream: S) -> Result<(tokio_rustls::server::TlsStream<S>, Identity), TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.current().server);
        let stream = acceptor.accept(stream).await.map_err(TlsError::from_io)?;
        let identity = peer_identity(stream.get_ref().1.peer_certificates())?;
        self.check_cluster(identity)?;
        Ok((stream, identity))
    }

    /// The dialer's TLS handshake with `peer` at `address`: returns the stream once the
    /// acceptor's certificate names exactly `peer` of our cluster.
    pub(crate) async fn connect<S>(
        &self,
        stream: S,
        address: SocketAddr,
        peer: NodeId,
    ) -> Result<tokio_rustls::client::TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let connector = tokio_rustls::TlsConnector::from(self.current().client);
        // Not checked against the certificate (the identity URI is); rustls wants a name.
        let name = ServerName::IpAddress(address.ip().into());
        let stream = connector.connect(name, stream).await.map_err(TlsError::from_io)?;
        let identity = peer_identity(stream.get_ref().1.peer_certificates())?;
        self.check_cluster(identity)?;
        if identity.node_id != peer {
            return Err(TlsError::IdentityMismatch { claimed: peer, certified: identity.node_id });
        }
        Ok(stream)
    }

    fn check_cluster(&self, identity: Identity) -> Result<(), TlsError> {
        let expected = self.inner.identity.cluster_id;
        if identity.cluster_id != expected {
            return Err(TlsError::WrongCluster { expected, certified: identity.cluster_id });
        }
        Ok(())
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("TlsConfig")
            .field("identity", &self.inner.identity)
            .field("files", &self.inner.files)
            .finish_non_exhaustive()
    }
}

/// The identity of the end-entity certificate of a peer that completed the handshake.
fn peer_identity(certificates: Option<&[CertificateDer<'_>]>) -> Result<Identity, TlsError> {
    // rustls completes a handshake only with a verified chain, so one is there.
    let end_entity = certificates.and_then(|chain| chain.first()).ok_or(TlsError::NoCertificate)?;
    Identity::of_certificate(end_entity).map_err(TlsError::MalformedIdentity)
}

/// The stamps of the three files (`None` for one that cannot be read now).
fn stamp(files: &TlsFiles) -> Stamp {
    [&files.ca, &files.cert, &files.key].map(|path| file_stamp(path))
}

fn file_stamp(path: &Path) -> Option<FileStamp> {
    let metadata = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&metadata);
    #[cfg(not(unix))]
    let inode = 0;
    Some(FileStamp { modified: metadata.modified().ok(), bytes: metadata.len(), inode })
}

/// Reads the files and makes both configurations.
fn load(files: &TlsFiles) -> Result<(Identity, Loaded), TlsConfigError> {
    let file_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsConfigError::File { path, source }
    };
    let cas = CertificateDer::pem_file_iter(&files.ca)
        .map_err(file_error(&files.ca))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(file_error(&files.ca))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(cas);
    if added == 0 {
        return Err(TlsConfigError::NoCa(files.ca.clone()));
    }
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(file_error(&files.cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(file_error(&files.cert))?;
    let end_entity = chain.first().ok_or_else(|| TlsConfigError::File {
        path: files.cert.clone(),
        source: rustls::pki_types::pem::Error::NoItemsFound,
    })?;
    let identity = Identity::of_certificate(end_entity)
        .map_err(|source| TlsConfigError::Identity { path: files.cert.clone(), source })?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(file_error(&files.key))?;
    let provider = provider();
    // Checks that the key is the certificate's.
    let certified = CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)?;
    drop(certified);
    let roots = Arc::new(roots);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider)).build()?;
    let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    // No resumption: every connection checks the certificates in force.
    server.session_storage = Arc::new(NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    let server_verifier =
        Arc::new(ClusterServerVerifier { roots, algorithms: provider.signature_verification_algorithms });
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(server_verifier)
        .with_client_auth_cert(chain, key)?;
    client.resumption = Resumption::disabled();
    Ok((identity, Loaded { server: Arc::new(server), client: Arc::new(client) }))
}

/// rustls's ring provider (deprecated since rustls 0.23.48 only because ring has no post-quantum
/// key exchange; the alternative, aws-lc-rs, needs cmake and a C toolchain to build).
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The dialer's check of the acceptor's certificate: its chain and dates, by webpki, as for any
/// server, but no host name: the identity URI is checked once the handshake is done (the
/// dialer sends nothing before that).
#[derive(Debug)]
struct ClusterServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let certificate = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(&certificate, &self.roots, intermediates, now, self.algorithms.all)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, certificate, signature, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, certificate, signature, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_uris_have_one_spelling() {
        let identity = Identity::new(7, NodeId(12));
        assert_eq!(identity.uri(), "raft://7/node/12");
        assert_eq!(Identity::parse_uri(&identity.uri()), Ok(identity));
        assert_eq!(Identity::parse_uri("raft://0/node/0"), Ok(Identity::new(0, NodeId(0))));
        let max = format!("raft://{}/node/{}", u64::MAX, u64::MAX);
        assert_eq!(Identity::parse_uri(&max), Ok(Identity::new(u64::MAX, NodeId(u64::MAX))));
        for bad in [
            "raft://7/node/",
            "raft:///node/1",
            "raft://07/node/1",
            "raft://7/node/+1",
            "raft://7/node/1/",
            "raft://7/nodes/1",
            "RAFT://7/node/1",
            "raft://7/node/18446744073709551616",
            "raft://7/node/1?x",
            "spiffe://7/node/1",
        ] {
            assert_eq!(Identity::parse_uri(bad), Err(IdentityError::Malformed(bad.to_owned())), "{bad}");
        }
    }

    #[test]
    fn garbage_is_no_certificate() {
        assert_eq!(Identity::of_certificate(b"not a certificate"), Err(IdentityError::NotX509));
        assert_eq!(Identity::of_certificate(&[]), Err(IdentityError::NotX509));
    }

    #[test]
    fn io_errors_carrying_rustls_errors_are_typed() {
        let wrap = |error: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, error);
        let expired = CertificateError::ExpiredContext {
            time: UnixTime::since_unix_epoch(std::time::Duration::from_secs(2)),
            not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1)),
        };
        assert!(matches!(TlsError::from_io(wrap(rustls::Error::InvalidCertificate(expired))), TlsError::Expired));
        assert!(matches!(TlsError::from_io(wrap(rustls::Error::NoCertificatesPresented)), TlsError::NoCertificate));
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(matches!(TlsError::from_io(wrap(unknown)), TlsError::UnknownIssuer));
        let alert = rustls::Error::AlertReceived(AlertDescription::UnknownCA);
        assert!(matches!(TlsError::from_io(wrap(alert)), TlsError::PeerRefused(AlertDescription::UnknownCA)));
        assert!(matches!(TlsError::from_io(io::ErrorKind::UnexpectedEof.into()), TlsError::Io(_)));
    }
}
