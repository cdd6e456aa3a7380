//! Encrypted volumes through the command line and a real NBD client:
//! nothing of the data reaches the store in the clear, a wrong password
//! reads and writes nothing, `volume rekey` keeps the data, and gc needs
//! the password to read an encrypted volume's map.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use common::{ZeroblkServer, require_tool, run_ok, zeroblk, zeroblk_fails};

const PATTERN: &[u8] = b"zeroblk-known-pattern";

/// A file store and a cache dir in a temporary directory, and the
/// environment every command gets (the password, if any).
struct Setup {
    dir: tempfile::TempDir,
    store_url: String,
    env: Vec<(&'static str, String)>,
}

impl Setup {
    fn new(password: Option<&str>) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store_url = format!("file://{}/store", dir.path().display());
        let env = password
            .map(|p| vec![("ZEROBLK_PASSWORD", p.to_string())])
            .unwrap_or_default();
        Setup {
            dir,
            store_url,
            env,
        }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn zeroblk(&self, args: &[&str]) -> String {
        zeroblk(&self.store_url, &self.cache(), &self.env, args)
    }

    fn fails(&self, env: &[(&'static str, String)], args: &[&str]) -> String {
        zeroblk_fails(&self.store_url, &self.cache(), env, args)
    }

    fn serve(&self) -> ZeroblkServer {
        ZeroblkServer::start(&self.store_url, &self.cache(), &self.env, &[])
    }

    fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// 8 MiB whose every 4 KiB block holds the pattern and its number: no two
/// blocks alike, so nothing deduplicates it away.
fn patterned_image(path: &Path, pass: u32) {
    let mut data = Vec::with_capacity(8 << 20);
    for block in 0..2048 {
        let line = format!("{}-{pass}-{block:08}\n", String::from_utf8_lossy(PATTERN));
        while data.len() < (block + 1) * 4096 {
            data.extend_from_slice(line.as_bytes());
        }
        data.truncate((block + 1) * 4096);
    }
    std::fs::write(path, data).unwrap();
}

/// The files under `dir` that contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if std::fs::read(&path)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            found.push(path);
        }
    }
    found
}

/// Every file under `dir`, with its size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut files = BTreeMap::new();
    if !dir.exists() {
        return files;
    }
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::metadata(&path).unwrap();
        if meta.is_dir() {
            files.extend(snapshot(&path));
        } else {
            files.insert(path, (meta.len(), meta.modified().unwrap()));
        }
    }
    files
}

/// Writes the image to volume `name` over NBD, and stops the server (which
/// commits everything).
fn write_image(setup: &Setup, name: &str, image: &Path) {
    let nbdcopy = require_tool("nbdcopy", "libnbd-bin");
    let server = setup.serve();
    run_ok(Command::new(&nbdcopy).arg(image).arg(server.uri(name)));
    server.stop();
}

/// Reads volume `name` back, from the store (the cache dir wiped first),
/// and checks it is `image`.
fn read_back(setup: &Setup, name: &str, image: &Path) {
    let nbdcopy = require_tool("nbdcopy", "libnbd-bin");
    std::fs::remove_dir_all(setup.cache()).unwrap();
    let server = setup.serve();
    let out = setup.path("read-back.img");
    run_ok(Command::new(&nbdcopy).arg(server.uri(name)).arg(&out));
    server.stop();
    let (got, want) = (std::fs::read(&out).unwrap(), std::fs::read(image).unwrap());
    assert!(
        got[..want.len()] == want[..],
        "volume {name} reads back other bytes"
    );
}

#[test]
fn an_encrypted_volume_stores_nothing_in_the_clear() {
    // The same data, uncompressed, in the clear and encrypted: the first
    // store shows the pattern (so the search can find it), the second not.
    let clear = Setup::new(None);
    let secret = Setup::new(Some("correct horse battery staple"));
    let image = clear.path("image");
    patterned_image(&image, 1);
    for setup in [&clear, &secret] {
        setup.zeroblk(&[
            "volume",
            "create",
            "v",
            "--size",
            "64M",
            "--compression",
            "none",
        ]);
        write_image(setup, "v", &image);
    }
    assert!(
        !files_containing(&clear.store_dir(), PATTERN).is_empty(),
        "the search cannot find the pattern even in the clear"
    );
    let leaked = files_containing(&secret.store_dir(), PATTERN);
    assert!(leaked.is_empty(), "in the clear in the store: {leaked:?}");
    let info = secret.zeroblk(&["volume", "info", "v"]);
    assert!(info.contains("encryption:  xchacha20poly1305"), "{info}");
    let info = clear.zeroblk(&["volume", "info", "v"]);
    assert!(info.contains("encryption:  none"), "{info}");
    read_back(&secret, "v", &image);
}

#[test]
fn a_wrong_or_missing_password_reads_and_writes_nothing() {
    let setup = Setup::new(Some("the right one"));
    setup.zeroblk(&["volume", "create", "v", "--size", "64M", "--encrypt"]);
    let image = setup.path("image");
    patterned_image(&image, 1);
    write_image(&setup, "v", &image);
    std::fs::remove_dir_all(setup.cache()).unwrap();
    let store_before = snapshot(&setup.store_dir());

    let wrong = [("ZEROBLK_PASSWORD", "the wrong one".to_string())];
    for (env, args, expected) in [
        (
            &wrong[..],
            &["serve", "--listen", "127.0.0.1:0", "v"][..],
            "password given does not open",
        ),
        (
            &[][..],
            &["serve", "--listen", "127.0.0.1:0", "v"][..],
            "--password-file",
        ),
        (
            &wrong[..],
            &["volume", "info", "v"][..],
            "password given does not open",
        ),
        (&[][..], &["volume", "verify", "v"][..], "ZEROBLK_PASSWORD"),
        (&[][..], &["gc", "--grace", "0s"][..], "encrypted"),
        (
            &wrong[..],
            &["volume", "rekey", "v"][..],
            "ZEROBLK_NEW_PASSWORD",
        ),
    ] {
        let stderr = setup.fails(env, args);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{args:?} said more than one line: {stderr}"
        );
    }
    assert_eq!(
        snapshot(&setup.store_dir()),
        store_before,
        "the store changed"
    );
    let cached: Vec<_> = snapshot(&setup.cache()).into_keys().collect();
    assert!(
        cached.iter().all(|p| !p.to_string_lossy().contains("/v.")),
        "a volume folder was made: {cached:?}"
    );

    let stderr = setup.fails(&[], &["volume", "create", "w", "--size", "1G", "--encrypt"]);
    assert!(stderr.contains("--encrypt needs a password"), "{stderr}");
    read_back(&setup, "v", &image);
}

#[test]
fn passwords_come_from_private_files_and_the_config_file() {
    let setup = Setup::new(None);
    let file = setup.path("password");
    std::fs::write(&file, "from a file\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let file_arg = file.to_str().unwrap();
    let create = [
        "--password-file",
        file_arg,
        "volume",
        "create",
        "v",
        "--size",
        "64M",
    ];
    let stderr = setup.fails(&[], &create);
    assert!(stderr.contains("chmod 600"), "{stderr}");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    setup.zeroblk(&create);

    // The zerofs.toml shape: [storage] encryption_password.
    let config = setup.path("zeroblk.toml");
    std::fs::write(
        &config,
        "[storage]\nencryption_password = \"from a file\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config_arg = config.to_str().unwrap();
    let stderr = setup.fails(&[], &["--config", config_arg, "volume", "info", "v"]);
    assert!(stderr.contains("chmod 600"), "{stderr}");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let info = setup.zeroblk(&["--config", config_arg, "volume", "info", "v"]);
    assert!(info.contains("xchacha20poly1305"), "{info}");

    let listed = setup.zeroblk(&["volume", "list"]);
    assert!(listed.contains("give its password"), "{listed}");
}

#[test]
fn rekey_changes_the_password_and_keeps_the_data() {
    let mut setup = Setup::new(Some("old password"));
    setup.zeroblk(&["volume", "create", "v", "--size", "64M"]);
    let image = setup.path("image");
    patterned_image(&image, 1);
    write_image(&setup, "v", &image);
    let superblock = setup.store_dir().join("volumes/v/superblock.json");
    let before = std::fs::read(&superblock).unwrap();
    let objects_before = snapshot(&setup.store_dir());

    let new = ("ZEROBLK_NEW_PASSWORD", "new password".to_string());
    let mut env = setup.env.clone();
    env.push(new);
    zeroblk(
        &setup.store_url,
        &setup.cache(),
        &env,
        &["volume", "rekey", "v"],
    );
    assert_ne!(std::fs::read(&superblock).unwrap(), before);
    let mut objects_after = snapshot(&setup.store_dir());
    objects_after.retain(|path, _| path != &superblock);
    let mut unchanged = objects_before;
    unchanged.retain(|path, _| path != &superblock);
    assert_eq!(
        objects_after, unchanged,
        "a rekey rewrote more than the superblock"
    );

    let stderr = setup.fails(&setup.env, &["volume", "info", "v"]);
    assert!(stderr.contains("password given does not open"), "{stderr}");
    setup.env = vec![("ZEROBLK_PASSWORD", "new password".to_string())];
    read_back(&setup, "v", &image);
}

#[test]
fn gc_reads_encrypted_maps_with_the_password_and_keeps_their_data() {
    let setup = Setup::new(Some("gc password"));
    setup.zeroblk(&["volume", "create", "v", "--size", "64M"]);
    let image = setup.path("image");
    patterned_image(&image, 1);
    write_image(&setup, "v", &image);
    // Written over: the first copy's chunks are garbage.
    patterned_image(&image, 2);
    write_image(&setup, "v", &image);
    let report = setup.zeroblk(&["gc", "--grace", "0s", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert!(report["packs_deleted"].as_u64().unwrap() > 0, "{report}");
    setup.zeroblk(&["volume", "verify", "v"]);
    read_back(&setup, "v", &image);
}
