//! Quiescence (option `quiesce`): an idle group stops its timers, so that a node hosting
//! thousands of idle groups spends nothing on them but memory. docs/multi-raft.md, "Idle groups:
//! quiescence", has the design and the safety argument; this module is the code.
//!
//! **The leader** goes quiet in two steps. At a heartbeat tick where its group is idle
//! ([`Raft::leader_idle`]: its whole log committed, durable and on every follower, nothing
//! pending), it sends a `Quiesce` round instead of a heartbeat. Once every follower answered that
//! round (a follower answers it with its number only if it went quiet itself), and the group is
//! still idle and the leader sent nothing else since, it stops its heartbeat and check-quorum
//! timers. It wakes, with both timers and the check-quorum record of who answered started
//! afresh, when it is no longer idle after an input (a proposal, a read its lease cannot serve, a
//! membership change, a leadership transfer), when it sends any message of a leader, on any vote
//! request (someone campaigns, perhaps a removed node that raised the term of a follower whose
//! stickiness had lapsed: heartbeats let that follower tell the leader), and on
//! [`Raft::peer_down`] of a follower.
//!
//! **A follower** goes quiet on a `Quiesce` from its leader at its term whose commit index is
//! its own last index: its election timer stops. It wakes, with a new timeout drawn, only on
//! evidence that its leader is awake or gone: a heartbeat of a later round than that `Quiesce`,
//! an append that brings entries it lacks or a commit index beyond its own, a message of a
//! leader with another id, any change of its term or role (a vote request of a later term,
//! `campaign`, `TimeoutNow`), and [`Raft::peer_down`] of its leader. A quiet follower whose term
//! a vote request raises also tells its quiet leader the new term (a `HeartbeatResponse`, as its
//! answer to the next heartbeat would): the candidate, a removed node say, may ask only nodes
//! other than the leader, and the group would otherwise keep a quiet leader of an old term and
//! members of a later one for good. Nothing else wakes it:
//! a woken follower runs its election timer, and one woken by a stale duplicate would campaign
//! against a live leader that sends nothing.
//!
//! The clock runs on while quiet: a quiet leader's lease lapses by it and a quiet follower's
//! stickiness lapses by it, exactly as without quiescence.

use crate::message::MessageBody;
use crate::progress::ProgressState;
use crate::raft::{Raft, Role};
use crate::storage::Storage;
use crate::types::{Index, NodeId};

/// A log's last index, commit index and last term: an append that changes none of them brought
/// nothing new.
pub(crate) type LogPosition = (Index, Index, Option<crate::Term>);

/// Where a node stands with quiescence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Quiescence {
    /// The node's timers are stopped.
    pub(crate) quiet: bool,
    /// Leader: the `Quiesce` round whose answers from every follower let it go quiet, cleared as
    /// soon as it sends any other message of a leader. Quiet follower: the round of the
    /// `Quiesce` that quieted it (a heartbeat of a later round wakes it).
    pub(crate) round: Option<u64>,
}

impl<S: Storage> Raft<S> {
    /// Whether this leader's group is idle: its whole log is committed (so the membership in
    /// force is committed and not joint, and no proposal is in flight), durable here and held by
    /// every follower (voters and learners), and nothing is pending: no unsent broadcast, no
    /// read, no leadership transfer, no snapshot transfer. Whether a quorum answered recently
    /// is the `Quiesce` round's business.
    pub(crate) fn leader_idle(&self) -> bool {
        let last = self.log.last_index();
        self.role == Role::Leader
            && self.log.committed == last
            && self.log.stable_last_index() == last
            && !self.log.has_unpersisted()
            && !self.memberships.current().is_joint()
            && self.transfer.is_none()
            && !self.tracker.broadcast_pending()
            && self.reads.pending_count() == 0
            && !self.reads.round_wanted
            && self.tracker.iter().all(|(_, p)| p.match_index == last && p.state != ProgressState::Snapshot)
    }

    /// An idle leader's heartbeat tick: a `Quiesce` round instead of a heartbeat. A leader with
    /// no follower goes quiet at once.
    pub(crate) fn send_quiesce_round(&mut self) {
        invariant!(self.leader_idle() && !self.quiescence.quiet, "a quiesce round from a busy or quiet leader");
        let round = self.next_round();
        let commit = self.log.committed;
        let peers = self.tracker.peers();
        for &peer in &peers {
            self.send(peer, self.term, MessageBody::Quiesce { commit, round });
        }
        self.quiescence.round = Some(round);
        if peers.is_empty() {
            self.go_quiet();
        }
    }

    /// After a heartbeat answer: goes quiet once every follower answered the latest `Quiesce`
    /// round, if the group is still idle and nothing else was sent since.
    pub(crate) fn maybe_go_quiet(&mut self) {
        let Some(round) = self.quiescence.round else { return };
        if self.quiescence.quiet || !self.leader_idle() {
            return;
        }
        if self.tracker.peers().into_iter().all(|peer| self.reads.answered_round(peer) >= round) {
            self.go_quiet();
        }
    }

    fn go_quiet(&mut self) {
        invariant!(self.role == Role::Leader && self.leader_idle(), "a busy leader going quiet");
        tracing::debug!(term = %self.term, "group idle: leader goes quiet");
        self.quiescence.quiet = true;
    }

    /// A leader is about to send a message of a leader (other than `Quiesce`): any `Quiesce`
    /// round is void (a follower may wake on this message), and a quiet leader is acting again.
    pub(crate) fn before_leader_message(&mut self) {
        self.quiescence.round = None;
        if self.quiescence.quiet {
            self.wake_leader();
        }
    }

    /// Wakes a quiet leader: heartbeats and check-quorum resume with their counts at zero, and
    /// the record of who answered is forgotten, so that the first check-quorum round, an election
    /// timeout from now, needs a quorum heard from since waking (a leader cut off while quiet
    /// steps down in time).
    pub(crate) fn wake_leader(&mut self) {
        invariant!(self.role == Role::Leader, "waking a non-leader as a leader");
        tracing::debug!(term = %self.term, "quiet leader wakes");
        self.quiescence = Quiescence::default();
        self.election.restart_leader_timers();
        self.tracker.forget_activity();
    }

    /// Wakes a quiet follower: its election timer runs again, from zero, with a new timeout.
    pub(crate) fn wake_follower(&mut self) {
        invariant!(self.role == Role::Follower, "waking a non-follower as a follower");
        tracing::debug!(term = %self.term, "quiet follower wakes");
        self.quiescence = Quiescence::default();
        self.election.restart_timer_afresh(self.options.election_ticks());
    }

    /// A `Quiesce` from our leader at our term (already accepted as leader): commit what it
    /// says, and go quiet if we hold exactly the leader's log, which it says is all committed.
    /// The answer counts toward the leader's round only if we went quiet.
    pub(crate) fn on_quiesce(&mut self, from: NodeId, commit: Index, round: u64) {
        let last = self.log.last_index();
        self.commit_to(commit.min(last));
        let obey = self.options.quiesce() && self.role == Role::Follower && commit == last && round > 0;
        if obey {
            // A stale `Quiesce` must not lower the round: heartbeats sent between the two would
            // then wake us while our leader sleeps.
            let round = self.quiescence.round.filter(|_| self.quiescence.quiet).map_or(round, |quiet| quiet.max(round));
            self.quiescence = Quiescence { quiet: true, round: Some(round) };
        }
        self.send(from, self.term, MessageBody::HeartbeatResponse { round: if obey { round } else { 0 } });
    }

    /// A quiet follower's leader sent a heartbeat of `round`: a round after the one that quieted
    /// it shows a leader awake again.
    pub(crate) fn wake_on_heartbeat(&mut self, round: u64) {
        if self.quiescence.quiet && self.quiescence.round.is_some_and(|quiet| round > quiet) {
            self.wake_follower();
        }
    }

    /// A quiet follower took an append from its leader: one that brought entries it lacked or a
    /// later commit index shows a leader at work (a stale duplicate changes neither).
    pub(crate) fn wake_on_append(&mut self, before: Option<LogPosition>) {
        let Some(before) = before else { return };
        if self.quiescence.quiet && self.role == Role::Follower && self.log_position() != before {
            self.wake_follower();
        }
    }

    /// What [`Raft::wake_on_append`] compares, taken only for a quiet node (the last term may be
    /// a read of the store, and a busy group steps an append for every write).
    pub(crate) fn log_position_if_quiet(&self) -> Option<LogPosition> {
        self.quiescence.quiet.then(|| self.log_position())
    }

    fn log_position(&self) -> LogPosition {
        (self.log.last_index(), self.log.committed, self.log.last_term().ok())
    }

    /// See [`Raft::wake`].
    pub(crate) fn wake_quiet(&mut self) {
        if !self.quiescence.quiet {
            return;
        }
        match self.role {
            Role::Leader => {
                self.wake_leader();
                self.broadcast_heartbeat();
            }
            Role::Follower => self.wake_follower(),
            _ => {}
        }
    }

    /// See [`Raft::peer_down`].
    pub(crate) fn on_peer_down(&mut self, peer: NodeId) {
        if !self.quiescence.quiet {
            return;
        }
        match self.role {
            Role::Leader if self.tracker.get(peer).is_some() => self.wake_leader(),
            Role::Follower if self.leader == Some(peer) => self.wake_follower(),
            _ => {}
        }
    }

    /// After every input: a quiet leader with work wakes.
    pub(crate) fn settle_quiescence(&mut self) {
        if self.quiescence.quiet && self.role == Role::Leader && !self.leader_idle() {
            self.wake_leader();
        }
    }

    /// Asserts what quiet means: only with the option, only a leader with an idle group or a
    /// follower that knows its leader.
    pub(crate) fn check_quiescence_invariants(&self) {
        if !self.quiescence.quiet {
            return;
        }
        assert!(self.options.quiesce(), "quiet without the quiesce option");
        match self.role {
            Role::Leader => assert!(self.leader_idle(), "a quiet leader with work to do"),
            Role::Follower => assert!(self.leader.is_some(), "a quiet follower without a leader"),
            role => panic!("a quiet {role:?}"),
        }
    }
}
