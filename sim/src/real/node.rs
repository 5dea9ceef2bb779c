//! One node of the real-stack simulation, as a turmoil host: the durable store on the host's
//! simulated disk, the TCP transport on its simulated network, the raft-net driver (as tasks on
//! the host's runtime), a key-value state machine that reports what it applies, and a small
//! client server over the node's `NodeHandle`s. Run again by turmoil after every crash or
//! bounce, it reopens its store like a restarted process.
//!
//! With one group, the node is the classic single-group stack: `DiskStorage` and
//! `raft_net::start`, started by the workspace's harness (`raft_testkit::start_node`), wired
//! through turmoil's listener and connector, as the integration tests and the bench start theirs
//! through tokio's. With several, it is the multi-Raft stack: one `SharedWal` on the host's disk
//! for every group, one `TcpTransport` with every group registered, and one `Host` (as a single
//! task, `Host::start_task`) that drives every group; every node is a voter of every group. A
//! crash, a bounce, a pause or a disk fault of the host hits all of its groups at once, and a
//! restart recovers all of them from the shared log.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use raft_core::{ConfChange, GroupId, Index, Membership, MembershipError, NodeId, Options, TransferError};
use raft_net::{
    Execution, Host, HostConfig, HostError, MembershipChangeError, NodeConfig, NodeEvent, NodeHandle, NodeStartError,
    PeerWatch, ProposeError, ReadConsistency, StateMachine, StopReason, TcpOptions, TcpTransport,
    TransferLeadershipError,
};
use raft_storage::{DiskError, DiskOptions, DiskStorage, GroupStore, Identity, SharedWal, WalOptions};
use raft_testkit::{HarnessError, Tcp, start_node};
use tokio::sync::broadcast::error::RecvError;
use turmoil::net::{TcpListener, TcpStream};

use super::client::{Admin, Answer, CLIENT_PORT, Request, group_of, read_frame, write_frame};
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
    /// Self-tests: fsync does nothing once the store is created.
    pub(crate) fsync_lies_after_create: bool,
    /// The run's seed, mixed into each incarnation's core seed.
    pub(crate) seed: u64,
    /// Raft groups on every node: 1 runs the single-group stack, more the multi-Raft stack.
    pub(crate) groups: u64,
    /// The shared log's entry cache (multi-Raft only; small, so old entries are read back from
    /// the disk).
    pub(crate) cache_bytes_max: u64,
}

/// The state machine: the simulator's key-value map, plus a chain hash over every applied
/// command (index and bytes) that the observer compares across nodes.
pub(crate) struct SimKv {
    group: GroupId,
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
        self.observer.lock().applied(self.group, self.node, index, self.chain, state);
        output
    }

    /// The simulator's state is small, and its snapshot format is one its seeds' runs depend
    /// on: it is encoded whole, then written.
    fn snapshot(&self, sink: &mut dyn std::io::Write) -> std::io::Result<()> {
        sink.write_all(&self.last.0.to_le_bytes())?;
        sink.write_all(&self.chain.to_le_bytes())?;
        sink.write_all(&self.state.encode())
    }

    /// Read whole, then decoded (see `snapshot`). A failure of the reader is the store's, which
    /// the driver reports as such.
    fn restore(&mut self, reader: &mut dyn std::io::Read) -> Result<(), BadSnapshot> {
        let mut data = Vec::new();
        reader.read_to_end(&mut data).map_err(|_| BadSnapshot)?;
        let (Some(last), Some(chain)) = (crate::kv::word(&data, 0), crate::kv::word(&data, 8)) else {
            return Err(BadSnapshot);
        };
        let Some((state, rest)) = KvState::decode(&data[16..]) else { return Err(BadSnapshot) };
        if !rest.is_empty() {
            return Err(BadSnapshot);
        }
        let digest = fnv(FNV_START, &state.encode());
        self.observer.lock().restored(self.group, self.node, (self.last, Index(last)), chain, digest);
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
    if plan.groups == 1 {
        run_single(plan, observer, incarnation).await
    } else {
        run_groups(plan, observer, incarnation).await
    }
}

/// The transport's addresses of the node's peers.
fn peers(plan: &NodePlan) -> BTreeMap<NodeId, SocketAddr> {
    (1..=plan.hosts.len() as u64)
        .filter(|peer| *peer != plan.id.0)
        .map(|peer| (NodeId(peer), SocketAddr::new(turmoil::lookup(plan.hosts[peer as usize - 1].as_str()), RAFT_PORT)))
        .collect()
}

fn tcp_options() -> TcpOptions {
    TcpOptions {
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
    }
}

/// The driver's configuration of one group; `rng_salt` makes its core's seed differ per
/// incarnation (and per group).
fn node_config(plan: &NodePlan, rng_salt: &[u8]) -> NodeConfig {
    let mut config = NodeConfig::new(plan.id, plan.options.clone().with_rng_seed(fnv(plan.seed, rng_salt)));
    config.execution = Execution::Tasks;
    config.tick_interval = plan.tick_interval;
    config.snapshot_every_entries = plan.snapshot_every_entries;
    config
}

fn state_machine(group: GroupId, node: NodeId, observer: &Observer) -> SimKv {
    SimKv { group, node, state: KvState::default(), last: Index(0), chain: FNV_START, observer: observer.clone() }
}

/// One group: `DiskStorage` and the single-group driver (`raft_net::start`).
async fn run_single(plan: NodePlan, observer: Observer, incarnation: u64) -> turmoil::Result {
    let id = plan.id;
    let Some(storage) = open_store(&plan, &observer) else { return Ok(()) };
    let listener = TcpListener::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), RAFT_PORT)).await?;
    let wiring = Tcp {
        cluster_id: CLUSTER_ID,
        listener: TurmoilListener(listener),
        connector: TurmoilConnector,
        peers: peers(&plan),
        options: tcp_options(),
    };
    let config = node_config(&plan, &[id.0 as u8, incarnation as u8]);
    // The transport's tasks are spawned first, then the driver's: the order a seed's run depends
    // on, as it was before the harness started the node.
    let machine = state_machine(GroupId::DEFAULT, id, &observer);
    let handle = match start_node(config, storage, wiring, machine) {
        Ok(started) => started.handle,
        Err(HarnessError::Node(error)) => {
            observer.lock().violate("node starts", format!("node {id} did not start: {error}"));
            return Ok(());
        }
        Err(error) => return Err(error.into()),
    };
    let mut events = handle.events();
    serve_clients(vec![handle]).await?;
    loop {
        match events.recv().await {
            Ok(NodeEvent::LeaderChanged { leader: Some(leader), term }) if leader == id => {
                observer.lock().leader(GroupId::DEFAULT, id, term);
            }
            Ok(NodeEvent::Stopped(reason)) => {
                stopped(&plan, &observer, GroupId::DEFAULT, &reason);
                return Ok(());
            }
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}

/// Several groups: one shared log, one transport and one host for all of them. The node ends
/// (and the fault loop restarts it) when any group stops: a storage failure of the shared log
/// stops every group anyway.
async fn run_groups(plan: NodePlan, observer: Observer, incarnation: u64) -> turmoil::Result {
    let id = plan.id;
    let Some(wal) = open_wal(&plan, &observer) else { return Ok(()) };
    let Some(stores) = open_groups(&plan, &observer, &wal) else { return Ok(()) };
    let listener = TcpListener::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), RAFT_PORT)).await?;
    let transport = TcpTransport::start_node(
        CLUSTER_ID,
        id,
        TurmoilListener(listener),
        TurmoilConnector,
        peers(&plan),
        tcp_options(),
    )?;
    let host_config = HostConfig { tick_interval: plan.tick_interval, ..HostConfig::default() };
    let host = Rc::new(Host::start_task(host_config)?);
    if plan.options.quiesce() {
        // As a production node would: a ping per heartbeat interval, a peer silent for an
        // election timeout is down; the incarnation is this start's number (unique per node).
        let ticks = |count: u32| plan.tick_interval * count;
        let watch = PeerWatch::new(
            transport.peer_link(),
            ticks(plan.options.heartbeat_ticks()),
            ticks(plan.options.election_ticks()),
        )
        .with_incarnation(incarnation);
        host.watch_peers(watch)?;
        tokio::task::spawn_local(watch_quiet(Rc::downgrade(&host), plan.tick_interval, observer.clone()));
    }
    let (events_in, mut events) = tokio::sync::mpsc::unbounded_channel();
    let mut handles = Vec::new();
    for (group, store) in stores {
        let (group_transport, inbound) = transport.register_group(group)?;
        let config = node_config(&plan, &[id.0 as u8, incarnation as u8, group.0 as u8]);
        let machine = state_machine(group, id, &observer);
        let handle = match host.add_group(group, config, store, group_transport, inbound, machine) {
            Ok(handle) => handle,
            // On a faulty disk, reading a group's initial state (entries outside the cache are
            // read back from the shared log) may fail, typed: the node ends, to be restarted.
            Err(HostError::Start { source: NodeStartError::Storage(_), .. }) if plan.disk_faults => {
                let mut observed = observer.lock();
                observed.trace(&[5, id.0 as u8, group.0 as u8]);
                observed.stats.open_failures += 1;
                return Ok(());
            }
            Err(error) => {
                observer.lock().violate("node starts", format!("group {group}: node {id} did not start: {error}"));
                return Ok(());
            }
        };
        // Every group's events, into one stream (on the host's LocalSet, like the node's tasks).
        let (mut receiver, sender) = (handle.events(), events_in.clone());
        tokio::task::spawn_local(async move {
            loop {
                match receiver.recv().await {
                    Ok(event) => {
                        if sender.send((group, event)).is_err() {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
            }
        });
        handles.push(handle);
    }
    drop(events_in);
    serve_clients(handles).await?;
    while let Some((group, event)) = events.recv().await {
        match event {
            NodeEvent::LeaderChanged { leader: Some(leader), term } if leader == id => {
                observer.lock().leader(group, id, term);
            }
            NodeEvent::Stopped(reason) => {
                stopped(&plan, &observer, group, &reason);
                break;
            }
            _ => {}
        }
    }
    // Kept until here: dropping the host shuts its groups down.
    drop((host, transport));
    Ok(())
}

/// Records what quiescence did on this node's host, every tick: the most groups quiet at once,
/// the peers reported down and the pings sent (deltas, so each incarnation adds its own).
async fn watch_quiet(host: std::rc::Weak<Host<GroupStore<TurmoilFs>>>, tick: Duration, observer: Observer) {
    let (mut quiet_max, mut peer_downs, mut pings) = (0_u64, 0_u64, 0_u64);
    loop {
        tokio::time::sleep(tick).await;
        // Weak: the node's end drops the host, which shuts its groups down.
        let Some(host) = host.upgrade() else { return };
        let (status, stats) = (host.status(), host.stats());
        let mut observed = observer.lock();
        let quiet = status.quiet as u64;
        if quiet > quiet_max {
            observed.stats.quiet_groups += quiet - quiet_max;
            quiet_max = quiet;
        }
        observed.stats.peer_downs += stats.peer_downs - peer_downs;
        observed.stats.pings += stats.pings_sent - pings;
        (peer_downs, pings) = (stats.peer_downs, stats.pings_sent);
    }
}

/// Serves the clients on [`CLIENT_PORT`] through the node's handles, one per group in order.
async fn serve_clients(handles: Vec<NodeHandle<SimKv>>) -> std::io::Result<()> {
    let clients = TcpListener::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), CLIENT_PORT)).await?;
    let handles = Rc::new(handles);
    // On the host's LocalSet, like the node's tasks: a crash drops them in a fixed order.
    tokio::task::spawn_local(async move {
        while let Ok((stream, _)) = clients.accept().await {
            tokio::task::spawn_local(serve_client(Rc::clone(&handles), stream));
        }
    });
    Ok(())
}

/// Opens the node's store, or creates it the first time. `None` (with the reason recorded)
/// when it cannot be opened.
fn open_store(plan: &NodePlan, observer: &Observer) -> Option<DiskStorage<TurmoilFs>> {
    let id = plan.id;
    let identity = Identity { cluster_id: CLUSTER_ID, node_id: id };
    let options =
        DiskOptions { segment_bytes_max: plan.segment_bytes_max, preallocate_bytes: plan.segment_bytes_max / 4 };
    // Each host has a disk of its own; the node's id in the path only makes traces readable.
    let dir = format!("/raft/n{}", id.0);
    let (honest, fs) = file_systems(plan);
    let opened = DiskStorage::open(fs, Path::new(&dir), identity, options);
    let created = observer.lock().created.contains(&id);
    let error = match opened {
        Ok(storage) => return Some(storage),
        Err(DiskError::NotInitialized(_)) if !created => {
            match DiskStorage::create(honest, Path::new(&dir), identity, voters(plan), options) {
                Ok(storage) => {
                    observer.lock().created.insert(id);
                    if !plan.fsync_lies_after_create {
                        return Some(storage);
                    }
                    drop(storage);
                    match DiskStorage::open(fs, Path::new(&dir), identity, options) {
                        Ok(storage) => return Some(storage),
                        Err(error) => error,
                    }
                }
                Err(error) => error,
            }
        }
        Err(error) => error,
    };
    open_failed(plan, observer, &error, "");
    None
}

/// The file system a store is created on, and the one it runs on (they differ only in the
/// `fsync_lies_after_create` self-test).
fn file_systems(plan: &NodePlan) -> (TurmoilFs, TurmoilFs) {
    let honest = TurmoilFs { fsync_lies: plan.fsync_lies };
    (honest, TurmoilFs { fsync_lies: plan.fsync_lies || plan.fsync_lies_after_create })
}

/// Every node, as a voter.
fn voters(plan: &NodePlan) -> Membership {
    Membership::new((1..=plan.hosts.len() as u64).map(NodeId))
}

/// Opens the node's shared log, or creates it the first time; `None` as for [`open_store`].
fn open_wal(plan: &NodePlan, observer: &Observer) -> Option<SharedWal<TurmoilFs>> {
    let id = plan.id;
    let identity = Identity { cluster_id: CLUSTER_ID, node_id: id };
    let options = WalOptions {
        segment_bytes_max: plan.segment_bytes_max,
        cache_bytes_max: plan.cache_bytes_max,
        preallocate_bytes: plan.segment_bytes_max / 4,
    };
    let dir = format!("/raft/n{}", id.0);
    let (honest, fs) = file_systems(plan);
    let opened = SharedWal::open(fs, Path::new(&dir), identity, options);
    let created = observer.lock().created.contains(&id);
    let error = match opened {
        Ok(wal) => return Some(wal),
        Err(DiskError::NotInitialized(_)) if !created => {
            match SharedWal::create(honest, Path::new(&dir), identity, options) {
                Ok(wal) => {
                    observer.lock().created.insert(id);
                    if !plan.fsync_lies_after_create {
                        return Some(wal);
                    }
                    // Its groups too are created honestly (all before any await: no crash between).
                    open_groups(plan, observer, &wal)?;
                    drop(wal);
                    match SharedWal::open(fs, Path::new(&dir), identity, options) {
                        Ok(wal) => return Some(wal),
                        Err(error) => error,
                    }
                }
                Err(error) => error,
            }
        }
        Err(error) => error,
    };
    open_failed(plan, observer, &error, "");
    None
}

/// Every group's store in the shared log, in order: each group is created the first time (a
/// crash may have come between the log's creation and a group's), and must be there from then
/// on. `None` as for [`open_store`].
fn open_groups(
    plan: &NodePlan,
    observer: &Observer,
    wal: &SharedWal<TurmoilFs>,
) -> Option<Vec<(GroupId, GroupStore<TurmoilFs>)>> {
    let id = plan.id;
    let present = wal.groups();
    let mut stores = Vec::new();
    for group in (0..plan.groups).map(GroupId) {
        let created = observer.lock().groups_created.contains(&(id, group));
        let opened = if present.contains(&group) {
            wal.group(group)
        } else if created {
            let mut observed = observer.lock();
            observed.trace(&[5, id.0 as u8, group.0 as u8]);
            observed.violate(
                "the store reopens after a crash",
                format!("node {id}: group {group} vanished from the shared log"),
            );
            return None;
        } else {
            let created = wal.create_group(group, voters(plan));
            if created.is_ok() {
                observer.lock().groups_created.insert((id, group));
            }
            created
        };
        match opened {
            Ok(store) => stores.push((group, store)),
            Err(error) => {
                open_failed(plan, observer, &error, &format!("group {group}: "));
                return None;
            }
        }
    }
    Some(stores)
}

/// Judges a store that did not open: a typed I/O error or corruption is expected on a faulty
/// disk, anything else is a violation. `context` prefixes the violation's detail.
fn open_failed(plan: &NodePlan, observer: &Observer, error: &DiskError, context: &str) {
    let id = plan.id;
    let mut observed = observer.lock();
    observed.trace(&[5, id.0 as u8]);
    if plan.disk_faults && matches!(error, DiskError::Io { .. } | DiskError::Corrupt { .. }) {
        observed.stats.open_failures += 1;
    } else {
        observed.violate("the store reopens after a crash", format!("{context}node {id}: {error}"));
    }
}

/// Judges why a group of a node stopped: only a storage failure on a faulty disk is expected.
fn stopped(plan: &NodePlan, observer: &Observer, group: GroupId, reason: &StopReason) {
    let mut observed = observer.lock();
    observed.trace(&[6, plan.id.0 as u8, group.0 as u8]);
    match reason {
        StopReason::Shutdown => {}
        StopReason::StorageFailed(_) if plan.disk_faults => observed.stats.storage_failures += 1,
        other => {
            observed.violate("only expected, typed stops", format!("group {group}: node {} stopped: {other}", plan.id))
        }
    }
}

/// Serves one client request through the handle of its key's group (an administrator's request:
/// of the group it names).
async fn serve_client(handles: Rc<Vec<NodeHandle<SimKv>>>, mut stream: TcpStream) {
    let Ok(body) = read_frame(&mut stream).await else { return };
    let groups = handles.len() as u64;
    let handle = |key: u64| &handles[group_of(key, groups) as usize];
    let answer = match Request::decode(&body) {
        None => Answer::Failed,
        Some(Request::Write(command)) => match handle(command.input.key()).propose(Bytes::from(command.encode())).await
        {
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
            match handle(key).read(consistency, move |kv: &SimKv| kv.state.get(key)).await {
                Ok(value) => Answer::Done(Output::Value(value)),
                Err(_) => Answer::Failed,
            }
        }
        Some(Request::Admin { group, admin }) => match handles.get(group as usize) {
            Some(handle) => administer(handle, admin).await,
            None => Answer::Failed,
        },
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
