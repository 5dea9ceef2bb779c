//! Typed reasons for refusing an input. None of them is a bug in this crate; a bug panics.

use thiserror::Error;

use crate::storage::StorageError;
use crate::types::{Index, NodeId, Term};

/// Why [`crate::Raft::step`] did not take a message, in three kinds: ignored as Raft intends
/// (nobody did anything wrong), malformed (no correct peer of this group sends it), and fatal
/// (the node's own storage failed). The node's state is unchanged unless noted (a snapshot chunk
/// refused for its checksum drops the transfer being received).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StepError {
    /// Ignored as Raft intends: a stale term, a vote request while a leader is live, a late or
    /// unexpected answer. Normal in any cluster; at most worth a debug log.
    #[error("ignored: {0}")]
    Ignored(#[from] Ignored),
    /// The message could not have come from a correct peer of this group (or was delivered to
    /// the wrong node): worth a warning, since it points at a bug or a misconfiguration.
    #[error("malformed message: {0}")]
    Malformed(#[from] Malformed),
    /// Storage failed while handling the message: the driver must stop the node.
    #[error("storage failed: {0}")]
    Storage(#[from] StorageError),
}

impl StepError {
    /// Whether the node must stop (its storage failed).
    pub fn is_fatal(&self) -> bool {
        matches!(self, StepError::Storage(_))
    }
}

/// Why a correct message was ignored, as Raft intends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Ignored {
    /// The message carries a term older than ours (a stale leader or candidate is answered
    /// with our term).
    #[error("stale term {message_term} < {current_term}")]
    StaleTerm {
        /// The term in the message.
        message_term: Term,
        /// Our term.
        current_term: Term,
    },
    /// A (pre-)vote request arrived while this node still hears from a live leader.
    #[error("vote request ignored: leader {leader:?} is live")]
    LeaderSticky {
        /// The leader we still follow.
        leader: Option<NodeId>,
    },
    /// A response from a node we are not tracking (not a voter, or we are not leader).
    #[error("message from untracked peer {0}")]
    UnknownPeer(NodeId),
    /// The message does not fit this node's role or election (a late vote response, say).
    #[error("message not expected in the current role")]
    Unexpected,
}

/// What is wrong with a malformed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Malformed {
    /// The message is addressed to another node (a transport delivered it to the wrong node).
    #[error("message addressed to node {to}, not to this node")]
    NotAddressedToUs {
        /// The addressee named in the message.
        to: NodeId,
    },
    /// The message claims to come from this node itself.
    #[error("message claims to come from this node")]
    FromSelf,
    /// Entries are not consecutive from `prev_log_index + 1`.
    #[error("entry index {found} where {expected} was expected")]
    EntriesNotConsecutive {
        /// The index the entry should have had.
        expected: Index,
        /// The index it had.
        found: Index,
    },
    /// An entry's term is above the sender's term, below the previous entry's, or below
    /// `prev_log_term`.
    #[error("entry at {index} has term {term} out of order")]
    EntryTermOutOfOrder {
        /// The entry's index.
        index: Index,
        /// The entry's term.
        term: Term,
    },
    /// `prev_log_term` is above the sender's own term.
    #[error("prev_log_term {0} above the message term")]
    PrevTermAboveMessage(Term),
    /// An acknowledgement or rejection for an index this leader never had.
    #[error("answer about index {0} beyond the leader's log")]
    AckBeyondLog(Index),
    /// Entries that contradict what this node already knows to be committed.
    #[error("entries contradict the committed entry at {0}")]
    ConflictsWithCommitted(Index),
    /// Term 0 exists only before any election; no message but a fresh node's pre-vote refusal
    /// carries it.
    #[error("message in term 0")]
    TermZero,
    /// A snapshot whose entry at its index contradicts our committed entry there (openraft#1892).
    #[error("snapshot contradicts the committed entry at {0}")]
    SnapshotConflictsWithCommitted(Index),
    /// A snapshot chunk larger than `snapshot_chunk_bytes_max`.
    #[error("snapshot chunk of {bytes} bytes exceeds the limit of {limit}")]
    SnapshotChunkTooLarge {
        /// The chunk's size.
        bytes: u64,
        /// `snapshot_chunk_bytes_max`.
        limit: u64,
    },
    /// Snapshot metadata that no leader could send: index 0 or [`Index::END`], term 0, a term
    /// above the message's, no voters, or an offset that overflows.
    #[error("invalid snapshot metadata at index {0}")]
    SnapshotInvalid(Index),
    /// A membership (in an entry at `index`, or in a snapshot ending there) that no group can
    /// run with.
    #[error("invalid membership at index {index}: {reason}")]
    InvalidMembership {
        /// The index of the entry or snapshot that carries it.
        index: Index,
        /// What is wrong with it.
        reason: crate::types::InvalidMembership,
    },
    /// An entry at [`Index::END`], the end of the index space: the log keeps the index after its
    /// last entry, so no entry may sit there.
    #[error("entry at index {0}, the end of the index space")]
    IndexAtEnd(Index),
    /// A snapshot chunk whose bytes do not match its `chunk_crc32`. The follower dropped the
    /// transfer it was receiving and asked the leader to start it over.
    #[error("snapshot {index} chunk at offset {offset} fails its checksum")]
    SnapshotChunkChecksum {
        /// The snapshot's index.
        index: Index,
        /// The chunk's offset.
        offset: u64,
    },
    /// A snapshot whose assembled data does not match its metadata's `data_crc32`. The follower
    /// dropped it (nothing was installed) and asked the leader to start over.
    #[error("snapshot {0} fails its data checksum")]
    SnapshotChecksum(Index),
    /// Another node claims leadership of our term while we lead it.
    #[error("second leader {0} in our term")]
    SecondLeader(NodeId),
}

/// Why [`crate::Raft::snapshot_meta`] could not describe a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Only applied state can be snapshotted.
    #[error("index {index} is not applied yet (applied: {applied})")]
    NotApplied {
        /// The index asked for.
        index: Index,
        /// The last applied index.
        applied: Index,
    },
    /// The log no longer holds the index (a newer snapshot covers it).
    #[error("index {0} is already compacted")]
    Compacted(Index),
    /// Storage failed.
    #[error("storage failed: {0}")]
    Storage(StorageError),
}

/// Why [`crate::Raft::propose`] refused a proposal. Nothing was appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// Only the leader accepts proposals; `leader` is the one this node knows, if any.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// A leader that won alone (a single voter) accepts proposals only once its term is durable,
    /// so a crash cannot reuse an (index, term) it already handed out. Retry after the next
    /// persistence report.
    #[error("the leader's term is not yet durable")]
    TermNotDurable,
    /// A leadership transfer is in progress: the leader takes no proposals until it ends.
    #[error("a leadership transfer is in progress")]
    TransferInProgress,
    /// The proposal (with entry overhead) exceeds `message_bytes_max`.
    #[error("proposal of {bytes} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// The proposal's size with overhead.
        bytes: u64,
        /// `message_bytes_max`.
        limit: u64,
    },
    /// Accepting it would exceed `uncommitted_bytes_max`; retry after earlier proposals commit.
    #[error("{uncommitted} uncommitted bytes; limit {limit}")]
    TooManyUncommittedBytes {
        /// Bytes proposed and not yet committed.
        uncommitted: u64,
        /// `uncommitted_bytes_max`.
        limit: u64,
    },
}
