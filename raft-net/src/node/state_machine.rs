//! The application's side: the replicated state machine the node applies committed commands to.

use std::io;

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
/// Snapshots stream both ways, so that a state far larger than memory never sits whole in
/// memory: [`StateMachine::snapshot`] writes into an [`io::Write`] sink whose bytes go to the
/// store in pieces of at most [`SNAPSHOT_WRITE_BYTES_MAX`](crate::SNAPSHOT_WRITE_BYTES_MAX), and
/// [`StateMachine::restore`] reads from an [`io::Read`] that reads the store's snapshot in chunks
/// of at most [`SNAPSHOT_READ_BYTES_MAX`](crate::SNAPSHOT_READ_BYTES_MAX). Any streaming encoder
/// fits (postcard's or bincode's `std::io` writers and readers, a length-prefixed record per
/// item). Whether memory then stays bounded end to end also depends on the store: raft-storage's
/// durable stores write and read snapshots through to disk a piece at a time, while a store that
/// keeps the default `LogStore::begin_snapshot` buffers a snapshot being taken.
pub trait StateMachine: Send + 'static {
    /// What [`StateMachine::apply`] answers; handed to the proposer by
    /// [`NodeHandle::propose`](crate::NodeHandle::propose) on the node that proposed the command.
    type Response: Send + 'static;
    /// Why [`StateMachine::restore`] refused a snapshot.
    type RestoreError: std::error::Error + Send + Sync + 'static;

    /// Applies the command committed at `index`. Must be deterministic: every member applies the
    /// same commands in the same order and must reach the same state.
    fn apply(&mut self, index: Index, command: &Bytes) -> Self::Response;

    /// Writes the whole state (as it is after the last applied command) into `sink`, for a
    /// snapshot that lets the log be compacted. Called per the node's snapshot policy, off the
    /// thread that steps the group: on the apply thread
    /// ([`Execution::Threads`](crate::Execution::Threads)), or, for a state machine applied
    /// inline ([`Execution::OneThread`](crate::Execution::OneThread), every group of a shared
    /// [`Host`](crate::Host)), on a thread of its own that the state machine moves to for the
    /// snapshot. Meanwhile the group keeps replicating and committing, but applies nothing and
    /// serves no read until this returns (under [`Execution::Tasks`](crate::Execution::Tasks) it
    /// runs on another task of the host's `LocalSet`). Write it a piece at a time (`sink`
    /// gathers small writes into bounded pieces, so there is no need to buffer); the snapshot is
    /// saved once this returns `Ok`.
    ///
    /// An error from `sink` means the store failed or the node gave up on this snapshot (its
    /// inner error is a [`SnapshotSinkClosed`](crate::SnapshotSinkClosed)): return it; the node
    /// reports the store's failure, or nothing if it only called this snapshot off (the node is
    /// stopping, or a snapshot from the leader is being installed). Any other error (the state machine's own, as an
    /// [`io::Error`] with its typed error inside) stops the node with
    /// [`StopReason::SnapshotFailed`](crate::StopReason::SnapshotFailed).
    fn snapshot(&self, sink: &mut dyn io::Write) -> io::Result<()>;

    /// Replaces the whole state by the one `reader` yields (written by
    /// [`StateMachine::snapshot`], possibly on another member). The data has already been checked
    /// against the snapshot's checksum once, so damaged bytes never get here; should the store
    /// fail or the data change while it is read, `reader` returns an [`io::Error`] whose inner
    /// error is a [`raft_core::StorageError`], before the last byte. Return it (in your
    /// `RestoreError`): the node then stops with
    /// [`StopReason::StorageFailed`](crate::StopReason::StorageFailed), whatever the error says.
    /// Any other error stops it with [`StopReason::RestoreFailed`](crate::StopReason::RestoreFailed):
    /// it cannot apply what follows. Data left unread is read (and checked) by the node. A
    /// shutdown also makes `reader` fail (with a [`raft_core::StorageError::Io`] of kind
    /// `Interrupted` inside): return it as well; the node then stops with
    /// [`StopReason::Shutdown`](crate::StopReason::Shutdown) and restores again when it
    /// restarts. Build the new state aside and switch to it only once the data ended well: a
    /// state machine that changes its state as it reads keeps a partial state when a restore
    /// fails or is called off.
    fn restore(&mut self, reader: &mut dyn io::Read) -> Result<(), Self::RestoreError>;
}
