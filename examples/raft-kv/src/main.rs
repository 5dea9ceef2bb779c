//! `raft-kv`: a replicated key-value service over HTTP, built on the raft-net driver, the TCP
//! transport and the durable store. See the README for the commands and the HTTP API.
//!
//! Exit codes: 0 when the command succeeded or the node or cluster was asked to stop (a signal,
//! the end of stdin with `--exit-with-stdin`); 1 when it failed (a bad data directory, a port in
//! use, an HTTP error of a client command); 2 for a bad command line (clap's usage error);
//! [`node::EXIT_NODE_FAILED`] (3) when a node stopped by itself (fail-stop: its storage failed,
//! its state machine panicked...), so that a supervisor restarts it.
#![forbid(unsafe_code)]

mod auth;
mod client;
mod cluster;
mod logs;
mod node;
mod recover;
mod server;
mod sharded;
mod signals;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use raft_kv::certs::{self, CertsRequest};
use raft_kv::{kv, removal};

use crate::client::{Client, ClientOptions};

/// The command line.
#[derive(Parser)]
#[command(name = "raft-kv", about = "A replicated key-value service on Raft")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What to do.
#[derive(Subcommand)]
enum Command {
    /// Starts (or restarts) a local cluster of node processes; Ctrl-C stops them all.
    Cluster(cluster::ClusterArgs),
    /// Runs one node.
    Serve(node::ServeArgs),
    /// Writes development certificates for a cluster: a CA, a certificate and key per node, and
    /// an admin token (see `--tls` of `serve`, `cluster` and the client commands).
    Certs(CertsArgs),
    /// Recovery from a lost quorum, offline: makes a stopped survivor the only voter of its
    /// cluster, keeping its data (writes only the lost nodes had are gone).
    Recover(recover::RecoverArgs),
    /// Sets a key.
    Put {
        key: String,
        value: String,
        #[command(flatten)]
        target: Target,
    },
    /// Reads a key.
    Get {
        key: String,
        /// How fresh the answer must be.
        #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
        consistency: Consistency,
        #[command(flatten)]
        target: Target,
    },
    /// Removes a key.
    Delete {
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Prints the node's view of the cluster.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Changes the membership.
    Members {
        #[command(subcommand)]
        action: MembersAction,
    },
    /// Lists the keys that start with a prefix, in key order, from every shard of a sharded
    /// cluster (linearizable per shard, not one snapshot across shards).
    Scan {
        /// The prefix (none: every key).
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many keys (the server's default: 100).
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        target: Target,
    },
    /// Prints a sharded cluster's routing table and the node's replicas.
    Shards {
        #[command(flatten)]
        target: Target,
    },
    /// Moves every replica of a sharded cluster off node ID, which then leaves the table.
    Drain {
        id: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Hands leadership to node ID.
    Transfer {
        id: u64,
        #[command(flatten)]
        target: Target,
    },
}

/// `raft-kv certs`.
#[derive(Args)]
struct CertsArgs {
    /// Certificates for nodes 1 to N.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=certs::NODES_MAX))]
    nodes: u64,
    /// The directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The cluster id the node certificates name (`raft://CLUSTER_ID/node/ID`): the nodes'
    /// `--cluster-id`.
    #[arg(long, default_value_t = 1)]
    cluster_id: u64,
    /// How many days the certificates are valid.
    #[arg(long, default_value_t = certs::VALIDITY_DAYS_DEFAULT, value_parser = clap::value_parser!(u32).range(1..))]
    days: u32,
    /// Also write `data.token`, for `serve --data-token-file`.
    #[arg(long)]
    data_token: bool,
    /// Overwrite files that exist (otherwise refused, and nothing is written).
    #[arg(long)]
    force: bool,
}

/// A read's consistency level (`?consistency=` of `GET /kv/{key}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Consistency {
    /// Confirmed with a quorum: never stale.
    Linearizable,
    /// Trusts the leader's lease (see the README's "Lease reads").
    Lease,
    /// Linearizable, served by the node asked (it confirms the commit index with the leader).
    Follower,
    /// What the node asked has applied, however old.
    Stale,
}

/// `raft-kv members ...`.
#[derive(Subcommand)]
enum MembersAction {
    /// Adds node ID as a learner, reachable at RAFT (its Raft address) and HTTP.
    AddLearner {
        id: u64,
        raft: SocketAddr,
        http: SocketAddr,
        #[command(flatten)]
        target: Target,
    },
    /// Promotes learner ID to voter (refused until it has caught up).
    Promote {
        id: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Removes node ID from the cluster.
    Remove {
        id: u64,
        #[command(flatten)]
        target: Target,
    },
}

/// Which node a client subcommand talks to, and how.
#[derive(Args)]
struct Target {
    /// A node's HTTP address (writes are redirected to the leader).
    #[arg(long, default_value = "127.0.0.1:8081")]
    node: SocketAddr,
    /// Talk HTTPS, trusting DIR/ca.pem and sending DIR/admin.token (a directory written by
    /// `raft-kv certs`); --ca and --token-file override either file.
    #[arg(long, value_name = "DIR")]
    tls: Option<PathBuf>,
    /// Talk HTTPS, trusting this CA certificate (PEM).
    #[arg(long, env = "RAFT_KV_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Send the bearer token in FILE (the admin token for `members`, `transfer` and `drain`).
    #[arg(long, env = "RAFT_KV_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
}

impl Target {
    fn options(&self) -> ClientOptions {
        let dir = self.tls.as_deref().map(ClientOptions::of_dir).unwrap_or_default();
        ClientOptions { ca: self.ca.clone().or(dir.ca), token_file: self.token_file.clone().or(dir.token_file) }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = match &cli.command {
        Command::Cluster(args) => Some(args.log_format),
        Command::Serve(args) => Some(args.log_format),
        _ => None,
    };
    // The servers log (to stderr); the client commands print their answer (to stdout).
    let logs = log_format.map(logs::init).transpose();
    let outcome = match (logs, cli.command) {
        (Err(error), _) => Err(error),
        (Ok(_), Command::Cluster(args)) => cluster::run(args),
        (Ok(_), Command::Serve(args)) => node::run(args),
        (Ok(_), Command::Recover(args)) => recover::run(args),
        (Ok(_), Command::Certs(args)) => run_certs(args),
        (Ok(_), other) => run_client(other),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if error.downcast_ref::<node::NodeFailed>().is_some() {
                return ExitCode::from(node::EXIT_NODE_FAILED); // `serve` has logged why.
            }
            if log_format.is_some() && tracing::dispatcher::has_been_set() {
                tracing::error!("{error:#}");
            } else {
                eprintln!("raft-kv: {error:#}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Writes development certificates.
fn run_certs(args: CertsArgs) -> anyhow::Result<()> {
    let request = CertsRequest {
        out: args.out,
        nodes: args.nodes,
        cluster_id: args.cluster_id,
        days: args.days,
        data_token: args.data_token,
        force: args.force,
    };
    for path in certs::generate(&request)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Runs a client subcommand: one HTTP request, whose body is printed.
fn run_client(command: Command) -> anyhow::Result<()> {
    let (method, target, path, body) = match command {
        Command::Put { key, value, target } => ("PUT", target, format!("/kv/{key}"), value.into_bytes()),
        Command::Get { key, consistency, target } => {
            let level = consistency.to_possible_value().context("every consistency level has a name")?;
            ("GET", target, format!("/kv/{key}?consistency={}", level.get_name()), Vec::new())
        }
        Command::Delete { key, target } => ("DELETE", target, format!("/kv/{key}"), Vec::new()),
        Command::Status { target } => ("GET", target, "/cluster/status".to_owned(), Vec::new()),
        Command::Members { action } => {
            let (body, target) = match action {
                MembersAction::AddLearner { id, raft, http, target } => {
                    (serde_json::json!({ "action": "add_learner", "id": id, "raft": raft, "http": http }), target)
                }
                MembersAction::Promote { id, target } => (serde_json::json!({ "action": "promote", "id": id }), target),
                MembersAction::Remove { id, target } => (serde_json::json!({ "action": "remove", "id": id }), target),
            };
            ("POST", target, "/cluster/members".to_owned(), body.to_string().into_bytes())
        }
        Command::Scan { prefix, limit, target } => {
            let mut query = vec![("prefix", prefix)];
            query.extend(limit.map(|limit| ("limit", limit.to_string())));
            let query = serde_urlencoded::to_string(&query).context("encoding the query")?;
            ("GET", target, format!("/kv?{query}"), Vec::new())
        }
        Command::Shards { target } => ("GET", target, "/cluster/shards".to_owned(), Vec::new()),
        Command::Drain { id, target } => {
            ("POST", target, "/cluster/drain".to_owned(), serde_json::json!({ "id": id }).to_string().into_bytes())
        }
        Command::Transfer { id, target } => {
            ("POST", target, "/cluster/leader".to_owned(), serde_json::json!({ "id": id }).to_string().into_bytes())
        }
        Command::Cluster(_) | Command::Serve(_) | Command::Recover(_) | Command::Certs(_) => {
            bail!("not a client command")
        }
    };
    let client = Client::new(&target.options())?;
    let url = client.url(target.node, &path);
    let response = client.request(method, &url, &body).with_context(|| format!("{method} {url}"))?;
    println!("{}", response.text());
    if (200..300).contains(&response.status) { Ok(()) } else { bail!("{method} {url}: HTTP {}", response.status) }
}
