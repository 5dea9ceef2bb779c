//! Recovery from a lost quorum (`raft_storage::recover::become_sole_voter`): a three-node group
//! with committed data loses two nodes for good; the survivor's store is rewritten offline (which
//! is refused while the node runs); it elects itself with every entry it had, and two new nodes
//! join it.

use raft_core::{ConfChange, Membership, NodeId};
use raft_storage::DiskError;
use raft_storage::recover::become_sole_voter;
use raft_testkit::{
    ClusterBuilder, HarnessError, Kv, StorageKind, change_membership, create_disk, eventually, open_disk, propose, set,
    settled_leader,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_of_a_lost_quorum_recovers_with_its_data_and_new_nodes_join_it() {
    raft_testkit::init_tracing();
    let mut cluster =
        ClusterBuilder::new(3).storage(StorageKind::disk()).start(|_| Kv::default()).await.expect("the cluster starts");
    settled_leader(&cluster.running()).await;
    let (handles, ids) = (cluster.handles(), cluster.ids());
    for key in 0..50 {
        propose(&handles, &ids, 0, set(&format!("key{key}"), "committed")).await;
    }
    let survivor = NodeId(3);
    let dir = cluster.dir(survivor).expect("a disk store").to_path_buf();
    let cluster_id = raft_testkit::CLUSTER;

    // While the node runs, its store cannot be opened for recovery.
    let in_use = open_disk(&dir, cluster_id, survivor);
    assert!(matches!(in_use, Err(HarnessError::Store(DiskError::InUse(_)))), "{:?}", in_use.err());

    // Nodes 1 and 2 are lost for good; node 3 alone cannot elect itself.
    cluster.stop(NodeId(1)).await.expect("node 1 runs");
    cluster.stop(NodeId(2)).await.expect("node 2 runs");
    cluster.stop(survivor).await.expect("node 3 runs");

    let mut store = open_disk(&dir, cluster_id, survivor).expect("the survivor's store opens offline");
    let recovered = become_sole_voter(&mut store, survivor).expect("recovery writes");
    assert_eq!(recovered.previous, Membership::new([NodeId(1), NodeId(2), NodeId(3)]));
    drop(store);

    cluster.restart(survivor).await.expect("node 3 restarts");
    let leader = settled_leader(&cluster.running()).await;
    assert_eq!(leader, survivor, "the sole voter elects itself");
    let status = cluster.member(survivor).expect("runs").handle.status().await.expect("runs");
    assert_eq!(status.membership, Membership::new([survivor]));
    let node = cluster.member(survivor).expect("runs");
    eventually("every entry it had is applied", || async {
        node.handle.status().await.is_ok_and(|status| status.applied >= recovered.index)
    })
    .await;
    let map = node.view.map();
    assert_eq!(map.len(), 50, "every committed write survived");
    propose(std::slice::from_ref(&node.handle), &[survivor], 0, set("after", "recovery")).await;

    // Two new nodes join the recovered node, as learners with empty stores, then as voters.
    let mut dirs = Vec::new();
    for new in [NodeId(4), NodeId(5)] {
        let new_dir = tempfile::tempdir().expect("a temporary directory");
        let storage = create_disk(new_dir.path(), cluster_id, new, Membership::default()).expect("an empty store");
        dirs.push(new_dir);
        cluster.start_node(new, storage).await.expect("the new node starts");
        let leader = cluster.member(survivor).expect("runs");
        change_membership(&leader.handle, vec![ConfChange::AddLearner(new)]).await;
        change_membership(&leader.handle, vec![ConfChange::AddVoter(new)]).await;
    }
    let leader = cluster.member(survivor).expect("runs");
    let commit = leader.handle.status().await.expect("runs").commit;
    for new in [NodeId(4), NodeId(5)] {
        let member = cluster.member(new).expect("runs");
        eventually("the new voter catches up", || async {
            member.handle.status().await.is_ok_and(|status| status.applied >= commit)
        })
        .await;
        assert_eq!(member.view.map(), leader.view.map(), "node {new} holds every key");
    }
    assert_eq!(leader.handle.status().await.expect("runs").membership, Membership::new([3, 4, 5].map(NodeId)));
    cluster.shutdown().await;
}
