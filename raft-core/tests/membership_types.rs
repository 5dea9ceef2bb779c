//! Table tests of the membership type: what `validate` accepts and refuses, the joint step and
//! its leaving for every kind of change (demotions included, of the leader too), and the
//! refusal of invalid memberships from peers and storage. Quorums of joint memberships at their
//! edges, and the property tests against naive definitions, live beside the quorum functions.

mod common;

use std::collections::BTreeSet;

use common::Cluster;
use raft_core::{
    ConfChange, Entry, EntryPayload, Index, InvalidMembership, Malformed, Membership, MembershipError, Message,
    MessageBody, NodeId, Options, Raft, Role, StepError, StorageError, Term, apply_changes, first_step,
};
use raft_storage::MemStorage;

fn set(list: &[u64]) -> BTreeSet<NodeId> {
    list.iter().copied().map(NodeId).collect()
}

/// A membership from its four sets: incoming voters, outgoing voters, learners, learners next.
fn m(incoming: &[u64], outgoing: &[u64], learners: &[u64], learners_next: &[u64]) -> Membership {
    Membership {
        voters_incoming: set(incoming),
        voters_outgoing: set(outgoing),
        learners: set(learners),
        learners_next: set(learners_next),
    }
}

#[test]
fn validate_accepts_and_refuses_by_table() {
    use InvalidMembership::*;
    let table: &[(&str, Membership, Result<(), InvalidMembership>)] = &[
        ("one voter", m(&[1], &[], &[], &[]), Ok(())),
        ("voters and learners", m(&[1, 2, 3], &[], &[4, 5], &[]), Ok(())),
        ("overlapping halves", m(&[1, 2, 3], &[2, 3, 4], &[], &[]), Ok(())),
        ("disjoint halves", m(&[4, 5, 6], &[1, 2, 3], &[], &[]), Ok(())),
        ("a demotion waiting", m(&[1, 2], &[1, 2, 3], &[4], &[3]), Ok(())),
        ("no voter at all", m(&[], &[], &[], &[]), Err(NoVoters)),
        ("an empty incoming half", m(&[], &[1, 2], &[], &[]), Err(NoVoters)),
        ("only learners", m(&[], &[], &[1], &[]), Err(NoVoters)),
        ("a voter also a learner", m(&[1, 2], &[], &[2], &[]), Err(LearnerVotes(NodeId(2)))),
        ("an outgoing voter also a learner", m(&[1, 2], &[1, 2, 3], &[3], &[]), Err(LearnerVotes(NodeId(3)))),
        ("learners next outside a joint", m(&[1, 2], &[], &[], &[3]), Err(LearnerNextOutsideJoint)),
        ("a learner next not outgoing", m(&[1, 2], &[1, 2, 3], &[], &[4]), Err(LearnerNextMisplaced(NodeId(4)))),
        ("a learner next still incoming", m(&[1, 2], &[1, 2, 3], &[], &[2]), Err(LearnerNextMisplaced(NodeId(2)))),
    ];
    for (name, membership, expected) in table {
        assert_eq!(membership.validate(), *expected, "{name}: {membership:?}");
        assert_eq!(membership.is_valid(), expected.is_ok(), "{name}");
    }
}

#[test]
fn every_kind_of_change_steps_through_a_valid_joint_membership_to_its_target() {
    use ConfChange::*;
    let n = NodeId;
    // (name, current, changes, the first step, the membership after leaving it)
    let table: &[(&str, Membership, Vec<ConfChange>, Membership, Membership)] = &[
        (
            "add a voter",
            m(&[1, 2, 3], &[], &[], &[]),
            vec![AddVoter(n(4))],
            m(&[1, 2, 3, 4], &[1, 2, 3], &[], &[]),
            m(&[1, 2, 3, 4], &[], &[], &[]),
        ),
        (
            "remove a voter",
            m(&[1, 2, 3], &[], &[], &[]),
            vec![Remove(n(3))],
            m(&[1, 2], &[1, 2, 3], &[], &[]),
            m(&[1, 2], &[], &[], &[]),
        ),
        (
            "demote a voter",
            m(&[1, 2, 3], &[], &[], &[]),
            vec![AddLearner(n(3))],
            m(&[1, 2], &[1, 2, 3], &[], &[3]),
            m(&[1, 2], &[], &[3], &[]),
        ),
        (
            "demote the leader",
            m(&[1, 2, 3], &[], &[], &[]),
            vec![AddLearner(n(1))],
            m(&[2, 3], &[1, 2, 3], &[], &[1]),
            m(&[2, 3], &[], &[1], &[]),
        ),
        (
            "promote a learner",
            m(&[1, 2, 3], &[], &[4], &[]),
            vec![AddVoter(n(4))],
            m(&[1, 2, 3, 4], &[1, 2, 3], &[], &[]),
            m(&[1, 2, 3, 4], &[], &[], &[]),
        ),
        (
            "promote one, demote another",
            m(&[1, 2, 3], &[], &[4], &[]),
            vec![AddVoter(n(4)), AddLearner(n(1))],
            m(&[2, 3, 4], &[1, 2, 3], &[], &[1]),
            m(&[2, 3, 4], &[], &[1], &[]),
        ),
        (
            "replace every voter",
            m(&[1, 2, 3], &[], &[], &[]),
            vec![AddVoter(n(4)), AddVoter(n(5)), Remove(n(1)), Remove(n(2)), Remove(n(3))],
            m(&[4, 5], &[1, 2, 3], &[], &[]),
            m(&[4, 5], &[], &[], &[]),
        ),
        (
            "add a learner",
            m(&[1, 2, 3], &[], &[], &[]),
            vec![AddLearner(n(4))],
            m(&[1, 2, 3], &[], &[4], &[]),
            m(&[1, 2, 3], &[], &[4], &[]),
        ),
        (
            "remove a learner",
            m(&[1, 2, 3], &[], &[4], &[]),
            vec![Remove(n(4))],
            m(&[1, 2, 3], &[], &[], &[]),
            m(&[1, 2, 3], &[], &[], &[]),
        ),
    ];
    for (name, current, changes, joint, target) in table {
        let built = apply_changes(current, changes).unwrap_or_else(|e| panic!("{name}: refused: {e}"));
        assert_eq!(built, *target, "{name}: target");
        let step = first_step(current, &built).expect("neither is joint");
        assert_eq!(step, *joint, "{name}: first step");
        assert_eq!(step.validate(), Ok(()), "{name}: the first step is valid");
        assert_eq!(step.leave_joint(), *target, "{name}: leaving the joint state reaches the target");
        assert_eq!(target.leave_joint(), *target, "{name}: leaving a plain membership changes nothing");
        if step.is_joint() {
            assert_eq!(apply_changes(&step, changes), Err(MembershipError::ChangeInProgress), "{name}: from joint");
            assert_eq!(first_step(&step, target), Err(MembershipError::ChangeInProgress), "{name}: from joint");
        }
        for id in current.members().union(&target.members()) {
            assert!(!(step.is_voter(*id) && step.learners.contains(id)), "{name}: node {id} votes and listens");
        }
    }
}

#[test]
fn a_leader_demoted_to_learner_leaves_the_voters_steps_down_and_keeps_listening() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.ticks(1);
    let index = c.node_mut(1).change_membership(&[ConfChange::AddLearner(NodeId(1))]).expect("accepted");
    let joint = c.node(1).membership().clone();
    assert_eq!(joint, m(&[2, 3], &[1, 2, 3], &[], &[1]), "node 1 is an outgoing voter, a learner next");
    c.deliver_all();
    c.ticks(30);
    for id in 1..=3 {
        assert_eq!(*c.node(id).membership(), m(&[2, 3], &[], &[1], &[]), "node {id}");
    }
    assert_ne!(c.node(1).role(), Role::Leader, "the demoted leader stepped down");
    let leader = (2..=3).find(|&id| c.node(id).role() == Role::Leader).expect("node 2 or 3 leads");
    c.propose(leader, b"after").expect("the group works without node 1's vote");
    c.deliver_all();
    c.ticks(3);
    assert!(c.node(1).commit_index() > index, "the learner still receives the log");
    assert_eq!(c.applied_data(1), c.applied_data(leader));
}

/// A follower of `voters` in term 1 with an empty log.
fn follower() -> Raft<MemStorage> {
    let options = Options::builder().election_ticks(10).rng_seed(1).build().expect("options");
    let storage = MemStorage::new(Membership::new([1, 2, 3].map(NodeId)));
    Raft::new(NodeId(2), options, storage).expect("memory storage")
}

#[test]
fn an_invalid_membership_from_a_peer_is_refused_before_it_changes_anything() {
    let mut node = follower();
    let bad = m(&[1, 2], &[], &[2], &[]);
    let entry = Entry { term: Term(1), index: Index(1), payload: EntryPayload::Membership(bad) };
    let body = MessageBody::AppendEntries {
        prev_log_index: Index(0),
        prev_log_term: Term(0),
        entries: vec![entry],
        commit: Index(0),
    };
    let result = node.step(Message { from: NodeId(1), to: NodeId(2), term: Term(1), body });
    let expected = Malformed::InvalidMembership { index: Index(1), reason: InvalidMembership::LearnerVotes(NodeId(2)) };
    assert_eq!(result, Err(StepError::Malformed(expected)));
    assert_eq!((node.term(), node.last_index(), node.leader()), (Term(0), Index(0), None), "nothing moved");
    assert_eq!(*node.membership(), Membership::new([1, 2, 3].map(NodeId)));
}

#[test]
fn an_invalid_stored_membership_is_a_typed_error_at_start() {
    let options = Options::builder().election_ticks(10).rng_seed(1).build().expect("options");
    let initial = MemStorage::new(m(&[], &[], &[1], &[]));
    let error = Raft::new(NodeId(1), options.clone(), initial).err();
    assert_eq!(error, Some(StorageError::InvalidMembership { index: Index(0), reason: InvalidMembership::NoVoters }));
    let mut store = MemStorage::new(Membership::new([NodeId(1)]));
    let bad = Entry { term: Term(1), index: Index(1), payload: EntryPayload::Membership(m(&[1], &[], &[], &[2])) };
    store.append(&[bad]).expect("memory");
    let error = Raft::new(NodeId(1), options, store).err();
    let reason = InvalidMembership::LearnerNextOutsideJoint;
    assert_eq!(error, Some(StorageError::InvalidMembership { index: Index(1), reason }));
}

/// Found by the simulator (seed 28 among others) once stored memberships were checked: a node
/// that joins starts knowing no member, receives entries before the membership entry that adds
/// it, and may snapshot there. Its snapshot carries the empty membership it knew, and it must
/// restart from it (the next membership entry tells it the group's).
#[test]
fn a_joined_node_restarts_from_a_snapshot_taken_before_it_learned_the_membership() {
    use raft_storage::LogStore;
    let options = Options::builder().election_ticks(10).rng_seed(1).build().expect("options");
    let mut store = MemStorage::new(Membership::default());
    let noop = |index| Entry { term: Term(1), index: Index(index), payload: EntryPayload::Noop };
    store.append(&[noop(1), noop(2)]).expect("memory");
    let meta = raft_core::SnapshotMeta {
        index: Index(2),
        term: Term(1),
        membership: Membership::default(),
        data_crc32: raft_core::snapshot_crc32(b""),
    };
    store.save_snapshot(&meta, b"").expect("memory");
    let node = Raft::new(NodeId(4), options, store).expect("a joined node restarts from its snapshot");
    assert_eq!(*node.membership(), Membership::default());
}
