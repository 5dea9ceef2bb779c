//! What the real-stack simulation sees of its nodes, from outside them (so it survives their
//! crashes), and the checks it makes on it: election safety from the driver's events, state
//! machine safety from the applied commands, typed stops only, stores that always reopen after a
//! crash, and (kept by the clients) the history for the linearizability checker. A node may host
//! several Raft groups: election and state machine safety are judged per group (each group has
//! terms and indexes of its own), and every observation names its group.
//!
//! The simulation is single-threaded: the `Arc<Mutex<_>>` only satisfies the driver's `Send`
//! bounds on the state machine; it is never contended.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use raft_core::{GroupId, Index, NodeId, Term};

use crate::checkers::{ElectionSafety, FNV_START, Violation, fnv};
use crate::linearizability::Operation;

/// Shared by every host, client and the fault loop of one run.
#[derive(Clone, Default)]
pub(crate) struct Observer(Arc<Mutex<Observed>>);

/// Everything observed in one run.
#[derive(Default)]
pub(crate) struct Observed {
    /// Per group.
    election: BTreeMap<GroupId, ElectionSafety>,
    /// Per group: the chain hash of the applied commands up to each command's index, and a
    /// digest of the state it produced, as first applied.
    chains: BTreeMap<(GroupId, Index), (u64, u64)>,
    /// The nodes whose store (`DiskStorage`, or the shared log) was created durably (it must
    /// reopen from then on).
    pub(crate) created: BTreeSet<NodeId>,
    /// The groups created durably in each node's shared log (they must be there on reopening).
    pub(crate) groups_created: BTreeSet<(NodeId, GroupId)>,
    /// How many times each node was started, for a fresh seed per incarnation.
    pub(crate) starts: BTreeMap<NodeId, u64>,
    /// The first violation seen.
    pub(crate) violation: Option<Violation>,
    /// The client operations, in the order they ended.
    pub(crate) history: Vec<Operation>,
    /// A hash of every observation, in order: two runs of one seed must agree on it.
    pub(crate) trace: u64,
    pub(crate) stats: RealStats,
}

/// Counts of one run (or, summed, of many).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RealStats {
    /// Node starts after the first (restarts after crashes, bounces and fail-stops).
    pub restarts: u64,
    /// Crashes (power losses) injected.
    pub crashes: u64,
    /// Process pauses injected.
    pub pauses: u64,
    /// Partitions, one-way partitions and holds injected.
    pub partitions: u64,
    /// Nodes that stopped on a storage failure (fail-stop, typed).
    pub storage_failures: u64,
    /// Stores that refused to open with a typed error (only where disk faults are injected).
    pub open_failures: u64,
    /// Leaders elected (distinct terms with a leader).
    pub leaders: u64,
    /// Snapshots restored by state machines.
    pub restores: u64,
    /// Membership changes (demotions, promotions) and leadership transfers done.
    pub membership_changes: u64,
    /// The most groups seen quiet on one node at once, summed over nodes' incarnations
    /// (quiescence seeds).
    pub quiet_groups: u64,
    /// Peers reported down to the groups by the hosts' liveness watches (quiescence seeds).
    pub peer_downs: u64,
    /// Node-level liveness pings sent (quiescence seeds).
    pub pings: u64,
    /// Client writes answered.
    pub writes: u64,
    /// Client reads answered.
    pub reads: u64,
    /// Client operations whose outcome stayed unknown (timeouts).
    pub unknown: u64,
    /// Simulated milliseconds.
    pub simulated_ms: u64,
}

impl RealStats {
    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &RealStats) {
        self.restarts += other.restarts;
        self.crashes += other.crashes;
        self.pauses += other.pauses;
        self.partitions += other.partitions;
        self.storage_failures += other.storage_failures;
        self.open_failures += other.open_failures;
        self.leaders += other.leaders;
        self.restores += other.restores;
        self.membership_changes += other.membership_changes;
        self.quiet_groups += other.quiet_groups;
        self.peer_downs += other.peer_downs;
        self.pings += other.pings;
        self.writes += other.writes;
        self.reads += other.reads;
        self.unknown += other.unknown;
        self.simulated_ms += other.simulated_ms;
    }
}

impl Observer {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Observed> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Observed {
    /// Records the first violation (later ones are consequences, usually).
    pub(crate) fn violate(&mut self, property: &'static str, detail: String) {
        self.trace(&[0xff]);
        if self.violation.is_none() {
            self.violation = Some(Violation { property, detail });
        }
    }

    /// Mixes `bytes` into the trace hash.
    pub(crate) fn trace(&mut self, bytes: &[u8]) {
        self.trace = fnv(if self.trace == 0 { FNV_START } else { self.trace }, bytes);
    }

    /// `node` reported that it leads `term` of `group`.
    pub(crate) fn leader(&mut self, group: GroupId, node: NodeId, term: Term) {
        self.trace(&[1, node.0 as u8, group.0 as u8]);
        self.trace(&term.0.to_le_bytes());
        let election = self.election.entry(group).or_default();
        let before = election.terms_with_leader();
        let observed = election.observe_leader(node, term);
        self.stats.leaders += (election.terms_with_leader() - before) as u64;
        if let Err(violation) = observed {
            self.violate(violation.property, format!("group {group}: {}", violation.detail));
        }
    }

    /// `node`'s state machine of `group` applied the command at `index`, reaching `chain` and a
    /// state whose digest is `state`.
    pub(crate) fn applied(&mut self, group: GroupId, node: NodeId, index: Index, chain: u64, state: u64) {
        self.trace(&[2, node.0 as u8, group.0 as u8]);
        self.trace(&index.0.to_le_bytes());
        match self.chains.get(&(group, index)) {
            Some(&expected) if expected != (chain, state) => self.violate(
                "state machine safety",
                format!("group {group}: node {node} applied a different command history up to index {index}"),
            ),
            Some(_) => {}
            None => {
                self.chains.insert((group, index), (chain, state));
            }
        }
    }

    /// `node`'s state machine was restored from a snapshot whose last command is `last` with the
    /// chain `chain` and a state whose digest is `state`, while it had applied up to `applied` in
    /// this incarnation. Both must equal what applying up to `last` gave.
    pub(crate) fn restored(
        &mut self,
        group: GroupId,
        node: NodeId,
        (applied, last): (Index, Index),
        chain: u64,
        state: u64,
    ) {
        self.trace(&[3, node.0 as u8, group.0 as u8]);
        self.trace(&last.0.to_le_bytes());
        self.stats.restores += 1;
        if last < applied {
            self.violate(
                "state machine never rolls back",
                format!(
                    "group {group}: node {node} went back from command {applied} to a snapshot ending at command {last}"
                ),
            );
            return;
        }
        let empty = fnv(FNV_START, &crate::kv::KvState::default().encode());
        let expected =
            if last == Index(0) { Some((FNV_START, empty)) } else { self.chains.get(&(group, last)).copied() };
        match expected {
            Some(expected) if expected == (chain, state) => {}
            Some(_) => self.violate(
                "state machine safety (snapshot)",
                format!("group {group}: node {node} restored a snapshot of a different history at command {last}"),
            ),
            None => self.violate(
                "state machine safety (snapshot)",
                format!(
                    "group {group}: node {node} restored a snapshot ending at command {last}, which nobody applied"
                ),
            ),
        }
    }
}
