//! The node API over the in-memory network and store: fast cases of proposal outcomes, back
//! pressure, shutdown and start-up errors.

use std::time::Duration;

use bytes::Bytes;
use raft_core::{Index, NodeId, Options};
use raft_net::{
    ConfigError, ConfigLimit, Execution, MemNetwork, NodeEvent, NodeStartError, ProposeError, ReadConsistency,
    StateMachine, StopReason, start as start_node,
};
use raft_storage::MemStorage;
use raft_testkit::{
    Cluster, ClusterBuilder, Kv, Member, PATIENCE, config, eventually, membership, set, settled_leader,
};
use tokio::sync::broadcast;
use tokio::time::timeout;

/// Three nodes over the in-memory network and stores, each with `proposals_pending_max`.
async fn mem_cluster(proposals_pending_max: usize) -> Cluster<Kv> {
    raft_testkit::init_tracing(); // RUST_LOG shows the crates' logs (for failing tests).
    let builder = ClusterBuilder::new(3).configure(move |config| config.proposals_pending_max = proposals_pending_max);
    builder.start(|_| Kv::default()).await.expect("the cluster starts")
}

/// Waits for an event that `wanted` accepts; panics after `PATIENCE`.
async fn wait_for(events: &mut broadcast::Receiver<NodeEvent>, wanted: impl Fn(&NodeEvent) -> bool) -> NodeEvent {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(event) if wanted(&event) => return event,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => panic!("the event channel closed"),
            }
        }
    };
    timeout(PATIENCE, wait).await.expect("the event in time")
}

/// Isolates the settled leader and has it append a proposal it cannot commit. Returns the
/// leader's position, the proposal's task, and the leader's log end before the proposal.
async fn strand_a_proposal(
    cluster: &Cluster<Kv>,
) -> (usize, tokio::task::JoinHandle<Result<Index, ProposeError>>, Index) {
    let members = cluster.members();
    let leader = settled_leader(&cluster.running()).await;
    let position = members.iter().position(|m| m.id == leader).expect("the leader is a member");
    let handle = members[position].handle.clone();
    let before = handle.status().await.expect("runs").last_index;
    cluster.network().isolate(leader);
    let stranded = tokio::spawn({
        let handle = handle.clone();
        async move { handle.propose(set("stranded", "value")).await }
    });
    eventually("the isolated leader appends the proposal", || async {
        handle.status().await.is_ok_and(|status| status.last_index > before)
    })
    .await;
    (position, stranded, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_proposal_fails_with_leadership_lost_and_a_full_queue_with_too_busy() {
    let cluster = mem_cluster(1).await;
    let members = cluster.members();
    let mut events: Vec<_> = members.iter().map(|member| member.handle.events()).collect();
    let (position, stranded, before) = strand_a_proposal(&cluster).await;
    let old = &members[position];
    let old_term = old.handle.status().await.expect("runs").term;
    let events = &mut events[position];

    // The one permit is held by the stranded proposal.
    assert!(matches!(old.handle.try_propose(set("more", "value")).await, Err(ProposeError::TooBusy)));
    wait_for(events, |event| matches!(event, NodeEvent::PeerUnreachable(_))).await;

    // The others elect a leader, which puts its own entry at the stranded index.
    let others: Vec<&Member<Kv>> = members.iter().filter(|m| m.id != old.id).collect();
    let new_leader = settled_leader(&others).await;
    let new = others.iter().find(|m| m.id == new_leader).expect("the new leader");
    let index = new.handle.propose(set("fresh", "value")).await.expect("the majority commits");
    assert!(index > before.next());
    cluster.network().heal(old.id);

    let outcome = timeout(PATIENCE, stranded).await.expect("an answer in time").expect("the task ran");
    match outcome {
        Err(ProposeError::LeadershipLost { index, term }) => assert_eq!((index, term), (before.next(), old_term)),
        other => panic!("expected LeadershipLost, got {other:?}"),
    }
    eventually("the old leader catches up", || async { old.view.applied() >= index }).await;
    assert!(!old.view.map().contains_key("stranded".as_bytes()));
    for member in members {
        member.handle.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_pending_proposals_and_refuses_new_ones() {
    let cluster = mem_cluster(16).await;
    let members = cluster.members();
    let (position, stranded, _) = strand_a_proposal(&cluster).await;
    let node = &members[position].handle;
    let mut events = node.events();
    node.shutdown().await;

    let outcome = timeout(PATIENCE, stranded).await.expect("an answer in time").expect("the task ran");
    assert!(matches!(outcome, Err(ProposeError::ShuttingDown)), "{outcome:?}");
    assert!(matches!(node.propose(set("late", "value")).await, Err(ProposeError::ShuttingDown)));
    assert!(matches!(node.try_propose(set("late", "value")).await, Err(ProposeError::ShuttingDown)));
    assert!(matches!(node.status().await, Err(StopReason::Shutdown)));
    let stopped = wait_for(&mut events, |event| matches!(event, NodeEvent::Stopped(_))).await;
    assert!(matches!(stopped, NodeEvent::Stopped(StopReason::Shutdown)));
    node.shutdown().await; // Again: returns at once.
    for member in members {
        member.handle.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_stops_the_node() {
    let network = MemNetwork::default();
    let mut config = config(NodeId(1));
    // The core thread must see its closed queue while it polls, not only once it sleeps (it
    // would poll for an hour here, as it would for as long as peers' messages kept coming).
    config.idle_poll = Duration::from_secs(3600);
    let member = Member::start(config, MemStorage::new(membership(&[1])), &network, Kv::default()).expect("starts");
    settled_leader(&[&member]).await;
    let mut events = member.handle.events();
    drop(member);
    let stopped = wait_for(&mut events, |event| matches!(event, NodeEvent::Stopped(_))).await;
    assert!(matches!(stopped, NodeEvent::Stopped(StopReason::Shutdown)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_too_large_for_a_message_is_refused() {
    let network = MemNetwork::default();
    let mut config = config(NodeId(1));
    config.options =
        Options::builder().election_ticks(10).message_bytes_max(1024).rng_seed(1).build().expect("valid options");
    let member = Member::start(config, MemStorage::new(membership(&[1])), &network, Kv::default()).expect("starts");
    settled_leader(&[&member]).await;
    let outcome = member.handle.propose(Bytes::from(vec![b'x'; 2000])).await;
    assert!(
        matches!(
            outcome,
            Err(ProposeError::Refused { reason: raft_core::ProposeError::TooLarge { limit: 1024, .. }, .. })
        ),
        "{outcome:?}"
    );
    assert!(member.handle.propose(set("small", "value")).await.expect("fits") > Index(0));
    member.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_refuses_bad_configurations_and_foreign_transports() {
    let network = MemNetwork::default();
    let (transport, inbound) = network.join(NodeId(2)).expect("join");
    let storage = MemStorage::new(membership(&[1, 2]));
    let started = start_node(config(NodeId(1)), storage, transport, inbound, Kv::default());
    assert!(matches!(started, Err(NodeStartError::TransportIdMismatch { config: NodeId(1), transport: NodeId(2) })));

    let (transport, inbound) = network.join(NodeId(1)).expect("join");
    let mut bad = config(NodeId(1));
    bad.input_queue_items_max = 0;
    let started = start_node(bad, MemStorage::new(membership(&[1])), transport, inbound, Kv::default());
    assert!(matches!(started, Err(NodeStartError::Config(ConfigError::Zero(ConfigLimit::InputQueueItemsMax)))));
}

#[test]
fn start_needs_a_tokio_runtime() {
    let network = MemNetwork::default();
    let (transport, inbound) = network.join(NodeId(1)).expect("join");
    let storage = MemStorage::new(membership(&[1]));
    let started = start_node(config(NodeId(1)), storage, transport, inbound, Kv::default());
    assert!(matches!(started, Err(NodeStartError::NoRuntime)));
}

/// `Execution::Tasks`: a whole cluster runs on one single-threaded runtime, the state machine
/// inline in each core task (queries run on the test's own thread), with a snapshot policy on.
#[tokio::test(flavor = "current_thread")]
async fn task_execution_runs_a_cluster_on_one_thread() {
    tokio::task::LocalSet::new().run_until(cluster_applying_inline(Execution::Tasks)).await;
}

/// `Execution::OneThread`: no apply thread; each node's core thread applies, takes snapshots and
/// runs the read queries itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_thread_execution_applies_snapshots_and_reads_on_the_core_thread() {
    cluster_applying_inline(Execution::OneThread).await;
}

/// A cluster whose nodes apply inline (`Tasks` or `OneThread`), with a snapshot policy on: the
/// proposals apply everywhere and each node's query runs where `execution` says it must.
async fn cluster_applying_inline(execution: Execution) {
    let builder = ClusterBuilder::new(3).configure(move |config| {
        config.execution = execution;
        config.snapshot_every_entries = 8;
    });
    let cluster = builder.start(|_| Kv::default()).await.expect("the cluster starts");
    let members = cluster.members();
    let (handles, ids) = (cluster.handles(), cluster.ids());
    let mut events: Vec<_> = handles.iter().map(|handle| handle.events()).collect();
    let mut last = Index(0);
    for i in 0..40 {
        last = raft_testkit::propose(&handles, &ids, i % 3, set(&format!("key{i}"), "value")).await;
    }
    raft_testkit::all_applied(&cluster.running(), last).await;
    let test_thread = std::thread::current().id();
    for member in members {
        let (thread, name, value) = member
            .handle
            .read(ReadConsistency::Linearizable, |kv: &Kv| {
                let thread = std::thread::current();
                (thread.id(), thread.name().map(str::to_owned), kv.0.map().get(&Bytes::from("key39")).cloned())
            })
            .await
            .expect("a linearizable read");
        match execution {
            Execution::Tasks => assert_eq!(thread, test_thread, "the query ran inline, on the runtime's one thread"),
            _ => assert_eq!(
                name,
                Some(format!("raft-core-{}-worker-0", member.id)),
                "the query ran on the node's worker thread"
            ),
        }
        assert_eq!(value, Some(Bytes::from("value")));
    }
    for (member, events) in members.iter().zip(&mut events) {
        let mut taken = false;
        while let Ok(event) = events.try_recv() {
            taken |= matches!(event, NodeEvent::SnapshotTaken { .. });
        }
        assert!(taken, "node {} took a snapshot by policy", member.id);
    }

    for member in members {
        member.handle.shutdown().await;
    }
}

/// A state machine that panics on the command `panic`.
struct Panicky;

impl StateMachine for Panicky {
    type Response = ();
    type RestoreError = std::convert::Infallible;

    fn apply(&mut self, _index: Index, command: &Bytes) {
        assert_ne!(command.as_ref(), b"panic", "the state machine panics, as asked");
    }

    fn snapshot(&self, _sink: &mut dyn std::io::Write) -> std::io::Result<()> {
        Ok(())
    }

    fn restore(&mut self, _reader: &mut dyn std::io::Read) -> Result<(), Self::RestoreError> {
        Ok(())
    }
}

/// Under `Execution::Tasks` a panic of the state machine stops the node with
/// `StateMachinePanicked` (not `CorePanicked`, although it unwinds through the core's task), and
/// the proposal is answered with that reason.
#[tokio::test(flavor = "current_thread")]
async fn task_execution_reports_a_state_machine_panic_as_such() {
    tokio::task::LocalSet::new().run_until(state_machine_panic(Execution::Tasks)).await;
}

/// The same under `Execution::OneThread`, where the panic unwinds through the core thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_thread_execution_reports_a_state_machine_panic_as_such() {
    state_machine_panic(Execution::OneThread).await;
}

async fn state_machine_panic(execution: Execution) {
    let network = MemNetwork::default();
    let mut config = config(NodeId(1));
    config.execution = execution;
    let (transport, inbound) = network.join(NodeId(1)).expect("join");
    let handle = start_node(config, MemStorage::new(membership(&[1])), transport, inbound, Panicky).expect("starts");
    let mut outcome = handle.propose(Bytes::from_static(b"fine")).await;
    while let Err(ProposeError::Refused { reason: raft_core::ProposeError::NotLeader { .. }, .. }) = outcome {
        tokio::time::sleep(raft_testkit::POLL).await;
        outcome = handle.propose(Bytes::from_static(b"fine")).await;
    }
    outcome.expect("an ordinary command applies");
    let outcome = handle.propose(Bytes::from_static(b"panic")).await;
    assert!(matches!(outcome, Err(ProposeError::Stopped(StopReason::StateMachinePanicked))), "{outcome:?}");
    assert!(matches!(handle.stop_reason(), Some(StopReason::StateMachinePanicked)));
}
