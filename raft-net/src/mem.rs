//! An in-memory network for tests and benchmarks: no sockets, no serialization, no tasks.
//!
//! [`MemTransport::send`] puts the message straight into the receiver's bounded inbound channel,
//! so the order of deliveries is exactly the order of `send` calls (runs driven from one thread
//! are deterministic). Faults are switched on and off through the shared [`MemNetwork`]; each
//! switch is atomic with respect to every send (sends share a read lock on the network's state,
//! a switch takes it exclusively).
//!
//! Like the TCP transport, the network has a group dimension: a node joins groups
//! ([`MemNetwork::join_group`]; [`MemNetwork::join`] joins [`GroupId::DEFAULT`]), each with its
//! own transport and inbound channel, while faults, crashes and peers are the node's. A message for
//! a group the receiving node does not host is dropped and counted
//! ([`MemNetwork::unknown_group_drops`]), never delivered elsewhere and never the start of a group.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use raft_core::{GroupId, Message, NodeId};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tracing::debug;

use crate::transport::{SendError, Transport};

/// The default capacity of each node's inbound channel, in messages.
pub const MEM_INBOUND_QUEUE_MESSAGES_MAX_DEFAULT: NonZeroUsize = NonZeroUsize::new(1024).expect("1024 is not zero");

/// A hub connecting the nodes of one process. Cloning gives another handle to the same network.
#[derive(Clone, Debug)]
pub struct MemNetwork {
    state: Arc<RwLock<NetworkState>>,
}

/// One node's handle for sending one group's messages into a [`MemNetwork`].
#[derive(Clone, Debug)]
pub struct MemTransport {
    network: MemNetwork,
    local_id: NodeId,
    group: GroupId,
    /// The join this handle came from: a handle from before a restart, or from before the group
    /// was left and joined again, sends nothing.
    join: u64,
}

/// Why a node could not join a group of a [`MemNetwork`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The node is up and in the group already; [`MemNetwork::remove`] it first to model a
    /// restart (or [`MemNetwork::leave_group`] the group).
    #[error("node {0} has already joined")]
    AlreadyJoined(NodeId),
}

#[derive(Debug)]
struct NetworkState {
    inbound_queue_messages_max: NonZeroUsize,
    /// Every node that ever joined. A removed (crashed) node keeps its entry, without groups.
    nodes: BTreeMap<NodeId, Node>,
    /// Directed links that drop everything: (from, to).
    cut_links: BTreeSet<(NodeId, NodeId)>,
    /// Nodes cut off from everyone.
    isolated: BTreeSet<NodeId>,
    /// Numbers the joins, so a handle from before a restart cannot send as the new incarnation.
    joins: u64,
}

#[derive(Debug, Default)]
struct Node {
    /// Joined a group since it was last removed (or ever).
    up: bool,
    /// The groups it hosts, each with the number of its join and its inbound channel.
    groups: BTreeMap<GroupId, (u64, mpsc::Sender<Message>)>,
    /// Messages sent to it for a group it does not host (counted under the read lock).
    unknown_group_drops: AtomicU64,
}

impl Default for MemNetwork {
    fn default() -> Self {
        MemNetwork::new(MEM_INBOUND_QUEUE_MESSAGES_MAX_DEFAULT)
    }
}

impl MemNetwork {
    /// An empty network whose nodes each get an inbound channel of `inbound_queue_messages_max`.
    pub fn new(inbound_queue_messages_max: NonZeroUsize) -> Self {
        let state = NetworkState {
            inbound_queue_messages_max,
            nodes: BTreeMap::new(),
            cut_links: BTreeSet::new(),
            isolated: BTreeSet::new(),
            joins: 0,
        };
        MemNetwork { state: Arc::new(RwLock::new(state)) }
    }

    /// Adds `node_id` (or brings a removed node back, as after a restart) in the one group of a
    /// node that runs one, [`GroupId::DEFAULT`]: its transport and the receiving end of its
    /// inbound channel. Partitions involving the node stay as they were. Same as
    /// [`MemNetwork::join_group`] with [`GroupId::DEFAULT`].
    pub fn join(&self, node_id: NodeId) -> Result<(MemTransport, mpsc::Receiver<Message>), JoinError> {
        self.join_group(node_id, GroupId::DEFAULT)
    }

    /// Adds `group` to node `node_id`, bringing the node up if it is not (first join, or after
    /// [`MemNetwork::remove`]): the group's transport on the node and the receiving end of the
    /// group's inbound channel there. Partitions involving the node stay as they were.
    pub fn join_group(
        &self,
        node_id: NodeId,
        group: GroupId,
    ) -> Result<(MemTransport, mpsc::Receiver<Message>), JoinError> {
        let mut state = self.lock();
        state.joins += 1;
        let join = state.joins;
        let (inbox, receiver) = mpsc::channel(state.inbound_queue_messages_max.get());
        let node = state.nodes.entry(node_id).or_default();
        if node.up && node.groups.contains_key(&group) {
            return Err(JoinError::AlreadyJoined(node_id));
        }
        node.up = true;
        node.groups.insert(group, (join, inbox));
        let transport = MemTransport { network: self.clone(), local_id: node_id, group, join };
        Ok((transport, receiver))
    }

    /// Takes `group` off node `node_id`: the group's transports there return
    /// [`SendError::Closed`], and messages for it are dropped and counted as for any group the
    /// node does not host. The node and its other groups stay up. Returns whether it hosted it.
    pub fn leave_group(&self, node_id: NodeId, group: GroupId) -> bool {
        let mut state = self.lock();
        state.nodes.get_mut(&node_id).is_some_and(|node| node.groups.remove(&group).is_some())
    }

    /// The groups node `node_id` hosts, in order (none while it is removed).
    pub fn groups(&self, node_id: NodeId) -> Vec<GroupId> {
        self.read().nodes.get(&node_id).map(|node| node.groups.keys().copied().collect()).unwrap_or_default()
    }

    /// How many messages sent to node `node_id` were dropped because it does not host their group.
    pub fn unknown_group_drops(&self, node_id: NodeId) -> u64 {
        self.read().nodes.get(&node_id).map_or(0, |node| node.unknown_group_drops.load(Ordering::Relaxed))
    }

    /// Crashes `node_id`: every group's transport handles on it return [`SendError::Closed`],
    /// and messages to it fail with [`SendError::Unreachable`] until it joins again. Returns
    /// whether it was up.
    pub fn remove(&self, node_id: NodeId) -> bool {
        let mut state = self.lock();
        let Some(node) = state.nodes.get_mut(&node_id) else {
            return false;
        };
        node.groups.clear();
        std::mem::replace(&mut node.up, false)
    }

    /// Cuts the link between `a` and `b` in both directions.
    pub fn disconnect(&self, a: NodeId, b: NodeId) {
        let mut state = self.lock();
        state.cut_links.insert((a, b));
        state.cut_links.insert((b, a));
    }

    /// Cuts the link from `from` to `to` only (an asymmetric partition).
    pub fn disconnect_one_way(&self, from: NodeId, to: NodeId) {
        self.lock().cut_links.insert((from, to));
    }

    /// Restores the link between `a` and `b` in both directions.
    pub fn reconnect(&self, a: NodeId, b: NodeId) {
        let mut state = self.lock();
        state.cut_links.remove(&(a, b));
        state.cut_links.remove(&(b, a));
    }

    /// Cuts `node_id` off from every other node.
    pub fn isolate(&self, node_id: NodeId) {
        self.lock().isolated.insert(node_id);
    }

    /// Undoes [`MemNetwork::isolate`] for `node_id` (links cut one by one stay cut).
    pub fn heal(&self, node_id: NodeId) {
        self.lock().isolated.remove(&node_id);
    }

    /// Restores every link and ends every isolation.
    pub fn heal_all(&self) {
        let mut state = self.lock();
        state.cut_links.clear();
        state.isolated.clear();
    }

    /// Whether a message from `from` to `to` would currently pass the partitions.
    pub fn is_link_up(&self, from: NodeId, to: NodeId) -> bool {
        self.read().is_link_up(from, to)
    }

    fn lock(&self) -> RwLockWriteGuard<'_, NetworkState> {
        // Every critical section is a single insert, remove or try_send, so a panic while the lock
        // was held cannot have left the state half-changed: using it after poisoning is safe.
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends only read the state, so they share the lock: the nodes' core threads sending at
    /// the same time do not wait for each other (one exclusive lock for every send was contended
    /// under load, and a contended lock puts a thread to sleep).
    fn read(&self) -> RwLockReadGuard<'_, NetworkState> {
        // As in `lock`: no critical section can leave the state half-changed.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }
}

impl NetworkState {
    fn is_link_up(&self, from: NodeId, to: NodeId) -> bool {
        !self.isolated.contains(&from) && !self.isolated.contains(&to) && !self.cut_links.contains(&(from, to))
    }
}

impl MemTransport {
    /// The group this transport sends for.
    pub fn group(&self) -> GroupId {
        self.group
    }
}

impl Transport for MemTransport {
    fn local_id(&self) -> NodeId {
        self.local_id
    }

    fn send(&self, message: Message) -> Result<(), SendError> {
        if message.from != self.local_id {
            return Err(SendError::ForeignSender(message.from));
        }
        let to = message.to;
        let state = self.network.read();
        let is_current = state
            .nodes
            .get(&self.local_id)
            .is_some_and(|node| node.up && node.groups.get(&self.group).is_some_and(|(join, _)| *join == self.join));
        if !is_current {
            return Err(SendError::Closed);
        }
        let Some(node) = state.nodes.get(&to) else {
            return Err(SendError::UnknownPeer(to));
        };
        if !node.up || !state.is_link_up(self.local_id, to) {
            return Err(SendError::Unreachable(to));
        }
        let Some((_, inbox)) = node.groups.get(&self.group) else {
            // As over TCP: the network drops it, and the sender cannot tell.
            node.unknown_group_drops.fetch_add(1, Ordering::Relaxed);
            debug!(peer = %to, group = %self.group, "dropped a message for a group the node does not host");
            return Ok(());
        };
        inbox.try_send(message).map_err(|error| match error {
            TrySendError::Full(_) => SendError::QueueFull(to),
            // The receiving driver dropped its channel: as good as crashed.
            TrySendError::Closed(_) => SendError::Unreachable(to),
        })
    }
}
