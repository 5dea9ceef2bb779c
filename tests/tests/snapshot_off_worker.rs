//! Taking a local snapshot never blocks the worker: while a state machine is held inside its
//! `snapshot` (a gate the test opens), its group keeps committing (applied once the snapshot is
//! written) and, on a shared one-worker host, another group keeps committing and applying. Once
//! the gate opens the snapshot is saved, the log compacted, and a restart recovers everything.
//! For a shared `Host` (applied inline: the applier leaves the worker for the snapshot) and for
//! `Execution::Threads` (the apply thread writes into the store's owned writer).
//!
//! A shutdown while the snapshot is held neither hangs nor loses what the state machine holds.
//! A snapshot from the leader arriving meanwhile supersedes the local one, which is called off
//! and never saved. The committed entries that wait for a state machine away are bounded as an
//! apply queue is; past the bound the worker waits for the snapshot. A one-worker host lends one
//! thread to such snapshots at a time: a second group due meanwhile waits for it.
//!
//! Restoring does not block the worker either: a group restarted from its snapshot, its state
//! machine held inside `restore`, keeps committing while another group on the worker commits
//! and applies; a restore that fails off the worker stops its group only, with nothing applied
//! or served over it; a snapshot from the leader arriving during a restore waits for it; and a
//! shutdown calls a restore off at the state machine's next read.
//!
//! Nothing here depends on timing: the gate holds the snapshot until the test has seen what it
//! waits for (a test of the old driver, whose worker waited for the snapshot, times out); where
//! the worker must wait for the snapshot, the node's count of those waits says when it does.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use raft_core::{GroupId, Index, Membership, NodeId, Storage};
use raft_net::{Execution, Host, HostConfig, MemNetwork, NodeEvent, NodeHandle, StateMachine};
use raft_storage::testing::SimFs;
use raft_storage::{DiskOptions, DiskStorage, Identity, SharedWal, WalOptions};
use raft_testkit::{ClusterBuilder, PATIENCE, StorageKind, eventually, propose, settled_leader};

const ME: NodeId = NodeId(1);
const IDENTITY: Identity = Identity { cluster_id: 7, node_id: ME };
/// A snapshot after this many applied entries (more than the testkit's compaction margin of
/// 10, so that the log is compacted).
const EVERY: u64 = 15;

/// Holds a state machine's `snapshot` until opened; counts the snapshots that entered it, and
/// notes a sink that refused the snapshot's data (the snapshot was called off).
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
    entered: AtomicU64,
    refused: AtomicBool,
}

impl Gate {
    fn closed() -> Arc<Self> {
        Arc::new(Gate::default())
    }

    fn open() -> Arc<Self> {
        let gate = Gate::default();
        *gate.open.lock().expect("not poisoned") = true;
        Arc::new(gate)
    }

    fn release(&self) {
        *self.open.lock().expect("not poisoned") = true;
        self.opened.notify_all();
    }

    fn close(&self) {
        *self.open.lock().expect("not poisoned") = false;
    }

    fn pass(&self) {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().expect("not poisoned");
        while !*open {
            open = self.opened.wait(open).expect("not poisoned");
        }
    }
}

/// The commands applied, in order; its snapshot is one length-prefixed record per command.
struct Log {
    applied: Vec<Bytes>,
    gate: Arc<Gate>,
    view: Arc<Mutex<Vec<Bytes>>>,
    /// Its `snapshot` panics once through the gate.
    panics: bool,
    /// Holds its `restore` (before it reads anything) until opened.
    restore_gate: Arc<Gate>,
    /// Its `restore` fails, once through the gate.
    refuses_restore: bool,
}

impl Log {
    fn new(gate: &Arc<Gate>) -> (Self, Arc<Mutex<Vec<Bytes>>>) {
        let view = Arc::new(Mutex::new(Vec::new()));
        let log = Log {
            applied: Vec::new(),
            gate: Arc::clone(gate),
            view: Arc::clone(&view),
            panics: false,
            restore_gate: Gate::open(),
            refuses_restore: false,
        };
        (log, view)
    }

    /// Its `restore` waits at `gate`.
    fn holding_restores(self, gate: &Arc<Gate>) -> Self {
        Log { restore_gate: Arc::clone(gate), ..self }
    }
}

impl StateMachine for Log {
    type Response = usize;
    type RestoreError = io::Error;

    fn apply(&mut self, _index: Index, command: &Bytes) -> usize {
        self.applied.push(command.clone());
        *self.view.lock().expect("not poisoned") = self.applied.clone();
        self.applied.len()
    }

    fn snapshot(&self, sink: &mut dyn Write) -> io::Result<()> {
        self.gate.pass();
        assert!(!self.panics, "a state machine that panics in its snapshot");
        for command in &self.applied {
            sink.write_all(&(command.len() as u32).to_le_bytes())?;
            sink.write_all(command)?;
        }
        // Hands the data over here (the driver would at the end): a snapshot called off refuses it.
        sink.flush().inspect_err(|_| self.gate.refused.store(true, Ordering::SeqCst))
    }

    fn restore(&mut self, reader: &mut dyn Read) -> Result<(), io::Error> {
        self.restore_gate.pass();
        if self.refuses_restore {
            return Err(io::Error::other("a state machine that refuses its snapshot"));
        }
        let mut data = Vec::new();
        reader.read_to_end(&mut data)?;
        let mut applied = Vec::new();
        let mut rest = &data[..];
        while rest.len() >= 4 {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            applied.push(Bytes::copy_from_slice(&rest[4..4 + len]));
            rest = &rest[4 + len..];
        }
        self.applied = applied;
        *self.view.lock().expect("not poisoned") = self.applied.clone();
        Ok(())
    }
}

impl raft_testkit::Machine for Log {
    type View = Arc<Mutex<Vec<Bytes>>>;

    fn view(&self) -> Self::View {
        Arc::clone(&self.view)
    }
}

fn command(group: u64, number: u64) -> Bytes {
    Bytes::from(format!("group {group} command {number}"))
}

fn config(every: u64, execution: Execution) -> raft_net::NodeConfig {
    let mut config = raft_testkit::config(ME);
    raft_testkit::snapshotting(&mut config); // A compaction margin of 10 entries.
    config.snapshot_every_entries = every;
    config.execution = execution;
    config
}

/// `future`'s output, or a failure naming `what` after [`PATIENCE`]: a worker held by a
/// snapshot would never answer.
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future).await.unwrap_or_else(|_| panic!("no answer: {what}"))
}

async fn status(handle: &NodeHandle<Log>) -> raft_net::NodeStatus {
    within("the group's status", handle.status()).await.expect("running")
}

async fn commit(handle: &NodeHandle<Log>) -> Index {
    status(handle).await.commit
}

/// Proposes commands `numbers` of `group` without waiting for their answers, which go to
/// `answers`.
fn propose_all(
    handle: &NodeHandle<Log>,
    group: u64,
    numbers: std::ops::Range<u64>,
    answers: &mut tokio::task::JoinSet<usize>,
) {
    for number in numbers {
        let handle = handle.clone();
        answers.spawn(async move { handle.propose(command(group, number)).await.expect("applied") });
    }
}

/// Proposes commands `numbers` of `group` one after another, each answered (applied), once the
/// node leads its group.
async fn propose_applied(handle: &NodeHandle<Log>, group: u64, numbers: std::ops::Range<u64>) {
    eventually("the node leads its group", || async { status(handle).await.role == raft_core::Role::Leader }).await;
    for number in numbers {
        within("a proposal", handle.propose(command(group, number))).await.expect("applied");
    }
}

/// Proposes enough commands to want a snapshot (their answers may wait for it: the snapshot
/// can start before the last is answered), waits until the snapshot holds inside the state
/// machine, then checks that the group keeps committing (but not applying) while it does;
/// returns the proposals, answered after release.
async fn commits_while_held(handle: &NodeHandle<Log>, gate: &Gate, group: u64) -> tokio::task::JoinSet<usize> {
    eventually("the node leads its group", || async { status(handle).await.role == raft_core::Role::Leader }).await;
    let mut answers = tokio::task::JoinSet::new();
    propose_all(handle, group, 0..EVERY, &mut answers);
    eventually("the snapshot is held in the state machine", || async { gate.entered.load(Ordering::SeqCst) == 1 })
        .await;
    let applied = status(handle).await.applied;
    propose_all(handle, group, 100..103, &mut answers);
    // Every command proposed and the leader's first entry commit, the three new ones included,
    // while nothing more is applied.
    let all = Index(EVERY + 3 + 1);
    eventually("the snapshotting group commits new entries", || async { commit(handle).await >= all }).await;
    assert_eq!(status(handle).await.applied, applied, "nothing is applied while the snapshot is held");
    answers
}

/// Every proposal answered, a `SnapshotTaken` seen.
async fn finishes(
    events: &mut tokio::sync::broadcast::Receiver<NodeEvent>,
    mut answers: tokio::task::JoinSet<usize>,
) -> Index {
    while let Some(answer) = answers.join_next().await {
        answer.expect("a proposal's task");
    }
    loop {
        match events.recv().await.expect("events") {
            NodeEvent::SnapshotTaken { index } => return index,
            _ => continue,
        }
    }
}

/// The commands a group applied: `0..count`, then `100..103` (in any order: they were proposed
/// together).
fn expected(group: u64, count: u64) -> Vec<Bytes> {
    (0..count).map(|number| command(group, number)).chain((100..103).map(|number| command(group, number))).collect()
}

fn same_commands(mut seen: Vec<Bytes>, mut expected: Vec<Bytes>) {
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_shared_host_a_snapshot_held_in_the_state_machine_stops_no_group() {
    let fs = SimFs::new(21);
    let network = MemNetwork::default();
    let (one, two) = (GroupId(1), GroupId(2));
    let gate = Gate::closed();
    let (taken, snapshot_index) = {
        let wal = SharedWal::create(fs.clone(), "/wal", IDENTITY, WalOptions::default()).expect("log");
        let host = Host::start(HostConfig::with_workers(1)).expect("host");
        let mut handles = Vec::new();
        for (group, every) in [(one, EVERY), (two, 0)] {
            let store = wal.create_group(group, Membership::new([ME])).expect("group");
            let (transport, inbound) = network.join_group(ME, group).expect("joined");
            let open = Gate::open();
            let (machine, _) = Log::new(if group == one { &gate } else { &open });
            let config = config(every, Execution::OneThread);
            handles.push(host.add_group(group, config, store, transport, inbound, machine).expect("added"));
        }
        let mut events = handles[0].events();
        // Group 1 applies enough to want a snapshot, whose state machine then waits at the gate.
        let answers = commits_while_held(&handles[0], &gate, 1).await;
        // The other group, on the same (only) worker, commits and applies meanwhile.
        propose_applied(&handles[1], 2, 0..20).await;
        assert_eq!(gate.entered.load(Ordering::SeqCst), 1, "still held");
        gate.release();
        let index = finishes(&mut events, answers).await;
        host.shutdown().await;
        (wal.group(one).expect("group").snapshot().expect("snapshot"), index)
    };
    assert_eq!(taken.index, snapshot_index);
    fs.crash(); // What was answered was durable.

    let wal = SharedWal::open(fs.clone(), "/wal", IDENTITY, WalOptions::default()).expect("reopen");
    let store = wal.group(one).expect("group");
    assert_eq!(store.snapshot().expect("snapshot").index, snapshot_index, "the snapshot was saved");
    assert!(store.first_index().expect("first") > Index(1), "and the log compacted");
    let host = Host::start(HostConfig::with_workers(1)).expect("host");
    let network = MemNetwork::default();
    let mut views = Vec::new();
    for group in [one, two] {
        let (transport, inbound) = network.join_group(ME, group).expect("joined");
        let (machine, view) = Log::new(&Gate::open());
        let store = wal.group(group).expect("group");
        let handle = host.add_group(group, config(EVERY, Execution::OneThread), store, transport, inbound, machine);
        views.push((handle.expect("added"), view));
    }
    eventually("both groups recovered all their commands", || async {
        views[0].1.lock().expect("not poisoned").len() == EVERY as usize + 3
            && views[1].1.lock().expect("not poisoned").len() == 20
    })
    .await;
    same_commands(views[0].1.lock().expect("not poisoned").clone(), expected(1, EVERY));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_apply_thread_a_snapshot_held_in_the_state_machine_does_not_stop_the_group() {
    let fs = SimFs::new(22);
    let gate = Gate::closed();
    let snapshot_index = {
        let store = DiskStorage::create(fs.clone(), "/disk", IDENTITY, Membership::new([ME]), DiskOptions::default())
            .expect("store");
        let network = MemNetwork::default();
        let (transport, inbound) = network.join(ME).expect("join");
        let (machine, _) = Log::new(&gate);
        let handle =
            raft_net::start(config(EVERY, Execution::Threads), store, transport, inbound, machine).expect("start");
        let mut events = handle.events();
        let answers = commits_while_held(&handle, &gate, 1).await;
        gate.release();
        let index = finishes(&mut events, answers).await;
        handle.shutdown().await;
        index
    };
    fs.crash();
    let store = DiskStorage::open(fs.clone(), "/disk", IDENTITY, DiskOptions::default()).expect("reopen");
    assert_eq!(store.snapshot().expect("snapshot").index, snapshot_index, "the snapshot was saved");
    assert!(store.first_index().expect("first") > Index(1), "and the log compacted");
    let network = MemNetwork::default();
    let (transport, inbound) = network.join(ME).expect("join");
    let (machine, view) = Log::new(&Gate::open());
    let handle = raft_net::start(config(EVERY, Execution::Threads), store, transport, inbound, machine).expect("start");
    eventually("the group recovered all its commands", || async {
        view.lock().expect("not poisoned").len() == EVERY as usize + 3
    })
    .await;
    same_commands(view.lock().expect("not poisoned").clone(), expected(1, EVERY));
    handle.shutdown().await;
}

/// A shutdown while the snapshot is held: it calls the snapshot off, waits for the state
/// machine to return (the gate opens after the shutdown was asked for), and the state machine,
/// back from its thread, answers every proposal it was handed; nothing hangs.
async fn shuts_down_with_a_snapshot_in_flight(handle: NodeHandle<Log>, gate: Arc<Gate>, view: Arc<Mutex<Vec<Bytes>>>) {
    let mut answers = commits_while_held(&handle, &gate, 1).await;
    let committed = commit(&handle).await;
    let stopping = handle.clone();
    let shutdown = tokio::spawn(async move { stopping.shutdown().await });
    eventually("the shutdown was asked for", || async {
        handle.stop_reason().is_some() || handle.status().await.is_err()
    })
    .await;
    gate.release();
    within("the shutdown", shutdown).await.expect("the shutdown's task");
    let mut answered = 0;
    while let Some(answer) = within("a proposal's answer", answers.join_next()).await {
        answer.expect("every proposal committed before the shutdown is applied and answered");
        answered += 1;
    }
    assert_eq!(answered, EVERY + 3);
    assert_eq!(committed, Index(EVERY + 3 + 1));
    assert_eq!(view.lock().expect("not poisoned").len() as u64, EVERY + 3, "applied on the way out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_with_a_snapshot_in_flight_answers_what_the_state_machine_holds() {
    for execution in [Execution::OneThread, Execution::Threads] {
        let fs = SimFs::new(23);
        let store = DiskStorage::create(fs.clone(), "/disk", IDENTITY, Membership::new([ME]), DiskOptions::default())
            .expect("store");
        let network = MemNetwork::default();
        let (transport, inbound) = network.join(ME).expect("join");
        let gate = Gate::closed();
        let (machine, view) = Log::new(&gate);
        let handle = raft_net::start(config(EVERY, execution), store, transport, inbound, machine).expect("start");
        shuts_down_with_a_snapshot_in_flight(handle, gate, view).await;
    }
}

/// A state machine that panics while it writes its snapshot off the worker stops its own group,
/// as `StateMachinePanicked`, with nothing but the job's end to wake the group (no input reaches
/// it after the panic), and the other group on the same one-worker host goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_machine_panicking_in_its_snapshot_off_the_worker_stops_its_group_only() {
    let network = MemNetwork::default();
    let wal = SharedWal::create(SimFs::new(24), "/wal", IDENTITY, WalOptions::default()).expect("log");
    let host = Host::start(HostConfig::with_workers(1)).expect("host");
    let gate = Gate::closed();
    let mut handles = Vec::new();
    for group in [GroupId(1), GroupId(2)] {
        let store = wal.create_group(group, Membership::new([ME])).expect("group");
        let (transport, inbound) = network.join_group(ME, group).expect("joined");
        let gate = if group == GroupId(1) { Arc::clone(&gate) } else { Gate::open() };
        let (mut machine, _) = Log::new(&gate);
        machine.panics = group == GroupId(1);
        let every = if group == GroupId(1) { EVERY } else { 0 };
        handles.push(host.add_group(group, config(every, Execution::OneThread), store, transport, inbound, machine));
    }
    let handles: Vec<NodeHandle<Log>> = handles.into_iter().map(|handle| handle.expect("added")).collect();
    let mut events = handles[0].events();
    eventually("the node leads group 1", || async { status(&handles[0]).await.role == raft_core::Role::Leader }).await;
    let mut answers = tokio::task::JoinSet::new();
    for number in 0..EVERY {
        let handle = handles[0].clone();
        answers.spawn(async move { handle.propose(command(1, number)).await });
    }
    eventually("the snapshot is held in the state machine", || async { gate.entered.load(Ordering::SeqCst) == 1 })
        .await;
    // Nothing more reaches group 1: only the job's end can wake it now.
    gate.release();
    let reason = within("group 1 stops", async {
        loop {
            if let NodeEvent::Stopped(reason) = events.recv().await.expect("events") {
                return reason;
            }
        }
    })
    .await;
    assert!(matches!(reason, raft_net::StopReason::StateMachinePanicked), "{reason:?}");
    while let Some(answer) = answers.join_next().await {
        answer.expect("a proposal's task").ok(); // Applied before the snapshot, or refused by the stop.
    }
    propose_applied(&handles[1], 2, 0..5).await;
    host.shutdown().await;
}

/// A linearizable read asked while the applier is away writing a snapshot waits for it and then
/// sees every entry committed before the read was asked (it runs after them, in the order the
/// worker handed them), not the state the snapshot holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_asked_while_the_snapshot_is_written_sees_every_entry_committed_before_it() {
    let wal = SharedWal::create(SimFs::new(25), "/wal", IDENTITY, WalOptions::default()).expect("log");
    let network = MemNetwork::default();
    let host = Host::start(HostConfig::with_workers(1)).expect("host");
    let gate = Gate::closed();
    let store = wal.create_group(GroupId(1), Membership::new([ME])).expect("group");
    let (transport, inbound) = network.join_group(ME, GroupId(1)).expect("joined");
    let (machine, _) = Log::new(&gate);
    let config = config(EVERY, Execution::OneThread);
    let handle = host.add_group(GroupId(1), config, store, transport, inbound, machine).expect("added");
    // EVERY commands, a snapshot held at the gate, and 3 more committed (not applied) meanwhile.
    let mut answers = commits_while_held(&handle, &gate, 1).await;
    let reader = handle.clone();
    let mut read = tokio::spawn(async move {
        reader.read(raft_net::ReadConsistency::Linearizable, |log: &Log| log.applied.len()).await
    });
    // The read waits for the state machine, which is away: no answer while the gate holds it.
    assert!(tokio::time::timeout(std::time::Duration::from_millis(200), &mut read).await.is_err());
    gate.release();
    let seen = within("the read", read).await.expect("the read's task").expect("read");
    assert_eq!(seen as u64, EVERY + 3, "the read ran after every entry committed before it");
    while let Some(answer) = answers.join_next().await {
        answer.expect("a proposal's task");
    }
    host.shutdown().await;
}

/// Three voters over disk stores, each taking a snapshot every [`EVERY`] entries with a
/// compaction margin of 10, their state machines applied inline.
fn snapshotting_cluster() -> ClusterBuilder {
    ClusterBuilder::new(3).storage(StorageKind::disk()).configure(|config| {
        raft_testkit::snapshotting(config); // A compaction margin of 10 entries.
        config.snapshot_every_entries = EVERY;
        config.execution = Execution::OneThread;
    })
}

/// Proposes commands from `*proposed` on through the leader at `at_leader` until it has taken
/// a snapshot past `follower_last` and the margin kept below it: a follower whose log ends
/// there can only be sent a snapshot.
async fn compact_past(
    handles: &[NodeHandle<Log>],
    ids: &[NodeId],
    at_leader: usize,
    proposed: &mut u64,
    follower_last: Index,
) {
    let mut leader_events = handles[at_leader].events();
    let mut compacted_past = false;
    while !compacted_past {
        assert!(*proposed < 20 * EVERY, "the leader never snapshots past the follower");
        propose(handles, ids, at_leader, command(1, *proposed)).await;
        *proposed += 1;
        while let Ok(event) = leader_events.try_recv() {
            if let NodeEvent::SnapshotTaken { index } = event {
                compacted_past |= index.0 > follower_last.0 + 10 + 1;
            }
        }
    }
}

/// A snapshot from the leader reaches a follower whose own snapshot is being written, its state
/// machine held inside `snapshot` on the thread it moved to. The follower calls its snapshot off
/// and waits for the state machine to come back (`snapshot_job_waits`, counted before the wait,
/// tells the test when to open the gate: the gate opens only once the install has begun), then
/// installs the leader's. The local snapshot is never saved (its sink refused the data, and no
/// `SnapshotTaken` is reported), the follower goes on from the leader's state with every
/// committed command, and has them all again after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_from_the_leader_supersedes_a_local_one_being_written() {
    raft_testkit::init_tracing(); // RUST_LOG shows the crates' logs (for failing tests).
    let gates: Arc<Mutex<BTreeMap<NodeId, Arc<Gate>>>> = Arc::default();
    let made = Arc::clone(&gates);
    let builder = snapshotting_cluster();
    let start = builder.start(move |id| {
        let gate = Gate::open();
        made.lock().expect("not poisoned").insert(id, Arc::clone(&gate));
        Log::new(&gate).0
    });
    let mut cluster = start.await.expect("the cluster starts");
    let leader = settled_leader(&cluster.running()).await;
    let (ids, handles) = (cluster.ids(), cluster.handles());
    let at_leader = ids.iter().position(|id| *id == leader).expect("the leader runs");
    let at_follower = (at_leader + 1) % ids.len();
    let follower = ids[at_follower];
    let gate = Arc::clone(&gates.lock().expect("not poisoned")[&follower]);
    gate.close();
    let on_follower = handles[at_follower].clone();
    let mut follower_events = on_follower.events();

    // The follower applies enough to want a snapshot, whose state machine then waits at the gate.
    let mut proposed = 0;
    while proposed < EVERY {
        propose(&handles, &ids, at_leader, command(1, proposed)).await;
        proposed += 1;
    }
    eventually("the follower's snapshot is held in its state machine", || async {
        gate.entered.load(Ordering::SeqCst) == 1
    })
    .await;
    let local = status(&on_follower).await.applied; // Nothing is applied while it is held.

    // Cut off, the follower falls behind the leader's compacted log: the leader snapshots past
    // the follower's last entry and the margin kept below it.
    cluster.network().isolate(follower);
    let follower_last = status(&on_follower).await.last_index;
    compact_past(&handles, &ids, at_leader, &mut proposed, follower_last).await;
    // The follower's worker went on meanwhile (it answers), its snapshot still held.
    assert_eq!(status(&on_follower).await.applied, local);
    assert_eq!((gate.entered.load(Ordering::SeqCst), on_follower.snapshot_job_waits()), (1, 0));

    // Back, it is sent the leader's snapshot: the worker calls its own off and waits for it.
    cluster.network().heal(follower);
    eventually("the follower waits for its snapshot, to install the leader's", || async {
        assert!(on_follower.stop_reason().is_none(), "the follower stopped: {:?}", on_follower.stop_reason());
        on_follower.snapshot_job_waits() == 1
    })
    .await;
    gate.release();
    let expected: Vec<Bytes> = (0..proposed).map(|number| command(1, number)).collect();
    let view = Arc::clone(&cluster.member(follower).expect("the follower runs").view);
    eventually("the follower has every committed command", || async {
        view.lock().expect("not poisoned").len() == expected.len()
    })
    .await;
    assert_eq!(*view.lock().expect("not poisoned"), expected, "in order, from the leader's snapshot and log");
    assert!(gate.refused.load(Ordering::SeqCst), "the local snapshot was called off: its sink refused the data");
    assert!(on_follower.stop_reason().is_none(), "{:?}", on_follower.stop_reason());
    let mut restored = Vec::new();
    while let Ok(event) = follower_events.try_recv() {
        match event {
            NodeEvent::SnapshotTaken { index } => panic!("the local snapshot at {index} was saved (held at {local})"),
            NodeEvent::SnapshotRestored { index } => restored.push(index),
            NodeEvent::Stopped(reason) => panic!("the follower stopped: {reason:?}"),
            _ => {}
        }
    }
    // (A leader change on the way back may have it sent twice: each is newer than its own.)
    assert!(
        !restored.is_empty() && restored.iter().all(|index| *index > local),
        "the leader's snapshot installed: {restored:?}"
    );

    // It goes on with the others, and a restart loses nothing.
    for number in proposed..proposed + 3 {
        propose(&handles, &ids, at_leader, command(1, number)).await;
    }
    let expected: Vec<Bytes> = (0..proposed + 3).map(|number| command(1, number)).collect();
    cluster.stop(follower).await.expect("the follower runs");
    let view = Arc::clone(&cluster.restart(follower).await.expect("the follower restarts").view);
    eventually("the restarted follower has every committed command", || async {
        view.lock().expect("not poisoned").len() == expected.len()
    })
    .await;
    assert_eq!(*view.lock().expect("not poisoned"), expected);
    for member in cluster.running() {
        assert_eq!(*member.view.lock().expect("not poisoned"), expected, "node {}", member.id);
    }
    cluster.shutdown().await;
}

/// The size of each large command of the bound's test: with an entry's overhead, three of them
/// (and the few small commands that may wait with them) fit in `APPLY_BYTES`, four do not.
const LARGE_BYTES: usize = 1100;

/// The apply queue of the bound's test: one batch of this many bytes.
const APPLY_BYTES: u64 = 4096;

/// `config` with what waits for a state machine away bounded to one batch of `APPLY_BYTES`.
fn bounded(mut config: raft_net::NodeConfig) -> raft_net::NodeConfig {
    config.options = raft_core::Options::builder()
        .election_ticks(10)
        .heartbeat_ticks(2)
        .compaction_margin_entries(10)
        .message_bytes_max(APPLY_BYTES)
        .apply_bytes_max(APPLY_BYTES)
        .build()
        .expect("valid options");
    config.apply_queue_batches_max = 1;
    config
}

fn large(number: u64) -> Bytes {
    let mut data = format!("large {number} ").into_bytes();
    data.resize(LARGE_BYTES, b'.');
    Bytes::from(data)
}

/// While a state machine is away writing a snapshot, the committed entries that wait for it are
/// bounded as the apply queue is (here one batch of `APPLY_BYTES`): below the bound the worker
/// goes on (it answers, commits, and has never waited), and the entry that takes the waiting
/// bytes past it makes the worker wait for the snapshot (`snapshot_job_waits`, counted before
/// the wait, while the gate still holds the state machine). Once the gate opens, every entry is
/// applied in order and answered, the snapshot saved, and a restart recovers them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_waiting_for_a_state_machine_away_are_bounded_by_the_apply_queue() {
    let fs = SimFs::new(26);
    let group = GroupId(1);
    let config = bounded(config(EVERY, Execution::OneThread));
    let gate = Gate::closed();
    let snapshot_index = {
        let wal = SharedWal::create(fs.clone(), "/wal", IDENTITY, WalOptions::default()).expect("log");
        let host = Host::start(HostConfig::with_workers(1)).expect("host");
        let store = wal.create_group(group, Membership::new([ME])).expect("group");
        let network = MemNetwork::default();
        let (transport, inbound) = network.join_group(ME, group).expect("joined");
        let (machine, view) = Log::new(&gate);
        let handle = host.add_group(group, config.clone(), store, transport, inbound, machine).expect("added");
        let mut events = handle.events();
        eventually("the node leads its group", || async { status(&handle).await.role == raft_core::Role::Leader })
            .await;
        let mut answers = tokio::task::JoinSet::new();
        propose_all(&handle, 1, 0..EVERY, &mut answers);
        eventually("the snapshot is held in the state machine", || async { gate.entered.load(Ordering::SeqCst) == 1 })
            .await;
        // The leader's first entry and every small command: the large ones come after, in order.
        eventually("the small commands commit", || async { commit(&handle).await >= Index(EVERY + 1) }).await;
        let held = status(&handle).await.applied;
        let mut large_answers = Vec::new();
        for number in 0..4 {
            let proposer = handle.clone();
            large_answers.push(tokio::spawn(async move { proposer.propose(large(number)).await }));
            if number == 3 {
                break;
            }
            let index = Index(EVERY + 2 + number);
            eventually("a large command commits", || async { commit(&handle).await >= index }).await;
            // Answered in a round after the one that committed it: the entry was handed over.
            assert_eq!(status(&handle).await.applied, held, "nothing is applied while the snapshot is held");
            assert_eq!(handle.snapshot_job_waits(), 0, "below the bound the worker does not wait");
        }
        eventually("past the bound, the worker waits for the snapshot", || async { handle.snapshot_job_waits() == 1 })
            .await;
        assert_eq!(gate.entered.load(Ordering::SeqCst), 1, "still held");
        gate.release();
        for (number, answer) in (0..).zip(large_answers) {
            let applied = within("a large command", answer).await.expect("its task").expect("applied");
            assert_eq!(applied as u64, EVERY + number + 1, "the large commands applied in order");
        }
        let index = finishes(&mut events, answers).await;
        assert_eq!(handle.snapshot_job_waits(), 1, "the worker waited once");
        let seen = view.lock().expect("not poisoned").clone();
        let (small, large_seen) = seen.split_at(EVERY as usize);
        assert_eq!(large_seen, (0..4).map(large).collect::<Vec<_>>());
        same_commands(small.to_vec(), (0..EVERY).map(|number| command(1, number)).collect());
        host.shutdown().await;
        index
    };
    fs.crash(); // What was answered was durable.

    let wal = SharedWal::open(fs.clone(), "/wal", IDENTITY, WalOptions::default()).expect("reopen");
    let store = wal.group(group).expect("group");
    assert_eq!(store.snapshot().expect("snapshot").index, snapshot_index, "the snapshot was saved");
    let host = Host::start(HostConfig::with_workers(1)).expect("host");
    let network = MemNetwork::default();
    let (transport, inbound) = network.join_group(ME, group).expect("joined");
    let (machine, view) = Log::new(&Gate::open());
    let handle = host.add_group(group, config, store, transport, inbound, machine).expect("added");
    eventually("the group recovered all its commands", || async {
        view.lock().expect("not poisoned").len() == EVERY as usize + 4
    })
    .await;
    let seen = view.lock().expect("not poisoned").clone();
    assert_eq!(seen[EVERY as usize..], (0..4).map(large).collect::<Vec<_>>()[..]);
    drop(handle);
    host.shutdown().await;
}

/// A host lends as many threads to snapshots written off its workers as it has workers: on a
/// one-worker host, a second group that comes due while the first's snapshot is held finds no
/// slot, so its state machine stays on the worker (its commands are still applied and
/// answered, which they would not be were it away, held at its own gate) and it asks again each
/// round; once the first snapshot ends and gives the slot back, the second takes it, at the
/// index it has applied by then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_one_worker_host_a_second_snapshot_waits_for_the_slot_of_the_first() {
    let wal = SharedWal::create(SimFs::new(27), "/wal", IDENTITY, WalOptions::default()).expect("log");
    let network = MemNetwork::default();
    let host = Host::start(HostConfig::with_workers(1)).expect("host");
    let gates = [Gate::closed(), Gate::closed()];
    let mut handles = Vec::new();
    for (group, gate) in [GroupId(1), GroupId(2)].into_iter().zip(&gates) {
        let store = wal.create_group(group, Membership::new([ME])).expect("group");
        let (transport, inbound) = network.join_group(ME, group).expect("joined");
        let (machine, _) = Log::new(gate);
        let config = config(EVERY, Execution::OneThread);
        handles.push(host.add_group(group, config, store, transport, inbound, machine).expect("added"));
    }
    let mut events: Vec<_> = handles.iter().map(NodeHandle::events).collect();
    // Group 1's snapshot holds the host's one slot.
    let answers = commits_while_held(&handles[0], &gates[0], 1).await;
    // Group 2 comes due (the leader's first entry and EVERY commands), and the commands after
    // it are applied on the worker: its snapshot did not start.
    propose_applied(&handles[1], 2, 0..EVERY).await;
    propose_applied(&handles[1], 2, 100..103).await;
    let applied = Index(EVERY + 3 + 1);
    assert_eq!(status(&handles[1]).await.applied, applied);
    assert_eq!(gates[1].entered.load(Ordering::SeqCst), 0, "no slot for group 2's snapshot");
    // The first snapshot ends and gives the slot back: the second takes it, at the next round
    // (a status request makes one).
    gates[0].release();
    finishes(&mut events[0], answers).await;
    eventually("group 2's snapshot takes the slot", || async {
        status(&handles[1]).await;
        gates[1].entered.load(Ordering::SeqCst) == 1
    })
    .await;
    gates[1].release();
    let index = finishes(&mut events[1], tokio::task::JoinSet::new()).await;
    assert_eq!(index, applied, "taken when the slot came free, at the index applied by then");
    host.shutdown().await;
}

/// The next `SnapshotTaken` of `events`.
async fn snapshot_taken(events: &mut tokio::sync::broadcast::Receiver<NodeEvent>) -> Index {
    within("a snapshot taken", async {
        loop {
            if let NodeEvent::SnapshotTaken { index } = events.recv().await.expect("events") {
                return index;
            }
        }
    })
    .await
}

/// Restoring does not block the worker either: a group restarted from its snapshot on a shared
/// one-worker host, its state machine held inside `restore` (on the thread it moved to), keeps
/// committing (applied once restored, after the snapshot and in order), and another group on
/// the same worker commits and applies meanwhile. (With the restore on the worker, the other
/// group's proposals are never answered.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_shared_host_a_restore_held_in_the_state_machine_stops_no_group() {
    restore_held_on_a_shared_host(false).await;
}

/// As above, but the held restore fails: that group stops with the state machine's reason, and
/// the entries committed while it was held are never applied over its partial state (they
/// waited for it on the worker: the state machine, back, refuses them); the other group goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_shared_host_a_restore_that_fails_off_the_worker_stops_its_group_only() {
    restore_held_on_a_shared_host(true).await;
}

/// Restarts two groups on a one-worker host, group 1 from a snapshot its state machine holds
/// inside `restore` (and then fails, with `refuse`): see the two tests above.
async fn restore_held_on_a_shared_host(refuse: bool) {
    let fs = SimFs::new(28);
    let (one, two) = (GroupId(1), GroupId(2));
    let snapshot_index = {
        let wal = SharedWal::create(fs.clone(), "/wal", IDENTITY, WalOptions::default()).expect("log");
        let host = Host::start(HostConfig::with_workers(1)).expect("host");
        let network = MemNetwork::default();
        let mut handles = Vec::new();
        for group in [one, two] {
            let store = wal.create_group(group, Membership::new([ME])).expect("group");
            let (transport, inbound) = network.join_group(ME, group).expect("joined");
            let (machine, _) = Log::new(&Gate::open());
            handles.push(host.add_group(
                group,
                config(EVERY, Execution::OneThread),
                store,
                transport,
                inbound,
                machine,
            ));
        }
        let handle = handles.remove(0).expect("added");
        let mut events = handle.events();
        propose_applied(&handle, 1, 0..EVERY).await;
        let index = snapshot_taken(&mut events).await;
        host.shutdown().await;
        index
    };

    let wal = SharedWal::open(fs.clone(), "/wal", IDENTITY, WalOptions::default()).expect("reopen");
    let host = Host::start(HostConfig::with_workers(1)).expect("host");
    let network = MemNetwork::default();
    let restore = Gate::closed();
    let mut handles = Vec::new();
    let mut views = Vec::new();
    for group in [one, two] {
        let store = wal.group(group).expect("group");
        let (transport, inbound) = network.join_group(ME, group).expect("joined");
        let (machine, view) = Log::new(&Gate::open());
        let machine =
            if group == one { Log { refuses_restore: refuse, ..machine.holding_restores(&restore) } } else { machine };
        let handle = host.add_group(group, config(0, Execution::OneThread), store, transport, inbound, machine);
        handles.push(handle.expect("added"));
        views.push(view);
    }
    let mut events = handles[0].events();
    eventually("group 1's restore is held in its state machine", || async {
        restore.entered.load(Ordering::SeqCst) == 1
    })
    .await;
    // A stale read needs no index: it waits for the state machine all the same (and is not
    // served over a failed restore).
    // Polled once, it is queued for the core; the status round after it hands it to the
    // state machine (after what the store's commit index covers, if anything, and before the
    // proposals below).
    let mut stale = Box::pin(handles[0].read(raft_net::ReadConsistency::Stale, |log: &Log| log.applied.len()));
    assert!(tokio::time::timeout(std::time::Duration::ZERO, &mut stale).await.is_err(), "not served yet");
    status(&handles[0]).await;
    // Group 1 commits new commands (not applied: the state machine is away, restoring).
    eventually("group 1 leads", || async { status(&handles[0]).await.role == raft_core::Role::Leader }).await;
    let mut answers = tokio::task::JoinSet::new();
    if refuse {
        for number in 100..103 {
            let handle = handles[0].clone();
            answers.spawn(async move { handle.propose(command(1, number)).await.map_or(0, |_| 1) });
        }
    } else {
        propose_all(&handles[0], 1, 100..103, &mut answers);
    }
    let all = Index(snapshot_index.0 + 3);
    eventually("group 1 commits while restoring", || async { commit(&handles[0]).await >= all }).await;
    assert!(status(&handles[0]).await.applied < snapshot_index, "nothing applied before the restore ends");
    // Group 2, on the same (only) worker, commits and applies.
    propose_applied(&handles[1], 2, EVERY..EVERY + 20).await;
    assert_eq!(restore.entered.load(Ordering::SeqCst), 1, "still held");
    assert_eq!(handles[0].snapshot_job_waits(), 0, "the worker never waited for the restore");

    restore.release();
    if refuse {
        let mut applied = 0;
        while let Some(answer) = answers.join_next().await {
            applied += answer.expect("a proposal's task");
        }
        assert_eq!(applied, 0, "nothing applied over a failed restore");
        let read = stale.await;
        assert!(read.is_err(), "no read served from a failed restore: {read:?}");
        eventually("group 1 stops", || async { handles[0].stop_reason().is_some() }).await;
        let reason = handles[0].stop_reason().expect("stopped");
        assert!(matches!(reason, raft_net::StopReason::RestoreFailed(_)), "the state machine's reason: {reason:?}");
        assert!(views[0].lock().expect("not poisoned").is_empty(), "its state machine applied nothing");
        propose_applied(&handles[1], 2, 200..205).await;
        assert!(handles[1].stop_reason().is_none());
        host.shutdown().await;
        return;
    }
    while let Some(answer) = answers.join_next().await {
        answer.expect("a proposal's task");
    }
    let read = stale.await.expect("served");
    // The snapshot holds every command up to its index (the leader's first entry is index 1).
    let in_snapshot = snapshot_index.0 as usize - 1;
    assert!(read >= in_snapshot, "served after the restore: {read} commands, {in_snapshot} in the snapshot");
    let restored = within("the restore's event", async {
        loop {
            if let NodeEvent::SnapshotRestored { index } = events.recv().await.expect("events") {
                return index;
            }
        }
    });
    assert_eq!(restored.await, snapshot_index);
    let seen = views[0].lock().expect("not poisoned").clone();
    assert_eq!(seen[..EVERY as usize], expected(1, EVERY)[..EVERY as usize], "the snapshot first");
    same_commands(seen, expected(1, EVERY));
    assert!(handles.iter().all(|handle| handle.stop_reason().is_none()));
    host.shutdown().await;
}

/// A snapshot from the leader reaches a follower whose state machine is being restored from
/// its own snapshot, off the worker (held inside `restore`): the install would replace the
/// file being read, so the worker waits for the restore first (`snapshot_job_waits` counts the
/// wait, and only then does the gate open). The follower then restores the leader's snapshot
/// and has every committed command, in order. (Without the wait, the install removes the file
/// under the held restore, whose second pass then fails and stops the follower.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_from_the_leader_waits_for_a_restore_under_way() {
    raft_testkit::init_tracing(); // RUST_LOG shows the crates' logs (for failing tests).
    let held: Arc<Mutex<BTreeMap<NodeId, Arc<Gate>>>> = Arc::default();
    let made = Arc::clone(&held);
    let builder = snapshotting_cluster();
    let start = builder.start(move |id| {
        let (machine, _) = Log::new(&Gate::open());
        match made.lock().expect("not poisoned").get(&id) {
            Some(gate) => machine.holding_restores(gate),
            None => machine,
        }
    });
    let mut cluster = start.await.expect("the cluster starts");
    let leader = settled_leader(&cluster.running()).await;
    let (ids, handles) = (cluster.ids(), cluster.handles());
    let at_leader = ids.iter().position(|id| *id == leader).expect("the leader runs");
    let follower = ids[(at_leader + 1) % ids.len()];
    let others: Vec<usize> = (0..ids.len()).filter(|at| ids[*at] != follower).collect();
    let (handles, ids): (Vec<_>, Vec<_>) = others.iter().map(|at| (handles[*at].clone(), ids[*at])).unzip();
    let at_leader = ids.iter().position(|id| *id == leader).expect("the leader runs");
    let on_follower = cluster.member(follower).expect("runs").handle.clone();

    // The follower takes a snapshot of its own, then stops.
    let mut follower_events = on_follower.events();
    let mut proposed = 0;
    while proposed < EVERY {
        propose(&handles, &ids, at_leader, command(1, proposed)).await;
        proposed += 1;
    }
    snapshot_taken(&mut follower_events).await;
    let follower_last = status(&on_follower).await.last_index;
    cluster.stop(follower).await.expect("the follower runs");
    // The leader compacts past the follower's last entry and the margin kept below it.
    compact_past(&handles, &ids, at_leader, &mut proposed, follower_last).await;

    // Restarted, the follower restores its own snapshot (held), and is sent the leader's.
    let gate = Gate::closed();
    held.lock().expect("not poisoned").insert(follower, Arc::clone(&gate));
    let member = cluster.restart(follower).await.expect("the follower restarts");
    let (on_follower, view) = (member.handle.clone(), Arc::clone(&member.view));
    let mut follower_events = on_follower.events();
    eventually("the follower's own restore is held", || async { gate.entered.load(Ordering::SeqCst) == 1 }).await;
    eventually("the install waits for the restore", || async {
        assert!(on_follower.stop_reason().is_none(), "the follower stopped: {:?}", on_follower.stop_reason());
        on_follower.snapshot_job_waits() == 1
    })
    .await;
    gate.release();
    let expected: Vec<Bytes> = (0..proposed).map(|number| command(1, number)).collect();
    eventually("the follower has every committed command", || async {
        view.lock().expect("not poisoned").len() == expected.len()
    })
    .await;
    assert_eq!(*view.lock().expect("not poisoned"), expected, "in order, from the leader's snapshot and log");
    assert!(on_follower.stop_reason().is_none(), "{:?}", on_follower.stop_reason());
    let mut restored = Vec::new();
    while let Ok(event) = follower_events.try_recv() {
        match event {
            NodeEvent::SnapshotRestored { index } => restored.push(index),
            NodeEvent::Stopped(reason) => panic!("the follower stopped: {reason:?}"),
            _ => {}
        }
    }
    assert!(restored.len() >= 2 && restored[0] <= follower_last, "its own, then the leader's: {restored:?}");
    assert!(restored[1..].iter().all(|index| index.0 > follower_last.0 + 10), "{restored:?}");
    cluster.shutdown().await;
}

/// A `DiskStorage` at "/disk" on `fs` whose single node applied commands `0..EVERY` of group 1
/// and took a snapshot (compacting its log below it); returns the snapshot's index.
async fn disk_with_snapshot(fs: &SimFs, config: raft_net::NodeConfig) -> Index {
    let store = DiskStorage::create(fs.clone(), "/disk", IDENTITY, Membership::new([ME]), DiskOptions::default())
        .expect("store");
    let network = MemNetwork::default();
    let (transport, inbound) = network.join(ME).expect("join");
    let (machine, _) = Log::new(&Gate::open());
    let handle = raft_net::start(config, store, transport, inbound, machine).expect("start");
    let mut events = handle.events();
    propose_applied(&handle, 1, 0..EVERY).await;
    let index = snapshot_taken(&mut events).await;
    handle.shutdown().await;
    index
}

/// A shutdown during a restore off the worker calls it off: the state machine, held inside
/// `restore` when the worker comes to wait for it (`snapshot_job_waits`, counted once the job is
/// called off), finds its first read failed once the gate opens, so the restore ends there
/// instead of reading the whole snapshot. The group stops with the shutdown's reason, nothing
/// restored or applied; restarted, it restores the same snapshot whole. Under
/// `Execution::Threads` (the apply thread runs the job) and `OneThread` (the state machine moves
/// to a thread of its own). Without the call-off, the restore runs to its end and the check
/// that nothing was restored fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_calls_off_a_restore_under_way() {
    for execution in [Execution::Threads, Execution::OneThread] {
        let fs = SimFs::new(29);
        let start = |gate: &Arc<Gate>| {
            let store = DiskStorage::open(fs.clone(), "/disk", IDENTITY, DiskOptions::default()).expect("reopen");
            let network = MemNetwork::default();
            let (transport, inbound) = network.join(ME).expect("join");
            let (machine, view) = Log::new(&Gate::open());
            let machine = machine.holding_restores(gate);
            let handle = raft_net::start(config(0, execution), store, transport, inbound, machine).expect("start");
            (handle, view)
        };
        let snapshot_index = disk_with_snapshot(&fs, config(EVERY, execution)).await;

        let gate = Gate::closed();
        let (handle, view) = start(&gate);
        eventually("the restore is held in the state machine", || async { gate.entered.load(Ordering::SeqCst) == 1 })
            .await;
        assert_eq!(handle.snapshot_job_waits(), 0, "the worker does not wait for the restore");
        let stopping = handle.clone();
        let shutdown = tokio::spawn(async move { stopping.shutdown().await });
        eventually("the stop waits for the restore, called off", || async { handle.snapshot_job_waits() == 1 }).await;
        gate.release();
        within("the shutdown", shutdown).await.expect("the shutdown's task");
        let reason = handle.stop_reason();
        assert!(matches!(reason, Some(raft_net::StopReason::Shutdown)), "stopped as asked: {reason:?} ({execution:?})");
        assert!(view.lock().expect("not poisoned").is_empty(), "the restore ended at its first read ({execution:?})");

        // The log was compacted below the snapshot: its first commands come from it alone.
        let store = DiskStorage::open(fs.clone(), "/disk", IDENTITY, DiskOptions::default()).expect("reopen");
        assert_eq!(store.snapshot().expect("snapshot").index, snapshot_index);
        assert!(store.first_index().expect("first") > Index(2), "compacted");
        drop(store);
        let (handle, view) = start(&Gate::open());
        eventually("restarted, every command is back", || async {
            view.lock().expect("not poisoned").len() as u64 == EVERY
        })
        .await;
        let seen = view.lock().expect("not poisoned").clone();
        assert_eq!(seen, (0..EVERY).map(|number| command(1, number)).collect::<Vec<_>>(), "the snapshot, then the log");
        handle.shutdown().await;
    }
}

/// A shutdown asked for while the worker waits for a restore (more committed entries wait for
/// the state machine than the bound allows, so the worker cannot take the shutdown until the
/// restore ends) still calls the restore off: the handle's request does, not only the core's
/// stop. The state machine, released, finds its first read failed; the group stops with
/// `Shutdown`, having applied nothing; restarted, it has the snapshot's commands and the large
/// ones committed meanwhile, in order. (With only the core's stop calling it off, the restore
/// runs to its end and the check that nothing was restored fails.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_calls_off_a_restore_the_worker_waits_for() {
    let fs = SimFs::new(30);
    let mut config = bounded(config(EVERY, Execution::OneThread));
    disk_with_snapshot(&fs, config.clone()).await;

    let gate = Gate::closed();
    let store = DiskStorage::open(fs.clone(), "/disk", IDENTITY, DiskOptions::default()).expect("reopen");
    let network = MemNetwork::default();
    let (transport, inbound) = network.join(ME).expect("join");
    let (machine, view) = Log::new(&Gate::open());
    config.snapshot_every_entries = 0;
    let handle =
        raft_net::start(config.clone(), store, transport, inbound, machine.holding_restores(&gate)).expect("start");
    eventually("the restore is held in the state machine", || async { gate.entered.load(Ordering::SeqCst) == 1 }).await;
    eventually("the node leads its group", || async { status(&handle).await.role == raft_core::Role::Leader }).await;
    // Large commands commit, waiting for the state machine; the fourth takes what waits past
    // the bound, and the worker waits for the restore. (The log ends at EVERY + 1; the new
    // leader's first entry is EVERY + 2.)
    let mut answers = tokio::task::JoinSet::new();
    for number in 0..4 {
        let proposer = handle.clone();
        answers.spawn(async move { proposer.propose(large(number)).await });
        if number == 3 {
            break;
        }
        let index = Index(EVERY + 3 + number);
        eventually("a large command commits", || async { commit(&handle).await >= index }).await;
        assert_eq!(handle.snapshot_job_waits(), 0, "below the bound the worker does not wait");
    }
    eventually("past the bound, the worker waits for the restore", || async { handle.snapshot_job_waits() == 1 }).await;
    // Polled once, the shutdown is asked for (the handle marks the group stopping at once); it
    // cannot end while the worker waits.
    let mut shutdown = Box::pin(handle.shutdown());
    assert!(tokio::time::timeout(std::time::Duration::ZERO, &mut shutdown).await.is_err(), "not done yet");
    gate.release();
    within("the shutdown", shutdown).await;
    let reason = handle.stop_reason();
    assert!(matches!(reason, Some(raft_net::StopReason::Shutdown)), "stopped as asked: {reason:?}");
    assert!(view.lock().expect("not poisoned").is_empty(), "the restore ended at its first read");
    let mut committed = 0;
    while let Some(answer) = answers.join_next().await {
        assert!(answer.expect("a proposal's task").is_err(), "nothing applied over the called off restore");
        committed += 1;
    }

    let store = DiskStorage::open(fs.clone(), "/disk", IDENTITY, DiskOptions::default()).expect("reopen");
    let (transport, inbound) = MemNetwork::default().join(ME).expect("join");
    let (machine, view) = Log::new(&Gate::open());
    let handle = raft_net::start(config, store, transport, inbound, machine).expect("restart");
    eventually("restarted, the snapshot's commands are back", || async {
        view.lock().expect("not poisoned").len() >= EVERY as usize
    })
    .await;
    let seen = view.lock().expect("not poisoned").clone();
    assert_eq!(seen[..EVERY as usize], expected(1, EVERY)[..EVERY as usize], "the snapshot first");
    assert!(
        seen[EVERY as usize..].iter().all(|command| command.starts_with(b"large")),
        "then large ones ({committed} proposed)"
    );
    handle.shutdown().await;
}
