//! Closed-loop clients: each keeps one request in flight, over its own kept-alive connections,
//! each request sent to its key's shard leader.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::body::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::http::{Connections, SharedCache, keyed};

/// What the clients do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `PUT /kv/KEY` of a value of this many bytes, keys drawn at random.
    Put(usize),
    /// `GET /kv/KEY?consistency=linearizable`, keys drawn at random.
    Get,
}

/// The key of number `index`.
pub fn key(index: u64) -> String {
    format!("k{index:010}")
}

/// A value of `bytes` bytes (printable, different per key so that nothing compresses it away).
pub fn value(index: u64, bytes: usize) -> Bytes {
    let pattern = format!("{index:016x}");
    Bytes::from(pattern.bytes().cycle().take(bytes).collect::<Vec<u8>>())
}

/// The switches the clients watch, and what they counted while measuring.
#[derive(Default)]
pub struct Window {
    /// Record latencies (the measuring window is open).
    pub measuring: AtomicBool,
    /// Stop after the operation in flight.
    pub stop: AtomicBool,
    /// Operations completed, measuring or not (for the progress lines).
    pub completed: AtomicU64,
}

/// One client's count of the measuring window.
#[derive(Default)]
pub struct Counted {
    /// The latencies of the operations that succeeded.
    pub latencies: Vec<Duration>,
    /// Operations that failed.
    pub errors: u64,
    /// Redirects followed.
    pub redirects: u64,
}

/// Runs one client until `window.stop`: `phase`'s operations on keys below `keys`.
pub async fn client(seed: u64, phase: Phase, keys: u64, cache: SharedCache, window: Arc<Window>) -> Counted {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut connections = Connections::default();
    let mut counted = Counted::default();
    while !window.stop.load(Ordering::Relaxed) {
        let index = rng.next_u64() % keys.max(1);
        let key = key(index);
        let (method, path, body) = match phase {
            Phase::Put(bytes) => ("PUT", format!("/kv/{key}"), value(index, bytes)),
            Phase::Get => ("GET", format!("/kv/{key}?consistency=linearizable"), Bytes::new()),
        };
        let started = Instant::now();
        let measuring = window.measuring.load(Ordering::Relaxed);
        let outcome = keyed(&mut connections, &cache, method, &key, &path, &body).await;
        window.completed.fetch_add(1, Ordering::Relaxed);
        // Counted only when the window was open at both ends.
        if measuring && window.measuring.load(Ordering::Relaxed) {
            counted.redirects += u64::from(outcome.redirects);
            if outcome.ok {
                counted.latencies.push(started.elapsed());
            } else {
                counted.errors += 1;
            }
        }
    }
    counted
}

/// Writes keys `range` once each with `clients` clients, values of `bytes` bytes; returns the
/// operations that failed. Prints a progress line every `every` operations.
pub async fn fill(range: std::ops::Range<u64>, bytes: usize, clients: u64, cache: SharedCache, every: u64) -> u64 {
    let next = Arc::new(AtomicU64::new(range.start));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, failed, cache, end) = (Arc::clone(&next), Arc::clone(&failed), Arc::clone(&cache), range.end);
        tasks.push(tokio::spawn(async move {
            let mut connections = Connections::default();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= end {
                    return;
                }
                if index > 0 && index % every == 0 {
                    println!("  loaded {index} values");
                }
                let key = key(index);
                let path = format!("/kv/{key}");
                let outcome = keyed(&mut connections, &cache, "PUT", &key, &path, &value(index, bytes)).await;
                if !outcome.ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await; // A client task that panicked has counted what it did.
    }
    failed.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_have_the_asked_size_and_differ_per_key() {
        assert_eq!(value(1, 64).len(), 64);
        assert_eq!(value(1, 65536).len(), 65536);
        assert_ne!(value(1, 64), value(2, 64));
        assert_eq!(key(42), "k0000000042");
    }
}
