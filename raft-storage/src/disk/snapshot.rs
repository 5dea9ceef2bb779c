//! Snapshot files: staging a snapshot's data chunk by chunk (or a local snapshot at once), making
//! it durable under its own name, checking the file against the crcs META records, and reading it
//! back a piece at a time with every block checked.
//!
//! The data file holds the snapshot's data exactly as received (no framing): META holds its
//! length, its crc32 and the crc32 of each block of [`SNAPSHOT_BLOCK_BYTES`].
//!
//! Every file name takes a `prefix`: empty for `DiskStorage`, the group's for a shared WAL (whose
//! groups keep their snapshot files side by side in one directory).

use std::path::{Path, PathBuf};

use raft_core::{SnapshotChunk, SnapshotMeta, StorageError};
use serde::{Deserialize, Serialize};

use super::directory::{Directory, OpenFile};
use super::error::{Corruption, DiskError, IoOp, corrupt, io_error};
use crate::fs::{FileSystem, FsFile};

/// The data of a snapshot being received, chunk by chunk.
const STAGING_FILE: &str = "snapshot.staging";
/// Where a local snapshot is written before it is installed, apart from a received one's staging.
const LOCAL_SNAPSHOT_FILE: &str = "snapshot.local";
/// The most snapshot bytes read at once: by recovery when it checks the snapshot file, and by
/// [`read_chunk`] whatever `bytes_max` asks for.
const SNAPSHOT_READ_BYTES_MAX: u64 = 1024 * 1024;
/// Snapshot data is checked in blocks of this many bytes (the last one may be shorter), each
/// with its crc32 in META: a read checks every block it touches, reading whole blocks. Equal to
/// raft-core's default `snapshot_chunk_bytes_max`, so a leader's aligned chunk reads one block.
/// META holds 4 bytes per block (64 KiB per GiB of snapshot).
const SNAPSHOT_BLOCK_BYTES: u64 = 64 * 1024;
const _: () = assert!(SNAPSHOT_READ_BYTES_MAX.is_multiple_of(SNAPSHOT_BLOCK_BYTES));

/// An installed snapshot: its metadata and what its data file must hold. Part of META: the field
/// order is the on-disk format (postcard).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotFile {
    pub(crate) meta: SnapshotMeta,
    /// The data's length in bytes.
    len: u64,
    /// The crc32 of the whole data.
    crc: u32,
    /// The crc32 of each block of [`SNAPSHOT_BLOCK_BYTES`] of the data, in order.
    block_crcs: Vec<u32>,
}

/// The name of the data file of the installed snapshot `meta`: each snapshot gets its own, so
/// META never names a file that is being replaced.
pub(crate) fn snapshot_name(prefix: &str, meta: &SnapshotMeta) -> String {
    format!("{prefix}snapshot-{:020}-{:020}.snap", meta.index.0, meta.term.0)
}

/// The name of the file a local snapshot `meta` is written to off the store's owner
/// ([`crate::LogStore::begin_snapshot_owned`]) until it is saved: its own per snapshot and per
/// `incarnation` of the group (a shared log's group removed and created again never shares one
/// with its earlier incarnation's writer still in flight).
///
/// `job` numbers the writers begun on one open store (or log), so that two writers of the same
/// snapshot never share a file: one dropped after the other began removes only its own.
pub(crate) fn taking_name(prefix: &str, meta: &SnapshotMeta, incarnation: u64, job: u64) -> String {
    format!("{prefix}snapshot-{:020}-{:020}-{incarnation:020}-{job:020}.taking", meta.index.0, meta.term.0)
}

/// Whether `name` (its prefix removed) is a snapshot file: a staging file, a snapshot being
/// taken, or a snapshot's data file.
pub(crate) fn is_snapshot_file(name: &str) -> bool {
    name == STAGING_FILE || name == LOCAL_SNAPSHOT_FILE || is_snapshot_name(name) || is_taking_name(name)
}

fn is_taking_name(name: &str) -> bool {
    let Some(numbers) = name.strip_prefix("snapshot-").and_then(|rest| rest.strip_suffix(".taking")) else {
        return false;
    };
    // Three numbers: a file of a version before the job's number was added.
    let parts: Vec<&str> = numbers.split('-').collect();
    (parts.len() == 3 || parts.len() == 4)
        && parts.iter().all(|digits| digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
}

fn is_snapshot_name(name: &str) -> bool {
    let Some(numbers) = name.strip_prefix("snapshot-").and_then(|rest| rest.strip_suffix(".snap")) else {
        return false;
    };
    let Some((index, term)) = numbers.split_once('-') else { return false };
    [index, term].iter().all(|digits| digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// The crc32 of each [`SNAPSHOT_BLOCK_BYTES`] block of data written in pieces of any size.
#[derive(Default)]
struct BlockCrcs {
    done: Vec<u32>,
    current: crc32fast::Hasher,
    current_len: u64,
}

impl BlockCrcs {
    fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = (SNAPSHOT_BLOCK_BYTES - self.current_len).min(data.len() as u64) as usize;
            self.current.update(&data[..room]);
            self.current_len += room as u64;
            data = &data[room..];
            if self.current_len == SNAPSHOT_BLOCK_BYTES {
                let block = std::mem::take(&mut self.current);
                self.done.push(block.finalize());
                self.current_len = 0;
            }
        }
    }

    /// Every block's crc, the partial last block's included.
    fn finish(mut self) -> Vec<u32> {
        if self.current_len > 0 {
            self.done.push(self.current.finalize());
        }
        self.done
    }
}

/// A snapshot's data being written to a file of its own, before it is installed.
pub(crate) struct Staging<File> {
    pub(crate) meta: SnapshotMeta,
    /// The prefix of the snapshot's file names.
    prefix: String,
    file: OpenFile<File>,
    /// The bytes staged so far.
    pub(super) len: u64,
    /// The crc32 of the bytes staged so far.
    crc: crc32fast::Hasher,
    /// The crcs of the blocks staged so far, and of the partial block after them.
    blocks: BlockCrcs,
}

impl<File: FsFile> Staging<File> {
    /// Starts receiving snapshot `meta` in an empty staging file (replacing any other).
    pub(crate) fn start<F: FileSystem<File = File>>(
        dir: &Directory<F>,
        prefix: &str,
        meta: &SnapshotMeta,
    ) -> Result<Self, DiskError> {
        let file = dir.create(dir.file(&format!("{prefix}{STAGING_FILE}")))?;
        Ok(Staging::new(prefix, meta, file))
    }

    fn new(prefix: &str, meta: &SnapshotMeta, file: OpenFile<File>) -> Self {
        let prefix = prefix.to_string();
        let (crc, blocks) = (crc32fast::Hasher::new(), BlockCrcs::default());
        Staging { meta: meta.clone(), prefix, file, len: 0, crc, blocks }
    }

    /// Writes the whole data of the local snapshot `meta` to a file apart from the staging file
    /// (a snapshot being received keeps its staging).
    pub(crate) fn local<F: FileSystem<File = File>>(
        dir: &Directory<F>,
        prefix: &str,
        meta: &SnapshotMeta,
        data: &[u8],
    ) -> Result<Self, DiskError> {
        let mut staging = Staging::start_local(dir, prefix, meta)?;
        staging.write(data)?;
        Ok(staging)
    }

    /// Starts the local snapshot `meta` in an empty file apart from the staging file, for data
    /// written a piece at a time ([`crate::LogStore::begin_snapshot`]).
    pub(crate) fn start_local<F: FileSystem<File = File>>(
        dir: &Directory<F>,
        prefix: &str,
        meta: &SnapshotMeta,
    ) -> Result<Self, DiskError> {
        let file = dir.create(dir.file(&format!("{prefix}{LOCAL_SNAPSHOT_FILE}")))?;
        Ok(Staging::new(prefix, meta, file))
    }

    /// Starts the local snapshot `meta` in an empty file of its own ([`taking_name`]), for data
    /// written a piece at a time off the store's owner ([`crate::LogStore::begin_snapshot_owned`]).
    pub(crate) fn start_taking<F: FileSystem<File = File>>(
        dir: &Directory<F>,
        prefix: &str,
        meta: &SnapshotMeta,
        incarnation: u64,
        job: u64,
    ) -> Result<Self, DiskError> {
        let file = dir.create(dir.file(&taking_name(prefix, meta, incarnation, job)))?;
        Ok(Staging::new(prefix, meta, file))
    }

    /// The path of the file the data is written to.
    pub(crate) fn path(&self) -> &Path {
        self.file.path()
    }

    /// Makes the data written so far durable (in its file, not yet under its snapshot's name)
    /// and closes the file: what is left to do needs no open file.
    pub(crate) fn sync(self) -> Result<Synced, DiskError> {
        let Staging { meta, prefix, mut file, len, crc, blocks } = self;
        file.sync()?;
        let path = file.path().to_path_buf();
        drop(file);
        Ok(Synced { meta, prefix, path, len, crc: crc.finalize(), block_crcs: blocks.finish() })
    }

    /// Writes `data` through to the file (nothing is kept in memory but its crcs).
    pub(crate) fn write(&mut self, data: &[u8]) -> Result<(), DiskError> {
        self.file.append(data)?;
        self.len += data.len() as u64;
        self.crc.update(data);
        self.blocks.update(data);
        Ok(())
    }

    /// Drops the staged data. Not durable: recovery removes the file should it come back.
    pub(crate) fn discard<F: FileSystem<File = File>>(self, dir: &Directory<F>) -> Result<(), DiskError> {
        let path = self.file.path().to_path_buf();
        drop(self);
        dir.remove(&path)
    }

    /// Makes the staged data durable under its snapshot's own name.
    pub(crate) fn into_snapshot_file<F: FileSystem<File = File>>(
        self,
        dir: &Directory<F>,
    ) -> Result<SnapshotFile, DiskError> {
        self.sync()?.into_snapshot_file(dir)
    }
}

/// A snapshot's data made durable in a file of its own, not yet under its snapshot's name: a
/// local snapshot taken off the store's owner, waiting for the owner to save it. Its file is
/// garbage until then (recovery removes it).
pub(crate) struct Synced {
    pub(crate) meta: SnapshotMeta,
    prefix: String,
    path: PathBuf,
    len: u64,
    crc: u32,
    block_crcs: Vec<u32>,
}

impl Synced {
    /// Renames the data to its snapshot's own name, durably.
    fn into_snapshot_file<F: FileSystem>(self, dir: &Directory<F>) -> Result<SnapshotFile, DiskError> {
        let Synced { meta, prefix, path, len, crc, block_crcs } = self;
        dir.rename(&path, &dir.file(&snapshot_name(&prefix, &meta)))?;
        dir.sync()?;
        Ok(SnapshotFile { meta, len, crc, block_crcs })
    }
}

/// Whoever removes the file of a local snapshot taken off the store's owner that is dropped
/// unsaved ([`Unsaved`]): the store it was begun on, if it still holds the file.
pub(crate) trait RemoveUnsaved {
    /// Removes `path`, the file of a snapshot begun on this store and dropped unsaved, unless
    /// the file is no longer the store's to remove (the store, or the shared log's group, is
    /// gone: its files went with it, or recovery removes them). A failure is logged, not
    /// returned: a drop has no one to return it to, and recovery removes the file at the next
    /// open.
    fn remove_unsaved(&self, path: &Path);
}

/// The file of a local snapshot taken off the store's owner
/// ([`crate::LogStore::begin_snapshot_owned`]), from `begin` until the save takes it over:
/// dropped before that (a writer or a taken snapshot dropped unsaved: the job called off or
/// failed, the save refused before it began), it has `owner` remove the file at once, rather
/// than leave it to the next open's recovery.
pub(crate) struct Unsaved<O: RemoveUnsaved> {
    owner: O,
    /// The file, until the save takes it over.
    path: Option<PathBuf>,
}

impl<O: RemoveUnsaved> Unsaved<O> {
    /// The file `path` of a snapshot begun on `owner`.
    pub(crate) fn new(owner: O, path: PathBuf) -> Self {
        Unsaved { owner, path: Some(path) }
    }

    /// The store the snapshot was begun on.
    pub(crate) fn owner(&self) -> &O {
        &self.owner
    }

    /// The save takes the file over (renames it, or removes it itself): nothing is removed when
    /// this is dropped.
    pub(crate) fn saving(&mut self) {
        self.path = None;
    }
}

impl<O: RemoveUnsaved> Drop for Unsaved<O> {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            self.owner.remove_unsaved(&path);
        }
    }
}

/// Removes `path` from `dir` for [`RemoveUnsaved::remove_unsaved`], logging a failure. A file
/// already gone is no failure.
pub(crate) fn remove_unsaved<F: FileSystem>(dir: &Directory<F>, path: &Path) {
    if let Err(error) = dir.remove_if_present(path) {
        tracing::warn!(file = %path.display(), %error, "the file of a snapshot dropped unsaved is left for recovery");
    }
}

/// A snapshot's data on its way to being installed: still being staged, or synced already.
pub(crate) enum Pending<File> {
    Open(Staging<File>),
    Synced(Synced),
}

impl<File: FsFile> Pending<File> {
    pub(crate) fn meta(&self) -> &SnapshotMeta {
        match self {
            Pending::Open(staging) => &staging.meta,
            Pending::Synced(synced) => &synced.meta,
        }
    }

    /// Drops the data. Not durable: recovery removes the file should it come back. A synced
    /// file already gone (its group removed meanwhile) is no error.
    pub(crate) fn discard<F: FileSystem<File = File>>(self, dir: &Directory<F>) -> Result<(), DiskError> {
        match self {
            Pending::Open(staging) => staging.discard(dir),
            Pending::Synced(synced) => dir.remove_if_present(&synced.path),
        }
    }

    /// Makes the data durable under its snapshot's own name.
    pub(crate) fn into_snapshot_file<F: FileSystem<File = File>>(
        self,
        dir: &Directory<F>,
    ) -> Result<SnapshotFile, DiskError> {
        match self {
            Pending::Open(staging) => staging.into_snapshot_file(dir),
            Pending::Synced(synced) => synced.into_snapshot_file(dir),
        }
    }
}

impl<File> From<Staging<File>> for Pending<File> {
    fn from(staging: Staging<File>) -> Self {
        Pending::Open(staging)
    }
}

/// Writes a chunk of snapshot `meta` at `offset` into `staging` (through to its file; nothing is
/// kept in memory but crcs). Offset 0 starts a new staging file (replacing any other); any other
/// chunk must continue the staged data, or it is refused and the staged data kept.
pub(crate) fn write_chunk<F: FileSystem>(
    staging: &mut Option<Staging<F::File>>,
    dir: &Directory<F>,
    prefix: &str,
    meta: &SnapshotMeta,
    offset: u64,
    data: &[u8],
) -> Result<(), DiskError> {
    if offset == 0 {
        *staging = None; // Closes the file before `create` truncates it.
        *staging = Some(Staging::start(dir, prefix, meta)?);
    }
    let staging = match staging.as_mut() {
        Some(staging) if staging.meta == *meta && staging.len == offset => staging,
        Some(staging) if staging.meta == *meta => {
            return Err(DiskError::SnapshotChunkOutOfOrder { offset, staged: staging.len });
        }
        _ => return Err(DiskError::SnapshotChunkOutOfOrder { offset, staged: 0 }),
    };
    if !data.is_empty() {
        staging.write(data)?;
    }
    Ok(())
}

/// Takes the staged snapshot `meta` out of `staging` for its install; refuses (keeping another
/// snapshot's staging) if it is not the one staged.
pub(crate) fn take_staged<File>(
    staging: &mut Option<Staging<File>>,
    meta: &SnapshotMeta,
) -> Result<Staging<File>, DiskError> {
    match staging.take() {
        Some(staged) if staged.meta == *meta => Ok(staged),
        other => {
            *staging = other;
            Err(DiskError::SnapshotNotStaged(meta.index))
        }
    }
}

/// Removes the data file of `snapshot`, which META no longer names. Not made durable: should it
/// come back after a crash, recovery removes it.
pub(crate) fn remove<F: FileSystem>(
    dir: &Directory<F>,
    prefix: &str,
    snapshot: &SnapshotFile,
) -> Result<(), DiskError> {
    dir.remove(&dir.file(&snapshot_name(prefix, &snapshot.meta)))
}

/// Checks that the data file of `snapshot` holds exactly `snapshot.len` bytes with crc
/// `snapshot.crc`, reading [`SNAPSHOT_READ_BYTES_MAX`] bytes at a time.
pub(crate) fn verify<F: FileSystem>(
    dir: &Directory<F>,
    prefix: &str,
    snapshot: &SnapshotFile,
) -> Result<(), DiskError> {
    let path = dir.file(&snapshot_name(prefix, &snapshot.meta));
    let mut crc = crc32fast::Hasher::new();
    let mut len = 0;
    loop {
        let piece = match dir.fs().read_at(&path, len, SNAPSHOT_READ_BYTES_MAX as usize) {
            Ok(piece) => piece,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(corrupt(&path, 0, Corruption::SnapshotMissing));
            }
            Err(error) => return Err(io_error(IoOp::Read, &path)(error)),
        };
        crc.update(&piece);
        len += piece.len() as u64;
        if (piece.len() as u64) < SNAPSHOT_READ_BYTES_MAX {
            break;
        }
    }
    if len != snapshot.len {
        let corruption = Corruption::SnapshotLength { expected: snapshot.len, found: len };
        return Err(corrupt(&path, len.min(snapshot.len), corruption));
    }
    if crc.finalize() != snapshot.crc {
        // The crc covers the whole file: the damage could be anywhere.
        return Err(corrupt(&path, 0, Corruption::Checksum));
    }
    Ok(())
}

/// Up to `bytes_max` bytes (at most [`SNAPSHOT_READ_BYTES_MAX`], at least one unless at the
/// end) of the data of `snapshot` from `offset` on. Reads the whole blocks the range touches and
/// checks each against its crc: a damaged one is [`StorageError::SnapshotCorrupt`] at the
/// block's offset.
pub(crate) fn read_chunk<F: FileSystem>(
    dir: &Directory<F>,
    prefix: &str,
    snapshot: &SnapshotFile,
    offset: u64,
    bytes_max: u64,
) -> Result<SnapshotChunk, StorageError> {
    let start = offset.min(snapshot.len);
    let end = start.saturating_add(bytes_max.clamp(1, SNAPSHOT_READ_BYTES_MAX)).min(snapshot.len);
    let first_block = start / SNAPSHOT_BLOCK_BYTES;
    let blocks_start = first_block * SNAPSHOT_BLOCK_BYTES;
    let blocks_end = end.div_ceil(SNAPSHOT_BLOCK_BYTES).saturating_mul(SNAPSHOT_BLOCK_BYTES).min(snapshot.len);
    let path = dir.file(&snapshot_name(prefix, &snapshot.meta));
    let blocks = dir
        .fs()
        .read_at(&path, blocks_start, (blocks_end - blocks_start) as usize)
        .map_err(|error| StorageError::from(&error))?;
    if blocks.len() as u64 != blocks_end - blocks_start {
        // The file recovery checked has shrunk underneath the store.
        return Err(StorageError::Io { kind: std::io::ErrorKind::UnexpectedEof, raw_os_error: None });
    }
    for (number, block) in (first_block..).zip(blocks.chunks(SNAPSHOT_BLOCK_BYTES as usize)) {
        if snapshot.block_crcs.get(number as usize) != Some(&crc32fast::hash(block)) {
            let offset = number * SNAPSHOT_BLOCK_BYTES;
            return Err(StorageError::SnapshotCorrupt { index: snapshot.meta.index, offset });
        }
    }
    let data = bytes::Bytes::from(blocks).slice((start - blocks_start) as usize..(end - blocks_start) as usize);
    Ok(SnapshotChunk { data, done: end == snapshot.len })
}
