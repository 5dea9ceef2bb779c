//! A cluster of voters `1..=n` in this process: [`ClusterBuilder`] chooses the network, the
//! stores, the nodes' configuration and (by a factory per node id) their state machines;
//! [`Cluster`] keeps the running nodes and stops, restarts, adds and shuts them down.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use raft_core::{Membership, NodeId};
use raft_net::{MemNetwork, NodeConfig, NodeHandle, TcpOptions};
use raft_storage::{DiskOptions, DiskStorage, Identity, LogStore, MemStorage, StdFs};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep};

use crate::node::{HarnessError, Machine, Member, Tcp};
use crate::wait::{PATIENCE, POLL, Settled, Unsettled, settled};
use crate::{CLUSTER, config, tcp_options};

/// How the nodes of a cluster reach each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkKind {
    /// One [`MemNetwork`]: messages are handed over as values, without serialization; the test
    /// cuts links through [`Cluster::network`].
    Mem,
    /// raft-net's TCP transport on 127.0.0.1 (length-prefixed postcard frames), each node
    /// listening on a port the system picks and keeping it across restarts.
    Tcp,
}

/// Where the nodes keep their logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageKind {
    /// `MemStorage`: nothing is written anywhere, and a stopped node cannot be restarted.
    Mem,
    /// `DiskStorage` over `StdFs` (the write-ahead log, one fdatasync per group commit), each node
    /// in a temporary directory of its own inside this one, removed with the cluster.
    Disk(PathBuf),
}

impl StorageKind {
    /// `DiskStorage` in directories inside the system's temporary directory.
    pub fn disk() -> StorageKind {
        StorageKind::Disk(std::env::temp_dir())
    }
}

/// Changes a node's configuration before it starts.
type Configure = Arc<dyn Fn(&mut NodeConfig) + Send + Sync>;

/// Makes a node's TLS configuration.
#[cfg(feature = "tls")]
type MakeTls = Arc<dyn Fn(NodeId) -> raft_net::tls::TlsConfig + Send + Sync>;

/// What a cluster is made of; [`ClusterBuilder::start`] starts it.
#[derive(Clone)]
pub struct ClusterBuilder {
    voters: Vec<NodeId>,
    cluster_id: u64,
    network: NetworkKind,
    storage: StorageKind,
    tcp_options: TcpOptions,
    configure: Option<Configure>,
    #[cfg(feature = "tls")]
    tls: Option<MakeTls>,
}

impl ClusterBuilder {
    /// Voters `1..=voters` in cluster [`CLUSTER`], over the in-memory network and stores, each
    /// configured by [`config`] (quick elections), with [`tcp_options`] should the network be
    /// TCP.
    pub fn new(voters: u64) -> ClusterBuilder {
        ClusterBuilder {
            voters: (1..=voters).map(NodeId).collect(),
            cluster_id: CLUSTER,
            network: NetworkKind::Mem,
            storage: StorageKind::Mem,
            tcp_options: tcp_options(),
            configure: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The cluster id in the stores and the TCP handshakes.
    pub fn cluster_id(mut self, cluster_id: u64) -> Self {
        self.cluster_id = cluster_id;
        self
    }

    /// The network.
    pub fn network(mut self, network: NetworkKind) -> Self {
        self.network = network;
        self
    }

    /// The stores (unless [`ClusterBuilder::start_with`] makes them).
    pub fn storage(mut self, storage: StorageKind) -> Self {
        self.storage = storage;
        self
    }

    /// The TCP transport's options.
    pub fn tcp_options(mut self, options: TcpOptions) -> Self {
        self.tcp_options = options;
        self
    }

    /// Over TCP, mutual TLS: node `id` (at every start) uses the configuration `tls(id)` makes.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: impl Fn(NodeId) -> raft_net::tls::TlsConfig + Send + Sync + 'static) -> Self {
        self.tls = Some(Arc::new(tls));
        self
    }

    /// Changes every node's configuration before it starts, after [`config`] and (over TCP) the
    /// address book: options, tick, execution, snapshot policy, limits.
    pub fn configure(mut self, configure: impl Fn(&mut NodeConfig) + Send + Sync + 'static) -> Self {
        self.configure = Some(Arc::new(configure));
        self
    }

    /// Starts every voter over a store of the chosen [`StorageKind`], with the state machine
    /// `machine` makes for its id (also for restarts and added nodes).
    pub async fn start<SM: Machine>(
        self,
        machine: impl FnMut(NodeId) -> SM + Send + 'static,
    ) -> Result<Cluster<SM>, HarnessError> {
        let mut cluster = Cluster::bound(self, Box::new(machine)).await?;
        for id in cluster.spec.voters.clone() {
            cluster.start_fresh(id).await?;
        }
        Ok(cluster)
    }

    /// Starts every voter over the store `store` makes for its id (a store on a fault-injecting
    /// file system, say), with the state machine `machine` makes.
    pub async fn start_with<SM: Machine, S: LogStore + Send + 'static>(
        self,
        mut store: impl FnMut(NodeId) -> Result<S, HarnessError>,
        machine: impl FnMut(NodeId) -> SM + Send + 'static,
    ) -> Result<Cluster<SM>, HarnessError> {
        let mut cluster = Cluster::bound(self, Box::new(machine)).await?;
        for id in cluster.spec.voters.clone() {
            cluster.start_node(id, store(id)?).await?;
        }
        Ok(cluster)
    }
}

/// Makes a node's state machine.
type MachineFactory<SM> = Box<dyn FnMut(NodeId) -> SM + Send>;

/// A running cluster (see the [module](self) docs).
pub struct Cluster<SM: Machine> {
    /// The running nodes, by id. Declared before the directories, so that they go first.
    members: Vec<Member<SM>>,
    dirs: BTreeMap<NodeId, TempDir>,
    spec: ClusterBuilder,
    machine: MachineFactory<SM>,
    network: MemNetwork,
    /// Over TCP: every node's address, and the listeners bound for nodes not started yet.
    addresses: BTreeMap<NodeId, SocketAddr>,
    listeners: BTreeMap<NodeId, TcpListener>,
}

impl<SM: Machine> Cluster<SM> {
    /// A cluster with no node running yet; over TCP every voter's listener is bound already, so
    /// that each node starts knowing every address.
    async fn bound(spec: ClusterBuilder, machine: MachineFactory<SM>) -> Result<Self, HarnessError> {
        let (listeners, addresses) = match spec.network {
            NetworkKind::Tcp => listeners(&spec.voters).await?,
            NetworkKind::Mem => (Vec::new(), BTreeMap::new()),
        };
        let listeners = spec.voters.iter().copied().zip(listeners).collect();
        let network = MemNetwork::default();
        Ok(Cluster { members: Vec::new(), dirs: BTreeMap::new(), spec, machine, network, addresses, listeners })
    }

    /// The running nodes, by id.
    pub fn members(&self) -> &[Member<SM>] {
        &self.members
    }

    /// Running node `id`.
    pub fn member(&self, id: NodeId) -> Option<&Member<SM>> {
        self.members.iter().find(|member| member.id == id)
    }

    /// The running nodes, by id, as the waits take them.
    pub fn running(&self) -> Vec<&Member<SM>> {
        self.members.iter().collect()
    }

    /// The running nodes' handles, by id.
    pub fn handles(&self) -> Vec<NodeHandle<SM>> {
        self.members.iter().map(|member| member.handle.clone()).collect()
    }

    /// The running nodes' ids, in order.
    pub fn ids(&self) -> Vec<NodeId> {
        self.members.iter().map(|member| member.id).collect()
    }

    /// The in-memory network (unused over TCP): cut and heal links here.
    pub fn network(&self) -> &MemNetwork {
        &self.network
    }

    /// Waits until a running node leads and every other running one knows it.
    pub async fn settled(&self, patience: Duration) -> Result<Settled, Unsettled> {
        let handles: Vec<&NodeHandle<SM>> = self.members.iter().map(|member| &member.handle).collect();
        settled(&handles, patience).await
    }

    /// Node `id`'s configuration: [`config`], the address book over TCP, then the builder's
    /// changes.
    fn config(&self, id: NodeId) -> NodeConfig {
        let mut config = config(id);
        config.addresses = self.addresses.clone();
        if let Some(configure) = &self.spec.configure {
            configure(&mut config);
        }
        config
    }

    /// Starts voter `id` on a new store of the cluster's [`StorageKind`].
    async fn start_fresh(&mut self, id: NodeId) -> Result<&Member<SM>, HarnessError> {
        let voters = Membership::new(self.spec.voters.iter().copied());
        match &self.spec.storage {
            StorageKind::Mem => self.start_node(id, MemStorage::new(voters)).await,
            StorageKind::Disk(parent) => {
                let dir = tempfile::Builder::new()
                    .prefix(&format!("raft-node-{id}-"))
                    .tempdir_in(parent)
                    .map_err(|source| HarnessError::Io { what: format!("a directory in {parent:?}"), source })?;
                let storage = create_disk(dir.path(), self.spec.cluster_id, id, voters)?;
                self.dirs.insert(id, dir);
                self.start_node(id, storage).await
            }
        }
    }

    /// Starts node `id` over `storage`, with a state machine from the cluster's factory: a voter
    /// not started yet, one stopped, or a new node (over TCP on a new port, which the address
    /// books of the others do not have).
    pub async fn start_node<S: LogStore + Send + 'static>(
        &mut self,
        id: NodeId,
        storage: S,
    ) -> Result<&Member<SM>, HarnessError> {
        if self.member(id).is_some() {
            return Err(HarnessError::Cluster { id, why: "it runs already" });
        }
        let machine = (self.machine)(id);
        let member = match self.spec.network {
            NetworkKind::Mem => Member::start(self.config(id), storage, &self.network, machine)?,
            NetworkKind::Tcp => {
                let listener = match (self.listeners.remove(&id), self.addresses.get(&id)) {
                    (Some(listener), _) => listener,
                    (None, Some(address)) => bind(*address).await?,
                    (None, None) => {
                        let (mut listeners, addresses) = listeners(&[id]).await?;
                        self.addresses.extend(addresses);
                        listeners.pop().ok_or(HarnessError::Cluster { id, why: "no listener was bound" })?
                    }
                };
                let wiring =
                    Tcp::loopback(self.spec.cluster_id, listener, &self.addresses, self.spec.tcp_options.clone());
                #[cfg(feature = "tls")]
                if let Some(tls) = &self.spec.tls {
                    let wiring = crate::node::TlsTcp { tcp: wiring, tls: tls(id) };
                    let member = Member::start(self.config(id), storage, wiring, machine)?;
                    return Ok(self.insert(member));
                }
                Member::start(self.config(id), storage, wiring, machine)?
            }
        };
        Ok(self.insert(member))
    }

    /// Keeps a started node, in order of id.
    fn insert(&mut self, member: Member<SM>) -> &Member<SM> {
        let position = self.members.partition_point(|running| running.id < member.id);
        self.members.insert(position, member);
        &self.members[position]
    }

    /// Stops node `id` ([`Member::shutdown`]) and takes it off the in-memory network, so that it
    /// can start again.
    pub async fn stop(&mut self, id: NodeId) -> Result<(), HarnessError> {
        let position = self.members.iter().position(|member| member.id == id);
        let position = position.ok_or(HarnessError::Cluster { id, why: "it does not run" })?;
        self.members.remove(position).shutdown().await;
        self.network.remove(id);
        Ok(())
    }

    /// Node `id`'s store directory, for clusters over [`StorageKind::Disk`].
    pub fn dir(&self, id: NodeId) -> Option<&Path> {
        self.dirs.get(&id).map(|dir| dir.path())
    }

    /// Starts stopped node `id` again from its directory (and over TCP on its address).
    pub async fn restart(&mut self, id: NodeId) -> Result<&Member<SM>, HarnessError> {
        let dir = self.dirs.get(&id).ok_or(HarnessError::Cluster { id, why: "no store on disk to restart from" })?;
        let storage = open_disk(dir.path(), self.spec.cluster_id, id)?;
        self.start_node(id, storage).await
    }

    /// Shuts every node down, then waits for their transports' tasks; the directories go when
    /// the cluster is dropped.
    pub async fn shutdown(&mut self) {
        for member in &self.members {
            member.handle.shutdown().await;
        }
        for member in self.members.drain(..) {
            member.shutdown().await;
        }
    }
}

/// Binds a listener on `address`, retrying for up to [`PATIENCE`] while the previous owner of
/// the port releases it.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, HarnessError> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match TcpListener::bind(address).await {
            Ok(listener) => return Ok(listener),
            Err(source) if Instant::now() >= deadline => {
                return Err(HarnessError::Io { what: format!("binding {address}"), source });
            }
            Err(_) => sleep(POLL).await,
        }
    }
}

/// A listener on 127.0.0.1 for each of `ids`, on a port the system picks, and the address book.
pub async fn listeners(ids: &[NodeId]) -> Result<(Vec<TcpListener>, BTreeMap<NodeId, SocketAddr>), HarnessError> {
    let mut listeners = Vec::new();
    let mut addresses = BTreeMap::new();
    for &id in ids {
        let io = |source| HarnessError::Io { what: "a listener on 127.0.0.1".to_owned(), source };
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.map_err(io)?;
        addresses.insert(id, listener.local_addr().map_err(io)?);
        listeners.push(listener);
    }
    Ok((listeners, addresses))
}

/// A new durable store for node `id` of cluster `cluster_id` in `dir`, starting with `voters`.
pub fn create_disk(dir: &Path, cluster_id: u64, id: NodeId, voters: Membership) -> Result<DiskStorage, HarnessError> {
    let identity = Identity { cluster_id, node_id: id };
    Ok(DiskStorage::create(StdFs, dir, identity, voters, DiskOptions::default())?)
}

/// Node `id`'s durable store in `dir`, reopened.
pub fn open_disk(dir: &Path, cluster_id: u64, id: NodeId) -> Result<DiskStorage, HarnessError> {
    let identity = Identity { cluster_id, node_id: id };
    Ok(DiskStorage::open(StdFs, dir, identity, DiskOptions::default())?)
}
