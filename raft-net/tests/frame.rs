//! Framing: round trips, partial input, limits, and garbage that must never panic.

mod common;

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use raft_core::{AppendResult, ConflictHint, Entry, EntryPayload, GroupId, Index, Message, MessageBody, NodeId, Term};
use raft_net::frame::{
    FRAME_BYTES_MAX_DEFAULT, FRAME_BYTES_MIN, FRAME_PREFIX_BYTES, HELLO_ENCODED_BYTES_MAX, MAGIC, PROTOCOL_VERSION,
    SNAPSHOT_CHUNK_BYTES_MAX, check_decode, decode_frame, encode_frame, encode_frame_into, read_frame,
};
use raft_net::{Frame, FrameError, Hello, RejectReason};

fn entry() -> impl Strategy<Value = Entry> {
    let payload = prop_oneof![
        Just(EntryPayload::Noop),
        vec(any::<u8>(), 0..64).prop_map(|data| EntryPayload::Normal(Bytes::from(data)))
    ];
    (any::<u64>(), any::<u64>(), payload).prop_map(|(term, index, payload)| Entry {
        term: Term(term),
        index: Index(index),
        payload,
    })
}

fn append_result() -> impl Strategy<Value = AppendResult> {
    prop_oneof![
        any::<u64>().prop_map(|index| AppendResult::Success { match_index: Index(index) }),
        (any::<u64>(), any::<Option<u64>>(), any::<u64>()).prop_map(|(rejected, term, index)| AppendResult::Reject {
            rejected_index: Index(rejected),
            hint: ConflictHint { term: term.map(Term), index: Index(index) },
        }),
    ]
}

fn body() -> impl Strategy<Value = MessageBody> {
    prop_oneof![
        (any::<bool>(), any::<u64>(), any::<u64>()).prop_map(|(pre_vote, index, term)| MessageBody::VoteRequest {
            pre_vote,
            last_log_index: Index(index),
            last_log_term: Term(term),
            transfer: false
        }),
        (any::<bool>(), any::<bool>()).prop_map(|(pre_vote, granted)| MessageBody::VoteResponse { pre_vote, granted }),
        (any::<u64>(), any::<u64>(), vec(entry(), 0..4), any::<u64>()).prop_map(|(index, term, entries, commit)| {
            MessageBody::AppendEntries {
                prev_log_index: Index(index),
                prev_log_term: Term(term),
                entries,
                commit: Index(commit),
            }
        }),
        append_result().prop_map(MessageBody::AppendResponse),
        (any::<u64>(), any::<u64>())
            .prop_map(|(commit, round)| MessageBody::Heartbeat { commit: Index(commit), round }),
        any::<u64>().prop_map(|round| MessageBody::HeartbeatResponse { round }),
        (any::<u64>(), any::<u64>()).prop_map(|(commit, round)| MessageBody::Quiesce { commit: Index(commit), round }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(index, term, commit)| MessageBody::CommitNotice {
            prev_log_index: Index(index),
            prev_log_term: Term(term),
            commit: Index(commit),
        }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (any::<u64>(), any::<u64>(), any::<u64>(), body()).prop_map(|(from, to, term, body)| Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body,
    })
}

fn reason() -> impl Strategy<Value = RejectReason> {
    prop_oneof![
        Just(RejectReason::WrongMagic),
        (any::<u32>(), any::<u32>()).prop_map(|(ours, theirs)| RejectReason::UnsupportedVersion { ours, theirs }),
        Just(RejectReason::WrongClusterId),
        Just(RejectReason::NotAddressedToUs),
        Just(RejectReason::UnknownPeer),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    let hello = (any::<[u8; 4]>(), any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(magic, protocol_version, cluster_id, from, to)| {
            Frame::Hello(Hello { magic, protocol_version, cluster_id, from: NodeId(from), to: NodeId(to) })
        },
    );
    prop_oneof![
        hello,
        Just(Frame::HelloAccepted),
        reason().prop_map(|reason| Frame::HelloRejected { reason }),
        (any::<u64>(), message()).prop_map(|(group, message)| Frame::Message { group: GroupId(group), message }),
        Just(Frame::Keepalive),
    ]
}

proptest! {
    #[test]
    fn every_frame_round_trips(frame in frame()) {
        let bytes = encode_frame(&frame, FRAME_BYTES_MAX_DEFAULT).expect("encode");
        prop_assert_eq!(decode_frame::<Frame>(&bytes, FRAME_BYTES_MAX_DEFAULT), Ok(Some((frame, bytes.len()))));
    }

    #[test]
    fn every_strict_prefix_of_a_frame_is_incomplete(frame in frame()) {
        let bytes = encode_frame(&frame, FRAME_BYTES_MAX_DEFAULT).expect("encode");
        for end in 0..bytes.len() {
            prop_assert_eq!(decode_frame::<Frame>(&bytes[..end], FRAME_BYTES_MAX_DEFAULT), Ok(None));
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        check_decode(&bytes);
        let _ = decode_frame::<Frame>(&bytes, 64);
    }

    #[test]
    fn random_payloads_behind_a_valid_prefix_never_panic(payload in vec(any::<u8>(), 0..256)) {
        // A correct length gets the bytes past the prefix check and into the payload decoder.
        let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&payload);
        check_decode(&bytes);
    }

    #[test]
    fn a_message_tag_and_a_group_before_garbage_decode_whole_or_fail_typed(
        group in any::<u64>(),
        garbage in vec(any::<u8>(), 0..128),
    ) {
        // The message variant's tag, a group, then anything.
        let mut payload = vec![3];
        payload.extend_from_slice(&postcard::to_allocvec(&GroupId(group)).expect("encode a group"));
        payload.extend_from_slice(&garbage);
        let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&payload);
        match decode_frame::<Frame>(&bytes, FRAME_BYTES_MAX_DEFAULT) {
            Ok(Some((Frame::Message { group: decoded, .. }, used))) => {
                prop_assert_eq!(decoded, GroupId(group));
                prop_assert_eq!(used, bytes.len());
            }
            Err(FrameError::Decode(_) | FrameError::TrailingBytes { .. }) => {}
            other => prop_assert!(false, "neither a message of the group nor a typed decoding error: {:?}", other),
        }
    }

    #[test]
    fn mutated_frames_never_panic(frame in frame(), position in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = encode_frame(&frame, FRAME_BYTES_MAX_DEFAULT).expect("encode");
        let position = position.index(bytes.len());
        bytes[position] = byte;
        check_decode(&bytes);
    }
}

#[test]
fn an_oversized_length_prefix_is_too_large() {
    let mut bytes = (FRAME_BYTES_MIN + 1).to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0; 16]);
    assert_eq!(
        decode_frame::<Frame>(&bytes, FRAME_BYTES_MIN),
        Err(FrameError::TooLarge { bytes: u64::from(FRAME_BYTES_MIN) + 1, max: FRAME_BYTES_MIN })
    );
    assert!(matches!(decode_frame::<Frame>(&[0xff; 4], FRAME_BYTES_MAX_DEFAULT), Err(FrameError::TooLarge { .. })));
}

#[test]
fn an_oversized_value_is_not_encoded_and_leaves_the_buffer_alone() {
    let message = common::large_message(1, 2, 3, 2 * FRAME_BYTES_MIN as usize);
    let frame = Frame::Message { group: GroupId(4), message };
    let mut buffer = vec![1, 2, 3];
    let result = encode_frame_into(&frame, FRAME_BYTES_MIN, &mut buffer);
    assert!(matches!(result, Err(FrameError::TooLarge { max: FRAME_BYTES_MIN, .. })), "{result:?}");
    assert_eq!(buffer, [1, 2, 3]);
}

#[test]
fn a_snapshot_sized_chunk_fits_the_smallest_frame_limit() {
    let message = common::large_message(u64::MAX, u64::MAX, u64::MAX, SNAPSHOT_CHUNK_BYTES_MAX as usize);
    let frame = Frame::Message { group: GroupId(u64::MAX), message };
    let bytes = encode_frame(&frame, FRAME_BYTES_MIN).expect("a 64 KiB payload fits FRAME_BYTES_MIN");
    assert_eq!(decode_frame::<Frame>(&bytes, FRAME_BYTES_MIN), Ok(Some((frame, bytes.len()))));
}

#[test]
fn the_largest_hello_fits_its_limit() {
    let hello = Hello {
        magic: MAGIC,
        protocol_version: u32::MAX,
        cluster_id: u64::MAX,
        from: NodeId(u64::MAX),
        to: NodeId(u64::MAX),
    };
    let bytes = encode_frame(&Frame::Hello(hello), HELLO_ENCODED_BYTES_MAX).expect("fits");
    assert_eq!(bytes.len(), FRAME_PREFIX_BYTES + HELLO_ENCODED_BYTES_MAX as usize);
}

#[test]
fn trailing_bytes_in_a_payload_are_refused() {
    let mut bytes = encode_frame(&Frame::HelloAccepted, 64).expect("encode");
    bytes.push(0);
    bytes[..FRAME_PREFIX_BYTES].copy_from_slice(&2_u32.to_be_bytes());
    assert_eq!(decode_frame::<Frame>(&bytes, 64), Err(FrameError::TrailingBytes { bytes: 1 }));
}

#[test]
fn hello_checks_name_the_first_mismatch() {
    let good = Hello::new(7, NodeId(2), NodeId(1));
    assert_eq!(good.check(7, NodeId(1)), Ok(()));
    assert_eq!(Hello { magic: *b"HTTP", ..good }.check(7, NodeId(1)), Err(RejectReason::WrongMagic));
    assert_eq!(
        Hello { protocol_version: 99, ..good }.check(7, NodeId(1)),
        Err(RejectReason::UnsupportedVersion { ours: PROTOCOL_VERSION, theirs: 99 })
    );
    assert_eq!(good.check(8, NodeId(1)), Err(RejectReason::WrongClusterId));
    assert_eq!(good.check(7, NodeId(3)), Err(RejectReason::NotAddressedToUs));
}

#[tokio::test]
async fn read_frame_reads_frames_back_to_back_then_reports_the_end() {
    let frames = [Frame::HelloAccepted, Frame::Message { group: GroupId(9), message: common::message(1, 2, 3) }];
    let mut bytes = Vec::new();
    for frame in &frames {
        encode_frame_into(frame, 64, &mut bytes).expect("encode");
    }
    let mut reader = bytes.as_slice();
    let mut payload = Vec::new();
    for frame in frames {
        assert_eq!(read_frame::<Frame, _>(&mut reader, 64, &mut payload).await, Ok(frame));
    }
    assert_eq!(read_frame::<Frame, _>(&mut reader, 64, &mut payload).await, Err(FrameError::Closed));

    // The second frame without its last byte: the stream ends inside the frame.
    let first_bytes = encode_frame(&Frame::HelloAccepted, 64).expect("encode").len();
    let mut reader = &bytes[first_bytes..bytes.len() - 1];
    let ended = read_frame::<Frame, _>(&mut reader, 64, &mut payload).await;
    assert!(matches!(&ended, Err(error) if error.io_kind() == Some(std::io::ErrorKind::UnexpectedEof)), "{ended:?}");
}
