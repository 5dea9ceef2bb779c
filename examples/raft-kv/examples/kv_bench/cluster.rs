//! Real `raft-kv serve --shards` processes on 127.0.0.1, each with its data and log in a fresh
//! directory, and what their `GET /cluster/shards` answers say about the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use hyper::body::Bytes;
use serde_json::Value;

use super::http::Connections;

/// One node process.
pub struct Node {
    /// Its id.
    pub id: u64,
    /// Its HTTP API.
    pub http: SocketAddr,
    raft: SocketAddr,
    /// Its data directory.
    pub data: PathBuf,
    child: Option<Child>,
}

/// The cluster's processes, killed when it is dropped.
pub struct Cluster {
    binary: PathBuf,
    dir: PathBuf,
    shards: u32,
    replicas: u8,
    /// The nodes, by id.
    pub nodes: BTreeMap<u64, Node>,
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<SocketAddr, String> {
    TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).map_err(|error| error.to_string())
}

impl Cluster {
    /// Starts nodes 1 to `count` of a new cluster of `shards` shards of `replicas` replicas, with
    /// their data and logs under `dir` (which must not hold an earlier cluster's data).
    pub fn start(binary: &Path, dir: &Path, count: u64, shards: u32, replicas: u8) -> Result<Cluster, String> {
        std::fs::create_dir_all(dir).map_err(|error| format!("creating {}: {error}", dir.display()))?;
        let mut cluster =
            Cluster { binary: binary.to_path_buf(), dir: dir.to_path_buf(), shards, replicas, nodes: BTreeMap::new() };
        for id in 1..=count {
            cluster.add(id)?;
        }
        let peers: Vec<String> =
            cluster.nodes.values().map(|node| format!("{}={}={}", node.id, node.raft, node.http)).collect();
        let peers = peers.join(",");
        for id in 1..=count {
            cluster.spawn(id, &["--peers", &peers, "--bootstrap"])?;
        }
        Ok(cluster)
    }

    fn add(&mut self, id: u64) -> Result<(), String> {
        let (raft, http) = (free_port()?, free_port()?);
        let data = self.dir.join(format!("node-{id}"));
        self.nodes.insert(id, Node { id, http, raft, data, child: None });
        Ok(())
    }

    fn spawn(&mut self, id: u64, extra: &[&str]) -> Result<(), String> {
        let node = self.nodes.get_mut(&id).ok_or(format!("no node {id}"))?;
        let log = File::create(self.dir.join(format!("node-{id}.log"))).map_err(|error| error.to_string())?;
        let errors = log.try_clone().map_err(|error| error.to_string())?;
        let child = Command::new(&self.binary)
            .arg("serve")
            .args(["--id", &id.to_string(), "--raft", &node.raft.to_string(), "--http", &node.http.to_string()])
            .args(["--shards", &self.shards.to_string(), "--replicas", &self.replicas.to_string()])
            .arg("--data")
            .arg(&node.data)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(errors)
            .spawn()
            .map_err(|error| format!("starting node {id} ({}): {error}", self.binary.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// Starts node `id`, new, with `serve --join` through node 1.
    pub fn join(&mut self, id: u64) -> Result<SocketAddr, String> {
        let via = self.nodes.get(&1).map(|node| node.http).ok_or("no node 1")?;
        self.add(id)?;
        self.spawn(id, &["--join", &format!("http://{via}")])?;
        self.nodes.get(&id).map(|node| node.http).ok_or(format!("no node {id}"))
    }

    /// The HTTP addresses of every node.
    pub fn http(&self) -> Vec<SocketAddr> {
        self.nodes.values().map(|node| node.http).collect()
    }

    /// A node that is no longer running, if any (it says why in its log).
    pub fn exited(&mut self) -> Option<u64> {
        for node in self.nodes.values_mut() {
            if let Some(child) = node.child.as_mut()
                && !matches!(child.try_wait(), Ok(None))
            {
                return Some(node.id);
            }
        }
        None
    }

    /// The `GET /cluster/shards` answer of every node that gives one.
    pub async fn views(&self, connections: &mut Connections) -> Vec<Value> {
        let mut views = Vec::new();
        for node in self.nodes.values() {
            if let Ok(answer) = connections.send("GET", node.http, "/cluster/shards", Bytes::new()).await
                && answer.status == 200
                && let Ok(view) = serde_json::from_slice::<Value>(&answer.body)
            {
                views.push(view);
            }
        }
        views
    }

    /// Kills every node.
    pub fn stop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill(); // Already gone is fine.
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The bytes of the files under `path` (0 where it cannot be read).
pub fn disk_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => disk_bytes(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |metadata| metadata.len()),
            Err(_) => 0,
        })
        .sum()
}

fn numbers(value: &Value) -> BTreeSet<u64> {
    value.as_array().map(|items| items.iter().filter_map(Value::as_u64).collect()).unwrap_or_default()
}

/// What the nodes' views say about the cluster, from the newest table among them and each
/// shard's leader (the node that says it leads it, at the highest term).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// The newest table's version (0: none yet).
    pub version: u64,
    /// Each shard's replicas in that table.
    pub replicas: BTreeMap<u32, BTreeSet<u64>>,
    /// The table's nodes (active or not), with their HTTP addresses.
    pub nodes: BTreeMap<u64, String>,
    /// Each shard's leader, with the group's voters, whether it is joint and its learners.
    pub leaders: BTreeMap<u32, Group>,
}

/// A shard group as its leader reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Group {
    /// The leader's id.
    pub leader: u64,
    /// Its HTTP address.
    pub http: String,
    term: u64,
    voters: BTreeSet<u64>,
    joint: bool,
    learners: BTreeSet<u64>,
}

impl State {
    /// The state the `views` (answers of `GET /cluster/shards`) describe.
    pub fn of(views: &[Value]) -> State {
        let newest = views.iter().max_by_key(|view| view["version"].as_u64().unwrap_or(0));
        let Some(table) = newest else { return State::default() };
        let mut state = State { version: table["version"].as_u64().unwrap_or(0), ..State::default() };
        if let Some(nodes) = table["nodes"].as_object() {
            for (id, node) in nodes {
                if let (Ok(id), Some(http)) = (id.parse(), node["http"].as_str()) {
                    state.nodes.insert(id, http.to_owned());
                }
            }
        }
        for shard in table["shards"].as_array().into_iter().flatten() {
            if let Some(id) = shard["shard"].as_u64().and_then(|id| u32::try_from(id).ok()) {
                state.replicas.insert(id, numbers(&shard["replicas"]));
            }
        }
        for view in views {
            let Some(me) = view["id"].as_u64() else { continue };
            for shard in view["shards"].as_array().into_iter().flatten() {
                let local = &shard["local"];
                let Some(id) = shard["shard"].as_u64().and_then(|id| u32::try_from(id).ok()) else { continue };
                if local["role"] != "leader" {
                    continue;
                }
                let group = Group {
                    leader: me,
                    http: state.nodes.get(&me).cloned().unwrap_or_default(),
                    term: local["term"].as_u64().unwrap_or(0),
                    voters: numbers(&local["voters"]),
                    joint: !numbers(&local["voters_outgoing"]).is_empty(),
                    learners: numbers(&local["learners"]),
                };
                if state.leaders.get(&id).is_none_or(|known| group.term > known.term) {
                    state.leaders.insert(id, group);
                }
            }
        }
        state
    }

    /// Whether the table is balanced over its nodes: every node holds a replica count within one
    /// of every other's, and every shard has `replication` replicas.
    pub fn balanced(&self, replication: usize) -> bool {
        let mut counts: BTreeMap<u64, usize> = self.nodes.keys().map(|id| (*id, 0)).collect();
        for replicas in self.replicas.values() {
            for node in replicas {
                *counts.entry(*node).or_default() += 1;
            }
        }
        let (min, max) = (counts.values().min(), counts.values().max());
        self.replicas.values().all(|replicas| replicas.len() == replication)
            && matches!((min, max), (Some(min), Some(max)) if max - min <= 1)
    }

    /// The shards whose group is not exactly the table's: no leader known, joint, learners, or
    /// voters other than the table's replicas.
    pub fn unsettled(&self) -> Vec<u32> {
        let settled = |shard: &u32, replicas: &BTreeSet<u64>| {
            self.leaders
                .get(shard)
                .is_some_and(|group| !group.joint && group.learners.is_empty() && &group.voters == replicas)
        };
        self.replicas.iter().filter(|(shard, replicas)| !settled(shard, replicas)).map(|(shard, _)| *shard).collect()
    }

    /// Whether the table has `nodes` nodes, is balanced and every group is the table's.
    pub fn done(&self, nodes: usize, replication: usize) -> bool {
        self.version > 0
            && self.nodes.len() == nodes
            && !self.replicas.is_empty()
            && self.balanced(replication)
            && self.unsettled().is_empty()
    }

    /// How many replicas each node holds in the table.
    pub fn counts(&self) -> BTreeMap<u64, usize> {
        let mut counts: BTreeMap<u64, usize> = self.nodes.keys().map(|id| (*id, 0)).collect();
        for node in self.replicas.values().flatten() {
            *counts.entry(*node).or_default() += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nodes(count: u64) -> Value {
        let nodes: serde_json::Map<String, Value> = (1..=count)
            .map(|id| (id.to_string(), json!({ "http": format!("127.0.0.1:{}", 8000 + id), "state": "active" })))
            .collect();
        Value::Object(nodes)
    }

    /// A shard this node leads: its id, the term, the voters, the outgoing voters, the learners.
    type Lead<'a> = (u32, u64, &'a [u64], &'a [u64], &'a [u64]);

    /// Node `me`'s view: the table (every shard's replicas) and the shards it leads.
    fn view(me: u64, version: u64, count: u64, replicas: &[&[u64]], leads: &[Lead<'_>]) -> Value {
        let shards: Vec<Value> = replicas
            .iter()
            .enumerate()
            .map(|(shard, replicas)| {
                let local = leads.iter().find(|lead| lead.0 as usize == shard).map_or(
                    json!({ "role": "follower", "term": 1 }),
                    |(_, term, voters, outgoing, learners)| {
                        json!({ "role": "leader", "term": term, "voters": voters, "voters_outgoing": outgoing,
                                "learners": learners })
                    },
                );
                json!({ "shard": shard, "replicas": replicas, "local": local })
            })
            .collect();
        json!({ "id": me, "version": version, "nodes": nodes(count), "shards": shards })
    }

    #[test]
    fn a_cluster_is_done_when_balanced_and_every_group_is_the_tables() {
        let table: &[&[u64]] = &[&[1, 2, 3], &[1, 2, 4], &[1, 3, 4], &[2, 3, 4]];
        let views = [
            view(1, 9, 4, table, &[(0, 2, &[1, 2, 3], &[], &[]), (1, 2, &[1, 2, 4], &[], &[])]),
            view(3, 9, 4, table, &[(2, 2, &[1, 3, 4], &[], &[])]),
            view(4, 9, 4, table, &[(3, 5, &[2, 3, 4], &[], &[])]),
        ];
        let state = State::of(&views);
        assert_eq!(state.counts(), BTreeMap::from([(1, 3), (2, 3), (3, 3), (4, 3)]));
        assert!(state.done(4, 3), "{state:?}");
        assert!(!state.done(5, 3), "a fifth node not in the table yet");
        assert_eq!(state.leaders[&3].http, "127.0.0.1:8004");
        // A learner, a joint group or other voters leave a shard unsettled; so does a missing leader.
        let moving = [
            view(1, 9, 4, table, &[(0, 2, &[1, 2, 3], &[], &[4]), (1, 2, &[1, 2, 4], &[3], &[])]),
            view(3, 9, 4, table, &[(2, 2, &[1, 2, 3], &[], &[])]),
        ];
        let state = State::of(&moving);
        assert_eq!(state.unsettled(), vec![0, 1, 2, 3]);
        assert!(!state.done(4, 3));
    }

    #[test]
    fn the_newest_table_and_the_highest_terms_leader_count() {
        // Node 1's old table put everything on 1-3 (unbalanced with a fourth node); node 2's is newer.
        let old: &[&[u64]] = &[&[1, 2, 3], &[1, 2, 3]];
        let new: &[&[u64]] = &[&[1, 2, 4], &[1, 3, 4]];
        let views = [
            view(1, 3, 4, old, &[(0, 7, &[1, 2, 3], &[], &[])]),
            view(2, 5, 4, new, &[(0, 4, &[1, 2, 4], &[], &[]), (1, 4, &[1, 3, 4], &[], &[])]),
        ];
        let state = State::of(&views);
        assert_eq!(state.version, 5);
        assert_eq!(state.replicas[&0], BTreeSet::from([1, 2, 4]));
        // Node 1 claims shard 0 at term 7 with the old voters: it is taken as the leader.
        assert_eq!(state.leaders[&0].leader, 1);
        assert_eq!(state.unsettled(), vec![0]);
        // Nodes 1 and 4 hold two replicas, 2 and 3 one: within one, balanced. A shard short of
        // replicas is not, nor a node holding none while others hold three.
        assert!(state.balanced(3));
        let short: &[&[u64]] = &[&[1, 2], &[1, 3, 4]];
        assert!(!State::of(&[view(2, 6, 4, short, &[])]).balanced(3));
        let lopsided: &[&[u64]] = &[&[1, 2, 3], &[1, 2, 3], &[1, 2, 3]];
        assert!(!State::of(&[view(2, 6, 4, lopsided, &[])]).balanced(3), "node 4 holds none");
        assert_eq!(State::of(&[]), State::default());
    }
}
