//! Request and byte counters for one store: [`super::counting`] counts
//! each request and the bytes it moves into them, [`super::retrying`] each
//! retry. A `Store` and the stores made from it (`with_faults`,
//! `with_retry_policy`) share one set.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::histogram::{Histogram, Latencies};

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
    /// Per kind of request: failures and how long answers took.
    kinds: [KindMetrics; RequestKind::ALL.len()],
}

/// The kinds of request a store makes, as status and metrics name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    Get,
    Put,
    Delete,
    List,
}

impl RequestKind {
    pub const ALL: [RequestKind; 4] = [
        RequestKind::Get,
        RequestKind::Put,
        RequestKind::Delete,
        RequestKind::List,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Get => "get",
            RequestKind::Put => "put",
            RequestKind::Delete => "delete",
            RequestKind::List => "list",
        }
    }
}

#[derive(Debug, Default)]
struct KindMetrics {
    errors: AtomicU64,
    latency: Histogram,
}

/// One kind of request's figures since the store was opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindCounters {
    pub kind: RequestKind,
    pub requests: u64,
    /// Attempts that failed (an answer such as "not found" or "already
    /// exists" is not a failure).
    pub errors: u64,
    /// How long the answers took (to the first byte of a GET's body).
    pub latency: Latencies,
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

    /// A request of `kind` that started at `started` was answered: `ok`
    /// unless it failed.
    pub(super) fn answered(&self, kind: RequestKind, started: Instant, ok: bool) {
        let metrics = &self.kinds[kind as usize];
        metrics.latency.observe(started.elapsed());
        if !ok {
            metrics.errors.fetch_add(1, Relaxed);
        }
    }

    /// A request of `kind` failed, its time not measured (one item of a
    /// listing or of a batch of deletes).
    pub(super) fn failed(&self, kind: RequestKind) {
        self.kinds[kind as usize].errors.fetch_add(1, Relaxed);
    }

    /// Each kind's figures.
    pub(super) fn kinds(&self) -> Vec<KindCounters> {
        let counts = self.snapshot();
        RequestKind::ALL
            .iter()
            .map(|&kind| {
                let metrics = &self.kinds[kind as usize];
                KindCounters {
                    kind,
                    requests: match kind {
                        RequestKind::Get => counts.gets,
                        RequestKind::Put => counts.puts,
                        RequestKind::Delete => counts.deletes,
                        RequestKind::List => counts.lists,
                    },
                    errors: metrics.errors.load(Relaxed),
                    latency: metrics.latency.snapshot(),
                }
            })
            .collect()
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
