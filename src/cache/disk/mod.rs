//! The disk tier: decompressed chunks as files, bounded in bytes, least
//! recently used out first, kept across restarts.
//!
//! A file holds a chunk's bytes (verified against its id before they get
//! here) followed by its [`BlockTable`], and is named by the chunk's hash
//! (`<hash>.chunk`); it is written under a temporary name and renamed, so
//! a crash leaves either a whole file or none, and its length gives the
//! chunk's. Nothing read back is trusted: a read reads only the 4 KiB
//! blocks around what it asks for and checks each against the table,
//! itself checked to be sealed for this chunk when first loaded. A
//! damaged file is dropped and counted as a miss, never returned. The
//! cache is never fsynced: losing it loses only speed. Files of older
//! layouts are removed at open.
//!
//! The files of the chunks read most recently stay open, with their
//! checked tables (see [`open`]), so a small read costs one pread and one
//! block's hash. A file evicted while open is unlinked, and its space
//! comes back when the last read of it closes it.
//!
//! The cache shares its filesystem with the write-back log, which holds
//! data nobody else has; so it never takes the log's room. It keeps a
//! reserve of free space (what the log may grow to): a chunk that would
//! leave less free is stored only after evicting enough to make room, or
//! not at all, and opening the cache gives back whatever of the reserve
//! it holds (the log may have grown, or other files, since it was full).

mod open;

use std::fs;
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use super::blocks::{BLOCK, BlockTable, table_len};
use crate::format::ObjectId;
use open::{OpenChunk, OpenChunks, Unreadable};

/// The suffix of a cached chunk's file name.
const SUFFIX: &str = ".chunk";

/// The disk tier of the chunk cache.
#[derive(Clone)]
pub struct DiskCache {
    dir: Arc<PathBuf>,
    /// Each cached chunk's length, weighed by its file's.
    index: Cache<ObjectId, u32>,
    /// The files of the chunks read most recently.
    open: OpenChunks,
    /// Free bytes to leave on the filesystem, for the log.
    reserve: u64,
}

impl DiskCache {
    /// Opens (creating it if needed) a cache of at most `max_bytes` in
    /// `dir`, indexing the files a previous run left there, oldest first,
    /// and evicting what it must to leave `reserve` bytes free.
    pub fn open(dir: &Path, max_bytes: u64, reserve: u64) -> io::Result<DiskCache> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let dir = Arc::new(dir.to_path_buf());
        let open = OpenChunks::new();
        let (evict_dir, evict_open) = (Arc::clone(&dir), open.clone());
        let index = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_id: &ObjectId, len: &u32| file_len(*len))
            .eviction_policy(EvictionPolicy::lru())
            .eviction_listener(move |id: Arc<ObjectId>, _len, cause| {
                if cause != RemovalCause::Replaced {
                    evict_open.forget(&id);
                    let _ = fs::remove_file(path_in(&evict_dir, &id));
                }
            })
            .build();
        let cache = DiskCache {
            dir,
            index,
            open,
            reserve,
        };
        cache.index_existing_files()?;
        if !cache.make_room(0) {
            tracing::warn!(
                dir = %cache.dir.display(),
                reserve = reserve,
                "the disk cache stays empty: its filesystem has less free space than the write-back log may need; give the cache dir more room, or lower --max-dirty"
            );
        }
        Ok(cache)
    }

    fn index_existing_files(&self) -> io::Result<()> {
        let mut found: Vec<(SystemTime, ObjectId, u32)> = Vec::new();
        for entry in fs::read_dir(self.dir.as_path())? {
            let entry = entry?;
            let meta = entry.metadata()?;
            let name = entry.file_name();
            let chunk = parse_id(&name.to_string_lossy())
                .zip(chunk_len_of(meta.len()))
                .filter(|_| meta.is_file());
            match chunk {
                Some((id, len)) => {
                    let touched = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    found.push((touched, id, len));
                }
                None => {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        found.sort();
        for (_, id, len) in found {
            self.index.insert(id, len);
        }
        self.index.run_pending_tasks();
        Ok(())
    }

    /// Whether a copy of the chunk is indexed (it may still turn out
    /// damaged when loaded).
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.index.contains_key(id)
    }

    /// The cached chunk, if a whole and undamaged copy is here.
    pub fn load(&self, id: &ObjectId) -> Option<Bytes> {
        let len = self.index.get(id)? as usize;
        let read = self.open_chunk(id, len).and_then(|open| open.whole());
        self.answer(id, read)
    }

    /// Bytes `range` of the cached chunk, and the chunk's length, if they
    /// are here undamaged: read and checked by whole blocks. `None` as
    /// well when `range` is not within the chunk.
    pub fn load_range(&self, id: &ObjectId, range: Range<usize>) -> Option<(Bytes, usize)> {
        let len = self.index.get(id)? as usize;
        if range.start >= range.end || range.end > len {
            return None;
        }
        let read = self.open_chunk(id, len).and_then(|open| open.range(range));
        self.answer(id, read).map(|data| (data, len))
    }

    fn open_chunk(&self, id: &ObjectId, len: usize) -> Result<Arc<OpenChunk>, Unreadable> {
        let path = self.path(id);
        self.open
            .get_or_open(id, len, &path)
            .map_err(|_| Unreadable::Gone)
    }

    /// What a read found; a chunk that could not be read is forgotten.
    fn answer(&self, id: &ObjectId, read: Result<Bytes, Unreadable>) -> Option<Bytes> {
        match read {
            Ok(data) => return Some(data),
            Err(Unreadable::Damaged) => {
                tracing::warn!(chunk = %id, "dropping a damaged disk cache file");
            }
            Err(Unreadable::Gone) => {}
        }
        self.index.invalidate(id);
        self.open.forget(id);
        None
    }

    /// Adds a chunk whose bytes were verified; errors (a full disk) only
    /// cost the cache its copy.
    pub fn store(&self, id: &ObjectId, data: &[u8]) {
        let Ok(len) = u32::try_from(data.len()) else {
            return;
        };
        if self.index.contains_key(id) || !self.make_room(u64::from(file_len(len))) {
            return;
        }
        let encoded = BlockTable::of(data).encode(id);
        let path = self.path(id);
        let temporary = self.dir.join(format!(".{}.tmp", id.to_hex()));
        let written = write_private(&temporary, &[data, &encoded])
            .and_then(|()| fs::rename(&temporary, &path));
        match written {
            Ok(()) => self.index.insert(*id, len),
            Err(error) => {
                let _ = fs::remove_file(&temporary);
                tracing::debug!(chunk = %id, %error, "disk cache write failed");
            }
        }
    }
    /// Evicts until `bytes` more fit and the reserve stays free; false if
    /// they cannot (the cache is empty and the room is still not there).
    /// Under this pressure any chunk goes, not only the least recently
    /// used: room for the log matters more than which chunk leaves.
    fn make_room(&self, bytes: u64) -> bool {
        let need = bytes.saturating_add(self.reserve);
        loop {
            let Some(free) = free_bytes(&self.dir) else {
                return true; // cannot tell: the write itself will say
            };
            if free >= need {
                return true;
            }
            let mut deficit = need - free;
            let mut evicted = false;
            for (id, len) in self.index.iter() {
                self.index.invalidate(&*id);
                evicted = true;
                deficit = deficit.saturating_sub(u64::from(len));
                if deficit == 0 {
                    break;
                }
            }
            self.index.run_pending_tasks();
            if !evicted {
                tracing::debug!(
                    free,
                    reserve = self.reserve,
                    "the disk cache leaves its filesystem's room to the write-back log"
                );
                return false;
            }
        }
    }

    pub fn weighted_size(&self) -> u64 {
        self.index.run_pending_tasks();
        self.index.weighted_size()
    }

    fn path(&self, id: &ObjectId) -> PathBuf {
        path_in(&self.dir, id)
    }
}

fn path_in(dir: &Path, id: &ObjectId) -> PathBuf {
    dir.join(format!("{}{SUFFIX}", id.to_hex()))
}

/// Writes `parts` to a new file only its owner may read.
fn write_private(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    for part in parts {
        file.write_all(part)?;
    }
    Ok(())
}

/// Bytes of the file of a chunk of `len` bytes: the chunk, then its table.
fn file_len(len: u32) -> u32 {
    len.saturating_add(table_len(u64::from(len)) as u32)
}

/// The length of the chunk a file of `size` bytes holds, if a chunk file
/// can be that long. A chunk of `n` blocks has a table of `4n + 4` bytes;
/// so past the seal and one more byte, every 4,100 bytes of file are one
/// more block.
fn chunk_len_of(size: u64) -> Option<u32> {
    let blocks = size.saturating_sub(8).div_ceil(BLOCK as u64 + 4);
    let len = size.checked_sub(4 * blocks + 4)?;
    let len = u32::try_from(len).ok()?;
    (u64::from(file_len(len)) == size).then_some(len)
}

/// Bytes an unprivileged writer may still use on `dir`'s filesystem.
fn free_bytes(dir: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(stat.blocks_available().saturating_mul(stat.fragment_size()))
}

fn parse_id(name: &str) -> Option<ObjectId> {
    let mut raw = [0u8; 32];
    hex::decode_to_slice(name.strip_suffix(SUFFIX)?, &mut raw).ok()?;
    Some(ObjectId(raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// Stores a chunk through a cache of `max_bytes` opened on `dir` and
    /// dropped at once, as a run that ended would.
    fn store_once(dir: &Path, max_bytes: u64, id: &ObjectId, data: &[u8]) {
        DiskCache::open(dir, max_bytes, 0).unwrap().store(id, data);
    }

    fn chunk(byte: u8) -> (ObjectId, Vec<u8>) {
        let data = vec![byte; 4096];
        (ObjectId::of(&data), data)
    }

    #[test]
    fn keeps_chunks_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (id, data) = chunk(1);
        store_once(dir.path(), 1 << 20, &id, &data);
        let reopened = DiskCache::open(dir.path(), 1 << 20, 0).unwrap();
        assert_eq!(reopened.load(&id).unwrap(), data);
    }

    #[test]
    fn evicts_past_its_bound_and_deletes_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 3 * 4096, 0).unwrap();
        for byte in 0..10 {
            let (id, data) = chunk(byte);
            cache.store(&id, &data);
        }
        assert!(cache.weighted_size() <= 3 * 4096);
        let files = fs::read_dir(dir.path()).unwrap().count();
        assert!(files <= 3, "{files} files left");
    }

    #[test]
    fn the_logs_reserve_is_never_taken_and_is_given_back_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        let (id, data) = chunk(3);
        let cache = DiskCache::open(dir.path(), 1 << 20, 0).unwrap();
        cache.store(&id, &data);
        assert!(cache.load(&id).is_some());

        // A reserve larger than the free space: nothing more is stored,
        // and what is cached leaves at the next open.
        let (other, other_data) = chunk(4);
        let reserving = DiskCache::open(dir.path(), 1 << 20, free + (1 << 30)).unwrap();
        assert!(reserving.load(&id).is_none(), "kept a chunk in the reserve");
        reserving.store(&other, &other_data);
        assert!(reserving.load(&other).is_none(), "stored into the reserve");
        let files = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 0, "files left in the reserve");
    }

    #[test]
    fn a_damaged_file_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20, 0).unwrap();
        let (id, data) = chunk(7);
        cache.store(&id, &data);
        fs::write(path_in(dir.path(), &id), b"garbage").unwrap();
        assert!(cache.load(&id).is_none());
    }

    /// A chunk of `len` bytes that differ from block to block.
    fn big_chunk(len: usize) -> (ObjectId, Vec<u8>) {
        let mut rng = fastrand::Rng::with_seed(len as u64);
        let data: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        (ObjectId::of(&data), data)
    }

    /// Flips one byte at `at` in the cached file of `id`.
    fn damage(dir: &Path, id: &ObjectId, at: u64) {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path_in(dir, id))
            .unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, at).unwrap();
        file.write_all_at(&[byte[0] ^ 1], at).unwrap();
    }

    #[test]
    fn a_range_reads_back_as_stored_from_a_reopened_cache() {
        let dir = tempfile::tempdir().unwrap();
        let (id, data) = big_chunk((1 << 20) - 100);
        store_once(dir.path(), 4 << 20, &id, &data);
        let cache = DiskCache::open(dir.path(), 4 << 20, 0).unwrap();
        for range in [
            0..1,
            4095..4097,
            5000..70000,
            1000..data.len(),
            0..data.len(),
        ] {
            let (got, len) = cache.load_range(&id, range.clone()).unwrap();
            assert_eq!(
                (got, len),
                (Bytes::copy_from_slice(&data[range]), data.len())
            );
        }
        assert!(cache.load_range(&id, 0..data.len() + 1).is_none());
    }

    #[test]
    fn a_range_needs_only_its_own_blocks_undamaged() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 4 << 20, 0).unwrap();
        let (id, data) = big_chunk(1 << 20);
        cache.store(&id, &data);
        damage(dir.path(), &id, 10 * BLOCK as u64);
        let elsewhere = 2 * BLOCK..3 * BLOCK + 1;
        let (got, _) = cache.load_range(&id, elsewhere.clone()).unwrap();
        assert_eq!(got, data[elsewhere]);
        let damaged_block = 10 * BLOCK + 100..10 * BLOCK + 200;
        assert!(cache.load_range(&id, damaged_block).is_none());
        assert!(!cache.contains(&id), "a damaged chunk is forgotten");
    }

    #[test]
    fn a_damaged_table_is_refused_when_it_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let (id, data) = big_chunk(1 << 20);
        store_once(dir.path(), 4 << 20, &id, &data);
        damage(dir.path(), &id, (1 << 20) + 40);
        let cache = DiskCache::open(dir.path(), 4 << 20, 0).unwrap();
        assert!(cache.load_range(&id, 0..BLOCK).is_none());
    }

    #[test]
    fn files_of_another_layout_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (id, data) = big_chunk(8192);
        fs::write(dir.path().join(id.to_hex()), &data).unwrap();
        let cache = DiskCache::open(dir.path(), 4 << 20, 0).unwrap();
        assert!(!cache.contains(&id));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        // A file with no table reads as a shorter chunk, which fails.
        fs::write(path_in(dir.path(), &id), &data).unwrap();
        let cache = DiskCache::open(dir.path(), 4 << 20, 0).unwrap();
        assert!(cache.load_range(&id, 0..BLOCK).is_none());
        assert!(cache.load(&id).is_none());
    }

    /// Whatever takes a chunk file's place is refused, and promptly: a
    /// FIFO would block its reader until some writer opened it.
    #[test]
    fn a_fifo_symlink_or_directory_in_a_chunks_place_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 16 << 20, 0).unwrap();
        let chunks: Vec<_> = (0..4).map(|i| big_chunk(64 << 10 | i)).collect();
        for (id, data) in &chunks {
            cache.store(id, data);
        }
        let path = |i: usize| path_in(dir.path(), &chunks[i].0);
        fs::remove_file(path(0)).unwrap();
        nix::unistd::mkfifo(&path(0), nix::sys::stat::Mode::S_IRWXU).unwrap();
        fs::remove_file(path(1)).unwrap();
        std::os::unix::fs::symlink(path(3), path(1)).unwrap();
        fs::remove_file(path(2)).unwrap();
        fs::create_dir(path(2)).unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let misses = (0..3)
                .map(|i| {
                    cache.load_range(&chunks[i].0, 0..BLOCK).is_none()
                        && cache.load(&chunks[i].0).is_none()
                })
                .collect::<Vec<_>>();
            done.send(misses).unwrap();
        });
        let misses = finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a read blocked on what took a chunk file's place");
        assert_eq!(misses, [true, true, true]);
    }

    #[test]
    fn stored_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("chunks");
        let (id, data) = chunk(9);
        store_once(&dir, 1 << 20, &id, &data);
        let dir_mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let mode = fs::metadata(path_in(&dir, &id))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        /// Against the model (the chunk's bytes): any range of any chunk
        /// reads back as those bytes, through a reopened cache.
        #[test]
        fn any_range_reads_as_the_chunks_bytes(
            len in 1usize..(160 << 10),
            ranges in proptest::collection::vec((0usize..(160 << 10), 1usize..(70 << 10)), 1..20),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (id, data) = big_chunk(len);
            store_once(dir.path(), 4 << 20, &id, &data);
            let cache = DiskCache::open(dir.path(), 4 << 20, 0).unwrap();
            for (start, count) in ranges {
                let start = start % len;
                let range = start..(start + count).min(len);
                let (got, _) = cache.load_range(&id, range.clone()).unwrap();
                proptest::prop_assert_eq!(got, &data[range]);
            }
        }
    }

    #[test]
    fn a_files_length_gives_its_chunks() {
        for len in [
            0,
            1,
            4096,
            4097,
            8192,
            8193,
            1 << 20,
            (1 << 20) - 1,
            5 << 20,
        ] {
            assert_eq!(chunk_len_of(u64::from(file_len(len))), Some(len), "{len}");
        }
        assert_eq!(chunk_len_of(5), None, "shorter than a table");
        assert_eq!(chunk_len_of(4105), None, "two blocks with the table of one");
    }
}
