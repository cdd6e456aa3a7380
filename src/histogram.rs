//! Latency histograms: fixed buckets from 100 µs to 60 s, counted with
//! atomics (no lock on a request's path), read as [`Latencies`], a
//! snapshot that gives Prometheus's cumulative buckets and estimated
//! quantiles (p50, p99) the way Prometheus's `histogram_quantile` does.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Each bucket's upper bound, in seconds; a last bucket takes the rest.
pub const BOUNDS_SECONDS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

const BUCKETS: usize = BOUNDS_SECONDS.len() + 1;

/// Durations counted into [`BOUNDS_SECONDS`]'s buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = BOUNDS_SECONDS.partition_point(|&bound| bound < seconds);
        self.counts[bucket].fetch_add(1, Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    pub fn snapshot(&self) -> Latencies {
        Latencies {
            counts: self.counts.iter().map(|c| c.load(Relaxed)).collect(),
            sum_micros: self.sum_micros.load(Relaxed),
        }
    }
}

/// A histogram at one moment: what `zeroblk status` receives from a
/// daemon and what the metrics endpoint exposes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latencies {
    /// Observations per bucket (not cumulative), the last one unbounded;
    /// empty when nothing was observed.
    counts: Vec<u64>,
    sum_micros: u64,
}

impl Latencies {
    /// How many durations were observed.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_micros as f64 / 1e6
    }

    /// Each bucket's upper bound (the last `+Inf`) with the observations
    /// in it (not cumulative: Prometheus's encoder adds them up).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        let bounds = BOUNDS_SECONDS.iter().copied().chain([f64::INFINITY]);
        bounds
            .enumerate()
            .map(|(i, bound)| (bound, self.counts.get(i).copied().unwrap_or(0)))
            .collect()
    }

    /// The `q` quantile (0 to 1), interpolated within its bucket; `None`
    /// when nothing was observed. One in the unbounded bucket is reported
    /// as the largest bound.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * count as f64;
        let mut below = 0u64;
        let mut lower = 0.0;
        for (i, &upper) in BOUNDS_SECONDS.iter().enumerate() {
            let here = self.counts.get(i).copied().unwrap_or(0);
            if here > 0 && (below + here) as f64 >= rank {
                let within = (rank - below as f64) / here as f64;
                return Some(Duration::from_secs_f64(lower + (upper - lower) * within));
            }
            below += here;
            lower = upper;
        }
        Some(Duration::from_secs_f64(lower))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prometheus's view: observations at or under each bound.
    fn cumulative(latencies: &Latencies) -> Vec<(f64, u64)> {
        let mut total = 0;
        let buckets = latencies.buckets().into_iter();
        buckets
            .map(|(bound, n)| {
                total += n;
                (bound, total)
            })
            .collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_empty_histogram_has_no_quantiles_and_zero_buckets() {
        let latencies = Histogram::default().snapshot();
        assert_eq!(latencies.quantile(0.5), None);
        assert_eq!(latencies.count(), 0);
        let buckets = cumulative(&latencies);
        assert_eq!(buckets.len(), BUCKETS);
        assert!(buckets.iter().all(|&(_, n)| n == 0));
        assert_eq!(buckets.last().unwrap().0, f64::INFINITY);
    }

    #[test]
    fn durations_land_in_the_bucket_whose_bound_they_do_not_pass() {
        let histogram = Histogram::default();
        histogram.observe(ms(1)); // exactly a bound: that bucket
        histogram.observe(Duration::from_micros(1_001)); // the next one
        histogram.observe(Duration::from_secs(3600)); // past every bound
        let buckets = cumulative(&histogram.snapshot());
        let at = |bound: f64| buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!(at(0.0005), 0);
        assert_eq!(at(0.001), 1);
        assert_eq!(at(0.0025), 2);
        assert_eq!(at(60.0), 2);
        assert_eq!(at(f64::INFINITY), 3);
    }

    #[test]
    fn quantiles_follow_the_bulk_and_the_tail() {
        let histogram = Histogram::default();
        for _ in 0..98 {
            histogram.observe(ms(3)); // bucket (2.5 ms, 5 ms]
        }
        histogram.observe(ms(400)); // (250 ms, 500 ms]
        histogram.observe(ms(450));
        let latencies = histogram.snapshot();
        let p50 = latencies.quantile(0.5).unwrap();
        let p99 = latencies.quantile(0.99).unwrap();
        assert!(
            p50 > Duration::from_micros(2_500) && p50 <= ms(5),
            "{p50:?}"
        );
        assert!(p99 > ms(250) && p99 <= ms(500), "{p99:?}");
        assert_eq!(latencies.count(), 100);
        let mean = latencies.sum_seconds() / 100.0;
        assert!((mean - 0.01144).abs() < 1e-6, "{mean}");
    }

    #[test]
    fn the_unbounded_bucket_reports_the_largest_bound() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_secs(100));
        assert_eq!(
            histogram.snapshot().quantile(0.99),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn a_snapshot_from_a_daemon_with_fewer_buckets_still_reads() {
        let short = Latencies {
            counts: vec![1, 1],
            sum_micros: 150,
        };
        assert_eq!(short.count(), 2);
        assert_eq!(cumulative(&short).last().unwrap().1, 2);
        assert!(short.quantile(1.0).unwrap() <= Duration::from_micros(250));
    }
}
