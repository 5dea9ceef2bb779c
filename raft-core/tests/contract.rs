//! Focused tests of the driving contract in raft-core's crate docs (what may be sent before a
//! write is durable, when a leader counts itself, when committed entries are handed out), of
//! proposal limits, of input validation (typed errors, no panics, no state change), of batching
//! and flow control, and of restarts from storage.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use raft_core::{
    AppendResult, Entry, EntryPayload, HardState, Index, Malformed, Membership, Message, MessageBody, NodeId, Options,
    OptionsBuilder, Output, ProgressState, ProposeError, Raft, Role, Status, StepError, Term,
};
use raft_storage::MemStorage;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn base_options(id: u64) -> OptionsBuilder {
    Options::builder().election_ticks(10).heartbeat_ticks(1).rng_seed(id)
}

fn voters(n: u64) -> Vec<NodeId> {
    (1..=n).map(NodeId).collect()
}

fn node_with(id: u64, n: u64, builder: OptionsBuilder) -> Raft<MemStorage> {
    let storage = MemStorage::new(Membership::new(voters(n)));
    Raft::new(NodeId(id), builder.build().expect("valid options"), storage).expect("memory storage never fails")
}

fn noop(index: u64, term: u64) -> Entry {
    Entry { index: Index(index), term: Term(term), payload: EntryPayload::Noop }
}

fn normal(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry { index: Index(index), term: Term(term), payload: EntryPayload::Normal(Bytes::copy_from_slice(data)) }
}

fn message(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message { from: NodeId(from), to: NodeId(to), term: Term(term), body }
}

fn append(prev: (u64, u64), entries: Vec<Entry>, commit: u64) -> MessageBody {
    MessageBody::AppendEntries {
        prev_log_index: Index(prev.0),
        prev_log_term: Term(prev.1),
        entries,
        commit: Index(commit),
    }
}

fn take(node: &mut Raft<MemStorage>) -> Output {
    let output = node.take_output().expect("memory storage never fails");
    node.check_invariants();
    output
}

/// Step 3 of the contract: persist the hard state and the entries (MemStorage is durable at once).
fn persist(node: &mut Raft<MemStorage>, output: &Output) {
    if let Some(hard_state) = output.hard_state {
        node.storage_mut().set_hard_state(hard_state);
    }
    node.storage_mut().append(&output.entries).expect("the core hands out appendable entries");
}

/// Steps 3 and 6: persist, then report durability of the last entry.
fn persist_and_report(node: &mut Raft<MemStorage>, output: &Output) {
    persist(node, output);
    if let Some(last) = output.entries.last() {
        node.on_persisted(last.index, last.term);
    }
}

fn is_append(m: &Message) -> bool {
    matches!(m.body, MessageBody::AppendEntries { .. })
}

fn append_entries(m: &Message) -> &[Entry] {
    match &m.body {
        MessageBody::AppendEntries { entries, .. } => entries,
        other => panic!("not an append: {other:?}"),
    }
}

fn batch_bytes(entries: &[Entry]) -> u64 {
    entries.iter().map(Entry::size_bytes).sum()
}

/// A small synchronous network that follows the contract for every node: persist, report, apply,
/// then send both message lists. Tests reach into the nodes to deviate from it on purpose.
struct Net {
    nodes: BTreeMap<NodeId, Raft<MemStorage>>,
    queue: VecDeque<Message>,
    applied: BTreeMap<NodeId, Vec<Entry>>,
}

impl Net {
    fn new(n: u64, tune: impl Fn(OptionsBuilder) -> OptionsBuilder) -> Net {
        let nodes = voters(n).into_iter().map(|id| (id, node_with(id.0, n, tune(base_options(id.0))))).collect();
        Net { nodes, queue: VecDeque::new(), applied: voters(n).into_iter().map(|id| (id, Vec::new())).collect() }
    }

    fn node(&self, id: u64) -> &Raft<MemStorage> {
        &self.nodes[&NodeId(id)]
    }

    fn node_mut(&mut self, id: u64) -> &mut Raft<MemStorage> {
        self.nodes.get_mut(&NodeId(id)).expect("known node")
    }

    fn drive(&mut self, id: u64) {
        for _ in 0..100 {
            let node = self.node_mut(id);
            if !node.has_output() {
                return;
            }
            let output = take(node);
            persist_and_report(node, &output);
            node.check_invariants();
            self.applied.get_mut(&NodeId(id)).expect("known node").extend(output.committed);
            self.queue.extend(output.messages);
            self.queue.extend(output.messages_after_persist);
        }
        panic!("node {id} never ran out of output");
    }

    fn drive_all(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().map(|id| id.0).collect();
        for id in ids {
            self.drive(id);
        }
    }

    /// Delivers every queued message (and what they cause) in FIFO order until quiet.
    fn deliver_all(&mut self) {
        self.deliver_all_except(|_| false);
    }

    /// Like [`Net::deliver_all`] but drops the messages `drop` selects.
    fn deliver_all_except(&mut self, drop: impl Fn(&Message) -> bool) {
        self.drive_all();
        for _ in 0..100_000 {
            let Some(m) = self.queue.pop_front() else { return };
            if drop(&m) || !self.nodes.contains_key(&m.to) {
                continue;
            }
            let to = m.to.0;
            let _ = self.node_mut(to).step(m);
            self.drive(to);
        }
        panic!("the network never went quiet");
    }

    fn tick_all(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().map(|id| id.0).collect();
        for id in ids {
            self.node_mut(id).tick();
        }
        self.deliver_all();
    }

    fn elect(&mut self, id: u64) {
        self.node_mut(id).campaign();
        self.deliver_all();
        assert_eq!(self.node(id).role(), Role::Leader, "node {id} failed to win");
    }

    fn applied_indexes(&self, id: u64) -> Vec<u64> {
        self.applied[&NodeId(id)].iter().map(|e| e.index.0).collect()
    }
}

/// Steps a bad message and checks the typed error, that nothing changed and nothing is to do.
fn assert_refused(node: &mut Raft<MemStorage>, m: Message, expected: StepError) {
    let before: Status = node.status();
    let had_output = node.has_output();
    let result = node.step(m.clone());
    assert_eq!(result, Err(expected), "for {m:?}");
    assert_eq!(node.status(), before, "state changed by {m:?}");
    assert_eq!(node.has_output(), had_output, "output queued by {m:?}");
    node.check_invariants();
}

// ---------------------------------------------------------------------------------------------
// What may be sent before a write is durable
// ---------------------------------------------------------------------------------------------

#[test]
fn a_vote_is_sent_only_after_the_vote_is_persisted_in_the_same_output() {
    let mut net = Net::new(3, |b| b.pre_vote(false));
    net.node_mut(1).campaign();
    let candidate_output = take(net.node_mut(1));
    assert_eq!(candidate_output.hard_state, Some(HardState { term: Term(1), vote: Some(NodeId(1)), commit: Index(0) }));
    assert!(candidate_output.messages.is_empty(), "vote requests sent before the term is durable");
    let requests = candidate_output.messages_after_persist;
    assert_eq!(requests.len(), 2);
    let request = requests.into_iter().find(|m| m.to == NodeId(2)).expect("a request to node 2");
    assert!(matches!(request.body, MessageBody::VoteRequest { pre_vote: false, .. }));

    let voter = net.node_mut(2);
    voter.step(request).expect("a valid vote request");
    let voter_output = take(voter);
    assert_eq!(voter_output.hard_state, Some(HardState { term: Term(1), vote: Some(NodeId(1)), commit: Index(0) }));
    assert!(voter_output.messages.is_empty(), "a vote may not leave before it is durable");
    assert_eq!(
        voter_output.messages_after_persist,
        vec![message(2, 1, 1, MessageBody::VoteResponse { pre_vote: false, granted: true })]
    );
}

#[test]
fn a_candidate_asks_for_votes_only_after_its_new_term_is_persisted() {
    let mut net = Net::new(3, |b| b.pre_vote(true));
    net.node_mut(1).campaign();
    let pre_candidate_output = take(net.node_mut(1));
    assert_eq!(pre_candidate_output.hard_state, None, "a pre-vote changes no durable state");
    assert!(pre_candidate_output.messages.is_empty());
    let pre_request =
        pre_candidate_output.messages_after_persist.into_iter().find(|m| m.to == NodeId(2)).expect("to 2");
    assert_eq!(pre_request.term, Term(1));

    net.node_mut(2).step(pre_request).expect("a valid pre-vote request");
    let pre_vote_output = take(net.node_mut(2));
    assert_eq!(pre_vote_output.hard_state, None, "granting a pre-vote changes no durable state");
    let grant = pre_vote_output.messages_after_persist.into_iter().next().expect("a pre-vote answer");
    assert_eq!(grant.body, MessageBody::VoteResponse { pre_vote: true, granted: true });

    net.node_mut(1).step(grant).expect("a pre-vote grant");
    assert_eq!(net.node(1).role(), Role::Candidate);
    let candidate_output = take(net.node_mut(1));
    assert_eq!(candidate_output.hard_state, Some(HardState { term: Term(1), vote: Some(NodeId(1)), commit: Index(0) }));
    assert!(candidate_output.messages.is_empty());
    assert_eq!(candidate_output.messages_after_persist.len(), 2);
    assert!(
        candidate_output
            .messages_after_persist
            .iter()
            .all(|m| { m.term == Term(1) && matches!(m.body, MessageBody::VoteRequest { pre_vote: false, .. }) })
    );
}

#[test]
fn acknowledgements_wait_for_their_entries_while_leader_appends_leave_at_once() {
    let mut net = Net::new(3, |b| b);
    net.elect(1);
    let index = net.node_mut(1).propose(Bytes::from_static(b"x")).expect("the leader accepts");
    assert_eq!(index, Index(2));
    let leader_output = take(net.node_mut(1));
    let x = normal(2, 1, b"x");
    assert_eq!(leader_output.entries, vec![x.clone()]);
    assert!(leader_output.messages_after_persist.is_empty(), "{leader_output:?}");
    let appends: Vec<&Message> = leader_output.messages.iter().filter(|m| is_append(m)).collect();
    assert_eq!(appends.len(), 2, "one append per follower, before the leader's own write: {leader_output:?}");
    for m in &appends {
        assert_eq!(m.body, append((1, 1), vec![x.clone()], 1));
    }
    let to_two = appends.into_iter().find(|m| m.to == NodeId(2)).expect("to 2").clone();

    // The leader's own write is still not durable; the follower acknowledges only with its write.
    net.node_mut(2).step(to_two).expect("a valid append");
    let follower_output = take(net.node_mut(2));
    assert_eq!(follower_output.entries, vec![x]);
    assert!(follower_output.messages.is_empty(), "an acknowledgement may not leave before its entries");
    assert_eq!(
        follower_output.messages_after_persist,
        vec![message(2, 1, 1, MessageBody::AppendResponse(AppendResult::Success { match_index: Index(2) }))]
    );
}

// ---------------------------------------------------------------------------------------------
// The leader's own durability, and handing out committed entries
// ---------------------------------------------------------------------------------------------

#[test]
fn a_leader_counts_its_own_copy_only_after_on_persisted() {
    let mut net = Net::new(3, |b| b);
    net.elect(1);
    net.node_mut(1).propose(Bytes::from_static(b"x")).expect("the leader accepts");
    let leader_output = take(net.node_mut(1));
    let to_two = leader_output.messages.iter().find(|m| m.to == NodeId(2) && is_append(m)).expect("to 2").clone();

    // Only node 2 holds x durably: 1 of 3.
    net.node_mut(2).step(to_two).expect("a valid append");
    let follower_output = take(net.node_mut(2));
    persist_and_report(net.node_mut(2), &follower_output);
    let ack = follower_output.messages_after_persist[0].clone();
    net.node_mut(1).step(ack).expect("a valid ack");
    assert_eq!(net.node(1).commit_index(), Index(1), "committed with one durable copy of three");

    // Written but not reported: still not counted.
    persist(net.node_mut(1), &leader_output);
    assert_eq!(net.node(1).commit_index(), Index(1));
    assert!(take(net.node_mut(1)).committed.is_empty());

    // Reported: 2 of 3.
    net.node_mut(1).on_persisted(Index(2), Term(1));
    assert_eq!(net.node(1).commit_index(), Index(2));
    assert_eq!(take(net.node_mut(1)).committed, vec![normal(2, 1, b"x")]);
}

#[test]
fn two_follower_acks_commit_without_the_leader_but_it_applies_only_what_it_holds_durably() {
    let mut net = Net::new(3, |b| b);
    net.elect(1);
    net.node_mut(1).propose(Bytes::from_static(b"y")).expect("the leader accepts");
    let leader_output = take(net.node_mut(1));
    for m in leader_output.messages.iter().filter(|m| is_append(m)) {
        let to = m.to.0;
        net.node_mut(to).step(m.clone()).expect("a valid append");
        let output = take(net.node_mut(to));
        persist_and_report(net.node_mut(to), &output);
        for ack in output.messages_after_persist {
            net.node_mut(1).step(ack).expect("a valid ack");
        }
    }
    assert_eq!(net.node(1).commit_index(), Index(2), "two durable followers of three are a quorum");
    assert_eq!(net.node(1).status().stable_last_index, Index(1));
    let early = take(net.node_mut(1));
    assert!(early.committed.is_empty(), "handed out an entry the leader does not hold durably: {early:?}");

    persist_and_report(net.node_mut(1), &leader_output);
    assert_eq!(take(net.node_mut(1)).committed, vec![normal(2, 1, b"y")]);
    assert!(take(net.node_mut(1)).committed.is_empty(), "committed entries handed out twice");
}

#[test]
fn a_single_node_commits_nothing_before_its_write_is_durable() {
    let mut node = node_with(1, 1, base_options(1));
    node.campaign();
    assert!(node.is_leader());
    let first = take(&mut node);
    assert_eq!(first.hard_state.map(|h| (h.term, h.vote)), Some((Term(1), Some(NodeId(1)))));
    assert_eq!(first.entries, vec![noop(1, 1)]);
    assert!(first.committed.is_empty());
    // A lone voter won before its term was durable: it takes no proposal until it is.
    assert_eq!(node.propose(Bytes::from_static(b"early")), Err(ProposeError::TermNotDurable));
    persist(&mut node, &first);
    for _ in 0..3 {
        node.tick();
    }
    assert_eq!(node.commit_index(), Index(0), "committed before anything was reported durable");
    assert!(take(&mut node).committed.is_empty());

    node.on_persisted(Index(1), Term(1));
    assert_eq!(node.commit_index(), Index(1));
    assert_eq!(take(&mut node).committed, vec![noop(1, 1)]);

    node.propose(Bytes::from_static(b"a")).expect("the leader accepts");
    // A report for an entry not yet handed out is ignored.
    node.on_persisted(Index(2), Term(1));
    assert_eq!(node.commit_index(), Index(1));
    let second = take(&mut node);
    assert_eq!(second.entries, vec![normal(2, 1, b"a")]);
    assert!(second.committed.is_empty());
    persist(&mut node, &second);
    node.tick();
    assert_eq!(node.commit_index(), Index(1), "committed before the write was reported durable");
    assert!(take(&mut node).committed.is_empty());

    node.on_persisted(Index(2), Term(1));
    assert_eq!(node.commit_index(), Index(2));
    let third = take(&mut node);
    assert_eq!(third.committed, vec![normal(2, 1, b"a")]);
    assert_eq!(third.hard_state.map(|h| h.commit), Some(Index(2)));
    assert!(!node.has_output());
    assert!(take(&mut node).committed.is_empty(), "committed entries handed out twice");
}

#[test]
fn without_follower_acks_nothing_commits_even_when_the_leader_is_durable() {
    let mut net = Net::new(3, |b| b);
    net.node_mut(1).campaign();
    net.deliver_all_except(|m| m.from == NodeId(1) && m.body.is_from_leader());
    assert!(net.node(1).is_leader());
    net.node_mut(1).propose(Bytes::from_static(b"x")).expect("the leader accepts");
    for _ in 0..5 {
        net.node_mut(1).tick();
        net.deliver_all_except(|m| m.from == NodeId(1) && m.body.is_from_leader());
    }
    assert!(net.node(1).is_leader());
    assert_eq!(net.node(1).status().stable_last_index, Index(2), "the leader's own log is durable");
    assert_eq!(net.node(1).commit_index(), Index(0));
    assert!(net.applied[&NodeId(1)].is_empty());
}

#[test]
fn a_follower_hands_out_committed_entries_once_and_only_when_durable() {
    let mut follower = node_with(2, 3, base_options(2));
    let entries = vec![noop(1, 1), normal(2, 1, b"x")];
    let m = message(1, 2, 1, append((0, 0), entries.clone(), 2));
    follower.step(m.clone()).expect("a valid append");
    let output = take(&mut follower);
    assert_eq!(output.entries, entries);
    assert_eq!(output.hard_state, Some(HardState { term: Term(1), vote: None, commit: Index(2) }));
    assert!(output.committed.is_empty(), "handed out entries that are not durable: {output:?}");
    assert_eq!(
        output.messages_after_persist,
        vec![message(2, 1, 1, MessageBody::AppendResponse(AppendResult::Success { match_index: Index(2) }))]
    );

    persist(&mut follower, &output);
    assert!(take(&mut follower).committed.is_empty(), "written but not reported durable");
    follower.on_persisted(Index(2), Term(1));
    assert_eq!(take(&mut follower).committed, entries);
    assert!(take(&mut follower).committed.is_empty());

    // A duplicate of the same append: acknowledged again, applied never again.
    follower.step(m).expect("a duplicate append");
    let again = take(&mut follower);
    assert!(again.entries.is_empty() && again.committed.is_empty() && again.hard_state.is_none(), "{again:?}");
    assert_eq!(again.messages_after_persist.len(), 1);
}

#[test]
fn a_durability_report_for_a_replaced_entry_is_ignored() {
    let mut storage = MemStorage::new(Membership::new(voters(3)));
    storage.append(&[noop(1, 1)]).expect("consecutive");
    storage.set_hard_state(HardState { term: Term(1), vote: None, commit: Index(1) });
    let mut follower = Raft::new(NodeId(2), base_options(2).build().expect("valid"), storage).expect("memory");

    follower.step(message(1, 2, 1, append((1, 1), vec![normal(2, 1, b"old")], 1))).expect("valid");
    let first = take(&mut follower);
    assert_eq!(first.entries, vec![normal(2, 1, b"old")]);
    // Before that write completes, a leader of term 2 replaces index 2.
    follower.step(message(3, 2, 2, append((1, 1), vec![normal(2, 2, b"new")], 1))).expect("valid");
    let second = take(&mut follower);
    assert_eq!(second.entries, vec![normal(2, 2, b"new")]);

    persist(&mut follower, &first);
    follower.on_persisted(Index(2), Term(1));
    assert_eq!(follower.status().stable_last_index, Index(1), "a report for a replaced entry was counted");
    persist(&mut follower, &second);
    follower.on_persisted(Index(2), Term(2));
    assert_eq!(follower.status().stable_last_index, Index(2));
    assert_eq!(follower.storage().all_entries(), &[noop(1, 1), normal(2, 2, b"new")]);
}

// ---------------------------------------------------------------------------------------------
// Proposals
// ---------------------------------------------------------------------------------------------

#[test]
fn proposals_on_a_follower_are_refused_naming_the_known_leader() {
    let mut net = Net::new(3, |b| b);
    let before = net.node(2).status();
    assert_eq!(net.node_mut(2).propose(Bytes::from_static(b"x")), Err(ProposeError::NotLeader { leader: None }));
    assert_eq!(net.node(2).status(), before);
    net.elect(1);
    let before = net.node(2).status();
    assert_eq!(
        net.node_mut(2).propose(Bytes::from_static(b"x")),
        Err(ProposeError::NotLeader { leader: Some(NodeId(1)) })
    );
    assert_eq!(net.node(2).status(), before);
    assert!(!net.node(2).has_output());
}

#[test]
fn an_oversized_proposal_is_refused_and_nothing_is_appended() {
    let mut net = Net::new(1, |b| b.message_bytes_max(100));
    net.elect(1);
    let before = net.node(1).status();
    // 77 bytes of payload + 24 bytes of overhead = 101 > 100.
    assert_eq!(
        net.node_mut(1).propose(Bytes::from(vec![7u8; 77])),
        Err(ProposeError::TooLarge { bytes: 101, limit: 100 })
    );
    assert_eq!(net.node(1).status(), before);
    assert!(!net.node(1).has_output());
    assert_eq!(net.node_mut(1).propose(Bytes::from(vec![7u8; 76])), Ok(Index(2)));
}

#[test]
fn the_uncommitted_bytes_limit_refuses_proposals_until_earlier_ones_commit() {
    let mut net = Net::new(3, |b| b.message_bytes_max(100).uncommitted_bytes_max(200));
    net.elect(1);
    let payload = || Bytes::from(vec![1u8; 26]); // 50 bytes with overhead
    for expected in 2..=5 {
        assert_eq!(net.node_mut(1).propose(payload()), Ok(Index(expected)));
    }
    let before = net.node(1).status();
    assert_eq!(
        net.node_mut(1).propose(payload()),
        Err(ProposeError::TooManyUncommittedBytes { uncommitted: 200, limit: 200 })
    );
    assert_eq!(net.node(1).status(), before);

    net.deliver_all();
    assert_eq!(net.node(1).commit_index(), Index(5));
    assert_eq!(net.node_mut(1).propose(payload()), Ok(Index(6)), "the limit must free up after commit");
    for _ in 0..3 {
        assert!(net.node_mut(1).propose(payload()).is_ok());
    }
    assert!(matches!(net.node_mut(1).propose(payload()), Err(ProposeError::TooManyUncommittedBytes { .. })));
}

// ---------------------------------------------------------------------------------------------
// Bad input: typed errors, no panic, no state change
// ---------------------------------------------------------------------------------------------

/// Node 2 in term 2, following leader 1, with log terms [1, 1].
fn follower_in_term_two() -> Raft<MemStorage> {
    let mut storage = MemStorage::new(Membership::new(voters(3)));
    storage.append(&[noop(1, 1), noop(2, 1)]).expect("consecutive");
    storage.set_hard_state(HardState { term: Term(2), vote: None, commit: Index(0) });
    let mut node = Raft::new(NodeId(2), base_options(2).build().expect("valid"), storage).expect("memory");
    node.step(message(1, 2, 2, MessageBody::Heartbeat { commit: Index(0), round: 0 })).expect("a valid heartbeat");
    let output = take(&mut node);
    persist_and_report(&mut node, &output);
    assert_eq!(node.leader(), Some(NodeId(1)));
    assert!(!node.has_output());
    node
}

#[test]
fn misaddressed_and_self_sent_messages_are_refused() {
    let mut node = follower_in_term_two();
    let heartbeat = MessageBody::Heartbeat { commit: Index(2), round: 0 };
    assert_refused(
        &mut node,
        message(1, 3, 2, heartbeat.clone()),
        StepError::Malformed(raft_core::Malformed::NotAddressedToUs { to: NodeId(3) }),
    );
    assert_refused(&mut node, message(2, 2, 2, heartbeat), StepError::Malformed(raft_core::Malformed::FromSelf));
    // Even from a later term: nothing is adopted from a message that is not for us.
    let vote =
        MessageBody::VoteRequest { pre_vote: false, last_log_index: Index(9), last_log_term: Term(9), transfer: false };
    assert_refused(
        &mut node,
        message(3, 1, 9, vote.clone()),
        StepError::Malformed(raft_core::Malformed::NotAddressedToUs { to: NodeId(1) }),
    );
    assert_refused(&mut node, message(2, 2, 9, vote), StepError::Malformed(raft_core::Malformed::FromSelf));
}

#[test]
fn malformed_appends_from_the_leader_are_refused_without_state_change() {
    let mut node = follower_in_term_two();
    let cases = [
        // Entries not consecutive from prev_log_index + 1.
        (append((2, 1), vec![noop(4, 2)], 0), Malformed::EntriesNotConsecutive { expected: Index(3), found: Index(4) }),
        (
            append((2, 1), vec![noop(3, 2), noop(5, 2)], 0),
            Malformed::EntriesNotConsecutive { expected: Index(4), found: Index(5) },
        ),
        (
            append((2, 1), vec![noop(3, 2), noop(3, 2)], 0),
            Malformed::EntriesNotConsecutive { expected: Index(4), found: Index(3) },
        ),
        // Index overflow after prev_log_index.
        (
            append((u64::MAX, 1), vec![noop(0, 2)], 0),
            Malformed::EntriesNotConsecutive { expected: Index(u64::MAX), found: Index(0) },
        ),
        // An entry term above the message term.
        (append((2, 1), vec![noop(3, 3)], 0), Malformed::EntryTermOutOfOrder { index: Index(3), term: Term(3) }),
        // Terms decreasing along the entries.
        (
            append((2, 1), vec![noop(3, 2), noop(4, 1)], 0),
            Malformed::EntryTermOutOfOrder { index: Index(4), term: Term(1) },
        ),
        // An entry term below prev_log_term.
        (append((2, 1), vec![noop(3, 0)], 0), Malformed::EntryTermOutOfOrder { index: Index(3), term: Term(0) }),
        // prev_log_term above the message term.
        (append((2, 3), vec![], 0), Malformed::PrevTermAboveMessage(Term(3))),
        (append((2, u64::MAX), vec![noop(3, 2)], 0), Malformed::PrevTermAboveMessage(Term(u64::MAX))),
    ];
    for (body, expected) in cases {
        assert_refused(&mut node, message(1, 2, 2, body), StepError::Malformed(expected));
    }
    assert_eq!(node.storage().all_entries(), &[noop(1, 1), noop(2, 1)]);
}

/// Node 1 leading term 1 in a healthy 3-node group, everything delivered.
fn healthy_leader() -> Net {
    let mut net = Net::new(3, |b| b);
    net.elect(1);
    net.node_mut(1).propose(Bytes::from_static(b"x")).expect("the leader accepts");
    net.deliver_all();
    assert_eq!(net.node(1).commit_index(), Index(2));
    assert!(!net.node(1).has_output());
    net
}

#[test]
fn an_acknowledgement_beyond_the_leaders_log_is_refused() {
    let mut net = healthy_leader();
    let leader = net.node_mut(1);
    for index in [3, 100, u64::MAX] {
        let ack = MessageBody::AppendResponse(AppendResult::Success { match_index: Index(index) });
        assert_refused(leader, message(2, 1, 1, ack), StepError::Malformed(Malformed::AckBeyondLog(Index(index))));
    }
}

#[test]
fn responses_from_unknown_peers_are_refused() {
    let mut net = healthy_leader();
    let leader = net.node_mut(1);
    let bodies = [
        MessageBody::AppendResponse(AppendResult::Success { match_index: Index(1) }),
        MessageBody::AppendResponse(AppendResult::Reject {
            rejected_index: Index(1),
            hint: raft_core::ConflictHint { term: None, index: Index(1) },
        }),
        MessageBody::HeartbeatResponse { round: 0 },
    ];
    for body in bodies {
        assert_refused(leader, message(9, 1, 1, body), StepError::Ignored(raft_core::Ignored::UnknownPeer(NodeId(9))));
    }

    // A candidate refuses a vote from a node that does not vote.
    let mut candidate = node_with(1, 3, base_options(1).pre_vote(false));
    candidate.campaign();
    let output = take(&mut candidate);
    persist_and_report(&mut candidate, &output);
    let vote = MessageBody::VoteResponse { pre_vote: false, granted: true };
    assert_refused(
        &mut candidate,
        message(9, 1, 1, vote),
        StepError::Ignored(raft_core::Ignored::UnknownPeer(NodeId(9))),
    );
    assert_eq!(candidate.role(), Role::Candidate);
}

#[test]
fn a_second_leader_in_our_term_is_refused() {
    let mut net = healthy_leader();
    let leader = net.node_mut(1);
    let second = StepError::Malformed(Malformed::SecondLeader(NodeId(3)));
    assert_refused(leader, message(3, 1, 1, append((2, 1), vec![], 2)), second);
    assert_refused(leader, message(3, 1, 1, append((2, 1), vec![normal(3, 1, b"evil")], 2)), second);
    assert_refused(leader, message(3, 1, 1, MessageBody::Heartbeat { commit: Index(2), round: 0 }), second);
    assert!(leader.is_leader());
}

/// The crate documents that a refused message leaves the state unchanged; that must hold even
/// when the malformed message carries a later term.
#[test]
fn a_malformed_append_from_a_later_term_changes_nothing() {
    let mut node = follower_in_term_two();
    let body = append((2, 4), vec![], 0); // prev_log_term 4 above the message term 3
    assert_refused(&mut node, message(3, 2, 3, body), StepError::Malformed(Malformed::PrevTermAboveMessage(Term(4))));
    assert_eq!(node.term(), Term(2));
    assert_eq!(node.leader(), Some(NodeId(1)));
}

#[test]
fn a_malformed_append_does_not_depose_a_candidate() {
    let mut candidate = node_with(1, 3, base_options(1).pre_vote(false));
    candidate.campaign();
    let output = take(&mut candidate);
    persist_and_report(&mut candidate, &output);
    let body = append((0, 0), vec![noop(1, 2)], 0); // entry term 2 above the message term 1
    let expected = StepError::Malformed(Malformed::EntryTermOutOfOrder { index: Index(1), term: Term(2) });
    assert_refused(&mut candidate, message(2, 1, 1, body), expected);
    assert_eq!(candidate.role(), Role::Candidate);
}

#[test]
fn a_malformed_append_does_not_change_the_known_leader() {
    let mut node = follower_in_term_two();
    let body = append((2, 1), vec![noop(3, 2), noop(4, 1)], 0);
    let expected = StepError::Malformed(Malformed::EntryTermOutOfOrder { index: Index(4), term: Term(1) });
    assert_refused(&mut node, message(3, 2, 2, body), expected);
    assert_eq!(node.leader(), Some(NodeId(1)));
}

#[test]
fn garbage_never_panics() {
    let mut net = healthy_leader();
    let bodies = |term: u64| {
        vec![
            append((u64::MAX, term), vec![noop(0, term)], u64::MAX),
            append((1_000, 1), vec![], u64::MAX),
            append((0, 0), vec![], u64::MAX),
            MessageBody::Heartbeat { commit: Index(u64::MAX), round: 0 },
            MessageBody::HeartbeatResponse { round: 0 },
            MessageBody::AppendResponse(AppendResult::Success { match_index: Index(0) }),
            MessageBody::AppendResponse(AppendResult::Reject {
                rejected_index: Index(u64::MAX),
                hint: raft_core::ConflictHint { term: Some(Term(u64::MAX)), index: Index(u64::MAX) },
            }),
            MessageBody::AppendResponse(AppendResult::Reject {
                rejected_index: Index(0),
                hint: raft_core::ConflictHint { term: Some(Term(0)), index: Index(0) },
            }),
            MessageBody::VoteRequest {
                pre_vote: true,
                last_log_index: Index(u64::MAX),
                last_log_term: Term(0),
                transfer: false,
            },
            MessageBody::VoteResponse { pre_vote: true, granted: true },
            MessageBody::VoteResponse { pre_vote: false, granted: false },
        ]
    };
    for to in 1..=3 {
        for from in [0, 1, 2, 3, 9] {
            for term in [0, 1, 2] {
                for body in bodies(term) {
                    let node = net.node_mut(to);
                    let _ = node.step(message(from, to, term, body));
                    node.check_invariants();
                    let output = take(node);
                    persist_and_report(node, &output);
                }
            }
        }
    }
    // The group still works afterwards.
    for _ in 0..60 {
        net.tick_all();
    }
    let leader = (1..=3).find(|&id| net.node(id).is_leader()).expect("a leader");
    let index = net.node_mut(leader).propose(Bytes::from_static(b"after")).expect("the leader accepts");
    net.deliver_all();
    net.tick_all();
    for id in 1..=3 {
        assert!(net.node(id).commit_index() >= index, "node {id}");
    }
}

// ---------------------------------------------------------------------------------------------
// Batching and flow control
// ---------------------------------------------------------------------------------------------

/// Proposes `count` payloads of `payload_bytes` on a leader whose followers replicate, and returns
/// the appends it sends at once, by follower.
fn appends_after_proposals(
    tune: impl Fn(OptionsBuilder) -> OptionsBuilder,
    payload_bytes: usize,
    count: u64,
) -> (Net, BTreeMap<NodeId, Vec<Message>>) {
    let mut net = Net::new(3, tune);
    net.elect(1);
    assert!(net.node(1).is_replicating(NodeId(2)) && net.node(1).is_replicating(NodeId(3)));
    for i in 0..count {
        net.node_mut(1).propose(Bytes::from(vec![i as u8; payload_bytes])).expect("the leader accepts");
    }
    let output = take(net.node_mut(1));
    let mut by_peer: BTreeMap<NodeId, Vec<Message>> = BTreeMap::new();
    for m in output.messages.iter().filter(|m| is_append(m)) {
        by_peer.entry(m.to).or_default().push(m.clone());
    }
    persist_and_report(net.node_mut(1), &output);
    net.queue.extend(output.messages);
    net.queue.extend(output.messages_after_persist);
    (net, by_peer)
}

/// Checks that the appends to each follower cover indexes 2..=last consecutively, within limits.
fn check_batches(by_peer: &BTreeMap<NodeId, Vec<Message>>, last: u64, entries_max: usize, bytes_max: u64) -> usize {
    assert_eq!(by_peer.len(), 2);
    let mut most = 0;
    for (peer, appends) in by_peer {
        let mut next = 2;
        for m in appends {
            let entries = append_entries(m);
            assert!(!entries.is_empty() && entries.len() <= entries_max, "to {peer}: {} entries", entries.len());
            assert!(batch_bytes(entries) <= bytes_max, "to {peer}: {} bytes", batch_bytes(entries));
            assert_eq!(entries[0].index, Index(next), "to {peer}: gap or overlap");
            next = entries[entries.len() - 1].index.0 + 1;
        }
        assert_eq!(next, last + 1, "to {peer}: not every entry was sent");
        most = most.max(appends.len());
    }
    most
}

#[test]
fn appends_respect_message_entries_max() {
    let (mut net, by_peer) = appends_after_proposals(|b| b.message_entries_max(3), 10, 10);
    let messages = check_batches(&by_peer, 11, 3, u64::MAX);
    assert_eq!(messages, 4, "10 entries in batches of at most 3");
    net.deliver_all();
    for id in 1..=3 {
        assert_eq!(net.node(id).commit_index(), Index(11), "node {id}");
    }
}

#[test]
fn appends_respect_message_bytes_max() {
    // 26 bytes of payload + 24 of overhead = 50 bytes: two entries per 100-byte message.
    let (mut net, by_peer) = appends_after_proposals(|b| b.message_bytes_max(100), 26, 9);
    let messages = check_batches(&by_peer, 10, usize::MAX, 100);
    assert_eq!(messages, 5, "9 entries in batches of at most 100 bytes");
    net.deliver_all();
    for id in 1..=3 {
        assert_eq!(net.node(id).commit_index(), Index(10), "node {id}");
    }
}

#[test]
fn the_inflight_window_bounds_pipelined_appends() {
    let (mut net, by_peer) = appends_after_proposals(|b| b.message_entries_max(1).inflight_messages_max(2), 4, 5);
    for (peer, appends) in &by_peer {
        let firsts: Vec<u64> = appends.iter().map(|m| append_entries(m)[0].index.0).collect();
        assert_eq!(firsts, vec![2, 3], "to {peer}: the window holds two appends");
    }
    let status = net.node(1).status();
    assert_eq!(status.progress[&NodeId(2)].inflight_messages, 2);
    assert!(status.progress[&NodeId(2)].paused);

    // One acknowledgement frees one slot: exactly one more append goes out to that follower.
    let first = by_peer[&NodeId(2)][0].clone();
    net.node_mut(2).step(first).expect("a valid append");
    let output = take(net.node_mut(2));
    persist_and_report(net.node_mut(2), &output);
    net.node_mut(1).step(output.messages_after_persist[0].clone()).expect("a valid ack");
    let leader_output = take(net.node_mut(1));
    let more: Vec<u64> = leader_output
        .messages
        .iter()
        .filter(|m| m.to == NodeId(2) && is_append(m))
        .map(|m| append_entries(m)[0].index.0)
        .collect();
    assert_eq!(more, vec![4]);

    net.queue.clear();
    for _ in 0..5 {
        net.tick_all();
    }
    for id in 1..=3 {
        assert_eq!(net.node(id).commit_index(), Index(6), "node {id}");
    }
}

#[test]
fn committed_batches_respect_apply_bytes_max() {
    let mut node = node_with(1, 1, base_options(1).message_bytes_max(100).apply_bytes_max(100));
    node.campaign();
    let output = take(&mut node);
    persist_and_report(&mut node, &output);
    for i in 0..10u8 {
        node.propose(Bytes::from(vec![i; 26])).expect("the leader accepts"); // 50 bytes each
    }
    let mut applied = Vec::new();
    let mut batches = 0;
    for _ in 0..20 {
        let output = take(&mut node);
        persist_and_report(&mut node, &output);
        if !output.committed.is_empty() {
            assert!(
                batch_bytes(&output.committed) <= 100,
                "{} bytes in one apply batch",
                batch_bytes(&output.committed)
            );
            batches += 1;
            applied.extend(output.committed.iter().map(|e| e.index.0));
        }
    }
    assert_eq!(applied, (1..=11).collect::<Vec<u64>>());
    assert!(batches >= 5, "only {batches} apply batches");
}

/// Liveness: a follower whose last append (and the commit notice after it) was lost must catch up
/// once the network is healthy again, without waiting for a new proposal.
#[test]
fn a_follower_whose_last_append_was_lost_catches_up_on_heartbeats() {
    let mut net = Net::new(3, |b| b);
    net.elect(1);
    assert!(net.node(1).is_replicating(NodeId(2)));
    net.node_mut(1).propose(Bytes::from_static(b"x")).expect("the leader accepts");
    // Everything the leader sends to node 2 is lost until x is committed by nodes 1 and 3.
    net.deliver_all_except(|m| m.from == NodeId(1) && m.to == NodeId(2));
    assert_eq!(net.node(1).commit_index(), Index(2));
    assert_eq!(net.node(2).last_index(), Index(1));
    for _ in 0..30 {
        net.tick_all();
    }
    assert!(net.node(1).is_leader());
    let progress = net.node(1).status().progress[&NodeId(2)].clone();
    assert_eq!(net.node(2).last_index(), Index(2), "node 2 never received x; leader's view of it: {progress:?}");
    assert_eq!(net.node(2).commit_index(), Index(2));
    assert_eq!(net.applied_indexes(2), vec![1, 2]);
}

// ---------------------------------------------------------------------------------------------
// Restart
// ---------------------------------------------------------------------------------------------

#[test]
fn a_restarted_node_keeps_term_vote_and_log_and_reapplies_from_index_one_once() {
    let mut net = Net::new(3, |b| b);
    net.elect(1);
    for data in [&b"a"[..], b"b", b"c"] {
        net.node_mut(1).propose(Bytes::copy_from_slice(data)).expect("the leader accepts");
    }
    net.deliver_all();
    net.tick_all();
    for id in 1..=3 {
        assert_eq!(net.node(id).commit_index(), Index(4), "node {id}");
        assert_eq!(net.applied_indexes(id), vec![1, 2, 3, 4], "node {id}");
    }

    for id in [2, 1] {
        let old = net.node(id).status();
        let applied_before = net.applied[&NodeId(id)].clone();
        let storage = net.node(id).storage().clone();
        let restarted = Raft::new(NodeId(id), base_options(id).build().expect("valid"), storage).expect("memory");
        let status = restarted.status();
        assert_eq!(status.soft_state.term, old.soft_state.term, "node {id} term");
        assert_eq!(status.vote, old.vote, "node {id} vote");
        assert_eq!(status.vote, Some(NodeId(1)));
        assert_eq!(status.last_index, old.last_index, "node {id} log");
        assert_eq!(status.commit, Index(4), "node {id} commit");
        assert_eq!(status.applied, Index(0), "node {id} applies again from the start");
        assert_eq!(status.soft_state.role, Role::Follower);
        assert_eq!(status.soft_state.leader, None);
        restarted.check_invariants();
        net.nodes.insert(NodeId(id), restarted);
        net.applied.insert(NodeId(id), Vec::new());
        net.drive(id);
        assert_eq!(net.applied[&NodeId(id)], applied_before, "node {id} re-applied a different sequence");
        net.drive(id);
        assert_eq!(net.applied_indexes(id), vec![1, 2, 3, 4], "node {id} re-applied twice");
    }

    // The group goes on; nobody applies anything twice.
    for _ in 0..40 {
        net.tick_all();
    }
    let leader = (1..=3).find(|&id| net.node(id).is_leader()).expect("a leader after the restarts");
    net.node_mut(leader).propose(Bytes::from_static(b"d")).expect("the leader accepts");
    net.deliver_all();
    net.tick_all();
    let expected = net.node(leader).commit_index().0;
    for id in 1..=3 {
        assert_eq!(net.applied_indexes(id), (1..=expected).collect::<Vec<u64>>(), "node {id}");
    }
}

// ---------------------------------------------------------------------------------------------
// Invariants
// ---------------------------------------------------------------------------------------------

#[test]
fn check_invariants_holds_on_healthy_nodes() {
    let mut net = Net::new(5, |b| b.message_entries_max(2).inflight_messages_max(2));
    for node in net.nodes.values() {
        node.check_invariants();
    }
    for _ in 0..40 {
        net.tick_all();
        for node in net.nodes.values() {
            node.check_invariants();
        }
    }
    let leader = (1..=5).find(|&id| net.node(id).is_leader()).expect("a leader after 40 ticks");
    for i in 0..20u8 {
        net.node_mut(leader).propose(Bytes::from(vec![i; 8])).expect("the leader accepts");
        net.deliver_all();
        for node in net.nodes.values() {
            node.check_invariants();
        }
    }
    net.tick_all();
    let status = net.node(leader).status();
    assert!(
        status.progress.values().all(|p| p.state == ProgressState::Replicate && p.match_index == status.last_index)
    );
    for node in net.nodes.values() {
        node.check_invariants();
        assert_eq!(node.commit_index(), status.last_index);
    }
}
