//! Snapshots through the driver: taken by policy, compacting the log, sent to a node that fell
//! behind the compacted log, and restored from the store after a restart.

use raft_core::{Index, NodeId};
use raft_testkit::{
    Cluster, ClusterBuilder, Kv, StorageKind, all_applied, eventually, propose, propose_many, set, settled_leader,
};

/// `voters` nodes over the in-memory network, each with a durable store in a temp dir.
async fn snapshotting_cluster(voters: u64) -> Cluster<Kv> {
    raft_testkit::init_tracing(); // RUST_LOG shows the crates' logs (for failing tests).
    let builder = ClusterBuilder::new(voters).storage(StorageKind::disk()).configure(raft_testkit::snapshotting);
    builder.start(|_| Kv::default()).await.expect("the cluster starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_the_compacted_log_catches_up_by_snapshot() {
    let mut cluster = snapshotting_cluster(3).await;
    settled_leader(&cluster.running()).await;
    propose_many(&cluster.handles(), &cluster.ids(), 0..20, 4).await;
    all_applied(&cluster.running(), Index(20)).await;

    // Node 3 goes down; the others apply far past several snapshots and compact.
    cluster.stop(NodeId(3)).await.expect("node 3 runs");
    let (handles, ids) = (cluster.handles(), cluster.ids());
    propose_many(&handles, &ids, 20..1000, 32).await;
    let last = propose(&handles, &ids, 0, set("last", "entry")).await;
    all_applied(&cluster.running(), last).await;

    // Node 3 comes back from its directory; the log it needs is gone, so it gets a snapshot.
    cluster.restart(NodeId(3)).await.expect("node 3 restarts");
    let running = cluster.running();
    all_applied(&running, last).await;
    let restored = running[2].view.lock().restored.clone();
    assert!(restored.iter().any(|index| *index >= Index(100)), "node 3 restored no snapshot: {restored:?}");
    let expected = running[0].view.map();
    assert_eq!(expected.len(), 1001);
    for member in &running {
        assert_eq!(member.view.map(), expected, "node {} differs", member.id);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_restores_its_own_snapshot_then_applies_the_rest() {
    let mut cluster = snapshotting_cluster(1).await;
    let id = NodeId(1);
    settled_leader(&cluster.running()).await;
    propose_many(&cluster.handles(), &[id], 0..250, 8).await;
    let expected = cluster.member(id).expect("node 1 runs").view.map();
    cluster.stop(id).await.expect("node 1 runs");

    let member = cluster.restart(id).await.expect("node 1 restarts");
    eventually("the restarted node applies everything again", || async { member.view.map().len() == expected.len() })
        .await;
    assert_eq!(member.view.map(), expected);
    let restored = member.view.lock().restored.clone();
    assert_eq!(restored.len(), 1, "restored once, from the store: {restored:?}");
    assert!(restored[0] >= Index(200), "from the latest snapshot: {restored:?}");
    cluster.shutdown().await;
}
