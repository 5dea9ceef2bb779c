//! Quiescence (option `quiesce`): an idle group goes quiet and sends nothing; inputs and
//! messages wake it as documented on `Raft::is_quiet`; the node-level liveness report
//! (`Raft::peer_down`) lets followers of a dead quiet leader elect a new one; and the lease,
//! stickiness and check-quorum stay what they were (docs/multi-raft.md, "Idle groups:
//! quiescence"; the rules in docs/design.md).

mod common;

use bytes::Bytes;
use common::{Cluster, Fate, cluster_tuned, deliver_with, message, tick_with};
use raft_core::{Ignored, MessageBody, NodeId, ReadMode, Role, StepError, Term};

const ELECTION_TICKS: u64 = 10;

/// Three voters with quiescence on; node 1 leads and a command is committed.
fn awake_cluster(tune: impl Fn(raft_core::OptionsBuilder) -> raft_core::OptionsBuilder) -> Cluster {
    let mut c = cluster_tuned(3, |b| tune(b.quiesce(true)));
    c.elect(1);
    c.propose(1, b"x").expect("leader takes proposals");
    c
}

/// Ticks until every node is quiet (at most a few heartbeat intervals).
fn settle_quiet(c: &mut Cluster) {
    for _ in 0..5 {
        if c.nodes.iter().all(|(id, n)| c.down.contains(id) || n.is_quiet()) {
            return;
        }
        c.tick_all();
    }
    let states: Vec<_> = c.nodes.values().map(|n| (n.id(), n.role(), n.is_quiet())).collect();
    panic!("the group did not go quiet: {states:?}");
}

fn quiet_cluster() -> Cluster {
    let mut c = awake_cluster(|b| b);
    settle_quiet(&mut c);
    c
}

fn all_quiet(c: &Cluster) -> bool {
    c.nodes.values().all(|n| n.is_quiet())
}

/// The bodies of the messages `id` sent on one tick (delivered, so answers flow).
fn bodies_sent_by(c: &Cluster, id: u64, since: usize) -> Vec<MessageBody> {
    c.delivered[since..].iter().filter(|m| m.from == NodeId(id)).map(|m| m.body.clone()).collect()
}

fn is_quiesce(body: &MessageBody) -> bool {
    matches!(body, MessageBody::Quiesce { .. })
}

#[test]
fn an_idle_group_goes_quiet_and_exchanges_nothing_for_many_election_timeouts() {
    let mut c = quiet_cluster();
    let (term, delivered) = (c.node(1).term(), c.delivered.len());
    for id in 1..=3 {
        assert_eq!(c.node(id).ticks_until_due(), u64::MAX, "node {id}: quiet timers are never due");
    }
    c.ticks(100 * ELECTION_TICKS as usize);
    assert_eq!(c.delivered.len(), delivered, "a quiet group sent messages: {:?}", &c.delivered[delivered..]);
    assert!(all_quiet(&c));
    assert_eq!((c.leader(), c.node(1).term()), (Some(1), term), "no election while quiet");
}

#[test]
fn with_quiesce_off_an_idle_group_keeps_heartbeating() {
    let mut c = cluster_tuned(3, |b| b);
    c.elect(1);
    let delivered = c.delivered.len();
    c.ticks(10);
    assert!(!c.nodes.values().any(|n| n.is_quiet()));
    assert!(c.delivered.len() >= delivered + 40, "heartbeats and answers every tick");
    assert!(!c.delivered.iter().any(|m| is_quiesce(&m.body)), "no Quiesce without the option");
}

#[test]
fn a_lone_voter_goes_quiet_and_a_proposal_wakes_it() {
    let mut c = cluster_tuned(1, |b| b.quiesce(true));
    c.elect(1);
    c.tick_all();
    assert!(c.node(1).is_quiet());
    c.propose(1, b"y").expect("leader");
    assert!(!c.node(1).is_quiet(), "a proposal gives it work");
    assert_eq!(c.applied_data(1), vec![Bytes::from_static(b"y")]);
    c.tick_all();
    assert!(c.node(1).is_quiet());
}

#[test]
fn a_proposal_wakes_a_quiet_group_commits_and_the_group_goes_quiet_again() {
    let mut c = quiet_cluster();
    let index = c.propose(1, b"after quiet").expect("a quiet leader takes proposals");
    for id in 1..=3 {
        assert_eq!(c.node(id).commit_index(), index, "node {id} has the commit");
        assert!(!c.node(id).is_quiet(), "node {id} woke: its leader sent it new entries");
    }
    assert_eq!(c.applied_data(3).last(), Some(&Bytes::from_static(b"after quiet")));
    settle_quiet(&mut c);
}

/// Without the node-level report nobody notices a dead quiet leader; with it, the followers
/// campaign and elect a new leader.
#[test]
fn a_quiet_follower_told_its_leader_is_down_campaigns_and_a_new_leader_is_elected() {
    let mut c = quiet_cluster();
    let term = c.node(2).term();
    c.crash(1);
    c.ticks(10 * ELECTION_TICKS as usize);
    assert!(c.node(2).is_quiet() && c.node(3).is_quiet(), "a crash alone wakes nobody");
    c.node_mut(2).peer_down(NodeId(1));
    c.node_mut(3).peer_down(NodeId(1));
    assert!(!c.node(2).is_quiet() && !c.node(3).is_quiet());
    assert!(c.node(2).ticks_until_due() < 2 * ELECTION_TICKS, "a new election timeout runs");
    let leader = c.tick_until_leader(3 * ELECTION_TICKS as usize).expect("a new leader");
    assert!(leader == 2 || leader == 3);
    assert!(c.node(leader).term() > term);
    c.propose(leader, b"new leader").expect("it leads");
    assert_eq!(c.applied_data(2).last(), Some(&Bytes::from_static(b"new leader")));
}

/// A quiet leader whose replica is about to stop on a node that runs on (its pings go on, so
/// no report will come) is woken first (`Raft::wake`): its heartbeat wakes the followers,
/// which elect another leader once it is gone. Without the wake they sleep for good.
#[test]
fn a_quiet_leader_woken_before_it_stops_wakes_its_followers_which_elect_another() {
    let mut c = quiet_cluster();
    let term = c.node(2).term();
    c.node_mut(1).wake();
    assert!(!c.node(1).is_quiet(), "the leader woke");
    c.process(NodeId(1));
    c.deliver_all();
    assert!(!c.node(2).is_quiet() && !c.node(3).is_quiet(), "its heartbeat woke the followers");
    c.crash(1);
    let leader = c.tick_until_leader(4 * ELECTION_TICKS as usize).expect("a new leader");
    assert!(leader == 2 || leader == 3);
    assert!(c.node(leader).term() > term);
    // A replica that is not quiet is left as it was.
    let mut c = awake_cluster(|options| options);
    let due = c.node(2).ticks_until_due();
    c.node_mut(2).wake();
    assert_eq!(c.node(2).ticks_until_due(), due);
    // Without the wake, the stopped leader's followers stay quiet.
    let mut c = quiet_cluster();
    c.crash(1);
    c.ticks(10 * ELECTION_TICKS as usize);
    assert!(c.node(2).is_quiet() && c.node(3).is_quiet());
}

/// The report promises nothing about the leader's lease: a follower told within an election
/// timeout of hearing from its leader still waits for its stickiness to lapse by the clock.
#[test]
fn peer_down_does_not_shorten_a_followers_stickiness() {
    let mut c = quiet_cluster();
    c.crash(1);
    c.node_mut(2).peer_down(NodeId(1));
    let due = c.node(2).ticks_until_due();
    assert!(due >= ELECTION_TICKS, "the campaign waits for the timeout and the lapse: {due}");
    for _ in 1..ELECTION_TICKS {
        c.node_mut(2).tick();
        assert_eq!(c.node(2).role(), Role::Follower);
    }
    // Nor does it free the follower to vote for another before that.
    let mut c = quiet_cluster();
    c.node_mut(2).peer_down(NodeId(1));
    let (term, last) = (c.node(2).term(), c.node(2).last_index());
    let body = MessageBody::VoteRequest { pre_vote: false, last_log_index: last, last_log_term: term, transfer: false };
    let refused = c.node_mut(2).step(message(3, 2, term.next().0, body));
    assert!(matches!(refused, Err(StepError::Ignored(Ignored::LeaderSticky { .. }))), "{refused:?}");
}

/// The leader goes quiet only once every follower answered its `Quiesce` round: a follower
/// that missed it would otherwise time out and campaign against a leader that sends nothing.
#[test]
fn a_leader_goes_quiet_only_once_every_follower_answered_its_quiesce_round() {
    let mut c = awake_cluster(|b| b);
    let lose_quiesce_to_3 = |m: &raft_core::Message| {
        if is_quiesce(&m.body) && m.to == NodeId(3) { Fate::Drop } else { Fate::Deliver }
    };
    tick_with(&mut c, lose_quiesce_to_3);
    assert!(c.node(2).is_quiet() && !c.node(3).is_quiet());
    assert!(!c.node(1).is_quiet(), "node 3 did not answer");
    c.tick_all();
    assert!(all_quiet(&c), "the next round reached node 3");
}

/// An answer to a `Quiesce` round sent before new work does not quiet the leader once the
/// work is done: the followers woke on that work, and only a new round may quiet them again.
#[test]
fn an_answer_to_a_quiesce_round_overtaken_by_work_does_not_quiet_the_leader() {
    let mut c = awake_cluster(|b| b);
    let hold_answer_of_3 = |m: &raft_core::Message| {
        let answer = matches!(m.body, MessageBody::HeartbeatResponse { .. }) && m.from == NodeId(3);
        if answer { Fate::Hold } else { Fate::Deliver }
    };
    let held = tick_with(&mut c, hold_answer_of_3);
    assert_eq!(held.len(), 1);
    assert!(!c.node(1).is_quiet());
    c.propose(1, b"work").expect("leader");
    assert!(!c.node(2).is_quiet() && !c.node(3).is_quiet(), "the work woke the followers");
    c.in_flight.extend(held);
    c.deliver_all();
    assert!(!c.node(1).is_quiet(), "quiet on an old round while its followers are awake");
    settle_quiet(&mut c);
}

#[test]
fn peer_down_is_harmless_when_not_quiet_or_about_another_peer() {
    let mut c = awake_cluster(|b| b);
    let (status, due) = (c.node(2).status(), c.node(2).ticks_until_due());
    c.node_mut(2).peer_down(NodeId(1));
    c.node_mut(1).peer_down(NodeId(2));
    assert_eq!((c.node(2).status(), c.node(2).ticks_until_due()), (status, due));
    assert!(!c.node_mut(2).has_output());
    settle_quiet(&mut c);
    c.node_mut(2).peer_down(NodeId(3));
    assert!(c.node(2).is_quiet(), "node 3 is not node 2's leader");
}

#[test]
fn a_quiet_leader_told_a_follower_is_down_wakes_and_stays_awake_while_it_does_not_answer() {
    let mut c = quiet_cluster();
    c.crash(3);
    c.node_mut(1).peer_down(NodeId(3));
    assert!(!c.node(1).is_quiet());
    c.ticks(3 * ELECTION_TICKS as usize);
    assert!(!c.node(1).is_quiet(), "a follower that does not answer keeps the leader awake");
    assert_eq!(c.leader(), Some(1), "check-quorum holds with node 2");
    assert!(c.node(2).is_quiet(), "node 2 obeys each Quiesce round");
}

/// Each condition of idleness, alone, keeps the leader sending heartbeats instead of
/// `Quiesce` rounds.
#[test]
fn a_leader_with_a_lagging_follower_does_not_quiesce() {
    let mut c = awake_cluster(|b| b);
    c.cut_one_way(1, 3);
    c.propose(1, b"3 misses this").expect("leader");
    for _ in 0..3 {
        let since = c.delivered.len();
        c.tick_all();
        let sent = bodies_sent_by(&c, 1, since);
        assert!(!sent.iter().any(is_quiesce), "quiesce with a lagging follower: {sent:?}");
    }
    assert!(!c.node(1).is_quiet());
}

#[test]
fn a_leader_whose_own_copy_is_not_durable_does_not_quiesce() {
    let mut c = awake_cluster(|b| b);
    c.auto_persist.insert(NodeId(1), false);
    let index = c.propose(1, b"slow disk").expect("leader");
    assert_eq!(c.node(1).commit_index(), index, "the followers' copies commit it");
    for _ in 0..3 {
        let since = c.delivered.len();
        c.tick_all();
        assert!(!bodies_sent_by(&c, 1, since).iter().any(is_quiesce));
    }
    let term = c.node(1).term();
    c.node_mut(1).on_persisted(index, term);
    settle_quiet(&mut c);
}

#[test]
fn a_leader_with_a_read_pending_does_not_quiesce() {
    let mut c = awake_cluster(|b| b);
    c.node_mut(1).read(7, ReadMode::ReadIndex).expect("leader takes reads");
    // Its confirmations are lost: the read stays pending.
    let drop_answers = |m: &raft_core::Message| {
        if matches!(m.body, MessageBody::HeartbeatResponse { .. }) { Fate::Drop } else { Fate::Deliver }
    };
    deliver_with(&mut c, drop_answers);
    for _ in 0..3 {
        let since = c.delivered.len();
        tick_with(&mut c, drop_answers);
        assert!(!bodies_sent_by(&c, 1, since).iter().any(is_quiesce), "quiesce with a read pending");
    }
    c.tick_all();
    assert_eq!(c.reads[&NodeId(1)].last().map(|r| (r.id, r.result.is_ok())), Some((7, true)));
    settle_quiet(&mut c);
}

#[test]
fn a_leader_transferring_leadership_does_not_quiesce() {
    let mut c = awake_cluster(|b| b);
    // The TimeoutNow is lost: the transfer stays in progress until it is abandoned.
    c.cut_one_way(1, 3);
    c.node_mut(1).transfer_leadership(NodeId(3)).expect("3 votes");
    c.deliver_all();
    c.heal();
    for _ in 0..ELECTION_TICKS - 1 {
        let since = c.delivered.len();
        c.tick_all();
        assert!(!bodies_sent_by(&c, 1, since).iter().any(is_quiesce), "quiesce during a transfer");
    }
    assert_eq!(c.node(1).status().transfer_target, Some(NodeId(3)));
    c.ticks(2);
    assert_eq!(c.node(1).status().transfer_target, None, "abandoned after an election timeout");
    settle_quiet(&mut c);
}

/// A quiet leader's lease runs out by the clock: woken by a lease read after the lease ended, it
/// confirms the read with a heartbeat round; within the lease it serves it at once and stays
/// quiet.
#[test]
fn a_lease_read_on_a_leader_woken_after_quiet_does_not_use_a_stale_lease() {
    let mut c = awake_cluster(|b| b.lease_reads(true).clock_drift_max_ticks(2));
    settle_quiet(&mut c);
    c.node_mut(1).read(1, ReadMode::Lease).expect("lease reads on");
    let output = c.node_mut(1).take_output().expect("memory");
    assert_eq!(output.reads.first().map(|r| r.id), Some(1), "within its lease: served at once");
    assert!(c.node(1).is_quiet(), "a read its lease serves gives it no work");
    // The lease lapses by the clock while quiet.
    c.ticks(ELECTION_TICKS as usize);
    c.node_mut(1).read(2, ReadMode::Lease).expect("lease reads on");
    assert!(!c.node(1).is_quiet(), "a read the lease cannot serve wakes the leader");
    let output = c.node_mut(1).take_output().expect("memory");
    assert!(output.reads.is_empty(), "a stale lease served the read: {:?}", output.reads);
    assert!(output.messages.iter().any(|m| matches!(m.body, MessageBody::Heartbeat { .. })), "a round confirms it");
    c.in_flight.extend(output.messages);
    c.deliver_all();
    assert_eq!(c.reads[&NodeId(1)].last().map(|r| (r.id, r.result.is_ok())), Some((2, true)));
}

/// Stickiness is judged by the clock, quiet or not: a quiet follower refuses a vote within an
/// election timeout of hearing its leader and grants it once that lapsed, still quiet.
#[test]
fn a_quiet_follower_grants_its_vote_only_after_stickiness_lapsed_by_the_clock() {
    let mut c = quiet_cluster();
    let node = c.node_mut(2);
    let (term, last) = (node.term(), node.last_index());
    let last_term = node.storage().hard_state().term;
    let request = |term: Term| {
        let body = MessageBody::VoteRequest {
            pre_vote: false,
            last_log_index: last,
            last_log_term: last_term,
            transfer: false,
        };
        message(3, 2, term.next().0, body)
    };
    let refused = node.step(request(term));
    assert!(matches!(refused, Err(StepError::Ignored(Ignored::LeaderSticky { .. }))), "{refused:?}");
    assert!(node.is_quiet() && node.term() == term);
    node.advance_clock(ELECTION_TICKS);
    assert!(node.is_quiet(), "time alone wakes nobody");
    node.step(request(term)).expect("stickiness lapsed");
    let output = node.take_output().expect("memory");
    let granted = output
        .messages_after_persist
        .iter()
        .any(|m| m.body == MessageBody::VoteResponse { pre_vote: false, granted: true });
    assert!(granted, "the vote was granted: {output:?}");
    assert_eq!(node.term(), term.next());
}

/// A restarted node learns of the quiet group's leader: the node-level liveness reports its
/// new incarnation, the leader wakes and heartbeats, and the group goes quiet again with the
/// same leader in the same term.
#[test]
fn a_restarted_node_joins_a_quiet_group() {
    let mut c = quiet_cluster();
    let term = c.node(1).term();
    c.crash(3);
    c.restart_with_seed(3, 99);
    assert!(!c.node(3).is_quiet() && c.node(3).leader().is_none());
    c.node_mut(1).peer_down(NodeId(3));
    c.tick_all();
    assert_eq!(c.node(3).leader(), Some(NodeId(1)), "the woken leader's heartbeat reached it");
    settle_quiet(&mut c);
    assert_eq!((c.leader(), c.node(3).term()), (Some(1), term), "no election");
    let index = c.propose(1, b"after the restart").expect("leader");
    assert_eq!(c.node(3).commit_index(), index);
}

/// Without the report, the restarted node's campaign reaches the quiet leader, which wakes.
#[test]
fn a_vote_request_from_a_member_wakes_a_quiet_leader() {
    let mut c = quiet_cluster();
    let (term, last) = (c.node(1).term(), c.node(1).last_index());
    let body = MessageBody::VoteRequest { pre_vote: true, last_log_index: last, last_log_term: term, transfer: false };
    let _ = c.node_mut(1).step(message(3, 1, term.next().0, body));
    assert!(!c.node(1).is_quiet(), "someone campaigns: the leader heartbeats again");
    assert_eq!(c.node(1).role(), Role::Leader);
}

/// A removed node (pre-vote off) raises the term of a quiet learner whose stickiness lapsed; its
/// vote requests also reach the quiet leader, which wakes, so that its heartbeats meet the
/// learner's later term and a leader of that term brings the learner back (simulator seed 7398:
/// the learner was left at a later term with no leader, and the group never converged).
#[test]
fn a_removed_nodes_vote_request_wakes_a_quiet_leader() {
    let mut c = quiet_cluster();
    let (term, last) = (c.node(1).term(), c.node(1).last_index());
    let body = MessageBody::VoteRequest { pre_vote: false, last_log_index: last, last_log_term: term, transfer: false };
    let _ = c.node_mut(1).step(message(9, 1, term.0 + 5, body));
    assert!(!c.node(1).is_quiet(), "a stranger campaigns: the leader heartbeats again");
}

/// Check-quorum after waking needs a quorum heard from since waking: a quiet leader cut off
/// from its group and woken by a proposal steps down one election timeout later, not two.
#[test]
fn a_quiet_leader_cut_off_and_woken_steps_down_after_one_election_timeout() {
    let mut c = quiet_cluster();
    c.isolate(1);
    c.node_mut(1).propose(Bytes::from_static(b"lost")).expect("a quiet leader takes proposals");
    assert!(!c.node(1).is_quiet());
    c.deliver_all();
    c.tick_node(1, ELECTION_TICKS as usize);
    assert_eq!(c.node(1).role(), Role::Follower, "the answers it had before sleeping counted");
}

/// A `Quiesce` that does not cover the follower's log (a stale one, overtaken by later appends)
/// does not quiet it, and its answer does not count toward the leader's round.
#[test]
fn a_stale_quiesce_does_not_quiet_a_follower_that_holds_more() {
    let mut c = awake_cluster(|b| b);
    let (term, last) = (c.node(2).term(), c.node(2).last_index());
    let stale = MessageBody::Quiesce { commit: raft_core::Index(last.0 - 1), round: 1000 };
    c.node_mut(2).step(message(1, 2, term.0, stale)).expect("from the leader");
    assert!(!c.node(2).is_quiet());
    let output = c.node_mut(2).take_output().expect("memory");
    let answers: Vec<_> = output.messages_after_persist.iter().map(|m| m.body.clone()).collect();
    assert_eq!(answers, vec![MessageBody::HeartbeatResponse { round: 0 }], "an answer that does not count");
    let fresh = MessageBody::Quiesce { commit: last, round: 1001 };
    c.node_mut(2).step(message(1, 2, term.0, fresh)).expect("from the leader");
    assert!(c.node(2).is_quiet());
}

/// A quiet follower wakes only on evidence that its leader is awake: stale duplicates of what
/// the leader sent before it went quiet leave it quiet; a heartbeat of a later round wakes it.
#[test]
fn only_a_leader_message_newer_than_the_quiesce_wakes_a_quiet_follower() {
    let mut c = quiet_cluster();
    let stale: Vec<_> = c
        .delivered
        .iter()
        .filter(|m| {
            m.to == NodeId(2) && matches!(m.body, MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. })
        })
        .cloned()
        .collect();
    assert!(!stale.is_empty());
    // And a heartbeat of a round before the `Quiesce` (overtaken by it on the network).
    let quiesce_round = c
        .delivered
        .iter()
        .rev()
        .find_map(|m| match m.body {
            MessageBody::Quiesce { round, .. } if m.to == NodeId(2) => Some(round),
            _ => None,
        })
        .expect("node 2 was quieted");
    let (term, commit) = (c.node(2).term().0, c.node(2).commit_index());
    let overtaken = message(1, 2, term, MessageBody::Heartbeat { commit, round: quiesce_round - 1 });
    for m in stale.into_iter().chain([overtaken]) {
        let _ = c.node_mut(2).step(m);
        assert!(c.node(2).is_quiet(), "a stale duplicate woke the follower");
    }
    // A later `Quiesce` (round r + 4) then a stale one (r + 2) overtaken by it: the follower
    // keeps the later round, so a heartbeat sent between the two (r + 3) does not wake it.
    let last = c.node(2).last_index();
    for round in [quiesce_round + 4, quiesce_round + 2] {
        c.node_mut(2).step(message(1, 2, term, MessageBody::Quiesce { commit: last, round })).expect("leader");
    }
    let between = MessageBody::Heartbeat { commit, round: quiesce_round + 3 };
    c.node_mut(2).step(message(1, 2, term, between)).expect("leader");
    assert!(c.node(2).is_quiet(), "a heartbeat older than the latest Quiesce woke the follower");
    let fresh = MessageBody::Heartbeat { commit, round: quiesce_round + 5 };
    c.node_mut(2).step(message(1, 2, term, fresh)).expect("leader");
    assert!(!c.node(2).is_quiet(), "a later round shows an awake leader");
    assert!(c.node(2).ticks_until_due() < 2 * ELECTION_TICKS);
}

/// A follower's read on a quiet group: forwarded to the leader, which wakes; the follower stays
/// quiet and its read's expiry stays due.
#[test]
fn a_follower_read_wakes_the_leader_not_the_follower() {
    let mut c = quiet_cluster();
    c.node_mut(2).read(5, ReadMode::ReadIndex).expect("a leader to forward to");
    assert!(c.node(2).is_quiet());
    assert_eq!(c.node(2).ticks_until_due(), ELECTION_TICKS, "the forwarded read expires in an election timeout");
    let output = c.node_mut(2).take_output().expect("memory");
    c.in_flight.extend(output.messages.into_iter().chain(output.messages_after_persist));
    assert!(c.deliver_one(), "the forwarded read reaches the leader");
    assert!(!c.node(1).is_quiet(), "the leader wakes to confirm it");
    c.deliver_all();
    assert_eq!(c.reads[&NodeId(2)].last().map(|r| (r.id, r.result.is_ok())), Some((5, true)));
    settle_quiet(&mut c);
}
