//! The metrics the write-ahead logs record, through the [`metrics`] facade: the latency of each
//! fsync that makes appended entries durable, and how much each one covered. Nothing is recorded
//! unless the application installs a recorder; the handles are registered once, when a store is
//! created or opened, so a sync costs a clock reading and three histogram records.
//!
//! Every metric of the repository, these included, is listed in one table: the docs of
//! `raft_net::metrics`.
//!
//! | name | type | labels | what |
//! | --- | --- | --- | --- |
//! | `raft_wal_fsync_seconds` | histogram | `node`, `wal` | duration of one fsync of the newest log segment after appending entries |
//! | `raft_wal_fsync_entries` | histogram | `node`, `wal` | entries that fsync made durable |
//! | `raft_wal_fsync_bytes` | histogram | `node`, `wal` | bytes of log records that fsync made durable |
//! | `raft_wal_segment_bytes` | gauge | `node`, `wal` | a shared log's segment files, in bytes (its size on disk besides the groups' snapshot files) |
//! | `raft_wal_segments` | gauge | `node`, `wal` | a shared log's segment files |
//! | `raft_wal_cache_bytes` | gauge | `node`, `wal` | the bytes of entries in a shared log's entry cache |
//! | `raft_wal_groups` | gauge | `node`, `wal` | the groups a shared log holds |
//!
//! The four gauges are set for a [`SharedWal`](crate::SharedWal) only (`wal` is `shared`): when it
//! is opened, after every write (a group commit, a compaction, a snapshot install: segments
//! the write freed are reclaimed first), and when a group is created or removed.
//!
//! `node` is the store's [`Identity::node_id`](crate::Identity); `wal` is `group` for a
//! [`DiskStorage`](crate::DiskStorage) (one log per group: a node's groups add up in one series)
//! and `shared` for a [`SharedWal`](crate::SharedWal) (one log for all of a node's groups, one
//! fsync per group commit however many groups and threads it covers).

use std::time::Instant;

use metrics::{Gauge, Histogram, gauge, histogram};
use raft_core::NodeId;

/// Histogram: seconds one fsync of the newest segment took.
pub const WAL_FSYNC_SECONDS: &str = "raft_wal_fsync_seconds";
/// Histogram: entries one fsync made durable.
pub const WAL_FSYNC_ENTRIES: &str = "raft_wal_fsync_entries";
/// Histogram: bytes of log records one fsync made durable.
pub const WAL_FSYNC_BYTES: &str = "raft_wal_fsync_bytes";

/// Gauge: bytes of a shared log's segment files.
pub const WAL_SEGMENT_BYTES: &str = "raft_wal_segment_bytes";
/// Gauge: a shared log's segment files.
pub const WAL_SEGMENTS: &str = "raft_wal_segments";
/// Gauge: bytes of entries in a shared log's entry cache.
pub const WAL_CACHE_BYTES: &str = "raft_wal_cache_bytes";
/// Gauge: groups a shared log holds.
pub const WAL_GROUPS: &str = "raft_wal_groups";

/// The `wal` label of a [`DiskStorage`](crate::DiskStorage)'s log.
pub const WAL_GROUP: &str = "group";
/// The `wal` label of a [`SharedWal`](crate::SharedWal).
pub const WAL_SHARED: &str = "shared";

/// The handles of one log, registered once.
pub(crate) struct WalMetrics {
    seconds: Histogram,
    entries: Histogram,
    bytes: Histogram,
    /// A shared log's size gauges: segment bytes, segments, cache bytes, groups.
    sizes: Option<[Gauge; 4]>,
}

/// What a shared log holds, for its gauges ([`WalMetrics::sizes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WalSizes {
    pub(crate) segment_bytes: u64,
    pub(crate) segments: usize,
    pub(crate) cache_bytes: u64,
    pub(crate) groups: usize,
}

impl WalMetrics {
    /// Handles labelled with the node and the kind of log (`WAL_GROUP` or `WAL_SHARED`).
    pub(crate) fn new(node: NodeId, wal: &'static str) -> Self {
        let labels = [("node", node.to_string()), ("wal", wal.to_string())];
        let sizes = (wal == WAL_SHARED)
            .then(|| [WAL_SEGMENT_BYTES, WAL_SEGMENTS, WAL_CACHE_BYTES, WAL_GROUPS].map(|name| gauge!(name, &labels)));
        WalMetrics {
            seconds: histogram!(WAL_FSYNC_SECONDS, &labels),
            entries: histogram!(WAL_FSYNC_ENTRIES, &labels),
            bytes: histogram!(WAL_FSYNC_BYTES, &labels),
            sizes,
        }
    }

    /// Handles that record nothing (a log whose owner is not known yet).
    pub(crate) fn noop() -> Self {
        WalMetrics { seconds: Histogram::noop(), entries: Histogram::noop(), bytes: Histogram::noop(), sizes: None }
    }

    /// Sets a shared log's size gauges (nothing for another log).
    pub(crate) fn sizes(&self, sizes: WalSizes) {
        if let Some([segment_bytes, segments, cache_bytes, groups]) = &self.sizes {
            segment_bytes.set(sizes.segment_bytes as f64);
            segments.set(sizes.segments as f64);
            cache_bytes.set(sizes.cache_bytes as f64);
            groups.set(sizes.groups as f64);
        }
    }

    /// Records one fsync that started at `started` and made `entries` entries (`bytes` bytes of
    /// records) durable.
    pub(crate) fn synced(&self, started: Instant, entries: u64, bytes: u64) {
        self.seconds.record(started.elapsed());
        self.entries.record(entries as f64);
        self.bytes.record(bytes as f64);
    }
}
