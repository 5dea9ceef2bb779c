//! End to end, recovery from a lost quorum: a three-node cluster with committed data loses two
//! nodes for good; `raft-kv recover` (refused while the node runs) makes the third the only
//! voter; it serves every key it had, and two new nodes join it with `serve --join`.

mod common;

use std::process::Command;

use common::{Node, data_dir, eventually, ids, layout, leader, log_file, spawn, status, temp, until};

#[test]
fn a_survivor_of_a_lost_quorum_is_recovered_serves_its_data_and_new_nodes_join() {
    let (_dir, data) = temp();
    let layout = layout(5, 3);
    let mut nodes: Vec<Node> = (0..3).map(|i| spawn(&layout, i, &data, 1)).collect();
    leader(&nodes.iter().collect::<Vec<_>>());
    for i in 0..20 {
        until("PUT", nodes[i % 3].http, &format!("/kv/key{i}"), format!("value {i}").as_bytes(), 200);
    }
    let recover = || {
        Command::new(env!("CARGO_BIN_EXE_raft-kv"))
            .args(["recover", "--id", "3", "--data", &data_dir(&data, 3)])
            .output()
            .expect("the binary runs")
    };

    // Refused while node 3 runs: its store is in use.
    let refused = recover();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("in use"), "{refused:?}");

    // Nodes 1 and 2 are lost for good (kill -9, never restarted); node 3 is stopped.
    for node in &mut nodes {
        node.kill();
    }
    let recovered = recover();
    assert!(recovered.status.success(), "{recovered:?}");
    assert!(String::from_utf8_lossy(&recovered.stdout).contains("only voter"), "{recovered:?}");

    // Node 3 alone elects itself and serves every key, linearizably.
    nodes[2] = spawn(&layout, 2, &data, 2);
    assert_eq!(leader(&[&nodes[2]]), 3);
    let survivor = nodes[2].http;
    for i in 0..20 {
        let response = until("GET", survivor, &format!("/kv/key{i}?consistency=linearizable"), &[], 200);
        assert_eq!(response.text(), format!("value {i}"));
    }
    until("PUT", survivor, "/kv/after", b"recovery", 200);

    // Two new nodes join it.
    for id in [4u64, 5] {
        let index = id as usize - 1;
        let args = ["--data".to_owned(), data_dir(&data, id), "--join".to_owned(), format!("http://{survivor}")];
        nodes.push(Node::start(id, layout.raft[index], layout.http[index], log_file(&data, id, 1), &args));
        eventually("the new node to be a voter", || ids(&status(survivor)?, "voters").contains(&id).then_some(()));
    }
    eventually("voters 3, 4, 5 with no learner", || {
        let status = status(survivor)?;
        (ids(&status, "voters") == [3, 4, 5] && ids(&status, "learners").is_empty()).then_some(())
    });
    let response = until("GET", nodes[4].http, "/kv/key7?consistency=linearizable", &[], 200);
    assert_eq!(response.text(), "value 7");
    until("PUT", nodes[3].http, "/kv/three-voters", b"again", 200);
}

/// `GET /cluster/shards` of `node`, once it has a routing table.
fn table(node: std::net::SocketAddr) -> Option<serde_json::Value> {
    let response = common::call("GET", node, "/cluster/shards", &[])?;
    let table: serde_json::Value = serde_json::from_slice(&response.body).ok()?;
    (response.status == 200 && table["version"].as_u64() > Some(0)).then_some(table)
}

fn numbers(value: &serde_json::Value) -> Vec<u64> {
    value.as_array().map(|ids| ids.iter().filter_map(serde_json::Value::as_u64).collect()).unwrap_or_default()
}

/// A sharded cluster of three (two shards of three replicas) loses two nodes for good: every
/// group, the meta group's included, lost its majority. `raft-kv recover --all` (refused while
/// the node runs, and without naming the groups) makes the third node the only voter of each;
/// it serves every key, a new node joins, and the controller forgets the lost nodes and places
/// every shard on the two that run.
#[test]
fn a_sharded_survivor_is_recovered_and_the_controller_replaces_the_lost_nodes() {
    let (_dir, data) = temp();
    let layout = layout(4, 3);
    let sharded = |id: u64| {
        let mut args = vec!["--data".to_owned(), data_dir(&data, id), "--shards".to_owned(), "2".to_owned()];
        args.extend(["--replicas", "3", "--failed-after", "2"].map(str::to_owned));
        args
    };
    let mut nodes: Vec<Node> = (0..3u64)
        .map(|i| {
            let mut args = sharded(i + 1);
            args.extend(["--bootstrap".to_owned(), "--peers".to_owned(), layout.peers.clone()]);
            Node::start(i + 1, layout.raft[i as usize], layout.http[i as usize], log_file(&data, i + 1, 1), &args)
        })
        .collect();
    for node in &nodes {
        eventually("a routing table", || table(node.http));
    }
    let keys: Vec<String> = (0..12).map(|i| format!("key{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        until("PUT", nodes[i % 3].http, &format!("/kv/{key}"), format!("value of {key}").as_bytes(), 200);
    }
    let recover = |groups: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_raft-kv"))
            .args(["recover", "--id", "3", "--data", &data_dir(&data, 3)])
            .args(groups)
            .output()
            .expect("the binary runs")
    };
    let refused = recover(&["--all"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("in use"), "{refused:?}");

    for node in &mut nodes {
        node.kill();
    }
    // Without naming the groups: refused, with the list of groups and how to name them.
    let unnamed = recover(&[]);
    let stderr = String::from_utf8_lossy(&unnamed.stderr);
    assert_eq!(unnamed.status.code(), Some(1), "{unnamed:?}");
    for expected in ["sharded node's store", "the meta group (--meta): voters 1, 2, 3", "shard 1 (--shard 1)"] {
        assert!(stderr.contains(expected), "{expected:?} in {stderr}");
    }
    // A shard it does not hold: refused before anything is written.
    let missing = recover(&["--shard", "7"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no replica of shard 7"), "{missing:?}");
    let recovered = recover(&["--all"]);
    assert!(recovered.status.success(), "{recovered:?}");
    let stdout = String::from_utf8_lossy(&recovered.stdout);
    for expected in ["the meta group: node 3 is now the only voter", "shard 0: node 3", "shard 1: node 3"] {
        assert!(stdout.contains(expected), "{expected:?} in {stdout}");
    }

    // The shards are noted as recovered until the table's record of their members catches up.
    let noted = std::path::Path::new(&data_dir(&data, 3)).join("raft-kv-recovered-shards.json");
    assert_eq!(std::fs::read_to_string(&noted).expect("the recovered shards noted"), "[0,1]");

    // Node 3 alone serves every key, linearizably, and takes writes.
    nodes[2] = Node::start(3, layout.raft[2], layout.http[2], log_file(&data, 3, 2), &sharded(3));
    let survivor = nodes[2].http;
    for key in &keys {
        let response = until("GET", survivor, &format!("/kv/{key}?consistency=linearizable"), &[], 200);
        assert_eq!(response.text(), format!("value of {key}"));
    }
    until("PUT", survivor, "/kv/after", b"recovery", 200);

    // A new node joins; the lost nodes are marked failed, then forgotten; both shards end on
    // nodes 3 and 4, as voters, with every key.
    let mut join = sharded(4);
    join.extend(["--join".to_owned(), format!("http://{survivor}")]);
    nodes.push(Node::start(4, layout.raft[3], layout.http[3], log_file(&data, 4, 1), &join));
    eventually("the lost nodes forgotten, both shards on nodes 3 and 4", || {
        let table = table(survivor)?;
        let nodes: Vec<&String> = table["nodes"].as_object()?.keys().collect();
        // The replicas the table names, and the voters of node 3's replica of each shard.
        let placed = table["shards"].as_array()?.iter().all(|shard| {
            numbers(&shard["replicas"]) == [3, 4]
                && numbers(&shard["local"]["voters"]) == [3, 4]
                && numbers(&shard["local"]["learners"]).is_empty()
        });
        // The meta group keeps node 3 its only voter: two voters would need both. Node 4 is a
        // learner of it, with the table.
        let meta = status(survivor)?;
        let meta = numbers(&meta["meta"]["voters"]) == [3] && numbers(&meta["meta"]["learners"]) == [4];
        (nodes == ["3", "4"] && placed && meta).then_some(())
    });
    assert!(!noted.exists(), "the note is dropped once the record caught up");
    let fourth = nodes[3].http;
    for key in keys.iter().chain([&"after".to_owned()]) {
        let response = until("GET", fourth, &format!("/kv/{key}?consistency=linearizable"), &[], 200);
        assert!(response.text() == format!("value of {key}") || key == "after", "{key}: {}", response.text());
    }
}

/// A node that the cluster forgot while it was down (marked failed after `--failed-after`, its
/// replicas re-created on the others, then removed from the table) refuses to start on its old
/// data, saying so, instead of running groups that no longer count it.
#[test]
fn a_node_forgotten_while_down_refuses_to_start_on_its_old_data() {
    let (_dir, data) = temp();
    let layout = layout(4, 4);
    let args = |id: u64| {
        let mut args = vec!["--data".to_owned(), data_dir(&data, id), "--shards".to_owned(), "4".to_owned()];
        args.extend(["--replicas", "3", "--failed-after", "1"].map(str::to_owned));
        args
    };
    let mut nodes: Vec<Node> = (0..4u64)
        .map(|i| {
            let mut args = args(i + 1);
            args.extend(["--bootstrap".to_owned(), "--peers".to_owned(), layout.peers.clone()]);
            Node::start(i + 1, layout.raft[i as usize], layout.http[i as usize], log_file(&data, i + 1, 1), &args)
        })
        .collect();
    for node in &nodes {
        eventually("a routing table", || table(node.http));
    }
    until("PUT", nodes[0].http, "/kv/kept", b"value", 200);
    let saved = std::path::Path::new(&data_dir(&data, 4)).join("raft-kv-shard-nodes.json");
    eventually("node 4's list of nodes saved", || saved.exists().then_some(()));
    nodes[3].kill();
    eventually("node 4 forgotten", || {
        let table = table(nodes[0].http)?;
        let placed = table["shards"].as_array()?.iter().all(|shard| !numbers(&shard["replicas"]).contains(&4));
        (table["nodes"].get("4").is_none() && placed).then_some(())
    });
    let mut again = Node::start(4, layout.raft[3], layout.http[3], log_file(&data, 4, 2), &args(4));
    let exit = again.exited_within(std::time::Duration::from_secs(30)).expect("node 4 exits");
    assert_eq!(exit.code(), Some(1), "{exit:?}");
    let log = std::fs::read_to_string(log_file(&data, 4, 2)).expect("node 4's log");
    assert!(log.contains("node 4 is no longer in the cluster's routing table"), "{log}");
    let response = until("GET", nodes[1].http, "/kv/kept?consistency=linearizable", &[], 200);
    assert_eq!(response.text(), "value");
}
