//! Tests on a real Linux kernel: Debian's 6.12 (with ublk_drv and nbd),
//! booted under QEMU by scripts/vm-run.sh. Each test runs one script of
//! tests/vm/ inside the VM, with the zeroblk binary under test.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::crash_model::{check_flushed_writes_kept, check_state_existed, parse_log};

/// How long one VM may run, boot included: several times the slowest
/// script's run, so that only a VM that hangs reaches it.
const VM_DEADLINE: Duration = Duration::from_secs(40 * 60);

/// One VM at a time: each emulates two CPUs on this machine's two cores.
static ONE_VM_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Boots the VM, runs `script` in it and checks it passed.
fn run_in_vm(script: &str) {
    run_in_vm_writing(script, None);
}

/// [`run_in_vm`], with `out` (a host directory) writable in the VM and
/// named to the script by `ZEROBLK_VM_OUT`.
fn run_in_vm_writing(script: &str, out: Option<&Path>) {
    run_in_vm_with(script, out, "");
}

/// [`run_in_vm_writing`], with `env` (`NAME=value ...`) set for the script.
fn run_in_vm_with(script: &str, out: Option<&Path>, env: &str) {
    let _turn = ONE_VM_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    common::require_tool(
        "vng",
        "virtme-ng (pip install virtme-ng; scripts/test.sh installs it)",
    );
    let out_env = out.map_or(String::new(), |o| {
        format!("ZEROBLK_VM_OUT={} ", o.display())
    });
    let command = format!(
        "{out_env}{env} ZEROBLK={} tests/vm/{script}",
        env!("CARGO_BIN_EXE_zeroblk")
    );
    let boot = || {
        let mut vm = Command::new(root.join("scripts/vm-run.sh"));
        if let Some(out) = out {
            vm.env("ZEROBLK_VM_OUT", out);
        }
        common::command::output_within(vm.arg(&command).current_dir(root), VM_DEADLINE)
    };
    let mut output = boot();
    if !output.status.success() && output.stdout.is_empty() && output.stderr.is_empty() {
        // The VM never started (vng exits 255 without a word, seen once in
        // many boots on this loaded machine): boot again, once. A script
        // that ran always prints its steps, so its failures are not retried.
        eprintln!(
            "{script}: the VM did not start ({}); booting it again",
            output.status
        );
        output = boot();
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success()
            && stdout.contains(&format!("{}: ok", script.trim_end_matches(".sh"))),
        "{script} failed in the VM ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

/// One suite of block-device checks, the same over every transport.
fn transport_suite(transport: &str) {
    run_in_vm_with(
        "transport_suite.sh",
        None,
        &format!("TRANSPORT={transport}"),
    );
}

#[test]
fn the_transport_suite_over_ublk() {
    transport_suite("ublk");
}

#[test]
fn the_transport_suite_over_the_kernel_nbd_transport() {
    transport_suite("nbd");
}

#[test]
fn the_transport_suite_over_the_kernel_nbd_client_against_zeroblk_serve() {
    transport_suite("nbd-client");
}

#[test]
fn the_kernel_nbd_client_over_tls() {
    run_in_vm("nbd_kernel_tls.sh");
}

#[test]
fn attach_and_detach_over_the_kernel_nbd_transport() {
    run_in_vm("attach_nbd.sh");
}

#[test]
fn attach_and_detach_over_ublk() {
    run_in_vm("attach_ublk.sh");
}

#[test]
fn read_only_attaches_of_a_snapshot_and_a_follower_over_ublk() {
    let out = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(store_with_a_snapshot(out.path()));
    run_in_vm_writing("attach_readers.sh", Some(out.path()));
}

/// Makes a store in `out/store` for `attach_readers.sh`: volume `data`
/// (64 MiB), whose snapshot `snap` holds `out/snap.img` at offset 0, and
/// whose newest commit holds `out/newest.img` there.
async fn store_with_a_snapshot(out: &Path) {
    use zeroblk::store::{Store, StoreOptions};
    let url = format!("file://{}/store", out.display());
    let store = Store::open(&url, &StoreOptions::default()).unwrap();
    let (volume, _cache) = common::create_and_open(&store, "data", 64 << 20, 1 << 20).await;
    for (seed, image) in [(1, "snap.img"), (2, "newest.img")] {
        let mut data = vec![0u8; 8 << 20];
        fastrand::Rng::with_seed(seed).fill(&mut data);
        std::fs::write(out.join(image), &data).unwrap();
        volume.write(0, &data, false).await.unwrap();
        volume.commit().await.unwrap();
        if image == "snap.img" {
            zeroblk::engine::create_snapshot(&store, "data", Some("snap"), None)
                .await
                .unwrap();
        }
    }
    volume.close().await.unwrap();
}

#[test]
fn volume_resize_while_attached_over_ublk_and_the_kernel_nbd_transport() {
    run_in_vm("resize.sh");
}

#[test]
fn provision_btrfs_with_remembered_mount_options_snapshots_and_nfs_over_ublk() {
    run_in_vm("provision.sh");
}

#[test]
fn volume_snapshots_of_a_mounted_btrfs_clone_into_checkable_filesystems() {
    run_in_vm("volume_snapshots.sh");
}

#[test]
fn backups_of_btrfs_snapshots_push_resume_restore_verify_and_prune() {
    run_in_vm("backup.sh");
}

#[test]
fn detach_after_recovering_a_mounted_volume_over_ublk() {
    run_in_vm("recover_mounted.sh");
}

#[test]
fn crashes_over_ublk_lose_no_flushed_write_and_leave_a_checkable_filesystem() {
    let out = tempfile::tempdir().unwrap();
    run_in_vm_writing("crash_ublk.sh", Some(out.path()));
    let tags = |name: &str| -> Vec<u64> {
        let image = std::fs::read(out.path().join(name)).unwrap();
        image.chunks(4096).map(common::tag_of).collect()
    };
    let log = |name: &str| {
        let log = parse_log(&std::fs::read_to_string(out.path().join(name)).unwrap());
        assert!(log.writes.len() >= 100, "{name}: the writer barely ran");
        log
    };
    let mut before = vec![0u64; 4096];
    for round in 0..2 {
        let after = tags(&format!("kept-{round}.img"));
        let log = log(&format!("kept-{round}.log"));
        if let Err(problem) = check_flushed_writes_kept(&before, &log, &after) {
            panic!("kept, round {round}: {problem}");
        }
        before = after;
    }
    let lost = tags("lost.img");
    if let Err(problem) = check_state_existed(&vec![0; 4096], &log("lost.log"), &lost) {
        panic!("lost cache dir: {problem}");
    }
}

#[test]
fn the_write_back_log_works_on_9p_which_refuses_rename_noreplace() {
    let out = tempfile::tempdir().unwrap();
    let test = sibling_test_binary("durability");
    run_in_vm_with(
        "log_on_9p.sh",
        Some(out.path()),
        &format!("DURABILITY_TEST={}", test.display()),
    );
}

/// The newest build of the test binary `name` beside this one (cargo
/// builds every test target before it runs any).
fn sibling_test_binary(name: &str) -> std::path::PathBuf {
    let this = std::env::current_exe().unwrap();
    let dir = this.parent().unwrap();
    let prefix = format!("{name}-");
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            file.starts_with(&prefix) && !file.contains('.')
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
        .unwrap_or_else(|| {
            panic!(
                "no {name} test binary in {}: run `cargo test`",
                dir.display()
            )
        })
}
