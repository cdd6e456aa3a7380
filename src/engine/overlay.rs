//! What one epoch changed: per block, where its newest bytes are in the log.
//!
//! Each changed block has a slot: the log position of its data, or the
//! position of the record that zeroed it. Whole chunks zeroed by a large
//! discard are kept as ranges instead, so discarding 2 TiB costs one range,
//! not two million slots. Within an epoch the later log position wins:
//! writes that race on a block resolve the same way in memory as in replay.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use dashmap::DashMap;

use crate::format::BLOCK_SIZE;

/// Where an epoch says a block's content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The block's 4 KiB start at this position of the epoch's segment.
    Data(u64),
    /// The block was zeroed by the record at this position.
    Zero(u64),
}

impl Slot {
    fn position(self) -> u64 {
        match self {
            Slot::Data(pos) | Slot::Zero(pos) => pos,
        }
    }

    fn pack(self) -> u64 {
        match self {
            Slot::Data(pos) => pos << 1,
            Slot::Zero(pos) => (pos << 1) | 1,
        }
    }

    fn unpack(raw: u64) -> Option<Slot> {
        match raw {
            0 => None,
            _ if raw & 1 == 1 => Some(Slot::Zero(raw >> 1)),
            _ => Some(Slot::Data(raw >> 1)),
        }
    }
}

/// The slots of one chunk.
struct ChunkSlots(Box<[u64]>);

impl ChunkSlots {
    fn new(blocks: usize) -> Self {
        ChunkSlots(vec![0; blocks].into_boxed_slice())
    }

    /// Sets the block's slot unless it holds a newer one; says whether
    /// the block held no data in this epoch before (nothing, or zeroes).
    fn set_if_newer(&mut self, block: usize, slot: Slot) -> bool {
        let current = Slot::unpack(self.0[block]);
        if current.is_none_or(|c| c.position() < slot.position()) {
            self.0[block] = slot.pack();
        }
        !matches!(current, Some(Slot::Data(_)))
    }

    fn get(&self, block: usize) -> Option<Slot> {
        Slot::unpack(self.0[block])
    }
}

/// Non-overlapping ranges of whole chunks, each zeroed at a log position.
#[derive(Default)]
struct ZeroRanges {
    /// start chunk -> (end chunk, position)
    ranges: BTreeMap<u64, (u64, u64)>,
}

impl ZeroRanges {
    fn covering(&self, chunk: u64) -> Option<u64> {
        let (_, &(end, pos)) = self.ranges.range(..=chunk).next_back()?;
        (chunk < end).then_some(pos)
    }

    /// Adds `chunks` zeroed at `pos`, keeping newer positions where ranges
    /// overlap.
    fn insert(&mut self, chunks: Range<u64>, pos: u64) {
        let overlapping: Vec<(u64, u64, u64)> = self
            .ranges
            .range(..chunks.end)
            .rev()
            .take_while(|(_, (end, _))| *end > chunks.start)
            .map(|(&start, &(end, pos))| (start, end, pos))
            .collect();
        for (start, _, _) in &overlapping {
            self.ranges.remove(start);
        }
        let mut pieces = overlapping;
        pieces.push((chunks.start, chunks.end, pos));
        let mut edges: Vec<u64> = pieces.iter().flat_map(|p| [p.0, p.1]).collect();
        edges.sort_unstable();
        edges.dedup();
        let mut merged: Vec<(u64, u64, u64)> = Vec::new();
        for window in edges.windows(2) {
            let (from, to) = (window[0], window[1]);
            let newest = pieces
                .iter()
                .filter(|p| p.0 <= from && to <= p.1)
                .map(|p| p.2)
                .max();
            let Some(pos) = newest else { continue };
            match merged.last_mut() {
                Some(last) if last.1 == from && last.2 == pos => last.1 = to,
                _ => merged.push((from, to, pos)),
            }
        }
        for (start, end, pos) in merged {
            self.ranges.insert(start, (end, pos));
        }
    }

    fn iter(&self) -> impl Iterator<Item = (Range<u64>, u64)> + '_ {
        self.ranges.iter().map(|(&s, &(e, p))| (s..e, p))
    }
}

/// Everything one epoch changed.
pub struct Overlay {
    chunk_size: u64,
    chunks: DashMap<u64, ChunkSlots>,
    zeroes: RwLock<ZeroRanges>,
    has_zeroes: AtomicBool,
}

impl Overlay {
    pub fn new(chunk_size: u64) -> Self {
        Overlay {
            chunk_size,
            chunks: DashMap::new(),
            zeroes: RwLock::default(),
            has_zeroes: AtomicBool::new(false),
        }
    }

    fn blocks_per_chunk(&self) -> usize {
        (self.chunk_size / BLOCK_SIZE) as usize
    }

    /// Records that `len` bytes at device `offset` are now the bytes at
    /// `data_pos` in the log. Returns how many of those bytes held no data
    /// in this epoch before: what the write adds to the epoch's upload.
    pub fn record_write(&self, offset: u64, len: u64, data_pos: u64) -> u64 {
        let mut new_blocks = 0;
        for (chunk, blocks) in self.split(offset, len) {
            let first_device_block = chunk * self.blocks_per_chunk() as u64 + blocks.start as u64;
            let mut slots = self
                .chunks
                .entry(chunk)
                .or_insert_with(|| ChunkSlots::new(self.blocks_per_chunk()));
            for (i, block) in blocks.enumerate() {
                let device_block = first_device_block + i as u64;
                let pos = data_pos + (device_block * BLOCK_SIZE - offset);
                new_blocks += u64::from(slots.set_if_newer(block, Slot::Data(pos)));
            }
        }
        new_blocks * BLOCK_SIZE
    }

    /// Records that `len` bytes at device `offset` were zeroed by the
    /// record at `record_pos`.
    pub fn record_zero(&self, offset: u64, len: u64, record_pos: u64) {
        let whole_start = offset.div_ceil(self.chunk_size);
        let whole_end = (offset + len) / self.chunk_size;
        if whole_start < whole_end {
            self.zeroes
                .write()
                .expect("zero ranges lock")
                .insert(whole_start..whole_end, record_pos);
            self.has_zeroes.store(true, Ordering::Release);
        }
        for (chunk, blocks) in self.split(offset, len) {
            if (whole_start..whole_end).contains(&chunk) {
                continue;
            }
            let mut slots = self
                .chunks
                .entry(chunk)
                .or_insert_with(|| ChunkSlots::new(self.blocks_per_chunk()));
            for block in blocks {
                slots.set_if_newer(block, Slot::Zero(record_pos));
            }
        }
    }

    /// The chunks and blocks within them that `offset..offset+len` covers.
    /// Whole chunks inside a zeroed range are skipped by the caller.
    fn split(&self, offset: u64, len: u64) -> impl Iterator<Item = (u64, Range<usize>)> + '_ {
        let end = offset + len;
        let first = offset / self.chunk_size;
        let last = end.div_ceil(self.chunk_size);
        (first..last).map(move |chunk| {
            let chunk_start = chunk * self.chunk_size;
            let from = offset.max(chunk_start) - chunk_start;
            let to = end.min(chunk_start + self.chunk_size) - chunk_start;
            (
                chunk,
                (from / BLOCK_SIZE) as usize..(to / BLOCK_SIZE) as usize,
            )
        })
    }

    /// Fills the unresolved (`None`) entries of `out`, which stand for
    /// `blocks` of `chunk`, with what this epoch says about them.
    pub fn resolve<T>(
        &self,
        chunk: u64,
        blocks: Range<usize>,
        out: &mut [Option<T>],
        mut make: impl FnMut(Slot) -> T,
    ) {
        let range_pos = self.zero_range_covering(chunk);
        let slots = self.chunks.get(&chunk);
        if range_pos.is_none() && slots.is_none() {
            return;
        }
        for (entry, block) in out.iter_mut().zip(blocks) {
            if entry.is_some() {
                continue;
            }
            let slot = slots.as_ref().and_then(|s| s.get(block));
            let newest = match (slot, range_pos) {
                (Some(slot), Some(pos)) if slot.position() < pos => Some(Slot::Zero(pos)),
                (Some(slot), _) => Some(slot),
                (None, Some(pos)) => Some(Slot::Zero(pos)),
                (None, None) => None,
            };
            *entry = newest.map(&mut make);
        }
    }

    fn zero_range_covering(&self, chunk: u64) -> Option<u64> {
        if !self.has_zeroes.load(Ordering::Acquire) {
            return None;
        }
        self.zeroes
            .read()
            .expect("zero ranges lock")
            .covering(chunk)
    }

    /// Chunks with block-level changes.
    pub fn touched_chunks(&self) -> Vec<u64> {
        self.chunks.iter().map(|entry| *entry.key()).collect()
    }

    /// Ranges of whole chunks zeroed, with the position that zeroed them.
    pub fn zeroed_ranges(&self) -> Vec<(Range<u64>, u64)> {
        self.zeroes
            .read()
            .expect("zero ranges lock")
            .iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u64 = 64 << 10;

    fn resolve(overlay: &Overlay, chunk: u64) -> Vec<Option<Slot>> {
        let mut out = vec![None; 16];
        overlay.resolve(chunk, 0..16, &mut out, |slot| slot);
        out
    }

    #[test]
    fn later_positions_win() {
        let overlay = Overlay::new(CHUNK);
        overlay.record_write(4096, 8192, 1000);
        overlay.record_write(4096, 4096, 500); // an earlier record, applied late
        let slots = resolve(&overlay, 0);
        assert_eq!(slots[0], None);
        assert_eq!(slots[1], Some(Slot::Data(1000)));
        assert_eq!(slots[2], Some(Slot::Data(1000 + 4096)));
    }

    #[test]
    fn overwrites_add_nothing_to_the_upload() {
        let overlay = Overlay::new(CHUNK);
        assert_eq!(overlay.record_write(0, 8192, 100), 8192);
        assert_eq!(
            overlay.record_write(4096, 8192, 9000),
            4096,
            "one block new"
        );
        assert_eq!(overlay.record_write(0, 12288, 20000), 0, "all overwrites");
        overlay.record_zero(16384, 4096, 30000);
        assert_eq!(
            overlay.record_write(16384, 4096, 40000),
            4096,
            "zeroes are not data"
        );
    }

    #[test]
    fn writes_spanning_chunks_map_each_block() {
        let overlay = Overlay::new(CHUNK);
        overlay.record_write(CHUNK - 4096, 8192, 100);
        assert_eq!(resolve(&overlay, 0)[15], Some(Slot::Data(100)));
        assert_eq!(resolve(&overlay, 1)[0], Some(Slot::Data(100 + 4096)));
    }

    #[test]
    fn whole_chunk_zeroes_are_ranges_and_later_writes_beat_them() {
        let overlay = Overlay::new(CHUNK);
        overlay.record_write(CHUNK, 4096, 100);
        overlay.record_zero(0, 1 << 40, 200);
        assert_eq!(resolve(&overlay, 1)[0], Some(Slot::Zero(200)));
        overlay.record_write(CHUNK, 4096, 300);
        assert_eq!(resolve(&overlay, 1)[0], Some(Slot::Data(300)));
        assert_eq!(resolve(&overlay, 1)[1], Some(Slot::Zero(200)));
        assert_eq!(resolve(&overlay, 1_000_000)[5], Some(Slot::Zero(200)));
        assert_eq!(overlay.zeroed_ranges().len(), 1);
    }

    #[test]
    fn partial_zeroes_are_slots() {
        let overlay = Overlay::new(CHUNK);
        overlay.record_zero(4096, CHUNK, 50);
        let first = resolve(&overlay, 0);
        assert_eq!(first[0], None);
        assert_eq!(first[1], Some(Slot::Zero(50)));
        assert_eq!(resolve(&overlay, 1)[0], Some(Slot::Zero(50)));
        assert_eq!(resolve(&overlay, 1)[1], None);
    }

    #[test]
    fn zero_ranges_merge_by_position() {
        let mut ranges = ZeroRanges::default();
        ranges.insert(0..10, 5);
        ranges.insert(5..20, 3);
        ranges.insert(8..12, 9);
        assert_eq!(ranges.covering(4), Some(5));
        assert_eq!(ranges.covering(7), Some(5));
        assert_eq!(ranges.covering(9), Some(9));
        assert_eq!(ranges.covering(15), Some(3));
        assert_eq!(ranges.covering(20), None);
        let all: Vec<_> = ranges.iter().collect();
        assert_eq!(all, vec![(0..8, 5), (8..12, 9), (12..20, 3)]);
    }
}
