//! The durable store over the real file system: write, reopen, truncate, rotate, compact.

use std::path::PathBuf;

use raft_core::{Entry, EntryPayload, HardState, Index, Membership, NodeId, Storage, Term};
use raft_storage::{DiskError, DiskOptions, DiskStorage, Identity, LogStore, StdFs};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("raft-storage-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry { index: Index(index), term: Term(term), payload: EntryPayload::Normal(bytes::Bytes::copy_from_slice(data)) }
}

const ME: Identity = Identity { cluster_id: 7, node_id: NodeId(1) };

#[test]
fn entries_and_hard_state_survive_reopen_with_truncation_rotation_and_compaction() {
    let dir = temp_dir("smoke");
    let options = DiskOptions { segment_bytes_max: 200, preallocate_bytes: 64 };
    let membership = Membership::new([NodeId(1), NodeId(2), NodeId(3)]);
    let mut store = DiskStorage::create(StdFs, &dir, ME, membership.clone(), options).expect("create");
    let hard_state = HardState { term: Term(2), vote: Some(NodeId(2)), commit: Index(0) };
    let batch: Vec<Entry> = (1..=20).map(|i| entry(i, 1, &[i as u8; 20])).collect();
    store.persist(Some(hard_state), &batch).expect("persist");
    assert!(store.segment_count() > 1, "rotation by size");
    store.persist(None, &[entry(15, 2, b"new")]).expect("truncate and append");
    drop(store);

    let mut store = DiskStorage::open(StdFs, &dir, ME, options).expect("open");
    assert_eq!(store.initial_state().expect("state").hard_state, hard_state);
    assert_eq!(store.initial_state().expect("state").membership, membership);
    assert_eq!(store.last_index().expect("last"), Index(15));
    assert_eq!(store.term(Index(15)).expect("term"), Term(2));
    assert_eq!(store.entries(Index(14), Index(16), u64::MAX).expect("read")[1], entry(15, 2, b"new"));

    store.compact(Index(10), Term(1)).expect("compact");
    let segments = store.segment_count();
    drop(store);
    let store = DiskStorage::open(StdFs, &dir, ME, options).expect("reopen");
    assert_eq!(store.segment_count(), segments);
    assert_eq!(store.first_index().expect("first"), Index(11));
    assert_eq!(store.term(Index(10)).expect("boundary term"), Term(1));
    assert_eq!(store.entries(Index(10), Index(11), u64::MAX), Err(raft_core::StorageError::Compacted(Index(10))));
    assert_eq!(store.entries(Index(11), Index(16), u64::MAX).expect("tail").len(), 5);

    drop(store); // Open, it holds the directory: another opener would get `InUse` first.
    let stranger = Identity { cluster_id: 7, node_id: NodeId(9) };
    assert!(matches!(DiskStorage::open(StdFs, &dir, stranger, options), Err(DiskError::IdentityMismatch { .. })));
    let empty = temp_dir("empty");
    assert!(matches!(DiskStorage::open(StdFs, &empty, ME, options), Err(DiskError::NotInitialized(_))));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Regression: the segment reader knew only the `Normal` and `Noop` payloads, so a store holding
/// a membership change (a node added or removed) reported itself corrupt when reopened.
#[test]
fn every_payload_kind_survives_reopen() {
    let dir = temp_dir("payload-kinds");
    let options = DiskOptions::default();
    let membership = Membership::new([NodeId(1), NodeId(2), NodeId(3)]);
    let mut store = DiskStorage::create(StdFs, &dir, ME, membership.clone(), options).expect("create");
    let mut learner = membership.clone();
    learner.learners.insert(NodeId(4));
    let joint = Membership {
        voters_incoming: [NodeId(1), NodeId(2), NodeId(4)].into(),
        voters_outgoing: membership.voters_incoming.clone(),
        learners: Default::default(),
        learners_next: [NodeId(3)].into(),
    };
    let payloads = [
        EntryPayload::Noop,
        EntryPayload::Normal(bytes::Bytes::from_static(b"command")),
        EntryPayload::Membership(learner),
        EntryPayload::Membership(joint.clone()),
        EntryPayload::Normal(bytes::Bytes::new()),
    ];
    let batch: Vec<Entry> =
        (1..).zip(payloads).map(|(i, payload)| Entry { index: Index(i), term: Term(1), payload }).collect();
    store.persist(None, &batch).expect("persist");
    drop(store);

    let store = DiskStorage::open(StdFs, &dir, ME, options).expect("a store with membership entries opens");
    assert_eq!(store.entries(Index(1), Index(6), u64::MAX).expect("read"), batch);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_store_that_lost_its_identity_is_neither_opened_nor_recreated() {
    let dir = temp_dir("lost-identity");
    let options = DiskOptions::default();
    let mut store = DiskStorage::create(StdFs, &dir, ME, Membership::new([NodeId(1)]), options).expect("create");
    let voted = HardState { term: Term(3), vote: Some(NodeId(1)), commit: Index(0) };
    store.persist(Some(voted), &[entry(1, 3, b"x")]).expect("persist");
    drop(store);
    std::fs::remove_file(dir.join("IDENTITY")).expect("remove identity");
    assert!(matches!(DiskStorage::open(StdFs, &dir, ME, options), Err(DiskError::MissingIdentity(_))));
    let recreate = DiskStorage::create(StdFs, &dir, ME, Membership::new([NodeId(1)]), options);
    assert!(matches!(recreate, Err(DiskError::MissingIdentity(_))), "must not erase the log and the vote");
    assert!(std::fs::read_dir(&dir).expect("dir").any(|e| e.expect("entry").file_name() == "00000000000000000001.wal"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A conflicting suffix cut inside a segment this process created, then new entries appended
/// there: they must land right after the cut. (StdFs once opened new segments without O_APPEND,
/// so the write after `set_len` went to the old offset, leaving zeros before it; the store
/// then refused to open: "checksum mismatch". Found by the turmoil simulation, seed 87.)
#[test]
fn entries_appended_after_a_cut_inside_a_new_segment_survive_reopen() {
    let dir = temp_dir("cut-in-segment");
    let options = DiskOptions::default();
    let membership = Membership::new([NodeId(1), NodeId(2), NodeId(3)]);
    let mut store = DiskStorage::create(StdFs, &dir, ME, membership, options).expect("create");
    let batch: Vec<Entry> = (1..=10).map(|i| entry(i, 1, &[i as u8; 20])).collect();
    store.persist(None, &batch).expect("persist");
    assert_eq!(store.segment_count(), 1, "one segment, created by this process");
    store.persist(None, &[entry(6, 2, b"six"), entry(7, 2, b"seven")]).expect("cut and append");
    store.persist(None, &[entry(8, 2, b"eight")]).expect("append");
    drop(store);

    let store = DiskStorage::open(StdFs, &dir, ME, options).expect("the store reopens");
    assert_eq!(store.last_index().expect("last"), Index(8));
    let entries = store.entries(Index(1), Index(9), u64::MAX).expect("read");
    assert_eq!(entries[..5], batch[..5]);
    assert_eq!(entries[5..], [entry(6, 2, b"six"), entry(7, 2, b"seven"), entry(8, 2, b"eight")]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `FsFile::append` writes at the end also right after `truncate`, on a file from `create`.
#[test]
fn std_fs_appends_at_the_end_after_a_truncate() {
    use raft_storage::{FileSystem, FsFile};
    let dir = temp_dir("append-after-truncate");
    StdFs.create_dir_all(&dir).expect("dir");
    let path = dir.join("file");
    let mut file = StdFs.create(&path).expect("create");
    file.append(b"0123456789").expect("append");
    file.truncate(4).expect("truncate");
    file.append(b"ab").expect("append after the cut");
    file.sync().expect("sync");
    assert_eq!(file.len(), 6);
    assert_eq!(StdFs.read(&path).expect("read"), b"0123ab");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `FsFile::write_at` writes where it is told (over what lies there, or growing the file), also
/// on a file opened by `open_append`, and `append` then writes at the end; a write past the end
/// is refused.
#[test]
fn std_fs_writes_in_place_and_appends_at_the_end() {
    use raft_storage::{FileSystem, FsFile};
    let dir = temp_dir("write-at");
    StdFs.create_dir_all(&dir).expect("dir");
    let path = dir.join("file");
    let mut file = StdFs.create(&path).expect("create");
    file.append(b"head|00000000").expect("append");
    file.write_at(5, b"abc").expect("in place");
    file.write_at(11, b"xyz").expect("over the end");
    assert_eq!(file.len(), 14);
    assert_eq!(file.write_at(15, b"!").map_err(|error| error.kind()), Err(std::io::ErrorKind::InvalidInput));
    file.sync().expect("sync");
    drop(file);
    let mut file = StdFs.open_append(&path).expect("reopen");
    assert_eq!(file.len(), 14);
    file.write_at(8, b"de").expect("in place after a reopen");
    file.append(b"+").expect("append after a reopen");
    file.sync().expect("sync");
    assert_eq!(StdFs.read(&path).expect("read"), b"head|abcde0xyz+");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An I/O error keeps the operating system's error whole (its code and message) as its source,
/// for the operator who reads it and the caller who inspects it.
#[test]
fn an_io_error_keeps_the_os_error_as_its_source() {
    let dir = temp_dir("not-a-directory");
    std::fs::write(&dir, b"a file where the store's parent directory should be").expect("write");
    let inside = dir.join("node");
    let membership = Membership::new([NodeId(1)]);
    let error = DiskStorage::create(StdFs, &inside, ME, membership, DiskOptions::default()).err().expect("fails");
    let DiskError::Io { op, path, source } = &error else { panic!("an I/O error: {error}") };
    assert_eq!((*op, path), (raft_storage::IoOp::Create, &inside));
    let code = source.raw_os_error().expect("the operating system's error code");
    let from_chain = std::error::Error::source(&error).and_then(|source| source.downcast_ref::<std::io::Error>());
    assert_eq!(from_chain.and_then(std::io::Error::raw_os_error), Some(code), "the source is the std::io::Error");
    assert_eq!(error.io_kind(), Some(source.kind()));
    assert!(error.to_string().ends_with(&source.to_string()), "the message says why: {error}");
    let _ = std::fs::remove_file(&dir);
}
