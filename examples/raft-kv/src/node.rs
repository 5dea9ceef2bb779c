//! `raft-kv serve`: one node: the durable store in its data directory, the TCP transport, the
//! Raft driver and the HTTP API; with `--join`, asks an existing cluster to add it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use raft_core::{Index, Membership, NodeId, Options};
use raft_net::{NodeConfig, NodeHandle, TcpOptions, TcpTransport, TokioConnector};
use raft_storage::{DiskError, DiskOptions, DiskStorage, Identity, StdFs};

use crate::client;
use crate::kv::{Kv, PeerAddresses, PeerBook, VALUE_BYTES_MAX};
use crate::removal::Removal;
use crate::server::{App, router};
use crate::signals::{StopSignals, watch_stdin};

/// The largest message: one value plus room for its key and encoding.
pub const MESSAGE_BYTES_MAX: u64 = 2 * VALUE_BYTES_MAX as u64;
/// Snapshot the map every this many applied entries.
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 10_000;
/// How many times in a row a joining node asks the cluster to add or promote it without making
/// progress (its applied index not moving) before it gives up.
pub const JOIN_ATTEMPTS_MAX: u32 = 120;
/// How long a joining node waits between two requests.
pub const JOIN_RETRY: Duration = Duration::from_millis(500);
/// How long the runtime waits, once the node has stopped, for blocking work (a join request on
/// its way) before the process exits anyway.
pub const EXIT_GRACE: Duration = Duration::from_secs(1);

/// `raft-kv serve`.
#[derive(Args, Clone)]
pub struct ServeArgs {
    /// This node's id (1 or more).
    #[arg(long)]
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
    #[arg(long, value_delimiter = ',')]
    pub peers: Vec<String>,
    /// The data directory.
    #[arg(long, default_value = "data")]
    pub data: PathBuf,
    /// Join the cluster of this node (http://HOST:PORT) as a learner, then become a voter.
    #[arg(long, conflicts_with = "bootstrap")]
    pub join: Option<String>,
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
    #[arg(long, default_value_t = 50)]
    pub tick_ms: u64,
    /// Stop when standard input ends (the cluster launcher starts its nodes so, so that they
    /// stop when it does, however it ends).
    #[arg(long)]
    pub exit_with_stdin: bool,
}

/// Parses `ID=RAFT_ADDR=HTTP_ADDR`.
pub fn parse_peer(text: &str) -> Result<PeerAddresses, String> {
    let parts: Vec<&str> = text.split('=').collect();
    let [id, raft, http] = parts[..] else { return Err(format!("peer {text:?}: want ID=RAFT_ADDR=HTTP_ADDR")) };
    let id = id.parse().map_err(|_| format!("peer {text:?}: bad id"))?;
    let raft = raft.parse().map_err(|_| format!("peer {text:?}: bad Raft address"))?;
    let http = http.parse().map_err(|_| format!("peer {text:?}: bad HTTP address"))?;
    Ok(PeerAddresses { id: NodeId(id), raft, http })
}

/// Runs the node until SIGINT (Ctrl-C), SIGTERM or SIGHUP, or the end of stdin with
/// `--exit-with-stdin`.
pub fn run(args: ServeArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let outcome = runtime.block_on(serve(args));
    runtime.shutdown_timeout(EXIT_GRACE);
    outcome
}

fn options() -> Result<Options, String> {
    Options::builder()
        .election_ticks(10)
        .heartbeat_ticks(2)
        .pre_vote(true)
        .check_quorum(true)
        .lease_reads(true)
        .message_bytes_max(MESSAGE_BYTES_MAX)
        .apply_bytes_max(4 * MESSAGE_BYTES_MAX)
        .build()
        .map_err(|error| error.to_string())
}

/// Opens the store in `args.data`, or creates it: with `peers` as voters when bootstrapping a
/// new cluster, with no member when joining one. Otherwise a missing store is an error (see
/// `ServeArgs::bootstrap`).
fn storage(args: &ServeArgs, peers: &[PeerAddresses]) -> Result<DiskStorage, String> {
    let identity = Identity { cluster_id: args.cluster_id, node_id: NodeId(args.id) };
    match DiskStorage::open(StdFs, &args.data, identity, DiskOptions::default()) {
        Ok(storage) => Ok(storage),
        Err(DiskError::NotInitialized(_)) => {
            let membership = if args.join.is_some() {
                Membership::default()
            } else if args.bootstrap {
                Membership::new(peers.iter().map(|peer| peer.id))
            } else {
                return Err(format!(
                    "no store in {}: node {} has never run there. Start a new cluster's initial \
                     members with --bootstrap (first start only), or join an existing cluster with \
                     --join. If this node's data was lost, do not bootstrap it again (it could vote \
                     twice in one term): remove it from the cluster and join under a new id",
                    args.data.display(),
                    args.id
                ));
            };
            DiskStorage::create(StdFs, &args.data, identity, membership, DiskOptions::default())
                .map_err(|error| error.to_string())
        }
        Err(error) => Err(format!("opening {}: {error}", args.data.display())),
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    crate::server::install_metrics()?;
    let mut signals = StopSignals::new().map_err(|error| format!("listening for signals: {error}"))?;
    let stdin = if args.exit_with_stdin {
        Some(watch_stdin().map_err(|error| format!("watching stdin: {error}"))?)
    } else {
        None
    };
    if args.join.as_ref().is_some_and(|url| !url.starts_with("http://")) {
        return Err("--join wants the HTTP address of a member: http://HOST:PORT".to_owned());
    }
    let id = NodeId(args.id);
    let mut peers = args.peers.iter().map(|text| parse_peer(text)).collect::<Result<Vec<_>, _>>()?;
    peers.retain(|peer| peer.id != id);
    let me = PeerAddresses { id, raft: args.raft_advertise.unwrap_or(args.raft), http: args.http };
    peers.push(me);
    let storage = storage(&args, &peers)?;
    let raft_addresses: BTreeMap<NodeId, SocketAddr> = peers.iter().map(|peer| (peer.id, peer.raft)).collect();
    let listener = tokio::net::TcpListener::bind(args.raft).await.map_err(|e| format!("bind {}: {e}", args.raft))?;
    let others = raft_addresses.iter().filter(|(peer, _)| **peer != id).map(|(peer, address)| (*peer, *address));
    let (transport, inbound) =
        TcpTransport::start(args.cluster_id, id, listener, TokioConnector, others.collect(), TcpOptions::default())
            .map_err(|error| error.to_string())?;
    let transport = Arc::new(transport);
    let book = PeerBook::open(id, &peers, Arc::clone(&transport), &args.data).map_err(|error| error.to_string())?;
    let mut config = NodeConfig::new(id, options()?);
    config.tick_interval = Duration::from_millis(args.tick_ms.max(1));
    config.addresses = raft_addresses;
    config.snapshot_every_entries = SNAPSHOT_EVERY_ENTRIES;
    let handle = raft_net::start(config, storage, Arc::clone(&transport), inbound, Kv::new(book.clone()))
        .map_err(|error| error.to_string())?;
    let http = tokio::net::TcpListener::bind(args.http).await.map_err(|e| format!("bind {}: {e}", args.http))?;
    println!("node {id}: http http://{} raft {} data {}", args.http, args.raft, args.data.display());
    if let Some(url) = &args.join {
        tokio::spawn(join(url.trim_end_matches('/').to_owned(), me, handle.clone(), book.clone()));
    }
    let removal = Removal::watch(handle.clone(), id, &args.data);
    let app = App { handle: handle.clone(), book, removal };
    let served = axum::serve(http, router(app)).with_graceful_shutdown(async move {
        let reason = match stdin {
            Some(stdin) => tokio::select! {
                reason = signals.recv() => reason,
                _ = stdin => "the end of stdin",
            },
            None => signals.recv().await,
        };
        println!("node {id}: stopping ({reason})");
    });
    let outcome = served.await.map_err(|error| error.to_string());
    handle.shutdown().await;
    outcome
}

/// Joins the cluster at `url`: asks it to add this node as a learner and, once this node has
/// caught up (the leader refuses to promote it before), to promote it to voter. Each round
/// first learns from `url` where the members listen, since the transport accepts and reaches
/// only known peers. What to ask is decided by this node's own log, so starting again with the
/// same `--join` (after a crash, say) resumes where the last run stopped, and asks nothing once
/// the log makes this node a voter.
async fn join(url: String, me: PeerAddresses, handle: NodeHandle<Kv>, book: PeerBook) {
    let id = me.id;
    let (mut attempts, mut applied_seen) = (0, Index(0));
    loop {
        let (url_copy, book_copy) = (url.clone(), book.clone());
        // An error means the runtime is stopping.
        let Ok(()) = tokio::task::spawn_blocking(move || learn_addresses(&url_copy, &book_copy, id)).await else {
            return;
        };
        let Ok(status) = handle.status().await else { return }; // The node stopped.
        if status.membership.is_voter(id) {
            println!("node {id}: a voter; not asking to join");
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
        let outcome =
            tokio::task::spawn_blocking(move || client::request("POST", &members, body.to_string().as_bytes()));
        match outcome.await {
            Ok(Ok(response)) if response.status == 200 => {
                println!("node {id}: {step}: {}", response.text());
                if promote {
                    return;
                }
            }
            Ok(Ok(response)) => eprintln!("node {id}: {step}: HTTP {} {}", response.status, response.text()),
            Ok(Err(error)) => eprintln!("node {id}: {step}: {url}: {error}"),
            Err(_) => return, // The runtime is stopping.
        }
        attempts += 1;
        if attempts >= JOIN_ATTEMPTS_MAX {
            eprintln!("node {id}: gave up joining (start again with --join to retry)");
            return;
        }
        tokio::time::sleep(JOIN_RETRY).await;
    }
}

/// Adds to `book` (and so to the transport) every member `url`'s status lists. Best effort: on
/// failure the next round tries again.
fn learn_addresses(url: &str, book: &PeerBook, own: NodeId) {
    let Ok(response) = client::request("GET", &format!("{url}/cluster/status"), &[]) else { return };
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
