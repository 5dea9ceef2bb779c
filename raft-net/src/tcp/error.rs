//! Why a connection failed or ended. These are logged, never returned to the driver: the driver
//! learns about an unreachable peer through `SendError::Unreachable`.

use std::io;

use raft_core::NodeId;
use thiserror::Error;

use crate::frame::{FrameError, RejectReason};

/// Why one connection attempt failed or one connection ended.
#[derive(Debug, Error)]
pub(crate) enum ConnectionError {
    /// Dialing took longer than `connect_timeout`.
    #[error("connect timed out")]
    ConnectTimeout,
    /// Dialing failed.
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    /// The handshake took longer than `handshake_timeout`.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// The acceptor refused our handshake.
    #[error("our handshake was rejected: {0}")]
    Rejected(RejectReason),
    /// We refused the dialer's handshake.
    #[error("refused the handshake of node {from}: {reason}")]
    Refused {
        /// Who the dialer claimed to be.
        from: NodeId,
        /// Why we refused.
        reason: RejectReason,
    },
    /// A frame could not be read, written or decoded.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// A frame of a kind that does not belong at this point of the protocol.
    #[error("unexpected kind of frame")]
    UnexpectedFrame,
    /// A message on the connection of one peer claims to come from another.
    #[error("message from node {actual} on the connection of node {expected}")]
    WrongSender {
        /// The peer that completed the handshake.
        expected: NodeId,
        /// The message's `from`.
        actual: NodeId,
    },
    /// A message addressed to another node.
    #[error("message addressed to node {0}")]
    WrongReceiver(NodeId),
    /// The acceptor closed the connection.
    #[error("the peer closed the connection")]
    PeerClosed,
    /// The acceptor wrote on a connection it should only read.
    #[error("the peer sent data after the handshake")]
    UnexpectedData,
    /// Reading the connection failed.
    #[error("read failed: {0}")]
    Read(#[source] io::Error),
    /// No frame arrived within `idle_timeout` (not even a keepalive).
    #[error("no frame within the idle timeout")]
    IdleTimeout,
    /// A batched write took longer than `write_timeout`.
    #[error("write timed out")]
    WriteTimeout,
    /// A write failed.
    #[error("write failed: {0}")]
    Write(#[source] io::Error),
    /// The peer was removed or replaced.
    #[error("the peer was removed")]
    PeerRemoved,
    /// TLS refused the peer (or the peer refused us), or the TLS handshake failed.
    #[cfg(feature = "tls")]
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

impl ConnectionError {
    /// The [`TlsError::code`](crate::tls::TlsError::code) of a TLS error, logged as the field
    /// `tls`.
    pub(crate) fn tls_code(&self) -> Option<&'static str> {
        match self {
            #[cfg(feature = "tls")]
            ConnectionError::Tls(error) => Some(error.code()),
            _ => None,
        }
    }
}
