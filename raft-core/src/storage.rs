//! The read side of a node's durable state. The write side belongs to the driver, which persists
//! what [`crate::Output`] hands it (see the crate docs for the order).

use thiserror::Error;

use bytes::Bytes;

use crate::types::{Entry, HardState, Index, Membership, SnapshotMeta, Term};

/// What a node finds in its storage when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitialState {
    /// The last persisted term, vote and commit index.
    pub hard_state: HardState,
    /// Who votes in the group.
    pub membership: Membership,
    /// The latest durable snapshot (index 0 when none). The state machine restarts from it, so
    /// applying resumes at `snapshot.index + 1`.
    pub snapshot: SnapshotMeta,
}

/// A piece of a snapshot's data, read for sending to a follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// The bytes at the requested offset.
    pub data: Bytes,
    /// Whether `data` ends the snapshot.
    pub done: bool,
}

/// Why storage could not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The index lies before the first entry storage still holds (it was compacted away).
    #[error("index {0} is compacted")]
    Compacted(Index),
    /// The index lies beyond the last entry storage holds.
    #[error("index {0} is beyond the last entry")]
    Unavailable(Index),
    /// The store no longer holds the snapshot ending at this index (a newer one replaced it).
    #[error("snapshot at index {0} is no longer held")]
    SnapshotReplaced(Index),
    /// The storage failed to read; the node should be stopped (fail-stop) by its driver. Made
    /// from the [`std::io::Error`] with `From`: its kind and the operating system's error code
    /// (errno), which tells apart the failures that share a kind (`EIO` and every other
    /// uncategorized one are [`std::io::ErrorKind::Other`]); the code's message can be had again
    /// with [`std::io::Error::from_raw_os_error`].
    #[error("storage I/O failed: {kind:?}{}", os_error_note(.raw_os_error))]
    Io {
        /// The kind of failure.
        kind: std::io::ErrorKind,
        /// The operating system's error code, when the failure came from it (`None` for one the
        /// store found itself, a file shorter than recovery saw, say).
        raw_os_error: Option<i32>,
    },
    /// The stored data of the snapshot ending at `index` fails its checksum (near byte `offset`
    /// of the data): the copy is damaged. The node must stop (fail-stop) rather than send or
    /// restore it.
    #[error("snapshot at index {index} is corrupt near byte {offset}")]
    SnapshotCorrupt {
        /// The snapshot's index.
        index: Index,
        /// Where in the snapshot's data the damage was found.
        offset: u64,
    },
    /// The store holds a membership no group can run with (the initial one, a snapshot's, or
    /// an entry's at `index`; 0 for the initial one): the node cannot start from it.
    #[error("stored membership at index {index} is invalid: {reason}")]
    InvalidMembership {
        /// The index of the entry or snapshot that holds it (0: the initial membership).
        index: Index,
        /// What is wrong with it.
        reason: crate::types::InvalidMembership,
    },
}

impl From<&std::io::Error> for StorageError {
    /// The I/O error's kind and OS error code. Not the whole `std::io::Error`: that would cost
    /// this type `Copy` and `PartialEq`, which every test of a store's answers leans on.
    fn from(error: &std::io::Error) -> Self {
        StorageError::Io { kind: error.kind(), raw_os_error: error.raw_os_error() }
    }
}

/// `" (os error N)"` when the code is known, for [`StorageError::Io`]'s message.
fn os_error_note(raw_os_error: &Option<i32>) -> String {
    raw_os_error.map_or_else(String::new, |code| format!(" (os error {code})"))
}

/// Read access to the entries and hard state that the driver has persisted.
///
/// Implementations must reflect every write the driver has completed before it reports
/// durability to the core with [`crate::Raft::on_persisted`].
pub trait Storage {
    /// The hard state and membership found at start-up.
    fn initial_state(&self) -> Result<InitialState, StorageError>;

    /// Entries in `[low, high)`, stopping early once their total size would exceed `bytes_max`
    /// (but always returning at least one entry when `low < high`).
    fn entries(&self, low: Index, high: Index, bytes_max: u64) -> Result<Vec<Entry>, StorageError>;

    /// The term of the entry at `index`. Must answer for `first_index() - 1` as well (the
    /// boundary entry, whose term is kept after compaction; term 0 for index 0).
    fn term(&self, index: Index) -> Result<Term, StorageError>;

    /// The index of the first entry held (1 for a log that was never compacted).
    fn first_index(&self) -> Result<Index, StorageError>;

    /// The index of the last entry held (`first_index() - 1` when empty).
    fn last_index(&self) -> Result<Index, StorageError>;

    /// The latest durable snapshot's metadata (index 0 when there is none). Its index is at least
    /// `first_index() - 1`: compaction never drops entries that no snapshot covers.
    fn snapshot(&self) -> Result<SnapshotMeta, StorageError>;

    /// Up to `bytes_max` bytes (at least one, unless the data ends at `offset`) of the data of the
    /// snapshot ending at (`index`, `term`), starting at byte `offset`. Fails with
    /// [`StorageError::SnapshotReplaced`] once the store holds another snapshot, and should fail
    /// with [`StorageError::SnapshotCorrupt`] when the bytes read fail the store's own checksums
    /// (a leader then stops instead of streaming damaged bytes; the core also checks the whole
    /// data it read against [`SnapshotMeta::data_crc32`]).
    fn snapshot_chunk(
        &self,
        index: Index,
        term: Term,
        offset: u64,
        bytes_max: u64,
    ) -> Result<SnapshotChunk, StorageError>;
}
