//! Durable snapshots in [`DiskStorage`]: staging chunk by chunk, installing (keeping or replacing
//! the log), reading back, recovery, typed refusals, every crash point and I/O failure of an
//! install, damaged snapshot files, and bounded memory for large snapshots.
//!
//! Behaviour shared with [`MemStorage`] (the reference) is checked by running the same script on
//! both stores: every call must answer alike and both must show the same state after every call;
//! the durable store must show it again after a power loss and a reopen.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use raft_core::{Entry, HardState, Index, Membership, NodeId, SnapshotMeta, Storage, StorageError, Term};
use raft_storage::testing::{SimFs, SimFsOptions};

mod common;
use common::{entry, membership, run};
use raft_storage::{
    Corruption, DiskError, DiskOptions, DiskStorage, FileSystem, FsFile, Identity, LogStore, MemStorage,
    MemStorageError, StdFs,
};

const ME: Identity = Identity { cluster_id: 5, node_id: NodeId(1) };
/// About four records per segment: logs span several segments.
const OPTIONS: DiskOptions = DiskOptions { segment_bytes_max: 100, preallocate_bytes: 0 };
/// The staging file's name (see the `disk` module docs).
const STAGING_FILE: &str = "snapshot.staging";

fn dir() -> PathBuf {
    PathBuf::from("/var/raft/node-1")
}

/// The membership the snapshots carry, so that a test sees it taken from the snapshot.
fn grown() -> Membership {
    Membership::new([NodeId(1), NodeId(2), NodeId(3), NodeId(4)])
}

fn hard(term: u64, vote: u64) -> Option<HardState> {
    Some(HardState { term: Term(term), vote: Some(NodeId(vote)), commit: Index(0) })
}

fn meta(index: u64, term: u64) -> SnapshotMeta {
    // The stores do not check the data against `data_crc32` (raft-core and raft-net do).
    SnapshotMeta { index: Index(index), term: Term(term), membership: grown(), data_crc32: 0 }
}

/// `len` deterministic pseudo-random bytes derived from `seed`.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

/// The data file's name (see the `disk` module docs).
fn snapshot_name(meta: &SnapshotMeta) -> String {
    format!("snapshot-{:020}-{:020}.snap", meta.index.0, meta.term.0)
}

fn snapshot_path(meta: &SnapshotMeta) -> PathBuf {
    dir().join(snapshot_name(meta))
}

/// Writes `data` into the staging area of `meta` in chunks of `chunk` bytes (one empty chunk for
/// empty data).
fn stage<S: LogStore>(store: &mut S, meta: &SnapshotMeta, data: &[u8], chunk: usize) -> Result<(), S::Error> {
    if data.is_empty() {
        return store.write_snapshot_chunk(meta, 0, &[]);
    }
    for (number, piece) in data.chunks(chunk).enumerate() {
        store.write_snapshot_chunk(meta, (number * chunk) as u64, piece)?;
    }
    Ok(())
}

fn stage_and_install<S: LogStore>(
    store: &mut S,
    meta: &SnapshotMeta,
    data: &[u8],
    chunk: usize,
) -> Result<(), S::Error> {
    stage(store, meta, data, chunk)?;
    store.install_snapshot(meta)
}

/// The data of snapshot `meta`, read `bytes_max` bytes at a time, checking every chunk's shape.
fn read_back<S: Storage>(store: &S, meta: &SnapshotMeta, bytes_max: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let chunk = store.snapshot_chunk(meta.index, meta.term, out.len() as u64, bytes_max).expect("a chunk");
        assert!(chunk.data.len() as u64 <= bytes_max.max(1), "a chunk within bytes_max");
        assert!(!chunk.data.is_empty() || chunk.done, "a chunk not at the end holds at least one byte");
        out.extend_from_slice(&chunk.data);
        if chunk.done {
            return out;
        }
    }
}

/// Everything a store shows.
#[derive(Clone, Debug, PartialEq, Eq)]
struct View {
    hard_state: HardState,
    membership: Membership,
    /// The log boundary: `first_index() - 1` and its term.
    boundary: (Index, Term),
    entries: Vec<Entry>,
    snapshot: SnapshotMeta,
    data: Vec<u8>,
}

/// Reads everything `store` shows, checking that its answers agree with each other.
fn view<S: Storage>(store: &S) -> View {
    let initial = store.initial_state().expect("initial state");
    let (first, last) = (store.first_index().expect("first"), store.last_index().expect("last"));
    let boundary = (first.prev(), store.term(first.prev()).expect("the boundary's term"));
    let entries = store.entries(first, last.next(), u64::MAX).expect("every held entry");
    for (position, entry) in entries.iter().enumerate() {
        assert_eq!(entry.index, Index(first.0 + position as u64), "no gap after the boundary");
    }
    assert_eq!(entries.last().map_or(first.prev(), |e| e.index), last, "last index");
    let snapshot = store.snapshot().expect("snapshot");
    assert_eq!(initial.snapshot, snapshot, "initial_state().snapshot is snapshot()");
    let data = if snapshot.exists() {
        read_back(store, &snapshot, 97)
    } else {
        let chunk = store.snapshot_chunk(Index(0), Term(0), 0, 10);
        assert_eq!(chunk, Err(StorageError::SnapshotReplaced(Index(0))), "no snapshot to read");
        Vec::new()
    };
    View { hard_state: initial.hard_state, membership: initial.membership, boundary, entries, snapshot, data }
}

fn create(fs: &SimFs) -> DiskStorage<SimFs> {
    DiskStorage::create(fs.clone(), dir(), ME, membership(), OPTIONS).expect("create")
}

fn open(fs: &SimFs) -> Result<DiskStorage<SimFs>, DiskError> {
    DiskStorage::open(fs.clone(), dir(), ME, OPTIONS)
}

/// Power loss and restart.
fn reopen(fs: &SimFs, store: DiskStorage<SimFs>) -> DiskStorage<SimFs> {
    drop(store);
    fs.crash();
    open(fs).unwrap_or_else(|error| panic!("reopen: {error}"))
}

/// The names of the snapshot files (installed or staging) in the directory.
fn snapshot_files(fs: &SimFs) -> Vec<String> {
    let names = fs.list(&dir()).expect("list");
    names.into_iter().filter(|name| name.starts_with("snapshot")).collect()
}

// ---------------------------------------------------------------------------------------------
// The same scripts on MemStorage and DiskStorage.

#[derive(Clone, Debug)]
enum Step {
    Persist(Option<HardState>, Vec<Entry>),
    Compact(u64, u64),
    Chunk(SnapshotMeta, u64, Vec<u8>),
    Install(SnapshotMeta),
    /// Stages the data in chunks of the given size, then installs it.
    Save(SnapshotMeta, Vec<u8>, usize),
    /// Power loss and reopen of the durable store (nothing for the memory store). Only where
    /// nothing is staged: staging does not survive a restart.
    Reopen,
}

/// How a call answered, whatever the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Done,
    Gap { first: Index, last: Index },
    BelowSnapshot { first: Index, snapshot: Index },
    ChunkOutOfOrder { offset: u64, staged: u64 },
    NotStaged(Index),
}

trait Classify {
    fn outcome(&self) -> Outcome;
}

impl Classify for MemStorageError {
    fn outcome(&self) -> Outcome {
        match *self {
            MemStorageError::Gap { first, last } => Outcome::Gap { first, last },
            MemStorageError::BelowSnapshot { first, snapshot } => Outcome::BelowSnapshot { first, snapshot },
            MemStorageError::ChunkOutOfOrder { offset, staged } => Outcome::ChunkOutOfOrder { offset, staged },
            MemStorageError::NotStaged(index) => Outcome::NotStaged(index),
            other => panic!("unexpected refusal {other}"),
        }
    }
}

impl Classify for DiskError {
    fn outcome(&self) -> Outcome {
        match *self {
            DiskError::AppendGap { first, last } => Outcome::Gap { first, last },
            DiskError::AppendBelowSnapshot { first, snapshot } => Outcome::BelowSnapshot { first, snapshot },
            DiskError::SnapshotChunkOutOfOrder { offset, staged } => Outcome::ChunkOutOfOrder { offset, staged },
            DiskError::SnapshotNotStaged(index) => Outcome::NotStaged(index),
            ref other => panic!("unexpected error {other}"),
        }
    }
}

fn apply<S: LogStore>(store: &mut S, step: &Step) -> Outcome
where
    S::Error: Classify,
{
    let result = match step {
        Step::Persist(hard_state, entries) => store.persist(*hard_state, entries),
        &Step::Compact(index, term) => store.compact(Index(index), Term(term)),
        Step::Chunk(meta, offset, data) => store.write_snapshot_chunk(meta, *offset, data),
        Step::Install(meta) => store.install_snapshot(meta),
        Step::Save(meta, data, chunk) => stage_and_install(store, meta, data, *chunk),
        Step::Reopen => Ok(()),
    };
    result.map_or_else(|error| error.outcome(), |()| Outcome::Done)
}

/// Runs `steps` on both stores, expecting the given outcomes (`Done` where none is given) and
/// equal views after every step, then once more after a reopen. Returns the durable store.
fn run_both(fs: &SimFs, steps: &[(Step, Outcome)]) -> (DiskStorage<SimFs>, View) {
    let mut mem = MemStorage::new(membership());
    let mut disk = create(fs);
    for (number, (step, expected)) in steps.iter().enumerate() {
        if let Step::Reopen = step {
            disk = reopen(fs, disk);
        }
        assert_eq!(apply(&mut mem, step), *expected, "memory store, step {number}: {step:?}");
        assert_eq!(apply(&mut disk, step), *expected, "durable store, step {number}: {step:?}");
        assert_eq!(view(&disk), view(&mem), "step {number}: {step:?}");
    }
    let final_view = view(&mem);
    let disk = reopen(fs, disk);
    assert_eq!(view(&disk), final_view, "after a reopen");
    (disk, final_view)
}

fn done(step: Step) -> (Step, Outcome) {
    (step, Outcome::Done)
}

#[test]
fn round_trip_in_chunks_and_after_reopen() {
    let fs = SimFs::new(1);
    let bytes = data(10_007, 1);
    let steps = [done(Step::Persist(hard(1, 1), run(1, 10, 1))), done(Step::Save(meta(6, 1), bytes.clone(), 1000))];
    let (store, view) = run_both(&fs, &steps);
    assert_eq!(view.snapshot, meta(6, 1));
    assert_eq!(store.initial_state().expect("state").snapshot, meta(6, 1));
    assert_eq!(view.membership, grown(), "the membership comes from the snapshot");
    assert_eq!(view.data, bytes);
    for bytes_max in [0, 1, 7, 4096, 10_006, 10_007, 10_008, u64::MAX] {
        assert_eq!(read_back(&store, &meta(6, 1), bytes_max), bytes, "read {bytes_max} bytes at a time");
    }
    assert_eq!(snapshot_files(&fs), ["snapshot-00000000000000000006-00000000000000000001.snap"]);
    assert_eq!(fs.read_durable(&snapshot_path(&meta(6, 1))), Some(bytes), "the data file holds the data as sent");
}

/// Chunk answers at the edges match [`MemStorage`]'s (the `chunk_of` rules).
#[test]
fn chunks_at_the_edges_answer_like_the_memory_store() {
    let fs = SimFs::new(2);
    let bytes = data(300, 2);
    let steps = [done(Step::Save(meta(3, 1), bytes.clone(), 64))];
    let (disk, _) = run_both(&fs, &steps);
    let mut mem = MemStorage::new(membership());
    mem.save_snapshot(&meta(3, 1), &bytes).expect("save");
    for offset in [0, 1, 150, 299, 300, 301, 10_000, u64::MAX] {
        for bytes_max in [0, 1, 2, 150, 299, 300, u64::MAX] {
            let expected = mem.snapshot_chunk(Index(3), Term(1), offset, bytes_max);
            let found = disk.snapshot_chunk(Index(3), Term(1), offset, bytes_max);
            assert_eq!(found, expected, "offset {offset}, bytes_max {bytes_max}");
        }
    }
    for (index, term) in [(3, 2), (2, 1), (4, 1), (0, 0)] {
        let expected = Err(StorageError::SnapshotReplaced(Index(index)));
        assert_eq!(disk.snapshot_chunk(Index(index), Term(term), 0, 10), expected, "({index}, {term}) is not held");
    }
}

#[test]
fn install_keeps_a_log_that_holds_the_snapshot_entry() {
    let fs = SimFs::new(3);
    let steps = [
        done(Step::Persist(hard(2, 1), run(1, 6, 1))),
        done(Step::Persist(None, run(7, 12, 2))),
        done(Step::Save(meta(9, 2), data(500, 3), 128)),
        done(Step::Persist(None, run(13, 14, 2))),
        // The driver compacts at or below the snapshot: the snapshot stays.
        done(Step::Compact(7, 2)),
        done(Step::Reopen),
        done(Step::Persist(None, run(15, 15, 2))),
    ];
    let (_, view) = run_both(&fs, &steps);
    assert_eq!(view.boundary, (Index(7), Term(2)));
    assert_eq!(view.entries, run(8, 15, 2), "entries after the snapshot kept, appends continue");
    assert_eq!((view.snapshot, view.data), (meta(9, 2), data(500, 3)));
}

#[test]
fn install_replaces_a_log_that_diverges_from_it() {
    let fs = SimFs::new(4);
    let steps = [
        done(Step::Persist(hard(2, 1), run(1, 12, 1))),
        done(Step::Compact(3, 1)),
        // The log holds (8, 1), not (8, 2): the snapshot supersedes all of it.
        done(Step::Save(meta(8, 2), data(700, 4), 100)),
        (Step::Persist(None, run(8, 8, 2)), Outcome::BelowSnapshot { first: Index(8), snapshot: Index(8) }),
        (Step::Persist(None, run(10, 10, 2)), Outcome::Gap { first: Index(10), last: Index(8) }),
        done(Step::Persist(None, run(9, 11, 2))),
    ];
    let (_, view) = run_both(&fs, &steps);
    assert_eq!(view.boundary, (Index(8), Term(2)), "the log starts after the snapshot");
    assert_eq!(view.entries, run(9, 11, 2), "appends continue at the snapshot index + 1");
    assert_eq!(view.snapshot, meta(8, 2));
}

#[test]
fn install_replaces_a_shorter_log() {
    let fs = SimFs::new(5);
    let steps = [
        done(Step::Persist(hard(3, 2), run(1, 5, 1))),
        done(Step::Save(meta(20, 3), data(1, 5), 1)),
        done(Step::Reopen),
        done(Step::Persist(None, run(21, 22, 3))),
    ];
    let (store, view) = run_both(&fs, &steps);
    assert_eq!(view.boundary, (Index(20), Term(3)));
    assert_eq!(view.entries, run(21, 22, 3));
    assert_eq!(store.segment_count(), 1, "the superseded segments are gone");
}

#[test]
fn a_stale_install_is_dropped_without_rollback() {
    let fs = SimFs::new(6);
    let steps = [
        done(Step::Persist(hard(2, 1), run(1, 10, 2))),
        done(Step::Save(meta(8, 2), data(400, 6), 100)),
        // Older, same index with another term, an empty one: all dropped.
        done(Step::Save(meta(5, 2), data(300, 7), 100)),
        done(Step::Save(meta(8, 1), data(300, 8), 100)),
        done(Step::Save(meta(8, 2), Vec::new(), 1)),
        // Staging is dropped with the stale install.
        (Step::Install(meta(5, 2)), Outcome::NotStaged(Index(5))),
    ];
    let (_, view) = run_both(&fs, &steps);
    assert_eq!((view.snapshot, view.data), (meta(8, 2), data(400, 6)));
    assert_eq!(view.entries, run(1, 10, 2), "the log is untouched");
    assert_eq!(snapshot_files(&fs), ["snapshot-00000000000000000008-00000000000000000002.snap"], "no staging left");
}

#[test]
fn a_newer_snapshot_replaces_the_old_one_and_its_file() {
    let fs = SimFs::new(7);
    let steps = [
        done(Step::Persist(hard(2, 1), run(1, 10, 2))),
        done(Step::Save(meta(4, 2), data(400, 9), 100)),
        done(Step::Save(meta(7, 2), data(900, 10), 100)),
    ];
    let (store, view) = run_both(&fs, &steps);
    assert_eq!((view.snapshot, view.data), (meta(7, 2), data(900, 10)));
    assert_eq!(store.snapshot_chunk(Index(4), Term(2), 0, 10), Err(StorageError::SnapshotReplaced(Index(4))));
    assert_eq!(snapshot_files(&fs), ["snapshot-00000000000000000007-00000000000000000002.snap"]);
    assert_eq!(fs.durable_file_names(&dir()).iter().filter(|n| n.ends_with(".snap")).count(), 1);
}

/// Chunk-order mistakes and installs of what is not staged are typed refusals, not I/O failures:
/// the store stays usable, and the staged data survives a refused chunk.
#[test]
fn refused_chunks_and_installs_leave_the_store_usable() {
    let fs = SimFs::new(8);
    let (a, b) = (meta(5, 1), SnapshotMeta { membership: membership(), ..meta(5, 1) });
    let bytes = data(300, 11);
    let steps = [
        done(Step::Persist(hard(1, 1), run(1, 6, 1))),
        (Step::Chunk(a.clone(), 100, bytes[100..].to_vec()), Outcome::ChunkOutOfOrder { offset: 100, staged: 0 }),
        (Step::Install(a.clone()), Outcome::NotStaged(Index(5))),
        done(Step::Chunk(a.clone(), 0, bytes[..100].to_vec())),
        (Step::Chunk(a.clone(), 150, bytes[150..].to_vec()), Outcome::ChunkOutOfOrder { offset: 150, staged: 100 }),
        (Step::Chunk(a.clone(), 50, bytes[50..].to_vec()), Outcome::ChunkOutOfOrder { offset: 50, staged: 100 }),
        // Another snapshot's chunk (same index, another membership) does not continue `a`.
        (Step::Chunk(b.clone(), 100, bytes[100..].to_vec()), Outcome::ChunkOutOfOrder { offset: 100, staged: 0 }),
        (Step::Install(b.clone()), Outcome::NotStaged(Index(5))),
        done(Step::Persist(None, run(7, 8, 1))),
        done(Step::Chunk(a.clone(), 100, bytes[100..].to_vec())),
        done(Step::Install(a.clone())),
        (Step::Install(a.clone()), Outcome::NotStaged(Index(5))),
    ];
    let (mut store, view) = run_both(&fs, &steps);
    assert_eq!((view.snapshot, view.data), (a, bytes));
    store.persist(None, &run(9, 9, 1)).expect("still usable");
}

/// Offset 0 starts over, discarding what was staged (for the same snapshot or another).
#[test]
fn offset_zero_restarts_staging() {
    let fs = SimFs::new(9);
    let steps = [
        done(Step::Chunk(meta(5, 1), 0, data(100, 12))),
        done(Step::Chunk(meta(6, 1), 0, data(50, 13))),
        (Step::Install(meta(5, 1)), Outcome::NotStaged(Index(5))),
        done(Step::Chunk(meta(6, 1), 0, data(30, 14))),
        done(Step::Chunk(meta(6, 1), 30, data(30, 15))),
        done(Step::Install(meta(6, 1))),
    ];
    let (_, view) = run_both(&fs, &steps);
    assert_eq!(view.data, [data(30, 14), data(30, 15)].concat());
}

/// Recovery removes the remains of interrupted installs (a staging file, snapshot files that
/// META does not name) and nothing else.
#[test]
fn open_removes_leftover_snapshot_files() {
    let fs = SimFs::new(10);
    let mut store = create(&fs);
    store.persist(hard(1, 1), &run(1, 4, 1)).expect("persist");
    store.save_snapshot(&meta(3, 1), &data(50, 16)).expect("save");
    drop(store);
    let leftovers = [STAGING_FILE, "snapshot-00000000000000000009-00000000000000000001.snap", "notes.snap"];
    for name in leftovers {
        let mut file = fs.create(&dir().join(name)).expect("create");
        file.append(b"leftover").expect("append");
        file.sync().expect("sync");
    }
    fs.sync_dir(&dir()).expect("sync dir");
    let store = open(&fs).expect("open");
    assert_eq!(view(&store).data, data(50, 16));
    drop(store);
    fs.crash();
    let expected = ["notes.snap", "snapshot-00000000000000000003-00000000000000000001.snap"];
    let durable: Vec<String> = fs.durable_file_names(&dir()).into_iter().filter(|n| n.contains("snap")).collect();
    assert_eq!(durable, expected, "the removals are durable; unknown names stay");
}

// ---------------------------------------------------------------------------------------------
// Crash points and I/O failures of an install.

/// The installs whose every operation is interrupted.
#[derive(Clone, Copy, Debug)]
enum Install {
    /// The log holds the snapshot's last entry: it stays.
    KeepsLog,
    /// The log holds another term at the snapshot index: it goes.
    Diverges,
    /// The snapshot lies beyond the log: it goes.
    BeyondLog,
    /// Older than the installed snapshot: dropped.
    Stale,
}

impl Install {
    const ALL: [Install; 4] = [Install::KeepsLog, Install::Diverges, Install::BeyondLog, Install::Stale];

    fn meta(self) -> SnapshotMeta {
        match self {
            Install::KeepsLog => meta(9, 2),
            Install::Diverges => meta(10, 3),
            Install::BeyondLog => meta(20, 3),
            Install::Stale => meta(3, 1),
        }
    }

    fn data(self) -> Vec<u8> {
        data(1000, self.meta().index.0)
    }
}

/// The store before the install, on a fresh disk: log boundary 2, entries 3..=12 over several
/// segments (terms 1 then 2), snapshot (4, 1) installed.
fn before_install(fs: &SimFs) -> DiskStorage<SimFs> {
    let mut store = create(fs);
    store.persist(hard(3, 1), &run(1, 6, 1)).expect("persist");
    store.persist(None, &run(7, 12, 2)).expect("persist");
    store.save_snapshot(&meta(4, 1), &data(600, 4)).expect("save");
    store.compact(Index(2), Term(1)).expect("compact");
    store
}

fn do_install(store: &mut DiskStorage<SimFs>, install: Install) -> Result<(), DiskError> {
    stage_and_install(store, &install.meta(), &install.data(), 256)
}

/// The views before and after `install`, and the number of its file-system operations.
fn install_outline(install: Install) -> (View, View, u64) {
    let fs = SimFs::new(0);
    let mut store = before_install(&fs);
    let old = view(&store);
    let start = fs.op_count();
    do_install(&mut store, install).expect("the install runs cleanly");
    let ops = fs.op_count() - start;
    let new = view(&store);
    assert_eq!(view(&reopen(&fs, store)), new, "{install:?}: the install survives a power loss");
    (old, new, ops)
}

/// Opens the store after a fault; it must show exactly `old` or `new`, hold no stray snapshot
/// file, and take a write that survives another power loss. Returns whether it shows `new`.
fn recover(fs: &SimFs, old: &View, new: &View) -> Result<bool, String> {
    let mut store = open(fs).map_err(|error| format!("recovery failed: {error}"))?;
    let found = view(&store);
    let is_new = found == *new;
    if found != *old && !is_new {
        return Err(format!("recovered neither the old nor the new state: {found:?}"));
    }
    if snapshot_files(fs) != [snapshot_name(&found.snapshot)] {
        return Err(format!("stray snapshot files: {:?}", snapshot_files(fs)));
    }
    let next = entry(found.entries.last().map_or(found.boundary.0, |e| e.index).0 + 1, 3);
    store.persist(None, std::slice::from_ref(&next)).map_err(|error| format!("write after recovery: {error}"))?;
    let mut expected = found.clone();
    expected.entries.push(next);
    let again = view(&reopen(fs, store));
    if again != expected {
        return Err(format!("a write after recovery did not survive a power loss: {again:?}"));
    }
    Ok(is_new)
}

/// Checks that the recovered states switch from old to new exactly once, at the install's commit
/// point (the META write), and that a stale install never shows anything new.
fn check_switch(install: Install, outcomes: &[bool]) {
    let switch = outcomes.iter().position(|&is_new| is_new).unwrap_or(outcomes.len());
    assert!(outcomes[switch..].iter().all(|&is_new| is_new), "{install:?}: old after new: {outcomes:?}");
    match install {
        Install::Stale => {}
        _ => assert!(0 < switch && switch < outcomes.len(), "{install:?}: both outcomes occur: {outcomes:?}"),
    }
}

/// For every install and every operation `k` of it: a fresh disk halts at `k`, loses power, and
/// the recovered store must show the state before or after the install.
fn crash_at_every_operation(options: SimFsOptions) {
    let mut failures = Vec::new();
    for install in Install::ALL {
        let (old, new, ops) = install_outline(install);
        let mut outcomes = Vec::new();
        for k in 0..ops {
            let fs = SimFs::with_options(k, options);
            let mut store = before_install(&fs);
            fs.crash_after(k);
            let result = do_install(&mut store, install);
            assert!(matches!(result, Err(DiskError::Io { .. })), "{install:?}, crash at {k}: {result:?}");
            drop(store);
            fs.crash();
            match recover(&fs, &old, &new) {
                Ok(is_new) => outcomes.push(is_new),
                Err(why) => failures.push(format!("{install:?}, crash at operation {k} of {ops}: {why}")),
            }
        }
        if outcomes.len() as u64 == ops {
            check_switch(install, &outcomes);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn crash_at_every_operation_of_an_install_with_torn_writes() {
    crash_at_every_operation(SimFsOptions::default());
}

#[test]
fn crash_at_every_operation_of_an_install_without_torn_writes() {
    crash_at_every_operation(SimFsOptions { torn_crash_writes: false, torn_failed_appends: false });
}

/// Every operation of an install fails once with EIO: the store stops (fail-stop), and after a
/// process restart or a power loss it shows the old or the new state. What a process restart
/// reports survives a later power loss (docs/pitfalls.md #28).
#[test]
fn io_error_at_every_operation_of_an_install() {
    let mut failures = Vec::new();
    for install in Install::ALL {
        let (old, new, ops) = install_outline(install);
        for (k, power_loss) in (0..ops).flat_map(|k| [(k, false), (k, true)]) {
            let context = format!("{install:?}, EIO at operation {k} of {ops}, power loss {power_loss}");
            let fs = SimFs::new(k);
            let mut store = before_install(&fs);
            fs.fail_after(k, ErrorKind::Other);
            let result = do_install(&mut store, install);
            assert!(
                matches!(result, Err(DiskError::Io { ref source, .. }) if source.kind() == ErrorKind::Other),
                "{context}: {result:?}"
            );
            assert_eq!(store.persist(None, &[]), Err(DiskError::Stopped), "{context}: stopped");
            assert_eq!(store.write_snapshot_chunk(&meta(30, 3), 0, b"x"), Err(DiskError::Stopped), "{context}");
            assert_eq!(store.install_snapshot(&install.meta()), Err(DiskError::Stopped), "{context}");
            drop(store);
            if power_loss {
                fs.crash();
            }
            let reported = open(&fs).map(|store| view(&store));
            fs.crash();
            let after = open(&fs).map(|store| view(&store));
            if reported != after {
                failures.push(format!("{context}: open reported {reported:?}, a power loss then {after:?}"));
            }
            if let Err(why) = recover(&fs, &old, &new) {
                failures.push(format!("{context}: {why}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Damaged snapshot files.

/// A store with snapshot (4, 1) of 1000 bytes over a log 1..=8, closed.
fn with_snapshot(fs: &SimFs) -> PathBuf {
    let mut store = create(fs);
    store.persist(hard(1, 1), &run(1, 8, 1)).expect("persist");
    store.save_snapshot(&meta(4, 1), &data(1000, 17)).expect("save");
    snapshot_path(&meta(4, 1))
}

fn replace_file(fs: &SimFs, path: &Path, bytes: &[u8]) {
    let mut file = fs.create(path).expect("create");
    file.append(bytes).expect("append");
    file.sync().expect("sync");
}

/// Opening fails with exactly `corruption` at `offset` of the snapshot file, and repairs nothing.
fn assert_snapshot_corrupt(fs: &SimFs, path: &Path, offset: u64, corruption: Corruption) {
    let before = fs.durable_snapshot();
    let expected = DiskError::Corrupt { path: path.to_path_buf(), offset, corruption };
    match open(fs) {
        Ok(store) => panic!("opened with snapshot {:?} instead of failing with {expected}", view(&store).snapshot),
        Err(error) => assert_eq!(error, expected),
    }
    assert!(fs.durable_snapshot() == before, "a failed open changes nothing on disk");
}

#[test]
fn a_bit_flip_in_the_snapshot_file_is_a_checksum_error() {
    for (byte, bit) in [(0, 0), (500, 3), (999, 7)] {
        let fs = SimFs::new(11);
        let path = with_snapshot(&fs);
        fs.flip_bit(&path, byte, bit).expect("flip");
        assert_snapshot_corrupt(&fs, &path, 0, Corruption::Checksum);
    }
}

#[test]
fn a_truncated_or_extended_snapshot_file_is_a_length_error() {
    for len in [0, 1, 999, 1001] {
        let fs = SimFs::new(12);
        let path = with_snapshot(&fs);
        let mut bytes = data(1000, 17);
        bytes.resize(len, 0);
        replace_file(&fs, &path, &bytes);
        let corruption = Corruption::SnapshotLength { expected: 1000, found: len as u64 };
        assert_snapshot_corrupt(&fs, &path, len.min(1000) as u64, corruption);
    }
}

#[test]
fn a_missing_snapshot_file_is_an_error() {
    let fs = SimFs::new(13);
    let path = with_snapshot(&fs);
    fs.remove(&path).expect("remove");
    fs.sync_dir(&dir()).expect("sync dir");
    assert_snapshot_corrupt(&fs, &path, 0, Corruption::SnapshotMissing);
}

// ---------------------------------------------------------------------------------------------
// Large snapshots on the real file system.

const CHUNK_BYTES: usize = 64 * 1024;
const CHUNKS: u64 = 100;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("raft-storage-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The crc32 of the snapshot's data, read `bytes_max` bytes at a time (never all at once).
fn crc_by_chunks<S: Storage>(store: &S, meta: &SnapshotMeta, bytes_max: u64) -> (u32, u64) {
    let mut crc = crc32fast::Hasher::new();
    let mut offset = 0;
    loop {
        let chunk = store.snapshot_chunk(meta.index, meta.term, offset, bytes_max).expect("chunk");
        assert!(!chunk.data.is_empty() || chunk.done, "progress");
        crc.update(&chunk.data);
        offset += chunk.data.len() as u64;
        if chunk.done {
            return (crc.finalize(), offset);
        }
    }
}

/// A 6.4 MB snapshot arrives in 100 chunks of 64 KiB. Each chunk is written through to the
/// staging file before the call returns (the file grows chunk by chunk), so the store holds no
/// buffer that grows with the snapshot; neither does this test, which generates each chunk and
/// checks the data back by crc, chunk by chunk.
#[test]
fn a_large_snapshot_is_written_through_and_read_back_in_chunks() {
    let temp = TempDir::new("disk-snapshot-large");
    let membership = membership();
    let mut store = DiskStorage::create(StdFs, &temp.0, ME, membership, DiskOptions::default()).expect("create");
    store.persist(hard(1, 1), &run(1, 3, 1)).expect("persist");
    let snapshot = meta(200, 4);
    let mut crc = crc32fast::Hasher::new();
    for number in 0..CHUNKS {
        let chunk = data(CHUNK_BYTES, number);
        crc.update(&chunk);
        let offset = number * CHUNK_BYTES as u64;
        store.write_snapshot_chunk(&snapshot, offset, &chunk).expect("chunk");
        let staged = offset + CHUNK_BYTES as u64;
        let tail = StdFs.read_at(&temp.0.join(STAGING_FILE), staged - 1, 2).expect("read the staging file");
        assert_eq!(tail.len(), 1, "the staging file holds exactly the {staged} bytes staged");
    }
    store.install_snapshot(&snapshot).expect("install");
    let expected = (crc.finalize(), CHUNKS * CHUNK_BYTES as u64);
    assert_eq!(crc_by_chunks(&store, &snapshot, CHUNK_BYTES as u64), expected);
    assert_eq!(store.last_index(), Ok(Index(200)), "the snapshot superseded the log");
    drop(store);

    let store = DiskStorage::open(StdFs, &temp.0, ME, DiskOptions::default()).expect("open checks the crc");
    assert_eq!(store.snapshot(), Ok(snapshot.clone()));
    assert_eq!(crc_by_chunks(&store, &snapshot, 1 << 20), expected);
    // A request for everything still comes in bounded pieces.
    let first = store.snapshot_chunk(snapshot.index, snapshot.term, 0, u64::MAX).expect("chunk");
    assert!(!first.done && first.data.len() <= 1 << 20, "one read is bounded: {} bytes", first.data.len());
    drop(store);

    let path = temp.0.join("snapshot-00000000000000000200-00000000000000000004.snap");
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[3_000_000] ^= 0x10;
    std::fs::write(&path, &bytes).expect("write");
    let expected = DiskError::Corrupt { path, offset: 0, corruption: Corruption::Checksum };
    assert_eq!(DiskStorage::open(StdFs, &temp.0, ME, DiskOptions::default()).err(), Some(expected));
}

/// A local snapshot saved while another is being received leaves the received one's staging
/// alone: its next chunk still continues, and it installs. (A follower may snapshot its own state
/// machine while a leader streams a newer snapshot to it.)
#[test]
fn saving_a_local_snapshot_keeps_a_received_snapshot_staged() {
    fn scenario<S: LogStore>(store: &mut S) -> Vec<u8> {
        store.persist(hard(1, 1), &run(1, 6, 1)).expect("persist");
        let received = data(40, 3);
        store.write_snapshot_chunk(&meta(8, 2), 0, &received[..20]).expect("first chunk");
        store.save_snapshot(&meta(4, 1), &data(10, 9)).expect("local snapshot");
        assert_eq!(store.snapshot().map(|m| m.index), Ok(Index(4)));
        store.write_snapshot_chunk(&meta(8, 2), 20, &received[20..]).expect("the received snapshot continues");
        store.install_snapshot(&meta(8, 2)).expect("install");
        assert_eq!(store.first_index(), Ok(Index(9)), "the shorter log is superseded");
        read_back(store, &meta(8, 2), 16)
    }
    let fs = SimFs::new(21);
    let mut disk = create(&fs);
    assert_eq!(scenario(&mut disk), data(40, 3));
    assert_eq!(scenario(&mut MemStorage::new(membership())), data(40, 3));
    let disk = reopen(&fs, disk);
    assert_eq!(read_back(&disk, &meta(8, 2), 7), data(40, 3));
    assert_eq!(snapshot_files(&fs), vec![snapshot_name(&meta(8, 2))], "no local or staging file is left");
}
