//! Where an export writes: a new image file, or standard output.
//!
//! A file is written beside its name first (`.NAME.zeroblk-partial-PID`,
//! mode 0600, its size set at once so that what is never written is a
//! hole), synced, and only then moved to its name: a failed export leaves
//! nothing under that name, and `--force` replaces a file only with a
//! whole image; what an export killed part way left there is removed by
//! the next export of the same name. Standard output gets every byte,
//! zeroes included.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::blocks::Piece;
use super::error::ImageError;

/// Zeroes written to standard output at once.
static ZEROES: [u8; 64 << 10] = [0; 64 << 10];

/// Where an export writes the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageTarget {
    /// A file, which must not exist unless `replace`.
    File {
        path: PathBuf,
        replace: bool,
    },
    Stdout,
}

impl ImageTarget {
    /// `-` is standard output; anything else a file.
    pub fn from_arg(arg: &str, replace: bool) -> ImageTarget {
        match arg {
            "-" => ImageTarget::Stdout,
            path => ImageTarget::File {
                path: path.into(),
                replace,
            },
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ImageTarget::File { path, .. } => path.display().to_string(),
            ImageTarget::Stdout => "standard output".to_string(),
        }
    }
}

/// An image being written.
pub(super) enum Sink {
    File {
        file: File,
        partial: PathBuf,
        path: PathBuf,
        replace: bool,
    },
    Stdout(std::io::Stdout),
}

impl Sink {
    /// Starts writing an image of `size` bytes to `target`.
    pub fn create(target: &ImageTarget, size: u64) -> Result<Sink, ImageError> {
        let (path, replace) = match target {
            ImageTarget::Stdout => return Ok(Sink::Stdout(std::io::stdout())),
            ImageTarget::File { path, replace } => (path.clone(), *replace),
        };
        refuse_existing(&path, replace)?;
        remove_abandoned_partials(&path);
        let partial = partial_name(&path)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .map_err(ImageError::io(format!(
                "cannot create {}",
                partial.display()
            )))?;
        if let Err(cause) = file.set_len(size) {
            let what = format!("cannot make {} {size} bytes long", partial.display());
            drop(file);
            let _ = std::fs::remove_file(&partial);
            return Err(ImageError::Io { what, cause });
        }
        Ok(Sink::File {
            file,
            partial,
            path,
            replace,
        })
    }

    /// Writes `piece`: zeroes are a hole in a file, written out to
    /// standard output. Pieces come in order.
    pub fn put(&mut self, piece: &Piece) -> Result<(), ImageError> {
        match (self, piece) {
            (
                Sink::File { file, partial, .. },
                Piece::Data { offset, bytes } | Piece::Tail { offset, bytes },
            ) => file
                .write_all_at(bytes, *offset)
                .map_err(ImageError::io(format!(
                    "cannot write {}",
                    partial.display()
                ))),
            (Sink::File { .. }, Piece::Zero { .. }) => Ok(()),
            (Sink::Stdout(out), Piece::Data { bytes, .. } | Piece::Tail { bytes, .. }) => out
                .write_all(bytes)
                .map_err(ImageError::io("cannot write standard output")),
            (Sink::Stdout(out), Piece::Zero { len, .. }) => {
                write_zeroes(out, *len).map_err(ImageError::io("cannot write standard output"))
            }
        }
    }

    /// Makes the image whole: a file is synced and moved to its name (and
    /// its folder synced), standard output flushed.
    pub fn finish(self) -> Result<(), ImageError> {
        let (file, partial, path, replace) = match self {
            Sink::Stdout(mut out) => {
                return out
                    .flush()
                    .map_err(ImageError::io("cannot write standard output"));
            }
            Sink::File {
                file,
                partial,
                path,
                replace,
            } => (file, partial, path, replace),
        };
        let moved = file
            .sync_all()
            .map_err(ImageError::io(format!("cannot sync {}", partial.display())))
            .and_then(|()| move_into_place(&partial, &path, replace))
            .and_then(|()| sync_folder_of(&path));
        if moved.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        moved
    }

    /// Gives up: a file written so far is removed.
    pub fn abandon(self) {
        if let Sink::File { partial, .. } = self
            && let Err(error) = std::fs::remove_file(&partial)
        {
            tracing::warn!(%error, "could not remove the unfinished export {}", partial.display());
        }
    }
}

/// Refuses a `path` that exists, unless `replace` and it is a file.
fn refuse_existing(path: &Path, replace: bool) -> Result<(), ImageError> {
    match std::fs::symlink_metadata(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(ImageError::Io {
            what: format!("cannot look at {}", path.display()),
            cause: error,
        }),
        Ok(_) if !replace => Err(ImageError::Exists {
            file: path.to_path_buf(),
        }),
        Ok(meta) if !meta.is_file() => Err(ImageError::NotAFile {
            file: path.to_path_buf(),
        }),
        Ok(_) => Ok(()),
    }
}

/// Where the image is written before it is whole: beside `path`, hidden.
fn partial_name(path: &Path) -> Result<PathBuf, ImageError> {
    let name = path.file_name().ok_or_else(|| ImageError::NotAFile {
        file: path.to_path_buf(),
    })?;
    let mut partial = std::ffi::OsString::from(".");
    partial.push(name);
    partial.push(format!(".zeroblk-partial-{}", std::process::id()));
    Ok(path.with_file_name(partial))
}

/// Removes what exports of `path` killed part way left beside it: this
/// user's regular files under its partial name whose process is gone
/// (the image is sparse, but may hold gigabytes of data). A file whose
/// pid runs is left, whoever has that pid now.
fn remove_abandoned_partials(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let (Some(name), Some(folder)) = (path.file_name(), path.parent()) else {
        return;
    };
    let folder = match folder.as_os_str().is_empty() {
        true => Path::new("."),
        false => folder,
    };
    let prefix = format!(".{}.zeroblk-partial-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let abandoned = pid != std::process::id()
            && !crate::process::ProcessId::recorded(pid, 0).is_running()
            && entry
                .metadata()
                .is_ok_and(|meta| meta.is_file() && meta.uid() == me);
        if abandoned && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(
                "removed {}, left by an export that did not finish",
                entry.path().display()
            );
        }
    }
}

/// Moves the whole image to `path`: over a file there only if `replace`
/// (a file made there meanwhile is never replaced otherwise).
fn move_into_place(partial: &Path, path: &Path, replace: bool) -> Result<(), ImageError> {
    let what = || format!("cannot move {} to {}", partial.display(), path.display());
    if replace {
        return std::fs::rename(partial, path).map_err(ImageError::io(what()));
    }
    match std::fs::hard_link(partial, path) {
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(ImageError::Exists {
                file: path.to_path_buf(),
            })
        }
        Err(error) => Err(ImageError::Io {
            what: what(),
            cause: error,
        }),
        Ok(()) => std::fs::remove_file(partial).map_err(ImageError::io(format!(
            "cannot remove {} (the image is whole at {})",
            partial.display(),
            path.display()
        ))),
    }
}

/// Syncs the folder `path` is in, so that its new name survives a crash.
fn sync_folder_of(path: &Path) -> Result<(), ImageError> {
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(folder)
        .and_then(|folder| folder.sync_all())
        .map_err(ImageError::io(format!("cannot sync {}", folder.display())))
}

/// Writes `len` zeroes to `out`.
fn write_zeroes(out: &mut impl Write, mut len: u64) -> std::io::Result<()> {
    while len > 0 {
        let now = len.min(ZEROES.len() as u64);
        out.write_all(&ZEROES[..now as usize])?;
        len -= now;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn an_export_removes_what_a_killed_export_of_the_same_file_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.raw");
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let gone_pid = gone.id();
        gone.wait().unwrap();
        let partial = |pid: u32| dir.path().join(format!(".image.raw.zeroblk-partial-{pid}"));
        let other_image = dir
            .path()
            .join(format!(".other.raw.zeroblk-partial-{gone_pid}"));
        for left in [partial(gone_pid), partial(1), other_image.clone()] {
            std::fs::write(left, b"half an image").unwrap();
        }
        let target = ImageTarget::File {
            path: path.clone(),
            replace: false,
        };
        Sink::create(&target, 1 << 20).unwrap().abandon();
        assert!(
            !partial(gone_pid).exists(),
            "a dead export's file is removed"
        );
        assert!(partial(1).exists(), "a running pid's file is left");
        assert!(other_image.exists(), "another image's file is left");
    }

    #[test]
    fn a_file_appears_whole_private_and_sparse_and_only_once_finished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.raw");
        let target = ImageTarget::File {
            path: path.clone(),
            replace: false,
        };
        let mut sink = Sink::create(&target, 64 << 20).unwrap();
        let data = bytes::Bytes::from(vec![5u8; 4096]);
        sink.put(&Piece::Zero {
            offset: 0,
            len: 32 << 20,
        })
        .unwrap();
        sink.put(&Piece::Data {
            offset: 32 << 20,
            bytes: data,
        })
        .unwrap();
        assert!(!path.exists(), "nothing under its name before it is whole");
        sink.finish().unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "sparse: {} blocks",
            meta.blocks()
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let refused = Sink::create(&target, 4096);
        assert!(matches!(refused, Err(ImageError::Exists { .. })));
    }

    #[test]
    fn replace_takes_files_only_and_an_abandoned_export_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let replacing = ImageTarget::File {
            path: dir.path().to_path_buf(),
            replace: true,
        };
        assert!(matches!(
            Sink::create(&replacing, 4096),
            Err(ImageError::NotAFile { .. })
        ));
        let path = dir.path().join("old");
        std::fs::write(&path, b"old").unwrap();
        let replacing = ImageTarget::File {
            path: path.clone(),
            replace: true,
        };
        Sink::create(&replacing, 4096).unwrap().abandon();
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        Sink::create(&replacing, 4096).unwrap().finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![0u8; 4096]);
    }
}
