//! Messages exchanged between the members of a group. Every field can arrive as garbage from the
//! network; the core validates before it trusts.

use serde::{Deserialize, Serialize};

use bytes::Bytes;

use crate::read::ReadMode;
use crate::types::{Entry, Index, NodeId, SnapshotMeta, Term};

/// One message from one node to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// The sender's term (for a pre-vote request: the term the sender would campaign in; for a
    /// granted pre-vote: the term of the request it answers).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// The kinds of message. Snapshots, reads, membership and leadership transfer add variants later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MessageBody {
    /// A (pre-)candidate asks for a vote.
    VoteRequest {
        /// A pre-vote: asks whether the receiver would vote, changing no state on either side.
        pre_vote: bool,
        /// The index of the candidate's last log entry.
        last_log_index: Index,
        /// The term of the candidate's last log entry.
        last_log_term: Term,
        /// Sent at the leader's request (leadership transfer): overrides leader stickiness.
        transfer: bool,
    },
    /// The answer to a `VoteRequest`.
    VoteResponse {
        /// Answers a pre-vote request.
        pre_vote: bool,
        /// Whether the vote was granted.
        granted: bool,
    },
    /// The leader replicates entries (possibly none) after `prev_log_index`.
    AppendEntries {
        /// The index of the entry just before `entries`.
        prev_log_index: Index,
        /// The term of the entry at `prev_log_index` (0 for index 0).
        prev_log_term: Term,
        /// Consecutive entries starting at `prev_log_index + 1`.
        entries: Vec<Entry>,
        /// The leader's commit index.
        commit: Index,
    },
    /// The answer to `AppendEntries`.
    AppendResponse(AppendResult),
    /// The leader asserts its leadership and tells the follower how far it may commit.
    Heartbeat {
        /// `min(leader commit, follower match)`: never more than the follower is known to hold.
        commit: Index,
        /// The leader's number for this heartbeat round (confirms reads; 0 outside rounds).
        round: u64,
    },
    /// The answer to a `Heartbeat`, echoing its round.
    HeartbeatResponse {
        /// The round answered (0 for an answer to a stale leader).
        round: u64,
    },
    /// The leader sends one chunk of a snapshot to a follower whose missing entries are compacted.
    /// Chunks go in order; the follower installs the snapshot when the `done` chunk arrives and
    /// then answers with an `AppendResponse` whose match index is the snapshot's index.
    InstallSnapshot {
        /// The snapshot the chunk belongs to.
        meta: SnapshotMeta,
        /// The byte offset of `data` within the snapshot's data.
        offset: u64,
        /// At most `snapshot_chunk_bytes_max` bytes.
        data: Bytes,
        /// Whether this chunk ends the data.
        done: bool,
        /// The crc32 of this chunk: of `meta` (index, term, data checksum, membership), `offset`
        /// and `data`, as [`MessageBody::install_snapshot`] computes it. The follower refuses a
        /// chunk that does not match (damaged on the leader's disk or in transit) before it
        /// writes anything; the whole data is checked against `meta.data_crc32` at the end.
        chunk_crc32: u32,
    },
    /// The answer to an `InstallSnapshot` chunk that did not finish the transfer.
    SnapshotResponse {
        /// The index of the snapshot being received.
        index: Index,
        /// The term of the snapshot being received.
        term: Term,
        /// The offset the follower expects next: everything before it is written.
        next_offset: u64,
        /// Whether the follower refused the chunk because it did not start at `next_offset`
        /// (a lost or reordered chunk): the leader resends from there.
        gap: bool,
    },
    /// The leader asks the target of a leadership transfer to campaign at once.
    TimeoutNow,
    /// A follower asks the leader to confirm a read for it.
    ReadIndexRequest {
        /// The follower's number for the request (opaque to the leader, echoed back).
        request: u64,
        /// How the leader should confirm it.
        mode: ReadMode,
    },
    /// The leader's answer to `ReadIndexRequest`.
    ReadIndexResponse {
        /// The request answered.
        request: u64,
        /// The index the follower must apply before serving, or `None` if refused.
        index: Option<Index>,
    },
    /// A follower refuses the snapshot it was receiving because its bytes failed a checksum:
    /// it dropped what it had received of it, and the leader restarts the transfer from offset 0
    /// (reading its stored copy again, which its store checks as it reads).
    SnapshotRefused {
        /// The index of the snapshot refused.
        index: Index,
        /// The term of the snapshot refused.
        term: Term,
        /// Which check failed.
        reason: SnapshotRefusal,
    },
    /// The leader's last heartbeat before its group goes quiet (option `quiesce`): its whole
    /// log is on every follower and committed, and nothing is pending. A follower whose log
    /// ends at `commit` stops its election timer and answers with a `HeartbeatResponse` of
    /// `round`; one that cannot go quiet answers with round 0. Once every follower answered the
    /// round, the leader stops its heartbeat and check-quorum timers.
    Quiesce {
        /// The leader's commit index, which is also its last index.
        commit: Index,
        /// The leader's number for this heartbeat round, as in `Heartbeat`.
        round: u64,
    },
    /// The leader tells a follower that already holds everything it was sent how far the log
    /// is committed: an `AppendEntries` with no entries whose success is not answered (it would
    /// tell the leader nothing new). The follower checks its log at `prev_log_index` as for an
    /// append and commits up to `min(commit, prev_log_index)` if it matches; if it does not, it
    /// answers with a rejection, as for an append, so the leader repairs its log.
    CommitNotice {
        /// The index of the last entry sent to the follower.
        prev_log_index: Index,
        /// The term of the entry at `prev_log_index` (0 for index 0).
        prev_log_term: Term,
        /// The leader's commit index.
        commit: Index,
    },
}

/// Why a follower refused a snapshot it was receiving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotRefusal {
    /// The chunk at this offset did not match its `chunk_crc32`.
    ChunkChecksum {
        /// The chunk's offset.
        offset: u64,
    },
    /// Every chunk matched, but the whole data did not match the metadata's `data_crc32`.
    DataChecksum,
}

/// The outcome of an `AppendEntries` on the follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendResult {
    /// The follower's log matches the leader's up to and including `match_index` (and it is durable).
    Success {
        /// The last index known to match.
        match_index: Index,
    },
    /// The consistency check failed at `rejected_index` (the request's `prev_log_index`).
    Reject {
        /// The `prev_log_index` of the rejected request, so the leader can spot stale rejections.
        rejected_index: Index,
        /// Where the leader should look next.
        hint: ConflictHint,
    },
}

/// Lets the leader skip a whole conflicting term at a time instead of one entry per round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictHint {
    /// The term of the follower's entry at the rejected index, or `None` if the follower's log is
    /// shorter than the rejected index.
    pub term: Option<Term>,
    /// With a term: the first index at which the follower stores that term. Without: the
    /// follower's last index + 1.
    pub index: Index,
}

impl MessageBody {
    /// An `InstallSnapshot` chunk with its checksum computed.
    pub fn install_snapshot(meta: SnapshotMeta, offset: u64, data: Bytes, done: bool) -> MessageBody {
        let chunk_crc32 = snapshot_chunk_crc32(&meta, offset, &data);
        MessageBody::InstallSnapshot { meta, offset, data, done, chunk_crc32 }
    }

    /// The variant's name, for logs (`kind` fields of the `tracing` events).
    pub fn kind(&self) -> &'static str {
        match self {
            MessageBody::VoteRequest { pre_vote: true, .. } => "PreVoteRequest",
            MessageBody::VoteRequest { .. } => "VoteRequest",
            MessageBody::VoteResponse { pre_vote: true, .. } => "PreVoteResponse",
            MessageBody::VoteResponse { .. } => "VoteResponse",
            MessageBody::AppendEntries { .. } => "AppendEntries",
            MessageBody::AppendResponse(_) => "AppendResponse",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::SnapshotResponse { .. } => "SnapshotResponse",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::ReadIndexRequest { .. } => "ReadIndexRequest",
            MessageBody::ReadIndexResponse { .. } => "ReadIndexResponse",
            MessageBody::SnapshotRefused { .. } => "SnapshotRefused",
            MessageBody::Quiesce { .. } => "Quiesce",
            MessageBody::CommitNotice { .. } => "CommitNotice",
        }
    }

    /// Whether only a leader sends this kind of message.
    pub fn is_from_leader(&self) -> bool {
        matches!(
            self,
            MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. }
                | MessageBody::TimeoutNow
                | MessageBody::Quiesce { .. }
                | MessageBody::CommitNotice { .. }
        )
    }
}

/// The checksum an `InstallSnapshot` chunk carries: crc32 over the snapshot's index, term, data
/// checksum and membership, the chunk's offset and its data (integers little-endian, each set of
/// ids preceded by its length), so a chunk that lands at another offset or in another snapshot
/// fails it too.
pub fn snapshot_chunk_crc32(meta: &SnapshotMeta, offset: u64, data: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for word in [meta.index.0, meta.term.0, u64::from(meta.data_crc32)] {
        hasher.update(&word.to_le_bytes());
    }
    let membership = &meta.membership;
    let sets =
        [&membership.voters_incoming, &membership.voters_outgoing, &membership.learners, &membership.learners_next];
    for ids in sets {
        hasher.update(&(ids.len() as u64).to_le_bytes());
        for id in ids {
            hasher.update(&id.0.to_le_bytes());
        }
    }
    hasher.update(&offset.to_le_bytes());
    hasher.update(data);
    hasher.finalize()
}
