//! The nemesis suite: real `raft-kv serve` processes on 127.0.0.1, clients recording a history,
//! and faults on a schedule derived from a seed (`kill -9` and restart, SIGSTOP/SIGCONT,
//! partitions, one-way cuts, flaky and slow links through a proxy between the nodes' Raft ports,
//! leadership transfers, member replacement, and the lease-pause probe). Then it heals
//! everything and checks: per-key linearizability of the history (indeterminate operations
//! included) with `sim::linearizability`, final linearizable reads of every key (no
//! acknowledged write lost), that every member converges to the same values, that a removed
//! node says it was removed, and that no node panicked.
//!
//! With [`Options::shards`] the nodes run `serve --shards S --replicas R`, the sharded service
//! (docs/sharding.md): the clients follow its redirects to each key's shard leader, the faults
//! are the process and link faults (a sharded cluster has no leadership transfer or member
//! replacement endpoint; "the leader" is the meta group's), and the checks add that every shard
//! is back at `R` replicas, each with the table's voters, balanced over the nodes. With
//! [`Options::join_at`] a new node joins mid-run, so that replicas move while faults go on; the
//! schedule aims faults at the source and the target of a move under way; and with
//! [`Options::drain_at`] one of the first nodes is drained mid-run, and must end up empty.
//!
//! Shared by `tests/nemesis.rs` (a bounded run inside `cargo test`) and `examples/nemesis.rs`
//! (long runs from the command line).
#![allow(dead_code)] // Each user takes its own part.

mod check;
mod cluster;
mod faults;
mod http;
mod membership;
mod proxy;
pub mod schedule;
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use cluster::Cluster;
use proxy::Proxy;
pub use schedule::Scenario;
use workload::{Ended, History};

/// How many clients run at once.
pub const CLIENTS: u64 = 6;
/// How often a long run prints a progress line.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// How long the cluster may take to elect a first leader, or to recover after healing.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How many steps of the schedule are derived (a run uses those its duration allows).
pub const SCHEDULE_STEPS_MAX: usize = 10_000;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The seed of the fault schedule and of the clients' choices.
    pub seed: u64,
    /// How long faults are injected (setup and the final checks come on top).
    pub duration: Duration,
    /// How many nodes (3 or 5).
    pub nodes: u64,
    /// Which faults.
    pub scenario: Scenario,
    /// The `raft-kv` binary.
    pub binary: PathBuf,
    /// Where data and logs go (kept when a run finds an anomaly).
    pub dir: PathBuf,
    /// Print progress lines and each fault as it starts.
    pub verbose: bool,
    /// A sharded cluster (`serve --shards S --replicas R`): `(S, R)`. `None`: one Raft group.
    pub shards: Option<(u32, u8)>,
    /// When, after the faults begin, a new node joins the running cluster (`serve --join`) while
    /// the faults go on: in a sharded cluster the controller moves replicas to it under them.
    pub join_at: Option<Duration>,
    /// When, after the faults begin, one of the first nodes is drained (`POST /cluster/drain`)
    /// while the faults go on: in a sharded cluster the controller moves every replica off it
    /// under them, and the final checks want it to hold none, the table to have forgotten it,
    /// and every shard back at its replication factor on the other nodes. Wants a node to take
    /// its replicas (`join_at`, or more nodes than replicas).
    pub drain_at: Option<Duration>,
}

/// One fault as it happened.
#[derive(Clone, Debug)]
pub struct FaultRecord {
    /// Its kind (for the summary).
    pub kind: &'static str,
    /// What it did, with the node ids resolved.
    pub detail: String,
    /// When it started (microseconds on the history's clock).
    pub at: u64,
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Operations by kind and outcome.
    pub operations: BTreeMap<(String, &'static str), u64>,
    /// Faults by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// The longest time from a fault to the next successful write, with the fault.
    pub worst_unavailability: Option<(Duration, String)>,
    /// Everything that went wrong. Empty: the run passed.
    pub anomalies: Vec<String>,
    /// The lease-pause probes: how many ran, and how many read a stale value.
    pub lease_probes: (u64, u64),
    /// The history's size and the checker's verdict.
    pub checked: String,
}

impl Report {
    /// The anomalies besides the lease-pause probe's (its stale read, and the violation on the
    /// probe's key that the checker finds in it): what else a run that fails on the known stale
    /// lease read found.
    pub fn other_anomalies(&self) -> Vec<&str> {
        let probe_violation = format!("linearizability violation on key {}:", workload::PROBE_KEY);
        self.anomalies
            .iter()
            .map(String::as_str)
            .filter(|anomaly| !anomaly.starts_with(check::STALE_LEASE_READ) && !anomaly.starts_with(&probe_violation))
            .collect()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(formatter, "seed {}", self.seed)?;
        let mut by_outcome: BTreeMap<&str, u64> = BTreeMap::new();
        for ((_, outcome), count) in &self.operations {
            *by_outcome.entry(outcome).or_default() += count;
        }
        writeln!(formatter, "operations by outcome: {by_outcome:?}")?;
        for ((kind, outcome), count) in &self.operations {
            writeln!(formatter, "  {kind:<18} {outcome:<12} {count}")?;
        }
        writeln!(formatter, "faults by kind: {:?}", self.faults)?;
        match &self.worst_unavailability {
            Some((time, fault)) => writeln!(formatter, "worst unavailability: {} ms after {fault}", time.as_millis())?,
            None => writeln!(formatter, "worst unavailability: none measured")?,
        }
        writeln!(formatter, "lease-pause probes: {} run, {} stale reads", self.lease_probes.0, self.lease_probes.1)?;
        writeln!(formatter, "linearizability: {}", self.checked)?;
        if self.anomalies.is_empty() {
            writeln!(formatter, "anomalies: none")
        } else {
            let others = self.other_anomalies().len();
            writeln!(formatter, "anomalies: {} ({others} besides the lease-pause probe's)", self.anomalies.len())?;
            for anomaly in &self.anomalies {
                writeln!(formatter, "  - {anomaly}")?;
            }
            Ok(())
        }
    }
}

/// What the fault loop and the clients share.
pub struct Run {
    options: Options,
    cluster: Cluster,
    history: History,
    /// The HTTP addresses of the members the clients talk to.
    targets: Arc<Mutex<Vec<std::net::SocketAddr>>>,
    faults: Vec<FaultRecord>,
    anomalies: Vec<String>,
    lease_probes: (u64, u64),
    next_id: u64,
    /// The node drained at [`Options::drain_at`], once the cluster accepted the drain: it stays
    /// a member (faults still hit it, healing restarts it) but clients no longer use it.
    drained: Option<u64>,
}

/// Runs the suite once.
pub async fn run(options: Options) -> Report {
    let mut report = Report { seed: options.seed, ..Report::default() };
    let proxy = Proxy::new(options.seed);
    let cluster = match Cluster::start(&options.binary, &options.dir, options.nodes, options.shards, proxy).await {
        Ok(cluster) => cluster,
        Err(error) => {
            report.anomalies.push(format!("the cluster did not start: {error}"));
            return report;
        }
    };
    let targets = cluster.members.iter().filter_map(|id| cluster.http(*id)).collect();
    let mut run = Run {
        next_id: options.nodes + 1,
        options,
        cluster,
        history: History::new(),
        targets: Arc::new(Mutex::new(targets)),
        faults: Vec::new(),
        anomalies: Vec::new(),
        lease_probes: (0, 0),
        drained: None,
    };
    if run.wait_for_writes().await.is_none() {
        run.anomalies.push("no write succeeded after the start".to_owned());
    } else {
        run.inject_faults().await;
    }
    check::finish(&mut run, &mut report).await;
    run.cluster.stop_all();
    run.cluster.proxy.stop();
    report
}

impl Run {
    /// Waits until a write through any member succeeds (a leader is elected and commits);
    /// returns how long that took.
    async fn wait_for_writes(&mut self) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < RECOVERY_TIMEOUT {
            for id in self.cluster.members.clone() {
                let Some(http) = self.cluster.http(id) else { continue };
                let answer = http::call("PUT", http, "/kv/ready", b"1", Duration::from_secs(1)).await;
                if answer.is_ok_and(|answer| answer.status == 200) {
                    return Some(start.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Runs the clients while the schedule's faults come and go, until the duration is over.
    async fn inject_faults(&mut self) {
        let sharded = self.options.shards.is_some();
        let replace = self.options.scenario == Scenario::Mixed && !sharded;
        // A sharded cluster has no `/cluster/leader` (leadership is spread over the shards by its
        // controller) and no `/cluster/members` (nodes join and drain; the controller moves
        // replicas), and "the leader" the faults resolve is the meta group's, which need not lead
        // the probe key's shard: the lease-pause probe would probe nothing. Its schedule aims
        // faults at moves' sources and targets instead.
        let steps = if sharded {
            schedule::sharded(self.options.seed, SCHEDULE_STEPS_MAX)
        } else {
            schedule::schedule(self.options.seed, self.options.scenario, SCHEDULE_STEPS_MAX, replace)
        };
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (1..=CLIENTS)
            .map(|id| {
                let (history, targets, stop) = (self.history.clone(), Arc::clone(&self.targets), Arc::clone(&stop));
                tokio::spawn(workload::client(id, self.options.seed, history, targets, stop))
            })
            .collect();
        let start = Instant::now();
        let mut progress = Instant::now();
        let mut join_at = self.options.join_at;
        let mut drain_at = self.options.drain_at;
        for (index, step) in steps.iter().enumerate() {
            if start.elapsed() >= self.options.duration {
                break;
            }
            if join_at.is_some_and(|at| start.elapsed() >= at) {
                join_at = None;
                if self.options.verbose {
                    println!("[{:>5.1}s] a new node joins", start.elapsed().as_secs_f64());
                }
                faults::grow(self).await;
            }
            if drain_at.is_some_and(|at| start.elapsed() >= at) {
                drain_at = None;
                if self.options.verbose {
                    println!("[{:>5.1}s] a node is drained", start.elapsed().as_secs_f64());
                }
                faults::drain(self).await;
            }
            if self.options.verbose {
                println!("[{:>5.1}s] step {}: {step}", start.elapsed().as_secs_f64(), index + 1);
            }
            faults::apply(self, step).await;
            if self.options.verbose && progress.elapsed() >= PROGRESS_EVERY {
                progress = Instant::now();
                println!("[{:>5.1}s] {}", start.elapsed().as_secs_f64(), self.progress_line());
            }
        }
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            let _ = client.await; // A client that panicked shows in its missing operations.
        }
    }

    fn progress_line(&self) -> String {
        let records = self.history.records();
        let count = |wanted: fn(&Ended) -> bool| records.iter().filter(|record| wanted(&record.ended)).count();
        let ok = count(|ended| matches!(ended, Ended::Ok { .. }));
        let not_applied = count(|ended| matches!(ended, Ended::NotApplied));
        let unknown = count(|ended| matches!(ended, Ended::Unknown));
        format!(
            "operations: {ok} ok, {not_applied} not applied or failed, {unknown} unknown; faults: {}; anomalies: {}",
            self.faults.len(),
            self.anomalies.len()
        )
    }

    /// Sets the clients' targets to the running members (a drained node left out).
    fn refresh_targets(&self) {
        let serving = self.cluster.members.iter().filter(|id| Some(**id) != self.drained);
        let targets = serving.filter_map(|id| self.cluster.http(*id)).collect();
        *self.targets.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = targets;
    }
}
