//! The simulator over a fixed set of seeds, its determinism, and proof that it catches bugs.

use raft_core::{BugKnobs, OptionsBuilder};
use sim::{Report, RunOptions, TimePolicy};

fn check(report: &Report) {
    if let Some(violation) = &report.violation {
        panic!(
            "seed {} failed: {violation}\n  config: {}\n  replay: {}",
            report.config.seed,
            report.config,
            report.replay_command()
        );
    }
}

/// Seeds that fail on raft-core before the fix of a bug the simulator found (each verified by
/// reverting the fix in a scratch worktree and re-running 12,000 seeds with this simulator):
/// - 34, 90, 115 (liveness): a leader whose last appends, or their answers, were lost never
///   re-sent them when no new proposal came; a heartbeat answer from a lagging follower now
///   triggers an empty probe at the leader's last index;
/// - 1170 (log matching): a lone voter took proposals before its term was durable, crashed, and
///   led the same term again, handing out the same (index, term) for another command;
/// - 131265 (liveness; pre-vote off, check-quorum on, membership changes): the node with the
///   newest log and a lower term campaigned only towards a node with a stale log, an older
///   membership and a higher term, which dropped the lower-term vote requests unanswered and
///   itself campaigned only towards a third node (a learner to the first); nobody told the first
///   node the higher term and no leader was elected. A stale vote request is now refused with
///   the current term (Raft §5.1). Since clients without a leader hint walk the ring instead of
///   drawing any node, 131265 runs another history and passes on the unfixed core too; 114114,
///   119688 and 120452 (of 100000..150000, the only failures there on the unfixed core with
///   those clients) replayed the same stall, a stale candidate whose only peers never answer it,
///   until the simulator began to drive time as the shipped driver does; with both changes,
///   19785 and 23883 are the failures of 0..30000 on the unfixed core (the same stall, pre-vote
///   off), and they pass with the fix. All stay here as seeds that must pass.
///
///
/// Snapshots (issue 5), key-value clients with reads (issue 7) and membership changes (issue 6)
/// added events to every run, so these seeds now replay different histories;
/// they stay as passing seeds, and each bug keeps its scripted test in raft-core/tests.
///
/// A third bug the simulator found (refusing a higher-term vote restarted the election timer; seed
/// 10253 of an earlier version of the simulator) no longer reproduces in 12,000 seeds since paused
/// nodes stopped taking client proposals; its scripted test is in raft-core/tests/regressions.rs.
///
/// Seed 28 restarted a joined node from a snapshot it took before it learned the membership,
/// which the first check of stored memberships refused (raft-core/tests/membership_types.rs).
///
/// Quiescence (issue 19) is drawn on in one seed in three, among them 28, 90, 23883 and 120452,
/// which therefore replay other histories since; seeds that draw it off replay byte for byte as
/// before it existed.
const REGRESSION_SEEDS: [u64; 11] = [28, 34, 90, 115, 1170, 19785, 23883, 114114, 119688, 120452, 131265];

// Seeds 363 and 2827 (8-byte snapshot chunks) found two snapshot-transfer storms: a late copy
// of the first chunk reset the follower's transfer, and gap reports below the acknowledged
// offset let every chunk up to it go out at once. Their runs changed when clients, reads and
// membership changes joined the simulator, so they no longer replay the storms; the scripted
// tests in raft-core/tests/snapshots.rs (`a_late_copy_of_the_first_chunk_does_not_reset_the_
// transfer`, `a_follower_restarting_mid_transfer_gets_the_snapshot_from_the_start`) are the
// regressions now.

#[test]
fn regression_seeds_pass() {
    raft_testkit::init_tracing(); // RUST_LOG shows the crates' logs (for failing tests).
    for seed in REGRESSION_SEEDS {
        check(&sim::run(seed, RunOptions::default()));
    }
}

#[test]
fn two_hundred_seeds_pass_every_checker() {
    let mut committed = 0;
    for seed in 1000..1200 {
        let report = sim::run(seed, RunOptions::default());
        check(&report);
        committed += report.stats.commands_committed;
    }
    // The runs do real work: clients get commands through despite the faults.
    assert!(committed > 10_000, "only {committed} commands committed over 200 seeds");
}

/// Seeds made snapshot-heavy: frequent snapshots with no margin, tiny chunks, crashes and loss.
/// Followers that were down or cut off while the leader compacted rejoin by snapshot, and every
/// checker (log matching and completeness through snapshot boundaries, state machine digests at
/// restores) stays green.
#[test]
fn snapshot_heavy_seeds_rejoin_by_snapshot_and_pass_every_checker() {
    let mut installed = 0;
    for seed in 5000..5040 {
        let mut config = sim::SimConfig::from_seed(seed);
        config.snapshot_rate = 0.05;
        config.compaction_margin_entries = 0;
        config.snapshot_chunk_bytes_max = 16;
        config.snapshot_filler_bytes = 300;
        config.crash_rate = config.crash_rate.max(0.005);
        let report = sim::run_config(config, RunOptions::default());
        check(&report);
        installed += report.stats.snapshots_installed;
    }
    assert!(installed >= 20, "only {installed} snapshots installed over 40 seeds");
}

#[test]
fn a_seed_replays_byte_for_byte() {
    for seed in [3, 99, 4242] {
        let first = sim::run(seed, RunOptions::default());
        let second = sim::run(seed, RunOptions::default());
        assert_eq!(first.trace_hash, second.trace_hash, "seed {seed} is not deterministic");
        assert_eq!(first.stats, second.stats);
    }
    assert_ne!(sim::run(3, RunOptions::default()).trace_hash, sim::run(4, RunOptions::default()).trace_hash);
}

/// Runs seeds with `hook` until one reports a violation; returns (seed, property). Quiescence is
/// off, so that the seeds replay the histories they did before it existed (its workload pauses
/// leave fewer commits racing with crashes, and these self-tests are about the checkers).
fn first_violation(hook: fn(OptionsBuilder) -> OptionsBuilder, seeds: std::ops::Range<u64>) -> Option<(u64, String)> {
    for seed in seeds {
        let mut config = sim::SimConfig::from_seed(seed);
        config.quiesce = false;
        config.workload_pause_rate = 0.0;
        let report = sim::run_config(config, RunOptions { options_hook: Some(hook), ..RunOptions::default() });
        if let Some(violation) = report.violation {
            return Some((seed, violation.property.to_string()));
        }
    }
    None
}

#[test]
fn catches_commits_of_old_terms_by_counting() {
    let hook = |b: OptionsBuilder| b.bug_knobs(BugKnobs { commit_old_terms_by_counting: true, ..BugKnobs::default() });
    let found = first_violation(hook, 0..BUG_SEED_BOUND);
    assert!(found.is_some(), "Figure-8 bug not caught in {BUG_SEED_BOUND} seeds");
}

#[test]
fn catches_forgotten_votes() {
    let hook = |b: OptionsBuilder| b.bug_knobs(BugKnobs { forget_votes: true, ..BugKnobs::default() });
    let found = first_violation(hook, 0..BUG_SEED_BOUND);
    assert!(found.is_some(), "vote durability bug not caught in {BUG_SEED_BOUND} seeds");
}

#[test]
fn catches_votes_for_out_of_date_candidates() {
    let hook = |b: OptionsBuilder| b.bug_knobs(BugKnobs { skip_up_to_date_check: true, ..BugKnobs::default() });
    let found = first_violation(hook, 0..BUG_SEED_BOUND);
    assert!(found.is_some(), "up-to-date check bug not caught in {BUG_SEED_BOUND} seeds");
}

const BUG_SEED_BOUND: u64 = 2000;

/// Three nodes, check-quorum and lease reads on, one key, four clients, partitions but no
/// crashes or pauses (they only make lease reads rarer), and clocks drifting by up to `drift`.
fn lease_exposed(seed: u64, drift: f64) -> sim::SimConfig {
    let mut config = sim::SimConfig::from_seed(seed);
    config.nodes = 3;
    config.check_quorum = true;
    config.pre_vote = true;
    config.lease_reads = true;
    config.drift = drift;
    config.clock_drift_max_ticks = sim::config::lease_drift_ticks(config.election_ticks, drift);
    config.partition_rate = 0.05;
    config.crash_rate = 0.0;
    config.crash_after_commit = 0.0;
    config.pause_rate = 0.0;
    config.clients = 4;
    config.keys = 1;
    config
}

/// docs/pitfalls.md #26: with clocks drifting far beyond what the lease assumes (±90% against a bound
/// of 0), an old leader keeps serving lease reads after a new one has committed writes. The
/// linearizability checker must report it within a bounded number of seeds: proof that it can
/// fail in a run (the first such seed was 314 when this test was written; it moved past 2000
/// when the simulator began to drive time as the shipped driver does and clients without a
/// leader hint began to walk the ring, changes that reshuffled every run).
#[test]
fn stale_lease_reads_beyond_the_drift_bound_are_caught() {
    let found = (0..LEASE_SEED_BOUND).find_map(|seed| {
        let mut config = lease_exposed(seed, 0.9);
        config.clock_drift_max_ticks = 0;
        let report = sim::run_config(config, RunOptions::default());
        report.violation.filter(|v| v.property == "linearizability").map(|v| (seed, v))
    });
    let (seed, violation) = found.expect("no stale lease read caught");
    println!("seed {seed}: {violation}");
}

/// Within the bound (±20% drift, the lease shortened to match), the same exposure passes.
#[test]
fn lease_reads_within_the_drift_bound_pass() {
    for seed in 0..200 {
        check(&sim::run_config(lease_exposed(seed, 0.2), RunOptions::default()));
    }
}

const LEASE_SEED_BOUND: u64 = 3000;

/// docs/pitfalls.md #29, found by real processes: a leader paused (SIGSTOP, a stalled loop) past its
/// lease answered lease reads that waited in its queue from a lease that had run out, because its
/// driver lost the ticks of the pause and handed over the queued reads first. Seed 3143 of the
/// swarm was such a run until the `CommitNotice` changed every seed's messages: under the old
/// driver's time policy, node 1, an old leader, was paused past its lease while another leader
/// committed a `put`, and at the resume answered a lease read queued meanwhile with the value
/// the `put` had replaced. Now seed 1847 is the one of `--seeds 4000` that the linearizability
/// checker catches under the old policy (`--seed 1847 --time-policy loses-paused-ticks`); under
/// the policy we ship (`raft_net::DriverClock`) it passes.
const STALE_LEASE_AFTER_PAUSE_SEED: u64 = 1847;

#[test]
fn a_stale_lease_read_after_a_pause_is_caught_under_the_old_time_policy_and_gone_under_the_shipped_one() {
    let old = RunOptions { time_policy: TimePolicy::LosesPausedTicks, ..RunOptions::default() };
    let report = sim::run(STALE_LEASE_AFTER_PAUSE_SEED, old);
    let property = report.violation.as_ref().map(|violation| violation.property);
    assert_eq!(property, Some("linearizability"), "{:?}", report.violation);
    check(&sim::run(STALE_LEASE_AFTER_PAUSE_SEED, RunOptions::default()));
}

/// Three nodes with lease reads, frequent pauses and clients that queue requests at paused
/// nodes, no drift: what a lease must survive is the pause alone.
fn pause_exposed(seed: u64) -> sim::SimConfig {
    let mut config = lease_exposed(seed, 0.0);
    config.pause_rate = 0.03;
    config.partition_rate = 0.0;
    config
}

/// The same exposure over many seeds: the old policy is caught within a bounded number of
/// seeds (proof that the simulator models pauses that matter), the shipped one never is.
#[test]
fn pauses_expose_the_old_time_policy_and_not_the_shipped_one() {
    let old = RunOptions { time_policy: TimePolicy::LosesPausedTicks, ..RunOptions::default() };
    let found = (0..PAUSE_SEED_BOUND).find_map(|seed| {
        let report = sim::run_config(pause_exposed(seed), old);
        report.violation.filter(|v| v.property == "linearizability").map(|v| (seed, v))
    });
    let (seed, violation) = found.expect("no stale lease read after a pause caught");
    println!("seed {seed}: {violation}");
    for seed in 0..200 {
        check(&sim::run_config(pause_exposed(seed), RunOptions::default()));
    }
}

const PAUSE_SEED_BOUND: u64 = 1000;

/// Seeds made membership-heavy: frequent random changes (add learner, add or promote voter,
/// remove, leadership transfer) among up to seven nodes, under every fault. Election safety stays
/// global per term and state machines stay equal (every checker runs).
#[test]
fn membership_heavy_seeds_pass_every_checker() {
    let mut changes = 0;
    for seed in 7000..7060 {
        let mut config = sim::SimConfig::from_seed(seed);
        config.spare_nodes = 7 - config.nodes.min(5);
        config.membership_rate = 0.05;
        let report = sim::run_config(config, RunOptions::default());
        check(&report);
        changes += report.stats.membership_changes;
    }
    assert!(changes >= 300, "only {changes} changes accepted over 60 seeds");
}

/// Quiescence with faults that leave quiet periods: three or five voters, the workload pausing
/// often and long, leaders crashing, no partitions or pauses (they would hide the crashes).
fn quiet_exposed(seed: u64) -> sim::SimConfig {
    let mut config = sim::SimConfig::from_seed(seed);
    config.nodes = if seed.is_multiple_of(2) { 3 } else { 5 };
    config.spare_nodes = 0;
    config.membership_rate = 0.0;
    config.quiesce = true;
    config.workload_pause_rate = 0.05;
    config.workload_pause_ticks_max = 40 * u64::from(config.election_ticks);
    config.partition_rate = 0.0;
    config.pause_rate = 0.0;
    config.crash_rate = 0.002;
    config.crash_after_commit = 0.0;
    config
}

/// The liveness path of quiescence: leaders that crash while quiet are replaced while they are
/// down (followers learn of it only from the node-level liveness policy, `PeerLiveness`, and
/// `Raft::peer_down`), every checker passes, and the runs converge after healing. Withholding
/// the reports from the cores (the drivers still ping) replaces far fewer: a quiet follower has
/// no timer of its own to notice the crash.
#[test]
fn crashed_quiet_leaders_are_replaced_through_node_level_liveness() {
    let (mut stats, mut withheld) = (sim::Stats::default(), sim::Stats::default());
    for seed in 0..40 {
        let report = sim::run_config(quiet_exposed(seed), RunOptions::default());
        check(&report);
        stats.add(&report.stats);
        let without = RunOptions { withhold_peer_down: true, ..RunOptions::default() };
        withheld.add(&sim::run_config(quiet_exposed(seed), without).stats);
    }
    println!("with reports: {stats:?}\nwithheld: {withheld:?}");
    assert!(
        stats.quiet_ticks > stats.ticks / 10,
        "groups were quiet only {} of {} ticks",
        stats.quiet_ticks,
        stats.ticks
    );
    assert!(stats.quiet_leader_crashes >= 10, "only {} quiet leaders crashed", stats.quiet_leader_crashes);
    // A crashed node comes back after up to five election timeouts; noticing the silence takes
    // one and the election one or two more, so about half are replaced before they return.
    assert!(
        stats.quiet_leaders_replaced * 3 >= stats.quiet_leader_crashes,
        "{} of {} crashed quiet leaders replaced",
        stats.quiet_leaders_replaced,
        stats.quiet_leader_crashes
    );
    // Without the reports, only a follower woken for another reason (another node's restart or
    // campaign) notices. Since the `CommitNotice` changed every seed's messages these 40 seeds
    // give 25 of 52 replaced with the reports and 7 of 63 without (the bound was 4x before, with
    // other runs); the bound is 3x, far more than chance moves it.
    assert!(withheld.quiet_leader_crashes >= 10);
    assert!(
        withheld.quiet_leaders_replaced * 3 <= stats.quiet_leaders_replaced,
        "without the reports {} of {} replaced, with them {} of {}",
        withheld.quiet_leaders_replaced,
        withheld.quiet_leader_crashes,
        stats.quiet_leaders_replaced,
        stats.quiet_leader_crashes
    );
}

/// Seeds with quiescence drawn on pass every checker (the CLI runs thousands; this is a sample
/// that `cargo test` keeps honest).
#[test]
fn quiescence_seeds_pass_every_checker() {
    let seeds: Vec<u64> = (2000..2600).filter(|&seed| sim::SimConfig::from_seed(seed).quiesce).take(60).collect();
    assert_eq!(seeds.len(), 60);
    let mut quiet_ticks = 0;
    for seed in seeds {
        let report = sim::run(seed, RunOptions::default());
        check(&report);
        quiet_ticks += report.stats.quiet_ticks;
    }
    assert!(quiet_ticks > 0);
}
