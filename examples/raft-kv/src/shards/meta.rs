//! The meta group's state machine: the routing table, changed by [`TableCommand`]s.

use std::io::{self, Read};

use bytes::Bytes;
use raft_core::Index;
use raft_net::StateMachine;

use super::{RoutingTable, TableCommand, TableError};

/// The most bytes a stored routing table may take when restored (a table of
/// [`SHARDS_MAX`](super::SHARDS_MAX) shards of [`REPLICAS_MAX`](super::REPLICAS_MAX) replicas
/// and a few hundred nodes takes well under a MiB).
pub const TABLE_BYTES_MAX: u64 = 16 << 20;

/// The meta group's replicated state: the routing table.
#[derive(Debug, Default)]
pub struct Meta {
    table: RoutingTable,
}

impl Meta {
    /// The routing table as applied so far.
    pub fn table(&self) -> &RoutingTable {
        &self.table
    }
}

impl StateMachine for Meta {
    /// The table's version after the command, or why it was refused (a refused command changes
    /// nothing, on every member alike).
    type Response = Result<u64, TableError>;
    type RestoreError = io::Error;

    fn apply(&mut self, _index: Index, command: &Bytes) -> Result<u64, TableError> {
        self.table.apply(&TableCommand::decode(command)?)
    }

    fn snapshot(&self, sink: &mut dyn io::Write) -> io::Result<()> {
        postcard::to_io(&self.table, sink).map(|_| ()).map_err(io::Error::other)
    }

    fn restore(&mut self, reader: &mut dyn io::Read) -> io::Result<()> {
        let mut bytes = Vec::new();
        Read::take(reader, TABLE_BYTES_MAX + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > TABLE_BYTES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "routing table snapshot larger than TABLE_BYTES_MAX",
            ));
        }
        self.table = postcard::from_bytes(&bytes).map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::SocketAddr;

    use raft_core::NodeId;

    use super::*;
    use crate::shards::{NodeEntry, NodeState, ShardId, TableChange};

    fn create() -> TableCommand {
        let address = SocketAddr::from(([127, 0, 0, 1], 9001));
        let nodes = BTreeMap::from([(NodeId(1), NodeEntry { raft: address, http: address, state: NodeState::Active })]);
        let replicas = vec![BTreeSet::from([NodeId(1)]); 4];
        TableCommand { expected_version: None, change: TableChange::Create { replication: 1, nodes, replicas } }
    }

    #[test]
    fn commands_apply_and_refusals_change_nothing() {
        let mut meta = Meta::default();
        assert_eq!(meta.apply(Index(1), &Bytes::from(create().encode())), Ok(1));
        assert_eq!(meta.apply(Index(2), &Bytes::from_static(b"\xff\xff")), Err(TableError::Malformed));
        let stale = TableCommand {
            expected_version: Some(0),
            change: TableChange::LeaderHint { shard: ShardId(0), leader: Some(NodeId(1)) },
        };
        assert!(matches!(meta.apply(Index(3), &Bytes::from(stale.encode())), Err(TableError::Stale { .. })));
        assert_eq!(meta.table().version(), 1);
        assert_eq!(meta.table().shard_count(), 4);
    }

    #[test]
    fn a_snapshot_restores_the_same_table() {
        let mut meta = Meta::default();
        meta.apply(Index(1), &Bytes::from(create().encode())).expect("created");
        let mut data = Vec::new();
        meta.snapshot(&mut data).expect("into memory");
        let mut restored = Meta::default();
        restored.restore(&mut data.as_slice()).expect("its own snapshot");
        assert_eq!(restored.table(), meta.table());
        // Damaged data is an error, and the table stays as it was.
        let before = restored.table().clone();
        assert!(restored.restore(&mut &data[..data.len() / 2]).is_err());
        assert_eq!(restored.table(), &before);
    }
}
