//! Three nodes over real TCP on 127.0.0.1 and the durable store in temp dirs: replication under
//! load, the loss of the leader, and the restart of its node from its directory.

use raft_core::Index;
use raft_testkit::{ClusterBuilder, Kv, NetworkKind, StorageKind, all_applied, propose_many, settled_leader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_lose_their_leader_and_catch_up_a_restarted_node() {
    raft_testkit::init_tracing(); // RUST_LOG shows the crates' logs (for failing tests).
    let mut cluster = ClusterBuilder::new(3)
        .network(NetworkKind::Tcp)
        .storage(StorageKind::disk())
        .start(|_| Kv::default())
        .await
        .expect("the cluster starts");
    let leader = settled_leader(&cluster.running()).await;

    // 10,000 proposals, 64 in flight.
    propose_many(&cluster.handles(), &cluster.ids(), 0..10_000, 64).await;

    // Stop the leader's node; the other two elect a new leader and go on.
    cluster.stop(leader).await.expect("the leader runs");
    let new_leader = settled_leader(&cluster.running()).await;
    assert_ne!(new_leader, leader);
    propose_many(&cluster.handles(), &cluster.ids(), 10_000..10_500, 16).await;

    // Restart the old leader from its directory, on its address; it catches up.
    cluster.restart(leader).await.expect("the old leader restarts");
    let running = cluster.running();
    let status = cluster.member(new_leader).expect("new leader").handle.status().await.expect("runs");
    all_applied(&running, status.commit).await;
    let expected = running[0].view.map();
    assert_eq!(expected.len(), 10_500);
    for member in &running {
        assert_eq!(member.view.map(), expected, "node {} differs", member.id);
    }
    assert!(running.iter().all(|m| m.view.applied() >= Index(10_500)));
    cluster.shutdown().await;
}
