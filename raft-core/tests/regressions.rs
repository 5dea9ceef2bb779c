//! Scripted regressions for bugs the simulator found in raft-core (see the sim crate's seeds
//! test for the seeds). Each fails on the code before its fix.

mod common;

use bytes::Bytes;
use common::{ids, node_with_log, options};
use raft_core::{Index, Membership, Message, MessageBody, NodeId, ProposeError, Raft, Role, Term};
use raft_storage::MemStorage;

/// A node that refuses a higher-term vote (the candidate's log is behind) steps down to that
/// term but keeps its election timer running: only granting a vote restarts it (Raft §5.2).
/// Before the fix, the refusal restarted the timer, so a candidate with a fast clock and a
/// stale log kept the up-to-date node from ever campaigning (a liveness failure in the sim).
#[test]
fn refusing_a_higher_term_vote_keeps_the_election_timer_running() {
    let voters = ids(3);
    let mut node = node_with_log(NodeId(1), &voters, &[1, 1], 1, options(NodeId(1), false, false));
    let timeout = node.randomized_election_ticks();
    for _ in 0..timeout - 1 {
        node.tick();
    }
    assert_eq!(node.role(), Role::Follower);
    let stale_candidate = Message {
        from: NodeId(2),
        to: NodeId(1),
        term: Term(2),
        body: MessageBody::VoteRequest { pre_vote: false, last_log_index: Index(1), last_log_term: Term(1) },
    };
    node.step(stale_candidate).expect("a valid request");
    assert_eq!((node.term(), node.role()), (Term(2), Role::Follower));
    let output = node.take_output().expect("memory storage");
    let refused = output
        .messages_after_persist
        .iter()
        .any(|m| m.to == NodeId(2) && matches!(m.body, MessageBody::VoteResponse { pre_vote: false, granted: false }));
    assert!(refused, "the stale candidate is refused");
    node.tick();
    assert_eq!((node.role(), node.term()), (Role::Candidate, Term(3)), "the timeout still fires on time");
}

/// A lone voter wins before its new term is durable. If it took proposals then and crashed, the
/// next incarnation would lead the same term again and hand out the same (index, term) for a
/// different command (found by the simulator as a log-matching violation). It refuses
/// proposals until an entry of its term is durable.
#[test]
fn a_lone_voter_never_hands_out_an_index_and_term_a_crash_could_reuse() {
    let options = options(NodeId(1), true, true);
    let empty = MemStorage::new(Membership::new([NodeId(1)]));
    let mut first = Raft::new(NodeId(1), options.clone(), empty.clone()).expect("memory storage");
    first.campaign();
    assert_eq!((first.role(), first.term()), (Role::Leader, Term(1)));
    assert_eq!(first.propose(Bytes::from_static(b"a")), Err(ProposeError::TermNotDurable));
    let unpersisted = first.take_output().expect("memory storage");
    assert_eq!(unpersisted.hard_state.map(|h| h.term), Some(Term(1)));
    // Crash before the write lands: the next incarnation starts from the empty disk.
    let mut second = Raft::new(NodeId(1), options, empty).expect("memory storage");
    second.campaign();
    assert_eq!((second.role(), second.term()), (Role::Leader, Term(1)), "the same term again");
    assert_eq!(second.propose(Bytes::from_static(b"b")), Err(ProposeError::TermNotDurable));
    let output = second.take_output().expect("memory storage");
    if let Some(hard_state) = output.hard_state {
        second.storage_mut().set_hard_state(hard_state);
    }
    second.storage_mut().append(&output.entries).expect("appendable");
    let last = output.entries.last().expect("the leader's no-op");
    second.on_persisted(last.index, last.term);
    assert_eq!(second.propose(Bytes::from_static(b"b")), Ok(Index(2)));
}
