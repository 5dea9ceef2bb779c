//! raft-storage's file-system trait over turmoil's simulated file system: each host has its own
//! disk, a crash keeps only what was synced (files never synced vanish, unsynced writes are
//! lost), and the simulation's `FsConfig` injects I/O errors, silent corruption on reads and torn
//! writes. Only usable from inside a turmoil host.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use raft_storage::{FileSystem, FsFile};
use turmoil::fs::shim::std::fs as sim_fs;

/// The current turmoil host's file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct TurmoilFs {
    /// For self-tests: every sync does nothing (a disk that lies about durability), so a crash
    /// loses acknowledged data and the checkers must notice.
    pub fsync_lies: bool,
}

/// An open file on a turmoil host's disk.
#[derive(Debug)]
pub struct TurmoilFile {
    file: sim_fs::File,
    len: u64,
    fsync_lies: bool,
}

impl FileSystem for TurmoilFs {
    type File = TurmoilFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        sim_fs::create_dir_all(dir)
    }

    fn create(&self, path: &Path) -> io::Result<TurmoilFile> {
        // Positional writes, as `StdFs`'s: `append` writes at the length this handle tracks
        // (which `truncate` resets), `write_at` where it is told.
        let file = sim_fs::OpenOptions::new().create(true).write(true).open(path)?;
        file.set_len(0)?;
        Ok(TurmoilFile { file, len: 0, fsync_lies: self.fsync_lies })
    }

    fn open_append(&self, path: &Path) -> io::Result<TurmoilFile> {
        let file = sim_fs::OpenOptions::new().write(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(TurmoilFile { file, len, fsync_lies: self.fsync_lies })
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        sim_fs::read(path)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        raft_storage::read_range(sim_fs::File::open(path)?, offset, len)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        sim_fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        sim_fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in sim_fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.fsync_lies {
            return Ok(());
        }
        sim_fs::sync_dir(dir)
    }
}

impl FsFile for TurmoilFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_at(self.len, bytes)
    }

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        if offset > self.len {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a write past the end of the file"));
        }
        self.file.write_all_at(bytes, offset)?;
        self.len = self.len.max(offset + bytes.len() as u64);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if self.fsync_lies {
            return Ok(());
        }
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
