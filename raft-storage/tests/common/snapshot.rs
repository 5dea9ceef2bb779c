//! Fixtures of the tests of local snapshots (`local_snapshot.rs`, `owned_snapshot.rs`): a store
//! over a [`SimFs`] that loses power after a scenario, snapshots and their data, reading a
//! snapshot back, and a snapshot received from the leader while local ones are taken.

use std::fmt::Debug;
use std::path::PathBuf;

use raft_core::{GroupId, Index, NodeId, SnapshotMeta, Storage, Term};
use raft_storage::testing::SimFs;
use raft_storage::{DiskOptions, DiskStorage, GroupStore, Identity, LogStore, SharedWal, WalOptions};

use super::membership;

/// The node whose stores the tests write.
pub const ME: Identity = Identity { cluster_id: 5, node_id: NodeId(1) };

/// The store's directory.
pub fn dir() -> PathBuf {
    PathBuf::from("/var/raft/node-1")
}

/// Snapshot `index` of term 1, its checksum left for `finish` to supply.
pub fn meta(index: u64) -> SnapshotMeta {
    SnapshotMeta { index: Index(index), term: Term(1), membership: membership(), data_crc32: 0 }
}

/// `len` bytes that differ with their position and `seed`.
pub fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|position| ((position.wrapping_mul(31) >> 3) as u8).wrapping_add(seed)).collect()
}

/// The data of the store's snapshot, read back a piece at a time.
pub fn read_back<S: Storage>(store: &S) -> Vec<u8> {
    let snapshot = store.snapshot().expect("snapshot");
    let mut out = Vec::new();
    loop {
        let chunk = store.snapshot_chunk(snapshot.index, snapshot.term, out.len() as u64, 1000).expect("chunk");
        out.extend_from_slice(&chunk.data);
        if chunk.done {
            return out;
        }
    }
}

/// Starts receiving the snapshot at 20 from the leader (its first chunk), to go on while local
/// snapshots are taken; returns its metadata.
pub fn start_receiving<S: LogStore>(store: &mut S) -> SnapshotMeta
where
    S::Error: Debug,
{
    let received = meta(20);
    store.write_snapshot_chunk(&received, 0, b"rece").expect("a received chunk");
    received
}

/// Receives the rest of snapshot `received` and installs it: the local snapshots taken since
/// [`start_receiving`] left its staging alone.
pub fn finish_receiving<S: LogStore>(store: &mut S, received: &SnapshotMeta)
where
    S::Error: Debug,
{
    store.write_snapshot_chunk(received, 4, b"ived").expect("the staging goes on");
    store.install_snapshot(received).expect("install");
    assert_holds_received(store);
}

/// The store holds the snapshot of [`finish_receiving`].
pub fn assert_holds_received<S: Storage>(store: &S) {
    assert_eq!(store.snapshot().expect("snapshot").index, Index(20));
    assert_eq!(read_back(store), b"received");
}

/// Runs `scenario` on a new [`DiskStorage`] in [`dir`] over a [`SimFs`] seeded with `seed`,
/// loses power, and opens the store again.
pub fn disk_store_across_power_loss(
    seed: u64,
    scenario: impl FnOnce(&mut DiskStorage<SimFs>),
) -> (SimFs, DiskStorage<SimFs>) {
    let fs = SimFs::new(seed);
    let mut store = DiskStorage::create(fs.clone(), dir(), ME, membership(), DiskOptions::default()).expect("create");
    scenario(&mut store);
    drop(store);
    fs.crash();
    let store = DiskStorage::open(fs.clone(), dir(), ME, DiskOptions::default()).expect("reopen");
    (fs, store)
}

/// Runs `scenario` on group 1 of a new [`SharedWal`] in [`dir`] over a [`SimFs`] seeded with
/// `seed`, loses power, and opens the WAL again: returns the group's store.
pub fn wal_group_across_power_loss(
    seed: u64,
    scenario: impl FnOnce(&mut GroupStore<SimFs>),
) -> (SimFs, GroupStore<SimFs>) {
    let fs = SimFs::new(seed);
    let wal = SharedWal::create(fs.clone(), dir(), ME, WalOptions::default()).expect("create");
    let mut store = wal.create_group(GroupId(1), membership()).expect("group");
    scenario(&mut store);
    drop((store, wal));
    fs.crash();
    let wal = SharedWal::open(fs.clone(), dir(), ME, WalOptions::default()).expect("reopen");
    let store = wal.group(GroupId(1)).expect("group");
    (fs, store)
}
