//! `nemesis`: long runs of the nemesis suite against real `raft-kv serve` processes on
//! 127.0.0.1 (see `nemesis/mod.rs` for what it does and checks). Build the server first:
//!
//! ```sh
//! cargo build --release -p raft-kv --bin raft-kv --example nemesis
//! target/release/examples/nemesis --duration 120 --seed 7 --nodes 5
//! target/release/examples/nemesis --scenario lease-pause --seed 1 --duration 30
//! ```
#![forbid(unsafe_code)]

#[path = "../nemesis/mod.rs"]
mod nemesis;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Which faults to inject.
#[derive(Clone, Copy, ValueEnum)]
enum ScenarioArg {
    /// Every kind of fault; the lease-pause probe first.
    Mixed,
    /// Only the lease-pause probe (a stale lease read after SIGSTOP/SIGCONT of the leader).
    LeasePause,
}

/// The command line.
#[derive(Parser)]
#[command(name = "nemesis", about = "Faults against real raft-kv processes, with a linearizability check")]
struct Cli {
    /// How long to inject faults, per run, in seconds.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// The seed of the first run (run i uses seed + i); by default one drawn from the OS (printed).
    #[arg(long)]
    seed: Option<u64>,
    /// How many nodes.
    #[arg(long, default_value = "3", value_parser = clap::builder::PossibleValuesParser::new(["3", "5"]))]
    nodes: String,
    /// Which faults.
    #[arg(long, value_enum, default_value_t = ScenarioArg::Mixed)]
    scenario: ScenarioArg,
    /// How many runs.
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// The raft-kv binary (by default the one next to this program's directory).
    #[arg(long)]
    binary: Option<PathBuf>,
}

fn default_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.parent()?.join("raft-kv");
    candidate.exists().then_some(candidate)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(binary) = cli.binary.clone().or_else(default_binary) else {
        eprintln!("nemesis: no raft-kv binary next to this one; build it (cargo build -p raft-kv) or pass --binary");
        return ExitCode::FAILURE;
    };
    let seed = match cli.seed {
        Some(seed) => seed,
        None => match getrandom::u64() {
            // Printed with every run's header and replay line, so the run can be replayed.
            Ok(seed) => {
                println!("seed {seed} (from the OS; --seed {seed} replays it)");
                seed
            }
            Err(error) => {
                eprintln!("nemesis: no seed from the OS ({error}); pass --seed");
                return ExitCode::FAILURE;
            }
        },
    };
    let scenario = match cli.scenario {
        ScenarioArg::Mixed => nemesis::Scenario::Mixed,
        ScenarioArg::LeasePause => nemesis::Scenario::LeasePause,
    };
    let nodes: u64 = cli.nodes.parse().unwrap_or(3);
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() else {
        eprintln!("nemesis: no tokio runtime");
        return ExitCode::FAILURE;
    };
    let mut failed = 0;
    for run in 0..cli.runs {
        let seed = seed.wrapping_add(run);
        let schedule = nemesis::schedule::schedule(seed, scenario, 12, scenario == nemesis::Scenario::Mixed);
        println!("run {} of {}: seed {seed}, {nodes} nodes, {} s; schedule begins:", run + 1, cli.runs, cli.duration);
        for (index, step) in schedule.iter().enumerate() {
            println!("  {}. {step}", index + 1);
        }
        let Ok(dir) = tempfile::tempdir() else {
            eprintln!("nemesis: no temp dir");
            return ExitCode::FAILURE;
        };
        let options = nemesis::Options {
            seed,
            duration: Duration::from_secs(cli.duration),
            nodes,
            scenario,
            binary: binary.clone(),
            dir: dir.path().to_path_buf(),
            verbose: true,
            shards: None,
            join_at: None,
        };
        let report = runtime.block_on(nemesis::run(options));
        println!("summary of run {} ---\n{report}", run + 1);
        if !report.anomalies.is_empty() {
            failed += 1;
            let kept = dir.keep();
            println!("data and logs kept in {}", kept.display());
            println!("replay: nemesis --seed {seed} --nodes {nodes} --duration {}", cli.duration);
        }
    }
    println!("runs: {}, with anomalies: {failed}", cli.runs);
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
