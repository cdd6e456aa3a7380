//! The volume a copy writes: checked before anything is copied, and made
//! to show the copied snapshot once every object is there.

use bytes::Bytes;
use uuid::Uuid;

use super::super::catalog;
use super::super::error::EngineError;
use super::super::lease;
use super::super::snapshot::{self, Naming};
use super::error::CopyError;
use super::source::SourceVolume;
use crate::crypto::Password;
use crate::format::root::now_ms;
use crate::format::{Codec, FormatError, Root, RootKind, Superblock, keys};
use crate::store::{Created, Store};

/// What two codecs name alike only when they hold the same keys.
const KEY_PROBE: &[u8] = b"zeroblk volume copy: the same data key on both sides";

/// The destination volume: the one there, or the superblock it will get.
pub(super) struct Destination<'a> {
    store: &'a Store,
    name: String,
    superblock: Superblock,
    codec: Codec,
    exists: bool,
}

impl<'a> Destination<'a> {
    /// Checks that volume `name` in `to` may receive `source`: it is absent
    /// or the same volume (its uuid and data key), and no writer has it.
    pub(super) async fn open(
        to: &'a Store,
        name: &str,
        source: &SourceVolume,
        password: Option<&Password>,
    ) -> Result<Destination<'a>, CopyError> {
        let (superblock, codec, exists) = match catalog::superblock(to, name).await {
            Ok(found) => {
                let codec = same_volume(to, &found, source, password).await?;
                (found, codec, true)
            }
            Err(EngineError::NoSuchVolume(_)) => {
                refuse_leftovers(to, name).await?;
                let superblock = derived(source.superblock(), name, password).await?;
                (superblock, source.codec().clone(), false)
            }
            Err(other) => return Err(other.into()),
        };
        let destination = Destination {
            store: to,
            name: name.to_string(),
            superblock,
            codec,
            exists,
        };
        destination.refuse_writer().await?;
        Ok(destination)
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Fails if the volume's lease is held: by a writer, or by one that
    /// stopped without detaching (its log may hold what the store lacks).
    async fn refuse_writer(&self) -> Result<(), CopyError> {
        if !lease::is_held(self.store, &self.name).await? {
            return Ok(());
        }
        let (store, name) = (self.store.url().to_string(), self.name.clone());
        match lease::live_holder(self.store, &self.name).await? {
            Some(holder) => Err(CopyError::Attached {
                store,
                name,
                holder: holder.holder_name(),
            }),
            None => Err(CopyError::NotDetached { store, name }),
        }
    }

    /// Makes snapshot `snapshot`, whose map is `root`'s, visible: the
    /// superblock (of a new volume), then the volume's next generation
    /// with that map (unless its newest has it already), then the snapshot
    /// (a stop between the two leaves a volume reading as the snapshot, and
    /// the next run adds the snapshot). Returns the volume's newest
    /// generation, and whether it had the map already. Every object the
    /// map references must be there, and gc held off.
    pub(super) async fn publish(
        &self,
        snapshot: &str,
        root: &Root,
    ) -> Result<(u64, bool), CopyError> {
        self.write_superblock().await?;
        self.refuse_other_snapshot(snapshot, root).await?;
        let published = self.write_root(root).await?;
        crate::async_fail_point!("copy::root_written");
        self.write_snapshot(snapshot, root).await?;
        Ok(published)
    }

    async fn write_superblock(&self) -> Result<(), CopyError> {
        let key = keys::superblock(&self.name);
        let bytes = Bytes::from(self.superblock.encode());
        if self.exists || self.store.put_if_absent(&key, bytes).await? == Created::AlreadyExists {
            // Made by another copy of the same volume meanwhile, or there
            // from an earlier one: the same volume, or nothing is written.
            let found = catalog::superblock(self.store, &self.name).await?;
            self.refuse_other(&found)?;
            catalog::allow_snapshots(self.store, &self.name).await?;
        }
        Ok(())
    }

    fn refuse_other(&self, found: &Superblock) -> Result<(), CopyError> {
        match found.uuid == self.superblock.uuid {
            true => Ok(()),
            false => Err(other_volume(
                self.store,
                &self.name,
                found,
                self.superblock.uuid,
            )),
        }
    }

    /// Fails if the volume has a snapshot named `snapshot` that does not
    /// read as `root`: before anything of the copy is published.
    async fn refuse_other_snapshot(&self, snapshot: &str, root: &Root) -> Result<(), CopyError> {
        let (store, superblock, codec) = (self.store, &self.superblock, &self.codec);
        match catalog::read_snapshot(store, superblock, codec, snapshot).await {
            Ok(found) if same_state(&found, root) => Ok(()), // an earlier run's
            Ok(_) => Err(CopyError::OtherSnapshot {
                store: self.store.url().to_string(),
                name: self.name.clone(),
                snapshot: snapshot.to_string(),
            }),
            Err(EngineError::NoSuchSnapshot { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    async fn write_snapshot(&self, snapshot: &str, root: &Root) -> Result<(), CopyError> {
        let pinned = Root {
            kind: RootKind::Snapshot,
            ..root.clone()
        };
        let key = keys::snapshot(&self.name, snapshot);
        let bytes = Bytes::from(pinned.encode(&self.codec));
        match self.store.put_if_absent(&key, bytes).await? {
            Created::Created => Ok(()),
            // There already: this one, or one made since the check.
            Created::AlreadyExists => self.refuse_other_snapshot(snapshot, root).await,
        }
    }

    /// Publishes the next generation with `root`'s map (a new log id, so a
    /// write-back log left for an older state is moved aside, never
    /// replayed onto this one).
    async fn write_root(&self, root: &Root) -> Result<(u64, bool), CopyError> {
        loop {
            self.refuse_writer().await?;
            let newest = self.newest_generation().await?;
            let found = match newest {
                Some(generation) => {
                    catalog::root_at(self.store, &self.superblock, &self.codec, generation).await?
                }
                None => None,
            };
            if let Some(found) = &found {
                if same_state(found, root) {
                    return Ok((found.generation, true));
                }
                self.keep_unpinned(found).await?;
            }
            let next = Root {
                volume: self.superblock.uuid,
                generation: newest.map_or(0, |g| g + 1),
                size: root.size,
                chunk_size: root.chunk_size,
                log_id: Uuid::new_v4(),
                log_epoch: 0,
                committed_at_ms: now_ms(),
                kind: RootKind::Commit,
                pages: root.pages.clone(),
            };
            if catalog::publish_root(self.store, &self.name, &self.codec, &next).await? {
                return Ok((next.generation, false));
            }
        }
    }

    /// Pins `newest`, the state the copy is about to replace, as snapshot
    /// `pre-copy-TIME`, unless a snapshot holds it already or it holds
    /// nothing: writes made to the destination volume since the last copy
    /// (or a volume brought back over with `--from`) are never lost.
    async fn keep_unpinned(&self, newest: &Root) -> Result<(), CopyError> {
        if newest.allocated_chunks() == 0 {
            return Ok(());
        }
        let (store, superblock, codec) = (self.store, &self.superblock, &self.codec);
        if snapshot::is_pinned(store, superblock, codec, newest, same_state).await? {
            return Ok(());
        }
        let naming = Naming::Time {
            prefix: "pre-copy-",
        };
        let kept = snapshot::pin(store, &self.name, codec, newest, naming).await?;
        tracing::warn!(
            "volume {} in {} held writes no snapshot of it holds: kept as snapshot {}@{} before the copy replaced them",
            self.name,
            store.url(),
            self.name,
            kept.name()
        );
        Ok(())
    }

    /// The newest generation the volume's roots hold, if any.
    async fn newest_generation(&self) -> Result<Option<u64>, CopyError> {
        let prefix = format!("{}/roots/", keys::volume_dir(&self.name));
        let listed = self.store.list_keys(&prefix).await?;
        Ok(listed
            .iter()
            .filter_map(|key| key.rsplit('/').next()?.parse().ok())
            .max())
    }
}

/// Whether two roots read the same: the same volume, size and map.
fn same_state(a: &Root, b: &Root) -> bool {
    (a.volume, a.size, a.chunk_size, &a.pages) == (b.volume, b.size, b.chunk_size, &b.pages)
}

fn other_volume(store: &Store, name: &str, found: &Superblock, copying: Uuid) -> CopyError {
    CopyError::OtherVolume {
        store: store.url().to_string(),
        name: name.to_string(),
        found: found.uuid,
        copying,
    }
}

/// The codec of `found`, the destination's superblock, if it is the
/// source's volume: the same uuid, opened by the password, with the same
/// data key.
async fn same_volume(
    to: &Store,
    found: &Superblock,
    source: &SourceVolume,
    password: Option<&Password>,
) -> Result<Codec, CopyError> {
    let copying = source.superblock().uuid;
    if found.uuid != copying {
        return Err(other_volume(to, &found.name, found, copying));
    }
    let codec = catalog::unlock_blocking(found, password.cloned()).await?;
    if codec.id_of(KEY_PROBE) != source.codec().id_of(KEY_PROBE) {
        let why = "it has the uuid of the volume being copied, but not its data key: the bucket was changed outside zeroblk; copy under another name";
        return Err(FormatError::corrupt(keys::superblock(&found.name), why).into());
    }
    Ok(codec)
}

/// Fails if the destination holds objects of volume `name` but no
/// superblock: a delete that did not finish.
async fn refuse_leftovers(to: &Store, name: &str) -> Result<(), CopyError> {
    match to.list_keys(&keys::volume_dir(name)).await?.is_empty() {
        true => Ok(()),
        false => Err(CopyError::PartlyDeleted {
            store: to.url().to_string(),
            name: name.to_string(),
        }),
    }
}

/// The superblock of the copy named `name`: the source's (same uuid, chunk
/// size, compression), marked as a volume with snapshots; an encrypted
/// one's key envelope bound to the new name (the same data key and
/// password), which takes the password.
async fn derived(
    source: &Superblock,
    name: &str,
    password: Option<&Password>,
) -> Result<Superblock, CopyError> {
    let mut superblock = source.clone();
    superblock.name = name.to_string();
    superblock.allow_snapshots();
    let Some(envelope) = source.encryption.clone() else {
        return Ok(superblock);
    };
    if name == source.name {
        return Ok(superblock);
    }
    let password = password
        .cloned()
        .ok_or_else(|| EngineError::PasswordNeeded(source.name.clone()))?;
    let (old, new) = (source.key_binding(), superblock.key_binding());
    let rebound = crate::blocking::run(move || envelope.rebind(&password, &old, &new))
        .await
        .map_err(|why| EngineError::key(name, why))?;
    superblock.encryption = Some(rebound.0);
    Ok(superblock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Compression;

    fn password() -> Password {
        Password::new("copy test".to_string()).unwrap()
    }

    #[tokio::test]
    async fn a_copy_under_another_name_opens_with_the_same_password_and_key() {
        let mut source = Superblock::new("data", 1 << 30, 1 << 20, Compression::None);
        let (envelope, keys) =
            crate::crypto::KeyEnvelope::create(&password(), &source.key_binding()).unwrap();
        source.encrypt(envelope);
        let copy = derived(&source, "backup", Some(&password())).await.unwrap();
        assert_eq!((copy.name.as_str(), copy.uuid), ("backup", source.uuid));
        assert_eq!(
            copy.version,
            crate::format::superblock::SNAPSHOTS_VOLUME_VERSION
        );
        let opened = catalog::unlock(&copy, Some(&password())).unwrap();
        assert_eq!(opened.id_of(b"x"), Codec::sealed(keys).id_of(b"x"));
        assert!(
            catalog::unlock(&source, Some(&password())).is_ok()
                && catalog::unlock(
                    &Superblock {
                        name: "backup".into(),
                        ..source.clone()
                    },
                    Some(&password())
                )
                .is_err(),
            "the source's envelope is bound to its own name"
        );
        let refused = derived(&source, "backup", None).await.unwrap_err();
        assert!(refused.to_string().contains("password"), "{refused}");
        let same_name = derived(&source, "data", None).await.unwrap();
        assert_eq!(same_name.encryption, source.encryption, "nothing to rebind");
    }

    #[test]
    fn two_roots_read_the_same_when_their_maps_and_sizes_are_equal() {
        let a = Root::empty(Uuid::new_v4(), 1 << 30, 1 << 20);
        let later = a.succeeded_by(RootKind::Snapshot);
        assert!(same_state(&a, &later));
        let mut grown = a.clone();
        grown.size = 2 << 30;
        assert!(!same_state(&a, &grown));
        let mut changed = a.clone();
        changed.pages[0].id = crate::format::ObjectId::of(b"page");
        assert!(!same_state(&a, &changed));
    }
}
