//! The entry cache: the most recently written entries of every group, up to a byte limit
//! ([`WalOptions::cache_bytes_max`](super::WalOptions)). Entries outside it are read back from
//! their segment. It evicts the oldest insertion first, so it holds the newest entries: those a
//! leader sends to followers that keep up, and those a node applies next.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use raft_core::{Entry, GroupId, Index};

/// A byte-limited cache of entries by group and index, evicting the oldest insertion first.
#[derive(Debug, Default)]
pub(super) struct EntryCache {
    bytes_max: u64,
    /// The bytes the cached entries count for ([`Entry::size_bytes`]); at most `bytes_max`.
    bytes: u64,
    /// The number the next insertion gets: insertion order.
    next_number: u64,
    entries: BTreeMap<(GroupId, Index), (u64, Entry)>,
    /// Insertion number to key, oldest first.
    order: BTreeMap<u64, (GroupId, Index)>,
}

impl EntryCache {
    pub(super) fn new(bytes_max: u64) -> Self {
        EntryCache { bytes_max, ..EntryCache::default() }
    }

    /// The bytes the cached entries count for.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(super) fn get(&self, group: GroupId, index: Index) -> Option<&Entry> {
        self.entries.get(&(group, index)).map(|(_, entry)| entry)
    }

    /// Caches `entry` of `group` (replacing any cached entry at its index), evicting the oldest
    /// entries until the cache fits its limit. An entry larger than the limit is not cached.
    pub(super) fn insert(&mut self, group: GroupId, entry: Entry) {
        let key = (group, entry.index);
        self.remove(key);
        let size = entry.size_bytes();
        if size > self.bytes_max {
            return;
        }
        while self.bytes + size > self.bytes_max {
            let Some((_, oldest)) = self.order.first_key_value() else { break };
            let oldest = *oldest;
            self.remove(oldest);
        }
        let number = self.next_number;
        self.next_number += 1;
        self.bytes += size;
        self.order.insert(number, key);
        self.entries.insert(key, (number, entry));
    }

    /// Drops the cached entries of `group` in `indexes`.
    pub(super) fn remove_range(&mut self, group: GroupId, indexes: RangeInclusive<Index>) {
        let (low, high) = indexes.into_inner();
        if low > high {
            return;
        }
        let keys: Vec<(GroupId, Index)> =
            self.entries.range((group, low)..=(group, high)).map(|(key, _)| *key).collect();
        for key in keys {
            self.remove(key);
        }
    }

    fn remove(&mut self, key: (GroupId, Index)) {
        if let Some((number, entry)) = self.entries.remove(&key) {
            self.order.remove(&number);
            self.bytes -= entry.size_bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use raft_core::{EntryPayload, Term};

    use super::*;

    fn entry(index: u64, bytes: usize) -> Entry {
        Entry { index: Index(index), term: Term(1), payload: EntryPayload::Normal(Bytes::from(vec![1; bytes])) }
    }

    #[test]
    fn evicts_the_oldest_insertions_to_stay_under_the_limit() {
        let mut cache = EntryCache::new(200);
        for index in 1..=10 {
            cache.insert(GroupId(index % 2), entry(index, 26)); // 50 bytes each.
            assert!(cache.bytes() <= 200);
        }
        assert_eq!(cache.bytes(), 200);
        assert!(cache.get(GroupId(0), Index(6)).is_none(), "evicted");
        assert!(cache.get(GroupId(1), Index(7)).is_some());
        cache.remove_range(GroupId(1), Index(0)..=Index::END);
        assert_eq!(cache.bytes(), 100);
        cache.insert(GroupId(3), entry(1, 1000));
        assert!(cache.get(GroupId(3), Index(1)).is_none(), "larger than the whole cache");
        assert_eq!(cache.bytes(), 100);
    }
}
