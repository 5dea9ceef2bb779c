//! Target 3: one raft-core node driven by arbitrary inputs, with a driver that follows the
//! crate's contract (persist in output order, send `messages_after_persist` only after the
//! persist, report durability) but lets the fuzzer decide when writes complete and when the node
//! crashes. Peers are imaginary: the fuzzer writes their messages, from any id (the node itself
//! and strangers included), in any term, about any index. Time arrives as whole ticks, as the
//! clock alone (`advance_clock`, a driver catching up after a stall) or as the timers alone
//! (`tick_timers`, a driver that ran its timers without the clock), in any mix. Half the inputs
//! (an even seed) run with quiescence on: the fuzzer's peers may answer `Quiesce` rounds, send
//! `Quiesce` messages, and the driver may report peers down (`peer_down`); `ticks_until_due`
//! stays asserted sound on every tick, quiet or not.

use std::collections::{BTreeMap, VecDeque};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use raft_core::{
    AppendResult, ConflictHint, Entry, EntryPayload, HardState, Index, Membership, Message, MessageBody, NodeId,
    Options, Output, Raft, ReadMode, Role, SnapshotMeta, StepError, Storage, Term,
};
use raft_storage::{LogStore, MemStorage};

/// Inputs per fuzz input at most (each is cheap; this bounds one run's time).
const INPUTS_MAX: usize = 400;
/// Ticks per `Ticks` input at most.
const TICKS_PER_INPUT_MAX: u8 = 40;

/// The node's tunables, decoded from the first bytes.
#[derive(Arbitrary, Debug)]
struct Setup {
    voters: u8,
    me: u8,
    pre_vote: bool,
    check_quorum: bool,
    lease_reads: bool,
    election_ticks: u8,
    heartbeat_ticks: u8,
    message_entries_max: u8,
    inflight_messages_max: u8,
    compaction_margin_entries: u8,
    snapshot_chunk_bytes_max: u8,
    seed: u64,
}

/// A term relative to the node's own, so that the fuzzer hits current and adjacent terms often.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum TermChoice {
    Current,
    Next,
    Plus(u8),
    Minus(u8),
    /// The term of the node's log entry at the message's index (what a real leader would say).
    AtIndex,
    Raw(u64),
}

/// An index relative to the node's log.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum IndexChoice {
    Last,
    Commit,
    LastMinus(u8),
    LastPlus(u8),
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
struct EntryChoice {
    /// Added to the previous entry's term (mod 3).
    term_step: u8,
    payload_bytes: u8,
    /// Breaks the run of consecutive indexes here (garbage a real leader never sends).
    skip_index: bool,
}

#[derive(Arbitrary, Debug)]
enum BodyChoice {
    VoteRequest {
        pre_vote: bool,
        last_log_index: IndexChoice,
        last_log_term: TermChoice,
        transfer: bool,
    },
    TimeoutNow,
    VoteResponse {
        pre_vote: bool,
        granted: bool,
    },
    AppendEntries {
        prev_log_index: IndexChoice,
        prev_log_term: TermChoice,
        entries: Vec<EntryChoice>,
        commit: IndexChoice,
    },
    AppendSuccess {
        match_index: IndexChoice,
    },
    AppendReject {
        rejected_index: IndexChoice,
        hint_term: Option<TermChoice>,
        hint_index: IndexChoice,
    },
    /// A round of 128 to 191 sends a `Quiesce` (of round `round - 128`) instead, and one of 192
    /// or more a `CommitNotice` at the chosen index, so that the stored corpus kept its meaning
    /// when `Quiesce` came (and nearly all of it when `CommitNotice` came: only quiesce rounds
    /// of 64 or more became notices).
    Heartbeat {
        commit: IndexChoice,
        round: u8,
    },
    HeartbeatResponse {
        round: u8,
    },
    InstallSnapshot {
        index: IndexChoice,
        term: TermChoice,
        voters: u8,
        offset: u8,
        data_bytes: u8,
        done: bool,
    },
    SnapshotResponse {
        index: IndexChoice,
        term: TermChoice,
        next_offset: u8,
        gap: bool,
    },
    ReadIndexRequest {
        request: u8,
        lease: bool,
    },
    ReadIndexResponse {
        request: u8,
        index: Option<IndexChoice>,
    },
}

#[derive(Arbitrary, Debug)]
enum Input {
    Tick,
    Ticks(u8),
    Campaign,
    Propose(u8),
    Read {
        id: u8,
        lease: bool,
    },
    Step {
        from: u8,
        term: TermChoice,
        body: BodyChoice,
    },
    /// Completes the oldest `n` pending writes (0: all), as one group commit.
    Persist(u8),
    /// `n % 8` is the peer; `n` of 128 or more is the node-level liveness's `peer_down` instead
    /// (folded in here so that the stored corpus kept its meaning when `peer_down` came).
    ReportUnreachable(u8),
    /// The application snapshots its state machine at its applied index and compacts the log.
    Snapshot,
    /// Power loss: everything not yet persisted is lost; the node restarts from its store.
    Restart,
    TakeOutput,
    /// The clock alone moves (a stalled or paused driver catching up): `n % 40` ticks.
    AdvanceClock(u8),
    /// The timers alone run (a driver whose timers ran ahead of its clock): `n % 40` times.
    TickTimers(u8),
}

/// A write handed to the disk and not yet durable, with the messages that wait for it.
struct PendingWrite {
    output: Output,
}

/// The driver, its imaginary disk, and what the checks remember.
struct Harness {
    me: NodeId,
    options: Options,
    raft: Raft<MemStorage>,
    /// What survives a crash: only completed writes.
    durable: MemStorage,
    pending: VecDeque<PendingWrite>,
    incarnation: u64,
    /// The last index handed out for applying in this incarnation.
    applied: Index,
    /// Terms of the entries handed out as committed in this incarnation, by index.
    committed: BTreeMap<Index, Term>,
    /// Every vote released (sent after its persist), by term, over all incarnations.
    votes: BTreeMap<Term, NodeId>,
    /// The highest term and commit index seen in this incarnation.
    term: Term,
    commit: Index,
}

/// Target 3: see the module docs. Invariants: raft-core's own `check_invariants` after every input
/// (feature `invariants`), plus what a driver can see: term and commit never go back within an
/// incarnation; committed entries come in order, exactly once, only once durable, and never
/// change while the node lives; one vote per term across crashes; reads complete at applied
/// indexes; messages come from the node; storage is never asked for what it does not hold.
pub fn node_inputs(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(setup) = Setup::arbitrary(&mut u) else { return };
    let Some(mut harness) = Harness::new(&setup) else { return };
    // FUZZ_DEBUG=1 prints each input (when replaying a crash through the test build).
    let debug = std::env::var_os("FUZZ_DEBUG").is_some();
    for _ in 0..INPUTS_MAX {
        if u.is_empty() {
            break;
        }
        let Ok(input) = Input::arbitrary(&mut u) else { break };
        if debug {
            eprintln!("{input:?}");
        }
        harness.handle(input);
        harness.check();
    }
}

impl Harness {
    fn new(setup: &Setup) -> Option<Self> {
        let voters = u64::from(setup.voters % 5) + 1;
        // Ids 1..=voters vote; `me` may also be a non-voter (voters + 1).
        let me = NodeId(u64::from(setup.me) % (voters + 1) + 1);
        let election_ticks = u32::from(setup.election_ticks % 20) + 2;
        let options = Options::builder()
            .election_ticks(election_ticks)
            .heartbeat_ticks(u32::from(setup.heartbeat_ticks) % (election_ticks - 1) + 1)
            .pre_vote(setup.pre_vote)
            .check_quorum(setup.check_quorum)
            .lease_reads(setup.lease_reads && setup.check_quorum)
            .clock_drift_max_ticks(1)
            .message_entries_max(usize::from(setup.message_entries_max % 8) + 1)
            .inflight_messages_max(usize::from(setup.inflight_messages_max % 4) + 1)
            .compaction_margin_entries(u64::from(setup.compaction_margin_entries % 8))
            .snapshot_chunk_bytes_max(u64::from(setup.snapshot_chunk_bytes_max % 16) + 1)
            .snapshot_chunks_inflight_max(2)
            .reads_pending_max(8)
            .quiesce(setup.seed.is_multiple_of(2))
            .rng_seed(setup.seed)
            .build()
            .ok()?;
        let durable = MemStorage::new(Membership::new((1..=voters).map(NodeId)));
        let raft = Raft::new(me, options.clone(), durable.clone()).expect("memory storage never fails");
        Some(Harness {
            me,
            options,
            raft,
            durable,
            pending: VecDeque::new(),
            incarnation: 0,
            applied: Index(0),
            committed: BTreeMap::new(),
            votes: BTreeMap::new(),
            term: Term(0),
            commit: Index(0),
        })
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Tick => self.tick(),
            Input::Ticks(count) => (0..count % TICKS_PER_INPUT_MAX).for_each(|_| self.tick()),
            Input::Campaign => self.raft.campaign(),
            Input::Propose(bytes) => {
                // Refusals (not leader, term not durable, limits) are normal.
                let _ = self.raft.propose(Bytes::from(vec![bytes; usize::from(bytes % 32)]));
            }
            Input::Read { id, lease } => {
                let mode = if lease { ReadMode::Lease } else { ReadMode::ReadIndex };
                let _ = self.raft.read(u64::from(id), mode);
            }
            Input::Step { from, term, body } => {
                let message = self.message(from, term, body);
                // Refusals of garbage are normal; a storage error is not (memory storage holds
                // everything the core wrote, so the core asked for what it never had).
                if let Err(StepError::Storage(error)) = self.raft.step(message) {
                    panic!("the core asked storage for what it lacks: {error}");
                }
            }
            Input::Persist(count) => self.persist(usize::from(count)),
            Input::ReportUnreachable(peer) if peer >= 128 => self.raft.peer_down(NodeId(u64::from(peer % 8))),
            Input::ReportUnreachable(peer) => self.raft.report_unreachable(NodeId(u64::from(peer % 8))),
            Input::Snapshot => self.snapshot(),
            Input::Restart => self.restart(),
            Input::TakeOutput => self.take_output(),
            Input::AdvanceClock(count) => {
                self.take_output();
                self.raft.advance_clock(u64::from(count % TICKS_PER_INPUT_MAX));
            }
            Input::TickTimers(count) => (0..count % TICKS_PER_INPUT_MAX).for_each(|_| {
                self.take_output();
                self.raft.tick_timers();
            }),
        }
    }

    /// Outputs are taken before every tick at the latest (the contract).
    /// A tick that `ticks_until_due` said could do nothing must do nothing: no output, the same
    /// status.
    fn tick(&mut self) {
        self.take_output();
        let quiet = self.raft.ticks_until_due() > 1 && !self.raft.has_output();
        let before = quiet.then(|| self.raft.status());
        self.raft.tick();
        if let Some(before) = before {
            assert!(!self.raft.has_output(), "a tick before the due one made output");
            assert_eq!(self.raft.status(), before, "a tick before the due one changed the state");
        }
    }

    fn term_of(&self, choice: TermChoice, index: Index) -> Term {
        let term = self.raft.term();
        match choice {
            TermChoice::Current => term,
            TermChoice::Next => term.next(),
            TermChoice::Plus(delta) => Term(term.0.saturating_add(u64::from(delta % 4))),
            TermChoice::Minus(delta) => Term(term.0.saturating_sub(u64::from(delta % 4))),
            TermChoice::AtIndex => self.raft.storage().term(index).unwrap_or_default(),
            TermChoice::Raw(raw) => Term(raw),
        }
    }

    fn index_of(&self, choice: IndexChoice) -> Index {
        let last = self.raft.last_index();
        match choice {
            IndexChoice::Last => last,
            IndexChoice::Commit => self.raft.commit_index(),
            IndexChoice::LastMinus(delta) => Index(last.0.saturating_sub(u64::from(delta % 8))),
            IndexChoice::LastPlus(delta) => Index(last.0.saturating_add(u64::from(delta % 8))),
            IndexChoice::Raw(raw) => Index(raw),
        }
    }

    fn message(&self, from: u8, term: TermChoice, body: BodyChoice) -> Message {
        let from = NodeId(u64::from(from % 8));
        let message_term = self.term_of(term, self.raft.last_index());
        let body = match body {
            BodyChoice::VoteRequest { pre_vote, last_log_index, last_log_term, transfer } => {
                let last_log_index = self.index_of(last_log_index);
                let last_log_term = self.term_of(last_log_term, last_log_index);
                MessageBody::VoteRequest { pre_vote, last_log_index, last_log_term, transfer }
            }
            BodyChoice::TimeoutNow => MessageBody::TimeoutNow,
            BodyChoice::VoteResponse { pre_vote, granted } => MessageBody::VoteResponse { pre_vote, granted },
            BodyChoice::AppendEntries { prev_log_index, prev_log_term, entries, commit } => {
                let prev_log_index = self.index_of(prev_log_index);
                let prev_log_term = self.term_of(prev_log_term, prev_log_index);
                let entries = self.entries_after(prev_log_index, prev_log_term, &entries);
                MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, commit: self.index_of(commit) }
            }
            BodyChoice::AppendSuccess { match_index } => {
                MessageBody::AppendResponse(AppendResult::Success { match_index: self.index_of(match_index) })
            }
            BodyChoice::AppendReject { rejected_index, hint_term, hint_index } => {
                let rejected_index = self.index_of(rejected_index);
                let hint_index = self.index_of(hint_index);
                let hint = ConflictHint { term: hint_term.map(|t| self.term_of(t, hint_index)), index: hint_index };
                MessageBody::AppendResponse(AppendResult::Reject { rejected_index, hint })
            }
            BodyChoice::Heartbeat { commit, round } if round >= 192 => {
                let prev_log_index = self.index_of(commit);
                let choice = if round % 2 == 0 { TermChoice::AtIndex } else { TermChoice::Current };
                let prev_log_term = self.term_of(choice, prev_log_index);
                let commit = Index(prev_log_index.0.saturating_add(u64::from(round % 8)));
                MessageBody::CommitNotice { prev_log_index, prev_log_term, commit }
            }
            BodyChoice::Heartbeat { commit, round } if round >= 128 => {
                MessageBody::Quiesce { commit: self.index_of(commit), round: u64::from(round - 128) }
            }
            BodyChoice::Heartbeat { commit, round } => {
                MessageBody::Heartbeat { commit: self.index_of(commit), round: u64::from(round) }
            }
            BodyChoice::HeartbeatResponse { round } => MessageBody::HeartbeatResponse { round: u64::from(round) },
            BodyChoice::InstallSnapshot { index, term, voters, offset, data_bytes, done } => {
                let index = self.index_of(index);
                let term = self.term_of(term, index);
                let voters = (0..8u64).filter(|bit| voters & (1 << bit) != 0).map(|bit| NodeId(bit + 1));
                let data = Bytes::from(vec![data_bytes; usize::from(data_bytes % 24)]);
                // The snapshot's data is taken to be this byte repeated up to the chunk's end, so
                // a transfer of equal bytes installs. The offset's high bits damage a checksum.
                let chunk_offset = u64::from(offset % 64);
                let whole = vec![data_bytes; (chunk_offset + data.len() as u64) as usize];
                let mut data_crc32 = raft_core::snapshot_crc32(&whole);
                if offset / 64 == 2 {
                    data_crc32 ^= 1;
                }
                let meta = SnapshotMeta { index, term, membership: Membership::new(voters), data_crc32 };
                let mut body = MessageBody::install_snapshot(meta, chunk_offset, data, done);
                if let (MessageBody::InstallSnapshot { chunk_crc32, .. }, 3) = (&mut body, offset / 64) {
                    *chunk_crc32 ^= 1;
                }
                body
            }
            BodyChoice::SnapshotResponse { index, term, next_offset, gap } => {
                let index = self.index_of(index);
                let term = self.term_of(term, index);
                MessageBody::SnapshotResponse { index, term, next_offset: u64::from(next_offset % 64), gap }
            }
            BodyChoice::ReadIndexRequest { request, lease } => {
                let mode = if lease { ReadMode::Lease } else { ReadMode::ReadIndex };
                MessageBody::ReadIndexRequest { request: u64::from(request), mode }
            }
            BodyChoice::ReadIndexResponse { request, index } => {
                let index = index.map(|choice| self.index_of(choice));
                MessageBody::ReadIndexResponse { request: u64::from(request), index }
            }
        };
        Message { from, to: self.me, term: message_term, body }
    }

    /// Entries after (`prev_index`, `prev_term`): consecutive with non-decreasing terms, unless
    /// the fuzzer breaks the run.
    fn entries_after(&self, prev_index: Index, prev_term: Term, choices: &[EntryChoice]) -> Vec<Entry> {
        let (mut index, mut term) = (prev_index, prev_term);
        let mut entries = Vec::new();
        for choice in choices.iter().take(16) {
            index = Index(index.0.saturating_add(if choice.skip_index { 2 } else { 1 }));
            term = Term(term.0.saturating_add(u64::from(choice.term_step % 3)));
            let payload = match choice.payload_bytes {
                0 => EntryPayload::Noop,
                bytes => EntryPayload::Normal(Bytes::from(vec![bytes; usize::from(bytes % 16)])),
            };
            entries.push(Entry { index, term, payload });
        }
        entries
    }

    /// Takes the node's output and carries it out the way the contract says: written to the
    /// node's store (visible to its reads), queued for durability, messages sent, committed
    /// entries applied.
    fn take_output(&mut self) {
        if !self.raft.has_output() {
            return;
        }
        let output = self.raft.take_output().expect("memory storage never fails");
        for message in output.messages.iter().chain(&output.messages_after_persist) {
            assert_eq!(message.from, self.me, "a message not from the node: {message:?}");
        }
        self.raft.storage_mut().write_output(&output).expect("the core hands out writable output");
        if let Some(meta) = &output.install_snapshot {
            // The state machine restores from the snapshot before applying this output.
            assert!(meta.index >= self.applied, "a snapshot rolls applied state back: {meta:?} < {}", self.applied);
            self.applied = meta.index;
        }
        self.check_committed(&output);
        for read in &output.reads {
            if let Ok(index) = read.result {
                assert!(index <= self.applied, "read {} served at {index} before applying it", read.id);
            }
        }
        self.pending.push_back(PendingWrite { output });
    }

    /// Committed entries: in order, exactly once, locally durable, never changed while the node
    /// lives.
    fn check_committed(&mut self, output: &Output) {
        for entry in &output.committed {
            assert_eq!(entry.index, self.applied.next(), "committed entries out of order");
            // Durable means: in the store that survives a crash, or in this very output's install.
            let durable = self.durable.term(entry.index) == Ok(entry.term);
            assert!(durable, "entry {} (term {}) handed out before it is durable", entry.index, entry.term);
            if let Some(&term) = self.committed.get(&entry.index) {
                assert_eq!(term, entry.term, "committed entry {} changed", entry.index);
            }
            self.committed.insert(entry.index, entry.term);
            self.applied = entry.index;
        }
    }

    /// Completes the oldest `count` pending writes (all for 0) with one durability report, and
    /// releases the messages that waited for them (to imaginary peers: their answers are the
    /// fuzzer's to write).
    fn persist(&mut self, count: usize) {
        let count = if count == 0 { self.pending.len() } else { count.min(self.pending.len()) };
        let mut mark = None;
        for write in self.pending.drain(..count) {
            self.durable.write_output(&write.output).expect("the core hands out writable output");
            let output = write.output;
            mark = match (output.entries.last(), &output.install_snapshot) {
                (Some(last), _) => Some((last.index, last.term)),
                (None, Some(meta)) => Some((meta.index, meta.term)),
                (None, None) => mark,
            };
            // Released once this write (and every earlier one) is durable: the vote must be, or
            // a later term must be (which rules out another vote in the vote's term just as well).
            let durable = self.durable.hard_state();
            for message in &output.messages_after_persist {
                if let MessageBody::VoteResponse { pre_vote: false, granted: true } = message.body {
                    let vote = (message.term, Some(message.to));
                    let covered = durable.term > message.term || (durable.term, durable.vote) == vote;
                    assert!(covered, "vote {vote:?} sent before it is durable (durable: {durable:?})");
                    let previous = self.votes.insert(message.term, message.to);
                    assert!(previous.is_none_or(|p| p == message.to), "two votes in term {}", message.term);
                }
            }
        }
        if let Some((index, term)) = mark {
            self.raft.on_persisted(index, term);
        }
    }

    /// Snapshots the (imaginary) state machine at its applied index, like an application would,
    /// then compacts where the core advises.
    fn snapshot(&mut self) {
        let data = self.applied.0.to_le_bytes();
        let Ok(meta) = self.raft.snapshot_meta(self.applied, raft_core::snapshot_crc32(&data)) else { return };
        let durable_holds = self.durable.term(meta.index) == Ok(meta.term);
        let newer = meta.index > self.durable.snapshot().map_or(Index(0), |m| m.index);
        if !meta.exists() || !durable_holds || !newer {
            return;
        }
        self.raft.storage_mut().save_snapshot(&meta, &data).expect("memory storage");
        self.durable.save_snapshot(&meta, &data).expect("memory storage");
        if let Some((index, term)) = self.raft.compaction_point() {
            self.raft.storage_mut().compact(index, term).expect("memory storage");
            self.durable.compact(index, term).expect("memory storage");
        }
    }

    /// Power loss and restart from the durable store, with a fresh seed (as the contract asks).
    fn restart(&mut self) {
        self.pending.clear();
        self.incarnation += 1;
        let seed = self.options.rng_seed() ^ self.incarnation.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let options = self.options.clone().with_rng_seed(seed);
        let durable_term = self.durable.hard_state().term;
        self.raft = Raft::new(self.me, options, self.durable.clone()).expect("memory storage never fails");
        assert_eq!(self.raft.term(), durable_term, "restarted in another term than the durable one");
        self.applied = self.durable.snapshot().map_or(Index(0), |meta| meta.index);
        self.committed.clear();
        self.term = Term(0);
        self.commit = Index(0);
    }

    /// What the driver can check after every input (raft-core checked its own invariants).
    fn check(&mut self) {
        self.raft.check_invariants();
        let (term, commit) = (self.raft.term(), self.raft.commit_index());
        assert!(term >= self.term, "term went back from {} to {term}", self.term);
        assert!(commit >= self.commit, "commit went back from {} to {commit}", self.commit);
        assert!(commit <= self.raft.last_index(), "commit {commit} beyond the log");
        (self.term, self.commit) = (term, commit);
        let first = self.raft.storage().first_index().expect("memory storage");
        for (&index, &term) in self.committed.range(first..) {
            match self.raft.storage().term(index) {
                Ok(found) => assert_eq!(found, term, "committed entry {index} was overwritten"),
                Err(error) => panic!("committed entry {index} vanished from the log: {error}"),
            }
        }
        let hard_state: HardState = self.durable.hard_state();
        assert!(hard_state.term <= term, "the node's term is below its durable term");
        if self.raft.is_quiet() {
            assert!(self.options.quiesce(), "quiet without the option");
            let role = self.raft.role();
            assert!(matches!(role, Role::Leader | Role::Follower), "a quiet {role:?}");
            if role == Role::Leader {
                // A leader forwards no reads: nothing of its own is ever due while quiet.
                assert_eq!(self.raft.ticks_until_due(), u64::MAX, "a quiet leader with a timer due");
            }
        }
    }
}
