//! A file system that calls a hook before each partial read, and a gate that holds a thread at
//! a point until the test releases it: for tests of what runs while a read or a sync is held.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use raft_storage::FileSystem;
use raft_storage::testing::{SimFile, SimFs};

/// Holds the first thread that passes it once armed, until released.
#[derive(Default)]
pub struct HoldGate {
    /// (armed, entered, released)
    state: Mutex<(bool, bool, bool)>,
    changed: Condvar,
}

impl HoldGate {
    /// The next [`HoldGate::pass`] holds its thread.
    pub fn arm(&self) {
        *self.state.lock().expect("gate") = (true, false, false);
    }

    /// Returns once a thread is held.
    pub fn wait_entered(&self) {
        let mut state = self.state.lock().expect("gate");
        while !state.1 {
            state = self.changed.wait(state).expect("gate");
        }
    }

    /// Lets the held thread (or the next to pass) go.
    pub fn release(&self) {
        self.state.lock().expect("gate").2 = true;
        self.changed.notify_all();
    }

    /// Passes at once unless armed; armed, holds until released (once).
    pub fn pass(&self) {
        let mut state = self.state.lock().expect("gate");
        if !state.0 {
            return;
        }
        (state.0, state.1) = (false, true);
        self.changed.notify_all();
        while !state.2 {
            state = self.changed.wait(state).expect("gate");
        }
    }
}

/// A [`SimFs`] that calls its hook with the path before each `read_at`.
#[derive(Clone)]
pub struct ReadHookFs {
    inner: SimFs,
    hook: Arc<dyn Fn(&Path) + Send + Sync>,
}

impl ReadHookFs {
    pub fn new(inner: SimFs, hook: impl Fn(&Path) + Send + Sync + 'static) -> Self {
        ReadHookFs { inner, hook: Arc::new(hook) }
    }
}

impl FileSystem for ReadHookFs {
    type File = SimFile;
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn create(&self, path: &Path) -> std::io::Result<SimFile> {
        self.inner.create(path)
    }
    fn open_append(&self, path: &Path) -> std::io::Result<SimFile> {
        self.inner.open_append(path)
    }
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.inner.read(path)
    }
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        (self.hook)(path);
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
