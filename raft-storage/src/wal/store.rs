//! [`SharedWal`] (the node's write-ahead log, shared by its groups) and [`GroupStore`] (one
//! group's handle on it, implementing [`Storage`] and [`LogStore`]). Every handle of a WAL shares
//! one [`Inner`] behind a mutex: the segment writer, every group's in-memory state and the entry
//! cache.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use raft_core::{
    Entry, GroupId, HardState, Index, InitialState, Membership, Output, SnapshotChunk, SnapshotMeta, Storage,
    StorageError, Term,
};

use super::cache::EntryCache;
use super::record::{
    FORMAT_VERSION, IDENTITY_MAGIC, Record, RecordRef, SEGMENT_MAGIC, SEGMENT_VERSION, decode, group_prefix,
    parse_group_file, segment_name,
};
use super::recovery;
use crate::disk::codec::{checked_record, encode_header, encode_record};
use crate::disk::directory::{Directory, OpenFile};
use crate::disk::error::{DiskError, fail_stop};
use crate::disk::meta::{Identity, Meta, prepare_new, write_identity};
use crate::disk::recovery::RecoveryReport;
use crate::disk::snapshot::{self, Pending, RemoveUnsaved, Staging, Synced, Unsaved, snapshot_name};
use crate::disk::store::validate_append;
use crate::fs::{FileSystem, StdFs};
use crate::metrics::{WAL_SHARED, WalMetrics, WalSizes};
use crate::{LogStore, OwnedSnapshotReader, OwnedSnapshotWriter, SnapshotWriter, TakenSnapshot, WriteOutputsError};

/// Tunables of the shared write-ahead log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// A segment is closed and a new one started once it would grow past this size.
    pub segment_bytes_max: u64,
    /// The most bytes of entries ([`Entry::size_bytes`]) kept in memory, over all groups. Entries
    /// outside the cache are read back from their segment.
    pub cache_bytes_max: u64,
    /// How far ahead of its records the newest segment is filled with zeros (capped at
    /// `segment_bytes_max`); 0: not at all, every write grows the file.
    ///
    /// Records are then written over zeros already on disk, so most syncs change no file length
    /// and the file system has no metadata to commit with them: on ext4 on a virtual machine a
    /// sync cost 16–45% less CPU and ran 13–84% more often this way (BENCHMARKS.md). The price:
    /// each byte of the log is written twice (zeros, then the record), and the sync after a
    /// fill writes the fill's zeros too. Recovery reads zeros after the newest segment's last
    /// record as space no record reached (a rotation cuts a segment to its records first).
    pub preallocate_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes_max: 64 * 1024 * 1024,
            cache_bytes_max: 64 * 1024 * 1024,
            preallocate_bytes: 1024 * 1024,
        }
    }
}

/// Where an entry's record lies, and the entry's term (so that `term` never reads the disk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Location {
    pub(super) segment: u64,
    pub(super) offset: u64,
    /// The record's length, prefix included.
    pub(super) len: u32,
    pub(super) term: Term,
}

/// One group's state.
pub(super) struct Group<File> {
    /// The metadata as last logged.
    pub(super) meta: Meta,
    /// The segment holding the group's latest metadata record.
    pub(super) meta_segment: u64,
    /// The latest hard state given (its commit may be newer than `meta`'s).
    pub(super) hard_state: HardState,
    /// Where the entries from `meta.snapshot_index + 1` on lie; their segments never decrease.
    pub(super) log: VecDeque<Location>,
    /// The snapshot being received, if any.
    staging: Option<Staging<File>>,
    /// Tells apart the groups that had this id over the WAL's life, so that a handle on a
    /// removed group never reaches a new one of the same id.
    incarnation: u64,
}

impl<File> Group<File> {
    pub(super) fn new(meta: Meta, meta_segment: u64, log: VecDeque<Location>, incarnation: u64) -> Self {
        Group { hard_state: meta.hard_state, meta, meta_segment, log, staging: None, incarnation }
    }

    fn boundary(&self) -> Index {
        self.meta.snapshot_index
    }

    fn last_index(&self) -> Index {
        Index(self.boundary().0 + self.log.len() as u64)
    }

    fn location(&self, index: Index) -> Option<&Location> {
        let offset = index.0.checked_sub(self.boundary().0 + 1)?;
        self.log.get(usize::try_from(offset).ok()?)
    }

    /// The term of `index`: the boundary's, or an entry's.
    fn term(&self, index: Index) -> Option<Term> {
        if index == self.boundary() {
            return Some(self.meta.snapshot_term);
        }
        self.location(index).map(|location| location.term)
    }
}

/// One segment file.
#[derive(Clone, Copy, Debug)]
pub(super) struct SegmentFile {
    pub(super) sequence: u64,
    /// The end of its last record, bytes still in the write buffer included (the file may be
    /// longer: zeros no record reached).
    pub(super) len: u64,
    /// The file's length as last handed to the file system (zeros filled ahead included).
    pub(super) file_len: u64,
    pub(super) records: u64,
    /// Whether zeros may follow its records (a segment of format version 2): only then is its
    /// space filled ahead of them.
    pub(super) zero_tail: bool,
}

impl SegmentFile {
    /// Its bytes on disk, or about to be (records still buffered included).
    pub(super) fn size(&self) -> u64 {
        self.len.max(self.file_len)
    }
}

/// Appends records to the newest segment, rotating segments, and syncs.
pub(super) struct Writer<F: FileSystem> {
    /// Shared with the groups' owned snapshot readers, which read their files without the lock.
    pub(super) dir: Arc<Directory<F>>,
    /// Oldest first; the last one is open in `active`.
    pub(super) segments: Vec<SegmentFile>,
    pub(super) active: Option<OpenFile<F::File>>,
    /// The number of the next segment when there is none.
    pub(super) next_sequence: u64,
    segment_bytes_max: u64,
    /// See [`WalOptions::preallocate_bytes`].
    preallocate_bytes: u64,
    /// Records not yet handed to the file system.
    buffer: Vec<u8>,
    /// Whether anything was written since the last sync.
    dirty: bool,
    /// Whether a segment was created since the last directory sync.
    created: bool,
    /// Whether a segment was started since the last reclamation.
    rotated: bool,
    /// Entry records and bytes of records appended since the last leader's sync took them
    /// (for the fsync metrics only).
    unsynced: (u64, u64),
}

impl<F: FileSystem> Writer<F> {
    pub(super) fn new(dir: Directory<F>, segments: Vec<SegmentFile>, next_sequence: u64, options: WalOptions) -> Self {
        Writer {
            dir: Arc::new(dir),
            segments,
            active: None,
            next_sequence,
            segment_bytes_max: options.segment_bytes_max,
            preallocate_bytes: options.preallocate_bytes,
            buffer: Vec::new(),
            dirty: false,
            created: false,
            rotated: false,
            unsynced: (0, 0),
        }
    }

    fn head(&self) -> Option<u64> {
        self.segments.last().map(|segment| segment.sequence)
    }

    /// Adds `record` to the batch being written; returns where it lies (its term is the
    /// caller's). Starts a new segment (closing the current one durably) if it would grow past
    /// `segment_bytes_max`.
    fn append(&mut self, record: &RecordRef<'_>) -> Result<Location, DiskError> {
        let start = self.buffer.len();
        encode_record(record, &mut self.buffer);
        let record_len = (self.buffer.len() - start) as u64;
        if !self.fits(record_len) {
            let record_bytes = self.buffer.split_off(start);
            self.rotate()?;
            self.buffer = record_bytes;
        }
        self.dirty = true;
        self.unsynced.0 += u64::from(matches!(record, RecordRef::Entry { .. }));
        self.unsynced.1 += record_len;
        let segment = self.segments.last_mut().expect("a segment was just ensured");
        let location =
            Location { segment: segment.sequence, offset: segment.len, len: record_len as u32, term: Term(0) };
        segment.len += record_len;
        segment.records += 1;
        Ok(location)
    }

    /// Whether `bytes` of records fit in the newest segment (any fit in an empty one).
    fn fits(&self, bytes: u64) -> bool {
        self.segments
            .last()
            .is_some_and(|segment| segment.records == 0 || segment.len + bytes <= self.segment_bytes_max)
    }

    /// Closes the newest segment durably (its records handed over, its fill cut off) and starts
    /// a new one.
    fn rotate(&mut self) -> Result<(), DiskError> {
        self.flush()?;
        self.trim_active()?;
        self.sync_active()?;
        self.start_segment()
    }

    /// Hands the buffered records to the file system, written where the segment's records end
    /// (over zeros filled earlier, or growing the file). Once they reach the end of the file,
    /// fills the next `preallocate_bytes` after them with zeros (see
    /// [`WalOptions::preallocate_bytes`]); the sync that makes the records durable makes the
    /// zeros durable too, so the syncs after it change no file length.
    fn flush(&mut self) -> Result<(), DiskError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let segment = self.segments.last_mut().expect("records are only buffered once a segment exists");
        let file = self.active.as_mut().expect("records are only buffered once a segment exists");
        let fill_ahead = if segment.zero_tail { self.preallocate_bytes } else { 0 };
        segment.file_len = file.write_records(segment.len, &self.buffer, fill_ahead, self.segment_bytes_max)?;
        self.buffer.clear();
        Ok(())
    }

    /// Cuts the newest segment's fill off, before a newer segment starts: only the newest may
    /// end in zeros (recovery reads zeros after any other's last record as damage).
    fn trim_active(&mut self) -> Result<(), DiskError> {
        let (Some(segment), Some(file)) = (self.segments.last_mut(), self.active.as_mut()) else { return Ok(()) };
        file.cut_fill(segment.len)?;
        segment.file_len = segment.len;
        Ok(())
    }

    fn sync_active(&mut self) -> Result<(), DiskError> {
        match self.active.as_mut() {
            Some(file) => file.sync(),
            None => Ok(()),
        }
    }

    fn start_segment(&mut self) -> Result<(), DiskError> {
        let sequence = self.head().map_or(self.next_sequence, |head| head + 1);
        self.active = None;
        let mut file = self.dir.create(self.dir.file(&segment_name(sequence)))?;
        let header = encode_header(SEGMENT_MAGIC, SEGMENT_VERSION, sequence);
        file.append(&header)?;
        let len = header.len() as u64;
        self.segments.push(SegmentFile { sequence, len, file_len: len, records: 0, zero_tail: true });
        self.active = Some(file);
        self.created = true;
        self.rotated = true;
        Ok(())
    }

    /// Hands every record appended to the file system and makes the directory entries of new
    /// segments durable (segments closed on the way were synced when closed). Returns whether
    /// records were appended since the last call: then the newest segment needs a sync.
    fn hand_over(&mut self) -> Result<bool, DiskError> {
        self.flush()?;
        if self.created {
            self.dir.sync()?;
            self.created = false;
        }
        Ok(std::mem::take(&mut self.dirty))
    }

    /// Removes (durably, oldest first) every segment numbered below `below` but the newest.
    fn remove_below(&mut self, below: u64) -> Result<(), DiskError> {
        let head = self.head().unwrap_or(0);
        let count = self.segments.iter().take_while(|s| s.sequence < below && s.sequence < head).count();
        if count == 0 {
            return Ok(());
        }
        for segment in self.segments.drain(..count) {
            self.dir.remove(&self.dir.file(&segment_name(segment.sequence)))?;
        }
        self.dir.sync()
    }
}

/// A file a batch's snapshot install released (the snapshot it replaced), removed once the
/// batch is durable (see [`Inner::after_durable`]).
pub(super) struct Released {
    group: GroupId,
    /// The incarnation of the group that released it.
    incarnation: u64,
    path: PathBuf,
}

/// Everything behind a WAL's mutex.
pub(super) struct Inner<F: FileSystem> {
    pub(super) writer: Writer<F>,
    pub(super) groups: BTreeMap<GroupId, Group<F::File>>,
    pub(super) cache: EntryCache,
    pub(super) identity: Identity,
    pub(super) report: RecoveryReport,
    pub(super) next_incarnation: u64,
    /// The number of the next local snapshot begun off a group's owner (its file's name has it).
    taking_next: u64,
    /// Whether something happened that may release the oldest segments.
    reclaim_due: bool,
    stopped: bool,
    /// Group commit across threads: every hand-over of records gets the next number (a ticket);
    /// `synced` is the highest ticket known durable; `syncing` says a writer (the leader) is
    /// syncing, without the lock, for every ticket up to the one it started at.
    handed_over: u64,
    synced: u64,
    syncing: bool,
    /// Writers waiting on `sync_ended` for the leader's sync: the leader wakes them only if there
    /// are any (a notify is a system call, and most syncs have no one waiting).
    sync_waiters: usize,
    /// The leader's handle on the newest segment (its number and file), kept between syncs.
    sync_file: Option<(u64, OpenFile<F::File>)>,
}

impl<F: FileSystem> Inner<F> {
    pub(super) fn new(
        writer: Writer<F>,
        groups: BTreeMap<GroupId, Group<F::File>>,
        identity: Identity,
        options: WalOptions,
    ) -> Self {
        Inner {
            writer,
            next_incarnation: groups.values().map(|group| group.incarnation + 1).max().unwrap_or(0),
            taking_next: 0,
            groups,
            cache: EntryCache::new(options.cache_bytes_max),
            identity,
            report: RecoveryReport::default(),
            reclaim_due: true,
            stopped: false,
            handed_over: 0,
            synced: 0,
            syncing: false,
            sync_waiters: 0,
            sync_file: None,
        }
    }

    /// Runs `write`, stopping the WAL for good if it fails with an I/O error (fail-stop).
    fn guarded<T>(&mut self, write: impl FnOnce(&mut Self) -> Result<T, DiskError>) -> Result<T, DiskError> {
        fail_stop(self, |this| &mut this.stopped, write)
    }

    fn group(&self, id: GroupId, incarnation: u64) -> Result<&Group<F::File>, DiskError> {
        self.groups.get(&id).filter(|group| group.incarnation == incarnation).ok_or(DiskError::GroupNotFound(id))
    }

    fn group_mut(&mut self, id: GroupId, incarnation: u64) -> Result<&mut Group<F::File>, DiskError> {
        self.groups.get_mut(&id).filter(|group| group.incarnation == incarnation).ok_or(DiskError::GroupNotFound(id))
    }

    /// Logs `meta` as group `id`'s metadata, with `last`, the last index of its log once the
    /// write that logs it is done.
    fn log_meta(&mut self, id: GroupId, incarnation: u64, meta: Meta, last: Index) -> Result<(), DiskError> {
        let location = self.writer.append(&RecordRef::Meta { group: id, meta: &meta, last })?;
        let group = self.group_mut(id, incarnation)?;
        group.meta = meta;
        group.meta_segment = location.segment;
        Ok(())
    }

    /// Hands the records staged to the file system; returns the ticket to wait for (0 if
    /// nothing was appended: nothing to wait for).
    fn hand_over(&mut self) -> Result<u64, DiskError> {
        if !self.writer.hand_over()? {
            return Ok(0);
        }
        self.handed_over += 1;
        Ok(self.handed_over)
    }

    /// Makes everything staged durable at once, holding the lock (group creation and removal,
    /// reclamation: rare writes).
    fn sync_now(&mut self) -> Result<(), DiskError> {
        self.hand_over()?;
        self.writer.sync_active()?;
        self.writer.unsynced = (0, 0); // Not a group commit: not in the fsync metrics.
        self.synced = self.handed_over;
        Ok(())
    }

    /// A handle on the newest segment for the leader to sync without the lock: the one kept
    /// from its last sync if the newest segment is still that one.
    fn take_sync_file(&mut self) -> Result<(u64, OpenFile<F::File>), DiskError> {
        let head = self.writer.head().expect("a ticket means a segment exists");
        match self.sync_file.take() {
            Some((sequence, file)) if sequence == head => Ok((sequence, file)),
            _ => Ok((head, self.writer.dir.open_append(segment_path(&self.writer.dir, head))?)),
        }
    }

    /// What waits for a batch to be durable: removes the files it released, and the segments no
    /// group needs any more.
    ///
    /// A released file is removed only if its group still exists as the same incarnation and its
    /// metadata does not name the file: the lock is not held while the batch syncs, so the group
    /// may have been removed meanwhile (its removal deleted its files) and created again under
    /// the same id, whose files may have the same names (an install of the same index and term).
    /// A file already gone is no error: it is garbage either way.
    fn after_durable(&mut self, released: Vec<Released>) -> Result<(), DiskError> {
        for file in released {
            let Ok(group) = self.group(file.group, file.incarnation) else { continue };
            let prefix = group_prefix(file.group);
            let named = group.meta.snapshot.as_ref().map(|s| self.writer.dir.file(&snapshot_name(&prefix, &s.meta)));
            if named.as_ref() == Some(&file.path) {
                continue;
            }
            // Not made durable: should the file come back after a crash, recovery removes it.
            self.writer.dir.remove_if_present(&file.path)?;
        }
        self.reclaim()
    }
}

/// Group creation and removal, segment reclamation.
impl<F: FileSystem> Inner<F> {
    fn create_group(&mut self, id: GroupId, membership: Membership) -> Result<u64, DiskError> {
        if self.groups.contains_key(&id) {
            return Err(DiskError::GroupExists(id));
        }
        let meta = Meta { membership, ..Meta::default() };
        let location = self.writer.append(&RecordRef::Create { group: id, meta: &meta })?;
        self.sync_now()?;
        let incarnation = self.next_incarnation;
        self.next_incarnation += 1;
        self.groups.insert(id, Group::new(meta, location.segment, VecDeque::new(), incarnation));
        Ok(incarnation)
    }

    fn remove_group(&mut self, id: GroupId) -> Result<(), DiskError> {
        if !self.groups.contains_key(&id) {
            return Err(DiskError::GroupNotFound(id));
        }
        self.writer.append(&RecordRef::Remove { group: id })?;
        self.sync_now()?;
        self.groups.remove(&id); // Closes its staging file.
        self.cache.remove_range(id, Index(0)..=Index::END);
        self.reclaim_due = true;
        let dir = &self.writer.dir;
        let files = dir.list()?.into_iter().filter(|name| parse_group_file(name).is_some_and(|(group, _)| group == id));
        for name in files.collect::<Vec<_>>() {
            // Not made durable: recovery removes the files of groups that do not exist.
            dir.remove_if_present(&dir.file(&name))?;
        }
        self.reclaim()
    }

    /// Removes the oldest segments once no group needs them (see the module docs for the rule):
    /// the segments before the oldest one holding an entry of some group after its log boundary.
    /// The groups whose latest metadata record lies in them log it again first (a checkpoint),
    /// together with a `Reclaim` record, durably; then the segments go, oldest first.
    fn reclaim(&mut self) -> Result<(), DiskError> {
        if !(self.reclaim_due || self.writer.rotated) || self.writer.segments.len() <= 1 {
            return Ok(());
        }
        self.reclaim_due = false;
        self.writer.rotated = false;
        let (Some(oldest), Some(head)) = (self.writer.segments.first().map(|s| s.sequence), self.writer.head()) else {
            return Ok(());
        };
        let copied = self.copy_forward(head)?;
        let head = self.writer.head().unwrap_or(head);
        let floor = self.groups.values().filter_map(|group| group.log.front().map(|l| l.segment)).fold(head, u64::min);
        if floor <= oldest {
            // Copies are read back from where the groups now point: make them durable all the
            // same (copying advances the floor, so this is only reached after a read failure).
            return if copied { self.sync_now() } else { Ok(()) };
        }
        let stale: Vec<(GroupId, u64)> = self
            .groups
            .iter()
            .filter(|(_, group)| group.meta_segment < floor)
            .map(|(id, group)| (*id, group.incarnation))
            .collect();
        for (id, incarnation) in stale {
            let group = self.group(id, incarnation)?;
            let (meta, last) = (Meta { hard_state: group.hard_state, ..group.meta.clone() }, group.last_index());
            self.log_meta(id, incarnation, meta, last)?;
        }
        self.writer.append(&RecordRef::Reclaim { below: floor })?;
        self.sync_now()?;
        self.writer.remove_below(floor)
    }

    /// Copies forward (re-logs as `Copy` records after the newest records) the whole live log of
    /// the groups whose first live entry lies in the oldest segments, oldest first, while the
    /// records copied stay within [`COPY_BYTES_DIVISOR`]-th of `segment_bytes_max` (so that
    /// copying never fills a segment, and a group with a long log is left to its snapshot
    /// policy), and only as far as it lets the reclamation floor advance. The groups then point
    /// at the copies; the caller makes them durable before its `Reclaim` record (they are in the
    /// same segment before it, or in a segment closed, thus synced, on the way). Returns whether
    /// it copied anything. A copy that cannot be read back (a damaged record) is left in place:
    /// its segments stay.
    fn copy_forward(&mut self, head: u64) -> Result<bool, DiskError> {
        let mut pinning: Vec<(u64, u64, GroupId, u64)> = self
            .groups
            .iter()
            .filter_map(|(id, group)| {
                let front = group.log.front()?.segment;
                let bytes = group.log.iter().map(|location| u64::from(location.len)).sum();
                (front < head).then_some((front, bytes, *id, group.incarnation))
            })
            .collect();
        pinning.sort_unstable();
        let budget = self.writer.segment_bytes_max / COPY_BYTES_DIVISOR;
        let (mut spent, mut count) = (0, 0);
        for &(_, bytes, ..) in &pinning {
            if spent + bytes > budget {
                break;
            }
            spent += bytes;
            count += 1;
        }
        // The groups of the first segment left pinned gain nothing from a copy.
        if let Some(&(kept, ..)) = pinning.get(count) {
            while count > 0 && pinning[count - 1].0 == kept {
                count -= 1;
            }
        }
        let mut copied = false;
        for &(_, run_bytes, id, incarnation) in &pinning[..count] {
            let group = self.group(id, incarnation)?;
            let (low, high, len) = (group.boundary().next(), group.last_index().next(), group.log.len());
            let entries = match self.entries(id, incarnation, low, high, u64::MAX) {
                Ok(entries) if entries.len() == len => entries,
                _ => break,
            };
            // A run never spans segments: one cut short by a crash then lies whole at the end of
            // the newest segment, where recovery cuts it (see the module docs). Its copies are as
            // long as the records they copy, and fit in an empty segment (the budget above).
            if !self.writer.fits(run_bytes) {
                self.writer.rotate()?;
            }
            for (position, entry) in entries.iter().enumerate() {
                let mut location = self.writer.append(&RecordRef::Copy { group: id, entry })?;
                location.term = entry.term;
                copied = true;
                if let Some(slot) = self.group_mut(id, incarnation)?.log.get_mut(position) {
                    *slot = location;
                }
            }
        }
        Ok(copied)
    }
}

/// A reclamation copies forward at most `segment_bytes_max / COPY_BYTES_DIVISOR` bytes of
/// records (see [`Inner::copy_forward`]).
const COPY_BYTES_DIVISOR: u64 = 4;

/// The writes of one group.
impl<F: FileSystem> Inner<F> {
    /// Stages one output's writes in the contract's order: snapshot chunks, the install, then
    /// hard state and entries (taken from the output). Files to remove after the commit go to
    /// `released`.
    fn stage_output(
        &mut self,
        id: GroupId,
        incarnation: u64,
        output: &mut Output,
        released: &mut Vec<Released>,
    ) -> Result<(), DiskError> {
        for chunk in &output.snapshot_chunks {
            self.write_chunk(id, incarnation, &chunk.meta, chunk.offset, &chunk.data)?;
        }
        if let Some(meta) = &output.install_snapshot {
            self.stage_install(id, incarnation, meta, released)?;
        }
        let entries = std::mem::take(&mut output.entries);
        self.stage_persist(id, incarnation, output.hard_state, entries)
    }

    fn stage_persist(
        &mut self,
        id: GroupId,
        incarnation: u64,
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
    ) -> Result<(), DiskError> {
        let group = self.group(id, incarnation)?;
        validate_append(&entries, group.boundary(), group.last_index())?;
        if let Some(hard_state) = hard_state {
            let logged = group.meta.hard_state;
            if (hard_state.term, hard_state.vote) != (logged.term, logged.vote) {
                // Before the entries: a durable entry of a term implies a durable term.
                let (meta, last) = (Meta { hard_state, ..group.meta.clone() }, group.last_index());
                self.log_meta(id, incarnation, meta, last)?;
            }
            self.group_mut(id, incarnation)?.hard_state = hard_state;
        }
        let Some(first) = entries.first().map(|e| e.index) else { return Ok(()) };
        let group = self.group_mut(id, incarnation)?;
        if first <= group.last_index() {
            // The records written next replace the suffix (on replay too).
            group.log.truncate((first.0 - group.boundary().0 - 1) as usize);
            self.cache.remove_range(id, first..=Index::END);
            self.reclaim_due = true;
        }
        for entry in entries {
            let mut location = self.writer.append(&RecordRef::Entry { group: id, entry: &entry })?;
            location.term = entry.term;
            self.groups.get_mut(&id).expect("checked above").log.push_back(location);
            self.cache.insert(id, entry);
        }
        Ok(())
    }

    fn stage_compact(&mut self, id: GroupId, incarnation: u64, index: Index, term: Term) -> Result<(), DiskError> {
        let group = self.group(id, incarnation)?;
        let boundary = group.boundary();
        if index <= boundary {
            return Ok(());
        }
        let keep_suffix = group.term(index) == Some(term);
        let meta =
            Meta { snapshot_index: index, snapshot_term: term, hard_state: group.hard_state, ..group.meta.clone() };
        let last = if keep_suffix { group.last_index() } else { index };
        self.log_meta(id, incarnation, meta, last)?;
        let group = self.group_mut(id, incarnation)?;
        if keep_suffix {
            let covered = ((index.0 - boundary.0) as usize).min(group.log.len());
            group.log.drain(..covered);
            self.cache.remove_range(id, Index(0)..=index);
        } else {
            group.log.clear();
            self.cache.remove_range(id, Index(0)..=Index::END);
        }
        self.reclaim_due = true;
        Ok(())
    }

    /// Writes a chunk through to the group's staging file (nothing is kept in memory but crcs).
    fn write_chunk(
        &mut self,
        id: GroupId,
        incarnation: u64,
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), DiskError> {
        let group = self.groups.get_mut(&id).filter(|g| g.incarnation == incarnation);
        let group = group.ok_or(DiskError::GroupNotFound(id))?;
        snapshot::write_chunk(&mut group.staging, &self.writer.dir, &group_prefix(id), meta, offset, data)
    }

    fn stage_install(
        &mut self,
        id: GroupId,
        incarnation: u64,
        meta: &SnapshotMeta,
        released: &mut Vec<Released>,
    ) -> Result<(), DiskError> {
        let staging = snapshot::take_staged(&mut self.group_mut(id, incarnation)?.staging, meta)?;
        self.stage_staged(id, incarnation, staging, released)
    }

    /// Writes a local snapshot to its own file (a snapshot being received keeps its staging)
    /// and stages its install.
    fn stage_save(
        &mut self,
        id: GroupId,
        incarnation: u64,
        meta: &SnapshotMeta,
        data: &[u8],
        released: &mut Vec<Released>,
    ) -> Result<(), DiskError> {
        self.group(id, incarnation)?;
        let staging = Staging::local(&self.writer.dir, &group_prefix(id), meta, data)?;
        self.stage_staged(id, incarnation, staging, released)
    }

    /// Makes the staged data durable under its snapshot's name and logs the group's new
    /// metadata naming it: the commit point of the install (until the batch is durable, recovery
    /// finds the old snapshot and log, and removes the new file).
    fn stage_staged(
        &mut self,
        id: GroupId,
        incarnation: u64,
        staging: impl Into<Pending<F::File>>,
        released: &mut Vec<Released>,
    ) -> Result<(), DiskError> {
        let staging = staging.into();
        let meta = staging.meta().clone();
        let group = match self.group(id, incarnation) {
            Ok(group) => group,
            Err(error) => {
                // A snapshot taken for an incarnation that is gone: its file (named with that
                // incarnation) is nobody's. A staging file is named without one: a later
                // incarnation may have its own under that name, so it is left to recovery.
                if let Pending::Synced(_) = staging {
                    staging.discard(&self.writer.dir)?;
                }
                return Err(error);
            }
        };
        let installed = group.meta.snapshot.as_ref().map_or(Index(0), |snapshot| snapshot.meta.index);
        if meta.index <= installed {
            // Older than what we hold: never roll back. Not durable: recovery removes it too.
            return staging.discard(&self.writer.dir);
        }
        // The snapshot supersedes the log unless the log holds its last entry. A stale boundary
        // (at or after the snapshot) is kept, as `compact` keeps it.
        let supersedes = meta.index > group.boundary() && group.term(meta.index) != Some(meta.term);
        let previous = group.meta.snapshot.clone();
        let mut next = Meta { hard_state: group.hard_state, membership: meta.membership.clone(), ..group.meta.clone() };
        next.snapshot = Some(staging.into_snapshot_file(&self.writer.dir)?);
        let mut last = group.last_index();
        if supersedes {
            (next.snapshot_index, next.snapshot_term) = (meta.index, meta.term);
            last = meta.index;
        }
        self.log_meta(id, incarnation, next, last)?;
        if supersedes {
            self.group_mut(id, incarnation)?.log.clear();
            self.cache.remove_range(id, Index(0)..=Index::END);
        }
        if let Some(previous) = previous {
            let path = self.writer.dir.file(&snapshot_name(&group_prefix(id), &previous.meta));
            released.push(Released { group: id, incarnation, path });
        }
        self.reclaim_due = true;
        Ok(())
    }
}

/// Reads.
impl<F: FileSystem> Inner<F> {
    fn read_group(&self, id: GroupId, incarnation: u64) -> Result<&Group<F::File>, StorageError> {
        // No StorageError names a missing group: a handle on a removed group reads as a
        // missing file.
        self.group(id, incarnation)
            .map_err(|_| StorageError::Io { kind: std::io::ErrorKind::NotFound, raw_os_error: None })
    }

    fn entries(
        &self,
        id: GroupId,
        incarnation: u64,
        low: Index,
        high: Index,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let group = self.read_group(id, incarnation)?;
        if low <= group.boundary() {
            return Err(StorageError::Compacted(low));
        }
        if high > group.last_index().next() {
            return Err(StorageError::Unavailable(high.prev()));
        }
        // Room for every entry asked for, up to a bound (`bytes_max` may stop it early): grown
        // one push at a time, it was reallocated several times for every batch applied.
        let mut entries = Vec::with_capacity(usize::try_from(high.0.saturating_sub(low.0)).unwrap_or(0).min(1024));
        let mut bytes = 0;
        let mut window = None;
        for index in low.0..high.0 {
            let index = Index(index);
            let entry = match self.cache.get(id, index) {
                Some(entry) => entry.clone(),
                None => self.read_entry(id, group, index, high, bytes_max.saturating_sub(bytes), &mut window)?,
            };
            let size = entry.size_bytes();
            if !entries.is_empty() && bytes + size > bytes_max {
                break;
            }
            bytes += size;
            entries.push(entry);
        }
        Ok(entries)
    }

    /// Reads back entry `index` of group `id` from its segment, checking its crc and that it is
    /// that entry. Reads through `window`: the bytes of one segment holding the records of the
    /// entries after it too (up to `high`, about `bytes_max` of them, [`READ_SPAN_BYTES_MAX`] at
    /// most), so that a lagging follower's batch costs one read per segment, not one per entry.
    fn read_entry(
        &self,
        id: GroupId,
        group: &Group<F::File>,
        index: Index,
        high: Index,
        bytes_max: u64,
        window: &mut Option<ReadWindow>,
    ) -> Result<Entry, StorageError> {
        let location = *group.location(index).ok_or(StorageError::Unavailable(index))?;
        let covered = window.as_ref().is_some_and(|w| w.covers(&location));
        if !covered {
            *window = Some(self.read_window(id, group, index, high, bytes_max)?);
        }
        let damaged = StorageError::Io { kind: std::io::ErrorKind::InvalidData, raw_os_error: None };
        let record = window.as_ref().and_then(|window| window.record(&location)).ok_or(damaged)?;
        match checked_record(record, 0).and_then(decode) {
            Some(Record::Entry { group, entry } | Record::Copy { group, entry })
                if group == id && entry.index == index && entry.term == location.term =>
            {
                Ok(entry)
            }
            _ => Err(damaged),
        }
    }

    /// Reads the records of entry `index` and of the uncached entries after it that lie in the
    /// same segment (see [`Inner::read_entry`]).
    fn read_window(
        &self,
        id: GroupId,
        group: &Group<F::File>,
        index: Index,
        high: Index,
        bytes_max: u64,
    ) -> Result<ReadWindow, StorageError> {
        let first = *group.location(index).ok_or(StorageError::Unavailable(index))?;
        let mut end = first.offset + u64::from(first.len);
        let mut records = u64::from(first.len);
        for next in index.0 + 1..high.0 {
            let Some(location) = group.location(Index(next)) else { break };
            let next_end = location.offset + u64::from(location.len);
            if location.segment != first.segment
                || records >= bytes_max
                || next_end - first.offset > READ_SPAN_BYTES_MAX
                || self.cache.get(id, Index(next)).is_some()
            {
                break;
            }
            end = next_end;
            records += u64::from(location.len);
        }
        let path = self.writer.dir.file(&segment_name(first.segment));
        let len = (end - first.offset) as usize;
        let bytes = self.writer.dir.fs().read_at(&path, first.offset, len).map_err(|e| StorageError::from(&e))?;
        Ok(ReadWindow { segment: first.segment, offset: first.offset, bytes })
    }
}

/// The most bytes of a segment one read brings in for [`Inner::read_window`].
const READ_SPAN_BYTES_MAX: u64 = 256 * 1024;

/// Bytes of one segment, from `offset` on.
struct ReadWindow {
    segment: u64,
    offset: u64,
    bytes: Vec<u8>,
}

impl ReadWindow {
    fn covers(&self, location: &Location) -> bool {
        self.record(location).is_some()
    }

    /// The bytes of the record at `location`, if the window holds all of them.
    fn record(&self, location: &Location) -> Option<&[u8]> {
        if location.segment != self.segment {
            return None;
        }
        let start = usize::try_from(location.offset.checked_sub(self.offset)?).ok()?;
        self.bytes.get(start..start.checked_add(location.len as usize)?)
    }
}

/// A node's shared write-ahead log: one directory, one stream of segments holding the records
/// of every group the node hosts, one fsync per batch of writes of any number of groups.
///
/// Cheap to clone: every clone, and every [`GroupStore`], shares the same log. See the module
/// docs for the files, the records, recovery and segment reclamation.
///
/// ```
/// use raft_core::{Entry, EntryPayload, GroupId, Index, Membership, NodeId, Output, Storage, Term};
/// use raft_storage::{Identity, SharedWal, StdFs, WalOptions};
///
/// # let dir = std::env::temp_dir().join(format!("raft-storage-wal-doc-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// let me = Identity { cluster_id: 1, node_id: NodeId(1) };
/// let wal = SharedWal::create(StdFs, &dir, me, WalOptions::default())?;
/// let mut one = wal.create_group(GroupId(1), Membership::new([NodeId(1)]))?;
/// let mut two = wal.create_group(GroupId(2), Membership::new([NodeId(1)]))?;
/// let entry = |index| Entry { index: Index(index), term: Term(1), payload: EntryPayload::Noop };
/// let mut first = Output { entries: vec![entry(1)], ..Output::default() };
/// let mut second = Output { entries: vec![entry(1), entry(2)], ..Output::default() };
/// // Both groups' entries are durable after one fsync.
/// wal.write_batch(&mut [(&mut one, &mut first), (&mut two, &mut second)])?;
/// drop((one, two, wal));
///
/// let wal = SharedWal::open(StdFs, &dir, me, WalOptions::default())?;
/// assert_eq!(wal.groups(), [GroupId(1), GroupId(2)]);
/// assert_eq!(wal.group(GroupId(2))?.last_index()?, Index(2));
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SharedWal<F: FileSystem = StdFs> {
    inner: Arc<Shared<F>>,
}

/// What every handle of a WAL shares: its state, and the condition that a leader's sync ended.
struct Shared<F: FileSystem> {
    inner: Mutex<Inner<F>>,
    sync_ended: Condvar,
    /// Syncs of the newest segment by batch leaders (statistics: [`SharedWal::syncs`]).
    syncs: std::sync::atomic::AtomicU64,
    /// Where the leaders' syncs are recorded.
    metrics: WalMetrics,
}

impl<F: FileSystem> Shared<F> {
    /// Sets the log's size gauges (see `raft_storage::metrics`) from `inner`, which it unlocks
    /// first.
    fn publish_sizes(&self, inner: MutexGuard<'_, Inner<F>>) {
        let sizes = WalSizes {
            segment_bytes: inner.writer.segments.iter().map(SegmentFile::size).sum(),
            segments: inner.writer.segments.len(),
            cache_bytes: inner.cache.bytes(),
            groups: inner.groups.len(),
        };
        drop(inner);
        self.metrics.sizes(sizes);
    }

    /// Locks the WAL. A panic while it was held (a bug of ours) stops the WAL for writes.
    fn lock(&self) -> MutexGuard<'_, Inner<F>> {
        self.inner.lock().unwrap_or_else(|poisoned| {
            let mut inner = poisoned.into_inner();
            inner.stopped = true;
            inner
        })
    }

    /// Runs one batch of writes: `stage` appends its records (holding the lock), they are handed
    /// to the file system, and the call returns once they are durable, after `stage`'s result
    /// (a refusal too: what was staged before it is made durable all the same).
    ///
    /// Group commit across threads (leader and followers): a writer whose records are not yet
    /// durable and finds no sync under way becomes the leader: it syncs the newest segment
    /// without the lock, for every batch handed over so far, while others stage theirs; those
    /// wait, and the next leader syncs all of theirs at once. One fsync thus covers the batches
    /// of every thread that arrived during the previous one.
    fn write<T>(
        &self,
        stage: impl FnOnce(&mut Inner<F>, &mut Vec<Released>) -> Result<T, DiskError>,
    ) -> Result<T, DiskError> {
        let mut released = Vec::new();
        let mut inner = self.lock();
        let (ticket, staged) = inner.guarded(|inner| {
            let staged = stage(inner, &mut released);
            if let Err(error @ DiskError::Io { .. }) = staged {
                return Err(error);
            }
            Ok((inner.hand_over()?, staged))
        })?;
        let mut inner = self.wait_durable(inner, ticket)?;
        inner.guarded(|inner| inner.after_durable(released))?;
        self.publish_sizes(inner); // After the segments the write released are reclaimed.
        staged
    }

    /// Returns once `ticket` is durable, syncing as the leader if no one is (see
    /// [`Shared::write`]). A failed sync stops the WAL: the leader returns its I/O error, the
    /// others [`DiskError::Stopped`].
    fn wait_durable<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner<F>>,
        ticket: u64,
    ) -> Result<MutexGuard<'a, Inner<F>>, DiskError> {
        loop {
            if inner.synced >= ticket {
                return Ok(inner);
            }
            if inner.stopped {
                return Err(DiskError::Stopped);
            }
            if inner.syncing {
                inner.sync_waiters += 1;
                inner = self.sync_ended.wait(inner).unwrap_or_else(|poisoned| {
                    let mut inner = poisoned.into_inner();
                    inner.stopped = true;
                    inner
                });
                inner.sync_waiters -= 1;
                continue;
            }
            let target = inner.handed_over;
            let taken = inner.guarded(Inner::take_sync_file);
            let (sequence, mut file) = taken?;
            inner.syncing = true;
            let (entries, bytes) = std::mem::take(&mut inner.writer.unsynced);
            drop(inner);
            let leading = Leading { shared: self };
            let started = std::time::Instant::now();
            let synced = file.sync();
            self.metrics.synced(started, entries, bytes);
            self.syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            inner = leading.end();
            match synced {
                Ok(()) => {
                    inner.synced = inner.synced.max(target);
                    inner.sync_file = Some((sequence, file));
                }
                Err(error) => {
                    inner.stopped = true;
                    return Err(error);
                }
            }
        }
    }
}

/// A leader's sync under way (see [`Shared::wait_durable`]). Ending it resets `syncing` and
/// wakes the waiters; should the sync panic instead, dropping it does the same and stops the WAL
/// (whether the batches are durable is unknown), so that no writer waits for it forever.
struct Leading<'a, F: FileSystem> {
    shared: &'a Shared<F>,
}

impl<'a, F: FileSystem> Leading<'a, F> {
    /// The sync returned: takes the lock back, with `syncing` reset and the waiters woken.
    fn end(self) -> MutexGuard<'a, Inner<F>> {
        let shared = self.shared;
        std::mem::forget(self);
        let mut inner = shared.lock();
        inner.syncing = false;
        if inner.sync_waiters > 0 {
            shared.sync_ended.notify_all();
        }
        inner
    }
}

impl<F: FileSystem> Drop for Leading<'_, F> {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        inner.syncing = false;
        inner.stopped = true;
        if inner.sync_waiters > 0 {
            self.shared.sync_ended.notify_all();
        }
    }
}

impl<F: FileSystem> Clone for SharedWal<F> {
    fn clone(&self) -> Self {
        SharedWal { inner: Arc::clone(&self.inner) }
    }
}

impl<F: FileSystem> SharedWal<F> {
    /// Initializes a new, empty WAL in `dir` (created if missing) for `identity`. Fails if a
    /// store already exists there, or if segments exist without an identity file.
    pub fn create(fs: F, dir: impl Into<PathBuf>, identity: Identity, options: WalOptions) -> Result<Self, DiskError> {
        let dir = Directory::locked(fs, dir.into(), true)?;
        prepare_new(&dir, |name| super::record::parse_segment_name(name).is_some())?;
        write_identity(&dir, identity, IDENTITY_MAGIC, FORMAT_VERSION)?;
        let writer = Writer::new(dir, Vec::new(), 1, options);
        Ok(SharedWal::new(Inner::new(writer, BTreeMap::new(), identity, options)))
    }

    /// Opens the WAL in `dir` as `identity` and rebuilds every group: a torn tail of the last
    /// segment is cut off; any other damage is a [`DiskError::Corrupt`] naming file and offset
    /// (a damaged snapshot file too: each group's is checked whole). Leftovers of interrupted
    /// group removals, snapshot installs and segment reclamations are removed.
    /// [`SharedWal::recovery_report`] lists every such repair.
    pub fn open(fs: F, dir: impl Into<PathBuf>, identity: Identity, options: WalOptions) -> Result<Self, DiskError> {
        let inner = recovery::recover(Directory::locked(fs, dir.into(), false)?, identity, options)?;
        Ok(SharedWal::new(inner))
    }

    fn new(inner: Inner<F>) -> Self {
        let metrics = WalMetrics::new(inner.identity.node_id, WAL_SHARED);
        let shared =
            Shared { inner: Mutex::new(inner), sync_ended: Condvar::new(), syncs: Default::default(), metrics };
        shared.publish_sizes(shared.lock());
        SharedWal { inner: Arc::new(shared) }
    }

    /// The directory's identity.
    pub fn identity(&self) -> Identity {
        self.inner.lock().identity
    }

    /// Creates group `group`, durably, with its initial `membership` (empty for a node that
    /// joins the group as a learner and learns it from the leader). Fails if it exists.
    pub fn create_group(&self, group: GroupId, membership: Membership) -> Result<GroupStore<F>, DiskError> {
        let mut inner = self.inner.lock();
        let incarnation = inner.guarded(|inner| inner.create_group(group, membership))?;
        self.inner.publish_sizes(inner);
        Ok(GroupStore { group, incarnation, wal: Arc::clone(&self.inner) })
    }

    /// A handle on the existing group `group` (after [`SharedWal::open`], say). A group is
    /// driven by one handle at a time.
    pub fn group(&self, group: GroupId) -> Result<GroupStore<F>, DiskError> {
        let incarnation = self.inner.lock().groups.get(&group).ok_or(DiskError::GroupNotFound(group))?.incarnation;
        Ok(GroupStore { group, incarnation, wal: Arc::clone(&self.inner) })
    }

    /// The groups the WAL holds, in order.
    pub fn groups(&self) -> Vec<GroupId> {
        self.inner.lock().groups.keys().copied().collect()
    }

    /// Removes group `group`, durably: after a crash it stays removed. Its snapshot files are
    /// deleted and its records become garbage (their segments are reclaimed). Its handles fail
    /// with [`DiskError::GroupNotFound`] from now on (on reads: a [`StorageError::Io`] of kind
    /// `NotFound`), also after a group of the same id is created again.
    pub fn remove_group(&self, group: GroupId) -> Result<(), DiskError> {
        let mut inner = self.inner.lock();
        inner.guarded(|inner| inner.remove_group(group))?;
        self.inner.publish_sizes(inner);
        Ok(())
    }

    /// Writes the outputs of many groups with one fsync (group commit across groups). Each
    /// output is carried out in the order [`LogStore::write_output_owned`] follows (snapshot
    /// chunks, the install, then hard state and entries, which are taken from the output), and
    /// the outputs in the order given (a group may appear more than once).
    ///
    /// A refusal (a handle of another WAL or of a removed group, an append that does not continue
    /// the log, a chunk out of order, an install of a snapshot not staged) stops the batch at
    /// that output: what came before it is still made durable, and the refusal is returned. An
    /// I/O error stops the WAL for good (fail-stop): nothing of the batch may be acknowledged.
    pub fn write_batch(&self, batch: &mut [(&mut GroupStore<F>, &mut Output)]) -> Result<(), DiskError> {
        self.inner.write(|inner, released| {
            for (store, output) in batch.iter_mut() {
                if !Arc::ptr_eq(&store.wal, &self.inner) {
                    return Err(DiskError::GroupNotFound(store.group));
                }
                inner.stage_output(store.group, store.incarnation, output, released)?;
            }
            Ok(())
        })
    }

    /// What [`SharedWal::open`] repaired (torn tail cut, leftover files removed); empty after a
    /// clean shutdown and for a WAL just created.
    pub fn recovery_report(&self) -> RecoveryReport {
        self.inner.lock().report.clone()
    }

    /// The syncs of the log's newest segment that batches of writes waited for since it was
    /// opened: one per group commit, however many groups and threads it covered (a rotation's
    /// and a snapshot file's own syncs are not counted).
    pub fn syncs(&self) -> u64 {
        self.inner.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The number of segment files.
    pub fn segment_count(&self) -> usize {
        self.inner.lock().writer.segments.len()
    }

    /// The bytes of the log's segment files (what the log holds on disk besides the groups'
    /// snapshot files): for a node-wide view of the log's size.
    pub fn segment_bytes(&self) -> u64 {
        self.inner.lock().writer.segments.iter().map(SegmentFile::size).sum()
    }

    /// The bytes of entries in the entry cache ([`Entry::size_bytes`]), at most
    /// [`WalOptions::cache_bytes_max`].
    pub fn cache_bytes(&self) -> u64 {
        self.inner.lock().cache.bytes()
    }

    /// The directory.
    pub fn path(&self) -> PathBuf {
        self.inner.lock().writer.dir.path().to_path_buf()
    }
}

/// One group's handle on a [`SharedWal`]: its [`Storage`] and [`LogStore`], with exactly the
/// semantics of [`DiskStorage`](crate::DiskStorage). Each write is a batch of one (one fsync);
/// [`SharedWal::write_batch`] writes many groups at once.
///
/// `Send`: different groups may be driven by different threads (the WAL serializes them).
pub struct GroupStore<F: FileSystem = StdFs> {
    group: GroupId,
    incarnation: u64,
    wal: Arc<Shared<F>>,
}

impl<F: FileSystem> GroupStore<F> {
    /// The group's id.
    pub fn group_id(&self) -> GroupId {
        self.group
    }

    /// The log boundary: the last index dropped from the log and its term (`first_index() - 1`).
    pub fn log_boundary(&self) -> Result<(Index, Term), DiskError> {
        let inner = self.wal.lock();
        let group = inner.group(self.group, self.incarnation)?;
        Ok((group.meta.snapshot_index, group.meta.snapshot_term))
    }

    /// Runs one write of this group as a batch of its own (see [`Shared::write`]: the batches
    /// of other threads may share its fsync).
    fn write(
        &mut self,
        stage: impl FnOnce(&mut Inner<F>, GroupId, u64, &mut Vec<Released>) -> Result<(), DiskError>,
    ) -> Result<(), DiskError> {
        let (group, incarnation) = (self.group, self.incarnation);
        self.wal.write(|inner, released| stage(inner, group, incarnation, released))
    }

    fn read<T>(
        &self,
        read: impl FnOnce(&Inner<F>, &Group<F::File>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let inner = self.wal.lock();
        let group = inner.read_group(self.group, self.incarnation)?;
        read(&inner, group)
    }
}

impl<F: FileSystem> Storage for GroupStore<F> {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        self.read(|_, group| {
            let snapshot = group.meta.snapshot.as_ref().map(|s| s.meta.clone()).unwrap_or_default();
            Ok(InitialState { hard_state: group.hard_state, membership: group.meta.membership.clone(), snapshot })
        })
    }

    /// Entries in the cache come from memory, the others from their segments (a lagging
    /// follower's): a damaged record is a [`StorageError::Io`] of kind `InvalidData`.
    fn entries(&self, low: Index, high: Index, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        self.wal.lock().entries(self.group, self.incarnation, low, high, bytes_max)
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        self.read(|_, group| {
            if index < group.boundary() {
                return Err(StorageError::Compacted(index));
            }
            group.term(index).ok_or(StorageError::Unavailable(index))
        })
    }

    fn first_index(&self) -> Result<Index, StorageError> {
        self.read(|_, group| Ok(group.boundary().next()))
    }

    fn last_index(&self) -> Result<Index, StorageError> {
        self.read(|_, group| Ok(group.last_index()))
    }

    fn snapshot(&self) -> Result<SnapshotMeta, StorageError> {
        self.read(|_, group| Ok(group.meta.snapshot.as_ref().map(|s| s.meta.clone()).unwrap_or_default()))
    }

    /// Reads the group's snapshot file as `DiskStorage` does: at most 1 MiB per call, every
    /// block checked against its crc.
    fn snapshot_chunk(
        &self,
        index: Index,
        term: Term,
        offset: u64,
        bytes_max: u64,
    ) -> Result<SnapshotChunk, StorageError> {
        let prefix = group_prefix(self.group);
        self.read(|inner, group| match &group.meta.snapshot {
            Some(snapshot) if (snapshot.meta.index, snapshot.meta.term) == (index, term) => {
                snapshot::read_chunk(&inner.writer.dir, &prefix, snapshot, offset, bytes_max)
            }
            _ => Err(StorageError::SnapshotReplaced(index)),
        })
    }
}

impl<F: FileSystem> LogStore for GroupStore<F>
where
    F: Send + Sync + 'static,
    F::File: Send + 'static,
{
    type Error = DiskError;

    fn persist(&mut self, hard_state: Option<HardState>, entries: &[Entry]) -> Result<(), DiskError> {
        self.persist_owned(hard_state, entries.to_vec())
    }

    /// Moves the entries into the entry cache instead of cloning them.
    fn persist_owned(&mut self, hard_state: Option<HardState>, entries: Vec<Entry>) -> Result<(), DiskError> {
        self.write(|inner, group, incarnation, _| inner.stage_persist(group, incarnation, hard_state, entries))
    }

    /// The whole output in one batch: one fsync for its hard state and entries (and the install's
    /// own syncs of the snapshot file).
    fn write_output_owned(&mut self, output: &mut Output) -> Result<(), DiskError> {
        self.write(|inner, group, incarnation, released| inner.stage_output(group, incarnation, output, released))
    }

    /// One fsync for every output of the batch when all its stores are groups of one WAL (the
    /// case of a node's groups); stores of different WALs are written one WAL after another.
    /// Each output is staged as [`SharedWal::write_batch`] stages it: a refusal stops the batch
    /// there (what came before is made durable all the same, and the refused group alone
    /// fails); an I/O error stops the WAL, and so fails every group of it still to be written.
    fn write_outputs(batch: &mut [(&mut Self, &mut [Output])]) -> Result<(), WriteOutputsError<DiskError>> {
        let mut start = 0;
        while start < batch.len() {
            let wal = Arc::clone(&batch[start].0.wal);
            let end = start + batch[start..].iter().take_while(|(store, _)| Arc::ptr_eq(&store.wal, &wal)).count();
            let mut refused_at = None;
            let written = wal.write(|inner, released| {
                for (position, (store, outputs)) in batch[start..end].iter_mut().enumerate() {
                    for output in outputs.iter_mut() {
                        if let Err(error) = inner.stage_output(store.group, store.incarnation, output, released) {
                            refused_at = Some(start + position);
                            return Err(error);
                        }
                    }
                }
                Ok(())
            });
            match written {
                Ok(()) => {}
                // A refusal: what was staged before it is durable; the WAL goes on.
                Err(error) if !matches!(error, DiskError::Io { .. } | DiskError::Stopped) => {
                    let durable = refused_at.unwrap_or(start);
                    return Err(WriteOutputsError { durable, failed: 1, error });
                }
                // The WAL stopped: none of its groups' outputs here is known durable.
                Err(error) => return Err(WriteOutputsError { durable: start, failed: end - start, error }),
            }
            start = end;
        }
        Ok(())
    }

    fn write_output(&mut self, output: &Output) -> Result<(), DiskError> {
        let mut output = Output {
            hard_state: output.hard_state,
            snapshot_chunks: output.snapshot_chunks.clone(),
            install_snapshot: output.install_snapshot.clone(),
            entries: output.entries.clone(),
            ..Output::default()
        };
        self.write_output_owned(&mut output)
    }

    fn compact(&mut self, index: Index, term: Term) -> Result<(), DiskError> {
        self.write(|inner, group, incarnation, _| inner.stage_compact(group, incarnation, index, term))
    }

    /// A chunk that does not continue the staged data is refused with
    /// [`DiskError::SnapshotChunkOutOfOrder`] and leaves the group usable; an I/O error stops the
    /// WAL.
    fn write_snapshot_chunk(&mut self, meta: &SnapshotMeta, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        let (group, incarnation) = (self.group, self.incarnation);
        self.wal.lock().guarded(|inner| inner.write_chunk(group, incarnation, meta, offset, data))
    }

    /// An install of a snapshot not staged is refused with [`DiskError::SnapshotNotStaged`] and
    /// leaves the group usable; an I/O error stops the WAL.
    fn install_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), DiskError> {
        self.write(|inner, group, incarnation, released| inner.stage_install(group, incarnation, meta, released))
    }

    /// Writes through its own file, so a snapshot being received keeps its staging.
    fn save_snapshot(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), DiskError> {
        self.write(|inner, group, incarnation, released| inner.stage_save(group, incarnation, meta, data, released))
    }

    /// Writes each piece through to the group's local snapshot file (nothing is kept in memory
    /// but crcs), so a snapshot being received keeps its staging; finishing installs it as
    /// [`LogStore::save_snapshot`] does, in a batch of its own.
    fn begin_snapshot(&mut self, meta: &SnapshotMeta) -> Result<Box<dyn SnapshotWriter<DiskError> + '_>, DiskError> {
        let (group, incarnation) = (self.group, self.incarnation);
        let staging = self.wal.lock().guarded(|inner| {
            inner.group(group, incarnation)?;
            Staging::start_local(&inner.writer.dir, &group_prefix(group), meta)
        })?;
        Ok(Box::new(LocalSnapshot { store: self, staging }))
    }

    /// A reader that reads the group's snapshot file as [`Storage::snapshot_chunk`] does, under
    /// the log's lock, as long as this incarnation of the group holds that snapshot. It holds the
    /// log weakly: once every handle of the log is dropped its reads fail, and it never keeps
    /// the log's directory held.
    fn open_snapshot_owned(&self, meta: &SnapshotMeta) -> Result<Option<Box<dyn OwnedSnapshotReader>>, StorageError> {
        let current = self.read(|_, group| Ok(group.meta.snapshot.clone()))?;
        match current {
            Some(file) if (file.meta.index, file.meta.term) == (meta.index, meta.term) => {
                let wal = Arc::downgrade(&self.wal);
                let (group, incarnation) = (self.group, self.incarnation);
                Ok(Some(Box::new(GroupSnapshotReader { wal, group, incarnation, file })))
            }
            _ => Err(StorageError::SnapshotReplaced(meta.index)),
        }
    }

    /// Writes each piece through to a file of the snapshot's own, named with the group's
    /// incarnation (`group-<id>-snapshot-<index>-<term>-<incarnation>-<job>.taking`), without the
    /// WAL's lock; `finish` syncs it. The save step renames it and logs the group's new metadata
    /// in a batch of its own, as [`LogStore::save_snapshot`] does. If the group is removed
    /// meanwhile ([`SharedWal::remove_group`] deletes the file; a writer still in flight writes
    /// on into the deleted file), the save step is refused with [`DiskError::GroupNotFound`]
    /// and touches no file of a later incarnation of the group. An I/O error of the writer stops
    /// the WAL, as any of its I/O errors does (fail-stop).
    ///
    /// A writer or a taken snapshot dropped unsaved (also after an I/O error, or a save
    /// refused) removes its file at once, without the WAL's lock, if its group's incarnation
    /// exists (once it is gone, its removal deleted the file), also once the WAL is stopped: the
    /// file is garbage that nothing names, whose removal changes nothing recovery finds.
    fn begin_snapshot_owned(&mut self, meta: &SnapshotMeta) -> Result<Box<dyn OwnedSnapshotWriter<Self>>, DiskError> {
        let (group, incarnation) = (self.group, self.incarnation);
        let staging = self.wal.lock().guarded(|inner| {
            inner.group(group, incarnation)?;
            let job = inner.taking_next;
            inner.taking_next += 1;
            Staging::start_taking(&inner.writer.dir, &group_prefix(group), meta, incarnation, job)
        })?;
        let owner = GroupIncarnation { wal: Arc::clone(&self.wal), group, incarnation };
        let file = Unsaved::new(owner, staging.path().to_path_buf());
        Ok(Box::new(GroupTaking { staging, file }))
    }
}

/// One incarnation of a group in one WAL: what a local snapshot taken off the group's owner
/// was begun on, and must be saved into.
struct GroupIncarnation<F: FileSystem> {
    wal: Arc<Shared<F>>,
    group: GroupId,
    incarnation: u64,
}

impl<F: FileSystem> RemoveUnsaved for GroupIncarnation<F> {
    /// Checked under the log's lock, removed without it: unlinking a large file can take long,
    /// and every group's writes wait for the lock. The name is this incarnation's and this
    /// job's alone, and no other opening of the log can make one meanwhile (this one holds the
    /// directory until the removal ends); a removal of the group meanwhile deletes the file
    /// first, and this removal then finds it gone.
    fn remove_unsaved(&self, path: &Path) {
        let dir = {
            let inner = self.wal.lock();
            if inner.group(self.group, self.incarnation).is_err() {
                return;
            }
            Arc::clone(&inner.writer.dir)
        };
        snapshot::remove_unsaved(&dir, path);
    }
}

/// A [`GroupStore`]'s snapshot, read off the group's owner.
struct GroupSnapshotReader<F: FileSystem> {
    wal: std::sync::Weak<Shared<F>>,
    group: GroupId,
    incarnation: u64,
    /// The group's snapshot file when the reader was opened: each chunk is read from it only
    /// while the group still holds this very file.
    file: snapshot::SnapshotFile,
}

impl<F: FileSystem + Send + Sync> OwnedSnapshotReader for GroupSnapshotReader<F>
where
    F::File: Send,
{
    fn meta(&self) -> &SnapshotMeta {
        &self.file.meta
    }

    /// Checks under the log's lock that this incarnation of the group still holds the snapshot,
    /// then reads the chunk without the lock (a large restore must not hold up every group's
    /// writes); a read that fails is checked again, so that a snapshot replaced meanwhile (which
    /// removes the file) is `SnapshotReplaced`, and a group removed meanwhile reads as a missing
    /// file, as for every read of a removed group's handle.
    /// The file's block crcs, taken when the reader was opened, check every byte read.
    fn chunk(&mut self, offset: u64, bytes_max: u64) -> Result<SnapshotChunk, StorageError> {
        // The log is closed: its files are not ours to read any more.
        let wal = self.wal.upgrade().ok_or(StorageError::Unavailable(self.file.meta.index))?;
        let dir = self.holding(&wal.lock())?;
        let read = snapshot::read_chunk(&dir, &group_prefix(self.group), &self.file, offset, bytes_max);
        drop(dir); // Not kept: the directory's hold ends with the log.
        if read.is_err() {
            self.holding(&wal.lock())?;
        }
        read
    }
}

impl<F: FileSystem> GroupSnapshotReader<F> {
    /// The log's directory, if this incarnation of the group still holds the reader's snapshot
    /// file.
    fn holding(&self, inner: &Inner<F>) -> Result<Arc<Directory<F>>, StorageError> {
        let stored = inner.read_group(self.group, self.incarnation)?;
        match &stored.meta.snapshot {
            Some(snapshot) if *snapshot == self.file => Ok(Arc::clone(&inner.writer.dir)),
            _ => Err(StorageError::SnapshotReplaced(self.file.meta.index)),
        }
    }
}

/// A local snapshot being written through to its own file off a [`GroupStore`]'s owner.
struct GroupTaking<F: FileSystem> {
    /// Before `file`: the file is closed before it is removed.
    staging: Staging<F::File>,
    file: Unsaved<GroupIncarnation<F>>,
}

impl<F: FileSystem> OwnedSnapshotWriter<GroupStore<F>> for GroupTaking<F>
where
    F: Send + Sync + 'static,
    F::File: Send + 'static,
{
    /// Without the WAL's lock (the file is the writer's own); the lock is taken after it, to
    /// refuse a stopped WAL and to stop it on an I/O error.
    fn write(&mut self, data: &[u8]) -> Result<(), DiskError> {
        let written = self.staging.write(data);
        self.file.owner().wal.lock().guarded(|_| written)
    }

    fn finish(self: Box<Self>, data_crc32: u32) -> Result<Box<dyn TakenSnapshot<GroupStore<F>>>, DiskError> {
        let GroupTaking { mut staging, file } = *self;
        staging.meta.data_crc32 = data_crc32;
        let synced = staging.sync();
        // The lock is released before `file` may be dropped (it takes the lock).
        let synced = file.owner().wal.lock().guarded(|_| synced);
        Ok(Box::new(GroupTaken { synced: synced?, file }))
    }
}

/// A local snapshot synced to its own file, for its [`GroupStore`] to save.
struct GroupTaken<F: FileSystem> {
    synced: Synced,
    file: Unsaved<GroupIncarnation<F>>,
}

impl<F: FileSystem> TakenSnapshot<GroupStore<F>> for GroupTaken<F>
where
    F: Send + Sync + 'static,
    F::File: Send + 'static,
{
    fn meta(&self) -> &SnapshotMeta {
        &self.synced.meta
    }

    /// Refused with [`DiskError::GroupNotFound`] by a store of another WAL or group, and its
    /// file removed; by the group's store after the group was removed (its file was removed
    /// with it, or is then).
    fn save(self: Box<Self>, store: &mut GroupStore<F>) -> Result<(), DiskError> {
        let GroupTaken { synced, mut file } = *self;
        let GroupIncarnation { wal, group, incarnation } = file.owner();
        if !Arc::ptr_eq(wal, &store.wal) || *group != store.group {
            return Err(DiskError::GroupNotFound(*group));
        }
        let (group, incarnation) = (*group, *incarnation);
        // The save takes the file over only if it runs (a group gone meanwhile is refused there,
        // and the file removed); a stopped WAL refuses it first, and the guard then removes the
        // file as it is dropped, after the write returned and so outside the WAL's lock.
        store.wal.write(|inner, released| {
            file.saving();
            inner.stage_staged(group, incarnation, Pending::Synced(synced), released)
        })
    }
}

/// A local snapshot being written through to its file by a [`GroupStore`].
struct LocalSnapshot<'a, F: FileSystem> {
    store: &'a mut GroupStore<F>,
    staging: Staging<F::File>,
}

impl<F: FileSystem> SnapshotWriter<DiskError> for LocalSnapshot<'_, F> {
    /// Under the WAL's lock, as a received chunk is written: an I/O error stops the WAL.
    fn write(&mut self, data: &[u8]) -> Result<(), DiskError> {
        let staging = &mut self.staging;
        self.store.wal.lock().guarded(|_| staging.write(data))
    }

    fn finish(self: Box<Self>, data_crc32: u32) -> Result<(), DiskError> {
        let LocalSnapshot { store, mut staging } = *self;
        staging.meta.data_crc32 = data_crc32;
        store.write(|inner, group, incarnation, released| inner.stage_staged(group, incarnation, staging, released))
    }
}

/// The path of segment `sequence` in `dir`.
pub(super) fn segment_path<F: FileSystem>(dir: &Directory<F>, sequence: u64) -> PathBuf {
    dir.file(&segment_name(sequence))
}

impl<F: FileSystem> std::fmt::Debug for GroupStore<F> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("GroupStore").field("group", &self.group).finish_non_exhaustive()
    }
}

impl<F: FileSystem> std::fmt::Debug for SharedWal<F> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("SharedWal").finish_non_exhaustive()
    }
}
