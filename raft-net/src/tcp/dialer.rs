//! The outbound half of a link: one task per peer that dials, handshakes, then writes batches of
//! queued messages (of every group: the groups share the peer's queue) until the connection
//! fails, and starts over after a backoff.

use std::net::SocketAddr;
use std::sync::Arc;

use raft_core::NodeId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout, timeout_at};
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::error::ConnectionError;
use super::groups::Counters;
use super::stream::Connect;
use super::{Outbound, PeerState, PeerStateCell, Shared};
use crate::frame::{Frame, FrameError, HELLO_FRAME_BYTES_MAX, Hello, encode_frame_into, read_frame, write_frame};
use crate::metrics::{DialerMetrics, Tally, kind_index};

/// Everything the writer task of one peer owns.
pub(crate) struct Dialer<C: Connect> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) connector: Arc<C>,
    pub(crate) peer_id: NodeId,
    pub(crate) address: SocketAddr,
    pub(crate) queue: mpsc::Receiver<Outbound>,
    pub(crate) state: Arc<PeerStateCell>,
    pub(crate) backoff: Backoff,
    /// The peer's metric handles.
    pub(crate) metrics: DialerMetrics,
    /// The messages of the batch being written, by kind (added to the metrics once written).
    pub(crate) tally: Tally,
}

impl<C: Connect> Dialer<C> {
    /// Dials, writes, and redials until cancelled (the task is spawned under a cancellation token).
    pub(crate) async fn run(mut self) {
        let mut connected_before = false;
        loop {
            self.state.set(PeerState::Connecting);
            match self.connect(&mut connected_before).await {
                Ok(ConnectionError::PeerRemoved) => return,
                Ok(_) => {}
                Err(error) => {
                    self.metrics.dial_failures.increment(1);
                    match &error {
                        ConnectionError::Rejected(_) => warn!(%error, "the peer refused the handshake"),
                        #[cfg(feature = "tls")]
                        ConnectionError::Tls(tls) if tls.is_refusal() => {
                            warn!(tls = tls.code(), %error, "the TLS handshake failed");
                        }
                        _ => debug!(%error, "dial failed"),
                    }
                }
            }
            self.state.set(PeerState::Backoff);
            self.discard_queued();
            sleep(self.backoff.next_delay()).await;
        }
    }

    /// Dials and handshakes (TLS first, when the transport has it), each within its timeout,
    /// then writes until the connection fails: returns why it ended, or why it was never up.
    async fn connect(&mut self, connected_before: &mut bool) -> Result<ConnectionError, ConnectionError> {
        let options = &self.shared.options;
        let stream = timeout(options.connect_timeout, self.connector.connect(self.address))
            .await
            .map_err(|_| ConnectionError::ConnectTimeout)?
            .map_err(ConnectionError::Connect)?;
        // One timeout for the TLS handshake and the hello together.
        let deadline = Instant::now() + options.handshake_timeout;
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.shared.tls {
            let stream = timeout_at(deadline, tls.connect(stream, self.address, self.peer_id))
                .await
                .map_err(|_| ConnectionError::HandshakeTimeout)??;
            return self.established(stream, deadline, connected_before).await;
        }
        self.established(stream, deadline, connected_before).await
    }

    /// Sends the hello on `stream` and, once accepted, writes until the connection fails.
    async fn established<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mut stream: S,
        deadline: Instant,
        connected_before: &mut bool,
    ) -> Result<ConnectionError, ConnectionError> {
        let hello = Hello::new(self.shared.cluster_id, self.shared.local_id, self.peer_id);
        timeout_at(deadline, handshake(&mut stream, hello)).await.map_err(|_| ConnectionError::HandshakeTimeout)??;
        info!("peer connection up"); // The span names the peer and its address.
        Counters::add(&self.shared.counters.connections_dialed, 1);
        if std::mem::replace(connected_before, true) {
            self.metrics.reconnects.increment(1);
        }
        self.state.set(PeerState::Connected);
        self.backoff.reset();
        let error = self.write_loop(stream).await;
        info!(reason = %error, "peer connection down");
        Ok(error)
    }

    /// Writes batches until the connection fails, and a keepalive frame after
    /// `keepalive_interval` without messages (the acceptor closes a connection that stays
    /// silent for `idle_timeout`). Also watches the read side: the acceptor never writes after
    /// the handshake, so a readable stream means it closed (or misbehaves), which this notices
    /// without waiting for the next write to fail.
    async fn write_loop<S: AsyncRead + AsyncWrite + Unpin>(&mut self, mut stream: S) -> ConnectionError {
        let mut buffer = Vec::new();
        let mut probe = [0; 1];
        // Writes only note the time; the timer is re-armed when it fires, not for every batch.
        let interval = self.shared.options.keepalive_interval;
        let mut last_write = Instant::now();
        let keepalive = sleep(interval);
        tokio::pin!(keepalive);
        loop {
            let first = tokio::select! {
                read = stream.read(&mut probe) => return match read {
                    Ok(0) => ConnectionError::PeerClosed,
                    Ok(_) => ConnectionError::UnexpectedData,
                    Err(error) => ConnectionError::Read(error),
                },
                message = self.queue.recv() => match message {
                    Some(message) => message,
                    None => return ConnectionError::PeerRemoved,
                },
                () = &mut keepalive => {
                    let due = last_write + interval;
                    if Instant::now() >= due {
                        buffer.clear();
                        if let Err(error) = encode_frame_into(&Frame::Keepalive, self.shared.options.frame_bytes_max, &mut buffer) {
                            warn!(%error, "a keepalive does not encode");
                        }
                        if let Err(error) = self.write_batch(&mut stream, &buffer, 0).await {
                            return error;
                        }
                        last_write = Instant::now();
                    }
                    keepalive.as_mut().reset(last_write + interval);
                    continue;
                }
            };
            let messages = self.fill_batch(first, &mut buffer);
            if let Err(error) = self.write_batch(&mut stream, &buffer, messages).await {
                return error;
            }
            self.metrics.sent.add(&mut self.tally);
            last_write = Instant::now();
        }
    }

    /// Encodes `first` and then whatever else is queued, of any group, up to
    /// `write_batch_bytes_max`, so that many small messages leave in one write. Returns how many
    /// message frames the buffer holds (pings are counted on their own).
    fn fill_batch(&mut self, first: Outbound, buffer: &mut Vec<u8>) -> u64 {
        let batch_bytes_max = self.shared.options.write_batch_bytes_max;
        buffer.clear();
        // One oversized message must not pin a large buffer for the life of the connection.
        buffer.shrink_to(batch_bytes_max.saturating_mul(2));
        self.tally.clear();
        let mut messages = u64::from(self.encode(first, buffer));
        while buffer.len() < batch_bytes_max {
            let Ok(next) = self.queue.try_recv() else {
                break;
            };
            messages += u64::from(self.encode(next, buffer));
        }
        messages
    }

    /// Appends the frame of one message to `buffer`; returns whether it was a message that fit
    /// (one that does not is dropped and logged). A ping is counted here.
    fn encode(&mut self, outbound: Outbound, buffer: &mut Vec<u8>) -> bool {
        let (group, message) = match outbound {
            Outbound::Message(group, message) => (group, message),
            Outbound::Ping(incarnation) => {
                if let Err(error) =
                    encode_frame_into(&Frame::Ping { incarnation }, self.shared.options.frame_bytes_max, buffer)
                {
                    warn!(%error, "a ping does not encode");
                } else {
                    Counters::add(&self.shared.counters.pings_written, 1);
                }
                return false;
            }
        };
        let kind = kind_index(&message.body);
        let start = buffer.len();
        let frame = Frame::Message { group, message };
        match encode_frame_into(&frame, self.shared.options.frame_bytes_max, buffer) {
            Ok(()) => {
                self.tally.count(kind, (buffer.len() - start) as u64);
                true
            }
            Err(error) => {
                warn!(%group, %error, "dropping a message that cannot be framed");
                false
            }
        }
    }

    /// Writes and flushes `buffer` (which holds `messages` message frames), within the write timeout.
    async fn write_batch<S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        buffer: &[u8],
        messages: u64,
    ) -> Result<(), ConnectionError> {
        if buffer.is_empty() {
            return Ok(());
        }
        let write = async {
            stream.write_all(buffer).await?;
            stream.flush().await
        };
        match timeout(self.shared.options.write_timeout, write).await {
            Err(_) => Err(ConnectionError::WriteTimeout),
            Ok(Err(error)) => Err(ConnectionError::Write(error)),
            Ok(Ok(())) => {
                let counters = &self.shared.counters;
                Counters::add(&counters.batches_written, 1);
                Counters::add(&counters.messages_written, messages);
                Ok(())
            }
        }
    }

    /// Drops what was queued while connecting: it would be stale by the time a connection exists.
    fn discard_queued(&mut self) {
        let mut discarded: u64 = 0;
        while self.queue.try_recv().is_ok() {
            discarded += 1;
        }
        if discarded > 0 {
            debug!(discarded, "dropped queued messages");
        }
    }
}

/// The dialer's side of the handshake: send `hello`, expect `HelloAccepted`.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, hello: Hello) -> Result<(), ConnectionError> {
    write_frame(stream, &Frame::Hello(hello), HELLO_FRAME_BYTES_MAX).await.map_err(tls_alert)?;
    let reply: Frame = read_frame(stream, HELLO_FRAME_BYTES_MAX, &mut Vec::new()).await.map_err(tls_alert)?;
    match reply {
        Frame::HelloAccepted => Ok(()),
        Frame::HelloRejected { reason } => Err(ConnectionError::Rejected(reason)),
        _ => Err(ConnectionError::UnexpectedFrame),
    }
}

/// A frame error, or the TLS refusal behind it: in TLS 1.3 the acceptor checks the dialer's
/// certificate after the dialer's side of the TLS handshake is done, so its refusal (an alert)
/// arrives while the dialer waits for the answer to its hello.
fn tls_alert(error: FrameError) -> ConnectionError {
    #[cfg(feature = "tls")]
    if let FrameError::Io(io) = error {
        return match crate::tls::TlsError::from_io(io) {
            crate::tls::TlsError::Io(io) => ConnectionError::Frame(FrameError::Io(io)),
            refusal => ConnectionError::Tls(refusal),
        };
    }
    ConnectionError::Frame(error)
}
