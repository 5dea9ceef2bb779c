//! End to end: every error answer says in `"outcome"` whether the request may have been applied
//! and in `"reason"` why it failed, with the same words for reads and writes; and a node that was
//! removed from the cluster says so, even after a restart on its old data, instead of answering
//! "no leader; retry" forever.

mod common;

use common::{Node, call, eventually, layout, leader, spawn, status, temp, until};

/// The JSON body of an error answer.
fn error_body(response: &common::HttpResponse) -> serde_json::Value {
    serde_json::from_slice(&response.body).unwrap_or_else(|error| panic!("not JSON ({error}): {}", response.text()))
}

/// Asserts that `response` is an error with `status`, `reason` and `outcome`; returns its message.
fn assert_error(response: &common::HttpResponse, status: u16, reason: &str, outcome: &str) -> String {
    let body = error_body(response);
    assert_eq!(response.status, status, "{body}");
    assert_eq!((body["reason"].as_str(), body["outcome"].as_str()), (Some(reason), Some(outcome)), "{body}");
    body["error"].as_str().expect("a message").to_owned()
}

#[test]
fn every_error_says_whether_the_write_may_have_been_applied() {
    let (_dir, data) = temp();
    let layout = layout(3, 3);
    // One node of three: no leader can be elected, so nothing is appended.
    let mut nodes = vec![spawn(&layout, 0, &data, 1)];
    let http = nodes[0].http;
    let put = until("PUT", http, "/kv/k", b"v", 503);
    let write_message = assert_error(&put, 503, "no_leader", "not_applied");
    let cas = until("POST", http, "/kv/k/cas", br#"{"expected":null,"value":"v"}"#, 503);
    assert_error(&cas, 503, "no_leader", "not_applied");
    let delete = until("DELETE", http, "/kv/k", &[], 503);
    assert_error(&delete, 503, "no_leader", "not_applied");
    // A read fails for the same reason in the same words.
    let read = until("GET", http, "/kv/k?consistency=linearizable", &[], 503);
    assert_eq!(assert_error(&read, 503, "no_leader", "not_applied"), write_message);
    // Refusals before the handler runs, and bad input: not applied.
    assert_error(&until("PUT", http, &format!("/kv/{}", "k".repeat(2000)), b"v", 413), 413, "too_large", "not_applied");
    assert_error(&until("PATCH", http, "/kv/k", &[], 405), 405, "method_not_allowed", "not_applied");
    assert_error(&until("POST", http, "/kv/k/cas", b"{", 400), 400, "bad_request", "not_applied");

    nodes.push(spawn(&layout, 1, &data, 1));
    nodes.push(spawn(&layout, 2, &data, 1));
    let first = leader(&nodes.iter().collect::<Vec<_>>());
    let leader_http = nodes[first as usize - 1].http;
    until("PUT", leader_http, "/kv/k", b"before", 200);

    // Both followers die: a write the leader appends cannot commit. It times out with an
    // unknown outcome, unless the leader stepped down first (then nothing was appended).
    for node in nodes.iter_mut().filter(|node| node.id != first) {
        node.kill();
    }
    let response = call("PUT", leader_http, "/kv/k", b"after").expect("an answer");
    let body = error_body(&response);
    match body["reason"].as_str() {
        Some("timed_out" | "leadership_changed" | "node_stopped") => {
            assert_error(&response, 503, body["reason"].as_str().unwrap_or_default(), "unknown");
        }
        _ => {
            assert_error(&response, 503, "no_leader", "not_applied");
        }
    }
}

#[test]
fn a_removed_node_says_so_even_after_a_restart_on_its_old_data() {
    let (_dir, data) = temp();
    let layout = layout(3, 3);
    let mut nodes: Vec<Node> = (0..3).map(|i| spawn(&layout, i, &data, 1)).collect();
    let first = leader(&nodes.iter().collect::<Vec<_>>());
    let leader_http = nodes[first as usize - 1].http;
    until("PUT", leader_http, "/kv/k", b"v", 200);
    let removed = nodes.iter().find(|node| node.id != first).expect("a follower").id;
    let index = removed as usize - 1;
    let body = serde_json::json!({ "action": "remove", "id": removed }).to_string();
    until("POST", leader_http, "/cluster/members", body.as_bytes(), 200);

    let removed_http = nodes[index].http;
    eventually("the removed node to say so", || (status(removed_http)?["removed"] == true).then_some(()));
    eventually("the removed node to leave the address list", || {
        let addresses = status(leader_http)?["addresses"].as_object()?.clone();
        (!addresses.contains_key(&removed.to_string()) && addresses.len() == 2).then_some(())
    });
    assert_eq!(status(leader_http).expect("a status")["removed"], false);

    // Restarted on its old data, it still knows.
    nodes[index].kill();
    nodes[index] = spawn(&layout, index, &data, 2);
    eventually("the restarted node to say it was removed", || (status(removed_http)?["removed"] == true).then_some(()));
    assert_error(&until("PUT", removed_http, "/kv/k", b"w", 410), 410, "removed", "not_applied");
    assert_error(&until("GET", removed_http, "/kv/k", &[], 410), 410, "removed", "not_applied");
    // The others go on without it.
    let others: Vec<&Node> = nodes.iter().filter(|node| node.id != removed).collect();
    let now = leader(&others);
    until("PUT", nodes[now as usize - 1].http, "/kv/k", b"w", 200);
}
