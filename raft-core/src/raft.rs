//! The Raft node: the state that is its own, the owners it composes, and its public API in
//! three groups (inputs, output, queries). The owners live in their own modules: the log in
//! `log.rs`, the membership history in `membership.rs`, elections in `election.rs`, the leader's
//! replication tracker in `tracker.rs` (with `progress.rs`), reads and the lease in `read.rs`,
//! snapshot transfer in `snapshot.rs`, leadership transfer in `transfer.rs`; messages are
//! dispatched in `step.rs`.

use std::collections::BTreeMap;

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::election::Election;
use crate::error::{ProposeError, SnapshotError, StepError};
use crate::log::RaftLog;
use crate::membership::MembershipHistory;
use crate::membership::{ConfChange, MembershipError};
use crate::message::{Message, MessageBody};
use crate::options::Options;
use crate::progress::{FollowerProgress, ProgressState};
use crate::read::{ReadError, ReadMode, ReadState, Reads};
use crate::snapshot::{ReceivedChunk, SnapshotReceiver};
use crate::storage::{Storage, StorageError};
use crate::tracker::Tracker;
use crate::transfer::TransferError;
use crate::types::{Entry, EntryPayload, HardState, Index, Membership, NodeId, SnapshotMeta, Term};

/// The role a node plays in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks for pre-votes without changing its term.
    PreCandidate,
    /// Asks for votes in a term it started.
    Candidate,
    /// Leads its term.
    Leader,
}

/// The volatile state an application usually wants to observe; reported in [`Output`] on change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// The node's role.
    pub role: Role,
    /// The node's term.
    pub term: Term,
    /// The leader this node knows of in `term`.
    pub leader: Option<NodeId>,
}

/// Everything a node asks its driver to do, in the order the crate docs prescribe (the driving
/// contract, rules 3 to 7). Dropping an output loses its writes, messages and committed entries.
#[must_use = "an Output carries writes, messages and committed entries that must all be carried out"]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Set when role, term or leader changed since the last output.
    pub soft_state: Option<SoftState>,
    /// Hard state to persist, after the snapshot writes and before `entries` (rule 3), and
    /// durably before `messages_after_persist` are sent (rule 5).
    pub hard_state: Option<HardState>,
    /// Received snapshot chunks to write into the store's staging area, in order, before
    /// anything else of this output (rule 3: chunks, then `install_snapshot`, then `hard_state`
    /// and `entries`).
    pub snapshot_chunks: Vec<ReceivedChunk>,
    /// A received snapshot, complete in the staging area, to install: it replaces the whole log
    /// (atomically). The state machine must be restored from it before applying `committed`.
    pub install_snapshot: Option<SnapshotMeta>,
    /// Entries to append to the log, replacing any stored entries from `entries[0].index` on.
    pub entries: Vec<Entry>,
    /// Messages that may be sent at once, even before this output is persisted.
    pub messages: Vec<Message>,
    /// Messages that may be sent only once every write of this output (snapshot, `hard_state`,
    /// `entries`) and of every earlier output is durable, even when this output writes nothing
    /// (rule 5).
    pub messages_after_persist: Vec<Message>,
    /// Committed entries to apply to the state machine, in order.
    pub committed: Vec<Entry>,
    /// Reads that completed (serve them after applying `committed`) or failed.
    pub reads: Vec<ReadState>,
}

impl Output {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.soft_state.is_none()
            && self.hard_state.is_none()
            && self.snapshot_chunks.is_empty()
            && self.install_snapshot.is_none()
            && self.entries.is_empty()
            && self.messages.is_empty()
            && self.messages_after_persist.is_empty()
            && self.committed.is_empty()
            && self.reads.is_empty()
    }
}

/// A snapshot of a node's state for observation and debugging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node's id.
    pub id: NodeId,
    /// Role, term and known leader.
    pub soft_state: SoftState,
    /// The vote cast in the current term.
    pub vote: Option<NodeId>,
    /// The commit index.
    pub commit: Index,
    /// The last index handed out for applying.
    pub applied: Index,
    /// The last index in the log (durable or not).
    pub last_index: Index,
    /// The last index reported durable.
    pub stable_last_index: Index,
    /// Per-follower replication progress (leaders only).
    pub progress: BTreeMap<NodeId, FollowerProgress>,
    /// The membership in force (the latest in the log).
    pub membership: Membership,
    /// The latest membership at or below the commit index: one that no later leader can undo
    /// (the latest one may still be cut off with an uncommitted suffix).
    pub committed_membership: Membership,
    /// The leadership transfer in progress, if any: its target (leaders only).
    pub transfer_target: Option<NodeId>,
}

/// Messages waiting for the next output: those that may leave at once, and those that wait
/// until the output's writes are durable.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    now: Vec<Message>,
    after_persist: Vec<Message>,
}

impl Outbox {
    fn push(&mut self, message: Message, immediate: bool) {
        if immediate {
            self.now.push(message);
        } else {
            self.after_persist.push(message);
        }
    }

    fn is_empty(&self) -> bool {
        self.now.is_empty() && self.after_persist.is_empty()
    }

    /// Moves the messages into `output`.
    fn take_into(&mut self, output: &mut Output) {
        output.messages = std::mem::take(&mut self.now);
        output.messages_after_persist = std::mem::take(&mut self.after_persist);
    }
}

/// One Raft node as a deterministic state machine. See the crate docs for how to drive it.
///
/// The node composes owners, each changing only its own state: the log (`RaftLog`: entries,
/// the stable/unstable boundary, pending writes, commit and apply), the membership history,
/// the election state and timers, the leader's replication tracker, the read queue and lease,
/// the follower's side of snapshot transfer, and a leadership transfer. `Raft` holds what is
/// the node's own (id, term, vote, role, leader, clock), dispatches each message in one place
/// (`step.rs`), and lets the owners talk through it.
pub struct Raft<S: Storage> {
    pub(crate) id: NodeId,
    pub(crate) options: Options,
    pub(crate) term: Term,
    pub(crate) vote: Option<NodeId>,
    pub(crate) role: Role,
    pub(crate) leader: Option<NodeId>,
    /// The latest term known to be durable in storage.
    pub(crate) durable_term: Term,
    /// The clock: ticks of time since this node started, advanced by [`Raft::tick`] and
    /// [`Raft::advance_clock`]. Every promise about time is judged by it (a leader's lease, a
    /// follower's stickiness to its leader); the timers only decide when to act.
    pub(crate) ticks: u64,
    pub(crate) log: RaftLog<S>,
    /// The memberships in the log; the latest is in force.
    pub(crate) memberships: MembershipHistory,
    pub(crate) election: Election,
    /// The leader's view of its followers; empty on other nodes.
    pub(crate) tracker: Tracker,
    /// Reads waiting or done.
    pub(crate) reads: Reads,
    /// The snapshot being received from the leader (followers only).
    pub(crate) receiver: SnapshotReceiver,
    /// A leadership transfer in progress (leaders only).
    pub(crate) transfer: Option<crate::transfer::Transfer>,
    pub(crate) outbox: Outbox,
    /// A failure of our own storage found while the node worked (a damaged snapshot read back
    /// for sending): the driver must stop the node; `take_output` returns it.
    pub(crate) storage_failure: Option<StorageError>,
    /// Whether the timers are stopped because the group is idle (option `quiesce`).
    pub(crate) quiescence: crate::quiesce::Quiescence,
    last_hard_state: HardState,
    last_soft_state: SoftState,
}

/// # Inputs
///
/// Everything that happens to a node reaches it through these: time, messages, client
/// commands and reads, administrative requests, and the driver's reports. Each returns at once;
/// what the node wants done waits in its output.
impl<S: Storage> Raft<S> {
    /// Starts a node from what its storage holds (a fresh node starts from an empty storage that
    /// knows the initial membership). The node starts as a follower with no known leader.
    pub fn new(id: NodeId, options: Options, storage: S) -> Result<Self, StorageError> {
        let initial = storage.initial_state()?;
        let initial_snapshot = initial.snapshot.clone();
        let hard_state = initial.hard_state;
        let log = RaftLog::new(storage, hard_state.commit, &initial_snapshot)?;
        let mut rng = ChaCha8Rng::seed_from_u64(options.rng_seed());
        let reads = Reads::numbered_from(rng.next_u64());
        let soft = SoftState { role: Role::Follower, term: hard_state.term, leader: None };
        let base = if initial.snapshot.exists() {
            (initial.snapshot.index, initial.snapshot.membership.clone())
        } else {
            (Index(0), initial.membership.clone())
        };
        let memberships = MembershipHistory::load(base, &log, options.apply_bytes_max())?;
        let election_ticks = options.election_ticks();
        let mut raft = Raft {
            id,
            term: hard_state.term,
            vote: hard_state.vote,
            role: Role::Follower,
            leader: None,
            durable_term: hard_state.term,
            ticks: 0,
            memberships,
            election: Election::new(rng, election_ticks),
            options,
            log,
            tracker: Tracker::default(),
            reads,
            receiver: SnapshotReceiver::default(),
            transfer: None,
            outbox: Outbox::default(),
            storage_failure: None,
            quiescence: crate::quiesce::Quiescence::default(),
            last_hard_state: hard_state,
            last_soft_state: soft,
        };
        raft.election.reset(raft.ticks, election_ticks);
        raft.after_input();
        Ok(raft)
    }

    /// Advances time by one tick: the clock ([`Raft::advance_clock`]) and the timers
    /// ([`Raft::tick_timers`]) together. A driver that never falls behind real time needs nothing
    /// else.
    pub fn tick(&mut self) {
        self.advance_clock(1);
        self.tick_timers();
    }

    /// Advances the clock by `ticks` without running the timers: time that passed while the
    /// driver could not deliver it (a stall, a paused process). The clock judges every promise
    /// about time (a leader's lease, a follower's stickiness to its leader), so a driver brings
    /// it up to date *before* it hands over a read or a message that arrived meanwhile (driving
    /// contract, rule 1); it may then run the timers at its own pace with [`Raft::tick_timers`].
    pub fn advance_clock(&mut self, ticks: u64) {
        self.ticks = self.ticks.saturating_add(ticks);
        self.expire_forwarded_reads();
        self.after_input();
    }

    /// Runs the timers for one tick without advancing the clock: followers and candidates count
    /// toward an election, leaders toward a heartbeat and a check-quorum round. The timers only
    /// decide when to act (liveness): a follower never campaigns while its leader's lease holds
    /// by the clock, however fast its timers ran, and a leader's lease is judged by the clock.
    /// A quiet node's timers are stopped ([`Raft::is_quiet`]): this does nothing.
    pub fn tick_timers(&mut self) {
        if self.quiescence.quiet {
            self.after_input();
            return;
        }
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => self.tick_election(),
        }
        self.after_input();
    }

    /// Starts an election now, as if the election timeout had elapsed (with a pre-vote round when
    /// pre-vote is on). Ignored on a leader and on a node that does not vote.
    pub fn campaign(&mut self) {
        if self.role != Role::Leader {
            self.start_election(crate::election::ElectionCause::Requested);
        }
        self.after_input();
    }

    /// Handles one message from a peer. An `Err` says why it was ignored; it is never fatal
    /// except [`StepError::Storage`].
    ///
    /// With quiescence on, a quiet leader wakes on any vote request (someone campaigns: it
    /// resumes heartbeats so that a node that only lost track of it follows it again) and on any
    /// message that gives it work; a quiet follower wakes only on evidence
    /// that its leader is awake (see [`Raft::is_quiet`]).
    pub fn step(&mut self, message: Message) -> Result<(), StepError> {
        let failed_before = self.storage_failure.is_some();
        // Someone campaigns: a quiet leader heartbeats again, so that a node that only lost track
        // of it follows it again, and a follower whose term a candidate (even a removed node)
        // raised while its stickiness had lapsed tells the leader of that term.
        let campaigning = matches!(message.body, MessageBody::VoteRequest { .. });
        if self.quiescence.quiet && self.role == Role::Leader && campaigning {
            self.wake_leader();
        }
        let mut result = self.step_message(message);
        if let (false, Some(error)) = (failed_before, self.storage_failure) {
            result = Err(StepError::Storage(error));
        }
        self.after_input();
        result
    }

    /// Proposes a command. On the leader it is appended and its index returned; the command is
    /// committed once it appears in [`Output::committed`] (a later leader may overwrite an index
    /// that was never committed, so callers match on index *and* term).
    pub fn propose(&mut self, data: Bytes) -> Result<Index, ProposeError> {
        let result = self.propose_entry(EntryPayload::Normal(data));
        self.after_input();
        result
    }

    /// Asks for a linearizable read, identified by the caller's `id`. Its outcome comes in
    /// [`crate::Output::reads`]: once `Ok(index)`, the caller serves the read from its state
    /// machine (which then reflects every write committed before the read was asked).
    pub fn read(&mut self, id: u64, mode: ReadMode) -> Result<(), ReadError> {
        let result = self.start_read(id, mode);
        self.after_input();
        result
    }

    /// Proposes membership `changes` (applied together). A change of voters goes through a joint
    /// configuration that the leader leaves automatically; the returned index is the first entry.
    pub fn change_membership(&mut self, changes: &[ConfChange]) -> Result<Index, MembershipError> {
        let result = self.start_change(changes);
        self.after_input();
        result
    }

    /// Hands leadership to `target`. Proposals are refused until the transfer ends: when the
    /// target wins an election, or after an election timeout (then this node leads on).
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), TransferError> {
        let result = self.start_transfer(target);
        self.after_input();
        result
    }

    /// The driver reports that every entry it was handed up to (`index`, `term`) is durable,
    /// along with the hard states, chunks and snapshot installs handed out with them (an output
    /// that installs a snapshot and appends nothing is reported with the snapshot's index and
    /// term). A report for an entry that has since been replaced (same index, other term) is
    /// ignored.
    pub fn on_persisted(&mut self, index: Index, term: Term) {
        if self.log.stable_to(index, term) {
            // An entry of a term is written after (or with) the hard state that holds the term.
            self.durable_term = self.durable_term.max(term);
            if self.role == Role::Leader {
                self.maybe_commit();
            }
        }
        self.after_input();
    }

    /// The driver's node-level liveness says that `peer`'s node is gone: its connection was lost,
    /// it restarted, or it was silent for the liveness timeout
    /// ([`crate::liveness::PeerLiveness`]). Only a quiet group acts on it: a quiet follower
    /// whose leader is `peer` wakes, and campaigns once a new election timeout (drawn afresh)
    /// passed and its stickiness to the leader lapsed by the clock (the report promises nothing
    /// about the leader's lease, so it does not shorten it); a quiet leader that replicates to
    /// `peer` wakes, so that check-quorum runs again while the peer is gone. Otherwise nothing
    /// changes: an awake group's own timers already cover a lost peer.
    pub fn peer_down(&mut self, peer: NodeId) {
        self.on_peer_down(peer);
        self.after_input();
    }

    /// Wakes this replica of the group if it is quiet: a quiet leader restarts its timers and
    /// heartbeats its followers at once (a heartbeat of a later round wakes a quiet follower);
    /// a quiet follower restarts its election timer. A driver calls it before it stops a replica
    /// while its node runs on (a group removed from a node, a replica that failed): the node's
    /// liveness pings go on, so nothing else would tell the followers of a quiet leader that it
    /// is gone, and, woken, they elect another once it is silent. Nothing changes for a replica
    /// that is not quiet.
    pub fn wake(&mut self) {
        self.wake_quiet();
        self.after_input();
    }

    /// The driver reports that `peer` could not be reached: a leader stops pipelining to it and
    /// probes instead; a snapshot transfer to it is abandoned (it restarts, from the latest
    /// snapshot, once the peer answers again).
    pub fn report_unreachable(&mut self, peer: NodeId) {
        if let Some(progress) = self.tracker.get_mut(peer)
            && progress.state != ProgressState::Probe
        {
            progress.become_probe();
        }
        self.after_input();
    }
}

/// # Output
///
/// What the node asks its driver to do, in one batch (see the driving contract in the crate
/// docs).
impl<S: Storage> Raft<S> {
    /// Whether [`Raft::take_output`] would return something to do.
    pub fn has_output(&self) -> bool {
        self.storage_failure.is_some()
            || self.soft_state() != self.last_soft_state
            || self.hard_state() != self.last_hard_state
            || self.log.has_unpersisted()
            || self.receiver.has_chunks()
            || self.log.has_snapshot_to_install()
            || self.tracker.broadcast_pending()
            || !self.outbox.is_empty()
            || self.log.has_committed_to_apply()
            || self.reads.has_output()
            || self.reads.round_wanted
    }

    /// Takes everything the driver must do now. Fails when storage cannot be read for the
    /// committed entries, and from then on once the node found its own storage damaged (a
    /// snapshot that fails its checksum when read back for sending): the driver should then stop
    /// the node.
    pub fn take_output(&mut self) -> Result<Output, StorageError> {
        if let Some(error) = self.storage_failure {
            return Err(error);
        }
        if self.tracker.take_broadcast() {
            self.broadcast_append();
        }
        if self.reads.round_wanted && self.role == Role::Leader {
            self.broadcast_heartbeat();
        }
        let mut output = Output::default();
        let soft = self.soft_state();
        if soft != self.last_soft_state {
            output.soft_state = Some(soft);
            self.last_soft_state = soft;
        }
        let hard = self.hard_state();
        if hard != self.last_hard_state {
            output.hard_state = Some(hard);
            self.last_hard_state = hard;
            #[cfg(feature = "bug-knobs")]
            if self.options.bug_knobs().forget_votes {
                output.hard_state = Some(HardState { vote: None, ..hard });
            }
        }
        output.snapshot_chunks = self.receiver.take_chunks();
        output.install_snapshot = self.log.take_snapshot_to_install();
        output.entries = self.log.take_unpersisted();
        self.outbox.take_into(&mut output);
        output.committed = self.log.take_committed(self.options.apply_bytes_max())?;
        self.release_ready_reads();
        output.reads = std::mem::take(&mut self.reads.done);
        self.after_input();
        Ok(output)
    }
}

/// # Queries
///
/// Read-only views of the node's state (and the storage, which the driver writes through).
impl<S: Storage> Raft<S> {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The leader this node knows of in the current term.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// Whether this node is the leader of its term.
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// The commit index.
    pub fn commit_index(&self) -> Index {
        self.log.committed
    }

    /// The index of the last entry in the log.
    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }

    /// The current membership.
    pub fn membership(&self) -> &Membership {
        self.memberships.current()
    }

    /// The latest membership at or below the commit index (see [`Status::committed_membership`]).
    /// A node that a committed membership leaves out can be sure it will never be needed by this
    /// group again; one that only the latest membership leaves out cannot (docs/pitfalls.md #21).
    pub fn committed_membership(&self) -> &Membership {
        self.memberships.at(self.log.committed)
    }

    /// The options this node runs with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The election timeout drawn for the current round, in ticks.
    pub fn randomized_election_ticks(&self) -> u32 {
        self.election.randomized_ticks()
    }

    /// How many ticks ([`Raft::tick`]) may pass before one can do anything: with no other input,
    /// the first `ticks_until_due() - 1` ticks produce no output and change neither role, term,
    /// vote, leader nor any pending request; the next one may (a campaign, a heartbeat round, a
    /// check-quorum round, an abandoned leadership transfer, an expired forwarded read). At
    /// least 1; `u64::MAX` when no tick can do anything (a learner with nothing pending, a quiet
    /// node with no forwarded read waiting: [`Raft::is_quiet`]).
    ///
    /// For a driver that hosts many groups: it need not wake a group before this many ticks
    /// have passed. When it does wake it, it still brings the clock up to date first
    /// ([`Raft::advance_clock`]) and then runs the timers for the missed ticks
    /// ([`Raft::tick_timers`]), so the lease and stickiness rules are judged by the time that
    /// really passed. Any input may change the answer: ask again after each one.
    pub fn ticks_until_due(&self) -> u64 {
        let election_ticks = u64::from(self.options.election_ticks());
        let timers = match self.role {
            // A quiet node's timers are stopped: only an input wakes it.
            _ if self.quiescence.quiet => u64::MAX,
            Role::Leader => {
                let rounds =
                    self.election.leader_ticks_to_due(self.options.election_ticks(), self.options.heartbeat_ticks());
                let transfer = self.transfer.map_or(u64::MAX, |t| election_ticks.saturating_sub(u64::from(t.elapsed)));
                rounds.min(transfer)
            }
            // `start_election` does nothing for a node that may not campaign (a learner, a node
            // outside the membership, a committed membership change not yet applied: the
            // apply that changes this is an input) or at the largest term.
            _ if !self.may_campaign() || self.term == Term(u64::MAX) => u64::MAX,
            _ => {
                // The timeout passes after its remaining timer ticks; a follower that still
                // owes its leader stickiness by the clock then waits for the promise to lapse.
                let timeout = self.election.ticks_to_timeout();
                let lapse = match self.leader {
                    Some(_) => self.election.clock_ticks_to_lapse(self.ticks, self.options.election_ticks()),
                    None => 0,
                };
                timeout.max(lapse)
            }
        };
        let reads = self.forwarded_reads_expire_in();
        timers.min(reads).max(1)
    }

    /// Whether this node's timers are stopped because its group is idle (option
    /// [`Options::quiesce`]): a quiet leader sends no heartbeats and runs no check-quorum, a
    /// quiet follower runs no election timer, and [`Raft::ticks_until_due`] is `u64::MAX` unless
    /// a forwarded read still waits for its expiry. The clock still judges the lease and
    /// stickiness as it runs.
    ///
    /// What wakes a quiet node (its timers restart from zero):
    /// - a leader: any input after which its group is no longer idle (a proposal, a read that its
    ///   lease by the clock cannot serve at once, a membership change, a leadership transfer, a
    ///   follower's forwarded read), any message of a leader it sends, any vote request, and
    ///   [`Raft::peer_down`] of a follower. A woken leader forgets who answered it
    ///   before: its first check-quorum round needs a quorum heard from since it woke.
    /// - a follower: a heartbeat of its leader of a later round than the `Quiesce` that quieted
    ///   it, an append (or a `CommitNotice`) of its leader that brings entries it lacks or a
    ///   later commit index, a leader message from another node at its term, any change of its
    ///   term or role
    ///   ([`Raft::campaign`], `TimeoutNow`, a vote request of a later term), and
    ///   [`Raft::peer_down`] of its leader. Proposals, reads (forwarded to the leader, which
    ///   wakes), stale duplicates and answers do not wake it: a follower woken by an input after
    ///   which nobody sends it anything would campaign against a live, quiet leader.
    pub fn is_quiet(&self) -> bool {
        self.quiescence.quiet
    }

    /// Read access to the storage.
    pub fn storage(&self) -> &S {
        &self.log.storage
    }

    /// Write access to the storage, for drivers that persist through it (see the crate docs).
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.log.storage
    }

    /// A snapshot of this node's state.
    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            soft_state: self.soft_state(),
            vote: self.vote,
            commit: self.log.committed,
            applied: self.log.applied,
            last_index: self.log.last_index(),
            stable_last_index: self.log.stable_last_index(),
            progress: self.tracker.progress(),
            membership: self.memberships.current().clone(),
            committed_membership: self.committed_membership().clone(),
            transfer_target: self.transfer.map(|t| t.target),
        }
    }

    /// Describes a snapshot of the state machine as it is after applying `index`, whose data has
    /// the checksum `data_crc32` ([`crate::snapshot_crc32`] of the data), for the application to
    /// store with the data. `index` must be applied and still in the log.
    pub fn snapshot_meta(&self, index: Index, data_crc32: u32) -> Result<SnapshotMeta, SnapshotError> {
        let applied = self.log.applied;
        if index > applied {
            return Err(SnapshotError::NotApplied { index, applied });
        }
        let term = match self.log.term(index) {
            Ok(term) => term,
            Err(StorageError::Compacted(_)) => return Err(SnapshotError::Compacted(index)),
            Err(error) => return Err(SnapshotError::Storage(error)),
        };
        Ok(SnapshotMeta { index, term, membership: self.membership_at(index), data_crc32 })
    }

    /// Where the driver may compact the log now: the entry `compaction_margin_entries` below the
    /// store's latest snapshot, with its term, or `None` when the log already starts there. The
    /// margin lets slightly slow followers catch up from the log instead of a whole snapshot.
    pub fn compaction_point(&self) -> Option<(Index, Term)> {
        if self.log.pending_snapshot().is_some() {
            return None; // The store is about to be replaced by an installed snapshot.
        }
        let snapshot = self.log.storage.snapshot().ok()?;
        let index = Index(snapshot.index.0.saturating_sub(self.options.compaction_margin_entries()));
        let first = self.log.first_index().ok()?;
        if index < first {
            return None;
        }
        let term = self.log.term(index).ok()?;
        Some((index, term))
    }

    /// Whether `progress` of `peer` is in the replicate state (for tests and status).
    pub fn is_replicating(&self, peer: NodeId) -> bool {
        self.tracker.get(peer).is_some_and(|p| p.state == ProgressState::Replicate)
    }

    /// Whether `peer` is being sent a snapshot (for tests and status).
    pub fn is_sending_snapshot(&self, peer: NodeId) -> bool {
        self.tracker.get(peer).is_some_and(|p| p.state == ProgressState::Snapshot)
    }

    /// Asserts the node's invariants; panics on a violation, which is a bug in this crate. It
    /// runs after every input anyway in debug builds and with this feature; a driver under test
    /// (the simulator, a fuzz target) may call it at points of its own. Public only with the
    /// `invariants` feature: a testing aid, not part of the API.
    #[cfg(feature = "invariants")]
    pub fn check_invariants(&self) {
        self.assert_invariants();
    }
}

/// Internals the owners share: the batch's states, sending, appending to the log.
impl<S: Storage> Raft<S> {
    pub(crate) fn soft_state(&self) -> SoftState {
        SoftState { role: self.role, term: self.term, leader: self.leader }
    }

    pub(crate) fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.committed }
    }

    /// Queues a message. Leader appends and heartbeats may leave before this output is durable
    /// (the leader's term and vote became durable when it campaigned); everything else waits.
    pub(crate) fn send(&mut self, to: NodeId, term: Term, body: MessageBody) {
        let immediate = self.role == Role::Leader && body.is_from_leader();
        if immediate && !matches!(body, MessageBody::Quiesce { .. }) {
            self.before_leader_message();
        }
        invariant!(to != self.id, "a message to ourselves");
        invariant!(!immediate || term == self.term, "a leader message of another term");
        self.outbox.push(Message { from: self.id, to, term, body }, immediate);
    }

    /// Appends a leader's own new entry (at the last index + 1) to the log, moving it there: it
    /// replaces nothing, so unless it carries a membership the memberships are unchanged.
    pub(crate) fn append_proposal_to_log(&mut self, entry: Entry) {
        invariant!(entry.index == self.log.last_index().next(), "a proposal not at the end of the log");
        invariant!(entry.term == self.term && self.role == Role::Leader, "a proposal of another term or role");
        if matches!(entry.payload, EntryPayload::Membership(_)) {
            self.append_to_log(vec![entry]);
        } else {
            self.log.push(entry);
        }
    }

    /// Appends `entries` to the log, moving them there (a follower's come out of the leader's
    /// message: cloning them cost a copy of every entry), and takes up any membership they carry:
    /// a membership is in force as soon as its entry is in the log.
    pub(crate) fn append_to_log(&mut self, mut entries: Vec<Entry>) {
        let Some(first) = entries.first().map(|e| e.index) else { return };
        let last = entries.last().map(|e| (e.index, e.term));
        // Taken before the entries move into the log; none in the common case (no allocation).
        let carried: Vec<(Index, Membership)> = entries
            .iter()
            .filter_map(|entry| match &entry.payload {
                EntryPayload::Membership(membership) => Some((entry.index, membership.clone())),
                _ => None,
            })
            .collect();
        self.log.append(&mut entries);
        invariant!(
            last.is_some_and(|(index, term)| self.log.last_index() == index && self.log.matches(index, term)),
            "the log does not end with the entries just appended"
        );
        // Cloning the membership in force on every append cost allocations on every proposal
        // and every follower append: the history hands it back only when it changed.
        if let Some(before) = self.memberships.replace_from(first, carried) {
            self.on_membership_changed(&before);
        }
    }

    fn propose_entry(&mut self, payload: EntryPayload) -> Result<Index, ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.leader });
        }
        if self.durable_term != self.term {
            return Err(ProposeError::TermNotDurable);
        }
        if self.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        let entry = Entry { term: self.term, index: self.log.last_index().next(), payload };
        let bytes = entry.size_bytes();
        let limit = self.options.message_bytes_max();
        if bytes > limit {
            return Err(ProposeError::TooLarge { bytes, limit });
        }
        let index = entry.index;
        self.tracker.admit(index, bytes, self.options.uncommitted_bytes_max())?;
        self.append_proposal_to_log(entry);
        self.tracker.schedule_broadcast();
        // A single voter commits as soon as its own write is durable (see on_persisted).
        Ok(index)
    }

    pub(crate) fn after_input(&mut self) {
        self.settle_quiescence();
        if crate::INVARIANTS_CHECKED {
            self.assert_invariants();
        }
    }

    /// Asserts the node's invariants; panics on a violation, which is a bug in this crate.
    /// Runs after every input when [`crate::INVARIANTS_CHECKED`].
    pub(crate) fn assert_invariants(&self) {
        self.log.check_invariants();
        self.memberships.check_invariants();
        self.election.check_invariants(self.ticks, self.options.election_ticks());
        self.check_quiescence_invariants();
        assert!(self.vote.is_none() || self.term > Term(0), "vote cast in term 0");
        assert!(self.durable_term <= self.term, "the durable term is above the term");
        match self.role {
            Role::Leader => {
                assert_eq!(self.leader, Some(self.id), "leader does not know itself");
                assert_eq!(self.vote, Some(self.id), "leader did not vote for itself");
                let mut members = self.memberships.current().members();
                members.remove(&self.id);
                assert!(self.tracker.peers().into_iter().eq(members), "leader tracks exactly the other members");
            }
            Role::Candidate => assert_eq!(self.vote, Some(self.id), "candidate did not vote for itself"),
            Role::PreCandidate | Role::Follower => {
                assert!(self.tracker.is_empty(), "non-leader tracks replication");
                assert!(self.transfer.is_none(), "non-leader transfers leadership");
                if let Some(snapshot) = self.log.pending_snapshot() {
                    assert!(self.log.committed >= snapshot.index, "commit below an installed snapshot");
                    assert!(self.log.applied >= snapshot.index, "applied below an installed snapshot");
                }
            }
        }
        let (last, window) = (self.log.last_index(), self.options.inflight_messages_max());
        self.tracker.check_invariants(last, window, self.options.uncommitted_bytes_max());
    }
}
