//! The replicated state machine: a map of keys to values, plus the address book of members that
//! joined at runtime (replicated, so every node can reach them and redirect clients to them).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

/// The address book shared by the state machine, the HTTP server and the transport. It keeps a
/// copy of itself in a file of the node's data directory: a node that joined at runtime has no
/// `--peers`, and on a restart its log may not say where the others listen before it has heard
/// from a leader, which the transport (refusing unknown peers) would never let happen.
#[derive(Clone, Debug)]
pub struct PeerBook {
    peers: Arc<Mutex<BTreeMap<NodeId, PeerAddresses>>>,
    transport: Arc<TcpTransport>,
    own: NodeId,
    file: PathBuf,
}

/// Why the saved address book could not be read.
#[derive(Debug, Error)]
pub enum PeerFileError {
    /// Reading failed.
    #[error("reading {0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// The file is not a list of peers.
    #[error("{0} is not a list of peers: {1}")]
    Decode(PathBuf, #[source] serde_json::Error),
}

impl PeerBook {
    /// The name of the saved copy in the data directory.
    pub const FILE_NAME: &str = "raft-kv-peers.json";

    /// A book of the peers saved in `dir`, then the `initial` ones (which win), that keeps
    /// `transport` (of node `own`) up to date.
    pub fn open(
        own: NodeId,
        initial: &[PeerAddresses],
        transport: Arc<TcpTransport>,
        dir: &Path,
    ) -> Result<Self, PeerFileError> {
        let file = dir.join(Self::FILE_NAME);
        let saved: Vec<PeerAddresses> = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| PeerFileError::Decode(file.clone(), error))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(PeerFileError::Io(file, error)),
        };
        let mut peers = BTreeMap::new();
        for peer in saved.iter().chain(initial) {
            if peer.id != own {
                transport.add_peer(peer.id, peer.raft);
            }
            peers.insert(peer.id, *peer);
        }
        // One save at start, and only when the initial peers changed what was saved.
        let unchanged = saved.len() == peers.len() && saved.iter().all(|peer| peers.get(&peer.id) == Some(peer));
        let book = PeerBook { peers: Arc::new(Mutex::new(peers)), transport, own, file };
        if !unchanged && let Err(error) = book.save(&book.lock()) {
            eprintln!("node {own}: saving {}: {error}", book.file.display());
        }
        Ok(book)
    }

    /// Adds or replaces `peer`, in the book, the transport and the saved copy.
    pub fn add(&self, peer: PeerAddresses) {
        if peer.id != self.own {
            self.transport.add_peer(peer.id, peer.raft);
        }
        let mut peers = self.lock();
        if peers.insert(peer.id, peer) != Some(peer) {
            // Under the lock, so that saves happen in the order of the changes.
            if let Err(error) = self.save(&peers) {
                eprintln!("node {}: saving {}: {error}", self.own, self.file.display());
            }
        }
    }

    /// Replaces the saved copy atomically (a crash leaves the old one or the new one).
    fn save(&self, peers: &BTreeMap<NodeId, PeerAddresses>) -> std::io::Result<()> {
        let list: Vec<&PeerAddresses> = peers.values().collect();
        let bytes = serde_json::to_vec_pretty(&list).map_err(std::io::Error::other)?;
        let temp = self.file.with_extension("json.tmp");
        let mut file = std::fs::File::create(&temp)?;
        std::io::Write::write_all(&mut file, &bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, &self.file)
    }

    /// Where `id` listens, if known.
    pub fn get(&self, id: NodeId) -> Option<PeerAddresses> {
        self.lock().get(&id).copied()
    }

    /// Every known peer.
    pub fn all(&self) -> BTreeMap<NodeId, PeerAddresses> {
        self.lock().clone()
    }

    /// Critical sections leave the map whole: a poisoned lock holds a consistent map.
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

    /// The members registered through the log, with where they listen.
    pub fn registered(&self) -> &BTreeMap<NodeId, PeerAddresses> {
        &self.registered
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

#[cfg(test)]
mod peer_book_tests {
    use raft_net::{TcpOptions, TokioConnector};

    use super::*;

    fn peer(id: u64) -> PeerAddresses {
        let port = 20_000 + id as u16;
        PeerAddresses {
            id: NodeId(id),
            raft: SocketAddr::from(([127, 0, 0, 1], port)),
            http: SocketAddr::from(([127, 0, 0, 1], port + 100)),
        }
    }

    async fn transport() -> Arc<TcpTransport> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (transport, _inbound) =
            TcpTransport::start(1, NodeId(1), listener, TokioConnector, BTreeMap::new(), TcpOptions::default())
                .expect("start");
        Arc::new(transport)
    }

    /// Opening saves the book once if the initial peers add to it, and not at all when they
    /// change nothing (it used to rewrite the file once per peer at every start).
    #[tokio::test]
    async fn opening_saves_only_what_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(PeerBook::FILE_NAME);
        let initial = [peer(1), peer(2), peer(3)];
        let book = PeerBook::open(NodeId(1), &initial, transport().await, dir.path()).expect("open");
        assert_eq!(book.all().len(), 3);
        let saved: Vec<PeerAddresses> = serde_json::from_slice(&std::fs::read(&file).expect("saved")).expect("json");
        assert_eq!(saved, initial);

        // The same peers in another layout: a start that changes nothing leaves the file alone.
        let compact = serde_json::to_vec(&initial).expect("json");
        std::fs::write(&file, &compact).expect("write");
        let book = PeerBook::open(NodeId(1), &initial, transport().await, dir.path()).expect("reopen");
        assert_eq!(book.all().len(), 3);
        assert_eq!(std::fs::read(&file).expect("read"), compact, "nothing changed, nothing written");

        // A new peer is saved, with the old ones.
        let book = PeerBook::open(NodeId(1), &[peer(4)], transport().await, dir.path()).expect("reopen");
        assert_eq!(book.get(NodeId(4)), Some(peer(4)));
        let saved: Vec<PeerAddresses> = serde_json::from_slice(&std::fs::read(&file).expect("saved")).expect("json");
        assert_eq!(saved, [peer(1), peer(2), peer(3), peer(4)]);
    }
}
