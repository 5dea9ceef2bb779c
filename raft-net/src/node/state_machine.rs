//! The application's side: the replicated state machine the node applies committed commands to.

use bytes::Bytes;
use raft_core::Index;

/// The application's replicated state machine.
///
/// The node calls it from one dedicated apply thread, in log order: [`StateMachine::apply`] once
/// per committed command (no-op entries that leaders append are not passed on), exactly once per
/// incarnation of the node. After a restart, the node first restores the state machine from the
/// store's latest snapshot (if any) and then applies the entries after it; a node that falls
/// behind a compacted log is restored from the leader's snapshot the same way.
///
/// **Snapshot data is held whole in memory by this driver version**: [`StateMachine::snapshot`]
/// returns all of it as one [`Bytes`], and [`StateMachine::restore`] receives all of it. The core
/// and the stores stream snapshots in bounded chunks (to peers and to and from disk); a streaming
/// state-machine interface, which would keep memory bounded end to end, is future work.
pub trait StateMachine: Send + 'static {
    /// What [`StateMachine::apply`] answers; handed to the proposer by
    /// [`NodeHandle::propose`](crate::NodeHandle::propose) on the node that proposed the command.
    type Response: Send + 'static;
    /// Why [`StateMachine::restore`] refused a snapshot.
    type RestoreError: std::error::Error + Send + Sync + 'static;

    /// Applies the command committed at `index`. Must be deterministic: every member applies the
    /// same commands in the same order and must reach the same state.
    fn apply(&mut self, index: Index, command: &Bytes) -> Self::Response;

    /// Serializes the whole state (as it is after the last applied command), for a snapshot that
    /// lets the log be compacted. Called on the apply thread, per the node's snapshot policy.
    fn snapshot(&self) -> Bytes;

    /// Replaces the whole state by the one `data` describes (written by [`StateMachine::snapshot`],
    /// possibly on another member). An error stops the node: it cannot apply what follows.
    fn restore(&mut self, data: Bytes) -> Result<(), Self::RestoreError>;
}
