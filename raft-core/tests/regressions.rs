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
        body: MessageBody::VoteRequest {
            pre_vote: false,
            last_log_index: Index(1),
            last_log_term: Term(1),
            transfer: false,
        },
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

/// The same for a later term learned from a vote refusal (found by simulator seed 8493 with
/// membership changes and pre-vote off): a hopeless candidate far behind kept raising the term,
/// and each refusal it sent reset the viable candidate's timer, which then never campaigned
/// before it: no leader for the whole liveness phase.
#[test]
fn learning_a_later_term_from_a_refusal_keeps_the_election_timer_running() {
    let voters = ids(3);
    let mut node = node_with_log(NodeId(1), &voters, &[1, 1], 1, options(NodeId(1), false, false));
    let timeout = node.randomized_election_ticks();
    for _ in 0..timeout - 1 {
        node.tick();
    }
    let refusal = Message {
        from: NodeId(2),
        to: NodeId(1),
        term: Term(5),
        body: MessageBody::VoteResponse { pre_vote: false, granted: false },
    };
    let _ = node.step(refusal);
    assert_eq!((node.term(), node.role()), (Term(5), Role::Follower));
    node.tick();
    assert_eq!((node.role(), node.term()), (Role::Candidate, Term(6)), "the timeout still fires on time");
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

// Found by a fresh-eyes review of the core (each fails before its fix).

fn append(from: u64, to: u64, term: u64, prev: (u64, u64), entries: Vec<raft_core::Entry>, commit: u64) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body: MessageBody::AppendEntries {
            prev_log_index: Index(prev.0),
            prev_log_term: Term(prev.1),
            entries,
            commit: Index(commit),
        },
    }
}

fn persist(node: &mut Raft<MemStorage>, output: &raft_core::Output) {
    if let Some(hard_state) = output.hard_state {
        node.storage_mut().set_hard_state(hard_state);
    }
    node.storage_mut().append(&output.entries).expect("appendable");
    if let Some(last) = output.entries.last() {
        node.on_persisted(last.index, last.term);
    }
}

/// An append below our commit index whose entry at the commit index disagrees with ours (or
/// whose rest has a lower term) is malformed: before the fix it put decreasing terms in the log
/// (or panicked the invariant check).
#[test]
fn an_append_contradicting_the_committed_entry_is_refused() {
    let voters = ids(3);
    let mut node = node_with_log(NodeId(2), &voters, &[], 0, options(NodeId(2), true, true));
    node.step(append(1, 2, 2, (0, 0), vec![common::noop(1, 2)], 1)).expect("valid");
    let output = node.take_output().expect("memory");
    persist(&mut node, &output);
    assert_eq!(node.commit_index(), Index(1));
    let garbage = append(1, 2, 2, (0, 0), vec![common::noop(1, 1), common::noop(2, 1)], 1);
    assert_eq!(
        node.step(garbage),
        Err(raft_core::StepError::Malformed(raft_core::Malformed::ConflictsWithCommitted(Index(1))))
    );
    let output = node.take_output().expect("memory");
    assert!(output.entries.is_empty(), "nothing appended");
}

/// Term 0 exists only before any election: a vote request or append in term 0 is malformed
/// (before the fix the vote was granted and persisted in term 0, tripping the invariants).
#[test]
fn messages_in_term_zero_are_refused() {
    let voters = ids(3);
    let mut node = node_with_log(NodeId(1), &voters, &[], 0, options(NodeId(1), true, true));
    let vote = Message {
        from: NodeId(2),
        to: NodeId(1),
        term: Term(0),
        body: MessageBody::VoteRequest {
            pre_vote: false,
            last_log_index: Index(0),
            last_log_term: Term(0),
            transfer: false,
        },
    };
    assert_eq!(node.step(vote), Err(raft_core::StepError::Malformed(raft_core::Malformed::TermZero)));
    let zero_append = append(2, 1, 0, (0, 0), vec![common::noop(1, 0)], 1);
    assert_eq!(node.step(zero_append), Err(raft_core::StepError::Malformed(raft_core::Malformed::TermZero)));
    assert_eq!((node.status().vote, node.commit_index(), node.last_index()), (None, Index(0), Index(0)));
}

/// The async-write ABA (etcd-io/raft#8) with an identical re-write: W1 [1@2,2@2], W2 [1@3],
/// W3 [1@2,2@2,3@4]. The report for W1 must not make entries stable that W2, still in flight,
/// will overwrite on disk; before the fix the follower handed 1@2 and 2@2 out for applying.
#[test]
fn a_report_for_an_older_identical_write_does_not_cover_a_pending_truncation() {
    let voters = ids(5);
    let mut node = node_with_log(NodeId(2), &voters, &[], 0, options(NodeId(2), true, true));
    node.step(append(1, 2, 2, (0, 0), vec![common::noop(1, 2), common::noop(2, 2)], 0)).expect("w1");
    let w1 = node.take_output().expect("memory");
    node.step(append(3, 2, 3, (0, 0), vec![common::noop(1, 3)], 0)).expect("w2");
    let w2 = node.take_output().expect("memory");
    let w3_entries = vec![common::noop(1, 2), common::noop(2, 2), common::noop(3, 4)];
    node.step(append(1, 2, 4, (0, 0), w3_entries, 2)).expect("w3");
    let w3 = node.take_output().expect("memory");
    for write in [&w1, &w2, &w3] {
        node.storage_mut().append(&write.entries).expect("appendable");
    }
    node.on_persisted(Index(2), Term(2)); // W1 only
    assert_eq!(node.status().stable_last_index, Index(0), "W2 still rewrites index 1");
    assert!(node.take_output().expect("memory").committed.is_empty());
    node.on_persisted(Index(1), Term(3)); // W2
    node.on_persisted(Index(3), Term(4)); // W3
    assert_eq!(node.status().stable_last_index, Index(3));
    let applied: Vec<u64> = node.take_output().expect("memory").committed.iter().map(|e| e.index.0).collect();
    assert_eq!(applied, vec![1, 2]);
}

/// A follower that lost acknowledged entries rejects at or below the leader's match index.
/// Before the fix, each rejection was answered at once and every heartbeat started one more
/// endless append/reject loop; now such rejections are stale and the traffic stays bounded.
#[test]
fn a_follower_that_lost_acknowledged_entries_causes_no_message_storm() {
    let mut c = common::Cluster::new(3);
    c.elect(1);
    for _ in 0..5 {
        c.propose(1, b"x").expect("leader");
    }
    c.ticks(2);
    let last = c.node(1).last_index();
    c.crash(3);
    let mut storage = c.node(3).storage().clone();
    storage.truncate_after(Index(last.0 - 2));
    let hard_state = storage.hard_state();
    storage.set_hard_state(raft_core::HardState { commit: Index(last.0 - 2), ..hard_state });
    let node = Raft::new(NodeId(3), c.options[&NodeId(3)].clone(), storage).expect("memory");
    c.nodes.insert(NodeId(3), node);
    c.down.remove(&NodeId(3));
    c.node_mut(1).propose(Bytes::from_static(b"y")).expect("leader");
    for _ in 0..6 {
        for id in 1..=3 {
            c.node_mut(id).tick();
        }
        c.process_all();
        let mut delivered = 0;
        while delivered < 1000 && c.deliver_one() {
            delivered += 1;
        }
        c.process_all();
        assert!(delivered < 1000, "message storm: {delivered} messages in one tick");
    }
}

/// An entry at the end of the index space would make the log's next index saturate (the fuzz
/// target node_inputs reached the same through a snapshot at `u64::MAX`, tripping "committed
/// beyond last index"): it is malformed.
#[test]
fn an_entry_at_the_end_of_the_index_space_is_refused() {
    let voters = ids(3);
    let mut node = node_with_log(NodeId(1), &voters, &[], 1, options(NodeId(1), true, true));
    let end = u64::MAX;
    let garbage = append(2, 1, 1, (end - 1, 1), vec![common::noop(end, 1)], 0);
    let refused = Err(raft_core::StepError::Malformed(raft_core::Malformed::IndexAtEnd(Index::END)));
    assert_eq!(node.step(garbage), refused);
    assert_eq!(node.last_index(), Index(0));
}

/// Found by the fuzz target node_inputs: a follower that completes snapshot A and then, before
/// its driver takes the output, gets the first chunk of another snapshot B must not hand out
/// B's chunk with A's install (the driver writes every chunk before the install, so B's chunk
/// would replace the staged A and the install would fail).
#[test]
fn a_new_transfer_waits_until_a_finished_snapshot_is_handed_out() {
    use raft_core::SnapshotMeta;
    use raft_storage::LogStore;
    let voters = ids(3);
    let mut node = node_with_log(NodeId(1), &voters, &[], 0, options(NodeId(1), true, true));
    let chunk = |index: u64, done: bool| Message {
        from: NodeId(2),
        to: NodeId(1),
        term: Term(1),
        body: MessageBody::install_snapshot(
            SnapshotMeta {
                index: Index(index),
                term: Term(1),
                membership: Membership::new(voters.clone()),
                data_crc32: raft_core::snapshot_crc32(b"state"),
            },
            0,
            Bytes::from_static(b"state"),
            done,
        ),
    };
    node.step(chunk(5, true)).expect("a valid chunk");
    let _ = node.step(chunk(6, false));
    let output = node.take_output().expect("memory");
    assert_eq!(output.install_snapshot.as_ref().map(|meta| meta.index), Some(Index(5)));
    assert!(output.snapshot_chunks.iter().all(|c| c.meta.index == Index(5)), "only the finished snapshot's chunks");
    node.storage_mut().write_output(&output).expect("the staged snapshot is installed");
    node.on_persisted(Index(5), Term(1));
    node.step(chunk(6, false)).expect("once handed out, a new transfer starts");
    let output = node.take_output().expect("memory");
    assert_eq!(output.snapshot_chunks.len(), 1);
}

/// A node whose store starts from membership `base` and holds no-ops of the given terms, with a
/// membership entry at `change` (index, membership) if given.
fn node_with_membership(
    id: u64,
    base: &Membership,
    terms: &[u64],
    change: Option<(usize, Membership)>,
    term: u64,
) -> Raft<MemStorage> {
    let mut storage = MemStorage::new(base.clone());
    let mut entries: Vec<raft_core::Entry> =
        terms.iter().enumerate().map(|(i, &t)| common::noop(i as u64 + 1, t)).collect();
    if let Some((at, membership)) = change {
        entries[at - 1].payload = raft_core::EntryPayload::Membership(membership);
    }
    storage.append(&entries).expect("consecutive entries");
    storage.set_hard_state(raft_core::HardState { term: Term(term), vote: None, commit: Index(0) });
    Raft::new(NodeId(id), options(NodeId(id), false, true), storage).expect("memory storage")
}

fn members(voters: &[u64], voters_outgoing: &[u64], learners: &[u64]) -> Membership {
    let set = |list: &[u64]| list.iter().copied().map(NodeId).collect();
    Membership {
        voters_incoming: set(voters),
        voters_outgoing: set(voters_outgoing),
        learners: set(learners),
        learners_next: Default::default(),
    }
}

/// Found by simulator seed 131265 (pre-vote off, check-quorum on, membership changes):
/// node 1 has the newest log, whose last entry makes {1} joint with {1,3}; node 2 is a
/// learner in both, so it never campaigns. Node 3 has a stale log, the older membership {2,3}
/// with node 1 a learner, and a much higher term. Node 1 campaigns only towards node 3; node 3
/// campaigns only towards node 2, which refuses it (stale log). Before the fix node 3 dropped
/// node 1's lower-term vote requests unanswered, nothing ever told node 1 the higher term, and
/// no leader was ever elected. Now node 3 refuses with its term, node 1 moves up and wins the
/// next election with node 3's vote.
#[test]
fn a_stale_candidate_learns_the_term_from_a_peer_that_never_sends_to_it() {
    let newer_base = members(&[1], &[], &[2]);
    let joint = members(&[1, 3], &[1], &[2]);
    let newest_log = [1, 2, 2];
    let nodes = [
        node_with_membership(1, &newer_base, &newest_log, Some((2, joint.clone())), 2),
        node_with_membership(2, &newer_base, &newest_log, Some((2, joint)), 2),
        node_with_membership(3, &members(&[2, 3], &[], &[1]), &[1], None, 60),
    ];
    let mut c = common::Cluster::from_nodes(nodes.into_iter().map(|n| (n.id(), n)).collect());
    // Node 1's term cannot climb past 60 in 200 ticks on its own (one campaign per 10+ ticks).
    let leader = c.tick_until_leader(200);
    assert_eq!(leader, Some(1), "node 1 leads once it learns the term; terms: {:?}", terms(&c));
    assert!(c.node(1).term() > Term(60));
    let proposed = c.propose(1, b"x").expect("the leader takes a proposal");
    c.ticks(5);
    assert_eq!(c.node(1).commit_index(), proposed, "node 1 commits with node 3");
}

fn terms(c: &common::Cluster) -> Vec<(u64, Term, Role)> {
    c.nodes.iter().map(|(id, n)| (id.0, n.term(), n.role())).collect()
}

/// The unit behind the test above: a stale (non-pre-vote) vote request is refused with our term
/// (Raft §5.1), and refusing changes nothing of ours.
#[test]
fn a_stale_vote_request_is_refused_with_the_current_term() {
    let voters = ids(3);
    let mut node = node_with_log(NodeId(3), &voters, &[1], 7, options(NodeId(3), false, true));
    let request = Message {
        from: NodeId(1),
        to: NodeId(3),
        term: Term(4),
        body: MessageBody::VoteRequest {
            pre_vote: false,
            last_log_index: Index(5),
            last_log_term: Term(3),
            transfer: false,
        },
    };
    let before = node.status();
    assert_eq!(
        node.step(request),
        Err(raft_core::StepError::Ignored(raft_core::Ignored::StaleTerm {
            message_term: Term(4),
            current_term: Term(7)
        }))
    );
    assert_eq!(node.status(), before);
    let output = node.take_output().expect("memory");
    let refusal = Message {
        from: NodeId(3),
        to: NodeId(1),
        term: Term(7),
        body: MessageBody::VoteResponse { pre_vote: false, granted: false },
    };
    assert_eq!(output.messages_after_persist, vec![refusal]);
}
