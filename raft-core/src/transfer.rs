//! Leadership transfer (thesis §3.10): the leader stops taking proposals, brings the target up
//! to date, and sends it `TimeoutNow`; the target campaigns at once, and its vote requests
//! override leader stickiness. The transfer is abandoned after an election timeout. Lease reads
//! stop as soon as a transfer starts, before `TimeoutNow` can go out (raft-rs#234).

use thiserror::Error;

use crate::message::MessageBody;
use crate::raft::{Raft, Role};
use crate::storage::Storage;
use crate::types::NodeId;

/// A transfer in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Transfer {
    pub(crate) target: NodeId,
    /// Leader ticks since it started.
    pub(crate) elapsed: u32,
    pub(crate) timeout_sent: bool,
}

/// Why a leadership transfer was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TransferError {
    /// Only the leader transfers leadership; `leader` is the one this node knows.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// The target does not vote.
    #[error("node {0} is not a voter")]
    NotAVoter(NodeId),
    /// The target is this leader.
    #[error("the leader is already node {0}")]
    AlreadyLeader(NodeId),
    /// Another transfer is in progress.
    #[error("a transfer to node {0} is in progress")]
    InProgress(NodeId),
}

impl<S: Storage> Raft<S> {
    pub(crate) fn start_transfer(&mut self, target: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader { leader: self.leader });
        }
        if let Some(transfer) = self.transfer {
            return Err(TransferError::InProgress(transfer.target));
        }
        if target == self.id {
            return Err(TransferError::AlreadyLeader(target));
        }
        if !self.memberships.current().is_voter(target) {
            return Err(TransferError::NotAVoter(target));
        }
        invariant!(self.memberships.current().is_voter(target) && target != self.id, "a transfer to a non-voter");
        tracing::info!(%target, term = %self.term, "transferring leadership");
        self.transfer = Some(Transfer { target, elapsed: 0, timeout_sent: false });
        self.send_appends_while_possible(target);
        self.maybe_send_timeout_now();
        Ok(())
    }

    /// Sends `TimeoutNow` once the target holds our whole log.
    pub(crate) fn maybe_send_timeout_now(&mut self) {
        let Some(transfer) = self.transfer.filter(|t| !t.timeout_sent) else { return };
        let caught_up = self.tracker.get(transfer.target).is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            invariant!(self.role == Role::Leader, "TimeoutNow sent by a non-leader");
            self.transfer = Some(Transfer { timeout_sent: true, ..transfer });
            self.send(transfer.target, self.term, MessageBody::TimeoutNow);
        }
    }

    /// A leader tick: abandons a transfer that took an election timeout.
    pub(crate) fn tick_transfer(&mut self) {
        invariant!(self.role == Role::Leader || self.transfer.is_none(), "a transfer outside leadership");
        let Some(transfer) = self.transfer.as_mut() else { return };
        transfer.elapsed += 1;
        if transfer.elapsed >= self.options.election_ticks() {
            tracing::info!(target = %transfer.target, term = %self.term, "leadership transfer abandoned: it took an election timeout");
            self.transfer = None;
        }
    }

    /// The leader asks us to campaign now. Refused with a committed membership change still
    /// unapplied (raft-rs#221).
    pub(crate) fn on_timeout_now(&mut self) {
        if self.role == Role::Leader || !self.may_campaign() {
            return;
        }
        self.campaign_for_transfer();
    }
}
