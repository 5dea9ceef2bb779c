//! The sharded node (issue 20's first step): three nodes, six shards of two replicas each, over
//! real sockets and real write-ahead logs. The first table is written by the meta group, each
//! node holds exactly the shards the table gives it, keys are written through the routes and
//! read back at every replica, and a restarted node reopens its groups with their data.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use raft_core::NodeId;
use raft_kv::kv::{Command, Response, encode};
use raft_kv::shards::node::{Route, ShardNode, ShardNodeConfig};
use raft_kv::shards::{NodeEntry, NodeState, ShardId, shard_of};
use raft_net::{NodeHandle, ReadConsistency};
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep};

/// How long anything may take before the test gives up (generous: the outcome never depends on
/// the machine's speed, only whether it ends).
const PATIENCE: Duration = Duration::from_secs(60);

fn config(id: u64, nodes: &BTreeMap<NodeId, NodeEntry>, data: &std::path::Path) -> ShardNodeConfig {
    ShardNodeConfig {
        id: NodeId(id),
        cluster_id: 7,
        data: data.join(format!("node-{id}")),
        nodes: nodes.clone(),
        shards: 6,
        replication: 2,
        tick_interval: Duration::from_millis(20),
        workers: 1,
    }
}

/// Waits until `node` has the created table.
async fn table_seen(node: &ShardNode) {
    let deadline = Instant::now() + PATIENCE;
    while node.table().version() == 0 {
        assert!(Instant::now() < deadline, "node {} never saw the routing table", node.id());
        sleep(Duration::from_millis(20)).await;
    }
}

/// The replicas of `shard` on the running nodes.
fn replicas(nodes: &[Option<ShardNode>], shard: ShardId) -> Vec<NodeHandle<raft_kv::kv::Kv>> {
    nodes.iter().flatten().filter_map(|node| node.shard(shard)).collect()
}

/// Proposes `command` to whichever replica of `shard` leads, retrying until one accepts.
async fn propose(nodes: &[Option<ShardNode>], shard: ShardId, command: &Command) -> Response {
    let deadline = Instant::now() + PATIENCE;
    loop {
        for handle in replicas(nodes, shard) {
            if let Ok(response) = handle.propose(encode(command)).await {
                return response;
            }
        }
        assert!(Instant::now() < deadline, "shard {shard:?} never accepted a proposal");
        sleep(Duration::from_millis(20)).await;
    }
}

/// A linearizable read of `key` at `handle`, retried while the group elects a leader.
async fn read(handle: &NodeHandle<raft_kv::kv::Kv>, key: &str) -> Option<Bytes> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let key = key.to_owned();
        match handle.read(ReadConsistency::Linearizable, move |kv| kv.get(&key)).await {
            Ok(value) => return value,
            Err(error) => assert!(Instant::now() < deadline, "read never succeeded: {error}"),
        }
        sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_spread_over_shards_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut listeners = Vec::new();
    let mut nodes = BTreeMap::new();
    for id in 1..=3u64 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a listener");
        let raft = listener.local_addr().expect("bound");
        let http = SocketAddr::from(([127, 0, 0, 1], 1)); // Not served in this test.
        nodes.insert(NodeId(id), NodeEntry { raft, http, state: NodeState::Active });
        listeners.push(listener);
    }
    let mut running = Vec::new();
    for (id, listener) in (1..=3).zip(listeners) {
        let node = ShardNode::start(config(id, &nodes, dir.path()), listener).await.expect("the node starts");
        running.push(Some(node));
    }
    for node in running.iter().flatten() {
        table_seen(node).await;
    }

    // Every node holds exactly the shards the table names it for: two replicas per shard, four
    // shards per node (balanced), and one table on every node.
    let table = running[0].as_ref().expect("running").table();
    assert_eq!(table.shard_count(), 6);
    for node in running.iter().flatten() {
        assert_eq!(*node.table(), *table, "node {} has another table", node.id());
        let named: BTreeSet<ShardId> =
            table.shards().filter(|(_, entry)| entry.replicas.contains(&node.id())).map(|(shard, _)| shard).collect();
        assert_eq!(node.shard_ids().into_iter().collect::<BTreeSet<_>>(), named, "node {}", node.id());
        assert_eq!(named.len(), 4, "node {} holds {} shards", node.id(), named.len());
    }

    // Keys go to the shard their hash names, through node 1's routes.
    let keys: Vec<String> = (0..60).map(|i| format!("key-{i}")).collect();
    let mut remote_routes = 0;
    for key in &keys {
        let shard = match running[0].as_ref().expect("running").route(key.as_bytes()) {
            Route::Local(shard, _) => shard,
            Route::Remote { shard, node, .. } => {
                assert!(table.shard(shard).expect("a shard of the table").replicas.contains(&node));
                assert!(running[0].as_ref().expect("running").shard(shard).is_none());
                remote_routes += 1;
                shard
            }
            Route::NoTable => panic!("node 1 saw the table"),
        };
        assert_eq!(shard, shard_of(key.as_bytes(), 6));
        let command = Command::Put { key: key.clone(), value: Bytes::from(format!("value of {key}")) };
        assert!(matches!(propose(&running, shard, &command).await, Response::Done));
    }
    assert!(remote_routes > 0, "node 1 holds 4 of 6 shards: some keys route elsewhere");

    // Every replica of a key's shard reads it; the other shards' groups do not hold it.
    for key in &keys {
        let shard = shard_of(key.as_bytes(), 6);
        let holders = replicas(&running, shard);
        assert_eq!(holders.len(), 2);
        for handle in &holders {
            assert_eq!(read(handle, key).await, Some(Bytes::from(format!("value of {key}"))));
        }
        let other = ShardId((shard.0 + 1) % 6);
        for handle in replicas(&running, other) {
            assert_eq!(read(&handle, key).await, None, "shard {other:?} holds a key of shard {shard:?}");
        }
    }

    // Node 1 restarts on the same data and port: it reopens its four shards with their keys.
    let node = running[0].take().expect("running");
    let held = node.shard_ids();
    let address = nodes[&NodeId(1)].raft;
    node.shutdown().await;
    let listener = TcpListener::bind(address).await.expect("the same port again");
    let node = ShardNode::start(config(1, &nodes, dir.path()), listener).await.expect("the node restarts");
    assert_eq!(node.shard_ids(), held);
    table_seen(&node).await;
    running[0] = Some(node);
    for key in &keys {
        let shard = shard_of(key.as_bytes(), 6);
        if let Some(handle) = running[0].as_ref().expect("running").shard(shard) {
            assert_eq!(read(&handle, key).await, Some(Bytes::from(format!("value of {key}"))));
        }
    }
    for node in running.into_iter().flatten() {
        node.shutdown().await;
    }
}
