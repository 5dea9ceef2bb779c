//! Snapshots at the state machine's boundary, streamed in bounded pieces both ways: the state
//! machine writes its snapshot into a [`SnapshotSink`] that hands it to the store's owned writer
//! a piece at a time ([`raft_storage::LogStore::begin_snapshot_owned`]), and restores from a
//! [`SnapshotReader`] that reads the store's snapshot a chunk at a time
//! ([`raft_core::Storage::snapshot_chunk`]).
//!
//! Taking a snapshot is a [`SnapshotJob`]: the worker begins the owned writer and hands its
//! [`SnapshotTask`] to whoever holds the state machine (the apply thread, or a thread the inline
//! applier moves to, or under [`Execution::Tasks`](super::config::Execution::Tasks) a task of the
//! host's `LocalSet`); the task writes and finishes the snapshot there and sends the result back,
//! waking the group, whose worker then saves it. The worker never waits for it (but to restore,
//! or when the steps waiting for the applier outgrow the apply queue's bound).
//!
//! Restoring is a job too ([`SnapshotJob::restore`]) where the store opens a reader for another
//! thread ([`LogStore::open_snapshot_owned`]): its task runs both passes below where the state
//! machine is, and the worker goes on. The worker waits for it before it writes an install of a
//! newer snapshot (which may remove the file being read). A stop calls it off, and so does a
//! shutdown asked for (even while the worker waits for the state machine): the next chunk read
//! fails, so the state machine's restore ends at its next read, and the group stops with the
//! stop's reason (restarted, it restores again from the store). A failed or called off restore
//! leaves an applier that refuses every later step.
//!
//! Otherwise restoring stays on the worker: where the state machine runs on the apply thread
//! ([`Execution::Threads`]) while the worker owns the store, the chunks cross over a channel of
//! at most [`SNAPSHOT_PIECES_QUEUED_MAX`] pieces, and the worker waits for the apply thread until
//! the snapshot is read. Otherwise the state machine reads the store directly, on the worker.
//!
//! Integrity: a snapshot is read twice when restoring. The first pass only checks the data
//! against the snapshot's `data_crc32`; the second feeds the state machine and checks again, so
//! that bytes damaged between the two passes fail the restore (and stop the node) before the
//! state machine can report success: the last piece is only handed over once the whole data
//! matched.
//!
//! [`Execution::Threads`]: super::config::Execution::Threads

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};

use bytes::Bytes;
use raft_core::{SnapshotChunk, SnapshotMeta, Storage, StorageError};
use raft_storage::{LogStore, OwnedSnapshotReader, OwnedSnapshotWriter, TakenSnapshot};
use thiserror::Error;
use tracing::info;

use super::apply::Applier;
use super::error::{StopReason, StorageFailure, StorageOperation};
use super::shared::Shared;
use super::state_machine::StateMachine;

/// The most snapshot bytes read from the store per call when restoring the state machine.
pub const SNAPSHOT_READ_BYTES_MAX: u64 = 1024 * 1024;

/// The most snapshot bytes the state machine's writes are gathered into before they go to the
/// store's writer as one piece.
pub const SNAPSHOT_WRITE_BYTES_MAX: usize = 1024 * 1024;

/// The most pieces of a snapshot being restored queued between the worker and the apply thread
/// (each at most [`SNAPSHOT_READ_BYTES_MAX`] bytes): with the piece each side holds and the
/// store's chunk read one ahead, at most this many plus three pieces of one snapshot are in
/// memory at once.
pub const SNAPSHOT_PIECES_QUEUED_MAX: usize = 2;

const _: () = assert!(SNAPSHOT_WRITE_BYTES_MAX as u64 <= SNAPSHOT_READ_BYTES_MAX * 4);
const _: () = assert!(SNAPSHOT_PIECES_QUEUED_MAX >= 1);

/// The inner error of the [`io::Error`] that the sink given to
/// [`StateMachine::snapshot`](crate::StateMachine::snapshot) returns once the snapshot's
/// destination failed or gave up on it (the driver knows why and reports it; the state machine
/// only has to stop writing and return the error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("the snapshot's destination stopped taking data")]
pub struct SnapshotSinkClosed;

/// What a snapshot's pieces come from: the store, or the worker that reads it.
pub(crate) trait ChunkSource {
    /// The next piece of the data (never empty), or `None` at its end once it all matched the
    /// snapshot's checksum.
    fn next_chunk(&mut self) -> Result<Option<Bytes>, StorageError>;
}

/// Where [`StoreChunks`] reads a snapshot's chunks: the store itself (on its owner), or a reader
/// the store opened for another thread ([`LogStore::open_snapshot_owned`]).
pub(crate) trait ReadChunk {
    /// The chunk of `meta`'s data at `offset`, as [`Storage::snapshot_chunk`] returns it.
    fn read_chunk(&mut self, meta: &SnapshotMeta, offset: u64, bytes_max: u64) -> Result<SnapshotChunk, StorageError>;
}

impl<S: Storage + ?Sized> ReadChunk for &S {
    fn read_chunk(&mut self, meta: &SnapshotMeta, offset: u64, bytes_max: u64) -> Result<SnapshotChunk, StorageError> {
        self.snapshot_chunk(meta.index, meta.term, offset, bytes_max)
    }
}

impl<R: OwnedSnapshotReader + ?Sized> ReadChunk for &mut R {
    fn read_chunk(&mut self, _meta: &SnapshotMeta, offset: u64, bytes_max: u64) -> Result<SnapshotChunk, StorageError> {
        self.chunk(offset, bytes_max)
    }
}

/// The store's snapshot `meta`, a chunk of at most [`SNAPSHOT_READ_BYTES_MAX`] at a time, checked
/// against `meta.data_crc32` before its last data is handed out. The store's chunks are read one
/// ahead: a store may end the data with a chunk that does not say `done` and then an empty one
/// that does, and the last data must not leave before the checksum is known to match.
pub(crate) struct StoreChunks<R> {
    source: R,
    meta: SnapshotMeta,
    offset: u64,
    crc: crc32fast::Hasher,
    /// The chunk read ahead, not handed out yet.
    ahead: Option<raft_core::SnapshotChunk>,
    done: bool,
}

impl<R: ReadChunk> StoreChunks<R> {
    pub(crate) fn new(source: R, meta: &SnapshotMeta) -> Self {
        StoreChunks { source, meta: meta.clone(), offset: 0, crc: crc32fast::Hasher::new(), ahead: None, done: false }
    }

    /// One chunk from the store, counted into the checksum.
    fn read(&mut self) -> Result<raft_core::SnapshotChunk, StorageError> {
        let chunk = self.source.read_chunk(&self.meta, self.offset, SNAPSHOT_READ_BYTES_MAX)?;
        if chunk.data.is_empty() && !chunk.done {
            // A store that makes no progress would keep us here forever.
            return Err(StorageError::Unavailable(self.meta.index));
        }
        self.offset += chunk.data.len() as u64;
        self.crc.update(&chunk.data);
        Ok(chunk)
    }

    /// The data has ended: it must match the checksum.
    fn end(&mut self) -> Result<(), StorageError> {
        self.done = true;
        if std::mem::take(&mut self.crc).finalize() != self.meta.data_crc32 {
            return Err(StorageError::SnapshotCorrupt { index: self.meta.index, offset: 0 });
        }
        Ok(())
    }
}

impl<R: ReadChunk> ChunkSource for StoreChunks<R> {
    fn next_chunk(&mut self) -> Result<Option<Bytes>, StorageError> {
        if self.done {
            return Ok(None);
        }
        let current = match self.ahead.take() {
            Some(chunk) => chunk,
            None => self.read()?,
        };
        if current.done {
            self.end()?;
            return Ok(Some(current.data).filter(|data| !data.is_empty()));
        }
        // Not known to be the last: the next chunk is read first, and if it ends the data
        // (empty), the checksum is checked before this one leaves.
        let next = self.read()?;
        if next.done && next.data.is_empty() {
            self.end()?;
        } else {
            self.ahead = Some(next);
        }
        Ok(Some(current.data))
    }
}

/// Reads the whole of the store's snapshot `meta` and checks it against its checksum, holding one
/// chunk at a time: the first pass of a restore, before the state machine sees a byte.
pub(crate) fn verify<R: ReadChunk>(source: R, meta: &SnapshotMeta) -> Result<(), StorageError> {
    let mut chunks = StoreChunks::new(source, meta);
    while chunks.next_chunk()?.is_some() {}
    Ok(())
}

/// A piece of a snapshot being restored, from the worker to the apply thread.
pub(crate) enum RestorePiece {
    Data(Bytes),
    /// The end: the whole data matched the snapshot's checksum.
    End,
    /// The store failed, or the data did not match: the restore must fail.
    Failed(StorageError),
}

/// The pieces the worker sends the apply thread.
pub(crate) struct ChannelChunks(pub(crate) Receiver<RestorePiece>);

impl ChunkSource for ChannelChunks {
    fn next_chunk(&mut self) -> Result<Option<Bytes>, StorageError> {
        match self.0.recv() {
            Ok(RestorePiece::Data(data)) => Ok(Some(data)),
            Ok(RestorePiece::End) => Ok(None),
            Ok(RestorePiece::Failed(error)) => Err(error),
            // The worker stopped mid-way (it panicked): the data is incomplete.
            Err(_) => Err(StorageError::Io { kind: io::ErrorKind::UnexpectedEof, raw_os_error: None }),
        }
    }
}

/// Sends the store's snapshot `meta` to the apply thread, a chunk at a time: the second pass of a
/// restore under [`Execution::Threads`](super::config::Execution::Threads). Returns the store's
/// error (after telling the apply thread), or `Ok(false)` if the apply thread stopped taking the
/// pieces.
pub(crate) fn send_chunks<S: Storage + ?Sized>(
    store: &S,
    meta: &SnapshotMeta,
    pieces: &SyncSender<RestorePiece>,
) -> Result<bool, StorageError> {
    let mut chunks = StoreChunks::new(store, meta);
    loop {
        let piece = match chunks.next_chunk() {
            Ok(Some(data)) => RestorePiece::Data(data),
            Ok(None) => RestorePiece::End,
            Err(error) => {
                // Ignored if the apply thread is gone: the node stops with this error anyway.
                let _ = pieces.send(RestorePiece::Failed(error));
                return Err(error);
            }
        };
        let end = matches!(piece, RestorePiece::End);
        if pieces.send(piece).is_err() {
            return Ok(false);
        }
        if end {
            return Ok(true);
        }
    }
}

/// What the state machine restores from: an [`io::Read`] over a [`ChunkSource`]. A failure of the
/// source reaches the state machine as an [`io::Error`] whose inner error is the
/// [`StorageError`], and is kept here so the driver reports it as the store's, whatever the state
/// machine makes of it.
pub(crate) struct SnapshotReader<'a> {
    source: &'a mut dyn ChunkSource,
    current: Bytes,
    ended: bool,
    failure: Option<StorageError>,
}

impl<'a> SnapshotReader<'a> {
    pub(crate) fn new(source: &'a mut dyn ChunkSource) -> Self {
        SnapshotReader { source, current: Bytes::new(), ended: false, failure: None }
    }

    /// The store's failure, if reading failed.
    pub(crate) fn failure(&self) -> Option<StorageError> {
        self.failure
    }

    /// Reads whatever the state machine left unread, to the end: the checksum covers it, and
    /// the worker waits for it to be taken.
    pub(crate) fn drain(&mut self) -> Result<(), StorageError> {
        self.current = Bytes::new();
        while !self.ended {
            self.fill()?;
            self.current = Bytes::new();
        }
        Ok(())
    }

    /// Makes `current` non-empty unless the data has ended.
    fn fill(&mut self) -> Result<(), StorageError> {
        if let Some(error) = self.failure {
            return Err(error);
        }
        while self.current.is_empty() && !self.ended {
            match self.source.next_chunk() {
                Ok(Some(data)) => self.current = data,
                Ok(None) => self.ended = true,
                Err(error) => {
                    self.failure = Some(error);
                    return Err(error);
                }
            }
        }
        Ok(())
    }
}

impl io::Read for SnapshotReader<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if buffer.is_empty() {
            return Ok(0);
        }
        self.fill().map_err(io::Error::other)?;
        let count = buffer.len().min(self.current.len());
        buffer[..count].copy_from_slice(&self.current[..count]);
        bytes::Buf::advance(&mut self.current, count);
        Ok(count)
    }
}

/// Where a [`SnapshotSink`] hands its pieces.
pub(crate) trait PieceOut {
    /// Takes `piece` (it may leave the vector empty, having taken it); `false` once the
    /// destination failed or gave up (its owner knows why).
    fn put(&mut self, piece: &mut Vec<u8>) -> bool;
}

/// What the state machine writes its snapshot into: gathers its writes into pieces of at most
/// [`SNAPSHOT_WRITE_BYTES_MAX`] bytes for a [`PieceOut`].
pub(crate) struct SnapshotSink<'a> {
    out: &'a mut dyn PieceOut,
    buffer: Vec<u8>,
    closed: bool,
}

impl<'a> SnapshotSink<'a> {
    pub(crate) fn new(out: &'a mut dyn PieceOut) -> Self {
        SnapshotSink { out, buffer: Vec::new(), closed: false }
    }

    /// Whether the destination stopped taking data.
    pub(crate) fn closed(&self) -> bool {
        self.closed
    }

    fn hand_over(&mut self) -> io::Result<()> {
        if self.closed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, SnapshotSinkClosed));
        }
        if self.buffer.is_empty() {
            return Ok(());
        }
        if !self.out.put(&mut self.buffer) {
            self.closed = true;
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, SnapshotSinkClosed));
        }
        self.buffer.clear();
        Ok(())
    }
}

impl io::Write for SnapshotSink<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.closed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, SnapshotSinkClosed));
        }
        if self.buffer.capacity() == 0 {
            self.buffer.reserve_exact(SNAPSHOT_WRITE_BYTES_MAX);
        }
        let count = data.len().min(SNAPSHOT_WRITE_BYTES_MAX - self.buffer.len());
        self.buffer.extend_from_slice(&data[..count]);
        if self.buffer.len() == SNAPSHOT_WRITE_BYTES_MAX {
            self.hand_over()?;
        }
        Ok(count)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.hand_over()
    }
}

/// What a snapshot job hands back to the core: the snapshot taken (for the core to save), `None`
/// if the job was called off ([`SnapshotJob::cancel`]) before it ended, or why the node must
/// stop (the state machine failed: [`StopReason::SnapshotFailed`]; the store failed under it:
/// `StorageFailed(SaveSnapshot)`).
pub(crate) type TakenResult<S> = Result<Option<Box<dyn TakenSnapshot<S>>>, StopReason>;

/// A snapshot to take or restore, run by whoever holds the state machine: the apply thread, or a
/// thread of its own (a task of the host's `LocalSet` under
/// [`Execution::Tasks`](super::config::Execution::Tasks)) for an applier that left the worker.
pub(crate) trait SnapshotTask<SM: StateMachine>: Send {
    /// Has the state machine write its snapshot into the store's owned writer and finishes it,
    /// or restores the state machine from the store's owned reader, and hands the result to the
    /// core (waking it). A failed restore is also returned: the state machine can take no
    /// further step ([`Applier::take`] refuses them), and an apply thread stops.
    fn run(self: Box<Self>, applier: &mut Applier<SM>) -> Result<(), StopReason>;
}

/// The core's end of a snapshot being taken, or restored, off the worker.
pub(crate) struct SnapshotJob<S: LogStore> {
    pub(crate) done: Receiver<TakenResult<S>>,
    cancel: Arc<AtomicBool>,
    /// The index of the snapshot the job restores the state machine from (which ends with
    /// `Ok(None)`), or `None` for a job that takes one.
    pub(crate) restoring: Option<raft_core::Index>,
}

impl<S: LogStore> SnapshotJob<S> {
    /// A job for the snapshot `meta` (its checksum to come), written into `writer`; `wake` schedules the core once it
    /// ended (however it ended: it runs when the task is dropped, a panic of the state machine
    /// included). Returns the core's end and the task to run.
    pub(crate) fn new<SM: StateMachine>(
        meta: SnapshotMeta,
        writer: Box<dyn OwnedSnapshotWriter<S>>,
        wake: Box<dyn Fn() + Send>,
    ) -> (Self, Box<dyn SnapshotTask<SM>>)
    where
        S: 'static,
    {
        let (sender, done) = std::sync::mpsc::sync_channel(1);
        let cancel = Arc::new(AtomicBool::new(false));
        let index = meta.index;
        let out = OwnedOut { writer, crc: crc32fast::Hasher::new(), failure: None, cancel: Arc::clone(&cancel) };
        let task = Box::new(TakeTask { index, out, done: sender, wake: WakeOnDrop(wake) });
        (SnapshotJob { done, cancel, restoring: None }, task)
    }

    /// A job that restores the state machine from the store's snapshot, read by `reader` (both
    /// passes: the checksum, then the state machine); `wake` as for [`SnapshotJob::new`]. It
    /// ends with `Ok(None)` once restored. Called off by a stop, or once its group is asked to
    /// shut down (the state machine is partial then, and the applier refuses every later step),
    /// its next chunk read fails.
    pub(crate) fn restore<SM: StateMachine>(
        reader: Box<dyn OwnedSnapshotReader>,
        wake: Box<dyn Fn() + Send>,
    ) -> (Self, Box<dyn SnapshotTask<SM>>)
    where
        S: 'static,
    {
        let (sender, done) = std::sync::mpsc::sync_channel(1);
        let cancel = Arc::new(AtomicBool::new(false));
        let index = reader.meta().index;
        let task = Box::new(RestoreTask { reader, cancel: Arc::clone(&cancel), done: sender, wake: WakeOnDrop(wake) });
        (SnapshotJob { done, cancel, restoring: Some(index) }, task)
    }

    /// Calls the job off: the sink refuses the state machine's next piece, and the job ends
    /// without a snapshot (unless it ended already); a restore fails at its next chunk read.
    pub(crate) fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
    }
}

/// The threads a host lends to state machines writing snapshots off the worker, at most `max`
/// at once: each holds the group's applier and what waits for it, so a host with many groups
/// whose snapshot policies come due together does not start a thread (and hold back up to an
/// apply queue's worth of entries) for each of them. A group that finds none free asks again at
/// its next round.
#[derive(Debug)]
pub(crate) struct SnapshotSlots {
    in_use: std::sync::atomic::AtomicUsize,
    max: usize,
}

impl SnapshotSlots {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(SnapshotSlots { in_use: std::sync::atomic::AtomicUsize::new(0), max: max.max(1) })
    }

    /// A free slot, held until the returned guard is dropped; `None` when all are taken.
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<SnapshotSlot> {
        let taken = self
            .in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |in_use| (in_use < self.max).then_some(in_use + 1));
        taken.ok().map(|_| SnapshotSlot(Arc::clone(self)))
    }
}

/// One of a host's [`SnapshotSlots`], given back when dropped.
#[derive(Debug)]
pub(crate) struct SnapshotSlot(Arc<SnapshotSlots>);

impl Drop for SnapshotSlot {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Calls its function when dropped.
struct WakeOnDrop(Box<dyn Fn() + Send>);

impl Drop for WakeOnDrop {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// The task of a [`SnapshotJob`].
struct TakeTask<S: LogStore> {
    /// The index the snapshot is of: the state machine's applied index when the task runs.
    index: raft_core::Index,
    out: OwnedOut<S>,
    done: SyncSender<TakenResult<S>>,
    /// Woken last, once the result is sent or its sender dropped (see [`TakeTask::run`]).
    wake: WakeOnDrop,
}

impl<S: LogStore + 'static, SM: StateMachine> SnapshotTask<SM> for TakeTask<S> {
    fn run(self: Box<Self>, applier: &mut Applier<SM>) -> Result<(), StopReason> {
        // `wake` is bound first, so that it is dropped last also when the state machine panics
        // and the bindings are dropped while unwinding: the core, woken, then finds `done`
        // closed rather than empty, and does not wait for a wake that would never come.
        let TakeTask { wake, index, mut out, done } = *self;
        // A writer that is not finished is dropped before the result is sent (its store removes
        // its file then): once the core learns that the job ended, nothing of it is left to
        // touch a file, not even one of the same name that a later job may have begun.
        if out.cancel.load(Ordering::Acquire) {
            // Called off before it began (a snapshot installed meanwhile, a shutdown).
            drop(out);
            let _ = done.send(Ok(None));
            drop(wake);
            return Ok(());
        }
        // The core hands the task over after every entry up to `index`, and nothing else moves
        // the applied index: anything else is a bug of this driver, reported as the core's.
        if applier.applied != index {
            debug_assert_eq!(applier.applied, index, "a snapshot task ran at another index than it was made for");
            drop(out);
            let _ = done.send(Err(StopReason::CorePanicked));
            drop(wake);
            return Ok(());
        }
        let result = match applier.snapshot(&mut out) {
            Ok(true) => out.finish().map(Some).map_err(save_failed),
            // The sink closed: the store failed, or the job was called off.
            Ok(false) => {
                let failure = out.failure.take();
                drop(out);
                failure.map_or(Ok(None), |error| Err(save_failed(error)))
            }
            Err(reason) => {
                drop(out);
                Err(reason)
            }
        };
        let _ = done.send(result); // The core may have stopped.
        drop(wake);
        // A failure here is the snapshot's, reported to the core: the state machine is whole.
        Ok(())
    }
}

/// The task of a [`SnapshotJob::restore`].
struct RestoreTask<S: LogStore> {
    reader: Box<dyn OwnedSnapshotReader>,
    /// Set by [`SnapshotJob::cancel`] (a stop): the next chunk read fails, as once the group's
    /// `stopping` is set.
    cancel: Arc<AtomicBool>,
    done: SyncSender<TakenResult<S>>,
    /// Woken last, as a [`TakeTask`]'s.
    wake: WakeOnDrop,
}

impl<S: LogStore + 'static, SM: StateMachine> SnapshotTask<SM> for RestoreTask<S> {
    fn run(self: Box<Self>, applier: &mut Applier<SM>) -> Result<(), StopReason> {
        let RestoreTask { wake, mut reader, cancel, done } = *self;
        let meta = reader.meta().clone();
        let shared = Arc::clone(&applier.shared);
        let mut reader = CallOff { reader: &mut *reader, cancel: &cancel, shared: &shared, called_off: false };
        let mut result = restore_from(&mut reader, &meta, applier);
        if result.is_err() && reader.called_off {
            // Called off by the group's stop (recorded first, when the core stops) or by a
            // shutdown asked for: that is why it ended, not the read that failed for it.
            info!(index = %meta.index, "restoring the state machine called off: the group stops");
            result = Err(shared.stop_reason().unwrap_or(StopReason::Shutdown));
        }
        if let Err(reason) = &result {
            // Before the core learns of it: nothing is applied over a partial state.
            applier.refuse_after(reason.clone());
        }
        let _ = done.send(result.clone().map(|()| None)); // The core may have stopped.
        drop(wake);
        result
    }
}

/// An owned reader whose next chunk read fails once its job is called off (by the core's stop)
/// or the group is asked to shut down (by a handle or its host: the core may be waiting for the
/// state machine then, and would only call the job off once the restore ended).
struct CallOff<'a> {
    reader: &'a mut dyn OwnedSnapshotReader,
    cancel: &'a AtomicBool,
    shared: &'a Shared,
    /// Whether a read failed for this.
    called_off: bool,
}

impl ReadChunk for &mut CallOff<'_> {
    fn read_chunk(&mut self, _meta: &SnapshotMeta, offset: u64, bytes_max: u64) -> Result<SnapshotChunk, StorageError> {
        if self.cancel.load(Ordering::Acquire) || self.shared.stopping.load(Ordering::Acquire) {
            self.called_off = true;
            return Err(StorageError::Io { kind: io::ErrorKind::Interrupted, raw_os_error: None });
        }
        self.reader.chunk(offset, bytes_max)
    }
}

/// Restores `applier`'s state machine from the snapshot `meta` that `reader` reads: the whole
/// data checked against its checksum first, then read again for the state machine and checked
/// again (see the module's docs).
fn restore_from<SM: StateMachine>(
    reader: &mut CallOff<'_>,
    meta: &SnapshotMeta,
    applier: &mut Applier<SM>,
) -> Result<(), StopReason> {
    let read_failed = |error| StopReason::StorageFailed(StorageFailure::read(error));
    verify(&mut *reader, meta).map_err(read_failed)?;
    let mut source = StoreChunks::new(reader, meta);
    applier.restore(meta.clone(), &mut SnapshotReader::new(&mut source))
}

/// A failure of the store while it saved a local snapshot.
pub(crate) fn save_failed(error: impl std::error::Error + Send + Sync + 'static) -> StopReason {
    StopReason::StorageFailed(StorageFailure::new(StorageOperation::SaveSnapshot, error))
}

/// The store's owned writer as a [`PieceOut`]: each piece is written into the local snapshot,
/// and checksummed; a job called off refuses the next piece.
struct OwnedOut<S: LogStore> {
    writer: Box<dyn OwnedSnapshotWriter<S>>,
    crc: crc32fast::Hasher,
    failure: Option<S::Error>,
    cancel: Arc<AtomicBool>,
}

impl<S: LogStore> OwnedOut<S> {
    /// Ends the data, with the checksum of everything written.
    fn finish(self) -> Result<Box<dyn TakenSnapshot<S>>, S::Error> {
        self.writer.finish(self.crc.finalize())
    }
}

impl<S: LogStore> PieceOut for OwnedOut<S> {
    fn put(&mut self, piece: &mut Vec<u8>) -> bool {
        if self.failure.is_some() || self.cancel.load(Ordering::Acquire) {
            return false;
        }
        self.crc.update(piece);
        match self.writer.write(piece) {
            Ok(()) => true,
            Err(error) => {
                self.failure = Some(error);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn a_hosts_snapshot_slots_are_lent_up_to_their_number_and_given_back() {
        let slots = SnapshotSlots::new(2);
        let (first, second) = (slots.try_take(), slots.try_take());
        assert!(first.is_some() && second.is_some());
        assert!(slots.try_take().is_none(), "both are lent");
        drop(first);
        assert!(slots.try_take().is_some(), "one given back");
        assert!(SnapshotSlots::new(0).try_take().is_some(), "at least one");
    }

    /// Pieces from a list, then an end or an error.
    struct Listed(Vec<Bytes>, Option<StorageError>);

    impl ChunkSource for Listed {
        fn next_chunk(&mut self) -> Result<Option<Bytes>, StorageError> {
            if self.0.is_empty() {
                return self.1.map_or(Ok(None), Err);
            }
            Ok(Some(self.0.remove(0)))
        }
    }

    #[test]
    fn the_reader_concatenates_pieces_and_keeps_the_store_failure() {
        let pieces = vec![Bytes::from_static(b"abc"), Bytes::from_static(b"defg")];
        let mut source = Listed(pieces.clone(), None);
        let mut read = Vec::new();
        SnapshotReader::new(&mut source).read_to_end(&mut read).expect("read");
        assert_eq!(read, b"abcdefg");

        let corrupt = StorageError::SnapshotCorrupt { index: raft_core::Index(3), offset: 0 };
        let mut source = Listed(pieces, Some(corrupt));
        let mut reader = SnapshotReader::new(&mut source);
        let error = reader.read_to_end(&mut Vec::new()).expect_err("the source fails");
        let inner = error.get_ref().and_then(|inner| inner.downcast_ref::<StorageError>());
        assert_eq!(inner, Some(&corrupt), "the state machine sees the store's error");
        assert_eq!(reader.failure(), Some(corrupt));
        assert_eq!(reader.drain(), Err(corrupt));
    }

    /// Collects pieces, refusing after `accept` of them.
    struct Collect(Vec<Vec<u8>>, usize);

    impl PieceOut for Collect {
        fn put(&mut self, piece: &mut Vec<u8>) -> bool {
            if self.0.len() == self.1 {
                return false;
            }
            self.0.push(piece.clone());
            true
        }
    }

    #[test]
    fn the_sink_hands_over_bounded_pieces_and_reports_a_closed_destination() {
        let data: Vec<u8> = (0..(SNAPSHOT_WRITE_BYTES_MAX * 2 + 10)).map(|i| i as u8).collect();
        let mut out = Collect(Vec::new(), usize::MAX);
        let mut sink = SnapshotSink::new(&mut out);
        for piece in data.chunks(1000) {
            sink.write_all(piece).expect("write");
        }
        sink.flush().expect("flush");
        let sizes: Vec<usize> = out.0.iter().map(Vec::len).collect();
        assert_eq!(sizes, [SNAPSHOT_WRITE_BYTES_MAX, SNAPSHOT_WRITE_BYTES_MAX, 10]);
        assert_eq!(out.0.concat(), data);

        let mut out = Collect(Vec::new(), 1);
        let mut sink = SnapshotSink::new(&mut out);
        let error = sink.write_all(&data).expect_err("the destination closes after one piece");
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
        assert!(sink.closed());
        assert!(sink.write(b"more").is_err(), "and stays closed");
    }
}
