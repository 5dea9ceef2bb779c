//! What the end-to-end tests share: the real `raft-kv` binary as processes on 127.0.0.1 (ports
//! picked by the OS, so parallel tests never collide), driven over HTTP. Waits poll with generous
//! deadlines; nothing asserts on durations.
#![allow(dead_code)] // Each test binary uses its own part.

#[allow(dead_code)]
#[path = "../../nemesis/http.rs"]
pub mod http;
pub mod https;

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long any wait may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(30);
/// How often waits poll.
pub const POLL: Duration = Duration::from_millis(50);

/// A node process, killed (SIGKILL) when dropped. Its output goes to a log file, printed when
/// the test fails.
pub struct Node {
    pub id: u64,
    pub http: SocketAddr,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- {} ---\n{log}", self.log.display());
        }
    }
}

impl Node {
    /// Starts `raft-kv serve` for node `id` with `args` after the id and addresses; output goes
    /// to `log`.
    pub fn start(id: u64, raft: SocketAddr, http: SocketAddr, log: PathBuf, args: &[String]) -> Node {
        Node::start_under(&[], id, raft, http, log, args)
    }

    /// [`Node::start`], the binary run by `wrapper` (a program and its arguments, given the
    /// binary's path and arguments after its own; empty for none): a shell that sets a limit and
    /// `exec`s, say.
    pub fn start_under(
        wrapper: &[&str],
        id: u64,
        raft: SocketAddr,
        http: SocketAddr,
        log: PathBuf,
        args: &[String],
    ) -> Node {
        let output = File::create(&log).expect("a log file");
        let errors = output.try_clone().expect("a log file");
        let binary = env!("CARGO_BIN_EXE_raft-kv");
        let mut command = match wrapper {
            [program, rest @ ..] => {
                let mut command = Command::new(program);
                command.args(rest).arg(binary);
                command
            }
            [] => Command::new(binary),
        };
        let child = command
            .arg("serve")
            .args(["--id", &id.to_string(), "--raft", &raft.to_string(), "--http", &http.to_string()])
            .args(["--tick-ms", "20"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            .spawn()
            .expect("the binary starts");
        Node { id, http, log, child: Some(child) }
    }

    /// Waits up to `patience` for the process to exit on its own; its exit status, if it did.
    pub fn exited_within(&mut self, patience: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + patience;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(POLL);
        }
        None
    }

    /// The exit status, if the process has exited on its own.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// The process id, while it has not been killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the process may not flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // Already gone is fine.
            let _ = child.wait();
        }
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

/// The addresses of a cluster of `count` nodes.
pub struct Layout {
    pub raft: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    /// `--peers` for the first `count` nodes.
    pub peers: String,
}

/// `count` distinct ports on 127.0.0.1 that were free a moment ago (held together while picked,
/// so that none is handed out twice).
pub fn free_ports(count: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> = (0..count).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    listeners.iter().map(|listener| listener.local_addr().expect("address")).collect()
}

/// Addresses for `count` nodes, of which the first `members` make up the initial cluster.
pub fn layout(count: usize, members: usize) -> Layout {
    let mut ports = free_ports(2 * count);
    let http = ports.split_off(count);
    let raft = ports;
    let peers = (0..members).map(|i| format!("{}={}={}", i + 1, raft[i], http[i])).collect::<Vec<_>>().join(",");
    Layout { raft, http, peers }
}

/// Starts node `index + 1` of `layout` as a member of the initial cluster, its data under `data`;
/// `incarnation` numbers its log files.
pub fn spawn(layout: &Layout, index: usize, data: &Path, incarnation: u32) -> Node {
    let id = index as u64 + 1;
    let mut args = vec!["--peers".to_owned(), layout.peers.clone(), "--data".to_owned(), data_dir(data, id)];
    if incarnation == 1 {
        args.push("--bootstrap".to_owned()); // The first start of a new cluster's member.
    }
    Node::start(id, layout.raft[index], layout.http[index], log_file(data, id, incarnation), &args)
}

/// The data directory of node `id`.
pub fn data_dir(data: &Path, id: u64) -> String {
    data.join(format!("node-{id}")).display().to_string()
}

/// The log file of one incarnation of node `id`.
pub fn log_file(data: &Path, id: u64, incarnation: u32) -> PathBuf {
    data.join(format!("node-{id}.{incarnation}.log"))
}

/// An answer.
pub type HttpResponse = http::Answer;

/// How long one request (its redirects included) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);

/// One request, following redirects; `None` when it failed (refused connection, say). The
/// nemesis's HTTP client (hyper), on a runtime of its own.
pub fn call(method: &str, node: SocketAddr, path: &str, body: &[u8]) -> Option<HttpResponse> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(http::call(method, node, path, body, REQUEST_TIMEOUT)).ok()
}

/// Retries `method path` on `node` until it answers `status`.
pub fn until(method: &str, node: SocketAddr, path: &str, body: &[u8], status: u16) -> HttpResponse {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match call(method, node, path, body) {
            Some(response) if response.status == status => return response,
            other => {
                let other = other.map(|response| (response.status, response.text()));
                assert!(Instant::now() < deadline, "{method} {path} on {node}: {other:?}");
            }
        }
        std::thread::sleep(POLL);
    }
}

/// Polls `check` until it returns `Some`, failing the test after [`PATIENCE`].
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

/// `node`'s status, if it answers.
pub fn status(node: SocketAddr) -> Option<serde_json::Value> {
    let response = call("GET", node, "/cluster/status", &[])?;
    serde_json::from_slice(&response.body).ok()
}

/// The id of the node among `nodes` that says it leads.
pub fn leader(nodes: &[&Node]) -> u64 {
    eventually("a leader", || {
        nodes.iter().filter_map(|node| status(node.http)).find(|status| status["role"] == "leader")?["id"].as_u64()
    })
}

/// The ids in `status[field]`.
pub fn ids(status: &serde_json::Value, field: &str) -> Vec<u64> {
    status[field].as_array().map(|ids| ids.iter().filter_map(serde_json::Value::as_u64).collect()).unwrap_or_default()
}

/// Asserts that `response` is a JSON error (`{"error": "..."}`) with `status`.
pub fn assert_json_error(response: &HttpResponse, status: u16) {
    assert_eq!(response.status, status, "{}", response.text());
    let body: serde_json::Value = serde_json::from_slice(&response.body)
        .unwrap_or_else(|error| panic!("a {status} that is not JSON ({error}): {:?}", response.text()));
    assert!(body["error"].as_str().is_some_and(|message| !message.is_empty()), "{body}");
}

/// A temporary directory (removed when the first value is dropped) and its path.
pub fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_path_buf();
    (dir, path)
}
