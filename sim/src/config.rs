//! Swarm testing: each seed derives its own cluster size and fault rates, so a run of many seeds
//! explores many fault mixes instead of one average mix.

use std::fmt;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Simulated time units per nominal tick.
pub const TICK_UNITS: u64 = 1000;

/// Everything that shapes one run. Printed at the start of every run.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// The seed everything else is derived from.
    pub seed: u64,
    /// Cluster size, 1 to 7.
    pub nodes: u64,
    /// Base election timeout in ticks.
    pub election_ticks: u32,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: u32,
    /// Pre-vote on the nodes.
    pub pre_vote: bool,
    /// Check-quorum on the nodes.
    pub check_quorum: bool,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Largest network delay, in time units (delays are uniform below it: reordering).
    pub delay_max: u64,
    /// Per-tick probability of a partition change.
    pub partition_rate: f64,
    /// Per-tick probability of a node crash.
    pub crash_rate: f64,
    /// Probability that a leader crashes right after its commit index advances (the moment when
    /// its followers may hold the committed entry but not yet the entry after it).
    pub crash_after_commit: f64,
    /// Per-tick probability of a node pause.
    pub pause_rate: f64,
    /// Largest relative tick-rate deviation per node (clock drift), e.g. 0.1 = ±10%.
    pub drift: f64,
    /// Largest disk sync latency, in time units.
    pub sync_delay_max: u64,
    /// The most entries per append: small batches separate the acknowledgements of old and new
    /// entries, which some bugs (Figure 8) need.
    pub message_entries_max: usize,
    /// Concurrent clients proposing commands.
    pub clients: u64,
    /// Per-tick probability that a node snapshots its state machine and compacts its log.
    pub snapshot_rate: f64,
    /// Entries kept below a snapshot when compacting.
    pub compaction_margin_entries: u64,
    /// The most snapshot bytes per chunk message (small, so transfers take many chunks).
    pub snapshot_chunk_bytes_max: u64,
    /// Filler bytes in each snapshot beyond the state machine's digest, to make transfers long.
    pub snapshot_filler_bytes: u64,
    /// Keys the clients use.
    pub keys: u64,
    /// Whether nodes allow lease reads (only with check-quorum) and clients issue them.
    pub lease_reads: bool,
    /// The drift bound the nodes' leases assume, in ticks per election timeout.
    pub clock_drift_max_ticks: u32,
    /// Nodes beyond the initial voters, started empty: membership changes may add them.
    pub spare_nodes: u64,
    /// Per-tick probability that the leader is asked for a random membership change or
    /// leadership transfer.
    pub membership_rate: f64,
    /// Whether idle groups go quiet (`Options::quiesce`); the nodes then run the shipped
    /// node-level liveness policy (`raft_core::liveness::PeerLiveness`), pinging each other
    /// through the simulated network and reporting silent or restarted peers to their cores.
    pub quiesce: bool,
    /// Per-tick probability that the whole workload pauses (no client starts an operation), so
    /// that groups fall idle and go quiet while faults go on. 0 unless `quiesce`.
    pub workload_pause_rate: f64,
    /// Longest workload pause, in ticks.
    pub workload_pause_ticks_max: u64,
    /// Nominal ticks of the safety phase (with faults).
    pub safety_ticks: u64,
    /// Nominal ticks the liveness phase may take after healing.
    pub liveness_ticks: u64,
}

impl SimConfig {
    /// Derives a configuration from `seed` (swarm testing).
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5157_4152_4d00_0000);
        let nodes = 1 + (unit_of(&mut rng) * 7.0) as u64 % 7;
        let election_ticks = 10;
        let pre_vote = unit_of(&mut rng) < 0.85;
        let check_quorum = unit_of(&mut rng) < 0.85;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x00c0_ffee);
        // Each fault is switched off in some seeds entirely, so rare interleavings of the others
        // are not drowned out.
        let mut rate = |max: f64| if unit_of(&mut rng) < 0.25 { 0.0 } else { unit_of(&mut rng) * max };
        let mut config = SimConfig {
            seed,
            nodes,
            election_ticks,
            heartbeat_ticks: 1 + (seed % 3) as u32,
            pre_vote,
            check_quorum,
            loss: rate(0.2),
            duplicate: rate(0.1),
            delay_max: 1 + (rate(1.0) * 3.0 * TICK_UNITS as f64) as u64,
            partition_rate: rate(0.05),
            crash_rate: rate(0.01),
            pause_rate: rate(0.01),
            crash_after_commit: rate(0.05),
            drift: rate(0.2),
            sync_delay_max: 1 + (rate(1.0) * TICK_UNITS as f64) as u64,
            message_entries_max: [1, 2, 8, 64][(rng.next_u64() % 4) as usize],
            clients: 1 + seed % 4,
            spare_nodes: 0,
            membership_rate: 0.0,
            quiesce: false,
            workload_pause_rate: 0.0,
            workload_pause_ticks_max: 0,
            keys: 0,
            lease_reads: false,
            clock_drift_max_ticks: 0,
            snapshot_rate: 0.0,
            compaction_margin_entries: 0,
            snapshot_chunk_bytes_max: 1,
            snapshot_filler_bytes: 0,
            safety_ticks: 1000,
            liveness_ticks: 40 * u64::from(election_ticks),
        };
        // One seed in four is crash-heavy: leaders die at the worst moment (just after counting a
        // commit) while single-entry appends separate the acknowledgements of old and new entries.
        // Histories like Figure 8 of the Raft paper need exactly that.
        if rng.next_u64() % 4 == 0 {
            config.nodes = if rng.next_u64() % 2 == 0 { 3 } else { 5 };
            config.message_entries_max = 1;
            config.crash_rate = 0.01 + unit_of(&mut rng) * 0.04;
            config.crash_after_commit = 0.2 + unit_of(&mut rng) * 0.3;
        }
        // Snapshots come last so that the draws above (and the runs they shaped) stay the same.
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0005_4a95_0000);
        config.snapshot_rate = if unit_of(&mut rng) < 0.2 { 0.0 } else { unit_of(&mut rng) * 0.05 };
        config.compaction_margin_entries = [0, 1, 4, 32][(rng.next_u64() % 4) as usize];
        // At most 64 chunks per transfer: go-back-N over a network that reorders most chunks
        // (delays of several ticks) needs a few round trips per chunk.
        config.snapshot_chunk_bytes_max = [32, 256, 4096, 64 * 1024][(rng.next_u64() % 4) as usize];
        config.snapshot_filler_bytes = rng.next_u64() % 2048;
        // Reads come after snapshots, for the same reason.
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0000_4ead_5000);
        config.keys = 1 + rng.next_u64() % 5;
        config.lease_reads = config.check_quorum && rng.next_u64() % 2 == 0;
        config.clock_drift_max_ticks = lease_drift_ticks(config.election_ticks, config.drift);
        // Membership changes last, for the same reason: at most 7 nodes in all.
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x00c0_ff16_0000);
        config.spare_nodes = (rng.next_u64() % 3).min(7 - config.nodes);
        config.membership_rate = if unit_of(&mut rng) < 0.3 { 0.0 } else { unit_of(&mut rng) * 0.03 };
        // Quiescence last, for the same reason: a seed without it replays as before.
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0091_e5ce_0000);
        config.quiesce = rng.next_u64().is_multiple_of(3);
        if config.quiesce {
            config.workload_pause_rate = 0.005 + unit_of(&mut rng) * 0.03;
            config.workload_pause_ticks_max = u64::from(election_ticks) * (2 + rng.next_u64() % 30);
        }
        config
    }
}

/// The drift bound a lease needs when every node's tick rate may deviate by `drift` (relative):
/// over a lease, the leader's clock may run slow by `drift` while a follower's runs fast by as
/// much, so `(E - D)(1 + drift) <= E(1 - drift)`, i.e. `D >= 2 E drift / (1 + drift)`; two more
/// ticks cover the phase of the tick counters on both sides.
pub fn lease_drift_ticks(election_ticks: u32, drift: f64) -> u32 {
    let needed = (f64::from(election_ticks) * 2.0 * drift / (1.0 + drift)).ceil() as u32 + 2;
    needed.min(election_ticks - 1)
}

fn unit_of(rng: &mut ChaCha8Rng) -> f64 {
    rng.next_u64() as f64 / u64::MAX as f64
}

impl fmt::Display for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed={} nodes={} pre_vote={} check_quorum={} heartbeat={} loss={:.3} dup={:.3} delay_max={} \
             partition={:.4} crash={:.4} crash_after_commit={:.3} pause={:.4} drift={:.3} sync_max={} batch={} clients={} snapshot={:.4} margin={} chunk={} filler={} \
             keys={} lease={} drift_bound={} spare={} membership={:.4} quiesce={} workload_pause={:.4}x{} ticks={}+{}",
            self.seed,
            self.nodes,
            self.pre_vote,
            self.check_quorum,
            self.heartbeat_ticks,
            self.loss,
            self.duplicate,
            self.delay_max,
            self.partition_rate,
            self.crash_rate,
            self.crash_after_commit,
            self.pause_rate,
            self.drift,
            self.sync_delay_max,
            self.message_entries_max,
            self.clients,
            self.snapshot_rate,
            self.compaction_margin_entries,
            self.snapshot_chunk_bytes_max,
            self.snapshot_filler_bytes,
            self.keys,
            self.lease_reads,
            self.clock_drift_max_ticks,
            self.spare_nodes,
            self.membership_rate,
            self.quiesce,
            self.workload_pause_rate,
            self.workload_pause_ticks_max,
            self.safety_ticks,
            self.liveness_ticks,
        )
    }
}
