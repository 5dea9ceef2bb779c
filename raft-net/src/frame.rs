//! Wire frames: a `u32` big-endian length prefix, then a postcard payload of that many bytes.
//!
//! The functions here are generic over the serde type, so the same framing carries the
//! [`Frame`] enum today and whatever grows out of it later (snapshot chunks). Decoding takes bytes
//! from peers, which can be anything: it never panics and never allocates more than the bytes it
//! was given (or, from a stream, more than the bytes that actually arrived), and every failure is
//! a typed [`FrameError`].
//!
//! Compatibility: new [`Frame`] variants go at the end (postcard encodes the variant index), and
//! the layout of [`Frame::Hello`] never changes, so that any two versions can at least tell each
//! other which protocol version they speak.

use std::io;

use raft_core::{GroupId, Message, NodeId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes of the length prefix in front of every frame.
pub const FRAME_PREFIX_BYTES: usize = 4;

/// The first bytes of every handshake: "RFTN" (raft-net).
pub const MAGIC: [u8; 4] = *b"RFTN";

/// The protocol version this build speaks. Peers must speak the same version. Version 3 added
/// snapshot checksums: `data_crc32` in every snapshot's metadata, `chunk_crc32` in
/// `InstallSnapshot`, and the `SnapshotRefused` message. Version 4 names the halves of a joint
/// membership and adds `learners_next` to it (voters being demoted wait there until the joint
/// configuration is left). Version 5 names the group of every message ([`Frame::Message`]'s
/// `group`): one connection between two nodes carries the messages of every group they share.
/// Version 6 adds the `Quiesce` message (an idle group's leader asks its followers to go quiet);
/// earlier messages encode as before, but a version 5 peer could not decode it. Version 7 adds
/// [`Frame::Ping`], the node-level liveness ping that lets groups go quiet. Version 8 adds the
/// `CommitNotice` message (a new commit index for a follower that holds everything it was sent,
/// not answered unless refused); a version 7 peer could not decode it.
pub const PROTOCOL_VERSION: u32 = 8;

/// The largest snapshot chunk a message will carry (snapshot transfer is planned in raft-core).
pub const SNAPSHOT_CHUNK_BYTES_MAX: u32 = 64 * 1024;

/// Room for everything in a message frame around a snapshot chunk: tags, the group, ids, term,
/// indexes, lengths.
pub const MESSAGE_ENVELOPE_BYTES_MAX: u32 = 4 * 1024;

/// The smallest allowed `frame_bytes_max`: a full snapshot chunk with its envelope must fit.
pub const FRAME_BYTES_MIN: u32 = SNAPSHOT_CHUNK_BYTES_MAX + MESSAGE_ENVELOPE_BYTES_MAX;

/// The default `frame_bytes_max`: 16 MiB, well above raft-core's default 1 MiB append batch.
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 16 * 1024 * 1024;

/// The largest encoded handshake frame: tag (1) + magic (4) + version (varint, 5) + cluster id,
/// from and to (varints, 10 each).
pub const HELLO_ENCODED_BYTES_MAX: u32 = 1 + 4 + 5 + 3 * 10;

/// The payload limit while handshaking. A peer that has not yet introduced itself cannot make us
/// allocate more than this.
pub const HELLO_FRAME_BYTES_MAX: u32 = 64;

const _: () = assert!(FRAME_BYTES_MAX_DEFAULT >= FRAME_BYTES_MIN);
const _: () = assert!(HELLO_FRAME_BYTES_MAX >= HELLO_ENCODED_BYTES_MAX);
const _: () = assert!(HELLO_FRAME_BYTES_MAX <= FRAME_BYTES_MIN);

/// One unit on the wire between two nodes.
///
/// A connection starts with [`Frame::Hello`] from the dialer, answered by
/// [`Frame::HelloAccepted`] or [`Frame::HelloRejected`]; after acceptance only the dialer writes,
/// and only [`Frame::Message`], [`Frame::Keepalive`] and [`Frame::Ping`] frames. The handshake is between nodes;
/// groups appear only in the messages, so one connection carries every group's messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Frame {
    /// The dialer introduces itself. Must stay the first variant with a frozen layout.
    Hello(Hello),
    /// The acceptor took the handshake; messages may follow.
    HelloAccepted,
    /// The acceptor refused the handshake and closes the connection.
    HelloRejected {
        /// Why.
        reason: RejectReason,
    },
    /// A Raft message of one group (the group was added in protocol version 5). A message for a
    /// group the receiving node does not host is dropped and counted there.
    Message {
        /// The group the message belongs to: the same id names the same group on every node.
        group: GroupId,
        /// The message.
        message: Message,
    },
    /// Nothing: sent by an idle dialer so that the acceptor can tell a quiet connection from a
    /// dead one (added in protocol version 2).
    Keepalive,
    /// A node-level liveness ping (added in protocol version 7): one per pair of nodes per ping
    /// interval, whatever the number of groups they share (`raft_core::liveness`).
    Ping {
        /// The sender's incarnation, drawn afresh at every start: a new one tells the receiver
        /// that the sender restarted.
        incarnation: u64,
    },
}

/// The dialer's introduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`]: tells a raft-net peer from anything else that connects.
    pub magic: [u8; 4],
    /// The dialer's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The cluster the dialer belongs to.
    pub cluster_id: u64,
    /// The dialer.
    pub from: NodeId,
    /// The node the dialer believes it is talking to.
    pub to: NodeId,
}

/// Why an acceptor refused a handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// The magic bytes are not [`MAGIC`].
    #[error("wrong magic bytes")]
    WrongMagic,
    /// The protocol versions differ.
    #[error("unsupported protocol version {theirs} (we speak {ours})")]
    UnsupportedVersion {
        /// The acceptor's version.
        ours: u32,
        /// The dialer's version.
        theirs: u32,
    },
    /// The dialer belongs to another cluster.
    #[error("wrong cluster id")]
    WrongClusterId,
    /// The dialer meant another node (its address book is stale or wrong).
    #[error("the hello is addressed to another node")]
    NotAddressedToUs,
    /// The dialer is not one of the acceptor's peers.
    #[error("unknown peer")]
    UnknownPeer,
}

impl Hello {
    /// A hello of this build's magic and protocol version.
    pub fn new(cluster_id: u64, from: NodeId, to: NodeId) -> Self {
        Hello { magic: MAGIC, protocol_version: PROTOCOL_VERSION, cluster_id, from, to }
    }

    /// Checks magic, version, cluster and addressee against the acceptor's own (whether `from` is
    /// a known peer is the acceptor's business).
    pub fn check(&self, cluster_id: u64, local_id: NodeId) -> Result<(), RejectReason> {
        if self.magic != MAGIC {
            return Err(RejectReason::WrongMagic);
        }
        if self.protocol_version != PROTOCOL_VERSION {
            return Err(RejectReason::UnsupportedVersion { ours: PROTOCOL_VERSION, theirs: self.protocol_version });
        }
        if self.cluster_id != cluster_id {
            return Err(RejectReason::WrongClusterId);
        }
        if self.to != local_id {
            return Err(RejectReason::NotAddressedToUs);
        }
        Ok(())
    }
}

/// Why a frame could not be encoded, decoded, read or written.
///
/// Not `Clone`, since an [`io::Error`] is not. Equality compares I/O errors by kind and OS error
/// code (not by message); every other variant by its fields.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The payload is longer than the limit (announced by a length prefix, or produced by encoding).
    #[error("frame payload of {bytes} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The payload length.
        bytes: u64,
        /// The limit.
        max: u32,
    },
    /// The payload is not a valid encoding of the expected type.
    #[error("frame payload does not decode: {0}")]
    Decode(postcard::Error),
    /// The value cannot be encoded (a serde type postcard does not support).
    #[error("value does not encode: {0}")]
    Encode(postcard::Error),
    /// The payload holds bytes after the encoded value.
    #[error("{bytes} trailing bytes after the frame's value")]
    TrailingBytes {
        /// How many bytes were left over.
        bytes: u64,
    },
    /// The stream ended cleanly, between two frames.
    #[error("the connection closed")]
    Closed,
    /// Reading or writing the stream failed (including a stream that ended inside a frame:
    /// [`io::ErrorKind::UnexpectedEof`]). The stream's error, whole: its kind, its OS error code
    /// and its message.
    #[error("i/o error: {0}")]
    Io(#[source] io::Error),
}

impl FrameError {
    /// The kind of the I/O error, for an [`FrameError::Io`].
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            FrameError::Io(error) => Some(error.kind()),
            _ => None,
        }
    }
}

impl From<io::Error> for FrameError {
    fn from(error: io::Error) -> Self {
        FrameError::Io(error)
    }
}

impl PartialEq for FrameError {
    fn eq(&self, other: &Self) -> bool {
        // Every variant by name, so that a new one must be added here.
        match (self, other) {
            (FrameError::TooLarge { bytes, max }, FrameError::TooLarge { bytes: bytes_other, max: max_other }) => {
                (bytes, max) == (bytes_other, max_other)
            }
            (FrameError::Decode(one), FrameError::Decode(other)) => one == other,
            (FrameError::Encode(one), FrameError::Encode(other)) => one == other,
            (FrameError::TrailingBytes { bytes }, FrameError::TrailingBytes { bytes: other }) => bytes == other,
            (FrameError::Closed, FrameError::Closed) => true,
            (FrameError::Io(one), FrameError::Io(other)) => same_io_error(one, other),
            (
                FrameError::TooLarge { .. }
                | FrameError::Decode(_)
                | FrameError::Encode(_)
                | FrameError::TrailingBytes { .. }
                | FrameError::Closed
                | FrameError::Io(_),
                _,
            ) => false,
        }
    }
}

impl Eq for FrameError {}

/// Whether two I/O errors report the same failure: the same kind and the same OS error code (or
/// none). Their messages are not compared (an `io::Error` made from a kind has none).
pub(crate) fn same_io_error(one: &io::Error, other: &io::Error) -> bool {
    one.kind() == other.kind() && one.raw_os_error() == other.raw_os_error()
}

/// Appends one frame holding `value` to `buffer`. On error `buffer` is left as it was.
pub fn encode_frame_into<T: Serialize>(
    value: &T,
    frame_bytes_max: u32,
    buffer: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let start = buffer.len();
    buffer.extend_from_slice(&[0; FRAME_PREFIX_BYTES]);
    if let Err(error) = postcard::to_io(value, &mut *buffer) {
        buffer.truncate(start);
        return Err(FrameError::Encode(error));
    }
    let payload_bytes = buffer.len() - start - FRAME_PREFIX_BYTES;
    match u32::try_from(payload_bytes) {
        Ok(length) if length <= frame_bytes_max => {
            buffer[start..start + FRAME_PREFIX_BYTES].copy_from_slice(&length.to_be_bytes());
            Ok(())
        }
        _ => {
            buffer.truncate(start);
            Err(FrameError::TooLarge { bytes: payload_bytes as u64, max: frame_bytes_max })
        }
    }
}

/// One frame holding `value`.
pub fn encode_frame<T: Serialize>(value: &T, frame_bytes_max: u32) -> Result<Vec<u8>, FrameError> {
    let mut buffer = Vec::new();
    encode_frame_into(value, frame_bytes_max, &mut buffer)?;
    Ok(buffer)
}

/// Decodes the frame at the start of `bytes`: `Ok(None)` when `bytes` holds only part of it,
/// otherwise the value and the number of bytes the frame took. Never panics, whatever `bytes` is.
pub fn decode_frame<T: DeserializeOwned>(bytes: &[u8], frame_bytes_max: u32) -> Result<Option<(T, usize)>, FrameError> {
    let Some((prefix, rest)) = bytes.split_first_chunk::<FRAME_PREFIX_BYTES>() else {
        return Ok(None);
    };
    let payload_bytes = check_length(u32::from_be_bytes(*prefix), frame_bytes_max)?;
    let Some(payload) = rest.get(..payload_bytes) else {
        return Ok(None);
    };
    let value = decode_payload(payload)?;
    Ok(Some((value, FRAME_PREFIX_BYTES + payload_bytes)))
}

/// Decodes one whole payload (the bytes after the prefix); bytes left over are an error, so that
/// every accepted frame has exactly one meaning.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (value, rest) = postcard::take_from_bytes(payload).map_err(FrameError::Decode)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes { bytes: rest.len() as u64 });
    }
    Ok(value)
}

/// The payload length announced by a prefix, if within the limit.
fn check_length(length: u32, frame_bytes_max: u32) -> Result<usize, FrameError> {
    if length > frame_bytes_max {
        return Err(FrameError::TooLarge { bytes: u64::from(length), max: frame_bytes_max });
    }
    // A u32 fits in usize on every target tokio supports (32 and 64 bits).
    Ok(length as usize)
}

/// Reads one frame from `reader`, using `payload` as scratch space. The payload buffer grows only
/// as bytes arrive, so a peer announcing a large frame and then stalling costs nothing up front.
/// Returns [`FrameError::Closed`] if the stream ends before the first byte of the frame.
pub async fn read_frame<T, R>(reader: &mut R, frame_bytes_max: u32, payload: &mut Vec<u8>) -> Result<T, FrameError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut prefix = [0; FRAME_PREFIX_BYTES];
    if reader.read(&mut prefix[..1]).await? == 0 {
        return Err(FrameError::Closed);
    }
    reader.read_exact(&mut prefix[1..]).await?;
    let payload_bytes = check_length(u32::from_be_bytes(prefix), frame_bytes_max)?;
    payload.clear();
    let read = (&mut *reader).take(payload_bytes as u64).read_to_end(payload).await?;
    if read < payload_bytes {
        return Err(FrameError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "the stream ended inside a frame")));
    }
    decode_payload(payload)
}

/// Writes one frame holding `value` to `writer` and flushes it.
pub async fn write_frame<T, W>(writer: &mut W, value: &T, frame_bytes_max: u32) -> Result<(), FrameError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let buffer = encode_frame(value, frame_bytes_max)?;
    writer.write_all(&buffer).await?;
    writer.flush().await?;
    Ok(())
}

/// A fuzzing harness: decodes arbitrary `bytes` as a [`Frame`] and, when that succeeds, checks
/// that re-encoding gives a frame that decodes to the same value (the bytes may differ: postcard
/// accepts some non-canonical varints). Panics only if that property fails.
pub fn check_decode(bytes: &[u8]) {
    let Ok(Some((frame, _))) = decode_frame::<Frame>(bytes, FRAME_BYTES_MAX_DEFAULT) else {
        return;
    };
    let decoded = encode_frame(&frame, FRAME_BYTES_MAX_DEFAULT)
        .and_then(|encoded| decode_frame::<Frame>(&encoded, FRAME_BYTES_MAX_DEFAULT))
        .map(|decoded| decoded.map(|(value, _)| value));
    assert_eq!(decoded, Ok(Some(frame)), "a decoded frame must round-trip");
}
