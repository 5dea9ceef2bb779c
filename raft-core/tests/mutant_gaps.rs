//! Behaviour that a `cargo mutants` run over raft-core found untested: for each test, the doc
//! comment names the change to the source that it catches (the test was run against that change
//! and failed). Each drives one node (or a small scripted cluster) by hand, so the input that
//! matters and the output it must cause are next to each other.

mod common;

use common::{Cluster, Fate, cluster_tuned, ids, message, node_with_log, options, storage_with_log};
use raft_core::{
    AppendResult, ConflictHint, HardState, Index, Malformed, Membership, Message, MessageBody, NodeId, Output, Raft,
    ReadMode, Role, StepError, Storage, Term,
};
use raft_storage::{LogStore, MemStorage};

fn take(node: &mut Raft<MemStorage>) -> Output {
    node.take_output().expect("memory storage never fails")
}

/// Every message of an output, whether it may leave at once or after the writes are durable.
fn all_messages(output: &Output) -> Vec<Message> {
    output.messages.iter().chain(&output.messages_after_persist).cloned().collect()
}

fn vote_request(from: u64, to: u64, term: u64, pre_vote: bool, last: (u64, u64)) -> Message {
    let body = MessageBody::VoteRequest {
        pre_vote,
        last_log_index: Index(last.0),
        last_log_term: Term(last.1),
        transfer: false,
    };
    message(from, to, term, body)
}

fn heartbeat(from: u64, to: u64, term: u64, commit: u64) -> Message {
    message(from, to, term, MessageBody::Heartbeat { commit: Index(commit), round: 1 })
}

// ---------------------------------------------------------------------------------------------
// 1. No campaign for a leadership transfer at the largest term.
// ---------------------------------------------------------------------------------------------

/// A follower at term `u64::MAX` that voted for its leader in that term gets `TimeoutNow` from
/// it. A campaign would need a new term, and `Term::next` saturates: campaigning would stay in
/// `u64::MAX` and vote for itself, a second vote in one term. It must ignore the request.
///
/// Kills: in `election.rs`, `campaign_for_transfer`, dropping `|| self.term == Term(u64::MAX)`
/// from its guard (the node then became a candidate in `u64::MAX` with its own vote and asked
/// for votes).
#[test]
fn timeout_now_at_the_largest_term_casts_no_second_vote() {
    let max = u64::MAX;
    let hard_state = HardState { term: Term(max), vote: Some(NodeId(1)), commit: Index(1) };
    let storage = storage_with_log(&ids(3), &[max], hard_state);
    let mut node = Raft::new(NodeId(2), options(NodeId(2), true, true), storage).expect("memory storage");
    node.step(heartbeat(1, 2, max, 1)).expect("the leader of the term");
    let _ = take(&mut node);

    node.step(message(1, 2, max, MessageBody::TimeoutNow)).expect("a well-formed message");
    assert_eq!(node.role(), Role::Follower, "no campaign at the largest term");
    assert_eq!(node.status().vote, Some(NodeId(1)), "the vote of the term is still the first one");
    let output = take(&mut node);
    assert_eq!(output.hard_state, None, "no new vote to persist");
    assert_eq!(all_messages(&output), vec![], "no vote requests");
}

// ---------------------------------------------------------------------------------------------
// 2. Only voters campaign when their election timeout passes.
// ---------------------------------------------------------------------------------------------

/// A learner and a node outside the membership, ticked for three election timeouts (the
/// randomized timeout is below two), stay followers in their term and ask nobody for a vote.
///
/// Kills: `is_promotable` in `election.rs` returning `true` (the learner became a pre-candidate,
/// which the invariant in `become_pre_candidate` refuses with a panic). Deleting only the
/// conjunct `self.is_promotable()` from `tick_election`'s condition is an equivalent mutant:
/// `start_election`, which it calls, checks the same pure condition first and returns without
/// doing anything, so no input sequence can tell the two apart. (`start_election`'s own check
/// is the one `Raft::campaign` relies on; membership.rs, pitfall 6, covers it.)
#[test]
fn a_learner_or_a_non_member_never_campaigns_on_timeout() {
    let mut membership = Membership::new(ids(3));
    membership.learners.insert(NodeId(4));
    let mut storage = MemStorage::new(membership);
    storage.append(&[common::noop(1, 1)]).expect("consecutive");
    storage.set_hard_state(HardState { term: Term(1), vote: None, commit: Index(0) });
    let learner = Raft::new(NodeId(4), options(NodeId(4), true, true), storage).expect("memory storage");
    let outsider = node_with_log(NodeId(5), &ids(3), &[1], 1, options(NodeId(5), false, false));

    for mut node in [learner, outsider] {
        let _ = take(&mut node);
        let ticks = 3 * node.options().election_ticks();
        assert!(node.randomized_election_ticks() < ticks);
        for _ in 0..ticks {
            node.tick();
        }
        let id = node.id();
        assert_eq!(node.role(), Role::Follower, "node {id} campaigned");
        assert_eq!(node.term(), Term(1), "node {id}");
        assert_eq!(all_messages(&take(&mut node)), vec![], "node {id} asked for votes");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. An append whose entry at our commit index contradicts it.
// ---------------------------------------------------------------------------------------------

/// A follower has committed index 2 (term 2). An append starting below the commit index whose
/// last entry is index 2 with term 1 contradicts the committed entry, with nothing after it.
/// No honest leader sends it: it is refused as malformed, nothing is appended or acknowledged.
///
/// Kills: in `replication.rs`, `on_append_entries`, dropping `disagrees ||` from the refusal
/// (only the check that a lower term follows the committed entry is left, and nothing follows
/// it here): the append was acknowledged as matching up to index 2.
#[test]
fn an_append_whose_entry_at_the_commit_index_has_another_term_is_refused() {
    let hard_state = HardState { term: Term(2), vote: None, commit: Index(2) };
    let storage = storage_with_log(&ids(3), &[1, 2], hard_state);
    let mut node = Raft::new(NodeId(2), options(NodeId(2), true, true), storage).expect("memory storage");
    let _ = take(&mut node);

    let contradicting = MessageBody::AppendEntries {
        prev_log_index: Index(1),
        prev_log_term: Term(1),
        entries: vec![common::noop(2, 1)],
        commit: Index(2),
    };
    let result = node.step(message(1, 2, 2, contradicting));
    assert_eq!(result, Err(StepError::Malformed(Malformed::ConflictsWithCommitted(Index(2)))));
    let output = take(&mut node);
    assert!(output.entries.is_empty(), "nothing appended: {output:?}");
    assert_eq!(all_messages(&output), vec![], "nothing acknowledged");
    assert_eq!(node.storage().term(Index(2)), Ok(Term(2)), "the committed entry stays");
}

// ---------------------------------------------------------------------------------------------
// 4. Pre-votes: the request's term, and the round a grant belongs to.
// ---------------------------------------------------------------------------------------------

/// Node 2 of three, in term 2, with a vote for node 1 and no leader known.
fn voted_for_node_1_in_term_2() -> Raft<MemStorage> {
    let hard_state = HardState { term: Term(2), vote: Some(NodeId(1)), commit: Index(0) };
    let storage = storage_with_log(&ids(3), &[1], hard_state);
    Raft::new(NodeId(2), options(NodeId(2), true, true), storage).expect("memory storage")
}

/// A pre-vote request for the node's own current term is a request for a vote in a term where
/// the node already voted or knows the leader: refused, although the requester's log is up to
/// date. The same request for the next term is granted (it promises nothing about that term),
/// which shows the refusal comes from the term.
///
/// Kills: in `election.rs`, `on_vote_request`, `pre_vote && term > self.term` in `can_vote`
/// changed to `term >= self.term` (or `&&` to `||`): the pre-vote at the node's own term was
/// granted.
#[test]
fn a_pre_vote_for_the_current_term_is_refused_after_a_vote_or_with_a_leader() {
    let voted = voted_for_node_1_in_term_2();
    // Follows node 1 in term 2 (no vote cast).
    let mut following = node_with_log(NodeId(2), &ids(3), &[1], 2, options(NodeId(2), true, true));
    following.step(heartbeat(1, 2, 2, 0)).expect("the leader of the term");
    assert_eq!(following.leader(), Some(NodeId(1)));

    for (name, mut node) in [("voted", voted), ("following", following)] {
        let _ = take(&mut node);
        node.step(vote_request(3, 2, 2, true, (1, 1))).expect("answered");
        let refused = message(2, 3, 2, MessageBody::VoteResponse { pre_vote: true, granted: false });
        assert_eq!(all_messages(&take(&mut node)), vec![refused], "{name}: the pre-vote at term 2");
    }

    // The later term: granted by the node that voted (it knows no leader, so no lease holds).
    let mut voted = voted_for_node_1_in_term_2();
    let _ = take(&mut voted);
    voted.step(vote_request(3, 2, 3, true, (1, 1))).expect("answered");
    let granted = message(2, 3, 3, MessageBody::VoteResponse { pre_vote: true, granted: true });
    assert_eq!(all_messages(&take(&mut voted)), vec![granted], "the pre-vote at term 3");
    assert_eq!((voted.term(), voted.status().vote), (Term(2), Some(NodeId(1))), "a pre-vote changes nothing");
}

/// Node 1 pre-campaigns in term 1 (asking for term 2); node 2's grant is delayed. Node 1 then
/// learns term 2 from a candidate, and pre-campaigns again in term 2 (asking for term 3). The
/// delayed grant, carrying term 2, belongs to the first round: it must not count (with node 1's
/// own vote it would make a quorum of three). A grant for term 3 counts.
///
/// Kills: in `election.rs`, `on_vote_response`, `granted && term == self.term.next()` changed to
/// `granted || term == self.term.next()` (a grant of any term counted): the delayed grant made
/// node 1 a candidate in term 3.
#[test]
fn a_late_pre_vote_grant_of_an_earlier_round_is_not_counted() {
    let mut node = node_with_log(NodeId(1), &ids(3), &[1], 1, options(NodeId(1), true, false));
    node.campaign();
    assert_eq!(node.role(), Role::PreCandidate);
    let first_round = take(&mut node);
    assert!(all_messages(&first_round).iter().all(|m| m.term == Term(2)), "the first round asks for term 2");
    let late_grant = message(2, 1, 2, MessageBody::VoteResponse { pre_vote: true, granted: true });

    node.step(vote_request(3, 1, 2, false, (1, 1))).expect("a candidate of term 2");
    assert_eq!((node.role(), node.term()), (Role::Follower, Term(2)));
    let _ = take(&mut node);
    node.campaign();
    assert_eq!((node.role(), node.term()), (Role::PreCandidate, Term(2)), "the second round asks for term 3");
    let _ = take(&mut node);

    assert_eq!(node.step(late_grant), Err(StepError::Ignored(raft_core::Ignored::Unexpected)));
    assert_eq!((node.role(), node.term()), (Role::PreCandidate, Term(2)), "the late grant did not count");

    let grant = message(2, 1, 3, MessageBody::VoteResponse { pre_vote: true, granted: true });
    node.step(grant).expect("a grant of this round");
    assert_eq!((node.role(), node.term()), (Role::Candidate, Term(3)), "a grant of this round counts");
}

// ---------------------------------------------------------------------------------------------
// 5. A snapshot chunk reported missing is resent at once.
// ---------------------------------------------------------------------------------------------

const CHUNK_BYTES: u64 = 8;

/// The offset of a snapshot chunk to `to`.
fn chunk_to(m: &Message, to: u64) -> Option<u64> {
    match &m.body {
        MessageBody::InstallSnapshot { offset, .. } if m.to == NodeId(to) => Some(*offset),
        _ => None,
    }
}

fn is_gap_report(m: &Message) -> bool {
    matches!(m.body, MessageBody::SnapshotResponse { gap: true, .. })
}

/// Node 3 is behind a compacted log and receives the snapshot in 8-byte chunks, two at a time.
/// The chunk at offset 8 is lost; the follower takes the chunk at 0, and reports a gap at 8 when
/// the chunk at 16 arrives. The window is then full (sent through 24, acknowledged through 8).
/// The gap report alone must make the leader resend from offset 8, in the output that follows
/// the report, without waiting for heartbeat answers to show the transfer stalled.
///
/// Kills: in `progress.rs`, `SnapshotTransfer::on_report`, dropping the rewind on a gap (the
/// `else if next_offset < self.sent_offset && ...` branch, or `<` changed to `>`): nothing was
/// sent after the report, as the window looked full.
#[test]
fn a_gap_report_makes_the_leader_resend_the_missing_chunk_at_once() {
    let mut c = cluster_tuned(3, |b| {
        b.compaction_margin_entries(0).snapshot_chunk_bytes_max(CHUNK_BYTES).snapshot_chunks_inflight_max(2)
    });
    c.elect(1);
    c.crash(3);
    for payload in [b"payload-00", b"payload-01", b"payload-02", b"payload-03", b"payload-04", b"payload-05"] {
        c.propose(1, payload).expect("leader accepts");
    }
    c.snapshot(1);
    c.restart(3);
    assert!(c.node(1).storage().snapshot_data().len() as u64 > 4 * CHUNK_BYTES, "the snapshot spans many chunks");

    let mut lost = false;
    let held = common::tick_with(&mut c, |m| match chunk_to(m, 3) {
        Some(CHUNK_BYTES) if !lost => {
            lost = true;
            Fate::Drop
        }
        _ if is_gap_report(m) => Fate::Hold,
        _ => Fate::Deliver,
    });
    assert!(lost, "the chunk at offset 8 went out");
    let sent: Vec<u64> = c.delivered.iter().filter_map(|m| chunk_to(m, 3)).collect();
    assert_eq!(sent, vec![0, 2 * CHUNK_BYTES], "the chunks delivered");
    let [report] = held.as_slice() else { panic!("one gap report expected: {held:?}") };
    assert!(matches!(report.body, MessageBody::SnapshotResponse { next_offset: CHUNK_BYTES, gap: true, .. }));
    assert!(!c.node(1).has_output(), "the leader has nothing left to send before the report");

    c.node_mut(1).step(report.clone()).expect("a report of the transfer");
    let resent: Vec<u64> = take(c.node_mut(1)).messages.iter().filter_map(|m| chunk_to(m, 3)).collect();
    assert_eq!(resent.first(), Some(&CHUNK_BYTES), "the missing chunk goes out at once: {resent:?}");
}

// ---------------------------------------------------------------------------------------------
// 6. A read request of an earlier term.
// ---------------------------------------------------------------------------------------------

/// A leader of term 2 gets a forwarded read from a follower still in term 1 (it missed the
/// election). It answers that the read failed, with its own term, so the follower learns the
/// term and its caller goes elsewhere, instead of waiting for the read to time out. The read is
/// not confirmed: no heartbeat round goes out for it, and nothing else is sent.
///
/// Kills: in `step.rs`, `on_lower_term`, deleting the `ReadIndexRequest` arm: the request was
/// dropped unanswered.
#[test]
fn a_read_request_of_an_earlier_term_is_answered_with_a_failure_and_the_current_term() {
    let nodes = ids(3).into_iter().map(|id| (id, node_with_log(id, &ids(3), &[1], 1, options(id, true, true))));
    let mut c = Cluster::from_nodes(nodes.collect());
    c.elect(1);
    assert_eq!(c.node(1).term(), Term(2));
    c.ticks(2);

    let request = message(3, 1, 1, MessageBody::ReadIndexRequest { request: 7, mode: ReadMode::ReadIndex });
    let result = c.node_mut(1).step(request);
    assert_eq!(
        result,
        Err(StepError::Ignored(raft_core::Ignored::StaleTerm { message_term: Term(1), current_term: Term(2) }))
    );
    let output = take(c.node_mut(1));
    let refusal = message(1, 3, 2, MessageBody::ReadIndexResponse { request: 7, index: None });
    assert_eq!(all_messages(&output), vec![refusal], "a failure in term 2, and no heartbeat round");
    assert_eq!(output.reads, vec![]);
}

// ---------------------------------------------------------------------------------------------
// 7. The last tick of a follower's stickiness to its leader.
// ---------------------------------------------------------------------------------------------

/// A follower hears its leader at clock tick 7. Through tick `7 + election_ticks - 1` it still
/// owes the leader stickiness and refuses a vote request; at tick `7 + election_ticks` the
/// promise is over and it grants one. Only the clock moves (no timer runs), so the node never
/// campaigns itself.
///
/// Kills: in `election.rs`, `Election::within_timeout_by_clock`, `<` changed to `<=` (the vote
/// at `7 + election_ticks` was refused as sticky), and `now - self.restarted_at` changed to
/// `now + self.restarted_at` (the vote at `7 + election_ticks - 1` was granted).
#[test]
fn stickiness_holds_through_the_last_tick_of_the_election_timeout_and_ends_after_it() {
    let mut node = node_with_log(NodeId(2), &ids(3), &[1], 1, options(NodeId(2), true, true));
    let election_ticks = u64::from(node.options().election_ticks());
    node.advance_clock(7);
    node.step(heartbeat(1, 2, 1, 1)).expect("the leader of term 1");
    let _ = take(&mut node);

    node.advance_clock(election_ticks - 1);
    let refused = node.step(vote_request(3, 2, 2, false, (1, 1)));
    assert_eq!(
        refused,
        Err(StepError::Ignored(raft_core::Ignored::LeaderSticky { leader: Some(NodeId(1)) })),
        "the last tick of the lease"
    );
    assert_eq!((node.term(), node.status().vote), (Term(1), None));
    assert_eq!(all_messages(&take(&mut node)), vec![]);

    node.advance_clock(1);
    node.step(vote_request(3, 2, 2, false, (1, 1))).expect("the lease is over");
    assert_eq!((node.term(), node.status().vote), (Term(2), Some(NodeId(3))));
    let granted = message(2, 3, 2, MessageBody::VoteResponse { pre_vote: false, granted: true });
    assert_eq!(all_messages(&take(&mut node)), vec![granted]);
}

/// Node 2 holds an uncommitted membership entry at index 2 from the leader of term 1. The
/// leader of term 2 replaces index 2 with a no-op: the membership in force must fall back to the
/// one before it, since a membership takes effect only while its entry is in the log.
///
/// Kills: in `membership.rs`, `MembershipHistory::replace_from`, `index < first` changed to
/// `index <= first` in the `retain` (the replaced membership at exactly the first replaced index
/// was kept in force).
#[test]
fn a_membership_entry_replaced_at_the_first_conflicting_index_is_no_longer_in_force() {
    let three = Membership::new(ids(3));
    let four = Membership::new(ids(4));
    let mut node = follower_with_memberships(&three, &[&four], Index(1));
    assert_eq!(node.membership(), &four, "the entry in the log is in force");
    replace_last_with_noop(&mut node);
    assert_eq!(node.last_index(), Index(2));
    assert_eq!(node.membership(), &three, "the replaced membership entry no longer counts");
}

/// A follower (not the leader) gets a forwarded read from a member in its own term: it must
/// refuse at once (`index: None`), so the asker's caller goes elsewhere, rather than treat the
/// read as if it led.
///
/// Kills: in `read.rs`, `on_read_index_request`, the first `||` of the refusal changed to `&&`
/// (a non-leader refused only reads from non-members): the follower queued the read as a
/// leader would, and answered nothing.
#[test]
fn a_follower_refuses_a_forwarded_read_at_once() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(2).term().0;
    let request = MessageBody::ReadIndexRequest { request: 9, mode: ReadMode::ReadIndex };
    let _ = c.node_mut(2).step(message(3, 2, term, request));
    let output = take(c.node_mut(2));
    let answers: Vec<MessageBody> = all_messages(&output).into_iter().map(|m| m.body).collect();
    assert_eq!(answers, vec![MessageBody::ReadIndexResponse { request: 9, index: None }], "refused at once");
}

/// A leader whose newest entries are not yet durable on its own disk sends a lagging follower
/// one append that runs from the stored entries into the unstable ones: the log's `entries`
/// joins the two parts when the stored part is complete.
///
/// Kills: in `log.rs`, `RaftLog::entries`, `== Some(stored_high)` changed to `!=` (a complete
/// stored part was taken for a truncated one, and the unstable entries were left for a later
/// message).
#[test]
fn one_append_carries_stored_and_unstable_entries_together() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    for payload in [&b"a"[..], b"b", b"c"] {
        c.propose(1, payload).expect("leader");
    }
    c.deliver_all();
    // The next entries reach the leader's storage but are not reported durable yet.
    c.auto_persist.insert(NodeId(1), false);
    for payload in [&b"d"[..], b"e"] {
        c.propose(1, payload).expect("leader");
    }
    c.process(NodeId(1));
    let last = c.node(1).last_index();
    c.heal();
    c.delivered.clear();
    c.tick_node(1, 3);
    let spans_the_boundary = c.delivered.iter().any(|m| match &m.body {
        MessageBody::AppendEntries { entries, .. } => {
            m.to == NodeId(3) && entries.len() >= 3 && entries.last().map(|e| e.index) == Some(last)
        }
        _ => false,
    });
    assert!(spans_the_boundary, "one append to node 3 carried the stored entries and the unstable ones up to {last}");
}

/// A follower whose leader does not answer holds forwarded reads up to `reads_pending_max`; the
/// next read is refused at once. Forwarded reads count toward the limit like every other kind.
///
/// Kills: in `read.rs`, `Reads::pending_count`, the `+` before `self.ready.len()` changed to `*`
/// (with nothing ready, the forwarded reads counted for nothing and the limit never bit).
#[test]
fn forwarded_reads_count_toward_the_pending_limit() {
    let mut c = cluster_tuned(3, |b| b.reads_pending_max(2));
    c.elect(1);
    c.isolate(1);
    assert_eq!(c.node_mut(2).read(1, ReadMode::ReadIndex), Ok(()));
    assert_eq!(c.node_mut(2).read(2, ReadMode::ReadIndex), Ok(()));
    assert_eq!(c.node_mut(2).read(3, ReadMode::ReadIndex), Err(raft_core::ReadError::TooManyPending));
}

/// A single voter writes two outputs and reports only the later one durable, which the contract
/// allows (a report covers every earlier write). Both entries become stable and commit; the
/// report names the later write by index *and* term.
///
/// Kills: in `log.rs`, `RaftLog::stable_to`, `w.last == index && w.term == term` changed to `||`
/// (the earlier write of the same term was taken for the one reported, and only its entry
/// became stable: the commit index stayed behind).
#[test]
fn a_report_of_a_later_write_makes_every_earlier_write_of_its_term_stable() {
    let mut node = Raft::new(NodeId(1), options(NodeId(1), false, false), MemStorage::new(Membership::new(ids(1))))
        .expect("memory storage");
    node.campaign();
    let persist = |node: &mut Raft<MemStorage>, report: bool| {
        let output = take(node);
        node.storage_mut().write_output(&output).expect("memory storage");
        let last = output.entries.last().map(|e| (e.index, e.term)).expect("an output with entries");
        if report {
            node.on_persisted(last.0, last.1);
        }
        last
    };
    persist(&mut node, true);
    assert!(node.is_leader());
    node.propose(bytes::Bytes::from_static(b"a")).expect("leader");
    persist(&mut node, false);
    node.propose(bytes::Bytes::from_static(b"b")).expect("leader");
    let (last, _) = persist(&mut node, true);
    assert_eq!(node.status().stable_last_index, last, "the report covered the earlier write too");
    assert_eq!(node.commit_index(), last, "a single voter commits what is durable");
}

/// A new leader probes node 3 at the end of its log; node 3 rejects (its log is short) and the
/// leader probes lower. The same rejection then arrives a second time (a duplicate, or a late
/// copy): it answers a probe that is no longer the current one and must change nothing: no new
/// probe, the same next index.
///
/// Kills: in `progress.rs`, `Progress::on_reject`, the guard `rejected != self.next_index.prev()`
/// of the probe state replaced by `false` (the stale rejection let another probe go out at once).
#[test]
fn a_duplicate_rejection_of_an_earlier_probe_changes_nothing() {
    let voters = ids(3);
    let mut node = node_with_log(NodeId(1), &voters, &[1, 1, 1], 1, options(NodeId(1), false, false));
    node.campaign();
    let _ = take(&mut node);
    node.on_persisted(Index(3), Term(1));
    node.step(message(2, 1, 2, MessageBody::VoteResponse { pre_vote: false, granted: true })).expect("a vote");
    assert!(node.is_leader());
    let _ = take(&mut node);
    let next = |node: &Raft<MemStorage>| node.status().progress[&NodeId(3)].next_index;
    let probed = next(&node);
    let reject = |rejected: Index| {
        let hint = ConflictHint { term: None, index: Index(2) };
        message(3, 1, 2, MessageBody::AppendResponse(AppendResult::Reject { rejected_index: rejected, hint }))
    };
    node.step(reject(probed.prev())).expect("the current probe's rejection");
    let lower = next(&node);
    assert_eq!(lower, Index(2), "the leader probes where node 3's log ends");
    let output = take(&mut node);
    assert!(all_messages(&output).iter().any(|m| m.to == NodeId(3)), "a lower probe went out");
    let _ = node.step(reject(probed.prev()));
    let output = take(&mut node);
    assert!(all_messages(&output).iter().all(|m| m.to != NodeId(3)), "the stale rejection sent nothing: {output:?}");
    assert_eq!(next(&node), lower);
}

/// A leader proposes an entry and then a joint membership change, each sent in its own append.
/// The followers' answers to the first append come back; the joint entry's are held. The commit
/// index moves (to the first entry) while the joint entry is uncommitted: the leader must not
/// leave the joint configuration yet (leaving is allowed only once the joint entry commits).
///
/// Kills: in `membership.rs`, `after_commit_membership`, the early return's `||` changed to `&&`
/// (a leader went on with an uncommitted membership and appended the leave entry at once).
#[test]
fn a_leader_leaves_a_joint_configuration_only_after_the_joint_entry_commits() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.node_mut(1).propose(bytes::Bytes::from_static(b"a")).expect("leader");
    c.process(NodeId(1));
    let joint = c.node_mut(1).change_membership(&[raft_core::ConfChange::AddVoter(NodeId(4))]).expect("accepted");
    c.process(NodeId(1));
    // Hold back every append that carries the joint entry; deliver the rest until quiet.
    let carries_joint = |m: &Message| match &m.body {
        MessageBody::AppendEntries { entries, .. } => entries.iter().any(|e| e.index >= joint),
        _ => false,
    };
    let mut held = Vec::new();
    while let Some(m) = c.in_flight.pop_front() {
        if carries_joint(&m) {
            held.push(m);
            continue;
        }
        c.in_flight.push_front(m);
        c.deliver_one();
    }
    assert!(!held.is_empty(), "the joint entry went out in its own append");
    assert_eq!(c.node(1).commit_index(), joint.prev(), "the first entry committed, the joint one not");
    assert!(c.node(1).membership().is_joint(), "still joint");
    assert_eq!(c.node(1).last_index(), joint, "no leave entry was appended before the joint entry committed");
}

/// A leader without lease reads gets a forwarded lease read (from a peer configured otherwise):
/// it refuses at once (`index: None`) rather than serve it some other way.
///
/// Kills: in `read.rs`, `on_read_index_request`, the `||` before the pending-limit test changed
/// to `&&` (the lease clause then refused only at the pending limit, and the read was queued for
/// a heartbeat round).
#[test]
fn a_leader_without_lease_reads_refuses_a_forwarded_lease_read() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(1).term().0;
    let request = MessageBody::ReadIndexRequest { request: 4, mode: ReadMode::Lease };
    let _ = c.node_mut(1).step(message(2, 1, term, request));
    let output = take(c.node_mut(1));
    let to_2: Vec<MessageBody> =
        all_messages(&output).into_iter().filter(|m| m.to == NodeId(2)).map(|m| m.body).collect();
    assert_eq!(to_2, vec![MessageBody::ReadIndexResponse { request: 4, index: None }], "refused at once");
}

/// A leader that has led for several election timeouts gets a vote request of a later term
/// from a node that campaigned while cut off (no pre-vote). A leader is always sticky: it
/// ignores the request, keeps its term and keeps leading.
///
/// Kills: in `election.rs`, `in_lease`, deleting the `Role::Leader` arm (a leader was then sticky
/// only within an election timeout of its last reset by the clock, and stepped down).
#[test]
fn a_long_standing_leader_ignores_a_vote_request_of_a_later_term() {
    let mut c = Cluster::with(3, false, true);
    c.elect(1);
    c.ticks(35);
    assert!(c.node(1).is_leader());
    let term = c.node(1).term();
    let last = c.node(1).last_index();
    let body = MessageBody::VoteRequest { pre_vote: false, last_log_index: last, last_log_term: term, transfer: false };
    let result = c.node_mut(1).step(message(3, 1, term.0 + 5, body));
    assert!(matches!(result, Err(StepError::Ignored(_))), "ignored: {result:?}");
    assert!(c.node(1).is_leader(), "still leading");
    assert_eq!(c.node(1).term(), term, "the later term was not taken");
}

// ---------------------------------------------------------------------------------------------
// 8. Survivors of the third run (issue 23): the log's compaction boundary and pending snapshot,
//    the size limit of one append, conflict hints past a compacted log, membership history and
//    changes, and snapshot-transfer flow control.
// ---------------------------------------------------------------------------------------------

/// A leader took a snapshot and compacted its log where `compaction_point` advised. The log now
/// starts just past the snapshot: there is nothing left to compact, so `compaction_point` must
/// say so until a newer snapshot is taken.
///
/// Kills: in `log.rs`, `RaftLog::first_index` replaced by `Ok(Default::default())` (the log
/// seemed to start at index 0, so the compaction already done was advised again).
#[test]
fn no_compaction_point_once_the_log_starts_just_past_the_snapshot() {
    let mut c = cluster_tuned(3, |b| b.compaction_margin_entries(0));
    c.elect(1);
    for payload in [&b"a"[..], b"b", b"c"] {
        c.propose(1, payload).expect("leader accepts");
    }
    let meta = c.snapshot(1);
    assert_eq!(c.node(1).storage().first_index(), Ok(meta.index.next()), "compacted through the snapshot");
    assert_eq!(c.node(1).compaction_point(), None, "nothing left to compact");
}

/// A snapshot of (index 5, term 2), sent in one chunk by node 1, the leader of term 2.
fn snapshot_at_5(data: &'static [u8]) -> (raft_core::SnapshotMeta, Message) {
    let meta = raft_core::SnapshotMeta {
        index: Index(5),
        term: Term(2),
        membership: Membership::new(ids(3)),
        data_crc32: raft_core::snapshot_crc32(data),
    };
    let body = MessageBody::install_snapshot(meta.clone(), 0, bytes::Bytes::from_static(data), true);
    (meta, message(1, 2, 2, body))
}

/// Node 2 (log: index 1, committed) installed a snapshot of (5, 2) from its leader; the driver
/// wrote it but has not reported it durable yet.
fn follower_with_a_snapshot_not_yet_durable() -> Raft<MemStorage> {
    let hard_state = HardState { term: Term(2), vote: None, commit: Index(1) };
    let mut node = Raft::new(NodeId(2), options(NodeId(2), true, true), storage_with_log(&ids(3), &[1], hard_state))
        .expect("memory storage");
    let (meta, chunk) = snapshot_at_5(b"state at 5");
    node.step(chunk).expect("a valid snapshot");
    let output = take(&mut node);
    assert_eq!(output.install_snapshot, Some(meta), "the snapshot is handed out for installing");
    node.storage_mut().write_output(&output).expect("memory storage");
    assert_eq!(node.last_index(), Index(5));
    node
}

/// While the installed snapshot is not yet durable, the leader's next append follows it (its
/// previous entry is the snapshot's last one). The log ends at the snapshot, so the append
/// matches and is taken: the follower need not wait for its disk to continue.
///
/// Kills: in `log.rs`, `RaftLog::term`, the match guard `index == snapshot.index` (for a
/// snapshot not yet durable) replaced by `false`, or `==` by `!=` (the term at the snapshot's
/// own index was reported compacted, and the append failed with a storage error).
#[test]
fn an_append_right_after_a_snapshot_not_yet_durable_is_taken() {
    let mut node = follower_with_a_snapshot_not_yet_durable();
    let append = MessageBody::AppendEntries {
        prev_log_index: Index(5),
        prev_log_term: Term(2),
        entries: vec![common::noop(6, 2)],
        commit: Index(5),
    };
    assert_eq!(node.step(message(1, 2, 2, append)), Ok(()));
    assert_eq!(node.last_index(), Index(6));
    let acked = message(2, 1, 2, MessageBody::AppendResponse(AppendResult::Success { match_index: Index(6) }));
    assert_eq!(all_messages(&take(&mut node)), vec![acked]);
}

/// While the installed snapshot of (5, 2) is not yet durable, a delayed chunk of an earlier
/// snapshot of the same leader arrives, of (3, 1). Index 3 is covered by the new snapshot, so
/// its term is unknown here: the chunk is stale, not a contradiction of a committed entry. It
/// is answered as every stale snapshot is, with how far the log matches.
///
/// Kills: in `log.rs`, `RaftLog::term`, the match guard `index == snapshot.index` replaced by
/// `true`, or `==` by `!=` (every index below the snapshot got the snapshot's term, so the chunk
/// was refused as conflicting with a committed entry).
#[test]
fn a_stale_snapshot_chunk_while_a_snapshot_is_not_yet_durable_is_answered_as_stale() {
    let mut node = follower_with_a_snapshot_not_yet_durable();
    let data = b"state at 3";
    let older = raft_core::SnapshotMeta {
        index: Index(3),
        term: Term(1),
        membership: Membership::new(ids(3)),
        data_crc32: raft_core::snapshot_crc32(data),
    };
    let chunk = MessageBody::install_snapshot(older, 0, bytes::Bytes::from_static(data), true);
    assert_eq!(node.step(message(1, 2, 2, chunk)), Ok(()));
    let answer = message(2, 1, 2, MessageBody::AppendResponse(AppendResult::Success { match_index: Index(5) }));
    assert_eq!(all_messages(&take(&mut node)), vec![answer]);
}

/// With the smallest message limit (one entry's overhead), a membership entry is larger than a
/// whole message. An append still carries at least one entry: the leader sends the change, on
/// its own, in the append that follows it, rather than an empty append.
///
/// Kills: in `log.rs`, `RaftLog::entries`, `taken > 0` changed to `taken >= 0` (an entry that
/// alone exceeds the limit was left out even as the first of a message, and the append went out
/// empty).
#[test]
fn an_entry_larger_than_the_message_limit_goes_out_alone() {
    let mut c = cluster_tuned(3, |b| b.message_bytes_max(raft_core::ENTRY_OVERHEAD_BYTES));
    c.elect(1);
    let change = c.node_mut(1).change_membership(&[raft_core::ConfChange::AddLearner(NodeId(4))]).expect("accepted");
    let output = take(c.node_mut(1));
    for peer in [2, 3] {
        let carried: Vec<Vec<Index>> = all_messages(&output)
            .iter()
            .filter(|m| m.to == NodeId(peer))
            .filter_map(|m| match &m.body {
                MessageBody::AppendEntries { entries, .. } => Some(entries.iter().map(|e| e.index).collect()),
                _ => None,
            })
            .collect();
        assert_eq!(carried, vec![vec![change]], "node {peer} is sent the change alone");
    }
}

/// Node 1 leads term 4 with its log compacted through index 5 (term 2); after that it holds
/// 6 (term 2), 7 and 8 (term 3). Node 2 holds 1..=8 all of term 2 (7 and 8 from the old leader
/// of term 2, never committed), committed through 5. Node 2 rejects the probe at 8 with a hint:
/// its term there is 2, which starts (above its commit index) at 6. The leader holds entries of
/// term 2 through 6, which therefore match node 2's: it probes next at 7 (after 6), skipping
/// what it knows matches, even though its search starts at the compaction boundary, whose term
/// is the hint's term too.
///
/// Kills: in `log.rs`, `RaftLog::last_index_with_term_at_most`, `self.term(lo)? > term` changed
/// to `>=` or `==` (a boundary of the hint's own term ended the search, and the leader fell back
/// to the hint's index: it probed at 6, resending an entry the follower holds).
#[test]
fn a_compacted_leader_probes_past_its_own_entries_of_the_followers_conflicting_term() {
    let data = common::encode_state(&[bytes::Bytes::from_static(b"state at 5")]);
    let snapshot = raft_core::SnapshotMeta {
        index: Index(5),
        term: Term(2),
        membership: Membership::new(ids(3)),
        data_crc32: raft_core::snapshot_crc32(&data),
    };
    let leader_state = HardState { term: Term(3), vote: None, commit: Index(5) };
    let mut leader_storage = storage_with_log(&ids(3), &[2, 2, 2, 2, 2, 2, 3, 3], leader_state);
    leader_storage.save_snapshot(&snapshot, &data).expect("memory storage");
    leader_storage.compact(Index(5), Term(2)).expect("memory storage");
    let follower_state = HardState { term: Term(3), vote: None, commit: Index(5) };
    let follower_storage = storage_with_log(&ids(3), &[2, 2, 2, 2, 2, 2, 2, 2], follower_state);
    let nodes = [(1, leader_storage), (2, follower_storage)]
        .into_iter()
        .map(|(id, storage)| {
            let id = NodeId(id);
            (id, Raft::new(id, options(id, false, false), storage).expect("memory storage"))
        })
        .collect();
    let mut c = Cluster::from_nodes(nodes); // Node 3 is down for the whole test.
    c.elect(1);
    c.deliver_all();
    let probes: Vec<u64> = c
        .delivered
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::AppendEntries { prev_log_index, .. } if m.to == NodeId(2) => Some(prev_log_index.0),
            _ => None,
        })
        .collect();
    let rejected_at_8 = c.delivered.iter().any(|m| {
        matches!(
            m.body,
            MessageBody::AppendResponse(AppendResult::Reject {
                rejected_index: Index(8),
                hint: ConflictHint { term: Some(Term(2)), index: Index(6) }
            })
        )
    });
    assert!(rejected_at_8, "node 2 rejected the probe at 8, with its term 2 there starting at 6");
    let after_8 = probes.iter().skip_while(|&&prev| prev != 8).nth(1);
    assert_eq!(after_8, Some(&6), "the probe after the rejection at 8 follows index 6: {probes:?}");
    assert_eq!(c.node(2).last_index(), c.node(1).last_index(), "node 2 caught up");
}

/// Node 2 holds, from the leader of term 1, a joint membership entry at index 2 (committed) and
/// the entry leaving it at index 3 (not committed). The leader of term 2 never got index 3 and
/// replaces it with a no-op: the membership in force falls back to the joint one at index 2,
/// which is still in the log, and not further back to the one before it.
///
/// Kills: in `membership.rs`, `MembershipHistory::replace_from`, the `retain` condition
/// `index < first || index == base` changed to `index > first || ...` or to `index < first &&
/// index == base` (the memberships below the first replaced index were dropped, and the node
/// went back to the three voters of its base).
#[test]
fn replacing_a_later_membership_entry_keeps_the_earlier_one_in_force() {
    let three = Membership::new(ids(3));
    let four = Membership::new(ids(4));
    let joint = raft_core::first_step(&three, &four).expect("neither is joint");
    assert!(joint.is_joint());
    let mut node = follower_with_memberships(&three, &[&joint, &four], Index(2));
    assert_eq!(node.membership(), &four, "the latest entry in the log is in force");
    replace_last_with_noop(&mut node);
    assert_eq!(node.last_index(), Index(3));
    assert_eq!(node.membership(), &joint, "the joint entry at index 2 is the latest in the log");
}

/// A leader adds a learner: no joint phase, so the new membership is not joint, but its entry
/// is not committed yet. A second change must wait until it is, like any change in progress.
///
/// Kills: in `membership.rs`, `start_change`, `current.is_joint() || current_index > committed`
/// changed to `&&` (only an uncommitted joint membership held a second change back, so the
/// second change was appended on top of an uncommitted one).
#[test]
fn a_second_change_waits_for_an_uncommitted_learner_change() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let first = c.node_mut(1).change_membership(&[raft_core::ConfChange::AddLearner(NodeId(4))]).expect("accepted");
    assert!(!c.node(1).membership().is_joint());
    let second = c.node_mut(1).change_membership(&[raft_core::ConfChange::AddLearner(NodeId(5))]);
    assert_eq!(second, Err(raft_core::MembershipError::ChangeInProgress));
    assert_eq!(c.node(1).last_index(), first, "nothing appended");
    c.deliver_all();
    assert!(c.node(1).commit_index() >= first);
    c.node_mut(1).change_membership(&[raft_core::ConfChange::AddLearner(NodeId(5))]).expect("accepted once committed");
}

/// A leader replicating to node 3 with a window of two appends has one append in flight (held
/// back by the network) when node 3 answers a heartbeat. The answer frees a slot only when the
/// window is full (so that lost appends cannot stall the follower): here it frees nothing, and
/// of the next proposals only one more append goes out, never more than the window.
///
/// Kills: in `progress.rs`, `Progress::on_heartbeat_response`, `state == Replicate &&
/// inflights.is_full()` changed to `||` (every heartbeat answer freed a slot, so three appends
/// were in flight to node 3).
#[test]
fn a_heartbeat_answer_frees_no_slot_of_a_window_that_is_not_full() {
    let mut c = cluster_tuned(3, |b| b.inflight_messages_max(2));
    c.elect(1);
    c.propose(1, b"a").expect("leader accepts");
    assert!(c.node(1).is_replicating(NodeId(3)));
    let mut held = Vec::new();
    // Commit notices too: one overtaking the held append would be refused, and that refusal
    // would rewind the follower's progress.
    let hold_appends_to_3 = |m: &Message| match &m.body {
        MessageBody::AppendEntries { .. } | MessageBody::CommitNotice { .. } if m.to == NodeId(3) => Fate::Hold,
        _ => Fate::Deliver,
    };
    c.node_mut(1).propose(bytes::Bytes::from_static(b"b")).expect("leader accepts");
    held.extend(common::deliver_with(&mut c, hold_appends_to_3));
    // A heartbeat round: node 3 answers it.
    held.extend(common::tick_with(&mut c, hold_appends_to_3));
    assert!(c.delivered.iter().any(|m| m.from == NodeId(3) && matches!(m.body, MessageBody::HeartbeatResponse { .. })));
    for payload in [&b"c"[..], b"d", b"e"] {
        c.node_mut(1).propose(bytes::Bytes::from_static(payload)).expect("leader accepts");
        held.extend(common::deliver_with(&mut c, hold_appends_to_3));
    }
    let in_flight: Vec<Vec<Index>> = held
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::AppendEntries { entries, .. } if !entries.is_empty() => {
                Some(entries.iter().map(|e| e.index).collect())
            }
            _ => None,
        })
        .collect();
    assert_eq!(in_flight.len(), 2, "appends with entries in flight to node 3: {in_flight:?}");
}

/// Steps `m` into its addressee, writes that node's output to its storage, and returns the
/// messages it sends in answer (the caller delivers them, or not).
fn step_and_take(c: &mut Cluster, m: Message) -> (Result<(), StepError>, Vec<Message>) {
    let node = c.nodes.get_mut(&m.to).expect("a node of the cluster");
    let result = node.step(m);
    let output = take(node);
    node.storage_mut().write_output(&output).expect("memory storage");
    (result, all_messages(&output))
}

/// The offsets of the snapshot chunks among `messages`.
fn chunk_offsets(messages: &[Message]) -> Vec<u64> {
    messages.iter().filter_map(|m| chunk_to(m, 3)).collect()
}

/// Node 1 leads and must send node 3 a snapshot of many 8-byte chunks, two at a time. The
/// transfer has started: returns the first two chunks, which the network holds.
fn snapshot_transfer_to_3_started() -> (Cluster, Vec<Message>) {
    snapshot_transfer_to_3_started_with(false)
}

/// [`snapshot_transfer_to_3_started`], where with `stored_damaged` the leader's stored copy of
/// the snapshot has its last byte damaged (the metadata's checksum is that of the true data).
fn snapshot_transfer_to_3_started_with(stored_damaged: bool) -> (Cluster, Vec<Message>) {
    let mut c = cluster_tuned(3, |b| {
        b.compaction_margin_entries(0).snapshot_chunk_bytes_max(CHUNK_BYTES).snapshot_chunks_inflight_max(2)
    });
    c.elect(1);
    c.crash(3);
    for payload in [b"payload-00", b"payload-01", b"payload-02", b"payload-03", b"payload-04", b"payload-05"] {
        c.propose(1, payload).expect("leader accepts");
    }
    if stored_damaged {
        let data = common::encode_state(&c.applied_data(1));
        let node = c.node_mut(1);
        let meta = node.snapshot_meta(node.status().applied, raft_core::snapshot_crc32(&data)).expect("applied");
        let mut damaged = data.clone();
        *damaged.last_mut().expect("data") ^= 0xff;
        node.storage_mut().save_snapshot(&meta, &damaged).expect("memory storage");
        let (index, term) = node.compaction_point().expect("the log can be compacted");
        node.storage_mut().compact(index, term).expect("memory storage");
    } else {
        c.snapshot(1);
    }
    c.restart(3);
    assert!(c.node(1).storage().snapshot_data().len() as u64 > 6 * CHUNK_BYTES, "the snapshot spans many chunks");
    let held = common::tick_with(&mut c, |m| if chunk_to(m, 3).is_some() { Fate::Hold } else { Fate::Deliver });
    assert_eq!(chunk_offsets(&held), vec![0, CHUNK_BYTES], "the first window of chunks");
    (c, held)
}

/// Delivers `chunks` to node 3 and its acknowledgements to the leader; returns the chunks the
/// leader sends next.
fn deliver_window(c: &mut Cluster, chunks: Vec<Message>) -> Vec<Message> {
    let mut next = Vec::new();
    for chunk in chunks {
        let (result, acks) = step_and_take(c, chunk);
        result.expect("a chunk in order");
        for ack in acks {
            next.extend(step_and_take(c, ack).1);
        }
    }
    next
}

/// `chunk` with its data damaged (its checksum no longer matches).
fn damaged(chunk: &Message) -> Message {
    let mut damaged = chunk.clone();
    if let MessageBody::InstallSnapshot { data, .. } = &mut damaged.body {
        *data = data.iter().map(|b| b ^ 0xff).collect::<Vec<u8>>().into();
    }
    damaged
}

/// The chunks at 0 and 8 arrive and are acknowledged; of the next window (16 and 24), the
/// chunk at 16 arrives damaged. Node 3 refuses the snapshot and drops what it had. The refusal
/// alone must make the leader start again from offset 0, in the output that follows it,
/// although its window looked full.
///
/// Kills: in `progress.rs`, `SnapshotTransfer::restart` replaced by `()` (the leader sent
/// nothing after the refusal, and only its stall detector would have resent, heartbeats later).
#[test]
fn a_refused_snapshot_is_sent_again_from_the_start_at_once() {
    let (mut c, first) = snapshot_transfer_to_3_started();
    let next = deliver_window(&mut c, first);
    assert_eq!(chunk_offsets(&next), vec![2 * CHUNK_BYTES, 3 * CHUNK_BYTES], "the second window");
    let (result, refusal) = step_and_take(&mut c, damaged(&next[0]));
    assert!(matches!(result, Err(StepError::Malformed(Malformed::SnapshotChunkChecksum { .. }))), "{result:?}");
    let [refusal] = refusal.as_slice() else { panic!("one refusal expected: {refusal:?}") };
    assert!(matches!(refusal.body, MessageBody::SnapshotRefused { .. }));

    let (result, resent) = step_and_take(&mut c, refusal.clone());
    result.expect("a refusal of the transfer");
    assert_eq!(chunk_offsets(&resent), vec![0, CHUNK_BYTES], "the leader starts again from offset 0 at once");
}

/// After a restart from offset 0 (node 3 refused a damaged chunk), node 3 receives the new
/// chunks 0 and 8, then a delayed chunk at 24 from before the restart: it reports a gap at 16,
/// exactly where the leader will send next, which calls for no resend. The leader goes on with
/// 16 and 24. The new chunk at 16 is then lost, and node 3 reports a gap at 16 again when 24
/// arrives: now 16 was sent, so the leader must resend it at once.
///
/// Kills: in `progress.rs`, `SnapshotTransfer::on_report`, `next_offset < self.sent_offset`
/// changed to `<=` (the first report, at the sent offset, counted as a rewind to 16, and the
/// real gap at 16 was then taken for a second report of the same one: nothing was resent until
/// the stall detector acted).
#[test]
fn a_gap_reported_at_the_sent_offset_does_not_hide_a_later_gap_there() {
    let (mut c, first) = snapshot_transfer_to_3_started();
    let next = deliver_window(&mut c, first);
    let [at_16, at_24] = next.as_slice() else { panic!("the second window expected: {next:?}") };
    assert_eq!(chunk_offsets(&next), vec![2 * CHUNK_BYTES, 3 * CHUNK_BYTES]);
    let (_, refusal) = step_and_take(&mut c, damaged(at_16));
    let (_, restarted) = step_and_take(&mut c, refusal[0].clone());
    assert_eq!(chunk_offsets(&restarted), vec![0, CHUNK_BYTES]);

    // Node 3 takes the new chunks 0 and 8 (its acknowledgements are delayed), then the old 24.
    for chunk in restarted {
        step_and_take(&mut c, chunk).0.expect("a chunk in order");
    }
    let (_, report) = step_and_take(&mut c, at_24.clone());
    let [report] = report.as_slice() else { panic!("one report expected: {report:?}") };
    assert!(matches!(report.body, MessageBody::SnapshotResponse { next_offset: 16, gap: true, .. }), "{report:?}");
    let (_, sent) = step_and_take(&mut c, report.clone());
    assert_eq!(chunk_offsets(&sent), vec![2 * CHUNK_BYTES, 3 * CHUNK_BYTES], "the transfer goes on from 16");

    // The new chunk at 16 is lost; 24 arrives and node 3 reports the gap at 16.
    let (_, report) = step_and_take(&mut c, sent[1].clone());
    let [report] = report.as_slice() else { panic!("one report expected: {report:?}") };
    assert!(matches!(report.body, MessageBody::SnapshotResponse { next_offset: 16, gap: true, .. }), "{report:?}");
    let (_, resent) = step_and_take(&mut c, report.clone());
    assert_eq!(chunk_offsets(&resent).first(), Some(&(2 * CHUNK_BYTES)), "the lost chunk goes out again at once");
}

/// The leader's stored copy of the snapshot is damaged (its last byte), which the leader can
/// only find by reading the whole copy in order and checking it against the metadata. Its first
/// pass is cut short: node 3 refuses a chunk damaged on the way, and the leader starts again
/// from offset 0. Reading from offset 0 starts the check again, so at the end of the second pass
/// the leader finds its copy damaged and fails (the driver must stop it), rather than send the
/// damaged copy for ever.
///
/// Kills: in `progress.rs`, `SnapshotTransfer::read_back`, the match guard `offset == 0` replaced
/// by `false` (after the restart from 0 the check stayed off: the leader sent the damaged copy,
/// node 3 refused it, and so on, with no end).
#[test]
fn a_leader_reading_its_snapshot_again_from_the_start_finds_its_stored_copy_damaged() {
    let (mut c, first) = snapshot_transfer_to_3_started_with(true);
    let next = deliver_window(&mut c, first);
    let (_, refusal) = step_and_take(&mut c, damaged(&next[0]));
    let mut queue: std::collections::VecDeque<Message> = refusal.into();
    let mut failure = None;
    for _ in 0..200 {
        let Some(m) = queue.pop_front() else { break };
        let node = c.nodes.get_mut(&m.to).expect("a node of the cluster");
        let _ = node.step(m);
        match node.take_output() {
            Ok(output) => {
                node.storage_mut().write_output(&output).expect("memory storage");
                queue.extend(all_messages(&output));
            }
            Err(error) => {
                failure = Some((node.id(), error));
                break;
            }
        }
    }
    assert!(
        matches!(failure, Some((NodeId(1), raft_core::StorageError::SnapshotCorrupt { .. }))),
        "the leader found its copy damaged: {failure:?}"
    );
}

/// Node 3 restarts in the middle of a transfer and loses what it had received. The next chunk
/// it gets (at 16) makes it ask for offset 0: a gap below what it acknowledged. The leader does
/// not resend at once on such a report (it may be stale, and resending on every stale report
/// would multiply the chunks in flight); a late duplicate of an earlier acknowledgement (of
/// 16, exactly what the leader holds as acknowledged) changes nothing. When heartbeat answers
/// show the transfer stalled, the leader resends from the offset node 3 asked for, 0.
///
/// Kills: in `progress.rs`, `SnapshotTransfer::on_report`, `next_offset < self.acked_offset`
/// changed to `>` (the report below the acknowledged offset rewound the transfer at once), and
/// `next_offset > self.acked_offset` changed to `>=` (the duplicate acknowledgement of 16
/// cleared the reported offset, and the stalled transfer was resent from 16, which node 3 can
/// no longer take).
#[test]
fn after_a_follower_lost_its_chunks_a_stalled_transfer_resends_from_where_it_asked() {
    let (mut c, first) = snapshot_transfer_to_3_started();
    let (index, term) = match &first[0].body {
        MessageBody::InstallSnapshot { meta, .. } => (meta.index, meta.term),
        _ => unreachable!("a chunk"),
    };
    let next = deliver_window(&mut c, first);
    assert_eq!(chunk_offsets(&next), vec![2 * CHUNK_BYTES, 3 * CHUNK_BYTES]);
    c.crash(3);
    c.restart(3);

    let (_, report) = step_and_take(&mut c, next[0].clone());
    let [report] = report.as_slice() else { panic!("one report expected: {report:?}") };
    assert!(matches!(report.body, MessageBody::SnapshotResponse { next_offset: 0, gap: true, .. }), "{report:?}");
    let (_, sent) = step_and_take(&mut c, report.clone());
    assert_eq!(chunk_offsets(&sent), Vec::<u64>::new(), "no resend on a report below the acknowledged offset");

    let leader_term = c.node(1).term().0;
    let duplicate = MessageBody::SnapshotResponse { index, term, next_offset: 2 * CHUNK_BYTES, gap: false };
    let (_, sent) = step_and_take(&mut c, message(3, 1, leader_term, duplicate));
    assert_eq!(chunk_offsets(&sent), Vec::<u64>::new());

    let mut resent = Vec::new();
    for _ in 0..5 {
        c.node_mut(1).tick();
        let heartbeats = all_messages(&take(c.node_mut(1)));
        for heartbeat in heartbeats.into_iter().filter(|m| m.to == NodeId(3)) {
            for answer in step_and_take(&mut c, heartbeat).1 {
                resent.extend(chunk_offsets(&step_and_take(&mut c, answer).1));
            }
        }
        if !resent.is_empty() {
            break;
        }
    }
    assert_eq!(resent.first(), Some(&0), "the stalled transfer is resent from offset 0: {resent:?}");
}

/// A leader replicating to node 3 with everything acknowledged.
fn leader_replicating_to_3() -> Cluster {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, b"a").expect("leader accepts");
    assert!(c.node(1).is_replicating(NodeId(3)));
    c
}

fn append_answer(leader: &Cluster, result: AppendResult) -> Message {
    message(3, 1, leader.node(1).term().0, MessageBody::AppendResponse(result))
}

/// The transport reports node 3 unreachable: the leader falls back to probing it, just past
/// what node 3 acknowledged. Then a late answer from node 3 arrives, acknowledging that same
/// index: it shows node 3 alive and matching right below the next index, so the leader goes
/// back to replicating at once.
///
/// Kills: in `progress.rs`, `Progress::on_success`, the probe guard `moved ||
/// self.match_index.next() == self.next_index` changed to `moved && ...`, or its `==` to `!=`
/// (an acknowledgement that moved nothing left the leader probing).
#[test]
fn an_answer_at_the_match_index_after_a_report_of_unreachable_resumes_replication() {
    let mut c = leader_replicating_to_3();
    let matched = c.node(1).status().progress[&NodeId(3)].match_index;
    c.node_mut(1).report_unreachable(NodeId(3));
    assert!(!c.node(1).is_replicating(NodeId(3)), "probing after the report");
    let late = append_answer(&c, AppendResult::Success { match_index: matched });
    c.node_mut(1).step(late).expect("an answer of the term");
    assert!(c.node(1).is_replicating(NodeId(3)), "replicating again");
}

/// Node 3 (its answers are scripted here) acknowledged index 3; the leader then sent it 4..=7,
/// which it did not all keep: it rejects the append after 7, its log ending at 5. The leader
/// probes at 6. A late duplicate acknowledgement of index 3 then arrives: it tells nothing new,
/// so the leader keeps its probe at 6 and waits for its answer, instead of sending 4.. again.
///
/// Kills: in `progress.rs`, `Progress::on_success`, `index > self.match_index` changed to `>=`
/// (the duplicate counted as progress), or the probe guard replaced by `true`: either way the
/// leader went back to replicating from 4 and resent entries node 3 holds.
#[test]
fn a_duplicate_acknowledgement_while_probing_keeps_the_probe() {
    let mut c = leader_replicating_to_3();
    c.propose(1, b"b").expect("leader accepts");
    assert_eq!(c.node(1).status().progress[&NodeId(3)].match_index, Index(3));
    c.crash(3); // Its answers are scripted from now on.
    for payload in [&b"c"[..], b"d", b"e", b"f"] {
        c.propose(1, payload).expect("leader accepts");
    }
    assert_eq!(c.node(1).last_index(), Index(7));
    let reject = AppendResult::Reject { rejected_index: Index(7), hint: ConflictHint { term: None, index: Index(6) } };
    let reject = append_answer(&c, reject);
    c.node_mut(1).step(reject).expect("an answer of the term");
    let probe = all_messages(&take(c.node_mut(1)));
    let probe_at_6 = probe
        .iter()
        .any(|m| m.to == NodeId(3) && matches!(m.body, MessageBody::AppendEntries { prev_log_index: Index(5), .. }));
    assert!(probe_at_6, "the leader probes at 6: {probe:?}");

    let duplicate = append_answer(&c, AppendResult::Success { match_index: Index(3) });
    let _ = c.node_mut(1).step(duplicate);
    let output = take(c.node_mut(1));
    assert!(all_messages(&output).iter().all(|m| m.to != NodeId(3)), "nothing more to node 3: {output:?}");
    let progress = &c.node(1).status().progress[&NodeId(3)];
    assert_eq!((progress.state, progress.next_index), (raft_core::ProgressState::Probe, Index(6)));
}

/// While the leader streams a snapshot to node 3, answers to appends sent before the transfer
/// started arrive: an acknowledgement of what node 3 held, and a rejection. Neither concerns
/// the transfer: the leader's view of node 3 stays as it was, and nothing is sent (in
/// particular, the transfer does not start over).
///
/// Kills: in `progress.rs`, `Progress::on_success`, the snapshot guard replaced by `true` (the
/// stale acknowledgement ended the transfer, and the leader started it again from offset 0);
/// and in `Progress::on_reject`, deleting the `ProgressState::Snapshot` arm (the stale
/// rejection moved the next index during the transfer).
#[test]
fn answers_to_appends_from_before_a_snapshot_transfer_change_nothing() {
    let (mut c, _first) = snapshot_transfer_to_3_started();
    assert!(c.node(1).is_sending_snapshot(NodeId(3)));
    let before = c.node(1).status().progress[&NodeId(3)].clone();
    let matched = before.match_index;
    let stale_answers = [
        AppendResult::Success { match_index: matched },
        AppendResult::Reject {
            rejected_index: Index(matched.0 + 4),
            hint: ConflictHint { term: None, index: Index(matched.0 + 4) },
        },
    ];
    for answer in stale_answers {
        let answer = append_answer(&c, answer);
        let _ = c.node_mut(1).step(answer);
        let output = take(c.node_mut(1));
        assert!(all_messages(&output).iter().all(|m| m.to != NodeId(3)), "nothing sent to node 3: {output:?}");
        assert!(c.node(1).is_sending_snapshot(NodeId(3)));
        let after = &c.node(1).status().progress[&NodeId(3)];
        assert_eq!((after.match_index, after.next_index), (before.match_index, before.next_index));
    }
}

/// A follower forwarded a read to its leader; the leader's answer arrives with an index the
/// follower has already applied. The read is complete, and that is the only thing the node has
/// to hand out: `has_output` must say so, or a driver that waits for it would sit on the read.
///
/// Kills: in `read.rs`, `Reads::has_output` replaced by `false` (`Raft::has_output` then missed
/// completed reads).
#[test]
fn a_completed_forwarded_read_is_output_to_take() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, b"a").expect("leader accepts");
    let applied = c.node(2).status().applied;
    assert_eq!(applied, c.node(1).commit_index(), "node 2 applied everything");
    c.node_mut(2).read(7, ReadMode::ReadIndex).expect("forwarded to the leader");
    let forwarded = all_messages(&take(c.node_mut(2)));
    let [ask] = forwarded.as_slice() else { panic!("one request expected: {forwarded:?}") };
    let MessageBody::ReadIndexRequest { request, .. } = ask.body else { panic!("a read request: {ask:?}") };
    assert!(!c.node(2).has_output());

    let answer = MessageBody::ReadIndexResponse { request, index: Some(applied) };
    let term = c.node(1).term().0;
    c.node_mut(2).step(message(1, 2, term, answer)).expect("the leader's answer");
    assert!(c.node(2).has_output(), "the completed read is output");
    let output = take(c.node_mut(2));
    assert_eq!(output.reads, vec![raft_core::ReadState { id: 7, result: Ok(applied) }]);
}

/// A leader (check-quorum off, so it keeps leading without answers) takes a read: a heartbeat
/// round goes out for it. Node 2's answer to that round is delayed while the leader sends 255
/// more rounds, one per tick; node 3 never answers. A leader remembers its latest 256 rounds
/// (`ROUNDS_REMEMBERED` in `read.rs`), so the late answer is to a round it still knows: with
/// the leader's own, it makes a quorum, and the read completes.
///
/// Kills: in `read.rs`, `next_round`, `rounds_sent_at.len() > ROUNDS_REMEMBERED` changed to
/// `>=` or `==` (only 255 rounds were remembered, the late answer was dropped as unknown, and
/// the read stayed pending).
#[test]
fn a_late_answer_to_the_oldest_remembered_heartbeat_round_confirms_a_read() {
    let mut c = Cluster::with(3, false, false);
    c.elect(1);
    let commit = c.node(1).commit_index();
    c.node_mut(1).read(5, ReadMode::ReadIndex).expect("the leader takes reads");
    let round = all_messages(&take(c.node_mut(1)));
    let heartbeat = round
        .into_iter()
        .find(|m| m.to == NodeId(2) && matches!(m.body, MessageBody::Heartbeat { .. }))
        .expect("a heartbeat round for the read");
    c.node_mut(2).step(heartbeat).expect("a heartbeat of the leader");
    let answer = all_messages(&take(c.node_mut(2)));
    let [answer] = answer.as_slice() else { panic!("one answer expected: {answer:?}") };
    assert!(matches!(answer.body, MessageBody::HeartbeatResponse { .. }));

    for _ in 0..255 {
        c.node_mut(1).tick();
        let output = take(c.node_mut(1));
        assert_eq!(output.reads, vec![], "nobody answers these rounds");
    }
    assert!(c.node(1).is_leader());
    c.node_mut(1).step(answer.clone()).expect("an answer of the term");
    let output = take(c.node_mut(1));
    assert_eq!(output.reads, vec![raft_core::ReadState { id: 5, result: Ok(commit) }]);
}

/// A leader elected at the very start of its clock (tick 0) takes a lease read before any
/// heartbeat round was answered. It holds no lease yet (no quorum has answered it), so it must
/// not serve the read at once: a heartbeat round goes out, and the read completes once a quorum
/// answers it.
///
/// Kills: in `read.rs`, `lease_holds`, `start > 0` changed to `start >= 0` (with no round
/// answered the quorum's tick is 0, and the lease was taken to run from tick 0: the read was
/// served at once, without any quorum, while an earlier leader's lease might still hold).
#[test]
fn a_leader_serves_no_lease_read_before_a_quorum_answered_a_round() {
    let mut c = cluster_tuned(3, |b| b.check_quorum(true).lease_reads(true));
    c.elect(1);
    let commit = c.node(1).commit_index();
    c.node_mut(1).read(9, ReadMode::Lease).expect("the leader takes lease reads");
    let output = take(c.node_mut(1));
    assert_eq!(output.reads, vec![], "no lease yet: not served at once");
    let round = all_messages(&output);
    assert!(round.iter().any(|m| matches!(m.body, MessageBody::Heartbeat { .. })), "a heartbeat round: {round:?}");
    c.in_flight.extend(round);
    c.deliver_all();
    assert_eq!(c.reads[&NodeId(1)], vec![raft_core::ReadState { id: 9, result: Ok(commit) }]);
}

/// A follower has committed index 2 (term 2). An append whose previous entry is exactly that
/// index, but with another term (1), does not match our log: no honest leader sends it, and its
/// entries must not be taken. It is rejected like any append that fails the consistency check.
///
/// Kills: in `replication.rs`, `on_append_entries`, `prev_log_index < committed` changed to
/// `<=` (an append at the commit index was checked against our own committed entry instead of
/// the term it names, so it passed, and its entry was appended and acknowledged).
#[test]
fn an_append_whose_previous_entry_contradicts_the_committed_one_is_not_taken() {
    let hard_state = HardState { term: Term(2), vote: None, commit: Index(2) };
    let storage = storage_with_log(&ids(3), &[1, 2], hard_state);
    let mut node = Raft::new(NodeId(2), options(NodeId(2), true, true), storage).expect("memory storage");
    let _ = take(&mut node);

    let append = MessageBody::AppendEntries {
        prev_log_index: Index(2),
        prev_log_term: Term(1),
        entries: vec![common::noop(3, 3)],
        commit: Index(2),
    };
    let _ = node.step(message(1, 2, 3, append));
    assert_eq!(node.last_index(), Index(2), "nothing appended");
    let answers: Vec<MessageBody> = all_messages(&take(&mut node)).into_iter().map(|m| m.body).collect();
    assert!(
        matches!(
            answers.as_slice(),
            [MessageBody::AppendResponse(AppendResult::Reject { rejected_index: Index(2), .. })]
        ),
        "rejected at index 2: {answers:?}"
    );
}

/// Node 2, cut off while the leader commits a new entry, forwards two reads; the leader answers
/// both with its commit index, which node 2 has not applied yet, so both wait to be served.
/// Reads waiting for the apply still count toward `reads_pending_max`: a third read is refused.
///
/// Kills: in `read.rs`, `Reads::pending_count`, the `+` before `self.ready.len()` changed to `-`
/// (the waiting reads were subtracted: the count underflowed).
#[test]
fn reads_waiting_for_the_apply_count_toward_the_pending_limit() {
    let mut c = cluster_tuned(3, |b| b.reads_pending_max(2));
    c.elect(1);
    c.isolate(2);
    c.propose(1, b"a").expect("leader accepts");
    let commit = c.node(1).commit_index();
    assert!(c.node(2).status().applied < commit, "node 2 has not applied the new entry");
    let term = c.node(1).term().0;
    for id in [1, 2] {
        c.node_mut(2).read(id, ReadMode::ReadIndex).expect("forwarded to the leader");
        let forwarded = all_messages(&take(c.node_mut(2)));
        let [ask] = forwarded.as_slice() else { panic!("one request expected: {forwarded:?}") };
        let MessageBody::ReadIndexRequest { request, .. } = ask.body else { panic!("a read request: {ask:?}") };
        let answer = MessageBody::ReadIndexResponse { request, index: Some(commit) };
        c.node_mut(2).step(message(1, 2, term, answer)).expect("the leader's answer");
    }
    assert_eq!(take(c.node_mut(2)).reads, vec![], "both wait for the apply");
    assert_eq!(c.node_mut(2).read(3, ReadMode::ReadIndex), Err(raft_core::ReadError::TooManyPending));
}

/// Node 2 of voters `initial`, whose log holds a no-op of term 1 at index 1 and then one
/// membership entry of term 1 per element of `memberships`, committed up to `commit`.
fn follower_with_memberships(initial: &Membership, memberships: &[&Membership], commit: Index) -> Raft<MemStorage> {
    let mut entries = vec![common::noop(1, 1)];
    for (index, membership) in (2..).zip(memberships) {
        let payload = raft_core::EntryPayload::Membership((*membership).clone());
        entries.push(raft_core::Entry { index: Index(index), term: Term(1), payload });
    }
    let mut storage = MemStorage::new(initial.clone());
    storage.append(&entries).expect("consecutive entries");
    storage.set_hard_state(HardState { term: Term(1), vote: None, commit });
    Raft::new(NodeId(2), options(NodeId(2), false, false), storage).expect("memory storage")
}

/// The leader of term 2 (node 3) replaces `node`'s last entry with a no-op of its term, keeping
/// the entries before it and the commit index.
fn replace_last_with_noop(node: &mut Raft<MemStorage>) {
    let last = node.last_index().0;
    let commit = node.commit_index();
    let append = MessageBody::AppendEntries {
        prev_log_index: Index(last - 1),
        prev_log_term: Term(1),
        entries: vec![common::noop(last, 2)],
        commit,
    };
    node.step(message(3, 2, 2, append)).expect("a valid append");
}
