//! The groups a node hosts, as its TCP readers see them: each registered group's inbound queue,
//! by id, and the node's counters.
//!
//! Registering and unregistering are rare; looking a group up happens for every message received.
//! So the map is copied on write (behind a mutex, as an `Arc`), and each reader keeps a
//! [`GroupView`]: the last copy it took and the generation it was taken at. A lookup costs one
//! atomic load to see whether the map changed, and a map lookup; no lock, no reference count.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use raft_core::{GroupId, Message};
use thiserror::Error;
use tokio::sync::mpsc;

use super::lock;

/// Why a group could not be registered on a [`TcpTransport`](crate::TcpTransport).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RegisterGroupError {
    /// The group is registered already (and its receiver still open); unregister it first.
    #[error("group {0} is already registered")]
    AlreadyRegistered(GroupId),
}

/// Counters of one [`TcpTransport`](crate::TcpTransport) since it started, over every peer and
/// every group. Read with [`TcpTransport::stats`](crate::TcpTransport::stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpStats {
    /// Outbound connections whose handshake the peer accepted (one per peer, and one more per
    /// reconnect): however many groups two nodes share, each dials the other once.
    pub connections_dialed: u64,
    /// Inbound connections whose handshake this node accepted.
    pub connections_accepted: u64,
    /// Batches written to peers, each with one write and one flush: the queued frames of every
    /// group for one peer (or a keepalive alone).
    pub batches_written: u64,
    /// Message frames written to peers, of every group.
    pub messages_written: u64,
    /// Node-level liveness pings put in a batch for a peer ([`PeerLink`](crate::PeerLink)); a
    /// batch whose write fails loses them, as it loses its messages.
    pub pings_written: u64,
    /// Node-level liveness pings received from peers.
    pub pings_received: u64,
    /// Messages received for a group this node does not host (never registered, unregistered, or
    /// whose receiver was dropped): dropped, and no group is created for them.
    pub unknown_group_drops: u64,
    /// Messages dropped because their group's inbound queue stayed full for
    /// `inbound_full_timeout` (see [`TcpOptions::inbound_full_timeout`](crate::TcpOptions)).
    pub inbound_full_drops: u64,
    /// Messages a [`Host`](crate::Host) round sent while it held its sends back (see its module
    /// docs) that were dropped when let go: the peer's queue full, the peer in reconnect backoff,
    /// or the transport closed. A send made outside a round is refused with a
    /// [`SendError`](crate::SendError) instead.
    pub held_drops: u64,
}

/// The atomic counters behind [`TcpStats`]. Readers touch them only to count a drop, never per
/// message delivered (an atomic add per message, on a line the dialers write too, would cost every
/// message of every group); dialers once per batch.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connections_dialed: AtomicU64,
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) batches_written: AtomicU64,
    pub(crate) messages_written: AtomicU64,
    pub(crate) pings_written: AtomicU64,
    pub(crate) pings_received: AtomicU64,
    pub(crate) unknown_group_drops: AtomicU64,
    pub(crate) inbound_full_drops: AtomicU64,
    pub(crate) held_drops: AtomicU64,
}

impl Counters {
    /// Adds `count` to `counter` (statistics only: no ordering with anything else).
    pub(crate) fn add(counter: &AtomicU64, count: u64) {
        counter.fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> TcpStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TcpStats {
            connections_dialed: read(&self.connections_dialed),
            connections_accepted: read(&self.connections_accepted),
            batches_written: read(&self.batches_written),
            messages_written: read(&self.messages_written),
            pings_written: read(&self.pings_written),
            pings_received: read(&self.pings_received),
            unknown_group_drops: read(&self.unknown_group_drops),
            inbound_full_drops: read(&self.inbound_full_drops),
            held_drops: read(&self.held_drops),
        }
    }
}

type GroupMap = BTreeMap<GroupId, mpsc::Sender<Message>>;

/// The registered groups' inbound queues.
#[derive(Debug, Default)]
pub(crate) struct GroupRegistry {
    /// Bumped (after the map is replaced) on every change.
    generation: AtomicU64,
    groups: Mutex<Arc<GroupMap>>,
}

impl GroupRegistry {
    /// Registers `group` with a fresh inbound queue of `capacity` messages; refuses a group that
    /// is registered and whose receiver is still open (a closed one is replaced).
    pub(crate) fn register(
        &self,
        group: GroupId,
        capacity: usize,
    ) -> Result<mpsc::Receiver<Message>, RegisterGroupError> {
        let (sender, receiver) = mpsc::channel(capacity);
        self.change(|groups| match groups.get(&group) {
            Some(existing) if !existing.is_closed() => Err(RegisterGroupError::AlreadyRegistered(group)),
            _ => {
                groups.insert(group, sender);
                Ok(receiver)
            }
        })
    }

    /// Registers `group` with a fresh inbound queue of `capacity` messages, replacing any earlier
    /// registration (for a registry that is known not to have it).
    pub(crate) fn open(&self, group: GroupId, capacity: usize) -> mpsc::Receiver<Message> {
        let (sender, receiver) = mpsc::channel(capacity);
        self.change(|groups| groups.insert(group, sender));
        receiver
    }

    /// Unregisters `group`; returns whether it was registered.
    pub(crate) fn unregister(&self, group: GroupId) -> bool {
        self.change(|groups| groups.remove(&group).is_some())
    }

    /// Unregisters every group (their receivers end once the readers let go of them too).
    pub(crate) fn clear(&self) {
        self.change(BTreeMap::clear);
    }

    /// The registered groups, in order.
    pub(crate) fn ids(&self) -> Vec<GroupId> {
        lock(&self.groups).keys().copied().collect()
    }

    /// A reader's view of the registry, current as of now.
    pub(crate) fn view(&self) -> GroupView<'_> {
        let generation = self.generation.load(Ordering::Acquire);
        GroupView { registry: self, generation, groups: Arc::clone(&lock(&self.groups)) }
    }

    /// Applies `change` to a copy of the map and publishes the copy. The lock is held throughout,
    /// so concurrent changes do not lose each other's work.
    fn change<T>(&self, change: impl FnOnce(&mut GroupMap) -> T) -> T {
        let mut groups = lock(&self.groups);
        let mut copy = GroupMap::clone(&groups);
        let result = change(&mut copy);
        *groups = Arc::new(copy);
        // After the new map is in place: a reader that sees the new generation takes the new map.
        self.generation.fetch_add(1, Ordering::Release);
        result
    }
}

/// One reader's copy of the registry, refreshed when the registry changed.
pub(crate) struct GroupView<'a> {
    registry: &'a GroupRegistry,
    generation: u64,
    groups: Arc<GroupMap>,
}

impl GroupView<'_> {
    /// The inbound queue of `group`, as registered now, if it is.
    pub(crate) fn get(&mut self, group: GroupId) -> Option<&mpsc::Sender<Message>> {
        if self.registry.generation.load(Ordering::Acquire) != self.generation {
            *self = self.registry.view();
        }
        self.groups.get(&group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_sees_registrations_and_unregistrations_made_after_it() {
        let registry = GroupRegistry::default();
        let mut view = registry.view();
        assert!(view.get(GroupId(1)).is_none());
        let _receiver = registry.register(GroupId(1), 4).expect("a new group");
        assert!(view.get(GroupId(1)).is_some());
        assert_eq!(
            registry.register(GroupId(1), 4).map(|_| ()),
            Err(RegisterGroupError::AlreadyRegistered(GroupId(1)))
        );
        assert!(registry.unregister(GroupId(1)));
        assert!(!registry.unregister(GroupId(1)));
        assert!(view.get(GroupId(1)).is_none());
    }

    #[test]
    fn a_group_whose_receiver_was_dropped_can_be_registered_again() {
        let registry = GroupRegistry::default();
        drop(registry.register(GroupId(3), 4).expect("a new group"));
        let mut receiver = registry.register(GroupId(3), 4).expect("the old receiver is gone");
        assert_eq!(registry.ids(), [GroupId(3)]);
        let message = Message {
            from: raft_core::NodeId(1),
            to: raft_core::NodeId(2),
            term: raft_core::Term(1),
            body: raft_core::MessageBody::HeartbeatResponse { round: 0 },
        };
        registry.view().get(GroupId(3)).expect("registered").try_send(message.clone()).expect("room");
        assert_eq!(receiver.try_recv(), Ok(message));
        registry.clear();
        assert!(registry.ids().is_empty());
    }
}
