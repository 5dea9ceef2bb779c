//! What a node is started with: its id, the core's options, the tick, the named queue limits,
//! the snapshot policy and the peer address book. Checked once by [`NodeConfig::validate`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use raft_core::{NodeId, Options};
use thiserror::Error;

/// The default [`NodeConfig::tick_interval`].
pub const TICK_INTERVAL_DEFAULT: Duration = Duration::from_millis(100);
/// The default [`NodeConfig::proposals_pending_max`].
pub const PROPOSALS_PENDING_MAX_DEFAULT: usize = 4096;
/// The default [`NodeConfig::reads_pending_max`].
pub const READS_PENDING_MAX_DEFAULT: usize = 4096;
/// The default [`NodeConfig::input_queue_items_max`].
pub const INPUT_QUEUE_ITEMS_MAX_DEFAULT: usize = 4096;
/// The default [`NodeConfig::input_batch_items_max`].
pub const INPUT_BATCH_ITEMS_MAX_DEFAULT: usize = 1024;
/// The default [`NodeConfig::apply_queue_batches_max`].
pub const APPLY_QUEUE_BATCHES_MAX_DEFAULT: usize = 64;
/// The default [`NodeConfig::event_queue_events_max`].
pub const EVENT_QUEUE_EVENTS_MAX_DEFAULT: usize = 256;
/// The default [`NodeConfig::idle_poll`].
pub const IDLE_POLL_DEFAULT: Duration = Duration::from_micros(20);

/// The most timer ticks, from the one that is due on, a group catches up on in one round. When
/// its worker was held up (a slow fsync, a busy machine, a paused process) for longer than this
/// many ticks past the due one, the rest are dropped from the timers: elections and heartbeats run slower than the clock, which only
/// delays failure detection. Catching up on all of them at once would make a node that was
/// itself stalled call an election before it has read the leader's messages that wait in its
/// queue. The core's clock, which leases are judged by, gets every tick (see `DriverClock`).
pub const TICKS_PER_ITERATION_MAX: u64 = 4;

/// Where a node started with [`start`](crate::node::start) steps its group and runs its state
/// machine (a group added to a shared [`Host`](crate::Host) always applies on the worker).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Execution {
    /// The group on a worker thread of its own (which also does the storage writes), the state
    /// machine on another: storage I/O never blocks the runtime's workers, and applying overlaps
    /// with the next write. For production.
    #[default]
    Threads,
    /// The group on a worker thread of its own that also applies: the steps an apply thread
    /// would take run on the worker right after each group commit, in the same order. One
    /// thread wake-up less per committed batch (the apply thread's), which on a small machine is
    /// a large part of a cheap operation's cost (see BENCHMARKS.md); but replication, heartbeats
    /// and elections wait while the state machine applies, restores, snapshots or runs a read
    /// query. For state machines whose steps are short (an in-memory map).
    OneThread,
    /// The group's host as one task ([`Host::start_task`](crate::Host::start_task)), with the
    /// state machine applied inline in it (the steps an apply thread would take, in the same
    /// order), spawned on the [`tokio::task::LocalSet`] that calls
    /// [`start`](crate::node::start) (which panics outside one). Storage writes and applying
    /// block that thread while they run, so this is for deterministic runs (the turmoil
    /// simulation of the real stack, whose hosts run in a `LocalSet`): every choice comes from
    /// the runtime's seeded scheduler rather than from the operating system's thread scheduler.
    /// Snapshots are taken and restored as jobs on other tasks of that `LocalSet`, each run a
    /// tick after it began (or at once when the group must wait for it), one at a time per
    /// host (its one snapshot slot): a snapshot to take waits for the slot, and a restore that
    /// finds it taken (or a store without an owned reader) runs on the group's task.
    Tasks,
}

/// How a node runs. Build with [`NodeConfig::new`] and adjust the public fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's id (must match the transport's).
    pub id: NodeId,
    /// The core's tunables (timeouts in ticks, message and batch limits, compaction margin).
    pub options: Options,
    /// The wall-clock length of one tick of [`NodeConfig::options`]: election timeouts and
    /// heartbeats are counted in ticks.
    pub tick_interval: Duration,
    /// Proposals accepted by the handle and not yet answered, at most: queued for the core,
    /// waiting for their term to be durable, or appended and waiting to be applied. `propose`
    /// waits for room (back-pressure); `try_propose` fails with
    /// [`ProposeError::TooBusy`](crate::ProposeError::TooBusy). The permits of the
    /// proposals answered in one apply step come back together at the end of that step, so
    /// right after an answer `try_propose` can still find no room for a moment.
    pub proposals_pending_max: usize,
    /// Reads accepted by the handle and not yet answered, at most: queued for the core, waiting
    /// for the core to confirm them, or queued for the apply thread. `read` waits for room
    /// (back-pressure). The core has its own limit, `options.reads_pending_max()`, which on a
    /// leader also counts the reads its followers forward; past it a read is refused with the core's
    /// [`TooManyPending`](raft_core::ReadError::TooManyPending).
    pub reads_pending_max: usize,
    /// Items (proposals, reads, status requests, membership requests, wake-ups) queued for the
    /// core at most. Peer messages do not pass through this queue: the core takes them
    /// from the transport's own bounded receiver.
    pub input_queue_items_max: usize,
    /// Inputs the core takes from its queue, and peer messages it takes from the transport (up
    /// to this many of each), before it persists and sends once (group commit).
    pub input_batch_items_max: usize,
    /// Batches handed from the core to the apply thread and not yet applied, at most;
    /// each holds at most `options.apply_bytes_max()` of entries. The core waits when the
    /// queue is full (back-pressure from a slow state machine). Unused without an apply thread
    /// ([`Execution::OneThread`], [`Execution::Tasks`]).
    pub apply_queue_batches_max: usize,
    /// Events buffered for each [`NodeHandle::events`](crate::NodeHandle::events) receiver; a
    /// receiver that falls further behind loses the oldest (it sees `Lagged`).
    pub event_queue_events_max: usize,
    /// How long the worker of a node started with [`start`](crate::node::start), finding no
    /// group with work, polls again (yielding its CPU between polls) before it sleeps (a shared
    /// [`Host`](crate::Host) has its own `HostConfig::idle_poll`). The apply thread
    /// ([`Execution::Threads`]) does not poll: measured, its polling took the CPU from the
    /// workers at high load (1,024 clients in configuration A: about a third of the throughput). Sleeping and being woken costs the waker a system
    /// call and the sleeper a wake-up, which on a virtual machine can take tens of microseconds
    /// when its virtual CPU had halted; the next input usually comes sooner than that under
    /// load, and often at low load (an acknowledgement, the next proposal). A thread that
    /// yields gives its CPU to any other that can run, so the poll costs CPU only when nothing
    /// else wants it. Zero: sleep at once. Not used under [`Execution::Tasks`], whose host task
    /// never polls (a task that does not await holds its thread).
    pub idle_poll: Duration,
    /// Take a snapshot of the state machine every this many applied entries (0: never).
    pub snapshot_every_entries: u64,
    /// Where each member can be reached, used only to tell clients where the leader is (the
    /// `leader_address` of a refusal naming the leader; see
    /// [`ProposeError::leader_hint`](crate::ProposeError::leader_hint)).
    pub addresses: BTreeMap<NodeId, SocketAddr>,
    /// Where the core loop and the state machine run: a thread each (the default), one thread,
    /// or tasks on the caller's `LocalSet`; see [`Execution`].
    pub execution: Execution,
}

/// Which limit a [`ConfigError::Zero`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigLimit {
    /// [`NodeConfig::tick_interval`].
    TickInterval,
    /// [`NodeConfig::proposals_pending_max`].
    ProposalsPendingMax,
    /// [`NodeConfig::reads_pending_max`].
    ReadsPendingMax,
    /// [`NodeConfig::input_queue_items_max`].
    InputQueueItemsMax,
    /// [`NodeConfig::input_batch_items_max`].
    InputBatchItemsMax,
    /// [`NodeConfig::apply_queue_batches_max`].
    ApplyQueueBatchesMax,
    /// [`NodeConfig::event_queue_events_max`].
    EventQueueEventsMax,
}

/// Why a [`NodeConfig`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The limit must not be zero.
    #[error("{0:?} must not be zero")]
    Zero(ConfigLimit),
    /// `proposals_pending_max` is above what a tokio semaphore can count.
    #[error("proposals_pending_max ({0}) is too large")]
    ProposalsPendingTooLarge(usize),
    /// `reads_pending_max` is above what a tokio semaphore can count.
    #[error("reads_pending_max ({0}) is too large")]
    ReadsPendingTooLarge(usize),
    /// A queue's bound (`input_queue_items_max`, `apply_queue_batches_max`) is above what a
    /// tokio channel can hold (`tokio::sync::Semaphore::MAX_PERMITS`).
    #[error("{0:?} ({1}) is too large for a bounded channel")]
    QueueTooLarge(ConfigLimit, usize),
    /// The core option `quiesce` is on, but nothing tells the group when a peer's node is gone
    /// (`raft_core::Raft::peer_down`): the followers of a quiet leader that died would never
    /// elect another. Quiet groups run on a [`Host`](crate::Host) that watches its peers
    /// ([`Host::watch_peers`](crate::Host::watch_peers)); [`start`](crate::start) runs none.
    #[error("quiesce needs node-level liveness: run the group on a Host that watches its peers")]
    QuiesceWithoutLiveness,
}

impl NodeConfig {
    /// The defaults for node `id` with the core's `options`; no peer addresses, no snapshots.
    pub fn new(id: NodeId, options: Options) -> Self {
        NodeConfig {
            id,
            options,
            tick_interval: TICK_INTERVAL_DEFAULT,
            proposals_pending_max: PROPOSALS_PENDING_MAX_DEFAULT,
            reads_pending_max: READS_PENDING_MAX_DEFAULT,
            input_queue_items_max: INPUT_QUEUE_ITEMS_MAX_DEFAULT,
            input_batch_items_max: INPUT_BATCH_ITEMS_MAX_DEFAULT,
            apply_queue_batches_max: APPLY_QUEUE_BATCHES_MAX_DEFAULT,
            event_queue_events_max: EVENT_QUEUE_EVENTS_MAX_DEFAULT,
            idle_poll: IDLE_POLL_DEFAULT,
            snapshot_every_entries: 0,
            addresses: BTreeMap::new(),
            execution: Execution::Threads,
        }
    }

    /// Checks every limit, for a node that runs no node-level liveness (as [`start`](crate::start)
    /// does not): `quiesce` is refused.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check(false)
    }

    /// Checks every limit; `quiesce` only if `liveness` (the group's host watches its peers).
    pub(crate) fn check(&self, liveness: bool) -> Result<(), ConfigError> {
        if self.tick_interval.is_zero() {
            return Err(ConfigError::Zero(ConfigLimit::TickInterval));
        }
        let limits = [
            (self.proposals_pending_max, ConfigLimit::ProposalsPendingMax),
            (self.reads_pending_max, ConfigLimit::ReadsPendingMax),
            (self.input_queue_items_max, ConfigLimit::InputQueueItemsMax),
            (self.input_batch_items_max, ConfigLimit::InputBatchItemsMax),
            (self.apply_queue_batches_max, ConfigLimit::ApplyQueueBatchesMax),
            (self.event_queue_events_max, ConfigLimit::EventQueueEventsMax),
        ];
        if let Some((_, limit)) = limits.iter().find(|(value, _)| *value == 0) {
            return Err(ConfigError::Zero(*limit));
        }
        if self.proposals_pending_max > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(ConfigError::ProposalsPendingTooLarge(self.proposals_pending_max));
        }
        if self.reads_pending_max > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(ConfigError::ReadsPendingTooLarge(self.reads_pending_max));
        }
        // tokio's bounded channels panic above this.
        let queues = [
            (self.input_queue_items_max, ConfigLimit::InputQueueItemsMax),
            (self.apply_queue_batches_max, ConfigLimit::ApplyQueueBatchesMax),
        ];
        if let Some((value, limit)) = queues.iter().find(|(value, _)| *value > tokio::sync::Semaphore::MAX_PERMITS) {
            return Err(ConfigError::QueueTooLarge(*limit, *value));
        }
        if self.options.quiesce() && !liveness {
            return Err(ConfigError::QuiesceWithoutLiveness);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_zero_limits_are_named() {
        let config = NodeConfig::new(NodeId(1), Options::default());
        assert_eq!(config.validate(), Ok(()));
        let quiet = NodeConfig::new(NodeId(1), Options::builder().quiesce(true).build().expect("valid options"));
        assert_eq!(quiet.validate(), Err(ConfigError::QuiesceWithoutLiveness));
        assert_eq!(quiet.check(true), Ok(()));
        let zero = NodeConfig { apply_queue_batches_max: 0, ..config.clone() };
        assert_eq!(zero.validate(), Err(ConfigError::Zero(ConfigLimit::ApplyQueueBatchesMax)));
        let zero = NodeConfig { reads_pending_max: 0, ..config.clone() };
        assert_eq!(zero.validate(), Err(ConfigError::Zero(ConfigLimit::ReadsPendingMax)));
        let zero = NodeConfig { tick_interval: Duration::ZERO, ..config.clone() };
        assert_eq!(zero.validate(), Err(ConfigError::Zero(ConfigLimit::TickInterval)));
        // "Unbounded" is refused with a reason rather than panicking in `start`.
        let huge = NodeConfig { apply_queue_batches_max: usize::MAX, ..config.clone() };
        assert_eq!(huge.validate(), Err(ConfigError::QueueTooLarge(ConfigLimit::ApplyQueueBatchesMax, usize::MAX)));
        let huge = NodeConfig { input_queue_items_max: usize::MAX, ..config };
        assert_eq!(huge.validate(), Err(ConfigError::QueueTooLarge(ConfigLimit::InputQueueItemsMax, usize::MAX)));
    }
}
