//! The small file-system surface the durable store needs, so that tests and the simulator can
//! swap in a fault-injecting file system (`testing::SimFs`, feature `testing`) for the real one
//! ([`StdFs`]).
//!
//! The contract mirrors POSIX durability: bytes written to a file are durable only after
//! [`FsFile::sync`]; a new, renamed or removed directory entry is durable only after
//! [`FileSystem::sync_dir`] on its directory.

use std::io;
use std::path::Path;

/// Directory and file operations.
pub trait FileSystem {
    /// An open file.
    type File: FsFile;

    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Creates `path` empty (truncating an existing file) and opens it for appending.
    fn create(&self, path: &Path) -> io::Result<Self::File>;
    /// Opens the existing file `path` for appending at its end.
    fn open_append(&self, path: &Path) -> io::Result<Self::File>;
    /// Reads the whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Reads up to `len` bytes of `path` from byte `offset` on. Fewer bytes only where the file
    /// ends (none at or past its end), so a large file can be read piece by piece in bounded
    /// memory.
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// The names of the files in `dir`, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Makes the directory entries of `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// Takes an exclusive hold on the existing directory `dir` for as long as the returned
    /// [`DirLock`] lives, so that no other process (or other store in this one) opens the same
    /// store at once: two writers would interleave their records and repair each other's tails.
    /// Fails with [`io::ErrorKind::WouldBlock`] if the directory is held already, and with
    /// [`io::ErrorKind::NotFound`] if it does not exist. The default holds nothing: for file
    /// systems with a single user by construction (a simulator's, a test's).
    fn lock_dir(&self, dir: &Path) -> io::Result<DirLock> {
        let _ = dir;
        Ok(DirLock::none())
    }
}

/// The name of the file whose lock holds a store's directory ([`FileSystem::lock_dir`]).
pub const LOCK_FILE: &str = "LOCK";

/// An exclusive hold on a directory ([`FileSystem::lock_dir`]), released when dropped (and by the
/// operating system when the process ends, however it ends).
pub struct DirLock {
    _held: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl DirLock {
    /// A hold that holds nothing.
    pub fn none() -> Self {
        DirLock { _held: None }
    }

    /// A hold kept for as long as `guard` lives.
    pub fn holding(guard: impl std::any::Any + Send + Sync) -> Self {
        DirLock { _held: Some(Box::new(guard)) }
    }
}

impl std::fmt::Debug for DirLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirLock").field("held", &self._held.is_some()).finish()
    }
}

/// An open file that is appended to, written in place, synced or truncated.
pub trait FsFile {
    /// Appends `bytes` at the end (the length this handle knows: what it found on opening, grown
    /// by its writes), also right after a [`FsFile::truncate`].
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Writes `bytes` at byte `offset`, which is at most the current length (no holes):
    /// overwriting what lies there and growing the file if they run past its end. Both
    /// write-ahead logs write their records this way into space they filled with zeros
    /// beforehand, so that most of their syncs change no file length.
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// Makes everything written so far durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes (durable after the next `sync`); the next `append` writes at
    /// `len`.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// The current length.
    fn len(&self) -> u64;
    /// Whether the file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The most bytes [`read_range`] reserves before it reads (a larger read grows as it goes).
const READ_RANGE_RESERVE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Reads up to `len` bytes of `file` from byte `offset` on, fewer only where it ends: the body
/// of [`FileSystem::read_at`] for any file that reads and seeks (the real one, a simulated one).
pub fn read_range(mut file: impl std::io::Read + std::io::Seek, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::io::{Read, SeekFrom};
    file.seek(SeekFrom::Start(offset))?;
    // Reserved up front: grown by `read_to_end`, a vector of `len` bytes ends with room for up
    // to twice as many (a 1 MiB snapshot piece held 2 MiB). Bounded, for callers that ask for
    // "everything" with a huge `len`.
    let mut bytes = Vec::with_capacity(len.min(READ_RANGE_RESERVE_BYTES_MAX));
    // `read_to_end` retries short reads, so only the end of the file stops it early.
    file.take(len as u64).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdFs;

/// Writes all of `bytes` at `offset` of `file`, whatever its file offset.
#[cfg(unix)]
fn write_all_at(file: &std::fs::File, offset: u64, bytes: &[u8]) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
}

/// Writes all of `bytes` at `offset` of `file` (moving its file offset, which nothing else uses).
#[cfg(not(unix))]
fn write_all_at(mut file: &std::fs::File, offset: u64, bytes: &[u8]) -> io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(bytes)
}

/// A real open file.
#[derive(Debug)]
pub struct StdFile {
    file: std::fs::File,
    len: u64,
}

impl FileSystem for StdFs {
    type File = StdFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn create(&self, path: &Path) -> io::Result<StdFile> {
        // No O_APPEND: `FsFile::write_at` needs positional writes (Linux's pwrite ignores the
        // offset on an O_APPEND file). `append` writes at the length this handle tracks instead,
        // which `truncate` resets, so a write after `set_len` never goes to a stale file offset
        // and leaves a hole of zeros (what O_APPEND once fixed here: the turmoil simulation,
        // seed 87).
        let file = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(path)?;
        Ok(StdFile { file, len: 0 })
    }

    /// An advisory lock (`flock` on Unix) on the file [`LOCK_FILE`] in `dir`, created if
    /// missing and never removed: it conflicts with any other open file description, in this
    /// process or another, and the operating system drops it when the process dies.
    fn lock_dir(&self, dir: &Path) -> io::Result<DirLock> {
        if !std::fs::metadata(dir)?.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "not a directory"));
        }
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOCK_FILE))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock::holding(file)),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(io::Error::new(io::ErrorKind::WouldBlock, "the directory's LOCK file is locked"))
            }
            Err(std::fs::TryLockError::Error(error)) => Err(error),
        }
    }

    fn open_append(&self, path: &Path) -> io::Result<StdFile> {
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(StdFile { file, len })
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        read_range(std::fs::File::open(path)?, offset, len)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

impl FsFile for StdFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_at(self.len, bytes)
    }

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        if offset > self.len {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a write past the end of the file"));
        }
        write_all_at(&self.file, offset, bytes)?;
        self.len = self.len.max(offset + bytes.len() as u64);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.len = len;
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }
}
