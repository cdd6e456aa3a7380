//! Volume snapshots, clones and rollbacks against real stores (a local
//! directory and an S3 server), and gc with them: a snapshot keeps what
//! it pinned, a clone is independent of its source, a rollback loses
//! nothing, and a pin never races gc.
//!
//! Failpoints are global, so the tests that set them hold a
//! [`fail::FailScenario`] for their whole run.

mod common;

use std::time::Duration;

use common::failpoints::Pause;
use common::{
    ALL_BACKENDS, Backend, TestStore, create_and_open, engine_options, read_tags, write_tags,
};
use zeroblk::engine::{self, EngineError, GcOptions, Volume, VolumeRef};
use zeroblk::store::Store;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 16 * MIB;
const CHUNK: u64 = 64 << 10;
const NOW: GcOptions = GcOptions {
    grace: Duration::ZERO,
    dry_run: false,
    password: None,
};

/// Opens volume `name` with a fresh cache dir.
async fn open(store: &Store, name: &str) -> (Volume, tempfile::TempDir) {
    let cache = tempfile::tempdir().unwrap();
    let volume = Volume::open(store, name, engine_options(cache.path()))
        .await
        .unwrap();
    (volume, cache)
}

/// The tags of the first `blocks` blocks of `name` (or `NAME@SNAP`, read
/// through a clone made for the purpose and deleted after).
async fn tags_of(store: &Store, name: &str, blocks: u64) -> Vec<u64> {
    let source: VolumeRef = name.parse().unwrap();
    let reading = match source.snapshot() {
        None => name.to_string(),
        Some(_) => {
            let clone = format!("read-{}", uuid::Uuid::new_v4());
            engine::clone_volume(store, &source, &clone, None)
                .await
                .unwrap();
            clone
        }
    };
    let (volume, _cache) = open(store, &reading).await;
    let tags = read_tags(&volume, 0, blocks).await;
    volume.close().await.unwrap();
    if reading != name {
        engine::delete(store, &reading).await.unwrap();
    }
    tags
}

fn clean(report: &engine::VerifyReport) -> bool {
    report.is_clean()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_keeps_what_it_pinned_through_overwrites_and_gc() {
    for backend in ALL_BACKENDS {
        eprintln!("backend: {backend:?}");
        let store = TestStore::new(backend);
        let (volume, _cache) = create_and_open(&store.store, "data", SIZE, CHUNK).await;
        write_tags(&volume, 0, &[1, 2, 3, 4]).await;
        let first = volume.snapshot(Some("first")).await.unwrap();
        assert_eq!(first.name(), "first");
        write_tags(&volume, 0, &[11, 12]).await;
        let second = volume.snapshot(None).await.unwrap();
        assert!(
            second.name().ends_with('Z'),
            "named after the time: {second:?}"
        );
        let refused = volume.snapshot(Some("first")).await.unwrap_err();
        assert!(
            matches!(refused, EngineError::SnapshotExists { .. }),
            "{refused}"
        );
        write_tags(&volume, 0, &[21]).await;
        volume.close().await.unwrap();

        let info = engine::info(&store.store, "data@first", None)
            .await
            .unwrap();
        assert_eq!(info.snapshot.as_deref(), Some("first"));
        assert_eq!(
            info.format_version, 5,
            "a volume with snapshots is version 5"
        );
        engine::collect_garbage(&store.store, NOW).await.unwrap();
        assert_eq!(tags_of(&store.store, "data@first", 4).await, [1, 2, 3, 4]);
        let second_ref = format!("data@{}", second.name());
        assert_eq!(tags_of(&store.store, &second_ref, 4).await, [11, 12, 3, 4]);
        assert_eq!(tags_of(&store.store, "data", 4).await, [21, 12, 3, 4]);
        let verified = engine::verify(&store.store, "data@first", None)
            .await
            .unwrap();
        assert!(clean(&verified) && verified.chunks > 0, "{verified:?}");

        let listed = engine::list_snapshots_with_usage(&store.store, "data", None)
            .await
            .unwrap();
        let names: Vec<_> = listed.iter().map(|s| s.name().to_string()).collect();
        assert_eq!(names, ["first", second.name()], "oldest first");
        assert!(
            listed[0].exclusive_bytes().unwrap() > 0,
            "the first snapshot alone holds blocks 1 and 2's chunk"
        );

        // Deleted, what only it held goes at the next gc; the rest stays.
        engine::delete_snapshot(&store.store, "data", "first")
            .await
            .unwrap();
        let missing = engine::info(&store.store, "data@first", None).await;
        assert!(matches!(missing, Err(EngineError::NoSuchSnapshot { .. })));
        let report = engine::collect_garbage(&store.store, NOW).await.unwrap();
        assert!(report.bytes_freed > 0, "{report:?}");
        assert_eq!(tags_of(&store.store, &second_ref, 4).await, [11, 12, 3, 4]);
        assert_eq!(tags_of(&store.store, "data", 4).await, [21, 12, 3, 4]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clone_is_independent_of_its_source_and_outlives_it() {
    for backend in ALL_BACKENDS {
        eprintln!("backend: {backend:?}");
        let store = TestStore::new(backend);
        let (source, _cache) = create_and_open(&store.store, "src", SIZE, CHUNK).await;
        write_tags(&source, 0, &[1, 2, 3]).await;
        source.snapshot(Some("base")).await.unwrap();
        write_tags(&source, 1, &[20]).await;
        source.close().await.unwrap();

        let from_newest = VolumeRef::volume("src");
        let from_snapshot: VolumeRef = "src@base".parse().unwrap();
        engine::clone_volume(&store.store, &from_newest, "newest", None)
            .await
            .unwrap();
        let clone = engine::clone_volume(&store.store, &from_snapshot, "based", None)
            .await
            .unwrap();
        assert_eq!((clone.size, clone.chunk_size), (SIZE, CHUNK));
        let taken = engine::clone_volume(&store.store, &from_snapshot, "based", None).await;
        assert!(
            matches!(taken, Err(EngineError::VolumeExists(_))),
            "{taken:?}"
        );

        // Writes to either never show in the other.
        let (source, _cache) = open(&store.store, "src").await;
        let (based, _based_cache) = open(&store.store, "based").await;
        write_tags(&source, 2, &[300]).await;
        write_tags(&based, 0, &[1000]).await;
        source.close().await.unwrap();
        based.close().await.unwrap();
        assert_eq!(tags_of(&store.store, "src", 3).await, [1, 20, 300]);
        assert_eq!(tags_of(&store.store, "based", 3).await, [1000, 2, 3]);
        assert_eq!(tags_of(&store.store, "newest", 3).await, [1, 20, 3]);

        // Deleting the source and its snapshots leaves the clones whole.
        engine::delete(&store.store, "src").await.unwrap();
        engine::collect_garbage(&store.store, NOW).await.unwrap();
        for clone in ["based", "newest"] {
            let verified = engine::verify(&store.store, clone, None).await.unwrap();
            assert!(clean(&verified), "{clone}: {verified:?}");
        }
        assert_eq!(tags_of(&store.store, "based", 3).await, [1000, 2, 3]);
        assert_eq!(tags_of(&store.store, "newest", 3).await, [1, 20, 3]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_encrypted_clone_opens_with_the_source_password_only() {
    let store = TestStore::new(Backend::File);
    let password = zeroblk::crypto::Password::new("correct horse".into()).unwrap();
    let mut new = common::new_volume("secret", SIZE, CHUNK);
    new.encrypt_with = Some(password.clone());
    engine::create(&store.store, &new).await.unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut options = engine_options(cache.path());
    options.password = Some(password.clone());
    let volume = Volume::open(&store.store, "secret", options.clone())
        .await
        .unwrap();
    write_tags(&volume, 0, &[7, 8]).await;
    volume.snapshot(Some("s")).await.unwrap();
    volume.close().await.unwrap();

    let source: VolumeRef = "secret@s".parse().unwrap();
    let refused = engine::clone_volume(&store.store, &source, "copy", None).await;
    assert!(
        matches!(refused, Err(EngineError::PasswordNeeded(_))),
        "{refused:?}"
    );
    let wrong = zeroblk::crypto::Password::new("wrong horse".into()).unwrap();
    let refused = engine::clone_volume(&store.store, &source, "copy", Some(wrong)).await;
    assert!(refused.is_err());
    engine::clone_volume(&store.store, &source, "copy", Some(password.clone()))
        .await
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut options = engine_options(cache.path());
    options.password = Some(password);
    let copy = Volume::open(&store.store, "copy", options).await.unwrap();
    assert_eq!(read_tags(&copy, 0, 2).await, [7, 8]);
    copy.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollback_keeps_the_state_it_replaces_and_refuses_an_attached_volume() {
    for backend in [Backend::File, Backend::S3] {
        eprintln!("backend: {backend:?}");
        let store = TestStore::new(backend);
        let (volume, cache) = create_and_open(&store.store, "vm", SIZE, CHUNK).await;
        write_tags(&volume, 0, &[1, 2]).await;
        volume.snapshot(Some("good")).await.unwrap();
        write_tags(&volume, 0, &[66, 67, 68]).await;
        volume.flush().await.unwrap();

        let options = engine_options(cache.path());
        let refused = engine::rollback(&store.store, "vm", "good", options.clone()).await;
        assert!(
            matches!(
                refused,
                Err(EngineError::Busy { .. } | EngineError::Leased { .. })
            ),
            "attached: {refused:?}"
        );
        let unknown = engine::rollback(&store.store, "vm", "nope", options.clone()).await;
        assert!(matches!(unknown, Err(EngineError::NoSuchSnapshot { .. })));
        volume.close().await.unwrap();
        drop(volume);

        let rolled = engine::rollback(&store.store, "vm", "good", options.clone())
            .await
            .unwrap();
        assert!(rolled.kept().name().starts_with("pre-rollback-"));
        assert_eq!(tags_of(&store.store, "vm", 3).await, [1, 2, 0]);
        let kept = format!("vm@{}", rolled.kept().name());
        assert_eq!(tags_of(&store.store, &kept, 3).await, [66, 67, 68]);
        // The same cache dir opens the volume as rolled back: its log has
        // nothing left to replay over it.
        let reopened = Volume::open(&store.store, "vm", options).await.unwrap();
        assert_eq!(read_tags(&reopened, 0, 3).await, [1, 2, 0]);
        reopened.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollback_keeps_what_a_writer_wrote_between_its_close_and_its_lease() {
    let scenario = fail::FailScenario::setup();
    let store = TestStore::new(Backend::File);
    let (volume, cache) = create_and_open(&store.store, "vm", SIZE, CHUNK).await;
    write_tags(&volume, 0, &[1]).await;
    volume.snapshot(Some("good")).await.unwrap();
    write_tags(&volume, 0, &[2]).await;
    volume.close().await.unwrap();
    drop(volume);

    let closed = Pause::first_at("rollback::closed");
    let rolling = {
        let (store, options) = (store.store.clone(), engine_options(cache.path()));
        tokio::spawn(async move { engine::rollback(&store, "vm", "good", options).await })
    };
    closed.reached().await;
    // Another writer gets in between, writes, and leaves.
    let (writer, _writer_cache) = open(&store.store, "vm").await;
    write_tags(&writer, 0, &[3]).await;
    writer.close().await.unwrap();
    closed.resume();
    let rolled = rolling.await.unwrap().unwrap();
    let kept = format!("vm@{}", rolled.kept().name());
    assert_eq!(
        tags_of(&store.store, &kept, 1).await,
        [3],
        "its write is kept"
    );
    assert_eq!(tags_of(&store.store, "vm", 1).await, [1]);
    drop(scenario);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_writer_gets_in_while_a_rollback_publishes() {
    let scenario = fail::FailScenario::setup();
    let store = TestStore::new(Backend::File);
    let (volume, cache) = create_and_open(&store.store, "vm", SIZE, CHUNK).await;
    write_tags(&volume, 0, &[1]).await;
    volume.snapshot(Some("good")).await.unwrap();
    write_tags(&volume, 0, &[2]).await;
    volume.close().await.unwrap();
    drop(volume);

    let kept = Pause::first_at("rollback::kept");
    let rolling = {
        let (store, options) = (store.store.clone(), engine_options(cache.path()));
        tokio::spawn(async move { engine::rollback(&store, "vm", "good", options).await })
    };
    kept.reached().await;
    // The state it replaces is pinned, and the volume still holds it; the
    // rollback holds the writer's lease, so no writer opens meanwhile.
    let snapshots = engine::list_snapshots(&store.store, "vm", None)
        .await
        .unwrap();
    let pre = snapshots
        .iter()
        .find(|s| s.name().starts_with("pre-rollback-"))
        .expect("pinned before the rollback publishes");
    let pre = format!("vm@{}", pre.name());
    let pinned = engine::info(&store.store, &pre, None).await.unwrap();
    let newest = engine::info(&store.store, "vm", None).await.unwrap();
    assert_eq!(
        pinned.generation, newest.generation,
        "the state it replaces"
    );
    let other_cache = tempfile::tempdir().unwrap();
    let mut options = engine_options(other_cache.path());
    options.lease_ttl = Duration::from_secs(30);
    let refused = Volume::open(&store.store, "vm", options).await;
    assert!(
        matches!(refused, Err(EngineError::Leased { .. })),
        "{:?}",
        refused.err()
    );
    kept.resume();
    rolling.await.unwrap().unwrap();
    assert_eq!(tags_of(&store.store, "vm", 1).await, [1]);
    assert_eq!(tags_of(&store.store, &pre, 1).await, [2]);
    drop(scenario);
}

/// Runs gc as another process would: on a thread with a runtime of its
/// own.
fn gc_elsewhere(store: &TestStore) -> std::thread::JoinHandle<engine::Result<engine::GcReport>> {
    let collecting = store.reopen();
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(engine::collect_garbage(&collecting, NOW))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pin_and_gc_never_overlap() {
    let scenario = fail::FailScenario::setup();
    let store = TestStore::new(Backend::File);
    let (volume, _cache) = create_and_open(&store.store, "data", SIZE, CHUNK).await;
    write_tags(&volume, 0, &[1, 2]).await;
    volume.close().await.unwrap();
    drop(volume);

    // gc holds its lease: a snapshot waits for it to finish.
    let marked = Pause::first_at("gc::marked");
    let collecting = gc_elsewhere(&store);
    marked.reached().await;
    let snapshotting = {
        let store = store.store.clone();
        tokio::spawn(async move { engine::create_snapshot(&store, "data", Some("s"), None).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!snapshotting.is_finished(), "a pin waits while gc runs");
    marked.resume();
    tokio::task::spawn_blocking(move || collecting.join().unwrap())
        .await
        .unwrap()
        .expect("gc runs");
    snapshotting.await.unwrap().unwrap();

    // A pin holds gc's lease: gc started meanwhile is refused, and says by what.
    let pinning = Pause::first_at("snapshot::pin");
    let snapshotting = {
        let store = store.store.clone();
        tokio::spawn(async move { engine::create_snapshot(&store, "data", Some("t"), None).await })
    };
    pinning.reached().await;
    let refused = engine::collect_garbage(&store.store, NOW)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("a snapshot of volume data"),
        "{refused}"
    );
    pinning.resume();
    snapshotting.await.unwrap().unwrap();
    engine::collect_garbage(&store.store, NOW).await.unwrap();
    for snapshot in ["data@s", "data@t"] {
        assert_eq!(tags_of(&store.store, snapshot, 2).await, [1, 2]);
    }
    drop(scenario);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_root_replaced_within_the_grace_period_keeps_its_objects_however_old() {
    let store = TestStore::new(Backend::File);
    let dir = store.dir().expect("a local store").to_path_buf();
    let (volume, _cache) = create_and_open(&store.store, "data", SIZE, CHUNK).await;
    write_tags(&volume, 0, &[1]).await;
    volume.commit().await.unwrap();
    let old = engine::info(&store.store, "data", None)
        .await
        .unwrap()
        .generation;
    volume.close().await.unwrap();
    drop(volume);
    common::age_objects(&dir, &["chunks", "packs", "pages", "volumes"]);
    // A reader that found generation `old` newest just now (a follower, a
    // read in flight) still has the grace period to read it.
    let (volume, _cache) = open(&store.store, "data").await;
    write_tags(&volume, 0, &[2]).await;
    volume.close().await.unwrap();
    drop(volume);
    let hour = GcOptions {
        grace: Duration::from_secs(3600),
        ..NOW
    };
    engine::collect_garbage(&store.store, hour.clone())
        .await
        .unwrap();
    let old_root = format!("volumes/data/roots/{old:020}");
    assert!(store.store.size_of(&old_root).await.unwrap().is_some());
    let pinned = engine::open_root(&store.store, &VolumeRef::volume("data"), None).await;
    assert!(pinned.is_ok());
    let report = engine::verify(&store.store, "data", None).await.unwrap();
    assert!(clean(&report));
    // Its objects too: the first chunk's first version is still there.
    let before = common_object_count(&store.store).await;
    // Once the replacement is older than the grace period, both go.
    common::age_objects(&dir, &["chunks", "packs", "pages", "volumes"]);
    let report = engine::collect_garbage(&store.store, hour).await.unwrap();
    assert!(
        report.roots_deleted >= 1 && report.bytes_freed > 0,
        "{report:?}"
    );
    assert!(store.store.size_of(&old_root).await.unwrap().is_none());
    assert!(common_object_count(&store.store).await < before);
    assert_eq!(tags_of(&store.store, "data", 1).await, [2]);
}

async fn common_object_count(store: &Store) -> usize {
    let mut count = 0;
    for prefix in ["chunks/", "packs/", "pages/"] {
        count += store.list_keys(prefix).await.unwrap().len();
    }
    count
}

/// What an interrupted create, clone or copy leaves (a superblock, no
/// root) is named as unfinished, with the fix, and keeps nothing else
/// from working (red team: it broke `volume list` and a bare `serve`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_volume_left_unfinished_is_named_and_stops_nothing_else() {
    let store = TestStore::new(Backend::File);
    engine::create(&store.store, &common::new_volume("half", SIZE, CHUNK))
        .await
        .unwrap();
    for key in store.store.list_keys("volumes/half/").await.unwrap() {
        if !key.ends_with("superblock.json") {
            store.store.delete(&key).await.unwrap();
        }
    }
    let (volume, _cache) = create_and_open(&store.store, "whole", SIZE, CHUNK).await;
    volume.close().await.unwrap();
    let unfinished = engine::info(&store.store, "half", None).await.unwrap_err();
    assert!(
        matches!(unfinished, EngineError::Unfinished(_)),
        "{unfinished}"
    );
    assert!(
        unfinished
            .to_string()
            .contains("zeroblk volume delete half")
    );
    assert!(engine::check_finished(&store.store, "half").await.is_err());
    engine::check_finished(&store.store, "whole").await.unwrap();
    let cache = tempfile::tempdir().unwrap();
    let listed = common::zeroblk(&store.url, cache.path(), &[], &["volume", "list"]);
    assert!(listed.contains("whole"), "{listed}");
    engine::delete(&store.store, "half").await.unwrap();
    engine::create(&store.store, &common::new_volume("half", SIZE, CHUNK))
        .await
        .unwrap();
}

/// A snapshot deleted while it is served, and collected since, answers
/// that it is gone, not that the bucket is damaged (red team).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_deleted_while_served_says_so() {
    let store = TestStore::new(Backend::File);
    let (volume, _cache) = create_and_open(&store.store, "data", SIZE, CHUNK).await;
    write_tags(&volume, 0, &[1]).await;
    volume.snapshot(Some("s")).await.unwrap();
    write_tags(&volume, 0, &[2]).await;
    volume.close().await.unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut options = engine_options(cache.path());
    (options.memory_cache_bytes, options.disk_cache_bytes) = (0, 0);
    let reader = Volume::open_read_only(
        &store.store,
        &"data@s".parse().unwrap(),
        engine::Follow::Pinned,
        options,
    )
    .await
    .unwrap();
    engine::delete_snapshot(&store.store, "data", "s")
        .await
        .unwrap();
    engine::collect_garbage(&store.store, NOW).await.unwrap();
    let mut block = vec![0u8; 4096];
    let gone = reader.read(0, &mut block).await.unwrap_err();
    assert!(matches!(gone, EngineError::NoSuchSnapshot { .. }), "{gone}");
}
