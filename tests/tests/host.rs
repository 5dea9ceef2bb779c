//! Many Raft groups per node on the worker-pool driver (`raft_net::Host`, issue 19): three nodes,
//! each with one TCP transport, one shared write-ahead log and a pool of two workers, host many
//! groups that elect, replicate, survive a restart of every node from the shared log, and come
//! and go at run time.

use std::collections::BTreeMap;
use std::path::Path;

use std::time::Duration;

use raft_core::{GroupId, Membership, NodeId, Options, Role};
use raft_net::{Host, HostConfig, NodeConfig, NodeHandle, PeerWatch, ProposeError, TcpTransport, TokioConnector};
use raft_storage::{GroupStore, Identity, SharedWal, WalOptions};
use raft_testkit::{Kv, KvView, eventually, listeners, membership, propose, set, tcp_options};
use tokio::net::TcpListener;

const IDS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

/// One node: its transport, its log, its host and, per group, a handle and its state machine's
/// view.
struct Node {
    id: NodeId,
    transport: TcpTransport,
    wal: SharedWal,
    host: Host<GroupStore>,
    groups: BTreeMap<GroupId, (NodeHandle<Kv>, KvView)>,
    /// Its groups quiesce when idle, and its host watches its peers.
    quiet: bool,
}

fn identity(id: NodeId) -> Identity {
    Identity { cluster_id: raft_testkit::CLUSTER, node_id: id }
}

fn group_config(id: NodeId, addresses: &BTreeMap<NodeId, std::net::SocketAddr>, quiet: bool) -> NodeConfig {
    let mut config = raft_testkit::config(id);
    config.addresses = addresses.clone();
    if quiet {
        config.options = Options::builder().election_ticks(10).heartbeat_ticks(2).quiesce(true).build().expect("valid");
    }
    config
}

/// The liveness watch of a quiet test node: a ping every heartbeat interval (2 ticks); a peer is
/// reported down after a second of silence (five election timeouts: a loaded machine does not
/// stall that long, so no report is false).
fn watch(transport: &TcpTransport) -> PeerWatch {
    PeerWatch::new(transport.peer_link(), raft_testkit::TICK * 2, Duration::from_secs(1))
}

impl Node {
    /// Starts node `id` over `listener` with a log in `dir` (created, or opened with its groups
    /// when `groups` is empty and the log exists).
    fn start(
        id: NodeId,
        listener: TcpListener,
        addresses: &BTreeMap<NodeId, std::net::SocketAddr>,
        dir: &Path,
        create: &[GroupId],
        workers: usize,
        quiet: bool,
    ) -> Node {
        let peers = addresses.iter().filter(|(peer, _)| **peer != id).map(|(p, a)| (*p, *a)).collect();
        let transport =
            TcpTransport::start_node(raft_testkit::CLUSTER, id, listener, TokioConnector, peers, tcp_options())
                .expect("transport");
        let wal = if dir.join("IDENTITY").exists() {
            SharedWal::open(raft_storage::StdFs, dir, identity(id), WalOptions::default()).expect("open the log")
        } else {
            SharedWal::create(raft_storage::StdFs, dir, identity(id), WalOptions::default()).expect("create the log")
        };
        for &group in create {
            drop(wal.create_group(group, membership(&[1, 2, 3])).expect("a new group"));
        }
        let host = Host::start(HostConfig {
            thread_name: format!("host-{id}"),
            tick_interval: raft_testkit::TICK,
            ..HostConfig::with_workers(workers)
        })
        .expect("host");
        if quiet {
            host.watch_peers(watch(&transport)).expect("a valid watch");
        }
        let mut node = Node { id, transport, wal, host, groups: BTreeMap::new(), quiet };
        for group in node.wal.groups() {
            node.run_group(group, addresses);
        }
        node
    }

    /// Runs `group` (already in the log) on the host.
    fn run_group(&mut self, group: GroupId, addresses: &BTreeMap<NodeId, std::net::SocketAddr>) {
        let (transport, inbound) = self.transport.register_group(group).expect("a new group");
        let store = self.wal.group(group).expect("the group is in the log");
        let view = KvView::default();
        let handle = self
            .host
            .add_group(group, group_config(self.id, addresses, self.quiet), store, transport, inbound, Kv(view.clone()))
            .expect("added");
        self.groups.insert(group, (handle, view));
    }

    /// Dies as a crash would look to its peers: its connections go first, so nothing it does
    /// on its way down (a quiet leader's last heartbeat) reaches them.
    async fn crash(self) {
        let Node { transport, host, .. } = self;
        transport.shutdown().await;
        host.shutdown().await;
    }

    async fn shutdown(self) {
        self.host.shutdown().await;
        for (handle, _) in self.groups.values() {
            assert!(handle.stop_reason().is_some(), "the host's shutdown stopped every group");
        }
        self.transport.shutdown().await;
    }
}

fn handles(nodes: &[Node], group: GroupId) -> Vec<NodeHandle<Kv>> {
    nodes.iter().map(|node| node.groups[&group].0.clone()).collect()
}

/// Waits until every replica of `group` holds exactly `keys`, each with value `value`.
async fn every_replica_holds(nodes: &[Node], group: GroupId, keys: &[String], value: &str) {
    let views: Vec<KvView> = nodes.iter().map(|node| node.groups[&group].1.clone()).collect();
    let keys = keys.to_vec();
    let value = value.to_string();
    eventually(&format!("every replica of group {group} holds {keys:?}"), move || {
        let (views, keys, value) = (views.clone(), keys.clone(), value.clone());
        async move {
            views.iter().all(|view| {
                let map = view.map();
                map.len() == keys.len()
                    && keys.iter().all(|key| map.get(key.as_bytes()).is_some_and(|v| v[..] == *value.as_bytes()))
            })
        }
    })
    .await;
}

/// Three nodes over TCP on 127.0.0.1, each with a shared log in a fresh directory that holds
/// groups `1..=groups`, on hosts of `workers` workers (`quiet`: the groups quiesce and the hosts
/// watch their peers). Returns the directories, the groups, the address book and the nodes.
async fn three_nodes(
    groups: u64,
    workers: usize,
    quiet: bool,
) -> (Vec<tempfile::TempDir>, Vec<GroupId>, BTreeMap<NodeId, std::net::SocketAddr>, Vec<Node>) {
    raft_testkit::init_tracing(); // RUST_LOG shows the crates' logs (for failing tests).
    let dirs: Vec<tempfile::TempDir> = IDS.iter().map(|_| tempfile::tempdir().expect("temp dir")).collect();
    let all: Vec<GroupId> = (1..=groups).map(GroupId).collect();
    let (sockets, addresses) = listeners(&IDS).await.expect("127.0.0.1 listeners");
    let mut nodes = Vec::new();
    for ((&id, listener), dir) in IDS.iter().zip(sockets).zip(&dirs) {
        nodes.push(Node::start(id, listener, &addresses, dir.path(), &all, workers, quiet));
    }
    (dirs, all, addresses, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_on_a_worker_pool_replicate_share_the_log_and_recover_from_it() {
    const GROUPS: u64 = 24;
    let (dirs, all, addresses, nodes) = three_nodes(GROUPS, 2, false).await;

    // Every group writes its own key through its own leader, all groups at once.
    let mut writes = tokio::task::JoinSet::new();
    for &group in &all {
        let handles = handles(&nodes, group);
        writes.spawn(async move { propose(&handles, &IDS, 0, set(&format!("key-{}", group.0), "one")).await });
    }
    while let Some(written) = writes.join_next().await {
        written.expect("the write's task");
    }
    for &group in &all {
        every_replica_holds(&nodes, group, &[format!("key-{}", group.0)], "one").await;
    }
    // The node-wide view: every group on every node, one leader per group over the nodes, and
    // the key applied everywhere.
    let statuses: Vec<_> = nodes.iter().map(|node| node.host.status()).collect();
    assert!(statuses.iter().all(|status| status.groups.len() == all.len()));
    assert!(
        statuses
            .iter()
            .flat_map(|status| &status.groups)
            .all(|group| group.applied >= group.commit_index.min(raft_core::Index(2)))
    );
    let leaders: usize = statuses.iter().map(|status| status.leaders).sum();
    assert!(leaders > 0, "the nodes lead some groups");
    let mut leader_terms = std::collections::BTreeSet::new();
    for group in statuses.iter().flat_map(|status| &status.groups) {
        if group.role == raft_core::Role::Leader {
            assert!(leader_terms.insert((group.group, group.term)), "two leaders in one term: {group:?}");
        }
    }
    for node in &nodes {
        assert_eq!(node.host.groups(), all, "every group runs on every node");
        let transport = node.transport.stats();
        assert!(transport.connections_dialed < GROUPS, "one connection per peer, not per group: {transport:?}");
    }

    // Restart every node from its log: each group comes back with its data (its state machine
    // is rebuilt by applying its log again) and takes new writes.
    let listeners_again = {
        let mut sockets = Vec::new();
        for node in nodes {
            let address = addresses[&node.id];
            node.shutdown().await;
            sockets.push(raft_testkit::bind(address).await.expect("the same address again"));
        }
        sockets
    };
    let mut nodes = Vec::new();
    for ((&id, listener), dir) in IDS.iter().zip(listeners_again).zip(&dirs) {
        nodes.push(Node::start(id, listener, &addresses, dir.path(), &[], 2, false));
    }
    for &group in &all {
        let handles = handles(&nodes, group);
        propose(&handles, &IDS, 0, set(&format!("key-{}", group.0), "two")).await;
    }
    for &group in &all {
        every_replica_holds(&nodes, group, &[format!("key-{}", group.0)], "two").await;
    }
    for node in nodes {
        node.shutdown().await;
    }
}

/// Idle groups quiesce on a host that watches its peers (issue 19: idle groups are nearly free):
/// once every group is quiet, nothing steps them and only the node-level pings cross the
/// network. When the node that leads groups dies, nobody writes and no group heartbeats, yet
/// the survivors elect new leaders for its groups: the watch reports the silent node down to
/// every group. Its restart is seen as a new incarnation, and it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_groups_cost_nothing_and_a_dead_leaders_groups_elect_again_through_the_watch() {
    const GROUPS: u64 = 8;
    let (dirs, all, addresses, mut nodes) = three_nodes(GROUPS, 2, true).await;
    for &group in &all {
        propose(&handles(&nodes, group), &IDS, 0, set(&format!("key-{}", group.0), "one")).await;
    }
    every_group_quiet(&nodes, GROUPS as usize).await;

    // Quiet: no group is stepped and no message is sent, only pings (unless a stall of the
    // machine made a peer look silent for a second, which wakes groups: then that is seen).
    let reports = |nodes: &[Node]| nodes.iter().map(|node| node.host.stats().peer_downs).sum::<u64>();
    let (before, reports_before) =
        (nodes.iter().map(|node| (node.host.stats(), node.transport.stats())).collect::<Vec<_>>(), reports(&nodes));
    tokio::time::sleep(raft_testkit::TICK * 50).await;
    let stalled = reports(&nodes) != reports_before; // A report on any node wakes groups anywhere.
    for (node, (host, transport)) in nodes.iter().zip(before) {
        let (host_now, transport_now) = (node.host.stats(), node.transport.stats());
        assert!(transport_now.pings_written > transport.pings_written, "node {} pings its peers", node.id);
        if !stalled {
            assert_eq!(host_now.group_steps, host.group_steps, "node {}: quiet groups are not stepped", node.id);
            assert_eq!(transport_now.messages_written, transport.messages_written, "node {}: no message", node.id);
        }
    }

    // The node leading the most groups dies. Nobody writes; the survivors elect new leaders of
    // its groups anyway.
    let victim = (0..nodes.len()).max_by_key(|&index| nodes[index].host.status().leaders).expect("three nodes");
    let led = nodes[victim].host.status().leaders;
    assert!(led > 0, "some node leads a group");
    let dead = nodes.remove(victim);
    let (dead_id, dead_address) = (dead.id, addresses[&dead.id]);
    dead.crash().await;
    eventually("the survivors lead every group", || {
        let statuses: Vec<_> = nodes.iter().map(|node| node.host.status()).collect();
        async move { statuses.iter().map(|status| status.leaders).sum::<usize>() == GROUPS as usize }
    })
    .await;
    eventually("a survivor reported the dead node down", || {
        let reported = reports(&nodes);
        async move { reported >= 1 }
    })
    .await;
    let survivor_ids: Vec<NodeId> = nodes.iter().map(|node| node.id).collect();
    for &group in &all {
        propose(&handles(&nodes, group), &survivor_ids, 0, set(&format!("key-{}", group.0), "two")).await;
    }

    // It comes back: a new incarnation, which the others notice, and it catches up.
    let downs_before: Vec<u64> = nodes.iter().map(|node| node.host.stats().peer_downs).collect();
    let listener = raft_testkit::bind(dead_address).await.expect("the same address again");
    let index = IDS.iter().position(|&id| id == dead_id).expect("one of the three");
    nodes.insert(index, Node::start(dead_id, listener, &addresses, dirs[index].path(), &[], 2, true));
    for &group in &all {
        every_replica_holds(&nodes, group, &[format!("key-{}", group.0)], "two").await;
    }
    eventually("the others see the restarted node's new incarnation", || {
        let downs: Vec<u64> =
            nodes.iter().filter(|node| node.id != dead_id).map(|node| node.host.stats().peer_downs).collect();
        let before = downs_before.clone();
        async move { downs.iter().zip(&before).all(|(now, before)| now > before) }
    })
    .await;
    every_group_quiet(&nodes, GROUPS as usize).await;
    for node in nodes {
        node.shutdown().await;
    }
}

/// A quiet group's leader replica removed from a node that runs on (its pings go on, so no
/// report comes): the replica wakes its followers before it stops, and they elect another
/// leader while the node's other groups stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_leader_replica_removed_from_a_live_node_hands_its_group_to_another() {
    const GROUPS: u64 = 2;
    let (_dirs, all, _addresses, mut nodes) = three_nodes(GROUPS, 2, true).await;
    for &group in &all {
        propose(&handles(&nodes, group), &IDS, 0, set("k", "one")).await;
    }
    every_group_quiet(&nodes, GROUPS as usize).await;
    let group = GroupId(1);
    let leader = nodes
        .iter()
        .position(|node| node.host.status().groups.iter().any(|g| g.group == group && g.role == Role::Leader))
        .expect("group 1 has a leader");
    let (handle, _) = nodes[leader].groups.remove(&group).expect("the replica");
    handle.shutdown().await;
    let others: Vec<usize> = (0..nodes.len()).filter(|&index| index != leader).collect();
    eventually("another node leads group 1", || {
        let statuses: Vec<_> = others.iter().map(|&index| nodes[index].host.status()).collect();
        async move {
            statuses.iter().any(|status| status.groups.iter().any(|g| g.group == group && g.role == Role::Leader))
        }
    })
    .await;
    let survivors: Vec<NodeHandle<Kv>> = others.iter().map(|&index| nodes[index].groups[&group].0.clone()).collect();
    let survivor_ids: Vec<NodeId> = others.iter().map(|&index| nodes[index].id).collect();
    propose(&survivors, &survivor_ids, 0, set("k", "two")).await;
    for node in nodes {
        node.shutdown().await;
    }
}

/// Waits until every group is quiet on every node, with one leader per group.
async fn every_group_quiet(nodes: &[Node], groups: usize) {
    eventually("every group is quiet on every node", || {
        let statuses: Vec<_> = nodes.iter().map(|node| node.host.status()).collect();
        async move {
            statuses.iter().all(|status| status.quiet == groups)
                && statuses.iter().flat_map(|status| &status.groups).filter(|group| group.role == Role::Leader).count()
                    == groups
        }
    })
    .await;
}

/// Quiescence needs the watch: a host that does not watch its peers refuses a quiet group
/// (its followers would never learn that a quiet leader died).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_a_peer_watch_refuses_a_quiet_group() {
    let (mut sockets, addresses) = listeners(&IDS[..1]).await.expect("a 127.0.0.1 listener");
    let transport = TcpTransport::start_node(
        raft_testkit::CLUSTER,
        IDS[0],
        sockets.remove(0),
        TokioConnector,
        BTreeMap::new(),
        tcp_options(),
    )
    .expect("transport");
    let host = Host::start(HostConfig::with_workers(1)).expect("host");
    let (group_transport, inbound) = transport.register_group(GroupId(1)).expect("a new group");
    let store = raft_storage::MemStorage::new(membership(&[1, 2, 3]));
    let refused = host.add_group(
        GroupId(1),
        group_config(IDS[0], &addresses, true),
        store,
        group_transport,
        inbound,
        Kv(KvView::default()),
    );
    assert!(
        matches!(
            refused,
            Err(raft_net::HostError::Start {
                source: raft_net::NodeStartError::Config(raft_net::ConfigError::QuiesceWithoutLiveness),
                ..
            })
        ),
        "a quiet group needs the watch: {refused:?}"
    );
    // A timeout that does not exceed two ping intervals (in the host's ticks) is refused.
    let hasty = PeerWatch::new(transport.peer_link(), Duration::from_millis(100), Duration::from_millis(200));
    assert!(matches!(host.watch_peers(hasty), Err(raft_net::HostError::Config(_))));
    host.watch_peers(watch(&transport)).expect("a valid watch");
    let (group_transport, inbound) = transport.register_group(GroupId(2)).expect("a new group");
    let store = raft_storage::MemStorage::new(membership(&[1, 2, 3]));
    host.add_group(
        GroupId(2),
        group_config(IDS[0], &addresses, true),
        store,
        group_transport,
        inbound,
        Kv(KvView::default()),
    )
    .expect("with the watch, a quiet group runs");
    host.shutdown().await;
    transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_added_at_run_time_replicates_and_a_removed_one_is_gone_for_good() {
    let dirs: Vec<tempfile::TempDir> = IDS.iter().map(|_| tempfile::tempdir().expect("temp dir")).collect();
    let (sockets, addresses) = listeners(&IDS).await.expect("127.0.0.1 listeners");
    let mut nodes = Vec::new();
    for ((&id, listener), dir) in IDS.iter().zip(sockets).zip(&dirs) {
        nodes.push(Node::start(id, listener, &addresses, dir.path(), &[GroupId(1)], 1, false));
    }
    let added = GroupId(42);
    for node in &mut nodes {
        drop(node.wal.create_group(added, membership(&[1, 2, 3])).expect("a new group"));
        node.run_group(added, &addresses);
    }
    propose(&handles(&nodes, added), &IDS, 0, set("late", "yes")).await;
    every_replica_holds(&nodes, added, &["late".to_string()], "yes").await;
    propose(&handles(&nodes, GroupId(1)), &IDS, 0, set("early", "yes")).await;
    every_replica_holds(&nodes, GroupId(1), &["early".to_string()], "yes").await;

    // Removing: stop the group on every node, then delete its data from each log.
    for node in &mut nodes {
        let (handle, _) = node.groups.remove(&added).expect("hosted");
        handle.shutdown().await;
        let refused = handle.propose(set("after", "no")).await;
        assert!(matches!(refused, Err(ProposeError::ShuttingDown)), "a removed group takes nothing: {refused:?}");
        eventually("the host lets the stopped group go", || {
            let groups = node.host.groups();
            async move { groups == [GroupId(1)] }
        })
        .await;
        assert!(node.transport.unregister_group(added));
        node.wal.remove_group(added).expect("removed from the log");
        assert_eq!(node.wal.groups(), [GroupId(1)]);
    }
    // The other group is untouched.
    propose(&handles(&nodes, GroupId(1)), &IDS, 0, set("still", "yes")).await;
    for node in nodes {
        node.shutdown().await;
    }
}

/// One node hosting many single-voter groups on one worker: the groups that became ready
/// while the worker was busy (here: in a slow fsync) are stepped in one round, and that round
/// writes all their outputs with one call to the log (group commit across groups).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_writes_the_outputs_of_many_groups_together() {
    use raft_net::MemNetwork;
    use raft_storage::testing::SimFs;
    const GROUPS: u64 = 64;
    let id = NodeId(1);
    let fs = SimFs::new(11);
    let wal = SharedWal::create(fs.clone(), "/wal", identity(id), WalOptions::default()).expect("log");
    let network = MemNetwork::new(std::num::NonZeroUsize::new(64).expect("non-zero"));
    let host = Host::start(HostConfig::with_workers(1)).expect("host");
    let mut groups = Vec::new();
    for group in (1..=GROUPS).map(GroupId) {
        let store = wal.create_group(group, Membership::new([id])).expect("a new group");
        let (transport, inbound) = network.join_group(id, group).expect("joined");
        let handle = host
            .add_group(group, raft_testkit::config(id), store, transport, inbound, Kv(KvView::default()))
            .expect("added");
        groups.push(handle);
    }
    // Every group elects itself and commits its first entry.
    for handle in &groups {
        propose(std::slice::from_ref(handle), &[id], 0, set("first", "v")).await;
    }
    let before = host.stats();

    // The worker is held in a sync while every group gets a proposal.
    fs.hold_syncs();
    let held = groups[0].clone();
    let first = tokio::spawn(async move { held.propose(set("second", "v")).await });
    // The write counter goes up as the worker hands the round's outputs to the log.
    eventually("the worker is in its sync", || {
        let writes = host.stats().writes;
        async move { writes > before.writes }
    })
    .await;
    let mut writes = tokio::task::JoinSet::new();
    for handle in &groups[1..] {
        let handle = handle.clone();
        writes.spawn(async move { handle.propose(set("second", "v")).await });
    }
    eventually("every other group is ready", || {
        let ready = host.status().ready;
        async move { ready == GROUPS as usize - 1 }
    })
    .await;
    fs.release_syncs();
    first.await.expect("the first write's task").expect("the first write");
    while let Some(written) = writes.join_next().await {
        written.expect("a write's task").expect("a write");
    }
    let after = host.stats();
    let (writes, outputs) = (after.writes - before.writes, after.outputs_written - before.outputs_written);
    // One write per output would make at least 64; the 63 groups that waited share one or two.
    assert!(outputs >= GROUPS, "{before:?} {after:?}");
    assert!(writes * 8 <= outputs, "the waiting groups' outputs were written together: {before:?} {after:?}");
    host.shutdown().await;
}

/// Workers that sleep the moment they find nothing to do (`idle_poll` zero), more of them than
/// the machine has cores, and many groups whose clients each keep one write in flight: every
/// write wakes a sleeping worker, and a push often comes while a notified worker has not yet
/// woken (a push notifies only a sleeper no notify is on its way to). No wake-up may be lost: a
/// write left on the ready queue with every worker asleep would never be answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_that_sleep_at_once_miss_no_wake_up() {
    use raft_storage::MemStorage;
    const GROUPS: u64 = 16;
    const WRITES: usize = 150;
    let id = NodeId(1);
    let network = raft_net::MemNetwork::default();
    let host: Host<MemStorage> =
        Host::start(HostConfig { idle_poll: Duration::ZERO, ..HostConfig::with_workers(4) }).expect("host");
    let mut clients = tokio::task::JoinSet::new();
    for group in (1..=GROUPS).map(GroupId) {
        let (transport, inbound) = network.join_group(id, group).expect("joined");
        let handle = host
            .add_group(
                group,
                raft_testkit::config(id),
                MemStorage::new(Membership::new([id])),
                transport,
                inbound,
                Kv(KvView::default()),
            )
            .expect("added");
        clients.spawn(async move {
            propose(std::slice::from_ref(&handle), &[id], 0, set("first", "v")).await;
            for write in 0..WRITES {
                // A lost wake-up leaves this write unanswered: the timeout names it.
                let answered =
                    tokio::time::timeout(Duration::from_secs(30), handle.propose(set("k", &write.to_string())));
                answered.await.expect("answered (no lost wake-up)").expect("written");
            }
        });
    }
    while let Some(client) = clients.join_next().await {
        client.expect("a client's task");
    }
    let stats = host.stats();
    assert!(stats.group_steps >= GROUPS * WRITES as u64, "{stats:?}");
    host.shutdown().await;
}

/// The host as one task on a `LocalSet` (as the turmoil simulation runs it): three nodes' hosts
/// on one thread, over the in-memory network, run four groups that elect and replicate.
#[test]
fn hosts_as_tasks_on_one_thread_run_their_groups() {
    use raft_net::MemNetwork;
    use raft_storage::MemStorage;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let network = MemNetwork::new(std::num::NonZeroUsize::new(1024).expect("non-zero"));
        let groups: Vec<GroupId> = (1..=4).map(GroupId).collect();
        let mut hosts = Vec::new();
        let mut handles: BTreeMap<GroupId, Vec<NodeHandle<Kv>>> = BTreeMap::new();
        let mut views: BTreeMap<GroupId, Vec<KvView>> = BTreeMap::new();
        for id in IDS {
            let host: Host<MemStorage> = Host::start_task(HostConfig::default()).expect("host");
            for &group in &groups {
                let (transport, inbound) = network.join_group(id, group).expect("joined");
                let view = KvView::default();
                let handle = host
                    .add_group(group, raft_testkit::config(id), MemStorage::new(membership(&[1, 2, 3])), transport, inbound, Kv(view.clone()))
                    .expect("added");
                handles.entry(group).or_default().push(handle);
                views.entry(group).or_default().push(view);
            }
            hosts.push(host);
        }
        for &group in &groups {
            propose(&handles[&group], &IDS, 0, set("k", &format!("v{}", group.0))).await;
        }
        for &group in &groups {
            let group_views = views[&group].clone();
            let value = format!("v{}", group.0);
            eventually(&format!("group {group} replicates"), move || {
                let (views, value) = (group_views.clone(), value.clone());
                async move { views.iter().all(|view| view.map().get(&b"k"[..]).is_some_and(|v| v[..] == *value.as_bytes())) }
            })
            .await;
        }
        for host in hosts {
            host.shutdown().await;
        }
    });
}

/// A state machine that panics on the command `boom`, and otherwise counts.
struct Fragile(u64);

impl raft_net::StateMachine for Fragile {
    type Response = u64;
    type RestoreError = std::convert::Infallible;

    fn apply(&mut self, _index: raft_core::Index, command: &bytes::Bytes) -> u64 {
        assert!(&command[..] != b"boom", "the state machine was told to panic");
        self.0 += 1;
        self.0
    }

    fn snapshot(&self, sink: &mut dyn std::io::Write) -> std::io::Result<()> {
        sink.write_all(&self.0.to_le_bytes())
    }

    fn restore(&mut self, _reader: &mut dyn std::io::Read) -> Result<(), Self::RestoreError> {
        Ok(())
    }
}

/// A state machine that panics stops its own group, with that reason, and no other group of the
/// host: the worker that ran it goes on with the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_state_machine_stops_its_group_only() {
    use raft_net::{MemNetwork, StopReason};
    use raft_storage::MemStorage;
    let id = NodeId(1);
    let network = MemNetwork::new(std::num::NonZeroUsize::new(64).expect("non-zero"));
    let host: Host<MemStorage> = Host::start(HostConfig::with_workers(1)).expect("host");
    let mut handles = Vec::new();
    for group in (1..=3).map(GroupId) {
        let (transport, inbound) = network.join_group(id, group).expect("joined");
        let storage = MemStorage::new(Membership::new([id]));
        handles.push(
            host.add_group(group, raft_testkit::config(id), storage, transport, inbound, Fragile(0)).expect("added"),
        );
    }
    for handle in &handles {
        propose(std::slice::from_ref(handle), &[id], 0, bytes::Bytes::from_static(b"one")).await;
    }
    let outcome = handles[1].propose(bytes::Bytes::from_static(b"boom")).await;
    assert!(outcome.is_err(), "the panicking command is not answered with a response: {outcome:?}");
    eventually("the group whose state machine panicked stops", || {
        let handle = handles[1].clone();
        async move { handle.stop_reason().is_some() }
    })
    .await;
    assert!(
        matches!(handles[1].stop_reason(), Some(StopReason::StateMachinePanicked)),
        "{:?}",
        handles[1].stop_reason()
    );
    // The others go on, on the same worker.
    for handle in [&handles[0], &handles[2]] {
        assert_eq!(propose(std::slice::from_ref(handle), &[id], 0, bytes::Bytes::from_static(b"two")).await, 2);
        assert!(handle.stop_reason().is_none());
    }
    eventually("the host lets the stopped group go", || {
        let groups = host.groups();
        async move { groups == [GroupId(1), GroupId(3)] }
    })
    .await;
    host.shutdown().await;
}

/// A write error of the shared log stops every group that wrote in that round with
/// `StorageFailed` and loses no acknowledged write: the log, reopened after a crash, holds every
/// write that was answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_error_of_the_shared_log_fail_stops_the_groups_and_loses_nothing_answered() {
    use raft_net::{MemNetwork, StopReason, StorageOperation};
    use raft_storage::testing::SimFs;
    let id = NodeId(1);
    let fs = SimFs::new(7);
    let wal = SharedWal::create(fs.clone(), "/wal", identity(id), WalOptions::default()).expect("log");
    let network = MemNetwork::new(std::num::NonZeroUsize::new(64).expect("non-zero"));
    let host = Host::start(HostConfig::with_workers(1)).expect("host");
    let mut handles = Vec::new();
    for group in (1..=4).map(GroupId) {
        let store = wal.create_group(group, Membership::new([id])).expect("a new group");
        let (transport, inbound) = network.join_group(id, group).expect("joined");
        handles.push(
            host.add_group(group, raft_testkit::config(id), store, transport, inbound, Kv(KvView::default()))
                .expect("added"),
        );
    }
    for (number, handle) in handles.iter().enumerate() {
        propose(std::slice::from_ref(handle), &[id], 0, set(&format!("key-{number}"), "kept")).await;
    }

    fs.fail_after(0, std::io::ErrorKind::Other);
    let error = handles[0].propose(set("doomed", "x")).await.expect_err("the write fails");
    assert!(
        matches!(&error, ProposeError::StorageFailed(failure) if failure.operation == StorageOperation::Write),
        "{error:?}"
    );
    // The log is stopped for every group: each stops at its next write at the latest.
    for (number, handle) in handles.iter().enumerate().skip(1) {
        let refused = handle.propose(set(&format!("late-{number}"), "x")).await;
        assert!(matches!(refused, Err(ProposeError::StorageFailed(_))), "{refused:?}");
    }
    for handle in &handles {
        assert!(matches!(handle.stop_reason(), Some(StopReason::StorageFailed(_))), "{:?}", handle.stop_reason());
    }
    host.shutdown().await;
    drop(wal);

    // A crash loses what was not synced; every answered write survives it.
    fs.crash();
    let wal = SharedWal::open(fs.clone(), "/wal", identity(id), WalOptions::default()).expect("reopen");
    assert_eq!(wal.groups(), (1..=4).map(GroupId).collect::<Vec<_>>());
    for (number, group) in (1..=4).map(GroupId).enumerate() {
        let store = wal.group(group).expect("the group");
        let last = raft_core::Storage::last_index(&store).expect("last index");
        let entries = raft_core::Storage::entries(&store, raft_core::Index(1), last.next(), u64::MAX).expect("entries");
        let wanted = format!("key-{number}=kept");
        assert!(
            entries.iter().any(|entry| matches!(&entry.payload, raft_core::EntryPayload::Normal(data) if data[..] == *wanted.as_bytes())),
            "group {group} lost its answered write"
        );
    }
}

/// A store whose writes go as its `mode` says: [`WRITES_OK`], [`WRITES_PANIC`] (a bug in a
/// user's store), [`WRITES_FAIL`] (an I/O error of its own disk) or [`WRITES_HOLD`] (a slow
/// disk: the write waits while the mode stays so, and says so in `held`).
struct PanickingStore {
    inner: raft_storage::MemStorage,
    mode: std::sync::Arc<std::sync::atomic::AtomicU8>,
    held: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

const WRITES_OK: u8 = 0;
const WRITES_PANIC: u8 = 1;
const WRITES_FAIL: u8 = 2;
const WRITES_HOLD: u8 = 3;

impl PanickingStore {
    fn new(id: NodeId) -> Self {
        PanickingStore {
            inner: raft_storage::MemStorage::new(Membership::new([id])),
            mode: std::sync::Arc::default(),
            held: std::sync::Arc::default(),
        }
    }
}

raft_testkit::delegate_storage!(PanickingStore => inner);

impl raft_storage::LogStore for PanickingStore {
    type Error = std::io::Error;

    fn persist(
        &mut self,
        hard_state: Option<raft_core::HardState>,
        entries: &[raft_core::Entry],
    ) -> Result<(), Self::Error> {
        use std::sync::atomic::Ordering;
        while self.mode.load(Ordering::Acquire) == WRITES_HOLD {
            self.held.store(true, Ordering::Release);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        match self.mode.load(Ordering::Acquire) {
            WRITES_PANIC => panic!("the store was told to panic"),
            WRITES_FAIL => Err(std::io::Error::other("the disk of this group failed")),
            _ => self.inner.persist(hard_state, entries).map_err(std::io::Error::other),
        }
    }
    fn compact(&mut self, index: raft_core::Index, term: raft_core::Term) -> Result<(), Self::Error> {
        self.inner.compact(index, term).map_err(std::io::Error::other)
    }
    fn write_snapshot_chunk(
        &mut self,
        meta: &raft_core::SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Self::Error> {
        self.inner.write_snapshot_chunk(meta, offset, data).map_err(std::io::Error::other)
    }
    fn install_snapshot(&mut self, meta: &raft_core::SnapshotMeta) -> Result<(), Self::Error> {
        self.inner.install_snapshot(meta).map_err(std::io::Error::other)
    }
}

/// A store that panics in a write stops the groups of that round as panicked, not the worker:
/// their handles learn it and shut down at once, and the host's other groups go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_panics_stops_its_groups_and_not_the_worker() {
    use raft_net::{MemNetwork, StopReason};
    let id = NodeId(1);
    let network = MemNetwork::new(std::num::NonZeroUsize::new(64).expect("non-zero"));
    let host: Host<PanickingStore> = Host::start(HostConfig::with_workers(1)).expect("host");
    let mut handles = Vec::new();
    let mut switches = Vec::new();
    for group in (1..=2).map(GroupId) {
        let (transport, inbound) = network.join_group(id, group).expect("joined");
        let store = PanickingStore::new(id);
        switches.push(store.mode.clone());
        handles.push(
            host.add_group(group, raft_testkit::config(id), store, transport, inbound, Kv(KvView::default()))
                .expect("added"),
        );
    }
    for handle in &handles {
        propose(std::slice::from_ref(handle), &[id], 0, set("k", "v")).await;
    }
    switches[0].store(WRITES_PANIC, std::sync::atomic::Ordering::Release);
    let refused = handles[0].propose(set("doomed", "x")).await;
    assert!(refused.is_err(), "{refused:?}");
    eventually("the group whose store panicked stops", || {
        let handle = handles[0].clone();
        async move { handle.stop_reason().is_some() }
    })
    .await;
    assert!(matches!(handles[0].stop_reason(), Some(StopReason::CorePanicked)), "{:?}", handles[0].stop_reason());
    tokio::time::timeout(raft_testkit::PATIENCE, handles[0].shutdown()).await.expect("its shutdown returns");
    propose(std::slice::from_ref(&handles[1]), &[id], 0, set("k2", "v")).await;
    tokio::time::timeout(raft_testkit::PATIENCE, host.shutdown()).await.expect("the host shuts down");
}

/// One group's failing store stops that group only, even when its output shares a write with
/// other groups' (`LogStore::write_outputs` says how far it got; the host writes the rest
/// again). A held write keeps the one worker busy while groups A and B become ready, so that
/// their outputs are written together; A's store fails: A stops with the error, B and the
/// others go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_stops_its_group_and_not_the_others_written_with_it() {
    use raft_net::{MemNetwork, StopReason};
    use std::sync::atomic::Ordering;
    let id = NodeId(1);
    let network = MemNetwork::new(std::num::NonZeroUsize::new(64).expect("non-zero"));
    let host: Host<PanickingStore> = Host::start(HostConfig::with_workers(1)).expect("host");
    let (mut handles, mut modes, mut held) = (Vec::new(), Vec::new(), Vec::new());
    for group in (1..=3).map(GroupId) {
        let (transport, inbound) = network.join_group(id, group).expect("joined");
        let store = PanickingStore::new(id);
        modes.push(store.mode.clone());
        held.push(store.held.clone());
        handles.push(
            host.add_group(group, raft_testkit::config(id), store, transport, inbound, Kv(KvView::default()))
                .expect("added"),
        );
    }
    for handle in &handles {
        propose(std::slice::from_ref(handle), &[id], 0, set("k", "v")).await;
    }
    // The worker is held in group 3's write.
    modes[2].store(WRITES_HOLD, Ordering::Release);
    let slow = {
        let handle = handles[2].clone();
        tokio::spawn(async move { handle.propose(set("slow", "v")).await })
    };
    let held_3 = held[2].clone();
    eventually("the worker is held in group 3's write", || {
        let held = held_3.load(Ordering::Acquire);
        async move { held }
    })
    .await;
    // Groups 1 (whose disk fails) and 2 become ready behind it, in that order.
    modes[0].store(WRITES_FAIL, Ordering::Release);
    let mut proposals = Vec::new();
    for (index, ready) in [(0, 1), (1, 2)] {
        let handle = handles[index].clone();
        proposals.push(tokio::spawn(async move { handle.propose(set("together", "v")).await }));
        eventually("the group waits for the worker", || {
            let waiting = host.status().ready;
            async move { waiting >= ready }
        })
        .await;
    }
    modes[2].store(WRITES_OK, Ordering::Release);
    let second = proposals.pop().expect("two").await.expect("task");
    let first = proposals.pop().expect("two").await.expect("task");
    assert!(first.is_err(), "group 1's write failed: {first:?}");
    assert!(second.is_ok(), "group 2, written with group 1, goes on: {second:?}");
    assert!(slow.await.expect("task").is_ok(), "group 3's held write completes");
    assert!(matches!(handles[0].stop_reason(), Some(StopReason::StorageFailed(_))), "{:?}", handles[0].stop_reason());
    assert!(handles[1].stop_reason().is_none() && handles[2].stop_reason().is_none());
    propose(std::slice::from_ref(&handles[1]), &[id], 0, set("after", "v")).await;
    tokio::time::timeout(raft_testkit::PATIENCE, host.shutdown()).await.expect("the host shuts down");
}

/// A [`raft_net::PeerLink`] the test drives: its peers are never heard from, and its pings go
/// nowhere (the incarnation of the last one is kept).
struct SilentLink(Vec<NodeId>, std::sync::Mutex<Option<u64>>);

impl raft_net::PeerLink for SilentLink {
    fn ping(&self, _peer: NodeId, incarnation: u64) -> Result<(), raft_net::SendError> {
        *self.1.lock().expect("not poisoned") = Some(incarnation);
        Ok(())
    }
    fn take_signals(&self) -> Vec<(NodeId, raft_net::PeerSignals)> {
        self.0.iter().map(|&peer| (peer, raft_net::PeerSignals::default())).collect()
    }
}

/// A report that reaches a group before the message that quiets it is not lost: node 1, which
/// the watch already holds down (silent), is the leader whose `Quiesce` the group steps only
/// after the report (read off the socket before, stepped after, as a lagging worker may). The
/// group goes quiet, is reminded at the end of that round that its leader is down, wakes and
/// campaigns. Without the reminder it would sleep for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_quieted_after_its_leader_was_reported_down_wakes_and_campaigns() {
    use raft_core::{Index, Message, MessageBody, Term};
    use raft_net::{MemNetwork, Transport};
    let (me, leader, other) = (NodeId(2), NodeId(1), NodeId(3));
    let group = GroupId(1);
    let network = MemNetwork::new(std::num::NonZeroUsize::new(64).expect("non-zero"));
    let host: Host<raft_storage::MemStorage> =
        Host::start(HostConfig { tick_interval: raft_testkit::TICK, ..HostConfig::with_workers(1) }).expect("host");
    let link = std::sync::Arc::new(SilentLink(vec![leader, other], std::sync::Mutex::default()));
    host.watch_peers(PeerWatch::new(link, raft_testkit::TICK, raft_testkit::TICK * 3)).expect("a valid watch");
    let (transport, inbound) = network.join_group(me, group).expect("joined");
    let (leader_transport, _leader_inbox) = network.join_group(leader, group).expect("joined");
    let (_other_transport, mut other_inbox) = network.join_group(other, group).expect("joined");
    // A long election timeout (2 to 4 s): nothing campaigns before the test says so.
    let mut config = raft_testkit::config(me);
    config.options = Options::builder().election_ticks(100).heartbeat_ticks(2).quiesce(true).build().expect("valid");
    let store = raft_storage::MemStorage::new(membership(&[1, 2, 3]));
    let _handle = host.add_group(group, config, store, transport, inbound, Kv(KvView::default())).expect("added");
    eventually("the silent leader is reported down", || {
        let reported = host.stats().peer_downs;
        async move { reported >= 2 }
    })
    .await;
    // Now the leader's `Quiesce` (term 1, its log as empty as ours, all committed) is stepped.
    let quiesce =
        Message { from: leader, to: me, term: Term(1), body: MessageBody::Quiesce { commit: Index(0), round: 1 } };
    leader_transport.send(quiesce).expect("sent");
    // Woken at once by the reminder, the group campaigns after its new election timeout.
    let campaign = tokio::time::timeout(raft_testkit::PATIENCE, async {
        loop {
            let message = other_inbox.recv().await.expect("the network runs");
            if matches!(message.body, MessageBody::VoteRequest { .. }) && message.from == me {
                return message;
            }
        }
    })
    .await
    .expect("the group campaigns instead of sleeping on a dead leader");
    assert!(campaign.term > Term(1), "{campaign:?}");
    host.shutdown().await;
}

/// A quiet replica whose round panics (here: its store, in the write of the round that woke
/// it) cannot be stepped to wake its followers, so its node takes a new incarnation: its pings
/// change, and its peers treat it as restarted (their groups that it led wake).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_replica_that_panics_gives_its_node_a_new_incarnation() {
    use raft_net::{MemNetwork, StopReason};
    use std::sync::atomic::Ordering;
    let id = NodeId(1);
    let network = MemNetwork::new(std::num::NonZeroUsize::new(64).expect("non-zero"));
    let host: Host<PanickingStore> =
        Host::start(HostConfig { tick_interval: raft_testkit::TICK, ..HostConfig::with_workers(1) }).expect("host");
    let link = std::sync::Arc::new(SilentLink(vec![NodeId(2)], std::sync::Mutex::default()));
    let watch = PeerWatch::new(link.clone(), raft_testkit::TICK, raft_testkit::TICK * 100).with_incarnation(7);
    host.watch_peers(watch).expect("a valid watch");
    let (transport, inbound) = network.join_group(id, GroupId(1)).expect("joined");
    let mut config = raft_testkit::config(id);
    config.options = Options::builder().election_ticks(10).heartbeat_ticks(2).quiesce(true).build().expect("valid");
    let store = PanickingStore::new(id);
    let mode = store.mode.clone();
    let handle = host.add_group(GroupId(1), config, store, transport, inbound, Kv(KvView::default())).expect("added");
    propose(std::slice::from_ref(&handle), &[id], 0, set("k", "v")).await;
    eventually("the lone voter's group is quiet and the node pings as incarnation 7", || {
        let (quiet, pinged) = (host.status().quiet, *link.1.lock().expect("not poisoned"));
        async move { quiet == 1 && pinged == Some(7) }
    })
    .await;
    mode.store(WRITES_PANIC, Ordering::Release);
    assert!(handle.propose(set("doomed", "x")).await.is_err());
    eventually("the replica stopped, panicked", || {
        let reason = handle.stop_reason();
        async move { matches!(reason, Some(StopReason::CorePanicked)) }
    })
    .await;
    eventually("the node pings as a new incarnation", || {
        let pinged = *link.1.lock().expect("not poisoned");
        async move { pinged == Some(8) }
    })
    .await;
    host.shutdown().await;
}
