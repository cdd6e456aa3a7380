//! How an open volume behaves: caches, durability, write-back limits.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::format::pack::PACK_TARGET_BYTES;

/// Pack uploads in flight at once during a commit.
pub(super) const PACKS_IN_FLIGHT: usize = 4;

/// What a FLUSH (or a FUA write) waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// The write-back log is fsynced; upload follows in the background.
    #[default]
    Local,
    /// The data is committed to the object store.
    Remote,
}

impl FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(Durability::Local),
            "remote" => Ok(Durability::Remote),
            _ => Err(format!("`{s}` is not a durability: use local or remote")),
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Durability::Local => "local",
            Durability::Remote => "remote",
        })
    }
}

/// What a volume opened read-only serves as its writer commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// The root found when it opened (a snapshot's, always), until closed.
    Pinned,
    /// The writer's newest commit: it looks for one this often, and takes
    /// each between requests, never during one.
    Every(Duration),
}

impl Follow {
    /// How often a follower looks for new commits unless told otherwise.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
}

/// Options for opening a volume.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Holds the write-back log and the disk cache, one folder per volume.
    pub cache_dir: PathBuf,
    /// Memory for chunks: the cache of decompressed chunks, and the chunks
    /// in flight beside it (see [`EngineOptions::chunk_cache_bytes`]).
    pub memory_cache_bytes: u64,
    /// Bytes of decompressed chunks kept in the disk cache (0: none).
    pub disk_cache_bytes: u64,
    pub durability: Durability,
    /// Written but not yet uploaded bytes past which writes wait.
    pub max_dirty_bytes: u64,
    /// How often written data is committed: at the first pause in the
    /// writes after this long, and at the latest after four times as long.
    pub commit_interval: Duration,
    /// Chunks built at once during a commit (each may download the chunk's
    /// older version first).
    pub upload_concurrency: usize,
    /// Chunks fetched ahead of a sequential reader.
    pub readahead_chunks: u64,
    /// How long the writer's lease lasts without renewal.
    pub lease_ttl: Duration,
    /// Take the lease over even from a writer that may be alive (after a
    /// crash on another host).
    pub take_over: bool,
    /// An epoch that ends past this point of its log segment starts the
    /// next epoch in another segment, so committed ones can be recycled.
    pub log_segment_bytes: u64,
    /// The password of an encrypted volume (ignored for one in the clear).
    pub password: Option<crate::crypto::Password>,
}

impl EngineOptions {
    /// Of `memory_cache_bytes`, what the cache of decompressed chunks may
    /// hold. The rest is for chunks in flight, which the cache does not
    /// see: a commit's chunks being built (raw and encoded), its packs
    /// (the one filling and those uploading) and read-ahead downloads. At
    /// least half goes to the cache.
    pub fn chunk_cache_bytes(&self, chunk_size: u64) -> u64 {
        let chunks =
            (2 * self.upload_concurrency as u64 + self.readahead_chunks).saturating_mul(chunk_size);
        let packs = (PACKS_IN_FLIGHT as u64 + 1) * PACK_TARGET_BYTES as u64;
        let in_flight = chunks.saturating_add(packs);
        self.memory_cache_bytes
            .saturating_sub(in_flight)
            .max(self.memory_cache_bytes / 2)
    }

    /// Log bytes past which writes wait: dirty bytes count each block once
    /// per epoch, however often it is overwritten, while the log keeps
    /// every write until its epoch commits. Four times `--max-dirty`.
    pub fn log_limit_bytes(&self) -> u64 {
        self.max_dirty_bytes.saturating_mul(4)
    }

    /// Log bytes that start a commit at once: half the limit. Also how
    /// many bytes of retired segment files the log keeps for reuse, so a
    /// steady stream of writes cycles through files already on disk.
    pub fn log_commit_bytes(&self) -> u64 {
        self.log_limit_bytes() / 2
    }

    /// Where an epoch that ends past it starts the next in a fresh segment:
    /// `log_segment_bytes`, but at most a quarter of the log's limit, so
    /// that the committed start of the current segment never holds much
    /// disk.
    pub fn segment_switch_bytes(&self) -> u64 {
        self.log_segment_bytes
            .min(self.log_limit_bytes() / 4)
            .max(1)
    }

    /// The most disk the write-back log takes: records not yet committed
    /// (up to the limit); the committed start
    /// of the oldest segment still in use (commits go in order, so only
    /// that one holds committed records, and fewer than a quarter of the
    /// limit: a segment takes no new epoch once past that); and retired
    /// segment files kept for reuse (half the limit). Seven times
    /// `max_dirty_bytes`; the disk cache leaves this much free.
    pub fn log_disk_bytes(&self) -> u64 {
        self.log_limit_bytes()
            .saturating_add(self.segment_switch_bytes())
            .saturating_add(self.log_commit_bytes())
    }

    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        EngineOptions {
            cache_dir: cache_dir.into(),
            memory_cache_bytes: 512 << 20,
            disk_cache_bytes: 10 << 30,
            durability: Durability::Local,
            max_dirty_bytes: 1 << 30,
            commit_interval: Duration::from_secs(2),
            upload_concurrency: 16,
            readahead_chunks: 32,
            lease_ttl: Duration::from_secs(30),
            take_over: false,
            log_segment_bytes: 256 << 20,
            password: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_in_flight_come_out_of_the_memory_budget_but_never_more_than_half() {
        let mut options = EngineOptions::new("/nonexistent");
        let mib = 1 << 20;
        options.memory_cache_bytes = 512 * mib;
        // 16 chunks being built (raw and encoded), 32 read ahead, of 1 MiB,
        // and five packs of 8 MiB.
        assert_eq!(options.chunk_cache_bytes(mib), 408 * mib);
        options.memory_cache_bytes = 32 * mib;
        assert_eq!(options.chunk_cache_bytes(mib), 16 * mib);
    }
}
