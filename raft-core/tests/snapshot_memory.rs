//! A 100 MB snapshot streams from a leader to a lagging follower in 64 KiB chunks, and memory
//! stays within a few chunks: the data is never held whole, neither by the core nor by a driver
//! that follows the contract. Measured as peak heap allocation with dhat (its own test binary,
//! since dhat replaces the global allocator and allows one profiler per process).
//!
//! The leader's store *generates* the snapshot's bytes on demand for each
//! [`Storage::snapshot_chunk`] call; the follower's store only feeds each received chunk into a
//! running checksum and drops it. So any buffering of the snapshot shows up as heap growth
//! caused by the core or the driving loop, which is what the test bounds.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use raft_core::{
    Entry, EntryPayload, Index, InitialState, Membership, Message, MessageBody, NodeId, Options, Output, Raft,
    ReceivedChunk, SnapshotChunk, SnapshotMeta, StepError, Storage, StorageError, Term,
};
use raft_storage::{LogStore, MemStorage};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// 100 MB (not MiB), so the last chunk is a short one: 1525 full chunks and one of 57,600 bytes.
const SNAPSHOT_BYTES: u64 = 100_000_000;
const CHUNK_BYTES: u64 = 64 * 1024;
const WINDOW_CHUNKS: u64 = 4;
const LEADER: NodeId = NodeId(1);
const HELPER: NodeId = NodeId(2);
const LAGGARD: NodeId = NodeId(3);
/// During the transfer every node ticks once per this many delivered messages, so heartbeats
/// (and their answers, which can rewind a stalled transfer) interleave with the chunks.
const TICK_EVERY_DELIVERIES: u64 = 64;

/// The snapshot's byte at `position`: a cheap multiplicative hash, so that a chunk written at the
/// wrong offset, twice, or not at all changes the checksum.
fn snapshot_byte(position: u64) -> u8 {
    (position.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

fn fill_snapshot_bytes(offset: u64, buffer: &mut [u8]) {
    for (position, byte) in (offset..).zip(buffer.iter_mut()) {
        *byte = snapshot_byte(position);
    }
}

/// The checksum of the whole generated snapshot, computed through a small stack buffer of an odd
/// size (so its boundaries differ from the transfer's chunks), without touching the heap.
fn expected_checksum() -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    let mut buffer = [0u8; 4093];
    let mut offset = 0;
    while offset < SNAPSHOT_BYTES {
        let len = (SNAPSHOT_BYTES - offset).min(buffer.len() as u64) as usize;
        fill_snapshot_bytes(offset, &mut buffer[..len]);
        hasher.update(&buffer[..len]);
        offset += len as u64;
    }
    hasher.finalize()
}

/// What a store received of a snapshot, chunk by chunk (the data itself is dropped).
#[derive(Clone, Debug)]
struct Received {
    meta: SnapshotMeta,
    bytes: u64,
    chunks: u64,
    checksum: crc32fast::Hasher,
}

/// A store whose log lives in a `MemStorage`, but whose snapshot data is never held: as a
/// sender it generates the bytes of its snapshot per chunk; as a receiver it checksums and drops
/// them (a real store would stream them to a file).
struct StreamingStore {
    log: MemStorage,
    /// The snapshot this store holds (index 0: none). Its data is `SNAPSHOT_BYTES` bytes of
    /// `snapshot_byte`: generated on the leader; on the follower, received and verified against
    /// the same bytes by checksum, so it may serve them the same way.
    snapshot: SnapshotMeta,
    /// The snapshot being received.
    staging: Option<Received>,
    /// The last snapshot installed from received chunks.
    installed: Option<Received>,
    /// `snapshot_chunk` calls answered (the trait reads through `&self`).
    chunk_reads: Cell<u64>,
}

impl StreamingStore {
    fn new(membership: Membership) -> Self {
        StreamingStore {
            log: MemStorage::new(membership),
            snapshot: SnapshotMeta::default(),
            staging: None,
            installed: None,
            chunk_reads: Cell::new(0),
        }
    }

    /// The staging "write": offset 0 starts a new staging area; every other chunk must continue it.
    fn write_chunk(&mut self, chunk: &ReceivedChunk) {
        if chunk.offset == 0 {
            let checksum = crc32fast::Hasher::new();
            self.staging = Some(Received { meta: chunk.meta.clone(), bytes: 0, chunks: 0, checksum });
        }
        let staging = self.staging.as_mut().expect("a chunk after offset 0 continues a staging area");
        assert_eq!(staging.meta, chunk.meta, "chunk of another snapshot than the staged one");
        assert_eq!(chunk.offset, staging.bytes, "chunk does not continue the staged bytes");
        staging.checksum.update(&chunk.data);
        staging.bytes += chunk.data.len() as u64;
        staging.chunks += 1;
    }

    /// Installs the staged snapshot: it becomes this store's snapshot, and the log boundary moves
    /// to it (the log is emptied unless it holds the snapshot's last entry).
    fn install(&mut self, meta: &SnapshotMeta) {
        let staged = self.staging.take().expect("an install follows its chunks");
        assert_eq!(&staged.meta, meta, "installing another snapshot than the staged one");
        self.log.compact(meta.index, meta.term).expect("memory storage");
        self.snapshot = meta.clone();
        self.installed = Some(staged);
    }
}

impl Storage for StreamingStore {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        let mut state = self.log.initial_state()?;
        state.snapshot = self.snapshot.clone();
        Ok(state)
    }

    fn entries(&self, low: Index, high: Index, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        self.log.entries(low, high, bytes_max)
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        self.log.term(index)
    }

    fn first_index(&self) -> Result<Index, StorageError> {
        self.log.first_index()
    }

    fn last_index(&self) -> Result<Index, StorageError> {
        self.log.last_index()
    }

    fn snapshot(&self) -> Result<SnapshotMeta, StorageError> {
        Ok(self.snapshot.clone())
    }

    fn snapshot_chunk(
        &self,
        index: Index,
        term: Term,
        offset: u64,
        bytes_max: u64,
    ) -> Result<SnapshotChunk, StorageError> {
        if !self.snapshot.exists() || self.snapshot.index != index || self.snapshot.term != term {
            return Err(StorageError::SnapshotReplaced(index));
        }
        self.chunk_reads.set(self.chunk_reads.get() + 1);
        let start = offset.min(SNAPSHOT_BYTES);
        let end = start.saturating_add(bytes_max.max(1)).min(SNAPSHOT_BYTES);
        // Exactly one allocation of the chunk's size (Bytes::from takes the Vec without copying).
        let mut data = vec![0u8; (end - start) as usize];
        fill_snapshot_bytes(start, &mut data);
        Ok(SnapshotChunk { data: Bytes::from(data), done: end == SNAPSHOT_BYTES })
    }
}

/// What the driving loop observed.
#[derive(Debug, Default)]
struct Observed {
    /// Most snapshot bytes at once in the network queue plus outputs not yet written.
    max_in_flight_bytes: u64,
    /// Most chunks sent by the leader and not acknowledged by the follower, per its progress.
    max_unacked_chunks: u64,
    /// `InstallSnapshot` messages the leader sent.
    chunks_sent: u64,
    delivered: u64,
    dropped: u64,
    /// Rounds of `tick_all`.
    ticks: u64,
    step_errors: u64,
    last_step_error: Option<StepError>,
}

/// A synchronous, in-order, lossless network over three nodes, writing every output at once.
struct Net {
    nodes: BTreeMap<NodeId, Raft<StreamingStore>>,
    /// Crashed nodes: they take no input and messages to them are dropped.
    down: BTreeSet<NodeId>,
    queue: VecDeque<Message>,
    /// Entries each node applied since its last snapshot install.
    applied: BTreeMap<NodeId, Vec<Entry>>,
    observed: Observed,
}

fn snapshot_bytes_in<'a>(messages: impl IntoIterator<Item = &'a Message>) -> u64 {
    messages
        .into_iter()
        .map(|m| match &m.body {
            MessageBody::InstallSnapshot { data, .. } => data.len() as u64,
            _ => 0,
        })
        .sum()
}

fn chunk_messages_in(messages: &[Message]) -> u64 {
    messages.iter().filter(|m| matches!(m.body, MessageBody::InstallSnapshot { .. })).count() as u64
}

impl Net {
    fn new() -> Self {
        let voters = [LEADER, HELPER, LAGGARD];
        let nodes = voters
            .iter()
            .map(|&id| {
                let options = Options::builder()
                    .election_ticks(10)
                    .heartbeat_ticks(1)
                    .snapshot_chunk_bytes_max(CHUNK_BYTES)
                    .snapshot_chunks_inflight_max(WINDOW_CHUNKS)
                    .compaction_margin_entries(0)
                    .rng_seed(id.0)
                    .build()
                    .expect("valid options");
                let store = StreamingStore::new(Membership::new(voters));
                (id, Raft::new(id, options, store).expect("memory storage"))
            })
            .collect();
        Net {
            nodes,
            down: BTreeSet::new(),
            queue: VecDeque::new(),
            applied: voters.iter().map(|&id| (id, Vec::new())).collect(),
            observed: Observed::default(),
        }
    }

    fn node(&self, id: NodeId) -> &Raft<StreamingStore> {
        &self.nodes[&id]
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Raft<StreamingStore> {
        self.nodes.get_mut(&id).expect("known node")
    }

    /// Takes one node's output and carries it out in contract order: write chunks, install,
    /// persist hard state and entries, report durability, apply, then send.
    fn process(&mut self, id: NodeId) {
        if self.down.contains(&id) {
            return;
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        let Output {
            hard_state,
            snapshot_chunks,
            install_snapshot,
            entries,
            messages,
            messages_after_persist,
            committed,
            ..
        } = node.take_output().expect("memory storage never fails");

        // Every snapshot byte the driver holds right now: queued, being written, being sent.
        let held = snapshot_bytes_in(&self.queue)
            + snapshot_chunks.iter().map(|c| c.data.len() as u64).sum::<u64>()
            + snapshot_bytes_in(&messages)
            + snapshot_bytes_in(&messages_after_persist);
        self.observed.max_in_flight_bytes = self.observed.max_in_flight_bytes.max(held);
        self.observed.chunks_sent += chunk_messages_in(&messages) + chunk_messages_in(&messages_after_persist);

        let store = node.storage_mut();
        for chunk in &snapshot_chunks {
            store.write_chunk(chunk);
        }
        drop(snapshot_chunks);
        if let Some(meta) = &install_snapshot {
            store.install(meta);
        }
        store.log.persist(hard_state, &entries).expect("the core hands out writable entries");
        let last_write = match (entries.last(), &install_snapshot) {
            (Some(last), _) => Some((last.index, last.term)),
            (None, Some(meta)) => Some((meta.index, meta.term)),
            (None, None) => None,
        };
        if let Some((index, term)) = last_write {
            node.on_persisted(index, term);
        }
        if id == LEADER
            && let Some(transfer) = node.status().progress.get(&LAGGARD).and_then(|p| p.snapshot)
        {
            let unacked = (transfer.sent_offset - transfer.acked_offset).div_ceil(CHUNK_BYTES);
            self.observed.max_unacked_chunks = self.observed.max_unacked_chunks.max(unacked);
        }
        let applied = self.applied.get_mut(&id).expect("known node");
        if install_snapshot.is_some() {
            applied.clear(); // The state machine restarts from the snapshot.
        }
        applied.extend(committed);
        self.queue.extend(messages);
        self.queue.extend(messages_after_persist);
    }

    fn process_all(&mut self) {
        for id in [LEADER, HELPER, LAGGARD] {
            self.process(id);
        }
    }

    fn tick_all(&mut self) {
        self.observed.ticks += 1;
        for id in [LEADER, HELPER, LAGGARD] {
            if !self.down.contains(&id) {
                self.node_mut(id).tick();
            }
        }
    }

    /// Delivers the oldest queued message (and processes its receiver); false when none is queued.
    fn deliver_one(&mut self) -> bool {
        let Some(message) = self.queue.pop_front() else { return false };
        let to = message.to;
        if self.down.contains(&to) {
            self.observed.dropped += 1;
            return true;
        }
        self.observed.delivered += 1;
        if let Err(error) = self.node_mut(to).step(message) {
            self.observed.step_errors += 1;
            self.observed.last_step_error = Some(error);
        }
        self.process(to);
        true
    }

    /// Delivers until the network is quiet, ticking every node once per `tick_every` deliveries
    /// (never, with `None`).
    fn run_until_quiet(&mut self, tick_every: Option<u64>) {
        self.process_all();
        for step in 1..=1_000_000u64 {
            if !self.deliver_one() {
                self.process_all();
                if self.queue.is_empty() {
                    return;
                }
            }
            if tick_every.is_some_and(|every| step % every == 0) {
                self.tick_all();
                self.process_all();
            }
        }
        panic!("the network never went quiet");
    }

    fn propose(&mut self, data: Vec<u8>) -> Index {
        let index = self.node_mut(LEADER).propose(Bytes::from(data)).expect("the leader takes proposals");
        self.run_until_quiet(None);
        index
    }
}

fn normal_payloads(entries: &[Entry]) -> Vec<Bytes> {
    entries
        .iter()
        .filter_map(|e| match &e.payload {
            EntryPayload::Normal(data) => Some(data.clone()),
            _ => None,
        })
        .collect()
}

/// The snapshot data flows through a window of `WINDOW_CHUNKS` chunks of `CHUNK_BYTES`, so the
/// heap may grow by that window (256 KiB) plus the small structures the transfer creates (queued
/// messages, output vectors, metadata clones, the follower's progress and status copies: a few
/// KiB). The bound doubles the window: 8 chunks = 512 KiB, 1/190 of the snapshot. Buffering the
/// snapshot, or leaking even a few bytes per chunk over its 1526 chunks, would cross it.
const PEAK_HEAP_BOUND_BYTES: u64 = 8 * CHUNK_BYTES;

#[test]
fn hundred_megabyte_snapshot_streams_in_a_bounded_window() {
    let started = std::time::Instant::now();
    let expected_checksum = expected_checksum();
    let expected_chunks = SNAPSHOT_BYTES.div_ceil(CHUNK_BYTES);

    // The laggard is down while the others elect node 1 and commit a few entries.
    let mut net = Net::new();
    net.down.insert(LAGGARD);
    net.node_mut(LEADER).campaign();
    net.run_until_quiet(None);
    assert!(net.node(LEADER).is_leader(), "node 1 won with node 2's vote");
    for i in 0..5 {
        net.propose(format!("before-snapshot-{i}").into_bytes());
    }
    let leader = net.node(LEADER);
    let applied = leader.status().applied;
    assert_eq!(applied, leader.last_index(), "everything committed and applied with node 2");
    assert_eq!(applied, Index(6), "the no-op and five proposals");

    // The leader's state machine "snapshots" at its applied index; the log is compacted there, so
    // the laggard, which holds nothing, can only catch up from the snapshot.
    let leader = net.node_mut(LEADER);
    let meta = leader.snapshot_meta(applied, expected_checksum).expect("applied and in the log");
    leader.storage_mut().snapshot = meta.clone();
    let (index, term) = leader.compaction_point().expect("the log starts below the snapshot");
    assert_eq!(index, meta.index, "no compaction margin");
    leader.storage_mut().log.compact(index, term).expect("memory storage");
    assert_eq!(leader.storage().first_index(), Ok(meta.index.next()));

    // Measure from here: allocations made before the profiler starts are not counted (and their
    // frees during it do not lower the counts), so `max_bytes` is the transfer's peak growth.
    let profiler = dhat::Profiler::builder().testing().build();
    let baseline = dhat::HeapStats::get();
    let transfer_started = std::time::Instant::now();
    net.observed = Observed::default();
    net.down.remove(&LAGGARD);
    // The first heartbeat reaches the laggard; its answer makes the leader find the entries
    // compacted and start the snapshot transfer.
    net.tick_all();
    net.run_until_quiet(Some(TICK_EVERY_DELIVERIES));
    let heap = dhat::HeapStats::get();
    let transfer_time = transfer_started.elapsed();
    drop(profiler);

    let observed = &net.observed;
    let peak = heap.max_bytes as u64;
    let installed = net.node(LAGGARD).storage().installed.clone().expect("the laggard installed a snapshot");
    let chunk_reads = net.node(LEADER).storage().chunk_reads.get();
    println!("snapshot: {SNAPSHOT_BYTES} bytes in {CHUNK_BYTES}-byte chunks, window {WINDOW_CHUNKS} chunks");
    println!(
        "heap: baseline {} B current, peak growth during the transfer {peak} B ({:.1} chunks), \
         {} B still allocated after it, {} allocations; bound {PEAK_HEAP_BOUND_BYTES} B",
        baseline.curr_bytes,
        peak as f64 / CHUNK_BYTES as f64,
        heap.curr_bytes,
        heap.total_blocks,
    );
    println!(
        "chunks: {} sent, {chunk_reads} read from the leader's store, {} written by the follower \
         (expected {expected_chunks}); max unacknowledged {} chunks; max in flight {} B",
        observed.chunks_sent, installed.chunks, observed.max_unacked_chunks, observed.max_in_flight_bytes,
    );
    println!(
        "messages: {} delivered, {} dropped, {} step errors, {} tick rounds; transfer took {transfer_time:?}",
        observed.delivered, observed.dropped, observed.step_errors, observed.ticks,
    );

    // The follower received exactly the generated bytes, once, in order.
    assert_eq!(installed.meta, meta, "the leader's snapshot was installed");
    assert_eq!(installed.bytes, SNAPSHOT_BYTES);
    assert_eq!(installed.checksum.clone().finalize(), expected_checksum, "received bytes differ");
    assert_eq!(installed.chunks, expected_chunks, "every chunk written exactly once");
    assert_eq!(observed.chunks_sent, expected_chunks, "no chunk resent (nothing was lost)");
    assert_eq!(chunk_reads, expected_chunks, "no chunk read twice from the leader's store");
    assert_eq!(observed.step_errors, 0, "last error: {:?}", observed.last_step_error);
    assert_eq!(observed.dropped, 0);

    // Flow control held: never more than the window in flight, in the network or the outputs.
    assert!(observed.max_unacked_chunks <= WINDOW_CHUNKS, "{} chunks unacknowledged", observed.max_unacked_chunks);
    assert!(
        observed.max_in_flight_bytes <= WINDOW_CHUNKS * CHUNK_BYTES,
        "{} snapshot bytes in flight",
        observed.max_in_flight_bytes
    );
    assert!(peak <= PEAK_HEAP_BOUND_BYTES, "peak heap growth {peak} B above {PEAK_HEAP_BOUND_BYTES} B");

    // The laggard adopted the snapshot as its log boundary and committed/applied through it.
    let laggard = net.node(LAGGARD);
    assert_eq!(laggard.storage().snapshot().expect("memory"), meta);
    assert_eq!(laggard.storage().first_index(), Ok(meta.index.next()));
    assert_eq!(laggard.commit_index(), meta.index);
    assert_eq!(laggard.status().applied, meta.index);
    assert!(net.applied[&LAGGARD].is_empty(), "nothing to apply beyond the snapshot yet");
    assert!(!net.node(LEADER).is_sending_snapshot(LAGGARD));
    assert!(net.node(LEADER).is_replicating(LAGGARD), "the leader appends to the laggard again");

    // Later entries replicate to it normally.
    let mut proposed = Vec::new();
    for i in 0..3 {
        let data = format!("after-snapshot-{i}").into_bytes();
        proposed.push(Bytes::from(data.clone()));
        net.propose(data);
    }
    let (leader, laggard) = (net.node(LEADER), net.node(LAGGARD));
    assert_eq!(laggard.last_index(), leader.last_index());
    assert_eq!(laggard.commit_index(), leader.commit_index());
    assert_eq!(laggard.status().applied, leader.commit_index());
    for i in meta.index.next().0..=leader.last_index().0 {
        assert_eq!(laggard.storage().term(Index(i)), leader.storage().term(Index(i)), "term at {i}");
    }
    assert_eq!(normal_payloads(&net.applied[&LAGGARD]), proposed, "the laggard applied the new entries");
    assert_eq!(net.observed.step_errors, 0, "last error: {:?}", net.observed.last_step_error);
    println!("total test time {:?}", started.elapsed());
}
