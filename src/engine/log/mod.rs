//! The write-back log: the folder of segments that holds every write not
//! yet committed to the object store, and, in memory, the epochs those
//! writes are grouped in ([`Epoch`], with what each changed and where) and
//! the [`Journal`] an open volume keeps them in: sealing epochs, the view
//! readers and writers share, retiring segments. [`replay`] rebuilds the
//! epochs from the folder after a restart.
//!
//! A log has an id, recorded in a manifest (`log.json`) and in every
//! segment, and the generation of the volume it started from. A root names
//! the log and the last epoch it contains, which is how a restarting writer
//! tells what is left to replay, and whether its log still applies at all:
//! if someone else committed the volume since, the log is moved aside, not
//! replayed over their state.

mod epoch;
mod file;
mod journal;
mod overlay;
#[cfg(feature = "failpoints")]
pub mod power_cut;
mod record;
mod replay;
mod rewrite;
mod sealed;
mod segment;
mod syncer;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use epoch::{Claim, Epoch, Reservation};
pub use file::create_dir_durably;
pub(in crate::engine) use journal::{Journal, SealFailure, View};
pub use overlay::Slot;
pub use record::{HEADER_LEN as RECORD_HEADER_LEN, RecordFormat, RecordHeader, RecordKind};
pub use replay::{Geometry, Replayed, replay};
pub use segment::{SEGMENT_HEADER_LEN, Segment, SegmentIdentity};
pub(in crate::engine) use syncer::{Lead, Syncer};

use crate::format::Root;
use file::LogFile;

const MANIFEST: &str = "log.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogManifest {
    pub volume: Uuid,
    pub log_id: Uuid,
    /// The generation the volume was at when this log began.
    pub base_generation: u64,
}

/// The log folder of one volume.
#[derive(Debug, Clone)]
pub struct LogDir {
    dir: PathBuf,
    manifest: LogManifest,
    /// Bytes of retired segment files kept for reuse (see [`FreeFiles`]).
    keep_free_bytes: u64,
    /// Set when the process that wrote the log is gone (a simulated
    /// crash): segments dropped after that leave their files as they are.
    abandoned: Arc<AtomicBool>,
    /// Set when the volume closes: no spare file is made after that.
    spares_stopped: Arc<AtomicBool>,
}

/// An opened log: its folder, and the segments a replay must read.
#[derive(Debug)]
pub struct OpenedLog {
    pub log: LogDir,
    /// Records of epochs after this one are not in the store yet.
    pub replay_after: u64,
    /// Segment files in order.
    pub segments: Vec<PathBuf>,
}

impl LogDir {
    /// The log's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The id every segment of this log, and every root that names it,
    /// carries.
    pub fn log_id(&self) -> Uuid {
        self.manifest.log_id
    }

    /// Keeps up to `bytes` of retired segment files for reuse.
    pub fn keep_free(&mut self, bytes: u64) {
        self.keep_free_bytes = bytes;
    }

    /// The id of the log in `dir`, if there is one.
    pub fn id_in(dir: &Path) -> io::Result<Option<Uuid>> {
        Ok(read_manifest(dir)?.map(|manifest| manifest.log_id))
    }

    /// Opens the log in `dir` for a volume whose newest root is `root`,
    /// starting a new one when there is none or the old one no longer
    /// applies (which is then moved aside, with a warning).
    pub fn open(dir: &Path, root: &Root) -> io::Result<OpenedLog> {
        file::create_dir_durably(dir)?;
        if let Some(manifest) = read_manifest(dir)? {
            let replay = if manifest.volume != root.volume {
                None
            } else if root.log_id == manifest.log_id {
                Some(root.log_epoch)
            } else if root.generation == manifest.base_generation {
                Some(0)
            } else {
                None
            };
            if let Some(replay_after) = replay {
                let segments = list_segments(dir)?;
                if let Err(error) = remove_unfinished_spare(dir) {
                    tracing::warn!(dir = %dir.display(), %error, "could not remove an unfinished spare log file");
                }
                let log = LogDir {
                    dir: dir.to_path_buf(),
                    manifest,
                    keep_free_bytes: DEFAULT_FREE_BYTES,
                    abandoned: Arc::default(),
                    spares_stopped: Arc::default(),
                };
                return Ok(OpenedLog {
                    log,
                    replay_after,
                    segments,
                });
            }
            move_aside(dir, root)?;
        }
        let log = LogDir::create(dir, root)?;
        Ok(OpenedLog {
            log,
            replay_after: 0,
            segments: Vec::new(),
        })
    }

    fn create(dir: &Path, root: &Root) -> io::Result<LogDir> {
        // Also makes a move aside of an older log durable: both are
        // changes to the same parent.
        file::create_dir_durably(dir)?;
        // A new log starts its epochs over: files of another log are never
        // reused, so that their records cannot be taken for this one's.
        for free in free_segments(dir)? {
            file::remove(&free)?;
        }
        if let Err(error) = remove_unfinished_spare(dir) {
            tracing::warn!(dir = %dir.display(), %error, "could not remove an unfinished spare log file");
        }
        let manifest = LogManifest {
            volume: root.volume,
            log_id: Uuid::new_v4(),
            base_generation: root.generation,
        };
        let temporary = dir.join(".log.json.tmp");
        let json = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
        file::write_synced(&temporary, &json)?;
        file::rename(&temporary, &dir.join(MANIFEST))?;
        file::sync_dir(dir)?;
        Ok(LogDir {
            dir: dir.to_path_buf(),
            manifest,
            keep_free_bytes: DEFAULT_FREE_BYTES,
            abandoned: Arc::default(),
            spares_stopped: Arc::default(),
        })
    }

    /// A new segment `seq` for epochs from `first_epoch` on: a retired
    /// segment's file when one is free, else a new file.
    pub fn create_segment(&self, seq: u64, first_epoch: u64) -> io::Result<Segment> {
        let identity = SegmentIdentity {
            log_id: self.manifest.log_id,
            volume: self.manifest.volume,
            seq,
            first_epoch,
            format: RecordFormat::Sequenced,
        };
        match free_segments(&self.dir)?.pop() {
            Some(free) => Segment::recycle(&free, &self.dir, identity),
            None => Segment::create(&self.dir, identity),
        }
    }

    /// Makes a spare free file of `len` bytes, written out with zeros and
    /// synced, when the log has no free file and keeps at least `len`
    /// bytes of them. The next segment is then made from it: its records
    /// overwrite blocks the filesystem has allocated, written and synced,
    /// so that an fdatasync after a record flushes that data and no
    /// metadata. Appending to a new file instead costs each fdatasync a
    /// journal commit for the file's new length (about twice the time on
    /// the ext4 measured, docs/benchmarks/notes.md).
    ///
    /// Zeros never pass for records (a record starts with its magic), so
    /// replay ends a segment made from a spare where its records end, as it
    /// does in a recycled file. The file is written under a temporary name
    /// and takes its free name only once synced; a crash before that leaves
    /// the temporary file, which the next open removes. Returns whether a
    /// spare was made.
    pub fn prepare_spare(&self, len: u64) -> io::Result<bool> {
        if self.spares_stopped() || len > self.keep_free_bytes {
            return Ok(false);
        }
        if !free_segments(&self.dir)?.is_empty() {
            return Ok(false);
        }
        let unfinished = self.dir.join(UNFINISHED_SPARE);
        remove_unfinished_spare(&self.dir)?;
        match self.write_zeros(&unfinished, len) {
            Ok(true) => {}
            // Stopped, or the disk is full: what was written goes, so a
            // spare never holds room the log needs (a crashed process
            // leaves it for the next open).
            stopped_or_failed => {
                if !self.abandoned.load(Ordering::Acquire) {
                    let _ = file::remove(&unfinished);
                }
                return stopped_or_failed;
            }
        }
        fail::fail_point!("log::spare_before_rename", |_| Err(io::Error::other(
            "failpoint log::spare_before_rename"
        )));
        if self.spares_stopped() {
            if !self.abandoned.load(Ordering::Acquire) {
                let _ = file::remove(&unfinished);
            }
            return Ok(false);
        }
        // Its name needs no directory sync: a spare whose rename a power
        // cut undoes is a leftover temporary file, and recycling it syncs
        // the directory, which makes the rename durable first.
        match file::rename_noreplace(&unfinished, &self.dir.join(SPARE_NAME)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                file::remove(&unfinished)?;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes `len` zeros to a new file at `path` and syncs them; false if
    /// the spares were stopped first.
    fn write_zeros(&self, path: &Path, len: u64) -> io::Result<bool> {
        let spare = LogFile::create_new(path)?;
        let zeros = vec![0u8; SPARE_WRITE_BYTES];
        let mut at = 0;
        while at < len {
            if self.spares_stopped() {
                return Ok(false);
            }
            let n = zeros.len().min((len - at) as usize);
            fail::fail_point!("log::spare_write", |_| Err(io::Error::from_raw_os_error(
                libc::ENOSPC
            )));
            spare.write_at(&zeros[..n], at)?;
            at += n as u64;
        }
        spare.sync_data()?;
        Ok(true)
    }

    /// No spare is made from now on (the volume is closing); one being
    /// made stops where it is, as a temporary file the next open removes.
    pub fn stop_spares(&self) {
        self.spares_stopped.store(true, Ordering::Release);
    }

    fn spares_stopped(&self) -> bool {
        self.spares_stopped.load(Ordering::Acquire) || self.abandoned.load(Ordering::Acquire)
    }

    /// Removes a segment past the end of the log (after a torn record).
    pub fn remove_segment(&self, segment: &Segment) {
        if let Err(error) = file::remove(segment.path()) {
            tracing::warn!(path = %segment.path().display(), %error, "could not remove a log segment");
        }
    }

    /// Gives up a segment whose every record is committed, once nobody
    /// uses it any more (see [`FreeFiles`]).
    pub fn retire_segment(&self, segment: &Segment) {
        segment.retire(FreeFiles {
            dir: self.dir.clone(),
            keep_bytes: self.keep_free_bytes,
            abandoned: Arc::clone(&self.abandoned),
        });
    }

    /// For crash tests: from now on this process leaves the log's files
    /// alone, as a killed one would (segments still referenced somewhere
    /// are dropped later).
    #[cfg(feature = "failpoints")]
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }
}

/// Bytes of retired segment files kept unless the volume says otherwise.
const DEFAULT_FREE_BYTES: u64 = 512 << 20;
const FREE_PREFIX: &str = "free-";
/// The free file [`LogDir::prepare_spare`] makes, and its name until it
/// is synced (which no listing of segments or free files matches).
const SPARE_NAME: &str = "free-spare.zlog";
const UNFINISHED_SPARE: &str = ".spare.tmp";
/// Zeros written per call while a spare is made.
const SPARE_WRITE_BYTES: usize = 1 << 20;

/// Where retired segment files go: they wait in `dir` as free files for
/// later segments, up to `keep_bytes` of them. A reused file overwrites
/// blocks the filesystem has already allocated, often in pages still in
/// the page cache: on the machines measured, several times faster than
/// appending to a new file, whose blocks must be allocated and written
/// back first.
#[derive(Debug)]
pub struct FreeFiles {
    dir: PathBuf,
    keep_bytes: u64,
    abandoned: Arc<AtomicBool>,
}

impl FreeFiles {
    /// Takes back a retired segment's file: kept as a free file while the
    /// free files, it included, hold at most `keep_bytes`; removed
    /// otherwise.
    fn take_back(&self, segment: &Segment) {
        if self.abandoned.load(Ordering::Acquire) {
            return;
        }
        let keep = segment.len().is_ok_and(|len| {
            free_bytes(&self.dir).is_ok_and(|free| free.saturating_add(len) <= self.keep_bytes)
        });
        let taken = match keep {
            true => file::rename(segment.path(), &self.dir.join(free_name(segment.seq))),
            false => file::remove(segment.path()),
        };
        if let Err(error) = taken {
            tracing::warn!(path = %segment.path().display(), %error, "could not retire a committed log segment");
        }
    }
}

fn free_name(seq: u64) -> String {
    format!("{FREE_PREFIX}{}", Segment::file_name(seq))
}

/// Bytes held by the free segment files in `dir`.
fn free_bytes(dir: &Path) -> io::Result<u64> {
    free_segments(dir)?
        .iter()
        .try_fold(0u64, |sum, path| Ok(sum + fs::metadata(path)?.len()))
}

/// The free segment files in `dir`: regular files only, so that a symlink
/// or anything else put there under a free name is never written through.
fn free_segments(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with(FREE_PREFIX) {
            continue;
        }
        if entry.file_type()?.is_file() {
            found.push(entry.path());
        } else {
            tracing::warn!(path = %entry.path().display(), "not a regular file, so not reused as a log segment; remove it");
        }
    }
    found.sort();
    Ok(found)
}

/// Removes what a spare's preparation left when it was cut short.
fn remove_unfinished_spare(dir: &Path) -> io::Result<()> {
    match file::remove(&dir.join(UNFINISHED_SPARE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn read_manifest(dir: &Path) -> io::Result<Option<LogManifest>> {
    match fs::read(dir.join(MANIFEST)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn list_segments(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(seq) = Segment::parse_file_name(&entry.file_name().to_string_lossy()) {
            found.push((seq, entry.path()));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

/// Keeps a log that no longer applies where an operator can look at it.
fn move_aside(dir: &Path, root: &Root) -> io::Result<()> {
    let aside = dir.with_file_name(format!("orphaned-log-{}", crate::format::root::now_ms()));
    let bytes: u64 = list_segments(dir)?
        .iter()
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    tracing::warn!(
        log = %dir.display(),
        moved_to = %aside.display(),
        bytes,
        generation = root.generation,
        "this cache's write-back log belongs to an older state of the volume (another writer committed since); it was not replayed and was moved aside"
    );
    file::rename(dir, &aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new log in a temporary folder, for a volume whose root is `root`.
    fn new_log() -> (tempfile::TempDir, Root, LogDir) {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::empty(Uuid::new_v4(), 1 << 30, 1 << 20);
        let log = LogDir::open(dir.path(), &root).unwrap().log;
        (dir, root, log)
    }

    #[test]
    fn a_log_applies_to_its_own_commits_and_to_an_unchanged_volume() {
        let dir = tempfile::tempdir().unwrap();
        let log_dir = dir.path().join("log");
        let mut root = Root::empty(Uuid::new_v4(), 1 << 30, 1 << 20);
        let opened = LogDir::open(&log_dir, &root).unwrap();
        assert_eq!(opened.replay_after, 0);
        let log_id = opened.log.manifest.log_id;

        let again = LogDir::open(&log_dir, &root).unwrap();
        assert_eq!(
            again.log.manifest.log_id, log_id,
            "unchanged volume: same log"
        );

        root.generation = 5;
        root.log_id = log_id;
        root.log_epoch = 9;
        let ours = LogDir::open(&log_dir, &root).unwrap();
        assert_eq!(ours.replay_after, 9);

        root.log_id = Uuid::new_v4();
        let theirs = LogDir::open(&log_dir, &root).unwrap();
        assert_ne!(theirs.log.manifest.log_id, log_id, "stale log replaced");
        let aside = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("orphaned-log-")
            })
            .count();
        assert_eq!(aside, 1);
    }

    #[test]
    fn retired_files_are_kept_up_to_the_byte_budget_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::empty(Uuid::new_v4(), 1 << 30, 1 << 20);
        let mut log = LogDir::open(dir.path(), &root).unwrap().log;
        log.keep_free_bytes = 3 * 4096;
        for seq in 1..=3 {
            let segment = log.create_segment(seq, seq).unwrap();
            segment.write_at(&[seq as u8; 4096], 4096).unwrap();
            log.retire_segment(&segment);
        }
        let free = free_segments(dir.path()).unwrap();
        assert_eq!(free.len(), 1, "one 8 KiB file fits in 12 KiB: {free:?}");
        assert_eq!(free_bytes(dir.path()).unwrap(), 2 * 4096);
        let reused = log.create_segment(4, 4).unwrap();
        assert_eq!(reused.len().unwrap(), 2 * 4096, "the free file was reused");
        assert!(free_segments(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_spare_is_made_only_for_an_empty_pool_within_budget_and_becomes_the_next_segment() {
        // Failpoints are global: a test that fails spares' renames must
        // not run beside this one.
        let scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let root = Root::empty(Uuid::new_v4(), 1 << 30, 1 << 20);
        let mut log = LogDir::open(dir.path(), &root).unwrap().log;
        log.keep_free_bytes = 64 << 10;
        assert!(!log.prepare_spare(128 << 10).unwrap(), "over the budget");
        assert!(log.prepare_spare(48 << 10).unwrap());
        let spare = dir.path().join(SPARE_NAME);
        let bytes = fs::read(&spare).unwrap();
        assert_eq!(bytes.len(), 48 << 10);
        assert!(bytes.iter().all(|&b| b == 0), "a spare holds zeros only");
        assert!(!log.prepare_spare(8 << 10).unwrap(), "a free file waits");

        let segment = log.create_segment(1, 1).unwrap();
        assert_eq!(segment.len().unwrap(), 48 << 10, "made from the spare");
        assert!(!spare.exists());
        assert!(list_segments(dir.path()).unwrap() == [segment.path().to_path_buf()]);

        log.stop_spares();
        assert!(!log.prepare_spare(8 << 10).unwrap(), "stopped");
        scenario.teardown();
    }

    #[test]
    fn a_spare_cut_short_is_removed_when_the_log_opens_and_never_listed() {
        let scenario = fail::FailScenario::setup();
        let (dir, root, log) = new_log();
        fail::cfg("log::spare_before_rename", "return").unwrap();
        assert!(log.prepare_spare(16 << 10).is_err());
        fail::remove("log::spare_before_rename");
        let unfinished = dir.path().join(UNFINISHED_SPARE);
        assert!(unfinished.exists());
        assert!(free_segments(dir.path()).unwrap().is_empty());
        assert!(list_segments(dir.path()).unwrap().is_empty());

        LogDir::open(dir.path(), &root).unwrap();
        assert!(!unfinished.exists(), "the next open removes it");
        scenario.teardown();
    }

    #[test]
    fn a_spare_the_disk_has_no_room_for_leaves_nothing_behind() {
        let scenario = fail::FailScenario::setup();
        let (dir, _root, log) = new_log();
        fail::cfg("log::spare_write", "1*off->return").unwrap();
        let refused = log.prepare_spare(4 << 20).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::ENOSPC));
        fail::remove("log::spare_write");
        assert!(
            !dir.path().join(UNFINISHED_SPARE).exists(),
            "its room is given back"
        );
        assert!(free_segments(dir.path()).unwrap().is_empty());
        scenario.teardown();
    }

    #[test]
    fn a_symlink_under_a_free_name_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let root = Root::empty(Uuid::new_v4(), 1 << 30, 1 << 20);
        let log = LogDir::open(dir.path(), &root).unwrap().log;
        std::os::unix::fs::symlink(&victim, dir.path().join(SPARE_NAME)).unwrap();
        std::fs::create_dir(dir.path().join("free-0000000000000009.zlog")).unwrap();
        let segment = log.create_segment(1, 1).unwrap();
        segment.write_at(&[1u8; 4096], SEGMENT_HEADER_LEN).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        assert!(!segment.path().is_symlink());
        assert!(
            LogDir::open(dir.path(), &root).is_ok(),
            "odd entries do not stop an open"
        );
    }
}
