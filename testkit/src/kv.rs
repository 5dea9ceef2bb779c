//! A key-value state machine with snapshots whose state a test can read ([`Kv`] and its
//! [`KvView`]), the command that writes it ([`set`]), and waits on what it applied.
//!
//! The simulator's state machine is not this one: it answers with the outputs its
//! linearizability checker needs, reports every apply to its checkers, and keeps a snapshot
//! format its seeds' runs depend on.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use raft_core::{Index, NodeId};
use raft_net::{NodeHandle, StateMachine};
use thiserror::Error;

use crate::client::propose;
use crate::node::{Machine, Member};
use crate::wait::eventually;

/// What a [`Kv`] state machine holds, shared with the test.
#[derive(Debug, Default)]
pub struct KvData {
    /// The keys and values.
    pub map: BTreeMap<Bytes, Bytes>,
    /// The last applied index.
    pub applied: Index,
    /// The index of every snapshot the machine was restored from, in order.
    pub restored: Vec<Index>,
}

/// The test's view of a [`Kv`] machine.
#[derive(Clone, Debug, Default)]
pub struct KvView(Arc<Mutex<KvData>>);

impl KvView {
    /// Locks the data (a panicking state machine poisons nothing that matters to a test).
    pub fn lock(&self) -> MutexGuard<'_, KvData> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of the map.
    pub fn map(&self) -> BTreeMap<Bytes, Bytes> {
        self.lock().map.clone()
    }

    /// The last applied index.
    pub fn applied(&self) -> Index {
        self.lock().applied
    }
}

/// A key-value state machine: each command is `key=value` and sets the key; the response is
/// the index it was applied at.
#[derive(Debug, Default)]
pub struct Kv(pub KvView);

/// A snapshot that does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("snapshot truncated at byte {0}")]
pub struct TruncatedSnapshot(pub usize);

impl StateMachine for Kv {
    type Response = Index;
    type RestoreError = TruncatedSnapshot;

    fn apply(&mut self, index: Index, command: &Bytes) -> Index {
        let mut data = self.0.lock();
        let split = command.iter().position(|byte| *byte == b'=').unwrap_or(command.len());
        let value = if split < command.len() { command.slice(split + 1..) } else { Bytes::new() };
        data.map.insert(command.slice(..split), value);
        data.applied = index;
        index
    }

    fn snapshot(&self) -> Bytes {
        let data = self.0.lock();
        let mut out = Vec::new();
        out.extend_from_slice(&data.applied.0.to_le_bytes());
        for (key, value) in &data.map {
            for part in [key, value] {
                out.extend_from_slice(&(part.len() as u32).to_le_bytes());
                out.extend_from_slice(part);
            }
        }
        Bytes::from(out)
    }

    fn restore(&mut self, snapshot: Bytes) -> Result<(), TruncatedSnapshot> {
        let mut reader = Reader { data: snapshot, position: 0 };
        let applied = Index(reader.u64()?);
        let mut map = BTreeMap::new();
        while reader.position < reader.data.len() {
            let key = reader.part()?;
            map.insert(key, reader.part()?);
        }
        let mut data = self.0.lock();
        data.map = map;
        data.applied = applied;
        data.restored.push(applied);
        Ok(())
    }
}

/// Decodes a [`Kv`] snapshot.
struct Reader {
    data: Bytes,
    position: usize,
}

impl Reader {
    fn take(&mut self, count: usize) -> Result<Bytes, TruncatedSnapshot> {
        let end = self.position.checked_add(count).filter(|end| *end <= self.data.len());
        let end = end.ok_or(TruncatedSnapshot(self.position))?;
        let piece = self.data.slice(self.position..end);
        self.position = end;
        Ok(piece)
    }

    fn u64(&mut self) -> Result<u64, TruncatedSnapshot> {
        let bytes = self.take(8)?;
        Ok(u64::from_le_bytes(bytes.as_ref().try_into().map_err(|_| TruncatedSnapshot(self.position))?))
    }

    fn part(&mut self) -> Result<Bytes, TruncatedSnapshot> {
        let bytes = self.take(4)?;
        let length = u32::from_le_bytes(bytes.as_ref().try_into().map_err(|_| TruncatedSnapshot(self.position))?);
        self.take(length as usize)
    }
}

/// The command that sets `key` to `value`.
pub fn set(key: &str, value: &str) -> Bytes {
    Bytes::from(format!("{key}={value}"))
}

impl Machine for Kv {
    type View = KvView;

    fn view(&self) -> KvView {
        self.0.clone()
    }
}

/// Proposes `set(key{i}, value{i})` for every `i` in `keys` through [`propose`], `in_flight` at
/// a time.
pub async fn propose_many(nodes: &[NodeHandle<Kv>], ids: &[NodeId], keys: Range<usize>, in_flight: usize) {
    let mut workers = Vec::new();
    for worker in 0..in_flight {
        let (nodes, ids, keys) = (nodes.to_vec(), ids.to_vec(), keys.clone());
        workers.push(tokio::spawn(async move {
            for key in keys.skip(worker).step_by(in_flight) {
                propose(&nodes, &ids, worker % nodes.len(), set(&format!("key{key}"), &format!("value{key}"))).await;
            }
        }));
    }
    for worker in workers {
        worker.await.expect("a proposing worker panicked");
    }
}

/// Waits until every member has applied at least `index`; panics after
/// [`PATIENCE`](crate::PATIENCE).
pub async fn all_applied(members: &[&Member<Kv>], index: Index) {
    for member in members {
        eventually(&format!("node {} applies {index}", member.id), || async { member.view.applied() >= index }).await;
    }
}
