//! A custom replicated state machine with streaming snapshots: a key-value map whose commands are
//! postcard-encoded, snapshotted every 100 entries as length-prefixed records, and restored from
//! its snapshot (plus the entries after it) when the node restarts on the same directory.
//! Run with `cargo run -p raft-net --example state_machine`.
use std::{collections::BTreeMap, io, path::Path, time::Duration};

use bytes::Bytes;
use raft_core::{Index, Membership, NodeId, Options, Role, Storage};
use raft_net::{MemNetwork, NodeConfig, NodeHandle, ReadConsistency, StateMachine};
use raft_storage::{DiskOptions, DiskStorage, Identity, StdFs};
use serde::{Deserialize, Serialize};

/// What clients propose.
#[derive(Serialize, Deserialize)]
enum Command {
    Set { key: String, value: String },
    Delete { key: String },
}

/// The replicated map.
#[derive(Default)]
struct Map(BTreeMap<String, String>);

impl StateMachine for Map {
    /// The previous value, or `None`; a command that does not decode changes nothing.
    type Response = Option<String>;
    type RestoreError = io::Error;

    fn apply(&mut self, _index: Index, command: &Bytes) -> Option<String> {
        match postcard::from_bytes(command) {
            Ok(Command::Set { key, value }) => self.0.insert(key, value),
            Ok(Command::Delete { key }) => self.0.remove(&key),
            Err(_) => None, // Deterministic on every member: a bad command is a no-op.
        }
    }

    /// Streams one record per key: never the whole map as one buffer.
    fn snapshot(&self, sink: &mut dyn io::Write) -> io::Result<()> {
        for (key, value) in &self.0 {
            for field in [key, value] {
                sink.write_all(&(field.len() as u32).to_le_bytes())?;
                sink.write_all(field.as_bytes())?;
            }
        }
        Ok(())
    }

    /// Builds the new map aside and switches only once the whole snapshot was read.
    fn restore(&mut self, reader: &mut dyn io::Read) -> io::Result<()> {
        let mut map = BTreeMap::new();
        while let Some(key) = read_field(reader, true)? {
            let value = read_field(reader, false)?.ok_or(io::ErrorKind::UnexpectedEof)?;
            map.insert(key, value);
        }
        self.0 = map;
        Ok(())
    }
}

/// Reads one length-prefixed string; `None` at a clean end of the data when `end_allowed`.
fn read_field(reader: &mut dyn io::Read, end_allowed: bool) -> io::Result<Option<String>> {
    let mut length = [0; 4];
    match reader.read_exact(&mut length) {
        Err(error) if end_allowed && error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    let mut field = vec![0; u32::from_le_bytes(length) as usize];
    reader.read_exact(&mut field)?;
    String::from_utf8(field).map(Some).map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
}

/// Starts the one-node group on the store in `dir` (created on the first run, reopened after).
/// Returns the node and the index of the snapshot its store held.
async fn start(dir: &Path, network: &MemNetwork) -> Result<(NodeHandle<Map>, Index), Box<dyn std::error::Error>> {
    let (id, identity) = (NodeId(1), Identity { cluster_id: 1, node_id: NodeId(1) });
    let storage = match DiskStorage::open(StdFs, dir, identity, DiskOptions::default()) {
        Ok(storage) => storage,
        Err(_) => DiskStorage::create(StdFs, dir, identity, Membership::new([id]), DiskOptions::default())?,
    };
    let snapshot = storage.snapshot()?.index;
    let (transport, inbound) = network.join(id)?;
    let mut config = NodeConfig::new(id, Options::builder().election_ticks(5).build()?);
    config.tick_interval = Duration::from_millis(10);
    config.snapshot_every_entries = 100;
    let node = raft_net::start(config, storage, transport, inbound, Map::default())?;
    while node.status().await?.role != Role::Leader {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((node, snapshot))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("raft-state-machine-{}", std::process::id()));
    let (node, _) = start(&dir, &MemNetwork::default()).await?;
    for i in 0..250 {
        let command = if i % 10 == 9 {
            Command::Delete { key: format!("key-{}", i - 1) }
        } else {
            Command::Set { key: format!("key-{i}"), value: format!("value-{i}") }
        };
        node.propose(Bytes::from(postcard::to_allocvec(&command)?)).await?;
    }
    let before = node.read(ReadConsistency::Linearizable, |map: &Map| map.0.clone()).await?;
    node.shutdown().await;

    // The restarted node restores the map from the snapshot, then applies the entries after it.
    let (node, snapshot) = start(&dir, &MemNetwork::default()).await?;
    assert!(snapshot >= Index(200), "a snapshot every 100 entries: {snapshot:?}");
    let after = node.read(ReadConsistency::Linearizable, |map: &Map| map.0.clone()).await?;
    assert_eq!(before, after, "the restarted node has the same map");
    println!("{} keys before the restart and after it (restored from the snapshot at {snapshot:?})", after.len());
    node.shutdown().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
