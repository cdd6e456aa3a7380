//! Read-ahead: when a read continues the one before it, the chunks ahead
//! are fetched in the background, so a sequential reader finds them
//! cached. This file holds the decision; [`super::Chunks`] does the
//! fetching.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where a sequential reader is, and how far read-ahead has asked ahead.
pub(super) struct ReadAhead {
    /// Chunks read ahead at most.
    window: u64,
    /// Where a sequential reader's next read is expected to start.
    next_offset: AtomicU64,
    /// The chunk before which read-ahead has asked for every chunk.
    asked_to: AtomicU64,
}

impl ReadAhead {
    pub fn new(window: u64) -> ReadAhead {
        ReadAhead {
            window,
            next_offset: AtomicU64::new(u64::MAX),
            asked_to: AtomicU64::new(0),
        }
    }

    /// The chunks to fetch after a read of `len` bytes at `offset`, if
    /// any: none unless the read continues the previous one. It fetches
    /// once at least half the window is left to fetch, so that each fetch
    /// is a run of chunks (one GET per run, when they lie in one pack),
    /// not one chunk at a time.
    pub fn after_read(&self, offset: u64, len: u64, chunk_size: u64) -> Option<Range<u64>> {
        let expected = self.next_offset.swap(offset + len, Ordering::AcqRel);
        if expected != offset || self.window == 0 {
            return None;
        }
        let next_chunk = (offset + len).div_ceil(chunk_size);
        let asked_to = self.asked_to.load(Ordering::Acquire);
        let batch = batch(next_chunk, self.window, asked_to)?;
        self.asked_to.store(batch.end, Ordering::Release);
        Some(batch)
    }
}

/// The chunks read-ahead fetches now, if any: the `window` chunks from
/// `next_chunk` on, less those an earlier read-ahead asked for (up to
/// `asked_to`), once they are at least half the window.
fn batch(next_chunk: u64, window: u64, asked_to: u64) -> Option<Range<u64>> {
    let end = next_chunk + window;
    let start = match (next_chunk..=end).contains(&asked_to) {
        true => asked_to,
        false => next_chunk,
    };
    (end - start >= window.div_ceil(2)).then_some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_ahead_fetches_half_windows() {
        // A new stream fetches the whole window.
        assert_eq!(batch(10, 8, 0), Some(10..18));
        // Then nothing until half of it was read...
        assert_eq!(batch(11, 8, 18), None);
        assert_eq!(batch(13, 8, 18), None);
        // ...then the next half window.
        assert_eq!(batch(14, 8, 18), Some(18..22));
        // A reader that passed what was fetched, or went back, starts over.
        assert_eq!(batch(30, 8, 22), Some(30..38));
        assert_eq!(batch(2, 8, 22), Some(2..10));
        assert_eq!(batch(5, 1, 5), Some(5..6));
        assert_eq!(batch(5, 1, 6), None);
    }

    #[test]
    fn only_a_read_that_continues_the_last_one_reads_ahead() {
        let ahead = ReadAhead::new(4);
        assert_eq!(ahead.after_read(0, 10, 10), None, "no read before it");
        assert_eq!(ahead.after_read(10, 10, 10), Some(2..6));
        assert_eq!(ahead.after_read(20, 10, 10), None, "asked already");
        assert_eq!(ahead.after_read(75, 5, 10), None, "a jump");
        assert_eq!(ReadAhead::new(0).after_read(u64::MAX, 0, 10), None);
    }
}
