//! The chunked snapshot transfer: its window, recovery from lost chunks, aborts and restarts, a
//! snapshot replaced mid-transfer, and refusal of malformed chunks.

mod common;

use bytes::Bytes;
use common::{Cluster, Fate, cluster_tuned, deliver_with, ids, message, tick_with};
use raft_core::{
    Index, Malformed, Membership, Message, MessageBody, NodeId, ProgressState, SnapshotMeta, StepError, Storage, Term,
};

const PAYLOADS: [&[u8]; 12] = [
    b"payload-00",
    b"payload-01",
    b"payload-02",
    b"payload-03",
    b"payload-04",
    b"payload-05",
    b"payload-06",
    b"payload-07",
    b"payload-08",
    b"payload-09",
    b"payload-10",
    b"payload-11",
];

const CHUNK_BYTES: u64 = 8;
const WINDOW_CHUNKS: u64 = 2;

/// Three nodes with 8-byte chunks, a window of two, no compaction margin; node 1 leads, node 3
/// was down while twelve proposals committed and node 1 snapshotted and compacted.
fn behind_by_a_snapshot() -> (Cluster, SnapshotMeta) {
    let mut c = cluster_tuned(3, |b| {
        b.compaction_margin_entries(0).snapshot_chunk_bytes_max(CHUNK_BYTES).snapshot_chunks_inflight_max(WINDOW_CHUNKS)
    });
    c.elect(1);
    c.crash(3);
    for payload in PAYLOADS {
        c.propose(1, payload).expect("leader accepts");
    }
    let meta = c.snapshot(1);
    c.restart(3);
    (c, meta)
}

/// (offset, length, done) of a chunk message to `to`.
fn chunk_of(m: &Message, to: u64) -> Option<(u64, usize, bool)> {
    match &m.body {
        MessageBody::InstallSnapshot { offset, data, done, .. } if m.to == NodeId(to) => {
            Some((*offset, data.len(), *done))
        }
        _ => None,
    }
}

fn is_snapshot_response(m: &Message) -> bool {
    matches!(m.body, MessageBody::SnapshotResponse { .. })
}

fn caught_up(c: &Cluster, node: u64) -> bool {
    c.applied_data(node) == c.applied_data(1) && c.node(node).commit_index() == c.node(1).commit_index()
}

fn snapshot_len(c: &Cluster, node: u64) -> u64 {
    c.node(node).storage().snapshot_data().len() as u64
}

/// With every acknowledgement withheld, the leader sends exactly one window of chunks, and sends
/// no more however many heartbeats pass (beyond resending that window).
#[test]
fn unacknowledged_chunks_never_exceed_the_window() {
    let (mut c, _) = behind_by_a_snapshot();
    assert!(snapshot_len(&c, 1) > CHUNK_BYTES * WINDOW_CHUNKS * 2, "the snapshot spans many windows");
    let drop_acks = |m: &Message| if is_snapshot_response(m) { Fate::Drop } else { Fate::Deliver };
    for _ in 0..6 {
        tick_with(&mut c, drop_acks);
    }
    let chunks: Vec<(u64, usize, bool)> = c.delivered.iter().filter_map(|m| chunk_of(m, 3)).collect();
    assert!(!chunks.is_empty(), "the transfer started");
    let highest_end = chunks.iter().map(|&(offset, len, _)| offset + len as u64).max().unwrap_or(0);
    assert_eq!(highest_end, CHUNK_BYTES * WINDOW_CHUNKS, "nothing beyond the first window was sent");
    assert!(c.node(1).is_sending_snapshot(NodeId(3)));
}

/// A lost chunk in the middle makes the follower report a gap; the leader rewinds once and the
/// transfer completes with the right data.
#[test]
fn a_lost_chunk_is_resent_after_the_gap_report() {
    let (mut c, meta) = behind_by_a_snapshot();
    let mut dropped = false;
    tick_with(&mut c, |m| match chunk_of(m, 3) {
        Some((offset, _, _)) if offset == CHUNK_BYTES && !dropped => {
            dropped = true;
            Fate::Drop
        }
        _ => Fate::Deliver,
    });
    assert!(dropped);
    let gap_reports = c.delivered.iter().filter(|m| matches!(m.body, MessageBody::SnapshotResponse { gap: true, .. }));
    assert!(gap_reports.count() >= 1, "the follower reported the gap");
    c.ticks(3);
    assert_eq!(c.node(3).storage().snapshot(), Ok(meta));
    assert_eq!(c.node(3).storage().snapshot_data(), c.node(1).storage().snapshot_data());
    assert!(caught_up(&c, 3));
}

/// Losing the last chunks (nothing follows them to reveal a gap) stalls the transfer only until
/// heartbeat answers show no progress; then the leader resends.
#[test]
fn lost_tail_chunks_are_resent_after_stalled_heartbeats() {
    let (mut c, meta) = behind_by_a_snapshot();
    let mut done_drops = 0;
    for _ in 0..2 {
        tick_with(&mut c, |m| match chunk_of(m, 3) {
            Some((_, _, true)) if done_drops < 2 => {
                done_drops += 1;
                Fate::Drop
            }
            _ => Fate::Deliver,
        });
    }
    c.ticks(6);
    assert!(done_drops >= 1, "the final chunk was dropped at least once");
    assert_eq!(c.node(3).storage().snapshot(), Ok(meta));
    assert!(caught_up(&c, 3));
}

/// The leader crashes mid-transfer. The new leader (which has compacted too) starts its own
/// transfer from offset 0; the follower drops the half-received snapshot and installs the new one.
#[test]
fn a_transfer_aborted_by_a_leader_change_restarts_from_the_new_leader() {
    let (mut c, _) = behind_by_a_snapshot();
    let meta2 = c.snapshot(2);
    // Deliver only the first chunk to node 3, then crash the leader.
    let mut chunks_seen = 0;
    let held = tick_with(&mut c, |m| match chunk_of(m, 3) {
        Some(_) if chunks_seen == 0 => {
            chunks_seen += 1;
            Fate::Deliver
        }
        Some(_) => Fate::Hold,
        None => Fate::Deliver,
    });
    assert!(!held.is_empty(), "the transfer was cut short");
    assert_eq!(c.node(3).storage().snapshot(), Ok(SnapshotMeta::default()), "nothing installed yet");
    c.crash(1);
    let leader = c.tick_until_leader(200).expect("nodes 2 and 3 elect a leader");
    assert_eq!(leader, 2, "node 3 lacks entries, so only node 2 can win");
    c.ticks(5);
    assert_eq!(c.node(3).storage().snapshot(), Ok(meta2));
    assert!(c.applied_data(3) == c.applied_data(2) && c.node(3).commit_index() == c.node(2).commit_index());
}

/// The leader takes a newer snapshot during a transfer: reading the old one fails, and the
/// transfer restarts with the new snapshot, which the follower installs.
#[test]
fn a_snapshot_replaced_mid_transfer_restarts_the_transfer() {
    let (mut c, first) = behind_by_a_snapshot();
    let drop_acks = |m: &Message| if is_snapshot_response(m) { Fate::Drop } else { Fate::Deliver };
    tick_with(&mut c, drop_acks);
    assert!(c.node(1).is_sending_snapshot(NodeId(3)));
    c.heal();
    c.cut(1, 3); // Hold node 3 back while the leader moves on and snapshots again.
    c.propose(1, b"newer").expect("leader accepts");
    let second = c.snapshot(1);
    assert!(second.index > first.index);
    c.heal();
    c.ticks(8);
    assert_eq!(c.node(3).storage().snapshot(), Ok(second));
    assert!(caught_up(&c, 3));
}

/// An unreachable report abandons the transfer (back to probing); it restarts once the follower
/// answers again.
#[test]
fn report_unreachable_abandons_the_transfer_until_the_peer_answers() {
    let (mut c, meta) = behind_by_a_snapshot();
    let drop_acks = |m: &Message| if is_snapshot_response(m) { Fate::Drop } else { Fate::Deliver };
    tick_with(&mut c, drop_acks);
    assert!(c.node(1).is_sending_snapshot(NodeId(3)));
    c.node_mut(1).report_unreachable(NodeId(3));
    let progress = c.node(1).status().progress[&NodeId(3)].clone();
    assert_eq!((progress.state, progress.snapshot), (ProgressState::Probe, None));
    c.ticks(6);
    assert_eq!(c.node(3).storage().snapshot(), Ok(meta));
    assert!(caught_up(&c, 3));
}

/// A duplicated, reordered and delayed chunk stream still installs exactly the leader's data.
#[test]
fn duplicated_and_reordered_chunks_install_the_right_data() {
    let (mut c, meta) = behind_by_a_snapshot();
    let mut held: Vec<Message> = Vec::new();
    for round in 0..10 {
        let mut duplicate = Vec::new();
        let new_held = tick_with(&mut c, |m| match chunk_of(m, 3) {
            Some(_) if round % 2 == 0 => {
                duplicate.push(m.clone());
                Fate::Hold
            }
            _ => Fate::Deliver,
        });
        // Deliver the held chunks twice, in reverse order, a round later.
        for m in held.drain(..).rev().chain(duplicate) {
            c.in_flight.push_back(m);
        }
        held = new_held;
        deliver_with(&mut c, |_| Fate::Deliver);
    }
    c.ticks(6);
    assert_eq!(c.node(3).storage().snapshot(), Ok(meta));
    assert_eq!(c.node(3).storage().snapshot_data(), c.node(1).storage().snapshot_data());
    assert!(caught_up(&c, 3));
}

fn chunk_message(term: u64, meta: SnapshotMeta, offset: u64, data: &'static [u8]) -> Message {
    message(2, 1, term, MessageBody::install_snapshot(meta, offset, Bytes::from_static(data), false))
}

fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta { index: Index(index), term: Term(term), membership: Membership::new(ids(3)), data_crc32: 0 }
}

/// Malformed chunks are refused with a typed reason before they move the term or the leader.
#[test]
fn malformed_chunks_are_refused_without_changing_state() {
    let mut c = cluster_tuned(3, |b| b.snapshot_chunk_bytes_max(CHUNK_BYTES));
    let malformed = |reason| Err(StepError::Malformed(reason));
    let cases = [
        (
            chunk_message(5, meta(3, 2), 0, b"123456789"),
            malformed(Malformed::SnapshotChunkTooLarge { bytes: 9, limit: 8 }),
        ),
        (chunk_message(5, meta(0, 2), 0, b"x"), malformed(Malformed::SnapshotInvalid(Index(0)))),
        (chunk_message(5, meta(u64::MAX, 2), 0, b"x"), malformed(Malformed::SnapshotInvalid(Index::END))),
        (chunk_message(5, meta(3, 0), 0, b"x"), malformed(Malformed::SnapshotInvalid(Index(3)))),
        (chunk_message(5, meta(3, 6), 0, b"x"), malformed(Malformed::SnapshotInvalid(Index(3)))),
        (chunk_message(5, meta(3, 2), u64::MAX, b"x"), malformed(Malformed::SnapshotInvalid(Index(3)))),
        (
            chunk_message(5, SnapshotMeta { membership: Membership::default(), ..meta(3, 2) }, 0, b"x"),
            malformed(Malformed::SnapshotInvalid(Index(3))),
        ),
    ];
    for (m, expected) in cases {
        assert_eq!(c.node_mut(1).step(m.clone()), expected, "{m:?}");
        assert_eq!((c.node(1).term(), c.node(1).leader()), (Term(0), None), "{m:?} moved state");
        let output = c.node_mut(1).take_output().expect("memory");
        assert!(output.snapshot_chunks.is_empty() && output.messages_after_persist.is_empty(), "{m:?}");
    }
}

/// A chunk that does not continue the snapshot being received asks the leader for the right
/// offset instead of being written.
#[test]
fn an_out_of_order_chunk_is_answered_with_the_expected_offset() {
    let mut c = cluster_tuned(3, |b| b.snapshot_chunk_bytes_max(CHUNK_BYTES));
    c.node_mut(1).step(chunk_message(2, meta(3, 2), 8, b"late")).expect("answered");
    let output = c.node_mut(1).take_output().expect("memory");
    assert!(output.snapshot_chunks.is_empty(), "nothing written out of order");
    let expected = MessageBody::SnapshotResponse { index: Index(3), term: Term(2), next_offset: 0, gap: true };
    assert_eq!(output.messages_after_persist.iter().map(|m| &m.body).collect::<Vec<_>>(), vec![&expected]);

    c.node_mut(1).step(chunk_message(2, meta(3, 2), 0, b"first")).expect("accepted");
    let output = c.node_mut(1).take_output().expect("memory");
    assert_eq!(output.snapshot_chunks.len(), 1);
    let ack = MessageBody::SnapshotResponse { index: Index(3), term: Term(2), next_offset: 5, gap: false };
    assert_eq!(output.messages_after_persist.iter().map(|m| &m.body).collect::<Vec<_>>(), vec![&ack]);
}

/// A delayed copy of the first chunk must not reset a transfer in progress: it is answered with
/// the offset already reached (found by simulator seed 363: resets plus rewinds grew into a
/// storm of chunk messages that never finished).
#[test]
fn a_late_copy_of_the_first_chunk_does_not_reset_the_transfer() {
    let mut c = cluster_tuned(3, |b| b.snapshot_chunk_bytes_max(CHUNK_BYTES));
    c.node_mut(1).step(chunk_message(2, meta(3, 2), 0, b"first")).expect("accepted");
    c.node_mut(1).step(chunk_message(2, meta(3, 2), 5, b"second")).expect("accepted");
    let _ = c.node_mut(1).take_output().expect("memory");
    c.node_mut(1).step(chunk_message(2, meta(3, 2), 0, b"first")).expect("answered");
    let output = c.node_mut(1).take_output().expect("memory");
    assert!(output.snapshot_chunks.is_empty(), "the copy is not written again");
    let ack = MessageBody::SnapshotResponse { index: Index(3), term: Term(2), next_offset: 11, gap: false };
    assert_eq!(output.messages_after_persist.iter().map(|m| &m.body).collect::<Vec<_>>(), vec![&ack]);
    c.node_mut(1).step(chunk_message(2, meta(3, 2), 11, b"third")).expect("the transfer goes on");
    assert_eq!(c.node_mut(1).take_output().expect("memory").snapshot_chunks.len(), 1);
}

/// The follower restarts mid-transfer and forgets what it received; it reports a gap at offset
/// 0, below what the leader counts as acknowledged. The leader does not trust that at once (it
/// could be a stale report) but restarts from there when the transfer stalls, and it completes.
#[test]
fn a_follower_restarting_mid_transfer_gets_the_snapshot_from_the_start() {
    let (mut c, meta) = behind_by_a_snapshot();
    let mut chunks_seen = 0;
    tick_with(&mut c, |m| match chunk_of(m, 3) {
        Some(_) if chunks_seen < 3 => {
            chunks_seen += 1;
            Fate::Deliver
        }
        Some(_) => Fate::Drop,
        None => Fate::Deliver,
    });
    assert!(c.node(1).status().progress[&NodeId(3)].snapshot.as_ref().is_some_and(|t| t.acked_offset > 0));
    c.crash(3);
    c.restart(3);
    c.ticks(8);
    assert_eq!(c.node(3).storage().snapshot(), Ok(meta));
    assert_eq!(c.node(3).storage().snapshot_data(), c.node(1).storage().snapshot_data());
    assert!(caught_up(&c, 3));
}
