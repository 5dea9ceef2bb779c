//! Election safety: at most one leader per term, and at most one vote per voter per term (across
//! restarts: votes are recorded when they leave the node, which is after they are durable).

use std::collections::BTreeMap;

use raft_core::{NodeId, Term};

use super::{Check, violation};

/// Remembers every leader and every vote ever seen.
#[derive(Debug, Default)]
pub struct ElectionSafety {
    leaders: BTreeMap<Term, NodeId>,
    votes: BTreeMap<(NodeId, Term), NodeId>,
}

impl ElectionSafety {
    /// `node` acts as leader of `term`.
    pub fn observe_leader(&mut self, node: NodeId, term: Term) -> Check {
        match self.leaders.insert(term, node) {
            Some(previous) if previous != node => {
                violation("election safety", format!("two leaders in term {term}: node {previous} and node {node}"))
            }
            _ => Ok(()),
        }
    }

    /// `voter` sent a granted vote for `candidate` in `term`.
    pub fn observe_vote(&mut self, voter: NodeId, term: Term, candidate: NodeId) -> Check {
        match self.votes.insert((voter, term), candidate) {
            Some(previous) if previous != candidate => violation(
                "election safety (one vote per term)",
                format!("node {voter} voted for {previous} and for {candidate} in term {term}"),
            ),
            _ => Ok(()),
        }
    }

    /// How many terms had a leader.
    pub fn terms_with_leader(&self) -> usize {
        self.leaders.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_leaders_in_one_term_fail() {
        let mut checker = ElectionSafety::default();
        checker.observe_leader(NodeId(1), Term(3)).expect("first leader");
        checker.observe_leader(NodeId(1), Term(3)).expect("same leader again");
        checker.observe_leader(NodeId(2), Term(4)).expect("new term");
        let error = checker.observe_leader(NodeId(2), Term(3)).expect_err("second leader");
        assert_eq!(error.property, "election safety");
    }

    #[test]
    fn two_votes_in_one_term_fail() {
        let mut checker = ElectionSafety::default();
        checker.observe_vote(NodeId(1), Term(2), NodeId(2)).expect("first vote");
        checker.observe_vote(NodeId(1), Term(2), NodeId(2)).expect("repeated vote");
        checker.observe_vote(NodeId(1), Term(3), NodeId(3)).expect("next term");
        assert!(checker.observe_vote(NodeId(1), Term(2), NodeId(3)).is_err());
    }
}
