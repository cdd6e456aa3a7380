//! The committed chunk map: a root's pages, read lazily and cached.
//!
//! Pages are immutable and named by hash, so a page loaded once is good for
//! every later generation that still lists it; opening a volume loads none.

use std::sync::{Arc, OnceLock};

use crate::cache::{MemoryCache, Weighted};
use crate::format::{ChunkRef, Codec, MapPage, ObjectId, PAGE_ENTRIES, PageSlot, Root, keys};
use crate::store::Store;

use crate::engine::error::{EngineError, Result};

impl Weighted for Arc<MapPage> {
    fn weight(&self) -> u32 {
        (PAGE_ENTRIES * std::mem::size_of::<ChunkRef>()) as u32
    }
}

/// Loads and keeps map pages.
#[derive(Clone)]
pub(super) struct Pages {
    store: Store,
    /// How the volume's pages are opened.
    codec: Codec,
    cache: MemoryCache<ObjectId, Arc<MapPage>>,
}

/// The page of a volume `chunk` falls in, and its slot there.
pub(in crate::engine) fn page_of(chunk: u64) -> (usize, usize) {
    (
        (chunk / PAGE_ENTRIES as u64) as usize,
        (chunk % PAGE_ENTRIES as u64) as usize,
    )
}

fn zero_page() -> Arc<MapPage> {
    static ZERO: OnceLock<Arc<MapPage>> = OnceLock::new();
    Arc::clone(ZERO.get_or_init(|| Arc::new(MapPage::default())))
}

impl Pages {
    pub fn new(store: Store, codec: Codec, max_bytes: u64) -> Pages {
        Pages {
            store,
            codec,
            cache: MemoryCache::new(max_bytes),
        }
    }

    /// The page a root's slot names (all zero for an empty slot).
    pub async fn page(&self, root: &Root, slot: &PageSlot) -> Result<Arc<MapPage>> {
        if slot.is_empty() {
            return Ok(zero_page());
        }
        if let Some(page) = self.cache.get(&slot.id).await {
            return Ok(page);
        }
        // Boxed: a store request makes a future of kilobytes, which every
        // read would move around even when the page is cached.
        Box::pin(self.load(slot.id, root.generation)).await
    }

    /// Fetches and decodes page `id`, once however many readers ask.
    async fn load(&self, id: ObjectId, generation: u64) -> Result<Arc<MapPage>> {
        self.cache
            .get_or_load(id, async move {
                let key = keys::page(&id);
                let object = self
                    .store
                    .get_at_most(&key, crate::format::page::MAX_STORED_LEN)
                    .await?
                    .ok_or(EngineError::MissingObject { key, generation })?;
                let codec = self.codec.clone();
                let page =
                    crate::blocking::run(move || MapPage::decode(id, &object, &codec)).await?;
                Ok::<_, EngineError>(Arc::new(page))
            })
            .await
            .map_err(EngineError::Shared)
    }

    /// The entry of `chunk` in the generation `root`.
    pub async fn lookup(&self, root: &Root, chunk: u64) -> Result<ChunkRef> {
        let (page, slot) = page_of(chunk);
        let Some(page_slot) = root.pages.get(page) else {
            return Ok(ChunkRef::ZERO);
        };
        if page_slot.is_empty() {
            return Ok(ChunkRef::ZERO);
        }
        Ok(self.page(root, page_slot).await?.get(slot))
    }

    /// Keeps a page a commit just wrote.
    pub async fn remember(&self, id: ObjectId, page: Arc<MapPage>) {
        self.cache.insert(id, page).await;
    }
}
