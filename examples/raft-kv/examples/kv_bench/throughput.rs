//! Throughput mode: per shard count, a fresh 3-node cluster, a PUT window then a linearizable GET
//! window of closed-loop clients; the whole list run `runs` times in passes, medians reported.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cluster::{Cluster, State};
use super::http::{Connections, SharedCache};
use super::load::{self, Phase, Window};
use super::route::LeaderCache;
use super::stats::{Summary, load_average};

/// How often a waiting or measuring step prints where it is.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// The nodes of a throughput cluster.
pub const NODES: u64 = 3;
/// The replicas of each shard.
pub const REPLICAS: u8 = 3;

/// What to measure.
pub struct Options {
    /// The `raft-kv` binary.
    pub binary: PathBuf,
    /// Where the clusters' data goes (a directory per cluster, deleted after it).
    pub dir: PathBuf,
    /// The shard counts.
    pub shards: Vec<u32>,
    /// How many passes over the shard counts.
    pub runs: u32,
    /// Closed-loop clients.
    pub clients: u64,
    /// The key space.
    pub keys: u64,
    /// The bytes of each value written.
    pub value_bytes: usize,
    /// The warm-up before each window.
    pub warmup: Duration,
    /// Each measuring window.
    pub duration: Duration,
    /// How long a cluster may take to settle.
    pub settle_timeout: Duration,
}

/// Waits until `cluster` has `nodes` nodes, balanced, each shard's group exactly its table entry
/// with a leader; returns a leader cache seeded with those leaders.
pub async fn settle(cluster: &mut Cluster, nodes: usize, timeout: Duration) -> Result<SharedCache, String> {
    let started = Instant::now();
    let mut connections = Connections::default();
    let mut said = Instant::now();
    loop {
        if let Some(id) = cluster.exited() {
            return Err(format!("node {id} exited (see its log)"));
        }
        let state = State::of(&cluster.views(&mut connections).await);
        if state.done(nodes, usize::from(REPLICAS).min(nodes)) {
            let mut cache = LeaderCache::new(state.replicas.len() as u32, cluster.http());
            for (shard, group) in &state.leaders {
                if let Ok(http) = group.http.parse::<SocketAddr>() {
                    cache.learn(raft_kv::shards::ShardId(*shard), http);
                }
            }
            println!("  settled in {:.1} s (table version {})", started.elapsed().as_secs_f64(), state.version);
            return Ok(Arc::new(Mutex::new(cache)));
        }
        if started.elapsed() > timeout {
            return Err(format!("not settled after {timeout:?}: unsettled shards {:?}", state.unsettled()));
        }
        if said.elapsed() >= PROGRESS_INTERVAL {
            println!("  waiting: table version {}, unsettled shards {}", state.version, state.unsettled().len());
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One window: `clients` clients doing `phase` for `warmup`, then measured for `duration`.
pub async fn window(options: &Options, phase: Phase, cache: &SharedCache, seed: u64) -> Summary {
    let window = Arc::new(Window::default());
    let tasks: Vec<_> = (0..options.clients)
        .map(|client| {
            let (cache, window) = (Arc::clone(cache), Arc::clone(&window));
            tokio::spawn(load::client(seed.wrapping_mul(1000).wrapping_add(client), phase, options.keys, cache, window))
        })
        .collect();
    progress(&window, options.warmup, "warm-up").await;
    window.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    progress(&window, options.duration, "measuring").await;
    window.measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let load = load_average();
    window.stop.store(true, Ordering::Relaxed);
    let (mut latencies, mut errors, mut redirects) = (Vec::new(), 0, 0);
    for task in tasks {
        if let Ok(counted) = task.await {
            latencies.extend(counted.latencies);
            errors += counted.errors;
            redirects += counted.redirects;
        }
    }
    Summary::of(latencies, elapsed, errors, redirects, load)
}

/// Sleeps `span`, printing the operations completed every [`PROGRESS_INTERVAL`].
async fn progress(window: &Window, span: Duration, what: &str) {
    let end = Instant::now() + span;
    while Instant::now() < end {
        tokio::time::sleep(PROGRESS_INTERVAL.min(end.saturating_duration_since(Instant::now()))).await;
        println!("    {what}: {} operations so far", window.completed.load(Ordering::Relaxed));
    }
}

/// A result line.
pub fn line(summary: &Summary) -> String {
    format!(
        "{:>9.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {:>4}  redirects {:>4}  load {:.2}",
        summary.ops_per_second, summary.p50_ms, summary.p99_ms, summary.errors, summary.redirects, summary.load
    )
}

/// Runs every pass; prints each window and, at the end, the medians.
pub async fn run(options: Options) -> Result<(), String> {
    let mut results: BTreeMap<u32, (Vec<Summary>, Vec<Summary>)> = BTreeMap::new();
    for pass in 1..=options.runs {
        for &shards in &options.shards {
            println!("pass {pass}/{}: {shards} shards, {NODES} nodes x {REPLICAS} replicas: starting", options.runs);
            let dir = options.dir.join(format!("throughput-s{shards}-p{pass}"));
            let _ = std::fs::remove_dir_all(&dir); // Left by an earlier run, or absent.
            let mut cluster = Cluster::start(&options.binary, &dir, NODES, shards, REPLICAS)?;
            let cache = settle(&mut cluster, NODES as usize, options.settle_timeout).await?;
            let seed = u64::from(pass) * 1_000_000 + u64::from(shards);
            let put = window(&options, Phase::Put(options.value_bytes), &cache, seed).await;
            println!("  {shards:>3} shards PUT {}", line(&put));
            let get = window(&options, Phase::Get, &cache, seed + 1).await;
            println!("  {shards:>3} shards GET {}", line(&get));
            if let Some(id) = cluster.exited() {
                return Err(format!("node {id} exited during the pass (logs in {})", dir.display()));
            }
            cluster.stop();
            let _ = std::fs::remove_dir_all(&dir); // Disk is shared: nothing is kept.
            let entry = results.entry(shards).or_default();
            entry.0.push(put);
            entry.1.push(get);
        }
    }
    println!(
        "medians over {} passes ({} clients, {} B values, {} keys, {:?} windows after {:?} warm-up):",
        options.runs, options.clients, options.value_bytes, options.keys, options.duration, options.warmup
    );
    println!("| shards | op | ops/s | p50 ms | p99 ms | errors | redirects | load avg |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for (shards, (puts, gets)) in &results {
        for (op, runs) in [("PUT", puts), ("GET", gets)] {
            let median = Summary::median_of(runs);
            println!(
                "| {shards} | {op} | {:.0} | {:.2} | {:.2} | {} | {} | {:.2} |",
                median.ops_per_second, median.p50_ms, median.p99_ms, median.errors, median.redirects, median.load
            );
        }
    }
    Ok(())
}
