//! An in-memory store: everything written is "durable" at once.

use bytes::Bytes;
use raft_core::{
    Entry, HardState, Index, InitialState, Membership, Output, SnapshotChunk, SnapshotMeta, Storage, StorageError, Term,
};
use thiserror::Error;

use crate::{LogStore, SnapshotWriter};

/// An in-memory log, hard state and snapshot, with compaction below a log boundary.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    hard_state: HardState,
    membership: Membership,
    /// The last index and term dropped from the log by compaction (0, 0 when none): the log
    /// boundary. A snapshot always covers it.
    snapshot: (Index, Term),
    /// Entries from `snapshot.0 + 1` on.
    entries: Vec<Entry>,
    /// The latest snapshot's metadata and data.
    snapshot_meta: SnapshotMeta,
    snapshot_data: Bytes,
    /// A snapshot being written chunk by chunk, before it is installed.
    staging: Option<(SnapshotMeta, Vec<u8>)>,
}

/// Why a write to [`MemStorage`] was refused. Nothing was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
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
    /// A snapshot chunk does not continue the staged data (or belongs to another snapshot).
    #[error("snapshot chunk at offset {offset} does not follow the {staged} bytes staged")]
    ChunkOutOfOrder {
        /// The chunk's offset.
        offset: u64,
        /// The bytes staged for that snapshot so far.
        staged: u64,
    },
    /// An install named a snapshot that is not the one staged.
    #[error("snapshot at index {0} is not staged")]
    NotStaged(Index),
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
        if self.make_room_for(entries)? {
            self.entries.extend_from_slice(entries);
        }
        Ok(())
    }

    /// Like [`MemStorage::append`], but moves the entries in (`entries` is left empty).
    pub fn append_owned(&mut self, entries: &mut Vec<Entry>) -> Result<(), MemStorageError> {
        if self.make_room_for(entries)? {
            self.entries.append(entries);
        }
        Ok(())
    }

    /// Checks that `entries` can be appended and drops the stored ones they replace; returns
    /// whether there is anything to append.
    fn make_room_for(&mut self, entries: &[Entry]) -> Result<bool, MemStorageError> {
        let Some(first) = entries.first().map(|e| e.index) else { return Ok(false) };
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
        Ok(true)
    }

    /// Moves the log boundary to (`index`, `term`), dropping the entries it covers. Entries
    /// after it are kept if the log holds (`index`, `term`); otherwise the whole log is dropped
    /// (a snapshot supersedes it). A boundary older than the current one is ignored.
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

    /// The latest snapshot's data.
    pub fn snapshot_data(&self) -> &Bytes {
        &self.snapshot_data
    }

    fn write_chunk(&mut self, meta: &SnapshotMeta, offset: u64, data: &[u8]) -> Result<(), MemStorageError> {
        if offset == 0 {
            self.staging = Some((meta.clone(), Vec::new()));
        }
        let staged = match &self.staging {
            Some((staged_meta, bytes)) if staged_meta == meta => bytes.len() as u64,
            _ => 0,
        };
        match self.staging.as_mut() {
            Some((staged_meta, bytes)) if staged_meta == meta && offset == staged => {
                bytes.extend_from_slice(data);
                Ok(())
            }
            _ => Err(MemStorageError::ChunkOutOfOrder { offset, staged }),
        }
    }

    fn install(&mut self, meta: &SnapshotMeta) -> Result<(), MemStorageError> {
        let staged = self.staging.take_if(|(staged_meta, _)| staged_meta == meta);
        let Some((_, data)) = staged else { return Err(MemStorageError::NotStaged(meta.index)) };
        self.adopt(meta, Bytes::from(data));
        Ok(())
    }

    /// Makes (`meta`, `data`) the snapshot unless it is older than the current one.
    fn adopt(&mut self, meta: &SnapshotMeta, data: Bytes) {
        if meta.index <= self.snapshot_meta.index {
            return; // Older than what we hold: never roll back.
        }
        if self.term(meta.index) != Ok(meta.term) {
            // The snapshot supersedes a log that does not hold its last entry.
            self.entries.clear();
            self.snapshot = (meta.index, meta.term);
        }
        self.membership = meta.membership.clone();
        self.snapshot_meta = meta.clone();
        self.snapshot_data = data;
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
        Ok(InitialState {
            hard_state: self.hard_state,
            membership: self.membership.clone(),
            snapshot: self.snapshot_meta.clone(),
        })
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

    fn snapshot(&self) -> Result<SnapshotMeta, StorageError> {
        Ok(self.snapshot_meta.clone())
    }

    fn snapshot_chunk(
        &self,
        index: Index,
        term: Term,
        offset: u64,
        bytes_max: u64,
    ) -> Result<SnapshotChunk, StorageError> {
        if !self.snapshot_meta.exists() || self.snapshot_meta.index != index || self.snapshot_meta.term != term {
            return Err(StorageError::SnapshotReplaced(index));
        }
        Ok(crate::chunk_of(&self.snapshot_data, offset, bytes_max))
    }
}

impl LogStore for MemStorage {
    type Error = MemStorageError;

    /// A reader over the snapshot's bytes (shared, not copied).
    fn open_snapshot_owned(
        &self,
        meta: &SnapshotMeta,
    ) -> Result<Option<Box<dyn crate::OwnedSnapshotReader>>, StorageError> {
        if !self.snapshot_meta.exists()
            || (self.snapshot_meta.index, self.snapshot_meta.term) != (meta.index, meta.term)
        {
            return Err(StorageError::SnapshotReplaced(meta.index));
        }
        Ok(Some(Box::new(MemSnapshotReader { meta: self.snapshot_meta.clone(), data: self.snapshot_data.clone() })))
    }

    fn persist(&mut self, hard_state: Option<HardState>, entries: &[Entry]) -> Result<(), MemStorageError> {
        self.append(entries)?;
        if let Some(hard_state) = hard_state {
            self.hard_state = hard_state;
        }
        Ok(())
    }

    /// Through [`MemStorage::persist_owned`](LogStore::persist_owned), which moves the entries.
    fn write_output_owned(&mut self, output: &mut Output) -> Result<(), MemStorageError> {
        crate::write_output_moving(self, output)
    }

    fn persist_owned(&mut self, hard_state: Option<HardState>, mut entries: Vec<Entry>) -> Result<(), MemStorageError> {
        self.append_owned(&mut entries)?;
        if let Some(hard_state) = hard_state {
            self.hard_state = hard_state;
        }
        Ok(())
    }

    fn compact(&mut self, index: Index, term: Term) -> Result<(), MemStorageError> {
        self.set_snapshot(index, term);
        Ok(())
    }

    fn write_snapshot_chunk(&mut self, meta: &SnapshotMeta, offset: u64, data: &[u8]) -> Result<(), MemStorageError> {
        self.write_chunk(meta, offset, data)
    }

    fn install_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), MemStorageError> {
        self.install(meta)
    }

    /// Bypasses the staging area, so a snapshot being received meanwhile is not disturbed.
    fn save_snapshot(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), MemStorageError> {
        self.adopt(meta, Bytes::copy_from_slice(data));
        Ok(())
    }

    /// Collects the data in memory (where this store keeps every snapshot) apart from the
    /// staging area, and adopts it at the end without copying it again.
    fn begin_snapshot(
        &mut self,
        meta: &SnapshotMeta,
    ) -> Result<Box<dyn SnapshotWriter<MemStorageError> + '_>, MemStorageError> {
        Ok(Box::new(LocalSnapshot { store: self, meta: meta.clone(), data: Vec::new() }))
    }
}

/// A local snapshot being written into a [`MemStorage`].
struct LocalSnapshot<'a> {
    store: &'a mut MemStorage,
    meta: SnapshotMeta,
    data: Vec<u8>,
}

impl SnapshotWriter<MemStorageError> for LocalSnapshot<'_> {
    fn write(&mut self, data: &[u8]) -> Result<(), MemStorageError> {
        self.data.extend_from_slice(data);
        Ok(())
    }

    fn finish(self: Box<Self>, data_crc32: u32) -> Result<(), MemStorageError> {
        let LocalSnapshot { store, meta, data } = *self;
        store.adopt(&SnapshotMeta { data_crc32, ..meta }, Bytes::from(data));
        Ok(())
    }
}

/// [`MemStorage`]'s snapshot, read off its owner.
struct MemSnapshotReader {
    meta: SnapshotMeta,
    data: Bytes,
}

impl crate::OwnedSnapshotReader for MemSnapshotReader {
    fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    fn chunk(&mut self, offset: u64, bytes_max: u64) -> Result<SnapshotChunk, StorageError> {
        Ok(crate::chunk_of(&self.data, offset, bytes_max))
    }
}
