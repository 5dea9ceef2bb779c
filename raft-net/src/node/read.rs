//! Reads: how fresh a client wants its answer ([`ReadConsistency`]), and a client's query on its
//! way from the handle through the core to the apply thread.

use raft_core::ReadMode;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::error::ReadError;

/// How fresh the state a [`NodeHandle::read`](crate::NodeHandle::read) query sees must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadConsistency {
    /// Linearizable (ReadIndex, Raft thesis §6.4): the query sees every write that completed
    /// before the read was asked, on any member. The leader confirms it still leads with a round
    /// of heartbeats; a follower asks the leader for its commit index the same way and runs the
    /// query once it has applied up to that index (a *follower read*). One round trip to a
    /// quorum, no log write.
    Linearizable,
    /// Linearizable as long as clocks drift by less than the core's `clock_drift_max_ticks`: the
    /// leader answers from its lease, with no round trip while a quorum answered recently; a
    /// follower asks the leader. Needs the core option `lease_reads` (which needs check-quorum);
    /// otherwise is refused with the core's [`LeaseNotEnabled`](raft_core::ReadError::LeaseNotEnabled).
    Lease,
    /// Whatever this node has applied now, with no check at all: may miss writes that completed
    /// elsewhere (a lagging follower, a leader cut off from the majority, a node without a
    /// leader). Always answers while the node runs.
    Stale,
}

impl ReadConsistency {
    /// The core's mode for this consistency, or `None` for a stale read (the core is not asked).
    pub(crate) fn mode(self) -> Option<ReadMode> {
        match self {
            ReadConsistency::Linearizable => Some(ReadMode::ReadIndex),
            ReadConsistency::Lease => Some(ReadMode::Lease),
            ReadConsistency::Stale => None,
        }
    }
}

/// Either runs the query against the state machine and sends its result, or sends the error.
type Answer<SM> = Box<dyn FnOnce(Result<&SM, ReadError>) + Send>;

/// A client's read that was not answered yet: its query, boxed with the channel the answer goes
/// to, and one of the `reads_pending_max` permits, held until it is answered. Dropped unanswered
/// (a panic), the client sees the node's stop reason.
pub(crate) struct PendingRead<SM> {
    answer: Answer<SM>,
    _permit: OwnedSemaphorePermit,
}

impl<SM: 'static> PendingRead<SM> {
    /// A read that will answer `query`'s result (or an error) on `sender`.
    pub(crate) fn new<R, Q>(
        query: Q,
        sender: oneshot::Sender<Result<R, ReadError>>,
        permit: OwnedSemaphorePermit,
    ) -> Self
    where
        R: Send + 'static,
        Q: FnOnce(&SM) -> R + Send + 'static,
    {
        let answer = move |state: Result<&SM, ReadError>| {
            // An error only means that the reader stopped waiting.
            let _ = sender.send(state.map(query));
        };
        PendingRead { answer: Box::new(answer), _permit: permit }
    }

    /// Runs the query against `state_machine` and answers with its result.
    pub(crate) fn serve(self, state_machine: &SM) {
        (self.answer)(Ok(state_machine));
    }

    /// Answers with `error`; the query does not run.
    pub(crate) fn fail(self, error: ReadError) {
        (self.answer)(Err(error));
    }
}

/// A read for the core.
pub(crate) struct ReadRequest<SM> {
    pub(crate) consistency: ReadConsistency,
    pub(crate) read: PendingRead<SM>,
}
