//! Freezing a mounted filesystem (FIFREEZE and FITHAW, linux/fs.h) while
//! a volume snapshot is pinned: the freeze writes out everything the
//! filesystem holds (a btrfs commits its transaction) and blocks new
//! writes, so the device holds the filesystem at one consistent moment,
//! and a snapshot of the device is a clean filesystem, not a crashed one.
//!
//! A [`Frozen`] filesystem thaws when it is dropped, whatever happened
//! meanwhile. A process killed with SIGKILL while it holds one leaves the
//! filesystem frozen: `fsfreeze -u MOUNT_POINT` thaws it.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::ProvisionError;

mod ioctls {
    // `_IOWR('X', 119, int)` and `_IOWR('X', 120, int)`; the argument is
    // unused by the kernel.
    nix::ioctl_readwrite!(freeze, b'X', 119, libc::c_int);
    nix::ioctl_readwrite!(thaw, b'X', 120, libc::c_int);
}

/// A filesystem frozen by this process, until this is dropped or
/// [`Frozen::thaw`]ed.
pub struct Frozen {
    dir: File,
    mount_point: PathBuf,
    thawed: bool,
}

/// Writes out and freezes the filesystem mounted at `mount_point`.
pub fn freeze(mount_point: &Path) -> Result<Frozen, ProvisionError> {
    let dir = File::open(mount_point).map_err(|source| ProvisionError::Io {
        what: format!("opening {}", mount_point.display()),
        source,
    })?;
    let mut unused: libc::c_int = 0;
    // SAFETY: `dir` is an open file of the filesystem, and `unused` a live
    // int the kernel does not touch.
    match unsafe { ioctls::freeze(dir.as_raw_fd(), &mut unused) } {
        Ok(_) => Ok(Frozen {
            dir,
            mount_point: mount_point.to_path_buf(),
            thawed: false,
        }),
        Err(nix::Error::EBUSY) => Err(ProvisionError::Invalid(format!(
            "{} is frozen already (by fsfreeze, or another snapshot in progress): wait for it, or thaw it with `fsfreeze -u {}`",
            mount_point.display(),
            mount_point.display()
        ))),
        Err(errno) => Err(ProvisionError::Btrfs {
            what: "freezing".into(),
            path: mount_point.to_path_buf(),
            source: errno.into(),
        }),
    }
}

impl Frozen {
    /// Thaws the filesystem.
    pub fn thaw(mut self) -> Result<(), ProvisionError> {
        self.thaw_now()
    }

    fn thaw_now(&mut self) -> Result<(), ProvisionError> {
        if self.thawed {
            return Ok(());
        }
        let mut unused: libc::c_int = 0;
        // SAFETY: as in `freeze`.
        unsafe { ioctls::thaw(self.dir.as_raw_fd(), &mut unused) }.map_err(|errno| {
            ProvisionError::Btrfs {
                what: format!("thawing (run `fsfreeze -u {}`)", self.mount_point.display()),
                path: self.mount_point.clone(),
                source: errno.into(),
            }
        })?;
        self.thawed = true;
        Ok(())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Err(error) = self.thaw_now() {
            tracing::error!(%error, "could not thaw the filesystem");
        }
    }
}

/// Writes out what the filesystem at `mount_point` holds (syncfs), so a
/// freeze after it has little left to write.
pub fn sync(mount_point: &Path) -> Result<(), ProvisionError> {
    let dir = File::open(mount_point).map_err(|source| ProvisionError::Io {
        what: format!("opening {}", mount_point.display()),
        source,
    })?;
    nix::unistd::syncfs(&dir).map_err(|errno| ProvisionError::Btrfs {
        what: "syncing".into(),
        path: mount_point.to_path_buf(),
        source: errno.into(),
    })
}
