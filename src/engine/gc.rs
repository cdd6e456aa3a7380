//! `zeroblk gc`: deletes what no volume needs any more.
//!
//! What it keeps, for every volume in the store: the newest root; every
//! root younger than the grace period, or replaced (by the next one) less
//! than the grace period ago; every snapshot; and every map page, chunk
//! and pack those reference. Everything else under `chunks/`, `packs/` and
//! `pages/` goes once it is older than the grace period, as do the other
//! roots.
//!
//! A pack that is mostly garbage (less than half of its bytes referenced)
//! is split: each chunk still referenced is checked and stored as its own
//! object, then the pack is deleted. Maps keep naming the pack, and readers
//! that find it gone read the chunk's own object instead; so the map never
//! needs rewriting, and a reader racing the split gets the same bytes
//! either way.
//!
//! A [`Meter`] hears of each stage as it runs: the map pages read (their
//! number unknown until all are), then the packs split, then the objects
//! deleted.
//!
//! # Why a commit in flight never loses an object
//!
//! gc runs in this order: it takes the store's gc lease (one gc at a time:
//! two would each split a pack and delete the other's chunks), lists the
//! objects, then gives every volume whose writer's lease is held a
//! *barrier* (a root of the next generation, kind `GcBarrier`, with the
//! newest root's map, written with create-if-absent), then reads the roots
//! and marks what they reference, and deletes the unmarked objects it
//! listed that are older than the grace period, its lease checked first.
//! The claim: no object referenced by a root published after gc started is
//! deleted, whatever the timing.
//!
//! - gc deletes only objects it listed. Every object a commit uploads is a
//!   new one (packs and pages start with random bytes, and commits write no
//!   other kind of object), so an upload after the listing is never
//!   deleted. The one kind commits do not write, `chunks/`, only gc writes
//!   (when it splits a pack), and one gc runs at a time.
//! - A root published before the barrier is read by the mark, which comes
//!   after the barrier (a commit's root is the newest, or younger than the
//!   grace period), so what it references is kept.
//! - A volume whose lease was free (never taken, or released) after the
//!   listing had no commit in flight then: a writer commits only while it
//!   holds the lease, and releases it after its last commit. A writer that
//!   takes it later uploads after the listing.
//! - A root published after the barrier sits on top of it. The commit that
//!   publishes it found its generation taken by the barrier (create-if-absent
//!   lets exactly one of the two land) and started over: it built its
//!   chunks and pages again on the barrier's map and uploaded them anew,
//!   after the barrier, hence after the listing. What it references is
//!   either such a new object or one the barrier's map references, which
//!   gc marked. A writer that opens claims its first generation the same
//!   way, so a barrier makes it look again.
//!
//! # Snapshots, clones, rollbacks and readers
//!
//! These reference objects they did not upload, so the argument above
//! (every object a root references is new, or marked) does not cover them
//! by itself.
//!
//! - **Pins** (a snapshot, a clone's first root, a rollback's root) read
//!   a root and write another that references its objects. Both happen
//!   while the pin holds gc's lease ([`GcHold`]), which a gc holds from
//!   before its listing to after its deletes: no gc is between the two.
//!   The root a pin reads is the newest (or a snapshot) while gc is out,
//!   so a gc before it marked it, or, if it was published after that
//!   gc's listing, it is covered by the argument above; a gc after it
//!   marks the pin itself. (A gc that lost its lease deletes nothing
//!   after it learns so; one stalled past its lease between its last
//!   check and its deletes is the one case the lease cannot cover, as for
//!   any lease.)
//! - **A snapshot** stays until deleted: gc marks every snapshot. A clone
//!   is a volume like any other, so its roots keep what it shares with its
//!   source, whatever happens to the source and its snapshots.
//! - **Readers of a root that is no longer the newest**: a read in flight
//!   when a commit lands, a follower between two roots (`--follow`). gc
//!   keeps a replaced root, and what it
//!   references, for the grace period after the root that replaced it was
//!   written, however old the root is itself; a reader that found it newest
//!   has that long. A reader slower than that meets a missing object,
//!   never wrong data (every object is checked against its name).
//! - Old builds: a volume with snapshots or a clone says format version 5,
//!   which a zeroblk without snapshots refuses, its gc included.
//!
//! Stores that ignore conditional writes (`fencing: unsupported`) could let
//! a barrier overwrite a commit's root: gc writes none there, and the grace
//! period (which must then exceed the longest commit) is the only guard. On
//! every store, while any volume is attached, gc refuses a grace shorter
//! than [`MIN_GRACE_WHILE_ATTACHED`]: a read in flight on the root before
//! the newest still needs that root's objects. A page that cannot be read
//! stops the collection before anything is deleted: what it references is
//! unknown.
//!
//! # Copies in progress
//!
//! `zeroblk volume copy` (`copy`) uploads a snapshot's pages, packs and
//! chunks, and only then writes the snapshot and a root that reference
//! them. Its objects are not new ones: it writes each under the name the
//! source gives it, so it may write an object this gc listed as garbage,
//! and a run that counts on objects an interrupted run left finds them
//! unreferenced, free for any gc older than its grace. So once everything
//! is uploaded, a copy takes the gc lease ([`GcHold`], as a pin does),
//! looks every object the snapshot references up again, uploads again any
//! that is gone or of another size, writes the snapshot and the root
//! (create-if-absent), and only then lets go. No gc runs while it holds
//! the lease, and a gc that ran before had finished deleting (it deletes
//! only while it holds its lease, checked first), so every object the
//! check found is still there when the root lands; from then on the root
//! and the snapshot protect them, as any root does. A copy reads its
//! source through a snapshot, which gc there keeps whole while it exists;
//! if the snapshot is deleted, or a pack it references split, during the
//! copy, the copy stops naming what is missing, and the next run copies
//! the rest. (As for pins, the bound is the lease's: a gc on another host
//! that stalls for longer than its 30 s in the middle of deleting, and
//! then goes on, is outside it.)

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::catalog::{self, superblock};
use super::error::{EngineError, Result};
use super::lease::{self, Lease};
use super::meter::{Meter, Unit, Unmetered};
use crate::crypto::Password;
use crate::format::{
    ChunkRef, Codec, ObjectId, Root, RootKind, Superblock, chunk, keys, pack, page::MapPage,
};
use crate::store::{Fencing, ObjectInfo, Store};

const CONCURRENCY: usize = 16;

/// How long gc's lease lasts without renewal.
const GC_LEASE_TTL: Duration = Duration::from_secs(30);

/// The shortest grace gc accepts while a volume is attached: longer than
/// any commit takes, retries included, even on a slow machine.
pub const MIN_GRACE_WHILE_ATTACHED: Duration = Duration::from_secs(10 * 60);

/// How `gc` runs.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Objects and roots younger than this are kept.
    pub grace: Duration,
    /// Report what would be deleted, delete nothing.
    pub dry_run: bool,
    /// Opens the encrypted volumes' maps: gc reads every volume's map, and
    /// stops before anything when one cannot be read.
    pub password: Option<Password>,
}

/// What `gc` deleted (or, in a dry run, would delete).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub volumes: u64,
    pub roots_deleted: u64,
    pub pages_deleted: u64,
    pub chunks_deleted: u64,
    pub packs_deleted: u64,
    /// Packs mostly garbage, whose live chunks became objects of their own.
    pub packs_split: u64,
    pub bytes_freed: u64,
    pub pages_kept: u64,
    /// Chunks kept as objects of their own (packed ones are in packs).
    pub chunks_kept: u64,
    pub packs_kept: u64,
}

/// The pages, chunks and packs the kept roots reference.
#[derive(Default)]
struct Live {
    pages: HashSet<ObjectId>,
    /// Chunks stored as objects of their own.
    own: HashSet<ObjectId>,
    /// The chunks referenced in each pack.
    packs: HashMap<ObjectId, HashSet<ChunkRef>>,
    /// How the chunks of each pack are opened (packs hold one volume's
    /// chunks).
    pack_codecs: HashMap<ObjectId, Codec>,
}

impl Live {
    fn add_chunk(&mut self, entry: ChunkRef, codec: &Codec) {
        match entry.pack() {
            Some(pack) => {
                self.packs.entry(pack).or_default().insert(entry);
                self.pack_codecs
                    .entry(pack)
                    .or_insert_with(|| codec.clone());
            }
            None => {
                self.own.insert(entry.id);
            }
        }
    }

    /// The live chunks of the pack at `key`, if any.
    fn in_pack(&self, key: &str) -> Option<&HashSet<ChunkRef>> {
        self.packs.get(&id_of(key)?)
    }

    /// The chunks that must be objects of their own: those stored so, and
    /// the live chunks of packs that are gone (split) or being split.
    fn own_objects(
        &self,
        listed_packs: &HashSet<ObjectId>,
        splitting: &[ObjectInfo],
    ) -> HashSet<ObjectId> {
        let splitting: HashSet<ObjectId> = splitting.iter().filter_map(|p| id_of(&p.key)).collect();
        let out_of_packs = self
            .packs
            .iter()
            .filter(|(pack, _)| !listed_packs.contains(pack) || splitting.contains(pack))
            .flat_map(|(_, chunks)| chunks.iter().map(|e| e.id));
        self.own.iter().copied().chain(out_of_packs).collect()
    }
}

/// Whether less than half of a pack of `size` bytes holds `live` chunks.
fn mostly_garbage(size: u64, live: &HashSet<ChunkRef>) -> bool {
    let live_bytes: u64 = live.iter().map(|e| u64::from(e.stored_len)).sum();
    live_bytes * 2 < size
}

/// Collects garbage in the whole store.
pub async fn collect(store: &Store, options: GcOptions) -> Result<GcReport> {
    collect_metered(store, options, &Unmetered).await
}

/// [`collect`], telling `meter` how far it got.
pub async fn collect_metered(
    store: &Store,
    options: GcOptions,
    meter: &dyn Meter,
) -> Result<GcReport> {
    let now = SystemTime::now();
    let is_old = |object: &ObjectInfo| {
        now.duration_since(object.last_modified)
            .is_ok_and(|age| age >= options.grace)
    };
    let mut report = GcReport {
        dry_run: options.dry_run,
        ..GcReport::default()
    };
    let volumes = catalog::list(store).await?;
    refuse_roots_without_superblock(store, &volumes).await?;
    // Every map must be readable before anything is done.
    let mut codecs = HashMap::new();
    for name in &volumes {
        let superblock = superblock(store, name).await?;
        let codec = catalog::unlock_blocking(&superblock, options.password.clone()).await?;
        codecs.insert(name.clone(), codec);
    }
    let lease = match options.dry_run {
        true => None,
        false => {
            refuse_short_grace_while_attached(store, &volumes, options.grace).await?;
            Some(GcLease::take(store).await?)
        }
    };
    // What may be garbage: nothing uploaded from now on is.
    let pages = store.list_objects("pages/").await?;
    let chunks = store.list_objects("chunks/").await?;
    let packs = store.list_objects("packs/").await?;
    crate::async_fail_point!("gc::listed");
    if !options.dry_run && store.fencing().await? == Fencing::Enforced {
        for name in &volumes {
            if lease::is_held(store, name).await? {
                raise_barrier(store, name, &codecs[name]).await?;
            }
        }
    }
    let mut live = Live::default();
    let mut old_roots = Vec::new();
    meter.stage("reading maps", Unit::Objects, None);
    for name in volumes {
        let superblock = superblock(store, &name).await?;
        report.volumes += 1;
        let roots = store
            .list_objects(&format!("{}/roots/", keys::volume_dir(&name)))
            .await?;
        let (kept, old) = roots_to_keep(roots, |root| !is_old(root));
        old_roots.extend(old);
        let snapshots = store.list_objects(&keys::snapshots_dir(&name)).await?;
        for root in kept.iter().chain(&snapshots) {
            let codec = &codecs[&name];
            mark_live(store, &superblock, codec, &root.key, &mut live, meter).await?;
        }
    }
    crate::async_fail_point!("gc::marked");
    let listed_packs: HashSet<ObjectId> = packs.iter().filter_map(|p| id_of(&p.key)).collect();
    let (mut dead_packs, mut to_split) = (Vec::new(), Vec::new());
    for pack in packs.into_iter().filter(is_old) {
        match live.in_pack(&pack.key) {
            None if id_of(&pack.key).is_some() => dead_packs.push(pack),
            Some(chunks) if mostly_garbage(pack.size, chunks) => to_split.push(pack),
            _ => {}
        }
    }
    let own = live.own_objects(&listed_packs, &to_split);
    let dead_pages: Vec<_> = pages
        .into_iter()
        .filter(|o| !is_live(&o.key, &live.pages) && is_old(o))
        .collect();
    let dead_chunks: Vec<_> = chunks
        .into_iter()
        .filter(|o| !is_live(&o.key, &own) && is_old(o))
        .collect();
    report.pages_kept = live.pages.len() as u64;
    report.chunks_kept = own.len() as u64;
    report.packs_split = to_split.len() as u64;
    report.packs_kept = live
        .packs
        .keys()
        .filter(|p| listed_packs.contains(p))
        .count() as u64
        - report.packs_split;
    report.roots_deleted = old_roots.len() as u64;
    report.pages_deleted = dead_pages.len() as u64;
    report.chunks_deleted = dead_chunks.len() as u64;
    report.packs_deleted = dead_packs.len() as u64;
    let split_out: u64 = to_split
        .iter()
        .flat_map(|pack| live.in_pack(&pack.key).into_iter().flatten())
        .map(|entry| u64::from(entry.stored_len))
        .sum();
    if let Some(lease) = &lease {
        lease.still_ours(store).await?;
        meter.stage(
            "splitting packs",
            Unit::Objects,
            Some(to_split.len() as u64),
        );
        futures::stream::iter(&to_split)
            .map(|pack| split(store, pack, &live))
            .buffer_unordered(CONCURRENCY)
            .inspect_ok(|()| meter.advance(1))
            .try_collect::<Vec<()>>()
            .await?;
    }
    let all_dead: Vec<ObjectInfo> = old_roots
        .into_iter()
        .chain(dead_pages)
        .chain(dead_chunks)
        .chain(dead_packs)
        .chain(to_split)
        .collect();
    report.bytes_freed = all_dead.iter().map(|o| o.size).sum::<u64>() - split_out;
    if let Some(lease) = lease {
        lease.still_ours(store).await?;
        crate::async_fail_point!("gc::before_delete");
        meter.stage("deleting", Unit::Objects, Some(all_dead.len() as u64));
        futures::stream::iter(all_dead)
            .map(|object| async move { store.delete(&object.key).await })
            .buffer_unordered(CONCURRENCY)
            .inspect_ok(|()| meter.advance(1))
            .try_collect::<Vec<()>>()
            .await?;
        lease.release(store).await?;
    }
    Ok(report)
}

/// Fails if a folder under `volumes/` holds roots but no superblock: no
/// zeroblk leaves that (create writes the superblock first, delete removes
/// it last), and gc cannot read those roots, so everything they reference
/// would go.
async fn refuse_roots_without_superblock(store: &Store, volumes: &[String]) -> Result<()> {
    for name in store.list_dirs(keys::VOLUMES_DIR).await? {
        if volumes.contains(&name) || keys::validate_volume_name(&name).is_err() {
            continue;
        }
        let roots = format!("{}/roots/", keys::volume_dir(&name));
        if !store.list_keys(&roots).await?.is_empty() {
            return Err(EngineError::InvalidArgument(format!(
                "volumes/{name} holds roots but no superblock, so gc cannot tell what they reference and deleted nothing: restore volumes/{name}/superblock.json from a backup, or delete what is left with `zeroblk volume delete {name}`"
            )));
        }
    }
    Ok(())
}

/// Gives volume `name` a barrier: the next generation, with the newest
/// root's map, so that a commit in flight starts over (see the module
/// documentation).
async fn raise_barrier(store: &Store, name: &str, codec: &Codec) -> Result<()> {
    let superblock = superblock(store, name).await?;
    loop {
        let newest = catalog::newest_root(store, &superblock, codec).await?;
        let barrier = newest.succeeded_by(RootKind::GcBarrier);
        if catalog::publish_root(store, name, codec, &barrier).await? {
            return Ok(());
        }
    }
}

/// The lease of the gc that runs, renewed in the background meanwhile.
struct GcLease {
    lease: Arc<tokio::sync::Mutex<Lease>>,
    renewing: tokio::task::JoinHandle<()>,
}

impl GcLease {
    async fn take(store: &Store) -> Result<GcLease> {
        GcLease::take_for(store, "")
            .await?
            .map_err(|holder| EngineError::GcRunning {
                host: holder.host,
                pid: holder.pid,
                what: holder.purpose,
            })
    }

    /// Takes gc's lease for `purpose` (empty: a gc), or says who holds it.
    async fn take_for(
        store: &Store,
        purpose: &str,
    ) -> Result<std::result::Result<GcLease, lease::LeaseRecord>> {
        let key = keys::GC_LEASE.to_string();
        let lease = match Lease::acquire_at(store, key, GC_LEASE_TTL, false, purpose).await? {
            Ok(lease) => lease,
            Err(holder) => return Ok(Err(holder)),
        };
        let every = lease.renew_every();
        let lease = Arc::new(tokio::sync::Mutex::new(lease));
        let renewing = {
            let (lease, store) = (Arc::clone(&lease), store.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    // Lost: `still_ours` says so before anything is deleted.
                    if let Err(error) = lease.lock().await.renew(&store, "gc").await
                        && !error.is_transient()
                    {
                        return;
                    }
                }
            })
        };
        Ok(Ok(GcLease { lease, renewing }))
    }

    /// Fails if another gc took the lease: this one must delete nothing.
    async fn still_ours(&self, store: &Store) -> Result<()> {
        let checked = self.lease.lock().await.check(store, "gc").await;
        checked.map_err(|error| match error {
            EngineError::LeaseLost { by, .. } => EngineError::GcLeaseLost { by },
            other => other,
        })
    }

    async fn release(self, store: &Store) -> Result<()> {
        self.renewing.abort();
        self.lease.lock().await.release(store).await
    }
}

impl Drop for GcLease {
    fn drop(&mut self) {
        self.renewing.abort();
    }
}

/// Keeps gc out while a snapshot, a clone or a rollback reads a root and
/// pins it (see "Snapshots and clones" in the module documentation):
/// gc's lease, held for a few requests. Waits while a gc runs.
pub(super) struct GcHold(GcLease);

impl GcHold {
    /// Takes gc's lease for `purpose`, waiting for a gc (or another pin)
    /// that holds it to finish.
    pub(super) async fn take(store: &Store, purpose: &str) -> Result<GcHold> {
        let mut said = false;
        loop {
            match GcLease::take_for(store, purpose).await? {
                Ok(lease) => return Ok(GcHold(lease)),
                Err(holder) => {
                    if !said {
                        let what = match holder.purpose.as_str() {
                            "" => "zeroblk gc",
                            other => other,
                        };
                        tracing::warn!(
                            "waiting for {what} ({}) to finish: it holds the store's gc lease",
                            holder.holder_name()
                        );
                        said = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Lets gc run again.
    pub(super) async fn release(self, store: &Store) -> Result<()> {
        self.0.release(store).await
    }
}

/// Fails if `grace` is shorter than [`MIN_GRACE_WHILE_ATTACHED`] and any
/// of `volumes` has a writer that may be alive.
async fn refuse_short_grace_while_attached(
    store: &Store,
    volumes: &[String],
    grace: Duration,
) -> Result<()> {
    if grace >= MIN_GRACE_WHILE_ATTACHED {
        return Ok(());
    }
    let mut attached = Vec::new();
    for name in volumes {
        if lease::live_holder(store, name).await?.is_some() {
            attached.push(name.clone());
        }
    }
    if attached.is_empty() {
        return Ok(());
    }
    Err(EngineError::GraceTooShort {
        grace,
        minimum: MIN_GRACE_WHILE_ATTACHED,
        volumes: attached,
    })
}

/// Stores the `live` chunks of `pack` as objects of their own, each
/// checked first: a damaged chunk stops the collection, so the pack stays.
async fn split(store: &Store, pack: &ObjectInfo, live: &Live) -> Result<()> {
    let (chunks, codec) = match id_of(&pack.key) {
        Some(id) => (&live.packs[&id], live.pack_codecs[&id].clone()),
        None => return Ok(()),
    };
    let Some(bytes) = store.get(&pack.key).await? else {
        return Ok(()); // deleted since the listing
    };
    let objects = chunks
        .iter()
        .map(|entry| Ok((entry.id, pack::chunk_object(&bytes, 0, entry)?)))
        .collect::<Result<Vec<_>>>()?;
    let objects = crate::blocking::run(move || {
        for (id, object) in &objects {
            chunk::decode(*id, object, &codec)?;
        }
        Ok::<_, EngineError>(objects)
    })
    .await?;
    futures::stream::iter(objects)
        .map(|(id, object)| async move { store.put(&keys::chunk(&id), object).await })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Splits a volume's listed roots into those gc keeps and those it
/// deletes. It keeps the newest; every root younger than the grace period;
/// and every root whose successor (the next one listed) is, so that a root
/// stays for the grace period after a newer one replaced it, however old it
/// is itself: a reader that found it newest (a read in flight, a follower,
/// a copy) has that long to finish with it. A key that names no generation
/// is kept.
fn roots_to_keep(
    mut roots: Vec<ObjectInfo>,
    is_young: impl Fn(&ObjectInfo) -> bool,
) -> (Vec<ObjectInfo>, Vec<ObjectInfo>) {
    roots.sort_by_key(|root| generation_of(&root.key));
    let mut kept = Vec::new();
    let mut old = Vec::new();
    let mut successor_is_young = true; // the newest has none: it stays
    for root in roots.into_iter().rev() {
        let keep = generation_of(&root.key).is_none() || successor_is_young || is_young(&root);
        successor_is_young = is_young(&root);
        match keep {
            true => kept.push(root),
            false => old.push(root),
        }
    }
    (kept, old)
}

/// The generation a root's key names (`volumes/NAME/roots/GEN`).
fn generation_of(key: &str) -> Option<u64> {
    key.rsplit('/').next()?.parse().ok()
}

/// The object id a key ends in (`chunks/xx/HEX`, `packs/xx/HEX`,
/// `pages/xx/HEX`), if it names one.
fn id_of(key: &str) -> Option<ObjectId> {
    let hex = key.rsplit('/').next()?;
    let bytes = hex::decode(hex).ok()?;
    Some(ObjectId(bytes.try_into().ok()?))
}

/// Whether the object at `key` is in `live`. A key that names no object
/// id is kept: gc deletes only what it understands.
fn is_live(key: &str, live: &HashSet<ObjectId>) -> bool {
    id_of(key).is_none_or(|id| live.contains(&id))
}

/// Adds what the root at `key` references to `live`.
async fn mark_live(
    store: &Store,
    superblock: &Superblock,
    codec: &Codec,
    key: &str,
    live: &mut Live,
    meter: &dyn Meter,
) -> Result<()> {
    let max = Root::max_stored_len(superblock.chunk_size, catalog::MAX_VOLUME_SIZE);
    let Some(bytes) = store.get_at_most(key, max).await? else {
        return Ok(()); // deleted since the listing: it protects nothing
    };
    let root = Root::decode(key, &bytes, codec)?;
    if root.volume != superblock.uuid {
        return Ok(());
    }
    let ids: Vec<ObjectId> = root
        .pages
        .iter()
        .filter(|s| !s.is_empty() && !live.pages.contains(&s.id))
        .map(|s| s.id)
        .collect();
    let generation = root.generation;
    let pages: Vec<(ObjectId, MapPage)> = futures::stream::iter(ids)
        .map(|id| async move {
            let page = catalog::read_page(store, codec, id, generation).await?;
            Ok::<_, EngineError>((id, page))
        })
        .buffer_unordered(CONCURRENCY)
        .inspect_ok(|_| meter.advance(1))
        .try_collect()
        .await?;
    for (id, page) in pages {
        live.pages.insert(id);
        for entry in page.entries().iter().filter(|e| !e.is_zero()) {
            live.add_chunk(*entry, codec);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_back() {
        assert_eq!(
            generation_of("volumes/v/roots/00000000000000000042"),
            Some(42)
        );
        assert_eq!(generation_of("volumes/v/roots/junk"), None);
        let id = ObjectId::of(b"x");
        let live: HashSet<_> = [id].into();
        assert!(is_live(&keys::chunk(&id), &live));
        assert!(!is_live(&keys::chunk(&ObjectId::of(b"y")), &live));
        assert!(
            is_live("chunks/ab/not-an-id", &live),
            "unknown keys are kept"
        );
        assert_eq!(id_of(&keys::pack(&id)), Some(id));
    }

    use crate::format::Place;

    fn packed(pack: &[u8], byte: u8) -> ChunkRef {
        ChunkRef {
            id: ObjectId::of(&[byte]),
            stored_len: 1,
            place: Place::Packed {
                pack: ObjectId::of(pack),
                offset: u32::from(byte),
            },
        }
    }

    fn listed(key: String) -> ObjectInfo {
        ObjectInfo {
            key,
            size: 8,
            last_modified: SystemTime::UNIX_EPOCH,
        }
    }

    fn root_at(generation: u64, minutes_old: u64) -> ObjectInfo {
        ObjectInfo {
            key: keys::root("v", generation),
            size: 1,
            last_modified: SystemTime::now() - Duration::from_secs(minutes_old * 60),
        }
    }

    #[test]
    fn a_root_stays_for_the_grace_period_after_a_newer_one_replaced_it() {
        let young = |root: &ObjectInfo| {
            root.last_modified
                .elapsed()
                .is_ok_and(|age| age < Duration::from_secs(3600))
        };
        let generations = |roots: &[ObjectInfo]| {
            let mut found: Vec<_> = roots.iter().filter_map(|r| generation_of(&r.key)).collect();
            found.sort();
            found
        };
        // Weeks old, all of them: only the newest stays.
        let roots = vec![root_at(1, 50_000), root_at(2, 40_000), root_at(3, 30_000)];
        let (kept, old) = roots_to_keep(roots, young);
        assert_eq!(
            (generations(&kept), generations(&old)),
            (vec![3], vec![1, 2])
        );
        // Generation 7 is old, but 8 replaced it a minute ago: 7 stays.
        let roots = vec![root_at(8, 1), root_at(6, 50_000), root_at(7, 40_000)];
        let (kept, old) = roots_to_keep(roots, young);
        assert_eq!(
            (generations(&kept), generations(&old)),
            (vec![7, 8], vec![6])
        );
        // Keys that name no generation are kept.
        let mut stray = root_at(0, 50_000);
        stray.key = "volumes/v/roots/junk".into();
        let (kept, _) = roots_to_keep(vec![stray, root_at(4, 50_000)], young);
        assert_eq!(kept.len(), 2);
    }

    #[test]
    fn chunks_of_their_own_are_those_stored_so_and_those_out_of_their_packs() {
        let mut live = Live::default();
        let own = ObjectId::of(b"own");
        live.add_chunk(ChunkRef::own(own, 5), &Codec::clear());
        for (pack, byte) in [(&b"kept"[..], 1), (b"gone", 2), (b"split", 3)] {
            live.add_chunk(packed(pack, byte), &Codec::clear());
        }
        let listed_packs: HashSet<_> = [ObjectId::of(b"kept"), ObjectId::of(b"split")].into();
        let splitting = [listed(keys::pack(&ObjectId::of(b"split")))];
        let objects = live.own_objects(&listed_packs, &splitting);
        let expected: HashSet<_> = [own, ObjectId::of(&[2]), ObjectId::of(&[3])].into();
        assert_eq!(objects, expected);
    }

    #[test]
    fn a_pack_is_split_when_most_of_it_is_garbage() {
        let entry = |len| ChunkRef {
            id: ObjectId::of(&[len as u8]),
            stored_len: len,
            place: Place::Packed {
                pack: ObjectId::NONE,
                offset: 0,
            },
        };
        let live: HashSet<_> = [entry(30), entry(19)].into();
        assert!(mostly_garbage(100, &live));
        let live: HashSet<_> = [entry(30), entry(20)].into();
        assert!(!mostly_garbage(100, &live));
    }
}
