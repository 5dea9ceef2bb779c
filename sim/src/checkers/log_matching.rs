//! Log matching: if two logs hold an entry with the same index and term, the logs are identical
//! up to that index. Each node's log is summarised by a hash chain, so the check per entry is one
//! map lookup.

use std::collections::HashMap;

use raft_core::{Index, NodeId, Term};

use super::{Check, violation};

/// The chain hash first seen for each (index, term), and by whom.
#[derive(Debug, Default)]
pub struct LogMatching {
    // Lookups only, never iterated, so the map's order cannot leak into a trace.
    seen: HashMap<(Index, Term), (u64, NodeId)>,
}

impl LogMatching {
    /// The chain hash first seen for (`index`, `term`), if any node ever held that entry.
    pub fn hash_of(&self, index: Index, term: Term) -> Option<u64> {
        self.seen.get(&(index, term)).map(|&(hash, _)| hash)
    }

    /// `node` holds an entry at (`index`, `term`) whose chain hash (covering every entry up to
    /// it) is `chain_hash`.
    pub fn observe(&mut self, node: NodeId, index: Index, term: Term, chain_hash: u64) -> Check {
        match self.seen.get(&(index, term)) {
            Some(&(hash, first)) if hash != chain_hash => violation(
                "log matching",
                format!("nodes {first} and {node} hold index {index} term {term} with different prefixes"),
            ),
            Some(_) => Ok(()),
            None => {
                self.seen.insert((index, term), (chain_hash, node));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_index_and_term_with_different_prefix_fails() {
        let mut checker = LogMatching::default();
        checker.observe(NodeId(1), Index(5), Term(2), 77).expect("first sight");
        checker.observe(NodeId(2), Index(5), Term(2), 77).expect("same prefix");
        checker.observe(NodeId(3), Index(5), Term(3), 99).expect("other term is another entry");
        let error = checker.observe(NodeId(3), Index(5), Term(2), 78).expect_err("forked prefix");
        assert_eq!(error.property, "log matching");
    }
}
