//! The backlog: what waits for a commit, and the limits that hold writes
//! back when too much does.
//!
//! Two amounts are counted: dirty bytes (data waiting for upload, each
//! block once per epoch) and log bytes (records of epochs not yet
//! committed, every overwrite included). A write is admitted while dirty
//! bytes are under `--max-dirty` and its record fits under the log's
//! limit ([`EngineOptions::log_limit_bytes`]), counting the records
//! admitted but not yet placed, so that writes arriving at once cannot
//! all pass the limit. A commit frees what it committed and wakes the
//! writers waiting.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use super::options::EngineOptions;

/// What waits for a commit, against its limits.
pub(super) struct Backlog {
    max_dirty: u64,
    log_limit: u64,
    /// Log bytes that start a commit at once.
    log_commit: u64,
    /// Dirty bytes that start a commit at once.
    upload_threshold: u64,
    dirty: AtomicU64,
    logged: AtomicU64,
    /// Log bytes of records admitted but not yet placed in an epoch.
    admitted: AtomicU64,
    room: Notify,
}

impl Backlog {
    /// A backlog holding what a replay left: `dirty` and `logged` bytes.
    pub fn new(options: &EngineOptions, chunk_size: u64, dirty: u64, logged: u64) -> Backlog {
        Backlog {
            max_dirty: options.max_dirty_bytes,
            log_limit: options.log_limit_bytes(),
            log_commit: options.log_commit_bytes(),
            upload_threshold: upload_threshold(options.max_dirty_bytes, chunk_size),
            dirty: AtomicU64::new(dirty),
            logged: AtomicU64::new(logged),
            admitted: AtomicU64::new(0),
            room: Notify::new(),
        }
    }

    /// Completes when room may have been freed. Enable it before checking
    /// [`Backlog::try_admit`], so that no wake-up in between is missed.
    pub fn room_freed(&self) -> Notified<'_> {
        self.room.notified()
    }

    /// Admits a record of `len` bytes if dirty bytes are under the limit
    /// and the record fits under the log's limit with what the log holds
    /// and what was admitted and is on its way. A record larger than the
    /// limit goes in alone, into an empty log.
    pub fn try_admit(&self, len: u64) -> Option<Admission<'_>> {
        if self.dirty.load(Ordering::Acquire) >= self.max_dirty {
            return None;
        }
        let logged = self.logged.load(Ordering::Acquire);
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |admitted| {
                let held = logged.saturating_add(admitted);
                (held == 0 || held.saturating_add(len) <= self.log_limit).then_some(admitted + len)
            })
            .ok()?;
        Some(Admission {
            backlog: self,
            len,
            landed: false,
        })
    }

    /// `len` bytes of log space were reserved in the open epoch.
    pub fn logged(&self, len: u64) {
        self.logged.fetch_add(len, Ordering::AcqRel);
    }

    /// A write made `bytes` more data wait for upload.
    pub fn dirtied(&self, bytes: u64) {
        self.dirty.fetch_add(bytes, Ordering::AcqRel);
    }

    /// A commit took `dirty` data bytes and `logged` log bytes off the
    /// backlog: writers waiting for room look again.
    pub fn committed(&self, dirty: u64, logged: u64) {
        self.dirty.fetch_sub(dirty, Ordering::AcqRel);
        self.logged.fetch_sub(logged, Ordering::AcqRel);
        self.room.notify_waiters();
    }

    /// Wakes every writer waiting for room (the volume stopped).
    pub fn wake_all(&self) {
        self.room.notify_waiters();
    }

    /// Whether enough waits that the uploader should start now.
    pub fn upload_pressure(&self) -> bool {
        self.dirty.load(Ordering::Acquire) >= self.upload_threshold
            || self.logged.load(Ordering::Acquire) >= self.log_commit
    }

    pub fn dirty_bytes(&self) -> u64 {
        self.dirty.load(Ordering::Acquire)
    }

    pub fn log_bytes(&self) -> u64 {
        self.logged.load(Ordering::Acquire)
    }
}

/// Dirty bytes past which the uploader starts without waiting for its
/// interval: half of `--max-dirty`. Each commit re-encodes every chunk it
/// touches, so under random overwrites fewer, larger commits upload (and
/// compress) less, while the other half keeps writes flowing during the
/// commit.
fn upload_threshold(max_dirty: u64, chunk_size: u64) -> u64 {
    (max_dirty / 2).max(chunk_size * 4)
}

/// A record let into the log, counted as admitted until it has its place
/// in an epoch.
pub(super) struct Admission<'a> {
    backlog: &'a Backlog,
    len: u64,
    landed: bool,
}

impl Admission<'_> {
    /// The record is in the log, counted in the log bytes (or took the
    /// place of an older one).
    pub fn landed(mut self) {
        self.landed = true;
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.backlog.admitted.fetch_sub(self.len, Ordering::AcqRel);
        if !self.landed {
            // It never got there: its room is someone else's.
            self.backlog.room.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backlog(max_dirty: u64) -> Backlog {
        let mut options = EngineOptions::new("/nonexistent");
        options.max_dirty_bytes = max_dirty;
        Backlog::new(&options, 1, 0, 0)
    }

    #[test]
    fn records_admitted_at_once_cannot_pass_the_log_limit_together() {
        let backlog = backlog(100); // a log limit of 400
        let first = backlog.try_admit(300).expect("fits");
        assert!(backlog.try_admit(200).is_none(), "300 admitted + 200 > 400");
        first.landed();
        backlog.logged(300);
        assert!(backlog.try_admit(200).is_none(), "300 logged + 200 > 400");
        backlog.committed(0, 300);
        assert!(backlog.try_admit(400).is_some());
    }

    #[test]
    fn a_record_larger_than_the_limit_goes_into_an_empty_log_alone() {
        let backlog = backlog(100);
        let huge = backlog.try_admit(1000).expect("an empty log takes it");
        assert!(backlog.try_admit(1).is_none());
        drop(huge); // never landed: its room is free again
        assert!(backlog.try_admit(1).is_some());
    }

    #[test]
    fn dirty_bytes_past_max_dirty_hold_writes_and_start_uploads() {
        let backlog = backlog(100);
        assert!(!backlog.upload_pressure());
        backlog.dirtied(50);
        assert!(backlog.upload_pressure(), "half of --max-dirty");
        assert!(backlog.try_admit(1).is_some());
        backlog.dirtied(50);
        assert!(backlog.try_admit(1).is_none(), "--max-dirty reached");
        backlog.committed(100, 0);
        assert!(backlog.try_admit(1).is_some());
        assert_eq!(backlog.dirty_bytes(), 0);
    }
}
