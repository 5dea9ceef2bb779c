//! # raft-net
//!
//! The tokio runtime of a Raft node: the node drivers ([`Host`] for many groups per node,
//! [`start`] for one, both returning a [`NodeHandle`] per group) that run a [`raft_core::Raft`]
//! over a [`raft_storage::LogStore`], a [`Transport`] and the application's [`StateMachine`],
//! and the transports.
//!
//! ## Running a node
//!
//! [`start`] runs one group on a host of its own: a worker thread (the one owner of the core and
//! the storage, which it writes inline with group commit, and the taker of the transport's
//! messages), an apply thread (the one owner of the state machine; none under
//! [`Execution::OneThread`], where the worker applies) and a ticker thread that wakes the group
//! when its timers are due. [`Host`] runs many groups on a fixed pool of workers. The [`node`]
//! module docs describe the threads, the bounded queues and how the driving contract of
//! raft-core is met.
//!
//! Clients write with [`NodeHandle::propose`] (answered once the command is applied) and read
//! with [`NodeHandle::read`], which runs a query against the state machine on its apply thread:
//! [`ReadConsistency::Linearizable`] (ReadIndex, on the leader or forwarded by a follower),
//! [`ReadConsistency::Lease`] (the leader's lease, with a clock-drift bound) or
//! [`ReadConsistency::Stale`] (whatever is applied, no check). A single node, over the in-memory
//! network and store:
//!
//! ```
//! use std::io;
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use raft_core::{Index, Membership, NodeId, Options, Role};
//! use raft_net::{MemNetwork, NodeConfig, ReadConsistency, StateMachine};
//! use raft_storage::MemStorage;
//!
//! /// Sums the numbers it is given.
//! #[derive(Default)]
//! struct Sum(u64);
//!
//! impl StateMachine for Sum {
//!     type Response = u64;
//!     type RestoreError = io::Error;
//!     fn apply(&mut self, _index: Index, command: &Bytes) -> u64 {
//!         self.0 += command.iter().map(|byte| u64::from(*byte)).sum::<u64>();
//!         self.0
//!     }
//!     // Snapshots stream: written into a sink, read from a reader, never whole in memory.
//!     fn snapshot(&self, sink: &mut dyn io::Write) -> io::Result<()> {
//!         sink.write_all(&self.0.to_le_bytes())
//!     }
//!     fn restore(&mut self, reader: &mut dyn io::Read) -> io::Result<()> {
//!         let mut sum = [0; 8];
//!         reader.read_exact(&mut sum)?;
//!         self.0 = u64::from_le_bytes(sum);
//!         Ok(())
//!     }
//! }
//!
//! let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
//! runtime.block_on(async {
//!     let id = NodeId(1);
//!     let network = MemNetwork::default();
//!     let (transport, inbound) = network.join(id)?;
//!     let storage = MemStorage::new(Membership::new([id]));
//!     let mut config = NodeConfig::new(id, Options::builder().election_ticks(5).rng_seed(1).build()?);
//!     config.tick_interval = Duration::from_millis(10);
//!     let node = raft_net::start(config, storage, transport, inbound, Sum::default())?;
//!
//!     // A lone voter elects itself after an election timeout.
//!     while node.status().await?.role != Role::Leader {
//!         tokio::time::sleep(Duration::from_millis(10)).await;
//!     }
//!     assert_eq!(node.propose(Bytes::from_static(&[40, 2])).await?, 42);
//!     // Sees every write that completed before it was asked.
//!     assert_eq!(node.read(ReadConsistency::Linearizable, |sum: &Sum| sum.0).await?, 42);
//!     node.shutdown().await;
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Transports
//!
//! Transports carry [`raft_core::Message`]s between nodes, for one Raft group or for many:
//!
//! - the [`Transport`] trait, which a node's driver uses to send for its group;
//! - [`MemNetwork`] / [`MemTransport`]: in memory, deterministic, with fault controls (partitions,
//!   isolation, crashes) for tests and benchmarks;
//! - [`TcpTransport`]: length-prefixed postcard [`frame`]s over TCP, a handshake that checks
//!   magic, protocol version, cluster id and addressee, one outbound connection per peer with
//!   batched writes, reconnects with exponential backoff and seeded jitter. Generic over the
//!   stream type through [`Connect`] and [`Accept`], so a simulated network can stand in. With
//!   the feature `tls`, every connection can run over mutual TLS, each node's certificate naming
//!   its node and cluster (`tls` module, `TcpTransport::start_tls`).
//!
//! ### Groups
//!
//! A transport belongs to a node, and the node's Raft groups (each named by a
//! [`raft_core::GroupId`]) share it: [`TcpTransport::register_group`] (or
//! [`MemNetwork::join_group`]) returns one group's [`Transport`] and the receiver of its inbound
//! messages, which is what [`start`] takes, so N groups run as N drivers on one transport. Every
//! frame names its group; the handshake stays between nodes, so two nodes keep one connection in
//! each direction whatever the number of groups they share, and what is queued for a peer leaves
//! in one write whatever its groups. Peers, partitions and crashes are the node's. A node that runs
//! one group is the one-group case: [`TcpTransport::start`] and [`MemNetwork::join`] join
//! [`raft_core::GroupId::DEFAULT`]. A message for a group the receiving node does not host is
//! dropped and counted ([`TcpStats::unknown_group_drops`], [`MemNetwork::unknown_group_drops`]);
//! a peer never creates a group.
//!
//! ### Sending and receiving
//!
//! [`Transport::send`] never blocks: it puts the message on a bounded queue or fails with a typed
//! [`SendError`], and the message is dropped (Raft retransmits). [`SendError::Unreachable`] means
//! the peer is down or partitioned right now; the driver should pass that on to the core.
//!
//! Received messages come out of a bounded `tokio::sync::mpsc::Receiver<Message>` per group,
//! handed out when the group joins the transport. Every message in it was addressed to this node
//! and to that group and, over TCP, came over a connection whose handshake named the message's
//! sender.
//!
//! ### Back-pressure
//!
//! When a group's inbound channel is full, [`TcpTransport`]'s reader waits: it stops reading, TCP
//! flow control stops the sender's writes, its per-peer queue fills and its `send` fails with
//! [`SendError::QueueFull`]. Nothing is dropped on the receiving side while the group's driver
//! keeps taking messages. But the connection carries every group from that peer, so the wait is
//! bounded by [`TcpOptions::inbound_full_timeout`]; after it, the group's messages are dropped
//! (counted in [`TcpStats::inbound_full_drops`]) while its channel stays full, and the other
//! groups carry on (see [`TcpTransport`] for why). A driver that stops taking messages for longer than
//! the senders' `write_timeout` can no longer make them drop the connection. [`MemNetwork`] has no
//! connection to hold back: a full inbound channel fails the sender's `send` with
//! [`SendError::QueueFull`] at once.
//!
//! ### Example: a transport alone
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
//!
//! ## Logging
//!
//! The crate logs through `tracing` and installs no subscriber. Each phase of a group's round
//! runs in a span `group{node, group, term}`, so raft-core's events (elections with their cause,
//! votes and refusals with the reason, term and leader changes, truncations, snapshots) and the
//! driver's (`group stopping: fail-stop` with its [`StopReason`], `snapshot installed`) say
//! where they happened; each TCP connection runs in `tcp_outbound{local, peer, address}` or
//! `tcp_inbound{local, remote, peer}`, around `peer connection up` and `peer connection down`
//! (with its `reason`). The spans are at level ERROR so that any filter keeps them. The
//! repository's `docs/logging.md` lists every event and field.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod frame;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod mem;
pub mod metrics;
pub mod node;
mod tcp;
#[cfg(feature = "tls")]
pub mod tls;
mod transport;

pub use frame::{Frame, FrameError, Hello, RejectReason};
pub use mem::{JoinError, MEM_INBOUND_QUEUE_MESSAGES_MAX_DEFAULT, MemNetwork, MemTransport};
pub use node::{
    APPLY_QUEUE_BATCHES_MAX_DEFAULT, ConfigError, ConfigLimit, DUE_TICKS_BEFORE_MAX, DriverClock,
    EVENT_QUEUE_EVENTS_MAX_DEFAULT, Execution, GROUPS_PER_BATCH_MAX_DEFAULT, GroupSummary, Host, HostConfig, HostError,
    HostStats, HostStatus, IDLE_POLL_DEFAULT, INPUT_BATCH_ITEMS_MAX_DEFAULT, INPUT_QUEUE_ITEMS_MAX_DEFAULT,
    MembershipChangeError, NodeConfig, NodeEvent, NodeHandle, NodeStartError, NodeStatus,
    PROPOSALS_PENDING_MAX_DEFAULT, PeerStatus, PeerWatch, ProposeError, READS_PENDING_MAX_DEFAULT, ReadConsistency,
    ReadError, SNAPSHOT_PIECES_QUEUED_MAX, SNAPSHOT_READ_BYTES_MAX, SNAPSHOT_WRITE_BYTES_MAX, SharedError,
    SnapshotSinkClosed, StateMachine, StopReason, StorageFailure, StorageOperation, TICK_INTERVAL_DEFAULT,
    TICKS_PER_ITERATION_MAX, TRANSFER_ELECTION_TIMEOUTS_MAX, TransferLeadershipError, start,
};
pub use tcp::{
    Accept, Connect, INBOUND_FULL_TIMEOUT_DEFAULT, PeerState, READ_BUFFER_BYTES_DEFAULT, RegisterGroupError,
    StartError, TcpGroupTransport, TcpOption, TcpOptions, TcpOptionsError, TcpStats, TcpTransport, TokioConnector,
    WRITE_BATCH_BYTES_MAX_DEFAULT,
};
pub use transport::{PeerLink, PeerSignals, SendError, Transport};
