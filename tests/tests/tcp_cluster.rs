//! Three nodes over real TCP on 127.0.0.1 and the durable store in temp dirs: replication under
//! load, the loss of the leader, and the restart of its node from its directory.

use raft_core::{Index, NodeId};
use raft_net::NodeHandle;
use raft_tests::{
    CLUSTER, Kv, Member, all_applied, bind, config, create_disk, listeners, open_disk, propose_many, settled_leader,
    start_tcp,
};

const VOTERS: [u64; 3] = [1, 2, 3];

fn handles(members: &[&Member]) -> (Vec<NodeHandle<Kv>>, Vec<NodeId>) {
    (members.iter().map(|m| m.handle.clone()).collect(), members.iter().map(|m| m.id).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_lose_their_leader_and_catch_up_a_restarted_node() {
    let dirs: Vec<_> = VOTERS.iter().map(|_| tempfile::tempdir().expect("temp dir")).collect();
    let (sockets, addresses) = listeners(3).await;
    let mut members: Vec<Option<Member>> = Vec::new();
    for ((id, listener), dir) in VOTERS.iter().map(|id| NodeId(*id)).zip(sockets).zip(&dirs) {
        let storage = create_disk(dir.path(), id, &VOTERS);
        members.push(Some(start_tcp(CLUSTER, config(id, &addresses), listener, storage)));
    }
    let running: Vec<&Member> = members.iter().flatten().collect();
    let leader = settled_leader(&running).await;

    // 10,000 proposals, 64 in flight.
    let (all_handles, all_ids) = handles(&running);
    propose_many(&all_handles, &all_ids, 0..10_000, 64).await;

    // Stop the leader's node; the other two elect a new leader and go on.
    let old = members[leader.0 as usize - 1].take().expect("the leader runs");
    old.handle.shutdown().await;
    drop(old);
    let running: Vec<&Member> = members.iter().flatten().collect();
    let new_leader = settled_leader(&running).await;
    assert_ne!(new_leader, leader);
    let (handles_left, ids_left) = handles(&running);
    propose_many(&handles_left, &ids_left, 10_000..10_500, 16).await;

    // Restart the old leader from its directory, on its address; it catches up.
    let storage = open_disk(dirs[leader.0 as usize - 1].path(), leader);
    let listener = bind(addresses[&leader]).await;
    members[leader.0 as usize - 1] = Some(start_tcp(CLUSTER, config(leader, &addresses), listener, storage));
    let running: Vec<&Member> = members.iter().flatten().collect();
    let status = running.iter().find(|m| m.id == new_leader).expect("new leader").handle.status().await.expect("runs");
    all_applied(&running, status.commit).await;
    let expected = running[0].view.map();
    assert_eq!(expected.len(), 10_500);
    for member in &running {
        assert_eq!(member.view.map(), expected, "node {} differs", member.id);
    }
    assert!(running.iter().all(|m| m.view.applied() >= Index(10_500)));
    for member in running {
        member.handle.shutdown().await;
    }
}
