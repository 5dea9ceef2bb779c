//! An in-memory store: everything written is "durable" at once.

use raft_core::{Entry, HardState, Index, InitialState, Membership, Storage, StorageError, Term};
use thiserror::Error;

/// An in-memory log and hard state.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    hard_state: HardState,
    membership: Membership,
    /// Entries from index 1 on (no compaction yet).
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
    /// Index 0 cannot hold an entry.
    #[error("index 0 cannot hold an entry")]
    IndexZero,
}

impl MemStorage {
    /// An empty store for a group with this membership.
    pub fn new(membership: Membership) -> Self {
        MemStorage { hard_state: HardState::default(), membership, entries: Vec::new() }
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
        if first == Index(0) {
            return Err(MemStorageError::IndexZero);
        }
        let last = Index(self.entries.len() as u64);
        if first > last.next() {
            return Err(MemStorageError::Gap { first, last });
        }
        for pair in entries.windows(2) {
            if pair[1].index != pair[0].index.next() {
                return Err(MemStorageError::NotConsecutive(pair[1].index));
            }
        }
        self.entries.truncate((first.0 - 1) as usize);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    /// All stored entries, in order.
    pub fn all_entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Drops every entry after `index` (a crash that loses an unsynced tail, in simulations).
    pub fn truncate_after(&mut self, index: Index) {
        self.entries.truncate(index.0.min(self.entries.len() as u64) as usize);
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        Ok(InitialState { hard_state: self.hard_state, membership: self.membership.clone() })
    }

    fn entries(&self, low: Index, high: Index, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        if low == Index(0) {
            return Err(StorageError::Compacted(low));
        }
        let last = Index(self.entries.len() as u64);
        if high > last.next() {
            return Err(StorageError::Unavailable(high.prev()));
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for entry in self.entries.iter().skip((low.0 - 1) as usize).take(high.0.saturating_sub(low.0) as usize) {
            let size = entry.size_bytes();
            if !out.is_empty() && bytes + size > bytes_max {
                break;
            }
            bytes += size;
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        if index == Index(0) {
            return Ok(Term(0));
        }
        self.entries.get((index.0 - 1) as usize).map(|e| e.term).ok_or(StorageError::Unavailable(index))
    }

    fn first_index(&self) -> Result<Index, StorageError> {
        Ok(Index(1))
    }

    fn last_index(&self) -> Result<Index, StorageError> {
        Ok(Index(self.entries.len() as u64))
    }
}
