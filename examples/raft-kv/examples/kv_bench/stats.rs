//! Percentiles of one window's latencies and medians across passes.

use std::time::Duration;

/// The `p`-th percentile (0 < p <= 100) of `sorted` (ascending), by nearest rank: the smallest
/// value with at least `p` percent of the values at or below it. `None` when there are none.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let count = sorted.len() as f64;
    // The 1-based rank ceil(p/100 * n), within 1..=n.
    let rank = ((p / 100.0 * count).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied()
}

/// The median of `values` (the mean of the middle two when their count is even); `None` when
/// there are none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|value| !value.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        count if count % 2 == 1 => sorted.get(middle).copied(),
        _ => Some((sorted[middle - 1] + sorted[middle]) / 2.0),
    }
}

/// One window's numbers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Operations answered per second.
    pub ops_per_second: f64,
    /// The median latency, in milliseconds.
    pub p50_ms: f64,
    /// The 99th percentile latency, in milliseconds.
    pub p99_ms: f64,
    /// Operations that failed (no answer, or an error answer after every retry).
    pub errors: u64,
    /// Redirects (307) followed.
    pub redirects: u64,
    /// The one-minute load average at the end of the window.
    pub load: f64,
}

impl Summary {
    /// The summary of a window of `elapsed` in which `latencies` were measured.
    pub fn of(mut latencies: Vec<Duration>, elapsed: Duration, errors: u64, redirects: u64, load: f64) -> Summary {
        latencies.sort_unstable();
        let ms = |p| percentile(&latencies, p).map_or(f64::NAN, |latency| latency.as_secs_f64() * 1000.0);
        let seconds = elapsed.as_secs_f64();
        let ops_per_second = if seconds > 0.0 { latencies.len() as f64 / seconds } else { 0.0 };
        Summary { ops_per_second, p50_ms: ms(50.0), p99_ms: ms(99.0), errors, redirects, load }
    }

    /// The median of each number over `runs` (each number on its own).
    pub fn median_of(runs: &[Summary]) -> Summary {
        let of = |field: fn(&Summary) -> f64| median(&runs.iter().map(field).collect::<Vec<_>>()).unwrap_or(f64::NAN);
        Summary {
            ops_per_second: of(|run| run.ops_per_second),
            p50_ms: of(|run| run.p50_ms),
            p99_ms: of(|run| run.p99_ms),
            errors: of(|run| run.errors as f64) as u64,
            redirects: of(|run| run.redirects as f64) as u64,
            load: of(|run| run.load),
        }
    }
}

/// The one-minute load average (`NaN` where /proc/loadavg cannot be read).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().and_then(|first| first.parse().ok()))
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&value| Duration::from_millis(value)).collect()
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let hundred = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&hundred, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&hundred, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&hundred, 100.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&hundred, 0.5), Some(Duration::from_millis(1)));
        // 1000 values, one slow one in the top 1 %: p99 is not it, p99.9+ is.
        let mut skewed = ms(&[10; 999]);
        skewed.push(Duration::from_secs(5));
        assert_eq!(percentile(&skewed, 99.0), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&skewed, 99.95), Some(Duration::from_secs(5)));
        // Ten values: p99 is the largest.
        let ten = ms(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(percentile(&ten, 99.0), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&ten, 50.0), Some(Duration::from_millis(5)));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&ten, 0.0), None);
        assert_eq!(percentile(&ten, 101.0), None);
    }

    #[test]
    fn medians_take_the_middle_or_the_mean_of_the_middle_two() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn a_summary_counts_rates_and_medians_each_number() {
        let summary = Summary::of(ms(&[30, 10, 20, 40]), Duration::from_secs(2), 1, 3, 0.5);
        assert_eq!(summary.ops_per_second, 2.0);
        assert_eq!(summary.p50_ms, 20.0);
        assert_eq!(summary.p99_ms, 40.0);
        let runs = [
            Summary { ops_per_second: 100.0, p50_ms: 1.0, p99_ms: 9.0, errors: 0, redirects: 5, load: 1.0 },
            Summary { ops_per_second: 300.0, p50_ms: 3.0, p99_ms: 7.0, errors: 2, redirects: 1, load: 3.0 },
            Summary { ops_per_second: 200.0, p50_ms: 2.0, p99_ms: 8.0, errors: 1, redirects: 3, load: 2.0 },
        ];
        let median = Summary::median_of(&runs);
        assert_eq!(
            median,
            Summary { ops_per_second: 200.0, p50_ms: 2.0, p99_ms: 8.0, errors: 1, redirects: 3, load: 2.0 }
        );
    }
}
