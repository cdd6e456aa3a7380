//! Epochs: the writes between two flush points, and their log region.
//!
//! An epoch owns a contiguous region of one log segment. Writers reserve
//! space in the current epoch with one compare-and-swap on a word that holds
//! the region's tail, the number of writes in flight and a sealed bit. A
//! flush seals the epoch with one atomic OR: no write can join it after
//! that, every write that joined before is waited for ([`Epoch::drained`]),
//! and the next epoch's region starts where this one ended. So a sealed
//! epoch's records lie wholly before the next epoch's, and once drained
//! and synced, the log holds them without holes: replay, which stops at the
//! first damaged record, can never lose a flushed write.
//!
//! Writes finish out of order (a large record is still being written
//! while small ones after it are done), and replay stops at a record that
//! was reserved but never written: a write after such a gap would be lost
//! to a `kill -9`. So an epoch also tracks how far its region is written
//! without a gap ([`Epoch::appended`]), and knows the epoch before it
//! until it has seen it whole ([`Epoch::earlier_epochs_whole`]): a write
//! is acknowledged only once every record before its own is written.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::sync::Notify;

use super::overlay::Overlay;
use super::rewrite::Copies;
use super::{RECORD_HEADER_LEN, Segment};

const SEALED: u64 = 1 << 63;
const INFLIGHT_ONE: u64 = 1 << 44;
const INFLIGHT_MASK: u64 = ((1 << 19) - 1) << 44;
const TAIL_MASK: u64 = INFLIGHT_ONE - 1;

fn inflight(word: u64) -> u64 {
    (word & INFLIGHT_MASK) >> 44
}

pub struct Epoch {
    id: u64,
    segment: Arc<Segment>,
    /// Where the epoch's region starts in its segment.
    start: u64,
    word: AtomicU64,
    drained: Notify,
    overlay: Overlay,
    /// The last sequence number given to a record of this epoch.
    seq: AtomicU64,
    /// The records an in-place rewrite may reuse.
    copies: Copies,
    /// Data bytes written in this epoch (zeroing records count nothing).
    dirty_bytes: AtomicU64,
    /// The next epoch starts a new segment: this one closes its segment.
    last_in_segment: AtomicBool,
    /// How far the region is written without a gap.
    written: Mutex<Written>,
    /// Writes waiting for the region before them to be written.
    waiting: AtomicUsize,
    written_grew: Notify,
    /// The epoch before this one, until this one has seen it whole.
    earlier: Mutex<Option<Arc<Epoch>>>,
    /// When its first change was recorded (for a replayed epoch: when it
    /// was replayed): how long its oldest uncommitted write has waited.
    /// Shown by `zeroblk status`; nothing durable depends on it.
    first_change: OnceLock<Instant>,
}

/// The region's records written so far: a prefix without a gap, and the
/// records written past a gap.
#[derive(Debug, Default)]
struct Written {
    through: u64,
    /// start -> length of records written after the first gap.
    ahead: BTreeMap<u64, u64>,
}

impl std::fmt::Debug for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Epoch")
            .field("id", &self.id)
            .field("segment", &self.segment.seq)
            .field("start", &self.start)
            .field("end", &self.end())
            .field("sealed", &self.is_sealed())
            .finish()
    }
}

/// Space reserved in an epoch's region; the write it belongs to is in
/// flight until this is dropped.
pub struct Reservation {
    pub epoch: Arc<Epoch>,
    pub pos: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.epoch.release();
    }
}

impl Epoch {
    /// An open epoch whose region starts at `start` of `segment`, after
    /// `earlier` (none after a restart: replayed epochs are whole).
    pub fn new(
        id: u64,
        segment: Arc<Segment>,
        start: u64,
        chunk_size: u64,
        earlier: Option<Arc<Epoch>>,
    ) -> Epoch {
        Epoch {
            id,
            segment,
            start,
            word: AtomicU64::new(start),
            drained: Notify::new(),
            overlay: Overlay::new(chunk_size),
            seq: AtomicU64::new(0),
            copies: Copies::default(),
            dirty_bytes: AtomicU64::new(0),
            last_in_segment: AtomicBool::new(false),
            written: Mutex::new(Written {
                through: start,
                ahead: BTreeMap::new(),
            }),
            waiting: AtomicUsize::new(0),
            written_grew: Notify::new(),
            earlier: Mutex::new(earlier),
            first_change: OnceLock::new(),
        }
    }

    /// An epoch being rebuilt from the log after a restart: sealed, its
    /// region growing with [`Epoch::extend_replayed`].
    pub fn replayed(id: u64, segment: Arc<Segment>, start: u64, chunk_size: u64) -> Epoch {
        let epoch = Epoch::new(id, segment, start, chunk_size, None);
        epoch.word.store(SEALED | start, Ordering::Release);
        epoch
    }

    /// Moves a replayed epoch's end past one more of its records.
    pub fn extend_replayed(&self, end: u64) {
        self.word.store(SEALED | end, Ordering::Release);
        self.lock_written().through = end;
    }

    fn lock_written(&self) -> std::sync::MutexGuard<'_, Written> {
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Says the record reserved at `pos`, `len` bytes, is written.
    pub fn appended(&self, pos: u64, len: u64) {
        let mut written = self.lock_written();
        if pos != written.through {
            written.ahead.insert(pos, len);
            return;
        }
        let Written { through, ahead } = &mut *written;
        *through += len;
        while let Some(next) = ahead.remove(through) {
            *through += next;
        }
        drop(written);
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.written_grew.notify_waiters();
        }
    }

    /// Whether every record reserved below `end` is written.
    pub fn written_through(&self, end: u64) -> bool {
        self.lock_written().through >= end
    }

    /// Waits until [`Epoch::written_through`] `end`, or until
    /// [`Epoch::wake_waiters`]; says which.
    pub async fn wait_written_through(&self, end: u64) -> bool {
        let grew = self.written_grew.notified();
        tokio::pin!(grew);
        grew.as_mut().enable();
        self.waiting.fetch_add(1, Ordering::AcqRel);
        if !self.written_through(end) {
            grew.await;
        }
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        self.written_through(end)
    }

    /// Wakes the writes waiting in [`Epoch::wait_written_through`] (the
    /// volume stopped, and they must see it).
    pub fn wake_waiters(&self) {
        self.written_grew.notify_waiters();
    }

    /// Waits until every epoch before this one is whole: each of its
    /// records written (its end record included, which is written when it
    /// is sealed), so that nothing before this epoch's records in the log
    /// is a gap.
    pub async fn earlier_epochs_whole(&self) {
        let mut chain = Vec::new();
        let mut next = self.lock_earlier().clone();
        while let Some(epoch) = next {
            next = epoch.lock_earlier().clone();
            chain.push(epoch);
        }
        if chain.is_empty() {
            return;
        }
        for epoch in chain.iter().rev() {
            epoch.drained().await;
        }
        *self.lock_earlier() = None;
    }

    fn lock_earlier(&self) -> std::sync::MutexGuard<'_, Option<Arc<Epoch>>> {
        self.earlier.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `len` bytes of log for a write, or `None` once the epoch is
    /// sealed (the writer then joins the next one).
    pub fn try_reserve(self: &Arc<Self>, len: u64) -> Option<Reservation> {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            if word & SEALED != 0 || inflight(word) == INFLIGHT_MASK >> 44 {
                return None;
            }
            let tail = word & TAIL_MASK;
            let next = (word + INFLIGHT_ONE) & !TAIL_MASK | (tail + len);
            match self
                .word
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Some(Reservation {
                        epoch: Arc::clone(self),
                        pos: tail,
                    });
                }
                Err(actual) => word = actual,
            }
        }
    }

    fn release(&self) {
        let before = self.word.fetch_sub(INFLIGHT_ONE, Ordering::AcqRel);
        if before & SEALED != 0 && inflight(before) == 1 {
            self.drained.notify_waiters();
        }
    }

    /// Closes the epoch to new writes; returns where its region ends.
    pub fn seal(&self) -> u64 {
        self.word.fetch_or(SEALED, Ordering::AcqRel) & TAIL_MASK
    }

    /// Says that the next epoch starts in a new segment (before sealing).
    pub fn mark_last_in_segment(&self) {
        self.last_in_segment.store(true, Ordering::Release);
    }

    pub fn is_last_in_segment(&self) -> bool {
        self.last_in_segment.load(Ordering::Acquire)
    }

    pub fn is_sealed(&self) -> bool {
        self.word.load(Ordering::Acquire) & SEALED != 0
    }

    /// Where the epoch's region ends (so far, while it is open).
    pub fn end(&self) -> u64 {
        self.word.load(Ordering::Acquire) & TAIL_MASK
    }

    /// Whether no write has joined the epoch.
    pub fn is_empty(&self) -> bool {
        let word = self.word.load(Ordering::Acquire);
        word & TAIL_MASK == self.start && inflight(word) == 0
    }

    /// Waits until every write that joined the epoch has finished.
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if inflight(self.word.load(Ordering::Acquire)) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The sequence number for the epoch's next record (from 1): where
    /// records overlap, the higher wins.
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The segment the epoch's records are in.
    pub fn segment(&self) -> &Arc<Segment> {
        &self.segment
    }

    /// Bytes of log the epoch's records take so far.
    pub fn log_len(&self) -> u64 {
        self.end() - self.start
    }

    /// What the epoch changed, and where in the log: for reads and commits.
    /// When the epoch's first change was recorded, if it has any.
    pub fn first_change(&self) -> Option<Instant> {
        self.first_change.get().copied()
    }

    pub fn changes(&self) -> &Overlay {
        &self.overlay
    }

    /// Records a write of `len` bytes at device `offset`, its data at
    /// `data_pos` of the segment; returns the data bytes it newly dirtied.
    pub fn record_write(&self, offset: u64, len: u64, data_pos: u64, seq: u64) -> u64 {
        self.first_change.get_or_init(Instant::now);
        let new_bytes = self.overlay.record_write(offset, len, data_pos, seq);
        self.dirty_bytes.fetch_add(new_bytes, Ordering::Relaxed);
        new_bytes
    }

    /// Records zeroes over `len` bytes at device `offset`.
    pub fn record_zero(&self, offset: u64, len: u64, seq: u64) {
        self.first_change.get_or_init(Instant::now);
        self.overlay.record_zero(offset, len, seq);
    }

    /// Notes an appended (not rewritten) write's record, which a later
    /// write of the same extent may rewrite (see `rewrite`).
    pub fn note_copy(&self, offset: u64, len: u64, data_pos: u64) {
        self.copies.appended(offset, len, data_pos);
    }

    pub fn dirty_bytes(&self) -> u64 {
        self.dirty_bytes.load(Ordering::Relaxed)
    }
}

/// The right to overwrite one record of an open epoch, held while the
/// rewrite runs; given back when dropped.
pub struct Claim {
    epoch: Arc<Epoch>,
    offset: u64,
    data_pos: u64,
    rewritten: bool,
}

impl Claim {
    /// Claims the older copy of `offset..offset+len` in `epoch`, if the
    /// newer one hides all of it.
    pub fn take(epoch: &Arc<Epoch>, offset: u64, len: u64) -> Option<Claim> {
        let (older, newer) = epoch.copies.claim(offset, len)?;
        let claim = Claim {
            epoch: Arc::clone(epoch),
            offset,
            data_pos: older,
            rewritten: false,
        };
        // Claimed first, checked second: hidden blocks never show again,
        // and nobody else rewrites the record while the claim stands.
        epoch
            .overlay
            .shows_only(offset, len, newer)
            .then_some(claim)
    }

    /// Where the claimed record starts in the epoch's segment.
    pub fn record_pos(&self) -> u64 {
        self.data_pos - RECORD_HEADER_LEN as u64
    }

    /// Says the record now holds the rewrite, in the log and the overlay.
    pub fn done(mut self) {
        self.rewritten = true;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.epoch.copies.release(self.offset, self.rewritten);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::log::{SEGMENT_HEADER_LEN, SegmentIdentity};

    fn epoch(dir: &std::path::Path) -> Arc<Epoch> {
        let identity = SegmentIdentity {
            log_id: uuid::Uuid::new_v4(),
            volume: uuid::Uuid::new_v4(),
            seq: 1,
            first_epoch: 1,
            format: crate::engine::log::RecordFormat::Sequenced,
        };
        let segment = Arc::new(Segment::create(dir, identity).unwrap());
        Arc::new(Epoch::new(1, segment, SEGMENT_HEADER_LEN, 1 << 20, None))
    }

    #[tokio::test]
    async fn reservations_are_contiguous_and_sealing_stops_them() {
        let dir = tempfile::tempdir().unwrap();
        let epoch = epoch(dir.path());
        assert!(epoch.is_empty());
        let a = epoch.try_reserve(100).unwrap();
        let b = epoch.try_reserve(50).unwrap();
        assert_eq!(a.pos, SEGMENT_HEADER_LEN);
        assert_eq!(b.pos, SEGMENT_HEADER_LEN + 100);
        assert_eq!(epoch.seal(), SEGMENT_HEADER_LEN + 150);
        assert!(epoch.try_reserve(1).is_none());
        let waiter = {
            let epoch = Arc::clone(&epoch);
            tokio::spawn(async move { epoch.drained().await })
        };
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("drained after the last write")
            .unwrap();
    }
}
