//! What each snapshot alone holds: the stored bytes of the chunks that no
//! other snapshot, and not the volume's newest state, references. That is
//! about what deleting the snapshot frees (clones and dedup with other
//! volumes may keep some of it).

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};

use crate::engine::catalog;
use crate::engine::error::{EngineError, Result};
use crate::format::{ChunkRef, Codec, MapPage, ObjectId, Root};
use crate::store::Store;

const CONCURRENCY: usize = 16;

/// For each of `snapshots`, the stored bytes only it references among
/// `snapshots` and `newest`.
pub(super) async fn exclusive_bytes(
    store: &Store,
    codec: &Codec,
    snapshots: &[Root],
    newest: &Root,
) -> Result<Vec<u64>> {
    let pages = load_pages(store, codec, snapshots.iter().chain([newest])).await?;
    // Each chunk object: its stored length, and the one root holding it
    // (`None` once a second one does).
    let mut owners: HashMap<ChunkRef, Option<usize>> = HashMap::new();
    for (index, root) in snapshots.iter().chain([newest]).enumerate() {
        for slot in root.pages.iter().filter(|slot| !slot.is_empty()) {
            for entry in pages[&slot.id].entries().iter().filter(|e| !e.is_zero()) {
                owners
                    .entry(*entry)
                    .and_modify(|owner| {
                        if *owner != Some(index) {
                            *owner = None;
                        }
                    })
                    .or_insert(Some(index));
            }
        }
    }
    let mut alone = vec![0u64; snapshots.len()];
    for (entry, owner) in owners {
        if let Some(index) = owner.filter(|&i| i < snapshots.len()) {
            alone[index] += u64::from(entry.stored_len);
        }
    }
    Ok(alone)
}

/// Every distinct map page `roots` list, read once.
async fn load_pages<'a>(
    store: &Store,
    codec: &Codec,
    roots: impl Iterator<Item = &'a Root>,
) -> Result<HashMap<ObjectId, MapPage>> {
    let mut wanted: Vec<(ObjectId, u64)> = roots
        .flat_map(|root| {
            root.pages
                .iter()
                .filter(|slot| !slot.is_empty())
                .map(|slot| (slot.id, root.generation))
        })
        .collect();
    wanted.sort_by_key(|(id, _)| *id);
    wanted.dedup_by_key(|(id, _)| *id);
    futures::stream::iter(wanted)
        .map(|(id, generation)| async move {
            let page = catalog::read_page(store, codec, id, generation).await?;
            Ok::<_, EngineError>((id, page))
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::PageSlot;
    use crate::format::keys;

    async fn root_with(store: &Store, chunks: &[(u8, u32)]) -> Root {
        let mut page = MapPage::default();
        for (slot, (byte, len)) in chunks.iter().enumerate() {
            page.set(slot, ChunkRef::own(ObjectId::of(&[*byte]), *len));
        }
        let encoded = page.encode(&Codec::clear());
        store
            .put(&keys::page(&encoded.id), encoded.object)
            .await
            .unwrap();
        let mut root = Root::empty(uuid::Uuid::new_v4(), 1 << 30, 1 << 20);
        root.pages[0] = PageSlot {
            id: encoded.id,
            allocated: chunks.len() as u32,
            stored: chunks.iter().map(|(_, len)| u64::from(*len)).sum(),
        };
        root
    }

    #[tokio::test]
    async fn only_chunks_no_other_root_holds_count() {
        let store = Store::memory();
        let first = root_with(&store, &[(1, 100), (2, 20)]).await;
        let second = root_with(&store, &[(1, 100), (3, 30), (4, 4)]).await;
        let newest = root_with(&store, &[(4, 4), (5, 5)]).await;
        let alone = exclusive_bytes(&store, &Codec::clear(), &[first, second], &newest)
            .await
            .unwrap();
        assert_eq!(alone, vec![20, 30]);
    }
}
