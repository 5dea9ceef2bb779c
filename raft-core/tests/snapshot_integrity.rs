//! Snapshot integrity: a chunk or a whole snapshot whose bytes fail a checksum is refused (with a
//! typed reason), what was received of it is dropped and never installed, and the leader sends
//! it again from offset 0; a leader whose own stored copy fails the check stops (a typed storage
//! error) instead of streaming it.

mod common;

use bytes::Bytes;
use common::{Cluster, Fate, cluster_tuned, deliver_with, ids, message, node_with_log, options, tick_with};
use raft_core::{
    Index, Malformed, Membership, Message, MessageBody, NodeId, Raft, SnapshotChunk, SnapshotMeta, SnapshotRefusal,
    StepError, Storage, StorageError, Term, snapshot_crc32,
};
use raft_storage::{LogStore, MemStorage};

const CHUNK_BYTES: u64 = 8;
const DATA: &[u8] = b"0123456789abcdefghijklmnopqrstuv"; // Four chunks of 8 bytes.

fn meta_of(index: u64, data: &[u8]) -> SnapshotMeta {
    SnapshotMeta {
        index: Index(index),
        term: Term(1),
        membership: Membership::new(ids(3)),
        data_crc32: snapshot_crc32(data),
    }
}

/// Follower 1 (empty log, term 1) and the chunks of `DATA` from leader 2, each a message.
fn follower_and_chunks(meta: &SnapshotMeta) -> (Raft<MemStorage>, Vec<Message>) {
    let options = common::base_options(NodeId(1)).snapshot_chunk_bytes_max(CHUNK_BYTES).build().expect("valid");
    let node = node_with_log(NodeId(1), &ids(3), &[], 1, options);
    let chunks = DATA
        .chunks(CHUNK_BYTES as usize)
        .enumerate()
        .map(|(n, data)| {
            let offset = n as u64 * CHUNK_BYTES;
            let done = offset + data.len() as u64 == DATA.len() as u64;
            let body = MessageBody::install_snapshot(meta.clone(), offset, Bytes::copy_from_slice(data), done);
            message(2, 1, 1, body)
        })
        .collect();
    (node, chunks)
}

fn with_data(m: &Message, data: &'static [u8]) -> Message {
    let mut m = m.clone();
    if let MessageBody::InstallSnapshot { data: bytes, .. } = &mut m.body {
        *bytes = Bytes::from_static(data);
    }
    m
}

fn refusals(messages: &[Message]) -> Vec<SnapshotRefusal> {
    messages
        .iter()
        .filter_map(|m| match m.body {
            MessageBody::SnapshotRefused { reason, .. } => Some(reason),
            _ => None,
        })
        .collect()
}

/// A chunk damaged on the way (its bytes no longer match its checksum) is refused before it is
/// written: the transfer is dropped (a later chunk is answered "from offset 0"), nothing is
/// installed, and the leader is asked to start over.
#[test]
fn a_chunk_that_fails_its_checksum_is_refused_and_the_transfer_dropped() {
    let meta = meta_of(5, DATA);
    let (mut node, chunks) = follower_and_chunks(&meta);
    node.step(chunks[0].clone()).expect("a good first chunk");
    let damaged = with_data(&chunks[1], b"89abcdeX");
    let expected = Malformed::SnapshotChunkChecksum { index: Index(5), offset: CHUNK_BYTES };
    assert_eq!(node.step(damaged), Err(StepError::Malformed(expected)));
    let output = node.take_output().expect("memory");
    assert_eq!(output.snapshot_chunks.len(), 0, "neither chunk is handed out: the transfer is dropped");
    assert_eq!(output.install_snapshot, None);
    let reasons = refusals(&output.messages_after_persist);
    assert_eq!(reasons, vec![SnapshotRefusal::ChunkChecksum { offset: CHUNK_BYTES }]);
    // What was received is gone: the next chunk is answered with "send from 0".
    node.step(chunks[2].clone()).expect("answered");
    let output = node.take_output().expect("memory");
    let answer = output.messages_after_persist.iter().find_map(|m| match m.body {
        MessageBody::SnapshotResponse { next_offset, .. } => Some(next_offset),
        _ => None,
    });
    assert_eq!(answer, Some(0));
    assert!(output.snapshot_chunks.is_empty() && output.install_snapshot.is_none());
    // Sent again from the start, intact, it installs.
    for chunk in &chunks {
        node.step(chunk.clone()).expect("good chunks");
    }
    let output = node.take_output().expect("memory");
    assert_eq!(output.install_snapshot, Some(meta));
    let staged: Vec<u8> = output.snapshot_chunks.iter().flat_map(|c| c.data.to_vec()).collect();
    assert_eq!(staged, DATA, "a new staging area from offset 0 holds exactly the data");
    assert_eq!(output.snapshot_chunks[0].offset, 0);
}

/// Chunks that each match their own checksum but whose whole data does not match the metadata's
/// checksum (the leader's copy differs from the snapshot taken): the last chunk is refused,
/// nothing is installed, and a later transfer starts a new staging area.
#[test]
fn a_snapshot_whose_whole_data_fails_its_checksum_is_not_installed() {
    let meta = SnapshotMeta { data_crc32: snapshot_crc32(b"other data"), ..meta_of(5, DATA) };
    let (mut node, chunks) = follower_and_chunks(&meta);
    let (last, first) = chunks.split_last().expect("chunks");
    for chunk in first {
        node.step(chunk.clone()).expect("each chunk matches its own checksum");
    }
    let handed_out = node.take_output().expect("memory").snapshot_chunks.len();
    assert_eq!(handed_out, first.len(), "chunks are written as they arrive");
    assert_eq!(node.step(last.clone()), Err(StepError::Malformed(Malformed::SnapshotChecksum(Index(5)))));
    let output = node.take_output().expect("memory");
    assert_eq!(output.install_snapshot, None, "never installed");
    assert!(output.snapshot_chunks.is_empty(), "the last chunk is not written either");
    assert_eq!(refusals(&output.messages_after_persist), vec![SnapshotRefusal::DataChecksum]);
    assert_eq!(node.commit_index(), Index(0), "the log is untouched");
    assert_eq!(node.storage().snapshot(), Ok(SnapshotMeta::default()));
    // The same chunks again: the earlier bytes no longer count, the transfer starts from 0.
    node.step(chunks[1].clone()).expect("answered");
    let output = node.take_output().expect("memory");
    let restart = output
        .messages_after_persist
        .iter()
        .any(|m| matches!(m.body, MessageBody::SnapshotResponse { next_offset: 0, .. }));
    assert!(restart, "the dropped transfer is asked for from offset 0");
}

/// Three nodes with 8-byte chunks; node 1 leads and snapshotted while node 3 was down.
fn behind_by_a_snapshot() -> (Cluster, SnapshotMeta) {
    let mut c = cluster_tuned(3, |b| {
        b.compaction_margin_entries(0).snapshot_chunk_bytes_max(CHUNK_BYTES).snapshot_chunks_inflight_max(2)
    });
    c.elect(1);
    c.crash(3);
    for payload in [&b"payload-00"[..], b"payload-01", b"payload-02", b"payload-03", b"payload-04"] {
        c.propose(1, payload).expect("leader accepts");
    }
    let meta = c.snapshot(1);
    c.restart(3);
    (c, meta)
}

/// A chunk damaged in transit (once): the follower refuses it, the leader starts over from
/// offset 0 at once, and the follower installs exactly the leader's data.
#[test]
fn the_leader_resends_a_refused_snapshot_from_offset_zero() {
    let (mut c, meta) = behind_by_a_snapshot();
    let mut damaged = None;
    let held = deliver_with(&mut c, |_| Fate::Deliver);
    assert!(held.is_empty());
    for _ in 0..4 {
        let held = tick_with(&mut c, |m| match &m.body {
            MessageBody::InstallSnapshot { offset, .. } if *offset == CHUNK_BYTES && damaged.is_none() => Fate::Hold,
            _ => Fate::Deliver,
        });
        for mut m in held {
            if let MessageBody::InstallSnapshot { data, .. } = &mut m.body {
                let mut bytes = data.to_vec();
                bytes[0] ^= 0x40; // One bit flips on the way.
                *data = Bytes::from(bytes);
            }
            damaged = Some(m.clone());
            c.in_flight.push_back(m);
        }
        deliver_with(&mut c, |_| Fate::Deliver);
    }
    assert!(damaged.is_some(), "a chunk was damaged");
    let refused = c.delivered.iter().filter(|m| matches!(m.body, MessageBody::SnapshotRefused { .. })).count();
    assert_eq!(refused, 1, "the follower refused the damaged chunk");
    let restarts = c
        .delivered
        .iter()
        .filter(|m| m.to == NodeId(3) && matches!(m.body, MessageBody::InstallSnapshot { offset: 0, .. }));
    assert!(restarts.count() >= 2, "the leader sent the snapshot again from offset 0");
    c.ticks(6);
    assert_eq!(c.node(3).storage().snapshot(), Ok(meta));
    assert_eq!(c.node(3).storage().snapshot_data(), c.node(1).storage().snapshot_data());
    assert_eq!(c.applied_data(3), c.applied_data(1));
}

/// The leader's stored copy is not the data the snapshot was taken with (its checksum fails when
/// read back in full): the leader stops with a typed storage error instead of sending the last
/// chunk, so the follower never completes (or installs) it.
#[test]
fn a_leader_whose_stored_copy_fails_its_checksum_stops() {
    let (c, meta) = behind_by_a_snapshot();
    let mut rotten = c.node(1).storage().snapshot_data().to_vec();
    let middle = rotten.len() / 2;
    rotten[middle] ^= 1; // The stored bytes rot; metadata and checksum stay.
    let mut node = rotten_leader(&c, &rotten);
    let mut failure = None;
    for _ in 0..64 {
        match node.take_output() {
            Ok(output) => {
                for m in output.messages {
                    if let MessageBody::InstallSnapshot { meta, offset, data, done, .. } = m.body {
                        assert!(!done, "the last chunk of a damaged copy is never sent");
                        let next_offset = offset + data.len() as u64;
                        let (index, term) = (meta.index, meta.term);
                        let ack = MessageBody::SnapshotResponse { index, term, next_offset, gap: false };
                        let _ = node.step(message(3, 1, node.term().0, ack));
                    }
                }
            }
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    assert!(matches!(failure, Some(StorageError::SnapshotCorrupt { index, .. }) if index == meta.index), "{failure:?}");
    assert!(node.has_output(), "the failure is output the driver must take");
    assert_eq!(node.take_output(), Err(failure.expect("failed")), "the failure stays: the driver must stop");
}

/// A leader elected over a store whose snapshot data is `rotten` (its metadata, and checksum, are
/// node 1's), with node 3 found to need the snapshot.
fn rotten_leader(c: &Cluster, rotten: &[u8]) -> Raft<RottenStore> {
    let inner = c.node(1).storage().clone();
    let store = RottenStore { inner, data: Bytes::copy_from_slice(rotten), corrupt_reads: false };
    let options = common::base_options(NodeId(1))
        .compaction_margin_entries(0)
        .snapshot_chunk_bytes_max(CHUNK_BYTES)
        .snapshot_chunks_inflight_max(2)
        .build()
        .expect("valid");
    let mut node = Raft::new(NodeId(1), options, store).expect("memory");
    win_election(&mut node);
    node
}

/// Persists `output` into the node's inner store, as a driver would, and reports it.
fn persist(node: &mut Raft<RottenStore>, output: &raft_core::Output) {
    let store = &mut node.storage_mut().inner;
    store.persist(output.hard_state, &output.entries).expect("memory");
    if let Some(last) = output.entries.last() {
        node.on_persisted(last.index, last.term);
    }
}

/// Makes `node` leader with the votes of 2 and 3; then node 3 answers its first append with an
/// empty log, so the leader starts sending it the snapshot.
fn win_election(node: &mut Raft<RottenStore>) {
    node.campaign();
    let mut append_to_3 = None;
    for _ in 0..4 {
        let output = node.take_output().expect("memory");
        persist(node, &output);
        for m in output.messages.iter().chain(&output.messages_after_persist) {
            match m.body {
                MessageBody::VoteRequest { pre_vote, .. } => {
                    let answer = MessageBody::VoteResponse { pre_vote, granted: true };
                    let _ = node.step(message(m.to.0, 1, m.term.0, answer));
                }
                MessageBody::AppendEntries { prev_log_index, .. } if m.to == NodeId(3) => {
                    append_to_3 = Some((m.term, prev_log_index));
                }
                _ => {}
            }
        }
    }
    assert!(node.is_leader(), "node 1 leads");
    let (term, rejected_index) = append_to_3.expect("an append went to node 3");
    let hint = raft_core::ConflictHint { term: None, index: Index(1) };
    let reject = MessageBody::AppendResponse(raft_core::AppendResult::Reject { rejected_index, hint });
    let _ = node.step(message(3, 1, term.0, reject));
}

/// A store that serves `data` as its snapshot's bytes (instead of the data its metadata was
/// taken with), or that reports every snapshot read as corrupt.
struct RottenStore {
    inner: MemStorage,
    data: Bytes,
    corrupt_reads: bool,
}

impl Storage for RottenStore {
    fn initial_state(&self) -> Result<raft_core::InitialState, StorageError> {
        self.inner.initial_state()
    }
    fn entries(&self, low: Index, high: Index, bytes_max: u64) -> Result<Vec<raft_core::Entry>, StorageError> {
        self.inner.entries(low, high, bytes_max)
    }
    fn term(&self, index: Index) -> Result<Term, StorageError> {
        self.inner.term(index)
    }
    fn first_index(&self) -> Result<Index, StorageError> {
        self.inner.first_index()
    }
    fn last_index(&self) -> Result<Index, StorageError> {
        self.inner.last_index()
    }
    fn snapshot(&self) -> Result<SnapshotMeta, StorageError> {
        self.inner.snapshot()
    }
    fn snapshot_chunk(
        &self,
        index: Index,
        term: Term,
        offset: u64,
        bytes_max: u64,
    ) -> Result<SnapshotChunk, StorageError> {
        self.inner.snapshot_chunk(index, term, offset, bytes_max)?;
        if self.corrupt_reads {
            return Err(StorageError::SnapshotCorrupt { index, offset });
        }
        let start = (offset as usize).min(self.data.len());
        let end = (start + bytes_max as usize).min(self.data.len());
        Ok(SnapshotChunk { data: self.data.slice(start..end), done: end == self.data.len() })
    }
}

/// A store whose own checksums catch a damaged read: the leader stops at once (a typed storage
/// error from `step` and from then on from `take_output`), sending nothing of it.
#[test]
fn a_leader_whose_store_reports_a_corrupt_read_stops_without_sending() {
    let (c, meta) = behind_by_a_snapshot();
    let data = c.node(1).storage().snapshot_data().to_vec();
    let store = RottenStore { inner: c.node(1).storage().clone(), data: Bytes::from(data), corrupt_reads: true };
    let options = common::base_options(NodeId(1)).compaction_margin_entries(0).build().expect("valid");
    let mut node = Raft::new(NodeId(1), options, store).expect("memory");
    win_election(&mut node);
    let failure = node.take_output();
    assert!(
        matches!(failure, Err(StorageError::SnapshotCorrupt { index, offset: 0 }) if index == meta.index),
        "{failure:?}"
    );
    assert!(node.has_output(), "the failure is output the driver must take");
    assert!(node.take_output().is_err());
    assert!(!node.status().progress.is_empty());
}

/// A follower's refusal of another transfer (an earlier snapshot) does not restart this one.
#[test]
fn a_refusal_of_another_snapshot_is_ignored() {
    let options = options(NodeId(1), true, true);
    let mut node = node_with_log(NodeId(1), &ids(3), &[], 0, options);
    let refused =
        MessageBody::SnapshotRefused { index: Index(3), term: Term(1), reason: SnapshotRefusal::DataChecksum };
    assert_eq!(
        node.step(message(2, 1, 1, refused)),
        Err(StepError::Ignored(raft_core::Ignored::Unexpected)),
        "not a leader"
    );
}
