//! Membership changes by joint consensus, learners, and leadership transfer, with the pitfalls
//! of docs/pitfalls.md #6, #7, #19-21 and the transfer half of #25.

mod common;

use std::collections::BTreeSet;

use bytes::Bytes;
use common::{Cluster, Fate, cluster_tuned, deliver_with, ids, message, noop, tick_with};
use raft_core::{
    ConfChange, Entry, EntryPayload, HardState, Index, Membership, MembershipError, Message, MessageBody, NodeId,
    ProposeError, Raft, ReadMode, Role, Storage, Term, TransferError,
};
use raft_storage::MemStorage;

fn voters(c: &Cluster, id: u64) -> BTreeSet<NodeId> {
    c.node(id).membership().voters_incoming.clone()
}

fn set(list: &[u64]) -> BTreeSet<NodeId> {
    list.iter().copied().map(NodeId).collect()
}

/// A cluster of `n` led by node 1 with its no-op committed.
fn led_by_1(n: u64) -> Cluster {
    let mut c = Cluster::new(n);
    c.elect(1);
    c.ticks(1);
    c
}

/// Runs a change to completion: the joint entry, then the automatic leave.
fn change(c: &mut Cluster, leader: u64, changes: &[ConfChange]) -> Index {
    let index = c.node_mut(leader).change_membership(changes).expect("the change is accepted");
    c.deliver_all();
    c.ticks(3);
    index
}

#[test]
fn adding_a_voter_goes_through_a_joint_configuration_and_leaves_it() {
    let mut c = led_by_1(3);
    c.add_node(4);
    let index = change(&mut c, 1, &[ConfChange::AddVoter(NodeId(4))]);
    let log = c.node(1).storage().all_entries().to_vec();
    let joint = &log[index.0 as usize - 1];
    let EntryPayload::Membership(joint) = &joint.payload else { panic!("a membership entry at {index}") };
    assert_eq!((joint.voters_incoming.clone(), joint.voters_outgoing.clone()), (set(&[1, 2, 3, 4]), set(&[1, 2, 3])));
    let leave = log.iter().skip(index.0 as usize).find_map(|e| match &e.payload {
        EntryPayload::Membership(m) => Some(m.clone()),
        _ => None,
    });
    assert_eq!(leave, Some(Membership::new([1, 2, 3, 4].map(NodeId))), "the leader left the joint state itself");
    for id in 1..=4 {
        assert_eq!(voters(&c, id), set(&[1, 2, 3, 4]), "node {id}");
        assert!(!c.node(id).membership().is_joint());
    }
    c.propose(1, b"after").expect("the group works");
    assert_eq!(c.applied_data(4), c.applied_data(1));
}

#[test]
fn two_voters_added_in_a_row_and_a_second_change_waits_for_the_first() {
    let mut c = led_by_1(3);
    c.add_node(4);
    c.add_node(5);
    c.node_mut(1).change_membership(&[ConfChange::AddVoter(NodeId(4))]).expect("first");
    assert_eq!(
        c.node_mut(1).change_membership(&[ConfChange::AddVoter(NodeId(5))]),
        Err(MembershipError::ChangeInProgress),
        "at most one change pending"
    );
    c.deliver_all();
    c.ticks(3);
    change(&mut c, 1, &[ConfChange::AddVoter(NodeId(5))]);
    for id in 1..=5 {
        assert_eq!(voters(&c, id), set(&[1, 2, 3, 4, 5]), "node {id}");
    }
    c.propose(1, b"after").expect("the group works");
    assert_eq!(c.applied_data(5), c.applied_data(1));
}

/// docs/pitfalls.md #20: a leader outside the new voters keeps replicating until the change commits,
/// without counting itself in the new configuration, then steps down; a new leader follows.
#[test]
fn replacing_the_leader_steps_it_down_after_the_change_commits() {
    let mut c = led_by_1(3);
    c.add_node(4);
    change(&mut c, 1, &[ConfChange::AddVoter(NodeId(4)), ConfChange::Remove(NodeId(1))]);
    assert_ne!(c.node(1).role(), Role::Leader, "the removed leader stepped down");
    let leader = c.tick_until_leader(100).expect("the new voters elect a leader");
    assert!([2, 3, 4].contains(&leader));
    c.propose(leader, b"after").expect("the group works");
    assert_eq!(c.applied_data(4), c.applied_data(leader));
}

/// docs/pitfalls.md #20: removing leader 1 from {1, 2, 3}, the joint configuration needs a majority
/// of {2, 3} as well: with node 3 silent, 1 and 2 (a majority of the old voters) do not commit
/// it, because the leader does not count itself where it is not a voter. It stays leader and
/// keeps replicating until the change commits, then steps down.
#[test]
fn a_removed_leader_does_not_count_itself_in_the_new_configuration() {
    let mut c = led_by_1(3);
    c.cut(1, 3);
    let joint = c.node_mut(1).change_membership(&[ConfChange::Remove(NodeId(1))]).expect("accepted");
    c.deliver_all();
    assert!(c.node(2).storage().last_index().expect("memory") >= joint, "node 2 holds the joint entry");
    assert!(c.node(1).commit_index() < joint, "1 and 2 are not a majority of {{2, 3}}");
    assert_eq!(c.node(1).role(), Role::Leader, "the leader stays until the change commits");
    c.heal();
    c.ticks(3);
    assert!(c.node(2).commit_index() > joint, "the joint entry and the leave committed");
    assert_eq!(voters(&c, 2), set(&[2, 3]));
    assert_ne!(c.node(1).role(), Role::Leader, "then it stepped down");
}

/// docs/pitfalls.md #20 (etcd#10563): removing the leader of a two-node group does not wedge it.
#[test]
fn removing_the_leader_of_a_two_node_group_does_not_wedge_it() {
    let mut c = led_by_1(2);
    change(&mut c, 1, &[ConfChange::Remove(NodeId(1))]);
    assert_eq!(voters(&c, 2), set(&[2]));
    let leader = c.tick_until_leader(100).expect("node 2 leads alone");
    assert_eq!(leader, 2);
    c.propose(2, b"alone").expect("the group works");
    assert_eq!(c.applied_data(2).last().map(|d| d.as_ref()), Some(&b"alone"[..]));
}

/// A learner catches up (here by snapshot, as the leader compacted), does not vote or count, and
/// is then promoted through a joint configuration.
#[test]
fn a_learner_catches_up_by_snapshot_and_is_promoted() {
    let mut c = cluster_tuned(3, |b| b.compaction_margin_entries(0).snapshot_chunk_bytes_max(8));
    c.elect(1);
    for data in [&b"a"[..], b"b", b"c", b"d"] {
        c.propose(1, data).expect("leader accepts");
    }
    c.snapshot(1);
    c.add_node(4);
    change(&mut c, 1, &[ConfChange::AddLearner(NodeId(4))]);
    assert!(c.node(4).membership().learners.contains(&NodeId(4)));
    assert!(c.node(4).storage().snapshot().expect("memory").exists(), "caught up by snapshot");
    assert_eq!(c.applied_data(4), c.applied_data(1));
    // Learners do not count: with 2 and 3 cut off, nothing commits.
    c.isolate(2);
    c.isolate(3);
    c.heal_link(1, 4);
    let before = c.node(1).commit_index();
    c.propose(1, b"needs a voter").ok();
    assert_eq!(c.node(1).commit_index(), before);
    c.heal();
    c.ticks(2);
    change(&mut c, 1, &[ConfChange::AddVoter(NodeId(4))]);
    assert_eq!(voters(&c, 1), set(&[1, 2, 3, 4]));
    assert!(c.node(1).membership().learners.is_empty());
}

/// docs/pitfalls.md #19: no membership entry before an entry of the leader's own term committed.
#[test]
fn pitfall_19_no_change_before_the_leaders_term_commits() {
    let mut c = led_by_1(3);
    c.crash(1);
    let hold = |m: &Message| if matches!(m.body, MessageBody::AppendResponse(_)) { Fate::Hold } else { Fate::Deliver };
    let leader = loop {
        tick_with(&mut c, hold);
        if let Some(leader) = c.leader() {
            break leader;
        }
    };
    let change = [ConfChange::AddLearner(NodeId(9))];
    assert_eq!(c.node_mut(leader).change_membership(&change), Err(MembershipError::TermNotCommitted));
    c.ticks(2);
    assert!(c.node_mut(leader).change_membership(&change).is_ok(), "fine once the no-op committed");
}

/// A node over a log whose last entry is a committed membership change it has not applied yet.
fn node_with_committed_unapplied_change() -> Raft<MemStorage> {
    let mut storage = MemStorage::new(Membership::new(ids(3)));
    let change = Entry {
        index: Index(2),
        term: Term(1),
        payload: EntryPayload::Membership(Membership::new([1, 2, 3, 4].map(NodeId))),
    };
    storage.append(&[noop(1, 1), change]).expect("consecutive");
    storage.set_hard_state(HardState { term: Term(1), vote: None, commit: Index(2) });
    Raft::new(NodeId(1), common::options(NodeId(1), true, true), storage).expect("memory")
}

/// docs/pitfalls.md #6 (etcd-io/raft#469, raft-rs#221): no campaign, by timeout or by TimeoutNow, while
/// a committed membership change is unapplied.
#[test]
fn pitfall_06_no_campaign_with_a_committed_change_unapplied() {
    let mut node = node_with_committed_unapplied_change();
    node.campaign();
    assert_eq!(node.role(), Role::Follower, "campaign refused");
    node.step(message(2, 1, 1, MessageBody::TimeoutNow)).expect("accepted");
    assert_eq!(node.role(), Role::Follower, "TimeoutNow refused too");
    let output = node.take_output().expect("memory");
    assert_eq!(output.committed.len(), 2, "now applied");
    node.campaign();
    assert_ne!(node.role(), Role::Follower, "campaigns once applied");
}

/// docs/pitfalls.md #7 (etcd#10998): a node that is a learner in its own view (its promotion not yet
/// in its log) still answers vote requests.
#[test]
fn pitfall_07_a_learner_still_votes_when_asked() {
    let mut membership = Membership::new(ids(3));
    membership.learners.insert(NodeId(4));
    let mut storage = MemStorage::new(membership);
    storage.append(&[noop(1, 1)]).expect("consecutive");
    let mut node = Raft::new(NodeId(4), common::options(NodeId(4), true, true), storage).expect("memory");
    let request =
        MessageBody::VoteRequest { pre_vote: false, last_log_index: Index(1), last_log_term: Term(1), transfer: false };
    node.step(message(2, 4, 2, request)).expect("answered");
    let output = node.take_output().expect("memory");
    let granted = MessageBody::VoteResponse { pre_vote: false, granted: true };
    assert_eq!(output.messages_after_persist, vec![message(4, 2, 2, granted)]);
}

/// docs/pitfalls.md #21: a removed node that missed its removal keeps campaigning, and cannot disrupt
/// the group: pre-vote and leader stickiness ignore it.
#[test]
fn pitfall_21_a_removed_node_cannot_disrupt_the_group() {
    let mut c = led_by_1(3);
    let hold_appends_to_3 = |m: &Message| if m.to == NodeId(3) { Fate::Drop } else { Fate::Deliver };
    c.node_mut(1).change_membership(&[ConfChange::Remove(NodeId(3))]).expect("accepted");
    deliver_with(&mut c, hold_appends_to_3);
    for _ in 0..3 {
        tick_with(&mut c, hold_appends_to_3);
    }
    assert_eq!(voters(&c, 1), set(&[1, 2]));
    assert!(c.node(3).membership().is_voter(NodeId(3)), "node 3 never learned of its removal");
    let term = c.node(1).term();
    c.ticks(60);
    assert_eq!((c.node(1).role(), c.node(1).term()), (Role::Leader, term), "node 3's campaigns changed nothing");
}

#[test]
fn leadership_transfer_to_an_up_to_date_follower() {
    let mut c = led_by_1(3);
    c.node_mut(1).transfer_leadership(NodeId(2)).expect("accepted");
    c.deliver_all();
    assert_eq!(c.node(2).role(), Role::Leader, "no election timeout needed");
    assert_eq!(c.node(1).role(), Role::Follower);
    c.ticks(1);
    c.propose(2, b"x").expect("the new leader works");
}

#[test]
fn leadership_transfer_to_a_lagging_follower_catches_it_up_first() {
    let mut c = led_by_1(3);
    c.cut_one_way(1, 3);
    for data in [&b"a"[..], b"b", b"c"] {
        c.propose(1, data).expect("leader accepts");
    }
    c.heal();
    c.node_mut(1).transfer_leadership(NodeId(3)).expect("accepted");
    assert_eq!(
        c.node_mut(1).propose(Bytes::from_static(b"during")),
        Err(ProposeError::TransferInProgress),
        "no proposals while transferring"
    );
    // Heartbeat answers drive the catch-up; TimeoutNow follows once node 3 holds everything.
    for _ in 0..3 {
        c.tick_node(1, 1);
    }
    assert_eq!(c.node(3).role(), Role::Leader);
    c.ticks(1);
    assert_eq!(c.applied_data(3), c.applied_data(1), "node 3 had everything before it campaigned");
}

/// A transfer to a node that is down is abandoned after an election timeout; the leader then
/// takes proposals again. Lease reads stop while it lasts (docs/pitfalls.md #25).
#[test]
fn leadership_transfer_to_a_down_node_is_abandoned_in_time() {
    let mut c = cluster_tuned(3, |b| b.lease_reads(true));
    c.elect(1);
    c.ticks(2);
    c.crash(3);
    c.node_mut(1).transfer_leadership(NodeId(3)).expect("accepted");
    assert_eq!(c.node_mut(1).transfer_leadership(NodeId(2)), Err(TransferError::InProgress(NodeId(3))));
    c.node_mut(1).read(1, ReadMode::Lease).expect("taken");
    c.process(NodeId(1));
    assert!(c.reads.get(&NodeId(1)).is_none_or(|r| r.is_empty()), "no lease read during a transfer");
    for _ in 0..9 {
        c.tick_all();
    }
    assert_eq!(c.node_mut(1).propose(Bytes::from_static(b"x")), Err(ProposeError::TransferInProgress));
    c.tick_all();
    c.propose(1, b"x").expect("abandoned after election_ticks: proposals again");
    assert_eq!(c.node(1).role(), Role::Leader);
}

/// Found by the simulator (seed 1988 of its first membership runs, mirrored here): leader 1 of
/// {1, 2} demotes itself to learner. Once the joint configuration committed it appended the
/// final one ({2}), then lost leadership (check-quorum) before node 2 had that entry. Node 2,
/// still joint, needs node 1's vote, which node 1 refuses (its log is ahead), and node 1, no
/// voter in its latest membership, did not campaign: no leader ever again. A node that votes in
/// its latest committed membership may campaign too; node 1 then leads, replicates the entry
/// and steps down, and node 2 leads alone.
#[test]
fn a_leader_that_left_the_voters_and_lost_leadership_mid_change_does_not_wedge_the_group() {
    let mut c = led_by_1(2);
    c.node_mut(1).change_membership(&[ConfChange::AddLearner(NodeId(1))]).expect("accepted");
    // The joint entry commits (both nodes ack it); the final entry stays on node 1 only.
    let hold_final = |m: &Message| match &m.body {
        MessageBody::AppendEntries { entries, .. }
            if entries.iter().any(|e| matches!(&e.payload, EntryPayload::Membership(m) if !m.is_joint())) =>
        {
            Fate::Drop
        }
        _ => Fate::Deliver,
    };
    deliver_with(&mut c, hold_final);
    assert_eq!(c.node(1).membership().voters_incoming, set(&[2]), "node 1 appended the final membership");
    assert!(c.node(2).membership().is_joint(), "node 2 is still joint");
    c.isolate(1);
    for _ in 0..25 {
        tick_with(&mut c, hold_final);
    }
    assert_ne!(c.node(1).role(), Role::Leader, "check-quorum deposed it");
    c.heal();
    let leader = c.tick_until_leader(200).expect("not wedged");
    c.ticks(30);
    let leader = c.leader().unwrap_or(leader);
    assert_eq!(leader, 2, "node 2 ends as the only voter and leader");
    assert_eq!(voters(&c, 2), set(&[2]));
    c.propose(2, b"after").expect("the group works");
}

/// Membership lives in the log and in snapshots: a restarted node finds it again, from its log
/// entries, and from a snapshot after compaction.
#[test]
fn membership_is_restored_on_restart_from_the_log_and_from_snapshots() {
    let mut c = cluster_tuned(3, |b| b.compaction_margin_entries(0));
    c.elect(1);
    c.ticks(1);
    c.add_node(4);
    change(&mut c, 1, &[ConfChange::AddLearner(NodeId(4))]);
    c.crash(2);
    c.restart(2);
    assert!(c.node(2).membership().learners.contains(&NodeId(4)), "from the log");
    change(&mut c, 1, &[ConfChange::AddVoter(NodeId(4))]);
    let meta = c.snapshot(3);
    assert_eq!(meta.membership.voters_incoming, set(&[1, 2, 3, 4]), "the snapshot carries the membership at its index");
    c.crash(3);
    c.restart(3);
    assert_eq!(voters(&c, 3), set(&[1, 2, 3, 4]), "from the snapshot");
    assert!(!c.node(3).membership().is_joint());
}

/// The committed membership trails the latest one until the change commits: a node that only the
/// latest membership leaves out must not act as if it were gone (the entry may still be cut off).
#[test]
fn the_committed_membership_changes_only_once_the_change_commits() {
    let mut c = led_by_1(3);
    c.add_node(4);
    let index = c.node_mut(1).change_membership(&[ConfChange::AddVoter(NodeId(4))]).expect("accepted");
    let leader = c.node(1);
    assert!(leader.membership().is_joint(), "the joint entry is the latest");
    assert!(leader.status().membership.is_joint());
    assert_eq!(leader.committed_membership(), &Membership::new([1, 2, 3].map(NodeId)), "not committed yet");
    assert_eq!(leader.status().committed_membership, Membership::new([1, 2, 3].map(NodeId)));
    c.deliver_all();
    c.ticks(3);
    assert!(c.node(1).status().commit >= index);
    for id in 1..=4 {
        assert_eq!(c.node(id).committed_membership(), &Membership::new([1, 2, 3, 4].map(NodeId)), "node {id}");
    }
}
