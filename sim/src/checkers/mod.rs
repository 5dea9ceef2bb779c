//! Safety checkers. Each observes the cluster from outside the nodes (so its memory survives
//! crashes), is fed after every simulation step, and reports the first violation it sees.

mod append_only;
mod completeness;
mod election;
mod log_matching;
pub mod state_machine;

pub use append_only::LeaderAppendOnly;
pub use completeness::LeaderCompleteness;
pub use election::ElectionSafety;
pub use log_matching::LogMatching;
pub use state_machine::StateMachineSafety;

use std::fmt;

/// A broken safety (or liveness) property, with enough context to understand it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The property, e.g. "election safety".
    pub property: &'static str,
    /// What was seen: nodes, terms, indexes.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} violated: {}", self.property, self.detail)
    }
}

impl std::error::Error for Violation {}

/// The result of a check.
pub type Check = Result<(), Violation>;

pub(crate) fn violation(property: &'static str, detail: String) -> Check {
    Err(Violation { property, detail })
}

/// A 64-bit FNV-1a step: a fixed, portable hash for chains and digests (no per-process keys).
pub fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The FNV-1a offset basis: the hash of nothing.
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;
