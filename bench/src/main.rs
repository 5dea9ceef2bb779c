//! Throughput and latency of a Raft group running in this process.
//!
//! ```text
//! cargo run --release -p bench -- --nodes 3 --clients 256 --ops 1000000 --transport mem --storage mem --payload 0
//! cargo run --release -p bench -- --matrix            # configurations A and B, a markdown table each
//! cargo run --release -p bench -- --matrix --runs 5   # each configuration 5 times: median and spread
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
mod handshake;
mod load;
mod multi;
mod recovery;
mod reference;
mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use cluster::{BenchResult, ClusterSpec, ExecutionKind, StorageKind, TransportKind};
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
    /// How long each node's core thread polls its empty queues before it sleeps, in
    /// microseconds (NodeConfig::idle_poll) [default: the library's default].
    #[arg(long)]
    idle_poll_us: Option<u64>,
    /// Where each node's core loop and state machine run. With --matrix, a comma-separated list
    /// runs every configuration with each (interleaved in every pass).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "threads")]
    execution: Vec<ExecutionKind>,
    /// TCP without or with mutual TLS (configuration B; test certificates). With --matrix, a
    /// comma-separated list runs configuration B with each (interleaved in every pass).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "off")]
    tls: Vec<TlsMode>,
    /// With --matrix: the client counts of configuration B [default: 1,64,256,1024].
    #[arg(long, value_delimiter = ',')]
    b_clients: Vec<usize>,
    /// With --matrix: the payloads of configuration B, in bytes [default: 64,1024].
    #[arg(long, value_delimiter = ',')]
    b_payloads: Vec<usize>,
    /// Measure this many handshakes of the TCP transport's acceptor over loopback, plain and
    /// with TLS (interleaved), instead of a load.
    #[arg(long)]
    tls_handshakes: Option<usize>,
    /// With --matrix: only configuration A or only B.
    #[arg(long, value_enum)]
    only: Option<Part>,
    /// With --matrix: run every configuration this many times (in passes over the matrix) and
    /// report the median, the spread and the load average of each run.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Run this many groups on every node, on the worker-pool driver (raft_net::Host) with one
    /// TCP transport and one shared write-ahead log per node; the clients are spread over the
    /// groups (configuration B's stack; --transport and --storage are ignored).
    #[arg(long)]
    groups: Option<u64>,
    /// Run the multi-group matrix (configuration B, 64 B): G groups x C clients for the pairs of
    /// GROUPS_MATRIX, every pair --runs times, interleaved.
    #[arg(long)]
    groups_matrix: bool,
    /// Worker threads of each node's host with --groups or --groups-matrix [default: the CPUs
    /// available].
    #[arg(long)]
    host_workers: Option<usize>,
    /// With --groups: no load; measure for this many seconds what the idle groups cost (CPU and
    /// messages between the nodes).
    #[arg(long)]
    idle: Option<f64>,
    /// With --groups or --groups-matrix: idle groups quiesce (each node's host watches its
    /// peers with node-level pings); with --idle, the measurement starts once every group is
    /// quiet on every node.
    #[arg(long)]
    quiesce: bool,
    /// Measure recovery instead of load: write a shared write-ahead log holding this many
    /// groups and --recovery-mib MiB of entries, reopen it and build every group's core.
    #[arg(long)]
    recovery_groups: Option<u64>,
    /// With --recovery-groups: MiB of entries in the log.
    #[arg(long, default_value_t = 1024)]
    recovery_mib: u64,
    /// Measure what one fsync costs (rate, and CPU time per fsync) on a file that each write
    /// extends, against one written whole with zeros beforehand (as the write-ahead logs'
    /// segments are), and against that file written with direct, synchronous writes (O_DIRECT
    /// and O_DSYNC, Linux; no fsync), for this many interleaved rounds of --reference-time
    /// seconds per loop (records of a 64 B command: 1 and 32 per write), instead of a load.
    #[arg(long)]
    fsync_cost: Option<usize>,
    /// Record the library's metrics (raft_net::metrics) into a Prometheus recorder installed
    /// for the whole process, without an HTTP listener, as an application that exports them
    /// would; without it no recorder is installed and every metric is a no-op. For measuring
    /// what the metrics cost: run the same configuration with and without it.
    #[arg(long)]
    metrics: bool,
}

/// (groups, clients) of the multi-group matrix: one client per group at 1, 8, 64 and 1,000
/// groups, 64 clients on one group (to compare with 64 groups of one client each), and 256
/// clients spread over 1, 8, 64 and 1,000 groups.
const GROUPS_MATRIX: [(u64, usize); 9] =
    [(1, 1), (8, 8), (64, 64), (1, 64), (1_000, 1_000), (1, 256), (8, 256), (64, 256), (1_000, 256)];

/// Whether TCP runs under mutual TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    /// Plain TCP.
    Off,
    /// Mutual TLS (rustls, TLS 1.3).
    On,
}

/// A part of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// Configuration A: in-process, in-memory.
    A,
    /// Configuration B: TCP and the WAL.
    B,
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
    if !args.matrix && args.execution.len() != 1 {
        return Err("--execution takes one value without --matrix".into());
    }
    if !args.matrix && args.tls.len() != 1 {
        return Err("--tls takes one value without --matrix".into());
    }
    if !args.matrix && args.only.is_some() {
        return Err("--only needs --matrix".into());
    }
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let workers = args.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()?;
    report::print_machine(&dir, workers);
    if let Some(warning) = build_warning() {
        eprintln!("WARNING: {warning}");
        println!("WARNING: {warning}");
    }
    let metrics = if args.metrics { Some(install_metrics()?) } else { None };
    let idle_poll = args.idle_poll_us.map_or(raft_net::IDLE_POLL_DEFAULT, Duration::from_micros);
    println!("nodes:   {} voters; core threads poll their empty queues for {idle_poll:?} before sleeping", args.nodes);
    if let Some(handshakes) = args.tls_handshakes {
        return runtime.block_on(handshake::measure(handshakes));
    }
    if let Some(rounds) = args.fsync_cost {
        return fsync_cost(rounds, &dir, Duration::from_secs_f64(args.reference_time));
    }
    if let Some(groups) = args.recovery_groups {
        return recovery::measure(groups, args.recovery_mib, &dir);
    }
    if args.groups_matrix {
        return groups_matrix(&args, &dir, &runtime);
    }
    if let Some(groups) = args.groups {
        return groups_single(&args, groups, &dir, &runtime);
    }
    let result = if args.matrix { matrix(&args, &dir, &runtime) } else { single(&args, &dir, &runtime) };
    if let Some(handle) = metrics {
        let rendered = handle.render();
        let series = rendered.lines().filter(|line| line.starts_with("raft_")).count();
        // What was recorded: proposals applied, and how many samples each histogram took (the
        // recordings behind them, against the operations).
        let shown = rendered.lines().filter(|line| line.contains("outcome=\"applied\"") || line.contains("_count{"));
        println!("metrics: on (Prometheus recorder, no listener): {series} raft_ series at the end, e.g.:");
        shown.for_each(|line| println!("  {line}"));
    } else {
        println!("metrics: off (no recorder installed)");
    }
    result
}

/// `--fsync-cost`: fsync loops on an appended and a preallocated file, and direct writes to a
/// preallocated one, interleaved, a line each as it ends, then the medians.
fn fsync_cost(rounds: usize, dir: &Path, time: Duration) -> BenchResult<()> {
    use reference::Growth;
    if rounds == 0 || time < Duration::from_secs(1) {
        return Err("--fsync-cost needs at least 1 round, of a --reference-time of at least 1 s".into());
    }
    let record = reference::wal_record_bytes(64);
    let mut measured: BTreeMap<(usize, &str), Vec<reference::FsyncCost>> = BTreeMap::new();
    for round in 1..=rounds {
        for records in [1, 32] {
            for (growth, name) in [
                (Growth::Append, "appended"),
                (Growth::Preallocated, "preallocated"),
                (Growth::Direct, "preallocated, direct"),
            ] {
                let cost = match reference::fsync_cost(dir, records * record, time, growth) {
                    Ok(cost) => cost,
                    Err(error) if growth == Growth::Direct => {
                        eprintln!("[fsync-cost] direct writes in {}: {error} (skipped)", dir.display());
                        continue;
                    }
                    Err(error) => return Err(error.into()),
                };
                eprintln!(
                    "[fsync-cost] round {round}/{rounds}: {records} records ({} B) per write, {name} file: \
                     {:.0} fsyncs/s, {:.1} us of CPU per fsync",
                    records * record,
                    cost.rate.per_sec(),
                    cost.cpu_us()
                );
                measured.entry((records, name)).or_default().push(cost);
            }
        }
    }
    println!("fsync cost in {} ({rounds} interleaved rounds of {time:?} per loop; medians):", dir.display());
    println!("| records per write | file | fsyncs/s | CPU per fsync (us) |");
    println!("|---:|---|---:|---:|");
    for ((records, name), costs) in &measured {
        let median = |mut values: Vec<f64>| {
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let rate = median(costs.iter().map(|cost| cost.rate.per_sec()).collect());
        let cpu = median(costs.iter().map(reference::FsyncCost::cpu_us).collect());
        println!("| {records} | {name} | {rate:.0} | {cpu:.1} |");
    }
    Ok(())
}

/// Installs the Prometheus recorder for the process (no HTTP listener) and a thread that runs its
/// upkeep every few seconds, as an exporter would (it drains the histograms' buffers).
fn install_metrics() -> BenchResult<metrics_exporter_prometheus::PrometheusHandle> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    raft_net::metrics::describe();
    let upkeep = handle.clone();
    std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(5));
            upkeep.run_upkeep();
        }
    })?;
    Ok(handle)
}

/// What a multi-group run measured.
pub struct MeasuredGroups {
    /// The load's result (its `probed`: every node's syncs, group steps and messages in the window).
    pub load: LoadResult,
    /// Elections during the run (the highest term's growth over all groups).
    pub elections: u64,
}

fn multi_spec(args: &Args, groups: u64) -> multi::MultiSpec {
    multi::MultiSpec {
        nodes: args.nodes,
        groups,
        workers: args.host_workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        snapshot_every_entries: args.snapshot_every,
        quiesce: args.quiesce,
        idle_poll: args.idle_poll_us.map_or(raft_net::IDLE_POLL_DEFAULT, Duration::from_micros),
    }
}

/// One multi-group run, as given on the command line.
fn groups_single(
    args: &Args,
    groups: u64,
    dir: &std::path::Path,
    runtime: &tokio::runtime::Runtime,
) -> BenchResult<()> {
    if groups == 0 {
        return Err("--groups must be at least 1".into());
    }
    let spec = multi_spec(args, groups);
    if let Some(seconds) = args.idle {
        return runtime.block_on(measure_idle(&spec, Duration::from_secs_f64(seconds), dir));
    }
    let plan = plan(args, args.clients, args.payload, "groups", Duration::from_secs(60));
    let measured = runtime.block_on(measure_groups(&spec, &plan, dir))?;
    report::print_groups_header(&spec);
    report::print_groups_row(&spec, &plan, &measured);
    Ok(())
}

/// The multi-group matrix: every (groups, clients) pair of [`GROUPS_MATRIX`], `--runs` passes.
fn groups_matrix(args: &Args, dir: &std::path::Path, runtime: &tokio::runtime::Runtime) -> BenchResult<()> {
    let runs = args.runs.max(1);
    let mut results: Vec<Vec<(multi::MultiSpec, LoadPlan, MeasuredGroups)>> =
        GROUPS_MATRIX.iter().map(|_| Vec::new()).collect();
    for run in 1..=runs {
        for (row, &(groups, clients)) in GROUPS_MATRIX.iter().enumerate() {
            let spec = multi_spec(args, groups);
            let label = format!("{groups} groups, {clients} clients, run {run}/{runs}");
            let plan = plan(args, clients, 64, &label, Duration::from_secs(5));
            let measured = runtime.block_on(measure_groups(&spec, &plan, dir))?;
            let (syncs, steps, messages) = measured.load.probed.per_op(measured.load.ops);
            eprintln!(
                "[{label}] {:.0} ops/s, p99 {:.0} us, {:.2} us CPU per op, per op: {:.3} fsyncs, {:.2} group steps, {:.2} messages",
                measured.load.ops_per_sec(),
                measured.load.latency_us(0.99),
                measured.load.cpu_us_per_op(),
                syncs,
                steps,
                messages
            );
            results[row].push((spec, plan, measured));
        }
    }
    report::print_groups_header(&multi_spec(args, 0));
    for row in &mut results {
        row.sort_by(|a, b| a.2.load.ops_per_sec().total_cmp(&b.2.load.ops_per_sec()));
        if let Some((spec, plan, measured)) = row.get(row.len().saturating_sub(1) / 2) {
            report::print_groups_row(spec, plan, measured);
        }
    }
    report::print_load();
    Ok(())
}

/// What `spec.groups` idle groups cost: the process's CPU and the messages the nodes send each
/// other over `window`, once every group has a leader (and a second to settle).
async fn measure_idle(spec: &multi::MultiSpec, window: Duration, dir: &std::path::Path) -> BenchResult<()> {
    eprintln!("[idle] starting {} nodes with {} groups each ...", spec.nodes, spec.groups);
    let cluster = multi::start(spec, dir).await?;
    let patience =
        Duration::from_secs(20).max(Duration::from_millis(40) * u32::try_from(spec.groups).unwrap_or(u32::MAX));
    cluster.settled(patience).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    if spec.quiesce {
        let all = usize::try_from(spec.groups * spec.nodes).unwrap_or(usize::MAX);
        let deadline = std::time::Instant::now() + patience;
        while cluster.quiet() < all {
            if std::time::Instant::now() > deadline {
                return Err(format!("only {} of {all} group replicas quiet after {patience:?}", cluster.quiet()).into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("[idle] every group is quiet on every node");
    }
    eprintln!("[idle] every group has a leader; measuring {window:?} with no load ...");
    let (cpu, messages, steps) = (load::process_cpu(), cluster.messages(), cluster.group_steps());
    let start = std::time::Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = (load::process_cpu().saturating_sub(cpu)).as_secs_f64();
    let messages = cluster.messages().saturating_sub(messages) as f64;
    let steps = cluster.group_steps().saturating_sub(steps) as f64;
    let pairs = (spec.nodes * spec.nodes.saturating_sub(1)) as f64; // Ordered pairs.
    let ticks = elapsed / multi::TICK.as_secs_f64();
    println!(
        "idle: {} groups on {} nodes for {elapsed:.1} s: CPU {:.1}% of one core per node; {:.0} messages/s in all, \
         {:.1} per ordered node pair per heartbeat interval ({} ticks); {:.0} group steps/s",
        spec.groups,
        spec.nodes,
        100.0 * cpu / elapsed / spec.nodes as f64,
        messages / elapsed,
        messages / pairs / (ticks / f64::from(multi::HEARTBEAT_TICKS)),
        multi::HEARTBEAT_TICKS,
        steps / elapsed
    );
    cluster.shutdown().await;
    Ok(())
}

async fn measure_groups(
    spec: &multi::MultiSpec,
    plan: &LoadPlan,
    dir: &std::path::Path,
) -> BenchResult<MeasuredGroups> {
    eprintln!(
        "[{}] starting {} nodes with {} groups each (worker-pool driver, TCP, shared WAL) ...",
        plan.label, spec.nodes, spec.groups
    );
    let cluster = multi::start(spec, dir).await?;
    let patience =
        Duration::from_secs(20).max(Duration::from_millis(40) * u32::try_from(spec.groups).unwrap_or(u32::MAX));
    let (targets, start_term) = cluster.settled(patience).await?;
    eprintln!("[{}] every group has a leader; load starts", plan.label);
    let load = load::run_groups(&targets, cluster.ids(), plan, Some(cluster.probe())).await;
    let end_term = cluster.term().await;
    cluster.shutdown().await;
    Ok(MeasuredGroups { load: load?, elections: end_term?.0.saturating_sub(start_term.0) })
}

/// What makes this build's numbers unrepresentative, if anything: a debug build, or raft-core
/// checking its invariants after every input (its `invariants` feature, which cargo turns on
/// when `bench` is built in one command with `sim`, `raft-tests` or `fuzz`).
fn build_warning() -> Option<&'static str> {
    if cfg!(debug_assertions) {
        Some("a debug build: measure with `cargo run --release -p bench`")
    } else if raft_core::INVARIANTS_CHECKED {
        Some(
            "raft-core checks its invariants after every input in this build (feature `invariants`, \
             turned on by building bench together with sim, raft-tests or fuzz): throughput is lower \
             than in a plain `cargo build --release -p bench`",
        )
    } else {
        None
    }
}

/// One configuration, as given on the command line.
fn single(args: &Args, dir: &std::path::Path, runtime: &tokio::runtime::Runtime) -> BenchResult<()> {
    let reference_time = Duration::from_secs_f64(args.reference_time);
    if args.transport == TransportKind::Tcp {
        report::print_rtt(&reference::loopback_rtt(reference_time)?);
    }
    let limit = match args.storage {
        StorageKind::Wal => {
            let fsync = FsyncReference::measure(dir, args.payload, args.clients, args.nodes, reference_time)?;
            report::print_fsync(&fsync);
            Some(fsync)
        }
        StorageKind::Mem => None,
    };
    let spec = spec(args, args.transport, args.storage, args.execution[0], args.tls[0] == TlsMode::On);
    let plan = plan(args, args.clients, args.payload, "run", Duration::from_secs(60));
    let result = runtime.block_on(measure(&spec, &plan, dir))?;
    report::print_single(&spec, &plan, &result, limit.as_ref());
    Ok(())
}

/// One row of the matrix: a configuration and what each of its runs measured.
pub struct Row {
    /// Where each node's core loop and state machine run.
    pub execution: ExecutionKind,
    /// How the nodes reach each other.
    pub transport: TransportKind,
    /// Where they keep their logs.
    pub storage: StorageKind,
    /// Concurrent clients.
    pub clients: usize,
    /// Bytes of each command.
    pub payload: usize,
    /// Whether TCP runs under mutual TLS.
    pub tls: bool,
    /// Each run's result, in the order they ran.
    pub runs: Vec<Measured>,
    /// With the WAL: the fsync reference measured just before each run.
    pub limits: Vec<FsyncReference>,
}

impl Row {
    fn new(
        execution: ExecutionKind,
        transport: TransportKind,
        storage: StorageKind,
        clients: usize,
        payload: usize,
        tls: bool,
    ) -> Self {
        Row { execution, transport, storage, clients, payload, tls, runs: Vec::new(), limits: Vec::new() }
    }

    fn label(&self, run: usize, runs: usize) -> String {
        let execution = self.execution.name();
        match self.storage {
            StorageKind::Mem => format!("A, {execution}, {} clients, run {run}/{runs}", self.clients),
            StorageKind::Wal => {
                let tls = if self.tls { ", TLS" } else { "" };
                format!("B{tls}, {execution}, {} B, {} clients, run {run}/{runs}", self.payload, self.clients)
            }
        }
    }

    /// The run with the median throughput (the lower middle one of an even count).
    pub fn median(&self) -> Option<&Measured> {
        let mut runs: Vec<&Measured> = self.runs.iter().collect();
        runs.sort_by(|a, b| a.load.ops_per_sec().total_cmp(&b.load.ops_per_sec()));
        runs.get(runs.len().saturating_sub(1) / 2).copied()
    }

    /// The median of the group-commit limits measured before the runs.
    pub fn median_limit(&self) -> Option<f64> {
        let mut limits: Vec<f64> = self.limits.iter().map(FsyncReference::limit).collect();
        limits.sort_by(f64::total_cmp);
        limits.get(limits.len().saturating_sub(1) / 2).copied()
    }
}

/// Configurations A and B with their reference limits, as markdown tables. Each configuration
/// runs `--runs` times, in passes over the whole matrix, so that a burst of load from elsewhere
/// falls on one run of several rows rather than on every run of one row.
fn matrix(args: &Args, dir: &std::path::Path, runtime: &tokio::runtime::Runtime) -> BenchResult<()> {
    let reference_time = Duration::from_secs_f64(args.reference_time);
    let runs = args.runs.max(1);
    eprintln!("reference limit: loopback ping-pong, {reference_time:?} ...");
    let rtt = reference::loopback_rtt(reference_time)?;
    let mut rows: Vec<Row> = Vec::new();
    if args.only != Some(Part::B) {
        for clients in MATRIX_A_CLIENTS {
            for &execution in &args.execution {
                rows.push(Row::new(execution, TransportKind::Mem, StorageKind::Mem, clients, 0, false));
            }
        }
    }
    if args.only != Some(Part::A) {
        let payloads = if args.b_payloads.is_empty() { MATRIX_B_PAYLOADS.to_vec() } else { args.b_payloads.clone() };
        let clients = if args.b_clients.is_empty() { MATRIX_B_CLIENTS.to_vec() } else { args.b_clients.clone() };
        for payload in payloads {
            for &clients in &clients {
                for &execution in &args.execution {
                    for &tls in &args.tls {
                        let tls = tls == TlsMode::On;
                        rows.push(Row::new(execution, TransportKind::Tcp, StorageKind::Wal, clients, payload, tls));
                    }
                }
            }
        }
    }
    for run in 1..=runs {
        for row in &mut rows {
            let label = row.label(run, runs);
            if row.storage == StorageKind::Wal {
                eprintln!(
                    "[{label}] fsync loops of {} records: alone, with spinning CPUs, {} at once ...",
                    row.clients, args.nodes
                );
                row.limits.push(FsyncReference::measure(dir, row.payload, row.clients, args.nodes, reference_time)?);
            }
            let spec = spec(args, row.transport, row.storage, row.execution, row.tls);
            let plan = plan(args, row.clients, row.payload, &label, Duration::from_secs(5));
            let measured = runtime.block_on(measure(&spec, &plan, dir))?;
            report::print_row_done(&plan, &measured);
            row.runs.push(measured);
        }
    }
    report::print_rtt(&rtt);
    let (rows_a, rows_b): (Vec<Row>, Vec<Row>) = rows.into_iter().partition(|row| row.storage == StorageKind::Mem);
    if !rows_a.is_empty() {
        report::print_table_a(&rows_a, runs);
    }
    if !rows_b.is_empty() {
        report::print_table_b(&rows_b, runs, args.nodes);
    }
    report::print_load();
    Ok(())
}

/// The fsync rate of batches of `records` WAL records of a `payload`-byte command (one append
/// and one fdatasync per batch, as in a group commit of `records` proposals), measured three
/// ways: one loop alone, one loop with every CPU spinning, and one of `nodes` loops at once (as
/// the nodes of a group on one disk do). See [`FsyncReference::limit`] for the one that counts.
pub struct FsyncReference {
    /// Bytes of each command.
    pub payload: usize,
    /// Records per fsync (the client count of the row it serves).
    pub records: usize,
    /// Bytes of one record in a segment.
    pub record_bytes: usize,
    /// One loop, nothing else running.
    pub idle: reference::Rate,
    /// One loop, every CPU kept busy by a spinning thread.
    pub busy: reference::Rate,
    /// One of `nodes` loops running at once.
    pub parallel: reference::Rate,
    /// How many loops ran at once for `parallel`.
    pub nodes: usize,
}

impl FsyncReference {
    fn measure(dir: &std::path::Path, payload: usize, records: usize, nodes: u64, time: Duration) -> BenchResult<Self> {
        let record_bytes = reference::wal_record_bytes(payload);
        let bytes = record_bytes * records;
        let nodes = usize::try_from(nodes)?;
        let idle = reference::fsync_rate(dir, bytes, time, reference::Alongside::Nothing)?;
        let busy = reference::fsync_rate(dir, bytes, time, reference::Alongside::Spinners)?;
        let parallel = reference::fsync_rate(dir, bytes, time, reference::Alongside::Loops(nodes))?;
        Ok(FsyncReference { payload, records, record_bytes, idle, busy, parallel, nodes })
    }

    /// The group-commit limit: operations per second if every fsync of a node commits
    /// `records` proposals (each client has one in flight), at the highest rate of the three
    /// ways of measuring, so that a row is judged against the most the disk gave in any of them.
    pub fn limit(&self) -> f64 {
        self.best_rate() * self.records as f64
    }

    /// The highest of the three fsync rates.
    pub fn best_rate(&self) -> f64 {
        self.idle.per_sec().max(self.busy.per_sec()).max(self.parallel.per_sec())
    }
}

fn spec(
    args: &Args,
    transport: TransportKind,
    storage: StorageKind,
    execution: ExecutionKind,
    tls: bool,
) -> ClusterSpec {
    ClusterSpec {
        execution,
        tls,
        nodes: args.nodes,
        transport,
        storage,
        snapshot_every_entries: args.snapshot_every,
        idle_poll: args.idle_poll_us.map(Duration::from_micros),
    }
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
    /// The machine's 1-minute load average when the run started (other jobs show here).
    pub load_average: f64,
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
    let load_average = report::load_average();
    let mut cluster = cluster::start(spec, dir).await?;
    let leader = cluster::settled_leader(&cluster).await?;
    let load = load::run(&cluster.handles(), &cluster.ids(), leader.position, plan).await;
    let end_term = cluster::term(&cluster).await;
    cluster.shutdown().await;
    Ok(Measured { load: load?, elections: end_term?.0 - leader.term.0, load_average })
}
