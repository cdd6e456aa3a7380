//! Quotas on subvolumes, through btrfs qgroups (`btrfs quota`, `btrfs
//! qgroup`).

use std::path::Path;

use serde::Serialize;

use super::command::BTRFS;
use super::{ProvisionError, btrfs};

/// One subvolume's usage and limit, as `quota show` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quota {
    pub qgroup: String,
    pub subvolume: String,
    /// Bytes the subvolume refers to (shared with snapshots included).
    pub referenced: u64,
    /// Bytes only this subvolume holds.
    pub exclusive: u64,
    /// The limit on `referenced`, if any.
    pub limit: Option<u64>,
}

/// Limits `mount_point/subvolume` to `limit` bytes referenced (`None`
/// lifts the limit), enabling quotas on the filesystem first.
pub fn set(mount_point: &Path, subvolume: &str, limit: Option<u64>) -> Result<(), ProvisionError> {
    let path = mount_point.join(subvolume);
    if !btrfs::is_subvolume(&path) {
        return Err(ProvisionError::Invalid(format!(
            "{} is not a btrfs subvolume: `zeroblk snapshot list` and `ls {}` show what there is",
            path.display(),
            mount_point.display()
        )));
    }
    BTRFS.run(["quota".as_ref(), "enable".as_ref(), mount_point.as_os_str()])?;
    let limit = limit.map_or_else(|| "none".to_string(), |bytes| bytes.to_string());
    BTRFS.run([
        "qgroup".as_ref(),
        "limit".as_ref(),
        limit.as_ref(),
        path.as_os_str(),
    ])?;
    Ok(())
}

/// Every subvolume's usage and limit; empty when quotas are off.
pub fn show(mount_point: &Path) -> Result<Vec<Quota>, ProvisionError> {
    let output = BTRFS.output([
        "qgroup".as_ref(),
        "show".as_ref(),
        "-re".as_ref(),
        "--raw".as_ref(),
        "--sync".as_ref(),
        mount_point.as_os_str(),
    ])?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("quotas not enabled") || stderr.contains("No such file") {
            return Ok(Vec::new());
        }
        return Err(BTRFS.failed(&output));
    }
    Ok(parse_show(&String::from_utf8_lossy(&output.stdout)))
}

/// Reads `btrfs qgroup show -re --raw` (btrfs-progs 6.x, with a Path
/// column): the rows after the dashes.
fn parse_show(text: &str) -> Vec<Quota> {
    text.lines()
        .skip_while(|line| !line.starts_with("--"))
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
            Some(Quota {
                qgroup: fields.first()?.to_string(),
                referenced: number(1)?,
                exclusive: number(2)?,
                limit: number(3),
                subvolume: fields
                    .get(5..)
                    .map(|path| path.join(" "))
                    .unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qgroup_show_is_parsed() {
        let text = "\
Qgroupid    Referenced    Exclusive  Max referenced  Max exclusive   Path
--------    ----------    ---------  --------------  -------------   ----
0/5              16384        16384            none           none   <toplevel>
0/256            16384        16384        52428800           none   @home
0/257          1048576         4096            none           none   @snapshots/my snap
";
        let rows = parse_show(text);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].subvolume, "@home");
        assert_eq!(rows[1].limit, Some(52_428_800));
        assert_eq!(rows[0].limit, None);
        assert_eq!(rows[2].subvolume, "@snapshots/my snap");
        assert_eq!(rows[2].referenced, 1_048_576);
    }
}
