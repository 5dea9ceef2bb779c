//! One node of the real-stack simulation, as a turmoil host: the durable store on the host's
//! simulated disk, the TCP transport on its simulated network, the raft-net driver (as tasks on
//! the host's runtime), a key-value state machine that reports what it applies, and a small
//! client server over the node's `NodeHandle`. Run again by turmoil after every crash or bounce,
//! it reopens its store like a restarted process. The node is started by the workspace's harness
//! (`raft_testkit::start_node`), wired through turmoil's listener and connector, as the
//! integration tests and the bench start theirs through tokio's.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use raft_core::{ConfChange, Index, Membership, MembershipError, NodeId, Options, TransferError};
use raft_net::{
    Execution, MembershipChangeError, NodeConfig, NodeEvent, NodeHandle, ProposeError, ReadConsistency, StateMachine,
    StopReason, TcpOptions, TransferLeadershipError,
};
use raft_storage::{DiskError, DiskOptions, DiskStorage, Identity};
use raft_testkit::{HarnessError, Tcp, start_node};
use tokio::sync::broadcast::error::RecvError;
use turmoil::net::{TcpListener, TcpStream};

use super::client::{Admin, Answer, CLIENT_PORT, Request, read_frame, write_frame};
use super::fs::TurmoilFs;
use super::net::{TurmoilConnector, TurmoilListener};
use super::observe::Observer;
use crate::checkers::{FNV_START, fnv};
use crate::kv::{Command, KvState};
use crate::linearizability::Output;

/// The port every node's Raft transport listens on.
pub(crate) const RAFT_PORT: u16 = 9000;
/// The cluster id in every store and handshake.
const CLUSTER_ID: u64 = 0x5eed;

/// How one node runs (the same for every incarnation).
#[derive(Clone, Debug)]
pub(crate) struct NodePlan {
    pub(crate) id: NodeId,
    /// The voters' host names, by node id minus one.
    pub(crate) hosts: Vec<String>,
    /// This host's tick: the base tick scaled by its clock's rate.
    pub(crate) tick_interval: Duration,
    /// This host's clock offset: how long after (re)starting its first tick comes.
    pub(crate) offset: Duration,
    pub(crate) options: Options,
    pub(crate) snapshot_every_entries: u64,
    /// The segment size of the store (small, so rotation and compaction happen).
    pub(crate) segment_bytes_max: u64,
    /// Whether the disk injects errors or corruption (then typed stops are expected).
    pub(crate) disk_faults: bool,
    /// Self-tests: fsync does nothing.
    pub(crate) fsync_lies: bool,
    /// The run's seed, mixed into each incarnation's core seed.
    pub(crate) seed: u64,
}

/// The state machine: the simulator's key-value map, plus a chain hash over every applied
/// command (index and bytes) that the observer compares across nodes.
pub(crate) struct SimKv {
    node: NodeId,
    state: KvState,
    /// The index of the last command applied (or covered by the restored snapshot).
    last: Index,
    chain: u64,
    observer: Observer,
}

/// A snapshot that does not decode.
#[derive(Debug)]
pub(crate) struct BadSnapshot;

impl std::fmt::Display for BadSnapshot {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("the snapshot does not decode")
    }
}

impl std::error::Error for BadSnapshot {}

impl StateMachine for SimKv {
    type Response = Option<Output>;
    type RestoreError = BadSnapshot;

    fn apply(&mut self, index: Index, command: &Bytes) -> Option<Output> {
        self.chain = fnv(fnv(self.chain, &index.0.to_le_bytes()), command);
        self.last = index;
        let output = Command::decode(command).and_then(|command| self.state.apply(&command));
        let state = fnv(FNV_START, &self.state.encode());
        self.observer.lock().applied(self.node, index, self.chain, state);
        output
    }

    fn snapshot(&self) -> Bytes {
        let mut data = self.last.0.to_le_bytes().to_vec();
        data.extend_from_slice(&self.chain.to_le_bytes());
        data.extend_from_slice(&self.state.encode());
        Bytes::from(data)
    }

    fn restore(&mut self, data: Bytes) -> Result<(), BadSnapshot> {
        let (Some(last), Some(chain)) = (crate::kv::word(&data, 0), crate::kv::word(&data, 8)) else {
            return Err(BadSnapshot);
        };
        let Some((state, rest)) = KvState::decode(&data[16..]) else { return Err(BadSnapshot) };
        if !rest.is_empty() {
            return Err(BadSnapshot);
        }
        let digest = fnv(FNV_START, &state.encode());
        self.observer.lock().restored(self.node, self.last, Index(last), chain, digest);
        (self.state, self.last, self.chain) = (state, Index(last), chain);
        Ok(())
    }
}

/// The host's software: runs the node until it stops; returns (ending the host's software)
/// after a fail-stop or a store that does not open, which the fault loop later restarts.
pub(crate) async fn run_node(plan: NodePlan, observer: Observer) -> turmoil::Result {
    tokio::time::sleep(plan.offset).await;
    let id = plan.id;
    let incarnation = {
        let mut observed = observer.lock();
        let starts = observed.starts.entry(id).or_insert(0);
        *starts += 1;
        let incarnation = *starts;
        if incarnation > 1 {
            observed.stats.restarts += 1;
        }
        observed.trace(&[4, id.0 as u8]);
        incarnation
    };
    let Some(storage) = open_store(&plan, &observer) else { return Ok(()) };
    let peers = (1..=plan.hosts.len() as u64)
        .filter(|peer| *peer != id.0)
        .map(|peer| (NodeId(peer), SocketAddr::new(turmoil::lookup(plan.hosts[peer as usize - 1].as_str()), RAFT_PORT)))
        .collect();
    let listener = TcpListener::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), RAFT_PORT)).await?;
    let options = TcpOptions {
        connect_timeout: Duration::from_millis(200),
        handshake_timeout: Duration::from_millis(200),
        write_timeout: Duration::from_millis(500),
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        keepalive_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(500),
        // Tasks on the host's LocalSet, which a crash drops in a fixed order (see the option).
        spawn_local: true,
        ..TcpOptions::default()
    };
    let wiring = Tcp {
        cluster_id: CLUSTER_ID,
        listener: TurmoilListener(listener),
        connector: TurmoilConnector,
        peers,
        options,
    };
    let mut config =
        NodeConfig::new(id, plan.options.clone().with_rng_seed(fnv(plan.seed, &[id.0 as u8, incarnation as u8])));
    config.execution = Execution::Tasks;
    config.tick_interval = plan.tick_interval;
    config.snapshot_every_entries = plan.snapshot_every_entries;
    let state_machine =
        SimKv { node: id, state: KvState::default(), last: Index(0), chain: FNV_START, observer: observer.clone() };
    // The transport's tasks are spawned first, then the driver's: the order a seed's run depends
    // on, as it was before the harness started the node.
    let handle = match start_node(config, storage, wiring, state_machine) {
        Ok(started) => started.handle,
        Err(HarnessError::Node(error)) => {
            observer.lock().violate("node starts", format!("node {id} did not start: {error}"));
            return Ok(());
        }
        Err(error) => return Err(error.into()),
    };
    let mut events = handle.events();
    let clients = TcpListener::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), CLIENT_PORT)).await?;
    let server = handle.clone();
    // On the host's LocalSet, like the node's tasks: a crash drops them in a fixed order.
    tokio::task::spawn_local(async move {
        while let Ok((stream, _)) = clients.accept().await {
            tokio::task::spawn_local(serve_client(server.clone(), stream));
        }
    });
    loop {
        match events.recv().await {
            Ok(NodeEvent::LeaderChanged { leader: Some(leader), term }) if leader == id => {
                observer.lock().leader(id, term);
            }
            Ok(NodeEvent::Stopped(reason)) => {
                stopped(&plan, &observer, &reason);
                return Ok(());
            }
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}

/// Opens the node's store, or creates it the first time. `None` (with the reason recorded)
/// when it cannot be opened.
fn open_store(plan: &NodePlan, observer: &Observer) -> Option<DiskStorage<TurmoilFs>> {
    let id = plan.id;
    let identity = Identity { cluster_id: CLUSTER_ID, node_id: id };
    let options = DiskOptions { segment_bytes_max: plan.segment_bytes_max };
    // Each host has a disk of its own; the node's id in the path only makes traces readable.
    let dir = format!("/raft/n{}", id.0);
    let fs = TurmoilFs { fsync_lies: plan.fsync_lies };
    let opened = DiskStorage::open(fs, Path::new(&dir), identity, options);
    let created = observer.lock().created.contains(&id);
    let error = match opened {
        Ok(storage) => return Some(storage),
        Err(DiskError::NotInitialized(_)) if !created => {
            let voters = Membership::new((1..=plan.hosts.len() as u64).map(NodeId));
            match DiskStorage::create(fs, Path::new(&dir), identity, voters, options) {
                Ok(storage) => {
                    observer.lock().created.insert(id);
                    return Some(storage);
                }
                Err(error) => error,
            }
        }
        Err(error) => error,
    };
    let mut observed = observer.lock();
    observed.trace(&[5, id.0 as u8]);
    if plan.disk_faults && matches!(error, DiskError::Io { .. } | DiskError::Corrupt { .. }) {
        observed.stats.open_failures += 1;
    } else {
        observed.violate("the store reopens after a crash", format!("node {id}: {error}"));
    }
    None
}

/// Judges why a node stopped: only a storage failure on a faulty disk is expected.
fn stopped(plan: &NodePlan, observer: &Observer, reason: &StopReason) {
    let mut observed = observer.lock();
    observed.trace(&[6, plan.id.0 as u8]);
    match reason {
        StopReason::Shutdown => {}
        StopReason::StorageFailed(_) if plan.disk_faults => observed.stats.storage_failures += 1,
        other => observed.violate("only expected, typed stops", format!("node {} stopped: {other}", plan.id)),
    }
}

/// Serves one client request through the node's handle.
async fn serve_client(handle: NodeHandle<SimKv>, mut stream: TcpStream) {
    let Ok(body) = read_frame(&mut stream).await else { return };
    let answer = match Request::decode(&body) {
        None => Answer::Failed,
        Some(Request::Write(command)) => match handle.propose(Bytes::from(command.encode())).await {
            Ok(Some(output)) => Answer::Done(output),
            // An older retry of the client's: it no longer waits for this one.
            Ok(None) => Answer::Unknown,
            Err(ProposeError::Refused { reason: raft_core::ProposeError::NotLeader { leader }, .. }) => {
                Answer::NotLeader(leader.map(|leader| leader.0))
            }
            // Definitely not committed: nothing was appended, or a new leader replaced it.
            Err(ProposeError::TooBusy | ProposeError::Refused { .. } | ProposeError::LeadershipLost { .. }) => {
                Answer::Failed
            }
            Err(_) => Answer::Unknown,
        },
        Some(Request::Read { key, lease }) => {
            let consistency = if lease { ReadConsistency::Lease } else { ReadConsistency::Linearizable };
            match handle.read(consistency, move |kv: &SimKv| kv.state.get(key)).await {
                Ok(value) => Answer::Done(Output::Value(value)),
                Err(_) => Answer::Failed,
            }
        }
        Some(Request::Admin(admin)) => administer(&handle, admin).await,
    };
    let _ = write_frame(&mut stream, &answer.encode()).await; // The client may have given up.
}

/// Carries out an administrator's request on this node (it must lead).
async fn administer(handle: &NodeHandle<SimKv>, admin: Admin) -> Answer {
    let change = match admin {
        Admin::Demote(node) => ConfChange::AddLearner(NodeId(node)),
        Admin::Promote(node) => ConfChange::AddVoter(NodeId(node)),
        Admin::Transfer(node) => {
            return match handle.transfer_leadership(NodeId(node)).await {
                Ok(()) | Err(TransferLeadershipError::Refused { reason: TransferError::AlreadyLeader(_), .. }) => {
                    Answer::Done(Output::Done)
                }
                Err(TransferLeadershipError::Refused { reason: TransferError::NotLeader { leader }, .. }) => {
                    Answer::NotLeader(leader.map(|l| l.0))
                }
                Err(_) => Answer::Failed,
            };
        }
    };
    match handle.change_membership(vec![change]).await {
        Ok(_) => Answer::Done(Output::Done),
        // Promoting a voter: it is one already.
        Err(MembershipChangeError::Refused { reason: MembershipError::NoEffect(_), .. })
            if matches!(admin, Admin::Promote(_)) =>
        {
            Answer::Done(Output::Done)
        }
        Err(MembershipChangeError::Refused { reason: MembershipError::NotLeader { leader }, .. }) => {
            Answer::NotLeader(leader.map(|l| l.0))
        }
        Err(_) => Answer::Failed,
    }
}
