//! Fuzzing harnesses (feature `fuzzing`): [`wal_recovery`] (for `DiskStorage`) and
//! [`shared_wal_recovery`] (for `SharedWal`) take the fuzzer's bytes, check properties, and
//! panic only on a bug in this crate. The cargo-fuzz targets of the same names in `fuzz/` call
//! them, and the crate's tests replay the stored corpora through them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use raft_core::{
    Entry, EntryPayload, GroupId, HardState, Index, Membership, NodeId, Output, SnapshotMeta, Storage, Term,
};

use crate::testing::SimFs;
use crate::{
    DiskError, DiskOptions, DiskStorage, FileSystem, FsFile, GroupStore, Identity, LogStore, SharedWal, WalOptions,
};

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
    damage: Vec<Damage<Name>>,
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

/// Damage done to the directory after a clean shutdown; `N` names the files one may create.
#[derive(Arbitrary, Debug)]
enum Damage<N> {
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
        name: N,
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
    let options = DiskOptions {
        segment_bytes_max: 32 + u64::from(input.segment_bytes),
        // No fill, a fill of a record or two, or the whole segment, chosen by the same byte.
        preallocate_bytes: [0, 24, 64, 1 << 20][usize::from(input.segment_bytes) % 4],
    };
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
    let before_cut = last_segment(&fs, &dir, ".wal").map(|path| {
        let content = fs.read(&path).expect("a healthy disk");
        (path, content)
    });
    for item in damage {
        do_damage(&fs, &dir, item, ".wal", file_name);
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
fn apply<S: LogStore<Error = DiskError>>(store: &mut S, state: &State, call: &Call) -> (State, Result<(), DiskError>) {
    let mut next = state.clone();
    let result = match *call {
        Call::Append { .. } => {
            let entries;
            (next, entries) = append_entries(state, call);
            store.persist(None, &entries)
        }
        Call::HardState { term_step, vote, commit } => {
            next.term = Term(state.term.0 + u64::from(term_step % 3));
            next.vote = vote.map(|id| NodeId(u64::from(id % 4)));
            let hard_state = HardState { term: next.term, vote: next.vote, commit: Index(u64::from(commit)) };
            store.persist(Some(hard_state), &[])
        }
        Call::Compact { back, beyond } => {
            let (index, term) = target(state, held(state, back), back, beyond);
            if index > state.boundary.0 {
                supersede(&mut next, index, term);
            }
            store.compact(index, term)
        }
        Call::Snapshot { back, beyond, data_bytes } => {
            let (meta, data);
            (next, meta, data) = snapshot_call(store, state, back, beyond, data_bytes);
            store.save_snapshot(&meta, &data)
        }
    };
    (next, result)
}

/// The entry `back` entries before the end of the log (at most back to its boundary).
fn held(state: &State, back: u8) -> Index {
    let last = Index(state.boundary.0.0 + state.entries.len() as u64);
    Index(last.0 - u64::from(back) % (state.entries.len() as u64 + 1))
}

/// The entries a [`Call::Append`] writes (in the current term), and the state after them.
fn append_entries(state: &State, call: &Call) -> (State, Vec<Entry>) {
    let Call::Append { back, count, payload_bytes } = *call else { return (state.clone(), Vec::new()) };
    let first = held(state, back).next();
    let entries: Vec<Entry> = (0..u64::from(count % 4) + 1)
        .map(|offset| {
            let payload = EntryPayload::Normal(Bytes::from(vec![payload_bytes; usize::from(payload_bytes % 24)]));
            Entry { index: Index(first.0 + offset), term: state.term, payload }
        })
        .collect();
    let mut next = state.clone();
    next.entries.truncate((first.0 - state.boundary.0.0 - 1) as usize);
    next.entries.extend_from_slice(&entries);
    (next, entries)
}

/// The snapshot a [`Call::Snapshot`] stores (its metadata and data), and the state after it.
fn snapshot_call(
    store: &impl Storage,
    state: &State,
    back: u8,
    beyond: bool,
    data_bytes: u8,
) -> (State, SnapshotMeta, Vec<u8>) {
    let mut next = state.clone();
    let (index, term) = target(state, held(state, back), back, beyond);
    let data = vec![data_bytes; usize::from(data_bytes % 48)];
    let membership = store.initial_state().expect("memory").membership;
    let meta = SnapshotMeta { index, term, membership, data_crc32: raft_core::snapshot_crc32(&data) };
    if index > state.snapshot.index && index > Index(0) {
        if index > state.boundary.0 && term_at(state, index) != Some(term) {
            supersede(&mut next, index, term);
        }
        (next.snapshot, next.snapshot_data) = (meta.clone(), data.clone());
    }
    (next, meta, data)
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
fn view(store: &impl Storage) -> State {
    let first = store.first_index().expect("memory");
    let last = store.last_index().expect("memory");
    let boundary = (first.prev(), store.term(first.prev()).expect("the boundary's term"));
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

/// The last segment of a store whose segment file names end in `suffix`.
fn last_segment(fs: &SimFs, dir: &Path, suffix: &str) -> Option<PathBuf> {
    files(fs, dir).into_iter().filter(|name| name.ends_with(suffix)).max().map(|name| dir.join(name))
}

/// Damages the directory of a store whose segment file names end in `suffix` and whose file
/// names `name` spells.
fn do_damage<N>(fs: &SimFs, dir: &Path, damage: &Damage<N>, suffix: &str, name: impl Fn(&N) -> String) {
    let cut = |path: &Path, at: u16| {
        let len = fs.read(path).expect("a healthy disk").len() as u64;
        let mut file = fs.open_append(path).expect("a healthy disk");
        file.truncate(u64::from(at) % (len + 1)).expect("a healthy disk");
        file.sync().expect("a healthy disk");
    };
    match damage {
        Damage::CutLastSegment { at } => last_segment(fs, dir, suffix).into_iter().for_each(|path| cut(&path, *at)),
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
        Damage::Create { name: which, bytes } => rewrite(fs, &dir.join(name(which)), bytes),
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

/// How many groups the shared WAL harness writes to.
const WAL_GROUPS: u8 = 3;

#[derive(Arbitrary, Debug)]
struct SharedWalInput {
    /// Segments rotate at `48 + segment_bytes` bytes: a few records each.
    segment_bytes: u8,
    /// The entry cache holds `cache_bytes` bytes: most reads go to the segments.
    cache_bytes: u8,
    calls: Vec<WalCall>,
    /// Power loss after this many file-system operations of the calls (then recovery).
    crash_after_ops: Option<u8>,
    damage: Vec<Damage<WalName>>,
}

/// A valid call on the shared WAL, relative to its state (group numbers modulo [`WAL_GROUPS`]).
#[derive(Arbitrary, Debug)]
enum WalCall {
    /// Creates the group (with an empty membership: a learner's) unless it exists.
    Create { group: u8, learner: bool },
    /// Removes the group if it exists.
    Remove { group: u8 },
    /// One `write_batch` of appends to distinct groups (see [`Call::Append`]); `kind` picks the
    /// entries' payload: normal, no-op or membership.
    Batch { appends: Vec<(u8, u8, u8, u8)> },
    /// A group's term, vote and commit, as [`Call::HardState`].
    HardState { group: u8, term_step: u8, vote: Option<u8>, commit: u8 },
    /// As [`Call::Compact`].
    Compact { group: u8, back: u8, beyond: bool },
    /// As [`Call::Snapshot`], saved locally or received in two chunks and installed.
    Snapshot { group: u8, back: u8, beyond: bool, data_bytes: u8, received: bool },
}

/// File names the shared WAL knows (and one it does not).
#[derive(Arbitrary, Debug)]
enum WalName {
    Identity,
    Segment(u8),
    Snapshot(u8, u8, u8),
    Staging(u8),
    Other(u8),
}

fn wal_file_name(name: &WalName) -> String {
    let group = |id: &u8| format!("group-{:020}-", id % WAL_GROUPS);
    match name {
        WalName::Identity => "IDENTITY".to_string(),
        WalName::Segment(sequence) => format!("segment-{:020}.mwal", sequence),
        WalName::Snapshot(id, index, term) => format!("{}snapshot-{:020}-{:020}.snap", group(id), index, term),
        WalName::Staging(id) => format!("{}snapshot.staging", group(id)),
        WalName::Other(n) => format!("other-{n}"),
    }
}

/// Every group's state (by group number), as a store shows it or the model predicts it.
type Groups = BTreeMap<u8, State>;

/// Target `shared_wal_recovery`: builds a [`SharedWal`] over [`SimFs`] with arbitrary (valid)
/// calls on several groups (batches across groups, creations, removals, compactions, snapshots),
/// possibly losing power in the middle, then damages its directory arbitrarily and reopens it.
///
/// - After a clean run, reopening shows exactly what was written. After a power loss, recovery
///   succeeds and shows, for every group, the acknowledged state or the one in flight (the rule
///   of [`wal_recovery`], group by group; a group exists in one of them).
/// - After any damage: `open` never panics and fails only with a typed [`DiskError`] naming a
///   file of the directory; if it succeeds every group is consistent, takes a new entry (all in
///   one batch), and shows the same state when opened again.
pub fn shared_wal_recovery(data: &[u8]) {
    let Ok(input) = SharedWalInput::arbitrary_take_rest(Unstructured::new(data)) else { return };
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        eprintln!("{input:#?}");
    }
    let options = WalOptions {
        segment_bytes_max: 48 + u64::from(input.segment_bytes),
        cache_bytes_max: u64::from(input.cache_bytes),
        // No fill, a fill of a few records, or the whole segment, chosen by the same byte.
        preallocate_bytes: [0, 24, 64, 1 << 20][usize::from(input.segment_bytes) % 4],
    };
    let fs = SimFs::new(u64::from(input.segment_bytes));
    let dir = PathBuf::from("/data");
    let wal = SharedWal::create(fs.clone(), &dir, ME, options).expect("a healthy disk");
    if let Some(ops) = input.crash_after_ops {
        fs.crash_after(u64::from(ops));
    }
    let (acked, in_flight) = drive_wal(&wal, &input.calls);
    drop(wal);
    fs.crash();
    let wal = SharedWal::open(fs.clone(), &dir, ME, options).expect("recovery after a power loss succeeds");
    let recovered = wal_view(&wal);
    for group in recovered.keys().chain(acked.keys()).chain(in_flight.iter().flat_map(|f| f.keys())) {
        check_recovered_group(group, &recovered, &acked, in_flight.as_ref());
    }
    drop(wal);

    for item in &input.damage[..input.damage.len().min(DAMAGE_MAX)] {
        do_damage(&fs, &dir, item, ".mwal", wal_file_name);
    }
    match SharedWal::open(fs.clone(), &dir, ME, options) {
        Ok(wal) => check_wal_usable(&fs, &dir, options, wal),
        Err(error) => check_error(&fs, &dir, &error),
    }
}

/// The rule of [`check_recovered`] for one group, which may also exist in only one of the
/// candidate states (a creation or removal in flight).
fn check_recovered_group(
    group: &u8,
    recovered: &Groups,
    acked: &Groups,
    in_flight: Option<&BTreeMap<u8, GroupFlight>>,
) {
    let flight = in_flight.and_then(|flights| flights.get(group));
    match (recovered.get(group), acked.get(group), flight) {
        (Some(found), Some(acked), flight) if flight.is_none_or(|f| f.exists) => {
            check_recovered(found, acked, flight.map(|f| &f.in_flight));
        }
        (Some(found), Some(acked), Some(_)) => check_recovered(found, acked, None), // A removal in flight.
        (Some(found), None, Some(flight)) if flight.exists => check_recovered(found, &flight.in_flight.state, None),
        (None, Some(_), Some(flight)) => assert!(!flight.exists, "group {group} lost"),
        (None, None, _) => {}
        (found, acked, _) => panic!("group {group}: recovered {found:?}, acknowledged {acked:?}"),
    }
}

/// A group's part of the call the power loss interrupted.
struct GroupFlight {
    /// Whether the group exists once the call is done.
    exists: bool,
    in_flight: InFlight,
}

/// Runs the calls; returns every group's state after the last acknowledged call and, if a call
/// failed (the power went), each touched group's part of the call in flight.
fn drive_wal(wal: &SharedWal<SimFs>, calls: &[WalCall]) -> (Groups, Option<BTreeMap<u8, GroupFlight>>) {
    let mut groups = Groups::new();
    let mut stores: BTreeMap<u8, GroupStore<SimFs>> = BTreeMap::new();
    for call in calls.iter().take(CALLS_MAX) {
        let mut flights = BTreeMap::new();
        let result = apply_wal(wal, &mut stores, &groups, call, &mut flights);
        if let Err(error) = result {
            assert!(matches!(error, DiskError::Io { .. }), "a valid call refused: {error}");
            return (groups, Some(flights));
        }
        for (group, flight) in flights {
            if flight.exists {
                groups.insert(group, flight.in_flight.state);
            } else {
                groups.remove(&group);
            }
        }
    }
    (groups, None)
}

fn apply_wal(
    wal: &SharedWal<SimFs>,
    stores: &mut BTreeMap<u8, GroupStore<SimFs>>,
    groups: &Groups,
    call: &WalCall,
    flights: &mut BTreeMap<u8, GroupFlight>,
) -> Result<(), DiskError> {
    let unchanged = |state: &State| InFlight { state: state.clone(), untouched: usize::MAX };
    match *call {
        WalCall::Create { group, learner } => {
            let group = group % WAL_GROUPS;
            if groups.contains_key(&group) {
                return Ok(());
            }
            let membership = if learner { Membership::default() } else { Membership::new([NodeId(1), NodeId(2)]) };
            flights.insert(group, GroupFlight { exists: true, in_flight: unchanged(&State::default()) });
            let store = wal.create_group(GroupId(u64::from(group)), membership)?;
            stores.insert(group, store);
            Ok(())
        }
        WalCall::Remove { group } => {
            let group = group % WAL_GROUPS;
            let Some(state) = groups.get(&group) else { return Ok(()) };
            flights.insert(group, GroupFlight { exists: false, in_flight: unchanged(state) });
            stores.remove(&group);
            wal.remove_group(GroupId(u64::from(group)))
        }
        WalCall::Batch { ref appends } => {
            let mut outputs: BTreeMap<u8, Output> = BTreeMap::new();
            for &(group, back, count, kind) in appends.iter().take(WAL_GROUPS as usize) {
                let group = group % WAL_GROUPS;
                let Some(state) = groups.get(&group).filter(|_| !outputs.contains_key(&group)) else { continue };
                let append = Call::Append { back, count, payload_bytes: kind };
                let (mut next, mut entries) = append_entries(state, &append);
                for entry in entries.iter_mut() {
                    entry.payload = match kind % 3 {
                        0 => entry.payload.clone(),
                        1 => EntryPayload::Noop,
                        _ => EntryPayload::Membership(Membership::new([NodeId(1), NodeId(u64::from(kind % 5) + 2)])),
                    };
                }
                next.entries.truncate(next.entries.len() - entries.len());
                next.entries.extend_from_slice(&entries);
                let untouched = state.entries.len() - usize::from(back) % (state.entries.len() + 1);
                flights.insert(group, GroupFlight { exists: true, in_flight: InFlight { state: next, untouched } });
                outputs.insert(group, Output { entries, ..Output::default() });
            }
            let touched: Vec<u8> = outputs.keys().copied().collect();
            let mut batch: Vec<(&mut GroupStore<SimFs>, &mut Output)> = stores
                .iter_mut()
                .filter(|(group, _)| touched.contains(group))
                .map(|(_, store)| store)
                .zip(outputs.values_mut())
                .collect();
            wal.write_batch(&mut batch)
        }
        WalCall::HardState { group, term_step, vote, commit } => {
            with_group(stores, groups, group, flights, &Call::HardState { term_step, vote, commit })
        }
        WalCall::Compact { group, back, beyond } => {
            with_group(stores, groups, group, flights, &Call::Compact { back, beyond })
        }
        WalCall::Snapshot { group, back, beyond, data_bytes, received } => {
            let group = group % WAL_GROUPS;
            let (Some(state), Some(store)) = (groups.get(&group), stores.get_mut(&group)) else { return Ok(()) };
            if !received {
                let (next, result) = apply(store, state, &Call::Snapshot { back, beyond, data_bytes });
                flights.insert(group, GroupFlight { exists: true, in_flight: unchanged(&next) });
                return result;
            }
            let (next, meta, data) = snapshot_call(store, state, back, beyond, data_bytes);
            flights.insert(group, GroupFlight { exists: true, in_flight: unchanged(&next) });
            let half = data.len() / 2;
            let chunk = |offset: usize, end: usize| raft_core::ReceivedChunk {
                meta: meta.clone(),
                offset: offset as u64,
                data: Bytes::copy_from_slice(&data[offset..end]),
            };
            let mut output = Output {
                snapshot_chunks: vec![chunk(0, half), chunk(half, data.len())],
                install_snapshot: Some(meta.clone()),
                ..Output::default()
            };
            store.write_output_owned(&mut output)
        }
    }
}

/// Carries out a single-group `call` of [`wal_recovery`]'s kind on a group, if it exists.
fn with_group(
    stores: &mut BTreeMap<u8, GroupStore<SimFs>>,
    groups: &Groups,
    group: u8,
    flights: &mut BTreeMap<u8, GroupFlight>,
    call: &Call,
) -> Result<(), DiskError> {
    let group = group % WAL_GROUPS;
    let (Some(state), Some(store)) = (groups.get(&group), stores.get_mut(&group)) else { return Ok(()) };
    let (next, result) = apply(store, state, call);
    flights.insert(group, GroupFlight { exists: true, in_flight: InFlight { state: next, untouched: usize::MAX } });
    result
}

/// Every group of the WAL, read through its handle.
fn wal_view(wal: &SharedWal<SimFs>) -> Groups {
    let groups = wal.groups();
    groups
        .into_iter()
        .map(|id| {
            let number = u8::try_from(id.0).expect("the harness's group numbers");
            (number, view(&wal.group(id).expect("listed")))
        })
        .collect()
}

/// A reopened WAL takes a new entry in every group (one batch), and opening it again shows the
/// same state plus them.
fn check_wal_usable(fs: &SimFs, dir: &Path, options: WalOptions, wal: SharedWal<SimFs>) {
    let before = wal_view(&wal);
    let mut writes: Vec<(GroupStore<SimFs>, Output)> = Vec::new();
    for (group, state) in &before {
        let index = Index(state.boundary.0.0 + state.entries.len() as u64 + 1);
        let term = state.entries.last().map_or(state.boundary.1, |e| e.term).max(state.term);
        let hard_state = HardState { term, vote: state.vote.filter(|_| term == state.term), commit: Index(0) };
        let entries = vec![Entry { index, term, payload: EntryPayload::Noop }];
        let store = wal.group(GroupId(u64::from(*group))).expect("listed");
        writes.push((store, Output { hard_state: Some(hard_state), entries, ..Output::default() }));
    }
    let mut batch: Vec<(&mut GroupStore<SimFs>, &mut Output)> = writes.iter_mut().map(|(s, o)| (s, o)).collect();
    wal.write_batch(&mut batch).expect("a recovered WAL takes writes");
    drop(batch);
    let expected = wal_view(&wal);
    drop(writes);
    drop(wal);
    fs.crash();
    let wal = SharedWal::open(fs.clone(), dir, ME, options).expect("a WAL that opened opens again");
    assert_eq!(wal_view(&wal), expected, "a reopened WAL shows what was written");
    for (group, state) in &before {
        let mut after = expected[group].clone();
        after.entries.pop();
        assert_eq!(after.entries, state.entries, "group {group}: the recovered log is kept");
    }
}
