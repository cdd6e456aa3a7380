//! What one epoch changed: per block, where its newest bytes are in the log.
//!
//! Each changed block has a slot: the log position of its data, or a mark
//! that a record zeroed it, with the sequence number of the record that
//! put it there. Whole chunks zeroed by a large discard are kept as ranges
//! instead, so discarding 2 TiB costs one range, not two million slots.
//! Within an epoch the higher sequence wins: writes that race on a block
//! resolve the same way in memory as in replay, and a record rewritten in
//! place (with a new sequence) wins over the records it follows in the log.

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
    /// A record zeroed the block.
    Zero,
}

/// One block's slot and the sequence of the record that set it
/// (sequence 0: the epoch did not change the block).
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    seq: u64,
    /// The data's position shifted left by one, or 1 for zeroes.
    at: u64,
}

impl Entry {
    fn new(seq: u64, slot: Slot) -> Entry {
        let at = match slot {
            Slot::Data(pos) => pos << 1,
            Slot::Zero => 1,
        };
        Entry { seq, at }
    }

    fn slot(self) -> Option<(u64, Slot)> {
        match (self.seq, self.at) {
            (0, _) => None,
            (seq, 1) => Some((seq, Slot::Zero)),
            (seq, at) => Some((seq, Slot::Data(at >> 1))),
        }
    }
}

/// The slots of one chunk.
/// The slots of one chunk's blocks. A chunk an epoch touches in a few
/// blocks keeps just those (a flush after every 4 KiB write makes an epoch
/// per write, thousands per commit interval, and a table of every block
/// for each was 4 KiB of memory per write); past [`SPARSE_BLOCKS_MAX`]
/// blocks it becomes a table indexed by block.
enum ChunkSlots {
    Sparse(Vec<(u32, Entry)>),
    Dense(Box<[Entry]>),
}

/// Blocks of a chunk kept as a list before it becomes a table: a list
/// this short is searched about as fast as the table is indexed.
const SPARSE_BLOCKS_MAX: usize = 16;

impl ChunkSlots {
    fn new() -> Self {
        ChunkSlots::Sparse(Vec::new())
    }

    /// Sets the block's slot unless it holds a newer one; says whether
    /// the block held no data in this epoch before (nothing, or zeroes).
    /// `blocks` is the chunk's number of blocks.
    fn set_if_newer(&mut self, blocks: usize, block: usize, seq: u64, slot: Slot) -> bool {
        let current = self.get(block);
        if current.is_none_or(|(newest, _)| newest < seq) {
            self.set(blocks, block, Entry::new(seq, slot));
        }
        !matches!(current, Some((_, Slot::Data(_))))
    }

    fn set(&mut self, blocks: usize, block: usize, entry: Entry) {
        match self {
            ChunkSlots::Dense(table) => table[block] = entry,
            ChunkSlots::Sparse(list) => {
                let key = u32::try_from(block).expect("a chunk has fewer than 2^32 blocks");
                match list.iter().position(|(b, _)| *b == key) {
                    Some(at) => list[at].1 = entry,
                    None if list.len() < SPARSE_BLOCKS_MAX => list.push((key, entry)),
                    None => {
                        let mut table = vec![Entry::default(); blocks].into_boxed_slice();
                        for &(b, kept) in list.iter() {
                            table[b as usize] = kept;
                        }
                        table[block] = entry;
                        *self = ChunkSlots::Dense(table);
                    }
                }
            }
        }
    }

    fn get(&self, block: usize) -> Option<(u64, Slot)> {
        match self {
            ChunkSlots::Dense(table) => table[block].slot(),
            ChunkSlots::Sparse(list) => list
                .iter()
                .find(|(b, _)| *b as usize == block)
                .and_then(|(_, entry)| entry.slot()),
        }
    }
}

/// Non-overlapping ranges of whole chunks, each zeroed by a record of some
/// sequence.
#[derive(Default)]
struct ZeroRanges {
    /// start chunk -> (end chunk, sequence)
    ranges: BTreeMap<u64, (u64, u64)>,
}

impl ZeroRanges {
    fn covering(&self, chunk: u64) -> Option<u64> {
        let (_, &(end, seq)) = self.ranges.range(..=chunk).next_back()?;
        (chunk < end).then_some(seq)
    }

    /// Adds `chunks` zeroed by record `seq`, keeping newer sequences where
    /// ranges overlap.
    fn insert(&mut self, chunks: Range<u64>, seq: u64) {
        let overlapping: Vec<(u64, u64, u64)> = self
            .ranges
            .range(..chunks.end)
            .rev()
            .take_while(|(_, (end, _))| *end > chunks.start)
            .map(|(&start, &(end, seq))| (start, end, seq))
            .collect();
        for (start, _, _) in &overlapping {
            self.ranges.remove(start);
        }
        let mut pieces = overlapping;
        pieces.push((chunks.start, chunks.end, seq));
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
            let Some(seq) = newest else { continue };
            match merged.last_mut() {
                Some(last) if last.1 == from && last.2 == seq => last.1 = to,
                _ => merged.push((from, to, seq)),
            }
        }
        for (start, end, seq) in merged {
            self.ranges.insert(start, (end, seq));
        }
    }

    fn iter(&self) -> impl Iterator<Item = (Range<u64>, u64)> + '_ {
        self.ranges.iter().map(|(&s, &(e, q))| (s..e, q))
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
    /// `data_pos` in the log, written by record `seq`. Returns how many of
    /// those bytes held no data in this epoch before: what the write adds
    /// to the epoch's upload.
    pub fn record_write(&self, offset: u64, len: u64, data_pos: u64, seq: u64) -> u64 {
        let mut new_blocks = 0;
        for (chunk, blocks) in self.split(offset, len) {
            let first_device_block = chunk * self.blocks_per_chunk() as u64 + blocks.start as u64;
            let mut slots = self.chunks.entry(chunk).or_insert_with(ChunkSlots::new);
            for (i, block) in blocks.enumerate() {
                let device_block = first_device_block + i as u64;
                let pos = data_pos + (device_block * BLOCK_SIZE - offset);
                let per_chunk = self.blocks_per_chunk();
                new_blocks += u64::from(slots.set_if_newer(per_chunk, block, seq, Slot::Data(pos)));
            }
        }
        new_blocks * BLOCK_SIZE
    }

    /// Records that `len` bytes at device `offset` were zeroed by record
    /// `seq`.
    pub fn record_zero(&self, offset: u64, len: u64, seq: u64) {
        let whole_start = offset.div_ceil(self.chunk_size);
        let whole_end = (offset + len) / self.chunk_size;
        if whole_start < whole_end {
            self.zeroes
                .write()
                .expect("zero ranges lock")
                .insert(whole_start..whole_end, seq);
            self.has_zeroes.store(true, Ordering::Release);
        }
        for (chunk, blocks) in self.split(offset, len) {
            if (whole_start..whole_end).contains(&chunk) {
                continue;
            }
            let mut slots = self.chunks.entry(chunk).or_insert_with(ChunkSlots::new);
            for block in blocks {
                slots.set_if_newer(self.blocks_per_chunk(), block, seq, Slot::Zero);
            }
        }
    }

    /// Whether every block of `offset..offset+len` reads, in this epoch,
    /// from the log data that starts at `data_pos` (so that no other
    /// record of the epoch shows through in that range).
    pub fn shows_only(&self, offset: u64, len: u64, data_pos: u64) -> bool {
        self.split(offset, len).all(|(chunk, blocks)| {
            let first = chunk * self.chunk_size + blocks.start as u64 * BLOCK_SIZE;
            let mut found = vec![None; blocks.len()];
            self.resolve(chunk, blocks, &mut found, |slot| slot);
            found.iter().enumerate().all(|(i, slot)| {
                *slot
                    == Some(Slot::Data(
                        data_pos + first - offset + i as u64 * BLOCK_SIZE,
                    ))
            })
        })
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
        let range_seq = self.zero_range_covering(chunk);
        let slots = self.chunks.get(&chunk);
        if range_seq.is_none() && slots.is_none() {
            return;
        }
        for (entry, block) in out.iter_mut().zip(blocks) {
            if entry.is_some() {
                continue;
            }
            let slot = slots.as_ref().and_then(|s| s.get(block));
            let newest = match (slot, range_seq) {
                (Some((seq, _)), Some(zeroed)) if seq < zeroed => Some(Slot::Zero),
                (Some((_, slot)), _) => Some(slot),
                (None, Some(_)) => Some(Slot::Zero),
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

    /// Ranges of whole chunks zeroed, with the sequence that zeroed them.
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
    fn higher_sequences_win() {
        let overlay = Overlay::new(CHUNK);
        overlay.record_write(4096, 8192, 1000, 1000);
        overlay.record_write(4096, 4096, 500, 500); // an earlier record, applied late
        let slots = resolve(&overlay, 0);
        assert_eq!(slots[0], None);
        assert_eq!(slots[1], Some(Slot::Data(1000)));
        assert_eq!(slots[2], Some(Slot::Data(1000 + 4096)));
    }

    #[test]
    fn a_record_rewritten_in_place_wins_over_the_records_after_it() {
        let overlay = Overlay::new(CHUNK);
        overlay.record_write(0, 8192, 100, 1);
        overlay.record_write(0, 8192, 9000, 2);
        assert!(overlay.shows_only(0, 8192, 9000));
        assert!(!overlay.shows_only(0, 8192, 100), "hidden by the later one");
        assert_eq!(overlay.record_write(0, 8192, 100, 3), 0, "no new bytes");
        assert_eq!(resolve(&overlay, 0)[1], Some(Slot::Data(100 + 4096)));
        assert!(overlay.shows_only(0, 8192, 100));
        overlay.record_zero(4096, 4096, 4);
        assert!(!overlay.shows_only(0, 8192, 100), "partly zeroed since");
        overlay.record_write(0, 8192, 100, 5);
        assert!(overlay.shows_only(0, 8192, 100));
        overlay.record_zero(0, 1 << 20, 6);
        assert!(!overlay.shows_only(0, 8192, 100), "in a zeroed range");
    }

    #[test]
    fn overwrites_add_nothing_to_the_upload() {
        let overlay = Overlay::new(CHUNK);
        assert_eq!(overlay.record_write(0, 8192, 100, 100), 8192);
        assert_eq!(
            overlay.record_write(4096, 8192, 9000, 9000),
            4096,
            "one block new"
        );
        assert_eq!(
            overlay.record_write(0, 12288, 20000, 20000),
            0,
            "all overwrites"
        );
        overlay.record_zero(16384, 4096, 30000);
        assert_eq!(
            overlay.record_write(16384, 4096, 40000, 40000),
            4096,
            "zeroes are not data"
        );
    }

    #[test]
    fn writes_spanning_chunks_map_each_block() {
        let overlay = Overlay::new(CHUNK);
        overlay.record_write(CHUNK - 4096, 8192, 100, 100);
        assert_eq!(resolve(&overlay, 0)[15], Some(Slot::Data(100)));
        assert_eq!(resolve(&overlay, 1)[0], Some(Slot::Data(100 + 4096)));
    }

    #[test]
    fn whole_chunk_zeroes_are_ranges_and_later_writes_beat_them() {
        let overlay = Overlay::new(CHUNK);
        overlay.record_write(CHUNK, 4096, 100, 100);
        overlay.record_zero(0, 1 << 40, 200);
        assert_eq!(resolve(&overlay, 1)[0], Some(Slot::Zero));
        overlay.record_write(CHUNK, 4096, 300, 300);
        assert_eq!(resolve(&overlay, 1)[0], Some(Slot::Data(300)));
        assert_eq!(resolve(&overlay, 1)[1], Some(Slot::Zero));
        assert_eq!(resolve(&overlay, 1_000_000)[5], Some(Slot::Zero));
        assert_eq!(overlay.zeroed_ranges().len(), 1);
    }

    #[test]
    fn partial_zeroes_are_slots() {
        let overlay = Overlay::new(CHUNK);
        overlay.record_zero(4096, CHUNK, 50);
        let first = resolve(&overlay, 0);
        assert_eq!(first[0], None);
        assert_eq!(first[1], Some(Slot::Zero));
        assert_eq!(resolve(&overlay, 1)[0], Some(Slot::Zero));
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

    proptest::proptest! {
        /// A chunk's slots, sparse or grown into a table, against a table
        /// of every block: the same answers after any writes, in any order.
        #[test]
        fn chunk_slots_answer_as_a_table_does(
            writes in proptest::collection::vec((0usize..64, 1u64..50, proptest::bool::ANY), 0..120)
        ) {
            let mut slots = ChunkSlots::new();
            let mut table = vec![Entry::default(); 64];
            for (i, &(block, seq, zero)) in writes.iter().enumerate() {
                let slot = if zero { Slot::Zero } else { Slot::Data(4096 * i as u64) };
                let held_data = matches!(table[block].slot(), Some((_, Slot::Data(_))));
                if table[block].slot().is_none_or(|(newest, _)| newest < seq) {
                    table[block] = Entry::new(seq, slot);
                }
                proptest::prop_assert_eq!(slots.set_if_newer(64, block, seq, slot), !held_data);
                for (b, entry) in table.iter().enumerate() {
                    proptest::prop_assert_eq!(slots.get(b), entry.slot());
                }
            }
        }
    }
}
