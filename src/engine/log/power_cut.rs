//! Simulated power cuts of the write-back log, for tests (compiled only
//! with the `failpoints` feature).
//!
//! A test arms a folder ([`arm`]); from then on every change the log makes
//! under it (see [`super::file`]) that is not durable yet is journaled:
//! per file, the bytes each write replaced and the lengths it had since its
//! last fsync; per directory, the names created, renamed and removed since
//! its last fsync. [`cut`] then leaves what a power cut may leave:
//!
//! - each page of a file holds its content at some moment since the
//!   file's last fsync (writeback writes whole pages, in any order), and
//!   the file's length is one it had in that time;
//! - each directory keeps its changes since its last fsync up to some
//!   point, in order (a journaling filesystem commits them in order), and
//!   loses the rest; a directory whose own creation is lost takes all it
//!   held, synced or not.
//!
//! The journal outlives the volumes that wrote it, as the page cache
//! outlives a killed process: a crash without a power cut keeps every
//! change pending, and a later cut may still undo it.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const PAGE: u64 = 4096;

/// A file, whatever it is named: device and inode.
pub type FileKey = (u64, u64);

static JOURNAL: Mutex<Option<Journal>> = Mutex::new(None);

#[derive(Default)]
struct Journal {
    armed: Vec<PathBuf>,
    files: HashMap<FileKey, History>,
    dirs: HashMap<PathBuf, Vec<DirChange>>,
}

/// What one file went through since its last fsync.
#[derive(Debug, Clone)]
struct History {
    path: PathBuf,
    /// Its length at the last fsync, then after each change since.
    lengths: Vec<u64>,
    /// Each write since: where, and the bytes it replaced (as far as the
    /// file reached then).
    writes: Vec<(u64, Vec<u8>)>,
}

/// A change to a directory's entries that is not durable yet.
#[derive(Debug)]
enum DirChange {
    Created(PathBuf),
    /// A new directory: undoing it takes everything in it too.
    CreatedDir(PathBuf),
    Renamed {
        from: PathBuf,
        to: PathBuf,
        /// The file `to` named before, if any: its bytes and history.
        replaced: Option<Saved>,
    },
    Removed(Saved),
}

/// A file no name reaches any more: what it held, and its history.
#[derive(Debug)]
struct Saved {
    path: PathBuf,
    bytes: Vec<u8>,
    history: Option<History>,
}

fn with_journal<T>(f: impl FnOnce(&mut Journal) -> T) -> T {
    let mut journal = JOURNAL.lock().unwrap_or_else(|p| p.into_inner());
    f(journal.get_or_insert_with(Journal::default))
}

impl Journal {
    fn is_armed(&self, path: &Path) -> bool {
        self.armed.iter().any(|root| path.starts_with(root))
    }

    /// Takes the file at `path` out of the journal, as it stands.
    fn save(&mut self, path: &Path) -> Option<Saved> {
        let metadata = std::fs::symlink_metadata(path).ok()?;
        let history = self.files.remove(&(metadata.dev(), metadata.ino()));
        let bytes = std::fs::read(path).ok()?;
        Some(Saved {
            path: path.to_path_buf(),
            bytes,
            history,
        })
    }

    fn dir_change(&mut self, path: &Path, change: DirChange) {
        let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        self.dirs.entry(dir).or_default().push(change);
    }
}

/// Journals every change under `root` from now on, until [`cut`].
pub fn arm(root: &Path) {
    with_journal(|j| j.armed.push(root.to_path_buf()));
}

/// Stops journaling under `root`, forgetting what was journaled.
#[cfg(test)]
fn disarm(root: &Path) {
    with_journal(|j| {
        j.armed.retain(|armed| armed != root);
        j.files.retain(|_, h| !h.path.starts_with(root));
        j.dirs.retain(|dir, _| !dir.starts_with(root));
    });
}

fn key_of(file: &File) -> Option<FileKey> {
    let metadata = file.metadata().ok()?;
    Some((metadata.dev(), metadata.ino()))
}

/// Starts journaling `file`, just opened at `path`, if its folder is
/// armed; returns the key to journal it under. A file the journal knows
/// already (a killed process wrote it) keeps what it went through.
pub fn opened(path: &Path, file: &File) -> Option<FileKey> {
    let key = key_of(file)?;
    let len = file.metadata().ok()?.len();
    with_journal(|j| {
        if !j.is_armed(path) {
            return None;
        }
        let history = j.files.entry(key).or_insert_with(|| History {
            path: path.to_path_buf(),
            lengths: vec![len],
            writes: Vec::new(),
        });
        history.path = path.to_path_buf();
        Some(key)
    })
}

pub fn created(path: &Path, file: &File) {
    let Some(key) = key_of(file) else { return };
    with_journal(|j| {
        if !j.is_armed(path) {
            return;
        }
        // A fresh inode: whatever an earlier file of that number went
        // through is not this one's.
        j.files.insert(
            key,
            History {
                path: path.to_path_buf(),
                lengths: vec![0],
                writes: Vec::new(),
            },
        );
        j.dir_change(path, DirChange::Created(path.to_path_buf()));
    });
}

/// Journals the bytes a write of `len` at `offset` is about to replace
/// (zeroes past the file's end: a page written past it may never reach
/// the disk while the length does).
pub fn before_write(key: FileKey, file: &File, offset: u64, len: usize) {
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let readable = file_len.saturating_sub(offset).min(len as u64) as usize;
    let mut old = vec![0u8; len];
    if file.read_exact_at(&mut old[..readable], offset).is_err() {
        old[..readable].fill(0);
    }
    with_journal(|j| {
        if let Some(history) = j.files.get_mut(&key) {
            history.writes.push((offset, old));
            history.lengths.push(file_len.max(offset + len as u64));
        }
    });
}

/// The file's data and length are durable now.
pub fn synced(key: FileKey, file: &File) {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    with_journal(|j| {
        if let Some(history) = j.files.get_mut(&key) {
            history.writes.clear();
            history.lengths = vec![len];
        }
    });
}

pub fn dir_created(path: &Path) {
    with_journal(|j| {
        if j.is_armed(path) {
            j.dir_change(path, DirChange::CreatedDir(path.to_path_buf()));
        }
    });
}

/// What a rename is about to change, to be journaled once it is done.
pub struct RenameUndo(Option<DirChange>);

pub fn before_rename(from: &Path, to: &Path) -> RenameUndo {
    RenameUndo(with_journal(|j| {
        if !j.is_armed(from) && !j.is_armed(to) {
            return None;
        }
        let replaced = j.save(to);
        Some(DirChange::Renamed {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            replaced,
        })
    }))
}

pub fn renamed(undo: RenameUndo) {
    let Some(change) = undo.0 else { return };
    with_journal(|j| {
        if let DirChange::Renamed { from, to, .. } = &change {
            // A renamed directory takes its files, and their pending
            // changes, along.
            for history in j.files.values_mut() {
                if let Some(moved) = rebased(&history.path, from, to) {
                    history.path = moved;
                }
            }
            let pending: Vec<PathBuf> = j.dirs.keys().cloned().collect();
            for dir in pending {
                if let Some(moved) = rebased(&dir, from, to) {
                    let changes = j.dirs.remove(&dir).expect("listed");
                    j.dirs.entry(moved).or_default().extend(changes);
                }
            }
            let to = to.clone();
            j.dir_change(&to, change);
        }
    });
}

/// `path` as named after `from` was renamed to `to`, if it was under it.
fn rebased(path: &Path, from: &Path, to: &Path) -> Option<PathBuf> {
    let rest = path.strip_prefix(from).ok()?;
    Some(match rest.as_os_str().is_empty() {
        true => to.to_path_buf(),
        false => to.join(rest),
    })
}

/// What a removal is about to take away.
pub struct RemoveUndo(Option<Saved>);

pub fn before_remove(path: &Path) -> RemoveUndo {
    RemoveUndo(with_journal(|j| {
        if j.is_armed(path) { j.save(path) } else { None }
    }))
}

pub fn removed(undo: RemoveUndo) {
    if let Some(saved) = undo.0 {
        let path = saved.path.clone();
        with_journal(|j| j.dir_change(&path, DirChange::Removed(saved)));
    }
}

pub fn dir_synced(dir: &Path) {
    with_journal(|j| {
        j.dirs.remove(dir);
    });
}

/// Leaves under `root` what a power cut now may leave (see the module
/// documentation); what is left counts as durable from then on.
pub fn cut(root: &Path, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    with_journal(|j| {
        assert!(
            j.is_armed(root),
            "{} is not in a folder armed for power cuts (zeroblk::engine::simulate_power_cuts)",
            root.display()
        );
        let keys: Vec<FileKey> = j
            .files
            .iter()
            .filter(|(_, h)| h.path.starts_with(root))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let history = j.files.remove(&key).expect("listed");
            if still_named(&history.path, key) {
                revert_file(&history.path, &history, &mut rng);
            }
        }
        // Deepest first: a directory whose creation is undone goes with
        // all it holds, after its own changes were undone.
        let mut dirs: Vec<PathBuf> = j
            .dirs
            .keys()
            .filter(|d| d.starts_with(root))
            .cloned()
            .collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            let changes = j.dirs.remove(&dir).expect("listed");
            let kept = rng.usize(0..=changes.len());
            for change in changes.into_iter().skip(kept).rev() {
                undo(change, &mut rng);
            }
        }
    });
}

/// Cuts the whole armed folder that holds `path` (a volume's log: its
/// cache directory goes through the cut too, with the directories that
/// lead to the log).
pub fn cut_around(path: &Path, seed: u64) {
    let root = with_journal(|j| {
        j.armed
            .iter()
            .filter(|root| path.starts_with(root))
            .min_by_key(|root| root.components().count())
            .cloned()
    });
    cut(root.as_deref().unwrap_or(path), seed);
}

/// Whether `path` still names the file `key`.
fn still_named(path: &Path, key: FileKey) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == key)
}

/// Gives each page of the file at `path` a state it had since its last
/// fsync, and the file one of its lengths since then.
fn revert_file(path: &Path, history: &History, rng: &mut fastrand::Rng) {
    if history.writes.is_empty() {
        return;
    }
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    else {
        return;
    };
    let mut bytes = std::fs::read(path).unwrap_or_default();
    revert_pages(&mut bytes, &history.writes, rng);
    let len = history.lengths[rng.usize(0..history.lengths.len())];
    bytes.resize(len as usize, 0);
    file.set_len(0).expect("truncate for a power cut");
    file.write_all_at(&bytes, 0)
        .expect("rewrite for a power cut");
}

/// Per page touched by `writes`, keeps the first few of the writes that
/// touched it and undoes the rest, newest first.
fn revert_pages(bytes: &mut Vec<u8>, writes: &[(u64, Vec<u8>)], rng: &mut fastrand::Rng) {
    let mut by_page: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, (offset, old)) in writes.iter().enumerate() {
        let end = offset + (old.len() as u64).max(1);
        for page in offset / PAGE..end.div_ceil(PAGE) {
            by_page.entry(page).or_default().push(i);
        }
    }
    for (page, touching) in by_page {
        let kept = rng.usize(0..=touching.len());
        for &i in touching[kept..].iter().rev() {
            let (offset, old) = &writes[i];
            let from = (page * PAGE).max(*offset);
            let to = ((page + 1) * PAGE).min(offset + old.len() as u64);
            if from >= to {
                continue;
            }
            if bytes.len() < to as usize {
                bytes.resize(to as usize, 0);
            }
            let src = (from - offset) as usize..(to - offset) as usize;
            bytes[from as usize..to as usize].copy_from_slice(&old[src]);
        }
    }
}

/// Undoes one directory change that the cut did not keep.
fn undo(change: DirChange, rng: &mut fastrand::Rng) {
    match change {
        DirChange::Created(path) => {
            let _ = std::fs::remove_file(path);
        }
        DirChange::CreatedDir(path) => {
            let _ = std::fs::remove_dir_all(path);
        }
        DirChange::Renamed { from, to, replaced } => {
            let _ = std::fs::rename(&to, &from);
            if let Some(saved) = replaced {
                restore(saved, rng);
            }
        }
        DirChange::Removed(saved) => restore(saved, rng),
    }
}

/// Brings back a file that a change the cut undid had taken away.
fn restore(saved: Saved, rng: &mut fastrand::Rng) {
    let mut bytes = saved.bytes;
    if let Some(history) = &saved.history {
        revert_pages(&mut bytes, &history.writes, rng);
        let len = history.lengths[rng.usize(0..history.lengths.len())];
        bytes.resize(len as usize, 0);
    }
    if saved.path.parent().is_some_and(Path::is_dir) {
        std::fs::write(&saved.path, bytes).expect("restore a file for a power cut");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::log::file::{self, LogFile};

    /// Syncs 8 KiB of ones, then writes twos and threes past them without
    /// a sync, and makes a second file whose data (not name) is synced.
    fn history_in(root: &Path) {
        let f = LogFile::create_new(&root.join("synced")).unwrap();
        f.write_at(&[1; 8192], 0).unwrap();
        f.sync_data().unwrap();
        file::sync_dir(root).unwrap();
        f.write_at(&[2; 4096], 4096).unwrap();
        f.write_at(&[3; 4096], 8192).unwrap();
        let g = LogFile::create_new(&root.join("new")).unwrap();
        g.write_at(&[9; 100], 0).unwrap();
        g.sync_data().unwrap();
    }

    #[test]
    fn a_cut_keeps_what_was_synced_and_may_drop_the_rest() {
        let mut outcomes = std::collections::HashSet::new();
        for seed in 0..64 {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            arm(root);
            history_in(root);
            cut(root, seed);
            disarm(root);
            let bytes = std::fs::read(root.join("synced")).unwrap();
            assert!(bytes.len() >= 8192, "synced bytes survive");
            assert!(bytes[..4096].iter().all(|&b| b == 1));
            assert!(bytes[4096..8192].iter().all(|&b| b == 1 || b == 2));
            outcomes.insert((bytes[4096], bytes.len(), root.join("new").exists()));
        }
        assert!(outcomes.len() >= 4, "cuts differ by seed: {outcomes:?}");
    }

    /// Red-team finding: the directories of a new volume's cache (its
    /// folder, its log) were made with `create_dir_all` and their parents
    /// never synced, so a power cut could take the whole log, synced
    /// segments and all.
    #[test]
    fn a_new_directory_is_lost_with_its_files_unless_its_parent_was_synced() {
        let mut lost = 0;
        for seed in 0..32 {
            let dir = tempfile::tempdir().unwrap();
            arm(dir.path());
            let (careless, durable) = (dir.path().join("a/log"), dir.path().join("b/log"));
            for (new, durably) in [(&careless, false), (&durable, true)] {
                match durably {
                    true => file::create_dir_durably(new).unwrap(),
                    false => {
                        for level in [new.parent().unwrap(), new.as_path()] {
                            std::fs::create_dir(level).unwrap();
                            dir_created(level);
                        }
                    }
                }
                let f = LogFile::create_new(&new.join("segment")).unwrap();
                f.write_at(b"flushed", 0).unwrap();
                f.sync_data().unwrap();
                file::sync_dir(new).unwrap();
            }
            cut(dir.path(), seed);
            disarm(dir.path());
            assert_eq!(std::fs::read(durable.join("segment")).unwrap(), b"flushed");
            lost += usize::from(!careless.join("segment").exists());
        }
        assert!(lost > 0, "some cut took the carelessly made directory");
    }

    #[test]
    fn undone_renames_and_removals_bring_back_the_old_names() {
        let mut saw_original = false;
        for seed in 0..32 {
            let dir = tempfile::tempdir().unwrap();
            let (a, b) = (dir.path().join("a"), dir.path().join("b"));
            std::fs::write(&a, b"first").unwrap();
            arm(dir.path());
            file::rename(&a, &b).unwrap();
            file::remove(&b).unwrap();
            cut(dir.path(), seed);
            disarm(dir.path());
            assert!(!(a.exists() && b.exists()), "never both names");
            if a.exists() {
                assert_eq!(std::fs::read(&a).unwrap(), b"first");
                saw_original = true;
            }
        }
        assert!(saw_original, "some cut undid both changes");
    }
}
