//! What a node reports: events as they happen, and its status on request.

use std::collections::BTreeMap;

use raft_core::{Index, Membership, NodeId, ProgressState, Role, Status, Term};

use super::error::StopReason;

/// Something that happened to a node, broadcast to every
/// [`NodeHandle::events`](crate::NodeHandle::events) receiver.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum NodeEvent {
    /// The leader this node knows of, or the term, changed.
    LeaderChanged {
        /// The leader of `term`, if known (`Some(own id)` when this node leads).
        leader: Option<NodeId>,
        /// The current term.
        term: Term,
    },
    /// Sending to the peer failed because it is unreachable (reported once per outage: again only
    /// after a send to it has succeeded).
    PeerUnreachable(NodeId),
    /// A send to a peer that was reported unreachable succeeded again.
    PeerReachable(NodeId),
    /// The node saved a snapshot of its state machine at `index` (and compacted its log).
    SnapshotTaken {
        /// The snapshot's last index.
        index: Index,
    },
    /// The node's state machine was restored from a snapshot at `index` (received from the
    /// leader, or the store's own at start-up).
    SnapshotRestored {
        /// The snapshot's last index.
        index: Index,
    },
    /// The membership in force on this node changed (a membership entry reached its log, or a
    /// snapshot replaced it).
    MembershipChanged(Membership),
    /// The node stopped; nothing follows.
    Stopped(StopReason),
}

/// A node's state, from [`NodeHandle::status`](crate::NodeHandle::status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// The node's id.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its term.
    pub term: Term,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// The highest index known to be committed.
    pub commit: Index,
    /// The highest index the state machine has applied (or restored from a snapshot).
    pub applied: Index,
    /// The last index in the log (durable or not).
    pub last_index: Index,
    /// Replication progress per follower (on a leader; empty otherwise).
    pub peers: BTreeMap<NodeId, PeerStatus>,
    /// The membership in force on this node (the latest in its log).
    pub membership: Membership,
    /// The latest membership at or below this node's commit index: final, unlike `membership`,
    /// which an uncommitted entry may still replace. A removed follower may never learn that the
    /// membership without it committed (the leader stops replicating to it); its leader does.
    pub committed_membership: Membership,
    /// The target of the leadership transfer in progress (on a leader).
    pub transfer_target: Option<NodeId>,
    /// Linearizable and lease reads this node's clients asked and the core has not confirmed or
    /// failed yet.
    pub reads_pending: usize,
}

/// What a leader knows of one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// The follower's log matches the leader's up to here.
    pub match_index: Index,
    /// The next index to send.
    pub next_index: Index,
    /// How the leader sends to it.
    pub state: ProgressState,
    /// Entries the follower lacks: the leader's last index minus `match_index`.
    pub lag_entries: u64,
    /// Whether the follower answered since the last check-quorum round.
    pub recent_active: bool,
}

impl NodeStatus {
    /// The status described by the core's `status`, the state machine's `applied` index and the
    /// number of reads waiting for the core.
    pub(crate) fn new(status: Status, applied: Index, reads_pending: usize) -> Self {
        let last_index = status.last_index;
        let peers = status
            .progress
            .into_iter()
            .map(|(id, progress)| {
                let peer = PeerStatus {
                    match_index: progress.match_index,
                    next_index: progress.next_index,
                    state: progress.state,
                    lag_entries: last_index.0.saturating_sub(progress.match_index.0),
                    recent_active: progress.recent_active,
                };
                (id, peer)
            })
            .collect();
        NodeStatus {
            id: status.id,
            role: status.soft_state.role,
            term: status.soft_state.term,
            leader: status.soft_state.leader,
            commit: status.commit,
            applied,
            last_index,
            peers,
            membership: status.membership,
            committed_membership: status.committed_membership,
            transfer_target: status.transfer_target,
            reads_pending,
        }
    }
}
