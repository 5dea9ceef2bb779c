//! Printing: the machine, the reference limits, one run, and the markdown tables of the matrix.

use std::fs;
use std::path::Path;

use crate::cluster::ClusterSpec;
use crate::load::LoadPlan;
use crate::reference::Rate;
use crate::{FsyncReference, Measured, Row};

/// openraft's benchmark built and run on a machine like this one (2 cores), in ops/s, by
/// client count (from the issue that asked for this benchmark).
const OPENRAFT_THIS_MACHINE: [(usize, f64); 4] = [(1, 16_000.0), (64, 350_000.0), (256, 550_000.0), (1024, 650_000.0)];
/// Configuration A's goal: this multiple of openraft's number.
const GOAL_A_FACTOR: f64 = 2.0;
/// Configuration B's goal: this fraction of the group-commit limit.
const GOAL_B_FRACTION: f64 = 0.8;

/// CPU, cores, memory, kernel, load, and the file system of `dir`.
pub fn print_machine(dir: &Path, workers: usize) {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name").and_then(|rest| rest.split_once(':')).map(|(_, m)| m.trim()))
        .unwrap_or("unknown");
    let available = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find_map(|l| l.strip_prefix("MemTotal:").map(|r| r.trim().to_owned())))
        .unwrap_or_else(|| "unknown".to_owned());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("machine: {model}, {available} CPUs available, {memory} memory, kernel {}", kernel.trim());
    println!(
        "runtime: tokio multi-thread, {workers} workers; each node adds a core thread, and an apply thread unless --execution one-thread"
    );
    println!("dir:     {} ({})", dir.display(), file_system(dir));
    print_load();
}

/// The load average, which says how much else ran on the machine.
pub fn print_load() {
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!("load:    {} (1, 5, 15 min)", load.join(" "));
}

/// The 1-minute load average (0 where `/proc/loadavg` does not exist).
pub fn load_average() -> f64 {
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace().next().and_then(|first| first.parse().ok()).unwrap_or(0.0)
}

/// The type and device of the file system holding `dir`, from `/proc/mounts` (longest match).
fn file_system(dir: &Path) -> String {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let best = mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() >= 3 && dir.starts_with(fields[1])).then(|| (fields[1].len(), fields[0], fields[2]))
        })
        .max_by_key(|(len, _, _)| *len);
    match best {
        Some((_, device, kind)) if matches!(kind, "tmpfs" | "ramfs") => {
            format!("{kind} on {device}: WARNING, fsync is a no-op in memory; pass --dir on a disk")
        }
        Some((_, device, kind)) => format!("{kind} on {device}"),
        None => "file system unknown".to_owned(),
    }
}

/// The loopback round trip.
pub fn print_rtt(rtt: &Rate) {
    println!(
        "loopback RTT (TCP ping-pong of 8 bytes, 127.0.0.1): {:.1} us mean, {} round trips/s",
        rtt.mean_us(),
        thousands(rtt.per_sec())
    );
}

/// The fsync rates of one reference and the group-commit limit they imply.
pub fn print_fsync(fsync: &FsyncReference) {
    println!(
        "fsync loop, {} B appends ({} records of {} B): {} fsyncs/s alone, {} with spinning CPUs, {} in each of {} \
         loops at once; group-commit limit {} x {} = {} ops/s",
        fsync.record_bytes * fsync.records,
        fsync.records,
        fsync.record_bytes,
        thousands(fsync.idle.per_sec()),
        thousands(fsync.busy.per_sec()),
        thousands(fsync.parallel.per_sec()),
        fsync.nodes,
        fsync.records,
        thousands(fsync.best_rate()),
        thousands(fsync.limit())
    );
}

/// One run's result.
pub fn print_single(spec: &ClusterSpec, plan: &LoadPlan, measured: &Measured, limit: Option<&FsyncReference>) {
    let load = &measured.load;
    println!(
        "config: {} nodes, {} clients, transport {:?}{}, storage {:?}, payload {} B, execution {}",
        spec.nodes,
        plan.clients,
        spec.transport,
        if spec.tls { " with TLS" } else { "" },
        spec.storage,
        plan.payload,
        spec.execution.name()
    );
    println!("{} ops/s ({} ops in {:.2} s)", thousands(load.ops_per_sec()), load.ops, load.elapsed.as_secs_f64());
    println!(
        "latency p50 {} us, p99 {} us, p999 {} us (mean {} us, max {} us)",
        micros(load.latency_us(0.5)),
        micros(load.latency_us(0.99)),
        micros(load.latency_us(0.999)),
        micros(load.latency.mean() / 1000.0),
        micros(load.latency.max() as f64 / 1000.0)
    );
    println!(
        "cpu {:.2} us per op (this process, all threads); retried proposals: {}; elections during the run: {}; \
         load average at the start: {:.2}; other processes kept {:.2} CPUs busy",
        load.cpu_us_per_op(),
        load.retries,
        measured.elections,
        measured.load_average,
        load.others_cpus()
    );
    if let Some(limit) = limit {
        let percent = 100.0 * load.ops_per_sec() / limit.limit();
        println!("{percent:.0}% of the group-commit limit ({} ops/s)", thousands(limit.limit()));
    }
}

/// A line on stderr when a run of the matrix is done.
pub fn print_row_done(plan: &LoadPlan, measured: &Measured) {
    let load = &measured.load;
    eprintln!(
        "[{}] {} ops/s, p50 {} us, p99 {} us, p999 {} us, {:.2} us CPU per op, load average {:.2} at the start, \
         others kept {:.2} CPUs busy",
        plan.label,
        thousands(load.ops_per_sec()),
        micros(load.latency_us(0.5)),
        micros(load.latency_us(0.99)),
        micros(load.latency_us(0.999)),
        load.cpu_us_per_op(),
        measured.load_average,
        load.others_cpus()
    );
}

/// The cells every table shares: the median run's throughput, the spread over the runs, its
/// latencies and CPU cost, and the load average before each run.
fn common_cells(row: &Row, median: &Measured) -> String {
    let load = &median.load;
    let rates: Vec<f64> = row.runs.iter().map(|run| run.load.ops_per_sec()).collect();
    let low = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let high = rates.iter().copied().fold(0.0, f64::max);
    let loads: Vec<String> =
        row.runs.iter().map(|run| format!("{:.1} ({:.2})", run.load_average, run.load.others_cpus())).collect();
    let retries: u64 = row.runs.iter().map(|run| run.load.retries).sum();
    let elections: u64 = row.runs.iter().map(|run| run.elections).sum();
    format!(
        "{} | {}-{} | {} | {} | {} | {:.2} | {} | {retries} / {elections}",
        thousands(load.ops_per_sec()),
        thousands(low),
        thousands(high),
        micros(load.latency_us(0.5)),
        micros(load.latency_us(0.99)),
        micros(load.latency_us(0.999)),
        load.cpu_us_per_op(),
        loads.join(" ")
    )
}

/// The header cells matching `common_cells`.
const COMMON_HEADER: &str = "ops/s (median) | spread | p50 us | p99 us | p999 us | CPU us/op | load avg (others' CPUs) per run | retries / elections";
const COMMON_ALIGN: &str = "---:|---:|---:|---:|---:|---:|:---|---:";

/// Configuration A against openraft's numbers.
pub fn print_table_a(rows: &[Row], runs: usize) {
    println!(
        "\n## Configuration A: in-process transport without serialization, in-memory log, empty payload \
         (median of {runs} runs; latencies and CPU of the median run)\n"
    );
    println!("| execution | clients | {COMMON_HEADER} | openraft (2 cores) | goal (x{GOAL_A_FACTOR}) | reached |");
    println!("|:---|---:|{COMMON_ALIGN}|---:|---:|:---:|");
    for row in rows {
        let Some(median) = row.median() else { continue };
        let openraft = OPENRAFT_THIS_MACHINE.iter().find(|(c, _)| *c == row.clients).map(|(_, ops)| *ops);
        let (openraft_cell, goal_cell, reached) = match openraft {
            Some(ops) => {
                let goal = ops * GOAL_A_FACTOR;
                let reached = if median.load.ops_per_sec() >= goal { "yes" } else { "no" };
                (thousands(ops), thousands(goal), reached)
            }
            None => ("-".to_owned(), "-".to_owned(), "-"),
        };
        println!(
            "| {} | {} | {} | {openraft_cell} | {goal_cell} | {reached} |",
            row.execution.name(),
            row.clients,
            common_cells(row, median)
        );
    }
}

/// Configuration B against the group-commit limit of the same payload and client count,
/// measured just before each run.
pub fn print_table_b(rows: &[Row], runs: usize, nodes: u64) {
    println!(
        "\n## Configuration B: TCP on 127.0.0.1 (postcard frames), WAL with fdatasync (group commit) \
         (median of {runs} runs; latencies and CPU of the median run)\n"
    );
    println!(
        "| execution | TLS | payload | clients | {COMMON_HEADER} | fsyncs/s of a batch: alone / spinning CPUs / each of {nodes} loops \
         (median) | group-commit limit (median) | of limit | goal ({:.0}%) |",
        GOAL_B_FRACTION * 100.0
    );
    println!("|:---|:---:|---:|---:|{COMMON_ALIGN}|---:|---:|---:|:---:|");
    for row in rows {
        let (Some(median), Some(limit)) = (row.median(), row.median_limit()) else { continue };
        let rate = |pick: fn(&FsyncReference) -> f64| {
            let mut rates: Vec<f64> = row.limits.iter().map(pick).collect();
            rates.sort_by(f64::total_cmp);
            thousands(rates.get(rates.len().saturating_sub(1) / 2).copied().unwrap_or(0.0))
        };
        let fraction = median.load.ops_per_sec() / limit;
        let reached = if fraction >= GOAL_B_FRACTION { "yes" } else { "no" };
        println!(
            "| {} | {} | {} B | {} | {} | {} / {} / {} | {} | {:.0}% | {reached} |",
            row.execution.name(),
            if row.tls { "on" } else { "off" },
            row.payload,
            row.clients,
            common_cells(row, median),
            rate(|f| f.idle.per_sec()),
            rate(|f| f.busy.per_sec()),
            rate(|f| f.parallel.per_sec()),
            thousands(limit),
            fraction * 100.0
        );
    }
}

/// `1234567.8` as `1,234,568`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (position, digit) in digits.chars().enumerate() {
        if position > 0 && (digits.len() - position) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Microseconds with a precision that suits their size.
fn micros(value: f64) -> String {
    if value >= 100.0 { thousands(value) } else { format!("{value:.1}") }
}

/// The header of the multi-group table.
pub fn print_groups_header(spec: &crate::multi::MultiSpec) {
    println!();
    println!(
        "Many groups per node: {} nodes, each a raft_net::Host with {} workers, one TCP transport and one \
         shared WAL (fdatasync); every node votes in every group; payload 64 B unless --payload says otherwise.",
        spec.nodes, spec.workers
    );
    println!();
    println!(
        "| groups | clients | ops/s | p50 (us) | p99 (us) | CPU per op (us) | fsyncs per op | group steps per op | messages per op | elections |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
}

/// One row of the multi-group table.
pub fn print_groups_row(spec: &crate::multi::MultiSpec, plan: &LoadPlan, measured: &crate::MeasuredGroups) {
    let load = &measured.load;
    let (syncs, steps, messages) = load.probed.per_op(load.ops);
    println!(
        "| {} | {} | {} | {} | {} | {:.2} | {:.3} | {:.2} | {:.2} | {} |",
        spec.groups,
        plan.clients,
        thousands(load.ops_per_sec()),
        micros(load.latency_us(0.5)),
        micros(load.latency_us(0.99)),
        load.cpu_us_per_op(),
        syncs,
        steps,
        messages,
        measured.elections
    );
}
