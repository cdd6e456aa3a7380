//! Shared test setup: the stores every engine test runs against, a real
//! S3 server (moto) started once per test binary, loop devices and a btrfs
//! on one ([`btrfs::LoopBtrfs`]).
//!
//! A test that needs a tool the machine lacks fails and says which and how
//! to install it (`scripts/test.sh` installs everything); it never passes
//! silently.
#![allow(dead_code)]

pub mod btrfs;
pub mod command;
pub mod crash_model;
pub mod failpoints;
pub mod served;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use zeroblk::engine::{EngineOptions, NewVolume};
use zeroblk::format::Compression;
use zeroblk::store::{Store, StoreOptions};

pub const ACCESS_KEY: &str = "zeroblk-test";
pub const SECRET_KEY: &str = "zeroblk-test-secret";

/// The kinds of store the engine must work on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    File,
    S3,
}

pub const ALL_BACKENDS: [Backend; 3] = [Backend::Memory, Backend::File, Backend::S3];

/// A store for one test, and what keeps it alive.
pub struct TestStore {
    pub store: Store,
    pub url: String,
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
}

impl TestStore {
    pub fn new(backend: Backend) -> TestStore {
        match backend {
            Backend::Memory => TestStore {
                store: Store::memory(),
                url: "memory://".into(),
                backend,
                _dir: None,
            },
            Backend::File => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let url = format!("file://{}", dir.path().display());
                let store = Store::open(&url, &StoreOptions::default()).expect("file store");
                TestStore {
                    store,
                    url,
                    backend,
                    _dir: Some(dir),
                }
            }
            Backend::S3 => {
                let server = moto();
                let bucket = server.new_bucket();
                let url = format!("s3://{bucket}/zeroblk");
                let store = Store::open(&url, &server.store_options()).expect("s3 store");
                TestStore {
                    store,
                    url,
                    backend,
                    _dir: None,
                }
            }
        }
    }

    /// The directory of a local store (`file://`).
    #[allow(dead_code)]
    pub fn dir(&self) -> Option<&Path> {
        self._dir.as_ref().map(|dir| dir.path())
    }

    /// The same store reopened from its URL (a new process would do this).
    pub fn reopen(&self) -> Store {
        match self.backend {
            Backend::Memory => self.store.clone(),
            Backend::File => Store::open(&self.url, &StoreOptions::default()).expect("file store"),
            Backend::S3 => Store::open(&self.url, &moto().store_options()).expect("s3 store"),
        }
    }
}

/// Logs the engine's tracing to the test's output when `RUST_LOG` is set
/// (for example `RUST_LOG=zeroblk=debug`).
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Engine options for tests: small caches, quick commits.
pub fn engine_options(cache_dir: &Path) -> EngineOptions {
    let mut options = EngineOptions::new(cache_dir);
    options.memory_cache_bytes = 8 << 20;
    options.disk_cache_bytes = 16 << 20;
    options.commit_interval = Duration::from_millis(50);
    // Small segments: every test rotates, closes and recycles log segments.
    options.log_segment_bytes = 256 << 10;
    // The disk cache leaves room for a log this size can need (7x): keep
    // that well within a test machine's free space, or the disk tier
    // stays empty.
    options.max_dirty_bytes = 64 << 20;
    options
}

/// Creates volume `name` in `store` and opens it with a fresh cache dir
/// (returned too, to keep it alive).
pub async fn create_and_open(
    store: &Store,
    name: &str,
    size: u64,
    chunk_size: u64,
) -> (zeroblk::engine::Volume, tempfile::TempDir) {
    let (volume, cache, _) = create_and_open_with(store, name, size, chunk_size, |_| {}).await;
    (volume, cache)
}

/// [`create_and_open`], with the test options as `adjust` leaves them;
/// returns those options too, for opening the volume again.
pub async fn create_and_open_with(
    store: &Store,
    name: &str,
    size: u64,
    chunk_size: u64,
    adjust: impl FnOnce(&mut EngineOptions),
) -> (zeroblk::engine::Volume, tempfile::TempDir, EngineOptions) {
    zeroblk::engine::create(store, &new_volume(name, size, chunk_size))
        .await
        .expect("create the volume");
    let cache = tempfile::tempdir().expect("temporary directory");
    let mut options = engine_options(cache.path());
    adjust(&mut options);
    let volume = zeroblk::engine::Volume::open(store, name, options.clone())
        .await
        .expect("open the volume");
    (volume, cache, options)
}

pub fn new_volume(name: &str, size: u64, chunk_size: u64) -> NewVolume {
    NewVolume {
        name: name.to_string(),
        size,
        chunk_size,
        compression: Compression::default(),
        encrypt_with: None,
    }
}

/// A moto S3 server on loopback, shared by the tests of one binary.
pub struct Moto {
    pub endpoint: String,
    _watcher: std::process::Child,
}

pub fn moto() -> &'static Moto {
    static SERVER: OnceLock<Moto> = OnceLock::new();
    SERVER.get_or_init(Moto::start)
}

impl Moto {
    fn start() -> Moto {
        let port = free_port();
        let binary = which("moto_server").unwrap_or_else(|| {
            panic!(
                "moto_server is not installed: run scripts/test.sh, or `pip install 'moto[server]'`"
            )
        });
        // The server lives as long as this test process: a small shell
        // watches our pid and stops it when we are gone.
        let script = format!(
            "{} -H 127.0.0.1 -p {port} >/dev/null 2>&1 & server=$!; \
             while kill -0 {} 2>/dev/null; do sleep 1; done; kill $server",
            binary.display(),
            std::process::id()
        );
        let watcher = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        wait_for_http(&endpoint, Duration::from_secs(60));
        Moto {
            endpoint,
            _watcher: watcher,
        }
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            s3_endpoint: Some(self.endpoint.clone()),
            s3_settings: self.settings(),
            ..StoreOptions::default()
        }
    }

    pub fn settings(&self) -> Vec<(String, String)> {
        vec![
            ("aws_access_key_id".into(), ACCESS_KEY.into()),
            ("aws_secret_access_key".into(), SECRET_KEY.into()),
            ("aws_region".into(), "us-east-1".into()),
        ]
    }

    /// Environment variables that point a zeroblk process at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// The response to an unsigned GET of `path` (moto answers those), body included.
    pub fn get(&self, path: &str) -> String {
        http_exchange(&self.endpoint, "GET", path)
    }

    /// Puts an empty object by an unsigned request (moto takes those) at
    /// `path`, `/BUCKET/KEY` percent-encoded: keys no S3 library would
    /// write, as a stranger's tool may.
    pub fn put_empty(&self, path: &str) {
        let status = http_request(&self.endpoint, "PUT", path);
        assert!(status.starts_with("HTTP/1.1 200"), "PUT {path}: {status}");
    }

    /// Creates a bucket with a fresh name.
    pub fn new_bucket(&self) -> String {
        let name = format!("zb-{}", uuid::Uuid::new_v4().simple());
        self.create_bucket(&name);
        name
    }

    /// Creates the bucket `name` (a test that names its own must be the
    /// only one to use that name).
    pub fn create_bucket(&self, name: &str) {
        let status = http_request(&self.endpoint, "PUT", &format!("/{name}"));
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "creating bucket {name}: {status}"
        );
    }
}

pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_for_http(endpoint: &str, timeout: Duration) {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if http_request(endpoint, "GET", "/").starts_with("HTTP/1.1") {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the S3 server at {endpoint} did not come up within {timeout:?}");
}

/// One unsigned HTTP request; returns the status line (or an error text).
fn http_request(endpoint: &str, method: &str, path: &str) -> String {
    http_exchange(endpoint, method, path)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// The whole response (status line, headers and body) to an unsigned request.
fn http_exchange(endpoint: &str, method: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let address = endpoint.trim_start_matches("http://");
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return "connection refused".into();
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return "write failed".into();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// Proptest's settings for the model tests: `default` cases, or
/// `ZEROBLK_MODEL_CASES` (the soak runs more).
pub fn model_cases(default: u32) -> proptest::prelude::ProptestConfig {
    let cases = std::env::var("ZEROBLK_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    proptest::prelude::ProptestConfig {
        cases,
        max_shrink_iters: 200,
        ..proptest::prelude::ProptestConfig::default()
    }
}

/// Makes every file under `dirs` of the file store at `root` look two
/// hours old (older than any grace period the tests use), as a slow
/// commit, or objects left long ago, would look to gc.
pub fn age_objects(root: &Path, dirs: &[&str]) {
    age_objects_by(root, dirs, Duration::from_secs(2 * 3600));
}

/// [`age_objects`], making them look `age` old.
pub fn age_objects_by(root: &Path, dirs: &[&str], age: Duration) {
    let then = std::time::SystemTime::now() - age;
    for dir in dirs {
        for file in walk(&root.join(dir)) {
            let file = std::fs::File::options().write(true).open(file).unwrap();
            file.set_modified(then).unwrap();
        }
    }
}

/// `len` incompressible bytes, the same for the same `seed` (xorshift).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Every file under `dir`, recursively, sorted (none if it is missing).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for path in entries.map(|e| e.unwrap().path()) {
            match path.is_dir() {
                true => todo.push(path),
                false => files.push(path),
            }
        }
    }
    files.sort();
    files
}

/// A block of test data: `tag` repeated, so a read tells which write it
/// came from (tag 0 is zeroes).
pub fn block_of(tag: u64) -> Vec<u8> {
    if tag == 0 {
        return vec![0; 4096];
    }
    let mut block = Vec::with_capacity(4096);
    while block.len() < 4096 {
        block.extend_from_slice(&tag.to_le_bytes());
    }
    block
}

/// The tag a block holds (0 for zeroes); panics on anything else.
pub fn tag_of(block: &[u8]) -> u64 {
    let tag = u64::from_le_bytes(block[..8].try_into().unwrap());
    assert!(
        block.chunks(8).all(|c| c == tag.to_le_bytes()),
        "block holds bytes no write wrote"
    );
    tag
}

/// The tags of `blocks` blocks from `first_block` (see [`block_of`]).
pub async fn read_tags(
    volume: &zeroblk::engine::Volume,
    first_block: u64,
    blocks: u64,
) -> Vec<u64> {
    let mut buf = vec![0u8; (blocks * 4096) as usize];
    volume.read(first_block * 4096, &mut buf).await.unwrap();
    buf.chunks(4096).map(tag_of).collect()
}

/// Writes one tagged block per tag from `first_block` (see [`block_of`]).
pub async fn write_tags(volume: &zeroblk::engine::Volume, first_block: u64, tags: &[u64]) {
    let data: Vec<u8> = tags.iter().flat_map(|&t| block_of(t)).collect();
    volume
        .write(first_block * 4096, &data, false)
        .await
        .unwrap();
}

/// Panics with an install hint when a client tool is missing.
pub fn require_tool(program: &str, package: &str) -> PathBuf {
    which(program).unwrap_or_else(|| {
        panic!("{program} is not installed: run scripts/test.sh, or `apt-get install {package}`")
    })
}

/// The system Python, with libnbd's module (python3-libnbd).
pub fn nbd_python() -> PathBuf {
    let python = PathBuf::from("/usr/bin/python3");
    let ok = Command::new(&python)
        .args(["-c", "import nbd"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "libnbd's Python module is missing: run scripts/test.sh, or `apt-get install python3-libnbd`"
    );
    python
}

/// A `zeroblk serve` process on a local port.
pub struct ZeroblkServer {
    child: Option<std::process::Child>,
    pub port: u16,
    pub store_url: String,
    pub cache_dir: PathBuf,
    pub env: Vec<(&'static str, String)>,
    pub log: PathBuf,
}

impl ZeroblkServer {
    /// Starts `zeroblk serve` with `extra` arguments and waits until it
    /// accepts connections.
    pub fn start(
        store_url: &str,
        cache_dir: &Path,
        env: &[(&'static str, String)],
        extra: &[&str],
    ) -> ZeroblkServer {
        let port = free_port();
        let log = cache_dir.with_extension(format!("serve-{port}.log"));
        let log_file = std::fs::File::create(&log).expect("server log");
        let child = Command::new(env!("CARGO_BIN_EXE_zeroblk"))
            .args(["--store", store_url, "--cache-dir"])
            .arg(cache_dir)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env_remove("ZEROBLK_CONFIG")
            // At least info: readiness is read from the log.
            .env("RUST_LOG", server_log_filter())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start zeroblk serve");
        let mut server = ZeroblkServer {
            child: Some(child),
            port,
            store_url: store_url.to_string(),
            cache_dir: cache_dir.to_path_buf(),
            env: env.to_vec(),
            log,
        };
        server.wait_until_listening();
        server
    }

    /// Waits for the server to say it serves (it logs that once its
    /// sockets are bound). A probe connection would do as well, but it
    /// holds one of the server's `--max-connections` places until the
    /// server sees it close, and a test of the cap then counts it.
    fn wait_until_listening(&mut self) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if self.log_text().contains("serving volume") {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("zeroblk serve exited with {status}: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "zeroblk serve did not listen within 30 s: {}",
            self.log_text()
        );
    }

    pub fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and checks the server commits and exits 0.
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let status = child.wait().expect("wait for zeroblk serve");
        assert!(
            status.success(),
            "zeroblk serve exited with {status}: {}",
            self.log_text()
        );
    }

    /// Kills the server with SIGKILL.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib << 10
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for ZeroblkServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a command, panicking with its output if it fails; returns stdout.
pub fn run_ok(command: &mut Command) -> String {
    let output = command::output(command);
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs the `zeroblk` binary with a store and cache dir; returns stdout.
pub fn zeroblk(
    store_url: &str,
    cache_dir: &Path,
    env: &[(&'static str, String)],
    args: &[&str],
) -> String {
    run_ok(&mut zeroblk_command(store_url, cache_dir, env, args))
}

/// The `zeroblk` binary with a store, a cache dir, `env` and `args`, and
/// no configuration file from the environment.
pub fn zeroblk_command(
    store_url: &str,
    cache_dir: &Path,
    env: &[(&'static str, String)],
    args: &[&str],
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_zeroblk"));
    command
        .args(["--store", store_url, "--cache-dir"])
        .arg(cache_dir)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("ZEROBLK_CONFIG");
    command
}

/// Runs the `zeroblk` binary as [`zeroblk`] does, expecting it to fail;
/// returns its stderr.
pub fn zeroblk_fails(
    store_url: &str,
    cache_dir: &Path,
    env: &[(&'static str, String)],
    args: &[&str],
) -> String {
    let output = command::output(&mut zeroblk_command(store_url, cache_dir, env, args));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "zeroblk {args:?} succeeded: {stderr}"
    );
    stderr
}

/// A loop device over a sparse file, detached when dropped (after
/// unmounting whatever is mounted at `mount_point`).
pub struct LoopDevice {
    pub path: PathBuf,
    pub mount_point: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopDevice {
    /// Needs root and the loop driver (both here, and in CI).
    pub fn new(size: u64) -> LoopDevice {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(size)
            .unwrap();
        require_tool("losetup", "mount");
        let path = run_ok(Command::new("losetup").args(["-f", "--show"]).arg(&image));
        LoopDevice {
            path: PathBuf::from(path.trim()),
            mount_point: dir.path().join("mnt"),
            _dir: dir,
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        while Command::new("umount")
            .arg(&self.mount_point)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {}
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// TLS credentials for one test, made with the `openssl` CLI: a CA, a
/// server certificate for 127.0.0.1 and localhost, a client certificate,
/// a second CA that signed neither (and a client certificate of its own),
/// and pre-shared keys. Client directories are laid out as libnbd's
/// `tls-certificates=DIR` and qemu's `tls-creds-x509,dir=DIR` read them:
/// `ca-cert.pem`, `client-cert.pem`, `client-key.pem`; qemu's
/// `tls-creds-psk,dir=DIR` reads `keys.psk`.
pub struct TestCerts {
    dir: tempfile::TempDir,
}

/// The PSK identity [`TestCerts`] writes.
pub const PSK_IDENTITY: &str = "alice";

impl TestCerts {
    pub fn new() -> TestCerts {
        let openssl = require_tool("openssl", "openssl");
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = |name: &str| dir.path().join(name).display().to_string();
        let run = |args: &[&str]| {
            run_ok(Command::new(&openssl).args(args).current_dir(dir.path()));
        };
        let new_key = |name: &str| {
            run(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-out",
                &path(name),
            ])
        };
        for ca in ["ca", "other-ca"] {
            new_key(&format!("{ca}-key.pem"));
            run(&[
                "req",
                "-x509",
                "-new",
                "-key",
                &path(&format!("{ca}-key.pem")),
                "-out",
                &path(&format!("{ca}-cert.pem")),
                "-days",
                "2",
                "-subj",
                &format!("/CN=zeroblk test {ca}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
        }
        let issue = |name: &str, ca: &str, subject: &str, extensions: &str| {
            new_key(&format!("{name}-key.pem"));
            std::fs::write(dir.path().join(format!("{name}.ext")), extensions).unwrap();
            run(&[
                "req",
                "-new",
                "-key",
                &path(&format!("{name}-key.pem")),
                "-out",
                &path(&format!("{name}.csr")),
                "-subj",
                subject,
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &path(&format!("{name}.csr")),
                "-CA",
                &path(&format!("{ca}-cert.pem")),
                "-CAkey",
                &path(&format!("{ca}-key.pem")),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &path(&format!("{name}.ext")),
                "-out",
                &path(&format!("{name}-cert.pem")),
            ]);
        };
        let leaf = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n";
        issue(
            "server",
            "ca",
            "/CN=localhost",
            &format!(
                "{leaf}extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
            ),
        );
        for (name, ca) in [("client", "ca"), ("stranger", "other-ca")] {
            issue(
                name,
                ca,
                &format!("/CN={name}"),
                &format!("{leaf}extendedKeyUsage=clientAuth\n"),
            );
        }
        let certs = TestCerts { dir };
        certs.client_dir("trusting", "ca", None);
        certs.client_dir("with-cert", "ca", Some("client"));
        certs.client_dir("with-stranger-cert", "ca", Some("stranger"));
        certs.client_dir("wrong-ca", "other-ca", None);
        let psk = |name: &str, key: &[u8; 32]| {
            let line = format!("{PSK_IDENTITY}:{}\n", hex(key));
            let dir = certs.path(name);
            std::fs::create_dir(&dir).unwrap();
            private(&dir.join("keys.psk"), &line);
        };
        psk("psk", &[0x5a; 32]);
        psk("wrong-psk", &[0xa5; 32]);
        certs
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A client directory `name` trusting `ca`, with certificate `cert`.
    fn client_dir(&self, name: &str, ca: &str, cert: Option<&str>) {
        let dir = self.path(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(
            self.path(&format!("{ca}-cert.pem")),
            dir.join("ca-cert.pem"),
        )
        .unwrap();
        if let Some(cert) = cert {
            std::fs::copy(
                self.path(&format!("{cert}-cert.pem")),
                dir.join("client-cert.pem"),
            )
            .unwrap();
            let key = std::fs::read_to_string(self.path(&format!("{cert}-key.pem"))).unwrap();
            private(&dir.join("client-key.pem"), &key);
        }
    }

    /// `zeroblk serve` flags for the server certificate.
    pub fn server_flags(&self) -> Vec<String> {
        let key = self.path("server-key.pem");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        vec![
            "--tls-cert".into(),
            self.path("server-cert.pem").display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ]
    }

    /// The CA that issued the server and client certificates.
    pub fn ca(&self) -> PathBuf {
        self.path("ca-cert.pem")
    }

    /// A client directory that trusts the right CA and has no certificate.
    pub fn trusting_dir(&self) -> PathBuf {
        self.path("trusting")
    }

    /// A client directory with the right CA and a client certificate.
    pub fn client_cert_dir(&self) -> PathBuf {
        self.path("with-cert")
    }

    /// A client directory with the right CA and a client certificate from
    /// another CA.
    pub fn stranger_cert_dir(&self) -> PathBuf {
        self.path("with-stranger-cert")
    }

    /// A client directory that trusts another CA.
    pub fn wrong_ca_dir(&self) -> PathBuf {
        self.path("wrong-ca")
    }

    /// A directory with the right `keys.psk` (identity [`PSK_IDENTITY`]).
    pub fn psk_dir(&self) -> PathBuf {
        self.path("psk")
    }

    /// A directory with a `keys.psk` of the same identity, another key.
    pub fn wrong_psk_dir(&self) -> PathBuf {
        self.path("wrong-psk")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a file only its owner can read.
fn private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// The server's log filter: the test's `RUST_LOG`, with the line that says
/// the server is ready (from `zeroblk::cli::serve`) always shown.
fn server_log_filter() -> String {
    match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.is_empty() => format!("{filter},zeroblk::cli::serve=info"),
        _ => "info".to_string(),
    }
}
