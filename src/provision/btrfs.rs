//! Subvolumes and snapshots through the btrfs ioctls (linux/btrfs.h):
//! create, snapshot, delete, and the read-only flag. Each takes the
//! directory that holds the subvolume and a single path component.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::ProvisionError;

/// `BTRFS_PATH_NAME_MAX + 1`: the name field of `btrfs_ioctl_vol_args`.
const VOL_ARGS_NAME_LEN: usize = 4088;
/// `BTRFS_SUBVOL_NAME_MAX + 1`: the name field of `btrfs_ioctl_vol_args_v2`.
const VOL_ARGS_V2_NAME_LEN: usize = 4040;
/// `BTRFS_SUBVOL_RDONLY`.
const SUBVOL_RDONLY: u64 = 1 << 1;
/// Every subvolume's root directory has this inode number.
const SUBVOLUME_ROOT_INODE: u64 = 256;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; VOL_ARGS_NAME_LEN],
}

/// `struct btrfs_ioctl_vol_args_v2`, with the name arm of its last union.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; VOL_ARGS_V2_NAME_LEN],
}

mod ioctls {
    use super::{VolArgs, VolArgsV2};
    const BTRFS_IOCTL_MAGIC: u8 = 0x94;
    nix::ioctl_write_ptr!(subvol_create, BTRFS_IOCTL_MAGIC, 14, VolArgs);
    nix::ioctl_write_ptr!(snap_destroy, BTRFS_IOCTL_MAGIC, 15, VolArgs);
    nix::ioctl_write_ptr!(snap_create_v2, BTRFS_IOCTL_MAGIC, 23, VolArgsV2);
    nix::ioctl_read!(subvol_getflags, BTRFS_IOCTL_MAGIC, 25, u64);
    nix::ioctl_write_ptr!(subvol_setflags, BTRFS_IOCTL_MAGIC, 26, u64);
}

fn name_bytes<const N: usize>(name: &str) -> Result<[u8; N], ProvisionError> {
    let mut bytes = [0u8; N];
    if name.is_empty() || name.len() >= N || name.contains('/') || name == "." || name == ".." {
        return Err(ProvisionError::InvalidName(name.to_string()));
    }
    bytes[..name.len()].copy_from_slice(name.as_bytes());
    Ok(bytes)
}

fn open_dir(path: &Path) -> Result<File, ProvisionError> {
    File::open(path).map_err(|source| ProvisionError::Io {
        what: format!("opening {}", path.display()),
        source,
    })
}

fn ioctl_error(what: &str, path: PathBuf) -> impl FnOnce(nix::Error) -> ProvisionError + '_ {
    move |errno| ProvisionError::Btrfs {
        what: what.to_string(),
        path,
        source: std::io::Error::from(errno),
    }
}

/// Whether `path` is the root of a btrfs subvolume.
pub fn is_subvolume(path: &Path) -> bool {
    let on_btrfs = nix::sys::statfs::statfs(path)
        .map(|fs| fs.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC)
        .unwrap_or(false);
    on_btrfs
        && std::fs::metadata(path)
            .map(|m| m.is_dir() && m.ino() == SUBVOLUME_ROOT_INODE)
            .unwrap_or(false)
}

/// Creates an empty subvolume `parent/name`.
pub fn create_subvolume(parent: &Path, name: &str) -> Result<(), ProvisionError> {
    vol_args_ioctl(parent, name, "creating subvolume", ioctls::subvol_create)
}

/// The ioctls that take a `btrfs_ioctl_vol_args` naming an entry of `parent`.
type VolArgsIoctl = unsafe fn(libc::c_int, *const VolArgs) -> nix::Result<libc::c_int>;

fn vol_args_ioctl(
    parent: &Path,
    name: &str,
    what: &str,
    ioctl: VolArgsIoctl,
) -> Result<(), ProvisionError> {
    let dir = open_dir(parent)?;
    let args = VolArgs {
        fd: 0,
        name: name_bytes(name)?,
    };
    // SAFETY: `dir` is an open directory and `args` a live, fully
    // initialised btrfs_ioctl_vol_args the kernel only reads.
    unsafe { ioctl(dir.as_raw_fd(), &args) }.map_err(ioctl_error(what, parent.join(name)))?;
    Ok(())
}

/// Snapshots the subvolume at `source` as `parent/name`.
pub fn snapshot(
    source: &Path,
    parent: &Path,
    name: &str,
    read_only: bool,
) -> Result<(), ProvisionError> {
    let source_dir = open_dir(source)?;
    let dir = open_dir(parent)?;
    let args = VolArgsV2 {
        fd: i64::from(source_dir.as_raw_fd()),
        transid: 0,
        flags: if read_only { SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: name_bytes(name)?,
    };
    // SAFETY: both descriptors are open directories, and `args` is a live,
    // fully initialised btrfs_ioctl_vol_args_v2 the kernel only reads.
    unsafe { ioctls::snap_create_v2(dir.as_raw_fd(), &args) }
        .map_err(ioctl_error("snapshotting into", parent.join(name)))?;
    Ok(())
}

/// Deletes the subvolume or snapshot `parent/name`.
pub fn delete_subvolume(parent: &Path, name: &str) -> Result<(), ProvisionError> {
    vol_args_ioctl(parent, name, "deleting subvolume", ioctls::snap_destroy)
}

/// Whether the subvolume at `path` is read-only.
pub fn is_read_only(path: &Path) -> Result<bool, ProvisionError> {
    let dir = open_dir(path)?;
    let mut flags = 0u64;
    // SAFETY: `dir` is open and `flags` a live u64 the kernel writes.
    unsafe { ioctls::subvol_getflags(dir.as_raw_fd(), &mut flags) }
        .map_err(ioctl_error("reading the flags of", path.to_path_buf()))?;
    Ok(flags & SUBVOL_RDONLY != 0)
}

/// Makes the subvolume at `path` read-only, or writable.
pub fn set_read_only(path: &Path, read_only: bool) -> Result<(), ProvisionError> {
    let dir = open_dir(path)?;
    let mut flags = 0u64;
    // SAFETY: as in is_read_only; then a live u64 the kernel only reads.
    unsafe {
        ioctls::subvol_getflags(dir.as_raw_fd(), &mut flags)
            .map_err(ioctl_error("reading the flags of", path.to_path_buf()))?;
        flags = if read_only {
            flags | SUBVOL_RDONLY
        } else {
            flags & !SUBVOL_RDONLY
        };
        ioctls::subvol_setflags(dir.as_raw_fd(), &flags)
            .map_err(ioctl_error("setting the flags of", path.to_path_buf()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_argument_structs_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<VolArgs>(), 4096);
        assert_eq!(std::mem::size_of::<VolArgsV2>(), 4096);
    }

    #[test]
    fn names_are_single_path_components() {
        assert!(name_bytes::<16>("@home").is_ok());
        for bad in ["", "a/b", ".", "..", "0123456789abcdef"] {
            assert!(name_bytes::<16>(bad).is_err(), "{bad:?} accepted");
        }
    }
}
