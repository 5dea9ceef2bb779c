//! Fuzzing harnesses (feature `fuzzing`): each takes the fuzzer's bytes, checks properties, and
//! panics only on a bug (in raft-core, or in the simulator's model of a driver). The cargo-fuzz
//! targets in `fuzz/` call them, and the crate's tests replay the stored corpus through them.
//!
//! - [`node_inputs`] (target 3): one node fed arbitrary inputs by a fuzzer-driven driver.
//! - [`cluster_schedule`] (target 4): a whole simulated cluster whose schedule the fuzzer writes.

use arbitrary::Unstructured;

use crate::config::{SimConfig, TICK_UNITS, lease_drift_ticks};
use crate::world::{RunOptions, run_schedule};

mod node;
pub use node::node_inputs;

/// Target 4: a simulated cluster whose configuration comes from the first bytes and whose whole
/// schedule (every delivery, loss, duplicate, delay, partition, crash, crash right after a
/// commit, pause, snapshot, and client operation) comes from the rest, through the simulator's
/// byte-driven entropy source. Every checker is on: election safety, leader append-only, log
/// matching, leader completeness, state machine safety, durable-only apply, snapshot transfer,
/// linearizability of the clients' history, bounded traffic and liveness once the schedule's
/// bytes run out and the cluster heals. A violation panics with the property and the config.
///
/// Membership changes are not simulated yet (they do not exist before issue 6).
pub fn cluster_schedule(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(config) = config_from(&mut u) else { return };
    // FUZZ_DEBUG=1 prints what the input ran, FUZZ_DEBUG=trace every event too (when replaying
    // through the test build).
    let debug = std::env::var("FUZZ_DEBUG").ok();
    let run_options = RunOptions { verbose: debug.as_deref() == Some("trace"), ..RunOptions::default() };
    let report = run_schedule(config, run_options, u.take_rest());
    if debug.is_some() {
        eprintln!("config: {}\n{:?}", report.config, report.stats);
    }
    if let Some(violation) = report.violation {
        panic!("{violation} (config: {})", report.config);
    }
}

/// A probability in `[0, max]` from one byte.
fn rate(u: &mut Unstructured<'_>, max: f64) -> arbitrary::Result<f64> {
    Ok(f64::from(u.arbitrary::<u8>()?) / 255.0 * max)
}

/// A swarm configuration from the fuzzer's bytes: the same fields as [`SimConfig::from_seed`]
/// draws, in similar ranges, with a short safety phase so that one input runs in milliseconds.
fn config_from(u: &mut Unstructured<'_>) -> arbitrary::Result<SimConfig> {
    let election_ticks = 10;
    let check_quorum = u.arbitrary()?;
    let drift = rate(u, 0.2)?;
    let lease_reads = check_quorum && u.arbitrary::<bool>()?;
    let nodes = u.int_in_range(1..=5)?;
    let seed: u64 = u.arbitrary()?;
    // Taken from the seed, so that the bytes of the stored inputs keep their meaning.
    let quiesce = seed.is_multiple_of(3);
    Ok(SimConfig {
        seed,
        nodes,
        election_ticks,
        heartbeat_ticks: u.int_in_range(1..=3)?,
        pre_vote: u.arbitrary()?,
        check_quorum,
        loss: rate(u, 0.3)?,
        duplicate: rate(u, 0.2)?,
        delay_max: u.int_in_range(1..=3 * TICK_UNITS)?,
        partition_rate: rate(u, 0.1)?,
        crash_rate: rate(u, 0.05)?,
        crash_after_commit: rate(u, 0.5)?,
        pause_rate: rate(u, 0.05)?,
        drift,
        sync_delay_max: u.int_in_range(1..=TICK_UNITS)?,
        message_entries_max: *u.choose(&[1, 2, 8, 64])?,
        clients: u.int_in_range(1..=4)?,
        snapshot_rate: rate(u, 0.1)?,
        compaction_margin_entries: *u.choose(&[0, 1, 4, 32])?,
        snapshot_chunk_bytes_max: *u.choose(&[32, 256, 4096])?,
        snapshot_filler_bytes: u.int_in_range(0..=2047)?,
        keys: u.int_in_range(1..=5)?,
        lease_reads,
        clock_drift_max_ticks: lease_drift_ticks(election_ticks, drift),
        spare_nodes: u.int_in_range(0..=2)?,
        membership_rate: rate(u, 0.05)?,
        quiesce,
        workload_pause_rate: if quiesce { 0.02 } else { 0.0 },
        workload_pause_ticks_max: 20 * u64::from(election_ticks),
        safety_ticks: u.int_in_range(10..=300)?,
        liveness_ticks: 40 * u64::from(election_ticks),
    })
}
