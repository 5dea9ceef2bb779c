//! Local snapshots written off the store's owner ([`LogStore::begin_snapshot_owned`], then
//! [`LogStore::save_taken_snapshot`]): the writer moves to another thread and the store is
//! written meanwhile; the save step has the effect of `save_snapshot`; nothing of a snapshot that
//! was not saved survives (a crash between `finish` and the save leaves the store as it was);
//! and a shared log's group removed while its writer is in flight costs its next incarnation
//! nothing.

use std::fmt::Debug;
use std::path::PathBuf;

use raft_core::{GroupId, HardState, Index, SnapshotMeta, Storage, Term};
use raft_storage::testing::SimFs;
use raft_storage::{
    DiskError, DiskOptions, DiskStorage, FileSystem, GroupStore, LogStore, MemStorage, Repair, SharedWal, WalOptions,
};

mod common;
use common::snapshot::{
    ME, assert_holds_received, data, dir, disk_store_across_power_loss, finish_receiving, meta, read_back,
    start_receiving, wal_group_across_power_loss,
};
use common::{membership, run};

/// Takes snapshot 5 on another thread while the owner appends entries and receives a chunk of
/// snapshot 20, then saves it; then a stale one, an abandoned writer and a taken snapshot never
/// saved, none of which changes the store; then installs the received snapshot.
fn takes_off_the_owner<S>(store: &mut S) -> Vec<u8>
where
    S: LogStore + Send + 'static,
    S::Error: Debug,
{
    store.persist(Some(HardState { term: Term(1), vote: None, commit: Index(0) }), &run(1, 10, 1)).expect("persist");
    let received = start_receiving(store);

    let local = data(150_000, 1);
    let mut writer = store.begin_snapshot_owned(&meta(5)).expect("begin");
    let written = local.clone();
    let thread = std::thread::spawn(move || {
        for piece in written.chunks(9_999) {
            writer.write(piece).expect("write");
        }
        writer.finish(raft_core::snapshot_crc32(&written)).expect("finish")
    });
    // The owner goes on meanwhile.
    store.persist(None, &run(11, 12, 1)).expect("persist while the snapshot is written");
    let taken = thread.join().expect("the writer's thread");
    assert_eq!(taken.meta().data_crc32, raft_core::snapshot_crc32(&local));
    assert_eq!(store.snapshot().expect("snapshot").index, Index(0), "nothing is saved before the save step");
    store.save_taken_snapshot(taken).expect("save");
    assert_eq!(
        store.snapshot().expect("snapshot"),
        SnapshotMeta { data_crc32: raft_core::snapshot_crc32(&local), ..meta(5) }
    );
    assert_eq!(read_back(store), local);
    assert_eq!((store.first_index().expect("first"), store.last_index().expect("last")), (Index(1), Index(12)));

    // Not newer than the store's: dropped.
    let mut writer = store.begin_snapshot_owned(&meta(4)).expect("begin");
    writer.write(b"stale").expect("write");
    let stale = writer.finish(raft_core::snapshot_crc32(b"stale")).expect("finish");
    store.save_taken_snapshot(stale).expect("a stale snapshot is dropped, not refused");
    // Abandoned, and taken but never saved.
    let mut writer = store.begin_snapshot_owned(&meta(8)).expect("begin");
    writer.write(b"half of it").expect("write");
    drop(writer);
    let mut writer = store.begin_snapshot_owned(&meta(9)).expect("begin");
    writer.write(b"all of it").expect("write");
    drop(writer.finish(raft_core::snapshot_crc32(b"all of it")).expect("finish"));
    assert_eq!(store.snapshot().expect("snapshot").index, Index(5));
    assert_eq!(read_back(store), local);

    finish_receiving(store, &received);
    local
}

#[test]
fn the_memory_store_takes_a_snapshot_off_its_owner() {
    takes_off_the_owner(&mut MemStorage::new(membership()));
}

#[test]
fn the_disk_store_takes_a_snapshot_off_its_owner() {
    let (fs, store) = disk_store_across_power_loss(1, |store| drop(takes_off_the_owner(store)));
    assert_holds_received(&store);
    assert_no_taking_files(&fs);
}

#[test]
fn a_shared_wal_group_takes_a_snapshot_off_its_owner() {
    let (fs, store) = wal_group_across_power_loss(3, |store| drop(takes_off_the_owner(store)));
    assert_holds_received(&store);
    assert_no_taking_files(&fs);
}

/// The files of snapshots being taken in the store's directory.
fn taking_files(fs: &SimFs) -> Vec<String> {
    fs.list(&dir()).expect("list").into_iter().filter(|name| name.ends_with(".taking")).collect()
}

/// No file of a snapshot being taken is left in the store's directory.
fn assert_no_taking_files(fs: &SimFs) {
    let names = taking_files(fs);
    assert!(names.is_empty(), "files left: {names:?}");
}

/// Writes and finishes snapshot `index` through an owned writer; returns it unsaved.
fn take<S: LogStore>(store: &mut S, index: u64, data: &[u8]) -> Box<dyn raft_storage::TakenSnapshot<S>>
where
    S::Error: Debug,
{
    let mut writer = store.begin_snapshot_owned(&meta(index)).expect("begin");
    for piece in data.chunks(4096) {
        writer.write(piece).expect("write");
    }
    writer.finish(raft_core::snapshot_crc32(data)).expect("finish")
}

#[test]
fn a_disk_store_that_crashes_between_finish_and_save_is_as_before_and_keeps_a_saved_one() {
    let first = data(100_000, 2);
    let (fs, store) = disk_store_across_power_loss(4, |store| {
        store.persist(None, &run(1, 10, 1)).expect("persist");
        // Finished but never saved (the crash comes first); the save of another one syncs the
        // directory, so its file's name is durable and recovery must remove it (its removal
        // when dropped is not made durable).
        let unsaved = take(store, 8, &data(70_000, 3));
        let taken = take(store, 4, &first);
        store.save_taken_snapshot(taken).expect("save");
        drop(unsaved);
    });
    assert_eq!(
        store.snapshot().expect("snapshot"),
        SnapshotMeta { data_crc32: raft_core::snapshot_crc32(&first), ..meta(4) }
    );
    assert_eq!(read_back(&store), first);
    assert_eq!(store.last_index().expect("last"), Index(10));
    let removed = store.recovery_report().repairs().iter().any(
        |repair| matches!(repair, Repair::StraySnapshotRemoved { file } if file.to_string_lossy().ends_with(".taking")),
    );
    assert!(removed, "recovery removed the unsaved snapshot's file: {:?}", store.recovery_report());
    assert_no_taking_files(&fs);
}

#[test]
fn a_shared_wal_that_crashes_between_finish_and_save_is_as_before() {
    let (fs, store) = wal_group_across_power_loss(5, |store| {
        store.persist(None, &run(1, 10, 1)).expect("persist");
        std::mem::forget(take(store, 8, &data(70_000, 3))); // The crash comes before the save.
    });
    assert_eq!(store.snapshot().expect("snapshot").index, Index(0));
    assert_eq!(store.last_index().expect("last"), Index(10));
    assert_no_taking_files(&fs);
}

/// A group removed while its writer is in flight: the removal succeeds, the next incarnation
/// takes and saves a snapshot of the same index meanwhile, and the old writer's save is refused
/// without touching the new incarnation's files.
#[test]
fn a_group_removed_while_its_snapshot_is_taken_leaves_its_next_incarnation_alone() {
    let fs = SimFs::new(6);
    let wal = SharedWal::create(fs.clone(), dir(), ME, WalOptions::default()).expect("create");
    let mut old = wal.create_group(GroupId(1), membership()).expect("group");
    old.persist(None, &run(1, 10, 1)).expect("persist");
    let mut old_writer = old.begin_snapshot_owned(&meta(5)).expect("begin");
    old_writer.write(b"the old incarnation's").expect("write");
    let old_dropped = take(&mut old, 6, b"dropped unsaved");

    wal.remove_group(GroupId(1)).expect("removing a group whose snapshot is being taken");
    let mut new = wal.create_group(GroupId(1), membership()).expect("the group again");
    new.persist(None, &run(1, 10, 1)).expect("persist");
    let new_data = data(90_000, 7);
    let mut new_writer = new.begin_snapshot_owned(&meta(5)).expect("begin");
    new_writer.write(&new_data[..50_000]).expect("write");

    // Another of the old incarnation's writers, dropped: the new one's file stays. (The names
    // differ by incarnation, so this guards against a removal by anything but its own name.)
    drop(old_dropped);
    assert_eq!(taking_files(&fs).len(), 1, "the new incarnation's file is left alone");
    // The old writer goes on into its deleted file, and its save is refused.
    old_writer.write(b" data").expect("write into the removed group's file");
    let old_taken = old_writer.finish(raft_core::snapshot_crc32(b"the old incarnation's data")).expect("finish");
    assert!(matches!(old.save_taken_snapshot(old_taken), Err(DiskError::GroupNotFound(GroupId(1)))));
    // A taken snapshot is saved only into the store it was begun on.
    new_writer.write(&new_data[50_000..]).expect("write");
    let new_taken = new_writer.finish(raft_core::snapshot_crc32(&new_data)).expect("finish");
    new.save_taken_snapshot(new_taken).expect("the new incarnation saves its own");
    assert_eq!(read_back(&new), new_data);
    assert_no_taking_files(&fs);

    drop((old, new, wal));
    fs.crash();
    let wal = SharedWal::open(fs.clone(), dir(), ME, WalOptions::default()).expect("reopen");
    let store = wal.group(GroupId(1)).expect("group");
    assert_eq!(store.snapshot().expect("snapshot").data_crc32, raft_core::snapshot_crc32(&new_data));
    assert_eq!(read_back(&store), new_data);
}

/// A shared log on a fresh `SimFs` seeded with `seed`, with groups 1 and 2; group 1 holds
/// entries 1 to 10.
fn two_groups(seed: u64) -> (SimFs, SharedWal<SimFs>, GroupStore<SimFs>, GroupStore<SimFs>) {
    let fs = SimFs::new(seed);
    let wal = SharedWal::create(fs.clone(), dir(), ME, WalOptions::default()).expect("create");
    let mut one = wal.create_group(GroupId(1), membership()).expect("group");
    let two = wal.create_group(GroupId(2), membership()).expect("group");
    one.persist(None, &run(1, 10, 1)).expect("persist");
    (fs, wal, one, two)
}

/// A taken snapshot saved into another group's store is refused.
#[test]
fn a_taken_snapshot_is_saved_only_by_its_own_group() {
    let (fs, _wal, mut one, mut two) = two_groups(8);
    two.persist(None, &run(1, 10, 1)).expect("persist");
    let taken = take(&mut one, 5, b"group one");
    assert!(matches!(two.save_taken_snapshot(taken), Err(DiskError::GroupNotFound(GroupId(1)))));
    assert_eq!(two.snapshot().expect("snapshot").index, Index(0));
    assert_no_taking_files(&fs);
}

/// A writer dropped mid-way (its job called off) and a taken snapshot dropped unsaved remove
/// their files at once; the next snapshot taken is saved as ever.
fn drops_unsaved<S: LogStore>(store: &mut S, fs: &SimFs)
where
    S::Error: Debug,
{
    store.persist(None, &run(1, 10, 1)).expect("persist");
    let mut writer = store.begin_snapshot_owned(&meta(5)).expect("begin");
    writer.write(&data(30_000, 1)).expect("write");
    assert_eq!(taking_files(fs).len(), 1, "the writer's file");
    drop(writer);
    assert_no_taking_files(fs);

    let taken = take(store, 6, &data(30_000, 2));
    assert_eq!(taking_files(fs).len(), 1, "the taken snapshot's file");
    drop(taken);
    assert_no_taking_files(fs);

    let saved = data(30_000, 3);
    let taken = take(store, 7, &saved);
    store.save_taken_snapshot(taken).expect("save");
    assert_no_taking_files(fs);
    assert_eq!(read_back(store), saved);
}

#[test]
fn a_disk_store_removes_the_file_of_a_snapshot_dropped_unsaved_at_once() {
    let fs = SimFs::new(10);
    let mut store = DiskStorage::create(fs.clone(), dir(), ME, membership(), DiskOptions::default()).expect("create");
    drops_unsaved(&mut store, &fs);
}

#[test]
fn a_shared_wal_group_removes_the_file_of_a_snapshot_dropped_unsaved_at_once() {
    let fs = SimFs::new(11);
    let wal = SharedWal::create(fs.clone(), dir(), ME, WalOptions::default()).expect("create");
    let mut store = wal.create_group(GroupId(1), membership()).expect("group");
    drops_unsaved(&mut store, &fs);
}

/// The file of a snapshot dropped unsaved is removed without the shared log's lock: while its
/// removal waits in the file system (an unlink of a large file can take long), another group's
/// write goes through.
#[test]
fn a_shared_wal_removes_an_unsaved_snapshot_file_without_holding_up_other_groups() {
    let (fs, _wal, mut one, mut two) = two_groups(19);
    let mut writer = one.begin_snapshot_owned(&meta(5)).expect("begin");
    writer.write(&data(30_000, 1)).expect("write");
    fs.hold_removes();
    let dropping = std::thread::spawn(move || drop(writer));
    let start = std::time::Instant::now();
    while fs.removes_waiting() == 0 {
        assert!(start.elapsed() < std::time::Duration::from_secs(20), "the removal never began");
        std::thread::yield_now();
    }
    let (done, written) = std::sync::mpsc::channel();
    let writing = std::thread::spawn(move || {
        let result = two.persist(None, &run(1, 3, 1));
        let _ = done.send(());
        (two, result)
    });
    let went_through = written.recv_timeout(std::time::Duration::from_secs(20)).is_ok();
    fs.release_removes(); // Before asserting: the threads end either way.
    dropping.join().expect("the dropping thread");
    let (two, result) = writing.join().expect("the writing thread");
    assert!(went_through, "the other group's write waited for the removal");
    result.expect("persist");
    assert_eq!(two.last_index(), Ok(Index(3)));
    assert_no_taking_files(&fs);
}

/// A writer whose write fails (an I/O error: the job fails), then one whose `finish` fails (its
/// sync), each dropped: neither leaves its file, whether the failure stopped the store or not.
fn drops_failed<S: LogStore>(mut open: impl FnMut() -> S, fs: &SimFs)
where
    S::Error: Debug,
{
    for fail_finish in [false, true] {
        let mut store = open();
        let mut writer = store.begin_snapshot_owned(&meta(5)).expect("begin");
        writer.write(&data(30_000, 4)).expect("write");
        fs.fail_after(0, std::io::ErrorKind::Other);
        if fail_finish {
            assert!(writer.finish(raft_core::snapshot_crc32(b"any")).is_err(), "the sync fails");
        } else {
            assert!(writer.write(b"more").is_err(), "the write fails");
            drop(writer);
        }
        assert_no_taking_files(fs);
    }
}

#[test]
fn a_disk_store_removes_the_file_of_a_failed_snapshot_at_once() {
    let fs = SimFs::new(12);
    let store = DiskStorage::create(fs.clone(), dir(), ME, membership(), DiskOptions::default()).expect("create");
    drop(store);
    drops_failed(|| DiskStorage::open(fs.clone(), dir(), ME, DiskOptions::default()).expect("open"), &fs);
}

#[test]
fn a_shared_wal_group_removes_the_file_of_a_failed_snapshot_at_once() {
    let fs = SimFs::new(13);
    let wal = SharedWal::create(fs.clone(), dir(), ME, WalOptions::default()).expect("create");
    wal.create_group(GroupId(1), membership()).expect("group");
    drop(wal);
    // A new WAL each time: the failure stops it.
    let open = || SharedWal::open(fs.clone(), dir(), ME, WalOptions::default()).expect("open").group(GroupId(1));
    drops_failed(|| open().expect("group"), &fs);
}

/// A taken snapshot whose store stopped before the save (an I/O error of a write: fail-stop)
/// is refused, and its file removed all the same: the save took it over only if it ran.
fn refused_by_a_stopped_store<S: LogStore>(mut store: S, fs: &SimFs)
where
    S::Error: Debug,
{
    store.persist(None, &run(1, 10, 1)).expect("persist");
    let taken = take(&mut store, 5, &data(20_000, 8));
    fs.fail_after(0, std::io::ErrorKind::Other);
    assert!(store.persist(None, &run(11, 12, 1)).is_err(), "the write fails and stops the store");
    assert!(store.save_taken_snapshot(taken).is_err(), "a stopped store refuses the save");
    assert_no_taking_files(fs);
}

#[test]
fn a_stopped_disk_store_refuses_a_taken_snapshot_and_its_file_is_removed() {
    let fs = SimFs::new(16);
    let store = DiskStorage::create(fs.clone(), dir(), ME, membership(), DiskOptions::default()).expect("create");
    refused_by_a_stopped_store(store, &fs);
}

#[test]
fn a_stopped_shared_wal_refuses_a_taken_snapshot_and_its_file_is_removed() {
    let fs = SimFs::new(17);
    let wal = SharedWal::create(fs.clone(), dir(), ME, WalOptions::default()).expect("create");
    refused_by_a_stopped_store(wal.create_group(GroupId(1), membership()).expect("group"), &fs);
}

/// A taken snapshot saved into another store (another directory, or the same one opened
/// again) is refused, and its file removed: at once for another directory; for the same one
/// opened again, the open's recovery already removed it (the guard of a store that is gone
/// leaves it to recovery, as the next test shows).
#[test]
fn a_disk_store_refuses_another_stores_snapshot_and_removes_its_file() {
    let fs = SimFs::new(14);
    let other_dir = PathBuf::from("/var/raft/node-2");
    let mut store = DiskStorage::create(fs.clone(), dir(), ME, membership(), DiskOptions::default()).expect("create");
    let mut other =
        DiskStorage::create(fs.clone(), &other_dir, ME, membership(), DiskOptions::default()).expect("other");
    let taken = take(&mut store, 5, &data(20_000, 5));
    assert!(matches!(other.save_taken_snapshot(taken), Err(DiskError::SnapshotNotStaged(Index(5)))));
    assert_no_taking_files(&fs);
    assert_eq!(other.snapshot().expect("snapshot").index, Index(0));

    let taken = take(&mut store, 6, &data(20_000, 6));
    drop(store);
    let mut again = DiskStorage::open(fs.clone(), dir(), ME, DiskOptions::default()).expect("open");
    assert!(matches!(again.save_taken_snapshot(taken), Err(DiskError::SnapshotNotStaged(Index(6)))));
    assert_eq!(again.snapshot().expect("snapshot").index, Index(0));
    assert_no_taking_files(&fs);
}

/// A writer that outlives its store leaves the files of the directory's next store alone, one of
/// the same name included: the file its drop would remove is no longer its own.
#[test]
fn a_disk_store_writer_dropped_after_its_store_leaves_the_next_ones_file_alone() {
    let fs = SimFs::new(15);
    let mut store = DiskStorage::create(fs.clone(), dir(), ME, membership(), DiskOptions::default()).expect("create");
    store.persist(None, &run(1, 10, 1)).expect("persist");
    let mut old = store.begin_snapshot_owned(&meta(5)).expect("begin");
    old.write(b"the first store's").expect("write");
    drop(store);
    let mut store = DiskStorage::open(fs.clone(), dir(), ME, DiskOptions::default()).expect("open");
    let new_data = data(40_000, 7);
    let mut new = store.begin_snapshot_owned(&meta(5)).expect("begin");
    new.write(&new_data).expect("write");
    drop(old);
    assert_eq!(taking_files(&fs).len(), 1, "the new writer's file is left alone");
    let taken = new.finish(raft_core::snapshot_crc32(&new_data)).expect("finish");
    store.save_taken_snapshot(taken).expect("save");
    assert_eq!(read_back(&store), new_data);
    assert_no_taking_files(&fs);
}

/// A taken snapshot saved into the group of another WAL is refused, and its file removed.
#[test]
fn a_shared_wal_group_refuses_another_wals_snapshot_and_removes_its_file() {
    let fs = SimFs::new(16);
    let wal = SharedWal::create(fs.clone(), dir(), ME, WalOptions::default()).expect("create");
    let other_wal = SharedWal::create(fs.clone(), "/var/raft/node-2", ME, WalOptions::default()).expect("other");
    let mut store = wal.create_group(GroupId(1), membership()).expect("group");
    let mut other = other_wal.create_group(GroupId(1), membership()).expect("group");
    let taken = take(&mut store, 5, &data(20_000, 8));
    assert!(matches!(other.save_taken_snapshot(taken), Err(DiskError::GroupNotFound(GroupId(1)))));
    assert_no_taking_files(&fs);
    assert_eq!(other.snapshot().expect("snapshot").index, Index(0));
}

/// Two writers of the same snapshot on one store: each has a file of its own, so the first,
/// dropped after the second began, removes only its own, and the second is saved whole.
fn two_writers_of_one_snapshot<S: LogStore>(store: &mut S, fs: &SimFs)
where
    S::Error: Debug,
{
    store.persist(None, &run(1, 10, 1)).expect("persist");
    let mut first = store.begin_snapshot_owned(&meta(5)).expect("begin");
    first.write(b"the first writer's").expect("write");
    let second_data = data(30_000, 4);
    let mut second = store.begin_snapshot_owned(&meta(5)).expect("begin");
    second.write(&second_data).expect("write");
    assert_eq!(taking_files(fs).len(), 2, "a file each");
    drop(first);
    assert_eq!(taking_files(fs).len(), 1, "the second's file is left alone");
    let taken = second.finish(raft_core::snapshot_crc32(&second_data)).expect("finish");
    store.save_taken_snapshot(taken).expect("save");
    assert_eq!(read_back(store), second_data);
    assert_no_taking_files(fs);
}

#[test]
fn a_disk_stores_two_writers_of_one_snapshot_keep_to_their_own_files() {
    let fs = SimFs::new(17);
    let mut store = DiskStorage::create(fs.clone(), dir(), ME, membership(), DiskOptions::default()).expect("create");
    two_writers_of_one_snapshot(&mut store, &fs);
}

#[test]
fn a_shared_wal_groups_two_writers_of_one_snapshot_keep_to_their_own_files() {
    let fs = SimFs::new(18);
    let wal = SharedWal::create(fs.clone(), dir(), ME, WalOptions::default()).expect("create");
    let mut store = wal.create_group(GroupId(1), membership()).expect("group");
    two_writers_of_one_snapshot(&mut store, &fs);
}

/// A `.taking` file named as before writers were numbered (three numbers) is still one that
/// recovery removes.
#[test]
fn a_taking_file_of_the_earlier_naming_is_removed_at_open() {
    let fs = SimFs::new(19);
    drop(DiskStorage::create(fs.clone(), dir(), ME, membership(), DiskOptions::default()).expect("create"));
    let old = dir().join(format!("snapshot-{:020}-{:020}-{:020}.taking", 5, 1, 0));
    let mut file = fs.create(&old).expect("create");
    raft_storage::FsFile::append(&mut file, b"left by a crash").expect("append");
    drop(file);
    let store = DiskStorage::open(fs.clone(), dir(), ME, DiskOptions::default()).expect("open");
    assert_no_taking_files(&fs);
    assert!(!store.recovery_report().repairs().is_empty(), "reported as a repair");
}
