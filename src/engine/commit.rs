//! Commits: sealed epochs become the next generation in the store.
//!
//! A commit takes every sealed epoch at once, oldest to newest, so the
//! generation it writes is the device's state at the newest one's seal: a
//! flush point, never a mix. It uploads the changed chunks (read-modify-
//! write for partly changed ones), in volume order, in packs (a lone new
//! chunk as its own object), then the changed map pages, then the root
//! with create-if-absent. Only after the root is in does it swap the view
//! (new map, fewer epochs) and retire log segments nothing needs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use tokio::task::JoinSet;

use super::background;
use super::catalog;
use super::chunks::page_of;
use super::error::{EngineError, Result};
use super::log::Epoch;
use super::options::PACKS_IN_FLIGHT;
use super::resolve::{self, Source};
use super::shared::Shared;
use crate::format::{
    self, ChunkRef, EncodedChunk, PAGE_ENTRIES, PageSlot, Root, RootKind, keys,
    pack::PackBuilder,
    root::{now_ms, page_count},
};
use crate::store::Store;

/// What publishing a root came to.
enum Published {
    Committed,
    /// gc fenced the commit with this barrier: build it again on top.
    AfterGcBarrier(Root),
}

/// A chunk as a commit built it.
enum Built {
    /// Its map entry is settled: zeroes, or the object it had before.
    Settled(ChunkRef),
    /// New bytes, to be stored.
    New(EncodedChunk),
}

/// The new chunks of a pack being filled, and their indexes in the volume.
#[derive(Default)]
struct Packing {
    chunks: Vec<u64>,
    pack: PackBuilder,
}

/// What a commit changes in one map page.
#[derive(Default)]
struct PageEdit {
    /// Every entry of the page becomes zero (before `slots` apply).
    cleared: bool,
    slots: BTreeMap<usize, ChunkRef>,
}

impl Shared {
    /// Commits every sealed epoch, and a pending resize, as the next
    /// generation. Returns whether there was anything to commit.
    pub async fn commit_sealed(self: &Arc<Self>) -> Result<bool> {
        let pending_size = self.pending_size();
        let view = self.journal().view_full();
        let epochs = view.sealed_oldest_first();
        if epochs.is_empty() && pending_size.is_none() {
            return Ok(false);
        }
        if let Some(last) = epochs.last() {
            self.make_durable(last.id()).await?;
        }
        let started = std::time::Instant::now();
        let mut base = Arc::clone(view.map());
        let next = loop {
            let next = self.build_generation(&base, &epochs, pending_size).await?;
            crate::async_fail_point!("commit::uploaded");
            match self.publish_root(&next).await? {
                Published::Committed => break next,
                Published::AfterGcBarrier(barrier) => {
                    tracing::info!(volume = %self.name(), generation = barrier.generation, "zeroblk gc fenced this commit: it starts over on top of gc's barrier, uploading again");
                    base = Arc::new(barrier);
                }
            }
        };
        let generation = next.generation;
        let log_bytes: u64 = epochs.iter().map(|e| e.log_len()).sum();
        self.install(next, &epochs, started.elapsed()).await;
        tracing::debug!(volume = %self.name(), generation, epochs = epochs.len(), log_bytes, took = ?started.elapsed(), "committed");
        Ok(true)
    }

    async fn build_generation(
        self: &Arc<Self>,
        base: &Arc<Root>,
        epochs: &[Arc<Epoch>],
        pending_size: Option<u64>,
    ) -> Result<Root> {
        let mut next = base.succeeded_by(RootKind::Commit);
        next.log_id = self.journal().log_id();
        next.log_epoch = epochs
            .last()
            .map_or(self.progress().committed_epoch(), |e| e.id());
        next.committed_at_ms = now_ms();
        if let Some(size) = pending_size.filter(|&s| s > next.size) {
            next.size = size;
            next.pages
                .resize(page_count(size, next.chunk_size), PageSlot::EMPTY);
        }
        let mut edits: BTreeMap<usize, PageEdit> = BTreeMap::new();
        for epoch in epochs {
            for (chunks, _) in epoch.changes().zeroed_ranges() {
                zero_chunks(&mut edits, chunks, base.chunk_count());
            }
        }
        let touched: BTreeSet<u64> = epochs
            .iter()
            .flat_map(|e| e.changes().touched_chunks())
            .collect();
        for (chunk, entry) in self.store_chunks(base, epochs, touched).await? {
            let (page, slot) = page_of(chunk);
            edits.entry(page).or_default().slots.insert(slot, entry);
        }
        let concurrency = self.options().upload_concurrency;
        let pages: Vec<(usize, PageSlot)> = stream::iter(edits)
            .map(|(page, edit)| async move {
                Ok::<_, EngineError>((page, self.build_page(base, page, edit).await?))
            })
            .buffer_unordered(concurrency)
            .try_collect()
            .await?;
        for (page, slot) in pages {
            next.pages[page] = slot;
        }
        Ok(next)
    }

    /// Builds the `touched` chunks and stores the new ones, in volume
    /// order, so that a sequential reader finds neighbours in one pack.
    /// Returns every touched chunk's map entry.
    async fn store_chunks(
        self: &Arc<Self>,
        base: &Arc<Root>,
        epochs: &[Arc<Epoch>],
        touched: BTreeSet<u64>,
    ) -> Result<Entries> {
        let mut built = std::pin::pin!(
            stream::iter(touched)
                .map(|chunk| async move {
                    Ok::<_, EngineError>((chunk, self.build_chunk(base, epochs, chunk).await?))
                })
                .buffered(self.options().upload_concurrency)
        );
        let mut entries = Vec::new();
        let mut packing = Packing::default();
        let mut uploads = JoinSet::new();
        while let Some((chunk, built)) = built.try_next().await? {
            match built {
                Built::Settled(entry) => entries.push((chunk, entry)),
                Built::New(encoded) => {
                    packing.chunks.push(chunk);
                    packing.pack.push(encoded);
                }
            }
            if packing.pack.is_full() {
                if uploads.len() >= PACKS_IN_FLIGHT {
                    entries.extend(joined(uploads.join_next().await)?);
                }
                uploads.spawn(store_pack(
                    self.store().clone(),
                    std::mem::take(&mut packing),
                ));
            }
        }
        if !packing.pack.is_empty() {
            uploads.spawn(store_pack(self.store().clone(), packing));
        }
        while let Some(done) = uploads.join_next().await {
            entries.extend(joined(Some(done))?);
        }
        Ok(entries)
    }

    /// The new content of `chunk` after `epochs`.
    async fn build_chunk(&self, base: &Root, epochs: &[Arc<Epoch>], chunk: u64) -> Result<Built> {
        let chunk_size = base.chunk_size as usize;
        let sources = resolve::sources(epochs.iter().rev(), chunk, 0..chunk_size);
        if let [Source::Zero(_)] = sources.as_slice() {
            return Ok(Built::Settled(ChunkRef::ZERO));
        }
        let old = self.chunks().lookup(base, chunk).await?;
        let keeps_some = sources.iter().any(|s| matches!(s, Source::Base(_)));
        let old_data = match keeps_some && !old.is_zero() {
            true => Some(self.chunks().load(old, base.generation).await?),
            false => None,
        };
        let compression = self.superblock().compression;
        let codec = self.codec().clone();
        let built = background::run(move || {
            let mut data = vec![0u8; chunk_size];
            resolve::assemble(&sources, old_data.as_deref(), &mut data)?;
            if data.iter().all(|&b| b == 0) {
                return Ok(None);
            }
            let encoded = format::chunk::encode(&data, compression, &codec);
            Ok::<_, EngineError>(Some((encoded, data)))
        })
        .await?;
        let Some((encoded, data)) = built else {
            return Ok(Built::Settled(ChunkRef::ZERO));
        };
        self.chunks()
            .remember_chunk(encoded.id, Bytes::from(data))
            .await;
        if encoded.id == old.id {
            return Ok(Built::Settled(old));
        }
        Ok(Built::New(encoded))
    }

    /// Applies an edit to a page and uploads the result.
    async fn build_page(&self, base: &Root, page: usize, edit: PageEdit) -> Result<PageSlot> {
        let old = base.pages.get(page).copied().unwrap_or(PageSlot::EMPTY);
        // A cleared page (a discard of all of it) is not read.
        let old_content = match edit.cleared || old.is_empty() {
            true => None,
            false => Some(self.chunks().page(base, &old).await?),
        };
        let mut content = old_content.as_deref().cloned().unwrap_or_default();
        for (slot, entry) in edit.slots {
            content.set(slot, entry);
        }
        if content.is_all_zero() {
            return Ok(PageSlot::EMPTY);
        }
        if old_content.is_some_and(|old_content| *old_content == content) {
            return Ok(old);
        }
        let allocated = content.entries().iter().filter(|e| !e.is_zero()).count() as u32;
        let stored = content
            .entries()
            .iter()
            .map(|e| u64::from(e.stored_len))
            .sum();
        let content = Arc::new(content);
        let encoded = {
            let content = Arc::clone(&content);
            let codec = self.codec().clone();
            crate::blocking::run(move || content.encode(&codec)).await
        };
        // A new object (pages carry random bytes), never one gc may be
        // deleting.
        self.store()
            .put(&keys::page(&encoded.id), encoded.object)
            .await?;
        self.chunks().remember_page(encoded.id, content).await;
        Ok(PageSlot {
            id: encoded.id,
            allocated,
            stored,
        })
    }

    /// Writes the root: the commit point. A root of this generation that
    /// is already there is ours if it says what ours says (a retried PUT
    /// whose first reply was lost); gc's barrier if gc fenced this commit
    /// (its uploads may be deleted: it starts over on the barrier);
    /// anything else means another writer committed, and this one is
    /// fenced out.
    async fn publish_root(&self, next: &Root) -> Result<Published> {
        self.lease()
            .lock()
            .await
            .check(self.store(), self.name())
            .await?;
        crate::async_fail_point!("commit::before_root");
        let published =
            catalog::publish_root(self.store(), self.name(), self.codec(), next).await?;
        crate::async_fail_point!("commit::after_root");
        if published {
            return Ok(Published::Committed);
        }
        let found = catalog::root_at(
            self.store(),
            self.superblock(),
            self.codec(),
            next.generation,
        )
        .await?;
        match found {
            Some(found) if same_commit(&found, next) => Ok(Published::Committed),
            Some(found) if found.kind == RootKind::GcBarrier => {
                Ok(Published::AfterGcBarrier(found))
            }
            _ => Err(EngineError::Fenced {
                name: self.name().to_string(),
                generation: next.generation,
            }),
        }
    }

    /// Makes a committed generation the one readers see, and lets go of
    /// the epochs and log segments it contains.
    async fn install(&self, next: Root, epochs: &[Arc<Epoch>], took: std::time::Duration) {
        self.size_committed(next.size);
        self.journal().install(next, epochs).await;
        let freed: u64 = epochs.iter().map(|e| e.dirty_bytes()).sum();
        let logged: u64 = epochs.iter().map(|e| e.log_len()).sum();
        self.backlog().committed(freed, logged);
        self.stats().committed(took);
        // Every epoch before the oldest one still waiting is committed, or
        // had nothing to commit (a replay that found its records torn).
        let committed_through = self.journal().view().committed_through();
        self.progress().publish_committed(committed_through);
    }
}

/// Uploads a pack: always a new object, even for one chunk, so that a
/// commit never writes over an object `zeroblk gc` may be deleting.
async fn store_pack(store: Store, packing: Packing) -> Result<Entries> {
    let pack = packing.pack.finish();
    store.put_parts(&keys::pack(&pack.id), pack.parts).await?;
    Ok(packing.chunks.into_iter().zip(pack.refs).collect())
}

/// Chunks and the map entries a commit gives them.
type Entries = Vec<(u64, ChunkRef)>;

/// The entries of a finished pack upload (`None`: there was none).
fn joined(
    done: Option<std::result::Result<Result<Entries>, tokio::task::JoinError>>,
) -> Result<Entries> {
    match done {
        None => Ok(Vec::new()),
        Some(done) => done.expect("pack uploads do not panic"),
    }
}

/// Marks whole chunks zero: whole pages are cleared without reading them.
fn zero_chunks(
    edits: &mut BTreeMap<usize, PageEdit>,
    chunks: std::ops::Range<u64>,
    chunk_count: u64,
) {
    let chunks = chunks.start..chunks.end.min(chunk_count);
    if chunks.is_empty() {
        return;
    }
    let first_page = page_of(chunks.start).0;
    let last_page = page_of(chunks.end - 1).0;
    for page in first_page..=last_page {
        let page_start = (page * PAGE_ENTRIES) as u64;
        let page_end = (page_start + PAGE_ENTRIES as u64).min(chunk_count);
        let from = chunks.start.max(page_start);
        let to = chunks.end.min(page_end);
        let edit = edits.entry(page).or_default();
        if from == page_start && to == page_end {
            edit.cleared = true;
            edit.slots.clear();
        } else {
            for chunk in from..to {
                edit.slots
                    .insert((chunk - page_start) as usize, ChunkRef::ZERO);
            }
        }
    }
}

fn same_commit(found: &Root, ours: &Root) -> bool {
    found.log_id == ours.log_id
        && found.log_epoch == ours.log_epoch
        && found.size == ours.size
        && found.pages == ours.pages
}
