//! Development certificates for a cluster (`raft-kv certs`): one CA, a certificate per node
//! signed by it, and an admin token, written as files into one directory. `raft-kv serve --tls
//! DIR`, `raft-kv cluster --tls DIR` and the client commands' `--tls DIR` read that directory.
//!
//! What a directory holds (every private part with mode 0600):
//!
//! | file | what |
//! | --- | --- |
//! | `ca.pem`, `ca.key` | the cluster's CA: its certificate, and its key, kept to issue more |
//! | `node-ID.pem`, `node-ID.key` | node ID's certificate and PKCS#8 private key |
//! | `admin.token` | the admin bearer token: 32 random bytes, hex |
//! | `data.token` | the data bearer token (only when asked for) |
//!
//! A node's certificate names the node by a URI subject alternative name
//! `raft://CLUSTER_ID/node/NODE_ID` (decimal), which the Raft transport checks against the peer it
//! expects, and carries DNS `localhost` and IP `127.0.0.1` so that the node also serves HTTPS on
//! the loopback interface; it is valid for TLS servers and clients both. Keys are ECDSA P-256.
//!
//! rcgen (with the ring backend) builds the certificates: X.509 is not something to write by hand.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use thiserror::Error;

/// The CA's certificate.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key.
pub const CA_KEY: &str = "ca.key";
/// The admin bearer token.
pub const ADMIN_TOKEN: &str = "admin.token";
/// The data bearer token.
pub const DATA_TOKEN: &str = "data.token";
/// The mode of every private file (keys, tokens): the owner's only.
pub const PRIVATE_MODE: u32 = 0o600;
/// How many random bytes a token has (it is written as twice as many hex digits).
pub const TOKEN_BYTES: usize = 32;
/// How long certificates are valid by default, in days.
pub const VALIDITY_DAYS_DEFAULT: u32 = 365;
/// The most nodes one call writes certificates for.
pub const NODES_MAX: u64 = 1000;

/// The file name of node `id`'s certificate.
pub fn node_cert(id: u64) -> String {
    format!("node-{id}.pem")
}

/// The file name of node `id`'s private key.
pub fn node_key(id: u64) -> String {
    format!("node-{id}.key")
}

/// The URI subject alternative name that names node `node_id` of cluster `cluster_id` in its
/// certificate.
pub fn node_uri(cluster_id: u64, node_id: u64) -> String {
    format!("raft://{cluster_id}/node/{node_id}")
}

/// What to write.
#[derive(Clone, Debug)]
pub struct CertsRequest {
    /// The directory (created if missing).
    pub out: PathBuf,
    /// Certificates for nodes `1..=nodes`.
    pub nodes: u64,
    /// The cluster id named in the nodes' certificates.
    pub cluster_id: u64,
    /// How many days the certificates are valid from now.
    pub days: u32,
    /// Also write `data.token`.
    pub data_token: bool,
    /// Overwrite files that exist; otherwise their presence is an error and nothing is written.
    pub force: bool,
}

/// Why certificates could not be written.
#[derive(Debug, Error)]
pub enum CertsError {
    /// A file exists and `force` was not given; nothing was written.
    #[error("{} exists (use --force to overwrite; nothing was written)", .0.display())]
    Exists(PathBuf),
    /// A bad request (no nodes, too many).
    #[error("{0}")]
    Invalid(String),
    /// Generating a key or a certificate failed.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// The operating system's random number generator failed.
    #[error("reading random bytes: {0}")]
    Random(getrandom::Error),
    /// Writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// One file to write.
struct Output {
    name: String,
    contents: String,
    private: bool,
}

/// Writes a CA, a certificate and key per node and the tokens into `request.out`; the paths
/// written, in order.
pub fn generate(request: &CertsRequest) -> Result<Vec<PathBuf>, CertsError> {
    if request.nodes == 0 || request.nodes > NODES_MAX {
        return Err(CertsError::Invalid(format!("--nodes must be 1 to {NODES_MAX}")));
    }
    if request.days == 0 {
        return Err(CertsError::Invalid("--days must be 1 or more".to_owned()));
    }
    let outputs = build(request)?;
    // Every file is checked before any is written, so that a refusal leaves nothing half done.
    if !request.force
        && let Some(existing) = outputs.iter().map(|output| request.out.join(&output.name)).find(|path| path.exists())
    {
        return Err(CertsError::Exists(existing));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CertsError::Io { path, source }
    };
    std::fs::create_dir_all(&request.out).map_err(io(&request.out))?;
    let mut written = Vec::new();
    for output in outputs {
        let path = request.out.join(&output.name);
        write_file(&path, output.contents.as_bytes(), output.private, request.force).map_err(io(&path))?;
        written.push(path);
    }
    Ok(written)
}

/// Generates everything in memory.
fn build(request: &CertsRequest) -> Result<Vec<Output>, CertsError> {
    let not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1); // Clocks differ a little.
    let not_after = not_before + time::Duration::days(i64::from(request.days));
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = name(&format!("raft-kv cluster {} CA", request.cluster_id));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    (ca.not_before, ca.not_after, ca.serial_number) = (not_before, not_after, Some(serial()?));
    let ca_cert = ca.self_signed(&ca_key)?;
    let mut outputs = vec![
        Output { name: CA_CERT.to_owned(), contents: ca_cert.pem(), private: false },
        Output { name: CA_KEY.to_owned(), contents: ca_key.serialize_pem(), private: true },
    ];
    let issuer = Issuer::new(ca, ca_key);
    for id in 1..=request.nodes {
        let key = KeyPair::generate()?;
        let mut node = CertificateParams::default();
        node.distinguished_name = name(&format!("raft-kv node {id}"));
        node.subject_alt_names = vec![
            SanType::URI(node_uri(request.cluster_id, id).try_into()?),
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        node.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        node.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        node.use_authority_key_identifier_extension = true;
        (node.not_before, node.not_after, node.serial_number) = (not_before, not_after, Some(serial()?));
        let cert = node.signed_by(&key, &issuer)?;
        outputs.push(Output { name: node_cert(id), contents: cert.pem(), private: false });
        outputs.push(Output { name: node_key(id), contents: key.serialize_pem(), private: true });
    }
    outputs.push(Output { name: ADMIN_TOKEN.to_owned(), contents: token()?, private: true });
    if request.data_token {
        outputs.push(Output { name: DATA_TOKEN.to_owned(), contents: token()?, private: true });
    }
    Ok(outputs)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// A random positive 128-bit serial number.
fn serial() -> Result<SerialNumber, CertsError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(CertsError::Random)?;
    bytes[0] &= 0x7f; // Positive (DER integers are signed).
    bytes[0] |= 0x01; // No leading zero byte to strip.
    Ok(SerialNumber::from_slice(&bytes))
}

/// A new token: [`TOKEN_BYTES`] random bytes as hex, with a newline.
fn token() -> Result<String, CertsError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(CertsError::Random)?;
    let mut text: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    text.push('\n');
    Ok(text)
}

/// Writes `contents` to `path`, a new file unless `overwrite`; a private file gets
/// [`PRIVATE_MODE`] (also when it existed with another mode).
fn write_file(path: &Path, contents: &[u8], private: bool, overwrite: bool) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if private {
            options.mode(PRIVATE_MODE);
        }
        let mut file = options.open(path)?;
        if private {
            // `mode` applies only to a file this call creates.
            file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_MODE))?;
        }
        file.write_all(contents)?;
        file.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = private;
        let mut file = options.open(path)?;
        file.write_all(contents)?;
        file.sync_all()
    }
}

/// Reads a bearer token from `path`: the file's text without surrounding whitespace; an empty
/// file is an error.
pub fn read_token(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the token file is empty"));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the token has whitespace inside"));
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    use super::*;

    fn request(out: PathBuf) -> CertsRequest {
        CertsRequest { out, nodes: 2, cluster_id: 7, days: 1, data_token: false, force: false }
    }

    #[test]
    fn node_certificates_name_the_node_by_uri_and_loopback() {
        let dir = tempfile::tempdir().expect("temp dir");
        generate(&request(dir.path().to_path_buf())).expect("written");
        let der = CertificateDer::from_pem_file(dir.path().join(node_cert(2))).expect("node 2's certificate");
        let contains = |needle: &[u8]| der.windows(needle.len()).any(|window| window == needle);
        assert!(contains(b"raft://7/node/2"));
        assert!(!contains(b"raft://7/node/1"));
        assert!(contains(b"localhost"));
        assert!(contains(&[127, 0, 0, 1]));
    }
}
