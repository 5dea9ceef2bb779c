//! Scenario tests for the rules of the Raft paper, sections 5.1 to 5.4 (terms, leader election,
//! log replication, safety). Each test is named after the rule it checks and asserts the exact
//! state it leads to (role, term, vote, log as (index, term) pairs, commit index, message bodies),
//! so that it fails when the rule is broken in the core.
//!
//! Most tests drive single nodes with hand-built messages through `Raft::step`; the whole-cluster
//! scenarios (Figures 7 and 8, retries, the election restriction) use the scripted network of
//! `common`.

mod common;

use std::collections::BTreeSet;

use bytes::Bytes;
use common::{Cluster, ids, node_with_log, noop};
use raft_core::{
    AppendResult, ConflictHint, Entry, HardState, Index, Malformed, Message, MessageBody, NodeId, Options,
    OptionsError, Output, ProposeError, Raft, Role, SoftState, StepError, Term,
};
use raft_storage::MemStorage;

type Node = Raft<MemStorage>;

// ------------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------------

/// Options of these tests: election 10 ticks, heartbeat 1, check-quorum off, seed = id.
fn opts(id: u64, pre_vote: bool) -> Options {
    common::options(NodeId(id), pre_vote, false)
}

/// Node `id` of an `n`-voter group (ids 1..=n) whose log holds no-ops of `terms`, at `term`.
fn node(id: u64, n: u64, terms: &[u64], term: u64, pre_vote: bool) -> Node {
    node_with_log(NodeId(id), &ids(n), terms, term, opts(id, pre_vote))
}

/// Takes a node's output and carries it out like a driver whose disk is instantly durable:
/// persists the hard state and entries, reports durability, and returns the output.
fn drive(node: &mut Node) -> Output {
    let output = node.take_output().expect("memory storage never fails");
    if let Some(hard_state) = output.hard_state {
        node.storage_mut().set_hard_state(hard_state);
    }
    node.storage_mut().append(&output.entries).expect("the core hands out appendable entries");
    if let Some(last) = output.entries.last() {
        node.on_persisted(last.index, last.term);
    }
    output
}

/// The node's log as (index, term) pairs. Only meaningful once everything is persisted.
fn log(node: &Node) -> Vec<(u64, u64)> {
    assert_eq!(node.status().stable_last_index, node.last_index(), "drive the node before reading its log");
    pairs(node.storage().all_entries())
}

fn pairs(entries: &[Entry]) -> Vec<(u64, u64)> {
    entries.iter().map(|e| (e.index.0, e.term.0)).collect()
}

fn noops(pairs: &[(u64, u64)]) -> Vec<Entry> {
    pairs.iter().map(|&(index, term)| noop(index, term)).collect()
}

fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message { from: NodeId(from), to: NodeId(to), term: Term(term), body }
}

fn vote_request(pre_vote: bool, last_log_index: u64, last_log_term: u64) -> MessageBody {
    MessageBody::VoteRequest {
        pre_vote,
        last_log_index: Index(last_log_index),
        last_log_term: Term(last_log_term),
        transfer: false,
    }
}

fn vote_response(pre_vote: bool, granted: bool) -> MessageBody {
    MessageBody::VoteResponse { pre_vote, granted }
}

fn append(prev_index: u64, prev_term: u64, entries: &[(u64, u64)], commit: u64) -> MessageBody {
    MessageBody::AppendEntries {
        prev_log_index: Index(prev_index),
        prev_log_term: Term(prev_term),
        entries: noops(entries),
        commit: Index(commit),
    }
}

fn success(match_index: u64) -> MessageBody {
    MessageBody::AppendResponse(AppendResult::Success { match_index: Index(match_index) })
}

fn reject(rejected: u64, hint_term: Option<u64>, hint_index: u64) -> MessageBody {
    MessageBody::AppendResponse(AppendResult::Reject {
        rejected_index: Index(rejected),
        hint: ConflictHint { term: hint_term.map(Term), index: Index(hint_index) },
    })
}

fn heartbeat(commit: u64) -> MessageBody {
    MessageBody::Heartbeat { commit: Index(commit), round: 0 }
}

fn hard(term: u64, vote: Option<u64>, commit: u64) -> HardState {
    HardState { term: Term(term), vote: vote.map(NodeId), commit: Index(commit) }
}

fn vote_of(node: &Node) -> Option<NodeId> {
    node.status().vote
}

/// Makes node 1 of an `n`-voter group (log `terms`, current term `term`, pre-vote off) win the
/// next term with the votes of nodes 2, 3, ...; returns it with its first output as leader.
fn elect_node1(n: u64, terms: &[u64], term: u64) -> (Node, Output) {
    elect_node1_with(n, terms, term, opts(1, false))
}

fn elect_node1_with(n: u64, terms: &[u64], term: u64, options: Options) -> (Node, Output) {
    let mut leader = node_with_log(NodeId(1), &ids(n), terms, term, options);
    leader.campaign();
    if leader.role() != Role::Leader {
        let _ = drive(&mut leader);
        let new_term = leader.term().0;
        for peer in 2..=n {
            leader.step(msg(peer, 1, new_term, vote_response(false, true))).expect("a vote for our election");
            if leader.role() == Role::Leader {
                break;
            }
        }
    }
    assert_eq!(leader.role(), Role::Leader);
    assert_eq!(leader.term(), Term(term + 1));
    let output = drive(&mut leader);
    (leader, output)
}

/// Node 1 of a 3-voter group with log [1, 1], in `role` at `term` (pre-vote on only for the
/// pre-candidate), with its outputs so far carried out.
fn node_in_role(role: Role, term: u64) -> Node {
    let mut n = match role {
        Role::Follower => node(1, 3, &[1, 1], term, false),
        Role::PreCandidate => {
            let mut n = node(1, 3, &[1, 1], term, true);
            n.campaign();
            n
        }
        Role::Candidate => {
            let mut n = node(1, 3, &[1, 1], term - 1, false);
            n.campaign();
            n
        }
        Role::Leader => elect_node1(3, &[1, 1], term - 1).0,
    };
    let _ = drive(&mut n);
    assert_eq!((n.role(), n.term()), (role, Term(term)), "test setup");
    n
}

/// Like `Cluster::deliver_all`, but drops (without delivering) every message for which `drop`
/// says so, judged against the cluster's state when the message reaches the head of the queue.
fn deliver_dropping(c: &mut Cluster, drop: impl Fn(&Cluster, &Message) -> bool) {
    for _ in 0..100_000 {
        c.process_all();
        let Some(head) = c.in_flight.front() else { return };
        if drop(c, head) {
            c.in_flight.pop_front();
            c.dropped += 1;
        } else {
            c.deliver_one();
        }
    }
    panic!("the network never went quiet");
}

/// The entries `id` applied in this incarnation, as (index, term) pairs.
fn applied_pairs(c: &Cluster, id: u64) -> Vec<(u64, u64)> {
    pairs(&c.applied[&NodeId(id)])
}

fn data(items: &[&'static [u8]]) -> Vec<Bytes> {
    items.iter().map(|d| Bytes::from_static(d)).collect()
}

// ------------------------------------------------------------------------------------------------
// §5.1 Terms
// ------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    VoteRequest,
    VoteResponse,
    Append,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
}

const KINDS: [Kind; 6] = [
    Kind::VoteRequest,
    Kind::VoteResponse,
    Kind::Append,
    Kind::AppendResponse,
    Kind::Heartbeat,
    Kind::HeartbeatResponse,
];

/// A message body of `kind` that is valid against the logs `node_in_role` builds.
fn body_of(kind: Kind) -> MessageBody {
    match kind {
        Kind::VoteRequest => vote_request(false, 3, 2), // at least as up to date as any test log
        Kind::VoteResponse => vote_response(false, false),
        Kind::Append => append(2, 1, &[], 0),
        Kind::AppendResponse => success(1),
        Kind::Heartbeat => heartbeat(0),
        Kind::HeartbeatResponse => MessageBody::HeartbeatResponse { round: 0 },
    }
}

/// §5.1: "If a server receives a request or response with a term higher than its own, it updates
/// its term and reverts to follower state". Checked for every message kind and every role.
#[test]
fn term_update_any_message_with_a_higher_term_makes_the_node_a_follower_of_that_term() {
    for role in [Role::Follower, Role::PreCandidate, Role::Candidate, Role::Leader] {
        for kind in KINDS {
            if role == Role::Leader && kind == Kind::VoteRequest {
                continue; // A leader holds its own lease; see the lease test below.
            }
            let case = format!("{role:?} receiving {kind:?} of term 5");
            let mut n = node_in_role(role, 2);
            let result = n.step(msg(2, 1, 5, body_of(kind)));
            if matches!(kind, Kind::VoteRequest | Kind::Append | Kind::Heartbeat) {
                assert_eq!(result, Ok(()), "{case}");
            }
            // (vote, leader, reply) expected after the step.
            let (vote, leader, reply) = match kind {
                Kind::VoteRequest => (Some(2), None, Some(vote_response(false, true))),
                Kind::Append => (None, Some(NodeId(2)), Some(success(2))),
                Kind::Heartbeat => (None, Some(NodeId(2)), Some(MessageBody::HeartbeatResponse { round: 0 })),
                Kind::VoteResponse | Kind::AppendResponse | Kind::HeartbeatResponse => (None, None, None),
            };
            assert_eq!(n.role(), Role::Follower, "{case}");
            assert_eq!(n.term(), Term(5), "{case}");
            assert_eq!(vote_of(&n), vote.map(NodeId), "{case}");
            assert_eq!(n.leader(), leader, "{case}");
            let out = drive(&mut n);
            assert_eq!(out.soft_state, Some(SoftState { role: Role::Follower, term: Term(5), leader }), "{case}");
            assert_eq!(out.hard_state, Some(hard(5, vote, 0)), "{case}");
            assert_eq!(out.messages, vec![], "{case}");
            let replies: Vec<Message> = reply.into_iter().map(|body| msg(1, 2, 5, body)).collect();
            assert_eq!(out.messages_after_persist, replies, "{case}");
            assert_eq!(n.propose(Bytes::from_static(b"x")), Err(ProposeError::NotLeader { leader }), "{case}");
        }
    }
}

/// The one exception to the term rule (thesis §4.2.3, leader stickiness): a node that heard
/// from a live leader within the election timeout ignores higher-term vote requests entirely.
#[test]
fn term_update_is_not_forced_by_a_vote_request_while_a_leader_lease_is_held() {
    let mut follower = node(1, 3, &[1, 1], 2, false);
    follower.step(msg(3, 1, 2, heartbeat(0))).expect("heartbeat of our term");
    let _ = drive(&mut follower);
    let err = follower.step(msg(2, 1, 5, vote_request(false, 9, 9)));
    assert_eq!(err, Err(StepError::Ignored(raft_core::Ignored::LeaderSticky { leader: Some(NodeId(3)) })));
    assert_eq!((follower.role(), follower.term(), vote_of(&follower)), (Role::Follower, Term(2), None));
    assert!(drive(&mut follower).is_empty());

    let mut leader = node_in_role(Role::Leader, 2);
    let err = leader.step(msg(2, 1, 5, vote_request(false, 9, 9)));
    assert_eq!(err, Err(StepError::Ignored(raft_core::Ignored::LeaderSticky { leader: Some(NodeId(1)) })));
    assert_eq!((leader.role(), leader.term()), (Role::Leader, Term(2)));
    assert!(drive(&mut leader).is_empty());
}

/// §5.1: "If a server receives a request with a stale term number, it rejects the request." The
/// message changes nothing; only a stale leader (append/heartbeat), candidate or pre-candidate is
/// answered, with our term, so that it learns it is stale.
#[test]
fn stale_term_messages_are_rejected_and_change_nothing() {
    let stale_bodies = [
        (vote_request(false, 9, 4), Some(vote_response(false, false))),
        (vote_request(true, 9, 4), Some(vote_response(true, false))),
        (vote_response(false, true), None),
        (vote_response(true, true), None),
        (append(2, 1, &[(3, 3)], 2), Some(MessageBody::HeartbeatResponse { round: 0 })),
        (success(3), None),
        (reject(2, None, 1), None),
        (heartbeat(2), Some(MessageBody::HeartbeatResponse { round: 0 })),
        (MessageBody::HeartbeatResponse { round: 0 }, None),
    ];
    for role in [Role::Follower, Role::Candidate, Role::Leader] {
        for (body, reply) in stale_bodies.iter().cloned() {
            let case = format!("{role:?} at term 5 receiving {body:?} of term 3");
            let mut n = node_in_role(role, 5);
            let (status, entries, timeout) = (n.status(), log(&n), n.randomized_election_ticks());
            let result = n.step(msg(2, 1, 3, body));
            assert_eq!(
                result,
                Err(StepError::Ignored(raft_core::Ignored::StaleTerm { message_term: Term(3), current_term: Term(5) })),
                "{case}"
            );
            assert_eq!(n.status(), status, "{case}");
            assert_eq!(n.randomized_election_ticks(), timeout, "{case}");
            let out = drive(&mut n);
            assert_eq!((out.soft_state, out.hard_state), (None, None), "{case}");
            assert!(out.entries.is_empty() && out.messages.is_empty() && out.committed.is_empty(), "{case}");
            let replies: Vec<Message> = reply.into_iter().map(|body| msg(1, 2, 5, body)).collect();
            assert_eq!(out.messages_after_persist, replies, "{case}");
            assert_eq!(log(&n), entries, "{case}");
        }
    }
}

/// §5.1: a stale leader learns the current term from the answer to its append or heartbeat and
/// steps down immediately.
#[test]
fn stale_term_leader_steps_down_when_answered_with_the_higher_term() {
    for kind in [Kind::Append, Kind::Heartbeat] {
        let (mut old_leader, out) = elect_node1(3, &[1, 1], 1); // leader of term 2
        let sent = if kind == Kind::Append {
            out.messages
        } else {
            old_leader.tick();
            drive(&mut old_leader).messages
        };
        let to_2 = sent.into_iter().find(|m| m.to == NodeId(2)).expect("a message for node 2");
        assert_eq!(to_2.term, Term(2));
        assert_eq!(kind == Kind::Append, matches!(to_2.body, MessageBody::AppendEntries { .. }), "{kind:?}");

        let mut newer = node(2, 3, &[1, 1], 4, false);
        let result = newer.step(to_2);
        assert_eq!(
            result,
            Err(StepError::Ignored(raft_core::Ignored::StaleTerm { message_term: Term(2), current_term: Term(4) }))
        );
        assert_eq!((newer.role(), newer.term(), newer.leader()), (Role::Follower, Term(4), None), "{kind:?}");
        let answer = drive(&mut newer);
        assert_eq!(
            answer.messages_after_persist,
            vec![msg(2, 1, 4, MessageBody::HeartbeatResponse { round: 0 })],
            "{kind:?}"
        );
        assert_eq!(log(&newer), vec![(1, 1), (2, 1)], "{kind:?}: the stale append was not applied");

        let _ = old_leader.step(answer.messages_after_persist[0].clone());
        assert_eq!(old_leader.role(), Role::Follower, "{kind:?}");
        assert_eq!((old_leader.term(), vote_of(&old_leader), old_leader.leader()), (Term(4), None, None));
        assert_eq!(drive(&mut old_leader).hard_state, Some(hard(4, None, 0)), "{kind:?}");
    }
}

// ------------------------------------------------------------------------------------------------
// §5.2 Leader election: timeouts
// ------------------------------------------------------------------------------------------------

/// §5.2: election timeouts are chosen randomly from a fixed interval, here
/// [election_ticks, 2*election_ticks), drawn from the seeded RNG and re-drawn on every reset.
#[test]
fn randomized_election_timeouts_cover_the_whole_interval_and_nothing_outside() {
    for election_ticks in [2u32, 10, 25] {
        let mut seen = BTreeSet::new();
        let mut sequences = BTreeSet::new();
        for seed in 0..64u64 {
            let options = Options::builder()
                .election_ticks(election_ticks)
                .heartbeat_ticks(1)
                .pre_vote(false)
                .rng_seed(seed)
                .build()
                .expect("valid options");
            let mut draws = Vec::new();
            for run in 0..2 {
                let mut n =
                    Raft::new(NodeId(1), options.clone(), common::storage_with_log(&ids(3), &[], hard(0, None, 0)))
                        .expect("memory storage");
                let mut this_run = Vec::new();
                for _ in 0..40 {
                    let ticks = n.randomized_election_ticks();
                    assert!(
                        (election_ticks..2 * election_ticks).contains(&ticks),
                        "seed {seed}: {ticks} outside [{election_ticks}, {})",
                        2 * election_ticks
                    );
                    this_run.push(ticks);
                    n.campaign(); // every campaign resets the timer and draws again
                    let _ = drive(&mut n);
                }
                if run == 0 {
                    draws = this_run;
                } else {
                    assert_eq!(this_run, draws, "seed {seed}: the draws must replay from the seed");
                }
            }
            let distinct: BTreeSet<u32> = draws.iter().copied().collect();
            assert!(distinct.len() > 1, "seed {seed}: the timeout is re-drawn on each reset, got {draws:?}");
            seen.extend(distinct);
            sequences.insert(draws);
        }
        assert_eq!(seen, (election_ticks..2 * election_ticks).collect(), "election_ticks {election_ticks}");
        assert_eq!(sequences.len(), 64, "different seeds give different timeouts");
    }
}

/// §5.2: "If a follower receives no communication over a period of time called the election
/// timeout, then it ... begins an election": it increments its term, votes for itself and asks
/// every other server for its vote (pre-vote off).
#[test]
fn election_timeout_follower_that_hears_nothing_becomes_candidate_of_the_next_term() {
    let mut n = node(1, 3, &[1, 1], 3, false);
    let timeout = n.randomized_election_ticks();
    for tick in 1..timeout {
        n.tick();
        assert_eq!((n.role(), n.term()), (Role::Follower, Term(3)), "tick {tick} of {timeout}");
        assert!(drive(&mut n).is_empty(), "tick {tick} of {timeout}");
    }
    n.tick();
    assert_eq!((n.role(), n.term(), vote_of(&n), n.leader()), (Role::Candidate, Term(4), Some(NodeId(1)), None));
    let out = drive(&mut n);
    assert_eq!(out.soft_state, Some(SoftState { role: Role::Candidate, term: Term(4), leader: None }));
    assert_eq!(out.hard_state, Some(hard(4, Some(1), 0)));
    assert_eq!(out.messages, vec![]);
    assert_eq!(
        out.messages_after_persist,
        vec![msg(1, 2, 4, vote_request(false, 2, 1)), msg(1, 3, 4, vote_request(false, 2, 1))]
    );
}

/// §5.2 with pre-vote (thesis §9.6): the timed-out follower first becomes a pre-candidate, keeps
/// its term and vote, and asks for pre-votes for the term it would campaign in.
#[test]
fn election_timeout_follower_with_pre_vote_becomes_pre_candidate_and_keeps_its_term() {
    let voters = ids(3);
    let storage = common::storage_with_log(&voters, &[1, 1], hard(3, Some(2), 0));
    let mut n = Raft::new(NodeId(1), opts(1, true), storage).expect("memory storage");
    let timeout = n.randomized_election_ticks();
    for _ in 1..timeout {
        n.tick();
    }
    assert_eq!(n.role(), Role::Follower);
    n.tick();
    assert_eq!((n.role(), n.term(), vote_of(&n)), (Role::PreCandidate, Term(3), Some(NodeId(2))));
    let out = drive(&mut n);
    assert_eq!(out.soft_state, Some(SoftState { role: Role::PreCandidate, term: Term(3), leader: None }));
    assert_eq!(out.hard_state, None, "a pre-vote changes no durable state");
    assert_eq!(out.messages, vec![]);
    assert_eq!(
        out.messages_after_persist,
        vec![msg(1, 2, 4, vote_request(true, 2, 1)), msg(1, 3, 4, vote_request(true, 2, 1))]
    );
}

/// §5.2: "A server remains in follower state as long as it receives valid RPCs from a leader";
/// once they stop, it campaigns within the timeout.
#[test]
fn election_timeout_is_reset_by_every_heartbeat_from_the_leader() {
    let mut n = node(2, 3, &[1], 1, false);
    for round in 0..30 {
        for _ in 0..9 {
            n.tick(); // fewer than the shortest timeout (10); 270 in all without a reset
        }
        n.step(msg(1, 2, 1, heartbeat(0))).expect("heartbeat of our term");
        let _ = drive(&mut n);
        assert_eq!((n.role(), n.term(), n.leader()), (Role::Follower, Term(1), Some(NodeId(1))), "round {round}");
    }
    for _ in 0..2 * 10 {
        n.tick();
    }
    assert_eq!((n.role(), n.term()), (Role::Candidate, Term(2)), "heartbeats stopped: it must campaign");
}

/// Figure 2, followers: the election timer also restarts when the follower *grants* a vote
/// (and only then: a refused request does not count as hearing from a candidate).
#[test]
fn election_timeout_is_reset_by_granting_a_vote_but_not_by_refusing_one() {
    // Grants: the timer restarts.
    let mut n = node(1, 3, &[], 1, false);
    let timeout = n.randomized_election_ticks();
    for _ in 1..timeout {
        n.tick();
    }
    n.step(msg(2, 1, 1, vote_request(false, 0, 0))).expect("a vote request of our term");
    assert_eq!(vote_of(&n), Some(NodeId(2)));
    let timeout = n.randomized_election_ticks();
    for _ in 1..timeout {
        n.tick();
    }
    assert_eq!((n.role(), n.term()), (Role::Follower, Term(1)));
    n.tick();
    assert_eq!((n.role(), n.term()), (Role::Candidate, Term(2)));

    // Refuses (it voted for 3 already): the timer keeps running.
    let storage = common::storage_with_log(&ids(3), &[], hard(1, Some(3), 0));
    let mut n = Raft::new(NodeId(1), opts(1, false), storage).expect("memory storage");
    let timeout = n.randomized_election_ticks();
    for _ in 1..timeout {
        n.tick();
    }
    n.step(msg(2, 1, 1, vote_request(false, 0, 0))).expect("a vote request of our term");
    assert_eq!(drive(&mut n).messages_after_persist, vec![msg(1, 2, 1, vote_response(false, false))]);
    n.tick();
    assert_eq!((n.role(), n.term()), (Role::Candidate, Term(2)));
}

/// §5.2: a candidate that neither wins nor loses (split vote) times out and starts a new
/// election with a new term, a new randomized timeout and new vote requests.
#[test]
fn election_timeout_candidate_without_a_decision_starts_a_new_election() {
    let mut n = node(1, 3, &[], 0, false);
    n.campaign();
    let _ = drive(&mut n);
    assert_eq!((n.role(), n.term()), (Role::Candidate, Term(1)));
    n.step(msg(2, 1, 1, vote_response(false, false))).expect("a vote for our election");
    assert_eq!(n.role(), Role::Candidate, "one refusal out of three decides nothing");
    let timeout = n.randomized_election_ticks();
    for _ in 1..timeout {
        n.tick();
    }
    assert_eq!((n.role(), n.term()), (Role::Candidate, Term(1)));
    n.tick();
    assert_eq!((n.role(), n.term(), vote_of(&n)), (Role::Candidate, Term(2), Some(NodeId(1))));
    let out = drive(&mut n);
    assert_eq!(out.hard_state, Some(hard(2, Some(1), 0)));
    assert_eq!(
        out.messages_after_persist,
        vec![msg(1, 2, 2, vote_request(false, 0, 0)), msg(1, 3, 2, vote_request(false, 0, 0))]
    );
    // The refusal of term 1 does not count in term 2: one grant now wins.
    n.step(msg(3, 1, 2, vote_response(false, true))).expect("a vote for our election");
    assert_eq!(n.role(), Role::Leader);
}

// ------------------------------------------------------------------------------------------------
// §5.2 Leader election: votes
// ------------------------------------------------------------------------------------------------

/// §5.2: "Each server will vote for at most one candidate in a given term, on a first-come-
/// first-served basis"; the same candidate asking again gets the same answer, and the vote
/// survives a restart.
#[test]
fn vote_at_most_one_candidate_per_term_first_come_first_served() {
    let mut n = node(3, 3, &[], 0, false);
    n.step(msg(1, 3, 1, vote_request(false, 0, 0))).expect("a request");
    assert_eq!((n.term(), vote_of(&n)), (Term(1), Some(NodeId(1))));
    let out = drive(&mut n);
    assert_eq!(out.hard_state, Some(hard(1, Some(1), 0)));
    assert_eq!(out.messages_after_persist, vec![msg(3, 1, 1, vote_response(false, true))]);

    n.step(msg(2, 3, 1, vote_request(false, 5, 1))).expect("a request");
    assert_eq!(vote_of(&n), Some(NodeId(1)), "a second candidate of the same term is refused");
    let out = drive(&mut n);
    assert_eq!(out.hard_state, None);
    assert_eq!(out.messages_after_persist, vec![msg(3, 2, 1, vote_response(false, false))]);

    n.step(msg(1, 3, 1, vote_request(false, 0, 0))).expect("a request");
    assert_eq!(drive(&mut n).messages_after_persist, vec![msg(3, 1, 1, vote_response(false, true))]);

    // The vote is in the durable hard state: a restarted node still refuses node 2.
    let mut restarted = Raft::new(NodeId(3), opts(3, false), n.storage().clone()).expect("memory storage");
    assert_eq!((restarted.term(), vote_of(&restarted)), (Term(1), Some(NodeId(1))));
    restarted.step(msg(2, 3, 1, vote_request(false, 5, 1))).expect("a request");
    assert_eq!(drive(&mut restarted).messages_after_persist, vec![msg(3, 2, 1, vote_response(false, false))]);
    assert_eq!(vote_of(&restarted), Some(NodeId(1)));

    // A new term brings a new vote.
    restarted.step(msg(2, 3, 2, vote_request(false, 0, 0))).expect("a request");
    assert_eq!((restarted.term(), vote_of(&restarted)), (Term(2), Some(NodeId(2))));
}

/// §5.4.1: a vote is granted only if the candidate's log is at least as up to date as the
/// voter's: a later last term wins; with the same last term the longer (or equal) log wins.
/// Pre-votes follow the same rule but change nothing on the voter.
#[test]
fn vote_granted_only_to_a_candidate_whose_log_is_at_least_as_up_to_date() {
    // The voter's log is [1, 1, 2]: last index 3, last term 2.
    let table: [(u64, u64, bool, &str); 8] = [
        (3, 1, true, "higher last term, shorter log"),
        (3, 5, true, "higher last term, longer log"),
        (2, 4, true, "same last term, longer log"),
        (2, 3, true, "same last term, same length"),
        (2, 2, false, "same last term, shorter log"),
        (1, 9, false, "lower last term, longer log"),
        (1, 3, false, "lower last term, same length"),
        (0, 0, false, "empty log"),
    ];
    for (last_term, last_index, granted, why) in table {
        let mut n = node(1, 3, &[1, 1, 2], 2, false);
        n.step(msg(2, 1, 3, vote_request(false, last_index, last_term))).expect("a request");
        let vote = granted.then_some(2);
        assert_eq!((n.role(), n.term(), vote_of(&n)), (Role::Follower, Term(3), vote.map(NodeId)), "{why}");
        let out = drive(&mut n);
        assert_eq!(out.hard_state, Some(hard(3, vote, 0)), "{why}");
        assert_eq!(out.messages_after_persist, vec![msg(1, 2, 3, vote_response(false, granted))], "{why}");
        assert_eq!(log(&n), vec![(1, 1), (2, 1), (3, 2)], "{why}");

        let mut n = node(1, 3, &[1, 1, 2], 2, true);
        n.step(msg(2, 1, 3, vote_request(true, last_index, last_term))).expect("a pre-vote request");
        assert_eq!((n.role(), n.term(), vote_of(&n)), (Role::Follower, Term(2), None), "pre-vote: {why}");
        let out = drive(&mut n);
        assert_eq!(out.hard_state, None, "pre-vote: {why}");
        // A grant echoes the request's term so the pre-candidate can count it; a refusal carries ours.
        let answer_term = if granted { 3 } else { 2 };
        let expected = vec![msg(1, 2, answer_term, vote_response(true, granted))];
        assert_eq!(out.messages_after_persist, expected, "pre-vote: {why}");
    }
}

/// Persistence before replies (Figure 2, "updated on stable storage before responding to
/// RPCs"): vote requests and vote responses are handed out only in `messages_after_persist`, in
/// the same output as the hard state that records the vote.
#[test]
fn vote_requests_and_responses_are_sent_only_after_the_vote_is_persisted() {
    let mut candidate = node(1, 3, &[1], 1, false);
    candidate.campaign();
    let out = candidate.take_output().expect("memory storage");
    assert_eq!(out.hard_state, Some(hard(2, Some(1), 0)));
    assert_eq!(out.messages, vec![], "nothing may leave before the self-vote is durable");
    assert_eq!(out.messages_after_persist.len(), 2);
    assert!(out.messages_after_persist.iter().all(|m| m.body == vote_request(false, 1, 1) && m.term == Term(2)));

    let mut voter = node(2, 3, &[1], 1, false);
    voter.step(out.messages_after_persist[0].clone()).expect("a request");
    let out = voter.take_output().expect("memory storage");
    assert_eq!(out.hard_state, Some(hard(2, Some(1), 0)));
    assert_eq!(out.messages, vec![], "the vote may not leave before it is durable");
    assert_eq!(out.messages_after_persist, vec![msg(2, 1, 2, vote_response(false, true))]);
}

// ------------------------------------------------------------------------------------------------
// §5.2 Leader election: outcomes
// ------------------------------------------------------------------------------------------------

/// §5.2: a candidate wins with votes from a majority, returns to follower once a majority
/// refused, and stays a candidate otherwise. One round in 1-, 3- and 5-node groups; the winner
/// appends a no-op of its term and sends it to every peer at once.
#[test]
fn election_one_round_outcomes_in_one_three_and_five_node_groups() {
    use Role::{Candidate, Follower, Leader};
    /// (group size, vote responses (from, granted) in arrival order, role after them)
    type Case = (u64, Vec<(u64, bool)>, Role);
    let table: Vec<Case> = vec![
        (1, vec![], Leader),
        (3, vec![], Candidate),
        (3, vec![(2, true)], Leader),
        (3, vec![(2, false)], Candidate),
        (3, vec![(2, false), (3, true)], Leader),
        (3, vec![(2, false), (3, false)], Follower),
        (5, vec![], Candidate),
        (5, vec![(2, true)], Candidate),
        (5, vec![(2, true), (2, true)], Candidate), // a repeated vote counts once
        (5, vec![(2, true), (3, true)], Leader),
        (5, vec![(2, false), (3, false)], Candidate),
        (5, vec![(2, true), (3, false), (4, false)], Candidate),
        (5, vec![(2, false), (3, false), (4, false)], Follower),
        (5, vec![(2, true), (3, false), (4, false), (5, true)], Leader),
        (5, vec![(2, false), (3, true), (4, false), (5, false)], Follower),
    ];
    for (n, votes, expected) in table {
        let case = format!("{n} nodes, votes {votes:?}");
        let mut candidate = node(1, n, &[], 0, false);
        candidate.campaign();
        if n > 1 {
            let _ = drive(&mut candidate);
        }
        for &(from, granted) in &votes {
            candidate.step(msg(from, 1, 1, vote_response(false, granted))).expect("a vote for our election");
        }
        assert_eq!(candidate.role(), expected, "{case}");
        assert_eq!((candidate.term(), vote_of(&candidate)), (Term(1), Some(NodeId(1))), "{case}");
        let leader = (expected == Leader).then_some(NodeId(1));
        assert_eq!(candidate.leader(), leader, "{case}");
        let out = drive(&mut candidate);
        if expected == Leader {
            assert_eq!(pairs(&out.entries), vec![(1, 1)], "{case}: the leader's no-op");
            let appends: Vec<Message> = (2..=n).map(|peer| msg(1, peer, 1, append(0, 0, &[(1, 1)], 0))).collect();
            assert_eq!(out.messages, appends, "{case}: leader appends leave at once");
            assert_eq!(out.messages_after_persist, vec![], "{case}");
            let expected_commit = if n == 1 { 1 } else { 0 };
            assert_eq!(candidate.commit_index(), Index(expected_commit), "{case}");
        } else {
            assert!(out.entries.is_empty() && out.messages.is_empty(), "{case}");
            assert_eq!(candidate.propose(Bytes::from_static(b"x")), Err(ProposeError::NotLeader { leader: None }));
        }
    }
}

/// Pre-vote (thesis §9.6): the pre-vote round changes the term of nobody, neither the
/// pre-candidate's nor the voters'; only the real election after it bumps the term, once.
/// A pre-candidate refused by a majority returns to follower, still in its old term.
#[test]
fn election_with_pre_vote_the_pre_vote_round_bumps_no_term() {
    let mut nodes: Vec<Node> = (1..=3).map(|id| node(id, 3, &[1], 1, true)).collect();
    nodes[0].campaign();
    let out = drive(&mut nodes[0]);
    assert_eq!((nodes[0].role(), nodes[0].term(), vote_of(&nodes[0])), (Role::PreCandidate, Term(1), None));
    assert_eq!(out.hard_state, None);
    let requests = out.messages_after_persist;
    assert_eq!(requests, vec![msg(1, 2, 2, vote_request(true, 1, 1)), msg(1, 3, 2, vote_request(true, 1, 1))]);

    let mut answers = Vec::new();
    for request in requests {
        let voter = &mut nodes[request.to.0 as usize - 1];
        voter.step(request).expect("a pre-vote request");
        let out = drive(voter);
        assert_eq!(out.hard_state, None);
        assert_eq!((voter.role(), voter.term(), vote_of(voter)), (Role::Follower, Term(1), None));
        answers.extend(out.messages_after_persist);
    }
    assert_eq!(answers, vec![msg(2, 1, 2, vote_response(true, true)), msg(3, 1, 2, vote_response(true, true))]);

    nodes[0].step(answers[0].clone()).expect("a pre-vote");
    assert_eq!((nodes[0].role(), nodes[0].term(), vote_of(&nodes[0])), (Role::Candidate, Term(2), Some(NodeId(1))));
    let out = drive(&mut nodes[0]);
    assert_eq!(out.hard_state, Some(hard(2, Some(1), 0)));
    assert_eq!(
        out.messages_after_persist,
        vec![msg(1, 2, 2, vote_request(false, 1, 1)), msg(1, 3, 2, vote_request(false, 1, 1))]
    );
    for voter in &nodes[1..] {
        assert_eq!((voter.term(), vote_of(voter)), (Term(1), None), "pre-votes bumped a voter's term");
    }
    nodes[1].step(out.messages_after_persist[0].clone()).expect("a vote request");
    let out = drive(&mut nodes[1]);
    assert_eq!((nodes[1].term(), vote_of(&nodes[1])), (Term(2), Some(NodeId(1))));
    nodes[0].step(out.messages_after_persist[0].clone()).expect("a vote");
    assert_eq!((nodes[0].role(), nodes[0].term()), (Role::Leader, Term(2)));

    // A pre-candidate with a stale log is refused and goes back to follower in its own term.
    let mut stale = node(1, 3, &[1], 1, true);
    stale.campaign();
    let _ = drive(&mut stale);
    for from in [2, 3] {
        let mut voter = node(from, 3, &[1, 1], 1, true);
        voter.step(msg(1, from, 2, vote_request(true, 1, 1))).expect("a pre-vote request");
        let out = drive(&mut voter);
        assert_eq!((voter.term(), vote_of(&voter), out.hard_state), (Term(1), None, None));
        assert_eq!(out.messages_after_persist, vec![msg(from, 1, 1, vote_response(true, false))]);
        stale.step(out.messages_after_persist[0].clone()).expect("a pre-vote");
    }
    assert_eq!((stale.role(), stale.term(), vote_of(&stale)), (Role::Follower, Term(1), None));
    assert_eq!(drive(&mut stale).hard_state, None);
}

/// §5.2: "If the leader's term is at least as large as the candidate's current term, then the
/// candidate recognizes the leader as legitimate and returns to follower state." A leader
/// that hears of a second leader of its own term refuses it (election safety).
#[test]
fn election_candidate_receiving_append_from_leader_of_its_term_becomes_its_follower() {
    let mut candidate = node_in_role(Role::Candidate, 2);
    candidate.step(msg(3, 1, 2, append(2, 1, &[(3, 2)], 0))).expect("append of our term");
    assert_eq!(candidate.role(), Role::Follower);
    assert_eq!(
        (candidate.term(), candidate.leader(), vote_of(&candidate)),
        (Term(2), Some(NodeId(3)), Some(NodeId(1)))
    );
    let out = drive(&mut candidate);
    assert_eq!(out.soft_state, Some(SoftState { role: Role::Follower, term: Term(2), leader: Some(NodeId(3)) }));
    assert_eq!(out.messages_after_persist, vec![msg(1, 3, 2, success(3))]);
    assert_eq!(log(&candidate), vec![(1, 1), (2, 1), (3, 2)]);

    let mut pre_candidate = node_in_role(Role::PreCandidate, 2);
    pre_candidate.step(msg(3, 1, 2, heartbeat(0))).expect("heartbeat of our term");
    assert_eq!(
        (pre_candidate.role(), pre_candidate.term(), pre_candidate.leader()),
        (Role::Follower, Term(2), Some(NodeId(3)))
    );

    let mut leader = node_in_role(Role::Leader, 2);
    let before = log(&leader);
    let result = leader.step(msg(3, 1, 2, append(2, 1, &[(3, 2)], 0)));
    assert_eq!(result, Err(StepError::Malformed(Malformed::SecondLeader(NodeId(3)))));
    assert_eq!((leader.role(), leader.term()), (Role::Leader, Term(2)));
    let out = drive(&mut leader);
    assert!(out.entries.is_empty() && out.messages_after_persist.is_empty());
    assert_eq!(log(&leader), before);
}

// ------------------------------------------------------------------------------------------------
// §5.3 Log replication: the follower side
// ------------------------------------------------------------------------------------------------

/// §5.3 consistency check: a follower accepts an append only if its log holds an entry at
/// prev_log_index with prev_log_term. A refusal carries a hint: no term and last+1 when the log
/// is too short, otherwise the conflicting term and the first index of that term.
#[test]
fn append_consistency_check_rejects_mismatched_prev_with_a_conflict_hint() {
    // The follower's log: [1, 1, 2, 2, 3] (indexes 1..=5), current term 4.
    let table: [(u64, u64, MessageBody); 11] = [
        (7, 3, reject(7, None, 6)),
        (6, 4, reject(6, None, 6)),
        (6, 3, reject(6, None, 6)),
        (5, 4, reject(5, Some(3), 5)),
        (5, 2, reject(5, Some(3), 5)),
        (4, 3, reject(4, Some(2), 3)),
        (3, 1, reject(3, Some(2), 3)),
        (2, 2, reject(2, Some(1), 1)),
        (5, 3, success(5)),
        (4, 2, success(4)),
        (0, 0, success(0)),
    ];
    for (prev_index, prev_term, answer) in table {
        let case = format!("prev ({prev_index}, {prev_term})");
        let mut follower = node(2, 3, &[1, 1, 2, 2, 3], 4, false);
        follower.step(msg(1, 2, 4, append(prev_index, prev_term, &[], 0))).expect("an append");
        assert_eq!((follower.role(), follower.leader()), (Role::Follower, Some(NodeId(1))), "{case}");
        let out = drive(&mut follower);
        assert_eq!(out.messages, vec![], "{case}");
        assert_eq!(out.messages_after_persist, vec![msg(2, 1, 4, answer)], "{case}");
        assert_eq!(log(&follower), vec![(1, 1), (2, 1), (3, 2), (4, 2), (5, 3)], "{case}: log unchanged");
        assert_eq!(follower.commit_index(), Index(0), "{case}");
    }
}

/// §5.3: when the consistency check passes, the follower appends the new entries and
/// acknowledges the last one, after they are durable.
#[test]
fn append_accepted_appends_entries_and_acknowledges_them_after_persisting() {
    let mut follower = node(2, 3, &[1, 1, 2, 2, 3], 4, false);
    follower.step(msg(1, 2, 4, append(5, 3, &[(6, 3), (7, 4)], 0))).expect("an append");
    let out = follower.take_output().expect("memory storage");
    assert_eq!(pairs(&out.entries), vec![(6, 3), (7, 4)]);
    assert_eq!(out.messages, vec![], "an acknowledgement may not leave before the entries are durable");
    assert_eq!(out.messages_after_persist, vec![msg(2, 1, 4, success(7))]);
    follower.storage_mut().append(&out.entries).expect("appendable");
    follower.on_persisted(Index(7), Term(4));
    assert_eq!(log(&follower), vec![(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 3), (7, 4)]);
}

/// §5.3: "If an existing entry conflicts with a new one (same index but different terms),
/// delete the existing entry and all that follow it"; entries that match are kept, even those
/// past the append (a delayed, shorter append must not truncate anything).
#[test]
fn append_conflict_resolution_truncates_only_from_the_first_conflicting_entry() {
    // The follower's log: [1, 1, 2, 2, 3], current term 4. (prev, entries, new log, written, match)
    type Case = ((u64, u64), &'static [(u64, u64)], &'static [(u64, u64)], &'static [(u64, u64)], u64);
    let table: [Case; 6] = [
        ((1, 1), &[(2, 1), (3, 2)], &[(1, 1), (2, 1), (3, 2), (4, 2), (5, 3)], &[], 3),
        ((0, 0), &[(1, 1), (2, 1), (3, 2), (4, 2), (5, 3)], &[(1, 1), (2, 1), (3, 2), (4, 2), (5, 3)], &[], 5),
        ((2, 1), &[(3, 2), (4, 4)], &[(1, 1), (2, 1), (3, 2), (4, 4)], &[(4, 4)], 4),
        ((2, 1), &[(3, 3)], &[(1, 1), (2, 1), (3, 3)], &[(3, 3)], 3),
        ((0, 0), &[(1, 1), (2, 1), (3, 4)], &[(1, 1), (2, 1), (3, 4)], &[(3, 4)], 3),
        ((3, 2), &[(4, 2), (5, 3), (6, 4)], &[(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 4)], &[(6, 4)], 6),
    ];
    for ((prev_index, prev_term), entries, new_log, written, match_index) in table {
        let case = format!("prev ({prev_index}, {prev_term}) entries {entries:?}");
        let mut follower = node(2, 3, &[1, 1, 2, 2, 3], 4, false);
        follower.step(msg(1, 2, 4, append(prev_index, prev_term, entries, 0))).expect("an append");
        let out = drive(&mut follower);
        assert_eq!(pairs(&out.entries), written.to_vec(), "{case}: entries written");
        assert_eq!(out.messages_after_persist, vec![msg(2, 1, 4, success(match_index))], "{case}");
        assert_eq!(log(&follower), new_log.to_vec(), "{case}");
    }
}

/// §5.3: "If leaderCommit > commitIndex, set commitIndex = min(leaderCommit, index of last new
/// entry)" — the index of the last entry *this append* vouches for, not the follower's last
/// index, which may hold a stale entry of another term.
#[test]
fn follower_commit_is_min_of_leader_commit_and_last_new_entry() {
    // Index 3 (term 2) is left over from a deposed leader; the term-3 leader committed its own 3.
    let mut follower = node(2, 3, &[1, 1, 2], 3, false);
    follower.step(msg(1, 2, 3, append(1, 1, &[(2, 1)], 3))).expect("an append");
    assert_eq!(follower.commit_index(), Index(2), "index 3 is not the leader's: it must not commit");
    let out = drive(&mut follower);
    assert_eq!(out.hard_state, Some(hard(3, None, 2)));
    assert_eq!(pairs(&out.committed), vec![(1, 1), (2, 1)]);
    assert_eq!(out.messages_after_persist, vec![msg(2, 1, 3, success(2))]);
    assert_eq!(log(&follower), vec![(1, 1), (2, 1), (3, 2)]);

    follower.step(msg(1, 2, 3, append(2, 1, &[(3, 3)], 3))).expect("an append");
    assert_eq!(follower.commit_index(), Index(3));
    let first = drive(&mut follower);
    assert_eq!(pairs(&first.entries), vec![(3, 3)]);
    let second = drive(&mut follower);
    let applied: Vec<(u64, u64)> = pairs(&first.committed).into_iter().chain(pairs(&second.committed)).collect();
    assert_eq!(applied, vec![(3, 3)], "the replaced entry is applied, not the stale one");

    // A leader commit beyond what the append covers is clamped to its last entry.
    follower.step(msg(1, 2, 3, append(3, 3, &[], 9))).expect("an append");
    assert_eq!(follower.commit_index(), Index(3));
    assert!(drive(&mut follower).committed.is_empty());
}

/// §5.3/Figure 2: a follower applies committed entries in log order, each once, and only once
/// they are durable locally (driving contract rule 7).
#[test]
fn follower_applies_committed_entries_in_order_once_they_are_durable() {
    let mut follower = node(2, 3, &[1], 1, false);
    follower.step(msg(1, 2, 1, append(1, 1, &[(2, 1), (3, 1)], 3))).expect("an append");
    assert_eq!(follower.commit_index(), Index(3));
    let out = follower.take_output().expect("memory storage");
    assert_eq!(pairs(&out.entries), vec![(2, 1), (3, 1)]);
    assert_eq!(out.hard_state, Some(hard(1, None, 3)));
    assert_eq!(pairs(&out.committed), vec![(1, 1)], "only the durable part of the committed prefix");
    follower.storage_mut().append(&out.entries).expect("appendable");
    assert!(follower.take_output().expect("memory storage").committed.is_empty(), "not yet reported durable");
    follower.on_persisted(Index(3), Term(1));
    assert_eq!(pairs(&follower.take_output().expect("memory storage").committed), vec![(2, 1), (3, 1)]);
    assert!(!follower.has_output());
    assert_eq!(follower.status().applied, Index(3));
}

/// Heartbeats carry min(follower match, leader commit), so a follower never learns a commit
/// index beyond what the leader knows it holds; the follower also clamps it to its last index
/// and never moves its commit index backwards.
#[test]
fn heartbeat_carries_min_of_match_and_commit_and_follower_clamps_it() {
    let (mut leader, out) = elect_node1(5, &[], 0); // term 1, no-op at 1
    assert_eq!(out.messages.len(), 4);
    for peer in [2, 3, 4] {
        leader.step(msg(peer, 1, 1, success(1))).expect("an ack");
    }
    assert_eq!(leader.commit_index(), Index(1));
    let _ = drive(&mut leader);
    assert_eq!(leader.propose(Bytes::from_static(b"x")), Ok(Index(2)));
    let _ = drive(&mut leader);
    leader.step(msg(2, 1, 1, success(2))).expect("an ack");
    let _ = drive(&mut leader);
    assert_eq!(leader.commit_index(), Index(1), "index 2 is on 2 of 5 nodes only");

    leader.tick();
    let out = drive(&mut leader);
    // Node 2 holds index 2 but only 1 is committed; 3 and 4 hold 1; node 5 is not known to hold anything.
    // It is the leader's first heartbeat round.
    let round_1 = |commit| MessageBody::Heartbeat { commit: Index(commit), round: 1 };
    let expected =
        vec![msg(1, 2, 1, round_1(1)), msg(1, 3, 1, round_1(1)), msg(1, 4, 1, round_1(1)), msg(1, 5, 1, round_1(0))];
    assert_eq!(out.messages, expected);

    let mut follower = node(2, 3, &[1], 1, false);
    follower.step(msg(1, 2, 1, heartbeat(5))).expect("a heartbeat");
    assert_eq!(follower.commit_index(), Index(1), "clamped to the follower's last index");
    let out = drive(&mut follower);
    assert_eq!(out.messages_after_persist, vec![msg(2, 1, 1, MessageBody::HeartbeatResponse { round: 0 })]);
    assert_eq!(pairs(&out.committed), vec![(1, 1)]);
    follower.step(msg(1, 2, 1, heartbeat(0))).expect("a heartbeat");
    assert_eq!(follower.commit_index(), Index(1), "the commit index never decreases");
}

// ------------------------------------------------------------------------------------------------
// §5.3 Log replication: the leader side
// ------------------------------------------------------------------------------------------------

/// §5.3: "A log entry is committed once the leader that created the entry has replicated it on a
/// majority of the servers"; then the leader applies it and tells the followers.
#[test]
fn leader_commits_an_entry_once_replicated_on_a_majority_and_not_before() {
    let mut c = Cluster::with(5, false, false);
    c.elect(1);
    c.cut(1, 4);
    c.cut(1, 5);
    assert_eq!(c.propose(1, b"a"), Ok(Index(2)));
    assert_eq!(c.node(1).commit_index(), Index(2), "1, 2 and 3 form a majority of 5");
    for id in 1..=3 {
        assert_eq!(c.log_of(id), vec![(1, 1), (2, 1)], "node {id}");
        assert_eq!(c.node(id).commit_index(), Index(2), "node {id}");
        assert_eq!(c.applied_data(id), data(&[b"a"]), "node {id}");
    }
    for id in [4, 5] {
        assert_eq!(c.log_of(id), vec![(1, 1)], "node {id}");
        assert!(c.applied_data(id).is_empty(), "node {id}");
    }

    c.cut(1, 3);
    assert_eq!(c.propose(1, b"b"), Ok(Index(3)));
    assert_eq!(c.log_of(2), vec![(1, 1), (2, 1), (3, 1)]);
    assert_eq!(c.node(1).commit_index(), Index(2), "1 and 2 are no majority of 5");
    assert_eq!(c.node(2).commit_index(), Index(2));
    assert_eq!(c.applied_data(1), data(&[b"a"]));
}

/// §5.3: "the leader retries AppendEntries RPCs indefinitely ... until all followers eventually
/// store all log entries", also when the network lost the appends (and nobody reported the
/// followers unreachable). Here both followers miss an entry; after the network heals only
/// heartbeats flow, and they must be enough to get it replicated and committed.
#[test]
fn leader_retries_appends_lost_in_the_network_until_every_follower_stores_them() {
    let mut c = Cluster::with(3, false, false);
    c.elect(1);
    c.ticks(2);
    assert!(c.node(1).is_replicating(NodeId(2)) && c.node(1).is_replicating(NodeId(3)));
    c.cut(1, 2);
    c.cut(1, 3);
    assert_eq!(c.propose(1, b"x"), Ok(Index(2)));
    assert!(c.dropped >= 2, "the appends were lost");
    c.heal();
    c.ticks(20);
    assert_eq!(c.leader(), Some(1));
    for id in 1..=3 {
        assert_eq!(c.log_of(id), vec![(1, 1), (2, 1)], "node {id}");
        assert_eq!(c.node(id).commit_index(), Index(2), "node {id}");
        assert_eq!(c.applied_data(id), data(&[b"x"]), "node {id}");
    }
}

const FIGURE_7_LEADER: [u64; 10] = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];

/// The follower logs (a)-(f) of Figure 7, with the most rejected appends the leader's conflict
/// hints should need to find each one's match point.
const FIGURE_7_FOLLOWERS: [(&str, &[u64], usize); 6] = [
    ("a", &[1, 1, 1, 4, 4, 5, 5, 6, 6], 1),
    ("b", &[1, 1, 1, 4], 1),
    ("c", &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6], 0),
    ("d", &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7], 0),
    ("e", &[1, 1, 1, 4, 4, 4, 4], 2),
    ("f", &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3], 2),
];

/// The leader's log after winning term 8: Figure 7's log plus its no-op.
fn figure_7_repaired() -> Vec<(u64, u64)> {
    let mut expected: Vec<(u64, u64)> = FIGURE_7_LEADER.iter().enumerate().map(|(i, &t)| (i as u64 + 1, t)).collect();
    expected.push((11, 8));
    expected
}

/// §5.3, Figure 7: the leader of term 8 brings every follower log (a)-(f) into line with its
/// own: missing entries are added, extra and conflicting ones removed. All seven in one group;
/// (c) and (d) refuse their vote (their logs are more up to date), the other five elect it.
#[test]
fn leader_repairs_all_six_follower_logs_of_figure_7_in_one_group() {
    let voters = ids(7);
    let mut nodes = std::collections::BTreeMap::new();
    nodes.insert(NodeId(1), node_with_log(NodeId(1), &voters, &FIGURE_7_LEADER, 7, opts(1, false)));
    for (offset, (_, terms, _)) in FIGURE_7_FOLLOWERS.iter().enumerate() {
        let id = offset as u64 + 2;
        nodes.insert(NodeId(id), node_with_log(NodeId(id), &voters, terms, 7, opts(id, false)));
    }
    let mut c = Cluster::from_nodes(nodes);
    c.elect(1);
    // A follower repaired after the leader committed learns the commit index from the next heartbeat.
    c.tick_all();
    assert_eq!(c.node(1).term(), Term(8));
    let granted: BTreeSet<u64> = c
        .delivered
        .iter()
        .filter(|m| m.to == NodeId(1) && m.body == vote_response(false, true))
        .map(|m| m.from.0)
        .collect();
    assert_eq!(granted, BTreeSet::from([2, 3, 6, 7]), "(a), (b), (e) and (f) vote for the leader");

    let expected = figure_7_repaired();
    for (offset, (name, _, _)) in FIGURE_7_FOLLOWERS.iter().enumerate() {
        let id = offset as u64 + 2;
        assert_eq!(c.log_of(id), expected, "follower ({name})");
        assert_eq!((c.node(id).term(), c.node(id).leader()), (Term(8), Some(NodeId(1))), "follower ({name})");
        assert_eq!(c.node(id).commit_index(), Index(11), "follower ({name})");
        assert_eq!(applied_pairs(&c, id), expected, "follower ({name}) applies the leader's log");
    }
    assert_eq!(c.log_of(1), expected);
    assert_eq!(c.node(1).commit_index(), Index(11));
}

/// §5.3, Figure 7, one follower at a time (with a third node to elect the leader): the log is
/// repaired, and the conflict hints let the leader skip a whole term per rejected append.
#[test]
fn leader_repairs_each_follower_log_of_figure_7_skipping_a_term_per_rejection() {
    for (name, terms, rejections_max) in FIGURE_7_FOLLOWERS {
        let voters = ids(3);
        let mut nodes = std::collections::BTreeMap::new();
        nodes.insert(NodeId(1), node_with_log(NodeId(1), &voters, &FIGURE_7_LEADER, 7, opts(1, false)));
        nodes.insert(NodeId(2), node_with_log(NodeId(2), &voters, terms, 7, opts(2, false)));
        nodes.insert(NodeId(3), node_with_log(NodeId(3), &voters, &[1, 1, 1], 7, opts(3, false)));
        let mut c = Cluster::from_nodes(nodes);
        c.elect(1);
        c.tick_all(); // carries the commit index to a follower repaired after the leader committed
        let expected = figure_7_repaired();
        assert_eq!(c.log_of(2), expected, "follower ({name})");
        assert_eq!(c.log_of(3), expected, "follower ({name}): the third node");
        assert_eq!(c.node(2).commit_index(), Index(11), "follower ({name})");
        assert_eq!(applied_pairs(&c, 2), expected, "follower ({name})");
        let rejections = c
            .delivered
            .iter()
            .filter(|m| {
                m.from == NodeId(2) && matches!(m.body, MessageBody::AppendResponse(AppendResult::Reject { .. }))
            })
            .count();
        assert!(rejections <= rejections_max, "follower ({name}): {rejections} rejections > {rejections_max}");
    }
}

/// §5.3, Figure 7, the leader's side of the repair: from each refusal's hint it picks the next
/// probe. With no term in the hint it probes at the follower's log end; with a term it has
/// itself, just past its own last entry of that term; with a term it lacks, before the
/// follower's first entry of that term. Each probe carries everything from there to the end.
#[test]
fn leader_probes_back_past_each_conflict_using_the_follower_hint() {
    type Round = (u64, Option<u64>, u64, (u64, u64)); // rejected, hint term, hint index, next prev
    let table: [(&str, &[Round]); 4] = [
        ("a", &[(10, None, 10, (9, 6))]),
        ("b", &[(10, None, 5, (4, 4))]),
        ("e", &[(10, None, 8, (7, 5)), (7, Some(4), 4, (5, 4))]),
        ("f", &[(10, Some(3), 7, (6, 5)), (6, Some(2), 4, (3, 1))]),
    ];
    let repaired = figure_7_repaired();
    for (name, rounds) in table {
        let (mut leader, out) = elect_node1(3, &FIGURE_7_LEADER, 7);
        assert_eq!(out.messages[0], msg(1, 2, 8, append(10, 6, &[(11, 8)], 0)), "({name})");
        for &(rejected, hint_term, hint_index, (prev_index, prev_term)) in rounds {
            leader.step(msg(2, 1, 8, reject(rejected, hint_term, hint_index))).expect("a refusal");
            let rest = &repaired[prev_index as usize..];
            let probe = msg(1, 2, 8, append(prev_index, prev_term, rest, 0));
            assert_eq!(drive(&mut leader).messages, vec![probe], "({name}) after the refusal at {rejected}");
        }
    }
}

/// Driving contract rule 6 (thesis §10.2.1): the leader may send an entry before its own copy is
/// durable, but counts itself toward the majority only once its storage reports it durable.
#[test]
fn leader_counts_its_own_copy_toward_the_majority_only_once_durable() {
    let (mut leader, _) = elect_node1(3, &[], 0); // term 1, durable no-op at 1
    leader.step(msg(2, 1, 1, success(1))).expect("an ack");
    assert_eq!(leader.commit_index(), Index(1));
    let _ = drive(&mut leader);
    assert_eq!(leader.propose(Bytes::from_static(b"x")), Ok(Index(2)));
    let out = leader.take_output().expect("memory storage");
    assert_eq!(pairs(&out.entries), vec![(2, 1)]);
    let body = MessageBody::AppendEntries {
        prev_log_index: Index(1),
        prev_log_term: Term(1),
        entries: vec![common::entry(2, 1, b"x")],
        commit: Index(1),
    };
    assert_eq!(out.messages, vec![msg(1, 2, 1, body)], "the append leaves before the leader's write");
    leader.step(msg(2, 1, 1, success(2))).expect("an ack");
    assert_eq!(leader.commit_index(), Index(1), "only node 2 holds index 2 durably");
    leader.storage_mut().append(&out.entries).expect("appendable");
    leader.on_persisted(Index(2), Term(1));
    assert_eq!(leader.commit_index(), Index(2));
    assert_eq!(pairs(&leader.take_output().expect("memory storage").committed), vec![(2, 1)]);
}

// ------------------------------------------------------------------------------------------------
// §5.4 Safety
// ------------------------------------------------------------------------------------------------

/// §5.4.2, Figure 8 (c): the leader of term 4 has replicated the term-2 entry at index 2 to a
/// majority, but "Raft never commits log entries from previous terms by counting replicas": it
/// commits index 2 only together with its own term-4 entry, once that is on a majority.
#[test]
fn commit_rule_leader_commits_old_term_entries_only_under_an_entry_of_its_own_term() {
    let options = common::base_options(NodeId(1))
        .pre_vote(false)
        .check_quorum(false)
        .message_entries_max(1)
        .build()
        .expect("valid");
    let (mut leader, out) = elect_node1_with(5, &[1, 2], 3, options); // term 4, no-op at 3
    assert_eq!(pairs(&out.entries), vec![(3, 4)]);
    let first: Vec<Message> = (2..=5).map(|p| msg(1, p, 4, append(2, 2, &[(3, 4)], 0))).collect();
    assert_eq!(out.messages, first);

    // Nodes 2 and 3 hold only index 1: they refuse, and get index 2 (one entry per message).
    for peer in [2, 3] {
        leader.step(msg(peer, 1, 4, reject(2, None, 2))).expect("a refusal");
        assert_eq!(drive(&mut leader).messages, vec![msg(1, peer, 4, append(1, 1, &[(2, 2)], 0))]);
    }
    for peer in [2, 3] {
        leader.step(msg(peer, 1, 4, success(2))).expect("an ack");
        let out = drive(&mut leader);
        assert_eq!(out.messages, vec![msg(1, peer, 4, append(2, 2, &[(3, 4)], 0))]);
        assert!(out.committed.is_empty());
    }
    // Index 2 (term 2) is now on nodes 1, 2 and 3, a majority of 5: still not committed.
    assert_eq!(leader.commit_index(), Index(0));
    for _ in 0..3 {
        leader.tick();
        assert!(drive(&mut leader).committed.is_empty());
    }
    assert_eq!(leader.commit_index(), Index(0));

    leader.step(msg(2, 1, 4, success(3))).expect("an ack");
    assert_eq!(leader.commit_index(), Index(0), "index 3 is on 2 of 5 nodes only");
    leader.step(msg(3, 1, 4, success(3))).expect("an ack");
    assert_eq!(leader.commit_index(), Index(3));
    let out = drive(&mut leader);
    assert_eq!(pairs(&out.committed), vec![(1, 1), (2, 2), (3, 4)]);
    // The followers that hold everything learn the commit index from a notice they do not answer.
    let notice = MessageBody::CommitNotice { prev_log_index: Index(3), prev_log_term: Term(4), commit: Index(3) };
    assert_eq!(out.messages, vec![msg(1, 2, 4, notice.clone()), msg(1, 3, 4, notice)]);
}

/// §5.4.2, Figure 8 end to end: why the rule matters. The term-2 entry the term-4 leader put on
/// a majority is *not* committed, and indeed a later leader (with a term-3 entry at index 2)
/// is elected and overwrites it everywhere; no node ever applies it.
#[test]
fn commit_rule_figure_8_old_term_entry_on_a_majority_can_be_overwritten_so_is_never_committed() {
    let voters = ids(5);
    let build = |id: u64, terms: &[u64], term: u64| {
        let options = common::base_options(NodeId(id))
            .pre_vote(false)
            .check_quorum(false)
            .message_entries_max(1)
            .build()
            .expect("valid");
        (NodeId(id), node_with_log(NodeId(id), &voters, terms, term, options))
    };
    let nodes = [build(1, &[1, 2], 3), build(2, &[1], 3), build(3, &[1], 3), build(4, &[1], 3), build(5, &[1, 3], 4)];
    let mut c = Cluster::from_nodes(nodes.into_iter().collect());

    // (c) Node 1 wins term 4 with the votes of 2 and 3 and copies index 2 (term 2) to them; its
    // own term-4 entry never reaches them.
    c.cut(1, 4);
    c.cut(1, 5);
    c.node_mut(1).campaign();
    deliver_dropping(&mut c, |c, m| {
        let carries_term_4 = matches!(&m.body, MessageBody::AppendEntries { entries, .. }
            if entries.iter().any(|e| e.term == Term(4)));
        carries_term_4 && c.node(m.to.0).last_index() >= Index(2)
    });
    assert_eq!((c.node(1).role(), c.node(1).term()), (Role::Leader, Term(4)));
    assert_eq!(c.log_of(1), vec![(1, 1), (2, 2), (3, 4)]);
    for id in [2, 3] {
        assert_eq!(c.log_of(id), vec![(1, 1), (2, 2)], "node {id}");
    }
    assert_eq!(c.node(1).commit_index(), Index(0), "index 2 is on a majority but is not of term 4");
    assert!(c.applied[&NodeId(1)].is_empty());

    // (d) Node 1 crashes; 2 and 3 restart. Node 5 (last entry of term 3) wins term 5 with the
    // votes of 2, 3 and 4, and overwrites index 2 on all of them.
    c.heal();
    c.crash(1);
    for id in [2, 3] {
        c.crash(id);
        c.restart(id);
    }
    c.campaign(5);
    assert_eq!((c.node(5).role(), c.node(5).term()), (Role::Leader, Term(5)));
    let repaired = vec![(1, 1), (2, 3), (3, 5)];
    for id in 2..=5 {
        assert_eq!(c.log_of(id), repaired, "node {id}");
        assert_eq!(c.node(id).commit_index(), Index(3), "node {id}");
        assert_eq!(applied_pairs(&c, id), repaired, "node {id}");
    }

    // Node 1 comes back and loses its uncommitted entries too.
    c.restart(1);
    c.ticks(3);
    assert_eq!(c.log_of(1), repaired);
    assert_eq!(applied_pairs(&c, 1), repaired);
}

/// §5.4.1 election restriction, end to end: once an entry is committed, a node that lacks it
/// cannot be elected (the nodes holding it refuse their votes), and the node that holds it can.
#[test]
fn election_restriction_a_node_missing_committed_entries_cannot_win() {
    let mut c = Cluster::with(3, false, false);
    c.elect(1);
    c.cut(1, 3);
    assert_eq!(c.propose(1, b"x"), Ok(Index(2)));
    assert_eq!(c.node(1).commit_index(), Index(2));
    assert_eq!(c.log_of(3), vec![(1, 1)]);

    // The leader crashes; node 2 restarts too (so it no longer remembers a live leader).
    c.crash(1);
    c.crash(2);
    c.restart(2);
    c.heal();
    c.campaign(3);
    assert_eq!((c.node(3).role(), c.node(3).term()), (Role::Candidate, Term(2)));
    let answer = c.delivered.iter().rev().find(|m| m.from == NodeId(2) && m.to == NodeId(3)).expect("an answer");
    assert_eq!(answer, &msg(2, 3, 2, vote_response(false, false)));
    assert_eq!((c.node(2).term(), vote_of(c.node(2))), (Term(2), None));

    c.campaign(2);
    assert_eq!((c.node(2).role(), c.node(2).term()), (Role::Leader, Term(3)));
    assert_eq!(c.log_of(3), vec![(1, 1), (2, 1), (3, 3)]);
    assert_eq!(c.applied_data(3), data(&[b"x"]));
}

// ------------------------------------------------------------------------------------------------
// Options
// ------------------------------------------------------------------------------------------------

/// The options builder refuses every combination that would break the timing assumptions of
/// §5.2 or the replication limits, with the matching typed reason; valid boundaries pass.
#[test]
fn options_builder_rejects_invalid_combinations_with_the_matching_error() {
    let b = Options::builder;
    let cases: Vec<(&str, Result<Options, OptionsError>, OptionsError)> = vec![
        ("heartbeat 0", b().heartbeat_ticks(0).build(), OptionsError::HeartbeatTicksZero),
        (
            "heartbeat 0 and election 0",
            b().heartbeat_ticks(0).election_ticks(0).build(),
            OptionsError::HeartbeatTicksZero,
        ),
        (
            "election = heartbeat",
            b().election_ticks(5).heartbeat_ticks(5).build(),
            OptionsError::ElectionNotAboveHeartbeat { election_ticks: 5, heartbeat_ticks: 5 },
        ),
        (
            "election < heartbeat",
            b().election_ticks(3).heartbeat_ticks(4).build(),
            OptionsError::ElectionNotAboveHeartbeat { election_ticks: 3, heartbeat_ticks: 4 },
        ),
        (
            "election 0",
            b().election_ticks(0).build(),
            OptionsError::ElectionNotAboveHeartbeat { election_ticks: 0, heartbeat_ticks: 1 },
        ),
        (
            "2 * election overflows",
            b().election_ticks(u32::MAX / 2 + 1).build(),
            OptionsError::ElectionTicksTooLarge(u32::MAX / 2 + 1),
        ),
        ("no entries per message", b().message_entries_max(0).build(), OptionsError::MessageEntriesZero),
        (
            "message below one entry",
            b().message_bytes_max(raft_core::ENTRY_OVERHEAD_BYTES - 1).build(),
            OptionsError::MessageBytesTooSmall(raft_core::ENTRY_OVERHEAD_BYTES - 1),
        ),
        ("no inflight", b().inflight_messages_max(0).build(), OptionsError::InflightZero),
        (
            "uncommitted below message",
            b().message_bytes_max(1000).uncommitted_bytes_max(999).build(),
            OptionsError::UncommittedBelowMessage { uncommitted: 999, message: 1000 },
        ),
        (
            "apply below message",
            b().message_bytes_max(1000).apply_bytes_max(999).build(),
            OptionsError::ApplyBelowMessage { apply: 999, message: 1000 },
        ),
    ];
    for (why, result, error) in cases {
        assert_eq!(result, Err(error), "{why}");
    }

    let boundary = b()
        .election_ticks(2)
        .heartbeat_ticks(1)
        .message_entries_max(1)
        .message_bytes_max(raft_core::ENTRY_OVERHEAD_BYTES)
        .inflight_messages_max(1)
        .uncommitted_bytes_max(raft_core::ENTRY_OVERHEAD_BYTES)
        .apply_bytes_max(raft_core::ENTRY_OVERHEAD_BYTES)
        .build()
        .expect("the smallest valid options");
    assert_eq!((boundary.election_ticks(), boundary.heartbeat_ticks()), (2, 1));
    assert_eq!(b().election_ticks(u32::MAX / 2).build().map(|o| o.election_ticks()), Ok(u32::MAX / 2));
    let defaults = b().build().expect("the defaults are valid");
    assert!(defaults.election_ticks() > defaults.heartbeat_ticks());
}
