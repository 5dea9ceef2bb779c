//! The longest span without a successful write, per shard, from the probe writers' outcomes.

use std::collections::BTreeMap;
use std::time::Duration;

/// One shard's record: when its last write succeeded and its longest span without one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// The longest span between two successful writes (or from the start to the first one).
    pub worst: Duration,
    /// When (since the start) that span ended.
    pub worst_ended: Duration,
    /// Writes that failed.
    pub failures: u64,
    /// The failed writes by the status of their last answer (0: no answer).
    pub failed_with: BTreeMap<u16, u64>,
    last_ok: Duration,
}

/// The spans of every shard, fed with each write's outcome and the time (since the start) at
/// which it completed. A span is measured from one success's completion to the next's, so a write
/// that succeeds slowly counts its whole wait as unavailability.
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    shards: BTreeMap<u32, Span>,
}

impl Tracker {
    /// A tracker whose shards `shards` were all writable at the start (time zero).
    pub fn new(shards: impl IntoIterator<Item = u32>) -> Tracker {
        Tracker { shards: shards.into_iter().map(|shard| (shard, Span::default())).collect() }
    }

    /// A write to `shard` completed at `at`, successfully or not.
    #[cfg(test)]
    pub fn record(&mut self, shard: u32, at: Duration, ok: bool) {
        self.record_status(shard, at, ok, None);
    }

    /// [`Tracker::record`], with the status of the write's last answer when it failed.
    pub fn record_status(&mut self, shard: u32, at: Duration, ok: bool, status: Option<u16>) {
        let span = self.shards.entry(shard).or_default();
        if !ok {
            span.failures += 1;
            *span.failed_with.entry(status.unwrap_or(0)).or_default() += 1;
            return;
        }
        span.note(at);
        span.last_ok = span.last_ok.max(at);
    }

    /// Closes every open span at `at` (the end of the measurement), so that a shard that never
    /// recovered counts its whole outage.
    pub fn finish(&mut self, at: Duration) {
        for span in self.shards.values_mut() {
            span.note(at);
        }
    }

    /// Each shard's record.
    pub fn spans(&self) -> &BTreeMap<u32, Span> {
        &self.shards
    }

    /// The shard with the longest span, and the span.
    pub fn worst(&self) -> Option<(u32, Span)> {
        self.shards
            .iter()
            .max_by_key(|(shard, span)| (span.worst, std::cmp::Reverse(**shard)))
            .map(|(s, v)| (*s, v.clone()))
    }
}

impl Span {
    fn note(&mut self, at: Duration) {
        let gap = at.saturating_sub(self.last_ok);
        if gap > self.worst {
            self.worst = gap;
            self.worst_ended = at;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    #[test]
    fn the_longest_gap_between_successes_is_kept_per_shard() {
        let mut tracker = Tracker::new([0, 1]);
        // Shard 0: successes every 20 ms, then failures from 60 to 900 ms, a success at 1000.
        for at in [20, 40, 60] {
            tracker.record(0, ms(at), true);
        }
        for at in [300, 600, 900] {
            tracker.record(0, ms(at), false);
        }
        tracker.record_status(0, ms(950), false, Some(503));
        tracker.record(0, ms(1000), true);
        tracker.record(0, ms(1020), true);
        // Shard 1: one slow success (its whole wait counts), then steady.
        tracker.record(1, ms(20), true);
        tracker.record(1, ms(520), true);
        tracker.record(1, ms(540), true);
        tracker.finish(ms(1030));
        let spans = tracker.spans();
        assert_eq!((spans[&0].worst, spans[&0].worst_ended, spans[&0].failures), (ms(940), ms(1000), 4));
        assert_eq!(spans[&0].failed_with, BTreeMap::from([(0, 3), (503, 1)]));
        assert_eq!((spans[&1].worst, spans[&1].worst_ended, spans[&1].failures), (ms(500), ms(520), 0));
        assert_eq!(tracker.worst(), Some((0, spans[&0].clone())));
    }

    #[test]
    fn a_shard_that_never_recovers_counts_until_the_end() {
        let mut tracker = Tracker::new([0, 1, 2]);
        tracker.record(0, ms(10), true);
        tracker.record(1, ms(10), true);
        tracker.record(2, ms(10), true);
        tracker.record(2, ms(50), false);
        tracker.record(0, ms(2000), true);
        tracker.record(1, ms(2000), true);
        tracker.finish(ms(3000));
        // Shard 2 last succeeded at 10 ms: 2990 ms without a write, more than shard 0's 1990.
        assert_eq!(tracker.worst().map(|(shard, span)| (shard, span.worst)), Some((2, ms(2990))));
        // A shard never written at all is down from the start.
        let mut silent = Tracker::new([5]);
        silent.finish(ms(700));
        assert_eq!(silent.worst().map(|(shard, span)| (shard, span.worst)), Some((5, ms(700))));
    }
}
