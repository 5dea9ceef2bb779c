//! Rebalance mode: a 3-node cluster loaded with values, then a fourth and a fifth node join; the
//! time until the table is balanced and every group is exactly the table's, and meanwhile the
//! longest span without a successful write of each shard (one probe writer per shard).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper::body::Bytes;
use raft_kv::shards::{ShardId, shard_of};

use super::cluster::{Cluster, State, disk_bytes};
use super::http::{Connections, SharedCache, keyed};
use super::load;
use super::stats::load_average;
use super::throughput::{PROGRESS_INTERVAL, REPLICAS, settle};
use super::unavailable::Tracker;

/// How long a probe writer waits between two writes.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// What to measure.
pub struct Options {
    /// The `raft-kv` binary.
    pub binary: PathBuf,
    /// Where the cluster's data goes (deleted at the end unless kept).
    pub dir: PathBuf,
    /// The shards.
    pub shards: u32,
    /// The bytes to load.
    pub bytes: u64,
    /// The bytes of each value loaded.
    pub value_bytes: usize,
    /// The clients that load.
    pub clients: u64,
    /// How long each rebalancing may take.
    pub timeout: Duration,
    /// Keep the data directory at the end.
    pub keep: bool,
}

/// A key of `shard` among `shard_count` (the first `probe-{shard}-{n}` that hashes there).
pub fn probe_key(shard: u32, shard_count: u32) -> String {
    (0u64..)
        .map(|n| format!("probe-{shard}-{n}"))
        .find(|key| shard_of(key.as_bytes(), shard_count) == ShardId(shard))
        .unwrap_or_default()
}

/// The probes' record: the tracker of the current span of time, and when it began.
type Record = Arc<Mutex<(Instant, Tracker)>>;

/// One probe writer: a small write to `shard` every [`PROBE_INTERVAL`] until `stop`.
async fn probe(shard: u32, shard_count: u32, cache: SharedCache, record: Record, stop: Arc<AtomicBool>) {
    let key = probe_key(shard, shard_count);
    let path = format!("/kv/{key}");
    let mut connections = Connections::default();
    let mut count = 0u64;
    while !stop.load(Ordering::Relaxed) {
        count += 1;
        let body = Bytes::from(count.to_string());
        let outcome = keyed(&mut connections, &cache, "PUT", &key, &path, &body).await;
        {
            let mut record = record.lock().unwrap_or_else(PoisonError::into_inner);
            let at = record.0.elapsed();
            record.1.record_status(shard, at, outcome.ok, outcome.last_status);
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Starts a new span of the probes' record; returns the one that ended, closed at its end.
fn restart(record: &Record, shards: u32) -> Tracker {
    let mut record = record.lock().unwrap_or_else(PoisonError::into_inner);
    let ended = record.0.elapsed();
    let (_, mut old) = std::mem::replace(&mut *record, (Instant::now(), Tracker::new(0..shards)));
    old.finish(ended);
    old
}

/// One join's result.
struct Joined {
    id: u64,
    seconds: f64,
    worst: Option<(u32, Duration, u64)>,
    moved: usize,
    disk: u64,
    load: f64,
}

/// Starts node `id` with `--join` and waits until the table is balanced over it and every group
/// is the table's; the probes' record is restarted at the join.
async fn join(
    cluster: &mut Cluster,
    id: u64,
    options: &Options,
    cache: &SharedCache,
    record: &Record,
) -> Result<Joined, String> {
    let mut connections = Connections::default();
    let before = State::of(&cluster.views(&mut connections).await);
    let baseline = restart(record, options.shards);
    if let Some((shard, span)) = baseline.worst() {
        println!("  before node {id}: worst write gap {:.0} ms (shard {shard})", span.worst.as_secs_f64() * 1000.0);
    }
    let started = Instant::now();
    let http = cluster.join(id)?;
    cache.lock().unwrap_or_else(PoisonError::into_inner).add_node(http);
    println!("node {id} joining ({http})");
    let mut said = Instant::now();
    let state = loop {
        if let Some(exited) = cluster.exited() {
            return Err(format!("node {exited} exited (see its log in {})", options.dir.display()));
        }
        let state = State::of(&cluster.views(&mut connections).await);
        if state.done(id as usize, usize::from(REPLICAS)) {
            break state;
        }
        if started.elapsed() > options.timeout {
            return Err(format!(
                "node {id}: not rebalanced after {:?}: table version {}, replicas per node {:?}, unsettled shards {:?}",
                options.timeout,
                state.version,
                state.counts(),
                state.unsettled()
            ));
        }
        if said.elapsed() >= PROGRESS_INTERVAL {
            println!(
                "  {:>5.1} s: table version {}, replicas per node {:?}, unsettled shards {:?}",
                started.elapsed().as_secs_f64(),
                state.version,
                state.counts(),
                state.unsettled()
            );
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let during = restart(record, options.shards);
    let moved = state
        .replicas
        .iter()
        .map(|(shard, now)| now.difference(before.replicas.get(shard).unwrap_or(&BTreeSet::new())).count())
        .sum();
    let disk = cluster.nodes.get(&id).map_or(0, |node| disk_bytes(&node.data));
    let gaps: Vec<String> = during
        .spans()
        .iter()
        .map(|(shard, span)| format!("{shard}: {:.0} ms", span.worst.as_secs_f64() * 1000.0))
        .collect();
    println!("  node {id}: worst write gap per shard: {}", gaps.join(", "));
    let mut failed: std::collections::BTreeMap<u16, u64> = std::collections::BTreeMap::new();
    for span in during.spans().values() {
        for (status, count) in &span.failed_with {
            *failed.entry(*status).or_default() += count;
        }
    }
    println!("  node {id}: failed probe writes by last status (0: no answer): {failed:?}");
    let failures = failed.values().sum();
    let worst = during.worst().map(|(shard, span)| (shard, span.worst, failures));
    Ok(Joined { id, seconds, worst, moved, disk, load: load_average() })
}

/// Loads the cluster, then has nodes 4 and 5 join; prints each step and the results.
pub async fn run(options: Options) -> Result<(), String> {
    let dir = options.dir.join("rebalance");
    let _ = std::fs::remove_dir_all(&dir); // Left by an earlier run, or absent.
    println!("a 3-node cluster of {} shards x {REPLICAS} replicas: starting", options.shards);
    let mut cluster = Cluster::start(&options.binary, &dir, 3, options.shards, REPLICAS)?;
    let cache = settle(&mut cluster, 3, Duration::from_secs(120)).await?;
    let count = options.bytes.div_ceil(options.value_bytes as u64);
    println!("loading {count} values of {} B with {} clients", options.value_bytes, options.clients);
    let started = Instant::now();
    let failed = load::fill(0..count, options.value_bytes, options.clients, Arc::clone(&cache), 1000).await;
    let load_seconds = started.elapsed().as_secs_f64();
    let mib = (count * options.value_bytes as u64) as f64 / (1024.0 * 1024.0);
    let node_disk: Vec<u64> = cluster.nodes.values().map(|node| disk_bytes(&node.data)).collect();
    println!(
        "loaded {mib:.0} MiB in {load_seconds:.1} s ({:.1} MiB/s), {failed} failed writes, load {:.2}; on disk per node (MiB): {:?}",
        mib / load_seconds,
        load_average(),
        node_disk.iter().map(|bytes| bytes / (1024 * 1024)).collect::<Vec<_>>()
    );
    let record: Record = Arc::new(Mutex::new((Instant::now(), Tracker::new(0..options.shards))));
    let stop = Arc::new(AtomicBool::new(false));
    let probes: Vec<_> = (0..options.shards)
        .map(|shard| {
            let (cache, record, stop) = (Arc::clone(&cache), Arc::clone(&record), Arc::clone(&stop));
            tokio::spawn(probe(shard, options.shards, cache, record, stop))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut joined = Vec::new();
    let mut outcome = Ok(());
    for id in [4, 5] {
        match join(&mut cluster, id, &options, &cache, &record).await {
            Ok(result) => {
                println!("  node {id}: rebalanced in {:.1} s", result.seconds);
                joined.push(result);
            }
            Err(error) => {
                outcome = Err(error);
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for probe in probes {
        let _ = probe.await; // A probe that panicked has recorded what it did.
    }
    println!(
        "| joining node | rebalance s | worst write gap (shard) | failed probe writes (all shards) | replicas moved | new node's data MiB | load avg |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|");
    for result in &joined {
        let (gap, failures) = match result.worst {
            Some((shard, gap, failures)) => (format!("{:.0} ms (shard {shard})", gap.as_secs_f64() * 1000.0), failures),
            None => ("-".to_owned(), 0),
        };
        println!(
            "| {} | {:.1} | {gap} | {failures} | {} | {} | {:.2} |",
            result.id,
            result.seconds,
            result.moved,
            result.disk / (1024 * 1024),
            result.load
        );
    }
    cluster.stop();
    if options.keep || outcome.is_err() {
        println!("data and logs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir); // Disk is shared: nothing is kept.
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_probe_key_is_in_its_shard() {
        for shard in 0..8 {
            let key = probe_key(shard, 8);
            assert_eq!(shard_of(key.as_bytes(), 8), ShardId(shard), "{key}");
        }
    }
}
