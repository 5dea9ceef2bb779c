//! Three Raft nodes over TCP on 127.0.0.1, each with a durable `DiskStorage`: elect a leader,
//! replicate a few commands, read linearizably on a follower, stop the leader, carry on.
//! Run with `cargo run -p raft-net --example three_nodes`.
use std::{collections::BTreeMap, io, net::SocketAddr, time::Duration};

use bytes::Bytes;
use raft_core::{Index, Membership, NodeId, Options, Role};
use raft_net::{NodeConfig, NodeHandle, ReadConsistency, StateMachine, TcpOptions, TcpTransport, TokioConnector};
use raft_storage::{DiskOptions, DiskStorage, Identity, StdFs};

/// The replicated state: every command applied, in order (snapshots are one length-less blob).
#[derive(Default)]
struct Log(Vec<u8>);

impl StateMachine for Log {
    type Response = usize;
    type RestoreError = io::Error;
    fn apply(&mut self, _index: Index, command: &Bytes) -> usize {
        self.0.extend_from_slice(command);
        self.0.len()
    }
    fn snapshot(&self, sink: &mut dyn io::Write) -> io::Result<()> {
        sink.write_all(&self.0)
    }
    fn restore(&mut self, reader: &mut dyn io::Read) -> io::Result<()> {
        let mut state = Vec::new();
        reader.read_to_end(&mut state)?;
        self.0 = state;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("raft-three-nodes-{}", std::process::id()));
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    let mut listeners = Vec::new();
    for _ in ids {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
    }
    let addresses: BTreeMap<NodeId, SocketAddr> = ids
        .iter()
        .zip(&listeners)
        .map(|(id, listener)| Ok((*id, listener.local_addr()?)))
        .collect::<io::Result<_>>()?;
    let mut nodes = BTreeMap::new();
    for (id, listener) in ids.into_iter().zip(listeners) {
        let identity = Identity { cluster_id: 7, node_id: id };
        let storage = DiskStorage::create(
            StdFs,
            dir.join(id.0.to_string()),
            identity,
            Membership::new(ids),
            DiskOptions::default(),
        )?;
        let peers = addresses.iter().filter(|(peer, _)| **peer != id).map(|(peer, address)| (*peer, *address));
        let (transport, inbound) =
            TcpTransport::start(7, id, listener, TokioConnector, peers.collect(), TcpOptions::default())?;
        let mut config = NodeConfig::new(id, Options::builder().election_ticks(10).heartbeat_ticks(2).build()?);
        config.tick_interval = Duration::from_millis(20);
        nodes.insert(id, raft_net::start(config, storage, transport, inbound, Log::default())?);
    }
    let mut leader = NodeId(0);
    for word in ["raft ", "over ", "tcp"] {
        (leader, _) = write(&nodes, word).await;
    }
    let follower = ids.into_iter().find(|id| *id != leader).expect("three nodes, one leader");
    let text = nodes[&follower].read(ReadConsistency::Linearizable, |log: &Log| log.0.clone()).await?;
    println!("leader {leader}; follower {follower} reads {:?}", String::from_utf8_lossy(&text));
    nodes.remove(&leader).expect("the leader runs").shutdown().await;
    let (new_leader, length) = write(&nodes, "!").await;
    println!("node {leader} stopped; node {new_leader} leads and committed byte {length}");
    for node in nodes.into_values() {
        node.shutdown().await;
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Proposes `command` on whichever node leads, retrying through elections (a real client would
/// give up after a while, and learn whether a failed write may have been applied from the error).
async fn write(nodes: &BTreeMap<NodeId, NodeHandle<Log>>, command: &'static str) -> (NodeId, usize) {
    loop {
        for (id, node) in nodes {
            if node.status().await.is_ok_and(|status| status.role == Role::Leader)
                && let Ok(length) = node.propose(Bytes::from(command)).await
            {
                return (*id, length);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
