//! The log's segment files, `<first index, 20 digits>.wal`: a header, then records. Appends go
//! to the last segment, which stays open; segments rotate once they would grow past
//! [`DiskOptions::segment_bytes_max`](super::DiskOptions). Truncations cut or remove segments
//! from the end, compactions remove them from the start, always durably.

use std::path::PathBuf;

use raft_core::{Entry, Index};

use super::codec::{RECORD_PREFIX_BYTES, SEGMENT_MAGIC, SEGMENT_VERSION, encode_header, encode_record};
use super::directory::{Directory, OpenFile};
use super::error::DiskError;
use super::store::DiskOptions;
use crate::fs::{FileSystem, FsFile};
use crate::metrics::WalMetrics;

/// The file name of the segment starting at `first_index`.
pub(super) fn segment_name(first_index: Index) -> String {
    format!("{:020}.wal", first_index.0)
}

/// The first index a segment's file name gives, if `name` is a segment's.
pub(super) fn parse_segment_name(name: &str) -> Option<Index> {
    let digits = name.strip_suffix(".wal")?;
    (digits.len() == 20).then(|| digits.parse().ok().map(Index)).flatten()
}

/// One segment file: its first index and the byte offset of each of its records.
#[derive(Clone, Debug)]
pub(super) struct Segment {
    pub(super) first_index: Index,
    pub(super) offsets: Vec<u64>,
    /// The end of its last record (the file may be longer: zeros no record reached).
    pub(super) len: u64,
    /// Whether zeros may follow its records (format version 5): only then is its space filled
    /// ahead of them.
    pub(super) zero_tail: bool,
}

impl Segment {
    pub(super) fn next_index(&self) -> Index {
        Index(self.first_index.0 + self.offsets.len() as u64)
    }
}

/// The segments of the log, oldest first, and the last one open for appending.
pub(super) struct SegmentLog<File> {
    segments: Vec<Segment>,
    /// The last segment's file, open while segments exist.
    active: Option<OpenFile<File>>,
    /// Reused across appends: the records of one batch.
    write_buffer: Vec<u8>,
    /// Where the appends' fsyncs are recorded.
    metrics: WalMetrics,
}

impl<File: FsFile> SegmentLog<File> {
    /// The log of the `segments` recovery found (none open yet: see [`SegmentLog::open_active`]).
    pub(super) fn new(segments: Vec<Segment>) -> Self {
        SegmentLog { segments, active: None, write_buffer: Vec::new(), metrics: WalMetrics::noop() }
    }

    /// The same log, recording its appends' fsyncs in `metrics`.
    pub(super) fn with_metrics(self, metrics: WalMetrics) -> Self {
        SegmentLog { metrics, ..self }
    }

    /// The number of segment files.
    pub(super) fn len(&self) -> usize {
        self.segments.len()
    }

    /// The paths of the segment files, oldest first.
    pub(super) fn paths<F: FileSystem<File = File>>(&self, dir: &Directory<F>) -> Vec<PathBuf> {
        self.segments.iter().map(|segment| dir.file(&segment_name(segment.first_index))).collect()
    }

    /// Opens the last segment for appending.
    pub(super) fn open_active<F: FileSystem<File = File>>(&mut self, dir: &Directory<F>) -> Result<(), DiskError> {
        self.active = None;
        if let Some(segment) = self.segments.last() {
            self.active = Some(dir.open_append(dir.file(&segment_name(segment.first_index)))?);
        }
        Ok(())
    }

    /// Removes the segments from position `keep` on (durably, the newest first), closing the
    /// active file if needed. Returns the removed files' paths, in the order removed.
    pub(super) fn remove_from<F: FileSystem<File = File>>(
        &mut self,
        dir: &Directory<F>,
        keep: usize,
    ) -> Result<Vec<PathBuf>, DiskError> {
        if keep >= self.segments.len() {
            return Ok(Vec::new());
        }
        self.active = None;
        let mut removed = Vec::new();
        for segment in self.segments.drain(keep..).rev().collect::<Vec<_>>() {
            let path = dir.file(&segment_name(segment.first_index));
            dir.remove(&path)?;
            removed.push(path);
        }
        dir.sync()?;
        self.open_active(dir)?;
        Ok(removed)
    }

    /// Removes (durably) the segments that hold nothing after `boundary`: each one whose
    /// successor starts at or below `boundary + 1`. Returns the removed files' paths.
    pub(super) fn remove_covered<F: FileSystem<File = File>>(
        &mut self,
        dir: &Directory<F>,
        boundary: Index,
    ) -> Result<Vec<PathBuf>, DiskError> {
        let covered = self.segments.windows(2).take_while(|pair| pair[1].first_index <= boundary.next()).count();
        if covered == 0 {
            return Ok(Vec::new());
        }
        let mut removed = Vec::new();
        for segment in self.segments.drain(..covered) {
            let path = dir.file(&segment_name(segment.first_index));
            dir.remove(&path)?;
            removed.push(path);
        }
        dir.sync()?;
        Ok(removed)
    }

    /// Durably removes the records of every entry from `index` on (which the log holds).
    pub(super) fn truncate_from<F: FileSystem<File = File>>(
        &mut self,
        dir: &Directory<F>,
        index: Index,
    ) -> Result<(), DiskError> {
        let position = self.segments.iter().rposition(|s| s.first_index <= index).unwrap_or(0);
        if self.segments[position].first_index >= index {
            return self.remove_from(dir, position).map(drop);
        }
        self.remove_from(dir, position + 1)?;
        let segment = &mut self.segments[position];
        let records = (index.0 - segment.first_index.0) as usize;
        let cut = segment.offsets[records];
        segment.offsets.truncate(records);
        segment.len = cut;
        let file = self.active.as_mut().expect("the last segment is open while segments exist");
        file.truncate(cut)?;
        file.sync()
    }

    /// Appends records for `entries`, rotating segments at `segment_bytes_max`; one fsync of the
    /// active segment at the end (plus one per segment closed on the way and one of the directory
    /// if a segment was created). The records go where the segment's records end; once they
    /// reach the file's end, the next `preallocate_bytes` after them are filled with zeros,
    /// made durable by the same fsync (see [`DiskOptions::preallocate_bytes`]).
    pub(super) fn append<F: FileSystem<File = File>>(
        &mut self,
        dir: &Directory<F>,
        entries: &[Entry],
        options: &DiskOptions,
    ) -> Result<(), DiskError> {
        let segment_bytes_max = options.segment_bytes_max;
        let estimate: usize = entries.iter().map(|e| e.size_bytes() as usize + RECORD_PREFIX_BYTES as usize).sum();
        let mut buffer = std::mem::take(&mut self.write_buffer);
        buffer.clear();
        buffer.reserve(estimate);
        let mut created = false;
        let mut rotated_bytes = 0u64; // Written to segments this append filled and left.
        for entry in entries {
            let start = buffer.len();
            encode_record(entry, &mut buffer);
            let record_len = (buffer.len() - start) as u64;
            let must_rotate = match self.segments.last() {
                None => true,
                Some(s) => !s.offsets.is_empty() && s.len + record_len > segment_bytes_max,
            };
            if must_rotate {
                self.write_active(&buffer[..start], options)?;
                rotated_bytes += start as u64;
                buffer.drain(..start);
                self.start_segment(dir, entry.index)?;
                created = true;
            }
            let segment = self.segments.last_mut().expect("a segment was just ensured");
            segment.offsets.push(segment.len);
            segment.len += record_len;
        }
        self.write_active(&buffer, options)?;
        let bytes = rotated_bytes + buffer.len() as u64;
        self.write_buffer = buffer;
        let started = std::time::Instant::now();
        self.sync_active()?;
        self.metrics.synced(started, entries.len() as u64, bytes);
        if created {
            dir.sync()?;
        }
        Ok(())
    }

    /// Writes `bytes`, the last records counted in the last segment's length, where they go,
    /// then fills ahead of them if they reached the file's end.
    fn write_active(&mut self, bytes: &[u8], options: &DiskOptions) -> Result<(), DiskError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let segment = self.segments.last().expect("bytes are only written to an existing segment");
        let file = self.active.as_mut().expect("bytes are only written to an existing segment");
        let fill_ahead = if segment.zero_tail { options.preallocate_bytes } else { 0 };
        file.write_records(segment.len, bytes, fill_ahead, options.segment_bytes_max)?;
        Ok(())
    }

    fn sync_active(&mut self) -> Result<(), DiskError> {
        match self.active.as_mut() {
            Some(file) => file.sync(),
            None => Ok(()),
        }
    }

    /// Closes the active segment (durably, cut to its last record: only the newest segment may
    /// end in zeros) and starts a new one at `first_index`.
    fn start_segment<F: FileSystem<File = File>>(
        &mut self,
        dir: &Directory<F>,
        first_index: Index,
    ) -> Result<(), DiskError> {
        if let (Some(segment), Some(file)) = (self.segments.last(), self.active.as_mut()) {
            file.cut_fill(segment.len)?;
        }
        self.sync_active()?;
        let mut file = dir.create(dir.file(&segment_name(first_index)))?;
        let header = encode_header(SEGMENT_MAGIC, SEGMENT_VERSION, first_index.0);
        file.append(&header)?;
        self.segments.push(Segment { first_index, offsets: Vec::new(), len: header.len() as u64, zero_tail: true });
        self.active = Some(file);
        Ok(())
    }
}
