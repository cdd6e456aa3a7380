//! Pushes stopped at each step of their commit order (failpoints in
//! `backup::push`): nothing is listed before its sequence lists it, and
//! the next push completes the stopped one without sending again the
//! chunks already stored. Restores compare the trees with `diff -r`.
//!
//! Failpoints are global, so every test holds a [`fail::FailScenario`]
//! for its whole run. Needs root, loop devices and btrfs-progs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::btrfs::LoopBtrfs;
use common::failpoints::Pause;
use common::run_ok;
use zeroblk::backup::{self, Destination, Opener, PushReport, PushRequest, Quiet, Which};
use zeroblk::retention::Retention;
use zeroblk::store::Store;

/// A provisioned layout (`@`, `@snapshots`) on a loop btrfs, a store
/// directory and a journal directory.
struct Setup {
    fs: LoopBtrfs,
    store_dir: tempfile::TempDir,
    journals: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let fs = LoopBtrfs::new();
        for subvolume in ["@", "@snapshots"] {
            run_ok(
                Command::new("btrfs")
                    .args(["subvolume", "create"])
                    .arg(fs.mount_point().join(subvolume)),
            );
        }
        // 4 MiB of incompressible data: 16 chunks of 256 KiB.
        let bytes = common::random_bytes(4 << 20, 0x2545_F491_4F6C_DD1D);
        std::fs::write(fs.mount_point().join("@/data"), bytes).unwrap();
        Setup {
            fs,
            store_dir: tempfile::tempdir().unwrap(),
            journals: tempfile::tempdir().unwrap(),
        }
    }

    fn destination(&self) -> Destination {
        let url = format!("file://{}", self.store_dir.path().display());
        Destination::new(Store::open(&url, &Default::default()).unwrap())
    }

    fn request(&self) -> PushRequest {
        PushRequest::new("vol", "@", self.fs.mount_point(), self.journals.path())
            .unwrap()
            .chunk_size(256 << 10)
            .unwrap()
    }

    /// A push, run as its own task: a failpoint's panic stops it there.
    async fn push(&self) -> Result<PushReport, String> {
        let destination = self.destination();
        let request = self.request();
        let task = tokio::spawn(async move { backup::push(&destination, &request, &Quiet).await });
        match task.await {
            Ok(pushed) => pushed.map_err(|e| e.to_string()),
            Err(stopped) => Err(format!("stopped: {stopped}")),
        }
    }

    async fn listed(&self) -> Vec<String> {
        let listing = backup::list(&self.destination()).await.unwrap();
        listing
            .snapshots()
            .iter()
            .map(|s| s.name().to_string())
            .collect()
    }

    fn snapshot(&self, name: &str) -> PathBuf {
        self.fs.mount_point().join("@snapshots").join(name)
    }

    /// Restores `name` into a fresh btrfs and compares it with the source's snapshot.
    async fn assert_restores(&self, name: &str) {
        let target = LoopBtrfs::new();
        let into = target.mount_point().join("r");
        backup::restore(&self.destination(), name, &into, Opener::new(None), &Quiet)
            .await
            .unwrap();
        assert_same_tree(&self.snapshot(name), &into.join(name));
    }
}

fn assert_same_tree(a: &Path, b: &Path) {
    run_ok(Command::new("diff").arg("-r").arg(a).arg(b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_stopped_mid_stream_resumes_without_sending_the_stored_chunks_again() {
    let scenario = fail::FailScenario::setup();
    let setup = Setup::new();
    fail::cfg("backup::chunk_stored", "5*off->panic").unwrap();
    let stopped = setup.push().await;
    assert!(stopped.is_err(), "{stopped:?}");
    fail::remove("backup::chunk_stored");
    assert!(
        setup.listed().await.is_empty(),
        "nothing listed before its sequence lists it"
    );

    let resumed = setup.push().await.unwrap();
    assert!(
        resumed.resumed(),
        "the interrupted push's snapshot is the one sent"
    );
    let (chunks, reused) = resumed.chunks();
    assert!(
        reused >= 5 && reused < chunks,
        "{reused} of {chunks} reused"
    );
    assert!(resumed.uploaded_bytes() < resumed.stored_bytes());
    let name = resumed.snapshot().unwrap().to_string();
    assert_eq!(setup.listed().await, std::slice::from_ref(&name));
    setup.assert_restores(&name).await;
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_stopped_before_its_sequence_lists_it_is_invisible_then_completed() {
    let scenario = fail::FailScenario::setup();
    for point in ["backup::chunks_stored", "backup::record_stored"] {
        let setup = Setup::new();
        fail::cfg(point, "panic").unwrap();
        assert!(setup.push().await.is_err());
        fail::remove(point);
        assert!(
            setup.listed().await.is_empty(),
            "{point}: listed before complete"
        );
        let verified = backup::verify(&setup.destination(), None, Opener::new(None), &Quiet)
            .await
            .unwrap();
        assert!(
            verified.bad().is_empty() && verified.snapshots() == 0,
            "{point}"
        );

        let completed = setup.push().await.unwrap();
        let (chunks, reused) = completed.chunks();
        assert_eq!(reused, chunks, "{point}: every chunk was stored already");
        assert_eq!(completed.uploaded_bytes(), 0, "{point}");
        setup.assert_restores(completed.snapshot().unwrap()).await;
    }
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_stopped_after_its_sequence_lists_it_is_complete_and_the_next_is_incremental() {
    let scenario = fail::FailScenario::setup();
    let setup = Setup::new();
    fail::cfg("backup::listed", "panic").unwrap();
    assert!(setup.push().await.is_err());
    fail::remove("backup::listed");
    let listed = setup.listed().await;
    assert_eq!(listed.len(), 1, "listed: the push was complete");
    setup.assert_restores(&listed[0]).await;

    // Neither the head nor the source's note was written; the next push
    // still extends the chain.
    std::fs::write(setup.fs.mount_point().join("@/more"), b"more").unwrap();
    let later = "@.2099-01-01T000000Z";
    run_ok(
        Command::new("btrfs")
            .args(["subvolume", "snapshot", "-r"])
            .arg(setup.fs.mount_point().join("@"))
            .arg(setup.snapshot(later)),
    );
    let request = setup.request().snapshot(Which::Named(later.to_string()));
    let next = backup::push(&setup.destination(), &request, &Quiet)
        .await
        .unwrap();
    assert_eq!(next.parent(), Some(listed[0].as_str()), "{next:?}");
    setup.assert_restores(next.snapshot().unwrap()).await;
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_stopped_midway_lists_only_whole_snapshots_and_the_next_cleans_up() {
    let scenario = fail::FailScenario::setup();
    let setup = Setup::new();
    // Two chains: January's, then a full stream in February's.
    for (name, full_every) in [
        ("@.2026-01-01T000000Z", None),
        ("@.2026-02-01T000000Z", Some(1)),
    ] {
        run_ok(
            Command::new("btrfs")
                .args(["subvolume", "snapshot", "-r"])
                .arg(setup.fs.mount_point().join("@"))
                .arg(setup.snapshot(name)),
        );
        let request = setup
            .request()
            .snapshot(Which::Named(name.to_string()))
            .full_every(full_every)
            .unwrap();
        backup::push(&setup.destination(), &request, &Quiet)
            .await
            .unwrap();
    }
    let policy = Retention {
        monthly: 1,
        ..Retention::default()
    };
    fail::cfg("backup::sequence_unlisted", "panic").unwrap();
    let destination = setup.destination();
    let pruned =
        tokio::spawn(async move { backup::prune(&destination, &policy, false).await }).await;
    assert!(pruned.is_err(), "the prune stopped at the failpoint");
    fail::remove("backup::sequence_unlisted");

    // January's chain is unlisted, its objects still there: nothing half-deleted is listed.
    assert_eq!(setup.listed().await, ["@.2026-02-01T000000Z"]);
    let january = "data/vol/@/@.2026-01-01T000000Z";
    assert!(setup.store_dir.path().join(january).exists());
    let verified = backup::verify(&setup.destination(), None, Opener::new(None), &Quiet)
        .await
        .unwrap();
    assert!(verified.bad().is_empty(), "{:?}", verified.bad());
    setup.assert_restores("@.2026-02-01T000000Z").await;

    // What the stopped prune left goes once it is a day old.
    let again = backup::prune(&setup.destination(), &policy, false)
        .await
        .unwrap();
    assert_eq!(
        again[0].unfinished_deleted(),
        0,
        "young leftovers wait: a push may be resuming"
    );
    common::age_objects_by(
        setup.store_dir.path(),
        &["data", "meta"],
        Duration::from_secs(25 * 3600),
    );
    let again = backup::prune(&setup.destination(), &policy, false)
        .await
        .unwrap();
    assert!(again[0].unfinished_deleted() > 0);
    assert!(common::walk(&setup.store_dir.path().join(january)).is_empty());
    assert_eq!(setup.listed().await, ["@.2026-02-01T000000Z"]);
    setup.assert_restores("@.2026-02-01T000000Z").await;
    scenario.teardown();
}

/// Takes a read-only snapshot named `name` of `@` and pushes it from
/// another host (as a new chain when `full`).
async fn push_named(
    setup: &Setup,
    name: &str,
    full: bool,
) -> Result<PushReport, zeroblk::backup::BackupError> {
    run_ok(
        Command::new("btrfs")
            .args(["subvolume", "snapshot", "-r"])
            .arg(setup.fs.mount_point().join("@"))
            .arg(setup.snapshot(name)),
    );
    // Another host's push: its own journal (and lock).
    let host = tempfile::tempdir().unwrap();
    let request = PushRequest::new("vol", "@", setup.fs.mount_point(), host.path())
        .unwrap()
        .snapshot(Which::Named(name.to_string()))
        .full_every(full.then_some(1))
        .unwrap();
    backup::push(&setup.destination(), &request, &Quiet).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_whose_chain_is_pruned_meanwhile_lists_nothing() {
    let scenario = fail::FailScenario::setup();
    let setup = Setup::new();
    push_named(&setup, "@.2026-01-01T000000Z", false)
        .await
        .unwrap();
    // February's push, against January, stops after its record...
    let paused = Pause::first_at("backup::record_stored");
    let february = {
        let destination = setup.destination();
        run_ok(
            Command::new("btrfs")
                .args(["subvolume", "snapshot", "-r"])
                .arg(setup.fs.mount_point().join("@"))
                .arg(setup.snapshot("@.2026-02-01T000000Z")),
        );
        let request = setup
            .request()
            .snapshot(Which::Named("@.2026-02-01T000000Z".into()));
        tokio::spawn(async move { backup::push(&destination, &request, &Quiet).await })
    };
    paused.reached().await;
    // ...while elsewhere March starts a new chain and a prune drops January's.
    push_named(&setup, "@.2026-03-01T000000Z", true)
        .await
        .unwrap();
    let policy = Retention {
        monthly: 1,
        ..Retention::default()
    };
    backup::prune(&setup.destination(), &policy, false)
        .await
        .unwrap();
    paused.resume();
    let error = february.await.unwrap().unwrap_err();
    assert!(
        matches!(error, zeroblk::backup::BackupError::ChainPruned { .. }),
        "{error}"
    );
    // Nothing listed without its parent; the rest reads back.
    assert_eq!(setup.listed().await, ["@.2026-03-01T000000Z"]);
    let verified = backup::verify(&setup.destination(), None, Opener::new(None), &Quiet)
        .await
        .unwrap();
    assert!(verified.bad().is_empty(), "{:?}", verified.bad());
    scenario.teardown();
}
