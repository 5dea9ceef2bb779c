//! Exhaustive crash points and I/O failures for [`DiskStorage`] over [`SimFs`].
//!
//! A scripted workload (rotation, hard-state changes, conflicting truncations, compactions of
//! every kind, appends after them, a local snapshot taken off the owner and saved) runs once to count its file-system operations. Then, for every
//! operation `k`, it runs again on a fresh disk that halts at operation `k` (power loss) or fails
//! it with an I/O error, and the recovered store is compared with a model of the workload.
//!
//! What recovery may show, given the calls acknowledged before the fault (state `A`, after the
//! last acknowledged call) and the one call in flight when it hit (state `B`, after that call):
//!
//! - term and vote are those of `A` or of `B` (the metadata file is replaced atomically);
//! - the snapshot boundary and the installed snapshot (its metadata and every byte of its data)
//!   are those of `A` or of `B`, both of the same one: never a partial snapshot; if the
//!   in-flight call moved the boundary (a compaction, a snapshot that supersedes the log), the
//!   log is exactly the log of the state whose boundary was recovered;
//! - otherwise (a persist in flight) the recovered log is a prefix of `A`'s log or of `B`'s log,
//!   at least as long as their common prefix `C`: nothing acknowledged is lost unless the
//!   in-flight call was itself replacing it, and nothing appears that was never written;
//! - the log starts right after the snapshot (docs/pitfalls.md #18), its indexes are consecutive, its
//!   terms never decrease (from the snapshot's on), and a durable entry's term is durable too (the
//!   hard-state term is at least every entry's term); the commit index was given at some point.
//!
//! The recovered store must then take a new write that survives another power loss.

use std::io::ErrorKind;
use std::path::PathBuf;

use raft_core::{Entry, HardState, Index, NodeId, SnapshotMeta, Storage, Term};
use raft_storage::testing::{SimFs, SimFsOptions};
use raft_storage::{DiskError, DiskOptions, DiskStorage, Identity, LogStore};

mod common;
use common::{entry, membership, run};

const ME: Identity = Identity { cluster_id: 3, node_id: NodeId(2) };
/// Three records per segment: the workload rotates often.
const OPTIONS: DiskOptions = DiskOptions { segment_bytes_max: 80, preallocate_bytes: 32 };

fn dir() -> PathBuf {
    PathBuf::from("/var/raft/node-2")
}

fn hard(term: u64, vote: Option<u64>, commit: u64) -> Option<HardState> {
    Some(HardState { term: Term(term), vote: vote.map(NodeId), commit: Index(commit) })
}

#[derive(Clone, Debug)]
enum Call {
    Persist(Option<HardState>, Vec<Entry>),
    Compact(u64, u64),
    /// A local snapshot at (index, term) with this data, written through an owned writer in
    /// pieces, then saved (`LogStore::begin_snapshot_owned`, `save_taken_snapshot`).
    Taken(u64, u64, &'static [u8]),
}

/// The metadata of the local snapshot at (`index`, `term`) holding `data`.
fn snapshot_meta(index: u64, term: u64, data: &[u8]) -> SnapshotMeta {
    SnapshotMeta {
        index: Index(index),
        term: Term(term),
        membership: membership(),
        data_crc32: raft_core::snapshot_crc32(data),
    }
}

/// The scripted workload. Terms never decrease along the log, and the hard-state term is raised
/// no later than the first entry or snapshot of a term.
fn workload() -> Vec<Call> {
    use Call::{Compact, Persist, Taken};
    vec![
        Persist(hard(1, Some(1), 0), run(1, 4, 1)),
        Persist(None, run(5, 12, 1)),
        Persist(hard(2, Some(2), 3), vec![]),
        // Commit index only: kept in memory.
        Persist(hard(2, Some(2), 6), vec![]),
        // A conflicting truncation in the middle of a segment, removing the two segments after it.
        Persist(hard(3, None, 6), run(5, 6, 3)),
        Persist(None, run(7, 12, 3)),
        // Keeps the suffix, removes the two segments it covers.
        Compact(7, 3),
        // A truncation at the first index of a segment, after a compaction.
        Persist(hard(4, Some(3), 6), run(10, 11, 4)),
        Persist(None, run(12, 16, 4)),
        Persist(hard(5, None, 8), vec![]),
        // A snapshot whose term conflicts with the log: every segment goes.
        Compact(12, 5),
        Persist(None, run(13, 18, 5)),
        // A local snapshot of an entry the log holds: the log stays.
        Taken(16, 5, b"the state machine at sixteen, taken off the owner"),
        // A snapshot beyond the log.
        Compact(20, 5),
        Persist(hard(6, Some(1), 20), run(21, 24, 6)),
        Compact(22, 6),
        // A truncation of the entry right after the boundary.
        Persist(hard(7, Some(2), 20), run(23, 26, 7)),
        Persist(None, run(27, 29, 7)),
    ]
}

/// What a store shows (or a model predicts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State {
    snapshot: (Index, Term),
    /// Entries from `snapshot.0 + 1` on.
    entries: Vec<Entry>,
    hard_state: HardState,
    /// The installed snapshot (the default if none) and its data.
    installed: (SnapshotMeta, Vec<u8>),
}

impl State {
    fn apply(&self, call: &Call) -> State {
        let mut next = self.clone();
        match call {
            Call::Persist(hard_state, entries) => {
                if let Some(first) = entries.first() {
                    next.entries.truncate((first.index.0 - next.snapshot.0.0 - 1) as usize);
                    next.entries.extend_from_slice(entries);
                }
                if let Some(hard_state) = hard_state {
                    next.hard_state = *hard_state;
                }
            }
            &Call::Compact(index, term) => {
                let (index, term) = (Index(index), Term(term));
                if index > next.snapshot.0 {
                    let held = next.entries.iter().any(|e| e.index == index && e.term == term);
                    next.entries.retain(|e| held && e.index > index);
                    next.snapshot = (index, term);
                }
            }
            &Call::Taken(index, term, data) => {
                let meta = snapshot_meta(index, term, data);
                if meta.index > next.installed.0.index {
                    // It supersedes the log unless the log holds its last entry.
                    let held = next.entries.iter().any(|e| e.index == meta.index && e.term == meta.term);
                    if meta.index > next.snapshot.0 && !held {
                        next.entries.clear();
                        next.snapshot = (meta.index, meta.term);
                    }
                    next.installed = (meta, data.to_vec());
                }
            }
        }
        next
    }

    /// The states before the workload and after each of its calls.
    fn history(calls: &[Call]) -> Vec<State> {
        let mut states = vec![State::default()];
        for call in calls {
            let next = states.last().expect("never empty").apply(call);
            states.push(next);
        }
        states
    }
}

/// Reads everything a store shows, checking that its answers agree with each other.
fn view(store: &DiskStorage<SimFs>) -> State {
    let snapshot = store.log_boundary();
    let first = store.first_index().expect("first index");
    let last = store.last_index().expect("last index");
    assert_eq!(first, snapshot.0.next(), "first index right after the snapshot");
    assert_eq!(store.term(snapshot.0), Ok(snapshot.1), "term of the snapshot index");
    let entries = store.entries(first, last.next(), u64::MAX).expect("every held entry");
    assert_eq!(entries.len() as u64, last.0 + 1 - first.0, "entries held");
    for (position, entry) in entries.iter().enumerate() {
        assert_eq!(entry.index, Index(first.0 + position as u64), "consecutive indexes, no gap after the snapshot");
        assert_eq!(store.term(entry.index), Ok(entry.term), "term of {}", entry.index);
    }
    let state = store.initial_state().expect("initial state");
    assert_eq!(state.membership, membership());
    let mut data = Vec::new();
    while state.snapshot.exists() {
        let chunk = store.snapshot_chunk(state.snapshot.index, state.snapshot.term, data.len() as u64, 16);
        let chunk = chunk.expect("the installed snapshot reads back");
        data.extend_from_slice(&chunk.data);
        if chunk.done {
            break;
        }
    }
    State { snapshot, entries, hard_state: state.hard_state, installed: (state.snapshot, data) }
}

fn term_and_vote(hard_state: &HardState) -> (Term, Option<NodeId>) {
    (hard_state.term, hard_state.vote)
}

fn is_prefix(short: &[Entry], long: &[Entry]) -> bool {
    short.len() <= long.len() && long[..short.len()] == *short
}

/// Whether `recovered` is allowed after acknowledged state `acked` with `in_flight` (if any)
/// interrupted; see the crate docs for the rule. `Err` says why not.
fn check_recovered(recovered: &State, acked: &State, in_flight: Option<&State>) -> Result<(), String> {
    let candidates: Vec<&State> = std::iter::once(acked).chain(in_flight).collect();
    if !candidates.iter().any(|c| term_and_vote(&c.hard_state) == term_and_vote(&recovered.hard_state)) {
        return Err(format!("term and vote {:?} were neither acknowledged nor in flight", recovered.hard_state));
    }
    let commit_max = candidates.iter().map(|c| c.hard_state.commit).max().unwrap_or_default();
    if recovered.hard_state.commit > commit_max {
        return Err(format!("commit index {} was never given", recovered.hard_state.commit));
    }
    let term_max = recovered.entries.iter().map(|e| e.term).chain([recovered.snapshot.1]).max().unwrap_or_default();
    if term_max > recovered.hard_state.term {
        return Err(format!("an entry or snapshot of term {term_max} outlived the hard-state term"));
    }
    let mut previous = recovered.snapshot.1;
    for entry in &recovered.entries {
        if entry.term < previous {
            return Err(format!("entry {} of term {} follows term {previous}", entry.index, entry.term));
        }
        previous = entry.term;
    }
    // META holds both: they come from the same state.
    let same_snapshots = |c: &&State| (c.snapshot, &c.installed) == (recovered.snapshot, &recovered.installed);
    let same_boundary: Vec<&State> = candidates.iter().copied().filter(same_snapshots).collect();
    match (same_boundary.as_slice(), in_flight) {
        ([], _) => Err(format!(
            "snapshot boundary {:?} with snapshot {:?} ({} bytes) was neither acknowledged nor in flight",
            recovered.snapshot,
            recovered.installed.0,
            recovered.installed.1.len()
        )),
        ([a, b], Some(_)) => {
            let common = a.entries.iter().zip(&b.entries).take_while(|(x, y)| x == y).count();
            let long_enough = recovered.entries.len() >= common;
            let prefix = is_prefix(&recovered.entries, &a.entries) || is_prefix(&recovered.entries, &b.entries);
            if long_enough && prefix {
                Ok(())
            } else {
                Err(format!("the log is no prefix of the acknowledged or in-flight log at least {common} long"))
            }
        }
        ([only], _) if only.entries == recovered.entries => Ok(()),
        ([only], _) => Err(format!("the log differs from the only candidate with that boundary: {only:?}")),
        _ => unreachable!("at most two candidates"),
    }
}

/// How a call failed.
#[derive(Debug)]
enum Failure {
    /// The store failed it, and stopped (fail-stop).
    Store(DiskError),
    /// An owned snapshot writer failed it (a write, or the sync of `finish`): the store goes on
    /// (its log is untouched), and the driver stops the node itself.
    Writer(DiskError),
}

impl Failure {
    fn error(&self) -> &DiskError {
        match self {
            Failure::Store(error) | Failure::Writer(error) => error,
        }
    }
}

/// Runs `call`.
fn apply(store: &mut DiskStorage<SimFs>, call: &Call) -> Result<(), Failure> {
    match call {
        Call::Persist(hard_state, entries) => store.persist(*hard_state, entries).map_err(Failure::Store),
        &Call::Compact(index, term) => store.compact(Index(index), Term(term)).map_err(Failure::Store),
        &Call::Taken(index, term, data) => {
            let mut writer = store.begin_snapshot_owned(&snapshot_meta(index, term, data)).map_err(Failure::Store)?;
            for piece in data.chunks(7) {
                writer.write(piece).map_err(Failure::Writer)?;
            }
            let taken = writer.finish(raft_core::snapshot_crc32(data)).map_err(Failure::Writer)?;
            store.save_taken_snapshot(taken).map_err(Failure::Store)
        }
    }
}

/// Runs `calls`, returning how many were acknowledged and the first failure. Every call after
/// a failure of the store must be refused with [`DiskError::Stopped`] (fail-stop); after a
/// failure of a snapshot writer, the calls stop there (the driver stops the node).
fn drive(store: &mut DiskStorage<SimFs>, calls: &[Call]) -> (usize, Option<Failure>) {
    let mut failure = None;
    let mut acked = 0;
    for (number, call) in calls.iter().enumerate() {
        match (apply(store, call), &failure) {
            (Ok(()), None) => acked += 1,
            (Err(Failure::Writer(error)), None) => return (acked, Some(Failure::Writer(error))),
            (Err(error), None) => failure = Some(error),
            (Err(Failure::Store(DiskError::Stopped)), Some(_)) => {}
            (result, Some(first)) => panic!("call {number} after the failure {first:?} answered {result:?}"),
        }
    }
    (acked, failure)
}

fn fresh(seed: u64, options: SimFsOptions) -> (SimFs, DiskStorage<SimFs>) {
    let fs = SimFs::with_options(seed, options);
    let store = DiskStorage::create(fs.clone(), dir(), ME, membership(), OPTIONS).expect("create");
    (fs, store)
}

/// The number of mutating file-system operations of the workload, after `create`.
fn workload_ops() -> u64 {
    let (fs, mut store) = fresh(0, SimFsOptions::default());
    let start = fs.op_count();
    let (acked, failure) = drive(&mut store, &workload());
    assert!(failure.is_none(), "the workload runs cleanly: {failure:?}");
    assert_eq!(acked, workload().len(), "the workload runs cleanly");
    let states = State::history(&workload());
    assert_eq!(view(&store), *states.last().expect("history"), "the model agrees with the store");
    fs.op_count() - start
}

#[test]
fn workload_exercises_every_path() {
    let (fs, mut store) = fresh(0, SimFsOptions::default());
    let mut segments_max = 0;
    for call in workload() {
        drive(&mut store, &[call]);
        segments_max = segments_max.max(store.segment_count());
    }
    assert!(segments_max >= 4, "the workload rotates segments: at most {segments_max}");
    let final_state = view(&store);
    assert_eq!(final_state.installed.0.index, Index(16), "the snapshot taken off the owner is saved");
    drop(store);
    fs.crash();
    let store = DiskStorage::open(fs.clone(), dir(), ME, OPTIONS).expect("open");
    assert_eq!(view(&store), final_state);
    assert!(workload_ops() > 100, "a long enough workload");
}

/// After recovery the store must take new writes, and they too must survive a power loss.
fn check_usable(fs: &SimFs, mut store: DiskStorage<SimFs>, recovered: &State) -> Result<(), String> {
    let term = recovered.hard_state.term.0 + 1;
    let next = store.last_index().expect("last").0 + 1;
    let mut expected = recovered.clone();
    expected.hard_state = HardState { term: Term(term), vote: None, commit: recovered.hard_state.commit };
    expected.entries.push(entry(next, term));
    store.persist(Some(expected.hard_state), &[entry(next, term)]).map_err(|e| format!("write after recovery: {e}"))?;
    drop(store);
    fs.crash();
    let store = DiskStorage::open(fs.clone(), dir(), ME, OPTIONS).map_err(|e| format!("second recovery: {e}"))?;
    let found = view(&store);
    if found != expected {
        return Err(format!("a write after recovery did not survive a power loss: {found:?}"));
    }
    Ok(())
}

/// Opens the store after a fault and checks the recovered state against the model. Returns
/// whether the recovered log lies strictly between the acknowledged and the in-flight one.
fn recover_and_check(fs: &SimFs, states: &[State], acked: usize) -> Result<bool, String> {
    let store =
        DiskStorage::open(fs.clone(), dir(), ME, OPTIONS).map_err(|error| format!("recovery failed: {error}"))?;
    let recovered = view(&store);
    check_recovered(&recovered, &states[acked], states.get(acked + 1))
        .map_err(|why| format!("{why}; recovered {recovered:?}"))?;
    let between = states[acked..].iter().take(2).all(|state| state.entries != recovered.entries);
    check_usable(fs, store, &recovered)?;
    Ok(between)
}

/// Panics with every collected failure, if any.
fn report(failures: &[String], total: u64) {
    assert!(failures.is_empty(), "{} of {total} fault points failed:\n{}", failures.len(), failures.join("\n"));
}

/// Returns how many crash points recovered a log strictly between two states.
fn crash_at_every_operation(seed: u64, options: SimFsOptions) -> usize {
    let calls = workload();
    let states = State::history(&calls);
    let total = workload_ops();
    let mut failures = Vec::new();
    let mut between = 0;
    for k in 0..total {
        let (fs, mut store) = fresh(seed * 1000 + k, options);
        fs.crash_after(k);
        let (acked, failure) = drive(&mut store, &calls);
        assert!(fs.is_halted(), "crash at {k}: the machine halted");
        let failure = failure.unwrap_or_else(|| panic!("crash at {k}: no call failed"));
        assert!(
            matches!(failure.error(), DiskError::Io { .. }),
            "crash at {k}: the failing call says why: {failure:?}"
        );
        drop(store);
        fs.crash();
        match recover_and_check(&fs, &states, acked) {
            Ok(partial) => between += usize::from(partial),
            Err(why) => {
                failures.push(format!("seed {seed}, crash at operation {k} in call {acked} {:?}: {why}", calls[acked]))
            }
        }
    }
    report(&failures, total);
    between
}

#[test]
fn crash_at_every_operation_with_torn_writes() {
    let between: usize = (0..3).map(|seed| crash_at_every_operation(seed, SimFsOptions::default())).sum();
    assert!(between > 0, "torn writes left some partial batches");
}

#[test]
fn crash_at_every_operation_without_torn_writes() {
    crash_at_every_operation(0, SimFsOptions { torn_crash_writes: false, torn_failed_appends: false });
}

/// The recovery rule itself: it must reject what a broken store could show.
#[test]
fn the_recovery_rule_rejects_lost_and_invented_entries() {
    let calls = workload();
    let states = State::history(&calls);
    // Call 4 truncates 5..=12 (term 1) and appends 5..=6 (term 3).
    let (acked, in_flight) = (&states[4], &states[5]);
    assert_eq!(check_recovered(acked, acked, Some(in_flight)), Ok(()));
    assert_eq!(check_recovered(in_flight, acked, Some(in_flight)), Ok(()));
    let mut cut = acked.clone();
    cut.entries.truncate(8);
    assert_eq!(check_recovered(&cut, acked, Some(in_flight)), Ok(()), "later segments removed first");
    cut.entries.truncate(4);
    assert_eq!(check_recovered(&cut, acked, Some(in_flight)), Ok(()), "the truncation done, nothing appended");
    cut.entries.truncate(3);
    assert!(check_recovered(&cut, acked, Some(in_flight)).is_err(), "an acknowledged, matching entry lost");
    assert!(check_recovered(&cut, acked, None).is_err(), "an acknowledged entry lost");
    let mut invented = in_flight.clone();
    invented.entries.push(entry(7, 3));
    assert!(check_recovered(&invented, acked, Some(in_flight)).is_err(), "an entry never written");
    let mut mixed = in_flight.clone();
    mixed.entries.push(entry(7, 1));
    assert!(check_recovered(&mixed, acked, Some(in_flight)).is_err(), "a mix of old and new suffixes");
    let mut vote = acked.clone();
    vote.hard_state.vote = Some(NodeId(3));
    assert!(check_recovered(&vote, acked, Some(in_flight)).is_err(), "a vote never cast");
    let mut ahead = acked.clone();
    ahead.hard_state.term = Term(0);
    assert!(check_recovered(&ahead, &ahead.clone(), None).is_err(), "an entry of a term not durable");
    // Call 6 compacts to 7: the boundary and the log go together.
    let (acked, in_flight) = (&states[6], &states[7]);
    let mut half = acked.clone();
    half.snapshot = in_flight.snapshot;
    assert!(check_recovered(&half, acked, Some(in_flight)).is_err(), "a new boundary over the old log");
    assert_eq!(check_recovered(in_flight, acked, Some(in_flight)), Ok(()));
    // Call 12 saves a snapshot at 16 taken off the owner: the old snapshot, or the new one whole.
    let (acked, in_flight) = (&states[12], &states[13]);
    assert_eq!(in_flight.installed.0.index, Index(16));
    assert_eq!(check_recovered(acked, acked, Some(in_flight)), Ok(()));
    assert_eq!(check_recovered(in_flight, acked, Some(in_flight)), Ok(()));
    let mut partial = in_flight.clone();
    partial.installed.1.truncate(10);
    assert!(check_recovered(&partial, acked, Some(in_flight)).is_err(), "a partial snapshot");
    assert!(check_recovered(in_flight, acked, None).is_err(), "a snapshot never saved");
}

/// Creating a store can be interrupted at any point: the directory then holds either no store
/// (`open` says so and `create` can run again) or a complete, empty one.
#[test]
fn crash_while_creating() {
    let probe = SimFs::new(0);
    DiskStorage::create(probe.clone(), dir(), ME, membership(), OPTIONS).expect("create");
    let total = probe.op_count();
    for k in 0..total {
        let fs = SimFs::new(k);
        fs.crash_after(k);
        assert!(DiskStorage::create(fs.clone(), dir(), ME, membership(), OPTIONS).is_err(), "crash at {k}");
        fs.crash();
        let store = match DiskStorage::open(fs.clone(), dir(), ME, OPTIONS) {
            Ok(store) => store,
            Err(DiskError::NotInitialized(_)) => {
                DiskStorage::create(fs.clone(), dir(), ME, membership(), OPTIONS).expect("create again")
            }
            Err(error) => panic!("crash at {k} of {total} while creating: {error}"),
        };
        assert_eq!(view(&store), State::default(), "crash at {k}");
        if let Err(why) = check_usable(&fs, store, &State::default()) {
            panic!("crash at {k} of {total} while creating: {why}");
        }
    }
}

/// How a fail-stopped node comes back.
#[derive(Clone, Copy, Debug)]
enum Restart {
    /// The process restarts; the machine (and its page cache) stays up.
    Process,
    /// Power loss, then reboot.
    PowerLoss,
}

/// For every operation of the workload: fail it with `kind`, check the typed error and
/// fail-stop, restart, and check the recovered state.
fn fail_every_operation(kind: ErrorKind, restart: Restart) {
    let calls = workload();
    let states = State::history(&calls);
    let total = workload_ops();
    let mut failures = Vec::new();
    for k in 0..total {
        let context = format!("{kind:?} at operation {k} of {total}");
        let (fs, mut store) = fresh(k, SimFsOptions::default());
        fs.fail_after(k, kind);
        let (acked, failure) = drive(&mut store, &calls);
        match failure.as_ref().map(Failure::error) {
            Some(DiskError::Io { source, .. }) => assert_eq!(source.kind(), kind, "{context}"),
            other => panic!("{context}: expected an I/O error, got {other:?}"),
        }
        if let Some(Failure::Writer(_)) = failure {
            // The writer's own file failed: the store and its log are untouched.
            assert_eq!(store.persist(None, &[]), Ok(()), "{context}: a writer's failure leaves the store usable");
        } else {
            // Fail-stop: every later write is refused, whatever it is.
            assert_eq!(store.persist(None, &[]), Err(DiskError::Stopped), "{context}: still stopped");
            assert_eq!(store.compact(Index(1), Term(1)), Err(DiskError::Stopped), "{context}: still stopped");
        }
        drop(store);
        if let Restart::PowerLoss = restart {
            fs.crash();
        }
        if let Err(why) = recover_and_check(&fs, &states, acked) {
            failures.push(format!("{context}, in call {acked} {:?}, {restart:?} restart: {why}", calls[acked]));
        }
    }
    report(&failures, total);
}

#[test]
fn storage_full_then_power_loss() {
    fail_every_operation(ErrorKind::StorageFull, Restart::PowerLoss);
}

#[test]
fn eio_then_power_loss() {
    fail_every_operation(ErrorKind::Other, Restart::PowerLoss);
}

#[test]
fn storage_full_then_process_restart() {
    fail_every_operation(ErrorKind::StorageFull, Restart::Process);
}

#[test]
fn eio_then_process_restart() {
    fail_every_operation(ErrorKind::Other, Restart::Process);
}

/// Whatever `open` reports is durable: a node acts on its recovered log and vote (it acknowledges
/// the entries, refuses other candidates) as soon as it restarts, so a power loss right after the
/// restart must not take them back (docs/pitfalls.md #28). Here the previous incarnation failed an
/// operation (or was killed before its fsync) and left unsynced changes in the page cache.
#[test]
fn state_reported_by_open_survives_power_loss() {
    let calls = workload();
    let total = workload_ops();
    let mut failures = Vec::new();
    for k in 0..total {
        let (fs, mut store) = fresh(k, SimFsOptions::default());
        fs.fail_after(k, ErrorKind::Other);
        let (acked, _) = drive(&mut store, &calls);
        drop(store);
        let Ok(store) = DiskStorage::open(fs.clone(), dir(), ME, OPTIONS) else {
            continue; // Covered by `eio_then_process_restart`.
        };
        let reported = view(&store);
        drop(store);
        fs.crash();
        let after = DiskStorage::open(fs.clone(), dir(), ME, OPTIONS).map(|store| view(&store));
        let same = match &after {
            Ok(after) => {
                term_and_vote(&after.hard_state) == term_and_vote(&reported.hard_state)
                    && (after.snapshot, &after.entries, &after.installed)
                        == (reported.snapshot, &reported.entries, &reported.installed)
            }
            Err(_) => false,
        };
        if !same {
            failures.push(format!(
                "EIO at operation {k} in call {acked}: open reported term/vote {:?}, snapshot {:?}, last index {}; \
                 after a power loss: {:?}",
                term_and_vote(&reported.hard_state),
                reported.snapshot,
                reported.snapshot.0.0 + reported.entries.len() as u64,
                after.map(|a| (term_and_vote(&a.hard_state), a.snapshot, a.snapshot.0.0 + a.entries.len() as u64)),
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} restarts reported state that was not durable:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
