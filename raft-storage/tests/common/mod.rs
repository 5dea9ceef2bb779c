//! Fixtures shared by the tests of the durable store: a three-node membership and small entries
//! whose payload names their index and term (so a replaced entry never equals the one before);
//! [`snapshot`] has those of the tests of local snapshots, [`hooks`] a gate and a file system
//! that hooks reads, [`fill`] byte-level helpers for segments filled ahead of their records.

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, Index, Membership, NodeId, Term};

// Only the tests of local snapshots use it: the others would warn of every item.
#[allow(dead_code)]
pub mod snapshot;

// Only a few tests use them.
#[allow(dead_code)]
pub mod hooks;

// Only the tests of filled segments use them.
#[allow(dead_code)]
pub mod fill;

/// The voters 1, 2 and 3.
pub fn membership() -> Membership {
    Membership::new([NodeId(1), NodeId(2), NodeId(3)])
}

/// Entry `index` of `term`, its payload `e<index>t<term>`.
pub fn entry(index: u64, term: u64) -> Entry {
    let data = format!("e{index}t{term}");
    Entry { index: Index(index), term: Term(term), payload: EntryPayload::Normal(Bytes::from(data.into_bytes())) }
}

/// The entries `first..=last` of `term`.
pub fn run(first: u64, last: u64, term: u64) -> Vec<Entry> {
    (first..=last).map(|index| entry(index, term)).collect()
}
