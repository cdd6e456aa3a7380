//! Read-only exports against real NBD clients (nbdinfo, nbdcopy, libnbd):
//! `serve NAME@SNAP` and `serve --read-only --follow NAME`, each beside a
//! `zeroblk serve NAME` process that writes the volume.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::served::Served as Setup;
use common::{nbd_python, require_tool, run_ok};

fn image(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data);
    std::fs::write(path, &data).unwrap();
    data
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/nbd")
        .join(name)
}

/// `serve data@snap` reads what the snapshot pinned while another process
/// overwrites `data`, advertises a read-only export, and refuses writes.
async fn a_snapshot_is_served_read_only_beside_its_writer(setup: Setup) {
    let nbdcopy = require_tool("nbdcopy", "libnbd-bin");
    let nbdinfo = require_tool("nbdinfo", "libnbd-bin");
    setup.zeroblk(&["volume", "create", "data", "--size", "64M"]);
    // Flushes wait for the commit: the snapshot pins what nbdcopy wrote.
    let writer = setup.serve(&["--durability", "remote", "data"]);
    let first = image(&setup.path("first.img"), 24 << 20, 1);
    run_ok(
        Command::new(&nbdcopy)
            .arg("--flush")
            .arg(setup.path("first.img"))
            .arg(writer.uri("data")),
    );
    setup.snapshot("data", "snap").await;
    let reader = setup.serve(&["data@snap"]);
    assert!(
        reader.log_text().contains("read-only"),
        "{}",
        reader.log_text()
    );
    let info = run_ok(Command::new(&nbdinfo).arg(reader.uri("data@snap")));
    for expected in [
        "export-size: 67108864",
        "is_read_only: true",
        "can_trim: false",
        "can_zero: false",
    ] {
        assert!(
            info.contains(expected),
            "nbdinfo lacks `{expected}`:\n{info}"
        );
    }
    image(&setup.path("second.img"), 24 << 20, 2);
    run_ok(
        Command::new(&nbdcopy)
            .arg(setup.path("second.img"))
            .arg(writer.uri("data")),
    );
    let out = setup.path("out.img");
    run_ok(
        Command::new(&nbdcopy)
            .arg(reader.uri("data@snap"))
            .arg(&out),
    );
    let copied = std::fs::read(&out).unwrap();
    assert!(
        copied[..first.len()] == first[..],
        "the snapshot reads other data"
    );
    assert!(copied[first.len()..].iter().all(|&b| b == 0));
    let refused = common::command::output(
        Command::new(&nbdcopy)
            .arg(setup.path("second.img"))
            .arg(reader.uri("data@snap")),
    );
    assert!(!refused.status.success(), "nbdcopy wrote to a snapshot");
    reader.stop();
    writer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_served_read_only_beside_its_writer_on_a_local_directory() {
    a_snapshot_is_served_read_only_beside_its_writer(Setup::file()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_served_read_only_beside_its_writer_on_s3() {
    a_snapshot_is_served_read_only_beside_its_writer(Setup::s3("readers")).await;
}

/// `serve --read-only --follow data` beside the writer: each flushed pair
/// of blocks shows on the follower within the commit interval and a
/// second, never torn, and writes are refused.
fn a_follower_reads_the_writers_commits(setup: Setup) {
    let python = nbd_python();
    setup.zeroblk(&["volume", "create", "data", "--size", "64M"]);
    let interval = Duration::from_millis(500);
    let writer = setup.serve(&["--commit-interval", "500ms", "data"]);
    let follower = setup.serve(&["--read-only", "--follow", "data"]);
    assert!(
        follower.log_text().contains("read-only (following)"),
        "{}",
        follower.log_text()
    );
    let output = run_ok(
        Command::new(&python)
            .arg(script("follow.py"))
            .arg(writer.uri("data"))
            .arg(follower.uri("data"))
            .arg("6"),
    );
    let seconds: Vec<f64> = output.lines().map(|l| l.parse().unwrap()).collect();
    eprintln!("flush to follower: {seconds:?} s");
    assert_eq!(seconds.len(), 6, "{output}");
    // The target, with a second for commits on a loaded test machine.
    let target = (interval + Duration::from_secs(2)).as_secs_f64();
    for (round, seen) in seconds.iter().enumerate() {
        assert!(
            *seen <= target,
            "round {round}: {seen} s, target {target} s"
        );
    }
    follower.stop();
    writer.stop();
}

#[test]
fn a_follower_reads_the_writers_commits_on_a_local_directory() {
    a_follower_reads_the_writers_commits(Setup::file());
}

#[test]
fn a_follower_reads_the_writers_commits_on_s3() {
    a_follower_reads_the_writers_commits(Setup::s3("readers"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_read_only_requests_get_one_line_and_a_non_zero_exit() {
    let setup = Setup::file();
    setup.zeroblk(&["volume", "create", "data", "--size", "64M"]);
    setup.snapshot("data", "snap").await;
    for (args, says) in [
        (vec!["serve", "--follow", "data"], "add --read-only"),
        (
            vec!["serve", "--read-only", "--follow", "data@snap"],
            "follow `data`",
        ),
        (
            vec!["serve", "--read-only", "--follow-interval", "2s", "data"],
            "add --follow",
        ),
        (vec!["serve", "data@nope"], "has no snapshot `nope`"),
        (
            vec!["serve", "data@snap", "--force"],
            "read-only export takes none",
        ),
        (vec!["attach", "data@snap", "--size", "1G"], "leave it out"),
        (
            vec!["attach", "--read-only", "data", "--mount-point", "/mnt/x"],
            "mount the device read-only yourself",
        ),
        (vec!["attach", "--follow", "data@snap"], "follow `data`"),
        (vec!["detach", "--read-only", "data"], "is not attached"),
        (vec!["detach", "data@"], "is not a snapshot name"),
        (vec!["detach", "@snap"], "is not a volume name"),
    ] {
        let stderr = setup.zeroblk_fails(&args);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
}
