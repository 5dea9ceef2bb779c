//! State machine safety: every node applies entries in order with no gaps, and any two nodes that
//! applied up to the same index hold the same state (equal digests).

use raft_core::{Entry, EntryPayload, Index, NodeId};

use super::{Check, FNV_START, fnv, violation};

/// The digest of the applied history at each index (position 0 is index 1).
#[derive(Debug, Default)]
pub struct StateMachineSafety {
    digests: Vec<u64>,
}

/// One node's applied state as the checker tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The last applied index.
    pub index: Index,
    /// The digest of everything applied so far.
    pub digest: u64,
}

impl Default for Applied {
    fn default() -> Self {
        Applied { index: Index(0), digest: FNV_START }
    }
}

impl StateMachineSafety {
    /// The highest index any node applied.
    pub fn applied_index(&self) -> Index {
        Index(self.digests.len() as u64)
    }

    /// `node` restored its state machine from a snapshot claiming `restored`: the digest must
    /// equal what every node that applied up to that index computed.
    /// Within one incarnation a state machine never goes back: a stale snapshot must not roll it
    /// back (callers pass a fresh `state` after a restart).
    pub fn observe_restore(&self, node: NodeId, state: &mut Applied, restored: Applied) -> Check {
        if restored.index < state.index {
            return violation(
                "state machine never rolls back",
                format!("node {node} went back from applied index {} to a snapshot at {}", state.index, restored.index),
            );
        }
        *state = restored;
        if restored.index == Index(0) {
            return Ok(());
        }
        match self.digests.get(restored.index.0 as usize - 1) {
            Some(&expected) if expected == restored.digest => Ok(()),
            Some(_) => violation(
                "state machine safety (snapshot)",
                format!("node {node} restored a snapshot at index {} of a different history", restored.index),
            ),
            None => violation(
                "state machine safety (snapshot)",
                format!("node {node} restored a snapshot at index {} that nobody applied", restored.index),
            ),
        }
    }

    /// `node`, whose applied state is `state`, applies `entry`; updates `state`.
    pub fn observe_apply(&mut self, node: NodeId, state: &mut Applied, entry: &Entry) -> Check {
        if entry.index != state.index.next() {
            return violation(
                "state machine safety (in order, no gaps)",
                format!("node {node} applied index {} after {}", entry.index, state.index),
            );
        }
        let mut digest = fnv(state.digest, &entry.index.0.to_le_bytes());
        digest = fnv(digest, &entry.term.0.to_le_bytes());
        if let EntryPayload::Normal(data) = &entry.payload {
            digest = fnv(digest, data);
        }
        state.index = entry.index;
        state.digest = digest;
        let position = entry.index.0 as usize - 1;
        match self.digests.get(position) {
            Some(&expected) if expected != digest => violation(
                "state machine safety",
                format!("node {node} applied a different history up to index {}", entry.index),
            ),
            Some(_) => Ok(()),
            None => {
                self.digests.push(digest);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use raft_core::Term;

    fn entry(index: u64, term: u64, data: &'static [u8]) -> Entry {
        Entry { index: Index(index), term: Term(term), payload: EntryPayload::Normal(Bytes::from_static(data)) }
    }

    #[test]
    fn different_histories_at_equal_index_fail() {
        let mut checker = StateMachineSafety::default();
        let (mut a, mut b) = (Applied::default(), Applied::default());
        checker.observe_apply(NodeId(1), &mut a, &entry(1, 1, b"x")).expect("first");
        checker.observe_apply(NodeId(2), &mut b, &entry(1, 1, b"x")).expect("same");
        checker.observe_apply(NodeId(1), &mut a, &entry(2, 1, b"y")).expect("next");
        let error = checker.observe_apply(NodeId(2), &mut b, &entry(2, 2, b"z")).expect_err("diverged");
        assert_eq!(error.property, "state machine safety");
    }

    #[test]
    fn gaps_and_reordering_fail() {
        let mut checker = StateMachineSafety::default();
        let mut a = Applied::default();
        assert!(checker.observe_apply(NodeId(1), &mut a, &entry(2, 1, b"x")).is_err());
        let mut b = Applied::default();
        checker.observe_apply(NodeId(2), &mut b, &entry(1, 1, b"x")).expect("first");
        assert!(checker.observe_apply(NodeId(2), &mut b, &entry(1, 1, b"x")).is_err(), "applied twice");
    }

    #[test]
    fn restoring_a_snapshot_of_another_history_fails() {
        let mut checker = StateMachineSafety::default();
        let mut a = Applied::default();
        checker.observe_apply(NodeId(1), &mut a, &entry(1, 1, b"x")).expect("first");
        let mut b = Applied::default();
        checker.observe_restore(NodeId(2), &mut b, a).expect("same history");
        assert_eq!(b, a);
        let forged = Applied { digest: a.digest ^ 1, ..a };
        let error = checker.observe_restore(NodeId(3), &mut b, forged).expect_err("other history");
        assert_eq!(error.property, "state machine safety (snapshot)");
        let beyond = Applied { index: Index(5), ..a };
        assert!(checker.observe_restore(NodeId(3), &mut Applied::default(), beyond).is_err(), "state nobody applied");
        checker.observe_apply(NodeId(1), &mut a, &entry(2, 1, b"y")).expect("next");
        let stale = Applied { index: Index(1), digest: b.digest };
        let error = checker.observe_restore(NodeId(1), &mut a, stale).expect_err("rollback");
        assert_eq!(error.property, "state machine never rolls back");
    }
}
