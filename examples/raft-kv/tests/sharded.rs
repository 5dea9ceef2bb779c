//! End to end, sharded (`raft-kv serve --shards`): real node processes on 127.0.0.1 driven over
//! HTTP. Keys are routed to their shard from any node (307s followed), a scan gathers every
//! shard, a node that joins with `--join` receives replicas from the controller, and a drained
//! node is emptied; with `--tls`, admin endpoints want the admin token. Waits poll with generous
//! deadlines; nothing asserts on durations.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::https::Https;
use common::{Layout, Node, call, data_dir, eventually, layout, log_file, temp, until};
use raft_kv::certs::{self, CertsRequest};
use raft_kv::shards::{ShardId, shard_of};
use serde_json::{Value, json};

const SHARDS: u32 = 4;

/// Runs the binary with `args` to its end.
fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_raft-kv")).args(args).stdin(Stdio::null()).output().expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Starts node `index + 1` of `layout`, sharded; `extra` after the common flags.
fn spawn_sharded(layout: &Layout, index: usize, data: &Path, extra: &[String]) -> Node {
    let id = index as u64 + 1;
    let mut args = vec!["--data".to_owned(), data_dir(data, id), "--shards".to_owned(), SHARDS.to_string()];
    args.extend(["--replicas".to_owned(), "2".to_owned()]);
    args.extend(extra.iter().cloned());
    Node::start(id, layout.raft[index], layout.http[index], log_file(data, id, 1), &args)
}

/// `GET /cluster/shards` of `node`, once it has a routing table.
fn table(node: SocketAddr) -> Option<Value> {
    let response = call("GET", node, "/cluster/shards", &[])?;
    let table: Value = serde_json::from_slice(&response.body).ok()?;
    (response.status == 200 && table["version"].as_u64() > Some(0)).then_some(table)
}

fn numbers(value: &Value) -> BTreeSet<u64> {
    value.as_array().map(|ids| ids.iter().filter_map(Value::as_u64).collect()).unwrap_or_default()
}

/// The replicas of each shard in `table`.
fn replicas(table: &Value) -> Vec<BTreeSet<u64>> {
    table["shards"]
        .as_array()
        .map(|shards| shards.iter().map(|shard| numbers(&shard["replicas"])).collect())
        .unwrap_or_default()
}

/// The keys of a scan's answer.
fn scanned(answer: &Value) -> Vec<String> {
    answer["entries"]
        .as_array()
        .map(|entries| entries.iter().filter_map(|entry| entry["key"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Reads every key through `node` and checks its value.
fn read_all(node: SocketAddr, keys: &[String]) {
    for key in keys {
        let response = until("GET", node, &format!("/kv/{key}?consistency=linearizable"), &[], 200);
        assert_eq!(response.text(), format!("value-of-{key}"), "{key} through {node}");
    }
}

/// Whether `node`, a replica of shard `shard`, holds `key` there (the node's own replica read,
/// with no routing: `/internal/scan` answers only for a shard it holds).
fn shard_holds(node: SocketAddr, shard: u32, key: &str) -> bool {
    let body = json!({ "shard": shard, "prefix": key, "limit": 1 }).to_string();
    let answer = until("POST", node, "/internal/scan", body.as_bytes(), 200);
    let answer: Value = serde_json::from_slice(&answer.body).expect("a JSON page");
    scanned(&answer).first().is_some_and(|first| first == key)
}

/// A cluster of three (4 shards of 2 replicas): writes and reads through every node, each key in
/// the shard `shard_of` names and no other, a scan in key order, then a fourth node joins and
/// receives replicas, and is drained empty again, the values intact throughout.
#[test]
fn a_sharded_cluster_routes_scans_joins_and_drains() {
    let (_dir, data) = temp();
    let layout = layout(4, 3);
    let first = vec!["--bootstrap".to_owned(), "--peers".to_owned(), layout.peers.clone()];
    let mut nodes: Vec<Node> = (0..3).map(|index| spawn_sharded(&layout, index, &data, &first)).collect();
    for node in &nodes {
        let table = eventually("a routing table", || table(node.http));
        assert_eq!(table["shard_count"], SHARDS);
        assert!(replicas(&table).iter().all(|replicas| replicas.len() == 2), "{table}");
    }

    // Writes through every node, reads through every node: 307s lead to the key's shard.
    let mut keys = Vec::new();
    for node in &nodes {
        for j in 0..4 {
            let key = format!("user:{}:{j}", node.id);
            until("PUT", node.http, &format!("/kv/{key}"), format!("value-of-{key}").as_bytes(), 200);
            keys.push(key);
        }
    }
    keys.sort();
    for node in &nodes {
        read_all(node.http, &keys);
    }

    // A restarted node (no --bootstrap: it has data) reopens its replicas with their data; it
    // finds the other nodes in the table's node list it saved (no --peers needed).
    let saved = Path::new(&data_dir(&data, 2)).join("raft-kv-shard-nodes.json");
    eventually("the table's nodes saved", || saved.exists().then_some(()));
    let (raft, http, log) = (layout.raft[1], layout.http[1], log_file(&data, 2, 2));
    nodes[1].kill();
    nodes[1] = Node::start(
        2,
        raft,
        http,
        log,
        &["--data".to_owned(), data_dir(&data, 2), "--shards".to_owned(), SHARDS.to_string()],
    );
    read_all(nodes[1].http, &keys);

    // Each key is in its shard's group, and in no other shard's.
    let table_now = eventually("a routing table", || table(nodes[0].http));
    let placed = replicas(&table_now);
    let http_of = |id: u64| nodes[id as usize - 1].http;
    for key in &keys {
        let own = shard_of(key.as_bytes(), SHARDS);
        for (shard, replicas) in placed.iter().enumerate() {
            let replica = *replicas.iter().next().expect("a replica");
            let holds = shard_holds(http_of(replica), shard as u32, key);
            assert_eq!(holds, ShardId(shard as u32) == own, "{key} in shard {shard} (its shard: {own})");
        }
    }

    // A scan from every node returns every key with the prefix, in key order.
    until("PUT", nodes[0].http, "/kv/zzz", b"value-of-zzz", 200); // Not in the scans below.
    for node in &nodes {
        let answer: Value =
            serde_json::from_slice(&until("GET", node.http, "/kv?prefix=user:", &[], 200).body).expect("a JSON page");
        assert_eq!(scanned(&answer), keys, "{answer}");
        assert_eq!(answer["more"], false);
        let first_three: Value =
            serde_json::from_slice(&until("GET", node.http, "/kv?prefix=user:&limit=3", &[], 200).body).expect("JSON");
        assert_eq!(scanned(&first_three), keys[..3].to_vec());
        assert_eq!(first_three["more"], true);
    }
    assert_eq!(until("GET", nodes[0].http, "/kv?limit=100000", &[], 400).status, 400);
    // The CLI's scan (its prefix encoded in the query).
    until("PUT", nodes[0].http, "/kv/a%20b&c=d", b"value-of-a b&c=d", 200);
    let listed = cli(&["scan", "--prefix", "a b&", "--node", &nodes[2].http.to_string()]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("a JSON page");
    assert_eq!(scanned(&listed), vec!["a b&c=d".to_owned()], "{listed}");

    // A fourth node joins: the controller gives it replicas, every shard keeps two.
    let join = vec!["--join".to_owned(), format!("http://{}", layout.http[0])];
    nodes.push(spawn_sharded(&layout, 3, &data, &join));
    let fourth = nodes[3].http;
    eventually("node 4 holding replicas, every shard at two", || {
        let table = table(fourth)?;
        let placed = replicas(&table);
        let held = numbers(&table["held"]);
        let balanced = placed.iter().all(|replicas| replicas.len() == 2)
            && placed.iter().filter(|replicas| replicas.contains(&4)).count() == 2;
        // Its replicas are voters of their groups (the moves are done).
        let voting =
            table["shards"].as_array()?.iter().filter(|shard| numbers(&shard["replicas"]).contains(&4)).all(|shard| {
                numbers(&shard["local"]["voters"]).contains(&4) && numbers(&shard["local"]["voters"]).len() == 2
            });
        (balanced && held.len() == 2 && voting).then_some(())
    });
    for node in &nodes {
        read_all(node.http, &keys);
    }

    // Drain node 4 (the CLI): every replica moves off it, then the table forgets it.
    let drained = cli(&["drain", "4", "--node", &nodes[1].http.to_string()]);
    assert!(drained.status.success(), "{}", text(&drained.stderr));
    assert!(text(&drained.stdout).contains("version"), "{}", text(&drained.stdout));
    eventually("node 4 emptied and forgotten", || {
        let table = table(nodes[0].http)?;
        let moved = replicas(&table).iter().all(|replicas| replicas.len() == 2 && !replicas.contains(&4));
        let held = numbers(&self::table(fourth)?["held"]);
        (moved && table["nodes"].get("4").is_none() && held.is_empty()).then_some(())
    });
    for node in &nodes[..3] {
        read_all(node.http, &keys);
    }
}

/// With `--tls`: sharded nodes serve HTTPS, their admin endpoints (the controller's calls between
/// nodes included) refuse a request without the admin token, a key on another node is redirected
/// to an https:// address, and a third node joins over HTTPS and receives replicas (the
/// controller observing and driving the other node through `HttpPeers`, with the CA and token).
#[test]
fn a_sharded_tls_cluster_wants_the_admin_token_and_takes_a_node_over_https() {
    let (_dir, data) = temp();
    let tls = data.join("tls");
    let request = CertsRequest { out: tls.clone(), nodes: 3, cluster_id: 1, days: 1, data_token: false, force: false };
    certs::generate(&request).expect("certificates");
    let layout = layout(3, 2);
    let tls_arg = tls.display().to_string();
    let first = ["--bootstrap", "--peers", &layout.peers, "--tls", &tls_arg].map(str::to_owned);
    let mut nodes: Vec<Node> = (0..2).map(|index| spawn_sharded(&layout, index, &data, &first)).collect();
    let anonymous = Https::new(&tls.join(certs::CA_CERT));
    let admin = anonymous.with_token_file(&tls.join(certs::ADMIN_TOKEN));
    let http = nodes[0].http;
    let tls_table = |node: SocketAddr| {
        let reply = anonymous.call("GET", node, "/cluster/shards", &[]).ok()?;
        (reply.status == 200 && reply.json()["version"].as_u64() > Some(0)).then(|| reply.json())
    };
    eventually("a routing table", || tls_table(http));
    for (method, path, body) in [
        ("GET", "/internal/observe", ""),
        ("POST", "/internal/carry-out", r#"{"action":"transfer_leader","shard":0,"to":1}"#),
        ("POST", "/cluster/drain", r#"{"id":1}"#),
        ("POST", "/cluster/nodes", r#"{"id":5,"raft":"127.0.0.1:1","http":"127.0.0.1:2"}"#),
    ] {
        let reply = anonymous.call(method, http, path, body.as_bytes()).expect("an answer");
        assert_eq!(reply.status, 401, "{path}: {}", reply.text());
        assert_eq!(reply.json()["reason"], "unauthorized");
    }
    let observed = admin.call("GET", http, "/internal/observe", &[]).expect("an answer");
    assert_eq!(observed.status, 200, "{}", observed.text());
    assert!(observed.json()["leading"].is_array() && observed.json()["held"].is_array(), "{}", observed.text());
    let put = eventually("a write", || {
        let reply = anonymous.call("PUT", http, "/kv/k", b"v").ok()?;
        (reply.status == 200 || reply.status == 307).then_some(reply)
    });
    if put.status == 307 {
        let location = put.location.expect("a Location");
        assert!(location.starts_with("https://") && location.contains("?table_version="), "{location}");
    }

    // A third node joins over HTTPS: it ends up holding replicas as a voter.
    let join = ["--tls".to_owned(), tls_arg.clone(), "--join".to_owned(), format!("https://{http}")];
    nodes.push(spawn_sharded(&layout, 2, &data, &join));
    let third = nodes[2].http;
    eventually("node 3 holding replicas as a voter", || {
        let table = tls_table(third)?;
        let mine: Vec<&Value> =
            table["shards"].as_array()?.iter().filter(|shard| numbers(&shard["replicas"]).contains(&3)).collect();
        let voting = mine.iter().all(|shard| numbers(&shard["local"]["voters"]).contains(&3));
        (replicas(&table).iter().all(|replicas| replicas.len() == 2) && mine.len() >= 2 && voting).then_some(())
    });
}

/// `raft-kv cluster --shards 4 --replicas 2` starts a sharded cluster of three; the client
/// commands work against it from any node (`put`, `get` following 307s, `shards`).
#[cfg(target_os = "linux")]
#[test]
fn the_launcher_starts_a_sharded_cluster() {
    let (_dir, data) = temp();
    let launcher_log = || std::fs::read_to_string(data.join("launcher.log")).unwrap_or_default();
    // The ports are found free, then let go for the launcher's nodes: another test may take one
    // in between. A node that finds its port taken is the only reason to start over (on a fresh
    // block and data directory), at most a few times.
    let mut attempt = 0;
    let (mut launcher, http_port) = loop {
        attempt += 1;
        let http_port = eventually("a block of free ports", || {
            let first = common::free_port().port();
            let listeners: Vec<std::net::TcpListener> = (first..first.checked_add(5)?)
                .map(|port| std::net::TcpListener::bind(("127.0.0.1", port)).ok())
                .collect::<Option<_>>()?;
            drop(listeners);
            Some(first)
        });
        let log = std::fs::File::create(data.join("launcher.log")).expect("a log file");
        let mut launcher = Command::new(env!("CARGO_BIN_EXE_raft-kv"))
            .args(["cluster", "--nodes", "3", "--shards", "4", "--replicas", "2"])
            .args(["--http-port", &http_port.to_string(), "--raft-port", &(http_port + 3).to_string()])
            .arg("--data")
            .arg(data.join(format!("data-{attempt}")))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log)
            .spawn()
            .expect("the launcher starts");
        let node = |index: u16| SocketAddr::from(([127, 0, 0, 1], http_port + index));
        // Until every node has a table: a node that stops fails the test at once (or starts over
        // if its port was taken), and a timeout shows what the nodes logged.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut tables = 0;
        while tables < 3 {
            if let Some(table) = table(node(tables)) {
                assert_eq!(table["shard_count"], 4, "{table}");
                assert!(replicas(&table).iter().all(|replicas| replicas.len() == 2), "{table}");
                tables += 1;
                continue;
            }
            let log = launcher_log();
            if log.contains("failed (exit status") || launcher.try_wait().is_ok_and(|status| status.is_some()) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no routing table on node {tables}:\n{log}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if tables == 3 {
            break (launcher, http_port);
        }
        let _ = launcher.kill();
        let _ = launcher.wait();
        let log = launcher_log();
        assert!(log.contains("Address already in use") && attempt < 3, "a node stopped:\n{log}");
    };
    let node = |index: u16| SocketAddr::from(([127, 0, 0, 1], http_port + index));
    for index in 0..3u16 {
        let key = format!("launched-{index}");
        let at = node(index).to_string();
        eventually("a put", || cli(&["put", &key, "v", "--node", &at]).status.success().then_some(()));
        let other = node((index + 1) % 3).to_string();
        // The shards' leaders may still be settling (or change under a loaded machine): a 503
        // (no leader known, leadership changed) asks the client to retry; any other failure fails.
        let got = eventually("a linearizable read on another node", || {
            let got = cli(&["get", &key, "--node", &other]);
            (got.status.success() || !text(&got.stderr).contains("HTTP 503")).then_some(got)
        });
        assert!(got.status.success(), "{}{}", text(&got.stdout), text(&got.stderr));
        assert_eq!(text(&got.stdout).trim(), "v");
    }
    let shards = cli(&["shards", "--node", &node(0).to_string()]);
    assert!(shards.status.success(), "{}", text(&shards.stderr));
    let shards: Value = serde_json::from_slice(&shards.stdout).expect("JSON");
    assert_eq!(shards["nodes"].as_object().map(serde_json::Map::len), Some(3), "{shards}");
    let _ = launcher.kill();
    let _ = launcher.wait();
}

/// A sharded node whose shared write-ahead log fails (a file-size limit, as in operability.rs)
/// says why and exits with code 3, like a single-group node; and a node without data is refused
/// unless it bootstraps or joins.
#[cfg(unix)]
#[test]
fn a_sharded_node_whose_storage_fails_exits_with_code_3() {
    let (_dir, data) = temp();
    let layout = layout(1, 1);
    let refused = cli(&[
        "serve",
        "--id",
        "1",
        "--raft",
        &layout.raft[0].to_string(),
        "--http",
        &layout.http[0].to_string(),
        "--data",
        &data_dir(&data, 9),
        "--shards",
        "2",
    ]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains("--bootstrap"), "{}", text(&refused.stderr));

    // 4 MiB (or 8): room for the 1 MiB of zeros the shared log fills ahead of its records.
    let wrapper = ["sh", "-c", r#"trap '' XFSZ && ulimit -f 8192 && exec "$0" "$@""#];
    let args =
        ["--peers", &layout.peers, "--data", &data_dir(&data, 1), "--bootstrap", "--shards", "2"].map(str::to_owned);
    let log = log_file(&data, 1, 1);
    let mut node = Node::start_under(&wrapper, 1, layout.raft[0], layout.http[0], log.clone(), &args);
    eventually("a routing table", || table(node.http));
    let value = vec![b'v'; 64 * 1024];
    let mut writes = 0;
    let exit = eventually("the node to fail and exit", || {
        let exit = node.exited();
        if exit.is_none() {
            writes += 1;
            let _ = call("PUT", node.http, &format!("/kv/key{writes}"), &value); // Fails in the end.
        }
        exit
    });
    let text = std::fs::read_to_string(&log).expect("the log");
    assert_eq!(exit.code(), Some(3), "a fail-stop exits with code 3: {exit:?}\n{text}");
    assert!(text.contains("stopped by itself"), "the reason is logged:\n{text}");
}
