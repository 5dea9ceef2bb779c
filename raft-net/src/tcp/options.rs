//! Tunables of the TCP transport, checked once when it starts.

use std::time::Duration;

use thiserror::Error;

use crate::frame::{FRAME_BYTES_MAX_DEFAULT, FRAME_BYTES_MIN};

/// Tunables of a [`TcpTransport`](crate::TcpTransport). Every queue and buffer has a named limit
/// here; [`TcpOptions::validate`] (called by the transport when it starts) checks how they relate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpOptions {
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// How long the handshake may take, on either side.
    pub handshake_timeout: Duration,
    /// How long one batched write may take before the connection is dropped (a stuck peer, or one
    /// whose driver stopped reading: see the crate docs on back-pressure).
    pub write_timeout: Duration,
    /// The first reconnect delay (before jitter).
    pub backoff_base: Duration,
    /// The longest reconnect delay (before jitter).
    pub backoff_max: Duration,
    /// The longest frame payload sent or accepted. A message that does not fit is dropped (and
    /// logged) by the sender. Must exceed raft-core's `message_bytes_max` plus entry overheads.
    pub frame_bytes_max: u32,
    /// Messages queued for one peer at most, of every group together; more fail with
    /// `SendError::QueueFull` (messages a [`Host`](crate::Host) round held back and that find
    /// the queue full when let go are dropped and counted in `TcpStats::held_drops`).
    pub peer_queue_messages_max: usize,
    /// Messages received for one group but not yet taken by its driver at most (each group has a
    /// queue of this size); beyond that, readers wait, for up to `inbound_full_timeout`.
    pub inbound_queue_messages_max: usize,
    /// How long a reader waits for room in one group's full inbound queue before it drops the
    /// message (counted in `TcpStats::inbound_full_drops`); while it waits, every other group on
    /// the same connection waits too. After such a drop, that group's messages are dropped without
    /// waiting until its queue has room again (see [`TcpTransport`](crate::TcpTransport)). Must be
    /// below `write_timeout`, so that a stuck group never makes the sender drop the connection of
    /// every group.
    pub inbound_full_timeout: Duration,
    /// A writer stops adding queued messages to one write once its buffer holds this many bytes
    /// (a single message may exceed it).
    pub write_batch_bytes_max: usize,
    /// Bytes buffered by each connection's reader.
    pub read_buffer_bytes: usize,
    /// Inbound connections (handshaking or established) at most; more are closed at once.
    pub inbound_connections_max: usize,
    /// Refuse handshakes from nodes that are not in the peer list.
    pub reject_unknown_peers: bool,
    /// A dialer with nothing to send for this long sends a keepalive frame.
    pub keepalive_interval: Duration,
    /// An accepted connection on which no frame arrived for this long is closed: the peer, or
    /// the path to it, is gone, though no error said so (a half-open connection: a crashed
    /// host, a dropped NAT entry, a partition that lost data). Closing it makes the dialer
    /// notice and dial again. Must exceed `keepalive_interval`.
    pub idle_timeout: Duration,
    /// Spawn the transport's tasks on the current [`tokio::task::LocalSet`] instead of the
    /// runtime; the transport must then be started from within one (it panics otherwise). For
    /// deterministic simulation (turmoil hosts run in a `LocalSet`): a runtime keeps its tasks in
    /// lists sharded by a process-wide task counter, so the order in which dropping it (a
    /// simulated crash) drops the tasks, and closes their connections, varies from run to run;
    /// a `LocalSet` drops its tasks in a fixed order.
    pub spawn_local: bool,
}

/// The default write batch: large enough that many small messages share one system call.
pub const WRITE_BATCH_BYTES_MAX_DEFAULT: usize = 256 * 1024;

/// The default [`TcpOptions::inbound_full_timeout`]: well below an election timeout of a few
/// hundred milliseconds, so that a stuck group does not hold the others on its connections up for
/// long; long enough that a driver busy with one slow write loses nothing.
pub const INBOUND_FULL_TIMEOUT_DEFAULT: Duration = Duration::from_millis(200);

/// The default reader buffer.
pub const READ_BUFFER_BYTES_DEFAULT: usize = 64 * 1024;

const _: () = assert!(WRITE_BATCH_BYTES_MAX_DEFAULT <= FRAME_BYTES_MAX_DEFAULT as usize);

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            connect_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(3),
            write_timeout: Duration::from_secs(5),
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            peer_queue_messages_max: 1024,
            inbound_queue_messages_max: 4096,
            inbound_full_timeout: INBOUND_FULL_TIMEOUT_DEFAULT,
            spawn_local: false,
            keepalive_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            write_batch_bytes_max: WRITE_BATCH_BYTES_MAX_DEFAULT,
            read_buffer_bytes: READ_BUFFER_BYTES_DEFAULT,
            inbound_connections_max: 256,
            reject_unknown_peers: true,
        }
    }
}

/// Which option a [`TcpOptionsError::Zero`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TcpOption {
    /// [`TcpOptions::connect_timeout`].
    ConnectTimeout,
    /// [`TcpOptions::handshake_timeout`].
    HandshakeTimeout,
    /// [`TcpOptions::write_timeout`].
    WriteTimeout,
    /// [`TcpOptions::backoff_base`].
    BackoffBase,
    /// [`TcpOptions::peer_queue_messages_max`].
    PeerQueueMessagesMax,
    /// [`TcpOptions::inbound_queue_messages_max`].
    InboundQueueMessagesMax,
    /// [`TcpOptions::write_batch_bytes_max`].
    WriteBatchBytesMax,
    /// [`TcpOptions::read_buffer_bytes`].
    ReadBufferBytes,
    /// [`TcpOptions::inbound_connections_max`].
    InboundConnectionsMax,
    /// [`TcpOptions::keepalive_interval`].
    KeepaliveInterval,
    /// [`TcpOptions::inbound_full_timeout`].
    InboundFullTimeout,
}

/// Why a set of [`TcpOptions`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TcpOptionsError {
    /// The option must not be zero.
    #[error("{0:?} must not be zero")]
    Zero(TcpOption),
    /// `frame_bytes_max` must hold a full snapshot chunk with its envelope.
    #[error("frame_bytes_max ({bytes}) is below the minimum of {min}")]
    FrameBytesTooSmall {
        /// The limit asked for.
        bytes: u32,
        /// [`FRAME_BYTES_MIN`].
        min: u32,
    },
    /// `idle_timeout` must exceed `keepalive_interval`, or quiet connections are closed.
    #[error("idle_timeout ({idle:?}) must exceed keepalive_interval ({keepalive:?})")]
    IdleTimeoutNotAboveKeepalive {
        /// The idle timeout asked for.
        idle: Duration,
        /// The keepalive interval asked for.
        keepalive: Duration,
    },
    /// `inbound_full_timeout` must be below `write_timeout`, or a stuck group could make a peer
    /// drop the connection that every group shares.
    #[error("inbound_full_timeout ({inbound_full:?}) must be below write_timeout ({write:?})")]
    InboundFullTimeoutNotBelowWrite {
        /// The inbound-full timeout asked for.
        inbound_full: Duration,
        /// The write timeout asked for.
        write: Duration,
    },
    /// `backoff_base` must not exceed `backoff_max`.
    #[error("backoff_base ({base:?}) exceeds backoff_max ({max:?})")]
    BackoffBaseAboveMax {
        /// The base asked for.
        base: Duration,
        /// The maximum asked for.
        max: Duration,
    },
}

impl TcpOptions {
    /// Checks every limit and how they relate.
    pub fn validate(&self) -> Result<(), TcpOptionsError> {
        let durations = [
            (self.connect_timeout, TcpOption::ConnectTimeout),
            (self.handshake_timeout, TcpOption::HandshakeTimeout),
            (self.write_timeout, TcpOption::WriteTimeout),
            (self.backoff_base, TcpOption::BackoffBase),
            (self.keepalive_interval, TcpOption::KeepaliveInterval),
            (self.inbound_full_timeout, TcpOption::InboundFullTimeout),
        ];
        if let Some((_, option)) = durations.iter().find(|(duration, _)| duration.is_zero()) {
            return Err(TcpOptionsError::Zero(*option));
        }
        let limits = [
            (self.peer_queue_messages_max, TcpOption::PeerQueueMessagesMax),
            (self.inbound_queue_messages_max, TcpOption::InboundQueueMessagesMax),
            (self.write_batch_bytes_max, TcpOption::WriteBatchBytesMax),
            (self.read_buffer_bytes, TcpOption::ReadBufferBytes),
            (self.inbound_connections_max, TcpOption::InboundConnectionsMax),
        ];
        if let Some((_, option)) = limits.iter().find(|(limit, _)| *limit == 0) {
            return Err(TcpOptionsError::Zero(*option));
        }
        if self.frame_bytes_max < FRAME_BYTES_MIN {
            return Err(TcpOptionsError::FrameBytesTooSmall { bytes: self.frame_bytes_max, min: FRAME_BYTES_MIN });
        }
        if self.idle_timeout <= self.keepalive_interval {
            return Err(TcpOptionsError::IdleTimeoutNotAboveKeepalive {
                idle: self.idle_timeout,
                keepalive: self.keepalive_interval,
            });
        }
        if self.inbound_full_timeout >= self.write_timeout {
            return Err(TcpOptionsError::InboundFullTimeoutNotBelowWrite {
                inbound_full: self.inbound_full_timeout,
                write: self.write_timeout,
            });
        }
        if self.backoff_base > self.backoff_max {
            return Err(TcpOptionsError::BackoffBaseAboveMax { base: self.backoff_base, max: self.backoff_max });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(TcpOptions::default().validate(), Ok(()));
    }

    #[test]
    fn bad_limits_are_named() {
        let options = TcpOptions { peer_queue_messages_max: 0, ..TcpOptions::default() };
        assert_eq!(options.validate(), Err(TcpOptionsError::Zero(TcpOption::PeerQueueMessagesMax)));
        let options = TcpOptions { write_timeout: Duration::ZERO, ..TcpOptions::default() };
        assert_eq!(options.validate(), Err(TcpOptionsError::Zero(TcpOption::WriteTimeout)));
        let options = TcpOptions { frame_bytes_max: 1024, ..TcpOptions::default() };
        assert_eq!(options.validate(), Err(TcpOptionsError::FrameBytesTooSmall { bytes: 1024, min: FRAME_BYTES_MIN }));
        let options = TcpOptions { backoff_base: Duration::from_secs(9), ..TcpOptions::default() };
        assert!(matches!(options.validate(), Err(TcpOptionsError::BackoffBaseAboveMax { .. })));
        let options = TcpOptions { idle_timeout: Duration::from_secs(1), ..TcpOptions::default() };
        assert!(matches!(options.validate(), Err(TcpOptionsError::IdleTimeoutNotAboveKeepalive { .. })));
        let options = TcpOptions { inbound_full_timeout: Duration::ZERO, ..TcpOptions::default() };
        assert_eq!(options.validate(), Err(TcpOptionsError::Zero(TcpOption::InboundFullTimeout)));
        let options = TcpOptions { inbound_full_timeout: Duration::from_secs(5), ..TcpOptions::default() };
        assert!(matches!(options.validate(), Err(TcpOptionsError::InboundFullTimeoutNotBelowWrite { .. })));
        let options = TcpOptions { keepalive_interval: Duration::ZERO, ..TcpOptions::default() };
        assert_eq!(options.validate(), Err(TcpOptionsError::Zero(TcpOption::KeepaliveInterval)));
    }
}
