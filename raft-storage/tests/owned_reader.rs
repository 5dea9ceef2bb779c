//! A store's snapshot read off the store's owner ([`LogStore::open_snapshot_owned`]), as a driver
//! restores its state machine on another thread: the reader moves to a thread and reads the
//! whole data, exactly what `snapshot_chunk` gives, while the owner may append and compact (the
//! two are not forced to overlap); a
//! snapshot that is not the store's current one is refused; once the store installs a newer one
//! the durable stores' readers fail rather than read another snapshot's bytes; damaged bytes are
//! a `SnapshotCorrupt`; a durable store's reader that outlives its store (a shared log's:
//! the log) fails its reads without keeping the directory held; and a shared log's reader reads
//! its chunks without the log's lock.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use raft_core::{HardState, Index, SnapshotMeta, Storage, StorageError, Term};
use raft_storage::testing::SimFs;
use raft_storage::{
    DiskOptions, DiskStorage, FileSystem, LogStore, MemStorage, OwnedSnapshotReader, SharedWal, WalOptions,
};

mod common;
use common::hooks::{HoldGate, ReadHookFs};
use common::snapshot::{ME, data, dir, finish_receiving, meta, read_back, start_receiving};
use common::{membership, run};

/// Everything `reader` reads, in chunks of at most `bytes_max`.
fn read_all(reader: &mut dyn OwnedSnapshotReader, bytes_max: u64) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::new();
    loop {
        let chunk = reader.chunk(out.len() as u64, bytes_max)?;
        assert!(chunk.data.len() as u64 <= bytes_max.max(1));
        out.extend_from_slice(&chunk.data);
        if chunk.done {
            return Ok(out);
        }
    }
}

/// Saves snapshot 5 over entries 1..=10; reads it on another thread while the owner appends
/// and compacts; checks the refusals; then installs the snapshot received from the leader under
/// an open reader, whose next read must fail with `replaced_fails` (the memory store's reader
/// holds the old bytes, which stay whole). Returns the open reader.
fn reads_off_the_owner<S>(store: &mut S, replaced_fails: bool) -> Box<dyn OwnedSnapshotReader>
where
    S: LogStore,
    S::Error: Debug,
{
    store.persist(Some(HardState { term: Term(1), vote: None, commit: Index(10) }), &run(1, 10, 1)).expect("persist");
    let local = data(150_000, 3);
    let saved = SnapshotMeta { data_crc32: raft_core::snapshot_crc32(&local), ..meta(5) };
    store.save_snapshot(&saved, &local).expect("save");
    let received = start_receiving(store);

    let mut reader = store.open_snapshot_owned(&saved).expect("open").expect("the store has an owned reader");
    assert_eq!(reader.meta(), &saved);
    let thread = std::thread::spawn(move || {
        let read = read_all(&mut *reader, 7_000);
        (reader, read)
    });
    // The owner goes on meanwhile.
    store.persist(None, &run(11, 12, 1)).expect("persist while the snapshot is read");
    store.compact(Index(5), Term(1)).expect("compact");
    let (mut reader, read) = thread.join().expect("the reader's thread");
    assert_eq!(read.expect("read"), local, "the whole data");
    assert_eq!(read_all(&mut *reader, u64::MAX).expect("again, in 1 MiB chunks at most"), read_back(store));
    assert!(read_all(&mut *reader, 0).is_ok(), "a zero bound still makes progress");

    assert!(matches!(store.open_snapshot_owned(&meta(4)), Err(StorageError::SnapshotReplaced(Index(4)))));
    let other_term = SnapshotMeta { term: Term(2), ..saved.clone() };
    assert!(matches!(store.open_snapshot_owned(&other_term), Err(StorageError::SnapshotReplaced(Index(5)))));

    finish_receiving(store, &received);
    let after = read_all(&mut *reader, 7_000);
    if replaced_fails {
        assert!(after.is_err(), "a replaced snapshot is not read: {:?}", after.map(|data| data.len()));
    } else {
        assert_eq!(after.expect("the memory store's bytes stay"), local);
    }
    assert!(matches!(store.open_snapshot_owned(&saved), Err(StorageError::SnapshotReplaced(Index(5)))));
    let current = store.snapshot().expect("snapshot");
    let mut newer = store.open_snapshot_owned(&current).expect("open").expect("a reader");
    assert_eq!(read_all(&mut *newer, 3).expect("read"), b"received");
    newer
}

#[test]
fn the_memory_store_reads_its_snapshot_off_its_owner() {
    reads_off_the_owner(&mut MemStorage::new(membership()), false);
}

#[test]
fn the_disk_store_reads_its_snapshot_off_its_owner() {
    let fs = SimFs::new(41);
    let mut store = DiskStorage::create(fs.clone(), dir(), ME, membership(), DiskOptions::default()).expect("create");
    let mut reader = reads_off_the_owner(&mut store, true);
    // Outliving its store, the reader fails, and holds nothing: the directory opens again at once.
    drop(store);
    assert!(matches!(reader.chunk(0, 10), Err(StorageError::Unavailable(Index(20)))));
    let store = DiskStorage::open(fs, dir(), ME, DiskOptions::default()).expect("open again, the reader alive");
    assert_eq!(store.snapshot().expect("snapshot").index, Index(20));
}

#[test]
fn a_shared_wal_group_reads_its_snapshot_off_its_owner() {
    let fs = SimFs::new(42);
    let wal = SharedWal::create(fs.clone(), dir(), ME, WalOptions::default()).expect("create");
    let mut store = wal.create_group(raft_core::GroupId(1), membership()).expect("group");
    let mut reader = reads_off_the_owner(&mut store, true);
    // The group removed: its reader fails.
    drop(store);
    wal.remove_group(raft_core::GroupId(1)).expect("remove");
    assert!(reader.chunk(0, 10).is_err(), "the group is gone");
    // Another group's reader that outlives the log fails, and holds nothing: the log opens
    // again at once.
    let mut store = wal.create_group(raft_core::GroupId(2), membership()).expect("group");
    store.persist(None, &run(1, 3, 1)).expect("persist");
    let saved = SnapshotMeta { data_crc32: raft_core::snapshot_crc32(b"two"), ..meta(2) };
    store.save_snapshot(&saved, b"two").expect("save");
    let mut reader = store.open_snapshot_owned(&saved).expect("open").expect("a reader");
    assert_eq!(read_all(&mut *reader, 2).expect("read"), b"two");
    drop((store, wal));
    assert!(matches!(reader.chunk(0, 10), Err(StorageError::Unavailable(Index(2)))));
    let wal = SharedWal::open(fs, dir(), ME, WalOptions::default()).expect("open again, the reader alive");
    assert_eq!(wal.group(raft_core::GroupId(2)).expect("group").snapshot().expect("snapshot"), saved);
}

/// A byte of the snapshot file damaged after it was saved: the owned reader finds it, as
/// `snapshot_chunk` does.
fn damaged<S: LogStore>(store: &mut S, fs: &SimFs)
where
    S::Error: Debug,
{
    store.persist(None, &run(1, 10, 1)).expect("persist");
    let local = data(300_000, 9);
    let saved = SnapshotMeta { data_crc32: raft_core::snapshot_crc32(&local), ..meta(5) };
    store.save_snapshot(&saved, &local).expect("save");
    let names = fs.list(&dir()).expect("list");
    let file = names.iter().find(|name| name.ends_with(".snap")).expect("the snapshot's file");
    let path = dir().join(file);
    let len = fs.read(&path).expect("read").len() as u64;
    fs.flip_bit(&path, len / 2, 3).expect("flip");
    let mut reader = store.open_snapshot_owned(&saved).expect("open").expect("a reader");
    let read = read_all(&mut *reader, 64 * 1024);
    assert!(matches!(read, Err(StorageError::SnapshotCorrupt { index: Index(5), .. })), "{read:?}");
}

#[test]
fn the_disk_stores_reader_finds_damaged_bytes() {
    let fs = SimFs::new(43);
    let mut store = DiskStorage::create(fs.clone(), dir(), ME, membership(), DiskOptions::default()).expect("create");
    damaged(&mut store, &fs);
}

#[test]
fn a_shared_wal_groups_reader_finds_damaged_bytes() {
    let fs = SimFs::new(44);
    let wal = SharedWal::create(fs.clone(), dir(), ME, WalOptions::default()).expect("create");
    let mut store = wal.create_group(raft_core::GroupId(1), membership()).expect("group");
    damaged(&mut store, &fs);
}

/// A shared log's reader reads a chunk without the log's lock (a large restore must not hold
/// up every group's writes): while its read of the file is held, another group writes and
/// syncs, and the reader's own group installs a newer snapshot, which removes the file being
/// read. Released, the read reports the snapshot replaced, not the missing file. (Read under the
/// lock, the write and the install wait for the read, and the first check fails.)
#[test]
fn a_shared_wal_groups_reader_reads_without_the_logs_lock() {
    let gate = Arc::new(HoldGate::default());
    let held = Arc::clone(&gate);
    let fs = ReadHookFs::new(SimFs::new(45), move |path| {
        if path.to_string_lossy().ends_with(".snap") {
            held.pass();
        }
    });
    let wal = SharedWal::create(fs, dir(), ME, WalOptions::default()).expect("create");
    let mut one = wal.create_group(raft_core::GroupId(1), membership()).expect("group 1");
    let mut two = wal.create_group(raft_core::GroupId(2), membership()).expect("group 2");
    one.persist(Some(HardState { term: Term(1), vote: None, commit: Index(10) }), &run(1, 10, 1)).expect("persist");
    let local = data(150_000, 3);
    let saved = SnapshotMeta { data_crc32: raft_core::snapshot_crc32(&local), ..meta(5) };
    one.save_snapshot(&saved, &local).expect("save");
    let mut reader = one.open_snapshot_owned(&saved).expect("open").expect("a reader");
    assert_eq!(read_all(&mut *reader, 7_000).expect("read"), local, "read whole, the gate open");

    gate.arm();
    let reading = std::thread::spawn(move || reader.chunk(0, 7_000));
    gate.wait_entered();
    let (sender, receiver) = std::sync::mpsc::channel();
    let writing = std::thread::spawn(move || {
        two.persist(None, &run(1, 3, 1)).expect("another group's write");
        let received = start_receiving(&mut one);
        finish_receiving(&mut one, &received);
        let _ = sender.send(());
    });
    let written = receiver.recv_timeout(Duration::from_secs(10));
    gate.release();
    writing.join().expect("the writes' thread");
    assert!(written.is_ok(), "the other group's write and the install waited for the snapshot read");
    let read = reading.join().expect("the reader's thread");
    assert!(matches!(read, Err(StorageError::SnapshotReplaced(Index(5)))), "{:?}", read.map(|chunk| chunk.data.len()));
}
