//! Throughput and latency of a Raft group running in this process.
//!
//! ```text
//! cargo run --release -p bench -- --nodes 3 --clients 256 --ops 1000000 --transport mem --storage mem --payload 0
//! cargo run --release -p bench -- --matrix            # configurations A and B, a markdown table each
//! ```
//!
//! A run starts a fresh group (nodes, transport, stores), waits for a leader that every node
//! knows of, and starts `--clients` closed-loop clients (tokio tasks, one proposal in flight each)
//! on the leader; an operation completes when `NodeHandle::propose` returns, that is when the
//! entry is applied on the leader. After `--warmup`, it measures until `--ops` operations have
//! completed or `--duration` has passed, whichever comes first, and prints the throughput and the
//! latency percentiles. See BENCHMARKS.md at the repository root for the method and results.
//!
//! Configuration A (openraft's benchmark setup): in-memory transport without serialization,
//! in-memory store, empty payload. Configuration B: TCP on 127.0.0.1 with postcard frames, the
//! write-ahead log with fdatasync (group commit), 64 B and 1 KiB payloads. Both are measured next
//! to the reference limits of the same machine: the disk's raw fsync rate and the loopback RTT.
#![forbid(unsafe_code)]

mod cluster;
mod load;
mod reference;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use cluster::{BenchResult, Cluster, ClusterSpec, StorageKind, TransportKind};
use load::{LoadPlan, LoadResult};

/// Throughput and latency of a Raft group in this process (closed-loop clients on the leader).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Voters in the group.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Concurrent clients, each with one proposal in flight.
    #[arg(long, default_value_t = 256)]
    clients: usize,
    /// End the measuring window after this many operations [default: 1000000].
    #[arg(long)]
    ops: Option<u64>,
    /// ... or after this many seconds, whichever comes first [default: 60, with --matrix 5].
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds of load before the measuring window.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// How the nodes reach each other.
    #[arg(long, value_enum, default_value_t = TransportKind::Mem)]
    transport: TransportKind,
    /// Where the nodes keep their logs.
    #[arg(long, value_enum, default_value_t = StorageKind::Mem)]
    storage: StorageKind,
    /// Bytes of each command.
    #[arg(long, default_value_t = 0)]
    payload: usize,
    /// Run configurations A and B and print a markdown table of each (ignores the options of a
    /// single run above, except --nodes, --ops, --duration and --warmup).
    #[arg(long)]
    matrix: bool,
    /// Directory for the WALs and the fsync probe (must be on the disk to measure, not tmpfs)
    /// [default: the system's temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Each node snapshots and compacts its log every this many entries (0: never).
    #[arg(long, default_value_t = 100_000)]
    snapshot_every: u64,
    /// Tokio worker threads for the clients and the nodes' tasks [default: the CPUs available].
    #[arg(long)]
    workers: Option<usize>,
    /// Seconds between progress lines (on stderr; 0: none).
    #[arg(long, default_value_t = 2.0)]
    progress: f64,
    /// Seconds each reference measurement (fsync loop, ping-pong) runs.
    #[arg(long, default_value_t = 1.0)]
    reference_time: f64,
}

/// Client counts of configuration A (openraft's published benchmark plus 4096).
const MATRIX_A_CLIENTS: [usize; 5] = [1, 64, 256, 1024, 4096];
/// Payloads of configuration B.
const MATRIX_B_PAYLOADS: [usize; 2] = [64, 1024];
/// Client counts of configuration B.
const MATRIX_B_CLIENTS: [usize; 4] = [1, 64, 256, 1024];

fn main() -> BenchResult<()> {
    let args = Args::parse();
    if args.nodes == 0 || args.clients == 0 {
        return Err("--nodes and --clients must be at least 1".into());
    }
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let workers = args.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()?;
    report::print_machine(&dir, workers);
    if args.matrix { matrix(&args, &dir, &runtime) } else { single(&args, &dir, &runtime) }
}

/// One configuration, as given on the command line.
fn single(args: &Args, dir: &std::path::Path, runtime: &tokio::runtime::Runtime) -> BenchResult<()> {
    let reference_time = Duration::from_secs_f64(args.reference_time);
    if args.transport == TransportKind::Tcp {
        report::print_rtt(&reference::loopback_rtt(reference_time)?);
    }
    if args.storage == StorageKind::Wal {
        let record = reference::wal_record_bytes(args.payload);
        let single = reference::fsync_rate(dir, record, reference_time)?;
        let batch = reference::fsync_rate(dir, record * args.clients, reference_time)?;
        report::print_fsync(record, args.clients, &single, &batch);
    }
    let spec = spec(args, args.transport, args.storage);
    let plan = plan(args, args.clients, args.payload, "run", Duration::from_secs(60));
    let result = runtime.block_on(measure(&spec, &plan, dir))?;
    report::print_single(&spec, &plan, &result);
    Ok(())
}

/// Configurations A and B with their reference limits, as markdown tables.
fn matrix(args: &Args, dir: &std::path::Path, runtime: &tokio::runtime::Runtime) -> BenchResult<()> {
    let reference_time = Duration::from_secs_f64(args.reference_time);
    eprintln!("reference limits: loopback ping-pong and fsync loops, {reference_time:?} each ...");
    let rtt = reference::loopback_rtt(reference_time)?;
    let mut fsync = Vec::new();
    for payload in MATRIX_B_PAYLOADS {
        let record = reference::wal_record_bytes(payload);
        for clients in MATRIX_B_CLIENTS {
            fsync.push((payload, clients, reference::fsync_rate(dir, record * clients, reference_time)?));
        }
    }
    report::print_references(&rtt, &fsync);

    let mut rows_a = Vec::new();
    for clients in MATRIX_A_CLIENTS {
        let spec = spec(args, TransportKind::Mem, StorageKind::Mem);
        let plan = plan(args, clients, 0, &format!("A, {clients} clients"), Duration::from_secs(5));
        rows_a.push((clients, runtime.block_on(measure(&spec, &plan, dir))?));
        report::print_row_done(&plan, rows_a.last().map(|(_, r)| r));
    }
    let mut rows_b = Vec::new();
    for payload in MATRIX_B_PAYLOADS {
        for clients in MATRIX_B_CLIENTS {
            let spec = spec(args, TransportKind::Tcp, StorageKind::Wal);
            let label = format!("B, {payload} B, {clients} clients");
            let plan = plan(args, clients, payload, &label, Duration::from_secs(5));
            rows_b.push((payload, clients, runtime.block_on(measure(&spec, &plan, dir))?));
            report::print_row_done(&plan, rows_b.last().map(|(_, _, r)| r));
        }
    }
    report::print_table_a(&rows_a);
    report::print_table_b(&rows_b, &fsync);
    report::print_load();
    Ok(())
}

fn spec(args: &Args, transport: TransportKind, storage: StorageKind) -> ClusterSpec {
    ClusterSpec { nodes: args.nodes, transport, storage, snapshot_every_entries: args.snapshot_every }
}

fn plan(args: &Args, clients: usize, payload: usize, label: &str, duration: Duration) -> LoadPlan {
    LoadPlan {
        clients,
        ops: args.ops.unwrap_or(1_000_000),
        duration: args.duration.map_or(duration, Duration::from_secs_f64),
        warmup: Duration::from_secs_f64(args.warmup),
        payload,
        progress: Duration::from_secs_f64(args.progress),
        label: label.to_owned(),
    }
}

/// What one configuration measured, with the elections that happened during it.
pub struct Measured {
    /// The load's result.
    pub load: LoadResult,
    /// Terms started between the first settled leader and the end of the run (0: no election).
    pub elections: u64,
}

/// Starts a fresh group, runs the load on its leader, stops the group.
async fn measure(spec: &ClusterSpec, plan: &LoadPlan, dir: &std::path::Path) -> BenchResult<Measured> {
    eprintln!(
        "[{}] starting {} nodes ({:?} transport, {:?} storage); {} s warm-up, then up to {} ops or {} s ...",
        plan.label,
        spec.nodes,
        spec.transport,
        spec.storage,
        plan.warmup.as_secs_f64(),
        plan.ops,
        plan.duration.as_secs_f64()
    );
    let cluster = Cluster::start(spec, dir).await?;
    let (leader, term) = cluster.settled_leader().await?;
    let load = load::run(&cluster.nodes, leader, plan).await;
    let end_term = cluster.term().await;
    cluster.shutdown().await;
    Ok(Measured { load: load?, elections: end_term?.0 - term.0 })
}
