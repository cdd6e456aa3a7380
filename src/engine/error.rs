//! The engine's one error type, and the errno each error completes a block
//! request with: transports never invent errnos.

use std::path::PathBuf;
use std::sync::Arc;

use crate::format::FormatError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("volume `{0}` does not exist: create it with `zeroblk volume create {0} --size SIZE`")]
    NoSuchVolume(String),
    #[error(
        "volume `{0}` already exists: pick another name, or delete it first with `zeroblk volume delete {0}`"
    )]
    VolumeExists(String),
    #[error(
        "volume `{0}` has a superblock but no root: the create, clone or copy that made it stopped before it finished, and it holds nothing; delete it with `zeroblk volume delete {0}` (a copy run again finishes it)"
    )]
    Unfinished(String),
    #[error(
        "volume `{volume}` has no snapshot `{snapshot}`: see its snapshots with `zeroblk volume snapshot list {volume}`"
    )]
    NoSuchSnapshot { volume: String, snapshot: String },
    #[error(
        "volume `{volume}` already has a snapshot `{snapshot}`: pick another --name, or delete it first with `zeroblk volume snapshot delete {volume} {snapshot}`"
    )]
    SnapshotExists { volume: String, snapshot: String },
    #[error(
        "`{volume}@{snapshot}` is a snapshot, which is read-only: to write, clone it with `zeroblk volume clone {volume}@{snapshot} NEW`, or roll the volume back to it with `zeroblk volume rollback {volume} {snapshot}`"
    )]
    ReadOnlySnapshot { volume: String, snapshot: String },
    #[error(
        "`{what}` is read-only: it was opened without a writer's lease (--read-only); to write, serve or attach it without --read-only"
    )]
    ReadOnly { what: String },
    #[error(
        "volume `{volume}` was opened read-only at generation {generation}, which its writer has replaced since and gc has collected: open it again to read what it holds now, follow its writer (--follow), or read a snapshot, which gc keeps"
    )]
    ReplacedRoot { volume: String, generation: u64 },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{op} of {len} bytes at offset {offset} is not aligned to the {block}-byte block size")]
    Unaligned {
        op: &'static str,
        offset: u64,
        len: u64,
        block: u64,
    },
    #[error(
        "{op} of {len} bytes at offset {offset} goes past the end of the volume ({size} bytes)"
    )]
    OutOfRange {
        op: &'static str,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error(
        "object {key}, referenced by generation {generation}, is missing from the store: the bucket was changed behind zeroblk's back (run `zeroblk volume verify`)"
    )]
    MissingObject { key: String, generation: u64 },
    #[error(
        "volume `{name}` was committed by another writer (generation {generation} exists already): this one is fenced out and stops; attach the volume from one place only"
    )]
    Fenced { name: String, generation: u64 },
    #[error(
        "volume `{name}` is written by pid {pid} on {host} (it holds the volume's lease): detach it there first; if that host crashed, take the volume over with --force"
    )]
    Leased {
        name: String,
        host: String,
        pid: u32,
    },
    #[error(
        "volume `{name}` is written by pid {pid} on this host, which still runs (it holds the volume's lease): stop that writer first (`zeroblk detach {name}`, or stop the `zeroblk serve` serving it); --force takes a volume over only from a writer that crashed or runs on another host"
    )]
    LeasedHere { name: String, pid: u32 },
    #[error(
        "volume `{name}` was last written by {holder}, on this machine, which stopped without detaching; its write-back log, which may hold flushed writes not yet in the store, was in {log_dir}, and this command's cache dir holds another one: open the volume with that log's cache directory (--cache-dir {cache_dir}, in the same container if it ran in one) so they are replayed; if that log is lost, --force takes the volume over from its last commit without them"
    )]
    LogElsewhere {
        name: String,
        /// `pid P on HOST`.
        holder: String,
        /// The dead holder's log folder, as it recorded it.
        log_dir: String,
        /// The cache directory that holds it.
        cache_dir: String,
    },
    #[error(
        "gc --grace {} is too short while {} attached: a commit in flight could lose objects it has just uploaded; detach first, or use --grace {} or longer",
        humantime::format_duration(*grace),
        volumes_are(volumes),
        humantime::format_duration(*minimum)
    )]
    GraceTooShort {
        grace: std::time::Duration,
        minimum: std::time::Duration,
        /// The attached volumes.
        volumes: Vec<String>,
    },
    #[error(
        "{} holds the store's gc lease (pid {pid} on {host}): let it finish; if it died, the next one takes over once its lease is not renewed",
        if what.is_empty() { "another zeroblk gc" } else { what.as_str() }
    )]
    GcRunning {
        host: String,
        pid: u32,
        /// What holds it, when it is not a gc (a snapshot, a clone).
        what: String,
    },
    #[error(
        "zeroblk gc lost its lease to another gc ({by}): it stopped before deleting anything more; run it again"
    )]
    GcLeaseLost { by: String },
    #[error(
        "volume `{name}` was taken over by {by} (its lease is not ours any more): this writer stops and commits nothing more"
    )]
    LeaseLost { name: String, by: String },
    #[error("volume `{name}` is open in another process on this host (lock file {}); detach it there first", path.display())]
    Busy { name: String, path: PathBuf },
    #[error("cache directory {}: {source} (check --cache-dir, its free space and permissions)", path.display())]
    CacheDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the write-back log {} failed: {source}; the volume stopped taking writes, and everything already flushed is safe", path.display())]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "volume `{0}` is encrypted and no password was given: give it with --password-file FILE, ZEROBLK_PASSWORD, or encryption_password under [storage] in the config file"
    )]
    PasswordNeeded(String),
    #[error(
        "the password given does not open volume `{0}`: check --password-file, ZEROBLK_PASSWORD or encryption_password in the config file, whichever gives it"
    )]
    WrongPassword(String),
    #[error("volume `{name}`: {why}")]
    Key {
        name: String,
        why: crate::crypto::CryptoError,
    },
    #[error(
        "the volume's {task} panicked ({message}): a bug in zeroblk, please report it; everything flushed is in the write-back log and is replayed when the volume is opened again"
    )]
    Panicked { task: &'static str, message: String },
    #[error(
        "volume `{0}` is closed: nothing more is served from this handle; open the volume again"
    )]
    Closed(String),
    #[error("volume stopped: {0}")]
    Stopped(Arc<EngineError>),
    #[error(transparent)]
    Shared(Arc<EngineError>),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// What kind of failure an error is: what a caller needs to decide what
/// to do with it (retry, refuse, report, stop) without matching variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The same request may succeed later (the store was unreachable).
    Transient,
    /// Another writer (or gc) owns the volume, or took it over.
    Fenced,
    /// What the store or the cache holds is damaged or missing.
    Corrupt,
    /// The volume was closed, or crashed: nothing more is served from it.
    Closed,
    /// The request itself is wrong (a bad range, name, size or password).
    BadRequest,
    /// The store, the log or the cache directory failed.
    Io,
}

impl EngineError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Store(e) if e.is_transient() => ErrorKind::Transient,
            EngineError::Store(_)
            | EngineError::Log { .. }
            | EngineError::CacheDir { .. }
            | EngineError::Panicked { .. } => ErrorKind::Io,
            EngineError::Format(_)
            | EngineError::MissingObject { .. }
            | EngineError::ReplacedRoot { .. } => ErrorKind::Corrupt,
            EngineError::Fenced { .. }
            | EngineError::LeaseLost { .. }
            | EngineError::Leased { .. }
            | EngineError::LeasedHere { .. }
            | EngineError::LogElsewhere { .. }
            | EngineError::Busy { .. }
            | EngineError::GcRunning { .. }
            | EngineError::GcLeaseLost { .. } => ErrorKind::Fenced,
            EngineError::NoSuchVolume(_)
            | EngineError::VolumeExists(_)
            | EngineError::Unfinished(_)
            | EngineError::NoSuchSnapshot { .. }
            | EngineError::SnapshotExists { .. }
            | EngineError::ReadOnlySnapshot { .. }
            | EngineError::ReadOnly { .. }
            | EngineError::InvalidArgument(_)
            | EngineError::Unaligned { .. }
            | EngineError::OutOfRange { .. }
            | EngineError::GraceTooShort { .. }
            | EngineError::PasswordNeeded(_)
            | EngineError::WrongPassword(_)
            | EngineError::Key { .. } => ErrorKind::BadRequest,
            EngineError::Closed(_) => ErrorKind::Closed,
            EngineError::Stopped(inner) | EngineError::Shared(inner) => inner.kind(),
        }
    }

    /// The errno a block request that failed this way completes with, on
    /// every transport.
    pub fn errno(&self) -> i32 {
        match self {
            // The NBD protocol's answer to a write past the end.
            EngineError::OutOfRange { op, .. } if matches!(*op, "write" | "write-zeroes") => {
                libc::ENOSPC
            }
            EngineError::Unaligned { .. }
            | EngineError::OutOfRange { .. }
            | EngineError::InvalidArgument(_) => libc::EINVAL,
            EngineError::Closed(_) => libc::ESHUTDOWN,
            EngineError::ReadOnly { .. } | EngineError::ReadOnlySnapshot { .. } => libc::EROFS,
            EngineError::Fenced { .. } | EngineError::LeaseLost { .. } => libc::EROFS,
            EngineError::Leased { .. }
            | EngineError::LeasedHere { .. }
            | EngineError::LogElsewhere { .. }
            | EngineError::GcRunning { .. } => libc::EBUSY,
            EngineError::PasswordNeeded(_)
            | EngineError::WrongPassword(_)
            | EngineError::Key { .. } => libc::EACCES,
            EngineError::Log { source, .. } | EngineError::CacheDir { source, .. }
                if source.raw_os_error() == Some(libc::ENOSPC) =>
            {
                libc::ENOSPC
            }
            EngineError::Stopped(inner) | EngineError::Shared(inner) => inner.errno(),
            _ => libc::EIO,
        }
    }

    /// Whether the same request could succeed if tried again later.
    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }
}

impl EngineError {
    /// An encrypted volume's key could not be opened or made.
    pub(crate) fn key(name: &str, why: crate::crypto::CryptoError) -> EngineError {
        match why {
            crate::crypto::CryptoError::WrongPassword => {
                EngineError::WrongPassword(name.to_string())
            }
            why => EngineError::Key {
                name: name.to_string(),
                why,
            },
        }
    }
}

impl From<Arc<EngineError>> for EngineError {
    fn from(shared: Arc<EngineError>) -> Self {
        EngineError::Shared(shared)
    }
}

/// "volume `a` is", or "volumes `a`, `b` are".
fn volumes_are(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
    match quoted.as_slice() {
        [one] => format!("volume {one} is"),
        many => format!("volumes {} are", many.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_follow_the_cause() {
        let unaligned = EngineError::Unaligned {
            op: "read",
            offset: 1,
            len: 1,
            block: 4096,
        };
        assert_eq!(unaligned.errno(), libc::EINVAL);
        let stopped = EngineError::Stopped(Arc::new(unaligned));
        assert_eq!(stopped.errno(), libc::EINVAL);
        let missing = EngineError::MissingObject {
            key: "k".into(),
            generation: 1,
        };
        assert_eq!(missing.errno(), libc::EIO);
        assert_eq!(missing.kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn writes_past_the_end_are_enospc_and_reads_einval() {
        let past_the_end = |op| EngineError::OutOfRange {
            op,
            offset: 8192,
            len: 4096,
            size: 8192,
        };
        assert_eq!(past_the_end("write").errno(), libc::ENOSPC);
        assert_eq!(past_the_end("write-zeroes").errno(), libc::ENOSPC);
        assert_eq!(past_the_end("read").errno(), libc::EINVAL);
        assert_eq!(past_the_end("discard").errno(), libc::EINVAL);
        assert_eq!(past_the_end("write").kind(), ErrorKind::BadRequest);
    }

    #[test]
    fn a_closed_volume_is_closed_not_a_bad_request() {
        let closed = EngineError::Stopped(Arc::new(EngineError::Closed("v".into())));
        assert_eq!(closed.kind(), ErrorKind::Closed);
        assert_eq!(closed.errno(), libc::ESHUTDOWN);
        let fenced = EngineError::Shared(Arc::new(EngineError::LeaseLost {
            name: "v".into(),
            by: "pid 1 on h".into(),
        }));
        assert_eq!(fenced.kind(), ErrorKind::Fenced);
        assert_eq!(fenced.errno(), libc::EROFS);
    }
}
