//! The TCP transport: one outbound connection per peer that only carries our messages to it, and
//! inbound connections that only carry the peers' messages to us (the stream model of etcd).
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
mod options;
mod stream;

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use raft_core::{Message, NodeId};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

pub use options::{READ_BUFFER_BYTES_DEFAULT, TcpOption, TcpOptions, TcpOptionsError, WRITE_BATCH_BYTES_MAX_DEFAULT};
pub use stream::{Accept, Connect, TokioConnector};

use crate::frame::{Hello, RejectReason};
use crate::transport::{SendError, Transport};
use backoff::Backoff;
use dialer::Dialer;

/// A [`Transport`] over TCP (or any stream type, through [`Connect`] and [`Accept`]).
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
}

/// State shared by the transport handle and its tasks.
pub(crate) struct Shared {
    cluster_id: u64,
    local_id: NodeId,
    options: TcpOptions,
    peers: Mutex<BTreeMap<NodeId, PeerHandle>>,
    readers: Mutex<BTreeMap<NodeId, ReaderHandle>>,
    connections: AtomicU64,
    inbound: mpsc::Sender<Message>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    runtime: Handle,
}

/// The transport's end of one peer's dialer. Dropping it stops the dialer.
struct PeerHandle {
    address: SocketAddr,
    queue: mpsc::Sender<Message>,
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
    /// Starts the transport of node `local_id` in cluster `cluster_id`: accepts on `listener`,
    /// dials `peers` with `connector`. Returns the transport and the receiver of every message
    /// addressed to this node. Must be called from within a tokio runtime, whose tasks it uses.
    pub fn start<A: Accept>(
        cluster_id: u64,
        local_id: NodeId,
        listener: A,
        connector: C,
        peers: BTreeMap<NodeId, SocketAddr>,
        options: TcpOptions,
    ) -> Result<(Self, mpsc::Receiver<Message>), StartError> {
        options.validate()?;
        let runtime = Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        let local_address = listener.local_address().map_err(StartError::LocalAddress)?;
        if peers.contains_key(&local_id) {
            return Err(StartError::PeerIsLocal(local_id));
        }
        let (inbound, receiver) = mpsc::channel(options.inbound_queue_messages_max);
        let shared = Arc::new(Shared {
            cluster_id,
            local_id,
            options,
            peers: Mutex::new(BTreeMap::new()),
            readers: Mutex::new(BTreeMap::new()),
            connections: AtomicU64::new(0),
            inbound,
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            runtime,
        });
        let transport = TcpTransport { shared, connector: Arc::new(connector), local_address };
        for (peer_id, address) in peers {
            let handle = transport.spawn_dialer(peer_id, address);
            lock(&transport.shared.peers).insert(peer_id, handle);
        }
        let shared = &transport.shared;
        shared.spawn(shared.cancel.clone(), acceptor::accept_loop(Arc::clone(shared), listener));
        Ok((transport, receiver))
    }

    /// The address the listener is bound to.
    pub fn local_address(&self) -> SocketAddr {
        self.local_address
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
        removed
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
    /// are closed when this returns, so a new transport may bind the same address.
    pub async fn shutdown(self) {
        self.shared.cancel.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
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
        };
        shared.spawn(cancel.clone(), dialer.run());
        PeerHandle { address, queue, state, _stop: cancel.drop_guard() }
    }
}

impl<C: Connect> Transport for TcpTransport<C> {
    fn local_id(&self) -> NodeId {
        self.shared.local_id
    }

    fn send(&self, message: Message) -> Result<(), SendError> {
        if message.from != self.shared.local_id {
            return Err(SendError::ForeignSender(message.from));
        }
        let to = message.to;
        let peers = lock(&self.shared.peers);
        let Some(peer) = peers.get(&to) else {
            return Err(SendError::UnknownPeer(to));
        };
        if peer.state.get() == PeerState::Backoff {
            return Err(SendError::Unreachable(to));
        }
        peer.queue.try_send(message).map_err(|error| match error {
            TrySendError::Full(_) => SendError::QueueFull(to),
            TrySendError::Closed(_) => SendError::Closed,
        })
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
            .finish()
    }
}

impl Shared {
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

    /// Forgets the reader of `peer` if it is still `connection` (not already replaced).
    fn unregister_reader(&self, peer: NodeId, connection: u64) {
        let mut readers = lock(&self.readers);
        if readers.get(&peer).is_some_and(|reader| reader.connection == connection) {
            readers.remove(&peer);
        }
    }
}

/// Locks one of the transport's maps. Every critical section is a single map operation, so a
/// panic while the lock was held cannot have left a map half-changed: poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
