//! # raft-storage
//!
//! Stores implementing [`raft_core::Storage`]. For now: [`MemStorage`], an in-memory log and
//! hard state for tests, the simulator and benchmarks. The durable write-ahead-log store comes
//! in its own module.
//!
//! ```
//! use raft_core::{Entry, EntryPayload, Index, Membership, NodeId, Storage, Term};
//! use raft_storage::MemStorage;
//!
//! let mut store = MemStorage::new(Membership::new([NodeId(1), NodeId(2), NodeId(3)]));
//! let entry = |index, term| Entry { index: Index(index), term: Term(term), payload: EntryPayload::Noop };
//! store.append(&[entry(1, 1), entry(2, 1)])?;
//! store.append(&[entry(2, 2)])?; // replaces the conflicting suffix
//! assert_eq!(store.last_index()?, Index(2));
//! assert_eq!(store.term(Index(2))?, Term(2));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod mem;

pub use mem::{MemStorage, MemStorageError};
