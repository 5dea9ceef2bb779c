//! Snapshot bytes that rot on disk (or read back wrong) after `open` checked the file: every
//! chunk read checks the blocks it covers against their crcs, so the damage is a typed
//! [`StorageError::SnapshotCorrupt`] on the read that meets it (a leader's chunk read, a
//! restore read), never data.

use std::path::PathBuf;

use raft_core::{Index, Membership, NodeId, SnapshotMeta, Storage, StorageError, Term};
use raft_storage::testing::SimFs;
use raft_storage::{DiskOptions, DiskStorage, Identity, LogStore};

const ME: Identity = Identity { cluster_id: 5, node_id: NodeId(1) };
/// The block size the store checks in (see the `disk` module docs).
const BLOCK_BYTES: u64 = 64 * 1024;
/// Three whole blocks and a partial one.
const SNAPSHOT_BYTES: usize = 3 * BLOCK_BYTES as usize + 1000;

fn dir() -> PathBuf {
    PathBuf::from("/var/raft/node-1")
}

fn membership() -> Membership {
    Membership::new([NodeId(1), NodeId(2), NodeId(3)])
}

fn data() -> Vec<u8> {
    (0..SNAPSHOT_BYTES).map(|n| (n.wrapping_mul(31) >> 3) as u8).collect()
}

fn meta(index: u64, data: &[u8]) -> SnapshotMeta {
    SnapshotMeta {
        index: Index(index),
        term: Term(1),
        membership: membership(),
        data_crc32: raft_core::snapshot_crc32(data),
    }
}

fn snapshot_path(meta: &SnapshotMeta) -> PathBuf {
    dir().join(format!("snapshot-{:020}-{:020}.snap", meta.index.0, meta.term.0))
}

fn open(fs: &SimFs) -> DiskStorage<SimFs> {
    DiskStorage::open(fs.clone(), dir(), ME, DiskOptions::default()).expect("open")
}

/// Reads the whole snapshot `bytes_max` at a time, as a restoring node does; the first error.
fn restore_read(store: &DiskStorage<SimFs>, meta: &SnapshotMeta, bytes_max: u64) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::new();
    loop {
        let chunk = store.snapshot_chunk(meta.index, meta.term, out.len() as u64, bytes_max)?;
        out.extend_from_slice(&chunk.data);
        if chunk.done {
            return Ok(out);
        }
    }
}

/// A store holding `meta` (saved locally, or received in chunks and installed), reopened.
fn store_with_snapshot(fs: &SimFs, received: bool) -> (DiskStorage<SimFs>, SnapshotMeta) {
    let data = data();
    let meta = meta(4, &data);
    let mut store = DiskStorage::create(fs.clone(), dir(), ME, membership(), DiskOptions::default()).expect("create");
    if received {
        for (number, piece) in data.chunks(1000).enumerate() {
            store.write_snapshot_chunk(&meta, number as u64 * 1000, piece).expect("chunk");
        }
        store.install_snapshot(&meta).expect("install");
    } else {
        store.save_snapshot(&meta, &data).expect("save");
    }
    drop(store);
    let store = open(fs);
    assert_eq!(restore_read(&store, &meta, 4096), Ok(data), "intact, it reads back whole");
    (store, meta)
}

/// A bit flipped in the third block after `open`: reads of other blocks still work, every read
/// that touches the damaged block is `SnapshotCorrupt` at the block's offset, and a restore read
/// fails with it.
#[test]
fn a_flip_after_open_is_caught_on_the_chunk_read_that_meets_it() {
    for received in [false, true] {
        let fs = SimFs::new(7);
        let (store, meta) = store_with_snapshot(&fs, received);
        fs.flip_bit(&snapshot_path(&meta), 2 * BLOCK_BYTES + 77, 3).expect("flip");
        let damaged = StorageError::SnapshotCorrupt { index: meta.index, offset: 2 * BLOCK_BYTES };
        let first = store.snapshot_chunk(meta.index, meta.term, 0, 256).expect("the first block is intact");
        assert_eq!(first.data, data()[..256], "received: {received}");
        let last = store.snapshot_chunk(meta.index, meta.term, 3 * BLOCK_BYTES, BLOCK_BYTES).expect("intact");
        assert_eq!(last.data, data()[3 * BLOCK_BYTES as usize..]);
        for (offset, bytes_max) in [(2 * BLOCK_BYTES, 1), (2 * BLOCK_BYTES + 100, 8), (BLOCK_BYTES + 5, BLOCK_BYTES)] {
            let read = store.snapshot_chunk(meta.index, meta.term, offset, bytes_max).map(|chunk| chunk.data);
            assert_eq!(read, Err(damaged), "read of {bytes_max} at {offset}, received: {received}");
        }
        for bytes_max in [256, BLOCK_BYTES, 1 << 20] {
            assert_eq!(restore_read(&store, &meta, bytes_max), Err(damaged), "restore read of {bytes_max}");
        }
    }
}

/// A flip in the partial last block and one in the first byte: both are caught too.
#[test]
fn flips_at_the_edges_are_caught() {
    for at in [0, SNAPSHOT_BYTES as u64 - 1] {
        let fs = SimFs::new(8);
        let (store, meta) = store_with_snapshot(&fs, false);
        fs.flip_bit(&snapshot_path(&meta), at, 0).expect("flip");
        let block = at / BLOCK_BYTES * BLOCK_BYTES;
        let read = store.snapshot_chunk(meta.index, meta.term, at, 1).map(|chunk| chunk.data);
        assert_eq!(read, Err(StorageError::SnapshotCorrupt { index: meta.index, offset: block }), "flip at {at}");
    }
}
