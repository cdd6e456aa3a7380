//! Flushes: sealing the open epoch, and making sealed epochs durable.
//!
//! A flush seals the open epoch (so writes that arrive from then on go to
//! the next one and never wait), then waits until the durability worker has
//! synced every sealed epoch up to it. The worker takes sealed epochs in
//! order, lets their in-flight writes finish, and syncs each segment once
//! for all the epochs queued meanwhile: concurrent flushes share one
//! fdatasync. With `--durability remote` a flush also waits for the commit.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::error::{EngineError, Result};
use super::log::{Epoch, RECORD_HEADER_LEN, SealFailure, Segment};
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
}

/// Makes sealed epochs durable, in order, batching the syncs.
pub(super) async fn durability_worker(
    shared: Arc<Shared>,
    mut sealed: mpsc::UnboundedReceiver<Arc<Epoch>>,
) {
    while let Some(first) = sealed.recv().await {
        let mut batch = vec![first];
        while let Ok(next) = sealed.try_recv() {
            batch.push(next);
        }
        for epoch in &batch {
            epoch.drained().await;
        }
        if shared.check_running().is_err() {
            return;
        }
        let mut syncs: Vec<(Arc<Segment>, u64)> = Vec::new();
        for epoch in &batch {
            let mut end = epoch.end();
            if epoch.is_last_in_segment() {
                end += RECORD_HEADER_LEN as u64;
            }
            match syncs
                .iter_mut()
                .find(|(s, _)| Arc::ptr_eq(s, epoch.segment()))
            {
                Some((_, synced_end)) => *synced_end = (*synced_end).max(end),
                None => syncs.push((Arc::clone(epoch.segment()), end)),
            }
        }
        // On this thread when the runtime allows it: a flush then costs no
        // wake-up of another thread and none back, which on these machines
        // cost more than the fdatasync itself. A task blocked here cannot be
        // aborted until the sync returns: `Volume::crash` does not wait for
        // it, and `publish_durable` refuses what it synced once the volume
        // has stopped.
        let synced = crate::blocking::here(move || {
            fail::fail_point!("log::before_sync");
            for (segment, end) in &syncs {
                segment
                    .sync_to(*end)
                    .map_err(|e| (segment.path().to_path_buf(), e))?;
            }
            Ok(())
        })
        .await;
        match synced {
            Ok(()) => {
                let newest = batch.last().expect("batch is not empty").id();
                let running = shared.progress().publish_durable(newest);
                fail::fail_point!("log::synced");
                if !running {
                    return; // the volume stopped while the sync ran
                }
            }
            Err((path, source)) => {
                // Never retry a failed fsync: the kernel may have dropped
                // the dirty pages, and a second fsync would lie.
                shared.fail(EngineError::Log { path, source });
                return;
            }
        }
    }
}
