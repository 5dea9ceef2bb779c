//! # raft-storage
//!
//! Stores implementing [`raft_core::Storage`] plus the write side, [`LogStore`], that drivers use
//! to persist each [`raft_core::Output`]:
//!
//! - [`MemStorage`]: in memory, for tests, the simulator and benchmarks;
//! - [`DiskStorage`]: a durable, crash-safe write-ahead log in a directory, over a small
//!   [`FileSystem`] trait: [`StdFs`] in production, the fault-injecting [`SimFs`] in tests.
//!
//! ```
//! use raft_core::{Entry, EntryPayload, Index, Membership, NodeId, Storage, Term};
//! use raft_storage::{LogStore, MemStorage};
//!
//! let mut store = MemStorage::new(Membership::new([NodeId(1), NodeId(2), NodeId(3)]));
//! let entry = |index, term| Entry { index: Index(index), term: Term(term), payload: EntryPayload::Noop };
//! store.persist(None, &[entry(1, 1), entry(2, 1)])?;
//! store.persist(None, &[entry(2, 2)])?; // replaces the conflicting suffix
//! assert_eq!(store.last_index()?, Index(2));
//! assert_eq!(store.term(Index(2))?, Term(2));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod disk;
mod fs;
mod mem;
mod simfs;

pub use disk::{Corruption, DiskError, DiskOptions, DiskStorage, Identity, IoOp};
pub use fs::{FileSystem, FsFile, StdFile, StdFs};
pub use mem::{MemStorage, MemStorageError};
pub use simfs::{SimFile, SimFs, SimFsOptions};

use raft_core::{Entry, HardState, Index, Storage, Term};

/// The write side of a store: what a driver calls to make an output durable.
///
/// After `persist` returns `Ok`, the hard state and entries are durable (fsynced) and visible
/// through the [`Storage`] read side. After an `Err`, nothing may be acknowledged: the driver must
/// stop the node (fail-stop), since the store cannot say what reached the disk.
pub trait LogStore: Storage {
    /// The store's error type.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Makes `hard_state` (if any) and `entries` durable. The entries replace any stored entries
    /// from `entries[0].index` on.
    fn persist(&mut self, hard_state: Option<HardState>, entries: &[Entry]) -> Result<(), Self::Error>;

    /// Records that a snapshot covers everything up to (`index`, `term`) and drops those entries
    /// from the log. Entries after `index` are kept when the log holds (`index`, `term`); otherwise
    /// the log is emptied (the snapshot supersedes it). Never leaves a gap between the snapshot
    /// and the first entry (PITFALLS.md 18).
    fn compact(&mut self, index: Index, term: Term) -> Result<(), Self::Error>;
}

/// Entries in `[low, high)` from `entries` (whose first element has index `offset + 1`), bounded
/// by `bytes_max` but at least one.
fn take_entries(entries: &[Entry], offset: Index, low: Index, high: Index, bytes_max: u64) -> Vec<Entry> {
    let start = (low.0 - offset.0 - 1) as usize;
    let end = ((high.0 - offset.0).saturating_sub(1) as usize).min(entries.len());
    let mut out = Vec::new();
    let mut bytes = 0;
    for entry in entries.get(start..end).unwrap_or_default() {
        let size = entry.size_bytes();
        if !out.is_empty() && bytes + size > bytes_max {
            break;
        }
        bytes += size;
        out.push(entry.clone());
    }
    out
}
