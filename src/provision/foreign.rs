//! Snapshots zeroblk did not name: read-only subvolumes anywhere in a
//! provisioned filesystem other than zeroblk's own `@snapshots/NAME`,
//! such as snapper's `.snapshots/N/snapshot`, a cron script's `btrfs
//! subvolume snapshot -r`, or what `btrfs receive` made.
//!
//! `zeroblk snapshot list --all` shows them, and `zeroblk snapshot delete`
//! takes one by its path. Nothing else touches them: prune, rollback and
//! backups work on zeroblk's names alone. A path is deleted only when it
//! is a snapshot (a read-only subvolume) of the filesystem zeroblk
//! provisioned and mounted there, and never the top of that filesystem
//! nor its `@`, `@home` or `@snapshots`.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::btrfs::Beneath;
use super::command::BTRFS;
use super::{ProvisionError, SNAPSHOTS_DIR, SUBVOLUMES, btrfs, mount, snapshot};

/// A read-only subvolume zeroblk did not name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForeignSnapshot {
    /// Its path from the top of the filesystem (`@home/.snapshots/1/snapshot`).
    pub name: String,
    /// The subvolume it is a snapshot of, when that is still there.
    pub subvolume: Option<String>,
    /// When btrfs made it.
    pub created: Option<DateTime<Utc>>,
    pub read_only: bool,
    pub path: PathBuf,
    /// Always true: zeroblk did not name it.
    pub foreign: bool,
}

/// Every read-only subvolume of the filesystem mounted at `mount_point`
/// that zeroblk did not name, oldest first.
pub fn list(mount_point: &Path) -> Result<Vec<ForeignSnapshot>, ProvisionError> {
    let top = require_provisioned(mount_point)?;
    let subvolumes: Vec<(String, btrfs::SubvolumeInfo)> = subvolume_paths(&top)?
        .into_iter()
        // One deleted since the listing, or out of reach, is left out.
        .filter_map(|name| {
            let info = btrfs::subvolume_info(&top.join(&name)).ok()?;
            Some((name, info))
        })
        .collect();
    let source_of = |info: &btrfs::SubvolumeInfo| {
        let parent = info.parent_uuid()?;
        let (name, _) = subvolumes.iter().find(|(_, s)| s.uuid() == parent)?;
        Some(name.clone())
    };
    let mut foreign: Vec<ForeignSnapshot> = subvolumes
        .iter()
        .filter(|(name, info)| info.read_only() && !is_zeroblks_own(name))
        .map(|(name, info)| ForeignSnapshot {
            name: name.clone(),
            subvolume: source_of(info),
            created: info.created(),
            read_only: true,
            path: top.join(name),
            foreign: true,
        })
        .collect();
    foreign.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    Ok(foreign)
}

/// Whether `name` (a path from the top) is one zeroblk made: a layout
/// subvolume, or a snapshot in `@snapshots` under a zeroblk name.
fn is_zeroblks_own(name: &str) -> bool {
    if SUBVOLUMES.contains(&name) {
        return true;
    }
    name.strip_prefix(SNAPSHOTS_DIR)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|rest| snapshot::parse_name(rest).is_some())
}

/// The path from the top of every subvolume of the filesystem mounted at
/// `mount_point` (`btrfs subvolume list`).
fn subvolume_paths(mount_point: &Path) -> Result<Vec<String>, ProvisionError> {
    let listing = BTRFS.run([
        std::ffi::OsStr::new("subvolume"),
        "list".as_ref(),
        mount_point.as_os_str(),
    ])?;
    Ok(paths_in(&listing))
}

/// The paths of `btrfs subvolume list`'s lines
/// (`ID 259 gen 7 top level 257 path @home/.snapshots/1/snapshot`).
fn paths_in(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| Some(line.split_once(" path ")?.1.to_string()))
        .collect()
}

/// A snapshot [`resolve`] checked: it names it by its subvolume id, so
/// that [`delete`] deletes what was checked, whatever the path names by
/// then.
#[derive(Debug)]
pub struct CheckedSnapshot {
    top: PathBuf,
    id: u64,
    /// Its path from the top, as it was when checked.
    from_top: PathBuf,
    shown: PathBuf,
}

impl CheckedSnapshot {
    /// Its path from the top of the filesystem, as it was when checked.
    pub fn path_from_top(&self) -> &Path {
        &self.from_top
    }
}

/// The snapshot `given` names (a path, absolute or from the top of the
/// filesystem mounted at `mount_point`), checked to be one that
/// `snapshot delete` may delete: a read-only subvolume of that
/// filesystem, and none of zeroblk's layout. The path is resolved once,
/// beneath the top, following no symbolic link and crossing no mount
/// (a user who owns a directory on the way could otherwise swap it
/// between the check and the delete).
pub fn resolve(mount_point: &Path, given: &Path) -> Result<CheckedSnapshot, ProvisionError> {
    let top = require_provisioned(mount_point)?;
    let refuse = |why: String| ProvisionError::Invalid(format!("{} {why}", given.display()));
    let relative = beneath_top(&top, mount_point, given).ok_or_else(|| {
        refuse(format!(
            "is outside the filesystem mounted at {}: zeroblk deletes snapshots of the volume it names only",
            top.display()
        ))
    })?;
    let top_dir = open_top(&top)?;
    let opened = btrfs::open_beneath(&top_dir, &relative).map_err(|why| match why {
        Beneath::Missing => refuse(format!(
            "does not exist: `zeroblk snapshot list --all {}` shows the snapshots there",
            mount_point.display()
        )),
        Beneath::SymbolicLink => refuse(
            "is, or goes through, a symbolic link: name the snapshot by its own path (`zeroblk snapshot list --all` shows them)".into(),
        ),
        Beneath::Elsewhere => refuse(format!(
            "is outside {}, or on another filesystem mounted inside it: zeroblk deletes snapshots of the volume it names only",
            top.display()
        )),
        Beneath::Failed(source) => ProvisionError::Io {
            what: format!("opening {}", given.display()),
            source,
        },
    })?;
    let Some(id) = opened.subvolume_id() else {
        return Err(refuse(
            "is not a subvolume: name a snapshot itself (`zeroblk snapshot list --all` shows them)"
                .into(),
        ));
    };
    if layout_ids(&top_dir).contains(&id) {
        return Err(refuse(
            "is part of the filesystem's layout (its top, @, @home or @snapshots), not a snapshot: it is never deleted".into(),
        ));
    }
    if !opened.is_read_only()? {
        return Err(refuse(format!(
            "is a writable subvolume, not a snapshot: zeroblk deletes read-only snapshots only; delete a subvolume with `btrfs subvolume delete {}` if it is not wanted",
            top.join(&relative).display()
        )));
    }
    Ok(CheckedSnapshot {
        top,
        id,
        from_top: relative,
        shown: given.to_path_buf(),
    })
}

/// `given` as a path from `top` (the canonical mount point, which the
/// user may have named as `mount_point`), if it is under it.
fn beneath_top(top: &Path, mount_point: &Path, given: &Path) -> Option<PathBuf> {
    let relative = match given.is_absolute() {
        false => given.to_path_buf(),
        true => given
            .strip_prefix(top)
            .or_else(|_| given.strip_prefix(mount_point))
            .ok()?
            .to_path_buf(),
    };
    Some(match relative.as_os_str().is_empty() {
        true => PathBuf::from("."),
        false => relative,
    })
}

fn open_top(top: &Path) -> Result<std::fs::File, ProvisionError> {
    std::fs::File::open(top).map_err(|source| ProvisionError::Io {
        what: format!("opening {}", top.display()),
        source,
    })
}

/// The subvolume ids of the top and of zeroblk's `@`, `@home` and
/// `@snapshots`.
fn layout_ids(top: &std::fs::File) -> Vec<u64> {
    std::iter::once(".")
        .chain(SUBVOLUMES)
        .filter_map(|name| {
            btrfs::open_beneath(top, Path::new(name))
                .ok()?
                .subvolume_id()
        })
        .collect()
}

/// Deletes the snapshot [`resolve`] checked, by its subvolume id.
pub fn delete(snapshot: &CheckedSnapshot) -> Result<(), ProvisionError> {
    let top = open_top(&snapshot.top)?;
    btrfs::delete_subvolume_by_id(&top, snapshot.id, &snapshot.shown)
}

/// The canonical top of the provisioned filesystem mounted at
/// `mount_point`: it must be a mount point, with zeroblk's `@snapshots`.
fn require_provisioned(mount_point: &Path) -> Result<PathBuf, ProvisionError> {
    let not_provisioned = || {
        ProvisionError::Invalid(format!(
            "{} is not the mount point of a zeroblk-provisioned btrfs (one with @snapshots at its top): name an attached volume or its mount point",
            mount_point.display()
        ))
    };
    let top = mount_point.canonicalize().map_err(|_| not_provisioned())?;
    let is_mount_point = mount::mount_holding(&top).as_deref() == Some(top.as_path());
    if !is_mount_point || !btrfs::is_subvolume(&top.join(SNAPSHOTS_DIR)) {
        return Err(not_provisioned());
    }
    Ok(top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_read_from_the_listing_spaces_and_all() {
        let listing = "ID 256 gen 9 top level 5 path @\n\
            ID 259 gen 7 top level 257 path @home/.snapshots/1/snapshot\n\
            ID 260 gen 8 top level 258 path @snapshots/cron 2026\n";
        assert_eq!(
            paths_in(listing),
            ["@", "@home/.snapshots/1/snapshot", "@snapshots/cron 2026"]
        );
    }

    #[test]
    fn zeroblks_own_are_the_layout_and_its_names_in_snapshots() {
        for own in [
            "@",
            "@home",
            "@snapshots",
            "@snapshots/@home.2026-11-22T055116Z.nightly",
        ] {
            assert!(is_zeroblks_own(own), "{own}");
        }
        for foreign in [
            "@snapshots/1/snapshot",
            "@snapshots/cron-2026-11-22",
            "@home/.snapshots/1/snapshot",
            "backup/@home.2026-11-22T055116Z",
            "@homes",
        ] {
            assert!(!is_zeroblks_own(foreign), "{foreign}");
        }
    }
}
