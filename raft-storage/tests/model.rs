//! Model-based tests: random sequences of appends (overlapping and conflicting, with Raft's
//! non-decreasing terms), hard-state changes, compactions of every kind, refused appends,
//! reopens and power losses, applied to [`DiskStorage`] over [`SimFs`], to [`MemStorage`] and to
//! a plain model (a vector of entries, a snapshot boundary and a hard state). After every step
//! every observable of both stores must equal the model's.

use std::path::PathBuf;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use raft_core::{Entry, EntryPayload, HardState, Index, Membership, NodeId, Storage, StorageError, Term};
use raft_storage::testing::SimFs;
use raft_storage::{DiskError, DiskOptions, DiskStorage, Identity, LogStore, MemStorage, MemStorageError};

const ME: Identity = Identity { cluster_id: 5, node_id: NodeId(3) };
/// A few records per segment, so that sequences rotate, cut and drop segments.
const OPTIONS: DiskOptions = DiskOptions { segment_bytes_max: 120, preallocate_bytes: 40 };

fn dir() -> PathBuf {
    PathBuf::from("/srv/raft")
}

fn membership() -> Membership {
    Membership::new([NodeId(3), NodeId(4), NodeId(5)])
}

/// One step, with raw numbers that [`Harness::step`] resolves against the model's state, so that
/// every generated step is meaningful whatever came before.
#[derive(Clone, Debug)]
enum Op {
    /// Appends `count` entries starting `back` entries before the end (no further back than the
    /// first entry), in the term of the entry before them plus `term_bump`.
    Append { back: u8, count: u8, term_bump: u8 },
    /// Raises the term by `term_bump`, sets the vote, raises the commit index by `commit_bump`.
    HardState { term_bump: u8, vote: Option<u8>, commit_bump: u8 },
    /// Compacts to `target - 2` entries past the snapshot (so some are stale): with the log's
    /// term there when `matching` and the log holds it, else with a different (higher) term.
    Compact { target: u8, matching: bool },
    /// An append the store must refuse: a gap, a non-consecutive batch, or below the snapshot.
    BadAppend(u8),
    /// Process restart.
    Reopen,
    /// Power loss, then restart.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..6, 1u8..6, 0u8..3).prop_map(|(back, count, term_bump)| Op::Append { back, count, term_bump }),
        3 => (0u8..2, proptest::option::of(3u8..6), 0u8..3)
            .prop_map(|(term_bump, vote, commit_bump)| Op::HardState { term_bump, vote, commit_bump }),
        3 => (0u8..14, any::<bool>()).prop_map(|(target, matching)| Op::Compact { target, matching }),
        1 => (0u8..3).prop_map(Op::BadAppend),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

#[derive(Clone, Debug, Default)]
struct Model {
    snapshot: (Index, Term),
    /// Entries from `snapshot.0 + 1` on.
    entries: Vec<Entry>,
    hard_state: HardState,
}

impl Model {
    fn last(&self) -> Index {
        Index(self.snapshot.0.0 + self.entries.len() as u64)
    }

    fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot.0 {
            return Some(self.snapshot.1);
        }
        self.entries.iter().find(|e| e.index == index).map(|e| e.term)
    }

    fn append(&mut self, entries: &[Entry]) {
        let first = entries[0].index;
        self.entries.truncate((first.0 - self.snapshot.0.0 - 1) as usize);
        self.entries.extend_from_slice(entries);
    }

    fn compact(&mut self, index: Index, term: Term) {
        if index <= self.snapshot.0 {
            return;
        }
        let held = self.term(index) == Some(term);
        self.entries.retain(|e| held && e.index > index);
        self.snapshot = (index, term);
    }
}

/// The entry at `index` of `term`: like in Raft, an index and a term name one entry. Its size
/// varies from none (a no-op) to 40 bytes.
fn entry(index: u64, term: u64) -> Entry {
    let size = (index * 7 + term * 13) % 41;
    let payload = if size == 0 {
        EntryPayload::Noop
    } else {
        EntryPayload::Normal(Bytes::from(vec![(index * 31 + term) as u8; size as usize]))
    };
    Entry { index: Index(index), term: Term(term), payload }
}

/// Compares every observable of `store` with the model; `commit` is the commit index the store
/// should show (a commit-only change may be lost by a restart).
fn compare<S: Storage>(store: &S, model: &Model, commit: Index, name: &str) -> Result<(), TestCaseError> {
    let (snapshot, snapshot_term) = model.snapshot;
    let last = model.last();
    prop_assert_eq!(store.first_index(), Ok(snapshot.next()), "{}: first index", name);
    prop_assert_eq!(store.last_index(), Ok(last), "{}: last index", name);
    prop_assert_eq!(store.term(snapshot), Ok(snapshot_term), "{}: snapshot term", name);
    if snapshot > Index(0) {
        prop_assert_eq!(store.term(snapshot.prev()), Err(StorageError::Compacted(snapshot.prev())), "{}", name);
    }
    for entry in &model.entries {
        prop_assert_eq!(store.term(entry.index), Ok(entry.term), "{}: term of {}", name, entry.index);
    }
    prop_assert_eq!(store.term(last.next()), Err(StorageError::Unavailable(last.next())), "{}", name);
    let entries = store.entries(snapshot.next(), last.next(), u64::MAX);
    prop_assert_eq!(entries.as_ref(), Ok(&model.entries), "{}: entries", name);
    let hard_state = store.initial_state().map_err(|e| TestCaseError::fail(e.to_string()))?.hard_state;
    prop_assert_eq!(hard_state, HardState { commit, ..model.hard_state }, "{}: hard state", name);
    Ok(())
}

/// The stores under test and the model, driven together.
struct Harness {
    fs: SimFs,
    disk: Option<DiskStorage<SimFs>>,
    /// The commit index the disk store shows; it may lag the model's after a restart.
    disk_commit: Index,
    mem: MemStorage,
    model: Model,
}

impl Harness {
    fn new(seed: u64) -> Self {
        let fs = SimFs::new(seed);
        let disk = DiskStorage::create(fs.clone(), dir(), ME, membership(), OPTIONS).expect("create");
        Harness {
            fs,
            disk: Some(disk),
            disk_commit: Index(0),
            mem: MemStorage::new(membership()),
            model: Model::default(),
        }
    }

    fn disk(&mut self) -> &mut DiskStorage<SimFs> {
        self.disk.as_mut().expect("the disk store is open between steps")
    }

    fn persist(&mut self, hard_state: Option<HardState>, entries: &[Entry]) -> Result<(), TestCaseError> {
        let disk = self.disk().persist(hard_state, entries);
        prop_assert_eq!(disk, Ok(()), "disk persist");
        prop_assert_eq!(self.mem.persist(hard_state, entries), Ok(()), "mem persist");
        if !entries.is_empty() {
            self.model.append(entries);
        }
        if let Some(hard_state) = hard_state {
            self.model.hard_state = hard_state;
            self.disk_commit = hard_state.commit;
        }
        Ok(())
    }

    fn restart(&mut self, power_loss: bool) -> Result<(), TestCaseError> {
        drop(self.disk.take());
        if power_loss {
            self.fs.crash();
        }
        let disk = DiskStorage::open(self.fs.clone(), dir(), ME, OPTIONS);
        let disk = disk.map_err(|e| TestCaseError::fail(format!("recovery failed: {e}")))?;
        let state = disk.initial_state().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(state.membership, membership());
        let commit = state.hard_state.commit;
        prop_assert!(commit <= self.model.hard_state.commit, "a commit index never given: {}", commit);
        self.disk_commit = commit;
        self.disk = Some(disk);
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let (snapshot, last) = (self.model.snapshot.0, self.model.last());
        match *op {
            Op::Append { back, count, term_bump } => {
                let start = Index((last.0 + 1).saturating_sub(u64::from(back))).max(snapshot.next());
                let term = self.model.term(start.prev()).expect("the entry before the end or the boundary").0;
                let term = term + u64::from(term_bump);
                let entries: Vec<Entry> =
                    (start.0..start.0 + u64::from(count)).map(|index| entry(index, term)).collect();
                self.persist(None, &entries)?;
            }
            Op::HardState { term_bump, vote, commit_bump } => {
                let current = self.model.hard_state;
                let hard_state = HardState {
                    term: Term(current.term.0 + u64::from(term_bump)),
                    vote: vote.map(|v| NodeId(u64::from(v))),
                    commit: Index(current.commit.0 + u64::from(commit_bump)),
                };
                self.persist(Some(hard_state), &[])?;
            }
            Op::Compact { target, matching } => {
                let index = Index((snapshot.0 + u64::from(target)).saturating_sub(2));
                let held = self.model.term(index);
                let last_term = self.model.term(last).expect("the last entry or the boundary");
                let term = match held {
                    Some(term) if matching => term,
                    Some(term) => term.next(),
                    None => last_term.next(),
                };
                prop_assert_eq!(self.disk().compact(index, term), Ok(()), "disk compact");
                prop_assert_eq!(self.mem.compact(index, term), Ok(()), "mem compact");
                self.model.compact(index, term);
            }
            Op::BadAppend(kind) => self.bad_append(kind)?,
            Op::Reopen => self.restart(false)?,
            Op::Crash => self.restart(true)?,
        }
        let model = &self.model;
        compare(&self.mem, model, model.hard_state.commit, "mem")?;
        compare(self.disk.as_ref().expect("open"), model, self.disk_commit, "disk")
    }

    fn bad_append(&mut self, kind: u8) -> Result<(), TestCaseError> {
        let (snapshot, last) = (self.model.snapshot.0, self.model.last());
        let term = self.model.term(last).expect("the last entry or the boundary").0;
        let entries = match kind {
            0 => vec![entry(last.0 + 2, term)],
            1 => vec![entry(last.0 + 1, term), entry(last.0 + 3, term)],
            _ if snapshot > Index(0) => vec![entry(snapshot.0, term)],
            _ => vec![entry(last.0 + 5, term)],
        };
        let disk = self.disk().persist(None, &entries);
        let disk_refused = matches!(
            disk,
            Err(DiskError::AppendGap { .. }
                | DiskError::AppendNotConsecutive(_)
                | DiskError::AppendBelowSnapshot { .. })
        );
        prop_assert!(disk_refused, "disk accepted or failed otherwise: {:?}", disk);
        let mem = self.mem.persist(None, &entries);
        let mem_refused = matches!(
            mem,
            Err(MemStorageError::Gap { .. }
                | MemStorageError::NotConsecutive(_)
                | MemStorageError::BelowSnapshot { .. })
        );
        prop_assert!(mem_refused, "mem accepted: {:?}", mem);
        Ok(())
    }
}

fn config() -> Config {
    Config { cases: 64, failure_persistence: None, rng_seed: RngSeed::Fixed(0x5eed), ..Config::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn stores_match_the_model(seed in any::<u64>(), ops in proptest::collection::vec(op(), 1..40)) {
        let mut harness = Harness::new(seed);
        for (number, op) in ops.iter().enumerate() {
            harness.step(op).map_err(|e| TestCaseError::fail(format!("step {number} {op:?}: {e}")))?;
        }
        // Whatever happened, a final power loss keeps everything.
        harness.restart(true)?;
        let model = &harness.model;
        compare(harness.disk.as_ref().expect("open"), model, harness.disk_commit, "disk after a final power loss")?;
    }
}

/// The generator reaches every kind of step with effect: conflicting appends, every kind of
/// compaction, restarts with a non-empty log.
#[test]
fn the_generator_covers_every_kind_of_step() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::new(config());
    let mut seen = [false; 6];
    for _ in 0..64 {
        let ops = proptest::collection::vec(op(), 1..40).new_tree(&mut runner).expect("a tree").current();
        let mut harness = Harness::new(1);
        for op in &ops {
            let before = harness.model.clone();
            harness.step(op).expect("a valid step");
            let after = &harness.model;
            match op {
                Op::Append { .. }
                    if before
                        .entries
                        .iter()
                        .any(|e| e.index <= after.last() && after.term(e.index) != Some(e.term)) =>
                {
                    seen[0] = true;
                }
                Op::Compact { .. } if after.snapshot.0 > before.snapshot.0 && !after.entries.is_empty() => {
                    seen[1] = true;
                }
                Op::Compact { .. } if after.snapshot.0 > before.last() => seen[2] = true,
                Op::Compact { .. }
                    if after.snapshot.0 > before.snapshot.0
                        && before.term(after.snapshot.0).is_some_and(|term| term != after.snapshot.1) =>
                {
                    seen[3] = true;
                }
                Op::Crash if before.entries.len() > 3 && before.snapshot.0 > Index(0) => seen[4] = true,
                Op::BadAppend(_) => seen[5] = true,
                _ => {}
            }
        }
    }
    assert_eq!(seen, [true; 6], "conflict, keep-suffix compaction, beyond, superseding, crash, refusal");
}
