//! One node of a sharded cluster: one [`Host`] stepping every group the node holds, one
//! [`TcpTransport`] carrying all their messages, and one [`SharedWal`] holding all their logs
//! (group commit across groups). It runs the meta group ([`META_GROUP`], the routing table) and a
//! [`Kv`] map for each shard it holds a replica of, and routes a key to its shard.
//!
//! What this module does today (issue 20, step by step; see `docs/sharding.md`): a new cluster's
//! nodes all start from the same [`ShardNodeConfig`] and derive the same first placement
//! ([`placement::initial`]), create the groups it gives them, and the meta group's first leader
//! writes the routing table; a restarted node reopens every group its log holds. Moving replicas
//! (joins, drains, failures) is the controller's work and is not wired here yet.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use raft_core::{GroupId, Membership, NodeId, OptionsError, Role};
use raft_net::{
    Host, HostConfig, HostError, NodeConfig, NodeHandle, ProposeError, ReadConsistency, ReadError, RegisterGroupError,
    StartError, StateMachine, TcpOptions, TcpTransport, TokioConnector,
};
use raft_storage::{DiskError, GroupStore, Identity, SharedWal, StdFs, WalOptions};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::runner::{self, LocalReplicas, Peers, RunnerConfig};
use super::{META_GROUP, Meta, NodeEntry, RoutingTable, ShardId, TableChange, TableCommand, placement, shard_of};
use crate::kv::{Kv, SNAPSHOT_EVERY_ENTRIES, raft_options};

/// The most voters the meta group starts with; the other first nodes are its learners (every
/// node keeps an applied copy of the table, but a larger quorum would only slow its changes).
pub const META_VOTERS_MAX: usize = 3;

/// How often a node looks at its meta group: to write the first table if it leads and none is
/// written yet, and to refresh its cached copy of the table.
pub const TABLE_REFRESH: Duration = Duration::from_millis(50);

/// How long a node waits for a linearizable read of the routing table before it creates or
/// deletes a replica (it changes nothing that round without one).
pub const TABLE_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The file in a node's data directory listing the shards `raft-kv recover` made it the only
/// voter of, until the table's record of their members has caught up with their history (see
/// [`super::TableChange::ResetMembers`]).
pub const RECOVERED_FILE: &str = "raft-kv-recovered-shards.json";

/// How many times (10 ms apart) `shutdown` waits for other holders of the node to let go.
const SHUTDOWN_WAITS_MAX: u32 = 500;

/// How a node of a sharded cluster starts.
#[derive(Clone, Debug)]
pub struct ShardNodeConfig {
    /// This node.
    pub id: NodeId,
    /// The cluster's id (in every store and handshake).
    pub cluster_id: u64,
    /// The node's data directory (its shared write-ahead log).
    pub data: PathBuf,
    /// The cluster's first nodes and their addresses, this one included: the same on every first
    /// node, since each derives the first placement from it.
    pub nodes: BTreeMap<NodeId, NodeEntry>,
    /// The number of shards (fixed for the cluster's life).
    pub shards: u32,
    /// The replicas each shard should have.
    pub replication: u8,
    /// The groups' tick.
    pub tick_interval: Duration,
    /// The host's worker threads.
    pub workers: usize,
    /// Whether this node joins a running cluster: on its first start it creates only an empty
    /// replica of the meta group (the controller adds it as a learner once the table names it),
    /// and `nodes` need only name it and the nodes it can reach first.
    pub join: bool,
    /// How the controller runs while this node leads the meta group; `None`: it does not run
    /// here (replicas then move only when an operator drives each step).
    pub controller: Option<RunnerConfig>,
    /// Mutual TLS for the Raft transport; `None`: plain TCP.
    pub tls: Option<raft_net::tls::TlsConfig>,
}

/// Why a node of a sharded cluster could not start.
#[derive(Debug, Error)]
pub enum ShardNodeError {
    /// The configuration is not one a cluster can run with.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The Raft options were refused.
    #[error("the Raft options: {0}")]
    Options(#[from] OptionsError),
    /// The write-ahead log could not be opened or a group's store created.
    #[error("the store: {0}")]
    Storage(#[from] DiskError),
    /// The transport did not start.
    #[error("the transport: {0}")]
    Transport(#[from] StartError),
    /// A group could not be registered with the transport.
    #[error("the transport: {0}")]
    Register(#[from] RegisterGroupError),
    /// The host did not start or refused a group.
    #[error("the host: {0}")]
    Host(#[from] HostError),
}

/// Where a key's requests go, seen from one node.
#[derive(Clone, Debug)]
pub enum Route {
    /// This node holds a replica of the key's shard: ask its group here (which may still redirect
    /// to the group's leader).
    Local(ShardId, NodeHandle<Kv>),
    /// Another node does: the shard's leader hint if the table has one, else one of its replicas.
    Remote {
        /// The key's shard.
        shard: ShardId,
        /// The node to ask.
        node: NodeId,
        /// Where it serves.
        entry: NodeEntry,
    },
    /// This node has no routing table yet (a new cluster's first table is not applied here yet):
    /// retry shortly.
    NoTable,
}

/// One node of a sharded cluster (see the module docs).
pub struct ShardNode {
    inner: Arc<Inner>,
    refresher: JoinHandle<()>,
    controller: Option<JoinHandle<()>>,
}

/// What the node, its refresher task and its controller share.
pub(crate) struct Inner {
    pub(crate) id: NodeId,
    transport: Arc<TcpTransport>,
    wal: SharedWal,
    host: Host<GroupStore>,
    pub(crate) meta: NodeHandle<Meta>,
    shards: Mutex<BTreeMap<ShardId, NodeHandle<Kv>>>,
    table: Mutex<Arc<RoutingTable>>,
    groups: Groups,
    /// The replicas being deleted: still in `shards` until deleted durably, but no longer
    /// reported to the controller as held (it must not add their node as a learner again).
    deleting: Mutex<BTreeSet<ShardId>>,
    /// The shards of [`RECOVERED_FILE`], and where that file is.
    recovered: Mutex<BTreeSet<ShardId>>,
    recovered_file: PathBuf,
}

impl std::fmt::Debug for ShardNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardNode")
            .field("id", &self.inner.id)
            .field("shards", &self.shard_ids())
            .finish_non_exhaustive()
    }
}

/// The meta group's first membership: the first [`META_VOTERS_MAX`] nodes in id order vote, the
/// others learn.
pub fn meta_membership(nodes: &BTreeSet<NodeId>) -> Membership {
    let mut membership = Membership::new(nodes.iter().copied().take(META_VOTERS_MAX));
    membership.learners = nodes.iter().copied().skip(META_VOTERS_MAX).collect();
    membership
}

/// The command that creates the table of a new cluster of `config` (the same on every first node).
pub fn create_command(config: &ShardNodeConfig) -> TableCommand {
    let ids: BTreeSet<NodeId> = config.nodes.keys().copied().collect();
    let replicas = placement::initial(&ids, config.shards, usize::from(config.replication));
    TableCommand {
        expected_version: Some(0),
        change: TableChange::Create { replication: config.replication, nodes: config.nodes.clone(), replicas },
    }
}

impl ShardNode {
    /// Starts the node: creates its log and its first groups on a first start (the placement
    /// every first node derives from `config`), or reopens every group its log holds. Must be
    /// called from within a tokio runtime; `listener` is the Raft transport's.
    /// The controller reaches the other nodes through `peers`.
    pub async fn start(
        config: ShardNodeConfig,
        listener: TcpListener,
        peers: Arc<dyn Peers>,
    ) -> Result<ShardNode, ShardNodeError> {
        let id = config.id;
        if !config.nodes.contains_key(&id) {
            return Err(ShardNodeError::Config(format!("node {id} is not among the cluster's nodes")));
        }
        if config.shards == 0 || config.shards > super::SHARDS_MAX {
            return Err(ShardNodeError::Config(format!("{} shards (want 1 to {})", config.shards, super::SHARDS_MAX)));
        }
        if config.replication == 0 || usize::from(config.replication) > super::REPLICAS_MAX {
            return Err(ShardNodeError::Config(format!(
                "replication {} (want 1 to {})",
                config.replication,
                super::REPLICAS_MAX
            )));
        }
        let identity = Identity { cluster_id: config.cluster_id, node_id: id };
        let wal = match SharedWal::open(StdFs, &config.data, identity, WalOptions::default()) {
            Ok(wal) => wal,
            Err(DiskError::NotInitialized(_)) => {
                SharedWal::create(StdFs, &config.data, identity, WalOptions::default())?
            }
            Err(error) => return Err(error.into()),
        };
        // The meta group is created last: a log without it is a first start that did not finish
        // (a crash between two creations), which is finished now with the same memberships.
        let first_start = !wal.groups().contains(&META_GROUP);
        let raft_peers: BTreeMap<NodeId, _> =
            config.nodes.iter().filter(|(peer, _)| **peer != id).map(|(peer, entry)| (*peer, entry.raft)).collect();
        let transport = Arc::new(match config.tls.clone() {
            Some(tls) => TcpTransport::start_node_tls(
                config.cluster_id,
                id,
                listener,
                TokioConnector,
                raft_peers,
                TcpOptions::default(),
                tls,
            )?,
            None => TcpTransport::start_node(
                config.cluster_id,
                id,
                listener,
                TokioConnector,
                raft_peers,
                TcpOptions::default(),
            )?,
        });
        let host = Host::start(HostConfig {
            thread_name: format!("kv-{}", id.0),
            tick_interval: config.tick_interval,
            ..HostConfig::with_workers(config.workers.max(1))
        })?;
        if first_start && config.join {
            wal.create_group(META_GROUP, Membership::default())?;
        } else if first_start {
            let existing = wal.groups();
            for (shard, replicas) in create_command_replicas(&config).into_iter().enumerate() {
                let group = ShardId(shard as u32).group();
                if replicas.contains(&id) && !existing.contains(&group) {
                    wal.create_group(group, Membership::new(replicas))?;
                }
            }
            let ids: BTreeSet<NodeId> = config.nodes.keys().copied().collect();
            wal.create_group(META_GROUP, meta_membership(&ids))?;
        }
        let addresses = config.nodes.iter().map(|(peer, entry)| (*peer, entry.raft)).collect();
        let groups = Groups { id, tick_interval: config.tick_interval, addresses: Mutex::new(addresses) };
        let meta = groups.add(&host, &transport, &wal, META_GROUP, Meta::default())?;
        let mut shards = BTreeMap::new();
        for group in wal.groups() {
            if let Some(shard) = ShardId::of_group(group) {
                shards.insert(shard, groups.add(&host, &transport, &wal, group, Kv::shard())?);
            }
        }
        info!(node = id.0, shards = ?shards.keys().map(|shard| shard.0).collect::<Vec<_>>(), first_start, "sharded node started");
        let recovered_file = config.data.join(RECOVERED_FILE);
        let recovered = read_recovered(&recovered_file).map_err(ShardNodeError::Config)?;
        let inner = Arc::new(Inner {
            id,
            transport,
            wal,
            host,
            meta,
            shards: Mutex::new(shards),
            table: Mutex::new(Arc::new(RoutingTable::default())),
            groups,
            deleting: Mutex::new(BTreeSet::new()),
            recovered: Mutex::new(recovered),
            recovered_file,
        });
        let create = (!config.join).then(|| create_command(&config));
        let refresher = tokio::spawn(refresh(Arc::clone(&inner), create));
        let controller =
            config.controller.map(|runner| tokio::spawn(runner::run(Arc::downgrade(&inner), peers, runner)));
        Ok(ShardNode { inner, refresher, controller })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The meta group's handle on this node.
    pub fn meta(&self) -> &NodeHandle<Meta> {
        &self.inner.meta
    }

    /// The shards this node holds a replica of.
    pub fn shard_ids(&self) -> Vec<ShardId> {
        self.inner.lock_shards().keys().copied().collect()
    }

    /// This node's replica of `shard`, if it holds one.
    pub fn shard(&self, shard: ShardId) -> Option<NodeHandle<Kv>> {
        self.inner.lock_shards().get(&shard).cloned()
    }

    /// The routing table as this node last saw it applied (a cache: it may be behind the meta
    /// group's leader, which only ever sends a request to a node that redirects it again).
    pub fn table(&self) -> Arc<RoutingTable> {
        self.inner.table()
    }

    /// Where requests for `key` go.
    pub fn route(&self, key: &[u8]) -> Route {
        let table = self.table();
        if table.version() == 0 {
            return Route::NoTable;
        }
        let shard = shard_of(key, table.shard_count());
        if let Some(handle) = self.shard(shard) {
            return Route::Local(shard, handle);
        }
        let entry = table.shard(shard);
        let target = entry.and_then(|entry| entry.leader_hint.or_else(|| entry.replicas.iter().next().copied()));
        match target.and_then(|node| table.nodes().get(&node).map(|entry| (node, *entry))) {
            Some((node, entry)) => Route::Remote { shard, node, entry },
            // A created table names a node entry for every replica of every shard.
            None => Route::NoTable,
        }
    }

    /// This node's replicas as a controller drives them (what [`Peers`] calls on this node).
    pub fn local_replicas(&self) -> LocalReplicas {
        LocalReplicas(Arc::downgrade(&self.inner))
    }

    /// The shared write-ahead log (for its statistics).
    pub fn wal(&self) -> &SharedWal {
        &self.inner.wal
    }

    /// The transport (for its statistics and peer states).
    pub fn transport(&self) -> &TcpTransport {
        &self.inner.transport
    }

    /// Stops every group, then the host and the transport.
    pub async fn shutdown(self) {
        self.refresher.abort();
        let _ = self.refresher.await; // Its clone of `inner` is dropped with it.
        if let Some(controller) = self.controller {
            controller.abort();
            let _ = controller.await;
        }
        let handles: Vec<NodeHandle<Kv>> = self.inner.lock_shards().values().cloned().collect();
        for handle in handles {
            handle.shutdown().await;
        }
        self.inner.meta.shutdown().await;
        self.inner.host.shutdown().await;
        // Another node's controller may hold this node's replicas for a moment (it calls them):
        // wait for it to let go, so that the transport's port is free once this returns.
        let mut inner = self.inner;
        for _ in 0..SHUTDOWN_WAITS_MAX {
            match Arc::try_unwrap(inner) {
                Ok(alone) => {
                    if let Ok(transport) = Arc::try_unwrap(alone.transport) {
                        transport.shutdown().await;
                    }
                    return;
                }
                Err(shared) => {
                    inner = shared;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        warn!("the node is still referenced after its shutdown: its transport stops when the last reference goes");
    }
}

/// How the node adds a group to its host: every group of the node has the same Raft options,
/// tick and address book.
struct Groups {
    id: NodeId,
    tick_interval: Duration,
    /// Where every node the table names listens.
    addresses: Mutex<BTreeMap<NodeId, SocketAddr>>,
}

impl Groups {
    /// Starts `group` (which the log holds) on `host` with `state_machine`.
    fn add<SM: StateMachine>(
        &self,
        host: &Host<GroupStore>,
        transport: &TcpTransport,
        wal: &SharedWal,
        group: GroupId,
        state_machine: SM,
    ) -> Result<NodeHandle<SM>, ShardNodeError> {
        let mut config = NodeConfig::new(self.id, raft_options()?);
        config.tick_interval = self.tick_interval;
        config.addresses = self.addresses.lock().unwrap_or_else(PoisonError::into_inner).clone();
        config.snapshot_every_entries = SNAPSHOT_EVERY_ENTRIES;
        let (group_transport, inbound) = transport.register_group(group)?;
        let store = wal.group(group)?;
        match host.add_group(group, config, store, group_transport, inbound, state_machine) {
            Ok(handle) => {
                debug!(node = self.id.0, group = group.0, "group started");
                Ok(handle)
            }
            Err(error) => {
                transport.unregister_group(group);
                Err(error.into())
            }
        }
    }
}

impl Inner {
    fn table(&self) -> Arc<RoutingTable> {
        Arc::clone(&self.table.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn lock_shards(&self) -> std::sync::MutexGuard<'_, BTreeMap<ShardId, NodeHandle<Kv>>> {
        self.shards.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_deleting(&self) -> std::sync::MutexGuard<'_, BTreeSet<ShardId>> {
        self.deleting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shards this node holds a replica of, less those being deleted.
    pub(crate) fn held(&self) -> BTreeSet<ShardId> {
        let deleting = self.lock_deleting().clone();
        self.lock_shards().keys().filter(|shard| !deleting.contains(shard)).copied().collect()
    }

    /// The shards recovered on this node whose record in the table has not caught up yet.
    pub(crate) fn recovered(&self) -> BTreeSet<ShardId> {
        self.recovered.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Forgets the recovered shards whose record in the table has caught up with this node's
    /// replica (reset by the controller, or recorded from the recovered history): the recorded
    /// members are the replica's committed members, at an index no later than its commit. Decided
    /// on a linearizable read of the table, never on the cached copy (which may still hold a
    /// record older than the one to replace, and let the note go before the reset). A shard this
    /// node no longer holds is forgotten too. In memory and in [`RECOVERED_FILE`].
    async fn forget_recovered(&self) {
        let noted = self.recovered();
        if noted.is_empty() {
            return;
        }
        let read = self.meta.read(ReadConsistency::Linearizable, |meta: &Meta| meta.table().clone());
        let Ok(Ok(table)) = tokio::time::timeout(TABLE_READ_TIMEOUT, read).await else { return };
        let mut caught_up = BTreeSet::new();
        for shard in noted {
            let Some(handle) = self.lock_shards().get(&shard).cloned() else {
                caught_up.insert(shard);
                continue;
            };
            let Ok(status) = handle.status().await else { continue };
            let committed = &status.committed_membership;
            let recorded = table.shard(shard).is_some_and(|entry| {
                !committed.is_joint() && entry.members == committed.members() && entry.members_at <= status.commit.0
            });
            if recorded {
                caught_up.insert(shard);
            }
        }
        if caught_up.is_empty() {
            return;
        }
        let left: BTreeSet<ShardId> = self.recovered().difference(&caught_up).copied().collect();
        match write_recovered(&self.recovered_file, &left) {
            Ok(()) => {
                info!(node = self.id.0, shards = ?caught_up, "the table's record of recovered shards caught up");
                *self.recovered.lock().unwrap_or_else(PoisonError::into_inner) = left;
            }
            Err(error) => warn!(node = self.id.0, %error, "rewriting the list of recovered shards"),
        }
    }

    /// Brings the node's replicas in line with `table`:
    /// - every node the table names is a peer of the transport and in every group's address book;
    /// - a shard the table names this node for, whose recorded committed members lack it, and
    ///   that it does not hold, gets an empty replica (a group with no membership, which its
    ///   leader then adds as a learner);
    /// - a replica that the table neither names nor records among the group's committed members
    ///   is stopped and deleted durably (unless it leads).
    ///
    /// `table` is the cached copy; both decisions are taken again on a linearizable read.
    async fn reconcile(&self, table: &RoutingTable) -> Result<(), ShardNodeError> {
        let new_peers: Vec<(NodeId, SocketAddr)> = {
            let mut addresses = self.groups.addresses.lock().unwrap_or_else(PoisonError::into_inner);
            let new: Vec<_> = table
                .nodes()
                .iter()
                .filter(|(node, entry)| addresses.get(node) != Some(&entry.raft))
                .map(|(node, entry)| (*node, entry.raft))
                .collect();
            addresses.extend(new.iter().copied());
            new
        };
        if !new_peers.is_empty() {
            let handles: Vec<NodeHandle<Kv>> = self.lock_shards().values().cloned().collect();
            for (node, address) in &new_peers {
                if *node != self.id {
                    self.transport.add_peer(*node, *address);
                }
                self.meta.add_address(*node, *address).await;
                for handle in &handles {
                    handle.add_address(*node, *address).await;
                }
            }
        }
        // What the cached table suggests; each create or delete is then decided on a table read
        // linearizably from the meta group (a cached copy may be behind: this node may have been
        // named again, and re-added to the group, since).
        let candidates: Vec<ShardId> = table
            .shards()
            .filter(|(shard, entry)| {
                let (named, member) = (entry.replicas.contains(&self.id), entry.members.contains(&self.id));
                let held = self.lock_shards().contains_key(shard);
                // Create (named, not held) or delete (held, not named), never for a member.
                !member && named != held
            })
            .map(|(shard, _)| shard)
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let read = self.meta.read(ReadConsistency::Linearizable, |meta: &Meta| meta.table().clone());
        let Ok(Ok(current)) = tokio::time::timeout(TABLE_READ_TIMEOUT, read).await else {
            debug!(node = self.id.0, "no linearizable read of the routing table: replicas unchanged this round");
            return Ok(());
        };
        for shard in candidates {
            let Some(entry) = current.shard(shard) else { continue };
            let named = entry.replicas.contains(&self.id);
            // A member of the group's latest committed membership, as the table recorded it.
            let member = entry.members.contains(&self.id);
            let held = self.lock_shards().get(&shard).cloned();
            match held {
                None if named && !member => {
                    // No leader holds progress for this node: an empty replica is a new learner,
                    // never a voter that lost its data.
                    let group = shard.group();
                    if !self.wal.groups().contains(&group) {
                        self.wal.create_group(group, Membership::default())?;
                    }
                    let handle = self.groups.add(&self.host, &self.transport, &self.wal, group, Kv::shard())?;
                    info!(node = self.id.0, shard = shard.0, "replica created: waiting to be added as a learner");
                    self.lock_shards().insert(shard, handle);
                }
                Some(handle) if !named && !member => {
                    // Gone from the table's replicas and from a committed, non-joint membership
                    // of the group: no quorum of the group will ever need this replica. A leader
                    // keeps it until it has handed over (it may still have to replicate the final
                    // membership); a stopped group is not leading.
                    if handle.status().await.is_ok_and(|status| status.role == Role::Leader) {
                        continue;
                    }
                    // Out of the map only once deleted durably: a node that shows no replica of a
                    // shard holds none, also after a crash.
                    self.lock_deleting().insert(shard);
                    handle.shutdown().await;
                    self.transport.unregister_group(shard.group());
                    let removed = self.wal.remove_group(shard.group());
                    if removed.is_ok() {
                        self.lock_shards().remove(&shard);
                    }
                    self.lock_deleting().remove(&shard);
                    removed?;
                    info!(node = self.id.0, shard = shard.0, "replica deleted: the shard left this node");
                }
                _ => {}
            }
        }
        // The cached table counts this node as a member of a shard it holds no replica of.
        for (shard, entry) in table.shards() {
            if entry.members.contains(&self.id) && !self.lock_shards().contains_key(&shard) {
                warn!(
                    node = self.id.0,
                    shard = shard.0,
                    "the shard's group counts this node as a member but it holds no replica: remove it from the group"
                );
            }
        }
        Ok(())
    }
}

/// The shards listed in `file` (none when there is no file); an error names the file.
fn read_recovered(file: &Path) -> Result<BTreeSet<ShardId>, String> {
    match std::fs::read(file) {
        Ok(bytes) => serde_json::from_slice::<BTreeSet<u32>>(&bytes)
            .map(|shards| shards.into_iter().map(ShardId).collect())
            .map_err(|error| format!("{}: {error}", file.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(error) => Err(format!("{}: {error}", file.display())),
    }
}

/// Writes `shards` into `file` atomically (a new file renamed over the old one, both synced);
/// removes it when `shards` is empty.
fn write_recovered(file: &Path, shards: &BTreeSet<ShardId>) -> std::io::Result<()> {
    if shards.is_empty() {
        return match std::fs::remove_file(file) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        };
    }
    let list: Vec<u32> = shards.iter().map(|shard| shard.0).collect();
    let temporary = file.with_extension("json.new");
    let mut out = std::fs::File::create(&temporary)?;
    std::io::Write::write_all(&mut out, &serde_json::to_vec(&list).map_err(std::io::Error::other)?)?;
    out.sync_all()?;
    std::fs::rename(&temporary, file)?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Adds `shards` to the recovered shards listed in `data`'s [`RECOVERED_FILE`] (`raft-kv
/// recover` on a sharded node's stopped store).
pub fn note_recovered(data: &Path, shards: &BTreeSet<ShardId>) -> Result<(), String> {
    let file = data.join(RECOVERED_FILE);
    let mut listed = read_recovered(&file)?;
    listed.extend(shards.iter().copied());
    write_recovered(&file, &listed).map_err(|error| format!("{}: {error}", file.display()))
}

/// The replicas of each shard in a new cluster of `config`.
fn create_command_replicas(config: &ShardNodeConfig) -> Vec<BTreeSet<NodeId>> {
    match create_command(config).change {
        TableChange::Create { replicas, .. } => replicas,
        _ => Vec::new(),
    }
}

/// Keeps the node's cached table at the one its meta replica has applied, and its replicas in
/// line with it ([`Inner::reconcile`]); while no table is written, the meta group's leader
/// proposes `create` (compare and set on version 0: the first of several leaders to get there
/// wins, and they all propose the same table).
async fn refresh(inner: Arc<Inner>, create: Option<TableCommand>) {
    let encoded = create.map(|create| bytes::Bytes::from(create.encode()));
    let mut ticker = tokio::time::interval(TABLE_REFRESH);
    loop {
        ticker.tick().await;
        let current = inner.table().revision();
        let seen = inner.meta.read(ReadConsistency::Stale, move |meta: &Meta| {
            (meta.table().revision() > current).then(|| Arc::new(meta.table().clone()))
        });
        match seen.await {
            Ok(Some(table)) => *inner.table.lock().unwrap_or_else(PoisonError::into_inner) = table,
            Ok(None) => {}
            Err(ReadError::Stopped(_) | ReadError::ShuttingDown) => return,
            Err(_) => {}
        }
        let table = inner.table();
        if table.version() == 0 {
            let Some(encoded) = &encoded else { continue }; // Joining: the table comes to it.
            match inner.meta.propose(encoded.clone()).await {
                Ok(Ok(version)) => info!(version, "routing table created"),
                Ok(Err(refused)) => debug!(%refused, "routing table not created by this node"),
                Err(ProposeError::Refused { .. }) => {} // Not the leader: the leader writes it.
                Err(error) => debug!(%error, "proposing the routing table"),
            }
        } else {
            if let Err(error) = inner.reconcile(&table).await {
                warn!(node = inner.id.0, %error, "bringing the replicas in line with the routing table");
            }
            inner.forget_recovered().await;
        }
    }
}
