//! `volume clone`: a new volume whose first generation is another's root.
//!
//! The clone's superblock is its own (a new uuid, its own name, the
//! source's chunk size and compression; for an encrypted source, the same
//! data key wrapped for the clone's name), and its generation 0 lists the
//! source root's map pages. Nothing else is written: the pages and chunks
//! are shared, immutable, and kept by gc as long as any root references
//! them.

use bytes::Bytes;

use super::VolumeRef;
use crate::crypto::{KeyEnvelope, Password};
use crate::engine::catalog::{self, superblock};
use crate::engine::error::{EngineError, Result};
use crate::engine::gc::GcHold;
use crate::format::root::now_ms;
use crate::format::{Codec, Root, RootKind, Superblock, keys};
use crate::store::{Created, Store};

/// Makes volume `target`, starting from `source` (its newest committed
/// root, or a snapshot). Refuses a target name that is taken.
pub async fn clone(
    store: &Store,
    source: &VolumeRef,
    target: &str,
    password: Option<Password>,
) -> Result<Superblock> {
    keys::validate_volume_name(target).map_err(EngineError::InvalidArgument)?;
    catalog::refuse_taken_name(store, target).await?;
    let from = superblock(store, source.name()).await?;
    let mut clone = Superblock::new(target, from.size, from.chunk_size, from.compression);
    clone.allow_snapshots();
    let codec = keys_for_clone(&from, &mut clone, password).await?;
    let hold = GcHold::take(store, &format!("a clone of {source} as {target}")).await?;
    let made = async {
        let root = match source.snapshot() {
            Some(snapshot) => catalog::read_snapshot(store, &from, &codec, snapshot).await?,
            None => catalog::newest_root(store, &from, &codec).await?,
        };
        clone.size = root.size;
        crate::async_fail_point!("snapshot::pin");
        let key = keys::superblock(target);
        let bytes = Bytes::from(clone.encode());
        if store.put_if_absent(&key, bytes).await? == Created::AlreadyExists {
            return Err(EngineError::VolumeExists(target.to_string()));
        }
        let first = first_generation(&clone, &root);
        if let Err(error) = catalog::publish_root(store, target, &codec, &first).await {
            // Not left half made: a superblock without a root is a volume
            // nothing can open.
            if let Err(cleanup) = store.delete(&key).await {
                tracing::warn!(%cleanup, "could not remove the half-made clone's superblock");
            }
            return Err(error);
        }
        Ok(clone)
    }
    .await;
    hold.release(store).await?;
    made
}

/// Gives `clone` the source's data key, if it has one, and says how both
/// volumes' objects are opened.
async fn keys_for_clone(
    source: &Superblock,
    clone: &mut Superblock,
    password: Option<Password>,
) -> Result<Codec> {
    let Some(envelope) = source.encryption.clone() else {
        return catalog::unlock(source, password.as_ref());
    };
    let password = password.ok_or_else(|| EngineError::PasswordNeeded(source.name.clone()))?;
    let (from, to, name) = (
        source.key_binding(),
        clone.key_binding(),
        source.name.clone(),
    );
    let rebound = crate::blocking::run(move || -> Result<(KeyEnvelope, _)> {
        envelope
            .rebind(&password, &from, &to)
            .map_err(|why| EngineError::key(&name, why))
    })
    .await?;
    clone.encrypt(rebound.0);
    Ok(Codec::sealed(rebound.1))
}

/// Generation 0 of `clone`: `root`'s map, and no log.
fn first_generation(clone: &Superblock, root: &Root) -> Root {
    Root {
        volume: clone.uuid,
        generation: 0,
        log_id: uuid::Uuid::nil(),
        log_epoch: 0,
        committed_at_ms: now_ms(),
        kind: RootKind::Commit,
        ..root.clone()
    }
}
