//! What a device holds, making btrfs on it, and mounting it.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MntFlags;

use super::command::{BLKID, MKFS_BTRFS};
use super::{Provision, ProvisionError};

/// What `blkid` finds on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    Nothing,
    Btrfs,
    /// A filesystem or partition table that is not btrfs, as blkid names it.
    Other(String),
}

/// Looks at what `device` holds, from its own bytes (not blkid's cache).
pub fn probe(device: &Path) -> Result<Contents, ProvisionError> {
    let output = BLKID.output([
        "-p".as_ref(),
        "-o".as_ref(),
        "export".as_ref(),
        device.as_os_str(),
    ])?;
    // blkid exits 2 when it finds nothing it knows.
    match output.status.code() {
        Some(2) => return Ok(Contents::Nothing),
        Some(0) => {}
        _ => return Err(BLKID.failed(&output)),
    }
    Ok(contents_from_blkid(&String::from_utf8_lossy(
        &output.stdout,
    )))
}

fn contents_from_blkid(export: &str) -> Contents {
    let field = |name: &str| {
        export
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    match (field("TYPE"), field("PTTYPE")) {
        (Some(kind), _) if kind == "btrfs" => Contents::Btrfs,
        (Some(kind), _) => Contents::Other(format!("a filesystem ({kind})")),
        (None, Some(table)) => Contents::Other(format!("a partition table ({table})")),
        (None, None) => Contents::Nothing,
    }
}

/// Makes btrfs on an empty device, labelled `label`. `-K` skips the
/// full-device discard: a fresh volume reads as zeroes already, and a
/// discard of every chunk would be wasted requests.
pub fn make_btrfs(device: &Path, label: &str) -> Result<(), ProvisionError> {
    MKFS_BTRFS.run([
        "-q".as_ref(),
        "-K".as_ref(),
        "-L".as_ref(),
        label.as_ref(),
        device.as_os_str(),
    ])?;
    tracing::info!(device = %device.display(), label, "made btrfs");
    Ok(())
}

/// Mounts the btrfs on `device` at the provisioning's mount point (created
/// if missing) with `compress`, `discard=async`, `noatime`, `nosuid` and
/// `nodev`, less what the provisioning's mount options replace or lift,
/// plus those options; nothing to do when it is mounted there already.
pub fn mount_btrfs(device: &Path, provision: &Provision) -> Result<(), ProvisionError> {
    let mount_point = &provision.mount_point;
    std::fs::create_dir_all(mount_point).map_err(|source| ProvisionError::Io {
        what: format!("creating the mount point {}", mount_point.display()),
        source,
    })?;
    match source_mounted_at(mount_point) {
        Some(source) if same_file(&source, device) => return Ok(()),
        Some(other) => {
            return Err(ProvisionError::MountPointTaken {
                mount_point: mount_point.to_path_buf(),
                other,
            });
        }
        None => {}
    }
    let flags = provision.lifted.flags() | provision.mount_options.flags();
    let options = provision.mount_options.data(&provision.compress);
    nix::mount::mount(
        Some(device),
        mount_point,
        Some("btrfs"),
        flags,
        Some(options.as_str()),
    )
    .map_err(|errno| ProvisionError::Io {
        what: format!(
            "mounting {} at {} ({options})",
            device.display(),
            mount_point.display()
        ),
        source: errno.into(),
    })?;
    tracing::info!(device = %device.display(), mount_point = %mount_point.display(), %options, "mounted");
    Ok(())
}

/// Unmounts `mount_point` if `device` is mounted there; a busy mount stays.
pub fn unmount(device: &Path, mount_point: &Path) -> Result<(), ProvisionError> {
    match source_mounted_at(mount_point) {
        Some(source) if same_file(&source, device) => {}
        _ => return Ok(()),
    }
    match nix::mount::umount2(mount_point, MntFlags::empty()) {
        Ok(()) => {
            tracing::info!(mount_point = %mount_point.display(), "unmounted");
            Ok(())
        }
        Err(Errno::EBUSY) => Err(ProvisionError::Busy {
            mount_point: mount_point.to_path_buf(),
        }),
        Err(errno) => Err(ProvisionError::Io {
            what: format!("unmounting {}", mount_point.display()),
            source: errno.into(),
        }),
    }
}

/// Where `device` is mounted in this mount namespace, if anywhere.
pub fn mount_point_of(device: &Path) -> Option<String> {
    mounts()
        .into_iter()
        .find(|(source, _)| same_file(Path::new(source), device))
        .map(|(_, target)| target.display().to_string())
}

/// The mount point of the filesystem that holds `path` (canonical): the
/// longest mount target it lies under.
pub(super) fn mount_holding(path: &Path) -> Option<PathBuf> {
    mounts()
        .into_iter()
        .map(|(_, target)| target)
        .filter(|target| path.starts_with(target))
        .max_by_key(|target| target.components().count())
}

/// The source of the newest mount on `mount_point`.
fn source_mounted_at(mount_point: &Path) -> Option<String> {
    let wanted = mount_point.canonicalize().ok()?;
    mounts()
        .into_iter()
        .rev()
        .find(|(_, target)| *target == wanted)
        .map(|(source, _)| source)
}

/// (source, target) of every mount, oldest first.
fn mounts() -> Vec<(String, PathBuf)> {
    let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    table
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let source = unescape(fields.next()?);
            let target = unescape(fields.next()?);
            Some((source, PathBuf::from(target)))
        })
        .collect()
}

/// Undoes the octal escapes (`\040` for a space) of /proc/self/mounts.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|_| bytes[i] == b'\\');
        match octal.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn same_file(a: impl AsRef<Path>, b: impl AsRef<Path>) -> bool {
    match (a.as_ref().canonicalize(), b.as_ref().canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkid_output_is_read_as_contents() {
        let btrfs = "DEVNAME=/dev/ublkb0\nLABEL=vol\nUUID=x\nTYPE=btrfs\nUSAGE=filesystem\n";
        assert_eq!(contents_from_blkid(btrfs), Contents::Btrfs);
        assert_eq!(
            contents_from_blkid("DEVNAME=/dev/x\nTYPE=ext4\n"),
            Contents::Other("a filesystem (ext4)".into())
        );
        assert_eq!(
            contents_from_blkid("DEVNAME=/dev/x\nPTUUID=1\nPTTYPE=gpt\n"),
            Contents::Other("a partition table (gpt)".into())
        );
        assert_eq!(contents_from_blkid(""), Contents::Nothing);
    }

    #[test]
    fn mount_table_escapes_are_undone() {
        assert_eq!(unescape(r"/mnt/my\040disk"), "/mnt/my disk");
        assert_eq!(unescape(r"/a\\b"), r"/a\\b");
        assert_eq!(unescape("plain"), "plain");
    }
}
