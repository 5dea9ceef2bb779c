//! `raft-kv serve`: one node: the durable store in its data directory, the TCP transport, the
//! Raft driver and the HTTP API; with `--join`, asks an existing cluster to add it.
//!
//! The node runs until it is asked to stop (SIGINT, SIGTERM, SIGHUP, or the end of stdin with
//! `--exit-with-stdin`: exit code 0) or until it stops by itself: a fail-stop (its storage
//! failed, its state machine panicked or could not restore a snapshot). Then it logs the reason
//! and exits with [`EXIT_NODE_FAILED`], so that a supervisor (systemd's `Restart=on-failure`, the
//! cluster launcher's report) notices. A node removed from the cluster keeps running and answers
//! 410 (see `removal.rs`): that is not a failure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use raft_core::{Index, Membership, NodeId};
use raft_net::{NodeConfig, NodeEvent, NodeHandle, StopReason, TcpOptions, TcpTransport, TokioConnector};
use raft_storage::{DiskError, DiskOptions, DiskStorage, Identity, StdFs};
use thiserror::Error;
use tokio::sync::broadcast::error::RecvError;
use tracing::{error, info, warn};

use raft_kv::certs;
use raft_kv::tls::{NodeTls, TlsListener};

use crate::auth::{Credentials, Token};
use crate::client::{Client, ClientOptions};
use crate::kv::{Kv, PeerAddresses, PeerBook};
use crate::logs::LogFormat;
use crate::removal::Removal;
use crate::server::{App, router};
use crate::signals::{StopSignals, watch_stdin};

use crate::kv::SNAPSHOT_EVERY_ENTRIES;
/// How many times in a row a joining node asks the cluster to add or promote it without making
/// progress (its applied index not moving) before it gives up.
pub const JOIN_ATTEMPTS_MAX: u32 = 120;
/// How long a joining node waits between two requests.
pub const JOIN_RETRY: Duration = Duration::from_millis(500);
/// How long the runtime waits, once the node has stopped, for blocking work (a join request on
/// its way) before the process exits anyway.
pub const EXIT_GRACE: Duration = Duration::from_secs(1);
/// How long the HTTP server has, once told to stop, to finish the requests in flight before the
/// process goes on stopping without them.
pub const HTTP_STOP_GRACE: Duration = Duration::from_secs(10);
/// The process's exit code when the node stopped by itself (fail-stop), not because it was asked
/// to.
pub const EXIT_NODE_FAILED: u8 = 3;

/// The error `serve` ends with when the node stopped by itself (its [`StopReason`]); the process
/// exits with [`EXIT_NODE_FAILED`].
#[derive(Debug, Error)]
#[error("node {id} stopped by itself (exit code {EXIT_NODE_FAILED}): {reason}")]
pub struct NodeFailed {
    /// The node.
    pub id: NodeId,
    /// Why it stopped.
    pub reason: StopReason,
}

/// `raft-kv serve`.
#[derive(Args, Clone)]
pub struct ServeArgs {
    /// This node's id (1 or more).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub id: u64,
    /// Where the Raft transport listens.
    #[arg(long)]
    pub raft: SocketAddr,
    /// Where the HTTP API listens.
    #[arg(long)]
    pub http: SocketAddr,
    /// The Raft address the other members dial to reach this node, when it is not `--raft` (a
    /// proxy, a NAT): what this node registers when it joins, and its own entry in the book.
    #[arg(long)]
    pub raft_advertise: Option<SocketAddr>,
    /// The other members, as ID=RAFT_ADDR=HTTP_ADDR (repeat, or separate with commas).
    #[arg(long, value_delimiter = ',', value_parser = parse_peer)]
    pub peers: Vec<PeerAddresses>,
    /// The data directory.
    #[arg(long, default_value = "data")]
    pub data: PathBuf,
    /// Join the cluster of this node (http://HOST:PORT, or https://HOST:PORT with --tls) as a
    /// learner, then become a voter. Needs the admin token when the cluster has one (--tls).
    #[arg(long, conflicts_with = "bootstrap", value_parser = parse_join)]
    pub join: Option<String>,
    /// Serve the HTTP API over HTTPS with the files of DIR (written by `raft-kv certs`):
    /// `ca.pem`, `node-ID.pem`, `node-ID.key`, and `admin.token`, which admin endpoints then
    /// need. Without it the API is plain HTTP: for local experiments only.
    #[arg(long, value_name = "DIR")]
    pub tls: Option<PathBuf>,
    /// The admin bearer token, which membership changes and leadership transfer need (default
    /// with --tls: DIR/admin.token; without either, those endpoints are open).
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// A data bearer token: with it, `/kv/...`, `/cluster/status` and `/metrics` need it (or the
    /// admin token); without it they are open. Needs an admin token too.
    #[arg(long, value_name = "FILE")]
    pub data_token_file: Option<PathBuf>,
    /// Start a new cluster: when the data directory holds no store, create one whose voters are
    /// this node and `--peers`. Only for the first start of a new cluster's initial members:
    /// without it, a node that finds no store refuses to start, so that a voter whose data was
    /// lost cannot come back as a fresh voter and vote a second time in a term it already voted
    /// in (docs/pitfalls.md #27). Such a node must be removed and join again under a new id.
    #[arg(long)]
    pub bootstrap: bool,
    /// The cluster's id (guards the data directory against another cluster's).
    #[arg(long, default_value_t = 1)]
    pub cluster_id: u64,
    /// The length of one Raft tick, in milliseconds (elections take 10 to 20 ticks).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub tick_ms: u64,
    /// Stop when standard input ends (the cluster launcher starts its nodes so, so that they
    /// stop when it does, however it ends).
    #[arg(long)]
    pub exit_with_stdin: bool,
    /// How log lines look on stderr (`RUST_LOG` filters them; default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Run a sharded node (see docs/sharding.md): keys spread over S shards, each its own Raft
    /// group, placed on `--replicas` nodes each. S is fixed when the cluster is created (with
    /// `--bootstrap`); a joining or restarting node takes the table's.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(raft_kv::shards::SHARDS_MAX)))]
    pub shards: Option<u32>,
    /// With `--shards`: the replicas of each shard (default 3, or the node count if smaller).
    #[arg(long, requires = "shards", value_parser = clap::value_parser!(u8).range(1..=raft_kv::shards::REPLICAS_MAX as i64))]
    pub replicas: Option<u8>,
    /// With `--shards`: seconds a node may stay silent (and at least three controller rounds)
    /// before the controller marks it failed and re-creates its replicas on other nodes.
    #[arg(long, requires = "shards", value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub failed_after: u64,
}

/// Parses `ID=RAFT_ADDR=HTTP_ADDR` (the value parser of `--peers`).
pub fn parse_peer(text: &str) -> Result<PeerAddresses, String> {
    let parts: Vec<&str> = text.split('=').collect();
    let [id, raft, http] = parts[..] else { return Err(format!("{text:?} is not ID=RAFT_ADDR=HTTP_ADDR")) };
    let id = match id.parse::<u64>() {
        Ok(id) if id > 0 => id,
        _ => return Err(format!("{text:?}: the id {id:?} is not a number of 1 or more")),
    };
    let raft = raft.parse().map_err(|error| format!("{text:?}: the Raft address {raft:?}: {error}"))?;
    let http = http.parse().map_err(|error| format!("{text:?}: the HTTP address {http:?}: {error}"))?;
    Ok(PeerAddresses { id: NodeId(id), raft, http })
}

/// Checks `--join`'s `http://HOST:PORT` or `https://HOST:PORT` (a trailing `/` is dropped).
pub fn parse_join(text: &str) -> Result<String, String> {
    if !(text.starts_with("http://") || text.starts_with("https://")) {
        return Err("want the HTTP address of a member: http://HOST:PORT (https://HOST:PORT with --tls)".to_owned());
    }
    Ok(text.trim_end_matches('/').to_owned())
}

/// Runs the node until SIGINT (Ctrl-C), SIGTERM or SIGHUP, or the end of stdin with
/// `--exit-with-stdin`, or until it stops by itself ([`NodeFailed`]).
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    let outcome = runtime.block_on(serve(args));
    runtime.shutdown_timeout(EXIT_GRACE);
    outcome
}

/// Opens the store in `args.data`, or creates it: with `peers` as voters when bootstrapping a
/// new cluster, with no member when joining one. Otherwise a missing store is an error (see
/// `ServeArgs::bootstrap`).
fn storage(args: &ServeArgs, peers: &[PeerAddresses]) -> anyhow::Result<DiskStorage> {
    let identity = Identity { cluster_id: args.cluster_id, node_id: NodeId(args.id) };
    match DiskStorage::open(StdFs, &args.data, identity, DiskOptions::default()) {
        Ok(storage) => Ok(storage),
        Err(DiskError::NotInitialized(_)) => {
            let membership = if args.join.is_some() {
                Membership::default()
            } else if args.bootstrap {
                Membership::new(peers.iter().map(|peer| peer.id))
            } else {
                bail!(
                    "no store in {}: node {} has never run there. Start a new cluster's initial \
                     members with --bootstrap (first start only), or join an existing cluster with \
                     --join. If this node's data was lost, do not bootstrap it again (it could vote \
                     twice in one term): remove it from the cluster and join under a new id",
                    args.data.display(),
                    args.id
                );
            };
            DiskStorage::create(StdFs, &args.data, identity, membership, DiskOptions::default())
                .with_context(|| format!("creating a store in {}", args.data.display()))
        }
        Err(error) => Err(error).with_context(|| format!("opening {}", args.data.display())),
    }
}

/// What the HTTP side of a node uses: its TLS files (none in plain mode), the tokens it accepts,
/// and how it talks to other members (`--join`).
pub(crate) struct Security {
    pub(crate) tls: Option<NodeTls>,
    pub(crate) credentials: Credentials,
    pub(crate) client: ClientOptions,
}

/// Reads `--tls`, `--admin-token-file` and `--data-token-file`, before anything starts, so that a
/// missing file stops the node at once.
pub(crate) fn security(args: &ServeArgs) -> anyhow::Result<Security> {
    let tls = args.tls.as_ref().map(|dir| NodeTls::in_dir(dir, args.id));
    let admin_file =
        args.admin_token_file.clone().or_else(|| args.tls.as_ref().map(|dir| dir.join(certs::ADMIN_TOKEN)));
    let admin = admin_file.as_deref().map(Token::read).transpose()?;
    let data = args.data_token_file.as_deref().map(Token::read).transpose()?;
    let credentials = Credentials::new(admin, data)?;
    let client = ClientOptions { ca: tls.as_ref().map(|tls| tls.ca.clone()), token_file: admin_file };
    if let Some(url) = &args.join
        && !url.starts_with(&format!("{}://", client.scheme()))
    {
        bail!(
            "--join {url}: with{} --tls, the members serve {}://",
            if tls.is_some() { "" } else { "out" },
            client.scheme()
        );
    }
    Ok(Security { tls, credentials, client })
}

/// The HTTPS configuration with `--tls`; without it, a warning that plain mode is for local
/// experiments only.
pub(crate) fn server_tls(security: &Security, id: NodeId) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    match &security.tls {
        Some(tls) => Ok(Some(raft_kv::tls::server_config(tls).context("the HTTPS configuration (--tls)")?)),
        None => {
            warn!(
                node = id.0,
                "plain mode, for local experiments only: the HTTP API and the Raft transport are not \
                 encrypted and nodes are not authenticated{}. Use --tls DIR (see `raft-kv certs`) otherwise",
                if security.credentials.admin.is_some() { "" } else { ", and admin endpoints need no token" }
            );
            Ok(None)
        }
    }
}

/// The HTTP server's task (HTTPS with `tls`), and the sender that stops it gracefully (dropping
/// it stops it too).
pub(crate) fn spawn_http(
    http: tokio::net::TcpListener,
    router: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> anyhow::Result<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let stopped_http = async move {
        let _ = http_stopped.await; // A dropped sender stops too.
    };
    let server: std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> = match tls {
        Some(config) => {
            let listener = TlsListener::new(http, config).context("the HTTPS listener")?;
            Box::pin(axum::serve(listener, router).with_graceful_shutdown(stopped_http).into_future())
        }
        None => Box::pin(axum::serve(http, router).with_graceful_shutdown(stopped_http).into_future()),
    };
    Ok((stop_http, tokio::spawn(server)))
}

/// Ends when stdin does (with `--exit-with-stdin`); never otherwise.
pub(crate) async fn stdin_ended(stdin: Option<tokio::sync::oneshot::Receiver<()>>) {
    match stdin {
        Some(stdin) => {
            let _ = stdin.await; // Ends (with an error) when stdin does.
        }
        None => std::future::pending().await,
    }
}

/// Why `serve` stops.
enum Ending {
    /// Asked to (a signal, the end of stdin).
    Asked(&'static str),
    /// The node stopped by itself.
    Failed(StopReason),
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.shards.is_some() {
        return crate::sharded::serve(args).await;
    }
    // Before the store opens: handles registered before a recorder exists record nothing.
    crate::server::install_metrics()?;
    let mut signals = StopSignals::new().context("listening for signals")?;
    let stdin = if args.exit_with_stdin { Some(watch_stdin().context("watching stdin")?) } else { None };
    let id = NodeId(args.id);
    let security = security(&args)?;
    let server_tls = server_tls(&security, id)?;
    let mut peers = args.peers.clone();
    peers.retain(|peer| peer.id != id);
    let me = PeerAddresses { id, raft: args.raft_advertise.unwrap_or(args.raft), http: args.http };
    peers.push(me);
    // Checked before the store is created: a certificate of another node or cluster stops here.
    let transport_tls = match &security.tls {
        Some(tls) => Some(tls.transport_config(args.cluster_id, id)?),
        None => None,
    };
    let storage = storage(&args, &peers)?;
    let raft_addresses: BTreeMap<NodeId, SocketAddr> = peers.iter().map(|peer| (peer.id, peer.raft)).collect();
    let listener = tokio::net::TcpListener::bind(args.raft).await.with_context(|| format!("binding {}", args.raft))?;
    // With `--tls`, the Raft transport is mutual TLS too: each node presents its certificate
    // (naming `raft://CLUSTER_ID/node/ID`) and accepts only peers whose certificate names the
    // node they claim to be, of this cluster, signed by the CA.
    let others: BTreeMap<NodeId, SocketAddr> =
        raft_addresses.iter().filter(|(peer, _)| **peer != id).map(|(peer, address)| (*peer, *address)).collect();
    let (transport, inbound) = match transport_tls {
        Some(tls) => {
            TcpTransport::start_tls(args.cluster_id, id, listener, TokioConnector, others, TcpOptions::default(), tls)
        }
        None => TcpTransport::start(args.cluster_id, id, listener, TokioConnector, others, TcpOptions::default()),
    }
    .context("starting the Raft transport")?;
    let transport = Arc::new(transport);
    let book = PeerBook::open(id, &peers, Arc::clone(&transport), &args.data).context("opening the peer book")?;
    let mut config = NodeConfig::new(id, crate::kv::raft_options().context("the Raft options")?);
    config.tick_interval = Duration::from_millis(args.tick_ms);
    config.addresses = raft_addresses;
    config.snapshot_every_entries = SNAPSHOT_EVERY_ENTRIES;
    let handle = raft_net::start(config, storage, Arc::clone(&transport), inbound, Kv::new(book.clone()))
        .context("starting the node")?;
    let http = tokio::net::TcpListener::bind(args.http).await.with_context(|| format!("binding {}", args.http))?;
    let scheme = security.client.scheme();
    info!(node = id.0, "serving: http {scheme}://{} raft {} data {}", args.http, args.raft, args.data.display());
    if let Some(url) = &args.join {
        let client = Client::new(&security.client).context("the client of --join")?;
        tokio::spawn(join(client, url.clone(), me, handle.clone(), book.clone()));
    }
    let removal = Removal::watch(handle.clone(), id, &args.data);
    let app = App { handle: handle.clone(), book, removal, scheme };
    let router = router(app, security.credentials);
    let (stop_http, mut server) = spawn_http(http, router, server_tls)?;
    let stdin = stdin_ended(stdin);
    let ending = tokio::select! {
        reason = signals.recv() => Ending::Asked(reason),
        () = stdin => Ending::Asked("the end of stdin"),
        reason = stopped(&handle) => Ending::Failed(reason),
        served = &mut server => {
            handle.shutdown().await;
            return match served {
                Ok(served) => served.context("serving HTTP"),
                Err(error) => Err(error).context("the HTTP server's task"),
            };
        }
    };
    match &ending {
        Ending::Asked(reason) => info!(node = id.0, "stopping ({reason})"),
        Ending::Failed(reason) => {
            error!(node = id.0, "the node stopped by itself, exiting with code {EXIT_NODE_FAILED}: {reason}")
        }
    }
    drop(stop_http);
    let served = tokio::time::timeout(HTTP_STOP_GRACE, &mut server).await;
    if served.is_err() {
        warn!(node = id.0, "HTTP requests still in flight after {HTTP_STOP_GRACE:?}; stopping anyway");
        server.abort();
    }
    handle.shutdown().await;
    match ending {
        Ending::Asked(_) => Ok(()),
        Ending::Failed(reason) => Err(NodeFailed { id, reason }.into()),
    }
}

/// Waits until the node stops by itself and says why. A node that is shut down (only `serve`
/// does that, once it has decided to stop) never ends this wait.
pub(crate) async fn stopped<SM: raft_net::StateMachine>(handle: &NodeHandle<SM>) -> StopReason {
    // Subscribed before the first look, so that a stop between the two is not missed.
    let mut events = handle.events();
    loop {
        let reason = match handle.stop_reason() {
            Some(reason) => Some(reason),
            None => match events.recv().await {
                Ok(NodeEvent::Stopped(reason)) => Some(reason),
                Ok(_) | Err(RecvError::Lagged(_)) => None, // A missed stop is seen by the next look.
                Err(RecvError::Closed) => std::future::pending().await, // The handle keeps the sender.
            },
        };
        match reason {
            Some(StopReason::Shutdown) => std::future::pending::<()>().await,
            Some(reason) => return reason,
            None => {}
        }
    }
}

/// Joins the cluster at `url`: asks it to add this node as a learner and, once this node has
/// caught up (the leader refuses to promote it before), to promote it to voter. Each round
/// first learns from `url` where the members listen, since the transport accepts and reaches
/// only known peers. What to ask is decided by this node's own log, so starting again with the
/// same `--join` (after a crash, say) resumes where the last run stopped, and asks nothing once
/// the log makes this node a voter.
async fn join(client: Client, url: String, me: PeerAddresses, handle: NodeHandle<Kv>, book: PeerBook) {
    let id = me.id;
    let (mut attempts, mut applied_seen) = (0, Index(0));
    loop {
        let (client_copy, url_copy, book_copy) = (client.clone(), url.clone(), book.clone());
        // An error means the runtime is stopping.
        let learn = move || learn_addresses(&client_copy, &url_copy, &book_copy, id);
        let Ok(()) = tokio::task::spawn_blocking(learn).await else {
            return;
        };
        let Ok(status) = handle.status().await else { return }; // The node stopped.
        if status.membership.is_voter(id) {
            info!(node = id.0, "a voter; not asking to join");
            return;
        }
        if status.applied > applied_seen {
            (attempts, applied_seen) = (0, status.applied); // Catching up is progress.
        }
        let promote = status.membership.learners.contains(&id);
        let (step, body) = if promote {
            ("promote", serde_json::json!({ "action": "promote", "id": id.0 }))
        } else {
            (
                "add as learner",
                serde_json::json!({ "action": "add_learner", "id": id.0, "raft": me.raft, "http": me.http }),
            )
        };
        let members = format!("{url}/cluster/members");
        let client = client.clone();
        let outcome =
            tokio::task::spawn_blocking(move || client.request("POST", &members, body.to_string().as_bytes()));
        match outcome.await {
            Ok(Ok(response)) if response.status == 200 => {
                info!(node = id.0, "{step}: {}", response.text());
                if promote {
                    return;
                }
            }
            Ok(Ok(response)) => warn!(node = id.0, "{step}: HTTP {} {}", response.status, response.text()),
            Ok(Err(error)) => warn!(node = id.0, "{step}: {url}: {error:#}"),
            Err(_) => return, // The runtime is stopping.
        }
        attempts += 1;
        if attempts >= JOIN_ATTEMPTS_MAX {
            error!(node = id.0, "gave up joining (start again with --join to retry)");
            return;
        }
        tokio::time::sleep(JOIN_RETRY).await;
    }
}

/// Adds to `book` (and so to the transport) every member `url`'s status lists. Best effort: on
/// failure the next round tries again.
fn learn_addresses(client: &Client, url: &str, book: &PeerBook, own: NodeId) {
    let Ok(response) = client.request("GET", &format!("{url}/cluster/status"), &[]) else { return };
    let Ok(status) = serde_json::from_slice::<serde_json::Value>(&response.body) else { return };
    let Some(addresses) = status.get("addresses").and_then(serde_json::Value::as_object) else { return };
    for (id, address) in addresses {
        let id = id.parse().map(NodeId);
        let raft = address.get("raft").and_then(serde_json::Value::as_str).and_then(|text| text.parse().ok());
        let http = address.get("http").and_then(serde_json::Value::as_str).and_then(|text| text.parse().ok());
        if let (Ok(id), Some(raft), Some(http)) = (id, raft, http)
            && id != own
        {
            book.add(PeerAddresses { id, raft, http });
        }
    }
}
