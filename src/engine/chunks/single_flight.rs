//! Single flight: every fetch from the store is registered, chunk by
//! chunk, until it ends. A reader that needs a chunk a fetch is getting
//! waits for that fetch, and read-ahead leaves such chunks out of its runs,
//! so no chunk is downloaded twice at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared as SharedFuture};

use super::fetch::fetch_run;
use crate::engine::error::EngineError;
use crate::format::{ChunkRef, Codec, ObjectId};
use crate::store::Store;

/// The decoded chunks of a run, in order, shared by everyone waiting.
pub(super) type RunFetch = SharedFuture<BoxFuture<'static, RunResult>>;
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

    pub(super) fn contains(&self, entry: &ChunkRef) -> bool {
        self.lock().contains_key(&entry.id)
    }

    /// The fetch getting `entry`, or a new one of it alone, registered.
    pub(super) fn join_or_start(
        self: &Arc<Self>,
        entry: ChunkRef,
        generation: u64,
    ) -> (RunFetch, usize) {
        let mut chunks = self.lock();
        if let Some(member) = chunks.get(&entry.id) {
            return (member.fetch.clone(), member.index);
        }
        let fetch = self.register(&mut chunks, vec![entry], generation);
        (fetch, 0)
    }

    /// Registers fetches of the chunks of `run` no fetch is getting yet,
    /// cut where one is; returns each fetch and its chunks.
    pub(super) fn start_runs(
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
    pub(super) fn abandon(&self, fetch: &RunFetch, run: &[ChunkRef]) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::chunks::fetch::tests::packed;

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
