//! `raft-kv`: a replicated key-value service over HTTP, built on the raft-net driver, the TCP
//! transport and the durable store. See the README for the commands and the HTTP API.
#![forbid(unsafe_code)]

mod client;
mod cluster;
mod kv;
mod node;
mod removal;
mod server;
mod signals;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

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
        /// linearizable, lease, follower or stale.
        #[arg(long, default_value = "linearizable")]
        consistency: String,
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
    /// Changes the membership: add-learner ID RAFT_ADDR HTTP_ADDR | promote ID | remove ID.
    Members {
        action: String,
        id: u64,
        raft: Option<SocketAddr>,
        http: Option<SocketAddr>,
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

/// Which node a client subcommand talks to.
#[derive(Args)]
struct Target {
    /// A node's HTTP address (writes are redirected to the leader).
    #[arg(long, default_value = "127.0.0.1:8081")]
    node: SocketAddr,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Cluster(args) => cluster::run(args),
        Command::Serve(args) => node::run(args),
        other => run_client(other),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("raft-kv: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a client subcommand: one HTTP request, whose body is printed.
fn run_client(command: Command) -> Result<(), String> {
    let (method, target, path, body) = match command {
        Command::Put { key, value, target } => ("PUT", target, format!("/kv/{key}"), value.into_bytes()),
        Command::Get { key, consistency, target } => {
            ("GET", target, format!("/kv/{key}?consistency={consistency}"), Vec::new())
        }
        Command::Delete { key, target } => ("DELETE", target, format!("/kv/{key}"), Vec::new()),
        Command::Status { target } => ("GET", target, "/cluster/status".to_owned(), Vec::new()),
        Command::Members { action, id, raft, http, target } => {
            let body = match (action.as_str(), raft, http) {
                ("add-learner", Some(raft), Some(http)) => {
                    serde_json::json!({ "action": "add_learner", "id": id, "raft": raft, "http": http })
                }
                ("promote", _, _) => serde_json::json!({ "action": "promote", "id": id }),
                ("remove", _, _) => serde_json::json!({ "action": "remove", "id": id }),
                _ => return Err("members: add-learner ID RAFT HTTP | promote ID | remove ID".to_owned()),
            };
            ("POST", target, "/cluster/members".to_owned(), body.to_string().into_bytes())
        }
        Command::Transfer { id, target } => {
            ("POST", target, "/cluster/leader".to_owned(), serde_json::json!({ "id": id }).to_string().into_bytes())
        }
        Command::Cluster(_) | Command::Serve(_) => return Err("not a client command".to_owned()),
    };
    let url = format!("http://{}{path}", target.node);
    let response = client::request(method, &url, &body).map_err(|error| error.to_string())?;
    println!("{}", response.text());
    if (200..300).contains(&response.status) { Ok(()) } else { Err(format!("HTTP {}", response.status)) }
}
