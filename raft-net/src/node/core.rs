//! A group's core: the one owner of its [`Raft`] node and its storage, stepped by a worker of
//! its [`Host`](crate::Host) (the host's rounds are in `host.rs`). Each round takes the queued
//! inputs (up to `input_batch_items_max`), steps them, takes the node's outputs and carries them
//! out as raft-core's driving contract prescribes: [`Core::before_write`], the write (one
//! `write_outputs` for the whole round of every group of the batch: group commit), then
//! [`Core::after_write`]. Storage writes happen inline, on the worker, so storage I/O never
//! blocks the async workers.
//!
//! Reads: the core numbers each linearizable or lease read, asks the core, and keeps the query
//! until the core's answer comes in an output's `reads`. A confirmed read goes to the apply side
//! right after that output's committed entries, in order, so its query runs after they are
//! applied; a refused one is answered here. Stale reads skip the core and go to the apply side
//! at the end of the round.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use raft_core::{
    Index, Membership, Message, MessageBody, NodeId, Output, ProposeError as CoreProposeError, Raft, ReadMode,
    ReadState, Role, SnapshotError, SnapshotMeta, SoftState, StepError, StorageError, Term,
};
use raft_storage::LogStore;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tracing::{debug, info, warn};

use super::apply::Applier;
use super::clock::DriverClock;
use super::error::{ProposeError, ReadError, StopReason, StorageFailure, StorageOperation};
use super::event::{NodeEvent, NodeStatus};
use super::membership::{PendingChange, PendingTransfer};
use super::read::{PendingRead, ReadRequest};
use super::shared::{ApplyStep, CoreInput, PanicGuard, Proposal, Registration, Shared};
use super::snapshot::{
    self, SNAPSHOT_PIECES_QUEUED_MAX, SnapshotJob, SnapshotReader, SnapshotSlot, SnapshotSlots, SnapshotTask,
    StoreChunks, save_failed,
};
use super::state_machine::StateMachine;
use crate::metrics::{CoreMetrics, Outcome, SnapshotEvent};
use crate::transport::{SendError, Transport};

/// Whether a group goes on after a round.
pub(crate) enum Flow {
    Continue,
    Stop,
}

/// Where the core hands its apply steps.
pub(crate) enum ApplySide<SM: StateMachine> {
    /// The apply thread, through its bounded queue ([`Execution::Threads`](super::config::Execution::Threads)).
    Thread { queue: mpsc::Sender<ApplyStep<SM>>, thread: JoinHandle<()> },
    /// Applied inline, before the core goes on ([`Execution::OneThread`](super::config::Execution::OneThread),
    /// [`Execution::Tasks`](super::config::Execution::Tasks), every group of a shared host).
    Inline(Box<Applier<SM>>),
    /// An inline applier away while its state machine writes a snapshot or restores one (see
    /// [`Core::save_offered_snapshot`], [`Core::restore`]): the steps handed to it meanwhile wait
    /// here, in order, and are taken once it is back.
    Away {
        on: AwayOn<SM>,
        waiting: VecDeque<ApplyStep<SM>>,
        waiting_bytes: u64,
        /// The host's slot the job holds (none when the core has no slots to take from).
        _slot: Option<SnapshotSlot>,
    },
}

/// Where an applier away runs its job.
pub(crate) enum AwayOn<SM: StateMachine> {
    /// A thread of its own, which returns the applier (`None` if the state machine panicked).
    Thread(JoinHandle<Option<Box<Applier<SM>>>>),
    /// A task of the host's `LocalSet`, under [`Execution::Tasks`](super::config::Execution::Tasks):
    /// the job runs when that task does (a tick later, as a job on a thread would take a while),
    /// or when the worker must wait for it, whichever comes first, on the same thread either way,
    /// so a replay from the runtime's seed stays exact.
    Task(Arc<LocalJob<SM>>),
}

impl<SM: StateMachine> AwayOn<SM> {
    /// The applier back once its job ended (running it first on a task not run yet), or `None`
    /// if the state machine panicked.
    fn join(self) -> Option<Box<Applier<SM>>> {
        match self {
            AwayOn::Thread(thread) => thread.join().ok().flatten(),
            AwayOn::Task(job) => job.join(),
        }
    }
}

/// A job of an applier away on a task (see [`AwayOn::Task`]).
pub(crate) struct LocalJob<SM: StateMachine> {
    state: std::sync::Mutex<LocalJobState<SM>>,
    shared: Arc<Shared>,
}

enum LocalJobState<SM: StateMachine> {
    Pending(Box<Applier<SM>>, Box<dyn SnapshotTask<SM>>),
    Ran(Option<Box<Applier<SM>>>),
    Joined,
}

impl<SM: StateMachine> LocalJob<SM> {
    /// Runs the job if it has not run yet.
    pub(crate) fn run(&self) {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *state = match std::mem::replace(&mut *state, LocalJobState::Joined) {
            LocalJobState::Pending(applier, task) => LocalJobState::Ran(run_job(applier, task, &self.shared)),
            other => other,
        };
    }

    fn join(&self) -> Option<Box<Applier<SM>>> {
        self.run();
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match std::mem::replace(&mut *state, LocalJobState::Joined) {
            LocalJobState::Ran(applier) => applier,
            LocalJobState::Pending(..) | LocalJobState::Joined => None,
        }
    }
}

/// Runs a snapshot job's `task` on `applier`, away from the worker; returns the applier, or
/// `None` if the state machine panicked. A failed restore is reported to the core by the job:
/// the applier, which then refuses every step, comes back all the same.
fn run_job<SM: StateMachine>(
    mut applier: Box<Applier<SM>>,
    task: Box<dyn SnapshotTask<SM>>,
    shared: &Shared,
) -> Option<Box<Applier<SM>>> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| task.run(&mut applier))) {
        Ok(_) => Some(applier),
        Err(_) => {
            // The task, dropped by the unwinding, woke the core, which finds its job gone and
            // stops the group for this reason.
            shared.set_stop_reason(StopReason::StateMachinePanicked);
            None
        }
    }
}

/// The core's state.
pub(crate) struct Core<S: LogStore, T: Transport, SM: StateMachine> {
    /// First, so that a panic records its reason before anything else is dropped.
    pub(crate) _panic_guard: PanicGuard,
    pub(crate) raft: Raft<S>,
    pub(crate) transport: T,
    pub(crate) shared: Arc<Shared>,
    pub(crate) input: mpsc::Receiver<CoreInput<SM>>,
    /// The handles' queue was found closed and empty (every handle is gone): the group stops.
    pub(crate) input_closed: bool,
    /// The transport's messages, taken here directly: a forwarding task in between cost a
    /// second thread wake-up (and two more copies) per message.
    pub(crate) inbound: mpsc::Receiver<Message>,
    /// Whether the transport may still send into `inbound`.
    pub(crate) inbound_open: bool,
    /// The waker that schedules the group on its [`Host`](crate::Host) (set when it is added).
    /// Both queues are polled with it, so that anything sent into them after they were found
    /// empty schedules the group again.
    pub(crate) waker: Option<std::task::Waker>,
    /// A round stopped taking input at `input_batch_items_max` with more queued: the group runs
    /// again at once.
    pub(crate) more_queued: bool,
    /// The apply side; `None` once stopping.
    pub(crate) apply: Option<ApplySide<SM>>,
    /// Proposals appended in this iteration, handed to the apply thread before any later step.
    pub(crate) registrations: Vec<Registration<SM::Response>>,
    /// Proposals refused with `TermNotDurable` (a leader whose first entry of its term is not
    /// durable yet), retried after this iteration's write; at most `input_batch_items_max`.
    pub(crate) deferred: VecDeque<Proposal<SM::Response>>,
    /// Reads asked of the core and not answered yet, by the id the core knows them by; at most
    /// `reads_pending_max` (each holds a permit).
    pub(crate) reads: BTreeMap<u64, PendingRead<SM>>,
    /// The id of the next read asked of the core (never reused while the node runs).
    pub(crate) read_id_next: u64,
    /// A read was asked since the last output was taken: take one even if the core says it has
    /// nothing to do (see `drain_outputs`).
    pub(crate) read_asked: bool,
    /// Stale reads taken in this iteration, handed to the apply thread at its end; at most
    /// `reads_pending_max` (each holds a permit).
    pub(crate) stale_reads: Vec<PendingRead<SM>>,
    /// The (leader, term) last reported in a `LeaderChanged` event.
    pub(crate) leader_term: (Option<NodeId>, Term),
    /// Peers reported unreachable and not reached since.
    pub(crate) unreachable: BTreeSet<NodeId>,
    pub(crate) addresses: BTreeMap<NodeId, SocketAddr>,
    pub(crate) input_batch_items_max: usize,
    /// The membership change appended and not yet complete (the core allows one at a time).
    pub(crate) membership_change: Option<PendingChange>,
    /// The leadership transfer started and not yet answered.
    pub(crate) transfer: Option<PendingTransfer>,
    /// The membership last reported in a `MembershipChanged` event.
    pub(crate) membership_seen: Membership,
    /// Timer ticks given to the core since the node started (for the transfer's deadline).
    pub(crate) ticks_total: u64,
    /// The time policy: the clock never lags, the timers may (see [`DriverClock`]).
    pub(crate) clock: DriverClock,
    /// When the node's clock started (tokio's clock: the real monotonic one, or the simulated
    /// one under turmoil).
    pub(crate) started: tokio::time::Instant,
    /// The length of one tick (`NodeConfig::tick_interval`).
    pub(crate) tick_interval: Duration,
    /// What the group's metrics are derived from (see the `metrics` module).
    pub(crate) metrics: CoreMetrics,
    /// The snapshot being taken, or restored, off the worker, if one is.
    pub(crate) snapshot_job: Option<SnapshotJob<S>>,
    /// The last index handed to the apply side (applied, or queued to be): restored or the
    /// last committed entry handed out.
    pub(crate) handed: Index,
    /// The most bytes of committed entries that wait for an applier away writing a snapshot
    /// before the worker waits for it: what the apply thread's queue may hold
    /// (`apply_queue_batches_max` batches of `apply_bytes_max`).
    pub(crate) waiting_bytes_max: u64,
    /// Whether an inline applier away for a snapshot job leaves on a task of the host's
    /// `LocalSet` rather than a thread (under [`Execution::Tasks`](super::config::Execution::Tasks),
    /// whose replays must not depend on a thread's timing).
    pub(crate) snapshot_jobs_on_tasks: bool,
    /// The host's slots for snapshots written off the worker (`None`: no limit).
    pub(crate) snapshot_slots: Option<Arc<SnapshotSlots>>,
}

impl<S, T, SM> Core<S, T, SM>
where
    S: LogStore + Send + 'static,
    T: Transport,
    SM: StateMachine,
{
    /// Takes the handles' queued inputs, then the peers' queued messages, up to
    /// `input_batch_items_max` of each. Proposals go first, so that the append an acknowledgement
    /// triggers (by committing) already carries them: fewer, fuller messages.
    pub(crate) fn take_inputs(
        &mut self,
        statuses: &mut Vec<tokio::sync::oneshot::Sender<NodeStatus>>,
    ) -> Result<Flow, StopReason> {
        let mut next = self.next_input();
        let mut taken = 0;
        while let Some(input) = next {
            match input {
                CoreInput::Propose(proposal) => self.propose(proposal),
                CoreInput::Read(request) => self.read(request),
                CoreInput::Status(sender) => statuses.push(sender),
                CoreInput::ChangeMembership(request) => self.change_membership(request),
                CoreInput::TransferLeadership(request) => self.transfer_leadership(request),
                CoreInput::Address(id, address) => {
                    self.addresses.insert(id, address);
                }
                CoreInput::Wake => {}
                // Inputs after it stay queued and are refused by `stop`.
                CoreInput::Shutdown => return Ok(Flow::Stop),
            }
            taken += 1;
            if taken >= self.input_batch_items_max {
                self.more_queued = true;
                break;
            }
            next = self.next_input();
        }
        self.metrics.end_of_proposals();
        let mut stepped = 0;
        while let Some(message) = self.try_inbound() {
            self.step(message)?;
            stepped += 1;
            if stepped >= self.input_batch_items_max {
                self.more_queued = true;
                break;
            }
        }
        Ok(Flow::Continue)
    }

    /// The handles' next queued input, without waiting (polled with the pool's waker, if any);
    /// notes a closed queue in `input_closed`.
    fn next_input(&mut self) -> Option<CoreInput<SM>> {
        match poll_queue(&mut self.input, self.waker.as_ref()) {
            Ok(input) => Some(input),
            Err(TryRecvError::Disconnected) => {
                self.input_closed = true;
                None
            }
            Err(TryRecvError::Empty) => None,
        }
    }

    /// The transport's next message, without waiting.
    fn try_inbound(&mut self) -> Option<Message> {
        if !self.inbound_open {
            return None;
        }
        match poll_queue(&mut self.inbound, self.waker.as_ref()) {
            Ok(message) => Some(message),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.inbound_open = false;
                None
            }
        }
    }

    /// Gives the core's clock every whole tick of real time that passed since the node started.
    pub(crate) fn catch_up_clock(&mut self) {
        let elapsed = DriverClock::ticks_in(self.started.elapsed(), self.tick_interval);
        self.clock.catch_up(&mut self.raft, elapsed);
    }

    fn step(&mut self, message: Message) -> Result<(), StopReason> {
        if let MessageBody::ReadIndexRequest { mode: ReadMode::Lease, .. } = message.body {
            // The lease is judged at once: by a clock read after this request arrived.
            self.catch_up_clock();
        }
        if let MessageBody::InstallSnapshot { offset: 0, .. } = message.body {
            self.shared.metrics.snapshot(SnapshotEvent::Received);
        }
        let from = message.from;
        match self.raft.step(message) {
            Ok(()) => Ok(()),
            Err(StepError::Storage(error)) => Err(StopReason::StorageFailed(StorageFailure::read(error))),
            Err(StepError::Malformed(error)) => {
                // No correct peer of this group sends it: a bug or a misconfiguration somewhere.
                warn!(%from, %error, "malformed message refused");
                Ok(())
            }
            Err(error) => {
                debug!(%from, %error, "message ignored");
                Ok(())
            }
        }
    }

    pub(crate) fn propose(&mut self, proposal: Proposal<SM::Response>) {
        let index = match self.raft.propose(proposal.command.clone()) {
            Ok(index) => index,
            Err(CoreProposeError::TermNotDurable) if self.deferred.len() < self.input_batch_items_max => {
                self.deferred.push_back(proposal);
                return;
            }
            // Every other refusal, and `TermNotDurable` once the deferred queue is full (a burst
            // larger than one input batch), is the caller's to see.
            Err(reason) => {
                self.shared.metrics.proposals(Outcome::Refused, 1);
                proposal.responder.answer(Err(ProposeError::refused(reason, &self.addresses)));
                return;
            }
        };
        self.metrics.proposed(index);
        let term = self.raft.term();
        self.registrations.push(Registration { index, term, responder: proposal.responder });
    }

    /// Asks the core to confirm a linearizable or lease read; keeps a stale one for the apply
    /// thread.
    fn read(&mut self, request: ReadRequest<SM>) {
        let Some(mode) = request.consistency.mode() else {
            self.stale_reads.push(request.read);
            return;
        };
        let id = self.read_id_next;
        self.read_id_next += 1;
        if mode == ReadMode::Lease {
            // The lease is judged at once: by a clock read after this request arrived, not at
            // the start of the iteration (a pause may have come in between).
            self.catch_up_clock();
        }
        match self.raft.read(id, mode) {
            Ok(()) => {
                self.reads.insert(id, request.read);
                self.read_asked = true;
            }
            Err(error) => request.read.fail(ReadError::from(error)),
        }
    }

    /// Runs the timers for one tick (contract rule 2: the caller takes the output before the
    /// next one).
    pub(crate) fn tick_once(&mut self) {
        self.raft.tick_timers();
        self.ticks_total = self.ticks_total.saturating_add(1);
    }

    /// The next output to carry out, if the node has one (see [`Core::drain_outputs`] for when
    /// an output is taken although `has_output` is false).
    pub(crate) fn next_output(&mut self) -> Result<Option<Output>, StopReason> {
        if !(std::mem::take(&mut self.read_asked) || self.raft.has_output()) {
            return Ok(None);
        }
        let output = self.raft.take_output().map_err(|error| StopReason::StorageFailed(StorageFailure::read(error)))?;
        Ok(Some(output))
    }

    /// The node's status as a handle sees it.
    pub(crate) fn status(&self) -> NodeStatus {
        NodeStatus::new(self.raft.status(), self.shared.applied(), self.reads.len())
    }

    /// The part of an output carried out before its write: the soft state, and the messages that
    /// may leave before the write (rule 4). Returns the last entry the write makes durable.
    pub(crate) fn before_write(&mut self, output: &mut Output) -> Result<Option<(Index, Term)>, StopReason> {
        if output.install_snapshot.is_some() && self.snapshot_job.as_ref().is_some_and(|job| job.restoring.is_some()) {
            // The install replaces the snapshot the state machine is being restored from, off
            // the worker: the store may remove its file, so the restore ends first.
            debug!("a snapshot to install waits for the state machine's restore");
            self.end_snapshot_job(true, false)?;
        }
        if let Some(soft_state) = output.soft_state {
            self.on_soft_state(soft_state);
        }
        // Rule 4: a leader's appends and heartbeats may leave before its own write. Moved out,
        // not cloned: the write does not read them, and a clone copies every entry.
        self.send_all(std::mem::take(&mut output.messages).into_iter());
        Ok(output.entries.last().map(|last| (last.index, last.term)))
    }

    /// The part of an output carried out once its write, and every earlier one, is durable
    /// (rules 5 to 7). `written` is what [`Core::before_write`] returned for it.
    pub(crate) fn after_write(&mut self, output: Output, written: Option<(Index, Term)>) -> Result<(), StopReason> {
        // Rule 6: every earlier write is durable too (they were all synced before this one).
        if let Some((index, term)) = written {
            self.raft.on_persisted(index, term);
        } else if let Some(meta) = &output.install_snapshot {
            self.raft.on_persisted(meta.index, meta.term);
        }
        // Rule 5: this output and every earlier one are durable now.
        self.send_all(output.messages_after_persist.into_iter());
        // Rule 7: restore the state machine from an installed snapshot before applying.
        if let Some(meta) = output.install_snapshot {
            self.snapshot_over_change(meta.index);
            let (index, snapshot_term) = (meta.index, meta.term);
            self.restore(meta)?;
            if self.snapshot_job.as_ref().is_some_and(|job| job.restoring.is_some()) {
                info!(%index, %snapshot_term, "snapshot installed: the state machine is restored from it off the worker");
            } else {
                info!(%index, %snapshot_term, "snapshot installed: the state machine restored from it");
            }
            self.shared.metrics.snapshot(SnapshotEvent::Installed);
        }
        // The commit index itself (not what is handed out, which may lag it while a follower's
        // own copy is not durable yet or a batch is capped), also after a snapshot install.
        let commit = self.raft.commit_index();
        self.shared.metrics.commit_index.set(commit.0 as f64);
        self.metrics.committed(&self.shared.metrics, commit);
        if let Some(last) = output.committed.last() {
            self.handed = last.index;
        }
        if !output.committed.is_empty() {
            self.follow_committed_membership(&output.committed);
            self.hand_to_apply(ApplyStep::Apply(output.committed, std::time::Instant::now()))?;
        }
        // After this output's committed entries, on the same queue: see `hand_out_reads`.
        self.hand_out_reads(output.reads)
    }

    /// Answers the reads the core failed, and hands the confirmed ones to the apply thread. The
    /// core confirms a read at `index` only once it has handed out the entries up to `index`
    /// (in this output's `committed` or an earlier one's), and every one of them is on the apply
    /// queue before this step: the queries run after those entries are applied.
    fn hand_out_reads(&mut self, states: Vec<ReadState>) -> Result<(), StopReason> {
        let mut confirmed = Vec::new();
        let mut applied_min = Index(0);
        for state in states {
            // Ids are ours and each is answered once; an unknown one is a bug of the core's.
            let Some(read) = self.reads.remove(&state.id) else {
                debug_assert!(false, "the core answered read {} that is not pending", state.id);
                continue;
            };
            match state.result {
                Ok(index) => {
                    applied_min = applied_min.max(index);
                    confirmed.push(read);
                }
                Err(error) => read.fail(ReadError::from(error)),
            }
        }
        if confirmed.is_empty() {
            return Ok(());
        }
        self.hand_to_apply(ApplyStep::Read { applied_min, reads: confirmed })
    }

    /// Hands this iteration's stale reads to the apply thread: they need no particular index.
    pub(crate) fn flush_stale_reads(&mut self) -> Result<(), StopReason> {
        if self.stale_reads.is_empty() {
            return Ok(());
        }
        let reads = std::mem::take(&mut self.stale_reads);
        self.send_to_apply(ApplyStep::Read { applied_min: Index(0), reads })
    }

    fn on_soft_state(&mut self, soft_state: SoftState) {
        self.soft_state_metrics(soft_state);
        let leader_term = (soft_state.leader, soft_state.term);
        if leader_term != self.leader_term {
            self.leader_term = leader_term;
            // raft-core logs the change itself ("leader changed", "became leader").
            debug!(leader = ?soft_state.leader, term = %soft_state.term, role = ?soft_state.role, "leader change reported");
            self.shared.emit(NodeEvent::LeaderChanged { leader: soft_state.leader, term: soft_state.term });
        }
        self.role_changed(soft_state.role);
    }

    /// Elections, leader changes and the term, from a soft state (before `leader_term` takes it).
    fn soft_state_metrics(&mut self, soft_state: SoftState) {
        let metrics = &self.shared.metrics;
        let (leader, term) = self.leader_term;
        if soft_state.term != term {
            metrics.term.set(soft_state.term.0 as f64);
            // A term this node started: as a candidate, or as a lone voter that won at once.
            if matches!(soft_state.role, Role::Candidate | Role::Leader) {
                metrics.elections.increment(1);
            }
        }
        if soft_state.leader.is_some() && (soft_state.leader, soft_state.term) != (leader, term) {
            metrics.leader_changes.increment(1);
        }
        if soft_state.role != Role::Leader {
            self.metrics.not_leading();
        }
    }

    /// On the leader, once per tick at most: each peer's replication lag, from the core's status.
    pub(crate) fn sample_lags(&mut self) {
        if !self.raft.is_leader() || !self.metrics.lag_due(self.clock.clock_ticks()) {
            return;
        }
        let status = self.raft.status();
        let matches = status.progress.iter().map(|(peer, progress)| (*peer, progress.match_index));
        self.metrics.sample_lags(&self.shared.metrics, status.last_index, matches);
    }

    /// Sends each message; a transport error drops the message (Raft retransmits), and an
    /// unreachable peer is reported to the core.
    fn send_all(&mut self, messages: impl Iterator<Item = Message>) {
        for message in messages {
            if let MessageBody::InstallSnapshot { offset: 0, .. } = message.body {
                self.shared.metrics.snapshot(SnapshotEvent::Sent);
            }
            let to = message.to;
            match self.transport.send(message) {
                Ok(()) => {
                    if self.unreachable.remove(&to) {
                        self.shared.emit(NodeEvent::PeerReachable(to));
                    }
                }
                Err(SendError::Unreachable(peer)) => {
                    self.raft.report_unreachable(peer);
                    if self.unreachable.insert(peer) {
                        debug!(%peer, "peer unreachable");
                        self.shared.emit(NodeEvent::PeerUnreachable(peer));
                    }
                }
                Err(error) => debug!(%to, %error, "message dropped"),
            }
        }
    }

    /// Hands a step to the apply thread, first the proposals registered before it.
    fn hand_to_apply(&mut self, step: ApplyStep<SM>) -> Result<(), StopReason> {
        self.flush_registrations()?;
        self.send_to_apply(step)
    }

    pub(crate) fn flush_registrations(&mut self) -> Result<(), StopReason> {
        if self.registrations.is_empty() {
            return Ok(());
        }
        let registrations = std::mem::take(&mut self.registrations);
        self.send_to_apply(ApplyStep::Register(registrations))
    }

    /// Waits while the apply queue is full (back-pressure from the state machine). Fails when the
    /// apply thread is gone: it panicked, or stopped after a failed restore.
    fn send_to_apply(&mut self, step: ApplyStep<SM>) -> Result<(), StopReason> {
        let sent = match self.apply.as_mut() {
            // This thread is outside the runtime, where blocking_send may wait; try first, as it
            // is cheaper and almost always finds room.
            Some(ApplySide::Thread { queue, .. }) => match queue.try_send(step) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(step)) => {
                    // What this round sent must not wait for the state machine with it.
                    crate::transport::let_held_sends_go();
                    queue.blocking_send(step).is_ok()
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
            Some(ApplySide::Inline(applier)) => {
                let taken = inline(&self.shared, || applier.take(step));
                return taken.map_err(|reason| self.shared.set_stop_reason(reason));
            }
            Some(ApplySide::Away { waiting, waiting_bytes, .. }) => {
                if let ApplyStep::Apply(entries, _) = &step {
                    *waiting_bytes += entries.iter().map(raft_core::Entry::size_bytes).sum::<u64>();
                }
                waiting.push_back(step);
                if *waiting_bytes > self.waiting_bytes_max {
                    // Back-pressure from the state machine, as from a full apply queue.
                    debug!(bytes = *waiting_bytes, "committed entries wait for the snapshot being written");
                    return self.end_snapshot_job(true, true);
                }
                return Ok(());
            }
            None => false,
        };
        if sent {
            return Ok(());
        }
        Err(self.shared.stop_reason().unwrap_or(StopReason::StateMachinePanicked))
    }

    /// At start: the state machine begins from the store's snapshot (contract rule 7).
    pub(crate) fn restore_stored_snapshot(&mut self) -> Result<(), StopReason> {
        let meta =
            self.raft.storage().snapshot().map_err(|error| StopReason::StorageFailed(StorageFailure::read(error)))?;
        if meta.exists() {
            self.restore(meta)?;
        }
        Ok(())
    }

    /// Restores the state machine from the store's snapshot `meta`, streamed a chunk at a time
    /// (see the `snapshot` module). The data is first read whole and checked against the
    /// checksum the snapshot was taken with, holding one chunk at a time: damaged bytes (on this
    /// node's disk, or anywhere a store does not check) never reach the state machine. Then it
    /// is read again, for the state machine, and checked again.
    fn restore(&mut self, meta: SnapshotMeta) -> Result<(), StopReason> {
        let read_failed = |error| StopReason::StorageFailed(StorageFailure::read(error));
        // A local snapshot being taken is called off first (the installed snapshot supersedes
        // it), and its applier brought back. A restore under way ended before this install was
        // written (`before_write`); were one still here, it would end first, not be called off
        // (that would stop the group).
        if let Some(job) = &self.snapshot_job {
            if job.restoring.is_none() {
                job.cancel();
            }
            self.end_snapshot_job(true, false)?;
        }
        self.handed = meta.index;
        self.flush_registrations()?;
        if self.start_restore_job(&meta)? {
            return Ok(());
        }
        // On the worker. Reading a large snapshot takes long: what this round sent leaves first.
        crate::transport::let_held_sends_go();
        snapshot::verify(self.raft.storage(), &meta).map_err(read_failed)?;
        match self.apply.as_mut() {
            Some(ApplySide::Inline(applier)) => {
                let mut source = StoreChunks::new(self.raft.storage(), &meta);
                let mut reader = SnapshotReader::new(&mut source);
                let restored = inline(&self.shared, || applier.restore(meta, &mut reader));
                restored.map_err(|reason| self.shared.set_stop_reason(reason))
            }
            Some(ApplySide::Thread { .. }) => {
                let (sender, pieces) = std::sync::mpsc::sync_channel(SNAPSHOT_PIECES_QUEUED_MAX);
                self.send_to_apply(ApplyStep::Restore { meta: meta.clone(), pieces })?;
                match snapshot::send_chunks(self.raft.storage(), &meta, &sender) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(self.apply_side_gone()),
                    // The apply thread was told, and will report the same.
                    Err(error) => Err(self.shared.set_stop_reason(read_failed(error))),
                }
            }
            Some(ApplySide::Away { .. }) | None => Err(self.apply_side_gone()),
        }
    }

    /// Restores the state machine from the store's snapshot `meta` off the worker, as a
    /// [`SnapshotJob`] reading the store's owned reader ([`LogStore::open_snapshot_owned`]): on
    /// the apply thread (as a step of its queue), or on a thread the inline applier moves to, with
    /// one of the host's slots (the steps handed meanwhile wait for it, as for a snapshot being
    /// taken). Returns `false`, having started nothing, where the restore stays on the worker:
    /// with every slot of the host taken, or with a store that has no owned
    /// reader.
    fn start_restore_job(&mut self, meta: &SnapshotMeta) -> Result<bool, StopReason> {
        let mut slot = None;
        match self.apply.as_ref() {
            Some(ApplySide::Thread { .. }) => {}
            Some(ApplySide::Inline(_)) => {
                if let Some(slots) = &self.snapshot_slots {
                    let Some(taken) = slots.try_take() else {
                        debug!("every snapshot slot of the host is taken: the snapshot is restored on the worker");
                        return Ok(false);
                    };
                    slot = Some(taken);
                }
            }
            _ => return Ok(false),
        }
        let read_failed = |error| StopReason::StorageFailed(StorageFailure::read(error));
        let Some(reader) = self.raft.storage().open_snapshot_owned(meta).map_err(read_failed)? else {
            return Ok(false);
        };
        let (job, task) = SnapshotJob::restore(reader, self.job_waker());
        self.snapshot_job = Some(job);
        debug!(index = %meta.index, "restoring the state machine off the worker");
        match self.apply.take() {
            Some(ApplySide::Thread { queue, thread }) => {
                self.apply = Some(ApplySide::Thread { queue, thread });
                self.send_to_apply(ApplyStep::Snapshot(task))?;
            }
            Some(ApplySide::Inline(applier)) => self.apply = Some(self.send_away(applier, task, slot)),
            other => {
                self.apply = other;
                return Err(self.apply_side_gone());
            }
        }
        Ok(true)
    }

    /// What a snapshot job calls once it ended: wakes this group.
    fn job_waker(&self) -> Box<dyn Fn() + Send> {
        let waker = self.waker.clone();
        Box::new(move || {
            if let Some(waker) = &waker {
                waker.wake_by_ref();
            }
        })
    }

    /// Why the apply side is gone: the reason it recorded (a failed restore or snapshot), or a
    /// panic.
    fn apply_side_gone(&self) -> StopReason {
        self.shared.stop_reason().unwrap_or(StopReason::StateMachinePanicked)
    }

    /// Ends the snapshot job that ended, then starts the one the apply side asked for, if it
    /// did and none is under way: the store begins an owned writer
    /// ([`LogStore::begin_snapshot_owned`]) and the state machine writes into it off the worker
    /// (on the apply thread, or on a thread of its own for an inline applier; see
    /// [`Core::start_snapshot_job`]). The group goes on meanwhile; the job wakes it when it ends.
    pub(crate) fn save_offered_snapshot(&mut self) -> Result<(), StopReason> {
        self.end_snapshot_job(false, true)?;
        if self.snapshot_job.is_some() || !self.shared.take_snapshot_request() {
            return Ok(());
        }
        self.flush_registrations()?;
        // An inline applier leaves the worker only with one of the host's slots; with none
        // free the snapshot is asked for again, for the next round.
        let mut slot = None;
        if let (Some(ApplySide::Inline(_)), Some(slots)) = (self.apply.as_ref(), self.snapshot_slots.as_ref()) {
            match slots.try_take() {
                Some(taken) => slot = Some(taken),
                None => {
                    debug!("every snapshot slot of the host is taken: the snapshot waits");
                    self.shared.want_snapshot();
                    return Ok(());
                }
            }
        }
        let index = match self.apply.as_ref() {
            Some(ApplySide::Inline(applier)) => applier.applied,
            // Queued after every step handed so far: the state machine is at `handed` then.
            Some(ApplySide::Thread { .. }) => self.handed,
            Some(ApplySide::Away { .. }) => return Ok(()), // Not without a job.
            None => return Err(self.apply_side_gone()),
        };
        let Some(meta) = self.local_snapshot_meta(index)? else { return Ok(()) };
        self.start_snapshot_job(meta, slot)
    }

    /// Starts taking the local snapshot `meta` (see [`Core::save_offered_snapshot`]).
    fn start_snapshot_job(&mut self, meta: SnapshotMeta, slot: Option<SnapshotSlot>) -> Result<(), StopReason> {
        let writer = self.raft.storage_mut().begin_snapshot_owned(&meta).map_err(save_failed)?;
        let (job, task) = SnapshotJob::new(meta, writer, self.job_waker());
        self.snapshot_job = Some(job);
        match self.apply.take() {
            Some(ApplySide::Thread { queue, thread }) => {
                self.apply = Some(ApplySide::Thread { queue, thread });
                self.send_to_apply(ApplyStep::Snapshot(task))
            }
            Some(ApplySide::Inline(applier)) => {
                self.apply = Some(self.send_away(applier, task, slot));
                Ok(())
            }
            other => {
                self.apply = other;
                Err(self.apply_side_gone())
            }
        }
    }

    /// Moves an inline applier to a thread of its own (to a task of the host's `LocalSet` under
    /// `Tasks`: see [`AwayOn::Task`]), where it runs `task`; it comes back when the job ends
    /// ([`Core::end_snapshot_job`]). Should no thread start, the task runs here (the worker
    /// waits for it, as it did before snapshots left it).
    fn send_away(
        &mut self,
        applier: Box<Applier<SM>>,
        task: Box<dyn SnapshotTask<SM>>,
        slot: Option<SnapshotSlot>,
    ) -> ApplySide<SM> {
        if self.snapshot_jobs_on_tasks {
            let state = std::sync::Mutex::new(LocalJobState::Pending(applier, task));
            let job = Arc::new(LocalJob { state, shared: Arc::clone(&self.shared) });
            let (run, delay) = (Arc::clone(&job), self.tick_interval);
            tokio::task::spawn_local(async move {
                tokio::time::sleep(delay).await;
                run.run();
            });
            return ApplySide::Away { on: AwayOn::Task(job), waiting: VecDeque::new(), waiting_bytes: 0, _slot: slot };
        }
        let (hand, handed) = std::sync::mpsc::sync_channel::<(Box<Applier<SM>>, Box<dyn SnapshotTask<SM>>)>(1);
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new().name(format!("raft-snapshot-{}", self.raft.id())).spawn(move || {
            let (applier, task) = handed.recv().ok()?;
            run_job(applier, task, &shared)
        });
        match spawned {
            Ok(thread) => {
                // The thread waits for exactly this.
                let _ = hand.send((applier, task));
                ApplySide::Away { on: AwayOn::Thread(thread), waiting: VecDeque::new(), waiting_bytes: 0, _slot: slot }
            }
            Err(error) => {
                warn!(%error, "no thread for the snapshot: it is written or restored on the worker");
                crate::transport::let_held_sends_go();
                let mut applier = applier;
                let _ = inline(&self.shared, || task.run(&mut applier)); // The job reports it.
                ApplySide::Inline(applier)
            }
        }
    }

    /// Ends the snapshot job if it ended (waiting for it with `wait`): brings an applier that
    /// was away back (and takes the steps that waited for it), then, with `save`, saves the
    /// snapshot taken ([`LogStore::save_taken_snapshot`], durable before the log is compacted:
    /// rule 9) and compacts, unless the store kept a newer one. A failed job stops the group
    /// with its reason.
    pub(crate) fn end_snapshot_job(&mut self, wait: bool, save: bool) -> Result<(), StopReason> {
        let Some(job) = &self.snapshot_job else { return Ok(()) };
        let ended = match job.done.try_recv() {
            Err(std::sync::mpsc::TryRecvError::Empty) if wait => {
                // What this round sent must not wait for the state machine with it.
                crate::transport::let_held_sends_go();
                self.shared.snapshot_job_waited();
                if let Some(ApplySide::Away { on: AwayOn::Task(local), .. }) = &self.apply {
                    local.run(); // Its task has not run yet: the job runs here, now.
                }
                job.done.recv().map_err(|_| std::sync::mpsc::TryRecvError::Disconnected)
            }
            ended => ended,
        };
        let result = match ended {
            Ok(result) => result,
            Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(()),
            // The state machine panicked (its thread recorded it).
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Err(self.apply_side_gone()),
        };
        let restoring = self.snapshot_job.take().and_then(|job| job.restoring);
        if let (Some(index), Err(reason)) = (restoring, &result) {
            // Before the applier comes back (it refuses the steps that waited for it).
            self.shared.set_stop_reason(reason.clone());
            if matches!(reason, StopReason::Shutdown) {
                info!(%index, "restoring the state machine called off by the shutdown");
            } else {
                warn!(%index, %reason, "restoring the state machine from a snapshot failed");
            }
        }
        self.bring_back_applier()?;
        let taken = result.map_err(|reason| self.shared.set_stop_reason(reason))?;
        if let Some(index) = restoring {
            info!(%index, "the state machine restored from the snapshot off the worker");
        }
        let Some(taken) = taken else { return Ok(()) };
        let index = taken.meta().index;
        if !save {
            // Superseded (a snapshot from the leader is being installed): not saved; the
            // store removes its file as it is dropped (raft-storage's stores do).
            debug!(%index, "a local snapshot taken meanwhile is dropped");
            return Ok(());
        }
        self.raft.storage_mut().save_taken_snapshot(taken).map_err(save_failed)?;
        // A store that holds a snapshot at least as new (one installed meanwhile) dropped it.
        let stored =
            self.raft.storage().snapshot().map_err(|error| StopReason::StorageFailed(StorageFailure::read(error)))?;
        if stored.index != index {
            debug!(%index, stored = %stored.index, "a local snapshot was not newer than the store's: dropped");
            return Ok(());
        }
        if let Some((index, term)) = self.raft.compaction_point()
            && let Err(error) = self.raft.storage_mut().compact(index, term)
        {
            return Err(StopReason::StorageFailed(StorageFailure::new(StorageOperation::Compact, error)));
        }
        self.shared.emit(NodeEvent::SnapshotTaken { index });
        Ok(())
    }

    /// An applier away writing or restoring a snapshot, back on the worker once its job ended,
    /// with the steps that waited for it taken in order (refused after a failed restore).
    fn bring_back_applier(&mut self) -> Result<(), StopReason> {
        let Some(ApplySide::Away { .. }) = self.apply.as_ref() else { return Ok(()) };
        let Some(ApplySide::Away { on, waiting, .. }) = self.apply.take() else { return Ok(()) };
        // The thread ends right after the job sent its result.
        let Some(applier) = on.join() else {
            return Err(self.shared.set_stop_reason(StopReason::StateMachinePanicked));
        };
        self.apply = Some(ApplySide::Inline(applier));
        for step in waiting {
            self.send_to_apply(step)?;
        }
        Ok(())
    }

    /// Before the group stops here: a quiet replica wakes (`Raft::wake`), and a quiet leader's
    /// heartbeat wakes its followers, which elect another once this one is silent (the node's
    /// liveness pings may go on, so no report would tell them). Best effort: a stop for a
    /// storage failure may find nothing to send.
    pub(crate) fn wake_before_stop(&mut self) {
        if !self.raft.is_quiet() {
            return;
        }
        self.raft.wake();
        if let Ok(Some(mut output)) = self.next_output() {
            // Only what may leave before a write (a heartbeat); nothing is written any more.
            let _ = self.before_write(&mut output); // A failure: nothing to wake with.
        }
    }

    /// The metadata of a local snapshot at `index` (its checksum to come), or `None` if the
    /// store has one as recent, or the log was compacted past it meanwhile (a snapshot from the
    /// leader replaced it).
    fn local_snapshot_meta(&self, index: Index) -> Result<Option<SnapshotMeta>, StopReason> {
        let read_failed = |error| StopReason::StorageFailed(StorageFailure::read(error));
        let current = self.raft.storage().snapshot().map_err(read_failed)?;
        if index <= current.index {
            return Ok(None);
        }
        match self.raft.snapshot_meta(index, 0) {
            Ok(meta) => Ok(Some(meta)),
            Err(SnapshotError::Storage(error @ StorageError::Io { .. })) => Err(read_failed(error)),
            Err(error) => {
                debug!(%index, %error, "snapshot not saved");
                Ok(None)
            }
        }
    }

    /// Stops taking input, answers what is queued, lets the apply thread finish what it was
    /// handed, and reports the stop. The storage and the transport are dropped with `self`.
    pub(crate) fn stop(mut self, reason: StopReason) {
        self.metrics.not_leading(); // Its lag gauges would otherwise stay as they were, for good.
        let reason = self.shared.set_stop_reason(reason);
        if let Some(job) = &self.snapshot_job {
            // Before anything that may wait for the state machine (below).
            job.cancel();
        }
        match &reason {
            StopReason::Shutdown => info!(reason = %reason, "group stopping: shut down"),
            other => warn!(reason = %other, "group stopping: fail-stop"),
        }
        self.input.close();
        // Peers' sends fail from now on, as they would once the transport is dropped.
        self.inbound.close();
        let error = ProposeError::from(reason.clone());
        let read_error = ReadError::from(reason.clone());
        while let Ok(input) = self.input.try_recv() {
            // Status requests are dropped: the requester then reads the stop reason.
            match input {
                CoreInput::Propose(proposal) => {
                    self.shared.metrics.proposals(Outcome::Stopped, 1);
                    proposal.responder.answer(Err(error.clone()));
                }
                CoreInput::Read(request) => request.read.fail(read_error.clone()),
                CoreInput::ChangeMembership(request) => {
                    let _ = request.responder.send(Err(reason.clone().into()));
                }
                CoreInput::TransferLeadership(request) => {
                    let _ = request.responder.send(Err(reason.clone().into()));
                }
                CoreInput::Status(_) | CoreInput::Address(..) | CoreInput::Wake | CoreInput::Shutdown => {}
            }
        }
        self.fail_membership_requests(&reason);
        self.shared.metrics.proposals(Outcome::Stopped, self.deferred.len() as u64);
        for proposal in std::mem::take(&mut self.deferred) {
            proposal.responder.answer(Err(error.clone()));
        }
        // Not confirmed (or not handed to the apply thread) yet: they will not be.
        let unserved = std::mem::take(&mut self.reads).into_values().chain(std::mem::take(&mut self.stale_reads));
        unserved.for_each(|read| read.fail(read_error.clone()));
        if self.flush_registrations().is_err() {
            self.shared.metrics.proposals(Outcome::Stopped, self.registrations.len() as u64);
            for registration in std::mem::take(&mut self.registrations) {
                registration.responder.answer(Err(error.clone()));
            }
        }
        // The snapshot job, called off at the start (a snapshot being taken ends at the state
        // machine's next piece, a restore at its next chunk read, leaving a partial state whose
        // applier refuses every later step), ends; an applier away for it comes back to answer
        // what it holds.
        if let Some(job) = self.snapshot_job.take()
            && let Err(std::sync::mpsc::TryRecvError::Empty) = job.done.try_recv()
        {
            // The joins below wait for it (counted once it is called off).
            self.shared.snapshot_job_waited();
        }
        if let Some(ApplySide::Away { on, waiting, .. }) =
            self.apply.take_if(|apply| matches!(apply, ApplySide::Away { .. }))
        {
            match on.join() {
                Some(mut applier) => {
                    for step in waiting {
                        // After a failed (or called off) restore it applies nothing more, but
                        // keeps the proposals, answered with the stop below.
                        let _ = applier.take(step);
                    }
                    self.apply = Some(ApplySide::Inline(applier));
                }
                None => {
                    self.shared.set_stop_reason(StopReason::StateMachinePanicked);
                }
            }
        }
        match self.apply.take() {
            Some(ApplySide::Thread { queue, thread }) => {
                drop(queue); // The apply thread finishes its queue, then ends.
                if thread.join().is_err() {
                    self.shared.set_stop_reason(StopReason::StateMachinePanicked);
                }
            }
            Some(ApplySide::Inline(applier)) => applier.finish(),
            Some(ApplySide::Away { .. }) | None => {}
        }
        let reason = self.shared.stop_reason().unwrap_or(reason);
        self.shared.emit(NodeEvent::Stopped(reason));
    }
}

/// Runs `apply` (a step of the apply side, taken inline): a panic of the state machine is
/// reported as such, not as the core's.
fn inline<R>(shared: &Shared, apply: impl FnOnce() -> R) -> R {
    std::panic::catch_unwind(AssertUnwindSafe(apply)).unwrap_or_else(|panic| {
        shared.set_stop_reason(StopReason::StateMachinePanicked);
        std::panic::resume_unwind(panic)
    })
}

/// The next item of `queue` without waiting. With a `waker`, the queue is polled with it, so that
/// an item sent after it was found empty wakes the group (a `try_recv` registers nobody).
fn poll_queue<M>(queue: &mut mpsc::Receiver<M>, waker: Option<&std::task::Waker>) -> Result<M, TryRecvError> {
    let Some(waker) = waker else { return queue.try_recv() };
    match queue.poll_recv(&mut std::task::Context::from_waker(waker)) {
        std::task::Poll::Ready(Some(item)) => Ok(item),
        std::task::Poll::Ready(None) => Err(TryRecvError::Disconnected),
        std::task::Poll::Pending => Err(TryRecvError::Empty),
    }
}
