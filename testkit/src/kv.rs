//! A key-value state machine with snapshots whose state a test can read ([`Kv`] and its
//! [`KvView`]), the command that writes it ([`set`]), and waits on what it applied.
//!
//! The simulator's state machine is not this one: it answers with the outputs its
//! linearizability checker needs, reports every apply to its checkers, and keeps a snapshot
//! format its seeds' runs depend on.

use std::collections::BTreeMap;
use std::io;
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

/// Why a [`Kv`] snapshot did not restore.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TruncatedSnapshot {
    /// The snapshot ends inside a record (or before its applied index), at this byte.
    #[error("snapshot truncated at byte {0}")]
    At(u64),
    /// Reading failed (the driver reports a failure of its store as such).
    #[error("snapshot read failed at byte {position}: {source}")]
    Read {
        /// Where.
        position: u64,
        /// The reader's error.
        source: std::io::Error,
    },
}

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

    /// The applied index, then each key and value with a `u32` length before it: written a
    /// record at a time.
    fn snapshot(&self, sink: &mut dyn io::Write) -> io::Result<()> {
        let data = self.0.lock();
        sink.write_all(&data.applied.0.to_le_bytes())?;
        for (key, value) in &data.map {
            for part in [key, value] {
                sink.write_all(&(part.len() as u32).to_le_bytes())?;
                sink.write_all(part)?;
            }
        }
        Ok(())
    }

    fn restore(&mut self, reader: &mut dyn io::Read) -> Result<(), TruncatedSnapshot> {
        let mut reader = Reader { reader, position: 0 };
        let mut applied = [0; 8];
        if !reader.fill(&mut applied)? {
            return Err(TruncatedSnapshot::At(0));
        }
        let applied = Index(u64::from_le_bytes(applied));
        let mut map = BTreeMap::new();
        while let Some(key) = reader.part(true)? {
            let value = reader.part(false)?.ok_or(TruncatedSnapshot::At(reader.position))?;
            map.insert(key, value);
        }
        let mut data = self.0.lock();
        data.map = map;
        data.applied = applied;
        data.restored.push(applied);
        Ok(())
    }
}

/// Decodes a [`Kv`] snapshot as it is read.
struct Reader<'a> {
    reader: &'a mut dyn io::Read,
    position: u64,
}

impl Reader<'_> {
    /// Fills `buffer`; `false` if the data ended before its first byte.
    fn fill(&mut self, buffer: &mut [u8]) -> Result<bool, TruncatedSnapshot> {
        let mut filled = 0;
        while filled < buffer.len() {
            match self.reader.read(&mut buffer[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => return Err(TruncatedSnapshot::At(self.position)),
                Ok(count) => {
                    filled += count;
                    self.position += count as u64;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(TruncatedSnapshot::Read { position: self.position, source }),
            }
        }
        Ok(true)
    }

    /// The next length-prefixed part; `None` at the end of the data if `may_end`.
    fn part(&mut self, may_end: bool) -> Result<Option<Bytes>, TruncatedSnapshot> {
        let mut length = [0; 4];
        if !self.fill(&mut length)? {
            return if may_end { Ok(None) } else { Err(TruncatedSnapshot::At(self.position)) };
        }
        // Grown as bytes arrive, not sized by a length prefix that may be damaged.
        let length = u64::from(u32::from_le_bytes(length));
        let mut part = Vec::new();
        let read = io::Read::read_to_end(&mut io::Read::take(&mut *self.reader, length), &mut part)
            .map_err(|source| TruncatedSnapshot::Read { position: self.position, source })?;
        self.position += read as u64;
        if (read as u64) < length {
            return Err(TruncatedSnapshot::At(self.position));
        }
        Ok(Some(Bytes::from(part)))
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

#[cfg(test)]
mod tests {
    use raft_net::StateMachine;

    use super::*;

    /// A damaged length prefix (4 GiB announced, 3 bytes there) is a truncated snapshot, read
    /// without allocating what it announces.
    #[test]
    fn a_damaged_length_prefix_is_a_truncated_snapshot() {
        let mut data = 7u64.to_le_bytes().to_vec();
        data.extend_from_slice(&u32::MAX.to_le_bytes());
        data.extend_from_slice(b"abc");
        let mut kv = Kv(KvView::default());
        let refused = kv.restore(&mut data.as_slice());
        assert!(matches!(refused, Err(TruncatedSnapshot::At(15))), "{refused:?}");
        // And a good one restores.
        let mut good = Vec::new();
        let mut source = Kv(KvView::default());
        source.apply(Index(1), &set("k", "v"));
        source.snapshot(&mut good).expect("snapshot");
        kv.restore(&mut good.as_slice()).expect("restores");
        assert_eq!(kv.0.map().get(&b"k"[..]).map(|v| v.to_vec()), Some(b"v".to_vec()));
    }
}
