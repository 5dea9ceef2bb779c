//! Damaged and truncated files of every kind must produce the right typed error, naming the file
//! and the byte offset, and a damaged store must never open silently with fewer entries: the only
//! damage recovery repairs is a torn tail, a partial last record of the last segment.
//!
//! Each test builds a store of twelve entries in four segments of three records, damages it, and
//! opens it. The targeted tests run over [`SimFs`] and over the real file system (in a unique
//! temporary directory); the exhaustive ones (every bit of every file, every truncation of every
//! file) over [`SimFs`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, HardState, Index, Membership, NodeId, Storage, Term};
use raft_storage::testing::SimFs;
use raft_storage::{Corruption, DiskError, DiskOptions, DiskStorage, FileSystem, FsFile, Identity, LogStore, StdFs};

const ME: Identity = Identity { cluster_id: 9, node_id: NodeId(1) };
const STRANGER: Identity = Identity { cluster_id: 9, node_id: NodeId(2) };
/// Three 22-byte records after the 24-byte header; a fourth would pass 100 bytes.
const OPTIONS: DiskOptions = DiskOptions { segment_bytes_max: 100, preallocate_bytes: 0 };
const HEADER_BYTES: u64 = 24;
const RECORD_PREFIX_BYTES: u64 = 8;
const RECORD_BYTES_MAX: u32 = 256 * 1024 * 1024;
/// The format version of the metadata files the store writes; the next one is unknown to it.
const FORMAT_VERSION: u32 = 4;
/// The format version of the segments the store writes (4, the one before, is still read); the
/// next one is unknown to it.
const SEGMENT_VERSION: u32 = 5;

fn membership() -> Membership {
    Membership::new([NodeId(1), NodeId(2), NodeId(3)])
}

/// Ten bytes of payload: a 22-byte record.
fn entry(index: u64, term: u64) -> Entry {
    let data = format!("entry-{index:04}");
    Entry { index: Index(index), term: Term(term), payload: EntryPayload::Normal(Bytes::from(data.into_bytes())) }
}

fn all_entries() -> Vec<Entry> {
    (1..=12).map(|index| entry(index, if index <= 6 { 1 } else { 2 })).collect()
}

fn final_hard_state() -> HardState {
    HardState { term: Term(2), vote: Some(NodeId(1)), commit: Index(0) }
}

/// A file system with a fresh directory for the store (and a sibling for another node's store).
struct Scratch<F> {
    fs: F,
    root: PathBuf,
    /// Removed on drop (the real file system only).
    cleanup: Option<PathBuf>,
}

impl<F> Scratch<F> {
    fn dir(&self) -> PathBuf {
        self.root.join("node")
    }
}

impl<F> Drop for Scratch<F> {
    fn drop(&mut self) {
        if let Some(root) = &self.cleanup {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

trait Disk: FileSystem<File: Send + 'static> + Send + Sync + Clone + Sized + 'static {
    fn scratch() -> Scratch<Self>;
}

impl Disk for SimFs {
    fn scratch() -> Scratch<SimFs> {
        Scratch { fs: SimFs::new(3), root: PathBuf::from("/data"), cleanup: None }
    }
}

impl Disk for StdFs {
    fn scratch() -> Scratch<StdFs> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("raft-storage-corruption-{}-{unique}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        Scratch { fs: StdFs, root: root.clone(), cleanup: Some(root) }
    }
}

/// One record of a segment file.
#[derive(Clone, Copy, Debug)]
struct Record {
    offset: u64,
    end: u64,
    index: u64,
}

/// One segment file as found on disk.
#[derive(Clone, Debug)]
struct Segment {
    path: PathBuf,
    first: u64,
    records: Vec<Record>,
}

fn read_u32(bytes: &[u8], at: u64) -> u32 {
    let at = at as usize;
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

/// The segments of `dir`, parsed by the test's own reading of the format.
fn layout<F: FileSystem>(fs: &F, dir: &Path) -> Vec<Segment> {
    let mut segments = Vec::new();
    for name in fs.list(dir).expect("list").into_iter().filter(|n| n.ends_with(".wal")) {
        let path = dir.join(&name);
        let bytes = fs.read(&path).expect("read segment");
        let first: u64 = name.trim_end_matches(".wal").parse().expect("a numbered segment");
        let mut records = Vec::new();
        let mut offset = HEADER_BYTES;
        while offset < bytes.len() as u64 {
            let end = offset + RECORD_PREFIX_BYTES + u64::from(read_u32(&bytes, offset));
            records.push(Record { offset, end, index: first + records.len() as u64 });
            offset = end;
        }
        assert_eq!(offset, bytes.len() as u64, "{name} ends with a whole record");
        segments.push(Segment { path, first, records });
    }
    segments
}

/// Builds the fixture store: entries 1..=12 in four segments of three records.
fn build<F: Disk>() -> (Scratch<F>, Vec<Segment>) {
    let scratch = F::scratch();
    let mut store = DiskStorage::create(scratch.fs.clone(), scratch.dir(), ME, membership(), OPTIONS).expect("create");
    let entries = all_entries();
    let first_state = HardState { term: Term(1), vote: Some(NodeId(2)), commit: Index(0) };
    store.persist(Some(first_state), &entries[..4]).expect("persist");
    store.persist(None, &entries[4..8]).expect("persist");
    store.persist(Some(final_hard_state()), &entries[8..]).expect("persist");
    drop(store);
    let segments = layout(&scratch.fs, &scratch.dir());
    let shape: Vec<(u64, usize)> = segments.iter().map(|s| (s.first, s.records.len())).collect();
    assert_eq!(shape, [(1, 3), (4, 3), (7, 3), (10, 3)], "the fixture's segments");
    (scratch, segments)
}

fn open<F: Disk>(scratch: &Scratch<F>) -> Result<DiskStorage<F>, DiskError> {
    DiskStorage::open(scratch.fs.clone(), scratch.dir(), ME, OPTIONS)
}

fn held_entries<F: FileSystem>(store: &DiskStorage<F>) -> Vec<Entry> {
    let (first, last) = (store.first_index().expect("first"), store.last_index().expect("last"));
    store.entries(first, last.next(), u64::MAX).expect("entries")
}

fn write_file<F: FileSystem>(fs: &F, path: &Path, bytes: &[u8]) {
    let mut file = fs.create(path).expect("create");
    file.append(bytes).expect("append");
    file.sync().expect("sync");
    fs.sync_dir(path.parent().expect("a directory")).expect("sync dir");
}

fn edit<F: FileSystem>(fs: &F, path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs.read(path).expect("read");
    change(&mut bytes);
    write_file(fs, path, &bytes);
}

fn flip<F: FileSystem>(fs: &F, path: &Path, offset: u64, bit: u8) {
    edit(fs, path, |bytes| bytes[offset as usize] ^= 1 << bit);
}

fn corrupt(path: &Path, offset: u64, corruption: Corruption) -> DiskError {
    DiskError::Corrupt { path: path.to_path_buf(), offset, corruption }
}

/// Asserts that opening fails with exactly `expected`.
fn assert_open_fails<F: Disk>(scratch: &Scratch<F>, expected: DiskError, what: &str) {
    match open(scratch) {
        Ok(store) => {
            panic!("{what}: opened with {} entries instead of failing with {expected}", held_entries(&store).len())
        }
        Err(error) => assert_eq!(error, expected, "{what}"),
    }
}

/// Asserts that opening fails with a corruption of the file `path`.
fn assert_open_fails_naming<F: Disk>(scratch: &Scratch<F>, path: &Path, what: &str) {
    match open(scratch) {
        Ok(store) => panic!("{what}: opened with {} entries", held_entries(&store).len()),
        Err(DiskError::Corrupt { path: found, .. }) => assert_eq!(found, path, "{what}: the damaged file"),
        Err(error) => panic!("{what}: expected a corruption of {path:?}, got {error}"),
    }
}

/// Asserts that the store opens with exactly the entries `1..=last` and the final hard state,
/// then takes a new entry that survives a reopen (the cut tail made room for it).
fn assert_opens_with<F: Disk>(scratch: &Scratch<F>, last: u64, what: &str) {
    let mut store = open(scratch).unwrap_or_else(|error| panic!("{what}: {error}"));
    let mut expected = all_entries();
    expected.truncate(last as usize);
    assert_eq!(held_entries(&store), expected, "{what}: recovered entries");
    assert_eq!(store.initial_state().expect("state").hard_state, final_hard_state(), "{what}");
    let next = entry(last + 1, 3);
    store.persist(None, std::slice::from_ref(&next)).unwrap_or_else(|error| panic!("{what}: append: {error}"));
    drop(store);
    let store = open(scratch).unwrap_or_else(|error| panic!("{what}: reopen: {error}"));
    expected.push(next);
    assert_eq!(held_entries(&store), expected, "{what}: after an append and a reopen");
}

fn header_damage<F: Disk>() {
    for position in [0, 3] {
        let what = |field: &str| format!("{field} of the header of segment {position}");
        let (scratch, segments) = build::<F>();
        let path = &segments[position].path;
        flip(&scratch.fs, path, 3, 0);
        assert_open_fails(&scratch, corrupt(path, 0, Corruption::BadMagic), &what("magic"));

        let (scratch, segments) = build::<F>();
        let path = &segments[position].path;
        flip(&scratch.fs, path, 9, 2);
        // The version is read before the checksum: a future format may change the header.
        let version = Corruption::UnsupportedVersion(SEGMENT_VERSION ^ (1 << 10));
        assert_open_fails(&scratch, corrupt(path, 8, version), &what("version"));

        let (scratch, segments) = build::<F>();
        let path = &segments[position].path;
        flip(&scratch.fs, path, 12, 1);
        assert_open_fails(&scratch, corrupt(path, 20, Corruption::Checksum), &what("first index"));

        let (scratch, segments) = build::<F>();
        let path = &segments[position].path;
        flip(&scratch.fs, path, 22, 7);
        assert_open_fails(&scratch, corrupt(path, 20, Corruption::Checksum), &what("checksum"));
    }
}

fn unknown_segment_version<F: Disk>() {
    for position in [1, 3] {
        let (scratch, segments) = build::<F>();
        let path = &segments[position].path;
        edit(&scratch.fs, path, |bytes| {
            bytes[8..12].copy_from_slice(&(SEGMENT_VERSION + 1).to_le_bytes());
            let crc = crc32fast::hash(&bytes[..20]);
            bytes[20..24].copy_from_slice(&crc.to_le_bytes());
        });
        let expected = corrupt(path, 8, Corruption::UnsupportedVersion(SEGMENT_VERSION + 1));
        assert_open_fails(&scratch, expected, &format!("an unknown version in segment {position}"));
    }
}

/// Damage to record `record` of segment `position`, which is not the last record of the store.
fn record_damage_at<F: Disk>(position: usize, record: usize) {
    let what = |field: &str| format!("{field} of record {record} of segment {position}");
    let damage = |at: fn(Record) -> u64, bit: u8| {
        let (scratch, segments) = build::<F>();
        let target = segments[position].records[record];
        flip(&scratch.fs, &segments[position].path, at(target), bit);
        (scratch, segments[position].path.clone(), target)
    };
    let (scratch, path, target) = damage(|r| r.offset + 4, 3);
    assert_open_fails(&scratch, corrupt(&path, target.offset, Corruption::Checksum), &what("checksum"));
    let (scratch, path, target) = damage(|r| r.offset + 8, 0);
    assert_open_fails(&scratch, corrupt(&path, target.offset, Corruption::Checksum), &what("first payload byte"));
    let (scratch, path, target) = damage(|r| r.end - 1, 6);
    assert_open_fails(&scratch, corrupt(&path, target.offset, Corruption::Checksum), &what("last payload byte"));
    // A length one off: if the record then still ends inside the file, its checksum (which
    // covers the length) fails; else the file ends inside it.
    let (scratch, path, target) = damage(|r| r.offset, 0);
    let file_len = scratch.fs.read(&path).expect("read").len() as u64;
    let length = (target.end - target.offset - RECORD_PREFIX_BYTES) ^ 1;
    let inside = target.offset + RECORD_PREFIX_BYTES + length <= file_len;
    let expected = if inside { Corruption::Checksum } else { Corruption::Truncated };
    assert_open_fails(&scratch, corrupt(&path, target.offset, expected), &what("length's low bit"));
}

fn record_damage_in_a_non_last_segment<F: Disk>() {
    for (position, record) in [(0, 0), (1, 1), (2, 2)] {
        record_damage_at::<F>(position, record);
        // An impossible length.
        let (scratch, segments) = build::<F>();
        let target = segments[position].records[record];
        flip(&scratch.fs, &segments[position].path, target.offset + 3, 7);
        let length = (target.end - target.offset - RECORD_PREFIX_BYTES) as u32 | 1 << 31;
        let expected = corrupt(&segments[position].path, target.offset, Corruption::RecordLength(length));
        assert_open_fails(&scratch, expected, &format!("length of record {record} of segment {position}"));
    }
}

fn record_damage_in_the_middle_of_the_last_segment<F: Disk>() {
    record_damage_at::<F>(3, 0);
    record_damage_at::<F>(3, 1);
}

/// A record length that points past the end of the last segment, in the middle of it, is damage,
/// not a torn write: the records after it were written (and acknowledged) whole. An impossible
/// length (above the format's maximum) can never come from a torn write.
fn length_past_the_end_in_the_middle_of_the_last_segment<F: Disk>() {
    let (scratch, segments) = build::<F>();
    let target = segments[3].records[1];
    flip(&scratch.fs, &segments[3].path, target.offset + 3, 7);
    let length = (target.end - target.offset - RECORD_PREFIX_BYTES) as u32 | 1 << 31;
    assert!(length > RECORD_BYTES_MAX);
    let expected = corrupt(&segments[3].path, target.offset, Corruption::RecordLength(length));
    assert_open_fails(&scratch, expected, "an impossible length in the middle of the last segment");

    let (scratch, segments) = build::<F>();
    flip(&scratch.fs, &segments[3].path, target.offset + 1, 4);
    match open(&scratch) {
        Err(DiskError::Corrupt { path, offset, .. }) => {
            assert_eq!((path, offset), (segments[3].path.clone(), target.offset), "the damaged record");
        }
        Err(error) => panic!("a length past the end in the middle of the last segment: {error}"),
        Ok(store) => panic!(
            "a length past the end in the middle of the last segment opened silently with {} of 12 entries",
            held_entries(&store).len()
        ),
    }
}

fn damaged_last_record_is_a_torn_tail<F: Disk>() {
    // (field, offset from the record's start (negative: from its end), bit)
    let cases: [(&str, i64, u8); 3] = [("checksum", 5, 1), ("payload", 12, 4), ("last byte", -1, 0)];
    for (field, at, bit) in cases {
        let (scratch, segments) = build::<F>();
        let target = segments[3].records[2];
        let byte = if at >= 0 { target.offset + at as u64 } else { target.end - at.unsigned_abs() };
        flip(&scratch.fs, &segments[3].path, byte, bit);
        assert_opens_with(&scratch, 11, &format!("{field} of the last record"));
    }
}

fn truncated_last_segment_is_a_torn_tail<F: Disk>() {
    let (_, segments) = build::<F>();
    let last = segments[3].records[2];
    for cut in [last.offset, last.offset + 1, last.offset + 7, last.offset + 8, last.end - 1] {
        let (scratch, segments) = build::<F>();
        edit(&scratch.fs, &segments[3].path, |bytes| bytes.truncate(cut as usize));
        assert_opens_with(&scratch, 11, &format!("last segment cut at {cut}"));
    }
    let (scratch, segments) = build::<F>();
    edit(&scratch.fs, &segments[3].path, |bytes| bytes.truncate(10));
    assert_opens_with(&scratch, 9, "last segment cut inside its header");
}

fn truncated_non_last_segment<F: Disk>() {
    for position in [0, 2] {
        let target = build::<F>().1[position].records[2];
        for cut in [target.offset + 2, target.offset + 8, target.end - 1] {
            let (scratch, segments) = build::<F>();
            let path = &segments[position].path;
            edit(&scratch.fs, path, |bytes| bytes.truncate(cut as usize));
            let expected = corrupt(path, target.offset, Corruption::Truncated);
            assert_open_fails(&scratch, expected, &format!("segment {position} cut at {cut}"));
        }
        let (scratch, segments) = build::<F>();
        let path = &segments[position].path;
        edit(&scratch.fs, path, |bytes| bytes.truncate(20));
        assert_open_fails(&scratch, corrupt(path, 0, Corruption::Truncated), "cut inside a header");
        // Cut at a record boundary: the next segment no longer follows.
        let (scratch, segments) = build::<F>();
        edit(&scratch.fs, &segments[position].path, |bytes| bytes.truncate(target.offset as usize));
        let next = &segments[position + 1];
        let found = Index(next.first);
        let sequence = Corruption::IndexOutOfSequence { expected: Index(target.index), found };
        assert_open_fails(&scratch, corrupt(&next.path, 0, sequence), &format!("segment {position} cut at a record"));
    }
}

/// Damage to a metadata file (`META` or `IDENTITY`) at each field of its frame
/// `[magic 8][version u32][len u32][crc u32][payload]`.
fn metadata_damage<F: Disk>(name: &str) {
    let build = || {
        let (scratch, _) = build::<F>();
        let path = scratch.dir().join(name);
        (scratch, path)
    };
    let (scratch, path) = build();
    let len = scratch.fs.read(&path).expect("read").len() as u64;
    drop(scratch);
    let exact: [(u64, u8, u64, Corruption); 5] = [
        (0, 0, 0, Corruption::BadMagic),
        (9, 0, 8, Corruption::UnsupportedVersion(FORMAT_VERSION ^ (1 << 8))),
        (17, 3, 16, Corruption::Checksum),
        (20, 0, 16, Corruption::Checksum),
        (len - 1, 7, 16, Corruption::Checksum),
    ];
    for (byte, bit, offset, corruption) in exact {
        let (scratch, path) = build();
        flip(&scratch.fs, &path, byte, bit);
        assert_open_fails(&scratch, corrupt(&path, offset, corruption), &format!("{name}: bit {bit} of byte {byte}"));
    }
    for (byte, bit) in [(12, 0), (12, 1), (13, 0), (15, 7)] {
        let (scratch, path) = build();
        flip(&scratch.fs, &path, byte, bit);
        assert_open_fails_naming(&scratch, &path, &format!("{name}: bit {bit} of the length byte {byte}"));
    }
    for cut in [0, 5, 8, 10, 19, 20, len - 1] {
        let (scratch, path) = build();
        edit(&scratch.fs, &path, |bytes| bytes.truncate(cut as usize));
        assert_open_fails_naming(&scratch, &path, &format!("{name} cut at {cut}"));
    }
    let (scratch, path) = build();
    edit(&scratch.fs, &path, |bytes| bytes.push(0));
    assert_open_fails(&scratch, corrupt(&path, 16, Corruption::Checksum), &format!("{name} with a byte too many"));
}

fn meta_damage<F: Disk>() {
    metadata_damage::<F>("META");
}

fn identity_damage<F: Disk>() {
    metadata_damage::<F>("IDENTITY");
}

fn unknown_meta_version<F: Disk>() {
    let (scratch, _) = build::<F>();
    let path = scratch.dir().join("META");
    edit(&scratch.fs, &path, |bytes| {
        bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let mut covered = bytes[8..16].to_vec();
        covered.extend_from_slice(&bytes[20..]);
        bytes[16..20].copy_from_slice(&crc32fast::hash(&covered).to_le_bytes());
    });
    let unknown = Corruption::UnsupportedVersion(FORMAT_VERSION + 1);
    assert_open_fails(&scratch, corrupt(&path, 8, unknown), "META of an unknown version");
}

fn missing_segments<F: Disk>() {
    for position in [1, 2] {
        let (scratch, segments) = build::<F>();
        scratch.fs.remove(&segments[position].path).expect("remove");
        let next = &segments[position + 1];
        let sequence =
            Corruption::IndexOutOfSequence { expected: Index(segments[position].first), found: Index(next.first) };
        assert_open_fails(&scratch, corrupt(&next.path, 0, sequence), &format!("segment {position} missing"));
    }
    // The first segment missing: the log would start after a gap (docs/pitfalls.md #18).
    let (scratch, segments) = build::<F>();
    scratch.fs.remove(&segments[0].path).expect("remove");
    let gap = Corruption::GapAfterSnapshot { first: Index(4), snapshot: Index(0) };
    assert_open_fails(&scratch, corrupt(&segments[1].path, HEADER_BYTES, gap), "first segment missing");
}

fn segment_name_disagrees_with_header<F: Disk>() {
    for (position, name) in [(1, 5u64), (3, 11)] {
        let (scratch, segments) = build::<F>();
        let renamed = scratch.dir().join(format!("{name:020}.wal"));
        scratch.fs.rename(&segments[position].path, &renamed).expect("rename");
        let mismatch = Corruption::HeaderMismatch { header: Index(segments[position].first), name: Index(name) };
        assert_open_fails(&scratch, corrupt(&renamed, 12, mismatch), &format!("segment {position} renamed"));
    }
}

/// Records that pass their checksum but break the log's rules.
fn well_formed_records_out_of_order<F: Disk>() {
    let record = |entry: &Entry| {
        let payload = postcard::to_allocvec(entry).expect("serialize");
        let len = (payload.len() as u32).to_le_bytes();
        let mut covered = len.to_vec();
        covered.extend_from_slice(&payload);
        [&len[..], &crc32fast::hash(&covered).to_le_bytes(), &payload].concat()
    };
    let replace = |position: usize, index: usize, bytes: Vec<u8>| {
        let (scratch, segments) = build::<F>();
        let target = segments[position].records[index];
        edit(&scratch.fs, &segments[position].path, |file| {
            file.splice(target.offset as usize..target.end as usize, bytes);
        });
        (scratch, segments[position].path.clone(), target.offset)
    };
    let (scratch, path, offset) = replace(1, 1, record(&entry(6, 1)));
    let sequence = Corruption::IndexOutOfSequence { expected: Index(5), found: Index(6) };
    assert_open_fails(&scratch, corrupt(&path, offset, sequence), "an index skipped");
    let (scratch, path, offset) = replace(2, 2, record(&entry(9, 1)));
    let regression = Corruption::TermRegression { previous: Term(2), found: Term(1) };
    assert_open_fails(&scratch, corrupt(&path, offset, regression), "a term regression");
    let garbage = [0xffu8; 12];
    let mut covered = (garbage.len() as u32).to_le_bytes().to_vec();
    covered.extend_from_slice(&garbage);
    let undecodable = [&12u32.to_le_bytes()[..], &crc32fast::hash(&covered).to_le_bytes(), &garbage].concat();
    let (scratch, path, offset) = replace(0, 1, undecodable);
    assert_open_fails(&scratch, corrupt(&path, offset, Corruption::Decode), "an undecodable record");
}

fn identity_of_another_node<F: Disk>() {
    let (scratch, _) = build::<F>();
    let other = scratch.root.join("other");
    drop(DiskStorage::create(scratch.fs.clone(), &other, STRANGER, membership(), OPTIONS).expect("create"));
    let theirs = scratch.fs.read(&other.join("IDENTITY")).expect("read");
    write_file(&scratch.fs, &scratch.dir().join("IDENTITY"), &theirs);
    assert_open_fails(&scratch, DiskError::IdentityMismatch { expected: ME, found: STRANGER }, "their IDENTITY");
    let mismatch = DiskStorage::open(scratch.fs.clone(), &other, ME, OPTIONS).err();
    assert_eq!(mismatch, Some(DiskError::IdentityMismatch { expected: ME, found: STRANGER }), "their store");
}

fn not_initialized_and_already_initialized<F: Disk>() {
    let scratch = F::scratch();
    let missing = scratch.dir();
    assert_eq!(open(&scratch).err(), Some(DiskError::NotInitialized(missing.clone())), "no directory");
    scratch.fs.create_dir_all(&missing).expect("mkdir");
    assert_eq!(open(&scratch).err(), Some(DiskError::NotInitialized(missing.clone())), "an empty directory");
    drop(scratch);

    let (scratch, _) = build::<F>();
    let again = DiskStorage::create(scratch.fs.clone(), scratch.dir(), ME, Membership::default(), OPTIONS);
    assert_eq!(again.err(), Some(DiskError::AlreadyInitialized(scratch.dir())));
    assert_opens_with(&scratch, 12, "the store after a refused create");
    // A store whose IDENTITY is gone never opens (which error is a matter of policy: today
    // `NotInitialized`, which invites a `create` that would discard the vote).
    let (scratch, _) = build::<F>();
    scratch.fs.remove(&scratch.dir().join("IDENTITY")).expect("remove");
    assert!(open(&scratch).is_err(), "IDENTITY missing");
    let (scratch, _) = build::<F>();
    let meta = scratch.dir().join("META");
    scratch.fs.remove(&meta).expect("remove");
    match open(&scratch) {
        Err(DiskError::Io { path, .. } | DiskError::Corrupt { path, .. }) => assert_eq!(path, meta, "META missing"),
        other => panic!("META missing: {:?}", other.map(|store| held_entries(&store).len())),
    }
}

macro_rules! corruption_suite {
    ($module:ident, $fs:ty) => {
        mod $module {
            use super::*;

            #[test]
            fn header_damage() {
                super::header_damage::<$fs>();
            }

            #[test]
            fn unknown_segment_version() {
                super::unknown_segment_version::<$fs>();
            }

            #[test]
            fn record_damage_in_a_non_last_segment() {
                super::record_damage_in_a_non_last_segment::<$fs>();
            }

            #[test]
            fn record_damage_in_the_middle_of_the_last_segment() {
                super::record_damage_in_the_middle_of_the_last_segment::<$fs>();
            }

            #[test]
            fn length_past_the_end_in_the_middle_of_the_last_segment() {
                super::length_past_the_end_in_the_middle_of_the_last_segment::<$fs>();
            }

            #[test]
            fn damaged_last_record_is_a_torn_tail() {
                super::damaged_last_record_is_a_torn_tail::<$fs>();
            }

            #[test]
            fn truncated_last_segment_is_a_torn_tail() {
                super::truncated_last_segment_is_a_torn_tail::<$fs>();
            }

            #[test]
            fn truncated_non_last_segment() {
                super::truncated_non_last_segment::<$fs>();
            }

            #[test]
            fn meta_damage() {
                super::meta_damage::<$fs>();
            }

            #[test]
            fn identity_damage() {
                super::identity_damage::<$fs>();
            }

            #[test]
            fn unknown_meta_version() {
                super::unknown_meta_version::<$fs>();
            }

            #[test]
            fn missing_segments() {
                super::missing_segments::<$fs>();
            }

            #[test]
            fn segment_name_disagrees_with_header() {
                super::segment_name_disagrees_with_header::<$fs>();
            }

            #[test]
            fn well_formed_records_out_of_order() {
                super::well_formed_records_out_of_order::<$fs>();
            }

            #[test]
            fn identity_of_another_node() {
                super::identity_of_another_node::<$fs>();
            }

            #[test]
            fn not_initialized_and_already_initialized() {
                super::not_initialized_and_already_initialized::<$fs>();
            }
        }
    };
}

corruption_suite!(simfs, SimFs);
corruption_suite!(stdfs, StdFs);

/// The fixture's files, durable content by path.
fn fixture_files() -> (Vec<Segment>, Vec<(PathBuf, Vec<u8>)>) {
    let (scratch, segments) = build::<SimFs>();
    let files = scratch.fs.durable_snapshot().into_iter().collect();
    (segments, files)
}

/// A fresh disk holding `files`.
fn restore(files: &[(PathBuf, Vec<u8>)]) -> Scratch<SimFs> {
    let scratch = SimFs::scratch();
    scratch.fs.create_dir_all(&scratch.dir()).expect("mkdir");
    for (path, bytes) in files {
        write_file(&scratch.fs, path, bytes);
    }
    scratch
}

/// What opening a damaged copy of the fixture may give: a corruption error naming a file of the
/// store that leaves the disk as it was, or, where `torn_allowed` says the damage may be a torn
/// tail, the entries `1..=11` (and only those).
fn judge(scratch: &Scratch<SimFs>, torn_allowed: bool, naming: &[PathBuf]) -> Result<(), String> {
    let before = scratch.fs.durable_snapshot();
    match open(scratch) {
        Err(DiskError::Corrupt { path, .. }) if naming.contains(&path) => {
            if scratch.fs.durable_snapshot() != before {
                return Err("a failed recovery changed the disk".to_owned());
            }
            Ok(())
        }
        Err(error) => Err(format!("unexpected error {error}")),
        Ok(store) => {
            let held = held_entries(&store);
            if torn_allowed && held == all_entries()[..11] {
                Ok(())
            } else {
                Err(format!("opened with {} entries (last {:?})", held.len(), held.last().map(|e| e.index)))
            }
        }
    }
}

/// Every single-bit flip of every file is either detected or, inside the last record of the last
/// segment only, cut off as a torn tail.
#[test]
fn every_bit_flip_is_detected_or_a_torn_last_record() {
    let (segments, files) = fixture_files();
    let last_record = segments[3].records[2];
    let mut failures = Vec::new();
    for (path, bytes) in &files {
        for byte in 0..bytes.len() as u64 {
            for bit in 0..8 {
                let scratch = restore(&files);
                scratch.fs.flip_bit(path, byte, bit).expect("flip");
                let torn_allowed = *path == segments[3].path && byte >= last_record.offset;
                if let Err(why) = judge(&scratch, torn_allowed, std::slice::from_ref(path)) {
                    failures.push(format!("{path:?} byte {byte} bit {bit}: {why}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} silent or wrong outcomes: {failures:#?}", failures.len());
}

/// Every truncation of every file is detected, except a truncation of the last segment, which
/// is a torn tail: the store then holds exactly the records left whole.
#[test]
fn every_truncation_is_detected_or_a_torn_tail() {
    let (segments, files) = fixture_files();
    let segment_paths: Vec<PathBuf> = segments.iter().map(|s| s.path.clone()).collect();
    let mut failures = Vec::new();
    for (path, bytes) in &files {
        for len in 0..bytes.len() {
            let scratch = restore(&files);
            edit(&scratch.fs, path, |content| content.truncate(len));
            let outcome = if *path == segments[3].path {
                let whole = segments[3].records.iter().filter(|r| r.end <= len as u64).count() as u64;
                open(&scratch).map(|store| held_entries(&store)).map_err(|error| error.to_string()).and_then(|held| {
                    match held == all_entries()[..(9 + whole) as usize] {
                        true => Ok(()),
                        false => Err(format!("opened with {} entries, expected {}", held.len(), 9 + whole)),
                    }
                })
            } else if segment_paths.contains(path) {
                judge(&scratch, false, &segment_paths)
            } else {
                judge(&scratch, false, std::slice::from_ref(path))
            };
            if let Err(why) = outcome {
                failures.push(format!("{path:?} cut to {len} bytes: {why}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} wrong outcomes: {failures:#?}", failures.len());
}
