//! Flushes: sealing the open epoch, and making sealed epochs durable.
//!
//! A flush seals the open epoch (so writes that arrive from then on go to
//! the next one and never wait), then makes every sealed epoch up to it
//! durable: it syncs them itself once it holds the log's sync lead, unless
//! the sync of whoever held the lead before covered them (see
//! [`super::log::Syncer`]: concurrent flushes share one fdatasync). A
//! commit does the same before it uploads sealed epochs. With
//! `--durability remote` a flush also waits for the commit.
//!
//! It promises:
//! - an epoch counts as durable only once every write that joined it has
//!   finished and an fdatasync that started after that has returned;
//! - a failed fdatasync stops the volume and is never retried (the
//!   segment remembers it: see `Segment::sync_to`);
//! - a sync that ends after the volume stopped acknowledges nothing;
//! - a caller that goes away while it leads leaves no epoch behind: what
//!   is durable is read from [`super::progress::Progress`], and what to
//!   sync from the view, never from a queue a caller could take and drop;
//! - a panic while syncing stops the volume, as one in a background task
//!   does.

use std::sync::Arc;

use futures::FutureExt;

use super::error::{EngineError, Result};
use super::log::{Epoch, Lead, RECORD_HEADER_LEN, SealFailure, Segment};
use super::shared::Shared;

impl Shared {
    /// Seals the open epoch if anything was written to it, and returns the
    /// newest sealed epoch: the one a flush now waits for.
    pub async fn seal_current(&self) -> Result<u64> {
        self.check_running()?;
        match self.journal().seal().await {
            Ok(sealed) => Ok(sealed),
            Err(SealFailure::Segment(error)) => Err(error),
            Err(SealFailure::Fatal(error)) => Err(self.stop(error)),
        }
    }

    /// Returns once every epoch up to `target` (sealed already) is
    /// durable, syncing them here if no one else has.
    pub async fn make_durable(&self, target: u64) -> Result<()> {
        if self.progress().durable_epoch() >= target {
            return Ok(());
        }
        let lead = self.syncer().lead().await;
        if self.progress().durable_epoch() >= target {
            return Ok(());
        }
        let synced = std::panic::AssertUnwindSafe(self.sync_sealed(&lead))
            .catch_unwind()
            .await;
        match synced {
            Ok(synced) => synced,
            Err(panic) => Err(self.stop(EngineError::Panicked {
                task: "log sync",
                message: super::writer::panic_message(&*panic),
            })),
        }
    }

    /// Syncs every sealed epoch not durable yet, and publishes them.
    async fn sync_sealed(&self, lead: &Lead<'_>) -> Result<()> {
        self.check_running()?;
        let durable = self.progress().durable_epoch();
        let batch = self.journal().view().sealed_after(durable);
        let Some(newest) = batch.last().map(|epoch| epoch.id()) else {
            return self.check_running();
        };
        crate::async_fail_point!("log::sync_leads");
        for epoch in &batch {
            epoch.drained().await;
        }
        self.check_running()?;
        let syncs = sync_ends(&batch);
        let unsynced = syncs
            .iter()
            .map(|(segment, end)| segment.unsynced_below(*end))
            .sum();
        let synced = self
            .syncer()
            .sync(lead, unsynced, move || {
                fail::fail_point!("log::before_sync");
                for (segment, end) in &syncs {
                    segment
                        .sync_to(*end)
                        .map_err(|e| (segment.path().to_path_buf(), e))?;
                }
                Ok(())
            })
            .await;
        if let Err((path, source)) = synced {
            return Err(self.stop(EngineError::Log { path, source }));
        }
        self.stats().log_synced();
        let running = self.progress().publish_durable(newest);
        fail::fail_point!("log::synced");
        match running {
            true => Ok(()),
            // The volume stopped while the sync ran: what it synced may be
            // what a power cut left, so it acknowledges nothing.
            false => self.check_running(),
        }
    }
}

/// Each segment `batch` has records in, and how far it must be synced:
/// to the end of the batch's last epoch in it, and past the end record of
/// an epoch that closed its segment.
fn sync_ends(batch: &[Arc<Epoch>]) -> Vec<(Arc<Segment>, u64)> {
    let mut syncs: Vec<(Arc<Segment>, u64)> = Vec::new();
    for epoch in batch {
        let mut end = epoch.end();
        if epoch.is_last_in_segment() {
            end += RECORD_HEADER_LEN as u64;
        }
        match syncs
            .iter_mut()
            .find(|(segment, _)| Arc::ptr_eq(segment, epoch.segment()))
        {
            Some((_, synced_end)) => *synced_end = (*synced_end).max(end),
            None => syncs.push((Arc::clone(epoch.segment()), end)),
        }
    }
    syncs
}
