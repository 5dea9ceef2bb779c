//! The byte formats (format version 4; segments version 5): the framing of the metadata files,
//! the segment header and the log records.
//!
//! - Framed file: `[magic 8][version u32][len u32][crc32 u32][payload]`, the crc covering
//!   version, length and payload.
//! - Segment header: `[magic 8][version u32][first index u64][crc32 u32]`, the crc covering the
//!   bytes before it.
//! - Record: `[len u32][crc32 u32][postcard Entry]`, the crc covering the length and the payload.
//!   In a segment of version 5, zeros may follow the last record (space filled ahead of the
//!   records); a version 4 segment ends with its last record.
//!
//! All integers are little-endian.

use std::path::Path;

use raft_core::{Entry, EntryPayload, Index, Membership, Term};
use serde::Deserialize;

use super::error::{Corruption, DiskError, corrupt};

/// The on-disk format version of the metadata files (and of the segments before
/// [`SEGMENT_VERSION`], still read).
/// Version 2 added the snapshot to META. Version 3 added the snapshot's data checksum to its
/// metadata and a crc per 64 KiB block of its data, checked on every read. Version 4 stores
/// memberships with named halves and `learners_next` (raft-core's joint memberships).
pub(crate) const FORMAT_VERSION: u32 = 4;
/// The format version of the segments written: a version 5 segment may end in zeros (space
/// filled ahead of its records, see `DiskOptions::preallocate_bytes`); version 4 segments, which
/// never do, are still read.
pub(crate) const SEGMENT_VERSION: u32 = 5;
/// The magic of `DiskStorage`'s segment files.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"RAFTWAL1";
/// Segment header: magic, version, first index, crc of the preceding bytes.
pub(crate) const HEADER_BYTES: u64 = 8 + 4 + 8 + 4;
/// Record prefix: length and crc.
pub(crate) const RECORD_PREFIX_BYTES: u64 = 8;
/// The largest record payload accepted when reading (guards against a garbage length).
pub(crate) const RECORD_BYTES_MAX: u32 = 256 * 1024 * 1024;
/// Framed file prefix: magic, version, length, crc. The payload starts right after it.
pub(crate) const FRAME_PREFIX_BYTES: usize = 8 + 4 + 4 + 4;

/// `[magic][version u32][len u32][crc u32][payload]`, the crc covering version, length, payload.
pub(crate) fn encode_framed(magic: [u8; 8], version: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + FRAME_PREFIX_BYTES);
    out.extend_from_slice(&magic);
    let mut covered = Vec::with_capacity(payload.len() + 8);
    covered.extend_from_slice(&version.to_le_bytes());
    covered.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    covered.extend_from_slice(payload);
    out.extend_from_slice(&covered[..8]);
    out.extend_from_slice(&crc32fast::hash(&covered).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of the framed file `path` holding `bytes`, checked against `magic`, the format
/// `version`, its length and its crc.
pub(crate) fn decode_framed<'a>(
    path: &Path,
    bytes: &'a [u8],
    magic: [u8; 8],
    version: u32,
) -> Result<&'a [u8], DiskError> {
    let field = |at: usize| -> Result<u32, DiskError> {
        let raw = bytes.get(at..at + 4).ok_or_else(|| corrupt(path, at as u64, Corruption::Truncated))?;
        Ok(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]))
    };
    if bytes.get(..8) != Some(&magic[..]) {
        return Err(corrupt(path, 0, Corruption::BadMagic));
    }
    let found = field(8)?;
    if found != version {
        return Err(corrupt(path, 8, Corruption::UnsupportedVersion(found)));
    }
    let len = field(12)? as usize;
    let crc = field(16)?;
    let payload = bytes
        .get(FRAME_PREFIX_BYTES..FRAME_PREFIX_BYTES + len)
        .ok_or_else(|| corrupt(path, FRAME_PREFIX_BYTES as u64, Corruption::Truncated))?;
    let mut covered = bytes[8..16].to_vec();
    covered.extend_from_slice(payload);
    if crc32fast::hash(&covered) != crc || bytes.len() != FRAME_PREFIX_BYTES + len {
        return Err(corrupt(path, 16, Corruption::Checksum));
    }
    Ok(payload)
}

/// The header of a segment of format (`magic`, `version`) whose file name says `number` (the
/// first index of a `DiskStorage` segment, the sequence number of a shared WAL's).
pub(crate) fn encode_header(magic: [u8; 8], version: u32, number: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES as usize);
    out.extend_from_slice(&magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&number.to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks the magic, version and crc of the header of the segment `path` (at least
/// [`HEADER_BYTES`] long); returns the number it holds, which the caller compares with the file
/// name's (at byte 12).
pub(crate) fn check_header(path: &Path, bytes: &[u8], magic: [u8; 8], version: u32) -> Result<u64, DiskError> {
    if bytes[..8] != magic {
        return Err(corrupt(path, 0, Corruption::BadMagic));
    }
    let found = read_u32(bytes, 8);
    if found != version {
        return Err(corrupt(path, 8, Corruption::UnsupportedVersion(found)));
    }
    if crc32fast::hash(&bytes[..20]) != read_u32(bytes, 20) {
        return Err(corrupt(path, 20, Corruption::Checksum));
    }
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[12..20]);
    Ok(u64::from_le_bytes(raw))
}

/// Checks the header of a segment of either format version: `appended` (the older one: the file
/// ends with its last record) or `filled` (zeros may follow its records: space filled ahead of
/// them). Returns the number the header holds and whether zeros may follow the records.
pub(crate) fn check_segment_header(
    path: &Path,
    bytes: &[u8],
    magic: [u8; 8],
    appended: u32,
    filled: u32,
) -> Result<(u64, bool), DiskError> {
    let zero_tail = read_u32(bytes, 8) != appended;
    let number = check_header(path, bytes, magic, if zero_tail { filled } else { appended })?;
    Ok((number, zero_tail))
}

/// Checks the header of the `DiskStorage` segment `path`, whose file name says it starts at
/// `name_index`. Returns whether zeros may follow its records (format version 5).
pub(super) fn check_disk_header(path: &Path, bytes: &[u8], name_index: Index) -> Result<bool, DiskError> {
    let (header, zero_tail) = check_segment_header(path, bytes, SEGMENT_MAGIC, FORMAT_VERSION, SEGMENT_VERSION)?;
    let header = Index(header);
    if header != name_index {
        return Err(corrupt(path, 12, Corruption::HeaderMismatch { header, name: name_index }));
    }
    Ok(zero_tail)
}

/// The little-endian `u32` at byte `at` of `bytes` (which must hold it).
pub(crate) fn read_u32(bytes: &[u8], at: u64) -> u32 {
    let at = at as usize;
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// The crc a record's prefix holds: over its length field and its payload.
pub(crate) fn record_crc(len: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// The payload of the record at `offset` of `bytes` if a whole record with a good crc starts
/// there. `None` if its prefix or payload runs past the end, or its crc does not match.
pub(crate) fn checked_record(bytes: &[u8], offset: u64) -> Option<&[u8]> {
    let len = bytes.len() as u64;
    if len.saturating_sub(offset) < RECORD_PREFIX_BYTES {
        return None;
    }
    let record_len = read_u32(bytes, offset);
    let end = offset + RECORD_PREFIX_BYTES + u64::from(record_len);
    if end > len {
        return None;
    }
    let payload = &bytes[(offset + RECORD_PREFIX_BYTES) as usize..end as usize];
    (record_crc(record_len, payload) == read_u32(bytes, offset + 4)).then_some(payload)
}

/// A postcard output that appends to a borrowed `Vec` (one copy, no allocation per record).
struct VecFlavor<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for VecFlavor<'_> {
    type Output = ();
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends `[len][crc][postcard value]` (an entry, or a shared WAL's record), serializing in
/// place (no temporary per record).
pub(crate) fn encode_record<T: serde::Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_PREFIX_BYTES as usize]);
    postcard::serialize_with_flavor(value, VecFlavor(out)).expect("entries and records always serialize");
    let body = start + RECORD_PREFIX_BYTES as usize;
    let len = (out.len() - body) as u32;
    let crc = record_crc(len, &out[body..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..body].copy_from_slice(&crc.to_le_bytes());
}

/// The borrowed shape of [`Entry`] (same postcard encoding), so that payloads can be sliced out of
/// the segment buffer instead of copied.
#[derive(Deserialize)]
struct EntryRef<'a> {
    term: Term,
    index: Index,
    #[serde(borrow)]
    payload: PayloadRef<'a>,
}

/// Must list the variants of [`raft_core::EntryPayload`] in the same order (postcard encodes
/// the variant index); the contract tests (`tests/contract.rs`) write and reopen every kind.
#[derive(Deserialize)]
enum PayloadRef<'a> {
    Normal(&'a [u8]),
    Noop,
    Membership(Membership),
}

/// Decodes one record; a `Normal` payload shares `segment`'s buffer (no copy, no allocation).
pub(super) fn decode_entry(segment: &bytes::Bytes, record: &[u8]) -> Option<Entry> {
    let entry: EntryRef<'_> = postcard::from_bytes(record).ok()?;
    let payload = match entry.payload {
        PayloadRef::Normal(data) => EntryPayload::Normal(segment.slice_ref(data)),
        PayloadRef::Noop => EntryPayload::Noop,
        PayloadRef::Membership(membership) => EntryPayload::Membership(membership),
    };
    Some(Entry { term: entry.term, index: entry.index, payload })
}
