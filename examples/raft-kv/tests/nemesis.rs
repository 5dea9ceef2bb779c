//! The nemesis suite, bounded: three real `raft-kv serve` processes on 127.0.0.1 for about 45
//! seconds of faults from a fixed seed (the lease-pause probe first, then kills, pauses,
//! partitions, flaky and slow links, transfers and a member replacement), then the checks. See
//! `nemesis/mod.rs`; `examples/nemesis.rs` runs it longer.
//!
//! The seed is `NEMESIS_SEED` if set, 1 otherwise. A failure keeps the data and logs and prints
//! where they are and the command that replays the schedule.

#[path = "../nemesis/mod.rs"]
mod nemesis;

use std::time::Duration;

/// How long the faults last in this bounded run.
const DURATION: Duration = Duration::from_secs(45);

#[test]
fn nemesis_three_nodes_bounded() {
    let seed = std::env::var("NEMESIS_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(1);
    let dir = tempfile::tempdir().expect("a temp dir");
    let options = nemesis::Options {
        seed,
        duration: DURATION,
        nodes: 3,
        scenario: nemesis::Scenario::Mixed,
        binary: env!("CARGO_BIN_EXE_raft-kv").into(),
        dir: dir.path().to_path_buf(),
        verbose: true,
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let report = runtime.block_on(nemesis::run(options));
    println!("{report}");
    if !report.anomalies.is_empty() {
        let kept = dir.keep();
        panic!(
            "the nemesis found {} anomalies, {} of them besides the lease-pause probe's (the known \
             stale lease read); data and logs kept in {}; replay the schedule with \
             NEMESIS_SEED={seed} cargo test -p raft-kv --test nemesis -- --nocapture, or \
             cargo run -p raft-kv --example nemesis -- --seed {seed} --nodes 3 --duration 45\n{report}",
            report.anomalies.len(),
            report.other_anomalies().len(),
            kept.display()
        );
    }
}
