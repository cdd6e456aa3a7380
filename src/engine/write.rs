//! The write path: writes, discards and zeroes go to the log, then to the
//! open epoch's overlay, and are acknowledged.
//!
//! A write reserves its record's place in the open epoch (or claims an
//! older record of the same extent to rewrite, see `log/rewrite.rs`),
//! and from then on
//! it runs to completion without an await (small records) or in a blocking
//! task that owns the reservation (large ones): a caller that gives up
//! cannot leave a hole in the log, and an epoch counts as drained only once
//! each of its records is written and in its overlay.
//!
//! A write is acknowledged only once every record before its own in the
//! log is written too (see `log/epoch.rs`): replay stops at a record
//! that was reserved and never written, so a write acknowledged past one
//! would be lost to a `kill -9` that came before it. A large record still
//! being written holds back the acknowledgement of the small writes after
//! it, never their data.

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::backlog::Admission;
use super::error::{EngineError, Result};
use super::log::{Claim, Epoch, Reservation};
use super::log::{RECORD_HEADER_LEN, RecordHeader};
use super::read;
use super::shared::Shared;
use super::writer::Writer;

/// Records up to this size are written on the calling task.
const INLINE_RECORD_MAX: usize = 64 << 10;

/// What a record does once written.
enum Change {
    Write,
    Zero,
}

/// Where a record goes: appended at its reservation, or over an older
/// record of the same extent (the reservation then holds no log space, and
/// only keeps the epoch from draining before the rewrite is done).
struct Placement {
    reservation: Reservation,
    rewrite: Option<Claim>,
}

/// A record written to the log: its epoch, and where it ends.
struct Written {
    epoch: Arc<Epoch>,
    end: u64,
}

impl Placement {
    fn pos(&self) -> u64 {
        match &self.rewrite {
            Some(claim) => claim.record_pos(),
            None => self.reservation.pos,
        }
    }
}

/// A write's data, laid out as the log record it becomes (room for the
/// record header first), so the engine logs it without copying it again.
/// Transports read request payloads straight into one.
#[derive(Debug, Default)]
pub struct WriteBuffer {
    record: Vec<u8>,
}

impl WriteBuffer {
    /// A buffer of exactly `len` bytes read from `reader`, which are read
    /// straight into it (not zeroed first).
    pub async fn read_from<R: AsyncRead + Unpin>(reader: &mut R, len: usize) -> io::Result<Self> {
        let mut record = Vec::with_capacity(RECORD_HEADER_LEN + len);
        record.resize(RECORD_HEADER_LEN, 0);
        let mut left = len as u64;
        while left > 0 {
            match reader.take(left).read_buf(&mut record).await? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                read => left -= read as u64,
            }
        }
        Ok(WriteBuffer { record })
    }

    /// A buffer holding a copy of `data`.
    pub fn copy_of(data: &[u8]) -> WriteBuffer {
        let mut record = Vec::with_capacity(RECORD_HEADER_LEN + data.len());
        record.resize(RECORD_HEADER_LEN, 0);
        record.extend_from_slice(data);
        WriteBuffer { record }
    }

    pub fn data(&self) -> &[u8] {
        self.record.get(RECORD_HEADER_LEN..).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.data().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Writer {
    /// Writes the data of `buffer` at byte `offset`, without copying it;
    /// with `fua`, also flushes.
    pub async fn write_buffer(&self, offset: u64, buffer: WriteBuffer, fua: bool) -> Result<()> {
        let shared = &self.shared;
        let len = buffer.len() as u64;
        shared.check_request("write", offset, len)?;
        shared.stats().write_arrived();
        if buffer.is_empty() {
            return self.acknowledge(fua).await;
        }
        let record = buffer.record;
        let admission = shared.wait_for_dirty_room(record.len() as u64).await?;
        crate::async_fail_point!("write::admitted");
        let placement = shared.place_write(offset, len, record.len() as u64).await?;
        let epoch = &placement.reservation.epoch;
        let header = RecordHeader::write(epoch.id(), epoch.next_seq(), offset, len as usize);
        shared
            .log_record(placement, header, record, Change::Write)
            .await?;
        admission.landed();
        shared.stats().written(len);
        if shared.backlog().upload_pressure() {
            shared.progress().kick_uploader();
        }
        self.acknowledge(fua).await
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
        shared.stats().zeroed();
        if len > 0 {
            let reservation = shared.reserve(RECORD_HEADER_LEN as u64).await?;
            let epoch = &reservation.epoch;
            let header = RecordHeader::zero(epoch.id(), epoch.next_seq(), offset, len);
            let record = vec![0; RECORD_HEADER_LEN];
            let placement = Placement {
                reservation,
                rewrite: None,
            };
            shared
                .log_record(placement, header, record, Change::Zero)
                .await?;
        }
        self.acknowledge(fua).await
    }

    /// Ends a write that is in the log: with `fua`, flushes; either way
    /// returns only while this writer may acknowledge (see `tenure`).
    async fn acknowledge(&self, fua: bool) -> Result<()> {
        match fua {
            true => self.flush().await,
            false => self.shared.check_tenure().await,
        }
    }
}

impl Shared {
    /// Checks that a request is aligned and inside the volume.
    pub fn check_request(&self, op: &'static str, offset: u64, len: u64) -> Result<()> {
        self.check_running()?;
        read::check_range(op, offset, len, self.size())
    }

    /// Reserves log space in the open epoch.
    async fn reserve(&self, len: u64) -> Result<Reservation> {
        loop {
            self.check_running()?;
            if let Some(reservation) = self.journal().view().current().try_reserve(len) {
                self.backlog().logged(len);
                return Ok(reservation);
            }
            // The epoch was sealed a moment ago; its successor is being
            // published.
            tokio::task::yield_now().await;
        }
    }

    /// Finds a write's place: over the older copy of its extent when the
    /// open epoch has one to spare, else at the end of the epoch.
    async fn place_write(&self, offset: u64, len: u64, record_len: u64) -> Result<Placement> {
        let pinned = self.reserve(0).await?;
        if let Some(claim) = Claim::take(&pinned.epoch, offset, len) {
            return Ok(Placement {
                reservation: pinned,
                rewrite: Some(claim),
            });
        }
        drop(pinned);
        Ok(Placement {
            reservation: self.reserve(record_len).await?,
            rewrite: None,
        })
    }

    /// Writes a record at its place, then records it in the epoch's
    /// overlay. Once the place is reserved this cannot be
    /// cancelled: a small record is written right here, with no await
    /// between reservation and overlay (a pwrite into the page cache takes
    /// microseconds, less than handing it to another thread); a large one
    /// in a blocking task that owns the reservation.
    async fn log_record(
        self: &Arc<Self>,
        placement: Placement,
        header: RecordHeader,
        record: Vec<u8>,
        change: Change,
    ) -> Result<()> {
        let written = if record.len() <= INLINE_RECORD_MAX {
            self.apply_record(placement, header, record, change)?
        } else {
            let shared = Arc::clone(self);
            crate::blocking::run(move || {
                fail::fail_point!("log::large_record");
                // A crashed volume (in tests) writes nothing more.
                shared.check_running()?;
                shared.apply_record(placement, header, record, change)
            })
            .await?
        };
        self.wait_for_earlier_records(&written).await
    }

    /// Waits until every record before `written` in the log is written.
    async fn wait_for_earlier_records(&self, written: &Written) -> Result<()> {
        let epoch = &written.epoch;
        epoch.earlier_epochs_whole().await;
        while !epoch.written_through(written.end) {
            crate::async_fail_point!("log::ack_waits_for_earlier_records");
            self.check_running()?;
            epoch.wait_written_through(written.end).await;
        }
        Ok(())
    }

    /// Writes a record at its place and records it in the epoch's overlay;
    /// returns where it ends.
    fn apply_record(
        &self,
        placement: Placement,
        header: RecordHeader,
        mut record: Vec<u8>,
        change: Change,
    ) -> Result<Written> {
        header.write_header(&mut record);
        let pos = placement.pos();
        let appended = placement.rewrite.is_none();
        let Placement {
            reservation,
            rewrite,
        } = placement;
        let epoch = &reservation.epoch;
        if let Err(source) = epoch.segment().write_at(&record, pos) {
            // The reserved bytes stay a hole, and replay stops at a hole:
            // stop the volume before this epoch can drain, so no later
            // flush claims what follows it is durable.
            self.fail(EngineError::Log {
                path: epoch.segment().path().to_path_buf(),
                source,
            });
            self.check_running()?;
        }
        if appended {
            epoch.appended(pos, record.len() as u64);
        }
        match change {
            Change::Write => {
                let data_pos = pos + RECORD_HEADER_LEN as u64;
                let new_bytes = epoch.record_write(header.offset, header.len, data_pos, header.seq);
                self.backlog().dirtied(new_bytes);
                match rewrite {
                    Some(claim) => {
                        claim.done();
                        self.stats().rewrote();
                    }
                    None => epoch.note_copy(header.offset, header.len, data_pos),
                }
            }
            Change::Zero => epoch.record_zero(header.offset, header.len, header.seq),
        }
        let written = Written {
            epoch: Arc::clone(epoch),
            end: pos + record.len() as u64,
        };
        drop(reservation);
        Ok(written)
    }

    /// Waits while more than `--max-dirty` bytes wait for upload, or the
    /// log holds more than [`super::EngineOptions::log_limit_bytes`]; then
    /// admits a record of `len` bytes to the log (see [`Backlog`]).
    async fn wait_for_dirty_room(&self, len: u64) -> Result<Admission<'_>> {
        let mut warned = false;
        loop {
            let room = self.backlog().room_freed();
            tokio::pin!(room);
            room.as_mut().enable();
            self.check_running()?;
            if let Some(admission) = self.backlog().try_admit(len) {
                return Ok(admission);
            }
            if !warned {
                let (dirty, logged) = (self.backlog().dirty_bytes(), self.backlog().log_bytes());
                tracing::debug!(volume = %self.name(), dirty, logged, "writes wait for uploads (--max-dirty reached)");
                warned = true;
            }
            self.progress().kick_uploader();
            room.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_buffer_reads_exactly_its_length() {
        let mut input: &[u8] = &[1, 2, 3, 4, 5, 6];
        let buffer = WriteBuffer::read_from(&mut input, 4).await.unwrap();
        assert_eq!(buffer.data(), &[1, 2, 3, 4]);
        assert_eq!(input, &[5, 6], "the next request's bytes stay unread");
        let short = WriteBuffer::read_from(&mut input, 4).await.unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof);
    }
}
