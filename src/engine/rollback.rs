//! `volume rollback`: one of a volume's snapshots becomes its newest state.
//!
//! The volume must be detached. What it holds is first committed (a write-
//! back log left by a crash on this host is replayed and committed by
//! opening and closing the volume), then kept as a snapshot named
//! `pre-rollback-TIME`, so a rollback loses nothing; then a new generation
//! with the snapshot's map is published. The volume's writer lease is held
//! from the pin to the publication, so no writer commits in between, and
//! gc is held off (its lease) while a root is read and pinned.
//!
//! The new generation names the log of the generation before it, at the
//! same epoch: a log on this host replays nothing more (all of it is
//! committed), and a stale log elsewhere names another log and is moved
//! aside when its host opens the volume, as after any takeover.

use serde::Serialize;

use super::catalog::{self, superblock};
use super::error::{EngineError, Result};
use super::gc::GcHold;
use super::lease::Lease;
use super::options::EngineOptions;
use super::snapshot::{self, Naming, SnapshotInfo};
use super::volume::Volume;
use crate::format::{Codec, Root, RootKind};
use crate::store::Store;

/// What a rollback did.
#[derive(Debug, Clone, Serialize)]
pub struct RolledBack {
    /// The snapshot that keeps the state rolled back from.
    kept: SnapshotInfo,
    /// The generation that now holds the snapshot's state.
    generation: u64,
}

impl RolledBack {
    pub fn kept(&self) -> &SnapshotInfo {
        &self.kept
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// Makes snapshot `target` of the detached volume `name` its newest state.
pub async fn rollback(
    store: &Store,
    name: &str,
    target: &str,
    options: EngineOptions,
) -> Result<RolledBack> {
    let superblock = superblock(store, name).await?;
    let codec = catalog::unlock_blocking(&superblock, options.password.clone()).await?;
    catalog::read_snapshot(store, &superblock, &codec, target).await?;
    let volume = Volume::open(store, name, options.clone()).await?;
    volume.close().await?;
    drop(volume);
    crate::async_fail_point!("rollback::closed");
    let lease = Lease::acquire(store, name, options.lease_ttl, false, None).await?;
    let hold = GcHold::take(store, &format!("a rollback of volume {name}")).await?;
    let rolled = replace_newest(store, name, &codec, target).await;
    hold.release(store).await?;
    lease.release(store).await?;
    rolled
}

/// Pins the newest root as `pre-rollback-TIME`, then publishes `target`'s
/// map as the next generation. The caller holds the writer's lease and
/// gc's.
async fn replace_newest(
    store: &Store,
    name: &str,
    codec: &Codec,
    target: &str,
) -> Result<RolledBack> {
    let superblock = superblock(store, name).await?;
    let newest = catalog::newest_root(store, &superblock, codec).await?;
    let wanted = catalog::read_snapshot(store, &superblock, codec, target).await?;
    let naming = Naming::Time {
        prefix: "pre-rollback-",
    };
    let kept = snapshot::pin(store, name, codec, &newest, naming).await?;
    crate::async_fail_point!("rollback::kept");
    let next = Root {
        size: wanted.size,
        pages: wanted.pages,
        ..newest.succeeded_by(RootKind::Commit)
    };
    if !catalog::publish_root(store, name, codec, &next).await? {
        return Err(EngineError::InvalidArgument(format!(
            "volume `{name}` was committed by someone else during the rollback (generation {} exists): nothing was rolled back, and its state is kept as snapshot {}; detach it everywhere, then roll back again",
            next.generation,
            kept.name()
        )));
    }
    Ok(RolledBack {
        kept,
        generation: next.generation,
    })
}
