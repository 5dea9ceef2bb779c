//! End to end: `raft-kv cluster` stops every node it started when it is told to stop with
//! SIGTERM or SIGINT, and its nodes stop by themselves when it is killed outright (`kill -9`).
//! Linux only: the nodes are found through /proc.
#![cfg(target_os = "linux")]

mod common;

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{eventually, status};

const NODES: u16 = 3;

/// A port `p` such that `p..p + count` were all free a moment ago.
fn free_ports(count: u16) -> u16 {
    eventually("a block of free ports", || {
        let first = common::free_port().port();
        let last = first.checked_add(count - 1)?;
        let listeners: Vec<TcpListener> =
            (first..=last).map(|port| TcpListener::bind(("127.0.0.1", port)).ok()).collect::<Option<_>>()?;
        drop(listeners);
        Some(first)
    })
}

/// The launcher, killed (SIGKILL) when dropped; its nodes then stop by themselves. Its output
/// and its nodes' go to `log`, printed when the test fails.
struct Launcher {
    child: Child,
    http_port: u16,
    log: std::path::PathBuf,
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.child.kill(); // Already gone is fine.
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- {} ---\n{log}", self.log.display());
        }
    }
}

impl Launcher {
    fn start(data: &Path) -> Launcher {
        Launcher::start_with(data, &[])
    }

    /// [`Launcher::start`] with more arguments. The ports are found free, then let go for the
    /// launcher's nodes: another test may take one in between. A node that finds its port taken
    /// is the only reason to start over (on a fresh block and data directory), at most a few
    /// times; returns once every node answers.
    fn start_with(data: &Path, args: &[&str]) -> Launcher {
        for attempt in 1..=3 {
            let launcher = Launcher::spawn(data, &data.join(format!("data-{attempt}")), args);
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let mut answering = 0;
            while answering < NODES && std::time::Instant::now() < deadline {
                if status(launcher.http(answering)).is_some() {
                    answering += 1;
                    continue;
                }
                let log = std::fs::read_to_string(&launcher.log).unwrap_or_default();
                if log.contains("Address already in use") {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if answering == NODES {
                return launcher;
            }
            let log = std::fs::read_to_string(&launcher.log).unwrap_or_default();
            assert!(log.contains("Address already in use"), "the nodes never answered:\n{log}");
            drop(launcher); // Kills it; its nodes stop by themselves.
        }
        panic!("three blocks of free ports were taken before the launcher's nodes could bind them");
    }

    /// Starts the launcher on a block of ports found free, with its nodes' data under `nodes`.
    fn spawn(data: &Path, nodes: &Path, args: &[&str]) -> Launcher {
        // One block for both, so that the HTTP and Raft ports cannot overlap (two blocks picked
        // one after the other could: the first is free again once picked).
        let http_port = free_ports(2 * NODES);
        let raft_port = http_port + NODES;
        let log_path = data.join("launcher.log");
        let log = File::create(&log_path).expect("a log file");
        let child = Command::new(env!("CARGO_BIN_EXE_raft-kv"))
            .args(["cluster", "--nodes", &NODES.to_string()])
            .args(["--http-port", &http_port.to_string(), "--raft-port", &raft_port.to_string()])
            .arg("--data")
            .arg(nodes)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log)
            .spawn()
            .expect("the launcher starts");
        Launcher { child, http_port, log: log_path }
    }

    fn http(&self, index: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port + index))
    }

    /// The launcher's children once all of them run, and the cluster has a leader.
    fn wait_until_up(&self) -> Vec<u32> {
        eventually("a leader", || status(self.http(0))?["leader"].as_u64());
        let nodes = eventually("every node process", || {
            let nodes = children(self.child.id());
            (nodes.len() == usize::from(NODES)).then_some(nodes)
        });
        for index in 0..NODES {
            eventually("every node to answer", || status(self.http(index)));
        }
        nodes
    }

    fn signal(&self, name: &str) {
        let sent = Command::new("kill").args(["-s", name, &self.child.id().to_string()]).status();
        assert!(sent.is_ok_and(|status| status.success()), "kill -s {name}");
    }

    /// Waits for every node to be gone: no process (or only a zombie), no HTTP listener.
    fn assert_nodes_stop(&self, nodes: &[u32]) {
        for pid in nodes {
            eventually("a node process to end", || (!running(*pid)).then_some(()));
        }
        for index in 0..NODES {
            let address = self.http(index);
            eventually("a node's port to close", || {
                TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_err().then_some(())
            });
        }
    }
}

/// The pids whose parent is `parent`, from /proc/PID/stat (the parent is the second field after
/// the parenthesised command name).
fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            after_name.split_whitespace().nth(1).and_then(|ppid| ppid.parse::<u32>().ok()) == Some(parent)
        })
        .collect()
}

/// Whether `pid` exists and is not a zombie (ended, not yet reaped) or dead.
fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X" | "x"))
}

fn launcher_exits(launcher: &mut Launcher) -> std::process::ExitStatus {
    eventually("the launcher to exit", || launcher.child.try_wait().ok().flatten())
}

#[test]
fn sigterm_stops_the_launcher_and_every_node() {
    let (_dir, data) = common::temp();
    let mut launcher = Launcher::start(&data);
    let nodes = launcher.wait_until_up();
    launcher.signal("TERM");
    let exit = launcher_exits(&mut launcher);
    assert!(exit.success(), "the launcher exits cleanly on SIGTERM: {exit:?}");
    launcher.assert_nodes_stop(&nodes);
}

#[test]
fn sigint_stops_the_launcher_and_every_node() {
    let (_dir, data) = common::temp();
    let mut launcher = Launcher::start(&data);
    let nodes = launcher.wait_until_up();
    launcher.signal("INT");
    let exit = launcher_exits(&mut launcher);
    assert!(exit.success(), "the launcher exits cleanly on SIGINT: {exit:?}");
    launcher.assert_nodes_stop(&nodes);
}

#[test]
fn the_nodes_stop_when_the_launcher_is_killed() {
    let (_dir, data) = common::temp();
    let mut launcher = Launcher::start(&data);
    let nodes = launcher.wait_until_up();
    launcher.signal("KILL"); // No chance to clean up: the nodes see their stdin end.
    launcher_exits(&mut launcher);
    launcher.assert_nodes_stop(&nodes);
}

/// The pid of node `id`, from the launcher's log line `started node ID (pid PID)`.
fn node_pid(log: &str, id: u16) -> Option<u32> {
    let (_, rest) = log.split_once(&format!("started node {id} (pid "))?;
    rest.split(')').next()?.parse().ok()
}

#[test]
fn a_node_that_fails_is_reported_and_the_others_keep_running() {
    let (_dir, data) = common::temp();
    let mut launcher = Launcher::start(&data);
    let nodes = launcher.wait_until_up();
    let log = std::fs::read_to_string(&launcher.log).expect("the launcher's log");
    let pid = node_pid(&log, NODES).unwrap_or_else(|| panic!("the launcher names node {NODES}'s pid:\n{log}"));
    assert!(nodes.contains(&pid), "{pid} is one of the launcher's children {nodes:?}");
    let sent = Command::new("kill").args(["-s", "KILL", &pid.to_string()]).status();
    assert!(sent.is_ok_and(|status| status.success()), "kill -s KILL {pid}");
    eventually("the launcher to report the failure", || {
        let log = std::fs::read_to_string(&launcher.log).unwrap_or_default();
        log.contains(&format!("node {NODES} failed")).then_some(())
    });
    assert!(launcher.child.try_wait().is_ok_and(|exit| exit.is_none()), "the launcher keeps running");
    // The other two still make a quorum: a leader among them, and writes go through.
    eventually("a leader among the nodes left", || {
        status(launcher.http(0))?["leader"].as_u64().filter(|leader| *leader != u64::from(NODES))
    });
    common::until("PUT", launcher.http(0), "/kv/after", b"failure", 200);
    launcher.signal("TERM");
    let exit = launcher_exits(&mut launcher);
    assert!(exit.success(), "asked to stop, the launcher exits cleanly: {exit:?}");
    launcher.assert_nodes_stop(&nodes);
}

/// Once every node has exited, the launcher has nothing left to run: it exits with an error. With
/// `--log-format json`, its lines and its nodes' are JSON objects.
#[test]
fn the_launcher_exits_with_an_error_once_every_node_has_exited_and_passes_the_log_format() {
    let (_dir, data) = common::temp();
    let mut launcher = Launcher::start_with(&data, &["--log-format", "json"]);
    let nodes = launcher.wait_until_up();
    for pid in &nodes {
        let sent = Command::new("kill").args(["-s", "KILL", &pid.to_string()]).status();
        assert!(sent.is_ok_and(|status| status.success()), "kill -s KILL {pid}");
    }
    let exit = launcher_exits(&mut launcher);
    let log = std::fs::read_to_string(&launcher.log).expect("the launcher's log");
    assert_eq!(exit.code(), Some(1), "{log}");
    let messages: Vec<String> = log
        .lines()
        .map(|line| {
            let line: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
            line["fields"]["message"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    for expected in ["started node 1", "serving: http", "every node exited"] {
        assert!(messages.iter().any(|message| message.contains(expected)), "{expected:?} in\n{log}");
    }
}
