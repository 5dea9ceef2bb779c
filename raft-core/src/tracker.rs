//! The leader's replication tracker: what it knows of each follower's log ([`Progress`]), which
//! followers answered recently (check-quorum), the proposals not yet committed (a byte budget),
//! and whether new entries wait to be broadcast. Empty on every node that does not lead; only
//! this module changes it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::error::ProposeError;
use crate::progress::{FollowerProgress, Progress};
use crate::quorum;
use crate::types::{Index, Membership, NodeId};

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    /// Per-follower progress: exactly the other members while leading.
    progress: BTreeMap<NodeId, Progress>,
    /// Sizes of this leader's proposals not yet committed, by index, oldest first.
    uncommitted: VecDeque<(Index, u64)>,
    /// The sum of `uncommitted`'s sizes.
    uncommitted_bytes: u64,
    /// New entries wait to be sent to every follower at the next output.
    broadcast_pending: bool,
}

impl Tracker {
    /// Forgets everything: a new role or term.
    pub(crate) fn clear(&mut self) {
        *self = Tracker::default();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.progress.is_empty() && self.uncommitted.is_empty() && !self.broadcast_pending
    }

    pub(crate) fn get(&self, peer: NodeId) -> Option<&Progress> {
        self.progress.get(&peer)
    }

    pub(crate) fn get_mut(&mut self, peer: NodeId) -> Option<&mut Progress> {
        self.progress.get_mut(&peer)
    }

    /// The followers, in id order.
    pub(crate) fn peers(&self) -> Vec<NodeId> {
        self.progress.keys().copied().collect()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (NodeId, &Progress)> {
        self.progress.iter().map(|(&id, progress)| (id, progress))
    }

    /// A view of every follower's progress (for status).
    pub(crate) fn progress(&self) -> BTreeMap<NodeId, FollowerProgress> {
        self.iter().map(|(id, progress)| (id, progress.view())).collect()
    }

    /// Tracks exactly `members` other than `me`: drops the others, and starts new ones at `next`.
    pub(crate) fn track_exactly(&mut self, members: &BTreeSet<NodeId>, me: NodeId, next: Index, window: usize) {
        self.progress.retain(|id, _| members.contains(id));
        for &id in members {
            if id != me {
                self.progress.entry(id).or_insert_with(|| Progress::new(next, window));
            }
        }
        invariant!(self.progress.keys().all(|id| *id != me && members.contains(id)), "tracking a non-member");
    }

    /// The highest index a quorum of `membership` holds, counting `me` as holding `own`.
    pub(crate) fn quorum_match(&self, membership: &Membership, me: NodeId, own: Index) -> Index {
        // Looked up in place: a map of the matches built here cost allocations on every answer.
        quorum::membership_committed_index_by(membership, |id| {
            if id == me { own } else { self.progress.get(&id).map_or(Index(0), |progress| progress.match_index) }
        })
    }

    /// Whether a quorum of `membership` (counting `me`) was heard from since the last check.
    pub(crate) fn recently_active_quorum(&self, membership: &Membership, me: NodeId) -> bool {
        let mut active: BTreeSet<NodeId> = self.iter().filter(|(_, p)| p.recent_active).map(|(id, _)| id).collect();
        active.insert(me);
        quorum::membership_is_quorum(membership, &active)
    }

    /// Starts a new check-quorum period: nobody was heard from yet.
    pub(crate) fn forget_activity(&mut self) {
        for progress in self.progress.values_mut() {
            progress.recent_active = false;
        }
    }

    /// Admits a proposal of `bytes` at `index` into the budget of `limit` uncommitted bytes.
    pub(crate) fn admit(&mut self, index: Index, bytes: u64, limit: u64) -> Result<(), ProposeError> {
        if self.uncommitted_bytes + bytes > limit {
            return Err(ProposeError::TooManyUncommittedBytes { uncommitted: self.uncommitted_bytes, limit });
        }
        invariant!(self.uncommitted.back().is_none_or(|&(last, _)| last < index), "proposals out of order");
        self.uncommitted.push_back((index, bytes));
        self.uncommitted_bytes += bytes;
        Ok(())
    }

    /// The proposals up to `index` committed: their bytes leave the budget.
    pub(crate) fn release_through(&mut self, index: Index) {
        while self.uncommitted.front().is_some_and(|&(i, _)| i <= index) {
            if let Some((_, bytes)) = self.uncommitted.pop_front() {
                self.uncommitted_bytes -= bytes;
            }
        }
    }

    /// New entries wait to go to every follower at the next output.
    pub(crate) fn schedule_broadcast(&mut self) {
        self.broadcast_pending = true;
    }

    /// Whether a broadcast was scheduled; it is due now, so it is no longer pending.
    pub(crate) fn take_broadcast(&mut self) -> bool {
        std::mem::take(&mut self.broadcast_pending)
    }

    pub(crate) fn broadcast_pending(&self) -> bool {
        self.broadcast_pending
    }

    /// Asserts the tracker's invariants against the log's `last` index and the limits.
    pub(crate) fn check_invariants(&self, last: Index, window: usize, uncommitted_bytes_max: u64) {
        for (id, progress) in &self.progress {
            assert!(progress.match_index < progress.next_index, "peer {id}: match >= next");
            assert!(progress.match_index <= last, "peer {id}: match beyond log");
            assert!(progress.next_index <= last.next(), "peer {id}: next beyond log");
            assert!(progress.inflights.count() <= window, "peer {id}: window");
            let snapshot_state = progress.state == crate::progress::ProgressState::Snapshot;
            assert_eq!(snapshot_state, progress.snapshot.is_some(), "peer {id}: snapshot state");
            if let Some(transfer) = &progress.snapshot {
                assert!(transfer.acked_offset <= transfer.sent_offset, "peer {id}: snapshot ack beyond sent");
            }
        }
        let sum: u64 = self.uncommitted.iter().map(|&(_, bytes)| bytes).sum();
        assert_eq!(sum, self.uncommitted_bytes, "uncommitted byte accounting");
        assert!(self.uncommitted_bytes <= uncommitted_bytes_max, "uncommitted over limit");
        assert!(self.uncommitted.iter().all(|&(index, _)| index <= last), "an uncommitted proposal beyond the log");
    }
}
