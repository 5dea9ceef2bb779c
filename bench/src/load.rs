//! The closed-loop load: `clients` tokio tasks, each proposing one command and waiting for its
//! outcome (applied on the leader) before proposing the next. Every latency of the measuring
//! window is recorded; a progress line goes to stderr every few seconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use raft_core::NodeId;
use raft_net::{NodeHandle, ProposeError};
use raft_testkit::{Redirect, redirect};
use tokio::time::{Instant, MissedTickBehavior, interval, sleep, sleep_until};

use crate::cluster::{BenchResult, Counter};

/// How much load, for how long.
#[derive(Clone, Debug)]
pub struct LoadPlan {
    /// Concurrent clients (each with one proposal in flight).
    pub clients: usize,
    /// The measuring window ends after this many operations...
    pub ops: u64,
    /// ... or after this long, whichever comes first.
    pub duration: Duration,
    /// Load before the measuring window (not counted).
    pub warmup: Duration,
    /// Bytes of each command.
    pub payload: usize,
    /// A progress line every this long (zero: none).
    pub progress: Duration,
    /// Names the run in progress lines.
    pub label: String,
}

/// What a run measured.
#[derive(Debug)]
pub struct LoadResult {
    /// Operations completed in the window.
    pub ops: u64,
    /// The window's length.
    pub elapsed: Duration,
    /// Latency of every operation completed in the window, in nanoseconds.
    pub latency: Histogram<u64>,
    /// Proposals refused or lost (not leader, too busy, leadership lost) and retried.
    pub retries: u64,
    /// CPU time (user and system) this process used in the window, all threads together.
    pub cpu: Duration,
    /// CPU time every other process on the machine used in the window (other jobs compete for
    /// the CPUs: a busy machine shows here).
    pub others_cpu: Duration,
    /// What the run's probe counted in the window (zeros without a probe).
    pub probed: Counts,
}

impl LoadResult {
    /// Operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// CPU time per operation, in microseconds: the cost of an operation whatever else runs on
    /// the machine.
    pub fn cpu_us_per_op(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }

    /// The CPUs other processes kept busy in the window, on average.
    pub fn others_cpus(&self) -> f64 {
        self.others_cpu.as_secs_f64() / self.elapsed.as_secs_f64()
    }

    /// The latency at `quantile`, in microseconds.
    pub fn latency_us(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;
/// The pause before retrying a proposal that had no leader to go to.
const RETRY_PAUSE: Duration = Duration::from_millis(5);
/// Latencies each client preallocates room for, at most.
const RESERVE_MAX: u64 = 1 << 16;
/// The histogram's range: 1 ns to 1 hour, 3 significant digits.
const LATENCY_MAX_NS: u64 = 3_600 * 1_000_000_000;
/// How often the controller adds up the clients' counts to see whether `ops` is reached.
const COUNT_INTERVAL: Duration = Duration::from_millis(10);

/// State shared by the clients and the controller.
struct Shared {
    phase: AtomicU8,
    /// Operations each client completed in the window, each on its own cache line: one counter
    /// for all clients was a line bouncing between the CPUs on every operation, a cost of the
    /// harness charged to the system under test.
    completed: Box<[Count]>,
    retries: AtomicU64,
}

/// One client's count, alone on its cache line(s).
#[repr(align(128))]
struct Count(AtomicU64);

impl Shared {
    fn completed(&self) -> u64 {
        self.completed.iter().map(|count| count.0.load(Ordering::Relaxed)).sum()
    }
}

/// One group under load: its handles (one per node, node `ids[i]` at position `i`) and the
/// position of its leader.
pub struct Target {
    /// The group's handles.
    pub nodes: Arc<[NodeHandle<Counter>]>,
    /// Where its leader is.
    pub leader: usize,
}

/// Runs `plan` against `nodes` (with ids `ids`), whose leader is at position `leader`.
pub async fn run(
    nodes: &[NodeHandle<Counter>],
    ids: &[NodeId],
    leader: usize,
    plan: &LoadPlan,
) -> BenchResult<LoadResult> {
    run_groups(&[Target { nodes: nodes.into(), leader }], ids, plan, None).await
}

/// Counters of the nodes, read at both ends of the measuring window (see [`Probe`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Syncs of the nodes' logs.
    pub syncs: u64,
    /// Group steps of the nodes' hosts (one per group per round).
    pub group_steps: u64,
    /// Messages the nodes' transports wrote.
    pub messages: u64,
}

impl Counts {
    /// What was counted from `start` to `self`.
    fn since(self, start: Counts) -> Counts {
        Counts {
            syncs: self.syncs.saturating_sub(start.syncs),
            group_steps: self.group_steps.saturating_sub(start.group_steps),
            messages: self.messages.saturating_sub(start.messages),
        }
    }

    /// Each count per operation, for `ops` operations.
    pub fn per_op(self, ops: u64) -> (f64, f64, f64) {
        let ops = ops.max(1) as f64;
        (self.syncs as f64 / ops, self.group_steps as f64 / ops, self.messages as f64 / ops)
    }
}

/// Reads the nodes' counters (the logs' syncs, the hosts' group steps, the messages sent).
pub type Probe = Arc<dyn Fn() -> Counts + Send + Sync>;

/// Runs `plan` against `groups`, client `i` proposing to group `i % groups.len()`. `probe`, if
/// any, is read when the window opens and when it closes: [`LoadResult::probed`] is the
/// difference. The probe is dropped before this returns.
pub async fn run_groups(
    groups: &[Target],
    ids: &[NodeId],
    plan: &LoadPlan,
    probe: Option<Probe>,
) -> BenchResult<LoadResult> {
    let shared = Arc::new(Shared {
        phase: AtomicU8::new(WARMUP),
        completed: (0..plan.clients).map(|_| Count(AtomicU64::new(0))).collect(),
        retries: AtomicU64::new(0),
    });
    let ids: Arc<[NodeId]> = ids.into();
    let reserve = (plan.ops / plan.clients as u64 + 1).min(RESERVE_MAX) as usize;
    let mut clients = Vec::with_capacity(plan.clients);
    for number in 0..plan.clients {
        // Each client its own buffer, as each request of an application would be: one buffer
        // shared by every client would make its reference count a contended cache line.
        let payload = Bytes::from(vec![0x5a; plan.payload]);
        let group = &groups[number % groups.len()];
        let (nodes, leader) = (Arc::clone(&group.nodes), group.leader);
        let client = client(nodes, Arc::clone(&ids), leader, payload, Arc::clone(&shared), number, reserve);
        clients.push(tokio::spawn(client));
    }
    let (start, end, ops, (cpu, others_cpu), probed) = control(&shared, plan, probe).await;
    let mut latency = Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3)?;
    for client in clients {
        for nanos in client.await?? {
            latency.saturating_record(nanos);
        }
    }
    let retries = shared.retries.load(Ordering::Acquire);
    Ok(LoadResult { ops, elapsed: end - start, latency, retries, cpu, others_cpu, probed })
}

/// Warms up, opens the window, prints progress, and closes the window after `plan.ops`
/// operations (overshooting by at most `COUNT_INTERVAL`'s operations, which are counted and
/// timed) or `plan.duration`. Returns the window, the operations completed in it and the CPU
/// time used in it, by this process and by all others.
async fn control(
    shared: &Shared,
    plan: &LoadPlan,
    probe: Option<Probe>,
) -> (Instant, Instant, u64, (Duration, Duration), Counts) {
    sleep(plan.warmup).await;
    let read_probe = || probe.as_ref().map_or(Counts::default(), |probe| probe());
    let probe_start = read_probe();
    let (cpu_start, system_start) = (process_cpu(), system_cpu());
    let start = Instant::now();
    shared.phase.store(MEASURE, Ordering::Release);
    let deadline = start + plan.duration;
    let mut progress = interval(if plan.progress.is_zero() { Duration::from_secs(3600) } else { plan.progress });
    progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
    progress.tick().await; // The first tick is immediate.
    let mut count = interval(COUNT_INTERVAL);
    count.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut last = (start, 0);
    let (end, ops) = loop {
        tokio::select! {
            _ = count.tick() => {
                let completed = shared.completed();
                if completed >= plan.ops {
                    break (Instant::now(), completed);
                }
            }
            () = sleep_until(deadline) => break (Instant::now(), shared.completed()),
            _ = progress.tick() => {
                let now = Instant::now();
                let completed = shared.completed();
                let recent = (completed - last.1) as f64 / (now - last.0).as_secs_f64();
                eprintln!(
                    "  [{}] {:.1} s: {completed} ops, {:.0} ops/s over the last {:.1} s",
                    plan.label,
                    (now - start).as_secs_f64(),
                    recent,
                    (now - last.0).as_secs_f64()
                );
                last = (now, completed);
            }
        }
    };
    shared.phase.store(STOP, Ordering::Release);
    let cpu = process_cpu().saturating_sub(cpu_start);
    let others = system_cpu().saturating_sub(system_start).saturating_sub(cpu);
    let probed = read_probe().since(probe_start);
    (start, end, ops, (cpu, others), probed)
}

/// The CPU time (user and system, every thread) this process has used: fields 14 and 15 of
/// `/proc/self/stat`, in clock ticks of 10 ms (the kernel's `USER_HZ` on Linux). Zero where
/// that file does not exist.
pub fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: u64 = fields.get(11..13).map_or(0, |times| times.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
    Duration::from_millis(ticks * 10)
}

/// The CPU time the whole machine has been busy (user, nice, system, irq, softirq and steal
/// time of every CPU): the first line of `/proc/stat`, in clock ticks of 10 ms. Zero where that
/// file does not exist.
fn system_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|field| field.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| fields.get(i)).sum();
    Duration::from_millis(busy * 10)
}

/// One closed-loop client: proposes, waits, records, again, following the leader.
async fn client(
    nodes: Arc<[NodeHandle<Counter>]>,
    ids: Arc<[NodeId]>,
    mut target: usize,
    payload: Bytes,
    shared: Arc<Shared>,
    number: usize,
    reserve: usize,
) -> BenchResult<Vec<u64>> {
    let mut latencies = Vec::with_capacity(reserve);
    while shared.phase.load(Ordering::Acquire) != STOP {
        let start = Instant::now();
        match nodes[target].propose(payload.clone()).await {
            Ok(()) => {
                if shared.phase.load(Ordering::Acquire) == MEASURE {
                    latencies.push(start.elapsed().as_nanos() as u64);
                    // This client is its count's only writer: no read-modify-write needed.
                    let count = &shared.completed[number].0;
                    count.store(count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                }
            }
            Err(error) => {
                shared.retries.fetch_add(1, Ordering::Relaxed);
                target = retry_target(&ids, target, error).await?;
            }
        }
    }
    Ok(latencies)
}

/// Where to send the next proposal after `error` (the harness's policy: at once to a named
/// leader, after a pause to the next node or the same one); fails on errors that end the run.
async fn retry_target(ids: &[NodeId], target: usize, error: ProposeError) -> BenchResult<usize> {
    match redirect(&error, ids) {
        Redirect::Leader(leader) => Ok(leader),
        Redirect::Next => {
            sleep(RETRY_PAUSE).await;
            Ok((target + 1) % ids.len())
        }
        Redirect::Again => {
            sleep(RETRY_PAUSE).await;
            Ok(target)
        }
        Redirect::GiveUp => Err(format!("proposal failed: {error}").into()),
    }
}
