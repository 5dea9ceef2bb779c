//! Model-based test of the shared WAL: random interleavings of several groups' writes (batches
//! across groups, appends with conflicting suffixes, hard-state changes), compactions, local and
//! received snapshots, group creations (also empty, for learners) and removals, restarts and
//! power losses, on a [`SharedWal`] over [`SimFs`] with small segments and a small entry cache.
//! After every step each group must show exactly what a [`MemStorage`] fed the same calls shows.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use raft_core::{
    Entry, EntryPayload, GroupId, HardState, Index, Membership, NodeId, Output, ReceivedChunk, SnapshotMeta, Storage,
    Term,
};
use raft_storage::testing::SimFs;
use raft_storage::{GroupStore, Identity, LogStore, MemStorage, SharedWal, WalOptions};

const ME: Identity = Identity { cluster_id: 6, node_id: NodeId(1) };
/// A few records per segment and a cache of a few entries: the steps rotate, release segments
/// and read entries back from disk.
const OPTIONS: WalOptions = WalOptions { segment_bytes_max: 160, cache_bytes_max: 200, preallocate_bytes: 48 };
const GROUPS: u8 = 4;

fn dir() -> PathBuf {
    PathBuf::from("/srv/model")
}

/// One step, with raw numbers resolved against the model so that every step is meaningful.
#[derive(Clone, Debug)]
enum Op {
    Create {
        group: u8,
        learner: bool,
    },
    Remove {
        group: u8,
    },
    /// Appends to each listed group in one `write_batch` (a group at most once).
    Batch(Vec<Append>),
    /// One append through `LogStore::persist`.
    Persist(Append),
    /// Compacts at `target` entries past the boundary (`matching`: with the log's term there).
    Compact {
        group: u8,
        target: u8,
        matching: bool,
    },
    /// A snapshot `back` entries before the end (or past it): saved locally, or received in
    /// chunks and installed.
    Snapshot {
        group: u8,
        back: u8,
        beyond: bool,
        received: bool,
    },
    Reopen {
        power_loss: bool,
    },
}

#[derive(Clone, Debug)]
struct Append {
    group: u8,
    /// How far before the end the append starts (a conflicting suffix when > 0).
    back: u8,
    count: u8,
    term_bump: u8,
    vote: Option<u8>,
}

fn append() -> impl Strategy<Value = Append> {
    (0..GROUPS, 0u8..4, 1u8..4, 0u8..2, proptest::option::of(1u8..4))
        .prop_map(|(group, back, count, term_bump, vote)| Append { group, back, count, term_bump, vote })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..GROUPS, any::<bool>()).prop_map(|(group, learner)| Op::Create { group, learner }),
        1 => (0..GROUPS).prop_map(|group| Op::Remove { group }),
        4 => proptest::collection::vec(append(), 1..4).prop_map(Op::Batch),
        4 => append().prop_map(Op::Persist),
        2 => (0..GROUPS, 0u8..8, any::<bool>()).prop_map(|(group, target, matching)| Op::Compact { group, target, matching }),
        2 => (0..GROUPS, 0u8..4, any::<bool>(), any::<bool>())
            .prop_map(|(group, back, beyond, received)| Op::Snapshot { group, back, beyond, received }),
        1 => any::<bool>().prop_map(|power_loss| Op::Reopen { power_loss }),
    ]
}

/// Entry `index` of `term`: every kind, by index.
fn entry(index: u64, term: u64, group: u8) -> Entry {
    let payload = match index % 5 {
        0 => EntryPayload::Noop,
        3 => EntryPayload::Membership(Membership::new([NodeId(1), NodeId(index % 4 + 2)])),
        _ => EntryPayload::Normal(Bytes::from(vec![group * 50 + (index % 50) as u8; (index * 7 + term) as usize % 30])),
    };
    Entry { index: Index(index), term: Term(term), payload }
}

struct Harness {
    fs: SimFs,
    wal: SharedWal<SimFs>,
    stores: BTreeMap<u8, GroupStore<SimFs>>,
    models: BTreeMap<u8, MemStorage>,
    /// Whether the stores' commit indexes must match (a restart may lose a commit-only change).
    commit_exact: bool,
}

impl Harness {
    fn new(seed: u64) -> Self {
        let fs = SimFs::new(seed);
        let wal = SharedWal::create(fs.clone(), dir(), ME, OPTIONS).expect("create");
        Harness { fs, wal, stores: BTreeMap::new(), models: BTreeMap::new(), commit_exact: true }
    }

    /// The entries and hard state `append` writes to its group, per the model.
    fn resolve(&self, append: &Append) -> Option<(Option<HardState>, Vec<Entry>)> {
        let model = self.models.get(&append.group)?;
        let first_held = model.first_index().expect("memory");
        let last = model.last_index().expect("memory");
        let back = u64::from(append.back).min(last.0 + 1 - first_held.0);
        let first = Index(last.0 + 1 - back);
        let previous = model.term(first.prev()).expect("held");
        let hard = model.hard_state();
        let term = previous.0.max(hard.term.0) + u64::from(append.term_bump);
        let entries = (0..u64::from(append.count)).map(|k| entry(first.0 + k, term, append.group)).collect();
        let vote = if term == hard.term.0 { hard.vote } else { append.vote.map(|v| NodeId(u64::from(v))) };
        let commit = Index(hard.commit.0.max(first.0.saturating_sub(2)));
        Some((Some(HardState { term: Term(term), vote, commit }), entries))
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            &Op::Create { group, learner } => {
                let membership = if learner { Membership::default() } else { Membership::new([NodeId(1), NodeId(2)]) };
                let created = self.wal.create_group(GroupId(u64::from(group)), membership.clone());
                prop_assert_eq!(created.is_ok(), !self.models.contains_key(&group), "create {}", group);
                if let Ok(store) = created {
                    self.stores.insert(group, store);
                    self.models.insert(group, MemStorage::new(membership));
                }
            }
            &Op::Remove { group } => {
                let removed = self.wal.remove_group(GroupId(u64::from(group)));
                prop_assert_eq!(removed.is_ok(), self.models.remove(&group).is_some(), "remove {}", group);
                self.stores.remove(&group);
            }
            Op::Batch(appends) => self.batch(appends)?,
            Op::Persist(append) => {
                if let Some((hard_state, entries)) = self.resolve(append) {
                    let store = self.stores.get_mut(&append.group).expect("held with its model");
                    store.persist(hard_state, &entries).map_err(fail)?;
                    self.models.get_mut(&append.group).expect("held").persist(hard_state, &entries).map_err(fail)?;
                }
            }
            &Op::Compact { group, target, matching } => {
                let Some(model) = self.models.get_mut(&group) else { return Ok(()) };
                let index = Index((model.first_index().expect("memory").0 + u64::from(target)).saturating_sub(2));
                let term = match model.term(index) {
                    Ok(term) if matching => term,
                    _ => Term(model.hard_state().term.0.max(1) + 1),
                };
                model.compact(index, term).map_err(fail)?;
                self.stores.get_mut(&group).expect("held").compact(index, term).map_err(fail)?;
            }
            &Op::Snapshot { group, back, beyond, received } => self.snapshot(group, back, beyond, received)?,
            &Op::Reopen { power_loss } => self.reopen(power_loss)?,
        }
        self.compare()
    }

    fn batch(&mut self, appends: &[Append]) -> Result<(), TestCaseError> {
        let mut outputs: BTreeMap<u8, Output> = BTreeMap::new();
        for append in appends {
            if outputs.contains_key(&append.group) {
                continue;
            }
            if let Some((hard_state, entries)) = self.resolve(append) {
                let model = self.models.get_mut(&append.group).expect("held");
                model.persist(hard_state, &entries).map_err(fail)?;
                outputs.insert(append.group, Output { hard_state, entries, ..Output::default() });
            }
        }
        let ids: Vec<u8> = outputs.keys().copied().collect();
        let stores = self.stores.iter_mut().filter(|(id, _)| ids.contains(id)).map(|(_, store)| store);
        let mut batch: Vec<(&mut GroupStore<SimFs>, &mut Output)> = stores.zip(outputs.values_mut()).collect();
        self.wal.write_batch(&mut batch).map_err(fail)
    }

    fn snapshot(&mut self, group: u8, back: u8, beyond: bool, received: bool) -> Result<(), TestCaseError> {
        let Some(model) = self.models.get_mut(&group) else { return Ok(()) };
        let last = model.last_index().expect("memory");
        let boundary = model.first_index().expect("memory").prev();
        let index = if beyond {
            Index(last.0 + 1 + u64::from(back))
        } else {
            Index(last.0.saturating_sub(u64::from(back)).max(boundary.0))
        };
        let term = model.term(index).unwrap_or(Term(model.hard_state().term.0.max(1)));
        let data: Vec<u8> = (0..(index.0 * 3 % 40)).map(|b| b as u8 ^ group).collect();
        let membership = model.initial_state().expect("memory").membership;
        let meta = SnapshotMeta { index, term, membership, data_crc32: raft_core::snapshot_crc32(&data) };
        let store = self.stores.get_mut(&group).expect("held");
        if received {
            let half = data.len() / 2;
            let chunk = |range: std::ops::Range<usize>| ReceivedChunk {
                meta: meta.clone(),
                offset: range.start as u64,
                data: Bytes::copy_from_slice(&data[range]),
            };
            let output = Output {
                snapshot_chunks: vec![chunk(0..half), chunk(half..data.len())],
                install_snapshot: Some(meta.clone()),
                ..Output::default()
            };
            model.write_output_owned(&mut output.clone()).map_err(fail)?;
            store.write_output_owned(&mut output.clone()).map_err(fail)?;
        } else {
            model.save_snapshot(&meta, &data).map_err(fail)?;
            store.save_snapshot(&meta, &data).map_err(fail)?;
        }
        Ok(())
    }

    fn reopen(&mut self, power_loss: bool) -> Result<(), TestCaseError> {
        self.stores.clear();
        if power_loss {
            self.fs.crash();
        }
        self.wal = SharedWal::open(self.fs.clone(), dir(), ME, OPTIONS).map_err(fail)?;
        let expected: Vec<GroupId> = self.models.keys().map(|id| GroupId(u64::from(*id))).collect();
        prop_assert_eq!(self.wal.groups(), expected, "the groups after a restart");
        for id in self.models.keys() {
            self.stores.insert(*id, self.wal.group(GroupId(u64::from(*id))).map_err(fail)?);
        }
        self.commit_exact = false;
        Ok(())
    }

    /// Every observable of every group equals its model's.
    fn compare(&mut self) -> Result<(), TestCaseError> {
        prop_assert!(self.wal.cache_bytes() <= OPTIONS.cache_bytes_max, "the cache stays under its limit");
        for (id, model) in &self.models {
            let store = &self.stores[id];
            let first = model.first_index().expect("memory");
            let last = model.last_index().expect("memory");
            prop_assert_eq!(store.first_index(), Ok(first), "group {}: first index", id);
            prop_assert_eq!(store.last_index(), Ok(last), "group {}: last index", id);
            for index in first.0.saturating_sub(2)..=last.0 + 1 {
                prop_assert_eq!(store.term(Index(index)), model.term(Index(index)), "group {}: term {}", id, index);
            }
            let all = store.entries(first, last.next(), u64::MAX);
            prop_assert_eq!(&all, &model.entries(first, last.next(), u64::MAX), "group {}: entries", id);
            let low = Index(first.0 + 1);
            if low <= last {
                prop_assert_eq!(store.entries(low, last.next(), 40), model.entries(low, last.next(), 40), "bounded");
            }
            let (ours, theirs) = (store.initial_state().map_err(fail)?, model.initial_state().map_err(fail)?);
            prop_assert_eq!(ours.membership, theirs.membership, "group {}: membership", id);
            prop_assert_eq!(&ours.snapshot, &theirs.snapshot, "group {}: snapshot", id);
            prop_assert_eq!(ours.hard_state.term, theirs.hard_state.term, "group {}: term", id);
            prop_assert_eq!(ours.hard_state.vote, theirs.hard_state.vote, "group {}: vote", id);
            if self.commit_exact {
                prop_assert_eq!(ours.hard_state.commit, theirs.hard_state.commit, "group {}: commit", id);
            }
            if ours.snapshot.exists() {
                let chunk = store.snapshot_chunk(ours.snapshot.index, ours.snapshot.term, 0, u64::MAX).map_err(fail)?;
                prop_assert_eq!(&chunk.data, model.snapshot_data(), "group {}: snapshot data", id);
            }
        }
        Ok(())
    }
}

fn fail(error: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(error.to_string())
}

fn config() -> Config {
    Config { cases: 96, failure_persistence: None, rng_seed: RngSeed::Fixed(0x3a11), ..Config::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_group_matches_its_model(seed in any::<u64>(), ops in proptest::collection::vec(op(), 1..60)) {
        let mut harness = Harness::new(seed);
        for (number, op) in ops.iter().enumerate() {
            harness.step(op).map_err(|e| TestCaseError::fail(format!("step {number} {op:?}: {e}")))?;
        }
        harness.reopen(true)?;
        harness.compare()?;
    }
}
