//! A small btrfs of its own for one test: a sparse file on a loop device,
//! formatted and mounted, unmounted and detached when dropped (a test that
//! panics included). Needs root, the loop driver and btrfs-progs.

use std::path::Path;
use std::process::Command;

use super::{LoopDevice, require_tool, run_ok};

/// Big enough for mkfs.btrfs's defaults and tens of MiB of test data.
pub const DEFAULT_SIZE: u64 = 256 << 20;

/// A mounted btrfs on a loop device.
pub struct LoopBtrfs {
    device: LoopDevice,
}

impl LoopBtrfs {
    /// A fresh btrfs of [`DEFAULT_SIZE`].
    pub fn new() -> LoopBtrfs {
        LoopBtrfs::with_size(DEFAULT_SIZE)
    }

    pub fn with_size(size: u64) -> LoopBtrfs {
        require_tool("mkfs.btrfs", "btrfs-progs");
        require_tool("mount", "mount");
        let device = LoopDevice::new(size);
        run_ok(
            Command::new("mkfs.btrfs")
                .args(["-q", "-f"])
                .arg(&device.path),
        );
        std::fs::create_dir_all(&device.mount_point).expect("mount point");
        run_ok(
            Command::new("mount")
                .arg(&device.path)
                .arg(&device.mount_point),
        );
        LoopBtrfs { device }
    }

    /// Where it is mounted (the top-level subvolume).
    pub fn mount_point(&self) -> &Path {
        &self.device.mount_point
    }

    /// The loop device (for `btrfs check` once unmounted).
    pub fn device(&self) -> &Path {
        &self.device.path
    }

    /// Unmounts it (it is detached when dropped).
    pub fn unmount(&self) {
        run_ok(Command::new("umount").arg(self.mount_point()));
    }
}
