//! What the handle, the host, the core and the apply thread share, and the items
//! that pass between them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use raft_core::{Entry, Index, NodeId, SnapshotMeta, Term};
use tokio::sync::{OwnedSemaphorePermit, broadcast, oneshot};
use tokio_util::sync::CancellationToken;

use super::error::{ProposeError, ReadError, StopReason};
use super::event::{NodeEvent, NodeStatus};
use super::membership::{MembershipRequest, TransferRequest};
use super::read::{PendingRead, ReadRequest};
use super::snapshot::{RestorePiece, SnapshotTask};
use super::state_machine::StateMachine;
use crate::metrics::GroupMetrics;

/// State shared by every part of one node.
pub(crate) struct Shared {
    /// Why the node stopped, set once (the first reason wins) when it starts stopping.
    stop_reason: OnceLock<StopReason>,
    /// A shutdown was asked for: the handle refuses new proposals and reads at once.
    pub(crate) stopping: AtomicBool,
    /// The state machine's applied index (written by the apply thread).
    applied: AtomicU64,
    /// The apply side asks the core for a snapshot per the policy (the core, which owns the
    /// store, then has the state machine write it: see the `snapshot` module).
    snapshot_wanted: AtomicBool,
    /// How many times the worker waited for a snapshot job (taking or restoring) that had not
    /// ended (see
    /// [`Shared::snapshot_job_waited`]).
    snapshot_job_waits: AtomicU64,
    /// Every event goes here.
    events: broadcast::Sender<NodeEvent>,
    /// Cancelled once the core has finished (threads joined, storage and transport
    /// dropped).
    pub(crate) done: CancellationToken,
    /// The group's metric handles.
    pub(crate) metrics: GroupMetrics,
}

impl Shared {
    pub(crate) fn new(event_queue_events_max: usize, metrics: GroupMetrics) -> Self {
        let (events, _) = broadcast::channel(event_queue_events_max);
        Shared {
            stop_reason: OnceLock::new(),
            stopping: AtomicBool::new(false),
            applied: AtomicU64::new(0),
            snapshot_wanted: AtomicBool::new(false),
            snapshot_job_waits: AtomicU64::new(0),
            events,
            done: CancellationToken::new(),
            metrics,
        }
    }

    /// Records why the node stops unless a reason is already recorded; returns the recorded one.
    pub(crate) fn set_stop_reason(&self, reason: StopReason) -> StopReason {
        self.stop_reason.get_or_init(|| reason).clone()
    }

    /// Why the node stopped, if it did.
    pub(crate) fn stop_reason(&self) -> Option<StopReason> {
        self.stop_reason.get().cloned()
    }

    /// The error for a call that finds the node stopped or stopping.
    pub(crate) fn stopped_error(&self) -> ProposeError {
        self.stop_reason().map_or(ProposeError::ShuttingDown, ProposeError::from)
    }

    /// The error for a read that finds the node stopped or stopping.
    pub(crate) fn stopped_read_error(&self) -> ReadError {
        self.stop_reason().map_or(ReadError::ShuttingDown, ReadError::from)
    }

    pub(crate) fn emit(&self, event: NodeEvent) {
        // An error only means that nobody listens.
        let _ = self.events.send(event);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    pub(crate) fn applied(&self) -> Index {
        Index(self.applied.load(Ordering::Acquire))
    }

    pub(crate) fn set_applied(&self, index: Index) {
        self.applied.store(index.0, Ordering::Release);
    }

    /// Asks the core to take a snapshot of the state machine.
    pub(crate) fn want_snapshot(&self) {
        self.snapshot_wanted.store(true, Ordering::Release);
    }

    /// Whether a snapshot was asked for since the last call.
    pub(crate) fn take_snapshot_request(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::AcqRel)
    }

    /// Counts a wait of the worker for a snapshot job still running, before it waits: the one
    /// sign, for tests, that the worker is about to wait (and stays there until the state
    /// machine's `snapshot` or `restore` returns), which timing could only guess.
    pub(crate) fn snapshot_job_waited(&self) {
        self.snapshot_job_waits.fetch_add(1, Ordering::AcqRel);
    }

    /// How many times the worker waited for a snapshot job still running.
    pub(crate) fn snapshot_job_waits(&self) -> u64 {
        self.snapshot_job_waits.load(Ordering::Acquire)
    }
}

/// Records `reason` as the stop reason when dropped by a panic unwinding its thread.
pub(crate) struct PanicGuard {
    pub(crate) shared: Arc<Shared>,
    pub(crate) reason: StopReason,
}

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.shared.set_stop_reason(self.reason.clone());
        }
    }
}

/// Where a proposal's outcome goes. Holds one of the `proposals_pending_max` permits until the
/// proposal is answered (answered by the apply side: until the end of the apply step that
/// answered it, see [`Responder::answer_releasing_with`]).
pub(crate) struct Responder<R> {
    sender: oneshot::Sender<Result<R, ProposeError>>,
    permit: OwnedSemaphorePermit,
}

impl<R> Responder<R> {
    pub(crate) fn new(sender: oneshot::Sender<Result<R, ProposeError>>, permit: OwnedSemaphorePermit) -> Self {
        Responder { sender, permit }
    }

    /// Sends the outcome and gives the permit back.
    pub(crate) fn answer(self, outcome: Result<R, ProposeError>) {
        // An error only means that the proposer stopped waiting.
        let _ = self.sender.send(outcome);
    }

    /// Sends the outcome and adds the permit to `released`, which gives back all it holds at
    /// once when dropped: each release takes the semaphore's lock (against the clients that
    /// acquire permits on other threads), so a batch of answers is better released with one.
    pub(crate) fn answer_releasing_with(
        self,
        outcome: Result<R, ProposeError>,
        released: &mut Option<OwnedSemaphorePermit>,
    ) {
        // An error only means that the proposer stopped waiting.
        let _ = self.sender.send(outcome);
        match released {
            // Every permit comes from the node's one semaphore, as `merge` requires.
            Some(permits) => permits.merge(self.permit),
            None => *released = Some(self.permit),
        }
    }
}

/// A command for the core to propose.
pub(crate) struct Proposal<R> {
    pub(crate) command: Bytes,
    pub(crate) responder: Responder<R>,
}

/// A proposal appended at (`index`, `term`), waiting for the entry at `index` to be applied.
pub(crate) struct Registration<R> {
    pub(crate) index: Index,
    pub(crate) term: Term,
    pub(crate) responder: Responder<R>,
}

/// What the core receives from its handles, its ticker and its apply thread. Peer
/// messages come from the transport's receiver instead (they are large: keeping them out keeps
/// this queue's slots small).
pub(crate) enum CoreInput<SM: StateMachine> {
    /// A client's proposal.
    Propose(Proposal<SM::Response>),
    /// A client's read.
    Read(ReadRequest<SM>),
    /// A status request.
    Status(oneshot::Sender<NodeStatus>),
    /// A client's membership change.
    ChangeMembership(MembershipRequest),
    /// A client's leadership transfer.
    TransferLeadership(TransferRequest),
    /// Where a peer can be reached, for refusals that name the leader.
    Address(NodeId, SocketAddr),
    /// Nothing but a reason to run an iteration (ticks or a snapshot are waiting).
    Wake,
    /// Stop after this iteration.
    Shutdown,
}

/// What the apply thread receives, in order.
pub(crate) enum ApplyStep<SM: StateMachine> {
    /// Proposals appended since the last step.
    Register(Vec<Registration<SM::Response>>),
    /// Restore the state machine from a snapshot (installed from the leader, or found at start),
    /// whose data the core sends through `pieces` once it is checked (see the `snapshot`
    /// module). Only on the apply thread: inline, the applier reads the store itself.
    Restore { meta: SnapshotMeta, pieces: Receiver<RestorePiece> },
    /// Apply these committed entries (consecutive, continuing the applied index), handed out
    /// at this instant (for the apply latency metric).
    Apply(Vec<Entry>, std::time::Instant),
    /// Serve these reads now: every step before this one put the state machine at `applied_min`
    /// or later (the core hands out a confirmed read only once it handed out the entries up to
    /// its index; `Index(0)` for stale reads).
    Read { applied_min: Index, reads: Vec<PendingRead<SM>> },
    /// Take a snapshot now, into the store's owned writer the task holds: every step before
    /// this one put the state machine at the task's index (see `SnapshotJob`).
    Snapshot(Box<dyn SnapshotTask<SM>>),
}
