//! Starting a node, and the handle clients use: propose, read, status, events, shutdown.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use std::net::SocketAddr;

use raft_core::{ConfChange, GroupId, Index, Membership, Message, NodeId, Options, Raft, Term};
use raft_storage::LogStore;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, TryAcquireError, broadcast, mpsc, oneshot};

use super::apply::Applier;
use super::clock::DriverClock;
use super::config::{Execution, NodeConfig};
use super::core::{ApplySide, Core};
use super::error::{
    MembershipChangeError, NodeStartError, ProposeError, ReadError, StopReason, TransferLeadershipError,
};
use super::event::{NodeEvent, NodeStatus};
use super::host::{Host, HostConfig};
use super::membership::{MembershipRequest, TransferRequest};
use super::read::{PendingRead, ReadConsistency, ReadRequest};
use super::shared::{CoreInput, PanicGuard, Proposal, Responder, Shared};
use super::state_machine::StateMachine;
use crate::metrics::{CoreMetrics, GroupMetrics, Outcome};
use crate::transport::Transport;

/// A cheaply cloneable handle on a running node. When the last clone is dropped, the node shuts
/// down in the background (use [`NodeHandle::shutdown`] to wait for it).
pub struct NodeHandle<SM: StateMachine> {
    inner: Arc<Inner<SM>>,
}

pub(crate) struct Inner<SM: StateMachine> {
    input: mpsc::Sender<CoreInput<SM>>,
    /// `proposals_pending_max` permits.
    permits: Arc<Semaphore>,
    /// `reads_pending_max` permits.
    read_permits: Arc<Semaphore>,
    shared: Arc<Shared>,
    /// The node's own host, for a node started with [`start`]: dropped with the last handle,
    /// which stops the node. `None` for a group added to a caller's [`Host`](crate::Host).
    pub(crate) host: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl<SM: StateMachine> Clone for NodeHandle<SM> {
    fn clone(&self) -> Self {
        NodeHandle { inner: Arc::clone(&self.inner) }
    }
}

impl<SM: StateMachine> std::fmt::Debug for NodeHandle<SM> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("NodeHandle").field("stop_reason", &self.inner.shared.stop_reason()).finish()
    }
}

/// Starts a node running one Raft group: the one-group case of [`Host`](crate::Host), on a
/// host of its own with one worker, which owns the core and `storage` and takes `inbound`, the
/// transport's receiver, itself. `config.execution` says where the state machine runs: on an
/// apply thread of its own ([`Execution::Threads`]), on the worker ([`Execution::OneThread`]),
/// or, with the worker and the ticker, as one task on the current
/// [`tokio::task::LocalSet`] ([`Execution::Tasks`]; it panics outside one). Must be called
/// from within a tokio runtime. The node stops when the last handle is dropped or
/// [`NodeHandle::shutdown`] is called.
///
/// The state machine is first restored from the store's snapshot, if it holds one.
pub fn start<SM, S, T>(
    config: NodeConfig,
    storage: S,
    transport: T,
    inbound: mpsc::Receiver<Message>,
    state_machine: SM,
) -> Result<NodeHandle<SM>, NodeStartError>
where
    SM: StateMachine,
    S: LogStore + Send + 'static,
    T: Transport + 'static,
{
    config.validate()?;
    Handle::try_current().map_err(|_| NodeStartError::NoRuntime)?;
    let host_config = HostConfig {
        workers: 1,
        groups_per_batch_max: 1,
        tick_interval: config.tick_interval,
        thread_name: format!("raft-core-{}", config.id),
        idle_poll: config.idle_poll,
    };
    let execution = config.execution;
    let host = match execution {
        Execution::Tasks => Host::start_one_task(host_config, false),
        Execution::Threads | Execution::OneThread => Host::start_threads(host_config, false),
    }
    .map_err(NodeStartError::from_host)?;
    host.close_when_empty();
    let apply_thread = execution == Execution::Threads;
    let mut inner = host
        .add_group_inner(GroupId::DEFAULT, config, storage, transport, inbound, state_machine, apply_thread)
        .map_err(NodeStartError::from_host)?;
    inner.host = Some(Box::new(host));
    Ok(NodeHandle { inner: Arc::new(inner) })
}

/// `options` with a seed from the operating system, unless one was chosen: every start of a node
/// draws new election timeouts and new numbers for its forwarded reads, so an answer meant for an
/// earlier incarnation is never taken for this one's (see `Options::rng_seed`).
fn with_fresh_seed(options: Options) -> Options {
    if options.rng_seed_chosen() {
        return options;
    }
    options.with_rng_seed(random_u64())
}

/// A number from the operating system's source of randomness (a core's seed, a host's
/// incarnation).
pub(crate) fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        // No OS source of randomness: std's hasher keys are drawn per process from whatever
        // the platform offers.
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.finish()
    })
}

/// Builds a group's core and the state its handles share, after checking `config`. The state
/// machine runs on an apply thread of its own with `apply_thread`, inline on the worker
/// otherwise.
#[allow(clippy::too_many_arguments)]
pub(crate) fn assemble<SM, S, T>(
    config: NodeConfig,
    storage: S,
    transport: T,
    inbound: mpsc::Receiver<Message>,
    state_machine: SM,
    apply_thread: bool,
    liveness: bool,
    group: GroupId,
) -> Result<Assembled<S, T, SM>, NodeStartError>
where
    SM: StateMachine,
    S: LogStore + Send + 'static,
    T: Transport + 'static,
{
    config.check(liveness)?;
    let config = NodeConfig { options: with_fresh_seed(config.options.clone()), ..config };
    Handle::try_current().map_err(|_| NodeStartError::NoRuntime)?;
    if transport.local_id() != config.id {
        return Err(NodeStartError::TransportIdMismatch { config: config.id, transport: transport.local_id() });
    }
    let raft = Raft::new(config.id, config.options.clone(), storage).map_err(NodeStartError::Storage)?;
    let membership_seen = raft.membership().clone();
    let metrics = GroupMetrics::new(config.id, group);
    metrics.term.set(raft.term().0 as f64);
    metrics.commit_index.set(raft.commit_index().0 as f64);
    let shared = Arc::new(Shared::new(config.event_queue_events_max, metrics));
    let (input, input_receiver) = mpsc::channel(config.input_queue_items_max);
    let applier = Applier::new(state_machine, Arc::clone(&shared), input.downgrade(), config.snapshot_every_entries);
    let apply = if apply_thread {
        let (queue, steps) = mpsc::channel(config.apply_queue_batches_max);
        let thread = std::thread::Builder::new()
            .name(format!("raft-apply-{}", config.id))
            .spawn(move || applier.run(steps))
            .map_err(NodeStartError::Spawn)?;
        ApplySide::Thread { queue, thread }
    } else {
        ApplySide::Inline(Box::new(applier))
    };
    let core = Core {
        _panic_guard: PanicGuard { shared: Arc::clone(&shared), reason: StopReason::CorePanicked },
        raft,
        transport,
        shared: Arc::clone(&shared),
        input: input_receiver,
        input_closed: false,
        inbound,
        inbound_open: true,
        waker: None,
        more_queued: false,
        apply: Some(apply),
        registrations: Vec::new(),
        deferred: VecDeque::new(),
        reads: BTreeMap::new(),
        read_id_next: 1,
        read_asked: false,
        stale_reads: Vec::new(),
        leader_term: (None, Term(0)),
        unreachable: BTreeSet::new(),
        addresses: config.addresses.clone(),
        input_batch_items_max: config.input_batch_items_max,
        membership_change: None,
        transfer: None,
        membership_seen,
        ticks_total: 0,
        clock: DriverClock::new(),
        // The clock starts now: the first whole tick passes one tick interval from now.
        started: tokio::time::Instant::now(),
        tick_interval: config.tick_interval,
        metrics: CoreMetrics::new(),
        snapshot_job: None,
        handed: Index(0),
        waiting_bytes_max: (config.apply_queue_batches_max as u64).saturating_mul(config.options.apply_bytes_max()),
        // Set by the host: on tasks when it runs as one task.
        snapshot_jobs_on_tasks: false,
        snapshot_slots: None,
    };
    let inner = Inner {
        input,
        permits: Arc::new(Semaphore::new(config.proposals_pending_max)),
        read_permits: Arc::new(Semaphore::new(config.reads_pending_max)),
        shared,
        host: None,
    };
    Ok(Assembled { core, inner, config })
}

/// A group built by [`assemble`], not running yet.
pub(crate) struct Assembled<S: LogStore, T: Transport, SM: StateMachine> {
    pub(crate) core: Core<S, T, SM>,
    pub(crate) inner: Inner<SM>,
    /// The configuration as checked, with its seed drawn.
    pub(crate) config: NodeConfig,
}

impl<SM: StateMachine> Inner<SM> {
    /// The proposal permits (`proposals_pending_max` of them).
    pub(crate) fn permits(&self) -> Arc<Semaphore> {
        Arc::clone(&self.permits)
    }
}

impl<SM: StateMachine> NodeHandle<SM> {
    /// A handle on the node whose shared state is `inner`.
    pub(crate) fn from_inner(inner: Inner<SM>) -> Self {
        NodeHandle { inner: Arc::new(inner) }
    }
}

impl<SM: StateMachine> NodeHandle<SM> {
    /// Proposes `command` and waits until it is applied, answering with the state machine's
    /// response. Waits for room first when `proposals_pending_max` proposals are pending
    /// (back-pressure). See [`ProposeError`] for what each failure says about the outcome.
    pub async fn propose(&self, command: Bytes) -> Result<SM::Response, ProposeError> {
        self.check_running()?;
        // Try without waiting first: the waiting futures cost more, and most calls find room.
        let permit = match Arc::clone(&self.inner.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => {
                Arc::clone(&self.inner.permits).acquire_owned().await.map_err(|_| self.stopped_error())?
            }
            Err(TryAcquireError::Closed) => return Err(self.stopped_error()),
        };
        let (sender, receiver) = oneshot::channel();
        let proposal = Proposal { command, responder: Responder::new(sender, permit) };
        match self.inner.input.try_send(CoreInput::Propose(proposal)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(input)) => {
                self.inner.input.send(input).await.map_err(|_| self.stopped_error())?;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(self.stopped_error()),
        }
        self.outcome(receiver).await
    }

    /// Like [`NodeHandle::propose`], but fails at once with [`ProposeError::TooBusy`] instead of
    /// waiting for room in the proposal or input queue.
    pub async fn try_propose(&self, command: Bytes) -> Result<SM::Response, ProposeError> {
        self.check_running()?;
        let Ok(permit) = Arc::clone(&self.inner.permits).try_acquire_owned() else {
            return Err(self.too_busy());
        };
        let (sender, receiver) = oneshot::channel();
        let proposal = Proposal { command, responder: Responder::new(sender, permit) };
        match self.inner.input.try_send(CoreInput::Propose(proposal)) {
            Ok(()) => self.outcome(receiver).await,
            Err(mpsc::error::TrySendError::Full(_)) => Err(self.too_busy()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(self.stopped_error()),
        }
    }

    async fn outcome(
        &self,
        receiver: oneshot::Receiver<Result<SM::Response, ProposeError>>,
    ) -> Result<SM::Response, ProposeError> {
        // A dropped responder means the node stopped without answering (a panic).
        receiver.await.unwrap_or_else(|_| Err(self.stopped_error()))
    }

    /// Runs `query` against the state machine, as fresh as `consistency` asks, and returns its
    /// result. Waits for room first when `reads_pending_max` reads are pending (back-pressure).
    ///
    /// The query runs on the apply thread (on the core under [`Execution::OneThread`],
    /// where a long query also holds up replication and heartbeats), between two applied commands, so it sees a state the
    /// commands produced and nothing half-applied. For a [`ReadConsistency::Linearizable`] or
    /// [`ReadConsistency::Lease`] read the core first confirms an index (at least the commit index
    /// when the read was asked) and the query runs once everything up to that index is applied:
    /// it sees every write whose `propose` returned before `read` was called, on any member. A
    /// [`ReadConsistency::Stale`] read runs on whatever is applied when it gets there.
    ///
    /// Keep queries short: commands wait while one runs. A query that panics stops the node like
    /// a panicking state machine ([`StopReason::StateMachinePanicked`]). A linearizable read can
    /// wait as long as its confirmation does (a follower's request to a leader that is lost is
    /// only failed when the follower's leader changes): bound it with a timeout.
    pub async fn read<R: Send + 'static>(
        &self,
        consistency: ReadConsistency,
        query: impl FnOnce(&SM) -> R + Send + 'static,
    ) -> Result<R, ReadError> {
        let shared = &self.inner.shared;
        if shared.stopping.load(Ordering::Acquire) || shared.stop_reason().is_some() {
            return Err(shared.stopped_read_error());
        }
        let permits = Arc::clone(&self.inner.read_permits);
        let permit = permits.acquire_owned().await.map_err(|_| shared.stopped_read_error())?;
        let (sender, receiver) = oneshot::channel();
        let read = PendingRead::new(query, sender, permit);
        let input = CoreInput::Read(ReadRequest { consistency, read });
        self.inner.input.send(input).await.map_err(|_| shared.stopped_read_error())?;
        // A dropped query means the node stopped without answering (a panic, a failed restore).
        receiver.await.unwrap_or_else(|_| Err(shared.stopped_read_error()))
    }

    /// The node's current status; fails with the reason once the node has stopped.
    pub async fn status(&self) -> Result<NodeStatus, StopReason> {
        let stopped = || self.inner.shared.stop_reason().unwrap_or(StopReason::Shutdown);
        let (sender, receiver) = oneshot::channel();
        self.inner.input.send(CoreInput::Status(sender)).await.map_err(|_| stopped())?;
        receiver.await.map_err(|_| stopped())
    }

    /// Changes the membership (on the leader): `changes` are applied together, through a joint
    /// configuration when they move voters. Answers with the new membership once the change is
    /// complete on this node (the joint entry and the leave entry the leader appends by itself
    /// are committed and handed to the state machine). A new member's address must be known to
    /// the transport first (see the module docs). See [`MembershipChangeError`] for each
    /// failure; the caller bounds the wait with a timeout if it wants one.
    pub async fn change_membership(&self, changes: Vec<ConfChange>) -> Result<Membership, MembershipChangeError> {
        let stopped = || MembershipChangeError::from(self.inner.shared.stop_reason().unwrap_or(StopReason::Shutdown));
        if self.inner.shared.stopping.load(Ordering::Acquire) {
            return Err(stopped());
        }
        let (responder, receiver) = oneshot::channel();
        let request = CoreInput::ChangeMembership(MembershipRequest { changes, responder });
        self.inner.input.send(request).await.map_err(|_| stopped())?;
        receiver.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Hands leadership (on the leader) to voter `target`. Answers once this node knows the
    /// target leads, or fails (see [`TransferLeadershipError`]); proposals to this node are
    /// refused while the transfer runs.
    pub async fn transfer_leadership(&self, target: NodeId) -> Result<(), TransferLeadershipError> {
        let stopped = || TransferLeadershipError::from(self.inner.shared.stop_reason().unwrap_or(StopReason::Shutdown));
        if self.inner.shared.stopping.load(Ordering::Acquire) {
            return Err(stopped());
        }
        let (responder, receiver) = oneshot::channel();
        let request = CoreInput::TransferLeadership(TransferRequest { target, responder });
        self.inner.input.send(request).await.map_err(|_| stopped())?;
        receiver.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Adds (or replaces) `id`'s entry in the address book that refusals naming the leader are answered from (the
    /// transport has its own: see the module docs). Does nothing on a stopped node.
    pub async fn add_address(&self, id: NodeId, address: SocketAddr) {
        // An error means the node stopped: no answer needs the address any more.
        let _ = self.inner.input.send(CoreInput::Address(id, address)).await;
    }

    /// A receiver of the node's events from now on (see
    /// [`NodeConfig::event_queue_events_max`](crate::NodeConfig::event_queue_events_max) for a
    /// receiver that falls behind).
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.inner.shared.subscribe()
    }

    /// Why the node stopped, or `None` while it runs.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.inner.shared.stop_reason()
    }

    /// How many times the node's worker waited for a snapshot still being written or restored
    /// off it (on the apply thread, or on the thread an inline state machine moves to for it):
    /// to install a snapshot from the leader, because more committed entries waited for a
    /// state machine away than an apply queue holds, or to stop (once the job is called off).
    /// Counted before the wait begins, so
    /// that a test holding the state machine inside its `snapshot` knows, without guessing at
    /// timing, that the worker waits for it. Not part of the API: it may change or go at any
    /// release.
    #[doc(hidden)]
    pub fn snapshot_job_waits(&self) -> u64 {
        self.inner.shared.snapshot_job_waits()
    }

    /// Shuts the node down gracefully: new proposals and reads are refused at once; the core
    /// finishes the inputs it already took, writes and sends their output, lets the state machine
    /// apply what was committed and serve the reads already confirmed, answers every other
    /// pending proposal with [`ProposeError::ShuttingDown`] and read with
    /// [`ReadError::ShuttingDown`], and drops the storage and the transport. Returns when all of
    /// that is done and the node's tasks have ended. Calling it again, or on a stopped node,
    /// returns at once. A restore of the state machine from a snapshot under way off the worker
    /// is called off (at the state machine's next read of the snapshot): the state machine is
    /// then partial, so it applies nothing more and serves no read, and the node restores again
    /// from its store when it restarts.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.shared.stopping.store(true, Ordering::Release);
        // An error means the core has already stopped.
        let _ = inner.input.send(CoreInput::Shutdown).await;
        inner.shared.done.cancelled().await;
    }

    fn check_running(&self) -> Result<(), ProposeError> {
        let shared = &self.inner.shared;
        if shared.stopping.load(Ordering::Acquire) || shared.stop_reason().is_some() {
            return Err(shared.stopped_error());
        }
        Ok(())
    }

    fn too_busy(&self) -> ProposeError {
        self.inner.shared.metrics.proposals(Outcome::TooBusy, 1);
        ProposeError::TooBusy
    }

    fn stopped_error(&self) -> ProposeError {
        self.inner.shared.stopped_error()
    }
}

#[cfg(test)]
mod seed_tests {
    use super::with_fresh_seed;
    use raft_core::Options;

    #[test]
    fn an_unchosen_seed_is_drawn_fresh_and_a_chosen_one_is_kept() {
        let unchosen = Options::builder().build().expect("valid");
        assert!(!unchosen.rng_seed_chosen());
        let first = with_fresh_seed(unchosen.clone());
        let second = with_fresh_seed(unchosen);
        assert!(first.rng_seed_chosen());
        // Two 64-bit draws from the OS are equal with probability 2^-64.
        assert_ne!(first.rng_seed(), second.rng_seed());
        let chosen = Options::builder().rng_seed(7).build().expect("valid");
        assert_eq!(with_fresh_seed(chosen).rng_seed(), 7);
    }
}
