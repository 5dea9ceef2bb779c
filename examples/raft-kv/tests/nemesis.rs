//! The nemesis suite, bounded: three real `raft-kv serve` processes on 127.0.0.1 for about 45
//! seconds of faults from a fixed seed (the lease-pause probe first, then kills, pauses,
//! partitions, flaky and slow links, transfers and a member replacement), then the checks. See
//! `nemesis/mod.rs`; `examples/nemesis.rs` runs it longer.
//!
//! `nemesis_sharded_bounded` runs the same against a sharded cluster (`serve --shards 4
//! --replicas 3`) for about 30 seconds, with the faults a sharded cluster has (kills, pauses,
//! partitions, flaky and slow links), and checks besides that every shard is back at three
//! replicas after healing. `nemesis_sharded_join_bounded` adds a fourth node (`serve --join`)
//! a few seconds in, so that the controller moves replicas to it while the faults go on, and
//! checks that every shard ends at three replicas, balanced over the four nodes. In sharded runs
//! faults are also aimed at the source and the target of a move under way.
//! `nemesis_sharded_moves_bounded` joins a fourth node at 5 s and drains one of the first three
//! at 13 s, under those faults, and checks besides that the drained node ends up holding no
//! replica, forgotten by the table, with every shard back at three replicas on the others.
//!
//! The seed is `NEMESIS_SEED` if set, 1 otherwise. A failure keeps the data and logs and prints
//! where they are and the command that replays the schedule.

#[path = "../nemesis/mod.rs"]
mod nemesis;

use std::time::Duration;

/// How long the faults last in this bounded run.
const DURATION: Duration = Duration::from_secs(45);
/// How long the faults last in the bounded sharded run.
const SHARDED_DURATION: Duration = Duration::from_secs(30);
/// When the fourth node joins in `nemesis_sharded_join_bounded`.
const JOIN_AT: Duration = Duration::from_secs(6);
/// How long the faults last in `nemesis_sharded_moves_bounded`.
const MOVES_DURATION: Duration = Duration::from_secs(28);
/// When the fourth node joins in `nemesis_sharded_moves_bounded`.
const MOVES_JOIN_AT: Duration = Duration::from_secs(5);
/// When a first node is drained in `nemesis_sharded_moves_bounded`.
const MOVES_DRAIN_AT: Duration = Duration::from_secs(13);

#[test]
fn nemesis_three_nodes_bounded() {
    let example = "cargo run -p raft-kv --example nemesis -- --seed {seed} --nodes 3 --duration 45";
    bounded("nemesis_three_nodes_bounded", DURATION, None, None, None, example);
}

#[test]
fn nemesis_sharded_bounded() {
    let example = "cargo run -p raft-kv --example nemesis -- --seed {seed} --nodes 3 --duration 30 --shards 4 \
                   --replicas 3";
    bounded("nemesis_sharded_bounded", SHARDED_DURATION, Some((4, 3)), None, None, example);
}

#[test]
fn nemesis_sharded_join_bounded() {
    let example = "cargo run -p raft-kv --example nemesis -- --seed {seed} --nodes 3 --duration 30 --shards 4 \
                   --replicas 3 --join-at 6";
    bounded("nemesis_sharded_join_bounded", SHARDED_DURATION, Some((4, 3)), Some(JOIN_AT), None, example);
}

#[test]
fn nemesis_sharded_moves_bounded() {
    let example = "cargo run -p raft-kv --example nemesis -- --seed {seed} --nodes 3 --duration 28 --shards 4 \
                   --replicas 3 --join-at 5 --drain-at 13";
    let (join, drain) = (Some(MOVES_JOIN_AT), Some(MOVES_DRAIN_AT));
    bounded("nemesis_sharded_moves_bounded", MOVES_DURATION, Some((4, 3)), join, drain, example);
}

/// Runs the suite on three nodes for `duration` (sharded when `shards` says so, a node joining
/// at `join_at` and one drained at `drain_at` if given); on an anomaly, keeps the data and logs and panics with the report and
/// the commands that replay the schedule: the test `name`, and `example` (with `{seed}` for the
/// seed).
fn bounded(
    name: &str,
    duration: Duration,
    shards: Option<(u32, u8)>,
    join_at: Option<Duration>,
    drain_at: Option<Duration>,
    example: &str,
) {
    let seed = std::env::var("NEMESIS_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(1);
    for attempt in 1..=ATTEMPTS_MAX {
        let run = Run { name, duration, shards, join_at, drain_at, example, seed };
        match run.once() {
            Ok(()) => return,
            Err(failed) if attempt < ATTEMPTS_MAX && port_taken(failed.0.path()) => {
                println!("attempt {attempt}: a node found its port taken (not the cluster's doing); starting over");
            }
            Err(failed) => {
                let (dir, report) = *failed;
                run.fail(dir, &report)
            }
        }
    }
}

/// How many times a bounded run starts over when a node found its port taken.
const ATTEMPTS_MAX: u32 = 3;

/// Whether a node's log under `dir` says its port was taken: the suite finds its ports free,
/// then lets them go for the nodes, and another test (they run in parallel) or an outgoing
/// connection may take one in between; that, and nothing else, is a reason to start over.
fn port_taken(dir: &std::path::Path) -> bool {
    let logs = std::fs::read_dir(dir).into_iter().flatten().flatten();
    logs.filter(|entry| entry.path().extension().is_some_and(|extension| extension == "log"))
        .any(|entry| std::fs::read_to_string(entry.path()).is_ok_and(|log| log.contains("Address already in use")))
}

/// One bounded run's parameters (see [`bounded`]).
struct Run<'a> {
    name: &'a str,
    duration: Duration,
    shards: Option<(u32, u8)>,
    join_at: Option<Duration>,
    drain_at: Option<Duration>,
    example: &'a str,
    seed: u64,
}

impl Run<'_> {
    /// Runs the suite once; on an anomaly, the data and logs, and the report.
    fn once(&self) -> Result<(), Box<(tempfile::TempDir, nemesis::Report)>> {
        let Run { duration, shards, join_at, drain_at, seed, .. } = *self;
        let dir = tempfile::tempdir().expect("a temp dir");
        let options = nemesis::Options {
            seed,
            duration,
            nodes: 3,
            scenario: nemesis::Scenario::Mixed,
            binary: env!("CARGO_BIN_EXE_raft-kv").into(),
            dir: dir.path().to_path_buf(),
            verbose: true,
            shards,
            join_at,
            drain_at,
        };
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
        let report = runtime.block_on(nemesis::run(options));
        println!("{report}");
        if report.anomalies.is_empty() { Ok(()) } else { Err(Box::new((dir, report))) }
    }

    /// Keeps the data and logs of a run that found anomalies, and fails with the commands that
    /// replay its schedule.
    fn fail(&self, dir: tempfile::TempDir, report: &nemesis::Report) -> ! {
        let kept = dir.keep();
        let (name, seed) = (self.name, self.seed);
        let example = self.example.replace("{seed}", &seed.to_string());
        panic!(
            "the nemesis found {} anomalies, {} of them besides the lease-pause probe's (the known \
             stale lease read); data and logs kept in {}; replay the schedule with \
             NEMESIS_SEED={seed} cargo test -p raft-kv --test nemesis {name} -- --nocapture, or {example}\n{report}",
            report.anomalies.len(),
            report.other_anomalies().len(),
            kept.display()
        );
    }
}

/// Only a node log that says its port was taken starts a bounded run over.
#[test]
fn a_run_starts_over_only_when_a_port_was_taken() {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("node-1.1.log"), "serving\n").expect("a log");
    std::fs::write(dir.path().join("notes.txt"), "Address already in use").expect("a file");
    assert!(!port_taken(dir.path()));
    std::fs::write(dir.path().join("node-2.1.log"), "ERROR raft_kv: binding 127.0.0.1:1: Address already in use")
        .expect("a log");
    assert!(port_taken(dir.path()));
}
