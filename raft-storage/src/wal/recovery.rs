//! Recovery: replays the segments in order and rebuilds every group (its metadata and where each
//! of its entries lies), cuts a torn tail of the last segment, and finishes what a crash
//! interrupted (segment reclamation, group removals, snapshot installs).
//!
//! The segments on disk are a suffix of the WAL's history: reclamation removes the oldest ones
//! once every record in them is superseded. So a group's first records may be gone: a group met
//! without its `Create` is *pending* until a `Meta` record says where its log starts and ends
//! (each `Meta` carries the log's last index, so no entry before it is needed to apply it), or a
//! `Remove` says its records are garbage. Entries between a group's boundary and its first
//! entry record met are allowed while the replay goes on (a later compaction may cover them);
//! at the end, a group whose `Meta` never came, or whose log still misses entries after its
//! boundary, means a lost segment: corruption.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use raft_core::{GroupId, Index, Term};

use super::record::parse_segment_name;
use super::record::{
    FORMAT_VERSION, IDENTITY_MAGIC, Record, SEGMENT_MAGIC, SEGMENT_VERSION, SEGMENT_VERSION_APPENDED, decode,
    group_prefix, parse_group_file,
};
use super::store::{Group, Inner, Location, SegmentFile, WalOptions, Writer, segment_path};
use crate::disk::codec::{HEADER_BYTES, RECORD_PREFIX_BYTES, check_segment_header};
use crate::disk::directory::Directory;
use crate::disk::error::{Corruption, DiskError, corrupt};
use crate::disk::meta::{Identity, Meta, open_existing};
use crate::disk::recovery::{
    RecordSink, RecoveryReport, Repair, cut_torn_tail, header_never_written, torn_or_corrupt, walk_segment,
};
use crate::disk::snapshot::{self, is_snapshot_file, snapshot_name};
use crate::fs::FileSystem;

/// Opens the WAL in `dir` (see [`SharedWal::open`](super::SharedWal::open)).
pub(super) fn recover<F: FileSystem>(
    dir: Directory<F>,
    identity: Identity,
    options: WalOptions,
) -> Result<Inner<F>, DiskError> {
    let is_segment = |name: &str| parse_segment_name(name).is_some();
    let names = open_existing(&dir, identity, (IDENTITY_MAGIC, FORMAT_VERSION), is_segment)?;
    let mut sequences: Vec<u64> = names.iter().filter_map(|name| parse_segment_name(name)).collect();
    sequences.sort_unstable();
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
    // A run of copies cut short at the end of the newest segment is garbage (see the module
    // docs); it goes with the torn tail, so that no later replay, once the segments holding
    // the group's earlier records are released, takes its copies for the group's log.
    // (Only in the newest file: if its header was torn, the segment before it was synced.)
    if let Some(segment) = segments.last_mut()
        && sequences.last() == Some(&segment.sequence)
        && let Some((offset, records)) = replay.run_cut_short_at(segment.sequence, segment.len)
    {
        // The file's length, before any cut of a torn tail after the run.
        let len = torn.as_ref().map_or(segment.file_len, |(_, _, len)| *len);
        torn = Some((segment_path(&dir, segment.sequence), offset, len));
        segment.len = offset;
        segment.file_len = offset;
        segment.records -= records;
    }
    // A lost oldest segment first: it explains a group whose first records are missing.
    let below = check_reclaimed(&dir, &segments, replay.reclaimed_below)?;
    let groups = replay.into_groups()?;
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
    if len < HEADER_BYTES || (is_last && header_never_written(&bytes)) {
        torn_or_corrupt(&path, is_last, 0, Corruption::Truncated)?;
        return Ok(Replayed::Torn(None, 0, len));
    }
    let (header, zero_tail) =
        check_segment_header(&path, &bytes, SEGMENT_MAGIC, SEGMENT_VERSION_APPENDED, SEGMENT_VERSION)?;
    if header != sequence {
        return Err(corrupt(&path, 12, Corruption::SequenceMismatch { header, name: sequence }));
    }
    let mut sink = ReplaySink { path: &path, segment: sequence, records: 0, replay };
    let walked = walk_segment(&path, &bytes, is_last, zero_tail, &mut sink)?;
    let records = sink.records;
    // A torn tail is cut at `walked.end`.
    let file_len = if walked.torn { walked.end } else { len };
    let segment = SegmentFile { sequence, len: walked.end, file_len, records, zero_tail };
    Ok(if walked.torn { Replayed::Torn(Some(segment), walked.end, len) } else { Replayed::Whole(segment) })
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

    /// Any record (the shared log's records do not say where they lie).
    fn could_come_later(&self, payload: &[u8]) -> bool {
        self.could_follow(payload)
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
///
/// Its log is known from `known_from` to `last`; the entries between its boundary and
/// `known_from` (if any) lie in released segments. That is fine while the replay goes on (a
/// later compaction may cover them), not at its end.
struct ReplayGroup {
    /// Its metadata and the segment holding it; `None` while pending (see the module docs).
    meta: Option<(Meta, u64)>,
    /// The index of `log[0]`.
    known_from: Index,
    /// The last index of the log.
    last: Index,
    /// Where the entries `known_from..=last` lie.
    log: VecDeque<Location>,
    /// Where its first record in the replay lies, for the error should its history stay
    /// incomplete.
    first_at: (PathBuf, u64),
    /// A run of `Copy` records of entries the log holds, from this index on, not yet applied:
    /// the entries move to the copies only once the run reaches the log's last index (a run
    /// cut short by a torn tail moves nothing: the originals' segments were not released).
    copies: Option<(Index, Vec<Location>)>,
}

impl ReplayGroup {
    fn new(meta: Option<(Meta, u64)>, first_at: (PathBuf, u64)) -> Self {
        let boundary = meta.as_ref().map_or(Index(0), |(meta, _)| meta.snapshot_index);
        ReplayGroup { meta, known_from: boundary.next(), last: boundary, log: VecDeque::new(), first_at, copies: None }
    }

    fn term_at(&self, index: Index) -> Option<Term> {
        let offset = index.0.checked_sub(self.known_from.0)?;
        self.log.get(usize::try_from(offset).ok()?).map(|location| location.term)
    }

    /// A copy of entry `index` (see [`RecordRef::Copy`](super::record::RecordRef::Copy)): if
    /// the log holds that entry, it joins the run of copies, which moves its entries once it
    /// reaches the last index; otherwise it is replayed as the entry itself.
    fn apply_copy(&mut self, index: Index, location: Location) -> Result<(), Corruption> {
        let held = index >= self.known_from && index <= self.last && self.term_at(index) == Some(location.term);
        if !held {
            return self.apply_entry(index, location);
        }
        let continues = self.copies.as_ref().is_some_and(|(from, run)| from.0 + run.len() as u64 == index.0);
        if !continues {
            self.copies = Some((index, Vec::new()));
        }
        let Some((from, run)) = self.copies.as_mut() else { return Ok(()) };
        run.push(location);
        if index == self.last {
            let start = (from.0 - self.known_from.0) as usize;
            for (slot, copy) in self.log.iter_mut().skip(start).zip(run.drain(..)) {
                *slot = copy;
            }
            self.copies = None;
        }
        Ok(())
    }

    /// Entry `index`, replacing the group's entries from `index` on.
    fn apply_entry(&mut self, index: Index, location: Location) -> Result<(), Corruption> {
        self.copies = None;
        let expected = self.last.next();
        let boundary = self.meta.as_ref().map(|(meta, _)| meta.snapshot_index);
        let pending_start = boundary.is_none() && self.log.is_empty();
        if boundary.is_some_and(|boundary| index <= boundary) || (index > expected && !pending_start) {
            return Err(Corruption::IndexOutOfSequence { expected, found: index });
        }
        if index < self.known_from || pending_start {
            // It replaces entries whose records lie in released segments.
            self.log.clear();
            self.known_from = index;
        }
        if let Some(previous) = self.term_at(index.prev()).filter(|_| index > self.known_from)
            && location.term < previous
        {
            return Err(Corruption::TermRegression { previous, found: location.term });
        }
        self.log.truncate((index.0 - self.known_from.0) as usize);
        self.log.push_back(location);
        self.last = index;
        Ok(())
    }

    /// The group's metadata from here on, with the last index of its log: drops the entries the
    /// boundary covers and those after `last` (a compaction or install cleared them).
    ///
    /// `last` is the log's last index when the record was written, or its new boundary (a
    /// compaction or install that drops the log): the writer logs a `Meta` after the entries it
    /// covers, never before, and a torn tail only cuts records after it. So once the replay
    /// knows any record of the group before this one (its records since are all there: the
    /// segments are a suffix of the history), the log replayed so far ends at `last` unless
    /// `last` is the boundary; anything else is corruption. A `Meta` that is the group's first
    /// record met is not checked: the entries it covers may lie in released segments and come
    /// after it as copies (a reclamation copies a log forward but checkpoints the `Meta` only if
    /// its segment is released); the end of the replay checks that the log then starts right
    /// after the boundary.
    fn apply_meta(&mut self, group: GroupId, meta: Meta, segment: u64, last: Index) -> Result<(), Corruption> {
        self.copies = None;
        let boundary = meta.snapshot_index;
        let regresses = self.meta.as_ref().is_some_and(|(old, _)| boundary < old.snapshot_index);
        if regresses || last < boundary {
            return Err(Corruption::UnexpectedGroupRecord { group });
        }
        let known = self.meta.is_some() || !self.log.is_empty();
        if known && last != self.last && last != boundary {
            return Err(Corruption::MetaLastMismatch { group, named: last, found: self.last });
        }
        let covered = boundary.next().0.saturating_sub(self.known_from.0).min(self.log.len() as u64);
        self.log.drain(..covered as usize);
        self.known_from = self.known_from.max(boundary.next());
        let kept = (last.next().0.saturating_sub(self.known_from.0)).min(self.log.len() as u64);
        self.log.truncate(kept as usize);
        if self.log.is_empty() {
            self.known_from = last.next();
        }
        self.last = last;
        self.meta = Some((meta, segment));
        Ok(())
    }

    /// The group's state at the end of the replay; an error if its history is incomplete (a
    /// lost segment): no metadata, or entries after its boundary without their records.
    fn finish(self, group: GroupId) -> Result<(Meta, u64, VecDeque<Location>), DiskError> {
        let (path, offset) = &self.first_at;
        let Some((meta, segment)) = self.meta else {
            return Err(corrupt(path, *offset, Corruption::UnexpectedGroupRecord { group }));
        };
        if self.known_from != meta.snapshot_index.next() {
            let corruption = Corruption::GapAfterSnapshot { first: self.known_from, snapshot: meta.snapshot_index };
            return Err(corrupt(path, *offset, corruption));
        }
        Ok((meta, segment, self.log))
    }
}

impl Replay {
    /// Where the run of copies that ends where segment `sequence`'s records end (at `end`)
    /// starts, and how many records it has, if a group's run of copies is pending there: cut
    /// short by a crash (a whole run is applied once it reaches the group's last index).
    fn run_cut_short_at(&self, sequence: u64, end: u64) -> Option<(u64, u64)> {
        self.groups.values().find_map(|group| {
            let (_, run) = group.copies.as_ref()?;
            let (first, last) = (run.first()?, run.last()?);
            let ends_there = last.segment == sequence && last.offset + u64::from(last.len) == end;
            // Nothing else between its records: cutting them drops no record the replay used.
            let contiguous = run.windows(2).all(|pair| {
                pair[0].segment == pair[1].segment && pair[0].offset + u64::from(pair[0].len) == pair[1].offset
            });
            (ends_there && contiguous && first.segment == sequence).then_some((first.offset, run.len() as u64))
        })
    }

    fn apply(&mut self, record: Record, mut location: Location, path: &Path) -> Result<(), Corruption> {
        match record {
            Record::Create { group, meta } => {
                if self.groups.contains_key(&group) {
                    return Err(Corruption::UnexpectedGroupRecord { group });
                }
                self.removed.remove(&group);
                let first_at = (path.to_path_buf(), location.offset);
                self.groups.insert(group, ReplayGroup::new(Some((meta, location.segment)), first_at));
            }
            Record::Meta { group, meta, last } => {
                self.known_or_pending(group, path, location)?.apply_meta(group, meta, location.segment, last)?;
            }
            Record::Entry { group, entry } => {
                location.term = entry.term;
                self.known_or_pending(group, path, location)?.apply_entry(entry.index, location)?;
            }
            Record::Copy { group, entry } => {
                location.term = entry.term;
                self.known_or_pending(group, path, location)?.apply_copy(entry.index, location)?;
            }
            Record::Remove { group } => {
                self.groups.remove(&group);
                self.removed.insert(group);
            }
            Record::Reclaim { below } => self.reclaimed_below = self.reclaimed_below.max(below),
        }
        Ok(())
    }

    /// The group a metadata or entry record belongs to, pending if it is new (its first records
    /// lie in released segments).
    fn known_or_pending(
        &mut self,
        group: GroupId,
        path: &Path,
        location: Location,
    ) -> Result<&mut ReplayGroup, Corruption> {
        if self.removed.contains(&group) {
            return Err(Corruption::UnexpectedGroupRecord { group });
        }
        Ok(self.groups.entry(group).or_insert_with(|| ReplayGroup::new(None, (path.to_path_buf(), location.offset))))
    }

    /// Every group's recovered state; an error if one's history is incomplete.
    fn into_groups<File>(self) -> Result<BTreeMap<GroupId, Group<File>>, DiskError> {
        let mut groups = BTreeMap::new();
        for (incarnation, (id, state)) in self.groups.into_iter().enumerate() {
            let (meta, segment, log) = state.finish(id)?;
            groups.insert(id, Group::new(meta, segment, log, incarnation as u64));
        }
        Ok(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(segment: u64, term: u64) -> Location {
        Location { segment, offset: 0, len: 20, term: Term(term) }
    }

    fn created() -> ReplayGroup {
        ReplayGroup::new(Some((Meta::default(), 1)), (PathBuf::from("segment"), 0))
    }

    fn segments(group: &ReplayGroup) -> Vec<u64> {
        group.log.iter().map(|location| location.segment).collect()
    }

    #[test]
    fn a_whole_run_of_copies_moves_the_entries_and_keeps_the_log() {
        let mut group = created();
        for index in 1..=5 {
            group.apply_entry(Index(index), at(1, 1)).expect("entry");
        }
        for index in 1..=5 {
            group.apply_copy(Index(index), at(2, 1)).expect("copy");
        }
        assert_eq!((group.known_from, group.last, segments(&group)), (Index(1), Index(5), vec![2; 5]));
    }

    #[test]
    fn a_run_of_copies_cut_short_moves_nothing_and_truncates_nothing() {
        let mut group = created();
        for index in 1..=5 {
            group.apply_entry(Index(index), at(1, 1)).expect("entry");
        }
        for index in 1..=3 {
            group.apply_copy(Index(index), at(2, 1)).expect("copy");
        }
        assert_eq!((group.last, segments(&group)), (Index(5), vec![1; 5]), "torn in the middle of the run");
        // The records of the cut run stay in the segment; a later whole run still moves all.
        for index in 1..=5 {
            group.apply_copy(Index(index), at(3, 1)).expect("copy");
        }
        assert_eq!((group.last, segments(&group)), (Index(5), vec![3; 5]));
        // And an entry after a cut run replaces from its index as ever.
        group.apply_copy(Index(1), at(4, 1)).expect("copy");
        group.apply_entry(Index(5), at(4, 2)).expect("entry");
        assert_eq!((group.last, segments(&group)), (Index(5), vec![3, 3, 3, 3, 4]));
    }

    #[test]
    fn copies_whose_originals_are_released_are_the_entries() {
        let mut pending = ReplayGroup::new(None, (PathBuf::from("segment"), 0));
        for index in 4..=6 {
            pending.apply_copy(Index(index), at(7, 2)).expect("copy");
        }
        assert_eq!((pending.known_from, pending.last, segments(&pending)), (Index(4), Index(6), vec![7; 3]));
        let meta = Meta { snapshot_index: Index(3), snapshot_term: Term(2), ..Meta::default() };
        pending.apply_meta(GroupId(1), meta, 7, Index(6)).expect("checkpoint");
        assert_eq!((pending.known_from, pending.last, pending.log.len()), (Index(4), Index(6), 3));
    }

    #[test]
    fn a_meta_naming_entries_its_history_lacks_is_corrupt() {
        let mut group = created();
        for index in 1..=7 {
            group.apply_entry(Index(index), at(1, 1)).expect("entry");
        }
        let meta = Meta::default();
        assert_eq!(
            group.apply_meta(GroupId(4), meta.clone(), 1, Index(10)),
            Err(Corruption::MetaLastMismatch { group: GroupId(4), named: Index(10), found: Index(7) })
        );
        assert_eq!(group.apply_meta(GroupId(4), meta, 1, Index(7)), Ok(()), "the log's last index");
        let compacted = Meta { snapshot_index: Index(9), snapshot_term: Term(1), ..Meta::default() };
        assert_eq!(group.apply_meta(GroupId(4), compacted, 1, Index(9)), Ok(()), "a compaction past the log");
        let mut created = created();
        assert_eq!(
            created.apply_meta(GroupId(4), Meta::default(), 1, Index(10)).map_err(|_| ()),
            Err(()),
            "a created group's history is known from its creation"
        );
    }
}
