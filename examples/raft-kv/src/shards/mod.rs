//! Sharding: which shard a key belongs to ([`shard_of`]), the routing table that the meta group
//! replicates ([`RoutingTable`], changed only through [`TableCommand`]s), and where replicas
//! should live ([`placement::next_change`]).
//!
//! A shard is one Raft group: shard `n` is [`GroupId`] `n + 1`, and [`META_GROUP`] (group 0)
//! holds the table. The number of shards is fixed when the cluster is created.

pub mod controller;
mod meta;
pub mod node;
pub mod placement;
pub mod runner;
pub mod scatter;
mod table;

pub use meta::{Meta, TABLE_BYTES_MAX};
pub use table::{
    NodeEntry, NodeState, REPLICAS_MAX, RoutingTable, SHARDS_MAX, ShardEntry, TableChange, TableCommand, TableError,
};

use raft_core::GroupId;
use serde::{Deserialize, Serialize};

/// The Raft group of the routing table.
pub const META_GROUP: GroupId = GroupId(0);

/// The number of a shard, from 0 to the shard count (excluded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardId(pub u32);

impl ShardId {
    /// The Raft group that holds this shard.
    pub fn group(self) -> GroupId {
        GroupId(u64::from(self.0) + 1)
    }

    /// The shard a group holds, or `None` for the meta group.
    pub fn of_group(group: GroupId) -> Option<ShardId> {
        let shard = group.0.checked_sub(1)?;
        u32::try_from(shard).ok().map(ShardId)
    }
}

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The shard that `key` belongs to among `shard_count` shards (`shard_count` at least 1).
///
/// The hash is XXH3-64 of the key's bytes: specified, seedless and the same on every platform and
/// in every version, so a key maps to the same shard on every node, forever (a randomly keyed
/// hasher such as `std`'s would scatter keys differently in every process).
pub fn shard_of(key: &[u8], shard_count: u32) -> ShardId {
    let shard_count = u64::from(shard_count.max(1));
    let shard = xxhash_rust::xxh3::xxh3_64(key) % shard_count;
    ShardId(u32::try_from(shard).expect("a remainder of a u32 divisor fits in a u32"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_fixed_shards() {
        // Pinned: a change of hash would move every key of every existing cluster.
        let pinned: Vec<u32> =
            ["", "a", "user:1", "user:2", "snapshot"].iter().map(|key| shard_of(key.as_bytes(), 16).0).collect();
        assert_eq!(pinned, PINNED_SHARDS);
        assert_eq!(shard_of(b"anything", 1), ShardId(0));
        assert_eq!(shard_of(b"anything", 0), ShardId(0), "a zero count is read as one shard");
    }

    /// The shards of the keys in `keys_map_to_fixed_shards`, computed once with XXH3-64.
    const PINNED_SHARDS: [u32; 5] = [2, 15, 1, 2, 3];

    #[test]
    fn the_hash_is_xxh3_64() {
        // The specification's value for the empty input (seed 0).
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b""), 0x2D06_8005_38D3_94C2);
        assert_eq!(shard_of(b"", 1 << 20), ShardId((0x2D06_8005_38D3_94C2u64 % (1 << 20)) as u32));
    }

    #[test]
    fn keys_spread_evenly() {
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[shard_of(format!("key-{i}").as_bytes(), 16).0 as usize] += 1;
        }
        // 1,000 expected per shard; a fair hash stays well within 15%.
        assert!(counts.iter().all(|count| (850..1150).contains(count)), "{counts:?}");
    }

    #[test]
    fn groups_and_shards_map_both_ways() {
        assert_eq!(ShardId(0).group(), GroupId(1));
        assert_eq!(ShardId::of_group(GroupId(1)), Some(ShardId(0)));
        assert_eq!(ShardId::of_group(META_GROUP), None);
        assert_eq!(ShardId::of_group(GroupId(u64::MAX)), None);
        assert_eq!(ShardId::of_group(ShardId(u32::MAX).group()), Some(ShardId(u32::MAX)));
    }
}
