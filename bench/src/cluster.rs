//! A group of nodes in this process, built by the workspace's harness (raft-testkit): started
//! over the chosen transport and store, with a state machine that does nothing, and stopped
//! (directories removed) at the end of a run.

use std::error::Error;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use raft_core::{Index, Options, Term};
use raft_net::{Execution, StateMachine, TcpOptions};
use raft_testkit::{ClusterBuilder, Machine, NetworkKind, Settled};

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
    /// Over TCP: mutual TLS between the nodes (test certificates from raft-testkit).
    pub tls: bool,
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
/// replication pipeline, not an application; it is on the measured path, so it stays this
/// trivial rather than the harness's key-value machine, whose map and lock would add their cost
/// to every operation.
#[derive(Debug, Default)]
pub struct Counter {
    applied: u64,
}

impl StateMachine for Counter {
    type Response = ();
    type RestoreError = std::io::Error;

    fn apply(&mut self, _index: Index, _command: &Bytes) {
        self.applied += 1;
    }

    fn snapshot(&self, sink: &mut dyn std::io::Write) -> std::io::Result<()> {
        sink.write_all(&self.applied.to_le_bytes())
    }

    fn restore(&mut self, reader: &mut dyn std::io::Read) -> Result<(), Self::RestoreError> {
        let mut bytes = [0; 8];
        reader.read_exact(&mut bytes)?;
        self.applied = u64::from_le_bytes(bytes);
        Ok(())
    }
}

impl Machine for Counter {
    type View = ();

    fn view(&self) {}
}

/// A running group: the harness's cluster of [`Counter`]s, node `i + 1` at position `i`.
pub type Cluster = raft_testkit::Cluster<Counter>;

/// Starts the group; WAL directories are created in `dir`.
pub async fn start(spec: &ClusterSpec, dir: &Path) -> BenchResult<Cluster> {
    // No seed: raft-net draws a fresh one per start.
    let options = Options::builder().election_ticks(ELECTION_TICKS).heartbeat_ticks(HEARTBEAT_TICKS).build()?;
    let (snapshot_every_entries, idle_poll, execution) =
        (spec.snapshot_every_entries, spec.idle_poll, spec.execution.execution());
    let builder = ClusterBuilder::new(spec.nodes)
        .cluster_id(CLUSTER)
        .network(match spec.transport {
            TransportKind::Mem => NetworkKind::Mem,
            TransportKind::Tcp => NetworkKind::Tcp,
        })
        .storage(match spec.storage {
            StorageKind::Mem => raft_testkit::StorageKind::Mem,
            StorageKind::Wal => raft_testkit::StorageKind::Disk(dir.to_path_buf()),
        })
        .tcp_options(TcpOptions::default())
        .configure(move |config| {
            config.options = options.clone();
            config.tick_interval = TICK;
            config.snapshot_every_entries = snapshot_every_entries;
            if let Some(idle_poll) = idle_poll {
                config.idle_poll = idle_poll;
            }
            config.execution = execution;
        });
    let builder = if spec.tls && spec.transport == TransportKind::Tcp {
        // The closure keeps the certificates' directory for as long as the cluster runs.
        let certs = std::sync::Arc::new(raft_testkit::certs::ClusterCerts::new(CLUSTER, 1..=spec.nodes)?);
        builder.tls(move |id| certs.config(id.0).expect("the files just written load"))
    } else {
        builder
    };
    Ok(builder.start(|_| Counter::default()).await?)
}

/// Waits until one node leads and every node knows it.
pub async fn settled_leader(cluster: &Cluster) -> BenchResult<Settled> {
    Ok(cluster.settled(ELECTION_PATIENCE).await?)
}

/// The highest term any node is in (to notice elections during a run).
pub async fn term(cluster: &Cluster) -> BenchResult<Term> {
    let mut term = Term(0);
    for member in cluster.members() {
        term = term.max(member.handle.status().await?.term);
    }
    Ok(term)
}
