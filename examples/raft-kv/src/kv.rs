//! The replicated state machine: a map of keys to values, plus the address book of members that
//! joined at runtime (replicated, so every node can reach them and redirect clients to them).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use raft_core::{Index, NodeId, Options, OptionsError};
use raft_net::{StateMachine, TcpTransport};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The longest key, in bytes.
pub const KEY_BYTES_MAX: usize = 1024;
/// The longest value, in bytes.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;

/// The largest message: one value plus room for its key and encoding.
pub const MESSAGE_BYTES_MAX: u64 = 2 * VALUE_BYTES_MAX as u64;
/// Snapshot the map every this many applied entries.
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 10_000;

/// The Raft options of every group raft-kv runs: pre-vote, check-quorum and lease reads on, and
/// messages and apply batches sized for the largest value.
pub fn raft_options() -> Result<Options, OptionsError> {
    Options::builder()
        .election_ticks(10)
        .heartbeat_ticks(2)
        .pre_vote(true)
        .check_quorum(true)
        .lease_reads(true)
        .message_bytes_max(MESSAGE_BYTES_MAX)
        .apply_bytes_max(4 * MESSAGE_BYTES_MAX)
        .build()
}

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

impl Command {
    /// Whether its key is at most [`KEY_BYTES_MAX`] bytes and its values at most
    /// [`VALUE_BYTES_MAX`] (what a snapshot record can hold).
    fn within_limits(&self) -> bool {
        let value_fits = |value: &Option<Bytes>| value.as_ref().is_none_or(|value| value.len() <= VALUE_BYTES_MAX);
        match self {
            Command::Put { key, value } => key.len() <= KEY_BYTES_MAX && value.len() <= VALUE_BYTES_MAX,
            Command::Delete { key } => key.len() <= KEY_BYTES_MAX,
            Command::Cas { key, expected, value } => {
                key.len() <= KEY_BYTES_MAX && value_fits(expected) && value_fits(value)
            }
            Command::Register(_) => true,
        }
    }
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
#[non_exhaustive]
pub enum SnapshotDecodeError {
    /// Reading the snapshot failed (the node reports a failure of its store as such).
    #[error("snapshot read failed: {0}")]
    Read(#[from] std::io::Error),
    /// A record does not decode.
    #[error("snapshot record does not decode: {0}")]
    Record(#[from] postcard::Error),
    /// A record claims more bytes than any record can have.
    #[error("snapshot record of {0} bytes exceeds the limit")]
    RecordTooLarge(u32),
    /// The counts of the closing record do not match the records before it. (A snapshot cut
    /// short fails to read: [`SnapshotDecodeError::Read`].)
    #[error("snapshot incomplete")]
    Incomplete,
}

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
            tracing::warn!(node = own.0, "saving {}: {error}", book.file.display());
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
                tracing::warn!(node = self.own.0, "saving {}: {error}", self.file.display());
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
    /// Where registrations go besides the map (`None`: a shard's map, whose node keeps its
    /// address book in the routing table).
    book: Option<PeerBook>,
}

/// The most bytes of one snapshot record: a key and a value at their limits, and their framing.
const SNAPSHOT_RECORD_BYTES_MAX: usize = KEY_BYTES_MAX + VALUE_BYTES_MAX + 64;

/// A snapshot is a sequence of records, each `[length: u32 LE][postcard]`, one per key and one
/// per registered peer, closed by `End` with their counts: written and read one record at a time,
/// so a snapshot never sits whole in memory (only the map does).
#[derive(Serialize)]
enum RecordRef<'a> {
    Entry(&'a str, &'a Bytes),
    Peer(&'a PeerAddresses),
    End { entries: u64, peers: u64 },
}

/// [`RecordRef`], decoded (the same variants in the same order: the same encoding).
#[derive(Deserialize)]
enum Record {
    Entry(String, Bytes),
    Peer(PeerAddresses),
    End { entries: u64, peers: u64 },
}

fn write_record(sink: &mut dyn std::io::Write, record: &RecordRef<'_>) -> std::io::Result<()> {
    // Strings, bytes, addresses and counts always encode.
    let encoded = postcard::to_stdvec(record).map_err(std::io::Error::other)?;
    sink.write_all(&(encoded.len() as u32).to_le_bytes())?;
    sink.write_all(&encoded)
}

fn read_record(reader: &mut dyn std::io::Read, buffer: &mut Vec<u8>) -> Result<Record, SnapshotDecodeError> {
    let mut length = [0; 4];
    reader.read_exact(&mut length)?;
    let length = u32::from_le_bytes(length);
    if length as usize > SNAPSHOT_RECORD_BYTES_MAX {
        return Err(SnapshotDecodeError::RecordTooLarge(length));
    }
    buffer.resize(length as usize, 0);
    reader.read_exact(buffer)?;
    Ok(postcard::from_bytes(buffer)?)
}

impl Kv {
    /// An empty map that records registrations in `book`.
    pub fn new(book: PeerBook) -> Self {
        Kv { map: BTreeMap::new(), registered: BTreeMap::new(), book: Some(book) }
    }

    /// An empty map of one shard of a sharded cluster: no address book (the routing table is
    /// where a sharded cluster's nodes are found), so registrations are only recorded.
    pub fn shard() -> Self {
        Kv { map: BTreeMap::new(), registered: BTreeMap::new(), book: None }
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

    /// The first `limit` entries whose key starts with `prefix`, in key order, and whether more
    /// follow (one shard's page of a scatter-gather scan).
    pub fn scan(&self, prefix: &str, limit: usize) -> (Vec<(String, Bytes)>, bool) {
        let mut matching = self
            .map
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix));
        let entries: Vec<(String, Bytes)> =
            matching.by_ref().take(limit).map(|(key, value)| (key.clone(), value.clone())).collect();
        (entries, matching.next().is_some())
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
                if let Some(book) = &self.book {
                    book.add(peer);
                }
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
            // Checked here too, not only by the HTTP handlers: every replica refuses the same
            // commands, and no key or value it keeps is too large for a snapshot record.
            Ok(command) if !command.within_limits() => Response::Invalid,
            Ok(command) => self.execute(command),
            Err(_) => Response::Invalid,
        }
    }

    fn snapshot(&self, sink: &mut dyn std::io::Write) -> std::io::Result<()> {
        for (key, value) in &self.map {
            write_record(sink, &RecordRef::Entry(key, value))?;
        }
        for peer in self.registered.values() {
            write_record(sink, &RecordRef::Peer(peer))?;
        }
        let (entries, peers) = (self.map.len() as u64, self.registered.len() as u64);
        write_record(sink, &RecordRef::End { entries, peers })
    }

    fn restore(&mut self, reader: &mut dyn std::io::Read) -> Result<(), SnapshotDecodeError> {
        let (mut map, mut registered) = (BTreeMap::new(), BTreeMap::new());
        let mut buffer = Vec::new();
        loop {
            match read_record(reader, &mut buffer)? {
                Record::Entry(key, value) => {
                    map.insert(key, value);
                }
                Record::Peer(peer) => {
                    registered.insert(peer.id, peer);
                }
                Record::End { entries, peers } => {
                    if (entries, peers) != (map.len() as u64, registered.len() as u64) {
                        return Err(SnapshotDecodeError::Incomplete);
                    }
                    break;
                }
            }
        }
        for peer in registered.values() {
            if let Some(book) = &self.book {
                book.add(*peer);
            }
        }
        self.map = map;
        self.registered = registered;
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

    /// A snapshot written record by record restores the same map and peers, in any reads' sizes;
    /// one cut short or with a wrong count is refused.
    #[tokio::test]
    async fn a_snapshot_streams_record_by_record_and_restores() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = PeerBook::open(NodeId(1), &[peer(1)], transport().await, dir.path()).expect("open");
        let mut kv = Kv::new(book);
        for key in 0..100 {
            kv.execute(Command::Put { key: format!("key{key}"), value: Bytes::from(vec![key as u8; key]) });
        }
        kv.execute(Command::Register(peer(2)));
        let mut data = Vec::new();
        kv.snapshot(&mut data).expect("snapshot");

        let other = tempfile::tempdir().expect("tempdir");
        let book = PeerBook::open(NodeId(3), &[peer(3)], transport().await, other.path()).expect("open");
        let mut restored = Kv::new(book.clone());
        // One byte per read: the decoder must not assume whole records per read.
        let mut reader = std::io::BufReader::with_capacity(1, data.as_slice());
        restored.restore(&mut reader).expect("restore");
        assert_eq!(restored.map, kv.map);
        assert_eq!(restored.registered, kv.registered);
        assert_eq!(book.get(NodeId(2)), Some(peer(2)), "registered peers join the book");

        let cut = &data[..data.len() - 1];
        assert!(matches!(restored.restore(&mut &cut[..]), Err(SnapshotDecodeError::Read(_))));
        let mut wrong = Vec::new();
        write_record(&mut wrong, &RecordRef::End { entries: 1, peers: 0 }).expect("write");
        assert!(matches!(restored.restore(&mut wrong.as_slice()), Err(SnapshotDecodeError::Incomplete)));
    }

    /// A command whose key or value is over the limits is refused by every replica alike when
    /// applied (not only by the HTTP handlers), so no snapshot holds a record too large to
    /// restore.
    #[tokio::test]
    async fn commands_over_the_limits_are_refused_when_applied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = PeerBook::open(NodeId(1), &[peer(1)], transport().await, dir.path()).expect("open");
        let mut kv = Kv::new(book);
        let encode = |command: &Command| Bytes::from(postcard::to_allocvec(command).expect("encodes"));
        let long_key = "k".repeat(KEY_BYTES_MAX + 1);
        let big = Bytes::from(vec![0; VALUE_BYTES_MAX + 1]);
        for command in [
            Command::Put { key: long_key.clone(), value: Bytes::new() },
            Command::Put { key: "k".into(), value: big.clone() },
            Command::Cas { key: "k".into(), expected: None, value: Some(big) },
            Command::Delete { key: long_key },
        ] {
            assert_eq!(kv.apply(Index(1), &encode(&command)), Response::Invalid, "{command:?}");
        }
        assert!(kv.map.is_empty());
        let fits = Command::Put { key: "k".repeat(KEY_BYTES_MAX), value: Bytes::from(vec![1; VALUE_BYTES_MAX]) };
        assert_eq!(kv.apply(Index(2), &encode(&fits)), Response::Done);
        let mut data = Vec::new();
        kv.snapshot(&mut data).expect("snapshot");
        let mut restored = Kv::new(PeerBook::open(NodeId(1), &[peer(1)], transport().await, dir.path()).expect("open"));
        restored.restore(&mut data.as_slice()).expect("a record at the limits restores");
        assert_eq!(restored.map, kv.map);
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

#[cfg(test)]
mod scan_tests {
    use super::*;

    #[test]
    fn a_scan_returns_the_prefixed_keys_in_order_up_to_the_limit() {
        let mut kv = Kv::shard();
        for key in ["b/2", "a", "b/1", "b/3", "c", "b"] {
            kv.execute(Command::Put { key: key.to_owned(), value: Bytes::from(key.to_uppercase()) });
        }
        let keys = |page: &(Vec<(String, Bytes)>, bool)| page.0.iter().map(|(key, _)| key.clone()).collect::<Vec<_>>();
        let two = kv.scan("b/", 2);
        assert_eq!((keys(&two), two.1), (vec!["b/1".to_owned(), "b/2".to_owned()], true));
        assert_eq!(two.0[0].1, Bytes::from("B/1"));
        let all = kv.scan("b/", 10);
        assert_eq!((keys(&all), all.1), (vec!["b/1".to_owned(), "b/2".to_owned(), "b/3".to_owned()], false));
        assert_eq!(kv.scan("", 100).0.len(), 6);
        assert!(kv.scan("z", 10).0.is_empty());
        assert_eq!(kv.scan("b/", 0), (Vec::new(), true));
    }
}
