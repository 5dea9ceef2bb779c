//! Local snapshots written a piece at a time ([`LogStore::begin_snapshot`]): every store, and the
//! default a third-party store inherits, saves the streamed data with the checksum given at the
//! end, leaves a snapshot being received alone, keeps nothing of an abandoned one, and (the
//! durable stores) keeps the snapshot across a power loss.

use std::fmt::Debug;
use std::path::PathBuf;

use raft_core::{
    Entry, HardState, Index, InitialState, NodeId, SnapshotChunk, SnapshotMeta, Storage, StorageError, Term,
};
use raft_storage::testing::SimFs;
use raft_storage::{
    DiskOptions, DiskStorage, GroupStore, Identity, LogStore, MemStorage, MemStorageError, SharedWal, WalOptions,
};

mod common;
use common::{membership, run};

const ME: Identity = Identity { cluster_id: 5, node_id: NodeId(1) };

fn dir() -> PathBuf {
    PathBuf::from("/var/raft/node-1")
}

/// Snapshot `index` of term 1, its checksum left for `finish` to supply.
fn meta(index: u64) -> SnapshotMeta {
    SnapshotMeta { index: Index(index), term: Term(1), membership: membership(), data_crc32: 0 }
}

/// `len` bytes that differ with their position.
fn data(len: usize) -> Vec<u8> {
    (0..len).map(|position| (position.wrapping_mul(31) >> 3) as u8).collect()
}

/// The data of the store's snapshot, read back a piece at a time.
fn read_back<S: Storage>(store: &S) -> Vec<u8> {
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

/// Streams a snapshot at 5 into `store` while one at 20 is being received, abandons another at
/// 8, then finishes the received one: each must end as if saved whole.
fn streams<S: LogStore>(store: &mut S) -> Vec<u8>
where
    S::Error: Debug,
{
    store.persist(Some(HardState { term: Term(1), vote: None, commit: Index(0) }), &run(1, 10, 1)).expect("persist");
    let received = meta(20);
    store.write_snapshot_chunk(&received, 0, b"rece").expect("a received chunk");

    let local = data(70_000);
    let mut writer = store.begin_snapshot(&meta(5)).expect("begin");
    for piece in local.chunks(9_999) {
        writer.write(piece).expect("write");
    }
    writer.finish(raft_core::snapshot_crc32(&local)).expect("finish");
    let saved = store.snapshot().expect("snapshot");
    assert_eq!(saved, SnapshotMeta { data_crc32: raft_core::snapshot_crc32(&local), ..meta(5) });
    assert_eq!(read_back(store), local);
    assert_eq!(store.first_index().expect("first"), Index(1), "saving compacts nothing");

    // Abandoned: the store keeps the snapshot at 5.
    let mut writer = store.begin_snapshot(&meta(8)).expect("begin");
    writer.write(b"half of it").expect("write");
    drop(writer);
    assert_eq!(store.snapshot().expect("snapshot").index, Index(5), "an abandoned snapshot leaves no trace");
    assert_eq!(read_back(store), local);

    // The received snapshot's staging was left alone.
    store.write_snapshot_chunk(&received, 4, b"ived").expect("the staging goes on");
    store.install_snapshot(&received).expect("install");
    assert_eq!(read_back(store), b"received");
    local
}

#[test]
fn the_memory_store_streams_a_local_snapshot() {
    streams(&mut MemStorage::new(membership()));
}

#[test]
fn the_disk_store_streams_a_local_snapshot_durably() {
    let fs = SimFs::new(1);
    let mut store = DiskStorage::create(fs.clone(), dir(), ME, membership(), DiskOptions::default()).expect("create");
    let local = streams(&mut store);
    // A snapshot older than the installed one is dropped, as save_snapshot drops it.
    let mut writer = store.begin_snapshot(&meta(6)).expect("begin");
    writer.write(b"stale").expect("write");
    writer.finish(raft_core::snapshot_crc32(b"stale")).expect("finish");
    assert_eq!(store.snapshot().expect("snapshot").index, Index(20));
    drop(store);
    fs.crash();
    let store = DiskStorage::open(fs.clone(), dir(), ME, DiskOptions::default()).expect("reopen");
    assert_eq!(store.snapshot().expect("snapshot").index, Index(20));
    assert_ne!(read_back(&store), local);
}

#[test]
fn a_disk_store_keeps_a_streamed_snapshot_across_a_power_loss() {
    let fs = SimFs::new(2);
    let mut store = DiskStorage::create(fs.clone(), dir(), ME, membership(), DiskOptions::default()).expect("create");
    let local = data(200_000);
    let mut writer = store.begin_snapshot(&meta(4)).expect("begin");
    for piece in local.chunks(65_536) {
        writer.write(piece).expect("write");
    }
    writer.finish(raft_core::snapshot_crc32(&local)).expect("finish");
    drop(store);
    fs.crash();
    let store = DiskStorage::open(fs.clone(), dir(), ME, DiskOptions::default()).expect("reopen");
    assert_eq!(store.snapshot().expect("snapshot").data_crc32, raft_core::snapshot_crc32(&local));
    assert_eq!(read_back(&store), local);
}

#[test]
fn a_shared_wal_group_streams_a_local_snapshot_durably() {
    let fs = SimFs::new(3);
    let wal = SharedWal::create(fs.clone(), dir(), ME, WalOptions::default()).expect("create");
    let mut store: GroupStore<SimFs> = wal.create_group(raft_core::GroupId(1), membership()).expect("group");
    streams(&mut store);
    drop((store, wal));
    fs.crash();
    let wal = SharedWal::open(fs.clone(), dir(), ME, WalOptions::default()).expect("reopen");
    let store = wal.group(raft_core::GroupId(1)).expect("group");
    assert_eq!(store.snapshot().expect("snapshot").index, Index(20));
    assert_eq!(read_back(&store), b"received");
}

/// A store that implements only what `LogStore` requires: it inherits the buffering default.
struct Minimal(MemStorage);

impl Storage for Minimal {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        self.0.initial_state()
    }
    fn entries(&self, low: Index, high: Index, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        self.0.entries(low, high, bytes_max)
    }
    fn term(&self, index: Index) -> Result<Term, StorageError> {
        self.0.term(index)
    }
    fn first_index(&self) -> Result<Index, StorageError> {
        self.0.first_index()
    }
    fn last_index(&self) -> Result<Index, StorageError> {
        self.0.last_index()
    }
    fn snapshot(&self) -> Result<SnapshotMeta, StorageError> {
        self.0.snapshot()
    }
    fn snapshot_chunk(
        &self,
        index: Index,
        term: Term,
        offset: u64,
        bytes_max: u64,
    ) -> Result<SnapshotChunk, StorageError> {
        self.0.snapshot_chunk(index, term, offset, bytes_max)
    }
}

impl LogStore for Minimal {
    type Error = MemStorageError;
    fn persist(&mut self, hard_state: Option<HardState>, entries: &[Entry]) -> Result<(), Self::Error> {
        self.0.persist(hard_state, entries)
    }
    fn compact(&mut self, index: Index, term: Term) -> Result<(), Self::Error> {
        self.0.compact(index, term)
    }
    fn write_snapshot_chunk(&mut self, meta: &SnapshotMeta, offset: u64, data: &[u8]) -> Result<(), Self::Error> {
        self.0.write_snapshot_chunk(meta, offset, data)
    }
    fn install_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), Self::Error> {
        self.0.install_snapshot(meta)
    }
}

/// The default goes through `save_snapshot`, whose own default stages the data: that replaces a
/// snapshot being received, which a store that overrides neither cannot avoid. Everything else
/// holds.
#[test]
fn a_store_with_only_the_required_methods_inherits_a_working_default() {
    let mut store = Minimal(MemStorage::new(membership()));
    store.persist(None, &run(1, 10, 1)).expect("persist");
    let local = data(5_000);
    let mut writer = store.begin_snapshot(&meta(5)).expect("begin");
    for piece in local.chunks(777) {
        writer.write(piece).expect("write");
    }
    writer.finish(raft_core::snapshot_crc32(&local)).expect("finish");
    assert_eq!(store.snapshot().expect("snapshot").data_crc32, raft_core::snapshot_crc32(&local));
    assert_eq!(read_back(&store), local);
    let mut writer = store.begin_snapshot(&meta(8)).expect("begin");
    writer.write(b"abandoned").expect("write");
    drop(writer);
    assert_eq!(store.snapshot().expect("snapshot").index, Index(5));
}
