//! Where the simulator's choices come from: a seeded ChaCha generator for normal runs, or the
//! fuzzer's bytes, so that a fuzzer chooses the schedule (deliveries, drops, duplicates, delays,
//! crashes, pauses, partitions, snapshots, client operations) directly instead of through a seed.
//!
//! Each choice is one call here. The seeded source answers exactly as the simulator always has
//! (same draws in the same order), so seeds and trace hashes are unchanged. The byte source reads
//! as few bytes as a choice needs and answers "no fault, shortest delay, first option" once the
//! bytes run out, so every input ends in a calm run that heals.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// The source of every random choice of one run.
pub(crate) enum Entropy {
    /// Normal runs: a ChaCha stream from the run's seed.
    Seeded(Box<ChaCha8Rng>),
    /// Fuzzing: the fuzzer's bytes, then zeros.
    Bytes { bytes: Vec<u8>, at: usize },
}

impl Entropy {
    /// The seeded source of normal runs.
    pub(crate) fn seeded(seed: u64) -> Self {
        Entropy::Seeded(Box::new(ChaCha8Rng::seed_from_u64(seed)))
    }

    /// A source that reads `bytes` in order, then zeros.
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Self {
        Entropy::Bytes { bytes, at: 0 }
    }

    /// Reads `count` (at most 8) bytes little-endian; zeros past the end.
    fn take(bytes: &[u8], at: &mut usize, count: usize) -> u64 {
        let mut value = 0u64;
        for shift in 0..count {
            let byte = bytes.get(*at).copied().unwrap_or(0);
            *at = at.saturating_add(1);
            value |= u64::from(byte) << (8 * shift);
        }
        value
    }

    /// Uniform in `[0, bound)` (0 for a bound of 0, which draws nothing).
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        match self {
            Entropy::Seeded(rng) => rng.next_u64() % bound,
            Entropy::Bytes { bytes, at } => {
                // As many bytes as `bound - 1` needs, so small choices cost one byte.
                let count = (64 - (bound - 1).leading_zeros()).div_ceil(8) as usize;
                Self::take(bytes, at, count) % bound
            }
        }
    }

    /// True with probability `probability` (never for 0, which draws nothing). From bytes: one
    /// byte, true for the top `probability` of its range, so a zero byte is "no".
    pub(crate) fn chance(&mut self, probability: f64) -> bool {
        if probability <= 0.0 {
            return false;
        }
        match self {
            Entropy::Seeded(rng) => (rng.next_u64() as f64 / u64::MAX as f64) < probability,
            Entropy::Bytes { bytes, at } => Self::take(bytes, at, 1) as f64 >= 256.0 * (1.0 - probability),
        }
    }

    /// A fair coin.
    pub(crate) fn coin(&mut self) -> bool {
        match self {
            Entropy::Seeded(rng) => rng.next_u64() & 1 == 1,
            Entropy::Bytes { bytes, at } => Self::take(bytes, at, 1) & 1 == 1,
        }
    }

    /// Uniform in `[0, 1]`.
    pub(crate) fn unit(&mut self) -> f64 {
        match self {
            Entropy::Seeded(rng) => rng.next_u64() as f64 / u64::MAX as f64,
            Entropy::Bytes { bytes, at } => Self::take(bytes, at, 1) as f64 / 255.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_answer_calmly_once_exhausted() {
        let mut entropy = Entropy::from_bytes(vec![255, 0x34, 0x12]);
        assert!(entropy.chance(0.01));
        assert_eq!(entropy.below(1000), 0x1234 % 1000);
        assert!(!entropy.chance(0.99));
        assert_eq!(entropy.below(7), 0);
        assert!(!entropy.coin());
    }

    #[test]
    fn seeded_draws_match_the_generator() {
        let mut entropy = Entropy::seeded(5);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        assert_eq!(entropy.below(10), rng.next_u64() % 10);
        assert_eq!(entropy.coin(), rng.next_u64() & 1 == 1);
        assert_eq!(entropy.chance(0.5), (rng.next_u64() as f64 / u64::MAX as f64) < 0.5);
    }
}
