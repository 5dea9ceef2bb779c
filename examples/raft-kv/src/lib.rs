//! The library side of `raft-kv`: the development certificates of `raft-kv certs` and the TLS
//! setup of the HTTP API (used by the binary, and by the tests to set up clusters and clients),
//! and the building blocks of the sharded service (issue 20; the plan is in `docs/sharding.md`;
//! `raft-kv serve --shards` runs them behind the HTTP API).
#![forbid(unsafe_code)]

pub mod certs;
pub mod kv;
pub mod removal;
pub mod shards;
pub mod tls;
