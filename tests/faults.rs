//! Object-store faults, end to end: `zeroblk serve` talks to a real S3
//! server (moto) through tests/faults/s3_proxy.py, which fails requests
//! the ways real stores do (500, 503, SlowDown, resets, replies lost after
//! the request landed, slow replies) or drops every connection. I/O goes
//! on, nothing is corrupted, and everything reaches the store once it
//! answers again: checked by reading the volume back from moto directly.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{ZeroblkServer, free_port, moto, require_tool, run_ok, zeroblk};

/// The faults the proxy injects at random.
const FAULTS: [&str; 6] = ["500", "503", "slowdown", "reset", "lost", "slow"];

/// The fault proxy, stopped when dropped.
struct FaultProxy {
    child: Child,
    endpoint: String,
    control: PathBuf,
}

impl FaultProxy {
    fn start(dir: &Path) -> FaultProxy {
        let port = free_port();
        let control = dir.join("faults");
        std::fs::write(&control, "ok").unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/faults/s3_proxy.py");
        let child = Command::new("/usr/bin/python3")
            .arg(script)
            .args([port.to_string(), moto().endpoint.clone()])
            .arg(&control)
            .arg("7")
            .stderr(std::fs::File::create(dir.join("proxy.log")).unwrap())
            .spawn()
            .expect("start the fault proxy");
        let endpoint = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        FaultProxy {
            child,
            endpoint,
            control,
        }
    }

    fn set(&self, faults: &str) {
        std::fs::write(&self.control, faults).unwrap();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Setup {
    dir: tempfile::TempDir,
    store: String,
    proxy: FaultProxy,
}

impl Setup {
    fn new() -> Setup {
        require_tool("nbdcopy", "libnbd-bin");
        let dir = tempfile::tempdir().unwrap();
        let proxy = FaultProxy::start(dir.path());
        Setup {
            store: format!("s3://{}/faults", moto().new_bucket()),
            dir,
            proxy,
        }
    }

    /// Environment that reaches moto through the proxy.
    fn through_proxy(&self) -> Vec<(&'static str, String)> {
        let mut env = moto().env();
        env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
        env.push(("AWS_ENDPOINT_URL", self.proxy.endpoint.clone()));
        env
    }

    /// Creates a 16M volume of 64K chunks, straight on moto.
    fn create_volume(&self, name: &str) {
        let cache = self.dir.path().join("cache");
        let args = [
            "volume",
            "create",
            name,
            "--size",
            "16M",
            "--chunk-size",
            "64K",
        ];
        zeroblk(&self.store, &cache, &moto().env(), &args);
    }

    fn serve(&self, extra: &[&str]) -> ZeroblkServer {
        let cache = self.dir.path().join("cache");
        ZeroblkServer::start(&self.store, &cache, &self.through_proxy(), extra)
    }

    /// Reads the volume back from moto itself, with a fresh cache.
    fn read_back_directly(&self, name: &str) -> Vec<u8> {
        let cache = self.dir.path().join("fresh-cache");
        let _ = std::fs::remove_dir_all(&cache);
        let verify = zeroblk(
            &self.store,
            &cache,
            &moto().env(),
            &["volume", "verify", name],
        );
        assert!(verify.contains(", 0 bad"), "{verify}");
        let server = ZeroblkServer::start(&self.store, &cache, &moto().env(), &[]);
        let out = self.dir.path().join("read-back.img");
        run_ok(Command::new("nbdcopy").arg(server.uri(name)).arg(&out));
        server.stop();
        std::fs::read(out).unwrap()
    }

    fn random_image(&self, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
        let mut rng = fastrand::Rng::with_seed(seed);
        // Half random, half a repeated pattern: compressible in part.
        let bytes: Vec<u8> = (0..len)
            .map(|i| {
                if (i / 65536) % 2 == 0 {
                    rng.u8(..)
                } else {
                    (i % 251) as u8
                }
            })
            .collect();
        let path = self.dir.path().join(format!("in-{seed}.img"));
        std::fs::write(&path, &bytes).unwrap();
        (path, bytes)
    }
}

#[test]
fn store_faults_slow_nothing_down_to_an_error_and_corrupt_nothing() {
    let setup = Setup::new();
    setup.create_volume("v");
    let server = setup.serve(&["--commit-interval", "200ms"]);
    setup.proxy.set("0.3 500,503,slowdown,reset,lost,slow");
    let (image, mut expected) = setup.random_image(16 << 20, 1);
    run_ok(Command::new("nbdcopy").arg(&image).arg(server.uri("v")));
    // A commit makes a few requests (its chunks go in packs): commit
    // overwrites until every kind of fault has met one.
    let proxy_log = || std::fs::read_to_string(setup.dir.path().join("proxy.log")).unwrap();
    let missing = |log: &str| {
        FAULTS
            .iter()
            .any(|fault| !log.contains(&format!("fault {fault} ")))
            || !log.contains("fault lost PUT")
    };
    for seed in 2..60 {
        if !missing(&proxy_log()) {
            break;
        }
        let (image, bytes) = setup.random_image(4 << 20, seed);
        run_ok(Command::new("nbdcopy").arg(&image).arg(server.uri("v")));
        expected[..bytes.len()].copy_from_slice(&bytes);
        std::thread::sleep(Duration::from_millis(300));
    }
    server.stop();
    let proxy_log = proxy_log();
    assert!(
        !missing(&proxy_log),
        "not every fault was injected, PUT replies lost included:\n{proxy_log}"
    );
    assert!(
        setup.read_back_directly("v") == expected,
        "the volume differs from what was written"
    );
}

#[test]
fn an_unreachable_store_holds_writes_within_max_dirty_until_it_returns() {
    let setup = Setup::new();
    setup.create_volume("v");
    let server = setup.serve(&["--commit-interval", "200ms", "--max-dirty", "2M"]);
    setup.proxy.set("down");
    // Within the dirty limit: accepted while the store is down.
    let (small, _) = setup.random_image(1 << 20, 3);
    run_ok(Command::new("nbdcopy").arg(&small).arg(server.uri("v")));
    let says_why = |log: &str| {
        log.contains("object store requests are failing")
            || log.contains("cannot commit to the object store")
    };
    for _ in 0..100 {
        if says_why(&server.log_text()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        says_why(&server.log_text()),
        "the log does not say why nothing is uploaded:\n{}",
        server.log_text()
    );
    let (big, big_bytes) = setup.random_image(8 << 20, 4);
    let mut writer = Command::new("nbdcopy")
        .arg(&big)
        .arg(server.uri("v"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        writer.try_wait().unwrap().is_none(),
        "8M of writes did not wait at a 2M dirty limit"
    );
    setup.proxy.set("ok");
    let status = writer.wait().unwrap();
    assert!(
        status.success(),
        "the writer failed once the store came back"
    );
    server.stop();
    let mut expected = big_bytes; // it overwrote the small image
    expected.resize(16 << 20, 0);
    assert!(
        setup.read_back_directly("v") == expected,
        "the volume differs from what was written"
    );
}

/// In-process: the engine on a store that fails 30% of requests in every
/// way [`Fault`] knows, hangs included (past a 200 ms deadline), from the
/// volume's creation to its close. Every read matches a model as it goes,
/// and the volume read back from the store without faults is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_faults_and_hung_requests_corrupt_nothing() {
    use zeroblk::engine::{self, Volume};
    use zeroblk::store::RetryPolicy;
    use zeroblk::store::faults::{Fault, Faults};

    const SIZE: u64 = 32 << 20;
    let backing = common::TestStore::new(common::Backend::File);
    let faults = Faults::new(11, Duration::from_secs(10), Duration::from_millis(30));
    let policy = RetryPolicy {
        first_backoff: Duration::from_millis(5),
        ..RetryPolicy::with_attempt_timeout(Duration::from_millis(200))
    };
    let store = backing
        .store
        .with_faults(faults.clone())
        .with_retry_policy(policy);
    faults.set(0.3, &Fault::ALL);

    engine::create(&store, &common::new_volume("v", SIZE, 64 << 10))
        .await
        .expect("create through faults");
    let cache = tempfile::tempdir().unwrap();
    let mut options = common::engine_options(cache.path());
    options.memory_cache_bytes = 1 << 20;
    options.disk_cache_bytes = 0;
    let volume = Volume::open(&store, "v", options)
        .await
        .expect("open through faults");

    let mut model = vec![0u8; SIZE as usize];
    let mut rng = fastrand::Rng::with_seed(5);
    for round in 0..300 {
        let len = 4096 * rng.usize(1..=64);
        let offset = 4096 * rng.usize(..(SIZE as usize - len) / 4096);
        let fill = rng.u8(..);
        let data: Vec<u8> = (0..len).map(|i| fill ^ (i / 4096) as u8).collect();
        volume.write(offset as u64, &data, false).await.unwrap();
        model[offset..offset + len].copy_from_slice(&data);
        if round % 10 == 0 {
            volume.flush().await.unwrap();
            let at = 4096 * rng.usize(..(SIZE as usize - (1 << 20)) / 4096);
            let mut back = vec![0u8; 1 << 20];
            volume.read(at as u64, &mut back).await.unwrap();
            assert!(
                back == model[at..at + (1 << 20)],
                "round {round}: a read differs"
            );
        }
    }
    volume.close().await.expect("close through faults");

    for fault in Fault::ALL {
        assert!(faults.injected(fault) > 0, "no {fault:?} was injected");
    }
    assert!(store.counters().retries > 0);

    let clean = backing.reopen();
    let report = engine::verify(&clean, "v", None).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.bad);
    let cache = tempfile::tempdir().unwrap();
    let volume = Volume::open(&clean, "v", common::engine_options(cache.path()))
        .await
        .unwrap();
    let mut back = vec![0u8; SIZE as usize];
    volume.read(0, &mut back).await.unwrap();
    assert!(back == model, "the volume differs from what was written");
    volume.close().await.unwrap();
}
