//! The durable store: a write-ahead log of segment files, two small metadata files and the
//! snapshot's data file, in one directory.
//!
//! Modules, one concern each: [`codec`] (the byte formats), [`meta`] (IDENTITY and META),
//! [`segment`] (the segment files), [`recovery`] (reading them back and the
//! [`RecoveryReport`]), [`snapshot`] (snapshot files), [`store`] (the [`DiskStorage`] that ties
//! them together), with [`error`] and [`directory`] (file-system calls that name their file).
//!
//! Layout:
//! - `IDENTITY`: the cluster and node this directory belongs to (written once).
//! - `META`: hard state, membership, the log boundary and the installed snapshot's metadata
//!   (with its data's length, crc32 and the crc32 of each block of `SNAPSHOT_BLOCK_BYTES`),
//!   replaced atomically (temp file, fsync, rename, fsync directory).
//! - `<first index, 20 digits>.wal`: segments. A segment starts with a header (magic, format
//!   version, first index, crc) followed by records `[len u32][crc32 u32][postcard Entry]`, the crc
//!   covering the length and the payload. Segments rotate at `segment_bytes_max`. A segment of
//!   format version 5 may end in zeros: space filled ahead of its records
//!   (`DiskOptions::preallocate_bytes`), which later records are written over, so that most
//!   fsyncs change no file length. Version 4 segments (never filled) are still read.
//! - `snapshot-<index, 20 digits>-<term, 20 digits>.snap`: the installed snapshot's data, exactly
//!   as received (no framing: META holds its length and crcs). Each snapshot gets its own name, so
//!   META never names a file that is being replaced.
//! - `snapshot.staging`: the data of a snapshot being received, chunk by chunk; `snapshot.local`:
//!   a local snapshot's data before it is installed; `snapshot-<index>-<term>-0-<job>.taking`: a local
//!   snapshot written off the store's owner (`LogStore::begin_snapshot_owned`), synced by its
//!   writer and renamed by the save step (recovery removes one never saved).
//! - `META.tmp`, `IDENTITY.tmp`: the next version of a metadata file, before its rename.
//!
//! Entries are also kept in memory (from the log boundary on), so reads never touch the disk;
//! compaction bounds that memory. Snapshot data is never held in memory: chunks are written
//! through to the staging file and read back from the snapshot file a piece at a time.
//!
//! The log boundary (where the log starts, moved by `compact`) and the snapshot are separate: an
//! install moves the boundary only when the log does not hold the snapshot's last entry.
//!
//! Installing a snapshot: fsync the staging file, rename it to its snapshot name, fsync the
//! directory, then replace META (snapshot, membership and, when the snapshot supersedes the log,
//! the new boundary, all in one atomic write), and only then remove the superseded segments and
//! the previous snapshot file. A crash before META is replaced recovers the old snapshot and log
//! (the new file is a stray that recovery removes); a crash after recovers the new ones
//! (recovery finishes the removal of superseded segments, as after a compaction).
//!
//! Recovery (`open`) repairs only what a crash can leave behind, and lists each repair in the
//! store's [`RecoveryReport`]: a torn tail of the last segment (cut off; zeros after a
//! segment's last record are space no record reached, and damage before them is a torn tail
//! only if no whole record follows it; a last segment whose header is all zeros was never
//! synced and is removed), segments that a
//! compaction or install meant to remove, snapshot files that META does not name. Any other
//! damage is a [`DiskError::Corrupt`] naming the file and offset: recovery never silently drops
//! data that may have been acknowledged. `.tmp` files are left alone (the next write of their
//! metadata file replaces them).
//!
//! An application restores its state machine on restart by streaming the snapshot with
//! [`Storage::snapshot_chunk`] from offset 0 until a chunk is `done` (see [`DiskStorage`]).
//!
//! Snapshot integrity: `open` checks the whole snapshot file against its crc, and every
//! [`Storage::snapshot_chunk`] read checks the blocks it covers against their crcs, so bytes that
//! rot (or read back wrong) after `open` are a [`StorageError::SnapshotCorrupt`], never data: a
//! leader stops instead of sending them, a restarted node instead of restoring them. The crcs
//! are computed from the bytes as they are written; the snapshot's own checksum
//! ([`SnapshotMeta::data_crc32`], from the state machine that took it) is checked end to end by
//! raft-core (on every received snapshot before it is installed) and by raft-net (on the data it
//! restores a state machine from).
//!
//! Durability: `persist` fsyncs once per call (group commit: a driver batches many entries per
//! call). The term and vote are written (atomically) before the entries, so a durable entry of a
//! term implies a durable term. A commit-index-only change is kept in memory and written with the
//! next metadata write: the commit index needs no durability for safety.
//!
//! Failure: any I/O error stops the store (fail-stop): every later call returns
//! [`DiskError::Stopped`], and the driver must stop the node, since it cannot know what reached
//! the disk. A refused call (an append that does not continue the log, a snapshot chunk out of
//! order, an install of a snapshot not staged) changes nothing and leaves the store usable.
//!
//! [`Storage::snapshot_chunk`]: raft_core::Storage::snapshot_chunk
//! [`StorageError::SnapshotCorrupt`]: raft_core::StorageError::SnapshotCorrupt
//! [`SnapshotMeta::data_crc32`]: raft_core::SnapshotMeta::data_crc32

pub(crate) mod codec;
pub(crate) mod directory;
pub(crate) mod error;
pub(crate) mod meta;
pub(crate) mod recovery;
mod segment;
pub(crate) mod snapshot;
pub(crate) mod store;

pub use error::{Corruption, DiskError, IoOp};
pub use meta::Identity;
pub use recovery::{RecoveryReport, Repair};
pub use store::{DiskOptions, DiskStorage};
