//! The shared write-ahead log: one per node, holding the log, hard state and snapshots of every
//! Raft group the node hosts ([`SharedWal`], with a [`GroupStore`] per group that implements
//! [`Storage`](raft_core::Storage) and [`LogStore`](crate::LogStore) with the semantics of
//! [`DiskStorage`](crate::DiskStorage)). One append stream and one fsync per batch, however many
//! groups wrote to it ([`SharedWal::write_batch`]: group commit across groups).
//!
//! Modules: [`record`] (file names and records), [`store`] (the writer, the groups, the
//! handles), [`recovery`] (replay), [`cache`] (the entry cache). The byte framing, the identity
//! file, the record walk that tells a torn tail from corruption, the snapshot files and the
//! error types are `DiskStorage`'s (`crate::disk`).
//!
//! Layout of the directory:
//! - `IDENTITY`: cluster id and node id, written once (magic `RAFTMWID`, format version 1:
//!   neither store opens the other's directory). Opening it as another node is an error, and so
//!   is a directory holding segments but no IDENTITY (docs/pitfalls.md #27).
//! - `segment-<sequence, 20 digits>.mwal`: the segments, numbered from 1 without gaps. A header
//!   (magic `RAFTMWAL`, version, sequence number, crc), then records
//!   `[len u32][crc32 u32][postcard record]`, then, in a segment of format version 2, possibly
//!   zeros: space filled ahead of the records (`WalOptions::preallocate_bytes`), which later
//!   records are written over. Version 1 segments (never filled) are still read. Records: `Create` (a group and its initial
//!   metadata), `Meta` (a group's metadata: hard state, membership, log boundary, installed
//!   snapshot with its crcs, as `DiskStorage`'s META), `Entry` (one entry of one group,
//!   replacing the group's entries from its index on), `Remove` (a group), `Reclaim` (segments
//!   below a number are released), `Copy` (an entry copied forward by a reclamation, see below).
//!   Segments rotate at `segment_bytes_max`.
//! - `group-<id, 20 digits>-snapshot-<index>-<term>.snap`: a group's installed snapshot data,
//!   and `group-<id>-snapshot.staging` / `-snapshot.local`: one being received or saved;
//!   `group-<id>-snapshot-<index>-<term>-<incarnation>-<job>.taking`: one written off the store's
//!   owner (`LogStore::begin_snapshot_owned`) until its save step renames it (named with the
//!   group's incarnation, so a group removed and created again never shares one).
//!
//! Writes: a batch appends its records to the newest segment and syncs once (a rotation syncs the
//! segment it closes; a new segment syncs the directory). The records are written where the
//! segment's records end; once they reach the file's end, the next `preallocate_bytes` (at most
//! up to `segment_bytes_max`) are filled with zeros in the same batch, so that the syncs of the
//! batches after it change no file length and commit no file-system metadata. A rotation cuts
//! the segment it closes to its last record before syncing it: only the newest segment ends in
//! zeros. A group's `Meta` record comes before
//! its entries in a batch, so a durable entry of a term implies a durable term; a commit-index-only
//! change is kept in memory and logged with the next `Meta`. A compaction logs a `Meta` with the
//! new boundary. A snapshot install syncs the data file under its own name first, then logs the
//! `Meta` naming it (the commit point); the previous file goes after the batch is durable, if
//! the group still exists as the same incarnation and its metadata does not name the file (the
//! batch's fsync runs without the lock: the group may have been removed meanwhile, and created
//! again with files of the same names). A removal logs `Remove`, syncs, then deletes the group's
//! files. Deleting garbage that is already gone is no error.
//!
//! Segment reclamation. Every record in the oldest segments is superseded once: (a) no group
//! has an entry after its log boundary there (its entries there are compacted, replaced by a
//! later write, or its group is removed), and (b) every group's latest `Meta` (or `Create`) lies
//! in a newer segment. So after any write that may release segments (a compaction, an install, a
//! truncation, a removal, a rotation), the WAL first copies forward the groups that pin the
//! oldest segments with a short log: taking the groups whose first live entry lies before the
//! newest segment, oldest such entry first, it logs each one's *whole* live log again as `Copy`
//! records, while the copied records total at most a quarter of `segment_bytes_max` (so a
//! reclamation never copies a segment's worth, and cannot keep rewriting itself; a group with a
//! longer log is left to its snapshot policy), and only as far as it lets the floor below
//! advance; the group's entries are read from the copies from then on. It then finds the oldest
//! segment `floor` holding a live entry of some group (at most the newest segment); if older
//! ones exist, it logs again the
//! metadata of each group whose latest one is older than `floor` (a checkpoint: the group's
//! whole `Meta` record, hard state, membership and the installed snapshot's block-crc list
//! included, so its size grows with the snapshot: one crc32 per 64 KiB block of data), logs
//! `Reclaim { below: floor }`, syncs (copies, checkpoints and `Reclaim` are durable together,
//! before any deletion), and then deletes the segments below `floor`, oldest first. An idle
//! group costs, per reclamation that releases the segment holding its records, one checkpoint
//! record and, if its log is short, a copy of it, never a whole segment.
//!
//! Replaying copies. A `Copy` is not an `Entry`: an `Entry` replaces the group's entries from
//! its index on, so a copy cut short by a torn tail (entries 1..3 of a live log 1..5) would
//! truncate acknowledged entries. A run of copies of entries the group's log already holds (same
//! index and term) moves them to the copies only once it reaches the log's last index; a run cut
//! short moves nothing (the originals' segments are still there: the `Reclaim` was not durable),
//! and its records are garbage. A copy of an entry the log does not hold (its originals lie in
//! released segments) is replayed as an `Entry`: the run is then the group's whole log. So
//! garbage copies must not outlive the segments holding the originals: once those were released
//! they would read as the group's log. A run therefore never spans segments (a reclamation
//! starts a new segment for a run that does not fit), and recovery cuts a run cut short, which
//! then lies at the very end of the newest segment, together with the torn tail (found by the
//! `shared_wal_recovery` fuzz target: the group's next records, written after the garbage, were
//! out of sequence once a later reclamation released the older segments).
//!
//! Recovery (`open`) replays the segments in order. They are a suffix of the WAL's history, so a
//! group's first records may be released: its entries met before its first metadata record are
//! pending until that record (a checkpoint) says where its log starts, or a `Remove` says they
//! are garbage. It cuts a torn tail of the last segment (reported in the [`RecoveryReport`]) and
//! nothing else; any other damage is a [`DiskError::Corrupt`] naming file and offset: a bad
//! crc or record, a gap in the segment numbers ([`Corruption::SegmentMissing`]), an oldest
//! segment newer than the last `Reclaim` floor (a lost segment), entries out of sequence, records
//! out of place in a group's history ([`Corruption::UnexpectedGroupRecord`]: a group whose
//! first records are lost, a second creation), a `Meta` record naming a last index that the
//! group's history before it does not have ([`Corruption::MetaLastMismatch`]; not checked for a
//! `Meta` that is the group's first record met, whose entries may follow it as copies), a
//! damaged snapshot file. It finishes what a crash
//! interrupted: segments below the `Reclaim` floor, snapshot files that no group's metadata
//! names (a removed group's, an interrupted install's, a staging file).
//!
//! Memory: each group keeps the location and term of each entry after its boundary (32 bytes
//! each), and a cache holds the newest entries of all groups; older ones are read back from
//! their segment (crc-checked) for a lagging follower. The cache's bound,
//! [`WalOptions::cache_bytes_max`], counts the entries' [`Entry::size_bytes`](raft_core::Entry::size_bytes),
//! not the real heap cost of the cache's maps and nodes, which is somewhat higher. Snapshot data
//! is never held in memory (only each snapshot's block-crc list, in its group's metadata).
//!
//! Concurrency: every handle shares one mutex, held while a write stages its records and hands
//! them to the file system. The fsync that makes a batch durable runs without it; the lock *is*
//! held during the other syncs and writes: a rotation's sync of the segment it closes, the
//! directory sync for a new segment, the data writes and fsyncs of snapshot staging and
//! installation (chunks written with `write_snapshot_chunk` or a batch's chunks, a local snapshot
//! saved, the install's sync of the file under its own name), group creation and removal, and
//! reclamation. Writes from several threads share fsyncs
//! (leader and followers): a writer whose records are not durable yet and finds no sync under way
//! becomes the leader and syncs, without the lock, every batch handed over so far; writers that
//! hand theirs over meanwhile wait, and the next leader syncs them all at once. A failed fsync
//! stops the WAL: its leader gets the I/O error, every writer waiting for it
//! [`DiskError::Stopped`]. A driver that has the outputs of many groups at hand writes them with
//! one [`SharedWal::write_batch`]. A leader whose fsync panics stops the WAL and wakes the
//! writers waiting for it.
//!
//! Failure: any I/O error stops the whole WAL (fail-stop): every later write of every group
//! returns [`DiskError::Stopped`]. Reads never panic: a disk error is a
//! [`StorageError`](raft_core::StorageError).
//!
//! [`RecoveryReport`]: crate::RecoveryReport
//! [`DiskError::Corrupt`]: crate::DiskError::Corrupt
//! [`DiskError::Stopped`]: crate::DiskError::Stopped
//! [`Corruption::SegmentMissing`]: crate::Corruption::SegmentMissing
//! [`Corruption::UnexpectedGroupRecord`]: crate::Corruption::UnexpectedGroupRecord
//! [`Corruption::MetaLastMismatch`]: crate::Corruption::MetaLastMismatch

mod cache;
mod record;
mod recovery;
mod store;

pub use store::{GroupStore, SharedWal, WalOptions};
