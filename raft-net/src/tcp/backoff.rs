//! Exponential reconnect backoff with jitter from a seeded ChaCha generator.

use std::time::Duration;

use raft_core::NodeId;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// The delays between connection attempts to one peer: `backoff_base * 2^attempt`, capped at
/// `backoff_max`, then jittered down by up to half, so that peers that lost each other at the same
/// moment do not redial in lockstep.
#[derive(Debug)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    rng: ChaCha8Rng,
}

impl Backoff {
    /// A backoff for the link from `local_id` to `peer_id`; the jitter is seeded from both ids, so
    /// it is reproducible and differs between links.
    pub(crate) fn new(base: Duration, max: Duration, local_id: NodeId, peer_id: NodeId) -> Self {
        let seed = local_id.0.rotate_left(32) ^ peer_id.0 ^ 0x6a09_e667_f3bc_c908;
        Backoff { base, max, attempt: 0, rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// The delay before the next attempt; each call doubles the ceiling (up to the maximum).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = ceiling(self.base, self.max, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        jitter(ceiling, self.rng.next_u64())
    }

    /// Starts over from `base` (after a connection was established).
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// `base * 2^attempt`, at most `max`.
fn ceiling(base: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1_u32.checked_shl(attempt).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}

/// A delay in `[ceiling / 2, ceiling]` chosen by `random`.
fn jitter(ceiling: Duration, random: u64) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    let half = nanos / 2;
    let offset = random % (half + 1);
    Duration::from_nanos(nanos - half + offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_millis(1000);

    #[test]
    fn ceiling_doubles_up_to_the_maximum() {
        let ceilings: Vec<_> = (0..10).map(|attempt| ceiling(BASE, MAX, attempt).as_millis()).collect();
        assert_eq!(ceilings, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        assert_eq!(ceiling(BASE, MAX, u32::MAX), MAX);
    }

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for random in [0, 1, 7, u64::MAX / 3, u64::MAX] {
            let delay = jitter(MAX, random);
            assert!(delay >= MAX / 2 && delay <= MAX, "{delay:?}");
        }
        assert_eq!(jitter(Duration::ZERO, 12345), Duration::ZERO);
        assert!(jitter(Duration::MAX, u64::MAX) <= Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn delays_are_reproducible_per_link_and_reset() {
        let delays = |local, peer| {
            let mut backoff = Backoff::new(BASE, MAX, NodeId(local), NodeId(peer));
            (0..12).map(|_| backoff.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(delays(1, 2), delays(1, 2));
        assert_ne!(delays(1, 2), delays(2, 1));
        let mut backoff = Backoff::new(BASE, MAX, NodeId(1), NodeId(2));
        for _ in 0..20 {
            backoff.next_delay();
        }
        backoff.reset();
        assert!(backoff.next_delay() <= BASE);
    }
}
