//! Packs against real stores: a commit stores its chunks in a few PUTs, a
//! cold sequential reader fetches them in a few GETs, and gc splits a pack
//! that is mostly garbage without a reader noticing.

mod common;

use std::time::Duration;

use common::{ALL_BACKENDS, TestStore, read_tags, write_tags};
use zeroblk::engine::{self, GcOptions, NewVolume, Volume};
use zeroblk::format::Compression;

const MIB: u64 = 1 << 20;
/// Tags per 1 MiB chunk.
const BLOCKS_PER_CHUNK: u64 = MIB / 4096;
const NOW: GcOptions = GcOptions {
    grace: Duration::ZERO,
    dry_run: false,
    password: None,
};

/// Creates volume `name` with 1 MiB chunks stored uncompressed, so that a
/// chunk object is as big as its chunk and a pack (8 MiB) holds 8.
async fn create_raw(store: &TestStore, name: &str, size: u64) {
    let new = NewVolume {
        name: name.into(),
        size,
        chunk_size: MIB,
        compression: Compression::None,
        encrypt_with: None,
    };
    engine::create(&store.store, &new).await.unwrap();
}

/// Opens `name` with a fresh cache dir and room for a read-ahead window;
/// it commits when told to or at close, so each test knows its packs.
async fn open_fresh(store: &TestStore, name: &str) -> (Volume, tempfile::TempDir) {
    let cache = tempfile::tempdir().unwrap();
    let mut options = common::engine_options(cache.path());
    options.memory_cache_bytes = 128 * MIB;
    options.commit_interval = Duration::from_secs(3600);
    let volume = Volume::open(&store.reopen(), name, options).await.unwrap();
    (volume, cache)
}

/// What `read` reads from `name` opened with a fresh cache dir, and the
/// GETs it took.
async fn read_cold(
    store: &TestStore,
    name: &str,
    read: impl AsyncFnOnce(&Volume) -> Vec<u64>,
) -> (Vec<u64>, u64) {
    let (volume, _cache) = open_fresh(store, name).await;
    let gets_before = volume.counters().store.gets;
    let read = read(&volume).await;
    let gets = volume.counters().store.gets - gets_before;
    volume.close().await.unwrap();
    (read, gets)
}

/// The tags of chunks `chunks`, each chunk's blocks tagged `base + block`.
fn tags(chunks: std::ops::Range<u64>, base: u64) -> Vec<u64> {
    (chunks.start * BLOCKS_PER_CHUNK..chunks.end * BLOCKS_PER_CHUNK)
        .map(|block| base + block)
        .collect()
}

async fn count(store: &TestStore, prefix: &str) -> usize {
    store.store.list_keys(prefix).await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_packs_its_chunks_and_a_cold_reader_fetches_runs() {
    for backend in ALL_BACKENDS {
        eprintln!("backend: {backend:?}");
        let store = TestStore::new(backend);
        create_raw(&store, "v", 64 * MIB).await;
        let (volume, _cache) = open_fresh(&store, "v").await;
        let puts_before = volume.counters().store.puts;
        write_tags(&volume, 0, &tags(0..32, 1)).await;
        volume.close().await.unwrap();
        let puts = volume.counters().store.puts - puts_before;
        assert_eq!(count(&store, "packs/").await, 4, "32 chunks in packs of 8");
        assert_eq!(count(&store, "chunks/").await, 0);
        assert!(
            puts <= 4 + 4,
            "4 packs, a page, the root, the head and the lease: {puts} PUTs"
        );

        let (read, gets) = read_cold(&store, "v", async |volume| {
            let mut read = Vec::new();
            for chunk in 0..32 {
                // 256 KiB reads, as a sequential reader makes them.
                for quarter in 0..4 {
                    let first = chunk * BLOCKS_PER_CHUNK + quarter * BLOCKS_PER_CHUNK / 4;
                    read.extend(read_tags(volume, first, BLOCKS_PER_CHUNK / 4).await);
                }
            }
            read
        })
        .await;
        assert_eq!(read, tags(0..32, 1));
        assert!(
            gets <= 16,
            "32 chunks read in runs, not one by one: {gets} GETs"
        );
        let verified = engine::verify(&store.reopen(), "v", None).await.unwrap();
        assert!(verified.is_clean(), "{:?}", verified.bad);
        assert_eq!(verified.chunks, 32);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_reader_fetches_each_packs_share_of_a_scattered_stretch_at_once() {
    let store = TestStore::new(common::Backend::File);
    create_raw(&store, "v", 64 * MIB).await;
    let (volume, _cache) = open_fresh(&store, "v").await;
    write_tags(&volume, 0, &tags(0..16, 1)).await; // packs A (0..8), B (8..16)
    volume.commit().await.unwrap();
    // Every other chunk rewritten: neighbours now sit in different packs.
    let mut expected = tags(0..16, 1);
    for chunk in (0..16).step_by(2) {
        let new = tags(chunk..chunk + 1, 100_000);
        write_tags(&volume, chunk * BLOCKS_PER_CHUNK, &new).await;
        let at = (chunk * BLOCKS_PER_CHUNK) as usize;
        expected[at..at + new.len()].copy_from_slice(&new);
    }
    volume.close().await.unwrap();

    let (read, gets) = read_cold(&store, "v", async |volume| {
        let mut read = Vec::new();
        for quarter in 0..64 {
            let first = quarter * BLOCKS_PER_CHUNK / 4;
            read.extend(read_tags(volume, first, BLOCKS_PER_CHUNK / 4).await);
        }
        read
    })
    .await;
    assert_eq!(read, expected);
    // One for chunk 0, one per pack for the rest, and the map page; one
    // per chunk when runs took only neighbours in the volume.
    assert!(gets <= 7, "16 chunks from 3 packs: {gets} GETs");
}

/// fio's sequential reader at depth 8: eight 1 MiB reads in flight at
/// once, sent in order. They finish in any order, and must still be seen
/// as one sequential reader, whose read-ahead the later seven join.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_in_flight_together_are_read_ahead_as_one_sequential_reader() {
    let store = TestStore::new(common::Backend::File);
    create_raw(&store, "v", 64 * MIB).await;
    let (volume, _cache) = open_fresh(&store, "v").await;
    write_tags(&volume, 0, &tags(0..32, 1)).await; // 4 packs of 8
    volume.close().await.unwrap();

    let (read, gets) = read_cold(&store, "v", async |volume| {
        let mut read = Vec::new();
        for depth8 in 0..4 {
            let reads = (depth8 * 8..depth8 * 8 + 8)
                .map(|chunk| read_tags(volume, chunk * BLOCKS_PER_CHUNK, BLOCKS_PER_CHUNK));
            read.extend(futures::future::join_all(reads).await.concat());
        }
        read
    })
    .await;
    assert_eq!(read, tags(0..32, 1));
    // The map page, chunk 0, then the 4 packs' shares of the read-ahead;
    // a read-ahead started only when reads finish in order lets each of
    // the first eight reads fetch its chunk alone.
    assert!(
        gets <= 7,
        "32 chunks in 4 packs read at depth 8: {gets} GETs"
    );
}

/// Even a commit's only new chunk goes in a pack, a new object: a commit
/// never writes over an object gc may be deleting (see the engine's gc).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lone_new_chunk_is_stored_in_a_pack_of_its_own() {
    let store = TestStore::new(common::Backend::File);
    create_raw(&store, "v", 16 * MIB).await;
    let (volume, _cache) = open_fresh(&store, "v").await;
    write_tags(&volume, 3 * BLOCKS_PER_CHUNK, &[7, 8]).await;
    volume.close().await.unwrap();
    assert_eq!(count(&store, "chunks/").await, 0);
    assert_eq!(count(&store, "packs/").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_splits_a_mostly_dead_pack_and_readers_find_its_chunks() {
    for backend in ALL_BACKENDS {
        eprintln!("backend: {backend:?}");
        let store = TestStore::new(backend);
        create_raw(&store, "v", 64 * MIB).await;
        let (volume, _cache) = open_fresh(&store, "v").await;
        write_tags(&volume, 0, &tags(0..16, 1)).await; // packs A (0..8), B (8..16)
        volume.commit().await.unwrap();
        // Six of A's eight chunks and one of B's are overwritten.
        write_tags(&volume, 0, &tags(0..6, 100_000)).await;
        write_tags(&volume, 8 * BLOCKS_PER_CHUNK, &tags(8..9, 100_000)).await;
        volume.close().await.unwrap();
        let mut expected = tags(0..6, 100_000);
        expected.extend(tags(6..8, 1));
        expected.extend(tags(8..9, 100_000));
        expected.extend(tags(9..16, 1));

        let dry = engine::collect_garbage(
            &store.store,
            GcOptions {
                dry_run: true,
                ..NOW
            },
        )
        .await
        .unwrap();
        assert_eq!((dry.packs_split, dry.packs_deleted), (1, 0), "{dry:?}");
        let chunks_before = count(&store, "chunks/").await;
        let report = engine::collect_garbage(&store.store, NOW).await.unwrap();
        assert_eq!(
            (report.packs_split, report.packs_deleted),
            (1, 0),
            "{report:?}"
        );
        assert_eq!(report.packs_kept, 2, "B, and the overwrites' pack");
        assert_eq!(count(&store, "packs/").await, 2);
        assert_eq!(
            count(&store, "chunks/").await,
            chunks_before + 2,
            "A's live chunks, on their own"
        );
        let six_mib = 6 * (MIB + 16);
        assert!(
            report.bytes_freed >= six_mib && report.bytes_freed < six_mib + MIB,
            "A's dead chunks and the old roots: {report:?}"
        );

        let again = engine::collect_garbage(&store.store, NOW).await.unwrap();
        assert_eq!(
            (again.chunks_deleted, again.packs_split, again.bytes_freed),
            (0, 0, 0),
            "the split-out chunks stay: their pack is gone; {again:?}"
        );
        let (volume, _cache) = open_fresh(&store, "v").await;
        assert_eq!(read_tags(&volume, 0, 16 * BLOCKS_PER_CHUNK).await, expected);
        volume.close().await.unwrap();
        let verified = engine::verify(&store.reopen(), "v", None).await.unwrap();
        assert!(verified.is_clean(), "{:?}", verified.bad);

        // Overwritten whole, both old packs go.
        let (volume, _cache) = open_fresh(&store, "v").await;
        write_tags(&volume, 0, &tags(0..16, 200_000)).await;
        volume.close().await.unwrap();
        let report = engine::collect_garbage(&store.store, NOW).await.unwrap();
        assert_eq!(report.packs_deleted, 2, "{report:?}");
        assert_eq!(
            report.chunks_deleted as usize,
            chunks_before + 2,
            "{report:?}"
        );
        let (volume, _cache) = open_fresh(&store, "v").await;
        assert_eq!(
            read_tags(&volume, 0, 16 * BLOCKS_PER_CHUNK).await,
            tags(0..16, 200_000)
        );
        volume.close().await.unwrap();
    }
}
