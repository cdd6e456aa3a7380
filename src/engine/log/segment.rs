//! One file of the write-back log.
//!
//! A segment starts with a 64-byte header (magic "ZBLOG003", the log's id,
//! the volume's uuid, the segment's sequence number, the first epoch it
//! may hold); records follow. Each record is written once, at an offset
//! reserved for it, with `pwrite`.
//!
//! A segment whose records are all committed is recycled: its file becomes
//! a later segment, overwritten in place, which costs the filesystem no
//! block allocation and fdatasync no metadata, and finds its pages in the
//! page cache. What the file held before stays behind the new records, and
//! can never pass for them: every old record belongs to an epoch before the
//! header's first epoch.
//!
//! Within the open epoch a record may also be rewritten in place, once the
//! records after it hide all of its blocks (see the engine's `rewrite`).
//!
//! Older segments are read as they always were: "ZBLOG002" ones have
//! positional records ([`RecordFormat::Positional`]), and "ZBLOG001" ones,
//! from before recycling, no first epoch either.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use uuid::Uuid;

use super::FreeFiles;
use super::file::{self, LogFile};
use super::record::RecordFormat;

pub const SEGMENT_HEADER_LEN: u64 = 64;
const MAGIC: &[u8; 8] = b"ZBLOG003";
/// Segments written before sequenced records.
const MAGIC_V2: &[u8; 8] = b"ZBLOG002";
/// Segments written before recycling: no first epoch either.
const MAGIC_V1: &[u8; 8] = b"ZBLOG001";

/// An open log segment.
#[derive(Debug)]
pub struct Segment {
    pub seq: u64,
    path: PathBuf,
    file: LogFile,
    /// Bytes known to be on stable storage.
    synced_len: AtomicU64,
    /// An fdatasync of the file failed: the kernel may have dropped its
    /// dirty pages, so no later sync of it may count as making them
    /// durable.
    sync_failed: AtomicBool,
    /// Set once every record is committed: the log folder that takes the
    /// file back (for reuse, or to remove it) when the last user lets go.
    retired: OnceLock<FreeFiles>,
}

/// The identity a segment's header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentIdentity {
    pub log_id: Uuid,
    pub volume: Uuid,
    pub seq: u64,
    /// Records of earlier epochs are left over from the file's earlier
    /// life: the segment ends before the first of them.
    pub first_epoch: u64,
    /// How its records are laid out: new segments are always sequenced.
    pub format: RecordFormat,
}

impl SegmentIdentity {
    fn header(&self) -> [u8; SEGMENT_HEADER_LEN as usize] {
        let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..24].copy_from_slice(self.log_id.as_bytes());
        header[24..40].copy_from_slice(self.volume.as_bytes());
        header[40..48].copy_from_slice(&self.seq.to_le_bytes());
        header[48..56].copy_from_slice(&self.first_epoch.to_le_bytes());
        header
    }
}

impl Segment {
    pub fn file_name(seq: u64) -> String {
        format!("{seq:016x}.zlog")
    }

    pub fn parse_file_name(name: &str) -> Option<u64> {
        let hex = name.strip_suffix(".zlog")?;
        (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
    }

    /// Creates a segment and makes its existence durable (file and
    /// directory entry), so an fsync of its data later is enough.
    pub fn create(dir: &Path, identity: SegmentIdentity) -> io::Result<Segment> {
        let path = dir.join(Self::file_name(identity.seq));
        let file = LogFile::create_new(&path)?;
        file.write_at(&identity.header(), 0)?;
        file.sync_data()?;
        file::sync_dir(dir)?;
        Ok(Segment::new(identity.seq, path, file))
    }

    /// Makes the retired segment file `old` the segment `identity`: a new
    /// header, made durable before the file takes the segment's name, so
    /// a crash leaves either a free file or the new segment.
    pub fn recycle(old: &Path, dir: &Path, identity: SegmentIdentity) -> io::Result<Segment> {
        let file = LogFile::open(old)?;
        file.write_at(&identity.header(), 0)?;
        file.sync_data()?;
        fail::fail_point!("log::recycle_before_rename", |_| Err(io::Error::other(
            "failpoint log::recycle_before_rename"
        )));
        let path = dir.join(Self::file_name(identity.seq));
        // Never over a segment of that name: fail as creating one would.
        file::rename_noreplace(old, &path)?;
        file::sync_dir(dir)?;
        Ok(Segment::new(identity.seq, path, file))
    }

    fn new(seq: u64, path: PathBuf, file: LogFile) -> Segment {
        Segment {
            seq,
            path,
            file,
            synced_len: AtomicU64::new(SEGMENT_HEADER_LEN),
            sync_failed: AtomicBool::new(false),
            retired: OnceLock::new(),
        }
    }

    /// Gives the segment's file back to `free` once nobody uses it:
    /// a reader that resolved a block to it may still read it, and reuse
    /// must never overwrite what a reader is about to read.
    pub fn retire(&self, free: FreeFiles) {
        let _ = self.retired.set(free);
    }

    /// Opens an existing segment for replay, returning its identity.
    pub fn open(path: &Path) -> io::Result<(Segment, SegmentIdentity)> {
        let file = LogFile::open(path)?;
        let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
        file.read_at(&mut header, 0)?;
        let (first_epoch_at, format) = match &header[..8] {
            magic if magic == MAGIC => (Some(48), RecordFormat::Sequenced),
            magic if magic == MAGIC_V2 => (Some(48), RecordFormat::Positional),
            magic if magic == MAGIC_V1 => (None, RecordFormat::Positional),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not a zeroblk log segment", path.display()),
                ));
            }
        };
        let uuid_at = |at: usize| Uuid::from_slice(&header[at..at + 16]).expect("16 bytes");
        let u64_at =
            |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
        let identity = SegmentIdentity {
            log_id: uuid_at(8),
            volume: uuid_at(24),
            seq: u64_at(40),
            first_epoch: first_epoch_at.map_or(0, u64_at),
            format,
        };
        let segment = Segment::new(identity.seq, path.to_path_buf(), file);
        // Nothing of it counts as durable yet: a killed process leaves its
        // writes in the page cache, unsynced, and a replay that keeps them
        // must sync them before anything after them is acknowledged.
        segment.synced_len.store(0, Ordering::Release);
        Ok((segment, identity))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_at(data, offset)
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_at(buf, offset)
    }

    pub fn len(&self) -> io::Result<u64> {
        self.file.len()
    }

    /// A handle that reads the segment from its start (for replay).
    pub fn reader(&self) -> io::Result<File> {
        self.file.reader()
    }

    /// How many bytes below `end` are not known to be durable.
    pub fn unsynced_below(&self, end: u64) -> u64 {
        end.saturating_sub(self.synced_len.load(Ordering::Acquire))
    }

    /// Makes every byte below `end` durable (one fdatasync, skipped when an
    /// earlier one already covered `end`). Once an fdatasync of the file
    /// has failed, every later call fails too: a second fdatasync would
    /// succeed over pages the kernel dropped, and lie.
    pub fn sync_to(&self, end: u64) -> io::Result<()> {
        if self.sync_failed.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "an earlier fdatasync of this log segment failed, and its unsynced writes may be gone",
            ));
        }
        if self.synced_len.load(Ordering::Acquire) >= end {
            return Ok(());
        }
        remembering_failure(&self.sync_failed, || {
            fail::fail_point!("log::sync_fails", |_| Err(io::Error::from_raw_os_error(
                nix::libc::EIO
            )));
            self.file.sync_data()
        })?;
        self.synced_len.fetch_max(end, Ordering::AcqRel);
        Ok(())
    }

    /// Cuts the segment at `len` (the end of its last whole record) and
    /// makes that durable.
    pub fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.truncate(len)?;
        self.synced_len.store(len, Ordering::Release);
        Ok(())
    }
}

/// Runs `sync`, and sets `failed` if it fails.
fn remembering_failure(
    failed: &AtomicBool,
    sync: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    let synced = sync();
    if synced.is_err() {
        failed.store(true, Ordering::Release);
    }
    synced
}

impl Drop for Segment {
    fn drop(&mut self) {
        if let Some(free) = self.retired.get() {
            free.take_back(self);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment of a new log.
    fn identity(seq: u64, first_epoch: u64) -> SegmentIdentity {
        SegmentIdentity {
            log_id: Uuid::new_v4(),
            volume: Uuid::new_v4(),
            seq,
            first_epoch,
            format: RecordFormat::Sequenced,
        }
    }

    #[test]
    fn creates_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let identity = identity(3, 12);
        let segment = Segment::create(dir.path(), identity).unwrap();
        segment.write_at(b"hello", SEGMENT_HEADER_LEN).unwrap();
        segment.sync_to(SEGMENT_HEADER_LEN + 5).unwrap();
        let (reopened, found) = Segment::open(segment.path()).unwrap();
        assert_eq!(found, identity);
        let mut buf = [0u8; 5];
        reopened.read_at(&mut buf, SEGMENT_HEADER_LEN).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(Segment::parse_file_name(&Segment::file_name(3)), Some(3));
        assert_eq!(Segment::parse_file_name("log.json"), None);
    }

    /// The kernel may drop a file's dirty pages when an fdatasync of it
    /// fails, and then report success on the next: so the first failure
    /// sticks, even for a caller that never saw it (a sync whose waiter
    /// went away).
    #[test]
    fn a_failed_sync_is_never_retried() {
        let dir = tempfile::tempdir().unwrap();
        let segment = Segment::create(dir.path(), identity(1, 1)).unwrap();
        segment.write_at(b"lost?", SEGMENT_HEADER_LEN).unwrap();
        let eio = || Err(io::Error::from_raw_os_error(nix::libc::EIO));
        assert!(remembering_failure(&segment.sync_failed, eio).is_err());
        let again = segment.sync_to(SEGMENT_HEADER_LEN + 5);
        assert!(again.is_err(), "a failed sync was retried and believed");
        assert!(segment.sync_to(SEGMENT_HEADER_LEN).is_err());
    }

    #[test]
    fn a_recycled_segment_has_its_new_identity_and_keeps_its_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let first = identity(1, 1);
        let old = Segment::create(dir.path(), first).unwrap();
        old.write_at(&[7u8; 8192], SEGMENT_HEADER_LEN).unwrap();
        let free = dir.path().join("free");
        std::fs::rename(old.path(), &free).unwrap();
        let second = SegmentIdentity {
            seq: 2,
            first_epoch: 40,
            ..first
        };
        let recycled = Segment::recycle(&free, dir.path(), second).unwrap();
        assert!(!free.exists());
        assert_eq!(recycled.len().unwrap(), SEGMENT_HEADER_LEN + 8192);
        let (_, found) = Segment::open(recycled.path()).unwrap();
        assert_eq!(found, second);
    }
}
