//! Snapshots: describing a local snapshot, compaction with a trailing margin, and streaming a
//! snapshot to a follower in chunks (leader side) and receiving it (follower side).
//!
//! The data never passes through the core as a whole: the leader reads one chunk at a time from
//! [`Storage::snapshot_chunk`], at most `snapshot_chunks_inflight_max` chunks are unacknowledged
//! per follower, and the follower hands each chunk to its driver in [`crate::Output`] and
//! acknowledges it once written. Memory on both sides stays within a window of chunks.
//!
//! Integrity: a snapshot's metadata carries the crc32 of its whole data (`data_crc32`), and each
//! chunk carries a crc32 of itself (`chunk_crc32`). The follower checks every chunk before it
//! hands it to its driver and the whole data before it installs it; on a mismatch it drops the
//! transfer (nothing is installed, and the next transfer starts a new staging area) and sends
//! `SnapshotRefused`, on which the leader starts over from offset 0. The leader checks what it
//! reads back from its own store against `data_crc32` too (a store should also check each read
//! with checksums of its own, as `raft_storage::DiskStorage` does): a damaged stored copy is a
//! [`StorageError::SnapshotCorrupt`], which [`Raft::take_output`] returns so that the driver
//! stops the node (fail-stop), and no further chunk of it is sent.

use bytes::Bytes;

use crate::error::{Ignored, Malformed, StepError};
use crate::membership::MembershipHistory;
use crate::message::{AppendResult, MessageBody, SnapshotRefusal, snapshot_chunk_crc32};
use crate::progress::SnapshotTransfer;
use crate::raft::Raft;
use crate::storage::{Storage, StorageError};
use crate::types::{Index, NodeId, SnapshotMeta, Term};

/// A received chunk of a snapshot, for the driver to write into its store's staging area.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedChunk {
    /// The snapshot the chunk belongs to.
    pub meta: SnapshotMeta,
    /// Where the bytes go. Offset 0 starts a new staging area, discarding any earlier one.
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
}

/// The snapshot a follower is receiving: the next offset it expects, and the crc32 of the data
/// received before it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct IncomingSnapshot {
    meta: SnapshotMeta,
    next_offset: u64,
    data_crc32: u32,
}

/// A follower's side of snapshot transfer: the snapshot it is receiving, and the checked chunks
/// not yet handed to its driver. Only this module changes it.
#[derive(Debug, Default)]
pub(crate) struct SnapshotReceiver {
    incoming: Option<IncomingSnapshot>,
    chunks: Vec<ReceivedChunk>,
}

impl SnapshotReceiver {
    /// Stops receiving (the node's role or leader changed). Chunks already checked stay for the
    /// driver: a later transfer starts at offset 0, which starts a new staging area anyway.
    pub(crate) fn abandon(&mut self) {
        self.incoming = None;
    }

    fn is_receiving(&self, meta: &SnapshotMeta) -> bool {
        self.incoming.as_ref().is_some_and(|incoming| incoming.meta == *meta)
    }

    /// The offset expected next of `meta`: 0 for a snapshot not being received.
    fn expected_offset(&self, meta: &SnapshotMeta) -> u64 {
        self.incoming.as_ref().filter(|incoming| incoming.meta == *meta).map_or(0, |incoming| incoming.next_offset)
    }

    /// The crc32 of the data of `meta` received so far (0 for nothing).
    fn received_crc32(&self, meta: &SnapshotMeta) -> u32 {
        self.incoming.as_ref().filter(|incoming| incoming.meta == *meta).map_or(0, |incoming| incoming.data_crc32)
    }

    /// Takes a checked chunk: the data of `meta` is now received up to `next_offset`, with the
    /// crc32 `data_crc32`.
    fn accept(&mut self, chunk: ReceivedChunk, next_offset: u64, data_crc32: u32) {
        invariant!(chunk.offset == self.expected_offset(&chunk.meta), "a chunk out of order accepted");
        invariant!(next_offset == chunk.offset + chunk.data.len() as u64, "a chunk's end miscounted");
        let meta = chunk.meta.clone();
        self.chunks.push(chunk);
        self.incoming = Some(IncomingSnapshot { meta, next_offset, data_crc32 });
    }

    /// Drops the transfer of `meta`, and its chunks not yet handed out.
    fn drop_transfer(&mut self, meta: &SnapshotMeta) {
        if self.is_receiving(meta) {
            self.incoming = None;
        }
        self.chunks.retain(|chunk| chunk.meta != *meta);
    }

    /// The whole of `meta` arrived: no transfer is in progress any more.
    fn finish(&mut self, meta: &SnapshotMeta) {
        invariant!(self.chunks.last().is_some_and(|chunk| chunk.meta == *meta), "finished without its last chunk");
        self.incoming = None;
    }

    pub(crate) fn take_chunks(&mut self) -> Vec<ReceivedChunk> {
        std::mem::take(&mut self.chunks)
    }

    pub(crate) fn has_chunks(&self) -> bool {
        !self.chunks.is_empty()
    }
}

/// One chunk of an `InstallSnapshot` message.
pub(crate) struct ChunkIn {
    pub(crate) meta: SnapshotMeta,
    pub(crate) offset: u64,
    pub(crate) data: Bytes,
    pub(crate) done: bool,
    pub(crate) chunk_crc32: u32,
}

/// The crc32 of the data `crc` covers followed by `data`.
fn crc32_continued(crc: u32, data: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(crc);
    hasher.update(data);
    hasher.finalize()
}

impl<S: Storage> Raft<S> {
    /// Switches `peer` to snapshot transfer (its next entries are compacted) and sends the first
    /// chunks. Returns whether anything was sent.
    pub(crate) fn start_snapshot(&mut self, peer: NodeId) -> bool {
        let meta = match self.log.storage.snapshot() {
            Ok(meta) if meta.exists() => meta,
            Ok(_) => {
                tracing::warn!(%peer, "entries compacted but no snapshot: nothing sent");
                return false;
            }
            Err(error) => {
                tracing::warn!(%peer, %error, "cannot read the snapshot: nothing sent");
                return false;
            }
        };
        if let Ok(first) = self.log.first_index() {
            invariant!(meta.index >= first.prev(), "the snapshot does not cover the compacted entries");
        }
        let Some(progress) = self.tracker.get_mut(peer) else { return false };
        let (index, snapshot_term) = (meta.index, meta.term);
        tracing::info!(%peer, %index, %snapshot_term, term = %self.term, "sending snapshot");
        progress.become_snapshot(meta);
        self.send_snapshot_chunks(peer)
    }

    /// Sends chunks to `peer` while its window has room. Returns whether any went out.
    pub(crate) fn send_snapshot_chunks(&mut self, peer: NodeId) -> bool {
        let chunk_max = self.options.snapshot_chunk_bytes_max();
        let window_bytes = chunk_max.saturating_mul(self.options.snapshot_chunks_inflight_max());
        let mut sent = false;
        loop {
            if self.storage_failure.is_some() {
                return sent; // The node must stop: nothing more of a damaged copy goes out.
            }
            let Some(transfer) = self.tracker.get(peer).and_then(|p| p.snapshot.as_ref()) else { return sent };
            if transfer.done_sent || transfer.sent_offset.saturating_sub(transfer.acked_offset) >= window_bytes {
                return sent;
            }
            let (meta, offset) = (transfer.meta.clone(), transfer.sent_offset);
            let chunk = match self.log.storage.snapshot_chunk(meta.index, meta.term, offset, chunk_max) {
                Ok(chunk) => chunk,
                Err(error @ StorageError::SnapshotCorrupt { .. }) => {
                    self.fail_storage(error);
                    return sent;
                }
                Err(error) => {
                    // A newer snapshot replaced this one (or storage failed): start over later,
                    // from the latest snapshot, when the next heartbeat answer arrives.
                    tracing::debug!(%peer, %error, "snapshot chunk unreadable: transfer restarts");
                    if let Some(progress) = self.tracker.get_mut(peer) {
                        progress.become_probe();
                    }
                    return sent;
                }
            };
            // Never trust the store to honour the limit, nor to make progress.
            let too_long = chunk.data.len() as u64 > chunk_max;
            let data = if too_long { chunk.data.slice(..chunk_max as usize) } else { chunk.data };
            let done = chunk.done && !too_long;
            if data.is_empty() && !done {
                tracing::warn!(%peer, offset, "store returned an empty snapshot chunk");
                return sent;
            }
            let Some(transfer) = self.tracker.get_mut(peer).and_then(|p| p.snapshot.as_mut()) else { return sent };
            let read_back = transfer.read_back(offset, &data);
            if done && read_back.is_some_and(|crc| crc != meta.data_crc32) {
                // Every byte of the stored copy was read in order, and they are not the data the
                // snapshot was taken with: the store is damaged.
                self.fail_storage(StorageError::SnapshotCorrupt { index: meta.index, offset });
                return sent;
            }
            transfer.sent_offset = offset + data.len() as u64;
            transfer.done_sent = done;
            let window_held = transfer.sent_offset - transfer.acked_offset <= window_bytes.saturating_add(chunk_max);
            invariant!(window_held, "snapshot chunks sent beyond the window");
            self.send(peer, self.term, MessageBody::install_snapshot(meta, offset, data, done));
            sent = true;
        }
    }

    /// Records a failure of the node's own storage that it cannot work around: the driver must
    /// stop the node. [`Raft::take_output`] (and the `step` that found it) return it from now on.
    pub(crate) fn fail_storage(&mut self, error: StorageError) {
        tracing::error!(%error, "storage failed: the node must stop");
        self.storage_failure.get_or_insert(error);
    }

    /// A follower refused the snapshot we were sending it (a checksum failed on its side): it
    /// dropped what it had, so send it all again from offset 0.
    pub(crate) fn on_snapshot_refused(
        &mut self,
        from: NodeId,
        index: Index,
        term: Term,
        reason: SnapshotRefusal,
    ) -> Result<(), StepError> {
        let transfer = self.transfer_answered(from, index, term)?;
        transfer.restart();
        tracing::warn!(peer = %from, %index, ?reason, "snapshot refused by the follower: sending it again");
        self.send_snapshot_chunks(from);
        Ok(())
    }

    /// The snapshot transfer to `from` that its answer about the snapshot at (`index`, `term`)
    /// concerns, on a leader; the answer shows the follower is alive. `Unexpected` when we do not
    /// lead or the answer is about another (earlier) transfer.
    fn transfer_answered(
        &mut self,
        from: NodeId,
        index: Index,
        term: Term,
    ) -> Result<&mut SnapshotTransfer, StepError> {
        if !self.is_leader() {
            return Err(StepError::Ignored(Ignored::Unexpected));
        }
        let progress = self.tracker.get_mut(from).ok_or(StepError::Ignored(Ignored::UnknownPeer(from)))?;
        progress.recent_active = true;
        let Some(transfer) = progress.snapshot.as_mut() else { return Err(StepError::Ignored(Ignored::Unexpected)) };
        if transfer.meta.index != index || transfer.meta.term != term {
            return Err(StepError::Ignored(Ignored::Unexpected)); // About an earlier transfer.
        }
        Ok(transfer)
    }

    /// A follower reports how much of a snapshot it has written.
    pub(crate) fn on_snapshot_response(
        &mut self,
        from: NodeId,
        index: Index,
        term: Term,
        next_offset: u64,
        gap: bool,
    ) -> Result<(), StepError> {
        self.transfer_answered(from, index, term)?.on_report(next_offset, gap);
        self.send_snapshot_chunks(from);
        Ok(())
    }

    /// One chunk from the leader of our term.
    pub(crate) fn on_install_snapshot(&mut self, from: NodeId, chunk: ChunkIn) -> Result<(), StepError> {
        let committed = self.log.committed;
        let index = chunk.meta.index;
        let held = self.log.term(index);
        if index <= committed {
            self.check_snapshot_against_committed(&chunk.meta)?;
            // Stale: everything it covers is already committed here. Tell the leader how far
            // our log matches so it resumes appending (docs/pitfalls.md #15).
            self.send(from, self.term, MessageBody::AppendResponse(AppendResult::Success { match_index: committed }));
            return Ok(());
        }
        if held == Ok(chunk.meta.term) {
            // We hold its last entry, so our log matches up to it: keep the entries, commit.
            self.log.committed = index;
            self.send(from, self.term, MessageBody::AppendResponse(AppendResult::Success { match_index: index }));
            return Ok(());
        }
        self.receive_chunk(from, chunk)
    }

    /// Refuses a snapshot whose last entry contradicts our committed entry at that index
    /// (openraft#1892): no honest leader sends one.
    pub(crate) fn check_snapshot_against_committed(&self, meta: &SnapshotMeta) -> Result<(), StepError> {
        if meta.index <= self.log.committed && self.log.term(meta.index).is_ok_and(|term| term != meta.term) {
            return Err(StepError::Malformed(Malformed::SnapshotConflictsWithCommitted(meta.index)));
        }
        Ok(())
    }

    /// Takes a chunk of a snapshot that will replace our log, if it is the one expected next and
    /// its checksums hold.
    fn receive_chunk(&mut self, from: NodeId, chunk: ChunkIn) -> Result<(), StepError> {
        if self.log.has_snapshot_to_install() {
            // A snapshot just completed and its install is not handed out yet. A chunk of
            // another transfer would go out in the same output, and the driver writes every
            // chunk of an output before its install: an offset-0 chunk would replace the staged
            // snapshot, which could then not be installed (found by fuzzing, node_inputs).
            // Drop it; the leader resends once its transfer stalls.
            return Ok(());
        }
        let ChunkIn { meta, offset, data, done, chunk_crc32 } = chunk;
        let (index, term) = (meta.index, meta.term);
        // A new transfer starts at 0; one we are not receiving is asked for from the start. The
        // first chunk of the one we are receiving is a duplicate (or the leader starting over):
        // answered with our offset, so the leader resumes there instead of a delayed copy wiping
        // out what was received.
        let expected = self.receiver.expected_offset(&meta);
        if offset != expected {
            let gap = offset > expected;
            self.send(from, self.term, MessageBody::SnapshotResponse { index, term, next_offset: expected, gap });
            return Ok(());
        }
        // Checked only for the chunk expected next: a damaged stray copy of another chunk must
        // not wipe out a transfer that is going well.
        if snapshot_chunk_crc32(&meta, offset, &data) != chunk_crc32 {
            return Err(self.refuse_snapshot(from, &meta, SnapshotRefusal::ChunkChecksum { offset }));
        }
        let data_crc32 = crc32_continued(self.receiver.received_crc32(&meta), &data);
        if done && data_crc32 != meta.data_crc32 {
            return Err(self.refuse_snapshot(from, &meta, SnapshotRefusal::DataChecksum));
        }
        let next_offset = offset + data.len() as u64;
        tracing::debug!(leader = %from, %index, offset, bytes = data.len(), done, "snapshot chunk received");
        self.receiver.accept(ReceivedChunk { meta: meta.clone(), offset, data }, next_offset, data_crc32);
        if !done {
            self.send(from, self.term, MessageBody::SnapshotResponse { index, term, next_offset, gap: false });
            return Ok(());
        }
        self.install_received(from, meta, next_offset);
        Ok(())
    }

    /// Drops the transfer of `meta` (a checksum failed): what was received of it is never
    /// installed, and its chunks not yet handed to the driver are not handed out. The next
    /// transfer starts at offset 0, which makes the driver start a new staging area. Asks the
    /// leader to start over.
    fn refuse_snapshot(&mut self, from: NodeId, meta: &SnapshotMeta, reason: SnapshotRefusal) -> StepError {
        tracing::warn!(leader = %from, index = %meta.index, ?reason, "snapshot refused: a checksum failed");
        self.receiver.drop_transfer(meta);
        let (index, term) = (meta.index, meta.term);
        self.send(from, self.term, MessageBody::SnapshotRefused { index, term, reason });
        StepError::Malformed(match reason {
            SnapshotRefusal::ChunkChecksum { offset } => Malformed::SnapshotChunkChecksum { index, offset },
            SnapshotRefusal::DataChecksum => Malformed::SnapshotChecksum(index),
        })
    }

    /// The last chunk of `meta` arrived and the whole data checked out: install it.
    fn install_received(&mut self, from: NodeId, meta: SnapshotMeta, bytes: u64) {
        let (index, term) = (meta.index, meta.term);
        // A snapshot at or below the commit index is answered without installing (it would
        // roll the log back).
        invariant!(index > self.log.committed, "installing a snapshot at or below the commit index");
        self.receiver.finish(&meta);
        let (leader, snapshot_term) = (from, term);
        tracing::info!(%index, %snapshot_term, %leader, bytes, term = %self.term, "snapshot received: installing it");
        self.memberships = MembershipHistory::new(meta.index, meta.membership.clone());
        self.log.install_snapshot(meta);
        // Sent once the install is durable, like any acknowledgement.
        self.send(from, self.term, MessageBody::AppendResponse(AppendResult::Success { match_index: index }));
    }
}

/// Rejects a chunk that no honest leader of `term` could have sent.
pub(crate) fn validate_chunk(
    term: Term,
    meta: &SnapshotMeta,
    offset: u64,
    data: &Bytes,
    chunk_bytes_max: u64,
) -> Result<(), StepError> {
    let bytes = data.len() as u64;
    if bytes > chunk_bytes_max {
        return Err(StepError::Malformed(Malformed::SnapshotChunkTooLarge { bytes, limit: chunk_bytes_max }));
    }
    // At `Index::END` the log's next index would saturate (found by fuzzing, node_inputs).
    let invalid = meta.index == Index(0)
        || meta.index == Index::END
        || meta.term == Term(0)
        || meta.term > term
        || meta.membership.voters_incoming.is_empty()
        || offset.checked_add(bytes).is_none();
    if invalid {
        return Err(StepError::Malformed(Malformed::SnapshotInvalid(meta.index)));
    }
    if let Err(reason) = meta.membership.validate() {
        return Err(StepError::Malformed(Malformed::InvalidMembership { index: meta.index, reason }));
    }
    Ok(())
}
