//! The inbound half: accept connections, check each dialer's handshake, then read its messages
//! into the inbound queues of their groups.

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use raft_core::NodeId;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::sync::Semaphore;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::{Instant, Sleep, sleep, timeout, timeout_at};
use tracing::{Instrument, debug, info, warn};

use super::error::ConnectionError;
use super::groups::{Counters, GroupRegistry};
use super::stream::Accept;
use super::{PeerSeen, Shared};
use crate::frame::{FRAME_PREFIX_BYTES, Frame, FrameError, HELLO_FRAME_BYTES_MAX, read_frame, write_frame};
use crate::metrics::{PeerMetrics, kind_index};

/// The pause after a failed `accept` (for example: out of file descriptors), so that a persistent
/// error does not spin the loop.
pub(crate) const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accepts connections until cancelled, each served by its own task.
pub(crate) async fn accept_loop<A: Accept>(shared: Arc<Shared>, mut listener: A) {
    // A limit above the semaphore's maximum is as good as unlimited.
    let connections_max = shared.options.inbound_connections_max.min(Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(connections_max));
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => match Arc::clone(&permits).try_acquire_owned() {
                Ok(permit) => {
                    let task_shared = Arc::clone(&shared);
                    // The reader's span, a root (it outlives nothing of the acceptor's): `peer`
                    // is recorded once the handshake says who it is.
                    let span = tracing::error_span!(
                        parent: None,
                        "tcp_inbound",
                        local = %shared.local_id,
                        %remote,
                        peer = tracing::field::Empty
                    );
                    let serving = async move {
                        serve(task_shared, stream).await;
                        drop(permit);
                    };
                    shared.spawn(shared.cancel.clone(), serving.instrument(span));
                }
                Err(_) => warn!(%remote, connections_max, "too many inbound connections"),
            },
            Err(error) => {
                warn!(%error, "accept failed");
                sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Handshakes with one dialer (TLS first, when the transport has it: here, in the connection's
/// task, so that a slow client never stalls the accept loop), then reads its messages until the
/// connection ends, breaks a rule, or is replaced by a newer connection from the same peer.
/// Runs in a span naming the local node, the remote address and (once known) the peer.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(shared: Arc<Shared>, stream: S) {
    // One timeout for the TLS handshake and the hello together.
    let deadline = Instant::now() + shared.options.handshake_timeout;
    #[cfg(feature = "tls")]
    if let Some(tls) = &shared.tls {
        let (stream, identity) = match timeout_at(deadline, tls.accept(stream)).await {
            Ok(Ok(secured)) => secured,
            Ok(Err(error)) => return handshake_failed(&ConnectionError::Tls(error)),
            Err(_) => return handshake_failed(&ConnectionError::HandshakeTimeout),
        };
        return serve_stream(shared, stream, deadline, Some(identity.node_id)).await;
    }
    serve_stream(shared, stream, deadline, None).await
}

/// Logs why a handshake failed (a TLS refusal with its `tls` code).
fn handshake_failed(error: &ConnectionError) {
    warn!(tls = error.tls_code(), %error, "handshake failed");
}

/// [`serve`] over a stream ready for the hello, which must come from `certified` (the node the
/// dialer's TLS certificate names) if given.
async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    stream: S,
    deadline: Instant,
    certified: Option<NodeId>,
) {
    // The idle timer under the buffer: it reads the clock once per socket read, not once per read
    // from the buffer (several per frame).
    let stream = IdleReader::new(stream, shared.options.idle_timeout);
    let mut stream = BufReader::with_capacity(shared.options.read_buffer_bytes, stream);
    let handshake = timeout_at(deadline, accept_handshake(&shared, &mut stream, certified)).await;
    let peer = match handshake {
        Ok(Ok(peer)) => peer,
        Ok(Err(error)) => return handshake_failed(&error),
        Err(_) => return handshake_failed(&ConnectionError::HandshakeTimeout),
    };
    tracing::Span::current().record("peer", tracing::field::display(peer));
    info!("peer connection up"); // The span names the peer and its address.
    Counters::add(&shared.counters.connections_accepted, 1);
    let (connection, cancel) = shared.register_reader(peer);
    let inbound = Inbound::of(&shared, peer);
    let end = cancel.run_until_cancelled(read_loop(&inbound, &mut stream, peer)).await;
    shared.unregister_reader(peer, connection);
    match end {
        None => {
            let reason = "replaced by a newer connection, or the transport stopped";
            info!(reason, "peer connection down");
        }
        Some(ConnectionError::Frame(FrameError::Closed)) => {
            info!(reason = "closed by the peer", "peer connection down")
        }
        Some(error) => warn!(reason = %error, "peer connection down"),
    }
}

/// The acceptor's side of the handshake: read `Hello`, answer, and return who the dialer is.
/// Over TLS, a hello whose `from` is not the node the dialer's certificate names (`certified`)
/// gets no answer: the connection is closed.
async fn accept_handshake<S>(
    shared: &Shared,
    stream: &mut S,
    certified: Option<NodeId>,
) -> Result<NodeId, ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame: Frame = read_frame(stream, HELLO_FRAME_BYTES_MAX, &mut Vec::new()).await?;
    let Frame::Hello(hello) = frame else {
        return Err(ConnectionError::UnexpectedFrame);
    };
    #[cfg(feature = "tls")]
    if let Some(certified) = certified
        && hello.from != certified
    {
        return Err(crate::tls::TlsError::IdentityMismatch { claimed: hello.from, certified }.into());
    }
    #[cfg(not(feature = "tls"))]
    let _: Option<NodeId> = certified;
    match shared.check_hello(&hello) {
        Ok(()) => {
            write_frame(stream, &Frame::HelloAccepted, HELLO_FRAME_BYTES_MAX).await?;
            Ok(hello.from)
        }
        Err(reason) => {
            write_frame(stream, &Frame::HelloRejected { reason }, HELLO_FRAME_BYTES_MAX).await?;
            // Best effort: the connection is closed when dropped either way.
            let _ = stream.shutdown().await;
            Err(ConnectionError::Refused { from: hello.from, reason })
        }
    }
}

/// What a connection's reader needs of its transport.
pub(crate) struct Inbound<'a> {
    /// This node.
    pub(crate) local_id: NodeId,
    /// `TcpOptions::frame_bytes_max`.
    pub(crate) frame_bytes_max: u32,
    /// `TcpOptions::read_buffer_bytes`.
    pub(crate) read_buffer_bytes: usize,
    /// `TcpOptions::inbound_full_timeout`.
    pub(crate) inbound_full_timeout: Duration,
    /// The groups this node hosts.
    pub(crate) groups: &'a GroupRegistry,
    /// The transport's counters.
    pub(crate) counters: &'a Counters,
    /// What this connection's peer was heard doing, for node-level liveness.
    pub(crate) seen: Arc<PeerSeen>,
    /// The metric handles of what this peer sends.
    pub(crate) received: PeerMetrics,
}

impl<'a> Inbound<'a> {
    fn of(shared: &'a Shared, peer: NodeId) -> Self {
        let options = &shared.options;
        Inbound {
            local_id: shared.local_id,
            frame_bytes_max: options.frame_bytes_max,
            read_buffer_bytes: options.read_buffer_bytes,
            inbound_full_timeout: options.inbound_full_timeout,
            groups: &shared.groups,
            counters: &shared.counters,
            seen: shared.seen(peer),
            received: PeerMetrics::new(shared.local_id, peer, "received"),
        }
    }
}

/// Reads messages from `peer` into their groups' inbound queues, until the stream ends or breaks
/// a rule (the returned error says which). A message for a group this node does not host is
/// dropped and counted. When a group's queue is full, waits for room (which stops reading, and so
/// pushes back on the dialer through TCP flow control) for up to `inbound_full_timeout`; after
/// that, drops the message, and that group's messages while its queue stays full (see
/// `TcpTransport`'s docs on full queues).
pub(crate) async fn read_loop<R: AsyncRead + Unpin>(
    inbound: &Inbound<'_>,
    reader: &mut R,
    peer: NodeId,
) -> ConnectionError {
    let mut payload = Vec::new();
    let mut groups = inbound.groups.view();
    // Groups that were dropped for a full queue, whose messages are dropped without waiting
    // while their queue stays full.
    let mut congested = BTreeSet::new();
    let counters = inbound.counters;
    loop {
        let frame = match read_frame::<Frame, _>(reader, inbound.frame_bytes_max, &mut payload).await {
            Ok(frame) => frame,
            Err(error) if error.io_kind() == Some(io::ErrorKind::TimedOut) => return ConnectionError::IdleTimeout,
            Err(error) => return error.into(),
        };
        let frame_bytes = (payload.len() + FRAME_PREFIX_BYTES) as u64;
        // One large frame must not pin a large buffer for the life of the connection.
        payload.clear();
        payload.shrink_to(inbound.read_buffer_bytes);
        let (group, message) = match frame {
            Frame::Message { group, message } => (group, message),
            Frame::Keepalive => continue,
            Frame::Ping { incarnation } => {
                inbound.seen.ping(incarnation);
                Counters::add(&counters.pings_received, 1);
                continue;
            }
            _ => return ConnectionError::UnexpectedFrame,
        };
        if message.from != peer {
            return ConnectionError::WrongSender { expected: peer, actual: message.from };
        }
        if message.to != inbound.local_id {
            return ConnectionError::WrongReceiver(message.to);
        }
        // A sign of life of the peer's node (its groups send), unlike a keepalive, which only
        // its transport sends.
        inbound.seen.frame();
        inbound.received.message(kind_index(&message.body), frame_bytes);
        let Some(queue) = groups.get(group) else {
            Counters::add(&counters.unknown_group_drops, 1);
            debug!(%group, "dropped a message for a group this node does not host");
            continue;
        };
        let message = match queue.try_send(message) {
            Ok(()) => {
                if !congested.is_empty() {
                    congested.remove(&group);
                }
                continue;
            }
            Err(TrySendError::Closed(_)) => {
                Counters::add(&counters.unknown_group_drops, 1);
                debug!(%group, "dropped a message for a group whose receiver is gone");
                continue;
            }
            Err(TrySendError::Full(message)) => message,
        };
        if congested.contains(&group) {
            Counters::add(&counters.inbound_full_drops, 1);
            continue;
        }
        match timeout(inbound.inbound_full_timeout, queue.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                Counters::add(&counters.unknown_group_drops, 1);
                debug!(%group, "dropped a message for a group whose receiver is gone");
            }
            Err(_) => {
                Counters::add(&counters.inbound_full_drops, 1);
                congested.insert(group);
                debug!(%group, "a group's inbound queue stayed full: dropping its messages while it is");
            }
        }
    }
}

/// A reader that fails with `TimedOut` once no byte has arrived for `idle` while it is being read
/// from: progress, not whole frames, is what counts, so a large frame on a slow link is fine. The
/// time spent not reading (waiting for room in the inbound channel) does not count as long as
/// bytes are waiting when reading resumes. Progress only updates a timestamp; the timer is
/// touched when it fires (then re-armed for the last progress plus `idle`), not on every read.
struct IdleReader<R> {
    inner: R,
    idle: Duration,
    last_progress: Instant,
    deadline: Pin<Box<Sleep>>,
}

impl<R> IdleReader<R> {
    fn new(inner: R, idle: Duration) -> Self {
        IdleReader { inner, idle, last_progress: Instant::now(), deadline: Box::pin(tokio::time::sleep(idle)) }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for IdleReader<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        if let Poll::Ready(result) = Pin::new(&mut this.inner).poll_read(cx, buf) {
            if buf.filled().len() > before {
                this.last_progress = Instant::now();
            }
            return Poll::Ready(result);
        }
        while this.deadline.as_mut().poll(cx).is_ready() {
            let due = this.last_progress + this.idle;
            if Instant::now() >= due {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::TimedOut)));
            }
            this.deadline.as_mut().reset(due);
        }
        Poll::Pending
    }
}

/// Writes (the handshake's answer) go straight through.
impl<W: AsyncWrite + Unpin> AsyncWrite for IdleReader<W> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
