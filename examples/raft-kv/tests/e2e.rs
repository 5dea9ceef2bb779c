//! End to end: the real `raft-kv` binary as three processes on 127.0.0.1, driven over HTTP.
//! Waits poll with generous deadlines; nothing asserts on durations.

#[allow(dead_code)]
#[path = "../src/client.rs"]
mod client;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(30);

/// A node process, killed (SIGKILL) when dropped.
struct Node {
    id: u64,
    http: SocketAddr,
    child: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Node {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL: the process may not flush anything.
            let _ = child.wait();
        }
    }
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

struct Layout {
    raft: Vec<SocketAddr>,
    http: Vec<SocketAddr>,
    peers: String,
}

fn layout(count: usize) -> Layout {
    let raft: Vec<_> = (0..count).map(|_| free_port()).collect();
    let http: Vec<_> = (0..count).map(|_| free_port()).collect();
    let peers = (0..count).map(|i| format!("{}={}={}", i + 1, raft[i], http[i])).collect::<Vec<_>>().join(",");
    Layout { raft, http, peers }
}

fn spawn(layout: &Layout, index: usize, data: &Path) -> Node {
    let child = Command::new(env!("CARGO_BIN_EXE_raft-kv"))
        .arg("serve")
        .args(["--id", &(index + 1).to_string(), "--raft", &layout.raft[index].to_string()])
        .args(["--http", &layout.http[index].to_string(), "--peers", &layout.peers, "--tick-ms", "20"])
        .arg("--data")
        .arg(data.join(format!("node-{}", index + 1)))
        .spawn()
        .expect("the binary starts");
    Node { id: index as u64 + 1, http: layout.http[index], child: Some(child) }
}

fn call(method: &str, node: SocketAddr, path: &str, body: &[u8]) -> Option<client::HttpResponse> {
    client::request(method, &format!("http://{node}{path}"), body).ok()
}

/// Retries `method path` on `node` until it answers `status`.
fn until(method: &str, node: SocketAddr, path: &str, body: &[u8], status: u16) -> client::HttpResponse {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match call(method, node, path, body) {
            Some(response) if response.status == status => return response,
            other => assert!(Instant::now() < deadline, "{method} {path} on {node}: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn leader(nodes: &[&Node]) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        for node in nodes {
            if let Some(response) = call("GET", node.http, "/cluster/status", &[])
                && let Ok(status) = serde_json::from_slice::<serde_json::Value>(&response.body)
                && status["role"] == "leader"
            {
                return status["id"].as_u64().expect("an id");
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_path_buf();
    (dir, path)
}

#[test]
fn writes_reads_failover_restart_and_bad_input_over_http() {
    let (_dir, data) = temp();
    let layout = layout(3);
    let mut nodes: Vec<Node> = (0..3).map(|i| spawn(&layout, i, &data)).collect();
    let all: Vec<&Node> = nodes.iter().collect();
    let first = leader(&all);

    // Writes through every node (followers redirect to the leader), reads on every node.
    for node in &nodes {
        until("PUT", node.http, &format!("/kv/key{}", node.id), b"value", 200);
    }
    for node in &nodes {
        for id in 1..=3 {
            let response = until("GET", node.http, &format!("/kv/key{id}?consistency=linearizable"), &[], 200);
            assert_eq!(response.body, b"value");
        }
    }

    // Bad input: 4xx with a message, and nothing applied.
    let http = nodes[0].http;
    let long_key = "k".repeat(2000);
    assert_eq!(until("PUT", http, &format!("/kv/{long_key}"), b"v", 413).status, 413);
    assert_eq!(until("PUT", http, "/kv/big", &vec![b'x'; 1024 * 1024 + 1], 413).status, 413);
    assert!(until("POST", http, "/kv/key1/cas", b"{not json", 400).text().contains("bad JSON"));
    assert_eq!(until("GET", http, "/kv/key1?consistency=sometimes", &[], 400).status, 400);
    assert_eq!(until("POST", http, "/cluster/members", br#"{"action":"remove","id":99}"#, 400).status, 400);
    assert_eq!(until("GET", http, "/kv/big", &[], 404).status, 404);

    // kill -9 the leader: the others elect a new one and writes go on.
    nodes[first as usize - 1].kill();
    let survivors: Vec<&Node> = nodes.iter().filter(|n| n.id != first).collect();
    let second = leader(&survivors);
    assert_ne!(second, first);
    let survivor = survivors[0].http;
    until("PUT", survivor, "/kv/after", b"failover", 200);

    // Restart the killed node on its data: it has every acknowledged write.
    nodes[first as usize - 1] = spawn(&layout, first as usize - 1, &data);
    let restarted = nodes[first as usize - 1].http;
    for (key, value) in [("key1", &b"value"[..]), ("key2", b"value"), ("key3", b"value"), ("after", b"failover")] {
        let response = until("GET", restarted, &format!("/kv/{key}?consistency=linearizable"), &[], 200);
        assert_eq!(response.body, value);
    }
}
