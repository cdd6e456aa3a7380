//! The volumes of a store: create, find, describe, delete.
//!
//! These work on the store alone, without a write-back log; writing to a
//! volume (and growing it) goes through an open [`super::Volume`].

use bytes::Bytes;
use serde::Serialize;

use crate::crypto::{KeyEnvelope, Password};
use crate::format::{
    self, Codec, Compression, FormatError, MapPage, ObjectId, Root, RootKind, Superblock, keys,
    validate_chunk_size,
};
use crate::store::{Created, Store};

use super::error::{EngineError, Result};

/// The largest volume: 8 EiB would overflow offsets; 1 PiB is plenty.
pub const MAX_VOLUME_SIZE: u64 = 1 << 50;

/// What `volume create` asks for.
#[derive(Debug, Clone)]
pub struct NewVolume {
    pub name: String,
    pub size: u64,
    pub chunk_size: u64,
    pub compression: Compression,
    /// Encrypt the volume with this password.
    pub encrypt_with: Option<Password>,
}

/// A volume as the store describes it (`volume info`).
#[derive(Debug, Clone, Serialize)]
pub struct VolumeInfo {
    pub name: String,
    /// The snapshot described, for `NAME@SNAP`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    pub uuid: String,
    pub size: u64,
    pub chunk_size: u64,
    pub compression: String,
    /// How its objects are sealed, if it is encrypted.
    pub encryption: Option<String>,
    pub format_version: u32,
    pub generation: u64,
    pub committed_at_ms: u64,
    /// Bytes of the volume held in non-zero chunks.
    pub allocated_bytes: u64,
    /// Bytes those chunks take in the store, compressed, before dedup.
    pub stored_bytes: u64,
}

/// Checks a volume size: a positive multiple of 4 KiB, at most 1 PiB.
pub fn validate_size(size: u64) -> Result<()> {
    if size == 0 || !size.is_multiple_of(format::BLOCK_SIZE) || size > MAX_VOLUME_SIZE {
        return Err(EngineError::InvalidArgument(format!(
            "a volume size must be a multiple of 4K between 4K and 1P, not {size} bytes"
        )));
    }
    Ok(())
}

/// Creates a volume; refuses a name that is taken.
pub async fn create(store: &Store, new: &NewVolume) -> Result<Superblock> {
    keys::validate_volume_name(&new.name).map_err(EngineError::InvalidArgument)?;
    validate_size(new.size)?;
    validate_chunk_size(new.chunk_size).map_err(EngineError::InvalidArgument)?;
    refuse_taken_name(store, &new.name).await?;
    let mut superblock = Superblock::new(&new.name, new.size, new.chunk_size, new.compression);
    let codec = match &new.encrypt_with {
        Some(password) => {
            let (envelope, keys) = KeyEnvelope::create(password, &superblock.key_binding())
                .map_err(|why| EngineError::key(&new.name, why))?;
            superblock.encrypt(envelope);
            Codec::sealed(keys)
        }
        None => Codec::clear(),
    };
    let key = keys::superblock(&new.name);
    if store
        .put_if_absent(&key, Bytes::from(superblock.encode()))
        .await?
        == Created::AlreadyExists
    {
        return Err(EngineError::VolumeExists(new.name.clone()));
    }
    let root = Root::empty(superblock.uuid, new.size, new.chunk_size);
    store
        .put_if_absent(&keys::root(&new.name, 0), Bytes::from(root.encode(&codec)))
        .await?;
    write_head(store, &new.name, 0).await?;
    Ok(superblock)
}

/// Fails if volume `name` exists, or was partly deleted.
pub async fn refuse_taken_name(store: &Store, name: &str) -> Result<()> {
    if store.get(&keys::superblock(name)).await?.is_some() {
        return Err(EngineError::VolumeExists(name.to_string()));
    }
    if !store.list_keys(&keys::volume_dir(name)).await?.is_empty() {
        return Err(EngineError::InvalidArgument(format!(
            "volume `{name}` was partly deleted: finish with `zeroblk volume delete {name}`, then create it again"
        )));
    }
    Ok(())
}

/// Fails with [`EngineError::Unfinished`] if volume `name` has no root:
/// what an interrupted create, clone or copy leaves (one listing).
pub async fn check_finished(store: &Store, name: &str) -> Result<()> {
    let roots = format!("{}/roots/", keys::volume_dir(name));
    match store.list_keys(&roots).await?.is_empty() {
        true => Err(EngineError::Unfinished(name.to_string())),
        false => Ok(()),
    }
}

/// The names of the store's volumes, sorted.
pub async fn list(store: &Store) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for name in store.list_dirs(keys::VOLUMES_DIR).await? {
        // Nothing zeroblk made: one stray folder must not hide the rest.
        if let Err(why) = keys::validate_volume_name(&name) {
            tracing::warn!(%why, "skipping a folder under volumes/ that is not a volume");
            continue;
        }
        // A folder without a superblock is what a delete left behind.
        if store.get(&keys::superblock(&name)).await?.is_some() {
            names.push(name);
        }
    }
    Ok(names)
}

pub async fn superblock(store: &Store, name: &str) -> Result<Superblock> {
    if let Some((volume, snapshot)) = name.split_once('@') {
        // What reads accepts NAME@SNAP before it gets here: this writes.
        return Err(EngineError::ReadOnlySnapshot {
            volume: volume.to_string(),
            snapshot: snapshot.to_string(),
        });
    }
    keys::validate_volume_name(name).map_err(EngineError::InvalidArgument)?;
    let key = keys::superblock(name);
    let bytes = store
        .get_at_most(&key, format::superblock::MAX_LEN)
        .await?
        .ok_or_else(|| EngineError::NoSuchVolume(name.to_string()))?;
    checked_superblock(&key, name, &bytes)
}

/// The superblock of volume `name` in `bytes`, refused unless its name is
/// `name` and its geometry one `volume create` makes.
fn checked_superblock(key: &str, name: &str, bytes: &[u8]) -> Result<Superblock> {
    let superblock = Superblock::decode(key, bytes)?;
    check_geometry(key, superblock.size, superblock.chunk_size)?;
    // The name builds paths under the cache dir (and `volume delete`
    // removes them): only the name it is stored under may be used.
    if superblock.name != name {
        return Err(FormatError::corrupt(
            key,
            format!(
                "it names volume `{}`, not `{name}`: the bucket was changed outside zeroblk; restore the object from a backup or recreate the volume",
                superblock.name
            ),
        )
        .into());
    }
    Ok(superblock)
}

/// How the volume's objects are named and kept: for an encrypted volume,
/// its keys, which `password` must open. A password given for a volume in
/// the clear is not needed, and not an error.
pub fn unlock(superblock: &Superblock, password: Option<&Password>) -> Result<Codec> {
    let Some(envelope) = &superblock.encryption else {
        if password.is_some() {
            tracing::warn!(
                volume = %superblock.name,
                "a password is given, but this volume is not encrypted: what it stores is in the clear (if it was made encrypted, its superblock was replaced outside zeroblk)"
            );
        }
        return Ok(Codec::clear());
    };
    let password = password.ok_or_else(|| EngineError::PasswordNeeded(superblock.name.clone()))?;
    let keys = envelope
        .open(password, &superblock.key_binding())
        .map_err(|why| EngineError::key(&superblock.name, why))?;
    Ok(Codec::sealed(keys))
}

/// Checks that `password` opens volume `name` (any password does, for a
/// volume in the clear), reading only its superblock.
pub async fn check_password(store: &Store, name: &str, password: Option<Password>) -> Result<()> {
    let superblock = superblock(store, name).await?;
    unlock_blocking(&superblock, password).await.map(drop)
}

/// [`unlock`], off the async threads: Argon2id takes a quarter second of
/// work and 64 MiB.
pub async fn unlock_blocking(superblock: &Superblock, password: Option<Password>) -> Result<Codec> {
    if superblock.encryption.is_none() {
        return unlock(superblock, password.as_ref());
    }
    let superblock = superblock.clone();
    crate::blocking::run(move || unlock(&superblock, password.as_ref())).await
}

/// Wraps an encrypted volume's data key with `new` instead of `old`: one
/// write of its superblock, no data touched, and only over the superblock
/// it read (two rekeys at once: one of them is told to run again). Every
/// superblock the store may hold meanwhile wraps the same key, so a copy
/// of an older one (a backup, bucket versioning) still opens with the old
/// password: to retire a key, copy the data to a new volume.
pub async fn rekey(store: &Store, name: &str, old: &Password, new: &Password) -> Result<()> {
    keys::validate_volume_name(name).map_err(EngineError::InvalidArgument)?;
    let key = keys::superblock(name);
    let (bytes, version) = store
        .get_versioned(&key)
        .await?
        .ok_or_else(|| EngineError::NoSuchVolume(name.to_string()))?;
    let mut superblock = checked_superblock(&key, name, &bytes)?;
    let Some(envelope) = &superblock.encryption else {
        return Err(EngineError::InvalidArgument(format!(
            "volume `{name}` is not encrypted, so it has no password to change; copy it into a volume made with `volume create --encrypt`"
        )));
    };
    let (envelope, old, new, binding) = (
        envelope.clone(),
        old.clone(),
        new.clone(),
        superblock.key_binding(),
    );
    let rewrapped = crate::blocking::run(move || envelope.rewrap(&old, &new, &binding))
        .await
        .map_err(|why| EngineError::key(name, why))?;
    superblock.encryption = Some(rewrapped);
    let written = store
        .replace_if_unchanged(&key, Bytes::from(superblock.encode()), &version)
        .await?;
    match written {
        crate::store::Replaced::Replaced(_) => Ok(()),
        crate::store::Replaced::Changed => Err(EngineError::InvalidArgument(format!(
            "volume `{name}`'s superblock changed while its password was being changed (another rekey?): nothing was written; run it again"
        ))),
    }
}

/// The newest committed generation: the head hint, then the roots after
/// it until one is missing. A few requests, whatever the volume's size.
/// When the hinted root is gone (`zeroblk gc` deletes old roots, and the
/// hint may lag), the newest listed root takes its place.
pub async fn newest_root(store: &Store, superblock: &Superblock, codec: &Codec) -> Result<Root> {
    let name = &superblock.name;
    let mut generation = read_head(store, name).await?;
    let mut newest = read_root(store, superblock, codec, generation).await?;
    if newest.is_none() {
        let listed = store
            .list_keys(&format!("{}/roots/", keys::volume_dir(name)))
            .await?;
        let Some(listed) = listed
            .iter()
            .filter_map(|k| k.rsplit('/').next()?.parse().ok())
            .max()
        else {
            return Err(EngineError::Unfinished(name.to_string()));
        };
        generation = listed;
        newest = read_root(store, superblock, codec, generation).await?;
    }
    let mut newest = newest.ok_or_else(|| EngineError::MissingObject {
        key: keys::root(name, generation),
        generation,
    })?;
    while let Some(next) = read_root(store, superblock, codec, newest.generation + 1).await? {
        newest = next;
    }
    Ok(newest)
}

async fn read_root(
    store: &Store,
    superblock: &Superblock,
    codec: &Codec,
    generation: u64,
) -> Result<Option<Root>> {
    let key = keys::root(&superblock.name, generation);
    let Some(root) = read_checked_root(store, superblock, codec, &key).await? else {
        return Ok(None);
    };
    if root.generation != generation || root.kind == RootKind::Snapshot {
        return Err(FormatError::corrupt(
            key,
            "it belongs to another generation, or is a snapshot",
        )
        .into());
    }
    Ok(Some(root))
}

/// The snapshot `snapshot` of a volume: the root it pins.
pub async fn read_snapshot(
    store: &Store,
    superblock: &Superblock,
    codec: &Codec,
    snapshot: &str,
) -> Result<Root> {
    keys::validate_snapshot_name(snapshot).map_err(EngineError::InvalidArgument)?;
    let key = keys::snapshot(&superblock.name, snapshot);
    let no_such = || EngineError::NoSuchSnapshot {
        volume: superblock.name.clone(),
        snapshot: snapshot.to_string(),
    };
    let root = read_checked_root(store, superblock, codec, &key)
        .await?
        .ok_or_else(no_such)?;
    if root.kind != RootKind::Snapshot {
        return Err(FormatError::corrupt(key, "it is not a snapshot").into());
    }
    Ok(root)
}

/// The root at `key`, refused unless it is one of this volume's, of a
/// shape `volume create` makes.
async fn read_checked_root(
    store: &Store,
    superblock: &Superblock,
    codec: &Codec,
    key: &str,
) -> Result<Option<Root>> {
    let max = Root::max_stored_len(superblock.chunk_size, MAX_VOLUME_SIZE);
    let Some(bytes) = store.get_at_most(key, max).await? else {
        return Ok(None);
    };
    let root = Root::decode(key, &bytes, codec)?;
    if root.volume != superblock.uuid {
        return Err(FormatError::corrupt(key, "it belongs to another volume").into());
    }
    check_geometry(key, root.size, root.chunk_size)?;
    if root.chunk_size != superblock.chunk_size {
        return Err(FormatError::corrupt(key, "its chunk size is not the volume's").into());
    }
    Ok(Some(root))
}

/// The map page `id`, which a root of generation `generation` lists:
/// refused unread if larger than any page, checked against its name.
pub async fn read_page(
    store: &Store,
    codec: &Codec,
    id: ObjectId,
    generation: u64,
) -> Result<MapPage> {
    let key = keys::page(&id);
    let object = store
        .get_at_most(&key, format::page::MAX_STORED_LEN)
        .await?
        .ok_or(EngineError::MissingObject { key, generation })?;
    Ok(MapPage::decode(id, &object, codec)?)
}

/// Marks volume `name` as one whose objects snapshots and clones may
/// reference (superblock version 5), before the first of them is made:
/// from then on a zeroblk that knows nothing of snapshots refuses the
/// volume, and so its gc deletes nothing.
pub async fn allow_snapshots(store: &Store, name: &str) -> Result<()> {
    let key = keys::superblock(name);
    loop {
        let (bytes, version) = store
            .get_versioned(&key)
            .await?
            .ok_or_else(|| EngineError::NoSuchVolume(name.to_string()))?;
        let mut superblock = checked_superblock(&key, name, &bytes)?;
        if !superblock.allow_snapshots() {
            return Ok(());
        }
        let written = store
            .replace_if_unchanged(&key, Bytes::from(superblock.encode()), &version)
            .await?;
        if let crate::store::Replaced::Replaced(_) = written {
            return Ok(());
        }
    }
}

/// Refuses a size or chunk size that `volume create` would not have made:
/// the engine divides by the one and allocates by both, so a tampered
/// value must stop here, not as a panic or a wrong read later.
fn check_geometry(key: &str, size: u64, chunk_size: u64) -> Result<()> {
    validate_chunk_size(chunk_size).map_err(|why| FormatError::corrupt(key, why))?;
    if size == 0 || !size.is_multiple_of(format::BLOCK_SIZE) || size > MAX_VOLUME_SIZE {
        let why = format!("its size {size} is not a multiple of 4K up to 1P");
        return Err(FormatError::corrupt(key, why).into());
    }
    Ok(())
}

async fn read_head(store: &Store, name: &str) -> Result<u64> {
    let bytes = store.get(&keys::head(name)).await?;
    Ok(bytes
        .and_then(|b| {
            std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        })
        .unwrap_or(0))
}

/// Publishes `root` as its volume's generation, unless that generation
/// exists already: says whether it did. The root is then the newest, and
/// the head hint says so.
pub async fn publish_root(store: &Store, name: &str, codec: &Codec, root: &Root) -> Result<bool> {
    let key = keys::root(name, root.generation);
    if store
        .put_if_absent(&key, Bytes::from(root.encode(codec)))
        .await?
        == Created::AlreadyExists
    {
        return Ok(false);
    }
    if let Err(error) = write_head(store, name, root.generation).await {
        tracing::debug!(%error, "could not update the head hint; opening will probe further");
    }
    Ok(true)
}

/// The root of generation `generation` of volume `name`, if it is there.
pub async fn root_at(
    store: &Store,
    superblock: &Superblock,
    codec: &Codec,
    generation: u64,
) -> Result<Option<Root>> {
    read_root(store, superblock, codec, generation).await
}

/// Records the newest generation as a hint for the next open.
pub async fn write_head(store: &Store, name: &str, generation: u64) -> Result<()> {
    store
        .put(&keys::head(name), Bytes::from(format!("{generation}\n")))
        .await?;
    Ok(())
}

/// Reads a settings file kept with volume `name` (for example how it is
/// provisioned); `None` when it has none.
pub async fn read_volume_file(store: &Store, name: &str, file: &str) -> Result<Option<Bytes>> {
    superblock(store, name).await?;
    Ok(store.get(&keys::volume_file(name, file)).await?)
}

/// Keeps a settings file with volume `name`; `None` removes it. Deleting
/// the volume deletes it too.
pub async fn write_volume_file(
    store: &Store,
    name: &str,
    file: &str,
    contents: Option<Bytes>,
) -> Result<()> {
    superblock(store, name).await?;
    let key = keys::volume_file(name, file);
    match contents {
        Some(bytes) => store.put(&key, bytes).await?,
        None => store.delete(&key).await?,
    }
    Ok(())
}

/// A volume's description at `root`, a snapshot's when `snapshot` names it.
pub(super) fn describe(superblock: &Superblock, root: &Root, snapshot: Option<&str>) -> VolumeInfo {
    VolumeInfo {
        name: superblock.name.clone(),
        snapshot: snapshot.map(str::to_string),
        uuid: superblock.uuid.to_string(),
        size: root.size,
        chunk_size: root.chunk_size,
        compression: superblock.compression.to_string(),
        encryption: superblock
            .encryption
            .is_some()
            .then(|| "xchacha20poly1305, key wrapped by argon2id".to_string()),
        format_version: superblock.version,
        generation: root.generation,
        committed_at_ms: root.committed_at_ms,
        allocated_bytes: root.allocated_chunks() * root.chunk_size,
        stored_bytes: root.stored_bytes(),
    }
}

/// Deletes a volume that no writer has open (on this host: its lock; on
/// any: its lease, unless `force`), with its write-back log and cached
/// chunks in `cache_dir`. An encrypted volume needs its password.
pub async fn delete_unused(
    store: &Store,
    name: &str,
    cache_dir: &std::path::Path,
    password: Option<Password>,
    force: bool,
) -> Result<()> {
    if let Ok(superblock) = superblock(store, name).await {
        unlock_blocking(&superblock, password).await?;
        if let Some(holder) = super::lease::live_holder(store, name).await?
            && (!force || holder.runs_in_another_process_here())
        {
            return Err(holder.refusal(name));
        }
        let dir = super::local::volume_dir(cache_dir, &superblock);
        if dir.exists() {
            let lock = super::local::lock(&dir, name)?;
            delete(store, name).await?;
            std::fs::remove_dir_all(&dir)
                .map_err(|source| EngineError::CacheDir { path: dir, source })?;
            drop(lock);
            return Ok(());
        }
    }
    delete(store, name).await
}

/// Deletes a volume's superblock and roots (the superblock last, so a
/// half-done delete is finished by running it again). Its chunks and pages
/// stay until garbage collection, since other volumes may share them.
pub async fn delete(store: &Store, name: &str) -> Result<()> {
    keys::validate_volume_name(name).map_err(EngineError::InvalidArgument)?;
    let dir = keys::volume_dir(name);
    let keys = store.list_keys(&dir).await?;
    if keys.is_empty() {
        return Err(EngineError::NoSuchVolume(name.to_string()));
    }
    let superblock = keys::superblock(name);
    for key in keys.iter().filter(|k| **k != superblock) {
        store.delete(key).await?;
    }
    store.delete(&superblock).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_volume(name: &str) -> NewVolume {
        NewVolume {
            name: name.to_string(),
            size: 1 << 30,
            chunk_size: 1 << 20,
            compression: Compression::default(),
            encrypt_with: None,
        }
    }

    #[tokio::test]
    async fn create_list_info_delete() {
        let store = Store::memory();
        create(&store, &new_volume("b")).await.unwrap();
        create(&store, &new_volume("a")).await.unwrap();
        assert_eq!(list(&store).await.unwrap(), vec!["a", "b"]);
        let superblock = superblock(&store, "a").await.unwrap();
        let root = newest_root(&store, &superblock, &Codec::clear())
            .await
            .unwrap();
        let info = describe(&superblock, &root, None);
        assert_eq!(
            (info.size, info.generation, info.allocated_bytes),
            (1 << 30, 0, 0)
        );
        assert!(matches!(
            create(&store, &new_volume("a")).await,
            Err(EngineError::VolumeExists(_))
        ));
        delete(&store, "a").await.unwrap();
        store
            .put("volumes/-x/superblock.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(list(&store).await.unwrap(), vec!["b"]);
        assert!(matches!(
            delete(&store, "a").await,
            Err(EngineError::NoSuchVolume(_))
        ));
        create(&store, &new_volume("a")).await.unwrap();
    }

    #[tokio::test]
    async fn a_superblock_naming_another_volume_is_refused() {
        let store = Store::memory();
        let mut tampered = create(&store, &new_volume("v")).await.unwrap();
        tampered.name = "../../etc".to_string();
        store
            .put(&keys::superblock("v"), Bytes::from(tampered.encode()))
            .await
            .unwrap();
        let refused = superblock(&store, "v").await.unwrap_err().to_string();
        assert!(refused.contains("names volume `../../etc`"), "{refused}");
        assert!(superblock(&store, "v").await.is_err());
        // Deleting it removes it from the store, and nothing the tampered
        // name points at outside the cache dir.
        let top = tempfile::tempdir().unwrap();
        let cache_dir = top.path().join("a/b/cache");
        let outside = top.path().join(format!("a/etc.{}", tampered.uuid));
        std::fs::create_dir_all(&cache_dir).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        delete_unused(&store, "v", &cache_dir, None, false)
            .await
            .unwrap();
        assert!(outside.exists());
        assert!(list(&store).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_superblock_or_root_of_a_shape_create_never_makes_is_refused() {
        let store = Store::memory();
        let good = create(&store, &new_volume("v")).await.unwrap();
        for chunk_size in [0, 1, 4096, 3_000_000, 1 << 32, u64::MAX] {
            let mut tampered = good.clone();
            tampered.chunk_size = chunk_size;
            let bytes = Bytes::from(tampered.encode());
            store.put(&keys::superblock("v"), bytes).await.unwrap();
            assert!(
                superblock(&store, "v").await.is_err(),
                "chunk size {chunk_size}"
            );
        }
        store
            .put(&keys::superblock("v"), Bytes::from(good.encode()))
            .await
            .unwrap();
        for (size, chunk_size) in [
            (1 << 40, 1 << 40),
            (1 << 62, 1 << 62),
            (1 << 30, 1 << 16),
            (1000, 1 << 20),
        ] {
            let mut root = Root::empty(good.uuid, size, chunk_size);
            root.generation = 1;
            let bytes = Bytes::from(root.encode(&Codec::clear()));
            store.put(&keys::root("v", 1), bytes).await.unwrap();
            let refused = newest_root(&store, &good, &Codec::clear()).await;
            assert!(refused.is_err(), "root of {size} in chunks of {chunk_size}");
        }
    }

    #[tokio::test]
    async fn bad_sizes_and_names_are_refused() {
        let store = Store::memory();
        let mut bad = new_volume("x");
        bad.size = 1000;
        assert!(create(&store, &bad).await.is_err());
        bad = new_volume("x/y");
        assert!(create(&store, &bad).await.is_err());
        bad = new_volume("x");
        bad.chunk_size = 3 << 20;
        assert!(create(&store, &bad).await.is_err());
        assert!(list(&store).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn opening_reads_a_few_objects_and_follows_roots_past_the_hint() {
        let store = Store::memory();
        let sb = create(&store, &new_volume("v")).await.unwrap();
        let mut root = Root::empty(sb.uuid, 1 << 30, 1 << 20);
        for generation in 1..=3 {
            root.generation = generation;
            store
                .put(
                    &keys::root("v", generation),
                    Bytes::from(root.encode(&Codec::clear())),
                )
                .await
                .unwrap();
        }
        let before = store.counters().gets;
        assert_eq!(
            newest_root(&store, &sb, &Codec::clear())
                .await
                .unwrap()
                .generation,
            3
        );
        assert!(store.counters().gets - before <= 6);
    }
}
