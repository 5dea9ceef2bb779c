//! Roles, terms, timers and votes: Raft §5.2 and §5.4.1, plus pre-vote, leader stickiness and
//! check-quorum (thesis §9.6 and §6.2).

use std::collections::BTreeMap;

use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;

use crate::error::{Ignored, StepError};
use crate::message::MessageBody;
use crate::quorum::{self, VoteResult};
use crate::raft::{Raft, Role};
use crate::storage::Storage;
use crate::types::{Entry, EntryPayload, Membership, NodeId, Term};

/// The election state of one node: the votes of the current round and the timers that decide
/// when to campaign (followers, candidates) or to send heartbeats and check the quorum
/// (leaders). Only this module changes it; [`Raft`] asks it questions and tells it what
/// happened.
pub(crate) struct Election {
    /// Votes (or pre-votes) received in the current round, by voter.
    votes: BTreeMap<NodeId, bool>,
    /// Timer ticks toward an election (followers, candidates) or toward the next check-quorum
    /// round (leaders).
    elapsed: u32,
    /// Leader: timer ticks since the last heartbeat round.
    heartbeat_elapsed: u32,
    /// The election timeout drawn for this round, in `[election_ticks, 2 * election_ticks)`.
    randomized_ticks: u32,
    /// The clock when the count toward an election last restarted: a follower trusts its leader
    /// (and refuses to vote or campaign) until `election_ticks` later by the clock.
    restarted_at: u64,
    /// Draws the randomized timeouts; seeded from the options, so runs replay.
    rng: ChaCha8Rng,
    /// Why the current (pre-)candidacy started, for the logs.
    cause: ElectionCause,
}

/// Why a node campaigns; the `cause` field of the election events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ElectionCause {
    /// Its election timeout passed without a word from a leader.
    ElectionTimeout,
    /// The driver asked for it ([`Raft::campaign`](crate::Raft::campaign)).
    Requested,
    /// The leader handed leadership over (`TimeoutNow`).
    LeadershipTransfer,
}

impl ElectionCause {
    fn as_str(self) -> &'static str {
        match self {
            ElectionCause::ElectionTimeout => "election timeout",
            ElectionCause::Requested => "campaign requested",
            ElectionCause::LeadershipTransfer => "leadership transfer",
        }
    }
}

/// Where a node's count toward an election stands; kept across a step down that must not
/// delay the node's own campaign (see [`Raft::step_down_keeping_timer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ElectionCount {
    elapsed: u32,
    randomized_ticks: u32,
    restarted_at: u64,
}

/// What a leader's timer tick made due.
pub(crate) struct LeaderTimersDue {
    /// An election timeout passed since the last check of the quorum's activity.
    pub(crate) quorum_check: bool,
    /// A heartbeat interval passed since the last round.
    pub(crate) heartbeat: bool,
}

impl Election {
    pub(crate) fn new(rng: ChaCha8Rng, election_ticks: u32) -> Self {
        Election {
            votes: BTreeMap::new(),
            elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_ticks: election_ticks,
            restarted_at: 0,
            rng,
            cause: ElectionCause::ElectionTimeout,
        }
    }

    /// A new role or round: draws a new timeout, restarts both counts, forgets the votes.
    pub(crate) fn reset(&mut self, now: u64, election_ticks: u32) {
        self.votes.clear();
        self.restart_count(now);
        self.heartbeat_elapsed = 0;
        self.draw_timeout(election_ticks);
    }

    fn draw_timeout(&mut self, election_ticks: u32) {
        // Uniform in [base, 2*base): the spread is what keeps split votes rare.
        self.randomized_ticks = election_ticks + (self.rng.next_u64() % u64::from(election_ticks)) as u32;
        invariant!(
            (election_ticks..2 * election_ticks).contains(&self.randomized_ticks),
            "election timeout drawn out of range"
        );
    }

    /// Restarts the count toward an election, by the timers and by the clock (a leader was heard
    /// from, or a vote granted).
    pub(crate) fn restart_count(&mut self, now: u64) {
        invariant!(now >= self.restarted_at, "the clock went back");
        self.elapsed = 0;
        self.restarted_at = now;
    }

    /// A quiet leader wakes: its heartbeat and check-quorum counts start over.
    pub(crate) fn restart_leader_timers(&mut self) {
        self.elapsed = 0;
        self.heartbeat_elapsed = 0;
    }

    /// A quiet follower wakes: its count toward an election starts over with a new timeout
    /// drawn, so that followers woken together do not campaign together. The clock's record of
    /// when it last heard from its leader (its stickiness) is left as it is: waking promises
    /// nothing.
    pub(crate) fn restart_timer_afresh(&mut self, election_ticks: u32) {
        self.elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.draw_timeout(election_ticks);
    }

    pub(crate) fn count(&self) -> ElectionCount {
        ElectionCount {
            elapsed: self.elapsed,
            randomized_ticks: self.randomized_ticks,
            restarted_at: self.restarted_at,
        }
    }

    pub(crate) fn resume(&mut self, count: ElectionCount) {
        ElectionCount {
            elapsed: self.elapsed,
            randomized_ticks: self.randomized_ticks,
            restarted_at: self.restarted_at,
        } = count;
    }

    /// A follower's or candidate's timer tick: whether its election timeout has passed.
    pub(crate) fn tick_toward_election(&mut self) -> bool {
        if self.elapsed < self.randomized_ticks {
            self.elapsed += 1;
        }
        self.elapsed >= self.randomized_ticks
    }

    /// A leader's timer tick: what it made due. Each due count starts over.
    pub(crate) fn tick_leader(&mut self, election_ticks: u32, heartbeat_ticks: u32) -> LeaderTimersDue {
        self.heartbeat_elapsed += 1;
        self.elapsed += 1;
        let due = LeaderTimersDue {
            quorum_check: self.elapsed >= election_ticks,
            heartbeat: self.heartbeat_elapsed >= heartbeat_ticks,
        };
        if due.quorum_check {
            self.elapsed = 0;
        }
        if due.heartbeat {
            self.heartbeat_elapsed = 0;
        }
        due
    }

    /// Whether `election_ticks` of the clock have not yet passed since the count last restarted:
    /// the promise of stickiness a follower made to its leader still holds.
    pub(crate) fn within_timeout_by_clock(&self, now: u64, election_ticks: u32) -> bool {
        now - self.restarted_at < u64::from(election_ticks)
    }

    /// A follower's or candidate's timer ticks until its timeout passes (0 when it has).
    pub(crate) fn ticks_to_timeout(&self) -> u64 {
        u64::from(self.randomized_ticks.saturating_sub(self.elapsed))
    }

    /// Clock ticks until the promise of stickiness lapses (0 when it has): the first clock at
    /// which [`Election::within_timeout_by_clock`] is false, less `now`.
    pub(crate) fn clock_ticks_to_lapse(&self, now: u64, election_ticks: u32) -> u64 {
        self.restarted_at.saturating_add(u64::from(election_ticks)).saturating_sub(now)
    }

    /// A leader's timer ticks until [`Election::tick_leader`] makes a round due (at least 1).
    pub(crate) fn leader_ticks_to_due(&self, election_ticks: u32, heartbeat_ticks: u32) -> u64 {
        let heartbeat = heartbeat_ticks.saturating_sub(self.heartbeat_elapsed);
        let quorum_check = election_ticks.saturating_sub(self.elapsed);
        u64::from(heartbeat.min(quorum_check).max(1))
    }

    pub(crate) fn randomized_ticks(&self) -> u32 {
        self.randomized_ticks
    }

    /// Records `from`'s answer; a voter's first answer in a round is the one that counts.
    pub(crate) fn record_vote(&mut self, from: NodeId, granted: bool) {
        self.votes.entry(from).or_insert(granted);
    }

    pub(crate) fn result(&self, membership: &Membership) -> VoteResult {
        quorum::membership_vote_result(membership, &self.votes)
    }

    /// Whether a voter other than `me` granted its vote in this round.
    pub(crate) fn granted_by_another(&self, me: NodeId) -> bool {
        self.votes.iter().any(|(&id, &granted)| granted && id != me)
    }

    pub(crate) fn check_invariants(&self, now: u64, election_ticks: u32) {
        assert!(self.elapsed <= self.randomized_ticks.max(election_ticks), "election count past its timeout");
        assert!(self.restarted_at <= now, "the election timer restarted in the future");
    }
}

impl<S: Storage> Raft<S> {
    pub(crate) fn tick_election(&mut self) {
        let timed_out = self.election.tick_toward_election();
        // The timers may have run ahead of the clock (a driver catching up after a stall):
        // a follower that still owes its leader stickiness by the clock waits for it, or it
        // would vote for itself inside a lease the leader is serving reads under.
        // start_election checks that this node may campaign at all.
        if timed_out && !self.in_lease() {
            self.start_election(ElectionCause::ElectionTimeout);
        }
    }

    pub(crate) fn tick_leader(&mut self) {
        let due = self.election.tick_leader(self.options.election_ticks(), self.options.heartbeat_ticks());
        if due.quorum_check {
            let active = self.tracker.recently_active_quorum(self.memberships.current(), self.id);
            if self.options.check_quorum() && !active {
                tracing::info!(term = %self.term, cause = "check quorum", "stepping down: no quorum heard in an election timeout");
                self.become_follower(self.term, None);
                return;
            }
            self.tracker.forget_activity();
        }
        self.tick_transfer();
        if due.heartbeat {
            if self.options.quiesce() && self.leader_idle() {
                self.send_quiesce_round();
            } else {
                self.broadcast_heartbeat();
            }
        }
    }

    /// Whether this node still trusts a live leader: it then ignores requests for votes, so a
    /// partitioned or removed node cannot depose a healthy leader (leader stickiness). Judged by
    /// the clock, not the timers: a leader's lease counts on this promise holding for
    /// `election_ticks` of real time after the follower last heard from it.
    pub(crate) fn in_lease(&self) -> bool {
        match self.role {
            Role::Leader => true,
            _ => {
                self.leader.is_some()
                    && self.election.within_timeout_by_clock(self.ticks, self.options.election_ticks())
            }
        }
    }

    pub(crate) fn start_election(&mut self, cause: ElectionCause) {
        // At the largest term a new election could not get a term of its own.
        if !self.may_campaign() || self.term == Term(u64::MAX) {
            return;
        }
        self.election.cause = cause;
        if self.options.pre_vote() {
            self.become_pre_candidate();
            tracing::debug!(term = %self.term.next(), cause = cause.as_str(), "pre-vote started");
            self.request_votes(true, false);
        } else {
            self.become_candidate();
            self.request_votes(false, false);
        }
    }

    /// Campaigns at once, without pre-vote, with vote requests that override leader stickiness.
    pub(crate) fn campaign_for_transfer(&mut self) {
        if !self.may_campaign() || self.term == Term(u64::MAX) {
            return;
        }
        self.election.cause = ElectionCause::LeadershipTransfer;
        self.become_candidate();
        self.request_votes(false, true);
    }

    fn request_votes(&mut self, pre_vote: bool, transfer: bool) {
        let expected = if pre_vote { Role::PreCandidate } else { Role::Candidate };
        invariant!(self.role == expected, "asking for votes as a {:?}", self.role);
        let term = if pre_vote { self.term.next() } else { self.term };
        self.election.record_vote(self.id, true);
        if self.tally_votes(pre_vote) {
            return;
        }
        let last_log_index = self.log.last_index();
        let Ok(last_log_term) = self.log.last_term() else {
            tracing::error!("storage failed reading the last term: not campaigning");
            self.become_follower(self.term, None);
            return;
        };
        let peers: Vec<NodeId> =
            self.memberships.current().all_voters().into_iter().filter(|&id| id != self.id).collect();
        for peer in peers {
            self.send(peer, term, MessageBody::VoteRequest { pre_vote, last_log_index, last_log_term, transfer });
        }
    }

    /// Counts the votes so far and acts on a decision; returns whether the election ended.
    fn tally_votes(&mut self, pre_vote: bool) -> bool {
        match self.election.result(self.memberships.current()) {
            VoteResult::Won if pre_vote => {
                self.become_candidate();
                self.request_votes(false, false);
                true
            }
            VoteResult::Won => {
                self.become_leader();
                true
            }
            VoteResult::Lost => {
                if pre_vote {
                    tracing::debug!(term = %self.term.next(), "pre-vote lost");
                } else {
                    tracing::info!(term = %self.term, "election lost");
                }
                self.become_follower(self.term, None);
                true
            }
            VoteResult::Pending => false,
        }
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        invariant!(term >= self.term, "stepping down to term {term} from {}", self.term);
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        self.role = Role::Follower;
        if let Some(new) = leader.filter(|&new| self.leader != Some(new)) {
            tracing::info!(leader = %new, term = %self.term, "leader changed");
        }
        self.leader = leader;
        self.clear_election_and_leader_state();
    }

    fn become_pre_candidate(&mut self) {
        invariant!(self.may_campaign() && self.role != Role::Leader, "a pre-candidate that may not campaign");
        // Term and vote stay; the known leader is dropped so this node stops defending a lease
        // it no longer has and can grant pre-votes to others (raft-rs#84, etcd#8334).
        self.role = Role::PreCandidate;
        self.leader = None;
        self.clear_election_and_leader_state();
    }

    fn become_candidate(&mut self) {
        invariant!(self.may_campaign() && self.role != Role::Leader, "a candidate that may not campaign");
        self.term = self.term.next();
        self.vote = Some(self.id);
        self.role = Role::Candidate;
        self.leader = None;
        self.clear_election_and_leader_state();
        tracing::info!(term = %self.term, cause = self.election.cause.as_str(), "election started");
    }

    fn become_leader(&mut self) {
        let won = self.election.result(self.memberships.current()) == VoteResult::Won;
        invariant!(self.role == Role::Candidate && won, "leading without winning an election");
        // Other voters only saw our request after our term and vote were durable; a lone voter
        // wins before that, and must not hand out (index, term) pairs that a crash could reuse.
        if self.election.granted_by_another(self.id) {
            self.durable_term = self.term;
        }
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.clear_election_and_leader_state();
        let next = self.log.last_index().next();
        self.sync_progress_with_membership();
        // An entry of the new term lets the leader commit (and so learn the commit index) even
        // when no client writes (§5.4.2: earlier terms' entries commit only beneath one).
        let noop = Entry { term: self.term, index: next, payload: EntryPayload::Noop };
        self.append_to_log(vec![noop]);
        invariant!(self.log.last_term() == Ok(self.term), "a new leader's log does not end in its term");
        self.tracker.schedule_broadcast();
        tracing::info!(term = %self.term, last_index = %self.log.last_index(), "became leader");
    }

    fn clear_election_and_leader_state(&mut self) {
        // A new role or term: whatever quiet the old one had is over, and the timers start anew.
        self.quiescence = crate::quiesce::Quiescence::default();
        self.tracker.clear();
        self.receiver.abandon();
        self.transfer = None;
        self.abandon_reads();
        self.election.reset(self.ticks, self.options.election_ticks());
    }

    /// Steps down to follower in `term` without restarting the count toward our own election:
    /// learning a later term from someone else must not delay a viable candidate (Raft §5.2:
    /// only granting a vote or hearing a leader restarts the timer). Otherwise a node with a
    /// fast clock and a stale log, or a hopeless candidate that keeps raising the term, could
    /// keep an up-to-date node from ever campaigning.
    pub(crate) fn step_down_keeping_timer(&mut self, term: Term) {
        let count = self.election.count();
        self.become_follower(term, None);
        self.election.resume(count);
    }

    pub(crate) fn on_vote_request(
        &mut self,
        from: NodeId,
        term: Term,
        pre_vote: bool,
        last_log_index: crate::Index,
        last_log_term: Term,
    ) -> Result<(), StepError> {
        // One vote per term; a pre-vote for a later term promises nothing.
        let can_vote =
            self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none()) || (pre_vote && term > self.term);
        let refusal = if !can_vote {
            Some(if self.vote.is_some() { "already voted in this term" } else { "following a leader in this term" })
        } else if !self.candidate_up_to_date(last_log_index, last_log_term)? {
            Some("candidate's log is behind")
        } else {
            None
        };
        let Some(reason) = refusal else {
            invariant!(pre_vote || self.vote.is_none_or(|vote| vote == from), "a second vote in term {}", self.term);
            if !pre_vote {
                self.vote = Some(from);
                self.election.restart_count(self.ticks);
            }
            log_vote(pre_vote, from, term, None, (last_log_index, last_log_term));
            // The answer carries the request's term, so a pre-candidate can count it (etcd#8243).
            self.send(from, term, MessageBody::VoteResponse { pre_vote, granted: true });
            return Ok(());
        };
        log_vote(pre_vote, from, term, Some(reason), (last_log_index, last_log_term));
        self.send(from, self.term, MessageBody::VoteResponse { pre_vote, granted: false });
        Ok(())
    }

    fn candidate_up_to_date(&self, last_log_index: crate::Index, last_log_term: Term) -> Result<bool, StepError> {
        #[cfg(feature = "bug-knobs")]
        if self.options.bug_knobs().skip_up_to_date_check {
            return Ok(true);
        }
        Ok(self.log.is_up_to_date(last_log_index, last_log_term)?)
    }

    pub(crate) fn on_vote_response(
        &mut self,
        from: NodeId,
        term: Term,
        pre_vote: bool,
        granted: bool,
    ) -> Result<(), StepError> {
        let expected = match (self.role, pre_vote) {
            (Role::PreCandidate, true) => (granted && term == self.term.next()) || (!granted && term == self.term),
            (Role::Candidate, false) => term == self.term,
            _ => false,
        };
        if !expected {
            return Err(StepError::Ignored(Ignored::Unexpected));
        }
        if !self.memberships.current().is_voter(from) {
            return Err(StepError::Ignored(Ignored::UnknownPeer(from)));
        }
        self.election.record_vote(from, granted);
        self.tally_votes(pre_vote);
        Ok(())
    }
}

/// The reason logged for a vote refused because the request's term is stale.
pub(crate) const STALE_TERM: &str = "stale term";
/// The reason logged for a vote refused because this node hears from a live leader.
pub(crate) const LIVE_LEADER: &str = "a live leader (stickiness)";

/// Logs a vote or pre-vote granted or refused (with the reason): votes at info, pre-votes (one
/// round per election timeout of a cut-off node) at debug. `last` is the candidate's last log
/// index and term.
pub(crate) fn log_vote(
    pre_vote: bool,
    candidate: NodeId,
    term: Term,
    refused: Option<&'static str>,
    last: (crate::Index, Term),
) {
    let (last_log_index, last_log_term) = last;
    match (pre_vote, refused) {
        (false, None) => tracing::info!(%candidate, %term, "vote granted"),
        // A cut-off node campaigning (pre-vote off) is refused once per election timeout for a
        // stale term or a live leader: at debug, so that it does not flood the log.
        (false, Some(reason @ (STALE_TERM | LIVE_LEADER))) => {
            tracing::debug!(%candidate, %term, reason, %last_log_index, %last_log_term, "vote refused");
        }
        (false, Some(reason)) => {
            tracing::info!(%candidate, %term, reason, %last_log_index, %last_log_term, "vote refused");
        }
        (true, None) => tracing::debug!(%candidate, %term, "pre-vote granted"),
        (true, Some(reason)) => {
            tracing::debug!(%candidate, %term, reason, %last_log_index, %last_log_term, "pre-vote refused");
        }
    }
}
