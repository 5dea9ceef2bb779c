//! What a leader knows about each follower's log, and the flow control that bounds what it sends.

use std::collections::VecDeque;

use crate::types::{Index, SnapshotMeta};

/// How the leader is currently sending to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The leader does not know where the follower's log matches: one append per round trip.
    Probe,
    /// The follower's log matches up to `match_index`: appends are pipelined up to the window.
    Replicate,
    /// The entries the follower needs are compacted: a snapshot is streamed to it in chunks, and
    /// no appends are sent until it is installed.
    Snapshot,
}

/// A snapshot being streamed to one follower, chunk by chunk, with a bounded window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SnapshotTransfer {
    /// The snapshot being sent.
    pub(crate) meta: SnapshotMeta,
    /// The follower has written everything before this offset.
    pub(crate) acked_offset: u64,
    /// The next offset to send.
    pub(crate) sent_offset: u64,
    /// Whether the chunk that ends the data was sent (and not rewound).
    pub(crate) done_sent: bool,
    /// The last offset the transfer rewound to after a gap, so that several reports of one gap
    /// cause one resend.
    pub(crate) rewound_to: Option<u64>,
    /// `acked_offset` at the previous heartbeat answer.
    pub(crate) acked_at_heartbeat: u64,
    /// Heartbeat answers in a row with no acknowledged progress while chunks were outstanding:
    /// at [`SNAPSHOT_STALLED_HEARTBEATS`] the chunks count as lost and are resent.
    pub(crate) stalled_heartbeats: u32,
    /// The latest gap the follower reported below `acked_offset` since the last progress: a
    /// stale report, or a follower that restarted and lost what it had. Acted on only when the
    /// transfer stalls, so stale reports cannot multiply the chunks in flight.
    pub(crate) reported_below: Option<u64>,
    /// The leader's own check of what it reads: how many bytes it has read back from its store
    /// in order from offset 0, and their crc32. Once the data's end is read this way, the crc
    /// must equal the metadata's `data_crc32`, or the stored copy is damaged. Reading out of
    /// order (after a rewind) starts the count again only at offset 0.
    pub(crate) read_back: Option<(u64, u32)>,
}

/// Heartbeat answers without progress after which outstanding snapshot chunks are resent.
pub const SNAPSHOT_STALLED_HEARTBEATS: u32 = 2;

impl SnapshotTransfer {
    /// Goes back to resend from `offset` (which the follower expects next).
    pub(crate) fn rewind(&mut self, offset: u64) {
        self.acked_offset = self.acked_offset.min(offset);
        self.sent_offset = offset;
        self.done_sent = false;
        self.rewound_to = Some(offset);
    }

    /// The follower refused the snapshot (a checksum failed) and dropped what it had: send it
    /// all again from offset 0. Gap reports still in flight from before name offset 0 too;
    /// `rewound_to` makes them cause no second resend.
    pub(crate) fn restart(&mut self) {
        self.acked_offset = 0;
        self.acked_at_heartbeat = 0;
        self.stalled_heartbeats = 0;
        self.reported_below = None;
        self.rewind(0);
    }

    /// Feeds the chunk read at `offset` into the read-back check; returns the crc32 of the data
    /// from offset 0 through this chunk when the reads so far covered it in order.
    pub(crate) fn read_back(&mut self, offset: u64, data: &[u8]) -> Option<u32> {
        self.read_back = match self.read_back {
            Some((read, crc)) if read == offset => Some((read, crc)),
            _ if offset == 0 => Some((0, 0)),
            _ => None,
        };
        let (read, crc) = self.read_back?;
        let mut hasher = crc32fast::Hasher::new_with_initial(crc);
        hasher.update(data);
        let crc = hasher.finalize();
        self.read_back = Some((read + data.len() as u64, crc));
        Some(crc)
    }

    /// The follower expects `next_offset` next; with `gap`, it refused a chunk that started
    /// beyond it. Rewinds happen only at increasing offsets (once each), so every chunk sent
    /// causes at most a window of resends: retransmissions stay linear in the snapshot's size.
    pub(crate) fn on_report(&mut self, next_offset: u64, gap: bool) {
        if next_offset > self.acked_offset {
            self.acked_offset = next_offset;
            // The follower may hold more than we think we sent (an answer from before a rewind).
            self.sent_offset = self.sent_offset.max(next_offset);
            self.reported_below = None;
        }
        if !gap {
            return;
        }
        if next_offset < self.acked_offset {
            self.reported_below = Some(next_offset);
        } else if next_offset < self.sent_offset && self.rewound_to != Some(next_offset) {
            self.rewind(next_offset);
        }
    }
}

/// A bounded window of in-flight appends, each remembered by its last index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Inflights {
    last_indexes: VecDeque<Index>,
    capacity: usize,
}

impl Inflights {
    /// An empty window of `capacity` messages.
    pub(crate) fn new(capacity: usize) -> Self {
        Inflights { last_indexes: VecDeque::with_capacity(capacity.min(64)), capacity }
    }
    /// Whether no more appends may be sent.
    pub(crate) fn is_full(&self) -> bool {
        self.last_indexes.len() >= self.capacity
    }
    /// How many appends are in flight.
    pub(crate) fn count(&self) -> usize {
        self.last_indexes.len()
    }
    fn add(&mut self, last: Index) {
        invariant!(!self.is_full(), "add to a full inflight window");
        self.last_indexes.push_back(last);
    }
    fn free_to(&mut self, index: Index) {
        while self.last_indexes.front().is_some_and(|&last| last <= index) {
            self.last_indexes.pop_front();
        }
    }
    fn free_first(&mut self) {
        self.last_indexes.pop_front();
    }
    fn reset(&mut self) {
        self.last_indexes.clear();
    }
}

/// The leader's view of one follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Progress {
    /// The highest index known to match (and be durable) on the follower.
    pub(crate) match_index: Index,
    /// The next index to send.
    pub(crate) next_index: Index,
    /// Probe or replicate.
    pub(crate) state: ProgressState,
    /// In probe state: an append is outstanding, wait for its answer or a heartbeat response.
    pub(crate) probe_sent: bool,
    /// The in-flight window (replicate state).
    pub(crate) inflights: Inflights,
    /// Whether the follower was heard from since the last check-quorum round.
    pub(crate) recent_active: bool,
    /// The snapshot transfer, in the snapshot state.
    pub(crate) snapshot: Option<SnapshotTransfer>,
}

impl Progress {
    pub(crate) fn new(next_index: Index, inflight_messages_max: usize) -> Self {
        Progress {
            match_index: Index(0),
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: Inflights::new(inflight_messages_max),
            recent_active: false,
            snapshot: None,
        }
    }

    /// Whether the leader must hold back appends to this follower.
    pub(crate) fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.is_full(),
            // Chunks have their own window; appends wait for the install.
            ProgressState::Snapshot => true,
        }
    }

    pub(crate) fn become_probe(&mut self) {
        self.enter(ProgressState::Probe);
    }

    pub(crate) fn become_replicate(&mut self) {
        self.enter(ProgressState::Replicate);
    }

    /// Starts streaming the snapshot `meta` from its first byte.
    pub(crate) fn become_snapshot(&mut self, meta: SnapshotMeta) {
        self.enter(ProgressState::Snapshot);
        self.snapshot = Some(SnapshotTransfer {
            meta,
            acked_offset: 0,
            sent_offset: 0,
            done_sent: false,
            rewound_to: None,
            acked_at_heartbeat: 0,
            stalled_heartbeats: 0,
            reported_below: None,
            read_back: Some((0, 0)),
        });
    }

    fn enter(&mut self, state: ProgressState) {
        self.state = state;
        self.next_index = self.match_index.next();
        self.probe_sent = false;
        // Leftover in-flight accounting would otherwise stall a later replicate phase.
        self.inflights.reset();
        self.snapshot = None;
    }

    /// Records that an append ending at `last` (possibly an empty probe) was sent.
    pub(crate) fn sent_append(&mut self, last: Index, entry_count: usize) {
        match self.state {
            ProgressState::Replicate => {
                if entry_count > 0 {
                    self.next_index = last.next();
                    self.inflights.add(last);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            // Paused: no append goes out during a transfer.
            ProgressState::Snapshot => {}
        }
    }

    /// Records a success up to `index`; returns whether `match_index` moved.
    pub(crate) fn on_success(&mut self, index: Index) -> bool {
        let moved = index > self.match_index;
        if moved {
            self.match_index = index;
            self.probe_sent = false;
        }
        if self.next_index <= index {
            self.next_index = index.next();
        }
        match self.state {
            ProgressState::Probe if moved || self.match_index.next() == self.next_index => self.become_replicate(),
            ProgressState::Replicate => self.inflights.free_to(index),
            // The follower installed the snapshot (or already held its entries).
            ProgressState::Snapshot if self.snapshot.as_ref().is_some_and(|s| index >= s.meta.index) => {
                self.become_replicate()
            }
            ProgressState::Probe | ProgressState::Snapshot => {}
        }
        moved
    }

    /// Applies a rejection of the append whose `prev_log_index` was `rejected`, moving
    /// `next_index` to `candidate_next` within the safe range. Returns false for a stale rejection,
    /// which is ignored: it must never move `next_index` to or below `match_index`.
    pub(crate) fn on_reject(&mut self, rejected: Index, candidate_next: Index) -> bool {
        match self.state {
            // At or below match, a rejection is stale, or comes from a follower that lost
            // acknowledged entries: answering it at once would loop forever (heartbeats pace
            // the retries instead).
            _ if rejected <= self.match_index => return false,
            ProgressState::Probe if rejected != self.next_index.prev() => return false,
            // An answer to an append sent before the transfer started.
            ProgressState::Snapshot => return false,
            _ => {}
        }
        if self.state == ProgressState::Replicate {
            self.become_probe();
        }
        let bounded = candidate_next.min(rejected).max(self.match_index.next());
        self.next_index = bounded;
        self.probe_sent = false;
        true
    }

    /// A heartbeat answer: lets a probe go out again and frees one slot of a full window, so that
    /// lost appends cannot stall the follower forever.
    pub(crate) fn on_heartbeat_response(&mut self) {
        self.probe_sent = false;
        if self.state == ProgressState::Replicate && self.inflights.is_full() {
            self.inflights.free_first();
        }
        if let Some(transfer) = self.snapshot.as_mut() {
            let outstanding = transfer.sent_offset > transfer.acked_offset || transfer.done_sent;
            if outstanding && transfer.acked_offset == transfer.acked_at_heartbeat {
                transfer.stalled_heartbeats += 1;
            } else {
                transfer.stalled_heartbeats = 0;
            }
            transfer.acked_at_heartbeat = transfer.acked_offset;
            if transfer.stalled_heartbeats >= SNAPSHOT_STALLED_HEARTBEATS {
                transfer.stalled_heartbeats = 0;
                // A follower that keeps reporting an earlier offset lost its data: start there.
                let offset = transfer.reported_below.take().unwrap_or(transfer.acked_offset);
                transfer.rewind(offset);
            }
        }
    }
}

/// What a leader knows of one follower, as [`crate::Status`] shows it: a copy taken when asked,
/// not the leader's own bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FollowerProgress {
    /// The highest index known to match (and be durable) on the follower.
    pub match_index: Index,
    /// The next index to send.
    pub next_index: Index,
    /// How the leader sends to it.
    pub state: ProgressState,
    /// Appends sent and not yet acknowledged (in the replicate state).
    pub inflight_messages: usize,
    /// Whether the leader holds back appends to it (its window is full, or a probe or a
    /// snapshot is outstanding).
    pub paused: bool,
    /// Whether the follower was heard from since the last check-quorum round.
    pub recent_active: bool,
    /// The snapshot being sent to it, in the snapshot state.
    pub snapshot: Option<SnapshotSending>,
}

/// A snapshot being sent to a follower, as [`FollowerProgress`] shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotSending {
    /// The snapshot's last index.
    pub index: Index,
    /// The term of that index.
    pub term: crate::types::Term,
    /// The follower has written everything before this offset.
    pub acked_offset: u64,
    /// The next offset to send.
    pub sent_offset: u64,
}

impl Progress {
    /// The copy [`crate::Status`] shows.
    pub(crate) fn view(&self) -> FollowerProgress {
        FollowerProgress {
            match_index: self.match_index,
            next_index: self.next_index,
            state: self.state,
            inflight_messages: self.inflights.count(),
            paused: self.is_paused(),
            recent_active: self.recent_active,
            snapshot: self.snapshot.as_ref().map(|transfer| SnapshotSending {
                index: transfer.meta.index,
                term: transfer.meta.term,
                acked_offset: transfer.acked_offset,
                sent_offset: transfer.sent_offset,
            }),
        }
    }
}
