//! What recovery repairs, it reports: [`DiskStorage::recovery_report`] names every torn tail it
//! cut (file, offset, bytes dropped) and every segment or snapshot file it removed, and a clean
//! open reports nothing.
//!
//! The targeted tests build each situation (by hand, or by a power loss at the one operation
//! that leaves it) and check the exact report. The exhaustive one loses power at every
//! operation of a workload and checks the report against what recovery really changed on disk.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use raft_core::{HardState, Index, NodeId, SnapshotMeta, Storage, Term};
use raft_storage::testing::SimFs;
use raft_storage::{DiskError, DiskOptions, DiskStorage, FileSystem, FsFile, Identity, LogStore, Repair};

mod common;
use common::{membership, run};

const ME: Identity = Identity { cluster_id: 4, node_id: NodeId(1) };
/// Four or five records per segment: logs span several segments.
const OPTIONS: DiskOptions = DiskOptions { segment_bytes_max: 100, preallocate_bytes: 0 };
/// The segment header's size (see the `disk` module docs).
const HEADER_BYTES: u64 = 24;
/// The staging file's name (see the `disk` module docs).
const STAGING_FILE: &str = "snapshot.staging";

fn dir() -> PathBuf {
    PathBuf::from("/var/raft/node-1")
}

fn hard(term: u64) -> Option<HardState> {
    Some(HardState { term: Term(term), vote: Some(NodeId(1)), commit: Index(0) })
}

fn meta(index: u64, term: u64) -> SnapshotMeta {
    // The stores do not check the data against `data_crc32` (raft-core and raft-net do).
    SnapshotMeta { index: Index(index), term: Term(term), membership: membership(), data_crc32: 0 }
}

fn snapshot_path(meta: &SnapshotMeta) -> PathBuf {
    dir().join(format!("snapshot-{:020}-{:020}.snap", meta.index.0, meta.term.0))
}

fn segment_path(first_index: u64) -> PathBuf {
    dir().join(format!("{first_index:020}.wal"))
}

fn create(fs: &SimFs) -> DiskStorage<SimFs> {
    DiskStorage::create(fs.clone(), dir(), ME, membership(), OPTIONS).expect("create")
}

fn open(fs: &SimFs) -> DiskStorage<SimFs> {
    DiskStorage::open(fs.clone(), dir(), ME, OPTIONS).unwrap_or_else(|error| panic!("open: {error}"))
}

/// The segment files, oldest first.
fn segments(fs: &SimFs) -> Vec<PathBuf> {
    fs.list(&dir()).expect("list").into_iter().filter(|name| name.ends_with(".wal")).map(|n| dir().join(n)).collect()
}

/// The byte offset of each record of a segment file.
fn record_offsets(bytes: &[u8]) -> Vec<u64> {
    let mut offsets = Vec::new();
    let mut offset = HEADER_BYTES;
    while offset < bytes.len() as u64 {
        offsets.push(offset);
        let at = offset as usize;
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"));
        offset += 8 + u64::from(len);
    }
    offsets
}

/// Writes `bytes` as the whole file `path`, durably.
fn write_durably(fs: &SimFs, path: &Path, bytes: &[u8]) {
    let mut file = fs.create(path).expect("create");
    file.append(bytes).expect("append");
    file.sync().expect("sync");
    fs.sync_dir(&dir()).expect("sync dir");
}

/// A store of entries 1..=12 (term 1) over several segments.
fn twelve_entries(fs: &SimFs) -> DiskStorage<SimFs> {
    let mut store = create(fs);
    store.persist(hard(1), &run(1, 12, 1)).expect("persist");
    assert!(store.segment_count() >= 3, "the log spans several segments");
    store
}

#[test]
fn a_clean_open_reports_nothing() {
    let fs = SimFs::new(1);
    let mut store = twelve_entries(&fs);
    assert!(store.recovery_report().is_clean(), "a store just created");
    store.save_snapshot(&meta(4, 1), &[4; 300]).expect("save");
    store.compact(Index(3), Term(1)).expect("compact");
    store.write_snapshot_chunk(&meta(9, 1), 0, &[9; 100]).expect("chunk");
    store.install_snapshot(&meta(9, 1)).expect("install");
    store.persist(hard(2), &run(13, 20, 2)).expect("persist");
    drop(store);
    let store = open(&fs);
    assert_eq!(store.recovery_report().repairs(), [], "after a clean shutdown");
    assert_eq!(store.recovery_report().to_string(), "nothing repaired");
    drop(store);
    fs.crash();
    assert!(open(&fs).recovery_report().is_clean(), "after a power loss with nothing in flight");
}

/// A closed store of entries 1..=12 on a fresh disk: the disk, the last segment's path and its
/// content.
fn last_segment_of_twelve(seed: u64) -> (SimFs, PathBuf, Vec<u8>) {
    let fs = SimFs::new(seed);
    drop(twelve_entries(&fs));
    let last = segments(&fs).pop().expect("a segment");
    let bytes = fs.read(&last).expect("read");
    (fs, last, bytes)
}

#[test]
fn a_partial_last_record_is_cut_and_reported() {
    let (fs, last, mut bytes) = last_segment_of_twelve(2);
    let len = bytes.len() as u64;
    bytes.extend_from_slice(&[17, 0, 0, 0, 1, 2]); // A record's prefix, cut short.
    write_durably(&fs, &last, &bytes);
    let store = open(&fs);
    let cut = Repair::TornTailTruncated { file: last.clone(), offset: len, bytes_dropped: 6 };
    assert_eq!(store.recovery_report().repairs(), [cut]);
    assert_eq!(store.last_index(), Ok(Index(12)), "no entry lost");
    assert_eq!(fs.read_durable(&last).map(|bytes| bytes.len() as u64), Some(len), "the cut is durable");
    drop(store);
    assert!(open(&fs).recovery_report().is_clean(), "nothing left to repair");
}

#[test]
fn a_damaged_last_record_is_cut_at_its_start_and_reported() {
    let (fs, last, bytes) = last_segment_of_twelve(3);
    let len = bytes.len() as u64;
    let record = *record_offsets(&bytes).last().expect("a record");
    fs.flip_bit(&last, len - 1, 0).expect("flip");
    let store = open(&fs);
    let cut = Repair::TornTailTruncated { file: last.clone(), offset: record, bytes_dropped: len - record };
    assert_eq!(store.recovery_report().repairs(), [cut]);
    assert_eq!(store.last_index(), Ok(Index(11)), "the torn record is gone");
}

#[test]
fn a_torn_segment_header_removes_the_segment_and_is_reported() {
    let fs = SimFs::new(4);
    drop(twelve_entries(&fs));
    let torn = segment_path(13);
    write_durably(&fs, &torn, b"RAFTWAL1\x03\x00");
    let store = open(&fs);
    assert_eq!(
        store.recovery_report().repairs(),
        [Repair::TornSegmentRemoved { file: torn.clone(), bytes_dropped: 10 }]
    );
    assert_eq!(store.last_index(), Ok(Index(12)));
    let name = torn.file_name().and_then(|name| name.to_str()).expect("a name");
    assert!(!fs.durable_file_names(&dir()).iter().any(|n| n == name), "the removal is durable");
}

/// Runs `change` on a fresh copy of a store built by `build`, losing power at each of its
/// operations in turn; returns each recovered store.
fn crash_at_each_operation(
    build: impl Fn(&SimFs) -> DiskStorage<SimFs>,
    change: impl Fn(&mut DiskStorage<SimFs>),
) -> Vec<DiskStorage<SimFs>> {
    let probe = SimFs::new(0);
    let mut store = build(&probe);
    let start = probe.op_count();
    change(&mut store);
    let total = probe.op_count() - start;
    (0..total)
        .map(|k| {
            let fs = SimFs::new(k);
            let mut store = build(&fs);
            fs.crash_after(k);
            change(&mut store);
            drop(store);
            fs.crash();
            open(&fs)
        })
        .collect()
}

fn first_index(segment: &Path) -> u64 {
    let name = segment.file_name().and_then(|name| name.to_str()).expect("a name");
    name.trim_end_matches(".wal").parse().expect("a segment name")
}

/// A compaction writes the new boundary to META, then removes the segments it covers: a power
/// loss in between leaves them for recovery to remove.
#[test]
fn segments_a_compaction_left_behind_are_removed_and_reported() {
    let probe = SimFs::new(5);
    drop(twelve_entries(&probe));
    let files = segments(&probe);
    // Covered by a boundary at 9: each segment whose successor starts at or below 10.
    let covered: Vec<&PathBuf> =
        files.windows(2).take_while(|pair| first_index(&pair[1]) <= 10).map(|pair| &pair[0]).collect();
    assert!(!covered.is_empty(), "the compaction covers some segments");
    let recovered = crash_at_each_operation(twelve_entries, |store| drop(store.compact(Index(9), Term(1))));
    let first_compacted =
        recovered.iter().find(|store| store.log_boundary().0 == Index(9)).expect("a crash after META");
    let expected: Vec<Repair> = covered
        .iter()
        .map(|file| Repair::CoveredSegmentRemoved { file: (*file).clone(), boundary: Index(9) })
        .collect();
    assert_eq!(first_compacted.recovery_report().repairs(), expected, "the first crash after the META write");
}

/// The store before an install: entries 1..=12 of term 1 and the snapshot (4, 1).
fn with_snapshot(fs: &SimFs) -> DiskStorage<SimFs> {
    let mut store = twelve_entries(fs);
    store.save_snapshot(&meta(4, 1), &[4; 300]).expect("save");
    store
}

/// Receives snapshot `meta` (in one chunk) and installs it.
fn receive(store: &mut DiskStorage<SimFs>, meta: &SnapshotMeta) -> Result<(), DiskError> {
    store.write_snapshot_chunk(meta, 0, &[7; 200])?;
    store.install_snapshot(meta)
}

/// Loses power at each operation of an install of `new` over [`with_snapshot`]'s store, and
/// checks the report of the first recovery that finds `new` installed: every segment removed
/// (the newest first) as `removed` says, then the previous snapshot's file. Returns every
/// recovered store.
fn install_is_finished_and_reported(
    new: &SnapshotMeta,
    removed: fn(PathBuf, Index) -> Repair,
) -> Vec<DiskStorage<SimFs>> {
    let probe = SimFs::new(6);
    drop(with_snapshot(&probe));
    let files = segments(&probe);
    let recovered = crash_at_each_operation(with_snapshot, |store| drop(receive(store, new)));
    let first_new = recovered.iter().find(|store| store.snapshot().as_ref() == Ok(new)).expect("a crash after META");
    let mut expected: Vec<Repair> = files.into_iter().rev().map(|file| removed(file, new.index)).collect();
    expected.push(Repair::StraySnapshotRemoved { file: snapshot_path(&meta(4, 1)) });
    assert_eq!(first_new.recovery_report().repairs(), expected, "the first crash after the META write");
    recovered
}

/// An install whose snapshot conflicts with the log (index 10 holds term 1, the snapshot says
/// term 2) replaces the whole log: META first, then the segments and the previous snapshot file
/// go. A power loss in between leaves them for recovery, which names each one.
#[test]
fn an_install_that_supersedes_the_log_is_finished_and_reported() {
    let new = meta(10, 2);
    let superseded = |file, boundary| Repair::SupersededSegmentRemoved { file, boundary };
    let recovered = install_is_finished_and_reported(&new, superseded);
    // The last crash before META was replaced: the new snapshot's file is durable, META does
    // not name it yet.
    let before = recovered.iter().rev().find(|store| store.snapshot() == Ok(meta(4, 1))).expect("a crash before");
    assert_eq!(before.recovery_report().repairs(), [Repair::StraySnapshotRemoved { file: snapshot_path(&new) }]);
}

/// An install of a snapshot beyond the log leaves every segment covered by the new boundary.
#[test]
fn an_install_beyond_the_log_is_finished_and_reported() {
    install_is_finished_and_reported(&meta(20, 2), |file, boundary| Repair::CoveredSegmentRemoved { file, boundary });
}

/// A restart (no power loss) while a snapshot is being received, or after a local snapshot's
/// write failed, leaves the staging or local file; other leftovers are snapshot files META does
/// not name. Recovery removes them, names each, and leaves unknown files alone.
#[test]
fn leftover_snapshot_files_are_removed_and_reported() {
    let fs = SimFs::new(8);
    let mut store = with_snapshot(&fs);
    store.write_snapshot_chunk(&meta(9, 1), 0, &[9; 100]).expect("chunk");
    // The local snapshot's file is written, its sync fails: the store stops.
    fs.fail_after(2, ErrorKind::Other);
    assert!(store.save_snapshot(&meta(11, 1), &[11; 100]).is_err(), "the sync fails");
    drop(store);
    let stray = snapshot_path(&meta(30, 1));
    write_durably(&fs, &stray, b"leftover");
    write_durably(&fs, &dir().join("notes.snap"), b"not ours");
    let store = open(&fs);
    let removed = [stray, dir().join("snapshot.local"), dir().join(STAGING_FILE)];
    let expected: Vec<Repair> =
        removed.iter().map(|file| Repair::StraySnapshotRemoved { file: file.clone() }).collect();
    assert_eq!(store.recovery_report().repairs(), expected);
    assert_eq!(store.snapshot(), Ok(meta(4, 1)), "the installed snapshot stays");
    assert!(fs.read(&dir().join("notes.snap")).is_ok(), "an unknown file stays");
    let shown = store.recovery_report().to_string();
    assert!(shown.contains("snapshot.staging") && shown.contains("snapshot.local"), "{shown}");
}

/// One call of the workload.
type Call = dyn Fn(&mut DiskStorage<SimFs>) -> Result<(), DiskError>;

/// A workload of every kind of call: appends over rotations and truncations, compactions,
/// local snapshots, received snapshots that keep, replace or pass the log.
fn workload(store: &mut DiskStorage<SimFs>) {
    let calls: [&Call; 11] = [
        &|store| store.persist(hard(1), &run(1, 12, 1)),
        &|store| store.save_snapshot(&meta(4, 1), &[4; 300]),
        &|store| store.compact(Index(3), Term(1)),
        &|store| store.persist(hard(2), &run(10, 16, 2)),
        &|store| receive(store, &meta(12, 2)),
        &|store| store.persist(None, &run(17, 20, 2)),
        &|store| receive(store, &meta(18, 3)),
        &|store| store.persist(hard(3), &run(19, 24, 3)),
        &|store| store.compact(Index(22), Term(3)),
        &|store| receive(store, &meta(40, 3)),
        &|store| store.persist(None, &run(41, 44, 3)),
    ];
    for call in calls {
        if call(store).is_err() {
            return; // Power is lost: every later call fails too.
        }
    }
}

/// Checks `repairs` against what recovery changed on disk, from `before` to `after` (durable
/// contents by path): every file removed or cut is named once, with the right offset and
/// length, and nothing else changed.
fn check_report(
    before: &BTreeMap<PathBuf, Vec<u8>>,
    after: &BTreeMap<PathBuf, Vec<u8>>,
    repairs: &[Repair],
    boundary: Index,
) -> Result<(), String> {
    let removed = |file: &PathBuf| before.contains_key(file) && !after.contains_key(file);
    let mut named = Vec::new();
    for repair in repairs {
        let (file, right) = match repair {
            Repair::TornTailTruncated { file, offset, bytes_dropped } => {
                let (old, new) = (&before[file], after.get(file).ok_or("a cut file is gone")?);
                let cut = new.len() as u64 == *offset && old.len() as u64 == offset + bytes_dropped;
                (file, cut && old.starts_with(new))
            }
            Repair::TornSegmentRemoved { file, bytes_dropped } => {
                (file, removed(file) && before[file].len() as u64 == *bytes_dropped)
            }
            Repair::CoveredSegmentRemoved { file, boundary: named_boundary }
            | Repair::SupersededSegmentRemoved { file, boundary: named_boundary } => {
                (file, removed(file) && *named_boundary == boundary)
            }
            Repair::StraySnapshotRemoved { file } => (file, removed(file)),
            other => return Err(format!("a repair this test does not know: {other}")),
        };
        if !right || named.contains(&file) {
            return Err(format!("{repair} does not match the disk (or names its file twice)"));
        }
        named.push(file);
    }
    let mut changed = before.iter().filter(|(path, bytes)| after.get(*path) != Some(*bytes)).map(|(path, _)| path);
    if let Some(path) = changed.find(|path| !named.contains(path)) {
        return Err(format!("recovery changed {path:?} without reporting it"));
    }
    match after.keys().find(|path| !before.contains_key(*path)) {
        Some(path) => Err(format!("recovery created {path:?}")),
        None => Ok(()),
    }
}

/// A power loss at every operation of the workload: the report names exactly what recovery
/// changed, and a second open finds nothing left to repair.
#[test]
fn the_report_names_exactly_what_recovery_changed() {
    let probe = SimFs::new(0);
    let mut store = create(&probe);
    let start = probe.op_count();
    workload(&mut store);
    let total = probe.op_count() - start;
    let mut seen = BTreeMap::<&str, usize>::new();
    for seed in 0..3 {
        for k in 0..total {
            let fs = SimFs::new(seed * 1000 + k);
            let mut store = create(&fs);
            fs.crash_after(k);
            workload(&mut store);
            drop(store);
            fs.crash();
            let before = fs.durable_snapshot();
            let store = open(&fs);
            let (boundary, _) = store.log_boundary();
            let repairs = store.recovery_report().repairs();
            if let Err(why) = check_report(&before, &fs.durable_snapshot(), repairs, boundary) {
                panic!("seed {seed}, crash at operation {k} of {total}: {why}; report: {}", store.recovery_report());
            }
            for repair in repairs {
                *seen.entry(kind(repair)).or_default() += 1;
            }
            drop(store);
            assert!(open(&fs).recovery_report().is_clean(), "seed {seed}, crash at {k}: a second open repairs again");
        }
    }
    let kinds: Vec<&str> = seen.keys().copied().collect();
    assert_eq!(
        kinds,
        ["covered", "stray", "superseded", "torn tail"],
        "the crashes cause every repair but a torn header"
    );
}

fn kind(repair: &Repair) -> &'static str {
    match repair {
        Repair::TornTailTruncated { .. } => "torn tail",
        Repair::TornSegmentRemoved { .. } => "torn header",
        Repair::CoveredSegmentRemoved { .. } => "covered",
        Repair::SupersededSegmentRemoved { .. } => "superseded",
        Repair::StraySnapshotRemoved { .. } => "stray",
        _ => "unknown",
    }
}
