//! What `zeroblk status` and the metrics endpoint show of one open
//! volume: a snapshot taken when asked, from figures the engine keeps
//! anyway (counters, the backlog, the open epochs, the lease's tenure).
//! Taking one changes nothing and waits for nothing.

use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::stats::{CommitClock, RequestCounts};
use crate::cache::CacheCounters;
use crate::format::Root;
use crate::histogram::Latencies;

/// One volume's figures at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeStatus {
    /// `NAME`, or `NAME@SNAP` for a snapshot served read-only.
    pub name: String,
    pub read_only: bool,
    pub size: u64,
    /// The generation reads see.
    pub generation: u64,
    /// Data written and not yet committed to the store.
    pub dirty_bytes: u64,
    /// The write-back log's records not yet committed.
    pub log_bytes: u64,
    /// How long the oldest write not yet committed has waited, in ms.
    pub oldest_uncommitted_ms: Option<u64>,
    /// When the last commit ended (ms since the Unix epoch), and how long
    /// it took (ms).
    pub last_commit_at_ms: Option<u64>,
    pub last_commit_took_ms: Option<u64>,
    /// Commits that ended in the last minute.
    pub commits_last_minute: u64,
    /// How long commits took.
    pub commit_latency: Latencies,
    /// Requests served since the volume was opened.
    pub requests: RequestCounts,
    pub cache: CacheCounters,
    /// Bytes of the volume in chunks that hold data (logical).
    pub allocated_bytes: u64,
    /// What those chunks take in the store, compressed (before
    /// deduplication across chunks).
    pub stored_bytes: u64,
    /// The writer's lease; none for a read-only volume.
    pub lease: Option<LeaseStatus>,
}

/// The writer's lease, as its holder sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    /// `pid N on HOST`.
    pub holder: String,
    /// How long this process has held it, in ms.
    pub held_ms: u64,
    /// How long ago the last renewal that went through was sent, in ms.
    pub renewed_ms_ago: u64,
}

impl VolumeStatus {
    /// Stored bytes per logical byte (compression); `None` with no data.
    pub fn stored_ratio(&self) -> Option<f64> {
        (self.allocated_bytes > 0).then(|| self.stored_bytes as f64 / self.allocated_bytes as f64)
    }
}

/// The parts every volume has, whether written or read only.
pub(super) struct Common<'a> {
    pub name: String,
    pub read_only: bool,
    pub size: u64,
    pub root: &'a Root,
    pub requests: RequestCounts,
    pub cache: CacheCounters,
}

/// The parts only a writer has.
#[derive(Default)]
pub(super) struct Writing {
    pub dirty_bytes: u64,
    pub log_bytes: u64,
    pub oldest_uncommitted: Option<Duration>,
    pub commits: CommitClock,
    pub lease: Option<LeaseStatus>,
}

pub(super) fn volume_status(common: Common<'_>, writing: Writing) -> VolumeStatus {
    let last = writing.commits.last;
    VolumeStatus {
        name: common.name,
        read_only: common.read_only,
        size: common.size,
        generation: common.root.generation,
        dirty_bytes: writing.dirty_bytes,
        log_bytes: writing.log_bytes,
        oldest_uncommitted_ms: writing.oldest_uncommitted.map(millis),
        last_commit_at_ms: last.map(|(at, _)| at.duration_since(UNIX_EPOCH).map_or(0, millis)),
        last_commit_took_ms: last.map(|(_, took)| millis(took)),
        commits_last_minute: writing.commits.last_minute,
        commit_latency: writing.commits.took,
        requests: common.requests,
        cache: common.cache,
        allocated_bytes: common.root.allocated_chunks() * common.root.chunk_size,
        stored_bytes: common.root.stored_bytes(),
        lease: writing.lease,
    }
}

pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
