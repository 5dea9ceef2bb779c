//! The shared write-ahead log's segments filled with zeros ahead of their records
//! ([`WalOptions::preallocate_bytes`]): the records go over the zeros, and recovery reads zeros
//! after a segment's last record as space no record reached, damage before zeros as a torn write
//! unless a whole record follows it, and a last segment whose header never reached the disk as
//! torn. Segments of format version 1 (never filled) are still read and never filled.

use std::path::PathBuf;

use raft_core::{GroupId, HardState, Index, NodeId, Storage, Term};
use raft_storage::testing::SimFs;
use raft_storage::{Corruption, DiskError, Identity, LogStore, Repair, SharedWal, WalOptions};

mod common;
use common::fill::{data_end, overwrite, set_version};
use common::{membership, run};

const ME: Identity = Identity { cluster_id: 9, node_id: NodeId(1) };
/// Segments of 4 KiB, filled 1 KiB ahead of their records.
const FILLED: WalOptions = WalOptions { segment_bytes_max: 4096, cache_bytes_max: 1 << 20, preallocate_bytes: 1024 };

fn dir() -> PathBuf {
    PathBuf::from("/srv/wal")
}

fn open(fs: &SimFs, options: WalOptions) -> Result<SharedWal<SimFs>, DiskError> {
    SharedWal::open(fs.clone(), dir(), ME, options)
}

fn hard() -> Option<HardState> {
    Some(HardState { term: Term(1), vote: Some(NodeId(1)), commit: Index(0) })
}

/// The segments' paths, oldest first.
fn segments(fs: &SimFs) -> Vec<PathBuf> {
    common::fill::segments(fs, &dir(), ".mwal")
}

fn last_segment(fs: &SimFs) -> PathBuf {
    segments(fs).pop().expect("a segment")
}

/// A WAL with group 1 holding entries `1..=last` of term 1, dropped and crashed.
fn group_with(fs: &SimFs, options: WalOptions, last: u64) {
    let wal = SharedWal::create(fs.clone(), dir(), ME, options).expect("create");
    let mut store = wal.create_group(GroupId(1), membership()).expect("group");
    store.persist(hard(), &run(1, last, 1)).expect("persist");
    drop((store, wal));
    fs.crash();
}

/// Group 1's entries after a reopen.
fn entries(wal: &SharedWal<SimFs>) -> Vec<raft_core::Entry> {
    let store = wal.group(GroupId(1)).expect("group 1");
    let last = store.last_index().expect("last");
    store.entries(Index(1), last.next(), u64::MAX).expect("entries")
}

#[test]
fn records_go_over_zeros_filled_ahead_and_recover_clean() {
    let fs = SimFs::new(1);
    let wal = SharedWal::create(fs.clone(), dir(), ME, FILLED).expect("create");
    let mut store = wal.create_group(GroupId(1), membership()).expect("group");
    store.persist(hard(), &run(1, 5, 1)).expect("persist");
    let last = last_segment(&fs);
    let durable = fs.read_durable(&last).expect("durable");
    let end = data_end(&durable);
    assert!(durable.len() as u64 > end + 512, "zeros ahead of the records: {} of {}", end, durable.len());
    assert_eq!(wal.segment_bytes(), durable.len() as u64, "the log's size is its files' size, zeros included");
    store.persist(None, &run(6, 8, 1)).expect("persist");
    let now = fs.read_durable(&last).expect("durable");
    assert_eq!(now.len(), durable.len(), "a write within the filled space changes no length");
    assert!(data_end(&now) > end, "the records went over the zeros");
    drop((store, wal));
    fs.crash();
    let wal = open(&fs, FILLED).expect("open");
    assert!(wal.recovery_report().is_clean(), "{}", wal.recovery_report());
    assert_eq!(entries(&wal), run(1, 8, 1));
    // After a reopen the records go where the records end, not where the file does.
    let mut store = wal.group(GroupId(1)).expect("group");
    store.persist(None, &run(9, 10, 1)).expect("persist");
    drop((store, wal));
    fs.crash();
    let wal = open(&fs, FILLED).expect("open again");
    assert!(wal.recovery_report().is_clean(), "{}", wal.recovery_report());
    assert_eq!(entries(&wal), run(1, 10, 1));
}

#[test]
fn every_segment_is_filled_at_most_to_its_limit_and_cut_to_its_records_when_closed() {
    let fs = SimFs::new(2);
    let wal = SharedWal::create(fs.clone(), dir(), ME, FILLED).expect("create");
    let mut store = wal.create_group(GroupId(1), membership()).expect("group");
    for first in (1..=400).step_by(20) {
        store.persist(hard(), &run(first, first + 19, 1)).expect("persist");
    }
    let paths = segments(&fs);
    assert!(paths.len() > 2, "the workload rotates: {paths:?}");
    for path in &paths {
        let bytes = fs.read_durable(path).expect("durable");
        assert!(bytes.len() <= 4096, "{} holds {} bytes", path.display(), bytes.len());
    }
    // A closed segment is cut to its records (a record may end in a zero byte or two; a fill
    // would leave hundreds).
    let closed = fs.read_durable(&paths[0]).expect("durable");
    assert!(closed.len() as u64 - data_end(&closed) < 8, "a closed segment keeps no fill");
    drop((store, wal));
    fs.crash();
    let wal = open(&fs, FILLED).expect("open");
    assert!(wal.recovery_report().is_clean(), "{}", wal.recovery_report());
    assert_eq!(entries(&wal), run(1, 400, 1));
}

#[test]
fn a_torn_record_before_the_zeros_is_cut_and_reported() {
    let fs = SimFs::new(3);
    group_with(&fs, FILLED, 5);
    let last = last_segment(&fs);
    let end = data_end(&fs.read_durable(&last).expect("durable"));
    // The last record's last sectors never reached the disk.
    overwrite(&fs, &last, end - 5, &[0; 5]);
    let wal = open(&fs, FILLED).expect("open");
    let repairs = wal.recovery_report().repairs().to_vec();
    assert!(matches!(&repairs[..], [Repair::TornTailTruncated { file, .. }] if *file == last), "{repairs:?}");
    assert_eq!(entries(&wal), run(1, 4, 1), "only the torn record is lost");
    // The log goes on from the cut.
    let mut store = wal.group(GroupId(1)).expect("group");
    store.persist(None, &run(5, 7, 2)).expect("persist");
    drop((store, wal));
    fs.crash();
    let wal = open(&fs, FILLED).expect("open again");
    assert!(wal.recovery_report().is_clean(), "{}", wal.recovery_report());
    assert_eq!(entries(&wal), [run(1, 4, 1), run(5, 7, 2)].concat());
}

#[test]
fn damage_with_a_whole_record_after_it_is_corruption_though_zeros_follow() {
    let fs = SimFs::new(4);
    group_with(&fs, FILLED, 5);
    let last = last_segment(&fs);
    assert!(data_end(&fs.read_durable(&last).expect("durable")) < 4096, "zeros follow the records");
    // The first record of the segment starts after its 24-byte header.
    fs.flip_bit(&last, 24 + 8 + 3, 0).expect("flip");
    assert_eq!(
        open(&fs, FILLED).err(),
        Some(DiskError::Corrupt { path: last, offset: 24, corruption: Corruption::Checksum })
    );
}

#[test]
fn zeros_over_the_last_records_of_a_segment_that_is_not_the_last_are_damage() {
    let fs = SimFs::new(8);
    group_with(&fs, FILLED, 600);
    let paths = segments(&fs);
    assert!(paths.len() > 2, "the workload rotates: {paths:?}");
    // Its last records lost to zeros: in the newest segment they would read as space no record
    // reached; here the segment was cut to its records when the next one started.
    let len = fs.read_durable(&paths[0]).expect("durable").len() as u64;
    overwrite(&fs, &paths[0], len - 30, &[0; 30]);
    assert!(matches!(open(&fs, FILLED).err(), Some(DiskError::Corrupt { path, .. }) if path == paths[0]));
}

#[test]
fn a_header_that_never_reached_the_disk_is_a_torn_last_segment_and_corruption_before() {
    let fs = SimFs::new(5);
    group_with(&fs, FILLED, 600);
    let paths = segments(&fs);
    assert!(paths.len() > 2, "the workload rotates: {paths:?}");
    let last = paths.last().expect("segments").clone();
    // A header zeroed over whole records is damage.
    overwrite(&fs, &last, 0, &[0; 24]);
    assert!(matches!(open(&fs, FILLED).err(), Some(DiskError::Corrupt { corruption: Corruption::BadMagic, .. })));
    // A segment nothing of which reached the disk (its length did: the fill, or the file
    // system's metadata) is torn.
    let len = fs.read_durable(&last).expect("durable").len();
    overwrite(&fs, &last, 0, &vec![0; len]);
    let wal = open(&fs, FILLED).expect("open");
    let repairs = wal.recovery_report().repairs().to_vec();
    assert!(matches!(&repairs[..], [Repair::TornSegmentRemoved { file, .. }] if *file == last), "{repairs:?}");
    assert!(!segments(&fs).contains(&last), "the torn segment is gone");
    let kept = entries(&wal);
    assert!(!kept.is_empty() && kept.len() < 600, "the older segments' entries stay: {}", kept.len());
    assert_eq!(kept, run(1, kept.len() as u64, 1));
    drop(wal);
    // Not the last segment: corruption.
    let middle = segments(&fs)[1].clone();
    overwrite(&fs, &middle, 0, &[0; 24]);
    assert_eq!(
        open(&fs, FILLED).err(),
        Some(DiskError::Corrupt { path: middle, offset: 0, corruption: Corruption::BadMagic })
    );
}

#[test]
fn a_segment_of_format_version_1_is_read_and_never_filled() {
    let fs = SimFs::new(6);
    let unfilled = WalOptions { preallocate_bytes: 0, ..FILLED };
    group_with(&fs, unfilled, 3);
    let last = last_segment(&fs);
    let bytes = fs.read_durable(&last).expect("durable");
    assert_eq!(data_end(&bytes), bytes.len() as u64, "no fill");
    set_version(&fs, &last, 1);
    let wal = open(&fs, FILLED).expect("open a version 1 segment");
    assert!(wal.recovery_report().is_clean(), "{}", wal.recovery_report());
    assert_eq!(entries(&wal), run(1, 3, 1));
    let mut store = wal.group(GroupId(1)).expect("group");
    store.persist(None, &run(4, 6, 1)).expect("persist");
    drop((store, wal));
    let bytes = fs.read_durable(&last).expect("durable");
    assert_eq!(data_end(&bytes), bytes.len() as u64, "a version 1 segment is never filled");
    fs.crash();
    let wal = open(&fs, FILLED).expect("open again");
    assert_eq!(entries(&wal), run(1, 6, 1));
    drop(wal);
    // Zeros after a version 1 segment's records are damage, not space.
    let len = fs.read_durable(&last).expect("durable").len() as u64;
    overwrite(&fs, &last, len, &[0; 16]);
    assert_eq!(
        open(&fs, FILLED).err(),
        Some(DiskError::Corrupt { path: last.clone(), offset: len, corruption: Corruption::Checksum })
    );
    set_version(&fs, &last, 3);
    assert_eq!(
        open(&fs, FILLED).err(),
        Some(DiskError::Corrupt { path: last, offset: 8, corruption: Corruption::UnsupportedVersion(3) })
    );
}
