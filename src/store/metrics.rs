//! Request and byte counters for one store: [`super::counting`] counts
//! each request and the bytes it moves into them, [`super::retrying`] each
//! retry. A `Store` and the stores made from it (`with_faults`,
//! `with_retry_policy`) share one set.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Retry warnings are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub(super) struct StoreMetrics {
    gets: AtomicU64,
    get_misses: AtomicU64,
    puts: AtomicU64,
    deletes: AtomicU64,
    lists: AtomicU64,
    retries: AtomicU64,
    /// When a retry was last logged as a warning.
    last_retry_warning: Mutex<Option<Instant>>,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

/// A snapshot of a store's counters since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoreCounters {
    pub gets: u64,
    /// GETs answered "not found" (counted in `gets` too).
    pub get_misses: u64,
    pub puts: u64,
    pub deletes: u64,
    pub lists: u64,
    /// Requests tried again after a failure that may pass.
    pub retries: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

impl StoreMetrics {
    /// One GET (or HEAD) request, whatever its answer.
    pub(super) fn get(&self) {
        self.gets.fetch_add(1, Relaxed);
    }

    /// A GET answered "not found" (counted with [`StoreMetrics::get`] too).
    pub(super) fn miss(&self) {
        self.get_misses.fetch_add(1, Relaxed);
    }

    /// The bytes of a body read to its end.
    pub(super) fn read(&self, bytes: u64) {
        self.bytes_read.fetch_add(bytes, Relaxed);
    }

    pub(super) fn put(&self, bytes: usize) {
        self.puts.fetch_add(1, Relaxed);
        self.bytes_written.fetch_add(bytes as u64, Relaxed);
    }

    pub(super) fn delete(&self) {
        self.deletes.fetch_add(1, Relaxed);
    }

    pub(super) fn list(&self) {
        self.lists.fetch_add(1, Relaxed);
    }

    /// Counts a retry; says whether it is the first in [`WARN_EVERY`], to
    /// be logged as a warning (retries are rare: a lock is cheap here).
    pub(super) fn retry_should_warn(&self) -> bool {
        self.retries.fetch_add(1, Relaxed);
        let mut last = self
            .last_retry_warning
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|at| at.elapsed() >= WARN_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    pub(super) fn snapshot(&self) -> StoreCounters {
        StoreCounters {
            gets: self.gets.load(Relaxed),
            get_misses: self.get_misses.load(Relaxed),
            puts: self.puts.load(Relaxed),
            deletes: self.deletes.load(Relaxed),
            lists: self.lists.load(Relaxed),
            retries: self.retries.load(Relaxed),
            bytes_read: self.bytes_read.load(Relaxed),
            bytes_written: self.bytes_written.load(Relaxed),
        }
    }
}
