//! The sharded node (issue 20's first step): three nodes, six shards of two replicas each, over
//! real sockets and real write-ahead logs. The first table is written by the meta group, each
//! node holds exactly the shards the table gives it, keys are written through the routes and
//! read back at every replica, and a restarted node reopens its groups with their data.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use raft_core::{ConfChange, Membership, NodeId, Role};
use raft_kv::kv::{Command, Kv, Response, encode};
use raft_kv::shards::controller::{Action, Limits, NodeReport};
use raft_kv::shards::node::{Route, ShardNode, ShardNodeConfig};
use raft_kv::shards::runner::{BoxFuture, LocalReplicas, Peers, RunnerConfig};
use raft_kv::shards::{NodeEntry, NodeState, ShardId, TableChange, TableCommand, shard_of};
use raft_net::{NodeHandle, ReadConsistency};
use raft_storage::{Identity, SharedWal, StdFs, WalOptions};
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep};

/// How long anything may take before the test gives up (generous: the outcome never depends on
/// the machine's speed, only whether it ends).
const PATIENCE: Duration = Duration::from_secs(60);

fn config(id: u64, nodes: &BTreeMap<NodeId, NodeEntry>, data: &Path, shards: u32, replication: u8) -> ShardNodeConfig {
    ShardNodeConfig {
        id: NodeId(id),
        cluster_id: 7,
        data: data.join(format!("node-{id}")),
        nodes: nodes.clone(),
        shards,
        replication,
        tick_interval: Duration::from_millis(20),
        workers: 1,
        join: false,
        controller: None,
        tls: None,
    }
}

/// The controller's calls to other nodes, made directly (the service makes them over HTTP).
#[derive(Default)]
struct InProcess(Mutex<BTreeMap<NodeId, LocalReplicas>>);

impl InProcess {
    fn register(&self, node: &ShardNode) {
        self.0.lock().expect("not poisoned").insert(node.id(), node.local_replicas());
    }

    fn replicas(&self, node: NodeId) -> Option<LocalReplicas> {
        self.0.lock().expect("not poisoned").get(&node).cloned()
    }
}

impl Peers for InProcess {
    fn observe(&self, node: NodeId) -> BoxFuture<'_, Option<NodeReport>> {
        let replicas = self.replicas(node);
        Box::pin(async move { replicas?.observe().await })
    }

    fn carry_out(&self, node: NodeId, action: Action) -> BoxFuture<'_, Result<(), String>> {
        let replicas = self.replicas(node);
        Box::pin(async move { replicas.ok_or("unknown node")?.carry_out(action).await })
    }
}

/// Starts node `id` with `config`, known to `peers`.
async fn start(config: ShardNodeConfig, listener: TcpListener, peers: &Arc<InProcess>) -> ShardNode {
    let node = ShardNode::start(config, listener, Arc::clone(peers) as Arc<dyn Peers>).await.expect("the node starts");
    peers.register(&node);
    node
}

/// Binds `count` listeners on 127.0.0.1 and names nodes 1 to `count` with their addresses.
async fn bind(count: u64) -> (Vec<TcpListener>, BTreeMap<NodeId, NodeEntry>) {
    let mut listeners = Vec::new();
    let mut nodes = BTreeMap::new();
    for id in 1..=count {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a listener");
        let raft = listener.local_addr().expect("bound");
        let http = SocketAddr::from(([127, 0, 0, 1], 1)); // Not served in these tests.
        nodes.insert(NodeId(id), NodeEntry { raft, http, state: NodeState::Active });
        listeners.push(listener);
    }
    (listeners, nodes)
}

/// Waits until `value` gives something, checking every 20 ms; returns it.
async fn until_value<T>(what: &str, mut value: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = value().await {
            return value;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `done` holds, checking every 20 ms.
async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done().await {
        assert!(Instant::now() < deadline, "never: {what}");
        sleep(Duration::from_millis(20)).await;
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
fn replicas(nodes: &[Option<ShardNode>], shard: ShardId) -> Vec<NodeHandle<Kv>> {
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
async fn read(handle: &NodeHandle<Kv>, key: &str) -> Option<Bytes> {
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
    let (listeners, nodes) = bind(3).await;
    let peers = Arc::new(InProcess::default());
    let mut running = Vec::new();
    for (id, listener) in (1..=3).zip(listeners) {
        let node = start(config(id, &nodes, dir.path(), 6, 2), listener, &peers).await;
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
    let node = start(config(1, &nodes, dir.path(), 6, 2), listener, &peers).await;
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

/// The leader of `shard` among the running nodes, as its replicas report.
async fn shard_leader(nodes: &[ShardNode], shard: ShardId) -> Option<(usize, NodeHandle<Kv>)> {
    for (i, node) in nodes.iter().enumerate() {
        if let Some(handle) = node.shard(shard)
            && let Ok(status) = handle.status().await
            && status.role == Role::Leader
        {
            return Some((i, handle));
        }
    }
    None
}

/// Proposes `change` to the meta group at whichever node leads it.
async fn change_table(nodes: &[ShardNode], change: TableChange) {
    let command = TableCommand { expected_version: Some(nodes[0].table().version()), change };
    let deadline = Instant::now() + PATIENCE;
    loop {
        for node in nodes {
            if let Ok(applied) = node.meta().propose(Bytes::from(command.encode())).await {
                applied.expect("the table takes the change");
                return;
            }
        }
        assert!(Instant::now() < deadline, "the meta group never took {command:?}");
        sleep(Duration::from_millis(20)).await;
    }
}

/// A replica of a shard moves from one node to another, the way the controller moves it: the
/// table names the new node, which creates an empty replica; the shard's leader adds it as a
/// learner, then (caught up) swaps it for the old replica in one joint change; the old node,
/// left out of the group and of the table, deletes its replica durably. The moved keys are read
/// at the new replica, also after it restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_moves_between_nodes() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (listeners, nodes) = bind(4).await;
    let peers = Arc::new(InProcess::default());
    let mut running = Vec::new();
    for (id, listener) in (1..=4).zip(listeners) {
        running.push(start(config(id, &nodes, dir.path(), 2, 3), listener, &peers).await);
    }
    for node in &running {
        table_seen(node).await;
    }
    let shard = ShardId(0);
    let table = running[0].table();
    let replicas = table.shard(shard).expect("shard 0").replicas.clone();
    assert_eq!(replicas.len(), 3);
    let target = (1..=4).map(NodeId).find(|id| !replicas.contains(id)).expect("one node lacks shard 0");
    assert!(running[target.0 as usize - 1].shard(shard).is_none());

    // Keys of shard 0, written before the move.
    let keys: Vec<String> =
        (0..200).map(|i| format!("k{i}")).filter(|key| shard_of(key.as_bytes(), 2) == shard).collect();
    assert!(keys.len() > 50);
    for key in &keys {
        let command = Command::Put { key: key.clone(), value: Bytes::from(key.clone()) };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some((_, leader)) = shard_leader(&running, shard).await
                && let Ok(Response::Done) = leader.propose(encode(&command)).await
            {
                break;
            }
            assert!(Instant::now() < deadline, "shard 0 never took {key}");
            sleep(Duration::from_millis(20)).await;
        }
    }

    // A follower of shard 0 leaves (the leader could too: it would hand over after the change).
    let (leader_at, _) = shard_leader(&running, shard).await.expect("shard 0 has a leader");
    let source = *replicas.iter().find(|id| id.0 as usize - 1 != leader_at).expect("a follower");
    let moved: BTreeSet<NodeId> = replicas.iter().copied().filter(|id| *id != source).chain([target]).collect();
    change_table(&running, TableChange::SetReplicas { shard, replicas: moved.clone() }).await;
    let target_node = &running[target.0 as usize - 1];
    until("the target creates an empty replica", async || target_node.shard(shard).is_some()).await;

    // Each change is asked until the leader's membership shows it (a first attempt may apply
    // and still report an error, after which asking again is refused as changing nothing).
    until("the leader adds the target as a learner", async || {
        let Some((_, leader)) = shard_leader(&running, shard).await else { return false };
        let Ok(status) = leader.status().await else { return false };
        if status.membership.learners.contains(&target) {
            return true;
        }
        let _ = leader.change_membership(vec![ConfChange::AddLearner(target)]).await;
        false
    })
    .await;
    until("the learner catches up", async || {
        let Some((_, leader)) = shard_leader(&running, shard).await else { return false };
        let Ok(status) = leader.status().await else { return false };
        status.peers.get(&target).is_some_and(|peer| peer.lag_entries == 0 && peer.match_index >= status.commit)
    })
    .await;
    let committed = until_value("the swap commits, joint and final", async || {
        let (_, leader) = shard_leader(&running, shard).await?;
        let status = leader.status().await.ok()?;
        let done = status.committed_membership;
        if !done.is_joint() && done.voters_incoming == moved {
            return Some((done.members(), status.commit));
        }
        if !status.membership.is_joint() && status.membership.voters_incoming != moved {
            let _ = leader.change_membership(vec![ConfChange::AddVoter(target), ConfChange::Remove(source)]).await;
        }
        None
    })
    .await;

    // The source is out of the group, but it keeps its replica until the table records a
    // committed membership without it (the controller's RecordMembers; here the test's).
    let source_node = &running[source.0 as usize - 1];
    until("the source sees the new table", async || source_node.table().version() == table.version() + 1).await;
    sleep(Duration::from_millis(300)).await; // Several refresh rounds of the source.
    assert!(source_node.shard(shard).is_some(), "the source deleted its replica before the record");
    let (members, at) = committed;
    change_table(&running, TableChange::RecordMembers { shard, members, at: at.0 }).await;
    until("the source deletes its replica", async || source_node.shard(shard).is_none()).await;
    assert!(!source_node.wal().groups().contains(&shard.group()), "the source's log still holds the shard");
    assert!(
        source_node.shard(ShardId(1)).is_some() == table.shard(ShardId(1)).expect("shard 1").replicas.contains(&source)
    );

    for key in &keys {
        assert_eq!(read(&target_node.shard(shard).expect("moved"), key).await, Some(Bytes::from(key.clone())));
    }
    let voters = shard_leader(&running, shard).await.expect("a leader").1.status().await.expect("running").membership;
    assert_eq!(voters.leave_joint().voters_incoming, moved);

    // The target restarts: it reopens shard 0 with its keys, as a voter.
    let target_node = running.remove(target.0 as usize - 1);
    target_node.shutdown().await;
    let listener = TcpListener::bind(nodes[&target].raft).await.expect("the same port again");
    let restarted = start(config(target.0, &nodes, dir.path(), 2, 3), listener, &peers).await;
    assert!(restarted.shard(shard).is_some());
    for key in keys.iter().take(10) {
        assert_eq!(read(&restarted.shard(shard).expect("reopened"), key).await, Some(Bytes::from(key.clone())));
    }
    restarted.shutdown().await;
    for node in running {
        node.shutdown().await;
    }
}

/// The controller of a fast test: rounds every 50 ms; no node is marked failed.
fn controller() -> Option<RunnerConfig> {
    Some(RunnerConfig {
        interval: Duration::from_millis(50),
        limits: Limits { caught_up_entries: 16, moves_max: 2 },
        failed_after: Duration::from_secs(3600),
        call_timeout: Duration::from_secs(5),
    })
}

/// Whether every shard's group, as its leader reports, has exactly the table's replicas as
/// voters (no joint configuration, no learner), and every replica is held where the table says.
async fn settled(nodes: &[ShardNode]) -> bool {
    let table = nodes[0].table();
    for node in nodes {
        if node.table().version() != table.version() {
            return false;
        }
        let named: BTreeSet<ShardId> =
            table.shards().filter(|(_, entry)| entry.replicas.contains(&node.id())).map(|(shard, _)| shard).collect();
        if node.shard_ids().into_iter().collect::<BTreeSet<_>>() != named {
            return false;
        }
    }
    for (shard, entry) in table.shards() {
        let Some((_, leader)) = shard_leader(nodes, shard).await else { return false };
        let Ok(status) = leader.status().await else { return false };
        let membership = status.membership;
        if membership.is_joint() || !membership.learners.is_empty() || membership.voters_incoming != entry.replicas {
            return false;
        }
    }
    true
}

/// A fourth node joins a cluster of three: the controller (on the meta group's leader) makes it
/// a learner of the meta group, moves replicas to it until every node holds as many as the others
/// (give or take one), each move through a learner that catches up and one joint change, and the
/// nodes that gave a replica up delete it. Every key written before is read at every replica of
/// its shard afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_rebalances_onto_a_node_that_joins() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (mut listeners, all) = bind(4).await;
    let fourth = listeners.pop().expect("four listeners");
    let first: BTreeMap<NodeId, NodeEntry> = all.iter().take(3).map(|(id, entry)| (*id, *entry)).collect();
    let peers = Arc::new(InProcess::default());
    let (mut running, keys) = cluster(dir.path(), &peers, listeners, &first, (4, 2), controller()).await;

    // Node 4 starts empty, knowing the nodes of the table (what `serve --join` learns from a
    // member over HTTP as it asks to be added: it must accept the meta leader's connection,
    // whichever node that is); the table takes it in.
    let config = ShardNodeConfig { join: true, controller: controller(), ..config(4, &all, dir.path(), 4, 2) };
    running.push(start(config, fourth, &peers).await);
    let entry = all[&NodeId(4)];
    change_table(&running, TableChange::AddNode { id: NodeId(4), raft: entry.raft, http: entry.http }).await;

    until("the cluster rebalances onto node 4", async || {
        let table = running[0].table();
        let loads: Vec<usize> = (1..=4).map(|id| table.load(NodeId(id))).collect();
        loads == vec![2, 2, 2, 2] && settled(&running).await
    })
    .await;
    assert!(running[3].table().version() > 1, "node 4 follows the meta group");
    every_key_everywhere(&running, &keys, 4, 2).await;
    for node in &running {
        let groups: BTreeSet<_> = node.wal().groups().into_iter().filter(|group| group.0 > 0).collect();
        let held: BTreeSet<_> = node.shard_ids().into_iter().map(ShardId::group).collect();
        assert_eq!(groups, held, "node {}'s log holds only the shards it holds", node.id());
    }
    for node in running {
        node.shutdown().await;
    }
}

/// The replicas of `shard` on `nodes`.
fn replicas_of(nodes: &[ShardNode], shard: ShardId) -> Vec<NodeHandle<Kv>> {
    nodes.iter().filter_map(|node| node.shard(shard)).collect()
}

/// Starts a new cluster on `listeners` (nodes 1, 2, ... of `nodes`) of `shards` shards of
/// `replication` replicas with the controller `runner`, waits until it settles, and writes 60 keys.
async fn cluster(
    dir: &Path,
    peers: &Arc<InProcess>,
    listeners: Vec<TcpListener>,
    nodes: &BTreeMap<NodeId, NodeEntry>,
    (shards, replication): (u32, u8),
    runner: Option<RunnerConfig>,
) -> (Vec<ShardNode>, Vec<String>) {
    let mut running = Vec::new();
    for (id, listener) in (1..).zip(listeners) {
        let config = ShardNodeConfig { controller: runner, ..config(id, nodes, dir, shards, replication) };
        running.push(start(config, listener, peers).await);
    }
    for node in &running {
        table_seen(node).await;
    }
    until("the first placement settles", async || settled(&running).await).await;
    let keys: Vec<String> = (0..60).map(|i| format!("key-{i}")).collect();
    for key in &keys {
        let shard = shard_of(key.as_bytes(), shards);
        let command = Command::Put { key: key.clone(), value: Bytes::from(key.clone()) };
        until("a write is taken", async || match shard_leader(&running, shard).await {
            Some((_, leader)) => matches!(leader.propose(encode(&command)).await, Ok(Response::Done)),
            None => false,
        })
        .await;
    }
    (running, keys)
}

/// The index in `nodes` of the one leading the meta group (`leading`), or of one that does not,
/// once there is such a node.
async fn meta_leader(nodes: &[ShardNode], leading: bool) -> usize {
    until_value("a node in that role of the meta group", async || {
        for (i, node) in nodes.iter().enumerate() {
            if node.meta().status().await.is_ok_and(|status| (status.role == Role::Leader) == leading) {
                return Some(i);
            }
        }
        None
    })
    .await
}

/// Whether replica counts differ by at most one between nodes 1 to `count`.
fn balanced(node: &ShardNode, count: u64) -> bool {
    let table = node.table();
    let loads: Vec<usize> = (1..=count).map(|id| table.load(NodeId(id))).collect();
    loads.iter().max().zip(loads.iter().min()).is_some_and(|(most, least)| most - least <= 1)
}

/// Every key is read at every replica of its shard.
async fn every_key_everywhere(nodes: &[ShardNode], keys: &[String], shards: u32, replication: usize) {
    for key in keys {
        let shard = shard_of(key.as_bytes(), shards);
        let holders = replicas_of(nodes, shard);
        assert_eq!(holders.len(), replication, "shard {shard:?} has {} replicas", holders.len());
        for handle in &holders {
            assert_eq!(read(handle, key).await, Some(Bytes::from(key.clone())));
        }
    }
}

/// A drained node gives every replica up (each moved through a learner and a joint change),
/// then leaves the table; the data stays whole on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_is_emptied_and_forgotten() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let peers = Arc::new(InProcess::default());
    let (listeners, all) = bind(4).await;
    let (running, keys) = cluster(dir.path(), &peers, listeners, &all, (4, 2), controller()).await;
    let drained = NodeId(4);
    assert!(running[0].table().load(drained) > 0);
    change_table(&running, TableChange::SetNodeState { id: drained, state: NodeState::Draining }).await;
    until("node 4 is emptied and removed from the table", async || {
        let table = running[0].table();
        !table.nodes().contains_key(&drained) && running[3].shard_ids().is_empty() && settled(&running[..3]).await
    })
    .await;
    assert!(balanced(&running[0], 3));
    every_key_everywhere(&running[..3], &keys, 4, 2).await;
    assert!(running[3].wal().groups().iter().all(|group| group.0 == 0), "node 4's log holds no shard");
    for node in running {
        node.shutdown().await;
    }
}

/// A node that stops for good is marked failed once silent for `failed_after`, and its replicas
/// are re-created on the others from each shard's surviving majority: every shard is back to
/// three replicas, with every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_nodes_replicas_are_recreated_elsewhere() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let peers = Arc::new(InProcess::default());
    let (listeners, all) = bind(4).await;
    let mut runner = controller().expect("on");
    runner.failed_after = Duration::from_millis(500);
    let (mut running, keys) = cluster(dir.path(), &peers, listeners, &all, (4, 3), Some(runner)).await;
    // The node that does not lead the meta group dies (the controller's own node is the
    // restart test's business).
    let dead = running.remove(meta_leader(&running, false).await);
    let dead_id = dead.id();
    dead.shutdown().await;
    until("the dead node's replicas are re-created on the others", async || {
        let table = running[0].table();
        table.nodes().get(&dead_id).is_none_or(|entry| entry.state == NodeState::Failed)
            && table.load(dead_id) == 0
            && settled(&running).await
    })
    .await;
    every_key_everywhere(&running, &keys, 4, 3).await;
    for node in running {
        node.shutdown().await;
    }
}

/// The node that runs the controller restarts in the middle of a rebalancing: the next meta
/// leader (or the same node, back) finishes the moves from the durable state alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalancing_survives_a_restart_of_the_controllers_node() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let peers = Arc::new(InProcess::default());
    let (mut listeners, all) = bind(4).await;
    let fourth = listeners.pop().expect("four listeners");
    let first: BTreeMap<NodeId, NodeEntry> = all.iter().take(3).map(|(id, entry)| (*id, *entry)).collect();
    let (mut running, keys) = cluster(dir.path(), &peers, listeners, &first, (6, 2), controller()).await;
    let config4 = ShardNodeConfig { join: true, controller: controller(), ..config(4, &all, dir.path(), 6, 2) };
    running.push(start(config4, fourth, &peers).await);
    let entry = all[&NodeId(4)];
    change_table(&running, TableChange::AddNode { id: NodeId(4), raft: entry.raft, http: entry.http }).await;
    // As soon as the first move is in the table, the controller's node goes down.
    until("a move starts", async || running[0].table().load(NodeId(4)) > 0).await;
    let node = running.remove(meta_leader(&running, true).await);
    let id = node.id();
    node.shutdown().await;
    let listener = TcpListener::bind(all[&id].raft).await.expect("the same port again");
    let config = ShardNodeConfig { controller: controller(), ..config(id.0, &all, dir.path(), 6, 2) };
    running.push(start(config, listener, &peers).await);
    running.sort_by_key(ShardNode::id);
    until("the cluster rebalances onto node 4", async || balanced(&running[0], 4) && settled(&running).await).await;
    every_key_everywhere(&running, &keys, 6, 2).await;
    for node in running {
        node.shutdown().await;
    }
}

/// A first start that a crash cut short (the log created, one initial shard group in it, no meta
/// group) is finished at the next start with the same memberships: the node then holds every
/// shard the table names it for, and the cluster settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_first_start_is_finished() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (listeners, all) = bind(3).await;
    let first = config(1, &all, dir.path(), 4, 2);
    let create = raft_kv::shards::node::create_command(&first);
    let TableChange::Create { replicas, .. } = create.change else { panic!("a create command") };
    let identity = Identity { cluster_id: first.cluster_id, node_id: NodeId(1) };
    let wal = SharedWal::create(StdFs, &first.data, identity, WalOptions::default()).expect("a new log");
    let (shard, members) =
        replicas.iter().enumerate().find(|(_, set)| set.contains(&NodeId(1))).expect("node 1 holds a shard");
    wal.create_group(ShardId(shard as u32).group(), Membership::new(members.iter().copied())).expect("one group");
    drop(wal);
    let peers = Arc::new(InProcess::default());
    let (running, keys) = cluster(dir.path(), &peers, listeners, &all, (4, 2), controller()).await;
    let named: BTreeSet<ShardId> =
        (0..4).map(ShardId).filter(|shard| replicas[shard.0 as usize].contains(&NodeId(1))).collect();
    assert_eq!(running[0].shard_ids().into_iter().collect::<BTreeSet<_>>(), named);
    every_key_everywhere(&running, &keys, 4, 2).await;
    for node in running {
        node.shutdown().await;
    }
}

/// A lost-quorum recovery of a survivor whose shards' records in the table are ahead of its
/// history (here a record at commit index 1,000,000 naming nodes 1 to 4, as if written while node
/// 3 was cut off): the controller resets each record from the recovered node's report, so that
/// node 4, named for both shards but counted by the old record, creates its replicas, and the
/// cluster settles on nodes 3 and 4 with every key. Without the reset node 4 waits forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_survivor_behind_the_record_gets_the_record_reset() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let peers = Arc::new(InProcess::default());
    let (mut listeners, all) = bind(4).await;
    let fourth = listeners.pop().expect("four listeners");
    let first: BTreeMap<NodeId, NodeEntry> = all.iter().take(3).map(|(id, entry)| (*id, *entry)).collect();
    let runner = Some(RunnerConfig { failed_after: Duration::from_millis(200), ..controller().expect("a controller") });
    let (running, keys) = cluster(dir.path(), &peers, listeners, &first, (2, 3), runner).await;
    let ahead: BTreeSet<NodeId> = (1..=4).map(NodeId).collect();
    for shard in [ShardId(0), ShardId(1)] {
        let record = TableChange::RecordMembers { shard, members: ahead.clone(), at: 1_000_000 };
        change_table(&running, record).await;
    }
    until("the records ahead applied on node 3", async || {
        running[2].table().shards().all(|(_, entry)| entry.members_at == 1_000_000)
    })
    .await;
    for node in running {
        node.shutdown().await;
    }

    // Nodes 1 and 2 are lost; node 3 is recovered offline, as `raft-kv recover --all` does.
    let data = dir.path().join("node-3");
    let identity = Identity { cluster_id: 7, node_id: NodeId(3) };
    let wal = SharedWal::open(StdFs, &data, identity, WalOptions::default()).expect("node 3's log");
    for group in wal.groups() {
        let mut store = wal.group(group).expect("a group");
        raft_storage::recover::become_sole_voter(&mut store, NodeId(3)).expect("recovered");
    }
    drop(wal);
    raft_kv::shards::node::note_recovered(&data, &[ShardId(0), ShardId(1)].into()).expect("noted");

    let listener = TcpListener::bind(all[&NodeId(3)].raft).await.expect("the same port again");
    let mut running = vec![
        start(ShardNodeConfig { controller: runner, ..config(3, &all, dir.path(), 2, 3) }, listener, &peers).await,
    ];
    let config4 = ShardNodeConfig { join: true, controller: runner, ..config(4, &all, dir.path(), 2, 3) };
    running.push(start(config4, fourth, &peers).await);
    let entry = all[&NodeId(4)];
    table_seen(&running[0]).await;
    change_table(&running, TableChange::AddNode { id: NodeId(4), raft: entry.raft, http: entry.http }).await;
    until("both shards on nodes 3 and 4, the lost nodes forgotten", async || {
        let table = running[0].table();
        let nodes: Vec<NodeId> = table.nodes().keys().copied().collect();
        nodes == [NodeId(3), NodeId(4)]
            && table.shards().all(|(_, entry)| entry.replicas == [NodeId(3), NodeId(4)].into())
            && settled(&running).await
    })
    .await;
    assert!(!data.join(raft_kv::shards::node::RECOVERED_FILE).exists(), "the note is dropped");
    every_key_everywhere(&running, &keys, 2, 2).await;
    for node in running {
        node.shutdown().await;
    }
}

/// The same, with the meta group alive elsewhere (a recovery of shards alone, `recover --shard`):
/// nodes 2 and 4 are lost, the meta group keeps nodes 1 and 3, and node 3's meta replica was down
/// when the records were pushed ahead, so at its restart its cached table still holds the old
/// records. The note must not be dropped on that cached copy: only once a linearizable read shows
/// the reset record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_shard_keeps_its_note_until_the_current_table_has_the_reset_record() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let peers = Arc::new(InProcess::default());
    let (listeners, all) = bind(4).await;
    let runner = Some(RunnerConfig { failed_after: Duration::from_millis(200), ..controller().expect("a controller") });
    let (mut running, keys) = cluster(dir.path(), &peers, listeners, &all, (4, 3), runner).await;
    let table = running[0].table();
    let lost: BTreeSet<NodeId> = [NodeId(2), NodeId(4)].into();
    // The shards whose majority is on the lost nodes, and their one survivor.
    let survivors: BTreeMap<ShardId, NodeId> = table
        .shards()
        .filter(|(_, entry)| entry.replicas.is_superset(&lost))
        .map(|(shard, entry)| (shard, *entry.replicas.difference(&lost).next().expect("three replicas")))
        .collect();
    assert!(survivors.values().any(|node| *node == NodeId(3)), "a shard to recover on node 3: {survivors:?}");
    // Node 3 goes down; the others push the records of its shards ahead.
    let node3 = running.remove(2);
    node3.shutdown().await;
    let ahead: BTreeSet<NodeId> = (1..=4).map(NodeId).collect();
    for (shard, _) in survivors.iter().filter(|(_, node)| **node == NodeId(3)) {
        let record = TableChange::RecordMembers { shard: *shard, members: ahead.clone(), at: 1_000_000 };
        change_table(&running, record).await;
    }
    for node in running {
        node.shutdown().await;
    }
    // Nodes 2 and 4 are lost; each survivor is recovered offline for its shards alone.
    for survivor in [NodeId(1), NodeId(3)] {
        let data = dir.path().join(format!("node-{}", survivor.0));
        let identity = Identity { cluster_id: 7, node_id: survivor };
        let wal = SharedWal::open(StdFs, &data, identity, WalOptions::default()).expect("a survivor's log");
        let mine: BTreeSet<ShardId> =
            survivors.iter().filter(|(_, node)| **node == survivor).map(|(shard, _)| *shard).collect();
        for shard in &mine {
            let mut store = wal.group(shard.group()).expect("the shard's group");
            raft_storage::recover::become_sole_voter(&mut store, survivor).expect("recovered");
        }
        drop(wal);
        if !mine.is_empty() {
            raft_kv::shards::node::note_recovered(&data, &mine).expect("noted");
        }
    }
    let mut running = Vec::new();
    for id in [1, 3] {
        let listener = TcpListener::bind(all[&NodeId(id)].raft).await.expect("the same port again");
        running.push(
            start(ShardNodeConfig { controller: runner, ..config(id, &all, dir.path(), 4, 3) }, listener, &peers).await,
        );
    }
    until("every shard on nodes 1 and 3, the lost nodes forgotten", async || {
        let table = running[0].table();
        let nodes: Vec<NodeId> = table.nodes().keys().copied().collect();
        nodes == [NodeId(1), NodeId(3)]
            && table.shards().all(|(_, entry)| entry.replicas == [NodeId(1), NodeId(3)].into())
            && settled(&running).await
    })
    .await;
    for id in [1, 3] {
        let note = dir.path().join(format!("node-{id}")).join(raft_kv::shards::node::RECOVERED_FILE);
        assert!(!note.exists(), "node {id}'s note is dropped");
    }
    every_key_everywhere(&running, &keys, 4, 2).await;
    for node in running {
        node.shutdown().await;
    }
}
