//! What object_store's local directories lack: a conditional replace.
//!
//! `LocalFileSystem` creates objects only if absent (a hard link), but
//! cannot replace one only if it is still the version a writer read
//! (If-Match): it refuses such a put as not implemented. zeroblk's leases
//! are replaced that way and no other, so a local store emulates it: every
//! conditional replace, from any process, takes one lock file in the
//! store's directory, compares the object's version (ETag) with the one
//! given, and only then writes. The lock is an advisory `flock`, which
//! NFS (v4) honours too.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// The lock file every conditional replace in a local store takes.
const LOCK_FILE: &str = ".zeroblk-replace.lock";

/// Holds the store's replace lock until dropped.
pub(super) struct ReplaceLock(#[allow(dead_code)] Flock<File>);

/// Takes the replace lock of the local store at `root` (waiting for it on
/// a blocking thread: replaces are rare and short).
pub(super) async fn lock(root: &Path) -> std::io::Result<ReplaceLock> {
    let path: PathBuf = root.join(LOCK_FILE);
    crate::blocking::run(move || {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map(ReplaceLock)
            .map_err(|(_, errno)| std::io::Error::from(errno))
    })
    .await
}
