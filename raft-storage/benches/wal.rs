//! Storage benchmark: the durable write-ahead log ([`DiskStorage`] over [`StdFs`]) against the raw
//! fsync rate of the same disk.
//!
//! ```text
//! cargo bench -p raft-storage --bench wal                         # data under <target>/wal-bench-data
//! cargo bench -p raft-storage --bench wal -- --quick              # 0.5 s per measurement, 64 MiB replay
//! cargo bench -p raft-storage --bench wal -- --dir /mnt/nvme/x    # benchmark another disk
//! ```
//!
//! Three sections, each printing a line per configuration as it finishes:
//!
//! 1. **raw**: a loop of (append N bytes to a file + `File::sync_data`) for N = 64 B, 1 KiB and
//!    16 KiB, plus 1 MiB and 16 MiB to find the disk's streaming bandwidth. The physical reference.
//! 2. **append**: [`LogStore::persist`] of `Entry { payload: EntryPayload::Normal(bytes) }` (one
//!    term, consecutive indexes) with 64 B, 1 KiB and 16 KiB payloads at 1, 64 and 1024 entries per
//!    call, against two references measured in the same configuration, interleaved in 0.1 s rounds
//!    so that the drift of a noisy (shared, virtual) disk hits all three alike:
//!    - the *model* limit the goal is stated against: the raw fsync rate at the payload size × the
//!      batch size, capped by the disk bandwidth (the best MB/s of section 1) over the on-disk entry size;
//!    - the *matched* raw rate: the raw loop writing exactly one batch's on-disk bytes per fsync, so
//!      the gap to it is what the store itself costs.
//! 3. **replay**: a log of 256 MiB (64 MiB with `--quick`) of 1 KiB entries is written, the store
//!    dropped, and [`DiskStorage::open`] timed (it reads every segment, checks every crc and
//!    decodes every entry), cold (after `sync; echo 3 > /proc/sys/vm/drop_caches`, which needs
//!    root) and warm, next to a plain read of the same files. `open` runs in a new process, as
//!    when a node restarts, and (warm) repeated in this one.
//!
//! MB means 10^6 bytes. Payloads come from a pool of distinct buffers (64 MiB in all) so that
//! encoding does not run from a hot cache. Everything is written to a fresh `wal-bench-<pid>`
//! directory inside DIR, removed at the end (also on a panic, but not on Ctrl-C). DIR must be on
//! the disk to measure: on tmpfs, fsync is a no-op and the numbers mean nothing (a warning says so).

use std::error::Error;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::hint::black_box;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use raft_core::{Entry, EntryPayload, HardState, Index, Membership, NodeId, Storage, Term};
use raft_storage::{DiskOptions, DiskStorage, Identity, LogStore, StdFs};

type BenchResult<T> = Result<T, Box<dyn Error>>;

/// Benchmark of the durable Raft log store against the raw fsync rate of the disk.
#[derive(Parser, Debug)]
struct Args {
    /// Directory on the disk to measure; a fresh subdirectory is created in it and removed at the
    /// end. Default: `wal-bench-data` in the cargo target directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Shorter runs: 0.5 s per measurement and a 64 MiB replay log.
    #[arg(long)]
    quick: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// Name filters passed by `cargo bench <filter>`; ignored (every section runs).
    #[arg(hide = true)]
    filters: Vec<String>,
    /// Internal: open the store in this directory, print "<nanoseconds> <last index>" and exit
    /// (the replay section runs `open` in a new process this way).
    #[arg(long, hide = true)]
    open_once: Option<PathBuf>,
}

/// How long and how much each measurement may run: whichever limit is reached first ends it.
struct Plan {
    /// Duration of each raw loop of section 1.
    raw_time: Duration,
    /// Duration of each of the three measurements of an append configuration.
    append_time: Duration,
    /// The rounds `append_time` is split into (0.1 s each).
    rounds: u32,
    /// Bytes written at most by one measurement.
    bytes_max: u64,
    /// Entries appended at most by one configuration (bounds the store's in-memory copy).
    entries_max: u64,
    /// Payload bytes of the replayed log.
    replay_bytes: u64,
    /// Cold and warm replays (the median cold and the best warm one are reported).
    replay_runs: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                raw_time: Duration::from_millis(1000),
                append_time: Duration::from_millis(500),
                rounds: 5,
                bytes_max: 512 * MIB,
                entries_max: 1_000_000,
                replay_bytes: 64 * MIB,
                replay_runs: 1,
            }
        } else {
            Plan {
                raw_time: Duration::from_secs(3),
                append_time: Duration::from_secs(2),
                rounds: 20,
                bytes_max: 2048 * MIB,
                entries_max: 4_000_000,
                replay_bytes: 256 * MIB,
                replay_runs: 3,
            }
        }
    }
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Payload sizes of the raw and append sections.
const PAYLOAD_SIZES: [u64; 3] = [64, KIB, 16 * KIB];
/// Extra raw write sizes that measure the disk's streaming bandwidth.
const BANDWIDTH_SIZES: [u64; 2] = [MIB, 16 * MIB];
/// Entries per `persist` call.
const BATCH_SIZES: [usize; 3] = [1, 64, 1024];
/// Payload size of the replayed log.
const REPLAY_PAYLOAD: u64 = KIB;
/// Entries per `persist` call when writing the replayed log.
const REPLAY_BATCH: usize = 1024;
/// Total size of the distinct payload buffers entries cycle through.
const POOL_BYTES: u64 = 64 * MIB;
/// The benchmark's node and cluster.
const IDENTITY: Identity = Identity { cluster_id: 1, node_id: NodeId(1) };
/// The term of every entry.
const TERM: Term = Term(1);
/// The goal for batched appends: this fraction of the fsync-bound limit.
const APPEND_GOAL: f64 = 0.8;
/// The goal for replay, in MB/s.
const REPLAY_GOAL_MBPS: f64 = 500.0;

fn main() -> BenchResult<()> {
    let args = Args::parse();
    if let Some(dir) = args.open_once {
        let (elapsed, last) = timed_open(&dir)?;
        println!("{} {last}", elapsed.as_nanos());
        return Ok(());
    }
    let plan = Plan::new(args.quick);
    let root = RunDir::create(&args.dir.unwrap_or_else(default_dir))?;
    print_machine(&root.0);

    println!("\n== 1. raw: append N bytes + sync_data, {:.1} s each ==", plan.raw_time.as_secs_f64());
    let mut raw = Vec::new();
    for size in PAYLOAD_SIZES.into_iter().chain(BANDWIDTH_SIZES) {
        progress(&format!("raw {:>6} ...", size_label(size)));
        let measured = RawLoop::new(&root.0.join("raw.dat"), size)?.run(plan.raw_time, plan.bytes_max)?;
        println!(" {:>7} fsyncs/s {:>8.1} MB/s", rate(measured.ops_per_sec()), measured.mb_per_sec());
        raw.push((size, measured));
    }
    print_raw_table(&raw);
    let bandwidth = raw.iter().map(|(_, m)| m.mb_per_sec()).fold(0.0, f64::max);
    println!("disk bandwidth for the model limit (best raw MB/s): {bandwidth:.1} MB/s");

    println!(
        "\n== 2. append: DiskStorage::persist with StdFs; store, raw at the payload size and raw matched to \
         the batch, {} x {:.2} s each ==",
        plan.rounds,
        plan.append_time.as_secs_f64() / f64::from(plan.rounds)
    );
    let mut appends = Vec::new();
    for size in PAYLOAD_SIZES {
        let pool = payload_pool(size);
        for batch in BATCH_SIZES {
            progress(&format!("append {:>6} x {batch:>4} ...", size_label(size)));
            let row = append_config(&root.0, &pool, batch, &plan)?;
            println!(
                " {:>7} entries/s {:>7.1} MB/s, {:>4.0}% of matched raw ({} entries/s)",
                rate(row.entries_per_sec()),
                row.run.mb_per_sec(),
                100.0 * row.of_matched(),
                rate(row.matched_per_sec())
            );
            appends.push(row);
        }
    }
    print_append_table(&appends, bandwidth);

    println!("\n== 3. replay: DiskStorage::open of a {} log of 1 KiB entries ==", size_label(plan.replay_bytes));
    let replay = replay(&root.0.join("replay"), &plan)?;
    print_replay_table(&replay);

    print_goals(&appends, bandwidth, &replay);
    drop(root);
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Setup and machine facts

/// A fresh directory for this run, removed (with everything in it) when dropped.
struct RunDir(PathBuf);

impl RunDir {
    fn create(base: &Path) -> io::Result<RunDir> {
        let dir = base.join(format!("wal-bench-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)?;
        Ok(RunDir(dir.canonicalize()?))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.0) {
            eprintln!("warning: could not remove {}: {error}", self.0.display());
        }
    }
}

/// `<target>/wal-bench-data`, found from this executable's path (`<target>/<profile>/deps/wal-*`),
/// or `./bench-data` when that layout is not recognized.
fn default_dir() -> PathBuf {
    let exe = std::env::current_exe().ok();
    let target = exe.as_deref().and_then(Path::parent).and_then(Path::parent).and_then(Path::parent);
    match target {
        Some(target) if target.is_dir() => target.join("wal-bench-data"),
        _ => PathBuf::from("bench-data"),
    }
}

/// Prints the CPU, memory, kernel and the file system holding `dir`, warning about tmpfs.
fn print_machine(dir: &Path) {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim()))
        .unwrap_or("unknown");
    let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let available = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:")).map(|l| l["MemTotal:".len()..].trim().to_owned()))
        .unwrap_or_else(|| "unknown".to_owned());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("== machine ==");
    println!("cpu:    {model}");
    println!("cores:  {cpus} logical in /proc/cpuinfo, {available} available to this process");
    println!("memory: {memory}");
    println!("kernel: {}", kernel.trim());
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!("load:   {} (other processes on the machine skew the results)", load.join(" "));
    println!("dir:    {}", dir.display());
    match mount_of(dir) {
        Some(mount) => {
            let rotational = rotational(&mount.device).map_or("unknown", |r| if r { "1" } else { "0" });
            println!("fs:     {} on {} mounted at {} ({})", mount.fs_type, mount.device, mount.point, mount.options);
            println!("device: sysfs rotational flag {rotational} (virtual disks often say 1 whatever backs them)");
            if matches!(mount.fs_type.as_str(), "tmpfs" | "ramfs") {
                println!(
                    "WARNING: {} is on {}: fsync is a no-op in memory, so these numbers say nothing about \
                     a disk. Pass --dir on a real disk.",
                    dir.display(),
                    mount.fs_type
                );
            }
        }
        None => println!("fs:     unknown (no /proc/mounts entry found)"),
    }
}

/// One line of `/proc/mounts`.
struct Mount {
    device: String,
    point: String,
    fs_type: String,
    options: String,
}

/// The mount holding `dir` (canonical): the last-mounted entry with the longest matching point.
fn mount_of(dir: &Path) -> Option<Mount> {
    let mounts = fs::read_to_string("/proc/mounts").ok()?;
    let mut best: Option<Mount> = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [device, point, fs_type, options, ..] = fields[..] else { continue };
        let point = unescape_mount(point);
        let longer = best.as_ref().is_none_or(|b| point.len() >= b.point.len());
        if dir.starts_with(&point) && longer {
            let (device, fs_type, options) = (unescape_mount(device), fs_type.to_owned(), options.to_owned());
            best = Some(Mount { device, point, fs_type, options });
        }
    }
    best
}

/// Decodes the octal escapes (`\040` for a space) of `/proc/mounts` fields.
fn unescape_mount(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        match rest.get(at + 1..at + 4).and_then(|digits| u8::from_str_radix(digits, 8).ok()) {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether the block device `device` (`/dev/...`) is rotational, from sysfs (a partition's
/// queue is its parent's).
fn rotational(device: &str) -> Option<bool> {
    let name = Path::new(device.strip_prefix("/dev/")?).file_name()?.to_str()?.to_owned();
    let block = Path::new("/sys/class/block").join(name);
    let flag = fs::read_to_string(block.join("queue/rotational"))
        .or_else(|_| fs::read_to_string(block.join("../queue/rotational")))
        .ok()?;
    Some(flag.trim() == "1")
}

// ------------------------------------------------------------------------------------------------
// Measurements

/// A count of operations and bytes over a time.
#[derive(Clone, Copy, Debug)]
struct Measured {
    ops: u64,
    bytes: u64,
    elapsed: Duration,
}

impl Measured {
    const ZERO: Measured = Measured { ops: 0, bytes: 0, elapsed: Duration::ZERO };

    fn plus(self, other: Measured) -> Measured {
        Measured { ops: self.ops + other.ops, bytes: self.bytes + other.bytes, elapsed: self.elapsed + other.elapsed }
    }

    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
}

/// A loop of (append a chunk + `sync_data`) on one file, removed when dropped.
struct RawLoop {
    path: PathBuf,
    file: File,
    chunk: Vec<u8>,
}

impl RawLoop {
    /// Creates the file at `path` and runs two untimed warm-up rounds with `chunk_len`-byte chunks.
    fn new(path: &Path, chunk_len: u64) -> io::Result<RawLoop> {
        // A new, empty file written sequentially: every write appends.
        let file = File::create(path)?;
        let mut raw = RawLoop { path: path.to_path_buf(), file, chunk: random_bytes(chunk_len as usize, chunk_len) };
        for _ in 0..2 {
            raw.file.write_all(&raw.chunk)?;
            raw.file.sync_data()?;
        }
        Ok(raw)
    }

    /// Appends and syncs until `time` has passed or `bytes_max` bytes are written.
    fn run(&mut self, time: Duration, bytes_max: u64) -> io::Result<Measured> {
        let (mut ops, mut bytes) = (0, 0);
        let start = Instant::now();
        while start.elapsed() < time && bytes < bytes_max {
            self.file.write_all(&self.chunk)?;
            self.file.sync_data()?;
            ops += 1;
            bytes += self.chunk.len() as u64;
        }
        Ok(Measured { ops, bytes, elapsed: start.elapsed() })
    }
}

impl Drop for RawLoop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A store in its own directory, appended to in batches; the directory is removed when dropped.
struct AppendLoop<'a> {
    dir: PathBuf,
    store: Option<DiskStorage>,
    pool: &'a [Bytes],
    batch: Vec<Entry>,
    /// The next index to append.
    next: u64,
}

impl<'a> AppendLoop<'a> {
    /// Creates a store in `dir` (making the term durable) and appends two untimed batches of
    /// `batch` entries.
    fn new(dir: &Path, pool: &'a [Bytes], batch: usize) -> BenchResult<AppendLoop<'a>> {
        let membership = Membership::new([IDENTITY.node_id]);
        let mut store = DiskStorage::create(StdFs, dir, IDENTITY, membership, DiskOptions::default())?;
        let hard_state = HardState { term: TERM, vote: Some(IDENTITY.node_id), commit: Index(0) };
        store.persist(Some(hard_state), &[])?;
        let batch = batch_of(pool, batch, 1);
        let mut append = AppendLoop { dir: dir.to_path_buf(), store: Some(store), pool, batch, next: 1 };
        append.run(Duration::ZERO, 1)?;
        append.run(Duration::ZERO, 1)?;
        Ok(append)
    }

    /// Appends batches until `time` has passed or `entries_max` entries are appended (at least one
    /// batch). Counts `persist` calls as operations and payload bytes as bytes.
    fn run(&mut self, time: Duration, entries_max: u64) -> BenchResult<Measured> {
        let store = self.store.as_mut().expect("the store is open until dropped");
        let len = self.batch.len() as u64;
        let payload_len = self.pool[0].len() as u64;
        let (mut calls, mut appended) = (0, 0);
        let start = Instant::now();
        loop {
            refill(&mut self.batch, self.pool, self.next);
            store.persist(None, &self.batch)?;
            self.next += len;
            calls += 1;
            appended += len;
            if start.elapsed() >= time || appended >= entries_max {
                break;
            }
        }
        Ok(Measured { ops: calls, bytes: appended * payload_len, elapsed: start.elapsed() })
    }

    /// The on-disk bytes per entry so far (segment headers amortized).
    fn record_bytes(&self) -> BenchResult<f64> {
        let store = self.store.as_ref().expect("the store is open until dropped");
        assert_eq!(store.last_index()?, Index(self.next - 1), "every entry was stored");
        Ok(wal_bytes(&self.dir)? as f64 / (self.next - 1) as f64)
    }
}

impl Drop for AppendLoop<'_> {
    fn drop(&mut self) {
        self.store = None;
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// One append configuration: the store and its two raw references.
struct AppendRow {
    size: u64,
    batch: usize,
    /// The store: `persist` calls and payload bytes.
    run: Measured,
    /// On-disk bytes per entry.
    record_bytes: f64,
    /// The raw loop at the payload size.
    base: Measured,
    /// The raw loop matched to one batch's on-disk bytes.
    matched: Measured,
}

impl AppendRow {
    fn entries_per_sec(&self) -> f64 {
        self.run.ops_per_sec() * self.batch as f64
    }

    fn matched_per_sec(&self) -> f64 {
        self.matched.ops_per_sec() * self.batch as f64
    }

    /// The model's fsync-bound limit in entries/s, given the disk's `bandwidth` in MB/s.
    fn limit_per_sec(&self, bandwidth: f64) -> f64 {
        (self.base.ops_per_sec() * self.batch as f64).min(bandwidth * 1e6 / self.record_bytes)
    }

    fn of_limit(&self, bandwidth: f64) -> f64 {
        self.entries_per_sec() / self.limit_per_sec(bandwidth)
    }

    fn of_matched(&self) -> f64 {
        self.entries_per_sec() / self.matched_per_sec()
    }
}

/// Measures one append configuration in `plan.rounds` rounds of, in turn, the store, the raw loop
/// at the payload size and the raw loop matched to one batch's on-disk bytes. The fine interleaving
/// makes all three see the same disk: the fsync rate of a shared or virtual disk drifts by 2-3x
/// within seconds.
fn append_config(root: &Path, pool: &[Bytes], batch: usize, plan: &Plan) -> BenchResult<AppendRow> {
    let size = pool[0].len() as u64;
    let mut store = AppendLoop::new(&root.join(format!("append-{size}-{batch}")), pool, batch)?;
    let matched_len = (store.record_bytes()? * batch as f64).round() as u64;
    let mut base = RawLoop::new(&root.join("base.dat"), size)?;
    let mut matched = RawLoop::new(&root.join("matched.dat"), matched_len)?;
    let slice = plan.append_time / plan.rounds;
    let bytes_max = plan.bytes_max / u64::from(plan.rounds);
    let entries_max = (plan.entries_max / u64::from(plan.rounds)).min(bytes_max / size);
    let (mut run, mut base_sum, mut matched_sum) = (Measured::ZERO, Measured::ZERO, Measured::ZERO);
    for round in 0..plan.rounds {
        // The order rotates so that none of the three always follows the same one.
        for turn in 0..3 {
            match (round + turn) % 3 {
                0 => run = run.plus(store.run(slice, entries_max)?),
                1 => base_sum = base_sum.plus(base.run(slice, bytes_max)?),
                _ => matched_sum = matched_sum.plus(matched.run(slice, bytes_max)?),
            }
        }
    }
    let record_bytes = store.record_bytes()?;
    Ok(AppendRow { size, batch, run, record_bytes, base: base_sum, matched: matched_sum })
}

/// `len` consecutive entries from index `first`.
fn batch_of(pool: &[Bytes], len: usize, first: u64) -> Vec<Entry> {
    (first..first + len as u64).map(|index| entry(pool, index)).collect()
}

/// Turns `entries` into the next batch from index `first`, reusing the vector.
fn refill(entries: &mut [Entry], pool: &[Bytes], first: u64) {
    for (slot, index) in entries.iter_mut().zip(first..) {
        *slot = entry(pool, index);
    }
}

/// The entry at `index`: term [`TERM`], payload the pool's buffer for that index (shared, as a
/// driver's entries share the buffers of the client requests they carry).
fn entry(pool: &[Bytes], index: u64) -> Entry {
    let payload = pool[(index % pool.len() as u64) as usize].clone();
    Entry { term: TERM, index: Index(index), payload: EntryPayload::Normal(payload) }
}

/// Distinct pseudo-random payloads of `size` bytes, [`POOL_BYTES`] in all.
fn payload_pool(size: u64) -> Vec<Bytes> {
    (0..(POOL_BYTES / size).max(1)).map(|seed| Bytes::from(random_bytes(size as usize, seed))).collect()
}

/// `len` pseudo-random bytes (xorshift64*), so that nothing on the way can compress them.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The total size of the `.wal` segment files in `dir`.
fn wal_bytes(dir: &Path) -> io::Result<u64> {
    Ok(wal_files(dir)?.iter().map(|(_, len)| len).sum())
}

/// The `.wal` segment files in `dir` with their sizes, by name.
fn wal_files(dir: &Path) -> io::Result<Vec<(PathBuf, u64)>> {
    let mut files = Vec::new();
    for item in fs::read_dir(dir)? {
        let item = item?;
        if item.path().extension().is_some_and(|e| e == "wal") {
            files.push((item.path(), item.metadata()?.len()));
        }
    }
    files.sort();
    Ok(files)
}

/// The replay section's results: one time per way of reading the log.
struct Replay {
    entries: u64,
    wal_bytes: u64,
    /// Why the page cache could not be dropped, if it could not.
    drop_caches: Result<(), String>,
    /// (label, time), in the order measured.
    rows: Vec<(&'static str, Duration)>,
    /// The cold and warm `open` in a new process: what a restarting node sees.
    cold_open: Option<Duration>,
    warm_open: Duration,
}

impl Replay {
    fn mb_per_sec(&self, time: Duration) -> f64 {
        self.wal_bytes as f64 / 1e6 / time.as_secs_f64()
    }

    fn entries_per_sec(&self, time: Duration) -> f64 {
        self.entries as f64 / time.as_secs_f64()
    }
}

/// Writes the replay log into `dir`, then times reading and opening it cold and warm. `open` runs
/// in a new process (this executable with `--open-once`), as at a node's restart: the first
/// `open` of a process also pays for the fresh memory its entries need, which a repeated `open` in
/// one process (also measured) finds recycled.
fn replay(dir: &Path, plan: &Plan) -> BenchResult<Replay> {
    let entries = plan.replay_bytes / REPLAY_PAYLOAD;
    progress(&format!("writing {entries} entries of 1 KiB in batches of {REPLAY_BATCH} ..."));
    let start = Instant::now();
    let pool = payload_pool(REPLAY_PAYLOAD);
    let mut writer = AppendLoop::new(dir, &pool, REPLAY_BATCH)?;
    writer.run(Duration::MAX, entries - writer.next + 1)?;
    let segments = writer.store.as_ref().map_or(0, DiskStorage::segment_count);
    writer.store = None; // closes the store but keeps the directory
    let entries = writer.next - 1;
    let wal_bytes = wal_bytes(dir)?;
    let elapsed = start.elapsed();
    println!(
        " {:.2} s ({:.1} MB/s), {} in {segments} segments",
        elapsed.as_secs_f64(),
        wal_bytes as f64 / 1e6 / elapsed.as_secs_f64(),
        size_label(wal_bytes)
    );

    let open_here = || -> BenchResult<Duration> {
        let (elapsed, last) = timed_open(dir)?;
        check_recovered(last, entries)?;
        Ok(elapsed)
    };
    let open_in_new_process = || -> BenchResult<Duration> {
        let output = std::process::Command::new(std::env::current_exe()?).arg("--open-once").arg(dir).output()?;
        if !output.status.success() {
            return Err(format!("--open-once failed: {}", String::from_utf8_lossy(&output.stderr)).into());
        }
        let stdout = String::from_utf8(output.stdout)?;
        let (nanos, last) = stdout.trim().split_once(' ').ok_or("unexpected --open-once output")?;
        check_recovered(last.parse()?, entries)?;
        Ok(Duration::from_nanos(nanos.parse()?))
    };
    let read = || -> BenchResult<Duration> {
        let start = Instant::now();
        for (path, _) in wal_files(dir)? {
            black_box(fs::read(path)?);
        }
        Ok(start.elapsed())
    };
    // Runs `timed` `plan.replay_runs` times (each after dropping the page cache if `cold`),
    // printing each time; returns the times, sorted.
    let measure = |label: &str, timed: &dyn Fn() -> BenchResult<Duration>, cold: bool| -> BenchResult<Vec<Duration>> {
        let mut times = Vec::new();
        for run in 1..=plan.replay_runs {
            if cold {
                drop_page_cache()?;
            }
            let time = timed()?;
            println!(
                "{label} #{run}: {:.3} s, {:.1} MB/s, {} entries/s",
                time.as_secs_f64(),
                wal_bytes as f64 / 1e6 / time.as_secs_f64(),
                rate(entries as f64 / time.as_secs_f64())
            );
            times.push(time);
        }
        times.sort();
        Ok(times)
    };
    let median = |times: Vec<Duration>| times[times.len() / 2];
    let best = |times: Vec<Duration>| times[0];

    let mut rows = Vec::new();
    let drop_caches = drop_page_cache();
    let mut cold_open = None;
    match &drop_caches {
        Ok(()) => {
            println!("page cache dropped (sync; echo 3 > /proc/sys/vm/drop_caches): ok");
            rows.push(("raw read, cold (median)", median(measure("raw read, cold", &read, true)?)));
            let open = median(measure("open, cold, new process", &open_in_new_process, true)?);
            rows.push(("open, cold, new process (median)", open));
            cold_open = Some(open);
        }
        Err(why) => println!("could not drop the page cache ({why}): cold replay skipped"),
    }
    read()?; // fills the page cache
    rows.push(("raw read, warm (best)", best(measure("raw read, warm", &read, false)?)));
    let warm_open = median(measure("open, warm, new process", &open_in_new_process, false)?);
    rows.push(("open, warm, new process (median)", warm_open));
    rows.push(("open, warm, same process (best)", best(measure("open, warm, same process", &open_here, false)?)));
    drop(writer);
    Ok(Replay { entries, wal_bytes, drop_caches, rows, cold_open, warm_open })
}

/// Opens the store in `dir`: how long it took and the last index recovered.
fn timed_open(dir: &Path) -> BenchResult<(Duration, u64)> {
    let start = Instant::now();
    let store = DiskStorage::open(StdFs, dir, IDENTITY, DiskOptions::default())?;
    let elapsed = start.elapsed();
    Ok((elapsed, store.last_index()?.0))
}

fn check_recovered(last: u64, entries: u64) -> BenchResult<()> {
    if last != entries {
        return Err(format!("open recovered {last} entries, not {entries}").into());
    }
    Ok(())
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches` (needs root; in a VM it only drops the guest's cache).
fn drop_page_cache() -> Result<(), String> {
    let synced = std::process::Command::new("sync").status().map_err(|e| format!("sync: {e}"))?;
    if !synced.success() {
        return Err(format!("sync exited with {synced}"));
    }
    fs::write("/proc/sys/vm/drop_caches", "3").map_err(|e| format!("writing /proc/sys/vm/drop_caches: {e}"))
}

// ------------------------------------------------------------------------------------------------
// Output

/// Prints `text` without a newline, so the result can follow on the same line.
fn progress(text: &str) {
    print!("{text}");
    let _ = io::stdout().flush();
}

/// `64 B`, `1 KiB`, `16 MiB`, `1.5 GiB`.
fn size_label(bytes: u64) -> String {
    let units = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, scale) in units {
        if bytes >= scale {
            let value = bytes as f64 / scale as f64;
            return if bytes.is_multiple_of(scale) {
                format!("{value:.0} {unit}")
            } else {
                format!("{value:.1} {unit}")
            };
        }
    }
    format!("{bytes} B")
}

/// A rate with an SI suffix: `812`, `45.3k`, `1.27M`.
fn rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{:.2}M", per_sec / 1e6)
    } else if per_sec >= 1e4 {
        format!("{:.1}k", per_sec / 1e3)
    } else {
        format!("{per_sec:.0}")
    }
}

fn print_raw_table(raw: &[(u64, Measured)]) {
    println!("\n{:>8} | {:>10} | {:>9} | {:>10}", "write", "fsyncs/s", "MB/s", "latency");
    println!("{}", "-".repeat(46));
    for (size, m) in raw {
        println!(
            "{:>8} | {:>10} | {:>9.1} | {:>7.0} us",
            size_label(*size),
            rate(m.ops_per_sec()),
            m.mb_per_sec(),
            1e6 / m.ops_per_sec()
        );
    }
}

fn print_append_table(rows: &[AppendRow], bandwidth: f64) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:>7} | {:>5} | {:>9} | {:>9} | {:>7} | {:>7} | {:>8} | {:>9} | {:>7} | {:>9} | {:>7}",
        "payload",
        "batch",
        "persist/s",
        "entries/s",
        "MB/s",
        "B/entry",
        "fsyncs/s",
        "limit/s",
        "% limit",
        "matched/s",
        "% match"
    );
    let _ = writeln!(out, "{}", "-".repeat(119));
    for row in rows {
        let _ = writeln!(
            out,
            "{:>7} | {:>5} | {:>9} | {:>9} | {:>7.1} | {:>7.1} | {:>8} | {:>9} | {:>6.0}% | {:>9} | {:>6.0}%",
            size_label(row.size),
            row.batch,
            rate(row.run.ops_per_sec()),
            rate(row.entries_per_sec()),
            row.run.mb_per_sec(),
            row.record_bytes,
            rate(row.base.ops_per_sec()),
            rate(row.limit_per_sec(bandwidth)),
            100.0 * row.of_limit(bandwidth),
            rate(row.matched_per_sec()),
            100.0 * row.of_matched()
        );
    }
    let _ = writeln!(
        out,
        "MB/s: payload bytes. B/entry: on-disk bytes per entry. fsyncs/s: raw loop at the payload size, \
         interleaved.\nlimit/s = min(fsyncs/s x batch, disk bandwidth {bandwidth:.1} MB/s / B/entry). \
         matched/s: raw loop writing batch x B/entry per fsync, x batch."
    );
    print!("{out}");
}

fn print_replay_table(replay: &Replay) {
    println!("\nreplay of {} entries, {} of segments:", replay.entries, size_label(replay.wal_bytes));
    println!("{:<34} | {:>8} | {:>8} | {:>10}", "", "seconds", "MB/s", "entries/s");
    println!("{}", "-".repeat(70));
    for (label, time) in &replay.rows {
        println!(
            "{label:<34} | {:>8.3} | {:>8.1} | {:>10}",
            time.as_secs_f64(),
            replay.mb_per_sec(*time),
            rate(replay.entries_per_sec(*time))
        );
    }
    if let Err(why) = &replay.drop_caches {
        println!("(cold rows skipped: {why})");
    }
}

fn print_goals(appends: &[AppendRow], bandwidth: f64, replay: &Replay) {
    println!("\n== goals ==");
    let batched: Vec<&AppendRow> = appends.iter().filter(|r| r.batch > 1).collect();
    let verdict = |name: &str, ratio: &dyn Fn(&AppendRow) -> f64| {
        let short: Vec<String> = batched
            .iter()
            .filter(|r| ratio(r) < APPEND_GOAL)
            .map(|r| format!("{} x {} at {:.1}%", size_label(r.size), r.batch, 100.0 * ratio(r)))
            .collect();
        let worst = batched.iter().map(|r| ratio(r)).fold(f64::INFINITY, f64::min);
        let goal = format!("batched appends (batch >= 64) >= {:.0}% of {name}", 100.0 * APPEND_GOAL);
        if short.is_empty() {
            println!("{goal}: MET (worst {:.0}%)", 100.0 * worst);
        } else {
            println!("{goal}: NOT MET ({})", short.join(", "));
        }
    };
    verdict("the model fsync-bound limit", &|r| r.of_limit(bandwidth));
    verdict("the matched raw rate", &AppendRow::of_matched);
    let replay_verdict = |mbps: f64| if mbps >= REPLAY_GOAL_MBPS { "MET" } else { "NOT MET" };
    let warm = replay.mb_per_sec(replay.warm_open);
    let goal = format!("replay (open in a new process) >= {REPLAY_GOAL_MBPS:.0} MB/s");
    println!("{goal}, warm page cache: {} ({warm:.1} MB/s)", replay_verdict(warm));
    match replay.cold_open {
        Some(cold) => {
            let cold = replay.mb_per_sec(cold);
            println!("{goal}, cold page cache: {} ({cold:.1} MB/s)", replay_verdict(cold));
        }
        None => println!("{goal}, cold page cache: not measured"),
    }
}
