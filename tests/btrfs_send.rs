//! Backups' btrfs side on a real kernel's btrfs (loop devices, on the
//! host): what btrfs records of a snapshot, `btrfs send` whole and
//! incremental into `btrfs receive` on another filesystem, the estimate of
//! a send, and what happens when either side fails or is dropped half way.

mod common;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::btrfs::LoopBtrfs;
use zeroblk::provision::ProvisionError;
use zeroblk::provision::btrfs::{create_subvolume, snapshot};
use zeroblk::provision::send::{self, estimate, receive, subvolume_info};

const MIB: u64 = 1 << 20;

/// `len` bytes of random data (compression cannot shrink it).
fn random(len: u64) -> Vec<u8> {
    let mut data = vec![0u8; len as usize];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    data
}

/// Writes `data` at `offset` of `path` and syncs it.
fn write_at(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap();
    file.write_all_at(data, offset).unwrap();
    file.sync_all().unwrap();
}

/// A subvolume `data` on `fs`, holding `files`.
fn subvolume_with(fs: &LoopBtrfs, files: &[(&str, &[u8])]) -> PathBuf {
    create_subvolume(fs.mount_point(), "data").unwrap();
    let data = fs.mount_point().join("data");
    for (name, contents) in files {
        let path = data.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        write_at(&path, 0, contents);
    }
    data
}

/// A read-only snapshot of `source` named `name` at the top of `fs`.
fn read_only_snapshot(fs: &LoopBtrfs, source: &Path, name: &str) -> PathBuf {
    snapshot(source, fs.mount_point(), name, true).unwrap();
    fs.mount_point().join(name)
}

/// What a tree holds: each path's kind, mode and contents (a symlink's
/// target).
fn tree(root: &Path) -> BTreeMap<PathBuf, (String, u32, Vec<u8>)> {
    let mut entries = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let (kind, contents) = if meta.is_dir() {
                pending.push(path.clone());
                ("dir", Vec::new())
            } else if meta.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                ("symlink", target.into_os_string().into_encoded_bytes())
            } else {
                ("file", std::fs::read(&path).unwrap())
            };
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            entries.insert(relative, (kind.to_string(), meta.mode(), contents));
        }
    }
    entries
}

/// Sends `snapshot` (from `parent`) into a receive in `dir`.
fn send_into(snapshot: &Path, parent: Option<&Path>, dir: &Path) {
    let mut stream = send::send(snapshot, parent).unwrap();
    let mut received = receive(dir).unwrap();
    io::copy(&mut stream, &mut received).unwrap();
    received.finish().unwrap();
}

/// A send stream of `snapshot`, whole.
fn stream_of(snapshot: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    send::send(snapshot, None)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

/// The start time of process `pid` (field 22 of /proc/PID/stat), if it
/// runs or is a zombie.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count after it.
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split(' ').nth(19).map(str::to_string)
}

/// Asserts process `pid`, which started at `started`, is gone: reaped,
/// not a zombie. (A process that took its id since started later.)
fn assert_gone(pid: u32, started: &str) {
    assert_ne!(
        start_time(pid).as_deref(),
        Some(started),
        "btrfs {pid} is still there: {:?}",
        std::fs::read_to_string(format!("/proc/{pid}/status"))
    );
}

#[test]
fn a_snapshot_names_its_source_and_a_received_one_its_sender() {
    let fs = LoopBtrfs::new();
    let source = subvolume_with(&fs, &[("file", b"contents")]);
    let snap = read_only_snapshot(&fs, &source, "snap");

    let source_info = subvolume_info(&source).unwrap();
    let snap_info = subvolume_info(&snap).unwrap();
    assert_eq!(snap_info.parent_uuid(), Some(source_info.uuid()));
    assert_eq!(source_info.parent_uuid(), None);
    assert_ne!(snap_info.uuid(), source_info.uuid());
    assert!(snap_info.read_only());
    assert!(!source_info.read_only());
    assert_eq!(snap_info.received_uuid(), None);
    assert!(snap_info.generation() > 0);
    assert_eq!(subvolume_info(&snap).unwrap(), snap_info, "stable");

    let other = LoopBtrfs::new();
    send_into(&snap, None, &other.mount_point().join("restore"));
    let received = subvolume_info(&other.mount_point().join("restore/snap")).unwrap();
    assert_eq!(received.received_uuid(), Some(snap_info.uuid()));
    assert!(received.read_only());

    std::fs::create_dir(source.join("plain")).unwrap();
    for not_a_subvolume in [source.join("plain"), source.join("file")] {
        let error = subvolume_info(&not_a_subvolume).unwrap_err().to_string();
        assert!(
            error.contains("is not the root of a btrfs subvolume"),
            "{error}"
        );
    }
}

#[test]
fn full_and_incremental_sends_reproduce_each_snapshot() {
    let fs = LoopBtrfs::new();
    let big = random(3 * MIB);
    let source = subvolume_with(
        &fs,
        &[
            ("big", &big),
            ("dir/small", b"hello"),
            ("dir/gone", b"deleted later"),
            ("empty", b""),
        ],
    );
    std::os::unix::fs::symlink("dir/small", source.join("link")).unwrap();
    std::fs::set_permissions(
        source.join("dir/small"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let first = read_only_snapshot(&fs, &source, "first");

    write_at(&source.join("big"), MIB, &random(MIB / 2));
    std::fs::remove_file(source.join("dir/gone")).unwrap();
    std::fs::rename(source.join("dir/small"), source.join("moved")).unwrap();
    std::fs::create_dir_all(source.join("new/deeper")).unwrap();
    write_at(&source.join("new/deeper/file"), 0, &random(100_000));
    let second = read_only_snapshot(&fs, &source, "second");

    let other = LoopBtrfs::new();
    let restore = other.mount_point().join("restore");
    send_into(&first, None, &restore);
    let mode = std::fs::metadata(&restore).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "receive makes its directory private");
    send_into(&second, Some(&first), &restore);

    assert_eq!(tree(&restore.join("first")), tree(&first));
    assert_eq!(tree(&restore.join("second")), tree(&second));
    assert_ne!(tree(&first), tree(&second));
    let received_first = subvolume_info(&restore.join("first")).unwrap();
    let received_second = subvolume_info(&restore.join("second")).unwrap();
    assert_eq!(
        received_second.parent_uuid(),
        Some(received_first.uuid()),
        "the incremental was received as a snapshot of its parent"
    );
}

#[test]
fn a_writable_snapshot_is_refused_with_the_fix() {
    let fs = LoopBtrfs::new();
    let source = subvolume_with(&fs, &[("file", b"x")]);
    let read_only = read_only_snapshot(&fs, &source, "ro");
    snapshot(&source, fs.mount_point(), "rw", false).unwrap();
    let writable = fs.mount_point().join("rw");

    let refusals = [
        send::send(&writable, None).err(),
        send::send(&read_only, Some(&writable)).err(),
        estimate(&writable, None).err(),
    ];
    for refused in refusals {
        let refused = refused.expect("a writable snapshot was sent");
        assert!(
            matches!(&refused, ProvisionError::NotReadOnly { path } if path == &writable),
            "{refused}"
        );
        let said = refused.to_string();
        assert_eq!(said.lines().count(), 1, "{said}");
        assert!(said.contains("is not read-only"), "{said}");
        let fix = format!("btrfs property set {} ro true", writable.display());
        assert!(said.contains(&fix), "{said}");
        assert!(said.contains("zeroblk backup push"), "{said}");
    }

    let plain = source.join("plain");
    std::fs::create_dir(&plain).unwrap();
    let refused = send::send(&plain, None)
        .err()
        .expect("a directory was sent");
    assert!(
        refused
            .to_string()
            .contains("not the root of a btrfs subvolume"),
        "{refused}"
    );
}

#[test]
fn an_estimate_counts_the_data_a_send_writes() {
    let fs = LoopBtrfs::new();
    let source = subvolume_with(&fs, &[("big", &random(8 * MIB))]);
    let first = read_only_snapshot(&fs, &source, "first");
    write_at(&source.join("big"), 2 * MIB, &random(MIB));
    let second = read_only_snapshot(&fs, &source, "second");

    let full = estimate(&first, None).unwrap();
    assert!(full.data_bytes() >= 8 * MIB, "{full:?}");
    assert!(full.data_bytes() < 9 * MIB, "{full:?}");
    assert!(
        full.metadata_bytes() > 0 && full.metadata_bytes() < MIB,
        "{full:?}"
    );
    assert_eq!(full.total(), full.data_bytes() + full.metadata_bytes());
    let sent = io::copy(&mut send::send(&first, None).unwrap(), &mut io::sink()).unwrap();
    assert!(
        sent.abs_diff(full.total()) < full.total() / 100,
        "sent {sent}, estimated {full:?}"
    );

    let incremental = estimate(&second, Some(&first)).unwrap();
    assert!(incremental.data_bytes() >= MIB, "{incremental:?}");
    assert!(incremental.data_bytes() < 3 * MIB, "{incremental:?}");
}

#[test]
fn a_send_that_fails_says_why_when_its_stream_ends() {
    let fs = LoopBtrfs::new();
    let source = subvolume_with(&fs, &[("file", b"x")]);
    let snap = read_only_snapshot(&fs, &source, "snap");
    let elsewhere = LoopBtrfs::new();
    let other_source = subvolume_with(&elsewhere, &[("file", b"y")]);
    let foreign_parent = read_only_snapshot(&elsewhere, &other_source, "parent");

    let mut stream = send::send(&snap, Some(&foreign_parent)).unwrap();
    let error = io::copy(&mut stream, &mut io::sink()).unwrap_err();
    let said = error.to_string();
    assert!(
        said.starts_with("btrfs send failed (exit status: 1): ERROR"),
        "{said}"
    );
    assert!(
        matches!(
            error.get_ref().and_then(|e| e.downcast_ref()),
            Some(ProvisionError::ToolFailed { .. })
        ),
        "{error:?}"
    );
    let again = stream.read(&mut [0u8; 16]).unwrap_err();
    assert_eq!(again.to_string(), said, "the failure stays");

    let estimated = estimate(&snap, Some(&foreign_parent)).unwrap_err();
    assert!(
        matches!(estimated, ProvisionError::ToolFailed { .. }),
        "{estimated}"
    );
}

#[test]
fn a_send_or_receive_dropped_half_way_leaves_no_btrfs_behind() {
    let fs = LoopBtrfs::new();
    let source = subvolume_with(&fs, &[("big", &random(8 * MIB))]);
    let snap = read_only_snapshot(&fs, &source, "snap");

    let mut stream = send::send(&snap, None).unwrap();
    let mut start = vec![0u8; 64 << 10];
    stream.read_exact(&mut start).unwrap();
    let pid = stream.id();
    let started = start_time(pid).expect("btrfs send runs, blocked on its pipe");
    drop(stream);
    assert_gone(pid, &started);

    let whole = stream_of(&snap);
    let other = LoopBtrfs::new();
    let mut received = receive(&other.mount_point().join("restore")).unwrap();
    received.write_all(&whole[..whole.len() / 2]).unwrap();
    let pid = received.id();
    let started = start_time(pid).expect("btrfs receive runs, waiting for more");
    drop(received);
    assert_gone(pid, &started);
}

#[test]
fn a_receive_of_a_damaged_stream_fails_with_btrfs_reason() {
    let fs = LoopBtrfs::new();
    let source = subvolume_with(&fs, &[("big", &random(2 * MIB))]);
    let snap = read_only_snapshot(&fs, &source, "snap");
    let whole = stream_of(&snap);
    let other = LoopBtrfs::new();

    // Cut in the middle of a command, and cut before the end marker (the
    // last 10 bytes: a command header with no payload).
    let cuts = [whole.len() / 2, whole.len() - 10];
    for (i, cut) in cuts.into_iter().enumerate() {
        let mut received = receive(&other.mount_point().join(format!("cut-{i}"))).unwrap();
        received.write_all(&whole[..cut]).unwrap();
        let error = received.finish().unwrap_err();
        assert!(
            matches!(error, ProvisionError::ToolFailed { .. }),
            "{error}"
        );
        let said = error.to_string();
        assert!(
            said.starts_with("btrfs receive failed (exit status: 1): ERROR"),
            "{said}"
        );
    }

    // Not a stream at all: btrfs stops reading, and the write or the
    // finish says why.
    let mut received = receive(&other.mount_point().join("garbage")).unwrap();
    let garbage = vec![b'x'; 4 * MIB as usize];
    let failed = match received.write_all(&garbage) {
        Err(error) => error.to_string(),
        Ok(()) => received.finish().unwrap_err().to_string(),
    };
    assert!(failed.starts_with("btrfs receive failed"), "{failed}");
    assert!(failed.contains("ERROR"), "{failed}");
}

#[test]
fn a_receive_off_btrfs_is_refused_and_makes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let on_btrfs = nix::sys::statfs::statfs(dir.path())
        .unwrap()
        .filesystem_type()
        == nix::sys::statfs::BTRFS_SUPER_MAGIC;
    assert!(
        !on_btrfs,
        "this test needs a temporary directory off btrfs: set TMPDIR to one"
    );
    let target = dir.path().join("restore/deeper");
    let Err(refused) = receive(&target) else {
        panic!("received into {}", target.display());
    };
    let said = refused.to_string();
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(said.contains("is not on a btrfs filesystem"), "{said}");
    assert!(!dir.path().join("restore").exists());
}
