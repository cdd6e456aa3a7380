//! The state a volume's callers and its background tasks share, and the
//! few things every part of the engine does with it: stop the volume for
//! good, publish what is durable and committed, and wait for either.
//!
//! Its fields are the engine's components (see the module documentation
//! of [`crate::engine`]); `volume.rs` builds it, the request paths and the
//! background tasks hold it.

use std::sync::Arc;

use super::backlog::Backlog;
use super::chunks::Chunks;
use super::error::{EngineError, Result};
use super::lease::Lease;
use super::log::{Journal, LogDir, Replayed, Segment, Syncer};
use super::options::EngineOptions;
use super::progress::Progress;
use super::stats::Stats;
use super::tenure::Tenure;
use crate::cache::DiskCache;
use crate::format::{Codec, Root, Superblock};
use crate::store::{Fencing, Store};

/// The state shared by a volume's callers and its background tasks: the
/// volume's identity and settings, and its components, each behind its
/// own narrow methods.
pub(super) struct Shared {
    name: String,
    superblock: Superblock,
    /// How the volume's objects are named and sealed.
    codec: Codec,
    store: Store,
    options: EngineOptions,
    chunks: Arc<Chunks>,
    /// The write-back log: its files, its epochs and the view.
    journal: Journal,
    /// Who syncs the log, one at a time.
    syncer: Syncer,
    /// A size a resize is waiting to commit.
    pending_size: std::sync::Mutex<Option<u64>>,
    /// How far the volume has got (durable, committed), and whether it
    /// still runs.
    progress: Progress,
    /// What waits for a commit, and the limits that hold writes back.
    backlog: Backlog,
    stats: Stats,
    fencing: Fencing,
    /// The writer's lease, checked before every commit.
    lease: tokio::sync::Mutex<Lease>,
    /// Until when the lease lets this writer acknowledge anything.
    tenure: Tenure,
}

/// The volume's identity, settings and components.
impl Shared {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn superblock(&self) -> &Superblock {
        &self.superblock
    }

    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    pub fn chunks(&self) -> &Arc<Chunks> {
        &self.chunks
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn syncer(&self) -> &Syncer {
        &self.syncer
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    pub fn backlog(&self) -> &Backlog {
        &self.backlog
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn fencing(&self) -> Fencing {
        self.fencing
    }

    pub fn lease(&self) -> &tokio::sync::Mutex<Lease> {
        &self.lease
    }

    pub fn tenure(&self) -> &Tenure {
        &self.tenure
    }

    /// Asks the next commit to grow the volume to `size`.
    pub fn grow_to(&self, size: u64) {
        *self.pending_size.lock().expect("pending size lock") = Some(size);
    }

    /// The size a resize waits to commit, if any.
    pub fn pending_size(&self) -> Option<u64> {
        *self.pending_size.lock().expect("pending size lock")
    }

    /// A commit made the volume `size` bytes: a resize it reaches is done.
    pub fn size_committed(&self, size: u64) {
        let mut pending = self.pending_size.lock().expect("pending size lock");
        if pending.is_some_and(|wanted| wanted <= size) {
            *pending = None;
        }
    }
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        name: &str,
        superblock: Superblock,
        codec: Codec,
        store: Store,
        mut options: EngineOptions,
        root: Root,
        log: LogDir,
        disk: Option<DiskCache>,
        replayed: Replayed,
        first_segment: Arc<Segment>,
        fencing: Fencing,
        lease: Lease,
    ) -> Shared {
        let tenure = Tenure::new(options.lease_ttl, lease.last_sent());
        options.upload_concurrency = options.upload_concurrency.max(1);
        let first_epoch = replayed.last_epoch + 1;
        // Replay synced what it kept, and epochs it found nothing of (their
        // records torn) have nothing to sync, nor to commit: everything
        // before the oldest replayed epoch is in the store.
        let durable_epoch = first_epoch - 1;
        let committed_epoch = replayed
            .epochs
            .first()
            .map_or(durable_epoch, |e| e.id() - 1);
        let replayed_log_bytes = replayed.epochs.iter().map(|e| e.log_len()).sum();
        let backlog = Backlog::new(
            &options,
            root.chunk_size,
            replayed.dirty_bytes,
            replayed_log_bytes,
        );
        let journal = Journal::new(
            log,
            root,
            replayed,
            first_segment,
            options.segment_switch_bytes(),
        );
        Shared {
            name: name.to_string(),
            chunks: Arc::new(Chunks::new(
                &store,
                &codec,
                superblock.chunk_size,
                &options,
                disk,
            )),
            superblock,
            codec,
            store,
            options,
            journal,
            syncer: Syncer::default(),
            pending_size: std::sync::Mutex::new(None),
            progress: Progress::new(durable_epoch, committed_epoch),
            backlog,
            stats: Stats::default(),
            fencing,
            tenure,
            lease: tokio::sync::Mutex::new(lease),
        }
    }

    pub fn size(&self) -> u64 {
        self.journal.view().map().size
    }

    /// Stops the volume for good after an error it cannot recover from,
    /// waking everyone who waits, so they see it.
    pub fn fail(&self, error: EngineError) {
        if self.progress.stop(error)
            && let Some(error) = self.progress.failure()
        {
            tracing::error!(volume = %self.name, %error, "volume stopped");
        }
        self.backlog.wake_all();
        self.tenure.wake();
        for epoch in self.journal.view().epochs_newest_first() {
            epoch.wake_waiters();
        }
    }

    /// Stops the volume (see [`Shared::fail`]); returns the error every
    /// caller sees from then on.
    pub fn stop(&self, error: EngineError) -> EngineError {
        self.fail(error);
        let failure = self.progress.failure().expect("fail sets the failure");
        EngineError::Stopped(Arc::clone(failure))
    }

    /// The error the volume stopped with, if it did.
    pub fn check_running(&self) -> Result<()> {
        self.progress.check_running()
    }

    /// Returns once this writer may acknowledge (see `tenure`): at once
    /// while its lease is renewed in time; else when a renewal gets
    /// through, or with an error when the volume stops (the lease was
    /// found taken).
    pub async fn check_tenure(&self) -> Result<()> {
        if self.tenure.holds() {
            return Ok(()); // every write asks: no waiter made unless needed
        }
        let mut warned = false;
        loop {
            let renewal = self.tenure.renewal();
            if self.tenure.holds() {
                return Ok(());
            }
            self.check_running()?;
            if !std::mem::replace(&mut warned, true) {
                tracing::warn!(
                    volume = %self.name,
                    lapsed_for = ?self.tenure.lapsed_for(),
                    "the lease has not been renewed in time (is the store reachable?): writes and flushes wait until it is, since another writer may take the volume over"
                );
            }
            renewal.await;
        }
    }

    /// Seals the open epoch and commits everything up to it; returns once
    /// the store holds every write acknowledged before the call.
    pub async fn commit_everything(&self) -> Result<()> {
        let target = self.seal_current().await?;
        self.progress.wait_committed(target).await
    }
}
