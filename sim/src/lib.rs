//! # sim
//!
//! A deterministic simulator for `raft-core`: a cluster of 1 to 7 nodes over simulated disks
//! (only synced writes survive a crash), a message bag with loss, duplication, delay and
//! reordering, symmetric, one-way and partial partitions, crashes and restarts, per-node clock
//! drift and pauses, and clients proposing commands with timeouts. Each seed derives its own
//! cluster size and fault rates (swarm testing). Five checkers observe from outside the nodes
//! after every step: election safety, leader append-only, log matching, leader completeness and
//! state machine safety; a liveness phase then heals everything and requires convergence.
//! [`linearizability`] checks client histories of a key-value model, Porcupine-style.
//!
//! ```
//! let report = sim::run(42, sim::RunOptions::default());
//! assert!(report.violation.is_none(), "{:?}", report.violation);
//! // The same seed replays the same run, event for event.
//! assert_eq!(report.trace_hash, sim::run(42, sim::RunOptions::default()).trace_hash);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod checkers;
pub mod config;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod kv;
pub mod linearizability;
pub mod real;
mod world;

pub use checkers::Violation;
pub use config::SimConfig;
pub use world::{OptionsHook, Report, RunOptions, Stats, TimePolicy, run, run_config, run_schedule};
