//! Fuzzing harnesses (feature `fuzzing`): each takes the fuzzer's bytes, checks properties, and
//! panics only on a bug in this crate. The cargo-fuzz targets in `fuzz/` call them, and the
//! crate's tests replay the stored corpus through them.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use raft_core::{GroupId, Message, NodeId};

use crate::frame::{
    FRAME_BYTES_MAX_DEFAULT, FRAME_PREFIX_BYTES, Frame, FrameError, HELLO_FRAME_BYTES_MAX, check_decode, decode_frame,
    decode_payload, encode_frame, read_frame,
};
use crate::tcp::fuzzing::{ConnectionError, Counters, GroupRegistry, Inbound, PeerSeen, read_loop};

/// Frames decoded from one input at most (a stream of tiny frames would otherwise make one input
/// run long).
const FRAMES_PER_INPUT_MAX: usize = 64;

/// Target 1: arbitrary bytes as network frames and messages. Decoding never panics and fails only
/// with a typed [`FrameError`]; whatever decodes round-trips (re-encoding decodes to the same
/// value, and the encoding is canonical: encoding the value again gives the same bytes, never
/// more than were read); a frame's strict prefixes are incomplete, not errors; the buffer decoder
/// and the stream reader agree; a frame accepted under the handshake limit is accepted the same
/// under the normal one. The bytes are read four ways: as a stream of frames, as one frame
/// payload, as one bare [`Message`] payload, and as what a peer sends after a valid handshake,
/// read by the TCP transport's own reader into a node that hosts two groups (see
/// [`check_reader`]).
pub fn frames(data: &[u8]) {
    check_decode(data);
    check_reader(data);
    let mut rest = data;
    for _ in 0..FRAMES_PER_INPUT_MAX {
        match check_one_frame(rest) {
            Some(used) => rest = &rest[used..],
            None => break,
        }
    }
    if let Ok(frame) = decode_payload::<Frame>(data) {
        assert_round_trip(&frame, data.len());
    }
    if let Ok(message) = decode_payload::<Message>(data) {
        let encoded = postcard::to_allocvec(&message).expect("messages always encode");
        assert!(encoded.len() <= data.len(), "canonical encoding longer than the bytes read");
        let decoded = decode_payload::<Message>(&encoded).expect("an encoded message decodes");
        assert_eq!(decoded, message, "a decoded message must round-trip");
    }
}

/// The node the reader runs on, the peer that handshook, and the groups the node hosts.
const READER_LOCAL: NodeId = NodeId(1);
const READER_PEER: NodeId = NodeId(2);
const READER_GROUPS: [GroupId; 2] = [GroupId::DEFAULT, GroupId(7)];

/// How a connection's reading ends, in terms both the reader and the frame decoder give.
#[derive(Debug, PartialEq)]
enum End {
    /// The bytes end between two frames.
    Closed,
    /// The bytes end inside a frame.
    Cut,
    /// A frame fails to decode, with this error.
    Frame(FrameError),
    /// A frame other than a message or a keepalive.
    UnexpectedFrame,
    /// A message not from the peer.
    WrongSender,
    /// A message not to this node.
    WrongReceiver,
}

/// `bytes` as what peer [`READER_PEER`] sends after its handshake to node [`READER_LOCAL`], which
/// hosts [`READER_GROUPS`], read by the TCP transport's reader. The reader ends with a typed
/// error that matches the frame decoder's reading of the same bytes; every message it read before
/// that is delivered to its group's queue, in order, if the node hosts the group, and otherwise
/// dropped and counted; no group is created, and no message reaches another group.
fn check_reader(bytes: &[u8]) {
    let registry = GroupRegistry::default();
    // More room than the bytes have frames, so the reader never waits for room.
    let capacity = bytes.len() / FRAME_PREFIX_BYTES + 1;
    let mut receivers: Vec<_> = READER_GROUPS.iter().map(|group| (*group, registry.open(*group, capacity))).collect();
    let counters = Counters::default();
    let inbound = Inbound {
        local_id: READER_LOCAL,
        frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
        read_buffer_bytes: 64,
        inbound_full_timeout: Duration::from_secs(1),
        groups: &registry,
        counters: &counters,
        seen: std::sync::Arc::new(PeerSeen::default()),
        received: crate::metrics::PeerMetrics::new(READER_LOCAL, READER_PEER, "received"),
    };
    let mut reader = bytes;
    let end = match block_on(read_loop(&inbound, &mut reader, READER_PEER)) {
        ConnectionError::Frame(FrameError::Closed) => End::Closed,
        ConnectionError::Frame(error) if error.io_kind() == Some(std::io::ErrorKind::UnexpectedEof) => End::Cut,
        ConnectionError::Frame(error) => End::Frame(error),
        ConnectionError::UnexpectedFrame => End::UnexpectedFrame,
        ConnectionError::WrongSender { .. } => End::WrongSender,
        ConnectionError::WrongReceiver(_) => End::WrongReceiver,
        other => panic!("a reader over bytes in memory ended with {other}"),
    };

    let mut expected: BTreeMap<GroupId, Vec<Message>> = BTreeMap::new();
    let mut unknown: u64 = 0;
    let (mut frames, mut pings, mut incarnation) = (0_u64, 0_u64, None);
    let mut rest = bytes;
    let expected_end = loop {
        let (frame, used) = match decode_frame::<Frame>(rest, FRAME_BYTES_MAX_DEFAULT) {
            Ok(Some(decoded)) => decoded,
            Ok(None) if rest.is_empty() => break End::Closed,
            Ok(None) => break End::Cut,
            Err(error) => break End::Frame(error),
        };
        rest = &rest[used..];
        let (group, message) = match frame {
            Frame::Message { group, message } => (group, message),
            Frame::Keepalive => continue,
            Frame::Ping { incarnation: carried } => {
                (frames, pings) = (frames + 1, pings + 1);
                incarnation = Some(carried);
                continue;
            }
            _ => break End::UnexpectedFrame,
        };
        if message.from != READER_PEER {
            break End::WrongSender;
        }
        if message.to != READER_LOCAL {
            break End::WrongReceiver;
        }
        frames += 1;
        if READER_GROUPS.contains(&group) {
            expected.entry(group).or_default().push(message);
        } else {
            unknown += 1;
        }
    };
    assert_eq!(end, expected_end, "the reader and the decoder disagree on how the bytes end");
    for (group, receiver) in &mut receivers {
        let delivered: Vec<Message> = std::iter::from_fn(|| receiver.try_recv().ok()).collect();
        assert_eq!(delivered, expected.remove(group).unwrap_or_default(), "group {group} got other messages");
    }
    let stats = counters.snapshot();
    assert_eq!(stats.pings_received, pings, "every ping is counted");
    let signals = inbound.seen.take();
    assert_eq!(signals.heard, frames > 0, "a ping or a well-addressed message is a sign of life, a keepalive is not");
    assert_eq!(signals.ping, incarnation, "the latest ping's incarnation is what the link reports");
    assert_eq!(stats.unknown_group_drops, unknown, "every message of an unknown group is counted");
    assert_eq!(stats.inbound_full_drops, 0, "no queue was full");
    assert_eq!(registry.ids(), READER_GROUPS, "no group is created by a peer");
}

/// Checks the frame at the start of `bytes`; returns the bytes it took, or `None` when there is no
/// complete frame (incomplete or an error).
fn check_one_frame(bytes: &[u8]) -> Option<usize> {
    let result = decode_frame::<Frame>(bytes, FRAME_BYTES_MAX_DEFAULT);
    assert_eq!(result, read_from_stream(bytes), "buffer decoder and stream reader disagree");
    if let Ok(Some((small, used))) = decode_frame::<Frame>(bytes, HELLO_FRAME_BYTES_MAX) {
        assert_eq!(result, Ok(Some((small, used))), "the handshake limit changed a frame's meaning");
    }
    let (frame, used) = result.ok()??;
    let announced = u32::from_be_bytes(bytes[..FRAME_PREFIX_BYTES].try_into().expect("a decoded frame has a prefix"));
    assert_eq!(used, FRAME_PREFIX_BYTES + announced as usize, "a frame takes its prefix and its payload");
    assert!(used <= bytes.len(), "a frame took more bytes than it was given");
    assert_eq!(decode_frame::<Frame>(&bytes[..used - 1], FRAME_BYTES_MAX_DEFAULT), Ok(None), "strict prefix");
    assert_round_trip(&frame, used - FRAME_PREFIX_BYTES);
    Some(used)
}

/// `frame` (decoded from `payload_bytes` bytes) re-encodes canonically and decodes to itself.
fn assert_round_trip(frame: &Frame, payload_bytes: usize) {
    let encoded = encode_frame(frame, FRAME_BYTES_MAX_DEFAULT).expect("a decoded frame re-encodes within the limit");
    assert!(encoded.len() - FRAME_PREFIX_BYTES <= payload_bytes, "canonical encoding longer than the bytes read");
    let decoded = decode_frame::<Frame>(&encoded, FRAME_BYTES_MAX_DEFAULT);
    assert_eq!(decoded, Ok(Some((frame.clone(), encoded.len()))), "a decoded frame must round-trip");
    let again = decoded.ok().flatten().map(|(value, _)| encode_frame(&value, FRAME_BYTES_MAX_DEFAULT));
    assert_eq!(again, Some(Ok(encoded)), "the encoding of a value is unique");
}

/// What [`read_frame`] makes of `bytes` as a whole stream, in [`decode_frame`]'s terms: a stream
/// that ends inside a frame (or before one) is an incomplete frame.
fn read_from_stream(bytes: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    let mut reader = bytes;
    let mut payload = Vec::new();
    let result = block_on(read_frame::<Frame, _>(&mut reader, FRAME_BYTES_MAX_DEFAULT, &mut payload));
    match result {
        Ok(frame) => Ok(Some((frame, bytes.len() - reader.len()))),
        Err(FrameError::Closed) => Ok(None),
        Err(error) if error.io_kind() == Some(std::io::ErrorKind::UnexpectedEof) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Runs a future over an in-memory reader (which is always ready) to completion.
fn block_on<T>(future: impl Future<Output = T>) -> T {
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    // Reading from a slice never waits; a few polls cover any internal yielding.
    for _ in 0..1024 {
        if let Poll::Ready(value) = future.as_mut().poll(&mut context) {
            return value;
        }
    }
    panic!("reading frames from memory did not complete");
}
