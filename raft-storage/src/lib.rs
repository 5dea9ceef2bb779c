//! # raft-storage
//!
//! Stores implementing [`raft_core::Storage`] plus the write side, [`LogStore`], that drivers use
//! to persist each [`raft_core::Output`]:
//!
//! - [`MemStorage`]: in memory, for tests, the simulator and benchmarks;
//! - [`DiskStorage`]: a durable, crash-safe write-ahead log in a directory, over a small
//!   [`FileSystem`] trait: [`StdFs`] in production, the fault-injecting `testing::SimFs` in
//!   tests (feature `testing`).
//!   Opening it recovers what a crash left (a torn tail, files an interrupted compaction or
//!   snapshot install meant to remove) and lists every repair in a [`RecoveryReport`]; any other
//!   damage is a typed error naming the file and offset.
//! - [`SharedWal`]: one durable write-ahead log for every Raft group of a node, each group's
//!   [`GroupStore`] with the semantics of `DiskStorage`; [`SharedWal::write_batch`] writes the
//!   outputs of many groups with one fsync. Groups are created and removed at run time, old
//!   segments are reclaimed, and a byte-limited cache keeps the newest entries in memory (older
//!   ones are read back from disk). Same recovery and failure rules as `DiskStorage`.
//!
//! Snapshot integrity: `DiskStorage` checks every read of a snapshot's data against per-block
//! crcs (and the whole file when it opens), so damaged bytes are a
//! [`raft_core::StorageError::SnapshotCorrupt`], never data. Neither store checks data against
//! the snapshot's own checksum ([`raft_core::SnapshotMeta::data_crc32`]): raft-core does that for
//! every snapshot it receives before it asks for an install, and a driver does it before it
//! restores a state machine.
//!
//! # Features
//!
//! - `testing`: the module `testing`, with `SimFs`, an in-memory file system that injects
//!   crashes (power loss with torn writes), I/O errors and bit rot, deterministically from a
//!   seed. For tests and simulators only.
//! - `fuzzing` (implies `testing`): the module `fuzzing`, the harnesses the cargo-fuzz targets
//!   `wal_recovery` and `shared_wal_recovery` call (and the corpus replay test).
//!
//! ```
//! use raft_core::{Entry, EntryPayload, Index, Membership, NodeId, Storage, Term};
//! use raft_storage::{LogStore, MemStorage};
//!
//! let mut store = MemStorage::new(Membership::new([NodeId(1), NodeId(2), NodeId(3)]));
//! let entry = |index, term| Entry { index: Index(index), term: Term(term), payload: EntryPayload::Noop };
//! store.persist(None, &[entry(1, 1), entry(2, 1)])?;
//! store.persist(None, &[entry(2, 2)])?; // replaces the conflicting suffix
//! assert_eq!(store.last_index()?, Index(2));
//! assert_eq!(store.term(Index(2))?, Term(2));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod disk;
mod fs;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod mem;
pub mod metrics;
pub mod recover;
#[cfg(feature = "testing")]
pub mod testing;
mod wal;

pub use disk::{Corruption, DiskError, DiskOptions, DiskStorage, Identity, IoOp, RecoveryReport, Repair};
pub use fs::{DirLock, FileSystem, FsFile, LOCK_FILE, StdFile, StdFs, read_range};
pub use mem::{MemStorage, MemStorageError};
pub use wal::{GroupStore, SharedWal, WalOptions};

use bytes::Bytes;
use raft_core::{Entry, HardState, Index, Output, SnapshotChunk, SnapshotMeta, Storage, StorageError, Term};

/// The write side of a store: what a driver calls to make an output durable.
///
/// After `persist` returns `Ok`, the hard state and entries are durable (fsynced) and visible
/// through the [`Storage`] read side. After an I/O error nothing may be acknowledged: the driver
/// must stop the node (fail-stop), since the store cannot say what reached the disk. A refusal
/// (an entry gap, a snapshot chunk out of order, an install of a snapshot not staged) writes
/// nothing and leaves the store usable; the core never asks for one, so a driver may treat any
/// error as fatal.
pub trait LogStore: Storage {
    /// The store's error type.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Makes `hard_state` (if any) and `entries` durable. The entries replace any stored entries
    /// from `entries[0].index` on.
    fn persist(&mut self, hard_state: Option<HardState>, entries: &[Entry]) -> Result<(), Self::Error>;

    /// Drops the log's entries up to (`index`, `term`), which a snapshot covers (drivers compact
    /// at [`raft_core::Raft::compaction_point`]). Entries after `index` are kept when the log
    /// holds (`index`, `term`); otherwise the log is emptied (the snapshot supersedes it). Never
    /// leaves a gap between the boundary and the first entry (docs/pitfalls.md #18).
    fn compact(&mut self, index: Index, term: Term) -> Result<(), Self::Error>;

    /// Writes `data` at `offset` into the staging area of snapshot `meta`. Offset 0 starts a new
    /// staging area (discarding any other); every other chunk must continue the staged bytes.
    /// Staged data need not be durable until [`LogStore::install_snapshot`].
    fn write_snapshot_chunk(&mut self, meta: &SnapshotMeta, offset: u64, data: &[u8]) -> Result<(), Self::Error>;

    /// Makes the staged snapshot `meta` the store's snapshot, durably and atomically: its data,
    /// its metadata (membership included) and, unless the log holds (`meta.index`, `meta.term`),
    /// the replacement of the whole log by an empty log after it. A snapshot not newer than the
    /// current one is dropped (a snapshot never rolls the store back).
    fn install_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), Self::Error>;

    /// Stores a complete local snapshot (the application's state machine at `meta.index`) with
    /// the same effect as [`LogStore::install_snapshot`]. Implementations should override it to
    /// leave the staging area alone: a snapshot may be arriving from the leader meanwhile.
    fn save_snapshot(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), Self::Error> {
        self.write_snapshot_chunk(meta, 0, data)?;
        self.install_snapshot(meta)
    }

    /// Starts a local snapshot (the application's state machine at `meta.index`) written a
    /// piece at a time through the returned [`SnapshotWriter`]: for a state machine that streams
    /// its snapshot, whose checksum is only known once the last byte is written. `meta` is the
    /// snapshot's metadata but for `data_crc32`, which [`SnapshotWriter::finish`] supplies.
    /// Finishing has the effect of [`LogStore::save_snapshot`] (durable, atomic, never a roll
    /// back); dropping the writer unfinished leaves the store as it was. With raft-storage's
    /// stores, a snapshot being received meanwhile keeps its staging area (the default goes
    /// through [`LogStore::save_snapshot`], whose own default reuses the staging area: a store
    /// that keeps both defaults loses a snapshot being received, which the leader then sends
    /// again).
    ///
    /// The default buffers the whole data in memory and calls [`LogStore::save_snapshot`] at
    /// the end: correct for any store, but **not bounded**. Stores that can write a snapshot
    /// through to disk override it ([`DiskStorage`] and [`GroupStore`] do; [`MemStorage`]
    /// keeps snapshots in memory by design).
    fn begin_snapshot(
        &mut self,
        meta: &SnapshotMeta,
    ) -> Result<Box<dyn SnapshotWriter<Self::Error> + '_>, Self::Error> {
        Ok(Box::new(BufferedSnapshot { store: self, meta: meta.clone(), data: Vec::new() }))
    }

    /// Starts a local snapshot like [`LogStore::begin_snapshot`], but with a writer that owns
    /// what it needs (`Send + 'static`): it can move to another thread, so that the state
    /// machine writes a large snapshot there while the store's owner goes on with the log.
    /// [`OwnedSnapshotWriter::finish`] makes the data durable off the owner and returns a
    /// [`TakenSnapshot`]; the owner then saves it with [`LogStore::save_taken_snapshot`] (a cheap
    /// step: a rename and a metadata record for the durable stores), with the effect of
    /// [`LogStore::save_snapshot`]. Until that step the store is as it was: a writer or a taken
    /// snapshot dropped unsaved leaves no file ([`DiskStorage`] and [`GroupStore`] remove it at
    /// once, while the store lives), and a crash between `finish` and the save leaves at most a
    /// file that recovery removes. The store may be written meanwhile (entries, compactions, a
    /// snapshot received from the leader and installed); a taken snapshot not newer than the
    /// store's when it is saved is dropped. One local snapshot at a time per store.
    ///
    /// The default buffers the whole data in memory and saves it with
    /// [`LogStore::save_snapshot`] at the save step: correct for any store, but **not
    /// bounded**. [`DiskStorage`] and [`GroupStore`] write each piece through to a file of the
    /// snapshot's own; [`MemStorage`] keeps the default (it keeps snapshots in memory anyway).
    fn begin_snapshot_owned(&mut self, meta: &SnapshotMeta) -> Result<Box<dyn OwnedSnapshotWriter<Self>>, Self::Error> {
        Ok(Box::new(BufferedOwned { meta: meta.clone(), data: Vec::new() }))
    }

    /// Opens the store's snapshot `meta` (its current one) for reading by a reader that owns
    /// what it needs, so that it may run on another thread than the store's owner: a driver
    /// restores its state machine from it off the thread that writes the log. Each chunk is
    /// what [`Storage::snapshot_chunk`] would return for it, checked the same way.
    ///
    /// The reader reads the snapshot as long as the store holds it: the store may be written
    /// meanwhile (entries, compactions), but once it installs or saves a newer snapshot the
    /// reader may fail ([`StorageError::SnapshotReplaced`], or an I/O error for a
    /// removed file), so a driver that installs a newer one first waits for the reader to end.
    /// A reader keeps the store's directory held only while it reads a chunk: once the store is
    /// closed (for a [`GroupStore`], every handle of its [`SharedWal`]), its reads fail. A
    /// [`GroupStore`]'s reader reads its chunks without the shared log's lock, so a large
    /// restore does not hold up the other groups' writes.
    ///
    /// `Ok(None)`: this store has no such reader (the default), and a driver reads the snapshot
    /// through [`Storage::snapshot_chunk`] on the store's owner. [`MemStorage`],
    /// [`DiskStorage`] and [`GroupStore`] have one. A `meta` that is not the store's current
    /// snapshot is [`StorageError::SnapshotReplaced`].
    fn open_snapshot_owned(&self, meta: &SnapshotMeta) -> Result<Option<Box<dyn OwnedSnapshotReader>>, StorageError> {
        let _ = meta;
        Ok(None)
    }

    /// Saves a snapshot taken through [`LogStore::begin_snapshot_owned`] (and finished), with
    /// the effect of [`LogStore::save_snapshot`]: durable and atomic, and dropped if it is not
    /// newer than the store's snapshot. A snapshot taken from another store is refused. The
    /// default calls [`TakenSnapshot::save`].
    fn save_taken_snapshot(&mut self, taken: Box<dyn TakenSnapshot<Self>>) -> Result<(), Self::Error> {
        taken.save(self)
    }

    /// Like [`LogStore::persist`], but takes the entries: a store that keeps its log in memory
    /// moves them there instead of cloning each one. The default persists a borrow of them.
    fn persist_owned(&mut self, hard_state: Option<HardState>, entries: Vec<Entry>) -> Result<(), Self::Error> {
        self.persist(hard_state, &entries)
    }

    /// Carries out the writes of one [`Output`] in the order the raft-core contract requires:
    /// snapshot chunks, the snapshot install, then hard state and entries (one sync).
    fn write_output(&mut self, output: &Output) -> Result<(), Self::Error> {
        write_snapshot_part(self, output)?;
        self.persist(output.hard_state, &output.entries)
    }

    /// Like [`LogStore::write_output`], but may take the output's entries instead of copying
    /// them: `output.entries` is left empty. For drivers that have no further use for them (read
    /// what you need of them first); raft-net's driver calls this one. The default calls
    /// [`LogStore::write_output`] (so a store that overrides that one is still obeyed) and then
    /// empties the entries; a store that moves entries into memory overrides this with
    /// [`write_output_moving`], which goes through [`LogStore::persist_owned`].
    fn write_output_owned(&mut self, output: &mut Output) -> Result<(), Self::Error> {
        self.write_output(output)?;
        output.entries.clear();
        Ok(())
    }

    /// Writes the outputs of many stores (one per group) as [`LogStore::write_output_owned`]
    /// would, each store's outputs in the order given: a driver that steps many groups at once
    /// (raft-net's `Host`) hands over all their outputs in one
    /// call. A store that can make all of them durable with one sync overrides it
    /// ([`GroupStore`] does, for the groups of one [`SharedWal`]: group commit across groups);
    /// the default writes them one store after another.
    ///
    /// On an error, [`WriteOutputsError`] says how far the write got: the stores before
    /// `durable` had every output made durable, the next `failed` ones failed (their groups must
    /// stop: part of their outputs may be durable, the rest is not), and the stores after those
    /// were not written at all, so a driver may write them again (raft-net's `Host` does, so one
    /// group's failing store stops that group only). The default fails one store at a time.
    fn write_outputs(batch: &mut [(&mut Self, &mut [Output])]) -> Result<(), WriteOutputsError<Self::Error>>
    where
        Self: Sized,
    {
        for (position, (store, outputs)) in batch.iter_mut().enumerate() {
            for output in outputs.iter_mut() {
                store.write_output_owned(output).map_err(|error| WriteOutputsError {
                    durable: position,
                    failed: 1,
                    error,
                })?;
            }
        }
        Ok(())
    }
}

/// Why [`LogStore::write_outputs`] failed, and how far it got (positions in its batch).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("writing the outputs of a batch failed at store {durable} ({failed} store(s) failed): {error}")]
pub struct WriteOutputsError<E: std::error::Error + 'static> {
    /// Every output of the stores before this position is durable.
    pub durable: usize,
    /// The stores from `durable` on that failed (at least 1). The stores after them were not
    /// written and may be written again.
    pub failed: usize,
    /// Why.
    #[source]
    pub error: E,
}

/// A local snapshot being written into a store a piece at a time: see
/// [`LogStore::begin_snapshot`]. `E` is the store's error type.
#[must_use = "a snapshot writer saves nothing until `finish` is called"]
pub trait SnapshotWriter<E> {
    /// Appends `data` to the snapshot's data. An error leaves the store as it was before
    /// [`LogStore::begin_snapshot`] (an I/O error also stops a store that fail-stops).
    fn write(&mut self, data: &[u8]) -> Result<(), E>;

    /// Saves the snapshot, with `data_crc32` (the crc32 of all the data written, see
    /// [`raft_core::snapshot_crc32`]) as its metadata's checksum, durably and with the effect of
    /// [`LogStore::save_snapshot`]; a snapshot not newer than the store's is dropped.
    fn finish(self: Box<Self>, data_crc32: u32) -> Result<(), E>;
}

/// A local snapshot written a piece at a time by a writer that owns what it needs, so that it
/// may run on another thread than the store's owner: see [`LogStore::begin_snapshot_owned`].
/// `S` is the store it was begun on.
#[must_use = "a snapshot writer saves nothing until `finish` is called and the store saves it"]
pub trait OwnedSnapshotWriter<S: LogStore + ?Sized>: Send {
    /// Appends `data` to the snapshot's data.
    fn write(&mut self, data: &[u8]) -> Result<(), S::Error>;

    /// Ends the data, with `data_crc32` (the crc32 of all the data written, see
    /// [`raft_core::snapshot_crc32`]) as its metadata's checksum, and makes it durable (for a
    /// durable store): what is left is [`LogStore::save_taken_snapshot`], on the store's owner.
    fn finish(self: Box<Self>, data_crc32: u32) -> Result<Box<dyn TakenSnapshot<S>>, S::Error>;
}

/// A store's snapshot, read off the store's owner: see [`LogStore::open_snapshot_owned`].
pub trait OwnedSnapshotReader: Send {
    /// The snapshot it reads.
    fn meta(&self) -> &SnapshotMeta;

    /// At most `bytes_max` bytes (at least one, unless the data has ended) of the data from
    /// `offset` on, as [`Storage::snapshot_chunk`] returns them.
    fn chunk(&mut self, offset: u64, bytes_max: u64) -> Result<SnapshotChunk, StorageError>;
}

/// A local snapshot whose data is written (and durable, for a durable store), waiting to be
/// saved into its store ([`LogStore::save_taken_snapshot`]). Dropping it leaves the store as it
/// was (raft-storage's durable stores remove its file at once; recovery removes one a crash
/// leaves).
#[must_use = "a taken snapshot is not the store's until it is saved"]
pub trait TakenSnapshot<S: LogStore + ?Sized>: Send {
    /// The snapshot's metadata, its checksum included.
    fn meta(&self) -> &SnapshotMeta;

    /// Saves it into `store` (the one it was begun on): see [`LogStore::save_taken_snapshot`].
    fn save(self: Box<Self>, store: &mut S) -> Result<(), S::Error>;
}

/// The default [`LogStore::begin_snapshot_owned`]: the whole data in memory.
struct BufferedOwned {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

impl<S: LogStore + ?Sized> OwnedSnapshotWriter<S> for BufferedOwned {
    fn write(&mut self, data: &[u8]) -> Result<(), S::Error> {
        self.data.extend_from_slice(data);
        Ok(())
    }

    fn finish(self: Box<Self>, data_crc32: u32) -> Result<Box<dyn TakenSnapshot<S>>, S::Error> {
        let BufferedOwned { meta, data } = *self;
        Ok(Box::new(BufferedOwned { meta: SnapshotMeta { data_crc32, ..meta }, data }))
    }
}

impl<S: LogStore + ?Sized> TakenSnapshot<S> for BufferedOwned {
    fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    fn save(self: Box<Self>, store: &mut S) -> Result<(), S::Error> {
        store.save_snapshot(&self.meta, &self.data)
    }
}

/// The default [`LogStore::begin_snapshot`]: the whole data in memory, saved at the end.
struct BufferedSnapshot<'a, S: ?Sized> {
    store: &'a mut S,
    meta: SnapshotMeta,
    data: Vec<u8>,
}

impl<S: LogStore + ?Sized> SnapshotWriter<S::Error> for BufferedSnapshot<'_, S> {
    fn write(&mut self, data: &[u8]) -> Result<(), S::Error> {
        self.data.extend_from_slice(data);
        Ok(())
    }

    fn finish(self: Box<Self>, data_crc32: u32) -> Result<(), S::Error> {
        let meta = SnapshotMeta { data_crc32, ..self.meta };
        self.store.save_snapshot(&meta, &self.data)
    }
}

/// [`LogStore::write_output_owned`] for a store whose [`LogStore::persist_owned`] moves the
/// entries (and whose [`LogStore::write_output`] is the default): the snapshot part, then the
/// entries handed over by value. `output.entries` is left empty.
pub fn write_output_moving<S: LogStore + ?Sized>(store: &mut S, output: &mut Output) -> Result<(), S::Error> {
    write_snapshot_part(store, output)?;
    let entries = std::mem::take(&mut output.entries);
    store.persist_owned(output.hard_state, entries)
}

/// The writes of `output` that come before its hard state and entries: the snapshot chunks,
/// then the install.
fn write_snapshot_part<S: LogStore + ?Sized>(store: &mut S, output: &Output) -> Result<(), S::Error> {
    for chunk in &output.snapshot_chunks {
        store.write_snapshot_chunk(&chunk.meta, chunk.offset, &chunk.data)?;
    }
    if let Some(meta) = &output.install_snapshot {
        store.install_snapshot(meta)?;
    }
    Ok(())
}

/// The piece of `data` at `offset`, at most `bytes_max` bytes (at least one unless at the end).
fn chunk_of(data: &Bytes, offset: u64, bytes_max: u64) -> SnapshotChunk {
    let len = data.len() as u64;
    let start = offset.min(len);
    let end = start.saturating_add(bytes_max.max(1)).min(len);
    SnapshotChunk { data: data.slice(start as usize..end as usize), done: end == len }
}

/// Entries in `[low, high)` from `entries` (whose first element has index `offset + 1`), bounded
/// by `bytes_max` but at least one.
fn take_entries(entries: &[Entry], offset: Index, low: Index, high: Index, bytes_max: u64) -> Vec<Entry> {
    let start = (low.0 - offset.0 - 1) as usize;
    let end = ((high.0 - offset.0).saturating_sub(1) as usize).min(entries.len());
    let range = entries.get(start..end).unwrap_or_default();
    // Count first, then clone into a vector of exactly that size: pushing one by one regrew
    // (and copied) the vector over and over on every read of a batch.
    let mut count = 0;
    let mut bytes = 0;
    for entry in range {
        let size = entry.size_bytes();
        if count > 0 && bytes + size > bytes_max {
            break;
        }
        bytes += size;
        count += 1;
    }
    range[..count].to_vec()
}

#[cfg(test)]
mod tests {
    use raft_core::{EntryPayload, InitialState, Membership, NodeId, StorageError};

    use super::*;

    /// A store that overrides `write_output` (here only to count the calls).
    struct Overriding {
        inner: MemStorage,
        writes: usize,
    }

    impl Storage for Overriding {
        fn initial_state(&self) -> Result<InitialState, StorageError> {
            self.inner.initial_state()
        }
        fn entries(&self, low: Index, high: Index, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
            self.inner.entries(low, high, bytes_max)
        }
        fn term(&self, index: Index) -> Result<Term, StorageError> {
            self.inner.term(index)
        }
        fn first_index(&self) -> Result<Index, StorageError> {
            self.inner.first_index()
        }
        fn last_index(&self) -> Result<Index, StorageError> {
            self.inner.last_index()
        }
        fn snapshot(&self) -> Result<SnapshotMeta, StorageError> {
            self.inner.snapshot()
        }
        fn snapshot_chunk(
            &self,
            index: Index,
            term: Term,
            offset: u64,
            bytes_max: u64,
        ) -> Result<SnapshotChunk, StorageError> {
            self.inner.snapshot_chunk(index, term, offset, bytes_max)
        }
    }

    impl LogStore for Overriding {
        type Error = MemStorageError;
        fn persist(&mut self, hard_state: Option<HardState>, entries: &[Entry]) -> Result<(), Self::Error> {
            self.inner.persist(hard_state, entries)
        }
        fn compact(&mut self, index: Index, term: Term) -> Result<(), Self::Error> {
            self.inner.compact(index, term)
        }
        fn write_snapshot_chunk(&mut self, meta: &SnapshotMeta, offset: u64, data: &[u8]) -> Result<(), Self::Error> {
            self.inner.write_snapshot_chunk(meta, offset, data)
        }
        fn install_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), Self::Error> {
            self.inner.install_snapshot(meta)
        }
        fn write_output(&mut self, output: &Output) -> Result<(), Self::Error> {
            self.writes += 1;
            self.inner.write_output(output)
        }
    }

    /// Drivers call `write_output_owned`; a store that overrides only `write_output` must still
    /// be the one that writes.
    #[test]
    fn the_default_write_output_owned_goes_through_an_overridden_write_output() {
        let membership = Membership::new([NodeId(1)]);
        let mut store = Overriding { inner: MemStorage::new(membership), writes: 0 };
        let entry = Entry { index: Index(1), term: Term(1), payload: EntryPayload::Normal(Bytes::from_static(b"x")) };
        let mut output = Output { entries: vec![entry], ..Output::default() };
        store.write_output_owned(&mut output).expect("written");
        assert_eq!(store.writes, 1, "the overridden write_output ran");
        assert!(output.entries.is_empty(), "the entries were taken");
        assert_eq!(store.last_index(), Ok(Index(1)));
    }
}
