//! Recovery: replays the segments in order and rebuilds every group (its metadata and where each
//! of its entries lies), cuts a torn tail of the last segment, and finishes what a crash
//! interrupted (segment reclamation, group removals, snapshot installs).
//!
//! The segments on disk are a suffix of the WAL's history: reclamation removes the oldest ones
//! once every record in them is superseded. So a group's first records may be gone: its entries
//! read before its first metadata record are *pending* until that record (a checkpoint) says
//! where its log starts, or until a `Remove` record says they are garbage. Entries of a group
//! that neither follows nor a creation precedes mean a lost segment: corruption.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use raft_core::{GroupId, Index, Term};

use super::record::{FORMAT_VERSION, IDENTITY_MAGIC, Record, SEGMENT_MAGIC, decode, group_prefix, parse_group_file};
use super::record::parse_segment_name;
use super::store::{Group, Inner, Location, SegmentFile, WalOptions, Writer, segment_path};
use crate::disk::codec::{HEADER_BYTES, RECORD_PREFIX_BYTES, check_header};
use crate::disk::directory::Directory;
use crate::disk::error::{Corruption, DiskError, corrupt};
use crate::disk::meta::{IDENTITY_FILE, Identity, Meta, read_identity};
use crate::disk::recovery::{RecordSink, RecoveryReport, Repair, cut_torn_tail, torn_or_corrupt, walk_records};
use crate::disk::snapshot::{self, is_snapshot_file, snapshot_name};
use crate::fs::FileSystem;

/// Opens the WAL in `dir` (see [`SharedWal::open`](super::SharedWal::open)).
pub(super) fn recover<F: FileSystem>(
    dir: Directory<F>,
    identity: Identity,
    options: WalOptions,
) -> Result<Inner<F>, DiskError> {
    let names = match dir.list() {
        Err(error) if error.io_kind() == Some(std::io::ErrorKind::NotFound) => {
            return Err(DiskError::NotInitialized(dir.path().to_path_buf()));
        }
        listed => listed?,
    };
    let mut sequences: Vec<u64> = names.iter().filter_map(|name| parse_segment_name(name)).collect();
    sequences.sort_unstable();
    if !names.iter().any(|n| n == IDENTITY_FILE) {
        if !sequences.is_empty() {
            return Err(DiskError::MissingIdentity(dir.path().to_path_buf()));
        }
        return Err(DiskError::NotInitialized(dir.path().to_path_buf()));
    }
    let found = read_identity(&dir, IDENTITY_MAGIC, FORMAT_VERSION)?;
    if found != identity {
        return Err(DiskError::IdentityMismatch { expected: identity, found });
    }
    if let Some(pair) = sequences.windows(2).find(|pair| pair[1] != pair[0] + 1) {
        let corruption = Corruption::SegmentMissing { expected: pair[0] + 1, found: pair[1] };
        return Err(corrupt(&segment_path(&dir, pair[1]), 0, corruption));
    }
    let mut replay = Replay::default();
    let mut segments = Vec::new();
    let mut torn = None;
    for (position, &sequence) in sequences.iter().enumerate() {
        let is_last = position + 1 == sequences.len();
        match replay_segment(&dir, sequence, is_last, &mut replay)? {
            Replayed::Whole(segment) => segments.push(segment),
            Replayed::Torn(segment, cut, len) => {
                torn = Some((segment_path(&dir, sequence), cut, len));
                segments.extend(segment);
            }
        }
    }
    // A lost oldest segment first: it explains a group whose first records are missing.
    let below = check_reclaimed(&dir, &segments, replay.reclaimed_below)?;
    replay.finish()?;
    let groups = replay.into_groups();
    // Checked before anything is repaired: a WAL whose snapshot is damaged stays as found.
    for (id, group) in &groups {
        if let Some(snapshot) = &group.meta.snapshot {
            snapshot::verify(&dir, &group_prefix(*id), snapshot)?;
        }
    }
    let mut report = RecoveryReport::default();
    if let Some((path, cut, len)) = torn {
        cut_torn_tail(&dir, path, cut, len, &mut report)?;
    }
    let released = segments.iter().take_while(|segment| segment.sequence < below).count();
    for segment in segments.drain(..released) {
        let file = segment_path(&dir, segment.sequence);
        dir.remove(&file)?;
        report.push(Repair::ReclaimedSegmentRemoved { file, below });
    }
    remove_stray_files(&dir, &names, &groups, &mut report)?;
    // A previous incarnation may have left unsynced changes in the page cache.
    for segment in &segments {
        dir.open_append(segment_path(&dir, segment.sequence))?.sync()?;
    }
    dir.sync()?;
    let next_sequence = segments.last().map_or(below.max(1), |segment| segment.sequence + 1);
    let mut writer = Writer::new(dir, segments, next_sequence, options);
    if let Some(segment) = writer.segments.last() {
        writer.active = Some(writer.dir.open_append(segment_path(&writer.dir, segment.sequence))?);
    }
    let mut inner = Inner::new(writer, groups, identity, options);
    inner.report = report;
    Ok(inner)
}

/// How a segment was replayed.
enum Replayed {
    Whole(SegmentFile),
    /// Its tail is torn at `cut` (its length is `len`); `None` if its header was torn (no record).
    Torn(Option<SegmentFile>, u64, u64),
}

fn replay_segment<F: FileSystem>(
    dir: &Directory<F>,
    sequence: u64,
    is_last: bool,
    replay: &mut Replay,
) -> Result<Replayed, DiskError> {
    let path = segment_path(dir, sequence);
    let bytes = dir.read(&path)?;
    let len = bytes.len() as u64;
    if len < HEADER_BYTES {
        torn_or_corrupt(&path, is_last, 0, Corruption::Truncated)?;
        return Ok(Replayed::Torn(None, 0, len));
    }
    let header = check_header(&path, &bytes, SEGMENT_MAGIC, FORMAT_VERSION)?;
    if header != sequence {
        return Err(corrupt(&path, 12, Corruption::SequenceMismatch { header, name: sequence }));
    }
    let mut sink = ReplaySink { path: &path, segment: sequence, records: 0, replay };
    let torn_at = walk_records(&path, &bytes, is_last, &mut sink)?;
    let records = sink.records;
    Ok(match torn_at {
        None => Replayed::Whole(SegmentFile { sequence, len, records }),
        Some(cut) => Replayed::Torn(Some(SegmentFile { sequence, len: cut, records }), cut, len),
    })
}

/// Checks the oldest segment against the reclamation floor the records name (`below`: every
/// segment below it was released): an older one is a leftover of an interrupted reclamation
/// (removed by the caller), a newer one means segments are missing. Returns the floor.
fn check_reclaimed<F: FileSystem>(dir: &Directory<F>, segments: &[SegmentFile], below: u64) -> Result<u64, DiskError> {
    let below = below.max(1);
    match segments.first() {
        Some(oldest) if oldest.sequence > below => {
            let corruption = Corruption::SegmentMissing { expected: below, found: oldest.sequence };
            Err(corrupt(&segment_path(dir, oldest.sequence), 0, corruption))
        }
        _ => Ok(below),
    }
}

/// Removes every snapshot file of a group that does not exist, and of every group every
/// snapshot file but the one its metadata names (the remains of removals and installs that a
/// crash interrupted, or of a snapshot being received).
fn remove_stray_files<F: FileSystem, File>(
    dir: &Directory<F>,
    names: &[String],
    groups: &BTreeMap<GroupId, Group<File>>,
    report: &mut RecoveryReport,
) -> Result<(), DiskError> {
    for name in names {
        let Some((id, rest)) = parse_group_file(name) else { continue };
        if !is_snapshot_file(rest) {
            continue;
        }
        let installed = groups.get(&id).and_then(|group| group.meta.snapshot.as_ref());
        if installed.is_some_and(|snapshot| snapshot_name("", &snapshot.meta) == rest) {
            continue;
        }
        let file = dir.file(name);
        dir.remove(&file)?;
        report.push(Repair::StraySnapshotRemoved { file });
    }
    Ok(())
}

/// Feeds the records of one segment to the replay.
struct ReplaySink<'a> {
    path: &'a Path,
    segment: u64,
    records: u64,
    replay: &'a mut Replay,
}

impl RecordSink for ReplaySink<'_> {
    fn record(&mut self, offset: u64, payload: &[u8]) -> Result<(), DiskError> {
        let record = decode(payload).ok_or_else(|| corrupt(self.path, offset, Corruption::Decode))?;
        let len = (payload.len() as u64 + RECORD_PREFIX_BYTES) as u32;
        let location = Location { segment: self.segment, offset, len, term: Term(0) };
        self.records += 1;
        self.replay.apply(record, location, self.path).map_err(|corruption| corrupt(self.path, offset, corruption))
    }

    fn could_follow(&self, payload: &[u8]) -> bool {
        decode(payload).is_some()
    }
}

/// The state of the replay: every group met so far.
#[derive(Default)]
struct Replay {
    groups: BTreeMap<GroupId, ReplayGroup>,
    /// Groups removed (and not created again) so far: no record of theirs may follow.
    removed: BTreeSet<GroupId>,
    /// The highest reclamation floor recorded.
    reclaimed_below: u64,
}

/// A group during the replay.
struct ReplayGroup {
    /// Its metadata and the segment holding it; `None` while pending (see the module docs).
    meta: Option<(Meta, u64)>,
    /// The index of `log[0]` (while live: the boundary's successor).
    first: Index,
    log: VecDeque<Location>,
    /// Where its first pending record lies, for the error should it stay pending.
    pending_at: Option<(PathBuf, u64)>,
}

impl ReplayGroup {
    fn live(meta: Meta, segment: u64) -> Self {
        let first = meta.snapshot_index.next();
        ReplayGroup { meta: Some((meta, segment)), first, log: VecDeque::new(), pending_at: None }
    }

    fn last(&self) -> Index {
        Index(self.first.0 + self.log.len() as u64 - 1)
    }

    fn term_at(&self, index: Index) -> Option<Term> {
        let offset = index.0.checked_sub(self.first.0)?;
        self.log.get(usize::try_from(offset).ok()?).map(|location| location.term)
    }

    /// Entry `index` of `term`, replacing the group's entries from `index` on.
    fn apply_entry(&mut self, index: Index, location: Location) -> Result<(), Corruption> {
        let boundary = self.meta.as_ref().map(|(meta, _)| meta.snapshot_index);
        if boundary.is_none() && (self.log.is_empty() || index < self.first) {
            // Pending: the entries before it may lie in released segments.
            self.log.clear();
            self.first = index;
        }
        let expected = self.last().next();
        if boundary.is_some_and(|boundary| index <= boundary) || index > expected {
            return Err(Corruption::IndexOutOfSequence { expected, found: index });
        }
        if let Some(previous) = self.term_at(index.prev()).filter(|_| index > self.first)
            && location.term < previous
        {
            return Err(Corruption::TermRegression { previous, found: location.term });
        }
        self.log.truncate((index.0 - self.first.0) as usize);
        self.log.push_back(location);
        Ok(())
    }

    /// The group's metadata from here on; moves the log boundary as a compaction or install did.
    fn apply_meta(&mut self, group: GroupId, meta: Meta, segment: u64) -> Result<(), Corruption> {
        let (boundary, term) = (meta.snapshot_index, meta.snapshot_term);
        match &self.meta {
            Some((old, _)) if boundary < old.snapshot_index => return Err(Corruption::UnexpectedGroupRecord { group }),
            Some((old, _)) if boundary == old.snapshot_index => {}
            Some(_) => self.settle(boundary, term),
            None => {
                self.settle(boundary, term);
                if !self.log.is_empty() && self.first > boundary.next() {
                    return Err(Corruption::GapAfterSnapshot { first: self.first, snapshot: boundary });
                }
            }
        }
        self.first = boundary.next();
        self.meta = Some((meta, segment));
        self.pending_at = None;
        Ok(())
    }

    /// Keeps the entries after `boundary` if the log holds (`boundary`, `term`) or (pending)
    /// starts right after it; drops the whole log otherwise (covered or superseded).
    fn settle(&mut self, boundary: Index, term: Term) {
        let keep = match self.term_at(boundary) {
            Some(held) => held == term,
            None => self.meta.is_none() && self.first == boundary.next(),
        };
        if keep {
            let covered = boundary.next().0.saturating_sub(self.first.0).min(self.log.len() as u64);
            self.log.drain(..covered as usize);
        } else {
            self.log.clear();
        }
    }
}

impl Replay {
    fn apply(&mut self, record: Record, mut location: Location, path: &Path) -> Result<(), Corruption> {
        match record {
            Record::Create { group, meta } => {
                if self.groups.contains_key(&group) {
                    return Err(Corruption::UnexpectedGroupRecord { group });
                }
                self.removed.remove(&group);
                self.groups.insert(group, ReplayGroup::live(meta, location.segment));
            }
            Record::Meta { group, meta } => self.pending_or_live(group, path, location)?.apply_meta(group, meta, location.segment)?,
            Record::Entry { group, entry } => {
                location.term = entry.term;
                self.pending_or_live(group, path, location)?.apply_entry(entry.index, location)?;
            }
            Record::Remove { group } => {
                self.groups.remove(&group);
                self.removed.insert(group);
            }
            Record::Reclaim { below } => self.reclaimed_below = self.reclaimed_below.max(below),
        }
        Ok(())
    }

    /// The group a metadata or entry record belongs to, pending if it is new.
    fn pending_or_live(&mut self, group: GroupId, path: &Path, location: Location) -> Result<&mut ReplayGroup, Corruption> {
        if self.removed.contains(&group) {
            return Err(Corruption::UnexpectedGroupRecord { group });
        }
        Ok(self.groups.entry(group).or_insert_with(|| ReplayGroup {
            meta: None,
            first: Index(0),
            log: VecDeque::new(),
            pending_at: Some((path.to_path_buf(), location.offset)),
        }))
    }

    /// Fails if a group is still pending: its metadata (and creation) lay in a lost segment.
    fn finish(&self) -> Result<(), DiskError> {
        for (group, state) in &self.groups {
            if let (None, Some((path, offset))) = (&state.meta, &state.pending_at) {
                return Err(corrupt(path, *offset, Corruption::UnexpectedGroupRecord { group: *group }));
            }
        }
        Ok(())
    }

    fn into_groups<File>(self) -> BTreeMap<GroupId, Group<File>> {
        let mut groups = BTreeMap::new();
        for (incarnation, (id, state)) in self.groups.into_iter().enumerate() {
            let Some((meta, segment)) = state.meta else { continue };
            groups.insert(id, Group::new(meta, segment, state.log, incarnation as u64));
        }
        groups
    }
}

