//! The controller's decisions: what to do next so that every shard group's actual membership
//! becomes what the routing table says, one move per shard at a time.
//!
//! [`reconcile`] is a pure function of the table and of what each shard's leader reports
//! ([`Observed`]); the controller that runs it (on the meta group's leader) keeps no state of its
//! own, so a crash of any node at any step leaves durable state (the table in the meta group, the
//! membership in each shard group) from which the next controller computes the same next steps.
//!
//! A move of shard `s` from node `A` to node `D` goes:
//! 1. the table names `D` instead of `A` ([`Action::Table`], from [`placement::next_change`]);
//! 2. once `D` reports that it holds an (empty) replica of `s`, `s`'s leader adds `D` as a
//!    learner ([`Action::AddLearner`]); `D` catches up;
//! 3. once `D` lags by at most `caught_up_entries`, one joint-consensus change makes `D` a voter
//!    and removes `A` ([`Action::Change`]); the leader leaves the joint configuration by itself.
//!
//! `D` is added only once it holds the replica because a node creates an empty replica only
//! while no leader of the group counts it as a member (see `node`): added first, `D` would wait
//! forever for a replica it must not create. For the same reason a learner whose node reports
//! holding no replica of the shard is removed from the group (and added again once it holds one):
//! it can never catch up, and a leader must not keep progress for a node that holds nothing.
//!
//! A shard keeps its quorum throughout: `D` votes only once it has caught up and is heard from,
//! and a voter change is made only when both the old and the new voters have a majority of
//! members that could acknowledge an entry now (while joint, commits need both), so a change is
//! never started that the shard could not finish.
//!
//! The table given must be current: the controller reads it on the meta group's leader after a
//! linearizable read (ReadIndex) of the meta group, never from a possibly stale applied copy.
//! Group changes are not conditional on the table's version, so a stale table would make the
//! controller undo a finished move. A move whose target is no
//! longer active before it became a voter is rolled back: the table is set back to the group's
//! actual voters (one node out and one in per change, as the table takes them), and the learner
//! left behind is removed.

use std::collections::{BTreeMap, BTreeSet};

use raft_core::{ConfChange, Index, NodeId, Term};

use super::placement;
use super::{NodeState, RoutingTable, ShardId, TableChange, TableCommand};

/// A shard group's membership and progress, as its leader reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The leader that reported.
    pub leader: NodeId,
    /// Its term (of two reports for one shard, the higher term's is the current leader's).
    pub term: Term,
    /// Its commit index.
    pub commit: Index,
    /// The members (voters and learners) of its latest committed membership, when that is not
    /// joint; `None` while a joint configuration is committed.
    pub committed_members: Option<BTreeSet<NodeId>>,
    /// The voters (while joint: the incoming ones).
    pub voters: BTreeSet<NodeId>,
    /// Whether a joint configuration is not left yet.
    pub joint: bool,
    /// The learners.
    pub learners: BTreeSet<NodeId>,
    /// How many entries each follower or learner is behind the leader.
    pub lag_entries: BTreeMap<NodeId, u64>,
    /// The members the leader heard from within the last election timeout (itself included):
    /// raft-net's `PeerStatus::recent_active`.
    pub recently_active: BTreeSet<NodeId>,
    /// Whether the leader's replica was made the group's only voter by a lost-quorum recovery
    /// (`raft-kv recover`) and the node has not yet seen the table's record of the group's
    /// members catch up with its history (see [`TableChange::ResetMembers`]).
    pub recovered: bool,
}

impl Observed {
    /// Whether a majority of `voters` could acknowledge an entry now: the leader, and members
    /// heard from recently that are at most `caught_up_entries` behind.
    fn has_ready_majority(&self, voters: &BTreeSet<NodeId>, caught_up_entries: u64) -> bool {
        let ready = |node: &&NodeId| {
            **node == self.leader
                || (self.recently_active.contains(node)
                    && self.lag_entries.get(node).is_some_and(|lag| *lag <= caught_up_entries))
        };
        voters.iter().filter(ready).count() * 2 > voters.len()
    }
}

/// Which shards each node holds a replica of, for the nodes that answered this round (a node
/// missing here did not answer: nothing is concluded about its replicas).
pub type Holdings = BTreeMap<NodeId, BTreeSet<ShardId>>;

/// One node's answer to the controller: what the replicas it leads report, and which shards it
/// holds a replica of (leading or not).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeReport {
    /// By shard, what the replicas this node leads report.
    pub leading: BTreeMap<ShardId, Observed>,
    /// Every shard this node holds a replica of.
    pub held: BTreeSet<ShardId>,
}

/// One thing for the controller to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Propose this change of the routing table to the meta group.
    Table(TableCommand),
    /// Ask the shard's leader to add `node` as a learner.
    AddLearner {
        /// The shard.
        shard: ShardId,
        /// The node that receives a replica.
        node: NodeId,
    },
    /// Ask the shard's leader for this membership change (one joint change when it changes
    /// voters).
    Change {
        /// The shard.
        shard: ShardId,
        /// The changes, made at once.
        changes: Vec<ConfChange>,
    },
    /// Ask the shard's leader to hand leadership to `to`.
    TransferLeader {
        /// The shard.
        shard: ShardId,
        /// One of its voters.
        to: NodeId,
    },
}

/// How the controller paces itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A learner this close to its leader's log may become a voter.
    pub caught_up_entries: u64,
    /// At most this many shards move at once, cluster-wide.
    pub moves_max: usize,
}

/// What to do next, given the table, the shards' reports (a shard missing from `observed` has no
/// leader that answered: nothing is done to it) and which replicas the nodes that answered hold.
pub fn reconcile(
    table: &RoutingTable,
    observed: &BTreeMap<ShardId, Observed>,
    held: &Holdings,
    limits: Limits,
) -> Vec<Action> {
    let mut actions = Vec::new();
    // Shards placement must leave alone (moving, or with no leader that answered), and how many
    // of them are moving (only those count against `moves_max`).
    let (mut busy, mut moving) = (BTreeSet::new(), 0);
    for (shard, entry) in table.shards() {
        let Some(seen) = observed.get(&shard) else {
            busy.insert(shard);
            continue;
        };
        if entry.leader_hint != Some(seen.leader) && entry.replicas.contains(&seen.leader) {
            let hint = TableChange::LeaderHint { shard, leader: Some(seen.leader) };
            actions.push(Action::Table(TableCommand { expected_version: None, change: hint }));
        }
        // What the group has committed, recorded before anything else moves this shard: nodes
        // delete their replicas, and create empty ones, from the record alone.
        if let Some(members) = &seen.committed_members {
            let (at, differs) = (seen.commit.0, *members != entry.members);
            let change = if differs && at > entry.members_at {
                Some(TableChange::RecordMembers { shard, members: members.clone(), at })
            } else if seen.recovered && at < entry.members_at && sole_voter(seen) {
                // A recovered group's history may end below a record of the lost majority's (the
                // same members or not: the index must come down, and the node then forgets that
                // its replica was recovered). Only in the shape a recovery leaves, the leader the
                // only member: a later leader's report (a new one, whose commit index may still
                // lag, or a deposed one) must never move the record back.
                Some(TableChange::ResetMembers { shard, members: members.clone(), at })
            } else {
                None
            };
            if let Some(change) = change {
                actions.push(Action::Table(TableCommand { expected_version: None, change }));
                busy.insert(shard);
            }
        }
        // A learner the table does not name, or whose node answered without a replica of the
        // shard (it can never catch up), leaves the group.
        let holds_none = |node: &NodeId| held.get(node).is_some_and(|shards| !shards.contains(&shard));
        let mut removed = false;
        for stray in seen.learners.iter().filter(|node| !entry.replicas.contains(node) || holds_none(node)) {
            if !seen.joint {
                actions.push(Action::Change { shard, changes: vec![ConfChange::Remove(*stray)] });
                removed = true;
            }
        }
        if seen.joint || seen.voters != entry.replicas {
            busy.insert(shard);
            moving += 1;
            if !seen.joint && !removed {
                actions.extend(advance(table, shard, &entry.replicas, seen, held, limits));
            }
        }
    }
    if busy.is_empty() {
        actions.extend(forget_departed(table, observed, held));
    }
    if moving < limits.moves_max
        && let Some(change) = placement::next_change(table, &busy)
    {
        let set = TableChange::SetReplicas { shard: change.shard, replicas: change.replicas };
        actions.push(Action::Table(TableCommand { expected_version: Some(table.version()), change: set }));
    } else if busy.is_empty() {
        actions.extend(balance_leaders(table, observed));
    }
    actions
}

/// The next step of a shard whose voters differ from the table's `target`.
fn advance(
    table: &RoutingTable,
    shard: ShardId,
    target: &BTreeSet<NodeId>,
    seen: &Observed,
    held: &Holdings,
    limits: Limits,
) -> Option<Action> {
    let incoming: Vec<NodeId> = target.difference(&seen.voters).copied().collect();
    let outgoing: Vec<NodeId> = seen.voters.difference(target).copied().collect();
    let active = |node: &NodeId| table.nodes().get(node).is_some_and(|entry| entry.state == NodeState::Active);
    if let Some(gone) = incoming.iter().find(|node| !active(node)) {
        // The target left before it could vote: set the table back towards what the group has,
        // one step of at most one node out and one in (as the table takes changes). One swap
        // back is the whole way; a table further from the group (voters lost to a lost-quorum
        // recovery, say) gets there in several rounds.
        let mut back = target.clone();
        back.remove(gone);
        back.extend(outgoing.first());
        let back = TableChange::SetReplicas { shard, replicas: back };
        return Some(Action::Table(TableCommand { expected_version: Some(table.version()), change: back }));
    }
    let holds = |node: &NodeId| held.get(node).is_some_and(|shards| shards.contains(&shard));
    if let Some(node) = incoming.iter().find(|node| !seen.learners.contains(node)) {
        // Only once the node holds a replica (it creates one only while no leader counts it).
        return holds(node).then_some(Action::AddLearner { shard, node: *node });
    }
    let caught_up = |node: &NodeId| {
        holds(node)
            && seen.recently_active.contains(node)
            && seen.lag_entries.get(node).is_some_and(|lag| *lag <= limits.caught_up_entries)
    };
    let (incoming, outgoing) = (incoming.first().copied(), outgoing.first().copied());
    if incoming.is_some_and(|node| !caught_up(&node)) {
        return None; // The learner is still catching up (or silent): it does not vote yet.
    }
    let mut next = seen.voters.clone();
    next.extend(incoming);
    if let Some(out) = outgoing {
        next.remove(&out);
    }
    // While joint, commits need majorities of both sets: change only if both could commit now,
    // so that a change never leaves a shard unable to finish it.
    let ready = |voters: &BTreeSet<NodeId>| seen.has_ready_majority(voters, limits.caught_up_entries);
    if next.is_empty() || next == seen.voters || !ready(&seen.voters) || !ready(&next) {
        return None;
    }
    // The leader's own replica leaves: hand leadership to a caught-up voter that stays first.
    // Removed while leading, it would step down once the change commits and leave the shard
    // without a leader for an election timeout; a transfer costs about one round trip.
    if outgoing == Some(seen.leader)
        && let Some(to) = next.iter().find(|node| seen.voters.contains(node) && caught_up_voter(seen, node, limits))
    {
        return Some(Action::TransferLeader { shard, to: *to });
    }
    let mut changes: Vec<ConfChange> = incoming.map(ConfChange::AddVoter).into_iter().collect();
    changes.extend(outgoing.map(ConfChange::Remove));
    Some(Action::Change { shard, changes })
}

/// Whether the reporting leader is its group's only member, committed and current (the shape a
/// lost-quorum recovery leaves).
fn sole_voter(seen: &Observed) -> bool {
    let only = BTreeSet::from([seen.leader]);
    !seen.joint && seen.learners.is_empty() && seen.voters == only && seen.committed_members.as_ref() == Some(&only)
}

/// Whether `node`, a voter, was heard from recently and is at most `caught_up_entries` behind.
fn caught_up_voter(seen: &Observed, node: &NodeId, limits: Limits) -> bool {
    seen.recently_active.contains(node)
        && seen.lag_entries.get(node).is_some_and(|lag| *lag <= limits.caught_up_entries)
}

/// Removes from the table the failed or drained nodes that no shard names any more, in the
/// table or in any group's actual membership (every shard must have answered: a node is
/// forgotten only once nothing can still need it). A draining node must besides have answered
/// that it holds no replica: once forgotten it leaves the meta group and reads no table again,
/// so a replica it still held then (one whose removal it had not applied yet, say because it
/// was down) would stay on it for good, serving stale reads. A failed node is not waited for.
fn forget_departed(table: &RoutingTable, observed: &BTreeMap<ShardId, Observed>, held: &Holdings) -> Vec<Action> {
    let named = |node: &NodeId| {
        observed.values().any(|seen| seen.voters.contains(node) || seen.learners.contains(node))
            || table.load(*node) > 0
    };
    let emptied =
        |node: &NodeId, state: NodeState| state == NodeState::Failed || held.get(node).is_some_and(BTreeSet::is_empty);
    table
        .nodes()
        .iter()
        .filter(|(node, entry)| entry.state != NodeState::Active && !named(node) && emptied(node, entry.state))
        .map(|(node, _)| {
            let remove = TableChange::RemoveNode { id: *node };
            Action::Table(TableCommand { expected_version: Some(table.version()), change: remove })
        })
        .collect()
}

/// One leadership transfer from the node leading the most shards to a voter of one of them
/// that leads at least two fewer, if there is such a pair.
fn balance_leaders(table: &RoutingTable, observed: &BTreeMap<ShardId, Observed>) -> Option<Action> {
    let mut led: BTreeMap<NodeId, usize> = table
        .nodes()
        .iter()
        .filter(|(_, entry)| entry.state == NodeState::Active)
        .map(|(node, _)| (*node, 0))
        .collect();
    for seen in observed.values() {
        *led.entry(seen.leader).or_insert(0) += 1;
    }
    let mut best: Option<(usize, ShardId, NodeId)> = None;
    for (shard, seen) in observed {
        let from = led.get(&seen.leader).copied().unwrap_or(0);
        for voter in seen.voters.iter().filter(|voter| **voter != seen.leader) {
            let Some(to) = led.get(voter).copied() else { continue };
            if from >= to + 2 && best.is_none_or(|(gap, ..)| from - to > gap) {
                best = Some((from - to, *shard, *voter));
            }
        }
    }
    best.map(|(_, shard, to)| Action::TransferLeader { shard, to })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};

    use super::*;
    use crate::shards::NodeEntry;

    const LIMITS: Limits = Limits { caught_up_entries: 10, moves_max: 3 };

    /// A shard group as the model runs it.
    #[derive(Clone, Debug)]
    struct Group {
        leader: NodeId,
        voters: BTreeSet<NodeId>,
        outgoing: Option<BTreeSet<NodeId>>,
        learners: BTreeSet<NodeId>,
        lag: BTreeMap<NodeId, u64>,
    }

    /// Nodes that live or die, shard groups that take membership changes the way raft-core
    /// does (one at a time, voters through a joint configuration), and the routing table.
    struct Model {
        rng: ChaCha8Rng,
        table: RoutingTable,
        alive: BTreeMap<NodeId, bool>,
        groups: Vec<Group>,
        /// A dead node and the round at which the failure detector marks it failed.
        dying: Option<(NodeId, u32)>,
        next_id: u64,
        /// The groups' commit index, one more at each report.
        commits: u64,
        /// The replicas each node holds (kept while it is down).
        held: BTreeMap<NodeId, BTreeSet<ShardId>>,
    }

    /// Whether a majority of `voters` can acknowledge new entries now: alive, and not so far
    /// behind that they first need a long catch-up (a lagging voter delays every commit).
    fn majority_alive(alive: &BTreeMap<NodeId, bool>, lag: &BTreeMap<NodeId, u64>, voters: &BTreeSet<NodeId>) -> bool {
        let ready = |node: &&NodeId| {
            alive.get(node).copied().unwrap_or(false)
                && lag.get(node).is_none_or(|lag| *lag <= LIMITS.caught_up_entries)
        };
        voters.iter().filter(ready).count() * 2 > voters.len()
    }

    impl Model {
        fn new(seed: u64, shards: usize) -> Model {
            let address = SocketAddr::from(([127, 0, 0, 1], 1));
            let entry = NodeEntry { raft: address, http: address, state: NodeState::Active };
            let ids: BTreeSet<NodeId> = (1..=3).map(NodeId).collect();
            let nodes = ids.iter().map(|id| (*id, entry)).collect();
            let mut table = RoutingTable::default();
            let create = TableChange::Create { replication: 3, nodes, replicas: vec![ids.clone(); shards] };
            table.apply(&TableCommand { expected_version: None, change: create }).expect("a valid table");
            let group = Group {
                leader: NodeId(1),
                voters: ids.clone(),
                outgoing: None,
                learners: BTreeSet::new(),
                lag: BTreeMap::new(),
            };
            Model {
                rng: ChaCha8Rng::seed_from_u64(seed),
                table,
                alive: ids.iter().map(|id| (*id, true)).collect(),
                groups: vec![group; shards],
                dying: None,
                next_id: 4,
                commits: 0,
                held: ids.iter().map(|id| (*id, (0..shards as u32).map(ShardId).collect())).collect(),
            }
        }

        /// The replicas each live node holds: of the shards the table names it for, and of the
        /// groups that count it as a member (a node creates a replica as soon as it is named).
        fn holdings(&self) -> Holdings {
            let alive = |node: &&NodeId| self.alive.get(*node).copied().unwrap_or(false);
            self.held.iter().filter(|(node, _)| alive(node)).map(|(node, shards)| (*node, shards.clone())).collect()
        }

        /// Each live node does what `node::Inner::reconcile` does with the table: creates an
        /// empty replica of a shard that names it and whose recorded members lack it (each with
        /// `create_percent` chance per round: nodes are slow at times), and deletes one that
        /// neither names it nor records it, unless it leads the shard.
        fn step_nodes(&mut self, create_percent: u32) {
            let nodes: Vec<NodeId> = self.alive.iter().filter(|(_, alive)| **alive).map(|(node, _)| *node).collect();
            for node in nodes {
                for index in 0..self.groups.len() {
                    let shard = ShardId(index as u32);
                    let Some(entry) = self.table.shard(shard) else { continue };
                    let (named, member) = (entry.replicas.contains(&node), entry.members.contains(&node));
                    let holds = self.held.get(&node).is_some_and(|shards| shards.contains(&shard));
                    if named && !member && !holds && self.chance(create_percent) {
                        self.held.entry(node).or_default().insert(shard);
                    } else if !named && !member && holds && self.groups[index].leader != node {
                        self.held.entry(node).or_default().remove(&shard);
                    }
                }
            }
        }

        fn chance(&mut self, percent: u32) -> bool {
            self.rng.next_u32() % 100 < percent
        }

        fn table_change(&mut self, change: TableChange) {
            // An operator's or a failure detector's change, unconditional.
            let _ = self.table.apply(&TableCommand { expected_version: None, change });
        }

        /// Whether a group can commit: majorities of its voters (and, while joint, of the
        /// outgoing voters) are alive.
        fn available(&self, group: &Group) -> bool {
            majority_alive(&self.alive, &group.lag, &group.voters)
                && group.outgoing.as_ref().is_none_or(|outgoing| majority_alive(&self.alive, &group.lag, outgoing))
        }

        /// What each available group's leader reports; time passes for the groups.
        fn observe(&mut self) -> BTreeMap<ShardId, Observed> {
            let mut observed = BTreeMap::new();
            for index in 0..self.groups.len() {
                let mut group = self.groups[index].clone();
                if self.available(&group) {
                    if !self.alive[&group.leader] || !group.voters.contains(&group.leader) {
                        group.leader = *group.voters.iter().find(|node| self.alive[node]).expect("a majority is alive");
                    }
                    if self.chance(70) {
                        group.outgoing = None; // The leader left the joint configuration.
                    }
                    for (node, lag) in group.lag.iter_mut() {
                        if self.alive[node] {
                            *lag = lag.saturating_sub(u64::from(self.rng.next_u32() % 40));
                        }
                    }
                    self.commits += 1;
                    observed.insert(
                        ShardId(index as u32),
                        Observed {
                            leader: group.leader,
                            commit: Index(self.commits),
                            committed_members: group
                                .outgoing
                                .is_none()
                                .then(|| group.voters.iter().chain(&group.learners).copied().collect()),
                            voters: group.voters.clone(),
                            joint: group.outgoing.is_some(),
                            learners: group.learners.clone(),
                            lag_entries: group
                                .voters
                                .iter()
                                .chain(&group.learners)
                                .map(|node| (*node, group.lag.get(node).copied().unwrap_or(0)))
                                .collect(),
                            recently_active: group
                                .voters
                                .iter()
                                .chain(&group.learners)
                                .filter(|node| self.alive[node])
                                .copied()
                                .collect(),
                            term: Term(1),
                            recovered: false,
                        },
                    );
                }
                self.groups[index] = group;
            }
            observed
        }

        /// Carries out one action the way a shard's leader or the meta group would.
        fn act(&mut self, action: &Action) {
            match action {
                Action::Table(command) => {
                    let _ = self.table.apply(command);
                }
                Action::AddLearner { shard, node } => {
                    let group = &mut self.groups[shard.0 as usize];
                    if group.outgoing.is_none() && !group.voters.contains(node) && group.learners.insert(*node) {
                        group.lag.insert(*node, 100);
                    }
                }
                Action::Change { shard, changes } => {
                    let group = &mut self.groups[shard.0 as usize];
                    if group.outgoing.is_some() {
                        return; // A change is in progress: refused.
                    }
                    let (mut voters, mut learners) = (group.voters.clone(), group.learners.clone());
                    for change in changes {
                        match change {
                            ConfChange::AddVoter(node) => {
                                learners.remove(node);
                                voters.insert(*node);
                            }
                            ConfChange::AddLearner(node) => {
                                voters.remove(node);
                                learners.insert(*node);
                            }
                            ConfChange::Remove(node) => {
                                voters.remove(node);
                                learners.remove(node);
                            }
                        }
                    }
                    if voters.is_empty() {
                        return; // Refused.
                    }
                    if voters != group.voters {
                        group.outgoing = Some(std::mem::replace(&mut group.voters, voters));
                    }
                    group.learners = learners;
                    group.lag.retain(|node, _| group.voters.contains(node) || group.learners.contains(node));
                }
                Action::TransferLeader { shard, to } => {
                    let group = &mut self.groups[shard.0 as usize];
                    if group.voters.contains(to) && self.alive[to] {
                        group.leader = *to;
                    }
                }
            }
        }

        /// Faults and operators: a node joins, one is drained, one dies (and is marked failed a
        /// few rounds later, then removed once empty). At most one node is dead at a time, so a
        /// shard of three replicas always keeps a majority.
        fn disturb(&mut self, round: u32) {
            if let Some((node, at)) = self.dying
                && round >= at
            {
                self.table_change(TableChange::SetNodeState { id: node, state: NodeState::Failed });
            }
            if let Some((node, _)) = self.dying
                && !self.table.nodes().contains_key(&node)
            {
                self.dying = None; // The controller forgot it: another node may die.
            }
            let active = self.table.nodes().values().filter(|entry| entry.state == NodeState::Active).count();
            if self.chance(3) && self.table.nodes().len() < 7 {
                let id = NodeId(self.next_id);
                self.next_id += 1;
                let address = SocketAddr::from(([127, 0, 0, 1], 1));
                self.alive.insert(id, true);
                self.table_change(TableChange::AddNode { id, raft: address, http: address });
            } else if self.chance(2) && active >= 3 {
                let node = self.pick_active();
                self.table_change(TableChange::SetNodeState { id: node, state: NodeState::Draining });
            } else if self.chance(2) && active >= 3 && self.dying.is_none() {
                // Only failures that leave every shard a majority of its voters (the fault model:
                // a shard of two replicas, left when no spare node took a failed one's place,
                // survives no further failure).
                let node = self.pick_active();
                self.alive.insert(node, false);
                if self.groups.iter().all(|group| self.available(group)) {
                    self.dying = Some((node, round + 1 + self.rng.next_u32() % 10));
                } else {
                    self.alive.insert(node, true);
                }
            }
        }

        fn pick_active(&mut self) -> NodeId {
            let active: Vec<NodeId> = self
                .table
                .nodes()
                .iter()
                .filter(|(id, entry)| entry.state == NodeState::Active && self.alive[id])
                .map(|(id, _)| *id)
                .collect();
            active[self.rng.next_u32() as usize % active.len()]
        }

        /// A learner is added only on a node that holds a replica of the shard.
        fn check_learner_holds(&self, action: &Action, seed: u64, round: u32) {
            if let Action::AddLearner { shard, node } = action {
                let holds = self.held.get(node).is_some_and(|shards| shards.contains(shard));
                assert!(holds, "seed {seed} round {round}: node {node} added to shard {shard} without a replica");
            }
        }

        fn check_quorums(&self, seed: u64, round: u32) {
            for (index, group) in self.groups.iter().enumerate() {
                assert!(self.available(group), "seed {seed} round {round}: shard {index} lost its quorum: {group:?}");
                // One move per shard at a time: the table is at most one swap away from the group.
                let target = &self.table.shard(ShardId(index as u32)).expect("a shard per group").replicas;
                let (adds, removes) =
                    (target.difference(&group.voters).count(), group.voters.difference(target).count());
                assert!(adds <= 1 && removes <= 1, "seed {seed} round {round}: shard {index}: {group:?} vs {target:?}");
            }
        }
    }

    #[test]
    fn moves_keep_quorums_and_converge_under_joins_drains_failures_and_controller_crashes() {
        for seed in 0..60 {
            let mut model = Model::new(seed, 8);
            for round in 0..400 {
                model.disturb(round);
                model.step_nodes(60);
                let observed = model.observe();
                for action in reconcile(&model.table, &observed, &model.holdings(), LIMITS) {
                    if model.chance(10) {
                        break; // The controller crashed: the rest of its list is lost.
                    }
                    if model.chance(85) {
                        model.check_learner_holds(&action, seed, round);
                        model.act(&action);
                    }
                }
                model.check_quorums(seed, round);
            }
            // Faults stop (the dead node, if any, is marked failed at once): everything settles.
            if let Some((node, _)) = model.dying {
                model.table_change(TableChange::SetNodeState { id: node, state: NodeState::Failed });
            }
            let mut settled = false;
            for round in 400..1400 {
                model.step_nodes(100);
                let observed = model.observe();
                let actions = reconcile(&model.table, &observed, &model.holdings(), LIMITS);
                let matches_table = model.table.shards().all(|(shard, entry)| {
                    observed
                        .get(&shard)
                        .is_some_and(|seen| !seen.joint && seen.learners.is_empty() && seen.voters == entry.replicas)
                });
                if actions.is_empty() && matches_table {
                    settled = true;
                    break;
                }
                for action in &actions {
                    model.check_learner_holds(action, seed, round);
                    model.act(action);
                }
                model.check_quorums(seed, round);
            }
            assert!(settled, "seed {seed}: the controller never settled");
            // Every live node of the table ends holding exactly the replicas the table names it for.
            model.step_nodes(100);
            for (node, entry) in model.table.nodes() {
                if entry.state == NodeState::Active && model.alive[node] {
                    let named: BTreeSet<ShardId> =
                        model.table.shards().filter(|(_, e)| e.replicas.contains(node)).map(|(s, _)| s).collect();
                    assert_eq!(model.held.get(node).cloned().unwrap_or_default(), named, "seed {seed}: node {node}");
                }
            }
            for (shard, entry) in model.table.shards() {
                let group = &model.groups[shard.0 as usize];
                assert_eq!(group.voters, entry.replicas, "seed {seed}: shard {shard}");
                assert!(group.learners.is_empty() && group.outgoing.is_none(), "seed {seed}: shard {shard}: {group:?}");
                assert_eq!(entry.leader_hint, Some(group.leader), "seed {seed}: shard {shard}");
            }
            assert_eq!(placement::next_change(&model.table, &BTreeSet::new()), None, "seed {seed}: unbalanced");
        }
    }

    #[test]
    fn a_move_adds_a_learner_then_swaps_voters_once_it_caught_up() {
        let mut model = Model::new(1, 1);
        let address = SocketAddr::from(([127, 0, 0, 1], 1));
        model.alive.insert(NodeId(4), true);
        model.table_change(TableChange::AddNode { id: NodeId(4), raft: address, http: address });
        model.table_change(TableChange::SetNodeState { id: NodeId(3), state: NodeState::Draining });
        let mut observed = model.observe();
        let set = Action::Table(TableCommand {
            expected_version: Some(model.table.version()),
            change: TableChange::SetReplicas { shard: ShardId(0), replicas: [1, 2, 4].map(NodeId).into() },
        });
        assert!(reconcile(&model.table, &observed, &model.holdings(), LIMITS).contains(&set));
        model.act(&set);
        let add = Action::AddLearner { shard: ShardId(0), node: NodeId(4) };
        assert!(!reconcile(&model.table, &observed, &model.holdings(), LIMITS).contains(&add), "no replica yet");
        model.step_nodes(100); // Node 4 creates its replica.
        assert!(reconcile(&model.table, &observed, &model.holdings(), LIMITS).contains(&add));
        model.act(&Action::AddLearner { shard: ShardId(0), node: NodeId(4) });
        observed = model.observe();
        observed.get_mut(&ShardId(0)).expect("observed").lag_entries.insert(NodeId(4), 50);
        assert!(
            reconcile(&model.table, &observed, &model.holdings(), LIMITS)
                .iter()
                .all(|action| !matches!(action, Action::Change { .. })),
            "a lagging learner does not vote"
        );
        observed.get_mut(&ShardId(0)).expect("observed").lag_entries.insert(NodeId(4), 3);
        let swap = Action::Change {
            shard: ShardId(0),
            changes: vec![ConfChange::AddVoter(NodeId(4)), ConfChange::Remove(NodeId(3))],
        };
        assert!(reconcile(&model.table, &observed, &model.holdings(), LIMITS).contains(&swap));
    }

    /// A table of four active nodes whose shard 0 should be `target`, and what its leader
    /// `leader` reports: voters `voters`, learner 4 at `lag`, and who was heard from recently.
    fn situation(
        target: [u64; 3],
        voters: [u64; 3],
        leader: u64,
        active: &[u64],
        lag: u64,
    ) -> (RoutingTable, BTreeMap<ShardId, Observed>) {
        let address = SocketAddr::from(([127, 0, 0, 1], 1));
        let entry = NodeEntry { raft: address, http: address, state: NodeState::Active };
        let nodes = (1..=4).map(|id| (NodeId(id), entry)).collect();
        let create = TableChange::Create { replication: 3, nodes, replicas: vec![target.map(NodeId).into()] };
        let mut table = RoutingTable::default();
        table.apply(&TableCommand { expected_version: None, change: create }).expect("a valid table");
        let seen = Observed {
            leader: NodeId(leader),
            voters: voters.map(NodeId).into(),
            joint: false,
            learners: if target.contains(&4) && !voters.contains(&4) { [NodeId(4)].into() } else { BTreeSet::new() },
            lag_entries: (1..=4).map(|id| (NodeId(id), if id == 4 { lag } else { 0 })).collect(),
            recently_active: active.iter().map(|id| NodeId(*id)).collect(),
            ..Observed::default()
        };
        (table, BTreeMap::from([(ShardId(0), seen)]))
    }

    /// Every node of `table` holds a replica of every shard.
    fn everywhere(table: &RoutingTable) -> Holdings {
        let shards: BTreeSet<ShardId> = table.shards().map(|(shard, _)| shard).collect();
        table.nodes().keys().map(|node| (*node, shards.clone())).collect()
    }

    /// A node named for a shard is added as a learner only once it reports holding a replica; a
    /// learner whose node reports none is removed (and not while its node does not answer).
    #[test]
    fn a_learner_is_added_only_once_its_node_holds_a_replica() {
        let (table, mut observed) = situation([1, 2, 4], [1, 2, 3], 1, &[1, 2, 3], 0);
        seen_mut(&mut observed).learners.clear();
        let add = Action::AddLearner { shard: ShardId(0), node: NodeId(4) };
        let mut held = everywhere(&table);
        held.insert(NodeId(4), BTreeSet::new());
        assert!(!reconcile(&table, &observed, &held, LIMITS).contains(&add), "node 4 holds no replica yet");
        held.remove(&NodeId(4));
        assert!(!reconcile(&table, &observed, &held, LIMITS).contains(&add), "node 4 did not answer");
        assert!(reconcile(&table, &observed, &everywhere(&table), LIMITS).contains(&add));
        // Node 4 is a learner (added by an earlier controller) but reports no replica: removed,
        // never promoted, however caught up the leader thinks it is.
        let (table, observed) = situation([1, 2, 4], [1, 2, 3], 1, &[1, 2, 3, 4], 0);
        let mut held = everywhere(&table);
        held.insert(NodeId(4), BTreeSet::new());
        let remove = Action::Change { shard: ShardId(0), changes: vec![ConfChange::Remove(NodeId(4))] };
        let actions = reconcile(&table, &observed, &held, LIMITS);
        assert!(actions.contains(&remove), "{actions:?}");
        assert!(!actions.iter().any(|action| matches!(action, Action::Change { changes, .. } if changes.contains(&ConfChange::AddVoter(NodeId(4))))));
        held.remove(&NodeId(4));
        assert!(!reconcile(&table, &observed, &held, LIMITS).contains(&remove), "node 4 did not answer");
    }

    /// A drained node that no shard names any more is forgotten only once it answers that it
    /// holds no replica (it leaves the meta group then, and could never learn that it may delete
    /// one); a failed node is forgotten without an answer.
    #[test]
    fn a_drained_node_is_forgotten_only_once_it_reports_no_replica() {
        let (mut table, mut observed) = situation([1, 2, 4], [1, 2, 4], 1, &[1, 2, 4], 0);
        seen_mut(&mut observed).learners.clear();
        seen_mut(&mut observed).committed_members = Some([1, 2, 4].map(NodeId).into());
        let draining = TableChange::SetNodeState { id: NodeId(3), state: NodeState::Draining };
        table.apply(&TableCommand { expected_version: None, change: draining }).expect("a known node");
        let members = TableChange::RecordMembers { shard: ShardId(0), members: [1, 2, 4].map(NodeId).into(), at: 1 };
        table.apply(&TableCommand { expected_version: None, change: members }).expect("a shard");
        seen_mut(&mut observed).commit = Index(1);
        let forget = Action::Table(TableCommand {
            expected_version: Some(table.version()),
            change: TableChange::RemoveNode { id: NodeId(3) },
        });
        let mut held: Holdings = [1, 2, 4].map(|id| (NodeId(id), [ShardId(0)].into())).into();
        assert!(!reconcile(&table, &observed, &held, LIMITS).contains(&forget), "node 3 did not answer");
        held.insert(NodeId(3), [ShardId(0)].into());
        assert!(!reconcile(&table, &observed, &held, LIMITS).contains(&forget), "node 3 still holds shard 0");
        held.insert(NodeId(3), BTreeSet::new());
        assert!(reconcile(&table, &observed, &held, LIMITS).contains(&forget), "node 3 is empty");
        // A failed node is not waited for.
        let failed = TableChange::SetNodeState { id: NodeId(3), state: NodeState::Failed };
        table.apply(&TableCommand { expected_version: None, change: failed }).expect("a known node");
        held.remove(&NodeId(3));
        let forget = Action::Table(TableCommand {
            expected_version: Some(table.version()),
            change: TableChange::RemoveNode { id: NodeId(3) },
        });
        assert!(reconcile(&table, &observed, &held, LIMITS).contains(&forget));
    }

    fn changes(table: &RoutingTable, observed: &BTreeMap<ShardId, Observed>) -> Vec<Action> {
        reconcile(table, observed, &everywhere(table), LIMITS)
            .into_iter()
            .filter(|action| matches!(action, Action::Change { .. }))
            .collect()
    }

    #[test]
    fn no_voter_change_leaves_a_shard_without_a_ready_majority() {
        // Node 4 is silent: it does not vote, however low its lag (even where 1 and 2 would do).
        let (table, observed) = situation([1, 2, 4], [1, 2, 3], 2, &[1, 2, 3], 0);
        assert_eq!(changes(&table, &observed), vec![], "a silent learner does not vote");
        // Node 4 is heard from: 2 and 4 of 1, 2, 4 are ready, and 2 and 3 of 1, 2, 3.
        let (table, observed) = situation([1, 2, 4], [1, 2, 3], 2, &[2, 3, 4], 0);
        let swap = Action::Change {
            shard: ShardId(0),
            changes: vec![ConfChange::AddVoter(NodeId(4)), ConfChange::Remove(NodeId(3))],
        };
        assert_eq!(changes(&table, &observed), vec![swap]);
    }

    /// When the replica that leaves is the leader's, leadership goes first to a caught-up voter
    /// that stays (the swap comes at the next round, from the new leader).
    #[test]
    fn a_leader_hands_over_before_its_replica_leaves() {
        let (table, observed) = situation([1, 2, 4], [1, 2, 3], 3, &[2, 3, 4], 0);
        let actions = reconcile(&table, &observed, &everywhere(&table), LIMITS);
        assert!(actions.contains(&Action::TransferLeader { shard: ShardId(0), to: NodeId(2) }), "{actions:?}");
        assert_eq!(changes(&table, &observed), vec![], "no swap while it leads");
        // Led by a voter that stays: the swap itself.
        let (table, observed) = situation([1, 2, 4], [1, 2, 3], 2, &[2, 3, 4], 0);
        let swap = Action::Change {
            shard: ShardId(0),
            changes: vec![ConfChange::AddVoter(NodeId(4)), ConfChange::Remove(NodeId(3))],
        };
        assert_eq!(changes(&table, &observed), vec![swap]);
    }

    #[test]
    fn no_removal_leaves_a_shard_without_a_ready_majority() {
        // Voters 1, 2, 3, node 1 silent; a table of 1, 2 (say an operator's) would leave voters
        // 1, 2, which need both while only 2 answers: refused, where it would block the shard.
        let (mut table, observed) = situation([1, 2, 3], [1, 2, 3], 2, &[2, 3], 0);
        let shrink = TableChange::SetReplicas { shard: ShardId(0), replicas: [1, 2].map(NodeId).into() };
        table.apply(&TableCommand { expected_version: Some(table.version()), change: shrink }).expect("one removal");
        assert_eq!(changes(&table, &observed), vec![]);
    }

    #[test]
    fn a_move_to_a_node_that_failed_is_rolled_back() {
        let mut model = Model::new(2, 1);
        let address = SocketAddr::from(([127, 0, 0, 1], 1));
        model.table_change(TableChange::AddNode { id: NodeId(4), raft: address, http: address });
        model.alive.insert(NodeId(4), true);
        let set = TableChange::SetReplicas { shard: ShardId(0), replicas: [1, 2, 4].map(NodeId).into() };
        model
            .table
            .apply(&TableCommand { expected_version: Some(model.table.version()), change: set })
            .expect("one move");
        model.act(&Action::AddLearner { shard: ShardId(0), node: NodeId(4) });
        model.table_change(TableChange::SetNodeState { id: NodeId(4), state: NodeState::Failed });
        let observed = model.observe();
        let back = Action::Table(TableCommand {
            expected_version: Some(model.table.version()),
            change: TableChange::SetReplicas { shard: ShardId(0), replicas: [1, 2, 3].map(NodeId).into() },
        });
        assert!(reconcile(&model.table, &observed, &model.holdings(), LIMITS).contains(&back));
        model.act(&back);
        let remove = Action::Change { shard: ShardId(0), changes: vec![ConfChange::Remove(NodeId(4))] };
        let observed = model.observe();
        assert!(reconcile(&model.table, &observed, &model.holdings(), LIMITS).contains(&remove));
    }

    /// A group whose voters are far from the table (a lost-quorum recovery left node 3 its only
    /// voter; nodes 1 and 2 are failed) gets the table back to its voters one node at a time, as
    /// the table takes changes.
    #[test]
    fn a_table_far_from_its_group_is_set_back_one_node_at_a_time() {
        let address = SocketAddr::from(([127, 0, 0, 1], 1));
        let entry = NodeEntry { raft: address, http: address, state: NodeState::Active };
        let nodes = (1..=3).map(|id| (NodeId(id), entry)).collect();
        let create = TableChange::Create { replication: 3, nodes, replicas: vec![[1, 2, 3].map(NodeId).into()] };
        let mut table = RoutingTable::default();
        table.apply(&TableCommand { expected_version: None, change: create }).expect("a valid table");
        for id in [1, 2] {
            let failed = TableChange::SetNodeState { id: NodeId(id), state: NodeState::Failed };
            table.apply(&TableCommand { expected_version: None, change: failed }).expect("a known node");
        }
        let seen = Observed {
            leader: NodeId(3),
            voters: [NodeId(3)].into(),
            lag_entries: BTreeMap::new(),
            recently_active: [NodeId(3)].into(),
            ..Observed::default()
        };
        let observed = BTreeMap::from([(ShardId(0), seen)]);
        for expected in [vec![2, 3], vec![3]] {
            let back = reconcile(&table, &observed, &everywhere(&table), LIMITS)
                .into_iter()
                .find_map(|action| match action {
                    Action::Table(command @ TableCommand { change: TableChange::SetReplicas { .. }, .. }) => {
                        Some(command)
                    }
                    _ => None,
                })
                .expect("a step back");
            let TableChange::SetReplicas { replicas, .. } = &back.change else { unreachable!("matched above") };
            assert_eq!(*replicas, expected.iter().map(|id| NodeId(*id)).collect());
            table.apply(&back).expect("the table takes the step");
        }
    }

    /// A committed membership that differs from the table's record is recorded; a joint one, or
    /// one the record already has, is not.
    #[test]
    fn committed_members_are_recorded_before_the_shard_moves() {
        let (table, mut observed) = situation([1, 2, 3], [1, 2, 3], 1, &[1, 2, 3], 0);
        let seen = observed.get_mut(&ShardId(0)).expect("shard 0");
        seen.committed_members = Some([1, 2, 3, 4].map(NodeId).into());
        seen.commit = Index(9);
        let record = TableChange::RecordMembers { shard: ShardId(0), members: [1, 2, 3, 4].map(NodeId).into(), at: 9 };
        let actions = reconcile(&table, &observed, &everywhere(&table), LIMITS);
        assert!(actions.contains(&Action::Table(TableCommand { expected_version: None, change: record })));
        // Recorded: nothing more to record. A joint membership is never recorded.
        seen_mut(&mut observed).committed_members = Some([1, 2, 3].map(NodeId).into());
        assert!(!reconcile(&table, &observed, &everywhere(&table), LIMITS).iter().any(is_record));
        seen_mut(&mut observed).committed_members = None;
        assert!(!reconcile(&table, &observed, &everywhere(&table), LIMITS).iter().any(is_record));
    }

    /// A report below the record's index is ignored, unless its leader's replica was recovered
    /// (a lost-quorum recovery restarts the group's history from a survivor's shorter log): then
    /// the record is reset to it.
    #[test]
    fn a_recovered_group_resets_a_record_from_before_the_recovery() {
        let (mut table, mut observed) = situation([1, 2, 3], [1, 2, 3], 1, &[1, 2, 3], 0);
        let record =
            TableChange::RecordMembers { shard: ShardId(0), members: [1, 2, 3, 4].map(NodeId).into(), at: 900 };
        table.apply(&TableCommand { expected_version: None, change: record }).expect("recorded");
        let seen = seen_mut(&mut observed);
        seen.committed_members = Some([NodeId(1)].into());
        seen.voters = [NodeId(1)].into();
        seen.commit = Index(502);
        let records = |table: &RoutingTable, observed: &BTreeMap<ShardId, Observed>| -> Vec<TableChange> {
            reconcile(table, observed, &everywhere(table), LIMITS)
                .into_iter()
                .filter_map(|action| match action {
                    Action::Table(TableCommand {
                        change: change @ (TableChange::RecordMembers { .. } | TableChange::ResetMembers { .. }),
                        ..
                    }) => Some(change),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(records(&table, &observed), vec![], "an ordinary report below the record");
        seen_mut(&mut observed).recovered = true;
        let reset = TableChange::ResetMembers { shard: ShardId(0), members: [NodeId(1)].into(), at: 502 };
        assert_eq!(records(&table, &observed), vec![reset]);
        seen_mut(&mut observed).commit = Index(901);
        let record = TableChange::RecordMembers { shard: ShardId(0), members: [NodeId(1)].into(), at: 901 };
        assert_eq!(records(&table, &observed), vec![record], "above the record: an ordinary record");
        // The same members as the record, below its index: the index comes down.
        let (mut table, mut observed) = situation([1, 2, 3], [1, 2, 3], 1, &[1, 2, 3], 0);
        let record = TableChange::RecordMembers { shard: ShardId(0), members: [NodeId(1)].into(), at: 900 };
        table.apply(&TableCommand { expected_version: None, change: record }).expect("recorded");
        let seen = seen_mut(&mut observed);
        (seen.committed_members, seen.voters) = (Some([NodeId(1)].into()), [NodeId(1)].into());
        (seen.commit, seen.recovered) = (Index(40), true);
        let reset = TableChange::ResetMembers { shard: ShardId(0), members: [NodeId(1)].into(), at: 40 };
        assert_eq!(records(&table, &observed), vec![reset]);
        // Never from a group that is no longer the recovered node alone (a later leader, whose
        // commit index may lag, or a deposed one): the record must not move back.
        let seen = seen_mut(&mut observed);
        (seen.committed_members, seen.voters) = (Some([1, 2].map(NodeId).into()), [1, 2].map(NodeId).into());
        assert_eq!(records(&table, &observed), vec![], "not the shape a recovery leaves");
        let seen = seen_mut(&mut observed);
        (seen.committed_members, seen.voters, seen.learners) =
            (Some([1, 2].map(NodeId).into()), [NodeId(1)].into(), [NodeId(2)].into());
        assert_eq!(records(&table, &observed), vec![], "a learner already added");
    }

    fn seen_mut(observed: &mut BTreeMap<ShardId, Observed>) -> &mut Observed {
        observed.get_mut(&ShardId(0)).expect("shard 0")
    }

    fn is_record(action: &Action) -> bool {
        matches!(action, Action::Table(TableCommand { change: TableChange::RecordMembers { .. }, .. }))
    }
}
