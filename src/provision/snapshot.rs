//! Snapshots of a provisioned filesystem's subvolumes, in `@snapshots`.
//!
//! A snapshot of `@home` taken at 05:51:16 UTC on 22 November 2026 with
//! the label `before-upgrade` is `@snapshots/@home.2026-11-22T055116Z.before-upgrade`:
//! names sort by subvolume, then time, and say where they came from.

use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;

use super::{ProvisionError, SNAPSHOTS_DIR, btrfs};

const TIME_FORMAT: &str = "%Y-%m-%dT%H%M%SZ";
/// Length of a formatted time, e.g. `2026-11-22T055116Z`.
const TIME_LEN: usize = 18;
/// The label of the snapshot a rollback keeps of the state it replaces.
pub const PRE_ROLLBACK_LABEL: &str = "pre-rollback";

/// A snapshot in `@snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub name: String,
    pub subvolume: String,
    pub created: DateTime<Utc>,
    pub label: Option<String>,
    pub read_only: bool,
    pub path: PathBuf,
    /// Always false: zeroblk named it (see [`super::foreign`] for the
    /// others).
    pub foreign: bool,
}

/// The name of a snapshot of `subvolume` taken at `time`.
pub fn snapshot_name(subvolume: &str, time: DateTime<Utc>, label: Option<&str>) -> String {
    let time = time.format(TIME_FORMAT);
    match label {
        Some(label) => format!("{subvolume}.{time}.{label}"),
        None => format!("{subvolume}.{time}"),
    }
}

/// Reads a snapshot name back: (subvolume, time, label).
pub fn parse_name(name: &str) -> Option<(String, DateTime<Utc>, Option<String>)> {
    name.match_indices('.').find_map(|(dot, _)| {
        let rest = &name[dot + 1..];
        let time = rest.get(..TIME_LEN)?;
        let time = NaiveDateTime::parse_from_str(time, TIME_FORMAT).ok()?;
        let label = match &rest[TIME_LEN..] {
            "" => None,
            tail => Some(tail.strip_prefix('.')?.to_string()),
        };
        Some((name[..dot].to_string(), time.and_utc(), label))
    })
}

fn validate_label(label: &str) -> Result<(), ProvisionError> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_');
    if label.is_empty() || label.len() > 64 || !label.chars().all(ok) {
        return Err(ProvisionError::Invalid(format!(
            "`{label}` cannot label a snapshot: use up to 64 letters, digits, `-` and `_`"
        )));
    }
    Ok(())
}

fn snapshots_dir(mount_point: &Path) -> PathBuf {
    mount_point.join(SNAPSHOTS_DIR)
}

fn require_subvolume(path: &Path) -> Result<(), ProvisionError> {
    if btrfs::is_subvolume(path) {
        Ok(())
    } else {
        Err(ProvisionError::Invalid(format!(
            "{} is not a btrfs subvolume: is the volume provisioned and mounted (`zeroblk attach NAME --mount-point DIR`)?",
            path.display()
        )))
    }
}

/// Takes a snapshot of `mount_point/subvolume` into `@snapshots`.
pub fn create(
    mount_point: &Path,
    subvolume: &str,
    label: Option<&str>,
    writable: bool,
    now: DateTime<Utc>,
) -> Result<Snapshot, ProvisionError> {
    if let Some(label) = label {
        validate_label(label)?;
    }
    let source = mount_point.join(subvolume);
    require_subvolume(&source)?;
    let dir = snapshots_dir(mount_point);
    require_subvolume(&dir)?;
    let name = snapshot_name(subvolume, now, label);
    if dir.join(&name).exists() {
        return Err(ProvisionError::Invalid(format!(
            "snapshot {name} exists already: give it another --name, or take it a second later"
        )));
    }
    btrfs::snapshot(&source, &dir, &name, !writable)?;
    describe(mount_point, &name)
}

/// Describes the snapshot `name`.
pub fn describe(mount_point: &Path, name: &str) -> Result<Snapshot, ProvisionError> {
    let path = snapshots_dir(mount_point).join(name);
    let (subvolume, created, label) = parse_name(name).ok_or_else(|| {
        ProvisionError::Invalid(format!(
            "`{name}` is not a zeroblk snapshot name (SUBVOLUME.YYYY-MM-DDTHHMMSSZ[.LABEL]): `zeroblk snapshot list` shows them"
        ))
    })?;
    require_subvolume(&path)?;
    Ok(Snapshot {
        name: name.to_string(),
        subvolume,
        created,
        label,
        read_only: btrfs::is_read_only(&path)?,
        path,
        foreign: false,
    })
}

/// Every zeroblk snapshot of the filesystem, oldest first.
pub fn list(mount_point: &Path) -> Result<Vec<Snapshot>, ProvisionError> {
    let dir = snapshots_dir(mount_point);
    require_subvolume(&dir)?;
    let entries = std::fs::read_dir(&dir).map_err(|source| ProvisionError::Io {
        what: format!("listing {}", dir.display()),
        source,
    })?;
    let mut snapshots: Vec<Snapshot> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| parse_name(name).is_some())
        .filter_map(|name| describe(mount_point, &name).ok())
        .collect();
    snapshots.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    Ok(snapshots)
}

/// Deletes the snapshot `name`.
pub fn delete(mount_point: &Path, name: &str) -> Result<(), ProvisionError> {
    describe(mount_point, name)?;
    btrfs::delete_subvolume(&snapshots_dir(mount_point), name)
}

/// Puts the snapshot `name` back in place of its subvolume. The current
/// subvolume is kept first, read-only, as a `pre-rollback` snapshot (it is
/// moved, not copied, so processes that have files open in it keep them).
/// Returns that kept snapshot.
pub fn rollback(
    mount_point: &Path,
    name: &str,
    now: DateTime<Utc>,
) -> Result<Snapshot, ProvisionError> {
    let snapshot = describe(mount_point, name)?;
    let current = mount_point.join(&snapshot.subvolume);
    require_subvolume(&current)?;
    let dir = snapshots_dir(mount_point);
    let kept_name = snapshot_name(&snapshot.subvolume, now, Some(PRE_ROLLBACK_LABEL));
    let kept = dir.join(&kept_name);
    std::fs::rename(&current, &kept).map_err(|source| ProvisionError::Io {
        what: format!("moving {} to {}", current.display(), kept.display()),
        source,
    })?;
    let restored = btrfs::snapshot(&snapshot.path, mount_point, &snapshot.subvolume, false)
        .and_then(|()| btrfs::set_read_only(&kept, true));
    if let Err(error) = restored {
        // Put the current state back where it was.
        if !current.exists() {
            let _ = std::fs::rename(&kept, &current);
        }
        return Err(error);
    }
    describe(mount_point, &kept_name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, h, m, s).unwrap()
    }

    #[test]
    fn names_round_trip_and_sort_by_time() {
        let name = snapshot_name("@home", at(5, 51, 16), Some("before-upgrade"));
        assert_eq!(name, "@home.2026-11-22T055116Z.before-upgrade");
        assert_eq!(
            parse_name(&name),
            Some(("@home".into(), at(5, 51, 16), Some("before-upgrade".into())))
        );
        let plain = snapshot_name("@", at(9, 0, 0), None);
        assert_eq!(parse_name(&plain), Some(("@".into(), at(9, 0, 0), None)));
        assert!(snapshot_name("@", at(10, 0, 0), None) > plain);
        let dotted = snapshot_name("@var.log", at(1, 2, 3), None);
        assert_eq!(parse_name(&dotted).unwrap().0, "@var.log");
    }

    #[test]
    fn other_names_are_not_snapshots() {
        for name in [
            "@home",
            "@home.2026-11-22",
            "@.2026-13-22T000000Z",
            "@.2026-11-22T000000Zx",
        ] {
            assert_eq!(parse_name(name), None, "{name}");
        }
    }

    #[test]
    fn labels_are_checked() {
        assert!(validate_label("nightly_2").is_ok());
        for bad in ["", "a b", "a/b", "a.b"] {
            assert!(validate_label(bad).is_err(), "{bad:?}");
        }
    }
}
