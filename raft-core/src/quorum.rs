//! Quorum arithmetic as small pure functions, each checked against a naive reference in tests.

use std::collections::{BTreeMap, BTreeSet};

use crate::types::{Index, Membership, NodeId};

/// The outcome of an election so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A majority granted.
    Won,
    /// A majority refused: the election cannot be won.
    Lost,
    /// Neither yet.
    Pending,
}

/// The highest index that a majority of `voters` hold, given each voter's durable match index
/// (voters missing from `matches` count as 0). An empty voter set commits nothing.
#[cfg(any(test, feature = "fuzzing"))]
pub fn committed_index(voters: &BTreeSet<NodeId>, matches: &BTreeMap<NodeId, Index>) -> Index {
    committed_index_by(voters, |id| matches.get(&id).copied().unwrap_or_default())
}

/// Voter sets up to this size are tallied on the stack (a leader tallies on every answer).
const VOTERS_ON_STACK: usize = 16;

/// [`committed_index`] with each voter's match index given by `match_of`.
pub(crate) fn committed_index_by(voters: &BTreeSet<NodeId>, match_of: impl Fn(NodeId) -> Index) -> Index {
    if voters.is_empty() {
        return Index(0);
    }
    // Sorted descending, the entry at position quorum-1 is held by at least a quorum.
    let nth_highest = |indexes: &mut [Index]| {
        indexes.sort_unstable_by(|a, b| b.cmp(a));
        indexes[voters.len() / 2]
    };
    if voters.len() <= VOTERS_ON_STACK {
        let mut indexes = [Index(0); VOTERS_ON_STACK];
        for (slot, &id) in indexes.iter_mut().zip(voters) {
            *slot = match_of(id);
        }
        return nth_highest(&mut indexes[..voters.len()]);
    }
    let mut indexes: Vec<Index> = voters.iter().map(|&id| match_of(id)).collect();
    nth_highest(&mut indexes)
}

/// Tallies `votes` (granted or refused) of `voters`; votes of non-voters are ignored.
pub fn vote_result(voters: &BTreeSet<NodeId>, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
    let quorum = voters.len() / 2 + 1;
    let (mut granted, mut refused) = (0, 0);
    for id in voters {
        match votes.get(id) {
            Some(true) => granted += 1,
            Some(false) => refused += 1,
            None => {}
        }
    }
    if granted >= quorum {
        VoteResult::Won
    } else if refused >= quorum || voters.len() - refused < quorum {
        VoteResult::Lost
    } else {
        VoteResult::Pending
    }
}

/// Whether the nodes in `active` (plus nobody else) form a majority of `voters`.
pub fn is_quorum(voters: &BTreeSet<NodeId>, active: &BTreeSet<NodeId>) -> bool {
    let count = voters.iter().filter(|id| active.contains(id)).count();
    count > voters.len() / 2
}

/// [`committed_index`] for a membership: while joint, the index held by a majority of both
/// halves.
pub fn membership_committed_index(membership: &Membership, matches: &BTreeMap<NodeId, Index>) -> Index {
    membership_committed_index_by(membership, |id| matches.get(&id).copied().unwrap_or_default())
}

/// [`membership_committed_index`] with each voter's match index given by `match_of`.
pub(crate) fn membership_committed_index_by(membership: &Membership, match_of: impl Fn(NodeId) -> Index) -> Index {
    let incoming = committed_index_by(&membership.voters_incoming, &match_of);
    if membership.is_joint() {
        incoming.min(committed_index_by(&membership.voters_outgoing, &match_of))
    } else {
        incoming
    }
}

/// [`vote_result`] for a membership: while joint, won only if both halves grant, lost if either
/// refuses.
pub fn membership_vote_result(membership: &Membership, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
    let incoming = vote_result(&membership.voters_incoming, votes);
    if !membership.is_joint() {
        return incoming;
    }
    match (incoming, vote_result(&membership.voters_outgoing, votes)) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    }
}

/// [`is_quorum`] for a membership: while joint, a majority of both halves.
pub fn membership_is_quorum(membership: &Membership, active: &BTreeSet<NodeId>) -> bool {
    is_quorum(&membership.voters_incoming, active)
        && (!membership.is_joint() || is_quorum(&membership.voters_outgoing, active))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The naive definition: the largest index `i` such that more than half the voters hold `i`.
    fn naive_committed(voters: &BTreeSet<NodeId>, matches: &BTreeMap<NodeId, Index>) -> Index {
        let get = |id: &NodeId| matches.get(id).copied().unwrap_or_default();
        let mut best = Index(0);
        for candidate in voters.iter().map(get) {
            let holders = voters.iter().filter(|id| get(id) >= candidate).count();
            if holders * 2 > voters.len() && candidate > best {
                best = candidate;
            }
        }
        best
    }

    fn naive_vote(voters: &BTreeSet<NodeId>, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
        let n = voters.len();
        let yes = voters.iter().filter(|id| votes.get(id) == Some(&true)).count();
        let no = voters.iter().filter(|id| votes.get(id) == Some(&false)).count();
        let missing = n - yes - no;
        if yes * 2 > n {
            VoteResult::Won
        } else if (yes + missing) * 2 <= n {
            VoteResult::Lost
        } else {
            VoteResult::Pending
        }
    }

    /// [`committed_index`] of generated voters and matches against the naive definition.
    fn committed_agrees(voters: BTreeSet<u64>, matches: BTreeMap<u64, u64>) -> Result<(), TestCaseError> {
        let voters: BTreeSet<NodeId> = voters.into_iter().map(NodeId).collect();
        let matches: BTreeMap<NodeId, Index> = matches.into_iter().map(|(k, v)| (NodeId(k), Index(v))).collect();
        prop_assert_eq!(committed_index(&voters, &matches), naive_committed(&voters, &matches));
        Ok(())
    }

    proptest! {
        #[test]
        fn committed_index_matches_naive(
            voters in proptest::collection::btree_set(0u64..9, 1..8),
            matches in proptest::collection::btree_map(0u64..12, 0u64..50, 0..12),
        ) {
            committed_agrees(voters, matches)?;
        }

        /// Sets larger than those tallied on the stack are tallied in a vector: the same answer.
        #[test]
        fn committed_index_of_many_voters_matches_naive(
            voters in proptest::collection::btree_set(0u64..40, 1..30),
            matches in proptest::collection::btree_map(0u64..40, 0u64..50, 0..40),
        ) {
            committed_agrees(voters, matches)?;
        }

        #[test]
        fn vote_result_matches_naive(
            voters in proptest::collection::btree_set(0u64..9, 1..8),
            votes in proptest::collection::btree_map(0u64..12, any::<bool>(), 0..12),
        ) {
            let voters: BTreeSet<NodeId> = voters.into_iter().map(NodeId).collect();
            let votes: BTreeMap<NodeId, bool> =
                votes.into_iter().map(|(k, v)| (NodeId(k), v)).collect();
            prop_assert_eq!(vote_result(&voters, &votes), naive_vote(&voters, &votes));
        }
    }

    /// The naive joint definitions: enumerate every candidate index (or every completion of the
    /// missing votes) and require the plain definition in both halves.
    fn naive_joint_committed(m: &Membership, matches: &BTreeMap<NodeId, Index>) -> Index {
        let holders_in = |set: &BTreeSet<NodeId>, i: Index| {
            set.iter().filter(|id| matches.get(id).copied().unwrap_or_default() >= i).count() * 2 > set.len()
        };
        let mut candidates: Vec<Index> = matches.values().copied().collect();
        candidates.push(Index(0));
        candidates
            .into_iter()
            .filter(|&i| {
                holders_in(&m.voters_incoming, i) && (m.voters_outgoing.is_empty() || holders_in(&m.voters_outgoing, i))
            })
            .max()
            .unwrap_or_default()
    }

    fn naive_joint_vote(m: &Membership, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
        // Won if granted already wins both; lost if even granting every missing vote loses one.
        let wins = |assume_missing: bool| {
            let granted = |set: &BTreeSet<NodeId>| {
                set.iter().filter(|id| votes.get(id).copied().unwrap_or(assume_missing)).count() * 2 > set.len()
            };
            granted(&m.voters_incoming) && (m.voters_outgoing.is_empty() || granted(&m.voters_outgoing))
        };
        if wins(false) {
            VoteResult::Won
        } else if !wins(true) {
            VoteResult::Lost
        } else {
            VoteResult::Pending
        }
    }

    fn membership_of(voters: BTreeSet<u64>, outgoing: BTreeSet<u64>) -> Membership {
        Membership {
            voters_incoming: voters.into_iter().map(NodeId).collect(),
            voters_outgoing: outgoing.into_iter().map(NodeId).collect(),
            ..Membership::default()
        }
    }

    proptest! {
        #[test]
        fn joint_committed_index_matches_naive(
            voters in proptest::collection::btree_set(0u64..9, 1..6),
            outgoing in proptest::collection::btree_set(0u64..9, 0..6),
            matches in proptest::collection::btree_map(0u64..12, 0u64..50, 0..12),
        ) {
            let m = membership_of(voters, outgoing);
            let matches: BTreeMap<NodeId, Index> = matches.into_iter().map(|(k, v)| (NodeId(k), Index(v))).collect();
            prop_assert_eq!(membership_committed_index(&m, &matches), naive_joint_committed(&m, &matches));
        }

        #[test]
        fn joint_vote_result_matches_naive(
            voters in proptest::collection::btree_set(0u64..9, 1..6),
            outgoing in proptest::collection::btree_set(0u64..9, 0..6),
            votes in proptest::collection::btree_map(0u64..12, any::<bool>(), 0..12),
        ) {
            let m = membership_of(voters, outgoing);
            let votes: BTreeMap<NodeId, bool> = votes.into_iter().map(|(k, v)| (NodeId(k), v)).collect();
            prop_assert_eq!(membership_vote_result(&m, &votes), naive_joint_vote(&m, &votes));
        }

        #[test]
        fn joint_quorum_needs_both_halves(
            voters in proptest::collection::btree_set(0u64..9, 1..6),
            outgoing in proptest::collection::btree_set(0u64..9, 0..6),
            active in proptest::collection::btree_set(0u64..12, 0..12),
        ) {
            let m = membership_of(voters, outgoing);
            let active: BTreeSet<NodeId> = active.into_iter().map(NodeId).collect();
            let majority = |set: &BTreeSet<NodeId>| set.iter().filter(|id| active.contains(id)).count() * 2 > set.len();
            let expected = majority(&m.voters_incoming) && (m.voters_outgoing.is_empty() || majority(&m.voters_outgoing));
            prop_assert_eq!(membership_is_quorum(&m, &active), expected);
        }
    }

    #[test]
    fn empty_voters_commit_nothing() {
        assert_eq!(committed_index(&BTreeSet::new(), &BTreeMap::new()), Index(0));
    }

    #[test]
    fn is_quorum_counts_only_voters() {
        let voters: BTreeSet<NodeId> = [1, 2, 3].map(NodeId).into();
        assert!(is_quorum(&voters, &[1, 2].map(NodeId).into()));
        assert!(!is_quorum(&voters, &[1, 7, 8].map(NodeId).into()));
    }

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
    fn joint_quorums_need_both_halves_at_their_edges() {
        let matches = |pairs: &[(u64, u64)]| -> BTreeMap<NodeId, Index> {
            pairs.iter().map(|&(id, index)| (NodeId(id), Index(index))).collect()
        };
        let votes = |pairs: &[(u64, bool)]| -> BTreeMap<NodeId, bool> {
            pairs.iter().map(|&(id, granted)| (NodeId(id), granted)).collect()
        };
        let disjoint = m(&[4, 5, 6], &[1, 2, 3], &[], &[]);
        // A majority of the new half alone commits nothing; with a majority of the old one it does.
        assert_eq!(membership_committed_index(&disjoint, &matches(&[(4, 9), (5, 9), (6, 9)])), Index(0));
        assert_eq!(membership_committed_index(&disjoint, &matches(&[(4, 9), (5, 9), (1, 7), (2, 8)])), Index(7));
        assert_eq!(membership_vote_result(&disjoint, &votes(&[(4, true), (5, true)])), VoteResult::Pending);
        assert_eq!(
            membership_vote_result(&disjoint, &votes(&[(4, true), (5, true), (1, true), (2, true)])),
            VoteResult::Won
        );
        assert_eq!(
            membership_vote_result(&disjoint, &votes(&[(1, false), (2, false), (4, true), (5, true)])),
            VoteResult::Lost
        );
        assert!(!membership_is_quorum(&disjoint, &set(&[4, 5, 6])));
        assert!(membership_is_quorum(&disjoint, &set(&[4, 5, 1, 2])));
        // Overlapping halves: a node in both counts in both.
        let overlapping = m(&[2, 3, 4], &[1, 2, 3], &[], &[]);
        assert!(membership_is_quorum(&overlapping, &set(&[2, 3])));
        assert_eq!(membership_committed_index(&overlapping, &matches(&[(2, 5), (3, 6)])), Index(5));
        // Learners, waiting or not, never count.
        let demoting = m(&[1, 2], &[1, 2, 3], &[4], &[3]);
        assert!(!membership_is_quorum(&demoting, &set(&[1, 3, 4])));
        assert_eq!(membership_vote_result(&demoting, &votes(&[(3, true), (4, true), (1, true)])), VoteResult::Pending);
        // An empty outgoing half is no joint configuration: the incoming half decides alone.
        assert!(membership_is_quorum(&m(&[1, 2, 3], &[], &[], &[]), &set(&[1, 2])));
    }
}
