//! A group of nodes in this process: started over the chosen transport and store, with a
//! state machine that does nothing, and stopped (directories removed) at the end of a run.

use std::collections::BTreeMap;
use std::error::Error;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raft_core::{Index, Membership, NodeId, Options, Role, Term};
use raft_net::{Execution, MemNetwork, NodeConfig, NodeHandle, StateMachine, TcpOptions, TcpTransport, TokioConnector};
use raft_storage::{DiskOptions, DiskStorage, Identity, MemStorage, StdFs};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep};

/// The result type of the benchmark's fallible steps.
pub type BenchResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// How the nodes reach each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportKind {
    /// `MemNetwork`: messages are handed over as values, without serialization.
    Mem,
    /// `TcpTransport` on 127.0.0.1: length-prefixed postcard frames.
    Tcp,
}

/// Where each node's core loop and state machine run (`NodeConfig::execution`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutionKind {
    /// `Execution::Threads` (the library's default): a core thread and an apply thread.
    Threads,
    /// `Execution::OneThread`: the core thread applies too (no apply thread).
    OneThread,
}

impl ExecutionKind {
    /// The library's setting.
    pub fn execution(self) -> Execution {
        match self {
            ExecutionKind::Threads => Execution::Threads,
            ExecutionKind::OneThread => Execution::OneThread,
        }
    }

    /// As on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ExecutionKind::Threads => "threads",
            ExecutionKind::OneThread => "one-thread",
        }
    }
}

/// Where the nodes keep their logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StorageKind {
    /// `MemStorage`: nothing is written anywhere.
    Mem,
    /// `DiskStorage` over `StdFs`: the write-ahead log, one fdatasync per group commit.
    Wal,
}

/// What a group is made of.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Voters in the group.
    pub nodes: u64,
    /// The transport between them.
    pub transport: TransportKind,
    /// Their stores.
    pub storage: StorageKind,
    /// Each node snapshots its state machine (and compacts its log) every this many entries;
    /// keeps the in-memory logs bounded in long runs (0: never).
    pub snapshot_every_entries: u64,
    /// `NodeConfig::idle_poll` of every node (`None`: the library's default).
    pub idle_poll: Option<Duration>,
    /// `NodeConfig::execution` of every node.
    pub execution: ExecutionKind,
}

/// The cluster id of every benchmark group.
const CLUSTER: u64 = 0xBE7C;
/// The tick of every node. Short enough for a quick first election, long enough that a busy
/// machine does not make followers time out.
const TICK: Duration = Duration::from_millis(20);
/// Election timeout in ticks (randomized in [25, 50) ticks: 0.5 to 1 s).
const ELECTION_TICKS: u32 = 25;
/// Heartbeat interval in ticks.
const HEARTBEAT_TICKS: u32 = 5;
/// How long to wait for a leader that every node knows of.
const ELECTION_PATIENCE: Duration = Duration::from_secs(20);

/// The state machine: counts what it applies and answers nothing. The benchmark measures the
/// replication pipeline, not an application.
#[derive(Debug, Default)]
pub struct Counter {
    applied: u64,
}

impl StateMachine for Counter {
    type Response = ();
    type RestoreError = std::convert::Infallible;

    fn apply(&mut self, _index: Index, _command: &Bytes) {
        self.applied += 1;
    }

    fn snapshot(&self) -> Bytes {
        Bytes::copy_from_slice(&self.applied.to_le_bytes())
    }

    fn restore(&mut self, data: Bytes) -> Result<(), Self::RestoreError> {
        let mut bytes = [0; 8];
        let len = data.len().min(8);
        bytes[..len].copy_from_slice(&data[..len]);
        self.applied = u64::from_le_bytes(bytes);
        Ok(())
    }
}

/// A running group.
pub struct Cluster {
    /// The nodes' handles, node `i + 1` at position `i`.
    pub nodes: Vec<NodeHandle<Counter>>,
    /// The TCP transports, kept to wait for their tasks at shutdown.
    tcp: Vec<Arc<TcpTransport>>,
    /// The WAL directories, removed when dropped.
    _dirs: Vec<TempDir>,
}

impl Cluster {
    /// Starts the group; WAL directories are created in `dir`.
    pub async fn start(spec: &ClusterSpec, dir: &Path) -> BenchResult<Cluster> {
        let ids: Vec<NodeId> = (1..=spec.nodes).map(NodeId).collect();
        let membership = Membership::new(ids.iter().copied());
        let mut cluster = Cluster { nodes: Vec::new(), tcp: Vec::new(), _dirs: Vec::new() };
        let (listeners, addresses) = match spec.transport {
            TransportKind::Tcp => listeners(&ids).await?,
            TransportKind::Mem => (Vec::new(), BTreeMap::new()),
        };
        let mut listeners = listeners.into_iter();
        let network = MemNetwork::default();
        for &id in &ids {
            let config = node_config(id, spec, &addresses)?;
            let node = match spec.storage {
                StorageKind::Mem => {
                    let storage = MemStorage::new(membership.clone());
                    cluster.start_node(config, storage, &network, listeners.next(), &addresses)?
                }
                StorageKind::Wal => {
                    let node_dir = tempfile::Builder::new().prefix(&format!("raft-bench-{id}-")).tempdir_in(dir)?;
                    let identity = Identity { cluster_id: CLUSTER, node_id: id };
                    let options = DiskOptions::default();
                    let storage = DiskStorage::create(StdFs, node_dir.path(), identity, membership.clone(), options)?;
                    cluster._dirs.push(node_dir);
                    cluster.start_node(config, storage, &network, listeners.next(), &addresses)?
                }
            };
            cluster.nodes.push(node);
        }
        Ok(cluster)
    }

    fn start_node<S: raft_storage::LogStore + Send + 'static>(
        &mut self,
        config: NodeConfig,
        storage: S,
        network: &MemNetwork,
        listener: Option<TcpListener>,
        addresses: &BTreeMap<NodeId, SocketAddr>,
    ) -> BenchResult<NodeHandle<Counter>> {
        let id = config.id;
        match listener {
            None => {
                let (transport, inbound) = network.join(id)?;
                Ok(raft_net::start(config, storage, transport, inbound, Counter::default())?)
            }
            Some(listener) => {
                let peers = addresses.iter().filter(|(peer, _)| **peer != id).map(|(p, a)| (*p, *a)).collect();
                let (transport, inbound) =
                    TcpTransport::start(CLUSTER, id, listener, TokioConnector, peers, TcpOptions::default())?;
                let transport = Arc::new(transport);
                self.tcp.push(Arc::clone(&transport));
                Ok(raft_net::start(config, storage, transport, inbound, Counter::default())?)
            }
        }
    }

    /// Waits until one node leads and every node knows it; returns its position and term.
    pub async fn settled_leader(&self) -> BenchResult<(usize, Term)> {
        let deadline = Instant::now() + ELECTION_PATIENCE;
        loop {
            let mut statuses = Vec::new();
            for node in &self.nodes {
                statuses.push(node.status().await?);
            }
            let leader = statuses.iter().position(|status| status.role == Role::Leader);
            if let Some(position) = leader {
                let id = statuses[position].id;
                if statuses.iter().all(|status| status.leader == Some(id)) {
                    return Ok((position, statuses[position].term));
                }
            }
            if Instant::now() > deadline {
                return Err(format!("no leader settled within {ELECTION_PATIENCE:?}: {statuses:?}").into());
            }
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// The highest term any node is in (to notice elections during a run).
    pub async fn term(&self) -> BenchResult<Term> {
        let mut term = Term(0);
        for node in &self.nodes {
            term = term.max(node.status().await?.term);
        }
        Ok(term)
    }

    /// Shuts every node down, then the TCP transports, and removes the directories.
    pub async fn shutdown(self) {
        for node in &self.nodes {
            node.shutdown().await;
        }
        drop(self.nodes);
        for transport in self.tcp {
            // The node dropped its clone when it stopped; if not, dropping ours cancels the tasks.
            if let Ok(transport) = Arc::try_unwrap(transport) {
                transport.shutdown().await;
            }
        }
    }
}

fn node_config(id: NodeId, spec: &ClusterSpec, addresses: &BTreeMap<NodeId, SocketAddr>) -> BenchResult<NodeConfig> {
    // No seed: raft-net draws a fresh one per start.
    let options = Options::builder().election_ticks(ELECTION_TICKS).heartbeat_ticks(HEARTBEAT_TICKS).build()?;
    let mut config = NodeConfig::new(id, options);
    config.tick_interval = TICK;
    config.snapshot_every_entries = spec.snapshot_every_entries;
    if let Some(idle_poll) = spec.idle_poll {
        config.idle_poll = idle_poll;
    }
    config.execution = spec.execution.execution();
    config.addresses = addresses.clone();
    Ok(config)
}

async fn listeners(ids: &[NodeId]) -> BenchResult<(Vec<TcpListener>, BTreeMap<NodeId, SocketAddr>)> {
    let mut listeners = Vec::new();
    let mut addresses = BTreeMap::new();
    for &id in ids {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        addresses.insert(id, listener.local_addr()?);
        listeners.push(listener);
    }
    Ok((listeners, addresses))
}
