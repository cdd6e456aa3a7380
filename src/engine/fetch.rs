//! Fetching committed chunks from the store, into the chunk cache.
//!
//! A chunk lives in its own object or in a pack (see
//! [`crate::format::pack`]). One chunk is one GET, ranged for a packed one.
//! Read-ahead and NBD's CACHE fetch runs: the chunks they want from one
//! pack, in pack order and close together, with one ranged GET ([`runs`]).
//!
//! Every fetch from the store is registered, chunk by chunk, in
//! [`InFlight`] until it ends: a reader that needs a chunk a fetch is
//! getting waits for that fetch, and read-ahead leaves such chunks out of
//! its runs, so no chunk is downloaded twice at once.
//!
//! A packed chunk whose pack is gone was taken out of it by `zeroblk gc`
//! (which does so to packs that are mostly garbage, storing each live chunk
//! as its own object first): it is read from its own object.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared as SharedFuture, join_all, try_join_all};

use super::error::{EngineError, Result};
use super::volume::Shared;
use crate::format::{self, ChunkRef, Codec, ObjectId, Place, Root, keys, pack};
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

/// The decoded chunks of a run, in order, shared by everyone waiting.
type RunFetch = SharedFuture<BoxFuture<'static, RunResult>>;
type RunResult = std::result::Result<Arc<Vec<Bytes>>, Arc<EngineError>>;

/// Store fetches in flight: for each chunk being fetched, the fetch and
/// the chunk's place in its run.
pub(super) struct InFlight {
    store: Store,
    /// How the volume's chunk objects are opened.
    codec: Codec,
    chunks: Mutex<HashMap<ObjectId, Member>>,
    serial: AtomicU64,
}

#[derive(Clone)]
struct Member {
    serial: u64,
    fetch: RunFetch,
    index: usize,
}

impl InFlight {
    pub(super) fn new(store: Store, codec: Codec) -> InFlight {
        InFlight {
            store,
            codec,
            chunks: Mutex::default(),
            serial: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectId, Member>> {
        self.chunks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn contains(&self, entry: &ChunkRef) -> bool {
        self.lock().contains_key(&entry.id)
    }

    /// The fetch getting `entry`, or a new one of it alone, registered.
    fn join_or_start(self: &Arc<Self>, entry: ChunkRef, generation: u64) -> (RunFetch, usize) {
        let mut chunks = self.lock();
        if let Some(member) = chunks.get(&entry.id) {
            return (member.fetch.clone(), member.index);
        }
        let fetch = self.register(&mut chunks, vec![entry], generation);
        (fetch, 0)
    }

    /// Registers fetches of the chunks of `run` no fetch is getting yet,
    /// cut where one is; returns each fetch and its chunks.
    fn start_runs(
        self: &Arc<Self>,
        run: Vec<ChunkRef>,
        generation: u64,
    ) -> Vec<(RunFetch, Vec<ChunkRef>)> {
        let mut chunks = self.lock();
        let mut pieces: Vec<Vec<ChunkRef>> = vec![Vec::new()];
        for entry in run {
            match chunks.contains_key(&entry.id) {
                true => pieces.push(Vec::new()),
                false => pieces.last_mut().expect("one piece").push(entry),
            }
        }
        pieces
            .into_iter()
            .filter(|piece| !piece.is_empty())
            .map(|piece| {
                let fetch = self.register(&mut chunks, piece.clone(), generation);
                (fetch, piece)
            })
            .collect()
    }

    fn register(
        self: &Arc<Self>,
        chunks: &mut HashMap<ObjectId, Member>,
        run: Vec<ChunkRef>,
        generation: u64,
    ) -> RunFetch {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let ids: Vec<ObjectId> = run.iter().map(|e| e.id).collect();
        let in_flight = Arc::clone(self);
        let forget = ids.clone();
        let fetch = async move {
            let fetched = fetch_run(&in_flight.store, &in_flight.codec, run, generation).await;
            in_flight.forget(&forget, serial);
            fetched.map(Arc::new).map_err(Arc::new)
        }
        .boxed()
        .shared();
        for (index, id) in ids.into_iter().enumerate() {
            let fetch = fetch.clone();
            chunks.insert(
                id,
                Member {
                    serial,
                    fetch,
                    index,
                },
            );
        }
        fetch
    }

    /// Drops the chunks of `fetch`, which will not run.
    fn abandon(&self, fetch: &RunFetch, run: &[ChunkRef]) {
        let mut chunks = self.lock();
        for entry in run {
            if chunks.get(&entry.id).is_some_and(|m| m.fetch.ptr_eq(fetch)) {
                chunks.remove(&entry.id);
            }
        }
    }

    /// Drops the chunks of fetch `serial`, which ended.
    fn forget(&self, ids: &[ObjectId], serial: u64) {
        let mut chunks = self.lock();
        for id in ids {
            if chunks.get(id).is_some_and(|m| m.serial == serial) {
                chunks.remove(id);
            }
        }
    }
}

/// Fetches and decodes a run: one ranged GET of its pack, or, for a chunk
/// alone or a pack gone, each chunk's object.
async fn fetch_run(
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

/// The error of a read whose chunk could not be loaded.
fn unreadable(entry: &ChunkRef, error: &Arc<EngineError>) -> EngineError {
    tracing::error!(chunk = %entry.id, %error, "cannot read a chunk");
    EngineError::Shared(Arc::clone(error))
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

impl Shared {
    /// A chunk missing from memory: from disk, else from the store (or
    /// from the fetch already getting it).
    pub(super) async fn fetch_chunk(&self, entry: ChunkRef, generation: u64) -> Result<Bytes> {
        let from_store = self.fetch_from_store(entry, generation);
        let fetched = self.chunks.get_or_fetch(entry.id, from_store).await;
        fetched.map_err(|error| unreadable(&entry, &error))
    }

    /// Bytes `range` of a chunk missing from memory: from disk, reading
    /// only the blocks around them, else from the whole chunk fetched as
    /// [`Shared::fetch_chunk`] does.
    pub(super) async fn fetch_range(
        &self,
        entry: ChunkRef,
        generation: u64,
        range: std::ops::Range<usize>,
    ) -> Result<Bytes> {
        let from_store = self.fetch_from_store(entry, generation);
        let fetched = self
            .chunks
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
        self.chunks
            .get_or_fetch(entry.id, fetched)
            .await
            .map_err(|error| EngineError::Shared(Arc::clone(&error)))
    }

    /// Starts fetching the committed `chunks` of `map` that are neither
    /// cached nor being fetched, a run at a time, and returns once the
    /// runs are registered: a read that comes after joins them. Failures
    /// are left for a read to meet.
    pub(super) async fn start_prefetch(self: &Arc<Self>, map: &Root, chunks: std::ops::Range<u64>) {
        let missing = match self.missing_chunks(map, chunks).await {
            Ok(missing) => missing,
            Err(error) => {
                tracing::debug!(%error, "read-ahead stopped");
                return;
            }
        };
        let mut started = Vec::new();
        for run in runs(missing) {
            started.extend(self.in_flight.start_runs(run, map.generation));
        }
        if !started.is_empty() {
            tokio::spawn(Arc::clone(self).load_runs(started));
        }
    }

    /// The committed chunks of `chunks` that are neither cached nor in
    /// flight, each once.
    async fn missing_chunks(
        &self,
        map: &Root,
        chunks: std::ops::Range<u64>,
    ) -> Result<Vec<ChunkRef>> {
        let mut missing = Vec::new();
        let mut seen = HashSet::new();
        for chunk in chunks {
            let entry = self.pages.lookup(map, chunk).await?;
            if !entry.is_zero()
                && seen.insert(entry.id)
                && !self.chunks.is_cached(&entry.id)
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
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn a_chunk_in_flight_is_left_out_of_new_runs_and_forgotten_after() {
        let store = Store::memory();
        let in_flight = Arc::new(InFlight::new(store.clone(), Codec::clear()));
        let run: Vec<_> = (0..4).map(|i| packed(b"p", i * 10, 10)).collect();
        let (single, _) = in_flight.join_or_start(run[2], 1);
        let (joined, index) = in_flight.join_or_start(run[2], 1);
        assert!(
            joined.ptr_eq(&single) && index == 0,
            "the second asker joins"
        );
        let started = in_flight.start_runs(run.clone(), 1);
        let pieces: Vec<Vec<ChunkRef>> = started.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(pieces, [vec![run[0], run[1]], vec![run[3]]]);
        assert!(run.iter().all(|e| in_flight.contains(e)));
        // The store has no such pack: each fetch fails, and is forgotten.
        assert!(single.await.is_err());
        for (fetch, _) in started {
            assert!(fetch.await.is_err());
        }
        assert!(run.iter().all(|e| !in_flight.contains(e)));
    }
}
