//! Fuzzing harnesses (feature `fuzzing`): each takes the fuzzer's bytes, checks properties, and
//! panics only on a bug in this crate. The cargo-fuzz targets in `fuzz/` call them, and the
//! crate's tests replay the stored corpus through them.
//!
//! [`quorum`] checks the quorum arithmetic of [`crate::quorum`] against naive definitions, for
//! plain and for joint configurations (two voter sets during a membership change).

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::{Arbitrary, Unstructured};

use crate::quorum::{
    VoteResult, committed_index, is_quorum, membership_committed_index, membership_is_quorum, membership_vote_result,
    vote_result,
};
use crate::types::{Index, Membership, NodeId};

/// Node ids are drawn from `0..QUORUM_IDS_MAX`, so that voters, matches and votes overlap often.
const QUORUM_IDS_MAX: u8 = 16;

/// One quorum question, decoded from fuzzer bytes.
#[derive(Arbitrary, Debug)]
struct QuorumInput {
    voters: Vec<u8>,
    outgoing: Vec<u8>,
    matches: Vec<(u8, u64)>,
    votes: Vec<(u8, bool)>,
    active: Vec<u8>,
}

fn id(raw: u8) -> NodeId {
    NodeId(u64::from(raw % QUORUM_IDS_MAX))
}

/// Target 5: [`committed_index`], [`vote_result`] and [`is_quorum`] agree with naive definitions
/// and with each other, for arbitrary voters, match indexes (of voters and non-voters), votes and
/// active sets.
pub fn quorum(data: &[u8]) {
    let Ok(input) = QuorumInput::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let voters: BTreeSet<NodeId> = input.voters.iter().map(|&raw| id(raw)).collect();
    let matches: BTreeMap<NodeId, Index> = input.matches.iter().map(|&(raw, index)| (id(raw), Index(index))).collect();
    let votes: BTreeMap<NodeId, bool> = input.votes.iter().map(|&(raw, granted)| (id(raw), granted)).collect();
    let active: BTreeSet<NodeId> = input.active.iter().map(|&raw| id(raw)).collect();

    let committed = committed_index(&voters, &matches);
    assert_eq!(committed, naive_committed(&voters, &matches), "committed_index: {voters:?} {matches:?}");
    if !voters.is_empty() {
        // The voters holding the committed index form a quorum.
        let holders = voters.iter().filter(|v| matches.get(v).copied().unwrap_or_default() >= committed).copied();
        assert!(is_quorum(&voters, &holders.collect()), "committed index not held by a quorum");
    }

    let result = vote_result(&voters, &votes);
    assert_eq!(result, naive_vote(&voters, &votes), "vote_result: {voters:?} {votes:?}");
    let granted: BTreeSet<NodeId> = votes.iter().filter(|&(_, &granted)| granted).map(|(&id, _)| id).collect();
    assert_eq!(result == VoteResult::Won, is_quorum(&voters, &granted), "vote_result and is_quorum disagree");

    assert_eq!(is_quorum(&voters, &active), naive_is_quorum(&voters, &active), "is_quorum: {voters:?} {active:?}");

    // Joint: decisions need both halves.
    let outgoing: BTreeSet<NodeId> = input.outgoing.iter().map(|&raw| id(raw)).collect();
    let joint =
        Membership { voters_incoming: voters.clone(), voters_outgoing: outgoing.clone(), ..Membership::default() };
    let expected = if outgoing.is_empty() { committed } else { committed.min(naive_committed(&outgoing, &matches)) };
    assert_eq!(membership_committed_index(&joint, &matches), expected, "joint committed: {joint:?} {matches:?}");
    let expected = match (result, if outgoing.is_empty() { result } else { naive_vote(&outgoing, &votes) }) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    };
    assert_eq!(membership_vote_result(&joint, &votes), expected, "joint votes: {joint:?} {votes:?}");
    let expected = naive_is_quorum(&voters, &active) && (outgoing.is_empty() || naive_is_quorum(&outgoing, &active));
    assert_eq!(membership_is_quorum(&joint, &active), expected, "joint quorum: {joint:?} {active:?}");
}

/// The largest index held (at or above) by more than half the voters; 0 without voters.
fn naive_committed(voters: &BTreeSet<NodeId>, matches: &BTreeMap<NodeId, Index>) -> Index {
    let get = |id: &NodeId| matches.get(id).copied().unwrap_or_default();
    voters
        .iter()
        .map(get)
        .filter(|&candidate| voters.iter().filter(|v| get(v) >= candidate).count() * 2 > voters.len())
        .max()
        .unwrap_or_default()
}

/// Won with a strict majority of yes; lost when even every missing vote could not make one.
fn naive_vote(voters: &BTreeSet<NodeId>, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
    let n = voters.len();
    let yes = voters.iter().filter(|id| votes.get(id) == Some(&true)).count();
    let no = voters.iter().filter(|id| votes.get(id) == Some(&false)).count();
    if yes * 2 > n {
        VoteResult::Won
    } else if (n - no) * 2 <= n {
        VoteResult::Lost
    } else {
        VoteResult::Pending
    }
}

/// A strict majority of the voters is active (never, for an empty voter set).
fn naive_is_quorum(voters: &BTreeSet<NodeId>, active: &BTreeSet<NodeId>) -> bool {
    voters.intersection(active).count() * 2 > voters.len()
}
