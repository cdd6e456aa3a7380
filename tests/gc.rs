//! Garbage collection and `volume verify` against real stores: gc frees
//! what overwrites and deletes left behind and nothing any volume reads;
//! verify and reads catch a flipped byte in a stored chunk or page.

mod common;

use std::time::Duration;

use common::{ALL_BACKENDS, Backend, TestStore, create_and_open, read_tags, write_tags};
use zeroblk::engine::{self, GcOptions, Volume};

const MIB: u64 = 1 << 20;
const NOW: GcOptions = GcOptions {
    grace: Duration::ZERO,
    dry_run: false,
    password: None,
};

async fn object_count(store: &TestStore) -> usize {
    let mut count = 0;
    for prefix in ["chunks/", "packs/", "pages/"] {
        count += store.store.list_keys(prefix).await.unwrap().len();
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_frees_what_no_volume_references_and_nothing_else() {
    for backend in ALL_BACKENDS {
        eprintln!("backend: {backend:?}");
        let store = TestStore::new(backend);
        let (a, _cache_a) = create_and_open(&store.store, "a", 16 * MIB, 1 << 20).await;
        let (b, _cache_b) = create_and_open(&store.store, "b", 16 * MIB, 1 << 20).await;
        let (c, _cache_c) = create_and_open(&store.store, "c", 16 * MIB, 1 << 20).await;
        let first: Vec<u64> = (1..=512).collect();
        write_tags(&a, 0, &first).await;
        a.flush().await.unwrap();
        a.commit().await.unwrap();
        // Overwrite both chunks: the first version is garbage now.
        let second: Vec<u64> = (1001..=1512).collect();
        write_tags(&a, 0, &second).await;
        write_tags(&b, 100, &[7, 8, 9]).await;
        write_tags(&c, 0, &(5000..5300).collect::<Vec<_>>()).await;
        for volume in [&a, &b, &c] {
            volume.close().await.unwrap();
        }
        drop(c);
        engine::delete(&store.store, "c").await.unwrap();

        let before = object_count(&store).await;
        let dry = engine::collect_garbage(
            &store.store,
            GcOptions {
                dry_run: true,
                ..NOW
            },
        )
        .await
        .unwrap();
        assert!(
            dry.chunks_deleted + dry.packs_deleted >= 2,
            "a's old chunks and c's: {dry:?}"
        );
        assert!(dry.roots_deleted >= 1, "{dry:?}");
        assert_eq!(
            object_count(&store).await,
            before,
            "a dry run deletes nothing"
        );

        let young = engine::collect_garbage(
            &store.store,
            GcOptions {
                grace: Duration::from_secs(3600),
                dry_run: false,
                password: None,
            },
        )
        .await
        .unwrap();
        assert_eq!(
            young.chunks_deleted + young.packs_deleted + young.pages_deleted,
            0,
            "the grace period spares young objects"
        );

        let report = engine::collect_garbage(&store.store, NOW).await.unwrap();
        assert_eq!(report.chunks_deleted, dry.chunks_deleted);
        assert_eq!(report.packs_deleted, dry.packs_deleted);
        assert!(report.bytes_freed > 0);
        assert_eq!(
            object_count(&store).await as u64,
            before as u64 - report.chunks_deleted - report.packs_deleted - report.pages_deleted
        );
        assert_eq!(
            engine::collect_garbage(&store.store, NOW)
                .await
                .unwrap()
                .bytes_freed,
            0,
            "nothing left to free"
        );

        for name in ["a", "b"] {
            let verified = engine::verify(&store.reopen(), name, None).await.unwrap();
            assert!(verified.is_clean(), "{name}: {:?}", verified.bad);
        }
        let fresh = tempfile::tempdir().unwrap();
        let a = Volume::open(&store.reopen(), "a", common::engine_options(fresh.path()))
            .await
            .unwrap();
        assert_eq!(read_tags(&a, 0, 512).await, second);
        a.close().await.unwrap();
        let b = Volume::open(&store.reopen(), "b", common::engine_options(fresh.path()))
            .await
            .unwrap();
        assert_eq!(read_tags(&b, 99, 5).await, [0, 7, 8, 9, 0]);
        b.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_refuses_a_short_grace_while_a_volume_is_attached() {
    let store = TestStore::new(Backend::Memory);
    let (volume, _cache) = create_and_open(&store.store, "busy", 16 * MIB, 1 << 20).await;
    write_tags(&volume, 0, &[1, 2, 3]).await;
    volume.commit().await.unwrap();

    let refused = engine::collect_garbage(&store.store, NOW)
        .await
        .unwrap_err();
    let message = refused.to_string();
    assert!(
        message.contains("busy") && message.contains("--grace 10m"),
        "names the attached volume and the fix: {message}"
    );
    let dry = GcOptions {
        dry_run: true,
        ..NOW
    };
    engine::collect_garbage(&store.store, dry)
        .await
        .expect("a dry run deletes nothing, so any grace will do");
    let long_enough = GcOptions {
        grace: engine::MIN_GRACE_WHILE_ATTACHED,
        dry_run: false,
        password: None,
    };
    engine::collect_garbage(&store.store, long_enough)
        .await
        .expect("a grace of the minimum is accepted while attached");

    volume.close().await.unwrap();
    engine::collect_garbage(&store.store, NOW)
        .await
        .expect("once detached, any grace will do");
}

/// Flips one byte of every object under `prefix` in a file store.
fn flip_a_byte_under(root: &std::path::Path, prefix: &str) -> Vec<String> {
    let mut flipped = Vec::new();
    for shard in std::fs::read_dir(root.join(prefix)).unwrap().flatten() {
        for object in std::fs::read_dir(shard.path()).unwrap().flatten() {
            let mut bytes = std::fs::read(object.path()).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x40;
            std::fs::write(object.path(), bytes).unwrap();
            flipped.push(format!(
                "{prefix}/{}/{}",
                shard.file_name().to_string_lossy(),
                object.file_name().to_string_lossy()
            ));
        }
    }
    flipped
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flipped_byte_is_an_io_error_and_verify_names_the_object() {
    let store = TestStore::new(Backend::File);
    let root = std::path::PathBuf::from(store.url.trim_start_matches("file://"));
    let (volume, _cache) = create_and_open(&store.store, "v", 4 * MIB, 1 << 20).await;
    write_tags(&volume, 0, &(1..=256).collect::<Vec<_>>()).await;
    volume.close().await.unwrap();
    drop(volume);
    assert!(
        engine::verify(&store.store, "v", None)
            .await
            .unwrap()
            .is_clean()
    );

    // The one chunk written is stored as a pack of its own.
    let flipped = flip_a_byte_under(&root, "packs");
    assert_eq!(flipped.len(), 1);
    let report = engine::verify(&store.reopen(), "v", None).await.unwrap();
    let bad: Vec<_> = report.bad.iter().map(|b| b.key.as_str()).collect();
    assert_eq!(bad, flipped);

    let fresh = tempfile::tempdir().unwrap();
    let volume = Volume::open(&store.reopen(), "v", common::engine_options(fresh.path()))
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let error = volume.read(0, &mut buf).await.unwrap_err();
    assert_eq!(error.errno(), libc::EIO, "{error}");
    assert!(
        error
            .to_string()
            .contains(&flipped[0].rsplit('/').next().unwrap()[..12]),
        "the error names the object: {error}"
    );
    assert!(buf.iter().all(|&b| b == 0), "no wrong data was returned");
    assert_eq!(
        read_tags(&volume, 300, 2).await,
        [0, 0],
        "other chunks still read"
    );
    volume.close().await.unwrap();

    flip_a_byte_under(&root, "pages");
    let report = engine::verify(&store.reopen(), "v", None).await.unwrap();
    assert!(
        report.bad.iter().any(|b| b.key.starts_with("pages/")),
        "{:?}",
        report.bad
    );
}

/// A volume folder whose superblock is gone but whose roots are there is
/// not a deleted volume (delete removes the superblock last): gc deletes
/// nothing, where before it freed everything those roots referenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_deletes_nothing_when_a_superblock_is_missing_beside_its_roots() {
    let store = TestStore::new(Backend::Memory);
    let (volume, _cache) = create_and_open(&store.store, "v", 16 * MIB, 1 << 20).await;
    write_tags(&volume, 0, &[1, 2, 3]).await;
    volume.close().await.unwrap();
    drop(volume);
    let superblock = "volumes/v/superblock.json";
    let saved = store.store.get(superblock).await.unwrap().unwrap();
    store.store.delete(superblock).await.unwrap();
    let before = object_count(&store).await;
    let error = engine::collect_garbage(&store.store, NOW)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("no superblock"), "{error}");
    assert_eq!(object_count(&store).await, before, "gc deleted objects");
    store.store.put(superblock, saved).await.unwrap();
    let volume = Volume::open(&store.store, "v", common::engine_options(_cache.path()))
        .await
        .unwrap();
    assert_eq!(read_tags(&volume, 0, 3).await, [1, 2, 3]);
    volume.close().await.unwrap();
}

/// Objects from the bucket are untrusted: a root, page or superblock far
/// larger than any zeroblk writes is refused before its bytes are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn objects_larger_than_any_zeroblk_writes_are_refused_unread() {
    let store = TestStore::new(Backend::Memory);
    let (volume, cache) = create_and_open(&store.store, "v", 16 * MIB, 1 << 20).await;
    write_tags(&volume, 0, &[1]).await;
    volume.close().await.unwrap();
    drop(volume);
    let huge = bytes::Bytes::from(vec![0u8; 200 << 20]);
    let pages = store.store.list_keys("pages/").await.unwrap();
    for key in ["volumes/v/superblock.json", pages[0].as_str()] {
        let saved = store.store.get(key).await.unwrap().unwrap();
        store.store.put(key, huge.clone()).await.unwrap();
        let error = engine::verify(&store.store, "v", None).await.unwrap_err();
        assert!(
            error
                .to_string()
                .contains("more than such an object ever is"),
            "{key}: {error}"
        );
        store.store.put(key, saved).await.unwrap();
    }
    let opened = Volume::open(&store.store, "v", common::engine_options(cache.path())).await;
    assert!(opened.is_ok(), "the restored objects open");
}
