//! The simulation of the real stack: the code users run (raft-net's driver and TCP transport,
//! raft-storage's durable store) as turmoil hosts on a simulated network and simulated disks,
//! under partitions (also one-way), held links, latency, crashes that lose unsynced data,
//! process restarts, per-host clock skew and disk faults (I/O errors, corruption on reads, torn
//! writes).
//!
//! Each seed draws a configuration, runs a chaos phase of faults while clients issue key-value
//! operations through the nodes' client API, then heals everything and requires that a write
//! commits and is read back linearizably on every node (skipped where the disk injects errors
//! or corruption, which may stop nodes for good). Checked throughout: election safety (from the
//! driver's events), state machine safety (a chain hash over every applied command, also across
//! snapshots), that nodes stop only with expected typed reasons, that a store always reopens
//! after a crash, and at the end the linearizability of the client history.
//!
//! A seed runs one Raft group per node in about half of the seeds, on the single-group stack
//! (`DiskStorage` and `raft_net::start`), and 2 to 4 groups in the others, on the multi-Raft
//! stack (one `SharedWal` per node for every group, one transport, one `Host` driving every
//! group; see the `node` module). Every node is a voter of every group; each key belongs to one group
//! (key modulo the number of groups), so the clients' histories are per group already; a crash,
//! pause or disk fault of a node hits all of its groups at once. Every checker above runs per
//! group, and liveness requires the probe's write and reads in every group.
//!
//! Runs are deterministic: turmoil's seeded scheduler and network, tokio's seeded choices (the
//! workspace builds tokio with `tokio_unstable`, see `.cargo/config.toml`), the driver's
//! [`Execution::Tasks`](raft_net::Execution::Tasks) (no threads), and seeds for everything else.
//!
//! ```no_run
//! let report = sim::real::run(7);
//! assert!(report.violation.is_none(), "{:?}", report.violation);
//! assert_eq!(report.trace_hash, sim::real::run(7).trace_hash);
//! ```

mod client;
mod fs;
mod net;
mod node;
mod observe;
mod pause;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

use raft_core::{NodeId, Options};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

pub use fs::{TurmoilFile, TurmoilFs};
pub use net::{TurmoilConnector, TurmoilListener};
pub use observe::RealStats;

use crate::checkers::Violation;
use crate::linearizability;
use client::{ClientPlan, run_client};
use node::{NodePlan, run_node};
use observe::Observer;
use pause::PauseGate;

/// The simulated time per turmoil step.
const STEP: Duration = Duration::from_millis(1);
/// The base tick of every node (each host's clock scales it).
const TICK: Duration = Duration::from_millis(10);
/// How long after the heal a write must commit and be read back everywhere.
const LIVENESS_BUDGET: Duration = Duration::from_secs(20);
/// The linearizability checker's step budget per key.
const LINEARIZABILITY_STEPS_MAX: u64 = 2_000_000;

/// What one seed draws.
#[derive(Clone, Debug)]
pub struct RealConfig {
    /// The seed.
    pub seed: u64,
    /// Voters (3 or 5).
    pub nodes: u64,
    /// Client hosts.
    pub clients: u64,
    /// Raft groups on every node (1: the single-group stack; more: the multi-Raft stack).
    pub groups: u64,
    /// Idle groups quiesce, and each node's host watches its peers (multi-Raft seeds only:
    /// `raft_net::start` runs no watch, so it refuses quiet groups).
    pub quiesce: bool,
    /// Keys the clients use, over all groups (key `k` is in group `k % groups`).
    pub keys: u64,
    /// The chaos phase, in simulated time.
    pub chaos: Duration,
    /// Mean time between faults.
    pub fault_interval: Duration,
    /// Message latency bounds.
    pub latency: (Duration, Duration),
    /// Each host's clock rate (its tick is the base tick times this) and offset.
    pub clocks: Vec<(f64, Duration)>,
    /// Lease reads on (with a drift bound that covers the clock rates).
    pub lease_reads: bool,
    /// An administrator demotes voters to learners and back, and moves leadership.
    pub membership: bool,
    /// Take a snapshot every this many applied entries.
    pub snapshot_every_entries: u64,
    /// Entries kept below a snapshot when compacting.
    pub compaction_margin_entries: u64,
    /// The probability that unsynced writes become durable anyway, per operation.
    pub sync_probability: f64,
    /// Torn writes at this block size on crash (`None`: writes are atomic).
    pub torn_block: Option<u64>,
    /// The probability of an I/O error per file operation.
    pub io_error_probability: f64,
    /// The probability of silent corruption per read.
    pub corruption_probability: f64,
    /// Self-tests only: changes the core's options (e.g. to switch a deliberate bug on).
    pub options_hook: Option<crate::OptionsHook>,
    /// Self-tests only: every fsync (of files and directories) does nothing, as on a disk that
    /// lies about durability.
    pub fsync_lies: bool,
    /// Self-tests only: as `fsync_lies`, but each node's store (and its groups) is created
    /// honestly first, so that what a crash loses is acknowledged entries and votes, not the
    /// whole store.
    pub fsync_lies_after_create: bool,
    /// The chance, at each fault, that a running node is also paused (SIGSTOP) for up to three
    /// election timeouts; 0 in some seeds.
    pub pause_rate: f64,
}

impl RealConfig {
    /// The configuration seed `seed` draws.
    pub fn draw(seed: u64) -> RealConfig {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7e41_5eed);
        let mut pick = |n: u64| rng.next_u64() % n;
        let nodes = if pick(3) == 0 { 5 } else { 3 };
        let skew = pick(2) == 0;
        let clocks = (0..nodes)
            .map(|_| {
                let rate = if skew { 0.9 + pick(201) as f64 / 1000.0 } else { 1.0 };
                (rate, Duration::from_micros(pick(10_000)))
            })
            .collect();
        let latency_max = Duration::from_millis(1 + pick(20));
        let disk = pick(10);
        let groups = groups(seed);
        RealConfig {
            seed,
            nodes,
            clients: 2 + pick(3),
            groups,
            quiesce: quiesce(seed, groups),
            // 1 to 4 keys per group.
            keys: (1 + pick(4)) * groups,
            chaos: Duration::from_secs(6 + pick(7)),
            fault_interval: Duration::from_millis(100 + pick(400)),
            latency: (Duration::from_micros(200), latency_max),
            clocks,
            lease_reads: pick(2) == 0,
            membership: pick(2) == 0,
            snapshot_every_entries: [10, 50, 200][pick(3) as usize],
            compaction_margin_entries: [0, 4, 32][pick(3) as usize],
            sync_probability: [0.0, 0.0, 0.1, 0.5][pick(4) as usize],
            torn_block: if pick(2) == 0 { Some(512) } else { None },
            io_error_probability: if disk == 0 { 0.0005 } else { 0.0 },
            corruption_probability: if disk == 1 { 0.0002 } else { 0.0 },
            options_hook: None,
            fsync_lies: false,
            fsync_lies_after_create: false,
            pause_rate: pause_rate(seed),
        }
    }

    /// Whether the disk injects errors or corruption (which may stop nodes for good).
    pub fn disk_faults(&self) -> bool {
        self.io_error_probability > 0.0 || self.corruption_probability > 0.0
    }

    fn options(&self) -> Options {
        // Clock rates are 0.9 to 1.1 (up to 22% apart): over an election timeout of 10 ticks that
        // is about 2 ticks; the drift bound of 3 covers it.
        let builder = Options::builder()
            .election_ticks(10)
            .heartbeat_ticks(2)
            .pre_vote(true)
            .check_quorum(true)
            .lease_reads(self.lease_reads)
            .clock_drift_max_ticks(3)
            .snapshot_chunk_bytes_max(256)
            .compaction_margin_entries(self.compaction_margin_entries)
            .quiesce(self.quiesce);
        let builder = match self.options_hook {
            Some(hook) => hook(builder),
            None => builder,
        };
        builder.build().unwrap_or_else(|error| panic!("the simulation's options are valid: {error}"))
    }
}

/// The number of groups, drawn apart from the other choices (so that every other draw of a seed
/// stayed as it was): 1 in half of the seeds, 2 to 4 in the others.
fn groups(seed: u64) -> u64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6a0_0b5);
    if rng.next_u64() % 2 == 0 { 1 } else { 2 + rng.next_u64() % 3 }
}

/// Quiescence, drawn apart from the other choices (so that every other draw of a seed stayed
/// as it was): on in half of the multi-Raft seeds.
fn quiesce(seed: u64, groups: u64) -> bool {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9_1e5ce);
    groups > 1 && rng.next_u64() % 2 == 0
}

/// Drawn apart from the other choices, so that adding pauses left every other draw of a seed as
/// it was: none in a third of the seeds, up to 0.3 per fault in the rest.
fn pause_rate(seed: u64) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9a05_e000);
    if rng.next_u64() % 3 == 0 { 0.0 } else { (rng.next_u64() % 301) as f64 / 1000.0 }
}

impl fmt::Display for RealConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rates: Vec<String> = self.clocks.iter().map(|(rate, _)| format!("{rate:.3}")).collect();
        write!(
            f,
            "nodes={} groups={} quiesce={} clients={} keys={} chaos={:?} faults every ~{:?} latency<={:?} clock rates=[{}] lease={} membership={} \
             snapshot every {} margin {} sync_p={} torn={:?} io_error_p={} corruption_p={} pause_p={}",
            self.nodes,
            self.groups,
            self.quiesce,
            self.clients,
            self.keys,
            self.chaos,
            self.fault_interval,
            self.latency.1,
            rates.join(","),
            self.lease_reads,
            self.membership,
            self.snapshot_every_entries,
            self.compaction_margin_entries,
            self.sync_probability,
            self.torn_block,
            self.io_error_probability,
            self.corruption_probability,
            self.pause_rate
        )
    }
}

/// The outcome of one seed.
#[derive(Clone, Debug)]
pub struct RealReport {
    /// What the seed drew.
    pub config: RealConfig,
    /// The first violation, if any.
    pub violation: Option<Violation>,
    /// Counts.
    pub stats: RealStats,
    /// The linearizability checker ran out of budget on some key.
    pub linearizability_unknown: bool,
    /// A hash of every observation in order: equal for two runs of one seed.
    pub trace_hash: u64,
}

impl RealReport {
    /// The command that replays this seed.
    pub fn replay_command(&self) -> String {
        format!("cargo run --release -p sim -- --real --seed {}", self.config.seed)
    }
}

/// The faults in force, to undo them at the heal.
#[derive(Default)]
struct Faults {
    /// Host pairs partitioned (either way), held, or given failure rates or extra latency.
    cut: BTreeSet<(String, String)>,
    held: BTreeSet<(String, String)>,
    flaky: BTreeSet<(String, String)>,
    crashed: BTreeSet<String>,
    /// Paused hosts, and when each resumes.
    paused: BTreeMap<String, Duration>,
}

/// Runs seed `seed`.
pub fn run(seed: u64) -> RealReport {
    run_config(RealConfig::draw(seed))
}

/// Runs a given configuration.
pub fn run_config(config: RealConfig) -> RealReport {
    let observer = Observer::default();
    let mut builder = turmoil::Builder::new();
    builder
        .rng_seed(config.seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        .simulation_duration(Duration::from_secs(3600))
        .tick_duration(STEP)
        .min_message_latency(config.latency.0)
        .max_message_latency(config.latency.1)
        // A link that fails at random (see `inject`) comes back after 100 steps on average.
        .repair_rate(0.01);
    let fs = builder.fs();
    fs.sync_probability(config.sync_probability)
        .io_error_probability(config.io_error_probability)
        .corruption_probability(config.corruption_probability);
    if let Some(block) = config.torn_block {
        fs.block_size(block);
    }
    let mut sim = builder.build();
    let hosts: Vec<String> = (1..=config.nodes).map(|id| format!("n{id}")).collect();
    let options = config.options();
    let gates: Vec<PauseGate> = hosts.iter().map(|_| PauseGate::default()).collect();
    for (position, host) in hosts.iter().enumerate() {
        let (rate, offset) = config.clocks[position];
        let plan = NodePlan {
            id: NodeId(position as u64 + 1),
            hosts: hosts.clone(),
            tick_interval: Duration::from_secs_f64(TICK.as_secs_f64() * rate),
            offset,
            options: options.clone(),
            snapshot_every_entries: config.snapshot_every_entries,
            segment_bytes_max: 4096,
            disk_faults: config.disk_faults(),
            fsync_lies: config.fsync_lies,
            fsync_lies_after_create: config.fsync_lies_after_create,
            seed: config.seed,
            groups: config.groups,
            cache_bytes_max: 8 * 1024,
        };
        let observer = observer.clone();
        let gate = gates[position].clone();
        sim.host(host.as_str(), move || {
            let (plan, observer, gate) = (plan.clone(), observer.clone(), gate.clone());
            async move {
                // Every task of the node is spawned on this set (see `pause`).
                let tasks = tokio::task::LocalSet::new();
                gate.guard(tasks.run_until(run_node(plan, observer))).await
            }
        });
    }
    let addresses: Vec<_> = hosts.iter().map(|host| sim.lookup(host.as_str())).collect();
    for client in 1..=config.clients {
        let plan = ClientPlan {
            id: client,
            nodes: addresses.clone(),
            seed: config.seed ^ (client << 48),
            keys: config.keys,
            lease_reads: config.lease_reads,
            until: config.chaos,
        };
        sim.client(format!("c{client}").as_str(), run_client(plan, observer.clone()));
    }
    if config.membership {
        let plan = client::AdminPlan {
            nodes: addresses.clone(),
            groups: config.groups,
            seed: config.seed ^ 0xad,
            until: config.chaos,
            restored_by: config.chaos + LIVENESS_BUDGET / 2,
            required: !config.disk_faults(),
        };
        let admin = client::run_admin(plan, observer.clone());
        sim.client("admin", admin);
    }
    let probe = probe(
        addresses.clone(),
        config.groups,
        config.chaos + Duration::from_secs(1),
        !config.disk_faults(),
        observer.clone(),
    );
    sim.client("probe", probe);

    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0xfa17);
    // Pauses draw from their own stream, so the other faults of a seed stay as they were.
    let mut pause_rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x9a05_e5ed);
    let mut faults = Faults::default();
    let mut next_fault = config.fault_interval;
    let mut healed = false;
    let limit = config.chaos + LIVENESS_BUDGET + Duration::from_secs(10);
    let mut violation = None;
    loop {
        let elapsed = sim.elapsed();
        resume_due(&mut faults, &hosts, &gates, elapsed);
        if !healed && elapsed >= config.chaos {
            faults.paused.values_mut().for_each(|until| *until = Duration::ZERO);
            resume_due(&mut faults, &hosts, &gates, elapsed);
            heal(&mut sim, &mut faults, &hosts, config.latency.1);
            healed = true;
        } else if !healed && elapsed >= next_fault {
            inject(&mut sim, &mut rng, &mut faults, &hosts, &config, &observer);
            maybe_pause(&mut pause_rng, &mut faults, &hosts, &gates, &config, &observer, elapsed);
            let jitter = rng.next_u64() % (2 * config.fault_interval.as_millis() as u64 + 1);
            next_fault = elapsed + Duration::from_millis(jitter);
        } else if healed && elapsed.as_millis() % 500 == 0 {
            // Nodes that stopped since the heal (a fail-stop on a faulty disk) start again.
            restart_stopped(&mut sim, &hosts);
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => {
                violation = Some(Violation { property: "no panic", detail: format!("the simulation failed: {error}") });
                break;
            }
        }
        if observer.lock().violation.is_some() {
            break;
        }
        if sim.elapsed() > limit {
            violation = Some(Violation {
                property: "liveness",
                detail: format!("the clients did not finish within {limit:?} of simulated time"),
            });
            break;
        }
    }
    let simulated_ms = sim.elapsed().as_millis() as u64;
    drop(sim);
    let mut observed = observer.lock();
    observed.stats.simulated_ms = simulated_ms;
    let mut linearizability_unknown = false;
    if violation.is_none() && observed.violation.is_none() {
        match linearizability::judge(&observed.history, LINEARIZABILITY_STEPS_MAX) {
            Ok(decided) => linearizability_unknown = !decided,
            Err(found) => violation = Some(in_group(found, &observed.history, config.groups)),
        }
    }
    let violation = observed.violation.clone().or(violation);
    RealReport { config, violation, stats: observed.stats, linearizability_unknown, trace_hash: observed.trace }
}

/// Names the group of the key a linearizability violation is about (with several groups).
fn in_group(mut violation: Violation, history: &[linearizability::Operation], groups: u64) -> Violation {
    if groups > 1
        && let Ok(linearizability::Verdict::Violation(counterexample)) =
            linearizability::check(history, LINEARIZABILITY_STEPS_MAX)
    {
        violation.detail = format!("group {}: {}", client::group_of(counterexample.key, groups), violation.detail);
    }
    violation
}

/// Draws one fault and injects it.
fn inject(
    sim: &mut turmoil::Sim<'_>,
    rng: &mut ChaCha8Rng,
    faults: &mut Faults,
    hosts: &[String],
    config: &RealConfig,
    observer: &Observer,
) {
    let mut pick = |n: usize| (rng.next_u64() % n as u64) as usize;
    let a = hosts[pick(hosts.len())].clone();
    let b = hosts[pick(hosts.len())].clone();
    let pair = (a.clone().min(b.clone()), a.clone().max(b.clone()));
    let minority = (hosts.len() - 1) / 2;
    match pick(11) {
        0 | 1 if a != b => {
            sim.partition(a.as_str(), b.as_str());
            faults.cut.insert(pair);
            observer.lock().stats.partitions += 1;
        }
        2 if a != b => {
            sim.partition_oneway(a.as_str(), b.as_str());
            faults.cut.insert(pair);
            observer.lock().stats.partitions += 1;
        }
        3 if a != b => {
            sim.hold(a.as_str(), b.as_str());
            faults.held.insert(pair);
            observer.lock().stats.partitions += 1;
        }
        4 => {
            // Isolate `a` from every other node.
            for other in hosts.iter().filter(|other| **other != a) {
                sim.partition(a.as_str(), other.as_str());
                faults.cut.insert((a.clone().min(other.clone()), a.clone().max(other.clone())));
            }
            observer.lock().stats.partitions += 1;
        }
        5 => heal_links(sim, faults, config.latency.1),
        // A paused process is neither killed nor restarted here: it resumes first.
        6 if faults.crashed.len() < minority.max(1)
            && !faults.crashed.contains(&a)
            && !faults.paused.contains_key(&a) =>
        {
            // Power loss: the host's software stops, unsynced data is lost (torn per config).
            sim.crash(a.as_str());
            faults.crashed.insert(a);
            observer.lock().stats.crashes += 1;
        }
        7 => {
            if let Some(crashed) = faults.crashed.iter().next().cloned() {
                faults.crashed.remove(&crashed);
                sim.bounce(crashed.as_str());
            }
        }
        8 if !faults.crashed.contains(&a) && !faults.paused.contains_key(&a) => {
            // A process restart: the software starts over, the disk keeps even unsynced data.
            sim.bounce(a.as_str());
        }
        9 if a != b => {
            // A flaky link: it fails at random (and repairs at the builder's rate), and is slow.
            sim.set_link_fail_rate(a.as_str(), b.as_str(), 0.001 * (1 + pick(5)) as f64);
            let latency = config.latency.1 + Duration::from_millis(pick(100) as u64);
            sim.set_link_max_message_latency(a.as_str(), b.as_str(), latency);
            faults.flaky.insert(pair);
            observer.lock().stats.partitions += 1;
        }
        _ => restart_stopped(sim, hosts),
    }
}

/// Pauses a running node at `config.pause_rate`, for 1 to 3 election timeouts (by the base
/// tick): long enough for the others to elect a leader and commit while it is frozen.
fn maybe_pause(
    rng: &mut ChaCha8Rng,
    faults: &mut Faults,
    hosts: &[String],
    gates: &[PauseGate],
    config: &RealConfig,
    observer: &Observer,
    now: Duration,
) {
    let draw = rng.next_u64();
    if (draw % 1_000_000) as f64 >= config.pause_rate * 1_000_000.0 {
        return;
    }
    let position = (rng.next_u64() % hosts.len() as u64) as usize;
    let host = &hosts[position];
    if faults.crashed.contains(host) || faults.paused.contains_key(host) {
        return;
    }
    let timeout = TICK * 10;
    let length = timeout + Duration::from_micros(rng.next_u64() % (2 * timeout.as_micros() as u64 + 1));
    gates[position].pause();
    faults.paused.insert(host.clone(), now + length);
    let mut observed = observer.lock();
    observed.stats.pauses += 1;
    observed.trace(&[9, position as u8]);
}

/// Resumes the paused hosts whose pause is over.
fn resume_due(faults: &mut Faults, hosts: &[String], gates: &[PauseGate], now: Duration) {
    let due: Vec<String> = faults.paused.iter().filter(|(_, until)| **until <= now).map(|(h, _)| h.clone()).collect();
    for host in due {
        faults.paused.remove(&host);
        if let Some(position) = hosts.iter().position(|h| *h == host) {
            gates[position].resume();
        }
    }
}

/// Repairs every cut and releases every held link.
fn heal_links(sim: &mut turmoil::Sim<'_>, faults: &mut Faults, latency_max: Duration) {
    for (a, b) in std::mem::take(&mut faults.flaky) {
        sim.set_link_fail_rate(a.as_str(), b.as_str(), 0.0);
        sim.set_link_max_message_latency(a.as_str(), b.as_str(), latency_max);
        faults.cut.insert((a, b)); // A random failure may be in force: repair it below.
    }
    for (a, b) in std::mem::take(&mut faults.cut) {
        sim.repair(a.as_str(), b.as_str());
    }
    for (a, b) in std::mem::take(&mut faults.held) {
        sim.release(a.as_str(), b.as_str());
    }
}

/// Ends the chaos: every link works and every node runs.
fn heal(sim: &mut turmoil::Sim<'_>, faults: &mut Faults, hosts: &[String], latency_max: Duration) {
    heal_links(sim, faults, latency_max);
    for crashed in std::mem::take(&mut faults.crashed) {
        sim.bounce(crashed.as_str());
    }
    restart_stopped(sim, hosts);
}

/// Starts again the nodes whose software ended (a fail-stop, or a store that did not open).
fn restart_stopped(sim: &mut turmoil::Sim<'_>, hosts: &[String]) {
    for host in hosts {
        if !sim.is_host_running(host.as_str()) {
            sim.bounce(host.as_str());
        }
    }
}

/// After the heal: in every group, a write must commit and every node must read it back
/// (linearizably) within [`LIVENESS_BUDGET`]; its operations join the history. Without
/// `required` (faulty disks) the probe only adds to the history.
async fn probe(
    nodes: Vec<std::net::IpAddr>,
    groups: u64,
    start: Duration,
    required: bool,
    observer: Observer,
) -> turmoil::Result {
    tokio::time::sleep(start).await;
    let deadline = start + LIVENESS_BUDGET;
    for (offset, key) in client::probe_keys(groups).enumerate() {
        let session = client::PROBE_CLIENT + offset as u64;
        let done = client::probe_round(&nodes, key, session, deadline, &observer).await;
        if !done && required {
            let addresses: Vec<SocketAddr> = nodes.iter().map(|ip| SocketAddr::new(*ip, client::CLIENT_PORT)).collect();
            let group = client::group_of(key, groups);
            observer.lock().violate(
                "liveness",
                format!(
                    "group {group}: after the heal, a write was not committed and read back on every node of {addresses:?}"
                ),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linearizability::{Input, Operation, Outcome, Output};

    /// A stale read of key 7 (in group 3 of 4): the linearizability violation names the group.
    #[test]
    fn a_linearizability_violation_names_its_group() {
        let put = Operation {
            client: 1,
            input: Input::Put { key: 7, value: 1 },
            call: 1,
            outcome: Outcome::Returned { at: 10, output: Output::Done },
        };
        let stale_read = Operation {
            client: 2,
            input: Input::Get { key: 7 },
            call: 11,
            outcome: Outcome::Returned { at: 12, output: Output::Value(None) },
        };
        let history = [put, stale_read];
        let found = linearizability::judge(&history, 1_000).expect_err("a stale read");
        assert!(in_group(found.clone(), &history, 4).detail.starts_with("group 3: "));
        assert_eq!(in_group(found.clone(), &history, 1).detail, found.detail, "one group: as before");
    }
}
