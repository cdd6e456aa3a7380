//! How far a volume has got, and whether it still runs: the newest epoch
//! that is durable (in the synced log), the newest that is committed (in
//! the store), the newest someone waits to see committed, and the error
//! the volume stopped with, if it did.
//!
//! It promises:
//! - the durable and committed epochs only grow;
//! - once the volume has stopped, nothing more is published durable:
//!   [`Progress::publish_durable`] and [`Progress::stop`] are serialized
//!   by the durable watch's lock, so a sync that ends after a crash
//!   acknowledges nothing (what it synced may be what a power cut left);
//! - every commit waiter wakes when the volume stops, and sees why.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::futures::Notified;
use tokio::sync::{Notify, watch};

use super::error::{EngineError, Result};

pub(super) struct Progress {
    /// The newest epoch whose records are on stable storage.
    durable: watch::Sender<u64>,
    /// The newest epoch whose writes are committed to the store.
    committed: watch::Sender<u64>,
    /// The newest epoch someone waits to see committed.
    commit_wanted: AtomicU64,
    /// Wakes the uploader.
    kick: Notify,
    failure: OnceLock<Arc<EngineError>>,
    /// The volume is closing: its stop is no error to log.
    closing: AtomicBool,
}

impl Progress {
    /// Progress of a volume opened with epochs up to `durable` in the log
    /// and up to `committed` in the store.
    pub fn new(durable: u64, committed: u64) -> Progress {
        Progress {
            durable: watch::Sender::new(durable),
            committed: watch::Sender::new(committed),
            commit_wanted: AtomicU64::new(0),
            kick: Notify::new(),
            failure: OnceLock::new(),
            closing: AtomicBool::new(false),
        }
    }

    pub fn durable_epoch(&self) -> u64 {
        *self.durable.borrow()
    }

    pub fn committed_epoch(&self) -> u64 {
        *self.committed.borrow()
    }

    /// Makes epochs up to `epoch` count as durable, unless the volume has
    /// stopped. Returns whether it still runs.
    pub fn publish_durable(&self, epoch: u64) -> bool {
        let mut running = true;
        self.durable.send_if_modified(|durable| {
            running = self.failure.get().is_none();
            let newer = running && epoch > *durable;
            if newer {
                *durable = epoch;
            }
            newer
        });
        running
    }

    /// Says a commit happened, and that epochs up to `epoch` count as
    /// committed. Waiters wake even when the epoch did not move (a commit
    /// of a resize alone), since a commit may be what they wait for.
    pub fn publish_committed(&self, epoch: u64) {
        self.committed.send_modify(|committed| {
            *committed = (*committed).max(epoch);
        });
    }

    /// Asks the uploader to commit up to epoch `target` now, and waits.
    pub async fn wait_committed(&self, target: u64) -> Result<()> {
        self.commit_wanted.fetch_max(target, Ordering::AcqRel);
        self.kick.notify_one();
        self.wait_for(&self.committed, target).await
    }

    /// A receiver that sees every commit from now on (`changed`), to wait
    /// for one that reaches some state.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// Whether someone waits for a commit that has not happened yet.
    pub fn commit_wanted(&self) -> bool {
        self.commit_wanted.load(Ordering::Acquire) > self.committed_epoch()
    }

    /// Wakes the uploader, to look at once whether a commit is due.
    pub fn kick_uploader(&self) {
        self.kick.notify_one();
    }

    /// Completes when the uploader is kicked.
    pub fn uploader_kicked(&self) -> Notified<'_> {
        self.kick.notified()
    }

    /// Says the volume is closing: its stop that follows is no error.
    pub fn closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Stops the volume for good with `error` (the first error given wins),
    /// waking every waiter here. Returns whether this call stopped it, and
    /// not as part of a close.
    pub fn stop(&self, error: EngineError) -> bool {
        let first = self.failure.set(Arc::new(error)).is_ok();
        self.durable.send_modify(|_| {});
        self.committed.send_modify(|_| {});
        self.kick.notify_one();
        first && !self.closing.load(Ordering::Acquire)
    }

    /// The error the volume stopped with, if it did.
    pub fn failure(&self) -> Option<&Arc<EngineError>> {
        self.failure.get()
    }

    /// `Err` (the error the volume stopped with) once it has stopped.
    pub fn check_running(&self) -> Result<()> {
        match self.failure.get() {
            Some(error) => Err(EngineError::Stopped(Arc::clone(error))),
            None => Ok(()),
        }
    }

    /// Waits until `watch` reaches `target`, or the volume stops.
    async fn wait_for(&self, watch: &watch::Sender<u64>, target: u64) -> Result<()> {
        let mut rx = watch.subscribe();
        loop {
            if *rx.borrow_and_update() >= target {
                return Ok(());
            }
            self.check_running()?;
            if rx.changed().await.is_err() {
                return self.check_running();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_is_durable_after_a_stop_and_every_waiter_sees_it() {
        let progress = Arc::new(Progress::new(0, 0));
        assert!(progress.publish_durable(1));
        let committing = tokio::spawn({
            let progress = Arc::clone(&progress);
            async move { progress.wait_committed(5).await }
        });
        tokio::task::yield_now().await;
        assert!(progress.stop(EngineError::Closed("v".into())));
        assert!(!progress.stop(EngineError::Closed("v".into())), "once");
        assert!(committing.await.unwrap().is_err());
        assert!(!progress.publish_durable(2), "a sync that ended late");
        assert_eq!(progress.durable_epoch(), 1);
    }

    #[test]
    fn epochs_only_grow_and_a_wanted_commit_is_seen() {
        let progress = Progress::new(3, 2);
        assert!(progress.publish_durable(2));
        assert_eq!(progress.durable_epoch(), 3);
        progress.publish_committed(1);
        assert_eq!(progress.committed_epoch(), 2);
        assert!(!progress.commit_wanted());
        progress.commit_wanted.fetch_max(3, Ordering::AcqRel);
        assert!(progress.commit_wanted());
        progress.publish_committed(3);
        assert!(!progress.commit_wanted());
    }

    #[test]
    fn a_stop_while_closing_is_no_error_to_report() {
        let progress = Progress::new(0, 0);
        progress.closing();
        assert!(!progress.stop(EngineError::Closed("v".into())));
        assert!(progress.check_running().is_err());
    }
}
