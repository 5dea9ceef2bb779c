//! The store's directory and open files: every file-system call the store makes goes through
//! here, so that each failure becomes a [`DiskError::Io`] naming the operation and the file.

use std::path::{Path, PathBuf};

use super::error::{DiskError, IoOp, io_error};
use crate::fs::{DirLock, FileSystem, FsFile, LOCK_FILE};

/// A directory on a file system.
pub(crate) struct Directory<F> {
    fs: F,
    path: PathBuf,
    /// The exclusive hold on the directory, for a store's top-level directory.
    _lock: DirLock,
}

impl<F: FileSystem> Directory<F> {
    pub(crate) fn new(fs: F, path: PathBuf) -> Self {
        Directory { fs, path, _lock: DirLock::none() }
    }

    /// The store directory `path`, held exclusively ([`FileSystem::lock_dir`]) before anything
    /// in it is read or repaired; with `create`, the directory is created first if missing.
    /// Held elsewhere: [`DiskError::InUse`]; missing (without `create`):
    /// [`DiskError::NotInitialized`].
    pub(crate) fn locked(fs: F, path: PathBuf, create: bool) -> Result<Self, DiskError> {
        let mut dir = Directory::new(fs, path);
        if create {
            dir.create_all()?;
        }
        dir._lock = match dir.fs.lock_dir(&dir.path) {
            Ok(lock) => lock,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Err(DiskError::InUse(dir.path)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(DiskError::NotInitialized(dir.path));
            }
            Err(error) => return Err(io_error(IoOp::Open, &dir.path.join(LOCK_FILE))(error)),
        };
        Ok(dir)
    }

    /// The file system, for the calls whose failures mean more than an I/O error.
    pub(crate) fn fs(&self) -> &F {
        &self.fs
    }

    /// The directory's own path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The path of the file `name` in the directory.
    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Creates the directory and its parents if missing.
    pub(crate) fn create_all(&self) -> Result<(), DiskError> {
        self.fs.create_dir_all(&self.path).map_err(io_error(IoOp::Create, &self.path))
    }

    /// The names of the files in the directory, sorted.
    pub(crate) fn list(&self) -> Result<Vec<String>, DiskError> {
        self.fs.list(&self.path).map_err(io_error(IoOp::List, &self.path))
    }

    /// Creates `path` empty and opens it for appending.
    pub(crate) fn create(&self, path: PathBuf) -> Result<OpenFile<F::File>, DiskError> {
        let file = self.fs.create(&path).map_err(io_error(IoOp::Create, &path))?;
        Ok(OpenFile { file, path })
    }

    /// Opens the existing file `path` for appending.
    pub(crate) fn open_append(&self, path: PathBuf) -> Result<OpenFile<F::File>, DiskError> {
        let file = self.fs.open_append(&path).map_err(io_error(IoOp::Open, &path))?;
        Ok(OpenFile { file, path })
    }

    /// Reads the whole file `path`.
    pub(crate) fn read(&self, path: &Path) -> Result<Vec<u8>, DiskError> {
        self.fs.read(path).map_err(io_error(IoOp::Read, path))
    }

    /// Replaces `to` with `from`; a failure names `to`.
    pub(crate) fn rename(&self, from: &Path, to: &Path) -> Result<(), DiskError> {
        self.fs.rename(from, to).map_err(io_error(IoOp::Rename, to))
    }

    /// Removes the file `path` (durable after [`Directory::sync`]).
    pub(crate) fn remove(&self, path: &Path) -> Result<(), DiskError> {
        self.fs.remove(path).map_err(io_error(IoOp::Remove, path))
    }

    /// Removes the file `path` if it is there (durable after [`Directory::sync`]): for garbage,
    /// whose absence is what the caller wants, so a file already gone is no error.
    pub(crate) fn remove_if_present(&self, path: &Path) -> Result<(), DiskError> {
        match self.fs.remove(path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            result => result.map_err(io_error(IoOp::Remove, path)),
        }
    }

    /// Makes the directory's entries durable.
    pub(crate) fn sync(&self) -> Result<(), DiskError> {
        self.fs.sync_dir(&self.path).map_err(io_error(IoOp::SyncDir, &self.path))
    }
}

/// An open file and its path, which its failures name.
pub(crate) struct OpenFile<File> {
    file: File,
    path: PathBuf,
}

impl<File: FsFile> OpenFile<File> {
    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `bytes` at the end.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> Result<(), DiskError> {
        self.file.append(bytes).map_err(io_error(IoOp::Append, &self.path))
    }

    /// Writes `bytes`, the last records of a segment whose records now end at `records_end`,
    /// where they go: over zeros filled earlier, or growing the file. Once they reach the file's
    /// end, fills the next `fill_ahead` bytes after them with zeros, up to `fill_limit` at the
    /// most, so that the syncs after the next one change no file length (the policy of both
    /// logs: `DiskOptions::preallocate_bytes`, `WalOptions::preallocate_bytes`; 0 fills
    /// nothing). Returns the file's length. A failure is an append's.
    pub(crate) fn write_records(
        &mut self,
        records_end: u64,
        bytes: &[u8],
        fill_ahead: u64,
        fill_limit: u64,
    ) -> Result<u64, DiskError> {
        let start = records_end - bytes.len() as u64;
        self.file.write_at(start, bytes).map_err(io_error(IoOp::Append, &self.path))?;
        let fill_end = records_end.saturating_add(fill_ahead).min(fill_limit);
        if self.file.len() <= records_end && fill_end > records_end {
            let zeros = vec![0; (fill_end - records_end) as usize];
            self.file.write_at(records_end, &zeros).map_err(io_error(IoOp::Append, &self.path))?;
        }
        Ok(self.file.len())
    }

    /// Cuts off the zeros filled after a segment's records (which end at `records_end`), if any:
    /// before a newer segment starts, as only the newest segment may end in zeros. Durable after
    /// the next sync.
    pub(crate) fn cut_fill(&mut self, records_end: u64) -> Result<(), DiskError> {
        if self.file.len() > records_end {
            self.truncate(records_end)?;
        }
        Ok(())
    }

    /// Makes everything written so far durable.
    pub(crate) fn sync(&mut self) -> Result<(), DiskError> {
        self.file.sync().map_err(io_error(IoOp::Sync, &self.path))
    }

    /// Cuts the file to `len` bytes.
    pub(crate) fn truncate(&mut self, len: u64) -> Result<(), DiskError> {
        self.file.truncate(len).map_err(io_error(IoOp::Truncate, &self.path))
    }
}
