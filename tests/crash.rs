//! Crash tests that try to lose data: `zeroblk serve` is killed with
//! SIGKILL at random moments while a writer (tests/crash/writer.py, over
//! NBD) writes tagged blocks and flushes; then it restarts and every block
//! is checked against the writer's log.
//!
//! - With the cache dir kept, each block holds the last value written
//!   before the last acknowledged flush, or a value written after it:
//!   never anything older, never anything invented.
//! - With the cache dir lost too, the volume comes back at a state that
//!   existed: the writes of some prefix of the writer's batches, plus any
//!   of the batch in flight at that point, and nothing newer.
//!
//! `ZEROBLK_CRASH_ROUNDS=N` runs more rounds (scripts/soak.sh does).

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use common::crash_model::{check_flushed_writes_kept, check_state_existed, parse_log};
use common::{ZeroblkServer, nbd_python, require_tool, run_ok, tag_of, zeroblk};

const BLOCKS: u64 = 4096;
const CHUNK: &str = "64K";

struct Crash {
    setup: tempfile::TempDir,
    store: String,
    python: std::path::PathBuf,
}

impl Crash {
    fn new() -> Crash {
        require_tool("nbdcopy", "libnbd-bin");
        let setup = tempfile::tempdir().unwrap();
        let store = format!("file://{}/store", setup.path().display());
        Crash {
            python: nbd_python(),
            setup,
            store,
        }
    }

    fn cache(&self) -> std::path::PathBuf {
        self.setup.path().join("cache")
    }

    fn create(&self, name: &str) {
        let size = (BLOCKS * 4096).to_string();
        zeroblk(
            &self.store,
            &self.cache(),
            &[],
            &[
                "volume",
                "create",
                name,
                "--size",
                &size,
                "--chunk-size",
                CHUNK,
            ],
        );
    }

    fn serve(&self) -> ZeroblkServer {
        self.serve_with(&[])
    }

    fn serve_with(&self, extra: &[&str]) -> ZeroblkServer {
        let args = [&["--commit-interval", "300ms"][..], extra].concat();
        ZeroblkServer::start(&self.store, &self.cache(), &[], &args)
    }

    fn start_writer(
        &self,
        server: &ZeroblkServer,
        name: &str,
        log: &Path,
        first_tag: u64,
        seed: u64,
    ) -> Child {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/crash/writer.py");
        Command::new(&self.python)
            .arg(script)
            .arg(server.uri(name))
            .arg(log)
            .args([first_tag.to_string(), BLOCKS.to_string(), seed.to_string()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the writer")
    }

    /// Every block's tag, read over NBD.
    fn read_all(&self, server: &ZeroblkServer, name: &str) -> Vec<u64> {
        let image = self.setup.path().join(format!("{name}.img"));
        run_ok(Command::new("nbdcopy").arg(server.uri(name)).arg(&image));
        let bytes = std::fs::read(&image).unwrap();
        bytes.chunks(4096).map(tag_of).collect()
    }
}

fn rounds() -> u64 {
    std::env::var("ZEROBLK_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
}

/// Kills the server at a random moment of the writer's run.
fn crash_under_load(
    crash: &Crash,
    server: ZeroblkServer,
    name: &str,
    log: &Path,
    first_tag: u64,
    seed: u64,
) {
    let mut writer = crash.start_writer(&server, name, log, first_tag, seed);
    // Killed a random while after the writer got going: on a busy machine
    // its start alone can take longer than a fixed delay.
    wait_for_writes(log, 20);
    std::thread::sleep(Duration::from_millis(fastrand::u64(..2500)));
    server.kill();
    let _ = writer.wait();
}

/// Waits until the writer's log records `count` writes (a minute at most).
fn wait_for_writes(log: &Path, count: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().filter(|l| l.starts_with("W ")).count() >= count {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the writer logged fewer than {count} writes in a minute");
}

#[test]
fn sigkill_under_load_loses_no_flushed_write() {
    let crash = Crash::new();
    crash.create("v");
    let mut state = vec![0u64; BLOCKS as usize];
    let mut server = crash.serve();
    for round in 0..rounds() {
        let log = crash.setup.path().join(format!("round-{round}.log"));
        let first_tag = 1 + round * 10_000_000;
        crash_under_load(&crash, server, "v", &log, first_tag, round);
        server = crash.serve();
        let after = crash.read_all(&server, "v");
        let log = parse_log(&std::fs::read_to_string(&log).unwrap());
        assert!(
            log.writes.len() > 10,
            "round {round}: the writer barely ran"
        );
        if let Err(problem) = check_flushed_writes_kept(&state, &log, &after) {
            panic!("round {round}: {problem}\n{}", server.log_text());
        }
        state = after;
    }
    server.stop();
}

#[test]
fn sigkill_and_a_lost_cache_dir_leave_a_state_that_existed() {
    let crash = Crash::new();
    for round in 0..rounds() {
        let name = format!("v{round}");
        crash.create(&name);
        let log = crash.setup.path().join(format!("{name}.log"));
        crash_under_load(&crash, crash.serve(), &name, &log, 1, round);
        std::fs::remove_dir_all(crash.cache()).unwrap();
        // zeroblk cannot tell a lost log from one in another cache dir:
        // the operator says it is lost.
        let refused = common::zeroblk_fails(
            &crash.store,
            &crash.cache(),
            &[],
            &["volume", "resize", &name, "--size", "1G"],
        );
        assert!(
            refused.contains("stopped without detaching") && refused.contains("--force"),
            "round {round}: {refused}"
        );
        let server = crash.serve_with(&["--force"]);
        let after = crash.read_all(&server, &name);
        let log = parse_log(&std::fs::read_to_string(&log).unwrap());
        if let Err(problem) = check_state_existed(&vec![0; BLOCKS as usize], &log, &after) {
            panic!("round {round}: {problem}\n{}", server.log_text());
        }
        server.stop();
    }
}

/// The checks themselves catch what they are for.
#[test]
fn the_checks_catch_lost_and_invented_writes() {
    let log = parse_log("W 1 0\nW 2 1\nD\nF 3\nW 3 0\nW 4 2\nD\nW 5 1\n");
    let before = [0, 0, 0];
    assert!(check_flushed_writes_kept(&before, &log, &[1, 2, 0]).is_ok());
    assert!(check_flushed_writes_kept(&before, &log, &[3, 5, 4]).is_ok());
    assert!(
        check_flushed_writes_kept(&before, &log, &[0, 2, 0]).is_err(),
        "a flushed write lost"
    );
    assert!(
        check_flushed_writes_kept(&before, &log, &[1, 2, 9]).is_err(),
        "an invented value"
    );

    assert!(check_state_existed(&before, &log, &[0, 0, 0]).is_ok());
    assert!(
        check_state_existed(&before, &log, &[0, 2, 0]).is_ok(),
        "part of batch 0"
    );
    assert!(
        check_state_existed(&before, &log, &[1, 2, 4]).is_ok(),
        "batch 0, part of 1"
    );
    assert!(
        check_state_existed(&before, &log, &[0, 0, 4]).is_err(),
        "batch 1 without batch 0"
    );
    assert!(
        check_state_existed(&before, &log, &[1, 5, 0]).is_err(),
        "batch 2 without batch 1"
    );
}
