//! The local record of a push in progress, so that the next push after
//! an interruption sends again only the chunks not yet stored.
//!
//! It lives on the pushing host, not in the bucket: it names each stored
//! chunk by a hash of the stream bytes it holds, and a plain hash of
//! encrypted data is what a bucket must never see (a guess of the
//! contents could confirm it). A chunk is reused only when the stream
//! sent again has the same bytes at the same place (the hash matches)
//! and its object is still stored with the recorded size; anything else
//! is sent again. Losing the journal costs time, never correctness.
//!
//! The file (0600, in a 0700 folder) is a header line naming the push,
//! then one line per stored chunk, appended as each upload completes.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::BackupError;
use super::record::ChunkRef;

/// One stored chunk, as the journal remembers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    index: u32,
    plain_hash: String,
    chunk: ChunkRef,
}

/// Held while a push of one lineage to one destination runs on this
/// host: a second one at once would write the same journal, and could
/// take the other's chunks for its own.
pub struct PushLock {
    _lock: Flock<File>,
}

impl PushLock {
    /// Takes the lock of `lineage`'s pushes, or says that one runs.
    pub fn take(dir: &Path, lineage: &str) -> Result<PushLock, BackupError> {
        create_private_dir(dir)?;
        let path = Journal::path(dir, lineage).with_extension("lock");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(BackupError::io(format!("opening {}", path.display())))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| {
            BackupError::Invalid(format!(
                "another push of {} to the same store runs on this host: wait for it to end",
                lineage.split('\n').skip(1).collect::<Vec<_>>().join(" ")
            ))
        })?;
        Ok(PushLock { _lock: lock })
    }
}

fn create_private_dir(dir: &Path) -> Result<(), BackupError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(BackupError::io(format!("creating {}", dir.display())))
}

/// The journal of one lineage's push to one destination.
pub struct Journal {
    path: PathBuf,
    header: String,
    file: Option<File>,
    stored: HashMap<u32, Stored>,
}

impl Journal {
    /// The journal file of one lineage's pushes to one destination
    /// (`lineage` names both), in `dir`.
    fn path(dir: &Path, lineage: &str) -> PathBuf {
        let id = blake3::hash(lineage.as_bytes());
        dir.join(format!("{}.push", &id.to_hex()[..32]))
    }

    /// The header of an interrupted push of `lineage`, if there was one.
    pub fn pending(dir: &Path, lineage: &str) -> Option<String> {
        let file = File::open(Journal::path(dir, lineage)).ok()?;
        let mut header = String::new();
        BufReader::new(file).read_line(&mut header).ok()?;
        Some(header.trim_end().to_string())
    }

    /// Opens the journal of `lineage` for the push `header` names (one
    /// line, which the caller makes and reads back): what an interrupted
    /// run of the same push stored is kept, a journal of any other push is
    /// started over.
    pub fn open(dir: &Path, lineage: &str, header: &str) -> Result<Journal, BackupError> {
        create_private_dir(dir)?;
        assert!(!header.contains('\n'), "a journal's header is one line");
        let path = Journal::path(dir, lineage);
        let stored = match File::open(&path) {
            Ok(file) => read_same_push(file, header),
            Err(_) => HashMap::new(),
        };
        let mut journal = Journal {
            path,
            header: header.to_string(),
            file: None,
            stored,
        };
        journal.rewrite()?;
        Ok(journal)
    }

    /// How many chunks an earlier run stored.
    pub fn resumable(&self) -> usize {
        self.stored.len()
    }

    /// The stored chunk at `index`, if an earlier run stored these very
    /// stream bytes there.
    pub fn reusable(&self, index: u32, plain: &[u8]) -> Option<ChunkRef> {
        let stored = self.stored.get(&index)?;
        (stored.plain_hash == blake3::hash(plain).to_hex().as_str()).then(|| stored.chunk.clone())
    }

    /// Remembers a chunk whose upload completed.
    pub fn stored(
        &mut self,
        index: u32,
        plain: &[u8],
        chunk: &ChunkRef,
    ) -> Result<(), BackupError> {
        let line = Stored {
            index,
            plain_hash: blake3::hash(plain).to_hex().to_string(),
            chunk: chunk.clone(),
        };
        let mut text = serde_json::to_string(&line).expect("a journal line serializes");
        text.push('\n');
        let file = self.file.as_mut().expect("the journal is open");
        file.write_all(text.as_bytes())
            .map_err(BackupError::io(format!("writing {}", self.path.display())))
    }

    /// The push is complete: nothing to resume.
    pub fn finish(self) -> Result<(), BackupError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BackupError::io(format!("removing {}", self.path.display()))(e)),
        }
    }

    /// Writes the header and what is kept, afresh.
    fn rewrite(&mut self) -> Result<(), BackupError> {
        let what = || format!("writing {}", self.path.display());
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(BackupError::io(what()))?;
        let mut text = format!("{}\n", self.header);
        for stored in self.stored.values() {
            text.push_str(&serde_json::to_string(stored).expect("a journal line serializes"));
            text.push('\n');
        }
        file.write_all(text.as_bytes())
            .map_err(BackupError::io(what()))?;
        self.file = Some(file);
        Ok(())
    }

    /// Forgets chunks the store no longer holds as recorded.
    pub fn keep_only(
        &mut self,
        still_stored: impl Fn(u32, &ChunkRef) -> bool,
    ) -> Result<(), BackupError> {
        self.stored
            .retain(|&index, s| still_stored(index, &s.chunk));
        self.rewrite()
    }
}

/// The chunks a journal file records, if it is the push `header` names;
/// a torn last line (a crash mid-append) is left out.
fn read_same_push(file: File, header: &str) -> HashMap<u32, Stored> {
    let mut lines = BufReader::new(file).lines();
    let same = lines
        .next()
        .and_then(|l| l.ok())
        .is_some_and(|l| l == header);
    if !same {
        return HashMap::new();
    }
    lines
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str::<Stored>(&line).ok())
        .map(|s| (s.index, s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_push_reuses_only_chunks_with_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path(), "b v @", "push A").unwrap();
        let chunk = ChunkRef::new(b"stored", 4);
        journal.stored(0, b"abcd", &chunk).unwrap();
        journal.stored(1, b"efgh", &chunk).unwrap();
        drop(journal);
        // A torn line, as a crash mid-append leaves.
        let path = Journal::path(dir.path(), "b v @");
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"index\":2,\"plain").unwrap();

        assert_eq!(Journal::pending(dir.path(), "b v @").unwrap(), "push A");
        let journal = Journal::open(dir.path(), "b v @", "push A").unwrap();
        assert_eq!(journal.resumable(), 2);
        assert_eq!(journal.reusable(0, b"abcd"), Some(chunk));
        assert_eq!(
            journal.reusable(1, b"efgX"),
            None,
            "other bytes: sent again"
        );
        assert_eq!(journal.reusable(2, b"ijkl"), None);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(path.metadata().unwrap().permissions().mode() & 0o777, 0o600);

        // Another snapshot's push starts over.
        let other = Journal::open(dir.path(), "b v @", "push B").unwrap();
        assert_eq!(other.resumable(), 0);
        other.finish().unwrap();
        assert!(Journal::pending(dir.path(), "b v @").is_none());
    }

    #[test]
    fn one_push_of_a_lineage_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let held = PushLock::take(dir.path(), "url\nvol\n@home").unwrap();
        let error = PushLock::take(dir.path(), "url\nvol\n@home").err().unwrap();
        assert!(error.to_string().contains("vol @home"), "{error}");
        PushLock::take(dir.path(), "url\nvol\n@").unwrap();
        drop(held);
        PushLock::take(dir.path(), "url\nvol\n@home").unwrap();
    }
}
