//! The entry cache: the most recently written entries of every group, up to a byte limit
//! ([`WalOptions::cache_bytes_max`](super::WalOptions)). Entries outside it are read back from
//! their segment. It evicts the oldest insertion first, so it holds the newest entries: those a
//! leader sends to followers that keep up, and those a node applies next.

use std::collections::{BTreeMap, VecDeque};
use std::ops::RangeInclusive;

use raft_core::{Entry, GroupId, Index};

/// A byte-limited cache of entries by group and index, evicting the oldest insertion first.
///
/// Each group's cached entries are consecutive indexes in a deque (a group appends at its end,
/// cuts a conflicting suffix from its end and is compacted from its front), so a lookup is one
/// map step and an index into the deque. The insertion order over all groups is a queue of
/// insertion numbers; an entry removed otherwise than by eviction leaves its number there, to be
/// skipped when it comes up (and the queue is compacted when such numbers pile up).
#[derive(Debug, Default)]
pub(super) struct EntryCache {
    bytes_max: u64,
    /// The bytes the cached entries count for ([`Entry::size_bytes`]); at most `bytes_max`.
    bytes: u64,
    /// The number the next insertion gets: insertion order.
    next_number: u64,
    /// Each group's cached entries, consecutive, with their insertion numbers (increasing).
    groups: BTreeMap<GroupId, VecDeque<(u64, Entry)>>,
    /// Entries cached, over all groups.
    len: usize,
    /// Insertion numbers and groups, oldest first; some may name entries no longer cached.
    order: VecDeque<(u64, GroupId)>,
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
        let entries = self.groups.get(&group)?;
        let first = entries.front()?.1.index;
        let offset = usize::try_from(index.0.checked_sub(first.0)?).ok()?;
        entries.get(offset).map(|(_, entry)| entry).filter(|entry| entry.index == index)
    }

    /// Caches `entry` of `group` (replacing any cached entry at or after its index), evicting the
    /// oldest entries until the cache fits its limit. An entry larger than the limit is not
    /// cached (nor then are the group's entries before it, which would no longer be consecutive).
    pub(super) fn insert(&mut self, group: GroupId, entry: Entry) {
        self.remove_range(group, entry.index..=Index::END);
        let size = entry.size_bytes();
        if size > self.bytes_max {
            self.remove_range(group, Index(0)..=Index::END);
            return;
        }
        let continues = self
            .groups
            .get(&group)
            .and_then(|entries| entries.back())
            .is_none_or(|(_, last)| last.index.next() == entry.index);
        if !continues {
            self.remove_range(group, Index(0)..=Index::END);
        }
        while self.bytes + size > self.bytes_max && self.evict_oldest() {}
        let number = self.next_number;
        self.next_number += 1;
        self.bytes += size;
        self.len += 1;
        self.order.push_back((number, group));
        self.groups.entry(group).or_default().push_back((number, entry));
    }

    /// Drops the cached entries of `group` in `indexes`, which reach the first or the last cached
    /// entry (the store only ever cuts a prefix or a suffix).
    pub(super) fn remove_range(&mut self, group: GroupId, indexes: RangeInclusive<Index>) {
        let (low, high) = indexes.into_inner();
        let Some(entries) = self.groups.get_mut(&group) else { return };
        let mut removed_bytes = 0;
        let mut removed = 0;
        while entries.back().is_some_and(|(_, entry)| entry.index >= low && entry.index <= high) {
            let (_, entry) = entries.pop_back().expect("checked");
            removed_bytes += entry.size_bytes();
            removed += 1;
        }
        while entries.front().is_some_and(|(_, entry)| entry.index >= low && entry.index <= high) {
            let (_, entry) = entries.pop_front().expect("checked");
            removed_bytes += entry.size_bytes();
            removed += 1;
        }
        if entries.is_empty() {
            self.groups.remove(&group);
        }
        self.bytes -= removed_bytes;
        self.len -= removed;
        // Numbers of removed entries stay in `order`: compact it once they outnumber the rest.
        if self.order.len() > 2 * self.len + 64 {
            let groups = &self.groups;
            self.order.retain(|(number, group)| {
                groups.get(group).is_some_and(|entries| entries.binary_search_by_key(number, |(n, _)| *n).is_ok())
            });
        }
    }

    /// Evicts the oldest insertion still cached; `false` when the cache is empty.
    fn evict_oldest(&mut self) -> bool {
        while let Some((number, group)) = self.order.pop_front() {
            let Some(entries) = self.groups.get_mut(&group) else { continue };
            // A group's oldest cached entry is the front of its deque; a number that is not
            // there was removed already.
            if entries.front().is_some_and(|(front, _)| *front == number) {
                let (_, entry) = entries.pop_front().expect("checked");
                if entries.is_empty() {
                    self.groups.remove(&group);
                }
                self.bytes -= entry.size_bytes();
                self.len -= 1;
                return true;
            }
        }
        false
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
        // Two groups appending in turn, 50 bytes an entry: group 1 gets 1..=5, group 0 too.
        for number in 1..=10 {
            cache.insert(GroupId(number % 2), entry(number.div_ceil(2), 26));
            assert!(cache.bytes() <= 200);
        }
        assert_eq!(cache.bytes(), 200);
        assert!(cache.get(GroupId(0), Index(3)).is_none(), "evicted");
        assert!(cache.get(GroupId(1), Index(4)).is_some());
        cache.remove_range(GroupId(1), Index(0)..=Index::END);
        assert_eq!(cache.bytes(), 100);
        cache.insert(GroupId(3), entry(1, 1000));
        assert!(cache.get(GroupId(3), Index(1)).is_none(), "larger than the whole cache");
        assert_eq!(cache.bytes(), 100);
    }

    /// The naive cache this one replaced: every entry by (group, index), and the insertion order.
    #[derive(Default)]
    struct Model {
        bytes_max: u64,
        bytes: u64,
        next: u64,
        entries: BTreeMap<(GroupId, Index), (u64, Entry)>,
        order: BTreeMap<u64, (GroupId, Index)>,
    }

    impl Model {
        fn remove(&mut self, key: (GroupId, Index)) {
            if let Some((number, entry)) = self.entries.remove(&key) {
                self.order.remove(&number);
                self.bytes -= entry.size_bytes();
            }
        }
        fn remove_range(&mut self, group: GroupId, low: Index, high: Index) {
            let keys: Vec<_> = self.entries.range((group, low)..=(group, high)).map(|(key, _)| *key).collect();
            keys.into_iter().for_each(|key| self.remove(key));
        }
        fn insert(&mut self, group: GroupId, entry: Entry) {
            self.remove_range(group, entry.index, Index::END);
            let size = entry.size_bytes();
            if size > self.bytes_max {
                self.remove_range(group, Index(0), Index::END);
                return;
            }
            while self.bytes + size > self.bytes_max {
                let Some((_, oldest)) = self.order.first_key_value() else { break };
                let oldest = *oldest;
                self.remove(oldest);
            }
            self.bytes += size;
            self.order.insert(self.next, (group, entry.index));
            self.entries.insert((group, entry.index), (self.next, entry));
            self.next += 1;
        }
    }

    /// Random workloads of what the store does (appends that continue a group's log or cut its
    /// suffix, compactions, removals; entries now and then too large to cache): the cache holds
    /// exactly what the naive one does.
    #[test]
    fn agrees_with_the_naive_cache_on_the_stores_workloads() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for _ in 0..50 {
            let bytes_max = 100 + next(2000);
            let (mut cache, mut model) = (EntryCache::new(bytes_max), Model { bytes_max, ..Model::default() });
            let mut last: BTreeMap<GroupId, (u64, u64)> = BTreeMap::new(); // (boundary, last index)
            for _ in 0..2000 {
                let group = GroupId(next(5));
                let (boundary, last_index) = last.get(&group).copied().unwrap_or((0, 0));
                match next(10) {
                    0 => {
                        // Compaction of a prefix.
                        let upto = boundary + next(last_index - boundary + 1);
                        cache.remove_range(group, Index(0)..=Index(upto));
                        model.remove_range(group, Index(0), Index(upto));
                        last.insert(group, (upto, last_index.max(upto)));
                    }
                    1 => {
                        cache.remove_range(group, Index(0)..=Index::END);
                        model.remove_range(group, Index(0), Index::END);
                        last.remove(&group);
                    }
                    _ => {
                        // An append from a point within the log (a conflicting suffix cut) or at its end.
                        let first =
                            if next(4) == 0 { boundary + 1 + next(last_index - boundary + 1) } else { last_index + 1 };
                        let count = 1 + next(4);
                        for index in first..first + count {
                            let size = if next(50) == 0 { bytes_max as usize } else { next(60) as usize };
                            cache.insert(group, entry(index, size));
                            model.insert(group, entry(index, size));
                        }
                        last.insert(group, (boundary, first + count - 1));
                    }
                }
                assert_eq!(cache.bytes(), model.bytes);
                for ((group, index), (_, expected)) in &model.entries {
                    assert_eq!(cache.get(*group, *index), Some(expected));
                }
                assert_eq!(cache.len, model.entries.len());
            }
        }
    }
}
