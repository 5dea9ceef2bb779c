//! Linearizable reads: ReadIndex on the leader, follower reads, lease reads, and the pitfalls
//! that broke them elsewhere (docs/pitfalls.md #23-25).

mod common;

use common::{Cluster, Fate, between, cluster_tuned, deliver_with, tick_with};
use raft_core::{
    ConfChange, Index, Message, MessageBody, NodeId, Options, OptionsError, ReadError, ReadMode, ReadState, Role,
};

/// The reads a node handed out since the last call, in order.
fn reads_of(c: &mut Cluster, id: u64) -> Vec<ReadState> {
    std::mem::take(c.reads.get_mut(&NodeId(id)).expect("known node"))
}

fn ok(id: u64, index: u64) -> ReadState {
    ReadState { id, result: Ok(Index(index)) }
}

fn is_heartbeat_answer(m: &Message) -> bool {
    matches!(m.body, MessageBody::HeartbeatResponse { .. })
}

/// A three-node cluster led by node 1, its no-op committed everywhere.
fn led_by_1() -> Cluster {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.ticks(1);
    assert_eq!(c.node(1).commit_index(), Index(1));
    c
}

#[test]
fn read_index_on_the_leader_completes_after_a_quorum_answers_a_heartbeat_round() {
    let mut c = led_by_1();
    reads_of(&mut c, 1);
    c.node_mut(1).read(7, ReadMode::ReadIndex).expect("the leader takes reads");
    c.process(NodeId(1));
    assert_eq!(reads_of(&mut c, 1), vec![], "not before a round is answered");
    let round = c
        .in_flight
        .iter()
        .find_map(|m| match m.body {
            MessageBody::Heartbeat { round, .. } => Some(round),
            _ => None,
        })
        .expect("a heartbeat round goes out at once");
    assert!(round > 0);
    c.deliver_all();
    assert_eq!(reads_of(&mut c, 1), vec![ok(7, 1)]);
}

/// docs/pitfalls.md #23 (etcd#7331): a new leader's commit index may be stale until an entry of its own
/// term commits; a read waits for that, then reads at least the no-op's index.
#[test]
fn pitfall_23_a_new_leader_serves_no_read_before_its_term_commits() {
    let mut c = led_by_1();
    c.crash(1);
    // A new leader is elected; acknowledgements of its no-op (index 2) are held back.
    let hold_acks =
        |m: &Message| if matches!(m.body, MessageBody::AppendResponse(_)) { Fate::Hold } else { Fate::Deliver };
    let mut held = Vec::new();
    let leader = loop {
        held.extend(tick_with(&mut c, hold_acks));
        if let Some(leader) = c.leader() {
            break leader;
        }
    };
    assert_eq!(c.node(leader).commit_index(), Index(1), "the no-op of the new term is not committed");
    c.node_mut(leader).read(1, ReadMode::ReadIndex).expect("taken");
    for _ in 0..3 {
        held.extend(tick_with(&mut c, hold_acks));
    }
    assert_eq!(reads_of(&mut c, leader), vec![], "heartbeat answers alone do not serve it");
    for m in held {
        c.in_flight.push_back(m);
    }
    c.deliver_all();
    assert_eq!(reads_of(&mut c, leader), vec![ok(1, 2)], "served at the no-op's index once it commits");
}

/// docs/pitfalls.md #24 (etcd#20418): answers are matched by the leader's round numbers. An answer to
/// a round sent before the read arrived (delayed here) must not confirm it, even if the caller
/// reuses an id.
#[test]
fn pitfall_24_a_delayed_answer_to_an_earlier_round_does_not_confirm_a_read() {
    let mut c = led_by_1();
    reads_of(&mut c, 1);
    c.node_mut(1).read(5, ReadMode::ReadIndex).expect("taken");
    let earlier = deliver_with(&mut c, |m| if is_heartbeat_answer(m) { Fate::Hold } else { Fate::Deliver });
    assert_eq!(earlier.len(), 2, "both followers answered the first read's round");
    // The same caller id again: a second read, needing a later round.
    c.node_mut(1).read(5, ReadMode::ReadIndex).expect("taken");
    let later = deliver_with(&mut c, |m| if is_heartbeat_answer(m) { Fate::Hold } else { Fate::Deliver });
    for m in earlier {
        c.in_flight.push_back(m);
    }
    c.deliver_all();
    assert_eq!(reads_of(&mut c, 1), vec![ok(5, 1)], "the earlier round confirms only the first read");
    for m in later {
        c.in_flight.push_back(m);
    }
    c.deliver_all();
    assert_eq!(reads_of(&mut c, 1), vec![ok(5, 1)], "the later round confirms the second");
}

/// A leader cut off from the majority never confirms a read; when check-quorum deposes it the
/// read fails with a typed error (the caller retries elsewhere).
#[test]
fn a_partitioned_leader_never_serves_a_read_and_fails_it_when_deposed() {
    let mut c = led_by_1();
    reads_of(&mut c, 1);
    c.isolate(1);
    c.node_mut(1).read(9, ReadMode::ReadIndex).expect("taken");
    for _ in 0..25 {
        c.tick_all();
        if c.node(1).role() != Role::Leader {
            break;
        }
    }
    assert_ne!(c.node(1).role(), Role::Leader, "check-quorum deposed it");
    c.process(NodeId(1));
    assert_eq!(reads_of(&mut c, 1), vec![ReadState { id: 9, result: Err(ReadError::LeaderChanged) }]);
}

#[test]
fn a_follower_read_asks_the_leader_and_serves_once_applied() {
    let mut c = led_by_1();
    c.propose(1, b"x").expect("leader accepts");
    reads_of(&mut c, 3);
    // Node 3 misses the next write for now.
    c.cut_one_way(1, 3);
    c.propose(1, b"y").expect("leader accepts");
    assert_eq!(c.node(1).commit_index(), Index(3));
    c.heal();
    c.node_mut(3).read(11, ReadMode::ReadIndex).expect("a follower with a leader takes reads");
    let hold_appends_to_3 = |m: &Message| {
        if between(m, 1, 3) && matches!(m.body, MessageBody::AppendEntries { .. }) { Fate::Hold } else { Fate::Deliver }
    };
    let held = deliver_with(&mut c, hold_appends_to_3);
    assert!(c.delivered.iter().any(|m| between(m, 1, 3) && matches!(m.body, MessageBody::ReadIndexResponse { index: Some(Index(3)), .. })));
    assert_eq!(reads_of(&mut c, 3), vec![], "index 3 is not applied on node 3 yet");
    for m in held {
        c.in_flight.push_back(m);
    }
    c.ticks(2);
    assert_eq!(reads_of(&mut c, 3), vec![ok(11, 3)]);
    assert_eq!(c.applied_data(3).len(), 2, "both writes applied before the read is served");
}

#[test]
fn a_follower_without_a_leader_refuses_reads_and_limits_hold() {
    let mut c = cluster_tuned(3, |b| b.reads_pending_max(2));
    assert_eq!(c.node_mut(2).read(1, ReadMode::ReadIndex), Err(ReadError::NoLeader));
    assert_eq!(c.node_mut(2).read(1, ReadMode::Lease), Err(ReadError::LeaseNotEnabled));
    c.elect(1);
    c.ticks(1);
    c.isolate(1);
    c.node_mut(1).read(1, ReadMode::ReadIndex).expect("first");
    c.node_mut(1).read(2, ReadMode::ReadIndex).expect("second");
    assert_eq!(c.node_mut(1).read(3, ReadMode::ReadIndex), Err(ReadError::TooManyPending));
}

/// docs/pitfalls.md #25 (raft-rs#140): lease reads without check-quorum are refused when building the
/// options; a drift bound that leaves no lease is refused too.
#[test]
fn pitfall_25_lease_reads_require_check_quorum_and_a_lease_left_after_drift() {
    let no_check_quorum = Options::builder().check_quorum(false).lease_reads(true).build();
    assert_eq!(no_check_quorum, Err(OptionsError::LeaseWithoutCheckQuorum));
    let no_lease = Options::builder().election_ticks(10).clock_drift_max_ticks(10).lease_reads(true).build();
    assert_eq!(no_lease, Err(OptionsError::DriftNotBelowElection { drift_ticks: 10, election_ticks: 10 }));
}

fn lease_cluster() -> Cluster {
    let mut c = cluster_tuned(3, |b| b.lease_reads(true).clock_drift_max_ticks(2));
    c.elect(1);
    c.ticks(2);
    c
}

/// While the quorum answered recently, a lease read is served at once, with no round trip.
#[test]
fn a_lease_read_is_served_without_a_round_trip_while_the_lease_holds() {
    let mut c = lease_cluster();
    reads_of(&mut c, 1);
    c.node_mut(1).read(3, ReadMode::Lease).expect("taken");
    c.process(NodeId(1));
    assert_eq!(reads_of(&mut c, 1), vec![ok(3, 1)]);
    assert!(!c.in_flight.iter().any(|m| matches!(m.body, MessageBody::Heartbeat { .. })), "no round was needed");
}

/// Once the quorum has not answered for `election_ticks - clock_drift_max_ticks` ticks, the lease
/// is over: a lease read waits for a round like a ReadIndex read (and never completes while the
/// leader is cut off), although the leader has not stepped down yet.
#[test]
fn an_expired_lease_serves_nothing_at_once() {
    let mut c = lease_cluster();
    reads_of(&mut c, 1);
    c.isolate(1);
    c.ticks(8);
    assert_eq!(c.node(1).role(), Role::Leader, "check-quorum has not fired yet");
    c.node_mut(1).read(4, ReadMode::Lease).expect("taken");
    c.deliver_all();
    assert_eq!(reads_of(&mut c, 1), vec![]);
}

/// A follower's lease read is answered by the leader from its lease.
#[test]
fn a_follower_lease_read_is_answered_from_the_leader_lease() {
    let mut c = lease_cluster();
    reads_of(&mut c, 2);
    c.node_mut(2).read(8, ReadMode::Lease).expect("taken");
    let heartbeats_before = c.delivered.iter().filter(|m| matches!(m.body, MessageBody::Heartbeat { .. })).count();
    c.deliver_all();
    let heartbeats_after = c.delivered.iter().filter(|m| matches!(m.body, MessageBody::Heartbeat { .. })).count();
    assert_eq!(reads_of(&mut c, 2), vec![ok(8, 1)]);
    assert_eq!(heartbeats_before, heartbeats_after, "the leader needed no round");
}

fn forwarded_request(m: &Message) -> Option<u64> {
    match m.body {
        MessageBody::ReadIndexRequest { request, .. } => Some(request),
        _ => None,
    }
}

/// Found by simulator seed 4698: a follower forwarded a read, crashed and restarted, forwarded a
/// new read, and took the leader's delayed answer to its previous incarnation's request (same
/// request number) for the new one: a stale read. Request numbers now start at a random point
/// per incarnation (drawn from the seed, which must differ per incarnation).
#[test]
fn a_restarted_follower_ignores_answers_meant_for_its_previous_incarnation() {
    let mut c = led_by_1();
    c.propose(1, b"x").expect("leader accepts");
    c.node_mut(3).read(1, ReadMode::ReadIndex).expect("taken");
    let old = deliver_with(&mut c, |m| if forwarded_request(m).is_some() { Fate::Hold } else { Fate::Deliver });
    let old_request = old.iter().find_map(forwarded_request).expect("node 3 forwarded its read");
    c.crash(3);
    c.restart_with_seed(3, 0xfeed);
    c.ticks(2);
    reads_of(&mut c, 3);
    c.node_mut(3).read(2, ReadMode::ReadIndex).expect("taken");
    let new = deliver_with(&mut c, |m| if forwarded_request(m).is_some() { Fate::Hold } else { Fate::Deliver });
    let new_request = new.iter().find_map(forwarded_request).expect("node 3 forwarded its new read");
    assert_ne!(old_request, new_request, "a new incarnation numbers its requests afresh");
    // The old request reaches the leader late, and its answer reaches the new incarnation.
    c.in_flight.extend(old);
    c.deliver_all();
    assert_eq!(reads_of(&mut c, 3), vec![], "the answer to the old request completes nothing");
    c.in_flight.extend(new);
    c.deliver_all();
    assert_eq!(reads_of(&mut c, 3), vec![ok(2, 2)]);
}

/// A forwarded read whose request is lost fails after an election timeout instead of waiting
/// for a leader change that may never come.
#[test]
fn a_forwarded_read_that_gets_no_answer_times_out() {
    let mut c = led_by_1();
    reads_of(&mut c, 2);
    c.node_mut(2).read(4, ReadMode::ReadIndex).expect("taken");
    deliver_with(&mut c, |m| if forwarded_request(m).is_some() { Fate::Drop } else { Fate::Deliver });
    for _ in 0..9 {
        c.tick_all();
    }
    assert_eq!(reads_of(&mut c, 2), vec![], "not before an election timeout");
    c.tick_all();
    assert_eq!(reads_of(&mut c, 2), vec![ReadState { id: 4, result: Err(ReadError::TimedOut) }]);
}

/// docs/pitfalls.md #22 (raft-rs#345): reads waiting for a quorum are counted again when the
/// membership changes. A leader of {1, 2} removes node 2, and a read arrives while the joint
/// membership still needs node 2's answer; node 2 takes the appends but never answers the
/// heartbeat round. Once the leader's membership is {1} alone (the leave entry, appended as the
/// joint entry commits), the leader is the quorum and the read completes. Without the count
/// after the change it would wait for an answer that no member will ever send: node 2 is gone.
#[test]
fn pitfall_22_a_pending_read_completes_when_the_membership_change_shrinks_its_quorum() {
    let mut c = Cluster::new(2);
    c.elect(1);
    c.ticks(1);
    reads_of(&mut c, 1);
    c.node_mut(1).change_membership(&[ConfChange::Remove(NodeId(2))]).expect("the change is taken");
    c.node_mut(1).read(3, ReadMode::ReadIndex).expect("the leader takes reads");
    let no_heartbeats = |m: &Message| match m.body {
        MessageBody::Heartbeat { .. } | MessageBody::HeartbeatResponse { .. } => Fate::Drop,
        _ => Fate::Deliver,
    };
    deliver_with(&mut c, no_heartbeats);
    assert_eq!(c.node(1).membership().voters_incoming, [NodeId(1)].into(), "node 2 is out");
    assert!(!c.node(1).membership().is_joint());
    c.isolate(2);
    for _ in 0..30 {
        tick_with(&mut c, |_| Fate::Deliver);
    }
    let reads = reads_of(&mut c, 1);
    assert_eq!(reads.len(), 1, "the read completed once, without node 2: {reads:?}");
    assert!(reads[0].id == 3 && reads[0].result.is_ok(), "{reads:?}");
}
