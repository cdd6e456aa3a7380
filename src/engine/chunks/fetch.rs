//! Fetching committed chunks from the store: a chunk lives in its own
//! object or in a pack (see [`crate::format::pack`]). One chunk is one GET,
//! ranged for a packed one; a run of chunks from one pack, in pack order
//! and close together, is one ranged GET too ([`runs`]). Every chunk is
//! decoded and checked against its name before anyone sees it.
//!
//! A packed chunk whose pack is gone was taken out of it by `zeroblk gc`
//! (which does so to packs that are mostly garbage, storing each live chunk
//! as its own object first): it is read from its own object.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::future::try_join_all;

use crate::engine::error::{EngineError, Result};
use crate::format::{self, ChunkRef, Codec, ObjectId, Place, keys, pack};
use crate::store::Store;

/// A run fetched with one GET is at most this long.
const MAX_RUN_BYTES: u64 = 32 << 20;

/// Bytes between two chunks of a pack that a run fetches and drops rather
/// than make another request: on S3 a request's latency costs about as
/// much time as a few MiB of transfer (object_store coalesces ranges the
/// same way, 1 MiB apart by default). Two MiB spans a dead 1 MiB chunk.
const MAX_GAP_BYTES: u64 = 2 << 20;

/// The stored object of the chunk `entry` places, wherever it is; `None`
/// when it is nowhere.
pub(in crate::engine) async fn chunk_object(
    store: &Store,
    entry: &ChunkRef,
) -> Result<Option<Bytes>> {
    if let Place::Packed { pack, offset } = entry.place {
        let range = u64::from(offset)..u64::from(offset) + u64::from(entry.stored_len);
        if let Some(object) = store.get_range(&keys::pack(&pack), range).await? {
            return Ok(Some(object));
        }
    }
    Ok(store.get(&keys::chunk(&entry.id)).await?)
}

/// The key to name when the chunk `entry` places cannot be found.
pub(in crate::engine) fn key_of(entry: &ChunkRef) -> String {
    match entry.pack() {
        Some(pack) => keys::pack(&pack),
        None => keys::chunk(&entry.id),
    }
}

/// Cuts `entries` into runs that one ranged GET can fetch: chunks of one
/// pack, in pack order, at most [`MAX_GAP_BYTES`] apart and
/// [`MAX_RUN_BYTES`] in all. A chunk in its own object is a run of one.
///
/// The chunks of a run need not be neighbours in the volume: a commit packs
/// the chunks it touched in volume order, so after scattered writes a
/// stretch of the volume finds several of its chunks in each of a few
/// packs, and fetches each pack's share with one GET.
pub(super) fn runs(entries: Vec<ChunkRef>) -> Vec<Vec<ChunkRef>> {
    let mut runs: Vec<Vec<ChunkRef>> = Vec::new();
    let mut by_pack: BTreeMap<ObjectId, Vec<ChunkRef>> = BTreeMap::new();
    for entry in entries {
        match entry.pack() {
            Some(pack) => by_pack.entry(pack).or_default().push(entry),
            None => runs.push(vec![entry]),
        }
    }
    for (_, mut chunks) in by_pack {
        chunks.sort_by_key(offset_of);
        for entry in chunks {
            match runs.last_mut() {
                Some(run) if continues(run, &entry) => run.push(entry),
                _ => runs.push(vec![entry]),
            }
        }
    }
    runs
}

fn offset_of(entry: &ChunkRef) -> u32 {
    match entry.place {
        Place::Packed { offset, .. } => offset,
        Place::Own => 0,
    }
}

/// Whether `entry` lies after `run` in the same pack, close enough, within
/// the longest run.
fn continues(run: &[ChunkRef], entry: &ChunkRef) -> bool {
    let (first, last) = (run[0], run[run.len() - 1]);
    match (first.place, last.place, entry.place) {
        (
            Place::Packed { offset: start, .. },
            Place::Packed { pack, offset },
            Place::Packed {
                pack: next_pack,
                offset: next,
            },
        ) => {
            let end = u64::from(offset) + u64::from(last.stored_len);
            let next = u64::from(next);
            pack == next_pack
                && next >= end
                && next - end <= MAX_GAP_BYTES
                && next - u64::from(start) + u64::from(entry.stored_len) <= MAX_RUN_BYTES
        }
        _ => false,
    }
}

/// Fetches and decodes a run: one ranged GET of its pack, or, for a chunk
/// alone or a pack gone, each chunk's object.
pub(super) async fn fetch_run(
    store: &Store,
    codec: &Codec,
    run: Vec<ChunkRef>,
    generation: u64,
) -> Result<Vec<Bytes>> {
    tracing::trace!(chunks = run.len(), first = %run[0].id, "fetching a run");
    let objects = match run_range(&run) {
        Some((pack, range)) => match store.get_range(&keys::pack(&pack), range.clone()).await? {
            Some(data) => run
                .iter()
                .map(|entry| {
                    Ok((
                        *entry,
                        pack::chunk_object(&data, range.start as u32, entry)?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?,
            None => each_object(store, &run, generation).await?,
        },
        None => each_object(store, &run, generation).await?,
    };
    decode(objects, codec.clone()).await
}

/// The pack and byte range of a run of more than one chunk.
fn run_range(run: &[ChunkRef]) -> Option<(ObjectId, std::ops::Range<u64>)> {
    let (first, last) = (run.first()?, run.last()?);
    match (run.len(), first.place, last.place) {
        (
            2..,
            Place::Packed {
                pack,
                offset: start,
            },
            Place::Packed { offset: end, .. },
        ) => Some((
            pack,
            u64::from(start)..u64::from(end) + u64::from(last.stored_len),
        )),
        _ => None,
    }
}

/// Each chunk's object, wherever it is.
async fn each_object(
    store: &Store,
    run: &[ChunkRef],
    generation: u64,
) -> Result<Vec<(ChunkRef, Bytes)>> {
    try_join_all(run.iter().map(|entry| async move {
        let object =
            chunk_object(store, entry)
                .await?
                .ok_or_else(|| EngineError::MissingObject {
                    key: key_of(entry),
                    generation,
                })?;
        Ok::<_, EngineError>((*entry, object))
    }))
    .await
}

/// Decodes and verifies chunk objects, off the async threads.
async fn decode(objects: Vec<(ChunkRef, Bytes)>, codec: Codec) -> Result<Vec<Bytes>> {
    crate::blocking::run(move || {
        objects
            .iter()
            .map(|(entry, object)| {
                let decoded = format::chunk::decode(entry.id, object, &codec)
                    .map_err(|error| error.stored_in(&key_of(entry)))?;
                Ok(Bytes::from(decoded))
            })
            .collect()
    })
    .await
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A chunk of `len` stored bytes at `offset` of pack `pack`.
    pub(in crate::engine::chunks) fn packed(pack: &[u8], offset: u32, len: u32) -> ChunkRef {
        ChunkRef {
            id: ObjectId::of(&offset.to_le_bytes()),
            stored_len: len,
            place: Place::Packed {
                pack: ObjectId::of(pack),
                offset,
            },
        }
    }

    #[test]
    fn runs_take_each_pack_in_pack_order_across_small_gaps() {
        let own = ChunkRef::own(ObjectId::of(b"own"), 10);
        let mib = 1 << 20;
        // In volume order, as a window of a volume scattered by writes
        // finds them: packs p and q interleaved.
        let entries = vec![
            packed(b"p", 0, 100),
            packed(b"q", 0, 10),
            packed(b"p", 100, 50),
            own,
            packed(b"q", 10, 10),
            packed(b"p", 150 + 2 * mib, 10), // a gap of 2 MiB: fetched and dropped
            packed(b"p", 5 * mib, 10),       // too far: a GET of its own
        ];
        let mut lens: Vec<usize> = runs(entries).iter().map(Vec::len).collect();
        lens.sort();
        assert_eq!(lens, [1, 1, 2, 3]);
    }

    #[test]
    fn runs_stop_at_their_longest() {
        let mib = 1 << 20;
        let entries: Vec<_> = (0..40).map(|i| packed(b"p", i * mib, mib)).collect();
        let lens: Vec<usize> = runs(entries).iter().map(Vec::len).collect();
        assert_eq!(lens, [32, 8]);
    }
}
