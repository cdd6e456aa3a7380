//! The write-back log's only doors to the filesystem: its files, and the
//! directory entries that name them.
//!
//! Everything the log does to its folder goes through here, so that what
//! a power cut may undo is decided in one place. The rules the log keeps:
//! data counts as durable once its file was fsynced ([`LogFile::sync_data`]),
//! and a name once its directory was ([`sync_dir`]); until then either may
//! be lost, in any order, and a file's pages may each hold any state they
//! had since its last fsync.
//!
//! In test builds (the `failpoints` feature) a folder can be armed for
//! simulated power cuts ([`super::power_cut`]): every change here that is
//! not yet durable is journaled, and a cut undoes what the rules above let
//! it undo.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};

#[cfg(feature = "failpoints")]
use super::power_cut;

/// An open file of the log.
#[derive(Debug)]
pub struct LogFile {
    file: File,
    /// Whether its changes are journaled for simulated power cuts.
    #[cfg(feature = "failpoints")]
    journaled: Option<power_cut::FileKey>,
}

impl LogFile {
    /// Creates a file that must not exist yet. Its name is durable only
    /// once its directory is synced.
    pub fn create_new(path: &Path) -> io::Result<LogFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        #[cfg(feature = "failpoints")]
        power_cut::created(path, &file);
        Ok(LogFile::new(path, file))
    }

    /// Opens an existing file for reading and writing, never through a
    /// symlink (ELOOP).
    pub fn open(path: &Path) -> io::Result<LogFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        Ok(LogFile::new(path, file))
    }

    #[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
    fn new(path: &Path, file: File) -> LogFile {
        LogFile {
            #[cfg(feature = "failpoints")]
            journaled: power_cut::opened(path, &file),
            file,
        }
    }

    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        #[cfg(feature = "failpoints")]
        if let Some(key) = self.journaled {
            power_cut::before_write(key, &self.file, offset, data.len());
        }
        self.file.write_all_at(data, offset)
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    pub fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Makes the file's data (and its length) durable.
    pub fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()?;
        #[cfg(feature = "failpoints")]
        if let Some(key) = self.journaled {
            power_cut::synced(key, &self.file);
        }
        Ok(())
    }

    /// Cuts the file at `len` and makes that durable.
    pub fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.file.sync_all()?;
        #[cfg(feature = "failpoints")]
        if let Some(key) = self.journaled {
            power_cut::synced(key, &self.file);
        }
        Ok(())
    }

    /// A second handle for reading the file from the start (replay).
    pub fn reader(&self) -> io::Result<File> {
        self.file.try_clone()
    }
}

/// Writes a new file at `path` with `bytes` and makes its data durable
/// (replacing any file there); its name is durable once the directory is
/// synced.
pub fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    match remove(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let file = LogFile::create_new(path)?;
    file.write_at(bytes, 0)?;
    file.sync_data()
}

/// Renames `from` to `to`, replacing what `to` names.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(feature = "failpoints")]
    let undo = power_cut::before_rename(from, to);
    std::fs::rename(from, to)?;
    #[cfg(feature = "failpoints")]
    power_cut::renamed(undo);
    Ok(())
}

/// Renames `from` to `to`, failing with `AlreadyExists` when `to` exists.
///
/// Where the filesystem cannot rename without replacing (9p and NFS
/// answer `RENAME_NOREPLACE` with EINVAL), this looks before it renames.
/// That is only safe because nobody else renames in the log's folder: the
/// caller holds the volume's lock.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match rename_noreplace_by_kernel(from, to) {
        Err(e) if unsupported(&e) => {
            tracing::debug!(path = %to.display(), "this filesystem cannot rename without replacing; checking first instead");
            match std::fs::symlink_metadata(to) {
                Ok(_) => Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists already", to.display()),
                )),
                Err(e) if e.kind() == io::ErrorKind::NotFound => rename(from, to),
                Err(e) => Err(e),
            }
        }
        other => other,
    }
}

fn rename_noreplace_by_kernel(from: &Path, to: &Path) -> io::Result<()> {
    fail::fail_point!("log::rename_noreplace", |_| Err(
        io::Error::from_raw_os_error(libc::EINVAL)
    ));
    #[cfg(feature = "failpoints")]
    let undo = power_cut::before_rename(from, to);
    renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE)?;
    #[cfg(feature = "failpoints")]
    power_cut::renamed(undo);
    Ok(())
}

/// Whether a failed `RENAME_NOREPLACE` means the filesystem lacks it.
fn unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    )
}

/// Removes the file at `path`.
pub fn remove(path: &Path) -> io::Result<()> {
    #[cfg(feature = "failpoints")]
    let undo = power_cut::before_remove(path);
    std::fs::remove_file(path)?;
    #[cfg(feature = "failpoints")]
    power_cut::removed(undo);
    Ok(())
}

/// Creates directory `dir` and whatever of its parents is missing, and
/// makes every level durable: each new directory is synced, and so is the
/// directory that names it. The parent of `dir` is synced even when `dir`
/// existed, in case the process that made it died before syncing (a
/// directory whose name may vanish in a power cut takes all it holds with
/// it, however well its files were synced).
pub fn create_dir_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut level = dir;
    while !level.is_dir() {
        missing.push(level);
        level = match level.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => break,
        };
    }
    for new in missing.iter().rev() {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o700).create(new) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        #[cfg(feature = "failpoints")]
        power_cut::dir_created(new);
        sync_dir(new)?;
    }
    let named = match missing.is_empty() {
        true => vec![dir],
        false => missing,
    };
    for level in named.iter().rev() {
        if let Some(parent) = level.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Makes the entries of directory `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()?;
    #[cfg(feature = "failpoints")]
    power_cut::dir_synced(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renaming_without_replacing_refuses_an_existing_name() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let refused = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::AlreadyExists);
        rename_noreplace(&a, &c).unwrap();
        assert_eq!(std::fs::read(&c).unwrap(), b"a");
        assert_eq!(std::fs::read(&b).unwrap(), b"b");
    }

    /// Path 6 of the durability review: 9p and NFS refuse
    /// `RENAME_NOREPLACE` with EINVAL, and recycling a segment failed there.
    /// Fails on eba6841.
    #[test]
    fn a_filesystem_without_rename_noreplace_is_not_a_failure() {
        let scenario = fail::FailScenario::setup();
        fail::cfg("log::rename_noreplace", "return").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let refused = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&b).unwrap(), b"b");
        rename_noreplace(&a, &c).unwrap();
        assert_eq!(std::fs::read(&c).unwrap(), b"a");
        scenario.teardown();
    }
}
