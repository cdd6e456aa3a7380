//! The daemon's own mount namespace.
//!
//! A ublk daemon must never share a mount namespace with a mount of its
//! own device: when it exits, the kernel tears its namespace down, which
//! waits on the filesystem, which waits on the device the dying daemon
//! served. So the daemon leaves the host's mount namespace as it starts
//! (a private copy, with no propagation from the host), and every mount it
//! makes for the user happens in a child process that re-enters the
//! host's namespace ([`host_command`]).
//!
//! The private copy starts with every mount the host had, and a daemon
//! started while its device is mounted (`attach --recover` of a mounted
//! volume) would carry a mount of its own device; a daemon started while
//! another volume is mounted would pin that volume's filesystem after the
//! host unmounted it, and its detach would hang. So right after leaving,
//! the daemon detaches from its copy every mount of a device a zeroblk
//! daemon serves: ublk and NBD block devices and their partitions.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use super::mountinfo::{self, DeviceNumber, Mount};

/// The host's mount namespace, kept open once this process has left it.
static HOST_NAMESPACE: OnceLock<OwnedFd> = OnceLock::new();

/// Why the daemon serves from the host's mount namespace, or from a
/// private one that still mounts a served device.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// Still in the host's namespace (only root can leave it).
    #[error("cannot leave the host's mount namespace: {0}")]
    Leave(nix::Error),
    #[error("cannot read this process's mount table: {0}")]
    MountTable(std::io::Error),
    #[error("cannot detach {source_device} from {} in the daemon's mount namespace: {errno}", mount_point.display())]
    Detach {
        source_device: String,
        mount_point: PathBuf,
        errno: nix::Error,
    },
}

/// Moves this process into a private copy of the host's mount namespace,
/// without the mounts of served devices (`drop_served_device_mounts`).
/// Call it while the process has a single thread (unshare refuses
/// otherwise), before any runtime starts.
pub fn leave_host_mount_namespace() -> Result<(), NamespaceError> {
    let host = File::open("/proc/self/ns/mnt").map_err(|e| {
        NamespaceError::Leave(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    })?;
    unshare(CloneFlags::CLONE_NEWNS).map_err(NamespaceError::Leave)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(NamespaceError::Leave)?;
    let _ = HOST_NAMESPACE.set(host.into());
    drop_served_device_mounts()
}

/// Detaches from this process's private namespace every mount of a ublk
/// or NBD block device (or a partition of one), and whatever is mounted on
/// them; the host's mounts stay. Deepest first, and the table is read again
/// after each one: detaching a mount takes the mounts inside it along.
fn drop_served_device_mounts() -> Result<(), NamespaceError> {
    if HOST_NAMESPACE.get().is_none() {
        return Ok(()); // never in the host's namespace
    }
    let numbers = served_device_numbers();
    let mut failure = None;
    let mut failed_ids = Vec::new();
    loop {
        let table =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(NamespaceError::MountTable)?;
        let mounts = mountinfo::parse(&table);
        let served = mounts
            .iter()
            .filter(|m| !failed_ids.contains(&m.id()) && is_served_device_mount(m, &numbers));
        let Some(mount) = mountinfo::deepest_first(served).first().copied() else {
            return failure.map_or(Ok(()), Err);
        };
        match umount2(mount.mount_point(), MntFlags::MNT_DETACH) {
            Ok(()) => tracing::info!(
                source = %mount.source(),
                mount_point = %mount.mount_point().display(),
                "detached from the daemon's mount namespace"
            ),
            Err(errno) => {
                failed_ids.push(mount.id());
                failure.get_or_insert(NamespaceError::Detach {
                    source_device: mount.source().to_string(),
                    mount_point: mount.mount_point().to_path_buf(),
                    errno,
                });
            }
        }
    }
}

/// The numbers of the ublk and NBD block devices (and their partitions)
/// this kernel has now.
fn served_device_numbers() -> Vec<DeviceNumber> {
    let Ok(entries) = std::fs::read_dir("/sys/class/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| mountinfo::is_served_device_name(&e.file_name().to_string_lossy()))
        .filter_map(|e| std::fs::read_to_string(e.path().join("dev")).ok())
        .filter_map(|dev| mountinfo::parse_device_number(&dev))
        .collect()
}

/// Whether `mount` is of a served device: by its device number (most
/// filesystems), or by its source, a `/dev` path that may be a symlink
/// (btrfs shows an anonymous device number; a deleted device has none).
fn is_served_device_mount(mount: &Mount, numbers: &[DeviceNumber]) -> bool {
    if numbers.contains(&mount.device()) {
        return true;
    }
    let source = Path::new(mount.source());
    if !source.starts_with("/dev") {
        return false;
    }
    let resolved = source
        .canonicalize()
        .unwrap_or_else(|_| source.to_path_buf());
    resolved
        .file_name()
        .is_some_and(|name| mountinfo::is_served_device_name(&name.to_string_lossy()))
}

/// A command for `program` that runs in the host's mount namespace, even
/// when this process has left it.
pub fn host_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    if let Some(host) = HOST_NAMESPACE.get() {
        let host = host.as_raw_fd();
        // SAFETY: the closure runs in the forked child, before exec. It
        // makes one system call (setns, async-signal-safe) on a descriptor
        // this process keeps open for its whole life, and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(host, libc::CLONE_NEWNS) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    command
}
