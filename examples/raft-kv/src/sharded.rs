//! `raft-kv serve --shards S`: one node of a sharded cluster (see docs/sharding.md). The node is a
//! [`ShardNode`] (the meta group with the routing table, and a [`Kv`] group per shard it holds);
//! this module puts the HTTP API in front of it:
//!
//! - `PUT/GET/DELETE /kv/{key}` and `POST /kv/{key}/cas` go to the key's shard: served by this
//!   node's replica of it (exactly as the single-group service serves them, a follower redirecting
//!   a write to its group's leader), or redirected (307) to a node that holds it. A request is only
//!   ever answered by the key's own shard group.
//! - `GET /kv?prefix=P&limit=N` asks every shard (scatter-gather): linearizable shard by shard, not
//!   one snapshot across shards; a shard that does not answer in time fails the whole request.
//! - `GET /cluster/shards` (the routing table and this node's replicas), `GET /cluster/status`.
//! - Admin: `POST /cluster/nodes` (add a node to the table), `POST /cluster/drain` (empty a node),
//!   and the controller's calls between nodes, `GET /internal/observe` and
//!   `POST /internal/carry-out` ([`HttpPeers`] is their client side).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, Uri};
use axum::middleware::{from_fn_with_state, map_response};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post, put};
use raft_core::{ConfChange, Index, NodeId, Role, Term};
use raft_net::{NodeHandle, NodeStatus, ProposeError, ReadConsistency};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use thiserror::Error;
use tracing::{debug, error, info, warn};

use raft_kv::kv::Kv;
use raft_kv::shards::controller::{Action, NodeReport, Observed};
use raft_kv::shards::node::{Route, ShardNode, ShardNodeConfig};
use raft_kv::shards::runner::{BoxFuture, Peers, RunnerConfig};
use raft_kv::shards::scatter::{self, Page};
use raft_kv::shards::{NodeEntry, NodeState, RoutingTable, ShardId, TableChange, TableCommand};

use crate::auth::{Access, Credentials};
use crate::client::{Client, HttpResponse as ClientResponse};
use crate::node::{
    EXIT_NODE_FAILED, HTTP_STOP_GRACE, NodeFailed, ServeArgs, security, server_tls, spawn_http, stdin_ended, stopped,
};
use crate::server::{
    ADMIN_BODY_BYTES_MAX, ADMIN_TIMEOUT, ApiError, CAS_BODY_BYTES_MAX, KeyGroups, NO_LEADER, NODE_STOPPED,
    PUT_BODY_BYTES_MAX, REQUEST_TIMEOUT, Reason, TIMED_OUT, authorize, bad, cas_key, delete_key, get_key, json_body,
    json_errors, propose_error, put_key, read_error, redirect_to,
};
use crate::signals::{StopSignals, watch_stdin};

/// How long one call between nodes (the controller's, a scan's, a join's) may take.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a scan waits for every shard before failing, naming the shards that did not answer.
pub const SCAN_DEADLINE: Duration = Duration::from_secs(5);
/// The entries a scan returns when it does not say.
pub const SCAN_LIMIT_DEFAULT: usize = 100;
/// The most entries one scan returns.
pub const SCAN_LIMIT_MAX: usize = 1000;
/// The replicas of each shard when `--replicas` does not say (fewer when there are fewer nodes).
pub const REPLICAS_DEFAULT: u8 = 3;
/// The controller's rounds are this many ticks apart.
pub const CONTROLLER_TICKS: u32 = 10;
/// The longest wait between two attempts of a joining node to reach the cluster.
pub const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How many times a joining node asks for the routing table before it gives up starting.
pub const JOIN_TABLE_ATTEMPTS: u32 = 60;

/// The query parameter in which a redirect carries the redirecting node's routing table version.
pub const TABLE_VERSION_PARAM: &str = "table_version";
/// How long a node whose routing table is older than a redirected request's waits for it.
pub const TABLE_CATCH_UP_WAIT: Duration = Duration::from_secs(1);
/// How often it looks meanwhile.
const TABLE_CATCH_UP_POLL: Duration = Duration::from_millis(10);

/// The file in the data directory where a node keeps the routing table's nodes, so that a
/// restart can reach them before its meta replica has caught up with the table again.
pub const NODES_FILE: &str = "raft-kv-shard-nodes.json";
/// How often the node looks whether the table's nodes changed, to save them.
pub const NODES_SAVE_INTERVAL: Duration = Duration::from_millis(100);

/// What every handler shares.
struct ShardApp {
    node: Arc<ShardNode>,
    /// `http` or `https`: the scheme of every node's HTTP address, in redirects.
    scheme: &'static str,
    /// How this node asks the others (short timeouts; the admin token and the CA with `--tls`).
    client: Client,
}

/// Runs a sharded node until it is asked to stop (as `serve` does for one group).
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    crate::server::install_metrics()?;
    let mut signals = StopSignals::new().context("listening for signals")?;
    let stdin = if args.exit_with_stdin { Some(watch_stdin().context("watching stdin")?) } else { None };
    let id = NodeId(args.id);
    let security = security(&args)?;
    let server_tls = server_tls(&security, id)?;
    let client = Client::with_timeout(&security.client, PEER_TIMEOUT).context("the client between nodes")?;
    let me = NodeEntry { raft: args.raft_advertise.unwrap_or(args.raft), http: args.http, state: NodeState::Active };
    // With `--tls`, the Raft transport is mutual TLS too (see node.rs); a certificate of another
    // node or cluster stops the node before anything is written.
    let transport_tls = match &security.tls {
        Some(tls) => Some(tls.transport_config(args.cluster_id, id)?),
        None => None,
    };
    let mut config = shard_config(&args, &client, me).await?;
    config.tls = transport_tls;
    let join = config.join;
    let peers = Arc::new(HttpPeers { node: OnceLock::new(), client: client.clone() });
    let listener = tokio::net::TcpListener::bind(args.raft).await.with_context(|| format!("binding {}", args.raft))?;
    let node = ShardNode::start(config, listener, Arc::clone(&peers) as Arc<dyn Peers>)
        .await
        .context("starting the sharded node")?;
    let node = Arc::new(node);
    let _ = peers.node.set(Arc::downgrade(&node));
    tokio::spawn(save_nodes(Arc::downgrade(&node), args.data.join(NODES_FILE)));
    let http = tokio::net::TcpListener::bind(args.http).await.with_context(|| format!("binding {}", args.http))?;
    let scheme = security.client.scheme();
    info!(
        node = id.0,
        "serving (sharded): http {scheme}://{} raft {} data {}",
        args.http,
        args.raft,
        args.data.display()
    );
    if let (true, Some(url)) = (join, &args.join) {
        tokio::spawn(ask_to_join(client.clone(), url.clone(), id, me));
    }
    let router = router(ShardApp { node: Arc::clone(&node), scheme, client }, security.credentials);
    let (stop_http, mut server) = spawn_http(http, router, server_tls)?;
    let stdin = stdin_ended(stdin);
    // The groups share one host and one write-ahead log: a fail-stop of the log stops the meta
    // group too, which is what is watched.
    let meta = node.meta().clone();
    let ending = tokio::select! {
        reason = signals.recv() => Ok(reason),
        () = stdin => Ok("the end of stdin"),
        reason = stopped(&meta) => Err(reason),
        served = &mut server => {
            stop(node).await;
            return match served {
                Ok(served) => served.context("serving HTTP"),
                Err(error) => Err(error).context("the HTTP server's task"),
            };
        }
    };
    match &ending {
        Ok(reason) => info!(node = id.0, "stopping ({reason})"),
        Err(reason) => {
            error!(node = id.0, "the node stopped by itself, exiting with code {EXIT_NODE_FAILED}: {reason}")
        }
    }
    drop(stop_http);
    if tokio::time::timeout(HTTP_STOP_GRACE, &mut server).await.is_err() {
        warn!(node = id.0, "HTTP requests still in flight after {HTTP_STOP_GRACE:?}; stopping anyway");
        server.abort();
        let _ = server.await;
    }
    stop(node).await;
    match ending {
        Ok(_) => Ok(()),
        Err(reason) => Err(NodeFailed { id, reason }.into()),
    }
}

/// Shuts the node down once nothing else holds it (the HTTP server has stopped).
async fn stop(node: Arc<ShardNode>) {
    match Arc::try_unwrap(node) {
        Ok(node) => node.shutdown().await,
        Err(_) => warn!("a request still holds the node; exiting without shutting its groups down"),
    }
}

/// The node's configuration: a new cluster's first node (`--bootstrap`, `--peers`), a node that
/// joins one (`--join`: the table's nodes are learnt from the URL), or a restart.
async fn shard_config(args: &ServeArgs, client: &Client, me: NodeEntry) -> anyhow::Result<ShardNodeConfig> {
    let id = NodeId(args.id);
    let fresh = std::fs::read_dir(&args.data).map_or(true, |mut entries| entries.next().is_none());
    let tick_interval = Duration::from_millis(args.tick_ms);
    let controller = RunnerConfig {
        interval: tick_interval * CONTROLLER_TICKS,
        failed_after: Duration::from_secs(args.failed_after),
        ..RunnerConfig::default()
    };
    let mut config = ShardNodeConfig {
        id,
        cluster_id: args.cluster_id,
        data: args.data.clone(),
        nodes: BTreeMap::new(),
        shards: args.shards.unwrap_or(1),
        replication: 1,
        tick_interval,
        workers: 2,
        join: false,
        controller: Some(controller),
        tls: None,
    };
    // The table's nodes as last saved, then what the command line says (which wins).
    let saved = saved_nodes(&args.data.join(NODES_FILE))?;
    config.nodes = saved.nodes.clone();
    if let Some(url) = &args.join {
        let table = learn_table(client, url).await?;
        config.nodes.extend(table.nodes);
        config.nodes.insert(id, me);
        config.shards = table.shard_count;
        config.replication = table.replication;
        config.join = true;
        return Ok(config);
    }
    if !fresh {
        not_forgotten(client, &saved, (args.cluster_id, id), &args.data).await?;
    }
    if fresh && !args.bootstrap {
        bail!(
            "no store in {}: node {} has never run there. Start a new cluster's first nodes with \
             --bootstrap (first start only), or join a running cluster with --join",
            args.data.display(),
            args.id
        );
    }
    let peers = args.peers.iter().filter(|peer| peer.id != id);
    config
        .nodes
        .extend(peers.map(|peer| (peer.id, NodeEntry { raft: peer.raft, http: peer.http, state: NodeState::Active })));
    config.nodes.insert(id, me);
    let count = u8::try_from(config.nodes.len()).unwrap_or(u8::MAX);
    config.replication = args.replicas.unwrap_or(REPLICAS_DEFAULT).min(count);
    Ok(config)
}

/// Refuses the restart of a node that the cluster forgot while it was down: asks every other
/// node of the node list this node saved, once, for its routing table, and fails when the newest
/// table that answers no longer has node `id` (marked failed, its replicas re-created on other
/// nodes, then removed) and is newer than the table this node last saved (a node that answers
/// from an older table, one from before this node joined, say, proves nothing), while its log
/// still holds shard replicas. Its data is of no use to the cluster any more, and its groups,
/// removed from every membership, would only campaign in vain. A node drained to the end holds
/// none and starts (it stays out of the way). When no node answers, it starts.
async fn not_forgotten(
    client: &Client,
    saved: &SavedNodes,
    (cluster_id, id): (u64, NodeId),
    data: &std::path::Path,
) -> anyhow::Result<()> {
    let asks: Vec<_> = saved
        .nodes
        .iter()
        .filter(|(peer, _)| **peer != id)
        .map(|(peer, entry)| {
            let (client, peer, target) =
                (client.clone(), *peer, format!("{}://{}/cluster/shards", client.scheme(), entry.http));
            tokio::task::spawn_blocking(move || (peer, client.request("GET", &target, &[])))
        })
        .collect();
    let mut newest: Option<(NodeId, TableAnswer)> = None;
    for ask in asks {
        let Ok((peer, Ok(response))) = ask.await else { continue };
        let Ok(table) = decode::<TableAnswer>(&response) else { continue };
        if table.version > 0 && newest.as_ref().is_none_or(|(_, newest)| table.version > newest.version) {
            newest = Some((peer, table));
        }
    }
    match newest {
        Some((peer, table))
            if !table.nodes.contains_key(&id.0)
                && (table.version > saved.version || !saved.nodes.contains_key(&id))
                && holds_shards(data, cluster_id, id) =>
        {
            bail!(
                "node {id} is no longer in the cluster's routing table (version {} on node {peer}) but its \
                 data still holds shard replicas: it was forgotten while it was down (marked failed, or \
                 drained), and its replicas were re-created on other nodes. Its data in {} is of no use \
                 to the cluster: remove it, then join again with --join",
                table.version,
                data.display()
            )
        }
        _ => Ok(()),
    }
}

/// Whether the shared log in `data` holds a replica of any shard (a node drained to the end
/// holds none: it may start, and stays out of the way). Opened and closed again before the node
/// opens it; a log that cannot be opened counts as holding some.
fn holds_shards(data: &std::path::Path, cluster_id: u64, id: NodeId) -> bool {
    let identity = raft_storage::Identity { cluster_id, node_id: id };
    match raft_storage::SharedWal::open(raft_storage::StdFs, data, identity, raft_storage::WalOptions::default()) {
        Ok(wal) => wal.groups().into_iter().any(|group| ShardId::of_group(group).is_some()),
        Err(_) => true,
    }
}

/// The routing table's nodes as a node last saved them ([`NODES_FILE`]), with the table's version
/// then.
#[derive(Clone, Debug, Default)]
struct SavedNodes {
    version: u64,
    nodes: BTreeMap<NodeId, NodeEntry>,
}

/// [`SavedNodes`] in [`NODES_FILE`].
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum NodesFile {
    /// With the table's version.
    Versioned { version: u64, nodes: Vec<(u64, NodeEntry)> },
    /// As the first versions wrote it: the nodes alone (version 0).
    Nodes(Vec<(u64, NodeEntry)>),
}

/// The nodes saved in `file` (none when there is no file yet).
fn saved_nodes(file: &std::path::Path) -> anyhow::Result<SavedNodes> {
    match std::fs::read(file) {
        Ok(bytes) => {
            let saved: NodesFile =
                serde_json::from_slice(&bytes).with_context(|| format!("reading {}", file.display()))?;
            let (version, nodes) = match saved {
                NodesFile::Versioned { version, nodes } => (version, nodes),
                NodesFile::Nodes(nodes) => (0, nodes),
            };
            Ok(SavedNodes { version, nodes: nodes.into_iter().map(|(id, entry)| (NodeId(id), entry)).collect() })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(SavedNodes::default()),
        Err(error) => Err(error).with_context(|| format!("reading {}", file.display())),
    }
}

/// Saves the routing table's nodes into `file` whenever they change, until the node stops.
async fn save_nodes(node: Weak<ShardNode>, file: std::path::PathBuf) {
    let mut saved = (0, BTreeMap::new());
    loop {
        tokio::time::sleep(NODES_SAVE_INTERVAL).await;
        let Some(table) = node.upgrade().map(|node| node.table()) else { return };
        let current = (table.version(), table.nodes().clone());
        if current.1.is_empty() || current == saved {
            continue;
        }
        let list = NodesFile::Versioned {
            version: current.0,
            nodes: current.1.iter().map(|(id, entry)| (id.0, *entry)).collect(),
        };
        let file = file.clone();
        let written = tokio::task::spawn_blocking(move || write_atomically(&file, &list)).await;
        match written {
            Ok(Ok(())) => saved = current,
            Ok(Err(error)) => warn!(%error, "saving the routing table's nodes"),
            Err(_) => return, // The runtime is stopping.
        }
    }
}

/// Writes `value` as JSON into `file` through a synced temporary file and a rename, so that a
/// crash leaves the old file or the new one.
fn write_atomically(file: &std::path::Path, value: &impl Serialize) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let temp = file.with_extension("json.tmp");
    let mut out = std::fs::File::create(&temp)?;
    std::io::Write::write_all(&mut out, &bytes)?;
    out.sync_all()?;
    std::fs::rename(&temp, file)
}

/// What a joining node learns of the cluster from `GET /cluster/shards`.
struct LearntTable {
    nodes: BTreeMap<NodeId, NodeEntry>,
    shard_count: u32,
    replication: u8,
}

/// The answer of `GET /cluster/shards`, the parts a joining node reads.
#[derive(Deserialize)]
struct TableAnswer {
    version: u64,
    shard_count: u32,
    replication: u8,
    nodes: BTreeMap<u64, NodeAnswer>,
}

/// One node of [`TableAnswer`].
#[derive(Deserialize)]
struct NodeAnswer {
    raft: SocketAddr,
    http: SocketAddr,
}

/// Asks `url` for the routing table until it has one (the cluster may still be starting).
async fn learn_table(client: &Client, url: &str) -> anyhow::Result<LearntTable> {
    let mut backoff = Duration::from_millis(100);
    let mut last = String::new();
    for _ in 0..JOIN_TABLE_ATTEMPTS {
        let (client, target) = (client.clone(), format!("{url}/cluster/shards"));
        let answer = tokio::task::spawn_blocking(move || client.request("GET", &target, &[])).await?;
        match answer.map_err(|error| error.to_string()).and_then(|response| decode::<TableAnswer>(&response)) {
            Ok(table) if table.version > 0 => {
                let nodes = table
                    .nodes
                    .into_iter()
                    .map(|(id, node)| {
                        (NodeId(id), NodeEntry { raft: node.raft, http: node.http, state: NodeState::Active })
                    })
                    .collect();
                return Ok(LearntTable { nodes, shard_count: table.shard_count, replication: table.replication });
            }
            Ok(_) => last = "no routing table yet".to_owned(),
            Err(error) => last = error,
        }
        warn!("learning the routing table from {url}: {last}; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(JOIN_BACKOFF_MAX);
    }
    bail!("could not learn the routing table from {url}: {last}")
}

/// Asks the cluster at `url` to add this node to the routing table, until it is accepted (the
/// controller then gives it replicas). Idempotent: a node the table holds already is accepted.
async fn ask_to_join(client: Client, url: String, id: NodeId, me: NodeEntry) {
    let body = json!({ "id": id.0, "raft": me.raft, "http": me.http }).to_string();
    let mut backoff = Duration::from_millis(100);
    loop {
        let (client, target, body) = (client.clone(), format!("{url}/cluster/nodes"), body.clone());
        match tokio::task::spawn_blocking(move || client.request("POST", &target, body.as_bytes())).await {
            Err(_) => return, // The runtime is stopping.
            Ok(Ok(response)) if response.status == 200 => {
                info!(node = id.0, "joined the routing table: {}", response.text());
                return;
            }
            Ok(Ok(response)) => warn!(node = id.0, "joining: HTTP {} {}", response.status, response.text()),
            Ok(Err(error)) => warn!(node = id.0, "joining: {url}: {error}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(JOIN_BACKOFF_MAX);
    }
}

/// The router of a sharded node (see the module docs); tokens and JSON errors as in
/// `server::router`.
fn router(app: ShardApp, credentials: Credentials) -> Router {
    let app = Arc::new(app);
    let credentials = Arc::new(credentials);
    let admin = Router::new()
        .route("/cluster/nodes", post(add_node))
        .route("/cluster/drain", post(drain))
        .route("/internal/observe", get(observe))
        .route("/internal/carry-out", post(carry_out))
        .route_layer(from_fn_with_state((Arc::clone(&credentials), Access::Admin), authorize));
    let data = Router::new()
        .route("/kv", get(scan))
        .route(
            "/kv/{key}",
            put(put_key::<ShardApp>)
                .layer(DefaultBodyLimit::max(PUT_BODY_BYTES_MAX))
                .get(get_key::<ShardApp>)
                .delete(delete_key::<ShardApp>),
        )
        .route("/kv/{key}/cas", post(cas_key::<ShardApp>).layer(DefaultBodyLimit::max(CAS_BODY_BYTES_MAX)))
        .route_layer(from_fn_with_state(Arc::clone(&app), catch_up_table))
        .route("/internal/scan", post(shard_scan))
        .route("/cluster/shards", get(shards))
        .route("/cluster/status", get(status))
        .route("/metrics", get(|| async { crate::server::render_metrics() }))
        .route_layer(from_fn_with_state((credentials, Access::Data), authorize));
    admin
        .merge(data)
        .fallback(|| async { bad(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(DefaultBodyLimit::max(ADMIN_BODY_BYTES_MAX))
        .layer(map_response(json_errors))
        .with_state(app)
}

/// A key request redirected by a node whose routing table was at version `V` carries
/// `table_version=V` in its query; a node whose table is older waits up to
/// [`TABLE_CATCH_UP_WAIT`] for its meta replica to apply that version before routing it, so that
/// two nodes with different views cannot bounce a request between them for long. A value that
/// is not a number is ignored.
async fn catch_up_table(
    State(app): State<Arc<ShardApp>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> HttpResponse {
    if let Some(wanted) = requested_table_version(request.uri()) {
        let deadline = tokio::time::Instant::now() + TABLE_CATCH_UP_WAIT;
        while app.node.table().version() < wanted && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(TABLE_CATCH_UP_POLL).await;
        }
    }
    next.run(request).await
}

/// The `table_version` of `uri`'s query, if it has a numeric one.
fn requested_table_version(uri: &Uri) -> Option<u64> {
    let query = uri.query()?;
    query.split('&').find_map(|pair| pair.strip_prefix(TABLE_VERSION_PARAM)?.strip_prefix('=')?.parse().ok())
}

/// A 307 to `scheme://http` with `uri`'s path and query, its `table_version` set to `version`.
fn redirect_with_version(scheme: &str, http: std::net::SocketAddr, uri: &Uri, version: u64) -> HttpResponse {
    let ours = |pair: &&str| *pair == TABLE_VERSION_PARAM || pair.starts_with(&format!("{TABLE_VERSION_PARAM}="));
    let mut pairs: Vec<String> = uri
        .query()
        .map(|query| query.split('&').filter(|pair| !pair.is_empty() && !ours(pair)).map(str::to_owned).collect())
        .unwrap_or_default();
    pairs.push(format!("{TABLE_VERSION_PARAM}={version}"));
    match Uri::try_from(format!("{}?{}", uri.path(), pairs.join("&"))) {
        Ok(target) => redirect_to(scheme, http, &target),
        Err(_) => redirect_to(scheme, http, uri),
    }
}

impl KeyGroups for ShardApp {
    /// This node's replica of `key`'s shard; otherwise a 307 to a node that holds it, or 503
    /// while no routing table is known.
    fn group(&self, key: &str, uri: &Uri) -> Result<NodeHandle<Kv>, Box<HttpResponse>> {
        let elsewhere = match self.node.route(key.as_bytes()) {
            Route::Local(_, handle) => return Ok(handle),
            Route::Remote { entry, .. } => {
                redirect_with_version(self.scheme, entry.http, uri, self.node.table().version())
            }
            Route::NoTable => ApiError::unavailable(Reason::NoLeader, "no routing table yet; retry").into_response(),
        };
        Err(Box::new(elsewhere))
    }

    /// A 307 to `node` (a group's leader) at its HTTP address in the routing table, or 503 when
    /// no leader is known.
    fn to_leader(&self, node: Option<NodeId>, uri: &Uri) -> HttpResponse {
        let table = self.node.table();
        match node.and_then(|node| table.nodes().get(&node)) {
            Some(entry) => redirect_with_version(self.scheme, entry.http, uri, table.version()),
            None => ApiError::unavailable(Reason::NoLeader, NO_LEADER).into_response(),
        }
    }
}

impl ShardApp {
    /// Proposes a change of the routing table to the meta group; redirects to its leader.
    async fn propose_table(&self, change: TableChange, uri: &Uri) -> HttpResponse {
        let command = TableCommand { expected_version: None, change };
        let proposed = self.node.meta().propose(Bytes::from(command.encode()));
        match tokio::time::timeout(ADMIN_TIMEOUT, proposed).await {
            Ok(Ok(Ok(version))) => axum::Json(json!({ "version": version })).into_response(),
            Ok(Ok(Err(refused))) => bad(StatusCode::CONFLICT, refused.to_string()).into_response(),
            Ok(Err(ProposeError::Refused { reason: raft_core::ProposeError::NotLeader { leader }, .. })) => {
                self.to_leader(leader, uri)
            }
            Ok(Err(error)) => propose_error(error).into_response(),
            Err(_) => ApiError::unknown(Reason::TimedOut, TIMED_OUT).into_response(),
        }
    }
}

/// The query of `GET /kv`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanQuery {
    prefix: Option<String>,
    limit: Option<usize>,
}

/// One entry of a scan's answer (values as UTF-8 text, as the CLI writes them).
#[derive(Serialize, Deserialize)]
struct ScanEntry {
    key: String,
    value: String,
}

/// A scan's answer: entries in key order, and whether more match.
#[derive(Serialize, Deserialize)]
struct ScanAnswer {
    entries: Vec<ScanEntry>,
    more: bool,
}

impl From<Page<String, Bytes>> for ScanAnswer {
    fn from(page: Page<String, Bytes>) -> Self {
        let entries = page
            .entries
            .into_iter()
            .map(|(key, value)| ScanEntry { key, value: String::from_utf8_lossy(&value).into_owned() })
            .collect();
        ScanAnswer { entries, more: page.more }
    }
}

/// `GET /kv?prefix=P&limit=N`: every shard asked at once, answers merged in key order.
async fn scan(State(app): State<Arc<ShardApp>>, Query(query): Query<ScanQuery>) -> HttpResponse {
    let limit = query.limit.unwrap_or(SCAN_LIMIT_DEFAULT);
    if limit > SCAN_LIMIT_MAX {
        return bad(StatusCode::BAD_REQUEST, format!("limit {limit} exceeds {SCAN_LIMIT_MAX}")).into_response();
    }
    let prefix = query.prefix.unwrap_or_default();
    let table = app.node.table();
    if table.version() == 0 {
        return ApiError::unavailable(Reason::NoLeader, "no routing table yet; retry").into_response();
    }
    let shards = (0..table.shard_count()).map(ShardId);
    let gathered = scatter::gather(shards, limit, SCAN_DEADLINE, |shard| {
        let (app, prefix) = (Arc::clone(&app), prefix.clone());
        async move { shard_page(&app, shard, &prefix, limit).await }
    })
    .await;
    match gathered {
        Ok(page) => axum::Json(ScanAnswer::from(page)).into_response(),
        // Nothing was changed; the shards named may answer on a retry.
        Err(error) => ApiError::unavailable(Reason::TimedOut, error.to_string()).into_response(),
    }
}

/// One shard's page of a scan: read here (linearizable) when this node holds a replica, else
/// asked of the nodes that hold it (its leader hint first).
async fn shard_page(app: &ShardApp, shard: ShardId, prefix: &str, limit: usize) -> Result<Page<String, Bytes>, String> {
    if let Some(handle) = app.node.shard(shard) {
        let prefix = prefix.to_owned();
        let read = handle.read(ReadConsistency::Linearizable, move |kv: &Kv| kv.scan(&prefix, limit));
        return match read.await {
            Ok((entries, more)) => Ok(Page { entries, more }),
            Err(error) => Err(error.to_string()),
        };
    }
    let table = app.node.table();
    let entry = table.shard(shard).ok_or("not in the routing table")?;
    let candidates = entry.leader_hint.into_iter().chain(entry.replicas.iter().copied());
    let body = json!({ "shard": shard.0, "prefix": prefix, "limit": limit }).to_string();
    let mut last = "no replica in the routing table".to_owned();
    for node in candidates.filter(|node| *node != app.node.id()) {
        let Some(http) = table.nodes().get(&node).map(|entry| entry.http) else { continue };
        let (client, url, body) = (app.client.clone(), app.client.url(http, "/internal/scan"), body.clone());
        let answer = tokio::task::spawn_blocking(move || client.request_once("POST", &url, body.as_bytes())).await;
        let answer = match answer {
            Ok(Ok(response)) => decode::<ScanAnswer>(&response),
            Ok(Err(error)) => Err(error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match answer {
            Ok(answer) => {
                let entries = answer.entries.into_iter().map(|entry| (entry.key, Bytes::from(entry.value))).collect();
                return Ok(Page { entries, more: answer.more });
            }
            Err(error) => last = format!("node {node}: {error}"),
        }
    }
    Err(last)
}

/// The body of `POST /internal/scan`: one shard's page, asked by a node that holds no replica.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShardScan {
    shard: u32,
    prefix: String,
    limit: usize,
}

async fn shard_scan(State(app): State<Arc<ShardApp>>, body: Result<Bytes, BytesRejection>) -> HttpResponse {
    let request: ShardScan = match json_body(body, ADMIN_BODY_BYTES_MAX) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    if request.limit > SCAN_LIMIT_MAX {
        return bad(StatusCode::BAD_REQUEST, format!("limit {} exceeds {SCAN_LIMIT_MAX}", request.limit))
            .into_response();
    }
    let shard = ShardId(request.shard);
    let Some(handle) = app.node.shard(shard) else {
        return bad(StatusCode::NOT_FOUND, format!("no replica of shard {shard} here")).into_response();
    };
    let (prefix, limit) = (request.prefix, request.limit);
    let read = handle.read(ReadConsistency::Linearizable, move |kv: &Kv| kv.scan(&prefix, limit));
    match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Ok(Ok((entries, more))) => axum::Json(ScanAnswer::from(Page { entries, more })).into_response(),
        Ok(Err(error)) => read_error(error).into_response(),
        Err(_) => ApiError::unavailable(Reason::TimedOut, TIMED_OUT).into_response(),
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre-candidate",
        _ => "follower",
    }
}

fn state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Active => "active",
        NodeState::Draining => "draining",
        NodeState::Failed => "failed",
    }
}

fn ids(set: &BTreeSet<NodeId>) -> Vec<u64> {
    set.iter().map(|id| id.0).collect()
}

/// One group's status on this node; its leader adds each peer's progress.
fn group_json(status: &NodeStatus) -> Value {
    let mut value = json!({
        "role": role_name(status.role), "term": status.term.0, "leader": status.leader.map(|id| id.0),
        "commit": status.commit.0, "applied": status.applied.0, "last_index": status.last_index.0,
        "voters": ids(&status.membership.voters_incoming), "voters_outgoing": ids(&status.membership.voters_outgoing),
        "learners": ids(&status.membership.learners),
    });
    if status.role == Role::Leader {
        let peers: serde_json::Map<String, Value> = status
            .peers
            .iter()
            .map(|(id, peer)| {
                let progress = json!({ "match_index": peer.match_index.0, "lag_entries": peer.lag_entries,
                                       "recent_active": peer.recent_active });
                (id.0.to_string(), progress)
            })
            .collect();
        value["peers"] = Value::Object(peers);
    }
    value
}

fn table_json(table: &RoutingTable) -> Value {
    let nodes: serde_json::Map<String, Value> = table
        .nodes()
        .iter()
        .map(|(id, entry)| {
            let node = json!({ "raft": entry.raft.to_string(), "http": entry.http.to_string(),
                               "state": state_name(entry.state) });
            (id.0.to_string(), node)
        })
        .collect();
    json!({ "version": table.version(), "shard_count": table.shard_count(), "replication": table.replication(),
            "nodes": nodes })
}

/// `GET /cluster/shards`: the routing table as this node last applied it, and the status of
/// each replica this node holds.
async fn shards(State(app): State<Arc<ShardApp>>) -> HttpResponse {
    let table = app.node.table();
    let mut answer = table_json(&table);
    let mut shards = Vec::new();
    for (shard, entry) in table.shards() {
        let local = match app.node.shard(shard) {
            Some(handle) => handle.status().await.ok().map(|status| group_json(&status)),
            None => None,
        };
        // `members`: the group's last committed membership the controller recorded (at the
        // group's commit index `members_at`); a node in `members` but not `replicas` is a move's
        // source, one in `replicas` only its target.
        shards.push(json!({ "shard": shard.0, "replicas": ids(&entry.replicas), "members": ids(&entry.members),
                            "members_at": entry.members_at, "leader_hint": entry.leader_hint.map(|id| id.0),
                            "local": local }));
    }
    answer["id"] = json!(app.node.id().0);
    answer["shards"] = Value::Array(shards);
    answer["held"] = json!(app.node.shard_ids().iter().map(|shard| shard.0).collect::<Vec<_>>());
    axum::Json(answer).into_response()
}

/// `GET /cluster/status`: this node, its meta replica and the shards it holds.
async fn status(State(app): State<Arc<ShardApp>>) -> HttpResponse {
    let Ok(meta) = app.node.meta().status().await else {
        return ApiError::unavailable(Reason::NodeStopped, NODE_STOPPED).into_response();
    };
    let table = app.node.table();
    let held: Vec<u32> = app.node.shard_ids().iter().map(|shard| shard.0).collect();
    // `leader`: the meta group's (the routing table's) leader, as in a single group's status.
    let answer = json!({ "id": app.node.id().0, "sharded": true, "leader": meta.leader.map(|id| id.0),
                         "table_version": table.version(),
                         "shard_count": table.shard_count(), "held": held, "meta": group_json(&meta) });
    axum::Json(answer).into_response()
}

/// The body of `POST /cluster/nodes`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddNode {
    id: u64,
    raft: SocketAddr,
    http: SocketAddr,
}

/// Adds a node to the routing table (the controller then gives it replicas). A node the table
/// already holds at the same addresses is accepted again, so that a joining node may retry.
async fn add_node(State(app): State<Arc<ShardApp>>, uri: Uri, body: Result<Bytes, BytesRejection>) -> HttpResponse {
    let request: AddNode = match json_body(body, ADMIN_BODY_BYTES_MAX) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let table = app.node.table();
    if let Some(entry) = table.nodes().get(&NodeId(request.id)) {
        if (entry.raft, entry.http) == (request.raft, request.http) {
            return axum::Json(json!({ "version": table.version() })).into_response();
        }
        let message = format!("node {} is in the table with other addresses", request.id);
        return bad(StatusCode::CONFLICT, message).into_response();
    }
    let change = TableChange::AddNode { id: NodeId(request.id), raft: request.raft, http: request.http };
    app.propose_table(change, &uri).await
}

/// The body of `POST /cluster/drain`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Drain {
    id: u64,
}

/// Marks a node draining: the controller moves every replica off it.
async fn drain(State(app): State<Arc<ShardApp>>, uri: Uri, body: Result<Bytes, BytesRejection>) -> HttpResponse {
    let request: Drain = match json_body(body, ADMIN_BODY_BYTES_MAX) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let id = NodeId(request.id);
    let table = app.node.table();
    match table.nodes().get(&id) {
        None if table.version() > 0 => {
            return bad(StatusCode::NOT_FOUND, format!("node {id} is not in the routing table")).into_response();
        }
        Some(entry) if entry.state == NodeState::Draining => {
            return axum::Json(json!({ "version": table.version() })).into_response();
        }
        _ => {}
    }
    app.propose_table(TableChange::SetNodeState { id, state: NodeState::Draining }, &uri).await
}

/// `GET /internal/observe`: what the shard replicas this node leads report, and which replicas
/// it holds (the controller's [`Peers::observe`]).
async fn observe(State(app): State<Arc<ShardApp>>) -> HttpResponse {
    match app.node.local_replicas().observe().await {
        Some(report) => axum::Json(WireReport::from(report)).into_response(),
        None => ApiError::unavailable(Reason::NodeStopped, NODE_STOPPED).into_response(),
    }
}

/// `POST /internal/carry-out`: a controller's shard action, for a replica this node leads.
async fn carry_out(State(app): State<Arc<ShardApp>>, body: Result<Bytes, BytesRejection>) -> HttpResponse {
    let wire: WireAction = match json_body(body, ADMIN_BODY_BYTES_MAX) {
        Ok(wire) => wire,
        Err(error) => return error.into_response(),
    };
    match app.node.local_replicas().carry_out(Action::from(wire)).await {
        Ok(()) => axum::Json(json!({ "ok": true })).into_response(),
        // A membership change may have been appended before it failed.
        Err(error) => ApiError::unknown(Reason::Conflict, error).into_response(),
    }
}

/// [`NodeReport`] as JSON between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireReport {
    leading: Vec<WireObserved>,
    held: Vec<u32>,
}

impl From<NodeReport> for WireReport {
    fn from(report: NodeReport) -> Self {
        WireReport {
            leading: report.leading.into_iter().map(WireObserved::from).collect(),
            held: report.held.iter().map(|shard| shard.0).collect(),
        }
    }
}

impl From<WireReport> for NodeReport {
    fn from(wire: WireReport) -> Self {
        NodeReport {
            leading: wire.leading.into_iter().map(<(ShardId, Observed)>::from).collect(),
            held: wire.held.into_iter().map(ShardId).collect(),
        }
    }
}

/// [`Observed`] as JSON between nodes: one shard's membership and progress, as its leader sees
/// them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireObserved {
    shard: u32,
    leader: u64,
    term: u64,
    commit: u64,
    /// `None` while the committed membership is joint.
    committed_members: Option<Vec<u64>>,
    voters: Vec<u64>,
    joint: bool,
    learners: Vec<u64>,
    lag_entries: Vec<(u64, u64)>,
    recently_active: Vec<u64>,
    #[serde(default)]
    recovered: bool,
}

impl From<(ShardId, Observed)> for WireObserved {
    fn from((shard, seen): (ShardId, Observed)) -> Self {
        WireObserved {
            shard: shard.0,
            leader: seen.leader.0,
            term: seen.term.0,
            commit: seen.commit.0,
            committed_members: seen.committed_members.as_ref().map(ids),
            voters: ids(&seen.voters),
            joint: seen.joint,
            learners: ids(&seen.learners),
            lag_entries: seen.lag_entries.iter().map(|(node, lag)| (node.0, *lag)).collect(),
            recently_active: ids(&seen.recently_active),
            recovered: seen.recovered,
        }
    }
}

impl From<WireObserved> for (ShardId, Observed) {
    fn from(wire: WireObserved) -> Self {
        let set = |ids: Vec<u64>| ids.into_iter().map(NodeId).collect();
        let seen = Observed {
            leader: NodeId(wire.leader),
            term: Term(wire.term),
            commit: Index(wire.commit),
            committed_members: wire.committed_members.map(set),
            voters: set(wire.voters),
            joint: wire.joint,
            learners: set(wire.learners),
            lag_entries: wire.lag_entries.into_iter().map(|(node, lag)| (NodeId(node), lag)).collect(),
            recently_active: set(wire.recently_active),
            recovered: wire.recovered,
        };
        (ShardId(wire.shard), seen)
    }
}

/// A shard [`Action`] as JSON between nodes (a table change never travels: the controller
/// proposes it to its own meta replica).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
enum WireAction {
    AddLearner { shard: u32, node: u64 },
    Change { shard: u32, changes: Vec<WireChange> },
    TransferLeader { shard: u32, to: u64 },
}

/// A [`ConfChange`] as JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WireChange {
    AddVoter(u64),
    AddLearner(u64),
    Remove(u64),
}

impl TryFrom<Action> for WireAction {
    type Error = PeerError;

    fn try_from(action: Action) -> Result<Self, PeerError> {
        Ok(match action {
            Action::AddLearner { shard, node } => WireAction::AddLearner { shard: shard.0, node: node.0 },
            Action::Change { shard, changes } => {
                let changes = changes
                    .into_iter()
                    .map(|change| match change {
                        ConfChange::AddVoter(node) => WireChange::AddVoter(node.0),
                        ConfChange::AddLearner(node) => WireChange::AddLearner(node.0),
                        ConfChange::Remove(node) => WireChange::Remove(node.0),
                    })
                    .collect();
                WireAction::Change { shard: shard.0, changes }
            }
            Action::TransferLeader { shard, to } => WireAction::TransferLeader { shard: shard.0, to: to.0 },
            Action::Table(_) => return Err(PeerError::NotSent("a table change is proposed to the meta group")),
        })
    }
}

impl From<WireAction> for Action {
    fn from(wire: WireAction) -> Self {
        match wire {
            WireAction::AddLearner { shard, node } => Action::AddLearner { shard: ShardId(shard), node: NodeId(node) },
            WireAction::Change { shard, changes } => {
                let changes = changes
                    .into_iter()
                    .map(|change| match change {
                        WireChange::AddVoter(node) => ConfChange::AddVoter(NodeId(node)),
                        WireChange::AddLearner(node) => ConfChange::AddLearner(NodeId(node)),
                        WireChange::Remove(node) => ConfChange::Remove(NodeId(node)),
                    })
                    .collect();
                Action::Change { shard: ShardId(shard), changes }
            }
            WireAction::TransferLeader { shard, to } => {
                Action::TransferLeader { shard: ShardId(shard), to: NodeId(to) }
            }
        }
    }
}

/// Why a call to another node failed.
#[derive(Debug, Error)]
enum PeerError {
    /// The node is not in this node's routing table (or this node is stopping).
    #[error("node {0} is not in the routing table")]
    Unknown(NodeId),
    /// Not sent at all.
    #[error("not sent: {0}")]
    NotSent(&'static str),
    /// No answer (a refused connection, the timeout).
    #[error("no answer: {0}")]
    Unreachable(String),
    /// An answer other than 200.
    #[error("HTTP {0}: {1}")]
    Status(u16, String),
    /// A 200 whose body is not what was asked for.
    #[error("a malformed answer: {0}")]
    Malformed(String),
}

/// The body of a 200 answer as `T`.
fn decode<T: serde::de::DeserializeOwned>(response: &ClientResponse) -> Result<T, String> {
    decode_answer(response).map_err(|error| error.to_string())
}

fn decode_answer<T: serde::de::DeserializeOwned>(response: &ClientResponse) -> Result<T, PeerError> {
    if response.status != 200 {
        return Err(PeerError::Status(response.status, response.text()));
    }
    serde_json::from_slice(&response.body).map_err(|error| PeerError::Malformed(error.to_string()))
}

/// The controller's calls to other nodes, over their HTTP API: a node's address is its entry in
/// this node's routing table.
pub struct HttpPeers {
    /// This node, once started (the controller runs only after).
    node: OnceLock<Weak<ShardNode>>,
    client: Client,
}

impl HttpPeers {
    async fn call(
        &self,
        method: &'static str,
        node: NodeId,
        path: &str,
        body: Vec<u8>,
    ) -> Result<ClientResponse, PeerError> {
        let this = self.node.get().and_then(Weak::upgrade).ok_or(PeerError::Unknown(node))?;
        let http = this.table().nodes().get(&node).map(|entry| entry.http).ok_or(PeerError::Unknown(node))?;
        drop(this);
        let (client, url) = (self.client.clone(), self.client.url(http, path));
        match tokio::task::spawn_blocking(move || client.request_once(method, &url, &body)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(PeerError::Unreachable(error.to_string())),
            Err(error) => Err(PeerError::Unreachable(error.to_string())),
        }
    }
}

impl Peers for HttpPeers {
    fn observe(&self, node: NodeId) -> BoxFuture<'_, Option<NodeReport>> {
        Box::pin(async move {
            let answer = self.call("GET", node, "/internal/observe", Vec::new()).await;
            match answer.and_then(|response| decode_answer::<WireReport>(&response)) {
                Ok(wire) => Some(NodeReport::from(wire)),
                Err(error) => {
                    debug!(node = node.0, %error, "observing a node");
                    None
                }
            }
        })
    }

    fn carry_out(&self, node: NodeId, action: Action) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let wire = WireAction::try_from(action).map_err(|error| error.to_string())?;
            let body = serde_json::to_vec(&wire).map_err(|error| error.to_string())?;
            let response = self.call("POST", node, "/internal/carry-out", body).await.map_err(|e| e.to_string())?;
            decode_answer::<Value>(&response).map(drop).map_err(|error| error.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_and_actions_cross_the_wire_unchanged() {
        let seen = Observed {
            leader: NodeId(2),
            term: Term(7),
            commit: Index(40),
            committed_members: Some([NodeId(1), NodeId(2), NodeId(4)].into()),
            voters: [NodeId(1), NodeId(2)].into(),
            joint: true,
            learners: [NodeId(4)].into(),
            lag_entries: [(NodeId(1), 3), (NodeId(4), 70)].into(),
            recently_active: [NodeId(2), NodeId(4)].into(),
            recovered: true,
        };
        let report = NodeReport { leading: [(ShardId(3), seen)].into(), held: [ShardId(3), ShardId(5)].into() };
        let text = serde_json::to_string(&WireReport::from(report.clone())).expect("encodes");
        let back: WireReport = serde_json::from_str(&text).expect("decodes");
        assert_eq!(NodeReport::from(back), report);

        let actions = [
            Action::AddLearner { shard: ShardId(1), node: NodeId(4) },
            Action::Change {
                shard: ShardId(2),
                changes: vec![ConfChange::AddVoter(NodeId(4)), ConfChange::Remove(NodeId(1))],
            },
            Action::TransferLeader { shard: ShardId(0), to: NodeId(3) },
        ];
        for action in actions {
            let wire = WireAction::try_from(action.clone()).expect("a shard action travels");
            let text = serde_json::to_string(&wire).expect("encodes");
            let back: WireAction = serde_json::from_str(&text).expect("decodes");
            assert_eq!(Action::from(back), action);
        }
        let table = Action::Table(TableCommand {
            expected_version: Some(1),
            change: TableChange::RemoveNode { id: NodeId(1) },
        });
        assert!(WireAction::try_from(table).is_err());
    }

    /// A redirect sets its own table version in the query and keeps the rest of it; the version
    /// is read back, and a malformed one is no version.
    #[test]
    fn a_redirect_carries_the_table_version() {
        let http = std::net::SocketAddr::from(([127, 0, 0, 1], 8082));
        let location = |uri: &str, version| {
            let answer = redirect_with_version("http", http, &Uri::try_from(uri).expect("a URI"), version);
            assert_eq!(answer.status(), StatusCode::TEMPORARY_REDIRECT);
            answer.headers()["location"].to_str().expect("text").to_owned()
        };
        assert_eq!(location("/kv/a", 7), "http://127.0.0.1:8082/kv/a?table_version=7");
        assert_eq!(
            location("/kv/a?consistency=lease&table_version=3", 9),
            "http://127.0.0.1:8082/kv/a?consistency=lease&table_version=9"
        );
        assert_eq!(location("/kv/a?table_version&x=1", 2), "http://127.0.0.1:8082/kv/a?x=1&table_version=2");
        let version = |uri: &str| requested_table_version(&Uri::try_from(uri).expect("a URI"));
        assert_eq!(version("/kv/a?consistency=lease&table_version=12"), Some(12));
        assert_eq!(version("/kv/a?table_version=x"), None);
        assert_eq!(version("/kv/a?table_versions=3"), None);
        assert_eq!(version("/kv/a"), None);
    }

    /// The saved node list is read in both of its formats, with the table's version when it has
    /// one; a damaged file is an error naming it.
    #[test]
    fn the_saved_nodes_are_read_with_their_version() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = dir.path().join(NODES_FILE);
        let entry = NodeEntry {
            raft: "127.0.0.1:9001".parse().expect("an address"),
            http: "127.0.0.1:8001".parse().expect("an address"),
            state: NodeState::Active,
        };
        assert_eq!(saved_nodes(&file).expect("no file").version, 0);
        write_atomically(&file, &NodesFile::Versioned { version: 12, nodes: vec![(3, entry)] }).expect("written");
        let saved = saved_nodes(&file).expect("read");
        assert_eq!((saved.version, saved.nodes), (12, [(NodeId(3), entry)].into()));
        write_atomically(&file, &vec![(3, entry)]).expect("written");
        let saved = saved_nodes(&file).expect("the first format");
        assert_eq!((saved.version, saved.nodes.len()), (0, 1));
        std::fs::write(&file, b"{not json").expect("written");
        assert!(saved_nodes(&file).is_err_and(|error| format!("{error:#}").contains(NODES_FILE)));
    }

    #[test]
    fn a_malformed_answer_is_an_error_not_a_panic() {
        let answer = |status, body: &str| ClientResponse { status, location: None, body: body.as_bytes().to_vec() };
        assert!(matches!(decode_answer::<WireReport>(&answer(200, "{not json")), Err(PeerError::Malformed(_))));
        assert!(matches!(
            decode_answer::<WireReport>(&answer(200, r#"{"leading":[{"shard":1}],"held":[]}"#)),
            Err(PeerError::Malformed(_))
        ));
        assert!(matches!(decode_answer::<WireReport>(&answer(200, r#"[]"#)), Err(PeerError::Malformed(_))));
        assert!(matches!(decode_answer::<WireReport>(&answer(403, "no")), Err(PeerError::Status(403, _))));
        let empty = decode_answer::<WireReport>(&answer(200, r#"{"leading":[],"held":[]}"#)).expect("an empty report");
        assert_eq!(NodeReport::from(empty), NodeReport::default());
        assert!(serde_json::from_str::<WireAction>(r#"{"action":"explode","shard":1}"#).is_err());
    }
}
