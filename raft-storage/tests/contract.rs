//! The storage contract, written once and run against every store.
//!
//! The read side ([`raft_core::Storage`]) and the write side ([`LogStore`]) are exercised by
//! generic functions over a small [`Harness`] that creates a store and "reopens" it. The suite is
//! instantiated for [`MemStorage`] (reopen is the identity), for [`DiskStorage`] over the
//! fault-injecting [`SimFs`] (reopen is a power loss followed by `open`: everything acknowledged
//! must survive it, docs/pitfalls.md #28) and for [`DiskStorage`] over the real file system in a unique
//! temporary directory (reopen is a process restart).

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, HardState, Index, Membership, NodeId, Storage, StorageError, Term};
use raft_storage::testing::SimFs;
use raft_storage::{DiskError, DiskOptions, DiskStorage, Identity, LogStore, MemStorage, MemStorageError, StdFs};

const ME: Identity = Identity { cluster_id: 11, node_id: NodeId(1) };
/// Small enough that a dozen entries span several segments.
const OPTIONS: DiskOptions = DiskOptions { segment_bytes_max: 128, preallocate_bytes: 1 << 20 };

fn membership() -> Membership {
    Membership::new([NodeId(1), NodeId(2), NodeId(3)])
}

/// An entry whose payload depends on its index and term, so a replaced entry never equals the
/// entry it replaces. Every fifth index is a no-op and every seventh a membership, to cover
/// every payload kind.
fn entry(index: u64, term: u64) -> Entry {
    let payload = if index.is_multiple_of(5) {
        EntryPayload::Noop
    } else if index.is_multiple_of(7) {
        EntryPayload::Membership(Membership {
            voters_incoming: [NodeId(1), NodeId(2), NodeId(index)].into(),
            voters_outgoing: [NodeId(1), NodeId(2), NodeId(3)].into(),
            learners: [NodeId(term + 100)].into(),
            learners_next: [NodeId(3)].into(),
        })
    } else {
        EntryPayload::Normal(Bytes::from(format!("entry {index} of term {term}").into_bytes()))
    };
    Entry { index: Index(index), term: Term(term), payload }
}

fn run(indexes: RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    indexes.map(|index| entry(index, term)).collect()
}

fn hard_state(term: u64, vote: Option<u64>, commit: u64) -> HardState {
    HardState { term: Term(term), vote: vote.map(NodeId), commit: Index(commit) }
}

/// A write refusal, whatever the store's error type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    Gap { first: Index, last: Index },
    NotConsecutive(Index),
    BelowSnapshot { first: Index, snapshot: Index },
}

/// Creates and reopens one kind of store.
trait Harness {
    type Store: LogStore;

    /// A new, empty store with [`membership()`].
    fn fresh(&mut self) -> Self::Store;

    /// The store as found after a restart (or a power loss, where the harness can simulate one).
    fn reopen(&mut self, store: Self::Store) -> Self::Store;

    /// Maps a refused write to a [`Refusal`]; `None` for any other error.
    fn refusal(error: &<Self::Store as LogStore>::Error) -> Option<Refusal>;

    /// Whether a commit-index-only change may be lost by `reopen` (it is not a safety need).
    fn commit_may_lag_after_reopen(&self) -> bool;
}

struct MemHarness;

impl Harness for MemHarness {
    type Store = MemStorage;

    fn fresh(&mut self) -> MemStorage {
        MemStorage::new(membership())
    }

    fn reopen(&mut self, store: MemStorage) -> MemStorage {
        store
    }

    fn refusal(error: &MemStorageError) -> Option<Refusal> {
        Some(match *error {
            MemStorageError::Gap { first, last } => Refusal::Gap { first, last },
            MemStorageError::NotConsecutive(index) => Refusal::NotConsecutive(index),
            MemStorageError::BelowSnapshot { first, snapshot } => Refusal::BelowSnapshot { first, snapshot },
            MemStorageError::ChunkOutOfOrder { .. } | MemStorageError::NotStaged(_) => return None,
            // The enum is non-exhaustive: a new refusal needs a place in this test first.
            other => panic!("a refusal this test does not know: {other}"),
        })
    }

    fn commit_may_lag_after_reopen(&self) -> bool {
        false
    }
}

fn disk_refusal(error: &DiskError) -> Option<Refusal> {
    match *error {
        DiskError::AppendGap { first, last } => Some(Refusal::Gap { first, last }),
        DiskError::AppendNotConsecutive(index) => Some(Refusal::NotConsecutive(index)),
        DiskError::AppendBelowSnapshot { first, snapshot } => Some(Refusal::BelowSnapshot { first, snapshot }),
        _ => None,
    }
}

/// [`DiskStorage`] over [`SimFs`]; `reopen` is a power loss (`SimFs::crash`) and `open`.
struct SimHarness {
    fs: SimFs,
}

impl SimHarness {
    fn new() -> Self {
        SimHarness { fs: SimFs::new(7) }
    }

    fn dir() -> PathBuf {
        PathBuf::from("/data/node-1")
    }
}

impl Harness for SimHarness {
    type Store = DiskStorage<SimFs>;

    fn fresh(&mut self) -> DiskStorage<SimFs> {
        DiskStorage::create(self.fs.clone(), Self::dir(), ME, membership(), OPTIONS).expect("create on SimFs")
    }

    fn reopen(&mut self, store: DiskStorage<SimFs>) -> DiskStorage<SimFs> {
        drop(store);
        self.fs.crash();
        DiskStorage::open(self.fs.clone(), Self::dir(), ME, OPTIONS).expect("open after a power loss")
    }

    fn refusal(error: &DiskError) -> Option<Refusal> {
        disk_refusal(error)
    }

    fn commit_may_lag_after_reopen(&self) -> bool {
        true
    }
}

/// [`DiskStorage`] over the real file system in a unique temporary directory, removed on drop.
struct StdHarness {
    dir: PathBuf,
}

impl StdHarness {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("raft-storage-contract-{}-{unique}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        StdHarness { dir }
    }
}

impl Drop for StdHarness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Harness for StdHarness {
    type Store = DiskStorage<StdFs>;

    fn fresh(&mut self) -> DiskStorage<StdFs> {
        DiskStorage::create(StdFs, &self.dir, ME, membership(), OPTIONS).expect("create in a temp dir")
    }

    fn reopen(&mut self, store: DiskStorage<StdFs>) -> DiskStorage<StdFs> {
        drop(store);
        DiskStorage::open(StdFs, &self.dir, ME, OPTIONS).expect("reopen from the temp dir")
    }

    fn refusal(error: &DiskError) -> Option<Refusal> {
        disk_refusal(error)
    }

    fn commit_may_lag_after_reopen(&self) -> bool {
        true
    }
}

/// Everything a store should show.
#[derive(Clone, Debug, Default)]
struct Expected {
    snapshot: (Index, Term),
    /// Entries from `snapshot.0 + 1` on.
    entries: Vec<Entry>,
    hard_state: HardState,
    /// Writes made so far: the helpers alternate between `persist` and `persist_owned` by it,
    /// so that every scenario exercises both (deterministically).
    writes: usize,
}

impl Expected {
    fn last(&self) -> Index {
        Index(self.snapshot.0.0 + self.entries.len() as u64)
    }

    /// Applies an accepted append (the entries replace everything from their first index on).
    fn append(&mut self, entries: &[Entry]) {
        if let Some(first) = entries.first() {
            self.entries.truncate((first.index.0 - self.snapshot.0.0 - 1) as usize);
            self.entries.extend_from_slice(entries);
        }
    }

    /// Applies an accepted compaction.
    fn compact(&mut self, index: Index, term: Term) {
        if index <= self.snapshot.0 {
            return;
        }
        let held = self.entries.iter().any(|e| e.index == index && e.term == term);
        self.entries.retain(|e| held && e.index > index);
        self.snapshot = (index, term);
    }
}

/// Compares every observable of `store` with `expected`.
fn check<S: Storage>(store: &S, expected: &Expected, context: &str) {
    let (snapshot, snapshot_term) = expected.snapshot;
    let last = expected.last();
    assert_eq!(store.first_index(), Ok(snapshot.next()), "{context}: first index");
    assert_eq!(store.last_index(), Ok(last), "{context}: last index");
    assert_eq!(store.term(snapshot), Ok(snapshot_term), "{context}: term of the snapshot index");
    if snapshot > Index(0) {
        let below = snapshot.prev();
        assert_eq!(store.term(below), Err(StorageError::Compacted(below)), "{context}: term below the snapshot");
        let compacted = store.entries(snapshot, last.next(), u64::MAX);
        assert_eq!(compacted, Err(StorageError::Compacted(snapshot)), "{context}: entries from the snapshot index");
    }
    for entry in &expected.entries {
        assert_eq!(store.term(entry.index), Ok(entry.term), "{context}: term of {}", entry.index);
    }
    assert_eq!(store.term(last.next()), Err(StorageError::Unavailable(last.next())), "{context}: term past the end");
    let all = store.entries(snapshot.next(), last.next(), u64::MAX);
    assert_eq!(all.as_ref(), Ok(&expected.entries), "{context}: all entries");
    let beyond = store.entries(snapshot.next(), last.next().next(), u64::MAX);
    assert_eq!(beyond, Err(StorageError::Unavailable(last.next())), "{context}: entries past the end");
    let state = store.initial_state().expect("initial state");
    assert_eq!(state.hard_state, expected.hard_state, "{context}: hard state");
    assert_eq!(state.membership, membership(), "{context}: membership");
}

/// Persists through `persist` or `persist_owned` (which moves the entries into the store), by
/// turns.
fn write<S: LogStore>(
    store: &mut S,
    expected: &mut Expected,
    hard: Option<HardState>,
    entries: &[Entry],
) -> Result<(), S::Error> {
    expected.writes += 1;
    if expected.writes.is_multiple_of(2) {
        store.persist_owned(hard, entries.to_vec())
    } else {
        store.persist(hard, entries)
    }
}

fn persist<H: Harness>(store: &mut H::Store, expected: &mut Expected, hard: Option<HardState>, entries: &[Entry]) {
    write(store, expected, hard, entries).expect("a valid persist is accepted");
    expected.append(entries);
    if let Some(hard) = hard {
        expected.hard_state = hard;
    }
}

fn compact<H: Harness>(store: &mut H::Store, expected: &mut Expected, index: u64, term: u64) {
    store.compact(Index(index), Term(term)).expect("a compaction is accepted");
    expected.compact(Index(index), Term(term));
}

/// Checks, reopens, checks again.
fn check_and_reopen<H: Harness>(harness: &mut H, store: H::Store, expected: &Expected, context: &str) -> H::Store {
    check(&store, expected, context);
    let store = harness.reopen(store);
    check(&store, expected, &format!("{context}, after reopen"));
    store
}

/// Asserts that `persist` refuses with `refusal` and changes nothing.
fn assert_refused<H: Harness>(
    store: &mut H::Store,
    expected: &mut Expected,
    hard: Option<HardState>,
    entries: &[Entry],
    refusal: Refusal,
) {
    let error = write(store, expected, hard, entries).expect_err("an invalid append is refused");
    assert_eq!(H::refusal(&error), Some(refusal), "refusal of {entries:?}: {error}");
    check(store, expected, &format!("after the refused append {refusal:?}"));
}

fn empty_store<H: Harness>(harness: &mut H) {
    let store = harness.fresh();
    assert_eq!(store.first_index(), Ok(Index(1)));
    assert_eq!(store.last_index(), Ok(Index(0)));
    assert_eq!(store.term(Index(0)), Ok(Term(0)));
    assert_eq!(store.term(Index(1)), Err(StorageError::Unavailable(Index(1))));
    assert_eq!(store.entries(Index(1), Index(1), u64::MAX), Ok(Vec::new()));
    assert_eq!(store.entries(Index(1), Index(2), u64::MAX), Err(StorageError::Unavailable(Index(1))));
    assert_eq!(store.initial_state().expect("state").hard_state, HardState::default());
    let store = check_and_reopen(harness, store, &Expected::default(), "empty store");
    assert_eq!(store.term(Index(0)), Ok(Term(0)));
}

fn append_and_read_back<H: Harness>(harness: &mut H) {
    let mut store = harness.fresh();
    let mut expected = Expected::default();
    persist::<H>(&mut store, &mut expected, Some(hard_state(1, Some(1), 0)), &run(1..=3, 1));
    persist::<H>(&mut store, &mut expected, None, &run(4..=8, 1));
    check(&store, &expected, "after two appends");
    for round in 0..2 {
        let read = |low: u64, high: u64, bytes_max: u64| store.entries(Index(low), Index(high), bytes_max);
        assert_eq!(read(3, 6, u64::MAX), Ok(run(3..=5, 1)), "round {round}: a middle range");
        assert_eq!(read(4, 4, u64::MAX), Ok(Vec::new()), "round {round}: an empty range");
        assert_eq!(read(8, 9, u64::MAX), Ok(run(8..=8, 1)), "round {round}: the last entry");
        let two = entry(2, 1).size_bytes() + entry(3, 1).size_bytes();
        assert_eq!(read(2, 9, 0), Ok(run(2..=2, 1)), "round {round}: at least one entry");
        assert_eq!(read(2, 9, 1), Ok(run(2..=2, 1)), "round {round}: at least one entry");
        assert_eq!(read(2, 9, two - 1), Ok(run(2..=2, 1)), "round {round}: one byte short of two");
        assert_eq!(read(2, 9, two), Ok(run(2..=3, 1)), "round {round}: exactly two");
        assert_eq!(read(2, 9, two + 1), Ok(run(2..=3, 1)), "round {round}: not quite three");
        assert_eq!(read(5, 10, u64::MAX), Err(StorageError::Unavailable(Index(9))), "round {round}: past the end");
        assert_eq!(read(9, 10, u64::MAX), Err(StorageError::Unavailable(Index(9))), "round {round}: after the end");
        assert_eq!(read(0, 2, u64::MAX), Err(StorageError::Compacted(Index(0))), "round {round}: before the start");
        store = harness.reopen(store);
        check(&store, &expected, "after reopen");
    }
}

fn conflicting_suffix_is_replaced<H: Harness>(harness: &mut H) {
    let mut store = harness.fresh();
    let mut expected = Expected::default();
    persist::<H>(&mut store, &mut expected, Some(hard_state(1, None, 0)), &run(1..=9, 1));
    store = check_and_reopen(harness, store, &expected, "log 1..=9 of term 1");
    // A new leader replaces the suffix from 4 on, even though its batch is shorter.
    persist::<H>(&mut store, &mut expected, Some(hard_state(2, Some(2), 0)), &run(4..=5, 2));
    assert_eq!(store.last_index(), Ok(Index(5)));
    assert_eq!(store.term(Index(3)), Ok(Term(1)));
    assert_eq!(store.term(Index(4)), Ok(Term(2)));
    assert_eq!(store.entries(Index(4), Index(5), u64::MAX), Ok(vec![entry(4, 2)]));
    store = check_and_reopen(harness, store, &expected, "suffix replaced from 4");
    // Replacing the very first entry, then the last one only.
    persist::<H>(&mut store, &mut expected, Some(hard_state(3, None, 0)), &run(1..=2, 3));
    store = check_and_reopen(harness, store, &expected, "replaced from 1");
    persist::<H>(&mut store, &mut expected, None, &run(3..=12, 3));
    persist::<H>(&mut store, &mut expected, Some(hard_state(4, None, 0)), &run(12..=12, 4));
    store = check_and_reopen(harness, store, &expected, "last entry replaced");
    // The contract: entries replace every stored entry from their first index on, even when
    // they match (a driver hands the store only the new part of the log).
    persist::<H>(&mut store, &mut expected, None, &run(7..=7, 3));
    assert_eq!(store.last_index(), Ok(Index(7)));
    check_and_reopen(harness, store, &expected, "matching entry re-persisted");
}

fn refused_appends_change_nothing<H: Harness>(harness: &mut H) {
    let mut store = harness.fresh();
    let mut expected = Expected::default();
    persist::<H>(&mut store, &mut expected, Some(hard_state(1, Some(1), 0)), &run(1..=5, 1));
    let other = Some(hard_state(9, Some(3), 0));
    assert_refused::<H>(
        &mut store,
        &mut expected,
        other,
        &run(7..=8, 1),
        Refusal::Gap { first: Index(7), last: Index(5) },
    );
    let skipping = [entry(6, 1), entry(8, 1)];
    assert_refused::<H>(&mut store, &mut expected, other, &skipping, Refusal::NotConsecutive(Index(8)));
    let repeated = [entry(6, 1), entry(6, 1)];
    assert_refused::<H>(&mut store, &mut expected, other, &repeated, Refusal::NotConsecutive(Index(6)));
    let backwards = [entry(3, 2), entry(2, 2)];
    assert_refused::<H>(&mut store, &mut expected, other, &backwards, Refusal::NotConsecutive(Index(2)));
    store = check_and_reopen(harness, store, &expected, "after refused appends");
    compact::<H>(&mut store, &mut expected, 3, 1);
    let at = Refusal::BelowSnapshot { first: Index(3), snapshot: Index(3) };
    assert_refused::<H>(&mut store, &mut expected, other, &run(3..=6, 2), at);
    let below = Refusal::BelowSnapshot { first: Index(1), snapshot: Index(3) };
    assert_refused::<H>(&mut store, &mut expected, None, &run(1..=1, 1), below);
    store = check_and_reopen(harness, store, &expected, "after refused appends below the snapshot");
    // A refused write does not stop the store.
    persist::<H>(&mut store, &mut expected, Some(hard_state(2, None, 0)), &run(4..=6, 2));
    check_and_reopen(harness, store, &expected, "a valid append after refusals");
}

fn hard_state_is_persisted<H: Harness>(harness: &mut H) {
    let mut store = harness.fresh();
    let mut expected = Expected::default();
    persist::<H>(&mut store, &mut expected, Some(hard_state(1, Some(2), 0)), &[]);
    store = check_and_reopen(harness, store, &expected, "vote for 2 in term 1");
    persist::<H>(&mut store, &mut expected, Some(hard_state(3, None, 0)), &run(1..=2, 3));
    store = check_and_reopen(harness, store, &expected, "term 3 without a vote");
    persist::<H>(&mut store, &mut expected, Some(hard_state(4, Some(1), 2)), &[]);
    store = check_and_reopen(harness, store, &expected, "vote for self in term 4, commit 2");
    // No hard state in a call keeps the stored one.
    persist::<H>(&mut store, &mut expected, None, &run(3..=4, 4));
    check_and_reopen(harness, store, &expected, "entries only");
}

fn commit_only_change<H: Harness>(harness: &mut H) {
    let mut store = harness.fresh();
    let mut expected = Expected::default();
    persist::<H>(&mut store, &mut expected, Some(hard_state(2, Some(1), 0)), &run(1..=6, 2));
    persist::<H>(&mut store, &mut expected, Some(hard_state(2, Some(1), 4)), &[]);
    check(&store, &expected, "the commit index is visible at once");
    store = harness.reopen(store);
    let found = store.initial_state().expect("state").hard_state;
    assert_eq!((found.term, found.vote), (Term(2), Some(NodeId(1))), "term and vote survive");
    if harness.commit_may_lag_after_reopen() {
        assert!(found.commit <= Index(4), "a commit index never seen: {found:?}");
    } else {
        assert_eq!(found.commit, Index(4));
    }
    // The next metadata write (here a compaction) carries the latest commit index along.
    persist::<H>(&mut store, &mut expected, Some(hard_state(2, Some(1), 5)), &[]);
    compact::<H>(&mut store, &mut expected, 3, 2);
    check_and_reopen(harness, store, &expected, "commit index written with the snapshot boundary");
}

fn compaction_keeps_the_matching_suffix<H: Harness>(harness: &mut H) {
    let mut store = harness.fresh();
    let mut expected = Expected::default();
    persist::<H>(&mut store, &mut expected, Some(hard_state(2, None, 0)), &run(1..=5, 1));
    persist::<H>(&mut store, &mut expected, None, &run(6..=10, 2));
    compact::<H>(&mut store, &mut expected, 4, 1);
    assert_eq!(store.first_index(), Ok(Index(5)));
    assert_eq!(store.term(Index(4)), Ok(Term(1)));
    assert_eq!(store.entries(Index(4), Index(6), u64::MAX), Err(StorageError::Compacted(Index(4))));
    assert_eq!(store.entries(Index(5), Index(7), u64::MAX), Ok(vec![entry(5, 1), entry(6, 2)]));
    store = check_and_reopen(harness, store, &expected, "compacted to 4");
    compact::<H>(&mut store, &mut expected, 7, 2);
    store = check_and_reopen(harness, store, &expected, "compacted to 7");
    // Up to the last entry: an empty log whose boundary term is still known.
    compact::<H>(&mut store, &mut expected, 10, 2);
    assert_eq!(store.first_index(), Ok(Index(11)));
    assert_eq!(store.last_index(), Ok(Index(10)));
    check_and_reopen(harness, store, &expected, "compacted to the last entry");
}

fn compaction_beyond_the_log_empties_it<H: Harness>(harness: &mut H) {
    let mut store = harness.fresh();
    let mut expected = Expected::default();
    persist::<H>(&mut store, &mut expected, Some(hard_state(3, None, 0)), &run(1..=5, 1));
    compact::<H>(&mut store, &mut expected, 9, 3);
    assert!(expected.entries.is_empty());
    assert_eq!(store.first_index(), Ok(Index(10)));
    assert_eq!(store.last_index(), Ok(Index(9)));
    assert_eq!(store.term(Index(9)), Ok(Term(3)));
    assert_eq!(store.term(Index(5)), Err(StorageError::Compacted(Index(5))));
    store = check_and_reopen(harness, store, &expected, "snapshot beyond the log");
    let below = Refusal::BelowSnapshot { first: Index(6), snapshot: Index(9) };
    assert_refused::<H>(&mut store, &mut expected, None, &run(6..=10, 3), below);
    assert_refused::<H>(
        &mut store,
        &mut expected,
        None,
        &run(11..=11, 3),
        Refusal::Gap { first: Index(11), last: Index(9) },
    );
    persist::<H>(&mut store, &mut expected, None, &run(10..=14, 3));
    check_and_reopen(harness, store, &expected, "appended after the snapshot");
}

fn compaction_with_a_conflicting_term_empties_the_log<H: Harness>(harness: &mut H) {
    let mut store = harness.fresh();
    let mut expected = Expected::default();
    persist::<H>(&mut store, &mut expected, Some(hard_state(1, None, 0)), &run(1..=8, 1));
    compact::<H>(&mut store, &mut expected, 5, 2);
    assert!(expected.entries.is_empty());
    assert_eq!(store.term(Index(5)), Ok(Term(2)));
    assert_eq!(store.term(Index(6)), Err(StorageError::Unavailable(Index(6))));
    assert_eq!(store.last_index(), Ok(Index(5)));
    store = check_and_reopen(harness, store, &expected, "conflicting snapshot");
    persist::<H>(&mut store, &mut expected, Some(hard_state(2, None, 0)), &run(6..=9, 2));
    check_and_reopen(harness, store, &expected, "appended after the conflicting snapshot");
}

fn stale_compaction_is_ignored<H: Harness>(harness: &mut H) {
    let mut store = harness.fresh();
    let mut expected = Expected::default();
    persist::<H>(&mut store, &mut expected, Some(hard_state(2, None, 0)), &run(1..=4, 1));
    persist::<H>(&mut store, &mut expected, None, &run(5..=10, 2));
    compact::<H>(&mut store, &mut expected, 6, 2);
    let before = expected.clone();
    compact::<H>(&mut store, &mut expected, 3, 1);
    compact::<H>(&mut store, &mut expected, 6, 9);
    compact::<H>(&mut store, &mut expected, 0, 0);
    assert_eq!(expected.snapshot, before.snapshot, "the model ignores stale snapshots too");
    store = check_and_reopen(harness, store, &before, "stale compactions");
    compact::<H>(&mut store, &mut expected, 5, 7);
    check_and_reopen(harness, store, &before, "a stale compaction with a conflicting term");
}

fn appends_after_compaction<H: Harness>(harness: &mut H) {
    let mut store = harness.fresh();
    let mut expected = Expected::default();
    persist::<H>(&mut store, &mut expected, Some(hard_state(1, None, 0)), &run(1..=10, 1));
    compact::<H>(&mut store, &mut expected, 5, 1);
    // A conflict right after the boundary, then one further on.
    persist::<H>(&mut store, &mut expected, Some(hard_state(3, None, 0)), &run(6..=8, 3));
    store = check_and_reopen(harness, store, &expected, "replaced right after the boundary");
    persist::<H>(&mut store, &mut expected, None, &run(9..=20, 3));
    persist::<H>(&mut store, &mut expected, Some(hard_state(4, None, 0)), &run(15..=16, 4));
    store = check_and_reopen(harness, store, &expected, "replaced further on");
    compact::<H>(&mut store, &mut expected, 12, 3);
    persist::<H>(&mut store, &mut expected, None, &run(17..=25, 4));
    persist::<H>(&mut store, &mut expected, None, &run(13..=13, 4));
    check_and_reopen(harness, store, &expected, "compacted again, then cut back to 13");
}

fn long_log_with_many_batches<H: Harness>(harness: &mut H) {
    let mut store = harness.fresh();
    let mut expected = Expected::default();
    for batch in 0..12u64 {
        let term = 1 + batch / 4;
        let first = batch * 5 + 1;
        persist::<H>(&mut store, &mut expected, Some(hard_state(term, Some(term), 0)), &run(first..=first + 4, term));
    }
    store = check_and_reopen(harness, store, &expected, "sixty entries");
    persist::<H>(&mut store, &mut expected, Some(hard_state(5, None, 0)), &run(23..=30, 5));
    store = check_and_reopen(harness, store, &expected, "cut back to 22, then 23..=30");
    compact::<H>(&mut store, &mut expected, 17, 1);
    store = check_and_reopen(harness, store, &expected, "compacted to 17");
    compact::<H>(&mut store, &mut expected, 26, 5);
    persist::<H>(&mut store, &mut expected, None, &run(31..=40, 5));
    check_and_reopen(harness, store, &expected, "compacted to 26, appended to 40");
}

fn same_batch_twice_is_idempotent<H: Harness>(harness: &mut H) {
    let mut store = harness.fresh();
    let mut expected = Expected::default();
    let hard = Some(hard_state(1, Some(1), 0));
    persist::<H>(&mut store, &mut expected, hard, &run(1..=6, 1));
    persist::<H>(&mut store, &mut expected, hard, &run(1..=6, 1));
    persist::<H>(&mut store, &mut expected, hard, &run(4..=6, 1));
    check_and_reopen(harness, store, &expected, "the same batch again");
}

macro_rules! contract_suite {
    ($module:ident, $harness:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn empty_store() {
                super::empty_store(&mut $harness);
            }

            #[test]
            fn append_and_read_back() {
                super::append_and_read_back(&mut $harness);
            }

            #[test]
            fn conflicting_suffix_is_replaced() {
                super::conflicting_suffix_is_replaced(&mut $harness);
            }

            #[test]
            fn refused_appends_change_nothing() {
                super::refused_appends_change_nothing(&mut $harness);
            }

            #[test]
            fn hard_state_is_persisted() {
                super::hard_state_is_persisted(&mut $harness);
            }

            #[test]
            fn commit_only_change() {
                super::commit_only_change(&mut $harness);
            }

            #[test]
            fn compaction_keeps_the_matching_suffix() {
                super::compaction_keeps_the_matching_suffix(&mut $harness);
            }

            #[test]
            fn compaction_beyond_the_log_empties_it() {
                super::compaction_beyond_the_log_empties_it(&mut $harness);
            }

            #[test]
            fn compaction_with_a_conflicting_term_empties_the_log() {
                super::compaction_with_a_conflicting_term_empties_the_log(&mut $harness);
            }

            #[test]
            fn stale_compaction_is_ignored() {
                super::stale_compaction_is_ignored(&mut $harness);
            }

            #[test]
            fn appends_after_compaction() {
                super::appends_after_compaction(&mut $harness);
            }

            #[test]
            fn long_log_with_many_batches() {
                super::long_log_with_many_batches(&mut $harness);
            }

            #[test]
            fn same_batch_twice_is_idempotent() {
                super::same_batch_twice_is_idempotent(&mut $harness);
            }
        }
    };
}

contract_suite!(mem, MemHarness);
contract_suite!(disk_simfs, SimHarness::new());
contract_suite!(disk_stdfs, StdHarness::new());

/// The disk harnesses really rotate segments, so the suite covers multi-segment logs.
#[test]
fn disk_harnesses_span_several_segments() {
    let mut harness = SimHarness::new();
    let mut store = harness.fresh();
    store.persist(None, &run(1..=12, 1)).expect("persist");
    assert!(store.segment_count() >= 3, "only {} segments", store.segment_count());
    let mut harness = StdHarness::new();
    let mut store = harness.fresh();
    store.persist(None, &run(1..=12, 1)).expect("persist");
    assert!(store.segment_count() >= 3, "only {} segments", store.segment_count());
}
