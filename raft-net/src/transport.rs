//! The contract between a node's driver and the network.

use raft_core::{Message, NodeId};
use thiserror::Error;

/// Carries one Raft group's outgoing messages from one node to its peers (the same group on
/// them). A node that hosts many groups has one implementation of this per group, all sharing the
/// node's transport: `TcpTransport::register_group`, `MemNetwork::join_group`.
///
/// Incoming messages do not pass through this trait: each transport hands out a bounded
/// `tokio::sync::mpsc::Receiver<Message>` per group when the group joins it, which the group's
/// driver `select!`s on.
///
/// Delivery is best effort, as Raft expects: a message may be dropped (queue full, peer down,
/// connection lost with the message in flight, a group the receiving node does not host) but is
/// never altered, duplicated by the transport, or delivered to the wrong node or the wrong group.
/// Messages of one group from one node to one peer arrive in the order they were sent (over TCP:
/// within one connection; a reconnect may in rare races let a message from the old connection
/// land after one from the new, which Raft tolerates like any reordering).
pub trait Transport: Send + Sync {
    /// The node this transport sends for.
    fn local_id(&self) -> NodeId;

    /// Queues `message` for `message.to`. Never blocks or awaits. On error the message is dropped;
    /// on [`SendError::Unreachable`] the driver should tell the core (`report_unreachable`).
    fn send(&self, message: Message) -> Result<(), SendError>;
}

/// A shared transport: lets an application keep a handle on a transport it gave to a node (to
/// shut a [`crate::TcpTransport`] down and wait for its tasks, say).
impl<T: Transport + ?Sized> Transport for std::sync::Arc<T> {
    fn local_id(&self) -> NodeId {
        (**self).local_id()
    }

    fn send(&self, message: Message) -> Result<(), SendError> {
        (**self).send(message)
    }
}

/// Why a message was not queued. The message is dropped in every case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SendError {
    /// The receiver is not one of this node's peers.
    #[error("node {0} is not a peer")]
    UnknownPeer(NodeId),
    /// The queue to the receiver is full.
    #[error("the queue to node {0} is full")]
    QueueFull(NodeId),
    /// The receiver is currently disconnected (down, partitioned, or in reconnect backoff).
    #[error("node {0} is unreachable")]
    Unreachable(NodeId),
    /// The message's `from` is not this transport's node (a bug in the caller).
    #[error("the message claims to come from node {0}, not from this node")]
    ForeignSender(NodeId),
    /// The transport has shut down.
    #[error("the transport is closed")]
    Closed,
}

/// A node's link to its peer nodes for node-level liveness (`raft_core::liveness`): what a
/// [`Host`](crate::Host) that runs quiet groups needs of the node's transport. One per node,
/// whatever the number of groups: the pings it sends are node-level frames, not messages of a
/// group. [`TcpTransport::peer_link`](crate::TcpTransport::peer_link) gives one.
pub trait PeerLink: Send + Sync + 'static {
    /// Queues a liveness ping that carries `incarnation` (a number the sending node draws
    /// afresh at every start) for `peer`. Best effort, like every message: never blocks.
    fn ping(&self, peer: NodeId, incarnation: u64) -> Result<(), SendError>;

    /// Every peer node of this transport, with what was heard from it since the last call (one
    /// consumer: the host that watches the peers).
    fn take_signals(&self) -> Vec<(NodeId, PeerSignals)>;
}

/// What a [`PeerLink`] heard from one peer node since it was last asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerSignals {
    /// The peer's node showed it is alive: a message of any of its groups, or a ping, arrived
    /// (a transport's own keepalives do not count: a node whose groups are gone but whose
    /// transport runs on is not alive as far as the groups are concerned).
    pub heard: bool,
    /// The incarnation the latest liveness ping from the peer carried, if one arrived.
    pub ping: Option<u64>,
}

impl PeerSignals {
    /// Signals with these values (for a [`PeerLink`] outside this crate).
    pub fn new(heard: bool, ping: Option<u64>) -> Self {
        PeerSignals { heard, ping }
    }
}

/// What runs when a thread's held sends are let go.
type Releases = Vec<Box<dyn FnOnce()>>;

thread_local! {
    /// While sends are held on this thread: what to run when they are let go (see
    /// [`SendHold`]).
    static HELD: std::cell::RefCell<Option<Releases>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's sends held back, and lets them go when `f` returns (or unwinds):
/// see [`SendHold`].
#[cfg(test)]
pub(crate) fn hold_sends<R>(f: impl FnOnce() -> R) -> R {
    let _hold = SendHold::begin();
    f()
}

/// Holds back this thread's sends while it lives, and lets them go, batched, when dropped (also
/// while unwinding) or when [`SendHold::release_if_held_for`] finds them held long enough. A
/// transport that batches ([`crate::TcpTransport`]) keeps the messages sent meanwhile per peer
/// and, when they are let go, queues them peer by peer in a tight loop, so that the peer's
/// writer, woken by the first, finds the rest queued and writes them in one go rather than
/// racing the sender for them; other transports send at once as always. A [`Host`](crate::Host) holds the sends of each phase of a round of several groups:
/// the messages of the round's groups leave together at the end of the phase (before the round's
/// write for those that may leave before it), or at the first group boundary once they have
/// waited `SENDS_HELD_MAX`, and before any step that waits ([`let_held_sends_go`]). A hold begun
/// while another is held holds nothing more.
pub(crate) struct SendHold {
    outermost: bool,
    /// Not `Send`: the hold is this thread's.
    _thread: std::marker::PhantomData<*const ()>,
    /// When the sends held now began to be held (the tokio clock: under turmoil, the simulated
    /// one, which stands still within a round, so replays do not depend on the real clock).
    since: tokio::time::Instant,
}

impl SendHold {
    /// Starts holding this thread's sends.
    pub(crate) fn begin() -> Self {
        let outermost = HELD.with(|held| {
            let mut held = held.borrow_mut();
            let outermost = held.is_none();
            if outermost {
                *held = Some(Vec::new());
            }
            outermost
        });
        SendHold { outermost, _thread: std::marker::PhantomData, since: tokio::time::Instant::now() }
    }

    /// Lets the held sends go and holds again if they have been held for `max` or longer: a
    /// group's message waits for the other groups of a round for about that long at most.
    pub(crate) fn release_if_held_for(&mut self, max: std::time::Duration) {
        if self.outermost && self.since.elapsed() >= max {
            let_held_sends_go();
            self.since = tokio::time::Instant::now();
        }
    }
}

impl Drop for SendHold {
    fn drop(&mut self) {
        if self.outermost {
            release_held();
        }
    }
}

/// Lets the sends this thread holds go now and goes on holding (nothing if it holds none): for a
/// step about to wait (a full apply queue, a snapshot read), so that what it already sent does
/// not wait with it.
pub(crate) fn let_held_sends_go() {
    if sends_held() {
        release_held();
        HELD.with(|held| *held.borrow_mut() = Some(Vec::new()));
    }
}

/// Lets this thread's held sends go and stops holding: taken out first, so a release that sends
/// again sends at once.
fn release_held() {
    let releases = HELD.with(|held| held.borrow_mut().take()).unwrap_or_default();
    for release in releases {
        release();
    }
}

/// Whether sends are held on this thread (see [`SendHold`]): if so, `release` is registered to
/// run when they are let go and `true` is returned; if not, `release` is dropped and `false`
/// returned (send at once).
pub(crate) fn on_release(release: impl FnOnce() + 'static) -> bool {
    HELD.with(|held| match held.borrow_mut().as_mut() {
        Some(releases) => {
            releases.push(Box::new(release));
            true
        }
        None => false,
    })
}

/// Whether sends are held on this thread right now (see [`SendHold`]).
pub(crate) fn sends_held() -> bool {
    HELD.with(|held| held.borrow().is_some())
}
