//! Which snapshot each backup push sends from next: the newest snapshot
//! of a subvolume pushed to a destination stays on the source, because
//! the next incremental `btrfs send -p` needs it as its parent.
//!
//! The record is a small JSON file in the filesystem itself,
//! `@snapshots/.zeroblk-pushed.json`, so it travels with the volume
//! (snapshot listing skips it: its name is no snapshot's).
//!
//! What it promises:
//! - A change is whole or absent: written to a temporary file beside it,
//!   synced, renamed over the record, and the directory synced. Changes
//!   hold a lock on `@snapshots` (flock), so two pushes at once never lose
//!   each other's record.
//! - Destinations are kept and compared without credentials (`user:pass@`)
//!   and without a trailing `/`: the record never holds a secret, and
//!   what it returns can be printed.
//! - A damaged record is an error that names the file and the fix, never a
//!   panic; the file is mode 0600 and never followed through a symlink.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::{ProvisionError, SNAPSHOTS_DIR, snapshot};

/// The record's name in `@snapshots`.
pub const PUSHED_FILE: &str = ".zeroblk-pushed.json";
/// The version of the record's format this writes and reads.
const VERSION: u32 = 1;
/// A record larger than this is damaged: a few hundred bytes per
/// subvolume and destination.
const MAX_LEN: u64 = 1 << 20;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    version: u32,
    parents: Vec<Parent>,
}

/// The snapshot of `subvolume` last pushed to `destination`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Parent {
    subvolume: String,
    destination: String,
    snapshot: String,
}

/// How a destination is kept and compared: no `user:pass@`, no trailing
/// `/`.
fn destination_key(url: &str) -> String {
    let without_credentials = match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            let host = authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    };
    let trimmed = without_credentials.trim_end_matches('/');
    if trimmed.contains("://") || !without_credentials.contains("://") {
        trimmed.to_string()
    } else {
        without_credentials
    }
}

fn snapshots_dir(mount_point: &Path) -> PathBuf {
    mount_point.join(SNAPSHOTS_DIR)
}

fn record_path(mount_point: &Path) -> PathBuf {
    snapshots_dir(mount_point).join(PUSHED_FILE)
}

fn io_error(what: String) -> impl FnOnce(std::io::Error) -> ProvisionError {
    move |source| ProvisionError::Io { what, source }
}

/// Reads the record; none yet is an empty one.
fn load(mount_point: &Path) -> Result<Record, ProvisionError> {
    let path = record_path(mount_point);
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path);
    let file = match file {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Record {
                version: VERSION,
                parents: Vec::new(),
            });
        }
        Err(error) if error.raw_os_error() == Some(libc::ELOOP) => {
            return Err(damaged(&path, "it is a symbolic link"));
        }
        Err(error) => return Err(io_error(format!("opening {}", path.display()))(error)),
    };
    let mut text = Vec::new();
    file.take(MAX_LEN + 1)
        .read_to_end(&mut text)
        .map_err(io_error(format!("reading {}", path.display())))?;
    if text.len() as u64 > MAX_LEN {
        return Err(damaged(&path, "it is larger than 1 MiB"));
    }
    let record: Record =
        serde_json::from_slice(&text).map_err(|error| damaged(&path, &error.to_string()))?;
    if record.version != VERSION {
        return Err(ProvisionError::Invalid(format!(
            "{} is in format version {}, which this zeroblk does not know: upgrade zeroblk",
            path.display(),
            record.version
        )));
    }
    check(&record).map_err(|why| damaged(&path, &why))?;
    Ok(record)
}

fn damaged(path: &Path, reason: &str) -> ProvisionError {
    ProvisionError::Damaged {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// What a record that was written by [`record_pushed`] holds.
fn check(record: &Record) -> Result<(), String> {
    for (i, parent) in record.parents.iter().enumerate() {
        check_names(&parent.subvolume, &parent.snapshot)?;
        if parent.destination.is_empty()
            || parent.destination != destination_key(&parent.destination)
        {
            return Err(format!(
                "`{}` is not a destination it records",
                parent.destination
            ));
        }
        let twice = record.parents[..i]
            .iter()
            .any(|p| p.subvolume == parent.subvolume && p.destination == parent.destination);
        if twice {
            return Err(format!(
                "it names two parents of {} for {}",
                parent.subvolume, parent.destination
            ));
        }
    }
    Ok(())
}

/// `snapshot` must be a zeroblk snapshot of `subvolume`.
fn check_names(subvolume: &str, snapshot: &str) -> Result<(), String> {
    match snapshot::parse_name(snapshot) {
        Some((of, _, _)) if of == subvolume && !snapshot.contains('/') => Ok(()),
        _ => Err(format!("`{snapshot}` is not a snapshot of `{subvolume}`")),
    }
}

/// Replaces the record, with `@snapshots` locked by the caller.
fn store(dir: &File, mount_point: &Path, record: &Record) -> Result<(), ProvisionError> {
    let path = record_path(mount_point);
    let temporary = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(record).map_err(|error| {
        ProvisionError::Invalid(format!("cannot write {}: {error}", path.display()))
    })?;
    match std::fs::remove_file(&temporary) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_error(format!("removing {}", temporary.display()))(error));
        }
        _ => {}
    }
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temporary)
        .map_err(io_error(format!("creating {}", temporary.display())))?;
    file.write_all(&text)
        .and_then(|()| file.sync_all())
        .map_err(io_error(format!("writing {}", temporary.display())))?;
    std::fs::rename(&temporary, &path).map_err(io_error(format!(
        "renaming {} to {}",
        temporary.display(),
        path.display()
    )))?;
    dir.sync_all().map_err(io_error(format!(
        "syncing {}",
        snapshots_dir(mount_point).display()
    )))
}

/// Changes the record under an exclusive lock on `@snapshots`.
fn update<T>(
    mount_point: &Path,
    change: impl FnOnce(&mut Record) -> T,
) -> Result<T, ProvisionError> {
    let dir_path = snapshots_dir(mount_point);
    let dir = File::open(&dir_path).map_err(io_error(format!("opening {}", dir_path.display())))?;
    let dir = Flock::lock(dir, FlockArg::LockExclusive).map_err(|(_, errno)| {
        io_error(format!("locking {}", dir_path.display()))(std::io::Error::from(errno))
    })?;
    let mut record = load(mount_point)?;
    let answer = change(&mut record);
    store(&dir, mount_point, &record)?;
    Ok(answer)
}

/// Records that `snapshot` (a name in `@snapshots`) of `subvolume` is now
/// the newest pushed to `destination`, replacing the record before it.
pub fn record_pushed(
    mount_point: &Path,
    subvolume: &str,
    destination: &str,
    snapshot: &str,
) -> Result<(), ProvisionError> {
    check_names(subvolume, snapshot).map_err(|why| {
        ProvisionError::Invalid(format!(
            "{why}: a push records a snapshot of the subvolume it pushed (`zeroblk snapshot list` shows them)"
        ))
    })?;
    let path = snapshots_dir(mount_point).join(snapshot);
    if !path.is_dir() {
        return Err(ProvisionError::Invalid(format!(
            "{} is not there: a push records a snapshot that exists (`zeroblk snapshot list` shows them)",
            path.display()
        )));
    }
    let destination = destination_key(destination);
    if destination.is_empty() {
        return Err(ProvisionError::Invalid(
            "a push records the URL it pushed to, and it was empty".into(),
        ));
    }
    update(mount_point, |record| {
        record
            .parents
            .retain(|p| !(p.subvolume == subvolume && p.destination == destination));
        record.parents.push(Parent {
            subvolume: subvolume.to_string(),
            destination,
            snapshot: snapshot.to_string(),
        });
    })
}

/// The destinations (without credentials) for which `snapshot` is the
/// next push's parent; empty when it is none's.
pub fn parent_for(mount_point: &Path, snapshot: &str) -> Result<Vec<String>, ProvisionError> {
    Ok(load(mount_point)?
        .parents
        .into_iter()
        .filter(|p| p.snapshot == snapshot)
        .map(|p| p.destination)
        .collect())
}

/// The snapshot recorded as `subvolume`'s last push to `destination`, if
/// any. It may since have been deleted (with `--force`, or by hand): the
/// caller checks it is there.
pub fn pushed_parent(
    mount_point: &Path,
    subvolume: &str,
    destination: &str,
) -> Result<Option<String>, ProvisionError> {
    let destination = destination_key(destination);
    Ok(load(mount_point)?
        .parents
        .into_iter()
        .find(|p| p.subvolume == subvolume && p.destination == destination)
        .map(|p| p.snapshot))
}

/// Forgets `snapshot` as a parent (it is being deleted): the next push to
/// each destination it was the parent for sends a full stream. Returns
/// those destinations.
pub fn forget(mount_point: &Path, snapshot: &str) -> Result<Vec<String>, ProvisionError> {
    if parent_for(mount_point, snapshot)?.is_empty() {
        return Ok(Vec::new());
    }
    update(mount_point, |record| {
        let (forgotten, kept) = std::mem::take(&mut record.parents)
            .into_iter()
            .partition(|p| p.snapshot == snapshot);
        record.parents = kept;
        forgotten
            .into_iter()
            .map(|p: Parent| p.destination)
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::os::unix::fs::PermissionsExt;

    /// A mount point with `@snapshots` and a snapshot of each (subvolume,
    /// hour) in it: plain directories, since the record is plain files.
    fn volume(snapshots: &[(&str, u32)]) -> (tempfile::TempDir, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let names = snapshots
            .iter()
            .map(|&(subvolume, hour)| {
                let time = chrono::Utc
                    .with_ymd_and_hms(2026, 11, 22, hour, 0, 0)
                    .unwrap();
                let name = snapshot::snapshot_name(subvolume, time, None);
                std::fs::create_dir_all(snapshots_dir(dir.path()).join(&name)).unwrap();
                name
            })
            .collect();
        (dir, names)
    }

    #[test]
    fn a_push_replaces_the_parent_of_its_subvolume_and_destination() {
        let (dir, names) = volume(&[("@home", 1), ("@home", 2), ("@", 3)]);
        let mount = dir.path();
        let (first, second, root) = (&names[0], &names[1], &names[2]);
        assert_eq!(pushed_parent(mount, "@home", "s3://b/x").unwrap(), None);
        assert!(parent_for(mount, first).unwrap().is_empty());

        record_pushed(mount, "@home", "s3://b/x/", first).unwrap();
        assert_eq!(
            pushed_parent(mount, "@home", "s3://b/x").unwrap().as_ref(),
            Some(first)
        );
        assert_eq!(parent_for(mount, first).unwrap(), ["s3://b/x"]);

        record_pushed(mount, "@home", "s3://b/x", second).unwrap();
        record_pushed(mount, "@home", "file:///backups/", first).unwrap();
        record_pushed(mount, "@", "s3://b/x", root).unwrap();
        assert_eq!(parent_for(mount, first).unwrap(), ["file:///backups"]);
        assert_eq!(parent_for(mount, second).unwrap(), ["s3://b/x"]);
        assert_eq!(parent_for(mount, root).unwrap(), ["s3://b/x"]);
        assert_eq!(
            pushed_parent(mount, "@home", "s3://b/x").unwrap().as_ref(),
            Some(second)
        );
        assert_eq!(pushed_parent(mount, "@", "s3://other").unwrap(), None);

        assert_eq!(forget(mount, first).unwrap(), ["file:///backups"]);
        assert!(parent_for(mount, first).unwrap().is_empty());
        assert_eq!(
            pushed_parent(mount, "@home", "file:///backups").unwrap(),
            None
        );
        assert_eq!(parent_for(mount, second).unwrap(), ["s3://b/x"], "kept");
        assert!(forget(mount, first).unwrap().is_empty());

        let mode = std::fs::metadata(record_path(mount))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(snapshots_dir(mount))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|name| name.to_string_lossy().starts_with('.'))
            .collect();
        assert_eq!(left, [PUSHED_FILE], "no temporary file left");
    }

    #[test]
    fn credentials_are_never_recorded_nor_returned() {
        let (dir, names) = volume(&[("@", 1)]);
        let mount = dir.path();
        record_pushed(mount, "@", "s3://AKIA:secret@bucket/vol/", &names[0]).unwrap();
        let text = std::fs::read_to_string(record_path(mount)).unwrap();
        assert!(!text.contains("secret") && !text.contains("AKIA"), "{text}");
        assert_eq!(parent_for(mount, &names[0]).unwrap(), ["s3://bucket/vol"]);
        assert_eq!(
            pushed_parent(mount, "@", "s3://other:key@bucket/vol")
                .unwrap()
                .as_ref(),
            Some(&names[0])
        );
        assert_eq!(destination_key("file:///"), "file:///");
        assert_eq!(destination_key("s3://b/a@b/"), "s3://b/a@b");
        assert_eq!(destination_key("/plain/dir/"), "/plain/dir");
    }

    #[test]
    fn a_damaged_record_names_the_file_and_the_fix() {
        let (dir, names) = volume(&[("@", 1)]);
        let mount = dir.path();
        let path = record_path(mount);
        let entry = |snapshot: &str| {
            format!(
                r#"{{"version":1,"parents":[{{"subvolume":"@","destination":"s3://b","snapshot":"{snapshot}"}}]}}"#
            )
        };
        let damaged = [
            "{not json".to_string(),
            String::new(),
            r#"{"version":1}"#.to_string(),
            entry("@home.2026-11-22T010000Z"),
            entry("../../etc"),
            entry(&names[0]).replace("s3://b", "s3://k:s@b"),
            " ".repeat(MAX_LEN as usize + 1),
        ];
        for text in damaged {
            std::fs::write(&path, &text).unwrap();
            for error in [
                parent_for(mount, &names[0]).unwrap_err(),
                pushed_parent(mount, "@", "s3://b").unwrap_err(),
                record_pushed(mount, "@", "s3://b", &names[0]).unwrap_err(),
            ] {
                let said = error.to_string();
                assert!(matches!(error, ProvisionError::Damaged { .. }), "{said}");
                assert!(said.contains(&path.display().to_string()), "{said}");
                assert!(said.contains("delete it"), "{said}");
            }
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                text,
                "left as it was"
            );
        }
        std::fs::write(&path, entry(&names[0]).replace(":1,", ":2,")).unwrap();
        let newer = parent_for(mount, &names[0]).unwrap_err().to_string();
        assert!(newer.contains("upgrade zeroblk"), "{newer}");
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        let linked = parent_for(mount, &names[0]).unwrap_err().to_string();
        assert!(linked.contains("symbolic link"), "{linked}");
    }

    #[test]
    fn only_existing_snapshots_of_the_subvolume_are_recorded() {
        let (dir, names) = volume(&[("@home", 1)]);
        let mount = dir.path();
        for (subvolume, snapshot) in [
            ("@", names[0].as_str()),
            ("@home", "@home.2026-11-22T050000Z"),
            ("@home", "@home"),
        ] {
            assert!(
                record_pushed(mount, subvolume, "s3://b", snapshot).is_err(),
                "{subvolume} {snapshot}"
            );
        }
        assert!(record_pushed(mount, "@home", "", &names[0]).is_err());
        assert!(!record_path(mount).exists());
    }

    #[test]
    fn pushes_at_once_keep_each_others_record() {
        let subvolumes = ["@a", "@b", "@c", "@d"];
        let snapshots: Vec<_> = subvolumes.iter().map(|s| (*s, 1)).collect();
        let (dir, names) = volume(&snapshots);
        std::thread::scope(|scope| {
            for (subvolume, name) in subvolumes.iter().zip(&names) {
                let mount = dir.path();
                scope.spawn(move || {
                    for round in 0..10 {
                        let destination = format!("s3://b/{round}");
                        record_pushed(mount, subvolume, &destination, name).unwrap();
                    }
                });
            }
        });
        for name in &names {
            assert_eq!(parent_for(dir.path(), name).unwrap().len(), 10, "{name}");
        }
    }
}
