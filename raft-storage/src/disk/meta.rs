//! The metadata files: `IDENTITY` (who owns the directory, written once) and `META` (hard state,
//! membership, the log boundary and the installed snapshot). Both are framed with a crc (see
//! [`codec`](super::codec)) and replaced atomically: temp file, fsync, rename, fsync directory.

use raft_core::{HardState, Index, Membership, NodeId, Term};
use serde::{Deserialize, Serialize};

use super::codec::{FORMAT_VERSION, FRAME_PREFIX_BYTES, decode_framed, encode_framed};
use super::directory::Directory;
use super::error::{Corruption, DiskError, corrupt};
use super::snapshot::SnapshotFile;
use crate::fs::FileSystem;

/// The file naming the directory's owner.
const IDENTITY_FILE: &str = "IDENTITY";
/// The magic of `DiskStorage`'s IDENTITY file.
pub(crate) const IDENTITY_MAGIC: [u8; 8] = *b"RAFTNODE";
const META_FILE: &str = "META";
const META_MAGIC: [u8; 8] = *b"RAFTMETA";

/// Who owns a data directory. Opening it as anyone else is an error (docs/pitfalls.md #27).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The cluster.
    pub cluster_id: u64,
    /// The node within it.
    pub node_id: NodeId,
}

/// The content of `META` (and of a shared WAL's group metadata records). The field order is the
/// on-disk format (postcard).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub(crate) hard_state: HardState,
    pub(crate) membership: Membership,
    /// The log boundary: the last index dropped from the log, and its term.
    pub(crate) snapshot_index: Index,
    pub(crate) snapshot_term: Term,
    /// The installed snapshot, if any.
    pub(crate) snapshot: Option<SnapshotFile>,
}

/// Replaces `META` with `meta`, atomically and durably.
pub(super) fn write_meta<F: FileSystem>(dir: &Directory<F>, meta: &Meta) -> Result<(), DiskError> {
    let payload = postcard::to_allocvec(meta).expect("metadata always serializes");
    write_atomic(dir, META_FILE, &encode_framed(META_MAGIC, FORMAT_VERSION, &payload))
}

/// Writes `IDENTITY` with the `magic` and format `version` of its store, atomically and durably.
pub(crate) fn write_identity<F: FileSystem>(
    dir: &Directory<F>,
    identity: Identity,
    magic: [u8; 8],
    version: u32,
) -> Result<(), DiskError> {
    let payload = postcard::to_allocvec(&identity).expect("identities always serialize");
    write_atomic(dir, IDENTITY_FILE, &encode_framed(magic, version, &payload))
}

/// Reads and checks `META`.
pub(super) fn read_meta<F: FileSystem>(dir: &Directory<F>) -> Result<Meta, DiskError> {
    read_framed(dir, META_FILE, META_MAGIC, FORMAT_VERSION)
}

/// Reads and checks `IDENTITY`, written with the `magic` and format `version` of its store.
fn read_identity<F: FileSystem>(dir: &Directory<F>, magic: [u8; 8], version: u32) -> Result<Identity, DiskError> {
    read_framed(dir, IDENTITY_FILE, magic, version)
}

/// Prepares `dir` for a new store: creates it if missing, and fails if a store is there already
/// (an IDENTITY file), or if it holds log segments (`is_segment` names them) but no IDENTITY: a
/// damaged store, which starting afresh would erase (and with it the node's vote).
pub(crate) fn prepare_new<F: FileSystem>(dir: &Directory<F>, is_segment: fn(&str) -> bool) -> Result<(), DiskError> {
    dir.create_all()?;
    let names = dir.list()?;
    if names.iter().any(|n| n == IDENTITY_FILE) {
        return Err(DiskError::AlreadyInitialized(dir.path().to_path_buf()));
    }
    if names.iter().any(|n| is_segment(n)) {
        return Err(DiskError::MissingIdentity(dir.path().to_path_buf()));
    }
    Ok(())
}

/// Lists the files of the store in `dir` being opened as `identity`, after checking its IDENTITY
/// file (of `magic` and format `version`): no directory or no store is
/// [`DiskError::NotInitialized`], log segments (`is_segment` names them) without IDENTITY
/// [`DiskError::MissingIdentity`], another owner [`DiskError::IdentityMismatch`]
/// (docs/pitfalls.md #27).
pub(crate) fn open_existing<F: FileSystem>(
    dir: &Directory<F>,
    identity: Identity,
    (magic, version): ([u8; 8], u32),
    is_segment: fn(&str) -> bool,
) -> Result<Vec<String>, DiskError> {
    let names = match dir.list() {
        Err(error) if error.io_kind() == Some(std::io::ErrorKind::NotFound) => {
            return Err(DiskError::NotInitialized(dir.path().to_path_buf()));
        }
        listed => listed?,
    };
    if !names.iter().any(|n| n == IDENTITY_FILE) {
        if names.iter().any(|n| is_segment(n)) {
            return Err(DiskError::MissingIdentity(dir.path().to_path_buf()));
        }
        return Err(DiskError::NotInitialized(dir.path().to_path_buf()));
    }
    let found = read_identity(dir, magic, version)?;
    if found != identity {
        return Err(DiskError::IdentityMismatch { expected: identity, found });
    }
    Ok(names)
}

/// Replaces the file `name` with `bytes`: through `<name>.tmp`, synced before the rename, and the
/// directory synced after it.
fn write_atomic<F: FileSystem>(dir: &Directory<F>, name: &str, bytes: &[u8]) -> Result<(), DiskError> {
    let temp = dir.file(&format!("{name}.tmp"));
    let target = dir.file(name);
    let mut file = dir.create(temp)?;
    file.append(bytes)?;
    file.sync()?;
    dir.rename(file.path(), &target)?;
    dir.sync()
}

fn read_framed<T: serde::de::DeserializeOwned, F: FileSystem>(
    dir: &Directory<F>,
    name: &str,
    magic: [u8; 8],
    version: u32,
) -> Result<T, DiskError> {
    let path = dir.file(name);
    let bytes = dir.read(&path)?;
    let payload = decode_framed(&path, &bytes, magic, version)?;
    postcard::from_bytes(payload).map_err(|_| corrupt(&path, FRAME_PREFIX_BYTES as u64, Corruption::Decode))
}
