//! Membership changes and leadership transfers through the driver: the core asks the
//! core, keeps the caller's answer channel, and answers once the change has completed on this
//! node (or the transfer's target leads), or with the reason it will not.
//!
//! A change completes when the committed entries this node hands to its state machine include
//! the change's first entry (in the term it was appended in) and then a membership that is not
//! joint: the leave entry the leader appends by itself, or the change's own entry when it moved
//! no voter. Losing leadership before that, or a snapshot over the change's index, leaves the
//! outcome unknown ([`MembershipChangeError::LeadershipLost`]).

use raft_core::{ConfChange, Entry, EntryPayload, Index, Membership, NodeId, Role, Term};
use raft_storage::LogStore;
use tokio::sync::oneshot;

use super::core::Core;
use super::error::{MembershipChangeError, StopReason, TransferLeadershipError};
use super::event::NodeEvent;
use super::state_machine::StateMachine;
use crate::transport::Transport;

/// How many election timeouts (each up to twice the core's `election_ticks`) a leadership transfer may take
/// before [`NodeHandle::transfer_leadership`](crate::NodeHandle::transfer_leadership) gives up
/// with [`TransferLeadershipError::TimedOut`]. The core itself abandons a transfer after one.
pub const TRANSFER_ELECTION_TIMEOUTS_MAX: u64 = 2;

/// A client's membership change on its way to the core.
pub(crate) struct MembershipRequest {
    pub(crate) changes: Vec<ConfChange>,
    pub(crate) responder: oneshot::Sender<Result<Membership, MembershipChangeError>>,
}

/// A client's leadership transfer on its way to the core.
pub(crate) struct TransferRequest {
    pub(crate) target: NodeId,
    pub(crate) responder: oneshot::Sender<Result<(), TransferLeadershipError>>,
}

/// A change the core appended at (`index`, `term`), waiting to complete.
pub(crate) struct PendingChange {
    index: Index,
    term: Term,
    /// The change's first entry was seen committed with its term.
    first_committed: bool,
    responder: oneshot::Sender<Result<Membership, MembershipChangeError>>,
}

/// A transfer the core started, waiting for the target to lead.
pub(crate) struct PendingTransfer {
    target: NodeId,
    /// Gives up when the core's tick count reaches this.
    deadline_tick: u64,
    responder: oneshot::Sender<Result<(), TransferLeadershipError>>,
}

impl<S, T, SM> Core<S, T, SM>
where
    S: LogStore,
    T: Transport,
    SM: StateMachine,
{
    /// Asks the core for the change; keeps the request when appended (at most one change is
    /// pending in the core, so at most one here).
    pub(crate) fn change_membership(&mut self, request: MembershipRequest) {
        match self.raft.change_membership(&request.changes) {
            Ok(index) => {
                let term = self.raft.term();
                let pending = PendingChange { index, term, first_committed: false, responder: request.responder };
                if let Some(older) = self.membership_change.replace(pending) {
                    // The core refuses a second change while one is uncommitted; one that got
                    // here finished without this thread seeing it (a snapshot, say).
                    let _ = older.responder.send(Err(MembershipChangeError::LeadershipLost));
                }
            }
            Err(reason) => {
                let error = MembershipChangeError::refused(reason, &self.addresses);
                let _ = request.responder.send(Err(error)); // The caller may have stopped waiting.
            }
        }
    }

    /// Asks the core to transfer leadership; keeps the request until the target leads.
    pub(crate) fn transfer_leadership(&mut self, request: TransferRequest) {
        if let Err(reason) = self.raft.transfer_leadership(request.target) {
            let error = TransferLeadershipError::refused(reason, &self.addresses);
            let _ = request.responder.send(Err(error)); // The caller may have stopped waiting.
            return;
        }
        let timeout_ticks =
            u64::from(self.raft.options().election_ticks()).saturating_mul(2 * TRANSFER_ELECTION_TIMEOUTS_MAX);
        let deadline_tick = self.ticks_total.saturating_add(timeout_ticks);
        let pending = PendingTransfer { target: request.target, deadline_tick, responder: request.responder };
        if let Some(older) = self.transfer.replace(pending) {
            let _ = older.responder.send(Err(TransferLeadershipError::TimedOut));
        }
    }

    /// Follows the pending change through committed `entries` (handed out in order).
    pub(crate) fn follow_committed_membership(&mut self, entries: &[Entry]) {
        let Some(pending) = self.membership_change.as_mut() else { return };
        for entry in entries.iter().filter(|entry| entry.index >= pending.index) {
            if entry.index == pending.index {
                if entry.term != pending.term {
                    return self.finish_change(Err(MembershipChangeError::LeadershipLost));
                }
                pending.first_committed = true;
            }
            if let EntryPayload::Membership(membership) = &entry.payload
                && pending.first_committed
                && !membership.is_joint()
            {
                let membership = membership.clone();
                return self.finish_change(Ok(membership));
            }
        }
    }

    /// After an installed snapshot at `index`: a change at or below it can no longer be matched
    /// with its entry.
    pub(crate) fn snapshot_over_change(&mut self, index: Index) {
        if self.membership_change.as_ref().is_some_and(|pending| pending.index <= index) {
            self.finish_change(Err(MembershipChangeError::LeadershipLost));
        }
    }

    /// After a role change: a follower no longer drives its change to the end.
    pub(crate) fn role_changed(&mut self, role: Role) {
        if role != Role::Leader && self.membership_change.is_some() {
            self.finish_change(Err(MembershipChangeError::LeadershipLost));
        }
    }

    fn finish_change(&mut self, outcome: Result<Membership, MembershipChangeError>) {
        if let Some(pending) = self.membership_change.take() {
            let _ = pending.responder.send(outcome); // The caller may have stopped waiting.
        }
    }

    /// Emits `MembershipChanged` when the membership in force differs from the last one seen,
    /// and answers the pending transfer once its target leads or its time is up.
    pub(crate) fn after_outputs(&mut self) {
        if self.raft.membership() != &self.membership_seen {
            self.membership_seen = self.raft.membership().clone();
            self.shared.emit(NodeEvent::MembershipChanged(self.membership_seen.clone()));
        }
        let Some(pending) = self.transfer.as_ref() else { return };
        let outcome = if self.leader_term.0 == Some(pending.target) {
            Ok(())
        } else if self.ticks_total >= pending.deadline_tick {
            Err(TransferLeadershipError::TimedOut)
        } else {
            return;
        };
        if let Some(pending) = self.transfer.take() {
            let _ = pending.responder.send(outcome); // The caller may have stopped waiting.
        }
    }

    /// Answers the pending change and transfer with the stop reason.
    pub(crate) fn fail_membership_requests(&mut self, reason: &StopReason) {
        if let Some(pending) = self.membership_change.take() {
            let _ = pending.responder.send(Err(MembershipChangeError::from(reason.clone())));
        }
        if let Some(pending) = self.transfer.take() {
            let _ = pending.responder.send(Err(TransferLeadershipError::from(reason.clone())));
        }
    }
}
