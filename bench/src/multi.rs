//! Many groups per node (`--groups G`): every node runs one `raft_net::Host` (a pool of worker
//! threads), one `TcpTransport` that carries every group's messages, and one `SharedWal` that
//! holds every group's log (one fsync per round of a worker, whatever the number of groups in
//! it). Each of the G groups has every node as a voter; the clients are spread over the groups.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use raft_core::{GroupId, Membership, NodeId, Options, Term};
use raft_net::{Host, HostConfig, NodeConfig, NodeHandle, PeerWatch, TcpOptions, TcpTransport, TokioConnector};
use raft_storage::{GroupStore, Identity, SharedWal, StdFs, WalOptions};
use tokio::time::{Instant, sleep};

use crate::cluster::{BenchResult, Counter};
use crate::load::Target;

/// The cluster id of every benchmark cluster.
const CLUSTER: u64 = 0xBE7D;
/// The tick of every group (as in the single-group runs).
pub const TICK: Duration = Duration::from_millis(20);
/// Election timeout in ticks (randomized in [25, 50) ticks: 0.5 to 1 s).
const ELECTION_TICKS: u32 = 25;
/// Heartbeat interval in ticks.
pub const HEARTBEAT_TICKS: u32 = 5;

/// What a multi-group run is made of.
#[derive(Clone, Debug)]
pub struct MultiSpec {
    /// Nodes, each a voter of every group.
    pub nodes: u64,
    /// Groups.
    pub groups: u64,
    /// Worker threads of each node's host.
    pub workers: usize,
    /// Each group snapshots its state machine every this many entries (0: never).
    pub snapshot_every_entries: u64,
    /// Idle groups quiesce; each host watches its peers (a ping per heartbeat interval, a peer
    /// silent for an election timeout is reported down).
    pub quiesce: bool,
    /// How long an idle worker of each host polls for work before it sleeps
    /// (`HostConfig::idle_poll`).
    pub idle_poll: std::time::Duration,
}

/// One node: its transport, log and host, and its handle of each group. The transport and the
/// host are shared with the load's probe (see [`MultiCluster::probe`]).
struct MultiNode {
    transport: Arc<TcpTransport>,
    wal: SharedWal,
    host: Arc<Host<GroupStore>>,
    handles: Vec<NodeHandle<Counter>>,
}

/// A running multi-group cluster.
pub struct MultiCluster {
    nodes: Vec<MultiNode>,
    ids: Vec<NodeId>,
    /// Removed at the end of the run.
    _dir: tempfile::TempDir,
}

/// Starts the nodes, their hosts and every group; the logs go to a fresh directory in `dir`.
pub async fn start(spec: &MultiSpec, dir: &Path) -> BenchResult<MultiCluster> {
    let root = tempfile::Builder::new().prefix("bench-groups-").tempdir_in(dir)?;
    let ids: Vec<NodeId> = (1..=spec.nodes).map(NodeId).collect();
    let (listeners, addresses) = raft_testkit::listeners(&ids).await?;
    let options = Options::builder()
        .election_ticks(ELECTION_TICKS)
        .heartbeat_ticks(HEARTBEAT_TICKS)
        .quiesce(spec.quiesce)
        .build()?;
    let voters = Membership::new(ids.iter().copied());
    let mut nodes = Vec::new();
    for (&id, listener) in ids.iter().zip(listeners) {
        let peers: BTreeMap<NodeId, _> =
            addresses.iter().filter(|(peer, _)| **peer != id).map(|(p, a)| (*p, *a)).collect();
        let transport = TcpTransport::start_node(CLUSTER, id, listener, TokioConnector, peers, TcpOptions::default())?;
        let identity = Identity { cluster_id: CLUSTER, node_id: id };
        let wal =
            SharedWal::create(StdFs, root.path().join(format!("node-{}", id.0)), identity, WalOptions::default())?;
        let host = Host::start(HostConfig {
            thread_name: format!("host-{}", id.0),
            tick_interval: TICK,
            idle_poll: spec.idle_poll,
            ..HostConfig::with_workers(spec.workers)
        })?;
        if spec.quiesce {
            let (interval, timeout) = (TICK * HEARTBEAT_TICKS, TICK * ELECTION_TICKS);
            host.watch_peers(PeerWatch::new(transport.peer_link(), interval, timeout))?;
        }
        let mut handles = Vec::new();
        for group in (1..=spec.groups).map(GroupId) {
            let store = wal.create_group(group, voters.clone())?;
            let (group_transport, inbound) = transport.register_group(group)?;
            let mut config = NodeConfig::new(id, options.clone());
            config.tick_interval = TICK;
            config.snapshot_every_entries = spec.snapshot_every_entries;
            config.addresses = addresses.clone();
            handles.push(host.add_group(group, config, store, group_transport, inbound, Counter::default())?);
        }
        nodes.push(MultiNode { transport: Arc::new(transport), wal, host: Arc::new(host), handles });
    }
    Ok(MultiCluster { nodes, ids, _dir: root })
}

impl MultiCluster {
    /// The node ids, node `i + 1` at position `i`.
    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// Waits until every group has a leader that all its nodes know of; returns each group as a
    /// load target, and the highest term.
    pub async fn settled(&self, patience: Duration) -> BenchResult<(Vec<Target>, Term)> {
        let deadline = Instant::now() + patience;
        let groups = self.nodes[0].handles.len();
        let mut targets = Vec::with_capacity(groups);
        let mut highest = Term(0);
        for group in 0..groups {
            let nodes: Arc<[NodeHandle<Counter>]> = self.nodes.iter().map(|node| node.handles[group].clone()).collect();
            loop {
                if Instant::now() > deadline {
                    return Err(
                        format!("group {} has no leader that every node knows after {patience:?}", group + 1).into()
                    );
                }
                let mut leaders = Vec::new();
                for handle in nodes.iter() {
                    let status = handle.status().await?;
                    leaders.push(status.leader);
                    highest = highest.max(status.term);
                }
                if let Some(Some(leader)) = leaders.first().copied()
                    && leaders.iter().all(|seen| *seen == Some(leader))
                    && let Some(position) = self.ids.iter().position(|id| *id == leader)
                {
                    targets.push(Target { nodes, leader: position });
                    break;
                }
                sleep(Duration::from_millis(20)).await;
            }
        }
        Ok((targets, highest))
    }

    /// The highest term of any group on any node.
    pub async fn term(&self) -> BenchResult<Term> {
        let mut term = Term(0);
        for node in &self.nodes {
            for handle in &node.handles {
                term = term.max(handle.status().await?.term);
            }
        }
        Ok(term)
    }

    /// Messages every node's transport has written so far, in all, node-level pings included.
    pub fn messages(&self) -> u64 {
        self.nodes
            .iter()
            .map(|node| {
                let stats = node.transport.stats();
                stats.messages_written + stats.pings_written
            })
            .sum()
    }

    /// Groups quiet on every node together (each group counts once per node).
    pub fn quiet(&self) -> usize {
        self.nodes.iter().map(|node| node.host.status().quiet).sum()
    }

    /// Group steps of every node's host so far, in all.
    pub fn group_steps(&self) -> u64 {
        self.nodes.iter().map(|node| node.host.stats().group_steps).sum()
    }

    /// A probe of every node's counters together: its log's syncs, its host's group steps, the
    /// messages its transport wrote (node-level pings included).
    pub fn probe(&self) -> crate::load::Probe {
        let nodes: Vec<(SharedWal, Arc<Host<GroupStore>>, Arc<TcpTransport>)> = self
            .nodes
            .iter()
            .map(|node| (node.wal.clone(), Arc::clone(&node.host), Arc::clone(&node.transport)))
            .collect();
        Arc::new(move || {
            let mut counts = crate::load::Counts::default();
            for (wal, host, transport) in &nodes {
                let sent = transport.stats();
                counts.syncs += wal.syncs();
                counts.group_steps += host.stats().group_steps;
                counts.messages += sent.messages_written + sent.pings_written;
            }
            counts
        })
    }

    /// Stops every host and transport.
    pub async fn shutdown(self) {
        for node in &self.nodes {
            let stats = node.host.stats();
            let sent = node.transport.stats();
            eprintln!(
                "  host of node {}: {} rounds, {:.1} groups per round, {:.1} outputs per write, {} syncs; \
                 transport: {} messages in {} writes ({:.1} per write)",
                raft_net::Transport::local_id(&node.transport),
                stats.rounds,
                stats.group_steps as f64 / stats.rounds.max(1) as f64,
                stats.outputs_written as f64 / stats.writes.max(1) as f64,
                node.wal.syncs(),
                sent.messages_written,
                sent.batches_written,
                sent.messages_written as f64 / sent.batches_written.max(1) as f64
            );
        }
        for node in self.nodes {
            node.host.shutdown().await;
            // The load's probe, the transport's only other holder, is gone once the load ran.
            match Arc::try_unwrap(node.transport) {
                Ok(transport) => transport.shutdown().await,
                Err(_) => eprintln!("  a probe still holds a transport: it stops when dropped"),
            }
        }
    }
}
