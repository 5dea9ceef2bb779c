//! The node's view of its log: entries already durable in [`Storage`] plus a tail of entries the
//! driver has not yet reported durable ("unstable"). Everything below `stable_next` is in storage.

use std::collections::VecDeque;

use crate::storage::{Storage, StorageError};
use crate::types::{Entry, Index, SnapshotMeta, Term};

/// The log as seen by the core. Reads go to the unstable tail first, then to storage.
pub(crate) struct RaftLog<S> {
    pub(crate) storage: S,
    /// Entries from `stable_next` on, not yet reported durable.
    unstable: Vec<Entry>,
    /// The index of `unstable[0]`; every entry below it is durable in storage.
    stable_next: Index,
    /// The first unstable index not yet handed to the driver for persisting.
    handed_out_next: Index,
    /// Writes handed to the driver and not yet reported durable, oldest first. Reports are
    /// matched against the oldest write with that mark, so a write replaced and then re-written
    /// with equal entries is not mistaken for the newer one (the async-write ABA, etcd-io/raft#8).
    pending_writes: VecDeque<PendingWrite>,
    /// A snapshot received from the leader and handed to the driver for installing, until it is
    /// reported durable. It replaces the whole log: nothing at or below its index is read from
    /// storage meanwhile, since storage still holds the superseded log.
    pending_snapshot: Option<SnapshotMeta>,
    /// Whether `pending_snapshot` still has to be handed to the driver.
    snapshot_handed_out: bool,
    /// The highest index known to be committed.
    pub(crate) committed: Index,
    /// The highest index handed out for applying.
    pub(crate) applied: Index,
}

/// One write handed to the driver: entries `first..=last` ending in `term`, or a snapshot
/// (`first == last ==` its index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PendingWrite {
    first: Index,
    last: Index,
    term: Term,
    snapshot: bool,
}

impl<S: Storage> RaftLog<S> {
    /// Opens the log over `storage`, trusting `commit` only as far as the log reaches. The state
    /// machine restarts from the storage's snapshot, so applying resumes just after it.
    pub(crate) fn new(storage: S, commit: Index, snapshot: &SnapshotMeta) -> Result<Self, StorageError> {
        let first = storage.first_index()?;
        let last = storage.last_index()?;
        if snapshot.index < first.prev() {
            // Entries between the snapshot and the log are gone: applying would skip them.
            return Err(StorageError::Compacted(snapshot.index.next()));
        }
        if snapshot.index > last {
            return Err(StorageError::Unavailable(snapshot.index));
        }
        Ok(RaftLog {
            storage,
            unstable: Vec::new(),
            stable_next: last.next(),
            handed_out_next: last.next(),
            pending_writes: VecDeque::new(),
            pending_snapshot: None,
            snapshot_handed_out: false,
            committed: commit.min(last).max(snapshot.index),
            applied: snapshot.index,
        })
    }

    pub(crate) fn last_index(&self) -> Index {
        match self.unstable.last() {
            Some(entry) => entry.index,
            None => self.stable_next.prev(),
        }
    }

    /// The last index that is durable and belongs to the current log.
    pub(crate) fn stable_last_index(&self) -> Index {
        self.stable_next.prev()
    }

    pub(crate) fn first_index(&self) -> Result<Index, StorageError> {
        match &self.pending_snapshot {
            Some(snapshot) => Ok(snapshot.index.next()),
            None => self.storage.first_index(),
        }
    }

    pub(crate) fn term(&self, index: Index) -> Result<Term, StorageError> {
        if index >= self.stable_next {
            let offset = (index.0 - self.stable_next.0) as usize;
            return self.unstable.get(offset).map(|e| e.term).ok_or(StorageError::Unavailable(index));
        }
        match &self.pending_snapshot {
            Some(snapshot) if index == snapshot.index => Ok(snapshot.term),
            Some(_) => Err(StorageError::Compacted(index)),
            None => self.storage.term(index),
        }
    }

    /// The snapshot received from the leader and not yet durable, if any.
    pub(crate) fn pending_snapshot(&self) -> Option<&SnapshotMeta> {
        self.pending_snapshot.as_ref()
    }

    /// Replaces the whole log by `snapshot` (which the log does not hold, and whose index is
    /// above the commit index): the driver installs it, and applying resumes after it.
    pub(crate) fn install_snapshot(&mut self, snapshot: SnapshotMeta) {
        assert!(snapshot.index > self.committed, "installing a snapshot at or below the commit index");
        let boundary = snapshot.index.next();
        self.unstable.clear();
        self.stable_next = boundary;
        self.handed_out_next = boundary;
        // Earlier writes are superseded: reports about them must not mark anything stable.
        self.pending_writes.clear();
        self.pending_writes.push_back(PendingWrite {
            first: snapshot.index,
            last: snapshot.index,
            term: snapshot.term,
            snapshot: true,
        });
        self.committed = snapshot.index;
        self.applied = snapshot.index;
        self.pending_snapshot = Some(snapshot);
        self.snapshot_handed_out = false;
    }

    /// The pending snapshot if it was not yet handed to the driver; marks it handed out.
    pub(crate) fn take_snapshot_to_install(&mut self) -> Option<SnapshotMeta> {
        if self.snapshot_handed_out {
            return None;
        }
        self.snapshot_handed_out = true;
        self.pending_snapshot.clone()
    }

    pub(crate) fn has_snapshot_to_install(&self) -> bool {
        self.pending_snapshot.is_some() && !self.snapshot_handed_out
    }

    pub(crate) fn last_term(&self) -> Result<Term, StorageError> {
        self.term(self.last_index())
    }

    pub(crate) fn matches(&self, index: Index, term: Term) -> bool {
        self.term(index) == Ok(term)
    }

    /// Whether a candidate whose log ends at (`last_index`, `last_term`) is at least as up to date
    /// as this log (Raft §5.4.1).
    pub(crate) fn is_up_to_date(&self, last_index: Index, last_term: Term) -> Result<bool, StorageError> {
        let my_term = self.last_term()?;
        Ok(last_term > my_term || (last_term == my_term && last_index >= self.last_index()))
    }

    /// Entries in `[low, high)` bounded by `bytes_max` and `count_max` (at least one entry).
    pub(crate) fn entries(
        &self,
        low: Index,
        high: Index,
        bytes_max: u64,
        count_max: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let high = high.min(self.last_index().next());
        let mut out = Vec::new();
        if low >= high {
            return Ok(out);
        }
        if low < self.stable_next {
            if self.pending_snapshot.is_some() {
                return Err(StorageError::Compacted(low));
            }
            let stored_high = high.min(self.stable_next);
            out = self.storage.entries(low, stored_high, bytes_max)?;
            if out.first().map(|e| e.index) != Some(low) {
                // A storage that skips or misplaces entries would corrupt the AppendEntries we build.
                return Err(StorageError::Unavailable(low));
            }
            out.truncate(count_max);
            let complete = out.last().map(|e| e.index.next()) == Some(stored_high);
            if !complete || stored_high == high {
                return Ok(out);
            }
        }
        let mut bytes: u64 = out.iter().map(Entry::size_bytes).sum();
        let from = low.max(self.stable_next);
        let start = (from.0 - self.stable_next.0) as usize;
        let end = (high.0 - self.stable_next.0) as usize;
        let unstable = &self.unstable[start..end];
        // Count first, then clone them in one go: pushing one by one regrew (and copied) the
        // vector over and over for every append a leader sent.
        let mut taken = out.len();
        for entry in unstable {
            let size = entry.size_bytes();
            if taken > 0 && (bytes + size > bytes_max || taken >= count_max) {
                break;
            }
            bytes += size;
            taken += 1;
        }
        out.extend_from_slice(&unstable[..taken - out.len()]);
        Ok(out)
    }

    /// The index of the first entry in `entries` that conflicts with (or extends) this log.
    pub(crate) fn find_conflict(&self, entries: &[Entry]) -> Option<Index> {
        entries.iter().find(|e| !self.matches(e.index, e.term)).map(|e| e.index)
    }

    /// Appends `entries`, moving them out of the vector (left empty), replacing any suffix from
    /// `entries[0].index`. The caller guarantees the entries are consecutive, start at most one
    /// past the last index and above the commit index.
    pub(crate) fn append(&mut self, entries: &mut Vec<Entry>) {
        let Some(first) = entries.first().map(|e| e.index) else { return };
        assert!(first > self.committed, "truncating committed index {}", self.committed);
        assert!(first <= self.last_index().next(), "gap before appended index {first}");
        if first >= self.stable_next {
            self.unstable.truncate((first.0 - self.stable_next.0) as usize);
        } else {
            // The durable suffix from `first` is superseded; storage gets overwritten in order.
            self.unstable.clear();
            self.stable_next = first;
        }
        self.unstable.append(entries);
        self.handed_out_next = self.handed_out_next.min(first);
    }

    /// Appends `entry` at the last index + 1 (above the commit index), moving it: the common case
    /// of [`RaftLog::append`] (a leader's proposal) without a clone.
    pub(crate) fn push(&mut self, entry: Entry) {
        assert_eq!(entry.index, self.last_index().next(), "pushed entry does not follow the log");
        assert!(entry.index > self.committed, "pushing at committed index {}", self.committed);
        // Nothing is replaced, so `handed_out_next` (at most last + 1) stays where it is.
        self.unstable.push(entry);
    }

    /// The unstable entries not yet handed to the driver; marks them handed out.
    pub(crate) fn take_unpersisted(&mut self) -> Vec<Entry> {
        let start = (self.handed_out_next.0 - self.stable_next.0) as usize;
        let out = self.unstable[start..].to_vec();
        if let (Some(first), Some(last)) = (out.first(), out.last()) {
            let write = PendingWrite { first: first.index, last: last.index, term: last.term, snapshot: false };
            self.pending_writes.push_back(write);
        }
        self.handed_out_next = self.last_index().next();
        out
    }

    pub(crate) fn has_unpersisted(&self) -> bool {
        self.handed_out_next <= self.last_index()
    }

    /// The driver reports the write that ended at (`index`, `term`) durable, and with it every
    /// earlier write. Entries become stable up to that index, but not at or past an index that a
    /// later, still pending write replaces, nor past what was handed out. Returns whether the
    /// stable boundary moved or a snapshot became durable; an unknown report is ignored.
    pub(crate) fn stable_to(&mut self, index: Index, term: Term) -> bool {
        let Some(position) = self.pending_writes.iter().position(|w| w.last == index && w.term == term) else {
            return false;
        };
        let snapshot_durable = self.pending_writes.drain(..=position).any(|w| w.snapshot);
        if snapshot_durable {
            // The installed snapshot is in storage now, and with it the new log boundary.
            self.pending_snapshot = None;
        }
        let mut stable_last = index.min(self.handed_out_next.prev());
        for write in &self.pending_writes {
            stable_last = stable_last.min(write.first.prev());
        }
        if stable_last < self.stable_next {
            return snapshot_durable;
        }
        let count = (stable_last.0 - self.stable_next.0 + 1) as usize;
        self.unstable.drain(..count);
        self.stable_next = stable_last.next();
        true
    }

    /// Committed, durable entries not yet handed out for applying, at most `bytes_max` of them.
    pub(crate) fn take_committed(&mut self, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        let high = self.committed.min(self.stable_last_index());
        if self.applied >= high {
            return Ok(Vec::new());
        }
        let entries = self.entries(self.applied.next(), high.next(), bytes_max, usize::MAX)?;
        if let Some(last) = entries.last() {
            self.applied = last.index;
        }
        Ok(entries)
    }

    pub(crate) fn has_committed_to_apply(&self) -> bool {
        self.applied < self.committed.min(self.stable_last_index())
    }

    /// The smallest index in `[floor, at]` whose term is `term`, given that `at` has that term.
    /// Terms never decrease along a log, so a binary search suffices. On a storage error it
    /// returns `at` (a smaller skip, never a wrong one).
    pub(crate) fn first_index_of_term(&self, floor: Index, at: Index, term: Term) -> Index {
        let (mut lo, mut hi) = (floor, at);
        while lo < hi {
            let mid = Index(lo.0 + (hi.0 - lo.0) / 2);
            match self.term(mid) {
                Ok(t) if t >= term => hi = mid,
                Ok(_) => lo = mid.next(),
                Err(_) => return at,
            }
        }
        hi
    }

    /// The largest index in `[floor, at]` whose term is at most `term`, with that term; `None`
    /// if none is found or storage fails.
    pub(crate) fn last_index_with_term_at_most(&self, floor: Index, at: Index, term: Term) -> Option<(Index, Term)> {
        let (mut lo, mut hi) = (floor, at);
        if self.term(lo).ok()? > term {
            return None;
        }
        while lo < hi {
            let mid = Index(lo.0 + (hi.0 - lo.0).div_ceil(2));
            if self.term(mid).ok()? <= term {
                lo = mid;
            } else {
                hi = mid.prev();
            }
        }
        Some((lo, self.term(lo).ok()?))
    }

    /// Checks the log's own invariants; panics on a violation (a bug in this crate).
    pub(crate) fn check_invariants(&self) {
        assert!(self.handed_out_next >= self.stable_next, "handed_out_next below stable_next");
        assert!(self.handed_out_next <= self.last_index().next(), "handed_out_next beyond log");
        assert!(self.applied <= self.committed, "applied {} > committed {}", self.applied, self.committed);
        assert!(self.committed <= self.last_index(), "committed beyond last index");
        for (offset, entry) in self.unstable.iter().enumerate() {
            assert_eq!(entry.index.0, self.stable_next.0 + offset as u64, "unstable index gap");
        }
        for pair in self.unstable.windows(2) {
            assert!(pair[0].term <= pair[1].term, "unstable terms decrease");
        }
    }
}
