//! A volume's folder in the cache directory: `NAME.UUID`, holding its
//! write-back log (`log/`), its disk cache (`chunks/`) and the `lock` that
//! says a process on this host has it open.
//!
//! It promises that the folder is this user's own, never a symlink or a
//! folder another user made in a shared cache dir, and private (0700),
//! also when an older version left it open to others; and that it is made
//! durably (with every directory that leads to it), so a log inside it
//! survives a power cut.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::error::{EngineError, Result};
use crate::format::Superblock;

/// The folder in `cache_dir` that holds a volume's log and cached chunks.
pub fn volume_dir(cache_dir: &Path, superblock: &Superblock) -> PathBuf {
    cache_dir.join(format!("{}.{}", superblock.name, superblock.uuid))
}

/// Makes `dir` durably if it is missing, checks that it is this user's
/// own folder, and makes it private.
pub(super) fn prepare(dir: &Path) -> std::io::Result<()> {
    super::log::create_dir_durably(dir)?;
    check_own_folder(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Takes the lock that says a process on this host has the volume open;
/// it is let go when the returned lock is dropped.
pub(super) fn lock(dir: &Path, name: &str) -> Result<Flock<File>> {
    let path = dir.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|source| EngineError::CacheDir {
            path: path.clone(),
            source,
        })?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| EngineError::Busy {
        name: name.to_string(),
        path,
    })
}

/// Whether `dir` is a plain directory of this process's user.
fn check_own_folder(dir: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    if crate::process::is_own_dir(&meta) {
        return Ok(());
    }
    let me = nix::unistd::geteuid().as_raw();
    Err(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!(
            "not a directory of user {me} (owner {}, or a symlink): remove it",
            meta.uid()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("v.uuid");
        prepare(&folder).unwrap();
        let mode = std::fs::metadata(&folder).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let first = lock(&folder, "v").unwrap();
        assert!(matches!(lock(&folder, "v"), Err(EngineError::Busy { .. })));
        drop(first);
        lock(&folder, "v").unwrap();
    }

    #[test]
    fn a_symlink_is_no_volume_folder() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let link = dir.path().join("v.uuid");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let refused = prepare(&link).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::PermissionDenied);
    }
}
