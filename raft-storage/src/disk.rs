//! The durable store: a write-ahead log of segment files, two small metadata files and the
//! snapshot's data file, in one directory.
//!
//! Layout:
//! - `IDENTITY`: the cluster and node this directory belongs to (written once).
//! - `META`: hard state, membership, the log boundary and the installed snapshot's metadata
//!   (with its data's length, crc32 and the crc32 of each block of `SNAPSHOT_BLOCK_BYTES`),
//!   replaced atomically (temp file, fsync, rename, fsync directory).
//! - `<first index, 20 digits>.wal`: segments. A segment starts with a header (magic, format
//!   version, first index, crc) followed by records `[len u32][crc32 u32][postcard Entry]`, the crc
//!   covering the length and the payload. Segments rotate at `segment_bytes_max`.
//! - `snapshot-<index, 20 digits>-<term, 20 digits>.snap`: the installed snapshot's data, exactly
//!   as received (no framing: META holds its length and crcs). Each snapshot gets its own name, so
//!   META never names a file that is being replaced.
//! - `snapshot.staging`: the data of a snapshot being received, chunk by chunk.
//!
//! Entries are also kept in memory (from the log boundary on), so reads never touch the disk;
//! compaction bounds that memory. Snapshot data is never held in memory: chunks are written
//! through to the staging file and read back from the snapshot file a piece at a time.
//!
//! The log boundary (where the log starts, moved by `compact`) and the snapshot are separate: an
//! install moves the boundary only when the log does not hold the snapshot's last entry.
//!
//! Installing a snapshot: fsync the staging file, rename it to its snapshot name, fsync the
//! directory, then replace META (snapshot, membership and, when the snapshot supersedes the log,
//! the new boundary, all in one atomic write), and only then remove the superseded segments and
//! the previous snapshot file. A crash before META is replaced recovers the old snapshot and log
//! (the new file is a stray that recovery removes); a crash after recovers the new ones
//! (recovery finishes the removal of superseded segments, as after a compaction).
//!
//! An application restores its state machine on restart by streaming the snapshot with
//! [`Storage::snapshot_chunk`] from offset 0 until a chunk is `done` (see [`DiskStorage`]).
//!
//! Snapshot integrity: `open` checks the whole snapshot file against its crc, and every
//! [`Storage::snapshot_chunk`] read checks the blocks it covers against their crcs, so bytes that
//! rot (or read back wrong) after `open` are a [`StorageError::SnapshotCorrupt`], never data: a
//! leader stops instead of sending them, a restarted node instead of restoring them. The crcs
//! are computed from the bytes as they are written; the snapshot's own checksum
//! ([`SnapshotMeta::data_crc32`], from the state machine that took it) is checked end to end by
//! raft-core (on every received snapshot before it is installed) and by raft-net (on the data it
//! restores a state machine from).
//!
//! Durability: `persist` fsyncs once per call (group commit: a driver batches many entries per
//! call). The term and vote are written (atomically) before the entries, so a durable entry of a
//! term implies a durable term. A commit-index-only change is kept in memory and written with the
//! next metadata write: the commit index needs no durability for safety.
//!
//! Failure: any I/O error stops the store (fail-stop): every later call returns
//! [`DiskError::Stopped`], and the driver must stop the node, since it cannot know what reached
//! the disk. A refused call (an append that does not continue the log, a snapshot chunk out of
//! order, an install of a snapshot not staged) changes nothing and leaves the store usable.

use std::path::{Path, PathBuf};

use raft_core::{
    Entry, HardState, Index, InitialState, Membership, NodeId, Output, SnapshotChunk, SnapshotMeta, Storage,
    StorageError, Term,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::fs::{FileSystem, FsFile, StdFs};
use crate::{LogStore, take_entries};

/// The on-disk format version this code writes and reads.
/// Version 2 added the snapshot to META. Version 3 added the snapshot's data checksum to its
/// metadata and a crc per 64 KiB block of its data, checked on every read.
pub const FORMAT_VERSION: u32 = 3;
const SEGMENT_MAGIC: [u8; 8] = *b"RAFTWAL1";
const META_MAGIC: [u8; 8] = *b"RAFTMETA";
const IDENTITY_MAGIC: [u8; 8] = *b"RAFTNODE";
/// Segment header: magic, version, first index, crc of the preceding bytes.
const HEADER_BYTES: u64 = 8 + 4 + 8 + 4;
/// Record prefix: length and crc.
const RECORD_PREFIX_BYTES: u64 = 8;
/// The largest record payload accepted when reading (guards against a garbage length).
pub const RECORD_BYTES_MAX: u32 = 256 * 1024 * 1024;
const IDENTITY_FILE: &str = "IDENTITY";
const META_FILE: &str = "META";
const STAGING_FILE: &str = "snapshot.staging";
/// Where a local snapshot is written before it is installed, apart from a received one's staging.
const LOCAL_SNAPSHOT_FILE: &str = "snapshot.local";
/// The most snapshot bytes read at once: by recovery when it checks the snapshot file, and by
/// [`Storage::snapshot_chunk`] whatever `bytes_max` asks for.
const SNAPSHOT_READ_BYTES_MAX: u64 = 1024 * 1024;
/// Snapshot data is checked in blocks of this many bytes (the last one may be shorter), each
/// with its crc32 in META: a read checks every block it touches, reading whole blocks. Equal to
/// raft-core's default `snapshot_chunk_bytes_max`, so a leader's aligned chunk reads one block.
/// META holds 4 bytes per block (64 KiB per GiB of snapshot).
const SNAPSHOT_BLOCK_BYTES: u64 = 64 * 1024;
const _: () = assert!(SNAPSHOT_READ_BYTES_MAX.is_multiple_of(SNAPSHOT_BLOCK_BYTES));

/// Who owns a data directory. Opening it as anyone else is an error (docs/pitfalls.md #27).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The cluster.
    pub cluster_id: u64,
    /// The node within it.
    pub node_id: NodeId,
}

/// Tunables of the durable store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskOptions {
    /// A segment is closed and a new one started once it would grow past this size.
    pub segment_bytes_max: u64,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions { segment_bytes_max: 64 * 1024 * 1024 }
    }
}

/// Which file operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOp {
    /// Creating a directory or file.
    Create,
    /// Opening a file.
    Open,
    /// Reading a file.
    Read,
    /// Appending to a file.
    Append,
    /// Syncing a file.
    Sync,
    /// Truncating a file.
    Truncate,
    /// Renaming a file.
    Rename,
    /// Removing a file.
    Remove,
    /// Listing a directory.
    List,
    /// Syncing a directory.
    SyncDir,
}

/// What is wrong with a damaged file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum Corruption {
    /// The file does not start with the expected magic bytes.
    #[error("bad magic")]
    BadMagic,
    /// The file was written by an unknown format version.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u32),
    /// A checksum does not match its data (not at the tail, where it would be a torn write).
    #[error("checksum mismatch")]
    Checksum,
    /// The file ends inside a header or record where no torn write is possible.
    #[error("truncated")]
    Truncated,
    /// A record's length is impossible.
    #[error("record length {0} out of range")]
    RecordLength(u32),
    /// A record passed its checksum but does not decode.
    #[error("undecodable record")]
    Decode,
    /// A segment's header names a different first index than its file name.
    #[error("header first index {header} differs from the file name's {name}")]
    HeaderMismatch {
        /// The first index in the header.
        header: Index,
        /// The first index in the file name.
        name: Index,
    },
    /// An entry's index is not the one expected next (a gap or a regression).
    #[error("expected index {expected}, found {found}")]
    IndexOutOfSequence {
        /// The index expected.
        expected: Index,
        /// The index found.
        found: Index,
    },
    /// An entry's term is lower than the previous entry's.
    #[error("term {found} after term {previous}")]
    TermRegression {
        /// The previous entry's term.
        previous: Term,
        /// This entry's term.
        found: Term,
    },
    /// The snapshot file that META names does not exist.
    #[error("snapshot file missing")]
    SnapshotMissing,
    /// The snapshot file's length differs from the one META records (the offset is where the
    /// shorter of the two ends).
    #[error("snapshot file holds {found} bytes, META records {expected}")]
    SnapshotLength {
        /// The length META records.
        expected: u64,
        /// The file's length.
        found: u64,
    },
    /// The log does not continue right after the snapshot boundary.
    #[error("log starts at {first} but the snapshot ends at {snapshot}")]
    GapAfterSnapshot {
        /// The first log index after the snapshot.
        first: Index,
        /// The snapshot's last index.
        snapshot: Index,
    },
}

/// Why the durable store failed. Recovery errors name the file and the byte offset.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DiskError {
    /// A file-system call failed.
    #[error("{op:?} failed on {path:?}: {kind:?}")]
    Io {
        /// The operation.
        op: IoOp,
        /// The file or directory.
        path: PathBuf,
        /// The error kind.
        kind: std::io::ErrorKind,
    },
    /// A file is damaged.
    #[error("{path:?} is corrupt at byte {offset}: {corruption}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The byte offset of the damage.
        offset: u64,
        /// What is wrong.
        corruption: Corruption,
    },
    /// The directory belongs to another node or cluster.
    #[error("directory belongs to {found:?}, not {expected:?}")]
    IdentityMismatch {
        /// Who the caller said it is.
        expected: Identity,
        /// Who the directory belongs to.
        found: Identity,
    },
    /// `open` found no store: a node whose disk was lost must rejoin as a new member rather than
    /// start over as if it had never voted (docs/pitfalls.md #27).
    #[error("no store in {0:?}")]
    NotInitialized(PathBuf),
    /// The directory holds log segments but no IDENTITY file: a damaged store. Neither `open`
    /// nor `create` proceeds, since starting afresh would erase the node's log and vote.
    #[error("{0:?} holds log segments but no IDENTITY file")]
    MissingIdentity(PathBuf),
    /// `create` found an existing store.
    #[error("a store already exists in {0:?}")]
    AlreadyInitialized(PathBuf),
    /// An append does not continue the log.
    #[error("append at {first} does not continue the log ending at {last}")]
    AppendGap {
        /// The first appended index.
        first: Index,
        /// The last stored index.
        last: Index,
    },
    /// Appended entries are not consecutive.
    #[error("appended entries not consecutive at {0}")]
    AppendNotConsecutive(Index),
    /// An append would overwrite entries covered by the snapshot.
    #[error("append at {first} overwrites the snapshot ending at {snapshot}")]
    AppendBelowSnapshot {
        /// The first appended index.
        first: Index,
        /// The snapshot's last index.
        snapshot: Index,
    },
    /// A snapshot chunk does not continue the staged data, or belongs to another snapshot than
    /// the one staged. Nothing was written; the staged data is kept.
    #[error("snapshot chunk at offset {offset} does not follow the {staged} bytes staged")]
    SnapshotChunkOutOfOrder {
        /// The chunk's offset.
        offset: u64,
        /// The bytes staged for that snapshot so far (0 when another snapshot or none is staged).
        staged: u64,
    },
    /// An install named a snapshot that is not the one staged. Nothing changed.
    #[error("snapshot at index {0} is not staged")]
    SnapshotNotStaged(Index),
    /// An earlier I/O error stopped the store (fail-stop).
    #[error("the store stopped after an earlier I/O error")]
    Stopped,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    hard_state: HardState,
    membership: Membership,
    /// The log boundary: the last index dropped from the log, and its term.
    snapshot_index: Index,
    snapshot_term: Term,
    /// The installed snapshot, if any.
    snapshot: Option<SnapshotFile>,
}

/// An installed snapshot: its metadata and what its data file must hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    /// The data's length in bytes.
    len: u64,
    /// The crc32 of the whole data.
    crc: u32,
    /// The crc32 of each block of [`SNAPSHOT_BLOCK_BYTES`] of the data, in order.
    block_crcs: Vec<u32>,
}

/// A snapshot being received: the open staging file, written through chunk by chunk.
struct Staging<File> {
    meta: SnapshotMeta,
    file: File,
    /// The file's name in the directory.
    name: &'static str,
    /// The bytes staged so far.
    len: u64,
    /// The crc32 of the bytes staged so far.
    crc: crc32fast::Hasher,
    /// The crcs of the blocks staged so far, and of the partial block after them.
    blocks: BlockCrcs,
}

/// The crc32 of each [`SNAPSHOT_BLOCK_BYTES`] block of data written in pieces of any size.
#[derive(Default)]
struct BlockCrcs {
    done: Vec<u32>,
    current: crc32fast::Hasher,
    current_len: u64,
}

impl BlockCrcs {
    fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = (SNAPSHOT_BLOCK_BYTES - self.current_len).min(data.len() as u64) as usize;
            self.current.update(&data[..room]);
            self.current_len += room as u64;
            data = &data[room..];
            if self.current_len == SNAPSHOT_BLOCK_BYTES {
                let block = std::mem::take(&mut self.current);
                self.done.push(block.finalize());
                self.current_len = 0;
            }
        }
    }

    /// Every block's crc, the partial last block's included.
    fn finish(mut self) -> Vec<u32> {
        if self.current_len > 0 {
            self.done.push(self.current.finalize());
        }
        self.done
    }
}

/// One segment file: its first index and the byte offset of each of its records.
#[derive(Clone, Debug)]
struct Segment {
    first_index: Index,
    offsets: Vec<u64>,
    len: u64,
}

impl Segment {
    fn next_index(&self) -> Index {
        Index(self.first_index.0 + self.offsets.len() as u64)
    }
}

/// The durable, crash-safe store over a [`FileSystem`].
///
/// It implements [`Storage`] (reads) and [`LogStore`] (writes); see the module docs for the
/// files and the crash-safety argument.
///
/// On restart, an application restores its state machine from the installed snapshot by
/// streaming its data with [`Storage::snapshot_chunk`] (recovery has checked its length and crc):
///
/// ```
/// use raft_core::{Index, Membership, NodeId, SnapshotMeta, Storage, Term};
/// use raft_storage::{DiskOptions, DiskStorage, Identity, LogStore, SimFs};
///
/// let me = Identity { cluster_id: 1, node_id: NodeId(1) };
/// let membership = Membership::new([NodeId(1)]);
/// let mut store = DiskStorage::create(SimFs::new(0), "/data", me, membership.clone(), DiskOptions::default())?;
/// let data = b"the state machine at index 7";
/// let meta = SnapshotMeta { index: Index(7), term: Term(2), membership, data_crc32: raft_core::snapshot_crc32(data) };
/// store.save_snapshot(&meta, data)?;
///
/// // After a restart: read the snapshot back a piece at a time.
/// let snapshot = store.initial_state()?.snapshot;
/// let mut restored = Vec::new();
/// loop {
///     let chunk = store.snapshot_chunk(snapshot.index, snapshot.term, restored.len() as u64, 8)?;
///     restored.extend_from_slice(&chunk.data); // An application feeds its state machine instead.
///     if chunk.done {
///         break;
///     }
/// }
/// assert_eq!(restored, b"the state machine at index 7");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DiskStorage<F: FileSystem = StdFs> {
    fs: F,
    dir: PathBuf,
    options: DiskOptions,
    identity: Identity,
    /// The metadata as last written.
    meta: Meta,
    /// The latest hard state given (its commit may be newer than `meta`'s).
    hard_state: HardState,
    /// Entries from `meta.snapshot_index + 1` on.
    entries: Vec<Entry>,
    segments: Vec<Segment>,
    /// The last segment, open for appending.
    active: Option<F::File>,
    /// The snapshot being received, if any.
    staging: Option<Staging<F::File>>,
    stopped: bool,
    /// Reused across `persist` calls: the records of one batch.
    write_buffer: Vec<u8>,
}

fn io_error(op: IoOp, path: &Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |error| DiskError::Io { op, path: path.to_path_buf(), kind: error.kind() }
}

fn corrupt(path: &Path, offset: u64, corruption: Corruption) -> DiskError {
    DiskError::Corrupt { path: path.to_path_buf(), offset, corruption }
}

fn segment_name(first_index: Index) -> String {
    format!("{:020}.wal", first_index.0)
}

fn parse_segment_name(name: &str) -> Option<Index> {
    let digits = name.strip_suffix(".wal")?;
    (digits.len() == 20).then(|| digits.parse().ok().map(Index)).flatten()
}

fn snapshot_name(meta: &SnapshotMeta) -> String {
    format!("snapshot-{:020}-{:020}.snap", meta.index.0, meta.term.0)
}

fn is_snapshot_name(name: &str) -> bool {
    let Some(numbers) = name.strip_prefix("snapshot-").and_then(|rest| rest.strip_suffix(".snap")) else {
        return false;
    };
    let Some((index, term)) = numbers.split_once('-') else { return false };
    [index, term].iter().all(|digits| digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// `[magic][version u32][len u32][crc u32][payload]`, the crc covering version, length, payload.
fn encode_framed(magic: [u8; 8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 20);
    out.extend_from_slice(&magic);
    let mut covered = Vec::with_capacity(payload.len() + 8);
    covered.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    covered.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    covered.extend_from_slice(payload);
    out.extend_from_slice(&covered[..8]);
    out.extend_from_slice(&crc32fast::hash(&covered).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn decode_framed<'a>(path: &Path, bytes: &'a [u8], magic: [u8; 8]) -> Result<&'a [u8], DiskError> {
    let field = |at: usize| -> Result<u32, DiskError> {
        let raw = bytes.get(at..at + 4).ok_or_else(|| corrupt(path, at as u64, Corruption::Truncated))?;
        Ok(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]))
    };
    if bytes.get(..8) != Some(&magic[..]) {
        return Err(corrupt(path, 0, Corruption::BadMagic));
    }
    let version = field(8)?;
    if version != FORMAT_VERSION {
        return Err(corrupt(path, 8, Corruption::UnsupportedVersion(version)));
    }
    let len = field(12)? as usize;
    let crc = field(16)?;
    let payload = bytes.get(20..20 + len).ok_or_else(|| corrupt(path, 20, Corruption::Truncated))?;
    let mut covered = bytes[8..16].to_vec();
    covered.extend_from_slice(payload);
    if crc32fast::hash(&covered) != crc || bytes.len() != 20 + len {
        return Err(corrupt(path, 16, Corruption::Checksum));
    }
    Ok(payload)
}

fn encode_header(first_index: Index) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES as usize);
    out.extend_from_slice(&SEGMENT_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&first_index.0.to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A postcard output that appends to a borrowed `Vec` (one copy, no allocation per record).
struct VecFlavor<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for VecFlavor<'_> {
    type Output = ();
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends `[len][crc][postcard entry]`, serializing in place (no temporary per record).
fn encode_record(entry: &Entry, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_PREFIX_BYTES as usize]);
    postcard::serialize_with_flavor(entry, VecFlavor(out)).expect("entries always serialize");
    let body = start + RECORD_PREFIX_BYTES as usize;
    let len = ((out.len() - body) as u32).to_le_bytes();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len);
    hasher.update(&out[body..]);
    out[start..start + 4].copy_from_slice(&len);
    out[start + 4..body].copy_from_slice(&hasher.finalize().to_le_bytes());
}

/// What recovery found in one segment file.
struct ParsedSegment {
    segment: Segment,
    entries: Vec<Entry>,
    /// The offset of a torn tail to cut off (0: the header itself was torn).
    torn_at: Option<u64>,
}

fn read_u32(bytes: &[u8], at: u64) -> u32 {
    let at = at as usize;
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn parse_header(path: &Path, bytes: &[u8], name_index: Index) -> Result<(), DiskError> {
    if bytes[..8] != SEGMENT_MAGIC {
        return Err(corrupt(path, 0, Corruption::BadMagic));
    }
    let version = read_u32(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(corrupt(path, 8, Corruption::UnsupportedVersion(version)));
    }
    if crc32fast::hash(&bytes[..20]) != read_u32(bytes, 20) {
        return Err(corrupt(path, 20, Corruption::Checksum));
    }
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[12..20]);
    let header = Index(u64::from_le_bytes(raw));
    if header != name_index {
        return Err(corrupt(path, 12, Corruption::HeaderMismatch { header, name: name_index }));
    }
    Ok(())
}

/// The borrowed shape of [`Entry`] (same postcard encoding), so that payloads can be sliced out of
/// the segment buffer instead of copied.
#[derive(Deserialize)]
struct EntryRef<'a> {
    term: Term,
    index: Index,
    #[serde(borrow)]
    payload: PayloadRef<'a>,
}

/// Must list the variants of [`raft_core::EntryPayload`] in the same order (postcard encodes
/// the variant index); the contract tests (`tests/contract.rs`) write and reopen every kind.
#[derive(Deserialize)]
enum PayloadRef<'a> {
    Normal(&'a [u8]),
    Noop,
    Membership(Membership),
}

/// Decodes one record; a `Normal` payload shares `segment`'s buffer (no copy, no allocation).
fn decode_entry(segment: &bytes::Bytes, record: &[u8]) -> Option<Entry> {
    let entry: EntryRef<'_> = postcard::from_bytes(record).ok()?;
    let payload = match entry.payload {
        PayloadRef::Normal(data) => raft_core::EntryPayload::Normal(segment.slice_ref(data)),
        PayloadRef::Noop => raft_core::EntryPayload::Noop,
        PayloadRef::Membership(membership) => raft_core::EntryPayload::Membership(membership),
    };
    Some(Entry { term: entry.term, index: entry.index, payload })
}

/// Reads one segment. Damage at the very end of the last segment is a torn write (reported in
/// `torn_at`); damage anywhere else is corruption.
fn parse_segment(
    path: &Path,
    bytes: &bytes::Bytes,
    first_index: Index,
    is_last: bool,
) -> Result<ParsedSegment, DiskError> {
    let len = bytes.len() as u64;
    let torn = |offset: u64, corruption: Corruption| {
        if is_last { Ok(offset) } else { Err(corrupt(path, offset, corruption)) }
    };
    let mut parsed = ParsedSegment {
        segment: Segment { first_index, offsets: Vec::new(), len },
        entries: Vec::new(),
        torn_at: None,
    };
    if len < HEADER_BYTES {
        parsed.torn_at = Some(torn(0, Corruption::Truncated)?);
        return Ok(parsed);
    }
    parse_header(path, bytes, first_index)?;
    let mut offset = HEADER_BYTES;
    while offset < len {
        if len - offset < RECORD_PREFIX_BYTES {
            parsed.torn_at = Some(torn(offset, Corruption::Truncated)?);
            break;
        }
        let record_len = read_u32(bytes, offset);
        let end = offset + RECORD_PREFIX_BYTES + u64::from(record_len);
        if end > len {
            if record_len > RECORD_BYTES_MAX {
                return Err(corrupt(path, offset, Corruption::RecordLength(record_len)));
            }
            if valid_record_after(bytes, offset + RECORD_PREFIX_BYTES, parsed.segment.next_index().next()) {
                return Err(corrupt(path, offset, Corruption::Truncated));
            }
            parsed.torn_at = Some(torn(offset, Corruption::Truncated)?);
            break;
        }
        let payload = &bytes[(offset + RECORD_PREFIX_BYTES) as usize..end as usize];
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&record_len.to_le_bytes());
        hasher.update(payload);
        if hasher.finalize() != read_u32(bytes, offset + 4) {
            if end == len {
                parsed.torn_at = Some(torn(offset, Corruption::Checksum)?);
                break;
            }
            return Err(corrupt(path, offset, Corruption::Checksum));
        }
        let entry = decode_entry(bytes, payload).ok_or_else(|| corrupt(path, offset, Corruption::Decode))?;
        check_sequence(path, offset, &parsed, &entry)?;
        parsed.segment.offsets.push(offset);
        parsed.entries.push(entry);
        offset = end;
    }
    if let Some(cut) = parsed.torn_at {
        parsed.segment.len = cut;
    }
    Ok(parsed)
}

/// Whether a whole record with a good checksum holding entry `index` starts anywhere at or after
/// `from`: then the damage before it is no torn tail.
fn valid_record_after(bytes: &[u8], from: u64, index: Index) -> bool {
    let len = bytes.len() as u64;
    (from..len.saturating_sub(RECORD_PREFIX_BYTES)).any(|at| {
        let record_len = u64::from(read_u32(bytes, at));
        let end = at + RECORD_PREFIX_BYTES + record_len;
        if end > len {
            return false;
        }
        let payload = &bytes[(at + RECORD_PREFIX_BYTES) as usize..end as usize];
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&(record_len as u32).to_le_bytes());
        hasher.update(payload);
        hasher.finalize() == read_u32(bytes, at + 4)
            && postcard::from_bytes::<Entry>(payload).is_ok_and(|entry| entry.index == index)
    })
}

fn check_sequence(path: &Path, offset: u64, parsed: &ParsedSegment, entry: &Entry) -> Result<(), DiskError> {
    let expected = parsed.segment.next_index();
    if entry.index != expected {
        return Err(corrupt(path, offset, Corruption::IndexOutOfSequence { expected, found: entry.index }));
    }
    if let Some(previous) = parsed.entries.last()
        && entry.term < previous.term
    {
        return Err(corrupt(path, offset, Corruption::TermRegression { previous: previous.term, found: entry.term }));
    }
    Ok(())
}

impl<F: FileSystem> DiskStorage<F> {
    /// Initializes a new store in `dir` (created if missing) for `identity`, with the group's
    /// initial `membership`. Fails if a store already exists there.
    pub fn create(
        fs: F,
        dir: impl Into<PathBuf>,
        identity: Identity,
        membership: Membership,
        options: DiskOptions,
    ) -> Result<Self, DiskError> {
        let dir = dir.into();
        fs.create_dir_all(&dir).map_err(io_error(IoOp::Create, &dir))?;
        let names = fs.list(&dir).map_err(io_error(IoOp::List, &dir))?;
        if names.iter().any(|n| n == IDENTITY_FILE) {
            return Err(DiskError::AlreadyInitialized(dir));
        }
        // Segments are only written after IDENTITY: without it they mean a damaged store, which
        // starting afresh would erase (and with it the node's vote).
        if names.iter().any(|n| parse_segment_name(n).is_some()) {
            return Err(DiskError::MissingIdentity(dir));
        }
        let meta = Meta { membership, ..Meta::default() };
        let mut store = DiskStorage::unloaded(fs, dir, options, identity, meta.clone());
        store.write_meta(meta)?;
        let identity_bytes = postcard::to_allocvec(&identity).expect("identities always serialize");
        store.write_atomic(IDENTITY_FILE, &encode_framed(IDENTITY_MAGIC, &identity_bytes))?;
        Ok(store)
    }

    /// Opens the store in `dir` as `identity`, recovering its state: a torn tail of the last
    /// segment is cut off; any other damage is a [`DiskError::Corrupt`] naming file and offset,
    /// a missing or damaged snapshot file included (its length and crc are checked, reading it a
    /// piece at a time). Leftovers of an interrupted snapshot install are removed.
    pub fn open(fs: F, dir: impl Into<PathBuf>, identity: Identity, options: DiskOptions) -> Result<Self, DiskError> {
        let dir = dir.into();
        let names = match fs.list(&dir) {
            Ok(names) => names,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Err(DiskError::NotInitialized(dir)),
            Err(error) => return Err(io_error(IoOp::List, &dir)(error)),
        };
        if !names.iter().any(|n| n == IDENTITY_FILE) {
            if names.iter().any(|n| parse_segment_name(n).is_some()) {
                return Err(DiskError::MissingIdentity(dir));
            }
            return Err(DiskError::NotInitialized(dir));
        }
        let found = read_framed::<Identity, F>(&fs, &dir.join(IDENTITY_FILE), IDENTITY_MAGIC)?;
        if found != identity {
            return Err(DiskError::IdentityMismatch { expected: identity, found });
        }
        let meta = read_framed::<Meta, F>(&fs, &dir.join(META_FILE), META_MAGIC)?;
        if let Some(snapshot) = &meta.snapshot {
            // Before anything is repaired: a store whose snapshot is damaged stays as found.
            verify_snapshot(&fs, &dir, snapshot)?;
        }
        let mut store = DiskStorage::unloaded(fs, dir, options, identity, meta);
        store.recover_segments(&names)?;
        store.remove_stray_snapshots(&names)?;
        store.sync_recovered()?;
        Ok(store)
    }

    /// Removes a leftover staging file and every snapshot file but the installed one: the
    /// remains of an install that a crash interrupted (before or after its META write) or of a
    /// removal not yet durable. `sync_recovered` makes the removals durable.
    fn remove_stray_snapshots(&mut self, names: &[String]) -> Result<(), DiskError> {
        let current = self.meta.snapshot.as_ref().map(|snapshot| snapshot_name(&snapshot.meta));
        let strays = names.iter().filter(|name| {
            (*name == STAGING_FILE || *name == LOCAL_SNAPSHOT_FILE || is_snapshot_name(name))
                && Some(name.as_str()) != current.as_deref()
        });
        for name in strays {
            let path = self.dir.join(name);
            self.fs.remove(&path).map_err(io_error(IoOp::Remove, &path))?;
        }
        Ok(())
    }

    /// Makes everything recovery read durable: a previous incarnation may have left unsynced
    /// changes in the page cache.
    fn sync_recovered(&mut self) -> Result<(), DiskError> {
        for segment in &self.segments {
            let path = self.dir.join(segment_name(segment.first_index));
            let mut file = self.fs.open_append(&path).map_err(io_error(IoOp::Open, &path))?;
            file.sync().map_err(io_error(IoOp::Sync, &path))?;
        }
        self.fs.sync_dir(&self.dir).map_err(io_error(IoOp::SyncDir, &self.dir))
    }

    /// A store with `meta` and no log loaded yet.
    fn unloaded(fs: F, dir: PathBuf, options: DiskOptions, identity: Identity, meta: Meta) -> Self {
        DiskStorage {
            fs,
            dir,
            options,
            identity,
            hard_state: meta.hard_state,
            meta,
            entries: Vec::new(),
            segments: Vec::new(),
            active: None,
            staging: None,
            stopped: false,
            write_buffer: Vec::new(),
        }
    }

    /// The directory's identity.
    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// The log boundary: the last index dropped from the log and its term (`first_index() - 1`).
    /// The installed snapshot, at or after it, is [`Storage::snapshot`].
    pub fn log_boundary(&self) -> (Index, Term) {
        (self.meta.snapshot_index, self.meta.snapshot_term)
    }

    /// The number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn recover_segments(&mut self, names: &[String]) -> Result<(), DiskError> {
        let mut indexed: Vec<(Index, &String)> =
            names.iter().filter_map(|n| parse_segment_name(n).map(|index| (index, n))).collect();
        indexed.sort();
        let mut entries: Vec<Entry> = Vec::new();
        for (position, &(first_index, name)) in indexed.iter().enumerate() {
            let path = self.dir.join(name);
            let bytes = bytes::Bytes::from(self.fs.read(&path).map_err(io_error(IoOp::Read, &path))?);
            let parsed = parse_segment(&path, &bytes, first_index, position + 1 == indexed.len())?;
            if let Some(last) = entries.last() {
                if first_index != last.index.next() {
                    let expected = last.index.next();
                    return Err(corrupt(&path, 0, Corruption::IndexOutOfSequence { expected, found: first_index }));
                }
                if let Some(first) = parsed.entries.first()
                    && first.term < last.term
                {
                    let corruption = Corruption::TermRegression { previous: last.term, found: first.term };
                    return Err(corrupt(&path, HEADER_BYTES, corruption));
                }
            }
            if let Some(cut) = parsed.torn_at {
                self.cut_torn_tail(&path, cut)?;
                if cut == 0 {
                    continue;
                }
            }
            entries.extend(parsed.entries);
            self.segments.push(parsed.segment);
        }
        self.settle_snapshot_boundary(entries)?;
        if let Some(segment) = self.segments.last() {
            let path = self.dir.join(segment_name(segment.first_index));
            self.active = Some(self.fs.open_append(&path).map_err(io_error(IoOp::Open, &path))?);
        }
        Ok(())
    }

    /// Cuts a torn tail (or removes a segment whose header was torn) and makes that durable.
    fn cut_torn_tail(&mut self, path: &Path, cut: u64) -> Result<(), DiskError> {
        if cut == 0 {
            self.fs.remove(path).map_err(io_error(IoOp::Remove, path))?;
            return self.fs.sync_dir(&self.dir).map_err(io_error(IoOp::SyncDir, &self.dir));
        }
        let mut file = self.fs.open_append(path).map_err(io_error(IoOp::Open, path))?;
        file.truncate(cut).map_err(io_error(IoOp::Truncate, path))?;
        file.sync().map_err(io_error(IoOp::Sync, path))
    }

    /// Keeps the entries after the snapshot boundary, finishing a compaction a crash interrupted.
    fn settle_snapshot_boundary(&mut self, entries: Vec<Entry>) -> Result<(), DiskError> {
        let (snapshot, snapshot_term) = (self.meta.snapshot_index, self.meta.snapshot_term);
        let conflicts = entries.iter().any(|e| e.index == snapshot && e.term != snapshot_term);
        let reaches_past = entries.last().is_some_and(|e| e.index > snapshot);
        if conflicts || !reaches_past {
            // Everything stored is covered or superseded by the snapshot.
            return self.remove_segments_from(0);
        }
        let first = entries.first().map_or(snapshot.next(), |e| e.index);
        if first > snapshot.next() {
            let path = self.dir.join(segment_name(first));
            return Err(corrupt(&path, HEADER_BYTES, Corruption::GapAfterSnapshot { first, snapshot }));
        }
        self.entries = entries.into_iter().filter(|e| e.index > snapshot).collect();
        self.remove_segments_covered_by_snapshot()
    }

    fn remove_segments_covered_by_snapshot(&mut self) -> Result<(), DiskError> {
        let snapshot = self.meta.snapshot_index;
        // A segment is covered when the next one starts at or below snapshot + 1.
        let covered = self.segments.windows(2).take_while(|pair| pair[1].first_index <= snapshot.next()).count();
        if covered == 0 {
            return Ok(());
        }
        for segment in self.segments.drain(..covered) {
            let path = self.dir.join(segment_name(segment.first_index));
            self.fs.remove(&path).map_err(io_error(IoOp::Remove, &path))?;
        }
        self.fs.sync_dir(&self.dir).map_err(io_error(IoOp::SyncDir, &self.dir))
    }

    /// Removes segments from position `keep` on (durably), closing the active file if needed.
    fn remove_segments_from(&mut self, keep: usize) -> Result<(), DiskError> {
        if keep >= self.segments.len() {
            return Ok(());
        }
        self.active = None;
        for segment in self.segments.drain(keep..).rev().collect::<Vec<_>>() {
            let path = self.dir.join(segment_name(segment.first_index));
            self.fs.remove(&path).map_err(io_error(IoOp::Remove, &path))?;
        }
        self.fs.sync_dir(&self.dir).map_err(io_error(IoOp::SyncDir, &self.dir))?;
        if let Some(segment) = self.segments.last() {
            let path = self.dir.join(segment_name(segment.first_index));
            self.active = Some(self.fs.open_append(&path).map_err(io_error(IoOp::Open, &path))?);
        }
        Ok(())
    }

    fn write_atomic(&mut self, name: &str, bytes: &[u8]) -> Result<(), DiskError> {
        let temp = self.dir.join(format!("{name}.tmp"));
        let target = self.dir.join(name);
        let mut file = self.fs.create(&temp).map_err(io_error(IoOp::Create, &temp))?;
        file.append(bytes).map_err(io_error(IoOp::Append, &temp))?;
        file.sync().map_err(io_error(IoOp::Sync, &temp))?;
        self.fs.rename(&temp, &target).map_err(io_error(IoOp::Rename, &target))?;
        self.fs.sync_dir(&self.dir).map_err(io_error(IoOp::SyncDir, &self.dir))
    }

    fn write_meta(&mut self, meta: Meta) -> Result<(), DiskError> {
        let payload = postcard::to_allocvec(&meta).expect("metadata always serializes");
        self.write_atomic(META_FILE, &encode_framed(META_MAGIC, &payload))?;
        self.meta = meta;
        Ok(())
    }

    fn last_index(&self) -> Index {
        Index(self.meta.snapshot_index.0 + self.entries.len() as u64)
    }
}

/// Checks that the snapshot file holds exactly `snapshot.len` bytes with crc `snapshot.crc`,
/// reading [`SNAPSHOT_READ_BYTES_MAX`] bytes at a time.
fn verify_snapshot<F: FileSystem>(fs: &F, dir: &Path, snapshot: &SnapshotFile) -> Result<(), DiskError> {
    let path = dir.join(snapshot_name(&snapshot.meta));
    let mut crc = crc32fast::Hasher::new();
    let mut len = 0;
    loop {
        let piece = match fs.read_at(&path, len, SNAPSHOT_READ_BYTES_MAX as usize) {
            Ok(piece) => piece,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(corrupt(&path, 0, Corruption::SnapshotMissing));
            }
            Err(error) => return Err(io_error(IoOp::Read, &path)(error)),
        };
        crc.update(&piece);
        len += piece.len() as u64;
        if (piece.len() as u64) < SNAPSHOT_READ_BYTES_MAX {
            break;
        }
    }
    if len != snapshot.len {
        let corruption = Corruption::SnapshotLength { expected: snapshot.len, found: len };
        return Err(corrupt(&path, len.min(snapshot.len), corruption));
    }
    if crc.finalize() != snapshot.crc {
        // The crc covers the whole file: the damage could be anywhere.
        return Err(corrupt(&path, 0, Corruption::Checksum));
    }
    Ok(())
}

fn read_framed<T: serde::de::DeserializeOwned, F: FileSystem>(
    fs: &F,
    path: &Path,
    magic: [u8; 8],
) -> Result<T, DiskError> {
    let bytes = fs.read(path).map_err(io_error(IoOp::Read, path))?;
    let payload = decode_framed(path, &bytes, magic)?;
    postcard::from_bytes(payload).map_err(|_| corrupt(path, 20, Corruption::Decode))
}

impl<F: FileSystem> DiskStorage<F> {
    /// Runs `write`, stopping the store for good if it fails with an I/O error (fail-stop).
    fn guarded<T>(&mut self, write: impl FnOnce(&mut Self) -> Result<T, DiskError>) -> Result<T, DiskError> {
        if self.stopped {
            return Err(DiskError::Stopped);
        }
        let result = write(self);
        if matches!(result, Err(DiskError::Io { .. })) {
            self.stopped = true;
        }
        result
    }

    fn validate_append(&self, entries: &[Entry]) -> Result<(), DiskError> {
        let Some(first) = entries.first().map(|e| e.index) else { return Ok(()) };
        let snapshot = self.meta.snapshot_index;
        if first <= snapshot {
            return Err(DiskError::AppendBelowSnapshot { first, snapshot });
        }
        let last = self.last_index();
        if first > last.next() {
            return Err(DiskError::AppendGap { first, last });
        }
        match entries.windows(2).find(|pair| pair[1].index != pair[0].index.next()) {
            Some(pair) => Err(DiskError::AppendNotConsecutive(pair[1].index)),
            None => Ok(()),
        }
    }

    fn persist_inner(&mut self, hard_state: Option<HardState>, entries: &[Entry]) -> Result<(), DiskError> {
        self.validate_append(entries)?;
        if let Some(hard_state) = hard_state {
            let durable = self.meta.hard_state;
            if (hard_state.term, hard_state.vote) != (durable.term, durable.vote) {
                self.write_meta(Meta { hard_state, ..self.meta.clone() })?;
            }
            self.hard_state = hard_state;
        }
        let Some(first) = entries.first().map(|e| e.index) else { return Ok(()) };
        if first <= self.last_index() {
            self.truncate_from(first)?;
        }
        // The caller adds the entries to `self.entries` once this succeeded (by clone or move).
        self.append_records(entries)
    }

    /// Durably removes every entry from `index` on, before anything replaces them.
    fn truncate_from(&mut self, index: Index) -> Result<(), DiskError> {
        let keep = (index.0 - self.meta.snapshot_index.0 - 1) as usize;
        self.entries.truncate(keep);
        let position = self.segments.iter().rposition(|s| s.first_index <= index).unwrap_or(0);
        let segment = &self.segments[position];
        if segment.first_index >= index {
            return self.remove_segments_from(position);
        }
        self.remove_segments_from(position + 1)?;
        let segment = &mut self.segments[position];
        let records = (index.0 - segment.first_index.0) as usize;
        let cut = segment.offsets[records];
        segment.offsets.truncate(records);
        segment.len = cut;
        let path = self.dir.join(segment_name(segment.first_index));
        let file = self.active.as_mut().expect("the last segment is open while segments exist");
        file.truncate(cut).map_err(io_error(IoOp::Truncate, &path))?;
        file.sync().map_err(io_error(IoOp::Sync, &path))
    }

    /// Appends records for `entries`, rotating segments by size; one fsync of the active segment
    /// at the end (plus one per segment closed on the way and one of the directory if a segment
    /// was created).
    fn append_records(&mut self, entries: &[Entry]) -> Result<(), DiskError> {
        let estimate: usize = entries.iter().map(|e| e.size_bytes() as usize + RECORD_PREFIX_BYTES as usize).sum();
        let mut buffer = std::mem::take(&mut self.write_buffer);
        buffer.clear();
        buffer.reserve(estimate);
        let mut created = false;
        for entry in entries {
            let start = buffer.len();
            encode_record(entry, &mut buffer);
            let record_len = (buffer.len() - start) as u64;
            let must_rotate = match self.segments.last() {
                None => true,
                Some(s) => !s.offsets.is_empty() && s.len + record_len > self.options.segment_bytes_max,
            };
            if must_rotate {
                self.write_active(&buffer[..start])?;
                buffer.drain(..start);
                self.start_segment(entry.index)?;
                created = true;
            }
            let segment = self.segments.last_mut().expect("a segment was just ensured");
            segment.offsets.push(segment.len);
            segment.len += record_len;
        }
        self.write_active(&buffer)?;
        self.write_buffer = buffer;
        self.sync_active()?;
        if created {
            self.fs.sync_dir(&self.dir).map_err(io_error(IoOp::SyncDir, &self.dir))?;
        }
        Ok(())
    }

    fn write_active(&mut self, bytes: &[u8]) -> Result<(), DiskError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let segment = self.segments.last().expect("bytes are only written to an existing segment");
        let path = self.dir.join(segment_name(segment.first_index));
        let file = self.active.as_mut().expect("the last segment is open while segments exist");
        file.append(bytes).map_err(io_error(IoOp::Append, &path))
    }

    fn sync_active(&mut self) -> Result<(), DiskError> {
        let Some(segment) = self.segments.last() else { return Ok(()) };
        let path = self.dir.join(segment_name(segment.first_index));
        let file = self.active.as_mut().expect("the last segment is open while segments exist");
        file.sync().map_err(io_error(IoOp::Sync, &path))
    }

    /// Closes the active segment (durably) and starts a new one at `first_index`.
    fn start_segment(&mut self, first_index: Index) -> Result<(), DiskError> {
        self.sync_active()?;
        let path = self.dir.join(segment_name(first_index));
        let mut file = self.fs.create(&path).map_err(io_error(IoOp::Create, &path))?;
        let header = encode_header(first_index);
        file.append(&header).map_err(io_error(IoOp::Append, &path))?;
        self.segments.push(Segment { first_index, offsets: Vec::new(), len: header.len() as u64 });
        self.active = Some(file);
        Ok(())
    }

    fn compact_inner(&mut self, index: Index, term: Term) -> Result<(), DiskError> {
        if index <= self.meta.snapshot_index {
            return Ok(());
        }
        let keep_suffix = Storage::term(self, index) == Ok(term);
        let covered = ((index.0 - self.meta.snapshot_index.0) as usize).min(self.entries.len());
        // The boundary is durable first: a crash before the files go leaves entries that
        // recovery skips (or, when superseded, removes), never a gap.
        let meta =
            Meta { snapshot_index: index, snapshot_term: term, hard_state: self.hard_state, ..self.meta.clone() };
        self.write_meta(meta)?;
        if keep_suffix {
            self.entries.drain(..covered);
            self.remove_segments_covered_by_snapshot()
        } else {
            self.entries.clear();
            self.remove_segments_from(0)
        }
    }
}

/// Snapshots: staging, installing, reading.
impl<F: FileSystem> DiskStorage<F> {
    /// Writes a chunk through to the staging file (nothing is kept in memory but its crc).
    fn write_chunk_inner(&mut self, meta: &SnapshotMeta, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        if offset == 0 {
            self.staging = None; // Closes the file before `create` truncates it.
            let path = self.dir.join(STAGING_FILE);
            let file = self.fs.create(&path).map_err(io_error(IoOp::Create, &path))?;
            let name = STAGING_FILE;
            let crc = crc32fast::Hasher::new();
            self.staging = Some(Staging { meta: meta.clone(), file, name, len: 0, crc, blocks: BlockCrcs::default() });
        }
        let staging = match self.staging.as_mut() {
            Some(staging) if staging.meta == *meta && staging.len == offset => staging,
            Some(staging) if staging.meta == *meta => {
                return Err(DiskError::SnapshotChunkOutOfOrder { offset, staged: staging.len });
            }
            _ => return Err(DiskError::SnapshotChunkOutOfOrder { offset, staged: 0 }),
        };
        if !data.is_empty() {
            let path = self.dir.join(STAGING_FILE);
            staging.file.append(data).map_err(io_error(IoOp::Append, &path))?;
            staging.len += data.len() as u64;
            staging.crc.update(data);
            staging.blocks.update(data);
        }
        Ok(())
    }

    fn install_inner(&mut self, meta: &SnapshotMeta) -> Result<(), DiskError> {
        let staging = match self.staging.take() {
            Some(staging) if staging.meta == *meta => staging,
            other => {
                self.staging = other; // Another snapshot's staging stays.
                return Err(DiskError::SnapshotNotStaged(meta.index));
            }
        };
        self.install_staged(staging)
    }

    /// Writes a local snapshot to its own file (a snapshot being received keeps its staging)
    /// and installs it.
    fn save_inner(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), DiskError> {
        let path = self.dir.join(LOCAL_SNAPSHOT_FILE);
        let mut file = self.fs.create(&path).map_err(io_error(IoOp::Create, &path))?;
        file.append(data).map_err(io_error(IoOp::Append, &path))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(data);
        let mut blocks = BlockCrcs::default();
        blocks.update(data);
        let len = data.len() as u64;
        self.install_staged(Staging { meta: meta.clone(), file, name: LOCAL_SNAPSHOT_FILE, len, crc, blocks })
    }

    fn install_staged(&mut self, staging: Staging<F::File>) -> Result<(), DiskError> {
        let meta = staging.meta.clone();
        let staging_path = self.dir.join(staging.name);
        let installed = self.meta.snapshot.as_ref().map_or(Index(0), |snapshot| snapshot.meta.index);
        if meta.index <= installed {
            // Older than what we hold: never roll back. Not durable: recovery removes it too.
            drop(staging);
            return self.fs.remove(&staging_path).map_err(io_error(IoOp::Remove, &staging_path));
        }
        let snapshot = self.make_snapshot_file(staging)?;
        let previous = self.meta.snapshot.clone();
        // The snapshot supersedes the log unless the log holds its last entry. A stale boundary
        // (at or after the snapshot) is kept, as `compact` keeps it.
        let supersedes = meta.index > self.meta.snapshot_index && Storage::term(self, meta.index) != Ok(meta.term);
        let mut next = Meta {
            hard_state: self.hard_state,
            membership: meta.membership.clone(),
            snapshot: Some(snapshot),
            ..self.meta.clone()
        };
        if supersedes {
            (next.snapshot_index, next.snapshot_term) = (meta.index, meta.term);
        }
        // The commit point of the install: before it recovery finds the old snapshot and log.
        self.write_meta(next)?;
        if supersedes {
            self.entries.clear();
            self.remove_segments_from(0)?;
        }
        self.remove_previous_snapshot(previous)
    }

    /// Makes the staged data durable under its snapshot's own name.
    fn make_snapshot_file(&mut self, mut staging: Staging<F::File>) -> Result<SnapshotFile, DiskError> {
        let staging_path = self.dir.join(staging.name);
        let path = self.dir.join(snapshot_name(&staging.meta));
        staging.file.sync().map_err(io_error(IoOp::Sync, &staging_path))?;
        let Staging { meta, file, len, crc, blocks, .. } = staging;
        drop(file);
        self.fs.rename(&staging_path, &path).map_err(io_error(IoOp::Rename, &path))?;
        self.fs.sync_dir(&self.dir).map_err(io_error(IoOp::SyncDir, &self.dir))?;
        Ok(SnapshotFile { meta, len, crc: crc.finalize(), block_crcs: blocks.finish() })
    }

    /// Removes the file of a snapshot that META no longer names. Not made durable: should it
    /// come back after a crash, recovery removes it.
    fn remove_previous_snapshot(&mut self, previous: Option<SnapshotFile>) -> Result<(), DiskError> {
        let Some(previous) = previous else { return Ok(()) };
        let path = self.dir.join(snapshot_name(&previous.meta));
        self.fs.remove(&path).map_err(io_error(IoOp::Remove, &path))
    }

    /// Up to `bytes_max` bytes (at most [`SNAPSHOT_READ_BYTES_MAX`], at least one unless at the
    /// end) of the installed snapshot's data from `offset` on. Reads the whole blocks the range
    /// touches and checks each against its crc: a damaged one is
    /// [`StorageError::SnapshotCorrupt`] at the block's offset.
    fn read_snapshot_chunk(
        &self,
        snapshot: &SnapshotFile,
        offset: u64,
        bytes_max: u64,
    ) -> Result<SnapshotChunk, StorageError> {
        let start = offset.min(snapshot.len);
        let end = start.saturating_add(bytes_max.clamp(1, SNAPSHOT_READ_BYTES_MAX)).min(snapshot.len);
        let first_block = start / SNAPSHOT_BLOCK_BYTES;
        let blocks_start = first_block * SNAPSHOT_BLOCK_BYTES;
        let blocks_end = end.div_ceil(SNAPSHOT_BLOCK_BYTES).saturating_mul(SNAPSHOT_BLOCK_BYTES).min(snapshot.len);
        let path = self.dir.join(snapshot_name(&snapshot.meta));
        let blocks = self
            .fs
            .read_at(&path, blocks_start, (blocks_end - blocks_start) as usize)
            .map_err(|error| StorageError::Io(error.kind()))?;
        if blocks.len() as u64 != blocks_end - blocks_start {
            // The file recovery checked has shrunk underneath the store.
            return Err(StorageError::Io(std::io::ErrorKind::UnexpectedEof));
        }
        for (number, block) in (first_block..).zip(blocks.chunks(SNAPSHOT_BLOCK_BYTES as usize)) {
            if snapshot.block_crcs.get(number as usize) != Some(&crc32fast::hash(block)) {
                let offset = number * SNAPSHOT_BLOCK_BYTES;
                return Err(StorageError::SnapshotCorrupt { index: snapshot.meta.index, offset });
            }
        }
        let data = bytes::Bytes::from(blocks).slice((start - blocks_start) as usize..(end - blocks_start) as usize);
        Ok(SnapshotChunk { data, done: end == snapshot.len })
    }
}

impl<F: FileSystem> Storage for DiskStorage<F> {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        Ok(InitialState {
            hard_state: self.hard_state,
            membership: self.meta.membership.clone(),
            snapshot: Storage::snapshot(self)?,
        })
    }

    fn entries(&self, low: Index, high: Index, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        if low <= self.meta.snapshot_index {
            return Err(StorageError::Compacted(low));
        }
        if high > self.last_index().next() {
            return Err(StorageError::Unavailable(high.prev()));
        }
        Ok(take_entries(&self.entries, self.meta.snapshot_index, low, high, bytes_max))
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        let snapshot = self.meta.snapshot_index;
        if index == snapshot {
            return Ok(self.meta.snapshot_term);
        }
        if index < snapshot {
            return Err(StorageError::Compacted(index));
        }
        let offset = (index.0 - snapshot.0 - 1) as usize;
        self.entries.get(offset).map(|e| e.term).ok_or(StorageError::Unavailable(index))
    }

    fn first_index(&self) -> Result<Index, StorageError> {
        Ok(self.meta.snapshot_index.next())
    }

    fn last_index(&self) -> Result<Index, StorageError> {
        Ok(DiskStorage::last_index(self))
    }

    fn snapshot(&self) -> Result<SnapshotMeta, StorageError> {
        Ok(self.meta.snapshot.as_ref().map(|snapshot| snapshot.meta.clone()).unwrap_or_default())
    }

    /// Reads the snapshot file: at most 1 MiB per call, whatever `bytes_max` asks for (memory
    /// stays bounded; callers loop until `done`). Every block read is checked against its crc:
    /// damage is [`StorageError::SnapshotCorrupt`].
    fn snapshot_chunk(
        &self,
        index: Index,
        term: Term,
        offset: u64,
        bytes_max: u64,
    ) -> Result<SnapshotChunk, StorageError> {
        match &self.meta.snapshot {
            Some(snapshot) if (snapshot.meta.index, snapshot.meta.term) == (index, term) => {
                self.read_snapshot_chunk(snapshot, offset, bytes_max)
            }
            _ => Err(StorageError::SnapshotReplaced(index)),
        }
    }
}

impl<F: FileSystem> LogStore for DiskStorage<F> {
    type Error = DiskError;

    fn persist(&mut self, hard_state: Option<HardState>, entries: &[Entry]) -> Result<(), DiskError> {
        self.guarded(|store| {
            store.persist_inner(hard_state, entries)?;
            store.entries.extend_from_slice(entries);
            Ok(())
        })
    }

    /// Through [`DiskStorage::persist_owned`](LogStore::persist_owned), which moves the entries.
    fn write_output_owned(&mut self, output: &mut Output) -> Result<(), DiskError> {
        crate::write_output_moving(self, output)
    }

    /// Moves the entries into the store's in-memory copy of the log instead of cloning them.
    fn persist_owned(&mut self, hard_state: Option<HardState>, mut entries: Vec<Entry>) -> Result<(), DiskError> {
        self.guarded(|store| {
            store.persist_inner(hard_state, &entries)?;
            store.entries.append(&mut entries);
            Ok(())
        })
    }

    fn compact(&mut self, index: Index, term: Term) -> Result<(), DiskError> {
        self.guarded(|store| store.compact_inner(index, term))
    }

    /// A chunk that does not continue the staged data is refused with
    /// [`DiskError::SnapshotChunkOutOfOrder`] and leaves the store usable; an I/O error stops it.
    fn write_snapshot_chunk(&mut self, meta: &SnapshotMeta, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        self.guarded(|store| store.write_chunk_inner(meta, offset, data))
    }

    /// An install of a snapshot not staged is refused with [`DiskError::SnapshotNotStaged`] and
    /// leaves the store usable; an I/O error stops it.
    fn install_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), DiskError> {
        self.guarded(|store| store.install_inner(meta))
    }

    /// Writes through its own file, so a snapshot being received keeps its staging.
    fn save_snapshot(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), DiskError> {
        self.guarded(|store| store.save_inner(meta, data))
    }
}
