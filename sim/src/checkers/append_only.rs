//! Leader append-only: while a node leads a term, it never overwrites or deletes its own entries.

use std::collections::BTreeMap;

use raft_core::{Index, NodeId, Term};

use super::{Check, violation};

/// For each (leader, term): the last index and chain hash seen while it led.
#[derive(Debug, Default)]
pub struct LeaderAppendOnly {
    seen: BTreeMap<(NodeId, Term), (Index, u64)>,
}

impl LeaderAppendOnly {
    /// `node` leads `term` with a log ending at `last`; `hash_at(i)` gives its chain hash at `i`
    /// (None beyond its log).
    pub fn observe(&mut self, node: NodeId, term: Term, last: Index, hash_at: impl Fn(Index) -> Option<u64>) -> Check {
        if let Some(&(previous_last, previous_hash)) = self.seen.get(&(node, term))
            && hash_at(previous_last) != Some(previous_hash)
        {
            return violation(
                "leader append-only",
                format!("leader {node} of term {term} changed or dropped its entries at or below {previous_last}"),
            );
        }
        if let Some(hash) = hash_at(last) {
            self.seen.insert((node, term), (last, hash));
        }
        Ok(())
    }

    /// Forgets `node`'s record for `term` (it crashed: a new incarnation is not the same leader).
    pub fn forget(&mut self, node: NodeId) {
        self.seen.retain(|(id, _), _| *id != node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_that_rewrites_its_log_fails() {
        let mut checker = LeaderAppendOnly::default();
        let chain = [10u64, 11, 12];
        let lookup = |c: &[u64]| {
            let c = c.to_vec();
            move |i: Index| c.get((i.0 as usize).wrapping_sub(1)).copied()
        };
        checker.observe(NodeId(1), Term(2), Index(2), lookup(&chain)).expect("first");
        checker.observe(NodeId(1), Term(2), Index(3), lookup(&chain)).expect("appended");
        let rewritten = [10u64, 11, 99];
        let error = checker.observe(NodeId(1), Term(2), Index(3), lookup(&rewritten)).expect_err("rewrite");
        assert_eq!(error.property, "leader append-only");
        let truncated = [10u64];
        assert!(checker.observe(NodeId(1), Term(2), Index(1), lookup(&truncated)).is_err());
    }
}
