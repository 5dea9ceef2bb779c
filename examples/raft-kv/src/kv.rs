//! The replicated state machine: a map of keys to values, plus the address book of members that
//! joined at runtime (replicated, so every node can reach them and redirect clients to them).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use raft_core::{Index, NodeId};
use raft_net::{StateMachine, TcpTransport};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The longest key, in bytes.
pub const KEY_BYTES_MAX: usize = 1024;
/// The longest value, in bytes.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;

/// A command in the log (postcard-encoded).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Command {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Bytes,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: String,
    },
    /// Sets `key` to `value` (or removes it when `None`) if it currently holds `expected`.
    Cas {
        /// The key.
        key: String,
        /// The value expected now (`None`: absent).
        expected: Option<Bytes>,
        /// The new value (`None`: remove).
        value: Option<Bytes>,
    },
    /// Records where a member that joins at runtime listens.
    Register(PeerAddresses),
}

/// Where one member listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddresses {
    /// The member.
    pub id: NodeId,
    /// Its Raft (TCP transport) address.
    pub raft: SocketAddr,
    /// Its HTTP address.
    pub http: SocketAddr,
}

/// What applying a command answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// A put or a registration was applied.
    Done,
    /// A delete was applied; whether the key existed.
    Deleted(bool),
    /// A compare-and-swap: whether it swapped, and the value found.
    Cas {
        /// Whether the value matched and was replaced.
        swapped: bool,
        /// The value found before the command.
        current: Option<Bytes>,
    },
    /// The command did not decode (a bug of a client of the log; nothing changed).
    Invalid,
}

/// A snapshot that does not decode.
#[derive(Debug, Error)]
#[error("snapshot does not decode: {0}")]
pub struct SnapshotDecodeError(#[from] postcard::Error);

/// The address book shared by the state machine, the HTTP server and the transport.
#[derive(Clone, Debug)]
pub struct PeerBook {
    peers: Arc<Mutex<BTreeMap<NodeId, PeerAddresses>>>,
    transport: Arc<TcpTransport>,
    own: NodeId,
}

impl PeerBook {
    /// A book of the `initial` peers, which keeps `transport` (of node `own`) up to date.
    pub fn new(own: NodeId, initial: &[PeerAddresses], transport: Arc<TcpTransport>) -> Self {
        let peers = initial.iter().map(|peer| (peer.id, *peer)).collect();
        PeerBook { peers: Arc::new(Mutex::new(peers)), transport, own }
    }

    /// Adds or replaces `peer`, in the book and the transport.
    pub fn add(&self, peer: PeerAddresses) {
        if peer.id != self.own {
            self.transport.add_peer(peer.id, peer.raft);
        }
        self.lock().insert(peer.id, peer);
    }

    /// Where `id` listens, if known.
    pub fn get(&self, id: NodeId) -> Option<PeerAddresses> {
        self.lock().get(&id).copied()
    }

    /// Every known peer.
    pub fn all(&self) -> BTreeMap<NodeId, PeerAddresses> {
        self.lock().clone()
    }

    /// Critical sections are single map operations: a poisoned lock holds a consistent map.
    fn lock(&self) -> MutexGuard<'_, BTreeMap<NodeId, PeerAddresses>> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The key-value state machine.
#[derive(Debug)]
pub struct Kv {
    map: BTreeMap<String, Bytes>,
    registered: BTreeMap<NodeId, PeerAddresses>,
    book: PeerBook,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    map: BTreeMap<String, Bytes>,
    registered: BTreeMap<NodeId, PeerAddresses>,
}

impl Kv {
    /// An empty map that records registrations in `book`.
    pub fn new(book: PeerBook) -> Self {
        Kv { map: BTreeMap::new(), registered: BTreeMap::new(), book }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        self.map.get(key).cloned()
    }

    /// The number of keys.
    pub fn key_count(&self) -> usize {
        self.map.len()
    }

    fn execute(&mut self, command: Command) -> Response {
        match command {
            Command::Put { key, value } => {
                self.map.insert(key, value);
                Response::Done
            }
            Command::Delete { key } => Response::Deleted(self.map.remove(&key).is_some()),
            Command::Cas { key, expected, value } => {
                let current = self.map.get(&key).cloned();
                let swapped = current == expected;
                if swapped {
                    match value {
                        Some(value) => self.map.insert(key, value),
                        None => self.map.remove(&key),
                    };
                }
                Response::Cas { swapped, current }
            }
            Command::Register(peer) => {
                self.registered.insert(peer.id, peer);
                self.book.add(peer);
                Response::Done
            }
        }
    }
}

impl StateMachine for Kv {
    type Response = Response;
    type RestoreError = SnapshotDecodeError;

    fn apply(&mut self, _index: Index, command: &Bytes) -> Response {
        match postcard::from_bytes::<Command>(command) {
            Ok(command) => self.execute(command),
            Err(_) => Response::Invalid,
        }
    }

    fn snapshot(&self) -> Bytes {
        let snapshot = Snapshot { map: self.map.clone(), registered: self.registered.clone() };
        // Maps of strings, bytes and addresses always encode.
        Bytes::from(postcard::to_allocvec(&snapshot).expect("a snapshot encodes"))
    }

    fn restore(&mut self, snapshot: Bytes) -> Result<(), SnapshotDecodeError> {
        let snapshot: Snapshot = postcard::from_bytes(&snapshot)?;
        for peer in snapshot.registered.values() {
            self.book.add(*peer);
        }
        self.map = snapshot.map;
        self.registered = snapshot.registered;
        Ok(())
    }
}

/// Encodes a command for the log.
pub fn encode(command: &Command) -> Bytes {
    // Strings, bytes and addresses always encode.
    Bytes::from(postcard::to_allocvec(command).expect("a command encodes"))
}
