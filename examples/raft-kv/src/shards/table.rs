//! The routing table: which nodes exist and where, and which nodes should hold each shard.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use raft_core::NodeId;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::ShardId;

/// The most shards a cluster may have (each is a Raft group on a replication factor's worth of
/// nodes; `raft_net::Host` is measured with 1,000 groups per node).
pub const SHARDS_MAX: u32 = 4096;
/// The most replicas one shard may have (voters of one Raft group).
pub const REPLICAS_MAX: usize = 7;

/// What the meta group replicates: the cluster's nodes and each shard's replicas.
///
/// Changed only by [`RoutingTable::apply`], which checks every change against the table and
/// either makes all of it or none. `version` counts the changes of nodes and replicas, so that a
/// controller can make a change conditional on the table it computed it from; leader hints change
/// too often and matter too little to move it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingTable {
    version: u64,
    /// Counts every applied change, observations (leader hints, recorded members) included: what
    /// a node compares to know its cached copy is behind.
    revision: u64,
    replication: u8,
    nodes: BTreeMap<NodeId, NodeEntry>,
    shards: Vec<ShardEntry>,
}

/// One node of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Where its Raft transport listens.
    pub raft: SocketAddr,
    /// Where its HTTP API listens.
    pub http: SocketAddr,
    /// Whether placement may put replicas on it.
    pub state: NodeState,
}

/// Whether a node may hold replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NodeState {
    /// Holds replicas, and receives more when the load is uneven.
    Active,
    /// Being emptied by an operator (`raft-kv drain`): its replicas move elsewhere.
    Draining,
    /// Not heard from for too long: its replicas are re-created elsewhere.
    Failed,
}

/// One shard's entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// The voters the shard's group should have.
    pub replicas: BTreeSet<NodeId>,
    /// The replica last seen leading the group, if any (a hint: it may be out of date).
    pub leader_hint: Option<NodeId>,
    /// The group's members (voters and learners) in its latest *committed*, non-joint membership
    /// that the controller recorded: a node outside both this and `replicas` will never be needed
    /// by the group again, and only then may it delete its replica; a node named in `replicas`
    /// but not here may create an empty one. The first replicas at creation.
    pub members: BTreeSet<NodeId>,
    /// The commit index of the report `members` was recorded from (reports are taken in order
    /// of it, so a late report of an older membership never replaces a newer one).
    pub members_at: u64,
}

/// A change proposed to the meta group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCommand {
    /// Apply only if the table is at this version (a controller's compare and set); `None`
    /// applies to any version.
    pub expected_version: Option<u64>,
    /// The change.
    pub change: TableChange,
}

/// The changes a table takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TableChange {
    /// Creates the table of a new cluster: its nodes and each shard's first replicas (the shard
    /// count is the length of `replicas`, fixed from then on).
    Create {
        /// How many replicas each shard should have.
        replication: u8,
        /// The first nodes.
        nodes: BTreeMap<NodeId, NodeEntry>,
        /// The replicas of shard 0, 1, ...
        replicas: Vec<BTreeSet<NodeId>>,
    },
    /// Adds a node (it joins as `Active`, with no replicas yet).
    AddNode {
        /// Its id, new to the table.
        id: NodeId,
        /// Its Raft address.
        raft: SocketAddr,
        /// Its HTTP address.
        http: SocketAddr,
    },
    /// Marks a node active, draining or failed.
    SetNodeState {
        /// The node.
        id: NodeId,
        /// Its new state.
        state: NodeState,
    },
    /// Removes a node that no shard names any more.
    RemoveNode {
        /// The node.
        id: NodeId,
    },
    /// Sets a shard's replicas: at most one node added and at most one removed, and only with
    /// an `expected_version` (a change computed from an older table is refused), so that a
    /// shard has one move at a time. Setting the same replicas changes nothing.
    SetReplicas {
        /// The shard.
        shard: ShardId,
        /// Its new replicas.
        replicas: BTreeSet<NodeId>,
    },
    /// Records the members of a shard's group in a committed, non-joint membership, as its
    /// leader reported them at commit index `at` (does not change the version; ignored unless
    /// `at` is above the recorded one).
    RecordMembers {
        /// The shard.
        shard: ShardId,
        /// The group's voters and learners.
        members: BTreeSet<NodeId>,
        /// The reporter's commit index.
        at: u64,
    },
    /// Records the replica seen leading a shard (does not change the version).
    LeaderHint {
        /// The shard.
        shard: ShardId,
        /// Its leader, one of its replicas, or `None` for not known.
        leader: Option<NodeId>,
    },
    /// Records the members of a shard's group as [`TableChange::RecordMembers`] does, at any
    /// `at`: after a lost-quorum recovery (`raft-kv recover`) the group's history goes on from the
    /// survivor's log, which may end below the record of the majority that was lost, and no
    /// ordinary report would replace that record until the group committed past it. Proposed by
    /// the controller only on the report of a leader whose replica was recovered (does not change
    /// the version).
    ResetMembers {
        /// The shard.
        shard: ShardId,
        /// The group's voters and learners.
        members: BTreeSet<NodeId>,
        /// The reporter's commit index.
        at: u64,
    },
}

/// Why a table refused a change (the table is unchanged).
#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum TableError {
    /// The command was computed from another version of the table.
    #[error("the table is at version {current}, not {expected}")]
    Stale {
        /// The version the command expected.
        expected: u64,
        /// The table's version.
        current: u64,
    },
    /// The command's bytes do not decode.
    #[error("malformed table command")]
    Malformed,
    /// Only `Create` applies to an empty table.
    #[error("the table has not been created")]
    NotCreated,
    /// `Create` applies only to an empty table.
    #[error("the table exists already")]
    AlreadyCreated,
    /// No node has this id.
    #[error("node {0} is not in the table")]
    UnknownNode(NodeId),
    /// A node with this id exists already.
    #[error("node {0} is in the table already")]
    NodeExists(NodeId),
    /// The node still holds replicas.
    #[error("node {0} still holds replicas")]
    NodeInUse(NodeId),
    /// No shard has this number.
    #[error("shard {0} does not exist")]
    UnknownShard(ShardId),
    /// A shard count, replication factor or replica set out of bounds or inconsistent.
    #[error("invalid table change: {0}")]
    Invalid(String),
}

impl TableCommand {
    /// The command's bytes, for a proposal to the meta group.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a table command always encodes")
    }

    /// Decodes a proposal's bytes.
    pub fn decode(bytes: &[u8]) -> Result<TableCommand, TableError> {
        postcard::from_bytes(bytes).map_err(|_| TableError::Malformed)
    }
}

impl RoutingTable {
    /// The number of node and replica changes applied so far (0: not created).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The number of changes applied so far, observations included (see [`Self::version`] for
    /// the number that a compare and set names).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// How many replicas each shard should have.
    pub fn replication(&self) -> usize {
        usize::from(self.replication)
    }

    /// The number of shards (0 until created).
    pub fn shard_count(&self) -> u32 {
        u32::try_from(self.shards.len()).expect("at most SHARDS_MAX shards")
    }

    /// The nodes, by id.
    pub fn nodes(&self) -> &BTreeMap<NodeId, NodeEntry> {
        &self.nodes
    }

    /// Every shard's entry, shard 0 first.
    pub fn shards(&self) -> impl Iterator<Item = (ShardId, &ShardEntry)> {
        self.shards.iter().enumerate().map(|(shard, entry)| (ShardId(shard as u32), entry))
    }

    /// One shard's entry.
    pub fn shard(&self, shard: ShardId) -> Option<&ShardEntry> {
        self.shards.get(shard.0 as usize)
    }

    /// How many replicas `node` holds.
    pub fn load(&self, node: NodeId) -> usize {
        self.shards.iter().filter(|entry| entry.replicas.contains(&node)).count()
    }

    /// Applies `command`, or refuses it and changes nothing. Returns the version after it.
    pub fn apply(&mut self, command: &TableCommand) -> Result<u64, TableError> {
        if let Some(expected) = command.expected_version
            && expected != self.version
        {
            return Err(TableError::Stale { expected, current: self.version });
        }
        if self.version == 0 && !matches!(command.change, TableChange::Create { .. }) {
            return Err(TableError::NotCreated);
        }
        if command.expected_version.is_none() && matches!(command.change, TableChange::SetReplicas { .. }) {
            // One move per shard at a time holds only against the table the move was computed
            // from: a replica change must name its version.
            return Err(TableError::Invalid("a replica change must name the table version it expects".to_owned()));
        }
        let mut next = self.clone();
        let bumps = next.change(&command.change)?;
        if bumps {
            next.version += 1;
        }
        next.revision += 1;
        *self = next;
        Ok(self.version)
    }

    /// Makes `change` on `self` (a copy, thrown away on error); whether it moves the version.
    fn change(&mut self, change: &TableChange) -> Result<bool, TableError> {
        match change {
            TableChange::Create { replication, nodes, replicas } => {
                if self.version != 0 {
                    return Err(TableError::AlreadyCreated);
                }
                let count = replicas.len();
                if count == 0 || count > SHARDS_MAX as usize {
                    return Err(TableError::Invalid(format!("{count} shards (want 1 to {SHARDS_MAX})")));
                }
                if *replication == 0 || usize::from(*replication) > REPLICAS_MAX {
                    return Err(TableError::Invalid(format!("replication {replication} (want 1 to {REPLICAS_MAX})")));
                }
                self.replication = *replication;
                self.nodes = nodes.clone();
                self.shards = Vec::with_capacity(count);
                for replicas in replicas {
                    self.check_replicas(replicas)?;
                    let (members, members_at) = (replicas.clone(), 0);
                    self.shards.push(ShardEntry { replicas: replicas.clone(), leader_hint: None, members, members_at });
                }
            }
            TableChange::AddNode { id, raft, http } => {
                if self.nodes.contains_key(id) {
                    return Err(TableError::NodeExists(*id));
                }
                self.nodes.insert(*id, NodeEntry { raft: *raft, http: *http, state: NodeState::Active });
            }
            TableChange::SetNodeState { id, state } => {
                self.nodes.get_mut(id).ok_or(TableError::UnknownNode(*id))?.state = *state;
            }
            TableChange::RemoveNode { id } => {
                if !self.nodes.contains_key(id) {
                    return Err(TableError::UnknownNode(*id));
                }
                if self.load(*id) > 0 {
                    return Err(TableError::NodeInUse(*id));
                }
                self.nodes.remove(id);
            }
            TableChange::SetReplicas { shard, replicas } => {
                self.check_replicas(replicas)?;
                let entry = self.shards.get_mut(shard.0 as usize).ok_or(TableError::UnknownShard(*shard))?;
                if *replicas == entry.replicas {
                    return Ok(false); // Nothing changes, so the version does not move.
                }
                let added = replicas.difference(&entry.replicas).count();
                let removed = entry.replicas.difference(replicas).count();
                if added > 1 || removed > 1 {
                    return Err(TableError::Invalid(format!(
                        "shard {shard}: {added} replicas added and {removed} removed at once (one move at a time)"
                    )));
                }
                entry.replicas = replicas.clone();
                entry.leader_hint = entry.leader_hint.filter(|leader| replicas.contains(leader));
            }
            TableChange::RecordMembers { shard, members, at } => {
                let entry = self.shards.get_mut(shard.0 as usize).ok_or(TableError::UnknownShard(*shard))?;
                if *at > entry.members_at {
                    entry.members = members.clone();
                    entry.members_at = *at;
                }
                return Ok(false);
            }
            TableChange::ResetMembers { shard, members, at } => {
                let entry = self.shards.get_mut(shard.0 as usize).ok_or(TableError::UnknownShard(*shard))?;
                entry.members = members.clone();
                entry.members_at = *at;
                return Ok(false);
            }
            TableChange::LeaderHint { shard, leader } => {
                let entry = self.shards.get_mut(shard.0 as usize).ok_or(TableError::UnknownShard(*shard))?;
                if leader.is_some_and(|leader| !entry.replicas.contains(&leader)) {
                    return Err(TableError::Invalid(format!("shard {shard}: the leader hint is not a replica")));
                }
                entry.leader_hint = *leader;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A replica set names known nodes, at least one and at most [`REPLICAS_MAX`].
    fn check_replicas(&self, replicas: &BTreeSet<NodeId>) -> Result<(), TableError> {
        if replicas.is_empty() || replicas.len() > REPLICAS_MAX {
            return Err(TableError::Invalid(format!("{} replicas (want 1 to {REPLICAS_MAX})", replicas.len())));
        }
        match replicas.iter().find(|node| !self.nodes.contains_key(node)) {
            Some(unknown) => Err(TableError::UnknownNode(*unknown)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn node(port: u16) -> NodeEntry {
        NodeEntry { raft: address(port), http: address(port + 1000), state: NodeState::Active }
    }

    fn set(ids: &[u64]) -> BTreeSet<NodeId> {
        ids.iter().map(|id| NodeId(*id)).collect()
    }

    /// Recorded members only move forward in commit index, and do not move the version.
    #[test]
    fn recorded_members_take_the_latest_report() {
        let mut table = RoutingTable::default();
        let nodes = [(NodeId(1), node(1)), (NodeId(2), node(2)), (NodeId(3), node(3))].into();
        let create = TableChange::Create { replication: 2, nodes, replicas: vec![set(&[1, 2])] };
        table.apply(&command(create)).expect("created");
        assert_eq!(table.shard(ShardId(0)).expect("shard 0").members, set(&[1, 2]), "the first replicas");
        let (version, revision) = (table.version(), table.revision());
        let record =
            |members: &[u64], at| command(TableChange::RecordMembers { shard: ShardId(0), members: set(members), at });
        table.apply(&record(&[1, 3], 10)).expect("recorded");
        assert_eq!(table.shard(ShardId(0)).expect("shard 0").members, set(&[1, 3]));
        table.apply(&record(&[1, 2], 7)).expect("an older report is ignored, not refused");
        table.apply(&record(&[1, 2], 10)).expect("as is a report of the same commit index");
        assert_eq!(table.shard(ShardId(0)).expect("shard 0").members, set(&[1, 3]));
        assert_eq!(table.version(), version, "observations do not move the version");
        assert_eq!(table.revision(), revision + 3, "every applied change moves the revision");
        // A recovered group's report replaces the record below its index.
        let reset = TableChange::ResetMembers { shard: ShardId(0), members: set(&[3]), at: 4 };
        table.apply(&command(reset)).expect("reset");
        let entry = table.shard(ShardId(0)).expect("shard 0");
        assert_eq!((entry.members.clone(), entry.members_at), (set(&[3]), 4));
        table.apply(&record(&[3, 2], 5)).expect("recorded");
        assert_eq!(table.shard(ShardId(0)).expect("shard 0").members, set(&[2, 3]), "later reports count again");
        assert_eq!(table.version(), version);
    }

    fn command(change: TableChange) -> TableCommand {
        TableCommand { expected_version: None, change }
    }

    /// A replica change, conditional on `table`'s version as every one must be.
    fn versioned(table: &RoutingTable, change: TableChange) -> TableCommand {
        TableCommand { expected_version: Some(table.version()), change }
    }

    /// Three nodes, two shards of three replicas.
    fn created() -> RoutingTable {
        let mut table = RoutingTable::default();
        let nodes = (1..=3).map(|id| (NodeId(id), node(9000 + id as u16))).collect();
        let create = TableChange::Create { replication: 3, nodes, replicas: vec![set(&[1, 2, 3]), set(&[1, 2, 3])] };
        assert_eq!(table.apply(&command(create)), Ok(1));
        table
    }

    #[test]
    fn only_create_applies_to_an_empty_table() {
        let mut table = RoutingTable::default();
        let add = command(TableChange::AddNode { id: NodeId(1), raft: address(1), http: address(2) });
        assert_eq!(table.apply(&add), Err(TableError::NotCreated));
        let mut table = created();
        let again = TableChange::Create { replication: 1, nodes: BTreeMap::new(), replicas: vec![set(&[1])] };
        assert_eq!(table.apply(&command(again)), Err(TableError::AlreadyCreated));
        assert_eq!(table.shard_count(), 2);
    }

    #[test]
    fn a_stale_command_changes_nothing() {
        let mut table = created();
        let before = table.clone();
        let stale = TableCommand {
            expected_version: Some(0),
            change: TableChange::SetNodeState { id: NodeId(1), state: NodeState::Draining },
        };
        assert_eq!(table.apply(&stale), Err(TableError::Stale { expected: 0, current: 1 }));
        assert_eq!(table, before);
        let current = TableCommand { expected_version: Some(1), ..stale };
        assert_eq!(table.apply(&current), Ok(2));
        assert_eq!(table.nodes()[&NodeId(1)].state, NodeState::Draining);
    }

    #[test]
    fn a_shard_moves_one_replica_at_a_time() {
        let mut table = created();
        let add = command(TableChange::AddNode { id: NodeId(4), raft: address(4), http: address(5) });
        table.apply(&add).expect("a new node");
        let add5 = command(TableChange::AddNode { id: NodeId(5), raft: address(6), http: address(7) });
        table.apply(&add5).expect("a new node");
        let two_moves = versioned(&table, TableChange::SetReplicas { shard: ShardId(0), replicas: set(&[1, 4, 5]) });
        assert!(matches!(table.apply(&two_moves), Err(TableError::Invalid(_))));
        let one_move = versioned(&table, TableChange::SetReplicas { shard: ShardId(0), replicas: set(&[1, 2, 4]) });
        assert_eq!(table.apply(&one_move), Ok(4));
        assert_eq!(table.load(NodeId(3)), 1);
        assert_eq!(table.load(NodeId(4)), 1);
    }

    #[test]
    fn replicas_name_known_nodes_within_bounds() {
        let mut table = created();
        let unknown = versioned(&table, TableChange::SetReplicas { shard: ShardId(0), replicas: set(&[1, 2, 9]) });
        assert_eq!(table.apply(&unknown), Err(TableError::UnknownNode(NodeId(9))));
        let empty = versioned(&table, TableChange::SetReplicas { shard: ShardId(1), replicas: set(&[]) });
        assert!(matches!(table.apply(&empty), Err(TableError::Invalid(_))));
        let missing = versioned(&table, TableChange::SetReplicas { shard: ShardId(2), replicas: set(&[1]) });
        assert!(matches!(table.apply(&missing), Err(TableError::Invalid(_)) | Err(TableError::UnknownShard(_))));
        let too_many_shards = TableChange::Create {
            replication: 1,
            nodes: BTreeMap::new(),
            replicas: vec![BTreeSet::new(); SHARDS_MAX as usize + 1],
        };
        assert!(matches!(RoutingTable::default().apply(&command(too_many_shards)), Err(TableError::Invalid(_))));
    }

    #[test]
    fn a_node_is_removed_only_once_it_holds_nothing() {
        let mut table = created();
        assert_eq!(
            table.apply(&command(TableChange::RemoveNode { id: NodeId(3) })),
            Err(TableError::NodeInUse(NodeId(3)))
        );
        for shard in [ShardId(0), ShardId(1)] {
            table
                .apply(&versioned(&table, TableChange::SetReplicas { shard, replicas: set(&[1, 2]) }))
                .expect("one removal");
        }
        assert_eq!(table.apply(&command(TableChange::RemoveNode { id: NodeId(3) })), Ok(4));
        assert!(!table.nodes().contains_key(&NodeId(3)));
    }

    #[test]
    fn leader_hints_name_replicas_and_keep_the_version() {
        let mut table = created();
        let hint = command(TableChange::LeaderHint { shard: ShardId(1), leader: Some(NodeId(2)) });
        assert_eq!(table.apply(&hint), Ok(1));
        assert_eq!(table.shard(ShardId(1)).and_then(|entry| entry.leader_hint), Some(NodeId(2)));
        let outsider = command(TableChange::LeaderHint { shard: ShardId(1), leader: Some(NodeId(7)) });
        assert!(matches!(table.apply(&outsider), Err(TableError::Invalid(_))));
        // Moving the hinted leader out of the shard drops the hint.
        let unversioned = command(TableChange::SetReplicas { shard: ShardId(1), replicas: set(&[1, 3]) });
        assert!(matches!(table.apply(&unversioned), Err(TableError::Invalid(_))), "a replica change names its version");
        table.apply(&versioned(&table, unversioned.change)).expect("one removal");
        let same = versioned(&table, TableChange::SetReplicas { shard: ShardId(1), replicas: set(&[1, 3]) });
        assert_eq!(table.apply(&same), Ok(table.version()), "no change, no new version");
        assert_eq!(table.shard(ShardId(1)).and_then(|entry| entry.leader_hint), None);
    }

    #[test]
    fn commands_round_trip_and_garbage_is_refused() {
        let original = TableCommand {
            expected_version: Some(7),
            change: TableChange::SetReplicas { shard: ShardId(3), replicas: set(&[1, 2]) },
        };
        assert_eq!(TableCommand::decode(&original.encode()), Ok(original));
        assert_eq!(TableCommand::decode(&[0xff, 0xff, 0xff]), Err(TableError::Malformed));
    }
}
