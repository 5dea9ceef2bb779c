//! The inbound half: accept connections, check each dialer's handshake, then read its messages
//! into the driver's inbound channel.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use raft_core::NodeId;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep, sleep, timeout};
use tracing::{debug, warn};

use super::Shared;
use super::error::ConnectionError;
use super::stream::Accept;
use crate::frame::{Frame, FrameError, HELLO_FRAME_BYTES_MAX, read_frame, write_frame};

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
                    shared.spawn(shared.cancel.clone(), async move {
                        serve(task_shared, stream, remote).await;
                        drop(permit);
                    });
                }
                Err(_) => warn!(local = %shared.local_id, %remote, connections_max, "too many inbound connections"),
            },
            Err(error) => {
                warn!(local = %shared.local_id, %error, "accept failed");
                sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Handshakes with one dialer, then reads its messages until the connection ends, breaks a rule,
/// or is replaced by a newer connection from the same peer.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(shared: Arc<Shared>, stream: S, remote: SocketAddr) {
    // The idle timer under the buffer: it reads the clock once per socket read, not once per read
    // from the buffer (several per frame).
    let stream = IdleReader::new(stream, shared.options.idle_timeout);
    let mut stream = BufReader::with_capacity(shared.options.read_buffer_bytes, stream);
    let handshake = timeout(shared.options.handshake_timeout, accept_handshake(&shared, &mut stream)).await;
    let peer = match handshake {
        Ok(Ok(peer)) => peer,
        Ok(Err(error)) => {
            warn!(local = %shared.local_id, %remote, %error, "handshake failed");
            return;
        }
        Err(_) => {
            warn!(local = %shared.local_id, %remote, error = %ConnectionError::HandshakeTimeout, "handshake failed");
            return;
        }
    };
    debug!(local = %shared.local_id, %peer, %remote, "accepted a connection");
    let (connection, cancel) = shared.register_reader(peer);
    let end = cancel.run_until_cancelled(read_loop(&shared, &mut stream, peer)).await;
    shared.unregister_reader(peer, connection);
    match end {
        None => debug!(local = %shared.local_id, %peer, %remote, "connection replaced or stopped"),
        Some(ConnectionError::Frame(FrameError::Closed)) => {
            debug!(local = %shared.local_id, %peer, %remote, "connection closed by the peer");
        }
        Some(error) => warn!(local = %shared.local_id, %peer, %remote, %error, "closing the connection"),
    }
}

/// The acceptor's side of the handshake: read `Hello`, answer, and return who the dialer is.
async fn accept_handshake<S>(shared: &Shared, stream: &mut S) -> Result<NodeId, ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame: Frame = read_frame(stream, HELLO_FRAME_BYTES_MAX, &mut Vec::new()).await?;
    let Frame::Hello(hello) = frame else {
        return Err(ConnectionError::UnexpectedFrame);
    };
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

/// Reads messages from `peer` into the inbound channel. Waits when the channel is full, which
/// stops reading and so pushes back on the dialer through TCP flow control.
async fn read_loop<R: AsyncRead + Unpin>(shared: &Shared, reader: &mut R, peer: NodeId) -> ConnectionError {
    let mut payload = Vec::new();
    loop {
        let frame = match read_frame::<Frame, _>(reader, shared.options.frame_bytes_max, &mut payload).await {
            Ok(frame) => frame,
            Err(error) if error.io_kind() == Some(io::ErrorKind::TimedOut) => return ConnectionError::IdleTimeout,
            Err(error) => return error.into(),
        };
        // One large frame must not pin a large buffer for the life of the connection.
        payload.clear();
        payload.shrink_to(shared.options.read_buffer_bytes);
        let message = match frame {
            Frame::Message(message) => message,
            Frame::Keepalive => continue,
            _ => return ConnectionError::UnexpectedFrame,
        };
        if message.from != peer {
            return ConnectionError::WrongSender { expected: peer, actual: message.from };
        }
        if message.to != shared.local_id {
            return ConnectionError::WrongReceiver(message.to);
        }
        if shared.inbound.send(message).await.is_err() {
            return ConnectionError::InboundClosed;
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
