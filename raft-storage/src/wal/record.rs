//! The shared WAL's byte formats (format version 1): its segment names and headers, and its
//! records. The framing (`[len u32][crc32 u32][payload]`, the segment header layout, the
//! IDENTITY file) is `DiskStorage`'s, with a magic and a version of its own, so neither store
//! mistakes the other's files for its own.

use raft_core::{Entry, GroupId, Index};
use serde::{Deserialize, Serialize};

use crate::disk::meta::Meta;

/// The format version of the shared WAL's IDENTITY file.
pub(super) const FORMAT_VERSION: u32 = 1;
/// The format version of the segments written: a version 2 segment may end in zeros (space
/// filled ahead of its records, see `WalOptions::preallocate_bytes`). Version 1 segments, which
/// never do, are still read.
pub(super) const SEGMENT_VERSION: u32 = 2;
/// The segment format version before [`SEGMENT_VERSION`].
pub(super) const SEGMENT_VERSION_APPENDED: u32 = 1;
/// The magic of the shared WAL's segments.
pub(super) const SEGMENT_MAGIC: [u8; 8] = *b"RAFTMWAL";
/// The magic of the shared WAL's IDENTITY file.
pub(super) const IDENTITY_MAGIC: [u8; 8] = *b"RAFTMWID";

/// The file name of segment number `sequence`.
pub(super) fn segment_name(sequence: u64) -> String {
    format!("segment-{sequence:020}.mwal")
}

/// The sequence number a segment's file name gives, if `name` is a segment's.
pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("segment-")?.strip_suffix(".mwal")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

/// The prefix of the file names of group `group`'s snapshot files.
pub(super) fn group_prefix(group: GroupId) -> String {
    format!("group-{:020}-", group.0)
}

/// The group whose file `name` is (by its prefix), and the rest of the name.
pub(super) fn parse_group_file(name: &str) -> Option<(GroupId, &str)> {
    let rest = name.strip_prefix("group-")?;
    let digits = rest.get(..20)?;
    let tail = rest.get(20..)?.strip_prefix('-')?;
    digits.bytes().all(|b| b.is_ascii_digit()).then(|| digits.parse().ok().map(|id| (GroupId(id), tail))).flatten()
}

/// One record, as written (borrowing what it holds). Its variants and fields must match
/// [`Record`]'s, in the same order: postcard encodes both the same way.
#[derive(Serialize)]
pub(super) enum RecordRef<'a> {
    /// The group is created with this metadata (its initial membership).
    Create { group: GroupId, meta: &'a Meta },
    /// The group's metadata (hard state, membership, log boundary, installed snapshot) from here
    /// on, and the last index of its log at this point (so that replay knows what a compaction
    /// or install kept without the entries before it, which may lie in released segments):
    /// written when the term or vote changes, on compaction, on a snapshot install, and as a
    /// checkpoint that lets an older segment go (see the module docs).
    Meta { group: GroupId, meta: &'a Meta, last: Index },
    /// One entry of the group's log, replacing any entries of the group from its index on.
    Entry { group: GroupId, entry: &'a Entry },
    /// The group is removed: its earlier records are garbage.
    Remove { group: GroupId },
    /// Every segment numbered below `below` is released: every record in it is superseded.
    Reclaim { below: u64 },
    /// One entry of the group's log copied forward by a reclamation (see the module docs): the
    /// group's whole live log is copied, in order, so that the segments holding the originals
    /// can go. On replay a run of copies that the group's log already holds (same indexes and
    /// terms) up to its last index only moves those entries to the copies; a run cut short (a
    /// torn tail) moves nothing. A copy the log does not hold (its originals lie in released
    /// segments) is replayed as an `Entry`.
    Copy { group: GroupId, entry: &'a Entry },
}

/// One record, as read back.
#[derive(Debug, Deserialize)]
pub(super) enum Record {
    /// See [`RecordRef::Create`].
    Create { group: GroupId, meta: Meta },
    /// See [`RecordRef::Meta`].
    Meta { group: GroupId, meta: Meta, last: Index },
    /// See [`RecordRef::Entry`].
    Entry { group: GroupId, entry: Entry },
    /// See [`RecordRef::Remove`].
    Remove { group: GroupId },
    /// See [`RecordRef::Reclaim`].
    Reclaim { below: u64 },
    /// See [`RecordRef::Copy`].
    Copy { group: GroupId, entry: Entry },
}

/// Decodes a record's payload.
pub(super) fn decode(payload: &[u8]) -> Option<Record> {
    postcard::from_bytes(payload).ok()
}

#[cfg(test)]
mod tests {
    use raft_core::{EntryPayload, Term};

    use super::*;
    use crate::disk::codec::{RECORD_PREFIX_BYTES, encode_record};

    #[test]
    fn records_read_back_as_written() {
        let entry = Entry { index: Index(3), term: Term(2), payload: EntryPayload::Noop };
        let mut bytes = Vec::new();
        encode_record(&RecordRef::Entry { group: GroupId(9), entry: &entry }, &mut bytes);
        let record = decode(&bytes[RECORD_PREFIX_BYTES as usize..]);
        assert!(matches!(record, Some(Record::Entry { group: GroupId(9), entry: e }) if e == entry));
    }

    #[test]
    fn file_names_parse_back() {
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("00000000000000000042.wal"), None);
        let name = format!("{}snapshot.staging", group_prefix(GroupId(7)));
        assert_eq!(parse_group_file(&name), Some((GroupId(7), "snapshot.staging")));
        assert_eq!(parse_group_file("group-7-snapshot.staging"), None);
    }
}
