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
    /// The identity of one Raft group among the many a process may host (multi-Raft). The core
    /// itself runs one group and never sees this id: drivers, transports and shared stores use it
    /// to tell the groups of one node apart. A process that runs a single group uses
    /// [`GroupId::DEFAULT`].
    GroupId
);
newtype_u64!(
    /// A Raft term: a logical epoch with at most one leader. Term 0 exists only before any election.
    Term
);
newtype_u64!(
    /// A position in the replicated log. The first entry has index 1; index 0 is "before the log".
    Index
);

impl GroupId {
    /// The group of a process that hosts only one.
    pub const DEFAULT: GroupId = GroupId(0);
}

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

/// Who votes in the group, and who only listens.
///
/// Outside a change of voters, `voters_incoming` are the voters and `learners` the listeners;
/// the other two sets are empty. During a change of voters the membership is *joint*: decisions
/// need a majority of `voters_incoming` (the configuration being moved to) *and* a majority of
/// `voters_outgoing` (the one being left), and the voters being demoted to learners wait in
/// `learners_next` (they are outgoing voters until the joint configuration is left, see
/// [`Membership::leave_joint`]). So no node is ever a voter and a learner at once.
/// [`Membership::validate`] checks these rules; the core checks them on every membership it
/// creates and refuses any it receives that breaks them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The voters (of the configuration being moved to, while joint). Ordered, so iteration is
    /// deterministic.
    pub voters_incoming: BTreeSet<NodeId>,
    /// The voters of the configuration being left, while joint; empty otherwise.
    pub voters_outgoing: BTreeSet<NodeId>,
    /// Members that receive the log but do not vote (they may be promoted).
    pub learners: BTreeSet<NodeId>,
    /// Outgoing voters that become learners once the joint configuration is left; empty
    /// otherwise.
    pub learners_next: BTreeSet<NodeId>,
}

/// Why a membership is not one a group can run with (see [`Membership::validate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidMembership {
    /// The (incoming) configuration has no voter.
    #[error("no voter")]
    NoVoters,
    /// A node is both a voter and a learner.
    #[error("node {0} is both a voter and a learner")]
    LearnerVotes(NodeId),
    /// A node waits to become a learner without being an outgoing voter, or while it is an
    /// incoming voter or already a learner.
    #[error("node {0} waits to become a learner without leaving the voters")]
    LearnerNextMisplaced(NodeId),
    /// Nodes wait to become learners outside a joint configuration.
    #[error("learners wait for a joint configuration that is not in progress")]
    LearnerNextOutsideJoint,
}

impl Membership {
    /// A membership of the given voters.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Membership { voters_incoming: voters.into_iter().collect(), ..Membership::default() }
    }

    /// Whether `id` votes (in either half of a joint configuration).
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters_incoming.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// Whether `id` is a voter or a learner (or waits to become one).
    pub fn is_member(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Whether a change of voters is in progress.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Every voter, of both halves while joint.
    pub fn all_voters(&self) -> BTreeSet<NodeId> {
        self.voters_incoming.union(&self.voters_outgoing).copied().collect()
    }

    /// Every member: voters of both halves and learners (`learners_next` are outgoing voters).
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut members = self.all_voters();
        members.extend(self.learners.iter().copied());
        members
    }

    /// The membership once the joint configuration is left: the incoming voters, and the
    /// learners with those waiting to become learners. Outside a joint configuration, itself.
    pub fn leave_joint(&self) -> Membership {
        let mut learners = self.learners.clone();
        learners.extend(self.learners_next.iter().copied());
        Membership {
            voters_incoming: self.voters_incoming.clone(),
            voters_outgoing: BTreeSet::new(),
            learners,
            learners_next: BTreeSet::new(),
        }
    }

    /// Checks that a group can run with this membership: some incoming voter, no node both a
    /// voter and a learner, and learners-to-be only among the outgoing voters of a joint
    /// configuration (neither incoming voters nor learners already).
    pub fn validate(&self) -> Result<(), InvalidMembership> {
        if self.voters_incoming.is_empty() {
            return Err(InvalidMembership::NoVoters);
        }
        if let Some(&id) = self.learners.iter().find(|&&id| self.is_voter(id)) {
            return Err(InvalidMembership::LearnerVotes(id));
        }
        if !self.is_joint() && !self.learners_next.is_empty() {
            return Err(InvalidMembership::LearnerNextOutsideJoint);
        }
        let misplaced = |id: &&NodeId| {
            !self.voters_outgoing.contains(id) || self.voters_incoming.contains(id) || self.learners.contains(id)
        };
        if let Some(&id) = self.learners_next.iter().find(misplaced) {
            return Err(InvalidMembership::LearnerNextMisplaced(id));
        }
        Ok(())
    }

    /// Whether [`Membership::validate`] accepts this membership.
    pub fn is_valid(&self) -> bool {
        self.validate().is_ok()
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
