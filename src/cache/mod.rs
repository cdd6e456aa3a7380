//! The caches in front of the object store: the only user of moka.
//!
//! [`ChunkCache`] keeps decompressed, verified chunks in two tiers: memory
//! (weighed by bytes) and disk (bounded, kept across restarts). A chunk is
//! named by its hash, so a cached copy can never be stale; a miss in both
//! tiers runs the caller's loader once however many readers wait for it.
//! The disk tier holds what was fetched from the store; chunks a commit
//! just made go to memory only, since writing them to disk as well would
//! double the local writes of every write-heavy workload (and, on disks
//! that allocate slowly, stall the whole machine in dirty-page writeback).
//! [`MemoryCache`] also holds the engine's decoded map pages.
//!
//! A read of part of a chunk that is on disk but not in memory reads only
//! the 4 KiB blocks it needs, each checked against a table of checksums
//! sealed to the chunk's id (see [`blocks`]), and promotes the chunk to memory only once its reads have
//! earned it (see [`promotion`]): a working set larger than memory is
//! served from disk, not thrashed through memory a whole chunk per read.
//!
//! Copies to disk are written in the background; [`ChunkCache::settle`]
//! waits for those in flight, so a volume that closes leaves a disk tier
//! that its next open finds whole.

pub mod blocks;
mod disk;
mod memory;
mod promotion;

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::Semaphore;

pub use disk::DiskCache;
pub use memory::{MemoryCache, Weighted};
use promotion::Promotion;

use crate::format::ObjectId;

/// Hits and misses of both tiers since the cache was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CacheCounters {
    pub memory_hits: u64,
    pub memory_misses: u64,
    pub disk_hits: u64,
    pub disk_misses: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

#[derive(Default)]
struct Counts {
    memory_hits: AtomicU64,
    memory_misses: AtomicU64,
    disk_hits: AtomicU64,
    disk_misses: AtomicU64,
}

/// Decompressed chunks, in memory and on disk.
#[derive(Clone)]
pub struct ChunkCache {
    memory: MemoryCache<ObjectId, Bytes>,
    disk: Option<DiskCache>,
    promotion: Promotion,
    counts: Arc<Counts>,
    /// A permit per disk write in flight; closed once the cache is
    /// settled, so that no more start.
    disk_writes: Arc<Semaphore>,
}

/// Disk reads up to this many bytes run on the calling task: a pread from
/// the page cache takes less than handing it to another thread.
const INLINE_DISK_READ_MAX: usize = 64 << 10;

/// Disk writes in flight at most; a fetch past that is not copied to disk.
const DISK_WRITES_MAX: u32 = 1 << 16;

impl ChunkCache {
    pub fn new(memory_bytes: u64, disk: Option<DiskCache>) -> ChunkCache {
        ChunkCache {
            memory: MemoryCache::new(memory_bytes),
            disk,
            promotion: Promotion::default(),
            counts: Arc::default(),
            disk_writes: Arc::new(Semaphore::new(DISK_WRITES_MAX as usize)),
        }
    }

    /// The chunk `id` if it is in memory: the fast path, whose future is
    /// small (callers box the slower [`ChunkCache::get_or_fetch`]).
    pub async fn get_from_memory(&self, id: &ObjectId) -> Option<Bytes> {
        let hit = self.memory.get(id).await;
        if hit.is_some() {
            self.counts.memory_hits.fetch_add(1, Relaxed);
        }
        hit
    }

    /// Whether the chunk `id` is in memory or on disk (not counted as a
    /// hit or miss).
    pub fn is_cached(&self, id: &ObjectId) -> bool {
        self.memory.contains(id) || self.disk.as_ref().is_some_and(|disk| disk.contains(id))
    }

    /// The chunk `id` from memory, else disk, else `fetch` (which must
    /// return verified bytes); what was fetched fills both tiers.
    pub async fn get_or_fetch<E, F>(&self, id: ObjectId, fetch: F) -> Result<Bytes, Arc<E>>
    where
        F: Future<Output = Result<Bytes, E>>,
        E: Send + Sync + 'static,
    {
        if let Some(hit) = self.get_from_memory(&id).await {
            return Ok(hit);
        }
        self.counts.memory_misses.fetch_add(1, Relaxed);
        self.load_whole(id, fetch).await
    }

    /// Bytes `range` of chunk `id`, which the caller just missed in
    /// memory ([`ChunkCache::get_from_memory`]): from disk (reading only
    /// the blocks around `range`), else from the whole chunk `fetch`
    /// returns (verified), which fills both tiers.
    pub async fn load_range_or_fetch<E, F>(
        &self,
        id: ObjectId,
        range: Range<usize>,
        fetch: F,
    ) -> Result<Bytes, Arc<E>>
    where
        F: Future<Output = Result<Bytes, E>>,
        E: Send + Sync + 'static,
    {
        self.counts.memory_misses.fetch_add(1, Relaxed);
        if let Some(part) = self.load_range_from_disk(id, range.clone()).await {
            return Ok(part);
        }
        let chunk = self.load_whole(id, fetch).await?;
        Ok(chunk.slice(range))
    }

    /// The chunk `id` from disk, else `fetch`, into memory.
    async fn load_whole<E, F>(&self, id: ObjectId, fetch: F) -> Result<Bytes, Arc<E>>
    where
        F: Future<Output = Result<Bytes, E>>,
        E: Send + Sync + 'static,
    {
        self.memory
            .get_or_load(id, async {
                if let Some(hit) = self.load_from_disk(id).await {
                    return Ok(hit);
                }
                let data = fetch.await?;
                self.store_on_disk(id, data.clone());
                Ok(data)
            })
            .await
    }

    /// Adds a chunk the caller just made (after an upload, say), in
    /// memory only.
    pub async fn insert(&self, id: ObjectId, data: Bytes) {
        self.memory.insert(id, data).await;
    }

    /// Bytes `range` of chunk `id` if the disk tier has them (misses are
    /// counted by the whole load that follows), promoting the chunk when
    /// its reads have earned it.
    async fn load_range_from_disk(&self, id: ObjectId, range: Range<usize>) -> Option<Bytes> {
        let disk = self.disk.as_ref()?;
        let (part, chunk_len) = match range.len() <= INLINE_DISK_READ_MAX {
            true => disk.load_range(&id, range),
            false => {
                let disk = disk.clone();
                crate::blocking::run(move || disk.load_range(&id, range)).await
            }
        }?;
        self.counts.disk_hits.fetch_add(1, Relaxed);
        if self.promotion.served(&id, part.len(), chunk_len) {
            self.promote(id, &part, chunk_len).await;
        }
        Some(part)
    }

    /// Puts chunk `id` in memory: `part`, if it is the whole chunk, else
    /// the chunk read from disk in the background.
    async fn promote(&self, id: ObjectId, part: &Bytes, chunk_len: usize) {
        if part.len() == chunk_len {
            return self.memory.insert(id, part.clone()).await;
        }
        let (Some(disk), memory) = (self.disk.clone(), self.memory.clone()) else {
            return;
        };
        tokio::spawn(async move {
            if let Some(chunk) = crate::blocking::run(move || disk.load(&id)).await {
                memory.insert(id, chunk).await;
            }
        });
    }

    async fn load_from_disk(&self, id: ObjectId) -> Option<Bytes> {
        let disk = self.disk.clone()?;
        let found = crate::blocking::run(move || disk.load(&id)).await;
        let counter = match found {
            Some(_) => &self.counts.disk_hits,
            None => &self.counts.disk_misses,
        };
        counter.fetch_add(1, Relaxed);
        found
    }

    /// Copies a fetched chunk to disk in the background, unless the cache
    /// is settled.
    fn store_on_disk(&self, id: ObjectId, data: Bytes) {
        let Some(disk) = self.disk.clone() else {
            return;
        };
        let Ok(writing) = Arc::clone(&self.disk_writes).try_acquire_owned() else {
            return;
        };
        tokio::task::spawn_blocking(move || {
            disk.store(&id, &data);
            drop(writing);
        });
    }

    /// Waits for the disk writes in flight and starts no more: what was
    /// fetched is on disk for the next open of the cache dir.
    pub async fn settle(&self) {
        if let Ok(_all) = self.disk_writes.acquire_many(DISK_WRITES_MAX).await {
            self.disk_writes.close();
        }
    }

    pub fn counters(&self) -> CacheCounters {
        CacheCounters {
            memory_hits: self.counts.memory_hits.load(Relaxed),
            memory_misses: self.counts.memory_misses.load(Relaxed),
            disk_hits: self.counts.disk_hits.load(Relaxed),
            disk_misses: self.counts.disk_misses.load(Relaxed),
            memory_bytes: self.memory.weighted_size(),
            disk_bytes: self.disk.as_ref().map_or(0, DiskCache::weighted_size),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn concurrent_misses_fetch_once() {
        let cache = ChunkCache::new(1 << 20, None);
        let data = Bytes::from(vec![3u8; 4096]);
        let id = ObjectId::of(&data);
        let fetches = Arc::new(AtomicUsize::new(0));
        let readers = (0..16).map(|_| {
            let cache = cache.clone();
            let data = data.clone();
            let fetches = Arc::clone(&fetches);
            tokio::spawn(async move {
                cache
                    .get_or_fetch(id, async {
                        fetches.fetch_add(1, Relaxed);
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        Ok::<_, std::io::Error>(data)
                    })
                    .await
                    .unwrap()
            })
        });
        for reader in futures::future::join_all(readers).await {
            assert_eq!(reader.unwrap(), data);
        }
        assert_eq!(fetches.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn memory_lookups_see_only_what_was_fetched_or_inserted() {
        let cache = ChunkCache::new(1 << 20, None);
        let data = Bytes::from(vec![4u8; 4096]);
        let id = ObjectId::of(&data);
        assert_eq!(cache.get_from_memory(&id).await, None);
        cache.insert(id, data.clone()).await;
        assert_eq!(cache.get_from_memory(&id).await, Some(data));
        assert_eq!(cache.counters().memory_hits, 1);
    }

    /// A cache of 4 MiB in memory and 4 MiB on disk in `dir`.
    fn two_tiers(dir: &std::path::Path) -> ChunkCache {
        ChunkCache::new(4 << 20, Some(DiskCache::open(dir, 4 << 20, 0).unwrap()))
    }

    /// A cache fetch that must not happen.
    async fn no_store() -> Result<Bytes, std::io::Error> {
        Err(std::io::Error::other("no store"))
    }

    #[tokio::test]
    async fn the_disk_tier_serves_what_was_fetched_after_memory_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let data = Bytes::from(vec![5u8; 8192]);
        let id = ObjectId::of(&data);
        let first = two_tiers(dir.path());
        let fetched = first
            .get_or_fetch(id, async { Ok::<_, std::io::Error>(data.clone()) })
            .await
            .unwrap();
        assert_eq!(fetched, data);
        // The disk copy is written in the background; settling waits.
        first.settle().await;
        assert_eq!(first.counters().disk_bytes, data.len() as u64 + 12);
        let second = two_tiers(dir.path());
        let got = second.get_or_fetch(id, no_store()).await.unwrap();
        assert_eq!(got, data);
        assert_eq!(second.counters().disk_hits, 1);
    }

    /// A 1 MiB chunk on disk only: fetched by one cache over `dir`, then
    /// seen by a second one, whose memory is empty.
    async fn chunk_on_disk_only(dir: &std::path::Path) -> (ObjectId, Bytes, ChunkCache) {
        let mut rng = fastrand::Rng::with_seed(11);
        let data: Bytes = (0..1 << 20).map(|_| rng.u8(..)).collect::<Vec<u8>>().into();
        let id = ObjectId::of(&data);
        let first = two_tiers(dir);
        first
            .get_or_fetch(id, async { Ok::<_, std::io::Error>(data.clone()) })
            .await
            .unwrap();
        first.settle().await;
        (id, data, two_tiers(dir))
    }

    async fn wait_for(done: impl Fn() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("waited 5 s in vain");
    }

    #[tokio::test]
    async fn small_reads_from_disk_earn_their_chunk_a_place_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let (id, data, cache) = chunk_on_disk_only(dir.path()).await;
        for read in 0..1024 {
            let block = read % 256;
            let range = block * 4096..block * 4096 + 4096;
            let got = cache
                .load_range_or_fetch(id, range.clone(), no_store())
                .await
                .unwrap();
            assert_eq!(got, data.slice(range));
            assert_eq!(cache.counters().memory_bytes, 0, "promoted after {read}");
        }
        assert_eq!(cache.counters().disk_hits, 1024);
        // Four chunks' worth served: the next read promotes it.
        cache
            .load_range_or_fetch(id, 0..10, no_store())
            .await
            .unwrap();
        wait_for(|| cache.memory.contains(&id)).await;
        let got = cache.get_from_memory(&id).await.unwrap();
        assert_eq!(got, data);
        assert_eq!(cache.counters().memory_hits, 1);
    }

    #[tokio::test]
    async fn a_chunk_read_whole_from_disk_is_promoted_the_second_time() {
        let dir = tempfile::tempdir().unwrap();
        let (id, data, cache) = chunk_on_disk_only(dir.path()).await;
        let whole = 0..data.len();
        for _ in 0..2 {
            let got = cache.load_range_or_fetch(id, whole.clone(), no_store());
            assert_eq!(got.await.unwrap(), data);
        }
        assert!(cache.memory.contains(&id));
        assert_eq!(cache.counters().disk_hits, 2);
    }

    #[tokio::test]
    async fn chunks_the_caller_made_stay_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let data = Bytes::from(vec![7u8; 8192]);
        let id = ObjectId::of(&data);
        let cache = two_tiers(dir.path());
        cache.insert(id, data.clone()).await;
        let got = cache.get_or_fetch(id, no_store()).await.unwrap();
        assert_eq!(got, data);
        assert_eq!(cache.counters().memory_hits, 1);
        assert_eq!(cache.counters().disk_bytes, 0, "nothing written to disk");
    }

    #[tokio::test]
    async fn a_settled_cache_writes_nothing_more_to_disk() {
        let dir = tempfile::tempdir().unwrap();
        let cache = two_tiers(dir.path());
        cache.settle().await;
        let data = Bytes::from(vec![8u8; 8192]);
        let id = ObjectId::of(&data);
        let got = cache.get_or_fetch(id, async { Ok::<_, std::io::Error>(data.clone()) });
        assert_eq!(got.await.unwrap(), data);
        cache.settle().await;
        assert_eq!(cache.counters().disk_bytes, 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
