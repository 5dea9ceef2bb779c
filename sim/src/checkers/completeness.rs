//! Leader completeness and the stability of committed entries: an entry committed in term T is
//! held by every leader of every term after T, and no node ever commits a different entry at an
//! index already committed.
//!
//! A leader of an *earlier* term may still appear later in real time (it was elected, then
//! paused, then woke up): it need not hold entries committed in later terms, so each committed
//! entry remembers the term it was (at the latest) committed in.

use raft_core::{Index, NodeId, Term};

use super::{Check, violation};

/// The committed prefix of the global history (position 0 is index 1): the chain hash, and the
/// smallest term by which the entry is known committed (non-decreasing along the prefix, since
/// committing an entry commits everything before it).
#[derive(Debug, Default)]
pub struct LeaderCompleteness {
    committed: Vec<(u64, Term)>,
}

impl LeaderCompleteness {
    /// The highest index known committed anywhere.
    pub fn committed_index(&self) -> Index {
        Index(self.committed.len() as u64)
    }

    /// `node`, in `term`, reports commit index `commit`; `hash_at(i)` is its chain hash at `i`.
    pub fn observe_commit(
        &mut self,
        node: NodeId,
        term: Term,
        commit: Index,
        hash_at: impl Fn(Index) -> Option<u64>,
    ) -> Check {
        let known = self.committed_index().min(commit);
        if known > Index(0) && hash_at(known) != Some(self.committed[known.0 as usize - 1].0) {
            return violation(
                "committed entries are stable",
                format!("node {node} commits a different entry at or below index {known}"),
            );
        }
        for index in self.committed.len() as u64 + 1..=commit.0 {
            match hash_at(Index(index)) {
                Some(hash) => self.committed.push((hash, term)),
                None => return violation("commit index", format!("node {node} commits {commit} beyond its log")),
            }
        }
        // The node's term bounds when everything up to `commit` was committed.
        for entry in self.committed[..commit.0 as usize].iter_mut().rev() {
            if entry.1 <= term {
                break;
            }
            entry.1 = term;
        }
        Ok(())
    }

    /// `node` became leader of `term`: it must hold every entry committed in an earlier term.
    /// Entries below `floor` are covered by the node's snapshot: holding the committed entry at
    /// `floor` (the snapshot's boundary) proves it holds the ones below, through the hash chain.
    pub fn observe_new_leader(
        &self,
        node: NodeId,
        term: Term,
        floor: Index,
        hash_at: impl Fn(Index) -> Option<u64>,
    ) -> Check {
        let required = self.committed.partition_point(|&(_, committed_in)| committed_in < term);
        let at = if required > 0 { required.max(floor.0 as usize) } else { 0 };
        if at > 0 && (at > self.committed.len() || hash_at(Index(at as u64)) != Some(self.committed[at - 1].0)) {
            return violation(
                "leader completeness",
                format!("node {node} leads term {term} without committed index {at} (or with another entry there)"),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(hashes: &[u64]) -> impl Fn(Index) -> Option<u64> + '_ {
        move |i| hashes.get((i.0 as usize).wrapping_sub(1)).copied()
    }

    #[test]
    fn a_leader_missing_a_committed_entry_fails() {
        let mut checker = LeaderCompleteness::default();
        checker.observe_commit(NodeId(1), Term(2), Index(2), chain(&[1, 2, 3])).expect("commit");
        checker.observe_new_leader(NodeId(2), Term(3), Index(0), chain(&[1, 2])).expect("has it");
        let error = checker.observe_new_leader(NodeId(3), Term(4), Index(0), chain(&[1])).expect_err("missing");
        assert_eq!(error.property, "leader completeness");
        assert!(checker.observe_new_leader(NodeId(3), Term(4), Index(0), chain(&[1, 9])).is_err());
    }

    #[test]
    fn a_stale_term_leader_need_not_hold_later_commits() {
        let mut checker = LeaderCompleteness::default();
        checker.observe_commit(NodeId(1), Term(3), Index(1), chain(&[1, 2])).expect("commit in term 3");
        checker.observe_commit(NodeId(1), Term(5), Index(2), chain(&[1, 2])).expect("commit in term 5");
        // A leader of term 4 (elected before term 5 began) holds index 1 but not index 2.
        checker.observe_new_leader(NodeId(3), Term(4), Index(0), chain(&[1])).expect("allowed");
        assert!(checker.observe_new_leader(NodeId(3), Term(6), Index(0), chain(&[1])).is_err());
    }

    #[test]
    fn committing_a_different_entry_fails() {
        let mut checker = LeaderCompleteness::default();
        checker.observe_commit(NodeId(1), Term(1), Index(2), chain(&[1, 2])).expect("commit");
        checker.observe_commit(NodeId(2), Term(1), Index(3), chain(&[1, 2, 3])).expect("extends");
        let error = checker.observe_commit(NodeId(3), Term(1), Index(2), chain(&[1, 7])).expect_err("fork");
        assert_eq!(error.property, "committed entries are stable");
    }

    #[test]
    fn a_leader_is_judged_at_its_snapshot_boundary() {
        let mut checker = LeaderCompleteness::default();
        checker.observe_commit(NodeId(1), Term(1), Index(2), chain(&[1, 2])).expect("commit in term 1");
        checker.observe_commit(NodeId(1), Term(3), Index(3), chain(&[1, 2, 3])).expect("commit in term 3");
        // A leader of term 2 must hold index 2; with a snapshot at 3 it holds only the hash at 3,
        // which proves (through the chain) that it holds 1 and 2.
        let only_at_3 = |hash: u64| move |i: Index| (i == Index(3)).then_some(hash);
        checker.observe_new_leader(NodeId(2), Term(2), Index(3), only_at_3(3)).expect("covered by its snapshot");
        let error = checker.observe_new_leader(NodeId(3), Term(2), Index(3), only_at_3(9)).expect_err("forked");
        assert_eq!(error.property, "leader completeness");
        // A snapshot boundary beyond anything committed cannot be judged: it is a violation.
        assert!(checker.observe_new_leader(NodeId(3), Term(2), Index(7), |_| Some(0)).is_err());
    }
}
