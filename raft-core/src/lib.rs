//! # raft-core
//!
//! A deterministic, sans-IO implementation of the Raft consensus algorithm. The core reads no
//! clock, no ambient randomness, no socket and no file: time arrives as [`Raft::tick`], randomness
//! as a seed in [`Options`], messages through [`Raft::step`], and everything the node wants done
//! leaves as an [`Output`] batch that a *driver* carries out.
//!
//! ## The API
//!
//! [`Raft`]'s methods come in three groups, each one `impl` block in the docs:
//!
//! - **Inputs**: [`Raft::new`], time ([`Raft::tick`], [`Raft::advance_clock`],
//!   [`Raft::tick_timers`]), messages ([`Raft::step`]), client requests ([`Raft::propose`],
//!   [`Raft::read`]), administration ([`Raft::campaign`], [`Raft::change_membership`],
//!   [`Raft::transfer_leadership`]) and the driver's reports ([`Raft::on_persisted`],
//!   [`Raft::report_unreachable`], [`Raft::peer_down`]).
//! - **Output**: [`Raft::take_output`] returns one [`Output`] batch of everything to do;
//!   [`Raft::has_output`] says whether there is any.
//! - **Queries**: read-only views such as [`Raft::status`], [`Raft::role`],
//!   [`Raft::snapshot_meta`], [`Raft::compaction_point`], [`Raft::ticks_until_due`] and
//!   [`Raft::is_quiet`].
//!
//! The module [`liveness`] holds the node-level liveness policy ([`liveness::PeerLiveness`]) that
//! a driver of quiet groups ([`Options::quiesce`]) runs once per node.
//!
//! Inside, the node composes owners that each change only their own state: the log, the
//! membership history, the election state and timers, the leader's replication tracker, the
//! read queue and lease, and the two kinds of transfer (snapshot, leadership).
//!
//! ## The driving contract
//!
//! Every driver (the tokio driver in `raft-net`, the simulator, the tests) follows these rules. They
//! are what makes the node safe across crashes.
//!
//! 1. **Inputs.** Call [`Raft::tick`] at a steady logical rate, [`Raft::step`] for each message
//!    received, [`Raft::propose`] for client commands, [`Raft::on_persisted`] when a write finishes,
//!    and [`Raft::report_unreachable`] when a peer cannot be reached.
//!
//!    **Time.** The node has a *clock* and *timers*; [`Raft::tick`] advances both by one tick.
//!    The clock judges every promise about time: a leader serves lease reads until
//!    `election_ticks - clock_drift_max_ticks` after a quorum heard from it, and a follower
//!    neither votes for another node nor campaigns until `election_ticks` after it last heard
//!    from its leader. So the clock must never lag real time when the node judges one: before
//!    handing over a read, or a message, that arrived after time the node has not been told of
//!    (the driver stalled, or its process was paused), bring the clock up to date with
//!    [`Raft::advance_clock`]. The timers (elections, heartbeats, check-quorum) only decide when
//!    to act, and [`Raft::tick_timers`] may run them slower than real time, for example catching
//!    up only a few missed ticks after a stall so that the node reads its queue before it
//!    campaigns. The one assumption left is that the clocks of different nodes run at rates
//!    that differ by less than `clock_drift_max_ticks` per election timeout (see
//!    [`Options::clock_drift_max_ticks`]).
//! 2. **Take the output** with [`Raft::take_output`] after inputs (at the latest before the next
//!    tick). Outputs must be persisted *in the order they were taken*.
//! 3. **Persist**, in this order: write `snapshot_chunks` into the store's staging area (offset 0
//!    starts a new one); if `install_snapshot` is set, install the staged snapshot, atomically
//!    replacing the whole log by it; then `hard_state` (term, vote, commit) and `entries`,
//!    replacing any stored entries from `entries[0].index` on. Durability means fsync.
//!    (`raft_storage::LogStore::write_output` does exactly this.)
//! 4. **Send** `messages` at any time, even before step 3 completes: they are a leader's appends
//!    and heartbeats, which depend only on state made durable when it campaigned (a leader may
//!    replicate before its own copy is durable; thesis §10.2.1).
//! 5. **Send `messages_after_persist` only once this output's writes and every earlier output's
//!    writes are durable** (even when this output itself writes nothing, as for the answer to a
//!    duplicated append). These are votes, vote requests and acknowledgements: a node must never
//!    send a vote or acknowledge an entry that a crash could make it forget.
//! 6. **Report durability** with [`Raft::on_persisted`] for the last entry of each output's
//!    `entries` (for an output that installs a snapshot and appends nothing: the snapshot's index
//!    and term), in output order (a group commit may report only the last write it covered: that
//!    covers every earlier one). A leader counts its own copy toward a quorum only after this
//!    report. Reports are matched against the oldest pending write with that (index, term), so a
//!    write that was replaced and later re-written with equal entries is never confused with the
//!    newer one (the async-write ABA).
//! 7. **Apply** `committed` entries in order, each exactly once per incarnation. Only entries that
//!    are durable locally are handed out. When an output installs a snapshot, restore the state
//!    machine from it before applying that output's `committed`. After a restart the state
//!    machine starts from the store's snapshot and applying resumes at the first entry after it
//!    (index 1 without snapshots).
//! 8. On a storage error, **stop the node** (fail-stop): never acknowledge what was not written.
//!
//!    **Quiet groups.** With [`Options::quiesce`] on, an idle group stops its timers
//!    ([`Raft::is_quiet`]; [`Raft::ticks_until_due`] then says when, if ever, it needs a tick).
//!    A quiet follower learns that its leader's node is gone only from the driver: run one
//!    [`liveness::PeerLiveness`] per node (pings between nodes, a timeout of silence, restarts
//!    seen as new incarnations, lost connections) and call [`Raft::peer_down`] on every group
//!    for each peer it reports. Keep feeding time as in rule 1: the clock judges the lease and
//!    stickiness of quiet groups exactly as of awake ones.
//! 9. **Snapshots** are taken by the application, whenever it likes, of its state machine at an
//!    applied index: [`Raft::snapshot_meta`] describes it (index, term, membership, checksum), the store
//!    saves it durably with its data (`raft_storage::LogStore::save_snapshot`, or a piece at a
//!    time with `LogStore::begin_snapshot`, the checksum given at the end), and then the log
//!    may be compacted at [`Raft::compaction_point`], which keeps `compaction_margin_entries`
//!    below the snapshot for slightly slow followers. A leader streams the snapshot to followers
//!    that need compacted entries, reading it a chunk at a time through
//!    [`Storage::snapshot_chunk`]; memory stays within `snapshot_chunks_inflight_max` chunks per
//!    follower on both sides.
//! 10. **Snapshot integrity.** Describe a snapshot with the checksum of its data
//!     ([`snapshot_crc32`], passed to [`Raft::snapshot_meta`]); it travels in
//!     [`SnapshotMeta::data_crc32`]. A follower installs a received snapshot only after every
//!     chunk matched its own crc and the whole data matched `data_crc32`; otherwise it drops the
//!     transfer (the driver's staging is replaced by the next transfer, which starts at offset
//!     0) and the leader sends it again. A leader whose stored copy fails its check when read
//!     back reports [`StorageError::SnapshotCorrupt`] from [`Raft::take_output`]: stop the node
//!     as in rule 8. Before restoring a state machine from a stored snapshot, check its data
//!     against `data_crc32` too, and treat a mismatch as a storage failure (raft-net's driver
//!     does, in a first pass over the data before the state machine reads it).
//!
//! ## Logging
//!
//! The core logs through `tracing` (and nothing else: logging changes no state). Its events
//! carry the term and whoever caused a change (`election started` with its `cause`, `vote
//! refused` with its `reason`, `term changed by a message` with its sender and kind, `leader
//! changed`, `log truncated` with `from_index` and `entries_removed`, snapshots sent and
//! received) but not the node's id: the driver enters a span that names the node around the
//! calls it makes, as raft-net's driver (`group{node, group, term}`) and the simulator do. The
//! repository's `docs/logging.md` lists every event and field.
//!
//! ## Example
//!
//! A single-node group, driven synchronously over the in-memory store of `raft-storage`:
//!
//! ```
//! use bytes::Bytes;
//! use raft_core::{Membership, NodeId, Options, Raft, EntryPayload};
//! use raft_storage::MemStorage;
//!
//! let options = Options::builder().election_ticks(10).rng_seed(7).build()?;
//! let storage = MemStorage::new(Membership::new([NodeId(1)]));
//! let mut node = Raft::new(NodeId(1), options, storage)?;
//! node.campaign();
//!
//! let mut applied = Vec::new();
//! let mut proposed = false;
//! for _ in 0..10 {
//!     if node.is_leader() && !proposed {
//!         // A lone voter takes proposals once its new term is durable (after the first persist);
//!         // until then it answers ProposeError::TermNotDurable.
//!         proposed = node.propose(Bytes::from_static(b"x=1")).is_ok();
//!     }
//!     let output = node.take_output()?;
//!     // Persist (MemStorage is "durable" at once), then report it.
//!     if let Some(hard_state) = output.hard_state {
//!         node.storage_mut().set_hard_state(hard_state);
//!     }
//!     node.storage_mut().append(&output.entries)?;
//!     if let Some(last) = output.entries.last() {
//!         node.on_persisted(last.index, last.term);
//!     }
//!     // A one-node group has nobody to send to; a real driver sends both message lists here.
//!     assert!(output.messages.is_empty() && output.messages_after_persist.is_empty());
//!     for entry in output.committed {
//!         if let EntryPayload::Normal(command) = entry.payload {
//!             applied.push(command);
//!         }
//!     }
//! }
//! assert_eq!(applied, vec![Bytes::from_static(b"x=1")]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// Asserts a condition the surrounding reasoning relies on, where that reasoning is: in test,
/// simulator and fuzz builds (whenever [`INVARIANTS_CHECKED`] is true, release builds of the
/// simulator included), and compiled to nothing elsewhere. A failure is a bug in this crate.
macro_rules! invariant {
    ($condition:expr, $($message:tt)+) => {
        if $crate::INVARIANTS_CHECKED {
            assert!($condition, $($message)+);
        }
    };
}

mod election;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod liveness;
mod log;
mod membership;
mod message;
mod options;
mod progress;
mod quiesce;
mod quorum;
mod raft;
mod read;
mod replication;
mod snapshot;
mod step;
mod storage;
mod tracker;
mod transfer;
mod types;

pub use error::{Ignored, Malformed, ProposeError, SnapshotError, StepError};
pub use membership::{ConfChange, MembershipError, apply_changes, first_step};
pub use message::{AppendResult, ConflictHint, Message, MessageBody, SnapshotRefusal, snapshot_chunk_crc32};
#[cfg(feature = "bug-knobs")]
pub use options::BugKnobs;
pub use options::{Options, OptionsBuilder, OptionsError};
pub use progress::{FollowerProgress, ProgressState, SNAPSHOT_STALLED_HEARTBEATS, SnapshotSending};
pub use raft::{Output, Raft, Role, SoftState, Status};
pub use read::{ReadError, ReadMode, ReadState};
pub use snapshot::ReceivedChunk;
pub use storage::{InitialState, SnapshotChunk, Storage, StorageError};
pub use transfer::TransferError;
/// Whether this build checks the node's invariants after every input: in debug builds and with
/// the `invariants` feature (which the simulator and the fuzz targets enable). Right for testing,
/// but it costs time on every input, so a benchmark should say when it is on. Cargo unifies
/// features across the packages of one command: `cargo build -p sim -p bench` builds `bench`
/// with it.
pub const INVARIANTS_CHECKED: bool = cfg!(any(test, debug_assertions, feature = "invariants"));

pub use types::{
    ENTRY_OVERHEAD_BYTES, Entry, EntryPayload, GroupId, HardState, Index, InvalidMembership, Membership, NodeId,
    SnapshotMeta, Term, snapshot_crc32,
};
