//! Who syncs the log, and on which thread.
//!
//! There is no sync task. Whoever needs sealed epochs durable (a flush, or
//! a commit about to upload them) takes the [`Syncer`]'s lead and syncs
//! every epoch sealed so far; those queued behind it for the lead mostly
//! find their epochs durable once they get it. Concurrent flushes so share
//! one fdatasync, and a lone flush costs no wake-up of another thread:
//! on these machines each wake-up cost more than the fdatasync itself.
//!
//! Where a sync runs ([`Syncer::sync`]): right on the caller's thread
//! when it has at most [`DIRECT_SYNC_BYTES`] to write out and the disk's
//! last sync took under [`DIRECT_SYNC_LIMIT`], as a thread-per-connection
//! server would; otherwise off the runtime's async workers
//! (`blocking::here`), so that a large sync, or a disk that has turned
//! slow, stalls no other task. A disk that turns slow all at once can
//! hold an async worker for one sync; the next runs off the workers, and
//! the syncs after it come back once the disk answers fast again.
//!
//! It promises: one sync at a time per volume, in the order the lead is
//! taken; a sync always runs to its end once started (a caller that goes
//! away does not cut it short).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, MutexGuard};

/// A sync that took less than this runs the next one on the caller's
/// thread; a slower one sends the next off the async workers.
pub const DIRECT_SYNC_LIMIT: Duration = Duration::from_millis(1);
/// A sync of more unsynced bytes than this runs off the async workers: a
/// flush after a few small writes is quick, a commit's after a burst of
/// writes is not.
pub const DIRECT_SYNC_BYTES: u64 = 256 << 10;

/// The lead of a volume's log syncs, and how long the last one took.
#[derive(Default)]
pub(in crate::engine) struct Syncer {
    lead: Mutex<()>,
    /// How long the last sync took, in microseconds.
    last_sync_micros: AtomicU64,
}

/// The lead: held by one caller at a time, which syncs for everyone.
pub(in crate::engine) struct Lead<'a>(#[allow(dead_code)] MutexGuard<'a, ()>);

impl Syncer {
    /// Waits for the lead.
    pub async fn lead(&self) -> Lead<'_> {
        Lead(self.lead.lock().await)
    }

    /// Runs `work` (the fdatasyncs of one batch, `unsynced` bytes written
    /// since the last) where it costs least, as the module documentation
    /// says, and remembers how long it took.
    pub async fn sync<T: Send + 'static>(
        &self,
        _lead: &Lead<'_>,
        unsynced: u64,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let started = Instant::now();
        let done = match self.runs_directly(unsynced) {
            true => work(),
            false => crate::blocking::here(work).await,
        };
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_sync_micros.store(took, Ordering::Relaxed);
        done
    }

    /// Whether a sync of `unsynced` bytes runs on the caller's thread:
    /// only where that thread may block (a multi-threaded runtime's worker,
    /// or a thread of its own, like a ublk queue's), only a small one, and
    /// while the disk answers fast.
    fn runs_directly(&self, unsynced: u64) -> bool {
        let last = Duration::from_micros(self.last_sync_micros.load(Ordering::Relaxed));
        unsynced <= DIRECT_SYNC_BYTES
            && last < DIRECT_SYNC_LIMIT
            && crate::blocking::may_block_in_place()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fast_syncs_run_on_the_callers_thread_and_slow_ones_move_off() {
        let syncer = Syncer::default();
        assert!(
            syncer.runs_directly(4096),
            "a new volume's disk counts as fast"
        );
        assert!(
            !syncer.runs_directly(DIRECT_SYNC_BYTES + 1),
            "a large sync must not block an async worker"
        );
        syncer.last_sync_micros.store(5_000, Ordering::Relaxed);
        assert!(
            !syncer.runs_directly(4096),
            "a sync after a slow one must not block an async worker"
        );
        syncer.last_sync_micros.store(200, Ordering::Relaxed);
        assert!(
            syncer.runs_directly(4096),
            "fast syncs come back to the caller"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sync_records_how_long_it_took() {
        let syncer = Syncer::default();
        let lead = syncer.lead().await;
        syncer
            .sync(&lead, 0, || std::thread::sleep(Duration::from_millis(3)))
            .await;
        assert!(!syncer.runs_directly(0), "3 ms is slow");
        syncer.sync(&lead, 0, || ()).await;
        assert!(syncer.runs_directly(0), "an instant sync is fast");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_current_thread_runtime_never_blocks_its_only_thread() {
        let syncer = Syncer::default();
        assert!(!syncer.runs_directly(0));
    }
}
