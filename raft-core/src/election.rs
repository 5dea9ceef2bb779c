//! Roles, terms, timers and votes: Raft §5.2 and §5.4.1, plus pre-vote, leader stickiness and
//! check-quorum (thesis §9.6 and §6.2).

use crate::error::StepError;
use crate::message::{Message, MessageBody};
use crate::quorum::{self, VoteResult};
use crate::raft::{Raft, Role};
use crate::storage::Storage;
use crate::types::{Entry, EntryPayload, NodeId, Term};

impl<S: Storage> Raft<S> {
    pub(crate) fn tick_election(&mut self) {
        if self.election_elapsed < self.randomized_election_ticks {
            self.election_elapsed += 1;
        }
        // The timers may have run ahead of the clock (a driver catching up after a stall):
        // a follower that still owes its leader stickiness by the clock waits for it, or it
        // would vote for itself inside a lease the leader is serving reads under.
        if self.election_elapsed >= self.randomized_election_ticks && self.is_promotable() && !self.in_lease() {
            self.start_election();
        }
    }

    pub(crate) fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.options.election_ticks() {
            self.election_elapsed = 0;
            if self.options.check_quorum() && !self.quorum_recently_active() {
                tracing::info!(id = %self.id, term = %self.term, "no quorum heard: stepping down");
                self.become_follower(self.term, None);
                return;
            }
            for progress in self.progress.values_mut() {
                progress.recent_active = false;
            }
        }
        self.tick_transfer();
        if self.heartbeat_elapsed >= self.options.heartbeat_ticks() {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    fn quorum_recently_active(&self) -> bool {
        let mut active: std::collections::BTreeSet<NodeId> =
            self.progress.iter().filter(|(_, p)| p.recent_active).map(|(&id, _)| id).collect();
        active.insert(self.id);
        quorum::membership_is_quorum(&self.membership, &active)
    }

    /// Whether this node may campaign: only voters lead, and not with a committed membership
    /// change still unapplied.
    pub(crate) fn is_promotable(&self) -> bool {
        self.may_campaign()
    }

    /// Whether this node still trusts a live leader: it then ignores requests for votes, so a
    /// partitioned or removed node cannot depose a healthy leader (leader stickiness). Judged by
    /// the clock, not the timers: a leader's lease counts on this promise holding for
    /// `election_ticks` of real time after the follower last heard from it.
    pub(crate) fn in_lease(&self) -> bool {
        match self.role {
            Role::Leader => true,
            _ => self.leader.is_some() && self.ticks - self.timer_reset_at < u64::from(self.options.election_ticks()),
        }
    }

    pub(crate) fn start_election(&mut self) {
        // At the largest term a new election could not get a term of its own.
        if !self.is_promotable() || self.term == Term(u64::MAX) {
            return;
        }
        if self.options.pre_vote() {
            self.become_pre_candidate();
            self.request_votes(true, false);
        } else {
            self.become_candidate();
            self.request_votes(false, false);
        }
    }

    /// Campaigns at once, without pre-vote, with vote requests that override leader stickiness.
    pub(crate) fn campaign_for_transfer(&mut self) {
        if !self.is_promotable() || self.term == Term(u64::MAX) {
            return;
        }
        self.become_candidate();
        self.request_votes(false, true);
    }

    fn request_votes(&mut self, pre_vote: bool, transfer: bool) {
        let term = if pre_vote { self.term.next() } else { self.term };
        self.votes.insert(self.id, true);
        if self.tally_votes(pre_vote) {
            return;
        }
        let last_log_index = self.log.last_index();
        let Ok(last_log_term) = self.log.last_term() else {
            tracing::error!(id = %self.id, "storage failed reading the last term: not campaigning");
            self.become_follower(self.term, None);
            return;
        };
        let peers: Vec<NodeId> = self.membership.all_voters().into_iter().filter(|&id| id != self.id).collect();
        for peer in peers {
            self.send(peer, term, MessageBody::VoteRequest { pre_vote, last_log_index, last_log_term, transfer });
        }
    }

    /// Counts the votes so far and acts on a decision; returns whether the election ended.
    fn tally_votes(&mut self, pre_vote: bool) -> bool {
        match quorum::membership_vote_result(&self.membership, &self.votes) {
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
                self.become_follower(self.term, None);
                true
            }
            VoteResult::Pending => false,
        }
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.clear_election_and_leader_state();
    }

    fn become_pre_candidate(&mut self) {
        // Term and vote stay; the known leader is dropped so this node stops defending a lease
        // it no longer has and can grant pre-votes to others (raft-rs#84, etcd#8334).
        self.role = Role::PreCandidate;
        self.leader = None;
        self.clear_election_and_leader_state();
    }

    fn become_candidate(&mut self) {
        self.term = self.term.next();
        self.vote = Some(self.id);
        self.role = Role::Candidate;
        self.leader = None;
        self.clear_election_and_leader_state();
        tracing::debug!(id = %self.id, term = %self.term, "campaigning");
    }

    fn become_leader(&mut self) {
        // Other voters only saw our request after our term and vote were durable; a lone voter
        // wins before that, and must not hand out (index, term) pairs that a crash could reuse.
        if self.votes.iter().any(|(&id, &granted)| granted && id != self.id) {
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
        self.broadcast_pending = true;
        tracing::info!(id = %self.id, term = %self.term, "became leader");
    }

    fn clear_election_and_leader_state(&mut self) {
        self.votes.clear();
        self.progress.clear();
        self.uncommitted.clear();
        self.uncommitted_bytes = 0;
        self.broadcast_pending = false;
        self.incoming_snapshot = None;
        self.transfer = None;
        self.abandon_reads();
        self.reset_election_timer();
    }

    /// Validates and dispatches one message.
    pub(crate) fn step_message(&mut self, m: Message) -> Result<(), StepError> {
        if m.to != self.id {
            return Err(StepError::NotAddressedToUs { to: m.to });
        }
        if m.from == self.id {
            return Err(StepError::FromSelf);
        }
        let fresh_refusal = matches!(m.body, MessageBody::VoteResponse { pre_vote: true, granted: false });
        if m.term == Term(0) && !fresh_refusal {
            return Err(StepError::Malformed(crate::error::Malformed::TermZero));
        }
        // A malformed message is refused before it can move our term, role or leader.
        match &m.body {
            MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, .. } => {
                crate::replication::validate_entries(m.term, *prev_log_index, *prev_log_term, entries)?;
            }
            MessageBody::InstallSnapshot { meta, offset, data, .. } => {
                let limit = self.options.snapshot_chunk_bytes_max();
                crate::snapshot::validate_chunk(m.term, meta, *offset, data, limit)?;
                self.check_snapshot_against_committed(meta)?;
            }
            _ => {}
        }
        if m.term > self.term {
            self.on_higher_term(&m)?;
        } else if m.term < self.term {
            return self.on_lower_term(&m);
        }
        match m.body {
            MessageBody::VoteRequest { pre_vote, last_log_index, last_log_term, .. } => {
                self.on_vote_request(m.from, m.term, pre_vote, last_log_index, last_log_term)
            }
            MessageBody::TimeoutNow => {
                self.on_timeout_now();
                Ok(())
            }
            MessageBody::VoteResponse { pre_vote, granted } => self.on_vote_response(m.from, m.term, pre_vote, granted),
            MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, commit } => {
                self.accept_leader(m.from)?;
                self.on_append_entries(m.from, prev_log_index, prev_log_term, entries, commit)
            }
            MessageBody::Heartbeat { commit, round } => {
                self.accept_leader(m.from)?;
                self.on_heartbeat(m.from, commit, round);
                Ok(())
            }
            MessageBody::InstallSnapshot { meta, offset, data, done, chunk_crc32 } => {
                self.accept_leader(m.from)?;
                let chunk = crate::snapshot::ChunkIn { meta, offset, data, done, chunk_crc32 };
                self.on_install_snapshot(m.from, chunk)
            }
            MessageBody::AppendResponse(result) => self.on_append_response(m.from, result),
            MessageBody::HeartbeatResponse { round } => self.on_heartbeat_response(m.from, round),
            MessageBody::ReadIndexRequest { request, mode } => {
                self.on_read_index_request(m.from, request, mode);
                Ok(())
            }
            MessageBody::ReadIndexResponse { request, index } => {
                self.on_read_index_response(m.from, request, index);
                Ok(())
            }
            MessageBody::SnapshotResponse { index, term, next_offset, gap } => {
                self.on_snapshot_response(m.from, index, term, next_offset, gap)
            }
            MessageBody::SnapshotRefused { index, term, reason } => {
                self.on_snapshot_refused(m.from, index, term, reason)
            }
        }
    }

    /// A message from a later term. Returns `Err` if the message must be dropped unanswered.
    fn on_higher_term(&mut self, m: &Message) -> Result<(), StepError> {
        match &m.body {
            MessageBody::VoteRequest { pre_vote, transfer, .. } => {
                if self.in_lease() && !transfer {
                    return Err(StepError::LeaderSticky { leader: self.leader });
                }
                if !pre_vote {
                    // Step down but keep counting toward our own election: only granting the
                    // vote restarts the timer (Raft §5.2). Otherwise a node with a fast clock and
                    // a stale log could keep an up-to-date node from ever campaigning.
                    let timer = (self.election_elapsed, self.randomized_election_ticks, self.timer_reset_at);
                    self.become_follower(m.term, None);
                    (self.election_elapsed, self.randomized_election_ticks, self.timer_reset_at) = timer;
                }
            }
            // A granted pre-vote carries the term we would campaign in: no term change.
            MessageBody::VoteResponse { pre_vote: true, granted: true } => {}
            body if body.is_from_leader() => self.become_follower(m.term, Some(m.from)),
            _ => {
                // Learning a later term from a refusal or an answer: step down, but keep counting
                // toward our own election, for the same reason as above. Otherwise a hopeless
                // candidate that keeps raising the term keeps resetting a viable one's timer.
                let timer = (self.election_elapsed, self.randomized_election_ticks, self.timer_reset_at);
                self.become_follower(m.term, None);
                (self.election_elapsed, self.randomized_election_ticks, self.timer_reset_at) = timer;
            }
        }
        Ok(())
    }

    /// A message from an earlier term: answer a stale leader, candidate or pre-candidate with our
    /// term so it learns of it (Raft §5.1; etcd#8243 for pre-vote), drop everything else.
    fn on_lower_term(&mut self, m: &Message) -> Result<(), StepError> {
        match m.body {
            MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. } | MessageBody::InstallSnapshot { .. } => {
                self.send(m.from, self.term, MessageBody::HeartbeatResponse { round: 0 });
            }
            // A stale candidate may hear from nobody else: with diverged memberships its only
            // peer can be a node that itself campaigns towards others and never sends to it.
            // Unanswered, it campaigns below our term forever and no leader is elected
            // (simulator seed 131265). The refusal changes nothing here; only the candidate moves up.
            MessageBody::VoteRequest { pre_vote, .. } => {
                self.send(m.from, self.term, MessageBody::VoteResponse { pre_vote, granted: false });
            }
            // A follower behind on terms (removed, or cut off) would wait for an answer forever:
            // refuse with our term, so it learns the term and fails its read.
            MessageBody::ReadIndexRequest { request, .. } => {
                self.send(m.from, self.term, MessageBody::ReadIndexResponse { request, index: None });
            }
            _ => {}
        }
        Err(StepError::StaleTerm { message_term: m.term, current_term: self.term })
    }

    /// An append or heartbeat for our term: its sender is the leader of the term.
    fn accept_leader(&mut self, from: NodeId) -> Result<(), StepError> {
        match self.role {
            Role::Leader => Err(StepError::Malformed(crate::error::Malformed::SecondLeader(from))),
            Role::PreCandidate | Role::Candidate => {
                self.become_follower(self.term, Some(from));
                Ok(())
            }
            Role::Follower => {
                self.leader = Some(from);
                self.restart_election_count();
                Ok(())
            }
        }
    }

    fn on_vote_request(
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
        if can_vote && self.candidate_up_to_date(last_log_index, last_log_term)? {
            if !pre_vote {
                self.vote = Some(from);
                self.restart_election_count();
            }
            // The answer carries the request's term, so a pre-candidate can count it (etcd#8243).
            self.send(from, term, MessageBody::VoteResponse { pre_vote, granted: true });
        } else {
            self.send(from, self.term, MessageBody::VoteResponse { pre_vote, granted: false });
        }
        Ok(())
    }

    fn candidate_up_to_date(&self, last_log_index: crate::Index, last_log_term: Term) -> Result<bool, StepError> {
        #[cfg(feature = "bug-knobs")]
        if self.options.bug_knobs().skip_up_to_date_check {
            return Ok(true);
        }
        Ok(self.log.is_up_to_date(last_log_index, last_log_term)?)
    }

    fn on_vote_response(&mut self, from: NodeId, term: Term, pre_vote: bool, granted: bool) -> Result<(), StepError> {
        let expected = match (self.role, pre_vote) {
            (Role::PreCandidate, true) => (granted && term == self.term.next()) || (!granted && term == self.term),
            (Role::Candidate, false) => term == self.term,
            _ => false,
        };
        if !expected {
            return Err(StepError::Unexpected);
        }
        if !self.membership.is_voter(from) {
            return Err(StepError::UnknownPeer(from));
        }
        self.votes.entry(from).or_insert(granted);
        self.tally_votes(pre_vote);
        Ok(())
    }
}
