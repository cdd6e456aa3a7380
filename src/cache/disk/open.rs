//! Chunk files open for reading, each with its block table once checked.
//!
//! Reading a chunk file by its path costs a path lookup and an `open` per
//! read, more than reading 4 KiB of it, and its table costs another read.
//! So both are kept for the chunks read most recently: at most a quarter
//! of the process's open-file limit (up to [`OPEN_FILES_MAX`]), and at
//! most [`TABLE_MEMORY_MAX`] of tables.

use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use crate::cache::blocks::{BLOCK, BlockTable, table_len};
use crate::format::ObjectId;

/// Memory for checked block tables at most (a 1 MiB chunk's is 1 KiB).
pub const TABLE_MEMORY_MAX: u64 = 16 << 20;

/// Chunk files kept open at most.
pub const OPEN_FILES_MAX: u64 = 1024;

/// Why a chunk could not be read from its file.
#[derive(Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// The file is gone or shorter than its chunk (evicted meanwhile).
    Gone,
    /// The bytes read do not hash to the chunk's id.
    Damaged,
}

/// The chunk files open for reading, least recently used out first.
#[derive(Clone)]
pub struct OpenChunks {
    cache: Cache<ObjectId, Arc<OpenChunk>>,
}

/// One chunk's file, open, and its table once loaded and checked.
pub struct OpenChunk {
    id: ObjectId,
    path: PathBuf,
    file: File,
    len: usize,
    table: OnceLock<BlockTable>,
}

impl OpenChunks {
    pub fn new() -> OpenChunks {
        let files = open_files_max();
        // Each entry weighs at least a share of the memory bound that
        // keeps the entries within the open-file bound too.
        let share = (TABLE_MEMORY_MAX / files) as u32;
        let cache = Cache::builder()
            .max_capacity(TABLE_MEMORY_MAX)
            .weigher(move |_id: &ObjectId, open: &Arc<OpenChunk>| {
                (table_len(open.len as u64) as u32).max(share)
            })
            .eviction_policy(EvictionPolicy::lru())
            .build();
        OpenChunks { cache }
    }

    /// The chunk `id`, `len` bytes long, whose file is `path`, open.
    pub fn get_or_open(
        &self,
        id: &ObjectId,
        len: usize,
        path: &Path,
    ) -> io::Result<Arc<OpenChunk>> {
        if let Some(open) = self.cache.get(id) {
            return Ok(open);
        }
        let open = Arc::new(OpenChunk {
            id: *id,
            path: path.to_path_buf(),
            file: open_regular(path)?,
            len,
            table: OnceLock::new(),
        });
        self.cache.insert(*id, Arc::clone(&open));
        Ok(open)
    }

    /// Closes the chunk's file (once no read holds it) and drops its table.
    pub fn forget(&self, id: &ObjectId) {
        self.cache.invalidate(id);
    }
}

impl OpenChunk {
    /// The whole chunk, checked. Its file is read whole, table included,
    /// through a file of its own from its start: a positioned read would
    /// need its buffer zeroed first, a tenth of a sequential reader's time.
    pub fn whole(&self) -> Result<Bytes, Unreadable> {
        let file_len = self.len + table_len(self.len as u64);
        let mut data = Vec::with_capacity(file_len);
        open_regular(&self.path)
            .and_then(|file| file.take(file_len as u64).read_to_end(&mut data))
            .map_err(|_| Unreadable::Gone)?;
        if data.len() != file_len {
            return Err(Unreadable::Gone);
        }
        let table = match self.table.get() {
            Some(table) => table,
            None => self.keep_table(&data[self.len..])?,
        };
        data.truncate(self.len);
        match table.verify(0, &data) {
            true => Ok(Bytes::from(data)),
            false => Err(Unreadable::Damaged),
        }
    }

    /// Bytes `range` of the chunk, read and checked by whole blocks.
    /// `range` must lie within the chunk.
    pub fn range(&self, range: Range<usize>) -> Result<Bytes, Unreadable> {
        debug_assert!(range.start < range.end && range.end <= self.len);
        if range.len() == self.len {
            return self.whole();
        }
        let table = self.table()?;
        let first = range.start / BLOCK;
        let blocks = first * BLOCK..(range.end.div_ceil(BLOCK) * BLOCK).min(self.len);
        let data = self.read(blocks.start as u64, blocks.len())?;
        if !table.verify(first, &data) {
            return Err(Unreadable::Damaged);
        }
        let within = range.start - blocks.start..range.end - blocks.start;
        Ok(Bytes::from(data).slice(within))
    }

    /// The chunk's table, read from its file and checked the first time.
    fn table(&self) -> Result<&BlockTable, Unreadable> {
        match self.table.get() {
            Some(table) => Ok(table),
            None => {
                let encoded = self.read(self.len as u64, table_len(self.len as u64))?;
                self.keep_table(&encoded)
            }
        }
    }

    /// The table `encoded`, if it is sealed for this chunk, kept.
    fn keep_table(&self, encoded: &[u8]) -> Result<&BlockTable, Unreadable> {
        let table =
            BlockTable::decode(encoded, self.len as u64, &self.id).ok_or(Unreadable::Damaged)?;
        Ok(self.table.get_or_init(|| table))
    }

    /// Exactly `len` bytes at `offset`.
    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, Unreadable> {
        let mut data = vec![0u8; len];
        self.file
            .read_exact_at(&mut data, offset)
            .map_err(|_| Unreadable::Gone)?;
        Ok(data)
    }
}

/// The regular file at `path`, open for reading. Anything else put in its
/// place (a FIFO, whose open would wait for a writer; a symlink; a device)
/// is refused without blocking.
fn open_regular(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)?;
    match file.metadata()?.is_file() {
        true => Ok(file),
        false => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        )),
    }
}

/// Chunk files to keep open: a quarter of what this process may open, up
/// to [`OPEN_FILES_MAX`].
fn open_files_max() -> u64 {
    use nix::sys::resource::{Resource, getrlimit};
    let (soft, _hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    (soft / 4).clamp(1, OPEN_FILES_MAX)
}
