//! Helpers for the integration tests in `tests/`: a key-value state machine whose state the test
//! can read, node configurations, clusters over TCP and over the in-memory network, and a client
//! that follows the leader. Every wait polls a condition for up to [`PATIENCE`]; no test asserts
//! on how long anything took.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use raft_core::{Index, Membership, NodeId, Options, Role};
use raft_net::{
    MemNetwork, NodeConfig, NodeHandle, ProposeError, StateMachine, TcpOptions, TcpTransport, TokioConnector,
};
use raft_storage::{DiskOptions, DiskStorage, Identity, LogStore, StdFs};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep};

/// How long a test waits for something that should happen (generous: slow machines, busy CI).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The pause between polls.
pub const POLL: Duration = Duration::from_millis(10);

/// The tick used by every test node.
pub const TICK: Duration = Duration::from_millis(20);

/// The cluster id of the test clusters.
pub const CLUSTER: u64 = 7;

/// What a [`Kv`] state machine holds, shared with the test.
#[derive(Debug, Default)]
pub struct KvData {
    /// The keys and values.
    pub map: BTreeMap<Bytes, Bytes>,
    /// The last applied index.
    pub applied: Index,
    /// The index of every snapshot the machine was restored from, in order.
    pub restored: Vec<Index>,
}

/// The test's view of a [`Kv`] machine.
#[derive(Clone, Debug, Default)]
pub struct KvView(Arc<Mutex<KvData>>);

impl KvView {
    /// Locks the data (a panicking state machine poisons nothing that matters to a test).
    pub fn lock(&self) -> MutexGuard<'_, KvData> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of the map.
    pub fn map(&self) -> BTreeMap<Bytes, Bytes> {
        self.lock().map.clone()
    }

    /// The last applied index.
    pub fn applied(&self) -> Index {
        self.lock().applied
    }
}

/// A key-value state machine: each command is `key=value` and sets the key; the response is
/// the index it was applied at.
#[derive(Debug, Default)]
pub struct Kv(pub KvView);

/// A snapshot that does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("snapshot truncated at byte {0}")]
pub struct TruncatedSnapshot(pub usize);

impl StateMachine for Kv {
    type Response = Index;
    type RestoreError = TruncatedSnapshot;

    fn apply(&mut self, index: Index, command: &Bytes) -> Index {
        let mut data = self.0.lock();
        let split = command.iter().position(|byte| *byte == b'=').unwrap_or(command.len());
        let value = if split < command.len() { command.slice(split + 1..) } else { Bytes::new() };
        data.map.insert(command.slice(..split), value);
        data.applied = index;
        index
    }

    fn snapshot(&self) -> Bytes {
        let data = self.0.lock();
        let mut out = Vec::new();
        out.extend_from_slice(&data.applied.0.to_le_bytes());
        for (key, value) in &data.map {
            for part in [key, value] {
                out.extend_from_slice(&(part.len() as u32).to_le_bytes());
                out.extend_from_slice(part);
            }
        }
        Bytes::from(out)
    }

    fn restore(&mut self, snapshot: Bytes) -> Result<(), TruncatedSnapshot> {
        let mut reader = Reader { data: snapshot, position: 0 };
        let applied = Index(reader.u64()?);
        let mut map = BTreeMap::new();
        while reader.position < reader.data.len() {
            let key = reader.part()?;
            map.insert(key, reader.part()?);
        }
        let mut data = self.0.lock();
        data.map = map;
        data.applied = applied;
        data.restored.push(applied);
        Ok(())
    }
}

/// Decodes a [`Kv`] snapshot.
struct Reader {
    data: Bytes,
    position: usize,
}

impl Reader {
    fn take(&mut self, count: usize) -> Result<Bytes, TruncatedSnapshot> {
        let end = self.position.checked_add(count).filter(|end| *end <= self.data.len());
        let end = end.ok_or(TruncatedSnapshot(self.position))?;
        let piece = self.data.slice(self.position..end);
        self.position = end;
        Ok(piece)
    }

    fn u64(&mut self) -> Result<u64, TruncatedSnapshot> {
        let bytes = self.take(8)?;
        Ok(u64::from_le_bytes(bytes.as_ref().try_into().map_err(|_| TruncatedSnapshot(self.position))?))
    }

    fn part(&mut self) -> Result<Bytes, TruncatedSnapshot> {
        let bytes = self.take(4)?;
        let length = u32::from_le_bytes(bytes.as_ref().try_into().map_err(|_| TruncatedSnapshot(self.position))?);
        self.take(length as usize)
    }
}

/// The command that sets `key` to `value`.
pub fn set(key: &str, value: &str) -> Bytes {
    Bytes::from(format!("{key}={value}"))
}

/// Core options for a test node: quick elections in ticks of [`TICK`]. No seed: each start
/// draws a fresh one from the operating system, as in production.
pub fn options() -> Options {
    Options::builder().election_ticks(10).heartbeat_ticks(2).build().expect("valid options")
}

/// A node configuration with the test options and tick.
pub fn config(id: NodeId, addresses: &BTreeMap<NodeId, SocketAddr>) -> NodeConfig {
    let mut config = NodeConfig::new(id, options());
    config.tick_interval = TICK;
    config.addresses = addresses.clone();
    config
}

/// The membership of voters `ids`.
pub fn membership(ids: &[u64]) -> Membership {
    Membership::new(ids.iter().map(|id| NodeId(*id)))
}

/// A running test node.
pub struct Member {
    /// Its id.
    pub id: NodeId,
    /// Its handle.
    pub handle: NodeHandle<Kv>,
    /// Its state machine's data.
    pub view: KvView,
}

/// Polls `condition` until it holds; panics after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !condition().await {
        assert!(Instant::now() < deadline, "gave up waiting until {what}");
        sleep(POLL).await;
    }
}

/// The leader once one of `members` leads and every other running member knows it; panics
/// after [`PATIENCE`].
pub async fn settled_leader(members: &[&Member]) -> NodeId {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut statuses = Vec::new();
        for member in members {
            if let Ok(status) = member.handle.status().await {
                statuses.push(status);
            }
        }
        let leader = statuses.iter().find(|status| status.role == Role::Leader).map(|status| status.id);
        if let Some(id) = leader
            && statuses.iter().all(|status| status.leader == leader)
        {
            return id;
        }
        assert!(Instant::now() < deadline, "no leader settled: {statuses:?}");
        sleep(POLL).await;
    }
}

/// Proposes `command` to the cluster until it is applied: starts at member `first`, follows
/// `NotLeader` hints, and retries after outcomes that leave the command uncommitted or unknown
/// (commands are idempotent `set`s, so a retry is harmless). Panics after [`PATIENCE`], even when
/// a proposal is never answered (a leader that lost its quorum for good).
pub async fn propose(members: &[NodeHandle<Kv>], ids: &[NodeId], mut target: usize, command: Bytes) -> Index {
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "proposal {command:?} never applied");
        let outcome = tokio::time::timeout_at(deadline, members[target].propose(command.clone())).await;
        let Ok(outcome) = outcome else { panic!("proposal {command:?} never answered") };
        match outcome {
            Ok(index) => return index,
            Err(ProposeError::Refused { reason: raft_core::ProposeError::TooLarge { .. }, .. }) => {
                panic!("test commands are small")
            }
            Err(error) => match error.leader_hint().and_then(|(leader, _)| ids.iter().position(|id| *id == leader)) {
                Some(leader) => {
                    target = leader;
                    continue;
                }
                None => target = (target + 1) % members.len(),
            },
        }
        sleep(POLL).await;
    }
}

/// Proposes `set(key{i}, value{i})` for every `i` in `keys`, `in_flight` at a time.
pub async fn propose_many(members: &[NodeHandle<Kv>], ids: &[NodeId], keys: std::ops::Range<usize>, in_flight: usize) {
    let mut workers = Vec::new();
    for worker in 0..in_flight {
        let (members, ids, keys) = (members.to_vec(), ids.to_vec(), keys.clone());
        workers.push(tokio::spawn(async move {
            for key in keys.skip(worker).step_by(in_flight) {
                propose(&members, &ids, worker % members.len(), set(&format!("key{key}"), &format!("value{key}")))
                    .await;
            }
        }));
    }
    for worker in workers {
        worker.await.expect("a proposing worker panicked");
    }
}

/// Binds a listener on `address`, retrying while the previous owner of the port releases it.
pub async fn bind(address: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match TcpListener::bind(address).await {
            Ok(listener) => return listener,
            Err(error) => assert!(Instant::now() < deadline, "cannot bind {address}: {error}"),
        }
        sleep(POLL).await;
    }
}

/// `count` listeners on 127.0.0.1, port 0, and the address book of nodes `1..=count`.
pub async fn listeners(count: u64) -> (Vec<TcpListener>, BTreeMap<NodeId, SocketAddr>) {
    let mut listeners = Vec::new();
    let mut addresses = BTreeMap::new();
    for id in 1..=count {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        addresses.insert(NodeId(id), listener.local_addr().expect("local address"));
        listeners.push(listener);
    }
    (listeners, addresses)
}

/// TCP options with quick reconnects (no test depends on them).
pub fn tcp_options() -> TcpOptions {
    TcpOptions {
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        ..TcpOptions::default()
    }
}

/// Starts node `config.id` of cluster `cluster_id` over TCP (listening on `listener`, dialing
/// every other address in `config.addresses`) and `storage`, with a fresh [`Kv`].
pub fn start_tcp<S: LogStore + Send + 'static>(
    cluster_id: u64,
    config: NodeConfig,
    listener: TcpListener,
    storage: S,
) -> Member {
    let id = config.id;
    let peers = config.addresses.iter().filter(|(peer, _)| **peer != id).map(|(peer, address)| (*peer, *address));
    let (transport, inbound) =
        TcpTransport::start(cluster_id, id, listener, TokioConnector, peers.collect(), tcp_options())
            .expect("transport");
    let view = KvView::default();
    let handle = raft_net::start(config, storage, transport, inbound, Kv(view.clone())).expect("node starts");
    Member { id, handle, view }
}

/// Starts node `config.id` on `network` over `storage`, with a fresh [`Kv`].
pub fn start_mem<S: LogStore + Send + 'static>(network: &MemNetwork, config: NodeConfig, storage: S) -> Member {
    let id = config.id;
    let (transport, inbound) = network.join(id).expect("join the network");
    let view = KvView::default();
    let handle = raft_net::start(config, storage, transport, inbound, Kv(view.clone())).expect("node starts");
    Member { id, handle, view }
}

/// A fresh durable store for node `id` of the test cluster in `dir`.
pub fn create_disk(dir: &Path, id: NodeId, voters: &[u64]) -> DiskStorage {
    let identity = Identity { cluster_id: CLUSTER, node_id: id };
    DiskStorage::create(StdFs, dir, identity, membership(voters), DiskOptions::default()).expect("create store")
}

/// Reopens node `id`'s durable store in `dir`.
pub fn open_disk(dir: &Path, id: NodeId) -> DiskStorage {
    let identity = Identity { cluster_id: CLUSTER, node_id: id };
    DiskStorage::open(StdFs, dir, identity, DiskOptions::default()).expect("open store")
}

/// Waits until every member has applied at least `index`.
pub async fn all_applied(members: &[&Member], index: Index) {
    for member in members {
        eventually(&format!("node {} applies {index}", member.id), || async { member.view.applied() >= index }).await;
    }
}
