//! Typed outcomes of the node's API: why a proposal or a read failed, why a node stopped, why it
//! did not start.

use std::collections::BTreeMap;
use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;

use raft_core::{Index, MembershipError, NodeId, StorageError, Term, TransferError};
use raft_storage::DiskError;
use thiserror::Error;

use super::config::ConfigError;

/// A shareable error from the store or the state machine: the original error, kept whole so the
/// caller can downcast it (to `raft_storage::DiskError`, say).
pub type SharedError = Arc<dyn Error + Send + Sync + 'static>;

/// Which storage operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageOperation {
    /// Persisting an output (snapshot chunks, an install, hard state and entries).
    Write,
    /// Reading the log or the snapshot (the core's reads, or snapshot data for restoring).
    Read,
    /// Saving a snapshot of the local state machine.
    SaveSnapshot,
    /// Compacting the log below a snapshot.
    Compact,
}

/// A storage failure that stopped the node (fail-stop: the node cannot know what reached the
/// disk, so it acknowledges nothing more).
#[derive(Clone, Debug, Error)]
#[error("storage {operation:?} failed: {source}")]
pub struct StorageFailure {
    /// What the node was doing.
    pub operation: StorageOperation,
    /// The store's error.
    #[source]
    pub source: SharedError,
}

impl StorageFailure {
    /// A failure of `operation` with the store's `error`.
    pub(crate) fn new(operation: StorageOperation, error: impl Error + Send + Sync + 'static) -> Self {
        StorageFailure { operation, source: Arc::new(error) }
    }

    /// A failure of one of the core's reads.
    pub(crate) fn read(error: StorageError) -> Self {
        StorageFailure::new(StorageOperation::Read, error)
    }

    /// The I/O error kind, when the store's error is an I/O error of `raft_storage::DiskStorage`
    /// or a `raft_core::StorageError::Io`.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        if let Some(kind) = self.source.downcast_ref::<DiskError>().and_then(DiskError::io_kind) {
            return Some(kind);
        }
        match self.source.downcast_ref::<StorageError>() {
            Some(StorageError::Io { kind, .. }) => Some(*kind),
            _ => None,
        }
    }
}

/// Why a node stopped.
#[derive(Clone, Debug, Error)]
#[non_exhaustive]
pub enum StopReason {
    /// [`NodeHandle::shutdown`](crate::NodeHandle::shutdown) was called, or every handle was
    /// dropped.
    #[error("the node was shut down")]
    Shutdown,
    /// Storage failed (fail-stop).
    #[error("{0}")]
    StorageFailed(StorageFailure),
    /// The state machine refused to restore from a snapshot (its `RestoreError`; a failure of
    /// the store while it read is [`StopReason::StorageFailed`] instead).
    #[error("the state machine could not restore a snapshot: {0}")]
    RestoreFailed(SharedError),
    /// The state machine failed to write a snapshot (the [`std::io::Error`] that
    /// [`StateMachine::snapshot`](crate::StateMachine::snapshot) returned; a failure of the store
    /// it wrote into is [`StopReason::StorageFailed`] instead). Nothing of that snapshot was
    /// saved.
    #[error("the state machine could not write a snapshot: {0}")]
    SnapshotFailed(SharedError),
    /// The state machine panicked while applying, snapshotting or restoring.
    #[error("the state machine panicked")]
    StateMachinePanicked,
    /// The group's core panicked while a worker stepped it (a bug in this crate or in
    /// raft-core); the host's other groups go on.
    #[error("the node's core panicked")]
    CorePanicked,
}

/// The entry of the leader a `NotLeader` refusal names: its id, and where it can be reached if
/// the address book ([`NodeConfig::addresses`](crate::NodeConfig::addresses),
/// [`NodeHandle::add_address`](crate::NodeHandle::add_address)) has it. `None` when the refusal is
/// not `NotLeader` or names no leader.
fn leader_hint(leader: Option<NodeId>, leader_address: Option<SocketAddr>) -> Option<(NodeId, Option<SocketAddr>)> {
    leader.map(|leader| (leader, leader_address))
}

/// `" (leader at <address>)"` when the address is known, for the messages of refusals.
fn leader_at(leader_address: &Option<SocketAddr>) -> String {
    leader_address.map_or_else(String::new, |address| format!(" (leader at {address})"))
}

/// Why a proposal failed.
#[derive(Clone, Debug, Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// The core refused the proposal (not the leader, a transfer in progress, the leader's term
    /// not yet durable, too large, too many uncommitted bytes): nothing was appended. A
    /// `TermNotDurable` refusal only reaches the caller when more proposals than one input batch
    /// (`input_batch_items_max`) arrive before the new leader's first write; the others wait for
    /// it and are proposed again.
    #[error("{reason}{}", leader_at(.leader_address))]
    Refused {
        /// The core's reason.
        reason: raft_core::ProposeError,
        /// Where the leader a [`NotLeader`](raft_core::ProposeError::NotLeader) refusal names can
        /// be reached, from the address book; `None` for every other refusal.
        leader_address: Option<SocketAddr>,
    },
    /// [`NodeHandle::try_propose`](crate::NodeHandle::try_propose) found this driver's proposal
    /// queue (`proposals_pending_max`) or input queue full. Nothing was appended; retry later.
    #[error("too many proposals pending")]
    TooBusy,
    /// The proposal was appended at `index` in `term`, but the entry committed at `index` has
    /// another term: the proposal was definitely not committed (its leader lost leadership and a
    /// later leader replaced it). Safe to retry.
    #[error("leadership lost: the proposal at index {index} of term {term} was replaced")]
    LeadershipLost {
        /// Where the proposal was appended.
        index: Index,
        /// The term it was appended in.
        term: Term,
    },
    /// The proposal was appended at `index`, but this node then installed a snapshot from the
    /// leader that covers `index` without telling which entry is there: the proposal may or may
    /// not have been committed.
    #[error("outcome unknown: a snapshot covers index {index}")]
    OutcomeUnknown {
        /// Where the proposal was appended.
        index: Index,
    },
    /// The node is shutting down or shut down. A proposal that was already appended may still be
    /// committed (by the other members): its outcome is unknown.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// Storage failed and the node stopped. A proposal that was already appended may still be
    /// committed by the other members: its outcome is unknown.
    #[error("{0}")]
    StorageFailed(StorageFailure),
    /// The node stopped for another reason (see [`StopReason`]); the outcome is unknown.
    #[error("the node stopped: {0}")]
    Stopped(StopReason),
}

impl ProposeError {
    /// Who leads and where, when the core refused because this node does not lead and knows who
    /// does: the leader's id, and its address if the address book has it. Send the proposal
    /// there. `None` for every other error (including `NotLeader` with no leader known: an
    /// election is under way).
    pub fn leader_hint(&self) -> Option<(NodeId, Option<SocketAddr>)> {
        match self {
            ProposeError::Refused { reason: raft_core::ProposeError::NotLeader { leader }, leader_address } => {
                leader_hint(*leader, *leader_address)
            }
            _ => None,
        }
    }

    /// The core's refusal, with the leader's address looked up in `addresses` when it names one.
    pub(crate) fn refused(reason: raft_core::ProposeError, addresses: &BTreeMap<NodeId, SocketAddr>) -> Self {
        let leader_address = match reason {
            raft_core::ProposeError::NotLeader { leader: Some(leader) } => addresses.get(&leader).copied(),
            _ => None,
        };
        ProposeError::Refused { reason, leader_address }
    }
}

impl From<StopReason> for ProposeError {
    fn from(reason: StopReason) -> Self {
        match reason {
            StopReason::Shutdown => ProposeError::ShuttingDown,
            StopReason::StorageFailed(failure) => ProposeError::StorageFailed(failure),
            other => ProposeError::Stopped(other),
        }
    }
}

/// Why a [`NodeHandle::read`](crate::NodeHandle::read) failed. The query did not run.
#[derive(Clone, Debug, Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The core refused or abandoned the read: no leader known, lease reads off, too many reads
    /// pending, leadership changed before the read was confirmed, or the leader did not answer a
    /// forwarded read in time. See [`ReadError::is_retryable`].
    #[error(transparent)]
    Refused(#[from] raft_core::ReadError),
    /// The node is shutting down or shut down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// Storage failed and the node stopped.
    #[error("{0}")]
    StorageFailed(StorageFailure),
    /// The node stopped for another reason (see [`StopReason`]).
    #[error("the node stopped: {0}")]
    Stopped(StopReason),
}

impl ReadError {
    /// Whether the same read may succeed if asked again, here or on another member: every
    /// refusal of the core but [`LeaseNotEnabled`](raft_core::ReadError::LeaseNotEnabled) (a
    /// setting of the node, which a retry does not change). `false` once the node stopped.
    pub fn is_retryable(&self) -> bool {
        match self {
            ReadError::Refused(raft_core::ReadError::LeaseNotEnabled) => false,
            ReadError::Refused(_) => true,
            ReadError::ShuttingDown | ReadError::StorageFailed(_) | ReadError::Stopped(_) => false,
        }
    }
}

impl From<StopReason> for ReadError {
    fn from(reason: StopReason) -> Self {
        match reason {
            StopReason::Shutdown => ReadError::ShuttingDown,
            StopReason::StorageFailed(failure) => ReadError::StorageFailed(failure),
            other => ReadError::Stopped(other),
        }
    }
}

/// Why a [`NodeHandle::change_membership`](crate::NodeHandle::change_membership) failed.
#[derive(Clone, Debug, Error)]
#[non_exhaustive]
pub enum MembershipChangeError {
    /// The core refused the change (not the leader, a change or a transfer in progress, no entry
    /// of the leader's term committed yet, no effect, no voter left): nothing was appended. The
    /// core's [`Storage`](raft_core::MembershipError::Storage) refusal is never here: a storage
    /// failure stops the node and is [`MembershipChangeError::StorageFailed`].
    #[error("{reason}{}", leader_at(.leader_address))]
    Refused {
        /// The core's reason.
        reason: MembershipError,
        /// Where the leader a [`NotLeader`](raft_core::MembershipError::NotLeader) refusal names
        /// can be reached, from the address book; `None` for every other refusal.
        leader_address: Option<SocketAddr>,
    },
    /// This node lost leadership (or installed a snapshot over the change) before the change
    /// completed: it may or may not take effect. Check the membership, then retry.
    #[error("leadership lost before the change completed: outcome unknown")]
    LeadershipLost,
    /// The node is shutting down; the outcome of an appended change is unknown.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// Storage failed (reading the log, or the node stopped on a storage failure).
    #[error("{0}")]
    StorageFailed(StorageFailure),
    /// The node stopped for another reason (see [`StopReason`]).
    #[error("the node stopped: {0}")]
    Stopped(StopReason),
}

impl From<StopReason> for MembershipChangeError {
    fn from(reason: StopReason) -> Self {
        match reason {
            StopReason::Shutdown => MembershipChangeError::ShuttingDown,
            StopReason::StorageFailed(failure) => MembershipChangeError::StorageFailed(failure),
            other => MembershipChangeError::Stopped(other),
        }
    }
}

impl MembershipChangeError {
    /// Who leads and where, when the core refused because this node does not lead and knows who
    /// does: the leader's id, and its address if the address book has it. Ask it instead. `None`
    /// for every other error.
    pub fn leader_hint(&self) -> Option<(NodeId, Option<SocketAddr>)> {
        match self {
            MembershipChangeError::Refused { reason: MembershipError::NotLeader { leader }, leader_address } => {
                leader_hint(*leader, *leader_address)
            }
            _ => None,
        }
    }

    /// The core's refusal, with the leader's address looked up in `addresses` when it names
    /// one; a storage failure is [`MembershipChangeError::StorageFailed`].
    pub(crate) fn refused(reason: MembershipError, addresses: &BTreeMap<NodeId, SocketAddr>) -> Self {
        let leader_address = match reason {
            MembershipError::NotLeader { leader: Some(leader) } => addresses.get(&leader).copied(),
            MembershipError::Storage(error) => {
                return MembershipChangeError::StorageFailed(StorageFailure::read(error));
            }
            _ => None,
        };
        MembershipChangeError::Refused { reason, leader_address }
    }
}

/// Why a [`NodeHandle::transfer_leadership`](crate::NodeHandle::transfer_leadership) failed.
#[derive(Clone, Debug, Error)]
#[non_exhaustive]
pub enum TransferLeadershipError {
    /// The core refused the transfer (not the leader, the target does not vote or already leads,
    /// another transfer in progress).
    #[error("{reason}{}", leader_at(.leader_address))]
    Refused {
        /// The core's reason.
        reason: TransferError,
        /// Where the leader a [`NotLeader`](raft_core::TransferError::NotLeader) refusal names
        /// can be reached, from the address book; `None` for every other refusal.
        leader_address: Option<SocketAddr>,
    },
    /// This node did not learn that the target leads within
    /// [`TRANSFER_ELECTION_TIMEOUTS_MAX`](crate::TRANSFER_ELECTION_TIMEOUTS_MAX) election
    /// timeouts (the target may still win; check the status).
    #[error("the target did not take over in time")]
    TimedOut,
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// Storage failed and the node stopped.
    #[error("{0}")]
    StorageFailed(StorageFailure),
    /// The node stopped for another reason (see [`StopReason`]).
    #[error("the node stopped: {0}")]
    Stopped(StopReason),
}

impl From<StopReason> for TransferLeadershipError {
    fn from(reason: StopReason) -> Self {
        match reason {
            StopReason::Shutdown => TransferLeadershipError::ShuttingDown,
            StopReason::StorageFailed(failure) => TransferLeadershipError::StorageFailed(failure),
            other => TransferLeadershipError::Stopped(other),
        }
    }
}

impl TransferLeadershipError {
    /// Who leads and where, when the core refused because this node does not lead and knows who
    /// does: the leader's id, and its address if the address book has it. Ask it instead. `None`
    /// for every other error (a target that already leads is
    /// [`AlreadyLeader`](raft_core::TransferError::AlreadyLeader), whose goal holds).
    pub fn leader_hint(&self) -> Option<(NodeId, Option<SocketAddr>)> {
        match self {
            TransferLeadershipError::Refused { reason: TransferError::NotLeader { leader }, leader_address } => {
                leader_hint(*leader, *leader_address)
            }
            _ => None,
        }
    }

    /// The core's refusal, with the leader's address looked up in `addresses` when it names one.
    pub(crate) fn refused(reason: TransferError, addresses: &BTreeMap<NodeId, SocketAddr>) -> Self {
        let leader_address = match reason {
            TransferError::NotLeader { leader: Some(leader) } => addresses.get(&leader).copied(),
            _ => None,
        };
        TransferLeadershipError::Refused { reason, leader_address }
    }
}

/// Why [`start`](crate::start) did not start a node.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NodeStartError {
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// Not called from within a tokio runtime.
    #[error("a tokio runtime is required")]
    NoRuntime,
    /// The transport sends for another node than `config.id`.
    #[error("the transport belongs to node {transport}, the configuration to node {config}")]
    TransportIdMismatch {
        /// The configuration's id.
        config: NodeId,
        /// The transport's id.
        transport: NodeId,
    },
    /// The core could not read its initial state from storage.
    #[error("reading the initial state failed: {0}")]
    Storage(StorageError),
    /// A thread could not be spawned: the operating system's error, whole.
    #[error("spawning a thread failed: {0}")]
    Spawn(#[source] std::io::Error),
}

impl NodeStartError {
    /// The error of [`start`](crate::start) for a failure of its one-group host.
    pub(crate) fn from_host(error: super::host::HostError) -> Self {
        use super::host::HostError;
        match error {
            HostError::Start { source, .. } => source,
            HostError::Spawn(error) => NodeStartError::Spawn(error),
            // A fresh host with valid settings, one group: none of these can happen.
            error @ (HostError::Config(_) | HostError::GroupExists(_) | HostError::ShuttingDown) => {
                NodeStartError::Spawn(std::io::Error::other(error.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> BTreeMap<NodeId, SocketAddr> {
        BTreeMap::from([(NodeId(2), SocketAddr::from(([127, 0, 0, 1], 7002)))])
    }

    #[test]
    fn every_core_refusal_of_a_proposal_is_kept_whole_and_none_is_the_drivers_too_busy() {
        use raft_core::ProposeError as Core;
        let refusals = [
            Core::NotLeader { leader: None },
            Core::NotLeader { leader: Some(NodeId(3)) },
            Core::TermNotDurable,
            Core::TransferInProgress,
            Core::TooLarge { bytes: 10, limit: 5 },
            Core::TooManyUncommittedBytes { uncommitted: 10, limit: 5 },
        ];
        for reason in refusals {
            let error = ProposeError::refused(reason, &book());
            assert!(
                matches!(error, ProposeError::Refused { reason: kept, leader_address: None } if kept == reason),
                "{reason:?} became {error:?}"
            );
            assert_eq!(error.to_string(), reason.to_string());
        }
    }

    #[test]
    fn a_refusal_naming_the_leader_carries_its_address_from_the_book() {
        use raft_core::ProposeError as Core;
        let address = book()[&NodeId(2)];
        let error = ProposeError::refused(Core::NotLeader { leader: Some(NodeId(2)) }, &book());
        assert_eq!(error.leader_hint(), Some((NodeId(2), Some(address))));
        assert!(error.to_string().ends_with("(leader at 127.0.0.1:7002)"), "{error}");
        let unknown = ProposeError::refused(Core::NotLeader { leader: Some(NodeId(3)) }, &book());
        assert_eq!(unknown.leader_hint(), Some((NodeId(3), None)));
        assert_eq!(ProposeError::refused(Core::NotLeader { leader: None }, &book()).leader_hint(), None);
        assert_eq!(ProposeError::TooBusy.leader_hint(), None);

        let change = MembershipChangeError::refused(MembershipError::NotLeader { leader: Some(NodeId(2)) }, &book());
        assert_eq!(change.leader_hint(), Some((NodeId(2), Some(address))));
        let transfer = TransferLeadershipError::refused(TransferError::NotLeader { leader: Some(NodeId(2)) }, &book());
        assert_eq!(transfer.leader_hint(), Some((NodeId(2), Some(address))));
        // The goal of a transfer to a node that leads holds: nothing to redirect to.
        let already = TransferLeadershipError::refused(TransferError::AlreadyLeader(NodeId(2)), &book());
        assert_eq!(already.leader_hint(), None);
    }

    #[test]
    fn a_storage_failure_inside_a_membership_refusal_is_a_storage_failure() {
        let failed =
            MembershipChangeError::refused(MembershipError::Storage(StorageError::Unavailable(Index(4))), &book());
        assert!(
            matches!(&failed, MembershipChangeError::StorageFailed(failure) if failure.operation == StorageOperation::Read),
            "{failed:?}"
        );
        let refused = MembershipChangeError::refused(MembershipError::ChangeInProgress, &book());
        assert!(matches!(refused, MembershipChangeError::Refused { reason: MembershipError::ChangeInProgress, .. }));
    }

    #[test]
    fn only_refused_reads_other_than_lease_reads_off_are_worth_retrying() {
        use raft_core::ReadError as Core;
        for reason in [Core::NoLeader, Core::TooManyPending, Core::LeaderChanged, Core::TimedOut] {
            assert!(ReadError::from(reason).is_retryable(), "{reason:?}");
        }
        assert!(!ReadError::from(Core::LeaseNotEnabled).is_retryable());
        assert!(!ReadError::ShuttingDown.is_retryable());
        assert!(!ReadError::from(StopReason::CorePanicked).is_retryable());
    }
}
