//! Test support (cargo feature `testing`): [`SimFs`], an in-memory, deterministic,
//! fault-injecting [`FileSystem`] for tests and simulators, with its files ([`SimFile`]) and
//! options ([`SimFsOptions`]). Not part of the production API: enable the feature in the
//! `[dev-dependencies]` entry of `raft-storage` (or in a simulator's dependencies).
//!
//! # Model (POSIX durability)
//!
//! - A file is an inode with two contents: `current` (what reads and lengths see) and `durable`
//!   (what survives a crash). [`FsFile::append`], [`FsFile::write_at`] and [`FsFile::truncate`]
//!   change `current`;
//!   [`FsFile::sync`] makes `durable` equal to `current`.
//! - A directory maps names to inodes, again twice: `current` and `durable`. `create` of a new
//!   name, `rename` and `remove` change `current`; [`FileSystem::sync_dir`] makes `durable` equal
//!   to `current`. A rename between two directories is durable once both are synced.
//! - Directories themselves are durable as soon as `create_dir_all` returns. The roots `""` (for
//!   relative paths) and `"/"` always exist. A file's directory is its [`Path::parent`]; `.`
//!   components are ignored and `..` components are refused (no aliasing).
//! - `create` on an existing name keeps the inode and empties its `current` content (like
//!   `O_TRUNC`): until the file is synced, a crash brings the old content back.
//! - An open [`SimFile`] refers to its inode, not its name: it keeps working after its file is
//!   renamed, replaced or removed. An inode is freed once no directory (current or durable) names
//!   it and no handle is open.
//!
//! # Faults
//!
//! Every call of `create`, `rename`, `remove`, `sync_dir`, `append`, `write_at`, `sync` and
//! `truncate` is a *mutating operation* and gets the next index of [`SimFs::op_count`], whether
//! it succeeds or not. Reads (`read`, `read_at`: they see `current`), listings, `open_append` and `create_dir_all`
//! are not counted; they fail only on a halted machine or a missing file.
//!
//! - [`SimFs::fail_after`]: one chosen operation fails with a chosen [`io::ErrorKind`] and has no
//!   effect, except that a failed append or `write_at` may leave a torn prefix of its bytes (an
//!   option). The
//!   fault lands on that operation whatever it is: if the operation fails earlier for its own
//!   reason (a missing file, a stale handle), the fault is used up.
//! - [`SimFs::crash_after`]: the machine halts. Every mutating operation from the chosen one on,
//!   and every other file-system call after it, fails until [`SimFs::crash`]. A harness can thus
//!   run a workload once, read `op_count`, then for each `k` run it again under `crash_after(k)`,
//!   call `crash()` and recover.
//! - [`SimFs::crash`]: power loss. Every directory and inode reverts to its durable state; a file
//!   whose unsynced change is only writes (appends, and writes in place with [`FsFile::write_at`])
//!   may keep a seeded-random prefix of the bytes from the lowest offset written since its last
//!   sync, in offset order, up to its end (or, written in place only, up to the last byte that
//!   differs from the durable content): a torn tail, an option. A file whose durable content
//!   was cut into by `truncate` or `create` since its last sync loses its whole change. Handles
//!   opened before fail with [`io::ErrorKind::StaleNetworkFileHandle`].
//! - [`SimFs::flip_bit`]: bit rot, in both the durable and the current content.
//!
//! Use [`io::ErrorKind::StorageFull`] for ENOSPC and [`io::ErrorKind::Other`] for EIO. A halted
//! machine answers with [`io::ErrorKind::Other`] too: to the store it looks like EIO.
//!
//! # Determinism
//!
//! All state lives in `BTreeMap`s and every random choice (torn lengths) comes from a SplitMix64
//! generator seeded by the constructor, so the same seed and the same calls give the same
//! results.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::fs::{FileSystem, FsFile};

/// What kinds of torn writes a [`SimFs`] simulates. Both are on by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimFsOptions {
    /// On [`SimFs::crash`], a file whose unsynced change is only writes (appends, writes in
    /// place) keeps a random prefix (from none to all, in offset order) of the unsynced bytes
    /// instead of losing them all. Other unsynced changes (a truncation, a `create` over an
    /// existing file) are always lost whole.
    pub torn_crash_writes: bool,
    /// An append or a `write_at` failed by [`SimFs::fail_after`] leaves a random strict prefix
    /// (possibly empty) of its bytes in the file's current content, instead of nothing.
    pub torn_failed_appends: bool,
}

impl Default for SimFsOptions {
    fn default() -> Self {
        SimFsOptions { torn_crash_writes: true, torn_failed_appends: true }
    }
}

/// An in-memory, deterministic, fault-injecting file system (see the module docs for the model).
///
/// Cloning is cheap and every clone shares the same state, so a test keeps one handle to inject
/// faults and inspect the disk while the store under test owns another.
#[derive(Clone)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
    /// Whether file syncs wait (a stalled disk, see [`SimFs::hold_syncs`]).
    syncs_held: Arc<Gate>,
    /// Whether removals wait (a slow unlink, see [`SimFs::hold_removes`]).
    removes_held: Arc<Gate>,
}

/// A stall of one kind of operation: while held, each call waits inside the call until the
/// gate is released.
#[derive(Default)]
struct Gate {
    /// Whether it is held, and how many calls wait in it.
    state: Mutex<(bool, usize)>,
    released: Condvar,
}

impl Gate {
    /// Locks its state; a bool and a count cannot be left half-written by a panic.
    fn lock(&self) -> MutexGuard<'_, (bool, usize)> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn hold(&self) {
        self.lock().0 = true;
    }

    fn release(&self) {
        self.lock().0 = false;
        self.released.notify_all();
    }

    /// Waits while the gate is held.
    fn pass(&self) {
        let mut state = self.lock();
        state.1 += 1;
        while state.0 {
            state = self.released.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        state.1 -= 1;
    }

    fn waiting(&self) -> usize {
        self.lock().1
    }
}

/// An open file of a [`SimFs`]: a handle on an inode, valid until the next [`SimFs::crash`].
#[derive(Debug)]
pub struct SimFile {
    fs: SimFs,
    handle: Handle,
    /// The length after this handle's last successful operation, reported once the handle is
    /// stale (its inode may be gone).
    len: u64,
}

/// Which inode a [`SimFile`] refers to, and in which crash epoch it was opened.
#[derive(Clone, Copy, Debug)]
struct Handle {
    inode: InodeId,
    epoch: u64,
}

type InodeId = u64;

#[derive(Debug, Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// `current[..shared_len] == durable[..shared_len]`, so that syncing and crashing copy only
    /// what differs instead of whole files.
    shared_len: usize,
    /// Whether the file was cut ([`FsFile::truncate`]) or emptied (`create` over it) since its
    /// last sync: a crash then loses its whole unsynced change if that cut into the durable
    /// content (see [`Inode::written_len`]).
    cut: bool,
    /// Open handles in the current epoch.
    handles: usize,
}

#[derive(Debug, Default)]
struct Directory {
    current: BTreeMap<String, InodeId>,
    durable: BTreeMap<String, InodeId>,
}

#[derive(Debug)]
struct State {
    options: SimFsOptions,
    rng: SplitMix64,
    dirs: BTreeMap<PathBuf, Directory>,
    inodes: BTreeMap<InodeId, Inode>,
    inode_next: InodeId,
    /// Bumped by every crash; handles of an older epoch are stale.
    epoch: u64,
    op_count: u64,
    /// Injected failures, by the index of the operation they hit.
    faults: BTreeMap<u64, io::ErrorKind>,
    /// Operations from this index on find the machine halted.
    halt_at: Option<u64>,
    halted: bool,
}

impl SimFs {
    /// An empty file system with the default options and a random generator seeded by `seed`.
    pub fn new(seed: u64) -> Self {
        Self::with_options(seed, SimFsOptions::default())
    }

    /// An empty file system with the given options.
    pub fn with_options(seed: u64, options: SimFsOptions) -> Self {
        let state = State::new(seed, options);
        SimFs { state: Arc::new(Mutex::new(state)), syncs_held: Arc::default(), removes_held: Arc::default() }
    }

    /// Replaces the options from now on.
    pub fn set_options(&self, options: SimFsOptions) {
        self.lock().options = options;
    }

    /// Simulates power loss, then a reboot (see the module docs). Also clears the halt of
    /// [`SimFs::crash_after`] and any fault of [`SimFs::fail_after`] not yet reached.
    pub fn crash(&self) {
        self.lock().crash();
    }

    /// Makes the mutating operation `n` operations from now (0: the next one) fail with `kind`.
    /// Several faults may be pending; a second one for the same operation replaces the first.
    pub fn fail_after(&self, n: u64, kind: io::ErrorKind) {
        let mut state = self.lock();
        let index = state.op_count + n;
        state.faults.insert(index, kind);
    }

    /// Lets `n` more mutating operations run, then halts the machine: that operation and every
    /// later call fail until [`SimFs::crash`]. A later call replaces the limit.
    pub fn crash_after(&self, n: u64) {
        let mut state = self.lock();
        state.halt_at = Some(state.op_count + n);
    }

    /// Stalls the disk: from now on every file sync waits, inside the call, until
    /// [`SimFs::release_syncs`] (a slow fsync that holds up whoever called it). Only for tests
    /// that run the store on a thread of its own: a sync on the releasing thread would wait for
    /// ever.
    pub fn hold_syncs(&self) {
        self.syncs_held.hold();
    }

    /// Ends the stall of [`SimFs::hold_syncs`]: waiting syncs go on.
    pub fn release_syncs(&self) {
        self.syncs_held.release();
    }

    /// Stalls removals as [`SimFs::hold_syncs`] stalls syncs, until [`SimFs::release_removes`]
    /// (an unlink of a large file, which can take long): for tests of what may go on meanwhile.
    pub fn hold_removes(&self) {
        self.removes_held.hold();
    }

    /// Ends the stall of [`SimFs::hold_removes`]: waiting removals go on.
    pub fn release_removes(&self) {
        self.removes_held.release();
    }

    /// How many removals wait in the stall of [`SimFs::hold_removes`] now.
    pub fn removes_waiting(&self) -> usize {
        self.removes_held.waiting()
    }

    /// Whether the machine is halted (by [`SimFs::crash_after`]) and waits for [`SimFs::crash`].
    pub fn is_halted(&self) -> bool {
        self.lock().halted
    }

    /// How many mutating operations have been called since construction, failed ones included.
    pub fn op_count(&self) -> u64 {
        self.lock().op_count
    }

    /// Flips bit `bit` (0..8) of byte `byte_offset` of the file `path` (its current directory
    /// entry), in the durable and in the current content wherever they are long enough. Not an
    /// operation: works even on a halted machine and does not count.
    pub fn flip_bit(&self, path: &Path, byte_offset: u64, bit: u8) -> io::Result<()> {
        self.lock().flip_bit(path, byte_offset, bit)
    }

    /// The durable content of the file `path` as named by the durable directory entry: what a
    /// crash would leave, torn tails aside. `None` if no durable entry names it.
    pub fn read_durable(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let inode = state.durable_entry(path)?;
        Some(state.inode(inode).durable.clone())
    }

    /// The names of the files that `dir` durably holds, sorted; empty if `dir` does not exist.
    pub fn durable_file_names(&self, dir: &Path) -> Vec<String> {
        let state = self.lock();
        let Ok(dir) = normalize(dir) else { return Vec::new() };
        state.dirs.get(&dir).map(|d| d.durable.keys().cloned().collect()).unwrap_or_default()
    }

    /// Every durably named file with its durable content, by path.
    pub fn durable_snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let state = self.lock();
        let mut snapshot = BTreeMap::new();
        for (dir, directory) in &state.dirs {
            for (name, &inode) in &directory.durable {
                snapshot.insert(dir.join(name), state.inode(inode).durable.clone());
            }
        }
        snapshot
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("SimFs state mutex poisoned: a thread panicked while holding it")
    }

    fn open(&self, handle: Handle, len: usize) -> SimFile {
        SimFile { fs: self.clone(), handle, len: len as u64 }
    }
}

impl fmt::Debug for SimFs {
    // The contents may be large: show only counters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("SimFs")
            .field("op_count", &state.op_count)
            .field("epoch", &state.epoch)
            .field("halted", &state.halted)
            .field("files", &state.inodes.len())
            .finish_non_exhaustive()
    }
}

impl FileSystem for SimFs {
    type File = SimFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.lock().create_dir_all(dir)
    }

    fn create(&self, path: &Path) -> io::Result<SimFile> {
        let handle = self.lock().create(path)?;
        Ok(self.open(handle, 0))
    }

    fn open_append(&self, path: &Path) -> io::Result<SimFile> {
        let (handle, len) = self.lock().open_append(path)?;
        Ok(self.open(handle, len))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = self.lock();
        state.check_running()?;
        let inode = state.current_entry(path)?;
        Ok(state.inode(inode).current.clone())
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let state = self.lock();
        state.check_running()?;
        let content = &state.inode(state.current_entry(path)?).current;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(content.len());
        let end = start.saturating_add(len).min(content.len());
        Ok(content[start..end].to_vec())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.lock().rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.removes_held.pass();
        self.lock().remove(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        state.check_running()?;
        Ok(state.directory(&normalize(dir)?)?.current.keys().cloned().collect())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.lock().sync_dir(dir)
    }
}

impl FsFile for SimFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let len = self.fs.lock().append(self.handle, bytes)?;
        self.len = len as u64;
        Ok(())
    }

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let len = self.fs.lock().write_at(self.handle, offset, bytes)?;
        self.len = len as u64;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.fs.syncs_held.pass(); // Waits while syncs are held.
        self.fs.lock().sync(self.handle)
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.fs.lock().truncate(self.handle, len)?;
        self.len = len;
        Ok(())
    }

    fn len(&self) -> u64 {
        let state = self.fs.lock();
        if state.is_stale(self.handle) { self.len } else { state.inode(self.handle.inode).current.len() as u64 }
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        // Never panic in drop (a poisoned mutex here would abort a test that is already failing).
        if let Ok(mut state) = self.fs.state.lock() {
            state.close(self.handle);
        }
    }
}

/// Directory operations and bookkeeping.
impl State {
    fn new(seed: u64, options: SimFsOptions) -> Self {
        let roots = [PathBuf::new(), PathBuf::from("/")];
        State {
            options,
            rng: SplitMix64 { state: seed },
            dirs: roots.into_iter().map(|root| (root, Directory::default())).collect(),
            inodes: BTreeMap::new(),
            inode_next: 0,
            epoch: 0,
            op_count: 0,
            faults: BTreeMap::new(),
            halt_at: None,
            halted: false,
        }
    }

    /// Counts a mutating operation. Fails if the machine is (now) halted; otherwise returns the
    /// injected error this operation must fail with, if any.
    fn begin_mutation(&mut self) -> io::Result<Option<io::Error>> {
        let index = self.op_count;
        self.op_count += 1;
        let fault = self.faults.remove(&index);
        if self.halt_at.is_some_and(|at| index >= at) {
            self.halted = true;
        }
        self.check_running()?;
        Ok(fault.map(|kind| io::Error::new(kind, format!("simfs: injected fault at operation {index}"))))
    }

    fn check_running(&self) -> io::Result<()> {
        if self.halted {
            return Err(io::Error::other("simfs: machine halted by crash_after; call SimFs::crash to reboot"));
        }
        Ok(())
    }

    fn directory(&self, dir: &Path) -> io::Result<&Directory> {
        self.dirs.get(dir).ok_or_else(|| not_found("directory", dir))
    }

    fn directory_mut(&mut self, dir: &Path) -> io::Result<&mut Directory> {
        self.dirs.get_mut(dir).ok_or_else(|| not_found("directory", dir))
    }

    fn inode(&self, inode: InodeId) -> &Inode {
        self.inodes.get(&inode).expect("a directory entry or a live handle names an inode that exists")
    }

    fn inode_mut(&mut self, inode: InodeId) -> &mut Inode {
        self.inodes.get_mut(&inode).expect("a directory entry or a live handle names an inode that exists")
    }

    fn current_entry(&self, path: &Path) -> io::Result<InodeId> {
        let (dir, name) = split(path)?;
        self.directory(&dir)?.current.get(&name).copied().ok_or_else(|| not_found("file", path))
    }

    fn durable_entry(&self, path: &Path) -> Option<InodeId> {
        let (dir, name) = split(path).ok()?;
        self.dirs.get(&dir)?.durable.get(&name).copied()
    }

    /// Refuses to make `path` a file when it is a directory.
    fn check_not_directory(&self, path: &Path) -> io::Result<()> {
        if self.dirs.contains_key(&normalize(path)?) {
            let message = format!("simfs: {} is a directory", path.display());
            return Err(io::Error::new(io::ErrorKind::IsADirectory, message));
        }
        Ok(())
    }

    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        self.check_running()?;
        let dir = normalize(dir)?;
        let mut missing: Vec<&Path> = dir.ancestors().take_while(|a| !self.dirs.contains_key(*a)).collect();
        missing.reverse();
        for path in missing {
            // Every path but a root has a parent and a name; the roots always exist.
            let (parent, name) = split(path)?;
            if self.directory(&parent)?.current.contains_key(&name) {
                let message = format!("simfs: {} is a file", path.display());
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, message));
            }
            self.dirs.insert(path.to_path_buf(), Directory::default());
        }
        Ok(())
    }

    fn create(&mut self, path: &Path) -> io::Result<Handle> {
        let fault = self.begin_mutation()?;
        let (dir, name) = split(path)?;
        self.check_not_directory(path)?;
        let existing = self.directory(&dir)?.current.get(&name).copied();
        fail_if(fault)?;
        let inode = match existing {
            Some(inode) => inode,
            None => {
                let inode = self.inode_next;
                self.inode_next += 1;
                self.inodes.insert(inode, Inode::default());
                self.directory_mut(&dir)?.current.insert(name, inode);
                inode
            }
        };
        let file = self.inode_mut(inode);
        file.current.clear();
        file.shared_len = 0;
        file.cut = true;
        file.handles += 1;
        self.check_invariants();
        Ok(Handle { inode, epoch: self.epoch })
    }

    fn open_append(&mut self, path: &Path) -> io::Result<(Handle, usize)> {
        self.check_running()?;
        let inode = self.current_entry(path)?;
        let handle = Handle { inode, epoch: self.epoch };
        let file = self.inode_mut(inode);
        file.handles += 1;
        Ok((handle, file.current.len()))
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        let fault = self.begin_mutation()?;
        let inode = self.current_entry(from)?;
        let (from_dir, from_name) = split(from)?;
        let (to_dir, to_name) = split(to)?;
        self.directory(&to_dir)?;
        self.check_not_directory(to)?;
        fail_if(fault)?;
        self.directory_mut(&from_dir)?.current.remove(&from_name);
        self.directory_mut(&to_dir)?.current.insert(to_name, inode);
        self.collect_garbage();
        self.check_invariants();
        Ok(())
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        let fault = self.begin_mutation()?;
        self.current_entry(path)?;
        fail_if(fault)?;
        let (dir, name) = split(path)?;
        self.directory_mut(&dir)?.current.remove(&name);
        self.collect_garbage();
        self.check_invariants();
        Ok(())
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        let fault = self.begin_mutation()?;
        let dir = normalize(dir)?;
        self.directory(&dir)?;
        fail_if(fault)?;
        let directory = self.directory_mut(&dir)?;
        directory.durable = directory.current.clone();
        self.collect_garbage();
        self.check_invariants();
        Ok(())
    }

    /// Frees the inodes that no directory names (currently or durably) and no handle holds.
    fn collect_garbage(&mut self) {
        let named: BTreeSet<InodeId> =
            self.dirs.values().flat_map(|d| d.current.values().chain(d.durable.values())).copied().collect();
        self.inodes.retain(|inode, file| file.handles > 0 || named.contains(inode));
    }

    fn crash(&mut self) {
        for directory in self.dirs.values_mut() {
            directory.current = directory.durable.clone();
        }
        // Handles of the old epoch are stale and no longer hold their inodes.
        for file in self.inodes.values_mut() {
            file.handles = 0;
        }
        self.collect_garbage();
        let torn = self.options.torn_crash_writes;
        for file in self.inodes.values_mut() {
            let written = file.written_len();
            let keep = if torn && written > 0 { self.rng.below(written + 1) } else { 0 };
            file.revert(keep);
        }
        self.epoch += 1;
        self.halted = false;
        self.halt_at = None;
        self.faults.clear();
        self.check_invariants();
    }

    fn flip_bit(&mut self, path: &Path, byte_offset: u64, bit: u8) -> io::Result<()> {
        if bit >= 8 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("simfs: no bit {bit} in a byte")));
        }
        let inode = self.current_entry(path)?;
        let file = self.inode_mut(inode);
        let mut flipped = false;
        // Flipping the same offset of both copies keeps `shared_len` true.
        for content in [&mut file.current, &mut file.durable] {
            if let Some(byte) = usize::try_from(byte_offset).ok().and_then(|offset| content.get_mut(offset)) {
                *byte ^= 1 << bit;
                flipped = true;
            }
        }
        if !flipped {
            let message = format!("simfs: offset {byte_offset} is past the end of {}", path.display());
            return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
        }
        Ok(())
    }

    /// Asserts the structural invariants (debug builds): entries name existing inodes, every
    /// directory but a root has a parent directory, `shared_len` is within both contents.
    fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        for (dir, directory) in &self.dirs {
            if let Some(parent) = dir.parent() {
                assert!(self.dirs.contains_key(parent), "simfs: directory {dir:?} has no parent directory");
            }
            for inode in directory.current.values().chain(directory.durable.values()) {
                assert!(self.inodes.contains_key(inode), "simfs: {dir:?} names a freed inode {inode}");
            }
        }
        for file in self.inodes.values() {
            assert!(file.shared_len <= file.current.len().min(file.durable.len()), "simfs: shared_len too long");
        }
    }
}

/// File-handle operations.
impl State {
    fn is_stale(&self, handle: Handle) -> bool {
        handle.epoch != self.epoch
    }

    fn check_handle(&self, handle: Handle) -> io::Result<()> {
        if self.is_stale(handle) {
            let message = "simfs: file handle opened before a crash";
            return Err(io::Error::new(io::ErrorKind::StaleNetworkFileHandle, message));
        }
        Ok(())
    }

    /// Appends and returns the new length.
    fn append(&mut self, handle: Handle, bytes: &[u8]) -> io::Result<usize> {
        let fault = self.begin_mutation()?;
        self.check_handle(handle)?;
        if let Some(error) = fault {
            let torn = if self.options.torn_failed_appends { self.rng.below(bytes.len()) } else { 0 };
            self.inode_mut(handle.inode).current.extend_from_slice(&bytes[..torn]);
            return Err(error);
        }
        let file = self.inode_mut(handle.inode);
        file.current.extend_from_slice(bytes);
        Ok(file.current.len())
    }

    /// Writes `bytes` at `offset` (at most the current length) and returns the new length.
    fn write_at(&mut self, handle: Handle, offset: u64, bytes: &[u8]) -> io::Result<usize> {
        let fault = self.begin_mutation()?;
        self.check_handle(handle)?;
        let current = self.inode(handle.inode).current.len();
        let offset = usize::try_from(offset)
            .ok()
            .filter(|&offset| offset <= current)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "simfs: a write past the end of the file"))?;
        let written = match fault {
            Some(_) if self.options.torn_failed_appends => self.rng.below(bytes.len()),
            Some(_) => 0,
            None => bytes.len(),
        };
        let file = self.inode_mut(handle.inode);
        let end = offset + written;
        if end > file.current.len() {
            file.current.resize(end, 0);
        }
        file.current[offset..end].copy_from_slice(&bytes[..written]);
        if written > 0 && offset < file.shared_len {
            file.shared_len = offset;
        }
        fail_if(fault)?;
        Ok(file.current.len())
    }

    fn sync(&mut self, handle: Handle) -> io::Result<()> {
        let fault = self.begin_mutation()?;
        self.check_handle(handle)?;
        fail_if(fault)?;
        let file = self.inode_mut(handle.inode);
        file.durable.truncate(file.shared_len);
        file.durable.extend_from_slice(&file.current[file.shared_len..]);
        file.shared_len = file.current.len();
        file.cut = false;
        Ok(())
    }

    fn truncate(&mut self, handle: Handle, len: u64) -> io::Result<()> {
        let fault = self.begin_mutation()?;
        self.check_handle(handle)?;
        let len = usize::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "simfs: too long"))?;
        fail_if(fault)?;
        // Like `set_len`: cuts, or extends with zeros.
        let file = self.inode_mut(handle.inode);
        file.current.resize(len, 0);
        file.shared_len = file.shared_len.min(len);
        file.cut = true;
        Ok(())
    }

    /// Releases a handle being dropped.
    fn close(&mut self, handle: Handle) {
        if self.is_stale(handle) {
            return;
        }
        let file = self.inode_mut(handle.inode);
        assert!(file.handles > 0, "simfs: closing a handle its inode does not count");
        file.handles -= 1;
        self.collect_garbage();
    }
}

impl Inode {
    /// How many bytes from `shared_len` on a crash may keep (in offset order), when the
    /// unsynced change is only writes (appends, and writes in place over the durable content)
    /// or a cut that left the durable content whole: everything from `shared_len` to the end, or
    /// to the last byte that differs when the file did not grow. Else (the durable content was
    /// cut into) 0: the change is lost whole.
    fn written_len(&self) -> usize {
        if self.shared_len != self.durable.len() && self.cut {
            return 0;
        }
        // Written in place only: up to the last byte that differs (what follows it is as durable,
        // such as the zeros of a fill that records were not yet written over).
        let end = if self.current.len() > self.durable.len() {
            self.current.len()
        } else {
            let differs = (self.shared_len..self.current.len()).rev().find(|&at| self.current[at] != self.durable[at]);
            differs.map_or(self.shared_len, |at| at + 1)
        };
        end - self.shared_len
    }

    /// Reverts to the durable content with the first `keep` unsynced bytes (from `shared_len`
    /// on) written over it, which become durable: the writes reached the disk in offset order
    /// and the crash cut them at one point.
    fn revert(&mut self, keep: usize) {
        assert!(keep <= self.written_len(), "simfs: a torn tail is longer than what was written");
        let kept = self.shared_len + keep;
        let overlap = kept.min(self.durable.len());
        if self.shared_len < overlap {
            self.durable[self.shared_len..overlap].copy_from_slice(&self.current[self.shared_len..overlap]);
        }
        if kept > self.durable.len() {
            let start = self.durable.len();
            self.durable.extend_from_slice(&self.current[start..kept]);
        }
        self.current.truncate(kept);
        if self.durable.len() > kept {
            self.current.extend_from_slice(&self.durable[kept..]);
        }
        self.shared_len = self.current.len();
        self.cut = false;
    }
}

/// Returns the injected error, if any.
fn fail_if(fault: Option<io::Error>) -> io::Result<()> {
    fault.map_or(Ok(()), Err)
}

fn not_found(what: &str, path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("simfs: no such {what}: {}", path.display()))
}

/// The path without `.` components; refuses `..` (it would alias directories).
fn normalize(path: &Path) -> io::Result<PathBuf> {
    if path.components().any(|c| c == Component::ParentDir) {
        let message = format!("simfs: `..` in {}", path.display());
        return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
    }
    Ok(path.components().filter(|c| *c != Component::CurDir).collect())
}

/// The directory and the file name of `path`.
fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let path = normalize(path)?;
    let invalid = || io::Error::new(io::ErrorKind::InvalidInput, format!("simfs: not a file path: {}", path.display()));
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(invalid)?.to_owned();
    let dir = path.parent().ok_or_else(invalid)?.to_path_buf();
    Ok((dir, name))
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, seedable, good enough for choosing torn lengths.
#[derive(Debug)]
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, bound)`, or 0 when `bound` is 0 (multiply-shift, no modulo bias to speak of).
    fn below(&mut self, bound: usize) -> usize {
        ((u128::from(self.next_u64()) * bound as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = "data";

    fn path(name: &str) -> PathBuf {
        Path::new(DIR).join(name)
    }

    fn dir() -> &'static Path {
        Path::new(DIR)
    }

    /// No torn writes: a crash keeps exactly the durable state.
    fn strict() -> SimFsOptions {
        SimFsOptions { torn_crash_writes: false, torn_failed_appends: false }
    }

    fn torn_crash() -> SimFsOptions {
        SimFsOptions { torn_crash_writes: true, torn_failed_appends: false }
    }

    /// A file system with the directory `data` created.
    fn setup(seed: u64, options: SimFsOptions) -> io::Result<SimFs> {
        let fs = SimFs::with_options(seed, options);
        fs.create_dir_all(dir())?;
        Ok(fs)
    }

    /// Creates `data/<name>` holding `bytes`, with file and directory synced.
    fn durable_file(fs: &SimFs, name: &str, bytes: &[u8]) -> io::Result<()> {
        let mut file = fs.create(&path(name))?;
        file.append(bytes)?;
        file.sync()?;
        fs.sync_dir(dir())
    }

    fn kind<T: fmt::Debug>(result: io::Result<T>) -> io::ErrorKind {
        match result {
            Ok(value) => panic!("expected an error, got {value:?}"),
            Err(error) => error.kind(),
        }
    }

    fn bits_differing(a: &[u8], b: &[u8]) -> u32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
    }

    #[test]
    fn unsynced_appends_are_lost_on_crash() -> io::Result<()> {
        let fs = setup(1, strict())?;
        durable_file(&fs, "log", b"synced")?;
        let mut file = fs.open_append(&path("log"))?;
        file.append(b"-unsynced")?;
        assert_eq!(fs.read(&path("log"))?, b"synced-unsynced");
        assert_eq!(fs.read_durable(&path("log")), Some(b"synced".to_vec()));
        fs.crash();
        assert_eq!(fs.read(&path("log"))?, b"synced");
        Ok(())
    }

    #[test]
    fn synced_appends_survive_crash() -> io::Result<()> {
        let fs = setup(1, SimFsOptions::default())?;
        durable_file(&fs, "log", b"one")?;
        let mut file = fs.open_append(&path("log"))?;
        file.append(b"-two")?;
        file.sync()?;
        file.append(b"-three")?;
        file.sync()?;
        fs.crash();
        assert_eq!(fs.read(&path("log"))?, b"one-two-three");
        assert_eq!(fs.durable_snapshot(), BTreeMap::from([(path("log"), b"one-two-three".to_vec())]));
        Ok(())
    }

    #[test]
    fn created_file_vanishes_on_crash_unless_its_directory_is_synced() -> io::Result<()> {
        let fs = setup(1, strict())?;
        let mut file = fs.create(&path("new"))?;
        file.append(b"bytes")?;
        file.sync()?;
        assert_eq!(fs.list(dir())?, ["new"]);
        assert!(fs.durable_file_names(dir()).is_empty());
        fs.crash();
        assert_eq!(kind(fs.read(&path("new"))), io::ErrorKind::NotFound);
        assert!(fs.list(dir())?.is_empty());

        let mut file = fs.create(&path("new"))?;
        fs.sync_dir(dir())?;
        file.append(b"unsynced")?;
        fs.crash();
        assert_eq!(fs.read(&path("new"))?, b"", "the name is durable, the content is not");
        Ok(())
    }

    #[test]
    fn rename_reverts_on_crash_unless_the_directory_is_synced() -> io::Result<()> {
        let fs = setup(1, strict())?;
        durable_file(&fs, "meta", b"old")?;
        let replace = |fs: &SimFs| -> io::Result<()> {
            let mut temp = fs.create(&path("meta.tmp"))?;
            temp.append(b"new")?;
            temp.sync()?;
            fs.rename(&path("meta.tmp"), &path("meta"))
        };
        replace(&fs)?;
        assert_eq!(fs.read(&path("meta"))?, b"new");
        assert_eq!(fs.list(dir())?, ["meta"]);
        fs.crash();
        assert_eq!(fs.read(&path("meta"))?, b"old", "the old target reappears");
        assert_eq!(fs.list(dir())?, ["meta"]);

        replace(&fs)?;
        fs.sync_dir(dir())?;
        fs.crash();
        assert_eq!(fs.read(&path("meta"))?, b"new");
        assert_eq!(fs.list(dir())?, ["meta"]);
        Ok(())
    }

    #[test]
    fn rename_across_directories_needs_both_synced() -> io::Result<()> {
        let fs = setup(1, strict())?;
        let other = Path::new("other");
        fs.create_dir_all(other)?;
        durable_file(&fs, "a", b"x")?;
        fs.rename(&path("a"), &other.join("a"))?;
        fs.sync_dir(other)?;
        fs.crash();
        // Only the target directory was synced: the file now has two names.
        assert_eq!(fs.read(&path("a"))?, b"x");
        assert_eq!(fs.read(&other.join("a"))?, b"x");
        fs.remove(&path("a"))?;
        fs.sync_dir(dir())?;
        fs.crash();
        assert!(fs.list(dir())?.is_empty());
        assert_eq!(fs.read(&other.join("a"))?, b"x");
        Ok(())
    }

    #[test]
    fn remove_reverts_on_crash_unless_the_directory_is_synced() -> io::Result<()> {
        let fs = setup(1, strict())?;
        durable_file(&fs, "seg", b"entries")?;
        fs.remove(&path("seg"))?;
        assert_eq!(kind(fs.read(&path("seg"))), io::ErrorKind::NotFound);
        fs.crash();
        assert_eq!(fs.read(&path("seg"))?, b"entries");

        fs.remove(&path("seg"))?;
        fs.sync_dir(dir())?;
        fs.crash();
        assert_eq!(kind(fs.read(&path("seg"))), io::ErrorKind::NotFound);
        assert!(fs.durable_snapshot().is_empty());
        assert!(fs.lock().inodes.is_empty(), "the removed file's inode is freed");
        Ok(())
    }

    #[test]
    fn torn_tail_keeps_a_prefix_of_the_unsynced_appends() -> io::Result<()> {
        let tail = b"0123456789abcdef";
        let mut kept_lengths = BTreeSet::new();
        for seed in 0..64 {
            let fs = setup(seed, torn_crash())?;
            durable_file(&fs, "log", b"durable|")?;
            let mut file = fs.open_append(&path("log"))?;
            file.append(&tail[..5])?;
            file.append(&tail[5..])?;
            fs.crash();
            let content = fs.read(&path("log"))?;
            let kept = content.len() - b"durable|".len();
            assert!(kept <= tail.len());
            assert_eq!(content, [&b"durable|"[..], &tail[..kept]].concat(), "seed {seed}");
            kept_lengths.insert(kept);
            fs.crash();
            assert_eq!(fs.read(&path("log"))?, content, "what survived a crash is durable");
        }
        assert!(kept_lengths.iter().any(|&k| k > 0 && k < tail.len()), "some tails are torn: {kept_lengths:?}");
        assert!(kept_lengths.len() > 4, "torn lengths vary with the seed: {kept_lengths:?}");
        Ok(())
    }

    #[test]
    fn write_at_overwrites_in_place_grows_at_the_end_and_refuses_holes() -> io::Result<()> {
        let fs = setup(1, strict())?;
        durable_file(&fs, "log", b"head|0000000000")?;
        let mut file = fs.open_append(&path("log"))?;
        file.write_at(5, b"abc")?;
        assert_eq!((fs.read(&path("log"))?, file.len()), (b"head|abc0000000".to_vec(), 15));
        file.write_at(13, b"xyz")?;
        assert_eq!((fs.read(&path("log"))?, file.len()), (b"head|abc00000xyz".to_vec(), 16));
        assert_eq!(kind(file.write_at(17, b"!")), io::ErrorKind::InvalidInput, "a hole");
        fs.crash();
        assert_eq!(fs.read(&path("log"))?, b"head|0000000000", "nothing was synced");
        let mut file = fs.open_append(&path("log"))?;
        file.write_at(5, b"abc")?;
        file.sync()?;
        fs.crash();
        assert_eq!(fs.read(&path("log"))?, b"head|abc0000000", "synced in place");
        Ok(())
    }

    #[test]
    fn torn_tail_keeps_a_prefix_of_writes_in_place_over_the_durable_content() -> io::Result<()> {
        let zeros = [0u8; 16];
        let mut kept_lengths = BTreeSet::new();
        for seed in 0..64 {
            let fs = setup(seed, torn_crash())?;
            durable_file(&fs, "log", &[&b"head|"[..], &zeros].concat())?;
            let mut file = fs.open_append(&path("log"))?;
            // Records over the zeros, then more zeros past the end (a fill ahead).
            file.write_at(5, b"0123456789")?;
            file.write_at(15, b"abcdefgh")?;
            file.write_at(23, &[0; 4])?;
            let written = fs.read(&path("log"))?;
            fs.crash();
            let content = fs.read(&path("log"))?;
            let durable = [&b"head|"[..], &zeros].concat();
            // A prefix of what was written from offset 5 on, the durable content after it.
            let kept = (5..=written.len())
                .find(|&at| content == [&written[..at], durable.get(at..).unwrap_or_default()].concat())
                .unwrap_or_else(|| panic!("seed {seed}: {content:?} is no prefix of {written:?} over {durable:?}"));
            kept_lengths.insert(kept - 5);
            fs.crash();
            assert_eq!(fs.read(&path("log"))?, content, "what survived a crash is durable");
        }
        assert!(kept_lengths.iter().any(|&k| k > 0 && k < 22), "some writes are torn: {kept_lengths:?}");
        assert!(kept_lengths.len() > 4, "torn lengths vary with the seed: {kept_lengths:?}");
        Ok(())
    }

    #[test]
    fn a_crash_tears_the_bytes_written_not_the_zeros_after_them_that_did_not_change() -> io::Result<()> {
        let mut inside = BTreeSet::new();
        for seed in 0..64 {
            let fs = setup(seed, torn_crash())?;
            durable_file(&fs, "log", &[0; 1000])?;
            let mut file = fs.open_append(&path("log"))?;
            file.write_at(0, b"12345678")?;
            fs.crash();
            let content = fs.read(&path("log"))?;
            let kept = content.iter().take_while(|&&byte| byte != 0).count();
            assert_eq!(content, [&b"12345678"[..kept], &[0; 1000][kept..]].concat(), "seed {seed}");
            inside.insert(kept);
        }
        // Drawn over the 8 bytes that changed, not over the 1000 of the file: most crashes tear
        // inside them.
        assert!(inside.iter().filter(|&&kept| kept > 0 && kept < 8).count() > 3, "torn lengths: {inside:?}");
        Ok(())
    }

    #[test]
    fn a_failed_write_at_may_leave_a_torn_prefix_in_place() -> io::Result<()> {
        let mut torn = false;
        for seed in 0..32 {
            let fs = setup(seed, SimFsOptions::default())?;
            durable_file(&fs, "log", b"head|00000000")?;
            let mut file = fs.open_append(&path("log"))?;
            fs.fail_after(0, io::ErrorKind::Other);
            assert_eq!(kind(file.write_at(5, b"abcdefgh")), io::ErrorKind::Other);
            let content = fs.read(&path("log"))?;
            let kept = content[5..].iter().take_while(|&&byte| byte != b'0').count();
            assert_eq!(content, [&b"head|"[..], &b"abcdefgh"[..kept], &b"00000000"[kept..]].concat(), "seed {seed}");
            torn |= kept > 0;
        }
        assert!(torn, "some failed writes leave a prefix");
        Ok(())
    }

    #[test]
    fn only_pure_appends_can_be_torn() -> io::Result<()> {
        for seed in 0..32 {
            let fs = setup(seed, torn_crash())?;
            durable_file(&fs, "log", b"abcdef")?;
            durable_file(&fs, "meta", b"old")?;
            let mut file = fs.open_append(&path("log"))?;
            file.truncate(3)?;
            file.append(b"xyz-and-more")?;
            let mut meta = fs.create(&path("meta"))?;
            meta.append(b"new-and-longer")?;
            fs.crash();
            assert_eq!(fs.read(&path("log"))?, b"abcdef", "seed {seed}");
            assert_eq!(fs.read(&path("meta"))?, b"old", "seed {seed}");
        }
        Ok(())
    }

    /// One workload of one operation of each kind, each independent of the others' success.
    fn mutations(fs: &SimFs, file: &mut SimFile) -> Vec<io::Result<()>> {
        vec![
            file.append(b"x"),
            file.sync(),
            fs.create(&path("b")).map(drop),
            fs.rename(&path("y"), &path("w")),
            fs.sync_dir(dir()),
            file.truncate(1),
            fs.remove(&path("z")),
            file.append(b"y"),
        ]
    }

    #[test]
    fn fail_after_fails_exactly_the_chosen_operation() -> io::Result<()> {
        for n in 0..8 {
            let fs = setup(1, SimFsOptions::default())?;
            for name in ["a", "y", "z"] {
                durable_file(&fs, name, b"0")?;
            }
            let mut file = fs.open_append(&path("a"))?;
            let wanted = if n % 2 == 0 { io::ErrorKind::StorageFull } else { io::ErrorKind::Other };
            fs.fail_after(n, wanted);
            let before = fs.op_count();
            let results = mutations(&fs, &mut file);
            assert_eq!(fs.op_count() - before, 8);
            for (index, result) in results.into_iter().enumerate() {
                if index as u64 == n {
                    assert_eq!(kind(result), wanted, "operation {index}");
                } else {
                    result?;
                }
            }
        }
        Ok(())
    }

    #[test]
    fn only_mutations_count_as_operations() -> io::Result<()> {
        let fs = setup(1, strict())?;
        durable_file(&fs, "a", b"0")?;
        assert_eq!(fs.op_count(), 4);
        fs.fail_after(0, io::ErrorKind::StorageFull);
        fs.create_dir_all(Path::new("more/dirs"))?;
        fs.read(&path("a"))?;
        fs.read_at(&path("a"), 0, 1)?;
        fs.list(dir())?;
        let mut file = fs.open_append(&path("a"))?;
        assert_eq!(file.len(), 1);
        assert_eq!(fs.op_count(), 4);
        assert_eq!(kind(file.append(b"1")), io::ErrorKind::StorageFull);
        file.append(b"1")?;
        assert_eq!(fs.op_count(), 6);
        Ok(())
    }

    #[test]
    fn read_at_sees_the_current_content_until_a_halt() -> io::Result<()> {
        let fs = setup(1, strict())?;
        durable_file(&fs, "a", b"durable")?;
        fs.open_append(&path("a"))?.append(b" and current")?;
        assert_eq!(fs.read_at(&path("a"), 4, 9)?, b"ble and c");
        assert_eq!(fs.read_at(&path("a"), 14, 100)?, b"rrent");
        assert_eq!(fs.read_at(&path("a"), 19, 1)?, b"");
        assert_eq!(fs.read_at(&path("a"), u64::MAX, usize::MAX)?, b"");
        assert_eq!(kind(fs.read_at(&path("b"), 0, 1)), io::ErrorKind::NotFound);
        fs.crash_after(0);
        assert_eq!(kind(fs.create(&path("b"))), io::ErrorKind::Other);
        assert_eq!(kind(fs.read_at(&path("a"), 0, 1)), io::ErrorKind::Other);
        fs.crash();
        assert_eq!(fs.read_at(&path("a"), 0, 100)?, b"durable");
        Ok(())
    }

    #[test]
    fn failed_operations_have_no_effect() -> io::Result<()> {
        let fs = setup(1, strict())?;
        durable_file(&fs, "a", b"0")?;
        let mut file = fs.open_append(&path("a"))?;
        fs.fail_after(0, io::ErrorKind::Other);
        assert_eq!(kind(file.append(b"lost")), io::ErrorKind::Other);
        assert_eq!(fs.read(&path("a"))?, b"0");
        file.append(b"1")?;
        fs.fail_after(0, io::ErrorKind::Other);
        assert_eq!(kind(file.sync()), io::ErrorKind::Other);
        fs.fail_after(0, io::ErrorKind::Other);
        assert_eq!(kind(fs.rename(&path("a"), &path("b"))), io::ErrorKind::Other);
        fs.fail_after(0, io::ErrorKind::Other);
        assert_eq!(kind(fs.remove(&path("a"))), io::ErrorKind::Other);
        fs.fail_after(0, io::ErrorKind::Other);
        assert_eq!(kind(fs.create(&path("c"))), io::ErrorKind::Other);
        fs.fail_after(0, io::ErrorKind::Other);
        assert_eq!(kind(file.truncate(0)), io::ErrorKind::Other);
        assert_eq!(fs.list(dir())?, ["a"]);
        assert_eq!(fs.read(&path("a"))?, b"01");
        fs.crash();
        assert_eq!(fs.read(&path("a"))?, b"0", "the failed sync made nothing durable");
        Ok(())
    }

    #[test]
    fn a_failed_append_may_leave_a_strict_prefix() -> io::Result<()> {
        let bytes = b"0123456789";
        let mut written = BTreeSet::new();
        for seed in 0..64 {
            let fs = setup(seed, SimFsOptions { torn_crash_writes: false, torn_failed_appends: true })?;
            durable_file(&fs, "a", b"ab")?;
            let mut file = fs.open_append(&path("a"))?;
            fs.fail_after(0, io::ErrorKind::StorageFull);
            assert_eq!(kind(file.append(bytes)), io::ErrorKind::StorageFull);
            let content = fs.read(&path("a"))?;
            let torn = content.len() - 2;
            assert!(torn < bytes.len(), "seed {seed}: a failed append is never whole");
            assert_eq!(content, [&b"ab"[..], &bytes[..torn]].concat());
            assert_eq!(file.len(), content.len() as u64);
            written.insert(torn);
        }
        assert!(written.iter().any(|&n| n > 0), "some failed appends leave bytes: {written:?}");
        Ok(())
    }

    #[test]
    fn crash_after_halts_the_machine_until_crash() -> io::Result<()> {
        let fs = setup(1, strict())?;
        durable_file(&fs, "a", b"1")?;
        let mut file = fs.open_append(&path("a"))?;
        fs.crash_after(2);
        file.append(b"2")?;
        file.sync()?;
        assert!(!fs.is_halted());
        assert_eq!(kind(file.append(b"3")), io::ErrorKind::Other);
        assert!(fs.is_halted());
        assert_eq!(kind(file.sync()), io::ErrorKind::Other);
        assert_eq!(kind(fs.create(&path("b"))), io::ErrorKind::Other);
        assert_eq!(kind(fs.sync_dir(dir())), io::ErrorKind::Other);
        assert_eq!(kind(fs.read(&path("a"))), io::ErrorKind::Other);
        assert_eq!(kind(fs.list(dir())), io::ErrorKind::Other);
        assert_eq!(kind(fs.open_append(&path("a"))), io::ErrorKind::Other);
        assert_eq!(kind(fs.create_dir_all(Path::new("x"))), io::ErrorKind::Other);
        assert_eq!(fs.read_durable(&path("a")), Some(b"12".to_vec()), "inspection still works");
        fs.crash();
        assert!(!fs.is_halted());
        assert_eq!(fs.read(&path("a"))?, b"12");
        assert_eq!(fs.list(dir())?, ["a"]);
        let mut file = fs.open_append(&path("a"))?;
        file.append(b"3")?;
        file.sync()?;
        assert_eq!(fs.read(&path("a"))?, b"123");
        Ok(())
    }

    #[test]
    fn crash_after_zero_halts_at_the_next_operation() -> io::Result<()> {
        let fs = setup(1, strict())?;
        fs.crash_after(0);
        fs.list(dir())?;
        assert_eq!(kind(fs.create(&path("a"))), io::ErrorKind::Other);
        fs.crash();
        fs.create(&path("a"))?;
        Ok(())
    }

    #[test]
    fn flip_bit_changes_exactly_one_bit() -> io::Result<()> {
        let fs = setup(1, strict())?;
        durable_file(&fs, "a", b"01234567")?;
        let mut file = fs.open_append(&path("a"))?;
        file.append(b"89")?;
        let (durable, current) = (fs.read_durable(&path("a")), fs.read(&path("a"))?);
        fs.flip_bit(&path("a"), 3, 5)?;
        let (durable_flipped, current_flipped) = (fs.read_durable(&path("a")), fs.read(&path("a"))?);
        assert_eq!(bits_differing(&current, &current_flipped), 1);
        assert_eq!(current_flipped[3], current[3] ^ 0b10_0000);
        let (durable, durable_flipped) = (durable.unwrap_or_default(), durable_flipped.unwrap_or_default());
        assert_eq!(bits_differing(&durable, &durable_flipped), 1);
        assert_eq!(durable_flipped[3], durable[3] ^ 0b10_0000);

        fs.flip_bit(&path("a"), 9, 0)?;
        assert_eq!(bits_differing(&current_flipped, &fs.read(&path("a"))?), 1, "an unsynced byte rots in memory");
        assert_eq!(fs.read_durable(&path("a")), Some(durable_flipped.clone()));
        fs.crash();
        assert_eq!(fs.read(&path("a"))?, durable_flipped, "the rot is on disk");

        assert_eq!(kind(fs.flip_bit(&path("a"), 8, 0)), io::ErrorKind::InvalidInput);
        assert_eq!(kind(fs.flip_bit(&path("a"), 0, 8)), io::ErrorKind::InvalidInput);
        assert_eq!(kind(fs.flip_bit(&path("missing"), 0, 0)), io::ErrorKind::NotFound);
        Ok(())
    }

    #[test]
    fn handles_from_before_a_crash_fail() -> io::Result<()> {
        let fs = setup(1, strict())?;
        durable_file(&fs, "a", b"abc")?;
        let mut old = fs.open_append(&path("a"))?;
        let mut created = fs.create(&path("b"))?;
        fs.crash();
        let stale = io::ErrorKind::StaleNetworkFileHandle;
        assert_eq!(kind(old.append(b"x")), stale);
        assert_eq!(kind(old.sync()), stale);
        assert_eq!(kind(old.truncate(0)), stale);
        assert_eq!(kind(created.append(b"x")), stale);
        assert_eq!(old.len(), 3, "a stale handle reports its last known length");
        let mut new = fs.open_append(&path("a"))?;
        new.append(b"d")?;
        assert_eq!(fs.read(&path("a"))?, b"abcd");
        drop(old);
        drop(created);
        assert_eq!(new.len(), 4, "dropping stale handles leaves live ones alone");
        Ok(())
    }

    /// Appends, crashes three times, and returns every read along the way.
    fn torn_workload(seed: u64) -> io::Result<Vec<Vec<u8>>> {
        let fs = setup(seed, SimFsOptions::default())?;
        durable_file(&fs, "a", b"start")?;
        durable_file(&fs, "b", b"")?;
        let mut reads = Vec::new();
        for round in 0..3u8 {
            for name in ["a", "b"] {
                let mut file = fs.open_append(&path(name))?;
                file.append(&[round; 7])?;
                fs.fail_after(0, io::ErrorKind::Other);
                assert!(file.append(&[round + 10; 9]).is_err());
                file.append(&[round + 20; 11])?;
            }
            fs.crash();
            reads.push(fs.read(&path("a"))?);
            reads.push(fs.read(&path("b"))?);
        }
        Ok(reads)
    }

    #[test]
    fn same_seed_same_torn_lengths() -> io::Result<()> {
        assert_eq!(torn_workload(42)?, torn_workload(42)?);
        let outcomes: BTreeSet<Vec<Vec<u8>>> = (0..16).map(torn_workload).collect::<io::Result<_>>()?;
        assert!(outcomes.len() > 1, "the seed drives the torn lengths");
        Ok(())
    }

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        let mut rng = SplitMix64 { state: 1_234_567 };
        let first: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(first, [6_457_827_717_110_365_317, 3_203_168_211_198_807_973, 9_817_491_932_198_370_423]);
        assert!((0..1000).all(|_| rng.below(7) < 7));
        assert_eq!(rng.below(0), 0);
    }

    #[test]
    fn missing_files_and_directories_are_not_found() -> io::Result<()> {
        let fs = setup(1, strict())?;
        let not_found = io::ErrorKind::NotFound;
        assert_eq!(kind(fs.open_append(&path("missing"))), not_found);
        assert_eq!(kind(fs.remove(&path("missing"))), not_found);
        assert_eq!(kind(fs.rename(&path("missing"), &path("b"))), not_found);
        assert_eq!(kind(fs.read(&path("missing"))), not_found);
        assert_eq!(kind(fs.create(Path::new("nowhere/a"))), not_found);
        assert_eq!(kind(fs.list(Path::new("nowhere"))), not_found);
        assert_eq!(kind(fs.sync_dir(Path::new("nowhere"))), not_found);
        durable_file(&fs, "a", b"")?;
        assert_eq!(kind(fs.rename(&path("a"), Path::new("nowhere/a"))), not_found);
        assert_eq!(fs.list(dir())?, ["a"], "a failed rename keeps the source");
        Ok(())
    }

    #[test]
    fn paths_directories_and_listing() -> io::Result<()> {
        let fs = setup(1, strict())?;
        for name in ["b", "c", "a"] {
            fs.create(&path(name))?;
        }
        fs.create_dir_all(&path("sub/deeper"))?;
        assert_eq!(fs.list(dir())?, ["a", "b", "c"], "sorted, files only");
        assert_eq!(fs.list(Path::new("./data/"))?, ["a", "b", "c"], "`.` and trailing slashes are ignored");
        assert_eq!(kind(fs.list(Path::new("data/sub/.."))), io::ErrorKind::InvalidInput);
        assert_eq!(kind(fs.create(&path("sub"))), io::ErrorKind::IsADirectory);
        assert_eq!(kind(fs.create_dir_all(&path("a/x"))), io::ErrorKind::AlreadyExists);
        assert_eq!(kind(fs.create(Path::new("/"))), io::ErrorKind::InvalidInput);
        fs.create(Path::new("top"))?;
        fs.create_dir_all(Path::new("/abs"))?;
        fs.create(Path::new("/abs/f"))?;
        assert_eq!(fs.list(Path::new(""))?, ["top"]);
        assert_eq!(fs.list(Path::new("/abs"))?, ["f"]);
        Ok(())
    }

    #[test]
    fn create_over_an_existing_file_truncates_the_same_inode() -> io::Result<()> {
        let fs = setup(1, strict())?;
        durable_file(&fs, "a", b"old")?;
        let old = fs.open_append(&path("a"))?;
        let mut new = fs.create(&path("a"))?;
        assert_eq!(old.len(), 0, "both handles see the one inode");
        new.append(b"new!")?;
        assert_eq!(old.len(), 4);
        fs.crash();
        assert_eq!(fs.read(&path("a"))?, b"old", "the truncation was not synced");
        let mut new = fs.create(&path("a"))?;
        new.append(b"new")?;
        new.sync()?;
        fs.crash();
        assert_eq!(fs.read(&path("a"))?, b"new");
        Ok(())
    }

    #[test]
    fn a_handle_follows_its_inode_across_rename_and_remove() -> io::Result<()> {
        let fs = setup(1, strict())?;
        durable_file(&fs, "a", b"1")?;
        let mut file = fs.open_append(&path("a"))?;
        fs.rename(&path("a"), &path("b"))?;
        file.append(b"2")?;
        assert_eq!(fs.read(&path("b"))?, b"12");
        fs.remove(&path("b"))?;
        fs.sync_dir(dir())?;
        file.append(b"3")?;
        file.sync()?;
        assert_eq!(file.len(), 3);
        assert_eq!(fs.lock().inodes.len(), 1, "an open handle keeps its unnamed inode");
        drop(file);
        assert!(fs.lock().inodes.is_empty(), "the last handle frees it");
        Ok(())
    }

    #[test]
    fn truncate_cuts_or_zero_extends_and_is_durable_after_sync() -> io::Result<()> {
        let fs = setup(1, SimFsOptions::default())?;
        durable_file(&fs, "a", b"abcdef")?;
        let mut file = fs.open_append(&path("a"))?;
        file.truncate(2)?;
        assert_eq!(file.len(), 2);
        file.sync()?;
        file.truncate(4)?;
        assert_eq!(fs.read(&path("a"))?, b"ab\0\0");
        file.sync()?;
        file.append(b"tail")?;
        file.truncate(4)?;
        fs.crash();
        assert_eq!(fs.read(&path("a"))?, b"ab\0\0");
        Ok(())
    }

    #[test]
    fn clones_share_one_disk() -> io::Result<()> {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SimFs>();
        assert_send_sync::<SimFile>();
        let fs = setup(1, strict())?;
        let other = fs.clone();
        other.create(&path("a"))?.append(b"x")?;
        assert_eq!(fs.read(&path("a"))?, b"x");
        fs.crash();
        assert_eq!(kind(other.read(&path("a"))), io::ErrorKind::NotFound);
        assert!(format!("{other:?}").contains("op_count: 2"));
        Ok(())
    }

    fn record<T: fmt::Debug>(transcript: &mut Vec<String>, result: io::Result<T>) {
        transcript.push(format!("{:?}", result.map_err(|e| e.kind())));
    }

    /// A scripted session whose observable results must not depend on the file system.
    fn session<F: FileSystem>(fs: &F, root: &Path) -> io::Result<Vec<String>> {
        let dir = root.join("d");
        let path = |name: &str| dir.join(name);
        let mut out = Vec::new();
        fs.create_dir_all(&dir)?;
        record(&mut out, fs.list(&dir));
        let mut a = fs.create(&path("a"))?;
        a.append(b"hello")?;
        a.sync()?;
        record(&mut out, Ok(a.len()));
        let mut b = fs.create(&path("b"))?;
        b.append(b"bee")?;
        record(&mut out, fs.list(&dir));
        record(&mut out, fs.rename(&path("a"), &path("b")));
        record(&mut out, fs.list(&dir));
        record(&mut out, fs.read(&path("b")));
        record(&mut out, fs.read(&path("a")));
        let mut c = fs.open_append(&path("b"))?;
        record(&mut out, Ok(c.len()));
        c.append(b" world")?;
        c.truncate(7)?;
        c.truncate(9)?;
        record(&mut out, Ok(c.len()));
        record(&mut out, fs.read(&path("b")));
        for (offset, len) in [(0, 4), (3, 100), (8, 5), (9, 5), (100, 1), (0, 0)] {
            record(&mut out, fs.read_at(&path("b"), offset, len));
        }
        record(&mut out, fs.read_at(&path("missing"), 0, 1));
        record(&mut out, fs.open_append(&path("missing")).map(|f| f.len()));
        record(&mut out, fs.remove(&path("missing")));
        record(&mut out, fs.rename(&path("missing"), &path("x")));
        record(&mut out, fs.sync_dir(&dir));
        record(&mut out, fs.create(&path("b")).map(|f| f.len()));
        record(&mut out, fs.read(&path("b")));
        record(&mut out, fs.remove(&path("b")));
        record(&mut out, fs.list(&dir));
        Ok(out)
    }

    #[test]
    fn behaves_like_the_real_file_system() -> io::Result<()> {
        let root = std::env::temp_dir().join(format!("raft-storage-simfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let real = session(&crate::fs::StdFs, &root);
        std::fs::remove_dir_all(&root)?;
        let simulated = session(&SimFs::new(1), &root)?;
        assert_eq!(simulated, real?);
        Ok(())
    }
}
