//! End to end: the real `raft-kv` binary as processes on 127.0.0.1, driven over HTTP.
//! Waits poll with generous deadlines; nothing asserts on durations.

mod common;

use common::{Layout, Node, PATIENCE, assert_json_error, call, data_dir, layout, leader, spawn, temp, until};

/// The largest value the service takes (`VALUE_BYTES_MAX`).
const VALUE_BYTES_MAX: usize = 1024 * 1024;

fn cluster(layout: &Layout, count: usize, data: &std::path::Path) -> Vec<Node> {
    (0..count).map(|i| spawn(layout, i, data, 1)).collect()
}

#[test]
fn writes_reads_failover_restart_and_bad_input_over_http() {
    let (_dir, data) = temp();
    let layout = layout(3, 3);
    let mut nodes = cluster(&layout, 3, &data);
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

    // The exporter serves the library's series (proposals, WAL fsyncs, messages) and the node's.
    let metrics = until("GET", nodes[first as usize - 1].http, "/metrics", &[], 200).text();
    let applied = format!("raft_proposals_total{{node=\"{first}\",group=\"0\",outcome=\"applied\"}}");
    for series in [applied.as_str(), "raft_wal_fsync_seconds", "raft_messages_total{", "raft_term{", "kv_keys{"] {
        assert!(metrics.contains(series), "no {series} in /metrics:\n{metrics}");
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
    nodes[first as usize - 1] = spawn(&layout, first as usize - 1, &data, 2);
    let restarted = nodes[first as usize - 1].http;
    for (key, value) in [("key1", &b"value"[..]), ("key2", b"value"), ("key3", b"value"), ("after", b"failover")] {
        let response = until("GET", restarted, &format!("/kv/{key}?consistency=linearizable"), &[], 200);
        assert_eq!(response.body, value);
    }
}

/// Every consistency level a read may ask for returns what was written: `linearizable`,
/// `follower` and `lease` see the latest write (on every node, the instant the write was
/// acknowledged); `stale` sees an earlier or the latest value, and the latest once applied.
#[test]
fn reads_at_every_consistency_level_return_the_written_values() {
    let (_dir, data) = temp();
    let layout = layout(3, 3);
    let nodes = cluster(&layout, 3, &data);
    let all: Vec<&Node> = nodes.iter().collect();
    let first = leader(&all);
    let leader_http = nodes[first as usize - 1].http;

    for round in 1..=3 {
        let value = format!("value {round}");
        // A write through a follower, redirected to the leader.
        let follower = nodes.iter().find(|node| node.id != first).map_or(leader_http, |node| node.http);
        until("PUT", follower, "/kv/key", value.as_bytes(), 200);
        for node in &nodes {
            for consistency in ["linearizable", "follower", "lease"] {
                let response = until("GET", node.http, &format!("/kv/key?consistency={consistency}"), &[], 200);
                assert_eq!(response.text(), value, "{consistency} read on node {} after round {round}", node.id);
            }
            let response = until("GET", node.http, "/kv/key", &[], 200);
            assert_eq!(response.text(), value, "default (linearizable) read on node {}", node.id);
            common::eventually("a stale read to catch up", || {
                let response = call("GET", node.http, "/kv/key?consistency=stale", &[])?;
                let text = response.text();
                let earlier = (1..round).any(|earlier| text == format!("value {earlier}"));
                assert!(response.status != 200 || text == value || earlier, "stale read on node {}: {text}", node.id);
                (response.status == 200 && text == value).then_some(())
            });
        }
    }
    let response = until("GET", leader_http, "/kv/missing?consistency=lease", &[], 404);
    assert_json_error(&response, 404);
}

/// Every 4xx is a JSON error, axum's own rejections included: a body over a route's limit
/// (which axum answers in plain text unless mapped), a path that is not UTF-8, a repeated query
/// field, an unknown endpoint, a wrong method. A value of exactly the limit is taken.
#[test]
fn every_rejection_is_a_json_error_including_bodies_over_the_limit() {
    let (_dir, data) = temp();
    let layout = layout(1, 1);
    let nodes = cluster(&layout, 1, &data);
    let http = nodes[0].http;
    leader(&[&nodes[0]]);

    let largest = vec![b'v'; VALUE_BYTES_MAX];
    until("PUT", http, "/kv/largest", &largest, 200);
    assert_eq!(until("GET", http, "/kv/largest?consistency=stale", &[], 200).body.len(), VALUE_BYTES_MAX);

    let just_over = vec![b'v'; VALUE_BYTES_MAX + 1];
    let response = until("PUT", http, "/kv/over", &just_over, 413);
    assert_json_error(&response, 413);
    assert!(response.text().contains("value exceeds"), "{}", response.text());

    // Bodies past the limits: 3 MiB is over every route's limit and over axum's default (2 MiB).
    let huge = vec![b'x'; 3 * 1024 * 1024];
    for (method, path) in [("PUT", "/kv/huge"), ("POST", "/kv/huge/cas"), ("POST", "/cluster/members")] {
        let response = until(method, http, path, &huge, 413);
        assert_json_error(&response, 413);
        assert!(response.text().contains("body exceeds"), "{method} {path}: {}", response.text());
    }
    // Far past the limit the server answers before it has read the body and closes: the client
    // still gets the answer.
    let response = until("PUT", http, "/kv/huge", &vec![b'x'; 32 * 1024 * 1024], 413);
    assert_json_error(&response, 413);
    let admin = vec![b' '; 100 * 1024]; // Small JSON objects only.
    assert_json_error(&until("POST", http, "/cluster/leader", &admin, 413), 413);
    assert_json_error(&until("GET", http, "/kv/huge", &[], 404), 404);
    assert_json_error(&until("GET", http, "/kv/over", &[], 404), 404);

    assert_json_error(&until("GET", http, "/kv/%FF", &[], 400), 400);
    assert_json_error(&until("GET", http, "/kv/k?consistency=lease&consistency=stale", &[], 400), 400);
    assert_json_error(&until("GET", http, "/no/such/endpoint", &[], 404), 404);
    assert_json_error(&until("PATCH", http, "/kv/k", &[], 405), 405);
    assert_json_error(&until("GET", http, "/cluster/members", &[], 405), 405);
    assert_json_error(&until("POST", http, "/kv/k/cas", b"{not json", 400), 400);
}

/// The membership endpoint guards against the two mistakes a retried or mistaken join makes:
/// adding a voter again as a learner (which would demote it) is refused, and so is promoting a
/// learner that has not caught up (here one that is not even running), which would make a voter
/// of a node that cannot help commit. Adding a learner twice is idempotent; removing it works.
#[test]
fn membership_changes_refuse_to_demote_a_voter_or_promote_a_lagging_learner() {
    let (_dir, data) = temp();
    let layout = layout(3, 3);
    let nodes = cluster(&layout, 3, &data);
    let all: Vec<&Node> = nodes.iter().collect();
    leader(&all);
    let http = nodes[0].http;
    let members = |body: serde_json::Value, status: u16| {
        let response = until("POST", http, "/cluster/members", body.to_string().as_bytes(), status);
        serde_json::from_slice::<serde_json::Value>(&response.body).expect("a JSON answer")
    };
    let (raft, node_http) = (common::free_port(), common::free_port()); // Nobody listens there.
    let add = serde_json::json!({ "action": "add_learner", "id": 9, "raft": raft, "http": node_http });

    let answer = members(add.clone(), 200);
    assert_eq!((common::ids(&answer, "voters"), common::ids(&answer, "learners")), (vec![1, 2, 3], vec![9]));
    let refused = members(serde_json::json!({ "action": "promote", "id": 9 }), 409);
    assert!(refused["error"].as_str().is_some_and(|error| error.contains("not caught up")), "{refused}");
    let again = members(add, 200);
    assert_eq!(common::ids(&again, "learners"), [9]);

    let demote =
        serde_json::json!({ "action": "add_learner", "id": 2, "raft": layout.raft[1], "http": layout.http[1] });
    let refused = members(demote, 409);
    assert!(refused["error"].as_str().is_some_and(|error| error.contains("is a voter")), "{refused}");

    let removed = members(serde_json::json!({ "action": "remove", "id": 9 }), 200);
    assert_eq!((common::ids(&removed, "voters"), common::ids(&removed, "learners")), (vec![1, 2, 3], vec![]));
    let status = common::status(http).expect("a status");
    assert_eq!((common::ids(&status, "voters"), common::ids(&status, "learners")), (vec![1, 2, 3], vec![]));
}

/// A voter whose data directory was lost must not come back as a fresh voter: it would have
/// forgotten its votes and could vote twice in one term (docs/pitfalls.md #27). Started again
/// without `--bootstrap`, it finds no store and exits non-zero, saying why; the launcher refuses
/// a cluster where some nodes have data and others have none.
#[test]
fn a_voter_whose_data_was_lost_refuses_to_start_as_a_new_voter() {
    let (_dir, data) = temp();
    let layout = layout(3, 3);
    let mut nodes = cluster(&layout, 3, &data);
    let all: Vec<&Node> = nodes.iter().collect();
    leader(&all);
    until("PUT", nodes[0].http, "/kv/k", b"v", 200);
    nodes[2].kill();
    std::fs::remove_dir_all(data_dir(&data, 3)).expect("node 3's data is there");

    let mut restarted = spawn(&layout, 2, &data, 2);
    let status = restarted.exited_within(PATIENCE).expect("node 3 exits instead of serving");
    assert!(!status.success(), "{status:?}");
    let log = std::fs::read_to_string(&restarted.log).expect("the log");
    assert!(log.contains("no store in") && log.contains("--bootstrap"), "{log}");

    let launcher = std::process::Command::new(env!("CARGO_BIN_EXE_raft-kv"))
        .args(["cluster", "--nodes", "3", "--http-port", "1", "--raft-port", "1", "--data"])
        .arg(&data)
        .output()
        .expect("the launcher runs");
    assert!(!launcher.status.success(), "{launcher:?}");
    let errors = String::from_utf8_lossy(&launcher.stderr);
    assert!(errors.contains("nodes [3] have no data"), "{errors}");
}
