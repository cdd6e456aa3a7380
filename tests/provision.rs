//! Provisioning on a real kernel's btrfs, on the host: a loop device stands
//! in for the attached device (tests/vm/provision.sh runs the whole flow on
//! ublk, with NFS, in the VM). Runs the steps the attach daemon runs
//! (`zeroblk provision-hook`) and the snapshot and quota commands.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{LoopDevice, require_tool, run_ok};

fn zeroblk(args: &[&str]) -> Output {
    common::command::output(
        Command::new(env!("CARGO_BIN_EXE_zeroblk"))
            .args(args)
            .env_remove("ZEROBLK_CONFIG"),
    )
}

fn zeroblk_ok(args: &[&str]) -> String {
    let output = zeroblk(args);
    assert!(
        output.status.success(),
        "zeroblk {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn spec(mount_point: &Path) -> String {
    format!(
        r#"{{"filesystem":"btrfs","compress":"zstd:3","mount_point":"{}"}}"#,
        mount_point.display()
    )
}

fn up(device: &LoopDevice) -> Output {
    up_with(device, &spec(&device.mount_point))
}

fn up_with(device: &LoopDevice, spec: &str) -> Output {
    let device_path = device.path.to_str().unwrap();
    zeroblk(&[
        "provision-hook",
        "up",
        "--device",
        device_path,
        "--label",
        "vol",
        "--spec",
        spec,
    ])
}

fn down(device: &LoopDevice) -> Output {
    let device_path = device.path.to_str().unwrap();
    zeroblk(&[
        "provision-hook",
        "down",
        "--device",
        device_path,
        "--spec",
        &spec(&device.mount_point),
    ])
}

fn mount_options(mount_point: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let target = mount_point.to_str().unwrap();
    mounts
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f[1] == target)
        .map(|f| f[3].to_string())
}

fn provisioned() -> LoopDevice {
    require_tool("mkfs.btrfs", "btrfs-progs");
    let device = LoopDevice::new(1 << 30);
    let output = up(&device);
    assert!(
        output.status.success(),
        "up: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    device
}

#[test]
fn an_empty_device_gets_btrfs_subvolumes_and_mount_options_once() {
    let device = provisioned();
    let mount = &device.mount_point;
    let options = mount_options(mount).expect("mounted");
    for wanted in ["noatime", "compress=zstd:3", "discard=async"] {
        assert!(options.contains(wanted), "{wanted} not in {options}");
    }
    for subvolume in ["@", "@home", "@snapshots"] {
        assert!(
            zeroblk::provision::btrfs::is_subvolume(&mount.join(subvolume)),
            "{subvolume}"
        );
    }
    std::fs::write(mount.join("@home/kept"), b"data").unwrap();

    assert!(down(&device).status.success());
    assert_eq!(mount_options(mount), None, "unmounted");
    let again = up(&device);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        std::fs::read(mount.join("@home/kept")).unwrap(),
        b"data",
        "not formatted again"
    );
    assert!(up(&device).status.success(), "up is idempotent");
}

#[test]
fn btrfs_mount_options_from_the_spec_reach_the_mount() {
    require_tool("mkfs.btrfs", "btrfs-progs");
    let device = LoopDevice::new(1 << 30);
    let spec = format!(
        r#"{{"filesystem":"btrfs","compress":"zstd:3","mount_point":"{}","mount_options":"ssd,commit=120,space_cache=v2,nodiscard,relatime"}}"#,
        device.mount_point.display()
    );
    let output = up_with(&device, &spec);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let options = mount_options(&device.mount_point).expect("mounted");
    let options: Vec<&str> = options.split(',').collect();
    for wanted in [
        "relatime",
        "nosuid",
        "nodev",
        "ssd",
        "commit=120",
        "space_cache=v2",
        "compress=zstd:3",
    ] {
        assert!(options.contains(&wanted), "{wanted} not in {options:?}");
    }
    for replaced in ["noatime", "discard=async"] {
        assert!(!options.contains(&replaced), "{replaced} in {options:?}");
    }
    assert!(down(&device).status.success());

    let refused = spec.replace("nodiscard,relatime", "subvol=@home");
    let stderr = String::from_utf8_lossy(&up_with(&device, &refused).stderr).into_owned();
    assert!(stderr.contains("`subvol=@home` is refused"), "{stderr}");
    assert_eq!(mount_options(&device.mount_point), None, "nothing mounted");
}

#[test]
fn a_device_holding_another_filesystem_is_never_formatted() {
    require_tool("mkfs.ext4", "e2fsprogs");
    let device = LoopDevice::new(64 << 20);
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&device.path),
    );
    let output = up(&device);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("already holds a filesystem (ext4)"),
        "{stderr}"
    );
    let kind = run_ok(
        Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "TYPE"])
            .arg(&device.path),
    );
    assert_eq!(kind.trim(), "ext4");
}

#[test]
fn a_busy_mount_stays_mounted() {
    let device = provisioned();
    let mut holder = Command::new("sleep")
        .arg("30")
        .current_dir(device.mount_point.join("@home"))
        .spawn()
        .unwrap();
    let output = down(&device);
    let _ = holder.kill();
    let _ = holder.wait();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("is busy"), "{stderr}");
    assert!(
        mount_options(&device.mount_point).is_some(),
        "still mounted"
    );
    assert!(down(&device).status.success(), "unmounts once free");
}

#[test]
fn snapshot_rollback_prune_and_quota() {
    let device = provisioned();
    let mount = device.mount_point.to_str().unwrap();
    let home = device.mount_point.join("@home");
    std::fs::write(home.join("file"), b"first").unwrap();

    let taken = zeroblk_ok(&[
        "snapshot",
        "create",
        mount,
        "--subvolume",
        "@home",
        "--name",
        "first",
    ]);
    let taken = Path::new(taken.trim());
    assert_eq!(std::fs::read(taken.join("file")).unwrap(), b"first");
    assert!(
        std::fs::write(taken.join("file"), b"x").is_err(),
        "read-only by default"
    );
    std::fs::write(home.join("file"), b"second").unwrap();
    zeroblk_ok(&["snapshot", "create", mount, "--name", "root", "--writable"]);

    let listed: serde_json::Value =
        serde_json::from_str(&zeroblk_ok(&["snapshot", "list", mount, "--json"])).unwrap();
    let snapshots = listed[mount].as_array().unwrap();
    assert_eq!(snapshots.len(), 2);
    assert_eq!(
        snapshots.iter().filter(|s| s["read_only"] == true).count(),
        1
    );

    let name = taken.file_name().unwrap().to_str().unwrap();
    let said = zeroblk_ok(&["snapshot", "rollback", mount, name]);
    assert_eq!(
        std::fs::read(home.join("file")).unwrap(),
        b"first",
        "rolled back"
    );
    let kept = said.split_whitespace().last().unwrap();
    let kept = device.mount_point.join("@snapshots").join(kept);
    assert_eq!(
        std::fs::read(kept.join("file")).unwrap(),
        b"second",
        "nothing lost"
    );
    std::fs::write(home.join("file"), b"writable again").unwrap();

    // All three were taken this hour: keeping one per hour keeps one per
    // subvolume.
    zeroblk_ok(&[
        "snapshot",
        "prune",
        mount,
        "--keep-hourly",
        "1",
        "--dry-run",
    ]);
    assert_eq!(
        std::fs::read_dir(device.mount_point.join("@snapshots"))
            .unwrap()
            .count(),
        3
    );
    zeroblk_ok(&["snapshot", "prune", mount, "--keep-hourly", "1"]);
    let left: serde_json::Value =
        serde_json::from_str(&zeroblk_ok(&["snapshot", "list", mount, "--json"])).unwrap();
    let left = left[mount].as_array().unwrap();
    let subvolumes: Vec<_> = left
        .iter()
        .map(|s| s["subvolume"].as_str().unwrap())
        .collect();
    assert_eq!(subvolumes, ["@", "@home"], "one per subvolume: {left:?}");

    zeroblk_ok(&["quota", "set", mount, "--subvolume", "@home", "50M"]);
    let quotas: serde_json::Value =
        serde_json::from_str(&zeroblk_ok(&["quota", "show", mount, "--json"])).unwrap();
    let home_quota = quotas
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["subvolume"] == "@home")
        .unwrap();
    assert_eq!(home_quota["limit"], 50 << 20);
    // Random, so that compress=zstd cannot shrink it under the limit.
    let mut big = vec![0u8; 64 << 20];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut big).unwrap();
    let written = std::fs::write(home.join("big"), &big)
        .and_then(|()| std::fs::File::open(home.join("big"))?.sync_all());
    assert!(
        written.is_err(),
        "the quota stops a 64M file in a 50M subvolume"
    );
}

/// Runs `zeroblk` expecting it to fail; its stderr.
fn zeroblk_fails(args: &[&str]) -> String {
    let output = zeroblk(args);
    assert!(!output.status.success(), "zeroblk {args:?} succeeded");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The snapshot a dry-run prune would delete.
fn would_prune(mount: &str) -> Vec<String> {
    zeroblk_ok(&[
        "snapshot",
        "prune",
        mount,
        "--keep-hourly",
        "1",
        "--dry-run",
    ])
    .lines()
    .filter_map(|line| line.strip_prefix("delete ")?.strip_suffix(" (dry run)"))
    .map(str::to_string)
    .collect()
}

#[test]
fn the_next_backups_parent_is_kept_unless_forced() {
    use zeroblk::provision::pushed;

    let device = provisioned();
    let mount_point = &device.mount_point;
    let mount = mount_point.to_str().unwrap();
    let snapshots = mount_point.join("@snapshots");
    for label in ["one", "two"] {
        zeroblk_ok(&[
            "snapshot",
            "create",
            mount,
            "--subvolume",
            "@home",
            "--name",
            label,
        ]);
    }
    let [parent] = would_prune(mount).try_into().expect("one of two pruned");
    let destination = "s3://AKIA:secret@bucket/backups/";
    pushed::record_pushed(mount_point, "@home", destination, &parent).unwrap();

    let said = zeroblk_ok(&["snapshot", "prune", mount, "--keep-hourly", "1"]);
    assert!(
        said.contains(&format!(
            "keep   {parent} (the parent of the next backup push to s3://bucket/backups; --force deletes it)"
        )),
        "{said}"
    );
    assert!(!said.contains("secret"), "{said}");
    assert!(snapshots.join(&parent).exists(), "kept");
    assert!(would_prune(mount).is_empty(), "and the dry run says so too");

    let refused = zeroblk_fails(&["snapshot", "delete", mount, &parent]);
    assert_eq!(refused.trim().lines().count(), 1, "{refused}");
    for wanted in [
        "is the parent of the next backup push to s3://bucket/backups",
        "full stream",
        "--force",
    ] {
        assert!(refused.contains(wanted), "{wanted} not in {refused}");
    }
    assert!(!refused.contains("secret"), "{refused}");
    assert!(snapshots.join(&parent).exists(), "not deleted");

    let deleted = zeroblk_ok(&["snapshot", "delete", mount, &parent, "--force"]);
    assert_eq!(
        deleted.trim(),
        format!(
            "deleted {parent} (the next backup push to s3://bucket/backups sends a full stream)"
        )
    );
    assert!(!snapshots.join(&parent).exists());
    assert_eq!(
        pushed::pushed_parent(mount_point, "@home", destination).unwrap(),
        None,
        "its record goes with it"
    );

    // Prune --force: the newest is kept by the policy, the recorded parent
    // goes.
    zeroblk_ok(&[
        "snapshot",
        "create",
        mount,
        "--subvolume",
        "@home",
        "--name",
        "three",
    ]);
    let [parent] = would_prune(mount).try_into().expect("one of two pruned");
    pushed::record_pushed(mount_point, "@home", destination, &parent).unwrap();
    let said = zeroblk_ok(&["snapshot", "prune", mount, "--keep-hourly", "1", "--force"]);
    assert!(
        said.contains(&format!(
            "delete {parent} (the next backup push to s3://bucket/backups sends a full stream)"
        )),
        "{said}"
    );
    assert!(!snapshots.join(&parent).exists());
    assert!(pushed::parent_for(mount_point, &parent).unwrap().is_empty());
}

/// `btrfs subvolume snapshot [-r] SOURCE DEST`, from the top of `mount`.
fn btrfs_snapshot(mount: &Path, source: &str, dest: &str, read_only: bool) {
    let mut command = Command::new("btrfs");
    command.args(["subvolume", "snapshot"]);
    if read_only {
        command.arg("-r");
    }
    run_ok(command.arg(mount.join(source)).arg(mount.join(dest)));
}

#[test]
fn snapshots_zeroblk_did_not_name_are_listed_with_all_and_deleted_by_path() {
    let device = provisioned();
    let top = &device.mount_point;
    let mount = top.to_str().unwrap();
    let mine = zeroblk_ok(&[
        "snapshot",
        "create",
        mount,
        "--subvolume",
        "@home",
        "--name",
        "mine",
    ]);
    let mine = Path::new(mine.trim())
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    // snapper's layout, a cron script's, and a writable subvolume that is
    // no snapshot.
    std::fs::create_dir_all(top.join("@home/.snapshots/1")).unwrap();
    btrfs_snapshot(top, "@home", "@home/.snapshots/1/snapshot", true);
    btrfs_snapshot(top, "@", "@snapshots/cron 2026-11-22", true);
    btrfs_snapshot(top, "@", "@snapshots/scratch", false);

    let list = |all: bool| -> Vec<serde_json::Value> {
        let mut args = vec!["snapshot", "list", mount, "--json"];
        if all {
            args.push("--all");
        }
        let listed: serde_json::Value = serde_json::from_str(&zeroblk_ok(&args)).unwrap();
        listed[mount].as_array().unwrap().clone()
    };
    let named = list(false);
    assert_eq!(named.len(), 1, "{named:?}");
    assert_eq!(named[0]["name"], mine.as_str());
    assert_eq!(named[0]["foreign"], false);

    let everything = list(true);
    let foreign: Vec<_> = everything.iter().filter(|s| s["foreign"] == true).collect();
    let names: Vec<_> = foreign
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "the writable subvolume is no snapshot: {everything:?}"
    );
    assert!(names.contains(&"@home/.snapshots/1/snapshot"), "{names:?}");
    assert!(names.contains(&"@snapshots/cron 2026-11-22"), "{names:?}");
    let snapper = foreign
        .iter()
        .find(|s| s["name"] == "@home/.snapshots/1/snapshot")
        .unwrap();
    assert_eq!(snapper["subvolume"], "@home");
    assert_eq!(snapper["read_only"], true);
    assert!(snapper["created"].is_string(), "{snapper}");
    let snapper_path = top.join("@home/.snapshots/1/snapshot");
    assert_eq!(snapper["path"], snapper_path.to_str().unwrap());
    let text = zeroblk_ok(&["snapshot", "list", mount, "--all"]);
    assert!(
        text.lines()
            .any(|l| l.contains(snapper_path.to_str().unwrap()) && l.contains("(not zeroblk's)")),
        "{text}"
    );

    let outside = tempfile::tempdir().unwrap();
    for (given, said) in [
        (
            "@snapshots/scratch",
            "is a writable subvolume, not a snapshot",
        ),
        ("@home", "is part of the filesystem's layout"),
        ("@", "is part of the filesystem's layout"),
        (mount, "is part of the filesystem's layout"),
        ("@home/.snapshots/1", "is not a subvolume"),
        ("@snapshots/nothing", "does not exist"),
        (
            outside.path().to_str().unwrap(),
            "is outside the filesystem mounted at",
        ),
    ] {
        let refused = zeroblk_fails(&["snapshot", "delete", mount, given]);
        assert!(refused.contains(said), "{given}: {refused}");
        assert_eq!(refused.trim().lines().count(), 1, "{refused}");
    }
    // One refused: none deleted.
    zeroblk_fails(&[
        "snapshot",
        "delete",
        mount,
        "@snapshots/cron 2026-11-22",
        "@snapshots/scratch",
    ]);
    assert!(top.join("@snapshots/cron 2026-11-22").exists());

    let deleted = zeroblk_ok(&["snapshot", "delete", mount, snapper_path.to_str().unwrap()]);
    assert_eq!(
        deleted.trim(),
        format!("deleted {}", snapper_path.display())
    );
    zeroblk_ok(&["snapshot", "delete", mount, "@snapshots/cron 2026-11-22"]);
    assert!(!snapper_path.exists() && !top.join("@snapshots/cron 2026-11-22").exists());
    let left = list(true);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["name"], mine.as_str());
    assert!(
        top.join("@snapshots/scratch").exists(),
        "the writable one stays"
    );
}

#[test]
fn a_filesystem_zeroblk_did_not_provision_is_not_touched() {
    let btrfs = common::btrfs::LoopBtrfs::new();
    let top = btrfs.mount_point();
    run_ok(
        Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(top.join("data")),
    );
    btrfs_snapshot(top, "data", "data.snap", true);
    let mount = top.to_str().unwrap();
    let refused = zeroblk_fails(&["snapshot", "delete", mount, "data.snap"]);
    assert!(
        refused.contains("is not the mount point of a zeroblk-provisioned btrfs"),
        "{refused}"
    );
    assert!(top.join("data.snap").exists());
    let refused = zeroblk_fails(&["snapshot", "list", mount, "--all"]);
    assert!(refused.contains("@snapshots"), "{refused}");
}

/// The red team's race, made deterministic: a user who owns a directory on
/// the way swaps it for a symbolic link between the check and the delete.
/// The delete goes by the checked snapshot's subvolume id, so it deletes
/// that snapshot, wherever it is by then, and never what the path names
/// after the swap; a path through a symbolic link is refused outright.
#[test]
fn a_path_swapped_after_the_check_deletes_only_the_checked_snapshot() {
    use zeroblk::provision::foreign;
    let device = provisioned();
    let top = &device.mount_point;
    std::fs::create_dir_all(top.join("@home/user/d")).unwrap();
    btrfs_snapshot(top, "@home", "@home/user/d/snap", true);
    btrfs_snapshot(top, "@", "@/precious", false);
    std::fs::write(top.join("@/precious/data"), b"root's").unwrap();

    let checked = foreign::resolve(top, Path::new("@home/user/d/snap")).unwrap();
    // The swap: d moves away, and d becomes a link to @, where a writable
    // subvolume of the same name waits.
    std::fs::rename(top.join("@home/user/d"), top.join("@home/user/moved")).unwrap();
    std::os::unix::fs::symlink(top.join("@"), top.join("@home/user/d")).unwrap();
    std::fs::rename(top.join("@/precious"), top.join("@/snap")).unwrap();
    foreign::delete(&checked).unwrap();
    assert_eq!(std::fs::read(top.join("@/snap/data")).unwrap(), b"root's");
    assert!(
        !top.join("@home/user/moved/snap").exists(),
        "the checked snapshot is gone"
    );

    // Through the link, nothing is even checked.
    btrfs_snapshot(top, "@", "@/ro", true);
    let refused = foreign::resolve(top, Path::new("@home/user/d/ro")).unwrap_err();
    assert!(refused.to_string().contains("symbolic link"), "{refused}");
    let absolute = top.join("@home/user/d/ro");
    let refused = foreign::resolve(top, &absolute).unwrap_err();
    assert!(refused.to_string().contains("symbolic link"), "{refused}");
    let outside = foreign::resolve(top, Path::new("../elsewhere")).unwrap_err();
    assert!(outside.to_string().contains("outside"), "{outside}");
}
