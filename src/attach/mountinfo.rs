//! Reading a mount table in the `/proc/PID/mountinfo` format, and telling
//! the block devices a zeroblk daemon serves (`/dev/ublkbN`, `/dev/nbdN`
//! and their partitions) by name. Pure: the caller reads the files.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// A device number, as `major:minor`.
pub type DeviceNumber = (u32, u32);

/// One line of a mountinfo table: the fields [`super::namespace`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    id: u64,
    device: DeviceNumber,
    mount_point: PathBuf,
    source: String,
}

impl Mount {
    /// The mount's id in its table.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The `st_dev` of files on the mount: a block device's own number for
    /// most filesystems, an anonymous `0:N` for btrfs.
    pub fn device(&self) -> DeviceNumber {
        self.device
    }

    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// What was mounted, as the filesystem shows it (`/dev/ublkb0`).
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// Every mount of a mountinfo table that parses, in the table's order.
pub fn parse(table: &str) -> Vec<Mount> {
    table.lines().filter_map(parse_line).collect()
}

/// `36 35 98:0 /root /mnt/point rw,noatime master:1 - ext4 /dev/sda1 rw`:
/// mount id, parent id, device number, root, mount point, options, optional
/// fields up to `-`, then the filesystem type, the source and its options.
fn parse_line(line: &str) -> Option<Mount> {
    let fields: Vec<&str> = line.split(' ').collect();
    let id = fields.first()?.parse().ok()?;
    let device = parse_device_number(fields.get(2)?)?;
    let mount_point = PathBuf::from(OsString::from_vec(unescape(fields.get(4)?)));
    let separator = 6 + fields.get(6..)?.iter().position(|f| *f == "-")?;
    let source = fields.get(separator + 2)?;
    Some(Mount {
        id,
        device,
        mount_point,
        source: String::from_utf8_lossy(&unescape(source)).into_owned(),
    })
}

/// `259:0` (the format of mountinfo and of `/sys/class/block/*/dev`).
pub fn parse_device_number(text: &str) -> Option<DeviceNumber> {
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Undoes the octal escapes the kernel writes for a space, a tab, a
/// newline and a backslash (`\040`, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .filter(|digits| digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .map(|d| (d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
        match escaped {
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
    out
}

/// Whether `name` (a `/dev` or `/sys/class/block` entry) is a device a
/// zeroblk daemon could serve: `ublkbN` or `nbdN`, or a partition of one
/// (`ublkbNpM`, `nbdNpM`).
pub fn is_served_device_name(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("ublkb")
        .or_else(|| name.strip_prefix("nbd"))
    else {
        return false;
    };
    let (disk, partition) = match rest.split_once('p') {
        Some((disk, partition)) => (disk, Some(partition)),
        None => (rest, None),
    };
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    number(disk) && partition.is_none_or(number)
}

/// The mounts to detach, deepest mount point first, so a mount goes before
/// the one it sits in.
pub fn deepest_first<'a>(mounts: impl IntoIterator<Item = &'a Mount>) -> Vec<&'a Mount> {
    let mut mounts: Vec<&Mount> = mounts.into_iter().collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(depth(&m.mount_point)));
    mounts
}

fn depth(path: &Path) -> usize {
    path.components().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw
28 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
104 28 0:59 / /mnt/my\\040volume rw,noatime shared:60 master:3 - btrfs /dev/ublkb0 rw,compress=zstd:3,subvolid=5,subvol=/
105 104 0:59 /@home /mnt/my\\040volume/home rw,noatime - btrfs /dev/ublkb0 rw,subvolid=257,subvol=/@home
106 28 43:16 / /srv/a\\134b\\011c rw - ext4 /dev/nbd1 rw
107 28 0:60 / /run/empty rw - tmpfs  rw
";

    #[test]
    fn mountinfo_lines_are_read_with_their_optional_fields() {
        let mounts = parse(TABLE);
        assert_eq!(mounts.len(), 6);
        assert_eq!(
            mounts[2],
            Mount {
                id: 104,
                device: (0, 59),
                mount_point: PathBuf::from("/mnt/my volume"),
                source: "/dev/ublkb0".into(),
            }
        );
        assert_eq!(mounts[1].source, "/dev/nvme0n1p2");
        assert_eq!(mounts[1].device, (259, 2));
        assert_eq!(mounts[3].mount_point, Path::new("/mnt/my volume/home"));
        assert_eq!(mounts[5].source, "");
    }

    #[test]
    fn escaped_paths_are_undone() {
        let mounts = parse(TABLE);
        assert_eq!(mounts[4].mount_point, Path::new("/srv/a\\b\tc"));
        assert_eq!(unescape(r"/a\012b"), b"/a\nb");
        // Not an escape: left as it is.
        assert_eq!(unescape(r"/a\9b\04"), br"/a\9b\04");
        assert_eq!(unescape(r"\\040"), br"\ ");
    }

    #[test]
    fn lines_that_do_not_parse_are_skipped() {
        assert_eq!(parse("garbage\n\n1 2 3:4 / /x rw no-separator\n"), vec![]);
        assert_eq!(parse("x 1 0:1 / /x rw - tmpfs t rw"), vec![]);
    }

    #[test]
    fn device_numbers_parse_as_sysfs_writes_them() {
        assert_eq!(parse_device_number("259:0\n"), Some((259, 0)));
        assert_eq!(parse_device_number("43"), None);
        assert_eq!(parse_device_number("a:1"), None);
    }

    #[test]
    fn ublk_and_nbd_devices_and_their_partitions_are_told_by_name() {
        for served in ["ublkb0", "ublkb12", "ublkb3p1", "nbd0", "nbd15p2"] {
            assert!(is_served_device_name(served), "{served}");
        }
        for other in [
            "ublkc0", "ublkb", "ublkbx", "ublkb0p", "nbd", "nbd1x", "nvme0n1", "sda1", "loop0",
        ] {
            assert!(!is_served_device_name(other), "{other}");
        }
    }

    #[test]
    fn deeper_mounts_come_first() {
        let mounts = parse(TABLE);
        let order: Vec<u64> = deepest_first(&mounts).iter().map(|m| m.id).collect();
        assert_eq!(order[0], 105);
        assert!(order.iter().position(|&id| id == 105) < order.iter().position(|&id| id == 104));
        assert_eq!(*order.last().unwrap(), 28);
    }
}
