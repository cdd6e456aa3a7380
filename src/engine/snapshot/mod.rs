//! Volume snapshots and clones: pinned roots, and volumes that start from
//! one.
//!
//! Every commit is an immutable root over immutable, content-addressed
//! pages and chunks, so a snapshot is a copy of a root kept apart from the
//! volume's roots (`volumes/NAME/snapshots/SNAP`, kind `Snapshot`), and a
//! clone is a new volume whose generation 0 lists the same pages. Neither
//! copies data: each is a few requests, whatever the volume's size.
//!
//! What this promises:
//! - **A snapshot never changes** and reads what its root read, until it
//!   is deleted: gc marks every snapshot as it marks roots.
//! - **A clone is independent.** It has its own uuid, roots, lease and
//!   log; its writes make new pages and chunks, and the ones it shares are
//!   immutable. Deleting its source, or the source's snapshots, leaves it
//!   whole: gc keeps what any root of any volume references.
//! - **No pin races gc.** Reading a root and writing the snapshot or
//!   clone that pins it happen under the store's gc lease ([`GcHold`]), so
//!   no gc lists, marks and deletes in between (see `gc`).
//! - **Old zeroblk builds stay out.** Before the first snapshot or clone,
//!   the volume's superblock says version 5, which a build without
//!   snapshots refuses ("upgrade zeroblk"), so its gc cannot delete what
//!   only a snapshot references.
//!
//! Taking a snapshot of a volume a writer has open is the writer's job
//! (`Volume::snapshot`, which commits first); [`create`] pins the newest
//! committed root.

mod clone;
mod usage;

pub use clone::clone;

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde::Serialize;

use super::catalog::{self, VolumeInfo, superblock};
use super::error::{EngineError, Result};
use super::gc::GcHold;
use crate::crypto::Password;
use crate::format::root::now_ms;
use crate::format::{Codec, Root, RootKind, Superblock, keys};
use crate::retention::{self, Retention};
use crate::store::{Created, Store};

/// A volume (`NAME`) or one of its snapshots (`NAME@SNAP`), as users name
/// what they read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRef {
    name: String,
    snapshot: Option<String>,
}

impl VolumeRef {
    /// The volume `name` itself.
    pub fn volume(name: &str) -> VolumeRef {
        VolumeRef {
            name: name.to_string(),
            snapshot: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn snapshot(&self) -> Option<&str> {
        self.snapshot.as_deref()
    }

    /// The volume's name, for something that writes: a snapshot refuses.
    pub fn writable(&self) -> Result<&str> {
        match &self.snapshot {
            None => Ok(&self.name),
            Some(snapshot) => Err(EngineError::ReadOnlySnapshot {
                volume: self.name.clone(),
                snapshot: snapshot.clone(),
            }),
        }
    }
}

impl FromStr for VolumeRef {
    type Err = EngineError;

    fn from_str(text: &str) -> Result<VolumeRef> {
        let (name, snapshot) = match text.split_once('@') {
            Some((name, snapshot)) => (name, Some(snapshot)),
            None => (text, None),
        };
        keys::validate_volume_name(name).map_err(EngineError::InvalidArgument)?;
        if let Some(snapshot) = snapshot {
            keys::validate_snapshot_name(snapshot).map_err(EngineError::InvalidArgument)?;
        }
        Ok(VolumeRef {
            name: name.to_string(),
            snapshot: snapshot.map(str::to_string),
        })
    }
}

impl fmt::Display for VolumeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.snapshot {
            Some(snapshot) => write!(f, "{}@{snapshot}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A snapshot, as `volume snapshot list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    name: String,
    generation: u64,
    taken_at_ms: u64,
    size: u64,
    /// Bytes of the volume held in non-zero chunks.
    allocated_bytes: u64,
    /// Bytes its chunks take in the store (compressed, before dedup).
    stored_bytes: u64,
    /// Stored bytes no other snapshot and not the volume's newest state
    /// reference: about what deleting it frees (`None` until counted).
    #[serde(skip_serializing_if = "Option::is_none")]
    exclusive_bytes: Option<u64>,
}

impl SnapshotInfo {
    pub(super) fn of(name: &str, root: &Root) -> SnapshotInfo {
        SnapshotInfo {
            name: name.to_string(),
            generation: root.generation,
            taken_at_ms: root.committed_at_ms,
            size: root.size,
            allocated_bytes: root.allocated_chunks() * root.chunk_size,
            stored_bytes: root.stored_bytes(),
            exclusive_bytes: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn taken_at_ms(&self) -> u64 {
        self.taken_at_ms
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    pub fn exclusive_bytes(&self) -> Option<u64> {
        self.exclusive_bytes
    }
}

/// What a volume (or snapshot) reads: its superblock, how its objects are
/// opened, and the root: the newest committed one, or the snapshot's.
pub async fn open_root(
    store: &Store,
    volume: &VolumeRef,
    password: Option<Password>,
) -> Result<(Superblock, Codec, Root)> {
    let superblock = superblock(store, volume.name()).await?;
    let codec = catalog::unlock_blocking(&superblock, password).await?;
    let root = root_of(store, volume, &superblock, &codec).await?;
    Ok((superblock, codec, root))
}

/// What the store says of a volume, or of a snapshot (`NAME@SNAP`); an
/// encrypted one needs its password.
pub async fn info(store: &Store, name: &str, password: Option<&Password>) -> Result<VolumeInfo> {
    let volume: VolumeRef = name.parse()?;
    let superblock = superblock(store, volume.name()).await?;
    let codec = catalog::unlock(&superblock, password)?;
    let root = root_of(store, &volume, &superblock, &codec).await?;
    Ok(catalog::describe(&superblock, &root, volume.snapshot()))
}

/// The root `volume` names: its snapshot's, or the newest committed one.
async fn root_of(
    store: &Store,
    volume: &VolumeRef,
    superblock: &Superblock,
    codec: &Codec,
) -> Result<Root> {
    match volume.snapshot() {
        Some(snapshot) => catalog::read_snapshot(store, superblock, codec, snapshot).await,
        None => catalog::newest_root(store, superblock, codec).await,
    }
}

/// Pins the newest committed root of volume `name` as a snapshot, named
/// `label` or after the time. Pins only what is committed: a writer's
/// `Volume::snapshot` commits first.
pub async fn create(
    store: &Store,
    name: &str,
    label: Option<&str>,
    password: Option<Password>,
) -> Result<SnapshotInfo> {
    let superblock = superblock(store, name).await?;
    let codec = catalog::unlock_blocking(&superblock, password).await?;
    let hold = GcHold::take(store, &format!("a snapshot of volume {name}")).await?;
    let pinned = async {
        let root = catalog::newest_root(store, &superblock, &codec).await?;
        pin(store, name, &codec, &root, Naming::label_or_time(label)).await
    }
    .await;
    hold.release(store).await?;
    pinned
}

/// What a new snapshot is called.
#[derive(Debug, Clone, Copy)]
pub(super) enum Naming<'a> {
    /// Exactly this; refused if taken.
    Label(&'a str),
    /// `PREFIX` and the time (`YYYY-MM-DDTHHMMSSZ`), then `.2`, `.3`...
    /// if that is taken.
    Time { prefix: &'static str },
}

impl<'a> Naming<'a> {
    /// `label`, or the time.
    pub(super) fn label_or_time(label: Option<&'a str>) -> Naming<'a> {
        match label {
            Some(label) => Naming::Label(label),
            None => Naming::Time { prefix: "" },
        }
    }
}

/// Writes `root` as a snapshot of volume `name`, named as `naming` says.
/// The caller holds gc off ([`GcHold`]) from reading `root` until this
/// returns.
pub(super) async fn pin(
    store: &Store,
    name: &str,
    codec: &Codec,
    root: &Root,
    naming: Naming<'_>,
) -> Result<SnapshotInfo> {
    if let Naming::Label(label) = naming {
        keys::validate_snapshot_name(label).map_err(EngineError::InvalidArgument)?;
    }
    catalog::allow_snapshots(store, name).await?;
    crate::async_fail_point!("snapshot::pin");
    let snapshot = Root {
        kind: RootKind::Snapshot,
        committed_at_ms: now_ms(),
        ..root.clone()
    };
    let bytes = Bytes::from(snapshot.encode(codec));
    let stamp = match naming {
        Naming::Label(label) => {
            let key = keys::snapshot(name, label);
            return match store.put_if_absent(&key, bytes).await? {
                Created::Created => Ok(SnapshotInfo::of(label, &snapshot)),
                Created::AlreadyExists => Err(EngineError::SnapshotExists {
                    volume: name.to_string(),
                    snapshot: label.to_string(),
                }),
            };
        }
        Naming::Time { prefix } => format!("{prefix}{}", time_name(snapshot.committed_at_ms)),
    };
    for attempt in 1.. {
        let candidate = match attempt {
            1 => stamp.clone(),
            n => format!("{stamp}.{n}"),
        };
        let key = keys::snapshot(name, &candidate);
        if store.put_if_absent(&key, bytes.clone()).await? == Created::Created {
            return Ok(SnapshotInfo::of(&candidate, &snapshot));
        }
    }
    unreachable!("some name is free")
}

/// `YYYY-MM-DDTHHMMSSZ`: snapshot names sort by time.
fn time_name(at_ms: u64) -> String {
    let at = chrono::DateTime::from_timestamp_millis(at_ms as i64).unwrap_or_default();
    at.format("%Y-%m-%dT%H%M%SZ").to_string()
}

/// The snapshots of volume `name`, oldest first.
pub async fn list(
    store: &Store,
    name: &str,
    password: Option<Password>,
) -> Result<Vec<SnapshotInfo>> {
    let superblock = superblock(store, name).await?;
    let codec = catalog::unlock_blocking(&superblock, password).await?;
    let snapshots = list_opened(store, &superblock, &codec).await?;
    Ok(snapshots.into_iter().map(|(info, _)| info).collect())
}

/// The snapshots of volume `name`, oldest first, each with the stored
/// bytes only it holds (which reads every map page they list).
pub async fn list_with_usage(
    store: &Store,
    name: &str,
    password: Option<Password>,
) -> Result<Vec<SnapshotInfo>> {
    let superblock = superblock(store, name).await?;
    let codec = catalog::unlock_blocking(&superblock, password).await?;
    let mut snapshots = list_opened(store, &superblock, &codec).await?;
    let roots: Vec<Root> = snapshots.iter().map(|(_, root)| root.clone()).collect();
    let newest = catalog::newest_root(store, &superblock, &codec).await?;
    let alone = usage::exclusive_bytes(store, &codec, &roots, &newest).await?;
    for ((info, _), bytes) in snapshots.iter_mut().zip(alone) {
        info.exclusive_bytes = Some(bytes);
    }
    Ok(snapshots.into_iter().map(|(info, _)| info).collect())
}

/// Whether some snapshot of the volume reads as `root` does (`same`
/// compares two roots).
pub(super) async fn is_pinned(
    store: &Store,
    superblock: &Superblock,
    codec: &Codec,
    root: &Root,
    same: impl Fn(&Root, &Root) -> bool,
) -> Result<bool> {
    let snapshots = list_opened(store, superblock, codec).await?;
    Ok(snapshots.iter().any(|(_, pinned)| same(pinned, root)))
}

/// The snapshots of a volume and their roots, oldest first.
async fn list_opened(
    store: &Store,
    superblock: &Superblock,
    codec: &Codec,
) -> Result<Vec<(SnapshotInfo, Root)>> {
    let mut snapshots = Vec::new();
    for key in store
        .list_keys(&keys::snapshots_dir(&superblock.name))
        .await?
    {
        let snapshot = key.rsplit('/').next().unwrap_or_default();
        if keys::validate_snapshot_name(snapshot).is_err() {
            tracing::warn!(
                key,
                "skipping an object under snapshots/ that is no snapshot"
            );
            continue;
        }
        match catalog::read_snapshot(store, superblock, codec, snapshot).await {
            Ok(root) => snapshots.push((SnapshotInfo::of(snapshot, &root), root)),
            Err(EngineError::NoSuchSnapshot { .. }) => {} // deleted since listed
            Err(error) => return Err(error),
        }
    }
    snapshots.sort_by(|(a, _), (b, _)| (a.taken_at_ms, &a.name).cmp(&(b.taken_at_ms, &b.name)));
    Ok(snapshots)
}

/// Deletes the snapshots of volume `name` that `retention` does not keep,
/// weighed by the time each was taken; with `dry_run`, only says which.
/// Returns their names, oldest first.
pub async fn prune(
    store: &Store,
    name: &str,
    retention: &Retention,
    dry_run: bool,
    password: Option<Password>,
) -> Result<Vec<String>> {
    if retention.keeps_nothing() {
        return Err(EngineError::InvalidArgument(
            "a prune that keeps nothing would delete every snapshot: give at least one of --keep-hourly, --keep-daily, --keep-weekly or --keep-monthly".into(),
        ));
    }
    let snapshots = list(store, name, password).await?;
    let times: Vec<_> = snapshots
        .iter()
        .map(|s| chrono::DateTime::from_timestamp_millis(s.taken_at_ms as i64).unwrap_or_default())
        .collect();
    let kept = retention::keep(&times, retention);
    let doomed: Vec<String> = snapshots
        .into_iter()
        .enumerate()
        .filter(|(index, _)| !kept.contains(index))
        .map(|(_, snapshot)| snapshot.name)
        .collect();
    if !dry_run {
        for snapshot in &doomed {
            delete(store, name, snapshot).await?;
        }
    }
    Ok(doomed)
}

/// Deletes snapshot `snapshot` of volume `name`. What only it referenced
/// is freed by the next gc; clones made from it keep theirs.
pub async fn delete(store: &Store, name: &str, snapshot: &str) -> Result<()> {
    superblock(store, name).await?;
    keys::validate_snapshot_name(snapshot).map_err(EngineError::InvalidArgument)?;
    let key = keys::snapshot(name, snapshot);
    if store.size_of(&key).await?.is_none() {
        return Err(EngineError::NoSuchSnapshot {
            volume: name.to_string(),
            snapshot: snapshot.to_string(),
        });
    }
    store.delete(&key).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_snapshots_parse() {
        let plain: VolumeRef = "data".parse().unwrap();
        assert_eq!((plain.name(), plain.snapshot()), ("data", None));
        assert_eq!(plain.writable().unwrap(), "data");
        let snap: VolumeRef = "data@before-upgrade".parse().unwrap();
        assert_eq!(snap.snapshot(), Some("before-upgrade"));
        assert_eq!(snap.to_string(), "data@before-upgrade");
        let refused = snap.writable().unwrap_err().to_string();
        assert!(
            refused.contains("volume clone data@before-upgrade"),
            "{refused}"
        );
        for bad in ["", "@x", "data@", "data@a@b", "data@../x", "a/b"] {
            assert!(bad.parse::<VolumeRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn time_names_sort_by_time() {
        assert_eq!(time_name(0), "1970-01-01T000000Z");
        assert!(time_name(1_800_000_000_000) > time_name(1_700_000_000_000));
    }
}
