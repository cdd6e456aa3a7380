//! Subvolumes and snapshots through the btrfs ioctls (linux/btrfs.h):
//! create, snapshot, delete, the read-only flag, and what btrfs records of
//! a subvolume (its UUIDs and generation). Each that changes something
//! takes the directory that holds the subvolume and a single path
//! component.
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
/// `BTRFS_VOL_NAME_MAX + 1`: the name field of
/// `btrfs_ioctl_get_subvol_info_args`.
const SUBVOL_INFO_NAME_LEN: usize = 256;
/// `BTRFS_ROOT_SUBVOL_RDONLY` (linux/btrfs_tree.h): the read-only bit of a
/// root item's flags, which GET_SUBVOL_INFO returns as they are (not the
/// `BTRFS_SUBVOL_RDONLY` of the flag ioctls).
const ROOT_SUBVOL_RDONLY: u64 = 1 << 0;

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

/// `struct btrfs_ioctl_timespec`.
#[repr(C)]
struct Timespec {
    sec: u64,
    nsec: u32,
}

impl Timespec {
    const ZERO: Timespec = Timespec { sec: 0, nsec: 0 };
}

/// `struct btrfs_ioctl_get_subvol_info_args`.
#[repr(C)]
struct GetSubvolInfoArgs {
    treeid: u64,
    name: [u8; SUBVOL_INFO_NAME_LEN],
    parent_id: u64,
    dirid: u64,
    generation: u64,
    flags: u64,
    uuid: [u8; 16],
    parent_uuid: [u8; 16],
    received_uuid: [u8; 16],
    ctransid: u64,
    otransid: u64,
    stransid: u64,
    rtransid: u64,
    ctime: Timespec,
    otime: Timespec,
    stime: Timespec,
    rtime: Timespec,
    reserved: [u64; 8],
}

impl GetSubvolInfoArgs {
    /// Where a call starts: the kernel fills in every field.
    const ZEROED: GetSubvolInfoArgs = GetSubvolInfoArgs {
        treeid: 0,
        name: [0; SUBVOL_INFO_NAME_LEN],
        parent_id: 0,
        dirid: 0,
        generation: 0,
        flags: 0,
        uuid: [0; 16],
        parent_uuid: [0; 16],
        received_uuid: [0; 16],
        ctransid: 0,
        otransid: 0,
        stransid: 0,
        rtransid: 0,
        ctime: Timespec::ZERO,
        otime: Timespec::ZERO,
        stime: Timespec::ZERO,
        rtime: Timespec::ZERO,
        reserved: [0; 8],
    };
}

mod ioctls {
    use super::{GetSubvolInfoArgs, VolArgs, VolArgsV2};
    const BTRFS_IOCTL_MAGIC: u8 = 0x94;
    nix::ioctl_write_ptr!(subvol_create, BTRFS_IOCTL_MAGIC, 14, VolArgs);
    nix::ioctl_write_ptr!(snap_destroy, BTRFS_IOCTL_MAGIC, 15, VolArgs);
    nix::ioctl_write_ptr!(snap_create_v2, BTRFS_IOCTL_MAGIC, 23, VolArgsV2);
    nix::ioctl_read!(subvol_getflags, BTRFS_IOCTL_MAGIC, 25, u64);
    nix::ioctl_write_ptr!(subvol_setflags, BTRFS_IOCTL_MAGIC, 26, u64);
    nix::ioctl_read!(get_subvol_info, BTRFS_IOCTL_MAGIC, 60, GetSubvolInfoArgs);
    nix::ioctl_write_ptr!(snap_destroy_v2, BTRFS_IOCTL_MAGIC, 63, VolArgsV2);
}

/// `BTRFS_SUBVOL_SPEC_BY_ID`: SNAP_DESTROY_V2 names the subvolume by id.
const SUBVOL_SPEC_BY_ID: u64 = 1 << 4;

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

/// A subvolume opened without following a path twice: what is checked
/// through it is what [`delete_subvolume_by_id`] deletes.
pub struct OpenSubvolume {
    dir: File,
}

/// Why [`open_beneath`] found nothing it may open.
#[derive(Debug)]
pub enum Beneath {
    Missing,
    /// A symbolic link on the way (none is followed).
    SymbolicLink,
    /// Outside `top`, or on another filesystem mounted inside it.
    Elsewhere,
    Failed(std::io::Error),
}

/// Opens the directory `relative` beneath `top` without following any
/// symbolic link, leaving `top` or crossing into another mount: a path an
/// unprivileged user can change between a check and a use is resolved
/// once, here.
pub fn open_beneath(top: &File, relative: &Path) -> Result<OpenSubvolume, Beneath> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_XDEV
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    match openat2(top, relative, how) {
        Ok(fd) => Ok(OpenSubvolume {
            dir: File::from(fd),
        }),
        Err(nix::Error::ENOENT) => Err(Beneath::Missing),
        Err(nix::Error::ELOOP) => Err(Beneath::SymbolicLink),
        Err(nix::Error::EXDEV) => Err(Beneath::Elsewhere),
        Err(errno) => Err(Beneath::Failed(errno.into())),
    }
}

impl OpenSubvolume {
    /// The subvolume's id, if what was opened is a subvolume's root on
    /// btrfs (not a directory inside one).
    pub fn subvolume_id(&self) -> Option<u64> {
        let on_btrfs = nix::sys::statfs::fstatfs(&self.dir)
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC);
        let root = self
            .dir
            .metadata()
            .is_ok_and(|m| m.ino() == SUBVOLUME_ROOT_INODE);
        if !(on_btrfs && root) {
            return None;
        }
        let mut args = GetSubvolInfoArgs::ZEROED;
        // SAFETY: as in `subvolume_info`: an open directory and a live,
        // initialised argument the kernel writes.
        unsafe { ioctls::get_subvol_info(self.dir.as_raw_fd(), &mut args) }.ok()?;
        Some(args.treeid)
    }

    pub fn is_read_only(&self) -> Result<bool, ProvisionError> {
        let mut flags = 0u64;
        // SAFETY: `dir` is open and `flags` a live u64 the kernel writes.
        unsafe { ioctls::subvol_getflags(self.dir.as_raw_fd(), &mut flags) }.map_err(
            ioctl_error("reading the flags of", PathBuf::from("the snapshot")),
        )?;
        Ok(flags & SUBVOL_RDONLY != 0)
    }
}

/// Deletes subvolume `id` of the filesystem `top` is a directory of, by
/// its id: no path is looked up again (Linux 5.7 and later).
pub fn delete_subvolume_by_id(top: &File, id: u64, shown: &Path) -> Result<(), ProvisionError> {
    let mut args = VolArgsV2 {
        fd: 0,
        transid: 0,
        flags: SUBVOL_SPEC_BY_ID,
        unused: [0; 4],
        name: [0; VOL_ARGS_V2_NAME_LEN],
    };
    // The last union's `subvolid` arm: its first eight bytes.
    args.name[..8].copy_from_slice(&id.to_ne_bytes());
    // SAFETY: `top` is an open directory and `args` a live, fully
    // initialised btrfs_ioctl_vol_args_v2 the kernel only reads.
    unsafe { ioctls::snap_destroy_v2(top.as_raw_fd(), &args) }
        .map_err(ioctl_error("deleting subvolume", shown.to_path_buf()))?;
    Ok(())
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

/// What btrfs records of a subvolume, and a backup of a snapshot keeps:
/// its UUIDs and generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubvolumeInfo {
    uuid: uuid::Uuid,
    parent_uuid: Option<uuid::Uuid>,
    received_uuid: Option<uuid::Uuid>,
    generation: u64,
    read_only: bool,
    created: Option<chrono::DateTime<chrono::Utc>>,
}

impl SubvolumeInfo {
    /// The subvolume's own UUID.
    pub fn uuid(&self) -> uuid::Uuid {
        self.uuid
    }

    /// The UUID of the subvolume this one is a snapshot of, if it is one.
    pub fn parent_uuid(&self) -> Option<uuid::Uuid> {
        self.parent_uuid
    }

    /// The UUID of the subvolume this one was received from (`btrfs
    /// receive` sets it), if it was received.
    pub fn received_uuid(&self) -> Option<uuid::Uuid> {
        self.received_uuid
    }

    /// The last transaction that changed the subvolume.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// When the subvolume (or snapshot) was made, if btrfs recorded it.
    pub fn created(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.created
    }

    fn from_args(args: &GetSubvolInfoArgs) -> SubvolumeInfo {
        let optional =
            |bytes: [u8; 16]| Some(uuid::Uuid::from_bytes(bytes)).filter(|u| !u.is_nil());
        SubvolumeInfo {
            uuid: uuid::Uuid::from_bytes(args.uuid),
            parent_uuid: optional(args.parent_uuid),
            received_uuid: optional(args.received_uuid),
            generation: args.generation,
            read_only: args.flags & ROOT_SUBVOL_RDONLY != 0,
            created: i64::try_from(args.otime.sec)
                .ok()
                .filter(|&sec| sec > 0)
                .and_then(|sec| chrono::DateTime::from_timestamp(sec, args.otime.nsec)),
        }
    }
}

/// What btrfs records of the subvolume whose root is `path`
/// (BTRFS_IOC_GET_SUBVOL_INFO, which needs no privilege).
pub fn subvolume_info(path: &Path) -> Result<SubvolumeInfo, ProvisionError> {
    if !is_subvolume(path) {
        return Err(ProvisionError::Invalid(format!(
            "{} is not the root of a btrfs subvolume: name a snapshot in @snapshots (`zeroblk snapshot list` shows them)",
            path.display()
        )));
    }
    let dir = open_dir(path)?;
    let mut args = GetSubvolInfoArgs::ZEROED;
    // SAFETY: `dir` is open, and `args` a live, initialised
    // btrfs_ioctl_get_subvol_info_args (its size is checked against the
    // kernel's in the tests) that the kernel writes and nothing else
    // borrows meanwhile.
    unsafe { ioctls::get_subvol_info(dir.as_raw_fd(), &mut args) }.map_err(ioctl_error(
        "reading the subvolume info of",
        path.to_path_buf(),
    ))?;
    Ok(SubvolumeInfo::from_args(&args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_argument_structs_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<VolArgs>(), 4096);
        assert_eq!(std::mem::size_of::<VolArgsV2>(), 4096);
        assert_eq!(std::mem::size_of::<Timespec>(), 16);
        assert_eq!(std::mem::size_of::<GetSubvolInfoArgs>(), 504);
        assert_eq!(std::mem::offset_of!(GetSubvolInfoArgs, uuid), 296);
        assert_eq!(std::mem::offset_of!(GetSubvolInfoArgs, ctransid), 344);
    }

    #[test]
    fn all_zero_uuids_are_none_and_the_read_only_bit_is_the_root_items() {
        let mut args = GetSubvolInfoArgs::ZEROED;
        args.uuid = [7; 16];
        args.received_uuid = [9; 16];
        args.flags = ROOT_SUBVOL_RDONLY;
        args.generation = 42;
        assert_eq!(SubvolumeInfo::from_args(&args).created(), None);
        args.otime = Timespec {
            sec: 1_795_000_000,
            nsec: 0,
        };
        let info = SubvolumeInfo::from_args(&args);
        assert_eq!(info.created().unwrap().timestamp(), 1_795_000_000);
        assert_eq!(info.uuid(), uuid::Uuid::from_bytes([7; 16]));
        assert_eq!(info.parent_uuid(), None);
        assert_eq!(info.received_uuid(), Some(uuid::Uuid::from_bytes([9; 16])));
        assert_eq!(info.generation(), 42);
        assert!(info.read_only());
        args.flags = SUBVOL_RDONLY;
        assert!(!SubvolumeInfo::from_args(&args).read_only());
    }

    #[test]
    fn names_are_single_path_components() {
        assert!(name_bytes::<16>("@home").is_ok());
        for bad in ["", "a/b", ".", "..", "0123456789abcdef"] {
            assert!(name_bytes::<16>(bad).is_err(), "{bad:?} accepted");
        }
    }
}
