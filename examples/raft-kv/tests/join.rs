//! End to end: a fourth `raft-kv serve --join` process joins a running three-node cluster,
//! catches up, becomes a voter that the quorum depends on, and restarts on its data directory
//! without joining again, even when the node it joined through is down.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::{Layout, Node, data_dir, eventually, ids, layout, leader, log_file, spawn, status, temp, until};

/// Starts node 4 with `--join` (and no `--peers`), exactly as the README shows.
fn start_joiner(layout: &Layout, data: &Path, target: SocketAddr, incarnation: u32) -> Node {
    let args = ["--data".to_owned(), data_dir(data, 4), "--join".to_owned(), format!("http://{target}")];
    Node::start(4, layout.raft[3], layout.http[3], log_file(data, 4, incarnation), &args)
}

/// Waits until `node` reports voters 1 to 4, no learner and no joint configuration.
fn wait_for_four_voters(node: SocketAddr) {
    eventually("voters 1, 2, 3, 4 with no learner", || {
        let status = status(node)?;
        let settled = ids(&status, "voters") == [1, 2, 3, 4]
            && ids(&status, "learners").is_empty()
            && ids(&status, "voters_outgoing").is_empty();
        settled.then_some(())
    });
}

/// Asserts that every key in `expected` reads back on `node`, linearizably.
fn assert_reads(node: SocketAddr, expected: &[(String, String)]) {
    for (key, value) in expected {
        let response = until("GET", node, &format!("/kv/{key}?consistency=linearizable"), &[], 200);
        assert_eq!(response.text(), *value, "{key} on {node}");
    }
}

fn log_text(data: &Path, incarnation: u32) -> String {
    std::fs::read_to_string(log_file(data, 4, incarnation)).unwrap_or_default()
}

#[test]
fn a_fourth_node_joins_catches_up_votes_and_restarts_without_joining_again() {
    let (_dir, data) = temp();
    let layout = layout(4, 3);
    let mut nodes: Vec<Node> = (0..3).map(|i| spawn(&layout, i, &data, 1)).collect();
    let first = leader(&nodes.iter().collect::<Vec<_>>());
    let mut written: Vec<(String, String)> = Vec::new();
    for i in 0..20 {
        let (key, value) = (format!("before{i}"), format!("value {i}"));
        until("PUT", nodes[i % 3].http, &format!("/kv/{key}"), value.as_bytes(), 200);
        written.push((key, value));
    }

    // Join through a follower: the request is redirected to the leader.
    let target = nodes.iter().find(|node| node.id != first).expect("a follower").id;
    let target_http = nodes[target as usize - 1].http;
    nodes.push(start_joiner(&layout, &data, target_http, 1));
    let joiner = nodes[3].http;
    wait_for_four_voters(nodes[first as usize - 1].http);
    wait_for_four_voters(joiner);
    let log = log_text(&data, 1);
    assert!(log.contains("add as learner") && log.contains("promote"), "{log}");

    // It has everything written before it joined, read on it (stale, once applied, and
    // linearizable), and takes writes.
    for (key, value) in &written {
        eventually("a stale read of earlier data on the new node", || {
            let response = common::call("GET", joiner, &format!("/kv/{key}?consistency=stale"), &[])?;
            (response.status == 200 && response.text() == *value).then_some(())
        });
    }
    assert_reads(joiner, &written);
    until("PUT", joiner, "/kv/after-join", b"through node 4", 200);
    written.push(("after-join".to_owned(), "through node 4".to_owned()));
    assert_reads(nodes[0].http, &written);

    // kill -9 the node it joined through: three of four voters are left, so every commit now
    // needs node 4's acknowledgement.
    nodes[target as usize - 1].kill();
    until("PUT", joiner, "/kv/without-target", b"3 of 4", 200);
    written.push(("without-target".to_owned(), "3 of 4".to_owned()));
    assert_reads(joiner, &written);

    // kill -9 node 4 and restart it with the same command while its join target is still down:
    // it must neither ask to join again nor need the target to find the others.
    nodes[3].kill();
    nodes[3] = start_joiner(&layout, &data, target_http, 2);
    eventually("the restarted node to see it is a voter", || {
        log_text(&data, 2).contains("not asking to join").then_some(())
    });
    let log = log_text(&data, 2);
    assert!(!log.contains("add as learner") && !log.contains("promote"), "{log}");
    until("PUT", joiner, "/kv/after-restart", b"node 4 is back", 200);
    written.push(("after-restart".to_owned(), "node 4 is back".to_owned()));
    assert_reads(joiner, &written);
    wait_for_four_voters(joiner);

    // Bring the target back, then kill -9 the leader: electing the next one takes three votes of
    // four, node 4's included (unless node 4 was the leader).
    nodes[target as usize - 1] = spawn(&layout, target as usize - 1, &data, 2);
    assert_reads(nodes[target as usize - 1].http, &written);
    let current = leader(&nodes.iter().collect::<Vec<_>>());
    nodes[current as usize - 1].kill();
    let survivors: Vec<&Node> = nodes.iter().filter(|node| node.id != current).collect();
    let next = leader(&survivors);
    assert_ne!(next, current);
    until("PUT", survivors[0].http, "/kv/after-leader-loss", b"still 3 of 4", 200);
    written.push(("after-leader-loss".to_owned(), "still 3 of 4".to_owned()));
    for node in survivors {
        assert_reads(node.http, &written);
    }
}
