//! The deterministic harness: nodes over simulated disks, a message bag with loss, duplication,
//! delay and partitions, crashes, restarts, clock drift and pauses, clients, and the checkers fed
//! after every step. One seed, one run, byte for byte.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use raft_core::liveness::PeerLiveness;
use raft_core::{
    ConfChange, Entry, EntryPayload, HardState, Index, Membership, Message, MessageBody, NodeId, Options,
    OptionsBuilder, Raft, ReceivedChunk, Role, SnapshotMeta, Storage, Term,
};
use raft_net::DriverClock;
use raft_storage::{LogStore, MemStorage};

use crate::checkers::{
    Check, ElectionSafety, FNV_START, LeaderAppendOnly, LeaderCompleteness, LogMatching, StateMachineSafety, Violation,
    fnv, state_machine::Applied,
};
use crate::config::{SimConfig, TICK_UNITS};
use crate::kv::{Command, KvState};
use crate::linearizability::Operation;

mod clients;
mod entropy;
use clients::{CLIENT_PERIOD_TICKS, Client, PendingOperation};
use entropy::Entropy;

/// Changes each node's options before it is built (the self-tests switch on deliberate bugs).
pub type OptionsHook = fn(OptionsBuilder) -> OptionsBuilder;

/// Counters of one run (summed over many runs by the CLI).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Node ticks simulated.
    pub ticks: u64,
    /// Messages delivered to a node.
    pub messages_delivered: u64,
    /// Messages lost to random loss.
    pub messages_lost: u64,
    /// Messages dropped by a partition or a down node.
    pub messages_blocked: u64,
    /// Extra copies delivered.
    pub messages_duplicated: u64,
    /// Partition changes.
    pub partitions: u64,
    /// Node crashes (losing unsynced writes).
    pub crashes: u64,
    /// Node pauses.
    pub pauses: u64,
    /// Client commands that were applied.
    pub commands_committed: u64,
    /// Client reads that completed.
    pub reads_completed: u64,
    /// Runs whose client history the linearizability checker could not decide within its
    /// budget (not a failure; reported so that a weak check is visible).
    pub linearizability_unknown: u64,
    /// Membership changes and leadership transfers leaders accepted.
    pub membership_changes: u64,
    /// Snapshots nodes took of their own state machines.
    pub snapshots_taken: u64,
    /// Snapshots nodes installed from a leader.
    pub snapshots_installed: u64,
    /// Checker evaluations.
    pub checks: u64,
    /// Simulated time units.
    pub time_units: u64,
    /// Node-level liveness pings sent (quiescence seeds).
    pub pings_sent: u64,
    /// Reports of a peer down (silent or restarted) handed to a core with `peer_down`.
    pub peer_downs: u64,
    /// Node ticks during which the node was quiet.
    pub quiet_ticks: u64,
    /// Crashes of a node that was a quiet leader.
    pub quiet_leader_crashes: u64,
    /// Crashed quiet leaders that another node replaced (led a later term) while they were down.
    pub quiet_leaders_replaced: u64,
}

impl Stats {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Stats) {
        self.ticks += other.ticks;
        self.messages_delivered += other.messages_delivered;
        self.messages_lost += other.messages_lost;
        self.messages_blocked += other.messages_blocked;
        self.messages_duplicated += other.messages_duplicated;
        self.partitions += other.partitions;
        self.crashes += other.crashes;
        self.pauses += other.pauses;
        self.commands_committed += other.commands_committed;
        self.reads_completed += other.reads_completed;
        self.linearizability_unknown += other.linearizability_unknown;
        self.membership_changes += other.membership_changes;
        self.snapshots_taken += other.snapshots_taken;
        self.snapshots_installed += other.snapshots_installed;
        self.checks += other.checks;
        self.time_units += other.time_units;
        self.pings_sent += other.pings_sent;
        self.peer_downs += other.peer_downs;
        self.quiet_ticks += other.quiet_ticks;
        self.quiet_leader_crashes += other.quiet_leader_crashes;
        self.quiet_leaders_replaced += other.quiet_leaders_replaced;
    }
}

/// The outcome of one seed.
#[derive(Debug)]
pub struct Report {
    /// The configuration derived from the seed.
    pub config: SimConfig,
    /// What happened.
    pub stats: Stats,
    /// A hash of every event in order: equal for equal seeds.
    pub trace_hash: u64,
    /// The first violation, if any.
    pub violation: Option<Violation>,
    /// The drivers' time policy the run used.
    pub time_policy: TimePolicy,
}

impl Report {
    /// The command that replays this run with a readable trace.
    pub fn replay_command(&self) -> String {
        let policy = match self.time_policy {
            TimePolicy::Shipped => "",
            TimePolicy::LosesPausedTicks => " --time-policy loses-paused-ticks",
        };
        format!("cargo run --release -p sim -- --seed {}{policy} -v", self.config.seed)
    }
}

/// How to run a seed.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// Print every event.
    pub verbose: bool,
    /// Tweak node options (deliberate bugs in self-tests).
    pub options_hook: Option<OptionsHook>,
    /// How each node's driver hands time to its core.
    pub time_policy: TimePolicy,
    /// For a self-test only: the drivers run the node-level liveness policy but never tell
    /// their cores (`peer_down`), so that a test can show what the reports are for.
    pub withhold_peer_down: bool,
}

/// How a node's driver hands time to its core (see `raft_net::DriverClock`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimePolicy {
    /// The policy of the driver we ship (`raft_net::DriverClock`, the same code): each event a
    /// node handles is one iteration (a round) of its group; every whole tick of its clock
    /// reaches the core's clock before the iteration's inputs, the timer ticks owed that fire
    /// nothing run before them, those from the due one on after them, at most
    /// `TICKS_PER_ITERATION_MAX`, and the rest are dropped. A paused node's inputs wait and are
    /// handled in one iteration when it resumes.
    #[default]
    Shipped,
    /// The policy raft-net shipped before the lease fix, kept only so that a self-test shows that
    /// the checkers catch what it did: ticks missed during a pause were lost, and the inputs
    /// queued during it were handled with the clock where the pause had left it (stale lease
    /// reads).
    LosesPausedTicks,
}

/// Runs one seed to completion.
pub fn run(seed: u64, run_options: RunOptions) -> Report {
    run_config(SimConfig::from_seed(seed), run_options)
}

/// Runs an explicit configuration to completion.
/// A panic inside the run (how raft-core reports its own broken invariants) becomes a violation
/// of property "panic", so the seed and its replay command are still reported.
pub fn run_config(config: SimConfig, run_options: RunOptions) -> Report {
    let entropy = Entropy::seeded(config.seed);
    run_with(config, run_options, entropy)
}

/// Runs `config` with every random choice of the schedule (deliveries, losses, duplicates,
/// delays, partitions, crashes, pauses, snapshots, client operations) read from `schedule`
/// instead of drawn from the seed; once the bytes run out, every choice is the calm one (no
/// fault, shortest delay), so the run heals. For fuzzing: the fuzzer writes the schedule. The
/// seed still seeds the nodes' own generators (election timeouts).
pub fn run_schedule(config: SimConfig, run_options: RunOptions, schedule: &[u8]) -> Report {
    run_with(config, run_options, Entropy::from_bytes(schedule.to_vec()))
}

fn run_with(config: SimConfig, run_options: RunOptions, entropy: Entropy) -> Report {
    let seed_config = config.clone();
    let time_policy = run_options.time_policy;
    let run = std::panic::catch_unwind(move || {
        let mut sim = Simulation::new(config, run_options, entropy);
        let outcome = sim.run();
        sim.stats.time_units = sim.now;
        let (config, stats, trace_hash) = (sim.config, sim.stats, sim.trace_hash);
        Report { config, stats, trace_hash, violation: outcome.err(), time_policy }
    });
    run.unwrap_or_else(|payload| {
        let detail = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|text| text.to_string()))
            .unwrap_or_else(|| "a panic without a message".to_string());
        let violation = Violation { property: "panic", detail };
        Report { config: seed_config, stats: Stats::default(), trace_hash: 0, violation: Some(violation), time_policy }
    })
}

/// The most events one run may handle: a run past it is a message storm, reported as a
/// violation instead of running (and growing) without end.
pub const EVENTS_MAX: u64 = 5_000_000;

enum EventKind {
    Tick(NodeId, u64),
    Deliver(Box<Message>),
    SyncDone(NodeId, u64),
    Restart(NodeId),
    Resume(NodeId, u64),
    Client(usize),
    Fault,
    /// A node-level liveness ping: from, to, the sender's incarnation.
    Ping(NodeId, NodeId, u64),
}

struct Event {
    time: u64,
    seq: u64,
    kind: EventKind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.time, self.seq).cmp(&(other.time, other.seq))
    }
}

/// A write handed to the disk and not yet synced, with the messages that wait for it.
struct PendingWrite {
    hard_state: Option<HardState>,
    chunks: Vec<ReceivedChunk>,
    install: Option<SnapshotMeta>,
    entries: Vec<Entry>,
    after_persist: Vec<Message>,
}

impl PendingWrite {
    fn is_empty(&self) -> bool {
        self.hard_state.is_none() && self.chunks.is_empty() && self.install.is_none() && self.entries.is_empty()
    }

    /// Carries the write out on `store`, in the order the core's contract requires.
    fn write_to(&self, store: &mut MemStorage) {
        for chunk in &self.chunks {
            store.write_snapshot_chunk(&chunk.meta, chunk.offset, &chunk.data).expect("the core stages in order");
        }
        if let Some(meta) = &self.install {
            store.install_snapshot(meta).expect("the core installs what it staged");
        }
        store.persist(self.hard_state, &self.entries).expect("the core hands out appendable entries");
    }

    /// The (index, term) a durability report for this write names, if it writes any.
    fn mark(&self) -> Option<(Index, Term)> {
        match (self.entries.last(), &self.install) {
            (Some(last), _) => Some((last.index, last.term)),
            (None, Some(meta)) => Some((meta.index, meta.term)),
            (None, None) => None,
        }
    }
}

struct Node {
    id: NodeId,
    options: Options,
    raft: Option<Raft<MemStorage>>,
    /// What survives a crash: only synced writes.
    durable: MemStorage,
    pending: VecDeque<PendingWrite>,
    /// How many pending writes the fsync in flight covers (0: none in flight).
    sync_covers: usize,
    incarnation: u64,
    paused_until: Option<u64>,
    /// What arrived while the node was paused, handled in one iteration when it resumes.
    queued: Vec<Queued>,
    tick_period: u64,
    /// The driver's time policy for this incarnation.
    clock: DriverClock,
    /// Timer ticks the current iteration runs after its inputs (set by `begin_iteration`).
    timer_ticks_after: u64,
    /// When this incarnation's clock started: it reads `(now - clock_origin) / tick_period`
    /// whole ticks.
    clock_origin: u64,
    /// Hash chain of the node's current log.
    chain: Chain,
    applied: Applied,
    /// The application state (what clients read).
    kv: KvState,
    was_leader_in: Option<Term>,
    /// The commit index last observed (to spot advances).
    last_commit: Index,
    /// The node-level liveness policy the driver runs (quiescence seeds only): the shipped
    /// `PeerLiveness`, on this incarnation's clock.
    liveness: Option<PeerLiveness>,
}

/// An input that reached a paused node and waits in its queue.
enum Queued {
    Deliver(Message),
    SyncDone,
    Write(usize, PendingOperation),
    Read(usize, PendingOperation, raft_core::ReadMode),
    Ping(NodeId, u64),
}

impl Node {
    /// The whole ticks this incarnation's clock has counted at `now`.
    fn clock_ticks(&self, now: u64) -> u64 {
        now.saturating_sub(self.clock_origin) / self.tick_period.max(1)
    }

    fn hash_at(&self, index: Index) -> Option<u64> {
        self.chain.hash_at(index)
    }
}

/// A node's log summarised as a hash chain: the hash at `index` covers every entry up to it. A log
/// that starts after a snapshot starts from the chain hash at the snapshot's boundary.
#[derive(Clone, Debug)]
struct Chain {
    /// The index before the first hashed entry (the snapshot or compaction boundary).
    base: Index,
    base_hash: u64,
    /// Chain hashes of the entries from `base + 1` on.
    hashes: Vec<u64>,
}

impl Default for Chain {
    fn default() -> Self {
        Chain { base: Index(0), base_hash: FNV_START, hashes: Vec::new() }
    }
}

impl Chain {
    fn hash_at(&self, index: Index) -> Option<u64> {
        if index == self.base {
            return Some(self.base_hash);
        }
        let offset = index.0.checked_sub(self.base.0 + 1)?;
        self.hashes.get(offset as usize).copied()
    }

    fn restart_at(&mut self, base: Index, base_hash: u64) {
        *self = Chain { base, base_hash, hashes: Vec::new() };
    }

    fn extend(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        // The core never rewrites entries at or below a snapshot, so `first > base`.
        self.hashes.truncate((first.index.0 - self.base.0 - 1) as usize);
        for entry in entries {
            let previous = self.hashes.last().copied().unwrap_or(self.base_hash);
            let mut hash = fnv(previous, &entry.term.0.to_le_bytes());
            if let EntryPayload::Normal(data) = &entry.payload {
                hash = fnv(hash, data);
            }
            self.hashes.push(hash);
        }
    }
}

/// The simulated state machine's snapshot: applied index, digest, the log's chain hash at that
/// index, the key-value state, then filler bytes (so that transfers take many chunks).
fn encode_snapshot(applied: Applied, chain_hash: u64, kv: &KvState, filler_bytes: u64) -> Vec<u8> {
    let mut data = Vec::with_capacity(24 + filler_bytes as usize);
    for word in [applied.index.0, applied.digest, chain_hash] {
        data.extend_from_slice(&word.to_le_bytes());
    }
    data.extend_from_slice(&kv.encode());
    data.extend((0..filler_bytes).map(|i| (i as u8) ^ (applied.index.0 as u8)));
    data
}

/// Reads [`encode_snapshot`]'s bytes back: (applied state, chain hash, key-value state).
fn decode_snapshot(data: &[u8]) -> Option<(Applied, u64, KvState)> {
    let word = |at: usize| crate::kv::word(data, at);
    let index = word(0)?;
    let (kv, filler) = KvState::decode(data.get(24..)?)?;
    if filler.iter().enumerate().any(|(i, &byte)| byte != (i as u8) ^ (index as u8)) {
        return None; // Chunks were written at the wrong offsets.
    }
    Some((Applied { index: Index(index), digest: word(8)? }, word(16)?, kv))
}

struct Checkers {
    election: ElectionSafety,
    append_only: LeaderAppendOnly,
    log_matching: LogMatching,
    completeness: LeaderCompleteness,
    state_machine: StateMachineSafety,
}

struct Simulation {
    config: SimConfig,
    verbose: bool,
    entropy: Entropy,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Event>>,
    nodes: Vec<Node>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    clients: Vec<Client>,
    checkers: Checkers,
    stats: Stats,
    trace_hash: u64,
    healing: bool,
    /// Every client operation, in invocation order.
    history: Vec<Operation>,
    /// Read ids handed to nodes: (client, operation seq).
    reads_in_flight: BTreeMap<u64, (usize, u64)>,
    next_read_id: u64,
    time_policy: TimePolicy,
    /// No client starts an operation before this time (a workload pause).
    workload_paused_until: u64,
    /// Quiet leaders that crashed, with their term, until replaced or restarted.
    crashed_quiet_leaders: BTreeMap<NodeId, Term>,
    withhold_peer_down: bool,
}

impl Simulation {
    fn new(config: SimConfig, run_options: RunOptions, mut entropy: Entropy) -> Self {
        let voters: Vec<NodeId> = (1..=config.nodes).map(NodeId).collect();
        let pool: Vec<NodeId> = (1..=config.nodes + config.spare_nodes).map(NodeId).collect();
        let mut nodes = Vec::new();
        for &id in &pool {
            let mut builder = Options::builder()
                .election_ticks(config.election_ticks)
                .heartbeat_ticks(config.heartbeat_ticks)
                .pre_vote(config.pre_vote)
                .check_quorum(config.check_quorum)
                .message_entries_max(config.message_entries_max)
                .inflight_messages_max(16)
                .compaction_margin_entries(config.compaction_margin_entries)
                .snapshot_chunk_bytes_max(config.snapshot_chunk_bytes_max)
                .snapshot_chunks_inflight_max(4)
                .lease_reads(config.lease_reads)
                .clock_drift_max_ticks(config.clock_drift_max_ticks)
                .quiesce(config.quiesce)
                .rng_seed(config.seed.wrapping_mul(31).wrapping_add(id.0));
            if let Some(hook) = run_options.options_hook {
                builder = hook(builder);
            }
            let options = builder.build().expect("simulator options are valid");
            // Spare nodes start knowing no membership: they join when a leader adds them.
            let initial =
                if voters.contains(&id) { Membership::new(voters.iter().copied()) } else { Membership::default() };
            let durable = MemStorage::new(initial);
            let raft = Raft::new(id, options.clone(), durable.clone()).expect("memory storage");
            let deviation = (entropy.unit() * 2.0 - 1.0) * config.drift;
            let tick_period = ((TICK_UNITS as f64) * (1.0 + deviation)).max(1.0) as u64;
            nodes.push(Node {
                id,
                options,
                raft: Some(raft),
                durable,
                pending: VecDeque::new(),
                sync_covers: 0,
                incarnation: 0,
                paused_until: None,
                queued: Vec::new(),
                tick_period,
                clock: DriverClock::new(),
                timer_ticks_after: 0,
                clock_origin: 0,
                chain: Chain::default(),
                applied: Applied::default(),
                kv: KvState::default(),
                was_leader_in: None,
                last_commit: Index(0),
                liveness: None,
            });
        }
        let clients = (0..config.clients).map(|c| Client::new(voters[(c % config.nodes) as usize])).collect();
        let checkers = Checkers {
            election: ElectionSafety::default(),
            append_only: LeaderAppendOnly::default(),
            log_matching: LogMatching::default(),
            completeness: LeaderCompleteness::default(),
            state_machine: StateMachineSafety::default(),
        };
        let mut sim = Simulation {
            config,
            verbose: run_options.verbose,
            entropy,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            blocked: BTreeSet::new(),
            clients,
            checkers,
            stats: Stats::default(),
            trace_hash: FNV_START,
            healing: false,
            history: Vec::new(),
            reads_in_flight: BTreeMap::new(),
            next_read_id: 0,
            time_policy: run_options.time_policy,
            workload_paused_until: 0,
            crashed_quiet_leaders: BTreeMap::new(),
            withhold_peer_down: run_options.withhold_peer_down,
        };
        for &id in &pool {
            sim.node_mut(id).liveness = sim.new_liveness(id);
        }
        for id in pool {
            // Each node's clock starts at its own offset and ticks once per period after it.
            let offset = sim.random_below(TICK_UNITS);
            sim.node_mut(id).clock_origin = offset;
            let period = sim.node(id).tick_period;
            sim.schedule(offset + period, EventKind::Tick(id, 0));
        }
        for client in 0..sim.clients.len() {
            let offset = sim.random_below(TICK_UNITS * CLIENT_PERIOD_TICKS);
            sim.schedule(offset, EventKind::Client(client));
        }
        sim.schedule(TICK_UNITS, EventKind::Fault);
        sim
    }

    fn random_below(&mut self, bound: u64) -> u64 {
        self.entropy.below(bound)
    }

    fn chance(&mut self, probability: f64) -> bool {
        self.entropy.chance(probability)
    }

    fn schedule(&mut self, delay: u64, kind: EventKind) {
        self.seq += 1;
        self.queue.push(Reverse(Event { time: self.now + delay, seq: self.seq, kind }));
    }

    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0 as usize - 1]
    }

    /// Node `id`'s `tracing` span, as raft-net's driver names a group's (`group`, with the node,
    /// the group and the term as the event began), so that raft-core's events (which do not
    /// name the node) say where they happened in a replay. Only `-v` makes them (a test's subscriber would otherwise pay for a
    /// span per event of every seed).
    fn node_span(&self, id: NodeId) -> tracing::Span {
        if !self.verbose {
            return tracing::Span::none();
        }
        let span = tracing::error_span!("group", node = %id, group = 0, term = tracing::field::Empty);
        if let Some(raft) = self.node(id).raft.as_ref() {
            span.record("term", tracing::field::display(raft.term()));
        }
        span
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id.0 as usize - 1]
    }

    fn trace(&mut self, words: [u64; 4], describe: impl FnOnce() -> String) {
        let mut hash = fnv(self.trace_hash, &self.now.to_le_bytes());
        for word in words {
            hash = fnv(hash, &word.to_le_bytes());
        }
        self.trace_hash = hash;
        if self.verbose {
            println!("t={:>9} {}", self.now, describe());
        }
    }

    fn run(&mut self) -> Check {
        if self.verbose {
            println!("config: {}", self.config);
        }
        let heal_at = self.config.safety_ticks * TICK_UNITS;
        let deadline = heal_at + self.config.liveness_ticks * TICK_UNITS;
        let mut events: u64 = 0;
        while let Some(Reverse(event)) = self.queue.pop() {
            events += 1;
            if events > EVENTS_MAX {
                let detail = format!("more than {EVENTS_MAX} events by time {}: a message storm", self.now);
                return Err(Violation { property: "bounded traffic", detail });
            }
            self.now = event.time;
            if !self.healing && self.now >= heal_at {
                self.heal();
            }
            self.handle(event.kind)?;
            if self.healing && self.converged() {
                return self.check_linearizability();
            }
            if self.now > deadline {
                return Err(self.liveness_violation());
            }
        }
        Err(self.liveness_violation())
    }

    fn handle(&mut self, kind: EventKind) -> Check {
        // The node the event happens at: what raft-core logs meanwhile happens in its span.
        let at = match &kind {
            EventKind::Tick(id, _)
            | EventKind::SyncDone(id, _)
            | EventKind::Restart(id)
            | EventKind::Resume(id, _)
            | EventKind::Ping(_, id, _) => Some(*id),
            EventKind::Deliver(message) => Some(message.to),
            EventKind::Client(_) | EventKind::Fault => None, // They enter the span of the node they pick.
        };
        let span = at.map_or_else(tracing::Span::none, |id| self.node_span(id));
        let _entered = span.enter();
        match kind {
            EventKind::Tick(id, incarnation) => self.on_tick(id, incarnation),
            EventKind::Deliver(message) => self.on_deliver(*message),
            EventKind::SyncDone(id, incarnation) => self.on_sync_done(id, incarnation),
            EventKind::Restart(id) => self.on_restart(id),
            EventKind::Resume(id, until) => self.on_resume(id, until),
            EventKind::Client(client) => self.on_client(client),
            EventKind::Fault => self.on_fault(),
            EventKind::Ping(from, to, incarnation) => self.on_ping(from, to, incarnation),
        }
    }

    /// A new incarnation's node-level liveness (quiescence seeds only): every other node of the
    /// pool watched from its clock's start, silent for an election timeout means down, one ping
    /// per peer per heartbeat interval.
    fn new_liveness(&self, id: NodeId) -> Option<PeerLiveness> {
        if !self.config.quiesce {
            return None;
        }
        let peers = self.nodes.iter().map(|n| n.id).filter(|&peer| peer != id);
        let (timeout, interval) = (u64::from(self.config.election_ticks), u64::from(self.config.heartbeat_ticks));
        Some(PeerLiveness::new(peers, 0, timeout, interval))
    }

    /// Node `id`'s driver runs its liveness policy at a wake-up of its ticker: the peers it
    /// found silent are reported to its core, and the pings due go out.
    fn run_liveness(&mut self, id: NodeId) -> Check {
        let (now, withhold) = (self.now, self.withhold_peer_down);
        let node = self.node_mut(id);
        let (ticks, incarnation) = (node.clock_ticks(now), node.incarnation);
        let (Some(liveness), Some(raft)) = (node.liveness.as_mut(), node.raft.as_mut()) else { return Ok(()) };
        let down = liveness.check(ticks);
        let pings = liveness.pings_due(ticks);
        for &peer in down.iter().filter(|_| !withhold) {
            raft.peer_down(peer);
        }
        for peer in down {
            self.stats.peer_downs += 1;
            self.trace([31, id.0, peer.0, 0], || format!("node {id}: peer {peer} silent, reported down"));
        }
        for to in pings {
            self.send_ping(id, to, incarnation);
        }
        self.flush(id)
    }

    /// A ping goes through the same network as messages: loss, duplication, delay, partitions.
    fn send_ping(&mut self, from: NodeId, to: NodeId, incarnation: u64) {
        self.stats.pings_sent += 1;
        if !self.healing && self.chance(self.config.loss) {
            self.stats.messages_lost += 1;
            return;
        }
        let copies = if !self.healing && self.chance(self.config.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = 1 + self.random_below(self.config.delay_max);
            self.schedule(delay, EventKind::Ping(from, to, incarnation));
        }
    }

    fn on_ping(&mut self, from: NodeId, to: NodeId, incarnation: u64) -> Check {
        if self.node(to).raft.is_none() || self.blocked.contains(&(from, to)) {
            self.stats.messages_blocked += 1;
            return Ok(());
        }
        if self.queue_if_paused(to, Queued::Ping(from, incarnation)).is_none() {
            return Ok(());
        }
        self.begin_iteration(to)?;
        self.ping(to, from, incarnation)?;
        self.end_iteration(to)
    }

    /// Node `id` takes a ping (within an iteration): a peer that came back as a new incarnation
    /// is reported down to its core (what it did before the restart is gone).
    fn ping(&mut self, id: NodeId, from: NodeId, incarnation: u64) -> Check {
        let (now, withhold) = (self.now, self.withhold_peer_down);
        let node = self.node_mut(id);
        let ticks = node.clock_ticks(now);
        let (Some(liveness), Some(raft)) = (node.liveness.as_mut(), node.raft.as_mut()) else { return Ok(()) };
        let restarted = liveness.ping_received(from, incarnation, ticks);
        if restarted && !withhold {
            raft.peer_down(from);
            self.stats.peer_downs += 1;
        }
        self.trace([30, from.0 << 32 | id.0, incarnation, u64::from(restarted)], || {
            format!(
                "node {id} pinged by {from} (incarnation {incarnation}{})",
                if restarted { ", restarted" } else { "" }
            )
        });
        self.flush(id)
    }

    /// A paused node resumes. Its clock kept running (a pause freezes the process, not time).
    /// Everything that waited in its queue is handled in one iteration, as the driver would:
    /// its clock catches up first (under the shipped policy), then the queued inputs, then at
    /// most `TICKS_PER_ITERATION_MAX` timer ticks.
    fn on_resume(&mut self, id: NodeId, until: u64) -> Check {
        // Only the resume of the pause in force (a crash may have ended an older one).
        if self.node(id).paused_until != Some(until) {
            return Ok(());
        }
        let node = self.node_mut(id);
        node.paused_until = None;
        let mut queued = std::mem::take(&mut node.queued);
        // The driver's order: the handles' queue (client requests) before the transport's
        // (peer messages), then the write that was in flight. A stable sort keeps each
        // queue's own order.
        queued.sort_by_key(|input| match input {
            Queued::Write(..) | Queued::Read(..) => 0,
            Queued::Deliver(_) | Queued::Ping(..) => 1,
            Queued::SyncDone => 2,
        });
        let count = queued.len() as u64;
        self.trace([6, id.0, count, 0], || format!("node {id} resumes with {count} queued inputs"));
        self.begin_iteration(id)?;
        for input in queued {
            match input {
                Queued::Deliver(message) => self.deliver(message)?,
                Queued::SyncDone => self.sync_done(id)?,
                Queued::Write(client, operation) => self.take_write(id, client, operation)?,
                Queued::Read(client, operation, mode) => self.take_read(id, client, operation, mode)?,
                Queued::Ping(from, incarnation) => self.ping(id, from, incarnation)?,
            }
        }
        self.end_iteration(id)
    }

    /// The start of an iteration (a round) of node `id`'s group: under the shipped policy
    /// (`raft_net::DriverClock::take_timer_ticks_due`, as raft-net's `Host` runs it), every whole
    /// tick its clock counted reaches the core's clock before any input is handled, and the
    /// timer ticks owed that fire nothing run now, before the inputs.
    fn begin_iteration(&mut self, id: NodeId) -> Check {
        if self.time_policy != TimePolicy::Shipped {
            return Ok(());
        }
        let now = self.now;
        let node = self.node_mut(id);
        let elapsed = node.clock_ticks(now);
        let Some(raft) = node.raft.as_mut() else { return Ok(()) };
        let due = raft.ticks_until_due();
        node.clock.catch_up(raft, elapsed);
        let (before, after) = node.clock.take_timer_ticks_due(due);
        node.timer_ticks_after = after;
        self.run_timer_ticks(id, before)
    }

    /// The end of an iteration: the timer ticks from the due one on that the policy allows,
    /// each followed by its output.
    fn end_iteration(&mut self, id: NodeId) -> Check {
        if self.time_policy != TimePolicy::Shipped {
            return Ok(());
        }
        let ticks = std::mem::take(&mut self.node_mut(id).timer_ticks_after);
        self.run_timer_ticks(id, ticks)?;
        self.remind_quiet(id)
    }

    /// The driver's reminder (as `raft_net::Host` does at the end of a round): a core quiet
    /// at the end of an iteration is told again of every peer its node's liveness holds down.
    fn remind_quiet(&mut self, id: NodeId) -> Check {
        if self.withhold_peer_down {
            return Ok(());
        }
        let node = self.node_mut(id);
        let (Some(liveness), Some(raft)) = (node.liveness.as_ref(), node.raft.as_mut()) else { return Ok(()) };
        if !raft.is_quiet() {
            return Ok(());
        }
        let down = liveness.down_peers();
        if down.is_empty() {
            return Ok(());
        }
        for &peer in &down {
            raft.peer_down(peer);
        }
        self.trace([32, id.0, down.len() as u64, 0], || format!("node {id}: quiet, reminded of peers down {down:?}"));
        self.flush(id)
    }

    /// Runs node `id`'s timers for `ticks` ticks, each followed by its output.
    fn run_timer_ticks(&mut self, id: NodeId, ticks: u64) -> Check {
        for _ in 0..ticks {
            let Some(raft) = self.node_mut(id).raft.as_mut() else { return Ok(()) };
            raft.tick_timers();
            self.stats.ticks += 1;
            self.trace([1, id.0, 0, 0], || format!("node {id} ticks"));
            self.flush(id)?;
        }
        Ok(())
    }

    /// Queues `input` if node `id` is paused; returns it otherwise.
    fn queue_if_paused(&mut self, id: NodeId, input: Queued) -> Option<Queued> {
        let node = self.node_mut(id);
        if node.paused_until.is_some() {
            node.queued.push(input);
            return None;
        }
        Some(input)
    }

    fn on_tick(&mut self, id: NodeId, incarnation: u64) -> Check {
        let node = &mut self.nodes[id.0 as usize - 1];
        if node.incarnation != incarnation {
            return Ok(()); // The clock of an earlier incarnation.
        }
        let (period, paused) = (node.tick_period, node.paused_until.is_some());
        self.schedule(period, EventKind::Tick(id, incarnation));
        if self.node(id).raft.is_none() || paused {
            // A paused node runs nothing; its clock catches up when it resumes (or, under the
            // old policy, the tick is lost).
            return Ok(());
        }
        if self.node(id).raft.as_ref().is_some_and(|r| r.is_quiet()) {
            self.stats.quiet_ticks += 1;
        }
        match self.time_policy {
            TimePolicy::Shipped => {
                // The ticker's wake-up: an iteration with no input.
                self.begin_iteration(id)?;
                self.end_iteration(id)?;
            }
            TimePolicy::LosesPausedTicks => {
                if let Some(raft) = self.node_mut(id).raft.as_mut() {
                    raft.tick();
                }
                self.stats.ticks += 1;
                self.trace([1, id.0, 0, 0], || format!("node {id} ticks"));
                self.flush(id)?;
            }
        }
        self.run_liveness(id)
    }

    fn on_deliver(&mut self, message: Message) -> Check {
        let (from, to) = (message.from, message.to);
        if self.node(to).raft.is_none() || self.blocked.contains(&(from, to)) {
            self.stats.messages_blocked += 1;
            return Ok(());
        }
        let Some(Queued::Deliver(message)) = self.queue_if_paused(to, Queued::Deliver(message)) else { return Ok(()) };
        self.begin_iteration(to)?;
        self.deliver(message)?;
        self.end_iteration(to)
    }

    /// Node `message.to` takes a message (within an iteration).
    fn deliver(&mut self, message: Message) -> Check {
        let to = message.to;
        if self.node(to).raft.is_none() {
            return Ok(());
        }
        self.stats.messages_delivered += 1;
        let now = self.now;
        let node = self.node_mut(to);
        let ticks = node.clock_ticks(now);
        if let Some(liveness) = node.liveness.as_mut() {
            liveness.heard_from(message.from, ticks); // Any frame from a peer shows it alive.
        }
        let words = message_words(&message);
        self.trace(words, || format!("deliver {message:?}"));
        if let Some(raft) = self.node_mut(to).raft.as_mut() {
            // Refusals are normal under faults (stale terms, sticky leaders); only storage
            // errors would matter, and memory storage has none.
            let _ = raft.step(message);
        }
        self.flush(to)
    }

    fn on_sync_done(&mut self, id: NodeId, incarnation: u64) -> Check {
        if self.node(id).incarnation != incarnation || self.queue_if_paused(id, Queued::SyncDone).is_none() {
            return Ok(());
        }
        self.begin_iteration(id)?;
        self.sync_done(id)?;
        self.end_iteration(id)
    }

    /// Node `id`'s fsync in flight completes (within an iteration).
    fn sync_done(&mut self, id: NodeId) -> Check {
        // Group commit: one fsync makes every write issued before it durable, in order.
        let node = &mut self.nodes[id.0 as usize - 1];
        let covered = std::mem::take(&mut node.sync_covers).min(node.pending.len());
        let writes: Vec<PendingWrite> = node.pending.drain(..covered).collect();
        let mut last_entry = None;
        let mut messages = Vec::new();
        for write in writes {
            write.write_to(&mut node.durable);
            last_entry = write.mark().or(last_entry);
            messages.extend(write.after_persist);
        }
        if let (Some((index, term)), Some(raft)) = (last_entry, node.raft.as_mut()) {
            raft.on_persisted(index, term);
        }
        self.trace([3, id.0, covered as u64, 0], || format!("node {id} synced {covered} writes"));
        for message in messages {
            self.send(message)?;
        }
        self.start_sync(id);
        self.flush(id)
    }

    /// Starts an fsync covering every pending write, unless one is already running.
    fn start_sync(&mut self, id: NodeId) {
        let latency = 1 + self.random_below(self.config.sync_delay_max);
        let node = &mut self.nodes[id.0 as usize - 1];
        if node.sync_covers > 0 || node.pending.is_empty() {
            return;
        }
        node.sync_covers = node.pending.len();
        let incarnation = node.incarnation;
        self.schedule(latency, EventKind::SyncDone(id, incarnation));
    }

    /// Carries out everything node `id` asked for, feeding the checkers.
    fn flush(&mut self, id: NodeId) -> Check {
        loop {
            let node = &mut self.nodes[id.0 as usize - 1];
            let Some(raft) = node.raft.as_mut() else { return Ok(()) };
            if !raft.has_output() {
                break;
            }
            let output = raft.take_output().expect("memory storage never fails");
            let (commit, leading) = (raft.commit_index(), raft.role() == Role::Leader);
            if leading
                && commit > node.last_commit
                && !self.healing
                && self.entropy.chance(self.config.crash_after_commit)
            {
                // The leader dies having just counted a commit, before any of this output (the
                // appends that would spread the entries after it) leaves the node.
                self.checkers.completeness.observe_commit(id, raft.term(), commit, |i| node.hash_at(i))?;
                self.crash(id);
                return Ok(());
            }
            raft.storage_mut().write_output(&output).expect("the core hands out writable output");
            if let Some(meta) = &output.install_snapshot {
                self.restore_from_snapshot(id, meta)?;
            }
            let node = &mut self.nodes[id.0 as usize - 1];
            if self.verbose && (output.hard_state.is_some() || !output.entries.is_empty()) {
                let range = output.entries.first().zip(output.entries.last());
                let span = range.map(|(a, b)| format!("{}..={} (terms {}..={})", a.index, b.index, a.term, b.term));
                println!("t={:>9} node {id} writes hard state {:?} entries {:?}", self.now, output.hard_state, span);
            }
            node.chain.extend(&output.entries);
            for entry in &output.entries {
                let hash = node.chain.hash_at(entry.index).expect("just extended");
                self.stats.checks += 1;
                self.checkers.log_matching.observe(id, entry.index, entry.term, hash)?;
            }
            for message in output.messages {
                self.send(message)?;
            }
            let write = PendingWrite {
                hard_state: output.hard_state,
                chunks: output.snapshot_chunks,
                install: output.install_snapshot,
                entries: output.entries,
                after_persist: output.messages_after_persist,
            };
            self.queue_write(id, write)?;
            for entry in &output.committed {
                self.apply(id, entry)?;
            }
            self.complete_reads(id, &output.reads);
        }
        self.observe_node(id)
    }

    fn queue_write(&mut self, id: NodeId, write: PendingWrite) -> Check {
        let nothing_to_write = write.is_empty();
        if nothing_to_write && self.node(id).pending.is_empty() {
            for message in write.after_persist {
                self.send(message)?;
            }
            return Ok(());
        }
        if nothing_to_write && write.after_persist.is_empty() {
            return Ok(());
        }
        self.node_mut(id).pending.push_back(write);
        self.start_sync(id);
        Ok(())
    }

    /// Node `id` installs the snapshot `meta` it received: its state machine and its log's hash
    /// chain restart from the snapshot, which must match the history every other node holds.
    fn restore_from_snapshot(&mut self, id: NodeId, meta: &SnapshotMeta) -> Check {
        self.stats.snapshots_installed += 1;
        self.stats.checks += 2;
        let node = &mut self.nodes[id.0 as usize - 1];
        let data = node.raft.as_ref().map(|r| r.storage().snapshot_data().clone()).unwrap_or_default();
        let Some((applied, chain_hash, kv)) = decode_snapshot(&data) else {
            let detail = format!("node {id} installed snapshot {} whose data is garbled", meta.index);
            return Err(Violation { property: "snapshot transfer", detail });
        };
        if applied.index != meta.index {
            let detail = format!("node {id} installed snapshot {} holding state at {}", meta.index, applied.index);
            return Err(Violation { property: "snapshot transfer", detail });
        }
        self.checkers.log_matching.observe(id, meta.index, meta.term, chain_hash)?;
        node.chain.restart_at(meta.index, chain_hash);
        node.kv = kv;
        self.checkers.state_machine.observe_restore(id, &mut node.applied, applied)?;
        let index = meta.index;
        self.trace([10, id.0, index.0, meta.term.0], || format!("node {id} installs snapshot at {index}"));
        Ok(())
    }

    /// Node `id` snapshots its state machine at its applied index and compacts its log as the
    /// core advises. The snapshot is written durably at once (a local file and an fsync).
    fn take_snapshot(&mut self, id: NodeId) {
        let filler = self.config.snapshot_filler_bytes;
        let node = &mut self.nodes[id.0 as usize - 1];
        let Some(raft) = node.raft.as_mut() else { return };
        let applied = node.applied;
        // The checksum is filled in once the data is encoded, below.
        let Ok(meta) = raft.snapshot_meta(applied.index, 0) else { return };
        // Only durable applied state is snapshotted (a pending install is not yet durable).
        let durable_holds = node.durable.term(meta.index) == Ok(meta.term);
        if !meta.exists() || !durable_holds || meta.index <= node.durable.snapshot().map_or(Index(0), |m| m.index) {
            return;
        }
        let Some(chain_hash) = node.chain.hash_at(meta.index) else { return };
        let data = encode_snapshot(applied, chain_hash, &node.kv, filler);
        let meta = SnapshotMeta { data_crc32: raft_core::snapshot_crc32(&data), ..meta };
        raft.storage_mut().save_snapshot(&meta, &data).expect("memory storage");
        node.durable.save_snapshot(&meta, &data).expect("memory storage");
        let compaction = raft.compaction_point();
        if let Some((index, term)) = compaction {
            raft.storage_mut().compact(index, term).expect("memory storage");
            node.durable.compact(index, term).expect("memory storage");
        }
        self.stats.snapshots_taken += 1;
        let (index, compacted) = (meta.index, compaction.map_or(0, |(i, _)| i.0));
        self.trace([11, id.0, index.0, compacted], || {
            format!("node {id} snapshots at {index}, compacts to {compacted}")
        });
    }

    fn apply(&mut self, id: NodeId, entry: &Entry) -> Check {
        let node = &mut self.nodes[id.0 as usize - 1];
        self.stats.checks += 2;
        // Only locally durable entries may be applied: a crash must not take back applied state.
        if raft_core::Storage::term(&node.durable, entry.index) != Ok(entry.term) {
            let detail = format!("node {id} applies index {} (term {}) before it is durable", entry.index, entry.term);
            return Err(Violation { property: "apply only durable entries", detail });
        }
        self.checkers.state_machine.observe_apply(id, &mut node.applied, entry)?;
        if let EntryPayload::Normal(data) = &entry.payload
            && let Some(command) = Command::decode(data)
        {
            let output = node.kv.apply(&command);
            self.complete_write(&command, output);
        }
        Ok(())
    }

    /// Checks that follow every step of a node: leadership, append-only, commit stability.
    fn observe_node(&mut self, id: NodeId) -> Check {
        let node = &mut self.nodes[id.0 as usize - 1];
        let Some(raft) = node.raft.as_ref() else { return Ok(()) };
        let (role, term, commit, last) = (raft.role(), raft.term(), raft.commit_index(), raft.last_index());
        let hash_at = |index: Index| node.hash_at(index);
        self.stats.checks += 2;
        self.checkers.completeness.observe_commit(id, term, commit, hash_at)?;
        node.last_commit = commit;
        if role == Role::Leader {
            self.stats.checks += 2;
            self.checkers.election.observe_leader(id, term)?;
            if node.was_leader_in != Some(term) {
                node.was_leader_in = Some(term);
                let before = self.crashed_quiet_leaders.len();
                self.crashed_quiet_leaders.retain(|&crashed, &mut crashed_term| crashed == id || crashed_term >= term);
                self.stats.quiet_leaders_replaced += (before - self.crashed_quiet_leaders.len()) as u64;
                self.stats.checks += 1;
                let floor = node.chain.base;
                self.checkers.completeness.observe_new_leader(id, term, floor, |i| node.hash_at(i))?;
            }
            self.checkers.append_only.observe(id, term, last, |i| node.hash_at(i))?;
        }
        Ok(())
    }

    fn send(&mut self, message: Message) -> Check {
        if let MessageBody::VoteResponse { pre_vote: false, granted: true } = message.body {
            self.stats.checks += 1;
            self.checkers.election.observe_vote(message.from, message.term, message.to)?;
        }
        if !self.healing && self.chance(self.config.loss) {
            self.stats.messages_lost += 1;
            return Ok(());
        }
        let copies = if !self.healing && self.chance(self.config.duplicate) { 2 } else { 1 };
        self.stats.messages_duplicated += copies - 1;
        for _ in 0..copies {
            let delay = 1 + self.random_below(self.config.delay_max);
            self.schedule(delay, EventKind::Deliver(Box::new(message.clone())));
        }
        Ok(())
    }

    fn on_fault(&mut self) -> Check {
        self.schedule(TICK_UNITS, EventKind::Fault);
        if self.healing {
            return Ok(());
        }
        if self.chance(self.config.partition_rate) {
            self.change_partition();
        }
        if self.chance(self.config.membership_rate) {
            self.change_membership_randomly()?;
        }
        if self.chance(self.config.workload_pause_rate) {
            let ticks = 1 + self.random_below(self.config.workload_pause_ticks_max.max(1));
            self.workload_paused_until = self.now + ticks * TICK_UNITS;
            self.trace([32, ticks, 0, 0], || format!("the workload pauses for {ticks} ticks"));
        }
        for index in 0..self.nodes.len() {
            let id = NodeId(index as u64 + 1);
            if self.nodes[index].paused_until.is_none() && self.chance(self.config.snapshot_rate) {
                self.take_snapshot(id);
            }
            if self.nodes[index].raft.is_some() && self.chance(self.config.crash_rate) {
                self.crash(id);
            } else if self.nodes[index].paused_until.is_none() && self.chance(self.config.pause_rate) {
                let length = 1 + self.random_below(3 * u64::from(self.config.election_ticks) * TICK_UNITS);
                self.nodes[index].paused_until = Some(self.now + length);
                self.stats.pauses += 1;
                self.trace([5, id.0, length, 0], || format!("node {id} pauses for {length}"));
                let until = self.now + length;
                self.schedule(length, EventKind::Resume(id, until));
            }
        }
        Ok(())
    }

    fn change_partition(&mut self) {
        self.stats.partitions += 1;
        self.blocked.clear();
        let n = self.pool_size();
        let kind = self.random_below(4);
        match kind {
            0 => {} // heal
            1 => {
                // Symmetric split into two random sides.
                let side: Vec<bool> = (0..n).map(|_| self.entropy.coin()).collect();
                for a in 1..=n {
                    for b in 1..=n {
                        if side[(a - 1) as usize] != side[(b - 1) as usize] {
                            self.blocked.insert((NodeId(a), NodeId(b)));
                        }
                    }
                }
            }
            2 => {
                // One-way: a few random directed links fail.
                for _ in 0..1 + self.random_below(n) {
                    let (a, b) = (1 + self.random_below(n), 1 + self.random_below(n));
                    self.blocked.insert((NodeId(a), NodeId(b)));
                }
            }
            _ => {
                // Partial: a few links fail both ways while every node may still reach others.
                for _ in 0..1 + self.random_below(n) {
                    let (a, b) = (1 + self.random_below(n), 1 + self.random_below(n));
                    self.blocked.insert((NodeId(a), NodeId(b)));
                    self.blocked.insert((NodeId(b), NodeId(a)));
                }
            }
        }
        let blocked = self.blocked.len() as u64;
        self.trace([4, kind, blocked, 0], || format!("partition kind {kind}: {blocked} links blocked"));
    }

    fn crash(&mut self, id: NodeId) {
        self.stats.crashes += 1;
        let quiet_leader = self.node(id).raft.as_ref().filter(|r| r.is_quiet() && r.is_leader()).map(|r| r.term());
        if let Some(term) = quiet_leader {
            self.stats.quiet_leader_crashes += 1;
            self.crashed_quiet_leaders.insert(id, term);
        }
        let node = self.node_mut(id);
        node.raft = None;
        node.pending.clear();
        node.sync_covers = 0;
        node.incarnation += 1;
        node.paused_until = None;
        node.queued.clear(); // The process died with what waited in its queue.
        node.was_leader_in = None;
        node.last_commit = Index(0);
        self.checkers.append_only.forget(id);
        self.trace([2, id.0, 0, 0], || format!("node {id} crashes"));
        let downtime = 1 + self.random_below(5 * u64::from(self.config.election_ticks) * TICK_UNITS);
        self.schedule(downtime, EventKind::Restart(id));
    }

    fn on_restart(&mut self, id: NodeId) -> Check {
        let (period, now) = (self.node(id).tick_period, self.now);
        let node = self.node_mut(id);
        if node.raft.is_some() {
            return Ok(());
        }
        // Each incarnation draws from its own seed, as a real node seeded by its OS would.
        let seed = node.options.rng_seed() ^ node.incarnation.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let raft =
            Raft::new(id, node.options.clone().with_rng_seed(seed), node.durable.clone()).expect("memory storage");
        node.raft = Some(raft);
        self.crashed_quiet_leaders.remove(&id);
        let liveness = self.new_liveness(id);
        let node = self.node_mut(id);
        node.liveness = liveness;
        node.applied = Applied::default();
        node.kv = KvState::default();
        // A new process: a new clock, starting now.
        node.clock = DriverClock::new();
        node.timer_ticks_after = 0;
        node.clock_origin = now;
        self.rebuild_after_restart(id)?;
        let node = self.node_mut(id);
        let incarnation = node.incarnation;
        self.trace([8, id.0, 0, 0], || format!("node {id} restarts"));
        self.schedule(period, EventKind::Tick(id, incarnation));
        self.flush(id)
    }

    /// A restarted node's state machine comes from its durable snapshot and its hash chain from
    /// its durable log, which starts at the compaction boundary.
    fn rebuild_after_restart(&mut self, id: NodeId) -> Check {
        let node = &mut self.nodes[id.0 as usize - 1];
        if node.durable.snapshot().is_ok_and(|meta| meta.exists()) {
            let Some((applied, _, kv)) = decode_snapshot(node.durable.snapshot_data()) else {
                let detail = format!("node {id} restarts from a garbled snapshot");
                return Err(Violation { property: "snapshot durability", detail });
            };
            node.kv = kv;
            self.checkers.state_machine.observe_restore(id, &mut node.applied, applied)?;
        }
        let base = node.durable.first_index().expect("memory").prev();
        let base_term = node.durable.term(base).expect("memory answers for the boundary");
        let base_hash =
            if base == Index(0) { Some(FNV_START) } else { self.checkers.log_matching.hash_of(base, base_term) };
        let Some(base_hash) = base_hash else {
            let detail = format!("node {id} restarts with a log boundary {base} (term {base_term}) nobody held");
            return Err(Violation { property: "log matching", detail });
        };
        node.chain.restart_at(base, base_hash);
        let entries = node.durable.all_entries().to_vec();
        node.chain.extend(&entries);
        Ok(())
    }

    /// Starts the liveness phase: every fault stops and every node comes back.
    fn heal(&mut self) {
        self.healing = true;
        self.blocked.clear();
        for index in 0..self.nodes.len() {
            if let Some(until) = self.nodes[index].paused_until {
                self.schedule(0, EventKind::Resume(NodeId(index as u64 + 1), until));
            }
            if self.nodes[index].raft.is_none() {
                self.schedule(0, EventKind::Restart(NodeId(index as u64 + 1)));
            }
        }
        self.trace([9, 0, 0, 0], || "heal: liveness phase".to_string());
    }

    /// A leader, no pending client command, every node applied everything committed.
    /// A leader, no pending client command, every member applied everything committed (nodes
    /// outside the leader's membership, removed or never added, do not count).
    fn converged(&self) -> bool {
        if self.clients.iter().any(|c| c.pending.is_some()) {
            return false;
        }
        let Some(leader) = self.leader().and_then(|id| self.node(id).raft.as_ref()) else { return false };
        let (commit, leader_term, membership) = (leader.commit_index(), leader.term(), leader.membership());
        self.nodes.iter().filter(|n| membership.is_member(n.id)).all(|n| {
            n.raft.as_ref().is_some_and(|r| r.term() == leader_term && r.commit_index() == commit)
                && n.applied.index == commit
        })
    }

    /// Every node, members or not.
    fn pool_size(&self) -> u64 {
        self.nodes.len() as u64
    }

    /// Asks the leader for a random membership change or leadership transfer; refusals (a
    /// change in progress, the leader's term not committed) are normal.
    fn change_membership_randomly(&mut self) -> Check {
        let Some(leader) = self.leader() else { return Ok(()) };
        let target = NodeId(1 + self.random_below(self.pool_size()));
        let action = self.random_below(4);
        let span = self.node_span(leader);
        let _entered = span.enter();
        let Some(raft) = self.node_mut(leader).raft.as_mut() else { return Ok(()) };
        let accepted = match action {
            0 => raft.change_membership(&[ConfChange::AddLearner(target)]).is_ok(),
            1 => raft.change_membership(&[ConfChange::AddVoter(target)]).is_ok(),
            2 => raft.change_membership(&[ConfChange::Remove(target)]).is_ok(),
            _ => raft.transfer_leadership(target).is_ok(),
        };
        const ACTIONS: [&str; 4] = ["add learner", "add voter", "remove", "transfer leadership to"];
        let what = ACTIONS[action as usize];
        self.trace([14, leader.0, action, target.0 << 1 | u64::from(accepted)], || {
            format!("leader {leader}: {what} {target}: {}", if accepted { "accepted" } else { "refused" })
        });
        if accepted {
            self.stats.membership_changes += 1;
        }
        self.flush(leader)
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|n| n.raft.as_ref().filter(|r| r.role() == Role::Leader).map(|r| (r.term(), n.id)))
            .max()
            .map(|(_, id)| id)
    }

    fn liveness_violation(&self) -> Violation {
        let states: Vec<String> = self
            .nodes
            .iter()
            .map(|n| match &n.raft {
                Some(r) => format!(
                    "node {}: {:?} term {} commit {} applied {} last {}",
                    n.id,
                    r.role(),
                    r.term(),
                    r.commit_index(),
                    n.applied.index,
                    r.last_index()
                ),
                None => format!("node {}: down", n.id),
            })
            .collect();
        let pending = self.clients.iter().filter(|c| c.pending.is_some()).count();

        Violation {
            property: "liveness",
            detail: format!(
                "no convergence within {} ticks after healing; {pending} client commands pending; {}",
                self.config.liveness_ticks,
                states.join("; ")
            ),
        }
    }
}

/// A compact fingerprint of a message for the trace hash.
fn message_words(m: &Message) -> [u64; 4] {
    let (tag, detail) = match &m.body {
        MessageBody::VoteRequest { pre_vote, last_log_index, .. } => (10 + u64::from(*pre_vote), last_log_index.0),
        MessageBody::VoteResponse { pre_vote, granted } => (12 + u64::from(*pre_vote) * 2 + u64::from(*granted), 0),
        MessageBody::AppendEntries { prev_log_index, entries, .. } => {
            (16, prev_log_index.0 << 16 | entries.len() as u64)
        }
        MessageBody::AppendResponse(result) => (17, format!("{result:?}").len() as u64),
        MessageBody::Heartbeat { commit, round } => (18, commit.0 << 32 ^ round),
        MessageBody::HeartbeatResponse { round } => (19, *round),
        MessageBody::InstallSnapshot { meta, offset, data, done, .. } => {
            (20 + u64::from(*done), meta.index.0 << 32 ^ offset << 16 ^ data.len() as u64)
        }
        MessageBody::SnapshotResponse { index, next_offset, gap, .. } => {
            (22 + u64::from(*gap), index.0 << 32 ^ next_offset)
        }
        MessageBody::ReadIndexRequest { request, .. } => (25, *request),
        MessageBody::ReadIndexResponse { request, index } => (26, request << 32 ^ index.map_or(0, |i| i.0)),
        MessageBody::Quiesce { commit, round } => (27, commit.0 << 32 ^ round),
        MessageBody::CommitNotice { prev_log_index, commit, .. } => (28, prev_log_index.0 << 32 ^ commit.0),
        _ => (24, 0),
    };
    [tag, m.from.0 << 32 | m.to.0, m.term.0, detail]
}
