//! Power loss at every file-system operation of a multi-group workload on a [`SharedWal`] over
//! [`SimFs`] (with and without torn writes), and an I/O error at every operation.
//!
//! The workload runs once to count its operations; then, for every operation `k`, it runs again
//! on a fresh disk that halts (or fails) at operation `k`, and the recovered WAL is compared,
//! group by group, with a model ([`MemStorage`] per group) of the calls acknowledged before the
//! fault (`A`) and of the call in flight (`B`):
//!
//! - a group exists iff it does in `A` or in `B`; term, vote, membership and snapshot are those
//!   of `A` or `B`;
//! - the log boundary is `A`'s or `B`'s; if only one of them has it, the log is exactly that
//!   one's; otherwise (a write in flight) the log is a prefix of `A`'s or of `B`'s, at least as
//!   long as their common prefix: nothing acknowledged is lost unless the call in flight was
//!   replacing it, and nothing appears that was never written.
//!
//! Every recovered group must then take a new write that survives another power loss.

use std::collections::BTreeMap;
use std::path::PathBuf;

use raft_core::{
    Entry, GroupId, HardState, Index, Membership, NodeId, Output, ReceivedChunk, SnapshotMeta, Storage, Term,
};
use raft_storage::testing::{SimFs, SimFsOptions};
use raft_storage::{DiskError, GroupStore, Identity, LogStore, MemStorage, SharedWal, WalOptions};

mod common;
use common::{entry, membership, run};

const ME: Identity = Identity { cluster_id: 4, node_id: NodeId(2) };
/// A few records per segment: the workload rotates and reclaims often.
const OPTIONS: WalOptions = WalOptions { segment_bytes_max: 200, cache_bytes_max: 256, preallocate_bytes: 64 };

fn dir() -> PathBuf {
    PathBuf::from("/var/raft/wal")
}

fn hard(term: u64, vote: Option<u64>) -> Option<HardState> {
    Some(HardState { term: Term(term), vote: vote.map(NodeId), commit: Index(0) })
}

#[derive(Clone, Debug)]
enum Call {
    Create(u64, Membership),
    Remove(u64),
    /// One `write_batch` of (group, hard state, entries) outputs.
    Batch(Vec<(u64, Option<HardState>, Vec<Entry>)>),
    Persist(u64, Option<HardState>, Vec<Entry>),
    Compact(u64, u64, u64),
    /// A local snapshot at (index, term) with this data.
    Save(u64, u64, u64, &'static [u8]),
    /// The same, written through an owned writer in pieces, then saved
    /// (`LogStore::begin_snapshot_owned`, `save_taken_snapshot`).
    Taken(u64, u64, u64, &'static [u8]),
    /// A received snapshot in two chunks, installed, in one output.
    Install(u64, u64, u64, &'static [u8]),
}

fn workload() -> Vec<Call> {
    use Call::*;
    vec![
        Create(1, membership()),
        Create(2, membership()),
        Batch(vec![(1, hard(1, Some(1)), run(1, 4, 1)), (2, hard(1, Some(2)), run(1, 3, 1))]),
        // A node joining group 3 as a learner.
        Create(3, Membership::default()),
        Persist(3, hard(2, None), run(1, 2, 2)),
        // A conflicting suffix in group 2, while the others append.
        Batch(vec![(1, None, run(5, 9, 1)), (2, hard(2, Some(3)), run(3, 6, 2)), (3, None, run(3, 5, 2))]),
        Compact(1, 6, 1),
        Save(2, 5, 2, b"two at five"),
        Persist(1, hard(3, None), run(8, 12, 3)),
        // A snapshot that supersedes group 3's log.
        Install(3, 8, 3, b"three at eight"),
        Remove(2),
        Batch(vec![(1, None, run(13, 16, 3)), (3, hard(3, Some(1)), run(9, 12, 3))]),
        Taken(1, 15, 3, b"one at fifteen, taken off the owner"),
        Compact(1, 14, 3),
        Compact(3, 12, 3),
        Create(2, membership()),
        Persist(2, hard(1, None), run(1, 3, 1)),
        Batch(vec![(1, None, run(17, 20, 3)), (2, None, run(4, 6, 1)), (3, None, run(13, 14, 3))]),
        Compact(1, 20, 3),
        Compact(2, 6, 1),
        Compact(3, 14, 3),
        Persist(1, None, run(21, 22, 3)),
        // Group 3 keeps one live entry and goes idle while group 1 writes and compacts: the
        // reclamations copy group 3's entry forward (crashes during the copy are tested too).
        Persist(3, None, run(15, 15, 3)),
        Persist(1, None, run(23, 26, 3)),
        Compact(1, 26, 3),
        Persist(1, None, run(27, 30, 3)),
        Compact(1, 30, 3),
        Persist(1, None, run(31, 32, 3)),
    ]
}

fn snapshot(index: u64, term: u64, data: &[u8]) -> SnapshotMeta {
    SnapshotMeta {
        index: Index(index),
        term: Term(term),
        membership: membership(),
        data_crc32: raft_core::snapshot_crc32(data),
    }
}

/// The output of an install: the data in two chunks, then the install.
fn install_output(meta: &SnapshotMeta, data: &'static [u8]) -> Output {
    let half = data.len() / 2;
    let chunk = |offset: usize, end: usize| ReceivedChunk {
        meta: meta.clone(),
        offset: offset as u64,
        data: bytes::Bytes::from_static(&data[offset..end]),
    };
    Output {
        snapshot_chunks: vec![chunk(0, half), chunk(half, data.len())],
        install_snapshot: Some(meta.clone()),
        ..Output::default()
    }
}

type Model = BTreeMap<u64, MemStorage>;

fn group(model: &mut Model, id: u64) -> &mut MemStorage {
    model.get_mut(&id).expect("the group exists")
}

fn model_apply(model: &Model, call: &Call) -> Model {
    let mut next = model.clone();
    match call {
        Call::Create(id, membership) => drop(next.insert(*id, MemStorage::new(membership.clone()))),
        Call::Remove(id) => drop(next.remove(id)),
        Call::Batch(outputs) => {
            for (id, hard_state, entries) in outputs {
                group(&mut next, *id).persist(*hard_state, entries).expect("model");
            }
        }
        Call::Persist(id, hard_state, entries) => group(&mut next, *id).persist(*hard_state, entries).expect("model"),
        &Call::Compact(id, index, term) => group(&mut next, id).compact(Index(index), Term(term)).expect("model"),
        &Call::Save(id, index, term, data) | &Call::Taken(id, index, term, data) => {
            group(&mut next, id).save_snapshot(&snapshot(index, term, data), data).expect("model");
        }
        &Call::Install(id, index, term, data) => {
            group(&mut next, id)
                .write_output_owned(&mut install_output(&snapshot(index, term, data), data))
                .expect("model");
        }
    }
    next
}

fn history(calls: &[Call]) -> Vec<Model> {
    let mut states = vec![Model::new()];
    for call in calls {
        let next = model_apply(states.last().expect("never empty"), call);
        states.push(next);
    }
    states
}

/// The WAL and the handles of its groups.
struct Node {
    wal: SharedWal<SimFs>,
    stores: BTreeMap<u64, GroupStore<SimFs>>,
}

impl Node {
    fn store(&mut self, id: u64) -> &mut GroupStore<SimFs> {
        self.stores.get_mut(&id).expect("the group exists")
    }

    fn apply(&mut self, call: &Call) -> Result<(), DiskError> {
        match call {
            Call::Create(id, membership) => {
                let store = self.wal.create_group(GroupId(*id), membership.clone())?;
                self.stores.insert(*id, store);
                Ok(())
            }
            Call::Remove(id) => {
                self.stores.remove(id);
                self.wal.remove_group(GroupId(*id))
            }
            Call::Batch(outputs) => {
                // The workload lists a batch's groups in order.
                let ids: Vec<u64> = outputs.iter().map(|(id, ..)| *id).collect();
                let mut outputs: Vec<Output> = outputs
                    .iter()
                    .map(|(_, hard_state, entries)| Output {
                        hard_state: *hard_state,
                        entries: entries.clone(),
                        ..Output::default()
                    })
                    .collect();
                let stores = self.stores.iter_mut().filter(|(id, _)| ids.contains(id)).map(|(_, store)| store);
                let mut batch: Vec<(&mut GroupStore<SimFs>, &mut Output)> = stores.zip(outputs.iter_mut()).collect();
                assert_eq!(batch.len(), ids.len(), "every group of the batch exists");
                self.wal.write_batch(&mut batch)
            }
            Call::Persist(id, hard_state, entries) => self.store(*id).persist(*hard_state, entries),
            &Call::Compact(id, index, term) => self.store(id).compact(Index(index), Term(term)),
            &Call::Save(id, index, term, data) => self.store(id).save_snapshot(&snapshot(index, term, data), data),
            &Call::Taken(id, index, term, data) => {
                let store = self.store(id);
                let mut writer = store.begin_snapshot_owned(&snapshot(index, term, data))?;
                for piece in data.chunks(7) {
                    writer.write(piece)?;
                }
                let taken = writer.finish(raft_core::snapshot_crc32(data))?;
                store.save_taken_snapshot(taken)
            }
            &Call::Install(id, index, term, data) => {
                self.store(id).write_output_owned(&mut install_output(&snapshot(index, term, data), data))
            }
        }
    }
}

/// What a group shows (or a model predicts), commit index aside.
#[derive(Clone, Debug, PartialEq, Eq)]
struct View {
    boundary: (Index, Term),
    entries: Vec<Entry>,
    term_vote: (Term, Option<NodeId>),
    membership: Membership,
    snapshot: SnapshotMeta,
    snapshot_data: Vec<u8>,
}

fn view(store: &impl Storage) -> View {
    let first = store.first_index().expect("first");
    let last = store.last_index().expect("last");
    let boundary = (first.prev(), store.term(first.prev()).expect("boundary term"));
    let entries = store.entries(first, last.next(), u64::MAX).expect("entries");
    assert_eq!(entries.len() as u64, last.0 + 1 - first.0, "every entry is held");
    let state = store.initial_state().expect("state");
    let mut snapshot_data = Vec::new();
    while state.snapshot.exists() {
        let chunk = store
            .snapshot_chunk(state.snapshot.index, state.snapshot.term, snapshot_data.len() as u64, 5)
            .expect("snapshot");
        snapshot_data.extend_from_slice(&chunk.data);
        if chunk.done {
            break;
        }
    }
    View {
        boundary,
        entries,
        term_vote: (state.hard_state.term, state.hard_state.vote),
        membership: state.membership,
        snapshot: state.snapshot,
        snapshot_data,
    }
}

fn is_prefix(short: &[Entry], long: &[Entry]) -> bool {
    short.len() <= long.len() && long[..short.len()] == *short
}

/// The rule of the module docs for one group.
fn check_group(recovered: Option<&View>, candidates: &[Option<View>]) -> Result<(), String> {
    let Some(recovered) = recovered else {
        return if candidates.iter().any(Option::is_none) { Ok(()) } else { Err("the group was lost".into()) };
    };
    let present: Vec<&View> = candidates.iter().flatten().collect();
    if present.is_empty() {
        return Err("a group that never existed".into());
    }
    let any = |same: &dyn Fn(&View) -> bool| present.iter().any(|c| same(c));
    if !any(&|c| c.term_vote == recovered.term_vote) {
        return Err(format!("term and vote {:?} never written", recovered.term_vote));
    }
    if !any(&|c| c.membership == recovered.membership) {
        return Err("membership never written".into());
    }
    if !any(&|c| (&c.snapshot, &c.snapshot_data) == (&recovered.snapshot, &recovered.snapshot_data)) {
        return Err(format!("snapshot {:?} never written", recovered.snapshot));
    }
    let same: Vec<&&View> = present.iter().filter(|c| c.boundary == recovered.boundary).collect();
    match same.as_slice() {
        [] => Err(format!("log boundary {:?} never written", recovered.boundary)),
        [only] if only.entries == recovered.entries => Ok(()),
        [only] => Err(format!("the log differs from the only candidate with its boundary: {:?}", only.entries)),
        [a, b] => {
            let common = a.entries.iter().zip(&b.entries).take_while(|(x, y)| x == y).count();
            let prefix = is_prefix(&recovered.entries, &a.entries) || is_prefix(&recovered.entries, &b.entries);
            if prefix && recovered.entries.len() >= common {
                Ok(())
            } else {
                Err(format!("log neither acknowledged nor in flight (at least {common} long)"))
            }
        }
        _ => unreachable!("at most two candidates"),
    }
}

fn fresh(seed: u64, options: SimFsOptions) -> (SimFs, Node) {
    let fs = SimFs::with_options(seed, options);
    let wal = SharedWal::create(fs.clone(), dir(), ME, OPTIONS).expect("create");
    (fs, Node { wal, stores: BTreeMap::new() })
}

/// Runs `calls`; returns how many were acknowledged and the first error. Every call after a
/// failure must answer [`DiskError::Stopped`] (fail-stop).
fn drive(node: &mut Node, calls: &[Call]) -> (usize, Option<DiskError>) {
    let mut failure = None;
    let mut acked = 0;
    for (number, call) in calls.iter().enumerate() {
        if failure.is_some() && !has_handles(node, call) {
            continue; // A creation failed: there is no handle to call with.
        }
        let result = node.apply(call);
        match (result, &failure) {
            (Ok(()), None) => acked += 1,
            (Err(error), None) => failure = Some(error),
            (Err(DiskError::Stopped), Some(_)) => {}
            (result, Some(first)) => panic!("call {number} after the failure {first:?} answered {result:?}"),
        }
    }
    (acked, failure)
}

/// Whether the node holds a handle on every group `call` writes to.
fn has_handles(node: &Node, call: &Call) -> bool {
    match call {
        Call::Create(..) => true,
        Call::Batch(outputs) => outputs.iter().all(|(id, ..)| node.stores.contains_key(id)),
        Call::Remove(id) | Call::Persist(id, ..) => node.stores.contains_key(id),
        &Call::Compact(id, ..) | &Call::Save(id, ..) | &Call::Taken(id, ..) | &Call::Install(id, ..) => {
            node.stores.contains_key(&id)
        }
    }
}

/// The operations of the whole workload, after `create`.
fn workload_ops() -> u64 {
    let (fs, mut node) = fresh(0, SimFsOptions::default());
    let start = fs.op_count();
    assert_eq!(drive(&mut node, &workload()), (workload().len(), None), "the workload runs cleanly");
    let states = history(&workload());
    let last = states.last().expect("history");
    for (id, model) in last {
        assert_eq!(
            view(&node.wal.group(GroupId(*id)).expect("group")),
            view(model),
            "group {id} agrees with the model"
        );
    }
    fs.op_count() - start
}

/// Opens the WAL after a fault, checks every group, then that new writes survive a power loss.
fn recover_and_check(fs: &SimFs, states: &[Model], acked: usize) -> Result<(), String> {
    let wal = SharedWal::open(fs.clone(), dir(), ME, OPTIONS).map_err(|error| format!("recovery failed: {error}"))?;
    let candidates: Vec<&Model> = states[acked..].iter().take(2).collect();
    let mut ids: Vec<u64> = candidates.iter().flat_map(|m| m.keys().copied()).collect();
    ids.extend(wal.groups().iter().map(|g| g.0));
    ids.sort_unstable();
    ids.dedup();
    let mut expected = BTreeMap::new();
    for id in ids {
        let recovered = wal.group(GroupId(id)).ok().map(|store| view(&store));
        let options: Vec<Option<View>> = candidates.iter().map(|m| m.get(&id).map(view)).collect();
        check_group(recovered.as_ref(), &options)
            .map_err(|why| format!("group {id}: {why}; recovered {recovered:?}"))?;
        if let Some(recovered) = recovered {
            expected.insert(id, recovered);
        }
    }
    // New writes: one entry per group, in one batch.
    let mut stores: Vec<(u64, GroupStore<SimFs>, Output)> = Vec::new();
    for (id, view) in &mut expected {
        let term = view.term_vote.0.max(view.entries.last().map_or(view.boundary.1, |e| e.term));
        let next = entry(view.boundary.0.0 + view.entries.len() as u64 + 1, term.0);
        view.entries.push(next.clone());
        let store = wal.group(GroupId(*id)).map_err(|e| e.to_string())?;
        stores.push((*id, store, Output { entries: vec![next], ..Output::default() }));
    }
    let mut batch: Vec<(&mut GroupStore<SimFs>, &mut Output)> = stores.iter_mut().map(|(_, s, o)| (s, o)).collect();
    wal.write_batch(&mut batch).map_err(|error| format!("write after recovery: {error}"))?;
    drop(batch);
    drop(stores);
    drop(wal);
    fs.crash();
    let wal = SharedWal::open(fs.clone(), dir(), ME, OPTIONS).map_err(|error| format!("second recovery: {error}"))?;
    for (id, expected) in &expected {
        let found = view(&wal.group(GroupId(*id)).map_err(|e| e.to_string())?);
        if found != *expected {
            return Err(format!("group {id}: a write after recovery did not survive a power loss: {found:?}"));
        }
    }
    Ok(())
}

fn fault_at_every_operation(seed: u64, options: SimFsOptions, crash: bool) {
    let calls = workload();
    let states = history(&calls);
    let total = workload_ops();
    assert!(total > 100, "a long enough workload: {total} operations");
    let mut failures = Vec::new();
    for k in 0..total {
        let (fs, mut node) = fresh(seed * 1000 + k, options);
        if crash {
            fs.crash_after(k);
        } else {
            fs.fail_after(k, std::io::ErrorKind::Other);
        }
        let (acked, failure) = drive(&mut node, &calls);
        let failure = failure.unwrap_or_else(|| panic!("fault at {k}: no call failed"));
        assert!(matches!(failure, DiskError::Io { .. }), "fault at {k}: the failing call says why: {failure:?}");
        drop(node);
        fs.crash();
        if let Err(why) = recover_and_check(&fs, &states, acked) {
            failures.push(format!("seed {seed}, fault at operation {k} in call {acked} {:?}: {why}", calls[acked]));
        }
    }
    assert!(failures.is_empty(), "{} of {total} fault points failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn power_loss_at_every_operation_with_torn_writes() {
    for seed in 0..2 {
        fault_at_every_operation(seed, SimFsOptions::default(), true);
    }
}

#[test]
fn power_loss_at_every_operation_without_torn_writes() {
    fault_at_every_operation(0, SimFsOptions { torn_crash_writes: false, torn_failed_appends: false }, true);
}

#[test]
fn an_io_error_at_every_operation() {
    fault_at_every_operation(0, SimFsOptions::default(), false);
}

/// The workload reaches every path: rotation, reclamation of every old segment, removal.
#[test]
fn the_workload_rotates_and_reclaims() {
    let (fs, mut node) = fresh(0, SimFsOptions::default());
    let mut segments_max = 0;
    for call in workload() {
        node.apply(&call).expect("a clean run");
        segments_max = segments_max.max(node.wal.segment_count());
    }
    assert!(segments_max >= 5, "the workload rotates: at most {segments_max} segments");
    // Group 3's live entry 15 was written long ago: it lies in the newest segments only because
    // reclamations copied it forward.
    assert!(node.wal.segment_count() <= 2, "old segments are gone, group 3's live entry copied forward");
    drop(node);
    fs.crash();
    let wal = SharedWal::open(fs.clone(), dir(), ME, OPTIONS).expect("open");
    assert_eq!(wal.groups(), [GroupId(1), GroupId(2), GroupId(3)]);
    let three = wal.group(GroupId(3)).expect("group 3");
    assert_eq!(three.entries(Index(15), Index(16), u64::MAX), Ok(run(15, 15, 3)), "the copy reads back");
}
