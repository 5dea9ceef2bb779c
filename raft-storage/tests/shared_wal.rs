//! The shared write-ahead log ([`SharedWal`]) over [`SimFs`]: several groups in one log, every
//! entry kind, group commit across groups, group creation and removal, segment reclamation, the
//! entry cache, identity checks, corruption, fail-stop and threads.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use raft_core::{
    Entry, EntryPayload, GroupId, HardState, Index, Membership, NodeId, Output, SnapshotMeta, Storage, StorageError,
    Term,
};
use raft_storage::testing::{SimFs, SimFsOptions};
use raft_storage::{
    Corruption, DiskError, DiskOptions, DiskStorage, FileSystem, FsFile, GroupStore, Identity, LogStore, MemStorage,
    Repair, SharedWal, WalOptions,
};

mod common;
use common::hooks::ReadHookFs;
use common::{entry, membership, run};

const ME: Identity = Identity { cluster_id: 9, node_id: NodeId(1) };
/// A few records per segment, so that workloads rotate.
const SMALL: WalOptions = WalOptions { segment_bytes_max: 200, cache_bytes_max: 1 << 20, preallocate_bytes: 64 };

fn dir() -> PathBuf {
    PathBuf::from("/srv/wal")
}

fn create(fs: &SimFs, options: WalOptions) -> SharedWal<SimFs> {
    SharedWal::create(fs.clone(), dir(), ME, options).expect("create")
}

fn open(fs: &SimFs, options: WalOptions) -> SharedWal<SimFs> {
    SharedWal::open(fs.clone(), dir(), ME, options).expect("open")
}

fn hard(term: u64, vote: Option<u64>, commit: u64) -> Option<HardState> {
    Some(HardState { term: Term(term), vote: vote.map(NodeId), commit: Index(commit) })
}

fn list(fs: &SimFs) -> Vec<String> {
    fs.list(&dir()).expect("list")
}

fn remove(fs: &SimFs, path: &Path) {
    fs.remove(path).expect("remove");
    fs.sync_dir(path.parent().expect("a directory")).expect("sync");
}

fn cut(fs: &SimFs, path: &Path, len: u64) {
    let mut file = fs.open_append(path).expect("open");
    file.truncate(len).expect("truncate");
    file.sync().expect("sync");
}

fn segments(fs: &SimFs, dir: &Path) -> Vec<String> {
    fs.durable_file_names(dir).into_iter().filter(|name| name.ends_with(".mwal")).collect()
}

/// Every observable of `store` equals `model`'s (the commit index only when `commit` says so:
/// a restart may lose a commit-only change).
fn assert_same(store: &GroupStore<SimFs>, model: &MemStorage, commit: bool) {
    let first = model.first_index().expect("model");
    let last = model.last_index().expect("model");
    assert_eq!(store.first_index(), Ok(first), "first index");
    assert_eq!(store.last_index(), Ok(last), "last index");
    assert_eq!(store.term(first.prev()), model.term(first.prev()), "boundary term");
    for index in first.0..=last.0 {
        assert_eq!(store.term(Index(index)), model.term(Index(index)), "term of {index}");
    }
    assert_eq!(store.entries(first, last.next(), u64::MAX), model.entries(first, last.next(), u64::MAX));
    assert_eq!(store.entries(first, last.next(), 60), model.entries(first, last.next(), 60), "bounded read");
    let (ours, theirs) = (store.initial_state().expect("state"), model.initial_state().expect("model"));
    assert_eq!((ours.hard_state.term, ours.hard_state.vote), (theirs.hard_state.term, theirs.hard_state.vote));
    if commit {
        assert_eq!(ours.hard_state.commit, theirs.hard_state.commit);
    }
    assert_eq!(ours.membership, theirs.membership, "membership");
    assert_eq!(ours.snapshot, theirs.snapshot, "snapshot");
    if ours.snapshot.exists() {
        let chunk = store.snapshot_chunk(ours.snapshot.index, ours.snapshot.term, 0, u64::MAX).expect("snapshot data");
        assert_eq!(&chunk.data, model.snapshot_data(), "snapshot data");
    }
}

fn membership_entry(index: u64, term: u64, voters: &[u64]) -> Entry {
    let membership = Membership::new(voters.iter().copied().map(NodeId));
    Entry { index: Index(index), term: Term(term), payload: EntryPayload::Membership(membership) }
}

fn noop(index: u64, term: u64) -> Entry {
    Entry { index: Index(index), term: Term(term), payload: EntryPayload::Noop }
}

#[test]
fn every_entry_kind_in_several_groups_survives_a_power_loss() {
    let fs = SimFs::new(1);
    let wal = create(&fs, SMALL);
    let mut models = Vec::new();
    let mut stores = Vec::new();
    for id in 1..=3u64 {
        let mut store = wal.create_group(GroupId(id), membership()).expect("create group");
        let mut model = MemStorage::new(membership());
        let entries = vec![
            noop(1, id),
            entry(2, id),
            membership_entry(3, id, &[1, 2, 3, 4]),
            entry(4, id),
            membership_entry(5, id, &[1, 2, 4]),
            noop(6, id + 1),
        ];
        store.persist(hard(id + 1, Some(id), 2), &entries).expect("persist");
        model.persist(hard(id + 1, Some(id), 2), &entries).expect("model");
        stores.push(store);
        models.push(model);
    }
    // A conflicting suffix in group 2 only.
    stores[1].persist(hard(4, None, 2), &[entry(4, 4), noop(5, 4)]).expect("truncate");
    models[1].persist(hard(4, None, 2), &[entry(4, 4), noop(5, 4)]).expect("model");
    for (store, model) in stores.iter().zip(&models) {
        assert_same(store, model, true);
    }
    assert!(wal.segment_count() > 1, "the workload rotates");
    let on_disk: u64 = list(&fs)
        .iter()
        .filter(|name| name.starts_with("segment-"))
        .map(|name| fs.read(&dir().join(name)).expect("a segment").len() as u64)
        .sum();
    assert_eq!(wal.segment_bytes(), on_disk, "the log's size is its segments' size");
    drop((stores, wal));
    fs.crash();
    let wal = open(&fs, SMALL);
    assert!(wal.recovery_report().is_clean(), "{}", wal.recovery_report());
    assert_eq!(wal.groups(), [GroupId(1), GroupId(2), GroupId(3)]);
    for (id, model) in (1..=3).zip(&models) {
        assert_same(&wal.group(GroupId(id)).expect("group"), model, true);
    }
}

#[test]
fn a_batch_of_many_groups_is_one_fsync() {
    let fs = SimFs::new(2);
    let wal = create(&fs, WalOptions::default());
    let mut stores: Vec<_> = (0..8).map(|id| wal.create_group(GroupId(id), membership()).expect("group")).collect();
    let mut outputs: Vec<Output> = (0..8)
        .map(|id| Output { hard_state: hard(1, Some(id % 3 + 1), 0), entries: run(1, 3, 1), ..Output::default() })
        .collect();
    let before = fs.op_count();
    let mut batch: Vec<(&mut GroupStore<SimFs>, &mut Output)> = stores.iter_mut().zip(outputs.iter_mut()).collect();
    wal.write_batch(&mut batch).expect("batch");
    assert_eq!(fs.op_count() - before, 2, "one append and one fsync for eight groups");
    assert!(outputs.iter().all(|output| output.entries.is_empty()), "the entries were taken");
    drop(stores);
    fs.crash();
    let wal = open(&fs, WalOptions::default());
    for id in 0..8 {
        let store = wal.group(GroupId(id)).expect("group");
        assert_eq!(store.entries(Index(1), Index(4), u64::MAX), Ok(run(1, 3, 1)));
        assert_eq!(store.initial_state().expect("state").hard_state.vote, Some(NodeId(id % 3 + 1)));
    }
}

#[test]
fn a_refusal_in_a_batch_keeps_what_came_before_and_the_group_usable() {
    let fs = SimFs::new(3);
    let wal = create(&fs, WalOptions::default());
    let mut one = wal.create_group(GroupId(1), membership()).expect("group");
    let mut two = wal.create_group(GroupId(2), membership()).expect("group");
    let mut good = Output { entries: run(1, 2, 1), ..Output::default() };
    let mut gap = Output { entries: run(5, 6, 1), ..Output::default() };
    let refused = wal.write_batch(&mut [(&mut one, &mut good), (&mut two, &mut gap)]);
    assert_eq!(refused, Err(DiskError::AppendGap { first: Index(5), last: Index(0) }));
    two.persist(None, &run(1, 1, 1)).expect("the refused group is usable");
    drop((one, two));
    fs.crash();
    let wal = open(&fs, WalOptions::default());
    assert_eq!(wal.group(GroupId(1)).expect("group").last_index(), Ok(Index(2)), "durable before the refusal");
    assert_eq!(wal.group(GroupId(2)).expect("group").last_index(), Ok(Index(1)));
}

/// `LogStore::write_outputs` over groups of one log says how far it got: a refused group fails
/// alone (the groups before it are durable, the ones after were not written and can be written
/// again), while an I/O error stops the log and so fails every group still to be written.
#[test]
fn write_outputs_names_the_refused_group_and_fails_every_group_on_an_io_error() {
    let fs = SimFs::new(5);
    let wal = create(&fs, WalOptions::default());
    let mut stores: Vec<_> = (1..=3).map(|id| wal.create_group(GroupId(id), membership()).expect("group")).collect();
    let mut outputs: Vec<Vec<Output>> = vec![
        vec![Output { entries: run(1, 2, 1), ..Output::default() }],
        vec![Output { entries: run(5, 6, 1), ..Output::default() }], // A gap: refused.
        vec![Output { entries: run(1, 3, 1), ..Output::default() }],
    ];
    let mut batch: Vec<(&mut GroupStore<SimFs>, &mut [Output])> =
        stores.iter_mut().zip(outputs.iter_mut()).map(|(store, outputs)| (store, &mut outputs[..])).collect();
    let refused = GroupStore::write_outputs(&mut batch).expect_err("group 2 is refused");
    assert_eq!((refused.durable, refused.failed), (1, 1), "{refused}");
    assert_eq!(refused.error, DiskError::AppendGap { first: Index(5), last: Index(0) });
    // The rest was not written, and is written now.
    GroupStore::write_outputs(&mut batch[2..]).expect("group 3 written again");
    drop(batch);
    assert_eq!(stores[0].last_index(), Ok(Index(2)));
    assert_eq!(stores[1].last_index(), Ok(Index(0)), "the refused group wrote nothing");
    assert_eq!(stores[2].last_index(), Ok(Index(3)));

    // An I/O error of the log: every group of the write fails, none is known durable.
    // Each continues its group's log (last indexes 2, 0 and 3).
    let mut outputs: Vec<Vec<Output>> =
        [3, 1, 4].into_iter().map(|first| vec![Output { entries: run(first, 4, 1), ..Output::default() }]).collect();
    let mut batch: Vec<(&mut GroupStore<SimFs>, &mut [Output])> =
        stores.iter_mut().zip(outputs.iter_mut()).map(|(store, outputs)| (store, &mut outputs[..])).collect();
    fs.fail_after(0, std::io::ErrorKind::Other);
    let failed = GroupStore::write_outputs(&mut batch).expect_err("the disk fails");
    assert_eq!((failed.durable, failed.failed), (0, 3), "{failed}");
    assert!(matches!(failed.error, DiskError::Io { .. }), "{failed}");
}

#[test]
fn groups_are_created_at_run_time_and_removed_durably() {
    let fs = SimFs::new(4);
    let wal = create(&fs, SMALL);
    // A node that joins as a learner starts with an empty membership.
    let mut learner = wal.create_group(GroupId(7), Membership::default()).expect("group");
    assert_eq!(learner.initial_state().expect("state").membership, Membership::default());
    assert_eq!(wal.create_group(GroupId(7), membership()).err(), Some(DiskError::GroupExists(GroupId(7))));
    let data = b"state machine of group 7";
    let meta = SnapshotMeta {
        index: Index(4),
        term: Term(2),
        membership: membership(),
        data_crc32: raft_core::snapshot_crc32(data),
    };
    learner.write_snapshot_chunk(&meta, 0, data).expect("chunk");
    learner.install_snapshot(&meta).expect("install");
    learner.persist(hard(2, None, 4), &run(5, 8, 2)).expect("persist");
    let mut other = wal.create_group(GroupId(8), membership()).expect("group");
    other.persist(hard(1, None, 0), &run(1, 3, 1)).expect("persist");
    assert!(fs.durable_file_names(&dir()).iter().any(|name| name.starts_with("group-00000000000000000007-")));

    wal.remove_group(GroupId(7)).expect("remove");
    assert!(!list(&fs).iter().any(|name| name.starts_with("group-00000000000000000007-")), "files gone");
    assert_eq!(learner.persist(None, &run(9, 9, 2)), Err(DiskError::GroupNotFound(GroupId(7))));
    assert!(matches!(learner.last_index(), Err(StorageError::Io { kind: std::io::ErrorKind::NotFound, .. })));
    assert_eq!(wal.remove_group(GroupId(7)), Err(DiskError::GroupNotFound(GroupId(7))));
    drop((learner, other, wal));
    fs.crash();

    let wal = open(&fs, SMALL);
    assert_eq!(wal.groups(), [GroupId(8)], "a removed group stays removed after a power loss");
    // A new group of the same id starts empty; no stale handle reaches it.
    let again = wal.create_group(GroupId(7), membership()).expect("create again");
    assert_eq!(again.last_index(), Ok(Index(0)));
    assert_eq!(again.snapshot(), Ok(SnapshotMeta::default()));
    drop((again, wal));
    fs.crash();
    let wal = open(&fs, SMALL);
    assert_eq!(wal.groups(), [GroupId(7), GroupId(8)]);
    assert_eq!(wal.group(GroupId(7)).expect("group").last_index(), Ok(Index(0)));
}

#[test]
fn snapshots_per_group_are_installed_saved_and_read_back() {
    let fs = SimFs::new(5);
    let wal = create(&fs, SMALL);
    let mut one = wal.create_group(GroupId(1), membership()).expect("group");
    let mut two = wal.create_group(GroupId(2), membership()).expect("group");
    let (mut model_one, mut model_two) = (MemStorage::new(membership()), MemStorage::new(membership()));
    for (store, model) in [(&mut one, &mut model_one), (&mut two, &mut model_two)] {
        store.persist(hard(2, None, 0), &run(1, 10, 2)).expect("persist");
        model.persist(hard(2, None, 0), &run(1, 10, 2)).expect("model");
    }
    let snapshot = |index: u64, term: u64, data: &[u8]| SnapshotMeta {
        index: Index(index),
        term: Term(term),
        membership: Membership::new([NodeId(1), NodeId(2)]),
        data_crc32: raft_core::snapshot_crc32(data),
    };
    // Group 1: a local snapshot inside the log (keeps the suffix), then one that supersedes it.
    let (local, received) = (snapshot(6, 2, b"six"), snapshot(12, 3, b"twelve"));
    one.save_snapshot(&local, b"six").expect("save");
    model_one.save_snapshot(&local, b"six").expect("model");
    one.write_snapshot_chunk(&received, 0, b"twe").expect("chunk");
    one.write_snapshot_chunk(&received, 3, b"lve").expect("chunk");
    one.install_snapshot(&received).expect("install");
    model_one.write_snapshot_chunk(&received, 0, b"twelve").expect("model");
    model_one.install_snapshot(&received).expect("model");
    // Group 2: compaction, then a snapshot older than one it holds is dropped.
    two.compact(Index(7), Term(2)).expect("compact");
    model_two.compact(Index(7), Term(2)).expect("model");
    two.save_snapshot(&snapshot(8, 2, b"eight"), b"eight").expect("save");
    model_two.save_snapshot(&snapshot(8, 2, b"eight"), b"eight").expect("model");
    two.save_snapshot(&snapshot(5, 2, b"five"), b"five").expect("older: dropped");
    model_two.save_snapshot(&snapshot(5, 2, b"five"), b"five").expect("model");
    assert_eq!(two.install_snapshot(&snapshot(9, 2, b"x")), Err(DiskError::SnapshotNotStaged(Index(9))));
    assert_same(&one, &model_one, true);
    assert_same(&two, &model_two, true);
    let snapshot_files: Vec<String> = list(&fs).into_iter().filter(|name| name.ends_with(".snap")).collect();
    assert_eq!(snapshot_files.len(), 2, "one data file per group: {snapshot_files:?}");
    drop((one, two, wal));
    fs.crash();
    let wal = open(&fs, SMALL);
    assert_same(&wal.group(GroupId(1)).expect("group"), &model_one, false);
    assert_same(&wal.group(GroupId(2)).expect("group"), &model_two, false);
}

/// Writes `count` entries of 40 payload bytes to each group in turn, one entry per batch.
fn interleave(stores: &mut [GroupStore<SimFs>], from: u64, count: u64) {
    for index in from..from + count {
        for store in stores.iter_mut() {
            let payload = EntryPayload::Normal(Bytes::from(vec![index as u8; 40]));
            store.persist(None, &[Entry { index: Index(index), term: Term(1), payload }]).expect("persist");
        }
    }
}

#[test]
fn segments_are_reclaimed_once_every_group_compacted_them() {
    let fs = SimFs::new(6);
    // No cache: every entry read comes from its segment.
    let wal = create(&fs, WalOptions { segment_bytes_max: 200, cache_bytes_max: 0, preallocate_bytes: 0 });
    let mut stores: Vec<_> = (1..=3).map(|id| wal.create_group(GroupId(id), membership()).expect("group")).collect();
    interleave(&mut stores, 1, 20);
    let mut model = MemStorage::new(membership());
    for index in 1..=20 {
        let payload = EntryPayload::Normal(Bytes::from(vec![index as u8; 40]));
        model.persist(None, &[Entry { index: Index(index), term: Term(1), payload }]).expect("model");
    }
    let before = segments(&fs, &dir());
    assert!(before.len() > 10, "many segments: {before:?}");
    // Two of three groups compact everything: the third still needs every segment holding one
    // of its entries (all but the one holding only the creations, at most).
    stores[0].compact(Index(20), Term(1)).expect("compact");
    stores[1].compact(Index(20), Term(1)).expect("compact");
    let kept = segments(&fs, &dir());
    assert!(kept.len() + 1 >= before.len() && kept.contains(&before[1]), "segments a group needs are kept: {kept:?}");
    assert_same(&stores[2], &model, true);
    // The third compacts half: the segments holding only its compacted entries go.
    stores[2].compact(Index(10), Term(1)).expect("compact");
    model.compact(Index(10), Term(1)).expect("model");
    let after = segments(&fs, &dir());
    assert!(after.len() < kept.len() - 3 && !after.contains(&before[1]), "old segments gone: {after:?}");
    assert!(after.len() > 2, "its live entries keep their segments: {after:?}");
    assert_same(&stores[2], &model, true);
    stores[2].compact(Index(20), Term(1)).expect("compact");
    let after = segments(&fs, &dir());
    assert_eq!(after.len(), 1, "only the newest segment is left: {after:?}");
    // Every group is still whole after a power loss (its metadata was checkpointed).
    interleave(&mut stores, 21, 2);
    drop(stores);
    fs.crash();
    let wal = open(&fs, SMALL);
    assert!(wal.recovery_report().is_clean(), "{}", wal.recovery_report());
    for id in 1..=3 {
        let store = wal.group(GroupId(id)).expect("group");
        assert_eq!((store.first_index(), store.last_index()), (Ok(Index(21)), Ok(Index(22))));
        assert_eq!(store.term(Index(20)), Ok(Term(1)));
        assert_eq!(store.initial_state().expect("state").membership, membership());
    }
}

#[test]
fn an_idle_group_does_not_pin_old_segments() {
    let fs = SimFs::new(7);
    let wal = create(&fs, SMALL);
    let mut idle = wal.create_group(GroupId(1), membership()).expect("group");
    idle.persist(hard(3, Some(2), 0), &[]).expect("vote");
    let mut busy = wal.create_group(GroupId(2), membership()).expect("group");
    for round in 0..10 {
        interleave(std::slice::from_mut(&mut busy), round * 5 + 1, 5);
        busy.compact(Index(round * 5 + 5), Term(1)).expect("compact");
    }
    assert!(segments(&fs, &dir()).len() <= 2, "{:?}", segments(&fs, &dir()));
    drop((idle, busy));
    fs.crash();
    let wal = open(&fs, SMALL);
    let idle = wal.group(GroupId(1)).expect("the idle group survives reclamation");
    assert_eq!(idle.initial_state().expect("state").hard_state.vote, Some(NodeId(2)));
    assert_eq!(idle.initial_state().expect("state").hard_state.term, Term(3));
}

/// The offsets of the records of the segment held in `bytes` whose payload starts with
/// `prefix` (postcard: the record's variant, then its group), in order.
fn records_starting_with(bytes: &[u8], prefix: &[u8]) -> Vec<u64> {
    let mut found = Vec::new();
    let mut offset = 24;
    while offset + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes")) as usize;
        if len == 0 || offset + 8 + len > bytes.len() {
            break;
        }
        if bytes[offset + 8..].starts_with(prefix) {
            found.push(offset as u64);
        }
        offset += 8 + len;
    }
    found
}

/// A crash in the middle of a reclamation's run of copies leaves its first copies whole. They
/// are garbage: recovery cuts them with the torn tail. Left in place, they would follow the
/// group's new records in the same segment, and once a later reclamation released the segments
/// holding the group's earlier records, a replay would take them for the group's log and find
/// its next entry out of sequence (found by the `shared_wal_recovery` fuzz target).
#[test]
fn a_run_of_copies_cut_short_by_a_crash_is_cut_with_the_torn_tail() {
    // Copy records (variant 5) of group 1.
    let copy_of_short = [5u8, 1];
    // Reopened with segments twice as large, a reclamation copies up to 100 bytes of records:
    // group 1's three entries.
    const OPTIONS: WalOptions = WalOptions { segment_bytes_max: 400, cache_bytes_max: 1 << 20, preallocate_bytes: 64 };
    // Group 1 has a short log; group 2 writes and compacts, round after round, until a
    // compaction's reclamation copies group 1's log into the newest segment. `rounds` runs the
    // rounds before that one, and that one's writes but not its compaction.
    let setup = |fs: &SimFs, rounds: Option<u64>| {
        let wal = create(fs, SMALL);
        let mut short = wal.create_group(GroupId(1), membership()).expect("group");
        short.persist(hard(1, None, 0), &run(1, 2, 1)).expect("persist");
        let mut busy = wal.create_group(GroupId(2), membership()).expect("group");
        for round in 0..40 {
            interleave(std::slice::from_mut(&mut busy), round * 5 + 1, 5);
            if rounds == Some(round) {
                return (wal, round, None);
            }
            let newest = dir().join(segments(fs, &dir()).pop().expect("a segment"));
            let before = records_starting_with(&fs.read_durable(&newest).expect("durable"), &copy_of_short);
            busy.compact(Index(round * 5 + 5), Term(1)).expect("compact");
            // (Gone if the reclamation released it.)
            let after = fs.read_durable(&newest).unwrap_or_default();
            let copies = records_starting_with(&after, &copy_of_short);
            if rounds.is_none() && copies.len() == 2 && before.is_empty() {
                return (wal, round, Some((newest, after, copies)));
            }
        }
        panic!("no reclamation copied group 1's log into the newest segment");
    };
    let (wal, round, found) = setup(&SimFs::new(21), None);
    drop(wal);
    let (newest, after, copies) = found.expect("found");
    // Again, up to that compaction, which the power loss interrupts: of its batch only the
    // records up to the middle of the second copy reach the disk.
    let fs = SimFs::with_options(21, SimFsOptions { torn_crash_writes: false, torn_failed_appends: false });
    let (wal, _, _) = setup(&fs, Some(round));
    let mut busy = wal.group(GroupId(2)).expect("group 2");
    fs.crash_after(0);
    assert!(busy.compact(Index(round * 5 + 5), Term(1)).is_err(), "the power went");
    drop((busy, wal));
    fs.crash();
    let mut file = fs.open_append(&newest).expect("the newest segment");
    file.write_at(0, &after[..copies[1] as usize + 3]).expect("write");
    file.sync().expect("sync");
    drop(file);
    let wal = open(&fs, OPTIONS);
    let repairs = wal.recovery_report().repairs().to_vec();
    assert!(
        matches!(&repairs[..], [Repair::TornTailTruncated { file, offset, .. }] if *file == newest && *offset == copies[0]),
        "the whole run goes: {repairs:?}"
    );
    let mut short = wal.group(GroupId(1)).expect("group 1");
    assert_eq!(short.entries(Index(1), Index(3), u64::MAX), Ok(run(1, 2, 1)));
    // Group 1 writes again, right where the run was cut; group 2 writes on without compacting,
    // so that its entries keep that segment while reclamations copy group 1's log forward and
    // release the segments before it.
    short.persist(None, &run(3, 3, 1)).expect("persist");
    let mut busy = wal.group(GroupId(2)).expect("group 2");
    let last = busy.last_index().expect("last").0;
    interleave(std::slice::from_mut(&mut busy), last + 1, 40);
    let name = newest.file_name().expect("a name").to_string_lossy().into_owned();
    assert_eq!(segments(&fs, &dir()).first(), Some(&name), "the segments before the cut one are released");
    drop((short, busy, wal));
    fs.crash();
    let wal = SharedWal::open(fs.clone(), dir(), ME, OPTIONS).expect("the log opens");
    let short = wal.group(GroupId(1)).expect("group 1");
    assert_eq!(short.entries(Index(1), Index(4), u64::MAX), Ok(run(1, 3, 1)));
}

#[test]
fn the_cache_stays_under_its_limit_and_older_entries_come_from_disk() {
    let fs = SimFs::new(8);
    let options = WalOptions { segment_bytes_max: 4096, cache_bytes_max: 2048, preallocate_bytes: 1024 };
    let wal = create(&fs, options);
    let mut stores: Vec<_> = (1..=2).map(|id| wal.create_group(GroupId(id), membership()).expect("group")).collect();
    let mut models = vec![MemStorage::new(membership()), MemStorage::new(membership())];
    for batch in 0..50u64 {
        for (store, model) in stores.iter_mut().zip(&mut models) {
            let entries: Vec<Entry> = (1..=4)
                .map(|k| {
                    let index = batch * 4 + k;
                    let byte = (index % 100) as u8 + 100 * (batch % 2) as u8;
                    let payload = EntryPayload::Normal(Bytes::from(vec![byte; 120 + (index % 7) as usize]));
                    Entry { index: Index(index), term: Term(1 + batch / 10), payload }
                })
                .collect();
            store.persist(hard(1 + batch / 10, None, 0), &entries).expect("persist");
            model.persist(hard(1 + batch / 10, None, 0), &entries).expect("model");
            assert!(wal.cache_bytes() <= 2048, "cache at {} bytes", wal.cache_bytes());
        }
    }
    let total: u64 = models[0].all_entries().iter().map(Entry::size_bytes).sum();
    assert!(total > 10 * 2048, "far more entry bytes ({total}) than the cache");
    assert!(wal.cache_bytes() > 1024, "the cache is used");
    // A lagging follower is served from the segments, in full and in bounded pieces.
    for (store, model) in stores.iter().zip(&models) {
        assert_same(store, model, true);
        let mut next = Index(1);
        while next <= Index(200) {
            let piece = store.entries(next, Index(201), 300).expect("read");
            assert_eq!(piece, model.entries(next, Index(201), 300).expect("model"));
            next = Index(next.0 + piece.len() as u64);
        }
    }
    // A damaged record read from disk is an error, never a panic or wrong data: damage the
    // payload of group 1's entry 1 (121 bytes of 1, written first).
    let first_segment = dir().join(&segments(&fs, &dir())[0]);
    let content = fs.read_durable(&first_segment).expect("segment");
    let at = content.windows(121).position(|window| window.iter().all(|&b| b == 1)).expect("entry 1's payload");
    fs.flip_bit(&first_segment, at as u64 + 5, 1).expect("flip");
    assert_eq!(
        stores[0].entries(Index(1), Index(3), u64::MAX),
        Err(StorageError::Io { kind: std::io::ErrorKind::InvalidData, raw_os_error: None })
    );
    assert_eq!(stores[1].entries(Index(1), Index(3), u64::MAX), models[1].entries(Index(1), Index(3), u64::MAX));
    // A segment gone from under the WAL: an I/O error, never a panic.
    remove(&fs, &first_segment);
    assert!(matches!(
        stores[1].entries(Index(1), Index(3), u64::MAX),
        Err(StorageError::Io { kind: std::io::ErrorKind::NotFound, .. })
    ));
}

#[test]
fn identity_is_checked() {
    let fs = SimFs::new(9);
    drop(create(&fs, SMALL).create_group(GroupId(1), membership()).expect("group"));
    let other = Identity { cluster_id: 9, node_id: NodeId(2) };
    assert_eq!(
        SharedWal::open(fs.clone(), dir(), other, SMALL).err(),
        Some(DiskError::IdentityMismatch { expected: other, found: ME })
    );
    assert_eq!(SharedWal::create(fs.clone(), dir(), ME, SMALL).err(), Some(DiskError::AlreadyInitialized(dir())));
    // Neither store opens the other's directory.
    let disk_dir = PathBuf::from("/srv/disk");
    drop(DiskStorage::create(fs.clone(), &disk_dir, ME, membership(), DiskOptions::default()).expect("disk"));
    assert!(matches!(
        SharedWal::open(fs.clone(), &disk_dir, ME, SMALL),
        Err(DiskError::Corrupt { corruption: Corruption::BadMagic, .. })
    ));
    assert!(matches!(
        DiskStorage::open(fs.clone(), dir(), ME, DiskOptions::default()),
        Err(DiskError::Corrupt { corruption: Corruption::BadMagic, .. })
    ));
    // An identity that vanished while segments remain (docs/pitfalls.md #27).
    remove(&fs, &dir().join("IDENTITY"));
    assert_eq!(SharedWal::open(fs.clone(), dir(), ME, SMALL).err(), Some(DiskError::MissingIdentity(dir())));
    assert_eq!(SharedWal::create(fs.clone(), dir(), ME, SMALL).err(), Some(DiskError::MissingIdentity(dir())));
    assert_eq!(
        SharedWal::open(fs.clone(), "/nowhere", ME, SMALL).err(),
        Some(DiskError::NotInitialized(PathBuf::from("/nowhere")))
    );
}

/// A workload of three groups over many segments, closed cleanly.
fn three_groups(fs: &SimFs) {
    let wal = create(fs, SMALL);
    let mut stores: Vec<_> = (1..=3).map(|id| wal.create_group(GroupId(id), membership()).expect("group")).collect();
    interleave(&mut stores, 1, 8);
}

#[test]
fn a_flipped_bit_before_the_tail_is_an_error_naming_file_and_offset() {
    let fs = SimFs::new(10);
    three_groups(&fs);
    let names = segments(&fs, &dir());
    let target = dir().join(&names[names.len() / 2]);
    // The first record of the segment starts after its 24-byte header.
    fs.flip_bit(&target, 24 + 8 + 3, 0).expect("flip");
    assert_eq!(
        SharedWal::open(fs.clone(), dir(), ME, SMALL).err(),
        Some(DiskError::Corrupt { path: target, offset: 24, corruption: Corruption::Checksum })
    );
}

#[test]
fn a_torn_tail_is_cut_and_reported() {
    let fs = SimFs::new(11);
    three_groups(&fs);
    let names = segments(&fs, &dir());
    let last = dir().join(names.last().expect("segments"));
    let durable = fs.read_durable(&last).expect("last segment");
    // Where the records end: zeros filled ahead of them may follow.
    let len = durable.iter().rposition(|&byte| byte != 0).expect("records") as u64 + 1;
    cut(&fs, &last, len - 5);
    let wal = open(&fs, SMALL);
    let repairs = wal.recovery_report().repairs().to_vec();
    assert!(matches!(&repairs[..], [Repair::TornTailTruncated { file, .. }] if *file == last), "{repairs:?}");
    let lengths: Vec<Index> =
        (1..=3).map(|id| wal.group(GroupId(id)).expect("group").last_index().expect("last")).collect();
    assert_eq!(lengths, [Index(8), Index(8), Index(7)], "only the torn record is lost");
}

#[test]
fn a_missing_segment_is_an_error() {
    for position in [0, 2] {
        let fs = SimFs::new(12);
        three_groups(&fs);
        let names = segments(&fs, &dir());
        remove(&fs, &dir().join(&names[position]));
        let after = dir().join(&names[position + 1]);
        let error = SharedWal::open(fs.clone(), dir(), ME, SMALL).err();
        assert!(
            matches!(&error, Some(DiskError::Corrupt { path, corruption: Corruption::SegmentMissing { .. }, .. }) if *path == after),
            "segment {position} removed: {error:?}"
        );
    }
}

#[test]
fn an_io_error_stops_every_group() {
    let fs = SimFs::new(13);
    let wal = create(&fs, SMALL);
    let mut one = wal.create_group(GroupId(1), membership()).expect("group");
    let mut two = wal.create_group(GroupId(2), membership()).expect("group");
    fs.fail_after(1, std::io::ErrorKind::Other); // The sync of the next write.
    assert!(matches!(one.persist(None, &run(1, 2, 1)), Err(DiskError::Io { .. })));
    assert_eq!(two.persist(None, &run(1, 2, 1)), Err(DiskError::Stopped));
    assert_eq!(one.compact(Index(1), Term(1)), Err(DiskError::Stopped));
    assert_eq!(wal.create_group(GroupId(3), membership()).err(), Some(DiskError::Stopped));
    assert_eq!(wal.remove_group(GroupId(2)), Err(DiskError::Stopped));
    assert_eq!(two.last_index(), Ok(Index(0)), "reads still answer");
}

#[test]
fn groups_are_driven_from_different_threads() {
    fn is_send<T: Send>(_: &T) {}
    let fs = SimFs::new(14);
    let wal = create(&fs, SMALL);
    let stores: Vec<_> = (1..=4).map(|id| wal.create_group(GroupId(id), membership()).expect("group")).collect();
    is_send(&stores[0]);
    is_send(&wal);
    let threads: Vec<_> = stores
        .into_iter()
        .map(|mut store| {
            std::thread::spawn(move || {
                for index in 1..=30 {
                    store.persist(hard(1, None, 0), &[entry(index, 1)]).expect("persist");
                    if index % 10 == 0 {
                        store.compact(Index(index - 5), Term(1)).expect("compact");
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("no panic");
    }
    drop(wal);
    fs.crash();
    let wal = open(&fs, SMALL);
    for id in 1..=4 {
        let store = wal.group(GroupId(id)).expect("group");
        assert_eq!(store.entries(Index(26), Index(31), u64::MAX), Ok(run(26, 30, 1)));
    }
}

#[test]
fn a_lagging_follower_is_served_with_one_read_per_segment() {
    let reads = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = std::sync::Arc::clone(&reads);
    let fs = ReadHookFs::new(SimFs::new(15), move |_| {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    let options = WalOptions { segment_bytes_max: 1024, cache_bytes_max: 0, preallocate_bytes: 1 << 20 };
    let wal = SharedWal::create(fs.clone(), dir(), ME, options).expect("create");
    let mut one = wal.create_group(GroupId(1), membership()).expect("group");
    let mut two = wal.create_group(GroupId(2), membership()).expect("group");
    for index in 1..=100 {
        one.persist(None, &[entry(index, 1)]).expect("persist");
        two.persist(None, &[entry(index, 1)]).expect("persist");
    }
    let segments = wal.segment_count() as u64;
    assert!(segments >= 3, "the entries span {segments} segments");
    let before = reads.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(one.entries(Index(1), Index(101), u64::MAX), Ok(run(1, 100, 1)));
    let done = reads.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(done <= segments, "{done} reads for 100 entries over {segments} segments");
    // A bounded read does not read far beyond its bound.
    let before = reads.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(one.entries(Index(10), Index(101), 100).map(|e| e.len()), Ok(3));
    assert_eq!(reads.load(std::sync::atomic::Ordering::Relaxed) - before, 1);
}

/// Waits until the disk has seen `count` mutating operations (other threads write meanwhile).
fn wait_for_ops(fs: &SimFs, count: u64) {
    let start = std::time::Instant::now();
    while fs.op_count() < count {
        assert!(start.elapsed() < std::time::Duration::from_secs(20), "stuck at {} of {count}", fs.op_count());
        std::thread::yield_now();
    }
}

#[test]
fn persists_of_several_threads_share_an_fsync() {
    let fs = SimFs::new(16);
    let wal = create(&fs, WalOptions::default());
    let mut stores: Vec<_> = (1..=4).map(|id| wal.create_group(GroupId(id), membership()).expect("group")).collect();
    let base = fs.op_count();
    fs.hold_syncs();
    // The first writer becomes the leader and stalls in its fsync (without the lock).
    let mut first = stores.remove(0);
    let leader = std::thread::spawn(move || first.persist(hard(1, Some(1), 0), &run(1, 2, 1)));
    wait_for_ops(&fs, base + 1);
    // Three more stage and hand over their records meanwhile, and wait.
    let followers: Vec<_> = stores
        .into_iter()
        .map(|mut store| std::thread::spawn(move || store.persist(hard(1, Some(2), 0), &run(1, 3, 1))))
        .collect();
    wait_for_ops(&fs, base + 4);
    fs.release_syncs();
    assert_eq!(leader.join().expect("no panic"), Ok(()));
    for follower in followers {
        assert_eq!(follower.join().expect("no panic"), Ok(()));
    }
    assert_eq!(fs.op_count() - base, 4 + 2, "four appends, and two fsyncs for four writers");
    drop(wal);
    fs.crash();
    let wal = open(&fs, WalOptions::default());
    for id in 2..=4 {
        assert_eq!(wal.group(GroupId(id)).expect("group").entries(Index(1), Index(4), u64::MAX), Ok(run(1, 3, 1)));
    }
}

#[test]
fn a_failed_shared_fsync_fails_every_writer_waiting_for_it() {
    let fs = SimFs::new(17);
    let wal = create(&fs, WalOptions::default());
    let mut stores: Vec<_> = (1..=3).map(|id| wal.create_group(GroupId(id), membership()).expect("group")).collect();
    let base = fs.op_count();
    fs.hold_syncs();
    let mut first = stores.remove(0);
    let leader = std::thread::spawn(move || first.persist(None, &run(1, 2, 1)));
    wait_for_ops(&fs, base + 1);
    let followers: Vec<_> =
        stores.into_iter().map(|mut store| std::thread::spawn(move || store.persist(None, &run(1, 2, 1)))).collect();
    wait_for_ops(&fs, base + 3);
    fs.fail_after(0, std::io::ErrorKind::Other); // The leader's stalled fsync.
    fs.release_syncs();
    assert!(matches!(leader.join().expect("no panic"), Err(DiskError::Io { .. })));
    for follower in followers {
        assert_eq!(follower.join().expect("no panic"), Err(DiskError::Stopped), "never acknowledged");
    }
    assert_eq!(wal.create_group(GroupId(9), membership()).err(), Some(DiskError::Stopped));
}

#[test]
fn an_install_before_a_refused_append_of_the_same_output_is_durable() {
    let fs = SimFs::new(18);
    let wal = create(&fs, WalOptions::default());
    let mut store = wal.create_group(GroupId(1), membership()).expect("group");
    let data = b"snapshot";
    let meta = SnapshotMeta {
        index: Index(5),
        term: Term(1),
        membership: membership(),
        data_crc32: raft_core::snapshot_crc32(data),
    };
    let chunk = raft_core::ReceivedChunk { meta: meta.clone(), offset: 0, data: Bytes::from_static(data) };
    let mut output = Output {
        snapshot_chunks: vec![chunk],
        install_snapshot: Some(meta.clone()),
        entries: run(9, 9, 1),
        ..Output::default()
    };
    assert_eq!(store.write_output_owned(&mut output), Err(DiskError::AppendGap { first: Index(9), last: Index(5) }));
    drop((store, wal));
    fs.crash();
    let wal = open(&fs, WalOptions::default());
    assert_eq!(wal.group(GroupId(1)).expect("group").snapshot(), Ok(meta), "the install was made durable");
}
