//! Fetching committed chunks from the store, into the chunk cache.
//!
//! A chunk lives in its own object or in a pack (see
//! [`crate::format::pack`]). One chunk is one GET, ranged for a packed one.
//! Read-ahead and NBD's CACHE fetch runs of chunks that lie back to back
//! in one pack with one ranged GET, and every chunk of the run reaches
//! the cache through the cache's single-flight load, so a reader asking
//! for one of them meanwhile waits for that GET instead of making its own.
//!
//! A packed chunk whose pack is gone was taken out of it by `zeroblk gc`
//! (which does so to packs that are mostly garbage, storing each live chunk
//! as its own object first): it is read from its own object.

use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{Shared as SharedFuture, join_all};

use super::error::{EngineError, Result};
use super::volume::Shared;
use crate::format::{self, ChunkRef, Place, Root, keys, pack};
use crate::store::Store;

/// A run fetched with one GET is at most this long.
const MAX_RUN_BYTES: u64 = 32 << 20;

/// The stored object of the chunk `entry` places, wherever it is; `None`
/// when it is nowhere.
pub(super) async fn chunk_object(store: &Store, entry: &ChunkRef) -> Result<Option<Bytes>> {
    if let Place::Packed { pack, offset } = entry.place {
        let range = u64::from(offset)..u64::from(offset) + u64::from(entry.stored_len);
        if let Some(object) = store.get_range(&keys::pack(&pack), range).await? {
            return Ok(Some(object));
        }
    }
    Ok(store.get(&keys::chunk(&entry.id)).await?)
}

/// The key to name when the chunk `entry` places cannot be found.
pub(super) fn key_of(entry: &ChunkRef) -> String {
    match entry.pack() {
        Some(pack) => keys::pack(&pack),
        None => keys::chunk(&entry.id),
    }
}

/// Cuts `entries` (in volume order) into runs that one ranged GET can
/// fetch: chunks back to back in one pack, at most [`MAX_RUN_BYTES`]. A
/// chunk in its own object is a run of one.
pub(super) fn runs(entries: Vec<ChunkRef>) -> Vec<Vec<ChunkRef>> {
    let mut runs: Vec<Vec<ChunkRef>> = Vec::new();
    for entry in entries {
        let extends_last = runs.last().is_some_and(|run| {
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
                    pack == next_pack
                        && next == offset + last.stored_len
                        && u64::from(next - start) + u64::from(entry.stored_len) <= MAX_RUN_BYTES
                }
                _ => false,
            }
        });
        match runs.last_mut() {
            Some(run) if extends_last => run.push(entry),
            _ => runs.push(vec![entry]),
        }
    }
    runs
}

/// The decoded chunks of a run, shared by every chunk's cache load.
type RunFetch = SharedFuture<futures::future::BoxFuture<'static, RunResult>>;
type RunResult = std::result::Result<Arc<Vec<Bytes>>, Arc<EngineError>>;

impl Shared {
    /// A chunk missing from memory: from disk, else from the store.
    pub(super) async fn fetch_chunk(&self, entry: ChunkRef, generation: u64) -> Result<Bytes> {
        let id = entry.id;
        self.chunks
            .get_or_fetch(id, async move {
                let object = chunk_object(&self.store, &entry).await?.ok_or_else(|| {
                    EngineError::MissingObject {
                        key: key_of(&entry),
                        generation,
                    }
                })?;
                decode(vec![(entry, object)])
                    .await
                    .map(|mut raw| raw.remove(0))
            })
            .await
            .map_err(|error| {
                tracing::error!(chunk = %id, %error, "cannot read a chunk");
                EngineError::Shared(error)
            })
    }

    /// Fetches the committed `chunks` of `map` that are not in memory into
    /// the cache, a run at a time. Failures are left for a read to meet.
    pub(super) async fn prefetch(self: Arc<Self>, map: Arc<Root>, chunks: std::ops::Range<u64>) {
        let mut missing = Vec::new();
        for chunk in chunks {
            match self.pages.lookup(&map, chunk).await {
                Ok(entry) if !entry.is_zero() && !self.chunks.in_memory(&entry.id) => {
                    missing.push(entry);
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "read-ahead stopped");
                    return;
                }
            }
        }
        let fetches = runs(missing)
            .into_iter()
            .map(|run| self.fetch_run(run, map.generation));
        join_all(fetches).await;
    }

    /// Fetches a run into the cache: one ranged GET for all of it.
    async fn fetch_run(&self, run: Vec<ChunkRef>, generation: u64) {
        if let [entry] = run.as_slice() {
            let _ = self.fetch_chunk(*entry, generation).await;
            return;
        }
        let fetch = self.run_fetch(run.clone(), generation);
        let loads = run.iter().enumerate().map(|(i, entry)| {
            let fetch = fetch.clone();
            self.chunks.get_or_fetch(
                entry.id,
                fetch.map(move |got| got.map(|raw| raw[i].clone())),
            )
        });
        for load in join_all(loads).await {
            if let Err(error) = load {
                tracing::debug!(%error, "read-ahead of a run failed; reads fetch its chunks one by one");
            }
        }
    }

    /// The GET of a run, decoded; it starts when a chunk's load polls it.
    fn run_fetch(&self, run: Vec<ChunkRef>, generation: u64) -> RunFetch {
        let store = self.store.clone();
        async move {
            let first = run[0];
            let last = run[run.len() - 1];
            let (
                Place::Packed {
                    pack,
                    offset: start,
                },
                Place::Packed { offset: end, .. },
            ) = (first.place, last.place)
            else {
                unreachable!("runs of more than one chunk are packed");
            };
            let range = u64::from(start)..u64::from(end) + u64::from(last.stored_len);
            let key = keys::pack(&pack);
            let data = store
                .get_range(&key, range)
                .await
                .map_err(EngineError::from)?
                .ok_or(EngineError::MissingObject { key, generation })?;
            let objects = run
                .iter()
                .map(|entry| Ok((*entry, pack::chunk_object(&data, start, entry)?)))
                .collect::<Result<Vec<_>>>()?;
            Ok(Arc::new(decode(objects).await?))
        }
        .map(|result: Result<Arc<Vec<Bytes>>>| result.map_err(Arc::new))
        .boxed()
        .shared()
    }
}

/// Decodes and verifies chunk objects, off the async threads.
async fn decode(objects: Vec<(ChunkRef, Bytes)>) -> Result<Vec<Bytes>> {
    tokio::task::spawn_blocking(move || {
        objects
            .iter()
            .map(|(entry, object)| Ok(Bytes::from(format::chunk::decode(entry.id, object)?)))
            .collect()
    })
    .await
    .expect("chunk decoding does not panic")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::ObjectId;

    fn packed(pack: &[u8], offset: u32, len: u32) -> ChunkRef {
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
    fn runs_are_back_to_back_in_one_pack() {
        let own = ChunkRef::own(ObjectId::of(b"own"), 10);
        let entries = vec![
            packed(b"p", 0, 100),
            packed(b"p", 100, 50),
            own,
            packed(b"p", 150, 10),
            packed(b"p", 200, 10), // a gap: the chunk between is cached
            packed(b"q", 210, 10), // another pack
        ];
        let lens: Vec<usize> = runs(entries).iter().map(Vec::len).collect();
        assert_eq!(lens, [2, 1, 1, 1, 1]);
    }

    #[test]
    fn runs_stop_at_their_longest() {
        let mib = 1 << 20;
        let entries: Vec<_> = (0..40).map(|i| packed(b"p", i * mib, mib)).collect();
        let lens: Vec<usize> = runs(entries).iter().map(Vec::len).collect();
        assert_eq!(lens, [32, 8]);
    }
}
