//! `zeroblk volume copy` between real stores (local directories and moto):
//! the copy reads as its snapshot, a second copy moves about the change,
//! an interrupted copy goes on where it stopped (even after a gc at the
//! destination deleted what it had left), a destination holding another
//! volume of that name is refused, a copy comes back with `--from`, and an
//! encrypted volume copied under another name opens with its password.
//!
//! Some tests stop a copy at a failpoint, and failpoints are global to the
//! process, so every test holds a [`fail::FailScenario`] for its whole run.

mod common;

use std::time::Duration;

use common::failpoints::Pause;
use common::{Backend, TestStore, read_tags, write_tags, zeroblk, zeroblk_fails};
use zeroblk::crypto::Password;
use zeroblk::engine::{
    self, CopyError, CopyReport, CopyRequest, GcOptions, NewVolume, Quiet, Volume, VolumeRef,
};
use zeroblk::format::Compression;
use zeroblk::store::Store;

const MIB: u64 = 1 << 20;
const BLOCKS_PER_CHUNK: u64 = MIB / 4096;
/// What a 1 MiB chunk stored uncompressed takes: its header, then it.
const STORED_CHUNK: u64 = MIB + 16;

/// The tag of block `block` as written in round `round` (never 0).
fn tag(round: u64, block: u64) -> u64 {
    (round << 32) | (block + 1)
}

/// Creates volume `name` of `chunks` 1 MiB chunks, stored uncompressed (a
/// chunk takes [`STORED_CHUNK`] bytes), encrypted with `password` if any.
async fn create(store: &Store, name: &str, chunks: u64, password: Option<&Password>) {
    let new = NewVolume {
        name: name.into(),
        size: chunks * MIB,
        chunk_size: MIB,
        compression: Compression::None,
        encrypt_with: password.cloned(),
    };
    engine::create(store, &new).await.unwrap();
}

/// Opens `name` with a fresh cache dir: it commits at close.
async fn open(
    store: &Store,
    name: &str,
    password: Option<&Password>,
) -> (Volume, tempfile::TempDir) {
    let cache = tempfile::tempdir().unwrap();
    let mut options = common::engine_options(cache.path());
    options.commit_interval = Duration::from_secs(3600);
    options.password = password.cloned();
    let volume = Volume::open(store, name, options).await.unwrap();
    (volume, cache)
}

/// Writes round `round`'s tags into chunks `chunks` of `name`, and commits.
async fn write_chunks(
    store: &Store,
    name: &str,
    password: Option<&Password>,
    round: u64,
    chunks: impl IntoIterator<Item = u64>,
) {
    let (volume, _cache) = open(store, name, password).await;
    for chunk in chunks {
        let first = chunk * BLOCKS_PER_CHUNK;
        let tags: Vec<u64> = (first..first + BLOCKS_PER_CHUNK)
            .map(|b| tag(round, b))
            .collect();
        write_tags(&volume, first, &tags).await;
    }
    volume.close().await.unwrap();
}

/// Every block's tag of volume `name`, read with a fresh cache dir.
async fn read_all(store: &Store, name: &str, password: Option<&Password>) -> Vec<u64> {
    let (volume, _cache) = open(store, name, password).await;
    let mut tags = Vec::new();
    for chunk in 0..volume.size() / MIB {
        tags.extend(read_tags(&volume, chunk * BLOCKS_PER_CHUNK, BLOCKS_PER_CHUNK).await);
    }
    volume.close().await.unwrap();
    tags
}

/// What `rounds` wrote: for each block, the tag of the last round that
/// wrote its chunk.
fn expected(chunks: u64, rounds: &[(u64, Vec<u64>)]) -> Vec<u64> {
    (0..chunks * BLOCKS_PER_CHUNK)
        .map(|block| {
            let chunk = block / BLOCKS_PER_CHUNK;
            rounds
                .iter()
                .rev()
                .find(|(_, written)| written.contains(&chunk))
                .map_or(0, |(round, _)| tag(*round, block))
        })
        .collect()
}

async fn copy(from: &Store, to: &Store, source: &str, dest: Option<&str>) -> CopyReport {
    try_copy(from, to, source, dest, None).await.unwrap()
}

async fn try_copy(
    from: &Store,
    to: &Store,
    source: &str,
    dest: Option<&str>,
    password: Option<&Password>,
) -> Result<CopyReport, CopyError> {
    let source: VolumeRef = source.parse().unwrap();
    let request = CopyRequest::new(source, dest)?.with_password(password.cloned());
    engine::copy_volume(from, to, &request, &Quiet).await
}

async fn verify_clean(store: &Store, name: &str, password: Option<&Password>) {
    let report = engine::verify(store, name, password.cloned())
        .await
        .unwrap();
    assert!(report.is_clean(), "{:?}", report.bad);
}

/// The keys of every page, pack and chunk object in `store`.
async fn data_objects(store: &Store) -> Vec<String> {
    let mut keys = Vec::new();
    for prefix in ["pages/", "packs/", "chunks/"] {
        keys.extend(store.list_keys(prefix).await.unwrap());
    }
    keys.sort();
    keys
}

/// A copy reads as its snapshot; after 1% of the volume changed, a second
/// copy uploads at most 1.1 times the changed chunks' stored bytes; the
/// destination verifies clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_copy_moves_about_the_change() {
    let _scenario = fail::FailScenario::setup();
    let (source, dest) = (TestStore::new(Backend::File), TestStore::new(Backend::File));
    let chunks = 256;
    create(&source.store, "data", chunks, None).await;
    let all: Vec<u64> = (0..chunks).collect();
    write_chunks(&source.store, "data", None, 1, all.clone()).await;

    let first = copy(&source.store, &dest.store, "data", None).await;
    assert!(first.snapshot_taken());
    assert_eq!(first.copied().pages().objects(), 1);
    assert!(first.copied().total().bytes() > chunks * STORED_CHUNK);
    assert_eq!(first.already_there().objects(), 0);
    let mut rounds = vec![(1, all)];
    assert_eq!(
        read_all(&dest.reopen(), "data", None).await,
        expected(chunks, &rounds)
    );

    // 1% of the volume: three chunks, far apart.
    let changed = vec![7, 100, 201];
    write_chunks(&source.store, "data", None, 2, changed.clone()).await;
    rounds.push((2, changed.clone()));
    let before = dest.store.counters().bytes_written;
    let second = copy(&source.store, &dest.store, "data", None).await;
    let uploaded = dest.store.counters().bytes_written - before;
    let changed_bytes = changed.len() as u64 * STORED_CHUNK;
    assert!(
        uploaded as f64 <= 1.1 * changed_bytes as f64,
        "uploaded {uploaded} bytes for {changed_bytes} bytes of changed chunks"
    );
    assert!(uploaded >= changed_bytes, "the change itself was uploaded");
    assert_eq!(
        second.copied().packs().objects(),
        1,
        "the change's one pack"
    );
    assert_eq!(second.copied().pages().objects(), 1);
    let unchanged = first.copied().total().objects() - 1; // all but the old page
    assert_eq!(second.already_there().objects(), unchanged);
    assert_eq!(
        read_all(&dest.reopen(), "data", None).await,
        expected(chunks, &rounds)
    );
    verify_clean(&dest.store, "data", None).await;

    // The first copy's snapshot is still there, and both read as taken.
    let snapshots = engine::list_snapshots(&dest.store, "data", None)
        .await
        .unwrap();
    let names: Vec<&str> = snapshots.iter().map(|s| s.name()).collect();
    let taken: Vec<String> = [&first, &second]
        .iter()
        .map(|r| r.snapshot().unwrap().to_string())
        .collect();
    assert_eq!(names, taken);
    // Copying the same snapshot again moves nothing and changes nothing.
    let again = copy(&source.store, &dest.store, second.source(), None).await;
    assert_eq!(again.copied().total().objects(), 0);
    assert!(again.up_to_date());
}

/// A copy to a real S3 server (moto) reads the same there, and copied back
/// from it into a third store (what `--from` does), reads the same again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_to_s3_comes_back() {
    let _scenario = fail::FailScenario::setup();
    let source = TestStore::new(Backend::File);
    let (bucket, back) = (TestStore::new(Backend::S3), TestStore::new(Backend::File));
    let chunks = 40;
    create(&source.store, "data", chunks, None).await;
    let written: Vec<u64> = (0..chunks).filter(|c| c % 3 != 1).collect();
    write_chunks(&source.store, "data", None, 1, written.clone()).await;
    let rounds = vec![(1, written)];

    let there = copy(&source.store, &bucket.store, "data", Some("backup")).await;
    assert_eq!(
        there.destination(),
        format!("backup@{}", there.snapshot().unwrap())
    );
    verify_clean(&bucket.reopen(), "backup", None).await;
    assert_eq!(
        read_all(&bucket.reopen(), "backup", None).await,
        expected(chunks, &rounds)
    );

    let snapshot = format!("backup@{}", there.snapshot().unwrap());
    let home = copy(&bucket.reopen(), &back.store, &snapshot, Some("restored")).await;
    assert!(!home.snapshot_taken());
    assert_eq!(home.copied().total(), there.copied().total());
    assert_eq!(
        read_all(&back.store, "restored", None).await,
        expected(chunks, &rounds)
    );
}

/// A copy stopped after three objects leaves no volume at the destination;
/// the next run copies only what is not there yet, and the result reads
/// right.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_copy_goes_on_where_it_stopped() {
    let _scenario = fail::FailScenario::setup();
    let (source, dest) = (TestStore::new(Backend::File), TestStore::new(Backend::File));
    let chunks = 128;
    create(&source.store, "data", chunks, None).await;
    let all: Vec<u64> = (0..chunks).collect();
    write_chunks(&source.store, "data", None, 1, all.clone()).await;
    let snapshot = engine::create_snapshot(&source.store, "data", Some("s1"), None)
        .await
        .unwrap();

    interrupted_copy(&source.store, &dest.store, "data@s1").await;
    let left = data_objects(&dest.store).await;
    assert!(
        left.len() >= 3,
        "three objects landed before the stop: {left:?}"
    );
    assert!(
        engine::list(&dest.store).await.unwrap().is_empty(),
        "no volume shows"
    );
    assert!(dest.store.list_keys("volumes/").await.unwrap().is_empty());

    let before = dest.store.counters().bytes_written;
    let resumed = copy(&source.store, &dest.store, "data@s1", None).await;
    let uploaded = dest.store.counters().bytes_written - before;
    // Writes of a local directory run on threads of their own, which may
    // still land an object or two after the copy stopped: at least `left`.
    let there = resumed.already_there().objects();
    assert!(
        there >= left.len() as u64,
        "{there} found of {}",
        left.len()
    );
    let copied = resumed.copied().total();
    assert_eq!(copied.objects() + there, resumed.verified(), "the rest");
    assert!(copied.objects() > 0, "something was left to copy");
    assert!(
        uploaded >= copied.bytes() && uploaded < copied.bytes() + (64 << 10),
        "{uploaded} bytes uploaded for {} bytes copied: nothing found there again",
        copied.bytes()
    );
    assert!(uploaded < snapshot.stored_bytes());
    assert_eq!(resumed.copied_again().objects(), 0);
    assert_eq!(
        read_all(&dest.reopen(), "data", None).await,
        expected(chunks, &[(1, all)])
    );
}

/// Runs a copy that stops (a panic, as a kill would) once three objects
/// are at the destination.
async fn interrupted_copy(from: &Store, to: &Store, source: &str) {
    fail::cfg("copy::object_copied", "3*off->panic").unwrap();
    let (from, to, source) = (from.clone(), to.clone(), source.to_string());
    let stopped =
        tokio::spawn(async move { try_copy(&from, &to, &source, None, None).await }).await;
    fail::remove("copy::object_copied");
    assert!(stopped.unwrap_err().is_panic(), "the copy was stopped");
}

/// A gc at the destination between an interrupted copy and the end of
/// the next run deletes what the first left (nothing references it yet):
/// the next run finds it gone in its final check, under gc's lease, and
/// copies it again before its root lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gc_at_the_destination_during_a_copy_takes_nothing_it_needs() {
    let _scenario = fail::FailScenario::setup();
    let (source, dest) = (TestStore::new(Backend::File), TestStore::new(Backend::File));
    let chunks = 64;
    create(&source.store, "data", chunks, None).await;
    let all: Vec<u64> = (0..chunks).collect();
    write_chunks(&source.store, "data", None, 1, all.clone()).await;
    engine::create_snapshot(&source.store, "data", Some("s1"), None)
        .await
        .unwrap();
    interrupted_copy(&source.store, &dest.store, "data@s1").await;
    let left = data_objects(&dest.store).await.len() as u64;

    let pause = Pause::first_at("copy::before_hold");
    let resumed = {
        let (from, to) = (source.store.clone(), dest.store.clone());
        tokio::spawn(async move { try_copy(&from, &to, "data@s1", None, None).await })
    };
    pause.reached().await;
    let gc = GcOptions {
        grace: Duration::ZERO,
        dry_run: false,
        password: None,
    };
    let uploaded = data_objects(&dest.store).await.len() as u64;
    let collected = engine::collect_garbage(&dest.store, gc).await.unwrap();
    let deleted = collected.packs_deleted + collected.pages_deleted + collected.chunks_deleted;
    assert_eq!(
        deleted, uploaded,
        "gc deleted every object uploaded, none referenced yet"
    );
    assert!(data_objects(&dest.store).await.is_empty());
    pause.resume();
    let report = resumed.await.unwrap().unwrap();
    assert!(report.already_there().objects() >= left);
    assert_eq!(report.copied_again().objects(), report.verified());
    verify_clean(&dest.store, "data", None).await;
    assert_eq!(
        read_all(&dest.reopen(), "data", None).await,
        expected(chunks, &[(1, all)])
    );
}

/// A destination whose volume of that name is another volume, or is
/// attached, is refused before anything is copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_destination_with_another_volume_or_a_writer_is_refused() {
    let _scenario = fail::FailScenario::setup();
    let (source, dest) = (TestStore::new(Backend::File), TestStore::new(Backend::File));
    create(&source.store, "data", 8, None).await;
    write_chunks(&source.store, "data", None, 1, [0, 1]).await;
    create(&dest.store, "data", 8, None).await;
    let refused = try_copy(&source.store, &dest.store, "data", None, None)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, CopyError::OtherVolume { .. }),
        "{refused}"
    );
    assert!(
        refused
            .to_string()
            .contains("different volume named `data`"),
        "{refused}"
    );
    assert!(data_objects(&dest.store).await.is_empty(), "nothing copied");

    copy(&source.store, &dest.store, "data", Some("copy")).await;
    let (writer, _cache) = open(&dest.store, "copy", None).await;
    let refused = try_copy(&source.store, &dest.store, "data", Some("copy"), None)
        .await
        .unwrap_err();
    assert!(matches!(refused, CopyError::Attached { .. }), "{refused}");
    writer.close().await.unwrap();
    copy(&source.store, &dest.store, "data", Some("copy")).await;

    // A snapshot of that name there that is not this one.
    let snapshot = |store: Store| async move {
        engine::create_snapshot(&store, "data", Some("weekly"), None)
            .await
            .unwrap()
    };
    snapshot(source.store.clone()).await;
    copy(&source.store, &dest.store, "data@weekly", Some("copy")).await;
    write_chunks(&source.store, "data", None, 2, [3]).await;
    engine::delete_snapshot(&source.store, "data", "weekly")
        .await
        .unwrap();
    snapshot(source.store.clone()).await;
    let refused = try_copy(
        &source.store,
        &dest.store,
        "data@weekly",
        Some("copy"),
        None,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(refused, CopyError::OtherSnapshot { .. }),
        "{refused}"
    );
    let newest = engine::info(&dest.store, "copy", None).await.unwrap();
    assert_eq!(
        newest.allocated_bytes,
        2 * MIB,
        "the volume there is as it was"
    );
}

/// An encrypted volume copied under another name: the same objects, byte
/// for byte (nothing is encrypted again), opening with the same password
/// under the new name, and with no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_encrypted_copy_under_another_name_opens_with_its_password() {
    let _scenario = fail::FailScenario::setup();
    let (source, dest) = (TestStore::new(Backend::File), TestStore::new(Backend::File));
    let password = Password::new("copy me".to_string()).unwrap();
    let chunks = 16;
    create(&source.store, "secret", chunks, Some(&password)).await;
    let written: Vec<u64> = (0..chunks).collect();
    write_chunks(&source.store, "secret", Some(&password), 1, written.clone()).await;

    let refused = try_copy(&source.store, &dest.store, "secret", Some("vault"), None)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("password"), "{refused}");
    try_copy(
        &source.store,
        &dest.store,
        "secret",
        Some("vault"),
        Some(&password),
    )
    .await
    .unwrap();
    for key in data_objects(&dest.store).await {
        assert_eq!(
            dest.store.get(&key).await.unwrap(),
            source.store.get(&key).await.unwrap(),
            "{key} copied byte for byte"
        );
    }
    let read = read_all(&dest.reopen(), "vault", Some(&password)).await;
    assert_eq!(read, expected(chunks, &[(1, written)]));
    let wrong = Password::new("not it".to_string()).unwrap();
    assert!(
        engine::check_password(&dest.store, "vault", Some(wrong))
            .await
            .is_err()
    );
    assert!(
        engine::check_password(&dest.store, "vault", None)
            .await
            .is_err()
    );
}

/// The command line: `--dry-run` says what would be copied and writes
/// nothing; a copy to S3 (moto) and `--from` back; another volume of that
/// name refused in one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_command_line_copies_to_s3_and_back() {
    let _scenario = fail::FailScenario::setup();
    let (source, bucket) = (TestStore::new(Backend::File), TestStore::new(Backend::S3));
    let home = TestStore::new(Backend::File);
    let chunks = 24;
    create(&source.store, "data", chunks, None).await;
    let written: Vec<u64> = (0..chunks).collect();
    write_chunks(&source.store, "data", None, 1, written.clone()).await;
    let cache = tempfile::tempdir().unwrap();
    let env = common::moto().env();
    let run = |store: &str, args: &[&str]| zeroblk(store, cache.path(), &env, args);
    let json = |text: String| serde_json::from_str::<serde_json::Value>(&text).unwrap();

    let args = [
        "volume",
        "copy",
        "data",
        "--to",
        &bucket.url,
        "--dry-run",
        "--json",
    ];
    let planned = json(run(&source.url, &args));
    assert_eq!(planned["dry_run"], true);
    assert_eq!(planned["copied"]["pages"]["objects"], 1);
    assert!(planned["copied"]["packs"]["objects"].as_u64().unwrap() > 0);
    assert!(
        bucket.reopen().list_keys("").await.unwrap().is_empty(),
        "a dry run writes nothing"
    );
    let snapshots = engine::list_snapshots(&source.store, "data", None)
        .await
        .unwrap();
    assert!(snapshots.is_empty(), "and takes no snapshot");

    let copied = json(run(
        &source.url,
        &["volume", "copy", "data", "--to", &bucket.url, "--json"],
    ));
    let snapshot = copied["snapshot"].as_str().unwrap().to_string();
    assert_eq!(copied["copied"], planned["copied"]);
    let from = format!("data@{snapshot}");
    let text = run(
        &home.url,
        &["volume", "copy", "--from", &bucket.url, &from, "restored"],
    );
    assert!(
        text.starts_with(&format!(
            "copied {from} to {} as restored@{snapshot}",
            home.url
        )),
        "{text}"
    );
    let read = read_all(&home.reopen(), "restored", None).await;
    assert_eq!(read, expected(chunks, &[(1, written)]));

    let other = TestStore::new(Backend::File);
    create(&other.store, "data", 8, None).await;
    let stderr = zeroblk_fails(
        &other.url,
        cache.path(),
        &env,
        &["volume", "copy", "data", "--to", &bucket.url],
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("already holds a different volume named `data`"),
        "{stderr}"
    );
    let snapshots = engine::list_snapshots(&other.store, "data", None)
        .await
        .unwrap();
    assert!(snapshots.is_empty(), "a refused copy takes no snapshot");
    let stderr = zeroblk_fails(
        &source.url,
        cache.path(),
        &env,
        &["volume", "copy", "data", "--to", &source.url],
    );
    assert!(stderr.contains("is the store the volume is in"), "{stderr}");
}

/// A pack most of whose bytes the snapshot does not reference goes as
/// the chunks it does reference (ranged GETs, stored as objects of their
/// own), and a pack that gc split at the source as the chunk objects it
/// left there: both read right.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mostly_garbage_and_split_packs_go_as_their_chunks() {
    let _scenario = fail::FailScenario::setup();
    let source = TestStore::new(Backend::File);
    let chunks = 32;
    create(&source.store, "data", chunks, None).await;
    let first: Vec<u64> = (0..16).collect();
    write_chunks(&source.store, "data", None, 1, first.clone()).await;
    // All but chunks 0 and 8: the first commit's two packs keep one each.
    let second: Vec<u64> = (1..16).filter(|c| *c != 8).collect();
    write_chunks(&source.store, "data", None, 2, second.clone()).await;
    write_chunks(&source.store, "data", None, 3, [20]).await;
    let rounds = vec![(1, first), (2, second), (3, vec![20])];
    engine::create_snapshot(&source.store, "data", Some("s"), None)
        .await
        .unwrap();

    for split in [false, true] {
        if split {
            let gc = GcOptions {
                grace: Duration::ZERO,
                dry_run: false,
                password: None,
            };
            let collected = engine::collect_garbage(&source.store, gc).await.unwrap();
            assert_eq!(collected.packs_split, 2, "{collected:?}");
        }
        let dest = TestStore::new(Backend::File);
        let report = copy(&source.store, &dest.store, "data@s", None).await;
        let copied = report.copied();
        assert_eq!(copied.chunks().objects(), 2, "split {split}: {copied:?}");
        assert_eq!(copied.chunks().bytes(), 2 * STORED_CHUNK);
        assert_eq!(copied.packs().objects(), 3, "the later commits' packs");
        let own = dest.store.list_keys("chunks/").await.unwrap();
        assert_eq!(own.len(), 2, "chunks 0 and 8 as objects of their own");
        verify_clean(&dest.store, "data", None).await;
        let read = read_all(&dest.reopen(), "data", None).await;
        assert_eq!(read, expected(chunks, &rounds), "split {split}");
    }
}

/// A copy stopped between its last two writes leaves the destination
/// volume reading as the snapshot, without the snapshot; run again, it
/// copies nothing, writes no generation, and adds the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_stopped_after_its_root_adds_its_snapshot_when_run_again() {
    let _scenario = fail::FailScenario::setup();
    let (source, dest) = (TestStore::new(Backend::File), TestStore::new(Backend::File));
    let chunks = 8;
    create(&source.store, "data", chunks, None).await;
    write_chunks(&source.store, "data", None, 1, [2, 5]).await;
    engine::create_snapshot(&source.store, "data", Some("s"), None)
        .await
        .unwrap();
    fail::cfg("copy::root_written", "panic").unwrap();
    let stopped = {
        let (from, to) = (source.store.clone(), dest.store.clone());
        tokio::spawn(async move { try_copy(&from, &to, "data@s", None, None).await }).await
    };
    fail::remove("copy::root_written");
    assert!(stopped.unwrap_err().is_panic());
    let rounds = [(1, vec![2, 5])];
    assert_eq!(
        read_all(&dest.reopen(), "data", None).await,
        expected(chunks, &rounds)
    );
    let snapshots = engine::list_snapshots(&dest.store, "data", None)
        .await
        .unwrap();
    assert!(snapshots.is_empty());

    let again = copy(&source.store, &dest.store, "data@s", None).await;
    assert!(again.up_to_date(), "the root was there");
    assert_eq!(again.copied().total().objects(), 0);
    let snapshots = engine::list_snapshots(&dest.store, "data", None)
        .await
        .unwrap();
    assert_eq!(snapshots.len(), 1);
    assert_eq!(snapshots[0].name(), "s");
}

/// A copy never drops what the volume it replaces holds: bringing a
/// backup back over a volume written since (red team F1), or copying
/// again over a destination volume someone wrote to (F2), first keeps
/// that state as snapshot `pre-copy-TIME`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_keeps_the_state_it_replaces_as_a_snapshot() {
    let _scenario = fail::FailScenario::setup();
    let (main, backup) = (TestStore::new(Backend::File), TestStore::new(Backend::File));
    let chunks = 4;
    create(&main.store, "data", chunks, None).await;
    write_chunks(&main.store, "data", None, 1, [0, 1]).await;
    let first = copy(&main.store, &backup.store, "data", None).await;
    let snapshot = first.snapshot().unwrap().to_string();

    // Written since the copy, then the backup brought back over it.
    write_chunks(&main.store, "data", None, 2, [1, 2]).await;
    let latest = expected(chunks, &[(1, vec![0, 1]), (2, vec![1, 2])]);
    copy(
        &backup.store,
        &main.store,
        &format!("data@{snapshot}"),
        None,
    )
    .await;
    assert_eq!(
        read_all(&main.store, "data", None).await,
        expected(chunks, &[(1, vec![0, 1])])
    );
    let kept = pre_copy_snapshot(&main.store, "data").await;
    assert_eq!(read_snapshot(&main.store, &kept).await, latest);

    // Written at the destination, then copied over again from the source.
    write_chunks(&backup.store, "data", None, 3, [3]).await;
    let at_backup = expected(chunks, &[(1, vec![0, 1]), (3, vec![3])]);
    copy(
        &main.store,
        &backup.store,
        &format!("data@{snapshot}"),
        None,
    )
    .await;
    let kept = pre_copy_snapshot(&backup.store, "data").await;
    assert_eq!(read_snapshot(&backup.store, &kept).await, at_backup);
}

/// The `NAME@pre-copy-...` snapshot of volume `name`.
async fn pre_copy_snapshot(store: &Store, name: &str) -> String {
    let snapshots = engine::list_snapshots(store, name, None).await.unwrap();
    let kept = snapshots
        .iter()
        .find(|s| s.name().starts_with("pre-copy-"))
        .expect("the replaced state is kept");
    format!("{name}@{}", kept.name())
}

/// Every block's tag of snapshot `what` (`NAME@SNAP`), read-only.
async fn read_snapshot(store: &Store, what: &str) -> Vec<u64> {
    let cache = tempfile::tempdir().unwrap();
    let volume = Volume::open_read_only(
        store,
        &what.parse().unwrap(),
        engine::Follow::Pinned,
        common::engine_options(cache.path()),
    )
    .await
    .unwrap();
    let mut tags = Vec::new();
    for chunk in 0..volume.size() / MIB {
        tags.extend(read_tags(&volume, chunk * BLOCKS_PER_CHUNK, BLOCKS_PER_CHUNK).await);
    }
    tags
}
