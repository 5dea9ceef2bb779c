//! Moves under crashes (issue 20): a sharded cluster of three real `raft-kv serve` processes (4
//! shards of 3 replicas), keys written, a fourth node joins so that the controller moves replicas
//! to it; as soon as a node's `/cluster/shards` shows a move under way (a shard whose table
//! replicas differ from the group's recorded members), one node is killed with `kill -9`: the
//! move's source (a node the group still counts but the table no longer names), its target, or
//! the meta group's leader (whose controller drives the move). While it is down every shard takes
//! a write (none lost its quorum); then it restarts on its data, and the cluster must settle:
//! every shard at three replicas, the group's voters the table's, no learner or joint change
//! left, no replica held that the table does not name, replica counts within one of each other,
//! and every acknowledged write read back linearizably. Waits poll with generous deadlines;
//! nothing asserts on durations.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Layout, Node, call, data_dir, layout, log_file, temp};
use raft_kv::shards::shard_of;
use serde_json::Value;

const SHARDS: u32 = 4;
const REPLICAS: usize = 3;
/// How long any wait of this file may take (far above what a healthy run needs).
const PATIENCE: Duration = Duration::from_secs(90);
/// How often the move is looked for (a move takes a few controller rounds of 200 ms).
const MOVE_POLL: Duration = Duration::from_millis(10);
/// How long the victim stays down (the controller goes on without it meanwhile).
const DOWN_FOR: Duration = Duration::from_secs(2);

/// Polls `check` until it returns `Some`, failing the test with `what` after [`PATIENCE`].
fn wait<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    wait_every(what, Duration::from_millis(50), check)
}

/// [`wait`], polling every `poll`.
fn wait_every<T>(what: &str, poll: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(poll);
    }
}

/// How many times a scenario starts over when a node found its port taken.
const ATTEMPTS_MAX: u32 = 3;

/// Runs `scenario` on a fresh data directory. The ports are found free, then let go for the
/// nodes: another test (or an outgoing connection) may take one in between, and a node that
/// finds its port taken (its log says so) is the only reason to start over, on fresh ports,
/// at most [`ATTEMPTS_MAX`] times; any other failure fails the test.
fn on_fresh_ports(scenario: impl Fn(PathBuf) + std::panic::RefUnwindSafe) {
    for attempt in 1..=ATTEMPTS_MAX {
        let (_dir, data) = temp();
        let Err(panic) = std::panic::catch_unwind(|| scenario(data.clone())) else { return };
        let logs = std::fs::read_dir(&data).into_iter().flatten().flatten();
        let taken = logs
            .filter(|entry| entry.path().extension().is_some_and(|extension| extension == "log"))
            .any(|entry| std::fs::read_to_string(entry.path()).is_ok_and(|log| log.contains("Address already in use")));
        if !taken || attempt == ATTEMPTS_MAX {
            std::panic::resume_unwind(panic);
        }
        eprintln!("attempt {attempt}: a node found its port taken; starting over on fresh ports");
    }
}

/// Which node is killed mid-move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    /// The node that loses its replica.
    Source,
    /// The node that receives it (the joining node).
    Target,
    /// The meta group's leader, where the controller runs.
    MetaLeader,
}

/// The cluster of the test: four node slots, the first three started.
struct Cluster {
    layout: Layout,
    data: PathBuf,
    nodes: BTreeMap<u64, Node>,
    incarnations: BTreeMap<u64, u32>,
}

impl Cluster {
    /// The arguments of node `id` (a first start bootstraps; node 4 always joins).
    fn args(&self, id: u64, first: bool) -> Vec<String> {
        let mut args = vec!["--data".to_owned(), data_dir(&self.data, id), "--shards".to_owned(), SHARDS.to_string()];
        args.extend(["--replicas".to_owned(), REPLICAS.to_string()]);
        if id == 4 {
            args.extend(["--join".to_owned(), format!("http://{}", self.layout.http[0])]);
        } else if first {
            args.extend(["--bootstrap".to_owned(), "--peers".to_owned(), self.layout.peers.clone()]);
        }
        args
    }

    fn start(&mut self, id: u64) {
        let incarnation = self.incarnations.entry(id).or_insert(0);
        *incarnation += 1;
        let incarnation = *incarnation;
        let args = self.args(id, incarnation == 1);
        let index = id as usize - 1;
        let (raft, http) = (self.layout.raft[index], self.layout.http[index]);
        let node = Node::start(id, raft, http, log_file(&self.data, id, incarnation), &args);
        self.nodes.insert(id, node);
    }

    fn http(&self, id: u64) -> SocketAddr {
        self.layout.http[id as usize - 1]
    }
}

/// `GET /cluster/shards` of `node` (no redirect followed), once it has a routing table.
fn view(node: SocketAddr) -> Option<Value> {
    any_view(node).filter(|table| table["version"].as_u64() > Some(0))
}

/// `GET /cluster/shards` of `node`, with a routing table or without (version 0: none applied).
fn any_view(node: SocketAddr) -> Option<Value> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let answer =
        runtime.block_on(common::http::call_here("GET", node, "/cluster/shards", b"", Duration::from_secs(2))).ok()?;
    (answer.status == 200).then(|| answer.json())
}

fn numbers(value: &Value) -> BTreeSet<u64> {
    value.as_array().map(|ids| ids.iter().filter_map(Value::as_u64).collect()).unwrap_or_default()
}

/// How far a move has come when the victim is killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// The table names the target (it may not hold a replica yet).
    Named,
    /// The target is a learner of the shard's group (as a replica on the viewing node shows).
    Learner,
}

/// A move under way in `table` that has reached `stage`: `(shard, source, target)`, a node the
/// group's recorded members have that the table's replicas do not, and one the replicas have
/// that the members do not.
fn move_in(table: &Value, stage: Stage) -> Option<(u64, Option<u64>, Option<u64>)> {
    table["shards"].as_array()?.iter().find_map(|shard| {
        let (replicas, members) = (numbers(&shard["replicas"]), numbers(&shard["members"]));
        let source = members.difference(&replicas).next().copied();
        let target = replicas.difference(&members).next().copied();
        let learning = target.is_some_and(|target| numbers(&shard["local"]["learners"]).contains(&target));
        (replicas != members && (stage == Stage::Named || learning))
            .then(|| (shard["shard"].as_u64().unwrap_or(0), source, target))
    })
}

/// The meta group's leader as node `node` sees it.
fn meta_leader(node: SocketAddr) -> Option<u64> {
    common::status(node)?["leader"].as_u64()
}

/// The first way `views` (every running node's `/cluster/shards`) differ from a settled cluster
/// of `nodes`: the same table everywhere, naming exactly `nodes`, all active; every shard at
/// [`REPLICAS`] replicas, each replica's group with the table's voters, no outgoing voter and no
/// learner, one replica leading; no node holding a shard the table does not give it; replica
/// counts within one of each other.
fn unsettled(nodes: &BTreeSet<u64>, views: &BTreeMap<u64, Value>) -> Option<String> {
    let table = views.values().next()?;
    for (id, view) in views {
        if view["version"] != table["version"] {
            return Some(format!("node {id} has table version {}, not {}", view["version"], table["version"]));
        }
    }
    let in_table: BTreeSet<u64> = table["nodes"].as_object()?.keys().filter_map(|id| id.parse().ok()).collect();
    if in_table != *nodes {
        return Some(format!("the table has nodes {in_table:?}, not {nodes:?}"));
    }
    if let Some(id) = nodes.iter().find(|id| table["nodes"][id.to_string()]["state"] != "active") {
        return Some(format!("node {id} is not active"));
    }
    let mut load: BTreeMap<u64, usize> = nodes.iter().map(|id| (*id, 0)).collect();
    for entry in table["shards"].as_array()? {
        let shard = entry["shard"].as_u64()?;
        let replicas = numbers(&entry["replicas"]);
        if replicas.len() != REPLICAS {
            return Some(format!("shard {shard} has replicas {replicas:?}"));
        }
        let mut leaders = 0;
        for (id, view) in views {
            *load.entry(*id).or_default() += usize::from(replicas.contains(id));
            let held = numbers(&view["held"]).contains(&shard);
            if held != replicas.contains(id) {
                return Some(format!("node {id} holds shard {shard}: {held}; the table's replicas {replicas:?}"));
            }
            let local = view["shards"].as_array()?.iter().find(|other| other["shard"] == shard)?["local"].clone();
            if !held {
                continue;
            }
            let (voters, outgoing, learners) =
                (numbers(&local["voters"]), numbers(&local["voters_outgoing"]), numbers(&local["learners"]));
            if voters != replicas || !outgoing.is_empty() || !learners.is_empty() {
                return Some(format!(
                    "node {id}'s shard {shard}: voters {voters:?} outgoing {outgoing:?} learners {learners:?}"
                ));
            }
            leaders += usize::from(local["role"] == "leader");
        }
        if leaders != 1 {
            return Some(format!("shard {shard} has {leaders} leaders"));
        }
    }
    let (fewest, most) = (load.values().min()?, load.values().max()?);
    (most - fewest > 1).then(|| format!("replicas per node {load:?}"))
}

/// `PUT /kv/{key}` through `node` until it is acknowledged.
fn put(node: SocketAddr, key: &str) {
    wait(&format!("PUT {key} through {node}"), || {
        let answer = call("PUT", node, &format!("/kv/{key}"), format!("value-of-{key}").as_bytes())?;
        (answer.status == 200).then_some(())
    });
}

/// A key of each shard, named after `tag`.
fn key_per_shard(tag: &str) -> Vec<String> {
    (0..SHARDS)
        .map(|shard| {
            (0..).map(|i| format!("{tag}-{i}")).find(|key| shard_of(key.as_bytes(), SHARDS).0 == shard).expect("a key")
        })
        .collect()
}

/// The scenario (see the module docs), `victim` killed once a move has reached `stage`.
fn a_move_survives_a_crash_of(victim: Victim, stage: Stage) {
    on_fresh_ports(|data| move_with_a_crash(data, victim, stage));
}

fn move_with_a_crash(data: PathBuf, victim: Victim, stage: Stage) {
    let mut cluster = Cluster { layout: layout(4, 3), data, nodes: BTreeMap::new(), incarnations: BTreeMap::new() };
    for id in 1..=3 {
        cluster.start(id);
    }
    for id in 1..=3 {
        wait("a routing table", || view(cluster.http(id)));
    }
    let mut acknowledged = Vec::new();
    for round in 0..4 {
        for key in key_per_shard(&format!("before{round}")) {
            put(cluster.http(1 + round % 3), &key);
            acknowledged.push(key);
        }
    }

    // Node 4 joins; a move toward it is looked for on every node, as often as the polls allow.
    cluster.start(4);
    let (shard, source, target, seen_at) = wait_every("a move under way", MOVE_POLL, || {
        (1..=4).find_map(|id| {
            let table = view(cluster.http(id))?;
            let (shard, source, target) = move_in(&table, stage)?;
            Some((shard, source, target, id))
        })
    });
    let meta = (1..=4).find_map(|id| meta_leader(cluster.http(id)));
    let killed = match victim {
        Victim::Source => source,
        Victim::Target => target,
        Victim::MetaLeader => meta,
    }
    .unwrap_or_else(|| panic!("no {victim:?} in the move of shard {shard}: source {source:?} target {target:?}"));
    eprintln!(
        "shard {shard} moves from {source:?} to {target:?} ({stage:?}, seen by node {seen_at}); meta leader \
         {meta:?}; killing node {killed} ({victim:?})"
    );
    cluster.nodes.get_mut(&killed).expect("a running node").kill();
    let down_since = Instant::now();

    // No shard lost its quorum: each takes a write while the node is down.
    let via = if killed == 1 { 2 } else { 1 };
    for key in key_per_shard("while-down") {
        put(cluster.http(via), &key);
        acknowledged.push(key);
    }
    std::thread::sleep(DOWN_FOR.saturating_sub(down_since.elapsed()));
    cluster.start(killed);

    // The cluster settles with every shard at its replicas, balanced over the four nodes.
    settle(&cluster, &(1..=4).collect(), None, &format!("node {killed} restarted"));
    read_back(&cluster, 1..=4, &acknowledged);
}

/// Waits until the cluster of `nodes` is settled ([`unsettled`]) and the `drained` node, if any,
/// holds no replica; fails the test with the last difference seen after [`PATIENCE`].
fn settle(cluster: &Cluster, nodes: &BTreeSet<u64>, drained: Option<u64>, after: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let views: BTreeMap<u64, Value> = nodes.iter().filter_map(|id| Some((*id, view(cluster.http(*id))?))).collect();
        let mut difference = if views.len() < nodes.len() {
            Some(format!("only nodes {:?} answered", views.keys().collect::<Vec<_>>()))
        } else {
            unsettled(nodes, &views)
        };
        if let Some(drained) = drained {
            let held = any_view(cluster.http(drained)).map(|view| numbers(&view["held"]));
            if held.as_ref().is_none_or(|held| !held.is_empty()) {
                difference = Some(format!("drained node {drained} holds {held:?}"));
            }
        }
        let Some(difference) = difference else { return };
        assert!(Instant::now() < deadline, "the cluster did not settle after {after}: {difference}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads every key of `keys` linearizably through each of `nodes`: each has its value.
fn read_back(cluster: &Cluster, nodes: impl IntoIterator<Item = u64>, keys: &[String]) {
    for id in nodes {
        for key in keys {
            let path = format!("/kv/{key}?consistency=linearizable");
            let got = wait(&format!("GET {key} through node {id}"), || {
                let answer = call("GET", cluster.http(id), &path, &[])?;
                matches!(answer.status, 200 | 404).then(|| (answer.status, answer.text()))
            });
            assert_eq!(got, (200, format!("value-of-{key}")), "{key} through node {id}");
        }
    }
}

/// A drained node killed as its first replica starts to move off, and restarted on its data only
/// once every replica has moved off it without it, ends up holding nothing, and the table
/// forgets it. It was a voter of the meta group: it must stay a learner there while it drains
/// (were it removed, it would never read the table that lets it delete its replicas), and the
/// table must not forget it before it says it holds nothing (it then leaves the meta group and
/// reads no table again). Before both, it kept its three replicas for good.
#[test]
fn a_drained_node_killed_mid_drain_deletes_its_replicas_once_back() {
    on_fresh_ports(drain_with_a_crash);
}

fn drain_with_a_crash(data: PathBuf) {
    let mut cluster = Cluster { layout: layout(4, 3), data, nodes: BTreeMap::new(), incarnations: BTreeMap::new() };
    for id in 1..=4 {
        cluster.start(id);
    }
    settle(&cluster, &(1..=4).collect(), None, "node 4 joined");
    let mut acknowledged = Vec::new();
    for key in key_per_shard("before") {
        put(cluster.http(1), &key);
        acknowledged.push(key);
    }

    // Node 2 (a voter of the meta group) is drained, and killed as its first replica moves.
    wait("the drain accepted", || {
        (call("POST", cluster.http(1), "/cluster/drain", br#"{"id":2}"#)?.status == 200).then_some(())
    });
    wait_every("a move off node 2", MOVE_POLL, || {
        let table = view(cluster.http(1))?;
        move_in(&table, Stage::Named).filter(|(_, source, _)| *source == Some(2))
    });
    cluster.nodes.get_mut(&2).expect("a running node").kill();
    for key in key_per_shard("while-down") {
        put(cluster.http(1), &key);
        acknowledged.push(key);
    }
    // Every replica moves off it without it; then it comes back on its data.
    wait("every shard off node 2", || {
        let table = view(cluster.http(1))?;
        let shards = table["shards"].as_array()?;
        let off = |shard: &Value| !numbers(&shard["replicas"]).contains(&2) && !numbers(&shard["members"]).contains(&2);
        shards.iter().all(off).then_some(())
    });
    std::thread::sleep(DOWN_FOR); // Rounds in which a controller could forget it.
    cluster.start(2);
    settle(&cluster, &[1, 3, 4].into(), Some(2), "drained node 2 restarted");
    read_back(&cluster, [1, 3, 4], &acknowledged);
}

#[test]
fn a_move_survives_a_crash_of_its_source() {
    a_move_survives_a_crash_of(Victim::Source, Stage::Named);
}

#[test]
fn a_move_survives_a_crash_of_its_source_while_the_target_learns() {
    a_move_survives_a_crash_of(Victim::Source, Stage::Learner);
}

#[test]
fn a_move_survives_a_crash_of_its_target() {
    a_move_survives_a_crash_of(Victim::Target, Stage::Named);
}

#[test]
fn a_move_survives_a_crash_of_its_target_while_it_learns() {
    a_move_survives_a_crash_of(Victim::Target, Stage::Learner);
}

#[test]
fn a_move_survives_a_crash_of_the_meta_leader() {
    a_move_survives_a_crash_of(Victim::MetaLeader, Stage::Named);
}

#[test]
fn a_move_survives_a_crash_of_the_meta_leader_while_the_target_learns() {
    a_move_survives_a_crash_of(Victim::MetaLeader, Stage::Learner);
}
