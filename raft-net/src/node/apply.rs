//! The apply side: owns the state machine, applies committed entries in order, answers the
//! proposals registered by the core, runs read queries, restores snapshots and takes them per the
//! policy. It runs on its own thread, or inline in the core: on the core under
//! [`Execution::OneThread`](super::config::Execution::OneThread), in the core's task under
//! [`Execution::Tasks`](super::config::Execution::Tasks).

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use raft_core::{Entry, EntryPayload, Index, SnapshotMeta};
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc::{Receiver, WeakSender};

use super::error::{ProposeError, StopReason, StorageFailure};
use super::event::NodeEvent;
use super::read::PendingRead;
use super::shared::{ApplyStep, CoreInput, PanicGuard, Registration, Shared};
use super::snapshot::{ChannelChunks, PieceOut, SnapshotReader, SnapshotSink};
use super::state_machine::StateMachine;
use crate::metrics::Outcome;

/// The apply side's state (the apply thread's, or the core's when it applies inline).
pub(crate) struct Applier<SM: StateMachine> {
    /// First, so that a panic records its reason before the pending proposals are dropped.
    _panic_guard: PanicGuard,
    pub(crate) state_machine: SM,
    pub(crate) shared: Arc<Shared>,
    /// Wakes the core when a snapshot is ready; weak, so it does not keep the core's
    /// input queue open.
    pub(crate) wake: WeakSender<CoreInput<SM>>,
    /// Take a snapshot every this many applied entries (0: never).
    pub(crate) snapshot_every_entries: u64,
    /// Proposals waiting for the entry at their index, at most `proposals_pending_max` of them
    /// (each holds a permit), in increasing index order, one per index. A leader registers its
    /// proposals in index order and entries are applied in index order, so registering and
    /// answering happen at the two ends almost always (a sorted map cost a tree insert and a
    /// remove, with their allocations, per proposal).
    pub(crate) pending: VecDeque<Registration<SM::Response>>,
    /// The last index applied (or restored).
    pub(crate) applied: Index,
    /// The index of the last snapshot taken or restored.
    pub(crate) snapshot_index: Index,
    /// Why a restore failed, if one did: the state machine may hold part of a snapshot, so it
    /// takes no further step (but proposals, kept to be answered with the stop's reason).
    failed: Option<StopReason>,
}

impl<SM: StateMachine> Applier<SM> {
    /// A fresh apply side; the core sends the store's snapshot (if any) as the first step.
    pub(crate) fn new(
        state_machine: SM,
        shared: Arc<Shared>,
        wake: WeakSender<CoreInput<SM>>,
        snapshot_every_entries: u64,
    ) -> Self {
        Applier {
            _panic_guard: PanicGuard { shared: Arc::clone(&shared), reason: StopReason::StateMachinePanicked },
            state_machine,
            shared,
            wake,
            snapshot_every_entries,
            pending: VecDeque::new(),
            applied: Index(0),
            snapshot_index: Index(0),
            failed: None,
        }
    }

    /// Runs until the core drops its end of the queue (or a restore fails), then answers
    /// every proposal still pending with the reason the node stopped. (Reads still queued after
    /// a failed restore are dropped with the queue: their readers then see the stop reason.)
    pub(crate) fn run(mut self, mut steps: Receiver<ApplyStep<SM>>) {
        // A plain thread, outside the runtime: blocking_recv parks it without a lock (std's
        // sync_channel registered each sleeping receiver under a mutex that the core's
        // sends contended for).
        let mut failed = false;
        while let Some(step) = steps.blocking_recv() {
            // After a failed (or called off) restore, every step is refused but the proposals,
            // kept to be answered with the stop; the core, woken, stops and closes the queue.
            if let Err(reason) = self.take(step)
                && !failed
            {
                failed = true;
                self.shared.set_stop_reason(reason);
                self.wake_core();
            }
        }
        self.finish();
    }

    /// Takes one step. Fails only when a restore fails: the node cannot apply what follows.
    pub(crate) fn take(&mut self, step: ApplyStep<SM>) -> Result<(), StopReason> {
        if let Some(reason) = &self.failed {
            let reason = reason.clone();
            if let ApplyStep::Register(registrations) = step {
                registrations.into_iter().for_each(|r| self.register(r));
            }
            return Err(reason);
        }
        match step {
            ApplyStep::Register(registrations) => registrations.into_iter().for_each(|r| self.register(r)),
            ApplyStep::Restore { meta, pieces } => {
                let mut source = ChannelChunks(pieces);
                let restored = self.restore(meta, &mut SnapshotReader::new(&mut source));
                if let Err(reason) = &restored {
                    // Recorded before `pieces` closes, so that the core, which then finds it
                    // closed, reports this reason.
                    self.shared.set_stop_reason(reason.clone());
                }
                restored?;
            }
            ApplyStep::Apply(entries, handed) => {
                self.apply(entries);
                self.shared.metrics.apply_latency.record(handed.elapsed());
            }
            ApplyStep::Read { applied_min, reads } => self.serve(applied_min, reads),
            // A snapshot's outcome goes to the core, which stops the node if it failed; a
            // failed restore also ends the steps here.
            ApplyStep::Snapshot(task) => task.run(self)?,
        }
        Ok(())
    }

    /// After a failed restore: every later step is refused with `reason`.
    pub(crate) fn refuse_after(&mut self, reason: StopReason) {
        self.failed.get_or_insert(reason);
    }

    /// Answers every proposal still pending with the reason the node stopped.
    pub(crate) fn finish(mut self) {
        let error = self.shared.stopped_error();
        self.shared.metrics.proposals(Outcome::Stopped, self.pending.len() as u64);
        for registration in std::mem::take(&mut self.pending) {
            registration.responder.answer(Err(error.clone()));
        }
    }

    /// Remembers a proposal. One registered earlier at the same index in an older term was
    /// definitely not committed: a leader appended a new entry there, and a leader's log holds
    /// every committed entry.
    fn register(&mut self, registration: Registration<SM::Response>) {
        let index = registration.index;
        if self.pending.back().is_none_or(|last| last.index < index) {
            self.pending.push_back(registration);
            return;
        }
        // Rare: a new leader appending at indexes it replaced.
        let position = self.pending.partition_point(|pending| pending.index < index);
        match self.pending.get_mut(position) {
            Some(older) if older.index == index => {
                let older = std::mem::replace(older, registration);
                self.shared.metrics.proposals(Outcome::LeadershipLost, 1);
                older.responder.answer(Err(ProposeError::LeadershipLost { index, term: older.term }));
            }
            _ => self.pending.insert(position, registration),
        }
    }

    /// Removes and returns the proposal registered at `index`, if any.
    fn take_registration(&mut self, index: Index) -> Option<Registration<SM::Response>> {
        if self.pending.front().is_some_and(|first| first.index == index) {
            return self.pending.pop_front();
        }
        let position = self.pending.partition_point(|pending| pending.index < index);
        match self.pending.get(position) {
            Some(pending) if pending.index == index => self.pending.remove(position),
            _ => None,
        }
    }

    /// Restores the state machine from a snapshot, streamed by `reader`. Proposals at or below its
    /// index can no longer be matched with their entry: their outcome is unknown.
    pub(crate) fn restore(&mut self, meta: SnapshotMeta, reader: &mut SnapshotReader<'_>) -> Result<(), StopReason> {
        let restored = self.restore_inner(meta, reader);
        if let Err(reason) = &restored {
            self.refuse_after(reason.clone());
        }
        restored
    }

    fn restore_inner(&mut self, meta: SnapshotMeta, reader: &mut SnapshotReader<'_>) -> Result<(), StopReason> {
        let read_failed = |error| StopReason::StorageFailed(StorageFailure::read(error));
        let restored = self.state_machine.restore(reader);
        if let Some(error) = reader.failure() {
            // The store failed (or the data changed) under the state machine, whatever it made
            // of the error it was given.
            return Err(read_failed(error));
        }
        if let Err(error) = restored {
            // Refused: perhaps because bytes changed after the first pass (a state machine
            // that decodes fails on them before the reader's checksum does). The rest is read
            // so that the store's failure, if it is one, is reported as such.
            reader.drain().map_err(read_failed)?;
            return Err(StopReason::RestoreFailed(Arc::new(error)));
        }
        // The checksum covers what the state machine left unread.
        reader.drain().map_err(read_failed)?;
        self.applied = meta.index;
        self.snapshot_index = meta.index;
        self.shared.set_applied(meta.index);
        self.shared.metrics.applied_index.set(meta.index.0 as f64);
        let covered = self.pending.partition_point(|pending| pending.index <= meta.index);
        self.shared.metrics.proposals(Outcome::Unknown, covered as u64);
        for registration in self.pending.drain(..covered) {
            let index = registration.index;
            registration.responder.answer(Err(ProposeError::OutcomeUnknown { index }));
        }
        self.shared.emit(NodeEvent::SnapshotRestored { index: meta.index });
        Ok(())
    }

    /// Applies consecutive committed entries and answers their proposals; then takes a snapshot
    /// if the policy says so.
    fn apply(&mut self, entries: Vec<Entry>) {
        // The permits of the proposals answered in this batch, given back together at its end.
        let mut released = None;
        // Proposals answered in this batch: applied, and replaced by a later leader's entry.
        let mut answered = (0, 0);
        for entry in entries {
            // The core hands out committed entries in order, each once, after the restored
            // snapshot: anything else is a bug in the core or in this driver.
            assert_eq!(entry.index, self.applied.next(), "committed entries out of order");
            let response = match &entry.payload {
                EntryPayload::Normal(command) => Some(self.state_machine.apply(entry.index, command)),
                _ => None, // No-ops (and future internal entries) do not reach the state machine.
            };
            self.applied = entry.index;
            self.answer(&entry, response, &mut released, &mut answered);
        }
        drop(released);
        self.shared.set_applied(self.applied);
        let metrics = &self.shared.metrics;
        metrics.proposals(Outcome::Applied, answered.0);
        metrics.proposals(Outcome::LeadershipLost, answered.1);
        metrics.applied_index.set(self.applied.0 as f64);
        self.maybe_snapshot();
    }

    /// Answers the proposal registered at `entry.index`, if any: (index, term) names one entry,
    /// so the same term means this is the proposal's entry, another term that it was replaced.
    /// Counts it in `answered` (applied, replaced).
    fn answer(
        &mut self,
        entry: &Entry,
        response: Option<SM::Response>,
        released: &mut Option<OwnedSemaphorePermit>,
        answered: &mut (u64, u64),
    ) {
        let Some(registration) = self.take_registration(entry.index) else { return };
        let outcome = match response {
            Some(response) if registration.term == entry.term => {
                answered.0 += 1;
                Ok(response)
            }
            _ => {
                answered.1 += 1;
                Err(ProposeError::LeadershipLost { index: entry.index, term: registration.term })
            }
        };
        registration.responder.answer_releasing_with(outcome, released);
    }

    /// Runs read queries against the state machine as it is now.
    fn serve(&self, applied_min: Index, reads: Vec<PendingRead<SM>>) {
        // The core hands out a confirmed read only after the entries up to its index, and this
        // queue keeps their order: a read served earlier would miss a write it must see.
        assert!(self.applied >= applied_min, "a read at {applied_min} was served at {}", self.applied);
        for read in reads {
            read.serve(&self.state_machine);
        }
    }

    /// Asks the core for a snapshot when the policy says so: the core owns the store the
    /// snapshot is written into; it begins an owned writer there and hands back a task that has
    /// [`Applier::snapshot`] write into it (see `SnapshotJob`).
    fn maybe_snapshot(&mut self) {
        let every = self.snapshot_every_entries;
        if every == 0 || self.applied.0 < self.snapshot_index.0.saturating_add(every) {
            return;
        }
        // Not asked again before `every` more entries, whether or not this one is saved.
        self.snapshot_index = self.applied;
        self.shared.want_snapshot();
        self.wake_core();
    }

    /// Has the state machine write a snapshot of its state (at `applied`) into `out`. `Ok(false)`
    /// if `out` stopped taking it (its owner knows why); the state machine's own failure is
    /// [`StopReason::SnapshotFailed`].
    pub(crate) fn snapshot(&mut self, out: &mut dyn PieceOut) -> Result<bool, StopReason> {
        let mut sink = SnapshotSink::new(out);
        let written = self.state_machine.snapshot(&mut sink).and_then(|()| io::Write::flush(&mut sink));
        if sink.closed() {
            return Ok(false);
        }
        written.map_err(|error| StopReason::SnapshotFailed(Arc::new(error)))?;
        self.snapshot_index = self.applied;
        Ok(true)
    }

    fn wake_core(&self) {
        if let Some(sender) = self.wake.upgrade() {
            // A full queue wakes the core anyway, and the core checks the snapshot request and the
            // stop reason on every iteration.
            let _ = sender.try_send(CoreInput::Wake);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use raft_core::Term;
    use tokio::sync::{Semaphore, mpsc, oneshot};

    use super::*;
    use crate::node::shared::Responder;

    /// Answers each command with its index.
    struct Echo;

    impl StateMachine for Echo {
        type Response = Index;
        type RestoreError = Infallible;
        fn apply(&mut self, index: Index, _command: &Bytes) -> Index {
            index
        }
        fn snapshot(&self, _sink: &mut dyn io::Write) -> io::Result<()> {
            Ok(())
        }
        fn restore(&mut self, _reader: &mut dyn io::Read) -> Result<(), Infallible> {
            Ok(())
        }
    }

    /// The data of an empty snapshot.
    struct Empty;

    impl crate::node::snapshot::ChunkSource for Empty {
        fn next_chunk(&mut self) -> Result<Option<Bytes>, raft_core::StorageError> {
            Ok(None)
        }
    }

    type Outcome = oneshot::Receiver<Result<Index, ProposeError>>;

    fn register(applier: &mut Applier<Echo>, permits: &Arc<Semaphore>, index: u64, term: u64) -> Outcome {
        let (sender, receiver) = oneshot::channel();
        let permit = Arc::clone(permits).try_acquire_owned().expect("enough permits");
        let responder = Responder::new(sender, permit);
        applier.register(Registration { index: Index(index), term: Term(term), responder });
        receiver
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index: Index(index), term: Term(term), payload: EntryPayload::Normal(Bytes::from_static(b"x")) }
    }

    fn outcome(mut receiver: Outcome) -> Result<Index, ProposeError> {
        receiver.try_recv().expect("answered")
    }

    #[test]
    fn proposals_are_matched_by_index_in_any_registration_order() {
        let (wake, _wake_receiver) = mpsc::channel(1);
        let metrics = crate::metrics::GroupMetrics::new(raft_core::NodeId(1), raft_core::GroupId::DEFAULT);
        let mut applier = Applier::new(Echo, Arc::new(Shared::new(4, metrics)), wake.downgrade(), 0);
        let permits = Arc::new(Semaphore::new(16));
        let third = register(&mut applier, &permits, 3, 1);
        let first = register(&mut applier, &permits, 1, 1);
        let replaced = register(&mut applier, &permits, 2, 1);
        let second = register(&mut applier, &permits, 2, 2);
        // A later leader's entry at the same index: the older proposal was not committed.
        assert!(matches!(outcome(replaced), Err(ProposeError::LeadershipLost { index: Index(2), term: Term(1) })));
        let fifth = register(&mut applier, &permits, 5, 2);
        let sixth = register(&mut applier, &permits, 6, 2);
        applier.apply(vec![entry(1, 1), entry(2, 2), entry(3, 2)]);
        assert!(matches!(outcome(first), Ok(Index(1))));
        assert!(matches!(outcome(second), Ok(Index(2))));
        // Index 3 holds another term's entry: the proposal registered there was replaced.
        assert!(matches!(outcome(third), Err(ProposeError::LeadershipLost { index: Index(3), term: Term(1) })));
        // A snapshot up to 5 leaves the proposal at 5 unknown and the one at 6 pending.
        let meta = SnapshotMeta { index: Index(5), term: Term(2), ..SnapshotMeta::default() };
        applier.restore(meta, &mut SnapshotReader::new(&mut Empty)).expect("restored");
        assert!(matches!(outcome(fifth), Err(ProposeError::OutcomeUnknown { index: Index(5) })));
        assert_eq!(applier.pending.len(), 1);
        applier.apply(vec![entry(6, 2)]);
        assert!(matches!(outcome(sixth), Ok(Index(6))));
        assert!(applier.pending.is_empty());
        assert_eq!(permits.available_permits(), 16, "every answer released its permit");
    }

    /// The data of a snapshot whose store fails.
    struct Failing;

    impl crate::node::snapshot::ChunkSource for Failing {
        fn next_chunk(&mut self) -> Result<Option<Bytes>, raft_core::StorageError> {
            Err(raft_core::StorageError::SnapshotCorrupt { index: Index(5), offset: 0 })
        }
    }

    /// After a failed restore the state machine may hold part of a snapshot: the applier applies
    /// nothing and serves no read (not even a stale one) over it, and answers the proposals it
    /// still registers with the reason once it finishes. (Off the worker, the steps that waited
    /// for the restore reach it after the failure.)
    #[test]
    fn after_a_failed_restore_nothing_is_applied_or_served() {
        let (wake, _wake_receiver) = mpsc::channel(1);
        let metrics = crate::metrics::GroupMetrics::new(raft_core::NodeId(1), raft_core::GroupId::DEFAULT);
        let shared = Arc::new(Shared::new(4, metrics));
        let mut applier = Applier::new(Echo, Arc::clone(&shared), wake.downgrade(), 0);
        // Restored at 5, then a second restore (of a snapshot at 5 too) fails: entry 6 would
        // follow on from the applied index, and must not be applied all the same.
        let meta = SnapshotMeta { index: Index(5), term: Term(2), ..SnapshotMeta::default() };
        applier.restore(meta.clone(), &mut SnapshotReader::new(&mut Empty)).expect("restored");
        let reason = applier.restore(meta, &mut SnapshotReader::new(&mut Failing)).expect_err("the store failed");
        assert!(matches!(reason, StopReason::StorageFailed(_)), "{reason:?}");
        let refused = applier.take(ApplyStep::Apply(vec![entry(6, 2)], std::time::Instant::now()));
        assert_eq!(refused.expect_err("refused").to_string(), reason.to_string());
        assert_eq!(applier.applied, Index(5), "nothing applied");
        let (sender, mut answer) = oneshot::channel::<Result<u64, crate::ReadError>>();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().expect("a permit");
        let read = PendingRead::new(|_: &Echo| 7, sender, permit);
        assert!(applier.take(ApplyStep::Read { applied_min: Index(0), reads: vec![read] }).is_err());
        assert!(answer.try_recv().is_err(), "the stale read was not served");
        let permits = Arc::new(Semaphore::new(1));
        let (sender, mut proposal) = oneshot::channel();
        let responder = Responder::new(sender, Arc::clone(&permits).try_acquire_owned().expect("a permit"));
        let registration = Registration { index: Index(6), term: Term(2), responder };
        assert!(applier.take(ApplyStep::Register(vec![registration])).is_err());
        shared.set_stop_reason(reason);
        applier.finish();
        let answered = proposal.try_recv();
        assert!(matches!(answered, Ok(Err(_))), "answered with the stop: {answered:?}");
    }
}
