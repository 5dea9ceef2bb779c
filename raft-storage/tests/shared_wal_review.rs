//! Review findings on the shared WAL (branch wt-review): tests that fail on main.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use raft_core::{GroupId, HardState, Index, Membership, NodeId, SnapshotMeta, Storage, Term};
use raft_storage::testing::{SimFile, SimFs};
use raft_storage::{DiskError, FileSystem, FsFile, Identity, LogStore, SharedWal, WalOptions};

mod common;
use common::hooks::HoldGate;
use common::{membership, run};

const ME: Identity = Identity { cluster_id: 9, node_id: NodeId(1) };

fn dir() -> PathBuf {
    PathBuf::from("/srv/wal")
}

fn hard(term: u64) -> Option<HardState> {
    Some(HardState { term: Term(term), vote: Some(NodeId(1)), commit: Index(0) })
}

/// Blocks the first sync of a segment file after [`HoldGate::arm`] until [`HoldGate::release`].
#[derive(Default)]
struct Gate {
    hold: HoldGate,
    /// Makes the next segment sync panic.
    panic_next: AtomicBool,
}

impl std::ops::Deref for Gate {
    type Target = HoldGate;
    fn deref(&self) -> &HoldGate {
        &self.hold
    }
}

#[derive(Clone)]
struct GateFs {
    inner: SimFs,
    gate: Arc<Gate>,
}

struct GateFile {
    inner: SimFile,
    segment: bool,
    gate: Arc<Gate>,
}

impl GateFs {
    fn wrap(&self, path: &Path, inner: SimFile) -> GateFile {
        let segment = path.to_string_lossy().ends_with(".mwal");
        GateFile { inner, segment, gate: Arc::clone(&self.gate) }
    }
}

impl FileSystem for GateFs {
    type File = GateFile;
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn create(&self, path: &Path) -> std::io::Result<GateFile> {
        Ok(self.wrap(path, self.inner.create(path)?))
    }
    fn open_append(&self, path: &Path) -> std::io::Result<GateFile> {
        Ok(self.wrap(path, self.inner.open_append(path)?))
    }
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.inner.read(path)
    }
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.inner.read_at(path, offset, len)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        self.inner.remove(path)
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.inner.sync_dir(dir)
    }
}

impl FsFile for GateFile {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.append(bytes)
    }
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.write_at(offset, bytes)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        if self.segment {
            assert!(!self.gate.panic_next.swap(false, Ordering::SeqCst), "a sync that panics");
            self.gate.pass();
        }
        self.inner.sync()
    }
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.inner.truncate(len)
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
}

fn snapshot(index: u64, term: u64, data: &[u8]) -> SnapshotMeta {
    SnapshotMeta {
        index: Index(index),
        term: Term(term),
        membership: membership(),
        data_crc32: raft_core::snapshot_crc32(data),
    }
}

/// A WAL with group 1 holding entries 1..=5 and the installed snapshot (3, 1); the gate armed so
/// that the next segment fsync (a leader's, without the WAL lock) stalls.
fn setup(seed: u64) -> (GateFs, SharedWal<GateFs>, raft_storage::GroupStore<GateFs>) {
    let fs = GateFs { inner: SimFs::new(seed), gate: Arc::default() };
    let wal = SharedWal::create(fs.clone(), dir(), ME, WalOptions::default()).expect("create");
    let mut store = wal.create_group(GroupId(1), membership()).expect("group");
    store.persist(hard(1), &run(1, 5, 1)).expect("persist");
    store.save_snapshot(&snapshot(3, 1, b"old three"), b"old three").expect("save");
    (fs, wal, store)
}

/// A write of a group handle that is waiting for its shared fsync when the group is removed
/// (and created again) then deletes, once durable, the file its install released, by name: the
/// name now belongs to the new group of the same id. An acknowledged install of the new group
/// loses its data file; the WAL no longer opens.
#[test]
fn a_stale_handles_install_never_deletes_the_new_groups_snapshot() {
    let (fs, wal, mut old) = setup(41);
    fs.gate.arm();
    let stale = std::thread::spawn(move || old.save_snapshot(&snapshot(5, 1, b"old five"), b"old five"));
    fs.gate.wait_entered(); // The stale write's leader is in its fsync, without the lock.
    wal.remove_group(GroupId(1)).expect("remove");
    let mut new = wal.create_group(GroupId(1), membership()).expect("created again");
    let data: &'static [u8] = b"new three";
    let meta = snapshot(3, 1, data);
    let install = {
        let meta = meta.clone();
        std::thread::spawn(move || new.save_snapshot(&meta, data).map(|()| new))
    };
    let reader = wal.group(GroupId(1)).expect("group");
    while reader.snapshot() != Ok(meta.clone()) {
        std::thread::yield_now(); // Until the new group's install is staged.
    }
    fs.gate.release();
    let _ = stale.join().expect("no panic");
    let new = install.join().expect("no panic").expect("the new group's install is acknowledged");
    let chunk = new.snapshot_chunk(Index(3), Term(1), 0, 1024).map(|chunk| chunk.data);
    drop((new, reader, wal));
    let reopened = SharedWal::open(fs.clone(), dir(), ME, WalOptions::default()).map(|wal| wal.groups());
    assert_eq!(
        (chunk, reopened),
        (Ok(bytes::Bytes::from_static(data)), Ok(vec![GroupId(1)])),
        "the acknowledged snapshot reads back, also after a restart"
    );
}

/// The same race without a new install: the stale write's deletion of a file the removal already
/// deleted is an I/O error (NotFound) that stops every group of the WAL, and the durable write
/// is reported failed.
#[test]
fn a_group_removed_during_its_install_does_not_stop_the_wal() {
    let (fs, wal, mut old) = setup(42);
    let mut other = wal.create_group(GroupId(2), membership()).expect("group");
    fs.gate.arm();
    let stale = std::thread::spawn(move || old.save_snapshot(&snapshot(5, 1, b"old five"), b"old five"));
    fs.gate.wait_entered();
    wal.remove_group(GroupId(1)).expect("remove");
    fs.gate.release();
    let stale = stale.join().expect("no panic");
    assert!(!matches!(stale, Err(DiskError::Io { .. })), "the removal race is no I/O error: {stale:?}");
    assert_eq!(other.persist(hard(1), &run(1, 2, 1)), Ok(()), "another group keeps working");
}

/// An idle group with one entry after its boundary (fewer than a snapshot policy's threshold)
/// pins every segment written after it: the WAL grows without bound while other groups write and
/// compact. (Module docs: "An idle group costs one small checkpoint record per released
/// segment, never a whole segment.")
#[test]
fn an_idle_group_with_a_short_log_does_not_pin_segments() {
    let fs = SimFs::new(43);
    let options = WalOptions { segment_bytes_max: 1024, cache_bytes_max: 1 << 20, preallocate_bytes: 256 };
    let wal = SharedWal::create(fs.clone(), dir(), ME, options).expect("create");
    let mut idle = wal.create_group(GroupId(1), Membership::new([NodeId(1)])).expect("group");
    idle.persist(hard(1), &run(1, 1, 1)).expect("one entry, then idle");
    let mut busy = wal.create_group(GroupId(2), Membership::new([NodeId(1)])).expect("group");
    for index in 1..=2000 {
        busy.persist(None, &run(index, index, 1)).expect("persist");
        busy.compact(Index(index), Term(1)).expect("compact");
    }
    assert!(wal.segment_count() <= 4, "{} segments for one live entry of each group", wal.segment_count());
}

/// A leader whose fsync panics (it syncs without the WAL lock) must not leave `syncing` set: the
/// writers after it would wait forever for a sync that never ends. The WAL stops instead.
#[test]
fn a_leader_whose_sync_panics_leaves_no_writer_waiting() {
    let (fs, wal, mut store) = setup(44);
    let mut other = wal.create_group(GroupId(2), membership()).expect("group");
    fs.gate.panic_next.store(true, Ordering::SeqCst);
    let leader = std::thread::spawn(move || store.persist(None, &run(6, 6, 1)));
    assert!(leader.join().is_err(), "the leader's sync panicked");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(other.persist(hard(1), &run(1, 1, 1))));
    let written = receiver.recv_timeout(Duration::from_secs(60)).expect("the next writer returns");
    assert_eq!(written, Err(DiskError::Stopped), "the WAL stops: whether the batch is durable is unknown");
}
