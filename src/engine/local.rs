//! A volume's folder in the cache directory: `NAME.UUID`, holding its
//! write-back log (`log/`), its disk cache (`chunks/`) and the `lock` that
//! says a process on this host has it open. A volume opened read-only
//! has a folder of its own instead, for its disk cache alone
//! ([`ReaderDir`]): it shares nothing with the writer's.
//!
//! It promises that the folder is this user's own, never a symlink or a
//! folder another user made in a shared cache dir, and private (0700),
//! also when an older version left it open to others; and that it is made
//! durably (with every directory that leads to it), so a log inside it
//! survives a power cut.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    let file = lock_file(dir).map_err(|source| EngineError::CacheDir {
        path: path.clone(),
        source,
    })?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| EngineError::Busy {
        name: name.to_string(),
        path,
    })
}

/// A reader's folder in the cache directory, `readers/NAME.UUID.RANDOM`:
/// private, locked while the reader has it, and removed when dropped. It
/// is made as `.making-...` and gets its name only once locked, so a named
/// folder whose lock is free is one a crashed reader left: it goes when
/// the next reader opens.
pub(super) struct ReaderDir {
    path: PathBuf,
    _lock: Flock<File>,
}

/// A folder still being made younger than this is never taken for a
/// crashed reader's: its reader may be between making it and locking it.
const READER_DIR_SETTLES: Duration = Duration::from_secs(60);

/// What a reader's folder is called until it is locked.
const MAKING: &str = ".making-";

impl ReaderDir {
    /// Makes a folder for a reader of the volume `superblock` describes,
    /// after removing those crashed readers left.
    pub fn create(cache_dir: &Path, superblock: &Superblock) -> std::io::Result<ReaderDir> {
        let readers = cache_dir.join("readers");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&readers)?;
        check_own_folder(&readers)?;
        std::fs::set_permissions(&readers, std::fs::Permissions::from_mode(0o700))?;
        remove_abandoned(&readers);
        let name = format!(
            "{}.{}.{:016x}",
            superblock.name,
            superblock.uuid,
            fastrand::u64(..)
        );
        let making = readers.join(format!("{MAKING}{name}"));
        std::fs::DirBuilder::new().mode(0o700).create(&making)?;
        let lock = lock_file(&making)?;
        let lock = Flock::lock(lock, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| std::io::Error::from(errno))?;
        // The lock is on the open file: it holds across the rename.
        let path = readers.join(name);
        std::fs::rename(&making, &path)?;
        Ok(ReaderDir { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ReaderDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "cannot remove a reader's cache folder; the next reader to open removes it");
        }
    }
}

/// Removes the folders in `readers` whose reader is gone: their lock is
/// free (and, for one still being made, it settled).
fn remove_abandoned(readers: &Path) {
    let Ok(entries) = std::fs::read_dir(readers) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let being_made = entry.file_name().to_string_lossy().starts_with(MAKING);
        let settled = std::fs::symlink_metadata(&path)
            .ok()
            .filter(|meta| meta.is_dir())
            .and_then(|meta| meta.modified().ok())
            .and_then(|at| at.elapsed().ok())
            .is_some_and(|age| !being_made || age > READER_DIR_SETTLES);
        let free = settled
            && lock_file(&path)
                .ok()
                .and_then(|file| Flock::lock(file, FlockArg::LockExclusiveNonblock).ok())
                .is_some();
        if free && let Err(error) = std::fs::remove_dir_all(&path) {
            tracing::debug!(path = %path.display(), %error, "cannot remove a crashed reader's cache folder");
        }
    }
}

/// The `lock` file in `dir`, opened (created if missing) to be locked.
fn lock_file(dir: &Path) -> std::io::Result<File> {
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join("lock"))
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
    fn readers_have_private_folders_that_go_with_them_or_after_a_crash() {
        let cache = tempfile::tempdir().unwrap();
        let superblock = Superblock::new("v", 1 << 30, 1 << 20, Default::default());
        let first = ReaderDir::create(cache.path(), &superblock).unwrap();
        let second = ReaderDir::create(cache.path(), &superblock).unwrap();
        assert_ne!(first.path(), second.path());
        let mode = std::fs::metadata(first.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let kept = first.path().to_path_buf();
        drop(first);
        assert!(!kept.exists(), "a reader's folder goes with it");
        // A crashed reader's: named (so it was locked once), its lock free,
        // however young; one still being made is left for a while.
        let crashed = cache.path().join("readers/v.crashed");
        let young = cache.path().join("readers/.making-v.young");
        let stuck = cache.path().join("readers/.making-v.stuck");
        for dir in [&crashed, &young, &stuck] {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join("lock"), b"").unwrap();
        }
        let long_ago = std::time::SystemTime::now() - 2 * READER_DIR_SETTLES;
        File::open(&stuck).unwrap().set_modified(long_ago).unwrap();
        let second_path = second.path().to_path_buf();
        File::open(&second_path)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        let third = ReaderDir::create(cache.path(), &superblock).unwrap();
        assert!(!crashed.exists(), "a crashed reader's folder is removed");
        assert!(young.exists(), "one being made is left to its reader");
        assert!(!stuck.exists(), "one left half made a while ago is removed");
        assert!(
            second_path.exists(),
            "a live reader's folder stays, however old"
        );
        drop((second, third));
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
