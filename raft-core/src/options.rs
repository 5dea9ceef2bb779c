//! Tunables of one node, validated once when built.

use thiserror::Error;

/// The tunables of one Raft node. Build with [`Options::builder`]; every combination it returns
/// has been checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    election_ticks: u32,
    heartbeat_ticks: u32,
    pre_vote: bool,
    check_quorum: bool,
    message_entries_max: usize,
    message_bytes_max: u64,
    inflight_messages_max: usize,
    uncommitted_bytes_max: u64,
    apply_bytes_max: u64,
    snapshot_chunk_bytes_max: u64,
    snapshot_chunks_inflight_max: u64,
    compaction_margin_entries: u64,
    lease_reads: bool,
    clock_drift_max_ticks: u32,
    reads_pending_max: usize,
    quiesce: bool,
    rng_seed: u64,
    /// Whether `rng_seed` was set (with the builder or [`Options::with_rng_seed`]).
    rng_seed_chosen: bool,
    #[cfg(feature = "bug-knobs")]
    bug_knobs: BugKnobs,
}

/// Deliberate bugs for proving that the simulator's checkers catch them (feature `bug-knobs`).
#[cfg(feature = "bug-knobs")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BugKnobs {
    /// Commit an earlier term's entry by counting replicas (breaks the Figure-8 rule).
    pub commit_old_terms_by_counting: bool,
    /// Hand out hard states without the vote, so a vote is forgotten across a crash.
    pub forget_votes: bool,
    /// Grant votes without checking that the candidate's log is at least as up to date.
    pub skip_up_to_date_check: bool,
}

/// Why a set of options was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum OptionsError {
    /// `heartbeat_ticks` must be at least 1.
    #[error("heartbeat_ticks must be at least 1")]
    HeartbeatTicksZero,
    /// `election_ticks` must exceed `heartbeat_ticks`, or followers time out between heartbeats.
    #[error("election_ticks ({election_ticks}) must be greater than heartbeat_ticks ({heartbeat_ticks})")]
    ElectionNotAboveHeartbeat {
        /// The election timeout asked for.
        election_ticks: u32,
        /// The heartbeat interval asked for.
        heartbeat_ticks: u32,
    },
    /// `election_ticks` is so large that doubling it overflows.
    #[error("election_ticks ({0}) is too large")]
    ElectionTicksTooLarge(u32),
    /// A message must be allowed to carry at least one entry.
    #[error("message_entries_max must be at least 1")]
    MessageEntriesZero,
    /// A message must be allowed to carry at least one entry's overhead.
    #[error("message_bytes_max ({0}) is below one entry's overhead")]
    MessageBytesTooSmall(u64),
    /// A follower must be allowed at least one message in flight.
    #[error("inflight_messages_max must be at least 1")]
    InflightZero,
    /// The uncommitted-bytes limit must admit at least one full message.
    #[error("uncommitted_bytes_max ({uncommitted}) is below message_bytes_max ({message})")]
    UncommittedBelowMessage {
        /// The uncommitted limit asked for.
        uncommitted: u64,
        /// The message limit asked for.
        message: u64,
    },
    /// Lease reads are unsafe without check-quorum: a deposed leader would not notice
    /// (raft-rs#140).
    #[error("lease_reads requires check_quorum")]
    LeaseWithoutCheckQuorum,
    /// The drift bound must leave a lease of at least one tick.
    #[error("clock_drift_max_ticks ({drift_ticks}) must be below election_ticks ({election_ticks})")]
    DriftNotBelowElection {
        /// The drift bound asked for.
        drift_ticks: u32,
        /// The election timeout asked for.
        election_ticks: u32,
    },
    /// At least one read must be allowed to wait.
    #[error("reads_pending_max must be at least 1")]
    ReadsPendingZero,
    /// A snapshot chunk must be allowed to carry at least one byte.
    #[error("snapshot_chunk_bytes_max must be at least 1")]
    SnapshotChunkBytesZero,
    /// A snapshot transfer must be allowed at least one chunk in flight.
    #[error("snapshot_chunks_inflight_max must be at least 1")]
    SnapshotInflightZero,
    /// An apply batch must be allowed to hold at least one full message's entries.
    #[error("apply_bytes_max ({apply}) is below message_bytes_max ({message})")]
    ApplyBelowMessage {
        /// The apply batch limit asked for.
        apply: u64,
        /// The message limit asked for.
        message: u64,
    },
}

/// Builds [`Options`]; starts from defaults suited to a LAN with a 100 ms tick.
#[derive(Clone, Debug)]
pub struct OptionsBuilder {
    options: Options,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            election_ticks: 10,
            heartbeat_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            message_entries_max: 1024,
            message_bytes_max: 1024 * 1024,
            inflight_messages_max: 256,
            uncommitted_bytes_max: 64 * 1024 * 1024,
            apply_bytes_max: 8 * 1024 * 1024,
            snapshot_chunk_bytes_max: 64 * 1024,
            snapshot_chunks_inflight_max: 4,
            compaction_margin_entries: 1024,
            lease_reads: false,
            clock_drift_max_ticks: 2,
            reads_pending_max: 4096,
            quiesce: false,
            rng_seed: 0,
            rng_seed_chosen: false,
            #[cfg(feature = "bug-knobs")]
            bug_knobs: BugKnobs::default(),
        }
    }
}

impl Options {
    /// A builder starting from the defaults.
    pub fn builder() -> OptionsBuilder {
        OptionsBuilder { options: Options::default() }
    }

    /// Base election timeout; the effective one is drawn from `[election_ticks, 2*election_ticks)`.
    pub fn election_ticks(&self) -> u32 {
        self.election_ticks
    }
    /// Ticks between heartbeats from a leader.
    pub fn heartbeat_ticks(&self) -> u32 {
        self.heartbeat_ticks
    }
    /// Whether a node asks for pre-votes before it bumps its term.
    pub fn pre_vote(&self) -> bool {
        self.pre_vote
    }
    /// Whether a leader steps down when it has not heard from a quorum for an election timeout.
    pub fn check_quorum(&self) -> bool {
        self.check_quorum
    }
    /// The most entries in one `AppendEntries`.
    pub fn message_entries_max(&self) -> usize {
        self.message_entries_max
    }
    /// The most entry bytes in one `AppendEntries` (at least one entry is always sent).
    pub fn message_bytes_max(&self) -> u64 {
        self.message_bytes_max
    }
    /// The most `AppendEntries` in flight to one follower in the replicate state.
    pub fn inflight_messages_max(&self) -> usize {
        self.inflight_messages_max
    }
    /// The most bytes of proposals a leader holds that are not yet committed.
    pub fn uncommitted_bytes_max(&self) -> u64 {
        self.uncommitted_bytes_max
    }
    /// The most entry bytes handed out for applying in one output batch (at least one entry).
    pub fn apply_bytes_max(&self) -> u64 {
        self.apply_bytes_max
    }
    /// The most snapshot bytes in one chunk message.
    pub fn snapshot_chunk_bytes_max(&self) -> u64 {
        self.snapshot_chunk_bytes_max
    }
    /// Unacknowledged snapshot chunks allowed per follower: with `snapshot_chunk_bytes_max`, this
    /// bounds the snapshot bytes in flight (and buffered) per transfer.
    pub fn snapshot_chunks_inflight_max(&self) -> u64 {
        self.snapshot_chunks_inflight_max
    }
    /// Entries kept in the log below a new snapshot, so that slightly slow followers still catch
    /// up from the log instead of needing the whole snapshot.
    pub fn compaction_margin_entries(&self) -> u64 {
        self.compaction_margin_entries
    }
    /// Whether lease reads are allowed (requires check-quorum).
    pub fn lease_reads(&self) -> bool {
        self.lease_reads
    }
    /// The most ticks by which clocks may drift apart over one election timeout: a leader's
    /// lease lasts `election_ticks - clock_drift_max_ticks` ticks by its clock from the
    /// heartbeat that confirmed it. Lease reads are only as safe as this bound, and it is the one
    /// assumption they rest on: one of these ticks goes to rounding (each node counts whole
    /// ticks), the rest bound how much faster a follower's clock may run than the leader's
    /// over an election timeout. Pauses, stalls and slow disks are not drift: the driver
    /// brings the clock up to date before the node judges a lease ([`crate::Raft::advance_clock`]).
    pub fn clock_drift_max_ticks(&self) -> u32 {
        self.clock_drift_max_ticks
    }
    /// The most reads one node keeps waiting.
    pub fn reads_pending_max(&self) -> usize {
        self.reads_pending_max
    }
    /// Whether an idle group goes quiet: a leader whose group has nothing to do asks its
    /// followers to stop their election timers and stops its own heartbeat and check-quorum
    /// timers, until an input or a message wakes the group (see [`crate::Raft::is_quiet`] and
    /// docs/multi-raft.md, "Idle groups: quiescence"). Followers then rely on the driver's
    /// node-level liveness ([`crate::liveness::PeerLiveness`], [`crate::Raft::peer_down`]) to
    /// learn that a quiet leader's node is gone. Off by default; a group goes quiet only when its
    /// leader and its followers all have it on.
    pub fn quiesce(&self) -> bool {
        self.quiesce
    }
    /// The seed of the node's random number generator: election timeouts, and the numbers of
    /// the reads a follower forwards. Give every incarnation of a node a fresh seed (from the
    /// operating system in production): a restarted node that drew the same numbers could take
    /// a delayed answer meant for its previous incarnation for its own (a stale read). The
    /// default, 0, is for tests; raft-net's `start` replaces it with a seed from the operating
    /// system unless one was chosen ([`Options::rng_seed_chosen`]).
    pub fn rng_seed(&self) -> u64 {
        self.rng_seed
    }

    /// Whether the seed was chosen ([`OptionsBuilder::rng_seed`], [`Options::with_rng_seed`])
    /// rather than left at its default.
    pub fn rng_seed_chosen(&self) -> bool {
        self.rng_seed_chosen
    }

    /// The same options with another seed (for a restart).
    pub fn with_rng_seed(mut self, seed: u64) -> Options {
        self.rng_seed = seed;
        self.rng_seed_chosen = true;
        self
    }
    /// The deliberate bugs switched on (feature `bug-knobs`).
    #[cfg(feature = "bug-knobs")]
    pub fn bug_knobs(&self) -> BugKnobs {
        self.bug_knobs
    }
}

impl OptionsBuilder {
    /// Sets the base election timeout, in ticks.
    pub fn election_ticks(mut self, ticks: u32) -> Self {
        self.options.election_ticks = ticks;
        self
    }
    /// Sets the heartbeat interval, in ticks.
    pub fn heartbeat_ticks(mut self, ticks: u32) -> Self {
        self.options.heartbeat_ticks = ticks;
        self
    }
    /// Enables or disables pre-vote.
    pub fn pre_vote(mut self, enabled: bool) -> Self {
        self.options.pre_vote = enabled;
        self
    }
    /// Enables or disables check-quorum.
    pub fn check_quorum(mut self, enabled: bool) -> Self {
        self.options.check_quorum = enabled;
        self
    }
    /// Sets the most entries per `AppendEntries`.
    pub fn message_entries_max(mut self, entries: usize) -> Self {
        self.options.message_entries_max = entries;
        self
    }
    /// Sets the most entry bytes per `AppendEntries`.
    pub fn message_bytes_max(mut self, bytes: u64) -> Self {
        self.options.message_bytes_max = bytes;
        self
    }
    /// Sets the most `AppendEntries` in flight per follower.
    pub fn inflight_messages_max(mut self, messages: usize) -> Self {
        self.options.inflight_messages_max = messages;
        self
    }
    /// Sets the most uncommitted proposal bytes on a leader.
    pub fn uncommitted_bytes_max(mut self, bytes: u64) -> Self {
        self.options.uncommitted_bytes_max = bytes;
        self
    }
    /// Sets the most entry bytes per apply batch.
    pub fn apply_bytes_max(mut self, bytes: u64) -> Self {
        self.options.apply_bytes_max = bytes;
        self
    }
    /// Sets the most snapshot bytes per chunk message.
    pub fn snapshot_chunk_bytes_max(mut self, bytes: u64) -> Self {
        self.options.snapshot_chunk_bytes_max = bytes;
        self
    }
    /// Sets the most unacknowledged snapshot chunks per follower.
    pub fn snapshot_chunks_inflight_max(mut self, chunks: u64) -> Self {
        self.options.snapshot_chunks_inflight_max = chunks;
        self
    }
    /// Sets how many entries below a new snapshot stay in the log.
    pub fn compaction_margin_entries(mut self, entries: u64) -> Self {
        self.options.compaction_margin_entries = entries;
        self
    }
    /// Allows lease reads (requires check-quorum).
    pub fn lease_reads(mut self, enabled: bool) -> Self {
        self.options.lease_reads = enabled;
        self
    }
    /// Sets the clock drift bound that shortens leases.
    pub fn clock_drift_max_ticks(mut self, ticks: u32) -> Self {
        self.options.clock_drift_max_ticks = ticks;
        self
    }
    /// Sets the most reads one node keeps waiting.
    pub fn reads_pending_max(mut self, reads: usize) -> Self {
        self.options.reads_pending_max = reads;
        self
    }
    /// Lets idle groups go quiet (see [`Options::quiesce`]).
    pub fn quiesce(mut self, enabled: bool) -> Self {
        self.options.quiesce = enabled;
        self
    }
    /// Sets the random seed (see [`Options::rng_seed`]): for a replayable run. Left unset, a
    /// driver that starts nodes for real draws a fresh one per start.
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.options.rng_seed = seed;
        self.options.rng_seed_chosen = true;
        self
    }

    /// Switches on deliberate bugs (feature `bug-knobs`, for simulator self-tests only).
    #[cfg(feature = "bug-knobs")]
    pub fn bug_knobs(mut self, knobs: BugKnobs) -> Self {
        self.options.bug_knobs = knobs;
        self
    }

    /// Checks the options against each other and returns them.
    pub fn build(self) -> Result<Options, OptionsError> {
        let o = self.options;
        if o.heartbeat_ticks == 0 {
            return Err(OptionsError::HeartbeatTicksZero);
        }
        if o.election_ticks <= o.heartbeat_ticks {
            return Err(OptionsError::ElectionNotAboveHeartbeat {
                election_ticks: o.election_ticks,
                heartbeat_ticks: o.heartbeat_ticks,
            });
        }
        if o.election_ticks.checked_mul(2).is_none() {
            return Err(OptionsError::ElectionTicksTooLarge(o.election_ticks));
        }
        if o.message_entries_max == 0 {
            return Err(OptionsError::MessageEntriesZero);
        }
        if o.message_bytes_max < crate::types::ENTRY_OVERHEAD_BYTES {
            return Err(OptionsError::MessageBytesTooSmall(o.message_bytes_max));
        }
        if o.inflight_messages_max == 0 {
            return Err(OptionsError::InflightZero);
        }
        if o.uncommitted_bytes_max < o.message_bytes_max {
            return Err(OptionsError::UncommittedBelowMessage {
                uncommitted: o.uncommitted_bytes_max,
                message: o.message_bytes_max,
            });
        }
        if o.apply_bytes_max < o.message_bytes_max {
            return Err(OptionsError::ApplyBelowMessage { apply: o.apply_bytes_max, message: o.message_bytes_max });
        }
        if o.lease_reads && !o.check_quorum {
            return Err(OptionsError::LeaseWithoutCheckQuorum);
        }
        if o.lease_reads && o.clock_drift_max_ticks >= o.election_ticks {
            return Err(OptionsError::DriftNotBelowElection {
                drift_ticks: o.clock_drift_max_ticks,
                election_ticks: o.election_ticks,
            });
        }
        if o.reads_pending_max == 0 {
            return Err(OptionsError::ReadsPendingZero);
        }
        if o.snapshot_chunk_bytes_max == 0 {
            return Err(OptionsError::SnapshotChunkBytesZero);
        }
        if o.snapshot_chunks_inflight_max == 0 {
            return Err(OptionsError::SnapshotInflightZero);
        }
        Ok(o)
    }
}
