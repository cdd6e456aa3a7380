//! Committed chunks: what the store holds of a volume, as readers and
//! commits see it.
//!
//! [`Chunks`] owns the map's pages ([`pages`]), the chunk caches (memory,
//! then disk), the store fetches in flight ([`single_flight`]) and
//! read-ahead ([`readahead`]). It promises:
//! - every chunk and page it returns was checked against its BLAKE3 name
//!   ([`fetch`]); a mismatch is an error, never data;
//! - a chunk is downloaded at most once at a time, however many readers
//!   and read-aheads want it;
//! - read-ahead and prefetching never fetch more than the memory cache
//!   holds, and their failures are left for a read to meet.
//!
//! It knows nothing of the log or of epochs: the caller resolves what the
//! log holds first, and asks here only for committed bytes.

mod fetch;
mod pages;
mod readahead;
mod single_flight;

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::join_all;

use super::error::{EngineError, Result};
use super::options::EngineOptions;
use crate::cache::{CacheCounters, ChunkCache, DiskCache};
use crate::format::{ChunkRef, Codec, MapPage, ObjectId, PageSlot, Root};
use crate::store::Store;
pub(super) use fetch::{chunk_object, key_of};
use pages::Pages;
pub(super) use pages::page_of;
use readahead::ReadAhead;
use single_flight::{InFlight, RunFetch};

/// Bytes of decoded map pages kept in memory.
const PAGE_CACHE_BYTES: u64 = 64 << 20;

/// A volume's committed chunks and pages, cached, fetched once at a time.
pub(super) struct Chunks {
    chunk_size: u64,
    /// How many chunks the memory cache holds.
    memory_chunks: u64,
    cache: ChunkCache,
    pages: Pages,
    in_flight: Arc<InFlight>,
    readahead: ReadAhead,
}

impl Chunks {
    pub fn new(
        store: &Store,
        codec: &Codec,
        chunk_size: u64,
        options: &EngineOptions,
        disk: Option<DiskCache>,
    ) -> Chunks {
        let memory_bytes = options.chunk_cache_bytes(chunk_size);
        Chunks {
            chunk_size,
            memory_chunks: memory_bytes / chunk_size,
            cache: ChunkCache::new(memory_bytes, disk),
            pages: Pages::new(store.clone(), codec.clone(), PAGE_CACHE_BYTES),
            in_flight: Arc::new(InFlight::new(store.clone(), codec.clone())),
            readahead: ReadAhead::new(options.readahead_chunks.min(memory_bytes / chunk_size)),
        }
    }

    /// The map entry of `chunk` in the generation `root`.
    pub async fn lookup(&self, root: &Root, chunk: u64) -> Result<ChunkRef> {
        self.pages.lookup(root, chunk).await
    }

    /// The page a root's slot names (all zero for an empty slot).
    pub async fn page(&self, root: &Root, slot: &PageSlot) -> Result<Arc<MapPage>> {
        self.pages.page(root, slot).await
    }

    /// Keeps a page a commit just wrote.
    pub async fn remember_page(&self, id: ObjectId, page: Arc<MapPage>) {
        self.pages.remember(id, page).await;
    }

    /// Keeps a chunk a commit just built, so that reads find it in memory.
    pub async fn remember_chunk(&self, id: ObjectId, data: Bytes) {
        self.cache.insert(id, data).await;
    }

    /// Bytes `range` of the committed content of `chunk` in `root`;
    /// `None` when the chunk is zero. A miss in memory reads only the
    /// blocks around `range` from the disk cache.
    pub async fn committed_range(
        &self,
        root: &Root,
        chunk: u64,
        range: Range<usize>,
    ) -> Result<Option<Bytes>> {
        let entry = self.pages.lookup(root, chunk).await?;
        if entry.is_zero() {
            return Ok(None);
        }
        if let Some(hit) = self.cache.get_from_memory(&entry.id).await {
            return Ok(Some(hit.slice(range)));
        }
        // Boxed, as in `load`.
        let part = Box::pin(self.fetch_range(entry, root.generation, range)).await?;
        Ok(Some(part))
    }

    /// A chunk's bytes from the caches, else from the store.
    pub async fn load(&self, entry: ChunkRef, generation: u64) -> Result<Bytes> {
        if let Some(hit) = self.cache.get_from_memory(&entry.id).await {
            return Ok(hit);
        }
        // Boxed: a store request makes a future of kilobytes, which every
        // read would move around even when the chunk is in memory.
        Box::pin(self.fetch_chunk(entry, generation)).await
    }

    /// After a read of `len` bytes at `offset` that continues the previous
    /// one, starts fetching the chunks ahead of it (see [`readahead`]).
    /// Returns once the fetches are registered: requests reach the engine
    /// in the order the client sent them but finish in any order, and the
    /// reads a sequential reader has in flight must find the read-ahead
    /// started, to join it rather than fetch their chunks alone.
    pub async fn read_ahead(self: &Arc<Self>, map: &Root, offset: u64, len: u64) {
        let Some(batch) = self.readahead.after_read(offset, len, self.chunk_size) else {
            return;
        };
        let end = batch.end.min(map.chunk_count());
        if batch.start < end {
            // Boxed: a read that starts no read-ahead (most of them) must
            // not carry the page lookups' future around.
            Box::pin(self.prefetch(map, batch.start..end)).await;
        }
    }

    /// Starts fetching `chunks` of `map`, as many as the memory cache
    /// holds, without waiting for them (NBD's CACHE command).
    pub fn prefetch_in_background(self: &Arc<Self>, map: Arc<Root>, chunks: Range<u64>) {
        let this = Arc::clone(self);
        tokio::spawn(async move { this.prefetch(&map, chunks).await });
    }

    pub fn counters(&self) -> CacheCounters {
        self.cache.counters()
    }

    /// Waits for the disk cache's writes in flight and starts no more.
    pub async fn settle(&self) {
        self.cache.settle().await;
    }

    /// Starts fetching those of `chunks` that are neither cached nor being
    /// fetched, at most as many as the memory cache holds, a run at a
    /// time; returns once the runs are registered.
    async fn prefetch(self: &Arc<Self>, map: &Root, chunks: Range<u64>) {
        let end = chunks.end.min(chunks.start + self.memory_chunks);
        let missing = match self.missing_chunks(map, chunks.start..end).await {
            Ok(missing) => missing,
            Err(error) => {
                tracing::debug!(%error, "read-ahead stopped");
                return;
            }
        };
        let mut started = Vec::new();
        for run in fetch::runs(missing) {
            started.extend(self.in_flight.start_runs(run, map.generation));
        }
        if !started.is_empty() {
            tokio::spawn(Arc::clone(self).load_runs(started));
        }
    }

    /// The committed chunks of `chunks` that are neither cached nor in
    /// flight, each once.
    async fn missing_chunks(&self, map: &Root, chunks: Range<u64>) -> Result<Vec<ChunkRef>> {
        let mut missing = Vec::new();
        let mut seen = HashSet::new();
        for chunk in chunks {
            let entry = self.pages.lookup(map, chunk).await?;
            if !entry.is_zero()
                && seen.insert(entry.id)
                && !self.cache.is_cached(&entry.id)
                && !self.in_flight.contains(&entry)
            {
                missing.push(entry);
            }
        }
        Ok(missing)
    }

    /// Runs the registered fetches `started` into the cache.
    async fn load_runs(self: Arc<Self>, started: Vec<(RunFetch, Vec<ChunkRef>)>) {
        let loads = started.iter().flat_map(|(fetch, run)| {
            run.iter()
                .enumerate()
                .map(|(index, entry)| self.load_from(*entry, fetch.clone(), index))
        });
        for load in join_all(loads).await {
            if let Err(error) = load {
                tracing::debug!(%error, "read-ahead failed; reads will fetch again");
            }
        }
        // A fetch none of whose chunks' loads ran (the cache had them by
        // then) never started: it must not stay registered.
        for (fetch, run) in started {
            if fetch.peek().is_none() {
                self.in_flight.abandon(&fetch, &run);
            }
        }
    }

    /// A chunk missing from memory: from disk, else from the store (or
    /// from the fetch already getting it).
    async fn fetch_chunk(&self, entry: ChunkRef, generation: u64) -> Result<Bytes> {
        let from_store = self.fetch_from_store(entry, generation);
        let fetched = self.cache.get_or_fetch(entry.id, from_store).await;
        fetched.map_err(|error| unreadable(&entry, &error))
    }

    /// Bytes `range` of a chunk missing from memory: from disk, reading
    /// only the blocks around them, else from the whole chunk fetched as
    /// [`Chunks::fetch_chunk`] does.
    async fn fetch_range(
        &self,
        entry: ChunkRef,
        generation: u64,
        range: Range<usize>,
    ) -> Result<Bytes> {
        let from_store = self.fetch_from_store(entry, generation);
        let fetched = self
            .cache
            .load_range_or_fetch(entry.id, range, from_store)
            .await;
        fetched.map_err(|error| unreadable(&entry, &error))
    }

    /// The chunk `entry` from the store, joining the fetch getting it.
    async fn fetch_from_store(
        &self,
        entry: ChunkRef,
        generation: u64,
    ) -> std::result::Result<Bytes, Arc<EngineError>> {
        let (fetch, index) = self.in_flight.join_or_start(entry, generation);
        fetch.await.map(|chunks| chunks[index].clone())
    }

    /// The chunk `entry` into the cache from `fetch`, unless the cache has
    /// it (or is loading it) already.
    async fn load_from(&self, entry: ChunkRef, fetch: RunFetch, index: usize) -> Result<Bytes> {
        let fetched = fetch.map(move |got| got.map(|chunks| chunks[index].clone()));
        self.cache
            .get_or_fetch(entry.id, fetched)
            .await
            .map_err(|error| EngineError::Shared(Arc::clone(&error)))
    }
}

/// The error of a read whose chunk could not be loaded.
fn unreadable(entry: &ChunkRef, error: &Arc<EngineError>) -> EngineError {
    tracing::error!(chunk = %entry.id, %error, "cannot read a chunk");
    EngineError::Shared(Arc::clone(error))
}
