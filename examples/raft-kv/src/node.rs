//! `raft-kv serve`: one node: the durable store in its data directory, the TCP transport, the
//! Raft driver and the HTTP API; with `--join`, asks an existing cluster to add it.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use raft_core::{Membership, NodeId, Options};
use raft_net::{NodeConfig, TcpOptions, TcpTransport, TokioConnector};
use raft_storage::{DiskError, DiskOptions, DiskStorage, Identity, StdFs};

use crate::client;
use crate::kv::{Kv, PeerAddresses, PeerBook, VALUE_BYTES_MAX};
use crate::server::{App, router};

/// The largest message: one value plus room for its key and encoding.
pub const MESSAGE_BYTES_MAX: u64 = 2 * VALUE_BYTES_MAX as u64;
/// Snapshot the map every this many applied entries.
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 10_000;
/// How long a joining node keeps asking the cluster to add it.
pub const JOIN_ATTEMPTS_MAX: u32 = 120;

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
    /// The other members, as ID=RAFT_ADDR=HTTP_ADDR (repeat, or separate with commas).
    #[arg(long, value_delimiter = ',')]
    pub peers: Vec<String>,
    /// The data directory.
    #[arg(long, default_value = "data")]
    pub data: PathBuf,
    /// Join the cluster of this node (http://HOST:PORT) as a learner, then become a voter.
    #[arg(long)]
    pub join: Option<String>,
    /// The cluster's id (guards the data directory against another cluster's).
    #[arg(long, default_value_t = 1)]
    pub cluster_id: u64,
    /// The length of one Raft tick, in milliseconds (elections take 10 to 20 ticks).
    #[arg(long, default_value_t = 50)]
    pub tick_ms: u64,
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

/// Runs the node until Ctrl-C.
pub fn run(args: ServeArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(serve(args))
}

/// A fresh seed for this incarnation (raft-core wants one per start): OS-seeded hashing.
fn fresh_seed() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
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
        .rng_seed(fresh_seed())
        .build()
        .map_err(|error| error.to_string())
}

/// Opens the store in `args.data`, or creates it (with `voters`, or no member when joining).
fn storage(args: &ServeArgs, peers: &[PeerAddresses]) -> Result<DiskStorage, String> {
    let identity = Identity { cluster_id: args.cluster_id, node_id: NodeId(args.id) };
    match DiskStorage::open(StdFs, &args.data, identity, DiskOptions::default()) {
        Ok(storage) => Ok(storage),
        Err(DiskError::NotInitialized(_)) => {
            let membership = if args.join.is_some() {
                Membership::default()
            } else {
                Membership::new(peers.iter().map(|peer| peer.id))
            };
            DiskStorage::create(StdFs, &args.data, identity, membership, DiskOptions::default())
                .map_err(|error| error.to_string())
        }
        Err(error) => Err(format!("opening {}: {error}", args.data.display())),
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let id = NodeId(args.id);
    let mut peers = args.peers.iter().map(|text| parse_peer(text)).collect::<Result<Vec<_>, _>>()?;
    peers.retain(|peer| peer.id != id);
    peers.push(PeerAddresses { id, raft: args.raft, http: args.http });
    let storage = storage(&args, &peers)?;
    let raft_addresses: BTreeMap<NodeId, SocketAddr> = peers.iter().map(|peer| (peer.id, peer.raft)).collect();
    let listener = tokio::net::TcpListener::bind(args.raft).await.map_err(|e| format!("bind {}: {e}", args.raft))?;
    let others = raft_addresses.iter().filter(|(peer, _)| **peer != id).map(|(peer, address)| (*peer, *address));
    let (transport, inbound) =
        TcpTransport::start(args.cluster_id, id, listener, TokioConnector, others.collect(), TcpOptions::default())
            .map_err(|error| error.to_string())?;
    let transport = Arc::new(transport);
    let book = PeerBook::new(id, &peers, Arc::clone(&transport));
    let mut config = NodeConfig::new(id, options()?);
    config.tick_interval = Duration::from_millis(args.tick_ms.max(1));
    config.addresses = raft_addresses;
    config.snapshot_every_entries = SNAPSHOT_EVERY_ENTRIES;
    let handle = raft_net::start(config, storage, Arc::clone(&transport), inbound, Kv::new(book.clone()))
        .map_err(|error| error.to_string())?;
    let http = tokio::net::TcpListener::bind(args.http).await.map_err(|e| format!("bind {}: {e}", args.http))?;
    println!("node {id}: http http://{} raft {} data {}", args.http, args.raft, args.data.display());
    if let Some(url) = args.join.clone() {
        let (raft, http_address) = (args.raft, args.http);
        tokio::task::spawn_blocking(move || join(&url, id, raft, http_address));
    }
    let app = App { handle: handle.clone(), book };
    let served = axum::serve(http, router(app)).with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await; // An error means no signal handler: run on.
    });
    let outcome = served.await.map_err(|error| error.to_string());
    handle.shutdown().await;
    outcome
}

/// Asks the cluster at `url` to add this node as a learner, then to promote it.
fn join(url: &str, id: NodeId, raft: SocketAddr, http: SocketAddr) {
    let add = serde_json::json!({ "action": "add_learner", "id": id.0, "raft": raft, "http": http });
    let promote = serde_json::json!({ "action": "promote", "id": id.0 });
    for (step, body) in [("add as learner", add), ("promote", promote)] {
        let mut attempts = 0;
        loop {
            let outcome = client::request("POST", &format!("{url}/cluster/members"), body.to_string().as_bytes());
            match outcome {
                // 400: no effect, the step was done already (by an earlier attempt or run).
                Ok(response) if response.status == 200 || response.status == 400 => {
                    println!("node {id}: {step}: {}", response.text());
                    break;
                }
                Ok(response) => eprintln!("node {id}: {step}: HTTP {} {}", response.status, response.text()),
                Err(error) => eprintln!("node {id}: {step}: {error}"),
            }
            attempts += 1;
            if attempts >= JOIN_ATTEMPTS_MAX {
                eprintln!("node {id}: gave up joining");
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}
