//! Printing: the machine, the reference limits, one run, and the markdown tables of the matrix.

use std::fs;
use std::path::Path;

use crate::Measured;
use crate::cluster::ClusterSpec;
use crate::load::LoadPlan;
use crate::reference::{self, Rate};

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
    println!("runtime: tokio multi-thread, {workers} workers; each node adds a core and an apply thread");
    println!("dir:     {} ({})", dir.display(), file_system(dir));
    print_load();
}

/// The load average, which says how much else ran on the machine.
pub fn print_load() {
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!("load:    {} (1, 5, 15 min)", load.join(" "));
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

/// The fsync rate for one record and for a batch of `clients` records.
pub fn print_fsync(record: usize, clients: usize, single: &Rate, batch: &Rate) {
    println!(
        "fsync loop, {record} B appends: {} fsyncs/s ({:.0} us each)",
        thousands(single.per_sec()),
        single.mean_us()
    );
    println!(
        "fsync loop, {} B appends ({clients} records): {} fsyncs/s; group-commit limit {clients} x that = {} ops/s",
        record * clients,
        thousands(batch.per_sec()),
        thousands(batch.per_sec() * clients as f64)
    );
}

/// The reference limits of the matrix.
pub fn print_references(rtt: &Rate, fsync: &[(usize, usize, Rate)]) {
    println!("\n## Reference limits\n");
    print_rtt(rtt);
    println!(
        "\n| payload | WAL record | records per fsync | bytes per fsync | fsyncs/s | mean fsync | records/s (limit) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (payload, clients, rate) in fsync {
        let record = reference::wal_record_bytes(*payload);
        println!(
            "| {payload} B | {record} B | {clients} | {} | {} | {:.0} us | {} |",
            thousands((record * clients) as f64),
            thousands(rate.per_sec()),
            rate.mean_us(),
            thousands(rate.per_sec() * *clients as f64)
        );
    }
}

/// One run's result.
pub fn print_single(spec: &ClusterSpec, plan: &LoadPlan, measured: &Measured) {
    let load = &measured.load;
    println!(
        "config: {} nodes, {} clients, transport {:?}, storage {:?}, payload {} B",
        spec.nodes, plan.clients, spec.transport, spec.storage, plan.payload
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
        "cpu {:.2} us per op (this process, all threads); retried proposals: {}; elections during the run: {}",
        load.cpu_us_per_op(),
        load.retries,
        measured.elections
    );
}

/// A line on stderr when a configuration of the matrix is done.
pub fn print_row_done(plan: &LoadPlan, measured: Option<&Measured>) {
    if let Some(measured) = measured {
        let load = &measured.load;
        eprintln!(
            "[{}] {} ops/s, p50 {} us, p99 {} us, p999 {} us",
            plan.label,
            thousands(load.ops_per_sec()),
            micros(load.latency_us(0.5)),
            micros(load.latency_us(0.99)),
            micros(load.latency_us(0.999))
        );
    }
}

/// Configuration A against openraft's numbers.
pub fn print_table_a(rows: &[(usize, Measured)]) {
    println!("\n## Configuration A: in-process transport without serialization, in-memory log, empty payload\n");
    println!(
        "| clients | ops/s | p50 us | p99 us | p999 us | openraft (2 cores) | goal (x{GOAL_A_FACTOR}) | reached | retries | elections |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|");
    for (clients, measured) in rows {
        let load = &measured.load;
        let openraft = OPENRAFT_THIS_MACHINE.iter().find(|(c, _)| c == clients).map(|(_, ops)| *ops);
        let (openraft_cell, goal_cell, reached) = match openraft {
            Some(ops) => {
                let goal = ops * GOAL_A_FACTOR;
                let reached = if load.ops_per_sec() >= goal { "yes" } else { "no" };
                (thousands(ops), thousands(goal), reached)
            }
            None => ("-".to_owned(), "-".to_owned(), "-"),
        };
        println!(
            "| {clients} | {} | {} | {} | {} | {openraft_cell} | {goal_cell} | {reached} | {} | {} |",
            thousands(load.ops_per_sec()),
            micros(load.latency_us(0.5)),
            micros(load.latency_us(0.99)),
            micros(load.latency_us(0.999)),
            load.retries,
            measured.elections
        );
    }
}

/// Configuration B against the group-commit limit of the same payload and client count.
pub fn print_table_b(rows: &[(usize, usize, Measured)], fsync: &[(usize, usize, Rate)]) {
    println!("\n## Configuration B: TCP on 127.0.0.1 (postcard frames), WAL with fdatasync (group commit)\n");
    println!(
        "| payload | clients | ops/s | p50 us | p99 us | p999 us | group-commit limit | of limit | goal ({:.0}%) | retries | elections |",
        GOAL_B_FRACTION * 100.0
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|");
    for (payload, clients, measured) in rows {
        let load = &measured.load;
        let limit = fsync
            .iter()
            .find(|(p, c, _)| p == payload && c == clients)
            .map(|(_, _, rate)| rate.per_sec() * *clients as f64);
        let (limit_cell, fraction_cell, reached) = match limit {
            Some(limit) => {
                let fraction = load.ops_per_sec() / limit;
                let reached = if fraction >= GOAL_B_FRACTION { "yes" } else { "no" };
                (thousands(limit), format!("{:.0}%", fraction * 100.0), reached)
            }
            None => ("-".to_owned(), "-".to_owned(), "-"),
        };
        println!(
            "| {payload} B | {clients} | {} | {} | {} | {} | {limit_cell} | {fraction_cell} | {reached} | {} | {} |",
            thousands(load.ops_per_sec()),
            micros(load.latency_us(0.5)),
            micros(load.latency_us(0.99)),
            micros(load.latency_us(0.999)),
            load.retries,
            measured.elections
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
