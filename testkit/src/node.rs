//! One node: how it is wired to its peers ([`Wiring`]: the in-memory network, or [`Tcp`] over
//! any listener and connector), started ([`start_node`]), and kept by a test ([`Member`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use raft_core::{Message, NodeId};
use raft_net::{
    Accept, Connect, JoinError, MemNetwork, MemTransport, NodeConfig, NodeHandle, NodeStartError, StateMachine,
    TcpOptions, TcpTransport, TokioConnector, Transport,
};
use raft_storage::{DiskError, LogStore};
use thiserror::Error;
use tokio::sync::mpsc;

/// Why the harness could not start a node or a cluster.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// The node could not join the in-memory network (its id is taken).
    #[error("the node could not join the network: {0}")]
    Join(#[from] JoinError),
    /// The TCP transport did not start.
    #[error("the transport did not start: {0}")]
    Transport(#[from] raft_net::StartError),
    /// raft-net's driver did not start.
    #[error("the node did not start: {0}")]
    Node(#[from] NodeStartError),
    /// The durable store could not be created or opened.
    #[error("the store: {0}")]
    Store(#[from] DiskError),
    /// A listener or a directory could not be made.
    #[error("{what}: {source}")]
    Io {
        /// What the harness was doing.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The cluster cannot do this with node `id` (it has no such node, or nothing to restart it
    /// from).
    #[error("node {id}: {why}")]
    Cluster {
        /// The node.
        id: NodeId,
        /// Why not.
        why: &'static str,
    },
}

/// A state machine the harness runs, and what a test may look at from outside the node.
pub trait Machine: StateMachine {
    /// A handle on the machine's state that stays with the test (say an `Arc` it shares), or
    /// `()` when the test looks only through the node's handle.
    type View: Clone + Send + Sync + 'static;

    /// The view of this machine's state.
    fn view(&self) -> Self::View;
}

/// The tasks a transport runs beside its node (TCP's acceptor, dialers and readers).
/// [`TransportTasks::stop`] ends them and waits until they are gone, so that the next run or a
/// restarted node starts on a quiet machine and a free port.
#[derive(Clone)]
pub struct TransportTasks(Arc<dyn Stoppable>);

impl TransportTasks {
    /// Stops the tasks and waits for them, once the node dropped its share of the transport (a
    /// stopped node has); with other shares alive, returns at once (the last drop cancels them).
    pub async fn stop(self) {
        self.0.stop().await;
    }
}

/// A transport whose tasks can be stopped and waited for.
trait Stoppable: Send + Sync {
    fn stop(self: Arc<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

impl<C: Connect> Stoppable for TcpTransport<C> {
    fn stop(self: Arc<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            if let Ok(transport) = Arc::try_unwrap(self) {
                transport.shutdown().await;
            }
        })
    }
}

/// What a [`Wiring`] hands a node: its transport, the receiver of the messages addressed to it,
/// and the transport's tasks if it runs any.
pub struct Wired<T> {
    /// The transport the node sends with.
    pub transport: T,
    /// Every message addressed to the node.
    pub inbound: mpsc::Receiver<Message>,
    /// The transport's tasks (`None`: it runs none).
    pub tasks: Option<TransportTasks>,
}

/// Connects a node to its peers.
pub trait Wiring {
    /// The transport the node sends with.
    type Transport: Transport + 'static;

    /// Connects node `id`.
    fn wire(self, id: NodeId) -> Result<Wired<Self::Transport>, HarnessError>;
}

/// The in-memory network: the node joins it (its messages are handed over as values).
impl Wiring for &MemNetwork {
    type Transport = MemTransport;

    fn wire(self, id: NodeId) -> Result<Wired<MemTransport>, HarnessError> {
        let (transport, inbound) = self.join(id)?;
        Ok(Wired { transport, inbound, tasks: None })
    }
}

/// raft-net's TCP transport over any listener and connector: tokio's (see [`Tcp::loopback`]) or
/// a simulated network's.
#[derive(Debug)]
pub struct Tcp<A, C = TokioConnector> {
    /// The cluster id the handshake checks.
    pub cluster_id: u64,
    /// Where the node accepts its peers.
    pub listener: A,
    /// How it dials them.
    pub connector: C,
    /// The peers' addresses (an entry for the node itself is left out).
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// The transport's options.
    pub options: TcpOptions,
}

impl<A: Accept> Tcp<A> {
    /// Over `listener` and tokio's connector, with every node of `addresses` as a peer.
    pub fn loopback(
        cluster_id: u64,
        listener: A,
        addresses: &BTreeMap<NodeId, SocketAddr>,
        options: TcpOptions,
    ) -> Self {
        Tcp { cluster_id, listener, connector: TokioConnector, peers: addresses.clone(), options }
    }
}

impl<A: Accept, C: Connect> Wiring for Tcp<A, C> {
    type Transport = Arc<TcpTransport<C>>;

    fn wire(mut self, id: NodeId) -> Result<Wired<Self::Transport>, HarnessError> {
        self.peers.remove(&id);
        let (transport, inbound) =
            TcpTransport::start(self.cluster_id, id, self.listener, self.connector, self.peers, self.options)?;
        let transport = Arc::new(transport);
        let tasks = TransportTasks(Arc::clone(&transport) as Arc<dyn Stoppable>);
        Ok(Wired { transport, inbound, tasks: Some(tasks) })
    }
}

/// [`Tcp`] with mutual TLS ([`TcpTransport::start_tls`]).
#[cfg(feature = "tls")]
#[derive(Debug)]
pub struct TlsTcp<A, C = TokioConnector> {
    /// The transport, as without TLS.
    pub tcp: Tcp<A, C>,
    /// The node's TLS configuration (its certificate must name the node).
    pub tls: raft_net::tls::TlsConfig,
}

#[cfg(feature = "tls")]
impl<A: Accept, C: Connect> Wiring for TlsTcp<A, C> {
    type Transport = Arc<TcpTransport<C>>;

    fn wire(self, id: NodeId) -> Result<Wired<Self::Transport>, HarnessError> {
        let Tcp { cluster_id, listener, connector, mut peers, options } = self.tcp;
        peers.remove(&id);
        let (transport, inbound) =
            TcpTransport::start_tls(cluster_id, id, listener, connector, peers, options, self.tls)?;
        let transport = Arc::new(transport);
        let tasks = TransportTasks(Arc::clone(&transport) as Arc<dyn Stoppable>);
        Ok(Wired { transport, inbound, tasks: Some(tasks) })
    }
}

/// A started node: its handle, and its transport's tasks.
pub struct Started<SM: StateMachine> {
    /// The node's handle.
    pub handle: NodeHandle<SM>,
    /// Its transport's tasks (`None`: the transport runs none). Dropping this share is fine: the
    /// node holds the transport as long as it runs.
    pub tasks: Option<TransportTasks>,
}

/// Starts node `config.id`: wires it to its peers first (the transport's tasks start), then runs
/// raft-net's driver over `storage` with `machine`.
pub fn start_node<SM, S, W>(config: NodeConfig, storage: S, wiring: W, machine: SM) -> Result<Started<SM>, HarnessError>
where
    SM: StateMachine,
    S: LogStore + Send + 'static,
    W: Wiring,
{
    let Wired { transport, inbound, tasks } = wiring.wire(config.id)?;
    let handle = raft_net::start(config, storage, transport, inbound, machine)?;
    Ok(Started { handle, tasks })
}

/// A running node, as a test keeps it.
pub struct Member<SM: Machine> {
    /// Its id.
    pub id: NodeId,
    /// Its handle.
    pub handle: NodeHandle<SM>,
    /// Its state machine's view.
    pub view: SM::View,
    tasks: Option<TransportTasks>,
}

impl<SM: Machine> Member<SM> {
    /// Starts node `config.id` with [`start_node`] and keeps its machine's view.
    pub fn start<S, W>(config: NodeConfig, storage: S, wiring: W, machine: SM) -> Result<Member<SM>, HarnessError>
    where
        S: LogStore + Send + 'static,
        W: Wiring,
    {
        let (id, view) = (config.id, machine.view());
        let Started { handle, tasks } = start_node(config, storage, wiring, machine)?;
        Ok(Member { id, handle, view, tasks })
    }

    /// Shuts the node down, then stops its transport's tasks and waits for them (see
    /// [`TransportTasks::stop`]).
    pub async fn shutdown(self) {
        self.handle.shutdown().await;
        drop(self.handle);
        if let Some(tasks) = self.tasks {
            tasks.stop().await;
        }
    }
}

impl<SM: Machine> Clone for Member<SM> {
    fn clone(&self) -> Self {
        Member { id: self.id, handle: self.handle.clone(), view: self.view.clone(), tasks: self.tasks.clone() }
    }
}
