//! Recovery from a lost quorum: make one surviving member the only voter of its group, keeping
//! every entry it has, so that it can elect itself and serve again.
//!
//! A group whose majority is gone for good (two of three disks lost) can never commit again, by
//! design. [`become_sole_voter`] is the way out that an operator takes knowingly, offline, on
//! **one** survivor's store: it appends a membership entry that names that node as the only voter
//! (no learners), in a term above any the store has seen, with the node's vote for itself. When
//! the node starts again it is a group of one: it elects itself, its next entry commits every
//! entry of its log, and other nodes join it afresh (as learners with empty stores, then voters).
//!
//! What it costs, plainly:
//! - Writes that only the lost members had are gone; entries this node had but that never
//!   committed are committed now (a client told "unknown outcome" may find its write applied).
//! - Run it on one survivor only. Other survivors must not start with their old stores: their logs
//!   may disagree with this one, and they still name the old voters. Wipe them and join them to
//!   the recovered node under new ids.
//! - The lost members must never come back with their old data.
//!
//! Refused while the store is in use: [`DiskStorage`](crate::DiskStorage) and
//! [`SharedWal`](crate::SharedWal) hold their directory while open, so opening one for recovery
//! fails with [`DiskError::InUse`](crate::DiskError::InUse) while the node runs.

use raft_core::{Entry, EntryPayload, HardState, Index, Membership, NodeId, Storage, StorageError, Term};
use thiserror::Error;

use crate::LogStore;

/// What [`become_sole_voter`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// The membership in force before (the last one in the log, or the stored one).
    pub previous: Membership,
    /// The index of the new membership entry (the log's last index before it, plus one).
    pub index: Index,
    /// The term of the new entry, which is also the store's new term.
    pub term: Term,
}

/// Why recovery did not happen (the store is unchanged, unless writing failed midway, which an
/// I/O error reports; run it again once the disk is fixed: it is safe to repeat).
#[derive(Debug, Error)]
pub enum RecoverError<E: std::error::Error + 'static> {
    /// Reading the store failed.
    #[error("reading the store: {0}")]
    Read(#[from] StorageError),
    /// Writing the new membership failed.
    #[error("writing the new membership: {0}")]
    Write(#[source] E),
}

/// Makes `me` the only voter of the group whose store is `store` (see the module docs for what
/// this costs). The store must be the one node `me` uses, opened offline.
pub fn become_sole_voter<S: LogStore>(store: &mut S, me: NodeId) -> Result<Recovered, RecoverError<S::Error>> {
    let initial = store.initial_state()?;
    let last = store.last_index()?;
    let last_term = store.term(last)?;
    let previous = latest_membership(store)?;
    let term = initial.hard_state.term.max(last_term).next();
    let index = last.next();
    let entry = Entry { index, term, payload: EntryPayload::Membership(Membership::new([me])) };
    let hard_state = HardState { term, vote: Some(me), commit: initial.hard_state.commit };
    store.persist(Some(hard_state), &[entry]).map_err(RecoverError::Write)?;
    Ok(Recovered { previous, index, term })
}

/// The membership in force in `store`: its log's last membership entry, committed or not, or
/// the stored one (of the snapshot or the initial state) when the log has none.
pub fn latest_membership<S: Storage>(store: &S) -> Result<Membership, StorageError> {
    let mut membership = store.initial_state()?.membership;
    let (first, last) = (store.first_index()?, store.last_index()?);
    if first <= last {
        for entry in store.entries(first, last.next(), u64::MAX)? {
            if let EntryPayload::Membership(next) = entry.payload {
                membership = next;
            }
        }
    }
    Ok(membership)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::MemStorage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index: Index(index), term: Term(term), payload: EntryPayload::Normal(Bytes::from_static(b"x")) }
    }

    #[test]
    fn the_survivor_becomes_the_only_voter_and_keeps_its_log() -> Result<(), Box<dyn std::error::Error>> {
        let three = Membership::new([NodeId(1), NodeId(2), NodeId(3)]);
        let mut store = MemStorage::new(three.clone());
        let hard_state = HardState { term: Term(5), vote: Some(NodeId(2)), commit: Index(2) };
        store.persist(Some(hard_state), &[entry(1, 1), entry(2, 3), entry(3, 4)])?;
        let recovered = become_sole_voter(&mut store, NodeId(3))?;
        assert_eq!(recovered, Recovered { previous: three, index: Index(4), term: Term(6) });
        assert_eq!(store.last_index()?, Index(4));
        assert_eq!(store.entries(Index(1), Index(4), u64::MAX)?, vec![entry(1, 1), entry(2, 3), entry(3, 4)]);
        let appended = store.entries(Index(4), Index(5), u64::MAX)?;
        assert_eq!(appended[0].payload, EntryPayload::Membership(Membership::new([NodeId(3)])));
        let state = store.initial_state()?.hard_state;
        assert_eq!(state, HardState { term: Term(6), vote: Some(NodeId(3)), commit: Index(2) });
        Ok(())
    }

    #[test]
    fn the_last_membership_entry_is_the_previous_one_and_the_new_term_beats_the_log()
    -> Result<(), Box<dyn std::error::Error>> {
        let mut store = MemStorage::new(Membership::new([NodeId(1)]));
        let five = Membership::new((1..=5).map(NodeId));
        let joined = Entry { index: Index(2), term: Term(9), payload: EntryPayload::Membership(five.clone()) };
        // A log whose last term (9) is above the stored term (7): the new term must beat both.
        store.persist(Some(HardState { term: Term(7), vote: None, commit: Index(1) }), &[entry(1, 1), joined])?;
        let recovered = become_sole_voter(&mut store, NodeId(4))?;
        assert_eq!(recovered, Recovered { previous: five, index: Index(3), term: Term(10) });
        Ok(())
    }
}
