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
