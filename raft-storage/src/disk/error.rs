//! Why the durable store failed: [`DiskError`], with the failed file operation ([`IoOp`]) or the
//! damage found ([`Corruption`]), always naming the file.

use std::path::{Path, PathBuf};

use raft_core::{GroupId, Index, Term};
use thiserror::Error;

use super::meta::Identity;

/// Which file operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
#[non_exhaustive]
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
    /// A shared WAL segment's header names a different sequence number than its file name.
    #[error("header sequence number {header} differs from the file name's {name}")]
    SequenceMismatch {
        /// The sequence number in the header.
        header: u64,
        /// The sequence number in the file name.
        name: u64,
    },
    /// A shared WAL segment is missing: the segment found (this file) is not the one expected
    /// (the one after its predecessor, or the oldest one segment reclamation kept).
    #[error("expected segment {expected}, found segment {found}")]
    SegmentMissing {
        /// The sequence number expected.
        expected: u64,
        /// The sequence number found.
        found: u64,
    },
    /// A shared WAL record does not fit its group's history: a creation of a group that exists,
    /// entries of a group that is neither created nor removed later, a log boundary that moves
    /// back.
    #[error("record out of place in the history of group {group}")]
    UnexpectedGroupRecord {
        /// The group.
        group: GroupId,
    },
    /// A shared WAL `Meta` record names a last log index that its group's history before it
    /// does not reach (or passes): entries it covers are lost, or the record is not the
    /// writer's. (Neither the log's last index nor the boundary.)
    #[error("group {group}'s metadata names last index {named}, its log ends at {found}")]
    MetaLastMismatch {
        /// The group.
        group: GroupId,
        /// The last index the record names.
        named: Index,
        /// The last index of the group's log replayed so far.
        found: Index,
    },
}

/// Why the durable store failed. Recovery errors name the file and the byte offset.
///
/// Two errors are equal when their variants and fields are, where two I/O errors count as equal
/// when their [`std::io::ErrorKind`] and OS error code are (an [`std::io::Error`] has no
/// equality of its own).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DiskError {
    /// A file-system call failed.
    #[error("{op:?} failed on {path:?}: {source}")]
    Io {
        /// The operation.
        op: IoOp,
        /// The file or directory.
        path: PathBuf,
        /// The file system's error, as it reported it (kind, OS error code and message).
        #[source]
        source: std::io::Error,
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
    /// Another process, or another store in this one, has the store in this directory open (it
    /// holds the directory's LOCK file): nothing was read or changed. Stop the other user first.
    #[error("the store in {0:?} is in use by another process or store (its LOCK file is locked)")]
    InUse(PathBuf),
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
    /// A shared WAL was asked to create a group it already holds.
    #[error("group {0} already exists")]
    GroupExists(GroupId),
    /// A shared WAL does not hold the group (never created, or removed), or the handle belongs
    /// to another WAL or to an earlier group of the same id.
    #[error("group {0} does not exist")]
    GroupNotFound(GroupId),
}

impl DiskError {
    /// The kind of the file system's error, for an I/O error.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            DiskError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

impl PartialEq for DiskError {
    fn eq(&self, other: &Self) -> bool {
        use DiskError as E;
        // Matching on `self` alone, without a wildcard, makes a new variant a compile error here.
        match self {
            E::Io { op, path, source } => {
                matches!(other, E::Io { op: other_op, path: other_path, source: other_source }
                if (op, path) == (other_op, other_path) && same_io_error(source, other_source))
            }
            E::Corrupt { path, offset, corruption } => matches!(other,
                E::Corrupt { path: other_path, offset: other_offset, corruption: other_corruption }
                if (path, offset, corruption) == (other_path, other_offset, other_corruption)),
            E::IdentityMismatch { expected, found } => matches!(other,
                E::IdentityMismatch { expected: other_expected, found: other_found }
                if (expected, found) == (other_expected, other_found)),
            E::NotInitialized(dir) => matches!(other, E::NotInitialized(other_dir) if dir == other_dir),
            E::MissingIdentity(dir) => matches!(other, E::MissingIdentity(other_dir) if dir == other_dir),
            E::AlreadyInitialized(dir) => matches!(other, E::AlreadyInitialized(other_dir) if dir == other_dir),
            E::InUse(dir) => matches!(other, E::InUse(other_dir) if dir == other_dir),
            E::AppendGap { first, last } => matches!(other, E::AppendGap { first: other_first, last: other_last }
                if (first, last) == (other_first, other_last)),
            E::AppendNotConsecutive(index) => {
                matches!(other, E::AppendNotConsecutive(other_index) if index == other_index)
            }
            E::AppendBelowSnapshot { first, snapshot } => matches!(other,
                E::AppendBelowSnapshot { first: other_first, snapshot: other_snapshot }
                if (first, snapshot) == (other_first, other_snapshot)),
            E::SnapshotChunkOutOfOrder { offset, staged } => matches!(other,
                E::SnapshotChunkOutOfOrder { offset: other_offset, staged: other_staged }
                if (offset, staged) == (other_offset, other_staged)),
            E::SnapshotNotStaged(index) => matches!(other, E::SnapshotNotStaged(other_index) if index == other_index),
            E::Stopped => matches!(other, E::Stopped),
            E::GroupExists(group) => matches!(other, E::GroupExists(other_group) if group == other_group),
            E::GroupNotFound(group) => matches!(other, E::GroupNotFound(other_group) if group == other_group),
        }
    }
}

impl Eq for DiskError {}

/// Whether two I/O errors say the same: the same kind and OS error code.
fn same_io_error(one: &std::io::Error, other: &std::io::Error) -> bool {
    one.kind() == other.kind() && one.raw_os_error() == other.raw_os_error()
}

/// Fail-stop: runs `write` on `store` unless the flag `stopped` gives is set, and sets it for
/// good if `write` fails with an I/O error (the store cannot say what reached the disk).
pub(crate) fn fail_stop<S, T>(
    store: &mut S,
    stopped: fn(&mut S) -> &mut bool,
    write: impl FnOnce(&mut S) -> Result<T, DiskError>,
) -> Result<T, DiskError> {
    if *stopped(store) {
        return Err(DiskError::Stopped);
    }
    let result = write(store);
    if matches!(result, Err(DiskError::Io { .. })) {
        *stopped(store) = true;
    }
    result
}

/// The error of a failed `op` on `path`, for `map_err`.
pub(crate) fn io_error(op: IoOp, path: &Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |source| DiskError::Io { op, path: path.to_path_buf(), source }
}

/// Damage of `corruption` found in `path` at byte `offset`.
pub(crate) fn corrupt(path: &Path, offset: u64, corruption: Corruption) -> DiskError {
    DiskError::Corrupt { path: path.to_path_buf(), offset, corruption }
}
