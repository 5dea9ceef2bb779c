//! A client that follows the leader: where to send a proposal again after an error
//! ([`redirect`]), and a proposal retried until it is applied ([`propose`]).

use bytes::Bytes;
use raft_core::{ConfChange, Membership, MembershipError, NodeId};
use raft_net::{MembershipChangeError, NodeHandle, ProposeError, StateMachine};
use tokio::time::{Instant, sleep, timeout, timeout_at};

use crate::wait::{PATIENCE, POLL};

/// Where a client sends a proposal again after an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redirect {
    /// To the leader the node named, at once (its position among the client's nodes).
    Leader(usize),
    /// To the next node, after a pause: this one does not lead and knows no leader it can name
    /// (an election is under way, or the leader is not among the client's nodes).
    Next,
    /// To the same node, after a pause: it leads, and refused or lost this proposal for a
    /// passing reason (too busy, a term not yet durable, a transfer, a lost leadership or an
    /// outcome a snapshot hid). Proposals that may have been applied are the caller's to judge.
    Again,
    /// Nowhere: the command can never be accepted (too large), or the node stopped.
    GiveUp,
}

/// Where to send a proposal again after `error`, among nodes `ids`.
pub fn redirect(error: &ProposeError, ids: &[NodeId]) -> Redirect {
    use raft_core::ProposeError as Refusal;
    if let Some((leader, _)) = error.leader_hint() {
        return ids.iter().position(|id| *id == leader).map_or(Redirect::Next, Redirect::Leader);
    }
    match error {
        ProposeError::Refused { reason: Refusal::NotLeader { .. }, .. } => Redirect::Next,
        ProposeError::TooBusy
        | ProposeError::Refused {
            reason: Refusal::TooManyUncommittedBytes { .. } | Refusal::TermNotDurable | Refusal::TransferInProgress,
            ..
        }
        | ProposeError::LeadershipLost { .. }
        | ProposeError::OutcomeUnknown { .. } => Redirect::Again,
        _ => Redirect::GiveUp,
    }
}

/// Proposes `command` until it is applied: starts at `nodes[target]` and follows [`redirect`];
/// where it says [`Redirect::GiveUp`] (a node that stopped) it tries the next node, so commands
/// must be idempotent (a retry may repeat one that was applied). Panics on a command too large
/// to propose, and after [`PATIENCE`], even when a proposal is never answered (a leader that
/// lost its quorum for good).
pub async fn propose<SM: StateMachine>(
    nodes: &[NodeHandle<SM>],
    ids: &[NodeId],
    mut target: usize,
    command: Bytes,
) -> SM::Response {
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "proposal {command:?} never applied");
        let outcome = timeout_at(deadline, nodes[target].propose(command.clone())).await;
        let Ok(outcome) = outcome else { panic!("proposal {command:?} never answered") };
        let error = match outcome {
            Ok(response) => return response,
            Err(ProposeError::Refused { reason: raft_core::ProposeError::TooLarge { .. }, .. }) => {
                panic!("proposal {command:?} is too large")
            }
            Err(error) => error,
        };
        match redirect(&error, ids) {
            Redirect::Leader(leader) => {
                target = leader;
                continue;
            }
            Redirect::Again => {}
            Redirect::Next | Redirect::GiveUp => target = (target + 1) % nodes.len(),
        }
        sleep(POLL).await;
    }
}

/// Changes the membership through `leader`, retrying while its term has no committed entry or
/// another change is under way; panics on any other refusal or after [`PATIENCE`].
pub async fn change_membership<SM: StateMachine>(leader: &NodeHandle<SM>, changes: Vec<ConfChange>) -> Membership {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let outcome = timeout(PATIENCE, leader.change_membership(changes.clone())).await;
        match outcome.expect("the change is answered") {
            Ok(membership) => return membership,
            Err(MembershipChangeError::Refused {
                reason: MembershipError::TermNotCommitted | MembershipError::ChangeInProgress,
                ..
            }) => {}
            Err(error) => panic!("change {changes:?} failed: {error}"),
        }
        assert!(Instant::now() < deadline, "change {changes:?} never accepted");
        sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use raft_core::{Index, ProposeError as Refusal, Term};

    use super::*;

    fn refused(reason: Refusal) -> ProposeError {
        ProposeError::Refused { reason, leader_address: None }
    }

    #[test]
    fn a_named_leader_is_asked_at_once_passing_refusals_again_and_final_ones_never() {
        let ids = [NodeId(1), NodeId(2), NodeId(3)];
        let redirects = [
            (refused(Refusal::NotLeader { leader: Some(NodeId(3)) }), Redirect::Leader(2)),
            (refused(Refusal::NotLeader { leader: Some(NodeId(9)) }), Redirect::Next),
            (refused(Refusal::NotLeader { leader: None }), Redirect::Next),
            (refused(Refusal::TermNotDurable), Redirect::Again),
            (refused(Refusal::TransferInProgress), Redirect::Again),
            (refused(Refusal::TooManyUncommittedBytes { uncommitted: 2, limit: 1 }), Redirect::Again),
            (ProposeError::TooBusy, Redirect::Again),
            (ProposeError::LeadershipLost { index: Index(4), term: Term(2) }, Redirect::Again),
            (ProposeError::OutcomeUnknown { index: Index(4) }, Redirect::Again),
            (refused(Refusal::TooLarge { bytes: 2, limit: 1 }), Redirect::GiveUp),
            (ProposeError::ShuttingDown, Redirect::GiveUp),
        ];
        for (error, expected) in redirects {
            assert_eq!(redirect(&error, &ids), expected, "{error:?}");
        }
    }
}
