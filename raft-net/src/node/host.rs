//! Many Raft groups on one node, driven by a fixed pool of worker threads ([`Host`]).
//!
//! ## Scheduling
//!
//! Each group is a slot: its core (the same [`Core`] that [`start`](crate::start) runs on a
//! thread of its own, with its state machine applied inline), a scheduling state and the time
//! its timers are next due. Anything that gives a group work schedules it: a handle's input or a
//! peer's message (both queues are polled with a waker that schedules the group, so a send into
//! a queue found empty wakes it), its timers coming due (the host's ticker), or a round that
//! left work behind. A scheduled group is on the ready queue once, however often it was woken;
//! one woken while a worker runs it is put back when that worker is done. So a group is stepped
//! by one worker at a time, and its state is never shared. A group with nothing to do is on no
//! queue and costs only its memory.
//!
//! A worker takes up to [`HostConfig::groups_per_batch_max`] ready groups and runs one round
//! over them, in three phases:
//!
//! 1. For each group: the clock first (every whole tick of real time, as the single-group
//!    driver does), the idle timer ticks that fire nothing, its queued inputs and messages, the
//!    timer ticks that are due ([`DriverClock::take_timer_ticks_due`](crate::DriverClock::take_timer_ticks_due)),
//!    and every output taken, with the messages that may leave before the write sent
//!    (raft-core's driving contract, rules 1, 2 and 4). In a round of several groups the
//!    messages of a phase are held back until the phase ends (or the first group boundary
//!    100 us after the hold began, or a step that must wait) and then leave together, queued
//!    peer by peer in one go (with [`TcpTransport`](crate::TcpTransport): one wake of the peer's writer, and
//!    usually one write, rather than a wake for the first message and piecemeal writes).
//! 2. One [`LogStore::write_outputs`] for every output of every group of the batch: with
//!    [`GroupStore`](raft_storage::GroupStore)s of one [`SharedWal`](raft_storage::SharedWal),
//!    one fsync (group commit across groups).
//! 3. For each group, in output order: durability reported, the messages that waited for it
//!    sent, snapshots installed, committed entries applied and proposals answered, confirmed reads
//!    served (rules 5 to 7), then, when its snapshot policy says so, a local snapshot started:
//!    the store begins an owned writer and the state machine moves to a thread of its own to
//!    write into it (the worker goes on; the group keeps stepping but applies nothing until the
//!    state machine is back), and a snapshot whose job ended is saved and the log compacted
//!    (rule 9). Under [`Host::start_task`] the state machine moves to a task of the host's
//!    `LocalSet` instead, which writes the snapshot a tick later (or when the worker must wait).
//!
//! A storage error fails the groups it reached, as [`LogStore::write_outputs`] reports them
//! (fail-stop: their writes are not known to be durable), and the host writes the outputs of
//! the groups after them again: a group whose own store fails stops alone. With a shared
//! write-ahead log an I/O error stops the log, and so every group still to be written; a
//! refused output fails its group only. A panic in one group's round stops that group only
//! ([`StopReason::CorePanicked`], or [`StopReason::StateMachinePanicked`]).
//!
//! ## Time
//!
//! One ticker thread for the node scans the groups every [`HostConfig::tick_interval`] and
//! schedules those whose timers are due ([`raft_core::Raft::ticks_until_due`]). A group's clock
//! is read from the monotonic clock at the start of each of its rounds, so the lease and
//! stickiness rules are judged by real elapsed time, however late a busy pool runs the group.
//!
//! ## Quiet groups and the peer watch
//!
//! A group whose options have `quiesce` on stops its timers when it is idle
//! ([`raft_core::Raft::is_quiet`]): the ticker never wakes it, and it is stepped again only
//! when a message, an input or a report wakes it. Its followers then cannot tell from the group
//! that the leader's node died, so a host runs quiet groups only once it watches its peers
//! ([`Host::watch_peers`]): at each tick the ticker runs the node-level liveness policy
//! ([`raft_core::liveness::PeerLiveness`], the one the fast simulator runs) over what the
//! node's [`PeerLink`] heard (a message or a ping from a peer is a sign of life; a ping carries the
//! peer's incarnation), pings each peer once per ping interval, and hands every peer it finds
//! silent for the timeout, or restarted, to every group's next round
//! ([`raft_core::Raft::peer_down`]; each group decides whether the peer matters to it). So the
//! only periodic traffic between two nodes whose groups are all quiet is one ping each way per
//! ping interval, however many groups they share. Why elections, check-quorum and lease reads
//! stay safe: raft-core's `quiesce` module docs and `docs/multi-raft.md`.
//!
//! ## What differs from a node started with [`start`](crate::start)
//!
//! The state machine runs on the worker that steps its group (as with
//! [`Execution::OneThread`](crate::Execution::OneThread)): keep its steps short, as a long one
//! holds up the other groups of that worker's batch. Its snapshots are the exception: they are
//! written on a thread of their own (see phase 3), and so is restoring one (installed from a
//! leader, or at start) from a store with an owned reader
//! ([`LogStore::open_snapshot_owned`](raft_storage::LogStore::open_snapshot_owned)), while one of
//! the host's snapshot threads is free; otherwise it runs on the worker. `NodeConfig::execution` and
//! `NodeConfig::idle_poll` are ignored. Everything a [`NodeHandle`] offers works the same.

use std::collections::{BTreeMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Wake, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::time::Instant;

use raft_core::liveness::PeerLiveness;
use raft_core::{GroupId, Index, Message, NodeId, Output, Role, Term};
use raft_storage::LogStore;
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::config::NodeConfig;
use super::core::{Core, Flow};
use super::error::{NodeStartError, StopReason, StorageFailure, StorageOperation};
use super::event::{NodeEvent, NodeStatus};
use super::handle::{Assembled, Inner, NodeHandle, assemble};
use super::shared::Shared;
use super::snapshot::SnapshotSlots;
use super::state_machine::StateMachine;
use crate::metrics::HostMetrics;
use crate::transport::{PeerLink, SendHold, Transport};

/// The default number of groups a worker steps in one round (and writes with one sync).
pub const GROUPS_PER_BATCH_MAX_DEFAULT: usize = 64;

/// How a [`Host`] runs its groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostConfig {
    /// Worker threads that step the groups (at least 1).
    pub workers: usize,
    /// The most groups a worker steps in one round, whose outputs it writes together (at
    /// least 1).
    pub groups_per_batch_max: usize,
    /// How often the ticker looks for groups whose timers are due. Use the groups'
    /// `NodeConfig::tick_interval` (a coarser scan delays timers, a finer one costs CPU).
    pub tick_interval: Duration,
    /// A prefix for the threads' names (`<prefix>-worker-<n>`, `<prefix>-ticker`).
    pub thread_name: String,
    /// How long an idle worker polls the ready queue before it sleeps (as
    /// `NodeConfig::idle_poll` for a node started with `start`; zero: sleep at once).
    pub idle_poll: Duration,
}

impl Default for HostConfig {
    /// As many workers as the machine has cores, [`GROUPS_PER_BATCH_MAX_DEFAULT`] groups per
    /// round, the single-group driver's default tick.
    fn default() -> Self {
        HostConfig {
            workers: std::thread::available_parallelism().map_or(2, usize::from),
            groups_per_batch_max: GROUPS_PER_BATCH_MAX_DEFAULT,
            tick_interval: super::config::TICK_INTERVAL_DEFAULT,
            thread_name: "raft-host".to_string(),
            idle_poll: super::config::IDLE_POLL_DEFAULT,
        }
    }
}

impl HostConfig {
    /// The defaults with `workers` worker threads.
    pub fn with_workers(workers: usize) -> Self {
        HostConfig { workers, ..HostConfig::default() }
    }
}

/// Why a [`Host`] or one of its groups did not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HostError {
    /// The host's configuration is unusable.
    #[error("invalid host configuration: {0}")]
    Config(&'static str),
    /// A thread could not be spawned: the operating system's error, whole.
    #[error("spawning a thread failed: {0}")]
    Spawn(#[source] std::io::Error),
    /// A group of this id runs on the host already.
    #[error("group {0} already runs on this host")]
    GroupExists(GroupId),
    /// The host is shutting down and takes no new group.
    #[error("the host is shutting down")]
    ShuttingDown,
    /// The group's node could not be started.
    #[error("starting group {group} failed: {source}")]
    Start {
        /// The group.
        group: GroupId,
        /// Why.
        #[source]
        source: NodeStartError,
    },
}

/// Where one group of a [`Host`] stood at the end of its last round (see [`Host::status`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupSummary {
    /// The group.
    pub group: GroupId,
    /// This node's role in it.
    pub role: Role,
    /// Its term on this node.
    pub term: Term,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// The commit index this node knows of.
    pub commit_index: Index,
    /// The last index of this node's log.
    pub last_index: Index,
    /// The state machine's applied index.
    pub applied: Index,
    /// Proposals taken by the group's handles and not answered yet.
    pub proposals_pending: usize,
    /// The group is quiet here: its timers are stopped until something wakes it
    /// (`raft_core::Options::quiesce`, [`raft_core::Raft::is_quiet`]).
    pub quiet: bool,
}

/// A node-wide view of a [`Host`]: every group, the leaders it holds, its counters.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostStatus {
    /// Every group on the host, in order (a group not yet stepped shows as a follower at term
    /// 0).
    pub groups: Vec<GroupSummary>,
    /// The groups this node leads.
    pub leaders: usize,
    /// The groups quiet on this node (their timers stopped: they cost nothing until woken).
    pub quiet: usize,
    /// Proposals pending in all groups together.
    pub proposals_pending: usize,
    /// Groups waiting for a worker right now.
    pub ready: usize,
    /// The counters.
    pub stats: HostStats,
}

/// Counters of a [`Host`] since it started. Read with [`Host::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostStats {
    /// Rounds run by the workers (each over a batch of groups).
    pub rounds: u64,
    /// Group steps: one per group per round.
    pub group_steps: u64,
    /// Calls of [`LogStore::write_outputs`] (each one sync with a shared write-ahead log).
    pub writes: u64,
    /// Outputs written by those calls.
    pub outputs_written: u64,
    /// Groups scheduled by the ticker because their timers were due.
    pub timer_wakes: u64,
    /// Node-level liveness pings sent ([`Host::watch_peers`]).
    pub pings_sent: u64,
    /// Peers reported down (silent for the timeout, or restarted), each report handed to every
    /// group ([`raft_core::Raft::peer_down`]).
    pub peer_downs: u64,
}

#[derive(Default)]
struct Counters {
    rounds: AtomicU64,
    group_steps: AtomicU64,
    writes: AtomicU64,
    outputs_written: AtomicU64,
    timer_wakes: AtomicU64,
    pings_sent: AtomicU64,
    peer_downs: AtomicU64,
}

fn add(counter: &AtomicU64, count: u64) {
    counter.fetch_add(count, Ordering::Relaxed);
}

/// A node hosting many Raft groups on a fixed pool of worker threads (see the module docs):
/// each group is added with [`Host::add_group`], which returns the same [`NodeHandle`] as
/// [`start`](crate::start), and removed by shutting it down through its handle.
///
/// All groups share the store type `S`; give them [`GroupStore`](raft_storage::GroupStore)s of
/// one [`SharedWal`](raft_storage::SharedWal) so that a round's writes share one fsync, and
/// transports from one node-level transport
/// ([`TcpTransport::register_group`](crate::TcpTransport::register_group)) so that their
/// messages share one connection per peer.
pub struct Host<S: LogStore + Send + 'static> {
    inner: Arc<HostInner<S>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The host's task ([`Host::start_task`]).
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What the workers, the ticker, the wakers and the host share.
struct HostInner<S: LogStore + Send + 'static> {
    config: HostConfig,
    ready: Mutex<Ready<S>>,
    ready_changed: Condvar,
    slots: Mutex<BTreeMap<GroupId, Arc<Slot<S>>>>,
    /// Set once the host shuts down (or is dropped): every group stops at its next round.
    stopping: AtomicBool,
    /// The threads (or task) end once the last group has stopped ([`Host::close_when_empty`]).
    close_when_empty: AtomicBool,
    /// The origin of the groups' due times (tokio's clock: the real monotonic one, or the
    /// simulated one under turmoil).
    started: Instant,
    /// Wakes the host's task when a group is scheduled ([`Host::start_task`]).
    task_wake: tokio::sync::Notify,
    /// The ready queue's length as of its last change, for idle workers to poll without the
    /// lock.
    queued: std::sync::atomic::AtomicUsize,
    counters: Counters,
    /// Node-level liveness, once [`Host::watch_peers`] was called (groups with `quiesce` are
    /// accepted from then on).
    watch: Mutex<Option<Watching>>,
    /// The threads lent to state machines writing or restoring snapshots off the worker: as many
    /// as workers (one for a host run as one task, whose jobs run on tasks).
    snapshot_slots: Arc<SnapshotSlots>,
    /// The node-wide gauges (none for the host of a node started with `start`), and when the
    /// ticker next sets them.
    metrics: Option<HostMetrics>,
    metrics_due: Mutex<Instant>,
}

/// How long a round of several groups holds their messages back before it lets them go at the
/// next group boundary (see [`SendHold`]): long enough to gather the messages of many groups'
/// steps, short next to a round trip between nodes. A round of one group holds nothing (there is
/// nothing to gather its messages with).
const SENDS_HELD_MAX: Duration = Duration::from_micros(100);

/// How often the ticker sets a host's node-wide gauges (`raft_net::metrics`).
const HOST_METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// What the host needs to watch its peer nodes for its quiet groups: see [`Host::watch_peers`].
#[derive(Clone)]
#[non_exhaustive]
pub struct PeerWatch {
    /// The node's link to its peers (from its transport:
    /// [`TcpTransport::peer_link`](crate::TcpTransport::peer_link)).
    pub link: Arc<dyn PeerLink>,
    /// This start of the node: its pings carry it, and a peer that sees it change knows the
    /// node restarted. Must differ between two starts of a node; [`PeerWatch::new`] draws it
    /// from the operating system's source of randomness.
    pub incarnation: u64,
    /// How often each peer is pinged: the groups' heartbeat interval (their
    /// `heartbeat_ticks` times their `tick_interval`) is the natural choice.
    pub ping_interval: Duration,
    /// A peer silent for this long is reported down to every group: the groups' shortest
    /// election timeout is the natural choice (a follower of a dead quiet leader then campaigns
    /// two to three election timeouts after its death: the timeout, a tick to notice, a fresh
    /// election timeout).
    pub timeout: Duration,
}

impl PeerWatch {
    /// A watch over `link` with a fresh random incarnation.
    pub fn new(link: Arc<dyn PeerLink>, ping_interval: Duration, timeout: Duration) -> Self {
        PeerWatch { link, incarnation: super::handle::random_u64(), ping_interval, timeout }
    }

    /// This watch with `incarnation` instead of a random one (a simulator's, drawn from its
    /// seed; it must still differ between two starts of the node).
    pub fn with_incarnation(self, incarnation: u64) -> Self {
        PeerWatch { incarnation, ..self }
    }
}

impl std::fmt::Debug for PeerWatch {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PeerWatch")
            .field("incarnation", &self.incarnation)
            .field("ping_interval", &self.ping_interval)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A host's running watch: the shipped policy ([`PeerLiveness`]) on the host's clock, in the
/// ticker's ticks since the host started.
struct Watching {
    link: Arc<dyn PeerLink>,
    incarnation: u64,
    liveness: PeerLiveness,
}

struct Ready<S: LogStore + Send + 'static> {
    queue: VecDeque<Arc<Slot<S>>>,
    /// The ticker and the workers end once this is set and no group is left.
    closed: bool,
    /// Workers waiting on `ready_changed`: a push notifies one only if there is one (a notify
    /// is a system call, and most pushes find every worker awake).
    sleepers: usize,
    /// Notifies sent to `sleepers` that no sleeper has woken from yet (at most `sleepers`): a
    /// push notifies only a sleeper no notify is on its way to. A woken worker takes the lock
    /// only after a while (tens of microseconds on a virtual machine whose CPU had halted), and
    /// every push in between found it still counted asleep and notified it again (with 64
    /// groups of one client each, about half the futex calls of the benchmark's process).
    notified: usize,
}

impl<S: LogStore + Send + 'static> Ready<S> {
    /// Claims a sleeper to notify, if one is asleep with no notify on its way: the caller then
    /// calls `notify_one` (after unlocking, as it likes).
    fn claim_sleeper(&mut self) -> bool {
        let claimed = self.sleepers > self.notified;
        if claimed {
            self.notified += 1;
        }
        claimed
    }
}

/// A group's scheduling states (see [`HostInner::schedule`]).
const IDLE: u8 = 0;
const SCHEDULED: u8 = 1;
const RUNNING: u8 = 2;
/// Running, and woken meanwhile: scheduled again when the worker is done with it.
const NOTIFIED: u8 = 3;

/// No timer is due.
const NEVER: u64 = u64::MAX;

/// One group on the host.
struct Slot<S: LogStore + Send + 'static> {
    group: GroupId,
    state: AtomicU8,
    /// The group as of the end of its last round.
    summary: Mutex<GroupSummary>,
    /// The handles' proposal permits, and how many there are (in use: pending proposals).
    permits: Arc<tokio::sync::Semaphore>,
    permits_max: usize,
    /// When the group's timers are next due, in nanoseconds since the host started.
    due_nanos: AtomicU64,
    /// Peers reported down by the host's liveness watch, for the group's next round.
    peer_downs: Mutex<Vec<NodeId>>,
    /// The group itself; taken by the worker that runs it, `None` once it stopped.
    body: Mutex<Option<Box<dyn Pooled<S>>>>,
    shared: Arc<Shared>,
    host: Weak<HostInner<S>>,
}

impl<S: LogStore + Send + 'static> Wake for Slot<S> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(host) = self.host.upgrade() {
            host.schedule(self);
        }
    }
}

/// A group as the workers see it: its core, whatever its transport and state machine.
trait Pooled<S: LogStore>: Send {
    /// Phase 1 of a round: clock, peers reported down, inputs, timers, outputs taken (see the
    /// module docs).
    fn prepare(&mut self, stop: bool, peer_downs: Vec<NodeId>, down_now: &[NodeId]) -> Result<Flow, StopReason>;
    /// The group's store and the outputs phase 1 took, if any.
    fn staged(&mut self) -> Option<(&mut S, &mut [Output])>;
    /// Phase 3, after the outputs were written.
    fn complete(&mut self) -> Result<(), StopReason>;
    /// Whether the group has work left that no one will wake it for.
    fn wants_round(&self) -> bool;
    /// When its timers are next due, since the host started.
    fn due(&self, host_started: Instant) -> Option<Duration>;
    /// Where the group stands.
    fn summary(&self) -> GroupSummary;
    /// Stops the group for `reason`: answers what is pending and reports the stop.
    fn stop(self: Box<Self>, reason: StopReason);
    /// The group's `tracing` span (node, group, term), entered around each phase of its round.
    fn span(&mut self) -> tracing::Span;
}

/// The most outputs a group's round keeps room for between rounds (a burst beyond it frees it).
const OUTPUTS_KEPT_MAX: usize = 64;

/// A group's core and the state of its round.
struct PooledCore<S: LogStore, T: Transport, SM: StateMachine> {
    core: Core<S, T, SM>,
    /// The store's snapshot was handed to the state machine (done in the first round).
    restored: bool,
    outputs: Vec<Output>,
    /// For each output: what its write makes durable (see `Core::before_write`).
    written: Vec<Option<(Index, Term)>>,
    statuses: Vec<tokio::sync::oneshot::Sender<NodeStatus>>,
    group: GroupId,
    /// The group's span as of `span_term` (see [`Pooled::span`]).
    span: tracing::Span,
    span_term: Option<Term>,
}

impl<S, T, SM> PooledCore<S, T, SM>
where
    S: LogStore + Send + 'static,
    T: Transport,
    SM: StateMachine,
{
    /// Takes every output the core has, sending what may leave before the write.
    fn take_outputs(&mut self) -> Result<(), StopReason> {
        while let Some(mut output) = self.core.next_output()? {
            let written = self.core.before_write(&mut output)?;
            self.outputs.push(output);
            self.written.push(written);
        }
        Ok(())
    }
}

impl<S, T, SM> Pooled<S> for PooledCore<S, T, SM>
where
    S: LogStore + Send + 'static,
    T: Transport + 'static,
    SM: StateMachine,
{
    fn prepare(&mut self, stop: bool, peer_downs: Vec<NodeId>, down_now: &[NodeId]) -> Result<Flow, StopReason> {
        if let Some(reason) = self.core.shared.stop_reason() {
            return Err(reason);
        }
        if stop {
            return Ok(Flow::Stop);
        }
        if !self.restored {
            self.restored = true;
            self.core.restore_stored_snapshot()?;
        }
        self.core.more_queued = false;
        let due = self.core.raft.ticks_until_due();
        self.core.catch_up_clock();
        let (before, after) = self.core.clock.take_timer_ticks_due(due);
        for _ in 0..before {
            self.core.tick_once();
            self.take_outputs()?;
        }
        // Proposals that waited for the leader's term to become durable: it is now (the last
        // round wrote it).
        for proposal in std::mem::take(&mut self.core.deferred) {
            self.core.propose(proposal);
        }
        let flow = self.core.take_inputs(&mut self.statuses)?;
        self.take_outputs()?;
        for _ in 0..after {
            self.core.tick_once();
            self.take_outputs()?;
        }
        // Peers reported down since the last round, after its inputs and ticks (as the fast
        // simulator reports after an iteration); then, if the group is quiet now, every peer the
        // watch holds down, again: a report that came before the message that quieted the group
        // (a `Quiesce` read off the socket before the report but stepped after it) is not lost.
        for peer in peer_downs {
            self.core.raft.peer_down(peer);
        }
        if self.core.raft.is_quiet() {
            for &peer in down_now {
                self.core.raft.peer_down(peer);
            }
        }
        self.take_outputs()?;
        if self.core.input_closed {
            return Ok(Flow::Stop); // Every handle is gone.
        }
        Ok(flow)
    }

    fn staged(&mut self) -> Option<(&mut S, &mut [Output])> {
        if self.outputs.is_empty() {
            return None;
        }
        Some((self.core.raft.storage_mut(), &mut self.outputs))
    }

    fn complete(&mut self) -> Result<(), StopReason> {
        // Drained, not taken: the vectors keep their room for the next round (taken, they grew
        // again from nothing in every round of every group: a fifth of a busy node's
        // allocations), unless a burst left them large.
        for (output, written) in self.outputs.drain(..).zip(self.written.drain(..)) {
            self.core.after_write(output, written)?;
        }
        if self.outputs.capacity() > OUTPUTS_KEPT_MAX {
            self.outputs = Vec::new();
            self.written = Vec::new();
        }
        self.core.save_offered_snapshot()?;
        self.core.flush_registrations()?;
        self.core.flush_stale_reads()?;
        self.core.after_outputs();
        self.core.sample_lags();
        if !self.statuses.is_empty() {
            let status = self.core.status();
            for sender in std::mem::take(&mut self.statuses) {
                let _ = sender.send(status.clone()); // The requester may have stopped waiting.
            }
        }
        Ok(())
    }

    fn wants_round(&self) -> bool {
        self.core.more_queued || self.core.read_asked || !self.core.deferred.is_empty() || self.core.raft.has_output()
    }

    fn due(&self, host_started: Instant) -> Option<Duration> {
        let due = self.core.raft.ticks_until_due();
        let ticks = self.core.clock.clock_ticks().checked_add(due)?;
        let nanos = self.core.tick_interval.as_nanos().checked_mul(u128::from(ticks))?;
        let after_start = Duration::from_nanos(u64::try_from(nanos).ok()?);
        let instant = self.core.started.checked_add(after_start)?;
        Some(instant.saturating_duration_since(host_started))
    }

    fn summary(&self) -> GroupSummary {
        let raft = &self.core.raft;
        GroupSummary {
            group: GroupId::DEFAULT, // Set by the slot.
            role: raft.role(),
            term: raft.term(),
            leader: raft.leader(),
            commit_index: raft.commit_index(),
            last_index: raft.last_index(),
            applied: self.core.shared.applied(),
            proposals_pending: 0, // Set by the slot.
            quiet: raft.is_quiet(),
        }
    }

    /// Made again only when the term changed: a round enters a clone of it (a reference count,
    /// or nothing at all with no subscriber), so the hot path formats and allocates nothing.
    /// The term is the one the round began in; events of a term change carry the new one.
    ///
    /// The span is at level ERROR on purpose: it is context, not a message, and any filter that
    /// lets an event of the group through (down to `RUST_LOG=error`) then shows which node and
    /// group it came from. A span at INFO would vanish under `RUST_LOG=warn`, and with it the
    /// node and group of every warning.
    fn span(&mut self) -> tracing::Span {
        let term = self.core.raft.term();
        if self.span_term != Some(term) {
            self.span_term = Some(term);
            let (node, group) = (self.core.raft.id(), self.group);
            self.span = tracing::error_span!("group", %node, %group, %term);
        }
        self.span.clone()
    }

    fn stop(self: Box<Self>, reason: StopReason) {
        let PooledCore { mut core, statuses, .. } = *self;
        drop(statuses); // Their requesters read the stop reason.
        core.wake_before_stop();
        core.stop(reason);
    }
}

/// The outcome of one group's round.
enum Outcome {
    Continue,
    Stop(StopReason),
    /// The round panicked; the group's state is not trusted any more.
    Panicked,
}

impl<S: LogStore + Send + 'static> HostInner<S> {
    fn lock_ready(&self) -> MutexGuard<'_, Ready<S>> {
        self.ready.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_slots(&self) -> MutexGuard<'_, BTreeMap<GroupId, Arc<Slot<S>>>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts `slot` on the ready queue unless it is there already; if a worker runs it, that
    /// worker puts it back when done.
    fn schedule(&self, slot: &Arc<Slot<S>>) {
        let mut state = slot.state.load(Ordering::Acquire);
        loop {
            let next = match state {
                IDLE => SCHEDULED,
                RUNNING => NOTIFIED,
                _ => return, // Scheduled already, or to be.
            };
            match slot.state.compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) if next == SCHEDULED => return self.push(slot),
                Ok(_) => return,
                Err(actual) => state = actual,
            }
        }
    }

    fn push(&self, slot: &Arc<Slot<S>>) {
        let mut ready = self.lock_ready();
        ready.queue.push_back(Arc::clone(slot));
        self.queued.store(ready.queue.len(), Ordering::Release);
        let notify = ready.claim_sleeper();
        drop(ready);
        if notify {
            self.ready_changed.notify_one();
        }
        if self.config.workers == 0 {
            self.task_wake.notify_one();
        }
    }

    /// The ready groups, at most a batch of them, without waiting; `None` when there are none.
    fn try_batch(&self) -> Option<Vec<Arc<Slot<S>>>> {
        let mut ready = self.lock_ready();
        if ready.queue.is_empty() {
            return None;
        }
        let count = ready.queue.len().min(self.config.groups_per_batch_max);
        let batch = ready.queue.drain(..count).collect();
        self.queued.store(ready.queue.len(), Ordering::Release);
        Some(batch)
    }

    /// The next batch of ready groups, waiting for one; `None` once the host is closed.
    ///
    /// An idle worker first polls the queue for `idle_poll`, yielding the CPU between polls, and
    /// only then sleeps: most work arrives within microseconds of the last (a peer's answer),
    /// and a sleep and a wake-up cost more than that (see `NodeConfig::idle_poll`).
    fn next_batch(&self) -> Option<Vec<Arc<Slot<S>>>> {
        let deadline = std::time::Instant::now() + self.config.idle_poll;
        loop {
            if self.queued.load(Ordering::Acquire) > 0 || std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::yield_now();
        }
        let mut ready = self.lock_ready();
        loop {
            if !ready.queue.is_empty() {
                let count = ready.queue.len().min(self.config.groups_per_batch_max);
                let batch: Vec<_> = ready.queue.drain(..count).collect();
                self.queued.store(ready.queue.len(), Ordering::Release);
                if !ready.queue.is_empty() && ready.claim_sleeper() {
                    self.ready_changed.notify_one(); // Another worker may take the rest.
                }
                return Some(batch);
            }
            if ready.closed {
                return None;
            }
            ready.sleepers += 1;
            ready = self.ready_changed.wait(ready).unwrap_or_else(PoisonError::into_inner);
            ready.sleepers -= 1;
            // Woken by a notify, or spuriously: either way one fewer sleeper waits for one (a
            // notify still on its way then wakes another sleeper, or no one: never too few).
            ready.notified = ready.notified.saturating_sub(1).min(ready.sleepers);
        }
    }

    /// One worker: rounds over batches of ready groups until the host closes.
    fn work(self: &Arc<Self>) {
        while let Some(batch) = self.next_batch() {
            self.round(batch);
        }
    }

    /// One round over `batch` (see the module docs).
    fn round(self: &Arc<Self>, batch: Vec<Arc<Slot<S>>>) {
        add(&self.counters.rounds, 1);
        let stopping = self.stopping.load(Ordering::Acquire);
        let mut running = Vec::with_capacity(batch.len());
        for slot in batch {
            slot.state.store(RUNNING, Ordering::Release);
            let body = slot.body.lock().unwrap_or_else(PoisonError::into_inner).take();
            match body {
                Some(body) => running.push((slot, body, Outcome::Continue)),
                None => self.release(&slot, false), // Stopped meanwhile.
            }
        }
        add(&self.counters.group_steps, running.len() as u64);
        // The peers the watch holds down now (see `PooledCore::prepare`).
        let down_now = self
            .watch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|watching| watching.liveness.down_peers())
            .unwrap_or_default();
        // Phase 1. The messages that may leave before the write leave together at its end, a
        // batch per peer for the round's groups (see `SendHold`).
        let mut hold = (running.len() > 1).then(SendHold::begin);
        for (slot, body, outcome) in &mut running {
            let span = body.span();
            let _entered = span.enter();
            let peer_downs = std::mem::take(&mut *slot.peer_downs.lock().unwrap_or_else(PoisonError::into_inner));
            *outcome = guarded(slot, || match body.prepare(stopping, peer_downs, &down_now) {
                Ok(Flow::Continue) => Outcome::Continue,
                Ok(Flow::Stop) => Outcome::Stop(StopReason::Shutdown),
                Err(reason) => Outcome::Stop(reason),
            });
            if let Some(hold) = &mut hold {
                hold.release_if_held_for(SENDS_HELD_MAX);
            }
        }
        drop(hold);
        // Phase 2: one write for the whole batch.
        let mut batch: Vec<(&mut S, &mut [Output])> = Vec::new();
        let mut in_write = Vec::new();
        for (index, (_, body, outcome)) in running.iter_mut().enumerate() {
            // A group that failed writes nothing more; one shutting down writes its last round.
            if !matches!(outcome, Outcome::Continue | Outcome::Stop(StopReason::Shutdown)) {
                continue;
            }
            if let Some(part) = body.staged() {
                batch.push(part);
                in_write.push(index);
            }
        }
        // A failure stops the groups it reached; the stores the write did not reach are
        // written again, so that one group's failing store stops that group only.
        let mut from = 0;
        // (position in the write, how its group ends), applied once the batch's borrows end.
        let mut failures: Vec<(usize, Outcome)> = Vec::new();
        while from < batch.len() {
            let part = &mut batch[from..];
            add(&self.counters.writes, 1);
            add(&self.counters.outputs_written, part.iter().map(|(_, outputs)| outputs.len() as u64).sum());
            // A store that panics must not take the worker, and with it every group of the
            // batch, down silently: its groups stop as panicked, the worker goes on.
            let written = std::panic::catch_unwind(AssertUnwindSafe(|| S::write_outputs(part)));
            let failed = match written {
                Ok(Ok(())) => break,
                Ok(Err(error)) => {
                    let (durable, count) = (error.durable.min(part.len()), error.failed.max(1));
                    let failure = StorageFailure::new(StorageOperation::Write, error.error);
                    let failed = from + durable..(from + durable + count).min(batch.len());
                    warn!(groups = failed.len(), error = %failure, "a write failed: its groups stop");
                    for position in failed.clone() {
                        failures.push((position, Outcome::Stop(StopReason::StorageFailed(failure.clone()))));
                    }
                    failed
                }
                Err(_) => {
                    warn!(groups = batch.len() - from, "the store panicked writing a batch: its groups stop");
                    failures.extend((from..batch.len()).map(|position| (position, Outcome::Panicked)));
                    break;
                }
            };
            from = failed.end;
        }
        drop(batch);
        for (position, outcome) in failures {
            let (slot, _, current) = &mut running[in_write[position]];
            if matches!(outcome, Outcome::Panicked) {
                slot.shared.set_stop_reason(StopReason::CorePanicked);
            }
            *current = outcome;
        }
        // Phase 3, its messages leaving together at its end (before any group of the round is
        // released, so a group's next round sends after them), or sooner when the groups' state
        // machines, applied here, take long.
        let mut hold = (running.len() > 1).then(SendHold::begin);
        for (slot, body, outcome) in &mut running {
            // A shutdown still completes the round that asked for it (its output was written).
            if let Outcome::Continue | Outcome::Stop(StopReason::Shutdown) = outcome {
                let span = body.span();
                let _entered = span.enter();
                let completed = guarded(slot, || match body.complete() {
                    Ok(()) => Outcome::Continue,
                    Err(reason) => Outcome::Stop(reason),
                });
                if !matches!(completed, Outcome::Continue) {
                    *outcome = completed;
                }
                if let Some(hold) = &mut hold {
                    hold.release_if_held_for(SENDS_HELD_MAX);
                }
            }
        }
        drop(hold);
        for (slot, body, outcome) in running {
            match outcome {
                Outcome::Continue => {
                    let due =
                        body.due(self.started).map_or(NEVER, |due| u64::try_from(due.as_nanos()).unwrap_or(NEVER));
                    slot.due_nanos.store(due, Ordering::Release);
                    *slot.summary.lock().unwrap_or_else(PoisonError::into_inner) =
                        GroupSummary { group: slot.group, ..body.summary() };
                    let again = body.wants_round();
                    *slot.body.lock().unwrap_or_else(PoisonError::into_inner) = Some(body);
                    self.release(&slot, again);
                }
                Outcome::Stop(reason) => {
                    let mut body = body;
                    let span = body.span();
                    let _entered = span.enter();
                    if std::panic::catch_unwind(AssertUnwindSafe(|| body.stop(reason))).is_err() {
                        slot.shared.set_stop_reason(StopReason::CorePanicked);
                    }
                    self.retire(&slot);
                }
                Outcome::Panicked => {
                    drop(body);
                    if slot.summary.lock().unwrap_or_else(PoisonError::into_inner).quiet {
                        self.panicked_replica();
                    }
                    let reason = slot.shared.stop_reason().unwrap_or(StopReason::CorePanicked);
                    slot.shared.emit(NodeEvent::Stopped(reason));
                    self.retire(&slot);
                }
            }
        }
    }

    /// A worker is done with `slot`: it goes back on the ready queue if it was woken meanwhile or
    /// has work left, and rests otherwise.
    fn release(&self, slot: &Arc<Slot<S>>, again: bool) {
        if again {
            slot.state.store(SCHEDULED, Ordering::Release);
            return self.push(slot);
        }
        if slot.state.compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire).is_err() {
            // NOTIFIED: woken while it ran.
            slot.state.store(SCHEDULED, Ordering::Release);
            self.push(slot);
        }
    }

    /// `slot`'s group has stopped: it leaves the host, and its handles learn it is done.
    fn retire(&self, slot: &Arc<Slot<S>>) {
        slot.state.store(RUNNING, Ordering::Release); // Never scheduled again.
        let mut slots = self.lock_slots();
        if slots.get(&slot.group).is_some_and(|current| Arc::ptr_eq(current, slot)) {
            slots.remove(&slot.group);
        }
        let empty = slots.is_empty();
        drop(slots);
        slot.shared.done.cancel();
        if empty && (self.stopping.load(Ordering::Acquire) || self.close_when_empty.load(Ordering::Acquire)) {
            self.close();
        }
    }

    /// Ends the workers and the ticker (once the queue is drained).
    fn close(&self) {
        self.lock_ready().closed = true;
        self.ready_changed.notify_all();
        self.task_wake.notify_one();
        if let Some(metrics) = &self.metrics {
            metrics.set(0, 0, 0, 0); // A closed host runs nothing.
        }
    }

    /// Schedules the groups whose timers are due by now.
    fn wake_due(&self) {
        let now = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(NEVER);
        let slots: Vec<_> = self.lock_slots().values().cloned().collect();
        for slot in slots {
            let due = slot.due_nanos.load(Ordering::Acquire);
            // Only if no worker stored a newer due time meanwhile.
            if due <= now && slot.due_nanos.compare_exchange(due, NEVER, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                add(&self.counters.timer_wakes, 1);
                self.schedule(&slot);
            }
        }
    }

    /// Runs the liveness watch, if any, at a tick of the ticker: takes what the link heard from
    /// each peer, reports the peers found down (silent for the timeout, or restarted) to every
    /// group, and sends the pings due.
    fn run_liveness(&self) {
        let mut watch = self.watch.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(watching) = watch.as_mut() else { return };
        let now = self.ticks_now();
        let signals = watching.link.take_signals();
        let liveness = &mut watching.liveness;
        // The link's peers are the ones watched (a peer added later gets one timeout of grace).
        for known in liveness.peers() {
            if !signals.iter().any(|(peer, _)| *peer == known) {
                liveness.remove_peer(known);
            }
        }
        let mut down = Vec::new();
        for (peer, signal) in signals {
            liveness.add_peer(peer, now);
            if let Some(incarnation) = signal.ping {
                if liveness.ping_received(peer, incarnation, now) {
                    down.push(peer); // It restarted: what its groups did before is gone.
                }
            } else if signal.heard {
                liveness.heard_from(peer, now);
            }
        }
        // A ticker that ran late (the process stopped, or starved) re-arms instead of reporting.
        down.extend(liveness.check(now));
        let pings = liveness.pings_due(now);
        let (link, incarnation) = (Arc::clone(&watching.link), watching.incarnation);
        drop(watch);
        for peer in pings {
            if link.ping(peer, incarnation).is_ok() {
                add(&self.counters.pings_sent, 1);
            }
        }
        if down.is_empty() {
            return;
        }
        add(&self.counters.peer_downs, down.len() as u64);
        let slots: Vec<_> = self.lock_slots().values().cloned().collect();
        for peer in &down {
            debug!(%peer, groups = slots.len(), "peer node reported down to every group");
        }
        for slot in slots {
            slot.peer_downs.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(&down);
            self.schedule(&slot);
        }
    }

    /// A group's replica that was quiet as of its last round panicked: its core cannot be
    /// stepped to wake its quiet followers (`Core::wake_before_stop`), so the node takes a new
    /// incarnation; its peers, seeing it in the next pings, report it restarted to all their
    /// groups, and the followers of its quiet leaders wake (elections the node's other groups
    /// did not need, for a bug that should never happen). A replica awake at its last round
    /// has awake followers, whose own timers notice its silence.
    fn panicked_replica(&self) {
        if let Some(watching) = self.watch.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            watching.incarnation = watching.incarnation.wrapping_add(1);
        }
    }

    /// The host's liveness clock: whole ticks of `tick_interval` since the host started.
    fn ticks_now(&self) -> u64 {
        let ticks = self.started.elapsed().as_nanos() / self.config.tick_interval.as_nanos().max(1);
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    /// The host as one task ([`Host::start_task`]): the ticker and the rounds, in turn.
    async fn run_task(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.config.tick_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while let Some(batch) = self.try_batch() {
                self.round(batch);
                // Let the transport's and the clients' tasks on this thread run between rounds.
                tokio::task::yield_now().await;
                // A host that always has work still ticks: its pings go out and idle groups'
                // timers come due (the ticker branch below is reached only when idle).
                if ticker.poll_tick(&mut std::task::Context::from_waker(std::task::Waker::noop())).is_ready() {
                    self.run_liveness();
                    self.wake_due();
                    self.publish_metrics();
                }
            }
            if self.lock_ready().closed {
                return;
            }
            tokio::select! {
                biased;
                () = self.task_wake.notified() => {}
                _ = ticker.tick() => {
                    self.run_liveness();
                    self.wake_due();
                    self.publish_metrics();
                }
            }
        }
    }

    /// The ticker: schedules the groups whose timers are due, every `tick_interval`.
    fn tick(self: &Arc<Self>) {
        loop {
            std::thread::sleep(self.config.tick_interval);
            if self.lock_ready().closed {
                return;
            }
            self.run_liveness();
            self.wake_due();
            self.publish_metrics();
        }
    }

    /// Every group's summary as of its last round, with its proposals pending now.
    fn summaries(&self) -> Vec<GroupSummary> {
        let slots: Vec<_> = self.lock_slots().values().cloned().collect();
        slots
            .iter()
            .map(|slot| {
                let summary = slot.summary.lock().unwrap_or_else(PoisonError::into_inner).clone();
                let pending = slot.permits_max.saturating_sub(slot.permits.available_permits());
                GroupSummary { group: slot.group, proposals_pending: pending, ..summary }
            })
            .collect()
    }

    /// Sets the node-wide gauges once per [`HOST_METRICS_INTERVAL`] (called at every tick).
    fn publish_metrics(&self) {
        let Some(metrics) = &self.metrics else { return };
        let now = Instant::now();
        {
            // Checked first: the ready queue's lock is the workers', taken here once a second only.
            let mut due = self.metrics_due.lock().unwrap_or_else(PoisonError::into_inner);
            if now < *due {
                return;
            }
            *due = now + HOST_METRICS_INTERVAL;
        }
        if self.lock_ready().closed {
            return; // Zeroed when it closed.
        }
        let groups = self.summaries();
        metrics.set(
            groups.len(),
            groups.iter().filter(|group| group.role == Role::Leader).count(),
            groups.iter().filter(|group| group.quiet).count(),
            groups.iter().map(|group| group.proposals_pending).sum(),
        );
    }
}

/// Runs one phase of a group's round, catching a panic: the group is then stopped as panicked
/// (its core's guard has recorded why) and the worker goes on with the others.
fn guarded<S: LogStore + Send + 'static>(slot: &Slot<S>, phase: impl FnOnce() -> Outcome) -> Outcome {
    match std::panic::catch_unwind(AssertUnwindSafe(phase)) {
        Ok(outcome) => outcome,
        Err(_) => {
            slot.shared.set_stop_reason(StopReason::CorePanicked);
            warn!("a group's round panicked: the group stops");
            Outcome::Panicked
        }
    }
}

impl<S: LogStore + Send + 'static> Host<S> {
    /// Starts the host's worker threads and its ticker. It hosts no group yet.
    pub fn start(config: HostConfig) -> Result<Self, HostError> {
        Host::start_threads(config, true)
    }

    /// [`Host::start`], with the node-wide gauges (`raft_host_*`) or without (the host of a
    /// node started with [`start`](crate::start): its group's own metrics say it all, and
    /// several such hosts in one process would share the gauges' label).
    pub(crate) fn start_threads(config: HostConfig, gauges: bool) -> Result<Self, HostError> {
        if config.workers == 0 {
            return Err(HostError::Config("workers must be at least 1"));
        }
        let host = Host::new(config, gauges)?;
        let config = host.inner.config.clone();
        for worker in 0..config.workers {
            let inner = Arc::clone(&host.inner);
            host.spawn(format!("{}-worker-{worker}", config.thread_name), move || inner.work())?;
        }
        let inner = Arc::clone(&host.inner);
        host.spawn(format!("{}-ticker", config.thread_name), move || inner.tick())?;
        Ok(host)
    }

    /// Starts the host as one task on the current [`tokio::task::LocalSet`] instead of threads
    /// (`config.workers` and `config.idle_poll` are ignored): the ticker and the rounds take turns on that task, so a
    /// single-threaded runtime with a seeded scheduler (the turmoil simulation of the real stack)
    /// replays a run exactly, as [`Execution::Tasks`](crate::Execution::Tasks) does for one
    /// group. Panics outside a `LocalSet`.
    pub fn start_task(config: HostConfig) -> Result<Self, HostError> {
        Host::start_one_task(config, true)
    }

    /// [`Host::start_task`], with the node-wide gauges or without (see [`Host::start_threads`]).
    pub(crate) fn start_one_task(config: HostConfig, gauges: bool) -> Result<Self, HostError> {
        let host = Host::new(HostConfig { workers: 0, ..config }, gauges)?;
        let task = tokio::task::spawn_local(Arc::clone(&host.inner).run_task());
        *host.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        Ok(host)
    }

    /// A host with no thread or task yet.
    fn new(config: HostConfig, gauges: bool) -> Result<Self, HostError> {
        if config.groups_per_batch_max == 0 {
            return Err(HostError::Config("groups_per_batch_max must be at least 1"));
        }
        if config.tick_interval.is_zero() {
            return Err(HostError::Config("tick_interval must not be zero"));
        }
        let inner = Arc::new(HostInner {
            config: config.clone(),
            ready: Mutex::new(Ready { queue: VecDeque::new(), closed: false, sleepers: 0, notified: 0 }),
            ready_changed: Condvar::new(),
            slots: Mutex::new(BTreeMap::new()),
            stopping: AtomicBool::new(false),
            close_when_empty: AtomicBool::new(false),
            started: Instant::now(),
            task_wake: tokio::sync::Notify::new(),
            queued: std::sync::atomic::AtomicUsize::new(0),
            counters: Counters::default(),
            watch: Mutex::new(None),
            metrics: gauges.then(|| HostMetrics::new(&config.thread_name)),
            snapshot_slots: SnapshotSlots::new(config.workers),
            metrics_due: Mutex::new(Instant::now()),
        });
        Ok(Host { inner, threads: Mutex::new(Vec::new()), task: Mutex::new(None) })
    }

    fn spawn(&self, name: String, run: impl FnOnce() + Send + 'static) -> Result<(), HostError> {
        match std::thread::Builder::new().name(name).spawn(run) {
            Ok(thread) => {
                self.threads.lock().unwrap_or_else(PoisonError::into_inner).push(thread);
                Ok(())
            }
            Err(error) => {
                self.inner.close(); // The threads started so far end.
                Err(HostError::Spawn(error))
            }
        }
    }

    /// Adds group `group`: a Raft node as [`start`](crate::start) would run it (same
    /// configuration, store, transport, inbound receiver and state machine, same handle), stepped
    /// by the host's workers. Must be called from within a tokio runtime. The group leaves the
    /// host when it stops (shut it down through its handle, or drop every handle); its data stays
    /// in its store (remove it there, with
    /// [`SharedWal::remove_group`](raft_storage::SharedWal::remove_group), to delete it).
    pub fn add_group<SM, T>(
        &self,
        group: GroupId,
        config: NodeConfig,
        storage: S,
        transport: T,
        inbound: mpsc::Receiver<Message>,
        state_machine: SM,
    ) -> Result<NodeHandle<SM>, HostError>
    where
        SM: StateMachine,
        T: Transport + 'static,
    {
        let inner = self.add_group_inner(group, config, storage, transport, inbound, state_machine, false)?;
        Ok(NodeHandle::from_inner(inner))
    }

    /// [`Host::add_group`], with the state machine on an apply thread of its own if
    /// `apply_thread` (for [`start`](crate::start)'s one-group host), and the handles' shared
    /// state returned as is.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_group_inner<SM, T>(
        &self,
        group: GroupId,
        config: NodeConfig,
        storage: S,
        transport: T,
        inbound: mpsc::Receiver<Message>,
        state_machine: SM,
        apply_thread: bool,
    ) -> Result<Inner<SM>, HostError>
    where
        SM: StateMachine,
        T: Transport + 'static,
    {
        if self.inner.stopping.load(Ordering::Acquire) {
            return Err(HostError::ShuttingDown);
        }
        // Before the store is consumed (checked again below, under the lock).
        if self.inner.lock_slots().contains_key(&group) {
            return Err(HostError::GroupExists(group));
        }
        let Assembled { core, inner, config } = assemble(
            config,
            storage,
            transport,
            inbound,
            state_machine,
            apply_thread,
            self.inner.watch.lock().unwrap_or_else(PoisonError::into_inner).is_some(),
            group,
        )
        .map_err(|source| HostError::Start { group, source })?;
        let shared = Arc::clone(&core.shared);
        let permits_max = config.proposals_pending_max;
        let mut slots = self.inner.lock_slots();
        // Under the lock `begin_shutdown` sets `stopping` under: a host shutting down (whose
        // workers may have ended already) takes no group.
        if self.inner.stopping.load(Ordering::Acquire) {
            return Err(HostError::ShuttingDown);
        }
        if slots.contains_key(&group) {
            return Err(HostError::GroupExists(group));
        }
        let slot = Arc::new(Slot {
            group,
            state: AtomicU8::new(IDLE),
            summary: Mutex::new(GroupSummary {
                group,
                role: Role::Follower,
                term: Term(0),
                leader: None,
                commit_index: Index(0),
                last_index: Index(0),
                applied: Index(0),
                proposals_pending: 0,
                quiet: false,
            }),
            permits: inner.permits(),
            permits_max,
            due_nanos: AtomicU64::new(NEVER),
            peer_downs: Mutex::new(Vec::new()),
            body: Mutex::new(None),
            shared,
            host: Arc::downgrade(&self.inner),
        });
        let mut core = core;
        core.waker = Some(Waker::from(Arc::clone(&slot)));
        // A host run as one task replays exactly: its snapshot jobs run on tasks of its own
        // `LocalSet`, not on threads.
        core.snapshot_jobs_on_tasks = self.inner.config.workers == 0;
        core.snapshot_slots = Some(Arc::clone(&self.inner.snapshot_slots));
        let body: Box<dyn Pooled<S>> = Box::new(PooledCore {
            core,
            restored: false,
            outputs: Vec::new(),
            written: Vec::new(),
            statuses: Vec::new(),
            group,
            span: tracing::Span::none(),
            span_term: None,
        });
        *slot.body.lock().unwrap_or_else(PoisonError::into_inner) = Some(body);
        slots.insert(group, Arc::clone(&slot));
        drop(slots);
        self.inner.schedule(&slot); // Its first round restores the snapshot and starts its timers.
        Ok(inner)
    }

    /// Starts watching the node's peers for the host's quiet groups (node-level liveness,
    /// `raft_core::liveness`): from the next tick on, the ticker pings every peer of
    /// `watch.link` once per `ping_interval` and reports a peer that was silent for `timeout`,
    /// or that restarted (its pings carry a new incarnation), to every group
    /// ([`raft_core::Raft::peer_down`]); each group decides whether the peer matters to it.
    /// Groups whose options have `quiesce` on are accepted by [`Host::add_group`] only once
    /// this was called: without the reports, the followers of a quiet leader that died would
    /// never elect another. Both durations are rounded up to whole ticks of the host's
    /// `tick_interval`; the timeout must then exceed two ping intervals and a tick
    /// ([`HostError::Config`] otherwise). A second call replaces the first (the new watch's
    /// incarnation is what peers see from then on: give it the old one unless the node should
    /// look restarted). One host per link: the link's signals go to whoever takes them.
    ///
    /// Any frame read from a peer counts as a sign of life, so with busy groups the pings
    /// matter little; once the groups are quiet they are the only traffic between two nodes.
    pub fn watch_peers(&self, watch: PeerWatch) -> Result<(), HostError> {
        let ticks = |duration: Duration| {
            let ticks = duration.as_nanos().div_ceil(self.inner.config.tick_interval.as_nanos().max(1));
            u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
        };
        let (interval_ticks, timeout_ticks) = (ticks(watch.ping_interval), ticks(watch.timeout));
        if timeout_ticks < interval_ticks.saturating_mul(2).saturating_add(1) {
            return Err(HostError::Config(
                "the peer watch's timeout must exceed two ping intervals and a tick (in the host's ticks)",
            ));
        }
        let now = self.inner.ticks_now();
        let peers = watch.link.take_signals().into_iter().map(|(peer, _)| peer);
        let liveness = PeerLiveness::new(peers, now, timeout_ticks, interval_ticks);
        let watching = Watching { link: watch.link, incarnation: watch.incarnation, liveness };
        *self.inner.watch.lock().unwrap_or_else(PoisonError::into_inner) = Some(watching);
        Ok(())
    }

    /// Stops the host's threads (or task) as soon as its last group stops: for a host of one
    /// group, whose life is that group's.
    pub(crate) fn close_when_empty(&self) {
        self.inner.close_when_empty.store(true, Ordering::Release);
    }

    /// The groups on the host, in order.
    pub fn groups(&self) -> Vec<GroupId> {
        self.inner.lock_slots().keys().copied().collect()
    }

    /// Every group's summary as of its last round, and the node-wide totals.
    pub fn status(&self) -> HostStatus {
        let groups = self.inner.summaries();
        HostStatus {
            leaders: groups.iter().filter(|group| group.role == Role::Leader).count(),
            quiet: groups.iter().filter(|group| group.quiet).count(),
            proposals_pending: groups.iter().map(|group| group.proposals_pending).sum(),
            ready: self.inner.queued.load(Ordering::Acquire),
            groups,
            stats: self.stats(),
        }
    }

    /// The host's counters since it started.
    pub fn stats(&self) -> HostStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counters = &self.inner.counters;
        HostStats {
            rounds: read(&counters.rounds),
            group_steps: read(&counters.group_steps),
            writes: read(&counters.writes),
            outputs_written: read(&counters.outputs_written),
            timer_wakes: read(&counters.timer_wakes),
            pings_sent: read(&counters.pings_sent),
            peer_downs: read(&counters.peer_downs),
        }
    }

    /// Shuts every group down as [`NodeHandle::shutdown`] does and stops the threads; returns
    /// when all of them are done. Groups added meanwhile are refused.
    pub async fn shutdown(&self) {
        self.begin_shutdown();
        let slots: Vec<_> = self.inner.lock_slots().values().cloned().collect();
        for slot in slots {
            slot.shared.done.cancelled().await;
        }
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(task) = task {
            let _ = task.await; // It ends once the queue is closed and drained.
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        if threads.is_empty() {
            return;
        }
        // The workers end at once now (the ticker within one tick): joining blocks only briefly.
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }

    /// Marks the host stopping and wakes every group so that it stops.
    fn begin_shutdown(&self) {
        // Under the slots' lock, so that a group being added either sees it or is in the map.
        let slots = self.inner.lock_slots();
        self.inner.stopping.store(true, Ordering::Release);
        let slots: Vec<_> = slots.values().cloned().collect();
        if slots.is_empty() {
            self.inner.close();
        }
        for slot in slots {
            // As a handle's shutdown does: refuses new work at once, and calls off a restore
            // under way (the group may be waiting for its state machine).
            slot.shared.stopping.store(true, Ordering::Release);
            self.inner.schedule(&slot);
        }
    }
}

impl<S: LogStore + Send + 'static> Drop for Host<S> {
    /// Stops every group and the threads in the background (use [`Host::shutdown`] to wait).
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

impl<S: LogStore + Send + 'static> std::fmt::Debug for Host<S> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Host").field("config", &self.inner.config).field("groups", &self.groups()).finish()
    }
}
