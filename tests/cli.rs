//! The `zeroblk volume` commands as a user runs them, against a local
//! directory and a real S3 server.

mod common;

use std::process::{Command, Output};

use common::moto;

struct Zeroblk {
    store: String,
    cache: tempfile::TempDir,
    env: Vec<(&'static str, String)>,
}

impl Zeroblk {
    fn file() -> (Zeroblk, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let zeroblk = Zeroblk {
            store: format!("file://{}", dir.path().display()),
            cache: tempfile::tempdir().unwrap(),
            env: Vec::new(),
        };
        (zeroblk, dir)
    }

    fn s3() -> Zeroblk {
        let server = moto();
        Zeroblk {
            store: format!("s3://{}/vols", server.new_bucket()),
            cache: tempfile::tempdir().unwrap(),
            env: server.env(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_zeroblk"));
        command
            .args(["--store", &self.store, "--cache-dir"])
            .arg(self.cache.path())
            .args(args)
            .env_remove("ZEROBLK_CONFIG");
        for (key, value) in &self.env {
            command.env(key, value);
        }
        common::command::output(&mut command)
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "zeroblk {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs a command that must fail with one line naming the problem.
    fn fails(&self, args: &[&str], expected: &str) {
        let output = self.run(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "zeroblk {args:?} succeeded");
        assert!(stderr.contains(expected), "zeroblk {args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

fn volume_lifecycle(zb: &Zeroblk) {
    let created = zb.ok(&[
        "volume",
        "create",
        "data",
        "--size",
        "100G",
        "--chunk-size",
        "4M",
    ]);
    assert!(created.contains("created volume data"), "{created}");
    zb.ok(&[
        "volume",
        "create",
        "logs",
        "--size",
        "1G",
        "--compression",
        "none",
    ]);
    zb.fails(
        &["volume", "create", "data", "--size", "1G"],
        "already exists",
    );

    let listed = zb.ok(&["volume", "list"]);
    assert!(
        listed.contains("data") && listed.contains("logs"),
        "{listed}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&zb.ok(&["volume", "list", "--json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);

    let info: serde_json::Value =
        serde_json::from_str(&zb.ok(&["volume", "info", "data", "--json"])).unwrap();
    assert_eq!(info["size"], 100u64 << 30);
    assert_eq!(info["chunk_size"], 4u64 << 20);
    assert_eq!(info["generation"], 0);
    assert!(info["requests"]["gets"].as_u64().unwrap() <= 8);

    zb.ok(&["volume", "resize", "data", "--size", "200G"]);
    let info: serde_json::Value =
        serde_json::from_str(&zb.ok(&["volume", "info", "data", "--json"])).unwrap();
    assert_eq!(info["size"], 200u64 << 30);
    zb.fails(
        &["volume", "resize", "data", "--size", "1G"],
        "can only grow",
    );

    zb.ok(&["volume", "delete", "logs"]);
    let listed = zb.ok(&["volume", "list"]);
    assert!(!listed.contains("logs"), "{listed}");
    zb.fails(&["volume", "info", "logs"], "does not exist");
    zb.fails(&["volume", "delete", "logs"], "does not exist");
}

fn snapshot_lifecycle(zb: &Zeroblk) {
    zb.ok(&["volume", "create", "vol", "--size", "2T"]);
    let started = std::time::Instant::now();
    let named = zb.ok(&["volume", "snapshot", "create", "vol", "--name", "base"]);
    assert_eq!(named.trim(), "base");
    let timed = zb.ok(&["volume", "snapshot", "create", "vol"]);
    assert!(timed.trim().ends_with('Z'), "named after the time: {timed}");
    zb.fails(
        &["volume", "snapshot", "create", "vol", "--name", "base"],
        "already has a snapshot `base`",
    );
    let listed: serde_json::Value =
        serde_json::from_str(&zb.ok(&["volume", "snapshot", "list", "vol", "--json"])).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["base", timed.trim()]);
    assert!(listed[0]["generation"].is_u64() && listed[0]["exclusive_bytes"].is_u64());
    let table = zb.ok(&["volume", "snapshot", "list", "vol"]);
    assert!(
        table.contains("ONLY HERE") && table.contains("base"),
        "{table}"
    );

    let info: serde_json::Value =
        serde_json::from_str(&zb.ok(&["volume", "info", "vol@base", "--json"])).unwrap();
    assert_eq!(
        (info["snapshot"].as_str(), info["size"].as_u64()),
        (Some("base"), Some(2 << 40))
    );
    zb.ok(&["volume", "verify", "vol@base"]);

    let cloned = zb.ok(&["volume", "clone", "vol@base", "copy"]);
    assert!(cloned.contains("no data copied"), "{cloned}");
    zb.ok(&["volume", "clone", "vol", "copy2"]);
    zb.fails(&["volume", "clone", "vol@base", "copy"], "already exists");
    zb.fails(
        &["volume", "clone", "vol@nope", "other"],
        "has no snapshot `nope`",
    );
    zb.fails(&["volume", "info", "vol@nope"], "has no snapshot `nope`");
    zb.fails(
        &["volume", "resize", "vol@base", "--size", "3T"],
        "read-only",
    );
    zb.fails(
        &["volume", "snapshot", "delete", "vol", "nope"],
        "has no snapshot",
    );
    eprintln!(
        "snapshots and clones of a 2 TiB volume: {:?}",
        started.elapsed()
    );

    let rolled = zb.ok(&["volume", "rollback", "vol", "base"]);
    assert!(rolled.contains("pre-rollback-"), "{rolled}");
    zb.fails(
        &["volume", "rollback", "vol", "nope"],
        "has no snapshot `nope`",
    );

    let dry = zb.ok(&[
        "volume",
        "snapshot",
        "prune",
        "vol",
        "--keep-daily",
        "1",
        "--dry-run",
    ]);
    assert_eq!(
        dry.matches("would delete").count(),
        2,
        "keeps the newest of today: {dry}"
    );
    zb.fails(&["volume", "snapshot", "prune", "vol"], "keeps nothing");
    zb.ok(&["volume", "snapshot", "prune", "vol", "--keep-daily", "1"]);
    let left: serde_json::Value =
        serde_json::from_str(&zb.ok(&["volume", "snapshot", "list", "vol", "--json"])).unwrap();
    assert_eq!(left.as_array().unwrap().len(), 1);
    zb.ok(&["volume", "delete", "vol"]);
    zb.ok(&["gc", "--grace", "0s"]);
    zb.ok(&["volume", "verify", "copy"]);
}

#[test]
fn volume_commands_on_a_local_directory() {
    let (zb, _dir) = Zeroblk::file();
    volume_lifecycle(&zb);
    snapshot_lifecycle(&zb);
}

#[test]
fn volume_commands_on_s3() {
    let zb = Zeroblk::s3();
    volume_lifecycle(&zb);
    snapshot_lifecycle(&zb);
}

#[test]
fn bad_input_gets_one_clear_line() {
    let (zb, _dir) = Zeroblk::file();
    zb.fails(&["volume", "create", "x", "--size", "ten"], "is not a size");
    zb.fails(
        &["volume", "create", "x", "--size", "1000"],
        "multiple of 4K",
    );
    zb.fails(
        &[
            "volume",
            "create",
            "x",
            "--size",
            "1G",
            "--chunk-size",
            "3M",
        ],
        "power of two",
    );
    zb.fails(
        &["volume", "create", "a/b", "--size", "1G"],
        "not a volume name",
    );
    zb.fails(
        &[
            "volume",
            "create",
            "x",
            "--size",
            "1G",
            "--compression",
            "lz4",
        ],
        "not a compression",
    );
    zb.fails(
        &["volume", "info", "missing"],
        "zeroblk volume create missing",
    );
    zb.fails(
        &["serve", "--readahead", "1000", "x"],
        "--readahead 1000 is too many chunks",
    );
    zb.ok(&["volume", "create", "x", "--size", "1G"]);
    let absurd = [
        (
            "--memory-cache",
            "16000P",
            "is more than this machine's memory",
        ),
        ("--cache-size", "16000P", "is more than any disk holds"),
        (
            "--max-dirty",
            "16000P",
            "lets the write-back log take more than any disk holds",
        ),
        ("--commit-interval", "500000000y", "is longer than a day"),
    ];
    for (flag, value, expected) in absurd {
        zb.fails(
            &["serve", "--listen", "127.0.0.1:1", flag, value, "x"],
            expected,
        );
    }
    let shared_cache = Zeroblk {
        store: zb.store.clone(),
        cache: tempfile::tempdir().unwrap(),
        env: zb.env.clone(),
    };
    let everyone = std::os::unix::fs::PermissionsExt::from_mode(0o777);
    std::fs::set_permissions(shared_cache.cache.path(), everyone).unwrap();
    shared_cache.fails(
        &["serve", "--listen", "127.0.0.1:1", "x"],
        "or writable by others, who could redirect the volume's log",
    );
    let huge = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(huge.path(), "[cache]\nmemory_size_gb = 1e300\n").unwrap();
    let config = huge.path().to_str().unwrap();
    zb.fails(
        &["--config", config, "serve", "--listen", "127.0.0.1:1", "x"],
        "[cache] memory_size_gb more than 16E is more than this machine's memory",
    );
    let bad_url = Zeroblk {
        store: "ftp://x".into(),
        cache: tempfile::tempdir().unwrap(),
        env: Vec::new(),
    };
    bad_url.fails(&["volume", "list"], "not a store URL");
    let bad_config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad_config.path(), "[storage]\nurll = 1\n").unwrap();
    zb.fails(
        &[
            "--config",
            bad_config.path().to_str().unwrap(),
            "volume",
            "list",
        ],
        "urll",
    );
}

#[test]
fn a_reader_that_went_away_ends_the_output_quietly() {
    let (zb, _dir) = Zeroblk::file();
    zb.ok(&["volume", "create", "one", "--size", "16M"]);
    // `zeroblk volume list | grep -q one`: the pipe closes before the
    // output is written.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_zeroblk"))
        .args(["--store", &zb.store, "--cache-dir"])
        .arg(zb.cache.path())
        .args(["volume", "list"])
        .env_remove("ZEROBLK_CONFIG")
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}: {stderr}",
        output.status
    );
    assert!(stderr.is_empty(), "nothing on stderr: {stderr}");
}

#[test]
fn the_config_file_sets_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("zeroblk.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nurl = \"file://{}/store\"\n[cache]\ndir = \"{}/cache\"\n",
            dir.path().display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        common::command::output(
            Command::new(env!("CARGO_BIN_EXE_zeroblk"))
                .arg("--config")
                .arg(&config)
                .args(args)
                .env_remove("ZEROBLK_STORE")
                .env_remove("ZEROBLK_CACHE_DIR"),
        )
    };
    assert!(
        run(&["volume", "create", "v", "--size", "1G"])
            .status
            .success()
    );
    assert!(dir.path().join("store/volumes/v/superblock.json").exists());
    let listed = run(&["volume", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains('v'));
}

/// The production configuration of ZeroFS's guide to btrfs on a network
/// block device, word for word.
const ZEROFS_GUIDE: &str = r#"[storage]
url = "s3://production-bucket/zerofs"
encryption_password = "secure-password"

[cache]
dir = "/var/cache/zerofs"
disk_size_gb = 100.0

[servers.nbd]
addresses = ["0.0.0.0:10809"]
"#;

/// A key in the bucket that object_store refuses as a path (`..`, an
/// empty segment, a control character), put there by another tool, made
/// `volume list` and gc fail with object_store's words repeated four
/// times, after retries. Now it is one line naming the key, escaped, and
/// the fix.
#[test]
fn a_key_no_path_can_hold_is_named_with_the_fix() {
    let server = moto();
    for (key, shown) in [
        ("vols/volumes/%2E%2E/y", "vols/volumes/../"),
        (
            "vols/volumes/a%1B%5B2Jb/superblock",
            "vols/volumes/a\\u{1b}[2Jb/",
        ),
    ] {
        let bucket = server.new_bucket();
        let zeroblk = Zeroblk {
            store: format!("s3://{bucket}/vols"),
            cache: tempfile::tempdir().unwrap(),
            env: server.env(),
        };
        zeroblk.ok(&["volume", "create", "good", "--size", "16M"]);
        server.put_empty(&format!("/{bucket}/{key}"));
        for args in [&["volume", "list"][..], &["gc", "--dry-run"]] {
            let output = zeroblk.run(args);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{args:?}");
            assert!(
                stderr.contains("cannot list past")
                    && stderr.contains(shown)
                    && stderr.contains("remove that object"),
                "{args:?}: {stderr}"
            );
            assert!(
                !stderr.contains('\u{1b}'),
                "an escape sequence reached the terminal"
            );
        }
    }
}

/// The guide's configuration, as it is, with `-c`: its bucket (on moto)
/// gets an encrypted volume under its password; and the guide's one
/// command, `zerofs nbd export -c zerofs.toml --name production ...`, is
/// zeroblk's `attach` with the same flags.
#[test]
fn the_zerofs_guides_configuration_loads_as_it_is() {
    use std::os::unix::fs::PermissionsExt;
    let server = moto();
    server.create_bucket("production-bucket");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("zerofs.toml");
    std::fs::write(&config, ZEROFS_GUIDE).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = config.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_zeroblk"));
        command
            .args(["-c", config])
            .args(args)
            .env_remove("ZEROBLK_CONFIG")
            .env_remove("ZEROBLK_STORE")
            .env_remove("ZEROBLK_CACHE_DIR")
            .env_remove("ZEROBLK_PASSWORD")
            .envs(server.env());
        common::command::output(&mut command)
    };
    let stdout = |args: &[&str]| {
        let output = run(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "zeroblk {args:?}: {stderr}");
        String::from_utf8(output.stdout).unwrap()
    };
    let created = stdout(&["volume", "create", "production", "--size", "500G"]);
    assert!(created.contains("encrypted"), "{created}");
    assert!(
        created.contains("s3://production-bucket/zerofs"),
        "{created}"
    );
    assert!(stdout(&["volume", "list"]).contains("production"));
    let info: serde_json::Value =
        serde_json::from_str(&stdout(&["volume", "info", "production", "--json"])).unwrap();
    assert_eq!(info["size"], 500u64 << 30, "{info}");
    assert!(info["encryption"].is_string(), "{info}");

    let attach = [
        "attach",
        "--name",
        "production",
        "--size",
        "500G",
        "--mount-point",
        "/mnt/production",
        "--nfs-options",
        "rw,sync,no_subtree_check,10.0.0.0/24",
    ];
    let two_names = [&attach[..], &["other"]].concat();
    let refused = String::from_utf8(run(&two_names).stderr).unwrap();
    assert!(
        refused.contains("give it once, as NAME or as --name NAME"),
        "{refused}"
    );
    let no_kernel_support = !std::path::Path::new("/dev/nbd0").exists()
        && !std::path::Path::new("/dev/ublk-control").exists();
    if no_kernel_support {
        // Accepted as far as this host can go: the line that says the
        // kernel lacks ublk and NBD, not one about the flags.
        let same_name = [&attach[..], &["production"]].concat();
        for args in [&attach[..], &same_name[..]] {
            let stderr = String::from_utf8(run(args).stderr).unwrap();
            assert!(stderr.contains("CONFIG_BLK_DEV_UBLK"), "{args:?}: {stderr}");
        }
    }

    let open = std::fs::Permissions::from_mode(0o644);
    std::fs::set_permissions(config, open).unwrap();
    let refused = String::from_utf8(run(&["volume", "list"]).stderr).unwrap();
    assert!(
        refused.contains(config) && refused.contains(&format!("chmod 600 {config}")),
        "{refused}"
    );
}

#[test]
fn a_store_without_a_server_is_named() {
    let (zb, _dir) = Zeroblk::file();
    let port = common::free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_zeroblk"));
    let output = common::command::output(
        command
            .args([
                "--store",
                "s3://bucket",
                "--s3-endpoint",
                &format!("http://127.0.0.1:{port}"),
            ])
            .arg("--cache-dir")
            .arg(zb.cache.path())
            .args(["volume", "list"])
            .env("AWS_ACCESS_KEY_ID", "x")
            .env("AWS_SECRET_ACCESS_KEY", "y"),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("cannot reach the object store"), "{stderr}");
}

/// GCS and Azure take their credentials from the environment: with none,
/// zeroblk fails at once, naming the variables to set for that store (not
/// AWS's). The environment is emptied, so that no credentials of this
/// machine count. (Azure without an account fails as the store is built;
/// GCS, and Azure with an account only, at the first request, when the
/// cloud's metadata service has no credentials to give.)
#[test]
fn gcs_and_azure_without_credentials_name_their_variables() {
    let home = tempfile::tempdir().unwrap();
    let cases = [
        (
            "gs://bucket/zeroblk",
            None,
            "GOOGLE_APPLICATION_CREDENTIALS",
        ),
        ("az://container/zeroblk", None, "AZURE_STORAGE_ACCOUNT_NAME"),
        (
            "az://container/zeroblk",
            Some("account"),
            "AZURE_STORAGE_ACCOUNT_KEY",
        ),
    ];
    for (url, azure_account, variable) in cases {
        let mut command = Command::new(env!("CARGO_BIN_EXE_zeroblk"));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home.path());
        if let Some(account) = azure_account {
            command.env("AZURE_STORAGE_ACCOUNT_NAME", account);
        }
        let output = common::command::output(
            command
                .args(["--store", url, "--cache-dir"])
                .arg(home.path().join("cache"))
                .args(["volume", "list"]),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{url}: {stderr}");
        assert!(
            stderr.contains(&format!("no credentials for the object store {url}"))
                && stderr.contains(variable)
                && !stderr.contains("AWS_")
                && !stderr.contains("panicked"),
            "{url} (account {azure_account:?}): {stderr}"
        );
    }
}

#[test]
fn attach_without_kernel_support_says_what_is_missing() {
    if std::path::Path::new("/dev/nbd0").exists()
        || std::path::Path::new("/dev/ublk-control").exists()
    {
        eprintln!("this kernel has nbd or ublk: the VM tests cover attach here");
        return;
    }
    let (zb, _dir) = Zeroblk::file();
    zb.fails(&["attach", "--size", "1G"], "CONFIG_BLK_DEV_UBLK");
    zb.fails(&["attach", "--size", "1G"], "zeroblk serve");
    zb.fails(
        &["attach", "--transport", "nbd", "--size", "1G"],
        "modprobe nbd",
    );
    let listed = zb.ok(&["volume", "list"]);
    assert!(
        !listed.contains("default"),
        "a refused attach creates nothing: {listed}"
    );
    zb.fails(&["detach", "nothing"], "not attached");
}

#[test]
fn the_allocator_accepts_its_options() {
    let output = common::command::output(
        Command::new(env!("CARGO_BIN_EXE_zeroblk"))
            .arg("--version")
            .env("_RJEM_MALLOC_CONF", "stats_print:true"),
    );
    assert!(output.status.success());
    let stats = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stats.contains("Invalid conf"),
        "jemalloc rejects part of src/main.rs's MALLOC_CONF: {stats}"
    );
    for option in [
        "opt.narenas: 1",
        "opt.dirty_decay_ms: 1000",
        "opt.muzzy_decay_ms: 0",
        "opt.thp: \"always\"",
    ] {
        assert!(stats.contains(option), "{option} missing: {stats}");
    }
}

/// Plaintext NBD where other machines can connect is refused, from the
/// flags and from the configuration file, for `serve` and for `attach
/// --nbd-listen`, with one line naming the TLS flags; so are TLS flags
/// that cannot mean anything, and keys others can read.
#[test]
fn plaintext_nbd_on_an_open_address_is_refused() {
    let (zb, _dir) = Zeroblk::file();
    zb.ok(&["volume", "create", "x", "--size", "1G"]);
    let flags = "give --tls-cert/--tls-key or --tls-psk";
    for args in [
        &["serve", "--listen", "0.0.0.0:0", "x"][..],
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "[::]:0",
            "x",
        ][..],
        &["attach", "x", "--nbd-listen", "0.0.0.0:0"][..],
    ] {
        zb.fails(args, flags);
        let stderr = String::from_utf8(zb.run(args).stderr).unwrap();
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[servers.nbd]\naddresses = [\"0.0.0.0:0\"]\n",
    )
    .unwrap();
    let config = config.path().to_str().unwrap();
    zb.fails(&["--config", config, "serve", "x"], flags);

    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, mode: u32| {
        let path = dir.path().join(name);
        std::fs::write(&path, "alice:00112233445566778899aabbccddeeff\n").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .unwrap();
        path.to_str().unwrap().to_string()
    };
    let open_psk = file("open.psk", 0o644);
    zb.fails(
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--tls-psk",
            &open_psk,
            "x",
        ],
        &format!("run `chmod 600 {open_psk}`"),
    );
    let psk = file("keys.psk", 0o600);
    for (args, expected) in [
        (
            &["--tls-client-ca", &psk][..],
            "add --tls-cert FILE --tls-key FILE",
        ),
        (&["--tls-cert", &psk][..], "add --tls-key FILE"),
        (
            &["--tls-psk", &psk, "--tls-client-ca", &psk][..],
            "leave out one of them",
        ),
        (
            &["--tls-psk", &psk, "--insecure-plaintext"][..],
            "leave it out",
        ),
    ] {
        let mut line = vec!["serve", "--listen", "127.0.0.1:0"];
        line.extend_from_slice(args);
        line.push("x");
        zb.fails(&line, expected);
    }
    zb.fails(
        &["attach", "x", "--tls-psk", &psk],
        "add it, or leave them out",
    );
}
