//! `nemesis`: long runs of the nemesis suite against real `raft-kv serve` processes on
//! 127.0.0.1 (see `nemesis/mod.rs` for what it does and checks). Build the server first:
//!
//! ```sh
//! cargo build --release -p raft-kv --bin raft-kv --example nemesis
//! target/release/examples/nemesis --duration 120 --seed 7 --nodes 5
//! target/release/examples/nemesis --scenario lease-pause --seed 1 --duration 30
//! target/release/examples/nemesis --shards 4 --replicas 3 --join-at 10 --seed 1 --duration 60
//! target/release/examples/nemesis --shards 4 --replicas 3 --join-at 5 --drain-at 15 --duration 60
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
    /// Run a sharded cluster of this many shards (`serve --shards`), with the faults it has.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    shards: Option<u32>,
    /// With `--shards`: the replicas of each shard.
    #[arg(long, requires = "shards", default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..))]
    replicas: u8,
    /// A new node joins (`serve --join`) this many seconds after the faults begin.
    #[arg(long)]
    join_at: Option<u64>,
    /// With `--shards`: one of the first nodes is drained (`POST /cluster/drain`) this many
    /// seconds after the faults begin, while they go on (wants `--join-at`, or more nodes than
    /// replicas, so that its replicas have somewhere to go).
    #[arg(long, requires = "shards")]
    drain_at: Option<u64>,
}

impl Cli {
    /// This run's flags besides the seed, for the replay line.
    fn replay_flags(&self) -> String {
        let mut flags = format!("--nodes {} --duration {}", self.nodes, self.duration);
        if let Some(shards) = self.shards {
            flags += &format!(" --shards {shards} --replicas {}", self.replicas);
        }
        if let Some(at) = self.join_at {
            flags += &format!(" --join-at {at}");
        }
        if let Some(at) = self.drain_at {
            flags += &format!(" --drain-at {at}");
        }
        flags
    }
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
    let shards = cli.shards.map(|shards| (shards, cli.replicas));
    if shards.is_some() && scenario == nemesis::Scenario::LeasePause {
        eprintln!("nemesis: the lease-pause probe does not run against a sharded cluster (see nemesis/mod.rs)");
        return ExitCode::FAILURE;
    }
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() else {
        eprintln!("nemesis: no tokio runtime");
        return ExitCode::FAILURE;
    };
    let mut failed = 0;
    for run in 0..cli.runs {
        let seed = seed.wrapping_add(run);
        let replace = scenario == nemesis::Scenario::Mixed && shards.is_none();
        let schedule = if shards.is_some() {
            nemesis::schedule::sharded(seed, 12)
        } else {
            nemesis::schedule::schedule(seed, scenario, 12, replace)
        };
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
            shards,
            join_at: cli.join_at.map(Duration::from_secs),
            drain_at: cli.drain_at.map(Duration::from_secs),
        };
        let report = runtime.block_on(nemesis::run(options));
        println!("summary of run {} ---\n{report}", run + 1);
        if !report.anomalies.is_empty() {
            failed += 1;
            let kept = dir.keep();
            println!("data and logs kept in {}", kept.display());
            println!("replay: nemesis --seed {seed} {}", cli.replay_flags());
        }
    }
    println!("runs: {}, with anomalies: {failed}", cli.runs);
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
