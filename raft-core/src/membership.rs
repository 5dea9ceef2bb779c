//! Membership changes by joint consensus (thesis §4.3): a change of voters goes through a joint
//! configuration (decisions need majorities of both the old and the new voters), which the
//! leader leaves on its own once the joint entry commits. Learners receive the log without
//! voting; adding or removing one needs no joint phase. A membership takes effect as soon as its
//! entry is in a node's log, so a node's membership is the latest one in its log.
//!
//! Rules: one change at a time; none before an entry of the leader's own term commits
//! (Ongaro's single-server-change bug, docs/pitfalls.md #19); a leader outside the new voters keeps
//! replicating without counting itself and steps down once the change commits (#20).

use thiserror::Error;

use crate::log::RaftLog;
use crate::raft::{Raft, Role};
use crate::storage::{Storage, StorageError};
use crate::types::{Entry, EntryPayload, Index, Membership, NodeId};

/// One change to the membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfChange {
    /// Add a voter, or promote a learner to voter.
    AddVoter(NodeId),
    /// Add a learner, or demote a voter to learner.
    AddLearner(NodeId),
    /// Remove a voter or learner.
    Remove(NodeId),
}

/// Why a membership change was refused. Nothing was appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// Only the leader changes the membership; `leader` is the one this node knows.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// An entry of the leader's own term has not committed yet (docs/pitfalls.md #19): retry soon.
    #[error("no entry of the leader's term has committed yet")]
    TermNotCommitted,
    /// Another change (or the leaving of a joint configuration) is not committed yet.
    #[error("a membership change is already in progress")]
    ChangeInProgress,
    /// A leadership transfer is in progress.
    #[error("a leadership transfer is in progress")]
    TransferInProgress,
    /// The change names no node that it would change (adding a voter twice, removing a stranger).
    #[error("the change leaves node {0} as it is")]
    NoEffect(NodeId),
    /// The result would have no voter.
    #[error("the change would leave no voter")]
    NoVoters,
    /// The log could not be read.
    #[error("storage failed: {0}")]
    Storage(StorageError),
}

/// The membership `changes` lead to from `current` (which must not be joint), checked; joint
/// phases are not part of it.
pub fn apply_changes(current: &Membership, changes: &[ConfChange]) -> Result<Membership, MembershipError> {
    if current.is_joint() {
        return Err(MembershipError::ChangeInProgress);
    }
    let mut next = current.leave_joint();
    for &change in changes {
        let changed = match change {
            ConfChange::AddVoter(id) => next.learners.remove(&id) | next.voters_incoming.insert(id),
            ConfChange::AddLearner(id) => next.voters_incoming.remove(&id) | next.learners.insert(id),
            ConfChange::Remove(id) => next.voters_incoming.remove(&id) | next.learners.remove(&id),
        };
        if !changed {
            let (ConfChange::AddVoter(id) | ConfChange::AddLearner(id) | ConfChange::Remove(id)) = change;
            return Err(MembershipError::NoEffect(id));
        }
    }
    if next.voters_incoming.is_empty() {
        return Err(MembershipError::NoVoters);
    }
    invariant!(next.validate().is_ok(), "a built membership is invalid: {next:?}");
    Ok(next)
}

/// The entry that starts moving from `current` to `target`: a joint membership when the voters
/// change, `target` itself when only learners do. Voters that `target` demotes to learners stay
/// outgoing voters until the joint configuration is left, waiting in `learners_next`. Refused
/// (`ChangeInProgress`) when either is joint already.
pub fn first_step(current: &Membership, target: &Membership) -> Result<Membership, MembershipError> {
    if current.is_joint() || target.is_joint() {
        return Err(MembershipError::ChangeInProgress);
    }
    if current.voters_incoming == target.voters_incoming {
        return Ok(target.clone());
    }
    let (learners_next, learners) =
        target.learners.iter().copied().partition(|id| current.voters_incoming.contains(id));
    let joint = Membership {
        voters_incoming: target.voters_incoming.clone(),
        voters_outgoing: current.voters_incoming.clone(),
        learners,
        learners_next,
    };
    invariant!(joint.validate().is_ok(), "a built joint membership is invalid: {joint:?}");
    invariant!(joint.leave_joint() == *target, "leaving {joint:?} does not reach {target:?}");
    Ok(joint)
}

/// The memberships in a node's log, oldest first: the base (the snapshot's, or the initial one),
/// then each membership entry after it. The latest is the one in force, whether committed or
/// not. Never empty.
#[derive(Clone, Debug)]
pub(crate) struct MembershipHistory {
    history: Vec<(Index, Membership)>,
}

/// Whether `membership` is the empty membership of a node that joined a group: it knows no
/// member until a leader replicates a membership entry to it, so its history starts with this
/// one (at index 0, or at the index of a snapshot it took of entries it received before that
/// entry). Allowed only as the base of the history; every other membership must be valid.
fn is_unknown(membership: &Membership) -> bool {
    *membership == Membership::default()
}

impl MembershipHistory {
    /// A history holding only the base membership, in force from `index` (the snapshot's index,
    /// or 0 for the initial membership).
    pub(crate) fn new(index: Index, base: Membership) -> Self {
        MembershipHistory { history: vec![(index, base)] }
    }

    /// The membership in force: the latest in the log.
    pub(crate) fn current(&self) -> &Membership {
        // Invariant: never empty (built with a base; `replace_from` keeps the base).
        &self.history.last().expect("the history always holds its base").1
    }

    /// The index of the entry of the membership in force (or of the snapshot that holds it).
    pub(crate) fn current_index(&self) -> Index {
        self.history.last().map_or(Index(0), |&(index, _)| index)
    }

    fn base_index(&self) -> Index {
        self.history.first().map_or(Index(0), |&(index, _)| index)
    }

    /// The membership in force at `index` (the base for indexes at or below it).
    pub(crate) fn at(&self, index: Index) -> &Membership {
        let found = self.history.iter().rev().find(|&&(at, _)| at <= index);
        &found.or(self.history.first()).expect("the history always holds its base").1
    }

    /// Whether a membership entry lies in `(applied, committed]`: committed, not yet applied.
    pub(crate) fn changed_between(&self, applied: Index, committed: Index) -> bool {
        self.history.iter().any(|&(index, _)| index > applied && index <= committed)
    }

    /// The log's entries from `first` on were replaced by entries carrying `carried`: the
    /// memberships of replaced entries go, the carried ones come. Returns the membership that
    /// was in force when the history changed; `None` when it did not (then neither did the
    /// membership in force: the common case, which allocates nothing).
    pub(crate) fn replace_from(&mut self, first: Index, carried: Vec<(Index, Membership)>) -> Option<Membership> {
        let base = self.base_index();
        // The base is the snapshot's (or the initial) membership: entries at or below it are
        // compacted or committed and never replaced, so the `index != base` tests below only
        // guard the base against a bug elsewhere (mutating them changes nothing observable).
        invariant!(first > base, "entries replaced at or below the membership base");
        let replaces = self.history.iter().any(|&(index, _)| index >= first && index != base);
        if !replaces && carried.is_empty() {
            return None;
        }
        let before = self.current().clone();
        invariant!(carried.windows(2).all(|w| w[0].0 < w[1].0), "carried memberships out of order");
        invariant!(carried.first().is_none_or(|&(index, _)| index >= first), "carried before the append");
        self.history.retain(|&(index, _)| index < first || index == base);
        self.history.extend(carried);
        Some(before)
    }

    /// Rebuilds the history from storage at start-up: the base (the snapshot's, or the initial
    /// one) and every membership entry in the log after it, each checked.
    pub(crate) fn load<S: Storage>(
        base: (Index, Membership),
        log: &RaftLog<S>,
        bytes_max: u64,
    ) -> Result<Self, StorageError> {
        let checked = |index: Index, membership: &Membership| {
            membership.validate().map_err(|reason| StorageError::InvalidMembership { index, reason })
        };
        if !is_unknown(&base.1) {
            checked(base.0, &base.1)?;
        }
        let (mut next, last) = (base.0.next().max(log.first_index()?), log.last_index());
        let mut history = MembershipHistory::new(base.0, base.1);
        while next <= last {
            let entries = log.entries(next, last.next(), bytes_max, usize::MAX)?;
            let Some(end) = entries.last().map(|e| e.index) else { break };
            for entry in entries {
                if let EntryPayload::Membership(membership) = entry.payload {
                    checked(entry.index, &membership)?;
                    history.push(entry.index, membership);
                }
            }
            next = end.next();
        }
        Ok(history)
    }

    /// Adds a membership entry at `index`, after every other (start-up only).
    fn push(&mut self, index: Index, membership: Membership) {
        invariant!(index > self.current_index(), "memberships pushed out of order");
        self.history.push((index, membership));
    }

    pub(crate) fn check_invariants(&self) {
        assert!(!self.history.is_empty(), "membership history lost its base");
        assert!(self.history.windows(2).all(|w| w[0].0 < w[1].0), "membership history out of order");
        for (position, (index, membership)) in self.history.iter().enumerate() {
            if position > 0 || !is_unknown(membership) {
                assert_eq!(membership.validate(), Ok(()), "invalid membership at {index}: {membership:?}");
            }
        }
    }
}

impl<S: Storage> Raft<S> {
    pub(crate) fn start_change(&mut self, changes: &[ConfChange]) -> Result<Index, MembershipError> {
        if self.role != Role::Leader {
            return Err(MembershipError::NotLeader { leader: self.leader });
        }
        if self.transfer.is_some() {
            return Err(MembershipError::TransferInProgress);
        }
        if !self.committed_in_own_term() {
            return Err(MembershipError::TermNotCommitted);
        }
        let current = self.memberships.current();
        if current.is_joint() || self.memberships.current_index() > self.log.committed {
            return Err(MembershipError::ChangeInProgress);
        }
        let target = apply_changes(current, changes)?;
        let entry = first_step(current, &target)?;
        Ok(self.append_membership(entry))
    }

    fn append_membership(&mut self, membership: Membership) -> Index {
        assert_eq!(membership.validate(), Ok(()), "the leader built an invalid membership: {membership:?}");
        let index = self.log.last_index().next();
        let entry = Entry { term: self.term, index, payload: EntryPayload::Membership(membership) };
        self.append_to_log(vec![entry]);
        self.tracker.schedule_broadcast();
        index
    }

    /// Makes the latest membership in the log the one in force: a leader then tracks exactly the
    /// new members, and reads re-count their quorum.
    pub(crate) fn on_membership_changed(&mut self, before: &Membership) {
        if self.memberships.current() != before && self.role == Role::Leader {
            self.sync_progress_with_membership();
            self.recheck_reads();
        }
    }

    /// The membership in force at `index`.
    pub(crate) fn membership_at(&self, index: Index) -> Membership {
        self.memberships.at(index).clone()
    }

    /// Whether a committed membership change is not applied yet: such a node must not campaign
    /// (etcd-io/raft#469; via leadership transfer too, raft-rs#221).
    pub(crate) fn has_unapplied_committed_change(&self) -> bool {
        self.memberships.changed_between(self.log.applied, self.log.committed)
    }

    /// A leader tracks exactly the other members.
    pub(crate) fn sync_progress_with_membership(&mut self) {
        let members = self.memberships.current().members();
        let next = self.log.last_index().next();
        self.tracker.track_exactly(&members, self.id, next, self.options.inflight_messages_max());
    }

    /// After the commit index moved: leave a committed joint configuration, and step down once
    /// a membership without us as voter has committed.
    pub(crate) fn after_commit_membership(&mut self) {
        if self.role != Role::Leader || self.memberships.current_index() > self.log.committed {
            return;
        }
        let current = self.memberships.current();
        if current.is_joint() && self.committed_in_own_term() {
            let leave = current.leave_joint();
            self.append_membership(leave);
        } else if !current.is_voter(self.id) {
            tracing::info!(term = %self.term, "removed from the voters: stepping down");
            self.become_follower(self.term, None);
        }
    }

    /// Whether this node may become leader: a voter, in its latest membership or in its latest
    /// committed one, with no committed change still to apply. The second case matters when a
    /// leader leaving the voters appended the final membership and lost leadership before
    /// replicating it: the remaining voters, still joint, may need its vote and cannot get it (its
    /// log is ahead), so it must be able to lead again, replicate the entry, and step down.
    pub(crate) fn may_campaign(&self) -> bool {
        let voter =
            self.memberships.current().is_voter(self.id) || self.memberships.at(self.log.committed).is_voter(self.id);
        voter && !self.has_unapplied_committed_change()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[u64]) -> std::collections::BTreeSet<NodeId> {
        list.iter().copied().map(NodeId).collect()
    }

    #[test]
    fn changes_build_a_checked_membership() {
        let current = Membership::new([1, 2, 3].map(NodeId));
        let next = apply_changes(&current, &[ConfChange::AddLearner(NodeId(4))]).expect("valid");
        assert_eq!((next.voters_incoming.clone(), next.learners.clone()), (ids(&[1, 2, 3]), ids(&[4])));
        assert_eq!(first_step(&current, &next), Ok(next.clone()), "learners need no joint phase");
        let promoted = apply_changes(&next, &[ConfChange::AddVoter(NodeId(4))]).expect("valid");
        assert_eq!((promoted.voters_incoming.clone(), promoted.learners.clone()), (ids(&[1, 2, 3, 4]), ids(&[])));
        let joint = first_step(&next, &promoted).expect("neither is joint");
        assert_eq!((joint.voters_incoming, joint.voters_outgoing), (ids(&[1, 2, 3, 4]), ids(&[1, 2, 3])));
        assert_eq!(
            apply_changes(&current, &[ConfChange::AddVoter(NodeId(1))]),
            Err(MembershipError::NoEffect(NodeId(1)))
        );
        assert_eq!(
            apply_changes(&current, &[ConfChange::Remove(NodeId(9))]),
            Err(MembershipError::NoEffect(NodeId(9)))
        );
        let all = [1, 2, 3].map(|id| ConfChange::Remove(NodeId(id)));
        assert_eq!(apply_changes(&current, &all), Err(MembershipError::NoVoters));
    }
}
