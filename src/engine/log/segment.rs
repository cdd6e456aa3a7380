//! One file of the write-back log.
//!
//! A segment starts with a 64-byte header (magic "ZBLOG001", the log's id,
//! the volume's uuid, the segment's sequence number); records follow. Each
//! record is written once, at an offset reserved for it, with `pwrite`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use uuid::Uuid;

pub const SEGMENT_HEADER_LEN: u64 = 64;
const MAGIC: &[u8; 8] = b"ZBLOG001";

/// An open log segment.
#[derive(Debug)]
pub struct Segment {
    pub seq: u64,
    path: PathBuf,
    file: File,
    /// Bytes known to be on stable storage.
    synced_len: AtomicU64,
}

/// The identity a segment's header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentIdentity {
    pub log_id: Uuid,
    pub volume: Uuid,
    pub seq: u64,
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
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..24].copy_from_slice(identity.log_id.as_bytes());
        header[24..40].copy_from_slice(identity.volume.as_bytes());
        header[40..48].copy_from_slice(&identity.seq.to_le_bytes());
        file.write_all_at(&header, 0)?;
        file.sync_all()?;
        File::open(dir)?.sync_all()?;
        Ok(Segment {
            seq: identity.seq,
            path,
            file,
            synced_len: AtomicU64::new(SEGMENT_HEADER_LEN),
        })
    }

    /// Opens an existing segment for replay, returning its identity.
    pub fn open(path: &Path) -> io::Result<(Segment, SegmentIdentity)> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
        file.read_exact_at(&mut header, 0)?;
        if &header[..8] != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a zeroblk log segment", path.display()),
            ));
        }
        let uuid_at = |at: usize| Uuid::from_slice(&header[at..at + 16]).expect("16 bytes");
        let identity = SegmentIdentity {
            log_id: uuid_at(8),
            volume: uuid_at(24),
            seq: u64::from_le_bytes(header[40..48].try_into().expect("8 bytes")),
        };
        let len = file.metadata()?.len();
        let segment = Segment {
            seq: identity.seq,
            path: path.to_path_buf(),
            file,
            synced_len: AtomicU64::new(len),
        };
        Ok((segment, identity))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    pub fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Makes every byte below `end` durable (one fdatasync, skipped when an
    /// earlier one already covered `end`).
    pub fn sync_to(&self, end: u64) -> io::Result<()> {
        if self.synced_len.load(Ordering::Acquire) >= end {
            return Ok(());
        }
        self.file.sync_data()?;
        self.synced_len.fetch_max(end, Ordering::AcqRel);
        Ok(())
    }

    /// Cuts the segment at `len` (the end of its last whole record) and
    /// makes that durable.
    pub fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.file.sync_all()?;
        self.synced_len.store(len, Ordering::Release);
        Ok(())
    }

    /// For crash tests: the bytes a power cut would have kept at least.
    pub fn synced_len(&self) -> u64 {
        self.synced_len.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let identity = SegmentIdentity {
            log_id: Uuid::new_v4(),
            volume: Uuid::new_v4(),
            seq: 3,
        };
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
}
