//! A volume opened to write: its state, and opening and closing it. It
//! holds the volume's lease and its local lock, and runs the uploader.

use std::fs::File;
use std::sync::Arc;

use nix::fcntl::Flock;
use tokio::task::JoinHandle;

use super::catalog;
use super::error::{EngineError, Result};
use super::gc::GcHold;
use super::lease::{Holder, Lease, LogClaim};
use super::local;
use super::log::LogDir;
use super::log::{Geometry, Replayed, replay};
use super::options::{Durability, EngineOptions};
use super::read::{self, Extent, ReadData};
use super::shared::Shared;
use super::snapshot::{self, SnapshotInfo};
use super::stats::VolumeCounters;
use super::status::{self, LeaseStatus, VolumeStatus};
use crate::cache::DiskCache;
use crate::format::{Root, RootKind, Superblock};
use crate::store::{Fencing, Store};

/// The write-back log's folder in the volume's cache folder.
const LOG_FOLDER: &str = "log";

/// A volume open for writing. Reads, writes, flushes and discards may
/// run concurrently from any number of tasks; see the module
/// documentation of [`crate::engine`] for what each guarantees.
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    lease_holder: Holder,
    _lock: Flock<File>,
}

impl Writer {
    /// Opens the volume `name` of `store` for reading and writing,
    /// replaying what its write-back log holds beyond the store.
    pub async fn open(store: &Store, name: &str, options: EngineOptions) -> Result<Writer> {
        let superblock = catalog::superblock(store, name).await?;
        // Before anything is written: a wrong password changes nothing.
        let codec = catalog::unlock_blocking(&superblock, options.password.clone()).await?;
        let fencing = store.fencing().await?;
        let dir = local::volume_dir(&options.cache_dir, &superblock);
        let cache_dir_error = |source| EngineError::CacheDir {
            path: dir.clone(),
            source,
        };
        local::prepare(&dir).map_err(cache_dir_error)?;
        let lock = local::lock(&dir, name)?;
        let log_dir = dir.join(LOG_FOLDER);
        let log = LogClaim {
            dir: &log_dir,
            id: LogDir::id_in(&log_dir).map_err(cache_dir_error)?,
            inode: inode_of(&log_dir),
            holds_flushed_writes: options.durability == Durability::Local,
        };
        let mut lease =
            Lease::acquire(store, name, options.lease_ttl, options.take_over, Some(log)).await?;
        let lease_holder = lease.holder();
        let (root, mut log, replayed) = loop {
            let newest = catalog::newest_root(store, &superblock, &codec).await?;
            let (log, replayed, after) = open_log(&dir, &newest).await?;
            // The next generation is this writer's before it serves
            // anything: a commit of an earlier writer that lands late (a
            // PUT sent before a takeover) can then only fail.
            let claim = Root {
                log_id: log.log_id(),
                log_epoch: after,
                ..newest.succeeded_by(RootKind::Open)
            };
            crate::async_fail_point!("open::before_claim");
            if catalog::publish_root(store, name, &codec, &claim).await? {
                let inode = inode_of(&log_dir).unwrap_or(0);
                lease.name_log(store, name, log.log_id(), inode).await?;
                break (claim, log, replayed);
            }
            tracing::info!(
                volume = name,
                generation = claim.generation,
                "the volume was committed as this writer opened it (by the writer it takes over from, or gc's barrier); looking again"
            );
        };
        log.keep_free(options.log_commit_bytes());
        let disk = match options.disk_cache_bytes {
            0 => None,
            bytes => Some(
                DiskCache::open(&dir.join("chunks"), bytes, options.log_disk_bytes())
                    .map_err(cache_dir_error)?,
            ),
        };
        let first_segment = {
            let (seq, log) = (replayed.next_seq, log.clone());
            let first_epoch = replayed.last_epoch + 1;
            crate::blocking::run(move || log.create_segment(seq, first_epoch))
                .await
                .map_err(cache_dir_error)?
        };
        let shared = Shared::new(
            name,
            superblock,
            codec,
            store.clone(),
            options,
            root,
            log,
            disk,
            replayed,
            Arc::new(first_segment),
            fencing,
            lease,
        );
        let shared = Arc::new(shared);
        shared.journal().prepare_spare_segment();
        let tasks = vec![
            spawn_task(
                &shared,
                "uploader",
                super::uploader::run(Arc::clone(&shared)),
            ),
            spawn_task(
                &shared,
                "lease renewal",
                super::uploader::renew_lease(Arc::clone(&shared)),
            ),
        ];
        Ok(Writer {
            shared,
            tasks: std::sync::Mutex::new(tasks),
            lease_holder,
            _lock: lock,
        })
    }

    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// The volume's size in bytes.
    pub fn size(&self) -> u64 {
        self.shared.size()
    }

    pub fn superblock(&self) -> &Superblock {
        self.shared.superblock()
    }

    /// Whether the store can refuse a second writer (see [`Fencing`]).
    pub fn fencing(&self) -> Fencing {
        self.shared.fencing()
    }

    pub fn counters(&self) -> VolumeCounters {
        let shared = &self.shared;
        VolumeCounters {
            generation: shared.journal().view().map().generation,
            committed_epoch: shared.progress().committed_epoch(),
            durable_epoch: shared.progress().durable_epoch(),
            dirty_bytes: shared.backlog().dirty_bytes(),
            requests: shared.stats().counts(),
            store: shared.store().counters(),
            cache: shared.chunks().counters(),
        }
    }

    pub fn store(&self) -> &Store {
        self.shared.store()
    }

    /// The volume's figures for `zeroblk status` and the metrics.
    pub fn status(&self) -> VolumeStatus {
        let shared = &self.shared;
        let view = shared.journal().view_full();
        let common = status::Common {
            name: shared.name().to_string(),
            read_only: false,
            size: shared.size(),
            root: view.map(),
            requests: shared.stats().counts(),
            cache: shared.chunks().counters(),
        };
        let tenure = shared.tenure();
        // The lease is locked only while it is renewed: then its holder is
        // this process all the same.
        let holder = match shared.lease().try_lock() {
            Ok(lease) => lease.holder_name(),
            Err(_) => format!("pid {} (renewing it now)", std::process::id()),
        };
        let writing = status::Writing {
            dirty_bytes: shared.backlog().dirty_bytes(),
            log_bytes: shared.backlog().log_bytes(),
            oldest_uncommitted: view.oldest_uncommitted_change().map(|at| at.elapsed()),
            commits: shared.stats().commit_clock(),
            lease: Some(LeaseStatus {
                holder,
                held_ms: status::millis(tenure.held_for()),
                renewed_ms_ago: status::millis(tenure.renewed_ago()),
            }),
        };
        status::volume_status(common, writing)
    }

    /// Reads `len` bytes at byte `offset`, through the log's view.
    pub async fn read_parts(&self, offset: u64, len: usize) -> Result<ReadData> {
        let shared = &self.shared;
        shared.check_readable("read", offset, len as u64)?;
        shared.stats().read(len as u64);
        let view = shared.journal().view_full();
        read::read_parts(shared.chunks(), &*view, offset, len).await
    }

    /// Which parts of `len` bytes at `offset` hold data (see
    /// [`read::allocation`]).
    pub async fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let shared = &self.shared;
        shared.check_readable("block-status", offset, len)?;
        let view = shared.journal().view_full();
        read::allocation(shared.chunks(), &*view, offset, len).await
    }

    /// Starts fetching the committed chunks under `len` bytes at `offset`.
    pub fn prefetch(&self, offset: u64, len: u64) -> Result<()> {
        let shared = &self.shared;
        shared.check_readable("cache", offset, len)?;
        let map = Arc::clone(shared.journal().view().map());
        read::prefetch(shared.chunks(), map, offset, len);
        Ok(())
    }

    /// Grows the volume to `new_size` bytes and commits that.
    pub async fn resize(&self, new_size: u64) -> Result<()> {
        catalog::validate_size(new_size)?;
        let size = self.size();
        if new_size < size {
            return Err(EngineError::InvalidArgument(format!(
                "volume `{}` is {size} bytes and can only grow: shrinking would cut off data",
                self.name()
            )));
        }
        if new_size == size {
            return Ok(());
        }
        self.shared.grow_to(new_size);
        self.shared.progress().kick_uploader();
        let mut commits = self.shared.progress().commits();
        while self.size() < new_size {
            self.shared.check_running()?;
            if commits.changed().await.is_err() {
                break;
            }
        }
        self.shared.check_running()
    }

    /// Makes every write acknowledged before this call durable, as the
    /// volume's durability mode defines it.
    pub async fn flush(&self) -> Result<()> {
        let shared = &self.shared;
        shared.stats().flushed();
        let target = shared.seal_current().await?;
        shared.make_durable(target).await?;
        if shared.options().durability == Durability::Remote {
            shared.progress().wait_committed(target).await?;
        }
        shared.check_tenure().await
    }

    /// Commits every acknowledged write to the store now, whatever the
    /// durability mode, and returns when the store holds them.
    pub async fn commit(&self) -> Result<()> {
        self.flush().await?;
        self.shared.commit_everything().await
    }

    /// Commits every write acknowledged before this call, then pins the
    /// committed root as snapshot `label` (or one named after the time).
    /// A few requests beside the commit, whatever the size.
    pub async fn snapshot(&self, label: Option<&str>) -> Result<SnapshotInfo> {
        self.commit().await?;
        let store = self.shared.store();
        let purpose = format!("a snapshot of volume {}", self.name());
        let hold = GcHold::take(store, &purpose).await?;
        let root = Arc::clone(self.shared.journal().view().map());
        let naming = snapshot::Naming::label_or_time(label);
        let pinned = snapshot::pin(store, self.name(), self.shared.codec(), &root, naming).await;
        hold.release(store).await?;
        pinned
    }

    /// Flushes, commits everything to the store and stops the volume's
    /// background work. Later calls fail with a "closed" error.
    pub async fn close(&self) -> Result<()> {
        self.commit().await?;
        self.shared
            .lease()
            .lock()
            .await
            .release(self.shared.store())
            .await?;
        self.shared.progress().closing();
        self.shared
            .fail(EngineError::Closed(self.name().to_string()));
        self.stop_tasks().await;
        // Chunks fetched last are on disk for the next open.
        self.shared.chunks().settle().await;
        // A spare segment file being made stops; nothing of this volume
        // touches the log once this returns.
        self.shared.journal().stop().await;
        Ok(())
    }

    /// Aborts the background tasks and waits for them to end.
    async fn stop_tasks(&self) {
        for task in self.abort_tasks() {
            let _ = task.await;
        }
    }

    /// Aborts the background tasks; returns them, to wait for.
    fn abort_tasks(&self) -> Vec<JoinHandle<()>> {
        let mut tasks = self.tasks.lock().expect("tasks lock");
        for task in tasks.iter() {
            task.abort();
        }
        std::mem::take(&mut *tasks)
    }

    /// For crash tests: stops the volume as `kill -9` would (see
    /// `Volume::crash`), while other tasks may still hold it (in an
    /// `Arc`): its lock goes when the last of them lets it go.
    #[cfg(feature = "failpoints")]
    #[doc(hidden)]
    pub async fn crash_in_use(&self, power_loss: bool, seed: u64) {
        // A flush may be in a sync (a test may hold it there): it is not
        // waited for, and when it ends it acknowledges nothing
        // (`Progress::publish_durable`).
        for task in self.abort_tasks() {
            let _ = task.await;
        }
        // A segment or spare file being made in a blocking task goes on
        // after its task is aborted; a killed process's would not. The
        // spare stops where it is, and a segment is let end first, so that
        // nothing of this volume touches the log once this returns.
        self.shared.journal().abandon().await;
        self.shared
            .fail(EngineError::Closed(self.name().to_string()));
        self.shared.lease().lock().await.holder_died();
        if power_loss {
            super::log::power_cut::cut_around(self.shared.journal().dir(), seed);
        }
    }
}

/// For crash tests: journals every change under `dir` (a cache directory)
/// that is not durable yet, so that [`Volume::crash`] with a power loss
/// can undo it.
#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub fn simulate_power_cuts(dir: &std::path::Path) {
    super::log::power_cut::arm(dir);
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for task in tasks.iter() {
                task.abort();
            }
        }
        self.lease_holder.died();
    }
}

impl Shared {
    /// Like [`Shared::check_request`], but a stopped volume still reads.
    fn check_readable(&self, op: &'static str, offset: u64, len: u64) -> Result<()> {
        match self.check_request(op, offset, len) {
            Err(EngineError::Stopped(_)) => Ok(()),
            other => other,
        }
    }
}

/// Runs one of the volume's background tasks. A panic in it (a bug) stops
/// the volume: its callers get an error, where they would otherwise wait
/// forever for work nobody does (a flush, a commit, a close on SIGTERM).
fn spawn_task(
    shared: &Arc<Shared>,
    task: &'static str,
    work: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    use futures::FutureExt;
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        if let Err(panic) = std::panic::AssertUnwindSafe(work).catch_unwind().await {
            let message = panic_message(&*panic);
            shared.fail(EngineError::Panicked { task, message });
        }
    })
}

/// What a caught panic said.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string())
}

/// Opens the write-back log in `dir` for a volume whose newest root is
/// `root`, and replays it: the log, what it holds beyond the store, and
/// the epoch after which that starts.
/// The inode of the folder at `path`, if it is there.
fn inode_of(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|meta| meta.ino())
}

async fn open_log(dir: &std::path::Path, root: &Root) -> Result<(LogDir, Replayed, u64)> {
    let cache_dir_error = |source| EngineError::CacheDir {
        path: dir.to_path_buf(),
        source,
    };
    let opened = LogDir::open(&dir.join(LOG_FOLDER), root).map_err(cache_dir_error)?;
    let geometry = Geometry {
        size: root.size,
        chunk_size: root.chunk_size,
    };
    let (log, paths, after) = (opened.log, opened.segments, opened.replay_after);
    let replaying = log.clone();
    let replayed = crate::blocking::run(move || replay(&replaying, &paths, after, geometry))
        .await
        .map_err(cache_dir_error)?;
    if !replayed.epochs.is_empty() {
        tracing::info!(
            volume = %root.volume,
            epochs = replayed.epochs.len(),
            bytes = replayed.dirty_bytes,
            "replayed writes from the write-back log that the store does not have yet"
        );
    }
    Ok((log, replayed, after))
}
