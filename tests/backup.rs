//! `zeroblk backup` end to end, through the binary: btrfs snapshots on a
//! loop device pushed to a local directory and to an S3 server (moto),
//! then listed, verified, restored into another btrfs with `btrfs
//! receive`, compared with `diff -r`, and pruned.
//!
//! Needs root, loop devices, btrfs-progs and age (scripts/test.sh
//! installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::btrfs::LoopBtrfs;
use common::{moto, require_tool, run_ok, walk, zeroblk, zeroblk_fails};
use serde_json::Value;

/// A provisioned filesystem's layout on a loop btrfs: `@` with files in
/// it, and `@snapshots`.
struct Source {
    fs: LoopBtrfs,
    cache: tempfile::TempDir,
    env: Vec<(&'static str, String)>,
}

impl Source {
    fn new() -> Source {
        let fs = LoopBtrfs::with_size(512 << 20);
        for subvolume in ["@", "@snapshots"] {
            run_ok(
                Command::new("btrfs")
                    .args(["subvolume", "create"])
                    .arg(fs.mount_point().join(subvolume)),
            );
        }
        Source {
            fs,
            cache: tempfile::tempdir().unwrap(),
            env: Vec::new(),
        }
    }

    fn mount(&self) -> &Path {
        self.fs.mount_point()
    }

    fn data(&self) -> PathBuf {
        self.mount().join("@")
    }

    fn snapshot(&self, name: &str) -> PathBuf {
        self.mount().join("@snapshots").join(name)
    }

    fn mount_str(&self) -> &str {
        self.mount().to_str().unwrap()
    }

    /// Runs `zeroblk ARGS`; returns stdout.
    fn zeroblk(&self, args: &[&str]) -> String {
        zeroblk("memory://", self.cache.path(), &self.env, args)
    }

    fn zeroblk_fails(&self, args: &[&str]) -> String {
        zeroblk_fails("memory://", self.cache.path(), &self.env, args)
    }

    /// `backup push` of `@` to `url`, with `extra` flags; returns stdout.
    fn push(&self, url: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "backup",
            "push",
            self.mount_str(),
            "--subvolume",
            "@",
            "--to",
            url,
        ];
        args.extend_from_slice(extra);
        self.zeroblk(&args)
    }

    fn list(&self, url: &str) -> Vec<Value> {
        let listed: Value =
            serde_json::from_str(&self.zeroblk(&["backup", "list", url, "--json"])).unwrap();
        listed["snapshots"].as_array().unwrap().clone()
    }
}

/// Writes `count` files of pseudo-random bytes (`seed` picks them) under `dir`.
fn write_files(dir: &Path, prefix: &str, count: usize, size: usize, seed: u64) {
    for i in 0..count {
        let bytes = common::random_bytes(size, seed.wrapping_add(i as u64 * 7919));
        std::fs::write(dir.join(format!("{prefix}{i}")), bytes).unwrap();
    }
}

/// `diff -r`: the two trees hold the same files with the same bytes.
fn assert_same_tree(a: &Path, b: &Path) {
    run_ok(Command::new("diff").arg("-r").arg(a).arg(b));
}

fn names(listed: &[Value]) -> Vec<String> {
    listed
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

fn is_read_only(path: &Path) -> bool {
    let out = run_ok(
        Command::new("btrfs")
            .args(["property", "get", "-ts"])
            .arg(path)
            .arg("ro"),
    );
    out.trim() == "ro=true"
}

#[test]
fn a_full_and_an_incremental_push_restore_the_same_tree() {
    let source = Source::new();
    let store = tempfile::tempdir().unwrap();
    let url = file_url(store.path());
    std::fs::create_dir(source.data().join("docs")).unwrap();
    write_files(&source.data().join("docs"), "f", 8, 256 << 10, 1);

    let first = source.push(&url, &[]);
    assert!(first.contains("a full stream"), "{first}");
    assert!(first.contains("no backup of this subvolume yet"), "{first}");

    // Change files: one new, one rewritten, one deleted.
    write_files(&source.data(), "new", 1, 300 << 10, 2);
    write_files(&source.data().join("docs"), "f", 1, 256 << 10, 3);
    std::fs::remove_file(source.data().join("docs/f7")).unwrap();
    let second = source.push(&url, &[]);

    let listed = source.list(&url);
    let [full, incremental] = listed.as_slice() else {
        panic!("two snapshots expected: {listed:?}")
    };
    assert_eq!(full["parent"], Value::Null);
    assert_eq!(incremental["parent"], full["name"]);
    assert!(
        second.contains(&format!(
            "incremental against {}",
            full["name"].as_str().unwrap()
        )),
        "{second}"
    );
    let (full_stream, inc_stream) = (
        full["stream_bytes"].as_u64().unwrap(),
        incremental["stream_bytes"].as_u64().unwrap(),
    );
    assert!(
        inc_stream < full_stream / 2,
        "the incremental sends what changed: {inc_stream} of {full_stream}"
    );

    // Only the parent stays here; the chain restores from the store alone.
    let first_name = full["name"].as_str().unwrap();
    let second_name = incremental["name"].as_str().unwrap();
    source.zeroblk(&["snapshot", "delete", source.mount_str(), first_name]);
    let target = LoopBtrfs::new();
    let into = target.mount_point().join("restored");
    let restored = source.zeroblk(&[
        "backup",
        "restore",
        &url,
        "--snapshot",
        second_name,
        "--to",
        into.to_str().unwrap(),
    ]);
    assert!(restored.contains(second_name), "{restored}");
    assert_same_tree(&source.snapshot(second_name), &into.join(second_name));
    assert!(is_read_only(&into.join(second_name)));
    // Only the snapshot asked for is left there.
    let left: Vec<_> = std::fs::read_dir(&into)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [second_name], "{left:?}");
    target.unmount();
    run_ok(
        Command::new("btrfs")
            .args(["check", "--readonly"])
            .arg(target.device()),
    );

    source.zeroblk(&["backup", "verify", &url]);
}

#[test]
fn a_dry_run_says_what_it_would_send_and_touches_nothing() {
    let source = Source::new();
    let store = tempfile::tempdir().unwrap();
    let url = file_url(store.path());
    write_files(&source.data(), "f", 4, 1 << 20, 4);
    run_ok(
        Command::new("btrfs")
            .args(["subvolume", "snapshot", "-r"])
            .arg(source.data())
            .arg(source.snapshot("@.2026-12-01T000000Z")),
    );
    let said = source.push(&url, &["--snapshot", "newest", "--dry-run"]);
    assert!(said.contains("would push @.2026-12-01T000000Z"), "{said}");
    assert!(said.contains("a full stream"), "{said}");
    assert!(
        said.contains("about 4."),
        "the estimate counts the 4 MiB written: {said}"
    );
    assert_eq!(
        std::fs::read_dir(store.path()).unwrap().count(),
        0,
        "nothing written"
    );
    let snapshots = std::fs::read_dir(source.mount().join("@snapshots"))
        .unwrap()
        .count();
    assert_eq!(snapshots, 1, "no snapshot taken");
}

#[test]
fn encrypted_backups_need_the_identity_and_reveal_nothing_without_it() {
    require_tool("age-keygen", "age");
    let source = Source::new();
    let store = tempfile::tempdir().unwrap();
    let url = file_url(store.path());
    let keys = tempfile::tempdir().unwrap();
    let identity = keys.path().join("identity");
    let other = keys.path().join("other");
    run_ok(Command::new("age-keygen").arg("-o").arg(&identity));
    run_ok(Command::new("age-keygen").arg("-o").arg(&other));
    let recipient = run_ok(Command::new("age-keygen").arg("-y").arg(&identity));
    let marker = "zeroblk-plaintext-marker-".repeat(4000);
    std::fs::write(source.data().join("secret"), &marker).unwrap();

    let pushed = source.push(&url, &["--age-recipient", recipient.trim()]);
    assert!(pushed.contains("encrypted"), "{pushed}");
    for object in walk(store.path()) {
        let bytes = std::fs::read(&object).unwrap();
        assert!(
            !bytes.windows(25).any(|w| w == &marker.as_bytes()[..25]),
            "{} holds plaintext",
            object.display()
        );
    }
    let name = names(&source.list(&url)).remove(0);

    let said = source.zeroblk_fails(&["backup", "verify", &url]);
    assert!(said.contains("--age-identity"), "{said}");
    let target = LoopBtrfs::new();
    let into = target.mount_point().join("r");
    let into = into.to_str().unwrap();
    let said =
        source.zeroblk_fails(&["backup", "restore", &url, "--snapshot", &name, "--to", into]);
    assert!(said.contains("--age-identity"), "{said}");
    let wrong = other.to_str().unwrap();
    let said = source.zeroblk_fails(&[
        "backup",
        "restore",
        &url,
        "--snapshot",
        &name,
        "--to",
        into,
        "--age-identity",
        wrong,
    ]);
    assert!(
        said.lines().count() <= 2 && said.contains("identity"),
        "one clear line: {said}"
    );
    let said = source.zeroblk_fails(&["backup", "verify", &url, "--age-identity", wrong]);
    assert!(said.contains("identity"), "{said}");

    let right = identity.to_str().unwrap();
    source.zeroblk(&["backup", "verify", &url, "--age-identity", right]);
    source.zeroblk(&[
        "backup",
        "restore",
        &url,
        "--snapshot",
        &name,
        "--to",
        into,
        "--age-identity",
        right,
    ]);
    assert_same_tree(&source.snapshot(&name), &Path::new(into).join(&name));

    // The chain is encrypted: its next snapshot is never stored in the clear.
    let said = source.zeroblk_fails(&["backup", "push", source.mount_str(), "--to", &url]);
    assert!(said.contains("--age-recipient"), "{said}");
}

#[test]
fn verify_names_a_flipped_byte_and_a_missing_chunk() {
    let source = Source::new();
    let store = tempfile::tempdir().unwrap();
    let url = file_url(store.path());
    write_files(&source.data(), "f", 6, 512 << 10, 5);
    source.push(&url, &["--chunk-size", "1M"]);
    let chunks: Vec<PathBuf> = walk(&store.path().join("data"));
    assert!(chunks.len() >= 3, "{chunks:?}");
    let flipped = &chunks[1];
    let mut bytes = std::fs::read(flipped).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(flipped, bytes).unwrap();
    std::fs::remove_file(&chunks[2]).unwrap();

    let out = verify(&url);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    let key = |path: &Path| {
        path.strip_prefix(store.path())
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    };
    assert!(
        stdout.contains(&format!("bad {}", key(flipped))),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("bad {}: it is missing", key(&chunks[2]))),
        "{stdout}"
    );
}

#[test]
fn prune_keeps_what_a_kept_snapshot_needs_and_drops_old_chains_whole() {
    let source = Source::new();
    let store = tempfile::tempdir().unwrap();
    let url = file_url(store.path());
    // Five days of daily snapshots, pushed as they would have been.
    let days = [
        "2026-12-01",
        "2026-12-02",
        "2026-12-03",
        "2026-12-04",
        "2026-12-05",
    ];
    for (i, day) in days.iter().enumerate() {
        write_files(
            &source.data(),
            &format!("d{i}-"),
            2,
            64 << 10,
            10 + i as u64,
        );
        let name = format!("@.{day}T000000Z");
        run_ok(
            Command::new("btrfs")
                .args(["subvolume", "snapshot", "-r"])
                .arg(source.data())
                .arg(source.snapshot(&name)),
        );
        // A new chain every 3 snapshots: 12-01..03, then 12-04..05.
        source.push(&url, &["--snapshot", &name, "--full-every", "3"]);
    }
    let listed = source.list(&url);
    assert_eq!(listed.len(), 5);
    assert_eq!(
        listed[3]["parent"],
        Value::Null,
        "a new chain at the fourth: {listed:?}"
    );

    // Keep two days: 12-05 and 12-04 (the current chain). 12-01..03 go whole.
    let dry = source.zeroblk(&["backup", "prune", &url, "--keep-daily", "2", "--dry-run"]);
    assert!(dry.contains("would delete @.2026-12-01T000000Z"), "{dry}");
    assert_eq!(source.list(&url).len(), 5, "a dry run deletes nothing");
    source.zeroblk(&["backup", "prune", &url, "--keep-daily", "2"]);
    assert_eq!(
        names(&source.list(&url)),
        ["@.2026-12-04T000000Z", "@.2026-12-05T000000Z"]
    );
    let old_chain = store
        .path()
        .join("data")
        .join(source.mount().file_name().unwrap())
        .join("@/@.2026-12-01T000000Z");
    assert_eq!(
        walk(&old_chain),
        Vec::<PathBuf>::new(),
        "the old chain's chunks are gone"
    );
    assert!(!walk(&store.path().join("data")).is_empty());

    // Keeping only the newest day still keeps its parent.
    let kept = source.zeroblk(&["backup", "prune", &url, "--keep-daily", "1"]);
    assert!(kept.contains("keep   @.2026-12-04T000000Z"), "{kept}");
    let target = LoopBtrfs::new();
    let into = target.mount_point().join("r");
    source.zeroblk(&[
        "backup",
        "restore",
        &url,
        "--snapshot",
        "@.2026-12-05T000000Z",
        "--to",
        into.to_str().unwrap(),
    ]);
    assert_same_tree(
        &source.snapshot("@.2026-12-05T000000Z"),
        &into.join("@.2026-12-05T000000Z"),
    );
}

#[test]
fn the_next_pushes_parent_is_kept_on_the_source() {
    let source = Source::new();
    let store = tempfile::tempdir().unwrap();
    let url = file_url(store.path());
    write_files(&source.data(), "f", 2, 64 << 10, 6);
    source.push(&url, &[]);
    let parent = names(&source.list(&url)).remove(0);
    let pruned = source.zeroblk(&[
        "snapshot",
        "prune",
        source.mount_str(),
        "--keep-hourly",
        "1",
        "--dry-run",
    ]);
    assert!(pruned.contains(&parent), "{pruned}");
    let said = source.zeroblk_fails(&["snapshot", "delete", source.mount_str(), &parent]);
    assert!(said.contains("--force"), "{said}");
    assert!(source.snapshot(&parent).exists());
}

#[test]
fn a_destination_that_holds_other_things_is_refused() {
    let source = Source::new();
    let store = tempfile::tempdir().unwrap();
    std::fs::create_dir(store.path().join("volumes")).unwrap();
    std::fs::write(store.path().join("volumes/x"), b"x").unwrap();
    let url = file_url(store.path());
    let said = source.zeroblk_fails(&["backup", "push", source.mount_str(), "--to", &url]);
    assert!(said.contains("not zeroblk backups"), "{said}");
    let empty = tempfile::tempdir().unwrap();
    let said = source.zeroblk_fails(&["backup", "list", &file_url(empty.path())]);
    assert!(said.contains("holds no zeroblk backups"), "{said}");
}

#[test]
fn a_push_to_s3_uses_the_storage_class_and_restores() {
    let server = moto();
    let bucket = server.new_bucket();
    let mut source = Source::new();
    source.env = server.env();
    let url = format!("s3://{bucket}/backups");
    write_files(&source.data(), "f", 3, 300 << 10, 7);
    source.push(&url, &["--storage-class", "STANDARD_IA"]);
    write_files(&source.data(), "g", 1, 300 << 10, 8);
    source.push(&url, &["--storage-class", "STANDARD_IA"]);
    let listed = source.list(&url);
    assert_eq!(listed.len(), 2);
    let name = listed[1]["name"].as_str().unwrap().to_string();
    let class = storage_class_of_data(server, &bucket);
    assert_eq!(class, "STANDARD_IA");
    source.zeroblk(&["backup", "verify", &url, "--snapshot", &name]);
    let target = LoopBtrfs::new();
    let into = target.mount_point().join("r");
    source.zeroblk(&[
        "backup",
        "restore",
        &url,
        "--snapshot",
        &name,
        "--to",
        into.to_str().unwrap(),
    ]);
    assert_same_tree(&source.snapshot(&name), &into.join(&name));
}

/// The storage class moto reports for the first data object of `bucket`.
fn storage_class_of_data(server: &common::Moto, bucket: &str) -> String {
    let listing = server.get(&format!("/{bucket}?list-type=2&prefix=backups/data/"));
    let class = listing
        .split("<StorageClass>")
        .nth(1)
        .unwrap_or_else(|| panic!("no storage class in {listing}"));
    class.split('<').next().unwrap().to_string()
}

#[test]
fn a_parent_gone_from_the_destination_means_a_full_stream_and_says_so() {
    let source = Source::new();
    let store = tempfile::tempdir().unwrap();
    let url = file_url(store.path());
    write_files(&source.data(), "f", 2, 64 << 10, 9);
    source.push(&url, &[]);
    let first = names(&source.list(&url)).remove(0);
    // Someone deleted the backups, but not the prefix's marker.
    for dir in ["meta", "data"] {
        std::fs::remove_dir_all(store.path().join(dir)).unwrap();
    }
    let said = source.push(&url, &[]);
    assert!(said.contains("a full stream"), "{said}");
    assert!(
        said.contains(&first),
        "names the parent it no longer finds: {said}"
    );
}

#[test]
fn a_writable_snapshot_is_refused_with_the_fix() {
    let source = Source::new();
    let store = tempfile::tempdir().unwrap();
    let url = file_url(store.path());
    let name = "@.2026-12-01T000000Z";
    run_ok(
        Command::new("btrfs")
            .args(["subvolume", "snapshot"])
            .arg(source.data())
            .arg(source.snapshot(name)),
    );
    let said = source.zeroblk_fails(&[
        "backup",
        "push",
        source.mount_str(),
        "--to",
        &url,
        "--snapshot",
        name,
    ]);
    assert!(
        said.contains("read-only") && said.contains("ro true"),
        "{said}"
    );
    assert_eq!(
        walk(store.path()).len(),
        1,
        "only the prefix's marker: {:?}",
        walk(store.path())
    );
}

#[test]
fn a_restore_never_touches_a_subvolume_it_did_not_make() {
    let source = Source::new();
    let store = tempfile::tempdir().unwrap();
    let url = file_url(store.path());
    write_files(&source.data(), "f", 2, 64 << 10, 11);
    source.push(&url, &[]);
    write_files(&source.data(), "g", 1, 64 << 10, 12);
    source.push(&url, &[]);
    let listed = names(&source.list(&url));
    let target = LoopBtrfs::new();
    let into = target.mount_point().join("r");
    std::fs::create_dir(&into).unwrap();
    // Someone's subvolume, named as the chain's full stream.
    run_ok(
        Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(into.join(&listed[0])),
    );
    std::fs::write(into.join(&listed[0]).join("precious"), b"work").unwrap();
    let said = source.zeroblk_fails(&[
        "backup",
        "restore",
        &url,
        "--snapshot",
        &listed[1],
        "--to",
        into.to_str().unwrap(),
    ]);
    assert!(said.contains("exists already"), "{said}");
    assert_eq!(
        std::fs::read(into.join(&listed[0]).join("precious")).unwrap(),
        b"work"
    );
}

#[test]
fn a_damaged_chain_does_not_keep_the_others_from_restoring() {
    let source = Source::new();
    run_ok(
        Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(source.mount().join("@home")),
    );
    let store = tempfile::tempdir().unwrap();
    let url = file_url(store.path());
    write_files(&source.data(), "f", 2, 64 << 10, 13);
    source.push(&url, &[]);
    source.zeroblk(&[
        "backup",
        "push",
        source.mount_str(),
        "--subvolume",
        "@home",
        "--to",
        &url,
    ]);
    let volume = source
        .mount()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let home = walk(&store.path().join("meta").join(&volume).join("@home"));
    let sequence = home.iter().find(|p| p.ends_with("sequence")).unwrap();
    std::fs::write(sequence, b"{\"format\": 1, \"snapshots\": 7}").unwrap();

    let listed = names(&source.list(&url));
    assert_eq!(listed.len(), 1, "{listed:?}");
    let target = LoopBtrfs::new();
    let into = target.mount_point().join("r");
    source.zeroblk(&[
        "backup",
        "restore",
        &url,
        "--snapshot",
        &listed[0],
        "--to",
        into.to_str().unwrap(),
    ]);
    let out = verify(&url);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    let key = sequence
        .strip_prefix(store.path())
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(stdout.contains(&format!("bad {key}")), "{stdout}");
}

#[test]
fn a_plain_record_in_an_encrypted_chain_is_refused() {
    require_tool("age-keygen", "age");
    let source = Source::new();
    let store = tempfile::tempdir().unwrap();
    let url = file_url(store.path());
    let keys = tempfile::tempdir().unwrap();
    let identity = keys.path().join("identity");
    run_ok(Command::new("age-keygen").arg("-o").arg(&identity));
    let recipient = run_ok(Command::new("age-keygen").arg("-y").arg(&identity));
    write_files(&source.data(), "f", 2, 64 << 10, 14);
    source.push(&url, &["--age-recipient", recipient.trim()]);
    let name = names(&source.list(&url)).remove(0);
    // A writer of the bucket marks the record plain.
    let record = walk(&store.path().join("meta"))
        .into_iter()
        .find(|p| p.ends_with(&name))
        .unwrap();
    let text = std::fs::read_to_string(&record)
        .unwrap()
        .replace("\"encrypted\": true", "\"encrypted\": false");
    std::fs::write(&record, text).unwrap();
    let target = LoopBtrfs::new();
    let into = target.mount_point().join("r");
    let said = source.zeroblk_fails(&[
        "backup",
        "restore",
        &url,
        "--snapshot",
        &name,
        "--to",
        into.to_str().unwrap(),
        "--age-identity",
        identity.to_str().unwrap(),
    ]);
    assert!(said.contains("unencrypted"), "{said}");
}

#[test]
fn a_restore_refuses_a_parent_that_btrfs_receive_could_find_elsewhere() {
    let source = Source::new();
    let store = tempfile::tempdir().unwrap();
    let url = file_url(store.path());
    write_files(&source.data(), "f", 2, 64 << 10, 15);
    source.push(&url, &[]);
    write_files(&source.data(), "g", 1, 64 << 10, 16);
    source.push(&url, &[]);
    let listed = names(&source.list(&url));
    let target = LoopBtrfs::new();
    let (elsewhere, into) = (
        target.mount_point().join("elsewhere"),
        target.mount_point().join("r"),
    );
    // A copy of the full stream elsewhere on the filesystem (anyone owning a
    // subvolume could make one, with the UUID from the bucket's records).
    source.zeroblk(&[
        "backup",
        "restore",
        &url,
        "--snapshot",
        &listed[0],
        "--to",
        elsewhere.to_str().unwrap(),
    ]);
    let said = source.zeroblk_fails(&[
        "backup",
        "restore",
        &url,
        "--snapshot",
        &listed[1],
        "--to",
        into.to_str().unwrap(),
    ]);
    assert!(said.contains("carry the received UUID"), "{said}");
    assert!(said.contains(&format!("elsewhere/{}", listed[0])), "{said}");
}

/// `zeroblk backup verify URL`, which may fail: its output.
fn verify(url: &str) -> std::process::Output {
    common::command::output(Command::new(env!("CARGO_BIN_EXE_zeroblk")).args([
        "--store",
        "memory://",
        "backup",
        "verify",
        url,
    ]))
}
