//! Recovery: reading the segments back (every record's crc, contiguous indexes, terms that
//! never decrease), cutting a torn tail, finishing what a crash interrupted (removing segments
//! the log boundary covers or supersedes, snapshot files META does not name), and the
//! [`RecoveryReport`] of every such repair.
//!
//! A torn write can only be at the very end of the last segment: damage anywhere else is a
//! [`DiskError::Corrupt`] naming the file and offset, never silently dropped data.

use std::fmt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use raft_core::{Entry, Index, Term};

use super::codec::{HEADER_BYTES, RECORD_BYTES_MAX, RECORD_PREFIX_BYTES, check_disk_header, checked_record};
use super::codec::{decode_entry, read_u32, record_crc};
use super::directory::Directory;
use super::error::{Corruption, DiskError, corrupt};
use super::segment::{Segment, SegmentLog, parse_segment_name, segment_name};
use super::snapshot::{SnapshotFile, is_snapshot_file, snapshot_name};
use crate::fs::FileSystem;

/// One repair that [`DiskStorage::open`](super::DiskStorage::open) made while it recovered a
/// store. Each names the file it changed; every one is made durable before `open` returns.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Repair {
    /// The last segment ended in a torn write (a partial last record, or a last record whose
    /// crc fails and after which nothing follows, or only zeros and no whole record in a
    /// segment filled ahead of its records): the file was cut at `offset`, where that record
    /// started.
    TornTailTruncated {
        /// The segment file.
        file: PathBuf,
        /// The file's length after the cut: the end of its last whole record.
        offset: u64,
        /// How many bytes were cut off (in a segment filled ahead of its records, the zeros after
        /// the torn record too).
        bytes_dropped: u64,
    },
    /// The last segment ended inside its own header, or its header is all zeros (a crash while
    /// the segment was being started: it was never synced): it held no durable record, and the
    /// file was removed.
    TornSegmentRemoved {
        /// The segment file.
        file: PathBuf,
        /// The file's length before it was removed.
        bytes_dropped: u64,
    },
    /// A segment that held no entry after the log boundary was removed: a crash interrupted the
    /// compaction (or snapshot install) that moved the boundary before it removed the file.
    CoveredSegmentRemoved {
        /// The segment file.
        file: PathBuf,
        /// The log boundary: the last index dropped from the log.
        boundary: Index,
    },
    /// A segment of a log that the log boundary superseded was removed: the log held the
    /// boundary's index with another term (an install or compaction replaced the whole log, and
    /// a crash came before it removed the file).
    SupersededSegmentRemoved {
        /// The segment file.
        file: PathBuf,
        /// The log boundary: the last index dropped from the log.
        boundary: Index,
    },
    /// A snapshot file that META does not name was removed: the staging file of a snapshot
    /// being received, a local snapshot not yet installed, or the data file of a snapshot whose
    /// install (or replacement) a crash interrupted.
    StraySnapshotRemoved {
        /// The snapshot file.
        file: PathBuf,
    },
    /// A shared WAL segment that segment reclamation had released (every record in it is
    /// superseded by a newer one) was removed: a crash came before reclamation removed it.
    ReclaimedSegmentRemoved {
        /// The segment file.
        file: PathBuf,
        /// Segments numbered below this were released.
        below: u64,
    },
}

impl Repair {
    /// One `warn` event per repair, `repair` naming its kind, with the file and the variant's
    /// fields.
    fn log(&self) {
        match self {
            Repair::TornTailTruncated { file, offset, bytes_dropped } => {
                let file = file.display();
                tracing::warn!(repair = "torn tail truncated", %file, offset, bytes_dropped, "storage recovery repaired a file");
            }
            Repair::TornSegmentRemoved { file, bytes_dropped } => {
                let file = file.display();
                tracing::warn!(repair = "torn segment removed", %file, offset = 0, bytes_dropped, "storage recovery repaired a file");
            }
            Repair::CoveredSegmentRemoved { file, boundary } => {
                let file = file.display();
                tracing::warn!(repair = "covered segment removed", %file, %boundary, "storage recovery repaired a file");
            }
            Repair::SupersededSegmentRemoved { file, boundary } => {
                let file = file.display();
                tracing::warn!(repair = "superseded segment removed", %file, %boundary, "storage recovery repaired a file");
            }
            Repair::StraySnapshotRemoved { file } => {
                let file = file.display();
                tracing::warn!(repair = "stray snapshot removed", %file, "storage recovery repaired a file");
            }
            Repair::ReclaimedSegmentRemoved { file, below } => {
                let file = file.display();
                tracing::warn!(repair = "reclaimed segment removed", %file, below, "storage recovery repaired a file");
            }
        }
    }
}

impl fmt::Display for Repair {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Repair::TornTailTruncated { file, offset, bytes_dropped } => {
                write!(formatter, "cut a torn tail of {bytes_dropped} bytes off {file:?} at byte {offset}")
            }
            Repair::TornSegmentRemoved { file, bytes_dropped } => {
                write!(formatter, "removed {file:?}, whose header was torn ({bytes_dropped} bytes)")
            }
            Repair::CoveredSegmentRemoved { file, boundary } => {
                write!(formatter, "removed {file:?}, which holds no entry after the log boundary {boundary}")
            }
            Repair::SupersededSegmentRemoved { file, boundary } => {
                write!(formatter, "removed {file:?}, whose log conflicts with the log boundary {boundary}")
            }
            Repair::StraySnapshotRemoved { file } => {
                write!(formatter, "removed {file:?}, a snapshot file that META does not name")
            }
            Repair::ReclaimedSegmentRemoved { file, below } => {
                write!(formatter, "removed {file:?}, released by segment reclamation (below segment {below})")
            }
        }
    }
}

/// What [`DiskStorage::open`](super::DiskStorage::open) repaired, in the order it did: see
/// [`DiskStorage::recovery_report`](super::DiskStorage::recovery_report). Empty after a clean
/// shutdown (and for a store just created).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    repairs: Vec<Repair>,
}

impl RecoveryReport {
    /// The repairs, in the order they were made.
    pub fn repairs(&self) -> &[Repair] {
        &self.repairs
    }

    /// Whether recovery found nothing to repair.
    pub fn is_clean(&self) -> bool {
        self.repairs.is_empty()
    }

    /// Records `repair`, and logs it: a repair means the process stopped uncleanly (or a
    /// crash interrupted a compaction, install or reclamation), which an operator wants to
    /// know, with the file and offset an investigator starts from.
    pub(crate) fn push(&mut self, repair: Repair) {
        repair.log();
        self.repairs.push(repair);
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.repairs.is_empty() {
            return formatter.write_str("nothing repaired");
        }
        for (number, repair) in self.repairs.iter().enumerate() {
            let separator = if number == 0 { "" } else { "; " };
            write!(formatter, "{separator}{repair}")?;
        }
        Ok(())
    }
}

/// The log recovered from the segment files.
pub(super) struct RecoveredLog<File> {
    pub(super) log: SegmentLog<File>,
    /// The entries after the log boundary.
    pub(super) entries: Vec<Entry>,
}

/// Recovers the log from the segment files among `names`, given the log boundary (index and
/// term) from META: cuts a torn tail, removes the segments the boundary covers or supersedes,
/// and opens the last segment for appending.
pub(super) fn recover_log<F: FileSystem>(
    dir: &Directory<F>,
    names: &[String],
    boundary: (Index, Term),
    report: &mut RecoveryReport,
) -> Result<RecoveredLog<F::File>, DiskError> {
    let (segments, entries) = read_segments(dir, names, report)?;
    let mut log = SegmentLog::new(segments);
    let entries = settle_boundary(dir, &mut log, entries, boundary, report)?;
    log.open_active(dir)?;
    Ok(RecoveredLog { log, entries })
}

/// Reads every segment in order of first index, checks that each continues the one before,
/// and cuts a torn tail off the last one.
fn read_segments<F: FileSystem>(
    dir: &Directory<F>,
    names: &[String],
    report: &mut RecoveryReport,
) -> Result<(Vec<Segment>, Vec<Entry>), DiskError> {
    let mut indexed: Vec<(Index, &String)> =
        names.iter().filter_map(|n| parse_segment_name(n).map(|index| (index, n))).collect();
    indexed.sort();
    let mut segments = Vec::new();
    let mut entries: Vec<Entry> = Vec::new();
    for (position, &(first_index, name)) in indexed.iter().enumerate() {
        let path = dir.file(name);
        let bytes = Bytes::from(dir.read(&path)?);
        let parsed = parse_segment(&path, &bytes, first_index, position + 1 == indexed.len())?;
        if let Some(last) = entries.last() {
            check_continues(&path, last, first_index, parsed.entries.first())?;
        }
        if let Some(cut) = parsed.torn_at {
            cut_torn_tail(dir, path, cut, bytes.len() as u64, report)?;
            if cut == 0 {
                continue;
            }
        }
        entries.extend(parsed.entries);
        segments.push(parsed.segment);
    }
    Ok((segments, entries))
}

/// Checks that the segment `path`, starting at `first_index` with entry `first`, continues the
/// log whose last entry is `last`.
fn check_continues(path: &Path, last: &Entry, first_index: Index, first: Option<&Entry>) -> Result<(), DiskError> {
    let expected = last.index.next();
    if first_index != expected {
        return Err(corrupt(path, 0, Corruption::IndexOutOfSequence { expected, found: first_index }));
    }
    if let Some(first) = first
        && first.term < last.term
    {
        let corruption = Corruption::TermRegression { previous: last.term, found: first.term };
        return Err(corrupt(path, HEADER_BYTES, corruption));
    }
    Ok(())
}

/// Cuts the torn tail of the segment `path` (of `len` bytes) at `cut`, or removes the segment
/// if its header was torn (`cut` 0), and makes that durable.
pub(crate) fn cut_torn_tail<F: FileSystem>(
    dir: &Directory<F>,
    path: PathBuf,
    cut: u64,
    len: u64,
    report: &mut RecoveryReport,
) -> Result<(), DiskError> {
    let bytes_dropped = len - cut;
    if cut == 0 {
        dir.remove(&path)?;
        dir.sync()?;
        report.push(Repair::TornSegmentRemoved { file: path, bytes_dropped });
        return Ok(());
    }
    let mut file = dir.open_append(path)?;
    file.truncate(cut)?;
    file.sync()?;
    report.push(Repair::TornTailTruncated { file: file.path().to_path_buf(), offset: cut, bytes_dropped });
    Ok(())
}

/// Keeps the entries after the log boundary, finishing a compaction or install that a crash
/// interrupted: removes the segments the boundary covers, or every segment when it supersedes
/// the log. Returns the entries kept.
fn settle_boundary<F: FileSystem>(
    dir: &Directory<F>,
    log: &mut SegmentLog<F::File>,
    entries: Vec<Entry>,
    (boundary, boundary_term): (Index, Term),
    report: &mut RecoveryReport,
) -> Result<Vec<Entry>, DiskError> {
    let conflicts = entries.iter().any(|e| e.index == boundary && e.term != boundary_term);
    let reaches_past = entries.last().is_some_and(|e| e.index > boundary);
    if conflicts || !reaches_past {
        // Everything stored is covered or superseded by the boundary.
        for file in log.remove_from(dir, 0)? {
            report.push(if conflicts {
                Repair::SupersededSegmentRemoved { file, boundary }
            } else {
                Repair::CoveredSegmentRemoved { file, boundary }
            });
        }
        return Ok(Vec::new());
    }
    let first = entries.first().map_or(boundary.next(), |e| e.index);
    if first > boundary.next() {
        let path = dir.file(&segment_name(first));
        return Err(corrupt(&path, HEADER_BYTES, Corruption::GapAfterSnapshot { first, snapshot: boundary }));
    }
    let kept = entries.into_iter().filter(|e| e.index > boundary).collect();
    for file in log.remove_covered(dir, boundary)? {
        report.push(Repair::CoveredSegmentRemoved { file, boundary });
    }
    Ok(kept)
}

/// Removes a leftover staging file and every snapshot file but the `installed` one: the remains
/// of an install that a crash interrupted (before or after its META write) or of a removal not
/// yet durable. [`sync_recovered`] makes the removals durable.
pub(super) fn remove_stray_snapshots<F: FileSystem>(
    dir: &Directory<F>,
    names: &[String],
    installed: Option<&SnapshotFile>,
    report: &mut RecoveryReport,
) -> Result<(), DiskError> {
    let current = installed.map(|snapshot| snapshot_name("", &snapshot.meta));
    let strays = names.iter().filter(|name| is_snapshot_file(name) && Some(name.as_str()) != current.as_deref());
    for name in strays {
        let file = dir.file(name);
        dir.remove(&file)?;
        report.push(Repair::StraySnapshotRemoved { file });
    }
    Ok(())
}

/// Makes everything recovery read durable: a previous incarnation may have left unsynced
/// changes in the page cache.
pub(super) fn sync_recovered<F: FileSystem>(dir: &Directory<F>, log: &SegmentLog<F::File>) -> Result<(), DiskError> {
    for path in log.paths(dir) {
        dir.open_append(path)?.sync()?;
    }
    dir.sync()
}

/// What recovery found in one segment file.
struct ParsedSegment {
    segment: Segment,
    entries: Vec<Entry>,
    /// The offset of a torn tail to cut off (0: the header itself was torn).
    torn_at: Option<u64>,
}

/// Reads one segment. Damage at the very end of the last segment is a torn write (reported in
/// `torn_at`); damage anywhere else is corruption.
fn parse_segment(path: &Path, bytes: &Bytes, first_index: Index, is_last: bool) -> Result<ParsedSegment, DiskError> {
    let len = bytes.len() as u64;
    let mut parsed = ParsedSegment {
        segment: Segment { first_index, offsets: Vec::new(), len, zero_tail: false },
        entries: Vec::new(),
        torn_at: None,
    };
    if len < HEADER_BYTES || (is_last && header_never_written(bytes)) {
        parsed.torn_at = Some(torn_or_corrupt(path, is_last, 0, Corruption::Truncated)?);
        return Ok(parsed);
    }
    let zero_tail = check_disk_header(path, bytes, first_index)?;
    let mut reader = EntryReader { path, bytes, parsed: &mut parsed };
    let walked = walk_segment(path, bytes, is_last, zero_tail, &mut reader)?;
    parsed.torn_at = walked.torn.then_some(walked.end);
    parsed.segment.len = walked.end;
    parsed.segment.zero_tail = zero_tail;
    Ok(parsed)
}

/// What [`walk_segment`] hands each record to.
pub(crate) trait RecordSink {
    /// Takes the payload of the whole, crc-checked record at `offset`.
    fn record(&mut self, offset: u64, payload: &[u8]) -> Result<(), DiskError>;
    /// Whether `payload`, of a whole record with a good crc found after a damaged one, is one the
    /// segment could hold right after the damaged record: then the damage is no torn tail.
    fn could_follow(&self, payload: &[u8]) -> bool;
    /// Whether `payload`, of a whole record with a good crc found after a damaged one in the
    /// last segment of a log filled ahead of its records, is one the segment could hold anywhere
    /// after the damaged record (the damage may span several): then the damage is no torn tail.
    fn could_come_later(&self, payload: &[u8]) -> bool;
}

/// A torn write at `offset` of the last segment, or `corruption` anywhere else.
pub(crate) fn torn_or_corrupt(
    path: &Path,
    is_last: bool,
    offset: u64,
    corruption: Corruption,
) -> Result<u64, DiskError> {
    if is_last { Ok(offset) } else { Err(corrupt(path, offset, corruption)) }
}

/// Where the records of a segment end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Walked {
    /// The end of the last whole record (the header's end if none).
    pub(crate) end: u64,
    /// Whether a torn write follows `end` (else only zeros, or nothing, do).
    pub(crate) torn: bool,
}

/// Whether a segment's header was never written: the segment was never synced (no record in it
/// was durable when the crash came), and its header reads as zeros because space after it was
/// filled, or reached the disk first. A whole record right after it (written with the header, in
/// the same sector) says the header was damaged instead.
pub(crate) fn header_never_written(bytes: &[u8]) -> bool {
    bytes.len() as u64 >= HEADER_BYTES
        && bytes[..HEADER_BYTES as usize].iter().all(|&byte| byte == 0)
        && checked_record(bytes, HEADER_BYTES).is_none()
}

/// Walks the records of the segment `path` (held in `bytes`, its header checked) and hands each
/// to `sink`; returns where they end, and whether a torn write follows.
///
/// A segment of an appended format (`zero_tail` false) ends with its last record: damage at the
/// very end of the last segment is a torn write, damage anywhere else is corruption.
///
/// A segment whose space may have been filled with zeros before its records were written over
/// them (`zero_tail`: both logs' newer formats): in the last segment, zeros from a record's end
/// to the file's end are space no record reached, not damage (a segment is cut to its last
/// record before a newer one starts, so zeros after the records of any other segment are
/// damage). Damage in the last segment after which no whole record comes (one that could lie
/// anywhere after it: [`RecordSink::could_come_later`]) is a torn write, whatever else comes
/// after it: a crash, or media damage to the newest records, which recovery cannot tell apart.
/// Anything else is corruption.
pub(crate) fn walk_segment(
    path: &Path,
    bytes: &[u8],
    is_last: bool,
    zero_tail: bool,
    sink: &mut impl RecordSink,
) -> Result<Walked, DiskError> {
    let len = bytes.len() as u64;
    // Only the last segment may end in zeros.
    let zero_tail = zero_tail && is_last;
    let data_end =
        if zero_tail { bytes.iter().rposition(|&byte| byte != 0).map_or(0, |at| at as u64 + 1) } else { len };
    let torn = |offset: u64, corruption: Corruption| {
        torn_or_corrupt(path, is_last, offset, corruption).map(|end| Walked { end, torn: true })
    };
    let mut offset = HEADER_BYTES;
    while offset < data_end {
        if len - offset < RECORD_PREFIX_BYTES {
            return torn(offset, Corruption::Truncated);
        }
        let record_len = read_u32(bytes, offset);
        let end = offset + RECORD_PREFIX_BYTES + u64::from(record_len);
        if end > len {
            if record_len > RECORD_BYTES_MAX {
                return Err(corrupt(path, offset, Corruption::RecordLength(record_len)));
            }
            if valid_record_after(bytes, offset + RECORD_PREFIX_BYTES, data_end, zero_tail, sink) {
                return Err(corrupt(path, offset, Corruption::Truncated));
            }
            return torn(offset, Corruption::Truncated);
        }
        let payload = &bytes[(offset + RECORD_PREFIX_BYTES) as usize..end as usize];
        if record_crc(record_len, payload) != read_u32(bytes, offset + 4) {
            let last_written = if zero_tail {
                !valid_record_after(bytes, offset + RECORD_PREFIX_BYTES, data_end, true, sink)
            } else {
                end == len
            };
            if last_written {
                return torn(offset, Corruption::Checksum);
            }
            return Err(corrupt(path, offset, Corruption::Checksum));
        }
        sink.record(offset, payload)?;
        offset = end;
    }
    Ok(Walked { end: offset, torn: false })
}

/// Whether a whole record with a good checksum that could follow the damaged one (see
/// [`RecordSink::could_follow`]; with `anywhere_after`, one that could lie anywhere after it:
/// [`RecordSink::could_come_later`]) starts anywhere from `from` to before `until`: then the
/// damage before it is no torn tail. (None starts at or after the last byte that is not zero: a
/// record's length is never zero.)
fn valid_record_after(bytes: &[u8], from: u64, until: u64, anywhere_after: bool, sink: &impl RecordSink) -> bool {
    let len = bytes.len() as u64;
    (from..until.min(len.saturating_sub(RECORD_PREFIX_BYTES))).any(|at| {
        checked_record(bytes, at).is_some_and(|payload| {
            if anywhere_after { sink.could_come_later(payload) } else { sink.could_follow(payload) }
        })
    })
}

/// Decodes a `DiskStorage` segment's records into entries.
struct EntryReader<'a> {
    path: &'a Path,
    bytes: &'a Bytes,
    parsed: &'a mut ParsedSegment,
}

impl RecordSink for EntryReader<'_> {
    fn record(&mut self, offset: u64, payload: &[u8]) -> Result<(), DiskError> {
        let entry = decode_entry(self.bytes, payload).ok_or_else(|| corrupt(self.path, offset, Corruption::Decode))?;
        check_sequence(self.path, offset, self.parsed, &entry)?;
        self.parsed.segment.offsets.push(offset);
        self.parsed.entries.push(entry);
        Ok(())
    }

    /// The entry after the damaged one.
    fn could_follow(&self, payload: &[u8]) -> bool {
        let index = self.parsed.segment.next_index().next();
        postcard::from_bytes::<Entry>(payload).is_ok_and(|entry| entry.index == index)
    }

    /// Any entry after the damaged one (several may be damaged).
    fn could_come_later(&self, payload: &[u8]) -> bool {
        let damaged = self.parsed.segment.next_index();
        postcard::from_bytes::<Entry>(payload).is_ok_and(|entry| entry.index > damaged)
    }
}

fn check_sequence(path: &Path, offset: u64, parsed: &ParsedSegment, entry: &Entry) -> Result<(), DiskError> {
    let expected = parsed.segment.next_index();
    if entry.index != expected {
        return Err(corrupt(path, offset, Corruption::IndexOutOfSequence { expected, found: entry.index }));
    }
    if let Some(previous) = parsed.entries.last()
        && entry.term < previous.term
    {
        return Err(corrupt(path, offset, Corruption::TermRegression { previous: previous.term, found: entry.term }));
    }
    Ok(())
}
