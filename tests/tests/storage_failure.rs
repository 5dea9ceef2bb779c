//! A failing disk stops the node (fail-stop) and says so through the handle and an event; the
//! process and the other nodes keep running.

use std::io::ErrorKind;

use raft_core::{Index, NodeId, SnapshotMeta, StorageError, Term};
use raft_net::{MemNetwork, NodeEvent, ProposeError, StopReason, StorageOperation};
use raft_storage::testing::SimFs;
use raft_storage::{DiskOptions, DiskStorage, Identity, LogStore, MemStorage};
use raft_testkit::{CLUSTER, Kv, Member, PATIENCE, config, eventually, membership, set, settled_leader};
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_error_stops_the_node_and_fails_its_proposals() {
    let fs = SimFs::new(1);
    let id = NodeId(1);
    let identity = Identity { cluster_id: CLUSTER, node_id: id };
    let storage = DiskStorage::create(fs.clone(), "/data", identity, membership(&[1]), DiskOptions::default())
        .expect("create store");
    let network = MemNetwork::default();
    let member = Member::start(config(id), storage, &network, Kv::default()).expect("node 1 starts");
    let mut events = member.handle.events();
    settled_leader(&[&member]).await;
    for key in 0..10 {
        member.handle.propose(set(&format!("key{key}"), "value")).await.expect("the disk works");
    }

    // The next mutating file-system operation fails: the append of the next proposal.
    fs.fail_after(0, ErrorKind::Other);
    let error = member.handle.propose(set("doomed", "value")).await.expect_err("the write fails");
    let ProposeError::StorageFailed(failure) = error else { panic!("expected StorageFailed, got {error:?}") };
    assert_eq!(failure.operation, StorageOperation::Write);
    assert_eq!(failure.io_kind(), Some(ErrorKind::Other));

    let stopped = timeout(PATIENCE, async {
        loop {
            match events.recv().await {
                Ok(NodeEvent::Stopped(reason)) => return reason,
                Ok(_) => continue,
                Err(error) => panic!("events ended without Stopped: {error}"),
            }
        }
    })
    .await
    .expect("a Stopped event");
    assert!(matches!(stopped, StopReason::StorageFailed(_)), "{stopped:?}");
    assert!(matches!(member.handle.propose(set("later", "value")).await, Err(ProposeError::StorageFailed(_))));
    assert!(matches!(member.handle.status().await, Err(StopReason::StorageFailed(_))));
    assert!(matches!(member.handle.stop_reason(), Some(StopReason::StorageFailed(_))));
    assert!(!member.view.map().contains_key("doomed".as_bytes()));
    member.handle.shutdown().await; // Returns at once on a stopped node.

    // The process goes on: another node starts and commits in the same runtime.
    let other = NodeId(2);
    let identity = Identity { cluster_id: CLUSTER, node_id: other };
    let storage = DiskStorage::create(SimFs::new(2), "/data", identity, membership(&[2]), DiskOptions::default())
        .expect("create store");
    let survivor = Member::start(config(other), storage, &network, Kv::default()).expect("node 2 starts");
    settled_leader(&[&survivor]).await;
    survivor.handle.propose(set("alive", "yes")).await.expect("the other node works");
    eventually("the survivor applied", || async { survivor.view.map().len() == 1 }).await;
    survivor.handle.shutdown().await;
}

/// A snapshot in the Kv state machine's format: `applied`, then `key` = `value`.
fn kv_snapshot(applied: u64, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = applied.to_le_bytes().to_vec();
    for part in [key, value] {
        out.extend_from_slice(&(part.len() as u32).to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// Starts node 1 over `storage` and waits until it stops; the reason.
async fn start_until_stopped<S: LogStore + Send + 'static>(storage: S) -> (StopReason, Member<Kv>) {
    let member = Member::start(config(NodeId(1)), storage, &MemNetwork::default(), Kv::default()).expect("starts");
    eventually("the node stops", || async { member.handle.stop_reason().is_some() }).await;
    (member.handle.stop_reason().expect("stopped"), member)
}

/// A stored snapshot whose bytes no longer match the snapshot taken (rotted on disk after the
/// store opened, or held by a store that keeps no checksums of its own) is never restored: the
/// node stops with a typed storage failure, and the state machine sees none of it, although the
/// damaged bytes would decode (a value changed by one bit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_whose_bytes_changed_is_never_restored() {
    let data = kv_snapshot(5, b"key", b"value");
    let meta = SnapshotMeta {
        index: Index(5),
        term: Term(1),
        membership: membership(&[1]),
        data_crc32: raft_core::snapshot_crc32(&data),
    };
    // On disk: a bit of the value flips after the store opened (open checked the file).
    let fs = SimFs::new(3);
    let identity = Identity { cluster_id: CLUSTER, node_id: NodeId(1) };
    let mut store = DiskStorage::create(fs.clone(), "/data", identity, membership(&[1]), DiskOptions::default())
        .expect("create store");
    store.save_snapshot(&meta, &data).expect("save");
    drop(store);
    let store = DiskStorage::open(fs.clone(), "/data", identity, DiskOptions::default()).expect("open");
    let path = format!("/data/snapshot-{:020}-{:020}.snap", 5, 1);
    fs.flip_bit(std::path::Path::new(&path), data.len() as u64 - 1, 1).expect("flip");
    // In memory: a store that keeps the data as given, with the checksum of other data.
    let mut rotten = data.clone();
    *rotten.last_mut().expect("data") ^= 2;
    let mut memory = MemStorage::new(membership(&[1]));
    memory.save_snapshot(&meta, &rotten).expect("memory");
    let disk = start_until_stopped(store).await;
    let mem = start_until_stopped(memory).await;
    for (reason, member) in [disk, mem] {
        let StopReason::StorageFailed(failure) = &reason else { panic!("expected StorageFailed, got {reason:?}") };
        assert_eq!(failure.operation, StorageOperation::Read);
        let corrupt = failure.source.downcast_ref::<StorageError>();
        assert!(matches!(corrupt, Some(StorageError::SnapshotCorrupt { index: Index(5), .. })), "{failure}");
        assert!(member.view.lock().restored.is_empty(), "the state machine restored nothing");
        assert!(member.view.map().is_empty());
    }
}
