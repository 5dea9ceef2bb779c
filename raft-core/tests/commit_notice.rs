//! The commit index reaches followers that hold everything as a `CommitNotice`, which they do
//! not answer unless their log disagrees: an answer would tell the leader nothing new, and with
//! one write in flight per group it was a quarter of the messages of every operation.

mod common;

use common::{Cluster, Fate, between, deliver_with, message, tick_with};
use raft_core::{AppendResult, Index, Message, MessageBody, NodeId, StepError, Term};

fn is_notice(m: &Message) -> bool {
    matches!(m.body, MessageBody::CommitNotice { .. })
}

/// Three nodes, node 1 leading, one entry proposed and committed while every answer of node 3
/// is lost: the leader does not know that node 3 holds it. Returns the entry's index.
fn committed_with_node_3s_answers_lost() -> (Cluster, Index) {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.deliver_all();
    let index = c.node_mut(1).propose(bytes::Bytes::from_static(b"x")).expect("leader accepts");
    deliver_with(&mut c, |m| match &m.body {
        MessageBody::AppendResponse(_) if between(m, 3, 1) => Fate::Drop,
        _ => Fate::Deliver,
    });
    (c, index)
}

/// A proposal commits; the followers, which hold it, learn that it committed from a notice,
/// commit it, and answer nothing: the only answers to the leader are the appends' own.
#[test]
fn caught_up_followers_learn_the_commit_from_a_notice_they_do_not_answer() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.delivered.clear();
    let index = c.propose(1, b"x").expect("leader accepts");
    c.deliver_all();
    for follower in [2, 3] {
        assert_eq!(c.node(follower).commit_index(), index, "node {follower} knows the commit");
        let notices: Vec<_> = c.delivered.iter().filter(|m| between(m, 1, follower) && is_notice(m)).collect();
        assert_eq!(notices.len(), 1, "one notice to node {follower}: {:?}", c.delivered);
        assert_eq!(
            notices[0].body,
            MessageBody::CommitNotice { prev_log_index: index, prev_log_term: c.node(1).term(), commit: index }
        );
        let answers = c.delivered.iter().filter(|m| between(m, follower, 1)).count();
        assert_eq!(answers, 1, "node {follower} answered the append only: {:?}", c.delivered);
        // No empty append went to it either.
        assert!(!c.delivered.iter().any(|m| between(m, 1, follower)
            && matches!(&m.body, MessageBody::AppendEntries { entries, .. } if entries.is_empty())));
    }
}

/// A notice that overtakes the append it follows (or follows a lost one) finds a log that does
/// not match: the follower refuses it as it would an append, and the leader sends the entry
/// again, so the follower still catches up and learns the commit.
#[test]
fn a_notice_the_followers_log_does_not_match_is_refused_and_the_entry_sent_again() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.deliver_all();
    let mut dropped_append = false;
    let index = c.node_mut(1).propose(bytes::Bytes::from_static(b"x")).expect("leader accepts");
    // The append to node 3 is lost; node 2's answer commits the entry.
    deliver_with(&mut c, |m| match &m.body {
        MessageBody::AppendEntries { entries, .. } if between(m, 1, 3) && !entries.is_empty() && !dropped_append => {
            dropped_append = true;
            Fate::Drop
        }
        _ => Fate::Deliver,
    });
    assert!(dropped_append);
    assert_eq!(c.node(1).commit_index(), index);
    let refusal = c
        .delivered
        .iter()
        .position(|m| between(m, 3, 1) && matches!(m.body, MessageBody::AppendResponse(AppendResult::Reject { .. })))
        .expect("node 3 refused the notice");
    assert!(c.delivered[..refusal].iter().any(|m| between(m, 1, 3) && is_notice(m)), "the notice came first");
    assert_eq!(c.node(3).last_index(), index, "the entry was sent again");
    assert_eq!(c.node(3).commit_index(), index);
}

/// An answer to an append that is lost leaves the leader thinking the follower lacks the entry;
/// no notice answer repairs that, but the next heartbeat's answer does (an empty append that is
/// answered), so the leader's view of the follower catches up.
#[test]
fn a_lost_append_answer_is_repaired_by_the_heartbeat_round() {
    let (mut c, index) = committed_with_node_3s_answers_lost();
    assert_eq!(c.node(1).commit_index(), index);
    assert_eq!(c.node(3).commit_index(), index, "the notice told node 3");
    assert!(c.node(1).status().progress[&NodeId(3)].match_index < index);
    for _ in 0..c.node(1).options().heartbeat_ticks() {
        tick_with(&mut c, |_| Fate::Deliver);
    }
    assert_eq!(c.node(1).status().progress[&NodeId(3)].match_index, index);
}

/// A notice from an earlier term is answered with the follower's term, as a stale append is, so
/// that a deposed leader learns of it; one whose previous entry's term exceeds its own term is
/// refused as malformed before it can change anything.
#[test]
fn stale_and_malformed_notices_are_treated_as_appends_are() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.deliver_all();
    // Node 3 hears from the leader of a later term, node 2.
    let term = c.node(3).term().next();
    let commit = c.node(3).commit_index();
    let node = c.node_mut(3);
    let _ = node.step(message(2, 3, term.0, MessageBody::Heartbeat { commit, round: 0 }));
    let _ = node.take_output().expect("memory storage");
    assert_eq!(node.term(), term);
    let stale = MessageBody::CommitNotice { prev_log_index: Index(1), prev_log_term: Term(1), commit: Index(1) };
    let _ = node.step(message(1, 3, term.0 - 1, stale));
    let out = node.take_output().expect("memory storage");
    let answers: Vec<_> = out.messages.iter().chain(&out.messages_after_persist).collect();
    assert!(
        answers
            .iter()
            .any(|m| m.to == NodeId(1) && m.term == term && matches!(m.body, MessageBody::HeartbeatResponse { .. })),
        "the stale leader is told the term: {answers:?}"
    );
    let malformed =
        MessageBody::CommitNotice { prev_log_index: Index(1), prev_log_term: Term(term.0 + 1), commit: Index(9) };
    let result = node.step(message(2, 3, term.0, malformed));
    assert!(matches!(result, Err(StepError::Malformed(_))), "{result:?}");
    assert_eq!(node.commit_index(), commit);
}

/// Pitfall 9 for notices: a follower that lost its disk (an empty log) is told a commit index
/// far past its log. The notice's previous entry is not in its log, so it refuses the notice and
/// commits nothing; it never trusts a commit index beyond what it holds.
#[test]
fn a_notice_past_the_followers_log_commits_nothing_and_is_refused() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.deliver_all();
    let term = c.node(1).term();
    let mut fresh = common::node_with_log(NodeId(3), &common::ids(3), &[], 0, common::options(NodeId(3), true, true));
    let notice = MessageBody::CommitNotice { prev_log_index: Index(5), prev_log_term: term, commit: Index(9) };
    fresh.step(message(1, 3, term.0, notice)).expect("a well-formed notice");
    assert_eq!(fresh.commit_index(), Index(0));
    let out = fresh.take_output().expect("memory storage");
    let refused = out.messages.iter().chain(&out.messages_after_persist).any(|m| {
        m.to == NodeId(1)
            && matches!(m.body, MessageBody::AppendResponse(AppendResult::Reject { rejected_index: Index(5), .. }))
    });
    assert!(refused, "the notice is refused: {out:?}");
}

/// A follower the leader is probing although it holds everything (reported unreachable after
/// it acknowledged the entry about to commit) is sent an empty append when that entry commits,
/// not a notice: it answers the append, and the answer puts it back in the replicate state at
/// once, without waiting for a heartbeat.
#[test]
fn a_probed_follower_gets_an_answered_append_not_a_notice() {
    let mut c = Cluster::new(5);
    c.elect(1);
    c.deliver_all();
    // The leader's own copy stays unreported, so that nodes 2 and 3 alone do not commit it.
    c.auto_persist.insert(NodeId(1), false);
    let index = c.node_mut(1).propose(bytes::Bytes::from_static(b"x")).expect("leader accepts");
    let held = deliver_with(&mut c, |m| match m.body {
        MessageBody::AppendResponse(_) if m.to == NodeId(1) && m.from.0 >= 4 => Fate::Hold,
        _ => Fate::Deliver,
    });
    assert_eq!(c.node(1).commit_index(), Index(index.0 - 1));
    c.node_mut(1).report_unreachable(NodeId(3));
    assert!(!c.node(1).is_replicating(NodeId(3)));
    c.delivered.clear();
    // Node 4's answer makes a quorum (2, 3 and 4).
    c.in_flight.extend(held.into_iter().filter(|m| m.from == NodeId(4)));
    deliver_with(&mut c, |m| if m.from == NodeId(5) { Fate::Hold } else { Fate::Deliver });
    assert_eq!(c.node(1).commit_index(), index);
    assert!(!c.delivered.iter().any(|m| between(m, 1, 3) && is_notice(m)), "a notice to a probed follower");
    assert!(c.delivered.iter().any(|m| between(m, 1, 3) && matches!(m.body, MessageBody::AppendEntries { .. })));
    assert!(c.node(1).is_replicating(NodeId(3)), "node 3 answered and is replicated to again");
    assert_eq!(c.node(3).commit_index(), index);
}

/// A quiet follower's log ends at its commit index, so a notice can tell it nothing new: the
/// same notice again, or an older one (a duplicate delayed in the network), leaves it quiet and
/// is not answered. (Were it woken, it would run its election timer against a leader that sends
/// nothing, and campaign.)
#[test]
fn a_duplicate_or_older_notice_leaves_a_quiet_follower_quiet_and_unanswered() {
    let mut c = common::cluster_tuned(3, |b| b.quiesce(true));
    c.elect(1);
    c.propose(1, b"x").expect("leader accepts");
    c.propose(1, b"y").expect("leader accepts");
    for _ in 0..c.node(1).options().heartbeat_ticks() * 3 {
        c.tick_all();
    }
    assert!(c.node(2).is_quiet(), "the idle group went quiet");
    let term = c.node(1).term();
    let last = c.node(2).last_index();
    for prev in [last, Index(last.0 - 1)] {
        let node = c.node_mut(2);
        let notice = MessageBody::CommitNotice { prev_log_index: prev, prev_log_term: term, commit: prev };
        node.step(message(1, 2, term.0, notice)).expect("a notice");
        let out = node.take_output().expect("memory storage");
        assert!(node.is_quiet(), "a notice at {prev} woke it");
        let answers: Vec<_> = out.messages.iter().chain(&out.messages_after_persist).collect();
        assert!(answers.is_empty(), "a notice at {prev} was answered: {answers:?}");
    }
}

/// A leadership transfer to a follower whose answer to the last append was lost waits for the
/// leader to learn that the target holds everything. With the empty commit append gone, that
/// is the next heartbeat's answer (and the empty append it then sends), so the transfer still
/// completes, within a heartbeat interval, long before it would be abandoned.
#[test]
fn a_transfer_to_a_follower_whose_answer_was_lost_completes_after_a_heartbeat() {
    let (mut c, index) = committed_with_node_3s_answers_lost();
    assert_eq!(c.node(3).last_index(), index);
    assert!(c.node(1).status().progress[&NodeId(3)].match_index < index);
    c.node_mut(1).transfer_leadership(NodeId(3)).expect("a voter");
    c.deliver_all();
    assert_eq!(c.leader(), Some(1), "nothing tells the leader yet that node 3 holds everything");
    for _ in 0..c.node(1).options().heartbeat_ticks() {
        c.tick_all();
    }
    assert_eq!(c.leader(), Some(3), "the transfer completed within a heartbeat interval");
}
