//! `raft-kv cluster`: starts N `raft-kv serve` processes of this binary on 127.0.0.1, prints
//! their endpoints and the leader, and stops them on SIGINT (Ctrl-C), SIGTERM or SIGHUP. Each
//! node keeps its data in `DATA/node-ID`, so running it again restarts the same cluster with its
//! data. The nodes' stdin is a pipe from the launcher (`serve --exit-with-stdin`): should the
//! launcher die without stopping them (`kill -9`), the kernel closes the pipe and they stop.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use std::process::Stdio;

use clap::Args;
use tokio::process::Child;

use crate::client;
use crate::signals::StopSignals;

/// How often the launcher polls for a leader.
pub const POLL: Duration = Duration::from_millis(200);
/// How long the nodes have to shut down once asked before they are killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long the runtime waits at exit for blocking work (the poll for a leader) to finish.
pub const EXIT_GRACE: Duration = Duration::from_secs(1);

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

/// Runs the cluster until SIGINT (Ctrl-C), SIGTERM or SIGHUP.
pub fn run(args: ClusterArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let outcome = runtime.block_on(cluster(args));
    runtime.shutdown_timeout(EXIT_GRACE);
    outcome
}

async fn cluster(args: ClusterArgs) -> Result<(), String> {
    // Before any child starts, so that no signal can end the launcher without stopping them.
    let mut signals = StopSignals::new().map_err(|error| format!("listening for signals: {error}"))?;
    let mut children = Vec::new();
    let started = start_nodes(&args, &mut children);
    let reason = match started {
        Ok(()) => {
            let first = SocketAddr::new(LOCALHOST, args.http_port);
            tokio::select! {
                leader = tokio::task::spawn_blocking(move || wait_for_leader(first)) => {
                    match leader {
                        Ok(Some(leader)) => println!("leader: node {leader} (try: curl http://{first}/cluster/status)"),
                        _ => eprintln!("no leader yet"),
                    }
                    signals.recv().await
                }
                reason = signals.recv() => reason,
            }
        }
        Err(_) => "a node did not start",
    };
    println!("stopping ({reason})");
    stop_nodes(&mut children).await;
    started
}

/// Starts the nodes, each with a pipe as stdin (see the module docs).
fn start_nodes(args: &ClusterArgs, children: &mut Vec<Child>) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|error| error.to_string())?;
    let ids: Vec<u16> = (1..=args.nodes).collect();
    let bootstrap = must_bootstrap(args, &ids)?;
    let address = |base: u16, id: u16| SocketAddr::new(LOCALHOST, base.saturating_add(id - 1));
    let peers: Vec<String> = ids
        .iter()
        .map(|id| format!("{id}={}={}", address(args.raft_port, *id), address(args.http_port, *id)))
        .collect();
    for id in &ids {
        let child = tokio::process::Command::new(&exe)
            .arg("serve")
            .args(["--id", &id.to_string()])
            .args(["--raft", &address(args.raft_port, *id).to_string()])
            .args(["--http", &address(args.http_port, *id).to_string()])
            .args(["--peers", &peers.join(",")])
            .arg("--data")
            .arg(args.data.join(format!("node-{id}")))
            .args(bootstrap.then_some("--bootstrap"))
            .arg("--exit-with-stdin")
            .stdin(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| format!("starting node {id}: {error}"))?;
        children.push(child);
    }
    Ok(())
}

/// Whether the cluster is new (no node has data yet: bootstrap every node) or restarts (every
/// node has data). Some nodes without data among others with data is refused: bootstrapping
/// them would let a voter whose data was lost vote again in terms it already voted in.
fn must_bootstrap(args: &ClusterArgs, ids: &[u16]) -> Result<bool, String> {
    let has_data = |id: &u16| {
        let dir = args.data.join(format!("node-{id}"));
        std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some())
    };
    let (with, without): (Vec<u16>, Vec<u16>) = ids.iter().partition(|id| has_data(id));
    match (with.is_empty(), without.is_empty()) {
        (true, _) => Ok(true),
        (false, true) => Ok(false),
        (false, false) => Err(format!(
            "nodes {without:?} have no data in {} while nodes {with:?} do: a voter whose data was \
             lost must not start as a new voter. Use an empty --data for a new cluster",
            args.data.display()
        )),
    }
}

/// Closes every node's stdin, which makes it shut down gracefully, waits for them all, and kills
/// those still running after [`STOP_GRACE`].
async fn stop_nodes(children: &mut [Child]) {
    for child in children.iter_mut() {
        drop(child.stdin.take());
    }
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    for child in children.iter_mut() {
        if tokio::time::timeout_at(deadline, child.wait()).await.is_err() {
            let _ = child.kill().await; // Already gone is fine.
        }
    }
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
