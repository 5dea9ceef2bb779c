//! Linearizable reads without writing to the log (thesis §6.4): ReadIndex on the leader, the same
//! forwarded from a follower, and lease reads.
//!
//! ReadIndex: the leader notes its commit index, then confirms it is still the leader with a
//! round of heartbeats. Rounds are numbered by the leader (`seq`), and a read registered before
//! round `s` went out is confirmed once a quorum answered round `s` or a later one: answers are
//! matched by the leader's own numbers, never by the caller's id, so a duplicated or delayed
//! answer cannot confirm a read it was not sent for (etcd#20418). A new leader serves no read
//! until an entry of its own term commits, since before that its commit index may be stale
//! (etcd#7331). A confirmed read is handed out once the node has applied up to its index.
//!
//! Lease: a quorum that answered a round sent at tick `t` will not elect anyone else before
//! `t + election_ticks` by their clocks (leader stickiness), so until `t + election_ticks -
//! clock_drift_max_ticks` by ours the leader may serve reads at once. Only with check-quorum, and
//! only as safe as the drift bound (docs/pitfalls.md #25, #26).

use std::collections::{BTreeMap, VecDeque};

use thiserror::Error;

use crate::message::MessageBody;
use crate::quorum;
use crate::raft::{Raft, Role};
use crate::storage::Storage;
use crate::types::{Index, NodeId};

/// How a read is confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ReadMode {
    /// Confirm leadership with a heartbeat round (on a follower: ask the leader to).
    ReadIndex,
    /// Trust the leader's lease: no round trip while it holds. Needs check-quorum and a clock
    /// drift bound (options `lease_reads`, `clock_drift_max_ticks`).
    Lease,
}

/// Why a read was refused or abandoned. The caller may retry (elsewhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ReadError {
    /// No leader is known to serve or forward the read.
    #[error("no known leader")]
    NoLeader,
    /// Lease reads are off (they need the `lease_reads` option, which needs check-quorum).
    #[error("lease reads are not enabled")]
    LeaseNotEnabled,
    /// `reads_pending_max` reads are already waiting.
    #[error("too many reads pending")]
    TooManyPending,
    /// Leadership changed before the read was confirmed: its outcome is unknown, retry.
    #[error("leadership changed before the read was confirmed")]
    LeaderChanged,
    /// The leader did not answer a forwarded read within an election timeout (the request or
    /// the answer was lost): retry.
    #[error("the leader did not answer the forwarded read in time")]
    TimedOut,
}

/// A read's outcome, in [`crate::Output::reads`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The id the caller gave to [`Raft::read`].
    pub id: u64,
    /// `Ok(index)`: serve the read from the state machine now (after applying this output's
    /// committed entries, which reach at least `index`). `Err`: it will not complete.
    pub result: Result<Index, ReadError>,
}

/// A read waiting on the leader: for a local caller (`from` is `None`) or forwarded by a
/// follower, whose own request number is `id` then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PendingRead {
    id: u64,
    from: Option<NodeId>,
    mode: ReadMode,
    index: Index,
    /// The first heartbeat round sent after the read arrived.
    round: u64,
}

/// All read bookkeeping of one node.
#[derive(Debug, Default)]
pub(crate) struct Reads {
    /// Leader: the number of the last heartbeat round sent (0: none yet in this term).
    pub(crate) round: u64,
    /// Leader: the tick each recent round went out at, oldest first.
    rounds_sent_at: VecDeque<(u64, u64)>,
    /// Leader: the latest round each peer answered, and the tick it went out at.
    answered: BTreeMap<NodeId, (u64, u64)>,
    /// Leader: reads received before an entry of this term committed.
    before_term_commit: VecDeque<PendingRead>,
    /// Leader: reads waiting for a quorum to answer their round.
    confirming: VecDeque<PendingRead>,
    /// Leader: a round must go out at the next output to confirm reads.
    pub(crate) round_wanted: bool,
    /// Follower: reads forwarded to the leader, by request number: (caller id, leader, tick
    /// sent at).
    forwarded: BTreeMap<u64, (u64, NodeId, u64)>,
    next_request: u64,
    /// Confirmed local reads waiting for `applied` to reach their index.
    ready: VecDeque<(u64, Index)>,
    /// Outcomes not yet handed out.
    pub(crate) done: Vec<ReadState>,
}

/// Recent rounds remembered for lease timing; older answers no longer extend a lease.
const ROUNDS_REMEMBERED: usize = 256;

impl Reads {
    /// Forwarded reads are numbered from `first`, drawn at random per incarnation: a delayed
    /// answer to a request of an earlier incarnation must not match one of this incarnation's.
    pub(crate) fn numbered_from(first: u64) -> Self {
        Reads { next_request: first, ..Reads::default() }
    }

    pub(crate) fn pending_count(&self) -> usize {
        self.before_term_commit.len() + self.confirming.len() + self.forwarded.len() + self.ready.len()
    }

    /// Fails every read this node could still complete, as leadership or the leader changed.
    pub(crate) fn abandon_all(&mut self, messages: &mut Vec<(NodeId, MessageBody)>) {
        let pending = self.before_term_commit.drain(..).chain(self.confirming.drain(..));
        for read in pending.collect::<Vec<_>>() {
            match read.from {
                None => self.done.push(ReadState { id: read.id, result: Err(ReadError::LeaderChanged) }),
                Some(peer) => messages.push((peer, MessageBody::ReadIndexResponse { request: read.id, index: None })),
            }
        }
        for (_, (id, _, _)) in std::mem::take(&mut self.forwarded) {
            self.done.push(ReadState { id, result: Err(ReadError::LeaderChanged) });
        }
        self.round = 0;
        self.rounds_sent_at.clear();
        self.answered.clear();
        self.round_wanted = false;
    }

    pub(crate) fn has_output(&self) -> bool {
        !self.done.is_empty()
    }

    /// The latest of this leader's heartbeat rounds that `peer` answered (0 for none).
    pub(crate) fn answered_round(&self, peer: NodeId) -> u64 {
        self.answered.get(&peer).map_or(0, |&(round, _)| round)
    }
}

impl<S: Storage> Raft<S> {
    pub(crate) fn start_read(&mut self, id: u64, mode: ReadMode) -> Result<(), ReadError> {
        if mode == ReadMode::Lease && !self.options.lease_reads() {
            return Err(ReadError::LeaseNotEnabled);
        }
        if self.reads.pending_count() >= self.options.reads_pending_max() {
            return Err(ReadError::TooManyPending);
        }
        match (self.role, self.leader) {
            (Role::Leader, _) => {
                self.leader_read(PendingRead { id, from: None, mode, index: Index(0), round: 0 });
                Ok(())
            }
            (_, Some(leader)) => {
                let request = self.reads.next_request;
                self.reads.next_request = request.wrapping_add(1);
                self.reads.forwarded.insert(request, (id, leader, self.ticks));
                self.send(leader, self.term, MessageBody::ReadIndexRequest { request, mode });
                Ok(())
            }
            (_, None) => Err(ReadError::NoLeader),
        }
    }

    /// A follower forwards a read to us.
    pub(crate) fn on_read_index_request(&mut self, from: NodeId, request: u64, mode: ReadMode) {
        // A node outside the membership gets no entries from us, so it could never apply the
        // index we would give it: refuse, so its caller goes elsewhere.
        let refuse = self.role != Role::Leader
            || !self.memberships.current().is_member(from)
            || (mode == ReadMode::Lease && !self.options.lease_reads())
            || self.reads.pending_count() >= self.options.reads_pending_max();
        if refuse {
            self.send(from, self.term, MessageBody::ReadIndexResponse { request, index: None });
            return;
        }
        self.leader_read(PendingRead { id: request, from: Some(from), mode, index: Index(0), round: 0 });
    }

    /// The leader answers a read we forwarded.
    pub(crate) fn on_read_index_response(&mut self, from: NodeId, request: u64, index: Option<Index>) {
        let Some(&(id, leader, _)) = self.reads.forwarded.get(&request) else { return };
        if leader != from {
            return; // Not from the node we asked: a forged or confused answer.
        }
        self.reads.forwarded.remove(&request);
        match index {
            Some(index) => self.reads.ready.push_back((id, index)),
            None => self.reads.done.push(ReadState { id, result: Err(ReadError::LeaderChanged) }),
        }
        self.release_ready_reads();
    }

    fn leader_read(&mut self, mut read: PendingRead) {
        if !self.committed_in_own_term() {
            self.reads.before_term_commit.push_back(read);
            return;
        }
        read.index = self.log.committed;
        invariant!(self.role == Role::Leader && self.committed_in_own_term(), "a read index not yet known");
        if read.mode == ReadMode::Lease && self.lease_holds() {
            self.confirm(read);
            return;
        }
        if self.memberships.current().all_voters().into_iter().eq([self.id]) {
            self.confirm(read); // Nobody else can lead our term.
            return;
        }
        read.round = self.reads.round + 1;
        self.reads.round_wanted = true;
        self.reads.confirming.push_back(read);
    }

    /// The first entry of our term committed: reads waiting for it may proceed.
    pub(crate) fn on_term_commit(&mut self) {
        let waiting: Vec<PendingRead> = self.reads.before_term_commit.drain(..).collect();
        for read in waiting {
            self.leader_read(read);
        }
    }

    fn confirm(&mut self, read: PendingRead) {
        invariant!(read.index <= self.log.committed, "a read confirmed beyond the commit index");
        match read.from {
            None => {
                self.reads.ready.push_back((read.id, read.index));
                self.release_ready_reads();
            }
            Some(peer) => {
                let body = MessageBody::ReadIndexResponse { request: read.id, index: Some(read.index) };
                self.send(peer, self.term, body);
            }
        }
    }

    /// Numbers a new heartbeat round (sent now) and returns its number.
    pub(crate) fn next_round(&mut self) -> u64 {
        self.reads.round += 1;
        self.reads.round_wanted = false;
        let reads = &mut self.reads;
        let in_order = reads.rounds_sent_at.back().is_none_or(|&(round, at)| round < reads.round && at <= self.ticks);
        invariant!(in_order, "heartbeat rounds out of order");
        reads.rounds_sent_at.push_back((reads.round, self.ticks));
        if reads.rounds_sent_at.len() > ROUNDS_REMEMBERED {
            reads.rounds_sent_at.pop_front();
        }
        reads.round
    }

    /// A peer answered heartbeat round `round`.
    pub(crate) fn on_round_answered(&mut self, from: NodeId, round: u64) {
        if round == 0 || round > self.reads.round {
            return; // From another term's rounds, or garbage.
        }
        let Some(&(_, sent_at)) = self.reads.rounds_sent_at.iter().find(|&&(r, _)| r == round) else { return };
        let entry = self.reads.answered.entry(from).or_insert((0, 0));
        if round > entry.0 {
            *entry = (round, sent_at);
        }
        self.recheck_reads();
    }

    /// Confirms the reads whose round a quorum answered. Runs after every answer, and when the
    /// membership (so the quorum) changes (raft-rs#345).
    pub(crate) fn recheck_reads(&mut self) {
        let confirmed = self.quorum_round();
        while self.reads.confirming.front().is_some_and(|read| read.round <= confirmed) {
            if let Some(read) = self.reads.confirming.pop_front() {
                self.confirm(read);
            }
        }
        self.release_ready_reads();
    }

    /// The latest round a quorum of voters (counting ourselves) answered.
    fn quorum_round(&self) -> u64 {
        let mut rounds: BTreeMap<NodeId, Index> =
            self.reads.answered.iter().map(|(&id, &(round, _))| (id, Index(round))).collect();
        rounds.insert(self.id, Index(self.reads.round));
        quorum::membership_committed_index(self.memberships.current(), &rounds).0
    }

    /// Whether our lease holds now: a quorum answered rounds sent recently enough.
    pub(crate) fn lease_holds(&self) -> bool {
        if !self.options.lease_reads() || self.role != Role::Leader || self.transfer.is_some() {
            // A transfer ends the lease before TimeoutNow goes out (raft-rs#234, openraft#1747).
            return false;
        }
        let mut sent: BTreeMap<NodeId, Index> =
            self.reads.answered.iter().map(|(&id, &(_, sent_at))| (id, Index(sent_at))).collect();
        sent.insert(self.id, Index(self.ticks));
        // The latest tick by which a quorum had heard from us.
        let start = quorum::membership_committed_index(self.memberships.current(), &sent).0;
        invariant!(start <= self.ticks, "a quorum heard from us in the future");
        let lease = u64::from(self.options.election_ticks() - self.options.clock_drift_max_ticks());
        start > 0 && self.ticks < start + lease
    }

    /// Hands out confirmed reads whose index is applied.
    pub(crate) fn release_ready_reads(&mut self) {
        let applied = self.log.applied;
        // Not necessarily in index order (forwarded answers arrive in any order).
        let (now, later): (Vec<_>, Vec<_>) = self.reads.ready.drain(..).partition(|&(_, index)| index <= applied);
        self.reads.ready.extend(later);
        self.reads.done.extend(now.into_iter().map(|(id, index)| ReadState { id, result: Ok(index) }));
    }

    /// A tick: fails forwarded reads the leader has not answered within an election timeout, so
    /// a lost request or answer cannot keep a caller waiting for ever.
    pub(crate) fn expire_forwarded_reads(&mut self) {
        let deadline = u64::from(self.options.election_ticks());
        let now = self.ticks;
        let expired: Vec<u64> = self
            .reads
            .forwarded
            .iter()
            .filter(|&(_, &(_, _, sent))| now.saturating_sub(sent) >= deadline)
            .map(|(&request, _)| request)
            .collect();
        for request in expired {
            if let Some((id, _, _)) = self.reads.forwarded.remove(&request) {
                self.reads.done.push(ReadState { id, result: Err(ReadError::TimedOut) });
            }
        }
    }

    /// Clock ticks until [`Raft::expire_forwarded_reads`] fails a read (`u64::MAX` when none
    /// waits; 0 when one is already due).
    pub(crate) fn forwarded_reads_expire_in(&self) -> u64 {
        let deadline = u64::from(self.options.election_ticks());
        let now = self.ticks;
        self.reads
            .forwarded
            .values()
            .map(|&(_, _, sent)| sent.saturating_add(deadline).saturating_sub(now))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Fails reads as this node loses leadership or changes leader.
    pub(crate) fn abandon_reads(&mut self) {
        let mut messages = Vec::new();
        self.reads.abandon_all(&mut messages);
        for (peer, body) in messages {
            self.send(peer, self.term, body);
        }
    }
}
