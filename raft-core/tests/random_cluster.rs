//! Randomized clusters of 3 and 5 nodes over a network that loses, duplicates and reorders
//! messages, checked after every step for election safety and for committed entries that never
//! change, and at the end (after a fault-free healing phase) for identical committed logs and
//! identical applied sequences.
//!
//! Everything is driven by one proptest-chosen seed and a few proptest-chosen tunables, so a
//! failing case replays exactly. By default the proptest runner itself uses a fixed seed (CI runs
//! the same cases every time); set `PROPTEST_RNG_SEED=<u64>` to explore other schedules and
//! `PROPTEST_CASES=<n>` to run more of them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use raft_core::{
    Entry, EntryPayload, HardState, Index, Membership, Message, NodeId, Options, ProposeError, Raft, Role, SoftState,
    StepError, Term,
};
use raft_storage::MemStorage;

/// Distinct payloads that must be committed before the faults stop.
const COMMITS_TARGET: usize = 1_000;
/// Proposals accepted by a leader and not yet seen committed, at most (keeps the leader's
/// uncommitted bytes and the network's load moderate).
const PENDING_MAX: usize = 48;
/// Steps of the faulty phase before the run is declared stuck.
const STEPS_MAX: u64 = 2_000_000;
/// Rounds of the healing phase: every node ticks once, then the network delivers until quiet.
const HEAL_ROUNDS: usize = 100;
/// Outputs drained from one node in a row before it is declared to loop.
const DRAIN_MAX: usize = 64;
/// Deliveries in one healing round before the network is declared to never go quiet.
const QUIET_DELIVERIES_MAX: usize = 100_000;
/// The runner seed used unless `PROPTEST_RNG_SEED` is set.
const RUNNER_SEED: u64 = 0x5eed_2af7;

/// A tiny, seedable generator (SplitMix64); good enough to schedule a network.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)`; `n` must be positive.
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn percent(&mut self, p: u32) -> bool {
        self.next_u64() % 100 < u64::from(p)
    }
}

/// One run's configuration, chosen by proptest.
#[derive(Clone, Debug)]
struct Params {
    nodes: u64,
    seed: u64,
    loss_percent: u32,
    duplicate_percent: u32,
    /// Share of steps that tick a node: the higher, the longer messages stay in flight in ticks.
    tick_percent: u32,
    /// Per-mille chance per step that a node is cut off from everyone for a while (a burst of
    /// loss that deposes leaders and forces elections).
    isolation_per_mille: u32,
    pre_vote: bool,
    check_quorum: bool,
    message_entries_max: usize,
    message_bytes_max: u64,
    inflight_messages_max: usize,
}

impl Params {
    fn options(&self, id: NodeId) -> Options {
        Options::builder()
            .election_ticks(10)
            .heartbeat_ticks(1)
            .pre_vote(self.pre_vote)
            .check_quorum(self.check_quorum)
            .message_entries_max(self.message_entries_max)
            .message_bytes_max(self.message_bytes_max)
            .inflight_messages_max(self.inflight_messages_max)
            .uncommitted_bytes_max(self.message_bytes_max.max(2_048) * 2)
            .rng_seed(self.seed ^ id.0.wrapping_mul(0x2545_F491_4F6C_DD1D))
            .build()
            .expect("valid options")
    }
}

fn params(nodes: u64) -> impl Strategy<Value = Params> {
    let faults = (any::<u64>(), 5u32..=15, 0u32..=8, 5u32..=20, 0u32..=6);
    let tunables = (any::<bool>(), any::<bool>(), 1usize..=64, 96u64..=2_048, 1usize..=8);
    (faults, tunables).prop_map(
        move |((seed, loss, dup, tick, isolation), (pre_vote, check_quorum, entries, bytes, inflight))| Params {
            nodes,
            seed,
            loss_percent: loss,
            duplicate_percent: dup,
            tick_percent: tick,
            isolation_per_mille: isolation,
            pre_vote,
            check_quorum,
            message_entries_max: entries,
            message_bytes_max: bytes,
            inflight_messages_max: inflight,
        },
    )
}

/// A unique payload: the id in 8 bytes, then 0..=31 bytes of padding so sizes vary.
fn payload(id: u64) -> Bytes {
    let mut data = id.to_le_bytes().to_vec();
    data.resize(8 + (id.wrapping_mul(7) % 32) as usize, id as u8);
    Bytes::from(data)
}

fn payload_id(data: &Bytes) -> u64 {
    let bytes: [u8; 8] = data.get(..8).and_then(|b| b.try_into().ok()).expect("payloads start with an 8-byte id");
    u64::from_le_bytes(bytes)
}

/// The cluster, its network, the driver's bookkeeping, and the global observations checked after
/// every step.
struct Sim {
    params: Params,
    rng: SplitMix,
    nodes: BTreeMap<NodeId, Raft<MemStorage>>,
    /// Messages in flight, delivered in random order.
    bag: Vec<Message>,
    /// Every committed entry each node handed out, in order.
    applied: BTreeMap<NodeId, Vec<Entry>>,
    /// Election safety: the one leader of each term, from roles and known leaders.
    leaders: BTreeMap<Term, NodeId>,
    /// One vote per voter per term, from persisted hard states.
    votes: BTreeMap<(NodeId, Term), NodeId>,
    /// The last hard state each node persisted.
    hard_states: BTreeMap<NodeId, HardState>,
    /// Leader completeness / state machine safety: every entry seen committed anywhere.
    committed: BTreeMap<Index, Entry>,
    /// Payload ids seen committed.
    committed_payloads: BTreeSet<u64>,
    /// Accepted proposals not yet seen committed: payload id -> term of the accepting leader.
    pending: BTreeMap<u64, Term>,
    /// Payloads to propose again (refused, or possibly lost with a deposed leader).
    retry: VecDeque<u64>,
    next_payload: u64,
    steps: u64,
    /// A node whose every message is dropped, and the step at which it reconnects.
    isolated: Option<(NodeId, u64)>,
}

impl Sim {
    fn new(params: Params) -> Self {
        let voters: Vec<NodeId> = (1..=params.nodes).map(NodeId).collect();
        let nodes = voters
            .iter()
            .map(|&id| {
                let storage = MemStorage::new(Membership::new(voters.iter().copied()));
                (id, Raft::new(id, params.options(id), storage).expect("memory storage never fails"))
            })
            .collect();
        Sim {
            rng: SplitMix(params.seed),
            params,
            nodes,
            bag: Vec::new(),
            applied: voters.iter().map(|&id| (id, Vec::new())).collect(),
            leaders: BTreeMap::new(),
            votes: BTreeMap::new(),
            hard_states: BTreeMap::new(),
            committed: BTreeMap::new(),
            committed_payloads: BTreeSet::new(),
            pending: BTreeMap::new(),
            retry: VecDeque::new(),
            next_payload: 0,
            steps: 0,
            isolated: None,
        }
    }

    fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    fn node(&mut self, id: NodeId) -> &mut Raft<MemStorage> {
        self.nodes.get_mut(&id).expect("known node")
    }

    /// Follows the driving contract for one node until it has nothing more to do: persist hard
    /// state and entries, report durability, apply, then send both message lists (persistence
    /// is immediate, so `messages_after_persist` may go out at once).
    fn drain(&mut self, id: NodeId) {
        for _ in 0..DRAIN_MAX {
            if !self.nodes[&id].has_output() {
                return;
            }
            let output = self.node(id).take_output().expect("memory storage never fails");
            if let Some(soft) = output.soft_state {
                self.observe_soft_state(id, soft);
            }
            if let Some(hard_state) = output.hard_state {
                self.observe_hard_state(id, hard_state);
                self.node(id).storage_mut().set_hard_state(hard_state);
            }
            if let Some(last) = output.entries.last() {
                let (index, term) = (last.index, last.term);
                self.check_overwrite(id, &output.entries);
                self.node(id).storage_mut().append(&output.entries).expect("the core hands out appendable entries");
                self.node(id).on_persisted(index, term);
            }
            self.apply(id, output.committed);
            self.bag.extend(output.messages);
            self.bag.extend(output.messages_after_persist);
        }
        panic!("node {id} still has output after {DRAIN_MAX} rounds: {:?}", self.params);
    }

    fn record_leader(&mut self, term: Term, leader: NodeId, seen_by: NodeId) {
        let known = *self.leaders.entry(term).or_insert(leader);
        assert_eq!(
            known, leader,
            "two leaders in term {term}: {known} and {leader} (seen by node {seen_by}, step {}, {:?})",
            self.steps, self.params
        );
    }

    fn observe_soft_state(&mut self, id: NodeId, soft: SoftState) {
        if soft.role == Role::Leader {
            assert_eq!(soft.leader, Some(id), "a leader that does not know itself");
        }
        if let Some(leader) = soft.leader {
            self.record_leader(soft.term, leader, id);
        }
    }

    /// Every node's role and known leader, after every step.
    fn observe_roles(&mut self) {
        let seen: Vec<(NodeId, Term, Option<NodeId>, Role)> =
            self.nodes.iter().map(|(&id, n)| (id, n.term(), n.leader(), n.role())).collect();
        for (id, term, leader, role) in seen {
            if role == Role::Leader {
                self.record_leader(term, id, id);
            }
            if let Some(leader) = leader {
                self.record_leader(term, leader, id);
            }
        }
    }

    fn observe_hard_state(&mut self, id: NodeId, hard_state: HardState) {
        if let Some(previous) = self.hard_states.insert(id, hard_state) {
            assert!(previous.term <= hard_state.term, "node {id}: term went back {previous:?} -> {hard_state:?}");
            assert!(previous.commit <= hard_state.commit, "node {id}: commit went back {previous:?} -> {hard_state:?}");
            if previous.term == hard_state.term && previous.vote.is_some() {
                assert_eq!(previous.vote, hard_state.vote, "node {id}: vote changed within term {}", hard_state.term);
            }
        }
        if let Some(vote) = hard_state.vote {
            let cast = *self.votes.entry((id, hard_state.term)).or_insert(vote);
            assert_eq!(cast, vote, "node {id} voted twice in term {}", hard_state.term);
        }
    }

    /// An entry a node holds that is known committed must never be replaced or dropped.
    fn check_overwrite(&self, id: NodeId, entries: &[Entry]) {
        let stored = self.nodes[&id].storage().all_entries();
        let first = entries[0].index.0;
        let old_last = stored.len() as u64;
        for index in first..=old_last {
            let old = &stored[(index - 1) as usize];
            let Some(committed) = self.committed.get(&Index(index)) else { continue };
            if old != committed {
                continue;
            }
            let new = entries.get((index - first) as usize);
            assert_eq!(
                new,
                Some(committed),
                "node {id} replaced committed entry {index} (step {}, {:?})",
                self.steps,
                self.params
            );
        }
    }

    fn apply(&mut self, id: NodeId, entries: Vec<Entry>) {
        for entry in entries {
            let applied = self.applied.get_mut(&id).expect("known node");
            let expected = applied.last().map_or(Index(1), |e| e.index.next());
            assert_eq!(entry.index, expected, "node {id} applied out of order");
            match self.committed.get(&entry.index) {
                Some(known) => assert_eq!(
                    known, &entry,
                    "node {id} committed a different entry at {} (step {}, {:?})",
                    entry.index, self.steps, self.params
                ),
                None => {
                    self.committed.insert(entry.index, entry.clone());
                }
            }
            if let EntryPayload::Normal(data) = &entry.payload {
                let payload = payload_id(data);
                self.committed_payloads.insert(payload);
                self.pending.remove(&payload);
            }
            applied.push(entry);
        }
    }

    /// A proposal accepted by the leader of some term may be lost once a later term has a
    /// leader: propose it again (it may then commit twice, which the count of distinct payloads
    /// tolerates).
    fn requeue_possibly_lost(&mut self) {
        let Some((&latest, _)) = self.leaders.last_key_value() else { return };
        let lost: Vec<u64> = self.pending.iter().filter(|&(_, &term)| term < latest).map(|(&p, _)| p).collect();
        for payload in lost {
            self.pending.remove(&payload);
            self.retry.push_back(payload);
        }
    }

    /// The live leader of the highest term, if any.
    fn leader(&self) -> Option<NodeId> {
        self.nodes.iter().filter(|(_, n)| n.role() == Role::Leader).max_by_key(|(_, n)| n.term()).map(|(&id, _)| id)
    }

    fn propose_burst(&mut self) {
        // Mostly on the leader; sometimes on anyone, to exercise refusals.
        let target = match self.leader() {
            Some(leader) if !self.rng.percent(10) => leader,
            _ => {
                let ids = self.ids();
                ids[self.rng.below(ids.len())]
            }
        };
        let burst = 1 + self.rng.below(8);
        for _ in 0..burst {
            if self.pending.len() >= PENDING_MAX {
                break;
            }
            let id = loop {
                match self.retry.pop_front() {
                    Some(id) if self.committed_payloads.contains(&id) => continue,
                    Some(id) => break id,
                    None => {
                        self.next_payload += 1;
                        break self.next_payload;
                    }
                }
            };
            let term = self.nodes[&target].term();
            match self.node(target).propose(payload(id)) {
                Ok(_) => {
                    self.pending.insert(id, term);
                }
                Err(
                    ProposeError::NotLeader { .. }
                    | ProposeError::TooManyUncommittedBytes { .. }
                    | ProposeError::TermNotDurable
                    | ProposeError::TransferInProgress,
                ) => {
                    self.retry.push_front(id);
                    break;
                }
                Err(error @ ProposeError::TooLarge { .. }) => panic!("payloads fit in a message: {error}"),
                Err(error) => panic!("a refusal this test does not know: {error}"),
            }
        }
        self.drain(target);
    }

    fn tick(&mut self, id: NodeId) {
        self.node(id).tick();
        self.drain(id);
    }

    fn deliver(&mut self, message: Message) {
        let to = message.to;
        let result = self.node(to).step(message.clone());
        match result {
            Ok(())
            | Err(
                StepError::Ignored(raft_core::Ignored::StaleTerm { .. })
                | StepError::Ignored(raft_core::Ignored::LeaderSticky { .. })
                | StepError::Ignored(raft_core::Ignored::Unexpected),
            ) => {}
            Err(error) => panic!("honest message refused with {error:?}: {message:?} ({:?})", self.params),
        }
        self.drain(to);
    }

    /// One step of the faulty phase: a proposal burst, a tick of one node, or one message taken
    /// at random from the bag and dropped, duplicated or delivered.
    fn step(&mut self) {
        self.steps += 1;
        self.update_isolation();
        let roll = self.rng.below(100) as u32;
        if roll < 4 {
            self.propose_burst();
        } else if self.bag.is_empty() || roll < 4 + self.params.tick_percent {
            let ids = self.ids();
            let id = ids[self.rng.below(ids.len())];
            self.tick(id);
        } else {
            let message = self.bag.swap_remove(self.rng.below(self.bag.len()));
            let cut_off = self.isolated.is_some_and(|(id, _)| message.from == id || message.to == id);
            if cut_off || self.rng.percent(self.params.loss_percent) {
                return;
            }
            if self.rng.percent(self.params.duplicate_percent) {
                self.bag.push(message.clone());
            }
            self.deliver(message);
        }
    }

    fn update_isolation(&mut self) {
        if self.isolated.is_some_and(|(_, until)| self.steps >= until) {
            self.isolated = None;
        }
        if self.isolated.is_none() && (self.rng.below(1_000) as u32) < self.params.isolation_per_mille {
            // Half the time the leader, so that terms change often.
            let ids = self.ids();
            let id = match self.leader() {
                Some(leader) if self.rng.percent(50) => leader,
                _ => ids[self.rng.below(ids.len())],
            };
            let steps = 100 + self.rng.below(2_000) as u64;
            self.isolated = Some((id, self.steps + steps));
        }
    }

    fn run_faulty(&mut self) {
        while self.committed_payloads.len() < COMMITS_TARGET {
            assert!(
                self.steps < STEPS_MAX,
                "only {} payloads committed after {} steps ({:?})",
                self.committed_payloads.len(),
                self.steps,
                self.params
            );
            self.step();
            self.observe_roles();
            self.requeue_possibly_lost();
        }
    }

    /// No loss, no duplication, in-order delivery: every node ticks, then the network runs
    /// until quiet.
    fn heal(&mut self) {
        for _ in 0..HEAL_ROUNDS {
            for id in self.ids() {
                self.tick(id);
            }
            let mut queue: VecDeque<Message> = std::mem::take(&mut self.bag).into();
            let mut deliveries = 0;
            while let Some(message) = queue.pop_front() {
                deliveries += 1;
                assert!(deliveries < QUIET_DELIVERIES_MAX, "the healed network never went quiet");
                self.deliver(message);
                queue.extend(self.bag.drain(..));
                self.observe_roles();
            }
        }
    }

    fn check_converged(&self) {
        let leader = self.leader().unwrap_or_else(|| panic!("no leader after healing ({:?})", self.params));
        let leader_node = &self.nodes[&leader];
        let commit = leader_node.commit_index();
        assert_eq!(commit, leader_node.last_index(), "the healed leader did not commit its whole log");
        let reference: Vec<Entry> = leader_node.storage().all_entries()[..commit.0 as usize].to_vec();
        let expected_committed: Vec<Entry> = self.committed.values().cloned().collect();
        assert_eq!(
            reference, expected_committed,
            "the leader's committed prefix differs from the global committed map"
        );
        for (&id, node) in &self.nodes {
            let status = node.status();
            assert_eq!(status.soft_state.leader, Some(leader), "node {id} does not follow the healed leader");
            assert_eq!(
                status.commit, commit,
                "node {id} commit {} != leader {leader} commit {commit} ({:?})",
                status.commit, self.params
            );
            assert_eq!(status.applied, commit, "node {id} did not apply everything committed");
            let stored = node.storage().all_entries();
            assert!(stored.len() as u64 >= commit.0, "node {id} holds fewer entries than it committed");
            assert_eq!(&stored[..commit.0 as usize], &reference[..], "node {id} committed prefix differs");
            assert_eq!(self.applied[&id], reference, "node {id} applied a different sequence");
            node.check_invariants();
        }
        let distinct: BTreeSet<u64> = reference
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Normal(data) => Some(payload_id(data)),
                _ => None,
            })
            .collect();
        assert!(distinct.len() >= COMMITS_TARGET, "only {} distinct payloads committed", distinct.len());
    }
}

fn run(params: Params) {
    let mut sim = Sim::new(params);
    sim.run_faulty();
    sim.heal();
    sim.check_converged();
}

/// Few cases, fixed runner seed unless `PROPTEST_RNG_SEED` / `PROPTEST_CASES` say otherwise.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 32;
    }
    if config.rng_seed == RngSeed::Random {
        config.rng_seed = RngSeed::Fixed(RUNNER_SEED);
    }
    // Each case runs a whole cluster; shrinking a schedule seed is of little use beyond this.
    config.max_shrink_iters = 64;
    // The failing parameters are printed; with the fixed runner seed the run replays as is.
    config.failure_persistence = None;
    config
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn three_nodes_stay_safe_and_converge_under_loss_duplication_and_reordering(params in params(3)) {
        run(params);
    }

    #[test]
    fn five_nodes_stay_safe_and_converge_under_loss_duplication_and_reordering(params in params(5)) {
        run(params);
    }
}
