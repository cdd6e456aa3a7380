//! Volumes opened read-only, against real stores (a local directory and a
//! real S3 server, moto): followers pick up the writer's commits and never see
//! a torn state, snapshots read what they pinned, writes are refused
//! with EROFS, and followers outlive gc.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    Backend, TestStore, block_of, create_and_open_with, engine_options, read_tags, tag_of,
    write_tags,
};
use zeroblk::engine::{self, EngineError, Follow, GcOptions, Volume, VolumeRef};

const MIB: u64 = 1 << 20;

/// The stores a reader must work on; the memory store is the writer's own
/// process, which a reader never is in practice.
const BACKENDS: [Backend; 2] = [Backend::File, Backend::S3];

async fn for_each_backend<F, Fut>(test: F)
where
    F: Fn(Backend) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for backend in BACKENDS {
        eprintln!("backend: {backend:?}");
        test(backend).await;
    }
}

/// Opens `what` read-only from a store of its own (as another process
/// would), with a cache dir of `cache`, which a writer may share.
async fn open_reader(
    store: &TestStore,
    what: &str,
    follow: Follow,
    cache: &std::path::Path,
) -> Volume {
    let what: VolumeRef = what.parse().unwrap();
    Volume::open_read_only(&store.reopen(), &what, follow, engine_options(cache))
        .await
        .unwrap()
}

/// Reads the tag of block `block` until it is `tag`; returns how long that
/// took, or panics after `limit`.
async fn wait_for_tag(volume: &Volume, block: u64, tag: u64, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if read_tags(volume, block, 1).await == [tag] {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "block {block} did not read {tag} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_picks_up_each_commit() {
    for_each_backend(|backend| async move {
        let store = TestStore::new(backend);
        let interval = Duration::from_millis(500);
        let (writer, cache, _) = create_and_open_with(&store.store, "v", 64 * MIB, MIB, |o| {
            o.commit_interval = interval;
        })
        .await;
        // Beside the writer, on its own cache dir: no lock, no lease.
        let follower = open_reader(
            &store,
            "v",
            Follow::Every(Duration::from_secs(1)),
            cache.path(),
        )
        .await;
        assert!(follower.is_read_only() && !writer.is_read_only());
        assert_eq!(read_tags(&follower, 0, 2).await, [0, 0]);
        // How soon is measured by scripts/follow_latency.py, not here: a
        // loaded machine may commit late. This checks it happens at all.
        for round in 1..=4u64 {
            write_tags(&writer, round * 100, &[round]).await;
            writer.flush().await.unwrap();
            let seen = wait_for_tag(&follower, round * 100, round, Duration::from_secs(60)).await;
            eprintln!("round {round}: the follower read the write after {seen:?}");
            let generation = follower.counters().generation;
            assert!(generation >= round, "generation {generation}");
        }
        follower.close().await.unwrap();
        writer.close().await.unwrap();
    })
    .await;
}

/// Writes that belong together go in one request, so in one commit: one
/// write across a chunk boundary and one across a map page's (1024
/// chunks of 64 KiB).
const PAIRS: [u64; 2] = [15, 16383];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_never_sees_half_a_commit() {
    for_each_backend(|backend| async move {
        let store = TestStore::new(backend);
        let (writer, cache, _) =
            create_and_open_with(&store.store, "v", 128 * MIB, 64 << 10, |o| {
                o.commit_interval = Duration::from_millis(20);
            })
            .await;
        let follower = Arc::new(
            open_reader(
                &store,
                "v",
                Follow::Every(Duration::from_millis(5)),
                cache.path(),
            )
            .await,
        );
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|reader| {
                let (follower, done) = (Arc::clone(&follower), Arc::clone(&done));
                tokio::spawn(async move { read_pairs(&follower, &done, reader).await })
            })
            .collect();
        let rounds = 60u64;
        for tag in 1..=rounds {
            for first in PAIRS {
                let pair: Vec<u8> = [block_of(tag), block_of(tag)].concat();
                writer.write(first * 4096, &pair, false).await.unwrap();
            }
            if tag % 3 == 0 {
                writer.commit().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        writer.commit().await.unwrap();
        wait_for_tag(&follower, PAIRS[1] + 1, rounds, Duration::from_secs(10)).await;
        done.store(true, Ordering::Relaxed);
        let mut reads = 0;
        let mut tags_seen = 0;
        for reader in readers {
            let (read, seen) = reader.await.unwrap();
            reads += read;
            tags_seen += seen;
        }
        eprintln!("{reads} reads of pairs, {tags_seen} changes seen, none torn");
        assert!(
            tags_seen >= 8,
            "the follower barely moved: {tags_seen} changes"
        );
        follower.close().await.unwrap();
        writer.close().await.unwrap();
    })
    .await;
}

/// Reads both pairs in one request each until `done`; panics on a pair
/// whose halves differ or on a tag older than one seen before. Returns
/// the reads made and how often a pair changed.
async fn read_pairs(follower: &Volume, done: &AtomicBool, reader: u64) -> (u64, u64) {
    let (mut reads, mut changes) = (0, 0);
    let mut newest = [0u64; PAIRS.len()];
    while !done.load(Ordering::Relaxed) {
        for (index, first) in PAIRS.into_iter().enumerate() {
            let mut pair = vec![0u8; 8192];
            follower.read(first * 4096, &mut pair).await.unwrap();
            let (a, b) = (tag_of(&pair[..4096]), tag_of(&pair[4096..]));
            assert_eq!(a, b, "reader {reader}: a torn pair at block {first}");
            assert!(
                a >= newest[index],
                "reader {reader}: went back from {} to {a}",
                newest[index]
            );
            changes += u64::from(a > newest[index]);
            newest[index] = a;
            reads += 1;
        }
        tokio::task::yield_now().await;
    }
    (reads, changes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_reads_what_it_pinned_while_the_volume_changes() {
    for_each_backend(|backend| async move {
        let store = TestStore::new(backend);
        let (writer, cache, _) =
            create_and_open_with(&store.store, "v", 64 * MIB, MIB, |_| {}).await;
        write_tags(&writer, 0, &[1, 2, 3]).await;
        writer.commit().await.unwrap();
        engine::create_snapshot(&store.store, "v", Some("before"), None)
            .await
            .unwrap();
        let snapshot = open_reader(&store, "v@before", Follow::Pinned, cache.path()).await;
        let follower = open_reader(
            &store,
            "v",
            Follow::Every(Duration::from_millis(50)),
            cache.path(),
        )
        .await;
        for round in 10..13 {
            write_tags(&writer, 0, &[round, round, round]).await;
            writer.discard(64 * 4096, 4096, false).await.unwrap();
            writer.commit().await.unwrap();
            wait_for_tag(&follower, 0, round, Duration::from_secs(10)).await;
            assert_eq!(read_tags(&snapshot, 0, 4).await, [1, 2, 3, 0]);
        }
        assert_eq!(snapshot.size(), 64 * MIB);
        let holes = snapshot.allocation(0, 64 * MIB).await.unwrap();
        assert!(
            !holes[0].zero && holes.iter().skip(1).all(|e| e.zero),
            "{holes:?}"
        );
        let followed: VolumeRef = "v@before".parse().unwrap();
        let refused = Volume::open_read_only(
            &store.reopen(),
            &followed,
            Follow::Every(Duration::from_secs(1)),
            engine_options(cache.path()),
        )
        .await
        .err()
        .expect("a snapshot cannot be followed")
        .to_string();
        assert!(refused.contains("follow `v`"), "{refused}");
        let missing: VolumeRef = "v@nope".parse().unwrap();
        let refused = Volume::open_read_only(
            &store.reopen(),
            &missing,
            Follow::Pinned,
            engine_options(cache.path()),
        )
        .await
        .err()
        .expect("no such snapshot");
        assert!(
            matches!(refused, EngineError::NoSuchSnapshot { .. }),
            "{refused}"
        );
        writer.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_refuse_writes_with_erofs_and_flush_nothing() {
    for_each_backend(|backend| async move {
        let store = TestStore::new(backend);
        let (writer, cache, _) =
            create_and_open_with(&store.store, "v", 16 * MIB, MIB, |_| {}).await;
        write_tags(&writer, 0, &[5]).await;
        writer.commit().await.unwrap();
        engine::create_snapshot(&store.store, "v", Some("s"), None)
            .await
            .unwrap();
        writer.close().await.unwrap();
        drop(writer); // and its lock
        let commits = engine::info(&store.store, "v", None)
            .await
            .unwrap()
            .generation;
        for (what, names_the_fix) in [("v", "without --read-only"), ("v@s", "volume clone v@s")] {
            let reader = open_reader(&store, what, Follow::Pinned, cache.path()).await;
            let refusals = [
                reader.write(0, &block_of(9), false).await,
                reader.write(0, &block_of(9), true).await,
                reader.discard(0, 4096, false).await,
                reader.write_zeroes(0, 4096, false).await,
                reader.resize(32 * MIB).await,
            ];
            for refused in refusals {
                let error = refused.expect_err("a reader refuses writes");
                assert_eq!(error.errno(), libc::EROFS, "{what}: {error}");
                assert!(error.to_string().contains(names_the_fix), "{what}: {error}");
            }
            reader.flush().await.unwrap();
            reader.commit().await.unwrap();
            assert_eq!(read_tags(&reader, 0, 1).await, [5]);
            let past_the_end = reader.read_parts(16 * MIB, 4096).await.unwrap_err();
            assert_eq!(past_the_end.errno(), libc::EINVAL);
            reader.close().await.unwrap();
        }
        // Nothing a reader did reached the store: no root, no lease.
        let after = engine::info(&store.store, "v", None)
            .await
            .unwrap()
            .generation;
        assert_eq!(after, commits);
        // And the writer opens again, on the same host, while one reads.
        let reader = open_reader(
            &store,
            "v",
            Follow::Every(Duration::from_millis(50)),
            cache.path(),
        )
        .await;
        let writer = Volume::open(&store.reopen(), "v", engine_options(cache.path()))
            .await
            .unwrap();
        writer.close().await.unwrap();
        reader.close().await.unwrap();
    })
    .await;
}

const GC_NOW: GcOptions = GcOptions {
    grace: Duration::ZERO,
    dry_run: false,
    password: None,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_outlives_gc_and_a_pinned_reader_says_its_root_is_gone() {
    for_each_backend(|backend| async move {
        let store = TestStore::new(backend);
        let (writer, cache, options) =
            create_and_open_with(&store.store, "v", 16 * MIB, MIB, |_| {}).await;
        let first: Vec<u64> = (1..=512).collect();
        write_tags(&writer, 0, &first).await;
        writer.commit().await.unwrap();
        engine::create_snapshot(&store.store, "v", Some("first"), None)
            .await
            .unwrap();
        let middle: Vec<u64> = (501..=1012).collect();
        write_tags(&writer, 0, &middle).await;
        writer.commit().await.unwrap();
        // Readers on the commit between the snapshot and the last one,
        // that have read nothing yet (nothing in their caches); this
        // follower does not poll in this test.
        let lagging = open_reader(
            &store,
            "v",
            Follow::Every(Duration::from_secs(3600)),
            cache.path(),
        )
        .await;
        let pinned = open_reader(&store, "v", Follow::Pinned, cache.path()).await;
        let snapshot = open_reader(&store, "v@first", Follow::Pinned, cache.path()).await;
        let follower = open_reader(
            &store,
            "v",
            Follow::Every(Duration::from_millis(50)),
            cache.path(),
        )
        .await;
        let second: Vec<u64> = (1001..=1512).collect();
        write_tags(&writer, 0, &second).await;
        writer.close().await.unwrap();
        drop(writer);
        wait_for_tag(&follower, 0, 1001, Duration::from_secs(10)).await;
        let report = engine::collect_garbage(&store.store, GC_NOW).await.unwrap();
        assert!(
            report.roots_deleted >= 1 && report.pages_deleted >= 1,
            "{report:?}"
        );
        assert_eq!(read_tags(&follower, 0, 512).await, second);
        // The lagging follower's root is gone: it reads the newest instead.
        assert_eq!(read_tags(&lagging, 0, 512).await, second);
        assert!(lagging.counters().generation > 1);
        let gone = pinned.read_parts(0, 4096).await.unwrap_err();
        assert!(matches!(gone, EngineError::ReplacedRoot { .. }), "{gone}");
        assert!(gone.to_string().contains("--follow"), "{gone}");
        assert_eq!(read_tags(&snapshot, 0, 512).await, first);
        // The volume reads the same to its next writer.
        let writer = Volume::open(&store.reopen(), "v", options).await.unwrap();
        assert_eq!(read_tags(&writer, 0, 512).await, second);
        writer.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_caches_on_disk_in_a_folder_of_its_own_that_goes_with_it() {
    for_each_backend(|backend| async move {
        let store = TestStore::new(backend);
        let (writer, cache, _) =
            create_and_open_with(&store.store, "v", 64 * MIB, MIB, |_| {}).await;
        let tags: Vec<u64> = (1..=48 * 256).collect();
        write_tags(&writer, 0, &tags).await;
        writer.commit().await.unwrap();
        let reader = open_reader(&store, "v", Follow::Pinned, cache.path()).await;
        let folders = || -> Vec<std::path::PathBuf> {
            std::fs::read_dir(cache.path().join("readers"))
                .map(|entries| entries.flatten().map(|e| e.path()).collect())
                .unwrap_or_default()
        };
        let [folder] = folders().try_into().expect("one reader, one folder");
        // 48 chunks through a memory cache of a few: the second pass
        // finds what memory lost on disk.
        for _ in 0..2 {
            assert_eq!(read_tags(&reader, 0, 48 * 256).await, tags);
        }
        let counters = reader.counters().cache;
        assert!(counters.disk_hits > 0, "{counters:?}");
        assert!(folder.join("chunks").read_dir().unwrap().count() > 0);
        // Nothing of it in the writer's folder, which the writer locks.
        let writers = engine::local_dir(cache.path(), reader.superblock());
        assert!(!folder.starts_with(&writers));
        reader.close().await.unwrap();
        drop(reader);
        assert!(
            folders().is_empty(),
            "the reader's folder stays: {:?}",
            folders()
        );
        writer.close().await.unwrap();
    })
    .await;
}
