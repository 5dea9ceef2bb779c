//! Plain data types shared by every part of the engine: identifiers, log entries, hard state and
//! membership.

use std::collections::BTreeSet;
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

macro_rules! newtype_u64 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl From<u64> for $name {
            fn from(value: u64) -> Self {
                Self(value)
            }
        }
    };
}

newtype_u64!(
    /// The identity of one member of a Raft group. Zero is a valid id; ids only need to be unique.
    NodeId
);
newtype_u64!(
    /// A Raft term: a logical epoch with at most one leader. Term 0 exists only before any election.
    Term
);
newtype_u64!(
    /// A position in the replicated log. The first entry has index 1; index 0 is "before the log".
    Index
);

impl Term {
    /// The next term (saturating: a term never wraps around).
    pub fn next(self) -> Term {
        Term(self.0.saturating_add(1))
    }
}

impl Index {
    /// The end of the index space. No entry or snapshot sits here: the log keeps the index after
    /// its last entry (which `next` would saturate at `END`), so peers' messages that reach it
    /// are malformed.
    pub const END: Index = Index(u64::MAX);

    /// The next index (saturating).
    pub fn next(self) -> Index {
        Index(self.0.saturating_add(1))
    }

    /// The previous index, or 0 at 0.
    pub fn prev(self) -> Index {
        Index(self.0.saturating_sub(1))
    }
}

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum EntryPayload {
    /// An application command, opaque to the engine.
    Normal(Bytes),
    /// An empty entry that a new leader appends so that it can commit an entry of its own term.
    Noop,
    /// A new membership, in force from the moment the entry is in a node's log.
    Membership(Membership),
}

/// Bytes counted per entry on top of its payload when enforcing byte limits (index, term, tag).
pub const ENTRY_OVERHEAD_BYTES: u64 = 24;

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: Index,
    /// What the entry carries.
    pub payload: EntryPayload,
}

impl Entry {
    /// The size this entry counts for in message, batch and uncommitted-bytes limits.
    pub fn size_bytes(&self) -> u64 {
        let payload = match &self.payload {
            EntryPayload::Normal(data) => data.len() as u64,
            EntryPayload::Noop => 0,
            EntryPayload::Membership(membership) => 8 * membership.members().len() as u64,
        };
        payload + ENTRY_OVERHEAD_BYTES
    }
}

/// The state that must be durable before a node sends anything that depends on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// The candidate this node voted for in `term`, if any.
    pub vote: Option<NodeId>,
    /// The highest index known to be committed. Persisting it is an optimisation, not a safety need.
    pub commit: Index,
}

/// Who votes in the group, and who only listens. In a joint configuration (during a change of
/// voters) decisions need a majority of `voters` *and* a majority of `voters_outgoing`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The voting members (of the new configuration, while joint). Ordered, so iteration is
    /// deterministic.
    pub voters: BTreeSet<NodeId>,
    /// The voters of the old configuration while the group is joint; empty otherwise.
    pub voters_outgoing: BTreeSet<NodeId>,
    /// Members that receive the log but do not vote (they may be promoted).
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    /// A membership of the given voters.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Membership { voters: voters.into_iter().collect(), ..Membership::default() }
    }

    /// Whether `id` votes (in either half of a joint configuration).
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// Whether `id` is a voter or a learner.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Whether a change of voters is in progress.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Every voter, of both halves while joint.
    pub fn all_voters(&self) -> BTreeSet<NodeId> {
        self.voters.union(&self.voters_outgoing).copied().collect()
    }

    /// Every member: voters of both halves and learners.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut members = self.all_voters();
        members.extend(self.learners.iter().copied());
        members
    }

    /// The number of votes that form a majority of `voters` (ignoring a joint configuration).
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Whether this is a membership a group can run with: some voter, and no learner that also
    /// votes.
    pub fn is_valid(&self) -> bool {
        !self.voters.is_empty() && self.learners.iter().all(|id| !self.is_voter(*id))
    }
}

/// What a snapshot covers: the state machine after applying every entry up to `index`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last index the snapshot includes (0: no snapshot).
    pub index: Index,
    /// The term of the entry at `index`.
    pub term: Term,
    /// The membership in force at `index`.
    pub membership: Membership,
    /// The crc32 (IEEE, as [`snapshot_crc32`] computes it) of the snapshot's whole data. It is
    /// computed once, from the state machine's bytes when the snapshot is taken, and travels
    /// with the metadata: every store and every follower checks the data against it before it
    /// restores or installs the snapshot (0 for an empty snapshot, and for no snapshot).
    pub data_crc32: u32,
}

impl SnapshotMeta {
    /// Whether this describes an actual snapshot (index 0 means none).
    pub fn exists(&self) -> bool {
        self.index > Index(0)
    }
}

/// The checksum of a snapshot's data that [`SnapshotMeta::data_crc32`] carries: crc32 (IEEE).
/// A store or an application that streams the data can compute the same with
/// `crc32fast::Hasher`.
pub fn snapshot_crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}
