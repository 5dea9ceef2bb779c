//! The read side of a node's durable state. The write side belongs to the driver, which persists
//! what [`crate::Output`] hands it (see the crate docs for the order).

use thiserror::Error;

use crate::types::{Entry, HardState, Index, Membership, Term};

/// What a node finds in its storage when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitialState {
    /// The last persisted term, vote and commit index.
    pub hard_state: HardState,
    /// Who votes in the group.
    pub membership: Membership,
}

/// Why storage could not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum StorageError {
    /// The index lies before the first entry storage still holds (it was compacted away).
    #[error("index {0} is compacted")]
    Compacted(Index),
    /// The index lies beyond the last entry storage holds.
    #[error("index {0} is beyond the last entry")]
    Unavailable(Index),
    /// The storage failed to read; the node should be stopped (fail-stop) by its driver.
    #[error("storage I/O failed: {0:?}")]
    Io(std::io::ErrorKind),
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
}
