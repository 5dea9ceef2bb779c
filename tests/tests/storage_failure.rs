//! A failing disk stops the node (fail-stop) and says so through the handle and an event; the
//! process and the other nodes keep running.

use std::collections::BTreeMap;
use std::io::ErrorKind;

use raft_core::NodeId;
use raft_net::{MemNetwork, NodeEvent, ProposeError, StopReason, StorageOperation};
use raft_storage::{DiskOptions, DiskStorage, Identity, SimFs};
use raft_tests::{CLUSTER, PATIENCE, config, eventually, membership, set, settled_leader, start_mem};
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_error_stops_the_node_and_fails_its_proposals() {
    let fs = SimFs::new(1);
    let id = NodeId(1);
    let identity = Identity { cluster_id: CLUSTER, node_id: id };
    let storage = DiskStorage::create(fs.clone(), "/data", identity, membership(&[1]), DiskOptions::default())
        .expect("create store");
    let network = MemNetwork::default();
    let member = start_mem(&network, config(id, &BTreeMap::new()), storage);
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
    let survivor = start_mem(&network, config(other, &BTreeMap::new()), storage);
    settled_leader(&[&survivor]).await;
    survivor.handle.propose(set("alive", "yes")).await.expect("the other node works");
    eventually("the survivor applied", || async { survivor.view.map().len() == 1 }).await;
    survivor.handle.shutdown().await;
}
