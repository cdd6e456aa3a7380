//! Checking any 4 KiB block of a cached chunk without reading the rest.
//!
//! A chunk enters the disk cache only after it was verified against its
//! id (its BLAKE3 hash), and its file is private; what can go wrong with
//! it afterwards is local damage: torn or lost writes, bit rot, a file
//! truncated or swapped under another name. A [`BlockTable`] guards
//! against that: the CRC-32C of each 4 KiB block, made from the verified
//! bytes as they enter the cache, and sealed by a CRC-32C of the table
//! together with the chunk's id and length, so a table read back belongs
//! to that very chunk. A read checks only the blocks it reads. btrfs
//! checks its data blocks the same way.
//!
//! Why not BLAKE3 itself: every block's BLAKE3 chaining value merges up to
//! the id, so a table of them would tie each block to the id with no
//! trust in the table. `benches/engine.rs` measures both. A block's chaining
//! value costs five times a CRC-32C (0.98 us against 0.19), and a whole
//! chunk's BLAKE3 three times the CRC-32C of its blocks (137 us per MiB
//! against 46), which is the difference between a sequential reader from
//! the disk cache keeping up with a raw file or not. Against damage the
//! CRC-32C does as well.

use crate::format::ObjectId;

/// Bytes per checked block.
pub const BLOCK: usize = 4096;

/// Bytes per block checksum, and of the seal, in an encoded table.
const SUM_LEN: usize = 4;

/// The checksums of a chunk's 4 KiB blocks, in order (the last block may
/// be short).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockTable {
    sums: Box<[u32]>,
    chunk_len: u64,
}

impl BlockTable {
    /// The table of `chunk`, whose bytes were verified.
    pub fn of(chunk: &[u8]) -> BlockTable {
        BlockTable {
            sums: chunk.chunks(BLOCK).map(crc32c::crc32c).collect(),
            chunk_len: chunk.len() as u64,
        }
    }

    /// A table read back from `encoded`, for the chunk `id` of `chunk_len`
    /// bytes: `None` unless it is whole and sealed for that chunk.
    pub fn decode(encoded: &[u8], chunk_len: u64, id: &ObjectId) -> Option<BlockTable> {
        if encoded.len() != table_len(chunk_len) {
            return None;
        }
        let (sums, seal) = encoded.split_at(encoded.len() - SUM_LEN);
        if seal_of(id, chunk_len, sums).to_le_bytes() != seal {
            return None;
        }
        let sums = sums
            .chunks_exact(SUM_LEN)
            .map(|sum| u32::from_le_bytes(sum.try_into().expect("SUM_LEN bytes")))
            .collect();
        Some(BlockTable { sums, chunk_len })
    }

    /// The table as stored after its chunk `id`: the checksums, then the
    /// seal.
    pub fn encode(&self, id: &ObjectId) -> Vec<u8> {
        let mut out: Vec<u8> = self.sums.iter().flat_map(|sum| sum.to_le_bytes()).collect();
        let seal = seal_of(id, self.chunk_len, &out);
        out.extend_from_slice(&seal.to_le_bytes());
        out
    }

    /// Whether `data` is the chunk's bytes from block `first` on: whole
    /// blocks, but for the chunk's last block, which may be short.
    pub fn verify(&self, first: usize, data: &[u8]) -> bool {
        let blocks = data.len().div_ceil(BLOCK);
        let ends_at = (first * BLOCK + data.len()) as u64;
        let whole_blocks = data.len().is_multiple_of(BLOCK) || ends_at == self.chunk_len;
        whole_blocks
            && first + blocks <= self.sums.len()
            && data
                .chunks(BLOCK)
                .zip(&self.sums[first..])
                .all(|(block, sum)| crc32c::crc32c(block) == *sum)
    }
}

/// Bytes of the encoded table of a chunk of `chunk_len` bytes.
pub fn table_len(chunk_len: u64) -> usize {
    chunk_len.div_ceil(BLOCK as u64) as usize * SUM_LEN + SUM_LEN
}

/// What seals the encoded checksums `sums` to the chunk `id` of
/// `chunk_len` bytes.
fn seal_of(id: &ObjectId, chunk_len: u64, sums: &[u8]) -> u32 {
    let sealed = crc32c::crc32c_append(crc32c::crc32c(&id.0), &chunk_len.to_le_bytes());
    crc32c::crc32c_append(sealed, sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..len).map(|_| rng.u8(..)).collect()
    }

    proptest! {
        #[test]
        fn a_table_reads_back_for_its_own_chunk_only(len in 0usize..(300 * 1024), seed: u64) {
            let chunk = bytes(len, seed);
            let id = ObjectId::of(&chunk);
            let table = BlockTable::of(&chunk);
            let encoded = table.encode(&id);
            prop_assert_eq!(BlockTable::decode(&encoded, len as u64, &id), Some(table));
            prop_assert_eq!(BlockTable::decode(&encoded, len as u64, &ObjectId::of(b"x")), None);
        }

        #[test]
        fn every_block_range_verifies_and_a_changed_byte_does_not(
            len in 1usize..(64 * 1024),
            seed: u64,
            start: prop::sample::Index,
            count: prop::sample::Index,
            flip: prop::sample::Index,
        ) {
            let chunk = bytes(len, seed);
            let table = BlockTable::of(&chunk);
            let blocks = len.div_ceil(BLOCK);
            let first = start.index(blocks);
            let count = 1 + count.index(blocks - first);
            let range = first * BLOCK..((first + count) * BLOCK).min(len);
            prop_assert!(table.verify(first, &chunk[range.clone()]));
            let mut damaged = chunk[range].to_vec();
            let at = flip.index(damaged.len());
            damaged[at] ^= 1;
            prop_assert!(!table.verify(first, &damaged));
        }
    }

    #[test]
    fn a_damaged_table_or_one_of_another_length_is_refused() {
        let chunk = bytes(1 << 20, 1);
        let id = ObjectId::of(&chunk);
        let encoded = BlockTable::of(&chunk).encode(&id);
        assert!(BlockTable::decode(&encoded, 1 << 20, &id).is_some());
        assert!(BlockTable::decode(&encoded, (1 << 20) - 1, &id).is_none());
        assert!(BlockTable::decode(&encoded, (1 << 20) - BLOCK as u64, &id).is_none());
        let mut damaged = encoded.clone();
        damaged[100] ^= 1;
        assert!(BlockTable::decode(&damaged, 1 << 20, &id).is_none());
    }

    #[test]
    fn a_block_is_checked_at_its_own_place() {
        let chunk = bytes(3 * BLOCK, 2);
        let table = BlockTable::of(&chunk);
        assert!(table.verify(1, &chunk[BLOCK..2 * BLOCK]));
        assert!(!table.verify(2, &chunk[BLOCK..2 * BLOCK]), "moved block");
        assert!(!table.verify(0, &chunk[..BLOCK - 1]), "short block");
        assert!(!table.verify(2, &chunk[BLOCK..]), "past the end");
    }

    #[test]
    fn a_table_holds_a_sum_per_block_and_a_seal() {
        assert_eq!(table_len(0), 4);
        assert_eq!(table_len(1), 8);
        assert_eq!(table_len(BLOCK as u64), 8);
        assert_eq!(table_len(1 << 20), 1028);
    }
}
