//! A small scripted network for scenario tests: nodes over `MemStorage`, a FIFO of messages in
//! flight, links that can be cut (both ways or one way), crashes and restarts. Everything is
//! synchronous and deterministic: the same script gives the same run.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use raft_core::{
    Entry, EntryPayload, HardState, Index, Membership, Message, MessageBody, NodeId, Options, OptionsBuilder,
    ProposeError, Raft, ReadState, Role, SnapshotMeta, Storage, Term,
};
use raft_storage::{LogStore, MemStorage};

/// Node ids 1..=n.
pub fn ids(n: u64) -> Vec<NodeId> {
    (1..=n).map(NodeId).collect()
}

/// Test options: election 10 ticks, heartbeat 1, pre-vote and check-quorum as given, seed = id.
pub fn options(id: NodeId, pre_vote: bool, check_quorum: bool) -> Options {
    base_options(id).pre_vote(pre_vote).check_quorum(check_quorum).build().expect("valid test options")
}

/// The builder behind [`options`], for tests that tune more.
pub fn base_options(id: NodeId) -> OptionsBuilder {
    Options::builder().election_ticks(10).heartbeat_ticks(1).rng_seed(id.0)
}

/// An entry with an empty payload (a no-op) at (`index`, `term`).
pub fn noop(index: u64, term: u64) -> Entry {
    Entry { index: Index(index), term: Term(term), payload: EntryPayload::Noop }
}

/// An entry carrying `data`.
pub fn entry(index: u64, term: u64, data: &'static [u8]) -> Entry {
    Entry { index: Index(index), term: Term(term), payload: EntryPayload::Normal(Bytes::from_static(data)) }
}

/// A storage holding no-op entries with the given terms at indexes 1.. and the hard state.
pub fn storage_with_log(voters: &[NodeId], terms: &[u64], hard_state: HardState) -> MemStorage {
    let mut storage = MemStorage::new(Membership::new(voters.iter().copied()));
    let entries: Vec<Entry> = terms.iter().enumerate().map(|(i, &t)| noop(i as u64 + 1, t)).collect();
    storage.append(&entries).expect("consecutive entries");
    storage.set_hard_state(hard_state);
    storage
}

/// A node over a storage holding the given log terms, with `term` as its current term.
pub fn node_with_log(id: NodeId, voters: &[NodeId], terms: &[u64], term: u64, opts: Options) -> Raft<MemStorage> {
    let hard_state = HardState { term: Term(term), vote: None, commit: Index(0) };
    Raft::new(id, opts, storage_with_log(voters, terms, hard_state)).expect("memory storage never fails")
}

/// The test state machine's snapshot format: each payload as `[u32 length][bytes]`.
pub fn encode_state(payloads: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::new();
    for payload in payloads {
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
    }
    out
}

/// Reads [`encode_state`]'s format back.
pub fn decode_state(mut data: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    while let Some((len, rest)) = data.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        out.push(Bytes::copy_from_slice(&rest[..len]));
        data = &rest[len..];
    }
    out
}

/// The scripted network.
pub struct Cluster {
    pub nodes: BTreeMap<NodeId, Raft<MemStorage>>,
    pub options: BTreeMap<NodeId, Options>,
    /// Committed entries each node applied, in order, for its current incarnation (after the
    /// snapshot it restored from, if any).
    pub applied: BTreeMap<NodeId, Vec<Entry>>,
    /// The payloads each node's state machine restored from its latest snapshot.
    pub restored: BTreeMap<NodeId, Vec<Bytes>>,
    /// Read outcomes each node handed out, in order (tests take them).
    pub reads: BTreeMap<NodeId, Vec<ReadState>>,
    /// Messages sent and not yet delivered (FIFO).
    pub in_flight: VecDeque<Message>,
    /// Directed links that drop every message.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Crashed nodes: they take no input and messages to them are dropped.
    pub down: BTreeSet<NodeId>,
    /// Every message delivered so far, in order.
    pub delivered: Vec<Message>,
    /// Messages dropped by the network so far.
    pub dropped: usize,
    /// When false, `process` does not report durability (for tests of a slow disk).
    pub auto_persist: BTreeMap<NodeId, bool>,
}

impl Cluster {
    /// `n` voters with ids 1..=n, pre-vote and check-quorum on.
    pub fn new(n: u64) -> Self {
        Self::with(n, true, true)
    }

    /// `n` voters with ids 1..=n and the given election features.
    pub fn with(n: u64, pre_vote: bool, check_quorum: bool) -> Self {
        let voters = ids(n);
        let nodes = voters
            .iter()
            .map(|&id| {
                let storage = MemStorage::new(Membership::new(voters.iter().copied()));
                (id, Raft::new(id, options(id, pre_vote, check_quorum), storage).expect("memory storage"))
            })
            .collect();
        Self::from_nodes(nodes)
    }

    /// A cluster of prepared nodes.
    pub fn from_nodes(nodes: BTreeMap<NodeId, Raft<MemStorage>>) -> Self {
        let options = nodes.iter().map(|(&id, n)| (id, n.options().clone())).collect();
        let applied = nodes.keys().map(|&id| (id, Vec::new())).collect();
        let restored = nodes.iter().map(|(&id, n)| (id, decode_state(n.storage().snapshot_data()))).collect();
        let auto_persist = nodes.keys().map(|&id| (id, true)).collect();
        Cluster {
            nodes,
            options,
            applied,
            restored,
            reads: BTreeMap::new(),
            in_flight: VecDeque::new(),
            cut: BTreeSet::new(),
            down: BTreeSet::new(),
            delivered: Vec::new(),
            dropped: 0,
            auto_persist,
        }
    }

    pub fn node(&self, id: u64) -> &Raft<MemStorage> {
        &self.nodes[&NodeId(id)]
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Raft<MemStorage> {
        self.nodes.get_mut(&NodeId(id)).expect("known node")
    }

    /// Takes one node's output: persists it, reports durability, applies, and queues messages.
    pub fn process(&mut self, id: NodeId) {
        if self.down.contains(&id) {
            return;
        }
        let auto = self.auto_persist[&id];
        let node = self.nodes.get_mut(&id).expect("known node");
        let output = node.take_output().expect("memory storage never fails");
        node.storage_mut().write_output(&output).expect("core hands out writable output");
        let last_write = match (output.entries.last(), &output.install_snapshot) {
            (Some(last), _) => Some((last.index, last.term)),
            (None, Some(meta)) => Some((meta.index, meta.term)),
            (None, None) => None,
        };
        if auto && let Some((index, term)) = last_write {
            node.on_persisted(index, term);
        }
        if output.install_snapshot.is_some() {
            // The state machine restarts from the installed snapshot.
            self.restored.insert(id, decode_state(node.storage().snapshot_data()));
            self.applied.insert(id, Vec::new());
        }
        self.applied.get_mut(&id).expect("known node").extend(output.committed);
        self.reads.entry(id).or_default().extend(output.reads);
        self.in_flight.extend(output.messages);
        self.in_flight.extend(output.messages_after_persist);
    }

    /// Processes every live node once, in id order.
    pub fn process_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.process(id);
        }
    }

    fn link_open(&self, m: &Message) -> bool {
        !self.cut.contains(&(m.from, m.to)) && !self.down.contains(&m.to) && self.nodes.contains_key(&m.to)
    }

    /// Delivers one message (dropping it if its link is cut); returns false when none is queued.
    pub fn deliver_one(&mut self) -> bool {
        let Some(m) = self.in_flight.pop_front() else { return false };
        if self.link_open(&m) {
            self.delivered.push(m.clone());
            let to = m.to;
            let _ = self.nodes.get_mut(&to).expect("checked").step(m);
            self.process(to);
        } else {
            self.dropped += 1;
        }
        true
    }

    /// Processes all nodes and delivers messages until the network is quiet.
    pub fn deliver_all(&mut self) {
        self.process_all();
        for _ in 0..1_000_000 {
            if !self.deliver_one() {
                self.process_all();
                if self.in_flight.is_empty() {
                    return;
                }
            }
        }
        panic!("the network never went quiet");
    }

    /// Ticks every live node once, then delivers until quiet.
    pub fn tick_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().filter(|id| !self.down.contains(id)).collect();
        for id in ids {
            self.nodes.get_mut(&id).expect("known").tick();
        }
        self.deliver_all();
    }

    /// Ticks every live node `n` times (delivering after each).
    pub fn ticks(&mut self, n: usize) {
        for _ in 0..n {
            self.tick_all();
        }
    }

    /// Ticks only node `id`, `n` times, delivering after each.
    pub fn tick_node(&mut self, id: u64, n: usize) {
        for _ in 0..n {
            self.node_mut(id).tick();
            self.deliver_all();
        }
    }

    /// Ticks every live node until some node leads, at most `ticks_max` times; returns it.
    pub fn tick_until_leader(&mut self, ticks_max: usize) -> Option<u64> {
        for _ in 0..ticks_max {
            self.tick_all();
            if let Some(leader) = self.leader() {
                return Some(leader);
            }
        }
        None
    }

    /// Makes `id` campaign now and delivers until quiet.
    pub fn campaign(&mut self, id: u64) {
        self.node_mut(id).campaign();
        self.deliver_all();
    }

    /// Makes `id` campaign and asserts it became leader.
    pub fn elect(&mut self, id: u64) {
        self.campaign(id);
        assert_eq!(self.node(id).role(), Role::Leader, "node {id} failed to win");
    }

    /// Proposes on `id` and delivers until quiet.
    pub fn propose(&mut self, id: u64, data: &'static [u8]) -> Result<Index, ProposeError> {
        let result = self.node_mut(id).propose(Bytes::from_static(data));
        self.deliver_all();
        result
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut(&mut self, a: u64, b: u64) {
        self.cut.insert((NodeId(a), NodeId(b)));
        self.cut.insert((NodeId(b), NodeId(a)));
    }

    /// Cuts only `from` → `to`.
    pub fn cut_one_way(&mut self, from: u64, to: u64) {
        self.cut.insert((NodeId(from), NodeId(to)));
    }

    /// Cuts every link of `id`.
    pub fn isolate(&mut self, id: u64) {
        let others: Vec<u64> = self.nodes.keys().map(|n| n.0).filter(|&n| n != id).collect();
        for other in others {
            self.cut(id, other);
        }
    }

    /// Restores both directions between `a` and `b`.
    pub fn heal_link(&mut self, a: u64, b: u64) {
        self.cut.remove(&(NodeId(a), NodeId(b)));
        self.cut.remove(&(NodeId(b), NodeId(a)));
    }

    /// Restores every link (crashed nodes stay down).
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Crashes `id`: it stops and messages to it are dropped. Its storage (all durable here) stays.
    pub fn crash(&mut self, id: u64) {
        self.down.insert(NodeId(id));
    }

    /// Restarts a crashed node from its storage.
    pub fn restart(&mut self, id: u64) {
        let seed = self.options[&NodeId(id)].rng_seed();
        self.restart_with_seed(id, seed);
    }

    /// Restarts a crashed node from its storage with another RNG seed, as a real node seeded by
    /// its operating system would get.
    pub fn restart_with_seed(&mut self, id: u64, seed: u64) {
        let id = NodeId(id);
        self.down.remove(&id);
        let storage = self.nodes[&id].storage().clone();
        let options = self.options[&id].clone().with_rng_seed(seed);
        let node = Raft::new(id, options, storage).expect("memory storage");
        self.restored.insert(id, decode_state(node.storage().snapshot_data()));
        self.nodes.insert(id, node);
        self.applied.insert(id, Vec::new());
    }

    /// Snapshots `id`'s state machine at its applied index, saves it, and compacts the log as
    /// the node advises. Returns the snapshot's metadata.
    pub fn snapshot(&mut self, id: u64) -> SnapshotMeta {
        let data = encode_state(&self.applied_data(id));
        let node = self.node_mut(id);
        let meta = node
            .snapshot_meta(node.status().applied, raft_core::snapshot_crc32(&data))
            .expect("applied index can be snapshotted");
        node.storage_mut().save_snapshot(&meta, &data).expect("memory storage");
        if let Some((index, term)) = node.compaction_point() {
            node.storage_mut().compact(index, term).expect("memory storage");
        }
        meta
    }

    /// Adds a fresh node `id` with an empty store that knows no membership: it takes part once
    /// a leader adds it and replicates to it.
    pub fn add_node(&mut self, id: u64) {
        let id = NodeId(id);
        let options = base_options(id).build().expect("valid test options");
        let node = Raft::new(id, options.clone(), MemStorage::new(Membership::default())).expect("memory storage");
        self.nodes.insert(id, node);
        self.options.insert(id, options);
        self.applied.insert(id, Vec::new());
        self.restored.insert(id, Vec::new());
        self.auto_persist.insert(id, true);
    }

    /// The leader with the highest term among live nodes, if any.
    pub fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter(|(id, n)| !self.down.contains(id) && n.role() == Role::Leader)
            .max_by_key(|(_, n)| n.term())
            .map(|(id, _)| id.0)
    }

    /// (index, term) of every entry in `id`'s stored log (from its first uncompacted entry).
    pub fn log_of(&self, id: u64) -> Vec<(u64, u64)> {
        let storage = self.node(id).storage();
        let first = storage.first_index().expect("memory").0;
        (first..=storage.last_index().expect("memory").0)
            .map(|i| (i, storage.term(Index(i)).expect("memory").0))
            .collect()
    }

    /// The payloads of normal entries in `id`'s state machine, in order: those restored from a
    /// snapshot, then those applied since.
    pub fn applied_data(&self, id: u64) -> Vec<Bytes> {
        let applied = self.applied[&NodeId(id)].iter().filter_map(|e| match &e.payload {
            EntryPayload::Normal(data) => Some(data.clone()),
            _ => None,
        });
        self.restored[&NodeId(id)].iter().cloned().chain(applied).collect()
    }

    /// Takes (and removes) the queued messages.
    pub fn take_in_flight(&mut self) -> Vec<Message> {
        self.in_flight.drain(..).collect()
    }
}

/// What the network does with one queued message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Deliver,
    Drop,
    /// Keep it aside (a long delay); the caller gets it back.
    Hold,
}

/// Like `Cluster::deliver_all`, but asks `fate` about every message first. Returns the held ones.
pub fn deliver_with(c: &mut Cluster, mut fate: impl FnMut(&Message) -> Fate) -> Vec<Message> {
    let mut held = Vec::new();
    c.process_all();
    for _ in 0..1_000_000 {
        let Some(m) = c.in_flight.pop_front() else {
            c.process_all();
            if c.in_flight.is_empty() {
                return held;
            }
            continue;
        };
        match fate(&m) {
            Fate::Deliver => {
                c.in_flight.push_front(m);
                c.deliver_one();
            }
            Fate::Drop => c.dropped += 1,
            Fate::Hold => held.push(m),
        }
    }
    panic!("the network never went quiet");
}

/// Ticks every live node once, then delivers with `fate`.
pub fn tick_with(c: &mut Cluster, fate: impl FnMut(&Message) -> Fate) -> Vec<Message> {
    let live: Vec<NodeId> = c.nodes.keys().copied().filter(|id| !c.down.contains(id)).collect();
    for id in live {
        c.nodes.get_mut(&id).expect("known node").tick();
    }
    deliver_with(c, fate)
}

pub fn between(m: &Message, from: u64, to: u64) -> bool {
    m.from == NodeId(from) && m.to == NodeId(to)
}

pub fn message(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message { from: NodeId(from), to: NodeId(to), term: Term(term), body }
}

/// A cluster of `n` fresh voters whose options are tuned by `tune`.
pub fn cluster_tuned(n: u64, tune: impl Fn(raft_core::OptionsBuilder) -> raft_core::OptionsBuilder) -> Cluster {
    let voters = ids(n);
    let nodes = voters
        .iter()
        .map(|&id| {
            let opts = tune(base_options(id)).build().expect("valid test options");
            let storage = MemStorage::new(raft_core::Membership::new(voters.iter().copied()));
            (id, Raft::new(id, opts, storage).expect("memory storage"))
        })
        .collect();
    Cluster::from_nodes(nodes)
}
