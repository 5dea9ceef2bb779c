//! The TCP transport: one outbound connection per peer that only carries our messages to it, and
//! inbound connections that only carry the peers' messages to us (the stream model of etcd).
//!
//! Groups, full queues and unknown groups: see the docs of [`TcpTransport`].
//!
//! ## Tasks
//!
//! Tasks, all spawned on the runtime that started the transport (on its `LocalSet` with
//! `TcpOptions::spawn_local`) and all stopped by
//! [`TcpTransport::shutdown`] (or, without waiting, by dropping the transport):
//!
//! - one acceptor, which spawns a reader per inbound connection (at most
//!   `inbound_connections_max`); a newer connection from the same peer replaces an older one;
//! - one dialer per peer, which owns the peer's bounded queue, dials with a timeout, handshakes,
//!   writes queued messages in batches, and on failure waits an exponential, jittered backoff.
//!
//! While a peer's dialer is backing off, [`Transport::send`] to it fails at once with
//! [`SendError::Unreachable`], and what was queued is dropped, so an outage never buffers more
//! than `peer_queue_messages_max` messages.

mod acceptor;
mod backoff;
mod dialer;
mod error;
mod groups;
mod options;
mod stream;

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use raft_core::{GroupId, Message, NodeId};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

pub use groups::{RegisterGroupError, TcpStats};
pub use options::{
    INBOUND_FULL_TIMEOUT_DEFAULT, READ_BUFFER_BYTES_DEFAULT, TcpOption, TcpOptions, TcpOptionsError,
    WRITE_BATCH_BYTES_MAX_DEFAULT,
};
pub use stream::{Accept, Connect, TokioConnector};

use crate::frame::{Hello, RejectReason};
use crate::metrics::{DialerMetrics, Tally};
use crate::transport::{PeerLink, PeerSignals, SendError, Transport};
use backoff::Backoff;
use dialer::Dialer;
use groups::{Counters, GroupRegistry};

/// What the fuzzing harness drives: a connection's reader, over bytes in memory.
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing {
    pub(crate) use super::PeerSeen;
    pub(crate) use super::acceptor::{Inbound, read_loop};
    pub(crate) use super::error::ConnectionError;
    pub(crate) use super::groups::{Counters, GroupRegistry};
}

/// A node's transport over TCP (or any stream type, through [`Connect`] and [`Accept`]), shared by
/// every Raft group the node hosts.
///
/// # One transport per node, many groups
///
/// A `TcpTransport` belongs to a node, not to a group: it owns the node's listener, its peers and
/// its connections, and the groups the node hosts register on it at run time
/// ([`TcpTransport::register_group`], [`TcpTransport::unregister_group`]). Registering group `g`
/// returns what the node driver ([`crate::start`]) needs to run `g`: a [`TcpGroupTransport`],
/// which tags every message it sends with `g`, and the bounded receiver of `g`'s inbound
/// messages. Every frame names its group and the handshake stays between nodes, so one
/// connection in each direction between two nodes carries the messages of every group they
/// share, each group's in its send order ([`TcpStats::connections_dialed`] counts connections).
///
/// A node that runs one group is the one-group case of the same machinery:
/// [`TcpTransport::start`] registers [`GroupId::DEFAULT`] and returns its receiver, and the
/// transport itself, as a [`Transport`], sends for that group. [`TcpTransport::start_node`]
/// starts a transport with no group.
///
/// Peers belong to the node: [`TcpTransport::add_peer`] and [`TcpTransport::remove_peer`] act for
/// every group. Each peer has one bounded queue (`peer_queue_messages_max`) that all groups
/// share, and its dialer writes whatever is queued, of any group, in one batch: one write and
/// one flush ([`TcpStats::batches_written`]).
///
/// # Receiving: unknown groups and full queues
///
/// A message for a group this node does not host (never registered, unregistered, or whose
/// receiver was dropped) is dropped and counted ([`TcpStats::unknown_group_drops`], and a
/// debug-level tracing event); no group is ever created for it, and the connection and the other
/// groups carry on. The sender is not told: a connection carries data one way only, and Raft
/// treats the silence like any lost message. Creating and removing groups is the application's
/// business, not the network's.
///
/// Each group has an inbound queue of its own (`inbound_queue_messages_max` messages). When it is
/// full, the reader waits for room, as the transport of a single group always did: nothing is
/// lost while the group's driver keeps taking messages, and TCP flow control pushes back on the
/// sender. But the connection is shared, so while the reader waits every group from that peer
/// waits. The wait is therefore bounded: after [`TcpOptions::inbound_full_timeout`] without room
/// the message is dropped and counted ([`TcpStats::inbound_full_drops`]), and from then on that
/// group's messages are dropped at once while its queue is still full (the first one that fits
/// ends this). A stuck group costs the other groups at most one `inbound_full_timeout` per
/// connection and loses messages, which Raft resends; a group that is merely busy loses nothing.
/// (Raft bounds what one group has in flight to a peer, so in a healthy node a queue of the
/// default size does not fill; one that fills belongs to a driver that stopped keeping up.)
pub struct TcpTransport<C: Connect = TokioConnector> {
    shared: Arc<Shared>,
    connector: Arc<C>,
    local_address: SocketAddr,
}

/// The connection state of the link to one peer, as seen by its dialer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Dialing or handshaking; messages are queued (and dropped if the attempt fails).
    Connecting,
    /// Connected; messages are queued and written.
    Connected,
    /// Waiting before the next attempt; messages are refused as unreachable.
    Backoff,
}

/// Why a transport did not start. Not `Clone` or `PartialEq`, since an [`io::Error`] is neither.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StartError {
    /// The options are inconsistent.
    #[error("invalid options: {0}")]
    Options(#[from] TcpOptionsError),
    /// Not called from within a tokio runtime.
    #[error("a tokio runtime is required")]
    NoRuntime,
    /// The listener could not be bound.
    #[error("bind failed: {0}")]
    Bind(#[source] io::Error),
    /// The listener's local address is unknown.
    #[error("the listener has no local address: {0}")]
    LocalAddress(#[source] io::Error),
    /// The peer list contains the local node.
    #[error("node {0} cannot be its own peer")]
    PeerIsLocal(NodeId),
    /// The TLS certificate names another node or cluster than the transport's.
    #[cfg(feature = "tls")]
    #[error("the TLS certificate names {certified}, but the transport is {expected}")]
    TlsIdentity {
        /// The transport's cluster and node.
        expected: crate::tls::Identity,
        /// What the certificate names.
        certified: crate::tls::Identity,
    },
}

/// What secures the connections when it is not plain TCP: a TLS configuration with the feature
/// `tls`, nothing can be without it.
#[cfg(feature = "tls")]
type Security = crate::tls::TlsConfig;
#[cfg(not(feature = "tls"))]
type Security = std::convert::Infallible;

/// State shared by the transport handle and its tasks.
pub(crate) struct Shared {
    cluster_id: u64,
    local_id: NodeId,
    options: TcpOptions,
    peers: Mutex<BTreeMap<NodeId, PeerHandle>>,
    readers: Mutex<BTreeMap<NodeId, ReaderHandle>>,
    /// What the readers heard from each peer, for node-level liveness ([`PeerLink`]).
    seen: Mutex<BTreeMap<NodeId, Arc<PeerSeen>>>,
    connections: AtomicU64,
    groups: GroupRegistry,
    counters: Arc<Counters>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    runtime: Handle,
    /// Mutual TLS on every connection, or plain TCP.
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsConfig>,
}

/// What a dialer writes: a message of a group, or a node-level liveness ping.
pub(crate) enum Outbound {
    /// A message of `group`.
    Message(GroupId, Message),
    /// A [`Frame::Ping`](crate::Frame::Ping) carrying this incarnation.
    Ping(u64),
}

/// One peer's queue as a thread holding its sends sees it (see [`stage`]).
struct Lane {
    queue: mpsc::Sender<Outbound>,
    state: Arc<PeerStateCell>,
    counters: Arc<Counters>,
}

/// A peer's queue and the messages held for it, in the order sent.
type Staged = (Lane, Vec<(GroupId, Message)>);

thread_local! {
    /// The messages this thread sent while its sends are held, per peer queue (see
    /// [`crate::transport::SendHold`]).
    static STAGED: std::cell::RefCell<Vec<Staged>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Emptied message vectors of released lanes, reused by the next lanes: a host's worker
    /// stages a round's messages every round, and fresh vectors grew again from nothing each
    /// time (a twentieth of a busy node's allocations).
    static SPARE: std::cell::RefCell<Vec<Vec<(GroupId, Message)>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The most emptied vectors a thread keeps, and the most messages one may have room for.
const SPARE_VECTORS_MAX: usize = 8;
const SPARE_MESSAGES_MAX: usize = 512;

/// Keeps `message` for `peer`'s queue until this thread's sends are let go (see
/// [`crate::transport::SendHold`]); sends it at once if they are not held after all.
fn stage(
    peer: &PeerHandle,
    to: NodeId,
    counters: &Arc<Counters>,
    group: GroupId,
    message: Message,
) -> Result<(), SendError> {
    let unheld = STAGED.with(|staged| {
        let mut staged = staged.borrow_mut();
        if staged.is_empty() && !crate::transport::on_release(release_staged) {
            return Some(message); // Not held on this thread: sent at once.
        }
        let position = match staged.iter().position(|(lane, _)| lane.queue.same_channel(&peer.queue)) {
            Some(position) => position,
            None => {
                let lane =
                    Lane { queue: peer.queue.clone(), state: Arc::clone(&peer.state), counters: Arc::clone(counters) };
                let messages = SPARE.with(|spare| spare.borrow_mut().pop()).unwrap_or_default();
                staged.push((lane, messages));
                staged.len() - 1
            }
        };
        staged[position].1.push((group, message));
        None
    });
    match unheld {
        Some(message) => try_queue(&peer.queue, Outbound::Message(group, message), to),
        None => Ok(()),
    }
}

/// Queues every message this thread staged (see [`stage`]), peer after peer, each in the order
/// sent. They go one queue place each, in a tight loop: the peer's writer, woken by the first,
/// finds the rest queued when it runs and writes them together. What cannot be queued (the
/// peer's queue full, the peer in reconnect backoff, the transport closed) is dropped and counted
/// in [`TcpStats::held_drops`], as each would have been refused had it been sent alone.
fn release_staged() {
    let staged = STAGED.with(|staged| std::mem::take(&mut *staged.borrow_mut()));
    for (lane, mut messages) in staged {
        let mut dropped: u64 = 0;
        for (group, message) in messages.drain(..) {
            if lane.state.get() == PeerState::Backoff || lane.queue.try_send(Outbound::Message(group, message)).is_err()
            {
                dropped += 1;
            }
        }
        if dropped > 0 {
            Counters::add(&lane.counters.held_drops, dropped);
            tracing::debug!(dropped, "held messages dropped: the peer's queue is full or the peer unreachable");
        }
        if messages.capacity() <= SPARE_MESSAGES_MAX {
            SPARE.with(|spare| {
                let mut spare = spare.borrow_mut();
                if spare.len() < SPARE_VECTORS_MAX {
                    spare.push(messages);
                }
            });
        }
    }
}

/// Queues `outbound` on `queue` (of peer `to`).
fn try_queue(queue: &mpsc::Sender<Outbound>, outbound: Outbound, to: NodeId) -> Result<(), SendError> {
    queue.try_send(outbound).map_err(|error| match error {
        TrySendError::Full(_) => SendError::QueueFull(to),
        TrySendError::Closed(_) => SendError::Closed,
    })
}

/// What the readers of one peer's connections heard from it since the [`PeerLink`] last asked.
/// A reader only loads `heard` per frame (and stores it when the host has cleared it), so the
/// flag costs a delivered message nothing measurable.
#[derive(Debug, Default)]
pub(crate) struct PeerSeen {
    heard: AtomicBool,
    pinged: AtomicBool,
    incarnation: AtomicU64,
}

impl PeerSeen {
    /// A frame arrived.
    pub(crate) fn frame(&self) {
        if !self.heard.load(Ordering::Relaxed) {
            self.heard.store(true, Ordering::Relaxed);
        }
    }

    /// A ping arrived, carrying `incarnation`.
    pub(crate) fn ping(&self, incarnation: u64) {
        self.incarnation.store(incarnation, Ordering::Relaxed);
        self.pinged.store(true, Ordering::Release);
    }

    /// What was heard since the last call.
    pub(crate) fn take(&self) -> PeerSignals {
        let heard = self.heard.swap(false, Ordering::Relaxed);
        let ping = self.pinged.swap(false, Ordering::AcqRel).then(|| self.incarnation.load(Ordering::Relaxed));
        PeerSignals::new(heard || ping.is_some(), ping)
    }
}

/// The transport's end of one peer's dialer. Dropping it stops the dialer.
struct PeerHandle {
    address: SocketAddr,
    queue: mpsc::Sender<Outbound>,
    state: Arc<PeerStateCell>,
    _stop: DropGuard,
}

/// The current reader of one peer's inbound connection. Dropping it stops the reader.
struct ReaderHandle {
    connection: u64,
    _stop: DropGuard,
}

/// A [`PeerState`] shared between a dialer and `send`.
pub(crate) struct PeerStateCell(AtomicU8);

impl PeerStateCell {
    fn new(state: PeerState) -> Self {
        PeerStateCell(AtomicU8::new(state as u8))
    }

    fn get(&self) -> PeerState {
        match self.0.load(Ordering::Acquire) {
            value if value == PeerState::Connected as u8 => PeerState::Connected,
            value if value == PeerState::Backoff as u8 => PeerState::Backoff,
            _ => PeerState::Connecting,
        }
    }

    fn set(&self, state: PeerState) {
        self.0.store(state as u8, Ordering::Release);
    }
}

/// One group's [`Transport`] on a node's [`TcpTransport`], from
/// [`TcpTransport::register_group`]: every message it sends is tagged with its group. It sends
/// while the `TcpTransport` runs (after a shutdown, [`SendError::Closed`] or
/// [`SendError::Unreachable`]); unregistering its group stops only the delivery of what peers send
/// to the group here.
#[derive(Clone)]
pub struct TcpGroupTransport {
    shared: Arc<Shared>,
    group: GroupId,
}

impl TcpGroupTransport {
    /// The group this transport sends for.
    pub fn group(&self) -> GroupId {
        self.group
    }
}

impl Transport for TcpGroupTransport {
    fn local_id(&self) -> NodeId {
        self.shared.local_id
    }

    fn send(&self, message: Message) -> Result<(), SendError> {
        self.shared.send(self.group, message)
    }
}

impl std::fmt::Debug for TcpGroupTransport {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TcpGroupTransport")
            .field("local_id", &self.shared.local_id)
            .field("group", &self.group)
            .finish()
    }
}

impl TcpTransport<TokioConnector> {
    /// Binds a tokio listener on `address` (port 0 picks one: see [`TcpTransport::local_address`])
    /// and starts a transport on it; see [`TcpTransport::start`].
    pub async fn bind(
        cluster_id: u64,
        local_id: NodeId,
        address: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
        options: TcpOptions,
    ) -> Result<(Self, mpsc::Receiver<Message>), StartError> {
        let listener = TcpListener::bind(address).await.map_err(StartError::Bind)?;
        TcpTransport::start(cluster_id, local_id, listener, TokioConnector, peers, options)
    }
}

impl<C: Connect> TcpTransport<C> {
    /// Starts the transport of node `local_id` in cluster `cluster_id` for a node that runs one
    /// group, [`GroupId::DEFAULT`]: accepts on `listener`, dials `peers` with `connector`. Returns
    /// the transport, which sends for that group, and the receiver of every message addressed to
    /// the group on this node. More groups may be registered later. Must be called from within a
    /// tokio runtime, whose tasks it uses.
    pub fn start<A: Accept>(
        cluster_id: u64,
        local_id: NodeId,
        listener: A,
        connector: C,
        peers: BTreeMap<NodeId, SocketAddr>,
        options: TcpOptions,
    ) -> Result<(Self, mpsc::Receiver<Message>), StartError> {
        let transport = TcpTransport::new(cluster_id, local_id, &listener, connector, &peers, options, None)?;
        Ok(transport.launch_default(listener, peers))
    }

    /// [`TcpTransport::start`] with mutual TLS on every connection (see [`crate::tls`]):
    /// `tls`'s certificate must name `local_id` of `cluster_id`.
    #[cfg(feature = "tls")]
    pub fn start_tls<A: Accept>(
        cluster_id: u64,
        local_id: NodeId,
        listener: A,
        connector: C,
        peers: BTreeMap<NodeId, SocketAddr>,
        options: TcpOptions,
        tls: crate::tls::TlsConfig,
    ) -> Result<(Self, mpsc::Receiver<Message>), StartError> {
        let transport = TcpTransport::new(cluster_id, local_id, &listener, connector, &peers, options, Some(tls))?;
        Ok(transport.launch_default(listener, peers))
    }

    /// [`TcpTransport::start_node`] with mutual TLS on every connection (see [`crate::tls`]):
    /// `tls`'s certificate must name `local_id` of `cluster_id`.
    #[cfg(feature = "tls")]
    pub fn start_node_tls<A: Accept>(
        cluster_id: u64,
        local_id: NodeId,
        listener: A,
        connector: C,
        peers: BTreeMap<NodeId, SocketAddr>,
        options: TcpOptions,
        tls: crate::tls::TlsConfig,
    ) -> Result<Self, StartError> {
        let transport = TcpTransport::new(cluster_id, local_id, &listener, connector, &peers, options, Some(tls))?;
        Ok(transport.launch(listener, peers))
    }

    /// Registers [`GroupId::DEFAULT`], then spawns the tasks.
    fn launch_default<A: Accept>(
        self,
        listener: A,
        peers: BTreeMap<NodeId, SocketAddr>,
    ) -> (Self, mpsc::Receiver<Message>) {
        // Registered before any connection is accepted, so no message for it can miss it.
        let receiver = self.shared.groups.open(GroupId::DEFAULT, self.shared.options.inbound_queue_messages_max);
        (self.launch(listener, peers), receiver)
    }

    /// Starts the transport of node `local_id` in cluster `cluster_id` with no group yet (see
    /// [`TcpTransport::register_group`]): accepts on `listener`, dials `peers` with `connector`.
    /// Until a group registers, messages received are dropped as for an unknown group. Must be
    /// called from within a tokio runtime, whose tasks it uses.
    pub fn start_node<A: Accept>(
        cluster_id: u64,
        local_id: NodeId,
        listener: A,
        connector: C,
        peers: BTreeMap<NodeId, SocketAddr>,
        options: TcpOptions,
    ) -> Result<Self, StartError> {
        let transport = TcpTransport::new(cluster_id, local_id, &listener, connector, &peers, options, None)?;
        Ok(transport.launch(listener, peers))
    }

    /// Checks the arguments and builds the transport, with no task yet.
    fn new<A: Accept>(
        cluster_id: u64,
        local_id: NodeId,
        listener: &A,
        connector: C,
        peers: &BTreeMap<NodeId, SocketAddr>,
        options: TcpOptions,
        tls: Option<Security>,
    ) -> Result<Self, StartError> {
        options.validate()?;
        #[cfg(feature = "tls")]
        if let Some(tls) = &tls {
            let expected = crate::tls::Identity::new(cluster_id, local_id);
            if tls.identity() != expected {
                return Err(StartError::TlsIdentity { expected, certified: tls.identity() });
            }
        }
        let runtime = Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        let local_address = listener.local_address().map_err(StartError::LocalAddress)?;
        if peers.contains_key(&local_id) {
            return Err(StartError::PeerIsLocal(local_id));
        }
        let shared = Arc::new(Shared {
            cluster_id,
            local_id,
            options,
            peers: Mutex::new(BTreeMap::new()),
            readers: Mutex::new(BTreeMap::new()),
            seen: Mutex::new(BTreeMap::new()),
            connections: AtomicU64::new(0),
            groups: GroupRegistry::default(),
            counters: Arc::default(),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            runtime,
            #[cfg(feature = "tls")]
            tls,
        });
        #[cfg(not(feature = "tls"))]
        let _: Option<Security> = tls;
        Ok(TcpTransport { shared, connector: Arc::new(connector), local_address })
    }

    /// Spawns the dialers of `peers` and the acceptor.
    fn launch<A: Accept>(self, listener: A, peers: BTreeMap<NodeId, SocketAddr>) -> Self {
        for (peer_id, address) in peers {
            let handle = self.spawn_dialer(peer_id, address);
            lock(&self.shared.peers).insert(peer_id, handle);
        }
        let shared = &self.shared;
        let span = tracing::error_span!("tcp_acceptor", local = %shared.local_id);
        let accepting = tracing::Instrument::instrument(acceptor::accept_loop(Arc::clone(shared), listener), span);
        shared.spawn(shared.cancel.clone(), accepting);
        self
    }

    /// The address the listener is bound to.
    pub fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    /// Registers `group` on this node: returns its transport (for sending) and the receiver of
    /// the messages peers send to the group here (bounded by `inbound_queue_messages_max`), which
    /// is what [`crate::start`] takes to run the group. Refuses a group already registered whose
    /// receiver is still open.
    pub fn register_group(
        &self,
        group: GroupId,
    ) -> Result<(TcpGroupTransport, mpsc::Receiver<Message>), RegisterGroupError> {
        let receiver = self.shared.groups.register(group, self.shared.options.inbound_queue_messages_max)?;
        Ok((TcpGroupTransport { shared: Arc::clone(&self.shared), group }, receiver))
    }

    /// Unregisters `group`: messages for it that arrive from now on are dropped as for an
    /// unknown group (one being handed over at this moment may still land), and its receiver ends
    /// once every reader has let go of it. Its transports keep sending. Returns whether it was
    /// registered.
    pub fn unregister_group(&self, group: GroupId) -> bool {
        self.shared.groups.unregister(group)
    }

    /// The registered groups, in order.
    pub fn groups(&self) -> Vec<GroupId> {
        self.shared.groups.ids()
    }

    /// The transport's counters since it started.
    pub fn stats(&self) -> TcpStats {
        self.shared.counters.snapshot()
    }

    /// Adds a peer, or moves an existing one to a new address (its connection starts over).
    /// Returns `false`, changing nothing, when `peer_id` is this node.
    pub fn add_peer(&self, peer_id: NodeId, address: SocketAddr) -> bool {
        if peer_id == self.shared.local_id {
            return false;
        }
        let mut peers = lock(&self.shared.peers);
        if peers.get(&peer_id).is_none_or(|peer| peer.address != address) {
            // Replacing the handle drops the old one, which stops the old dialer.
            peers.insert(peer_id, self.spawn_dialer(peer_id, address));
        }
        true
    }

    /// Removes a peer: stops its dialer and its inbound connection, drops what was queued for it.
    /// Returns whether it was a peer.
    pub fn remove_peer(&self, peer_id: NodeId) -> bool {
        let removed = lock(&self.shared.peers).remove(&peer_id).is_some();
        lock(&self.shared.readers).remove(&peer_id);
        // Its `seen` entry stays: a connection accepted while the peer is removed and added
        // again may hold it, and its frames must count for the peer added again.
        removed
    }

    /// The node's [`PeerLink`] over this transport, for a [`Host`](crate::Host) that watches its
    /// peers ([`Host::watch_peers`](crate::Host::watch_peers)): its pings are
    /// [`Frame::Ping`](crate::Frame::Ping)s on the connections the groups' messages use, and
    /// a message or a ping read from a peer counts as a sign of life (a keepalive, which the
    /// transport sends whatever its groups do, does not).
    pub fn peer_link(&self) -> Arc<dyn PeerLink> {
        Arc::new(TcpPeerLink { shared: Arc::clone(&self.shared) })
    }

    /// The peers and their addresses.
    pub fn peers(&self) -> BTreeMap<NodeId, SocketAddr> {
        lock(&self.shared.peers).iter().map(|(peer_id, peer)| (*peer_id, peer.address)).collect()
    }

    /// The state of the link to `peer_id`, or `None` if it is not a peer.
    pub fn peer_state(&self, peer_id: NodeId) -> Option<PeerState> {
        lock(&self.shared.peers).get(&peer_id).map(|peer| peer.state.get())
    }

    /// Stops every task and waits until they have finished: the listener and every connection
    /// are closed when this returns, so a new transport may bind the same address. Every group is
    /// unregistered, so their receivers end once what was delivered has been read.
    pub async fn shutdown(self) {
        self.shared.cancel.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        self.shared.groups.clear();
    }

    fn spawn_dialer(&self, peer_id: NodeId, address: SocketAddr) -> PeerHandle {
        let shared = &self.shared;
        let (queue, receiver) = mpsc::channel(shared.options.peer_queue_messages_max);
        let state = Arc::new(PeerStateCell::new(PeerState::Connecting));
        let cancel = shared.cancel.child_token();
        let options = &shared.options;
        let dialer = Dialer {
            shared: Arc::clone(shared),
            connector: Arc::clone(&self.connector),
            peer_id,
            address,
            queue: receiver,
            state: Arc::clone(&state),
            backoff: Backoff::new(options.backoff_base, options.backoff_max, shared.local_id, peer_id),
            metrics: DialerMetrics::new(shared.local_id, peer_id),
            tally: Tally::default(),
        };
        // The writer's span, one per peer for the transport's life (dials and redials in it).
        let span = tracing::error_span!("tcp_outbound", local = %shared.local_id, peer = %peer_id, %address);
        shared.spawn(cancel.clone(), tracing::Instrument::instrument(dialer.run(), span));
        PeerHandle { address, queue, state, _stop: cancel.drop_guard() }
    }
}

/// Sends for [`GroupId::DEFAULT`], the group of a node that runs one.
impl<C: Connect> Transport for TcpTransport<C> {
    fn local_id(&self) -> NodeId {
        self.shared.local_id
    }

    fn send(&self, message: Message) -> Result<(), SendError> {
        self.shared.send(GroupId::DEFAULT, message)
    }
}

impl<C: Connect> Drop for TcpTransport<C> {
    /// Stops every task without waiting; use [`TcpTransport::shutdown`] to wait.
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

impl<C: Connect> std::fmt::Debug for TcpTransport<C> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TcpTransport")
            .field("cluster_id", &self.shared.cluster_id)
            .field("local_id", &self.shared.local_id)
            .field("local_address", &self.local_address)
            .field("peers", &self.peers())
            .field("groups", &self.groups())
            .finish()
    }
}

impl Shared {
    /// Queues `message` of `group` for its receiver (see [`Transport::send`]).
    fn send(&self, group: GroupId, message: Message) -> Result<(), SendError> {
        if message.from != self.local_id {
            return Err(SendError::ForeignSender(message.from));
        }
        let to = message.to;
        self.queue(to, Outbound::Message(group, message))
    }

    /// Queues `outbound` for peer `to`'s dialer.
    fn queue(&self, to: NodeId, outbound: Outbound) -> Result<(), SendError> {
        let peers = lock(&self.peers);
        let Some(peer) = peers.get(&to) else {
            return Err(SendError::UnknownPeer(to));
        };
        if peer.state.get() == PeerState::Backoff {
            return Err(SendError::Unreachable(to));
        }
        match outbound {
            Outbound::Message(group, message) if crate::transport::sends_held() => {
                stage(peer, to, &self.counters, group, message)
            }
            outbound => try_queue(&peer.queue, outbound, to),
        }
    }

    /// Spawns `task` on the transport's runtime; it stops when `cancel` (or the transport) does.
    fn spawn(&self, cancel: CancellationToken, task: impl Future<Output = ()> + Send + 'static) {
        let task = async move { cancel.run_until_cancelled(task).await };
        if self.options.spawn_local {
            self.tasks.spawn_local(task);
        } else {
            self.tasks.spawn_on(task, &self.runtime);
        }
    }

    /// Checks a dialer's hello: the fixed fields, then (if so configured) that it is a peer.
    fn check_hello(&self, hello: &Hello) -> Result<(), RejectReason> {
        hello.check(self.cluster_id, self.local_id)?;
        if self.options.reject_unknown_peers && !lock(&self.peers).contains_key(&hello.from) {
            return Err(RejectReason::UnknownPeer);
        }
        Ok(())
    }

    /// Makes a new connection the reader of `peer`, stopping any older one. Returns the
    /// connection's number and the token that stops it.
    fn register_reader(&self, peer: NodeId) -> (u64, CancellationToken) {
        let connection = self.connections.fetch_add(1, Ordering::Relaxed);
        let cancel = self.cancel.child_token();
        let handle = ReaderHandle { connection, _stop: cancel.clone().drop_guard() };
        lock(&self.readers).insert(peer, handle);
        (connection, cancel)
    }

    /// What the readers of `peer`'s connections note about it.
    fn seen(&self, peer: NodeId) -> Arc<PeerSeen> {
        Arc::clone(lock(&self.seen).entry(peer).or_default())
    }

    /// Forgets the reader of `peer` if it is still `connection` (not already replaced).
    fn unregister_reader(&self, peer: NodeId, connection: u64) {
        let mut readers = lock(&self.readers);
        if readers.get(&peer).is_some_and(|reader| reader.connection == connection) {
            readers.remove(&peer);
        }
    }
}

/// A [`TcpTransport`]'s [`PeerLink`] ([`TcpTransport::peer_link`]).
struct TcpPeerLink {
    shared: Arc<Shared>,
}

impl PeerLink for TcpPeerLink {
    fn ping(&self, peer: NodeId, incarnation: u64) -> Result<(), SendError> {
        self.shared.queue(peer, Outbound::Ping(incarnation))
    }

    fn take_signals(&self) -> Vec<(NodeId, PeerSignals)> {
        let peers: Vec<NodeId> = lock(&self.shared.peers).keys().copied().collect();
        peers.into_iter().map(|peer| (peer, self.shared.seen(peer).take())).collect()
    }
}

/// Locks one of the transport's maps. Every critical section is a single map operation, so a
/// panic while the lock was held cannot have left a map half-changed: poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use raft_core::{MessageBody, Term};

    use super::*;
    use crate::transport::{SendHold, hold_sends};

    fn message(term: u64) -> Message {
        Message { from: NodeId(1), to: NodeId(2), term: Term(term), body: MessageBody::TimeoutNow }
    }

    /// A peer's handle over a queue of `capacity`, and the queue's other end.
    fn peer(capacity: usize) -> (PeerHandle, mpsc::Receiver<Outbound>) {
        let (queue, receiver) = mpsc::channel(capacity);
        let state = Arc::new(PeerStateCell::new(PeerState::Connected));
        let handle = PeerHandle {
            address: SocketAddr::from(([127, 0, 0, 1], 9)),
            queue,
            state,
            _stop: CancellationToken::new().drop_guard(),
        };
        (handle, receiver)
    }

    /// The (group, term) of every message `receiver` holds.
    fn drain(receiver: &mut mpsc::Receiver<Outbound>) -> Vec<(u64, u64)> {
        let mut messages = Vec::new();
        while let Ok(outbound) = receiver.try_recv() {
            match outbound {
                Outbound::Message(group, message) => messages.push((group.0, message.term.0)),
                Outbound::Ping(_) => panic!("no ping was sent"),
            }
        }
        messages
    }

    fn send(peer: &PeerHandle, counters: &Arc<Counters>, group: u64, term: u64) {
        stage(peer, NodeId(2), counters, GroupId(group), message(term)).expect("staged or queued");
    }

    #[test]
    fn held_messages_leave_per_peer_in_order_when_the_hold_ends() {
        let counters = Arc::default();
        let ((two, mut to_two), (three, mut to_three)) = (peer(16), peer(16));
        hold_sends(|| {
            for term in 1..=3 {
                send(&two, &counters, term, term);
                send(&three, &counters, 10 + term, 10 + term);
            }
            assert!(drain(&mut to_two).is_empty(), "nothing leaves while sends are held");
            // A nested hold lets nothing go when it ends.
            hold_sends(|| send(&two, &counters, 4, 4));
            assert!(drain(&mut to_two).is_empty());
        });
        assert_eq!(drain(&mut to_two), [(1, 1), (2, 2), (3, 3), (4, 4)], "in the order sent");
        assert_eq!(drain(&mut to_three), [(11, 11), (12, 12), (13, 13)]);
        // Nothing is left held for the next hold, and outside a hold a message leaves at once.
        send(&two, &counters, 5, 5);
        assert_eq!(drain(&mut to_two), [(5, 5)]);
        assert_eq!(counters.snapshot().held_drops, 0);
    }

    #[test]
    fn a_hold_lets_go_once_held_long_enough_and_holds_again() {
        let counters = Arc::default();
        let (two, mut receiver) = peer(16);
        let mut hold = SendHold::begin();
        send(&two, &counters, 1, 1);
        hold.release_if_held_for(std::time::Duration::from_secs(3600));
        assert!(drain(&mut receiver).is_empty(), "not held long enough");
        hold.release_if_held_for(std::time::Duration::ZERO);
        assert_eq!(drain(&mut receiver), [(1, 1)], "held long enough: let go");
        send(&two, &counters, 1, 2);
        assert!(drain(&mut receiver).is_empty(), "held again");
        drop(hold);
        assert_eq!(drain(&mut receiver), [(1, 2)]);
        assert!(!crate::transport::sends_held());
    }

    #[test]
    fn held_messages_leave_when_the_holder_unwinds() {
        let counters = Arc::default();
        let (two, mut receiver) = peer(16);
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            hold_sends(|| {
                send(&two, &counters, 1, 1);
                send(&two, &counters, 1, 2);
                panic!("a group's round panicked");
            })
        }));
        assert!(unwound.is_err());
        assert_eq!(drain(&mut receiver), [(1, 1), (1, 2)]);
        assert!(!crate::transport::sends_held());
    }

    /// Let go, held messages meet the queue's limit and the peer's state as each would have
    /// alone: what does not fit, or finds the peer in reconnect backoff, is dropped and counted.
    #[test]
    fn held_messages_that_find_the_queue_full_or_the_peer_unreachable_are_dropped_and_counted() {
        let counters = Arc::default();
        let (two, mut receiver) = peer(2);
        hold_sends(|| (1..=5).for_each(|term| send(&two, &counters, 1, term)));
        assert_eq!(drain(&mut receiver), [(1, 1), (1, 2)], "the queue's two places");
        assert_eq!(counters.snapshot().held_drops, 3);
        hold_sends(|| {
            send(&two, &counters, 1, 6);
            // The dialer loses its connection before the hold ends.
            two.state.set(PeerState::Backoff);
        });
        assert!(drain(&mut receiver).is_empty());
        assert_eq!(counters.snapshot().held_drops, 4);
    }
}
