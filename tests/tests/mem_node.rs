//! The node API over the in-memory network and store: fast cases of proposal outcomes, back
//! pressure, shutdown and start-up errors.

use std::collections::BTreeMap;

use bytes::Bytes;
use raft_core::{Index, NodeId, Options};
use raft_net::{
    ConfigError, ConfigLimit, MemNetwork, NodeEvent, NodeStartError, ProposeError, StopReason, start as start_node,
};
use raft_storage::MemStorage;
use raft_tests::{Kv, Member, PATIENCE, config, eventually, membership, set, settled_leader, start_mem};
use tokio::sync::broadcast;
use tokio::time::timeout;

const VOTERS: [u64; 3] = [1, 2, 3];

fn mem_cluster(network: &MemNetwork, proposals_pending_max: usize) -> Vec<Member> {
    VOTERS
        .iter()
        .map(|id| {
            let mut config = config(NodeId(*id), &BTreeMap::new());
            config.proposals_pending_max = proposals_pending_max;
            start_mem(network, config, MemStorage::new(membership(&VOTERS)))
        })
        .collect()
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
    network: &MemNetwork,
    members: &[Member],
) -> (usize, tokio::task::JoinHandle<Result<Index, ProposeError>>, Index) {
    let all: Vec<&Member> = members.iter().collect();
    let leader = settled_leader(&all).await;
    let position = members.iter().position(|m| m.id == leader).expect("the leader is a member");
    let handle = members[position].handle.clone();
    let before = handle.status().await.expect("runs").last_index;
    network.isolate(leader);
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
    let network = MemNetwork::default();
    let members = mem_cluster(&network, 1);
    let mut events: Vec<_> = members.iter().map(|member| member.handle.events()).collect();
    let (position, stranded, before) = strand_a_proposal(&network, &members).await;
    let old = &members[position];
    let old_term = old.handle.status().await.expect("runs").term;
    let events = &mut events[position];

    // The one permit is held by the stranded proposal.
    assert!(matches!(old.handle.try_propose(set("more", "value")).await, Err(ProposeError::TooBusy)));
    wait_for(events, |event| matches!(event, NodeEvent::PeerUnreachable(_))).await;

    // The others elect a leader, which puts its own entry at the stranded index.
    let others: Vec<&Member> = members.iter().filter(|m| m.id != old.id).collect();
    let new_leader = settled_leader(&others).await;
    let new = others.iter().find(|m| m.id == new_leader).expect("the new leader");
    let index = new.handle.propose(set("fresh", "value")).await.expect("the majority commits");
    assert!(index > before.next());
    network.heal(old.id);

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
    let network = MemNetwork::default();
    let members = mem_cluster(&network, 16);
    let (position, stranded, _) = strand_a_proposal(&network, &members).await;
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
    let member = start_mem(&network, config(NodeId(1), &BTreeMap::new()), MemStorage::new(membership(&[1])));
    settled_leader(&[&member]).await;
    let mut events = member.handle.events();
    drop(member);
    let stopped = wait_for(&mut events, |event| matches!(event, NodeEvent::Stopped(_))).await;
    assert!(matches!(stopped, NodeEvent::Stopped(StopReason::Shutdown)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_too_large_for_a_message_is_refused() {
    let network = MemNetwork::default();
    let mut config = config(NodeId(1), &BTreeMap::new());
    config.options =
        Options::builder().election_ticks(10).message_bytes_max(1024).rng_seed(1).build().expect("valid options");
    let member = start_mem(&network, config, MemStorage::new(membership(&[1])));
    settled_leader(&[&member]).await;
    let outcome = member.handle.propose(Bytes::from(vec![b'x'; 2000])).await;
    assert!(matches!(outcome, Err(ProposeError::TooLarge { limit: 1024, .. })), "{outcome:?}");
    assert!(member.handle.propose(set("small", "value")).await.expect("fits") > Index(0));
    member.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_refuses_bad_configurations_and_foreign_transports() {
    let network = MemNetwork::default();
    let (transport, inbound) = network.join(NodeId(2)).expect("join");
    let storage = MemStorage::new(membership(&[1, 2]));
    let started = start_node(config(NodeId(1), &BTreeMap::new()), storage, transport, inbound, Kv::default());
    assert!(matches!(started, Err(NodeStartError::TransportIdMismatch { config: NodeId(1), transport: NodeId(2) })));

    let (transport, inbound) = network.join(NodeId(1)).expect("join");
    let mut bad = config(NodeId(1), &BTreeMap::new());
    bad.input_queue_items_max = 0;
    let started = start_node(bad, MemStorage::new(membership(&[1])), transport, inbound, Kv::default());
    assert!(matches!(started, Err(NodeStartError::Config(ConfigError::Zero(ConfigLimit::InputQueueItemsMax)))));
}

#[test]
fn start_needs_a_tokio_runtime() {
    let network = MemNetwork::default();
    let (transport, inbound) = network.join(NodeId(1)).expect("join");
    let storage = MemStorage::new(membership(&[1]));
    let started = start_node(config(NodeId(1), &BTreeMap::new()), storage, transport, inbound, Kv::default());
    assert!(matches!(started, Err(NodeStartError::NoRuntime)));
}
