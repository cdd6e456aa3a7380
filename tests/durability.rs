//! The durability contract at the interleavings that can break it.
//!
//! Each test reaches one way a review found to lose data (issue 21): a
//! power cut after a replay, a takeover while the old writer's commit is
//! in flight, gc racing a commit, two writers taking the lease at once,
//! and a kill while a large record is being written. Actors are paused at
//! named failpoints (the `fail` crate, compiled in for tests only) while
//! another acts; power cuts are simulated on the whole cache dir
//! (`engine::simulate_power_cuts`). Failpoints are global to this process,
//! so every test holds a [`fail::FailScenario`] for its whole run.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::failpoints::{Passed, Pause};
use common::{
    Backend, TestStore, create_and_open_with, engine_options, new_volume, read_tags, write_tags,
};
use zeroblk::engine::{self, EngineOptions, Volume};

const MIB: u64 = 1 << 20;

/// `count` seeds for power cuts, from `ZEROBLK_SEED` on (0 unless set:
/// scripts/soak.sh sets it, so that every round cuts differently).
fn seeds(count: u64) -> std::ops::Range<u64> {
    let first = std::env::var("ZEROBLK_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0);
    first..first + count
}

/// A store in memory holding volume `v` (16 MiB, 64 KiB chunks), and a
/// fresh cache dir for it.
async fn volume_in_memory() -> (TestStore, tempfile::TempDir) {
    let store = TestStore::new(Backend::Memory);
    engine::create(&store.store, &new_volume("v", 16 * MIB, 64 << 10))
        .await
        .unwrap();
    (store, tempfile::tempdir().unwrap())
}

/// Volume `v` in memory, opened log-only with power cuts simulated on its
/// cache dir: the store, the cache dir, the options to reopen it with, and
/// the volume, shared so that tasks can flush it.
async fn power_cut_volume() -> (TestStore, tempfile::TempDir, EngineOptions, Arc<Volume>) {
    let (store, cache) = volume_in_memory().await;
    engine::simulate_power_cuts(cache.path());
    let options = log_only(cache.path());
    let volume = Volume::open(&store.store, "v", options.clone())
        .await
        .unwrap();
    (store, cache, options, Arc::new(volume))
}

/// A flush of `volume` in a task of its own.
fn spawn_flush(volume: &Arc<Volume>) -> tokio::task::JoinHandle<engine::Result<()>> {
    let volume = Arc::clone(volume);
    tokio::spawn(async move { volume.flush().await })
}

/// Options that leave everything in the log: no commit unless asked.
fn log_only(cache: &std::path::Path) -> EngineOptions {
    let mut options = engine_options(cache);
    keep_in_the_log(&mut options);
    options
}

/// Options under which writes stay in the log: no commit unless asked.
fn keep_in_the_log(options: &mut EngineOptions) {
    options.commit_interval = Duration::from_secs(3600);
    options.max_dirty_bytes = 64 * MIB;
}

/// Path 1: a replayed segment was never fsynced, because reopening it
/// took its whole length for synced. A power cut soon after the restart
/// could tear it; replay then stopped there and deleted the segments
/// after it, flushed writes included.
///
/// Fails on e71d2b6 (the failpoint and power-cut infrastructure, before
/// the fix); passes from the commit that syncs replayed segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_power_cut_after_a_replay_keeps_what_was_flushed_since() {
    let _scenario = fail::FailScenario::setup();
    for seed in seeds(24) {
        let store = TestStore::new(Backend::Memory);
        engine::create(&store.store, &new_volume("v", 16 * MIB, 64 << 10))
            .await
            .unwrap();
        let cache = tempfile::tempdir().unwrap();
        engine::simulate_power_cuts(cache.path());

        let volume = Volume::open(&store.store, "v", log_only(cache.path()))
            .await
            .unwrap();
        let unflushed: Vec<u64> = (1..=64).collect();
        write_tags(&volume, 0, &unflushed).await;
        volume.crash(false, seed).await;

        let volume = Volume::open(&store.store, "v", log_only(cache.path()))
            .await
            .unwrap();
        assert_eq!(
            read_tags(&volume, 0, 64).await,
            unflushed,
            "a process crash keeps what was acknowledged"
        );
        write_tags(&volume, 100, &[7, 8, 9]).await;
        volume.flush().await.unwrap();
        volume.crash(true, seed).await;

        let volume = Volume::open(&store.store, "v", log_only(cache.path()))
            .await
            .unwrap();
        assert_eq!(
            read_tags(&volume, 100, 3).await,
            [7, 8, 9],
            "seed {seed}: a write flushed after the replay was lost to the power cut"
        );
        volume.close().await.unwrap();
    }
}

/// A replay that finds the log's newest records torn (they fail their
/// checksum) keeps nothing of their epoch. The volume then waited, on
/// every flush and on close, for that epoch to become durable and
/// committed, which it never would: a flush before the first write after
/// such a restart hung forever. Found by the engine's model test once its
/// power cuts tore pages instead of cutting file tails.
///
/// Hangs on 360e6aa; passes from the commit that counts epochs a replay
/// found nothing of as durable and committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flush_after_a_replay_of_torn_records_returns() {
    let _scenario = fail::FailScenario::setup();
    for (seed, committed_first) in seeds(48).map(|seed| (seed, seed % 2 == 1)) {
        let store = TestStore::new(Backend::Memory);
        engine::create(&store.store, &new_volume("v", 16 * MIB, 64 << 10))
            .await
            .unwrap();
        let cache = tempfile::tempdir().unwrap();
        engine::simulate_power_cuts(cache.path());
        let volume = Volume::open(&store.store, "v", log_only(cache.path()))
            .await
            .unwrap();
        write_tags(&volume, 0, &[1]).await;
        match committed_first {
            // Nothing is left to replay but the torn record.
            true => volume.commit().await.unwrap(),
            false => volume.flush().await.unwrap(),
        }
        write_tags(&volume, 1, &[2]).await;
        volume.crash(true, seed).await;

        let volume = Volume::open(&store.store, "v", log_only(cache.path()))
            .await
            .unwrap();
        let finished = tokio::time::timeout(Duration::from_secs(10), async {
            volume.flush().await.unwrap();
            volume.close().await.unwrap();
        })
        .await;
        assert!(
            finished.is_ok(),
            "seed {seed} (committed first: {committed_first}): flush or close hung"
        );
    }
}

/// A retired segment file becomes a free file by a rename that is not
/// synced, then a later segment by a new header (synced) and a second
/// rename. A power cut before the directory is synced can bring the old
/// name back with the new header: replay took that file for the end of
/// the log and deleted every segment after it, flushed writes included.
///
/// Fails on 360e6aa; passes from the commit that removes such files.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recycled_file_that_lost_its_new_name_does_not_end_the_log() {
    for seed in seeds(16) {
        let scenario = fail::FailScenario::setup();
        let store = TestStore::new(Backend::Memory);
        engine::create(&store.store, &new_volume("v", 16 * MIB, 64 << 10))
            .await
            .unwrap();
        let cache = tempfile::tempdir().unwrap();
        engine::simulate_power_cuts(cache.path());
        let mut options = log_only(cache.path());
        options.log_segment_bytes = 32 << 10;
        let volume = Volume::open(&store.store, "v", options.clone())
            .await
            .unwrap();
        // Segment 1 fills and is committed: its file becomes a free one.
        write_tags(&volume, 0, &(1..=10).collect::<Vec<_>>()).await;
        volume.commit().await.unwrap();
        // Segment 2 holds a flushed write the store does not have.
        let flushed: Vec<u64> = (100..102).collect();
        write_tags(&volume, 20, &flushed).await;
        volume.flush().await.unwrap();
        // Segment 2 fills; the next one reuses segment 1's file, and the
        // process dies between its new header and its new name.
        fail::cfg("log::recycle_before_rename", "return").unwrap();
        write_tags(&volume, 40, &(7..17).collect::<Vec<_>>()).await;
        assert!(volume.flush().await.is_err(), "the recycle was cut short");
        fail::remove("log::recycle_before_rename");
        volume.crash(true, seed).await;

        let volume = Volume::open(&store.store, "v", options).await.unwrap();
        assert_eq!(
            read_tags(&volume, 20, 2).await,
            flushed,
            "seed {seed}: the flushed write in the segment after the recycled file was lost"
        );
        volume.close().await.unwrap();
        scenario.teardown();
    }
}

/// Path 5: a record of 64 KiB or more is written on a blocking thread,
/// while later small writes are written and acknowledged at once. A
/// `kill -9` before the large record landed left a gap in the log, where
/// replay stops: the small writes after it were lost, though acknowledged.
/// Now a write is acknowledged only once every record before it is
/// written.
///
/// Fails on bcd1811; passes from the commit that acknowledges writes in
/// log order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_during_a_large_record_loses_no_acknowledged_write() {
    let scenario = fail::FailScenario::setup();
    let (store, cache) = volume_in_memory().await;
    let volume = std::sync::Arc::new(
        Volume::open(&store.store, "v", log_only(cache.path()))
            .await
            .unwrap(),
    );
    let large = Pause::first_at("log::large_record");
    let writer = std::sync::Arc::clone(&volume);
    let large_write = tokio::spawn(async move {
        let _ = writer.write(0, &vec![1u8; 256 << 10], false).await;
    });
    large.reached().await;

    let held_back = Passed::at("log::ack_waits_for_earlier_records");
    let writer = std::sync::Arc::clone(&volume);
    let mut small_write =
        tokio::spawn(async move { writer.write(1 << 20, &common::block_of(42), false).await });
    let acknowledged = tokio::select! {
        done = &mut small_write => { done.unwrap().unwrap(); true }
        () = held_back.wait() => false,
    };
    // kill -9: the writes in flight end with the process.
    large_write.abort();
    let _ = large_write.await;
    if !acknowledged {
        small_write.abort();
        let _ = small_write.await;
    }
    let volume = std::sync::Arc::into_inner(volume).expect("the writers are gone");
    volume.crash(false, 0).await;
    large.resume();

    let volume = Volume::open(&store.store, "v", log_only(cache.path()))
        .await
        .unwrap();
    if acknowledged {
        assert_eq!(
            read_tags(&volume, 256, 1).await,
            [42],
            "an acknowledged write after the large record was lost"
        );
    }
    volume.close().await.unwrap();
    scenario.teardown();
}

/// Path 5 at a segment switch: the record that ends a segment was written
/// by the durability worker (then a task of its own), after the epoch it closes had drained, while
/// writes in the next segment were acknowledged at once. A `kill -9`
/// before it landed left a reused segment file ending in what it held
/// before, which replay took for the end of the log: the next segment,
/// acknowledged writes and all, was removed. Now the end record is
/// written as the epoch is sealed, before the next segment exists.
///
/// Fails on bcd1811; passes from the commit that acknowledges writes in
/// log order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_before_a_segment_is_closed_loses_no_acknowledged_write() {
    let scenario = fail::FailScenario::setup();
    let (store, cache) = volume_in_memory().await;
    let mut options = log_only(cache.path());
    options.log_segment_bytes = 32 << 10;
    let volume = std::sync::Arc::new(
        Volume::open(&store.store, "v", options.clone())
            .await
            .unwrap(),
    );
    // Segments 1 and 2 fill and are committed, so that segment 3 reuses
    // segment 1's file: past its new records it holds the old ones.
    let ten: Vec<u64> = (1..=10).collect();
    write_tags(&volume, 0, &ten).await;
    volume.commit().await.unwrap();
    write_tags(&volume, 0, &ten).await;
    volume.commit().await.unwrap();
    write_tags(&volume, 0, &(11..=19).collect::<Vec<_>>()).await;

    // Segment 3 is left for segment 4 while the sync is held up. The
    // flush that syncs cannot be aborted there; the kill leaves it be, and
    // it acknowledges nothing once let go.
    let sync = Pause::first_at("log::before_sync");
    let flusher = std::sync::Arc::clone(&volume);
    let flush = tokio::spawn(async move { flusher.flush().await });
    sync.reached().await;
    write_tags(&volume, 100, &[42]).await;

    volume.crash_in_use(false, 0).await;
    sync.resume();
    assert!(
        flush.await.unwrap().is_err(),
        "a flush acknowledged after the kill"
    );
    drop(volume);

    let volume = Volume::open(&store.store, "v", options).await.unwrap();
    assert_eq!(
        read_tags(&volume, 100, 1).await,
        [42],
        "an acknowledged write in the next segment was lost"
    );
    volume.close().await.unwrap();
    scenario.teardown();
}

/// A flush's sync runs on a thread where an abort cannot stop it: a crash
/// lets it run on. A sync that ends after the crash (and its power cut)
/// must acknowledge nothing, neither the flush that runs it nor one that
/// waits for it, since what it synced is what the cut left, not what was
/// written. The second flush here is polled by hand, so that it looks at
/// the log's progress only after the late sync.
///
/// Before the crash stopped waiting for a blocked sync, the crash here
/// waited for the held sync forever; with a sync that publishes what it
/// synced whatever happened meanwhile, both flushes returned Ok and the
/// cut could take their write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sync_that_ends_after_a_crash_acknowledges_no_flush() {
    use zeroblk::inline::poll_once;
    for seed in seeds(8) {
        let scenario = fail::FailScenario::setup();
        let (store, cache) = volume_in_memory().await;
        engine::simulate_power_cuts(cache.path());
        let options = log_only(cache.path());
        let volume = Volume::open(&store.store, "v", options.clone())
            .await
            .unwrap();
        write_tags(&volume, 0, &[1, 2]).await;
        volume.flush().await.unwrap();
        write_tags(&volume, 10, &[3, 4]).await;

        {
            let volume = Arc::new(volume);
            let sync = Pause::first_at("log::before_sync");
            let leader = spawn_flush(&volume);
            sync.reached().await;
            let mut flush = std::pin::pin!(volume.flush());
            assert!(poll_once(flush.as_mut()).is_pending());
            volume.crash_in_use(true, seed).await;
            let synced = Passed::at("log::synced");
            sync.resume();
            synced.wait().await;
            assert!(
                leader.await.unwrap().is_err(),
                "seed {seed}: a sync that ended after the crash acknowledged the flush that ran it"
            );
            match poll_once(flush.as_mut()) {
                std::task::Poll::Ready(Err(_)) => {}
                std::task::Poll::Ready(Ok(())) => {
                    panic!("seed {seed}: a sync that ended after the crash acknowledged a flush")
                }
                std::task::Poll::Pending => {
                    panic!("seed {seed}: the flush still waits after the crash")
                }
            }
        }

        let volume = Volume::open(&store.store, "v", options).await.unwrap();
        assert_eq!(read_tags(&volume, 0, 2).await, [1, 2], "seed {seed}");
        volume.close().await.unwrap();
        scenario.teardown();
    }
}

/// Flushes that arrive while a sync runs wait for the log's sync lead, and
/// the first of them to get it syncs for all: eight flushes behind a held
/// sync cost one more fdatasync, not eight. Each still returns only once
/// its own write is durable: a power cut after they return keeps every
/// write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flushes_behind_a_sync_share_the_next_one_and_keep_their_writes() {
    for seed in seeds(4) {
        let scenario = fail::FailScenario::setup();
        let (store, _cache, options, volume) = power_cut_volume().await;
        write_tags(&volume, 0, &[1]).await;
        let before = volume.counters().requests;

        let sync = Pause::first_at("log::before_sync");
        let leader = spawn_flush(&volume);
        sync.reached().await;
        let tags: Vec<u64> = (100..108).collect();
        write_tags(&volume, 10, &tags).await;
        let followers: Vec<_> = (0..tags.len()).map(|_| spawn_flush(&volume)).collect();
        sync.resume();
        leader.await.unwrap().unwrap();
        for follower in followers {
            follower.await.unwrap().unwrap();
        }
        let after = volume.counters().requests;
        assert_eq!(after.flushes - before.flushes, 9, "seed {seed}");
        assert_eq!(
            after.log_syncs - before.log_syncs,
            2,
            "seed {seed}: the flushes behind the held sync did not share one"
        );

        let volume = Arc::into_inner(volume).expect("the flushes are done");
        volume.crash(true, seed).await;
        let volume = Volume::open(&store.store, "v", options).await.unwrap();
        assert_eq!(read_tags(&volume, 0, 1).await, [1], "seed {seed}");
        assert_eq!(read_tags(&volume, 10, 8).await, tags, "seed {seed}");
        volume.close().await.unwrap();
        scenario.teardown();
    }
}

/// A flush that leads the log's sync and goes away before it syncs (its
/// client hung up, its task was aborted) leaves the epochs it was about to
/// sync to the next flush: what is left to sync is read from the log's
/// view, never taken from a queue that a leader could take and drop. The
/// leader here waits for a large write in flight in its epoch, and is
/// aborted there; the next flush must sync that write, and return.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flush_that_goes_away_while_leading_the_sync_leaves_its_epochs_to_the_next() {
    for seed in seeds(4) {
        let scenario = fail::FailScenario::setup();
        let (store, _cache, options, volume) = power_cut_volume().await;
        let large = Pause::first_at("log::large_record");
        let writer = tokio::spawn({
            let volume = Arc::clone(&volume);
            async move { volume.write(0, &vec![7u8; 128 << 10], false).await }
        });
        large.reached().await;

        let leads = Passed::at("log::sync_leads");
        let leader = spawn_flush(&volume);
        leads.wait().await;
        leader.abort();
        assert!(
            leader.await.unwrap_err().is_cancelled(),
            "seed {seed}: the leader finished while a write of its epoch was held"
        );
        large.resume();
        writer.await.unwrap().unwrap();
        tokio::time::timeout(Duration::from_secs(60), volume.flush())
            .await
            .unwrap_or_else(|_| panic!("seed {seed}: the next flush waited forever"))
            .unwrap();

        let volume = Arc::into_inner(volume).expect("the writer and flushes are done");
        volume.crash(true, seed).await;
        let volume = Volume::open(&store.store, "v", options).await.unwrap();
        let mut read = vec![0u8; 128 << 10];
        volume.read(0, &mut read).await.unwrap();
        assert!(
            read.iter().all(|&byte| byte == 7),
            "seed {seed}: a flushed write was lost to the power cut"
        );
        volume.close().await.unwrap();
        scenario.teardown();
    }
}

/// A failed fdatasync stops the volume: the kernel may have dropped the
/// pages it could not write, so a later flush must fail too, never sync
/// again and report success over the lost write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_sync_stops_the_volume_and_no_later_flush_succeeds() {
    let scenario = fail::FailScenario::setup();
    let (store, cache) = volume_in_memory().await;
    let volume = Volume::open(&store.store, "v", log_only(cache.path()))
        .await
        .unwrap();
    write_tags(&volume, 0, &[1]).await;
    fail::cfg("log::sync_fails", "1*return").unwrap();
    let error = volume.flush().await.unwrap_err();
    assert!(error.to_string().contains("log"), "{error}");
    let _ = volume.write(4096, &common::block_of(2), false).await;
    assert!(volume.flush().await.is_err(), "a flush after a failed sync");
    assert!(volume.flush().await.is_err(), "a flush after a failed sync");
    drop(volume);
    scenario.teardown();
}

/// A panic while syncing (a bug) stops the volume, as one in a background
/// task does, instead of unwinding into whichever request led the sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panic_in_the_log_sync_stops_the_volume() {
    let scenario = fail::FailScenario::setup();
    let (store, cache) = volume_in_memory().await;
    let volume = Volume::open(&store.store, "v", log_only(cache.path()))
        .await
        .unwrap();
    write_tags(&volume, 0, &[1]).await;
    fail::cfg("log::before_sync", "1*panic").unwrap();
    let error = volume.flush().await.unwrap_err();
    assert!(error.to_string().contains("log sync panicked"), "{error}");
    assert!(
        volume.flush().await.is_err(),
        "the volume went on after the panic"
    );
    drop(volume);
    scenario.teardown();
}

/// Path 6: 9p and NFS answer `RENAME_NOREPLACE` with EINVAL, and a log on
/// them stopped at its first recycled segment (`attach --recover` failed
/// with "cache directory ...: Invalid argument"). The EINVAL is injected
/// here; tests/vm.rs runs this test again inside the VM with its cache dir
/// on 9p and `ZEROBLK_REAL_RENAME=1`, where the kernel refuses the flag.
///
/// Fails on eba6841.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_log_reuses_segments_where_rename_noreplace_is_refused() {
    let scenario = fail::FailScenario::setup();
    if std::env::var_os("ZEROBLK_REAL_RENAME").is_none() {
        fail::cfg("log::rename_noreplace", "return").unwrap();
    }
    let (store, cache) = volume_in_memory().await;
    let mut options = log_only(cache.path());
    options.log_segment_bytes = 32 << 10;
    let volume = Volume::open(&store.store, "v", options.clone())
        .await
        .unwrap();
    // Each round fills a segment; from the second on, the next one
    // reuses the file of a segment committed before.
    for round in 0..6u64 {
        let tags: Vec<u64> = (0..10).map(|i| round * 100 + i).collect();
        write_tags(&volume, round * 10, &tags).await;
        volume.commit().await.unwrap();
    }
    write_tags(&volume, 200, &[7, 8]).await;
    volume.flush().await.unwrap();
    volume.crash(false, 0).await;

    let volume = Volume::open(&store.store, "v", options).await.unwrap();
    assert_eq!(read_tags(&volume, 200, 2).await, [7, 8]);
    assert_eq!(read_tags(&volume, 50, 2).await, [500, 501]);
    volume.close().await.unwrap();
    scenario.teardown();
}

/// Path 4: taking the lease was read-then-write. Two opens racing could
/// both find it free and both write it, and both went on to acknowledge
/// flushed writes. Here the first open is held between its read and its
/// write while the second opens; the first must then be refused.
///
/// Fails on 33a3eeb (with the failpoint added between the read and the
/// write); passes from the commit that takes leases by conditional writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_opening_at_once_never_both_hold_the_lease() {
    let scenario = fail::FailScenario::setup();
    for backend in [Backend::Memory, Backend::File, Backend::S3] {
        let store = TestStore::new(backend);
        engine::create(&store.store, &new_volume("v", 16 * MIB, 64 << 10))
            .await
            .unwrap();
        let (cache_a, cache_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (options_a, options_b) = (log_only(cache_a.path()), log_only(cache_b.path()));

        let between = Pause::first_at("lease::before_create");
        let store_a = store.reopen();
        let first = tokio::spawn(async move { Volume::open(&store_a, "v", options_a).await });
        between.reached().await;
        let second = Volume::open(&store.reopen(), "v", options_b)
            .await
            .expect("the second open takes the free lease");
        between.resume();
        let first = first.await.unwrap();
        assert!(
            matches!(first, Err(engine::EngineError::Leased { .. })),
            "{backend:?}: both opens took the lease: {:?}",
            first.map(|_| "opened")
        );
        second.close().await.unwrap();
    }
    scenario.teardown();
}

/// Writes a lease as a writer on another host would (its JSON, by hand).
async fn foreign_lease(store: &zeroblk::store::Store, renewed_at_ms: u64, renewals: u64) {
    let record = serde_json::json!({
        "holder": "6b1f3c1e-0000-4000-8000-000000000001",
        "host": "another-host.example",
        "pid": 4242,
        "renewed_at_ms": renewed_at_ms,
        "ttl_ms": 1000,
        "renewals": renewals,
    });
    put_lease(store, record).await;
}

async fn put_lease(store: &zeroblk::store::Store, record: serde_json::Value) {
    store
        .put(
            "volumes/v/lease",
            bytes::Bytes::from(serde_json::to_vec(&record).unwrap()),
        )
        .await
        .unwrap();
}

fn this_hostname() -> String {
    nix::unistd::gethostname().unwrap().into_string().unwrap()
}

/// When process `pid` started (field 22 of /proc/PID/stat).
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, fields) = stat.rsplit_once(')').unwrap();
    fields
        .split_whitespace()
        .nth(22 - 3)
        .unwrap()
        .parse()
        .unwrap()
}

/// Path 4: whether a lease on another host expired was judged by
/// comparing its renewal time, stamped by that host's clock, with this
/// host's clock. A holder whose clock is behind was taken over while it
/// renewed; one whose clock is ahead locked the volume long after it
/// died. Now a taker watches the lease for one time to live on its own
/// monotonic clock: renewed means alive.
///
/// Fails on 33a3eeb; passes from the commit that takes leases by
/// conditional writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_on_another_host_is_judged_by_its_renewals_not_its_clock() {
    let _scenario = fail::FailScenario::setup();
    let (store, cache) = volume_in_memory().await;

    // A live holder whose clock says 1970: it renews every 200 ms.
    foreign_lease(&store.store, 1, 0).await;
    let renewing = {
        let store = store.store.clone();
        tokio::spawn(async move {
            for renewals in 1.. {
                tokio::time::sleep(Duration::from_millis(200)).await;
                foreign_lease(&store, 1, renewals).await;
            }
        })
    };
    let refused = Volume::open(&store.store, "v", log_only(cache.path())).await;
    renewing.abort();
    assert!(
        matches!(refused, Err(engine::EngineError::Leased { .. })),
        "a renewing holder was taken over because its clock is behind: {:?}",
        refused.map(|_| "opened")
    );

    // A dead holder whose clock said a day ahead: it never renews again.
    let tomorrow = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 86_400_000;
    foreign_lease(&store.store, tomorrow, 7).await;
    let opened = tokio::time::timeout(
        Duration::from_secs(30),
        Volume::open(&store.store, "v", log_only(cache.path())),
    )
    .await
    .expect("opening waits one time to live, not a day");
    let volume = opened.expect("a lease nobody renews for its time to live is free");
    volume.close().await.unwrap();
}

/// Path 2: a commit's root PUT sent before a `--force` takeover can land
/// after it (a slow store, retries). The new writer then found its first
/// generation taken, was fenced out, and lost the writes it had flushed.
/// Now a writer claims the next generation before it serves anything, so
/// the old writer's late PUT can only fail.
///
/// Fails on 33a3eeb (with the failpoints added around the root PUT);
/// passes from the commit that claims a generation at open.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_commit_of_a_writer_taken_over_cannot_fence_the_new_one() {
    let _scenario = fail::FailScenario::setup();
    common::init_tracing();
    for backend in [Backend::Memory, Backend::S3] {
        let store = TestStore::new(backend);
        engine::create(&store.store, &new_volume("v", 16 * MIB, 64 << 10))
            .await
            .unwrap();
        let (cache_a, cache_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut options = log_only(cache_a.path());
        options.lease_ttl = Duration::from_secs(1);
        let old = std::sync::Arc::new(
            Volume::open(&store.store, "v", options.clone())
                .await
                .unwrap(),
        );
        write_tags(&old, 0, &[1]).await;
        // The old writer's commit is held just before its root PUT.
        let before_root = Pause::first_at("commit::before_root");
        let committing = std::sync::Arc::clone(&old);
        let old_commit = tokio::spawn(async move { committing.commit().await });
        before_root.reached().await;

        options.cache_dir = cache_b.path().to_path_buf();
        options.take_over = true;
        let new = Volume::open(&store.reopen(), "v", options).await.unwrap();
        write_tags(&new, 10, &[2]).await;
        new.flush().await.unwrap();

        // The old writer's PUT lands now, after the takeover.
        let landed = Passed::at("commit::after_root");
        before_root.resume();
        landed.wait().await;
        assert!(
            old_commit.await.unwrap().is_err(),
            "{backend:?}: the old writer committed after the takeover"
        );

        new.commit()
            .await
            .unwrap_or_else(|e| panic!("{backend:?}: the new writer lost its flushed writes: {e}"));
        new.close().await.unwrap();
        let fresh = tempfile::tempdir().unwrap();
        let reader = Volume::open(&store.reopen(), "v", log_only(fresh.path()))
            .await
            .unwrap();
        assert_eq!(read_tags(&reader, 10, 1).await, [2], "{backend:?}");
        reader.close().await.unwrap();
    }
}

/// Path 3: gc judged age from its listing and deleted without condition,
/// so an object a commit put in the meantime could go (a re-put of an
/// identical chunk or page, or an upload older than the grace period on a
/// slow store), and the commit's root then referenced what was gone. Now
/// no commit ever writes an existing object, and gc gives every volume a
/// barrier root between its listing and its mark: a commit in flight
/// finds its generation taken, and uploads again on top of the barrier.
///
/// Fails on 49a2679, which has neither barriers nor the failpoints (it
/// fails the same way with the barrier left out); passes from the commit
/// that raises gc's barriers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_never_deletes_what_a_commit_in_flight_publishes() {
    let _scenario = fail::FailScenario::setup();
    let store = TestStore::new(Backend::File);
    let store_dir = std::path::PathBuf::from(store.url.trim_start_matches("file://"));
    engine::create(&store.store, &new_volume("v", 16 * MIB, 64 << 10))
        .await
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let volume = std::sync::Arc::new(
        Volume::open(&store.store, "v", log_only(cache.path()))
            .await
            .unwrap(),
    );
    let tags: Vec<u64> = (1..=64).collect();
    write_tags(&volume, 0, &tags).await;

    // The commit uploads, then is held before its root, longer than gc's
    // grace period.
    let before_root = Pause::first_at("commit::before_root");
    let committing = std::sync::Arc::clone(&volume);
    let commit = tokio::spawn(async move { committing.commit().await });
    before_root.reached().await;
    common::age_objects(&store_dir, &["packs", "pages", "chunks"]);

    // gc lists and marks; the commit's root lands before gc deletes.
    let marked = Pause::first_at("gc::marked");
    // gc is another process: here a thread with a runtime of its own.
    let collecting = store.reopen();
    let gc = std::thread::spawn(move || {
        let options = engine::GcOptions {
            grace: Duration::from_secs(3600),
            dry_run: false,
            password: None,
        };
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(engine::collect_garbage(&collecting, options))
    });
    marked.reached().await;
    before_root.resume();
    commit.await.unwrap().expect("the commit lands");
    marked.resume();
    tokio::task::spawn_blocking(move || gc.join().unwrap())
        .await
        .unwrap()
        .expect("gc runs");

    let report = engine::verify(&store.reopen(), "v", None).await.unwrap();
    assert!(
        report.is_clean(),
        "gc deleted what the newest root references: {:?}",
        report.bad
    );
    let volume = std::sync::Arc::into_inner(volume).unwrap();
    volume.close().await.unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let reader = Volume::open(&store.reopen(), "v", log_only(fresh.path()))
        .await
        .unwrap();
    assert_eq!(read_tags(&reader, 0, 64).await, tags);
    reader.close().await.unwrap();
}

/// Red-team finding: a holder was judged by its hostname, so a second
/// `serve` in another pid namespace (a container with the host's name)
/// looked up the holder's pid in its own namespace, found nothing, and
/// took the lease from a live writer without `--force`. Now only a record
/// from this boot and this pid namespace is judged by its process; any
/// other is watched for renewals, whatever its hostname says.
///
/// Fails on d88585e; passes from the commit that records the pid space.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_in_another_pid_namespace_is_judged_by_its_renewals() {
    let _scenario = fail::FailScenario::setup();
    let (store, cache) = volume_in_memory().await;
    let lease = |renewals: u64| {
        serde_json::json!({
            "holder": "6b1f3c1e-0000-4000-8000-000000000002",
            "host": this_hostname(),
            "pid": u32::MAX - 1, // no such process here
            "pid_started": 1,
            "pid_space": "another-boot/pid:[4026531836]",
            "renewed_at_ms": 1,
            "ttl_ms": 1000,
            "renewals": renewals,
        })
    };
    put_lease(&store.store, lease(0)).await;
    let renewing = {
        let store = store.store.clone();
        tokio::spawn(async move {
            for renewals in 1.. {
                tokio::time::sleep(Duration::from_millis(200)).await;
                put_lease(&store, lease(renewals)).await;
            }
        })
    };
    let refused = Volume::open(&store.store, "v", log_only(cache.path())).await;
    renewing.abort();
    assert!(
        matches!(refused, Err(engine::EngineError::Leased { .. })),
        "a renewing holder in another pid namespace was taken over: {:?}",
        refused.map(|_| "opened")
    );
}

/// Red-team finding: a holder on this host was judged alive by its pid
/// alone, so once it died and the kernel gave its pid to another process,
/// its lease was stuck until that process exited. Now the lease records
/// when the holder started, and a pid that started at another time is
/// another process.
///
/// Fails on d88585e (open waits out the 300 s watch limit, or refuses);
/// passes from the commit that records the start time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_holders_pid_reused_by_another_process_frees_its_lease() {
    let _scenario = fail::FailScenario::setup();
    let (store, cache) = volume_in_memory().await;
    let mut stranger = std::process::Command::new("sleep")
        .arg("120")
        .spawn()
        .unwrap();
    let pid = stranger.id();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let namespace = std::fs::read_link("/proc/self/ns/pid").unwrap();
    put_lease(
        &store.store,
        serde_json::json!({
            "holder": "6b1f3c1e-0000-4000-8000-000000000003",
            "host": this_hostname(),
            "pid": pid,
            "pid_started": start_time(pid) - 1, // the holder, not the stranger
            "pid_space": format!("{}/{}", boot.trim(), namespace.display()),
            "renewed_at_ms": 1,
            "ttl_ms": 300_000,
            "renewals": 0,
        }),
    )
    .await;
    let opened = tokio::time::timeout(
        Duration::from_secs(60),
        Volume::open(&store.store, "v", log_only(cache.path())),
    )
    .await
    .expect("the holder is gone: nothing to watch");
    stranger.kill().unwrap();
    let _ = stranger.wait();
    let volume = opened.expect("a dead holder's lease is free, whoever has its pid now");
    volume.close().await.unwrap();
}

/// Red-team finding: after a writer was killed (`kill -9`), any command
/// that opened the volume with another cache dir on the same host
/// (`volume resize` without the daemon's `--cache-dir`, say) judged the
/// dead holder's lease free, took it and committed; the killed writer's
/// log, holding its flushed writes, no longer applied and was set aside on
/// its next open. Now a writer's lease names its log, and a taker on this
/// machine without that log is refused (or takes `--force`). The
/// interleaving: after the crash, a restart from the right cache dir is
/// held just before it takes the lease while one from another cache dir
/// tries: that one is refused, the restart replays. A second red team got
/// past a first version of the rule from another pid namespace of the
/// same machine (the holder was judged by renewals, as if on another
/// host), and through a cache dir whose path was missing for a while (an
/// unmounted filesystem counted as a lost log): both are refused now.
///
/// Fails before the commit that records the log in the lease (the second
/// open takes the lease, and the restart finds its log orphaned).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_writers_log_elsewhere_on_this_machine_keeps_its_lease() {
    let _scenario = fail::FailScenario::setup();
    let (store, cache_a) = volume_in_memory().await;
    let cache_b = tempfile::tempdir().unwrap();
    let volume = Volume::open(&store.store, "v", log_only(cache_a.path()))
        .await
        .unwrap();
    write_tags(&volume, 0, &[1, 2, 3]).await;
    volume.flush().await.unwrap();
    volume.crash(false, 0).await;

    let before_take = Pause::first_at("lease::before_take");
    let restart = {
        let (store, options) = (store.reopen(), log_only(cache_a.path()));
        tokio::spawn(async move { Volume::open(&store, "v", options).await })
    };
    before_take.reached().await;
    let refused = Volume::open(&store.reopen(), "v", log_only(cache_b.path()))
        .await
        .err()
        .expect("another cache dir took the lease of a writer whose log holds flushed writes");
    assert_log_elsewhere(&refused, cache_a.path());
    before_take.resume();
    let volume = restart.await.unwrap().unwrap();
    assert_eq!(
        read_tags(&volume, 0, 3).await,
        [1, 2, 3],
        "the restart from the log's cache dir replays the flushed writes"
    );
    write_tags(&volume, 3, &[4]).await;
    volume.flush().await.unwrap();
    volume.crash(false, 0).await;

    // A copy of the cache dir holds a log of the same id, perhaps without
    // the last flushed writes (a red team served stale bytes from one,
    // then committed them): only the log's own folder replays it.
    let copy = tempfile::tempdir().unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", cache_a.path().display()))
        .arg(copy.path())
        .status()
        .unwrap();
    assert!(copied.success());
    let refused = Volume::open(&store.reopen(), "v", log_only(copy.path()))
        .await
        .err()
        .expect("a copy of the dead writer's cache dir was taken for its log");
    assert_log_elsewhere(&refused, cache_a.path());

    // The same holder, as a process of another pid namespace of this
    // machine would have left it: judged by its renewals, then refused.
    let mut record: serde_json::Value =
        serde_json::from_slice(&store.store.get("volumes/v/lease").await.unwrap().unwrap())
            .unwrap();
    let boot = record["pid_space"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    record["pid_space"] = format!("{boot}/pid:[4026531999]").into();
    record["ttl_ms"] = 300.into();
    put_lease(&store.store, record).await;
    let refused = Volume::open(&store.reopen(), "v", log_only(cache_b.path()))
        .await
        .err()
        .expect("a dead holder in another pid namespace of this machine was taken over from");
    assert_log_elsewhere(&refused, cache_a.path());

    // Its cache dir out of sight (lost, or on a filesystem not mounted
    // yet): zeroblk cannot tell which, so only --force takes over.
    let aside = cache_a.path().with_extension("unmounted");
    std::fs::rename(cache_a.path(), &aside).unwrap();
    let refused = Volume::open(&store.reopen(), "v", log_only(cache_a.path()))
        .await
        .err()
        .expect("a log out of sight was taken for a lost one");
    assert!(
        matches!(refused, engine::EngineError::LogElsewhere { .. }),
        "{refused}"
    );
    std::fs::remove_dir_all(cache_a.path()).unwrap();
    std::fs::rename(&aside, cache_a.path()).unwrap();
    // Back, it is replayed, by a writer of any durability.
    let mut remote = log_only(cache_a.path());
    remote.durability = engine::Durability::Remote;
    let volume = Volume::open(&store.reopen(), "v", remote).await.unwrap();
    assert_eq!(read_tags(&volume, 0, 4).await, [1, 2, 3, 4]);
    volume.crash(false, 0).await;

    let mut forced = log_only(cache_b.path());
    forced.take_over = true;
    let volume = Volume::open(&store.reopen(), "v", forced)
        .await
        .expect("--force takes over from a dead writer whose log is elsewhere");
    volume.close().await.unwrap();
}

/// `refused` says the dead writer's log is in `cache`, and how to use it.
fn assert_log_elsewhere(refused: &engine::EngineError, cache: &std::path::Path) {
    assert!(
        matches!(refused, engine::EngineError::LogElsewhere { .. }),
        "{refused}"
    );
    assert_eq!(refused.errno(), libc::EBUSY);
    let cache = std::fs::canonicalize(cache).unwrap();
    assert!(
        refused
            .to_string()
            .contains(&format!("--cache-dir {}", cache.display())),
        "the refusal names the cache dir to use: {refused}"
    );
}

/// A lease object larger than any zeroblk writes is refused unread (a
/// red team's 200 MB lease was read whole, then taken for a free one).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_lease_is_refused_unread() {
    let (store, cache) = volume_in_memory().await;
    let junk = format!("{{{}}}", " ".repeat(1 << 20));
    store
        .store
        .put("volumes/v/lease", bytes::Bytes::from(junk))
        .await
        .unwrap();
    let refused = Volume::open(&store.store, "v", log_only(cache.path()))
        .await
        .err()
        .expect("an oversized lease was taken");
    assert!(refused.to_string().contains("volumes/v/lease"), "{refused}");
}

/// Red-team finding: the first session of a volume on a host made its
/// cache folder (`NAME.UUID/`, and the cache dir itself if missing) and
/// its `log/` without syncing the directories that name them. A power cut
/// could then take the whole write-back log, every flushed write in it.
/// Now each new level is synced into its parent, and the power-cut model
/// undoes directories that were not.
///
/// Passes from the commit that creates the cache directories durably;
/// fails with `create_dir_durably` replaced by a mkdir that does not sync
/// its parent (the code before it, which the model could not see).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_power_cut_in_a_volumes_first_session_keeps_what_was_flushed() {
    let _scenario = fail::FailScenario::setup();
    for seed in seeds(24) {
        let store = TestStore::new(Backend::Memory);
        engine::create(&store.store, &new_volume("v", 16 * MIB, 64 << 10))
            .await
            .unwrap();
        let host = tempfile::tempdir().unwrap();
        engine::simulate_power_cuts(host.path());
        let cache = host.path().join("var/cache/zeroblk");

        let volume = Volume::open(&store.store, "v", log_only(&cache))
            .await
            .unwrap();
        write_tags(&volume, 0, &[1, 2, 3]).await;
        volume.flush().await.unwrap();
        volume.crash(true, seed).await;

        let volume = Volume::open(&store.store, "v", log_only(&cache))
            .await
            .unwrap();
        assert_eq!(
            read_tags(&volume, 0, 3).await,
            [1, 2, 3],
            "seed {seed}: a flushed write of the first session was lost to the power cut"
        );
        volume.close().await.unwrap();
    }
}

/// Writes block `block` tagged `tag` and flushes it: what a client's write
/// and flush are acknowledged with.
async fn write_and_flush(volume: &Volume, block: u64, tag: u64) -> engine::Result<()> {
    volume
        .write(block * 4096, &common::block_of(tag), false)
        .await?;
    volume.flush().await
}

/// Red-team finding (second pass): a writer whose renewals could not get
/// through (a slow store, a stalled process) went on acknowledging
/// flushes long after its lease ran out. A second `serve`, in another pid
/// namespace, had meanwhile watched the lease for its time to live, judged
/// the first gone and taken the volume: two writers acknowledged writes at
/// once, and the first one's were lost with its log. Now a writer
/// acknowledges nothing later than three quarters of a time to live after
/// it sent its last renewal that went through (`engine::tenure`): its
/// writes and flushes wait, go on once a renewal gets through, and fail
/// once one finds the lease taken.
///
/// Fails on b763d72 (the held write returns); passes from the commit that
/// gives the writer a tenure. Waiting out the tenure is the one sleep:
/// the property is about time passing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_whose_lease_lapsed_acknowledges_nothing_until_it_is_renewed() {
    let _scenario = fail::FailScenario::setup();
    let (store, cache) = volume_in_memory().await;
    let mut options = log_only(cache.path());
    options.lease_ttl = Duration::from_secs(2); // a tenure of 1.5 s
    let volume = std::sync::Arc::new(Volume::open(&store.store, "v", options).await.unwrap());
    write_and_flush(&volume, 0, 1).await.unwrap();
    let held_write = |block: u64, tag: u64| {
        let volume = volume.clone();
        tokio::spawn(async move { write_and_flush(&volume, block, tag).await })
    };

    // A renewal that cannot get through, for longer than the tenure (the
    // last one that did was sent before this one started).
    let stalled = Pause::first_at("lease::before_renew");
    stalled.reached().await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let mut write = held_write(1, 2);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut write)
            .await
            .is_err(),
        "a writer whose lease lapsed acknowledged a write and a flush"
    );
    stalled.resume();
    tokio::time::timeout(Duration::from_secs(20), write)
        .await
        .expect("the write goes on once a renewal gets through")
        .unwrap()
        .expect("the renewed writer acknowledges it");

    // Stalled again, and meanwhile another writer took the volume.
    let stalled = Pause::first_at("lease::before_renew");
    stalled.reached().await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    foreign_lease(&store.store, 1, 0).await;
    let mut write = held_write(2, 3);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut write)
            .await
            .is_err(),
        "a writer whose lease lapsed acknowledged a write and a flush"
    );
    stalled.resume();
    let taken = tokio::time::timeout(Duration::from_secs(20), write)
        .await
        .expect("the write ends once the renewal finds the lease taken")
        .unwrap();
    assert!(taken.is_err(), "a writer taken over acknowledged a write");
}

/// Red-team finding (third pass): writes arriving at once each checked
/// the log's limit before any of them had its place in the log, so all
/// passed, and the log went past its bound on disk (a cache filesystem
/// sized for it ran out of room). Now a write is counted from the moment
/// it is let in: while one is on its way and the log is at its limit, the
/// others wait.
///
/// Fails on fb3aebf (with the `write::admitted` failpoint added); passes
/// from the commit that counts admitted writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_arriving_at_once_cannot_all_pass_the_logs_limit() {
    let _scenario = fail::FailScenario::setup();
    let (store, cache) = volume_in_memory().await;
    let mut options = log_only(cache.path());
    options.max_dirty_bytes = MIB; // a log limit of 4 MiB
    let volume = std::sync::Arc::new(Volume::open(&store.store, "v", options).await.unwrap());
    let write = |block: u64, tag: u64| {
        let volume = volume.clone();
        tokio::spawn(async move {
            let data = common::block_of(tag).repeat(64);
            volume.write(block * 4096, &data, false).await
        })
    };

    // The log 256 KiB short of its limit, and the commit that would drain
    // it held. Each write starts a block after the one before, so that the
    // log grows by every write while dirty bytes (each block once) stay
    // well under --max-dirty.
    let commit = Pause::first_at("commit::uploaded");
    for i in 0..14 {
        write(i, i).await.unwrap().unwrap();
    }
    commit.reached().await;

    // One write let in and held on its way; others arrive meanwhile.
    let on_its_way = Pause::first_at("write::admitted");
    let first = write(14, 14);
    on_its_way.reached().await;
    let mut others: Vec<_> = (15..23).map(|i| write(i, i)).collect();
    let passed = tokio::time::timeout(
        Duration::from_secs(1),
        futures::future::select_all(others.iter_mut()),
    )
    .await;
    assert!(
        passed.is_err(),
        "a write passed the log's limit while another was on its way"
    );

    on_its_way.resume();
    commit.resume();
    first.await.unwrap().unwrap();
    for other in others {
        other.await.unwrap().unwrap();
    }
    // Block 85 is the last write's alone.
    assert_eq!(read_tags(&volume, 22 + 63, 1).await, [22]);
}

/// The log folder of volume `v` in `cache`.
fn log_dir_of_v(cache: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(cache)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("v.")
        })
        .expect("the volume's folder")
        .join("log")
}

/// The length of log segment `seq` of volume `v`.
fn segment_len(cache: &std::path::Path, seq: u64) -> u64 {
    let name = format!("{seq:016x}.zlog");
    std::fs::metadata(log_dir_of_v(cache).join(name))
        .unwrap()
        .len()
}

/// Segments are made from spare files written out with zeros ahead of
/// time, so that a flush syncs no file length. Here the segment switch
/// comes while the spare is still being made: it waits for the spare and
/// takes it. A power cut then leaves the new segment's records torn in
/// places, followed by zeros; replay must end the log where the flushed
/// records end and keep every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_segment_made_from_a_spare_keeps_what_was_flushed_through_a_power_cut() {
    for seed in seeds(16) {
        let scenario = fail::FailScenario::setup();
        let (store, cache) = volume_in_memory().await;
        engine::simulate_power_cuts(cache.path());
        let mut options = log_only(cache.path());
        options.log_segment_bytes = 32 << 10;
        // The volume opens and starts making a spare; hold it just before
        // the spare takes its name.
        let spare = Pause::first_at("log::spare_before_rename");
        let volume = Volume::open(&store.store, "v", options.clone())
            .await
            .unwrap();
        spare.reached().await;
        let first: Vec<u64> = (1..=4).collect();
        write_tags(&volume, 0, &first).await;
        volume.flush().await.unwrap();
        // Segment 1 goes past its switch: the next epoch goes to segment
        // 2, which waits for the spare.
        let second: Vec<u64> = (11..=16).collect();
        write_tags(&volume, 10, &second).await;
        let waiting = Passed::at("log::segment_creation_waits");
        let (switched, ()) = tokio::join!(volume.flush(), async {
            waiting.wait().await;
            spare.resume();
        });
        switched.unwrap();
        assert_eq!(
            segment_len(cache.path(), 2),
            32 << 10,
            "segment 2 is the spare, written out ahead"
        );
        let later: Vec<u64> = (200..204).collect();
        write_tags(&volume, 30, &later).await;
        volume.flush().await.unwrap();
        write_tags(&volume, 40, &[9, 9]).await;
        volume.crash(true, seed).await;

        let volume = Volume::open(&store.store, "v", options).await.unwrap();
        assert_eq!(read_tags(&volume, 0, 4).await, first, "seed {seed}");
        assert_eq!(read_tags(&volume, 10, 6).await, second, "seed {seed}");
        assert_eq!(
            read_tags(&volume, 30, 4).await,
            later,
            "seed {seed}: a write flushed into the spare segment was lost"
        );
        volume.close().await.unwrap();
        // Both unconfigure their failpoint when dropped: before the next
        // test may configure it.
        drop((spare, waiting));
        scenario.teardown();
    }
}

/// A spare cut short by a crash (written and synced, not yet named) is
/// neither a free file nor a segment: the next segment is a new file, and
/// the next open removes what was left, whatever a power cut kept of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spare_cut_short_by_a_crash_is_never_taken_for_a_segment() {
    for seed in seeds(8) {
        let scenario = fail::FailScenario::setup();
        let (store, cache) = volume_in_memory().await;
        engine::simulate_power_cuts(cache.path());
        let mut options = log_only(cache.path());
        options.log_segment_bytes = 32 << 10;
        // Preparing the spare fails where a crash would cut it short.
        fail::cfg("log::spare_before_rename", "return").unwrap();
        let volume = Volume::open(&store.store, "v", options.clone())
            .await
            .unwrap();
        let flushed: Vec<u64> = (1..=12).collect();
        write_tags(&volume, 0, &flushed).await;
        volume.flush().await.unwrap();
        write_tags(&volume, 20, &[5]).await;
        volume.flush().await.unwrap();
        assert!(
            segment_len(cache.path(), 2) < 32 << 10,
            "with no spare, segment 2 is a new file"
        );
        fail::remove("log::spare_before_rename");
        volume.crash(true, seed).await;

        let volume = Volume::open(&store.store, "v", options).await.unwrap();
        assert_eq!(read_tags(&volume, 0, 12).await, flushed, "seed {seed}");
        assert_eq!(read_tags(&volume, 20, 1).await, [5], "seed {seed}");
        volume.close().await.unwrap();
        scenario.teardown();
    }
}

/// A panic in a background task (a bug) must stop the volume, not leave
/// its callers waiting: before, the uploader's panic went unnoticed, a
/// commit (and so a flush with remote durability, and the close that
/// `serve` does on SIGTERM) waited forever. Flushed writes are replayed
/// at the next open.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panic_in_a_background_task_stops_the_volume_and_loses_nothing() {
    let _scenario = fail::FailScenario::setup();
    let store = TestStore::new(Backend::File);
    let (volume, _cache, options) =
        create_and_open_with(&store.store, "v", 16 * MIB, 64 << 10, keep_in_the_log).await;
    write_tags(&volume, 0, &[1, 2, 3]).await;
    volume.flush().await.unwrap();

    fail::cfg("commit::before_root", "panic").unwrap();
    let commit = tokio::time::timeout(Duration::from_secs(60), volume.commit()).await;
    let error = commit
        .expect("the commit waited for a task that had died")
        .unwrap_err();
    assert!(error.to_string().contains("uploader panicked"), "{error}");
    let closed = tokio::time::timeout(Duration::from_secs(60), volume.close()).await;
    assert!(
        closed.expect("close hung").is_err(),
        "close of a stopped volume"
    );
    fail::remove("commit::before_root");
    drop(volume);

    let volume = Volume::open(&store.reopen(), "v", options).await.unwrap();
    assert_eq!(read_tags(&volume, 0, 3).await, [1, 2, 3]);
    volume.close().await.unwrap();
}

/// A volume dropped while one of its background tasks is still at work
/// (here a commit held before its root) can be opened again in this
/// process at once. Before, its lease counted as alive until the aborted
/// task ended, and the reopen failed with `Leased` naming this very
/// process. The held commit, let go after the reopen claimed the next
/// generation, cannot land.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_volume_whose_task_is_still_at_work_opens_again() {
    let _scenario = fail::FailScenario::setup();
    let store = TestStore::new(Backend::File);
    let (volume, _cache, options) =
        create_and_open_with(&store.store, "v", 16 * MIB, 64 << 10, keep_in_the_log).await;
    let volume = Arc::new(volume);
    write_tags(&volume, 0, &[1, 2, 3]).await;
    volume.flush().await.unwrap();
    let before_root = Pause::first_at("commit::before_root");
    let committing = tokio::spawn({
        let volume = Arc::clone(&volume);
        async move { volume.commit().await }
    });
    before_root.reached().await;
    committing.abort();
    let _ = committing.await;
    drop(Arc::into_inner(volume).expect("the only holder"));

    let reopened = Volume::open(&store.reopen(), "v", options.clone())
        .await
        .unwrap();
    before_root.resume();
    assert_eq!(read_tags(&reopened, 0, 3).await, [1, 2, 3]);
    write_tags(&reopened, 3, &[4]).await;
    reopened.close().await.unwrap();
    drop(reopened);
    let last = Volume::open(&store.reopen(), "v", options).await.unwrap();
    assert_eq!(read_tags(&last, 0, 4).await, [1, 2, 3, 4]);
    last.close().await.unwrap();
}
