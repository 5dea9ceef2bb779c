//! # raft-net
//!
//! Transports that carry [`raft_core::Message`]s between the nodes of a group:
//!
//! - the [`Transport`] trait, which a node's driver uses to send;
//! - [`MemNetwork`] / [`MemTransport`]: in memory, deterministic, with fault controls (partitions,
//!   isolation, crashes) for tests and benchmarks;
//! - [`TcpTransport`]: length-prefixed postcard [`frame`]s over TCP, a handshake that checks
//!   magic, protocol version, cluster id and addressee, one outbound connection per peer with
//!   batched writes, reconnects with exponential backoff and seeded jitter. Generic over the
//!   stream type through [`Connect`] and [`Accept`], so a simulated network can stand in.
//!
//! ## Sending and receiving
//!
//! [`Transport::send`] never blocks: it puts the message on a bounded queue or fails with a typed
//! [`SendError`], and the message is dropped (Raft retransmits). [`SendError::Unreachable`] means
//! the peer is down or partitioned right now; the driver should pass that on to the core.
//!
//! Received messages come out of a bounded `tokio::sync::mpsc::Receiver<Message>` handed out when
//! the transport is created. Every message in it was addressed to this node and, over TCP, came
//! over a connection whose handshake named the message's sender.
//!
//! ## Back-pressure
//!
//! When the inbound channel is full, [`TcpTransport`]'s readers wait: they stop reading, TCP flow
//! control stops the senders' writes, their per-peer queues fill and their `send` fails with
//! [`SendError::QueueFull`]. Nothing is dropped on the receiving side, but a driver that stops
//! taking messages for longer than the senders' `write_timeout` makes them drop the connection
//! and reconnect (losing what they had queued). [`MemNetwork`] has no connection to hold back:
//! a full inbound channel fails the sender's `send` with [`SendError::QueueFull`] at once.
//!
//! ## Example
//!
//! ```
//! use raft_core::{Message, MessageBody, NodeId, Term};
//! use raft_net::{MemNetwork, SendError, Transport};
//!
//! let runtime = tokio::runtime::Builder::new_current_thread().build()?;
//! runtime.block_on(async {
//!     let network = MemNetwork::default();
//!     let (one, _inbox_one) = network.join(NodeId(1))?;
//!     let (_two, mut inbox_two) = network.join(NodeId(2))?;
//!
//!     let heartbeat = Message { from: NodeId(1), to: NodeId(2), term: Term(3), body: MessageBody::HeartbeatResponse { round: 0 } };
//!     one.send(heartbeat.clone())?;
//!     assert_eq!(inbox_two.recv().await, Some(heartbeat.clone()));
//!
//!     network.isolate(NodeId(2));
//!     assert_eq!(one.send(heartbeat), Err(SendError::Unreachable(NodeId(2))));
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod frame;
mod mem;
mod tcp;
mod transport;

pub use frame::{Frame, FrameError, Hello, RejectReason};
pub use mem::{JoinError, MEM_INBOUND_QUEUE_MESSAGES_MAX_DEFAULT, MemNetwork, MemTransport};
pub use tcp::{
    Accept, Connect, PeerState, READ_BUFFER_BYTES_DEFAULT, StartError, TcpOption, TcpOptions, TcpOptionsError,
    TcpTransport, TokioConnector, WRITE_BATCH_BYTES_MAX_DEFAULT,
};
pub use transport::{SendError, Transport};
