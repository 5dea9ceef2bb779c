//! Log replication: the AppendEntries consistency check and conflict resolution (Raft §5.3),
//! per-follower flow control, and commitment by quorum with the rule of §5.4.2 (Figure 8).

use crate::error::{Ignored, Malformed, StepError};
use crate::message::{AppendResult, ConflictHint, MessageBody};
use crate::progress::ProgressState;
use crate::raft::{Raft, Role};
use crate::storage::{Storage, StorageError};
use crate::types::{Entry, EntryPayload, Index, NodeId, Term};

impl<S: Storage> Raft<S> {
    pub(crate) fn on_append_entries(
        &mut self,
        from: NodeId,
        prev_log_index: Index,
        prev_log_term: Term,
        mut entries: Vec<Entry>,
        leader_commit: Index,
        answer_success: bool,
    ) -> Result<(), StepError> {
        let committed = self.log.committed;
        let (prev_log_index, prev_log_term, skip) = if prev_log_index < committed {
            // Entries up to our commit index are the same in every leader's log (leader
            // completeness): skip them and check the rest against our committed entry.
            let skip = (committed.0 - prev_log_index.0).min(entries.len() as u64) as usize;
            let committed_term = self.log.term(committed)?;
            // An honest leader's entries agree with ours up to our commit index; refuse ones that
            // do not, or whose rest would put a lower term after our committed entry.
            let at_commit = entries[..skip].last().filter(|e| e.index == committed);
            let disagrees = at_commit.is_some_and(|e| e.term != committed_term);
            if disagrees || entries[skip..].first().is_some_and(|e| e.term < committed_term) {
                return Err(StepError::Malformed(Malformed::ConflictsWithCommitted(committed)));
            }
            (committed, committed_term, skip)
        } else {
            (prev_log_index, prev_log_term, 0)
        };
        if !self.log.matches(prev_log_index, prev_log_term) {
            let hint = self.conflict_hint(prev_log_index)?;
            let result = AppendResult::Reject { rejected_index: prev_log_index, hint };
            self.send(from, self.term, MessageBody::AppendResponse(result));
            return Ok(());
        }
        let last_new = Index(prev_log_index.0 + (entries.len() - skip) as u64);
        let last_new_term = entries[skip..].last().map_or(prev_log_term, |entry| entry.term);
        // Only entries that conflict (and everything after them) replace ours: a follower never
        // truncates entries that match, or a stale append could erase acknowledged entries.
        if let Some(conflict) = self.log.find_conflict(&entries[skip..]) {
            let last_index = self.log.last_index();
            if conflict <= last_index {
                // Entries of ours that the leader's contradict go (never committed ones: checked above).
                let entries_removed = last_index.0 - conflict.0 + 1;
                let (from_index, term, leader) = (conflict, self.term, from);
                tracing::info!(%from_index, entries_removed, %last_index, %leader, %term, "log truncated: entries conflict with the leader's");
            }
            let offset = skip + (conflict.0 - prev_log_index.0 - 1) as usize;
            entries.drain(..offset);
            self.append_to_log(entries);
        }
        // Our log now matches the leader's up to the last index it sent (log matching, §5.3).
        invariant!(self.log.matches(last_new, last_new_term), "the log differs from the leader's at {last_new}");
        self.commit_to(leader_commit.min(last_new));
        if answer_success {
            let result = AppendResult::Success { match_index: last_new };
            self.send(from, self.term, MessageBody::AppendResponse(result));
        }
        Ok(())
    }

    /// Where the leader should probe next after our log failed the check at `rejected`.
    fn conflict_hint(&self, rejected: Index) -> Result<ConflictHint, StepError> {
        let last = self.log.last_index();
        if rejected > last {
            return Ok(ConflictHint { term: None, index: last.next() });
        }
        let term = self.log.term(rejected)?;
        let floor = self.log.committed.next().max(self.log.first_index()?);
        let index = self.log.first_index_of_term(floor, rejected, term);
        invariant!(index <= rejected, "a conflict hint beyond the rejected index");
        Ok(ConflictHint { term: Some(term), index })
    }

    pub(crate) fn on_heartbeat(&mut self, from: NodeId, commit: Index, round: u64) {
        // The leader never sends more than it knows we hold, but a node that lost its disk may hold
        // less: clamp rather than trust (etcd#10166).
        self.commit_to(commit.min(self.log.last_index()));
        self.send(from, self.term, MessageBody::HeartbeatResponse { round });
    }

    /// Raises the commit index to `index` (never lowers it). The caller vouches that `index` is
    /// committed: a leader by counting a quorum, a follower because its leader said so about an
    /// index where its log matches the leader's.
    pub(crate) fn commit_to(&mut self, index: Index) {
        invariant!(index <= self.log.last_index(), "commit beyond the log");
        if index > self.log.committed {
            self.log.committed = index;
        }
    }

    /// Whether the commit index is at an entry of our own term: until then a new leader does not
    /// know the commit index (§5.4.2), serves no read and changes no membership.
    pub(crate) fn committed_in_own_term(&self) -> bool {
        self.log.term(self.log.committed) == Ok(self.term)
    }

    pub(crate) fn on_append_response(&mut self, from: NodeId, result: AppendResult) -> Result<(), StepError> {
        if self.role != Role::Leader {
            return Err(StepError::Ignored(Ignored::Unexpected));
        }
        let last = self.log.last_index();
        let candidate_next = match result {
            AppendResult::Success { match_index: index } | AppendResult::Reject { rejected_index: index, .. }
                if index > last =>
            {
                return Err(StepError::Malformed(Malformed::AckBeyondLog(index)));
            }
            AppendResult::Reject { hint, rejected_index } => Some(self.next_from_hint(hint, rejected_index)),
            AppendResult::Success { .. } => None,
        };
        let progress = self.tracker.get_mut(from).ok_or(StepError::Ignored(Ignored::UnknownPeer(from)))?;
        progress.recent_active = true;
        match result {
            AppendResult::Success { match_index } => {
                let advanced = progress.on_success(match_index);
                invariant!(progress.match_index <= last, "peer {from} matches beyond our log");
                if advanced {
                    self.maybe_commit();
                    self.maybe_send_timeout_now();
                }
            }
            AppendResult::Reject { rejected_index, .. } => {
                let candidate = candidate_next.unwrap_or(rejected_index);
                if !progress.on_reject(rejected_index, candidate) {
                    return Ok(()); // A stale rejection: nothing to resend.
                }
            }
        }
        self.send_appends_while_possible(from);
        Ok(())
    }

    /// Turns a follower's conflict hint for the append rejected at `rejected` into the next index
    /// to probe. Our entries of the follower's conflicting term, if any, match the follower's, so
    /// the probe goes just past them; without any, it skips the follower's whole term.
    fn next_from_hint(&self, hint: ConflictHint, rejected: Index) -> Index {
        let Some(term) = hint.term else { return hint.index };
        let Ok(first) = self.log.first_index() else { return hint.index };
        let upper = rejected.min(self.log.last_index());
        if upper < first.prev() {
            return hint.index;
        }
        match self.log.last_index_with_term_at_most(first.prev(), upper, term) {
            Some((index, found)) if found == term => index.next(),
            _ => hint.index,
        }
    }

    pub(crate) fn on_heartbeat_response(&mut self, from: NodeId, round: u64) -> Result<(), StepError> {
        if self.role != Role::Leader {
            return Err(StepError::Ignored(Ignored::Unexpected));
        }
        let last = self.log.last_index();
        if self.tracker.get(from).is_none() {
            return Err(StepError::Ignored(Ignored::UnknownPeer(from)));
        }
        self.on_round_answered(from, round);
        let progress = self.tracker.get_mut(from).ok_or(StepError::Ignored(Ignored::UnknownPeer(from)))?;
        progress.recent_active = true;
        progress.on_heartbeat_response();
        if progress.state == ProgressState::Snapshot {
            // Chunks may have been lost: on_heartbeat_response rewound the transfer if so.
            self.send_snapshot_chunks(from);
        } else if progress.match_index < last {
            if progress.next_index <= last {
                self.send_appends_while_possible(from);
            } else {
                // Everything was sent but not all acknowledged: the appends or their answers may
                // be lost. With no new proposals nothing else would go out, so probe with an
                // empty append at our last index; its answer repairs match (or next).
                self.send_append(from, true);
            }
        }
        self.maybe_go_quiet();
        Ok(())
    }

    pub(crate) fn send_appends_while_possible(&mut self, peer: NodeId) {
        let window = self.options.inflight_messages_max();
        for _ in 0..=window {
            let behind = self.tracker.get(peer).is_some_and(|p| p.next_index <= self.log.last_index());
            if !behind || !self.send_append(peer, false) {
                break;
            }
        }
    }

    /// Sends one append to `peer` unless flow control holds it back or there is nothing to send
    /// (and `allow_empty` is false). Returns whether a message went out. A storage error sends
    /// nothing rather than a malformed append (openraft#1795).
    pub(crate) fn send_append(&mut self, peer: NodeId, allow_empty: bool) -> bool {
        let Some(progress) = self.tracker.get(peer) else { return false };
        if progress.is_paused() {
            return false;
        }
        let next = progress.next_index;
        let last = self.log.last_index();
        if next > last && !allow_empty {
            return false;
        }
        let prev_log_index = next.prev();
        let prev_log_term = match self.log.term(prev_log_index) {
            Ok(term) => term,
            // The follower needs entries we compacted: it catches up from the snapshot
            // (etcd#7470, openraft#511).
            Err(StorageError::Compacted(_)) => return self.start_snapshot(peer),
            Err(error) => {
                tracing::warn!(%peer, %error, "cannot read prev term: append not sent");
                return false;
            }
        };
        let entries = if next <= last {
            let (bytes, count) = (self.options.message_bytes_max(), self.options.message_entries_max());
            match self.log.entries(next, last.next(), bytes, count) {
                Ok(entries) => entries,
                Err(StorageError::Compacted(_)) => return self.start_snapshot(peer),
                Err(error) => {
                    tracing::warn!(%peer, %error, "cannot read entries: append not sent");
                    return false;
                }
            }
        } else {
            Vec::new()
        };
        let sent_last = Index(prev_log_index.0 + entries.len() as u64);
        invariant!(entries.first().is_none_or(|entry| entry.index == next), "an append not starting at next");
        let count = entries.len();
        if let Some(progress) = self.tracker.get_mut(peer) {
            progress.sent_append(sent_last, count);
        }
        let body = MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, commit: self.log.committed };
        self.send(peer, self.term, body);
        true
    }

    /// Sends what each follower lacks.
    pub(crate) fn broadcast_append(&mut self) {
        for peer in self.tracker.peers() {
            self.send_appends_while_possible(peer);
        }
    }

    /// Tells every follower the new commit index: a follower in the replicate state that was
    /// sent everything gets a [`MessageBody::CommitNotice`] (which it does not answer unless its
    /// log disagrees: its answer to an empty append would tell nothing new), any other what
    /// [`Raft::send_append`] sends it (its missing entries, or an empty append that probes).
    pub(crate) fn broadcast_commit(&mut self) {
        let last = self.log.last_index();
        for peer in self.tracker.peers() {
            let sent_all = self.tracker.get(peer).and_then(|progress| {
                let caught_up = progress.state == ProgressState::Replicate && progress.next_index > last;
                (caught_up && !progress.is_paused()).then(|| progress.next_index.prev())
            });
            let Some(prev_log_index) = sent_all else {
                self.send_append(peer, true);
                continue;
            };
            let prev_log_term = match self.log.term(prev_log_index) {
                Ok(term) => term,
                // Compacted or unreadable: the append path knows what to do (a snapshot, or nothing).
                Err(_) => {
                    self.send_append(peer, true);
                    continue;
                }
            };
            let body = MessageBody::CommitNotice { prev_log_index, prev_log_term, commit: self.log.committed };
            self.send(peer, self.term, body);
        }
    }

    pub(crate) fn broadcast_heartbeat(&mut self) {
        let round = self.next_round();
        let commit = self.log.committed;
        let targets: Vec<(NodeId, Index)> =
            self.tracker.iter().map(|(id, p)| (id, p.match_index.min(commit))).collect();
        for (peer, commit) in targets {
            self.send(peer, self.term, MessageBody::Heartbeat { commit, round });
        }
    }

    /// Advances the commit index to what a quorum holds durably, but only through an entry of
    /// the current term: an earlier term's entry on a majority can still be overwritten
    /// (Figure 8), so it commits only beneath one of ours.
    pub(crate) fn maybe_commit(&mut self) {
        let index = self.tracker.quorum_match(self.memberships.current(), self.id, self.log.stable_last_index());
        if index <= self.log.committed || !self.commits_by_counting(index) {
            return;
        }
        let first_of_term = !self.committed_in_own_term();
        // Figure 8: only an entry of our own term commits by counting replicas.
        let own_term = self.log.term(index) == Ok(self.term);
        invariant!(own_term || cfg!(feature = "bug-knobs"), "committing an earlier term's entry at {index}");
        self.commit_to(index);
        if first_of_term && self.committed_in_own_term() {
            self.on_term_commit();
        }
        self.tracker.release_through(index);
        self.broadcast_commit();
        self.after_commit_membership();
    }

    /// Whether an entry at `index` held by a quorum may be committed by counting replicas.
    pub(crate) fn commits_by_counting(&self, index: Index) -> bool {
        #[cfg(feature = "bug-knobs")]
        if self.options.bug_knobs().commit_old_terms_by_counting {
            return true;
        }
        self.log.term(index) == Ok(self.term)
    }
}

/// Rejects an append whose entries could not have come from an honest leader of `term`.
pub(crate) fn validate_entries(
    term: Term,
    prev_index: Index,
    prev_term: Term,
    entries: &[Entry],
) -> Result<(), StepError> {
    if prev_term > term {
        return Err(StepError::Malformed(Malformed::PrevTermAboveMessage(prev_term)));
    }
    let mut expected = prev_index;
    let mut floor = prev_term;
    for entry in entries {
        expected = Index(expected.0.checked_add(1).ok_or(StepError::Malformed(Malformed::EntriesNotConsecutive {
            expected: Index(u64::MAX),
            found: entry.index,
        }))?);
        if entry.index != expected {
            return Err(StepError::Malformed(Malformed::EntriesNotConsecutive { expected, found: entry.index }));
        }
        if entry.index == Index::END {
            return Err(StepError::Malformed(Malformed::IndexAtEnd(entry.index)));
        }
        if entry.term < floor || entry.term > term {
            return Err(StepError::Malformed(Malformed::EntryTermOutOfOrder { index: entry.index, term: entry.term }));
        }
        if let EntryPayload::Membership(membership) = &entry.payload
            && let Err(reason) = membership.validate()
        {
            return Err(StepError::Malformed(Malformed::InvalidMembership { index: entry.index, reason }));
        }
        floor = entry.term;
    }
    Ok(())
}
