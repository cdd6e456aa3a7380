//! When a chunk read from disk earns a place in memory.
//!
//! A read of part of a chunk from disk costs a few microseconds more than
//! from memory (one pread and one 4 KiB hash: `disk_tier_read` in
//! `benches/engine.rs`); promoting the chunk costs reading and hashing all
//! of it, and takes its room in memory from another chunk. When the
//! reads wander over more than memory holds, promotion buys nothing: what
//! it brings in, a later promotion pushes out before it has paid off. So
//! a chunk read in parts is promoted only once its reads from disk add up
//! to four times its length (a thousand 4 KiB reads of a 1 MiB chunk): a
//! hot chunk gets there quickly, and random reads over a large working
//! set promote one chunk per four chunks' worth of reads. A chunk read
//! whole is promoted the second time, from the bytes just read, which
//! costs nothing more; a single scan passes through without evicting what
//! was there. The count starts over once a chunk is promoted, and is
//! forgotten for chunks not read in a while.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use moka::sync::Cache;

use crate::format::ObjectId;

/// Chunk lengths read from disk in parts after which a chunk is promoted.
const PARTS_PROMOTED_AFTER: u64 = 4;

/// Chunks whose disk reads are counted at most (a few hundred KiB).
const TRACKED_CHUNKS: u64 = 4096;

/// Bytes each chunk served from disk since it was last promoted.
#[derive(Clone)]
pub struct Promotion {
    served: Cache<ObjectId, Arc<AtomicU64>>,
}

impl Default for Promotion {
    fn default() -> Self {
        Promotion {
            served: Cache::new(TRACKED_CHUNKS),
        }
    }
}

impl Promotion {
    /// Counts `bytes` of chunk `id` (`chunk_len` long) served from disk;
    /// true when the chunk should now be promoted to memory.
    pub fn served(&self, id: &ObjectId, bytes: usize, chunk_len: usize) -> bool {
        let count = self.served.get_with(*id, Arc::default);
        let before = count.fetch_add(bytes as u64, Relaxed);
        let earned = match bytes >= chunk_len {
            true => chunk_len as u64,
            false => PARTS_PROMOTED_AFTER * chunk_len as u64,
        };
        let promote = before >= earned;
        if promote {
            self.served.invalidate(id);
        }
        promote
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_read_whole_is_promoted_the_second_time() {
        let promotion = Promotion::default();
        let id = ObjectId::of(b"a");
        assert!(!promotion.served(&id, 1 << 20, 1 << 20));
        assert!(promotion.served(&id, 1 << 20, 1 << 20));
        assert!(!promotion.served(&id, 1 << 20, 1 << 20), "counted anew");
    }

    #[test]
    fn a_chunk_read_by_blocks_is_promoted_after_four_chunks_worth() {
        let promotion = Promotion::default();
        let id = ObjectId::of(b"b");
        let reads = (0..=1024)
            .take_while(|_| !promotion.served(&id, 4096, 1 << 20))
            .count();
        assert_eq!(reads, 1024);
    }
}
