//! Fuzzing harness (feature `fuzzing`): [`wal_recovery`] takes the fuzzer's bytes, checks
//! properties, and panics only on a bug in this crate. The cargo-fuzz target `wal_recovery` in
//! `fuzz/` calls it, and the crate's tests replay the stored corpus through it.

use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use raft_core::{Entry, EntryPayload, HardState, Index, Membership, NodeId, SnapshotMeta, Storage, Term};

use crate::testing::SimFs;
use crate::{DiskError, DiskOptions, DiskStorage, FileSystem, FsFile, Identity, LogStore};

const ME: Identity = Identity { cluster_id: 7, node_id: NodeId(1) };
const CALLS_MAX: usize = 24;
const DAMAGE_MAX: usize = 6;
/// Segment header and record prefix sizes of the format (see `disk.rs`).
const HEADER_BYTES: u64 = 24;
const RECORD_PREFIX_BYTES: u64 = 8;

#[derive(Arbitrary, Debug)]
struct WalInput {
    /// Segments rotate at `32 + segment_bytes` bytes: a few records each.
    segment_bytes: u8,
    calls: Vec<Call>,
    /// Power loss after this many file-system operations of the calls (then recovery).
    crash_after_ops: Option<u8>,
    damage: Vec<Damage>,
}

/// A valid call on the store, relative to its state (so that most inputs are meaningful).
#[derive(Arbitrary, Debug)]
enum Call {
    /// Appends `count` entries of the current term, replacing the log from `back` entries
    /// before its end.
    Append { back: u8, count: u8, payload_bytes: u8 },
    /// Raises the term by `term_step` and sets vote and commit.
    HardState { term_step: u8, vote: Option<u8>, commit: u8 },
    /// Compacts at `back` entries before the end (within the log), or past the end.
    Compact { back: u8, beyond: bool },
    /// Saves a local snapshot at `back` entries before the end, or past the end.
    Snapshot { back: u8, beyond: bool, data_bytes: u8 },
}

/// Damage done to the directory after a clean shutdown.
#[derive(Arbitrary, Debug)]
enum Damage {
    /// A torn tail: cuts the last segment at `at` (modulo its length).
    CutLastSegment {
        at: u16,
    },
    Truncate {
        file: u8,
        at: u16,
    },
    FlipBit {
        file: u8,
        at: u16,
        bit: u8,
    },
    Overwrite {
        file: u8,
        at: u16,
        bytes: Vec<u8>,
    },
    Remove {
        file: u8,
    },
    Create {
        name: Name,
        bytes: Vec<u8>,
    },
}

/// File names the store knows (and one it does not).
#[derive(Arbitrary, Debug)]
enum Name {
    Identity,
    Meta,
    MetaTemp,
    Segment(u8),
    Snapshot(u8, u8),
    Staging,
    Local,
    Other(u8),
}

/// What a store shows (or the model predicts), commit index aside (it is not made durable alone).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State {
    boundary: (Index, Term),
    /// Entries from `boundary.0 + 1` on.
    entries: Vec<Entry>,
    term: Term,
    vote: Option<NodeId>,
    snapshot: SnapshotMeta,
    snapshot_data: Vec<u8>,
}

/// Target 2: builds a store with arbitrary (valid) calls over the in-memory [`SimFs`], possibly
/// losing power in the middle, then damages its directory arbitrarily and reopens it.
///
/// - After a clean run, reopening shows exactly what was written. After a power loss, recovery
///   succeeds and shows the acknowledged state or the one in flight: term and vote of either,
///   a log that is a prefix of either's at least as long as their common prefix.
/// - A torn tail of the last segment (a cut anywhere) is repaired: every whole record before
///   the cut is recovered, nothing after it.
/// - Any other damage: `open` never panics and fails only with a typed [`DiskError`] naming a
///   file of the directory (never an I/O error: the file system is healthy); if it succeeds the
///   store is consistent (consecutive indexes from the boundary, terms never decreasing), takes
///   a new entry, and shows the same state when opened again.
pub fn wal_recovery(data: &[u8]) {
    let Ok(input) = WalInput::arbitrary_take_rest(Unstructured::new(data)) else { return };
    // FUZZ_DEBUG=1 prints the decoded input (when replaying a crash through the test build).
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        eprintln!("{input:#?}");
    }
    let options = DiskOptions { segment_bytes_max: 32 + u64::from(input.segment_bytes) };
    let fs = SimFs::new(u64::from(input.segment_bytes));
    let dir = PathBuf::from("/data");
    let membership = Membership::new([NodeId(1), NodeId(2), NodeId(3)]);
    let mut store = DiskStorage::create(fs.clone(), &dir, ME, membership, options).expect("a healthy disk");
    if let Some(ops) = input.crash_after_ops {
        fs.crash_after(u64::from(ops));
    }
    let (acked, in_flight) = drive(&mut store, &input.calls);
    drop(store);
    fs.crash();
    let store = DiskStorage::open(fs.clone(), &dir, ME, options).expect("recovery after a power loss succeeds");
    let recovered = view(&store);
    check_recovered(&recovered, &acked, in_flight.as_ref());
    drop(store);

    let damage = &input.damage[..input.damage.len().min(DAMAGE_MAX)];
    let torn_only = damage.iter().all(|d| matches!(d, Damage::CutLastSegment { .. }));
    let before_cut = last_segment(&fs, &dir).map(|path| {
        let content = fs.read(&path).expect("a healthy disk");
        (path, content)
    });
    for item in damage {
        do_damage(&fs, &dir, item);
    }
    let expected = torn_only.then(|| expected_after_cut(&fs, &recovered, before_cut));
    match DiskStorage::open(fs.clone(), &dir, ME, options) {
        Ok(store) => {
            let state = view(&store);
            if let Some(expected) = expected {
                assert_eq!(state, expected, "a torn tail must leave every whole record before it");
            }
            check_usable(&fs, &dir, options, store, &state);
        }
        Err(error) => {
            assert!(expected.is_none(), "a torn tail must be repaired, not refused: {error}");
            check_error(&fs, &dir, &error);
        }
    }
}

/// A call the power loss interrupted: the state it was heading for, and how many entries of the
/// log before it the call leaves alone (an append replacing the log from some index on may lose
/// the entries it replaces, even where it rewrites them unchanged).
struct InFlight {
    state: State,
    untouched: usize,
}

/// Runs the calls; returns the state after the last acknowledged call and, if a call failed
/// (the power went), the call in flight.
fn drive(store: &mut DiskStorage<SimFs>, calls: &[Call]) -> (State, Option<InFlight>) {
    let mut state = State::default();
    for call in calls.iter().take(CALLS_MAX) {
        let (next, result) = apply(store, &state, call);
        if let Err(error) = result {
            assert!(matches!(error, DiskError::Io { .. }), "a valid call refused: {error}");
            let untouched = match *call {
                Call::Append { back, .. } => state.entries.len() - usize::from(back) % (state.entries.len() + 1),
                _ => usize::MAX,
            };
            return (state, Some(InFlight { state: next, untouched }));
        }
        state = next;
    }
    (state, None)
}

/// Carries out `call` on the store and on the model: the state it heads for, and how it went.
fn apply(store: &mut DiskStorage<SimFs>, state: &State, call: &Call) -> (State, Result<(), DiskError>) {
    let mut next = state.clone();
    let last = Index(state.boundary.0.0 + state.entries.len() as u64);
    let held = |back: u8| Index(last.0 - u64::from(back) % (state.entries.len() as u64 + 1));
    let result = match *call {
        Call::Append { back, count, payload_bytes } => {
            let first = held(back).next();
            let entries: Vec<Entry> = (0..u64::from(count % 4) + 1)
                .map(|offset| {
                    let payload =
                        EntryPayload::Normal(Bytes::from(vec![payload_bytes; usize::from(payload_bytes % 24)]));
                    Entry { index: Index(first.0 + offset), term: state.term, payload }
                })
                .collect();
            next.entries.truncate((first.0 - state.boundary.0.0 - 1) as usize);
            next.entries.extend_from_slice(&entries);
            store.persist(None, &entries)
        }
        Call::HardState { term_step, vote, commit } => {
            next.term = Term(state.term.0 + u64::from(term_step % 3));
            next.vote = vote.map(|id| NodeId(u64::from(id % 4)));
            let hard_state = HardState { term: next.term, vote: next.vote, commit: Index(u64::from(commit)) };
            store.persist(Some(hard_state), &[])
        }
        Call::Compact { back, beyond } => {
            let (index, term) = target(state, held(back), back, beyond);
            if index > state.boundary.0 {
                supersede(&mut next, index, term);
            }
            store.compact(index, term)
        }
        Call::Snapshot { back, beyond, data_bytes } => {
            let (index, term) = target(state, held(back), back, beyond);
            let data = vec![data_bytes; usize::from(data_bytes % 48)];
            let membership = store.initial_state().expect("memory").membership;
            let meta = SnapshotMeta { index, term, membership, data_crc32: raft_core::snapshot_crc32(&data) };
            if index > state.snapshot.index && index > Index(0) {
                if index > state.boundary.0 && term_at(state, index) != Some(term) {
                    supersede(&mut next, index, term);
                }
                (next.snapshot, next.snapshot_data) = (meta.clone(), data.clone());
            }
            store.save_snapshot(&meta, &data)
        }
    };
    (next, result)
}

/// A compaction or snapshot point: an entry the log holds, or one past its end (current term).
fn target(state: &State, held: Index, back: u8, beyond: bool) -> (Index, Term) {
    if beyond {
        let last = state.boundary.0.0 + state.entries.len() as u64;
        (Index(last + 1 + u64::from(back % 4)), state.term)
    } else {
        (held, term_at(state, held).unwrap_or(state.boundary.1))
    }
}

fn term_at(state: &State, index: Index) -> Option<Term> {
    if index == state.boundary.0 {
        return Some(state.boundary.1);
    }
    state.entries.iter().find(|e| e.index == index).map(|e| e.term)
}

/// Moves the model's boundary to (`index`, `term`), keeping the log after it if it holds it.
fn supersede(state: &mut State, index: Index, term: Term) {
    let held = term_at(state, index) == Some(term);
    state.entries.retain(|e| held && e.index > index);
    state.boundary = (index, term);
}

/// Reads everything a store shows, checking that its answers agree with each other.
fn view(store: &DiskStorage<SimFs>) -> State {
    let boundary = store.log_boundary();
    let first = store.first_index().expect("memory");
    let last = store.last_index().expect("memory");
    assert_eq!(first, boundary.0.next(), "the log starts right after its boundary");
    assert_eq!(store.term(boundary.0), Ok(boundary.1), "the boundary's term");
    let entries = store.entries(first, last.next(), u64::MAX).expect("every held entry");
    assert_eq!(entries.len() as u64, last.0 + 1 - first.0, "entries held");
    let mut previous = boundary.1;
    for (position, entry) in entries.iter().enumerate() {
        assert_eq!(entry.index, Index(first.0 + position as u64), "consecutive indexes");
        assert!(entry.term >= previous, "entry {} of term {} after term {previous}", entry.index, entry.term);
        previous = entry.term;
    }
    let initial = store.initial_state().expect("memory");
    let snapshot = initial.snapshot;
    let mut snapshot_data = Vec::new();
    while snapshot.exists() {
        let offset = snapshot_data.len() as u64;
        let chunk = store.snapshot_chunk(snapshot.index, snapshot.term, offset, 16).expect("recovery checked it");
        snapshot_data.extend_from_slice(&chunk.data);
        if chunk.done {
            break;
        }
    }
    let (term, vote) = (initial.hard_state.term, initial.hard_state.vote);
    State { boundary, entries, term, vote, snapshot, snapshot_data }
}

fn is_prefix(short: &[Entry], long: &[Entry]) -> bool {
    short.len() <= long.len() && long[..short.len()] == *short
}

/// The recovery rule after a power loss (see `tests/crash_points.rs`, which checks it for every
/// operation of a fixed workload).
fn check_recovered(recovered: &State, acked: &State, in_flight: Option<&InFlight>) {
    let candidates: Vec<&State> = std::iter::once(acked).chain(in_flight.map(|f| &f.state)).collect();
    let untouched = in_flight.map_or(usize::MAX, |f| f.untouched);
    let hard = |s: &State| (s.term, s.vote);
    assert!(candidates.iter().any(|c| hard(c) == hard(recovered)), "term and vote never written: {recovered:?}");
    let snapshot = |s: &State| (s.snapshot.clone(), s.snapshot_data.clone());
    assert!(candidates.iter().any(|c| snapshot(c) == snapshot(recovered)), "snapshot never written");
    let same: Vec<&State> = candidates.iter().copied().filter(|c| c.boundary == recovered.boundary).collect();
    match same.as_slice() {
        [] => panic!("log boundary {:?} never written", recovered.boundary),
        [a, b] => {
            let common = a.entries.iter().zip(&b.entries).take_while(|(x, y)| x == y).count().min(untouched);
            let prefix = is_prefix(&recovered.entries, &a.entries) || is_prefix(&recovered.entries, &b.entries);
            let (a, b, r) = (&a.entries, &b.entries, &recovered.entries);
            assert!(prefix && r.len() >= common, "log neither acknowledged nor in flight: {a:?} {b:?} {r:?}");
        }
        [only] => assert_eq!(recovered.entries, only.entries, "the log of the only state with that boundary"),
        _ => unreachable!("at most two candidates"),
    }
}

fn files(fs: &SimFs, dir: &Path) -> Vec<String> {
    fs.list(dir).expect("the directory exists")
}

/// The file at position `choice` (modulo the number of files).
fn pick(fs: &SimFs, dir: &Path, choice: u8) -> Option<PathBuf> {
    let names = files(fs, dir);
    (!names.is_empty()).then(|| dir.join(&names[usize::from(choice) % names.len()]))
}

fn rewrite(fs: &SimFs, path: &Path, bytes: &[u8]) {
    let mut file = fs.create(path).expect("a healthy disk");
    file.append(bytes).expect("a healthy disk");
    file.sync().expect("a healthy disk");
}

fn last_segment(fs: &SimFs, dir: &Path) -> Option<PathBuf> {
    files(fs, dir).into_iter().filter(|name| name.ends_with(".wal")).max().map(|name| dir.join(name))
}

fn do_damage(fs: &SimFs, dir: &Path, damage: &Damage) {
    let cut = |path: &Path, at: u16| {
        let len = fs.read(path).expect("a healthy disk").len() as u64;
        let mut file = fs.open_append(path).expect("a healthy disk");
        file.truncate(u64::from(at) % (len + 1)).expect("a healthy disk");
        file.sync().expect("a healthy disk");
    };
    match damage {
        Damage::CutLastSegment { at } => last_segment(fs, dir).into_iter().for_each(|path| cut(&path, *at)),
        Damage::Truncate { file, at } => pick(fs, dir, *file).into_iter().for_each(|path| cut(&path, *at)),
        Damage::FlipBit { file, at, bit } => {
            if let Some(path) = pick(fs, dir, *file) {
                let len = fs.read(&path).expect("a healthy disk").len() as u64;
                if len > 0 {
                    fs.flip_bit(&path, u64::from(*at) % len, bit % 8).expect("the file exists");
                }
            }
        }
        Damage::Overwrite { file, at, bytes } => {
            if let Some(path) = pick(fs, dir, *file) {
                let mut content = fs.read(&path).expect("a healthy disk");
                let start = usize::from(*at) % (content.len() + 1);
                let end = (start + bytes.len()).min(content.len());
                content[start..end].copy_from_slice(&bytes[..end - start]);
                rewrite(fs, &path, &content);
            }
        }
        Damage::Remove { file } => {
            if let Some(path) = pick(fs, dir, *file) {
                fs.remove(&path).expect("the file exists");
            }
        }
        Damage::Create { name, bytes } => rewrite(fs, &dir.join(file_name(name)), bytes),
    }
}

fn file_name(name: &Name) -> String {
    match name {
        Name::Identity => "IDENTITY".to_string(),
        Name::Meta => "META".to_string(),
        Name::MetaTemp => "META.tmp".to_string(),
        Name::Segment(index) => format!("{:020}.wal", index),
        Name::Snapshot(index, term) => format!("snapshot-{:020}-{:020}.snap", index, term),
        Name::Staging => "snapshot.staging".to_string(),
        Name::Local => "snapshot.local".to_string(),
        Name::Other(n) => format!("other-{n}"),
    }
}

/// What recovery must show after cutting the last segment (whose content before the damage was
/// `before_cut`): every whole record before the cut, so the entries below the first record cut.
fn expected_after_cut(fs: &SimFs, before: &State, before_cut: Option<(PathBuf, Vec<u8>)>) -> State {
    let mut expected = before.clone();
    let Some((path, content)) = before_cut else { return expected };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let first: u64 = name.trim_end_matches(".wal").parse().expect("a segment name");
    let cut = fs.read(&path).expect("a healthy disk").len() as u64;
    let mut kept_until = first;
    let mut end = HEADER_BYTES;
    // Walks the records of the intact content (some may lie below the log boundary).
    while cut >= HEADER_BYTES && end + RECORD_PREFIX_BYTES <= content.len() as u64 {
        let at = end as usize;
        let record_bytes = u32::from_le_bytes(content[at..at + 4].try_into().expect("four bytes"));
        end += RECORD_PREFIX_BYTES + u64::from(record_bytes);
        if end > cut {
            break;
        }
        kept_until += 1;
    }
    expected.entries.retain(|e| e.index.0 < kept_until);
    expected
}

/// A recovered store takes a new entry, and opening it again shows the same state plus it.
fn check_usable(fs: &SimFs, dir: &Path, options: DiskOptions, mut store: DiskStorage<SimFs>, state: &State) {
    let index = Index(state.boundary.0.0 + state.entries.len() as u64 + 1);
    let term = state.entries.last().map_or(state.boundary.1, |e| e.term).max(state.term);
    let entry = Entry { index, term, payload: EntryPayload::Noop };
    let hard_state = HardState { term, vote: state.vote.filter(|_| term == state.term), commit: Index(0) };
    store.persist(Some(hard_state), std::slice::from_ref(&entry)).expect("a recovered store takes writes");
    let mut expected = view(&store);
    drop(store);
    fs.crash();
    let store = DiskStorage::open(fs.clone(), dir, ME, options).expect("a store that opened opens again");
    assert_eq!(view(&store), expected, "a reopened store shows what was written");
    expected.entries.pop();
    assert_eq!(expected.entries, state.entries, "the recovered log is kept");
}

/// An error names a file of the directory, at an offset within it; the disk itself is healthy.
fn check_error(fs: &SimFs, dir: &Path, error: &DiskError) {
    match error {
        DiskError::Corrupt { path, offset, .. } => {
            assert!(path.starts_with(dir), "an error names a file of the directory: {error}");
            let len = fs.read(path).map_or(0, |content| content.len() as u64);
            assert!(*offset <= len, "an error's offset lies within its file: {error}");
        }
        DiskError::MissingIdentity(_) | DiskError::NotInitialized(_) | DiskError::IdentityMismatch { .. } => {}
        // A file the store needs (META) is gone: reported as the failed read of that file.
        DiskError::Io { path, source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            assert!(path.starts_with(dir), "an error names a file of the directory: {error}");
            assert!(fs.read(path).is_err(), "a file reported missing exists: {error}");
        }
        other => panic!("recovery from a healthy disk fails only over its contents: {other}"),
    }
}
