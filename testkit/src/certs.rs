//! Certificates for tests of the TLS transport (feature `tls`): a CA ([`TestCa`]) that signs node
//! certificates naming `raft://<cluster>/node/<node>` (and `localhost`, `127.0.0.1`), and the
//! bad ones the transport must refuse: expired, not yet valid, without identity, with two, from
//! another CA, of another cluster. [`ClusterCerts`] writes a cluster's files in a temporary
//! directory and makes each node's [`TlsConfig`].
//!
//! Generated with rcgen (ECDSA P-256 keys, PKCS#8 PEM), as `raft-kv certs` makes them for users.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft_core::NodeId;
use raft_net::tls::{Identity, TlsConfig, TlsConfigError, TlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, date_time_ymd,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tempfile::TempDir;

/// A certificate authority of a test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// What a certificate a [`TestCa`] signs holds.
#[derive(Clone, Debug)]
pub struct CertSpec {
    /// Its URI subject alternative names (a node's: one, `Identity::uri`).
    pub uris: Vec<String>,
    /// Valid from the start of this year ...
    pub valid_from_year: i32,
    /// ... to the start of this one.
    pub valid_to_year: i32,
}

impl CertSpec {
    /// A node's certificate, valid from 2020 to 2100.
    pub fn node(cluster_id: u64, node: u64) -> CertSpec {
        CertSpec {
            uris: vec![Identity::new(cluster_id, NodeId(node)).uri()],
            valid_from_year: 2020,
            valid_to_year: 2100,
        }
    }

    /// A node's certificate that expired (valid in 2020 only).
    pub fn expired(cluster_id: u64, node: u64) -> CertSpec {
        CertSpec { valid_from_year: 2020, valid_to_year: 2021, ..CertSpec::node(cluster_id, node) }
    }

    /// A node's certificate valid from 2099 on only.
    pub fn not_yet_valid(cluster_id: u64, node: u64) -> CertSpec {
        CertSpec { valid_from_year: 2099, valid_to_year: 2100, ..CertSpec::node(cluster_id, node) }
    }
}

/// A certificate and its key, PEM.
#[derive(Clone, Debug)]
pub struct TestCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl TestCa {
    /// A new CA (a new key) named `name`.
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("rcgen makes P-256 keys");
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        (params.not_before, params.not_after) = (date_time_ymd(2020, 1, 1), date_time_ymd(2100, 1, 1));
        let pem = params.self_signed(&key).expect("a CA certificate of valid parameters").pem();
        TestCa { issuer: Issuer::new(params, key), pem }
    }

    /// The CA certificate.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A valid certificate of node `node` of cluster `cluster_id`.
    pub fn node(&self, cluster_id: u64, node: u64) -> TestCert {
        self.sign(&CertSpec::node(cluster_id, node))
    }

    /// A certificate (with a new key) as `spec` says.
    pub fn sign(&self, spec: &CertSpec) -> TestCert {
        let key = KeyPair::generate().expect("rcgen makes P-256 keys");
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name("raft test node");
        params.subject_alt_names = spec
            .uris
            .iter()
            .map(|uri| SanType::URI(uri.as_str().try_into().expect("test URIs are ASCII")))
            .chain([
                SanType::DnsName("localhost".try_into().expect("an ASCII name")),
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ])
            .collect();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = date_time_ymd(spec.valid_from_year, 1, 1);
        params.not_after = date_time_ymd(spec.valid_to_year, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).expect("a node certificate of valid parameters");
        TestCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}

fn common_name(name: &str) -> DistinguishedName {
    let mut distinguished = DistinguishedName::new();
    distinguished.push(DnType::CommonName, name);
    distinguished
}

/// Writes `contents` to `path` whole: into a file beside it, then renamed over it (as a
/// certificate rotation should).
pub fn replace_file(path: &Path, contents: &str) -> io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    std::fs::write(&temporary, contents)?;
    std::fs::rename(&temporary, path)
}

/// Writes `ca`'s certificate and `cert` as `<name>-ca.pem`, `<name>.pem` and `<name>.key` in
/// `dir`; returns their paths.
pub fn write_files(dir: &Path, name: &str, ca_pem: &str, cert: &TestCert) -> io::Result<TlsFiles> {
    let files = TlsFiles {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    replace_file(&files.ca, ca_pem)?;
    replace_file(&files.cert, &cert.cert_pem)?;
    replace_file(&files.key, &cert.key_pem)?;
    Ok(files)
}

/// The certificates of a cluster's nodes, written in a temporary directory removed on drop.
pub struct ClusterCerts {
    /// The cluster's CA.
    pub ca: TestCa,
    /// The cluster.
    pub cluster_id: u64,
    dir: TempDir,
}

impl ClusterCerts {
    /// A new CA for cluster `cluster_id`, and a valid certificate for each of `nodes`.
    pub fn new(cluster_id: u64, nodes: impl IntoIterator<Item = u64>) -> io::Result<ClusterCerts> {
        let certs = ClusterCerts { ca: TestCa::new("raft test CA"), cluster_id, dir: tempfile::tempdir()? };
        for node in nodes {
            certs.write(node, &certs.ca.node(cluster_id, node))?;
        }
        Ok(certs)
    }

    /// The directory of the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where node `node`'s files are.
    pub fn files(&self, node: u64) -> TlsFiles {
        let name = format!("node-{node}");
        TlsFiles {
            ca: self.dir().join(format!("{name}-ca.pem")),
            cert: self.dir().join(format!("{name}.pem")),
            key: self.dir().join(format!("{name}.key")),
        }
    }

    /// Writes (or replaces) node `node`'s files: the cluster's CA and `cert`.
    pub fn write(&self, node: u64, cert: &TestCert) -> io::Result<TlsFiles> {
        write_files(self.dir(), &format!("node-{node}"), self.ca.pem(), cert)
    }

    /// Node `node`'s configuration, loaded from its files.
    pub fn config(&self, node: u64) -> Result<TlsConfig, TlsConfigError> {
        TlsConfig::from_files(self.files(node))
    }

    /// A path in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }
}

/// The DER of a PEM certificate.
pub fn der(cert_pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("a PEM certificate")
}

/// rustls's ring provider, as the transport uses it.
#[allow(deprecated)] // Deprecated only for lacking post-quantum key exchange; see raft_net::tls.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &str) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("a PEM CA certificate")).expect("a usable CA certificate");
    }
    Arc::new(roots)
}

fn key(cert: &TestCert) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("a PEM key")
}

/// A plain rustls client (TLS 1.3) that trusts `ca_pem` for servers named `localhost` and
/// presents `cert` (or no certificate): a peer the transport's acceptor must judge.
pub fn client_config(ca_pem: &str, cert: Option<&TestCert>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_root_certificates(roots(ca_pem));
    let config = match cert {
        Some(cert) => builder.with_client_auth_cert(vec![der(&cert.cert_pem)], key(cert)).expect("a matching key"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// A plain rustls server (TLS 1.3) that presents `cert` and requires a client certificate of
/// `ca_pem`: a peer the transport's dialer must judge.
pub fn server_config(ca_pem: &str, cert: &TestCert) -> Arc<ServerConfig> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem), provider())
        .build()
        .expect("a verifier of a usable CA");
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![der(&cert.cert_pem)], key(cert))
        .expect("a matching key");
    Arc::new(config)
}
