//! The write path: writes, discards and zeroes go to the log, then to the
//! open epoch's overlay, and are acknowledged.
//!
//! A write reserves its record's place in the open epoch, and from then on
//! it runs to completion in a blocking task that owns the reservation: a
//! caller that gives up cannot leave a hole in the log, and an epoch counts
//! as drained only once each of its records is written and in its overlay.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::epoch::Reservation;
use super::error::{EngineError, Result};
use super::log::{RECORD_HEADER_LEN, RecordHeader};
use super::volume::{Shared, Volume};
use crate::format::BLOCK_SIZE;

/// What a record does once written.
enum Change {
    Write,
    Zero,
}

impl Volume {
    /// Writes `data` at byte `offset`; with `fua`, also flushes.
    pub async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<()> {
        let shared = &self.shared;
        shared.check_request("write", offset, data.len() as u64)?;
        shared.stats.writes.fetch_add(1, Ordering::Relaxed);
        if data.is_empty() {
            return self.flush_if(fua).await;
        }
        shared.wait_for_dirty_room().await?;
        let header_len = RECORD_HEADER_LEN;
        let mut record = Vec::with_capacity(header_len + data.len());
        record.resize(header_len, 0);
        record.extend_from_slice(data);
        let len = data.len() as u64;
        let reservation = shared.reserve(header_len as u64 + len).await?;
        let header = RecordHeader::write(reservation.epoch.id, offset, data.len());
        shared
            .log_record(reservation, header, record, Change::Write)
            .await?;
        shared.stats.bytes_written.fetch_add(len, Ordering::Relaxed);
        if shared.dirty_bytes.load(Ordering::Acquire) >= shared.upload_threshold() {
            shared.kick.notify_one();
        }
        self.flush_if(fua).await
    }

    /// Discards `len` bytes at `offset`: they read as zeroes afterwards.
    /// Whole chunks only change the map; nothing is uploaded for them.
    pub async fn discard(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.zero_range("discard", offset, len, fua).await
    }

    /// Writes zeroes over `len` bytes at `offset`, as cheaply as a discard.
    pub async fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.zero_range("write-zeroes", offset, len, fua).await
    }

    async fn zero_range(&self, op: &'static str, offset: u64, len: u64, fua: bool) -> Result<()> {
        let shared = &self.shared;
        shared.check_request(op, offset, len)?;
        shared.stats.zeroes.fetch_add(1, Ordering::Relaxed);
        if len > 0 {
            let reservation = shared.reserve(RECORD_HEADER_LEN as u64).await?;
            let header = RecordHeader::zero(reservation.epoch.id, offset, len);
            let record = vec![0; RECORD_HEADER_LEN];
            shared
                .log_record(reservation, header, record, Change::Zero)
                .await?;
        }
        self.flush_if(fua).await
    }

    async fn flush_if(&self, fua: bool) -> Result<()> {
        if fua { self.flush().await } else { Ok(()) }
    }
}

impl Shared {
    /// Checks that a request is aligned and inside the volume.
    pub fn check_request(&self, op: &'static str, offset: u64, len: u64) -> Result<()> {
        self.check_running()?;
        if !offset.is_multiple_of(BLOCK_SIZE) || !len.is_multiple_of(BLOCK_SIZE) {
            return Err(EngineError::Unaligned {
                op,
                offset,
                len,
                block: BLOCK_SIZE,
            });
        }
        let size = self.size();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(EngineError::OutOfRange {
                op,
                offset,
                len,
                size,
            });
        }
        Ok(())
    }

    /// Reserves log space in the open epoch.
    async fn reserve(&self, len: u64) -> Result<Reservation> {
        loop {
            self.check_running()?;
            if let Some(reservation) = self.view.load().current.try_reserve(len) {
                return Ok(reservation);
            }
            // The epoch was sealed a moment ago; its successor is being
            // published.
            tokio::task::yield_now().await;
        }
    }

    /// Writes a record at its reserved place, then records it in the
    /// epoch's overlay, in a task the caller cannot cancel.
    async fn log_record(
        self: &Arc<Self>,
        reservation: Reservation,
        header: RecordHeader,
        mut record: Vec<u8>,
        change: Change,
    ) -> Result<()> {
        let shared = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            header.write_header(&mut record);
            let epoch = &reservation.epoch;
            if let Err(source) = epoch.segment.write_at(&record, reservation.pos) {
                // The reserved bytes stay a hole, and replay stops at a
                // hole: stop the volume before this epoch can drain, so
                // no later flush claims what follows it is durable.
                shared.fail(EngineError::Log {
                    path: epoch.segment.path().to_path_buf(),
                    source,
                });
                return shared.check_running();
            }
            match change {
                Change::Write => {
                    let data_pos = reservation.pos + RECORD_HEADER_LEN as u64;
                    epoch
                        .overlay
                        .record_write(header.offset, header.len, data_pos);
                    epoch.add_dirty(header.len);
                    shared.dirty_bytes.fetch_add(header.len, Ordering::AcqRel);
                }
                Change::Zero => {
                    epoch
                        .overlay
                        .record_zero(header.offset, header.len, reservation.pos)
                }
            }
            drop(reservation);
            Ok(())
        })
        .await
        .expect("log writes do not panic")
    }

    /// Waits while more than `--max-dirty` bytes wait for upload.
    async fn wait_for_dirty_room(&self) -> Result<()> {
        let mut warned = false;
        loop {
            let room = self.dirty_room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            self.check_running()?;
            let dirty = self.dirty_bytes.load(Ordering::Acquire);
            if dirty < self.options.max_dirty_bytes {
                return Ok(());
            }
            if !warned {
                tracing::debug!(volume = %self.name, dirty, "writes wait for uploads (--max-dirty reached)");
                warned = true;
            }
            self.kick.notify_one();
            room.await;
        }
    }

    /// Dirty bytes past which the uploader starts without waiting for its
    /// interval.
    pub fn upload_threshold(&self) -> u64 {
        (self.options.max_dirty_bytes / 4).max(self.superblock.chunk_size * 4)
    }
}
