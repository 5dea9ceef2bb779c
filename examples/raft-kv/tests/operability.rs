//! End to end, what an operator sees: a node that fail-stops says why and exits with code 3 (so
//! that a supervisor restarts it) while one asked to stop exits with 0; JSON logs; bad flags
//! refused by the command line parser; the client commands following redirects to the leader
//! with the method and body of the request.

mod common;

use std::process::{Command, Output};

use common::{Node, PATIENCE, call, data_dir, eventually, layout, leader, log_file, spawn, status, temp};

/// `raft-kv ARGS`, run to its end.
fn raft_kv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_raft-kv")).args(args).output().expect("the binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A real storage failure: the node runs under a file-size limit (`ulimit -f`, RLIMIT_FSIZE), with
/// SIGXFSZ ignored (ignored signals stay ignored across `exec`), so that the write that would
/// grow its WAL past the limit fails with EFBIG, as a full disk would fail it with ENOSPC.
#[cfg(unix)]
#[test]
fn a_node_whose_storage_fails_says_why_and_exits_with_code_3() {
    let (_dir, data) = temp();
    let layout = layout(1, 1);
    // 8192 blocks: 4 MiB (512-byte blocks, POSIX) or 8 MiB (bash's 1 KiB blocks); the store, the
    // 1 MiB of zeros its log fills ahead of its records and the first writes fit, and a hundred
    // or so 64 KiB values do not.
    let wrapper = ["sh", "-c", r#"trap '' XFSZ && ulimit -f 8192 && exec "$0" "$@""#];
    let args = ["--peers", &layout.peers, "--data", &data_dir(&data, 1), "--bootstrap"].map(str::to_owned);
    let log = log_file(&data, 1, 1);
    let mut node = Node::start_under(&wrapper, 1, layout.raft[0], layout.http[0], log.clone(), &args);
    leader(&[&node]);
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
    assert!(text.contains("stopped by itself") && text.contains("File too large"), "the reason is logged:\n{text}");
}

/// Asked to stop (SIGTERM), a node exits with 0: not a failure. Its `--log-format json` lines
/// are JSON objects, one per line.
#[cfg(unix)]
#[test]
fn a_node_asked_to_stop_exits_with_0_and_logs_json_lines() {
    let (_dir, data) = temp();
    let layout = layout(1, 1);
    let args = ["--peers", &layout.peers, "--data", &data_dir(&data, 1), "--bootstrap", "--log-format", "json"]
        .map(str::to_owned);
    let log = log_file(&data, 1, 1);
    let mut node = Node::start(1, layout.raft[0], layout.http[0], log.clone(), &args);
    leader(&[&node]);
    let pid = node.pid().expect("a running node").to_string();
    let sent = Command::new("kill").args(["-s", "TERM", &pid]).status();
    assert!(sent.is_ok_and(|status| status.success()), "kill -s TERM");
    let exit = node.exited_within(PATIENCE).expect("the node stops");
    let text = std::fs::read_to_string(&log).expect("the log");
    assert!(exit.success(), "a requested stop exits with 0: {exit:?}\n{text}");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}")))
        .collect();
    assert!(lines.iter().all(|line| line["level"].is_string() && line["fields"]["message"].is_string()), "{text}");
    let messages: Vec<&str> = lines.iter().filter_map(|line| line["fields"]["message"].as_str()).collect();
    assert!(messages.iter().any(|message| message.contains("stopping (SIGTERM)")), "{text}");
}

/// A second node on a data directory in use is refused before it reads or repairs anything: its
/// store is held (raft-storage's LOCK file), and the running node is not disturbed.
#[test]
fn a_second_node_on_a_data_directory_in_use_is_refused() {
    let (_dir, data) = temp();
    let layout = layout(2, 1);
    let args = ["--peers", &layout.peers, "--data", &data_dir(&data, 1), "--bootstrap"].map(str::to_owned);
    let node = Node::start(1, layout.raft[0], layout.http[0], log_file(&data, 1, 1), &args);
    leader(&[&node]);
    let (raft, http) = (layout.raft[1].to_string(), layout.http[1].to_string());
    let second = raft_kv(&["serve", "--id", "1", "--raft", &raft, "--http", &http, "--data", &data_dir(&data, 1)]);
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    assert!(stderr(&second).contains("in use by another process"), "{}", stderr(&second));
    let put = call("PUT", node.http, "/kv/still", b"serving");
    assert_eq!(put.map(|response| response.status), Some(200), "the first node serves on");
}

#[test]
fn bad_flags_are_refused_before_anything_runs() {
    let serve = ["serve", "--id", "1", "--raft", "127.0.0.1:1", "--http", "127.0.0.1:2", "--data", "/nonexistent"];
    let cases: [(Vec<&str>, &[&str]); 6] = [
        (vec!["get", "key", "--consistency", "bogus"], &["'bogus'", "linearizable, lease, follower, stale"]),
        ([&serve[..], &["--peers", "1=127.0.0.1:9091"]].concat(), &["ID=RAFT_ADDR=HTTP_ADDR"]),
        ([&serve[..], &["--peers", "2=127.0.0.1:9092=localhost"]].concat(), &["the HTTP address \"localhost\""]),
        ([&serve[..], &["--join", "127.0.0.1:8081"]].concat(), &["http://HOST:PORT"]),
        ([&serve[..], &["--log-format", "xml"]].concat(), &["'xml'", "text, json"]),
        (vec!["members", "add-learner", "4", "127.0.0.1:9094"], &["<HTTP>"]),
    ];
    for (args, expected) in cases {
        let output = raft_kv(&args);
        let errors = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: a usage error\n{errors}");
        for text in expected {
            assert!(errors.contains(text), "{args:?}: the message names {text:?}:\n{errors}");
        }
    }
    let output = raft_kv(&["members", "demote", "3"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
}

/// Writes sent to a follower get a 307 to the leader: the client commands follow it with the same
/// method and body (PUT, DELETE, and the POST of a leadership transfer).
#[test]
fn client_commands_follow_redirects_with_their_method_and_body() {
    let (_dir, data) = temp();
    let layout = layout(3, 3);
    let nodes: Vec<Node> = (0..3).map(|i| spawn(&layout, i, &data, 1)).collect();
    let first = leader(&nodes.iter().collect::<Vec<_>>());
    let followers: Vec<&Node> = nodes.iter().filter(|node| node.id != first).collect();
    let at = |node: &Node| node.http.to_string();
    let run = |args: &[&str]| {
        let output = raft_kv(args);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{args:?}: {stdout}{}", stderr(&output));
        stdout
    };
    let follower = at(followers[0]);
    // A write may meet an election: retry until it is taken.
    eventually("a PUT through a follower", || {
        raft_kv(&["put", "greeting", "hello", "--node", &follower]).status.success().then_some(())
    });
    assert_eq!(run(&["get", "greeting", "--node", &follower]).trim(), "hello");
    assert_eq!(run(&["get", "greeting", "--consistency", "follower", "--node", &follower]).trim(), "hello");
    assert!(run(&["delete", "greeting", "--node", &follower]).contains("\"deleted\":true"));
    let missing = raft_kv(&["get", "greeting", "--node", &follower]);
    assert_eq!(missing.status.code(), Some(1), "a 404 fails the command: {}", stderr(&missing));
    // The transfer's body names the follower that is not asked: only the leader can act on it.
    let target = followers[1].id.to_string();
    eventually("a transfer through a follower", || {
        raft_kv(&["transfer", &target, "--node", &follower]).status.success().then_some(())
    });
    eventually("the new leader", || (status(followers[1].http)?["leader"].as_u64()? == followers[1].id).then_some(()));
}
