//! What a snapshot references, and what the destination must hold for it
//! to read there: each object with its size and where it comes from.

use std::collections::{HashMap, HashSet};

use futures::{StreamExt, TryStreamExt};

use super::census;
use super::error::CopyError;
use crate::format::{ChunkRef, Codec, ObjectId, Root, keys, page, page::MapPage};
use crate::store::Store;

/// Map pages read from the source at once.
const CONCURRENCY: usize = 16;

/// What a snapshot's map references.
#[derive(Debug, Default)]
pub(super) struct References {
    /// Map pages, with their size at the source.
    pages: HashMap<ObjectId, u64>,
    /// Chunks stored as objects of their own, with their length.
    own: HashMap<ObjectId, u32>,
    /// The chunks referenced in each pack.
    packs: HashMap<ObjectId, HashSet<ChunkRef>>,
}

impl References {
    fn add_chunk(&mut self, entry: ChunkRef) {
        match entry.pack() {
            Some(pack) => {
                self.packs.entry(pack).or_default().insert(entry);
            }
            None => {
                self.own.insert(entry.id, entry.stored_len);
            }
        }
    }
}

/// Reads every map page `root` lists from `from`, each checked against its
/// name as it is opened; `what` names the snapshot in errors.
pub(super) async fn references(
    from: &Store,
    codec: &Codec,
    root: &Root,
    what: &str,
) -> Result<References, CopyError> {
    let ids: HashSet<ObjectId> = root
        .pages
        .iter()
        .filter(|slot| !slot.is_empty())
        .map(|slot| slot.id)
        .collect();
    let pages: Vec<(ObjectId, u64, MapPage)> = futures::stream::iter(ids)
        .map(|id| async move {
            let key = keys::page(&id);
            let bytes = from
                .get_at_most(&key, page::MAX_STORED_LEN)
                .await?
                .ok_or_else(|| missing(from, &key, what))?;
            let page = MapPage::decode(id, &bytes, codec).map_err(|e| e.stored_in(&key))?;
            Ok::<_, CopyError>((id, bytes.len() as u64, page))
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    let mut references = References::default();
    for (id, size, page) in pages {
        references.pages.insert(id, size);
        for entry in page.entries().iter().filter(|e| !e.is_zero()) {
            references.add_chunk(*entry);
        }
    }
    Ok(references)
}

pub(super) fn missing(store: &Store, key: &str, what: &str) -> CopyError {
    CopyError::SourceMissing {
        store: store.url().to_string(),
        key: key.to_string(),
        what: what.to_string(),
    }
}

/// Where the bytes of an object the destination needs come from, and how
/// they are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// The page of that name: opened with the volume's codec, which checks
    /// its hash.
    Page(ObjectId),
    /// The whole pack: named by the BLAKE3 hash of its bytes.
    Pack(ObjectId),
    /// The chunk's own object: opened, which checks its hash.
    OwnChunk(ChunkRef),
    /// The chunk, cut out of its pack with a ranged GET, and stored at the
    /// destination as an object of its own (as gc leaves a split pack's
    /// chunks: readers that find no pack read those).
    PackedChunk(ChunkRef),
}

/// The kinds a report counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Page,
    Pack,
    Chunk,
}

/// An object the destination must hold: its key, its size, and where it
/// comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Needed {
    key: String,
    size: u64,
    origin: Origin,
}

impl Needed {
    pub(super) fn new(origin: Origin, size: u64) -> Needed {
        let key = match origin {
            Origin::Page(id) => keys::page(&id),
            Origin::Pack(id) => keys::pack(&id),
            Origin::OwnChunk(entry) | Origin::PackedChunk(entry) => keys::chunk(&entry.id),
        };
        Needed { key, size, origin }
    }

    fn chunk(entry: ChunkRef, source_has_pack: bool) -> Needed {
        let size = u64::from(entry.stored_len);
        match source_has_pack {
            true => Needed::new(Origin::PackedChunk(entry), size),
            false => Needed::new(
                Origin::OwnChunk(ChunkRef::own(entry.id, entry.stored_len)),
                size,
            ),
        }
    }

    pub(super) fn key(&self) -> &str {
        &self.key
    }

    pub(super) fn size(&self) -> u64 {
        self.size
    }

    pub(super) fn origin(&self) -> Origin {
        self.origin
    }

    pub(super) fn kind(&self) -> Kind {
        match self.origin {
            Origin::Page(_) => Kind::Page,
            Origin::Pack(_) => Kind::Pack,
            Origin::OwnChunk(_) | Origin::PackedChunk(_) => Kind::Chunk,
        }
    }
}

/// What the destination needs: what it lacks, and what it holds already.
#[derive(Debug, Default)]
pub(super) struct Plan {
    missing: Vec<Needed>,
    present: Vec<Needed>,
}

impl Plan {
    pub(super) fn missing(&self) -> &[Needed] {
        &self.missing
    }

    pub(super) fn present(&self) -> &[Needed] {
        &self.present
    }

    /// Everything the snapshot needs at the destination.
    pub(super) fn all(&self) -> impl Iterator<Item = &Needed> {
        self.missing.iter().chain(&self.present)
    }
}

/// Decides what the destination `to` needs for `references` to read
/// there, and looks up what it holds. A pack is needed whole, unless the
/// destination has it already, or most of it is not referenced (then only
/// the chunks referenced are copied, as objects of their own), or the
/// source holds it no more (gc split it: its chunks are objects of their
/// own there).
pub(super) async fn plan(
    references: &References,
    from: &Store,
    to: &Store,
) -> Result<Plan, CopyError> {
    let pack_keys: Vec<String> = references.packs.keys().map(keys::pack).collect();
    let at_source = census::sizes(from, &pack_keys).await?;
    let both: Vec<String> = pack_keys
        .into_iter()
        .filter(|key| at_source.contains_key(key))
        .collect();
    let looked_up: HashSet<&String> = both.iter().collect();
    let at_destination = census::sizes(to, &both).await?;
    let mut needed: HashMap<String, Needed> = HashMap::new();
    let mut add = |need: Needed| {
        needed.entry(need.key.clone()).or_insert(need);
    };
    for (&id, &size) in &references.pages {
        add(Needed::new(Origin::Page(id), size));
    }
    for (&id, &len) in &references.own {
        add(Needed::new(
            Origin::OwnChunk(ChunkRef::own(id, len)),
            len.into(),
        ));
    }
    for (&pack, chunks) in &references.packs {
        let key = keys::pack(&pack);
        match at_source.get(&key) {
            Some(&size)
                if at_destination.get(&key) == Some(&size) || !mostly_garbage(size, chunks) =>
            {
                add(Needed::new(Origin::Pack(pack), size));
            }
            found => chunks
                .iter()
                .for_each(|entry| add(Needed::chunk(*entry, found.is_some()))),
        }
    }
    let unknown: Vec<String> = needed
        .keys()
        .filter(|key| !looked_up.contains(key))
        .cloned()
        .collect();
    let mut found = census::sizes(to, &unknown).await?;
    found.extend(at_destination);
    let (present, missing) = needed
        .into_values()
        .partition(|need| found.get(&need.key) == Some(&need.size));
    Ok(Plan { missing, present })
}

/// Whether less than half of a pack of `size` bytes holds the `chunks`
/// referenced (gc's rule for splitting a pack).
fn mostly_garbage(size: u64, chunks: &HashSet<ChunkRef>) -> bool {
    let referenced: u64 = chunks.iter().map(|e| u64::from(e.stored_len)).sum();
    referenced * 2 < size
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Place;
    use bytes::Bytes;

    fn packed(pack: ObjectId, offset: u32, len: u32) -> ChunkRef {
        ChunkRef {
            id: ObjectId::of(&offset.to_le_bytes()),
            stored_len: len,
            place: Place::Packed { pack, offset },
        }
    }

    async fn put(store: &Store, key: &str, len: usize) {
        store.put(key, Bytes::from(vec![7; len])).await.unwrap();
    }

    /// Whole packs when mostly referenced; the referenced chunks alone out
    /// of a pack mostly garbage, or of one the source split; what the
    /// destination holds with the right size is present, the rest missing.
    #[tokio::test]
    async fn packs_go_whole_unless_mostly_garbage_or_split() {
        let (from, to) = (Store::memory(), Store::memory());
        let [full, sparse, split, there] =
            [&b"full"[..], b"sparse", b"split", b"there"].map(ObjectId::of);
        let mut references = References::default();
        references.add_chunk(packed(full, 16, 60));
        references.add_chunk(packed(sparse, 17, 10));
        references.add_chunk(packed(split, 18, 5));
        references.add_chunk(packed(there, 19, 1));
        let own = ChunkRef::own(ObjectId::of(b"own"), 9);
        references.add_chunk(own);
        references.pages.insert(ObjectId::of(b"page"), 30);
        for (pack, len) in [(full, 100), (sparse, 100), (there, 100)] {
            put(&from, &keys::pack(&pack), len).await;
        }
        put(&to, &keys::pack(&there), 100).await;
        put(&to, &keys::chunk(&own.id), 9).await;
        put(&to, &keys::page(&ObjectId::of(b"page")), 29).await; // wrong size
        let plan = plan(&references, &from, &to).await.unwrap();
        let mut missing: Vec<Origin> = plan.missing().iter().map(Needed::origin).collect();
        missing.sort_by_key(|origin| format!("{origin:?}"));
        let split_chunk = packed(split, 18, 5);
        let mut expected = vec![
            Origin::Page(ObjectId::of(b"page")),
            Origin::Pack(full),
            Origin::PackedChunk(packed(sparse, 17, 10)),
            Origin::OwnChunk(ChunkRef::own(split_chunk.id, 5)),
        ];
        expected.sort_by_key(|origin| format!("{origin:?}"));
        assert_eq!(missing, expected);
        let mut present: Vec<Origin> = plan.present().iter().map(Needed::origin).collect();
        present.sort_by_key(|origin| format!("{origin:?}"));
        assert_eq!(present, vec![Origin::OwnChunk(own), Origin::Pack(there)]);
        assert_eq!(plan.all().count(), 6);
    }
}
