//! The tokio node drivers: run Raft groups over stores, transports and the application's state
//! machines, and give clients a [`NodeHandle`] per group. [`Host`] runs many groups of one node
//! on a fixed pool of worker threads (or as one task); [`start`] runs one group, as the
//! one-group case of the same machinery: a host of its own, with one worker.
//!
//! ## Threads, tasks and queues
//!
//! ```text
//!  transport receiver (the transport's own limit) ───────────────────┐
//!  the host's ticker (timers due) ───────┐  input queue               │
//!  NodeHandle: propose, read, ───────────┴─(input_queue_items_max)─> a worker ─(apply_queue_batches_max)─> apply thread
//!              status, shutdown                                     steps the group:   owns the state machine
//!                                                                   owns Raft +        (Execution::Threads; else
//!                                                                   storage; sends     the worker applies)
//! ```
//!
//! - A **worker** (a `std::thread` of the host) is, while it steps a group, the one owner of the
//!   group's [`raft_core::Raft`] node and of its storage; storage writes run inline on it, never
//!   on the async workers. A group is stepped by one worker at a time, in rounds (see the `host`
//!   module): each takes the group's queued inputs (up to `input_batch_items_max`), then its
//!   queued peer messages (up to `input_batch_items_max` again), steps them, and carries out the
//!   outputs with one `LogStore::write_outputs` for every group of the round (one fsync for the
//!   whole batch: group commit). An idle worker polls for work for `idle_poll` before it sleeps.
//!   Anything sent into a group's queues wakes it. Messages not taken yet wait in the
//!   transport's bounded receiver of the group: when it is full, the TCP transport's readers
//!   wait (pushing back on the peer's connection), for at most the transport's
//!   `inbound_full_timeout` since that connection carries the node's other groups too, then drop
//!   (counted); the in-memory one drops the message at once (as a lossy network would; Raft
//!   resends).
//! - The **apply thread** ([`Execution::Threads`], [`start`]'s default) owns the
//!   [`StateMachine`]: it applies committed entries in order, answers the proposals the core
//!   registered, runs read queries, restores snapshots, and asks the core for a snapshot per the
//!   policy (`snapshot_every_entries`). Otherwise (every group of a shared [`Host`],
//!   [`Execution::OneThread`], [`Execution::Tasks`]) the worker takes the apply steps itself, in
//!   the same order, right after each group commit.
//! - **Snapshots stream** between the state machine and the store in pieces of at most 1 MiB
//!   ([`SNAPSHOT_WRITE_BYTES_MAX`], [`SNAPSHOT_READ_BYTES_MAX`]), never whole in memory.
//!   *Taking* one does not block the worker (but for the cases docs/multi-raft.md lists): it begins an owned writer in the store
//!   (`LogStore::begin_snapshot_owned`) and hands the state machine a task that writes into it
//!   and makes it durable, as a `Snapshot` step of the apply thread's queue, or, applied inline,
//!   on a thread of its own that the applier moves to (the steps handed to it meanwhile wait on
//!   the worker, in order, up to what the apply queue may hold). The job wakes the group when it
//!   ends; the worker saves it (`LogStore::save_taken_snapshot`) and compacts. Under
//!   [`Execution::Tasks`] the applier moves to a task of the host's `LocalSet` instead, which
//!   runs the job a tick later (or when the worker must wait for it), so that a seeded replay
//!   stays exact and the simulation still sees the group go on without its state machine.
//!   *Restoring* is a job the same
//!   way, over a reader the store opens for another thread
//!   ([`LogStore::open_snapshot_owned`](raft_storage::LogStore::open_snapshot_owned)); an
//!   install arriving meanwhile waits for it before its write (the store may remove the file
//!   being read). With a store that has no such reader (or with no slot of the host free) it
//!   stays on the worker: applied inline, the state machine reads the store's
//!   chunks itself; with an apply thread, the worker hands it a `Restore` step with a channel of
//!   at most [`SNAPSHOT_PIECES_QUEUED_MAX`] pieces and moves the store's chunks into it until the
//!   step is done, waiting for the apply thread as it waits on a full apply queue (the apply
//!   thread waits on the worker only for the pieces of that step: no deadlock).
//! - The host's **ticker** wakes a group when its timers are due
//!   ([`raft_core::Raft::ticks_until_due`]). The group reads tokio's monotonic clock itself:
//!   every whole tick of real time reaches the core's clock before any input is judged (so a
//!   stall or a pause counts in full against a lease), the timer ticks that fire nothing run
//!   before the inputs, and the due ones after them, at most [`TICKS_PER_ITERATION_MAX`] per
//!   round ([`DriverClock`] is that policy, which the simulator shares).
//!
//! With [`Execution::Tasks`], the host (worker and ticker in turn) is one task on the
//! `LocalSet` that called [`start`] ([`Host::start_task`]): no thread is spawned, so a
//! single-threaded runtime with a seeded scheduler (the turmoil simulation of the real stack)
//! replays a run exactly. The default, [`Execution::Threads`], keeps storage I/O and applying
//! off the async workers and off each other.
//!
//! Every queue is bounded by a named limit in [`NodeConfig`]: `proposals_pending_max` (permits
//! held from `propose` until the answer), `reads_pending_max` (the same for `read`),
//! `input_queue_items_max`, `apply_queue_batches_max`
//! (each batch at most the core's `apply_bytes_max`), `event_queue_events_max`. The worker
//! waits on a full apply queue; the apply thread never waits on the core (it only `try_send`s a
//! wake-up), so the two cannot deadlock.
//!
//! ## The driving contract
//!
//! The core follows raft-core's driving contract rule by rule: messages from `messages`
//! go out before the write (rule 4); `write_output` persists snapshot chunks, the install, hard
//! state and entries with one sync (rule 3); `on_persisted` reports the last entry (or the
//! installed snapshot) (rule 6); `messages_after_persist` go out only after that write, and every
//! earlier one, returned (rule 5: writes are synchronous, so every earlier output is durable);
//! an installed snapshot's data is read back from the store and restores the state machine before
//! that output's committed entries are applied (rule 7), and the store's snapshot restores it at
//! start, in both cases only once the data read back matches the snapshot's `data_crc32` (a
//! mismatch is a storage failure: rule 10, damaged bytes never reach the state machine). The data
//! is read twice, a chunk at a time: a first pass only checks the checksum, the second streams it
//! to the state machine and checks again, withholding the last chunk unless it matches (bytes
//! that change between the passes fail the restore before the state machine sees its end); any
//! storage error stops the node (rule 8, fail-stop: nothing more is written, sent or
//! acknowledged), a snapshot that fails its checksum when the core reads it back to send
//! included; snapshots are written by the state machine a piece at a time into
//! `LogStore::begin_snapshot`'s writer, described with `snapshot_meta` and the crc32 of their
//! data (given when the writer finishes, which saves it durably), and followed by `compact` at
//! `compaction_point` (rule 9).
//!
//! ## Proposals and their outcome
//!
//! A proposal the core refuses (this node does not lead, a leadership transfer is in progress,
//! ...) fails at once with [`ProposeError::Refused`], which carries the core's reason whole and,
//! when it names the leader, that leader's address from the address book
//! ([`ProposeError::leader_hint`]). The driver's own failures have their own variants: its
//! proposal queue full ([`ProposeError::TooBusy`], from `try_propose`), or the outcomes below.
//! The other errors of the handle follow the same pattern ([`ReadError::Refused`],
//! [`MembershipChangeError::Refused`], [`TransferLeadershipError::Refused`]).
//!
//! A proposal is appended at (index, term) by the leader and answered when the entry at that
//! index is applied: the same term means it is the proposal's entry (the answer is the state
//! machine's response); another term means a later leader replaced it, so it was definitely not
//! committed ([`ProposeError::LeadershipLost`]). A snapshot from the leader that covers the index
//! leaves the outcome unknown ([`ProposeError::OutcomeUnknown`]), and so does a shutdown or a
//! failure before the answer ([`ProposeError::ShuttingDown`], [`ProposeError::StorageFailed`]).
//!
//! ## Reads
//!
//! [`NodeHandle::read`] runs a query (a closure over `&SM`) on the apply thread and returns its
//! result, as fresh as the [`ReadConsistency`] asks:
//!
//! - `Linearizable`: the core's ReadIndex (Raft thesis §6.4). The leader notes its commit index
//!   and confirms with a heartbeat round that it still leads; on a follower the core asks the
//!   leader for that index (follower reads). No log write.
//! - `Lease`: the leader answers from its lease, with no round trip while a quorum answered
//!   recently. The lease is judged by a reading of the monotonic clock taken after the read
//!   arrived, so it holds through stalls and pauses of the process; it rests on one assumption,
//!   that clock rates drift less than the core's `clock_drift_max_ticks` allows (see
//!   [`DriverClock`]). Needs the core option `lease_reads`.
//! - `Stale`: the core is not asked; the query sees whatever is applied.
//!
//! The core numbers each read (a counter), asks the core with [`raft_core::Raft::read`]
//! and keeps the query until the core's answer comes in an output's `reads`. The core answers
//! `Ok(index)` only once it has handed out the committed entries up to `index`, and the core
//! thread puts each output's committed entries on the apply queue *before* that output's
//! confirmed reads: the queue is ordered, so the apply thread runs the query after applying
//! everything up to the read's index (it asserts so). A read the core refuses or abandons
//! (no leader, leadership changed, too many pending, leases off) fails with the core's reason
//! ([`ReadError::Refused`]); on shutdown or fail-stop every read not yet handed to the apply thread fails
//! with the stop reason ([`ReadError::ShuttingDown`], [`ReadError::StorageFailed`]).
//!
//! ## Membership changes and leadership transfers
//!
//! [`NodeHandle::change_membership`] asks the leader's core for a change and answers once it is
//! complete on this node: the change's entry and, for a change of voters, the leave entry the
//! leader appends by itself are committed and handed to the state machine. Losing leadership
//! first leaves the outcome unknown. [`NodeHandle::transfer_leadership`] answers once this node
//! knows the target leads, or after [`TRANSFER_ELECTION_TIMEOUTS_MAX`] election timeouts. The
//! transport must know a new member's address before it is added (the application owns the
//! transport: keep an `Arc` of it, `Transport for Arc<T>`, and call `TcpTransport::add_peer`);
//! [`NodeHandle::add_address`] adds it to the address book that refusals naming the leader are answered from.
//!
//! ## Limits of this version
//!
//! A store that keeps the default `LogStore::begin_snapshot` buffers a snapshot being taken
//! whole (raft-storage's durable stores do not; `MemStorage` keeps snapshots in memory). While a snapshot is written or restored, the worker
//! waits for it: the group (and, on a shared [`Host`], that worker's other groups) makes no
//! progress meanwhile. A follower's forwarded read whose request or answer is lost waits until that follower's leader changes (the core does not retransmit it):
//! callers bound reads with a timeout.

mod apply;
mod clock;
mod config;
mod core;
mod error;
mod event;
mod handle;
mod host;
mod membership;
mod read;
mod shared;
mod snapshot;
mod state_machine;

pub use clock::{DUE_TICKS_BEFORE_MAX, DriverClock};
pub use config::{
    APPLY_QUEUE_BATCHES_MAX_DEFAULT, ConfigError, ConfigLimit, EVENT_QUEUE_EVENTS_MAX_DEFAULT, Execution,
    IDLE_POLL_DEFAULT, INPUT_BATCH_ITEMS_MAX_DEFAULT, INPUT_QUEUE_ITEMS_MAX_DEFAULT, NodeConfig,
    PROPOSALS_PENDING_MAX_DEFAULT, READS_PENDING_MAX_DEFAULT, TICK_INTERVAL_DEFAULT, TICKS_PER_ITERATION_MAX,
};
pub use error::{
    MembershipChangeError, NodeStartError, ProposeError, ReadError, SharedError, StopReason, StorageFailure,
    StorageOperation, TransferLeadershipError,
};
pub use event::{NodeEvent, NodeStatus, PeerStatus};
pub use handle::{NodeHandle, start};
pub use host::{
    GROUPS_PER_BATCH_MAX_DEFAULT, GroupSummary, Host, HostConfig, HostError, HostStats, HostStatus, PeerWatch,
};
pub use membership::TRANSFER_ELECTION_TIMEOUTS_MAX;
pub use read::ReadConsistency;
pub use snapshot::{SNAPSHOT_PIECES_QUEUED_MAX, SNAPSHOT_READ_BYTES_MAX, SNAPSHOT_WRITE_BYTES_MAX, SnapshotSinkClosed};
pub use state_machine::StateMachine;
