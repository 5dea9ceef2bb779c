//! The metadata files: `IDENTITY` (who owns the directory, written once) and `META` (hard state,
//! membership, the log boundary and the installed snapshot). Both are framed with a crc (see
//! [`codec`](super::codec)) and replaced atomically: temp file, fsync, rename, fsync directory.

use raft_core::{HardState, Index, Membership, NodeId, Term};
use serde::{Deserialize, Serialize};

use super::codec::{FRAME_PREFIX_BYTES, decode_framed, encode_framed};
use super::directory::Directory;
use super::error::{Corruption, DiskError, corrupt};
use super::snapshot::SnapshotFile;
use crate::fs::FileSystem;

/// The file naming the directory's owner.
pub(super) const IDENTITY_FILE: &str = "IDENTITY";
const IDENTITY_MAGIC: [u8; 8] = *b"RAFTNODE";
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

/// The content of `META`. The field order is the on-disk format (postcard).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Meta {
    pub(super) hard_state: HardState,
    pub(super) membership: Membership,
    /// The log boundary: the last index dropped from the log, and its term.
    pub(super) snapshot_index: Index,
    pub(super) snapshot_term: Term,
    /// The installed snapshot, if any.
    pub(super) snapshot: Option<SnapshotFile>,
}

/// Replaces `META` with `meta`, atomically and durably.
pub(super) fn write_meta<F: FileSystem>(dir: &Directory<F>, meta: &Meta) -> Result<(), DiskError> {
    let payload = postcard::to_allocvec(meta).expect("metadata always serializes");
    write_atomic(dir, META_FILE, &encode_framed(META_MAGIC, &payload))
}

/// Writes `IDENTITY`, atomically and durably.
pub(super) fn write_identity<F: FileSystem>(dir: &Directory<F>, identity: Identity) -> Result<(), DiskError> {
    let payload = postcard::to_allocvec(&identity).expect("identities always serialize");
    write_atomic(dir, IDENTITY_FILE, &encode_framed(IDENTITY_MAGIC, &payload))
}

/// Reads and checks `META`.
pub(super) fn read_meta<F: FileSystem>(dir: &Directory<F>) -> Result<Meta, DiskError> {
    read_framed(dir, META_FILE, META_MAGIC)
}

/// Reads and checks `IDENTITY`.
pub(super) fn read_identity<F: FileSystem>(dir: &Directory<F>) -> Result<Identity, DiskError> {
    read_framed(dir, IDENTITY_FILE, IDENTITY_MAGIC)
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
) -> Result<T, DiskError> {
    let path = dir.file(name);
    let bytes = dir.read(&path)?;
    let payload = decode_framed(&path, &bytes, magic)?;
    postcard::from_bytes(payload).map_err(|_| corrupt(&path, FRAME_PREFIX_BYTES as u64, Corruption::Decode))
}
