//! A volume opened read-only: a snapshot (`NAME@SNAP`), or a volume read
//! beside its writer (`--read-only`), pinned at the root it found or
//! following the writer's commits (`--follow`).
//!
//! It takes no lease and no local lock, and has no write-back log, so it
//! opens on any host while the volume's writer runs, even on the same one.
//! It serves reads from one committed root through the same read path and
//! chunk caches as a writer (`read`, `chunks`), its disk cache in a folder
//! of its own (`local::ReaderDir`), never the writer's, removed when it is
//! dropped; writes, discards and zeroes are
//! refused with [`EngineError::ReadOnly`] or
//! [`EngineError::ReadOnlySnapshot`] (EROFS), and a flush has nothing to
//! do.
//!
//! What a reader promises:
//! - **No torn state.** Each request loads the root once at its start and
//!   reads only that root: a root is a whole commit (whole epochs, see the
//!   engine's contract), so a request sees the volume as it was at one
//!   flush point, never a mix of two commits. A follower switches roots
//!   between requests only ([`roots`]).
//! - **Never older.** A follower only moves to newer generations.
//! - **A follower outlives gc.** gc keeps a root for its grace period
//!   after a newer one replaced it; a follower polls about every second.
//!   One that still meets an object gone (it lagged longer than the grace)
//!   reads the newest root and tries the whole request again, once, on
//!   that root alone.
//! - **The size it opened with.** A volume that grows meanwhile is served
//!   at the size the reader opened with (the kernel and NBD clients were
//!   told that size); opening it again shows the rest.

mod roots;

use std::sync::Arc;

use tokio::task::JoinHandle;

use super::chunks::Chunks;
use super::error::{EngineError, Result};
use super::local::ReaderDir;
use super::options::{EngineOptions, Follow};
use super::read::{self, Extent, ReadData};
use super::snapshot::{self, VolumeRef};
use super::stats::{Stats, VolumeCounters};
use super::status::{self, VolumeStatus};
use crate::cache::DiskCache;
use crate::format::{Root, Superblock};
use crate::store::Store;
use roots::Roots;

/// A volume open for reading only.
pub(super) struct Reader {
    what: VolumeRef,
    follow: Follow,
    store: Store,
    roots: Arc<Roots>,
    chunks: Arc<Chunks>,
    stats: Stats,
    /// The task that follows the writer's commits, while it runs.
    follower: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// The disk cache's folder, removed when the reader is dropped (after
    /// `chunks`, whose files are in it).
    _dir: Option<ReaderDir>,
}

impl Reader {
    /// Opens `what` for reading: a snapshot, or the volume's newest root,
    /// followed as `follow` says (a snapshot never changes: refused).
    pub async fn open(
        store: &Store,
        what: &VolumeRef,
        follow: Follow,
        options: &EngineOptions,
    ) -> Result<Reader> {
        if let (Some(_), Follow::Every(_)) = (what.snapshot(), follow) {
            return Err(EngineError::InvalidArgument(format!(
                "`{what}` is a snapshot, which never changes: only a volume's writer can be followed; leave out --follow, or follow `{}`",
                what.name()
            )));
        }
        let (superblock, codec, root) =
            snapshot::open_root(store, what, options.password.clone()).await?;
        let (dir, disk) = disk_cache(&superblock, options)?;
        let chunk_size = superblock.chunk_size;
        let chunks = Arc::new(Chunks::new(store, &codec, chunk_size, options, disk));
        tracing::info!(
            volume = %what,
            generation = root.generation,
            following = matches!(follow, Follow::Every(_)),
            "opened read-only"
        );
        let roots = Arc::new(Roots::new(store.clone(), superblock, codec, root));
        let follower = match follow {
            Follow::Every(every) => Some(tokio::spawn(roots::follow(Arc::clone(&roots), every))),
            Follow::Pinned => None,
        };
        Ok(Reader {
            what: what.clone(),
            follow,
            store: store.clone(),
            roots,
            chunks,
            stats: Stats::default(),
            follower: std::sync::Mutex::new(follower),
            _dir: dir,
        })
    }

    /// What was opened: `NAME` or `NAME@SNAP`.
    pub fn what(&self) -> &VolumeRef {
        &self.what
    }

    /// The size served: the root's when the reader opened.
    pub fn size(&self) -> u64 {
        self.roots.size()
    }

    pub fn superblock(&self) -> &Superblock {
        self.roots.superblock()
    }

    pub fn counters(&self) -> VolumeCounters {
        VolumeCounters {
            generation: self.roots.current().generation,
            committed_epoch: 0,
            durable_epoch: 0,
            dirty_bytes: 0,
            requests: self.stats.counts(),
            store: self.store.counters(),
            cache: self.chunks.counters(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The volume's figures for `zeroblk status` and the metrics.
    pub fn status(&self) -> VolumeStatus {
        let root = self.roots.current();
        let common = status::Common {
            name: self.what.to_string(),
            read_only: true,
            size: self.size(),
            root: &root,
            requests: self.stats.counts(),
            cache: self.chunks.counters(),
        };
        status::volume_status(common, status::Writing::default())
    }

    /// The error every write, discard and zeroing gets.
    pub fn refusal(&self) -> EngineError {
        match self.what.snapshot() {
            Some(snapshot) => EngineError::ReadOnlySnapshot {
                volume: self.what.name().to_string(),
                snapshot: snapshot.to_string(),
            },
            None => EngineError::ReadOnly {
                what: self.what.to_string(),
            },
        }
    }

    pub async fn read_parts(&self, offset: u64, len: usize) -> Result<ReadData> {
        read::check_range("read", offset, len as u64, self.size())?;
        self.stats.read(len as u64);
        let chunks = &self.chunks;
        self.on_one_root(|root| async move { read::read_parts(chunks, &root, offset, len).await })
            .await
    }

    pub async fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        read::check_range("block-status", offset, len, self.size())?;
        let chunks = &self.chunks;
        self.on_one_root(|root| async move { read::allocation(chunks, &root, offset, len).await })
            .await
    }

    pub fn prefetch(&self, offset: u64, len: u64) -> Result<()> {
        read::check_range("cache", offset, len, self.size())?;
        read::prefetch(&self.chunks, self.roots.current(), offset, len);
        Ok(())
    }

    /// Stops following and lets the caches settle; reads still work.
    pub async fn close(&self) {
        let follower = self.follower.lock().expect("follower lock").take();
        if let Some(follower) = follower {
            follower.abort();
            let _ = follower.await;
        }
        self.chunks.settle().await;
    }

    /// Runs `request` on the current root, loaded once. If it meets an
    /// object that is gone, it runs once more, whole, on a newer root if
    /// there is one to follow (see [`Reader::newer_root`]).
    async fn on_one_root<T, Request>(&self, request: impl Fn(Arc<Root>) -> Request) -> Result<T>
    where
        Request: Future<Output = Result<T>>,
    {
        let root = self.roots.current();
        let generation = root.generation;
        match request(root).await {
            Err(error) if is_missing(&error) => {
                request(self.newer_root(generation, error).await?).await
            }
            done => done,
        }
    }

    /// After a request on `generation` met an object gone: the newest root
    /// to run it again on, for a follower that finds one newer. Otherwise
    /// the error to answer: a pinned reader's root may have been replaced
    /// and collected, which is not damage but age.
    async fn newer_root(&self, generation: u64, missing: EngineError) -> Result<Arc<Root>> {
        let name = self.what.name().to_string();
        match (self.follow, self.what.snapshot()) {
            (Follow::Every(_), _) => {
                if let Err(error) = self.roots.catch_up().await {
                    tracing::debug!(%error, "cannot read the newest root");
                }
                let newest = self.roots.current();
                if newest.generation <= generation {
                    return Err(missing);
                }
                tracing::info!(
                    volume = %name,
                    from = generation,
                    to = newest.generation,
                    "an object of the root read is gone (collected): the request runs again on the newest root"
                );
                Ok(newest)
            }
            (Follow::Pinned, None) if self.roots.replaced(generation).await.unwrap_or(false) => {
                Err(EngineError::ReplacedRoot {
                    volume: name,
                    generation,
                })
            }
            (Follow::Pinned, Some(snapshot)) => match self.roots.check_snapshot(snapshot).await {
                // Deleted while served, and collected since.
                Err(gone @ EngineError::NoSuchSnapshot { .. }) => Err(gone),
                _ => Err(missing),
            },
            (Follow::Pinned, None) => Err(missing),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Ok(mut follower) = self.follower.lock()
            && let Some(follower) = follower.take()
        {
            follower.abort();
        }
    }
}

/// A disk cache of the reader's own, in a folder of its own (a writer's
/// on this host keeps its cache beside its log), unless it has none.
fn disk_cache(
    superblock: &Superblock,
    options: &EngineOptions,
) -> Result<(Option<ReaderDir>, Option<DiskCache>)> {
    if options.disk_cache_bytes == 0 {
        return Ok((None, None));
    }
    let cache_dir_error = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| EngineError::CacheDir { path, source }
    };
    let dir = ReaderDir::create(&options.cache_dir, superblock)
        .map_err(cache_dir_error(&options.cache_dir))?;
    let chunks = dir.path().join("chunks");
    // It leaves the room a writer's log on this filesystem may need.
    let disk = DiskCache::open(&chunks, options.disk_cache_bytes, options.log_disk_bytes())
        .map_err(cache_dir_error(&chunks))?;
    Ok((Some(dir), Some(disk)))
}

/// Whether `error` says an object a root references is not in the store.
fn is_missing(error: &EngineError) -> bool {
    match error {
        EngineError::MissingObject { .. } => true,
        EngineError::Shared(inner) | EngineError::Stopped(inner) => is_missing(inner),
        _ => false,
    }
}
