//! Tests on a real Linux kernel: Debian's 6.12 (with ublk_drv and nbd),
//! booted under QEMU by scripts/vm-run.sh. Each test runs one script of
//! tests/vm/ inside the VM, with the zeroblk binary under test.

mod common;

use std::path::Path;
use std::process::Command;

/// One VM at a time: each emulates two CPUs on this machine's two cores.
static ONE_VM_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Boots the VM, runs `script` in it and checks it passed.
fn run_in_vm(script: &str) {
    let _turn = ONE_VM_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    common::require_tool(
        "vng",
        "virtme-ng (pip install virtme-ng; scripts/test.sh installs it)",
    );
    let command = format!(
        "ZEROBLK={} tests/vm/{script}",
        env!("CARGO_BIN_EXE_zeroblk")
    );
    let boot = || {
        Command::new(root.join("scripts/vm-run.sh"))
            .arg(&command)
            .current_dir(root)
            .output()
            .expect("run scripts/vm-run.sh")
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

#[test]
fn the_kernel_nbd_client_against_zeroblk_serve() {
    run_in_vm("nbd_kernel.sh");
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
fn provision_btrfs_snapshots_and_nfs_over_ublk() {
    run_in_vm("provision.sh");
}
