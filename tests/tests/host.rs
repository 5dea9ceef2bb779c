//! Many Raft groups per node on the worker-pool driver (`raft_net::Host`, issue 19): three nodes,
//! each with one TCP transport, one shared write-ahead log and a pool of two workers, host many
//! groups that elect, replicate, survive a restart of every node from the shared log, and come
//! and go at run time.

use std::collections::BTreeMap;
use std::path::Path;

use raft_core::{GroupId, Membership, NodeId};
use raft_net::{Host, HostConfig, NodeConfig, NodeHandle, ProposeError, TcpTransport, TokioConnector};
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
}

fn identity(id: NodeId) -> Identity {
    Identity { cluster_id: raft_testkit::CLUSTER, node_id: id }
}

fn group_config(id: NodeId, addresses: &BTreeMap<NodeId, std::net::SocketAddr>) -> NodeConfig {
    let mut config = raft_testkit::config(id);
    config.addresses = addresses.clone();
    config
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
        let host = Host::start(HostConfig { thread_name: format!("host-{id}"), ..HostConfig::with_workers(workers) })
            .expect("host");
        let mut node = Node { id, transport, wal, host, groups: BTreeMap::new() };
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
            .add_group(group, group_config(self.id, addresses), store, transport, inbound, Kv(view.clone()))
            .expect("added");
        self.groups.insert(group, (handle, view));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_on_a_worker_pool_replicate_share_the_log_and_recover_from_it() {
    const GROUPS: u64 = 24;
    let dirs: Vec<tempfile::TempDir> = IDS.iter().map(|_| tempfile::tempdir().expect("temp dir")).collect();
    let all: Vec<GroupId> = (1..=GROUPS).map(GroupId).collect();
    let (sockets, addresses) = listeners(&IDS).await.expect("127.0.0.1 listeners");
    let mut nodes = Vec::new();
    for ((&id, listener), dir) in IDS.iter().zip(sockets).zip(&dirs) {
        nodes.push(Node::start(id, listener, &addresses, dir.path(), &all, 2));
    }

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
        nodes.push(Node::start(id, listener, &addresses, dir.path(), &[], 2));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_added_at_run_time_replicates_and_a_removed_one_is_gone_for_good() {
    let dirs: Vec<tempfile::TempDir> = IDS.iter().map(|_| tempfile::tempdir().expect("temp dir")).collect();
    let (sockets, addresses) = listeners(&IDS).await.expect("127.0.0.1 listeners");
    let mut nodes = Vec::new();
    for ((&id, listener), dir) in IDS.iter().zip(sockets).zip(&dirs) {
        nodes.push(Node::start(id, listener, &addresses, dir.path(), &[GroupId(1)], 1));
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

/// A store that panics in its writes once `panic` is set (a bug in a user's store).
struct PanickingStore {
    inner: raft_storage::MemStorage,
    panic: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl raft_core::Storage for PanickingStore {
    fn initial_state(&self) -> Result<raft_core::InitialState, raft_core::StorageError> {
        self.inner.initial_state()
    }
    fn entries(
        &self,
        low: raft_core::Index,
        high: raft_core::Index,
        bytes_max: u64,
    ) -> Result<Vec<raft_core::Entry>, raft_core::StorageError> {
        self.inner.entries(low, high, bytes_max)
    }
    fn term(&self, index: raft_core::Index) -> Result<raft_core::Term, raft_core::StorageError> {
        self.inner.term(index)
    }
    fn first_index(&self) -> Result<raft_core::Index, raft_core::StorageError> {
        self.inner.first_index()
    }
    fn last_index(&self) -> Result<raft_core::Index, raft_core::StorageError> {
        self.inner.last_index()
    }
    fn snapshot(&self) -> Result<raft_core::SnapshotMeta, raft_core::StorageError> {
        self.inner.snapshot()
    }
    fn snapshot_chunk(
        &self,
        index: raft_core::Index,
        term: raft_core::Term,
        offset: u64,
        bytes_max: u64,
    ) -> Result<raft_core::SnapshotChunk, raft_core::StorageError> {
        self.inner.snapshot_chunk(index, term, offset, bytes_max)
    }
}

impl raft_storage::LogStore for PanickingStore {
    type Error = raft_storage::MemStorageError;

    fn persist(
        &mut self,
        hard_state: Option<raft_core::HardState>,
        entries: &[raft_core::Entry],
    ) -> Result<(), Self::Error> {
        assert!(!self.panic.load(std::sync::atomic::Ordering::Acquire), "the store was told to panic");
        self.inner.persist(hard_state, entries)
    }
    fn compact(&mut self, index: raft_core::Index, term: raft_core::Term) -> Result<(), Self::Error> {
        self.inner.compact(index, term)
    }
    fn write_snapshot_chunk(
        &mut self,
        meta: &raft_core::SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Self::Error> {
        self.inner.write_snapshot_chunk(meta, offset, data)
    }
    fn install_snapshot(&mut self, meta: &raft_core::SnapshotMeta) -> Result<(), Self::Error> {
        self.inner.install_snapshot(meta)
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
        let panic = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let store =
            PanickingStore { inner: raft_storage::MemStorage::new(Membership::new([id])), panic: panic.clone() };
        handles.push(
            host.add_group(group, raft_testkit::config(id), store, transport, inbound, Kv(KvView::default()))
                .expect("added"),
        );
        switches.push(panic);
    }
    for handle in &handles {
        propose(std::slice::from_ref(handle), &[id], 0, set("k", "v")).await;
    }
    switches[0].store(true, std::sync::atomic::Ordering::Release);
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
