//! What a volume counts of the requests it served, since it was opened:
//! counted where each request is handled, read by `volume info`, the
//! metrics and the uploader (which commits sooner once writes pause).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::histogram::{Histogram, Latencies};

use crate::cache::CacheCounters;
use crate::store::StoreCounters;

/// Request counters, each only ever raised.
#[derive(Default)]
pub(super) struct Stats {
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    zeroes: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    rewrites: AtomicU64,
    commits: AtomicU64,
    log_syncs: AtomicU64,
    commit_times: CommitTimes,
}

/// When commits happened and how long they took.
#[derive(Default)]
struct CommitTimes {
    took: Histogram,
    /// The last commit: when it ended, and how long it took.
    last: Mutex<Option<(SystemTime, Duration)>>,
    /// When each commit of the last minute ended, oldest first.
    last_minute: Mutex<VecDeque<Instant>>,
}

/// The commits' clock at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitClock {
    /// When the last commit ended, and how long it took.
    pub last: Option<(SystemTime, Duration)>,
    /// Commits that ended in the last minute.
    pub last_minute: u64,
    /// How long commits took.
    pub took: Latencies,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestCounts {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub zeroes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Writes that reused an older record's place in the log.
    pub rewrites: u64,
    pub commits: u64,
    /// fdatasyncs of the write-back log: concurrent flushes share one.
    pub log_syncs: u64,
}

/// Everything a volume counts, for `volume info` and benchmarks.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeCounters {
    /// The generation reads see (a writer's newest commit, or the root a
    /// read-only volume serves).
    pub generation: u64,
    pub committed_epoch: u64,
    pub durable_epoch: u64,
    pub dirty_bytes: u64,
    /// The requests served since the volume was opened.
    #[serde(flatten)]
    pub requests: RequestCounts,
    pub store: StoreCounters,
    pub cache: CacheCounters,
}

impl Stats {
    pub fn read(&self, len: u64) {
        self.reads.fetch_add(1, Relaxed);
        self.bytes_read.fetch_add(len, Relaxed);
    }

    /// A write request, counted as it arrives.
    pub fn write_arrived(&self) {
        self.writes.fetch_add(1, Relaxed);
    }

    /// `len` bytes of a write are in the log.
    pub fn written(&self, len: u64) {
        self.bytes_written.fetch_add(len, Relaxed);
    }

    /// A discard or a write of zeroes.
    pub fn zeroed(&self) {
        self.zeroes.fetch_add(1, Relaxed);
    }

    /// A write reused an older record's place in the log.
    pub fn rewrote(&self) {
        self.rewrites.fetch_add(1, Relaxed);
    }

    pub fn flushed(&self) {
        self.flushes.fetch_add(1, Relaxed);
    }

    /// A commit ended, having taken `took`.
    pub fn committed(&self, took: Duration) {
        self.commits.fetch_add(1, Relaxed);
        let times = &self.commit_times;
        times.took.observe(took);
        *times.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((SystemTime::now(), took));
        let mut last_minute = times.last_minute.lock().unwrap_or_else(|p| p.into_inner());
        last_minute.push_back(Instant::now());
        forget_older_than_a_minute(&mut last_minute);
    }

    pub fn commit_clock(&self) -> CommitClock {
        let times = &self.commit_times;
        let mut last_minute = times.last_minute.lock().unwrap_or_else(|p| p.into_inner());
        forget_older_than_a_minute(&mut last_minute);
        CommitClock {
            last: *times.last.lock().unwrap_or_else(|p| p.into_inner()),
            last_minute: last_minute.len() as u64,
            took: times.took.snapshot(),
        }
    }

    /// The log was synced, for any number of flushes.
    pub fn log_synced(&self) {
        self.log_syncs.fetch_add(1, Relaxed);
    }

    /// Writes, discards and zeroings so far.
    pub fn write_requests(&self) -> u64 {
        self.writes.load(Relaxed) + self.zeroes.load(Relaxed)
    }

    pub fn counts(&self) -> RequestCounts {
        RequestCounts {
            reads: self.reads.load(Relaxed),
            writes: self.writes.load(Relaxed),
            flushes: self.flushes.load(Relaxed),
            zeroes: self.zeroes.load(Relaxed),
            bytes_read: self.bytes_read.load(Relaxed),
            bytes_written: self.bytes_written.load(Relaxed),
            rewrites: self.rewrites.load(Relaxed),
            commits: self.commits.load(Relaxed),
            log_syncs: self.log_syncs.load(Relaxed),
        }
    }
}

fn forget_older_than_a_minute(times: &mut VecDeque<Instant>) {
    while times
        .front()
        .is_some_and(|t| t.elapsed() > Duration::from_secs(60))
    {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_raises_its_own_counters() {
        let stats = Stats::default();
        stats.read(4096);
        stats.write_arrived();
        stats.written(8192);
        stats.zeroed();
        stats.rewrote();
        stats.flushed();
        stats.committed(Duration::from_millis(30));
        stats.log_synced();
        let expected = RequestCounts {
            reads: 1,
            writes: 1,
            flushes: 1,
            zeroes: 1,
            bytes_read: 4096,
            bytes_written: 8192,
            rewrites: 1,
            commits: 1,
            log_syncs: 1,
        };
        assert_eq!(stats.counts(), expected);
        assert_eq!(stats.write_requests(), 2);
        let clock = stats.commit_clock();
        assert_eq!(clock.last_minute, 1);
        assert_eq!(clock.last.unwrap().1, Duration::from_millis(30));
        assert_eq!(clock.took.count(), 1);
    }
}
