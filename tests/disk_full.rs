//! The cache dir runs out of space: writes fail with a clear error
//! (ENOSPC, and a log line naming the write-back log), and nothing that was
//! acknowledged is lost: once there is room again, the volume comes back
//! with every flushed write. The cache dir is a small tmpfs (needs root).

mod common;

use std::path::Path;
use std::process::Command;

use common::{ZeroblkServer, require_tool, run_ok, zeroblk};

/// A tmpfs of `size` at `path`, unmounted when dropped.
struct Tmpfs<'a>(&'a Path);

impl<'a> Tmpfs<'a> {
    fn mount(path: &'a Path, size: &str) -> Tmpfs<'a> {
        std::fs::create_dir_all(path).unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(path),
        );
        Tmpfs(path)
    }

    fn resize(&self, size: &str) {
        run_ok(
            Command::new("mount")
                .args(["-o", &format!("remount,size={size}")])
                .arg(self.0),
        );
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

fn random_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

#[test]
fn a_full_cache_dir_fails_writes_clearly_and_loses_nothing_acknowledged() {
    require_tool("nbdcopy", "libnbd-bin");
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}/store", dir.path().display());
    let cache = dir.path().join("cache");
    let tmpfs = Tmpfs::mount(&cache, "12m");
    zeroblk(
        &store,
        &cache,
        &[],
        &["volume", "create", "v", "--size", "64M"],
    );
    // Uploads never start (a long interval, a high threshold): everything
    // written stays in the log, which must then hold it.
    let args = [
        "--cache-size",
        "1M",
        "--commit-interval",
        "1h",
        "--max-dirty",
        "1G",
        "v",
    ];
    let server = ZeroblkServer::start(&store, &cache, &[], &args);

    let first = random_file(&dir.path().join("first"), 4 << 20, 1);
    run_ok(
        Command::new("nbdcopy")
            .arg(dir.path().join("first"))
            .arg(server.uri("v")),
    );
    // 32M more, after the first 8M, until the log cannot take it.
    let more = "import os, sys, nbd\n\
h = nbd.NBD(); h.connect_uri(sys.argv[1])\n\
for i in range(32): h.pwrite(os.urandom(1 << 20), (8 + i) << 20)\n\
h.flush()\n";
    let second = common::command::output(Command::new(common::nbd_python()).args([
        "-c",
        more,
        &server.uri("v"),
    ]));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success(),
        "32M of writes fit in a 12M cache dir?"
    );
    assert!(
        stderr.contains("No space left on device") || stderr.contains("ENOSPC"),
        "{stderr}"
    );
    let log = server.log_text();
    assert!(
        log.contains("No space left on device") && log.contains("write-back log"),
        "the log does not say the cache dir is full:\n{log}"
    );
    server.kill();

    tmpfs.resize("256m");
    let server = ZeroblkServer::start(&store, &cache, &[], &["v"]);
    let out = dir.path().join("out");
    run_ok(Command::new("nbdcopy").arg(server.uri("v")).arg(&out));
    let back = std::fs::read(&out).unwrap();
    assert!(
        back[..first.len()] == first[..],
        "an acknowledged write was lost"
    );
    server.stop();
}

/// Red-team finding: reads alone made the volume unwritable. The disk
/// chunk cache (10G by default) filled the cache dir's filesystem, the
/// next log record found no room, and after a restart the same happened
/// at once: the cache never gave its room back to the log. Now the cache
/// leaves the log's room (7 x `--max-dirty`) free, evicting to keep it.
#[test]
fn reads_that_fill_the_disk_cache_leave_room_for_writes() {
    require_tool("nbdcopy", "libnbd-bin");
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}/store", dir.path().display());
    let roomy = dir.path().join("roomy");
    zeroblk(
        &store,
        &roomy,
        &[],
        &[
            "volume",
            "create",
            "v",
            "--size",
            "64M",
            "--chunk-size",
            "64K",
            "--compression",
            "none",
        ],
    );
    let data = random_file(&dir.path().join("data"), 32 << 20, 2);
    let server = ZeroblkServer::start(&store, &roomy, &[], &["v"]);
    run_ok(
        Command::new("nbdcopy")
            .arg(dir.path().join("data"))
            .arg(server.uri("v")),
    );
    server.stop();

    let cache = dir.path().join("cache");
    let _tmpfs = Tmpfs::mount(&cache, "12m");
    for session in 1..=2 {
        let server = ZeroblkServer::start(&store, &cache, &[], &["--max-dirty", "1M", "v"]);
        let out = dir.path().join("out");
        run_ok(Command::new("nbdcopy").arg(server.uri("v")).arg(&out));
        let back = std::fs::read(&out).unwrap();
        assert!(
            back[..data.len()] == data[..],
            "session {session}: the data read back differs"
        );
        let write = "import sys, nbd\n\
h = nbd.NBD(); h.connect_uri(sys.argv[1])\n\
h.pwrite(b'w' * 65536, 40 << 20)\n\
h.flush()\n";
        let written = common::command::output(Command::new(common::nbd_python()).args([
            "-c",
            write,
            &server.uri("v"),
        ]));
        assert!(
            written.status.success(),
            "session {session}: after reads filled the disk cache, a 64K write failed: {}\n{}",
            String::from_utf8_lossy(&written.stderr),
            server.log_text()
        );
        server.stop();
    }
}
