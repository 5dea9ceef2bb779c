//! The library side of `raft-kv`: the building blocks of the sharded service (issue 20, being
//! built; the plan is in `docs/sharding.md`). The `raft-kv` binary does not use them yet.
#![forbid(unsafe_code)]

pub mod kv;
pub mod removal;
pub mod shards;
