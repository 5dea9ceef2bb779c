//! An in-memory store: everything written is "durable" at once.

use raft_core::{Entry, HardState, Index, InitialState, Membership, Storage, StorageError, Term};
use thiserror::Error;

use crate::LogStore;

/// An in-memory log and hard state, with compaction below a snapshot boundary.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    hard_state: HardState,
    membership: Membership,
    /// The last index and term covered by a snapshot (0, 0 when none).
    snapshot: (Index, Term),
    /// Entries from `snapshot.0 + 1` on.
    entries: Vec<Entry>,
}

/// Why a write to [`MemStorage`] was refused. Nothing was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum MemStorageError {
    /// The first appended entry would leave a gap after the last stored one.
    #[error("append at index {first} leaves a gap after last index {last}")]
    Gap {
        /// The first index of the append.
        first: Index,
        /// The last stored index.
        last: Index,
    },
    /// The appended entries are not consecutive.
    #[error("appended entries are not consecutive at index {0}")]
    NotConsecutive(Index),
    /// The append would overwrite entries covered by the snapshot.
    #[error("append at index {first} overwrites the snapshot ending at {snapshot}")]
    BelowSnapshot {
        /// The first index of the append.
        first: Index,
        /// The snapshot's last index.
        snapshot: Index,
    },
}

impl MemStorage {
    /// An empty store for a group with this membership.
    pub fn new(membership: Membership) -> Self {
        MemStorage { membership, ..MemStorage::default() }
    }

    /// Replaces the hard state.
    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    /// The stored hard state.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// Appends `entries`, replacing any stored entries from `entries[0].index` on.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), MemStorageError> {
        let Some(first) = entries.first().map(|e| e.index) else { return Ok(()) };
        let snapshot = self.snapshot.0;
        if first <= snapshot {
            return Err(MemStorageError::BelowSnapshot { first, snapshot });
        }
        let last = self.last();
        if first > last.next() {
            return Err(MemStorageError::Gap { first, last });
        }
        if let Some(pair) = entries.windows(2).find(|pair| pair[1].index != pair[0].index.next()) {
            return Err(MemStorageError::NotConsecutive(pair[1].index));
        }
        self.entries.truncate((first.0 - snapshot.0 - 1) as usize);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    /// Records a snapshot ending at (`index`, `term`) and drops the entries it covers. Entries
    /// after it are kept if the log holds (`index`, `term`); otherwise the whole log is dropped
    /// (the snapshot supersedes it). A snapshot older than the current one is ignored.
    pub fn set_snapshot(&mut self, index: Index, term: Term) {
        if index <= self.snapshot.0 {
            return;
        }
        let keep_suffix = self.term(index) == Ok(term);
        let covered = (index.0 - self.snapshot.0.0) as usize;
        if keep_suffix {
            self.entries.drain(..covered.min(self.entries.len()));
        } else {
            self.entries.clear();
        }
        self.snapshot = (index, term);
    }

    /// All stored entries after the snapshot, in order.
    pub fn all_entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Drops every entry after `index` (a crash that loses an unsynced tail, in simulations).
    pub fn truncate_after(&mut self, index: Index) {
        let keep = index.0.saturating_sub(self.snapshot.0.0);
        self.entries.truncate(keep.min(self.entries.len() as u64) as usize);
    }

    fn last(&self) -> Index {
        Index(self.snapshot.0.0 + self.entries.len() as u64)
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        Ok(InitialState { hard_state: self.hard_state, membership: self.membership.clone() })
    }

    fn entries(&self, low: Index, high: Index, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        if low <= self.snapshot.0 {
            return Err(StorageError::Compacted(low));
        }
        if high > self.last().next() {
            return Err(StorageError::Unavailable(high.prev()));
        }
        Ok(crate::take_entries(&self.entries, self.snapshot.0, low, high, bytes_max))
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        let (snapshot_index, snapshot_term) = self.snapshot;
        if index == snapshot_index {
            return Ok(snapshot_term);
        }
        if index < snapshot_index {
            return Err(StorageError::Compacted(index));
        }
        let offset = (index.0 - snapshot_index.0 - 1) as usize;
        self.entries.get(offset).map(|e| e.term).ok_or(StorageError::Unavailable(index))
    }

    fn first_index(&self) -> Result<Index, StorageError> {
        Ok(self.snapshot.0.next())
    }

    fn last_index(&self) -> Result<Index, StorageError> {
        Ok(self.last())
    }
}

impl LogStore for MemStorage {
    type Error = MemStorageError;

    fn persist(&mut self, hard_state: Option<HardState>, entries: &[Entry]) -> Result<(), MemStorageError> {
        self.append(entries)?;
        if let Some(hard_state) = hard_state {
            self.hard_state = hard_state;
        }
        Ok(())
    }

    fn compact(&mut self, index: Index, term: Term) -> Result<(), MemStorageError> {
        self.set_snapshot(index, term);
        Ok(())
    }
}
