//! One scripted scenario (or more) per item of docs/pitfalls.md on elections, replication, flow
//! control, durability reports and snapshots (#1-5 and #8-18); membership and reads have theirs
//! in membership.rs and reads.rs. Each test asserts the exact outcome, so it fails if the
//! protection is removed.

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use common::{
    Cluster, Fate, base_options, between, cluster_tuned, deliver_with, entry, ids, message, node_with_log, noop,
    options, storage_with_log, tick_with,
};
use raft_core::{
    AppendResult, Entry, FollowerProgress, HardState, Index, InitialState, Message, MessageBody, NodeId, Output,
    ProgressState, Raft, Role, SnapshotChunk, SnapshotMeta, StepError, Storage, StorageError, Term,
};
use raft_storage::MemStorage;

// ---------------------------------------------------------------------------------------------
// Helpers: message surgery on the scripted network, and a hand driver for a single node.
// ---------------------------------------------------------------------------------------------

fn is_append(m: &Message) -> bool {
    matches!(m.body, MessageBody::AppendEntries { .. })
}

/// Whether `m` is an AppendEntries carrying the entry at `index`.
fn carries(m: &Message, index: u64) -> bool {
    matches!(&m.body, MessageBody::AppendEntries { entries, .. } if entries.iter().any(|e| e.index == Index(index)))
}

fn append_entry_count(m: &Message) -> Option<usize> {
    match &m.body {
        MessageBody::AppendEntries { entries, .. } => Some(entries.len()),
        _ => None,
    }
}

fn is_reject(m: &Message) -> bool {
    matches!(m.body, MessageBody::AppendResponse(AppendResult::Reject { .. }))
}

fn is_success(m: &Message, index: u64) -> bool {
    m.body == MessageBody::AppendResponse(AppendResult::Success { match_index: Index(index) })
}

/// The leader's view of `peer`.
fn progress(c: &Cluster, leader: u64, peer: u64) -> FollowerProgress {
    c.node(leader).status().progress.get(&NodeId(peer)).cloned().expect("leader tracks peer")
}

/// (index, term) pairs for terms at indexes 1..
fn log(terms: &[u64]) -> Vec<(u64, u64)> {
    terms.iter().enumerate().map(|(i, &t)| (i as u64 + 1, t)).collect()
}

fn vote_granted(from: u64, to: u64, term: u64) -> Message {
    message(from, to, term, MessageBody::VoteResponse { pre_vote: false, granted: true })
}

fn append_ack(from: u64, to: u64, term: u64, match_index: u64) -> Message {
    message(from, to, term, MessageBody::AppendResponse(AppendResult::Success { match_index: Index(match_index) }))
}

/// A store the hand driver can persist into.
trait Persist: Storage {
    fn persist(&mut self, hard_state: Option<HardState>, entries: &[Entry]);
}

impl Persist for MemStorage {
    fn persist(&mut self, hard_state: Option<HardState>, entries: &[Entry]) {
        if let Some(hard_state) = hard_state {
            self.set_hard_state(hard_state);
        }
        self.append(entries).expect("the core hands out appendable entries");
    }
}

/// Takes one output and persists it (the store is durable at once); reports durability only when
/// `report` is set, so a test can play a slow disk. Returns the output for inspection.
fn drive<S: Persist>(node: &mut Raft<S>, report: bool) -> Output {
    let output = node.take_output().expect("nothing to read from a failing store here");
    node.storage_mut().persist(output.hard_state, &output.entries);
    if report && let Some(last) = output.entries.last() {
        node.on_persisted(last.index, last.term);
    }
    output
}

/// Every message of an output, immediate ones first.
fn all_messages(output: &Output) -> Vec<Message> {
    output.messages.iter().chain(&output.messages_after_persist).cloned().collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Figure 8.
// ---------------------------------------------------------------------------------------------

/// S1 (term 4) gets index 2 (term 2) onto S1, S2, S3, a majority, but must not count it committed:
/// S5 (log [1, 3]) can still win term 5 and overwrite index 2 everywhere.
#[test]
fn pitfall_01_figure_8_old_term_entry_on_a_majority_is_not_committed() {
    let voters = ids(5);
    let logs: [&[u64]; 5] = [&[1, 2], &[1, 2], &[1], &[1], &[1, 3]];
    let mut nodes = BTreeMap::new();
    for (&id, terms) in voters.iter().zip(logs) {
        // One entry per append, so index 2 can reach S3 without S1's own index 3.
        let opts = base_options(id).message_entries_max(1).build().expect("valid options");
        let hard_state = HardState { term: Term(3), vote: None, commit: Index(1) };
        nodes.insert(id, Raft::new(id, opts, storage_with_log(&voters, terms, hard_state)).expect("memory"));
    }
    let mut c = Cluster::from_nodes(nodes);

    // S1 wins term 4 with S2, S3, S4 (S5 is away). Its appends reach S2 in full, S4 not at all,
    // and S3 only up to index 2: S1 "crashes" before index 3 gets there.
    c.cut(1, 5);
    c.node_mut(1).campaign();
    let mut s3_holds_2 = false;
    deliver_with(&mut c, |m| {
        if between(m, 3, 1) && is_success(m, 2) {
            s3_holds_2 = true;
        }
        let to_s4 = between(m, 1, 4) && is_append(m);
        let index_3_to_s3 = between(m, 1, 3) && s3_holds_2 && carries(m, 3);
        if to_s4 || index_3_to_s3 { Fate::Drop } else { Fate::Deliver }
    });
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(c.node(1).term(), Term(4));
    assert_eq!(c.log_of(1), log(&[1, 2, 4]));
    assert_eq!(c.log_of(2), log(&[1, 2, 4]));
    assert_eq!(c.log_of(3), log(&[1, 2]));
    assert_eq!(c.log_of(4), log(&[1]));
    // The leader knows index 2 is on S1, S2 and S3 ...
    assert_eq!(progress(&c, 1, 2).match_index, Index(3));
    assert_eq!(progress(&c, 1, 3).match_index, Index(2));
    // ... and still must not commit it: it is of term 2, and S1 leads term 4.
    for id in 1..=5 {
        assert_eq!(c.node(id).commit_index(), Index(1), "node {id} committed an entry of an older term");
    }

    // S1 crashes, S2 is away: S5 wins term 5 with S3 and S4 and overwrites index 2.
    c.crash(1);
    c.isolate(2);
    c.tick_until_leader(200);
    assert_eq!(c.leader(), Some(5));
    assert_eq!(c.node(5).term(), Term(5));
    c.ticks(3);
    for id in 3..=5 {
        assert_eq!(c.log_of(id), log(&[1, 3, 5]), "node {id}");
        assert_eq!(c.node(id).commit_index(), Index(3), "node {id}");
    }

    // S1 and S2 come back: their index 2 (term 2), once on a majority, is overwritten too.
    c.restart(1);
    c.heal();
    c.ticks(20);
    assert_eq!(c.leader(), Some(5));
    for id in 1..=5 {
        assert_eq!(c.log_of(id), log(&[1, 3, 5]), "node {id}");
        assert_eq!(c.node(id).commit_index(), Index(3), "node {id}");
        assert_eq!(c.node(id).term(), Term(5), "node {id}");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Pre-vote with a stale-term node (etcd#8243).
// ---------------------------------------------------------------------------------------------

/// Node 1 (term 3, led by node 2 which is now gone) and node 3 (stuck at term 1, log behind).
fn stale_term_pair() -> Cluster {
    let voters = ids(3);
    let n1 = node_with_log(NodeId(1), &voters, &[1, 3], 3, options(NodeId(1), true, true));
    let n2 = node_with_log(NodeId(2), &voters, &[1, 3], 3, options(NodeId(2), true, true));
    let n3 = node_with_log(NodeId(3), &voters, &[1], 1, options(NodeId(3), true, true));
    let mut c = Cluster::from_nodes([(NodeId(1), n1), (NodeId(2), n2), (NodeId(3), n3)].into());
    c.crash(2);
    c
}

/// Node 3 grants node 1's pre-vote with the request's term (4), not its own stale term (1), so
/// node 1 counts it and wins: the stale node does not block the election.
#[test]
fn pitfall_02_granted_pre_vote_carries_request_term_so_stale_node_cannot_block() {
    let mut c = stale_term_pair();
    c.campaign(1);
    let grant = message(3, 1, 4, MessageBody::VoteResponse { pre_vote: true, granted: true });
    assert!(c.delivered.contains(&grant), "pre-vote grant must carry the request's term: {:?}", c.delivered);
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(c.node(1).term(), Term(4));
    assert_eq!(c.node(3).term(), Term(4));
    assert_eq!(c.node(3).leader(), Some(NodeId(1)));
    c.ticks(3);
    assert_eq!(c.log_of(3), log(&[1, 3, 4]));
}

/// Node 3's pre-vote (for term 2) is refused with node 1's term (3), so node 3 catches up on the
/// term without node 1 changing anything; then ticking alone elects node 1 in term 4.
#[test]
fn pitfall_02_rejected_pre_vote_carries_responder_term_and_election_completes() {
    let mut c = stale_term_pair();
    c.campaign(3);
    let refusal = message(1, 3, 3, MessageBody::VoteResponse { pre_vote: true, granted: false });
    assert!(c.delivered.contains(&refusal), "pre-vote refusal must carry the responder's term: {:?}", c.delivered);
    assert_eq!(c.node(3).term(), Term(3));
    assert_eq!(c.node(3).role(), Role::Follower);
    assert_eq!(c.node(1).term(), Term(3), "a pre-vote request must not bump the receiver's term");
    c.tick_until_leader(100);
    assert_eq!(c.leader(), Some(1));
    assert_eq!(c.node(1).term(), Term(4));
    assert_eq!(c.node(3).term(), Term(4));
    assert_eq!(c.node(3).leader(), Some(NodeId(1)));
}

// ---------------------------------------------------------------------------------------------
// 3. Pre-vote plus check-quorum (raft-rs#84, etcd#8334).
// ---------------------------------------------------------------------------------------------

/// The leader dies right after a heartbeat, so both followers still hold its lease. Node 2 starts a
/// pre-vote first (ignored: node 3 is in the lease). When node 3 then asks, node 2 must have
/// dropped the dead leader on becoming pre-candidate and grant, or nobody ever wins.
#[test]
fn pitfall_03_pre_candidate_drops_the_leader_and_grants_pre_votes() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.crash(1);
    c.campaign(2);
    assert_eq!(c.node(2).role(), Role::PreCandidate);
    assert_eq!(c.node(2).leader(), None, "a pre-candidate no longer defends the old leader's lease");
    assert_eq!(c.node(3).leader(), Some(NodeId(1)), "node 3 was still in the lease and ignored node 2");
    c.campaign(3);
    assert_eq!(c.node(3).role(), Role::Leader);
    assert_eq!(c.node(3).term(), Term(2));
    assert_eq!(c.node(2).leader(), Some(NodeId(3)));
    assert_eq!(c.node(2).term(), Term(2));
}

/// Same, but node 3 lags: dropping the known leader lets node 2 answer node 3's pre-vote, and the
/// answer is still a refusal on the log check, so the lagging node does not win; node 2 does.
#[test]
fn pitfall_03_dropping_the_leader_does_not_let_a_lagging_node_win() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.cut(1, 3);
    c.propose(1, b"x").expect("leader accepts");
    c.heal();
    c.crash(1);
    assert_eq!(c.log_of(2), log(&[1, 1]));
    assert_eq!(c.log_of(3), log(&[1]));

    c.campaign(2); // ignored by node 3, which still holds the lease
    assert_eq!(c.node(2).role(), Role::PreCandidate);
    c.campaign(3);
    let refusal = message(2, 3, 1, MessageBody::VoteResponse { pre_vote: true, granted: false });
    assert!(c.delivered.contains(&refusal), "node 2 answers (no lease) but refuses (log): {:?}", c.delivered);
    assert_eq!(c.node(3).role(), Role::PreCandidate);
    assert_eq!(c.node(3).term(), Term(1));

    c.campaign(2); // node 3 is a pre-candidate without a leader now: it grants
    assert_eq!(c.node(2).role(), Role::Leader);
    assert_eq!(c.node(2).term(), Term(2));
    c.ticks(3);
    assert_eq!(c.log_of(3), log(&[1, 1, 2]));
    assert_eq!(c.applied_data(3), vec![Bytes::from_static(b"x")]);
}

/// Check-quorum on, pre-vote off. Node 3 loses its link to leader 1 and campaigns again and again;
/// node 2 ignores it (leader stickiness), so its term climbs alone. When the link heals, the
/// leader's heartbeat to node 3 is answered with node 3's higher term: the leader steps down, and
/// the cluster elects a leader and converges on one term.
#[test]
fn pitfall_03_check_quorum_frees_a_candidate_stuck_at_a_higher_term() {
    let mut c = Cluster::with(3, false, true);
    c.elect(1);
    c.cut(1, 3);
    c.ticks(60);
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(c.node(2).term(), Term(1), "node 2 ignored node 3 while it followed a live leader");
    let stuck = c.node(3).term();
    assert!(stuck >= Term(3), "node 3 kept campaigning: term {stuck}");
    assert_eq!(c.node(3).role(), Role::Candidate);

    c.heal();
    c.tick_all();
    assert_eq!(c.node(1).role(), Role::Follower, "the leader learned the higher term from node 3");
    assert_eq!(c.node(1).term(), c.node(3).term());

    c.tick_until_leader(100);
    c.ticks(3);
    let leader = c.leader().expect("a leader after the stuck candidate was freed");
    let term = c.node(leader).term();
    assert!(term > stuck);
    for id in 1..=3 {
        assert_eq!(c.node(id).term(), term, "node {id}");
        assert_eq!(c.node(id).leader(), Some(NodeId(leader)), "node {id}");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Partial partition (Cloudflare, Nov 2020).
// ---------------------------------------------------------------------------------------------

/// Node 1 loses only its link to leader 3. Node 2 still sees both. With pre-vote and leader
/// stickiness, node 3 keeps leading for hundreds of ticks and node 1's term never moves.
#[test]
fn pitfall_04_partial_partition_keeps_the_leader_and_the_term() {
    let mut c = Cluster::new(3);
    c.elect(3);
    c.cut(1, 3);
    for tick in 0..400 {
        c.tick_all();
        assert_eq!(c.leader(), Some(3), "tick {tick}");
        for id in 1..=3 {
            assert_eq!(c.node(id).term(), Term(1), "node {id} at tick {tick}");
        }
        assert_eq!(c.node(2).leader(), Some(NodeId(3)), "tick {tick}");
    }
    c.propose(3, b"still working").expect("leader accepts");
    c.ticks(2);
    assert_eq!(c.node(3).commit_index(), Index(2));
    assert_eq!(c.applied_data(2), vec![Bytes::from_static(b"still working")]);
}

/// The contrast: without pre-vote, node 1's term climbs on every timeout (stickiness alone keeps
/// node 2 from following it). This is what pre-vote holds still in the test above.
#[test]
fn pitfall_04_without_pre_vote_the_partitioned_node_term_climbs() {
    let mut c = Cluster::with(3, false, true);
    c.elect(3);
    c.cut(1, 3);
    c.ticks(400);
    assert_eq!(c.leader(), Some(3));
    assert_eq!(c.node(2).term(), Term(1));
    assert!(c.node(1).term() >= Term(10), "node 1's term should climb without pre-vote: {}", c.node(1).term());
}

// ---------------------------------------------------------------------------------------------
// 5. Five nodes, partial connectivity.
// ---------------------------------------------------------------------------------------------

fn leave_links_only(c: &mut Cluster, node: u64, keep: &[u64]) {
    for other in 1..=5 {
        if other != node && !keep.contains(&other) {
            c.cut(node, other);
        }
    }
}

/// 1, 2, 3 fully connected; 4 only to 2; 5 only to 3; 3 leads. The leader stays for good.
#[test]
fn pitfall_05_five_nodes_partial_connectivity_keep_a_stable_leader() {
    let mut c = Cluster::new(5);
    c.elect(3);
    leave_links_only(&mut c, 4, &[2]);
    leave_links_only(&mut c, 5, &[3]);
    for tick in 0..400 {
        c.tick_all();
        assert_eq!(c.leader(), Some(3), "tick {tick}");
        for id in 1..=5 {
            assert_eq!(c.node(id).term(), Term(1), "node {id} at tick {tick}");
        }
    }
    c.propose(3, b"v").expect("leader accepts");
    c.ticks(2);
    for id in [1, 2, 3, 5] {
        assert_eq!(c.applied_data(id), vec![Bytes::from_static(b"v")], "node {id}");
    }
}

/// Node 4 leads, then 5 goes down and 4 keeps only its link to 2. With check-quorum, 4 hears from
/// too few nodes and steps down, and {1, 2, 3} elect a leader that commits.
#[test]
fn pitfall_05_old_leader_behind_one_link_steps_down_with_check_quorum() {
    let mut c = Cluster::new(5);
    c.elect(4);
    c.crash(5);
    leave_links_only(&mut c, 4, &[2]);
    let mut stepped_down_at = None;
    for tick in 0..200 {
        c.tick_all();
        if stepped_down_at.is_none() && c.node(4).role() != Role::Leader {
            stepped_down_at = Some(tick);
        }
        if stepped_down_at.is_some() && c.leader().is_some_and(|l| l != 4) {
            break;
        }
    }
    let stepped_down_at = stepped_down_at.expect("node 4 stepped down");
    assert!(stepped_down_at < 2 * 10 + 1, "check-quorum steps down within two rounds, took {stepped_down_at}");
    let leader = c.leader().expect("a new leader");
    assert!([1, 2, 3].contains(&leader));
    c.propose(leader, b"after").expect("leader accepts");
    c.ticks(2);
    for id in 1..=3 {
        assert_eq!(c.applied_data(id), vec![Bytes::from_static(b"after")], "node {id}");
    }
    assert_ne!(c.node(4).role(), Role::Leader);
}

/// The same with pre-vote but without check-quorum: node 4 never learns it lost its quorum, node 2
/// keeps following it and so ignores the pre-votes of 1 and 3 (leader stickiness), and nobody else
/// can win; what node 4 proposes never commits.
#[test]
fn pitfall_05_old_leader_behind_one_link_wedges_without_check_quorum() {
    let mut c = Cluster::with(5, true, false);
    c.elect(4);
    c.crash(5);
    leave_links_only(&mut c, 4, &[2]);
    let commit = c.node(4).commit_index();
    for tick in 0..300 {
        c.tick_all();
        for id in 1..=3 {
            assert_ne!(c.node(id).role(), Role::Leader, "node {id} at tick {tick}");
            assert_eq!(c.node(id).term(), Term(1), "node {id} at tick {tick}");
        }
    }
    assert_eq!(c.node(4).role(), Role::Leader);
    assert_eq!(c.node(2).leader(), Some(NodeId(4)));
    c.propose(4, b"stuck").expect("node 4 still thinks it leads");
    c.ticks(20);
    assert_eq!(c.node(4).role(), Role::Leader);
    assert_eq!(c.node(4).commit_index(), commit, "two of five cannot commit");
    for id in 1..=4 {
        assert!(c.applied_data(id).is_empty(), "node {id}");
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Delayed rejection (etcd-io/raft#148).
// ---------------------------------------------------------------------------------------------

/// Node 2 holds a stale entry (4, term 1) where the new leader (node 1, term 3) has (4, term 2).
/// Its first rejection of prev index 4 is delayed until after node 2 has matched up to 4. Arriving
/// in the replicate state it must be ignored; arriving again in the probe state (where its index
/// happens to equal next - 1) it must not move next to or below match.
#[test]
fn pitfall_08_delayed_rejection_never_sets_next_below_match_plus_one() {
    let voters = ids(3);
    let make = |id: u64, terms: &[u64]| {
        let opts = base_options(NodeId(id)).message_entries_max(1).build().expect("valid options");
        node_with_log(NodeId(id), &voters, terms, 2, opts)
    };
    let nodes =
        [(NodeId(1), make(1, &[1, 1, 1, 2])), (NodeId(2), make(2, &[1, 1, 1, 1])), (NodeId(3), make(3, &[1, 1, 1, 2]))];
    let mut c = Cluster::from_nodes(nodes.into());

    c.node_mut(1).campaign();
    let held = deliver_with(&mut c, |m| if between(m, 2, 1) && is_reject(m) { Fate::Hold } else { Fate::Deliver });
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(c.node(1).term(), Term(3));
    let [stale] = held.as_slice() else { panic!("expected one held rejection, got {held:?}") };
    let MessageBody::AppendResponse(AppendResult::Reject { rejected_index, .. }) = stale.body else { unreachable!() };
    assert_eq!(rejected_index, Index(4));

    // A heartbeat round lets the leader probe again; node 2 rejects again (delivered this time),
    // then matches up to 4. Its append carrying index 5 is lost.
    let mut matched_4 = false;
    tick_with(&mut c, |m| {
        if between(m, 2, 1) && is_success(m, 4) {
            matched_4 = true;
        }
        if between(m, 1, 2) && matched_4 && carries(m, 5) { Fate::Drop } else { Fate::Deliver }
    });
    let before = progress(&c, 1, 2);
    assert_eq!((before.state, before.match_index, before.next_index), (ProgressState::Replicate, Index(4), Index(6)));

    // The delayed rejection arrives in the replicate state: ignored.
    c.node_mut(1).step(stale.clone()).expect("a stale rejection is not an error");
    assert_eq!(progress(&c, 1, 2), before, "a stale rejection changed the progress");

    // The driver reports node 2 unreachable: probe from match + 1 = 5. A duplicate of the same old
    // rejection (prev index 4 = next - 1) arrives: next must stay above match.
    c.node_mut(1).report_unreachable(NodeId(2));
    assert_eq!(progress(&c, 1, 2).next_index, Index(5));
    c.node_mut(1).step(stale.clone()).expect("a stale rejection is not an error");
    let after = progress(&c, 1, 2);
    assert_eq!(after.match_index, Index(4));
    assert_eq!(after.next_index, Index(5), "next moved to or below match");

    c.deliver_all();
    c.ticks(2);
    assert_eq!(progress(&c, 1, 2).match_index, Index(5));
    assert_eq!(c.log_of(2), log(&[1, 1, 1, 2, 3]));
}

// ---------------------------------------------------------------------------------------------
// 9. Commit beyond the follower's log (etcd#10166).
// ---------------------------------------------------------------------------------------------

/// A heartbeat or append whose commit exceeds what the follower holds: clamp, do not panic.
#[test]
fn pitfall_09_commit_beyond_last_index_is_clamped() {
    let voters = ids(3);
    let mut node = node_with_log(NodeId(2), &voters, &[1, 1], 1, options(NodeId(2), true, true));
    node.step(message(1, 2, 1, MessageBody::Heartbeat { commit: Index(10), round: 0 })).expect("heartbeat accepted");
    assert_eq!(node.commit_index(), Index(2));
    let output = drive(&mut node, true);
    assert_eq!(output.messages_after_persist, vec![message(2, 1, 1, MessageBody::HeartbeatResponse { round: 0 })]);
    assert_eq!(output.committed.len(), 2);

    // An append commits at most through the last entry it vouches for (prev + entries).
    let mut node = node_with_log(NodeId(2), &voters, &[1, 1, 1], 1, options(NodeId(2), true, true));
    let body = MessageBody::AppendEntries {
        prev_log_index: Index(1),
        prev_log_term: Term(1),
        entries: vec![],
        commit: Index(10),
    };
    node.step(message(1, 2, 1, body)).expect("append accepted");
    assert_eq!(node.commit_index(), Index(1));
}

/// A follower that lost its disk comes back empty; the leader still believes it holds index 3 and
/// heartbeats it with commit 3. The follower clamps to its empty log and keeps running.
#[test]
fn pitfall_09_follower_that_lost_its_disk_survives_a_heartbeat() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, b"a").expect("leader accepts");
    c.propose(1, b"b").expect("leader accepts");
    c.ticks(2);
    assert_eq!(c.node(2).commit_index(), Index(3));

    c.crash(2);
    let voters = ids(3);
    let empty = MemStorage::new(raft_core::Membership::new(voters.iter().copied()));
    let fresh = Raft::new(NodeId(2), c.options[&NodeId(2)].clone(), empty).expect("memory");
    c.nodes.insert(NodeId(2), fresh);
    c.applied.insert(NodeId(2), Vec::new());
    c.down.remove(&NodeId(2));
    let seen = c.delivered.len();

    c.tick_all();
    let heartbeat_beyond_log =
        |m: &Message| between(m, 1, 2) && matches!(m.body, MessageBody::Heartbeat { commit: Index(3), .. });
    assert!(
        c.delivered[seen..].iter().any(heartbeat_beyond_log),
        "the scenario needs a heartbeat beyond the empty log"
    );
    assert_eq!(c.node(2).commit_index(), Index(0));
    assert_eq!(c.node(2).leader(), Some(NodeId(1)));
    assert!(c.applied[&NodeId(2)].is_empty());
}

// ---------------------------------------------------------------------------------------------
// 10. Inflight accounting and bounded sends (etcd-io/raft#54).
// ---------------------------------------------------------------------------------------------

const WINDOW: usize = 4;

fn windowed_cluster() -> Cluster {
    let mut c = cluster_tuned(3, |b| b.inflight_messages_max(WINDOW));
    c.elect(1);
    c.ticks(1);
    assert!(c.node(1).is_replicating(NodeId(3)));
    c
}

/// Node 3 never answers. Over 40 proposals and ticks the leader sends it exactly a window's worth
/// of appends with entries and then nothing; node 2 keeps committing. When the driver reports node
/// 3 unreachable, the progress becomes probe with an empty window, and node 3 catches up.
#[test]
fn pitfall_10_sends_to_a_silent_follower_are_bounded_and_reset_on_probe() {
    let mut c = windowed_cluster();
    let (mut with_entries, mut empty, mut last_round_with_send) = (0, 0, None);
    for round in 0..40 {
        c.node_mut(1).propose(Bytes::from(format!("p{round}"))).expect("leader accepts");
        let mut count = |m: &Message| {
            if m.to != NodeId(3) && m.from != NodeId(3) {
                return Fate::Deliver;
            }
            if m.from == NodeId(1)
                && let Some(n) = append_entry_count(m)
            {
                if n > 0 {
                    with_entries += 1;
                } else {
                    empty += 1;
                }
                last_round_with_send = Some(round);
            }
            Fate::Drop
        };
        deliver_with(&mut c, &mut count);
        tick_with(&mut c, &mut count);
    }
    assert_eq!(with_entries, WINDOW, "appends with entries to a silent follower");
    assert!(empty <= WINDOW, "empty appends to a silent follower: {empty}");
    assert!(last_round_with_send.is_some_and(|r| r < WINDOW), "sent at round {last_round_with_send:?}");
    let stuck = progress(&c, 1, 3);
    assert_eq!((stuck.state, stuck.inflight_messages), (ProgressState::Replicate, WINDOW));
    assert!(stuck.paused);
    assert_eq!(c.node(2).commit_index(), c.node(1).last_index(), "node 2 and the leader still commit");

    c.node_mut(1).report_unreachable(NodeId(3));
    let probe = progress(&c, 1, 3);
    assert_eq!(probe.state, ProgressState::Probe);
    assert_eq!(probe.inflight_messages, 0, "inflight accounting survived the state change");
    assert_eq!(probe.next_index, probe.match_index.next());

    c.ticks(3);
    assert_eq!(c.log_of(3), c.log_of(1));
    let caught_up = progress(&c, 1, 3);
    assert_eq!((caught_up.state, caught_up.match_index), (ProgressState::Replicate, c.node(1).last_index()));
    assert_eq!(caught_up.inflight_messages, 0);
}

/// Appends to node 3 are lost until the window is full; after the link heals, a rejection moves it
/// to probe, which must start with an empty window, and it catches up.
#[test]
fn pitfall_10_rejection_moves_follower_to_probe_with_an_empty_window() {
    let mut c = windowed_cluster();
    c.cut(1, 3);
    for data in [b"a", b"b", b"c", b"d"] {
        c.propose(1, data).expect("leader accepts");
    }
    assert_eq!(progress(&c, 1, 3).inflight_messages, WINDOW);
    c.heal();
    c.propose(1, b"e").expect("leader accepts");

    let held = tick_with(&mut c, |m| if between(m, 3, 1) && is_reject(m) { Fate::Hold } else { Fate::Deliver });
    let [reject] = held.as_slice() else { panic!("expected node 3 to reject once, got {held:?}") };
    let before = progress(&c, 1, 3);
    assert_eq!((before.state, before.inflight_messages), (ProgressState::Replicate, WINDOW));

    c.node_mut(1).step(reject.clone()).expect("rejection handled");
    let after = progress(&c, 1, 3);
    assert_eq!(after.state, ProgressState::Probe);
    assert_eq!(after.inflight_messages, 0, "inflight accounting survived the state change");
    assert_eq!(after.next_index, Index(2));

    c.deliver_all();
    c.ticks(2);
    assert_eq!(c.log_of(3), c.log_of(1));
    assert_eq!(progress(&c, 1, 3).match_index, c.node(1).last_index());
}

/// Appends to node 3 are lost (the transport does not notice), then the link heals and the group
/// goes idle. Node 3 answers every heartbeat, so the leader knows it lags (match < last): it must
/// resend, or node 3 stays behind for as long as nobody proposes.
#[test]
fn pitfall_10_lost_appends_are_resent_while_the_leader_is_idle() {
    let mut c = windowed_cluster();
    c.cut(1, 3);
    c.propose(1, b"a").expect("leader accepts");
    c.propose(1, b"b").expect("leader accepts");
    c.heal();
    c.ticks(30);
    assert_eq!(c.log_of(3), c.log_of(1), "node 3 never got the lost entries back");
    assert_eq!(c.node(3).commit_index(), Index(3));
}

// ---------------------------------------------------------------------------------------------
// 11. Async-write ABA (etcd-io/raft#8).
// ---------------------------------------------------------------------------------------------

/// Node 1 hands writes to a slow disk, loses leadership, has its tail replaced, and leads again.
/// Late reports for the replaced entries (same index, older term) must not count as durability of
/// the new entries: neither the durable index nor the leader's commit may move.
#[test]
fn pitfall_11_late_write_report_for_a_replaced_entry_is_ignored() {
    let voters = ids(3);
    let hard_state = HardState { term: Term(1), vote: None, commit: Index(1) };
    let storage = storage_with_log(&voters, &[1], hard_state);
    let mut n1 = Raft::new(NodeId(1), options(NodeId(1), false, true), storage).expect("memory");

    // Term 2: node 1 leads with node 2's vote. Write W0 = [(2, t2)], W1 = [(3, t2)]: not yet durable.
    n1.campaign();
    let _ = drive(&mut n1, false);
    n1.step(vote_granted(2, 1, 2)).expect("vote counted");
    assert_eq!(n1.role(), Role::Leader);
    assert_eq!(drive(&mut n1, false).entries, vec![noop(2, 2)]);
    n1.propose(Bytes::from_static(b"x")).expect("leader accepts");
    assert_eq!(drive(&mut n1, false).entries, vec![entry(3, 2, b"x")]);

    // Term 3: node 3 leads and replaces index 2; index 3 is gone. Write W2 = [(2, t3)].
    let body = MessageBody::AppendEntries {
        prev_log_index: Index(1),
        prev_log_term: Term(1),
        entries: vec![noop(2, 3)],
        commit: Index(1),
    };
    n1.step(message(3, 1, 3, body)).expect("append accepted");
    assert_eq!(drive(&mut n1, false).entries, vec![noop(2, 3)]);
    n1.on_persisted(Index(2), Term(2)); // W0 completes late: (2, t2) is no longer in the log
    assert_eq!(n1.status().stable_last_index, Index(1));

    // Term 4: node 1 leads again; its no-op takes index 3. Write W3 = [(3, t4)].
    n1.campaign();
    let _ = drive(&mut n1, false);
    n1.step(vote_granted(2, 1, 4)).expect("vote counted");
    assert_eq!(n1.role(), Role::Leader);
    assert_eq!(drive(&mut n1, false).entries, vec![noop(3, 4)]);
    n1.on_persisted(Index(3), Term(2)); // W1 completes late: same index, older term
    assert_eq!(n1.status().stable_last_index, Index(1), "a report for (3, t2) made (3, t4) durable");

    // Node 2 holds (3, t4) durably; node 1 does not yet, and node 3 is silent: no quorum.
    n1.step(append_ack(2, 1, 4, 3)).expect("ack counted");
    assert_eq!(n1.commit_index(), Index(1), "committed without the leader's own durable copy");
    assert!(drive(&mut n1, false).committed.is_empty());

    // W2 and W3 complete: now index 3 is durable on a majority.
    n1.on_persisted(Index(3), Term(4));
    assert_eq!(n1.status().stable_last_index, Index(3));
    assert_eq!(n1.commit_index(), Index(3));
    assert_eq!(drive(&mut n1, false).committed, vec![noop(2, 3), noop(3, 4)]);
}

// ---------------------------------------------------------------------------------------------
// 12. Never truncate matching entries.
// ---------------------------------------------------------------------------------------------

/// Follower log [t1, t2]; a late AppendEntries prev 0 + [t1] (duplicated or reordered) matches and
/// must leave [t1, t2] intact; it acknowledges only index 1.
#[test]
fn pitfall_12_matching_append_does_not_truncate() {
    let voters = ids(3);
    let mut node = node_with_log(NodeId(2), &voters, &[1, 2], 2, options(NodeId(2), true, true));
    let body = MessageBody::AppendEntries {
        prev_log_index: Index(0),
        prev_log_term: Term(0),
        entries: vec![noop(1, 1)],
        commit: Index(0),
    };
    node.step(message(1, 2, 2, body)).expect("append accepted");
    assert_eq!(node.last_index(), Index(2));
    let output = drive(&mut node, true);
    assert!(output.entries.is_empty(), "nothing to rewrite: {:?}", output.entries);
    assert_eq!(output.messages_after_persist, vec![append_ack(2, 1, 2, 1)]);
    let terms: Vec<Term> = node.storage().all_entries().iter().map(|e| e.term).collect();
    assert_eq!(terms, vec![Term(1), Term(2)]);
    assert_eq!(node.last_index(), Index(2));
}

// ---------------------------------------------------------------------------------------------
// 13. Stale acknowledgements after a log rollback.
// ---------------------------------------------------------------------------------------------

/// Five voters. Term 2: node 1 leads with [1, (2, t2), (3, t2)]; node 2's ack of index 3 is delayed.
/// Term 3: node 3 leads and rolls node 1 back to [1, (2, t3)]. Term 4: node 1 leads again with
/// [1, (2, t3), (3, t4)]. Node 2's term-2 ack of "index 3" must not count for (3, t4): with it,
/// nodes 1, 2, 4 would be a false quorum. Progress from term 2 must not survive either.
#[test]
fn pitfall_13_stale_term_ack_does_not_form_a_false_quorum() {
    let voters = ids(5);
    let hard_state = HardState { term: Term(1), vote: None, commit: Index(1) };
    let storage = storage_with_log(&voters, &[1], hard_state);
    let mut n1 = Raft::new(NodeId(1), options(NodeId(1), false, true), storage).expect("memory");

    n1.campaign();
    let _ = drive(&mut n1, true);
    n1.step(vote_granted(2, 1, 2)).expect("vote counted");
    n1.step(vote_granted(3, 1, 2)).expect("vote counted");
    assert_eq!((n1.role(), n1.term()), (Role::Leader, Term(2)));
    let _ = drive(&mut n1, true);
    n1.propose(Bytes::from_static(b"a")).expect("leader accepts");
    let _ = drive(&mut n1, true);
    n1.step(append_ack(2, 1, 2, 2)).expect("ack counted");
    let delayed = append_ack(2, 1, 2, 3);
    assert_eq!(n1.status().progress[&NodeId(2)].match_index, Index(2));
    assert_eq!(n1.commit_index(), Index(1));

    let body = MessageBody::AppendEntries {
        prev_log_index: Index(1),
        prev_log_term: Term(1),
        entries: vec![noop(2, 3)],
        commit: Index(1),
    };
    n1.step(message(3, 1, 3, body)).expect("append accepted");
    let _ = drive(&mut n1, true);
    assert_eq!(n1.role(), Role::Follower);
    assert_eq!(n1.last_index(), Index(2));

    n1.campaign();
    let _ = drive(&mut n1, true);
    n1.step(vote_granted(4, 1, 4)).expect("vote counted");
    n1.step(vote_granted(5, 1, 4)).expect("vote counted");
    assert_eq!((n1.role(), n1.term()), (Role::Leader, Term(4)));
    let _ = drive(&mut n1, true);
    assert_eq!(n1.status().stable_last_index, Index(3));
    for (id, p) in &n1.status().progress {
        assert_eq!(p.match_index, Index(0), "progress of {id} carried over from an earlier term");
    }

    let result = n1.step(delayed);
    assert!(
        matches!(result, Err(StepError::Ignored(raft_core::Ignored::StaleTerm { .. }))),
        "stale ack accepted: {result:?}"
    );
    n1.step(append_ack(4, 1, 4, 3)).expect("ack counted");
    assert_eq!(n1.commit_index(), Index(1), "nodes 1 and 4 are not a quorum of five");
    n1.step(append_ack(5, 1, 4, 3)).expect("ack counted");
    assert_eq!(n1.commit_index(), Index(3));
}

/// A follower whose log has a stale tail from an older leader ([1, 1, 1]) answers an append of the
/// new leader (term 2) checked only through index 2: it may acknowledge index 2, not its own last
/// index 3, which holds an entry the new leader may not have.
#[test]
fn pitfall_13_ack_covers_only_what_the_append_checked() {
    let voters = ids(3);
    let mut node = node_with_log(NodeId(2), &voters, &[1, 1, 1], 1, options(NodeId(2), true, true));
    let body = MessageBody::AppendEntries {
        prev_log_index: Index(2),
        prev_log_term: Term(1),
        entries: vec![],
        commit: Index(0),
    };
    node.step(message(1, 2, 2, body)).expect("append accepted");
    let output = drive(&mut node, true);
    assert_eq!(output.messages_after_persist, vec![append_ack(2, 1, 2, 2)]);
    // A heartbeat acknowledges no index at all.
    node.step(message(1, 2, 2, MessageBody::Heartbeat { commit: Index(0), round: 0 })).expect("heartbeat accepted");
    let output = drive(&mut node, true);
    assert_eq!(output.messages_after_persist, vec![message(2, 1, 2, MessageBody::HeartbeatResponse { round: 0 })]);
}

// ---------------------------------------------------------------------------------------------
// 14. Storage read errors on the leader (openraft#1795).
// ---------------------------------------------------------------------------------------------

/// `MemStorage` whose reads of entries and terms can be made to fail.
#[derive(Clone, Debug)]
struct FlakyStorage {
    inner: MemStorage,
    fail_entries: bool,
    fail_term: bool,
}

fn io_error() -> StorageError {
    StorageError::Io { kind: std::io::ErrorKind::Other, raw_os_error: None }
}

impl Storage for FlakyStorage {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        self.inner.initial_state()
    }
    fn entries(&self, low: Index, high: Index, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        if self.fail_entries {
            return Err(io_error());
        }
        self.inner.entries(low, high, bytes_max)
    }
    fn term(&self, index: Index) -> Result<Term, StorageError> {
        if self.fail_term {
            return Err(io_error());
        }
        self.inner.term(index)
    }
    fn first_index(&self) -> Result<Index, StorageError> {
        self.inner.first_index()
    }
    fn last_index(&self) -> Result<Index, StorageError> {
        self.inner.last_index()
    }
    fn snapshot(&self) -> Result<SnapshotMeta, StorageError> {
        self.inner.snapshot()
    }
    fn snapshot_chunk(&self, index: Index, term: Term, offset: u64, max: u64) -> Result<SnapshotChunk, StorageError> {
        self.inner.snapshot_chunk(index, term, offset, max)
    }
}

impl Persist for FlakyStorage {
    fn persist(&mut self, hard_state: Option<HardState>, entries: &[Entry]) {
        self.inner.persist(hard_state, entries);
    }
}

/// Leader 1 over a `FlakyStorage`, followers 2 and 3 over `MemStorage`.
struct FlakyNet {
    leader: Raft<FlakyStorage>,
    followers: BTreeMap<NodeId, Raft<MemStorage>>,
    queue: VecDeque<Message>,
    isolated: BTreeSet<NodeId>,
    /// Every message the leader sent, in order.
    from_leader: Vec<Message>,
}

impl FlakyNet {
    fn new() -> Self {
        let voters = ids(3);
        let membership = || raft_core::Membership::new(voters.iter().copied());
        let storage = FlakyStorage { inner: MemStorage::new(membership()), fail_entries: false, fail_term: false };
        let leader = Raft::new(NodeId(1), options(NodeId(1), true, true), storage).expect("memory");
        let followers = [2, 3]
            .map(|id| {
                let id = NodeId(id);
                (id, Raft::new(id, options(id, true, true), MemStorage::new(membership())).expect("memory"))
            })
            .into();
        FlakyNet { leader, followers, queue: VecDeque::new(), isolated: BTreeSet::new(), from_leader: Vec::new() }
    }

    fn process(&mut self, id: NodeId) {
        let messages = if id == NodeId(1) {
            let messages = all_messages(&drive(&mut self.leader, true));
            self.from_leader.extend(messages.iter().cloned());
            messages
        } else {
            all_messages(&drive(self.followers.get_mut(&id).expect("known follower"), true))
        };
        self.queue.extend(messages);
    }

    fn deliver_all(&mut self) {
        for _ in 0..100_000 {
            for id in [1, 2, 3] {
                self.process(NodeId(id));
            }
            let Some(m) = self.queue.pop_front() else { return };
            if self.isolated.contains(&m.from) || self.isolated.contains(&m.to) {
                continue;
            }
            let to = m.to;
            let _ = if to == NodeId(1) {
                self.leader.step(m)
            } else {
                self.followers.get_mut(&to).expect("known follower").step(m)
            };
            self.process(to);
        }
        panic!("the network never went quiet");
    }

    fn tick(&mut self) {
        self.leader.tick();
        for follower in self.followers.values_mut() {
            follower.tick();
        }
        self.deliver_all();
    }

    fn propose(&mut self, data: &'static [u8]) {
        self.leader.propose(Bytes::from_static(data)).expect("leader accepts");
        self.deliver_all();
    }

    fn follower_log(&self, id: u64) -> Vec<Entry> {
        self.followers[&NodeId(id)].storage().all_entries().to_vec()
    }

    fn appends_sent_since(&self, seen: usize) -> Vec<&Message> {
        self.from_leader[seen..].iter().filter(|m| is_append(m)).collect()
    }
}

/// While the leader cannot read entries (then terms) from its store it sends no AppendEntries at
/// all, rather than one with a made-up prev term or missing entries; once reads work again every
/// append it sends matches its log, and the followers catch up.
#[test]
fn pitfall_14_storage_read_error_sends_no_malformed_append() {
    let mut net = FlakyNet::new();
    net.leader.campaign();
    net.deliver_all();
    assert!(net.leader.is_leader());
    net.propose(b"a");
    net.tick();
    // Node 3 goes away (and the driver notices): the leader will probe it from index 3.
    net.isolated.insert(NodeId(3));
    net.leader.report_unreachable(NodeId(3));
    net.propose(b"b");
    net.propose(b"c");
    net.tick();
    assert_eq!(net.leader.commit_index(), Index(4));
    assert_eq!(net.follower_log(3).len(), 2);
    assert!(!net.leader.has_output());

    // Entries cannot be read: node 3 comes back and needs indexes 3 and 4 from the store.
    net.leader.storage_mut().fail_entries = true;
    net.isolated.clear();
    let seen = net.from_leader.len();
    for _ in 0..5 {
        net.tick();
    }
    assert!(net.from_leader[seen..].iter().any(|m| matches!(m.body, MessageBody::Heartbeat { commit: Index(2), .. })));
    assert_eq!(net.appends_sent_since(seen), Vec::<&Message>::new());
    assert_eq!(net.follower_log(3).len(), 2);

    // Terms cannot be read either: a new proposal needs the stored term of index 4 as prev.
    net.leader.storage_mut().fail_entries = false;
    net.leader.storage_mut().fail_term = true;
    let seen = net.from_leader.len();
    net.propose(b"d");
    for _ in 0..5 {
        net.tick();
    }
    assert_eq!(net.appends_sent_since(seen), Vec::<&Message>::new());
    assert_eq!(net.follower_log(2).len(), 4);
    assert_eq!(net.leader.commit_index(), Index(4));
    assert!(net.leader.is_leader());

    // Reads work again: everyone catches up, and every append matched the leader's log.
    net.leader.storage_mut().fail_term = false;
    let seen = net.from_leader.len();
    for _ in 0..3 {
        net.tick();
    }
    let log = net.leader.storage().inner.all_entries().to_vec();
    assert_eq!(log.len(), 5);
    let appends = net.appends_sent_since(seen);
    assert!(!appends.is_empty());
    for m in appends {
        let MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, .. } = &m.body else { unreachable!() };
        let prev = prev_log_index.0 as usize;
        let expected_prev_term = if prev == 0 { Term(0) } else { log[prev - 1].term };
        assert_eq!(*prev_log_term, expected_prev_term, "malformed append {m:?}");
        assert_eq!(entries.as_slice(), &log[prev..prev + entries.len()], "malformed append {m:?}");
    }
    assert_eq!(net.follower_log(2), log);
    assert_eq!(net.follower_log(3), log);
    assert_eq!(net.leader.commit_index(), Index(5));
}

// ---------------------------------------------------------------------------------------------
// 15-18. Snapshots and compaction.
// ---------------------------------------------------------------------------------------------

const PAYLOADS: [&[u8]; 12] = [b"p0", b"p1", b"p2", b"p3", b"p4", b"p5", b"p6", b"p7", b"p8", b"p9", b"pa", b"pb"];

fn voters3() -> raft_core::Membership {
    raft_core::Membership::new(ids(3))
}

fn snapshot_meta(index: u64, term: u64) -> SnapshotMeta {
    let data_crc32 = raft_core::snapshot_crc32(b"state");
    SnapshotMeta { index: Index(index), term: Term(term), membership: voters3(), data_crc32 }
}

/// One complete (single-chunk) snapshot message from leader 2 in `term`.
fn whole_snapshot(meta: SnapshotMeta, term: u64) -> Message {
    message(2, 1, term, MessageBody::install_snapshot(meta, 0, Bytes::from_static(b"state"), true))
}

/// Follower 1 with log [t1, t1, t1], commit 1, in term 1.
fn follower_with_three_entries() -> Raft<MemStorage> {
    let hard_state = HardState { term: Term(1), vote: None, commit: Index(1) };
    let storage = storage_with_log(&ids(3), &[1, 1, 1], hard_state);
    Raft::new(NodeId(1), options(NodeId(1), true, true), storage).expect("memory storage")
}

/// A stale snapshot is ignored: one at the commit index changes nothing, one inside the log
/// advances the commit index and keeps every entry; neither is installed.
#[test]
fn pitfall_15_stale_snapshot_is_ignored_and_entries_are_kept() {
    let mut node = follower_with_three_entries();
    let _ = drive(&mut node, true);

    node.step(whole_snapshot(snapshot_meta(1, 1), 1)).expect("a stale snapshot is answered, not refused");
    let output = drive(&mut node, true);
    assert_eq!(output.install_snapshot, None);
    assert!(output.snapshot_chunks.is_empty(), "nothing of a stale snapshot is written");
    assert_eq!(output.messages_after_persist, vec![append_ack(1, 2, 1, 1)]);
    assert_eq!((node.commit_index(), node.last_index()), (Index(1), Index(3)));

    node.step(whole_snapshot(snapshot_meta(2, 1), 1)).expect("a snapshot of held entries is answered");
    let output = drive(&mut node, true);
    assert_eq!(output.install_snapshot, None);
    assert!(output.snapshot_chunks.is_empty());
    assert_eq!(output.messages_after_persist, vec![append_ack(1, 2, 1, 2)]);
    assert_eq!((node.commit_index(), node.last_index()), (Index(2), Index(3)));
    assert_eq!(node.storage().all_entries().len(), 3, "entries are kept");
}

/// A snapshot whose last entry contradicts a committed entry is refused before it moves the
/// term, the leader or the log (openraft#1892).
#[test]
fn pitfall_16_snapshot_conflicting_with_a_committed_index_is_rejected() {
    let hard_state = HardState { term: Term(1), vote: None, commit: Index(2) };
    let storage = storage_with_log(&ids(3), &[1, 1, 1], hard_state);
    let mut node = Raft::new(NodeId(1), options(NodeId(1), true, true), storage).expect("memory storage");
    let _ = drive(&mut node, true);

    let result = node.step(whole_snapshot(snapshot_meta(2, 2), 3));
    assert_eq!(result, Err(StepError::Malformed(raft_core::Malformed::SnapshotConflictsWithCommitted(Index(2)))));
    let output = drive(&mut node, true);
    assert!(output.is_empty(), "nothing is written or sent: {output:?}");
    assert_eq!((node.term(), node.leader()), (Term(1), None));
    assert_eq!((node.commit_index(), node.last_index()), (Index(2), Index(3)));
}

/// A cluster that snapshots often: tiny chunks, a window of two, and a margin of `margin`.
fn snapshot_cluster(margin: u64) -> Cluster {
    cluster_tuned(3, |b| {
        b.compaction_margin_entries(margin).snapshot_chunk_bytes_max(8).snapshot_chunks_inflight_max(2)
    })
}

fn install_chunks_to(c: &Cluster, to: u64) -> usize {
    c.delivered.iter().filter(|m| m.to == NodeId(to) && matches!(m.body, MessageBody::InstallSnapshot { .. })).count()
}

/// Node 3 is down while the leader commits and compacts past it. When it returns, the leader
/// switches it to a snapshot (no panic on the compacted term lookup), streams it in chunks, and
/// node 3 ends with the same state machine and log as everyone else (etcd#7470, openraft#511).
#[test]
fn pitfall_17_follower_behind_compaction_catches_up_by_snapshot() {
    let mut c = snapshot_cluster(2);
    c.elect(1);
    c.crash(3);
    for payload in PAYLOADS {
        c.propose(1, payload).expect("leader accepts");
    }
    let meta = c.snapshot(1);
    assert_eq!(meta.index, Index(13), "the no-op and twelve proposals are applied");
    assert_eq!(c.node(1).storage().first_index(), Ok(Index(12)), "two entries stay below the snapshot");

    c.restart(3);
    c.ticks(5);
    assert!(install_chunks_to(&c, 3) > 1, "the snapshot went in several chunks");
    assert_eq!(install_chunks_to(&c, 2), 0, "an up-to-date follower gets no snapshot");
    assert_eq!(c.node(3).storage().snapshot(), Ok(meta.clone()));
    assert_eq!(c.applied_data(3), c.applied_data(1));
    assert_eq!(c.node(3).commit_index(), c.node(1).commit_index());
    assert!(!c.node(1).is_sending_snapshot(NodeId(3)), "the transfer ended");

    // Replication goes on from the snapshot.
    c.propose(1, b"after").expect("leader accepts");
    assert_eq!(c.applied_data(3), c.applied_data(1));
    assert_eq!(c.log_of(3), c.log_of(1)[2..].to_vec(), "node 3's log starts after the snapshot");
}

/// A follower less than the margin behind catches up from the log: no snapshot needed.
#[test]
fn pitfall_17_follower_within_the_margin_catches_up_from_the_log() {
    let mut c = snapshot_cluster(5);
    c.elect(1);
    for payload in &PAYLOADS[..8] {
        c.propose(1, payload).expect("leader accepts");
    }
    c.crash(3);
    for payload in &PAYLOADS[8..] {
        c.propose(1, payload).expect("leader accepts");
    }
    c.snapshot(1);
    c.restart(3);
    c.ticks(5);
    assert_eq!(install_chunks_to(&c, 3), 0);
    assert_eq!(c.applied_data(3), c.applied_data(1));
}

/// After a restart the state machine comes from the snapshot and applying resumes at snapshot
/// index + 1, with no gap between the snapshot and the log (Redis-Raft #43).
#[test]
fn pitfall_18_restart_from_snapshot_resumes_applying_after_it() {
    let mut c = snapshot_cluster(2);
    c.elect(1);
    for payload in &PAYLOADS[..6] {
        c.propose(1, payload).expect("leader accepts");
    }
    let meta = c.snapshot(1);
    for payload in &PAYLOADS[6..] {
        c.propose(1, payload).expect("leader accepts");
    }
    let before = c.applied_data(1);
    let storage = c.node(1).storage();
    let first = storage.first_index().expect("memory");
    assert!(first.prev() <= meta.index, "no gap between the snapshot and the log");

    c.crash(1);
    c.restart(1);
    let node = c.node(1);
    assert_eq!(node.status().applied, meta.index, "the state machine restarts at the snapshot");
    assert_eq!(c.restored[&NodeId(1)], before[..6].to_vec());
    c.tick_until_leader(100).expect("a leader is elected");
    c.ticks(3);
    let first_applied = c.applied[&NodeId(1)].first().expect("entries after the snapshot are applied").index;
    assert_eq!(first_applied, meta.index.next(), "applying resumes just after the snapshot");
    assert_eq!(c.applied_data(1)[..before.len()], before[..]);
}

/// The same for a follower that installed a snapshot from the leader and then restarted.
#[test]
fn pitfall_18_follower_restarts_from_an_installed_snapshot() {
    let mut c = snapshot_cluster(0);
    c.elect(1);
    c.crash(3);
    for payload in PAYLOADS {
        c.propose(1, payload).expect("leader accepts");
    }
    let meta = c.snapshot(1);
    c.restart(3);
    c.ticks(5);
    assert_eq!(c.node(3).storage().snapshot(), Ok(meta.clone()));
    c.crash(3);
    c.restart(3);
    assert_eq!(c.node(3).status().applied, meta.index);
    assert_eq!(c.node(3).storage().first_index(), Ok(meta.index.next()));
    c.propose(1, b"after").expect("leader accepts");
    c.ticks(3);
    assert_eq!(c.applied_data(3), c.applied_data(1));
    assert_eq!(c.applied[&NodeId(3)].first().map(|e| e.index), Some(meta.index.next()));
}
