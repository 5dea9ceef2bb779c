//! `raft-kv cluster`: starts N `raft-kv serve` processes of this binary on 127.0.0.1, prints
//! their endpoints and the leader, and stops them on Ctrl-C. Each node keeps its data in
//! `DATA/node-ID`, so running it again restarts the same cluster with its data.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::client;

/// How often the launcher polls for a leader.
pub const POLL: Duration = Duration::from_millis(200);

/// `raft-kv cluster`.
#[derive(Args)]
pub struct ClusterArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// The data directory (one subdirectory per node).
    #[arg(long, default_value = "data")]
    pub data: PathBuf,
    /// The first node's HTTP port; node i listens on this + i - 1.
    #[arg(long, default_value_t = 8081)]
    pub http_port: u16,
    /// The first node's Raft port; node i listens on this + i - 1.
    #[arg(long, default_value_t = 9091)]
    pub raft_port: u16,
}

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Runs the cluster until Ctrl-C.
pub fn run(args: ClusterArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(cluster(args))
}

async fn cluster(args: ClusterArgs) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|error| error.to_string())?;
    let ids: Vec<u16> = (1..=args.nodes).collect();
    let address = |base: u16, id: u16| SocketAddr::new(LOCALHOST, base.saturating_add(id - 1));
    let peers: Vec<String> = ids
        .iter()
        .map(|id| format!("{id}={}={}", address(args.raft_port, *id), address(args.http_port, *id)))
        .collect();
    let mut children = Vec::new();
    for id in &ids {
        let child = tokio::process::Command::new(&exe)
            .arg("serve")
            .args(["--id", &id.to_string()])
            .args(["--raft", &address(args.raft_port, *id).to_string()])
            .args(["--http", &address(args.http_port, *id).to_string()])
            .args(["--peers", &peers.join(",")])
            .arg("--data")
            .arg(args.data.join(format!("node-{id}")))
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| format!("starting node {id}: {error}"))?;
        children.push(child);
    }
    let first = address(args.http_port, 1);
    tokio::select! {
        leader = tokio::task::spawn_blocking(move || wait_for_leader(first)) => match leader {
            Ok(Some(leader)) => println!("leader: node {leader} (try: curl http://{first}/cluster/status)"),
            _ => eprintln!("no leader yet"),
        },
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = tokio::signal::ctrl_c().await; // An error means no signal handler: stop now.
    println!("stopping");
    for child in &mut children {
        let _ = child.kill().await; // Already gone is fine.
    }
    Ok(())
}

/// Polls node 1's status until it names a leader (for up to a minute).
fn wait_for_leader(node: SocketAddr) -> Option<u64> {
    for _ in 0..300 {
        if let Ok(response) = client::request("GET", &format!("http://{node}/cluster/status"), &[])
            && let Ok(status) = serde_json::from_slice::<serde_json::Value>(&response.body)
            && let Some(leader) = status.get("leader").and_then(serde_json::Value::as_u64)
        {
            return Some(leader);
        }
        std::thread::sleep(POLL);
    }
    None
}
