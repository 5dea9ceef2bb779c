//! `kv_bench`: an HTTP load generator for `raft-kv serve --shards`, against real processes on
//! 127.0.0.1 (docs/sharding.md, "Measured", has results). Build the server with it:
//!
//! ```sh
//! cargo build --release -p raft-kv --bin raft-kv --example kv_bench
//! target/release/examples/kv_bench throughput --shards 1,8,64 --runs 3
//! target/release/examples/kv_bench rebalance --shards 8 --gib 1
//! ```
//!
//! `throughput`: per shard count, a fresh 3-node cluster (3 replicas per shard), then closed-loop
//! clients (one request in flight each, kept-alive HTTP/1.1), each request sent to its key's shard
//! leader (`shard_of`, leaders learnt from the nodes' status and from 307s): a PUT window, then a
//! linearizable GET window, each after a warm-up. The list runs `--runs` times in passes
//! (interleaved), and the medians are printed.
//!
//! `rebalance`: a 3-node cluster loaded with values, then a fourth and a fifth node join; the time
//! until the table is balanced and every shard group is exactly the table's voters, and the
//! longest span without a successful write of any shard meanwhile (a probe writer per shard).
#![forbid(unsafe_code)]

mod cluster;
mod http;
mod load;
mod rebalance;
mod route;
mod stats;
mod throughput;
mod unavailable;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// The command line.
#[derive(Parser)]
#[command(name = "kv_bench", about = "HTTP load against real raft-kv sharded clusters")]
struct Cli {
    /// The raft-kv binary (by default the one next to this program's directory).
    #[arg(long, global = true)]
    binary: Option<PathBuf>,
    /// Where the clusters' data and logs go (each cluster's deleted after it).
    #[arg(long, global = true, default_value = "kv-bench-data")]
    dir: PathBuf,
    #[command(subcommand)]
    mode: Mode,
}

/// What to measure.
#[derive(Subcommand)]
enum Mode {
    /// PUT and linearizable GET throughput and latency per shard count.
    Throughput {
        /// The shard counts.
        #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
        shards: Vec<u32>,
        /// Passes over the shard counts (medians are reported).
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// Closed-loop clients.
        #[arg(long, default_value_t = 64)]
        clients: u64,
        /// The key space.
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        /// The bytes of each value written.
        #[arg(long, default_value_t = 64)]
        value_bytes: usize,
        /// Seconds of warm-up before each window.
        #[arg(long, default_value_t = 5)]
        warmup: u64,
        /// Seconds of each measuring window.
        #[arg(long, default_value_t = 15)]
        duration: u64,
    },
    /// Time to rebalance after a fourth and a fifth node join a loaded 3-node cluster.
    Rebalance {
        /// The shards (3 replicas each).
        #[arg(long, default_value_t = 8)]
        shards: u32,
        /// GiB of values to load.
        #[arg(long, default_value_t = 1.0)]
        gib: f64,
        /// The bytes of each value loaded.
        #[arg(long, default_value_t = 65_536)]
        value_bytes: usize,
        /// Clients that load.
        #[arg(long, default_value_t = 16)]
        clients: u64,
        /// Seconds each rebalancing may take before it is reported as unfinished.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        /// Keep the data directory at the end.
        #[arg(long)]
        keep: bool,
    },
}

fn default_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.parent()?.join("raft-kv");
    candidate.exists().then_some(candidate)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(binary) = cli.binary.clone().or_else(default_binary) else {
        eprintln!(
            "kv_bench: no raft-kv binary next to this one; build it (cargo build --release -p raft-kv) or pass --binary"
        );
        return ExitCode::FAILURE;
    };
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() else {
        eprintln!("kv_bench: no tokio runtime");
        return ExitCode::FAILURE;
    };
    println!("kv_bench: {}, {} CPUs, load average {:.2}", binary.display(), cpus(), stats::load_average());
    let outcome = match cli.mode {
        Mode::Throughput { shards, runs, clients, keys, value_bytes, warmup, duration } => {
            let options = throughput::Options {
                binary,
                dir: cli.dir,
                shards,
                runs,
                clients,
                keys,
                value_bytes,
                warmup: Duration::from_secs(warmup),
                duration: Duration::from_secs(duration),
                settle_timeout: Duration::from_secs(120),
            };
            runtime.block_on(throughput::run(options))
        }
        Mode::Rebalance { shards, gib, value_bytes, clients, timeout, keep } => {
            let options = rebalance::Options {
                binary,
                dir: cli.dir,
                shards,
                bytes: (gib * 1024.0 * 1024.0 * 1024.0) as u64,
                value_bytes: value_bytes.max(1),
                clients,
                timeout: Duration::from_secs(timeout),
                keep,
            };
            runtime.block_on(rebalance::run(options))
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kv_bench: {error}");
            ExitCode::FAILURE
        }
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
