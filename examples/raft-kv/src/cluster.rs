//! `raft-kv cluster`: starts N `raft-kv serve` processes of this binary on 127.0.0.1, logs
//! their pids and the leader, reports a node that exits (see [`run`]), and stops them on SIGINT (Ctrl-C), SIGTERM or SIGHUP. Each
//! node keeps its data in `DATA/node-ID`, so running it again restarts the same cluster with its
//! data. The nodes' stdin is a pipe from the launcher (`serve --exit-with-stdin`): should the
//! launcher die without stopping them (`kill -9`), the kernel closes the pipe and they stop.
//!
//! With `--tls DIR` the nodes serve HTTPS with the certificates in DIR and admin endpoints need
//! DIR/admin.token (see `serve --tls`); a DIR that is missing or empty is filled first with new
//! development certificates (`raft-kv certs --nodes N --out DIR`), so one command starts a TLS
//! cluster.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tokio::process::Child;
use tracing::{error, info, warn};

use raft_kv::certs::{self, CertsRequest};

use crate::client::{Client, ClientOptions};
use crate::logs::LogFormat;
use crate::signals::StopSignals;

/// How often the launcher polls for a leader, and looks whether a node has exited.
pub const POLL: Duration = Duration::from_millis(200);
/// How long the nodes have to shut down once asked before they are killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long the runtime waits at exit for blocking work (the poll for a leader) to finish.
pub const EXIT_GRACE: Duration = Duration::from_secs(1);

/// `raft-kv cluster`.
#[derive(Args)]
pub struct ClusterArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
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
    /// How log lines look on stderr, the launcher's and its nodes' (`RUST_LOG` filters them).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Serve HTTPS with the certificates in DIR, and require DIR/admin.token on admin endpoints
    /// (`serve --tls`). A missing or empty DIR gets new development certificates first (as
    /// `raft-kv certs --nodes N --out DIR` writes them). Without it: plain HTTP, for local
    /// experiments only.
    #[arg(long, value_name = "DIR")]
    pub tls: Option<PathBuf>,
    /// Run a sharded cluster of S shards (`serve --shards`; see docs/sharding.md), instead of
    /// one Raft group.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(raft_kv::shards::SHARDS_MAX)))]
    pub shards: Option<u32>,
    /// With `--shards`: the replicas of each shard (`serve --replicas`).
    #[arg(long, requires = "shards", value_parser = clap::value_parser!(u8).range(1..=raft_kv::shards::REPLICAS_MAX as i64))]
    pub replicas: Option<u8>,
}

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// One node process.
struct Node {
    id: u16,
    child: Child,
    /// Its exit status once it has exited (and been reported).
    exited: Option<ExitStatus>,
}

/// Runs the cluster until SIGINT (Ctrl-C), SIGTERM or SIGHUP. A node that exits meanwhile (it
/// failed: exit code 3 is a fail-stop, see `node.rs`) is reported, and the others keep running;
/// it is not restarted, as whatever stopped it (a full disk, say) would likely stop it again:
/// fix the cause, stop the launcher and run it again, which restarts every node on its data.
/// Once every node has exited, the launcher exits too, with an error.
pub fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    let outcome = runtime.block_on(cluster(args));
    runtime.shutdown_timeout(EXIT_GRACE);
    outcome
}

async fn cluster(args: ClusterArgs) -> anyhow::Result<()> {
    // Before any child starts, so that no signal can end the launcher without stopping them.
    let mut signals = StopSignals::new().context("listening for signals")?;
    let client = prepare_tls(&args)?;
    let mut nodes = Vec::new();
    let started = start_nodes(&args, &mut nodes);
    let outcome = match started {
        Ok(()) => {
            let first = SocketAddr::new(LOCALHOST, args.http_port);
            let try_it = match &args.tls {
                Some(dir) => {
                    format!("curl --cacert {} https://{first}/cluster/status", dir.join(certs::CA_CERT).display())
                }
                None => format!("curl http://{first}/cluster/status"),
            };
            let mut leader = tokio::task::spawn_blocking(move || wait_for_leader(&client, first));
            let mut leader_done = false;
            let mut poll = tokio::time::interval(POLL);
            loop {
                tokio::select! {
                    reason = signals.recv() => {
                        info!("stopping ({reason})");
                        break Ok(());
                    }
                    found = &mut leader, if !leader_done => {
                        leader_done = true;
                        match found {
                            Ok(Some(leader)) => info!("leader: node {leader} (try: {try_it})"),
                            _ => warn!("no leader yet"),
                        }
                    }
                    _ = poll.tick() => {
                        report_exits(&mut nodes);
                        if nodes.iter().all(|node| node.exited.is_some()) {
                            break Err(anyhow::anyhow!("every node exited"));
                        }
                    }
                }
            }
        }
        Err(error) => Err(error),
    };
    stop_nodes(&mut nodes).await;
    outcome
}

/// With `--tls DIR`: fills a missing or empty DIR with new certificates for the nodes; checks that
/// DIR has what every node needs. Without: warns that plain mode is for local experiments. The
/// client the launcher asks the nodes with.
fn prepare_tls(args: &ClusterArgs) -> anyhow::Result<Client> {
    let Some(dir) = &args.tls else {
        warn!(
            "plain mode, for local experiments only: HTTP without TLS, no authentication of nodes, \
             admin endpoints open to anyone who reaches them. Use --tls DIR for TLS and tokens"
        );
        return Client::new(&ClientOptions::default());
    };
    let empty = std::fs::read_dir(dir).map_or(true, |mut entries| entries.next().is_none());
    if empty {
        let request = CertsRequest {
            out: dir.clone(),
            nodes: u64::from(args.nodes),
            cluster_id: 1,
            days: certs::VALIDITY_DAYS_DEFAULT,
            data_token: false,
            force: false,
        };
        certs::generate(&request).with_context(|| format!("writing certificates into {}", dir.display()))?;
        info!("wrote development certificates and an admin token into {}", dir.display());
    }
    let ids = (1..=u64::from(args.nodes)).flat_map(|id| [certs::node_cert(id), certs::node_key(id)]);
    let needed = [certs::CA_CERT.to_owned(), certs::ADMIN_TOKEN.to_owned()].into_iter().chain(ids);
    for name in needed {
        if !dir.join(&name).is_file() {
            bail!(
                "--tls {}: no {name} there (`raft-kv certs --nodes {} --out DIR` writes a whole set)",
                dir.display(),
                args.nodes
            );
        }
    }
    Client::new(&ClientOptions::of_dir(dir))
}

/// Logs every node that has exited since the last look.
fn report_exits(nodes: &mut [Node]) {
    for node in nodes.iter_mut().filter(|node| node.exited.is_none()) {
        match node.child.try_wait() {
            Ok(Some(status)) => {
                node.exited = Some(status);
                if status.success() {
                    warn!(node = node.id, "node {} exited ({status}); the others keep running", node.id);
                } else {
                    error!(
                        node = node.id,
                        "node {} failed ({status}; its log above says why); the others keep running. It is not \
                         restarted: fix the cause, then stop the launcher and run it again",
                        node.id
                    );
                }
            }
            Ok(None) => {}
            Err(error) => warn!(node = node.id, "node {}: looking for its exit: {error}", node.id),
        }
    }
}

/// Starts the nodes, each with a pipe as stdin (see the module docs).
fn start_nodes(args: &ClusterArgs, nodes: &mut Vec<Node>) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding this program")?;
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
            .args(["--log-format", args.log_format.as_arg()])
            .args(args.tls.iter().flat_map(|dir| [std::ffi::OsStr::new("--tls"), dir.as_os_str()]))
            .args(args.shards.iter().flat_map(|shards| ["--shards".to_owned(), shards.to_string()]))
            .args(args.replicas.iter().flat_map(|replicas| ["--replicas".to_owned(), replicas.to_string()]))
            .stdin(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting node {id}"))?;
        info!(node = id, "started node {id} (pid {})", child.id().unwrap_or_default());
        nodes.push(Node { id: *id, child, exited: None });
    }
    Ok(())
}

/// Whether the cluster is new (no node has data yet: bootstrap every node) or restarts (every
/// node has data). Some nodes without data among others with data is refused: bootstrapping
/// them would let a voter whose data was lost vote again in terms it already voted in.
fn must_bootstrap(args: &ClusterArgs, ids: &[u16]) -> anyhow::Result<bool> {
    let has_data = |id: &u16| {
        let dir = args.data.join(format!("node-{id}"));
        // The store's LOCK file alone is no data: an `open` that found no store leaves it.
        let data =
            |entry: std::io::Result<std::fs::DirEntry>| entry.is_ok_and(|e| e.file_name() != raft_storage::LOCK_FILE);
        std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.any(data))
    };
    let (with, without): (Vec<u16>, Vec<u16>) = ids.iter().partition(|id| has_data(id));
    match (with.is_empty(), without.is_empty()) {
        (true, _) => Ok(true),
        (false, true) => Ok(false),
        (false, false) => bail!(
            "nodes {without:?} have no data in {} while nodes {with:?} do: a voter whose data was \
             lost must not start as a new voter. Use an empty --data for a new cluster",
            args.data.display()
        ),
    }
}

/// Closes every node's stdin, which makes it shut down gracefully, waits for them all, and kills
/// those still running after [`STOP_GRACE`].
async fn stop_nodes(nodes: &mut [Node]) {
    for node in nodes.iter_mut() {
        drop(node.child.stdin.take());
    }
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    for node in nodes.iter_mut() {
        if tokio::time::timeout_at(deadline, node.child.wait()).await.is_err() {
            let _ = node.child.kill().await; // Already gone is fine.
        }
    }
}

/// Polls node 1's status until it names a leader (for up to a minute).
fn wait_for_leader(client: &Client, node: SocketAddr) -> Option<u64> {
    for _ in 0..300 {
        if let Ok(response) = client.request("GET", &client.url(node, "/cluster/status"), &[])
            && let Ok(status) = serde_json::from_slice::<serde_json::Value>(&response.body)
            && let Some(leader) = status.get("leader").and_then(serde_json::Value::as_u64)
        {
            return Some(leader);
        }
        std::thread::sleep(POLL);
    }
    None
}
