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

use super::epoch::Epoch;
use super::error::{EngineError, Result};
use super::log::{RECORD_HEADER_LEN, RecordHeader, SEGMENT_HEADER_LEN, Segment};
use super::shared::{Shared, View};

impl Shared {
    /// Seals the open epoch if anything was written to it, and returns the
    /// newest sealed epoch: the one a flush now waits for.
    pub async fn seal_current(&self) -> Result<u64> {
        self.check_running()?;
        let mut state = self.switch.lock().await;
        let view = self.view.load_full();
        let current = &view.current;
        if current.is_empty() {
            return Ok(current.id - 1);
        }
        let fresh_segment = if current.end() >= self.options.segment_switch_bytes() {
            let segment = self
                .create_segment(state.next_seq, state.next_epoch)
                .await?;
            current.mark_last_in_segment();
            Some(segment)
        } else {
            None
        };
        // No await from here to the store of the new view: writers that
        // find the epoch sealed retry for only this long.
        let end = current.seal();
        let (segment, start) = match fresh_segment {
            Some(segment) => {
                crate::async_fail_point!("log::segment_switch");
                if let Err(source) = close_segment(&current.segment, end, current.id) {
                    let path = current.segment.path().to_path_buf();
                    return Err(self.stop(EngineError::Log { path, source }));
                }
                state.next_seq += 1;
                state.segments.push(Arc::clone(&segment));
                (segment, SEGMENT_HEADER_LEN)
            }
            None => (Arc::clone(&current.segment), end),
        };
        let next = Epoch::new(
            state.next_epoch,
            segment,
            start,
            self.superblock.chunk_size,
            Some(Arc::clone(current)),
        );
        state.next_epoch += 1;
        self.view.store(Arc::new(View {
            current: Arc::new(next),
            sealed: view.sealed.with_newest(Arc::clone(current)),
            map: Arc::clone(&view.map),
        }));
        let _ = self.sealed_tx.send(Arc::clone(current));
        Ok(current.id)
    }

    async fn create_segment(&self, seq: u64, first_epoch: u64) -> Result<Arc<Segment>> {
        let log = self.log.clone();
        fail::fail_point!("log::segment_creation_waits");
        // Taken here, before the blocking task exists, and held until it ends.
        let creating = Arc::clone(&self.segment_creation).lock_owned().await;
        let created = crate::blocking::run(move || {
            let _creating = creating;
            log.create_segment(seq, first_epoch)
        })
        .await;
        let created = created.map(Arc::new).map_err(|source| EngineError::Log {
            path: self.log.dir.clone(),
            source,
        })?;
        self.prepare_spare_segment();
        Ok(created)
    }

    /// Has a spare segment file made in the background, when the log has
    /// no free file for its next segment (see `LogDir::prepare_spare`).
    /// Failing only costs speed: the next segment is then a new file.
    pub fn prepare_spare_segment(&self) {
        let (log, len) = (self.log.clone(), self.options.segment_switch_bytes());
        let creation = Arc::clone(&self.segment_creation);
        tokio::spawn(async move {
            // Held until the file is made: a segment switch meanwhile waits
            // and then finds it, and close and crash wait for it to end.
            let preparing = creation.lock_owned().await;
            let prepared = crate::blocking::run(move || {
                let _preparing = preparing;
                log.prepare_spare(len)
            })
            .await;
            if let Err(error) = prepared {
                tracing::warn!(%error, "could not prepare a spare log segment; the next one is a new file, whose flushes cost more");
            }
        });
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
                .find(|(s, _)| Arc::ptr_eq(s, &epoch.segment))
            {
                Some((_, synced_end)) => *synced_end = (*synced_end).max(end),
                None => syncs.push((Arc::clone(&epoch.segment), end)),
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
                let newest = batch.last().expect("batch is not empty").id;
                let running = shared.publish_durable(newest);
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

/// Writes the record that says `segment` ends at `at`, after its last
/// epoch: what a recycled file holds past it is not part of the log. It is
/// written as the epoch is sealed, before the next segment gets any
/// record, and synced with that epoch, before any epoch of the next
/// segment counts as durable: a replay never mistakes the segment's end
/// for a torn record (which would drop the next segment's writes).
fn close_segment(segment: &Segment, at: u64, epoch: u64) -> std::io::Result<()> {
    let mut record = vec![0u8; RECORD_HEADER_LEN];
    RecordHeader::end(epoch).write_header(&mut record);
    segment.write_at(&record, at)
}
