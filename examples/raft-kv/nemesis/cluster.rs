//! The node processes: real `raft-kv serve` processes on 127.0.0.1, each reached by the others
//! through the proxy, each incarnation's output in a log file of its own.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::http::{self, Answer};
use super::proxy::Proxy;

/// The length of one Raft tick the nodes are started with: elections take 10 to 20 ticks.
pub const TICK_MS: u64 = 20;
/// The longest election timeout, 20 ticks: a pause or a partition longer than this lets the
/// others elect a new leader.
pub const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(20 * TICK_MS);
/// How long status requests of the nemesis may take.
pub const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// One node: its addresses, its data, its process (if running).
pub struct NodeProcess {
    /// Its id.
    pub id: u64,
    /// Where it really listens for Raft.
    pub raft: SocketAddr,
    /// The proxy's address for it, which the others dial.
    pub raft_proxy: SocketAddr,
    /// Its HTTP API.
    pub http: SocketAddr,
    /// Its data directory.
    pub data: PathBuf,
    child: Option<Child>,
    incarnation: u32,
    /// Whether it is stopped with SIGSTOP.
    pub paused: bool,
    /// The `--join` URL it was first started with (a node that joined at runtime).
    join: Option<String>,
}

/// The cluster: every node that ever ran, and which are members now.
pub struct Cluster {
    binary: PathBuf,
    dir: PathBuf,
    /// The nodes, by id (removed ones stay, for their logs).
    pub nodes: BTreeMap<u64, NodeProcess>,
    /// The ids of the current members.
    pub members: Vec<u64>,
    /// Where the nodes' Raft traffic goes through.
    pub proxy: Proxy,
    peers: String,
    /// `(S, R)` of a sharded cluster (`serve --shards S --replicas R`).
    pub shards: Option<(u32, u8)>,
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Sends `signal` (a `kill -s` name) to `pid`.
fn signal(pid: u32, signal: &str) -> bool {
    Command::new("kill").args(["-s", signal, &pid.to_string()]).status().is_ok_and(|status| status.success())
}

impl Cluster {
    /// Starts `count` nodes of `binary` with ids 1 to `count`, their data and logs under `dir`;
    /// with `shards`, a sharded cluster of `S` shards of `R` replicas each.
    pub async fn start(
        binary: &Path,
        dir: &Path,
        count: u64,
        shards: Option<(u32, u8)>,
        proxy: Proxy,
    ) -> Result<Cluster, String> {
        let mut cluster = Cluster {
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            nodes: BTreeMap::new(),
            members: Vec::new(),
            proxy,
            peers: String::new(),
            shards,
        };
        for id in 1..=count {
            cluster.add_node(id, None).await?;
        }
        let peers: Vec<String> =
            cluster.nodes.values().map(|node| format!("{}={}={}", node.id, node.raft_proxy, node.http)).collect();
        cluster.peers = peers.join(",");
        for id in 1..=count {
            cluster.spawn(id)?;
            cluster.members.push(id);
        }
        Ok(cluster)
    }

    async fn add_node(&mut self, id: u64, join: Option<String>) -> Result<(), String> {
        let (raft, http) = (free_port().map_err(|e| e.to_string())?, free_port().map_err(|e| e.to_string())?);
        let raft_proxy = self.proxy.listen(id, raft).await.map_err(|error| format!("proxy for node {id}: {error}"))?;
        let data = self.dir.join(format!("node-{id}"));
        let node = NodeProcess { id, raft, raft_proxy, http, data, child: None, incarnation: 0, paused: false, join };
        self.nodes.insert(id, node);
        Ok(())
    }

    /// Adds node `id` as a new member, started with `--join` through `via` (a member's HTTP
    /// address); the caller waits for it to become a voter.
    pub async fn join(&mut self, id: u64, via: SocketAddr) -> Result<(), String> {
        self.add_node(id, Some(format!("http://{via}"))).await?;
        self.spawn(id)?;
        self.members.push(id);
        Ok(())
    }

    /// Starts (or restarts, on its data) node `id`.
    pub fn spawn(&mut self, id: u64) -> Result<(), String> {
        let peers = self.peers.clone();
        let binary = self.binary.clone();
        let node = self.nodes.get_mut(&id).ok_or(format!("no node {id}"))?;
        node.incarnation += 1;
        let log = File::create(log_path(&self.dir, id, node.incarnation)).map_err(|e| e.to_string())?;
        let errors = log.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .args(["--id", &id.to_string(), "--raft", &node.raft.to_string(), "--http", &node.http.to_string()])
            .args(["--raft-advertise", &node.raft_proxy.to_string(), "--tick-ms", &TICK_MS.to_string()])
            .arg("--data")
            .arg(&node.data);
        if let Some((shards, replicas)) = self.shards {
            command.args(["--shards", &shards.to_string(), "--replicas", &replicas.to_string()]);
        }
        match &node.join {
            // Every start of a node that joined (a sharded one's too: asking again to join the
            // table is idempotent, and a node killed before it was added must ask again).
            Some(url) => command.args(["--join", url]),
            // An initial member bootstraps on its first start only: later starts find its data.
            None if node.incarnation == 1 => command.args(["--peers", &peers, "--bootstrap"]),
            None => command.args(["--peers", &peers]),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(errors)
            .spawn()
            .map_err(|error| format!("starting node {id}: {error}"))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// `kill -9` node `id` (paused or not).
    pub fn kill(&mut self, id: u64) {
        if let Some(node) = self.nodes.get_mut(&id)
            && let Some(mut child) = node.child.take()
        {
            let _ = child.kill(); // Already gone is fine.
            let _ = child.wait();
            node.paused = false;
        }
    }

    /// SIGSTOP node `id`.
    pub fn pause(&mut self, id: u64) -> bool {
        let Some(node) = self.nodes.get_mut(&id) else { return false };
        let Some(child) = &node.child else { return false };
        node.paused = signal(child.id(), "STOP");
        node.paused
    }

    /// SIGCONT node `id`.
    pub fn resume(&mut self, id: u64) {
        if let Some(node) = self.nodes.get_mut(&id)
            && let Some(child) = &node.child
            && node.paused
        {
            signal(child.id(), "CONT");
            node.paused = false;
        }
    }

    /// Whether node `id` runs and is not paused.
    pub fn is_up(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|node| node.child.is_some() && !node.paused)
    }

    /// Resumes every paused member and restarts every member that is down.
    pub fn heal_processes(&mut self) -> Result<(), String> {
        for id in self.members.clone() {
            self.resume(id);
            if self.nodes.get(&id).is_some_and(|node| node.child.is_none()) {
                self.spawn(id)?;
            }
        }
        Ok(())
    }

    /// The HTTP address of node `id`.
    pub fn http(&self, id: u64) -> Option<SocketAddr> {
        self.nodes.get(&id).map(|node| node.http)
    }

    /// The status of node `id`, if it answers in time. A sharded node's is its meta group's (the
    /// routing table's group, whose voters and learners are the cluster's nodes), with its id:
    /// the leader the faults target and the membership the suite follows are the meta group's.
    pub async fn status(&self, id: u64) -> Option<serde_json::Value> {
        let http = self.http(id)?;
        let status: serde_json::Value = match http::call("GET", http, "/cluster/status", b"", STATUS_TIMEOUT).await {
            Ok(Answer { status: 200, body, .. }) => serde_json::from_slice(&body).ok()?,
            _ => return None,
        };
        if status["sharded"] != true {
            return Some(status);
        }
        let mut meta = status["meta"].clone();
        meta["id"] = status["id"].clone();
        Some(meta)
    }

    /// The member that says it leads with the highest term, among the running ones.
    pub async fn leader(&self) -> Option<(u64, u64)> {
        self.leader_status().await.map(|(id, term, _)| (id, term))
    }

    /// [`Cluster::leader`], with the status it answered.
    pub async fn leader_status(&self) -> Option<(u64, u64, serde_json::Value)> {
        self.leader_among(&self.members).await
    }

    /// The node among `ids` that says it leads with the highest term, among the running ones,
    /// with its term and status.
    pub async fn leader_among(&self, ids: &[u64]) -> Option<(u64, u64, serde_json::Value)> {
        let mut best: Option<(u64, u64, serde_json::Value)> = None;
        for &id in ids {
            if !self.is_up(id) {
                continue;
            }
            let Some(status) = self.status(id).await else { continue };
            let term = status["term"].as_u64().unwrap_or(0);
            if status["role"] == "leader" && best.as_ref().is_none_or(|(_, best_term, _)| term > *best_term) {
                best = Some((id, term, status));
            }
        }
        best
    }

    /// Kills every node.
    pub fn stop_all(&mut self) {
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            self.kill(id);
        }
    }

    /// Every log file written so far.
    pub fn logs(&self) -> Vec<PathBuf> {
        let mut logs = Vec::new();
        for node in self.nodes.values() {
            for incarnation in 1..=node.incarnation {
                logs.push(log_path(&self.dir, node.id, incarnation));
            }
        }
        logs
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The log of one incarnation of node `id`.
pub fn log_path(dir: &Path, id: u64, incarnation: u32) -> PathBuf {
    dir.join(format!("node-{id}.{incarnation}.log"))
}
