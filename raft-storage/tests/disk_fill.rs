//! `DiskStorage`'s segments filled with zeros ahead of their records
//! ([`DiskOptions::preallocate_bytes`]): the records go over the zeros, and recovery reads zeros
//! after a segment's last record as space no record reached, damage before zeros as a torn write
//! unless a whole record follows it, and a last segment whose header never reached the disk as
//! torn. Segments of format version 4 (never filled) are still read and never filled.

use std::path::PathBuf;

use raft_core::{HardState, Index, NodeId, Storage, Term};
use raft_storage::testing::SimFs;
use raft_storage::{Corruption, DiskError, DiskOptions, DiskStorage, Identity, LogStore, Repair};

mod common;
use common::fill::{data_end, overwrite, set_version};
use common::{membership, run};

const ME: Identity = Identity { cluster_id: 4, node_id: NodeId(1) };
/// Segments of 4 KiB, filled 1 KiB ahead of their records.
const FILLED: DiskOptions = DiskOptions { segment_bytes_max: 4096, preallocate_bytes: 1024 };

fn dir() -> PathBuf {
    PathBuf::from("/var/raft/fill")
}

fn open(fs: &SimFs, options: DiskOptions) -> Result<DiskStorage<SimFs>, DiskError> {
    DiskStorage::open(fs.clone(), dir(), ME, options)
}

fn hard() -> Option<HardState> {
    Some(HardState { term: Term(2), vote: Some(NodeId(1)), commit: Index(0) })
}

/// The segments' paths, oldest first.
fn segments(fs: &SimFs) -> Vec<PathBuf> {
    common::fill::segments(fs, &dir(), ".wal")
}

fn last_segment(fs: &SimFs) -> PathBuf {
    segments(fs).pop().expect("a segment")
}

/// A store holding entries `1..=last` of term 1, dropped and crashed.
fn store_with(fs: &SimFs, options: DiskOptions, last: u64) {
    let mut store = DiskStorage::create(fs.clone(), dir(), ME, membership(), options).expect("create");
    store.persist(hard(), &run(1, last, 1)).expect("persist");
    drop(store);
    fs.crash();
}

fn entries(store: &DiskStorage<SimFs>) -> Vec<raft_core::Entry> {
    let last = store.last_index().expect("last");
    store.entries(Index(1), last.next(), u64::MAX).expect("entries")
}

#[test]
fn records_go_over_zeros_filled_ahead_and_recover_clean() {
    let fs = SimFs::new(1);
    let mut store = DiskStorage::create(fs.clone(), dir(), ME, membership(), FILLED).expect("create");
    store.persist(hard(), &run(1, 5, 1)).expect("persist");
    let last = last_segment(&fs);
    let durable = fs.read_durable(&last).expect("durable");
    let end = data_end(&durable);
    assert_eq!(durable.len() as u64, end + 1024, "1 KiB of zeros after the records");
    store.persist(None, &run(6, 8, 1)).expect("persist");
    let now = fs.read_durable(&last).expect("durable");
    assert_eq!(now.len(), durable.len(), "a write within the filled space changes no length");
    assert!(data_end(&now) > end, "the records went over the zeros");
    drop(store);
    fs.crash();
    let mut store = open(&fs, FILLED).expect("open");
    assert!(store.recovery_report().is_clean(), "{}", store.recovery_report());
    assert_eq!(entries(&store), run(1, 8, 1));
    // After a reopen the records go where the records end, not where the file does; a
    // conflicting suffix cuts the file, and the next append fills again.
    store.persist(None, &run(9, 10, 1)).expect("persist");
    store.persist(Some(HardState { term: Term(3), ..hard().expect("hard") }), &run(7, 9, 3)).expect("truncate");
    drop(store);
    fs.crash();
    let store = open(&fs, FILLED).expect("open again");
    assert!(store.recovery_report().is_clean(), "{}", store.recovery_report());
    assert_eq!(entries(&store), [run(1, 6, 1), run(7, 9, 3)].concat());
    let bytes = fs.read_durable(&last).expect("durable");
    assert!(data_end(&bytes) < bytes.len() as u64, "filled again after the cut");
}

#[test]
fn every_segment_is_filled_at_most_to_its_limit_and_cut_to_its_records_when_closed() {
    let fs = SimFs::new(2);
    let mut store = DiskStorage::create(fs.clone(), dir(), ME, membership(), FILLED).expect("create");
    for first in (1..=600).step_by(20) {
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
    drop(store);
    fs.crash();
    let store = open(&fs, FILLED).expect("open");
    assert!(store.recovery_report().is_clean(), "{}", store.recovery_report());
    assert_eq!(entries(&store), run(1, 600, 1));
}

#[test]
fn a_torn_record_before_the_zeros_is_cut_and_reported() {
    let fs = SimFs::new(3);
    store_with(&fs, FILLED, 5);
    let last = last_segment(&fs);
    let bytes = fs.read_durable(&last).expect("durable");
    let end = data_end(&bytes);
    // The last record's last sectors never reached the disk.
    overwrite(&fs, &last, end - 5, &[0; 5]);
    let mut store = open(&fs, FILLED).expect("open");
    let repairs = store.recovery_report().repairs().to_vec();
    assert!(
        matches!(&repairs[..], [Repair::TornTailTruncated { file, offset, bytes_dropped }]
            if *file == last && offset + bytes_dropped == bytes.len() as u64),
        "{repairs:?}"
    );
    assert_eq!(entries(&store), run(1, 4, 1), "only the torn record is lost");
    store.persist(None, &run(5, 7, 2)).expect("persist");
    drop(store);
    fs.crash();
    let store = open(&fs, FILLED).expect("open again");
    assert!(store.recovery_report().is_clean(), "{}", store.recovery_report());
    assert_eq!(entries(&store), [run(1, 4, 1), run(5, 7, 2)].concat());
}

#[test]
fn damage_with_a_whole_record_after_it_is_corruption_though_zeros_follow() {
    let fs = SimFs::new(4);
    store_with(&fs, FILLED, 5);
    let last = last_segment(&fs);
    assert!(data_end(&fs.read_durable(&last).expect("durable")) < 4096, "zeros follow the records");
    // The first record of the segment starts after its 24-byte header.
    fs.flip_bit(&last, 24 + 8 + 3, 0).expect("flip");
    let expected = DiskError::Corrupt { path: last, offset: 24, corruption: Corruption::Checksum };
    assert_eq!(open(&fs, FILLED).err(), Some(expected));
}

#[test]
fn damage_over_several_records_with_whole_records_after_it_is_corruption() {
    let fs = SimFs::new(7);
    store_with(&fs, FILLED, 40);
    let last = last_segment(&fs);
    // A block over several records (not the last ones) is lost: the entries after it are whole
    // but do not follow the first damaged one.
    overwrite(&fs, &last, 100, &[0; 120]);
    assert!(matches!(open(&fs, FILLED).err(), Some(DiskError::Corrupt { corruption: Corruption::Checksum, .. })));
}

#[test]
fn zeros_after_the_records_of_a_segment_that_is_not_the_last_are_damage() {
    let fs = SimFs::new(8);
    store_with(&fs, FILLED, 600);
    let paths = segments(&fs);
    assert!(paths.len() > 2, "the workload rotates: {paths:?}");
    let len = fs.read_durable(&paths[0]).expect("durable").len() as u64;
    overwrite(&fs, &paths[0], len, &[0; 64]);
    let expected = DiskError::Corrupt { path: paths[0].clone(), offset: len, corruption: Corruption::Checksum };
    assert_eq!(open(&fs, FILLED).err(), Some(expected));
}

#[test]
fn a_header_that_never_reached_the_disk_is_a_torn_last_segment_and_corruption_before() {
    let fs = SimFs::new(5);
    store_with(&fs, FILLED, 600);
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
    let store = open(&fs, FILLED).expect("open");
    let repairs = store.recovery_report().repairs().to_vec();
    assert!(matches!(&repairs[..], [Repair::TornSegmentRemoved { file, .. }] if *file == last), "{repairs:?}");
    assert!(!segments(&fs).contains(&last), "the torn segment is gone");
    let kept = entries(&store);
    assert!(!kept.is_empty() && kept.len() < 600, "the older segments' entries stay: {}", kept.len());
    assert_eq!(kept, run(1, kept.len() as u64, 1));
    drop(store);
    // Not the last segment: corruption.
    let remaining = segments(&fs);
    assert!(remaining.len() > 1, "segments before the last: {remaining:?}");
    overwrite(&fs, &remaining[0], 0, &[0; 24]);
    let expected = DiskError::Corrupt { path: remaining[0].clone(), offset: 0, corruption: Corruption::BadMagic };
    assert_eq!(open(&fs, FILLED).err(), Some(expected));
}

#[test]
fn a_segment_of_format_version_4_is_read_and_never_filled() {
    let fs = SimFs::new(6);
    let unfilled = DiskOptions { preallocate_bytes: 0, ..FILLED };
    store_with(&fs, unfilled, 3);
    let last = last_segment(&fs);
    let bytes = fs.read_durable(&last).expect("durable");
    assert_eq!(data_end(&bytes), bytes.len() as u64, "no fill");
    set_version(&fs, &last, 4);
    let mut store = open(&fs, FILLED).expect("open a version 4 segment");
    assert!(store.recovery_report().is_clean(), "{}", store.recovery_report());
    assert_eq!(entries(&store), run(1, 3, 1));
    store.persist(None, &run(4, 6, 1)).expect("persist");
    drop(store);
    let bytes = fs.read_durable(&last).expect("durable");
    assert_eq!(data_end(&bytes), bytes.len() as u64, "a version 4 segment is never filled");
    fs.crash();
    let store = open(&fs, FILLED).expect("open again");
    assert_eq!(entries(&store), run(1, 6, 1));
    drop(store);
    // Zeros after a version 4 segment's records are damage, not space.
    let len = fs.read_durable(&last).expect("durable").len() as u64;
    overwrite(&fs, &last, len, &[0; 16]);
    let expected = DiskError::Corrupt { path: last.clone(), offset: len, corruption: Corruption::Checksum };
    assert_eq!(open(&fs, FILLED).err(), Some(expected));
    set_version(&fs, &last, 6);
    let expected = DiskError::Corrupt { path: last, offset: 8, corruption: Corruption::UnsupportedVersion(6) };
    assert_eq!(open(&fs, FILLED).err(), Some(expected));
}
