//! `zeroblk status` and the metrics endpoint, read from a real `zeroblk
//! serve` on a real S3 server (moto) while fio writes and reads through
//! NBD: the figures move as the I/O happens, the JSON reads back, and
//! Prometheus's own parser (Python's prometheus_client) accepts the
//! exposition.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{ZeroblkServer, free_port, moto, require_tool, run_ok, zeroblk};

/// A served volume, with its own runtime directory (where `zeroblk
/// status` finds daemons) and a metrics port.
struct Daemon {
    _dir: tempfile::TempDir,
    store_url: String,
    cache: PathBuf,
    env: Vec<(&'static str, String)>,
    metrics: String,
    server: ZeroblkServer,
}

impl Daemon {
    fn serve(volume: &str, size: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let moto = moto();
        let store_url = format!("s3://{}/status", moto.new_bucket());
        let cache = dir.path().join("cache");
        let mut env = moto.env();
        let runtime = dir.path().join("run").display().to_string();
        env.push(("ZEROBLK_RUNTIME_DIR", runtime));
        zeroblk(
            &store_url,
            &cache,
            &env,
            &["volume", "create", volume, "--size", size],
        );
        let metrics = format!("127.0.0.1:{}", free_port());
        let server = ZeroblkServer::start(
            &store_url,
            &cache,
            &env,
            &[
                "--metrics-listen",
                &metrics,
                "--commit-interval",
                "1s",
                volume,
            ],
        );
        Daemon {
            _dir: dir,
            store_url,
            cache,
            env,
            metrics: format!("http://{metrics}/metrics"),
            server,
        }
    }

    /// `zeroblk status --json`: one entry per daemon.
    fn status(&self) -> serde_json::Value {
        let out = zeroblk(
            &self.store_url,
            &self.cache,
            &self.env,
            &["status", "--json"],
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// The metrics, as Prometheus's parser read them.
    fn metrics(&self) -> BTreeMap<String, f64> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/status/metrics.py");
        let out = run_ok(Command::new(python()).arg(script).arg(&self.metrics));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
}

/// The Python with prometheus_client (scripts/test.sh installs it).
fn python() -> &'static str {
    let ok = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 lacks prometheus_client: `python3 -m pip install prometheus_client` (scripts/test.sh does)"
    );
    "python3"
}

/// A command in the background, stopped as Ctrl-C would stop it when
/// dropped (a failed test included).
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.0.wait();
    }
}

/// fio writing and reading the volume over NBD, in the background.
fn fio_load(uri: &str, seconds: u32) -> Background {
    let fio = require_tool("fio", "fio");
    Command::new(fio)
        .args([
            "--name=load",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randrw",
            "--bs=64k",
            "--size=96M",
            "--iodepth=8",
            "--time_based",
            &format!("--runtime={seconds}"),
            "--fsync=64",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Background)
        .expect("start fio")
}

fn volume<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    let daemons = status.as_array().expect("an array of daemons");
    assert_eq!(daemons.len(), 1, "{status}");
    let volumes = daemons[0]["volumes"].as_array().unwrap();
    volumes
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("{status}"))
}

fn number(value: &serde_json::Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

/// Polls `check` until it holds; fails after `tries` looks a second apart
/// (a deadline for a figure that never moves, not a timing check).
fn eventually(what: &str, tries: u32, mut check: impl FnMut() -> bool) {
    for _ in 0..tries {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("{what}: never seen in {tries} looks");
}

#[test]
fn status_and_metrics_move_as_fio_writes_and_reads() {
    let daemon = Daemon::serve("v", "1G");
    let before = daemon.status();
    let idle = volume(&before, "v");
    assert_eq!(number(&idle["requests"]["writes"]), 0);
    assert_eq!(before[0]["role"], "serve");
    assert_eq!(before[0]["nbd_clients"], 0);
    let holder = idle["lease"]["holder"].as_str().unwrap();
    assert!(holder.starts_with("pid "), "{holder}");
    let idle_metrics = daemon.metrics();
    assert_eq!(
        idle_metrics["zeroblk_volume_written_bytes_total{volume=v}"],
        0.0
    );

    // Long enough to outlast every look below on a loaded machine: it is
    // stopped once they are done.
    let fio = fio_load(&daemon.server.uri("v"), 600);
    // While fio runs: its connection shows, and writes are dirty in the
    // log before a commit takes them.
    eventually(
        "a client connected and writes waiting for a commit",
        60,
        || {
            let status = daemon.status();
            let v = volume(&status, "v");
            status[0]["nbd_clients"].as_u64() >= Some(1)
                && number(&v["requests"]["writes"]) > 0
                && number(&v["log_bytes"]) > 0
                && v["oldest_uncommitted_ms"].is_u64()
        },
    );
    eventually("commits to the store", 60, || {
        let status = daemon.status();
        let v = volume(&status, "v");
        number(&v["requests"]["commits"]) > 0 && v["last_commit_at_ms"].is_u64()
    });
    let during = daemon.metrics();
    drop(fio);

    let after = daemon.status();
    let v = volume(&after, "v");
    let written = number(&v["requests"]["bytes_written"]);
    let read = number(&v["requests"]["bytes_read"]);
    assert!(written >= 1 << 20 && read >= 1 << 20, "{v}");
    let puts = after[0]["store_requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "put")
        .unwrap()
        .clone();
    assert!(number(&puts["requests"]) > 0, "{puts}");
    assert!(number(&after[0]["store_bytes_written"]) > 0);

    // The page is rendered at most once a second: the I/O has stopped, so
    // it catches up with the status taken above.
    let written_key = "zeroblk_volume_written_bytes_total{volume=v}";
    let mut metrics = daemon.metrics();
    eventually("the metrics page catching up", 30, || {
        metrics = daemon.metrics();
        metrics[written_key] >= written as f64
    });
    let m = |key: &str| {
        *metrics
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in {metrics:?}"))
    };
    // Counters only rise, and they agree with the status taken before.
    for key in [
        "zeroblk_volume_written_bytes_total{volume=v}",
        "zeroblk_volume_read_bytes_total{volume=v}",
        "zeroblk_store_requests_total{op=put}",
        "zeroblk_volume_commits_total{volume=v}",
    ] {
        assert!(m(key) >= during[key], "{key} fell");
        assert!(
            m(key) > idle_metrics.get(key).copied().unwrap_or(0.0),
            "{key} never moved"
        );
    }
    assert!(m("zeroblk_volume_written_bytes_total{volume=v}") >= written as f64);
    assert!(m("zeroblk_volume_requests_total{op=write,volume=v}") > 0.0);
    assert!(m("zeroblk_store_request_duration_seconds_count{op=put}") > 0.0);
    assert!(m("zeroblk_volume_commit_duration_seconds_count{volume=v}") > 0.0);
    assert!(m("zeroblk_volume_last_commit_timestamp_seconds{volume=v}") > 1.6e9);
    assert_eq!(
        m("zeroblk_volume_size_bytes{volume=v}"),
        (1u64 << 30) as f64
    );
    let hits = m("zeroblk_cache_hits_total{tier=memory,volume=v}")
        + m("zeroblk_cache_misses_total{tier=memory,volume=v}");
    assert!(hits > 0.0, "fio's reads went through the cache");
    let holder_key = format!("zeroblk_volume_lease_info{{holder={holder},volume=v}}");
    assert_eq!(m(&holder_key), 1.0);
    every_name_the_dashboard_uses_is_exposed(&metrics);
}

/// contrib/grafana/zeroblk.json asks only for metrics a daemon serves.
fn every_name_the_dashboard_uses_is_exposed(metrics: &BTreeMap<String, f64>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/grafana/zeroblk.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let exposed: Vec<&str> = metrics
        .keys()
        .map(|k| k.split('{').next().unwrap())
        .collect();
    let mut used = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in metric_names(expr) {
                assert!(
                    exposed.contains(&name) || ONLY_UBLK_ATTACHES.contains(&name),
                    "the dashboard's panel `{}` asks for {name}, which no daemon serves",
                    panel["title"]
                );
                used += 1;
            }
        }
    }
    assert!(used >= 12, "the dashboard asks for {used} metrics");
}

/// What only a ublk attach serves (tests/vm/attach_ublk.sh reads them).
const ONLY_UBLK_ATTACHES: [&str; 2] = ["zeroblk_ublk_queues", "zeroblk_ublk_queue_depth"];

/// The `zeroblk_...` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("zeroblk_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(&tail[..end]);
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_human_status_names_each_figure_and_a_missing_volume_is_an_error() {
    let daemon = Daemon::serve("shown", "256M");
    let out = zeroblk(
        &daemon.store_url,
        &daemon.cache,
        &daemon.env,
        &["status", "shown"],
    );
    for words in [
        "shown  served over NBD",
        "dirty",
        "oldest uncommitted write",
        "commits",
        "cache hits   memory",
        "stored",
        "lease        pid",
        "nbd clients  0",
        "GET",
    ] {
        assert!(out.contains(words), "no `{words}` in:\n{out}");
    }
    let missing = common::zeroblk_fails(
        &daemon.store_url,
        &daemon.cache,
        &daemon.env,
        &["status", "other"],
    );
    assert!(
        missing.contains("no daemon on this host serves `other`"),
        "{missing}"
    );
}

#[test]
fn watch_redraws_in_place_until_interrupted() {
    use std::io::Read;
    let daemon = Daemon::serve("w", "256M");
    let args = ["status", "--watch", "--interval", "100ms"];
    let mut watch = common::zeroblk_command(&daemon.store_url, &daemon.cache, &daemon.env, &args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start zeroblk status --watch");
    // Read until three screens have begun (each starts by going home and
    // clearing), then interrupt it as Ctrl-C would.
    let mut stdout = watch.stdout.take().unwrap();
    let mut out = String::new();
    let mut buffer = [0u8; 4096];
    while out.matches(CLEAR).count() < 3 {
        let n = stdout.read(&mut buffer).unwrap();
        assert!(n > 0, "--watch ended by itself:\n{out}");
        out.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    let pid = nix::unistd::Pid::from_raw(watch.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = watch.wait().unwrap();
    assert!(
        status.success(),
        "--watch did not stop cleanly on SIGINT: {status}"
    );
    let screens: Vec<&str> = out.split(CLEAR).skip(1).collect();
    for screen in &screens[..2] {
        assert!(screen.contains("w  served over NBD"), "{screen}");
    }
}

/// What --watch prints before each screen: home, clear.
const CLEAR: &str = "\x1b[H\x1b[2J";

#[test]
fn the_metrics_endpoint_answers_only_metrics_and_a_taken_port_stops_the_start() {
    let daemon = Daemon::serve("m", "256M");
    let root = daemon.metrics.trim_end_matches("/metrics");
    let status = |path: &str, method: &str| {
        run_ok(
            Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
                .arg(format!("{root}{path}")),
        )
    };
    assert_eq!(status("/metrics", "GET"), "200");
    assert_eq!(status("/elsewhere", "GET"), "404");
    assert_eq!(status("/metrics", "POST"), "405");
    // One answer per connection, then the daemon closes it (read_to_end
    // ends): a flood pipelined on one connection gets no more pages.
    let address = root.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\n\r\n");
    std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_lowercase().contains("connection: close"),
        "{answer}"
    );
    // A second daemon cannot take the same metrics address: it says so
    // and names the flag, before serving anything.
    let taken = daemon
        .metrics
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let refused = common::zeroblk_fails(
        &daemon.store_url,
        &daemon.cache.with_extension("second"),
        &daemon.env,
        &[
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--metrics-listen",
            taken,
            "m",
            "--read-only",
        ],
    );
    assert!(
        refused.contains("cannot serve metrics on") && refused.contains("--metrics-listen"),
        "{refused}"
    );
}
