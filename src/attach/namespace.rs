//! The daemon's own mount namespace.
//!
//! A ublk daemon must never share a mount namespace with a mount of its
//! own device: when it exits, the kernel tears its namespace down, which
//! waits on the filesystem, which waits on the device the dying daemon
//! served. So the daemon leaves the host's mount namespace as it starts
//! (a private copy, with no propagation from the host), and every mount it
//! makes for the user happens in a child process that re-enters the
//! host's namespace ([`host_command`]).
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::OnceLock;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

/// The host's mount namespace, kept open once this process has left it.
static HOST_NAMESPACE: OnceLock<OwnedFd> = OnceLock::new();

/// Moves this process into a private copy of the host's mount namespace.
/// Call it while the process has a single thread (unshare refuses
/// otherwise), before any runtime starts.
pub fn leave_host_mount_namespace() -> nix::Result<()> {
    let host = File::open("/proc/self/ns/mnt")
        .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    unshare(CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    let _ = HOST_NAMESPACE.set(host.into());
    Ok(())
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
