//! The disk tier: decompressed chunks as files, bounded in bytes, least
//! recently used out first, kept across restarts.
//!
//! Files are named by the chunk's hash and written through a temporary name
//! and a rename, so a crash leaves either a whole file or none. Every load
//! re-hashes the file: a damaged cache file is dropped and counted as a
//! miss, never returned. The cache is never fsynced: losing it loses only
//! speed.
//!
//! The cache shares its filesystem with the write-back log, which holds
//! data nobody else has; so it never takes the log's room. It keeps a
//! reserve of free space (what the log may grow to): a chunk that would
//! leave less free is stored only after evicting enough to make room, or
//! not at all, and opening the cache gives back whatever of the reserve
//! it holds (the log may have grown, or other files, since it was full).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use crate::format::ObjectId;

/// The disk tier of the chunk cache.
#[derive(Clone)]
pub struct DiskCache {
    dir: Arc<PathBuf>,
    index: Cache<ObjectId, u32>,
    /// Free bytes to leave on the filesystem, for the log.
    reserve: u64,
}

impl DiskCache {
    /// Opens (creating it if needed) a cache of at most `max_bytes` in
    /// `dir`, indexing the files a previous run left there, oldest first,
    /// and evicting what it must to leave `reserve` bytes free.
    pub fn open(dir: &Path, max_bytes: u64, reserve: u64) -> io::Result<DiskCache> {
        fs::create_dir_all(dir)?;
        let dir = Arc::new(dir.to_path_buf());
        let evict_dir = Arc::clone(&dir);
        let index = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_id: &ObjectId, len: &u32| *len)
            .eviction_policy(EvictionPolicy::lru())
            .eviction_listener(move |id: Arc<ObjectId>, _len, cause| {
                if cause != RemovalCause::Replaced {
                    let _ = fs::remove_file(evict_dir.join(id.to_hex()));
                }
            })
            .build();
        let cache = DiskCache {
            dir,
            index,
            reserve,
        };
        cache.index_existing_files()?;
        cache.make_room(0);
        Ok(cache)
    }

    fn index_existing_files(&self) -> io::Result<()> {
        let mut found: Vec<(SystemTime, ObjectId, u32)> = Vec::new();
        for entry in fs::read_dir(self.dir.as_path())? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            match parse_id(&name) {
                Some(id) => {
                    let meta = entry.metadata()?;
                    let touched = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    found.push((touched, id, meta.len().try_into().unwrap_or(u32::MAX)));
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
        self.index.get(id)?;
        match fs::read(self.path(id)) {
            Ok(data) if ObjectId::of(&data) == *id => Some(Bytes::from(data)),
            Ok(_) => {
                tracing::warn!(chunk = %id, "dropping a damaged disk cache file");
                self.index.invalidate(id);
                None
            }
            Err(_) => {
                self.index.invalidate(id);
                None
            }
        }
    }

    /// Adds a chunk; errors (a full disk) only cost the cache its copy.
    pub fn store(&self, id: &ObjectId, data: &[u8]) {
        if self.index.contains_key(id) {
            return;
        }
        if !self.make_room(data.len() as u64) {
            return;
        }
        let path = self.path(id);
        let temporary = self.dir.join(format!(".{}.tmp", id.to_hex()));
        let written = fs::write(&temporary, data).and_then(|()| fs::rename(&temporary, &path));
        match written {
            Ok(()) => self
                .index
                .insert(*id, data.len().try_into().unwrap_or(u32::MAX)),
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
        self.dir.join(id.to_hex())
    }
}

/// Bytes an unprivileged writer may still use on `dir`'s filesystem.
fn free_bytes(dir: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(stat.blocks_available().saturating_mul(stat.fragment_size()))
}

fn parse_id(name: &str) -> Option<ObjectId> {
    let mut raw = [0u8; 32];
    hex::decode_to_slice(name, &mut raw).ok()?;
    Some(ObjectId(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(byte: u8) -> (ObjectId, Vec<u8>) {
        let data = vec![byte; 4096];
        (ObjectId::of(&data), data)
    }

    #[test]
    fn keeps_chunks_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (id, data) = chunk(1);
        DiskCache::open(dir.path(), 1 << 20, 0)
            .unwrap()
            .store(&id, &data);
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
        fs::write(dir.path().join(id.to_hex()), b"garbage").unwrap();
        assert!(cache.load(&id).is_none());
    }
}
