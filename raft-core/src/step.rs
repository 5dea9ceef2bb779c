//! The message dispatcher: every message from a peer enters here. It is validated (addressing,
//! term 0, malformed entries and snapshot chunks) before it can move the node's term, role or
//! leader; then the term rules of Raft §5.1 apply (a later term is adopted, an earlier one
//! answered with ours or dropped); then the body goes to its owner's handler.

use crate::error::{Ignored, Malformed, StepError};
use crate::message::{Message, MessageBody};
use crate::raft::{Raft, Role};
use crate::storage::Storage;
use crate::types::{NodeId, Term};

impl<S: Storage> Raft<S> {
    /// Validates and dispatches one message.
    pub(crate) fn step_message(&mut self, m: Message) -> Result<(), StepError> {
        if m.to != self.id {
            return Err(StepError::Malformed(Malformed::NotAddressedToUs { to: m.to }));
        }
        if m.from == self.id {
            return Err(StepError::Malformed(Malformed::FromSelf));
        }
        let fresh_refusal = matches!(m.body, MessageBody::VoteResponse { pre_vote: true, granted: false });
        if m.term == Term(0) && !fresh_refusal {
            return Err(StepError::Malformed(Malformed::TermZero));
        }
        // A malformed message is refused before it can move our term, role or leader.
        match &m.body {
            MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, .. } => {
                crate::replication::validate_entries(m.term, *prev_log_index, *prev_log_term, entries)?;
            }
            MessageBody::CommitNotice { prev_log_index, prev_log_term, .. } => {
                crate::replication::validate_entries(m.term, *prev_log_index, *prev_log_term, &[])?;
            }
            MessageBody::InstallSnapshot { meta, offset, data, .. } => {
                let limit = self.options.snapshot_chunk_bytes_max();
                crate::snapshot::validate_chunk(m.term, meta, *offset, data, limit)?;
                self.check_snapshot_against_committed(meta)?;
            }
            _ => {}
        }
        if m.term > self.term {
            let previous_term = self.term;
            self.on_higher_term(&m)?;
            if self.term > previous_term {
                let (term, from, kind) = (self.term, m.from, m.body.kind());
                tracing::info!(%previous_term, %term, %from, kind, "term changed by a message");
            }
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
                let before = self.log_position_if_quiet();
                let result = self.on_append_entries(m.from, prev_log_index, prev_log_term, entries, commit, true);
                self.wake_on_append(before);
                result
            }
            MessageBody::CommitNotice { prev_log_index, prev_log_term, commit } => {
                self.accept_leader(m.from)?;
                let before = self.log_position_if_quiet();
                let result = self.on_append_entries(m.from, prev_log_index, prev_log_term, Vec::new(), commit, false);
                self.wake_on_append(before);
                result
            }
            MessageBody::Heartbeat { commit, round } => {
                self.accept_leader(m.from)?;
                self.on_heartbeat(m.from, commit, round);
                self.wake_on_heartbeat(round);
                Ok(())
            }
            MessageBody::Quiesce { commit, round } => {
                self.accept_leader(m.from)?;
                self.on_quiesce(m.from, commit, round);
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
            MessageBody::VoteRequest { pre_vote, transfer, last_log_index, last_log_term } => {
                if self.in_lease() && !transfer {
                    let (reason, last) = (crate::election::LIVE_LEADER, (*last_log_index, *last_log_term));
                    crate::election::log_vote(*pre_vote, m.from, m.term, Some(reason), last);
                    return Err(StepError::Ignored(Ignored::LeaderSticky { leader: self.leader }));
                }
                if !pre_vote {
                    // A quiet follower's leader sends nothing that this node could answer with
                    // the new term, and a candidate (a removed node, say) may ask only nodes that
                    // are not the leader: the group would then sit with a quiet leader of an old
                    // term and members of a later one, for good. Tell the leader the term, as the
                    // answer to its next heartbeat would (fuzzing, cluster_schedule).
                    let quiet_leader = self.leader.filter(|leader| *leader != self.id && self.quiescence.quiet);
                    self.step_down_keeping_timer(m.term);
                    if let Some(leader) = quiet_leader {
                        self.send(leader, self.term, MessageBody::HeartbeatResponse { round: 0 });
                    }
                }
            }
            // A granted pre-vote carries the term we would campaign in: no term change.
            MessageBody::VoteResponse { pre_vote: true, granted: true } => {}
            body if body.is_from_leader() => self.become_follower(m.term, Some(m.from)),
            // Learning a later term from a refusal or an answer.
            _ => self.step_down_keeping_timer(m.term),
        }
        Ok(())
    }

    /// A message from an earlier term: answer a stale leader, candidate or pre-candidate with our
    /// term so it learns of it (Raft §5.1; etcd#8243 for pre-vote), drop everything else.
    fn on_lower_term(&mut self, m: &Message) -> Result<(), StepError> {
        match m.body {
            MessageBody::AppendEntries { .. }
            | MessageBody::CommitNotice { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::Quiesce { .. }
            | MessageBody::InstallSnapshot { .. } => {
                self.send(m.from, self.term, MessageBody::HeartbeatResponse { round: 0 });
            }
            // A stale candidate may hear from nobody else: with diverged memberships its only
            // peer can be a node that itself campaigns towards others and never sends to it.
            // Unanswered, it campaigns below our term forever and no leader is elected
            // (simulator seed 131265). The refusal changes nothing here; only the candidate moves up.
            MessageBody::VoteRequest { pre_vote, last_log_index, last_log_term, .. } => {
                let last = (last_log_index, last_log_term);
                crate::election::log_vote(pre_vote, m.from, m.term, Some(crate::election::STALE_TERM), last);
                self.send(m.from, self.term, MessageBody::VoteResponse { pre_vote, granted: false });
            }
            // A follower behind on terms (removed, or cut off) would wait for an answer forever:
            // refuse with our term, so it learns the term and fails its read.
            MessageBody::ReadIndexRequest { request, .. } => {
                self.send(m.from, self.term, MessageBody::ReadIndexResponse { request, index: None });
            }
            _ => {}
        }
        Err(StepError::Ignored(Ignored::StaleTerm { message_term: m.term, current_term: self.term }))
    }

    /// An append or heartbeat for our term: its sender is the leader of the term.
    fn accept_leader(&mut self, from: NodeId) -> Result<(), StepError> {
        match self.role {
            Role::Leader => Err(StepError::Malformed(Malformed::SecondLeader(from))),
            Role::PreCandidate | Role::Candidate => {
                self.become_follower(self.term, Some(from));
                Ok(())
            }
            Role::Follower => {
                if self.quiescence.quiet && self.leader != Some(from) {
                    self.wake_follower(); // Not the leader that quieted us.
                }
                if self.leader != Some(from) {
                    tracing::info!(leader = %from, term = %self.term, "leader changed");
                }
                self.leader = Some(from);
                self.election.restart_count(self.ticks);
                Ok(())
            }
        }
    }
}
