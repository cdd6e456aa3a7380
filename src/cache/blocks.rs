//! Verifying any 4 KiB block of a chunk against the chunk's id, without
//! reading the rest of the chunk.
//!
//! A chunk's id is its BLAKE3 hash, and BLAKE3 is a tree hash: the input
//! is cut into 1 KiB pieces, and the root is made by merging chaining
//! values (CVs) up a left-balanced binary tree. Every 4 KiB block at a
//! 4 KiB boundary is a whole subtree of that tree, so its CV depends only
//! on its bytes and offset. A [`BlockTable`] lists the CVs of a chunk's
//! blocks. Merging them up the tree gives the chunk's hash: a table read
//! back from disk is checked against the id once ([`BlockTable::decode`]),
//! and from then on any block is checked against its entry
//! ([`BlockTable::verify`]) by hashing that block alone.
//!
//! This is the bottom level of a Bao outboard. The upper levels are left
//! out: they cost another 8 KiB per MiB to store, and a table is checked
//! whole when it is loaded and then kept in memory, so they would save
//! nothing. `benches/engine.rs` measures this against a per-block CRC-32C
//! table, which costs less per block but is not tied to the id.
//!
//! Chunks of one block or less have no table: the whole chunk is the block,
//! and its hash is its id.

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};

use crate::format::ObjectId;

/// Bytes per verified block.
pub const BLOCK: usize = 4096;

/// Bytes per CV in an encoded table.
const CV_LEN: usize = 32;

/// The CVs of a chunk's 4 KiB blocks, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockTable {
    cvs: Box<[ChainingValue]>,
    chunk_len: u64,
}

impl BlockTable {
    /// The table of `chunk`, or `None` if it is one block or less.
    pub fn of(chunk: &[u8]) -> Option<BlockTable> {
        if chunk.len() <= BLOCK {
            return None;
        }
        let cvs = chunk
            .chunks(BLOCK)
            .enumerate()
            .map(|(index, block)| block_cv(index, block))
            .collect();
        Some(BlockTable {
            cvs,
            chunk_len: chunk.len() as u64,
        })
    }

    /// A table read back from `encoded`, for a chunk of `chunk_len` bytes
    /// named `id`: `None` unless it is whole and hashes up to `id`.
    pub fn decode(encoded: &[u8], chunk_len: u64, id: &ObjectId) -> Option<BlockTable> {
        if chunk_len <= BLOCK as u64 || encoded.len() != table_len(chunk_len) {
            return None;
        }
        let cvs = encoded
            .chunks_exact(CV_LEN)
            .map(|cv| cv.try_into().expect("CV_LEN bytes"))
            .collect();
        let table = BlockTable { cvs, chunk_len };
        (table.root() == id.0).then_some(table)
    }

    /// The table as stored after its chunk: the CVs, in order.
    pub fn encode(&self) -> Vec<u8> {
        self.cvs.concat()
    }

    /// Whether `data` is the chunk's bytes from block `first` on: whole
    /// blocks, but for the chunk's last block, which may be short.
    pub fn verify(&self, first: usize, data: &[u8]) -> bool {
        let blocks = data.len().div_ceil(BLOCK);
        let ends_at = (first * BLOCK + data.len()) as u64;
        let whole_blocks = data.len().is_multiple_of(BLOCK) || ends_at == self.chunk_len;
        whole_blocks
            && first + blocks <= self.cvs.len()
            && data
                .chunks(BLOCK)
                .zip(&self.cvs[first..])
                .enumerate()
                .all(|(at, (block, cv))| block_cv(first + at, block) == *cv)
    }

    /// Bytes the table holds in memory.
    pub fn weight(&self) -> u32 {
        (self.cvs.len() * CV_LEN) as u32
    }

    /// The chunk's BLAKE3 hash, merged up from the CVs.
    fn root(&self) -> [u8; 32] {
        let left_len = left_subtree_len(self.chunk_len);
        let split = (left_len / BLOCK as u64) as usize;
        let left = subtree_cv(&self.cvs[..split], left_len);
        let right = subtree_cv(&self.cvs[split..], self.chunk_len - left_len);
        *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes()
    }
}

/// Bytes of the encoded table of a chunk of `chunk_len` bytes.
pub fn table_len(chunk_len: u64) -> usize {
    match chunk_len <= BLOCK as u64 {
        true => 0,
        false => chunk_len.div_ceil(BLOCK as u64) as usize * CV_LEN,
    }
}

/// The CV of block `index`, whose bytes are `block`.
fn block_cv(index: usize, block: &[u8]) -> ChainingValue {
    blake3::Hasher::new()
        .set_input_offset((index * BLOCK) as u64)
        .update(block)
        .finalize_non_root()
}

/// The CV of the subtree made of the blocks `cvs`, `len` bytes in all.
/// BLAKE3 splits a subtree of more than one block where its left part is
/// the largest power of two of 1 KiB pieces that leaves some on the right:
/// at least one block, and always at a block boundary.
fn subtree_cv(cvs: &[ChainingValue], len: u64) -> ChainingValue {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let left_len = left_subtree_len(len);
    let split = (left_len / BLOCK as u64) as usize;
    let left = subtree_cv(&cvs[..split], left_len);
    let right = subtree_cv(&cvs[split..], len - left_len);
    merge_subtrees_non_root(&left, &right, Mode::Hash)
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
        fn a_table_hashes_up_to_the_chunks_id(len in (BLOCK + 1)..(300 * 1024), seed: u64) {
            let chunk = bytes(len, seed);
            let id = ObjectId::of(&chunk);
            let table = BlockTable::of(&chunk).unwrap();
            let decoded = BlockTable::decode(&table.encode(), len as u64, &id);
            prop_assert_eq!(decoded, Some(table));
        }

        #[test]
        fn every_block_range_verifies_and_a_changed_byte_does_not(
            len in (BLOCK + 1)..(64 * 1024),
            seed: u64,
            start: prop::sample::Index,
            count: prop::sample::Index,
            flip: prop::sample::Index,
        ) {
            let chunk = bytes(len, seed);
            let table = BlockTable::of(&chunk).unwrap();
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
    fn a_table_of_another_chunk_or_length_is_refused() {
        let chunk = bytes(1 << 20, 1);
        let id = ObjectId::of(&chunk);
        let encoded = BlockTable::of(&chunk).unwrap().encode();
        let other = ObjectId::of(b"other");
        assert!(BlockTable::decode(&encoded, 1 << 20, &other).is_none());
        assert!(BlockTable::decode(&encoded, (1 << 20) - BLOCK as u64, &id).is_none());
        // A length one short keeps the tree's shape, so only the last
        // block can tell: it no longer verifies.
        let short = BlockTable::decode(&encoded, (1 << 20) - 1, &id).unwrap();
        let last = (1 << 20) / BLOCK - 1;
        assert!(!short.verify(last, &chunk[last * BLOCK..(1 << 20) - 1]));
        let mut damaged = encoded.clone();
        damaged[100] ^= 1;
        assert!(BlockTable::decode(&damaged, 1 << 20, &id).is_none());
    }

    #[test]
    fn a_block_is_checked_at_its_own_place() {
        let chunk = bytes(3 * BLOCK, 2);
        let table = BlockTable::of(&chunk).unwrap();
        assert!(table.verify(1, &chunk[BLOCK..2 * BLOCK]));
        assert!(!table.verify(2, &chunk[BLOCK..2 * BLOCK]), "moved block");
        assert!(!table.verify(0, &chunk[..BLOCK - 1]), "short block");
        assert!(!table.verify(2, &chunk[BLOCK..]), "past the end");
    }

    #[test]
    fn small_chunks_have_no_table() {
        assert!(BlockTable::of(&[7u8; BLOCK]).is_none());
        assert_eq!(table_len(BLOCK as u64), 0);
        assert_eq!(table_len(BLOCK as u64 + 1), 2 * CV_LEN);
    }
}
