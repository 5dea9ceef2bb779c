//! Snapshots through the driver: taken by policy, compacting the log, sent to a node that fell
//! behind the compacted log, and restored from the store after a restart.

use std::collections::BTreeMap;

use raft_core::{Index, NodeId};
use raft_net::{MemNetwork, NodeConfig};
use raft_tests::{
    Member, all_applied, config, create_disk, eventually, open_disk, propose, propose_many, set, settled_leader,
    start_mem,
};

const VOTERS: [u64; 3] = [1, 2, 3];

/// Snapshots every 100 entries and keeps only 10 entries below each.
fn snapshotting(id: NodeId) -> NodeConfig {
    let mut config = config(id, &BTreeMap::new());
    config.options = raft_core::Options::builder()
        .election_ticks(10)
        .heartbeat_ticks(2)
        .compaction_margin_entries(10)
        .snapshot_chunk_bytes_max(1024)
        .build()
        .expect("valid options");
    config.snapshot_every_entries = 100;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_the_compacted_log_catches_up_by_snapshot() {
    let dirs: Vec<_> = VOTERS.iter().map(|_| tempfile::tempdir().expect("temp dir")).collect();
    let network = MemNetwork::default();
    let mut members: Vec<Option<Member>> = VOTERS
        .iter()
        .zip(&dirs)
        .map(|(id, dir)| {
            let id = NodeId(*id);
            Some(start_mem(&network, snapshotting(id), create_disk(dir.path(), id, &VOTERS)))
        })
        .collect();
    let running: Vec<&Member> = members.iter().flatten().collect();
    settled_leader(&running).await;
    let handles: Vec<_> = running.iter().map(|m| m.handle.clone()).collect();
    let ids: Vec<_> = running.iter().map(|m| m.id).collect();
    propose_many(&handles, &ids, 0..20, 4).await;
    all_applied(&running, Index(20)).await;

    // Node 3 goes down; the others apply far past several snapshots and compact.
    let down = members[2].take().expect("node 3 runs");
    down.handle.shutdown().await;
    drop(down);
    network.remove(NodeId(3));
    let running: Vec<&Member> = members.iter().flatten().collect();
    let handles: Vec<_> = running.iter().map(|m| m.handle.clone()).collect();
    let ids: Vec<_> = running.iter().map(|m| m.id).collect();
    propose_many(&handles, &ids, 20..1000, 32).await;
    let last = propose(&handles, &ids, 0, set("last", "entry")).await;
    all_applied(&running, last).await;

    // Node 3 comes back from its directory; the log it needs is gone, so it gets a snapshot.
    let restarted = start_mem(&network, snapshotting(NodeId(3)), open_disk(dirs[2].path(), NodeId(3)));
    members[2] = Some(restarted);
    let running: Vec<&Member> = members.iter().flatten().collect();
    all_applied(&running, last).await;
    let restored = running[2].view.lock().restored.clone();
    assert!(restored.iter().any(|index| *index >= Index(100)), "node 3 restored no snapshot: {restored:?}");
    let expected = running[0].view.map();
    assert_eq!(expected.len(), 1001);
    for member in &running {
        assert_eq!(member.view.map(), expected, "node {} differs", member.id);
    }
    for member in running {
        member.handle.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_restores_its_own_snapshot_then_applies_the_rest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let network = MemNetwork::default();
    let id = NodeId(1);
    let member = start_mem(&network, snapshotting(id), create_disk(dir.path(), id, &[1]));
    settled_leader(&[&member]).await;
    let handles = [member.handle.clone()];
    propose_many(&handles, &[id], 0..250, 8).await;
    let expected = member.view.map();
    member.handle.shutdown().await;
    drop((member, handles));
    network.remove(id);

    let member = start_mem(&network, snapshotting(id), open_disk(dir.path(), id));
    eventually("the restarted node applies everything again", || async { member.view.map().len() == expected.len() })
        .await;
    assert_eq!(member.view.map(), expected);
    let restored = member.view.lock().restored.clone();
    assert_eq!(restored.len(), 1, "restored once, from the store: {restored:?}");
    assert!(restored[0] >= Index(200), "from the latest snapshot: {restored:?}");
    member.handle.shutdown().await;
}
