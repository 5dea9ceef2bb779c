//! Where replicas should live: one change at a time toward a placement where every shard has its
//! replication factor's worth of replicas, all on active nodes, and the active nodes' replica
//! counts differ by at most one.
//!
//! [`next_change`] is a pure function of the table, so the controller that calls it keeps no
//! state: after a crash, the next controller computes the same next step from the same table.
//! Each change adds at most one replica to one shard and removes at most one (what
//! [`TableChange::SetReplicas`](super::TableChange::SetReplicas) accepts), and no node can hold two
//! replicas of a shard (a shard's replicas are a set).

use std::collections::{BTreeMap, BTreeSet};

use raft_core::NodeId;

use super::{NodeState, RoutingTable, ShardId};

/// One step: a shard gains a replica, loses one, or both (a move).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The shard.
    pub shard: ShardId,
    /// The node that loses its replica of the shard, if any.
    pub remove: Option<NodeId>,
    /// The node that gains a replica of the shard, if any.
    pub add: Option<NodeId>,
    /// The shard's replicas after the change.
    pub replicas: BTreeSet<NodeId>,
}

/// The first replicas of a new cluster's `shards` shards on `nodes`: each shard in turn takes the
/// `replication` least-loaded nodes (ties go to the nodes after the shard's number in id order,
/// so that equal loads rotate). No shard has two replicas on one node (a set), and the replica
/// counts differ by at most one: if they do before a shard, taking the least-loaded nodes keeps
/// it so. With fewer nodes than `replication`, every shard is on every node.
pub fn initial(nodes: &BTreeSet<NodeId>, shards: u32, replication: usize) -> Vec<BTreeSet<NodeId>> {
    let nodes: Vec<NodeId> = nodes.iter().copied().collect();
    let mut loads = vec![0usize; nodes.len()];
    let mut placed = Vec::with_capacity(shards as usize);
    for shard in 0..shards as usize {
        let mut order: Vec<usize> = (0..nodes.len()).collect();
        order.sort_by_key(|&i| (loads[i], (i + nodes.len() - shard % nodes.len().max(1)) % nodes.len().max(1)));
        let chosen: BTreeSet<NodeId> = order.iter().take(replication).map(|&i| nodes[i]).collect();
        for &i in order.iter().take(replication) {
            loads[i] += 1;
        }
        placed.push(chosen);
    }
    placed
}

/// The next change toward the target placement, skipping the shards in `busy` (those with a move
/// still under way); `None` when the placement is reached or only busy shards could change.
///
/// In order of urgency: replicas on failed nodes, then on draining nodes, are moved to the
/// least-loaded active node that lacks the shard; with no such node, a failed node's replica is
/// dropped but a draining node's waits for a node to join (unless the shard has more replicas
/// than the replication factor). Then shards with too few replicas on active nodes gain one,
/// shards with too many lose their most-loaded one; and last, a replica moves from the
/// most-loaded active node to the least-loaded one while their counts differ by two or more.
pub fn next_change(table: &RoutingTable, busy: &BTreeSet<ShardId>) -> Option<Change> {
    let active: BTreeSet<NodeId> =
        table.nodes().iter().filter(|(_, entry)| entry.state == NodeState::Active).map(|(id, _)| *id).collect();
    if active.is_empty() {
        return None;
    }
    let replication = table.replication().min(active.len());
    let loads: BTreeMap<NodeId, usize> = active.iter().map(|node| (*node, table.load(*node))).collect();
    let free = || table.shards().filter(|(shard, _)| !busy.contains(shard));
    let state = |node: &NodeId| table.nodes().get(node).map(|entry| entry.state);
    for leaving in [NodeState::Failed, NodeState::Draining] {
        for (shard, entry) in free() {
            let Some(from) = entry.replicas.iter().find(|node| state(node) == Some(leaving)) else { continue };
            match least_loaded(&loads, &entry.replicas) {
                Some(to) => return Some(change(shard, &entry.replicas, Some(*from), Some(to))),
                // No spare node: a failed node's replica is dropped (it serves nothing); a
                // draining node's stays until a node joins, unless the shard has more than
                // enough replicas anyway (draining is no reason to run a shard short).
                None if (leaving == NodeState::Failed || entry.replicas.len() > table.replication())
                    && entry.replicas.len() > 1 =>
                {
                    return Some(change(shard, &entry.replicas, Some(*from), None));
                }
                None => {}
            }
        }
    }
    for (shard, entry) in free() {
        let on_active = entry.replicas.iter().filter(|node| active.contains(node)).count();
        if on_active < replication {
            return Some(change(shard, &entry.replicas, None, least_loaded(&loads, &entry.replicas)));
        }
        if on_active > replication {
            let most = entry
                .replicas
                .iter()
                .filter(|node| active.contains(node))
                .max_by_key(|node| (loads.get(node).copied().unwrap_or(0), **node));
            return Some(change(shard, &entry.replicas, most.copied(), None));
        }
    }
    let (most, most_load) = loads.iter().max_by_key(|(node, load)| (**load, **node))?;
    let (least, least_load) = loads.iter().min_by_key(|(node, load)| (**load, **node))?;
    if most_load - least_load < 2 {
        return None;
    }
    let (shard, entry) = free().find(|(_, entry)| entry.replicas.contains(most) && !entry.replicas.contains(least))?;
    Some(change(shard, &entry.replicas, Some(*most), Some(*least)))
}

/// The active node with the fewest replicas (the lowest id among equals) outside `replicas`.
fn least_loaded(loads: &BTreeMap<NodeId, usize>, replicas: &BTreeSet<NodeId>) -> Option<NodeId> {
    loads
        .iter()
        .filter(|(node, _)| !replicas.contains(node))
        .min_by_key(|(node, load)| (**load, **node))
        .map(|(node, _)| *node)
}

fn change(shard: ShardId, replicas: &BTreeSet<NodeId>, remove: Option<NodeId>, add: Option<NodeId>) -> Change {
    let mut next = replicas.clone();
    next.extend(add);
    if let Some(remove) = remove {
        next.remove(&remove);
    }
    Change { shard, remove, add, replicas: next }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use proptest::prelude::*;

    use super::*;
    use crate::shards::{NodeEntry, TableChange, TableCommand};

    /// A created table: `states[i]` is node `i + 1`'s state; `replicas[s]` shard `s`'s replicas
    /// (indexes into `states`, each set kept non-empty).
    fn table(states: &[NodeState], replication: u8, replicas: &[Vec<usize>]) -> RoutingTable {
        let address = SocketAddr::from(([127, 0, 0, 1], 1));
        let nodes = (0..states.len())
            .map(|i| (NodeId(i as u64 + 1), NodeEntry { raft: address, http: address, state: NodeState::Active }));
        let replicas = replicas.iter().map(|set| set.iter().map(|i| NodeId(*i as u64 + 1)).collect()).collect();
        let mut table = RoutingTable::default();
        let create = TableChange::Create { replication, nodes: nodes.collect(), replicas };
        table.apply(&TableCommand { expected_version: None, change: create }).expect("a valid table");
        for (i, state) in states.iter().enumerate() {
            let change = TableChange::SetNodeState { id: NodeId(i as u64 + 1), state: *state };
            table.apply(&TableCommand { expected_version: None, change }).expect("a known node");
        }
        table
    }

    proptest! {
        /// The first placement holds both invariants, and placement finds nothing to change.
        #[test]
        fn initial_placement_is_balanced(nodes in 1usize..9, shards in 1u32..70, replication in 1usize..=5) {
            let ids: BTreeSet<NodeId> = (1..=nodes as u64).map(NodeId).collect();
            let replicas = initial(&ids, shards, replication);
            prop_assert_eq!(replicas.len(), shards as usize);
            for set in &replicas {
                prop_assert_eq!(set.len(), replication.min(nodes));
            }
            let loads: Vec<usize> = ids.iter().map(|id| replicas.iter().filter(|set| set.contains(id)).count()).collect();
            let (least, most) = (loads.iter().min().copied(), loads.iter().max().copied());
            prop_assert!(most.zip(least).is_some_and(|(most, least)| most - least <= 1), "loads {:?}", loads);
            let indexes: Vec<Vec<usize>> =
                replicas.iter().map(|set| set.iter().map(|id| id.0 as usize - 1).collect()).collect();
            let table = table(&vec![NodeState::Active; nodes], replication as u8, &indexes);
            prop_assert_eq!(next_change(&table, &BTreeSet::new()), None);
        }
    }

    /// Applies changes until none is left; returns how many were made.
    fn converge(table: &mut RoutingTable) -> usize {
        let mut changes = 0;
        while let Some(change) = next_change(table, &BTreeSet::new()) {
            let command = TableCommand {
                expected_version: Some(table.version()),
                change: TableChange::SetReplicas { shard: change.shard, replicas: change.replicas.clone() },
            };
            table.apply(&command).expect("every change is one the table accepts");
            changes += 1;
            assert!(changes < 10_000, "placement does not converge: {table:?}");
        }
        changes
    }

    fn state() -> impl Strategy<Value = NodeState> {
        prop_oneof![6 => Just(NodeState::Active), 1 => Just(NodeState::Draining), 1 => Just(NodeState::Failed)]
    }

    proptest! {
        #[test]
        fn placement_converges_to_a_balanced_one(
            states in prop::collection::vec(state(), 1..9),
            replication in 1u8..6,
            shards in prop::collection::vec(prop::collection::btree_set(0usize..8, 1..5), 1..24),
        ) {
            let replicas: Vec<Vec<usize>> = shards.iter().map(|set| set.iter().map(|i| i % states.len()).collect::<BTreeSet<_>>().into_iter().collect()).collect();
            let mut table = table(&states, replication, &replicas);
            converge(&mut table);
            let active: Vec<NodeId> = table.nodes().iter().filter(|(_, n)| n.state == NodeState::Active).map(|(id, _)| *id).collect();
            if active.is_empty() {
                return Ok(());
            }
            let want = usize::from(replication).min(active.len());
            for (shard, entry) in table.shards() {
                let on_active = entry.replicas.iter().filter(|node| active.contains(node)).count();
                prop_assert_eq!(on_active, want, "shard {}", shard);
                for node in entry.replicas.iter().filter(|node| !active.contains(node)) {
                    // Only a draining node keeps a replica, and only when no active node could
                    // take it and the shard is not over-replicated.
                    prop_assert_eq!(table.nodes()[node].state, NodeState::Draining, "shard {}", shard);
                    prop_assert!(active.iter().all(|spare| entry.replicas.contains(spare)), "shard {}", shard);
                    prop_assert!(entry.replicas.len() <= usize::from(replication), "shard {}", shard);
                }
            }
            let loads: Vec<usize> = active.iter().map(|node| table.load(*node)).collect();
            let (min, max) = (loads.iter().min().copied().unwrap_or(0), loads.iter().max().copied().unwrap_or(0));
            prop_assert!(max - min <= 1, "loads {:?}", loads);
        }
    }

    #[test]
    fn a_joining_node_takes_a_fair_share() {
        let states = [NodeState::Active; 4];
        let mut table = table(&states, 3, &vec![vec![0, 1, 2]; 8]);
        let changes = converge(&mut table);
        // 24 replicas over 4 nodes: 6 each, so 6 moves to node 4 and no more.
        assert_eq!(changes, 6);
        assert!((1..=4).all(|node| table.load(NodeId(node)) == 6));
    }

    #[test]
    fn a_failed_node_is_replaced_before_a_draining_one() {
        let states = [NodeState::Active, NodeState::Draining, NodeState::Failed, NodeState::Active];
        let table = table(&states, 3, &[vec![0, 1, 2]]);
        let change = next_change(&table, &BTreeSet::new()).expect("work to do");
        assert_eq!((change.remove, change.add), (Some(NodeId(3)), Some(NodeId(4))));
    }

    #[test]
    fn a_draining_node_keeps_its_replicas_until_a_node_joins_but_a_failed_one_does_not() {
        let draining = table(&[NodeState::Active, NodeState::Active, NodeState::Draining], 3, &[vec![0, 1, 2]]);
        assert_eq!(next_change(&draining, &BTreeSet::new()), None, "no shard runs short to drain a node");
        let failed = table(&[NodeState::Active, NodeState::Active, NodeState::Failed], 3, &[vec![0, 1, 2]]);
        let change = next_change(&failed, &BTreeSet::new()).expect("the failed replica goes");
        assert_eq!((change.remove, change.add), (Some(NodeId(3)), None));
    }

    #[test]
    fn busy_shards_wait() {
        let states = [NodeState::Active, NodeState::Active, NodeState::Failed];
        let table = table(&states, 2, &[vec![0, 2], vec![1, 2]]);
        let busy: BTreeSet<ShardId> = [ShardId(0)].into();
        assert_eq!(next_change(&table, &busy).map(|change| change.shard), Some(ShardId(1)));
        let all: BTreeSet<ShardId> = [ShardId(0), ShardId(1)].into();
        assert_eq!(next_change(&table, &all), None);
    }

    #[test]
    fn nothing_moves_without_an_active_node() {
        let table = table(&[NodeState::Failed, NodeState::Draining], 2, &[vec![0, 1]]);
        assert_eq!(next_change(&table, &BTreeSet::new()), None);
    }
}
