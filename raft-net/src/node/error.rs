//! Typed outcomes of the node's API: why a proposal or a read failed, why a node stopped, why it
//! did not start.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;

use raft_core::{
    Index, MembershipError, NodeId, ReadError as CoreReadError, StorageError, Term, TransferError as CoreTransferError,
};
use raft_storage::DiskError;
use thiserror::Error;

use super::config::ConfigError;

/// A shareable error from the store or the state machine: the original error, kept whole so the
/// caller can downcast it (to `raft_storage::DiskError`, say).
pub type SharedError = Arc<dyn Error + Send + Sync + 'static>;

/// Which storage operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
            Some(StorageError::Io(kind)) => Some(*kind),
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
    /// The state machine refused to restore from a snapshot.
    #[error("the state machine could not restore a snapshot: {0}")]
    RestoreFailed(SharedError),
    /// The state machine panicked while applying, snapshotting or restoring.
    #[error("the state machine panicked")]
    StateMachinePanicked,
    /// The core thread panicked (a bug in this crate or in raft-core).
    #[error("the node's core thread panicked")]
    CorePanicked,
}

/// Why a proposal failed.
#[derive(Clone, Debug, Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// This node is not the leader; `leader` is the one it knows of (if any) and `address` that
    /// leader's entry in the address book (if any). Nothing was appended.
    #[error("not the leader (leader: {leader:?} at {address:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
        /// Where that leader can be reached, from [`NodeConfig::addresses`](crate::NodeConfig::addresses).
        address: Option<SocketAddr>,
    },
    /// `try_propose` found the proposal queue full (`proposals_pending_max`). Nothing was
    /// appended; retry later.
    #[error("too many proposals pending")]
    TooBusy,
    /// The command with its entry overhead exceeds the core's `message_bytes_max`. Nothing was
    /// appended.
    #[error("proposal of {bytes} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// The proposal's size with overhead.
        bytes: u64,
        /// `message_bytes_max`.
        limit: u64,
    },
    /// The leader holds `uncommitted_bytes_max` of proposals not yet committed. Nothing was
    /// appended; retry after earlier proposals commit.
    #[error("{uncommitted} uncommitted bytes; limit {limit}")]
    TooManyUncommittedBytes {
        /// Bytes proposed and not yet committed.
        uncommitted: u64,
        /// `uncommitted_bytes_max`.
        limit: u64,
    },
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

impl From<StopReason> for ProposeError {
    fn from(reason: StopReason) -> Self {
        match reason {
            StopReason::Shutdown => ProposeError::ShuttingDown,
            StopReason::StorageFailed(failure) => ProposeError::StorageFailed(failure),
            other => ProposeError::Stopped(other),
        }
    }
}

/// Why a [`NodeHandle::read`](crate::NodeHandle::read) failed. The query did not run; every
/// variant but the stops is worth retrying (on this node or another).
#[derive(Clone, Debug, Error)]
#[non_exhaustive]
pub enum ReadError {
    /// No leader is known to confirm the read (an election is under way, or this node is cut
    /// off). Retry later or on another member.
    #[error("no known leader")]
    NoLeader,
    /// A [`ReadConsistency::Lease`](crate::ReadConsistency::Lease) read, but the core option
    /// `lease_reads` is off.
    #[error("lease reads are not enabled")]
    LeaseNotEnabled,
    /// The core holds its `reads_pending_max` reads already (on the leader, that counts the reads
    /// followers forwarded to it). Retry later.
    #[error("too many reads pending")]
    TooBusy,
    /// Leadership changed before the read was confirmed (the leader stepped down, or this
    /// follower's leader changed). Retry.
    #[error("leadership changed before the read was confirmed")]
    LeadershipChanged,
    /// The leader did not answer this follower's forwarded read within an election timeout (a
    /// lost request or answer). Retry.
    #[error("the leader did not answer in time")]
    TimedOut,
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

impl From<StopReason> for ReadError {
    fn from(reason: StopReason) -> Self {
        match reason {
            StopReason::Shutdown => ReadError::ShuttingDown,
            StopReason::StorageFailed(failure) => ReadError::StorageFailed(failure),
            other => ReadError::Stopped(other),
        }
    }
}

impl From<CoreReadError> for ReadError {
    fn from(error: CoreReadError) -> Self {
        match error {
            CoreReadError::NoLeader => ReadError::NoLeader,
            CoreReadError::LeaseNotEnabled => ReadError::LeaseNotEnabled,
            CoreReadError::TooManyPending => ReadError::TooBusy,
            CoreReadError::LeaderChanged => ReadError::LeadershipChanged,
            CoreReadError::TimedOut => ReadError::TimedOut,
        }
    }
}

/// Why a [`NodeHandle::change_membership`](crate::NodeHandle::change_membership) failed.
#[derive(Clone, Debug, Error)]
#[non_exhaustive]
pub enum MembershipChangeError {
    /// This node is not the leader; `leader` is the one it knows of and `address` its entry in
    /// the address book. Nothing was appended.
    #[error("not the leader (leader: {leader:?} at {address:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
        /// Where that leader can be reached, if known.
        address: Option<SocketAddr>,
    },
    /// Another change (or the leaving of a joint configuration) is not committed yet. Nothing
    /// was appended; retry once it is.
    #[error("a membership change is already in progress")]
    ChangeInProgress,
    /// A leadership transfer is in progress. Nothing was appended; retry after it ends.
    #[error("a leadership transfer is in progress")]
    TransferInProgress,
    /// The leader has not committed an entry of its term yet. Nothing was appended; retry soon.
    #[error("no entry of the leader's term has committed yet")]
    TermNotCommitted,
    /// The change leaves this node as it is (adding a voter twice, removing a stranger).
    #[error("the change leaves node {0} as it is")]
    NoEffect(NodeId),
    /// The result would have no voter.
    #[error("the change would leave no voter")]
    NoVoters,
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
    /// The client's view of the core's refusal; `address` finds a leader's address.
    pub(crate) fn refused(error: MembershipError, address: impl Fn(NodeId) -> Option<SocketAddr>) -> Self {
        match error {
            MembershipError::NotLeader { leader } => {
                MembershipChangeError::NotLeader { leader, address: leader.and_then(address) }
            }
            MembershipError::TermNotCommitted => MembershipChangeError::TermNotCommitted,
            MembershipError::ChangeInProgress => MembershipChangeError::ChangeInProgress,
            MembershipError::TransferInProgress => MembershipChangeError::TransferInProgress,
            MembershipError::NoEffect(id) => MembershipChangeError::NoEffect(id),
            MembershipError::NoVoters => MembershipChangeError::NoVoters,
            MembershipError::Storage(error) => MembershipChangeError::StorageFailed(StorageFailure::read(error)),
        }
    }
}

/// Why a [`NodeHandle::transfer_leadership`](crate::NodeHandle::transfer_leadership) failed.
#[derive(Clone, Debug, Error)]
#[non_exhaustive]
pub enum TransferLeadershipError {
    /// This node is not the leader; `leader` is the one it knows of and `address` its entry in
    /// the address book.
    #[error("not the leader (leader: {leader:?} at {address:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
        /// Where that leader can be reached, if known.
        address: Option<SocketAddr>,
    },
    /// The target does not vote.
    #[error("node {0} is not a voter")]
    NotAVoter(NodeId),
    /// The target already leads.
    #[error("node {0} already leads")]
    AlreadyLeader(NodeId),
    /// A transfer to this node is in progress.
    #[error("a transfer to node {0} is in progress")]
    InProgress(NodeId),
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
    /// The client's view of the core's refusal; `address` finds a leader's address.
    pub(crate) fn refused(error: CoreTransferError, address: impl Fn(NodeId) -> Option<SocketAddr>) -> Self {
        match error {
            CoreTransferError::NotLeader { leader } => {
                TransferLeadershipError::NotLeader { leader, address: leader.and_then(address) }
            }
            CoreTransferError::NotAVoter(id) => TransferLeadershipError::NotAVoter(id),
            CoreTransferError::AlreadyLeader(id) => TransferLeadershipError::AlreadyLeader(id),
            CoreTransferError::InProgress(id) => TransferLeadershipError::InProgress(id),
        }
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
    /// A thread could not be spawned.
    #[error("spawning a thread failed: {0:?}")]
    Spawn(std::io::ErrorKind),
}
