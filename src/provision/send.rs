//! Snapshots as `btrfs send` streams, and streams back into snapshots with
//! `btrfs receive`: what a backup of a snapshot is made of.
//!
//! What it promises:
//! - Only read-only snapshots are sent (a writable one could change while
//!   it is read); anything else is refused before btrfs runs, with the fix.
//! - A stream ends only once btrfs has: its end is where btrfs exited, and
//!   a btrfs that failed makes the stream fail, with btrfs's own reason. A
//!   receive likewise succeeds only when btrfs says so.
//! - A send or receive dropped half way kills and reaps its btrfs: nothing
//!   is left running, and no zombie.
//! - Sends use btrfs's default stream version (1 in btrfs-progs 6.x,
//!   which every `btrfs receive` reads). Receives stop at the stream's end
//!   marker (`-e`) and are confined to their directory (`-C`, chroot),
//!   since a stream from a bucket is only as trusted as the bucket.
//!
//! A receive that fails leaves what it received so far: a writable
//! subvolume without a received UUID, which the caller deletes.

use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::{ChildStdin, ChildStdout, Stdio};

use super::ProvisionError;
use super::command::{BTRFS, Running};
use super::send_stream::{self, StreamError};

pub use super::btrfs::{SubvolumeInfo, subvolume_info};

/// Refuses `path` unless it is a read-only snapshot.
fn require_read_only(path: &Path) -> Result<(), ProvisionError> {
    if subvolume_info(path)?.read_only() {
        Ok(())
    } else {
        Err(ProvisionError::NotReadOnly {
            path: path.to_path_buf(),
        })
    }
}

/// Starts `btrfs send` of `snapshot` (incremental from `parent`, if any).
fn start_send(
    snapshot: &Path,
    parent: Option<&Path>,
    no_data: bool,
) -> Result<SendStream, ProvisionError> {
    BTRFS.find()?;
    require_read_only(snapshot)?;
    if let Some(parent) = parent {
        require_read_only(parent)?;
    }
    let mut args = vec!["-q".as_ref(), "send".as_ref()];
    if no_data {
        args.push("--no-data".as_ref());
    }
    if let Some(parent) = parent {
        args.extend(["-p".as_ref(), parent.as_os_str()]);
    }
    args.extend(["--".as_ref(), snapshot.as_os_str()]);
    let mut running = BTRFS.spawn("btrfs send", args, Stdio::null(), Stdio::piped())?;
    let stdout = running.take_stdout();
    Ok(SendStream { running, stdout })
}

/// A running `btrfs send [-p PARENT] SNAPSHOT`: its stream, read until
/// btrfs exits. A btrfs that exits non-zero makes the last read an error
/// carrying its reason (`btrfs send failed (exit status: 1): ERROR: ...`).
pub struct SendStream {
    running: Running,
    /// `None` once the stream has ended.
    stdout: Option<ChildStdout>,
}

impl SendStream {
    /// The btrfs process's id.
    pub fn id(&self) -> u32 {
        self.running.id()
    }
}

impl Read for SendStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if let Some(stdout) = &mut self.stdout {
            let n = stdout.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            self.stdout = None;
        }
        self.running.wait().map(|()| 0).map_err(io::Error::other)
    }
}

/// Sends `snapshot`, whole or (with `parent`) as the changes since
/// `parent`; both must be read-only.
pub fn send(snapshot: &Path, parent: Option<&Path>) -> Result<SendStream, ProvisionError> {
    start_send(snapshot, parent, false)
}

/// What a send would hold, as `btrfs send --no-data` says without reading
/// file data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendEstimate {
    data_bytes: u64,
    metadata_bytes: u64,
}

impl SendEstimate {
    /// The file data the send writes (holes included, as zeroes).
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Everything else: the `--no-data` stream's own length.
    pub fn metadata_bytes(&self) -> u64 {
        self.metadata_bytes
    }

    /// About how long the stream is.
    pub fn total(&self) -> u64 {
        self.data_bytes.saturating_add(self.metadata_bytes)
    }
}

/// Estimates the stream [`send`] would give, from `btrfs send --no-data`.
/// A stream of a version other than 1 gives its length alone.
pub fn estimate(snapshot: &Path, parent: Option<&Path>) -> Result<SendEstimate, ProvisionError> {
    let mut stream = start_send(snapshot, parent, true)?;
    let read_error = |error: io::Error| match error.downcast::<ProvisionError>() {
        Ok(failed) => failed,
        Err(source) => ProvisionError::Io {
            what: format!("reading btrfs send --no-data {}", snapshot.display()),
            source,
        },
    };
    match send_stream::summarize(&mut stream) {
        Ok(summary) => Ok(SendEstimate {
            data_bytes: summary.data_bytes,
            metadata_bytes: summary.stream_bytes,
        }),
        Err(StreamError::Io(error)) => Err(read_error(error)),
        Err(StreamError::Malformed(why)) => {
            // A btrfs that failed half way says why better than its
            // stream can.
            io::copy(&mut stream, &mut io::sink()).map_err(read_error)?;
            Err(ProvisionError::Invalid(format!(
                "`btrfs send --no-data {}` gave a stream zeroblk cannot read ({why}): no estimate; the backup itself does not need one, and `zeroblk --version` and `btrfs --version` belong in a report of this",
                snapshot.display()
            )))
        }
    }
}

/// A running `btrfs receive DIR`: a send stream written into it becomes a
/// read-only subvolume in DIR once [`Receive::finish`] succeeds.
pub struct Receive {
    running: Running,
    /// `None` once closed.
    stdin: Option<ChildStdin>,
}

impl Receive {
    /// The btrfs process's id.
    pub fn id(&self) -> u32 {
        self.running.id()
    }

    /// Ends the stream and waits for btrfs to take it in; a btrfs that
    /// exits non-zero is an error carrying its reason.
    pub fn finish(mut self) -> Result<(), ProvisionError> {
        self.stdin = None;
        self.running.wait()
    }

    /// The error for a write btrfs stopped taking: its own reason if it
    /// failed.
    fn stopped(&mut self) -> io::Error {
        self.stdin = None;
        match self.running.wait() {
            Err(failed) => io::Error::other(failed),
            Ok(()) => io::Error::new(
                io::ErrorKind::BrokenPipe,
                "btrfs receive stopped at the stream's end marker before all of it was written: write one send stream per receive",
            ),
        }
    }
}

impl Write for Receive {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(stdin) = &mut self.stdin else {
            return Err(self.stopped());
        };
        match stdin.write(buf) {
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Err(self.stopped()),
            written => written,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.stdin {
            Some(stdin) => stdin.flush(),
            None => Ok(()),
        }
    }
}

/// Every subvolume of the btrfs holding `path` whose received UUID is
/// `uuid` (paths from the filesystem's top): where an incremental
/// `btrfs receive` may look for the parent its stream names. It searches
/// the whole filesystem, not only the directory it receives into.
pub fn received_copies(path: &Path, uuid: uuid::Uuid) -> Result<Vec<String>, ProvisionError> {
    let listing = BTRFS.run([
        std::ffi::OsStr::new("subvolume"),
        "list".as_ref(),
        "-R".as_ref(),
        path.as_os_str(),
    ])?;
    Ok(with_received_uuid(&listing, uuid))
}

/// The paths of `btrfs subvolume list -R`'s lines whose received UUID is `uuid`.
fn with_received_uuid(listing: &str, uuid: uuid::Uuid) -> Vec<String> {
    let wanted = uuid.to_string();
    listing
        .lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once(" received_uuid ")?;
            let (received, path) = rest.split_once(" path ")?;
            (received.trim() == wanted).then(|| path.to_string())
        })
        .collect()
}

/// Starts `btrfs receive` into `dir`, made (mode 0700) if missing; `dir`
/// must be on btrfs. It stops at the stream's end marker.
pub fn receive(dir: &Path) -> Result<Receive, ProvisionError> {
    BTRFS.find()?;
    let existing = dir
        .ancestors()
        .find(|path| !path.as_os_str().is_empty() && path.exists())
        .unwrap_or(Path::new("."));
    let on_btrfs = nix::sys::statfs::statfs(existing)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC);
    if !on_btrfs {
        return Err(ProvisionError::Invalid(format!(
            "{} is not on a btrfs filesystem, and btrfs receive needs one: receive into a directory on btrfs, e.g. under a zeroblk volume's mount point",
            dir.display()
        )));
    }
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| ProvisionError::Io {
                what: format!("creating {}", dir.display()),
                source,
            })?;
    }
    if !dir.is_dir() {
        return Err(ProvisionError::Invalid(format!(
            "{} is not a directory: receive into a directory on btrfs",
            dir.display()
        )));
    }
    let args = [
        "-q".as_ref(),
        "receive".as_ref(),
        "-e".as_ref(),
        "-C".as_ref(),
        "--".as_ref(),
        dir.as_os_str(),
    ];
    let mut running = BTRFS.spawn("btrfs receive", args, Stdio::piped(), Stdio::null())?;
    let stdin = running.take_stdin();
    Ok(Receive { running, stdin })
}

#[cfg(test)]
mod received_tests {
    use super::*;

    #[test]
    fn copies_are_found_by_received_uuid_across_the_filesystem() {
        let uuid: uuid::Uuid = "bb02ae27-36df-4b41-867d-4307ec84073a".parse().unwrap();
        let listing = "ID 256 gen 7 top level 5 received_uuid -                                    path a\n\
            ID 258 gen 8 top level 5 received_uuid bb02ae27-36df-4b41-867d-4307ec84073a path d1/s\n\
            ID 259 gen 10 top level 5 received_uuid bb02ae27-36df-4b41-867d-4307ec84073a path d2/s with space\n\
            ID 260 gen 11 top level 5 received_uuid 00000000-36df-4b41-867d-4307ec84073a path d3/s\n";
        assert_eq!(
            with_received_uuid(listing, uuid),
            ["d1/s", "d2/s with space"]
        );
    }
}
