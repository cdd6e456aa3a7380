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

mod disk;
mod memory;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use serde::Serialize;

pub use disk::DiskCache;
pub use memory::{MemoryCache, Weighted};

use crate::format::ObjectId;

/// Hits and misses of both tiers since the cache was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
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
    counts: Arc<Counts>,
}

impl ChunkCache {
    pub fn new(memory_bytes: u64, disk: Option<DiskCache>) -> ChunkCache {
        ChunkCache {
            memory: MemoryCache::new(memory_bytes),
            disk,
            counts: Arc::default(),
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
        self.memory
            .get_or_load(id, async {
                if let Some(hit) = self.load_from_disk(id).await {
                    return Ok(hit);
                }
                let data = fetch.await?;
                let _in_background = self.store_on_disk(id, data.clone());
                Ok(data)
            })
            .await
    }

    /// Adds a chunk the caller just made (after an upload, say), in
    /// memory only.
    pub async fn insert(&self, id: ObjectId, data: Bytes) {
        self.memory.insert(id, data).await;
    }

    async fn load_from_disk(&self, id: ObjectId) -> Option<Bytes> {
        let disk = self.disk.clone()?;
        let found = tokio::task::spawn_blocking(move || disk.load(&id))
            .await
            .ok()
            .flatten();
        let counter = match found {
            Some(_) => &self.counts.disk_hits,
            None => &self.counts.disk_misses,
        };
        counter.fetch_add(1, Relaxed);
        found
    }

    fn store_on_disk(&self, id: ObjectId, data: Bytes) -> Option<tokio::task::JoinHandle<()>> {
        let disk = self.disk.clone()?;
        Some(tokio::task::spawn_blocking(move || disk.store(&id, &data)))
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

    /// A cache of 1 MiB in memory and 1 MiB on disk in `dir`.
    fn two_tiers(dir: &std::path::Path) -> ChunkCache {
        ChunkCache::new(1 << 20, Some(DiskCache::open(dir, 1 << 20, 0).unwrap()))
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
        // The disk copy is written in the background.
        for _ in 0..500 {
            if first.counters().disk_bytes > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(first.counters().disk_bytes, data.len() as u64);
        let second = two_tiers(dir.path());
        let got = second.get_or_fetch(id, no_store()).await.unwrap();
        assert_eq!(got, data);
        assert_eq!(second.counters().disk_hits, 1);
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
}
