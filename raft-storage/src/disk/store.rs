//! The store: [`DiskStorage`] ties the files together (META, the segment log, the snapshot
//! files), keeps the log in memory for reads, and implements [`Storage`] and [`LogStore`] over
//! them. Any I/O error stops it for good (fail-stop).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use raft_core::{
    Entry, HardState, Index, InitialState, Membership, Output, SnapshotChunk, SnapshotMeta, Storage, StorageError, Term,
};

use super::codec::FORMAT_VERSION;
use super::directory::Directory;
use super::error::{DiskError, fail_stop};
use super::meta::{IDENTITY_MAGIC, Identity, Meta, open_existing, prepare_new, read_meta, write_identity, write_meta};
use super::recovery::{RecoveredLog, RecoveryReport, recover_log, remove_stray_snapshots, sync_recovered};
use super::segment::{SegmentLog, parse_segment_name};
use super::snapshot::{self, Pending, RemoveUnsaved, Staging, Synced, Unsaved};
use crate::fs::{FileSystem, StdFs};
use crate::metrics::{WAL_GROUP, WalMetrics};
use crate::{LogStore, OwnedSnapshotReader, OwnedSnapshotWriter, SnapshotWriter, TakenSnapshot, take_entries};

/// Whether `name` is a segment's file name.
fn is_segment(name: &str) -> bool {
    parse_segment_name(name).is_some()
}

/// Tunables of the durable store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskOptions {
    /// A segment is closed and a new one started once it would grow past this size.
    pub segment_bytes_max: u64,
    /// How far ahead of its records the newest segment is filled with zeros (capped at
    /// `segment_bytes_max`); 0: not at all, every append grows the file. As
    /// [`WalOptions::preallocate_bytes`](crate::WalOptions::preallocate_bytes): most syncs then
    /// change no file length, at the price of writing each byte of the log twice.
    pub preallocate_bytes: u64,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions { segment_bytes_max: 64 * 1024 * 1024, preallocate_bytes: 1024 * 1024 }
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
/// use raft_storage::{DiskOptions, DiskStorage, Identity, LogStore, StdFs};
///
/// # let dir = std::env::temp_dir().join(format!("raft-storage-doc-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// let me = Identity { cluster_id: 1, node_id: NodeId(1) };
/// let membership = Membership::new([NodeId(1)]);
/// let mut store = DiskStorage::create(StdFs, &dir, me, membership.clone(), DiskOptions::default())?;
/// let data = b"the state machine at index 7";
/// let meta = SnapshotMeta { index: Index(7), term: Term(2), membership, data_crc32: raft_core::snapshot_crc32(data) };
/// store.save_snapshot(&meta, data)?;
/// drop(store);
///
/// // After a restart: open the store, then read the snapshot back a piece at a time.
/// let store = DiskStorage::open(StdFs, &dir, me, DiskOptions::default())?;
/// assert!(store.recovery_report().is_clean(), "a clean shutdown leaves nothing to repair");
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
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DiskStorage<F: FileSystem = StdFs> {
    /// Shared (weakly) with the local snapshots taken off the owner, to remove their files if
    /// they are dropped unsaved.
    dir: Arc<Directory<F>>,
    options: DiskOptions,
    identity: Identity,
    /// The metadata as last written.
    meta: Meta,
    /// The latest hard state given (its commit may be newer than `meta`'s).
    hard_state: HardState,
    /// Entries from `meta.snapshot_index + 1` on.
    entries: Vec<Entry>,
    log: SegmentLog<F::File>,
    /// The snapshot being received, if any.
    staging: Option<Staging<F::File>>,
    stopped: bool,
    /// What `open` repaired.
    report: RecoveryReport,
    /// The number of the next local snapshot begun off the owner (its file's name has it).
    taking_next: u64,
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
        let dir = Directory::locked(fs, dir.into(), true)?;
        // Segments are only written after IDENTITY.
        prepare_new(&dir, is_segment)?;
        let meta = Meta { membership, ..Meta::default() };
        write_meta(&dir, &meta)?;
        write_identity(&dir, identity, IDENTITY_MAGIC, FORMAT_VERSION)?;
        Ok(DiskStorage::new(dir, options, identity, meta, SegmentLog::new(Vec::new()), Vec::new()))
    }

    /// Opens the store in `dir` as `identity`, recovering its state: a torn tail of the last
    /// segment is cut off; any other damage is a [`DiskError::Corrupt`] naming file and offset,
    /// a missing or damaged snapshot file included (its length and crc are checked, reading it a
    /// piece at a time). Leftovers of an interrupted compaction or snapshot install are removed.
    /// [`DiskStorage::recovery_report`] lists every such repair.
    pub fn open(fs: F, dir: impl Into<PathBuf>, identity: Identity, options: DiskOptions) -> Result<Self, DiskError> {
        let dir = Directory::locked(fs, dir.into(), false)?;
        let names = open_existing(&dir, identity, (IDENTITY_MAGIC, FORMAT_VERSION), is_segment)?;
        let meta = read_meta(&dir)?;
        if let Some(snapshot) = &meta.snapshot {
            // Before anything is repaired: a store whose snapshot is damaged stays as found.
            snapshot::verify(&dir, "", snapshot)?;
        }
        let mut report = RecoveryReport::default();
        let boundary = (meta.snapshot_index, meta.snapshot_term);
        let RecoveredLog { log, entries } = recover_log(&dir, &names, boundary, &mut report)?;
        remove_stray_snapshots(&dir, &names, meta.snapshot.as_ref(), &mut report)?;
        sync_recovered(&dir, &log)?;
        let mut store = DiskStorage::new(dir, options, identity, meta, log, entries);
        store.report = report;
        Ok(store)
    }

    fn new(
        dir: Directory<F>,
        options: DiskOptions,
        identity: Identity,
        meta: Meta,
        log: SegmentLog<F::File>,
        entries: Vec<Entry>,
    ) -> Self {
        DiskStorage {
            dir: Arc::new(dir),
            options,
            identity,
            hard_state: meta.hard_state,
            meta,
            entries,
            log: log.with_metrics(WalMetrics::new(identity.node_id, WAL_GROUP)),
            staging: None,
            stopped: false,
            report: RecoveryReport::default(),
            taking_next: 0,
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
        self.log.len()
    }

    /// What [`DiskStorage::open`] repaired to recover this store (torn tails cut, leftover
    /// files removed); empty after a clean shutdown and for a store just created.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    fn write_meta(&mut self, meta: Meta) -> Result<(), DiskError> {
        write_meta(&self.dir, &meta)?;
        self.meta = meta;
        Ok(())
    }

    fn last_index(&self) -> Index {
        Index(self.meta.snapshot_index.0 + self.entries.len() as u64)
    }

    /// Runs `write`, stopping the store for good if it fails with an I/O error (fail-stop).
    fn guarded<T>(&mut self, write: impl FnOnce(&mut Self) -> Result<T, DiskError>) -> Result<T, DiskError> {
        fail_stop(self, |this| &mut this.stopped, write)
    }
}

/// The log: appends, truncations, compactions.
impl<F: FileSystem> DiskStorage<F> {
    fn persist_inner(&mut self, hard_state: Option<HardState>, entries: &[Entry]) -> Result<(), DiskError> {
        validate_append(entries, self.meta.snapshot_index, self.last_index())?;
        if let Some(hard_state) = hard_state {
            let durable = self.meta.hard_state;
            if (hard_state.term, hard_state.vote) != (durable.term, durable.vote) {
                self.write_meta(Meta { hard_state, ..self.meta.clone() })?;
            }
            self.hard_state = hard_state;
        }
        let Some(first) = entries.first().map(|e| e.index) else { return Ok(()) };
        if first <= self.last_index() {
            // Durably removes every entry from `first` on, before anything replaces them.
            self.entries.truncate((first.0 - self.meta.snapshot_index.0 - 1) as usize);
            self.log.truncate_from(&self.dir, first)?;
        }
        // The caller adds the entries to `self.entries` once this succeeded (by clone or move).
        self.log.append(&self.dir, entries, &self.options)
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
            self.log.remove_covered(&self.dir, index)?;
        } else {
            self.entries.clear();
            self.log.remove_from(&self.dir, 0)?;
        }
        Ok(())
    }
}

/// Refuses `entries` unless they are consecutive and continue a log whose boundary is `snapshot`
/// and whose last entry is `last` (replacing a suffix of it is fine).
pub(crate) fn validate_append(entries: &[Entry], snapshot: Index, last: Index) -> Result<(), DiskError> {
    let Some(first) = entries.first().map(|e| e.index) else { return Ok(()) };
    if first <= snapshot {
        return Err(DiskError::AppendBelowSnapshot { first, snapshot });
    }
    if first > last.next() {
        return Err(DiskError::AppendGap { first, last });
    }
    match entries.windows(2).find(|pair| pair[1].index != pair[0].index.next()) {
        Some(pair) => Err(DiskError::AppendNotConsecutive(pair[1].index)),
        None => Ok(()),
    }
}

/// Snapshots: staging, installing.
impl<F: FileSystem> DiskStorage<F> {
    /// Writes a chunk through to the staging file (nothing is kept in memory but its crc).
    fn write_chunk_inner(&mut self, meta: &SnapshotMeta, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        snapshot::write_chunk(&mut self.staging, &self.dir, "", meta, offset, data)
    }

    fn install_inner(&mut self, meta: &SnapshotMeta) -> Result<(), DiskError> {
        let staging = snapshot::take_staged(&mut self.staging, meta)?;
        self.install_staged(staging)
    }

    /// Writes a local snapshot to its own file (a snapshot being received keeps its staging)
    /// and installs it.
    fn save_inner(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), DiskError> {
        let staging = Staging::local(&self.dir, "", meta, data)?;
        self.install_staged(staging)
    }

    fn install_staged(&mut self, staging: impl Into<Pending<F::File>>) -> Result<(), DiskError> {
        let staging = staging.into();
        let meta = staging.meta().clone();
        let installed = self.meta.snapshot.as_ref().map_or(Index(0), |snapshot| snapshot.meta.index);
        if meta.index <= installed {
            // Older than what we hold: never roll back. Not durable: recovery removes it too.
            return staging.discard(&self.dir);
        }
        let snapshot = staging.into_snapshot_file(&self.dir)?;
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
            self.log.remove_from(&self.dir, 0)?;
        }
        // The file META no longer names goes.
        match previous {
            Some(previous) => snapshot::remove(&self.dir, "", &previous),
            None => Ok(()),
        }
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
                snapshot::read_chunk(&self.dir, "", snapshot, offset, bytes_max)
            }
            _ => Err(StorageError::SnapshotReplaced(index)),
        }
    }
}

impl<F: FileSystem> LogStore for DiskStorage<F>
where
    F: Send + Sync + 'static,
    F::File: Send + 'static,
{
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

    /// Writes each piece through to the local snapshot's own file (nothing is kept in memory
    /// but crcs), so a snapshot being received keeps its staging; finishing installs it as
    /// [`LogStore::save_snapshot`] does.
    fn begin_snapshot(&mut self, meta: &SnapshotMeta) -> Result<Box<dyn SnapshotWriter<DiskError> + '_>, DiskError> {
        let staging = self.guarded(|store| Staging::start_local(&store.dir, "", meta))?;
        Ok(Box::new(LocalSnapshot { store: self, staging }))
    }

    /// A reader of the snapshot's file that holds the store's directory weakly: it fails its
    /// reads once the store is dropped, and never keeps the directory held.
    fn open_snapshot_owned(&self, meta: &SnapshotMeta) -> Result<Option<Box<dyn OwnedSnapshotReader>>, StorageError> {
        match &self.meta.snapshot {
            Some(snapshot) if (snapshot.meta.index, snapshot.meta.term) == (meta.index, meta.term) => {
                Ok(Some(Box::new(DiskSnapshotReader { dir: Arc::downgrade(&self.dir), snapshot: snapshot.clone() })))
            }
            _ => Err(StorageError::SnapshotReplaced(meta.index)),
        }
    }

    /// Writes each piece through to a file of the snapshot's own
    /// (`snapshot-<index>-<term>-0-<job>.taking`), synced by `finish`; the save step renames it to the
    /// snapshot's name and records it in META, as [`LogStore::save_snapshot`] does. An I/O
    /// error of the writer is returned without stopping the store (the log is untouched); the
    /// driver stops the node for it.
    ///
    /// A writer or a taken snapshot dropped unsaved (also after an I/O error of its own, or a
    /// save refused) removes its file at once, also once the store is stopped: the file is
    /// garbage that nothing names, whose removal changes nothing recovery finds, and a host
    /// whose other groups go on gets its space back before the next open. Dropped after the
    /// store, it leaves the file to the next open's recovery: the directory may be another
    /// store's by then, with a file of the same name of its own.
    fn begin_snapshot_owned(&mut self, meta: &SnapshotMeta) -> Result<Box<dyn OwnedSnapshotWriter<Self>>, DiskError> {
        let job = self.taking_next;
        self.taking_next += 1;
        let staging = self.guarded(|store| Staging::start_taking(&store.dir, "", meta, 0, job))?;
        let file = Unsaved::new(Arc::downgrade(&self.dir), staging.path().to_path_buf());
        Ok(Box::new(TakingSnapshot { staging, file }))
    }
}

/// The store's directory as long as the store lives: it removes the files of the snapshots
/// taken off the owner that are dropped unsaved.
impl<F: FileSystem> RemoveUnsaved for Weak<Directory<F>> {
    fn remove_unsaved(&self, path: &Path) {
        if let Some(dir) = self.upgrade() {
            snapshot::remove_unsaved(&dir, path);
        }
    }
}

/// A [`DiskStorage`]'s snapshot, read off the store's owner from the snapshot's own file.
struct DiskSnapshotReader<F: FileSystem> {
    dir: Weak<Directory<F>>,
    snapshot: snapshot::SnapshotFile,
}

impl<F: FileSystem + Send + Sync> OwnedSnapshotReader for DiskSnapshotReader<F> {
    fn meta(&self) -> &SnapshotMeta {
        &self.snapshot.meta
    }

    fn chunk(&mut self, offset: u64, bytes_max: u64) -> Result<SnapshotChunk, StorageError> {
        // The store is gone: its files are not ours to read any more.
        let dir = self.dir.upgrade().ok_or(StorageError::Unavailable(self.snapshot.meta.index))?;
        snapshot::read_chunk(&dir, "", &self.snapshot, offset, bytes_max)
    }
}

/// A local snapshot being written through to its own file off the [`DiskStorage`]'s owner.
struct TakingSnapshot<F: FileSystem> {
    /// Before `file`: the file is closed before it is removed.
    staging: Staging<F::File>,
    /// The store it was begun on, which the taken snapshot must be saved into.
    file: Unsaved<Weak<Directory<F>>>,
}

impl<F: FileSystem> OwnedSnapshotWriter<DiskStorage<F>> for TakingSnapshot<F>
where
    F: Send + Sync + 'static,
    F::File: Send + 'static,
{
    fn write(&mut self, data: &[u8]) -> Result<(), DiskError> {
        self.staging.write(data)
    }

    fn finish(self: Box<Self>, data_crc32: u32) -> Result<Box<dyn TakenSnapshot<DiskStorage<F>>>, DiskError> {
        let TakingSnapshot { mut staging, file } = *self;
        staging.meta.data_crc32 = data_crc32;
        Ok(Box::new(TakenFile { synced: staging.sync()?, file }))
    }
}

/// A local snapshot synced to its own file, for its [`DiskStorage`] to save.
struct TakenFile<F: FileSystem> {
    synced: Synced,
    file: Unsaved<Weak<Directory<F>>>,
}

impl<F: FileSystem> TakenSnapshot<DiskStorage<F>> for TakenFile<F>
where
    F: Send + Sync + 'static,
    F::File: Send + 'static,
{
    fn meta(&self) -> &SnapshotMeta {
        &self.synced.meta
    }

    /// Refused with [`DiskError::SnapshotNotStaged`] by another store (another directory, or
    /// the same one opened again), and its file removed.
    fn save(self: Box<Self>, store: &mut DiskStorage<F>) -> Result<(), DiskError> {
        let TakenFile { synced, mut file } = *self;
        if !Weak::ptr_eq(file.owner(), &Arc::downgrade(&store.dir)) {
            return Err(DiskError::SnapshotNotStaged(synced.meta.index));
        }
        // The save takes the file over only if it runs: a stopped store refuses it, and the
        // guard then removes the file as it is dropped.
        store.guarded(|store| {
            file.saving();
            store.install_staged(Pending::Synced(synced))
        })
    }
}

/// A local snapshot being written through to its file in a [`DiskStorage`].
struct LocalSnapshot<'a, F: FileSystem> {
    store: &'a mut DiskStorage<F>,
    staging: Staging<F::File>,
}

impl<F: FileSystem> SnapshotWriter<DiskError> for LocalSnapshot<'_, F> {
    fn write(&mut self, data: &[u8]) -> Result<(), DiskError> {
        let staging = &mut self.staging;
        self.store.guarded(|_| staging.write(data))
    }

    fn finish(self: Box<Self>, data_crc32: u32) -> Result<(), DiskError> {
        let LocalSnapshot { store, mut staging } = *self;
        staging.meta.data_crc32 = data_crc32;
        store.guarded(|store| store.install_staged(staging))
    }
}
