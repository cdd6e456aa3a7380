//! Provisioning: a btrfs filesystem on an attached device, its subvolumes,
//! snapshots and quotas, and its NFS share. The only module that runs
//! system tools (mkfs.btrfs, blkid, exportfs, btrfs).
//!
//! What it promises:
//! - A device that holds anything is never formatted: a btrfs is mounted
//!   as it is, anything else (a filesystem, a partition table) is refused.
//!   Only a device where `blkid` finds nothing gets `mkfs.btrfs`, without
//!   its full-device discard (the device reads as zeroes already).
//! - Bringing a volume up is idempotent: the mount, the subvolumes `@`,
//!   `@home` and `@snapshots`, and the NFS export are each made only when
//!   missing, so `zeroblk attach NAME` after a crash finishes the job. The
//!   filesystem is grown to fill its device, which a `volume resize` may
//!   have grown since.
//! - Bringing it down goes in the order that loses nothing: unexport,
//!   unmount (which writes everything to the device), and only then may
//!   the caller flush and remove the device. A busy mount stops it with
//!   the export put back, and the device is left attached.
//! - The mount gets only btrfs options on a known list (`mount_options`),
//!   whether from the flag or remembered with the volume.
//! - Snapshots are read-only by default and named so that they sort by
//!   time; a rollback first keeps the current state as a snapshot.
//!   Snapshots zeroblk did not name are listed, and deleted by path, only
//!   when asked (`foreign`).
//! - Backups: a read-only snapshot is sent as a `btrfs send` stream (whole
//!   or incremental) and received back; the filesystem itself records
//!   which snapshot the next incremental send needs (`pushed`).

pub mod btrfs;
mod command;
pub mod foreign;
pub mod freeze;
pub mod mount;
pub mod mount_options;
pub mod nfs;
pub mod pushed;
pub mod quota;
pub mod send;
mod send_stream;
pub mod snapshot;

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use mount_options::{BtrfsOptions, Lifted, MountOptions};
pub use nfs::NfsExport;

/// The subvolumes every provisioned filesystem gets.
pub const SUBVOLUMES: [&str; 3] = ["@", "@home", "@snapshots"];
/// The file, kept with the volume in the store, that says how it is
/// provisioned.
pub const PROVISION_FILE: &str = "provision.json";
/// Where snapshots live, at the top of the filesystem.
pub const SNAPSHOTS_DIR: &str = "@snapshots";

/// How a volume is provisioned when attached; stored with the volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provision {
    pub filesystem: Filesystem,
    pub compress: BtrfsCompression,
    pub mount_point: PathBuf,
    #[serde(default)]
    pub nfs: Option<NfsExport>,
    /// The btrfs options of `--mount-options`, beyond zeroblk's own.
    #[serde(default, skip_serializing_if = "BtrfsOptions::is_empty")]
    pub mount_options: BtrfsOptions,
    /// The `nosuid` and `nodev` this host's `--mount-options` lift: never
    /// stored with the volume.
    #[serde(skip)]
    pub lifted: Lifted,
}

impl Provision {
    /// Checks what a flag or a stored `provision.json` asks for, before any
    /// of it is applied: whoever can write the bucket writes that file.
    pub fn check(&self) -> Result<(), ProvisionError> {
        check_mount_point(&self.mount_point)
    }
}

/// Directories whose contents the system needs: nothing is mounted on
/// them or anywhere below them.
const SYSTEM_TREES: [&str; 11] = [
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/sbin", "/sys", "/usr",
];

/// Directories nothing is mounted on (below them is fine: /mnt/data,
/// /srv/nfs, /home/alice/disk).
const SYSTEM_DIRS: [&str; 10] = [
    "/", "/home", "/media", "/mnt", "/opt", "/root", "/run", "/srv", "/tmp", "/var",
];

/// A mount point must be absolute, plain (no `.` or `..`) and not a
/// system directory.
fn check_mount_point(path: &Path) -> Result<(), ProvisionError> {
    let refuse = |why: &str| {
        Err(ProvisionError::Invalid(format!(
            "mount point {} {why}: choose a directory of its own, e.g. /mnt/NAME, with --mount-point",
            path.display()
        )))
    };
    if !path.is_absolute() {
        return refuse("is not an absolute path");
    }
    let plain = path
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain {
        return refuse("has `.` or `..` in it");
    }
    let path = path.components().collect::<PathBuf>();
    if SYSTEM_DIRS.iter().any(|dir| path == Path::new(dir))
        || SYSTEM_TREES.iter().any(|tree| path.starts_with(tree))
    {
        return refuse("is a system directory");
    }
    Ok(())
}

/// The filesystem `--filesystem` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    #[default]
    Btrfs,
    /// A raw block device: nothing is formatted or mounted.
    None,
}

impl FromStr for Filesystem {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "btrfs" => Ok(Filesystem::Btrfs),
            "none" => Ok(Filesystem::None),
            _ => Err(format!(
                "`{s}` is not a filesystem zeroblk provisions: use btrfs or none"
            )),
        }
    }
}

/// btrfs's transparent compression: `zstd[:1-15]`, `lzo`, `zlib[:1-9]` or
/// `none`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BtrfsCompression(String);

impl BtrfsCompression {
    /// The mount option, or `None` for no compression.
    pub fn mount_option(&self) -> Option<String> {
        (self.0 != "none").then(|| format!("compress={}", self.0))
    }

    pub fn is_none(&self) -> bool {
        self.0 == "none"
    }
}

impl Default for BtrfsCompression {
    fn default() -> Self {
        BtrfsCompression("zstd:3".into())
    }
}

impl FromStr for BtrfsCompression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (codec, level) = match s.split_once(':') {
            Some((codec, level)) => (codec, Some(level)),
            None => (s, None),
        };
        let invalid = || {
            format!(
                "`{s}` is not a btrfs compression: use zstd, zstd:1 to zstd:15, lzo, zlib, zlib:1 to zlib:9, or none"
            )
        };
        let levels = match codec {
            "zstd" => Some(1..=15u32),
            "zlib" => Some(1..=9),
            "lzo" | "none" => None,
            _ => return Err(invalid()),
        };
        let level_ok = match (level, levels) {
            (None, _) => true,
            (Some(level), Some(range)) => level.parse().is_ok_and(|l| range.contains(&l)),
            (Some(_), None) => false,
        };
        if level_ok {
            Ok(BtrfsCompression(s.to_string()))
        } else {
            Err(invalid())
        }
    }
}

impl TryFrom<String> for BtrfsCompression {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<BtrfsCompression> for String {
    fn from(value: BtrfsCompression) -> Self {
        value.0
    }
}

impl fmt::Display for BtrfsCompression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why provisioning failed; each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("`{tool}` is missing: install it with `apt-get install {package}`")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("{tool} failed ({status}): {message}")]
    ToolFailed {
        tool: &'static str,
        status: String,
        message: String,
    },
    #[error(
        "{device} already holds {found}, not btrfs: zeroblk never formats a device that holds data; attach it with --filesystem none, or wipe it yourself (wipefs -a) if its data is not wanted"
    )]
    Foreign { device: String, found: String },
    #[error(
        "{mount_point} is busy: a process still uses it (see `fuser -vm {mount_point}`); nothing was detached, the device and its export are still up"
    )]
    Busy { mount_point: PathBuf },
    #[error(
        "{mount_point} already has {other} mounted on it: choose another --mount-point, or unmount it first"
    )]
    MountPointTaken { mount_point: PathBuf, other: String },
    #[error("{device} is mounted at {mount_point}: unmount it first (nothing was detached)")]
    Mounted { device: String, mount_point: String },
    #[error("{what} {}: {source}", path.display())]
    Btrfs {
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} is not read-only, and btrfs sends only read-only snapshots: make it read-only with `btrfs property set {} ro true`, or let `zeroblk backup push` take the snapshot",
        path.display(),
        path.display()
    )]
    NotReadOnly { path: PathBuf },
    #[error(
        "{} is damaged ({reason}): delete it; the next `zeroblk backup push` of each subvolume then sends a full stream",
        path.display()
    )]
    Damaged { path: PathBuf, reason: String },
    #[error("`{0}` cannot name a subvolume or snapshot: use one path component, without `/`")]
    InvalidName(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// Checks the tools `provision` needs are installed, before any device is
/// set up.
pub fn preflight(provision: &Provision) -> Result<(), ProvisionError> {
    if provision.filesystem == Filesystem::None {
        return Ok(());
    }
    command::BLKID.find()?;
    command::MKFS_BTRFS.find()?;
    if provision.nfs.is_some() {
        command::EXPORTFS.find()?;
        command::RPC_NFSD.find()?;
    }
    Ok(())
}

/// Brings a provisioned volume up on `device`: the filesystem (made only
/// on an empty device), the mount, the subvolumes, the NFS export.
pub fn up(device: &Path, label: &str, provision: &Provision) -> Result<(), ProvisionError> {
    if provision.filesystem == Filesystem::None {
        return Ok(());
    }
    provision.check()?;
    match mount::probe(device)? {
        mount::Contents::Nothing => mount::make_btrfs(device, label)?,
        mount::Contents::Btrfs => {}
        mount::Contents::Other(found) => {
            return Err(ProvisionError::Foreign {
                device: device.display().to_string(),
                found,
            });
        }
    }
    let was_mounted = mount::mount_point_of(device).is_some();
    mount::mount_btrfs(device, provision)?;
    fill_device(&provision.mount_point);
    let finished = make_subvolumes(&provision.mount_point).and_then(|()| match &provision.nfs {
        Some(export) => {
            nfs::ensure_server().and_then(|()| nfs::export(&provision.mount_point, export))
        }
        None => Ok(()),
    });
    if finished.is_err() && !was_mounted {
        // Leave the device as it was found, so the caller can remove it.
        let _ = mount::unmount(device, &provision.mount_point);
    }
    finished
}

/// Grows the filesystem to its device, which a `volume resize` while
/// the kernel could not grow the device left larger than it. A failure
/// leaves it as it was, as large as before: said, not fatal.
fn fill_device(mount_point: &Path) {
    if let Err(error) = grow_filesystem(mount_point) {
        tracing::warn!(
            "the filesystem at {} may not fill its device: {error}; grow it with `btrfs filesystem resize max {}`",
            mount_point.display(),
            mount_point.display()
        );
    }
}

fn make_subvolumes(mount_point: &Path) -> Result<(), ProvisionError> {
    for name in SUBVOLUMES {
        let path = mount_point.join(name);
        if !btrfs::is_subvolume(&path) {
            btrfs::create_subvolume(mount_point, name)?;
            tracing::info!(subvolume = %path.display(), "created");
        }
    }
    Ok(())
}

/// Grows the btrfs mounted at `mount_point` to fill its device, after the
/// device grew (`btrfs filesystem resize max`); btrfs grows online.
pub fn grow_filesystem(mount_point: &Path) -> Result<(), ProvisionError> {
    command::BTRFS.run([
        "filesystem".as_ref(),
        "resize".as_ref(),
        "max".as_ref(),
        mount_point.as_os_str(),
    ])?;
    Ok(())
}

/// Takes a volume down to where its device can go: unexport, unmount, and
/// check nothing else still mounts the device.
pub fn down(device: &Path, provision: Option<&Provision>) -> Result<(), ProvisionError> {
    if let Some(provision) = provision.filter(|p| p.filesystem == Filesystem::Btrfs) {
        if let Some(export) = &provision.nfs {
            nfs::unexport(&provision.mount_point, export)?;
        }
        if let Err(error) = mount::unmount(device, &provision.mount_point) {
            if let Some(export) = &provision.nfs {
                let _ = nfs::export(&provision.mount_point, export);
            }
            return Err(error);
        }
    }
    if let Some(mount_point) = mount::mount_point_of(device) {
        return Err(ProvisionError::Mounted {
            device: device.display().to_string(),
            mount_point,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_of_the_system_are_refused() {
        let ok = [
            "/mnt/data",
            "/srv/nfs/vol",
            "/home/alice/disk",
            "/data",
            "/var/lib/vol",
        ];
        for path in ok {
            assert!(check_mount_point(Path::new(path)).is_ok(), "{path}");
        }
        let bad = [
            "/",
            "//",
            "/etc",
            "/etc/cron.d",
            "/usr/local/bin",
            "/root",
            "/home",
            "/mnt",
            "/mnt/../etc",
            "/mnt/data/..",
            "mnt/data",
            "",
            "/proc/sys",
            "/lib64/x",
            "/var/",
        ];
        for path in bad {
            assert!(check_mount_point(Path::new(path)).is_err(), "{path}");
        }
    }

    #[test]
    fn a_stored_provisioning_is_checked_like_the_flags() {
        let stored =
            r#"{"filesystem": "btrfs", "compress": "zstd:3", "mount_point": "/etc/cron.d"}"#;
        let provision: Provision = serde_json::from_str(stored).unwrap();
        let refused = provision.check().unwrap_err().to_string();
        assert!(refused.contains("system directory"), "{refused}");
        let stored = r#"{"filesystem": "btrfs", "compress": "zstd:3", "mount_point": "/mnt/v",
            "nfs": "rw,-a"}"#;
        assert!(serde_json::from_str::<Provision>(stored).is_err());
    }

    #[test]
    fn btrfs_compression_options() {
        for ok in ["zstd", "zstd:1", "zstd:15", "lzo", "zlib:9", "none"] {
            assert!(ok.parse::<BtrfsCompression>().is_ok(), "{ok}");
        }
        for bad in ["", "zstd:0", "zstd:16", "lzo:1", "gzip", "none:1", "zstd:x"] {
            assert!(bad.parse::<BtrfsCompression>().is_err(), "{bad}");
        }
        let zstd: BtrfsCompression = "zstd:3".parse().unwrap();
        assert_eq!(zstd.mount_option().as_deref(), Some("compress=zstd:3"));
        assert_eq!(
            "none".parse::<BtrfsCompression>().unwrap().mount_option(),
            None
        );
    }

    #[test]
    fn a_provision_round_trips_through_json() {
        let provision = Provision {
            filesystem: Filesystem::Btrfs,
            compress: BtrfsCompression::default(),
            mount_point: "/mnt/vol".into(),
            nfs: Some("rw,sync,10.0.0.0/24".parse().unwrap()),
            mount_options: "ssd,commit=120".parse().unwrap(),
            lifted: "suid".parse().unwrap(),
        };
        let json = serde_json::to_string(&provision).unwrap();
        assert!(
            json.contains(r#""mount_options":"ssd,commit=120""#),
            "{json}"
        );
        assert!(
            !json.contains("suid"),
            "lifts are this host's alone: {json}"
        );
        let read = serde_json::from_str::<Provision>(&json).unwrap();
        assert_eq!(read.mount_options, provision.mount_options);
        assert_eq!(read.lifted, Lifted::default());
        assert!(serde_json::from_str::<Provision>(&json.replace("zstd:3", "gzip")).is_err());
        let subvol = json.replace("ssd,commit=120", "subvol=@home");
        assert!(serde_json::from_str::<Provision>(&subvol).is_err());
        let older = r#"{"filesystem": "btrfs", "compress": "zstd:3", "mount_point": "/mnt/v"}"#;
        let older = serde_json::from_str::<Provision>(older).unwrap();
        assert!(
            older.mount_options.is_empty(),
            "written before mount options"
        );
    }
}
