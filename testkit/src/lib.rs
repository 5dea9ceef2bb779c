//! One harness for clusters of raft-net nodes, shared by the integration tests (`tests/`), the
//! benchmark (`bench/`) and the turmoil simulation of the real stack (`sim::real`).
//!
//! Two levels:
//!
//! - **One node** ([`node`]): [`start_node`] wires a node to its peers through a [`Wiring`] (the
//!   in-memory [`MemNetwork`](raft_net::MemNetwork), or [`Tcp`] over any listener and connector:
//!   tokio's on 127.0.0.1, or a simulated network's) and runs raft-net's driver over a store and a
//!   state machine. [`Member`] is such a node with what a test keeps of it: its id, its handle,
//!   the [`Machine::View`] of its state machine, and its transport's tasks.
//! - **A cluster** ([`cluster`]): [`ClusterBuilder`] starts voters `1..=n` over the in-memory
//!   network or TCP on 127.0.0.1, with in-memory stores, write-ahead logs in temporary
//!   directories, or stores the caller makes, and one state machine per node from a factory;
//!   [`Cluster`] stops, restarts and adds nodes, and shuts everything down.
//!
//! Around them: waits that poll a condition for up to [`PATIENCE`] ([`eventually`],
//! [`settled_leader`]; [`settled`] returns an error instead of panicking), a client that follows
//! the leader's hint ([`propose`], and the retry policy [`redirect`] on its own), and [`kv`], a
//! key-value state machine with snapshots whose state a test can read; and [`logs`]:
//! [`init_tracing`] for a test binary's logs, and a layer that captures events for tests that
//! assert on them.
//!
//! Three voters over the in-memory network, a write, and every node applying it:
//!
//! ```
//! use raft_testkit::{ClusterBuilder, Kv, all_applied, propose, set, settled_leader};
//!
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! runtime.block_on(async {
//!     let mut cluster = ClusterBuilder::new(3).start(|_| Kv::default()).await?;
//!     settled_leader(&cluster.running()).await;
//!     let index = propose(&cluster.handles(), &cluster.ids(), 0, set("key", "value")).await;
//!     all_applied(&cluster.running(), index).await;
//!     cluster.shutdown().await;
//!     Ok::<(), raft_testkit::HarnessError>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! What stays outside, and why: `raft-core/tests/common` drives bare `raft_core::Raft`s without
//! raft-net (another layer); `examples/raft-kv` is the product users read, with its own state
//! machine and launcher; the simulator's state machine reports every apply to its checkers and
//! keeps its snapshot format, which its seeds depend on.
#![forbid(unsafe_code)]

#[cfg(feature = "tls")]
pub mod certs;
pub mod client;
pub mod cluster;
pub mod kv;
pub mod logs;
pub mod node;
pub mod store;
pub mod wait;

use std::time::Duration;

use raft_core::{Membership, NodeId, Options};
use raft_net::{NodeConfig, TcpOptions};

pub use client::{Redirect, change_membership, propose, redirect};
pub use cluster::{Cluster, ClusterBuilder, NetworkKind, StorageKind, bind, create_disk, listeners, open_disk};
pub use kv::{Kv, KvData, KvView, TruncatedSnapshot, all_applied, propose_many, set};
pub use logs::{CaptureLayer, Captured, CapturedEvent, capture_global, capture_local, init_tracing};
#[cfg(feature = "tls")]
pub use node::TlsTcp;
pub use node::{HarnessError, Machine, Member, Started, Tcp, TransportTasks, Wired, Wiring, start_node};
pub use wait::{PATIENCE, POLL, Settled, Unsettled, eventually, settled, settled_leader};

/// What [`delegate_storage!`] names; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use raft_core;
}

/// The tick of a harness node unless the caller chooses another.
pub const TICK: Duration = Duration::from_millis(20);

/// The cluster id of a harness cluster unless the caller chooses another.
pub const CLUSTER: u64 = 7;

/// The core options of a harness node unless the caller chooses others: quick elections (10
/// ticks of [`TICK`], heartbeats every 2). No seed: each start draws a fresh one from the
/// operating system, as in production.
pub fn options() -> Options {
    Options::builder().election_ticks(10).heartbeat_ticks(2).build().expect("10 and 2 ticks are valid options")
}

/// A node configuration with [`options`] and [`TICK`], and no address book.
pub fn config(id: NodeId) -> NodeConfig {
    let mut config = NodeConfig::new(id, options());
    config.tick_interval = TICK;
    config
}

/// The TCP transport's options of a harness node unless the caller chooses others: quick
/// reconnects (10 to 200 ms; no test depends on them).
pub fn tcp_options() -> TcpOptions {
    TcpOptions {
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        ..TcpOptions::default()
    }
}

/// Snapshots every 100 entries, keeping only 10 entries below each and sending 1 KiB chunks, so
/// that a node that was down catches up by snapshot (with [`options`]' quick elections).
pub fn snapshotting(config: &mut NodeConfig) {
    config.options = Options::builder()
        .election_ticks(10)
        .heartbeat_ticks(2)
        .compaction_margin_entries(10)
        .snapshot_chunk_bytes_max(1024)
        .build()
        .expect("valid options");
    config.snapshot_every_entries = 100;
}

/// The membership of voters `ids`.
pub fn membership(ids: &[u64]) -> Membership {
    Membership::new(ids.iter().map(|id| NodeId(*id)))
}
