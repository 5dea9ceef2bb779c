//! Local snapshots written a piece at a time ([`LogStore::begin_snapshot`]): every store, and the
//! default a third-party store inherits, saves the streamed data with the checksum given at the
//! end, leaves a snapshot being received alone, keeps nothing of an abandoned one, and (the
//! durable stores) keeps the snapshot across a power loss.

use std::fmt::Debug;

use raft_core::{Entry, HardState, Index, InitialState, SnapshotChunk, SnapshotMeta, Storage, StorageError, Term};
use raft_storage::{LogStore, MemStorage, MemStorageError};

mod common;
use common::snapshot::{
    assert_holds_received, data, disk_store_across_power_loss, finish_receiving, meta, read_back, start_receiving,
    wal_group_across_power_loss,
};
use common::{membership, run};

/// Streams a snapshot at 5 into `store` while one at 20 is being received, abandons another at
/// 8, then finishes the received one: each must end as if saved whole.
fn streams<S: LogStore>(store: &mut S) -> Vec<u8>
where
    S::Error: Debug,
{
    store.persist(Some(HardState { term: Term(1), vote: None, commit: Index(0) }), &run(1, 10, 1)).expect("persist");
    let received = start_receiving(store);

    let local = data(70_000, 0);
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

    finish_receiving(store, &received);
    local
}

#[test]
fn the_memory_store_streams_a_local_snapshot() {
    streams(&mut MemStorage::new(membership()));
}

#[test]
fn the_disk_store_streams_a_local_snapshot_durably() {
    let (_, store) = disk_store_across_power_loss(1, |store| {
        streams(store);
        // A snapshot older than the installed one is dropped, as save_snapshot drops it.
        let mut writer = store.begin_snapshot(&meta(6)).expect("begin");
        writer.write(b"stale").expect("write");
        writer.finish(raft_core::snapshot_crc32(b"stale")).expect("finish");
        assert_eq!(store.snapshot().expect("snapshot").index, Index(20));
    });
    assert_holds_received(&store);
}

#[test]
fn a_disk_store_keeps_a_streamed_snapshot_across_a_power_loss() {
    let local = data(200_000, 0);
    let (_, store) = disk_store_across_power_loss(2, |store| {
        let mut writer = store.begin_snapshot(&meta(4)).expect("begin");
        for piece in local.chunks(65_536) {
            writer.write(piece).expect("write");
        }
        writer.finish(raft_core::snapshot_crc32(&local)).expect("finish");
    });
    assert_eq!(store.snapshot().expect("snapshot").data_crc32, raft_core::snapshot_crc32(&local));
    assert_eq!(read_back(&store), local);
}

#[test]
fn a_shared_wal_group_streams_a_local_snapshot_durably() {
    let (_, store) = wal_group_across_power_loss(3, |store| drop(streams(store)));
    assert_holds_received(&store);
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
    let local = data(5_000, 0);
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
