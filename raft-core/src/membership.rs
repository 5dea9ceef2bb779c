//! Membership changes by joint consensus (thesis §4.3): a change of voters goes through a joint
//! configuration (decisions need majorities of both the old and the new voters), which the
//! leader leaves on its own once the joint entry commits. Learners receive the log without
//! voting; adding or removing one needs no joint phase. A membership takes effect as soon as its
//! entry is in a node's log, so a node's membership is the latest one in its log.
//!
//! Rules: one change at a time; none before an entry of the leader's own term commits
//! (Ongaro's single-server-change bug, PITFALLS.md 19); a leader outside the new voters keeps
//! replicating without counting itself and steps down once the change commits (20).

use thiserror::Error;

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
pub enum MembershipError {
    /// Only the leader changes the membership; `leader` is the one this node knows.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// An entry of the leader's own term has not committed yet (PITFALLS.md 19): retry soon.
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
    let mut next = Membership { voters_outgoing: Default::default(), ..current.clone() };
    for &change in changes {
        let changed = match change {
            ConfChange::AddVoter(id) => next.learners.remove(&id) | next.voters.insert(id),
            ConfChange::AddLearner(id) => next.voters.remove(&id) | next.learners.insert(id),
            ConfChange::Remove(id) => next.voters.remove(&id) | next.learners.remove(&id),
        };
        if !changed {
            let (ConfChange::AddVoter(id) | ConfChange::AddLearner(id) | ConfChange::Remove(id)) = change;
            return Err(MembershipError::NoEffect(id));
        }
    }
    if next.voters.is_empty() {
        return Err(MembershipError::NoVoters);
    }
    debug_assert!(next.is_valid(), "a built membership is valid: {next:?}");
    Ok(next)
}

/// The entry that starts moving from `current` to `target`: a joint membership when the voters
/// change, `target` itself when only learners do.
pub fn first_step(current: &Membership, target: &Membership) -> Membership {
    if current.voters == target.voters {
        return target.clone();
    }
    Membership {
        voters: target.voters.clone(),
        voters_outgoing: current.voters.clone(),
        learners: target.learners.clone(),
    }
}

impl<S: Storage> Raft<S> {
    /// Proposes membership `changes` (applied together). A change of voters goes through a joint
    /// configuration that the leader leaves automatically; the returned index is the first entry.
    pub fn change_membership(&mut self, changes: &[ConfChange]) -> Result<Index, MembershipError> {
        let result = self.start_change(changes);
        self.after_input();
        result
    }

    fn start_change(&mut self, changes: &[ConfChange]) -> Result<Index, MembershipError> {
        if self.role != Role::Leader {
            return Err(MembershipError::NotLeader { leader: self.leader });
        }
        if self.transfer.is_some() {
            return Err(MembershipError::TransferInProgress);
        }
        if !self.committed_in_own_term() {
            return Err(MembershipError::TermNotCommitted);
        }
        if self.membership.is_joint() || self.latest_config_index() > self.log.committed {
            return Err(MembershipError::ChangeInProgress);
        }
        let target = apply_changes(&self.membership, changes)?;
        let entry = first_step(&self.membership, &target);
        Ok(self.append_membership(entry))
    }

    fn append_membership(&mut self, membership: Membership) -> Index {
        let index = self.log.last_index().next();
        let entry = Entry { term: self.term, index, payload: EntryPayload::Membership(membership) };
        self.append_to_log(vec![entry]);
        self.broadcast_pending = true;
        index
    }

    /// Appends a leader's own new entry (at the last index + 1) to the log, moving it there: it
    /// replaces nothing, so unless it carries a membership the memberships are unchanged.
    pub(crate) fn append_proposal_to_log(&mut self, entry: Entry) {
        if matches!(entry.payload, EntryPayload::Membership(_)) {
            self.append_to_log(vec![entry]);
        } else {
            self.log.push(entry);
        }
    }

    /// Appends `entries` to the log, moving them there (a follower's come out of the leader's
    /// message: cloning them cost a copy of every entry), and takes up any membership they carry.
    pub(crate) fn append_to_log(&mut self, mut entries: Vec<Entry>) {
        let Some(first) = entries.first().map(|e| e.index) else { return };
        // Taken before the entries move into the log; none in the common case (no allocation).
        let carried: Vec<(Index, Membership)> = entries
            .iter()
            .filter_map(|entry| match &entry.payload {
                EntryPayload::Membership(membership) => Some((entry.index, membership.clone())),
                _ => None,
            })
            .collect();
        self.log.append(&mut entries);
        // Memberships from replaced entries are gone with them.
        let base = self.configs_base();
        let replaces_config = self.configs.iter().any(|&(index, _)| index >= first && index != base);
        if !replaces_config && carried.is_empty() {
            // The memberships in the log are unchanged, and so is the one in force (it is the
            // latest in the log, an invariant): skip the clone and compare below, which cost
            // allocations on every proposal and every append.
            return;
        }
        let before = self.membership.clone();
        self.configs.retain(|&(index, _)| index < first || index == base);
        self.configs.extend(carried);
        self.adopt_latest_membership(before);
    }

    fn configs_base(&self) -> Index {
        self.configs.first().map_or(Index(0), |&(index, _)| index)
    }

    /// Makes the latest membership in the log the one in force.
    pub(crate) fn adopt_latest_membership(&mut self, before: Membership) {
        if let Some((_, latest)) = self.configs.last() {
            self.membership = latest.clone();
        }
        if self.membership != before && self.role == Role::Leader {
            self.sync_progress_with_membership();
            self.recheck_reads();
        }
    }

    /// The index of the entry of the membership in force (or of the snapshot that holds it).
    pub(crate) fn latest_config_index(&self) -> Index {
        self.configs.last().map_or(Index(0), |&(index, _)| index)
    }

    /// The membership in force at `index`.
    pub(crate) fn membership_at(&self, index: Index) -> Membership {
        let found = self.configs.iter().rev().find(|&&(at, _)| at <= index);
        found.or(self.configs.first()).map_or_else(|| self.membership.clone(), |(_, m)| m.clone())
    }

    /// Whether a committed membership change is not applied yet: such a node must not campaign
    /// (etcd-io/raft#469; via leadership transfer too, raft-rs#221).
    pub(crate) fn has_unapplied_committed_change(&self) -> bool {
        self.configs.iter().any(|&(index, _)| index > self.log.applied && index <= self.log.committed)
    }

    /// A leader tracks exactly the other members.
    pub(crate) fn sync_progress_with_membership(&mut self) {
        let members = self.membership.members();
        self.progress.retain(|id, _| members.contains(id));
        let next = self.log.last_index().next();
        let window = self.options.inflight_messages_max();
        for id in members {
            if id != self.id {
                self.progress.entry(id).or_insert_with(|| crate::progress::Progress::new(next, window));
            }
        }
    }

    /// After the commit index moved: leave a committed joint configuration, and step down once
    /// a membership without us as voter has committed.
    pub(crate) fn after_commit_membership(&mut self) {
        if self.role != Role::Leader || self.latest_config_index() > self.log.committed {
            return;
        }
        if self.membership.is_joint() && self.committed_in_own_term() {
            let leave = Membership { voters_outgoing: Default::default(), ..self.membership.clone() };
            self.append_membership(leave);
        } else if !self.membership.is_voter(self.id) {
            tracing::info!(id = %self.id, term = %self.term, "removed from the voters: stepping down");
            self.become_follower(self.term, None);
        }
    }

    /// Rebuilds the membership history from storage at start-up: the base (the snapshot's, or
    /// the initial one) and every membership entry after it.
    pub(crate) fn load_configs(&mut self, base: (Index, Membership)) -> Result<(), StorageError> {
        self.configs = vec![base];
        let (mut next, last) = (self.configs_base().next().max(self.log.first_index()?), self.log.last_index());
        while next <= last {
            let entries = self.log.entries(next, last.next(), self.options.apply_bytes_max(), usize::MAX)?;
            let Some(end) = entries.last().map(|e| e.index) else { break };
            for entry in entries {
                if let EntryPayload::Membership(membership) = entry.payload {
                    self.configs.push((entry.index, membership));
                }
            }
            next = end.next();
        }
        if let Some((_, latest)) = self.configs.last() {
            self.membership = latest.clone();
        }
        Ok(())
    }

    /// Whether this node may become leader: a voter, in its latest membership or in its latest
    /// committed one, with no committed change still to apply. The second case matters when a
    /// leader leaving the voters appended the final membership and lost leadership before
    /// replicating it: the remaining voters, still joint, may need its vote and cannot get it (its
    /// log is ahead), so it must be able to lead again, replicate the entry, and step down.
    pub(crate) fn may_campaign(&self) -> bool {
        let voter = self.membership.is_voter(self.id) || self.membership_at(self.log.committed).is_voter(self.id);
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
        assert_eq!((next.voters.clone(), next.learners.clone()), (ids(&[1, 2, 3]), ids(&[4])));
        assert_eq!(first_step(&current, &next), next, "learners need no joint phase");
        let promoted = apply_changes(&next, &[ConfChange::AddVoter(NodeId(4))]).expect("valid");
        assert_eq!((promoted.voters.clone(), promoted.learners.clone()), (ids(&[1, 2, 3, 4]), ids(&[])));
        let joint = first_step(&next, &promoted);
        assert_eq!((joint.voters, joint.voters_outgoing), (ids(&[1, 2, 3, 4]), ids(&[1, 2, 3])));
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
